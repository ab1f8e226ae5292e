//! Deployments, Services and pods over HTTP.
//!
//! Reads are served at the Kubernetes API's own paths and shapes
//! (`/apis/apps/v1/namespaces/default/deployments`, `/api/v1/namespaces/default/pods`,
//! lists with `items`, `?labelSelector=`), so the same handlers can answer kubectl.
//! Changes skiff's CLI makes in one step have skiff paths: `POST /v1/apply` and
//! `/v1/delete` take whole manifest files (read on the node, all or nothing),
//! `/v1/deployments/{name}/image|rollback|history` are `set image`, `rollout undo` and
//! `rollout history`. Scale is the Kubernetes `scale` subresource.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use skiff_spec::api::{ApplyResult, ManifestFiles, RolloutHistory};
use skiff_spec::k8s::{self, List, ListMeta};
use skiff_spec::manifest::{self, Object};

use super::ApiError;
use crate::Shared;
use crate::desired::Command;

/// Largest request body of these routes (manifest files are bounded again one by one).
const BODY_LIMIT: usize = 32 << 20;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/delete", post(delete_files))
        .route("/v1/deployments/{name}/image", post(set_image))
        .route("/v1/deployments/{name}/rollback", post(rollback))
        .route("/v1/deployments/{name}/history", get(history))
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments",
            get(list_deployments),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            get(get_deployment)
                .put(put_deployment)
                .delete(delete_deployment),
        )
        .route(
            "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
            get(get_scale).put(put_scale).patch(put_scale),
        )
        .route("/api/v1/namespaces/{ns}/services", get(list_services))
        .route(
            "/api/v1/namespaces/{ns}/services/{name}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(get_pod).delete(delete_pod),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// skiff has one namespace.
fn namespace(ns: &str) -> Result<(), ApiError> {
    if ns == "default" {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "namespace {ns:?} not found; skiff has only the namespace default"
        )))
    }
}

/// One requirement of an equality-based label selector.
#[derive(Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// Parses `app=web,tier!=db,canary,!legacy` (kubectl's `-l`).
fn selector(text: &str) -> Result<Vec<Requirement>, ApiError> {
    let bad = |part: &str| {
        ApiError::bad_request(
            "invalid_selector",
            format!("labelSelector: {part:?} is not key, !key, key=value or key!=value"),
        )
    };
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::Absent(k.trim().into())
        } else {
            Requirement::Exists(part.into())
        };
        let key = match &r {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::Exists(k)
            | Requirement::Absent(k) => k,
        };
        if !key_ok(key) {
            return Err(bad(part));
        }
        out.push(r);
    }
    Ok(out)
}

fn matches(reqs: &[Requirement], labels: &std::collections::BTreeMap<String, String>) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Equals(k, v) => labels.get(k) == Some(v),
        Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        Requirement::Exists(k) => labels.contains_key(k),
        Requirement::Absent(k) => !labels.contains_key(k),
    })
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default, rename = "labelSelector")]
    label_selector: Option<String>,
}

fn list<T>(api_version: &str, kind: &str, version: u64, items: Vec<T>) -> Json<List<T>> {
    Json(List {
        api_version: api_version.into(),
        kind: kind.into(),
        metadata: ListMeta {
            resource_version: version.to_string(),
        },
        items,
    })
}

async fn apply(
    State(shared): State<Arc<Shared>>,
    Json(files): Json<ManifestFiles>,
) -> Result<Json<ApplyResult>, ApiError> {
    Ok(Json(shared.apps.apply_files(&files.files).await?))
}

async fn delete_files(
    State(shared): State<Arc<Shared>>,
    Json(files): Json<ManifestFiles>,
) -> Result<Json<ApplyResult>, ApiError> {
    Ok(Json(shared.apps.delete_files(&files.files).await?))
}

async fn list_deployments(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<List<k8s::Deployment>>, ApiError> {
    namespace(&ns)?;
    let reqs = selector(q.label_selector.as_deref().unwrap_or(""))?;
    let items = shared
        .apps
        .deployments()
        .into_iter()
        .filter(|d| matches(&reqs, &d.metadata.labels))
        .collect();
    Ok(list(
        "apps/v1",
        "DeploymentList",
        shared.apps.desired_version(),
        items,
    ))
}

async fn get_deployment(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<k8s::Deployment>, ApiError> {
    namespace(&ns)?;
    Ok(Json(shared.apps.deployment(&name)?))
}

/// Checks an object sent as JSON the way the manifest reader checks a document.
fn validated(object: Object, name: &str) -> Result<Object, ApiError> {
    let problems = match &object {
        Object::Deployment(d) => manifest::validate_deployment(d),
        Object::Service(s) => manifest::validate_service(s),
    };
    if let Some(p) = problems.first() {
        return Err(ApiError::bad_request(
            "invalid_manifest",
            format!("{}: {p}", object.reference()),
        ));
    }
    if object.metadata().name != name {
        return Err(ApiError::bad_request(
            "invalid_manifest",
            format!(
                "metadata.name {:?} does not match the path's {name:?}",
                object.metadata().name
            ),
        ));
    }
    Ok(object)
}

async fn put_deployment(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Json(d): Json<k8s::Deployment>,
) -> Result<Json<k8s::Deployment>, ApiError> {
    namespace(&ns)?;
    if d.api_version != "apps/v1" || d.kind != "Deployment" {
        return Err(ApiError::bad_request(
            "invalid_manifest",
            format!(
                "expected apps/v1 Deployment, got {} {}",
                d.api_version, d.kind
            ),
        ));
    }
    shared
        .apps
        .apply_object(validated(Object::Deployment(Box::new(d)), &name)?)
        .await?;
    Ok(Json(shared.apps.deployment(&name)?))
}

async fn delete_deployment(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<k8s::Deployment>, ApiError> {
    namespace(&ns)?;
    let d = shared.apps.deployment(&name)?;
    shared
        .apps
        .submit(Command::DeleteDeployment { name })
        .await?;
    Ok(Json(d))
}

/// The `autoscaling/v1 Scale` of a Deployment.
fn scale_object(d: &k8s::Deployment) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": d.metadata.name, "namespace": "default"},
        "spec": {"replicas": d.spec.replicas.unwrap_or(1)},
        "status": {"replicas": d.status.as_ref().map_or(0, |s| s.replicas)},
    })
}

async fn get_scale(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    namespace(&ns)?;
    Ok(Json(scale_object(&shared.apps.deployment(&name)?)))
}

#[derive(Deserialize)]
pub(super) struct ScaleBody {
    spec: ScaleSpec,
}

#[derive(Deserialize)]
struct ScaleSpec {
    replicas: i32,
}

async fn put_scale(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<ScaleBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    namespace(&ns)?;
    shared
        .apps
        .submit(Command::ScaleDeployment {
            name: name.clone(),
            replicas: body.spec.replicas,
        })
        .await?;
    Ok(Json(scale_object(&shared.apps.deployment(&name)?)))
}

#[derive(Deserialize)]
pub(super) struct SetImage {
    container: String,
    image: String,
}

async fn set_image(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(body): Json<SetImage>,
) -> Result<Json<k8s::Deployment>, ApiError> {
    if body.image.trim().is_empty() {
        return Err(ApiError::bad_request("invalid", "the image is empty"));
    }
    shared
        .apps
        .submit(Command::SetImage {
            name: name.clone(),
            container: body.container,
            image: body.image,
            at: crate::apps::now_rfc3339(),
        })
        .await?;
    Ok(Json(shared.apps.deployment(&name)?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Rollback {
    #[serde(default)]
    to_revision: Option<i64>,
}

async fn rollback(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(body): Json<Rollback>,
) -> Result<Json<k8s::Deployment>, ApiError> {
    shared
        .apps
        .submit(Command::Rollback {
            name: name.clone(),
            // kubectl's --to-revision=0 means "the previous one".
            to_revision: body.to_revision.filter(|r| *r != 0),
            at: crate::apps::now_rfc3339(),
        })
        .await?;
    Ok(Json(shared.apps.deployment(&name)?))
}

async fn history(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<RolloutHistory>, ApiError> {
    Ok(Json(shared.apps.rollout_history(&name)?))
}

async fn list_services(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<List<k8s::Service>>, ApiError> {
    namespace(&ns)?;
    let reqs = selector(q.label_selector.as_deref().unwrap_or(""))?;
    let items = shared
        .apps
        .services()
        .into_iter()
        .filter(|s| matches(&reqs, &s.metadata.labels))
        .collect();
    Ok(list(
        "v1",
        "ServiceList",
        shared.apps.desired_version(),
        items,
    ))
}

async fn get_service(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<k8s::Service>, ApiError> {
    namespace(&ns)?;
    Ok(Json(shared.apps.service(&name)?))
}

async fn put_service(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Json(s): Json<k8s::Service>,
) -> Result<Json<k8s::Service>, ApiError> {
    namespace(&ns)?;
    if s.api_version != "v1" || s.kind != "Service" {
        return Err(ApiError::bad_request(
            "invalid_manifest",
            format!("expected v1 Service, got {} {}", s.api_version, s.kind),
        ));
    }
    shared
        .apps
        .apply_object(validated(Object::Service(Box::new(s)), &name)?)
        .await?;
    Ok(Json(shared.apps.service(&name)?))
}

async fn delete_service(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<k8s::Service>, ApiError> {
    namespace(&ns)?;
    let s = shared.apps.service(&name)?;
    shared.apps.submit(Command::DeleteService { name }).await?;
    Ok(Json(s))
}

/// Every node gossip knows, with its Raft role and whether it is cordoned.
async fn nodes(shared: &Shared) -> Vec<k8s::Node> {
    let roles = shared.consensus.roles();
    let cordoned = shared.apps.cordoned();
    shared
        .cluster
        .members()
        .await
        .iter()
        .map(|m| {
            let role = crate::raft::raft_id(&m.node_id)
                .and_then(|id| roles.get(&id))
                .map_or(crate::raft::Role::None, |r| *r);
            let mut node = m.node(role.as_str());
            node.spec.unschedulable = cordoned.contains(&node.metadata.name);
            node
        })
        .collect()
}

/// `PATCH /api/v1/nodes/{name}`: only `spec.unschedulable` may change (cordon,
/// uncordon), as a JSON merge or strategic merge patch carries it.
async fn patch_node(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<k8s::Node>, ApiError> {
    node_named(&shared, &name).await?;
    let patch: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_patch", format!("the patch is not JSON: {e}"))
    })?;
    let unschedulable = match &patch["spec"]["unschedulable"] {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Null => false,
        other => {
            return Err(ApiError::bad_request(
                "invalid_patch",
                format!("spec.unschedulable must be true or false, not {other}"),
            ));
        }
    };
    shared
        .apps
        .submit(Command::Cordon {
            node: name.clone(),
            unschedulable,
        })
        .await?;
    node_named(&shared, &name).await.map(Json)
}

/// This node's pods and every live peer's (a peer that does not answer within 2 s is
/// left out: its pods show once it does).
pub(super) async fn all_pods(shared: &Shared) -> Vec<k8s::Pod> {
    let mut pods = shared.apps.pod_objects(&shared.cluster.identity().name);
    let view = shared.apps.view();
    let asks = view
        .nodes
        .iter()
        .filter(|n| n.id != view.me)
        .filter_map(|n| n.api.clone())
        .map(|api| async move {
            shared
                .consensus
                .client()
                .call::<_, Vec<k8s::Pod>>(&api, "/v1/peer/pods", &(), Duration::from_secs(2))
                .await
        });
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(remote) => pods.extend(remote),
            Err(e) => tracing::debug!(error = %e, "a peer's pods are left out"),
        }
    }
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods
}

async fn list_nodes(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<List<k8s::Node>>, ApiError> {
    let reqs = selector(q.label_selector.as_deref().unwrap_or(""))?;
    let items = nodes(&shared)
        .await
        .into_iter()
        .filter(|n| matches(&reqs, &n.metadata.labels))
        .collect();
    Ok(list("v1", "NodeList", shared.apps.desired_version(), items))
}

/// Node `name`, or 404.
async fn node_named(shared: &Shared, name: &str) -> Result<k8s::Node, ApiError> {
    nodes(shared)
        .await
        .into_iter()
        .find(|n| n.metadata.name == name)
        .ok_or_else(|| ApiError::not_found(format!("node {name} not found")))
}

async fn get_node(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<k8s::Node>, ApiError> {
    node_named(&shared, &name).await.map(Json)
}

async fn list_pods(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<List<k8s::Pod>>, ApiError> {
    namespace(&ns)?;
    let reqs = selector(q.label_selector.as_deref().unwrap_or(""))?;
    let items = all_pods(&shared)
        .await
        .into_iter()
        .filter(|p| matches(&reqs, &p.metadata.labels))
        .collect();
    Ok(list("v1", "PodList", shared.apps.desired_version(), items))
}

/// Pod `name` (on any node) as the API shows it, or 404.
async fn pod(shared: &Shared, name: &str) -> Result<k8s::Pod, ApiError> {
    all_pods(shared)
        .await
        .into_iter()
        .find(|p| p.metadata.name == name)
        .ok_or_else(|| ApiError::not_found(format!("pod {name} not found")))
}

async fn get_pod(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<k8s::Pod>, ApiError> {
    namespace(&ns)?;
    Ok(Json(pod(&shared, &name).await?))
}

async fn delete_pod(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<k8s::Pod>, ApiError> {
    namespace(&ns)?;
    let pod = pod(&shared, &name).await?;
    let node = pod.spec.node_name.clone().unwrap_or_default();
    if node == shared.cluster.identity().name {
        shared.apps.delete_pod(&name)?;
        return Ok(Json(pod));
    }
    // Another node's pod: that node deletes it.
    let view = shared.apps.view();
    let api = view
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.api.clone())
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "pod {name} runs on node {node}, which is not reachable now"
            ))
        })?;
    shared
        .consensus
        .client()
        .call::<_, ()>(&api, "/v1/peer/delete-pod", &name, Duration::from_secs(10))
        .await
        .map_err(|e| {
            ApiError::conflict(format!(
                "pod {name} runs on node {node}, which could not delete it: {e}"
            ))
        })?;
    Ok(Json(pod))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn label_selectors_as_kubectl_writes_them() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".into(), "front".into()),
        ]
        .into();
        let sel = |s: &str| matches(&selector(s).unwrap(), &labels);
        assert!(sel(""));
        assert!(sel("app=web"));
        assert!(sel("app==web,tier"));
        assert!(sel("app!=db,!canary"));
        assert!(!sel("app=db"));
        assert!(!sel("tier!=front"));
        assert!(!sel("canary"));
        assert!(!sel("!app"));
        assert!(selector("a b=c").is_err());
        assert!(selector("=x").is_err());
    }

    /// Sends one request through the API's router (no socket), with the token.
    async fn call(
        router: &axum::Router,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = tower::ServiceExt::oneshot(router.clone(), req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Polls `check` until it gives a value; panics after 10 s.
    async fn eventually<T, F, Fut>(mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    const MANIFEST: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {tier: front}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: 'nope:v1', colour: blue}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";

    #[tokio::test]
    async fn objects_are_applied_listed_scaled_and_deleted_through_the_router() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::start(crate::NodeConfig::for_test(dir.path().to_path_buf()))
            .await
            .unwrap();
        let router = crate::api::router(node.shared.clone());
        let token = Some(node.shared.token.as_str());
        let files = |text: &str| json!({"files": [{"source": "web.yaml", "text": text}]});

        let (s, _) = call(
            &router,
            None,
            "GET",
            "/apis/apps/v1/namespaces/default/deployments",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        let (s, v) = call(&router, token, "POST", "/v1/apply", Some(files(MANIFEST))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v["results"][0],
            json!({"reference": "deployment.apps/web", "action": "created"})
        );
        assert_eq!(v["results"][1]["action"], "created");
        assert!(v["warnings"][0].as_str().unwrap().contains("colour"), "{v}");
        let (_, v) = call(&router, token, "POST", "/v1/apply", Some(files(MANIFEST))).await;
        assert_eq!(v["results"][0]["action"], "unchanged");

        // A bad file: one line naming the file and the problem; nothing applied.
        let bad = MANIFEST
            .replace("replicas: 2", "replicas: -2")
            .replace("name: web\n  labels", "name: other\n  labels");
        let (s, v) = call(&router, token, "POST", "/v1/apply", Some(files(&bad))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["code"], "invalid_manifest");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("web.yaml")
                && message.contains("spec.replicas")
                && !message.contains('\n'),
            "{message}"
        );

        // Bounds of the route: files per request, bytes per request.
        let many = json!({"files": vec![json!({"source": "x.yaml", "text": ""}); 65]});
        let (s, v) = call(&router, token, "POST", "/v1/apply", Some(many)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("65 files"),
            "{v}"
        );
        let huge = files(&" ".repeat(33 << 20));
        let (s, _) = call(&router, token, "POST", "/v1/apply", Some(huge)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

        let (s, v) = call(
            &router,
            token,
            "GET",
            "/apis/apps/v1/namespaces/default/deployments?labelSelector=tier%3Dfront",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["kind"], "DeploymentList");
        assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
        let (_, v) = call(
            &router,
            token,
            "GET",
            "/apis/apps/v1/namespaces/default/deployments?labelSelector=tier%3Dback",
            None,
        )
        .await;
        assert_eq!(v["items"].as_array().unwrap().len(), 0);
        let (s, v) = call(
            &router,
            token,
            "GET",
            "/apis/apps/v1/namespaces/kube-system/deployments",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

        // The scale subresource, as kubectl scale patches it.
        let (s, v) = call(
            &router,
            token,
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            Some(json!({"spec": {"replicas": 4}})),
        )
        .await;
        assert_eq!(
            (s, v["spec"]["replicas"].clone()),
            (StatusCode::OK, json!(4))
        );
        let (_, v) = call(
            &router,
            token,
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web",
            None,
        )
        .await;
        assert_eq!(v["spec"]["replicas"], 4);
        assert_eq!(v["metadata"]["generation"], 2);
        let (s, _) = call(
            &router,
            token,
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            Some(json!({"spec": {"replicas": -1}})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // Its pods wait for an image that is not there, and say so.
        let pods = eventually(|| async {
            let (_, v) = call(
                &router,
                token,
                "GET",
                "/api/v1/namespaces/default/pods",
                None,
            )
            .await;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            (items.len() == 4).then_some(items)
        })
        .await;
        assert!(pods.iter().all(|p| p["status"]["phase"] == "Pending"));

        let (s, _) = call(
            &router,
            token,
            "DELETE",
            "/api/v1/namespaces/default/services/web",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(
            &router,
            token,
            "GET",
            "/api/v1/namespaces/default/services/web",
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = call(&router, token, "POST", "/v1/delete", Some(files(MANIFEST))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["results"][0]["action"], "deleted");
        assert_eq!(v["results"][1]["action"], "not found");
        node.shutdown_token().cancel();
        node.wait().await;
    }
}
