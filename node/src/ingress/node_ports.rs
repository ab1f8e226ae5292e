//! NodePort listeners: the data plane's half of NodePort Services. The reconciler's
//! NodePort controller decides which port serves which Service; this binds and unbinds
//! them, on the ingress's address, each served as the ingress serves a route.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Ingress, Target, serve};

/// The node's NodePort listeners.
pub(crate) struct NodePorts {
    ingress: Arc<Ingress>,
    /// The node's shutdown: every listener stops with it.
    shutdown: CancellationToken,
    /// How long a listener that stops waits for requests in flight.
    drain: Duration,
    listeners: Mutex<Listeners>,
}

#[derive(Default)]
struct Listeners {
    /// Port -> (Service, what stops its listener).
    bound: BTreeMap<u16, (String, CancellationToken)>,
    /// Ports that could not be bound, with why (warned about once per reason).
    failing: BTreeMap<u16, String>,
}

impl NodePorts {
    /// No listeners yet; those bound later serve `ingress` until `shutdown`.
    pub(crate) fn new(ingress: Arc<Ingress>, shutdown: CancellationToken, drain: Duration) -> Self {
        Self {
            ingress,
            shutdown,
            drain,
            listeners: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ports listening now, with their Services, and the ports that could not be
    /// bound.
    pub(crate) fn listening(&self) -> (BTreeMap<u16, String>, BTreeSet<u16>) {
        let l = self.lock();
        let bound = l.bound.iter().map(|(p, (s, _))| (*p, s.clone())).collect();
        (bound, l.failing.keys().copied().collect())
    }

    /// Listens on `port` for `service` (a port another Service had is unbound first by
    /// the caller). A port that cannot be bound is remembered, warned about once per
    /// reason, and tried again when asked again.
    pub(crate) fn bind(&self, port: u16, service: &str) {
        let mut l = self.lock();
        if l.bound.get(&port).is_some_and(|(s, _)| s == service) {
            return;
        }
        let addr = SocketAddr::new(self.ingress.node_port_ip, port);
        let bound = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std);
        match bound {
            Ok(listener) => {
                let stop = self.shutdown.child_token();
                tokio::spawn(serve(
                    listener,
                    self.ingress.clone(),
                    Target::Route(service.to_string()),
                    stop.clone(),
                    self.drain,
                ));
                info!(%service, %addr, "node port listening");
                l.failing.remove(&port);
                l.bound.insert(port, (service.to_string(), stop));
            }
            Err(e) => {
                let e = e.to_string();
                if l.failing.get(&port) != Some(&e) {
                    warn!(%service, %addr, error = %e, "cannot listen on the node port; trying again");
                    l.failing.insert(port, e);
                }
            }
        }
    }

    /// Stops listening on `port` (requests in flight finish), and forgets that it could
    /// not be bound.
    pub(crate) fn unbind(&self, port: u16) {
        let mut l = self.lock();
        if let Some((_, stop)) = l.bound.remove(&port) {
            stop.cancel();
        }
        l.failing.remove(&port);
    }
}
