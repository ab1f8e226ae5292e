//! Linux containers, run by runc: the only place that touches runc and OCI runtime JSON.
//!
//! Each container gets a bundle under its own directory: an overlay of a writable upper
//! layer on the image's read-only tree (a copy where overlayfs is refused), a
//! `config.json` built with the `oci-spec` crate (pid, mount, ipc, uts, cgroup and
//! network namespaces; memory/cpu/pids limits; runc's default capabilities, masked and
//! read-only paths; `no_new_privileges`), and a network namespace of its own, wired to
//! the node bridge `skiff0` (10.213.0.0/16, outbound NAT) by a veth pair.
//!
//! `runc run` stays in the foreground as our child, so its exit status is the
//! container's (128+signal when killed) and its stdout/stderr are the container's.

mod proxy;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

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

/// The node bridge and its network.
const BRIDGE: &str = "skiff0";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PREFIX: u8 = 16;
/// Where named network namespaces live (as `ip netns` keeps them).
const NETNS_DIR: &str = "/run/netns";

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

fn setup(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
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
    /// `uid[:gid]` (names are not resolved).
    pub user: String,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPUs (e.g. 0.5).
    pub cpus: Option<f64>,
    /// Max processes.
    pub pids: Option<i64>,
    /// Share the node's network instead of a namespace of its own.
    pub host_network: bool,
    /// The container's address on the bridge (ignored with `host_network`).
    pub ip: Ipv4Addr,
    /// Where stdout and stderr go.
    pub log: Arc<LogBook>,
}

/// The node's runc setup.
#[derive(Debug)]
pub struct OciHost {
    runc: PathBuf,
    state: PathBuf,
    /// The bridge, forwarding and NAT rule are in place (checked once per node).
    bridge_ready: std::sync::atomic::AtomicBool,
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

async fn run(cmd: &str, args: &[&str]) -> Result<String, OciError> {
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

/// Runs `ip [-n NS] -batch -` with `lines`: one process for many changes.
async fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), OciError> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = tokio::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(setup("run ip"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(lines.join("\n").as_bytes())
        .await
        .map_err(setup("write to ip"))?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(setup("run ip"))?;
    if !out.status.success() {
        return Err(OciError::Setup {
            step: format!("ip {}", lines.join("; ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl OciHost {
    /// Removes what a container of a crashed node may have left: its runc container
    /// (killed), mount, network namespace and directory.
    pub async fn clean_leftovers(&self, id: &str, dir: &Path) {
        let process = OciProcess {
            runc: self.runc.clone(),
            state: self.state.clone(),
            runc_id: id[..32].to_string(),
            dir: dir.to_path_buf(),
            netns: Some(format!("skiff-{}", &id[..12])),
            host_if: Some(format!("vh{}", &id[..10])),
            ip: None,
            exit: None,
            mounted: std::sync::atomic::AtomicBool::new(is_mounted(&dir.join("rootfs"))),
        };
        process.cleanup().await;
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
        Ok(Self {
            runc,
            state: state.to_path_buf(),
            bridge_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The bridge, its address, forwarding and NAT, created once (idempotent).
    async fn ensure_bridge(&self) -> Result<(), OciError> {
        if self.bridge_ready.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        if run("ip", &["link", "show", BRIDGE]).await.is_err() {
            run("ip", &["link", "add", BRIDGE, "type", "bridge"]).await?;
            run(
                "ip",
                &["addr", "add", &format!("{GATEWAY}/{PREFIX}"), "dev", BRIDGE],
            )
            .await?;
        }
        run("ip", &["link", "set", BRIDGE, "up"]).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(setup("enable IP forwarding"))?;
        let subnet = format!("{}/{PREFIX}", Ipv4Addr::new(10, 213, 0, 0));
        let rule = [
            "POSTROUTING",
            "-s",
            subnet.as_str(),
            "!",
            "-o",
            BRIDGE,
            "-j",
            "MASQUERADE",
        ];
        if run("iptables", &[&["-t", "nat", "-C"][..], &rule[..]].concat())
            .await
            .is_err()
        {
            run("iptables", &[&["-t", "nat", "-A"][..], &rule[..]].concat()).await?;
        }
        self.bridge_ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Sets up and starts a container. Everything made on the way is undone if a later
    /// step fails.
    pub async fn start(&self, spec: OciSpec) -> Result<OciProcess, OciError> {
        let runc_id = spec.id[..32].to_string();
        let netns = (!spec.host_network).then(|| format!("skiff-{}", &spec.id[..12]));
        let mut process = OciProcess {
            runc: self.runc.clone(),
            state: self.state.clone(),
            runc_id,
            dir: spec.dir.clone(),
            netns: netns.clone(),
            host_if: (!spec.host_network).then(|| format!("vh{}", &spec.id[..10])),
            ip: (!spec.host_network).then_some(spec.ip),
            exit: None,
            mounted: std::sync::atomic::AtomicBool::new(false),
        };
        // Whatever a crashed node left under this id (a runc container still running, a
        // mount, a namespace) goes first.
        process.mounted.store(
            is_mounted(&spec.dir.join("rootfs")),
            std::sync::atomic::Ordering::Relaxed,
        );
        process.cleanup().await;
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
        if let Some(ns) = &p.netns {
            self.ensure_bridge().await?;
            let host_if = format!("vh{}", &spec.id[..10]);
            // The peer is made inside the namespace: moving an interface between
            // namespaces afterwards costs the kernel ~15-20 ms (RCU grace periods).
            ip_batch(
                None,
                &[
                    format!("netns add {ns}"),
                    format!("link add {host_if} type veth peer name eth0 netns {ns}"),
                    format!("link set {host_if} master {BRIDGE} up"),
                    // Forget any MAC a previous holder of the address left in the cache.
                    format!("neigh flush to {} dev {BRIDGE}", spec.ip),
                ],
            )
            .await?;
            ip_batch(
                Some(ns),
                &[
                    format!("addr add {}/{PREFIX} dev eth0", spec.ip),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                    format!("route add default via {GATEWAY}"),
                ],
            )
            .await?;
        }
        self.write_config(spec, p)?;
        Ok(())
    }

    fn write_config(&self, spec: &OciSpec, p: &OciProcess) -> Result<(), OciError> {
        let bad = |e: oci_spec::OciSpecError| OciError::Setup {
            step: "build the runtime spec".into(),
            message: e.to_string(),
        };
        let id = |s: &str| s.parse::<u32>().unwrap_or(0);
        let (uid, gid): (u32, u32) = match spec.user.split_once(':') {
            Some((u, g)) => (id(u), id(g)),
            None => (id(&spec.user), id(&spec.user)),
        };
        let mut env = spec.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        let process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(uid)
                    .gid(gid)
                    .build()
                    .map_err(bad)?,
            )
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
        match &p.netns {
            Some(ns) => {
                namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
                namespaces.push(
                    LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Network)
                        .path(Path::new(NETNS_DIR).join(ns))
                        .build()
                        .map_err(bad)?,
                );
            }
            None => namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network),
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
        config.save(spec.dir.join("config.json")).map_err(bad)
    }
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
fn unmount(path: &Path) -> std::io::Result<()> {
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

/// Whether `path` is a mount point (listed in /proc/self/mounts).
fn is_mounted(path: &Path) -> bool {
    let path = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&*path)))
}

/// Bridge addresses, leased machine-wide: one file per address under `/run/skiff/ips`,
/// created exclusively and naming the leasing process, so nodes sharing a machine (and
/// its bridge) never hand out the same address; leases of dead processes are reclaimed.
pub struct IpLease {
    ip: Ipv4Addr,
    path: PathBuf,
}

impl IpLease {
    const DIR: &'static str = "/run/skiff/ips";

    /// A free address in 10.213.1.2 and up. The search starts at a random place, so an
    /// address just given back is not handed out again at once (peers may still have it
    /// cached with the old container's MAC).
    pub fn take() -> Result<Self, OciError> {
        const ADDRESSES: u32 = 64_000;
        std::fs::create_dir_all(Self::DIR).map_err(setup(format!("create {}", Self::DIR)))?;
        let me = std::process::id();
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        let start = u32::from_le_bytes(seed) % ADDRESSES;
        for n in 0..ADDRESSES {
            let i = (start + n) % ADDRESSES;
            let ip = Ipv4Addr::new(10, 213, (1 + i / 250) as u8, (2 + i % 250) as u8);
            let path = Path::new(Self::DIR).join(ip.to_string());
            let mut open = std::fs::OpenOptions::new();
            open.write(true).create_new(true);
            match open.open(&path) {
                Ok(mut f) => {
                    use std::io::Write as _;
                    let _ = write!(f, "{me}");
                    return Ok(Self { ip, path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder: Option<i32> = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok());
                    // SAFETY: kill with signal 0 only checks that the process exists.
                    let alive = holder.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
                    if !alive && std::fs::write(&path, me.to_string()).is_ok() {
                        return Ok(Self { ip, path });
                    }
                }
                Err(e) => return Err(setup(format!("lease {ip}"))(e)),
            }
        }
        Err(OciError::Setup {
            step: "lease a bridge address".into(),
            message: "all 64,000 are in use".into(),
        })
    }

    /// The leased address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl Drop for IpLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How a container's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code (128+signal when killed).
    pub code: i32,
    /// The kernel's OOM killer killed a process of it (its memory limit was reached).
    pub oom_killed: bool,
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
    netns: Option<String>,
    /// The host end of the veth pair (gone with the namespace, unless setup broke off
    /// before its peer moved there).
    host_if: Option<String>,
    /// The container's address on the bridge (`None` with host networking).
    pub ip: Option<Ipv4Addr>,
    exit: Option<watch::Receiver<Option<Exit>>>,
    mounted: std::sync::atomic::AtomicBool,
}

impl OciProcess {
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
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.push(&name, stream, &line);
                }
            });
        }
        let (tx, rx) = watch::channel(None);
        let runc_id = self.runc_id.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt as _;
                    128 + status.signal().unwrap_or(9)
                }),
                Err(e) => {
                    warn!(error = %e, "lost the runc process");
                    255
                }
            };
            let oom_killed = oom_kills(&runc_id) > 0;
            let _ = tx.send(Some(Exit { code, oom_killed }));
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

    /// Waits for the container to exit.
    pub async fn wait(&self) -> Exit {
        let lost = Exit {
            code: 255,
            oom_killed: false,
        };
        let Some(mut rx) = self.exit.clone() else {
            return lost;
        };
        loop {
            if let Some(exit) = *rx.borrow() {
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
                Exit {
                    code: 137,
                    oom_killed: false,
                }
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
        if let Some(ns) = &self.netns {
            let path = Path::new(NETNS_DIR).join(ns);
            if path.exists() {
                // What `ip netns del` does: the namespace goes with its last reference.
                let _ = unmount(&path);
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(error = %e, "failed to delete a network namespace");
                }
            }
        }
        if let Some(host_if) = &self.host_if
            && Path::new("/sys/class/net").join(host_if).exists()
        {
            let _ = run("ip", &["link", "del", host_if]).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
