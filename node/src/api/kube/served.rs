//! The objects of each kind as served, read from where they live: the desired state
//! (Deployments, their revisions as ReplicaSets, Services, events), every node's pods,
//! gossip's members (nodes), and what is derived from them (Endpoints, EndpointSlices),
//! with Kubernetes' defaults filled in; then versioned by the [`journal`].
//!
//! [`journal`]: super::journal

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skiff_spec::k8s;

use super::{Kind, REVISION, Resource, defaults, endpoints, not_found, resource_of};
use crate::Shared;
use crate::api::error::ApiError;
use crate::desired::StoredDeployment;

/// This node's pods and every live peer's (a peer that does not answer within 2 s is
/// left out: its pods show once it does).
async fn all_pods(shared: &Shared) -> Vec<k8s::Pod> {
    let mut pods = shared
        .reconciler
        .pod_objects(&shared.cluster.identity().name);
    let view = shared.reconciler.view();
    let asks = view
        .nodes
        .iter()
        .filter(|n| n.id != view.me)
        .filter_map(|n| Some((crate::raft::raft_id(&n.id)?, n.api.clone()?)))
        .map(|(id, api)| async move {
            shared
                .consensus
                .client()
                .call::<_, Vec<k8s::Pod>>(id, &api, "/v1/peer/pods", &(), Duration::from_secs(2))
                .await
        });
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(remote) => pods.extend(remote),
            Err(e) => tracing::debug!(error = %e, "a peer's pods are left out"),
        }
    }
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods
}

/// Every pod as served, before its defaults: with a uid (derived from its name, which
/// is unique) and the address of its node (`hostIP`, from the node's `InternalIP`).
async fn served_pods(shared: &Shared) -> Vec<Value> {
    let pods = all_pods(shared).await;
    let addresses: HashMap<String, String> = nodes(shared)
        .await
        .into_iter()
        .filter_map(|n| {
            let ip = n
                .status
                .addresses
                .iter()
                .find(|a| a.kind == "InternalIP")?
                .address
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .ok()?;
            Some((n.metadata.name, ip.to_string()))
        })
        .collect();
    pods.into_iter()
        .map(|p| {
            let host = p
                .spec
                .node_name
                .as_ref()
                .and_then(|n| addresses.get(n))
                .cloned();
            let mut v = value(p);
            if v["metadata"]["uid"].is_null() {
                let uid = derived_uid("pod", v["metadata"]["name"].as_str().unwrap_or_default());
                v["metadata"]["uid"] = json!(uid);
            }
            if let Some(host) = host
                && v["status"]["hostIP"].is_null()
            {
                v["status"]["hostIP"] = json!(host);
            }
            v
        })
        .collect()
}

/// Every node gossip knows, with its Raft role and whether it is cordoned.
async fn nodes(shared: &Shared) -> Vec<k8s::Node> {
    let roles = shared.consensus.roles();
    let cordoned = shared.objects.cordoned();
    shared
        .cluster
        .members()
        .await
        .iter()
        .map(|m| {
            let role = crate::raft::raft_id(&m.node_id)
                .and_then(|id| roles.get(&id))
                .map_or(crate::raft::Role::None, |r| *r);
            let mut node = m.node(role.as_str());
            node.spec.unschedulable = cordoned.contains(&node.metadata.name);
            node
        })
        .collect()
}

pub(super) fn value(object: impl serde::Serialize) -> Value {
    serde_json::to_value(object).expect("objects serialize")
}

/// A Deployment as stored, with its status and current revision (Kubernetes' defaults
/// are added when it is served, see [`defaults`]).
pub(super) fn deployment_value(shared: &Shared, d: &StoredDeployment) -> Value {
    let mut v = value(shared.reconciler.deployment_object(d));
    v["metadata"]["namespace"] = json!("default");
    v["metadata"]["annotations"][REVISION] = json!(d.current().number.to_string());
    v
}

/// A Service as stored.
pub(super) fn service_value(s: k8s::Service) -> Value {
    let mut v = value(s);
    v["metadata"]["namespace"] = json!("default");
    v
}

/// A stable uid for an object derived from another (a revision's ReplicaSet, an event).
pub(super) fn derived_uid(base: &str, part: &str) -> String {
    crate::desired::uid_of(&format!("{base}/{part}"))
}

/// Every revision of every Deployment as a ReplicaSet: the current one wants the
/// Deployment's replicas, an old one the pods it still has (none once rolled out).
fn replica_sets(
    shared: &Shared,
    stored: &[Arc<StoredDeployment>],
    pods: &[k8s::Pod],
) -> Vec<Value> {
    let mut out = Vec::new();
    for d in stored {
        let name = &d.object.metadata.name;
        let uid = d.object.metadata.uid.clone().unwrap_or_default();
        let current = d.current().number;
        let status = shared
            .reconciler
            .deployment_object(d)
            .status
            .unwrap_or_default();
        for r in &d.revisions {
            let mine: Vec<&k8s::Pod> = pods
                .iter()
                .filter(|p| {
                    p.metadata
                        .labels
                        .get("pod-template-hash")
                        .map(|h| h.as_str())
                        == Some(r.hash.as_str())
                        && p.metadata.name.starts_with(&format!("{name}-"))
                })
                .collect();
            let ready = mine
                .iter()
                .filter(|p| {
                    p.status.container_statuses.iter().all(|c| c.ready)
                        && p.status.phase == "Running"
                })
                .count();
            let wanted = if r.number == current {
                d.object.spec.replicas.unwrap_or(1)
            } else {
                mine.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count() as i32
            };
            let mut template = value(&r.template);
            template["metadata"]["labels"]["pod-template-hash"] = json!(r.hash);
            let mut selector = value(&d.object.spec.selector);
            selector["matchLabels"]["pod-template-hash"] = json!(r.hash);
            let mut labels = template["metadata"]["labels"].clone();
            labels["pod-template-hash"] = json!(r.hash);
            out.push(json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{name}-{}", r.hash),
                    "namespace": "default",
                    "uid": derived_uid(&uid, &r.hash),
                    "creationTimestamp": r.at,
                    "generation": 1,
                    "labels": labels,
                    "annotations": {
                        REVISION: r.number.to_string(),
                        "deployment.kubernetes.io/desired-replicas":
                            d.object.spec.replicas.unwrap_or(1).to_string(),
                    },
                    "ownerReferences": [{
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": name,
                        "uid": uid,
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "spec": {"replicas": wanted, "selector": selector, "template": template},
                "status": {
                    "replicas": mine.len(),
                    "fullyLabeledReplicas": mine.len(),
                    "readyReplicas": ready,
                    "availableReplicas": ready,
                    "observedGeneration": status.observed_generation.unwrap_or(1).max(1),
                },
            }));
        }
    }
    out
}

/// What happened to Deployments, as `v1 Event`s about them.
fn events(shared: &Shared, stored: &[Arc<StoredDeployment>]) -> Vec<Value> {
    let mut out = Vec::new();
    for d in stored {
        let name = &d.object.metadata.name;
        let uid = d.object.metadata.uid.clone().unwrap_or_default();
        for e in shared.reconciler.history(d).events {
            let id = derived_uid(&uid, &format!("{}/{}/{}", e.at, e.reason, e.message));
            out.push(json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": format!("{name}.{}", &id[..8]),
                    "namespace": "default",
                    "uid": id,
                    "creationTimestamp": e.at,
                },
                "involvedObject": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": name,
                    "namespace": "default",
                    "uid": uid,
                },
                "reason": e.reason,
                "message": e.message,
                "type": e.kind,
                "count": 1,
                "firstTimestamp": e.at,
                "lastTimestamp": e.at,
                "source": {"component": "skiff"},
                "reportingComponent": "skiff",
            }));
        }
    }
    out
}

/// The objects of `kind` now, before the journal versions them.
async fn read_kind(shared: &Shared, kind: Kind) -> Vec<Value> {
    let stored = || -> Vec<Arc<StoredDeployment>> { shared.objects.stored_deployments() };
    let mut out: Vec<Value> = match kind {
        Kind::Deployment => stored()
            .iter()
            .map(|d| deployment_value(shared, d))
            .collect(),
        Kind::ReplicaSet => {
            let pods = all_pods(shared).await;
            replica_sets(shared, &stored(), &pods)
        }
        Kind::Pod => served_pods(shared).await,
        Kind::Service => shared
            .objects
            .services()
            .into_iter()
            .map(service_value)
            .collect(),
        Kind::Node => nodes(shared).await.into_iter().map(value).collect(),
        Kind::Event => events(shared, &stored()),
        Kind::Endpoints | Kind::EndpointSlice => {
            let pods = served_pods(shared).await;
            let mut out = Vec::new();
            for service in shared.objects.services() {
                let mut service = service_value(service);
                defaults::service(&mut service);
                if kind == Kind::Endpoints {
                    out.extend(endpoints::endpoints(&service, &pods));
                } else {
                    out.extend(endpoints::slices(&service, &pods));
                }
            }
            out
        }
        Kind::Namespace => vec![json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "default", "uid": derived_uid("namespace", "default")},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        })],
    };
    for v in &mut out {
        v["apiVersion"] = json!(resource_of(kind).api_version());
        v["kind"] = json!(resource_of(kind).kind_name);
        if let Some(fill) = defaults::of(kind) {
            fill(v);
        }
    }
    out.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    out
}

/// The objects of `kind` with their versions, and the journal's version.
pub(super) async fn objects(shared: &Shared, kind: Kind) -> (Vec<Value>, u64) {
    let _reading = shared.kube_journal.reading.lock().await;
    let now = read_kind(shared, kind).await;
    shared.kube_journal.observe(kind, now)
}

pub(super) async fn get_object(
    shared: &Shared,
    res: &Resource,
    name: &str,
) -> Result<Value, ApiError> {
    objects(shared, res.kind)
        .await
        .0
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .ok_or_else(|| not_found(res, name))
}
