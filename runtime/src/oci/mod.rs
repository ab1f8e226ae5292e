//! Linux containers, run by runc: the only place that touches runc and OCI runtime JSON.
//!
//! Each container gets a bundle under its own directory: an overlay of a writable upper
//! layer on the image's read-only tree (a copy where overlayfs is refused), a
//! `config.json` built with the `oci-spec` crate (pid, mount, ipc, uts, cgroup and
//! network namespaces; memory/cpu/pids limits; Docker's default capabilities, seccomp
//! profile and open-files limit; masked and read-only paths; `no_new_privileges`; the
//! image's user resolved in its own /etc/passwd; /etc/hosts, hostname and resolv.conf
//! written for it), and a network namespace of its own, wired to the node bridge
//! `skiff0` (10.213.0.0/16, outbound NAT) by a veth pair.
//!
//! The namespaces are made ahead of time by a small pool (`net.rs`), so a start costs an
//! overlay mount, a `config.json` and a `runc run`; `skiff run` answers once runc is
//! spawned, and a stop waits until runc has made the container before signalling it.
//!
//! `runc run --keep` stays in the foreground as our child, so its exit status is the
//! container's (128+signal when killed) and its stdout/stderr are the container's; the
//! stopped container (and its cgroup, read for OOM kills) stays until `cleanup`.

mod bundle;
mod exec;
mod net;
mod process;
mod proxy;
mod user;

use bundle::*;
pub use exec::{ExecOutput, ExecSpec};
pub use process::{Exit, OciProcess};

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use net::{Net, NetPool};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
    get_default_namespaces,
};
pub use proxy::OciWorkload;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{LogBook, LogStream};

/// A container's open-files limit (soft, hard), as Docker's on a systemd host (dockerd
/// passes on systemd's default): soft 1024 for programs that still use select(2), hard
/// 524288 for those that raise it; the hard limit no higher than the node's own, which
/// is all the node may hand out.
static NOFILE: std::sync::LazyLock<(u64, u64)> = std::sync::LazyLock::new(|| {
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) } != 0 {
        own.rlim_max = libc::RLIM_INFINITY;
    }
    let hard = own.rlim_max.min(524_288);
    (hard.min(1024), hard)
});

/// Why a Linux container could not be run or managed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// This node cannot run Linux containers at all.
    #[error("{0}")]
    Unavailable(String),
    /// A step of setting one up failed.
    #[error("failed to {step}: {message}")]
    Setup {
        /// What was being done.
        step: String,
        /// Why it failed.
        message: String,
    },
}

pub(super) fn setup(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let step = step.into();
    move |e| OciError::Setup {
        step,
        message: e.to_string(),
    }
}

/// Everything a container needs to start.
#[derive(Clone, Debug)]
pub struct OciSpec {
    /// 64-hex container id (runc's id is its first 32 digits).
    pub id: String,
    /// Container name: hostname and log label.
    pub name: Arc<str>,
    /// The image's extracted, read-only tree.
    pub image_root: PathBuf,
    /// The container's own directory (bundle, upper layer).
    pub dir: PathBuf,
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The image's `User`: `name`, `uid`, `name:group` or `uid:gid`, resolved in the
    /// image's /etc/passwd and /etc/group.
    pub user: String,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPUs (e.g. 0.5).
    pub cpus: Option<f64>,
    /// Max processes.
    pub pids: Option<i64>,
    /// Share the node's network instead of a namespace of its own.
    pub host_network: bool,
    /// Where stdout and stderr go.
    pub log: Arc<LogBook>,
}

/// The node's runc setup.
#[derive(Debug)]
pub struct OciHost {
    runc: PathBuf,
    state: PathBuf,
    /// Network namespaces made ahead of time.
    nets: Arc<NetPool>,
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

pub(super) async fn run(cmd: &str, args: &[&str]) -> Result<String, OciError> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(setup(format!("run {cmd}")))?;
    if !out.status.success() {
        return Err(OciError::Setup {
            step: format!("{cmd} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl OciHost {
    /// Removes what a container of a crashed node may have left: its runc container
    /// (killed), mount and directory (`id`: its id, or the first 32 digits of it). Its
    /// network namespace went with the dead node's lease when this host was probed.
    pub async fn clean_leftovers(&self, id: &str, dir: &Path) {
        self.process(id, dir).cleanup().await;
    }

    /// Container `id` (in `dir`) as far as the disk knows it: not started, no network.
    fn process(&self, id: &str, dir: &Path) -> OciProcess {
        OciProcess {
            runc: self.runc.clone(),
            state: self.state.clone(),
            runc_id: id[..32].to_string(),
            dir: dir.to_path_buf(),
            net: std::sync::Mutex::new(None),
            exit: None,
            mounted: std::sync::atomic::AtomicBool::new(is_mounted(&dir.join("rootfs"))),
        }
    }

    /// Removes the namespaces made ahead of time (node shutdown).
    pub fn shutdown(&self) {
        self.nets.drain();
    }

    /// Whether this node can run Linux containers: root, runc, iproute2, iptables.
    pub fn probe(state: &Path) -> Result<Self, OciError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(OciError::Unavailable(
                "running Linux containers needs a node started as root".into(),
            ));
        }
        let runc = which("runc").ok_or_else(|| {
            OciError::Unavailable(
                "running Linux containers needs runc, which is not installed".into(),
            )
        })?;
        for tool in ["ip", "iptables"] {
            if which(tool).is_none() {
                return Err(OciError::Unavailable(format!(
                    "running Linux containers needs {tool}, which is not installed"
                )));
            }
        }
        std::fs::create_dir_all(state).map_err(|e| {
            OciError::Unavailable(format!("cannot create {}: {e}", state.display()))
        })?;
        NetPool::sweep();
        Ok(Self {
            runc,
            state: state.to_path_buf(),
            nets: Arc::default(),
        })
    }

    /// Sets up and starts a container. Everything made on the way is undone if a later
    /// step fails.
    pub async fn start(&self, spec: OciSpec) -> Result<OciProcess, OciError> {
        // Whatever a crashed node left under this id (a runc container still running, a
        // mount) goes first.
        let mut process = self.process(&spec.id, &spec.dir);
        process.cleanup().await;
        if !spec.host_network {
            let net = self.nets.take().await?;
            *process.net.get_mut().expect("net lock") = Some(net);
        }
        match self.prepare(&spec, &mut process).await {
            Ok(()) => Ok(process),
            Err(e) => {
                process.cleanup().await;
                Err(e)
            }
        }
    }

    async fn prepare(&self, spec: &OciSpec, p: &mut OciProcess) -> Result<(), OciError> {
        let rootfs = spec.dir.join("rootfs");
        let upper = spec.dir.join("upper");
        let work = spec.dir.join("work");
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(setup(format!("create {}", d.display())))?;
        }
        match mount_overlay(&spec.image_root, &upper, &work, &rootfs) {
            Ok(()) => p.mounted.store(true, std::sync::atomic::Ordering::Relaxed),
            Err(e) => {
                // Kernels without overlayfs (or nested in one): a private copy instead.
                debug!(error = %e, "overlayfs refused; copying the image tree");
                run(
                    "cp",
                    &[
                        "-a",
                        &format!("{}/.", spec.image_root.display()),
                        rootfs.to_str().unwrap_or_default(),
                    ],
                )
                .await?;
            }
        }
        self.write_config(spec, p)?;
        Ok(())
    }

    fn write_config(&self, spec: &OciSpec, p: &OciProcess) -> Result<(), OciError> {
        let bad = |e: oci_spec::OciSpecError| OciError::Setup {
            step: "build the runtime spec".into(),
            message: e.to_string(),
        };
        let ids =
            user::resolve(&spec.image_root, &spec.user).map_err(|message| OciError::Setup {
                step: format!("run as user {:?}", spec.user),
                message,
            })?;
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(ids.uid)
                    .gid(ids.gid)
                    .additional_gids(ids.additional)
                    .build()
                    .map_err(bad)?,
            )
            .capabilities(docker_capabilities(bad)?)
            .args(spec.args.clone())
            .env(env)
            .cwd(if spec.cwd.is_empty() {
                "/".to_string()
            } else {
                spec.cwd.clone()
            })
            .no_new_privileges(true)
            .rlimits(vec![
                oci_spec::runtime::PosixRlimitBuilder::default()
                    .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
                    .soft(NOFILE.0)
                    .hard(NOFILE.1)
                    .build()
                    .map_err(bad)?,
            ])
            .build()
            .map_err(bad)?;
        let mut namespaces = get_default_namespaces();
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
        if let Some(net) = &*p.net.lock().expect("net lock") {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(net.path())
                    .build()
                    .map_err(bad)?,
            );
        }
        let mut resources = LinuxResourcesBuilder::default();
        if let Some(m) = spec.memory {
            // No swap beyond the limit, so the limit is the limit.
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(m as i64)
                    .swap(m as i64)
                    .build()
                    .map_err(bad)?,
            );
        }
        if let Some(c) = spec.cpus {
            let period = 100_000u64;
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .period(period)
                    .quota((c * period as f64) as i64)
                    .build()
                    .map_err(bad)?,
            );
        }
        if let Some(n) = spec.pids {
            resources = resources.pids(LinuxPidsBuilder::default().limit(n).build().map_err(bad)?);
        }
        let defaults = oci_spec::runtime::Linux::default();
        let linux = LinuxBuilder::default()
            .seccomp(seccomp_profile(&bad)?)
            .namespaces(namespaces)
            .resources(resources.build().map_err(bad)?)
            .cgroups_path(PathBuf::from(format!("/skiff/{}", p.runc_id)))
            .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
            .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
            .build()
            .map_err(bad)?;
        let mut config = Spec::default();
        config.set_process(Some(process));
        config.set_root(Some(
            RootBuilder::default()
                .path(spec.dir.join("rootfs"))
                .readonly(false)
                .build()
                .map_err(bad)?,
        ));
        config.set_hostname(Some(spec.name.to_string()));
        config.set_linux(Some(linux));
        let mut mounts = config.mounts().clone().unwrap_or_default();
        for (file, text) in etc_files(&spec.name, p.ip()) {
            let source = spec.dir.join(file);
            std::fs::write(&source, text).map_err(setup(format!("write {}", source.display())))?;
            mounts.push(
                oci_spec::runtime::MountBuilder::default()
                    .destination(PathBuf::from("/etc").join(file))
                    .typ("bind")
                    .source(source)
                    .options(vec!["rbind".to_string(), "rprivate".to_string()])
                    .build()
                    .map_err(bad)?,
            );
        }
        config.set_mounts(Some(mounts));
        config.save(spec.dir.join("config.json")).map_err(bad)
    }
}
