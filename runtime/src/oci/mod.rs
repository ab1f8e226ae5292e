//! Linux containers, run by runc: the only place that touches runc and OCI runtime JSON.
//!
//! Each container gets a bundle under its own directory: an overlay of a writable upper
//! layer on the image's read-only tree (a copy where overlayfs is refused), a
//! `config.json` built with the `oci-spec` crate (pid, mount, ipc, uts, cgroup and
//! network namespaces; memory/cpu/pids limits; Docker's default capabilities, a seccomp
//! deny list, masked and read-only paths; `no_new_privileges`; the image's user resolved
//! in its own /etc/passwd; /etc/hosts, hostname and resolv.conf written for it), and a
//! network namespace of its own, wired to
//! the node bridge `skiff0` (10.213.0.0/16, outbound NAT) by a veth pair.
//!
//! The namespaces are made ahead of time by a small pool (`net.rs`), so a start costs an
//! overlay mount, a `config.json` and a `runc run`; `skiff run` answers once runc is
//! spawned, and a stop waits until runc has made the container before signalling it.
//!
//! `runc run --keep` stays in the foreground as our child, so its exit status is the
//! container's (128+signal when killed) and its stdout/stderr are the container's; the
//! stopped container (and its cgroup, read for OOM kills) stays until `cleanup`.

mod net;
mod proxy;
mod user;

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

/// The container's /etc/hostname, /etc/hosts and /etc/resolv.conf, as Docker writes them:
/// its name (on its bridge address), and the host's nameservers. On the bridge, loopback
/// nameservers (a local stub resolver) cannot be reached from the container's namespace;
/// when only those are configured, public resolvers stand in, as Docker's do.
fn etc_files(name: &str, ip: Option<Ipv4Addr>) -> [(&'static str, String); 3] {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (hosts, resolv) = match ip {
        Some(ip) => {
            let mut resolv: String = host_resolv
                .lines()
                .filter(|l| {
                    let mut w = l.split_whitespace();
                    !(w.next() == Some("nameserver")
                        && w.next()
                            .is_some_and(|a| a.starts_with("127.") || a == "::1"))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            if !resolv.lines().any(|l| l.starts_with("nameserver")) {
                resolv.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
            }
            (
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{name}\n"
                ),
                resolv,
            )
        }
        // Host networking: the host's own files (copies, so the container cannot
        // change the host's).
        None => (
            std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            host_resolv,
        ),
    };
    [
        ("hostname", format!("{name}\n")),
        ("hosts", hosts),
        ("resolv.conf", resolv),
    ]
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// Mounts an overlay of `upper` on `lower` at `target` (mount(2), no `mount` process).
fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> std::io::Result<()> {
    let opts = std::ffi::CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ))
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let target = c_path(target)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts `path`, lazily if it is busy.
pub(super) fn unmount(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the calls.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    if first.raw_os_error() != Some(libc::EBUSY) {
        return Err(first);
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A seccomp filter in the spirit of Docker's default profile, as a deny list: the
/// kernel keyring, userfaultfd, perf events, module and kexec loading, mounting and
/// namespace calls (all but the keyring and user namespaces need capabilities these
/// containers lack anyway) fail with EPERM; `clone` of a user namespace fails with
/// EPERM; `clone3`, whose flags a filter cannot read, fails with ENOSYS so libc falls
/// back to `clone`.
fn seccomp_profile(
    bad: &impl Fn(oci_spec::OciSpecError) -> OciError,
) -> Result<oci_spec::runtime::LinuxSeccomp, OciError> {
    use oci_spec::runtime::{
        Arch, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
        LinuxSeccompOperator, LinuxSyscallBuilder,
    };
    const CLONE_NEWUSER: u64 = 0x1000_0000;
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let denied = LinuxSyscallBuilder::default()
        .names(names(&[
            "add_key",
            "keyctl",
            "request_key",
            "userfaultfd",
            "perf_event_open",
            "bpf",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "acct",
            "swapon",
            "swapoff",
            "reboot",
            "syslog",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "setns",
            "unshare",
        ]))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()
        .map_err(bad)?;
    let user_namespace = LinuxSyscallBuilder::default()
        .names(names(&["clone"]))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .args(vec![
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(CLONE_NEWUSER)
                .value_two(CLONE_NEWUSER)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
                .map_err(bad)?,
        ])
        .build()
        .map_err(bad)?;
    let clone3 = LinuxSyscallBuilder::default()
        .names(names(&["clone3"]))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::ENOSYS as u32)
        .build()
        .map_err(bad)?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(if cfg!(target_arch = "x86_64") {
            vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        } else if cfg!(target_arch = "aarch64") {
            vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        } else {
            vec![Arch::ScmpArchNative]
        })
        .syscalls(vec![denied, user_namespace, clone3])
        .build()
        .map_err(bad)
}

/// Docker's default capability set (runc's own default keeps only three, too few for
/// images that drop to a user of their own, as nginx's does): bounding, effective and
/// permitted; none inheritable or ambient.
fn docker_capabilities(
    bad: impl Fn(oci_spec::OciSpecError) -> OciError,
) -> Result<oci_spec::runtime::LinuxCapabilities, OciError> {
    use oci_spec::runtime::Capability::*;
    let set: oci_spec::runtime::Capabilities = [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect();
    oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(bad)
}

/// Whether `path` is a mount point (listed in /proc/self/mounts).
fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*path)))
}

/// How a container's process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code (128+signal when killed; 127 or 126 when runc could not start
    /// the command, as Docker's).
    pub code: i32,
    /// The kernel's OOM killer killed a process of it (its memory limit was reached).
    pub oom_killed: bool,
    /// Why runc could not start it, as runc said.
    pub error: Option<String>,
}

impl Exit {
    fn code(code: i32) -> Self {
        Self {
            code,
            oom_killed: false,
            error: None,
        }
    }
}

/// The message of a `runc run failed: ...` log line on runc's stderr, if `line` is one.
fn runc_failure(line: &str) -> Option<String> {
    let msg = line.split_once("msg=\"runc run failed: ")?.1;
    let msg = msg.strip_suffix('"').unwrap_or(msg);
    Some(msg.replace("\\\"", "\""))
}

/// How many processes of container `runc_id` the OOM killer has killed: `oom_kill` of
/// its memory cgroup (cgroup v1 `memory.oom_control`, v2 `memory.events`), read while
/// `runc run --keep` keeps the cgroup after the exit.
fn oom_kills(runc_id: &str) -> u64 {
    let candidates = [
        format!("/sys/fs/cgroup/memory/skiff/{runc_id}/memory.oom_control"),
        format!("/sys/fs/cgroup/skiff/{runc_id}/memory.events"),
    ];
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A started (or startable) container: `spawn` runs it, `stop` ends it, `cleanup`
/// leaves nothing behind.
pub struct OciProcess {
    runc: PathBuf,
    state: PathBuf,
    runc_id: String,
    dir: PathBuf,
    /// Its network namespace (`None` with host networking, or once cleaned up).
    net: std::sync::Mutex<Option<Net>>,
    exit: Option<watch::Receiver<Option<Exit>>>,
    mounted: std::sync::atomic::AtomicBool,
}

impl OciProcess {
    /// Its address on the bridge (`None` with host networking).
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.net.lock().expect("net lock").as_ref().map(Net::ip)
    }

    /// The path of its network namespace (`None` with host networking).
    pub fn netns(&self) -> Option<PathBuf> {
        self.net.lock().expect("net lock").as_ref().map(Net::path)
    }

    /// Starts `runc run` in the foreground; stdout and stderr go to `log` line by line.
    pub fn spawn(&mut self, name: Arc<str>, log: Arc<LogBook>) -> Result<(), OciError> {
        let mut child = tokio::process::Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            // --keep: the stopped container (and its cgroup, which says whether the
            // kernel's OOM killer struck) stays until `cleanup` deletes it.
            .args(["run", "--keep", "--bundle"])
            .arg(&self.dir)
            .arg(&self.runc_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            .spawn()
            .map_err(setup("start runc"))?;
        let mut readers = Vec::new();
        for (pipe, stream) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                LogStream::Stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                LogStream::Stderr,
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let (log, name) = (log.clone(), name.clone());
            readers.push(tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                let mut failure = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if stream == LogStream::Stderr {
                        failure = failure.or_else(|| runc_failure(&line));
                    }
                    log.push(&name, stream, &line);
                }
                failure
            }));
        }
        let (tx, rx) = watch::channel(None);
        let runc_id = self.runc_id.clone();
        tokio::spawn(async move {
            let mut code = match child.wait().await {
                Ok(status) => status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt as _;
                    128 + status.signal().unwrap_or(9)
                }),
                Err(e) => {
                    warn!(error = %e, "lost the runc process");
                    255
                }
            };
            // What runc said if it could not start the process (the pipes close with
            // the container; a second is plenty).
            let mut error = None;
            for reader in readers {
                if let Ok(Ok(Some(failure))) =
                    tokio::time::timeout(Duration::from_secs(1), reader).await
                {
                    error = Some(failure);
                }
            }
            if let Some(e) = &error {
                // Docker's codes for a command that is missing or not executable.
                if e.contains("executable file not found") || e.contains("no such file") {
                    code = 127;
                } else if e.contains("permission denied") {
                    code = 126;
                }
            }
            let oom_killed = oom_kills(&runc_id) > 0;
            let _ = tx.send(Some(Exit {
                code,
                oom_killed,
                error,
            }));
        });
        self.exit = Some(rx);
        Ok(())
    }

    /// Waits (up to 10 s) until runc has made the container (its state file exists), or
    /// it already exited: until then `runc kill` would not find it. Polls a `stat`, not
    /// `runc state`, so it costs no runc process. A start does not wait for this (the
    /// container is routed while runc builds it, and answers once its process listens);
    /// a stop does.
    async fn wait_created(&self) -> Result<(), OciError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let state = self.state.join(&self.runc_id).join("state.json");
        loop {
            if self.exit.as_ref().is_some_and(|rx| rx.borrow().is_some()) || state.exists() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OciError::Setup {
                    step: "start the container".into(),
                    message: "runc did not create it within 10 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether its process has ended.
    pub fn has_exited(&self) -> bool {
        self.exit.as_ref().is_none_or(|rx| rx.borrow().is_some())
    }

    /// Waits for the container to exit.
    pub async fn wait(&self) -> Exit {
        let lost = Exit::code(255);
        let Some(mut rx) = self.exit.clone() else {
            return lost;
        };
        loop {
            if let Some(exit) = rx.borrow().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return lost;
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it exited.
    pub async fn stop(&self, grace: Duration) -> Exit {
        let kill = |sig: &'static str| {
            let (runc, state, id) = (self.runc.clone(), self.state.clone(), self.runc_id.clone());
            async move {
                let _ = tokio::process::Command::new(runc)
                    .arg("--root")
                    .arg(state)
                    .args(["kill", &id, sig])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
        };
        if let Err(e) = self.wait_created().await {
            warn!(container = %self.runc_id, error = %e, "stopping a container runc never made");
        }
        kill("TERM").await;
        if let Ok(exit) = tokio::time::timeout(grace, self.wait()).await {
            return exit;
        }
        kill("KILL").await;
        match tokio::time::timeout(Duration::from_secs(10), self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                warn!(container = %self.runc_id, "container did not die after SIGKILL");
                Exit::code(137)
            }
        }
    }

    /// Removes everything the container had: runc state, cgroup, mount, network
    /// namespace (and with it the veth pair), directory. Each step first looks whether
    /// there is anything to remove, so cleaning up after nothing costs a few `stat`s.
    pub async fn cleanup(&self) {
        if self.state.join(&self.runc_id).exists() {
            let _ = tokio::process::Command::new(&self.runc)
                .arg("--root")
                .arg(&self.state)
                .args(["delete", "--force", &self.runc_id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        if self
            .mounted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            && let Err(e) = unmount(&self.dir.join("rootfs"))
        {
            warn!(error = %e, "failed to unmount a container rootfs");
        }
        let net = self.net.lock().expect("net lock").take();
        if let Some(net) = net {
            // The kernel removes the veth pair with the namespace, but later, from a
            // work queue; deleting it here means it is gone when `rm` answers.
            let host_if = net.host_if();
            if Path::new("/sys/class/net").join(&host_if).exists() {
                let _ = run("ip", &["link", "del", &host_if]).await;
            }
            // Dropping the namespace removes it, then frees its address.
            drop(net);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
