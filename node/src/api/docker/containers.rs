//! Containers: list, inspect, start, stop, restart, kill, wait, remove, logs, attach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use skiff_spec::api::{ContainerInfo, LogLine, LogStream, human_duration as human};
use tokio::sync::watch;

use super::*;
use crate::Shared;
use crate::api::error::ApiError;
use crate::api::http::{follow_until, query_pairs};

pub(super) fn status_text(c: &ContainerInfo, now: u64) -> String {
    match c.state.as_str() {
        "running" => format!("Up {}", human(now.saturating_sub(c.started_ms))),
        "created" => "Created".into(),
        _ => format!(
            "Exited ({}) {} ago",
            c.exit_code.unwrap_or(0),
            human(now.saturating_sub(c.finished_ms))
        ),
    }
}

pub(super) fn ports_list(c: &ContainerInfo) -> Vec<Value> {
    c.ports
        .iter()
        .map(|p| {
            json!({"IP": p.host_ip.to_string(), "PrivatePort": p.container_port,
                   "PublicPort": p.host_port, "Type": "tcp"})
        })
        .collect()
}

/// `filters` as Docker sends them: `{"name": ["web"], "status": ["exited"]}` (or the
/// older `{"name": {"web": true}}`).
pub(super) fn filters(pairs: &[(String, String)]) -> Answer<BTreeMap<String, Vec<String>>> {
    let Some(raw) = param(pairs, "filters").filter(|f| !f.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| DockerError::new(StatusCode::BAD_REQUEST, format!("invalid filter: {e}")))?;
    let mut out = BTreeMap::new();
    for (k, vals) in v.as_object().into_iter().flatten() {
        let list = match vals {
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => vec![],
        };
        out.insert(k.clone(), list);
    }
    Ok(out)
}

pub(super) fn matches(c: &ContainerInfo, filters: &BTreeMap<String, Vec<String>>) -> Answer<bool> {
    for (key, wanted) in filters {
        let ok = match key.as_str() {
            // Docker matches names as substrings (a regexp, in fact).
            "name" => wanted
                .iter()
                .any(|w| c.name.contains(w.trim_start_matches('/'))),
            "id" => wanted.iter().any(|w| c.id.starts_with(w.as_str())),
            "status" => wanted.contains(&c.state),
            "ancestor" => wanted
                .iter()
                .any(|w| *w == c.image || c.image_id.to_string().starts_with(w.as_str())),
            // `key` or `key=value`.
            "label" => wanted.iter().any(|w| match w.split_once('=') {
                Some((k, v)) => c.labels.get(k).is_some_and(|have| have == v),
                None => c.labels.contains_key(w.as_str()),
            }),
            other => {
                return Err(DockerError::new(
                    StatusCode::BAD_REQUEST,
                    format!("invalid filter '{other}'"),
                ));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `GET /containers/json?all=1&filters=...`
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
) -> Answer<Json<Value>> {
    let pairs = query_pairs(q);
    let all = truthy(&pairs, "all");
    let filters = filters(&pairs)?;
    let now = crate::clock::now_ms();
    let mut out = Vec::new();
    for c in shared.standalone.list_containers(true).await {
        // A filter on status lists stopped ones too, as Docker's does.
        if !(all || filters.contains_key("status") || c.state == "running")
            || !matches(&c, &filters)?
        {
            continue;
        }
        out.push(json!({
            "Id": c.id,
            "Names": [format!("/{}", c.name)],
            "Image": c.image,
            "ImageID": c.image_id.to_string(),
            "Command": "",
            "Created": c.created_ms / 1000,
            "Ports": ports_list(&c),
            "Labels": c.labels,
            "State": c.state,
            "Status": status_text(&c, now),
            "HostConfig": {"NetworkMode": if c.sandbox_key.is_some() || c.ip_address.is_some() { "bridge" } else { "default" }},
            "NetworkSettings": {"Networks": {}},
            "Mounts": [],
        }));
    }
    Ok(Json(Value::Array(out)))
}

pub(super) async fn container(shared: &Shared, id: &str) -> Answer<ContainerInfo> {
    shared
        .standalone
        .inspect_container(id)
        .await
        .map_err(|_| DockerError::new(StatusCode::NOT_FOUND, format!("No such container: {id}")))
}

/// `GET /containers/{id}/json`
pub(super) async fn inspect(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Answer<Json<Value>> {
    let c = container(&shared, &id).await?;
    let mut ports = serde_json::Map::new();
    for p in &c.ports {
        ports
            .entry(format!("{}/tcp", p.container_port))
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("an array")
            .push(json!({"HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string()}));
    }
    let port_bindings = ports.clone();
    let ip = c.ip_address.clone().unwrap_or_default();
    let running = c.state == "running";
    Ok(Json(json!({
        "Id": c.id,
        "Created": rfc3339(c.created_ms),
        "Path": "",
        "Args": [],
        "State": {
            "Status": c.state,
            "Running": running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": c.oom_killed,
            "Dead": false,
            "Pid": 0,
            "ExitCode": c.exit_code.unwrap_or(0),
            "Error": c.exit_reason.clone().unwrap_or_default(),
            "StartedAt": rfc3339(c.started_ms),
            "FinishedAt": rfc3339(if running { 0 } else { c.finished_ms }),
        },
        "Image": c.image_id.to_string(),
        "Name": format!("/{}", c.name),
        "RestartCount": 0,
        "Driver": "overlay",
        "Platform": "linux",
        "HostConfig": {
            "NetworkMode": if c.sandbox_key.is_some() || !ip.is_empty() { "bridge" } else { "default" },
            "RestartPolicy": {"Name": c.restart.to_string(), "MaximumRetryCount": 0},
            "AutoRemove": c.auto_remove,
            "Memory": c.limits.memory_bytes,
            // The SDKs read the driver to know whether logs can be read back.
            "LogConfig": {"Type": "json-file", "Config": {}},
            "PortBindings": port_bindings,
        },
        "Config": {
            "Hostname": c.name,
            "Image": c.image,
            "Env": c.env_keys,
            "Labels": c.labels,
            "Tty": false,
            "OpenStdin": false,
            "AttachStdin": false,
            "AttachStdout": true,
            "AttachStderr": true,
        },
        "NetworkSettings": {
            "IPAddress": ip,
            "Ports": ports,
            "SandboxKey": c.sandbox_key.clone().unwrap_or_default(),
            "Networks": if ip.is_empty() { json!({}) } else { json!({"bridge": {"IPAddress": ip}}) },
        },
        "Mounts": [],
    })))
}

/// `POST /containers/{id}/start`: 204, or 304 when it already runs.
pub(super) async fn start(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    if container(&shared, &id).await?.state == "running" {
        return Ok(StatusCode::NOT_MODIFIED);
    }
    shared.standalone.start_container(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn grace(pairs: &[(String, String)]) -> Answer<Duration> {
    match param(pairs, "t").or_else(|| param(pairs, "timeout")) {
        None | Some("") => Ok(Duration::from_secs(10)),
        Some(t) => t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| bad(format!("invalid value for t: {t:?}"))),
    }
}

/// `POST /containers/{id}/stop?t=10`: 204, or 304 when it is not running.
pub(super) async fn stop(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<StatusCode> {
    let grace = grace(&query_pairs(q))?;
    if container(&shared, &id).await?.state != "running" {
        return Ok(StatusCode::NOT_MODIFIED);
    }
    shared.standalone.stop_container(&id, grace).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/restart?t=10`
pub(super) async fn restart(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<StatusCode> {
    let grace = grace(&query_pairs(q))?;
    container(&shared, &id).await?;
    shared.standalone.stop_container(&id, grace).await?;
    shared.standalone.start_container(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/kill`: stops it at once (SIGKILL after no grace).
pub(super) async fn kill(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Answer<StatusCode> {
    if container(&shared, &id).await?.state != "running" {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("cannot kill container: {id}: container is not running"),
        ));
    }
    shared
        .standalone
        .stop_container(&id, Duration::ZERO)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/wait?condition=not-running|next-exit|removed`
pub(super) async fn wait(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    let next = match param(&pairs, "condition").unwrap_or("not-running") {
        "" | "not-running" => false,
        "next-exit" | "removed" => true,
        other => return Err(bad(format!("invalid condition: {other:?}"))),
    };
    container(&shared, &id).await?;
    let waiter = shared.standalone.container_waiter(&id, next).await?;
    // The head goes out now (Docker's CLI waits for it before it starts the container),
    // the body once the container exits.
    let body = futures_util::stream::once(async move {
        let v = match waiter.await {
            Ok(code) => json!({"StatusCode": code, "Error": null}),
            Err(e) => json!({"StatusCode": -1, "Error": {"Message": ApiError::from(e).message()}}),
        };
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(v.to_string()))
    })
    .take_until(shared.shutdown.clone().cancelled_owned());
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `DELETE /containers/{id}?force=1`
pub(super) async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<StatusCode> {
    let force = truthy(&query_pairs(q), "force");
    container(&shared, &id).await?;
    match shared.standalone.remove_container(&id, force).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(crate::error::AppError::Conflict(_)) => Err(DockerError::new(
            StatusCode::CONFLICT,
            format!(
                "cannot remove container \"/{id}\": container is running: stop the container before removing or force remove"
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `GET /containers/{id}/logs?stdout=1&stderr=1&follow=1&tail=N&timestamps=1`: framed as
/// Docker frames a container without a TTY.
pub(super) async fn logs(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    let (stdout, stderr) = (truthy(&pairs, "stdout"), truthy(&pairs, "stderr"));
    if !stdout && !stderr {
        return Err(bad("you must choose at least one stream"));
    }
    let timestamps = truthy(&pairs, "timestamps");
    let tail = match param(&pairs, "tail") {
        None | Some("" | "all") => usize::MAX,
        Some(n) => n.parse().map_err(|_| bad(format!("invalid tail: {n:?}")))?,
    };
    container(&shared, &id).await?;
    let book = shared.standalone.container_log(&id).await?;
    let exit = shared.standalone.container_exit(&id).await;
    let follow = truthy(&pairs, "follow") && exit.as_ref().is_some_and(|e| e.borrow().is_none());
    let (past, rx) = book.tail_and_subscribe(tail);
    let encode = move |l: LogLine| {
        let wanted = match l.stream {
            LogStream::Stdout => stdout,
            LogStream::Stderr => stderr,
        };
        wanted.then(|| {
            let mut text = String::new();
            if timestamps {
                text.push_str(&rfc3339(l.ts_ms));
                text.push(' ');
            }
            text.push_str(&l.line);
            text.push('\n');
            let stream = if l.stream == LogStream::Stdout { 1 } else { 2 };
            Ok::<_, std::convert::Infallible>(frame(stream, text.as_bytes()))
        })
    };
    let past = futures_util::stream::iter(past);
    let lines = if follow {
        past.chain(follow_until(rx, exit)).boxed()
    } else {
        past.boxed()
    };
    let body = lines
        .filter_map(move |l| std::future::ready(encode(l)))
        .take_until(shared.shutdown.clone().cancelled_owned());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/vnd.docker.multiplexed-stream",
        )],
        Body::from_stream(body),
    )
        .into_response())
}

/// An exit receiver that tells the exit of the run after the current state: for a
/// container not started yet, its first run's (what an attach before `start` follows).
pub(super) fn next_exit(mut exit: watch::Receiver<Option<i32>>) -> watch::Receiver<Option<i32>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        // Removed before it ran: -1, as nothing ran.
        if exit.wait_for(Option::is_none).await.is_err() {
            let _ = tx.send(Some(-1));
            return;
        }
        let code = match exit.wait_for(Option::is_some).await {
            Ok(c) => *c,
            Err(_) => None,
        };
        let _ = tx.send(Some(code.or(*exit.borrow()).unwrap_or(255)));
    });
    rx
}

/// `POST /containers/{id}/attach?stream=1&stdout=1&stderr=1[&logs=1]`: the connection is
/// upgraded (101) and carries the container's output in Docker's frames until it exits,
/// then closes: what `docker run` without `-d` reads. stdin is not taken (no `-i`).
pub(super) async fn attach(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    mut req: Request,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    let (stdout, stderr) = (truthy(&pairs, "stdout"), truthy(&pairs, "stderr"));
    if truthy(&pairs, "stdin") {
        return Err(bad(
            "attaching stdin (-i) is not supported by skiff: containers read no input",
        ));
    }
    container(&shared, &id).await?;
    let book = shared.standalone.container_log(&id).await?;
    let exit = shared.standalone.container_exit(&id).await.ok_or_else(|| {
        bad(format!(
            "container {id} belongs to a deployment: attach to its logs instead"
        ))
    })?;
    let running = exit.borrow().is_none();
    let exit = if running { exit } else { next_exit(exit) };
    let backlog = if truthy(&pairs, "logs") {
        usize::MAX
    } else {
        0
    };
    let (past, rx) = book.tail_and_subscribe(backlog);
    let lines = futures_util::stream::iter(past).chain(follow_until(rx, Some(exit)));
    let upgrade = hyper::upgrade::on(&mut req);
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut lines = std::pin::pin!(lines.take_until(shutdown.cancelled_owned()));
        while let Some(l) = lines.next().await {
            let (wanted, stream) = match l.stream {
                LogStream::Stdout => (stdout, 1),
                LogStream::Stderr => (stderr, 2),
            };
            if wanted {
                let mut text = l.line;
                text.push('\n');
                if io.write_all(&frame(stream, text.as_bytes())).await.is_err() {
                    return;
                }
            }
        }
        let _ = io.shutdown().await;
    });
    Ok(upgraded())
}
