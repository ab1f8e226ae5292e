//! `v1 Pod`: every node's pods, read and deleted through the API (its Deployment starts
//! a replacement).

use std::time::Duration;

use serde_json::{Value, json};

use super::super::defaults;
use super::{Answer, Column, Resource, Served};
use super::super::table::{AGE, NAME, age, text};
use super::Kind;
use crate::Shared;
use crate::api::error::ApiError;

pub(crate) struct Pod;

const RESOURCE: Resource = Resource {
    kind: Kind::Pod,
    plural: "pods",
    singular: "pod",
    kind_name: "Pod",
    group: "",
    api_version: "v1",
    namespaced: true,
    verbs: &["delete", "get", "list", "watch"],
    short_names: &["po"],
    categories: &["all"],
};

impl Served for Pod {
    fn resource(&self) -> &'static Resource {
        &RESOURCE
    }

    fn defaults(&self) -> Option<fn(&mut Value)> {
        Some(defaults)
    }

    fn field_selectors(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }

    fn columns(&self) -> &'static [Column] {
        &[
            NAME,
            ("Ready", "string", 0, "Ready containers of all containers."),
            (
                "Status",
                "string",
                0,
                "The pod's state, as kubectl derives it.",
            ),
            ("Restarts", "string", 0, "Restarts of its containers."),
            AGE,
            ("IP", "string", 1, "The pod's address."),
            ("Node", "string", 1, "The node it runs on."),
            ("Nominated Node", "string", 1, "Not used by skiff."),
            ("Readiness Gates", "string", 1, "Not used by skiff."),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let statuses = o["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = statuses.iter().filter(|c| c["ready"] == true).count();
        let total = statuses
            .len()
            .max(o["spec"]["containers"].as_array().map_or(1, Vec::len));
        let restarts: i64 = statuses
            .iter()
            .map(|c| c["restartCount"].as_i64().unwrap_or(0))
            .sum();
        vec![
            json!(o["metadata"]["name"]),
            json!(format!("{ready}/{total}")),
            json!(status(o)),
            json!(restarts.to_string()),
            json!(age(&o["metadata"]["creationTimestamp"])),
            json!(text(&o["status"]["podIP"])),
            json!(text(&o["spec"]["nodeName"])),
            json!("<none>"),
            json!("<none>"),
        ]
    }

    fn delete<'a>(
        &'a self,
        shared: &'a Shared,
        name: &'a str,
        object: &'a Value,
    ) -> Option<Answer<'a, ()>> {
        Some(Box::pin(delete_pod(shared, name, object)))
    }
}

/// A pod's STATUS: Terminating, the first waiting reason, or the phase.
pub(crate) fn status(p: &Value) -> String {
    if !p["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c["state"]["waiting"]["reason"].as_str())
        .unwrap_or_else(|| p["status"]["phase"].as_str().unwrap_or("Unknown"))
        .to_string()
}

/// A pod: its spec's defaults, what only pods get (service links, requests from
/// limits), the grace period of one being deleted, and its QoS class.
pub(crate) fn defaults(p: &mut Value) {
    if let Some(spec) = defaults::object(p, "spec") {
        defaults::pod_spec(spec);
        defaults::default(spec, "enableServiceLinks", json!(true));
        for c in defaults::each(spec, "containers") {
            let limits = c["resources"]["limits"].clone();
            if let (Some(limits), Some(resources)) =
                (limits.as_object(), defaults::object(c, "resources"))
                && !limits.is_empty()
                && let Some(requests) = defaults::object(resources, "requests")
            {
                for (k, v) in limits {
                    defaults::default(requests, k, v.clone());
                }
            }
        }
    }
    let grace = p["spec"]["terminationGracePeriodSeconds"].clone();
    if !p["metadata"]["deletionTimestamp"].is_null()
        && let Some(meta) = defaults::object(p, "metadata")
    {
        defaults::default(meta, "deletionGracePeriodSeconds", grace);
    }
    let qos = qos_class(&p["spec"]);
    if let Some(status) = defaults::object(p, "status") {
        defaults::default(status, "qosClass", json!(qos));
    }
}

/// `Guaranteed` when every container's cpu and memory requests equal its limits,
/// `BestEffort` when none asks for anything, else `Burstable` (as Kubernetes classes a
/// pod when it is created).
fn qos_class(spec: &Value) -> &'static str {
    let containers = spec["containers"].as_array().map_or(&[][..], Vec::as_slice);
    let asks = |c: &Value, which: &str| {
        c["resources"][which]
            .as_object()
            .is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"))
    };
    if containers
        .iter()
        .all(|c| !asks(c, "requests") && !asks(c, "limits"))
    {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][r];
            !limit.is_null() && &c["resources"]["requests"][r] == limit
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Stops a pod wherever it runs: its Deployment starts a replacement.
async fn delete_pod(shared: &Shared, name: &str, pod: &Value) -> Result<(), ApiError> {
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node == shared.cluster.identity().name {
        shared.reconciler.delete_pod(name)?;
        return Ok(());
    }
    // Another node's pod: that node deletes it.
    let view = shared.reconciler.view();
    let (id, api) = view
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| Some((crate::raft::raft_id(&n.id)?, n.api.clone()?)))
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "pod {name} runs on node {node}, which is not reachable now"
            ))
        })?;
    shared
        .consensus
        .client()
        .call::<_, ()>(
            id,
            &api,
            "/v1/peer/delete-pod",
            &name,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| {
            ApiError::conflict(format!(
                "pod {name} runs on node {node}, which could not delete it: {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kube::table::{Include, table};

    #[test]
    fn a_terminating_pod_has_its_grace_period_and_every_pod_a_class() {
        let mut p = json!({
            "metadata": {"name": "web-1", "deletionTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "web", "image": "web:v1",
                "resources": {"limits": {"memory": "64Mi", "cpu": "1"}}}]},
            "status": {"phase": "Running"}
        });
        defaults(&mut p);
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(p["spec"]["enableServiceLinks"], true);
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"],
            json!({"memory": "64Mi", "cpu": "1"})
        );
        assert_eq!(p["status"]["qosClass"], "Guaranteed");
        let mut p = json!({"metadata": {"name": "web-2"},
            "spec": {"containers": [{"name": "web", "image": "web"}]}});
        defaults(&mut p);
        assert!(p["metadata"]["deletionGracePeriodSeconds"].is_null());
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        let burstable = json!({"containers": [{"resources": {"requests": {"memory": "1Mi"}}}]});
        assert_eq!(qos_class(&burstable), "Burstable");
    }

    #[test]
    fn a_pod_row_is_as_kubectl_prints_it() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2000-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Pending", "containerStatuses": [
                {"ready": false, "restartCount": 2, "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        let t = table(
            Kind::Pod,
            std::slice::from_ref(&pod),
            Include::Metadata,
            "1",
            None,
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "p",
                "0/1",
                "ContainerCreating",
                "2",
                age(&json!("2000-01-01T00:00:00Z")),
                "<none>",
                "n1",
                "<none>",
                "<none>"
            ])
        );
    }
}
