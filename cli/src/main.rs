//! `skiff`: the one binary. `skiff up` runs a node; every other command is a client of a
//! node's HTTP API (`SKIFF_API`, default `http://127.0.0.1:7700`).

mod client;
mod kube;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use skiff_spec::{
    DeployParams, PortMapping, RestartPolicy, RunParams, parse_bytes, parse_duration, parse_env,
};

use crate::client::Client;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Run WebAssembly apps like containers",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ClientOpts {
    /// The node's API: https://HOST:PORT, unix://PATH, or http://HOST:PORT (plain: the
    /// token crosses the network in clear). Default: the local node's unix socket
    /// (<data-dir>/api.sock), else https://127.0.0.1:7700.
    #[arg(long, env = "SKIFF_API", global = true)]
    api: Option<String>,
    /// API token (default: the token file in the node's data dir; none over the socket).
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The cluster CA to check an https API against (default: <data-dir>/tls/ca.crt).
    #[arg(long, env = "SKIFF_CA", global = true)]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node in the foreground: API, ingress, supervisor.
    Up(Box<UpArgs>),
    /// Run a node that holds no pods and only routes (the edge of a cluster): joins with
    /// --join and --join-token, serves every Service from the other nodes' pods.
    Gateway(Box<UpArgs>),
    /// Deploy (or redeploy) an app from a .wasm file or an image on the node.
    Deploy {
        /// A .wasm file (uploaded), or the name or id of an image on the node.
        source: String,
        /// App name (a DNS label); default: the file or image name.
        #[arg(long)]
        name: Option<String>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_parser = parse_env_arg)]
        env: Vec<(String, String)>,
        /// Memory limit per instance, e.g. 64MiB.
        #[arg(long, value_parser = parse_bytes)]
        memory: Option<u64>,
        /// Request timeout, e.g. 2s.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Replicas to run.
        #[arg(long)]
        replicas: Option<u32>,
        /// Concurrent requests per replica.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Host the app may call over HTTP (repeatable; `*` for any).
        #[arg(long = "allow-host")]
        allow_hosts: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Create or update Deployments and Services from manifests (YAML or JSON).
    Apply {
        /// A file, a directory of .yaml/.yml/.json files, or - (repeatable).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List pods, deployments, services (or `all`), as kubectl does.
    Get {
        /// KIND[,KIND...] [NAME...], or KIND/NAME...
        #[arg(required = true)]
        resources: Vec<String>,
        /// json, yaml, wide or name.
        #[arg(short = 'o', long = "output")]
        output: Option<kube::Output>,
        /// Label selector, e.g. app=web,tier!=db.
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        /// Keep printing objects as they change.
        #[arg(short = 'w', long = "watch")]
        watch: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show a deployment, service or pod in detail, with conditions and events.
    Describe {
        /// KIND NAME..., or KIND/NAME...
        #[arg(required = true)]
        resources: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete the objects of manifests, or objects by kind and name.
    Delete {
        /// Manifests naming what to delete (repeatable).
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        /// KIND NAME..., or KIND/NAME...
        resources: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a kubeconfig for this node (server URL and token), for kubectl:
    /// `KUBECONFIG=<(skiff kubeconfig) kubectl get nodes`.
    Kubeconfig {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The cluster: `skiff cluster join-token`.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Set a deployment's replica count.
    /// Mark a node unschedulable: it takes no new pods.
    Cordon {
        /// The node's name.
        node: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Mark a node schedulable again.
    Uncordon {
        /// The node's name.
        node: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Cordon a node and wait until its pods run elsewhere (each is ready on another
    /// node before it stops on this one).
    Drain {
        /// The node's name.
        node: String,
        /// Give up waiting after this long.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        client: ClientOpts,
    },
    Scale {
        /// deployment/NAME.
        target: String,
        /// The new count.
        #[arg(long)]
        replicas: i32,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Change a deployment's pod template.
    Set {
        #[command(subcommand)]
        what: SetCommand,
    },
    /// Follow, list and undo a deployment's rollouts.
    Rollout {
        #[command(subcommand)]
        what: RolloutCommand,
    },
    /// Build an image from skiff.toml or a Dockerfile and load it into the node.
    Build {
        /// Name and tag, e.g. my-web-app or my-web-app:v1.
        #[arg(short = 't', long = "tag")]
        tag: String,
        /// Build file (default: DIR/skiff.toml, else DIR/Dockerfile).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Build context.
        dir: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Push an image to an OCI registry.
    Push {
        /// Image name or id on the node.
        image: String,
        /// Where: HOST[:PORT]/REPOSITORY[:TAG].
        reference: String,
        /// Allow plain HTTP to a registry that is not on loopback.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Pull an image from an OCI registry into the node.
    Pull {
        /// HOST[:PORT]/REPOSITORY[:TAG|@DIGEST].
        reference: String,
        /// Allow plain HTTP to a registry that is not on loopback.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List images.
    Images {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Give an image another name.
    Tag {
        /// Existing name or id.
        source: String,
        /// New name[:tag].
        target: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove image names (and images nothing names or runs).
    Rmi {
        /// Remove even the last name of an image an app runs.
        #[arg(short = 'f', long)]
        force: bool,
        /// Names or ids.
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Write images to an OCI layout tarball.
    Save {
        /// Output file.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Names or ids.
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Load images from an OCI layout tarball.
    Load {
        /// Input file.
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List apps.
    #[command(alias = "ls")]
    Apps {
        /// Apps asked for per request (as kubectl's --chunk-size; 0: all at once).
        #[arg(long, default_value_t = 500)]
        chunk_size: usize,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show one app as JSON.
    Inspect {
        /// App name.
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Print a container's or an app's stdout and stderr, with timestamps.
    Logs {
        /// Container name or id, or app name.
        name: String,
        /// Keep printing new lines.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Lines from the end to show first ("all" for every kept line).
        #[arg(long, default_value = "100")]
        tail: String,
        /// Show timestamps (`docker logs -t`); skiff always shows them.
        #[arg(long = "timestamps", short = 't')]
        _timestamps: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Remove containers (or apps, by app name).
    Rm {
        /// Remove running containers too.
        #[arg(short = 'f', long)]
        force: bool,
        /// Container names or ids, or app names.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run a container from an image, like `docker run`.
    Run {
        /// Detach: print the id and return (otherwise print its output as it comes and
        /// exit with its exit code; Ctrl-C stops it).
        #[arg(short = 'd', long)]
        detach: bool,
        /// Remove the container once it stops.
        #[arg(long)]
        rm: bool,
        /// Replace the image's ENTRYPOINT (and its CMD, unless arguments follow the image);
        /// "" for none.
        #[arg(long)]
        entrypoint: Option<String>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l', value_parser = parse_env_arg)]
        labels: Vec<(String, String)>,
        /// Container name (a DNS label); generated when absent.
        #[arg(long)]
        name: Option<String>,
        /// Publish a host port: [IP:]HOST:CONTAINER (repeatable).
        #[arg(short = 'p', long = "publish")]
        publish: Vec<PortMapping>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_parser = parse_env_arg)]
        env: Vec<(String, String)>,
        /// Memory limit per instance, e.g. 64m.
        #[arg(long, short = 'm', value_parser = parse_bytes)]
        memory: Option<u64>,
        /// Request timeout, e.g. 2s.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Concurrent requests.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Restart policy: no, on-failure, always.
        #[arg(long, default_value = "no")]
        restart: RestartPolicy,
        /// CPUs a Linux container may use, e.g. 0.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// Most processes a Linux container may have.
        #[arg(long = "pids-limit")]
        pids_limit: Option<i64>,
        /// A Linux container's network: bridge (its own namespace) or host.
        #[arg(long, default_value = "bridge")]
        network: String,
        /// Who runs and what confines it.
        #[command(flatten)]
        security: Box<RunSecurity>,
        /// Image name or id.
        image: String,
        /// Arguments replacing the image's CMD (after its ENTRYPOINT arguments).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run a command in a running Linux container; exits with its exit code.
    Exec {
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_parser = parse_env_arg)]
        env: Vec<(String, String)>,
        /// Working directory inside the container.
        #[arg(long = "workdir", short = 'w')]
        workdir: Option<String>,
        /// Container name or id.
        container: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// What running containers use: CPU %, memory, network, processes, requests.
    Stats {
        /// Print one table and return (otherwise redraw every second).
        #[arg(long)]
        no_stream: bool,
        /// Container names or ids (default: every running container).
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Wait until containers stop; print each one's exit code.
    Wait {
        /// Container names or ids.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List containers.
    Ps {
        /// Show stopped containers too.
        #[arg(short = 'a', long)]
        all: bool,
        /// Only ids.
        #[arg(short = 'q', long)]
        quiet: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stop containers (SIGTERM-like: requests in flight finish, up to -t seconds).
    Stop {
        /// Seconds to wait for requests in flight.
        #[arg(short = 't', long = "time", default_value = "10")]
        time: u64,
        /// Container names or ids.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Start stopped containers.
    Start {
        /// Container names or ids.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stop, then start containers.
    Restart {
        /// Seconds to wait for requests in flight.
        #[arg(short = 't', long = "time", default_value = "10")]
        time: u64,
        /// Container names or ids.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print the command that joins another node to this cluster.
    JoinToken {
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum SetCommand {
    /// Set containers' images: `set image deployment/NAME CONTAINER=IMAGE...`.
    Image {
        /// deployment/NAME.
        target: String,
        /// CONTAINER=IMAGE (repeatable).
        #[arg(required = true)]
        images: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Wait for a rollout to finish; fail if it cannot.
    Status {
        /// deployment/NAME.
        target: String,
        /// Give up after this long (e.g. 5m); default: wait for the deployment's verdict.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List a deployment's revisions.
    History {
        /// deployment/NAME.
        target: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Go back to the previous revision, or to --to-revision.
    Undo {
        /// deployment/NAME.
        target: String,
        /// The revision (0: the previous one).
        #[arg(long = "to-revision")]
        to_revision: Option<i64>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// `skiff run`'s flags for who runs and what confines a Linux container.
#[derive(Args)]
struct RunSecurity {
    /// Run as user[:group] (names from the image's /etc/passwd and /etc/group).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Add a Linux capability, e.g. NET_RAW, or ALL (repeatable).
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Drop a Linux capability, or ALL (repeatable).
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// Add a supplementary group, by id or name (repeatable).
    #[arg(long = "group-add")]
    group_add: Vec<String>,
    /// A security option: no-new-privileges (which every container has).
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    /// Mount a tmpfs: PATH[:OPTIONS], e.g. /tmp:size=64m (repeatable).
    #[arg(long)]
    tmpfs: Vec<String>,
}

impl RunSecurity {
    /// The user, working directory and confinement asked for, checked as the node checks
    /// them.
    fn check(&self) -> anyhow::Result<(Option<String>, Option<String>, skiff_spec::Security)> {
        let mut security = skiff_spec::Security {
            read_only: self.read_only,
            ..Default::default()
        };
        for c in &self.cap_add {
            security
                .add_capability(c)
                .map_err(|e| anyhow::anyhow!("--cap-add: {e}"))?;
        }
        for c in &self.cap_drop {
            security
                .drop_capability(c)
                .map_err(|e| anyhow::anyhow!("--cap-drop: {e}"))?;
        }
        for g in &self.group_add {
            security
                .add_group(g)
                .map_err(|e| anyhow::anyhow!("--group-add: {e}"))?;
        }
        for o in &self.security_opt {
            skiff_spec::security::check_security_opt(o).map_err(anyhow::Error::msg)?;
        }
        for t in &self.tmpfs {
            let t = skiff_spec::Tmpfs::parse(t).map_err(|e| anyhow::anyhow!("--tmpfs: {e}"))?;
            security
                .add_tmpfs(t)
                .map_err(|e| anyhow::anyhow!("--tmpfs: {e}"))?;
        }
        // `-u ""`: the image's user, as Docker's.
        let user = self.user.clone().filter(|u| !u.is_empty());
        if let Some(u) = &user {
            skiff_spec::security::check_user(u).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
        }
        if let Some(w) = &self.workdir {
            skiff_spec::security::check_workdir(w)
                .map_err(|e| anyhow::anyhow!("--workdir: {e}"))?;
        }
        Ok((user, self.workdir.clone(), security))
    }
}

#[derive(Args)]
struct UpArgs {
    /// Where the node keeps its state.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// API listen address.
    #[arg(long, env = "SKIFF_API_ADDR", default_value = "127.0.0.1:7700")]
    api_addr: SocketAddr,
    /// Ingress listen address.
    #[arg(long, env = "SKIFF_INGRESS_ADDR", default_value = "127.0.0.1:7780")]
    ingress_addr: SocketAddr,
    /// Apps are served at http://<app>.<domain>:<ingress port>/.
    #[arg(long, env = "SKIFF_DOMAIN", default_value = "localhost")]
    domain: String,
    /// Largest accepted upload, e.g. 64MiB.
    #[arg(long, env = "SKIFF_UPLOAD_LIMIT", default_value = "64MiB", value_parser = parse_bytes)]
    upload_limit: u64,
    /// Do not try the pooling instance allocator.
    #[arg(long, env = "SKIFF_NO_POOLING")]
    no_pooling: bool,
    /// A request head must arrive within this of its first byte (every listener).
    #[arg(long, env = "SKIFF_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// A keep-alive connection with no request in flight closes after this.
    #[arg(long, env = "SKIFF_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A request body that sends nothing for this long fails (API uploads, Linux apps).
    #[arg(long, env = "SKIFF_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// A client that reads nothing of a response for this long is dropped.
    #[arg(long, env = "SKIFF_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// Open connections per listener; more are closed at once.
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Open connections per client address on each listener; more are closed at once.
    #[arg(long, env = "SKIFF_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 128)]
    max_connections_per_client: usize,
    /// Most bytes of files one image may extract to.
    #[arg(long, env = "SKIFF_EXTRACT_MAX_BYTES", default_value = "4GiB", value_parser = parse_bytes)]
    extract_max_bytes: u64,
    /// Most entries (files, directories, links) one image may extract to.
    #[arg(long, env = "SKIFF_EXTRACT_MAX_ENTRIES", default_value_t = 1_000_000)]
    extract_max_entries: u64,
    /// Deepest path an image may hold, in directories.
    #[arg(long, env = "SKIFF_EXTRACT_MAX_DEPTH", default_value_t = 128)]
    extract_max_depth: usize,
    /// Free disk an extraction or an image upload must leave on the data dir's disk.
    #[arg(long, env = "SKIFF_MIN_FREE_DISK", default_value = "512MiB", value_parser = parse_bytes)]
    min_free_disk: u64,
    /// Free disk a change to the node's state (a deploy, an apply, a tag) must leave on
    /// the data dir's disk; below it such writes are refused (507). Keep it below
    /// --min-free-disk, so state can still change once image writes are refused.
    #[arg(long, env = "SKIFF_MIN_FREE_DISK_STATE", default_value = "64MiB", value_parser = parse_bytes)]
    min_free_disk_state: u64,
    /// Guest memory the node commits at once: every Wasm instance holds its app's memory
    /// limit while it runs, every Linux container its --memory. Default: half of RAM.
    #[arg(long, env = "SKIFF_MEMORY_BUDGET", value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Longest a Wasm compilation may take; the compiler process is killed then.
    #[arg(long, env = "SKIFF_COMPILE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    compile_timeout: Duration,
    /// Heap a Wasm compilation may use.
    #[arg(long, env = "SKIFF_COMPILE_MEMORY", default_value = "2GiB", value_parser = parse_bytes)]
    compile_memory: u64,
    /// Gossip listen address (UDP).
    #[arg(long, env = "SKIFF_GOSSIP_ADDR", default_value = "127.0.0.1:7701")]
    gossip_addr: SocketAddr,
    /// Move the API, ingress and gossip to HOST, on their default ports.
    #[arg(long, env = "SKIFF_LISTEN")]
    listen: Option<std::net::IpAddr>,
    /// The host other nodes reach this one at, when it differs (NAT).
    #[arg(long, env = "SKIFF_ADVERTISE")]
    advertise: Option<std::net::IpAddr>,
    /// A member's API address: join its cluster (first start only).
    #[arg(long, env = "SKIFF_JOIN")]
    join: Option<String>,
    /// The cluster's join token (the first node's <data-dir>/join-token).
    #[arg(long, env = "SKIFF_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// This node's name (default: the host name and a piece of the node id).
    #[arg(long, env = "SKIFF_NODE_NAME")]
    node_name: Option<String>,
    /// A node label KEY=VALUE (repeatable), for nodeSelector and spreading.
    #[arg(long = "label", value_parser = parse_env_arg)]
    labels: Vec<(String, String)>,
    /// Time between gossip rounds.
    #[arg(long, env = "SKIFF_GOSSIP_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    gossip_interval: Duration,
    /// Suspicion (phi) above which a silent node counts as dead; raise it on slow machines.
    #[arg(long, env = "SKIFF_PHI_THRESHOLD", default_value_t = 8.0)]
    phi_threshold: f64,
    /// How long a Raft voter may be dead before a live node takes its vote.
    #[arg(long, env = "SKIFF_VOTER_GRACE", default_value = "30s", value_parser = parse_duration)]
    voter_grace: Duration,
    /// Memory this node offers pods (placement weighs and bounds by it); default: the
    /// machine's.
    #[arg(long, env = "SKIFF_CAPACITY_MEMORY", value_parser = parse_bytes)]
    capacity_memory: Option<u64>,
}

fn parse_env_arg(s: &str) -> Result<(String, String), String> {
    parse_env(s).map_err(|e| e.to_string())
}

/// `$SKIFF_DATA_DIR`, else `$XDG_DATA_HOME/skiff`, else `~/.local/share/skiff`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SKIFF_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("skiff");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/skiff")
}

/// The hidden first argument that makes this binary a compile worker (see
/// `skiff_node::compile_worker`): the node compiles untrusted Wasm in a child process
/// it can kill.
const COMPILE_WORKER: &str = "__compile-worker";

fn main() {
    // args_os: any other command line may hold paths that are not UTF-8.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == COMPILE_WORKER)
    {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        std::process::exit(skiff_node::compile_worker(&args));
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up(*args, false).await,
        Command::Gateway(args) => {
            if args.join.is_none()
                && !args
                    .data_dir
                    .clone()
                    .unwrap_or_else(default_data_dir)
                    .join("cluster.json")
                    .exists()
            {
                anyhow::bail!(
                    "a gateway routes for a cluster: give --join <member API address> and --join-token"
                );
            }
            up(*args, true).await
        }
        Command::Deploy {
            source,
            name,
            env,
            memory,
            timeout,
            replicas,
            concurrency,
            allow_hosts,
            client,
        } => {
            let file = PathBuf::from(&source);
            let is_file = file.exists() || source.ends_with(".wasm");
            let name = match name {
                Some(n) => n,
                None if is_file => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| s.replace('_', "-").to_ascii_lowercase())
                    .context("cannot derive an app name from the file name; pass --name")?,
                None => source
                    .rsplit('/')
                    .next()
                    .unwrap_or(&source)
                    .split([':', '@'])
                    .next()
                    .unwrap_or(&source)
                    .to_string(),
            };
            let params = DeployParams {
                env,
                memory_bytes: memory,
                timeout,
                replicas,
                concurrency,
                allowed_hosts: allow_hosts,
                image: (!is_file).then(|| source.clone()),
            };
            Client::new(&client)?
                .deploy(is_file.then_some(file.as_path()), &name, &params)
                .await
        }
        Command::Build {
            tag,
            file,
            dir,
            client,
        } => {
            Client::new(&client)?
                .build(&tag, file.as_deref(), &dir)
                .await
        }
        Command::Push {
            image,
            reference,
            insecure,
            client,
        } => {
            Client::new(&client)?
                .push(&image, &reference, insecure)
                .await
        }
        Command::Pull {
            reference,
            insecure,
            client,
        } => Client::new(&client)?.pull(&reference, insecure).await,
        Command::Images { client } => Client::new(&client)?.images().await,
        Command::Tag {
            source,
            target,
            client,
        } => Client::new(&client)?.tag(&source, &target).await,
        Command::Rmi {
            force,
            images,
            client,
        } => {
            let c = Client::new(&client)?;
            for image in images {
                c.rmi(&image, force).await?;
                println!("Untagged: {image}");
            }
            Ok(())
        }
        Command::Save {
            output,
            images,
            client,
        } => Client::new(&client)?.save(&output, &images).await,
        Command::Load { input, client } => Client::new(&client)?.load(&input).await,
        Command::Apps { chunk_size, client } => Client::new(&client)?.apps(chunk_size).await,
        Command::Inspect { name, client } => Client::new(&client)?.inspect(&name).await,
        Command::Logs {
            name,
            follow,
            tail,
            client,
            ..
        } => Client::new(&client)?.logs(&name, &tail, follow).await,
        Command::Rm {
            force,
            names,
            client,
        } => each(&Client::new(&client)?, &names, |c, n| c.rm(n, force)).await,
        Command::Run {
            detach,
            rm,
            entrypoint,
            labels,
            name,
            publish,
            env,
            memory,
            timeout,
            concurrency,
            restart,
            cpus,
            pids_limit,
            network,
            security,
            image,
            args,
            client,
        } => {
            let params = DeployParams {
                env,
                memory_bytes: memory,
                timeout,
                concurrency,
                ..Default::default()
            };
            let host_network = match network.as_str() {
                "host" => true,
                "bridge" | "default" => false,
                other => anyhow::bail!("invalid --network {other:?}: use bridge or host"),
            };
            let (user, workdir, security) = security.check()?;
            let run = RunParams {
                image,
                name,
                params,
                ports: publish,
                restart,
                args: (!args.is_empty()).then_some(args),
                milli_cpus: cpus.map(RunParams::milli_cpus).transpose()?,
                pids_limit,
                host_network,
                auto_remove: rm,
                entrypoint: entrypoint.map(|e| if e.is_empty() { vec![] } else { vec![e] }),
                labels: labels.into_iter().collect(),
                user,
                workdir,
                security,
            };
            let c = Client::new(&client)?;
            if detach {
                println!("{}", c.run(&run).await?);
                Ok(())
            } else {
                let code = c.run_attached(&run).await?;
                std::process::exit(code)
            }
        }
        Command::Exec {
            env,
            workdir,
            container,
            cmd,
            client,
        } => {
            let code = Client::new(&client)?
                .exec(&container, &cmd, &env, workdir.as_deref())
                .await?;
            std::process::exit(code)
        }
        Command::Kubeconfig { client } => {
            print!("{}", Client::new(&client)?.kubeconfig().await?);
            Ok(())
        }
        Command::Stats {
            no_stream,
            names,
            client,
        } => Client::new(&client)?.stats(&names, !no_stream).await,
        Command::Wait { names, client } => {
            let c = Client::new(&client)?;
            for name in &names {
                println!("{}", c.wait(name).await?);
            }
            Ok(())
        }
        Command::Ps { all, quiet, client } => Client::new(&client)?.ps(all, quiet).await,
        Command::Stop {
            time,
            names,
            client,
        } => {
            each(&Client::new(&client)?, &names, |c, n| {
                c.container_action(n, "stop", Some(time))
            })
            .await
        }
        Command::Start { names, client } => {
            each(&Client::new(&client)?, &names, |c, n| {
                c.container_action(n, "start", None)
            })
            .await
        }
        Command::Restart {
            time,
            names,
            client,
        } => {
            each(&Client::new(&client)?, &names, |c, n| {
                c.container_action(n, "restart", Some(time))
            })
            .await
        }
        Command::Apply { files, client } => kube::apply(&Client::new(&client)?, &files).await,
        Command::Cluster {
            what: ClusterCommand::JoinToken { client },
        } => {
            let c = Client::new(&client)?;
            let v: serde_json::Value = c.get_json("/v1/cluster/join-token").await?;
            let token = v["join_token"].as_str().unwrap_or_default();
            println!("{token}");
            let api = v["api"].as_str().unwrap_or("<this node's API address>");
            // In the environment, not on the command line: any local user can read a
            // process's arguments, not its environment.
            eprintln!("join another node: SKIFF_JOIN_TOKEN={token} skiff up --join {api}");
            Ok(())
        }
        Command::Get {
            resources,
            output,
            selector,
            watch,
            client,
        } => {
            kube::get(
                &Client::new(&client)?,
                &resources,
                output,
                selector.as_deref(),
                watch,
            )
            .await
        }
        Command::Describe { resources, client } => {
            kube::describe(&Client::new(&client)?, &resources).await
        }
        Command::Delete {
            files,
            resources,
            client,
        } => kube::delete(&Client::new(&client)?, &files, &resources).await,
        Command::Scale {
            target,
            replicas,
            client,
        } => kube::scale(&Client::new(&client)?, &target, replicas).await,
        Command::Cordon { node, client } => kube::cordon(&Client::new(&client)?, &node, true).await,
        Command::Uncordon { node, client } => {
            kube::cordon(&Client::new(&client)?, &node, false).await
        }
        Command::Drain {
            node,
            timeout,
            client,
        } => kube::drain(&Client::new(&client)?, &node, timeout).await,
        Command::Set {
            what:
                SetCommand::Image {
                    target,
                    images,
                    client,
                },
        } => kube::set_image(&Client::new(&client)?, &target, &images).await,
        Command::Rollout { what } => match what {
            RolloutCommand::Status {
                target,
                timeout,
                client,
            } => kube::status(&Client::new(&client)?, &target, timeout).await,
            RolloutCommand::History { target, client } => {
                kube::history(&Client::new(&client)?, &target).await
            }
            RolloutCommand::Undo {
                target,
                to_revision,
                client,
            } => kube::undo(&Client::new(&client)?, &target, to_revision).await,
        },
    }
}

/// Applies `action` to each name in turn, printing each name once done (as Docker does);
/// stops at the first failure.
async fn each<'a, F, Fut>(client: &'a Client, names: &'a [String], action: F) -> anyhow::Result<()>
where
    F: Fn(&'a Client, &'a str) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for name in names {
        action(client, name).await?;
        println!("{name}");
    }
    Ok(())
}

async fn up(args: UpArgs, gateway: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft narrates every vote and append at info: its warnings are enough.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let mut config = skiff_node::NodeConfig::new(data_dir);
    config.api_addr = args.api_addr;
    config.ingress_addr = args.ingress_addr;
    config.cluster.gossip_addr = args.gossip_addr;
    if let Some(host) = args.listen {
        config.api_addr = SocketAddr::new(host, 7700);
        config.ingress_addr = SocketAddr::new(host, 7780);
        config.cluster.gossip_addr = SocketAddr::new(host, 7701);
    }
    config.cluster.advertise = args.advertise;
    config.cluster.join = args.join;
    config.cluster.join_token = args.join_token;
    config.cluster.node_name = args.node_name;
    config.cluster.labels = args.labels.into_iter().collect();
    config.cluster.gossip_interval = args.gossip_interval;
    config.cluster.phi_threshold = args.phi_threshold;
    config.cluster.voter_grace = args.voter_grace;
    config.cluster.capacity_memory = args.capacity_memory;
    config.cluster.gateway = gateway;
    config.domain = args.domain;
    config.upload_cap = args.upload_limit;
    config.pooling = !args.no_pooling;
    config.listener = skiff_node::ListenerLimits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        body_timeout: args.body_timeout,
        write_timeout: args.write_timeout,
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
    };
    if let Some(budget) = args.memory_budget {
        config.memory_budget = budget;
    }
    config.compile_timeout = args.compile_timeout;
    config.compiler = Some(skiff_node::CompilerCommand {
        program: std::env::current_exe().context("failed to find this program's path")?,
        args: vec![COMPILE_WORKER.to_string()],
        memory_bytes: args.compile_memory,
    });
    config.extract = skiff_node::ImageExtractLimits {
        max_bytes: args.extract_max_bytes,
        max_entries: args.extract_max_entries,
        max_depth: args.extract_max_depth,
        min_free_bytes: args.min_free_disk,
    };
    config.state_reserve = args.min_free_disk_state;
    let node = skiff_node::start(config.clone()).await?;
    // Listened for before the addresses are printed: whoever reads them may stop the
    // node at once, and a signal without a handler would end it without a drain.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
    let verb = if node.token_created {
        "created"
    } else {
        "using"
    };
    println!("skiff is up");
    let token = if node.token_path.exists() {
        format!("token {verb} at {}", node.token_path.display())
    } else {
        "the admin token is the first node's: this node holds only its hash".to_string()
    };
    println!(
        "  API:     http://{}  (also https, CA at {}; {token})",
        node.api_addr,
        config.data_dir.join("tls/ca.crt").display(),
    );
    if let Some(socket) = &node.api_socket {
        println!(
            "  cli:     SKIFF_DATA_DIR={} skiff ...  (over {}, no token sent)",
            config.data_dir.display(),
            socket.display()
        );
    }
    println!(
        "  ingress: http://<app>.{}:{}/",
        config.domain,
        node.ingress_addr.port()
    );
    println!(
        "  join:    SKIFF_JOIN_TOKEN={} skiff up --join {} ...  (gossip on {}/UDP)",
        node.join_token, node.api_addr, node.gossip_addr
    );
    if let Some(socket) = &node.docker_socket {
        println!("  docker:  export DOCKER_HOST=unix://{}", socket.display());
    }
    println!(
        "  kubectl: skiff kubeconfig > skiff.kubeconfig; KUBECONFIG=skiff.kubeconfig kubectl get nodes"
    );
    match &node.api_socket {
        Some(socket) => println!(
            "  deploy:  curl --unix-socket {} -T app.wasm http://localhost/v1/apps/hello",
            socket.display()
        ),
        None => println!(
            "  deploy:  curl -T app.wasm -H \"Authorization: Bearer $(cat {})\" http://{}/v1/apps/hello",
            node.token_path.display(),
            node.api_addr
        ),
    }
    let shutdown = node.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: draining in-flight requests");
        shutdown.cancel();
    });
    // Raft stopping on its own (a storage error) ends the node with one line saying
    // why and a failing exit status, for its supervisor to restart it.
    node.wait().await
}
