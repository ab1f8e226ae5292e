//! The pod table: this node's pods of every Deployment, what the reconciler knows of
//! them (state, restarts, events, what each route was last given), and the queue of
//! what the next passes look at.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use skiff_gateway::Balancing;
use skiff_runtime::LogBook;
use skiff_spec::api::EventInfo;
use skiff_spec::k8s::PodTemplateSpec;
use skiff_spec::{Digest, Labels, Str};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::*;
use crate::clock::now_ms;
use crate::container::Container;
use crate::desired::ObjectRef;
use crate::desired::rollout::{self, PodPhase};
use crate::error::AppError;
use crate::launcher::{self};

/// The back-off before the `n`th retry of a pod (n from 1), in ms.
pub(super) fn backoff_ms(n: u32) -> u64 {
    crate::restart::Backoff::KUBERNETES.delay(n).as_millis() as u64
}

/// Where a pod is.
pub(super) enum PodState {
    /// No container: being made, or waiting (after a failure) until `retry_ms`.
    Waiting {
        reason: &'static str,
        message: String,
        retry_ms: u64,
        /// Why its container could not be made.
        failure: Option<AppError>,
    },
    /// A container, ready or not.
    Running {
        container: Arc<Container>,
        image: Digest,
        /// Since when it has been ready.
        ready_since: Option<u64>,
        /// Stops its probes.
        probes: CancellationToken,
        /// Its limits (how long its requests may take is the drain grace when it stops).
        limits: skiff_spec::Limits,
    },
    /// Draining, then gone.
    Terminating {
        container: Arc<Container>,
        since: String,
    },
}

/// One pod of a Deployment. Its short strings (names, the hash, the time) are kept
/// inline: a node holds thousands of pods.
pub(super) struct PodEntry {
    pub(super) deployment: Str,
    pub(super) hash: Str,
    pub(super) labels: Labels,
    pub(super) template: Arc<PodTemplateSpec>,
    pub(super) created: Str,
    pub(super) restarts: i32,
    /// Failures in a row, for the back-off.
    pub(super) crashes: u32,
    pub(super) state: PodState,
}

impl PodEntry {
    /// A pod of `deployment`'s revision `hash`, waiting to be made.
    pub(super) fn new(
        deployment: Str,
        hash: Str,
        labels: Labels,
        template: Arc<PodTemplateSpec>,
        created: Str,
    ) -> Self {
        Self {
            deployment,
            hash,
            labels,
            template,
            created,
            restarts: 0,
            crashes: 0,
            state: PodState::Waiting {
                reason: "ContainerCreating",
                message: String::new(),
                retry_ms: 0,
                failure: None,
            },
        }
    }

    pub(super) fn phase(&self) -> PodPhase {
        match &self.state {
            PodState::Waiting { .. } => PodPhase::Starting,
            PodState::Running {
                ready_since: Some(since_ms),
                ..
            } => PodPhase::Ready {
                since_ms: *since_ms,
            },
            PodState::Running { .. } => PodPhase::Starting,
            PodState::Terminating { .. } => PodPhase::Terminating,
        }
    }

    /// The pod as the Deployment controller reads it.
    pub(super) fn observed(&self, name: &str) -> super::deployments::Observed {
        super::deployments::Observed {
            pod: rollout::Pod {
                name: name.to_string(),
                hash: self.hash.to_string(),
                phase: self.phase(),
            },
            retry_ms: match &self.state {
                PodState::Waiting { retry_ms, .. } => Some(*retry_ms),
                _ => None,
            },
        }
    }

    pub(super) fn running(&self) -> Option<&Arc<Container>> {
        match &self.state {
            PodState::Running { container, .. } => Some(container),
            _ => None,
        }
    }
}

/// What a rollout has done, for status, conditions and events.
pub(super) struct Progress {
    pub(super) hash: String,
    pub(super) generation: i64,
    pub(super) counts: (i32, i32, i32, i32),
    /// Last time anything moved (ms).
    pub(super) since_ms: u64,
    pub(super) failed: bool,
    pub(super) complete: bool,
    /// What the status shows besides the counts; none before the first plan.
    pub(super) shown: Option<Shown>,
    pub(super) events: VecDeque<Event>,
}

/// One event of a Deployment, kept small (its text is made when it is read).
pub(super) struct Event {
    pub(super) at_ms: u64,
    /// `Normal` or `Warning`.
    pub(super) kind: &'static str,
    pub(super) reason: &'static str,
    pub(super) message: Box<str>,
}

impl Event {
    pub(super) fn info(&self) -> EventInfo {
        EventInfo {
            at: crate::clock::rfc3339_ms(self.at_ms),
            kind: self.kind.into(),
            reason: self.reason.into(),
            message: self.message.to_string(),
        }
    }
}

/// What a Deployment's status shows, as of its last plan.
pub(super) struct Shown {
    /// The current revision's number.
    pub(super) revision: i64,
    /// This node's share of the replicas.
    pub(super) desired: i32,
    /// How many of them may be unavailable.
    pub(super) max_unavailable: i32,
    /// When it was planned (ms).
    pub(super) at_ms: u64,
}

/// What a Service's route holds now, to swap it only when that changes. The endpoints
/// are compared by identity: the key holds them, so no other container can take the
/// place of one in memory while it is compared.
pub(super) struct RouteKey {
    pub(super) containers: Vec<Arc<Container>>,
    pub(super) balancing: Balancing,
}

impl PartialEq for RouteKey {
    fn eq(&self, other: &Self) -> bool {
        self.balancing == other.balancing
            && self.containers.len() == other.containers.len()
            && self
                .containers
                .iter()
                .zip(&other.containers)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) pods: BTreeMap<String, PodEntry>,
    pub(super) progress: BTreeMap<String, Progress>,
    pub(super) routes: BTreeMap<String, RouteKey>,
    /// One log book per Deployment: its pods' lines, each naming its pod.
    pub(super) logs: BTreeMap<String, Arc<LogBook>>,
    /// Pods of each Deployment this node decided to run, last time it could decide.
    pub(super) shares: BTreeMap<String, i32>,
    /// Endpoints standing for other nodes' pods: (node, Service, n, ingress).
    pub(super) remotes: BTreeMap<(String, String, u32, std::net::SocketAddr), Arc<Container>>,
    /// Pods by label: what a Service's selector picks here.
    pub(super) pod_labels: index::LabelIndex,
    /// Services by selector: the Services that pick a pod.
    pub(super) selectors: index::LabelIndex,
    /// Deployments by their template's labels: whose pods on other nodes a Service picks.
    pub(super) templates: index::LabelIndex,
    /// The node ports of NodePort Services (what the NodePort controller reads).
    pub(super) node_port_wants: BTreeMap<String, Vec<u16>>,
    /// What the next passes look at.
    pub(super) queue: WorkQueue,
    /// What passes looked at since the Kubernetes API's feed last asked (all, names):
    /// what their status and events may have changed.
    pub(super) looked_at: (bool, BTreeSet<String>),
    /// Deployments whose counts here changed since they were last gossiped.
    pub(super) regossip: BTreeSet<String>,
    /// Pods to make beyond the last pass's batch.
    pub(super) backlog: BTreeSet<String>,
    /// Where the last placement put each Deployment: a pod's memory, pods by node.
    pub(super) placed: BTreeMap<String, (u64, skiff_spec::SortedMap<String, u32>)>,
    /// Memory the placed pods take on each node.
    pub(super) placed_memory: BTreeMap<String, u64>,
}

impl Inner {
    /// The pods of Deployment `name` (found by their names' prefix, not by a scan).
    pub(super) fn pods_of<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a PodEntry)> {
        let prefix = format!("{name}-");
        self.pods
            .range(prefix.clone()..)
            .take_while(move |(n, _)| n.starts_with(&prefix))
            .filter(move |(_, p)| p.deployment == name)
    }

    pub(super) fn add_pod(&mut self, name: String, pod: PodEntry) {
        self.pod_labels.set(&name, &pod.labels);
        self.pods.insert(name, pod);
    }

    pub(super) fn remove_pod(&mut self, name: &str) -> Option<PodEntry> {
        self.pod_labels.remove(name);
        self.backlog.remove(name);
        self.pods.remove(name)
    }

    pub(super) fn event(
        &mut self,
        deployment: &str,
        kind: &'static str,
        reason: &'static str,
        message: String,
    ) {
        if let Some(p) = self.progress.get_mut(deployment) {
            push_event(&mut p.events, kind, reason, message);
        }
    }
}

pub(super) fn push_event(
    events: &mut VecDeque<Event>,
    kind: &'static str,
    reason: &'static str,
    message: String,
) {
    if events.len() == EVENTS {
        events.pop_front();
    } else if events.len() == events.capacity() {
        // Most Deployments keep two or three events: no room for more until needed.
        events.reserve_exact(1);
    }
    events.push_back(Event {
        at_ms: crate::clock::now_ms(),
        kind,
        reason,
        message: message.into_boxed_str(),
    });
}

/// The node's pods of Deployments, shared by the reconciler, the probes and the API.
pub(crate) struct PodTable {
    pub(super) inner: Mutex<Inner>,
    pub(super) kick: Arc<Notify>,
    /// Counts the reconciler's passes: what waits for a rollout watches it.
    pub(super) passes: tokio::sync::watch::Sender<u64>,
}

impl PodTable {
    /// An empty table whose reconciler wakes on `kick`.
    pub(crate) fn new(kick: Arc<Notify>) -> Self {
        Self {
            inner: Mutex::default(),
            kick,
            passes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that sees every pass of the reconciler end.
    pub(crate) fn passes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.passes.subscribe()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the reconciler (after a change to the desired state or to a pod).
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// The images pods run, with the pods' names (garbage collection keeps them).
    pub(crate) fn images(&self) -> Vec<(Digest, String)> {
        self.lock()
            .pods
            .iter()
            .filter_map(|(name, p)| match &p.state {
                PodState::Running { image, .. } => Some((*image, name.clone())),
                _ => None,
            })
            .collect()
    }

    /// The log book of a Deployment's pods.
    pub(crate) fn log(&self, deployment: &str) -> Option<Arc<LogBook>> {
        self.lock().logs.get(deployment).cloned()
    }

    /// `instance` of `pod` passed its readiness check.
    pub(super) fn ready(&self, pod: &str, instance: &str) {
        let mut inner = self.lock();
        if let Some(PodEntry {
            deployment,
            state:
                PodState::Running {
                    container,
                    ready_since,
                    ..
                },
            ..
        }) = inner.pods.get_mut(pod)
            && container.id == instance
        {
            *ready_since = Some(now_ms());
            let deployment = ObjectRef::Deployment(deployment.to_string());
            inner.queue.add(deployment);
        }
        drop(inner);
        self.kick();
    }

    /// `instance` of `pod` ended (its process exited, its liveness probe failed): the
    /// pod restarts in place after the back-off.
    pub(super) fn restart(
        self: &Arc<Self>,
        pod: &str,
        instance: &str,
        reason: &'static str,
        message: String,
    ) {
        let mut inner = self.lock();
        let Some(p) = inner.pods.get_mut(pod) else {
            return;
        };
        let PodState::Running {
            container, probes, ..
        } = &p.state
        else {
            return;
        };
        if container.id != instance {
            return;
        }
        probes.cancel();
        let dead = container.clone();
        let ran_ms = now_ms().saturating_sub(dead.started_ms);
        p.crashes =
            crate::restart::Backoff::KUBERNETES.count(p.crashes, Duration::from_millis(ran_ms));
        p.restarts += 1;
        let wait = backoff_ms(p.crashes);
        p.state = PodState::Waiting {
            reason: "CrashLoopBackOff",
            message: format!("{message}; restarting in {} s", wait / 1000),
            retry_ms: now_ms() + wait,
            failure: None,
        };
        let deployment = p.deployment.to_string();
        inner.queue.add(ObjectRef::Deployment(deployment.clone()));
        warn!(pod, %message, "pod container ended; restarting it after a back-off");
        inner.event(
            &deployment,
            "Warning",
            reason,
            format!("pod {pod}: {message}"),
        );
        drop(inner);
        tokio::spawn(async move {
            launcher::retire(&dead, Duration::ZERO, launcher::STOP_GRACE).await;
        });
        self.kick();
    }

    /// A pod's container by name or id prefix, with its Deployment (for `ps`, `logs`).
    pub(crate) fn pod_container(&self, key: &str) -> Option<(Arc<Container>, String)> {
        let inner = self.lock();
        inner.pods.values().find_map(|p| {
            let c = match &p.state {
                PodState::Running { container, .. } => container,
                _ => return None,
            };
            (c.name == key || (key.len() >= 4 && c.id.starts_with(key)))
                .then(|| (c.clone(), p.deployment.to_string()))
        })
    }

    /// Every running pod's container with its Deployment, image and limits (`ps`).
    pub(crate) fn running_pods(&self) -> Vec<(Arc<Container>, String, Digest, skiff_spec::Limits)> {
        let inner = self.lock();
        inner
            .pods
            .values()
            .filter_map(|p| match &p.state {
                PodState::Running {
                    container,
                    image,
                    limits,
                    ..
                } => Some((
                    container.clone(),
                    p.deployment.to_string(),
                    *image,
                    limits.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Every pod's container (node shutdown drains them).
    pub(crate) fn pod_containers(&self) -> Vec<Arc<Container>> {
        let inner = self.lock();
        inner
            .pods
            .values()
            .filter_map(|p| match &p.state {
                PodState::Running { container, .. } | PodState::Terminating { container, .. } => {
                    Some(container.clone())
                }
                PodState::Waiting { .. } => None,
            })
            .collect()
    }
}

impl crate::standalone::Pods for PodTable {
    fn pod_container(&self, key: &str) -> Option<(Arc<Container>, String)> {
        PodTable::pod_container(self, key)
    }

    fn running_pods(&self) -> Vec<(Arc<Container>, String, Digest, skiff_spec::Limits)> {
        PodTable::running_pods(self)
    }

    fn pod_containers(&self) -> Vec<Arc<Container>> {
        PodTable::pod_containers(self)
    }

    fn log(&self, deployment: &str) -> Option<Arc<LogBook>> {
        PodTable::log(self, deployment)
    }

    fn images(&self) -> Vec<(Digest, String)> {
        PodTable::images(self)
    }
}
