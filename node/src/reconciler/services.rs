//! Services to routes: each Service's route points at the ready pods its selector
//! picks, here and (through their ingresses) on other nodes, balanced as it asks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skiff_gateway::{Algorithm, Backends, Balancing, HashOn};
use skiff_spec::k8s::Service;
use skiff_spec::manifest::{HASH_ON_ANNOTATION, LOAD_BALANCER_ANNOTATION};
use tracing::{info, warn};

use super::*;
use crate::container::Container;

/// The reconciler's view of a Service's balancing.
pub(super) fn balancing(service: &Service) -> Balancing {
    let annotations = &service.metadata.annotations;
    Balancing {
        algorithm: annotations
            .get(LOAD_BALANCER_ANNOTATION)
            .and_then(|a| a.parse().ok())
            .unwrap_or(Algorithm::P2cEwma),
        hash_on: annotations
            .get(HASH_ON_ANNOTATION)
            .and_then(|h| HashOn::parse(h).ok())
            .unwrap_or_default(),
    }
}

impl Reconciler {
    /// Points each Service's route at the running pods its selector picks, here and on
    /// the other live nodes, and its local route (what requests other nodes forward are
    /// served from) at the ones here; swaps a route only when what it holds changed
    /// (endpoint statistics live on the endpoints, so they survive the swap either way).
    pub(super) fn route_services(
        &self,
        services: &[(String, Option<Service>)],
        view: &crate::cluster::View,
        full: bool,
    ) {
        let mut inner = self.pods.lock();
        if full {
            inner.selectors.clear();
            inner.node_port_wants.clear();
        }
        let mut remotes_used = std::collections::BTreeSet::new();
        for (name, service) in services {
            let local_name = crate::route::local(name);
            let Some(service) = service else {
                inner.selectors.remove(name);
                inner.node_port_wants.remove(name);
                for label in [name, &local_name] {
                    if inner.routes.remove(label).is_some() {
                        self.ingress.table.remove(label);
                    }
                }
                continue;
            };
            inner.selectors.set(name, &service.spec.selector);
            let node_ports: Vec<u16> = if service.spec.kind.as_deref() == Some("NodePort") {
                service
                    .spec
                    .ports
                    .iter()
                    .filter_map(|p| p.node_port.and_then(|np| u16::try_from(np).ok()))
                    .collect()
            } else {
                Vec::new()
            };
            if node_ports.is_empty() {
                inner.node_port_wants.remove(name);
            } else {
                inner.node_port_wants.insert(name.clone(), node_ports);
            }
            let local: Vec<Arc<Container>> = inner
                .pod_labels
                .selected(&service.spec.selector)
                .into_iter()
                .filter_map(|pod| inner.pods.get(pod))
                .filter_map(|p| p.running().cloned())
                .collect();
            let remote = spread::remote_endpoints(
                &mut inner,
                service,
                view,
                name,
                &self.remote_client,
                self.body_timeout,
            );
            remotes_used.extend(remote.iter().map(|c| c.id.clone()));
            let all: Vec<Arc<Container>> = local.iter().chain(&remote).cloned().collect();
            for (label, endpoints) in [(name, all), (&local_name, local)] {
                let key = RouteKey {
                    containers: endpoints,
                    balancing: balancing(service),
                };
                if inner.routes.get(label) != Some(&key) {
                    let backends =
                        Backends::balanced(key.containers.clone(), key.balancing.clone())
                            .for_service();
                    self.ingress.table.set_backends(label, backends);
                    inner.routes.insert(label.clone(), key);
                }
            }
        }
        if full {
            // Endpoints for other nodes' pods of Services no longer routed, and routes of
            // Services gone.
            inner.remotes.retain(|_, c| remotes_used.contains(&c.id));
            let wanted: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
            let gone: Vec<String> = inner
                .routes
                .keys()
                .filter(|n| {
                    let service = n.strip_prefix(crate::route::LOCAL_ROUTE).unwrap_or(n);
                    !wanted.contains(service)
                })
                .cloned()
                .collect();
            for name in gone {
                self.ingress.table.remove(&name);
                inner.routes.remove(&name);
            }
        }
        // NodePort Services also listen on their node ports, on the ingress's address.
        let wanted: BTreeMap<u16, String> = inner
            .node_port_wants
            .iter()
            .flat_map(|(name, ports)| ports.iter().map(move |p| (*p, name.clone())))
            .collect();
        inner.node_ports.retain(|port, (service, stop)| {
            let keep = wanted.get(port) == Some(&*service);
            if !keep {
                stop.cancel();
            }
            keep
        });
        inner.unbindable.retain(|port, _| wanted.contains_key(port));
        for (port, service) in wanted {
            if inner.node_ports.contains_key(&port) {
                continue;
            }
            let addr = std::net::SocketAddr::new(self.ingress.node_port_ip, port);
            let bound = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std);
            match bound {
                Ok(listener) => {
                    let stop = self.shutdown.child_token();
                    tokio::spawn(crate::ingress::serve(
                        listener,
                        self.ingress.clone(),
                        crate::ingress::Target::Route(service.clone()),
                        stop.clone(),
                        self.drain,
                    ));
                    info!(%service, %addr, "node port listening");
                    inner.unbindable.remove(&port);
                    inner.node_ports.insert(port, (service, stop));
                }
                Err(e) => {
                    let e = e.to_string();
                    if inner.unbindable.get(&port) != Some(&e) {
                        warn!(%service, %addr, error = %e, "cannot listen on the node port; trying again");
                        inner.unbindable.insert(port, e);
                    }
                }
            }
        }
    }
}
