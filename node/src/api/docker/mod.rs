//! The Docker Engine API, a second front door onto the same containers and images: what
//! Docker's CLI and SDKs call, with Docker's paths (with or without a `/v1.NN` prefix),
//! shapes, status codes and `{"message": ...}` errors. Served on `<data-dir>/docker.sock`
//! (whoever can open it is an admin, as with Docker's) and on the API port under the
//! bearer token.
//!
//! Pull, push and login are in [`registry`], events in [`events`]. Not served (a 404
//! `page not found`, as Docker answers an unknown path): volumes, networks, swarm,
//! plugins, `docker import`/`commit`/`cp`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use skiff_spec::api::{ContainerInfo, LogLine, LogStream, human_duration as human};
use skiff_spec::{PortMapping, RestartPolicy, RunParams};

use super::{ApiError, follow_until, query_pairs};
use crate::Shared;
use tokio::sync::watch;

mod events;
mod registry;

/// The newest API version served; clients negotiate down to it.
pub(crate) const API_VERSION: &str = "1.45";
/// The oldest API version served (Docker's own minimum).
pub(crate) const MIN_API_VERSION: &str = "1.24";

/// An error as Docker's: its status, `{"message": ...}`.
#[derive(Debug)]
pub(crate) struct DockerError(StatusCode, String);

impl DockerError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

impl From<ApiError> for DockerError {
    fn from(e: ApiError) -> Self {
        Self(e.status(), e.message().to_string())
    }
}

impl From<crate::error::AppError> for DockerError {
    fn from(e: crate::error::AppError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "message": self.1 }))).into_response()
    }
}

type Answer<T> = Result<T, DockerError>;

/// Docker's routes, for a path without its version prefix.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let routes = Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/containers/json", get(list))
        .route("/containers/create", post(create))
        .route("/containers/{id}/json", get(inspect))
        .route("/containers/{id}/start", post(start))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/restart", post(restart))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}/attach", post(attach))
        .route("/containers/{id}/exec", post(exec_create))
        .route("/exec/{id}/start", post(exec_start))
        .route("/exec/{id}/json", get(exec_inspect))
        .route("/containers/{id}", delete(remove))
        .route("/images/json", get(images))
        .route("/build", post(build))
        .route("/images/load", post(image_load))
        .route("/images/create", post(registry::pull))
        .route("/auth", post(registry::login))
        .route("/events", get(events::events))
        .route("/images/get", get(image_save))
        .route(
            "/images/{*name}",
            get(image_get).post(image_tag).delete(image_remove),
        )
        .fallback(|| async { DockerError::new(StatusCode::NOT_FOUND, "page not found") })
        .with_state(shared)
        // JSON bodies (create, exec) are small; build contexts and image archives are
        // streamed to a spool under the upload cap instead.
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(middleware::from_fn(headers));
    // The prefix comes off before routing (a `Router::layer` runs after it).
    Router::new().fallback_service(
        tower::ServiceBuilder::new()
            .layer(middleware::map_request(strip_version))
            .service(routes),
    )
}

/// Whether `path` is one of Docker's (what the API port hands to [`router`]).
pub(crate) fn is_docker_path(path: &str) -> bool {
    path == "/_ping" || version_prefix(path).is_some()
}

/// `(major, minor, rest)` of a `/v1.NN/rest` path.
fn version_prefix(path: &str) -> Option<(u32, u32, &str)> {
    let rest = path.strip_prefix("/v")?;
    let (version, tail) = rest.split_at(rest.find('/')?);
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?, tail))
}

fn parse_version(v: &str) -> (u32, u32) {
    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// Takes off the `/v1.NN` prefix the clients send once they negotiated; a version this
/// node does not speak becomes a path that answers Docker's message for it.
async fn strip_version(mut req: Request) -> Request {
    let path = req.uri().path().to_string();
    if let Some((major, minor, rest)) = version_prefix(&path) {
        let asked = (major, minor);
        let new_path = if asked > parse_version(API_VERSION) {
            format!("/__too-new/{major}.{minor}")
        } else if asked < parse_version(MIN_API_VERSION) {
            format!("/__too-old/{major}.{minor}")
        } else {
            rest.to_string()
        };
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        if let Ok(uri) = format!("{new_path}{query}").parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Docker's response headers, and its answer to a version it does not speak.
async fn headers(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut response = if let Some(v) = path.strip_prefix("/__too-new/") {
        DockerError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "client version {v} is too new. Maximum supported API version is {API_VERSION}"
            ),
        )
        .into_response()
    } else if let Some(v) = path.strip_prefix("/__too-old/") {
        DockerError::new(
            StatusCode::BAD_REQUEST,
            format!("client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"),
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert("ostype", HeaderValue::from_static("linux"));
    // The legacy builder's protocol (`POST /build`), not BuildKit's.
    h.insert("builder-version", HeaderValue::from_static("1"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static(concat!("skiff/", env!("CARGO_PKG_VERSION"))),
    );
    response
}

async fn ping() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
        ],
        "OK",
    )
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn version() -> Json<Value> {
    let version = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": {"Name": "skiff"},
        "Components": [{
            "Name": "Engine",
            "Version": version,
            "Details": {
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "Os": "linux",
                "Arch": arch(),
                "KernelVersion": kernel(),
            },
        }],
        "Version": version,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": kernel(),
        "BuildTime": "",
    }))
}

async fn info(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let containers = shared.apps.list_containers(true).await;
    let running = containers.iter().filter(|c| c.state == "running").count();
    let store = shared.images.store().clone();
    let images = tokio::task::spawn_blocking(move || store.list().map(|l| l.len()))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let name = shared.cluster.identity().name.clone();
    Json(json!({
        "ID": name,
        "Name": name,
        "Containers": containers.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": containers.len() - running,
        "Images": images,
        "Driver": "overlay",
        "DockerRootDir": shared.config.data_dir.display().to_string(),
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "OperatingSystem": "skiff",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "KernelVersion": kernel(),
        "NCPU": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "MemTotal": skiff_runtime::machine_memory(),
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "2" } else { "1" },
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "DefaultRuntime": "runc",
        "Runtimes": {"runc": {"path": "runc"}},
        "LoggingDriver": "skiff",
        "Warnings": [],
    }))
}

/// A Docker boolean parameter: `1` or `true` (an empty value is not set).
fn truthy(pairs: &[(String, String)], key: &str) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | "True"))
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn rfc3339(ms: u64) -> String {
    if ms == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn status_text(c: &ContainerInfo, now: u64) -> String {
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

fn ports_list(c: &ContainerInfo) -> Vec<Value> {
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
fn filters(pairs: &[(String, String)]) -> Answer<BTreeMap<String, Vec<String>>> {
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

fn matches(c: &ContainerInfo, filters: &BTreeMap<String, Vec<String>>) -> Answer<bool> {
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
async fn list(State(shared): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Answer<Json<Value>> {
    let pairs = query_pairs(q);
    let all = truthy(&pairs, "all");
    let filters = filters(&pairs)?;
    let now = crate::clock::now_ms();
    let mut out = Vec::new();
    for c in shared.apps.list_containers(true).await {
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

/// What `docker create` sends (the fields skiff reads; others are ignored, as an older
/// Docker ignores fields it does not know, unless they would loosen the container's
/// confinement: those are read to be refused).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    image: String,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    env: Option<Vec<String>>,
    tty: bool,
    open_stdin: bool,
    labels: Option<BTreeMap<String, String>>,
    host_config: Option<HostConfig>,
    user: Option<String>,
    working_dir: Option<String>,
    /// Anonymous volumes (`-v /data`): refused, skiff has no volumes.
    volumes: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfig {
    port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    memory: Option<i64>,
    nano_cpus: Option<i64>,
    pids_limit: Option<i64>,
    restart_policy: Option<DockerRestart>,
    auto_remove: bool,
    network_mode: Option<String>,
    readonly_rootfs: bool,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    group_add: Option<Vec<String>>,
    security_opt: Option<Vec<String>>,
    tmpfs: Option<BTreeMap<String, String>>,
    mounts: Option<Vec<DockerMount>>,
    // Read only to be refused when set.
    privileged: bool,
    binds: Option<Vec<String>>,
    volumes_from: Option<Vec<String>>,
    devices: Option<Vec<Value>>,
    device_requests: Option<Vec<Value>>,
    device_cgroup_rules: Option<Vec<String>>,
    pid_mode: Option<String>,
    ipc_mode: Option<String>,
    #[serde(rename = "UTSMode")]
    uts_mode: Option<String>,
    userns_mode: Option<String>,
    cgroupns_mode: Option<String>,
    sysctls: Option<BTreeMap<String, String>>,
    masked_paths: Option<Vec<String>>,
    readonly_paths: Option<Vec<String>>,
    runtime: Option<String>,
}

/// `--mount`: only `type=tmpfs` is honoured.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DockerMount {
    #[serde(rename = "Type")]
    kind: String,
    target: String,
    read_only: bool,
    tmpfs_options: Option<TmpfsOptions>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct TmpfsOptions {
    size_bytes: Option<i64>,
    mode: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct PortBinding {
    host_ip: String,
    host_port: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DockerRestart {
    name: String,
}

fn bad(message: impl Into<String>) -> DockerError {
    DockerError::new(StatusCode::BAD_REQUEST, message)
}

/// A `docker create` body as `skiff run`'s parameters.
fn run_params(body: CreateBody, name: Option<String>) -> Answer<RunParams> {
    if body.image.is_empty() {
        return Err(bad("Config.Image is required"));
    }
    if body.tty || body.open_stdin {
        return Err(bad(
            "a TTY or stdin (-t, -i) is not supported by skiff: containers' output is logged",
        ));
    }
    let mut params = skiff_spec::DeployParams::default();
    for e in body.env.unwrap_or_default() {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| bad(format!("invalid environment variable {e:?}: use KEY=VALUE")))?;
        params.env.push((k.to_string(), v.to_string()));
    }
    let hc = body.host_config.unwrap_or_default();
    let (user, workdir, security) = security_params(
        body.user,
        body.working_dir,
        body.volumes.is_some_and(|v| !v.is_empty()),
        &hc,
    )?;
    params.memory_bytes = hc.memory.filter(|&m| m > 0).map(|m| m as u64);
    let mut ports = Vec::new();
    for (container, bindings) in hc.port_bindings.unwrap_or_default() {
        let (port, proto) = container.split_once('/').unwrap_or((&container, "tcp"));
        if proto != "tcp" {
            return Err(bad(format!(
                "only tcp ports can be published, not {container}"
            )));
        }
        for b in bindings.unwrap_or_default() {
            // An empty HostIp publishes on loopback, as every skiff listener by default.
            let spec = match b.host_ip.as_str() {
                "" => format!("{}:{port}", b.host_port),
                ip if ip.contains(':') => format!("[{ip}]:{}:{port}", b.host_port),
                ip => format!("{ip}:{}:{port}", b.host_port),
            };
            ports.push(spec.parse::<PortMapping>().map_err(bad)?);
        }
    }
    let restart = match hc.restart_policy.map(|r| r.name).as_deref() {
        None | Some("" | "no") => RestartPolicy::No,
        Some("always" | "unless-stopped") => RestartPolicy::Always,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some(other) => return Err(bad(format!("invalid restart policy '{other}'"))),
    };
    let host_network = match hc.network_mode.as_deref() {
        None | Some("" | "default" | "bridge") => false,
        Some("host") => true,
        Some(other) => {
            return Err(bad(format!(
                "network {other} not found: skiff has the networks bridge and host"
            )));
        }
    };
    let run = RunParams {
        image: familiar(&body.image).to_string(),
        name,
        params,
        ports,
        restart,
        args: body.cmd.filter(|c| !c.is_empty()),
        milli_cpus: hc
            .nano_cpus
            .filter(|&n| n > 0)
            .map(|n| RunParams::milli_cpus(n as f64 / 1e9))
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        pids_limit: hc.pids_limit.filter(|&p| p > 0),
        host_network,
        auto_remove: hc.auto_remove,
        // `--entrypoint ""` arrives as `[""]`: no entrypoint at all.
        entrypoint: body
            .entrypoint
            .map(|e| e.into_iter().filter(|a| !a.is_empty()).collect()),
        labels: body.labels.unwrap_or_default(),
        user,
        workdir,
        security,
    };
    if run.auto_remove && run.restart != RestartPolicy::No {
        return Err(bad(
            "conflicting options: cannot specify both --restart and --rm",
        ));
    }
    Ok(run)
}

/// The user, working directory and confinement a `docker create` body asks for; what
/// skiff cannot honour is refused, naming the flag and the field (a 400 the CLI prints).
fn security_params(
    user: Option<String>,
    working_dir: Option<String>,
    volumes: bool,
    hc: &HostConfig,
) -> Answer<(Option<String>, Option<String>, skiff_spec::Security)> {
    let refuse = |flag: &str, field: &str, why: &str| {
        Err(bad(format!(
            "{flag} is not supported by skiff ({field}): {why}"
        )))
    };
    fn set<T>(v: &Option<Vec<T>>) -> bool {
        v.as_ref().is_some_and(|v| !v.is_empty())
    }
    if hc.privileged {
        return refuse(
            "--privileged",
            "HostConfig.Privileged",
            "it runs no privileged containers",
        );
    }
    if set(&hc.devices) || set(&hc.device_requests) || set(&hc.device_cgroup_rules) {
        return refuse(
            "--device",
            "HostConfig.Devices",
            "containers get no devices of the node",
        );
    }
    for (flag, field, mode) in [
        ("--pid", "HostConfig.PidMode", &hc.pid_mode),
        ("--ipc", "HostConfig.IpcMode", &hc.ipc_mode),
        ("--uts", "HostConfig.UTSMode", &hc.uts_mode),
        ("--cgroupns", "HostConfig.CgroupnsMode", &hc.cgroupns_mode),
    ] {
        // Its own namespace is what skiff gives (`private`, `shareable`: nothing joins it).
        match mode.as_deref() {
            None | Some("" | "private" | "shareable") => {}
            Some(m) => {
                return refuse(
                    &format!("{flag} {m}"),
                    field,
                    "every container has namespaces of its own",
                );
            }
        }
    }
    // skiff makes no user namespaces, so the node's ("host") is what every container has.
    if let Some(m) = hc
        .userns_mode
        .as_deref()
        .filter(|m| !["", "host"].contains(m))
    {
        return refuse(
            &format!("--userns {m}"),
            "HostConfig.UsernsMode",
            "it makes no user namespaces",
        );
    }
    if hc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        return refuse(
            "--sysctl",
            "HostConfig.Sysctls",
            "a container's kernel settings are the runtime's",
        );
    }
    if set(&hc.binds) || set(&hc.volumes_from) || volumes {
        return refuse(
            "-v/--volume",
            "HostConfig.Binds, Config.Volumes",
            "it has no volumes and mounts no paths of the node",
        );
    }
    if hc.masked_paths.is_some() || hc.readonly_paths.is_some() {
        return refuse(
            "--security-opt systempaths",
            "HostConfig.MaskedPaths",
            "/proc and /sys are masked as Docker's defaults mask them",
        );
    }
    if let Some(r) = hc.runtime.as_deref().filter(|r| !["", "runc"].contains(r)) {
        return refuse(
            &format!("--runtime {r}"),
            "HostConfig.Runtime",
            "Linux containers run with runc",
        );
    }
    let user = user.filter(|u| !u.is_empty());
    if let Some(u) = &user {
        skiff_spec::security::check_user(u).map_err(|e| bad(format!("-u/--user: {e}")))?;
    }
    let workdir = working_dir.filter(|w| !w.is_empty());
    if let Some(w) = &workdir {
        skiff_spec::security::check_workdir(w).map_err(|e| bad(format!("-w/--workdir: {e}")))?;
    }
    let mut security = skiff_spec::Security {
        read_only: hc.readonly_rootfs,
        ..Default::default()
    };
    for c in hc.cap_add.iter().flatten() {
        security
            .add_capability(c)
            .map_err(|e| bad(format!("--cap-add (HostConfig.CapAdd): {e}")))?;
    }
    for c in hc.cap_drop.iter().flatten() {
        security
            .drop_capability(c)
            .map_err(|e| bad(format!("--cap-drop (HostConfig.CapDrop): {e}")))?;
    }
    for g in hc.group_add.iter().flatten() {
        security
            .add_group(g)
            .map_err(|e| bad(format!("--group-add (HostConfig.GroupAdd): {e}")))?;
    }
    for o in hc.security_opt.iter().flatten() {
        skiff_spec::security::check_security_opt(o)
            .map_err(|e| bad(format!("{e} (HostConfig.SecurityOpt)")))?;
    }
    let tmpfs_error = |e: String| bad(format!("--tmpfs (HostConfig.Tmpfs): {e}"));
    for (path, options) in hc.tmpfs.iter().flatten() {
        let t = skiff_spec::Tmpfs::new(path, options).map_err(tmpfs_error)?;
        security.add_tmpfs(t).map_err(tmpfs_error)?;
    }
    for m in hc.mounts.iter().flatten() {
        if m.kind != "tmpfs" {
            return refuse(
                &format!("--mount type={}", m.kind),
                "HostConfig.Mounts",
                "it has no volumes and mounts no paths of the node; type=tmpfs is supported",
            );
        }
        let mut options = Vec::new();
        if m.read_only {
            options.push("ro".to_string());
        }
        if let Some(o) = &m.tmpfs_options {
            if let Some(size) = o.size_bytes.filter(|s| *s > 0) {
                options.push(format!("size={size}"));
            }
            if let Some(mode) = o.mode {
                options.push(format!("mode={mode:o}"));
            }
        }
        let mount_error = |e: String| bad(format!("--mount (HostConfig.Mounts): {e}"));
        let t = skiff_spec::Tmpfs::new(&m.target, &options.join(",")).map_err(mount_error)?;
        security.add_tmpfs(t).map_err(mount_error)?;
    }
    Ok((user, workdir, security))
}

/// `POST /containers/create?name=N`
async fn create(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
    body: axum::body::Bytes,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    let body: CreateBody =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid container config: {e}")))?;
    let name = param(&pairs, "name")
        .filter(|n| !n.is_empty())
        .map(|n| n.trim_start_matches('/').to_string());
    let image = body.image.clone();
    let run = run_params(body, name)?;
    let info = match shared.apps.create_container(run).await {
        Ok(info) => info,
        // Docker's CLI pulls on this message, then creates again.
        Err(crate::error::AppError::NotFound(_)) => {
            return Err(DockerError::new(
                StatusCode::NOT_FOUND,
                format!("No such image: {image}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"Id": info.id, "Warnings": []})),
    )
        .into_response())
}

async fn container(shared: &Shared, id: &str) -> Answer<ContainerInfo> {
    shared
        .apps
        .inspect_container(id)
        .await
        .map_err(|_| DockerError::new(StatusCode::NOT_FOUND, format!("No such container: {id}")))
}

/// `GET /containers/{id}/json`
async fn inspect(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer<Json<Value>> {
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
async fn start(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer<StatusCode> {
    if container(&shared, &id).await?.state == "running" {
        return Ok(StatusCode::NOT_MODIFIED);
    }
    shared.apps.start_container(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn grace(pairs: &[(String, String)]) -> Answer<Duration> {
    match param(pairs, "t").or_else(|| param(pairs, "timeout")) {
        None | Some("") => Ok(Duration::from_secs(10)),
        Some(t) => t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| bad(format!("invalid value for t: {t:?}"))),
    }
}

/// `POST /containers/{id}/stop?t=10`: 204, or 304 when it is not running.
async fn stop(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<StatusCode> {
    let grace = grace(&query_pairs(q))?;
    if container(&shared, &id).await?.state != "running" {
        return Ok(StatusCode::NOT_MODIFIED);
    }
    shared.apps.stop_container(&id, grace).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/restart?t=10`
async fn restart(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<StatusCode> {
    let grace = grace(&query_pairs(q))?;
    container(&shared, &id).await?;
    shared.apps.stop_container(&id, grace).await?;
    shared.apps.start_container(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/kill`: stops it at once (SIGKILL after no grace).
async fn kill(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Answer<StatusCode> {
    if container(&shared, &id).await?.state != "running" {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("cannot kill container: {id}: container is not running"),
        ));
    }
    shared.apps.stop_container(&id, Duration::ZERO).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/wait?condition=not-running|next-exit|removed`
async fn wait(
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
    let waiter = shared.apps.container_waiter(&id, next).await?;
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
async fn remove(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<StatusCode> {
    let force = truthy(&query_pairs(q), "force");
    container(&shared, &id).await?;
    match shared.apps.remove_container(&id, force).await {
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

/// One frame of Docker's multiplexed stream: the stream's byte, three zeros, the length.
pub(crate) fn frame(stream: u8, data: &[u8]) -> bytes::Bytes {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&[stream, 0, 0, 0]);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    bytes::Bytes::from(f)
}

/// `GET /containers/{id}/logs?stdout=1&stderr=1&follow=1&tail=N&timestamps=1`: framed as
/// Docker frames a container without a TTY.
async fn logs(
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
    let book = shared.apps.container_log(&id).await?;
    let exit = shared.apps.container_exit(&id).await;
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
fn next_exit(mut exit: watch::Receiver<Option<i32>>) -> watch::Receiver<Option<i32>> {
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
async fn attach(
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
    let book = shared.apps.container_log(&id).await?;
    let exit = shared.apps.container_exit(&id).await.ok_or_else(|| {
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

/// Execs made by `POST /containers/{id}/exec`, until inspected after they ended (or
/// pushed out: at most [`MAX_EXECS`] are kept, the oldest ended ones go first).
#[derive(Default)]
pub(crate) struct Execs(std::sync::Mutex<BTreeMap<String, Exec>>);

const MAX_EXECS: usize = 1024;

struct Exec {
    container: String,
    spec: skiff_runtime::oci::ExecSpec,
    /// `None` until started; then `None` inside while it runs, the code once it ended.
    state: Option<Arc<std::sync::Mutex<Option<i32>>>>,
    made_ms: u64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ExecBody {
    cmd: Vec<String>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    tty: bool,
    attach_stdin: bool,
    user: Option<String>,
    privileged: bool,
}

/// `POST /containers/{id}/exec`: an exec to start, checked now.
async fn exec_create(
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
async fn exec_start(
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
    let mut outputs = match shared.apps.exec_container(&container, spec).await {
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
fn upgraded() -> Response {
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
async fn exec_inspect(
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

/// A name as skiff keeps it: Docker Hub's `docker.io/` and `library/` are implied (as
/// `docker save` archives are loaded), so `docker.io/library/web` is `web`.
fn familiar(name: &str) -> &str {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name)
}

fn encode(pairs: &[(&str, &str)]) -> Option<String> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    Some(q.finish())
}

/// `POST /images/{name}/tag?repo=R&tag=T`, and `POST /images/{name}/push` (`docker
/// push`, names may hold `/`).
async fn image_tag(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<Response> {
    if let Some(name) = path.strip_suffix("/push") {
        return registry::push(shared, headers, name, q).await;
    }
    let Some(name) = path.strip_suffix("/tag").map(familiar) else {
        return Err(DockerError::new(StatusCode::NOT_FOUND, "page not found"));
    };
    let pairs = query_pairs(q);
    let repo = familiar(param(&pairs, "repo").unwrap_or_default());
    let target = match param(&pairs, "tag").filter(|t| !t.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo.to_string(),
    };
    super::images::tag(
        State(shared),
        RawQuery(encode(&[("source", name), ("target", &target)])),
    )
    .await
    .map_err(|e| no_such_image(e, name))?;
    Ok(StatusCode::CREATED.into_response())
}

/// Docker's words for an image that is not there.
fn no_such_image(e: ApiError, name: &str) -> DockerError {
    if e.status() == StatusCode::NOT_FOUND {
        DockerError::new(StatusCode::NOT_FOUND, format!("No such image: {name}"))
    } else {
        e.into()
    }
}

/// `DELETE /images/{name}?force=1`: untags a name, or every name of an id.
async fn image_remove(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer<Json<Value>> {
    let name = familiar(&name).to_string();
    let force = if truthy(&query_pairs(q), "force") {
        "true"
    } else {
        "false"
    };
    let store = shared.images.store().clone();
    let wanted = name.clone();
    let tags = tokio::task::spawn_blocking(move || {
        let digest = store.resolve(&wanted).ok()?;
        store.tags_of(&digest).ok()
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    super::images::remove(
        State(shared),
        RawQuery(encode(&[("ref", &name), ("force", force)])),
    )
    .await
    .map_err(|e| no_such_image(e, &name))?;
    let untagged: Vec<Value> = match skiff_image::ImageName::parse(&name) {
        Ok(n) if tags.contains(&n.to_string()) => vec![json!({"Untagged": n.to_string()})],
        _ => tags.iter().map(|t| json!({"Untagged": t})).collect(),
    };
    Ok(Json(Value::Array(untagged)))
}

/// `POST /images/load`: the archives `skiff load` takes, answered as Docker's stream.
async fn image_load(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Answer<Response> {
    let response = super::images::load(State(shared), headers, body).await?;
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let loaded: Vec<skiff_spec::api::LoadedImage> = serde_json::from_slice(&bytes)
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut out = String::new();
    for l in loaded {
        if l.tags.is_empty() {
            out.push_str(&json!({"stream": format!("Loaded image ID: {}\n", l.id)}).to_string());
            out.push_str("\r\n");
        }
        for t in l.tags {
            out.push_str(&json!({"stream": format!("Loaded image: {t}\n")}).to_string());
            out.push_str("\r\n");
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// `GET /images/get?names=A&names=B`: one tar of those images (an OCI layout, which
/// Docker 25 and later load).
async fn image_save(State(shared): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Answer<Response> {
    let names: Vec<String> = query_pairs(q)
        .into_iter()
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v)
        .collect();
    let pairs: Vec<(&str, &str)> = names.iter().map(|v| ("ref", familiar(v))).collect();
    Ok(super::images::save(State(shared), RawQuery(encode(&pairs))).await?)
}

/// `GET /images/{name}/json` (an image as Docker's inspect shows it; names may hold `/`)
/// and `GET /images/{name}/history` (its layers).
async fn image_get(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
) -> Answer<Json<Value>> {
    let (name, history) = match (path.strip_suffix("/json"), path.strip_suffix("/history")) {
        (Some(n), _) => (familiar(n), false),
        (_, Some(n)) => (familiar(n), true),
        _ => return Err(DockerError::new(StatusCode::NOT_FOUND, "page not found")),
    };

    let store = shared.images.store().clone();
    let wanted = name.to_string();
    let found = tokio::task::spawn_blocking(move || {
        let digest = store.resolve(&wanted).ok()?;
        let summary = store.summary(&digest).ok()?;
        let info = store
            .list()
            .ok()?
            .into_iter()
            .find(|i| i.digest == digest)?;
        Some((summary, info))
    })
    .await
    .ok()
    .flatten();
    let Some((summary, info)) = found else {
        return Err(DockerError::new(
            StatusCode::NOT_FOUND,
            format!("No such image: {name}"),
        ));
    };
    if history {
        let manifest = shared
            .images
            .store()
            .manifest(&info.digest)
            .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let n = manifest.layers.len();
        let rows: Vec<Value> = manifest
            .layers
            .iter()
            .enumerate()
            .rev()
            .map(|(i, l)| {
                let top = i + 1 == n;
                json!({
                    "Id": if top { info.digest.to_string() } else { "<missing>".into() },
                    "Created": 0,
                    "CreatedBy": "",
                    "Tags": if top { json!(info.tags) } else { Value::Null },
                    "Size": l.size,
                    "Comment": "",
                })
            })
            .collect();
        return Ok(Json(Value::Array(rows)));
    }
    let run = &summary.run;
    let layers: Vec<String> = match &summary.runnable {
        skiff_image::Runnable::Oci { layers } => {
            layers.iter().map(|l| l.digest.to_string()).collect()
        }
        _ => vec![],
    };
    Ok(Json(json!({
        "Id": info.digest.to_string(),
        "RepoTags": info.tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": info.created,
        "Author": "",
        "Architecture": arch(),
        "Os": if layers.is_empty() { "wasip2" } else { "linux" },
        "Size": info.size,
        "Config": {
            "Env": run.env,
            "Cmd": run.cmd,
            "Entrypoint": if run.entrypoint.is_empty() { Value::Null } else { json!(run.entrypoint) },
            "WorkingDir": run.working_dir,
            "ExposedPorts": run.exposed_ports,
            "User": run.user,
            "Labels": run.labels,
        },
        "RootFS": {"Type": "layers", "Layers": layers},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    })))
}

/// The build's query keys that change the result and that skiff does not take.
const BUILD_UNSUPPORTED: &[&str] = &["buildargs", "labels", "target", "platform", "extrahosts"];

/// `POST /build?t=NAME&dockerfile=PATH`, the body a tar (or gzipped tar) of the context,
/// as the legacy builder sends it: built with skiff's Dockerfile subset (or skiff.toml),
/// answered with Docker's JSON progress stream; a build that fails is an `error` in it.
async fn build(
    State(shared): State<Arc<Shared>>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Answer<Response> {
    let pairs = query_pairs(q);
    for key in BUILD_UNSUPPORTED {
        if let Some(v) = param(&pairs, key).filter(|v| !v.is_empty() && *v != "{}" && *v != "[]") {
            return Err(bad(format!(
                "build option {key}={v} is not supported by skiff"
            )));
        }
    }
    let tags = pairs
        .iter()
        .filter(|(k, _)| k == "t")
        .map(|(_, v)| skiff_image::ImageName::parse(familiar(v)).map_err(|e| bad(e.to_string())))
        .collect::<Answer<Vec<_>>>()?;
    let dockerfile = param(&pairs, "dockerfile")
        .filter(|d| !d.is_empty())
        .map(String::from);
    let mut spool =
        super::images::spool(&headers, body, shared.config.upload_cap, "build context").await?;
    let (store, limits, scratch) = (
        shared.images.store().clone(),
        shared.config.extract,
        shared.config.data_dir.clone(),
    );
    let outcome = tokio::task::spawn_blocking(
        move || -> Result<(Vec<String>, skiff_spec::Digest, Vec<String>), BuildFailure> {
            use skiff_image::build::{BuildError, Context};
            use std::io::{Read as _, Seek as _};
            let failed = BuildFailure::Failed;
            let dir = tempfile::Builder::new()
                .prefix(crate::images::BUILD_SCRATCH)
                .tempdir_in(&scratch)
                .map_err(|e| failed(format!("no scratch directory: {e}")))?;
            let mut magic = [0u8; 2];
            spool.rewind().map_err(|e| failed(e.to_string()))?;
            let gzipped = spool.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
            spool.rewind().map_err(|e| failed(e.to_string()))?;
            let reader: Box<dyn std::io::Read> = if gzipped {
                Box::new(flate2::read::GzDecoder::new(spool))
            } else {
                Box::new(spool)
            };
            skiff_image::layer::extract_stream(reader, dir.path(), limits).map_err(|e| {
                let message = format!("the build context: {e}");
                // A context the client crafted (a link out, past a limit) is its fault.
                match e {
                    skiff_image::layer::LayerError::Io { .. } => BuildFailure::Failed(message),
                    _ => BuildFailure::Refused(message),
                }
            })?;
            // Messages name files as the client knows them, not where the node put them.
            let inside = format!("{}/", dir.path().display());
            let fail = |e: BuildError| match e {
                BuildError::Context(m) => BuildFailure::Refused(m.replace(&inside, "")),
                e => BuildFailure::Failed(e.to_string().replace(&inside, "")),
            };
            // The context is a client's: every path in it, the build file's first, is
            // opened beneath it (the node reads it as root).
            let context = Context::open(dir.path()).map_err(fail)?;
            let file = match &dockerfile {
                Some(name) => {
                    let rel = std::path::Path::new(name);
                    if rel.is_absolute()
                        || rel
                            .components()
                            .any(|c| !matches!(c, std::path::Component::Normal(_)))
                    {
                        return Err(BuildFailure::Refused(format!(
                            "dockerfile {name:?} is not a path inside the build context"
                        )));
                    }
                    Some(rel)
                }
                None => ["Dockerfile", "skiff.toml"]
                    .into_iter()
                    .find(|n| context.contains(n))
                    .map(std::path::Path::new),
            };
            let file = context.build_file(file).map_err(fail)?;
            let steps = instructions(&file.text);
            let plan = context.plan(&file.text, &file.name).map_err(fail)?;
            let (desc, _kind) = skiff_image::build::write(&store, plan).map_err(fail)?;
            let mut tagged = Vec::new();
            for t in &tags {
                store.tag(t, &desc).map_err(|e| failed(e.to_string()))?;
                tagged.push(t.to_string());
            }
            Ok((steps, desc.digest, tagged))
        },
    )
    .await
    .unwrap_or_else(|e| Err(BuildFailure::Failed(format!("the build failed: {e}"))));
    // Another node holds a copy before the build is reported done, as with `skiff load`.
    let outcome = match outcome {
        Ok((steps, digest, tagged)) => {
            let picked: Vec<(Option<skiff_image::ImageName>, skiff_spec::Digest)> = tagged
                .iter()
                .map(|t| (skiff_image::ImageName::parse(t).ok(), digest))
                .collect();
            let picked = if picked.is_empty() {
                vec![(None, digest)]
            } else {
                picked
            };
            match shared.images.replicate(&picked).await {
                Ok(()) => Ok((steps, digest, tagged)),
                Err(e) => Err(format!("the image was built but not replicated: {e}")),
            }
        }
        // A context the node will not read is refused as Docker refuses a bad request
        // (`Error response from daemon`), naming the path; nothing was built.
        Err(BuildFailure::Refused(message)) => {
            return Err(bad(message.lines().next().unwrap_or_default()));
        }
        Err(BuildFailure::Failed(message)) => Err(message),
    };
    let mut events = Vec::new();
    match outcome {
        Ok((steps, digest, tagged)) => {
            let n = steps.len();
            for (i, s) in steps.iter().enumerate() {
                events.push(json!({"stream": format!("Step {}/{n} : {s}\n", i + 1)}));
            }
            events.push(json!({"aux": {"ID": digest.to_string()}}));
            events.push(json!({"stream": format!("Successfully built {}\n", &digest.hex()[..12])}));
            for t in tagged {
                events.push(json!({"stream": format!("Successfully tagged {t}\n")}));
            }
        }
        Err(message) => {
            let message = message.lines().next().unwrap_or_default().to_string();
            events.push(json!({"errorDetail": {"message": message}, "error": message}));
        }
    }
    let body: String = events.iter().map(|e| format!("{e}\r\n")).collect();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Why a build did not finish.
enum BuildFailure {
    /// The context, or a path the request named in it, is refused: answered 400.
    Refused(String),
    /// The build failed: answered as the `error` line of the progress stream.
    Failed(String),
}

/// A Dockerfile's instructions, one per entry (continuation lines joined), for the
/// build's `Step i/n` lines.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// `GET /images/json`
async fn images(State(shared): State<Arc<Shared>>) -> Answer<Json<Value>> {
    let store = shared.images.store().clone();
    let list = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| DockerError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let out: Vec<Value> = list
        .into_iter()
        .map(|i| {
            let created = humantime::parse_rfc3339_weak(&i.created)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let tags: Vec<String> = i
                .tags
                .iter()
                .map(|t| {
                    if t.contains(':') {
                        t.clone()
                    } else {
                        format!("{t}:latest")
                    }
                })
                .collect();
            json!({
                "Id": i.digest.to_string(),
                "ParentId": "",
                "RepoTags": tags,
                "RepoDigests": [],
                "Created": created,
                "Size": i.size,
                "SharedSize": -1,
                "Labels": {},
                "Containers": -1,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_and_create_bodies() {
        assert_eq!(
            version_prefix("/v1.45/containers/json"),
            Some((1, 45, "/containers/json"))
        );
        assert_eq!(version_prefix("/v1/apps"), None);
        assert!(is_docker_path("/_ping") && is_docker_path("/v1.24/version"));
        assert!(!is_docker_path("/v1/containers") && !is_docker_path("/version"));

        let body: CreateBody = serde_json::from_str(
            r#"{"Image":"web","Cmd":["httpd","-f"],"Env":["A=1"],"Tty":false,
                "HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8080"}]},
                "Memory":67108864,"NanoCpus":500000000,"RestartPolicy":{"Name":"always"},
                "NetworkMode":"default"},"Unknown":1}"#,
        )
        .unwrap();
        let run = run_params(body, Some("w".into())).unwrap();
        assert_eq!(run.image, "web");
        assert_eq!(
            run.args.as_deref(),
            Some(&["httpd".to_string(), "-f".into()][..])
        );
        assert_eq!(run.params.env, [("A".to_string(), "1".to_string())]);
        assert_eq!(run.ports[0].to_string(), "127.0.0.1:8080->80/tcp");
        assert_eq!(run.params.memory_bytes, Some(64 << 20));
        assert_eq!(
            (run.milli_cpus, run.restart),
            (Some(500), RestartPolicy::Always)
        );

        let body: CreateBody =
            serde_json::from_str(r#"{"Image":"web","Entrypoint":[""],"Labels":{"a":"b"}}"#)
                .unwrap();
        let run = run_params(body, None).unwrap();
        assert_eq!(run.entrypoint, Some(vec![]), "--entrypoint \"\" is none");
        assert_eq!(run.labels["a"], "b");

        for bad_body in [
            r#"{"Image":"web","Tty":true}"#,
            r#"{"Image":"web","HostConfig":{"NetworkMode":"none"}}"#,
            r#"{"Image":"web","HostConfig":{"AutoRemove":true,"RestartPolicy":{"Name":"always"}}}"#,
            r#"{"Image":""}"#,
        ] {
            let body: CreateBody = serde_json::from_str(bad_body).unwrap();
            assert!(run_params(body, None).is_err(), "{bad_body}");
        }
    }

    #[test]
    fn security_options_are_honoured_or_refused_naming_them() {
        let run = |json: &str| run_params(serde_json::from_str(json).unwrap(), None);
        let r = run(
            r#"{"Image":"web","User":"1000:1000","WorkingDir":"/srv","Volumes":{},
                "HostConfig":{"ReadonlyRootfs":true,"CapAdd":["net_raw"],"CapDrop":["ALL"],
                "GroupAdd":["staff"],"SecurityOpt":["no-new-privileges:true"],
                "Tmpfs":{"/tmp":"size=1m","/run":""},"Privileged":false,"Binds":null,
                "Devices":[],"PidMode":"","IpcMode":"private","UTSMode":"","UsernsMode":"",
                "Mounts":[{"Type":"tmpfs","Target":"/cache","TmpfsOptions":{"SizeBytes":4096,"Mode":448}}]}}"#,
        )
        .unwrap();
        assert_eq!(r.user.as_deref(), Some("1000:1000"));
        assert_eq!(r.workdir.as_deref(), Some("/srv"));
        let s = &r.security;
        assert!(s.read_only);
        assert_eq!(
            (&s.cap_add[..], &s.cap_drop[..]),
            (&["NET_RAW".to_string()][..], &["ALL".to_string()][..])
        );
        assert_eq!(s.capabilities(), ["NET_RAW"]);
        assert_eq!(s.groups, ["staff"]);
        let tmpfs: Vec<(&str, &[String])> = s
            .tmpfs
            .iter()
            .map(|t| (t.path.as_str(), &t.options[..]))
            .collect();
        assert_eq!(tmpfs[0].0, "/run");
        assert_eq!(
            tmpfs[1],
            (
                "/tmp",
                &["noexec", "nosuid", "nodev", "size=1048576"].map(String::from)[..]
            )
        );
        assert_eq!(
            tmpfs[2],
            (
                "/cache",
                &["noexec", "nosuid", "nodev", "size=4096", "mode=700"].map(String::from)[..]
            )
        );
        // An empty User is the image's, as Docker's.
        assert_eq!(run(r#"{"Image":"web","User":""}"#).unwrap().user, None);

        for (json, names) in [
            (
                r#"{"Privileged":true}"#,
                "--privileged is not supported by skiff (HostConfig.Privileged)",
            ),
            (
                r#"{"Devices":[{"PathOnHost":"/dev/sda","PathInContainer":"/dev/sda","CgroupPermissions":"rwm"}]}"#,
                "--device",
            ),
            (
                r#"{"DeviceRequests":[{"Driver":"nvidia","Count":-1}]}"#,
                "HostConfig.Devices",
            ),
            (
                r#"{"PidMode":"host"}"#,
                "--pid host is not supported by skiff (HostConfig.PidMode)",
            ),
            (r#"{"IpcMode":"host"}"#, "--ipc host"),
            (r#"{"UTSMode":"host"}"#, "--uts host"),
            (r#"{"PidMode":"container:db"}"#, "--pid container:db"),
            (r#"{"CgroupnsMode":"host"}"#, "--cgroupns host"),
            (r#"{"UsernsMode":"private"}"#, "--userns private"),
            (
                r#"{"Sysctls":{"net.ipv4.ip_forward":"1"}}"#,
                "--sysctl is not supported by skiff (HostConfig.Sysctls)",
            ),
            (
                r#"{"SecurityOpt":["seccomp=unconfined"]}"#,
                "--security-opt seccomp=unconfined is not supported",
            ),
            (
                r#"{"SecurityOpt":["apparmor=unconfined"]}"#,
                "--security-opt apparmor=unconfined is not supported",
            ),
            (
                r#"{"SecurityOpt":["no-new-privileges:false"]}"#,
                "no-new-privileges:false",
            ),
            (r#"{"SecurityOpt":["label=disable"]}"#, "label=disable"),
            (
                r#"{"Binds":["/etc:/host-etc"]}"#,
                "-v/--volume is not supported by skiff",
            ),
            (r#"{"VolumesFrom":["db"]}"#, "-v/--volume"),
            (
                r#"{"Mounts":[{"Type":"bind","Source":"/","Target":"/host"}]}"#,
                "--mount type=bind",
            ),
            (r#"{"MaskedPaths":[],"ReadonlyPaths":[]}"#, "systempaths"),
            (r#"{"Runtime":"runsc"}"#, "--runtime runsc"),
            (
                r#"{"CapAdd":["CAP_GOD_MODE"]}"#,
                "--cap-add (HostConfig.CapAdd): unknown capability \"CAP_GOD_MODE\"",
            ),
            (r#"{"CapDrop":["NOPE"]}"#, "--cap-drop"),
            (
                r#"{"Tmpfs":{"/proc":""}}"#,
                "--tmpfs (HostConfig.Tmpfs): tmpfs /proc",
            ),
            (r#"{"Tmpfs":{"/tmp":"size=lots"}}"#, "--tmpfs"),
        ] {
            let body = format!(r#"{{"Image":"web","HostConfig":{json}}}"#);
            let e = run(&body)
                .err()
                .unwrap_or_else(|| panic!("{json} was accepted"));
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{json}");
            assert!(e.1.contains(names), "{json}: {}", e.1);
        }
        for (json, names) in [
            (
                r#""User":"4294967295""#,
                "-u/--user: user id 4294967295 is outside",
            ),
            (r#""User":"a b""#, "-u/--user"),
            (r#""WorkingDir":"srv""#, "-w/--workdir"),
            (r#""Volumes":{"/data":{}}"#, "Config.Volumes"),
        ] {
            let e = run(&format!(r#"{{"Image":"web",{json}}}"#)).err().unwrap();
            assert!(e.1.contains(names), "{json}: {}", e.1);
        }
    }

    /// The refusal as the Docker CLI receives it: through the router, a 400 with
    /// Docker's `{"message"}`, before any image is looked for.
    #[tokio::test]
    async fn a_privileged_create_is_a_400_in_dockers_shape() {
        use http_body_util::BodyExt as _;
        let dir = tempfile::tempdir().unwrap();
        let node = crate::start(crate::NodeConfig::for_test(dir.path().to_path_buf()))
            .await
            .unwrap();
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/v1.45/containers/create?name=p")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"Image":"busybox","Cmd":["id"],"HostConfig":{"Privileged":true,"NetworkMode":"default"}}"#,
            ))
            .unwrap();
        let resp = tower::ServiceExt::oneshot(router(node.shared.clone()), req)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"message": "--privileged is not supported by skiff (HostConfig.Privileged): it runs no privileged containers"})
        );
        assert!(
            node.shared.apps.list_containers(true).await.is_empty(),
            "nothing was made"
        );
    }

    #[test]
    fn frames_are_dockers() {
        assert_eq!(&frame(2, b"hi\n")[..], b"\x02\0\0\0\0\0\0\x03hi\n");
    }
}
