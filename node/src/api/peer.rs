//! The peer API: Raft's RPCs and writes forwarded to the leader, called by other nodes
//! of the cluster only, over mutual TLS. Every request comes with the calling node's
//! certificate from the cluster CA and is signed with the cluster's peer key
//! (`raft::peer`) for this node, once, over its body's digest: one that is not, or whose
//! certificate is not the signer's, or whose id was seen, is refused before its body is
//! read, and at most [`BODIES`] bodies are read at once (the others wait).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::de::DeserializeOwned;

use crate::Shared;
use crate::api::error::ApiError;
use crate::desired::Versioned;
use crate::raft::{Forwarded, TypeConfig, peer};

/// The largest peer request: a snapshot chunk (1 MiB of data, JSON-encoded) or a batch
/// of log entries.
const MAX_PEER_REQUEST: usize = 32 << 20;

/// Peer requests whose bodies may be read at once.
const BODIES: usize = 8;
static READING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BODIES);

/// Checks a request's signature before its body is read (401 when it is not a
/// member's), reads the body (bounded, at most [`BODIES`] at once) and checks it is the
/// one that was signed.
async fn gate(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let path = req.uri().path().to_owned();
    let refused = |why: &'static str| {
        tracing::warn!(path, why, "a peer request was refused");
        ApiError::new(StatusCode::UNAUTHORIZED, "not_a_peer", why)
    };
    let header = req
        .headers()
        .get(peer::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let cert = req
        .extensions()
        .get::<crate::listener::ConnInfo>()
        .and_then(|c| c.peer_cert.clone())
        .ok_or_else(|| refused("no node certificate: peers call over mutual TLS"))?;
    let now = crate::clock::now_ms();
    let signed = shared
        .consensus
        .peer_key()
        .verify_head(header, &path, shared.consensus.id(), now)
        .map_err(refused)?;
    if !crate::tls::node_of(&cert, &format!("{:016x}", signed.from)) {
        return Err(refused("the certificate is not the signing node's"));
    }
    shared
        .peer_replays
        .first_time(&signed, now)
        .map_err(refused)?;
    let (parts, body) = req.into_parts();
    let bytes = {
        // Only reading is bounded: a handler may wait (a forwarded write, up to 5 s)
        // without holding a reader's place.
        let _permit = READING.acquire().await.map_err(ApiError::internal)?;
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            axum::body::to_bytes(body, MAX_PEER_REQUEST),
        )
        .await;
        match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                return Err(ApiError::too_large(format!(
                    "a peer request is at most {MAX_PEER_REQUEST} bytes: {e}"
                )));
            }
            Err(_) => {
                return Err(ApiError::bad_request(
                    "bad_body",
                    "a peer request body did not arrive within 30 s",
                ));
            }
        }
    };
    if !signed.matches(&bytes) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not_a_peer",
            "the body is not the one that was signed",
        ));
    }
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    Ok(next.run(req).await)
}

pub(super) fn routes(shared: Arc<Shared>) -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route("/v1/raft/append", post(append))
        .route("/v1/raft/vote", post(vote))
        .route("/v1/raft/snapshot", post(snapshot))
        .route("/v1/raft/write", post(write))
        .route("/v1/raft/read-index", post(read_index))
        .route("/v1/peer/pods", post(pods))
        .route("/v1/peer/pods/changes", post(pod_changes))
        .route("/v1/peer/delete-pod", post(delete_pod))
        .layer(DefaultBodyLimit::max(MAX_PEER_REQUEST))
        .route_layer(axum::middleware::from_fn_with_state(shared, gate))
}

/// The body of a request (its signature checked by [`gate`]), parsed.
fn signed<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_peer_request", e.to_string()))
}

async fn append(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = signed(&body)?;
    let answer = shared.consensus.append_entries(rpc).await;
    Ok(Json(
        serde_json::to_value(answer).map_err(ApiError::internal)?,
    ))
}

async fn vote(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rpc: openraft::raft::VoteRequest<crate::raft::NodeId> = signed(&body)?;
    let answer = shared.consensus.raft().vote(rpc).await;
    Ok(Json(
        serde_json::to_value(answer).map_err(ApiError::internal)?,
    ))
}

async fn snapshot(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rpc: openraft::raft::InstallSnapshotRequest<TypeConfig> = signed(&body)?;
    let answer = shared.consensus.raft().install_snapshot(rpc).await;
    Ok(Json(
        serde_json::to_value(answer).map_err(ApiError::internal)?,
    ))
}

async fn write(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<Forwarded>, ApiError> {
    let data: Versioned = signed(&body)?;
    let answer = shared
        .consensus
        .write_as_leader(data)
        .await
        .map_err(|e| match e {
            // A 4xx tells the follower nothing was proposed (a 5xx: the outcome is unknown).
            crate::raft::ConsensusError::NotLeader => ApiError::conflict(e.to_string()),
            e => crate::error::AppError::from(e).into(),
        })?;
    Ok(Json(answer))
}

async fn read_index(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<u64>, ApiError> {
    let () = signed(&body)?;
    let index = shared
        .consensus
        .read_index_as_leader()
        .await
        .map_err(crate::error::AppError::from)?;
    Ok(Json(index))
}

/// This node's pods, for a peer listing the cluster's (what nodes before the pod log of
/// `/v1/peer/pods/changes` ask; none of this release does).
async fn pods(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<Vec<skiff_spec::k8s::Pod>>, ApiError> {
    let () = signed(&body)?;
    shared.metrics.peer_pod_request();
    Ok(Json(
        shared
            .reconciler
            .pod_objects(&shared.cluster.identity().name),
    ))
}

/// This node's pods once they are newer than the version the peer has (held up to
/// [`POLL_HOLD`](crate::api::kube) when they are not): the peer's Kubernetes API follows
/// them with one request at a time, however many read them there.
async fn pod_changes(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Json<crate::api::kube::LocalPods>, ApiError> {
    let crate::api::kube::PodsAfter { after } = signed(&body)?;
    shared.metrics.peer_pod_request();
    Ok(Json(crate::api::kube::pods_after(&shared, after).await))
}

/// Deletes one of this node's pods, for a peer asked to (its Deployment makes another).
async fn delete_pod(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<()>, ApiError> {
    let name: String = signed(&body)?;
    shared.reconciler.delete_pod(&name)?;
    Ok(Json(()))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt as _;

    use crate::listener::{ConnInfo, ConnKind};
    use crate::raft::peer::Envelope;

    /// A signed `POST /v1/peer/pods` from node `from` (its signature) shown with `cert`.
    fn request(
        node: &crate::RunningNode,
        from: u64,
        cert: Option<&tokio_rustls::rustls::pki_types::CertificateDer<'static>>,
        id: &str,
    ) -> axum::extract::Request {
        let shared = &node.shared;
        let envelope = Envelope {
            ms: crate::clock::now_ms(),
            id,
            from,
            to: shared.consensus.id(),
            path: "/v1/peer/pods",
        };
        let header = shared.consensus.peer_key().sign(&envelope, b"null");
        let mut req = axum::http::Request::post("/v1/peer/pods")
            .header(crate::raft::peer::HEADER, header)
            .body(Body::from("null"))
            .unwrap();
        req.extensions_mut().insert(ConnInfo {
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            kind: ConnKind::Tls,
            peer_cert: cert.map(|c| std::sync::Arc::new(c.clone())),
        });
        req
    }

    #[tokio::test]
    async fn a_peer_request_needs_the_senders_certificate_and_is_served_once() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::start(crate::NodeConfig::for_test(dir.path().to_path_buf()))
            .await
            .unwrap();
        let router = crate::api::router(node.shared.clone());
        // A certificate from this cluster's CA for node 0xbb, as a peer holds.
        let peer = crate::tls::load(dir.path(), "00000000000000bb", &[], "").unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let status = |req: axum::extract::Request| {
            let router = router.clone();
            async move { router.oneshot(req).await.unwrap().status().as_u16() }
        };
        assert_eq!(
            status(request(&node, 0xbb, Some(&peer.cert), id)).await,
            200
        );
        assert_eq!(
            status(request(&node, 0xbb, Some(&peer.cert), id)).await,
            401,
            "a replayed request is refused"
        );
        let fresh = "f123456789abcdef0123456789abcdef";
        assert_eq!(
            status(request(&node, 0xcc, Some(&peer.cert), fresh)).await,
            401,
            "node 0xbb's certificate signing as 0xcc"
        );
        assert_eq!(
            status(request(&node, 0xbb, None, fresh)).await,
            401,
            "no certificate"
        );
        assert_eq!(
            status(request(&node, 0xbb, Some(&peer.cert), fresh)).await,
            200
        );
        node.shared.shutdown.cancel();
    }
}
