//! The reconciler: makes this node's pods and routes match the desired state.
//!
//! Desired state lives in the [`DesiredStore`] (changed only through `Objects`); this
//! module makes the node's pods match it. One task runs [`Reconciler::run`]: triggers
//! (the desired state's feed, pod events, other nodes' pods, a tick) put typed object
//! references on its [`WorkQueue`]; each pass takes what is due (the whole picture at
//! start, on node changes and every minute) and runs one controller per kind, each a
//! function of plain values whose actions the pass carries out: the Deployment
//! controller ([`deployments::reconcile`], over the rollout planner) says which pods to
//! start, stop and make; the Service controller ([`services::reconcile`]) what each
//! route holds; the NodePort controller ([`node_ports::reconcile`]) which listeners the
//! data plane binds. A pass costs what changed, not what the node holds. It is the only
//! thing that starts or stops a Deployment's pods. Pods live in memory only: after a
//! restart (or `kill -9`) the node has none, and the planner starts what the desired
//! state asks for.
//!
//! Restart policy lives here, once. A pod whose container cannot be made (image
//! missing, compile or link refused, no memory budget) waits and is tried again; a pod
//! whose container ended (its Linux process exited, its liveness probe failed) restarts
//! in place, counting `restartCount`. Both wait 1 s doubling to 5 min, as Kubernetes'
//! back-off; a container that ran for a minute resets it.
//!
//! A pod is ready (routable, and counted by the planner) once its readiness probe
//! passes; without one, a Wasm or static pod at once (its code was linked when it was
//! made) and a Linux pod once its port accepts connections.
//!
//! This file is the loop and the pass; [`queue`] is its work queue, [`deployments`],
//! [`services`] and [`node_ports`] its controllers, [`pods`] the pod table, [`launch`]
//! makes and stops pods, [`probes`] runs probes, [`status`] and [`views`] are what the
//! API reads, [`spread`] is this node's share of a Deployment and the other nodes'
//! endpoints, [`index`] finds pods by label.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skiff_runtime::RequestInfo;
use skiff_spec::k8s::{
    self, Condition, ContainerState as K8sState, DeploymentStatus, ObjectMeta, Probe, Service,
    StateReason, StateRunning,
};
use tokio_util::sync::CancellationToken;

use skiff_runtime::LogBook;
use skiff_spec::{AppName, Digest};

use crate::clock::now_ms;
use crate::container::{Container, ContainerState};
use crate::desired::DesiredStore;
use crate::desired::ObjectRef;
use crate::desired::StoredDeployment;
use crate::desired::rollout::{self, Action, Plan, PodPhase};
use crate::error::AppError;
use crate::images::{Images, Prepared};
use crate::ingress::{Ingress, NodePorts};
use crate::launcher::Launcher;
use crate::launcher::{self};
use skiff_gateway::Endpoint as _;

mod deployments;
mod index;
mod launch;
mod node_ports;
mod pods;
mod probes;
mod queue;
mod services;
pub(crate) mod spread;
mod status;
mod views;

pub(crate) use launch::pod_spec;
use launch::*;
pub(crate) use pods::PodTable;
use pods::*;
use probes::*;
use queue::WorkQueue;
use status::*;

/// Events kept per Deployment.
const EVENTS: usize = 50;

/// How often the reconciler looks for work queued for later (the Deployments still
/// waiting for something are due again by the next tick).
const TICK: Duration = Duration::from_millis(500);

/// How long after a pass a Deployment still waiting for something (a rollout, a
/// back-off, a deadline) is looked at again: by the next tick.
const REQUEUE_MS: u64 = TICK.as_millis() as u64 / 2;

/// How often every Deployment and Service is planned, whatever changed (a safety net:
/// every change names what it touches).
const RESYNC: Duration = Duration::from_secs(60);

/// Pods made (at once) in one pass.
const LAUNCH_BATCH: usize = 64;

/// A pod annotation `deploy` sets: `at-start`, the pod is ready as soon as its container is made (apps deployed with
/// `skiff deploy`, whose Linux replicas' proxy holds requests until they listen).
pub(crate) const READY_ANNOTATION: &str = "skiff.dev/ready";

/// Lines of output kept per app.
const LOG_LINES: usize = 2000;

/// A Deployment's pod's Linux process ended (handled by [`Reconciler::run_exit_loop`]).
pub(crate) struct PodExit {
    /// The pod.
    pub(crate) pod: String,
    /// Which start of it (the Container object's id).
    pub(crate) instance: String,
    /// How it ended.
    pub(crate) exit: skiff_runtime::oci::Exit,
}

/// Where and how the reconciler works.
pub(crate) struct Settings {
    /// Deployments and Services, as desired.
    pub(crate) desired: Arc<DesiredStore>,
    /// What this node sees of the cluster (placement and remote endpoints).
    pub(crate) view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// How long a request body forwarded to another node may stall.
    pub(crate) body_timeout: Duration,
    /// Marks requests forwarded to other nodes' ingresses.
    pub(crate) forward_key: skiff_runtime::ForwardKey,
}

/// How far the node's start has brought its pods back.
struct Restore {
    started: std::time::Instant,
    /// How long it took, once done.
    done: tokio::sync::watch::Sender<Option<Duration>>,
}

/// This node's pods and routes, made to match the desired state: the pod table
/// (observed state), launching and stopping pods, probes, this node's share of each
/// Deployment, Services' routes and node ports, and the start's restore.
pub(crate) struct Reconciler {
    restore: Restore,
    images: Arc<Images>,
    /// Routing table and metrics, shared with the ingress listeners.
    ingress: Arc<Ingress>,
    /// NodePort Services' listeners (the data plane binds them as the pass asks).
    node_ports: Arc<NodePorts>,
    /// Starts every container, pods and `skiff run` ones alike.
    launcher: Arc<Launcher>,
    /// Pods' Linux processes' exits, handled by [`Reconciler::run_exit_loop`].
    exits: crate::launcher::Inbox<PodExit>,
    /// Deployments and Services, as desired (read only: changes go through `Objects`).
    desired: Arc<DesiredStore>,
    /// Deployments' pods and what the reconciler knows of them.
    pods: Arc<PodTable>,
    /// What this node sees of the cluster.
    view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// Connections to other nodes' ingresses, for their pods.
    remote_client: spread::RemoteClient,
    /// How long a request body forwarded to another node may stall.
    body_timeout: Duration,
}

impl Reconciler {
    pub(crate) fn new(
        launcher: Arc<Launcher>,
        images: Arc<Images>,
        pods: Arc<PodTable>,
        ingress: Arc<Ingress>,
        node_ports: Arc<NodePorts>,
        settings: Settings,
    ) -> Self {
        let Settings {
            desired,
            view,
            body_timeout,
            forward_key,
        } = settings;
        Self {
            images,
            ingress,
            node_ports,
            launcher,
            exits: crate::launcher::Inbox::new(),
            desired,
            pods,
            restore: Restore {
                started: std::time::Instant::now(),
                done: tokio::sync::watch::Sender::new(None),
            },
            view,
            remote_client: spread::RemoteClient {
                client: skiff_runtime::RemoteWorkload::client(),
                key: forward_key,
            },
            body_timeout,
        }
    }

    /// Wakes the reconciler (after a change to the desired state).
    pub(crate) fn kick(&self) {
        self.pods.kick();
    }

    /// A receiver that sees every pass of the reconciler end.
    pub(crate) fn passes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pods.passes()
    }

    /// The images pods run, with the pods' names (garbage collection keeps them).
    pub(crate) fn pod_images(&self) -> Vec<(Digest, String)> {
        self.pods.images()
    }

    /// What this node sees of the cluster now.
    pub(crate) fn view(&self) -> Arc<crate::cluster::View> {
        self.view.borrow().clone()
    }

    /// Handles pods' Linux processes' exits until the node stops. Run once, by the node.
    pub(crate) async fn run_exit_loop(&self, shutdown: CancellationToken) {
        self.exits
            .run(
                shutdown,
                |PodExit {
                     pod,
                     instance,
                     exit,
                 }| {
                    self.on_pod_exit(&pod, &instance, &exit);
                    std::future::ready(())
                },
            )
            .await;
    }

    /// Cleans what a killed node left before anything starts: runc outlives it, so
    /// whatever Linux containers it left (standalone or pods) go. Nothing of this node
    /// runs yet, so every bundle under containers/ is a leftover.
    pub(crate) async fn clean_leftovers(&self) {
        if let Some(host) = self.launcher.oci()
            && let Ok(dirs) = std::fs::read_dir(self.launcher.bundles())
        {
            for dir in dirs.flatten() {
                let id = dir.file_name().to_string_lossy().into_owned();
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    host.clean_leftovers(&id, &dir.path()).await;
                }
            }
        }
    }

    /// `/healthz`'s line about the pods a start brings back: how many are ready while
    /// it is under way, how long it took once done.
    pub fn restore_line(&self) -> String {
        let done = *self.restore.done.borrow();
        match done {
            Some(took) => format!("restored: pods back in {} ms", took.as_millis()),
            None => {
                let (ready, total, _) = self.restore_progress();
                format!("restoring: {ready} of {total} pods ready")
            }
        }
    }

    /// Waits until the start's pods are back (what `/healthz` then says).
    #[cfg_attr(not(test), allow(dead_code))]
    pub async fn wait_restored(&self) {
        let _ = self
            .restore
            .done
            .subscribe()
            .wait_for(Option::is_some)
            .await;
    }

    /// The log book of an app (a Deployment's pods).
    pub async fn log(&self, name: &AppName) -> Result<Arc<LogBook>, AppError> {
        self.pods
            .log(name.as_str())
            .or_else(|| {
                self.desired
                    .read(|s| s.state.deployments.contains_key(name.as_str()))
                    .then(|| LogBook::new(1))
            })
            .ok_or_else(|| AppError::not_found(format!("app {name} not found")))
    }

    /// Stops routing to every pod and drains them (node shutdown, after `skiff run`
    /// containers were stopped).
    pub async fn drain_all(&self, grace: Duration) {
        if let Some(host) = self.launcher.oci() {
            host.shutdown();
        }
        let drains = self
            .pods
            .pod_containers()
            .into_iter()
            .map(|c| async move { crate::launcher::retire(&c, grace, grace).await });
        futures_util::future::join_all(drains).await;
    }
}

impl Reconciler {
    /// Runs the reconciler until the node stops. Run once, by the node.
    ///
    /// Triggers only queue objects ([`WorkQueue`]); each pass takes what is due. The
    /// desired state's feed names the Deployment, Service or node each change touched;
    /// pods that moved (ready, ended, stopped) queue their Deployment; a Deployment
    /// still waiting for something queues itself for later, taken on a tick. Every
    /// Deployment and Service is queued when the cluster's nodes change, after a
    /// snapshot replaced the state, when the feed was missed, and every [`RESYNC`].
    pub(crate) async fn run(&self, shutdown: CancellationToken) {
        let mut view = self.view.clone();
        let mut seen = view.borrow_and_update().clone();
        let mut feed = self.desired.subscribe();
        let mut restores = self.desired.restores();
        let mut resync = tokio::time::Instant::now() + RESYNC;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.pods.lock().queue.add_all();
        loop {
            {
                let mut inner = self.pods.lock();
                loop {
                    use tokio::sync::broadcast::error::TryRecvError;
                    match feed.try_recv() {
                        Ok(change) => inner.queue.add(change.object),
                        Err(TryRecvError::Lagged(_)) => inner.queue.add_all(),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                let now_restores = self.desired.restores();
                if now_restores != restores || tokio::time::Instant::now() >= resync {
                    restores = now_restores;
                    inner.queue.add_all();
                }
            }
            if self.reconcile().await {
                resync = tokio::time::Instant::now() + RESYNC;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.pods.kick.notified() => {}
                // The cluster changed: a node came or went (everything is placed
                // again), another node's pods did (their Deployments are).
                Ok(()) = view.changed() => {
                    let now = view.borrow_and_update().clone();
                    let mut inner = self.pods.lock();
                    match spread::view_changes(&seen, &now) {
                        None => inner.queue.add_all(),
                        Some(changed) => {
                            for d in changed {
                                inner.queue.add(ObjectRef::Deployment(d));
                            }
                        }
                    }
                    seen = now;
                }
                // What was queued for later may be due.
                _ = tick.tick() => {}
            }
        }
    }

    /// What the reconciler's passes looked at since the last call: every Deployment
    /// (`true`), or these. Their status or events may have changed.
    pub(crate) fn take_looked_at(&self) -> (bool, BTreeSet<String>) {
        std::mem::take(&mut self.pods.lock().looked_at)
    }

    /// This node's pods of each Deployment whose counts changed since the last call
    /// (what it gossips; `None`: it has none any more). The work is the changes', not
    /// the number of Deployments.
    pub(crate) fn changed_pod_counts(&self) -> Vec<(String, Option<crate::cluster::PodCounts>)> {
        spread::changed_pod_counts(&mut self.pods.lock())
    }

    /// One pass over what the queue has due (everything, the first time): the
    /// Deployment controller decides for each Deployment, its pods are stopped and
    /// started (at most [`LAUNCH_BATCH`] made per pass, so the first pods of a node
    /// restoring thousands serve while the rest are made), then the Service and
    /// NodePort controllers route each Service. True when it looked at everything.
    async fn reconcile(&self) -> bool {
        let now = now_ms();
        let work = {
            let mut inner = self.pods.lock();
            let work = inner.queue.take(now);
            if work.all {
                inner.looked_at.0 = true;
            } else {
                let names = work.deployments.iter().cloned();
                inner.looked_at.1.extend(names);
            }
            work
        };
        let full = work.all;
        let view = self.view.borrow().clone();
        // The objects this pass looks at, copied before the pod table is locked.
        type Named<T> = Vec<(String, Option<T>)>;
        let (deployments, cordoned): (Named<Arc<StoredDeployment>>, _) = self.desired.read(|s| {
            let deployments = if full {
                s.state
                    .deployments
                    .iter()
                    .map(|(n, d)| (n.clone(), Some(d.clone())))
                    .collect()
            } else {
                work.deployments
                    .iter()
                    .map(|n| (n.clone(), s.state.deployments.get(n).cloned()))
                    .collect()
            };
            (deployments, s.state.cordoned.clone())
        });
        let service_names: Option<BTreeSet<String>> = (!full).then(|| {
            // The Services changed, and those that pick these Deployments' pods or
            // templates (before and after the change).
            let inner = self.pods.lock();
            let mut names = work.services.clone();
            for (name, d) in &deployments {
                for (_, p) in inner.pods_of(name) {
                    names.extend(
                        inner
                            .selectors
                            .selecting(&p.labels)
                            .into_iter()
                            .map(String::from),
                    );
                }
                if let Some(d) = d {
                    let labels = &d.object.spec.template.metadata.labels;
                    names.extend(
                        inner
                            .selectors
                            .selecting(labels)
                            .into_iter()
                            .map(String::from),
                    );
                }
            }
            names
        });
        let services: Named<Service> = self.desired.read(|s| match &service_names {
            None => s
                .state
                .services
                .iter()
                .map(|(n, svc)| (n.clone(), Some(svc.clone())))
                .collect(),
            Some(names) => names
                .iter()
                .map(|n| (n.clone(), s.state.services.get(n).cloned()))
                .collect(),
        });
        let (to_stop, to_launch) = {
            let mut inner = self.pods.lock();
            let present: Vec<&StoredDeployment> = deployments
                .iter()
                .filter_map(|(_, d)| d.as_deref())
                .collect();
            let mut to_stop: Vec<String> = Vec::new();
            if full {
                let wanted: BTreeSet<&str> = deployments.iter().map(|(n, _)| n.as_str()).collect();
                to_stop.extend(
                    inner
                        .pods
                        .iter()
                        .filter(|(_, p)| {
                            !matches!(p.state, PodState::Terminating { .. })
                                && !wanted.contains(p.deployment.as_str())
                        })
                        .map(|(n, _)| n.clone()),
                );
                let Inner {
                    progress,
                    logs,
                    templates,
                    regossip,
                    ..
                } = &mut *inner;
                progress.retain(|name, _| {
                    let keep = wanted.contains(name.as_str());
                    if !keep {
                        regossip.insert(name.clone());
                    }
                    keep
                });
                logs.retain(|name, _| wanted.contains(name.as_str()));
                templates.clear();
            } else {
                for (name, _) in deployments.iter().filter(|(_, d)| d.is_none()) {
                    let gone: Vec<String> = inner
                        .pods_of(name)
                        .filter(|(_, p)| !matches!(p.state, PodState::Terminating { .. }))
                        .map(|(n, _)| n.clone())
                        .collect();
                    to_stop.extend(gone);
                    if inner.progress.remove(name).is_some() {
                        inner.regossip.insert(name.clone());
                    }
                    inner.logs.remove(name);
                    inner.templates.remove(name);
                    inner.shares.remove(name);
                    spread::unplace(&mut inner, name);
                }
            }
            let targets = spread::local_targets(&mut inner, &present, &cordoned, &view, full);
            let mut launchable: BTreeSet<String> = std::mem::take(&mut inner.backlog);
            for d in &present {
                let name = &d.object.metadata.name;
                inner
                    .templates
                    .set(name, &d.object.spec.template.metadata.labels);
                let observed: Vec<deployments::Observed> =
                    inner.pods_of(name).map(|(n, p)| p.observed(n)).collect();
                // This node's part of the Deployment, rolled out as a Deployment of its own.
                let target = targets.get(name).copied().unwrap_or(0);
                let hash = &d.current().hash;
                let decision = deployments::reconcile(&d.object, target, hash, &observed, now);
                track(&mut inner, d, target, &decision.plan, now);
                for action in decision.plan.actions {
                    match action {
                        Action::Start { hash } => {
                            let pod = format!("{name}-{hash}-{}", suffix());
                            let template = d.revisions.iter().find(|r| r.hash == hash).map_or_else(
                                || d.object.spec.template.clone(),
                                |r| r.template.clone(),
                            );
                            let mut labels = template.metadata.labels.clone();
                            labels.insert("pod-template-hash".into(), hash.as_str().into());
                            inner.add_pod(
                                pod.clone(),
                                PodEntry::new(
                                    name.as_str().into(),
                                    hash.into(),
                                    labels,
                                    template,
                                    crate::clock::now_rfc3339().into(),
                                ),
                            );
                            inner.event(
                                name,
                                "Normal",
                                "SuccessfulCreate",
                                format!("Created pod: {pod}"),
                            );
                            launchable.insert(pod);
                        }
                        Action::Stop { pod } => {
                            inner.event(
                                name,
                                "Normal",
                                "SuccessfulDelete",
                                format!("Deleted pod: {pod}"),
                            );
                            to_stop.push(pod);
                        }
                    }
                }
                launchable.extend(decision.launch);
                if !decision.settled {
                    inner
                        .queue
                        .add_after(ObjectRef::Deployment(name.clone()), now + REQUEUE_MS);
                }
            }
            // Made in name order, a batch a pass; the rest wait for the next pass.
            let mut to_launch = Vec::new();
            for pod in launchable {
                let waiting = inner.pods.get(&pod).is_some_and(
                    |p| matches!(p.state, PodState::Waiting { retry_ms, .. } if retry_ms <= now),
                );
                if !waiting {
                    continue;
                }
                if to_launch.len() < LAUNCH_BATCH {
                    to_launch.push(pod);
                } else {
                    inner.backlog.insert(pod);
                }
            }
            (to_stop, to_launch)
        };
        for pod in &to_stop {
            self.stop_pod(pod);
        }
        futures_util::future::join_all(to_launch.iter().map(|pod| self.launch(pod))).await;
        self.route_services(&services, &view, full);
        // What was just done shows in the next pass's status: run it now rather than at
        // the next tick, so a rollout's end is seen at once.
        let more = {
            let mut inner = self.pods.lock();
            for pod in to_stop.iter().chain(&to_launch) {
                if let Some(p) = inner.pods.get(pod) {
                    let d = ObjectRef::Deployment(p.deployment.to_string());
                    inner.queue.add(d);
                }
            }
            !to_stop.is_empty() || !to_launch.is_empty() || !inner.backlog.is_empty()
        };
        if more {
            self.pods.kick();
        }
        if full {
            // A full pass planned every Deployment: give back what it freed.
            crate::memory::trim();
        }
        self.pods.passes.send_modify(|n| *n += 1);
        full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_gateway::Algorithm;
    use skiff_spec::{Labels, Str};

    #[test]
    fn the_balancers_a_manifest_may_name_are_the_gateways() {
        // The manifest reader (spec) cannot see the gateway's list: both must agree.
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, skiff_spec::manifest::LOAD_BALANCERS);
    }

    #[test]
    fn a_deployments_pods_are_found_by_prefix_and_not_confused_with_a_longer_name() {
        let mut inner = Inner::default();
        let pod = |deployment: &str| {
            PodEntry::new(
                deployment.into(),
                "h".into(),
                Labels::from([("app".into(), deployment.into())]),
                Arc::default(),
                Str::default(),
            )
        };
        inner.add_pod("web-h-aaaaa".into(), pod("web"));
        inner.add_pod("web-api-h-bbbbb".into(), pod("web-api"));
        inner.add_pod("web-h-ccccc".into(), pod("web"));
        let names: Vec<&String> = inner.pods_of("web").map(|(n, _)| n).collect();
        assert_eq!(names, ["web-h-aaaaa", "web-h-ccccc"]);
        assert_eq!(inner.pods_of("web-api").count(), 1);
        let selector = Labels::from([("app".into(), "web".into())]);
        assert_eq!(inner.pod_labels.selected(&selector).len(), 2);
        inner.remove_pod("web-h-aaaaa");
        assert_eq!(inner.pod_labels.selected(&selector), ["web-h-ccccc"]);
    }
}
