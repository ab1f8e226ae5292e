//! The cluster's part in the reconciler: how many of each Deployment's pods this node
//! runs (placement over the live nodes), and the endpoints that stand for the pods of
//! other nodes in a Service's route.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skiff_runtime::{RemoteWorkload, Workload};
use skiff_spec::AppName;

use skiff_spec::k8s::DeploymentStatus;

use super::{Inner, PodPhase};
use crate::cluster::{PodCounts, View};
use crate::container::{Container, ContainerState};
use crate::desired::StoredDeployment;
use crate::placement::{self, Candidate, Want};
use skiff_spec::k8s::Service;

/// Most endpoints one other node stands for in a route (it balances further itself).
const MAX_REMOTE_PER_NODE: u32 = 16;

/// What a pod of `d`'s current template takes of a node's memory when placed, as
/// Kubernetes schedules: its memory request, else its limit (Kubernetes reads a limit
/// without a request as the request), else nothing. A pod that names neither holds no
/// memory at rest: a Wasm instance reserves its limit from the node's budget only while
/// it runs, so an idle app costs its share of the compiled code, and thousands fit.
fn memory(d: &crate::desired::StoredDeployment) -> u64 {
    let resources = d
        .object
        .spec
        .template
        .spec
        .containers
        .first()
        .and_then(|c| c.resources.as_ref());
    resources
        .and_then(|r| r.requests.get("memory").or_else(|| r.limits.get("memory")))
        .and_then(|q| q.bytes().ok())
        .unwrap_or(0)
}

/// How many pods of each of `deployments` this node should run now. From a view that
/// reaches a majority: its share by placement, kept higher while the other nodes' ready
/// pods do not make up for what it would give up. From a minority (or before gossip has
/// run): what it decided last, so a node cut off keeps serving and starts nothing of
/// others'.
///
/// A `full` pass places every Deployment in name order against each node's capacity;
/// a pass over a few places them against what the others took at their last placement
/// (under memory pressure the next full pass may move a pod; with room, both agree).
pub(super) fn local_targets(
    inner: &mut Inner,
    deployments: &[&StoredDeployment],
    cordoned: &BTreeSet<String>,
    view: &View,
    full: bool,
) -> BTreeMap<String, i32> {
    if !view.can_place {
        return deployments
            .iter()
            .map(|d| {
                let name = &d.object.metadata.name;
                (name.clone(), inner.shares.get(name).copied().unwrap_or(0))
            })
            .collect();
    }
    if full {
        inner.placed.clear();
        inner.placed_memory.clear();
    }
    for d in deployments {
        unplace(inner, &d.object.metadata.name);
    }
    let nodes: Vec<Candidate> = view
        .nodes
        .iter()
        .map(|n| Candidate {
            id: n.id.clone(),
            labels: n.labels.clone(),
            capacity: n
                .capacity
                .saturating_sub(inner.placed_memory.get(&n.id).copied().unwrap_or(0)),
            schedulable: !n.gateway && !cordoned.contains(&n.name),
        })
        .collect();
    let wants: Vec<Want> = deployments
        .iter()
        .map(|d| Want {
            name: d.object.metadata.name.clone(),
            replicas: u32::try_from(d.object.spec.replicas.unwrap_or(1)).unwrap_or(0),
            node_selector: d.object.spec.template.spec.node_selector.clone(),
            memory: memory(d),
        })
        .collect();
    // Where each Deployment's pods run now: this node's own count, the others' as they
    // gossip it.
    let mut current: placement::Current = BTreeMap::new();
    let mut local: BTreeMap<&str, u32> = BTreeMap::new();
    for want in &wants {
        let runs = current.entry(want.name.clone()).or_default();
        for n in view.nodes.iter().filter(|n| n.id != view.me) {
            if let Some(c) = n.pods.get(&want.name) {
                runs.insert(n.id.clone(), c.total);
            }
        }
        let here = inner
            .pods_of(&want.name)
            .filter(|(_, p)| p.phase() != PodPhase::Terminating)
            .count() as u32;
        if here > 0 {
            runs.insert(view.me.clone(), here);
        }
        local.insert(&want.name, here);
    }
    let placed = placement::place(&wants, &nodes, &current);
    let mut targets = BTreeMap::new();
    for want in &wants {
        let counts = placed.get(&want.name).cloned().unwrap_or_default();
        let share = counts.get(&view.me).copied().unwrap_or(0);
        for (node, n) in &counts {
            *inner.placed_memory.entry(node.clone()).or_default() +=
                want.memory.saturating_mul(u64::from(*n));
        }
        inner
            .placed
            .insert(want.name.clone(), (want.memory, counts.into()));
        let others_ready: u32 = view
            .nodes
            .iter()
            .filter(|n| n.id != view.me)
            .filter_map(|n| n.pods.get(&want.name))
            .map(|c| c.ready)
            .sum();
        let keep = placement::keep(
            share,
            local[want.name.as_str()],
            want.replicas,
            others_ready,
        );
        targets.insert(want.name.clone(), i32::try_from(keep).unwrap_or(i32::MAX));
    }
    if full {
        inner.shares.clone_from(&targets);
    } else {
        inner
            .shares
            .extend(targets.iter().map(|(n, t)| (n.clone(), *t)));
    }
    targets
}

/// What a change of the cluster's view touches: `None` when a node came, went or
/// changed, or this node's right to place did (everything is placed again); else the
/// Deployments whose pods on other nodes changed.
pub(super) fn view_changes(old: &View, new: &View) -> Option<BTreeSet<String>> {
    if old.me != new.me || old.can_place != new.can_place || old.nodes.len() != new.nodes.len() {
        return None;
    }
    let mut changed = BTreeSet::new();
    for (a, b) in old.nodes.iter().zip(&new.nodes) {
        let same_node = a.id == b.id
            && a.name == b.name
            && a.labels == b.labels
            && a.capacity == b.capacity
            && a.ingress == b.ingress
            && a.api == b.api
            && a.gateway == b.gateway;
        if !same_node {
            return None;
        }
        for (d, c) in &b.pods {
            if a.pods.get(d) != Some(c) {
                changed.insert(d.clone());
            }
        }
        changed.extend(a.pods.keys().filter(|d| !b.pods.contains_key(*d)).cloned());
    }
    Some(changed)
}

/// Forgets where Deployment `name` was placed (it is placed again, or gone).
pub(super) fn unplace(inner: &mut Inner, name: &str) {
    if let Some((memory, counts)) = inner.placed.remove(name) {
        for (node, n) in counts {
            if let Some(m) = inner.placed_memory.get_mut(&node) {
                *m = m.saturating_sub(memory.saturating_mul(u64::from(n)));
            }
        }
    }
}

/// The counts of the Deployments marked for gossip since the last call, as the last
/// pass counted them (`None`: no pods here any more).
pub(super) fn changed_pod_counts(inner: &mut Inner) -> Vec<(String, Option<PodCounts>)> {
    let n = |v: i32| u32::try_from(v).unwrap_or(0);
    let names = std::mem::take(&mut inner.regossip);
    names
        .into_iter()
        .map(|name| {
            let counts = inner.progress.get(&name).map(|p| {
                let (total, updated, ready, available) = p.counts;
                PodCounts {
                    hash: p.hash.clone(),
                    total: n(total),
                    updated: n(updated),
                    ready: n(ready),
                    available: n(available),
                }
            });
            (name, counts)
        })
        .collect()
}

/// `status` (this node's) with the counts of the Deployment's pods on every live node,
/// and `Available` judged on them.
pub(super) fn cluster_status(
    d: &crate::desired::StoredDeployment,
    mut status: DeploymentStatus,
    view: &View,
) -> DeploymentStatus {
    let name = &d.object.metadata.name;
    let current = &d.current().hash;
    for node in view.nodes.iter().filter(|n| n.id != view.me) {
        if let Some(c) = node.pods.get(name) {
            let n = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
            status.replicas += n(c.total);
            // A node still on an older revision has none of this one yet.
            if &c.hash == current {
                status.updated_replicas += n(c.updated);
            }
            status.ready_replicas += n(c.ready);
            status.available_replicas += n(c.available);
        }
    }
    let desired = d.object.spec.replicas.unwrap_or(1);
    let (_, max_unavailable) = crate::desired::rollout::bounds(&d.object);
    let available = status.available_replicas >= desired - max_unavailable;
    for c in status
        .conditions
        .iter_mut()
        .filter(|c| c.kind == "Available")
    {
        c.status = if available { "True" } else { "False" }.into();
        c.reason = Some(
            if available {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            }
            .into(),
        );
    }
    status
}

/// The endpoints standing for `service`'s pods on the other live nodes: one per ready
/// pod a node gossips (up to [`MAX_REMOTE_PER_NODE`]), kept across passes so their
/// statistics last.
pub(super) fn remote_endpoints(
    inner: &mut Inner,
    svc: &Service,
    view: &View,
    service: &str,
    client: &RemoteClient,
    body_timeout: std::time::Duration,
) -> Vec<Arc<Container>> {
    if view.nodes.iter().all(|n| n.id == view.me) {
        return Vec::new();
    }
    let selected: Vec<String> = inner
        .templates
        .selected(&svc.spec.selector)
        .into_iter()
        .map(String::from)
        .collect();
    let mut out = Vec::new();
    for node in view.nodes.iter().filter(|n| n.id != view.me) {
        let Some(ingress) = node.ingress else {
            continue;
        };
        let count: u32 = selected
            .iter()
            .filter_map(|d| node.pods.get(d))
            .map(|c| c.ready)
            .sum();
        for i in 0..count.min(MAX_REMOTE_PER_NODE) {
            let key = (node.id.clone(), service.to_string(), i, ingress);
            let endpoint = inner.remotes.entry(key).or_insert_with(|| {
                let workload = RemoteWorkload::new(
                    ingress,
                    service,
                    client.key.clone(),
                    body_timeout,
                    client.client.clone(),
                )
                .expect("a Service name is a valid header value");
                let app = AppName::new(service.to_string())
                    .unwrap_or_else(|_| AppName::new("remote".to_string()).expect("valid"));
                let c = Container::new(
                    format!("{}/{service}-{i}", node.name),
                    app,
                    Workload::Remote(workload),
                    // The other node bounds its own pods' concurrency.
                    u32::MAX >> 3,
                    crate::clock::now_ms(),
                    Vec::new(),
                );
                let _ = c.transition(ContainerState::Ready);
                Arc::new(c)
            });
            out.push(endpoint.clone());
        }
    }
    out
}

/// The client every remote endpoint shares (connections pooled per peer), and the key
/// that marks its requests as a peer's.
#[derive(Clone)]
pub(crate) struct RemoteClient {
    pub(crate) client: skiff_runtime::ProxyClient,
    pub(crate) key: skiff_runtime::ForwardKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeView;

    fn node(id: &str, pods: &[(&str, u32)]) -> NodeView {
        NodeView {
            id: id.into(),
            name: id.into(),
            capacity: 1 << 30,
            pods: pods
                .iter()
                .map(|(d, ready)| {
                    let counts = PodCounts {
                        total: *ready,
                        ready: *ready,
                        ..PodCounts::default()
                    };
                    (d.to_string(), counts)
                })
                .collect(),
            ..NodeView::default()
        }
    }

    fn view(nodes: Vec<NodeView>) -> View {
        View {
            me: "a".into(),
            nodes,
            members: Default::default(),
            can_place: true,
        }
    }

    #[test]
    fn a_view_change_names_the_deployments_whose_pods_moved_elsewhere() {
        let before = view(vec![node("a", &[]), node("b", &[("web", 1), ("api", 2)])]);
        let after = view(vec![node("a", &[]), node("b", &[("web", 2), ("db", 1)])]);
        assert_eq!(
            view_changes(&before, &after),
            Some(BTreeSet::from(["api".into(), "db".into(), "web".into()]))
        );
        assert_eq!(view_changes(&after, &after), Some(BTreeSet::new()));
        let joined = view(vec![node("a", &[]), node("b", &[]), node("c", &[])]);
        assert_eq!(view_changes(&before, &joined), None, "a node came");
        let mut resized = before.clone();
        resized.nodes[1].capacity = 1;
        assert_eq!(view_changes(&before, &resized), None, "a node changed");
        let mut minority = before.clone();
        minority.can_place = false;
        assert_eq!(view_changes(&before, &minority), None);
    }
}
