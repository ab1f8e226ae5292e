//! What the API reads of the reconciler's pods: Deployments and pods as Kubernetes
//! objects, rollout history and progress, pod containers, the restore's progress.

use std::time::Duration;

use skiff_gateway::Endpoint as _;
use skiff_spec::api::{ContainerStatus, RevisionInfo, RolloutHistory};
use skiff_spec::k8s;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::*;
use crate::desired::StoredDeployment;
use crate::error::AppError;

impl Reconciler {
    /// The Deployment `name` as stored, with the status the reconciler last saw.
    pub(crate) fn deployment_object(&self, d: &StoredDeployment) -> k8s::Deployment {
        let mut object = d.object.clone();
        let local = self
            .pods
            .lock()
            .progress
            .get(&object.metadata.name)
            .map(Progress::status)
            .unwrap_or_default();
        object.status = Some(spread::cluster_status(d, local, &self.view.borrow()));
        object
    }

    /// Every pod, as the Kubernetes API shows pods, on node `node`.
    pub(crate) fn pod_objects(&self, node: &str) -> Vec<k8s::Pod> {
        let inner = self.pods.lock();
        inner
            .pods
            .iter()
            .map(|(name, p)| pod_object(name, p, node))
            .collect()
    }

    /// The pods of Deployments `deployments`, as [`Reconciler::pod_objects`] shows them.
    pub(crate) fn pod_objects_of(
        &self,
        node: &str,
        deployments: &std::collections::BTreeSet<String>,
    ) -> Vec<k8s::Pod> {
        let inner = self.pods.lock();
        deployments
            .iter()
            .flat_map(|d| inner.pods_of(d))
            .map(|(name, p)| pod_object(name, p, node))
            .collect()
    }

    /// A Deployment's revisions and events.
    pub(crate) fn history(&self, d: &StoredDeployment) -> RolloutHistory {
        let inner = self.pods.lock();
        RolloutHistory {
            revisions: d
                .revisions
                .iter()
                .map(|r| RevisionInfo {
                    revision: r.number,
                    hash: r.hash.clone(),
                    image: r
                        .template
                        .spec
                        .containers
                        .first()
                        .map(|c| c.image.clone())
                        .unwrap_or_default(),
                    at: r.at.clone(),
                })
                .collect(),
            events: inner
                .progress
                .get(&d.object.metadata.name)
                .map(|p| p.events.iter().map(Event::info).collect())
                .unwrap_or_default(),
        }
    }

    /// Stops a pod now (`delete pod`): its Deployment starts a replacement.
    pub(crate) fn delete_pod(&self, pod: &str) -> Result<(), AppError> {
        {
            let mut inner = self.pods.lock();
            let Some(p) = inner.pods.get(pod) else {
                return Err(AppError::not_found(format!("pod {pod} not found")));
            };
            let deployment = ObjectRef::Deployment(p.deployment.to_string());
            inner.queue.add(deployment);
        }
        self.stop_pod(pod);
        self.pods.kick();
        Ok(())
    }

    /// Requests in flight on every Service's endpoints: (service, pod, count).
    pub(crate) fn service_in_flight(&self) -> Vec<(String, String, u32)> {
        let routes = self.ingress.table.routes();
        routes
            .iter()
            .filter(|(_, b)| b.is_service())
            .flat_map(|(service, b)| {
                b.endpoints()
                    .iter()
                    .map(|c| (service.clone(), c.name.clone(), c.load().in_flight()))
            })
            .collect()
    }

    /// Whether `d`'s rollout is done (status observed at its generation, every pod
    /// updated and available, no old ones), and the error of a new pod that could not
    /// be made, if one could not.
    pub(crate) fn rollout_progress(&self, d: &StoredDeployment) -> (bool, Option<AppError>) {
        let inner = self.pods.lock();
        let name = &d.object.metadata.name;
        let hash = &d.current().hash;
        let failure = inner
            .pods_of(name)
            .filter(|(_, p)| p.hash == hash)
            .find_map(|(_, p)| match &p.state {
                PodState::Waiting {
                    failure: Some(e), ..
                } => Some(e.clone()),
                _ => None,
            });
        let desired = d.object.spec.replicas.unwrap_or(1);
        // Done when the cluster's pods (this node's and what the others gossip) are all
        // of the current revision and available.
        let done = inner.progress.get(name).is_some_and(|p| {
            let s = spread::cluster_status(d, p.status(), &self.view.borrow());
            p.hash == *hash
                && s.observed_generation == d.object.metadata.generation
                && s.updated_replicas == desired
                && s.available_replicas == desired
                && s.replicas == desired
        });
        (done, failure)
    }

    /// A Deployment's pods as an app's containers: status, ready, why it waits.
    pub(crate) fn pod_statuses(
        &self,
        deployment: &str,
    ) -> Vec<(ContainerStatus, bool, Option<String>)> {
        let inner = self.pods.lock();
        inner
            .pods_of(deployment)
            .map(|(name, p)| match &p.state {
                PodState::Waiting {
                    reason, message, ..
                } => (
                    ContainerStatus {
                        name: name.clone(),
                        state: format!("waiting: {reason}"),
                        started_ms: 0,
                        in_flight: 0,
                    },
                    false,
                    (!message.is_empty()).then(|| format!("pod {name}: {reason}: {message}")),
                ),
                PodState::Running {
                    container,
                    ready_since,
                    ..
                } => (
                    container.status(),
                    ready_since.is_some() && container.is_ready(),
                    None,
                ),
                PodState::Terminating { container, .. } => (container.status(), false, None),
            })
            .collect()
    }

    /// The pods restored so far: `(ready, total, settled)`, settled once the first pass
    /// has made every pod and each is ready or waiting after a failure.
    pub(crate) fn restore_progress(&self) -> (usize, usize, bool) {
        let first_pass_done = *self.pods.passes.borrow() > 0;
        let inner = self.pods.lock();
        let mut ready = 0;
        let mut settled = first_pass_done && inner.backlog.is_empty();
        for p in inner.pods.values() {
            match &p.state {
                PodState::Running { ready_since, .. } => {
                    if ready_since.is_some() {
                        ready += 1;
                    } else {
                        settled = false;
                    }
                }
                PodState::Waiting {
                    failure, reason, ..
                } => settled &= failure.is_some() || *reason == "CrashLoopBackOff",
                PodState::Terminating { .. } => {}
            }
        }
        (ready, inner.pods.len(), settled)
    }

    /// Follows the node's first passes until its pods are back, logging progress each
    /// second and recording the time it took (what `/healthz` reports). The node serves
    /// meanwhile: each pod takes requests as soon as it is ready. True once they are
    /// back (false: the node stopped first); the caller then collects what a killed
    /// node left and gives back what the restore allocated.
    pub(crate) async fn track_restore(&self, shutdown: CancellationToken) -> bool {
        let mut passes = self.pods.passes();
        let mut logged = tokio::time::Instant::now();
        loop {
            let (ready, total, settled) = self.restore_progress();
            if settled {
                let took = self.restore.started.elapsed();
                self.restore.done.send_replace(Some(took));
                info!(
                    pods = total,
                    ready,
                    ms = took.as_millis() as u64,
                    "pods restored"
                );
                return true;
            }
            if logged.elapsed() >= Duration::from_secs(1) {
                logged = tokio::time::Instant::now();
                info!(ready, pods = total, "restoring pods");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                changed = passes.changed() => if changed.is_err() { return false },
                // Readiness arrives between passes too.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}
