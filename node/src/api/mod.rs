//! The node's HTTP API (axum): apps, logs, metrics, health.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use skiff_image::StoreError;
use skiff_spec::{AppName, DeployParams};

use crate::Shared;
use error::ApiError;
use http::{continue_after, continue_token, discard, log_response, query_pairs};

mod containers;
pub(crate) mod docker;
pub(crate) mod error;
pub(crate) mod http;
pub(crate) mod images;
pub(crate) mod kube;
mod peer;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let authed = Router::new()
        .route("/v1/apps", get(list_apps))
        .route(
            "/v1/apps/{name}",
            get(get_app).put(put_app).delete(delete_app),
        )
        .route("/v1/apps/{name}/logs", get(logs))
        .route(
            "/v1/images",
            get(images::list).post(images::load).delete(images::remove),
        )
        .route("/v1/images/tag", axum::routing::post(images::tag))
        .route("/v1/images/archive", get(images::save))
        .route(
            "/v1/containers",
            get(containers::list).post(containers::run),
        )
        .route(
            "/v1/containers/{key}",
            get(containers::inspect).delete(containers::remove),
        )
        .route(
            "/v1/containers/{key}/stop",
            axum::routing::post(containers::stop),
        )
        .route(
            "/v1/containers/{key}/start",
            axum::routing::post(containers::start),
        )
        .route(
            "/v1/containers/{key}/restart",
            axum::routing::post(containers::restart),
        )
        .route("/v1/containers/{key}/logs", get(containers::logs))
        .route("/v1/stats", get(containers::stats))
        .route(
            "/v1/containers/{key}/exec",
            axum::routing::post(containers::exec).layer(DefaultBodyLimit::max(1 << 20)),
        )
        .route(
            "/v1/containers/{key}/wait",
            axum::routing::post(containers::wait),
        )
        .route("/metrics", get(metrics))
        .route("/v1/cluster/join-token", get(join_token))
        .route("/v1/cluster/ca", get(api_ca))
        .merge(kube::routes())
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            consistent_reads,
        ))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        // Public, as the API server makes them.
        .merge(kube::health::routes())
        // Asked by a node that has no admin token: it proves the join secret instead.
        .route(
            "/v1/cluster/join/challenge",
            axum::routing::post(join_challenge).layer(DefaultBodyLimit::max(1 << 10)),
        )
        .route(
            "/v1/cluster/join",
            axum::routing::post(cluster_join).layer(DefaultBodyLimit::max(16 << 10)),
        )
        // Called by other nodes: over mutual TLS, each request signed once for this node.
        .merge(peer::routes(shared.clone()))
        .merge(authed)
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        // Docker's paths (`/_ping`, `/v1.NN/...`) go to the Docker API, under the token.
        .layer(middleware::from_fn_with_state(
            docker::router(shared.clone()).layer(middleware::from_fn_with_state(
                shared.clone(),
                require_token,
            )),
            to_docker,
        ))
        .layer(middleware::from_fn(close_after_refused_uploads))
        // Uploads are streamed and capped by the handler itself.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// The connection a request came on (in-process calls have none: plain, loopback).
fn conn_of(req_parts: &axum::http::Extensions) -> crate::listener::ConnInfo {
    req_parts
        .get::<crate::listener::ConnInfo>()
        .cloned()
        .unwrap_or(crate::listener::ConnInfo {
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            kind: crate::listener::ConnKind::Plain,
            peer_cert: None,
        })
}

/// Joins are answered over TLS only, a few per client address at a time.
fn join_allowed(shared: &Shared, conn: &crate::listener::ConnInfo) -> Result<(), ApiError> {
    let now = std::time::Instant::now();
    let gate = shared.cluster.join_gate();
    if let Err(why) = gate.admit(conn.remote.ip(), now) {
        gate.refused(conn.remote.ip(), &why, now);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_joins",
            why.to_string(),
        ));
    }
    if conn.kind != crate::listener::ConnKind::Tls {
        return Err(ApiError::bad_request(
            "join_over_tls",
            "a node joins over TLS (https), pinned by the CA hash in its join token",
        ));
    }
    Ok(())
}

/// `POST /v1/cluster/join/challenge`: a nonce a joining node proves the secret over.
async fn join_challenge(
    State(shared): State<Arc<Shared>>,
    req: Request,
) -> Result<Json<crate::cluster::join::Challenge>, ApiError> {
    let conn = conn_of(req.extensions());
    join_allowed(&shared, &conn)?;
    Ok(Json(
        shared
            .cluster
            .join_gate()
            .challenge(std::time::Instant::now()),
    ))
}

/// `POST /v1/cluster/join`: the cluster's id, seeds, CA and the admin token's hash for a
/// node whose proof holds; 403 otherwise.
async fn cluster_join(
    State(shared): State<Arc<Shared>>,
    req: Request,
) -> Result<Json<crate::cluster::join::JoinAnswer>, ApiError> {
    use crate::cluster::join::Refusal;
    let conn = conn_of(req.extensions());
    join_allowed(&shared, &conn)?;
    let body = axum::body::to_bytes(req.into_body(), 16 << 10)
        .await
        .map_err(|e| {
            ApiError::too_large(format!(
                "a join request is at most 16 KiB (or it did not arrive): {e}"
            ))
        })?;
    let request: crate::cluster::join::JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_body", format!("the join request: {e}")))?;
    let answer = shared
        .cluster
        .answer_join(
            &request,
            &shared.config.data_dir,
            &shared.token.sha256_hex(),
        )
        .await;
    match answer {
        Ok(answer) => {
            tracing::info!(node_id = %request.node_id, name = %request.name, client = %conn.remote, "a node joined with the join token");
            Ok(Json(answer))
        }
        Err(why) => {
            shared
                .cluster
                .join_gate()
                .refused(conn.remote.ip(), &why, std::time::Instant::now());
            let (status, code) = match why {
                Refusal::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "too_many_joins"),
                Refusal::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_join"),
                Refusal::WrongToken => (StatusCode::FORBIDDEN, "wrong_join_token"),
                Refusal::NameTaken { .. } => (StatusCode::CONFLICT, "node_name_taken"),
                Refusal::IdTaken(_) => (StatusCode::CONFLICT, "node_id_taken"),
            };
            Err(ApiError::new(status, code, why.to_string()))
        }
    }
}

/// `GET /v1/cluster/join-token`: the join token (the CA's hash and the secret), the
/// cluster's id and the address to join through.
async fn join_token(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let cluster = &shared.cluster;
    Json(serde_json::json!({
        "join_token": cluster.join_token().to_string(),
        "cluster_id": cluster.identity().cluster_id,
        "api": shared.api_advertised,
    }))
}

/// `GET /v1/cluster/ca`: the cluster CA (PEM), which kubeconfigs carry.
async fn api_ca(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        shared.api_ca.clone(),
    )
        .into_response()
}

/// `ok`, or 503 naming what is wrong (the state store cannot be written, Raft's storage
/// waits for disk space); then how far
/// the start has brought the pods back (`restoring: 40 of 10000 pods ready`, then
/// `restored: pods back in 2100 ms`). The node serves while it restores.
/// With `?verbose` (or `exclude`), the API server's answer (see `kube::health`).
async fn healthz(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    if kube::health::wants_checks(query.as_deref()) {
        return kube::health::answer(&shared, "healthz", query);
    }
    let restore = shared.reconciler.restore_line();
    // Raft's storage first: it names the data dir whose disk is full.
    match shared
        .consensus
        .health()
        .and_then(|()| shared.objects.state_health())
    {
        Ok(()) => format!("ok\n{restore}\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n{restore}\n"),
        )
            .into_response(),
    }
}

/// Reads are served from this node's copy of the desired state; with `consistent=true`
/// a read first catches up with everything the cluster acknowledged (the leader
/// confirms it still leads), or fails naming what is missing.
async fn consistent_reads(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let consistent = req.method() == axum::http::Method::GET
        && form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .any(|(k, v)| k == "consistent" && v == "true");
    if consistent {
        shared
            .consensus
            .linearize()
            .await
            .map_err(crate::error::AppError::from)?;
    }
    Ok(next.run(req).await)
}

/// Lets in a request with the admin token, one on the API's unix socket (whoever can
/// open it is an admin), and a node of the cluster (a TLS client certificate the cluster
/// CA signed for a member: image copies between nodes).
async fn require_token(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let conn = req.extensions().get::<crate::listener::ConnInfo>();
    let local = conn.is_some_and(|c| c.kind == crate::listener::ConnKind::Unix);
    // A certificate counts only as a member's: the CA signed it for a node this node's
    // gossip has heard of (`<id>.node.skiff`).
    let node = conn.and_then(|c| c.peer_cert.as_ref()).is_some_and(|cert| {
        let view = shared.reconciler.view();
        crate::tls::node_among(
            cert,
            view.members
                .iter()
                .filter(|id| **id != view.me)
                .map(String::as_str),
        )
    });
    if local || node || shared.token.accepts(presented) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::unauthorized())
    }
}

/// A request refused before its body was read leaves that body on the connection; say
/// `Connection: close` so clients do not reuse it (hyper closes it either way).
async fn close_after_refused_uploads(req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Hands Docker's paths to the Docker API router.
async fn to_docker(State(docker): State<Router>, req: Request, next: Next) -> Response {
    if docker::is_docker_path(req.uri().path()) {
        match tower::ServiceExt::oneshot(docker, req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    } else {
        next.run(req).await
    }
}

fn app_name(name: String) -> Result<AppName, ApiError> {
    AppName::new(name).map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))
}

/// Largest page a client may ask for.
const MAX_PAGE: usize = 10_000;

/// `GET /v1/apps`: every app; with `?limit=N[&continue=T]`, one page (a [`Page`]).
///
/// [`Page`]: skiff_spec::api::Page
async fn list_apps(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(q);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let Some(limit) = get("limit") else {
        return Ok(Json(shared.objects.list().await).into_response());
    };
    let limit: usize = limit
        .parse()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid",
                format!("limit: {limit:?} is not 1 to {MAX_PAGE}"),
            )
        })?;
    let after = get("continue")
        .filter(|t| !t.is_empty())
        .map(continue_after)
        .transpose()?;
    let (items, last, remaining) = shared.objects.list_page(after.as_deref(), limit).await;
    let continue_token = last.filter(|_| remaining > 0).map(|l| continue_token(&l));
    Ok(Json(skiff_spec::api::Page {
        metadata: skiff_spec::api::PageMeta {
            remaining_item_count: continue_token.is_some().then_some(remaining),
            continue_token,
        },
        items,
    })
    .into_response())
}

async fn get_app(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = app_name(name)?;
    Ok(Json(shared.objects.status(&name).await?).into_response())
}

async fn delete_app(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = app_name(name)?;
    shared.objects.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/apps/{name}`: the body is the .wasm, the query the deploy parameters.
async fn put_app(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let cap = shared.config.upload_cap;
    let checked = app_name(name).and_then(|name| {
        DeployParams::from_pairs(form_urlencoded::parse(query.unwrap_or_default().as_bytes()))
            .map(|params| (name, params))
            .map_err(|e| ApiError::bad_request("invalid_parameter", e.to_string()))
    });
    let (name, params) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            // The client is authenticated and the upload within bounds: read it to the
            // end (up to the cap) so the client sees this answer instead of a reset.
            discard(&mut body.into_data_stream(), cap).await;
            return Err(e);
        }
    };
    if let Some(image) = params.image.clone() {
        let mut stream = body.into_data_stream();
        if let Some(Ok(chunk)) = stream.next().await
            && !chunk.is_empty()
        {
            discard(&mut stream, cap).await;
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "give the app either a body (a .wasm) or image=, not both",
            ));
        }
        let (created, status) = shared.objects.deploy_image(name, params, &image).await?;
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok((code, Json(status)).into_response());
    }
    let too_large = || ApiError::too_large(format!("upload is larger than the {cap}-byte limit"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        return Err(too_large());
    }
    let mut writer = match shared.images.store().blobs().writer(cap) {
        Ok(writer) => writer,
        Err(e) => {
            // Refused before a byte is stored (the disk is full): read the upload to
            // the end so the client sees this answer instead of a reset.
            discard(&mut body.into_data_stream(), cap).await;
            return Err(ApiError::store(e));
        }
    };
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("bad_body", format!("failed to read the upload: {e}"))
        })?;
        match writer.write(&chunk) {
            Ok(()) => {}
            Err(StoreError::TooLarge { .. }) => {
                // Nothing past the cap is kept; a little more is read and dropped so a
                // client that overshot slightly sees the 413 rather than a reset.
                drop(writer);
                discard(&mut stream, OVERSHOOT_DRAIN).await;
                return Err(too_large());
            }
            Err(other) => {
                drop(writer);
                discard(&mut stream, cap).await;
                return Err(ApiError::store(other));
            }
        }
    }
    if writer.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_wasm",
            "the upload is empty: send the .wasm file as the request body",
        ));
    }
    let staged = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::store)?;
    let (created, status) = shared.objects.deploy_upload(name, params, staged).await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(status)).into_response())
}

/// How much of an oversized upload is read (and dropped) before answering 413.
const OVERSHOOT_DRAIN: u64 = 1 << 20;

/// `GET /v1/apps/{name}/logs?tail=N&follow=true`: NDJSON lines of [`LogLine`].
async fn logs(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let name = app_name(name)?;
    let book = shared.reconciler.log(&name).await?;
    log_response(&shared, &book, query, None)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    shared
        .metrics
        .set_in_flight(shared.reconciler.service_in_flight());
    let live = shared
        .cluster
        .members()
        .await
        .iter()
        .filter(|m| m.live)
        .count();
    shared.metrics.set_gossip(
        shared
            .cluster
            .stats()
            .dropped()
            .into_iter()
            .map(|(why, n)| (why.as_str(), n)),
        live,
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}
