//! When a container that ended starts again: one back-off, with the presets of the two
//! worlds skiff speaks for. A Deployment's pods back off as the kubelet's do (long,
//! since a crash loop costs the whole node), `docker run --restart` containers as
//! Docker's daemon does (short, since the user is watching). Whether it starts again at
//! all is the policy's ([`skiff_spec::RestartPolicy::restarts`]).

use std::time::Duration;

/// A doubling back-off: `first`, twice that, ... up to `max`; a run longer than
/// `reset_after` starts the count again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    reset_after: Duration,
}

impl Backoff {
    /// A Deployment's pods: 1 s doubling to 5 min, counted again after a minute's run.
    pub(crate) const KUBERNETES: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(300),
        reset_after: Duration::from_secs(60),
    };

    /// `docker run --restart` containers: 100 ms doubling to 10 s, counted again after
    /// a 10 s run (Docker's daemon).
    pub(crate) const DOCKER: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(10),
        reset_after: Duration::from_secs(10),
    };

    /// The wait before the `n`th start again in a row (from 1).
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(20);
        self.first
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// How many starts again in a row this is, after `before` and a run of `ran`: a long
    /// run counts from 1 again.
    pub(crate) fn count(&self, before: u32, ran: Duration) -> u32 {
        if ran > self.reset_after {
            1
        } else {
            before + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_double_to_their_caps_and_a_long_run_counts_again() {
        let k = Backoff::KUBERNETES;
        let waits: Vec<u64> = (1..=11).map(|n| k.delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        let d = Backoff::DOCKER;
        let waits: Vec<u128> = (1..=9).map(|n| d.delay(n).as_millis()).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(d.delay(u32::MAX), Duration::from_secs(10), "no overflow");
        assert_eq!(k.count(5, Duration::from_secs(61)), 1);
        assert_eq!(k.count(5, Duration::from_secs(59)), 6);
        assert_eq!(d.count(5, Duration::from_secs(11)), 1);
        assert_eq!(d.count(0, Duration::from_secs(1)), 1);
    }
}
