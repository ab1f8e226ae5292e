//! Container networking: the node bridge, machine-wide address leases, and network
//! namespaces wired to the bridge, made ahead of time.
//!
//! A namespace with its veth pair and address costs ~6 ms of `ip` and kernel work; a
//! container start takes one ready from a small pool and a background task makes the
//! next, so that work is off the path from `skiff run` to the first response.
//!
//! Each namespace belongs to its address lease: the lease file names the holding node
//! process and the namespace, so whatever a killed node left (a pooled namespace, a
//! container's) is found and removed by the next node that starts (`sweep`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tracing::warn;

use super::{OciError, run, setup, unmount};

/// The node bridge and its network.
const BRIDGE: &str = "skiff0";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PREFIX: u8 = 16;
/// Where named network namespaces live (as `ip netns` keeps them).
const NETNS_DIR: &str = "/run/netns";
/// Where address leases live, machine-wide.
const LEASES: &str = "/run/skiff/ips";
/// Namespaces kept ready.
const POOL: usize = 2;
/// How long after a take the pool is refilled.
const REFILL_AFTER: std::time::Duration = std::time::Duration::from_millis(150);

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

/// The bridge, its address, forwarding and NAT, created if missing (idempotent).
async fn ensure_bridge() -> Result<(), OciError> {
    if run("ip", &["link", "show", BRIDGE]).await.is_err() {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"]).await?;
        run(
            "ip",
            &["addr", "add", &format!("{GATEWAY}/{PREFIX}"), "dev", BRIDGE],
        )
        .await?;
    }
    run("ip", &["link", "set", BRIDGE, "up"]).await?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(setup("enable IP forwarding"))?;
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
    Ok(())
}

/// Removes a named network namespace (what `ip netns del` does); the namespace itself,
/// and the veth pair with an end in it, go with its last user.
fn remove_netns(ns: &str) {
    let path = Path::new(NETNS_DIR).join(ns);
    if path.exists() {
        let _ = unmount(&path);
        if let Err(e) = std::fs::remove_file(&path) {
            warn!(error = %e, netns = ns, "failed to delete a network namespace");
        }
    }
}

/// The host end of namespace `ns`'s veth pair.
fn host_if_of(ns: &str) -> String {
    let tag = ns.strip_prefix("skiff-").unwrap_or(ns);
    format!("vh{}", &tag[..tag.len().min(10)])
}

/// Removes what a dead node left of namespace `ns`: the namespace and its veth pair
/// (deleted here rather than left to the kernel's deferred namespace cleanup, so it
/// is gone when this returns). Blocking; runs only for leftovers.
fn remove_leftover(ns: &str) {
    remove_netns(ns);
    let host_if = host_if_of(ns);
    if Path::new("/sys/class/net").join(&host_if).exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &host_if])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A bridge address, leased machine-wide: one file per address under `/run/skiff/ips`,
/// created exclusively, naming the leasing process and the namespace that uses it, so
/// nodes sharing a machine (and its bridge) never hand out the same address.
#[derive(Debug)]
struct IpLease {
    ip: Ipv4Addr,
    path: PathBuf,
}

/// What a lease file says: the holder and its namespace.
fn read_lease(path: &Path) -> (Option<i32>, Option<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut words = text.split_whitespace();
    (
        words.next().and_then(|p| p.parse().ok()),
        words.next().map(str::to_string),
    )
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

impl IpLease {
    /// A free address in 10.213.1.2 and up, for namespace `ns`. The search starts at a
    /// random place, so an address just given back is not handed out again at once
    /// (peers may still have it cached with the old container's MAC). A lease file
    /// appears whole (hard-linked from a written temp file), so no reader sees it empty;
    /// leases of dead processes are left to [`NetPool::sweep`].
    fn take(ns: &str) -> Result<Self, OciError> {
        const ADDRESSES: u32 = 64_000;
        std::fs::create_dir_all(LEASES).map_err(setup(format!("create {LEASES}")))?;
        let claim = tempfile::NamedTempFile::new_in(LEASES)
            .and_then(|mut f| {
                use std::io::Write as _;
                write!(f, "{} {ns}", std::process::id())?;
                Ok(f)
            })
            .map_err(setup("write an address lease"))?;
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        let start = u32::from_le_bytes(seed) % ADDRESSES;
        for n in 0..ADDRESSES {
            let i = (start + n) % ADDRESSES;
            let ip = Ipv4Addr::new(10, 213, (1 + i / 250) as u8, (2 + i % 250) as u8);
            let path = Path::new(LEASES).join(ip.to_string());
            match std::fs::hard_link(claim.path(), &path) {
                Ok(()) => return Ok(Self { ip, path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(setup(format!("lease {ip}"))(e)),
            }
        }
        Err(OciError::Setup {
            step: "lease a bridge address".into(),
            message: "all 64,000 are in use".into(),
        })
    }
}

impl Drop for IpLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A network namespace on the bridge: `eth0` with a leased address and a default route
/// through the bridge, `lo` up. Dropping it removes the namespace, then the lease.
#[derive(Debug)]
pub struct Net {
    ns: String,
    ip: Ipv4Addr,
    lease: Option<IpLease>,
}

impl Net {
    /// Makes one: namespace, veth pair (the container end made inside the namespace:
    /// moving an interface between namespaces afterwards costs the kernel 15-20 ms of
    /// RCU waits), address, routes. Two `ip` processes.
    async fn make() -> Result<Self, OciError> {
        let mut r = [0u8; 6];
        let _ = getrandom::fill(&mut r);
        let tag = hex::encode(r);
        let ns = format!("skiff-{tag}");
        let lease = IpLease::take(&ns)?;
        let net = Self {
            ns,
            ip: lease.ip,
            lease: Some(lease),
        };
        let host_if = net.host_if();
        let made = async {
            ip_batch(
                None,
                &[
                    format!("netns add {}", net.ns),
                    format!(
                        "link add {host_if} type veth peer name eth0 netns {}",
                        net.ns
                    ),
                    format!("link set {host_if} master {BRIDGE} up"),
                    // Forget any MAC a previous holder of the address left in the cache.
                    format!("neigh flush to {} dev {BRIDGE}", net.ip),
                ],
            )
            .await?;
            ip_batch(
                Some(&net.ns),
                &[
                    format!("addr add {}/{PREFIX} dev eth0", net.ip),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                    format!("route add default via {GATEWAY}"),
                ],
            )
            .await
        };
        if let Err(e) = made.await {
            // Whatever was made goes: the veth now, then (dropping `net`) the
            // namespace, then the lease.
            let _ = run("ip", &["link", "del", &host_if]).await;
            return Err(e);
        }
        Ok(net)
    }

    /// Its path, for the runtime spec.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.ns)
    }

    /// The container's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host end of the veth pair.
    pub fn host_if(&self) -> String {
        host_if_of(&self.ns)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_netns(&self.ns);
        // The lease goes after the namespace, so the address is never in two.
        self.lease.take();
    }
}

/// Ready namespaces, refilled in the background.
#[derive(Debug, Default)]
pub(super) struct NetPool {
    ready: Mutex<Vec<Net>>,
    /// Set at node shutdown: no more refills.
    closed: std::sync::atomic::AtomicBool,
    bridge: tokio::sync::OnceCell<()>,
}

impl NetPool {
    /// Removes what killed nodes left: leases of dead processes with their namespaces,
    /// and namespaces no lease names (a node killed while making one). Namespaces are
    /// listed before leases are read: a lease is taken before its namespace is made and
    /// given back after it is removed, so a live one is always found named.
    pub(super) fn sweep() {
        let namespaces: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("skiff-"))
                    .collect()
            })
            .unwrap_or_default();
        let mut named = std::collections::HashSet::new();
        for entry in std::fs::read_dir(LEASES).into_iter().flatten().flatten() {
            let path = entry.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                // A lease being written; one a killed node left goes after a minute.
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
                if stale {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let (holder, ns) = read_lease(&path);
            if holder.is_some_and(alive) {
                named.extend(ns);
                continue;
            }
            if let Some(ns) = ns {
                remove_leftover(&ns);
            }
            let _ = std::fs::remove_file(&path);
        }
        for ns in namespaces.iter().filter(|n| !named.contains(*n)) {
            remove_leftover(ns);
        }
    }

    /// A ready namespace (made now if none is), and a refill started behind it.
    pub(super) async fn take(self: &std::sync::Arc<Self>) -> Result<Net, OciError> {
        self.bridge.get_or_try_init(ensure_bridge).await?;
        let ready = self.ready.lock().expect("pool lock").pop();
        let net = match ready {
            Some(net) => net,
            None => Net::make().await?,
        };
        let pool = self.clone();
        tokio::spawn(async move {
            // Not while the container that took it starts: on a small machine the
            // refill's kernel work would compete with runc for the same cores.
            tokio::time::sleep(REFILL_AFTER).await;
            pool.fill().await
        });
        Ok(net)
    }

    /// Makes namespaces until `POOL` are ready.
    async fn fill(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        while !self.closed.load(Relaxed) && self.ready.lock().expect("pool lock").len() < POOL {
            match Net::make().await {
                Ok(net) => {
                    let mut ready = self.ready.lock().expect("pool lock");
                    // Two fills may race, or the node be shutting down: an extra
                    // namespace is simply removed.
                    if ready.len() < POOL && !self.closed.load(Relaxed) {
                        ready.push(net);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "failed to make a network namespace ahead of time");
                    return;
                }
            }
        }
    }

    /// Removes the ready namespaces (node shutdown).
    pub(super) fn drain(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.ready.lock().expect("pool lock").clear();
    }
}
