//! Deployments and Services on this node: the reconciler.
//!
//! Desired state lives in the [`DesiredStore`](crate::desired::DesiredStore); this
//! module makes the node's pods match it. One task runs [`Apps::run_reconciler`]: woken
//! by every change, by pod events (ready, exited, stopped) and twice a second, it takes
//! what those marked (the whole picture at start, on node changes and every minute)
//! and, for each Deployment, runs the rollout planner ([`rollout::plan`]) and carries
//! out its actions; then it points each Service's route at the pods its selector
//! picks. A pass costs what changed, not what the node holds. It is the only thing that
//! starts or stops a
//! Deployment's pods. Pods live in memory only: after a restart (or `kill -9`) the node
//! has none, and the planner starts what the desired state asks for.
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use skiff_gateway::{Algorithm, Backends, Balancing, HashOn};
use skiff_image::ImageSummary;
use skiff_runtime::LogBook;
use skiff_runtime::RequestInfo;
use skiff_runtime::oci::Exit;
use skiff_spec::api::{ContainerStatus, EventInfo, RevisionInfo, RolloutHistory};
use skiff_spec::k8s::{
    self, Condition, ContainerState as K8sState, DeploymentStatus, ObjectMeta, PodTemplateSpec,
    Probe, Service, StateReason, StateRunning,
};
use skiff_spec::manifest::{HASH_ON_ANNOTATION, LOAD_BALANCER_ANNOTATION, annotation_params};
use skiff_spec::{AppKind, AppName, AppSpec, Digest, Labels, Str};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LinuxEvent;
use super::{Apps, LOG_LINES, Prepared, image_spec};
use crate::clock::now_ms;
use crate::container::{Container, ContainerState};
use crate::desired::rollout::{self, Action, Plan, PodPhase};
use crate::desired::{Applied, StoredDeployment};
use crate::error::AppError;
use crate::launcher::{self, LinuxStart};
use crate::state::OciOptions;
use skiff_gateway::Endpoint as _;

mod index;
mod probes;
pub(crate) mod spread;
mod status;

use probes::*;
use status::*;

/// Events kept per Deployment.
const EVENTS: usize = 50;

/// How often the Deployments still waiting for something are planned again.
const TICK: Duration = Duration::from_millis(500);

/// How often every Deployment and Service is planned, whatever changed (a safety net:
/// every change names what it touches).
const RESYNC: Duration = Duration::from_secs(60);

/// Pods made (at once) in one pass.
const LAUNCH_BATCH: usize = 64;

/// A pod annotation `deploy` sets: `at-start`, the pod is ready as soon as its container is made (apps deployed with
/// `skiff deploy`, whose Linux replicas' proxy holds requests until they listen).
pub(crate) const READY_ANNOTATION: &str = "skiff.dev/ready";

/// The back-off before the `n`th retry of a pod (n from 1): 1 s doubling to 5 min.
fn backoff_ms(n: u32) -> u64 {
    (1000u64 << n.saturating_sub(1).min(9)).min(300_000)
}

/// Where a pod is.
enum PodState {
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
struct PodEntry {
    deployment: Str,
    hash: Str,
    labels: Labels,
    template: Arc<PodTemplateSpec>,
    created: Str,
    restarts: i32,
    /// Failures in a row, for the back-off.
    crashes: u32,
    state: PodState,
}

impl PodEntry {
    /// A pod of `deployment`'s revision `hash`, waiting to be made.
    fn new(
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

    fn phase(&self) -> PodPhase {
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

    fn running(&self) -> Option<&Arc<Container>> {
        match &self.state {
            PodState::Running { container, .. } => Some(container),
            _ => None,
        }
    }
}

/// What a rollout has done, for status, conditions and events.
struct Progress {
    hash: String,
    generation: i64,
    counts: (i32, i32, i32, i32),
    /// Last time anything moved (ms).
    since_ms: u64,
    failed: bool,
    complete: bool,
    /// What the status shows besides the counts; none before the first plan.
    shown: Option<Shown>,
    events: VecDeque<Event>,
}

/// One event of a Deployment, kept small (its text is made when it is read).
struct Event {
    at_ms: u64,
    /// `Normal` or `Warning`.
    kind: &'static str,
    reason: &'static str,
    message: Box<str>,
}

impl Event {
    fn info(&self) -> EventInfo {
        EventInfo {
            at: crate::clock::rfc3339_ms(self.at_ms),
            kind: self.kind.into(),
            reason: self.reason.into(),
            message: self.message.to_string(),
        }
    }
}

/// What a Deployment's status shows, as of its last plan.
struct Shown {
    /// The current revision's number.
    revision: i64,
    /// This node's share of the replicas.
    desired: i32,
    /// How many of them may be unavailable.
    max_unavailable: i32,
    /// When it was planned (ms).
    at_ms: u64,
}

/// What a Service's route holds now, to swap it only when that changes. The endpoints
/// are compared by identity: the key holds them, so no other container can take the
/// place of one in memory while it is compared.
struct RouteKey {
    containers: Vec<Arc<Container>>,
    balancing: Balancing,
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
struct Inner {
    pods: BTreeMap<String, PodEntry>,
    progress: BTreeMap<String, Progress>,
    routes: BTreeMap<String, RouteKey>,
    /// One log book per Deployment: its pods' lines, each naming its pod.
    logs: BTreeMap<String, Arc<LogBook>>,
    /// NodePort listeners: port -> (Service, what stops it).
    node_ports: BTreeMap<u16, (String, CancellationToken)>,
    /// Ports that could not be bound (warned about once).
    unbindable: BTreeMap<u16, String>,
    /// Pods of each Deployment this node decided to run, last time it could decide.
    shares: BTreeMap<String, i32>,
    /// Endpoints standing for other nodes' pods: (node, Service, n, ingress).
    remotes: BTreeMap<(String, String, u32, std::net::SocketAddr), Arc<Container>>,
    /// Pods by label: what a Service's selector picks here.
    pod_labels: index::LabelIndex,
    /// Services by selector: the Services that pick a pod.
    selectors: index::LabelIndex,
    /// Deployments by their template's labels: whose pods on other nodes a Service picks.
    templates: index::LabelIndex,
    /// The node ports of NodePort Services.
    node_port_wants: BTreeMap<String, Vec<u16>>,
    /// What the next pass looks at.
    dirty: Dirty,
    /// Deployments whose counts here changed since they were last gossiped.
    regossip: BTreeSet<String>,
    /// Deployments their last plan left waiting for something (a rollout, a back-off, a
    /// deadline): each tick plans them again.
    unsettled: BTreeSet<String>,
    /// Pods to make beyond the last pass's batch.
    backlog: BTreeSet<String>,
    /// Where the last placement put each Deployment: a pod's memory, pods by node.
    placed: BTreeMap<String, (u64, skiff_spec::SortedMap<String, u32>)>,
    /// Memory the placed pods take on each node.
    placed_memory: BTreeMap<String, u64>,
}

/// What the reconciler's next pass must look at.
#[derive(Default)]
struct Dirty {
    /// Every Deployment and Service.
    all: bool,
    deployments: BTreeSet<String>,
    services: BTreeSet<String>,
}

impl Dirty {
    /// Marks what a change to the desired state touched.
    fn mark(&mut self, applied: &Applied) {
        let (Applied::Created(r)
        | Applied::Configured(r)
        | Applied::Unchanged(r)
        | Applied::Deleted(r)) = applied;
        match r.split_once('/') {
            Some(("deployment.apps", name)) => {
                self.deployments.insert(name.to_string());
            }
            Some(("service", name)) => {
                self.services.insert(name.to_string());
            }
            // Nodes cordoned or not change placement everywhere.
            _ => self.all = true,
        }
    }
}

impl Inner {
    /// The pods of Deployment `name` (found by their names' prefix, not by a scan).
    fn pods_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a String, &'a PodEntry)> {
        let prefix = format!("{name}-");
        self.pods
            .range(prefix.clone()..)
            .take_while(move |(n, _)| n.starts_with(&prefix))
            .filter(move |(_, p)| p.deployment == name)
    }

    fn add_pod(&mut self, name: String, pod: PodEntry) {
        self.pod_labels.set(&name, &pod.labels);
        self.pods.insert(name, pod);
    }

    fn remove_pod(&mut self, name: &str) -> Option<PodEntry> {
        self.pod_labels.remove(name);
        self.backlog.remove(name);
        self.pods.remove(name)
    }

    fn event(
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

fn push_event(
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
    inner: Mutex<Inner>,
    kick: Arc<Notify>,
    /// Counts the reconciler's passes: what waits for a rollout watches it.
    passes: tokio::sync::watch::Sender<u64>,
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

    fn lock(&self) -> MutexGuard<'_, Inner> {
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
    fn ready(&self, pod: &str, instance: &str) {
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
            let deployment = deployment.to_string();
            inner.dirty.deployments.insert(deployment);
        }
        drop(inner);
        self.kick();
    }

    /// `instance` of `pod` ended (its process exited, its liveness probe failed): the
    /// pod restarts in place after the back-off.
    fn restart(self: &Arc<Self>, pod: &str, instance: &str, reason: &'static str, message: String) {
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
        p.crashes = if ran_ms > 60_000 { 1 } else { p.crashes + 1 };
        p.restarts += 1;
        let wait = backoff_ms(p.crashes);
        p.state = PodState::Waiting {
            reason: "CrashLoopBackOff",
            message: format!("{message}; restarting in {} s", wait / 1000),
            retry_ms: now_ms() + wait,
            failure: None,
        };
        let deployment = p.deployment.to_string();
        inner.dirty.deployments.insert(deployment.clone());
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
}

/// The reconciler's view of a Service's balancing.
fn balancing(service: &Service) -> Balancing {
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

/// Random lowercase letters and digits without vowels (Kubernetes' pod-name suffix).
fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The app spec of a pod of `deployment` from `template`, with the image's defaults.
pub(super) fn pod_spec(
    deployment: &str,
    template: &PodTemplateSpec,
    summary: &ImageSummary,
) -> Result<AppSpec, AppError> {
    let c = template
        .spec
        .containers
        .first()
        .ok_or_else(|| AppError::invalid("invalid_manifest", "the pod has no container"))?;
    let invalid = |e: String| AppError::invalid("invalid_manifest", e);
    let mut params = annotation_params(&template.metadata.annotations).map_err(invalid)?;
    params.env = c
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    params.memory_bytes = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.get("memory"))
        .map(|q| q.bytes())
        .transpose()
        .map_err(|e| invalid(format!("resources.limits.memory: {e}")))?;
    params.replicas = Some(1);
    let name = AppName::new(deployment.to_string()).map_err(AppError::internal)?;
    let mut spec = image_spec(params, summary, name);
    // As Kubernetes: `command` replaces the image's ENTRYPOINT, `args` its CMD.
    if !c.command.is_empty() || !c.args.is_empty() {
        let entry = if c.command.is_empty() {
            summary.run.entrypoint.clone()
        } else {
            c.command.clone()
        };
        spec.args = entry.into_iter().chain(c.args.iter().cloned()).collect();
    }
    Ok(spec)
}

impl Apps {
    /// Runs the reconciler until the node stops. Run once, by the node.
    ///
    /// A pass plans what changed: the Deployments and Services the desired state's feed
    /// names, the Deployments whose pods moved (ready, ended, stopped), and on each tick
    /// the Deployments still waiting for something (a rollout, a back-off, a deadline).
    /// Every Deployment and Service is planned when the cluster's view changes, after a
    /// snapshot replaced the state, when the feed was missed, and every [`RESYNC`].
    pub(crate) async fn run_reconciler(&self, shutdown: CancellationToken) {
        let mut view = self.view.clone();
        let mut seen = view.borrow_and_update().clone();
        let mut feed = self.desired.subscribe();
        let mut restores = self.desired.restores();
        let mut resync = tokio::time::Instant::now() + RESYNC;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.pods.lock().dirty.all = true;
        loop {
            {
                let mut inner = self.pods.lock();
                loop {
                    use tokio::sync::broadcast::error::TryRecvError;
                    match feed.try_recv() {
                        Ok(change) => inner.dirty.mark(&change.applied),
                        Err(TryRecvError::Lagged(_)) => inner.dirty.all = true,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                let now_restores = self.desired.restores();
                if now_restores != restores || tokio::time::Instant::now() >= resync {
                    restores = now_restores;
                    inner.dirty.all = true;
                }
                if inner.dirty.all {
                    resync = tokio::time::Instant::now() + RESYNC;
                }
            }
            self.reconcile().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.pods.kick.notified() => {}
                // The cluster changed: a node came or went (everything is placed
                // again), another node's pods did (their Deployments are).
                Ok(()) = view.changed() => {
                    let now = view.borrow_and_update().clone();
                    let mut inner = self.pods.lock();
                    match spread::view_changes(&seen, &now) {
                        None => inner.dirty.all = true,
                        Some(changed) => inner.dirty.deployments.extend(changed),
                    }
                    seen = now;
                }
                _ = tick.tick() => {
                    let mut inner = self.pods.lock();
                    let waiting = inner.unsettled.clone();
                    inner.dirty.deployments.extend(waiting);
                }
            }
        }
    }

    /// This node's pods of each Deployment whose counts changed since the last call
    /// (what it gossips; `None`: it has none any more). The work is the changes', not
    /// the number of Deployments.
    pub(crate) fn changed_pod_counts(&self) -> Vec<(String, Option<crate::cluster::PodCounts>)> {
        spread::changed_pod_counts(&mut self.pods.lock())
    }

    /// One pass over what is marked dirty (everything, the first time): plan each
    /// Deployment, stop and start pods (at most [`LAUNCH_BATCH`] made per pass, so the
    /// first pods of a node restoring thousands serve while the rest are made), route
    /// each Service.
    pub(super) async fn reconcile(&self) {
        let dirty = std::mem::take(&mut self.pods.lock().dirty);
        let full = dirty.all;
        let view = self.view.borrow().clone();
        let now = now_ms();
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
                dirty
                    .deployments
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
            let mut names = dirty.services.clone();
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
                    unsettled,
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
                unsettled.retain(|name| wanted.contains(name.as_str()));
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
                    inner.unsettled.remove(name);
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
                let hash = &d.current().hash;
                let observed: Vec<rollout::Pod> = inner
                    .pods_of(name)
                    .map(|(n, p)| rollout::Pod {
                        name: n.clone(),
                        hash: p.hash.to_string(),
                        phase: p.phase(),
                    })
                    .collect();
                // This node's part of the Deployment, rolled out as a Deployment of its own.
                let target = targets.get(name).copied().unwrap_or(0);
                let plan = rollout::plan_replicas(&d.object, target, hash, &observed, now);
                track(&mut inner, d, target, &plan, now);
                let mut settled = plan.complete && plan.actions.is_empty();
                for action in plan.actions {
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
                for (pod, p) in inner.pods_of(name) {
                    match &p.state {
                        PodState::Waiting { retry_ms, .. } => {
                            settled = false;
                            if *retry_ms <= now {
                                launchable.insert(pod.clone());
                            }
                        }
                        PodState::Running { ready_since, .. } => {
                            settled &= ready_since.is_some();
                        }
                        PodState::Terminating { .. } => settled = false,
                    }
                }
                if settled {
                    inner.unsettled.remove(name);
                } else {
                    inner.unsettled.insert(name.clone());
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
                    let d = p.deployment.to_string();
                    inner.dirty.deployments.insert(d);
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
    }

    /// Stops a pod: out of its Services, drained, its process stopped, then forgotten.
    fn stop_pod(&self, pod: &str) {
        let mut inner = self.pods.lock();
        let Some(p) = inner.pods.get_mut(pod) else {
            return;
        };
        match &p.state {
            PodState::Waiting { .. } => {
                inner.remove_pod(pod);
            }
            PodState::Terminating { .. } => {}
            PodState::Running {
                container,
                probes,
                limits,
                ..
            } => {
                probes.cancel();
                let (container, grace) =
                    (container.clone(), limits.timeout() + Duration::from_secs(1));
                p.state = PodState::Terminating {
                    container: container.clone(),
                    since: crate::clock::now_rfc3339(),
                };
                let labels = p.labels.clone();
                let services: Vec<String> = inner
                    .selectors
                    .selecting(&labels)
                    .into_iter()
                    .map(String::from)
                    .collect();
                let (table, pod) = (self.pods.clone(), pod.to_string());
                let metrics = self.ingress.metrics.clone();
                tokio::spawn(async move {
                    launcher::retire(&container, grace, launcher::STOP_GRACE).await;
                    let mut inner = table.lock();
                    if let Some(p) = inner.remove_pod(&pod) {
                        inner.dirty.deployments.insert(p.deployment.into());
                    }
                    drop(inner);
                    metrics.forget_endpoint(&pod, services.iter().map(String::as_str));
                    table.kick();
                });
            }
        }
    }

    /// Makes a waiting pod's container; on failure the pod waits for the back-off.
    async fn launch(&self, pod: &str) {
        let (deployment, template, log) = {
            let mut inner = self.pods.lock();
            let Some(p) = inner.pods.get(pod) else {
                return;
            };
            if !matches!(p.state, PodState::Waiting { .. }) {
                return;
            }
            let (deployment, template) = (p.deployment.to_string(), p.template.clone());
            let log = inner
                .logs
                .entry(deployment.clone())
                .or_insert_with(|| LogBook::new(LOG_LINES))
                .clone();
            (deployment, template, log)
        };
        let made = self.make_pod(pod, &deployment, &template, &log).await;
        let mut inner = self.pods.lock();
        let waiting = inner
            .pods
            .get(pod)
            .is_some_and(|p| matches!(p.state, PodState::Waiting { .. }));
        if !waiting {
            // Stopped while it was being made.
            if let Ok((container, ..)) = made {
                tokio::spawn(async move {
                    launcher::retire(&container, Duration::ZERO, Duration::ZERO).await;
                });
            }
            return;
        }
        let p = inner.pods.get_mut(pod).expect("checked above");
        match made {
            Ok((container, image, limits)) => {
                let probes = CancellationToken::new();
                p.state = PodState::Running {
                    container: container.clone(),
                    image,
                    ready_since: None,
                    probes: probes.clone(),
                    limits,
                };
                let spec = template.spec.containers[0].clone();
                let at_start = template
                    .metadata
                    .annotations
                    .get(READY_ANNOTATION)
                    .is_some_and(|v| v == "at-start");
                info!(pod, deployment, "pod started");
                tokio::spawn(watch_pod(
                    self.pods.clone(),
                    pod.to_string(),
                    container,
                    spec,
                    at_start,
                    probes,
                ));
            }
            Err(e) => {
                p.crashes += 1;
                let wait = backoff_ms(p.crashes);
                let reason = match e.code() {
                    "not_found" => "ErrImagePull",
                    launcher::CONFIG_ERROR => "CreateContainerConfigError",
                    _ => "CreateContainerError",
                };
                p.state = PodState::Waiting {
                    reason,
                    message: e.message().to_string(),
                    retry_ms: now_ms() + wait,
                    failure: Some(e.clone()),
                };
                warn!(pod, deployment, error = %e, "pod could not start; trying again after a back-off");
                inner.event(
                    &deployment,
                    "Warning",
                    "Failed",
                    format!("pod {pod}: {}", e.message()),
                );
            }
        }
    }

    /// A pod's container from its template: the image resolved, compiled or extracted,
    /// and a container made (Wasm, static) or started (Linux), not ready yet.
    async fn make_pod(
        &self,
        pod: &str,
        deployment: &str,
        template: &PodTemplateSpec,
        log: &Arc<LogBook>,
    ) -> Result<(Arc<Container>, Digest, skiff_spec::Limits), AppError> {
        let c = template
            .spec
            .containers
            .first()
            .ok_or_else(|| AppError::invalid("invalid_manifest", "the pod has no container"))?;
        let digest = match self.images.resolve(&c.image).await {
            Err(AppError::NotFound(why)) => {
                // Not here: another node may have it.
                if !self.images.pull_from_peers(&c.image).await? {
                    return Err(AppError::NotFound(why));
                }
                self.images.resolve(&c.image).await?
            }
            other => other?,
        };
        let summary = self.images.summary(digest).await?;
        let prepared = self.images.prepare(&summary).await?;
        let spec = pod_spec(deployment, template, &summary)?;
        // Checked at apply too; a pod refuses what it cannot honour all the same.
        let (user, security) = skiff_spec::security::of_pod(&template.spec, 0, &summary.run.user)
            .map_err(|e| AppError::invalid(launcher::CONFIG_ERROR, e))?;
        let container = match &prepared {
            Prepared::Oci { root } => {
                let milli_cpus = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.limits.get("cpu"))
                    .map(|q| q.millicpus())
                    .transpose()
                    .map_err(|e| AppError::invalid("invalid_manifest", e))?
                    .map(|m| u32::try_from(m).unwrap_or(u32::MAX));
                let name = pod.to_string();
                self.launcher
                    .start_linux(
                        LinuxStart {
                            id: &crate::ids::new_id(),
                            name: pod,
                            spec: &spec,
                            summary: &summary,
                            root,
                            log,
                            oci: &OciOptions {
                                memory_bytes: Some(spec.limits.memory_bytes),
                                milli_cpus,
                                user: Some(user),
                                security,
                                ..OciOptions::default()
                            },
                            port: c
                                .ports
                                .first()
                                .and_then(|p| u16::try_from(p.container_port).ok()),
                            ready: false,
                        },
                        {
                            let exits = self.exits.clone();
                            move |instance, exit| {
                                let _ = exits.send(LinuxEvent::PodExited {
                                    pod: name,
                                    instance,
                                    exit,
                                });
                            }
                        },
                    )
                    .await?
            }
            _ => {
                security
                    .check_in_process(None)
                    .map_err(|e| AppError::invalid(launcher::CONFIG_ERROR, e))?;
                if matches!(spec.kind, AppKind::Http | AppKind::Wagi) {
                    self.launcher.admit(&spec.limits)?;
                }
                Arc::new(
                    self.launcher
                        .in_process(pod.to_string(), &spec, &prepared, log)?,
                )
            }
        };
        Ok((container, digest, spec.limits))
    }

    /// A Linux pod's process ended.
    pub(super) fn on_pod_exit(&self, pod: &str, instance: &str, exit: &Exit) {
        let how = if exit.oom_killed {
            "was killed for using more than its memory limit".to_string()
        } else {
            format!("exited with code {}", exit.code)
        };
        self.pods
            .restart(pod, instance, "BackOff", format!("container {how}"));
    }

    /// Points each Service's route at the running pods its selector picks, here and on
    /// the other live nodes, and its local route (what requests other nodes forward are
    /// served from) at the ones here; swaps a route only when what it holds changed
    /// (endpoint statistics live on the endpoints, so they survive the swap either way).
    fn route_services(
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
            let deployment = p.deployment.to_string();
            inner.dirty.deployments.insert(deployment);
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
    pub(super) fn rollout_progress(&self, d: &StoredDeployment) -> (bool, Option<AppError>) {
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
    pub(super) fn pod_statuses(
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

    /// A pod's container by name or id prefix, with its Deployment (for `ps`, `logs`).
    pub(super) fn pod_container(&self, key: &str) -> Option<(Arc<Container>, String)> {
        let inner = self.pods.lock();
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
    pub(super) fn running_pods(&self) -> Vec<(Arc<Container>, String, Digest, skiff_spec::Limits)> {
        let inner = self.pods.lock();
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
    /// meanwhile: each pod takes requests as soon as it is ready.
    pub(crate) async fn track_restore(&self, shutdown: CancellationToken) {
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
                // What a killed node left (a blob written, its image never tagged) goes
                // once, now that the pods have what they need.
                self.collect_garbage_now().await;
                // A restore allocates for every pod at once; what it freed goes back.
                crate::memory::trim();
                return;
            }
            if logged.elapsed() >= Duration::from_secs(1) {
                logged = tokio::time::Instant::now();
                info!(ready, pods = total, "restoring pods");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = passes.changed() => if changed.is_err() { return },
                // Readiness arrives between passes too.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Every pod's container (node shutdown drains them).
    pub(super) fn pod_containers(&self) -> Vec<Arc<Container>> {
        let inner = self.pods.lock();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balancers_a_manifest_may_name_are_the_gateways() {
        // The manifest reader (spec) cannot see the gateway's list: both must agree.
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, skiff_spec::manifest::LOAD_BALANCERS);
    }

    #[test]
    fn a_change_marks_only_the_object_it_names() {
        let mut dirty = Dirty::default();
        dirty.mark(&Applied::Created("deployment.apps/web".into()));
        dirty.mark(&Applied::Deleted("service/web".into()));
        dirty.mark(&Applied::Configured("deployment.apps/api".into()));
        assert!(!dirty.all);
        assert_eq!(
            dirty.deployments,
            BTreeSet::from(["api".to_string(), "web".to_string()])
        );
        assert_eq!(dirty.services, BTreeSet::from(["web".to_string()]));
        // A cordon changes where everything may run.
        dirty.mark(&Applied::Configured("node/one".into()));
        assert!(dirty.all);
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
