//! The NodePort controller: which of this node's ports serve which NodePort Service, as
//! a function of plain values (the ports each Service asks for, the listeners there
//! are). The data plane ([`crate::ingress::NodePorts`]) binds and unbinds them.

use std::collections::{BTreeMap, BTreeSet};

/// One change to the node's listeners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ListenerAction {
    /// Listen on `port` for `service` (again, if it could not be bound before).
    Bind {
        /// The port.
        port: u16,
        /// The Service it serves.
        service: String,
    },
    /// Stop listening on `port` (or stop trying to).
    Unbind {
        /// The port.
        port: u16,
    },
}

/// The actions that make the listeners `bound` (port -> Service) and the ports that
/// could not be bound (`failing`) match `wants` (Service -> its node ports). When two
/// Services ask for one port, the one last in name order has it. Unbinds come first, so
/// a port that moves to another Service is free when it is bound again.
pub(super) fn reconcile(
    wants: &BTreeMap<String, Vec<u16>>,
    bound: &BTreeMap<u16, String>,
    failing: &BTreeSet<u16>,
) -> Vec<ListenerAction> {
    let wanted: BTreeMap<u16, &String> = wants
        .iter()
        .flat_map(|(name, ports)| ports.iter().map(move |p| (*p, name)))
        .collect();
    let mut actions: Vec<ListenerAction> = bound
        .iter()
        .filter(|(port, service)| wanted.get(port) != Some(service))
        .map(|(port, _)| *port)
        .chain(failing.iter().copied().filter(|p| !wanted.contains_key(p)))
        .map(|port| ListenerAction::Unbind { port })
        .collect();
    actions.extend(
        wanted
            .into_iter()
            .filter(|(port, service)| bound.get(port) != Some(*service))
            .map(|(port, service)| ListenerAction::Bind {
                port,
                service: service.clone(),
            }),
    );
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(list: &[(&str, &[u16])]) -> BTreeMap<String, Vec<u16>> {
        list.iter()
            .map(|(n, p)| (n.to_string(), p.to_vec()))
            .collect()
    }

    fn bound(list: &[(u16, &str)]) -> BTreeMap<u16, String> {
        list.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    fn bind(port: u16, service: &str) -> ListenerAction {
        ListenerAction::Bind {
            port,
            service: service.into(),
        }
    }

    #[test]
    fn binds_what_is_asked_and_nothing_twice() {
        let w = wants(&[("web", &[30080, 30443]), ("api", &[])]);
        assert_eq!(
            reconcile(&w, &BTreeMap::new(), &BTreeSet::new()),
            [bind(30080, "web"), bind(30443, "web")]
        );
        let b = bound(&[(30080, "web"), (30443, "web")]);
        assert!(reconcile(&w, &b, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_port_no_longer_asked_for_or_moved_is_unbound_first() {
        let w = wants(&[("api", &[30080])]);
        let b = bound(&[(30080, "web"), (30443, "web")]);
        assert_eq!(
            reconcile(&w, &b, &BTreeSet::new()),
            [
                ListenerAction::Unbind { port: 30080 },
                ListenerAction::Unbind { port: 30443 },
                bind(30080, "api"),
            ]
        );
    }

    #[test]
    fn a_port_that_failed_is_tried_again_while_asked_for_and_forgotten_after() {
        let failing = BTreeSet::from([30080]);
        let w = wants(&[("web", &[30080])]);
        assert_eq!(
            reconcile(&w, &BTreeMap::new(), &failing),
            [bind(30080, "web")]
        );
        assert_eq!(
            reconcile(&BTreeMap::new(), &BTreeMap::new(), &failing),
            [ListenerAction::Unbind { port: 30080 }]
        );
    }

    #[test]
    fn two_services_asking_for_one_port_give_it_to_the_last_by_name() {
        let w = wants(&[("a", &[30080]), ("b", &[30080])]);
        assert_eq!(
            reconcile(&w, &BTreeMap::new(), &BTreeSet::new()),
            [bind(30080, "b")]
        );
    }
}
