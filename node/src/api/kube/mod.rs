//! The Kubernetes API, as kubectl and client-go speak it, over skiff's objects.
//!
//! Served on the API port under the token: discovery (`/api`, `/apis`, `/api/v1`,
//! `/apis/apps/v1`, `/apis/discovery.k8s.io/v1`, `/version`), the OpenAPI v2 document
//! kubectl validates with (`/openapi/v2`, JSON or protobuf), and the resources of the
//! `default` namespace: `deployments` (with `scale` and `status`), `replicasets` (a
//! Deployment's revisions, read-only), `pods` (read and delete), `services`, `events`,
//! `endpoints` and `endpointslices` (read-only), and the cluster's `nodes` and
//! `namespaces`. Verbs: get, list (label and field selectors, `limit`/`continue`),
//! watch (`?watch=true`, from a `resourceVersion`), create, update, patch (JSON, merge
//! and strategic merge), delete; `Table` answers when `kubectl get` asks for them.
//! Errors are `Status` objects (see `ApiError`). `/livez` and `/readyz` ([`health`])
//! are public.
//!
//! What each kind is (its discovery entry, defaults, Table columns, how the API writes
//! it) is its file in `resources/`, an implementation of [`resources::Served`]; the
//! code here routes and lists over every kind registered there.
//!
//! Objects are served as the API server defaults them ([`defaults`]); request bodies
//! are read in JSON, YAML or protobuf ([`body`]). Writes go through the same manifest
//! reader and commands as `skiff apply`: an object sent here is checked as a file would
//! be, and unknown fields come back as `Warning` headers, which kubectl prints.
//! Every read comes from the [`store`], which the [`feed`] keeps current.
//!
//! skiff's own CLI uses these paths too, plus `POST /v1/apply` and `/v1/delete` (whole
//! manifest files, read on the node, all or nothing) and
//! `/v1/deployments/{name}/image|rollback|history`.

mod body;
mod defaults;
mod discovery;
mod endpoints;
mod feed;
pub(super) mod health;
mod peers;
mod resources;
mod select;
mod served;
mod store;
mod table;
#[cfg(test)]
mod testing;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use skiff_spec::api::{ApplyResult, ManifestFiles, RolloutHistory};
use skiff_spec::k8s;
use skiff_spec::manifest::{self, Object};
use skiff_spec::patch::{self, PatchKind};

use feed::fresh_object;
pub(crate) use feed::run as run_feed;
pub(crate) use peers::{LocalPods, PodLog, PodsAfter, pods_after};
use select::Filter;
use served::{derived_uid, get_object, objects, value};
pub(crate) use store::Store;

use crate::Shared;
use crate::api::error::ApiError;
use crate::desired::Command;

/// Largest request body of these routes (manifest files are bounded again one by one).
const BODY_LIMIT: usize = 32 << 20;

/// Most watches open at once on a node.
const MAX_WATCHES: usize = 256;

/// The longest a watch stays open (clients watch again from where they were).
const MAX_WATCH: Duration = Duration::from_secs(1800);

/// Patches and object checks running at once on a node. serde_json holds an object of
/// small maps in some 27 times the bytes it serializes to, so one of up to 4 MiB may take
/// a few hundred MB while it is patched or checked: their number bounds what they take
/// together. More wait their turn (each takes a fraction of a second).
const MAX_CHECKS_AT_ONCE: usize = 2;

/// Turns at patching and checking objects, against [`MAX_CHECKS_AT_ONCE`].
static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CHECKS_AT_ONCE);

/// The revision annotation Kubernetes puts on Deployments and ReplicaSets.
const REVISION: &str = "deployment.kubernetes.io/revision";

pub(crate) use resources::Kind;
pub(crate) use resources::Resource;

/// The resource `plural` of `group`, if it is served.
fn resource(group: &str, plural: &str) -> Result<&'static Resource, ApiError> {
    resources::all()
        .find(|r| r.group == group && r.plural == plural)
        .ok_or_else(|| ApiError::not_found("the server could not find the requested resource"))
}

/// The discovery entry of `kind` (`kind.resource()`).
fn resource_of(kind: Kind) -> &'static Resource {
    kind.resource()
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/delete", post(delete_files))
        .route("/v1/deployments/{name}/image", post(set_image))
        .route("/v1/deployments/{name}/rollback", post(rollback))
        .route("/v1/deployments/{name}/history", get(history))
        .merge(discovery::routes());
    for group in resources::groups() {
        let prefix = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/v1")
        };
        let handler = move |state: State<Arc<Shared>>,
                            Path(params): Path<HashMap<String, String>>,
                            method: Method,
                            RawQuery(query): RawQuery,
                            headers: HeaderMap,
                            body: Result<Bytes, BytesRejection>| {
            let target = Target {
                group,
                namespace: params.get("ns").cloned(),
                resource: params.get("resource").cloned().unwrap_or_default(),
                name: params.get("name").cloned(),
                sub: params.get("sub").cloned(),
            };
            async move {
                match body {
                    Ok(body) => dispatch(&state.0, target, method, query, &headers, body)
                        .await
                        .unwrap_or_else(IntoResponse::into_response),
                    Err(e) => body_refused(&e).into_response(),
                }
            }
        };
        for shape in [
            "/{resource}",
            "/{resource}/{name}",
            "/{resource}/{name}/{sub}",
            "/namespaces/{ns}/{resource}",
            "/namespaces/{ns}/{resource}/{name}",
            "/namespaces/{ns}/{resource}/{name}/{sub}",
        ] {
            // An object is at most a manifest file's size (and a patch of one).
            router = router.route(
                &format!("{prefix}{shape}"),
                any(handler).layer(DefaultBodyLimit::max(manifest::MAX_MANIFEST_BYTES)),
            );
        }
    }
    router.layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// A body that could not be read, as a `Status` (kubectl shows axum's plain-text
/// rejection only as "the server responded with the status code 413").
fn body_refused(e: &BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!(
            "the request body is larger than {} bytes ({} MiB), the most an object or a patch of one may be",
            manifest::MAX_MANIFEST_BYTES,
            manifest::MAX_MANIFEST_BYTES >> 20
        ))
    } else {
        ApiError::bad_request("bad_body", e.body_text())
    }
}

/// What a request names.
struct Target {
    group: &'static str,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

/// Query parameters the API reads.
#[derive(Default)]
struct Params {
    label_selector: Option<String>,
    field_selector: Option<String>,
    watch: bool,
    resource_version: Option<String>,
    timeout: Option<Duration>,
    limit: Option<usize>,
    continue_: Option<String>,
    dry_run: bool,
    include_object: table::Include,
}

fn params(query: Option<String>) -> Result<Params, ApiError> {
    let mut p = Params::default();
    for (k, v) in crate::api::http::query_pairs(query) {
        match k.as_str() {
            "labelSelector" => p.label_selector = Some(v),
            "fieldSelector" => p.field_selector = Some(v),
            "watch" => p.watch = v == "true" || v == "1",
            "resourceVersion" => p.resource_version = Some(v),
            "timeoutSeconds" => {
                let s: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid",
                        format!("timeoutSeconds: {v:?} is not a number"),
                    )
                })?;
                p.timeout = Some(Duration::from_secs(s));
            }
            "limit" => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::bad_request("invalid", format!("limit: {v:?} is not a number"))
                })?;
                p.limit = (n > 0).then_some(n);
            }
            "continue" => p.continue_ = Some(v).filter(|v| !v.is_empty()),
            "dryRun" => p.dry_run = !v.is_empty(),
            "includeObject" => {
                p.include_object =
                    table::Include::parse(&v).map_err(|e| ApiError::bad_request("invalid", e))?;
            }
            // A watch that streams the list first (client-go's WatchList) waits for a
            // bookmark skiff does not send: refused as the API server refuses it when the
            // feature is off, and client-go lists and watches instead.
            "sendInitialEvents" if v == "true" => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                ));
            }
            // Read and ignored, as a server without these features ignores them.
            _ => {}
        }
    }
    Ok(p)
}

async fn dispatch(
    shared: &Arc<Shared>,
    t: Target,
    method: Method,
    query: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let res = resource(t.group, &t.resource)?;
    // `/api/v1/namespaces/default` is the namespace object itself.
    match (&t.namespace, res.namespaced) {
        (Some(ns), true) => namespace(ns)?,
        (Some(_), false) => {
            return Err(ApiError::not_found(
                "the server could not find the requested resource",
            ));
        }
        (None, true) if t.name.is_some() => {
            return Err(ApiError::not_found(
                "the server could not find the requested resource",
            ));
        }
        _ => {}
    }
    let p = params(query)?;
    let table = table::wanted(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
        .then_some(p.include_object);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // A subresource of the kind's own (`deployments/x/scale`); `status` is everyone's.
    if let (Some(name), Some(sub)) = (t.name.as_deref(), t.sub.as_deref())
        && sub != "status"
    {
        let request = resources::SubRequest {
            name,
            sub,
            method: method.clone(),
            content_type,
            body: body.clone(),
        };
        if let Some(answer) = res.served().subresource(shared, request) {
            return answer.await;
        }
    }
    match (method, t.name, t.sub.as_deref()) {
        (Method::GET, None, None) if p.watch => watch::watch(shared.clone(), res, p, table).await,
        (Method::GET, None, None) => list(shared, res, &p, table).await,
        (Method::POST, None, None) => create(shared, res, &p, content_type, &body).await,
        (Method::GET, Some(name), None | Some("status")) => {
            let object = get_object(shared, res, &name).await?;
            Ok(if let Some(include) = table {
                Json(table::table(res.kind, &[object], include, "", None)).into_response()
            } else {
                Json(object).into_response()
            })
        }
        (Method::PUT, Some(name), None) => {
            changeable(res)?;
            let object = body::object(res, content_type, &body)?;
            update(shared, res, &name, object, &p, true).await
        }
        (Method::PATCH, Some(name), None) => {
            patch_object(shared, res, &name, content_type, body, &p).await
        }
        (Method::DELETE, Some(name), None) => delete(shared, res, &name).await,
        (Method::PUT | Method::PATCH, Some(_), Some("status")) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("the status of {} is written by skiff", res.qualified()),
        )),
        (_, Some(_), Some(_)) => Err(ApiError::not_found(
            "the server could not find the requested resource",
        )),
        (method, _, _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not supported on {}", res.qualified()),
        )),
    }
}

/// skiff has one namespace.
fn namespace(ns: &str) -> Result<(), ApiError> {
    if ns == "default" {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "namespaces {ns:?} not found; skiff has only the namespace default"
        )))
    }
}

/// A resourceVersion from too far ahead, as the API server answers it (client-go lists
/// again).
fn too_large(version: u64, e: store::TooLarge) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "Too large resource version: {version}, current: {}",
            e.current
        ),
    )
}

fn not_found(res: &Resource, name: &str) -> ApiError {
    ApiError::not_found(format!("{} {name:?} not found", res.qualified()))
        .with_details(res.details(name))
}

async fn list(
    shared: &Shared,
    res: &Resource,
    p: &Params,
    table: Option<table::Include>,
) -> Result<Response, ApiError> {
    let filter = Filter::new(res.kind, p)?;
    if let Some(v) = p.resource_version.as_deref().and_then(|v| v.parse().ok()) {
        shared.kube_store.witness(v).map_err(|e| too_large(v, e))?;
    }
    let (all, version) = objects(shared, res.kind).await;
    let after = p
        .continue_
        .as_deref()
        .map(crate::api::http::continue_after)
        .transpose()?;
    let mut items: Vec<Value> = all
        .into_iter()
        .filter(|o| filter.admits(o))
        .filter(|o| {
            after
                .as_deref()
                .is_none_or(|a| o["metadata"]["name"].as_str() > Some(a))
        })
        .collect();
    let mut next = None;
    let mut remaining = 0;
    if let Some(limit) = p.limit
        && items.len() > limit
    {
        remaining = items.len() - limit;
        items.truncate(limit);
        next = items
            .last()
            .and_then(|o| o["metadata"]["name"].as_str())
            .map(crate::api::http::continue_token);
    }
    if let Some(include) = table {
        return Ok(Json(table::table(
            res.kind,
            &items,
            include,
            &version.to_string(),
            next.as_deref(),
        ))
        .into_response());
    }
    let mut metadata = json!({"resourceVersion": version.to_string()});
    if let Some(n) = next {
        metadata["continue"] = json!(n);
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(Json(json!({
        "apiVersion": res.api_version(),
        "kind": format!("{}List", res.kind_name),
        "metadata": metadata,
        "items": items,
    }))
    .into_response())
}

/// Annotations the node sets: never taken from what a client sends.
fn strip_server_fields(object: &mut Value) {
    // `get_mut`, not indexing: indexing a Value mutably inserts the keys it passes.
    if let Some(a) = object
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_object_mut)
    {
        a.remove(REVISION);
    }
}

/// Reads `object` as the manifest reader reads a file: checked, with warnings for the
/// fields skiff does not read.
fn read_object(
    res: &Resource,
    name: Option<&str>,
    mut object: Value,
) -> Result<(Object, Vec<String>), ApiError> {
    if object["apiVersion"] != res.api_version() || object["kind"] != res.kind_name {
        return Err(ApiError::bad_request(
            "invalid_object",
            format!(
                "the object is {} {}, not {} {}",
                object["apiVersion"].as_str().unwrap_or("<none>"),
                object["kind"].as_str().unwrap_or("<none>"),
                res.api_version(),
                res.kind_name
            ),
        ));
    }
    if let Some(name) = name
        && object["metadata"]["name"] != name
    {
        return Err(ApiError::bad_request(
            "invalid_object",
            format!(
                "metadata.name {} does not match the name in the path, {name:?}",
                object["metadata"]["name"]
            ),
        ));
    }
    strip_server_fields(&mut object);
    let text = object.to_string();
    within_limit(text.len())?;
    let mut docs = manifest::parse("the request", &text)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.message))?;
    let doc = docs
        .pop()
        .ok_or_else(|| ApiError::bad_request("invalid_object", "no object in the request"))?;
    // What the node reports (status, server metadata) is not the client's to set, and
    // not worth a warning.
    let warnings = doc
        .warnings
        .into_iter()
        .filter(|w| !w.contains("\"status") && !w.contains("\"metadata."))
        .collect();
    Ok((doc.object, warnings))
}

/// [`read_object`] on the blocking pool, in turn (after [`unfill`] when the object
/// comes back over a `stored` one): checking an object of up to 4 MiB, or comparing it
/// with its defaults, takes long enough to hold up the other requests of an executor
/// thread.
async fn checked_object(
    res: &'static Resource,
    name: Option<&str>,
    mut object: Value,
    stored: Option<Stored>,
) -> Result<(Object, Vec<String>), ApiError> {
    let name = name.map(str::to_string);
    let turn = CHECKS.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        if let Some(stored) = stored {
            unfill(&mut object, &stored);
        }
        read_object(res, name.as_deref(), object)
    })
    .await
    .map_err(ApiError::internal)?
}

/// `Warning` headers, as kubectl prints them.
fn warn(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings.iter().take(16) {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", v);
        }
    }
    response
}

async fn create(
    shared: &Shared,
    res: &'static Resource,
    p: &Params,
    content_type: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    if !res.served().writable() {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} are not created through the API on skiff",
                res.qualified()
            ),
        ));
    }
    let object = body::object(res, content_type, body)?;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "{} is invalid: metadata.name: Required value (generateName is not supported)",
                res.qualified()
            ),
        ));
    }
    if get_object(shared, res, &name).await.is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!("{} {name:?} already exists", res.qualified()),
        )
        .with_details(res.details(&name)));
    }
    let (object, warnings) = checked_object(res, None, object, None).await?;
    let written = write(shared, res, &name, object, p).await?;
    Ok(warn(
        (StatusCode::CREATED, Json(written)).into_response(),
        &warnings,
    ))
}

/// Applies a checked object (nothing with `dryRun`) and answers with it as stored.
async fn write(
    shared: &Shared,
    res: &Resource,
    name: &str,
    object: Object,
    p: &Params,
) -> Result<Value, ApiError> {
    if p.dry_run {
        let mut v = match &object {
            Object::Deployment(d) => value(d),
            Object::Service(s) => value(s),
        };
        v["metadata"]["namespace"] = json!("default");
        if let Some(fill) = defaults::of(res.kind) {
            fill(&mut v);
        }
        return Ok(v);
    }
    shared.objects.apply_object(object).await?;
    fresh_object(shared, res, name).await
}

async fn update(
    shared: &Shared,
    res: &'static Resource,
    name: &str,
    object: Value,
    p: &Params,
    check_version: bool,
) -> Result<Response, ApiError> {
    changeable(res)?;
    let current = get_object(shared, res, name).await?;
    if let Some(sent) = object["metadata"]["resourceVersion"].as_str()
        && let Ok(v) = sent.parse()
    {
        shared.kube_store.witness(v).map_err(|e| too_large(v, e))?;
    }
    if check_version
        && let Some(sent) = object["metadata"]["resourceVersion"].as_str()
        && Some(sent) != current["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            res.qualified()
        )));
    }
    let stored = res.served().stored(shared, name);
    let (object, warnings) = checked_object(res, Some(name), object, stored).await?;
    let written = write(shared, res, name, object, p).await?;
    Ok(warn(Json(written).into_response(), &warnings))
}

/// What an object sent back is compared with to take its defaults out (see
/// [`unfill`]): the object as stored and, for a Deployment, its revisions' templates
/// (see [`resources::Served::stored`]).
pub(crate) struct Stored {
    pub(crate) kind: Kind,
    pub(crate) object: Value,
    pub(crate) templates: Vec<Value>,
}

/// Takes the defaults an object was served with out of it as it comes back (see
/// [`defaults::unfill`]). A Deployment whose template is one of its revisions' as
/// served (`rollout undo` sends a ReplicaSet's) gets that revision's template exactly,
/// so it is that revision again.
fn unfill(object: &mut Value, stored: &Stored) {
    let Some(fill) = defaults::of(stored.kind) else {
        return;
    };
    let sent = &object["spec"]["template"];
    let revision = stored.templates.iter().find(|raw| {
        let mut shown = json!({"spec": {"template": raw}});
        resources::replicaset::defaults(&mut shown);
        &shown["spec"]["template"] == sent
    });
    let revision = revision.cloned();
    defaults::unfill(object, &stored.object, fill);
    if let Some(template) = revision
        && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("template".into(), template);
    }
}

/// Writable kinds are changed through the API; other kinds are skiff's.
fn changeable(res: &Resource) -> Result<(), ApiError> {
    if res.served().writable() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} are not changed through the API on skiff",
            res.qualified()
        ),
    ))
}

fn patch_kind(content_type: &str) -> Result<PatchKind, ApiError> {
    // skiff's own CLI sends merge patches as plain JSON.
    if content_type.split(';').next().unwrap_or("").trim() == "application/json" {
        return Ok(PatchKind::Merge);
    }
    PatchKind::from_content_type(content_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body of the request was in an unknown format {content_type:?}; accepted: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (server-side apply is not supported: use kubectl apply without --server-side)"
            ),
        )
    })
}

/// Applies a patch on the blocking pool, in turn: a patch may cost up to the bounds of an
/// object in time and memory (see [`patch`]), which must not hold up the requests this
/// executor thread serves meanwhile. Refusals are `Status`es: 422 for a patch that does
/// not apply, 413 naming the bound passed.
async fn apply_patch(
    kind: &'static str,
    object: Value,
    how: PatchKind,
    body: Bytes,
) -> Result<Value, ApiError> {
    let turn = CHECKS.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let mut object = object;
        patch::apply(kind, &mut object, how, &body).map(|()| object)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        if e.is_over_limit() {
            ApiError::too_large(e.to_string())
        } else {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
        }
    })
}

/// Refuses an object that serializes to more than an object may be (a manifest file's
/// size), whatever path wrote it.
fn within_limit(bytes: usize) -> Result<(), ApiError> {
    if bytes > manifest::MAX_MANIFEST_BYTES {
        return Err(ApiError::too_large(format!(
            "the object is {bytes} bytes; at most {} ({} MiB)",
            manifest::MAX_MANIFEST_BYTES,
            manifest::MAX_MANIFEST_BYTES >> 20
        )));
    }
    Ok(())
}

async fn patch_object(
    shared: &Shared,
    res: &'static Resource,
    name: &str,
    content_type: &str,
    body: Bytes,
    p: &Params,
) -> Result<Response, ApiError> {
    let how = patch_kind(content_type)?;
    let object = get_object(shared, res, name).await?;
    let object = apply_patch(res.kind_name, object, how, body).await?;
    if let Some(answer) = res.served().patched(shared, name, &object) {
        return answer.await;
    }
    update(shared, res, name, object, p, false).await
}

async fn delete(shared: &Shared, res: &'static Resource, name: &str) -> Result<Response, ApiError> {
    let object = get_object(shared, res, name).await?;
    let Some(deletion) = res.served().delete(shared, name, &object) else {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} are not deleted through the API on skiff",
                res.qualified()
            ),
        ));
    };
    deletion.await?;
    // Gone from what is read at once, not when the feed comes to it.
    feed::refresh(shared, res.kind, name).await;
    Ok(Json(object).into_response())
}

async fn apply(
    State(shared): State<Arc<Shared>>,
    Json(files): Json<ManifestFiles>,
) -> Result<Json<ApplyResult>, ApiError> {
    Ok(Json(shared.objects.apply_files(&files.files).await?))
}

async fn delete_files(
    State(shared): State<Arc<Shared>>,
    Json(files): Json<ManifestFiles>,
) -> Result<Json<ApplyResult>, ApiError> {
    Ok(Json(shared.objects.delete_files(&files.files).await?))
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
    // The Deployment stays within an object's size with the new image in it (an upper
    // bound: the old image's bytes are counted too).
    let current = value(shared.objects.deployment(&name)?);
    within_limit(patch::encoded_len(&current) + body.image.len())?;
    shared
        .objects
        .submit(Command::SetImage {
            name: name.clone(),
            container: body.container,
            image: body.image,
            at: crate::clock::now_rfc3339(),
        })
        .await?;
    Ok(Json(shared.objects.deployment(&name)?))
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
        .objects
        .submit(Command::Rollback {
            name: name.clone(),
            // kubectl's --to-revision=0 means "the previous one".
            to_revision: body.to_revision.filter(|r| *r != 0),
            at: crate::clock::now_rfc3339(),
        })
        .await?;
    Ok(Json(shared.objects.deployment(&name)?))
}

async fn history(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<RolloutHistory>, ApiError> {
    Ok(Json(shared.objects.rollout_history(&name)?))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use serde_json::{Value, json};

    use super::testing::{call, eventually, get, post, send, watch_lines, watch_until};
    use super::*;

    const MANIFEST: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {tier: front}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: 'nope:v1', colour: blue}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";

    #[tokio::test]
    async fn objects_are_applied_listed_scaled_and_deleted_through_the_router() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let token = node.shared.token.plain();
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
        // Other nodes learn of them by gossip: this node's count of web's pods.
        let cluster = &node.shared.cluster;
        let gossiped = || async { cluster.own_key("pods.web").await };
        let counts = eventually(|| async {
            gossiped()
                .await
                .filter(|v| v.split(',').nth(1) == Some("4"))
        })
        .await;
        assert!(counts.ends_with(",4,4,0,0"), "{counts}");

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
        // Gone: gossiped as none (a key set to zeros, not deleted).
        eventually(|| async { (gossiped().await.as_deref() == Some(",0,0,0,0")).then_some(()) })
            .await;
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }

    fn deployment_json(image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "creationTimestamp": null},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "c", "image": image, "resources": {}, "colour": "blue"}]}
                }
            }
        })
    }

    #[tokio::test]
    async fn security_settings_skiff_cannot_honour_are_invalid_not_warnings() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap().to_string();
        const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
        let with = |pod: Value, container: Value| {
            let mut d = deployment_json("a:1");
            let spec = &mut d["spec"]["template"]["spec"];
            spec["containers"][0]["securityContext"] = container;
            for (k, v) in pod.as_object().unwrap() {
                spec[k] = v.clone();
            }
            d
        };
        for (pod, container, says) in [
            (
                json!({}),
                json!({"privileged": true}),
                "spec.template.spec.containers[0].securityContext.privileged: Forbidden",
            ),
            (
                json!({"hostNetwork": true}),
                json!({}),
                "spec.template.spec.hostNetwork: Forbidden",
            ),
            (
                json!({"hostPID": true}),
                json!({}),
                "spec.template.spec.hostPID: Forbidden",
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]}}),
                json!({}),
                "spec.template.spec.securityContext.sysctls: Forbidden",
            ),
        ] {
            let (s, _, v) = post(&router, &t, DEPLOYMENTS, with(pod, container)).await;
            assert_eq!(
                (s, v["reason"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")),
                "{v}"
            );
            assert!(v["message"].as_str().unwrap().contains(says), "{says}: {v}");
        }
        // What skiff honours is stored and read back, with no warning about it.
        let honoured = with(
            json!({"securityContext": {"runAsUser": 1000, "runAsNonRoot": true}, "hostNetwork": false}),
            json!({"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                   "capabilities": {"drop": ["ALL"]}}),
        );
        let (s, h, v) = post(&router, &t, DEPLOYMENTS, honoured).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let warnings: Vec<_> = h.get_all("warning").iter().collect();
        assert!(
            warnings
                .iter()
                .all(|w| !w.to_str().unwrap().contains("ecurity")),
            "{warnings:?}"
        );
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"]["runAsUser"], 1000);
        assert_eq!(
            spec["containers"][0]["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        // A change that would loosen it is refused as a create is.
        let (s, _, v) = send(
            &router,
            &t,
            "PATCH",
            &format!("{DEPLOYMENTS}/api"),
            &[("content-type", "application/merge-patch+json")],
            Some(json!({"spec": {"template": {"spec": {"hostIPC": true}}}})),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("hostIPC: Forbidden"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn the_kubernetes_verbs_answer_as_a_real_server_does() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap();
        const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
        const SERVICES: &str = "/api/v1/namespaces/default/services";

        // Create: 201, unknown fields as warnings; again: 409 AlreadyExists.
        let (s, h, v) = post(&router, t, DEPLOYMENTS, deployment_json("a:1")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let warning = h.get("warning").unwrap().to_str().unwrap();
        assert!(
            warning.starts_with("299 - ") && warning.contains("colour"),
            "{warning}"
        );
        assert_eq!(v["metadata"]["annotations"][REVISION], "1");
        // Kubernetes' defaults, as kubectl describe shows them.
        assert_eq!(v["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let (s, _, v) = post(&router, t, DEPLOYMENTS, deployment_json("a:1")).await;
        assert_eq!(
            (s, v["kind"].as_str(), v["reason"].as_str()),
            (StatusCode::CONFLICT, Some("Status"), Some("AlreadyExists"))
        );
        assert_eq!(v["code"], 409);

        // A list's version, then a change, then a watch from that version sees it.
        let (_, _, list) = get(&router, t, DEPLOYMENTS).await;
        let version = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, _, v) = send(
            &router, t, "PATCH", &format!("{DEPLOYMENTS}/api"),
            &[("content-type", "application/strategic-merge-patch+json")],
            Some(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "a:2"}]}}}})),
        ).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["image"],
            "a:2"
        );
        assert_eq!(v["metadata"]["annotations"][REVISION], "2");
        // (The reconciler may change the Deployment's status between the list and the
        // patch: a watch then tells that first, as a real server would.)
        let events = watch_until(
            &router,
            t,
            &format!("{DEPLOYMENTS}?watch=true&resourceVersion={version}"),
            |events| {
                events.iter().any(|e| {
                    e["object"]["spec"]["template"]["spec"]["containers"][0]["image"] == "a:2"
                })
            },
        )
        .await;
        assert!(events.iter().all(|e| e["type"] == "MODIFIED"), "{events:?}");
        // Without a version: every object now, as ADDED.
        let events = watch_lines(&router, t, &format!("{DEPLOYMENTS}?watch=1"), 1).await;
        assert_eq!(
            (
                events[0]["type"].as_str(),
                events[0]["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("api"))
        );
        // From a version older than the node: 410 in the stream.
        let events = watch_lines(
            &router,
            t,
            &format!("{DEPLOYMENTS}?watch=1&resourceVersion=5"),
            1,
        )
        .await;
        assert_eq!(
            (
                events[0]["type"].as_str(),
                events[0]["object"]["code"].as_i64()
            ),
            (Some("ERROR"), Some(410))
        );

        // Both revisions are ReplicaSets owned by the Deployment.
        let (_, _, rs) = get(&router, t, "/apis/apps/v1/namespaces/default/replicasets").await;
        let items = rs["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{rs}");
        assert!(
            items
                .iter()
                .all(|r| r["metadata"]["ownerReferences"][0]["uid"] == v["metadata"]["uid"])
        );

        // An update from a stale read is refused; a patch type not served is 415.
        let mut stale = v.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        let (s, _, e) = send(
            &router,
            t,
            "PUT",
            &format!("{DEPLOYMENTS}/api"),
            &[],
            Some(stale),
        )
        .await;
        assert_eq!(
            (s, e["reason"].as_str()),
            (StatusCode::CONFLICT, Some("Conflict")),
            "{e}"
        );
        let (s, _, e) = send(
            &router,
            t,
            "PATCH",
            &format!("{DEPLOYMENTS}/api"),
            &[("content-type", "application/apply-patch+yaml")],
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (s, e["reason"].as_str()),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("UnsupportedMediaType")
            )
        );
        // An object is bounded as a manifest file is: a 5 MiB patch is refused whole.
        let huge = json!({"metadata": {"annotations": {"x": "y".repeat(5 << 20)}}});
        let (s, _, _) = send(
            &router,
            t,
            "PATCH",
            &format!("{DEPLOYMENTS}/api"),
            &[("content-type", "application/merge-patch+json")],
            Some(huge),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        let (s, _, e) = post(&router, t, "/api/v1/namespaces/default/pods", json!({})).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{e}");

        // Pages, field selectors, Tables.
        for name in ["sa", "sb", "sc"] {
            let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                             "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]}});
            let (s, _, v) = post(&router, t, SERVICES, svc).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
        let (_, _, page) = get(&router, t, &format!("{SERVICES}?limit=2")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert_eq!(page["metadata"]["remainingItemCount"], 1);
        let next = page["metadata"]["continue"].as_str().unwrap();
        let (_, _, page) = get(&router, t, &format!("{SERVICES}?limit=2&continue={next}")).await;
        assert_eq!(page["items"][0]["metadata"]["name"], "sc");
        assert_eq!(
            page["items"][0]["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert!(page["metadata"]["continue"].is_null());
        let (_, _, one) = get(
            &router,
            t,
            &format!("{SERVICES}?fieldSelector=metadata.name%3Dsb"),
        )
        .await;
        assert_eq!(one["items"].as_array().unwrap().len(), 1);
        let (s, _, e) = get(
            &router,
            t,
            &format!("{SERVICES}?fieldSelector=spec.bogus%3Dx"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("field label not supported: spec.bogus"),
            "{e}"
        );
        let table = [(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )];
        let (_, _, tbl) = send(&router, t, "GET", SERVICES, &table, None).await;
        assert_eq!(tbl["kind"], "Table");
        assert_eq!(tbl["rows"].as_array().unwrap().len(), 3);
        assert_eq!(tbl["rows"][0]["cells"][4], "80/TCP");

        // The namespace object, other namespaces, unknown resources.
        let (s, _, ns) = get(&router, t, "/api/v1/namespaces/default").await;
        assert_eq!(
            (s, ns["status"]["phase"].as_str()),
            (StatusCode::OK, Some("Active"))
        );
        let (s, _, e) = get(&router, t, "/api/v1/namespaces/other/services").await;
        assert_eq!(
            (s, e["reason"].as_str()),
            (StatusCode::NOT_FOUND, Some("NotFound"))
        );
        let (s, _, e) = get(&router, t, "/apis/apps/v1/namespaces/default/widgets").await;
        assert_eq!(
            (s, e["kind"].as_str()),
            (StatusCode::NOT_FOUND, Some("Status"))
        );
        // Details, as the API server writes them: empty for what is not served at all
        // (`kubectl debug` reads them so, unchecked), naming a missing object.
        assert_eq!(e["details"], json!({}));
        let (_, _, e) = get(&router, t, &format!("{DEPLOYMENTS}/gone")).await;
        assert_eq!(
            e["details"],
            json!({"name": "gone", "group": "apps", "kind": "deployments"})
        );
        let (s, _, e) = send(
            &router,
            t,
            "PATCH",
            "/api/v1/namespaces/default/pods/any/ephemeralcontainers",
            &[("content-type", "application/strategic-merge-patch+json")],
            Some(json!({})),
        )
        .await;
        assert_eq!((s, &e["details"]), (StatusCode::NOT_FOUND, &json!({})));

        // The OpenAPI document, both ways.
        let (s, h, doc) = get(&router, t, "/openapi/v2").await;
        assert_eq!(s, StatusCode::OK);
        assert!(doc["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert_eq!(h["content-type"], "application/json");
        let (_, h, _) = send(
            &router,
            t,
            "GET",
            "/openapi/v2",
            &[(
                "accept",
                "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
            )],
            None,
        )
        .await;
        assert!(h["content-type"].to_str().unwrap().ends_with("+protobuf"));

        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }

    #[tokio::test]
    async fn watches_are_capped_and_a_closed_one_frees_its_place() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let watch = || {
            let req = Request::builder()
                .uri("/api/v1/namespaces/default/pods?watch=1")
                .header(
                    "authorization",
                    format!("Bearer {}", node.shared.token.plain().unwrap()),
                )
                .body(Body::empty())
                .unwrap();
            tower::ServiceExt::oneshot(router.clone(), req)
        };
        // Open watches (their bodies held, never read) until the node says no; other
        // tests in this process may hold a few, so the count is at most the cap.
        let mut open = Vec::new();
        let refused = loop {
            let resp = watch().await.unwrap();
            if resp.status() != StatusCode::OK {
                break resp;
            }
            open.push(resp);
            assert!(
                open.len() <= MAX_WATCHES,
                "more than {MAX_WATCHES} watches open"
            );
        };
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(open.len() > MAX_WATCHES - 16, "{} opened", open.len());
        open.pop();
        assert_eq!(watch().await.unwrap().status(), StatusCode::OK);
        drop(open);
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }

    #[tokio::test]
    async fn watches_a_client_would_wait_on_for_ever_are_refused() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap();
        // Made up, or from a clock far ahead: the API server's "Too large resource
        // version" (a watch that took it would wait for ever, silent).
        for path in [
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion=18446744073709551615",
            "/api/v1/namespaces/default/pods?resourceVersion=18446744073709551615",
        ] {
            let (status, body) = call(&router, Some(t), "GET", path, None).await;
            assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{path}: {body}");
            assert_eq!(body["reason"], "Timeout");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Too large resource version: 18446744073709551615"),
                "{body}"
            );
        }
        // A watch that would wait for a bookmark never sent: refused, so client-go
        // lists and watches instead.
        let (status, body) = call(
            &router,
            Some(t),
            "GET",
            "/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["reason"], "Invalid");
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_copy_bomb_patch_is_refused_and_changes_nothing() {
        let (_dir, node, router) = crate::api::kube::testing::served().await;
        let t = node.shared.token.plain().unwrap();
        let (s, _, v) = post(
            &router,
            t,
            "/apis/apps/v1/namespaces/default/deployments",
            deployment_json("a:1"),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        // 2.6 KB that double the object 30 times: a node once took 7 GB for 23.
        let bomb = Value::Array(
            (0..30)
                .map(|i| json!({"op": "copy", "from": "", "path": format!("/x{i}")}))
                .collect(),
        );
        let json_patch = [("content-type", "application/json-patch+json")];
        let node_path = format!("/api/v1/nodes/{}", node.shared.cluster.identity().name);
        for path in [
            "/apis/apps/v1/namespaces/default/deployments/api",
            node_path.as_str(),
        ] {
            let (_, _, before) = get(&router, t, path).await;
            let (s, _, e) = send(&router, t, "PATCH", path, &json_patch, Some(bomb.clone())).await;
            assert_eq!(
                (s, e["kind"].as_str(), e["reason"].as_str()),
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some("Status"),
                    Some("RequestEntityTooLarge")
                ),
                "{path}: {e}"
            );
            let message = e["message"].as_str().unwrap();
            assert!(message.contains("4194304 bytes (4 MiB)"), "{message}");
            // What is stored is as it was (status and heartbeats may move on).
            let (_, _, after) = get(&router, t, path).await;
            assert_eq!(after["spec"], before["spec"], "{path}");
            assert_eq!(
                after["metadata"]["generation"],
                before["metadata"]["generation"]
            );
            assert!(after.get("x0").is_none());
        }
        // A JSON patch within the bounds still applies: a cordon.
        let cordon = json!([{"op": "add", "path": "/spec/unschedulable", "value": true}]);
        let (s, _, v) = send(&router, t, "PATCH", &node_path, &json_patch, Some(cordon)).await;
        assert_eq!(
            (s, &v["spec"]["unschedulable"]),
            (StatusCode::OK, &json!(true)),
            "{v}"
        );
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }
}
