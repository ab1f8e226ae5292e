//! The Docker Engine API, a second front door onto the same containers and images: what
//! Docker's CLI and SDKs call, with Docker's paths (with or without a `/v1.NN` prefix),
//! shapes, status codes and `{"message": ...}` errors. Served on `<data-dir>/docker.sock`
//! (whoever can open it is an admin, as with Docker's) and on the API port under the
//! bearer token.
//!
//! One concern a file: [`system`] (ping, version, info), [`containers`] (list,
//! lifecycle, logs, attach), [`create`] (the create body, every option honoured or
//! refused), [`exec`], [`images`], [`build`], [`registry`] (pull, push, login),
//! [`events`]. This file holds the router, version prefixes, headers and the helpers
//! they share. Not served (a 404
//! `page not found`, as Docker answers an unknown path): volumes, networks, swarm,
//! plugins, `docker import`/`commit`/`cp`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::Shared;
use crate::api::error::ApiError;

mod build;
mod containers;
mod create;
mod events;
mod exec;
mod images;
mod registry;
mod system;

use build::*;
use containers::*;
use create::*;
pub(crate) use exec::Execs;
use exec::*;
use images::*;
use system::*;

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

fn bad(message: impl Into<String>) -> DockerError {
    DockerError::new(StatusCode::BAD_REQUEST, message)
}

/// One frame of Docker's multiplexed stream: the stream's byte, three zeros, the length.
pub(crate) fn frame(stream: u8, data: &[u8]) -> bytes::Bytes {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&[stream, 0, 0, 0]);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    bytes::Bytes::from(f)
}

/// A name as skiff keeps it: Docker Hub's `docker.io/` and `library/` are implied (as
/// `docker save` archives are loaded), so `docker.io/library/web` is `web`.
fn familiar(name: &str) -> &str {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use serde_json::Value;
    use skiff_spec::RestartPolicy;

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
            node.shared
                .standalone
                .list_containers(true)
                .await
                .is_empty(),
            "nothing was made"
        );
    }

    #[test]
    fn frames_are_dockers() {
        assert_eq!(&frame(2, b"hi\n")[..], b"\x02\0\0\0\0\0\0\x03hi\n");
    }
}
