//! `docker exec`: exec instances made, started (output multiplexed, or raw over an
//! upgraded connection) and inspected.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::*;
use crate::Shared;

/// Execs made by `POST /containers/{id}/exec`, until inspected after they ended (or
/// pushed out: at most [`MAX_EXECS`] are kept, the oldest ended ones go first).
#[derive(Default)]
pub(crate) struct Execs(std::sync::Mutex<BTreeMap<String, Exec>>);

pub(super) const MAX_EXECS: usize = 1024;

pub(super) struct Exec {
    container: String,
    spec: skiff_runtime::oci::ExecSpec,
    /// `None` until started; then `None` inside while it runs, the code once it ended.
    state: Option<Arc<std::sync::Mutex<Option<i32>>>>,
    made_ms: u64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct ExecBody {
    cmd: Vec<String>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    tty: bool,
    attach_stdin: bool,
    user: Option<String>,
    privileged: bool,
}

/// `POST /containers/{id}/exec`: an exec to start, checked now.
pub(super) async fn exec_create(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer<Response> {
    let body: ExecBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid exec config: {e}")))?;
    if body.cmd.is_empty() {
        return Err(bad("No exec command specified"));
    }
    if body.tty || body.attach_stdin {
        return Err(bad(
            "a TTY or stdin (-t, -i) is not supported by skiff's exec",
        ));
    }
    if body.privileged || body.user.as_deref().is_some_and(|u| !u.is_empty()) {
        return Err(bad(
            "exec --privileged and --user are not supported by skiff",
        ));
    }
    let c = container(&shared, &id).await?;
    if c.state != "running" {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("container {} is not running", c.id),
        ));
    }
    let exec_id = crate::ids::new_id();
    let mut execs = shared.docker_execs.0.lock().expect("execs lock");
    if execs.len() >= MAX_EXECS {
        let oldest_ended = execs
            .iter()
            .filter(|(_, e)| {
                e.state
                    .as_ref()
                    .is_none_or(|s| s.lock().expect("exec").is_some())
            })
            .min_by_key(|(_, e)| e.made_ms)
            .map(|(k, _)| k.clone());
        match oldest_ended {
            Some(k) => drop(execs.remove(&k)),
            None => {
                return Err(DockerError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("too many execs ({MAX_EXECS}) are running"),
                ));
            }
        }
    }
    execs.insert(
        exec_id.clone(),
        Exec {
            container: c.id,
            spec: skiff_runtime::oci::ExecSpec {
                args: body.cmd,
                env: body.env.unwrap_or_default(),
                workdir: body.working_dir.filter(|w| !w.is_empty()),
            },
            state: None,
            made_ms: crate::clock::now_ms(),
        },
    );
    Ok((StatusCode::CREATED, Json(json!({"Id": exec_id}))).into_response())
}

/// `POST /exec/{id}/start`: the connection is upgraded and carries the command's output
/// in Docker's frames until it exits (`{"Detach": true}`: it runs with nobody reading).
pub(super) async fn exec_start(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    mut req: Request,
) -> Answer<Response> {
    use skiff_runtime::oci::ExecOutput;
    let bytes = axum::body::to_bytes(std::mem::take(req.body_mut()), 64 << 10)
        .await
        .map_err(|e| bad(format!("invalid exec start: {e}")))?;
    let detach = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("Detach").and_then(Value::as_bool))
        .unwrap_or(false);
    let (container, spec, state) = {
        let mut execs = shared.docker_execs.0.lock().expect("execs lock");
        let exec = execs.get_mut(&id).ok_or_else(|| {
            DockerError::new(
                StatusCode::NOT_FOUND,
                format!("No such exec instance: {id}"),
            )
        })?;
        if exec.state.is_some() {
            return Err(DockerError::new(
                StatusCode::CONFLICT,
                format!("Error: Exec command {id} has already run"),
            ));
        }
        let state = Arc::new(std::sync::Mutex::new(None));
        exec.state = Some(state.clone());
        (exec.container.clone(), exec.spec.clone(), state)
    };
    let mut outputs = match shared.standalone.exec_container(&container, spec).await {
        Ok(outputs) => outputs,
        Err(e) => {
            // It never ran: inspect says so (126, as Docker's for a command not run).
            *state.lock().expect("exec state") = Some(126);
            return Err(e.into());
        }
    };
    let upgrade = (!detach).then(|| hyper::upgrade::on(&mut req));
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut io = match upgrade {
            Some(u) => match u.await {
                Ok(upgraded) => Some(hyper_util::rt::TokioIo::new(upgraded)),
                Err(_) => return,
            },
            None => None,
        };
        while let Some(out) = outputs.recv().await {
            let chunk = match out {
                ExecOutput::Stdout(b) => frame(1, &b),
                ExecOutput::Stderr(b) => frame(2, &b),
                ExecOutput::Exited(code, error) => {
                    if let (Some(io), Some(e)) = (io.as_mut(), error) {
                        let _ = io.write_all(&frame(2, format!("{e}\n").as_bytes())).await;
                    }
                    *state.lock().expect("exec state") = Some(code);
                    break;
                }
            };
            if let Some(w) = io.as_mut()
                && w.write_all(&chunk).await.is_err()
            {
                // The client went away: dropping `outputs` kills the command.
                return;
            }
        }
        if let Some(mut io) = io {
            let _ = io.shutdown().await;
        }
    });
    if detach {
        return Ok(StatusCode::OK.into_response());
    }
    Ok(upgraded())
}

/// The answer that hands the connection over to Docker's multiplexed stream.
pub(super) fn upgraded() -> Response {
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "Upgrade"),
            (header::UPGRADE, "tcp"),
            (
                header::CONTENT_TYPE,
                "application/vnd.docker.multiplexed-stream",
            ),
        ],
    )
        .into_response()
}

/// `GET /exec/{id}/json`: whether it runs, and its exit code once it ended.
pub(super) async fn exec_inspect(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Answer<Json<Value>> {
    let execs = shared.docker_execs.0.lock().expect("execs lock");
    let exec = execs.get(&id).ok_or_else(|| {
        DockerError::new(
            StatusCode::NOT_FOUND,
            format!("No such exec instance: {id}"),
        )
    })?;
    let code = exec
        .state
        .as_ref()
        .and_then(|s| *s.lock().expect("exec state"));
    let running = exec.state.is_some() && code.is_none();
    Ok(Json(json!({
        "ID": id,
        "ContainerID": exec.container,
        "Running": running,
        "ExitCode": code,
        "ProcessConfig": {
            "entrypoint": exec.spec.args.first(),
            "arguments": exec.spec.args.get(1..).unwrap_or_default(),
            "tty": false,
            "privileged": false,
        },
        "OpenStdin": false,
        "OpenStdout": true,
        "OpenStderr": true,
        "Pid": 0,
    })))
}
