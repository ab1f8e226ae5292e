//! The Service controller: each Service's route points at the ready pods its selector
//! picks, here and (through their ingresses) on other nodes, balanced as it asks. What a
//! route should hold is a function of plain values ([`reconcile`]: the Service, the
//! endpoints selected, the routes there are); the pass selects the endpoints, applies
//! the actions to the routing table, and hands NodePort Services' ports to the
//! NodePort controller.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skiff_gateway::{Algorithm, Backends, Balancing, HashOn};
use skiff_spec::k8s::Service;
use skiff_spec::manifest::{HASH_ON_ANNOTATION, LOAD_BALANCER_ANNOTATION};

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

/// The node ports a Service asks for (none unless it is a NodePort Service).
pub(super) fn node_ports(service: &Service) -> Vec<u16> {
    if service.spec.kind.as_deref() != Some("NodePort") {
        return Vec::new();
    }
    service
        .spec
        .ports
        .iter()
        .filter_map(|p| p.node_port.and_then(|np| u16::try_from(np).ok()))
        .collect()
}

/// One change to the routing table.
pub(super) enum RouteAction {
    /// Point route `label` at these endpoints, balanced so.
    Set {
        /// The route's label.
        label: String,
        /// What it holds.
        key: RouteKey,
    },
    /// Remove route `label`.
    Remove {
        /// The route's label.
        label: String,
    },
}

/// The routes of Service `name` (`None`: it is gone): its route holds every endpoint
/// (`local`, this node's pods, then `remote`, other nodes'), its local route (what
/// requests other nodes forward are served from) this node's. A route is set only when
/// what it holds changed (endpoint statistics live on the endpoints, so they survive
/// the swap either way); `routes` are those set now.
pub(super) fn reconcile(
    name: &str,
    service: Option<&Service>,
    local: Vec<Arc<Container>>,
    remote: Vec<Arc<Container>>,
    routes: &BTreeMap<String, RouteKey>,
) -> Vec<RouteAction> {
    let local_name = crate::route::local(name);
    let Some(service) = service else {
        return [name.to_string(), local_name]
            .into_iter()
            .filter(|label| routes.contains_key(label))
            .map(|label| RouteAction::Remove { label })
            .collect();
    };
    let all: Vec<Arc<Container>> = local.iter().chain(&remote).cloned().collect();
    [(name.to_string(), all), (local_name, local)]
        .into_iter()
        .filter_map(|(label, endpoints)| {
            let key = RouteKey {
                containers: endpoints,
                balancing: balancing(service),
            };
            (routes.get(&label) != Some(&key)).then_some(RouteAction::Set { label, key })
        })
        .collect()
}

/// The routes of Services not in `wanted` (after a full pass: routes of Services gone).
pub(super) fn stale(routes: &BTreeMap<String, RouteKey>, wanted: &BTreeSet<&str>) -> Vec<String> {
    routes
        .keys()
        .filter(|n| {
            let service = n.strip_prefix(crate::route::LOCAL_ROUTE).unwrap_or(n);
            !wanted.contains(service)
        })
        .cloned()
        .collect()
}

impl Reconciler {
    /// Runs the Service controller over `services` and the NodePort controller over
    /// every NodePort Service, and applies what they decide: routes set and removed,
    /// node ports bound and unbound.
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
        let mut remotes_used = BTreeSet::new();
        for (name, service) in services {
            let (local, remote) = match service {
                None => {
                    inner.selectors.remove(name);
                    inner.node_port_wants.remove(name);
                    (Vec::new(), Vec::new())
                }
                Some(service) => {
                    inner.selectors.set(name, &service.spec.selector);
                    let ports = node_ports(service);
                    if ports.is_empty() {
                        inner.node_port_wants.remove(name);
                    } else {
                        inner.node_port_wants.insert(name.clone(), ports);
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
                    (local, remote)
                }
            };
            for action in reconcile(name, service.as_ref(), local, remote, &inner.routes) {
                self.apply_route(&mut inner, action);
            }
        }
        if full {
            // Endpoints for other nodes' pods of Services no longer routed, and routes of
            // Services gone.
            inner.remotes.retain(|_, c| remotes_used.contains(&c.id));
            let wanted: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
            for label in stale(&inner.routes, &wanted) {
                self.apply_route(&mut inner, RouteAction::Remove { label });
            }
        }
        // NodePort Services also listen on their node ports, on the ingress's address.
        let (bound, failing) = self.node_ports.listening();
        for action in node_ports::reconcile(&inner.node_port_wants, &bound, &failing) {
            match action {
                node_ports::ListenerAction::Bind { port, service } => {
                    self.node_ports.bind(port, &service);
                }
                node_ports::ListenerAction::Unbind { port } => self.node_ports.unbind(port),
            }
        }
    }

    fn apply_route(&self, inner: &mut Inner, action: RouteAction) {
        match action {
            RouteAction::Set { label, key } => {
                let backends =
                    Backends::balanced(key.containers.clone(), key.balancing.clone()).for_service();
                self.ingress.table.set_backends(&label, backends);
                inner.routes.insert(label, key);
            }
            RouteAction::Remove { label } => {
                if inner.routes.remove(&label).is_some() {
                    self.ingress.table.remove(&label);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use skiff_spec::manifest::{Object, parse};

    use super::*;

    fn service(yaml_extra: &str) -> Service {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n{yaml_extra}spec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n"
        );
        match parse("s.yaml", &yaml).unwrap().remove(0).object {
            Object::Service(s) => *s,
            Object::Deployment(_) => unreachable!(),
        }
    }

    fn labels(actions: &[RouteAction]) -> Vec<(&str, &str)> {
        actions
            .iter()
            .map(|a| match a {
                RouteAction::Set { label, .. } => ("set", label.as_str()),
                RouteAction::Remove { label } => ("remove", label.as_str()),
            })
            .collect()
    }

    #[test]
    fn a_service_gets_its_route_and_local_route_once() {
        let web = service("");
        let actions = reconcile("web", Some(&web), Vec::new(), Vec::new(), &BTreeMap::new());
        assert_eq!(labels(&actions), [("set", "web"), ("set", "local:web")]);
        let routes: BTreeMap<String, RouteKey> = actions
            .into_iter()
            .map(|a| match a {
                RouteAction::Set { label, key } => (label, key),
                RouteAction::Remove { .. } => unreachable!(),
            })
            .collect();
        // Nothing changed: the routing table is left alone.
        assert!(reconcile("web", Some(&web), Vec::new(), Vec::new(), &routes).is_empty());
        // Another balancer: both routes are set again.
        let hashed = service("  annotations:\n    skiff.dev/load-balancer: random\n");
        let again = reconcile("web", Some(&hashed), Vec::new(), Vec::new(), &routes);
        assert_eq!(labels(&again), [("set", "web"), ("set", "local:web")]);
        // Gone: both routes go, and only routes that exist.
        assert_eq!(
            labels(&reconcile("web", None, Vec::new(), Vec::new(), &routes)),
            [("remove", "web"), ("remove", "local:web")]
        );
        assert!(reconcile("api", None, Vec::new(), Vec::new(), &routes).is_empty());
        let wanted = BTreeSet::from(["api"]);
        assert_eq!(stale(&routes, &wanted), ["local:web", "web"]);
        assert!(stale(&routes, &BTreeSet::from(["web"])).is_empty());
    }

    #[test]
    fn only_a_node_port_service_asks_for_node_ports() {
        assert!(node_ports(&service("")).is_empty());
        let mut np = service("");
        np.spec.kind = Some("NodePort".into());
        np.spec.ports[0].node_port = Some(30080);
        assert_eq!(node_ports(&np), [30080]);
        np.spec.kind = Some("ClusterIP".into());
        assert!(node_ports(&np).is_empty());
    }
}
