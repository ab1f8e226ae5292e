//! The one launcher of containers, for both callers: Deployments' pods and `skiff run`
//! containers. It turns an image made ready ([`Prepared`]) and an [`AppSpec`] into a
//! routable [`Container`]: a Wasm instance pre or a static site in process, or a runc
//! process.
//!
//! A Linux container is a [`Container`] whose workload is an [`OciWorkload`]: the runc
//! process and the proxy to its HTTP port travel together, so whoever retires the
//! container (a rollout, a removal, a stop, node shutdown) finds the process to stop
//! on it. When the process ends by itself the caller is told (a pod is restarted by the
//! reconciler, a `skiff run` container by its restart policy).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_image::ImageSummary;
use skiff_runtime::oci::{Exit, OciHost, OciSpec, OciWorkload};
use skiff_runtime::{ContainerConfig, LogBook, Runtime, StaticSite, Workload};
use skiff_spec::{AppSpec, Limits};
use tracing::info;

use crate::clock::now_ms;
use crate::container::{Container, ContainerState};
use crate::error::AppError;
use crate::images::Prepared;
use crate::state::OciOptions;

/// How long a Linux container gets between SIGTERM and SIGKILL when its deployment
/// retires it (Docker's and Kubernetes' default is 10 s and 30 s).
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The error code of a container whose settings cannot be run: a user its image does
/// not have, root under `runAsNonRoot`, an option a Wasm container cannot honour (a
/// pod waits with the reason `CreateContainerConfigError`).
pub(crate) const CONFIG_ERROR: &str = "container_config";

/// Where a service's containers' exits (and its own later work, such as restarts) are
/// sent, and the one loop that handles them.
pub(crate) struct Inbox<T> {
    tx: tokio::sync::mpsc::UnboundedSender<T>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<T>>>,
}

impl<T> Inbox<T> {
    pub(crate) fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    /// Where to send.
    pub(crate) fn sender(&self) -> tokio::sync::mpsc::UnboundedSender<T> {
        self.tx.clone()
    }

    /// Hands every message to `handle` until `shutdown`. Run once: a second call returns
    /// at once.
    pub(crate) async fn run<F: Future<Output = ()>>(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
        mut handle: impl FnMut(T) -> F,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = rx.recv() => match message {
                    Some(message) => handle(message).await,
                    None => return,
                },
            }
        }
    }
}

/// One Linux container to start.
pub(crate) struct LinuxStart<'a> {
    /// 64 hex digits: runc's id (its first 32) and the bundle's directory.
    pub id: &'a str,
    /// The container's name: hostname and log label.
    pub name: &'a str,
    /// What runs.
    pub spec: &'a AppSpec,
    /// The image (working dir, user, exposed ports).
    pub summary: &'a ImageSummary,
    /// The image's extracted tree.
    pub root: &'a Path,
    /// Where its output goes.
    pub log: &'a Arc<LogBook>,
    /// Limits and network settings.
    pub oci: &'a OciOptions,
    /// The container port to send HTTP to, if the caller knows (a published port).
    pub port: Option<u16>,
    /// Take requests at once (held until the process listens); otherwise the caller
    /// makes it ready (a pod, once its port accepts or its probe passes).
    pub ready: bool,
}

/// The port a Linux container serves HTTP on: the one given, else the image's first
/// EXPOSEd port, else 80.
fn http_port(given: Option<u16>, summary: &ImageSummary) -> u16 {
    given
        .or_else(|| {
            summary
                .run
                .exposed_ports
                .keys()
                .find_map(|k| k.split('/').next()?.parse().ok())
        })
        .unwrap_or(80)
}

/// Drains a retired container (requests in flight get up to `drain`), then stops its
/// process if it is a Linux container (SIGTERM, SIGKILL after `stop`) and removes it.
/// Returns how the process exited.
pub(crate) async fn retire(container: &Container, drain: Duration, stop: Duration) -> Option<Exit> {
    container.drain(drain).await;
    let process = container.workload().oci_process()?;
    let exit = process.stop(stop).await;
    process.cleanup().await;
    Some(exit)
}

/// A Linux container's bridge address and network namespace, as inspect shows them.
pub(crate) fn network(container: &Container) -> (Option<String>, Option<String>) {
    let process = container.workload().oci_process();
    (
        process.and_then(|p| p.ip()).map(|ip| ip.to_string()),
        process
            .and_then(|p| p.netns())
            .map(|p| p.display().to_string()),
    )
}

/// Starts containers: Wasm and static ones in process, Linux ones with runc.
pub(crate) struct Launcher {
    runtime: Runtime,
    /// runc, if this node can run Linux containers; else why not.
    oci: Result<OciHost, String>,
    /// Linux containers' bundles, by container id.
    bundles: PathBuf,
    /// How long a request body forwarded to a Linux container may stall.
    body_timeout: Duration,
}

impl Launcher {
    /// A launcher for the node whose data dir is `data` (runc is looked for there and
    /// on the PATH; without it, only Wasm and static containers start).
    pub(crate) fn new(runtime: Runtime, data: &Path, body_timeout: Duration) -> Self {
        let oci = OciHost::probe(&data.join("runc")).map_err(|e| e.to_string());
        if let Err(why) = &oci {
            info!(reason = %why, "Linux containers are not available on this node; Wasm is");
        }
        Self {
            runtime,
            oci,
            bundles: data.join("containers"),
            body_timeout,
        }
    }

    /// runc, when this node has it.
    pub(crate) fn oci(&self) -> Option<&OciHost> {
        self.oci.as_ref().ok()
    }

    /// Where Linux containers' bundles live.
    pub(crate) fn bundles(&self) -> &Path {
        &self.bundles
    }

    /// Refuses an instance whose memory limit the node's budget could never hold.
    pub(crate) fn admit(&self, limits: &Limits) -> Result<(), AppError> {
        self.runtime.admit(limits).map_err(AppError::over_budget)
    }

    /// A Wasm or static container named `name` running `spec`, in state `Starting`.
    pub(crate) fn in_process(
        &self,
        name: String,
        spec: &AppSpec,
        prepared: &Prepared,
        log: &Arc<LogBook>,
    ) -> Result<Container, AppError> {
        let workload = match prepared {
            Prepared::Wasm(compiled) => {
                let config = ContainerConfig {
                    name: name.clone().into(),
                    env: spec
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    args: spec.args.clone(),
                    limits: spec.limits.clone(),
                    allowed_hosts: spec.allowed_hosts.clone().into(),
                    log: log.clone(),
                };
                self.runtime
                    .prepare(compiled, config)
                    .map_err(|e| AppError::invalid("unsupported_imports", e.to_string()))?
            }
            Prepared::Oci { .. } => {
                return Err(AppError::internal(
                    "a Linux image's containers are started with runc",
                ));
            }
            Prepared::Static {
                tree,
                site_root,
                tag,
            } => Workload::Static(
                StaticSite::open(tree, site_root, tag).map_err(AppError::internal)?,
            ),
        };
        Ok(Container::new(
            name,
            spec.name.clone(),
            workload,
            spec.limits.concurrency,
            now_ms(),
            spec.routes.clone(),
        ))
    }

    /// Starts a Linux container with runc and makes it a routable [`Container`], ready at
    /// once (requests that arrive before its process listens are held until it does).
    /// When the process ends, `exited(container id, how)` is called.
    pub(crate) async fn start_linux(
        &self,
        s: LinuxStart<'_>,
        exited: impl FnOnce(String, Exit) + Send + 'static,
    ) -> Result<Arc<Container>, AppError> {
        let host = self
            .oci
            .as_ref()
            .map_err(|why| AppError::invalid("oci_unavailable", why.clone()))?;
        if s.spec.args.is_empty() {
            return Err(AppError::invalid(
                "invalid_parameter",
                "the image has no ENTRYPOINT or CMD: give a command after the image",
            ));
        }
        let name: Arc<str> = s.name.into();
        let spec = OciSpec {
            id: s.id.to_string(),
            name: name.clone(),
            image_root: s.root.to_path_buf(),
            dir: self.bundles.join(&s.id[..32]),
            args: s.spec.args.clone(),
            env: s.spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: s
                .oci
                .workdir
                .clone()
                .unwrap_or_else(|| s.summary.run.working_dir.clone()),
            user: s
                .oci
                .user
                .clone()
                .unwrap_or_else(|| s.summary.run.user.clone()),
            security: s.oci.security.clone(),
            memory: s.oci.memory_bytes,
            cpus: s.oci.milli_cpus.map(|m| f64::from(m) / 1000.0),
            pids: s.oci.pids_limit,
            host_network: s.oci.host_network,
            log: s.log.clone(),
        };
        // The container's memory limit is held from the node's budget while its process
        // runs (an unlimited container, as Docker's default, is not counted).
        let reservation = s
            .oci
            .memory_bytes
            .map(|bytes| self.runtime.reserve_memory(bytes))
            .transpose()
            .map_err(AppError::over_budget)?;
        let mut process = host.start(spec).await.map_err(|e| match e {
            // What it was asked to run as cannot be run (a pod's CreateContainerConfigError).
            skiff_runtime::oci::OciError::Config(why) => AppError::invalid(CONFIG_ERROR, why),
            e => AppError::invalid("oci_failed", e.to_string()),
        })?;
        if let Err(e) = process.spawn(name.clone(), s.log.clone()) {
            process.cleanup().await;
            return Err(AppError::internal(e.to_string()));
        }
        let port = http_port(s.port, s.summary);
        let addr = match process.ip() {
            Some(ip) => std::net::SocketAddr::from((ip, port)),
            None => std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let process = Arc::new(process);
        let container = Container::new(
            s.name.to_string(),
            s.spec.name.clone(),
            Workload::Oci(OciWorkload::new(addr, process.clone(), self.body_timeout)),
            s.spec.limits.concurrency,
            now_ms(),
            s.spec.routes.clone(),
        );
        if s.ready {
            container
                .transition(ContainerState::Ready)
                .map_err(AppError::internal)?;
        }
        let instance = container.id.clone();
        tokio::spawn(async move {
            let exit = process.wait().await;
            drop(reservation);
            exited(instance, exit);
        });
        info!(container = %s.name, %addr, "linux container started");
        Ok(Arc::new(container))
    }
}
