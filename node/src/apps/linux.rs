//! Linux containers for both callers: `skiff run` containers and deployments' replicas.
//!
//! A Linux container is a [`Container`] whose workload is an [`OciWorkload`]: the runc
//! process and the proxy to its HTTP port travel together, so whoever retires the
//! container (a rollout, a removal, a stop, node shutdown) finds the process to stop
//! on it. A pod whose process exits by itself is restarted by the reconciler, a `skiff
//! run` container by its restart policy.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use skiff_image::ImageSummary;
use skiff_runtime::oci::{Exit, OciSpec, OciWorkload};
use skiff_runtime::{LogBook, Workload};
use skiff_spec::AppSpec;
use tracing::info;

use super::Apps;
use crate::clock::now_ms;
use crate::container::{Container, ContainerState};
use crate::error::AppError;
use crate::state::OciOptions;

/// How long a Linux container gets between SIGTERM and SIGKILL when its deployment
/// retires it (Docker's and Kubernetes' default is 10 s and 30 s).
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);

/// The error code of a container whose settings cannot be run: a user its image does
/// not have, root under `runAsNonRoot`, an option a Wasm container cannot honour (a
/// pod waits with the reason `CreateContainerConfigError`).
pub(crate) const CONFIG_ERROR: &str = "container_config";

/// What happens to Linux containers behind the API's back.
pub(crate) enum LinuxEvent {
    /// A container's process ended.
    Exited {
        /// The container (record id).
        id: String,
        /// Which start of it (the Container object's id).
        instance: String,
        /// How it ended.
        exit: Exit,
    },
    /// A restart the policy asked for, after its back-off.
    Restart {
        /// The container (record id).
        id: String,
    },
    /// A Deployment's pod's process ended.
    PodExited {
        /// The pod.
        pod: String,
        /// Which start of it (the Container object's id).
        instance: String,
        /// How it ended.
        exit: Exit,
    },
}

/// One Linux container to start.
pub(super) struct LinuxStart<'a> {
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
pub(super) async fn retire(container: &Container, drain: Duration, stop: Duration) -> Option<Exit> {
    container.drain(drain).await;
    let process = container.workload().oci_process()?;
    let exit = process.stop(stop).await;
    process.cleanup().await;
    Some(exit)
}

/// A Linux container's bridge address and network namespace, as inspect shows them.
pub(super) fn network(container: &Container) -> (Option<String>, Option<String>) {
    let process = container.workload().oci_process();
    (
        process.and_then(|p| p.ip()).map(|ip| ip.to_string()),
        process
            .and_then(|p| p.netns())
            .map(|p| p.display().to_string()),
    )
}

impl Apps {
    /// Starts a Linux container with runc and makes it a routable [`Container`], ready at
    /// once (requests that arrive before its process listens are held until it does).
    /// When the process ends, `exited(container id, how)` is sent to the event loop.
    pub(super) async fn start_linux(
        &self,
        s: LinuxStart<'_>,
        exited: impl FnOnce(String, Exit) -> LinuxEvent + Send + 'static,
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
            dir: self.data.join("containers").join(&s.id[..32]),
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
            Workload::Oci(OciWorkload::new(
                addr,
                process.clone(),
                self.ingress.limits.body_timeout,
            )),
            s.spec.limits.concurrency,
            now_ms(),
            s.spec.routes.clone(),
        );
        if s.ready {
            container
                .transition(ContainerState::Ready)
                .map_err(AppError::internal)?;
        }
        let (events, instance) = (self.exits.clone(), container.id.clone());
        tokio::spawn(async move {
            let exit = process.wait().await;
            drop(reservation);
            let _ = events.send(exited(instance, exit));
        });
        info!(container = %s.name, %addr, "linux container started");
        Ok(Arc::new(container))
    }
}
