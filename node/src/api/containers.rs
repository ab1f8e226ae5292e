//! `/v1/containers`: Docker's verbs for single containers.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use skiff_spec::RunParams;
use skiff_spec::api::ContainerInfo;

use crate::Shared;
use crate::api::error::ApiError;
use crate::api::http::{follow_until, log_response, query_pairs};
use crate::standalone::Attached;
use axum::body::Body;
use axum::http::header;
use futures_util::StreamExt as _;
use skiff_spec::api::AttachEvent;

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
    let mut pairs = query_pairs(q);
    let attach = flag(&pairs, "attach");
    pairs.retain(|(k, _)| k != "attach");
    let run = RunParams::from_pairs(pairs)
        .map_err(|e| ApiError::bad_request("invalid_parameter", e.to_string()))?;
    let (info, attached) = shared.standalone.run(run, attach).await?;
    let Some(Attached {
        past,
        lines,
        mut exit,
    }) = attached
    else {
        return Ok((StatusCode::CREATED, Json(info)).into_response());
    };
    // NDJSON of [`AttachEvent`]s: started, the output, then how it ended (unless the node
    // shuts down first: the client then says the stream broke).
    let encode = |e: AttachEvent| {
        let mut s = serde_json::to_string(&e).expect("events serialize");
        s.push('\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(s))
    };
    let started = futures_util::stream::iter([AttachEvent::Started(Box::new(info))]);
    let output = futures_util::stream::iter(past)
        .chain(follow_until(lines, Some(exit.clone())))
        .map(AttachEvent::Log);
    let ended = futures_util::stream::once(async move {
        let code = exit.wait_for(Option::is_some).await.ok().and_then(|c| *c);
        AttachEvent::Exited {
            code: code.unwrap_or(255),
        }
    });
    let body = Body::from_stream(
        started
            .chain(output)
            .chain(ended)
            .map(encode)
            .take_until(shared.shutdown.clone().cancelled_owned()),
    );
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response())
}

/// `GET /v1/stats`: what each running container uses (`docker stats`).
pub(super) async fn stats(
    State(shared): State<Arc<Shared>>,
) -> Json<Vec<skiff_spec::api::ContainerStats>> {
    Json(shared.standalone.container_stats().await)
}

/// `GET /v1/containers?all=true`
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Json<Vec<ContainerInfo>> {
    Json(
        shared
            .standalone
            .list_containers(flag(&query_pairs(q), "all"))
            .await,
    )
}

/// `GET /v1/containers/{key}`
pub(super) async fn inspect(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Json<ContainerInfo>, ApiError> {
    Ok(Json(shared.standalone.inspect_container(&key).await?))
}

fn grace(q: Option<String>) -> Result<Duration, ApiError> {
    match query_pairs(q).into_iter().find(|(k, _)| k == "t") {
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
    Ok(Json(
        shared.standalone.stop_container(&key, grace(q)?).await?,
    ))
}

/// `POST /v1/containers/{key}/start`
pub(super) async fn start(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Json<ContainerInfo>, ApiError> {
    Ok(Json(shared.standalone.start_container(&key).await?))
}

/// `POST /v1/containers/{key}/restart?t=10`
pub(super) async fn restart(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<ContainerInfo>, ApiError> {
    shared.standalone.stop_container(&key, grace(q)?).await?;
    Ok(Json(shared.standalone.start_container(&key).await?))
}

/// `DELETE /v1/containers/{key}?force=true`
pub(super) async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    shared
        .standalone
        .remove_container(&key, flag(&query_pairs(q), "force"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/containers/{key}/logs?tail=N&follow=true`
pub(super) async fn logs(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let book = shared.standalone.container_log(&key).await?;
    let exit = shared.standalone.container_exit(&key).await;
    log_response(&shared, &book, q, exit)
}

/// `POST /v1/containers/{key}/wait`: `{"exit_code": N}` once it is not running.
pub(super) async fn wait(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let code = shared.standalone.wait_container(&key).await?;
    Ok(Json(serde_json::json!({ "exit_code": code })))
}

/// The body of `POST /v1/containers/{key}/exec`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecRequest {
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    workdir: Option<String>,
}

/// `POST /v1/containers/{key}/exec` with `{"cmd": [...], "env": ["K=V"], "workdir": "/"}`:
/// the command's output as it comes, in Docker's multiplexed-stream frames (a byte for the
/// stream, three zeros, a big-endian u32 length, the bytes: 1 stdout, 2 stderr), then a
/// frame of stream 3 holding `{"exit_code": N}` (and `"error"` when it could not start).
pub(super) async fn exec(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    use skiff_runtime::oci::{ExecOutput, ExecSpec};
    let req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid exec request: {e}")))?;
    if req.cmd.is_empty() {
        return Err(bad("cmd", "empty: name the command to run"));
    }
    let nul = |s: &String| s.contains('\0');
    if req.cmd.iter().any(nul) || req.env.iter().any(nul) || req.workdir.as_ref().is_some_and(nul) {
        return Err(bad("cmd", "a NUL byte cannot be passed to a process"));
    }
    if let Some(e) = req
        .env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        return Err(bad("env", format!("{e:?} is not KEY=VALUE")));
    }
    if let Some(w) = req.workdir.as_ref().filter(|w| !w.starts_with('/')) {
        return Err(bad("workdir", format!("{w:?} is not an absolute path")));
    }
    let rx = shared
        .standalone
        .exec_container(
            &key,
            ExecSpec {
                args: req.cmd,
                env: req.env,
                workdir: req.workdir,
            },
        )
        .await?;
    let frame = |stream: u8, data: &[u8]| {
        Ok::<_, std::convert::Infallible>(super::docker::frame(stream, data))
    };
    let outputs =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|out| (out, rx)) },
        );
    let frames = outputs.map(move |out| match out {
        ExecOutput::Stdout(b) => frame(1, &b),
        ExecOutput::Stderr(b) => frame(2, &b),
        ExecOutput::Exited(code, error) => frame(
            3,
            serde_json::json!({ "exit_code": code, "error": error })
                .to_string()
                .as_bytes(),
        ),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/vnd.docker.multiplexed-stream",
        )],
        Body::from_stream(frames.take_until(shared.shutdown.clone().cancelled_owned())),
    )
        .into_response())
}
