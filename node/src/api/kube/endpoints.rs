//! Endpoints and EndpointSlices (`discovery.k8s.io/v1`): where each Service sends,
//! derived from the pods its selector picks, as Kubernetes' endpoint controllers write
//! them. Read-only: `kubectl describe svc` reads them (1.27 the Endpoints, 1.33 the
//! slices labelled with the Service's name), as do tools that list a Service's pods.
//!
//! A pod's address is its own (a Linux container on the bridge) or, for a Wasm pod,
//! which runs inside the node, its node's (as a `hostNetwork` pod's is). The Endpoints
//! list ready pods under `addresses` and the others under `notReadyAddresses`, leaving
//! out pods being deleted; the slices list them all with `ready`, `serving` and
//! `terminating`, at most [`MAX_PER_SLICE`] to a slice. A Service without a selector
//! has neither (its endpoints would be written by hand).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::derived_uid;

/// Endpoints in one slice, as Kubernetes' controller cuts them.
const MAX_PER_SLICE: usize = 100;

/// A pod a Service picks.
struct Member<'a> {
    pod: &'a Value,
    ip: String,
    ready: bool,
    terminating: bool,
    /// The Service's ports as this pod serves them.
    ports: Vec<Value>,
}

impl Member<'_> {
    fn target_ref(&self) -> Value {
        json!({
            "kind": "Pod",
            "namespace": "default",
            "name": self.pod["metadata"]["name"],
            "uid": self.pod["metadata"]["uid"],
        })
    }
}

/// The pod's port a Service port sends to: a number, a container port's name, or
/// (unset) the Service's port.
fn target_port(service_port: &Value, pod: &Value) -> Option<i64> {
    match &service_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => service_port["port"].as_i64(),
    }
}

/// The pods `service` picks that have an address and have not ended, or `None` when it
/// has no selector.
fn members<'a>(service: &Value, pods: &'a [Value]) -> Option<Vec<Member<'a>>> {
    let selector = service["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())?;
    let mut out = Vec::new();
    for pod in pods {
        let labels = &pod["metadata"]["labels"];
        if !selector.iter().all(|(k, v)| &labels[k] == v)
            || matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            )
        {
            continue;
        }
        let ip = [&pod["status"]["podIP"], &pod["status"]["hostIP"]]
            .into_iter()
            .find_map(|v| v.as_str().filter(|s| !s.is_empty()));
        let Some(ip) = ip else { continue };
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ports = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sp| {
                let mut port = json!({
                    "name": sp["name"].as_str().unwrap_or_default(),
                    "port": target_port(sp, pod)?,
                    "protocol": sp["protocol"].as_str().unwrap_or("TCP"),
                });
                if let Some(app) = sp["appProtocol"].as_str() {
                    port["appProtocol"] = json!(app);
                }
                Some(port)
            })
            .collect();
        out.push(Member {
            pod,
            ip: ip.to_string(),
            ready,
            terminating: !pod["metadata"]["deletionTimestamp"].is_null(),
            ports,
        });
    }
    out.sort_by(|a, b| {
        (&a.ip, a.pod["metadata"]["name"].as_str())
            .cmp(&(&b.ip, b.pod["metadata"]["name"].as_str()))
    });
    Some(out)
}

/// Metadata of what is derived from `service`: its name and labels, a uid of its own.
fn metadata(service: &Value, name: &str, part: &str) -> Value {
    let uid = service["metadata"]["uid"].as_str().unwrap_or_default();
    let mut meta = json!({
        "name": name,
        "namespace": "default",
        "uid": derived_uid(uid, part),
        "creationTimestamp": service["metadata"]["creationTimestamp"],
    });
    if let Some(labels) = service["metadata"]["labels"].as_object() {
        meta["labels"] = json!(labels);
    }
    meta
}

/// A subset of Endpoints: its ports, ready addresses and the others (by the ports'
/// text).
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

/// The `v1 Endpoints` of `service`: one subset per set of ports its pods serve.
pub(super) fn endpoints(service: &Value, pods: &[Value]) -> Option<Value> {
    let members = members(service, pods)?;
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
    for m in members.iter().filter(|m| !m.terminating) {
        let ports: Vec<Value> = m
            .ports
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if p["name"] == ""
                    && let Some(o) = p.as_object_mut()
                {
                    o.remove("name");
                }
                p
            })
            .collect();
        let subset = subsets
            .entry(Value::from(ports.clone()).to_string())
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        let address = json!({
            "ip": m.ip,
            "nodeName": m.pod["spec"]["nodeName"],
            "targetRef": m.target_ref(),
        });
        if m.ready {
            subset.1.push(address);
        } else {
            subset.2.push(address);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_values()
        .map(|(ports, ready, not_ready)| {
            let mut s = json!({});
            for (key, list) in [
                ("addresses", ready),
                ("notReadyAddresses", not_ready),
                ("ports", ports),
            ] {
                if !list.is_empty() {
                    s[key] = Value::from(list);
                }
            }
            s
        })
        .collect();
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": metadata(service, name, "endpoints"),
    });
    if !subsets.is_empty() {
        object["subsets"] = Value::from(subsets);
    }
    Some(object)
}

/// The `discovery.k8s.io/v1 EndpointSlice`s of `service`: one per set of ports and
/// address family, cut at [`MAX_PER_SLICE`].
pub(super) fn slices(service: &Value, pods: &[Value]) -> Vec<Value> {
    let Some(members) = members(service, pods) else {
        return Vec::new();
    };
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let mut groups: BTreeMap<(String, &str), Vec<&Member>> = BTreeMap::new();
    for m in &members {
        let family = if m.ip.contains(':') { "IPv6" } else { "IPv4" };
        groups
            .entry((Value::from(m.ports.clone()).to_string(), family))
            .or_default()
            .push(m);
    }
    let mut out = Vec::new();
    for ((ports, family), group) in groups {
        for (n, chunk) in group.chunks(MAX_PER_SLICE).enumerate() {
            let part = format!("slice/{family}/{ports}/{n}");
            let id = derived_uid(
                service["metadata"]["uid"].as_str().unwrap_or_default(),
                &part,
            );
            let slice_name = format!("{name}-{}", &id[..5]);
            let mut meta = metadata(service, &slice_name, &part);
            meta["generateName"] = json!(format!("{name}-"));
            meta["labels"]["kubernetes.io/service-name"] = json!(name);
            meta["labels"]["endpointslice.kubernetes.io/managed-by"] =
                json!("endpointslice-controller.k8s.io");
            meta["ownerReferences"] = json!([{
                "apiVersion": "v1",
                "kind": "Service",
                "name": name,
                "uid": service["metadata"]["uid"],
                "controller": true,
                "blockOwnerDeletion": true,
            }]);
            let endpoints: Vec<Value> = chunk
                .iter()
                .map(|m| {
                    json!({
                        "addresses": [m.ip],
                        "conditions": {
                            "ready": m.ready && !m.terminating,
                            "serving": m.ready,
                            "terminating": m.terminating,
                        },
                        "nodeName": m.pod["spec"]["nodeName"],
                        "targetRef": m.target_ref(),
                    })
                })
                .collect();
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": meta,
                "addressType": family,
                "endpoints": endpoints,
                "ports": chunk[0].ports,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "hostIP": "192.0.2.1",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if let Some(ip) = ip {
            p["status"]["podIP"] = json!(ip);
        }
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        p
    }

    fn service(ports: Value) -> Value {
        json!({"metadata": {"name": "web", "uid": "svc-uid", "labels": {"tier": "front"}},
               "spec": {"selector": {"app": "web"}, "ports": ports}})
    }

    #[test]
    fn endpoints_list_ready_pods_and_the_rest_apart_by_their_ports() {
        let pods = [
            pod("web-a", "web", Some("10.0.0.2"), true, false),
            pod("web-b", "web", None, true, false),
            pod("web-c", "web", Some("10.0.0.3"), false, false),
            pod("web-d", "web", Some("10.0.0.4"), true, true),
            pod("db-a", "db", Some("10.0.0.5"), true, false),
        ];
        let svc = service(json!([{"port": 80, "targetPort": "http", "protocol": "TCP"}]));
        let e = endpoints(&svc, &pods).unwrap();
        assert_eq!(e["metadata"]["name"], "web");
        assert_eq!(e["metadata"]["labels"], json!({"tier": "front"}));
        let subsets = e["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 1, "{e}");
        let ips = |key: &str| -> Vec<&str> {
            subsets[0][key]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["ip"].as_str().unwrap())
                .collect()
        };
        // A Wasm pod (no address of its own) by its node's; one being deleted, nowhere.
        assert_eq!(ips("addresses"), ["10.0.0.2", "192.0.2.1"]);
        assert_eq!(ips("notReadyAddresses"), ["10.0.0.3"]);
        assert_eq!(
            subsets[0]["ports"],
            json!([{"port": 8080, "protocol": "TCP"}])
        );
        assert_eq!(
            subsets[0]["addresses"][0]["targetRef"],
            json!({"kind": "Pod", "namespace": "default", "name": "web-a", "uid": "uid-web-a"})
        );

        // A port named where the pod has no such port leaves that port out.
        let svc = service(
            json!([{"name": "a", "port": 80, "targetPort": "grpc"}, {"name": "b", "port": 81}]),
        );
        let e = endpoints(&svc, &pods[..1]).unwrap();
        assert_eq!(
            e["subsets"][0]["ports"],
            json!([{"name": "b", "port": 81, "protocol": "TCP"}])
        );
        // No selector: none; no pods: no subsets.
        let mut manual = service(json!([]));
        manual["spec"]["selector"] = json!({});
        assert!(endpoints(&manual, &pods).is_none());
        assert!(endpoints(&service(json!([{"port": 80}])), &[]).unwrap()["subsets"].is_null());
    }

    #[test]
    fn slices_carry_every_pod_with_its_conditions_and_are_cut_at_a_hundred() {
        let pods = [
            pod("web-a", "web", Some("10.0.0.2"), true, false),
            pod("web-d", "web", Some("10.0.0.4"), true, true),
        ];
        let svc = service(json!([{"port": 80, "targetPort": 8080, "protocol": "TCP"}]));
        let s = slices(&svc, &pods);
        assert_eq!(s.len(), 1);
        let slice = &s[0];
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "web"
        );
        assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
        assert!(
            slice["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("web-")
        );
        // kubectl dereferences every port's name and port.
        assert_eq!(
            slice["ports"],
            json!([{"name": "", "port": 8080, "protocol": "TCP"}])
        );
        let conditions: Vec<&Value> = slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["conditions"])
            .collect();
        assert_eq!(
            conditions,
            [
                &json!({"ready": true, "serving": true, "terminating": false}),
                &json!({"ready": false, "serving": true, "terminating": true})
            ]
        );
        let many: Vec<Value> = (0..250)
            .map(|i| {
                pod(
                    &format!("web-{i:03}"),
                    "web",
                    Some(&format!("10.0.{}.{}", i / 200, i % 200)),
                    true,
                    false,
                )
            })
            .collect();
        let cut = slices(&svc, &many);
        let sizes: Vec<usize> = cut
            .iter()
            .map(|s| s["endpoints"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        let names: std::collections::BTreeSet<&str> = cut
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[tokio::test]
    async fn a_services_endpoints_and_slices_are_served_read_only() {
        use http::StatusCode;

        use super::super::testing::{eventually, get, post, send, watch_lines};

        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nope:v1",
                        "ports": [{"name": "http", "containerPort": 8080}]}]}}}});
        let (s, _, v) = post(
            &router,
            t,
            "/apis/apps/v1/namespaces/default/deployments",
            d,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}});
        let (s, _, v) = post(&router, t, "/api/v1/namespaces/default/services", svc).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");

        // Its pods wait for an image that is not there: not ready, by their node's
        // address (Wasm pods have none of their own), at the named port.
        let e = eventually(|| async {
            let (_, _, e) = get(&router, t, "/api/v1/namespaces/default/endpoints/web").await;
            let waiting = e["subsets"][0]["notReadyAddresses"]
                .as_array()
                .map(Vec::len);
            (waiting == Some(2)).then_some(e)
        })
        .await;
        let subset = &e["subsets"][0];
        assert!(subset["addresses"].is_null(), "{e}");
        assert_eq!(subset["ports"], json!([{"port": 8080, "protocol": "TCP"}]));
        let address = &subset["notReadyAddresses"][0];
        let pod = address["targetRef"]["name"].as_str().unwrap();
        let (_, _, p) = get(
            &router,
            t,
            &format!("/api/v1/namespaces/default/pods/{pod}"),
        )
        .await;
        assert_eq!(address["targetRef"]["uid"], p["metadata"]["uid"]);
        assert!(p["status"]["hostIP"].is_string(), "{p}");
        assert_eq!(address["ip"], p["status"]["hostIP"]);

        // kubectl 1.33's describe: the slices labelled with the Service's name.
        const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
        let labelled = format!("{SLICES}?labelSelector=kubernetes.io%2Fservice-name%3Dweb");
        let (s, _, list) = get(&router, t, &labelled).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        assert_eq!(list["kind"], "EndpointSliceList");
        let slice = &list["items"][0];
        assert_eq!(slice["endpoints"].as_array().unwrap().len(), 2, "{slice}");
        assert_eq!(slice["endpoints"][0]["conditions"]["ready"], false);
        let table = [("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")];
        let (_, _, tbl) = send(
            &router,
            t,
            "GET",
            "/api/v1/namespaces/default/endpoints",
            &table,
            None,
        )
        .await;
        assert_eq!(tbl["rows"][0]["cells"][1], "<none>", "{tbl}");
        let events = watch_lines(&router, t, &format!("{SLICES}?watch=1"), 1).await;
        assert_eq!(events[0]["type"], "ADDED");

        // Discovery names the group; nothing writes these.
        let (_, _, groups) = get(&router, t, "/apis").await;
        assert_eq!(groups["groups"][1]["name"], "discovery.k8s.io", "{groups}");
        let (s, _, _) = post(
            &router,
            t,
            "/api/v1/namespaces/default/endpoints",
            e.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        let name = slice["metadata"]["name"].as_str().unwrap();
        let (s, _, _) = send(&router, t, "DELETE", &format!("{SLICES}/{name}"), &[], None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }
}
