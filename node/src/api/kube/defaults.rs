//! Kubernetes' defaults: filled into what is served, taken out of what comes back.
//!
//! The API server defaults every object before it stores it (`pkg/apis/apps/v1` and
//! `pkg/apis/core/v1`, `defaults.go`), so clients read complete objects and rely on it:
//! `kubectl describe` dereferences a Deployment's `spec.replicas` and a terminating pod's
//! `metadata.deletionGracePeriodSeconds`, `kubectl debug` a pod's `securityContext`.
//! skiff stores objects as they were written (a pod template's JSON is its revision's
//! hash), so defaulting is a pass over the served value instead: each kind's
//! `defaults` (in `resources/`), built of the passes here that kinds share (pod specs
//! and templates).
//!
//! An object a client read comes back with those defaults in it (`kubectl edit`,
//! `set image`, `apply`'s patch of the object as served). [`unfill`] takes out the ones
//! the stored object does not have and the client left as it was shown them, where
//! leaving them out means the same (a `targetPort` shown as the old `port` stays when
//! the `port` changes), so a round trip stores what was stored and a template stays its
//! revision.

use serde_json::{Value, json};

use super::Kind;

/// The defaulting pass of a kind (none for kinds nobody writes): its
/// [`Served::defaults`](super::resources::Served::defaults).
pub(super) fn of(kind: Kind) -> Option<fn(&mut Value)> {
    kind.served().defaults()
}

/// Sets `key` of the object `v` to `value` unless it has one.
pub(super) fn default(v: &mut Value, key: &str, value: Value) {
    if let Some(map) = v.as_object_mut() {
        let slot = map.entry(key).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// The object at `key` of `v`, made (empty) if `v` is an object without one; `None` if
/// `v` or what is at `key` is not an object.
pub(super) fn object<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    default(v, key, json!({}));
    v.get_mut(key).filter(|o| o.is_object())
}

/// The elements of the array at `key` of `v` (none if it is not an array).
pub(super) fn each<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
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
pub(super) fn pod_spec(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for c in each(spec, "containers") {
        container(c);
    }
}

pub(super) fn pod_template(template: &mut Value) {
    if let Some(spec) = object(template, "spec") {
        pod_spec(spec);
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
    use super::super::resources::deployment::defaults as deployment;
    use super::super::testing::stored_deployment;
    use super::*;

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
        use super::super::resources::service::defaults as service;
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
        let d = shared.objects.stored_deployment("web").unwrap();
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
