//! Which ready endpoint takes the next request.
//!
//! | algorithm | picks |
//! |---|---|
//! | `round-robin` | the next ready endpoint in turn |
//! | `random` | a ready endpoint uniformly at random |
//! | `least-request` | the ready endpoint with the fewest requests in flight (ties: the first after a rotating start) |
//! | `p2c-ewma` | the cheaper of two random ready endpoints, cost = peak-EWMA latency x (in flight + 1) |
//! | `hash` | the ready endpoint a key (a header, the client address) hashes to, by rendezvous hashing, so keys stay put when others come and go |
//!
//! Pure functions of the endpoints' [`Load`]s and a small random source, so each is
//! tested with plain values.

use std::fmt;
use std::hash::{BuildHasher as _, Hash, Hasher as _};
use std::str::FromStr;
use std::time::Instant;

use crate::load::Load;

/// A balancing algorithm, as a Service's `skiff.dev/load-balancer` annotation names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Fewest requests in flight.
    LeastRequest,
    /// Power of two choices over peak-EWMA latency x load: "least latency".
    #[default]
    P2cEwma,
    /// Sticky by a key.
    Hash,
}

impl Algorithm {
    /// Every algorithm, by its annotation value.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::LeastRequest,
        Algorithm::P2cEwma,
        Algorithm::Hash,
    ];

    /// Its annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Random => "random",
            Algorithm::LeastRequest => "least-request",
            Algorithm::P2cEwma => "p2c-ewma",
            Algorithm::Hash => "hash",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An annotation value that names no algorithm.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown load balancer {0:?} (known: round-robin, random, least-request, p2c-ewma, hash)")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAlgorithm(s.to_string()))
    }
}

/// What a pick sees of each endpoint: whether it is ready, and its load.
pub trait Candidate {
    /// Whether it takes requests now.
    fn ready(&self) -> bool;
    /// Its load.
    fn load(&self) -> &Load;
    /// A stable identity for hashing (its name).
    fn key(&self) -> &str;
}

/// The state a balancer keeps between picks: a turn counter and a random source.
#[derive(Debug)]
pub struct Picker {
    turn: std::sync::atomic::AtomicUsize,
    rng: std::sync::atomic::AtomicU64,
}

impl Default for Picker {
    fn default() -> Self {
        // Seeded per picker from std's per-process random keys: different backends do
        // not march in step.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        Self::seeded(seed)
    }
}

impl Picker {
    /// A picker whose random choices follow `seed` (for tests).
    pub fn seeded(seed: u64) -> Self {
        Self {
            turn: std::sync::atomic::AtomicUsize::new(0),
            rng: std::sync::atomic::AtomicU64::new(seed | 1),
        }
    }

    /// splitmix64 over an atomic counter: good enough to spread requests, lock-free.
    fn random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&self, n: usize) -> usize {
        (self.random() % n as u64) as usize
    }

    /// The index of the endpoint `algorithm` picks among `endpoints` at `now` (`key`:
    /// what `hash` hashes), or `None` when none is ready.
    pub fn pick<C: Candidate>(
        &self,
        algorithm: Algorithm,
        endpoints: &[C],
        key: Option<&[u8]>,
        now: Instant,
    ) -> Option<usize> {
        // Ejected endpoints are skipped, unless every ready one is ejected: then they
        // all take requests again rather than none (Envoy's panic threshold at 100%).
        let healthy = |c: &C| c.ready() && !c.load().ejected(now);
        let mut n = endpoints.iter().filter(|e| healthy(e)).count();
        let honour_ejections = n > 0;
        if !honour_ejections {
            n = endpoints.iter().filter(|e| e.ready()).count();
        }
        if n == 0 {
            return None;
        }
        let usable = |i: usize| {
            if honour_ejections {
                healthy(&endpoints[i])
            } else {
                endpoints[i].ready()
            }
        };
        // The k-th usable endpoint's index; no allocation on the request path (a route
        // holds a handful of replicas, so walking them is cheap).
        let ready = |k: usize| {
            (0..endpoints.len())
                .filter(|&i| usable(i))
                .nth(k)
                .expect("k < n")
        };
        let turn = || self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chosen = match algorithm {
            Algorithm::RoundRobin => ready(turn() % n),
            Algorithm::Random => ready(self.below(n)),
            Algorithm::LeastRequest => {
                let start = turn();
                (0..n)
                    .map(|i| ready((start + i) % n))
                    .min_by_key(|&i| endpoints[i].load().in_flight())
                    .expect("n > 0")
            }
            Algorithm::P2cEwma if n == 1 => ready(0),
            Algorithm::P2cEwma => {
                let a = self.below(n);
                let b = (a + 1 + self.below(n - 1)) % n;
                let (a, b) = (ready(a), ready(b));
                if endpoints[b].load().cost(now) < endpoints[a].load().cost(now) {
                    b
                } else {
                    a
                }
            }
            Algorithm::Hash => match key {
                // Rendezvous hashing: the endpoint with the highest hash of (key, name).
                Some(key) => (0..endpoints.len())
                    .filter(|&i| usable(i))
                    .max_by_key(|&i| {
                        let mut h = std::hash::DefaultHasher::new();
                        key.hash(&mut h);
                        endpoints[i].key().hash(&mut h);
                        h.finish()
                    })
                    .expect("n > 0"),
                None => ready(self.below(n)),
            },
        };
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct E {
        name: String,
        ready: bool,
        load: Load,
    }

    impl Candidate for E {
        fn ready(&self) -> bool {
            self.ready
        }
        fn load(&self) -> &Load {
            &self.load
        }
        fn key(&self) -> &str {
            &self.name
        }
    }

    fn endpoints(n: usize, now: Instant) -> Vec<E> {
        (0..n)
            .map(|i| E {
                name: format!("e{i}"),
                ready: true,
                load: Load::new(now),
            })
            .collect()
    }

    fn counts(p: &Picker, a: Algorithm, es: &[E], picks: usize, now: Instant) -> Vec<usize> {
        let mut c = vec![0; es.len()];
        for _ in 0..picks {
            c[p.pick(a, es, None, now).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn annotation_values_round_trip_and_unknown_ones_are_named() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
        let err = "fastest".parse::<Algorithm>().unwrap_err();
        assert!(err.to_string().contains("\"fastest\""), "{err}");
        assert_eq!(Algorithm::default(), Algorithm::P2cEwma);
    }

    #[test]
    fn round_robin_spreads_exactly_over_ready_endpoints() {
        let now = Instant::now();
        let mut es = endpoints(4, now);
        es[2].ready = false;
        let c = counts(&Picker::seeded(1), Algorithm::RoundRobin, &es, 300, now);
        assert_eq!(c, [100, 100, 0, 100]);
        for e in &mut es {
            e.ready = false;
        }
        for a in Algorithm::ALL {
            assert_eq!(Picker::seeded(1).pick(a, &es, None, now), None);
        }
    }

    #[test]
    fn random_is_uniform_within_a_statistical_bound() {
        let now = Instant::now();
        let es = endpoints(3, now);
        let c = counts(&Picker::seeded(42), Algorithm::Random, &es, 30_000, now);
        // Each share is 10,000 +- about 82 (one standard deviation): allow 5.
        for n in c {
            assert!((9_590..=10_410).contains(&n), "{n}");
        }
    }

    #[test]
    fn least_request_picks_the_least_loaded() {
        let now = Instant::now();
        let es = endpoints(3, now);
        let _busy: Vec<_> = (0..3).map(|_| es[0].load.start(now)).collect();
        let _one = es[1].load.start(now);
        let p = Picker::seeded(3);
        for _ in 0..10 {
            assert_eq!(p.pick(Algorithm::LeastRequest, &es, None, now), Some(2));
        }
        // Ties rotate instead of always taking the first.
        let idle = endpoints(3, now);
        let c = counts(&p, Algorithm::LeastRequest, &idle, 30, now);
        assert_eq!(c, [10, 10, 10]);
    }

    /// Sends `requests` one after another through `a`, each taking 20 ms on endpoint 0
    /// and 1 ms on the others (a simulated clock); the share endpoint 0 served.
    fn slow_share(a: Algorithm, requests: usize) -> f64 {
        let mut now = Instant::now() + Duration::from_secs(60);
        // Endpoints that have been up a while before traffic comes, as replicas are:
        // their first sample sets their estimate.
        let es = endpoints(3, now - Duration::from_secs(60));
        let p = Picker::seeded(7);
        let mut slow = 0;
        for _ in 0..requests {
            let i = p.pick(a, &es, None, now).unwrap();
            let took = if i == 0 {
                slow += 1;
                Duration::from_millis(20)
            } else {
                Duration::from_millis(1)
            };
            let guard = es[i].load.start(now);
            now += took;
            guard.finish(now);
        }
        slow as f64 / requests as f64
    }

    #[test]
    fn p2c_ewma_sends_a_slow_endpoint_far_less_than_round_robin() {
        let rr = slow_share(Algorithm::RoundRobin, 3_000);
        let p2c = slow_share(Algorithm::P2cEwma, 3_000);
        assert!((rr - 1.0 / 3.0).abs() < 0.01, "{rr}");
        assert!(
            p2c < rr / 5.0,
            "p2c-ewma sent {p2c:.3} of requests to the slow one"
        );
        assert!(p2c > 0.0, "it was measured at least once");
    }

    #[test]
    fn p2c_ewma_tries_endpoints_made_a_little_later() {
        // Three pods made a millisecond apart, then fast sequential requests: the
        // default estimates must not rank them for good (the youngest got nothing).
        let t0 = Instant::now();
        let es: Vec<E> = (0..3)
            .map(|i| E {
                name: format!("e{i}"),
                ready: true,
                load: Load::new(t0 + Duration::from_millis(i)),
            })
            .collect();
        let p = Picker::seeded(7);
        let mut now = t0 + Duration::from_secs(1);
        let mut c = [0; 3];
        for _ in 0..60 {
            let i = p.pick(Algorithm::P2cEwma, &es, None, now).unwrap();
            c[i] += 1;
            let f = es[i].load.start(now);
            now += Duration::from_micros(300);
            f.finish(now);
            now += Duration::from_millis(2);
        }
        assert!(c.iter().all(|&n| n >= 5), "{c:?}");
    }

    #[test]
    fn ejected_endpoints_are_skipped_unless_all_are() {
        let now = Instant::now();
        let es = endpoints(3, now);
        for _ in 0..crate::load::EJECT_AFTER {
            es[1].load.failed(now);
        }
        let p = Picker::seeded(3);
        for a in Algorithm::ALL {
            let c = counts(&p, a, &es, 60, now);
            assert_eq!(c[1], 0, "{a}: {c:?}");
        }
        for e in &es {
            for _ in 0..crate::load::EJECT_AFTER {
                e.load.failed(now);
            }
        }
        assert!(
            p.pick(Algorithm::RoundRobin, &es, None, now).is_some(),
            "all ejected: all serve"
        );
    }

    #[test]
    fn least_request_avoids_an_endpoint_holding_requests() {
        let now = Instant::now();
        let es = endpoints(3, now);
        let p = Picker::seeded(9);
        // Endpoint 0 is slow: its requests stay in flight while others finish.
        let mut held = Vec::new();
        let mut c = [0usize; 3];
        for _ in 0..300 {
            let i = p.pick(Algorithm::LeastRequest, &es, None, now).unwrap();
            c[i] += 1;
            let guard = es[i].load.start(now);
            if i == 0 {
                held.push(guard);
            }
        }
        assert!(c[0] <= 2, "{c:?}");
    }

    #[test]
    fn hash_keeps_keys_on_their_endpoint_when_others_come_and_go() {
        let now = Instant::now();
        let mut es = endpoints(5, now);
        let p = Picker::seeded(5);
        let keys: Vec<String> = (0..200).map(|i| format!("client-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| {
                p.pick(Algorithm::Hash, &es, Some(k.as_bytes()), now)
                    .unwrap()
            })
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| {
                p.pick(Algorithm::Hash, &es, Some(k.as_bytes()), now)
                    .unwrap()
            })
            .collect();
        assert_eq!(before, again, "sticky");
        es[3].ready = false;
        for (k, was) in keys.iter().zip(&before) {
            let now_on = p
                .pick(Algorithm::Hash, &es, Some(k.as_bytes()), now)
                .unwrap();
            if *was != 3 {
                assert_eq!(now_on, *was, "{k} moved though its endpoint stayed");
            } else {
                assert_ne!(now_on, 3);
            }
        }
        let used: std::collections::BTreeSet<_> = before.iter().collect();
        assert_eq!(used.len(), 5, "keys spread over every endpoint");
    }
}
