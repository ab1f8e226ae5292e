//! `skiff`: the one binary. `skiff up` runs a node; every other command is a client of a
//! node's HTTP API (`SKIFF_API`, default `http://127.0.0.1:7700`).

mod client;
mod kube;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use skiff_spec::{
    DeployParams, PortMapping, RestartPolicy, RunParams, parse_bytes, parse_duration, parse_env,
};

use crate::client::Client;
use crate::up::{UpArgs, gateway, up};

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
        Command::Gateway(args) => gateway(*args).await,
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
