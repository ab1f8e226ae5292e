//! The objects of each kind as served, rendered one at a time from where they live: the
//! desired state (Deployments, their revisions as ReplicaSets, Services, events), pods
//! (the reconciler's, here and on every peer), gossip's members (nodes), and what is
//! derived from them (Endpoints, EndpointSlices), with Kubernetes' defaults filled in.
//! The [`feed`] puts them in the [`store`], where every read finds them.
//!
//! [`feed`]: super::feed
//! [`store`]: super::store

use std::time::Duration;

use serde_json::{Value, json};
use skiff_spec::k8s;

use super::{Kind, REVISION, Resource, defaults, endpoints, not_found, resource_of};
use crate::Shared;
use crate::api::error::ApiError;
use crate::desired::StoredDeployment;

/// How long a read waits for the store's first filling after the node starts.
const FILL_WAIT: Duration = Duration::from_secs(30);

/// Every node gossip knows, with its Raft role and whether it is cordoned.
pub(super) async fn nodes(shared: &Shared) -> Vec<k8s::Node> {
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

/// Gives `v` its kind's `apiVersion`, `kind` and the defaults the API server fills.
pub(super) fn finish(kind: Kind, mut v: Value) -> Value {
    v["apiVersion"] = json!(resource_of(kind).api_version());
    v["kind"] = json!(resource_of(kind).kind_name);
    if let Some(fill) = defaults::of(kind) {
        fill(&mut v);
    }
    v
}

/// A pod as served: with a uid (derived from its name, which is unique) and the address
/// of its node (`hostIP`), when known.
pub(super) fn pod_value(pod: &k8s::Pod, host: Option<&str>) -> Value {
    let mut v = value(pod);
    if v["metadata"]["uid"].is_null() {
        let uid = derived_uid("pod", v["metadata"]["name"].as_str().unwrap_or_default());
        v["metadata"]["uid"] = json!(uid);
    }
    if let Some(host) = host
        && v["status"]["hostIP"].is_null()
    {
        v["status"]["hostIP"] = json!(host);
    }
    finish(Kind::Pod, v)
}

/// The node's address pods show as their `hostIP` (its `InternalIP`).
pub(super) fn host_ip(node: &k8s::Node) -> Option<String> {
    let ip = node
        .status
        .addresses
        .iter()
        .find(|a| a.kind == "InternalIP")?
        .address
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .ok()?;
    Some(ip.to_string())
}

/// Whether `pod` (served) is one of Deployment `name`'s revision `hash`.
fn of_revision(pod: &Value, name: &str, hash: &str) -> bool {
    pod["metadata"]["labels"]["pod-template-hash"].as_str() == Some(hash)
        && pod["metadata"]["name"]
            .as_str()
            .and_then(|n| n.strip_prefix(name))
            .and_then(|n| n.strip_prefix('-'))
            .and_then(|n| n.strip_prefix(hash))
            .is_some_and(|n| n.starts_with('-'))
}

/// The Deployment a pod (served) belongs to, by its name `<deployment>-<hash>-<n>`.
pub(super) fn deployment_of(pod: &Value) -> Option<String> {
    owner(
        pod["metadata"]["name"].as_str()?,
        pod["metadata"]["labels"]["pod-template-hash"].as_str()?,
    )
}

/// The Deployment of pod `name` of revision `hash` (`<deployment>-<hash>-<n>`).
fn owner(name: &str, hash: &str) -> Option<String> {
    let (rest, _) = name.rsplit_once('-')?;
    let deployment = rest.strip_suffix(hash)?.strip_suffix('-')?;
    Some(deployment.to_string())
}

/// Every revision of Deployment `d` as a ReplicaSet: the current one wants the
/// Deployment's replicas, an old one the pods it still has (none once rolled out).
/// `pods` are the Deployment's pods as served, wherever they run.
pub(super) fn replica_sets(d: &StoredDeployment, status: &Value, pods: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    let name = &d.object.metadata.name;
    let uid = d.object.metadata.uid.clone().unwrap_or_default();
    let current = d.current().number;
    let observed = status["observedGeneration"].as_i64().unwrap_or(1).max(1);
    for r in &d.revisions {
        let mine: Vec<&Value> = pods
            .iter()
            .filter(|p| of_revision(p, name, &r.hash))
            .collect();
        let ready = mine
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"]
                        .as_array()
                        .is_none_or(|cs| cs.iter().all(|c| c["ready"] == true))
            })
            .count();
        let wanted = if r.number == current {
            d.object.spec.replicas.unwrap_or(1)
        } else {
            mine.iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .count() as i32
        };
        let mut template = value(&r.template);
        template["metadata"]["labels"]["pod-template-hash"] = json!(r.hash);
        let mut selector = value(&d.object.spec.selector);
        selector["matchLabels"]["pod-template-hash"] = json!(r.hash);
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(r.hash);
        out.push(finish(
            Kind::ReplicaSet,
            json!({
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
                    "observedGeneration": observed,
                },
            }),
        ));
    }
    out
}

/// What happened to Deployment `d`, as `v1 Event`s about it.
pub(super) fn events(shared: &Shared, d: &StoredDeployment) -> Vec<Value> {
    let name = &d.object.metadata.name;
    let uid = d.object.metadata.uid.clone().unwrap_or_default();
    shared
        .reconciler
        .history(d)
        .events
        .into_iter()
        .map(|e| {
            let id = derived_uid(&uid, &format!("{}/{}/{}", e.at, e.reason, e.message));
            finish(
                Kind::Event,
                json!({
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
                }),
            )
        })
        .collect()
}

/// The only namespace.
pub(super) fn default_namespace() -> Value {
    finish(
        Kind::Namespace,
        json!({
            "metadata": {"name": "default", "uid": derived_uid("namespace", "default")},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }),
    )
}

/// A Service's Endpoints and EndpointSlices, from its pods (as served).
pub(super) fn service_endpoints(service: &Value, pods: &[Value]) -> (Option<Value>, Vec<Value>) {
    let endpoints = endpoints::endpoints(service, pods).map(|e| finish(Kind::Endpoints, e));
    let slices = endpoints::slices(service, pods)
        .into_iter()
        .map(|s| finish(Kind::EndpointSlice, s))
        .collect();
    (endpoints, slices)
}

/// The objects of `kind` with their versions, and the store's version.
pub(super) async fn objects(shared: &Shared, kind: Kind) -> (Vec<Value>, u64) {
    shared.kube_store.filled(FILL_WAIT).await;
    let (objects, version) = shared.kube_store.list(kind);
    (
        objects.iter().map(|o| super::store::parse(o)).collect(),
        version,
    )
}

pub(super) async fn get_object(
    shared: &Shared,
    res: &Resource,
    name: &str,
) -> Result<Value, ApiError> {
    shared.kube_store.filled(FILL_WAIT).await;
    shared
        .kube_store
        .get(res.kind, name)
        .map(|o| super::store::parse(&o))
        .ok_or_else(|| not_found(res, name))
}
