//! What a container uses, for `skiff stats`: CPU time, memory, requests; counted as the
//! work happens for Wasm containers, read from the cgroup for Linux ones.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// A Wasm container's running totals.
#[derive(Debug, Default)]
pub struct Usage {
    requests: AtomicU64,
    cpu_ns: AtomicU64,
    memory: AtomicU64,
}

impl Usage {
    /// Requests it has been given.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// CPU time its instances have run, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns.load(Ordering::Relaxed)
    }

    /// Linear memory its live instances hold now, in bytes.
    pub fn memory(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn grew(&self, bytes: u64) {
        self.memory.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn freed(&self, bytes: u64) {
        self.memory.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pin_project_lite::pin_project! {
    /// A future whose polls' CPU time is added to a [`Usage`]: a guest runs only inside
    /// them (its host calls' waits are not polls). Two vDSO-less clock reads a poll.
    pub(crate) struct CpuTimed<F> {
        #[pin]
        inner: F,
        usage: Arc<Usage>,
    }
}

impl<F> CpuTimed<F> {
    pub(crate) fn new(inner: F, usage: Arc<Usage>) -> Self {
        Self { inner, usage }
    }
}

impl<F: Future> Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let start = thread_cpu_ns();
        let out = this.inner.poll(cx);
        let spent = thread_cpu_ns().saturating_sub(start);
        this.usage.cpu_ns.fetch_add(spent, Ordering::Relaxed);
        out
    }
}

/// A Linux container's usage, from its cgroup (v1 or v2) and its veth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, page cache that could be dropped not counted (as Docker counts).
    pub memory: u64,
    /// Its memory limit; `None` when it has none.
    pub memory_limit: Option<u64>,
    /// Processes (and threads) in it.
    pub pids: u64,
    /// Bytes it received and sent on its network interface (`None` on the host's).
    pub net: Option<(u64, u64)>,
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The usage of cgroup `skiff/<runc_id>`, or `None` if it is not there (not started,
/// or gone).
pub(crate) fn cgroup_usage(runc_id: &str, host_if: Option<&str>) -> Option<CgroupUsage> {
    let v1 = |controller: &str, file: &str| {
        format!("/sys/fs/cgroup/{controller}/skiff/{runc_id}/{file}")
    };
    let v2 = |file: &str| format!("/sys/fs/cgroup/skiff/{runc_id}/{file}");
    // Anything above this is "no limit" (cgroup v1 writes the page-rounded maximum).
    const UNLIMITED: u64 = 1 << 62;
    let mut usage = if let Some(cpu_ns) = read_u64(&v1("cpuacct", "cpuacct.usage")) {
        let raw = read_u64(&v1("memory", "memory.usage_in_bytes")).unwrap_or(0);
        let inactive = stat_field(&v1("memory", "memory.stat"), "total_inactive_file").unwrap_or(0);
        CgroupUsage {
            cpu_ns,
            memory: raw.saturating_sub(inactive),
            memory_limit: read_u64(&v1("memory", "memory.limit_in_bytes"))
                .filter(|&l| l < UNLIMITED),
            pids: read_u64(&v1("pids", "pids.current")).unwrap_or(0),
            net: None,
        }
    } else {
        let cpu_us = stat_field(&v2("cpu.stat"), "usage_usec")?;
        let raw = read_u64(&v2("memory.current")).unwrap_or(0);
        let inactive = stat_field(&v2("memory.stat"), "inactive_file").unwrap_or(0);
        CgroupUsage {
            cpu_ns: cpu_us * 1000,
            memory: raw.saturating_sub(inactive),
            // "max" does not parse: no limit.
            memory_limit: read_u64(&v2("memory.max")),
            pids: read_u64(&v2("pids.current")).unwrap_or(0),
            net: None,
        }
    };
    if let Some(host_if) = host_if {
        let stat = |what: &str| read_u64(&format!("/sys/class/net/{host_if}/statistics/{what}"));
        // The host end's transmit is the container's receive.
        if let (Some(rx), Some(tx)) = (stat("tx_bytes"), stat("rx_bytes")) {
            usage.net = Some((rx, tx));
        }
    }
    Some(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cpu_is_counted_only_while_polled() {
        let usage = Arc::new(Usage::default());
        let busy = CpuTimed::new(
            async {
                // 30 ms of this thread's own CPU, however busy the machine is.
                let start = thread_cpu_ns();
                let mut x = 0u64;
                while thread_cpu_ns() - start < 30_000_000 {
                    x = x.wrapping_mul(31).wrapping_add(1);
                }
                std::hint::black_box(x);
            },
            usage.clone(),
        );
        busy.await;
        let after_busy = usage.cpu_ns();
        assert!(
            after_busy >= 20_000_000,
            "spun 30 ms, counted {after_busy} ns"
        );
        let idle = CpuTimed::new(
            tokio::time::sleep(std::time::Duration::from_millis(50)),
            usage.clone(),
        );
        idle.await;
        assert!(
            usage.cpu_ns() - after_busy < 10_000_000,
            "a wait is not CPU: {} ns",
            usage.cpu_ns() - after_busy
        );
    }

    #[test]
    fn a_missing_cgroup_is_none() {
        assert_eq!(cgroup_usage("no-such-container-here", None), None);
    }
}
