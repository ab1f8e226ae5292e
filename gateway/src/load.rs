//! What an endpoint is carrying: requests in flight and a peak-EWMA latency estimate,
//! the inputs of the least-request and P2C balancers.
//!
//! Peak-EWMA as tower and linkerd define it: a sample slower than the estimate replaces
//! it at once (so a replica that slows down is avoided on its first slow answer); a
//! faster one moves it by an exponential weight of the time since the last sample. The
//! estimate also decays toward zero while an endpoint gets no samples, so one avoided
//! for being slow is tried again after a while instead of never. Cost is the estimate
//! times (in-flight + 1).
//!
//! A new endpoint is tried before it is weighed: until its first answer it costs
//! nothing while idle, and that answer replaces the default estimate. Without this, the
//! default (30 ms) of a new pod decays in step with the estimates of pods already
//! measured at a fraction of a millisecond, and P2C keeps preferring the old ones: a
//! pod created a millisecond later than its siblings got no requests at all.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The estimate of an endpoint nobody has measured yet (linkerd's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast old samples lose weight. linkerd's default is 10 s; measured here (BENCHMARKS.md,
/// one slow pod of 3) 1 s sends the slow pod half as many requests: a fast pod's rare peak
/// (a scheduling hiccup on a busy 2-core node) otherwise ranks it with the slow one for
/// seconds, and the slow one is still tried about once a second.
pub const DECAY: Duration = Duration::from_secs(1);

/// Failures in a row that eject an endpoint.
pub const EJECT_AFTER: u32 = 5;
/// The first ejection's length; each one in a row doubles it, up to [`MAX_EJECTION`].
pub const FIRST_EJECTION: Duration = Duration::from_secs(1);
/// The longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(60);

/// Nanoseconds since a process-wide origin: instants an atomic can hold.
fn ticks(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One endpoint's load. Shared by every routing table the endpoint is in, so its
/// statistics survive table swaps.
///
/// It also keeps the endpoint's passive health: [`EJECT_AFTER`] failures in a row
/// (connections refused, crashed instances) eject it for [`FIRST_EJECTION`], doubling
/// for each ejection in a row; once the time is up it takes requests again, and the
/// first one probes it: a success clears the record, a failure ejects it again at once.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicU32,
    ewma: Mutex<PeakEwma>,
    failures: AtomicU32,
    ejections: AtomicU32,
    /// `ticks` until which it is ejected; 0 when it is not.
    ejected_until: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Load {
    /// No requests, the default estimate, as of `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(PeakEwma::new(DEFAULT_RTT, DECAY, now)),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Whether it is ejected at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && ticks(now) < until
    }

    /// A request to it failed at the connection level or found a crashed instance.
    /// Returns true when this failure ejected it.
    pub fn failed(&self, now: Instant) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let ejections = self.ejections.load(Ordering::Relaxed);
        // Right after an ejection, one failure is enough: the probe failed.
        if failures < EJECT_AFTER && ejections == 0 {
            return false;
        }
        if self.ejected(now) {
            return false;
        }
        let length = FIRST_EJECTION
            .saturating_mul(1 << ejections.min(16))
            .min(MAX_EJECTION);
        self.ejected_until
            .store(ticks(now + length), Ordering::Relaxed);
        self.ejections.store(ejections + 1, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        true
    }

    /// A request to it succeeded: its failure record is cleared.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the guard is finished or dropped.
    pub fn start(&self, now: Instant) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: self,
            sent: now,
            done: false,
        }
    }

    /// The P2C cost at `now`: latency estimate (ns) x (in-flight + 1).
    pub fn cost(&self, now: Instant) -> f64 {
        let ewma = *self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let in_flight = self.in_flight();
        if !ewma.measured && in_flight == 0 {
            return 0.0;
        }
        ewma.estimate(now) * f64::from(in_flight + 1)
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        self.ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(rtt, now);
    }
}

/// A request in flight on an endpoint. `finish` records its latency; dropping it
/// without (a request that failed or was abandoned) only ends the count.
#[derive(Debug)]
pub struct InFlight<'a> {
    load: &'a Load,
    sent: Instant,
    done: bool,
}

impl InFlight<'_> {
    /// The answer came at `now` (its head: what a balancer should weigh).
    pub fn finish(mut self, now: Instant) {
        self.load
            .observe(now.saturating_duration_since(self.sent), now);
        self.end();
    }

    fn end(&mut self) {
        if !self.done {
            self.done = true;
            self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

/// A peak-sensitive exponentially weighted moving average of latency, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct PeakEwma {
    estimate_ns: f64,
    updated: Instant,
    decay_ns: f64,
    /// Whether a sample has replaced the initial estimate.
    measured: bool,
}

impl PeakEwma {
    /// Starts at `initial`, as of `now`.
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: initial.as_nanos() as f64,
            updated: now,
            decay_ns: decay.as_nanos().max(1) as f64,
            measured: false,
        }
    }

    /// Weight left to the old estimate after `elapsed`.
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        (-elapsed / self.decay_ns).exp()
    }

    /// Takes one sample.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if !self.measured || rtt > self.estimate_ns {
            self.measured = true;
            self.estimate_ns = rtt;
        } else {
            let w = self.weight(now);
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.updated = now;
    }

    /// The estimate at `now`, decayed for the time without samples.
    pub fn estimate(&self, now: Instant) -> f64 {
        self.estimate_ns * self.weight(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slower_sample_takes_over_at_once_and_faster_ones_ease_it_down() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(10 * MS, DECAY, t0);
        // The first sample replaces the default, faster or not.
        e.observe(5 * MS, t0);
        assert_eq!(e.estimate(t0), (5 * MS).as_nanos() as f64);
        e.observe(100 * MS, t0 + MS);
        assert_eq!(e.estimate(t0 + MS), (100 * MS).as_nanos() as f64);
        // One fast sample 100 ms later moves it by 1 - exp(-0.1) ~ 9.5%.
        e.observe(MS, t0 + 101 * MS);
        let after = e.estimate(t0 + 101 * MS) / 1e6;
        assert!((after - 90.6).abs() < 0.5, "{after}");
        // Unmeasured for 6 s, it has decayed to almost nothing.
        assert!(e.estimate(t0 + Duration::from_secs(6)) < 1e6 * 0.3);
    }

    #[test]
    fn failures_in_a_row_eject_for_a_growing_time_and_a_probe_brings_it_back() {
        let t0 = Instant::now();
        let load = Load::new(t0);
        for _ in 1..EJECT_AFTER {
            assert!(!load.failed(t0));
        }
        load.succeeded();
        for _ in 1..EJECT_AFTER {
            assert!(!load.failed(t0), "a success cleared the count");
        }
        assert!(load.failed(t0), "the fifth in a row ejects");
        assert!(load.ejected(t0 + 999 * MS));
        assert!(!load.ejected(t0 + FIRST_EJECTION), "probed back after 1 s");
        // The probe fails: ejected again at once, for twice as long.
        let t1 = t0 + FIRST_EJECTION;
        assert!(load.failed(t1));
        assert!(load.ejected(t1 + 1999 * MS));
        assert!(!load.ejected(t1 + 2 * FIRST_EJECTION));
        // The next probe succeeds: the record is clean, five failures needed again.
        load.succeeded();
        let t2 = t1 + 2 * FIRST_EJECTION;
        assert!(!load.failed(t2));
        assert!(!load.ejected(t2));
    }

    #[test]
    fn in_flight_counts_until_finished_or_dropped_and_cost_weighs_it() {
        let t0 = Instant::now();
        let load = Load::new(t0);
        let a = load.start(t0);
        let b = load.start(t0);
        assert_eq!(load.in_flight(), 2);
        let base = DEFAULT_RTT.as_nanos() as f64;
        assert!((load.cost(t0) - base * 3.0).abs() < 1.0);
        assert_eq!(
            Load::new(t0).cost(t0),
            0.0,
            "a new idle endpoint is tried first"
        );
        a.finish(t0 + 50 * MS);
        drop(b);
        assert_eq!(load.in_flight(), 0);
        // The 50 ms answer was a peak: it is the estimate now.
        assert!((load.cost(t0 + 50 * MS) - 50e6).abs() < 1.0);
    }
}
