//! The gateway: which replica serves a request.
//!
//! A [`RoutingTable`] maps an app's host label to its [`Backends`], the replicas that may
//! serve it. The table is swapped atomically (readers never lock, never see half an
//! update), so a redeploy replaces the whole set of replicas in one step: requests that
//! already picked an old replica finish on it, every later request sees only new ones.
//!
//! Generic over the endpoint type so it never links wasmtime: the node's containers are
//! endpoints here, remote nodes will be too. Each endpoint carries its [`load::Load`]
//! (requests in flight, a peak-EWMA latency estimate), so its statistics live as long as
//! it does and survive table swaps; [`balancer`] picks among the ready ones by the
//! backends' [`Algorithm`]. Apps are balanced round-robin; Services name their algorithm
//! (default `p2c-ewma`) with [`Balancing`].

#![deny(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub mod balancer;
pub mod load;

pub use balancer::{Algorithm, UnknownAlgorithm};
pub use load::{InFlight, Load};

/// Something requests can be sent to.
pub trait Endpoint: Send + Sync {
    /// Whether it takes requests now.
    fn is_ready(&self) -> bool;
    /// What it is carrying (kept by the endpoint, so it outlives table swaps).
    fn load(&self) -> &Load;
    /// A stable name (what `hash` balancing hashes with the request's key).
    fn name(&self) -> &str;
}

/// An endpoint as the balancer sees it.
impl<E: Endpoint> balancer::Candidate for Arc<E> {
    fn ready(&self) -> bool {
        self.is_ready()
    }
    fn load(&self) -> &Load {
        Endpoint::load(self.as_ref())
    }
    fn key(&self) -> &str {
        self.name()
    }
}

/// What `hash` balancing hashes: a request header's value or the client's address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HashOn {
    /// The client's IP address.
    #[default]
    Client,
    /// A header (lower-case name); requests without it hash on the client.
    Header(String),
}

impl HashOn {
    /// From a `skiff.dev/hash-on` annotation: `client` or a header name.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim().to_ascii_lowercase();
        if v.is_empty() || v == "client" {
            return Ok(HashOn::Client);
        }
        if http_token(&v) {
            Ok(HashOn::Header(v))
        } else {
            Err(format!("{value:?} is neither \"client\" nor a header name"))
        }
    }
}

fn http_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// How a route balances: its algorithm and, for `hash`, what it hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balancing {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// For `hash`.
    pub hash_on: HashOn,
}

/// The replicas of one route, balanced over the ready ones by an [`Algorithm`].
#[derive(Debug)]
pub struct Backends<E> {
    endpoints: Vec<Arc<E>>,
    algorithm: Algorithm,
    hash_on: HashOn,
    picker: balancer::Picker,
    /// A Service's route: requests are retried and counted per endpoint.
    service: bool,
}

impl<E: Endpoint> Backends<E> {
    /// A set of endpoints, balanced round-robin.
    pub fn new(endpoints: Vec<Arc<E>>) -> Self {
        Self::with_algorithm(endpoints, Algorithm::RoundRobin)
    }

    /// A set of endpoints, balanced by `algorithm`.
    pub fn with_algorithm(endpoints: Vec<Arc<E>>, algorithm: Algorithm) -> Self {
        Self::balanced(
            endpoints,
            Balancing {
                algorithm,
                hash_on: HashOn::Client,
            },
        )
    }

    /// A set of endpoints, balanced as `balancing` says.
    pub fn balanced(endpoints: Vec<Arc<E>>, balancing: Balancing) -> Self {
        Self {
            endpoints,
            algorithm: balancing.algorithm,
            hash_on: balancing.hash_on,
            picker: balancer::Picker::default(),
            service: false,
        }
    }

    /// Marks the route as a Service's.
    pub fn for_service(mut self) -> Self {
        self.service = true;
        self
    }

    /// Whether it is a Service's route.
    pub fn is_service(&self) -> bool {
        self.service
    }

    /// What `hash` balancing hashes.
    pub fn hash_on(&self) -> &HashOn {
        &self.hash_on
    }

    /// The endpoint for a request from `client` whose headers `header` looks up: `hash`
    /// balancing hashes the header it is set to (the client's address when the request
    /// has none, or when it hashes on the client); the other algorithms ignore both.
    pub fn pick_for<'a>(
        &self,
        client: std::net::IpAddr,
        header: impl FnOnce(&str) -> Option<&'a [u8]>,
    ) -> Option<Arc<E>> {
        if self.algorithm != Algorithm::Hash {
            return self.pick();
        }
        // 16 bytes whatever the family: no allocation on the request path.
        let client = match client {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let key = match &self.hash_on {
            HashOn::Header(h) => header(h).unwrap_or(&client[..]),
            HashOn::Client => &client[..],
        };
        self.pick_keyed(Some(key))
    }

    /// All endpoints, ready or not.
    pub fn endpoints(&self) -> &[Arc<E>] {
        &self.endpoints
    }

    /// How they are balanced.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The ready endpoint the algorithm picks, or `None` when none is ready.
    pub fn pick(&self) -> Option<Arc<E>> {
        self.pick_keyed(None)
    }

    /// As [`Backends::pick`], with the key `hash` balancing hashes (a header's value,
    /// the client's address).
    pub fn pick_keyed(&self, key: Option<&[u8]>) -> Option<Arc<E>> {
        self.picker
            .pick(
                self.algorithm,
                &self.endpoints,
                key,
                std::time::Instant::now(),
            )
            .map(|i| self.endpoints[i].clone())
    }
}

/// Shards of the routing table: each is locked on its own, so requests for different
/// routes rarely meet on one lock.
const SHARDS: usize = 16;

type Shard<E> = RwLock<HashMap<String, Arc<Backends<E>>>>;

/// Host label -> backends. A route is replaced in one step (a request sees the old
/// backends or the new, never a mix); changing one costs that route, not the table
/// (a node with 10,000 apps changes routes as fast as one with ten).
pub struct RoutingTable<E> {
    shards: Box<[Shard<E>]>,
}

impl<E: Endpoint> Default for RoutingTable<E> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl<E: Endpoint> RoutingTable<E> {
    fn shard(&self, label: &str) -> &Shard<E> {
        // FNV-1a: fixed, so a label's shard is the same in every process.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in label.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// The backends for `label`.
    pub fn get(&self, label: &str) -> Option<Arc<Backends<E>>> {
        self.shard(label)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
            .cloned()
    }

    /// Replaces the backends of `label` in one atomic step; returns the previous ones.
    pub fn set(&self, label: &str, endpoints: Vec<Arc<E>>) -> Option<Arc<Backends<E>>> {
        self.set_backends(label, Backends::new(endpoints))
    }

    /// Replaces the backends of `label` with `backends` in one atomic step; returns the
    /// previous ones.
    pub fn set_backends(&self, label: &str, backends: Backends<E>) -> Option<Arc<Backends<E>>> {
        let backends = Arc::new(backends);
        self.shard(label)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label.to_string(), backends)
    }

    /// Every route now (a copy: for reports, not for requests).
    pub fn routes(&self) -> HashMap<String, Arc<Backends<E>>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Removes a route; returns its backends.
    pub fn remove(&self, label: &str) -> Option<Arc<Backends<E>>> {
        self.shard(label)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(label)
    }
}

/// The app label a `Host` header names under `domain`: `hello.localhost:7780` ->
/// `hello` for domain `localhost`. Case-insensitive; `None` for other hosts.
pub fn host_label<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let split = host.len().checked_sub(domain.len() + 1)?;
    if !host.is_char_boundary(split) {
        return None;
    }
    let (label, suffix) = host.split_at(split);
    (suffix.starts_with('.')
        && suffix[1..].eq_ignore_ascii_case(domain)
        && !label.is_empty()
        && !label.contains('.'))
    .then_some(label)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct E(u32, AtomicBool, Load, String);
    impl Endpoint for E {
        fn is_ready(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
        fn load(&self) -> &Load {
            &self.2
        }
        fn name(&self) -> &str {
            &self.3
        }
    }

    fn e(i: u32) -> Arc<E> {
        Arc::new(E(
            i,
            AtomicBool::new(true),
            Load::default(),
            format!("e{i}"),
        ))
    }

    #[test]
    fn endpoint_statistics_survive_table_swaps() {
        let t = RoutingTable::default();
        let (a, b) = (e(1), e(2));
        t.set("app", vec![a.clone()]);
        let picked = t.get("app").unwrap().pick().unwrap();
        let _busy = picked.load().start(std::time::Instant::now());
        // A new set that keeps `a`: its requests in flight are still counted.
        t.set("app", vec![a.clone(), b]);
        let now = t.get("app").unwrap();
        assert_eq!(now.endpoints()[0].load().in_flight(), 1);
        let b = Backends::with_algorithm(now.endpoints().to_vec(), Algorithm::LeastRequest);
        assert_eq!(b.pick().unwrap().0, 2, "least-request sees the busy one");
    }

    #[test]
    fn hash_routes_by_the_header_it_names_else_by_the_client() {
        let eps: Vec<Arc<E>> = (0..5).map(e).collect();
        let b = Backends::balanced(
            eps,
            Balancing {
                algorithm: Algorithm::Hash,
                hash_on: HashOn::parse("X-User").unwrap(),
            },
        );
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let by_user = |user: &'static [u8]| {
            b.pick_for(ip, |h| (h == "x-user").then_some(user))
                .unwrap()
                .0
        };
        assert_eq!(by_user(b"alice"), by_user(b"alice"));
        let users: std::collections::BTreeSet<u32> =
            [&b"a"[..], b"b", b"c", b"d", b"e", b"f", b"g", b"h"]
                .into_iter()
                .map(|u| b.pick_for(ip, |_| Some(u)).unwrap().0)
                .collect();
        assert!(users.len() > 1, "keys spread: {users:?}");
        // Without the header: the client's address decides, the same each time.
        let first = b.pick_for(ip, |_| None).unwrap().0;
        assert!((0..10).all(|_| b.pick_for(ip, |_| None).unwrap().0 == first));
        assert!(HashOn::parse("not a header").is_err());
    }

    #[test]
    fn round_robin_skips_unready() {
        let eps: Vec<Arc<E>> = (0..3).map(e).collect();
        let b = Backends::new(eps.clone());
        let picks: Vec<u32> = (0..6).map(|_| b.pick().unwrap().0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        eps[1].1.store(false, Ordering::Relaxed);
        let picks: Vec<u32> = (0..4).map(|_| b.pick().unwrap().0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        for e in &eps {
            e.1.store(false, Ordering::Relaxed);
        }
        assert!(b.pick().is_none());
        assert!(Backends::<E>::new(vec![]).pick().is_none());
    }

    #[test]
    fn table_swaps_whole_sets() {
        let t = RoutingTable::default();
        assert!(t.get("a").is_none());
        t.set("a", vec![e(1)]);
        let held = t.get("a").unwrap();
        let old = t.set("a", vec![e(2)]).unwrap();
        assert_eq!(old.pick().unwrap().0, 1);
        assert_eq!(held.pick().unwrap().0, 1, "a reader keeps what it loaded");
        assert_eq!(t.get("a").unwrap().pick().unwrap().0, 2);
        assert!(t.remove("a").is_some());
        assert!(t.get("a").is_none());
    }

    #[test]
    fn labels_from_host_headers() {
        assert_eq!(
            host_label("hello.localhost:7780", "localhost"),
            Some("hello")
        );
        assert_eq!(host_label("Hello.LOCALHOST", "localhost"), Some("Hello"));
        assert_eq!(host_label("hello.localhost.", "localhost"), Some("hello"));
        assert_eq!(host_label("a.b.localhost", "localhost"), None);
        assert_eq!(host_label("localhost:7780", "localhost"), None);
        assert_eq!(host_label("hello.example.com", "localhost"), None);
        assert_eq!(
            host_label("hello.apps.example.com", "apps.example.com"),
            Some("hello")
        );
        assert_eq!(host_label("xlocalhost", "localhost"), None);
        // A split that would fall inside a character is no label (it used to panic).
        assert_eq!(host_label("xélocalhost", "localhost"), None);
    }
}
