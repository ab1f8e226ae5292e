//! The peer API: Raft's RPCs and writes forwarded to the leader, called by other nodes
//! of the cluster only. Every request is signed with the cluster's peer key
//! (`raft::peer`); one that is not is refused before its body is parsed.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::Shared;
use crate::desired::Versioned;
use crate::raft::{Forwarded, TypeConfig, peer};

/// The largest peer request: a snapshot chunk (1 MiB of data, JSON-encoded) or a batch
/// of log entries.
const MAX_PEER_REQUEST: usize = 32 << 20;

pub(super) fn routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route("/v1/raft/append", post(append))
        .route("/v1/raft/vote", post(vote))
        .route("/v1/raft/snapshot", post(snapshot))
        .route("/v1/raft/write", post(write))
        .route("/v1/raft/read-index", post(read_index))
        .route("/v1/peer/pods", post(pods))
        .layer(DefaultBodyLimit::max(MAX_PEER_REQUEST))
}

/// The body of a request signed by a member, parsed; 401 if it is not signed so.
fn signed<T: DeserializeOwned>(
    shared: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    let header = headers
        .get(peer::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    shared
        .consensus
        .peer_key()
        .verify(header, uri.path(), body, crate::apps::now_ms())
        .map_err(|why| {
            tracing::warn!(path = uri.path(), why, "a peer request was refused");
            ApiError::new(StatusCode::UNAUTHORIZED, "not_a_peer", why)
        })?;
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_peer_request", e.to_string()))
}

async fn append(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> =
        signed(&shared, &uri, &headers, &body)?;
    let answer = shared.consensus.raft().append_entries(rpc).await;
    Ok(Json(
        serde_json::to_value(answer).map_err(ApiError::internal)?,
    ))
}

async fn vote(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rpc: openraft::raft::VoteRequest<crate::raft::NodeId> =
        signed(&shared, &uri, &headers, &body)?;
    let answer = shared.consensus.raft().vote(rpc).await;
    Ok(Json(
        serde_json::to_value(answer).map_err(ApiError::internal)?,
    ))
}

async fn snapshot(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rpc: openraft::raft::InstallSnapshotRequest<TypeConfig> =
        signed(&shared, &uri, &headers, &body)?;
    let answer = shared.consensus.raft().install_snapshot(rpc).await;
    Ok(Json(
        serde_json::to_value(answer).map_err(ApiError::internal)?,
    ))
}

async fn write(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Forwarded>, ApiError> {
    let data: Versioned = signed(&shared, &uri, &headers, &body)?;
    let answer = shared
        .consensus
        .write_as_leader(data)
        .await
        .map_err(crate::apps::AppError::from)?;
    Ok(Json(answer))
}

async fn read_index(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<u64>, ApiError> {
    let () = signed(&shared, &uri, &headers, &body)?;
    let index = shared
        .consensus
        .read_index_as_leader()
        .await
        .map_err(crate::apps::AppError::from)?;
    Ok(Json(index))
}

/// This node's pods, for a peer listing the cluster's.
async fn pods(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<skiff_spec::k8s::Pod>>, ApiError> {
    let () = signed(&shared, &uri, &headers, &body)?;
    Ok(Json(
        shared.apps.pod_objects(&shared.cluster.identity().name),
    ))
}
