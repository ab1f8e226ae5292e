//! `/v1/containers`: Docker's verbs for single containers.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skiff_spec::RunParams;
use skiff_spec::api::ContainerInfo;

use super::{ApiError, log_response};
use crate::Shared;

fn pairs(q: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn flag(pairs: &[(String, String)], key: &str) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == key && matches!(v.as_str(), "" | "1" | "true" | "yes"))
}

fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "invalid_parameter",
        format!("invalid parameter {param}: {message}"),
    )
}

/// `POST /v1/containers?image=I&name=N&publish=8080:80&restart=always&env=K=V&memory=..`
pub(super) async fn run(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let run = RunParams::from_pairs(pairs(q))
        .map_err(|e| ApiError::bad_request("invalid_parameter", e.to_string()))?;
    let info = shared.apps.run(run).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// `GET /v1/containers?all=true`
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Json<Vec<ContainerInfo>> {
    Json(shared.apps.list_containers(flag(&pairs(q), "all")).await)
}

/// `GET /v1/containers/{key}`
pub(super) async fn inspect(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Json<ContainerInfo>, ApiError> {
    Ok(Json(shared.apps.inspect_container(&key).await?))
}

fn grace(q: Option<String>) -> Result<Duration, ApiError> {
    match pairs(q).into_iter().find(|(k, _)| k == "t") {
        Some((_, v)) => v
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| bad("t", format!("{v:?} is not a number of seconds"))),
        None => Ok(Duration::from_secs(10)),
    }
}

/// `POST /v1/containers/{key}/stop?t=10`
pub(super) async fn stop(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<ContainerInfo>, ApiError> {
    Ok(Json(shared.apps.stop_container(&key, grace(q)?).await?))
}

/// `POST /v1/containers/{key}/start`
pub(super) async fn start(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Json<ContainerInfo>, ApiError> {
    Ok(Json(shared.apps.start_container(&key).await?))
}

/// `POST /v1/containers/{key}/restart?t=10`
pub(super) async fn restart(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<ContainerInfo>, ApiError> {
    shared.apps.stop_container(&key, grace(q)?).await?;
    Ok(Json(shared.apps.start_container(&key).await?))
}

/// `DELETE /v1/containers/{key}?force=true`
pub(super) async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    shared
        .apps
        .remove_container(&key, flag(&pairs(q), "force"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/containers/{key}/logs?tail=N&follow=true`
pub(super) async fn logs(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let book = shared.apps.container_log(&key).await?;
    log_response(&shared, &book, q)
}
