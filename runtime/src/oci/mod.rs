//! Linux containers, run by runc: the only place that touches runc and OCI runtime JSON.
//!
//! Each container gets a bundle under its own directory: an overlay of a writable upper
//! layer on the image's read-only tree (a copy where overlayfs is refused), a
//! `config.json` built with the `oci-spec` crate (pid, mount, ipc, uts, cgroup and
//! network namespaces; memory/cpu/pids limits; Docker's default capabilities without
//! NET_RAW, or what was added and dropped, and Docker's seccomp profile for them; its
//! open-files limit; masked and read-only paths; `no_new_privileges`; the user (the
//! image's, or `-u`'s, or a pod's) resolved in the image's own /etc/passwd; a read-only
//! root and tmpfs mounts when asked; /etc/hosts, hostname and resolv.conf written for
//! it), and a network namespace of its own, wired to the node bridge
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
    /// What it was asked to run as or under cannot be run: a user the image does not
    /// have, root where `non_root` forbids it (Kubernetes' CreateContainerConfigError).
    #[error("{0}")]
    Config(String),
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
    /// Who runs: `name`, `uid`, `name:group` or `uid:gid` (the image's `User`, or what
    /// `-u` or a pod's `securityContext` put in its place), resolved in the image's
    /// /etc/passwd and /etc/group.
    pub user: String,
    /// Capabilities, read-only root, tmpfs mounts, supplementary groups, `non_root`.
    pub security: skiff_spec::Security,
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
        runtime_spec(spec, &p.runc_id, p.netns().as_deref(), p.ip())?
            .save(spec.dir.join("config.json"))
            .map_err(|e| OciError::Setup {
                step: "write config.json".into(),
                message: e.to_string(),
            })
    }
}

/// A container's runtime spec (runc's `config.json`): its process (user, capabilities,
/// no_new_privileges, open-files limit), namespaces (its network namespace at `netns`,
/// or the node's), limits, seccomp profile, masked paths, root (read-only when asked)
/// and mounts (tmpfs mounts, then the /etc files written into the bundle for its
/// address `ip`).
fn runtime_spec(
    spec: &OciSpec,
    runc_id: &str,
    netns: Option<&Path>,
    ip: Option<Ipv4Addr>,
) -> Result<Spec, OciError> {
    let bad = |e: oci_spec::OciSpecError| OciError::Setup {
        step: "build the runtime spec".into(),
        message: e.to_string(),
    };
    let security = &spec.security;
    let ids = user::resolve(&spec.image_root, &spec.user, &security.groups).map_err(|message| {
        OciError::Config(format!("cannot run as user {:?}: {message}", spec.user))
    })?;
    if security.non_root && ids.uid == 0 {
        // The kubelet's words for the same refusal.
        return Err(OciError::Config(format!(
            "container has runAsNonRoot and image will run as root (user {:?})",
            spec.user
        )));
    }
    let caps = security.capabilities();
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
        .capabilities(capabilities(&caps, ids.uid, bad)?)
        .args(spec.args.clone())
        .env(env)
        .cwd(if spec.cwd.is_empty() {
            "/".to_string()
        } else {
            spec.cwd.clone()
        })
        // Always: a setuid binary in an image gains nothing (`--security-opt
        // no-new-privileges` and `allowPrivilegeEscalation: false` hold for every
        // container).
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
    if let Some(path) = netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
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
    let mut linux = LinuxBuilder::default()
        .seccomp(seccomp_profile(&bad, &caps)?)
        .namespaces(namespaces)
        .resources(resources.build().map_err(bad)?)
        .cgroups_path(PathBuf::from(format!("/skiff/{runc_id}")))
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default());
    if netns.is_some() {
        // In its own network namespace, as Docker since 20.10: ping through ICMP
        // sockets, and low ports, without NET_RAW or NET_BIND_SERVICE (which a non-root
        // process does not hold). The node's own settings are not touched.
        linux = linux.sysctl(std::collections::HashMap::from([
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string(),
            ),
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            ),
        ]));
    }
    let mut config = Spec::default();
    config.set_process(Some(process));
    config.set_root(Some(
        RootBuilder::default()
            .path(spec.dir.join("rootfs"))
            .readonly(security.read_only)
            .build()
            .map_err(bad)?,
    ));
    config.set_hostname(Some(spec.name.to_string()));
    config.set_linux(Some(linux.build().map_err(bad)?));
    let mut mounts = config.mounts().clone().unwrap_or_default();
    // Before the /etc files, so a tmpfs on /etc holds them rather than hides them.
    for t in &security.tmpfs {
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(PathBuf::from(&t.path))
                .typ("tmpfs")
                .source("tmpfs")
                .options(t.options.clone())
                .build()
                .map_err(bad)?,
        );
    }
    for (file, text) in etc_files(&spec.name, ip) {
        let source = spec.dir.join(file);
        std::fs::write(&source, text).map_err(setup(format!("write {}", source.display())))?;
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if security.read_only {
            // As Docker's: with a read-only root, what the runtime mounts is read-only too.
            options.push("ro".into());
        }
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(PathBuf::from("/etc").join(file))
                .typ("bind")
                .source(source)
                .options(options)
                .build()
                .map_err(bad)?,
        );
    }
    config.set_mounts(Some(mounts));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The config.json a container of `user` with `security` gets, in its own network
    /// namespace (or the node's with `host_network`), as JSON.
    fn config(user: &str, security: skiff_spec::Security, host_network: bool) -> Value {
        let image = tempfile::tempdir().unwrap();
        std::fs::create_dir(image.path().join("etc")).unwrap();
        std::fs::write(
            image.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(image.path().join("etc/group"), "root:x:0:\nweb:x:34:\n").unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let spec = OciSpec {
            id: "ab".repeat(32),
            name: "c".into(),
            image_root: image.path().to_path_buf(),
            dir: bundle.path().to_path_buf(),
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/srv".into(),
            user: user.into(),
            security,
            memory: None,
            cpus: None,
            pids: None,
            host_network,
            log: crate::LogBook::new(10),
        };
        let netns = (!host_network).then(|| PathBuf::from("/run/netns/skiff-test"));
        let ip = (!host_network).then(|| Ipv4Addr::new(10, 213, 0, 9));
        let spec = runtime_spec(&spec, &"ab".repeat(16), netns.as_deref(), ip).unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    fn caps(config: &Value, set: &str) -> Vec<String> {
        // An empty set may be left out.
        let mut v: Vec<String> = config["process"]["capabilities"][set]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    /// The calls the seccomp profile allows for any argument.
    fn allowed(config: &Value) -> Vec<String> {
        config["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().unwrap().clone())
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    fn mount<'a>(config: &'a Value, destination: &str) -> Option<&'a Value> {
        config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == destination)
    }

    fn security(edit: impl FnOnce(&mut skiff_spec::Security)) -> skiff_spec::Security {
        let mut s = skiff_spec::Security::default();
        edit(&mut s);
        s
    }

    #[test]
    fn every_canonical_capability_is_one_runc_knows() {
        for name in skiff_spec::security::CAPABILITIES {
            let cap: oci_spec::runtime::Capability = name.parse().unwrap();
            assert_eq!(
                serde_json::to_value(cap).unwrap(),
                json!(format!("CAP_{name}"))
            );
        }
    }

    #[test]
    fn by_default_root_holds_dockers_capabilities_without_net_raw() {
        let c = config("", skiff_spec::Security::default(), false);
        assert_eq!(c["process"]["user"]["uid"], 0);
        assert_eq!(c["process"]["noNewPrivileges"], true);
        assert_eq!(c["root"]["readonly"], false);
        let bounding = caps(&c, "bounding");
        assert_eq!(bounding.len(), 13, "{bounding:?}");
        assert!(!bounding.contains(&"CAP_NET_RAW".to_string()));
        assert!(bounding.contains(&"CAP_NET_BIND_SERVICE".to_string()));
        assert_eq!(caps(&c, "effective"), bounding);
        assert_eq!(caps(&c, "permitted"), bounding);
        assert!(caps(&c, "ambient").is_empty() && caps(&c, "inheritable").is_empty());
        let allowed = allowed(&c);
        assert!(allowed.contains(&"chroot".to_string()), "SYS_CHROOT's call");
        for gated in ["mount", "unshare", "setns", "reboot", "open_by_handle_at"] {
            assert!(!allowed.contains(&gated.to_string()), "{gated}");
        }
        assert_eq!(
            c["linux"]["sysctl"],
            json!({"net.ipv4.ping_group_range": "0 2147483647", "net.ipv4.ip_unprivileged_port_start": "0"})
        );
        assert_eq!(
            mount(&c, "/etc/hosts").unwrap()["options"],
            json!(["rbind", "rprivate"])
        );
        assert_eq!(c["process"]["cwd"], "/srv");
        // The node's network: its sysctls are not the container's to set.
        let host = config("", skiff_spec::Security::default(), true);
        assert!(host["linux"].get("sysctl").is_none(), "{}", host["linux"]);
    }

    #[test]
    fn user_read_only_tmpfs_and_dropped_capabilities_reach_the_config() {
        let c = config(
            "1000:1000",
            security(|s| {
                s.read_only = true;
                s.drop_capability("ALL").unwrap();
                s.add_group("web").unwrap();
                s.add_tmpfs(skiff_spec::Tmpfs::parse("/tmp:size=1m").unwrap())
                    .unwrap();
            }),
            false,
        );
        assert_eq!(
            c["process"]["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 34]})
        );
        assert_eq!(c["root"]["readonly"], true);
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert!(caps(&c, set).is_empty(), "{set}");
        }
        assert!(
            !allowed(&c).contains(&"chroot".to_string()),
            "no SYS_CHROOT"
        );
        assert_eq!(
            mount(&c, "/tmp").unwrap(),
            &json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                    "options": ["noexec", "nosuid", "nodev", "size=1048576"]})
        );
        // As Docker's: what the runtime mounts is read-only with the root.
        assert_eq!(
            mount(&c, "/etc/resolv.conf").unwrap()["options"],
            json!(["rbind", "rprivate", "ro"])
        );
        let order: Vec<&str> = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let at = |d: &str| order.iter().position(|o| *o == d).unwrap();
        assert!(at("/tmp") < at("/etc/hosts"), "{order:?}");
    }

    #[test]
    fn added_capabilities_bring_the_calls_dockers_profile_gates_on_them() {
        let c = config(
            "",
            security(|s| {
                s.add_capability("NET_RAW").unwrap();
                s.add_capability("cap_sys_admin").unwrap();
            }),
            false,
        );
        let bounding = caps(&c, "bounding");
        assert!(bounding.contains(&"CAP_NET_RAW".to_string()));
        assert!(bounding.contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(caps(&c, "effective"), bounding);
        let allowed = allowed(&c);
        for call in ["mount", "unshare", "setns", "clone", "clone3"] {
            assert!(allowed.contains(&call.to_string()), "{call}");
        }
        let rules = c["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        assert!(
            !rules.iter().any(|r| r["action"] == "SCMP_ACT_ERRNO"),
            "no ENOSYS for clone3 with SYS_ADMIN"
        );
        // Each call in one rule only.
        let mut names = allowed.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), allowed.len());
    }

    #[test]
    fn another_user_holds_only_the_bounding_set_and_non_root_refuses_root() {
        let c = config("www", skiff_spec::Security::default(), false);
        assert_eq!(c["process"]["user"]["uid"], 33);
        assert_eq!(caps(&c, "bounding").len(), 13);
        for set in ["effective", "permitted", "ambient"] {
            assert!(caps(&c, set).is_empty(), "{set}");
        }
        let non_root = security(|s| s.non_root = true);
        let image = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let spec = |user: &str| OciSpec {
            id: "ab".repeat(32),
            name: "c".into(),
            image_root: image.path().to_path_buf(),
            dir: bundle.path().to_path_buf(),
            args: vec!["sh".into()],
            env: vec![],
            cwd: String::new(),
            user: user.into(),
            security: non_root.clone(),
            memory: None,
            cpus: None,
            pids: None,
            host_network: true,
            log: crate::LogBook::new(10),
        };
        let e = runtime_spec(&spec(""), "x", None, None).unwrap_err();
        assert!(matches!(e, OciError::Config(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("container has runAsNonRoot and image will run as root"),
            "{e}"
        );
        assert!(runtime_spec(&spec("0:1000"), "x", None, None).is_err());
        assert!(runtime_spec(&spec("1000"), "x", None, None).is_ok());
        let e = runtime_spec(&spec("ghost"), "x", None, None).unwrap_err();
        assert!(matches!(e, OciError::Config(_)), "{e:?}");
    }
}
