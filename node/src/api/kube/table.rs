//! `meta.k8s.io/v1 Table`: the rows `kubectl get` prints, with the columns a real
//! server gives each kind (those with priority 1 show with `-o wide`).

use std::time::SystemTime;

use serde_json::{Value, json};

use super::Kind;

/// Whether the client asked for Tables (`Accept: application/json;as=Table;...`).
pub(super) fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.split(';').any(|p| p.trim() == "as=Table"))
    })
}

/// What a row carries of its object (`?includeObject=`): its metadata as a
/// `PartialObjectMetadata` (the default), the whole object (`kubectl get --sort-by`
/// sorts rows by its fields), or nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Include {
    #[default]
    Metadata,
    Object,
    NoObject,
}

impl Include {
    /// `Metadata`, `Object` or `None`, as the API server takes them.
    pub(super) fn parse(v: &str) -> Result<Self, String> {
        match v {
            "" | "Metadata" => Ok(Include::Metadata),
            "Object" => Ok(Include::Object),
            "None" => Ok(Include::NoObject),
            other => Err(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            )),
        }
    }
}

/// (name, type, priority, description)
type Column = (&'static str, &'static str, u8, &'static str);

fn columns(kind: Kind) -> &'static [Column] {
    const NAME: Column = (
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    const AGE: Column = ("Age", "string", 0, "Time since the object was created.");
    match kind {
        Kind::Pod => &[
            NAME,
            ("Ready", "string", 0, "Ready containers of all containers."),
            (
                "Status",
                "string",
                0,
                "The pod's state, as kubectl derives it.",
            ),
            ("Restarts", "string", 0, "Restarts of its containers."),
            AGE,
            ("IP", "string", 1, "The pod's address."),
            ("Node", "string", 1, "The node it runs on."),
            ("Nominated Node", "string", 1, "Not used by skiff."),
            ("Readiness Gates", "string", 1, "Not used by skiff."),
        ],
        Kind::Deployment => &[
            NAME,
            ("Ready", "string", 0, "Ready pods of those wanted."),
            ("Up-to-date", "integer", 0, "Pods of the current template."),
            ("Available", "integer", 0, "Pods that serve."),
            AGE,
            ("Containers", "string", 1, "Containers of the template."),
            ("Images", "string", 1, "Their images."),
            ("Selector", "string", 1, "The pods it owns."),
        ],
        Kind::ReplicaSet => &[
            NAME,
            ("Desired", "integer", 0, "Pods wanted."),
            ("Current", "integer", 0, "Pods there."),
            ("Ready", "integer", 0, "Pods ready."),
            AGE,
            ("Containers", "string", 1, "Containers of the template."),
            ("Images", "string", 1, "Their images."),
            ("Selector", "string", 1, "The pods it owns."),
        ],
        Kind::Service => &[
            NAME,
            ("Type", "string", 0, "How the service is exposed."),
            ("Cluster-IP", "string", 0, "Not used by skiff."),
            ("External-IP", "string", 0, "Not used by skiff."),
            ("Port(s)", "string", 0, "Its ports."),
            AGE,
            ("Selector", "string", 1, "The pods it routes to."),
        ],
        Kind::Node => &[
            NAME,
            (
                "Status",
                "string",
                0,
                "Ready, and whether it takes new pods.",
            ),
            ("Roles", "string", 0, "From node-role.kubernetes.io labels."),
            AGE,
            ("Version", "string", 0, "skiff's version."),
            ("Internal-IP", "string", 1, "Where it is reached."),
        ],
        Kind::Event => &[
            ("Last Seen", "string", 0, "When it last happened."),
            ("Type", "string", 0, "Normal or Warning."),
            ("Reason", "string", 0, "Why."),
            ("Object", "string", 0, "What it is about."),
            ("Message", "string", 0, "What happened."),
        ],
        Kind::Namespace => &[NAME, ("Status", "string", 0, "Active."), AGE],
        Kind::Endpoints => &[
            NAME,
            ("Endpoints", "string", 0, "Ready pods' addresses and ports."),
            AGE,
        ],
        Kind::EndpointSlice => &[
            NAME,
            ("AddressType", "string", 0, "IPv4 or IPv6."),
            ("Ports", "string", 0, "The pods' ports."),
            ("Endpoints", "string", 0, "The pods' addresses."),
            AGE,
        ],
    }
}

/// `1d`, `5h`, `3m`, `42s` since an RFC 3339 time, as kubectl prints ages.
fn age(ts: &Value) -> String {
    let Some(then) = ts.as_str().and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let now = SystemTime::now();
    let s = now.duration_since(then).map_or(0, |d| d.as_secs());
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10800 => format!("{}m", s / 60),
        10800..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "<none>".into(),
    }
}

fn int(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

fn selector_text(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

fn containers(template: &Value) -> (String, String) {
    let list = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let join = |field: &str| {
        list.iter()
            .map(|c| c[field].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    (join("name"), join("image"))
}

/// `ip:port`, `[ip]:port` for IPv6.
fn host_port(ip: &str, port: &Value) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The first three, and how many more, as kubectl prints endpoints.
fn at_most_three(list: Vec<String>) -> String {
    match list.len() {
        0 => "<none>".into(),
        1..=3 => list.join(","),
        n => format!("{} + {} more...", list[..3].join(","), n - 3),
    }
}

/// A pod's STATUS: Terminating, the first waiting reason, or the phase.
pub(super) fn pod_status(p: &Value) -> String {
    if !p["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c["state"]["waiting"]["reason"].as_str())
        .unwrap_or_else(|| p["status"]["phase"].as_str().unwrap_or("Unknown"))
        .to_string()
}

fn cells(kind: Kind, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let created = age(&o["metadata"]["creationTimestamp"]);
    match kind {
        Kind::Pod => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let total = statuses
                .len()
                .max(o["spec"]["containers"].as_array().map_or(1, Vec::len));
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                json!(created),
                json!(text(&o["status"]["podIP"])),
                json!(text(&o["spec"]["nodeName"])),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        Kind::Deployment => {
            let (names, images) = containers(&o["spec"]["template"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                )),
                int(&o["status"]["updatedReplicas"]),
                int(&o["status"]["availableReplicas"]),
                json!(created),
                json!(names),
                json!(images),
                json!(selector_text(&o["spec"]["selector"]["matchLabels"])),
            ]
        }
        Kind::ReplicaSet => {
            let (names, images) = containers(&o["spec"]["template"]);
            vec![
                name,
                int(&o["spec"]["replicas"]),
                int(&o["status"]["replicas"]),
                int(&o["status"]["readyReplicas"]),
                json!(created),
                json!(names),
                json!(images),
                json!(selector_text(&o["spec"]["selector"]["matchLabels"])),
            ]
        }
        Kind::Service => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            vec![
                name,
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
                json!(text(&o["spec"]["clusterIP"])),
                json!("<none>"),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(created),
                json!(selector_text(&o["spec"]["selector"])),
            ]
        }
        Kind::Node => {
            let ready = o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let mut status = if ready { "Ready" } else { "NotReady" }.to_string();
            if o["spec"]["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let ip = o["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .map_or_else(|| "<none>".into(), |a| text(&a["address"]));
            vec![
                name,
                json!(status),
                json!(if roles.is_empty() {
                    "<none>".to_string()
                } else {
                    roles.join(",")
                }),
                json!(created),
                json!(text(&o["status"]["nodeInfo"]["kubeletVersion"])),
                json!(ip),
            ]
        }
        Kind::Event => vec![
            json!(age(&o["lastTimestamp"])),
            json!(text(&o["type"])),
            json!(text(&o["reason"])),
            json!(format!(
                "{}/{}",
                o["involvedObject"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase(),
                o["involvedObject"]["name"].as_str().unwrap_or_default()
            )),
            json!(text(&o["message"])),
        ],
        Kind::Namespace => vec![name, json!("Active"), json!(created)],
        Kind::Endpoints => {
            let mut list = Vec::new();
            for subset in o["subsets"].as_array().into_iter().flatten() {
                let ips = subset["addresses"].as_array().into_iter().flatten();
                let ips: Vec<&str> = ips.filter_map(|a| a["ip"].as_str()).collect();
                match subset["ports"].as_array().filter(|p| !p.is_empty()) {
                    None => list.extend(ips.iter().map(|ip| ip.to_string())),
                    Some(ports) => {
                        for port in ports {
                            for ip in &ips {
                                list.push(host_port(ip, &port["port"]));
                            }
                        }
                    }
                }
            }
            vec![name, json!(at_most_three(list)), json!(created)]
        }
        Kind::EndpointSlice => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    p["port"]
                        .as_i64()
                        .map_or("<unset>".into(), |n| n.to_string())
                })
                .collect();
            let addresses: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            vec![
                name,
                json!(text(&o["addressType"])),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(at_most_three(addresses)),
                json!(created),
            ]
        }
    }
}

/// The objects as one Table (a watch sends one per event; kubectl prints the header
/// once while the columns stay the same).
pub(super) fn table(
    kind: Kind,
    objects: &[Value],
    include: Include,
    version: &str,
    continue_: Option<&str>,
) -> Value {
    let column_definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|(name, kind, priority, description)| {
            json!({
                "name": name,
                "type": kind,
                "format": if *name == "Name" { "name" } else { "" },
                "description": description,
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                Include::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                }),
                Include::Object => o.clone(),
                Include::NoObject => Value::Null,
            };
            json!({"cells": cells(kind, o), "object": object})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": version});
    if let Some(c) = continue_ {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_one_cell_per_column_for_every_kind() {
        let kinds = [
            Kind::Pod,
            Kind::Deployment,
            Kind::ReplicaSet,
            Kind::Service,
            Kind::Node,
            Kind::Event,
            Kind::Namespace,
            Kind::Endpoints,
            Kind::EndpointSlice,
        ];
        for kind in kinds {
            let t = table(
                kind,
                &[json!({"metadata": {"name": "x"}})],
                Include::Metadata,
                "1",
                None,
            );
            assert_eq!(
                t["rows"][0]["cells"].as_array().unwrap().len(),
                t["columnDefinitions"].as_array().unwrap().len(),
                "{kind:?}"
            );
        }
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2000-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"ready": false, "restartCount": 2, "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        let t = table(
            Kind::Pod,
            std::slice::from_ref(&pod),
            Include::Metadata,
            "1",
            None,
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "p",
                "0/1",
                "ContainerCreating",
                "2",
                age(&json!("2000-01-01T00:00:00Z")),
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ])
        );
        assert!(wanted(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wanted(Some("application/json")));
        assert!(!wanted(None));
    }

    #[test]
    fn endpoints_show_three_addresses_and_how_many_more() {
        let e = json!({"metadata": {"name": "web"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}], "ports": [{"port": 80}, {"port": 81}]}]});
        let t = table(Kind::Endpoints, &[e], Include::Metadata, "1", None);
        assert_eq!(
            t["rows"][0]["cells"][1],
            "10.0.0.1:80,[fd00::1]:80,10.0.0.1:81 + 1 more..."
        );
        let s = json!({"metadata": {"name": "web-abcde"}, "addressType": "IPv4",
            "ports": [{"name": "", "port": 80}], "endpoints": [{"addresses": ["10.0.0.1"]}]});
        let t = table(Kind::EndpointSlice, &[s], Include::Metadata, "1", None);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["web-abcde", "IPv4", "80", "10.0.0.1", age(&Value::Null)])
        );
    }

    #[test]
    fn rows_carry_metadata_the_whole_object_or_nothing_as_asked() {
        let event =
            json!({"metadata": {"name": "e", "uid": "u"}, "lastTimestamp": "2000-01-01T00:00:00Z"});
        let object = |include| {
            table(
                Kind::Event,
                std::slice::from_ref(&event),
                include,
                "1",
                None,
            )["rows"][0]["object"]
                .clone()
        };
        assert_eq!(
            object(Include::parse("").unwrap()),
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": {"name": "e", "uid": "u"}})
        );
        // kubectl get --sort-by=.lastTimestamp sorts by the object's own fields.
        assert_eq!(object(Include::parse("Object").unwrap()), event);
        assert!(object(Include::parse("None").unwrap()).is_null());
        let e = Include::parse("Everything").unwrap_err();
        assert!(
            e.contains("includeObject: Unsupported value: \"Everything\""),
            "{e}"
        );
    }
}
