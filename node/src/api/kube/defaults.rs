//! Kubernetes' defaults: filled into what is served, taken out of what comes back.
//!
//! The API server defaults every object before it stores it (`pkg/apis/apps/v1` and
//! `pkg/apis/core/v1`, `defaults.go`), so clients read complete objects and rely on it:
//! `kubectl describe` dereferences a Deployment's `spec.replicas` and a terminating pod's
//! `metadata.deletionGracePeriodSeconds`, `kubectl debug` a pod's `securityContext`.
//! skiff stores objects as they were written (a pod template's JSON is its revision's
//! hash), so defaulting is a pass over the served value instead: [`deployment`],
//! [`replica_set`], [`pod`], [`service`].
//!
//! An object a client read comes back with those defaults in it (`kubectl edit`,
//! `set image`, `apply`'s patch of the object as served). [`unfill`] takes out the ones
//! the stored object does not have and the client left as it was shown them, where
//! leaving them out means the same (a `targetPort` shown as the old `port` stays when
//! the `port` changes), so a round trip stores what was stored and a template stays its
//! revision.

use serde_json::{Value, json};

use super::Kind;

/// The defaulting pass of a kind (none for kinds nobody writes).
pub(super) fn of(kind: Kind) -> Option<fn(&mut Value)> {
    match kind {
        Kind::Deployment => Some(deployment),
        Kind::ReplicaSet => Some(replica_set),
        Kind::Pod => Some(pod),
        Kind::Service => Some(service),
        _ => None,
    }
}

/// Sets `key` of the object `v` to `value` unless it has one.
fn default(v: &mut Value, key: &str, value: Value) {
    if let Some(map) = v.as_object_mut() {
        let slot = map.entry(key).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// The object at `key` of `v`, made (empty) if `v` is an object without one; `None` if
/// `v` or what is at `key` is not an object.
fn object<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    default(v, key, json!({}));
    v.get_mut(key).filter(|o| o.is_object())
}

/// The elements of the array at `key` of `v` (none if it is not an array).
fn each<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// `Always` for an image without a tag or tagged `latest`, else `IfNotPresent` (as
/// Kubernetes' `parsers.ParseImageName` reads a reference).
fn pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.rsplit_once(':').map(|(_, tag)| tag);
    match (tag, digest) {
        (Some("latest"), _) | (None, None) => "Always",
        _ => "IfNotPresent",
    }
}

/// A probe's thresholds and its HTTP request's path and scheme.
fn probe(p: &mut Value) {
    default(p, "timeoutSeconds", json!(1));
    default(p, "periodSeconds", json!(10));
    default(p, "successThreshold", json!(1));
    default(p, "failureThreshold", json!(3));
    if let Some(get) = p.get_mut("httpGet").filter(|g| g.is_object()) {
        default(get, "path", json!("/"));
        default(get, "scheme", json!("HTTP"));
    }
}

fn container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    default(c, "imagePullPolicy", json!(pull_policy(&image)));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    // Go writes the struct even when it is empty.
    default(c, "resources", json!({}));
    for port in each(c, "ports") {
        default(port, "protocol", json!("TCP"));
    }
    for key in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(key).filter(|p| p.is_object()) {
            probe(p);
        }
    }
}

/// What every pod spec gets (templates included).
fn pod_spec(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for c in each(spec, "containers") {
        container(c);
    }
}

fn pod_template(template: &mut Value) {
    if let Some(spec) = object(template, "spec") {
        pod_spec(spec);
    }
}

/// A Deployment's replicas, strategy, history and deadline, and its template's defaults.
pub(super) fn deployment(d: &mut Value) {
    let Some(spec) = object(d, "spec") else {
        return;
    };
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    if let Some(strategy) = object(spec, "strategy") {
        default(strategy, "type", json!("RollingUpdate"));
        if strategy["type"] == "RollingUpdate"
            && let Some(rolling) = object(strategy, "rollingUpdate")
        {
            default(rolling, "maxUnavailable", json!("25%"));
            default(rolling, "maxSurge", json!("25%"));
        }
    }
    if let Some(template) = object(spec, "template") {
        pod_template(template);
    }
}

/// A ReplicaSet's template, defaulted as its Deployment's is (kubectl finds a
/// Deployment's ReplicaSet by comparing the two).
pub(super) fn replica_set(rs: &mut Value) {
    if let Some(spec) = object(rs, "spec") {
        default(spec, "replicas", json!(1));
        if let Some(template) = object(spec, "template") {
            pod_template(template);
        }
    }
}

/// A pod: its spec's defaults, what only pods get (service links, requests from
/// limits), the grace period of one being deleted, and its QoS class.
pub(super) fn pod(p: &mut Value) {
    if let Some(spec) = object(p, "spec") {
        pod_spec(spec);
        default(spec, "enableServiceLinks", json!(true));
        for c in each(spec, "containers") {
            let limits = c["resources"]["limits"].clone();
            if let (Some(limits), Some(resources)) = (limits.as_object(), object(c, "resources"))
                && !limits.is_empty()
                && let Some(requests) = object(resources, "requests")
            {
                for (k, v) in limits {
                    default(requests, k, v.clone());
                }
            }
        }
    }
    let grace = p["spec"]["terminationGracePeriodSeconds"].clone();
    if !p["metadata"]["deletionTimestamp"].is_null()
        && let Some(meta) = object(p, "metadata")
    {
        default(meta, "deletionGracePeriodSeconds", grace);
    }
    let qos = qos_class(&p["spec"]);
    if let Some(status) = object(p, "status") {
        default(status, "qosClass", json!(qos));
    }
}

/// `Guaranteed` when every container's cpu and memory requests equal its limits,
/// `BestEffort` when none asks for anything, else `Burstable` (as Kubernetes classes a
/// pod when it is created).
fn qos_class(spec: &Value) -> &'static str {
    let containers = spec["containers"].as_array().map_or(&[][..], Vec::as_slice);
    let asks = |c: &Value, which: &str| {
        c["resources"][which]
            .as_object()
            .is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"))
    };
    if containers
        .iter()
        .all(|c| !asks(c, "requests") && !asks(c, "limits"))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][r];
            !limit.is_null() && &c["resources"]["requests"][r] == limit
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A Service's type, session affinity, traffic policies, and its ports' protocol and
/// target.
pub(super) fn service(s: &mut Value) {
    let Some(spec) = object(s, "spec") else {
        return;
    };
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let kind = spec["type"].as_str().unwrap_or_default().to_string();
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    for port in each(spec, "ports") {
        default(port, "protocol", json!("TCP"));
        // An unset target is 0 or "" in Go: the port itself.
        let target = &port["targetPort"];
        if (target.is_null() || *target == 0 || *target == "")
            && let Some(p) = port.as_object_mut()
        {
            let number = p.get("port").cloned().unwrap_or(Value::Null);
            p.insert("targetPort".into(), number);
        }
    }
}

/// A step of a path into a value.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn at_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(i),
    })
}

/// The paths where `filled` has what `stored` lacks and `incoming` has it as filled.
fn shown_defaults(
    filled: &Value,
    stored: Option<&Value>,
    incoming: &Value,
    path: &mut Vec<Step>,
    out: &mut Vec<Vec<Step>>,
) {
    match (filled, incoming) {
        (Value::Object(f), Value::Object(i)) => {
            for (k, fv) in f {
                let Some(iv) = i.get(k) else { continue };
                let sv = stored.and_then(|s| s.get(k));
                path.push(Step::Key(k.clone()));
                if sv.is_none() && iv == fv {
                    out.push(path.clone());
                } else {
                    shown_defaults(fv, sv, iv, path, out);
                }
                path.pop();
            }
        }
        (Value::Array(f), Value::Array(i)) => {
            for (n, (fv, iv)) in f.iter().zip(i).enumerate() {
                path.push(Step::Index(n));
                shown_defaults(fv, stored.and_then(|s| s.get(n)), iv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Takes out of `incoming` (an object a client sends back) the defaults `fill` shows on
/// `stored` that `incoming` still has as shown, where filling what is left gives them
/// back: what the client changed stays, and so does a default that would now come out
/// otherwise (an `imagePullPolicy` kept across a new image tag).
pub(super) fn unfill(incoming: &mut Value, stored: &Value, fill: fn(&mut Value)) {
    let mut filled = stored.clone();
    fill(&mut filled);
    let mut paths = Vec::new();
    shown_defaults(&filled, Some(stored), incoming, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        return;
    }
    let mut stripped = incoming.clone();
    let mut taken: Vec<(Vec<Step>, Value)> = Vec::new();
    for path in paths {
        let Some((Step::Key(last), parent)) = path.split_last() else {
            continue;
        };
        if let Some(map) = at_mut(&mut stripped, parent).and_then(Value::as_object_mut)
            && let Some(v) = map.remove(last)
        {
            taken.push((path, v));
        }
    }
    let mut refilled = stripped.clone();
    fill(&mut refilled);
    for (path, v) in taken {
        if at(&refilled, &path) != Some(&v) {
            put(&mut stripped, &path, v);
        }
    }
    *incoming = stripped;
}

/// Puts `v` back at `path` (whose parent is still there: only leaves were taken).
fn put(root: &mut Value, path: &[Step], v: Value) {
    if let Some((Step::Key(last), parent)) = path.split_last()
        && let Some(map) = at_mut(root, parent).and_then(Value::as_object_mut)
    {
        map.insert(last.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web:v1",
                        "ports": [{"containerPort": 80}],
                        "readinessProbe": {"httpGet": {"port": 80}}}]}
                }
            }
        })
    }

    #[test]
    fn a_deployment_is_served_as_kubernetes_defaults_it() {
        let mut d = stored_deployment();
        deployment(&mut d);
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["schedulerName"], "default-scheduler");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["securityContext"], json!({}));
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["resources"], json!({}));
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        // A Recreate strategy has no rolling update; what is written is kept.
        let mut d = stored_deployment();
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        d["spec"]["replicas"] = json!(0);
        deployment(&mut d);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(d["spec"]["replicas"], 0);
    }

    #[test]
    fn pull_policies_follow_the_tag() {
        for (image, policy) in [
            ("web", "Always"),
            ("web:latest", "Always"),
            ("registry:5000/web", "Always"),
            ("registry:5000/web:v1", "IfNotPresent"),
            ("web@sha256:abc", "IfNotPresent"),
            ("web:latest@sha256:abc", "Always"),
        ] {
            assert_eq!(pull_policy(image), policy, "{image}");
        }
    }

    #[test]
    fn a_terminating_pod_has_its_grace_period_and_every_pod_a_class() {
        let mut p = json!({
            "metadata": {"name": "web-1", "deletionTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "web", "image": "web:v1",
                "resources": {"limits": {"memory": "64Mi", "cpu": "1"}}}]},
            "status": {"phase": "Running"}
        });
        pod(&mut p);
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(p["spec"]["enableServiceLinks"], true);
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"],
            json!({"memory": "64Mi", "cpu": "1"})
        );
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
        let mut p = json!({"metadata": {"name": "web-2"},
            "spec": {"containers": [{"name": "web", "image": "web"}]}});
        pod(&mut p);
        assert!(p["metadata"]["deletionGracePeriodSeconds"].is_null());
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        let burstable = json!({"containers": [{"resources": {"requests": {"memory": "1Mi"}}}]});
        assert_eq!(qos_class(&burstable), "Burstable");
    }

    #[test]
    fn a_service_gets_its_type_affinity_policies_and_port_targets() {
        let mut s = json!({"spec": {"ports": [{"port": 80}, {"port": 81, "targetPort": "http"},
            {"port": 82, "targetPort": 0}]}});
        service(&mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(s["spec"]["externalTrafficPolicy"].is_null());
        let targets: Vec<&Value> = (0..3)
            .map(|i| &s["spec"]["ports"][i]["targetPort"])
            .collect();
        assert_eq!(targets, [&json!(80), &json!("http"), &json!(82)]);
        let mut s = json!({"spec": {"type": "NodePort", "ports": []}});
        service(&mut s);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
    }

    #[test]
    fn what_a_client_sends_back_unchanged_is_stored_as_it_was() {
        let stored = stored_deployment();
        let mut shown = stored.clone();
        deployment(&mut shown);
        let mut back = shown.clone();
        unfill(&mut back, &stored, deployment);
        assert_eq!(back, stored);

        // A changed image stays, and so does a pull policy the new tag would change.
        let mut back = shown.clone();
        back["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:latest");
        unfill(&mut back, &stored, deployment);
        let c = &back["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "web:latest");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert!(c["terminationMessagePath"].is_null(), "{c}");

        // A default changed by the client is the client's; part of a default object
        // changed leaves the rest out.
        let mut back = shown.clone();
        back["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = json!(1);
        back["spec"]["template"]["spec"]["dnsPolicy"] = json!("Default");
        unfill(&mut back, &stored, deployment);
        assert_eq!(
            back["spec"]["strategy"],
            json!({"rollingUpdate": {"maxSurge": 1}})
        );
        assert_eq!(back["spec"]["template"]["spec"]["dnsPolicy"], "Default");
        assert!(back["spec"]["replicas"].is_null());

        // A Service's target shown as its port stays when the port changes.
        let stored = json!({"spec": {"ports": [{"port": 80}]}});
        let mut back = stored.clone();
        service(&mut back);
        back["spec"]["ports"][0]["port"] = json!(81);
        unfill(&mut back, &stored, service);
        assert_eq!(
            back["spec"]["ports"][0],
            json!({"port": 81, "targetPort": 80})
        );
    }
}

#[cfg(test)]
mod router_tests {
    use http::StatusCode;
    use serde_json::{Value, json};

    use super::super::testing::{get, send};

    const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

    /// The templates of `web`'s revisions as stored, oldest first.
    fn stored_templates(shared: &crate::Shared) -> Vec<Value> {
        let d = shared
            .objects
            .stored_deployments()
            .into_iter()
            .find(|d| d.object.metadata.name == "web")
            .unwrap();
        d.revisions
            .iter()
            .map(|r| serde_json::to_value(&r.template).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn defaults_are_served_and_what_comes_back_unchanged_changes_nothing() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap();
        let merge = [("content-type", "application/merge-patch+json")];
        // As `kubectl apply` creates a manifest without replicas.
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nope:v1",
                        "ports": [{"containerPort": 80}]}]}}}});
        let (s, _, v) = send(&router, t, "POST", DEPLOYMENTS, &[], Some(d)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (_, _, shown) = get(&router, t, &format!("{DEPLOYMENTS}/web")).await;
        assert_eq!(shown["spec"]["replicas"], 1);
        assert_eq!(shown["spec"]["revisionHistoryLimit"], 10);
        let pod = &shown["spec"]["template"]["spec"];
        assert_eq!(
            (&pod["dnsPolicy"], &pod["securityContext"]),
            (&json!("ClusterFirst"), &json!({}))
        );
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
        let first = stored_templates(&node.shared);

        // The object as read, sent back whole (kubectl replace, edit): no warnings about
        // the defaults, nothing changes, the template is still revision 1's.
        let (s, h, v) = send(
            &router,
            t,
            "PUT",
            &format!("{DEPLOYMENTS}/web"),
            &[],
            Some(shown.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(h.get("warning").is_none(), "{h:?}");
        assert_eq!(v["metadata"]["generation"], shown["metadata"]["generation"]);
        assert_eq!(stored_templates(&node.shared), first);

        // A new image is a new revision whose template holds no defaults either.
        let image = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nope:v2", "ports": [{"containerPort": 80}],
             "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log",
             "terminationMessagePolicy": "File", "resources": {}}]}}}});
        let (s, h, v) = send(
            &router,
            t,
            "PATCH",
            &format!("{DEPLOYMENTS}/web"),
            &merge,
            Some(image),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(h.get("warning").is_none(), "{h:?}");
        let templates = stored_templates(&node.shared);
        assert_eq!(templates.len(), 2);
        let mut expected = first[0].clone();
        expected["spec"]["containers"][0]["image"] = json!("nope:v2");
        assert_eq!(templates[1], expected);

        // A third revision written with a default in it (`skiff apply` stores what the
        // file says).
        let manifest = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: 'nope:v3', ports: [{containerPort: 80, protocol: TCP}]}]}\n";
        let files = json!({"files": [{"source": "web.yaml", "text": manifest}]});
        let json = [("content-type", "application/json")];
        let (s, _, v) = send(&router, t, "POST", "/v1/apply", &json, Some(files)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(stored_templates(&node.shared).len(), 3);

        // `rollout undo` sends the first ReplicaSet's template, as served: revision 1
        // comes back as revision 4, not as a copy (nor one with the third's protocol).
        let (_, _, rs) = get(&router, t, "/apis/apps/v1/namespaces/default/replicasets").await;
        let old = rs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1")
            .unwrap();
        let mut template = old["spec"]["template"].clone();
        template["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("pod-template-hash");
        let undo = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
        let (s, _, v) = send(
            &router,
            t,
            "PATCH",
            &format!("{DEPLOYMENTS}/web"),
            &[("content-type", "application/json-patch+json")],
            Some(undo),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "4"
        );
        let templates = stored_templates(&node.shared);
        assert_eq!(templates.len(), 3);
        assert_eq!(templates[2], first[0]);
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }
}
