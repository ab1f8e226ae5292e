//! The gateway: which replica serves a request.
//!
//! A [`RoutingTable`] maps an app's host label to its [`Backends`], the replicas that may
//! serve it. The table is swapped atomically (readers never lock, never see half an
//! update), so a redeploy replaces the whole set of replicas in one step: requests that
//! already picked an old replica finish on it, every later request sees only new ones.
//!
//! Generic over the endpoint type so it never links wasmtime: the node's containers are
//! endpoints here, remote nodes will be too. Starts with round-robin over ready
//! endpoints; the other balancers, health and discovery grow here with the gateway issue.

#![deny(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

/// Something requests can be sent to.
pub trait Endpoint: Send + Sync {
    /// Whether it takes requests now.
    fn is_ready(&self) -> bool;
}

/// The replicas of one route, balanced round-robin over the ready ones.
#[derive(Debug)]
pub struct Backends<E> {
    endpoints: Vec<Arc<E>>,
    next: AtomicUsize,
}

impl<E: Endpoint> Backends<E> {
    /// A set of endpoints.
    pub fn new(endpoints: Vec<Arc<E>>) -> Self {
        Self {
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// All endpoints, ready or not.
    pub fn endpoints(&self) -> &[Arc<E>] {
        &self.endpoints
    }

    /// The next ready endpoint in round-robin order, or `None` when none is ready.
    pub fn pick(&self) -> Option<Arc<E>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| e.is_ready())
            .cloned()
    }
}

/// Host label -> backends, read lock-free, replaced atomically.
pub struct RoutingTable<E> {
    routes: ArcSwap<HashMap<String, Arc<Backends<E>>>>,
}

impl<E: Endpoint> Default for RoutingTable<E> {
    fn default() -> Self {
        Self {
            routes: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl<E: Endpoint> RoutingTable<E> {
    /// The backends for `label`.
    pub fn get(&self, label: &str) -> Option<Arc<Backends<E>>> {
        self.routes.load().get(label).cloned()
    }

    /// Replaces the backends of `label` in one atomic step; returns the previous ones.
    pub fn set(&self, label: &str, endpoints: Vec<Arc<E>>) -> Option<Arc<Backends<E>>> {
        let backends = Arc::new(Backends::new(endpoints));
        let mut previous = None;
        self.routes.rcu(|routes| {
            let mut next = HashMap::clone(routes);
            previous = next.insert(label.to_string(), backends.clone());
            next
        });
        previous
    }

    /// Removes a route; returns its backends.
    pub fn remove(&self, label: &str) -> Option<Arc<Backends<E>>> {
        let mut previous = None;
        self.routes.rcu(|routes| {
            let mut next = HashMap::clone(routes);
            previous = next.remove(label);
            next
        });
        previous
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
    use std::sync::atomic::AtomicBool;

    use super::*;

    struct E(u32, AtomicBool);
    impl Endpoint for E {
        fn is_ready(&self) -> bool {
            self.1.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn round_robin_skips_unready() {
        let eps: Vec<Arc<E>> = (0..3)
            .map(|i| Arc::new(E(i, AtomicBool::new(true))))
            .collect();
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
        t.set("a", vec![Arc::new(E(1, AtomicBool::new(true)))]);
        let held = t.get("a").unwrap();
        let old = t
            .set("a", vec![Arc::new(E(2, AtomicBool::new(true)))])
            .unwrap();
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
