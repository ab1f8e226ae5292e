//! The JSON the node's HTTP API speaks; shared by the node and every client.

use serde::{Deserialize, Serialize};

use crate::{AppKind, Digest, Limits, PortMapping, RestartPolicy};

/// Every error answer: `{"error":{"code":"invalid_wasm","message":"..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_wasm`, `not_found`, `payload_too_large`.
    pub code: String,
    /// What went wrong, naming the thing.
    pub message: String,
}

/// One page of a list, as Kubernetes pages lists: asked for with `?limit=N` (and
/// `&continue=TOKEN` for the next), the items in name order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// Where the next page starts.
    #[serde(default)]
    pub metadata: PageMeta,
}

/// A page's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageMeta {
    /// The token for the next page; none on the last.
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
    /// Items after this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_item_count: Option<u64>,
}

/// One app as `GET /v1/apps/{name}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// The app's name.
    pub name: String,
    /// What kind of workload it is.
    pub kind: AppKind,
    /// The image it runs.
    pub image: Digest,
    /// The image as it was named at deploy (`hello:latest`).
    pub image_ref: String,
    /// Size of the image in bytes.
    pub image_size: u64,
    /// Desired replicas.
    pub replicas: u32,
    /// Replicas ready to serve.
    pub ready: u32,
    /// Deploy generation: 1 at creation, +1 on every redeploy.
    pub generation: u64,
    /// When the app was first deployed (Unix milliseconds).
    pub created_ms: u64,
    /// When the app was last deployed (Unix milliseconds).
    pub updated_ms: u64,
    /// Bounds of its containers.
    pub limits: Limits,
    /// Names of the environment variables set (values are not shown).
    pub env_keys: Vec<String>,
    /// Hosts it may call.
    pub allowed_hosts: Vec<String>,
    /// Where the ingress serves it.
    pub url: String,
    /// Why it is not (fully) ready, when it is not.
    pub message: Option<String>,
    /// Its containers.
    pub containers: Vec<ContainerStatus>,
}

/// One container (replica) of an app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// `<app>-<image short digest>-<n>`, like a pod name.
    pub name: String,
    /// Lifecycle state, e.g. `ready`, `draining`, `stopped`, `failed`.
    pub state: String,
    /// When it started (Unix milliseconds).
    pub started_ms: u64,
    /// Requests it is serving right now.
    pub in_flight: u32,
}

/// Which stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

/// One line of an app's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the line was written (Unix milliseconds).
    pub ts_ms: u64,
    /// The container that wrote it.
    pub container: String,
    /// stdout or stderr.
    pub stream: LogStream,
    /// The text, without its newline.
    pub line: String,
}

/// One image as `GET /v1/images` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    /// Manifest digest.
    pub id: Digest,
    /// Names pointing at it.
    pub tags: Vec<String>,
    /// `http`, `wagi`, `static`, or `unknown`.
    pub kind: String,
    /// Config and layers, in bytes.
    pub size: u64,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Apps running it.
    pub used_by: Vec<String>,
}

/// An image that `POST /v1/images` loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedImage {
    /// Manifest digest.
    pub id: Digest,
    /// Names it was tagged with.
    pub tags: Vec<String>,
}

/// Docker's human durations, as `docker ps` shows ages: "Less than a second",
/// "5 seconds", "About a minute", "3 hours", "2 days".
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..60 => format!("{s} seconds"),
        60..120 => "About a minute".into(),
        120..3600 => format!("{} minutes", s / 60),
        3600..7200 => "About an hour".into(),
        7200..172_800 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

/// What one running container uses, as `GET /v1/stats` lists it (`docker stats`): running
/// totals a client turns into rates between two reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// 64 hex digits.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it runs.
    pub kind: AppKind,
    /// When these were read (Unix ms).
    pub read_ms: u64,
    /// CPU time used so far, in nanoseconds (a Wasm container: its instances' run time).
    pub cpu_ns: u64,
    /// Memory in use, in bytes (a Wasm container: its live instances' linear memory).
    pub memory: u64,
    /// The most it may use: its limit (a Wasm container: one instance's limit times its
    /// concurrency), else the node's memory.
    pub memory_limit: u64,
    /// Processes in it (Linux containers).
    pub pids: Option<u64>,
    /// Requests it was given (Wasm containers).
    pub requests: Option<u64>,
    /// Bytes received and sent on its own network interface (Linux containers on the bridge).
    pub net: Option<(u64, u64)>,
}

/// What `POST /v1/containers?attach=true` streams, one JSON object per line: the
/// container once started, its output as it comes, and how it ended (last).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachEvent {
    /// It started.
    Started(Box<ContainerInfo>),
    /// A line of its output.
    Log(LogLine),
    /// It stopped, with this exit code.
    Exited {
        /// The exit code (`wait`'s).
        code: i32,
    },
}

/// One container as `GET /v1/containers` lists it (what `docker ps` shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// 64 hex digits.
    pub id: String,
    /// Its name (also its host label).
    pub name: String,
    /// The image as given (`my-web-app`, `hello:latest`).
    pub image: String,
    /// The image's digest.
    pub image_id: Digest,
    /// What it runs.
    pub kind: AppKind,
    /// `created`, `running`, `exited`.
    pub state: String,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// When it last started (Unix ms; 0 if never).
    pub started_ms: u64,
    /// When it last stopped (Unix ms; 0 if never).
    pub finished_ms: u64,
    /// Its last exit code, once exited.
    pub exit_code: Option<i32>,
    /// Whether the kernel's OOM killer ended its last run (Docker's `OOMKilled`).
    #[serde(default)]
    pub oom_killed: bool,
    /// Why its last run ended, when more than the exit code says (`OOMKilled: ...`).
    #[serde(default)]
    pub exit_reason: Option<String>,
    /// Published host ports.
    pub ports: Vec<PortMapping>,
    /// A running Linux container's address on the node bridge.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// A running Linux container's network namespace (Docker's `SandboxKey`).
    #[serde(default)]
    pub sandbox_key: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// `--rm`: removed once it stops.
    #[serde(default)]
    pub auto_remove: bool,
    /// Its labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The deployment that manages it, for replicas; `None` for `skiff run` containers.
    pub deployment: Option<String>,
    /// Bounds.
    pub limits: Limits,
    /// Environment variable names.
    pub env_keys: Vec<String>,
}

/// `POST /v1/apply` and `POST /v1/delete`: manifest files as the user gave them; the
/// node reads them (bounded) and applies all of them or nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFiles {
    /// The files, in order.
    pub files: Vec<ManifestFile>,
}

/// One manifest file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Its name, for errors (`-` for standard input).
    pub source: String,
    /// Its text (YAML or JSON).
    pub text: String,
}

/// What `apply` or `delete` did, object by object, as kubectl prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// `deployment.apps/web created`, in order.
    pub results: Vec<ObjectResult>,
    /// Fields skiff does not read, as `file: document N: path` lines.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One object's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectResult {
    /// `deployment.apps/web`, `service/web`.
    pub reference: String,
    /// `created`, `configured`, `unchanged`, `deleted`, `not found`.
    pub action: String,
}

/// A Deployment's revisions and recent events (`rollout history`, `describe`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutHistory {
    /// Oldest first; the last is current.
    pub revisions: Vec<RevisionInfo>,
    /// Oldest first.
    pub events: Vec<EventInfo>,
}

/// One revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// Its number.
    pub revision: i64,
    /// The pod-template hash.
    pub hash: String,
    /// The container's image.
    pub image: String,
    /// When it became current (RFC 3339).
    pub at: String,
}

/// Something that happened to a Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    /// RFC 3339.
    pub at: String,
    /// `Normal` or `Warning`.
    pub kind: String,
    /// CamelCase.
    pub reason: String,
    /// For people.
    pub message: String,
}
