//! What keeps the [`store`] current: one task per node that follows every source of the
//! objects the Kubernetes API serves, and renders an object again only when its source
//! changed.
//!
//! | source | what it changes |
//! |---|---|
//! | the desired state's change feed (a command applied, its `ObjectRef`) | that Deployment (with its ReplicaSets and events) or Service (with its Endpoints and EndpointSlices); a cordon: the nodes |
//! | a pass of the reconciler | this node's pods; the Deployments the pass looked at (status, events) |
//! | a peer's pods (one long-poll per live peer, [`peers`]: what changed since the last) | that peer's pods |
//! | gossip's view | nodes; the Deployments whose pod counts a node gossips changed; a node gone takes its pods with it |
//! | a pod that changed | its Deployment's ReplicaSets, the Services whose selectors pick it |
//!
//! However many watch, each change is rendered once, here; and a peer's pods are asked
//! for once per change, not per reader. A write through this node renders what it wrote
//! at once ([`refresh`]) so its answer shows it.
//!
//! [`store`]: super::store
//! [`peers`]: super::peers

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff_spec::k8s;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::peers::{self, Remote};
use super::served::{self, finish};
use super::store::{Put, parse};
use super::{Kind, Resource};
use crate::Shared;
use crate::api::error::ApiError;
use crate::cluster::View;

/// How often nodes are rendered again without a cause (their Raft roles change with no
/// event of their own).
const NODES_EVERY: Duration = Duration::from_secs(2);

/// Most peers' answers queued for the feed: a peer waits its turn beyond it.
const REMOTE_QUEUE: usize = 64;

/// What changed and must be rendered again.
#[derive(Default)]
struct Dirty {
    all: bool,
    deployments: BTreeSet<String>,
    services: BTreeSet<String>,
    nodes: bool,
    /// Labels of pods that came, changed or went (before and after): the Services
    /// selecting them have new endpoints.
    labels: Vec<Value>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        !self.all
            && !self.nodes
            && self.deployments.is_empty()
            && self.services.is_empty()
            && self.labels.is_empty()
    }
}

/// The feed's memory between batches.
struct Feed {
    shared: Arc<Shared>,
    /// This node's name.
    me: String,
    /// The pods in the store of each node (with their Deployments), by node name.
    by_node: HashMap<String, BTreeMap<String, Option<String>>>,
    /// Whether this node's pods were all read once (after that, a pass's are enough).
    local_loaded: bool,
    /// Nodes' addresses, for pods' `hostIP`.
    hosts: HashMap<String, String>,
    view: Arc<View>,
    /// Snapshots restored when last seen (a restore replaces the state without events).
    restores: u64,
    /// A long-poll per live peer, by node id.
    followers: HashMap<String, Follower>,
    remote: mpsc::Sender<Remote>,
}

struct Follower {
    name: String,
    task: tokio::task::AbortHandle,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the feed until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut changes = shared.desired.subscribe();
    let mut passes = shared.reconciler.passes();
    let mut views = shared.view.subscribe();
    let (remote_tx, mut remote_rx) = mpsc::channel(REMOTE_QUEUE);
    let mut feed = Feed {
        me: shared.cluster.identity().name.clone(),
        view: views.borrow_and_update().clone(),
        restores: shared.desired.restores(),
        by_node: HashMap::new(),
        local_loaded: false,
        hosts: HashMap::new(),
        followers: HashMap::new(),
        remote: remote_tx,
        shared,
    };
    feed.shared
        .kube_store
        .put(Kind::Namespace, served::default_namespace());
    let mut dirty = Dirty {
        all: true,
        ..Dirty::default()
    };
    // Nodes first: pods show their node's address.
    nodes(&feed.shared.clone(), &mut feed.hosts).await;
    feed.follow_peers(&mut dirty);
    feed.local_pods(&mut dirty);
    feed.render(&mut dirty).await;
    feed.shared.kube_store.set_filled();
    let mut nodes_tick = tokio::time::interval(NODES_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Ok(change) => feed.desired(Some(change), &mut dirty),
                Err(RecvError::Lagged(_)) => feed.desired(None, &mut dirty),
                // The desired state is gone: the node is stopping.
                Err(RecvError::Closed) => return,
            },
            r = passes.changed() => {
                if r.is_err() {
                    return;
                }
                feed.local_pods(&mut dirty);
            }
            r = views.changed() => {
                if r.is_err() {
                    return;
                }
                let view = views.borrow_and_update().clone();
                feed.new_view(view, &mut dirty);
            }
            Some(news) = remote_rx.recv() => feed.remote(news, &mut dirty),
            _ = nodes_tick.tick() => dirty.nodes = true,
        }
        // Take in what else is waiting before rendering: one render for a burst.
        loop {
            match changes.try_recv() {
                Ok(change) => feed.desired(Some(change), &mut dirty),
                Err(TryRecvError::Lagged(_)) => feed.desired(None, &mut dirty),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        while let Ok(news) = remote_rx.try_recv() {
            feed.remote(news, &mut dirty);
        }
        let restores = feed.shared.desired.restores();
        if restores != feed.restores {
            feed.restores = restores;
            dirty.all = true;
        }
        feed.render(&mut dirty).await;
    }
}

/// Object `name` as it is after a write this request made: rendered again now (the feed
/// would, a moment later) so the answer shows the write.
pub(super) async fn fresh_object(
    shared: &Shared,
    res: &Resource,
    name: &str,
) -> Result<Value, ApiError> {
    refresh(shared, res.kind, name).await;
    served::get_object(shared, res, name).await
}

/// Renders object `name` of `kind` again now, with what derives from it (a write that
/// answers with what it wrote).
pub(super) async fn refresh(shared: &Shared, kind: Kind, name: &str) {
    let _turn = shared.kube_store.render().await;
    match kind {
        Kind::Deployment => deployment(shared, name),
        Kind::Service => service(shared, name),
        Kind::Node => nodes(shared, &mut HashMap::new()).await,
        _ => {}
    }
}

impl Feed {
    /// A command applied (none: the feed was missed, so everything may have changed).
    fn desired(&mut self, change: Option<crate::desired::Change>, dirty: &mut Dirty) {
        let Some(change) = change else {
            dirty.all = true;
            return;
        };
        match change.object {
            crate::desired::ObjectRef::Deployment(name) => {
                dirty.deployments.insert(name);
            }
            crate::desired::ObjectRef::Service(name) => {
                dirty.services.insert(name);
            }
            crate::desired::ObjectRef::Node(_) => dirty.nodes = true,
        }
    }

    /// This node's pods after passes of the reconciler: those of the Deployments they
    /// looked at (a pod changes only in a pass that looks at its Deployment), every pod
    /// after a pass that looked at everything; what changed goes in the log peers follow.
    fn local_pods(&mut self, dirty: &mut Dirty) {
        let (all, looked_at) = self.shared.reconciler.take_looked_at();
        let me = self.me.clone();
        let whole = all || !self.local_loaded;
        if !whole && looked_at.is_empty() {
            return;
        }
        let pods = if whole {
            dirty.all = true;
            self.local_loaded = true;
            self.shared.reconciler.pod_objects(&me)
        } else {
            self.shared.reconciler.pod_objects_of(&me, &looked_at)
        };
        let (changed, gone) = self.set_pods(&me, &pods, (!whole).then_some(&looked_at), dirty);
        let changed: Vec<k8s::Pod> = pods
            .into_iter()
            .filter(|p| changed.contains(&p.metadata.name))
            .collect();
        self.shared.local_pods.record(changed, gone);
        dirty.deployments.extend(looked_at);
    }

    /// What a peer's answer says of its pods (an answer that arrives after its node left
    /// the view is dropped: the node's pods went with it).
    fn remote(&mut self, news: Remote, dirty: &mut Dirty) {
        let (Remote::All(node, _) | Remote::Changed(node, _, _)) = &news;
        if !self.followers.values().any(|f| &f.name == node) {
            return;
        }
        match news {
            Remote::All(node, pods) => {
                self.set_pods(&node, &pods, None, dirty);
            }
            Remote::Changed(node, changed, removed) => {
                self.set_pods(&node, &changed, Some(&BTreeSet::new()), dirty);
                self.remove_pods(&node, &removed, dirty);
            }
        }
    }

    /// Takes node `node`'s pods `names` out.
    fn remove_pods(&mut self, node: &str, names: &[String], dirty: &mut Dirty) {
        if let Some(known) = self.by_node.get_mut(node) {
            for name in names {
                known.remove(name);
            }
        }
        for name in names {
            if let Some(old) = self.shared.kube_store.remove(Kind::Pod, name) {
                let mut old = parse(&old);
                dirty.deployments.extend(served::deployment_of(&old));
                dirty.labels.push(old["metadata"]["labels"].take());
            }
        }
    }

    /// Puts node `node`'s pods: all of them, or (`of`) those of these Deployments (a pod
    /// of another is left as it is); gives the names of those that came or changed, and
    /// of those that went.
    fn set_pods(
        &mut self,
        node: &str,
        pods: &[k8s::Pod],
        of: Option<&BTreeSet<String>>,
        dirty: &mut Dirty,
    ) -> (BTreeSet<String>, Vec<String>) {
        let store = &self.shared.kube_store;
        let host = self.hosts.get(node).map(String::as_str);
        let mut present = BTreeMap::new();
        let mut changed = BTreeSet::new();
        for pod in pods {
            let name = pod.metadata.name.clone();
            let new = served::pod_value(pod, host);
            let (labels, deployment) = (
                new["metadata"]["labels"].clone(),
                served::deployment_of(&new),
            );
            present.insert(name.clone(), deployment.clone());
            match store.put(Kind::Pod, new) {
                Put::Same => continue,
                Put::Added => {}
                Put::Modified(old) => {
                    dirty.labels.push(parse(&old)["metadata"]["labels"].take());
                }
            }
            changed.insert(name);
            dirty.labels.push(labels);
            dirty.deployments.extend(deployment);
        }
        let known = self.by_node.entry(node.to_string()).or_default();
        // Those not shown again, of what was asked about.
        let gone: Vec<String> = known
            .iter()
            .filter(|(n, _)| !present.contains_key(*n))
            .filter(|(_, d)| of.is_none_or(|of| d.as_ref().is_some_and(|d| of.contains(d))))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            known.remove(n);
        }
        known.extend(present);
        for gone in &gone {
            if let Some(old) = store.remove(Kind::Pod, gone) {
                let mut old = parse(&old);
                dirty.deployments.extend(served::deployment_of(&old));
                dirty.labels.push(old["metadata"]["labels"].take());
            }
        }
        (changed, gone)
    }

    /// A new view of the cluster: nodes, the Deployments whose counts changed, and a
    /// long-poll for each live peer.
    fn new_view(&mut self, view: Arc<View>, dirty: &mut Dirty) {
        dirty.nodes = true;
        let counts = |v: &View| -> BTreeMap<(String, String), crate::cluster::PodCounts> {
            v.nodes
                .iter()
                .filter(|n| n.id != v.me)
                .flat_map(|n| {
                    n.pods
                        .iter()
                        .map(|(d, c)| ((d.clone(), n.id.clone()), c.clone()))
                })
                .collect()
        };
        let (old, new) = (counts(&self.view), counts(&view));
        for (key, c) in &old {
            if new.get(key) != Some(c) {
                dirty.deployments.insert(key.0.clone());
            }
        }
        for key in new.keys().filter(|k| !old.contains_key(*k)) {
            dirty.deployments.insert(key.0.clone());
        }
        self.view = view;
        self.follow_peers(dirty);
    }

    /// Starts a long-poll for each live peer that has none, stops those of peers gone
    /// (and takes their pods out).
    fn follow_peers(&mut self, dirty: &mut Dirty) {
        let view = self.view.clone();
        let live: HashMap<&str, (&str, Option<&String>)> = view
            .nodes
            .iter()
            .filter(|n| n.id != view.me)
            .map(|n| (n.id.as_str(), (n.name.as_str(), n.api.as_ref())))
            .collect();
        let gone: Vec<String> = self
            .followers
            .keys()
            .filter(|id| !live.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(f) = self.followers.remove(&id) {
                let name = f.name.clone();
                drop(f);
                self.set_pods(&name, &[], None, dirty);
                self.by_node.remove(&name);
            }
        }
        for (id, (name, api)) in live {
            if self.followers.contains_key(id) {
                continue;
            }
            let (Some(raft_id), Some(api)) = (crate::raft::raft_id(id), api) else {
                continue;
            };
            let task = tokio::spawn(peers::follow(
                self.shared.clone(),
                raft_id,
                api.clone(),
                name.to_string(),
                self.remote.clone(),
            ));
            self.followers.insert(
                id.to_string(),
                Follower {
                    name: name.to_string(),
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// Renders what is dirty, in one turn.
    async fn render(&mut self, dirty: &mut Dirty) {
        if dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(dirty);
        let shared = self.shared.clone();
        let store = &shared.kube_store;
        let _turn = store.render().await;
        let (mut deployments, mut services) = (dirty.deployments, dirty.services);
        if dirty.all {
            let (stored, svcs) = shared.desired.read(|s| {
                (
                    s.state.deployments.keys().cloned().collect::<Vec<_>>(),
                    s.state.services.keys().cloned().collect::<Vec<_>>(),
                )
            });
            deployments.extend(stored);
            services.extend(svcs);
            // And what the store has that may be gone.
            deployments.extend(store.names(Kind::Deployment));
            services.extend(store.names(Kind::Service));
        }
        if dirty.all || dirty.nodes {
            nodes(&shared, &mut self.hosts).await;
        }
        if !dirty.labels.is_empty() {
            let picked: Vec<String> = shared.desired.read(|s| {
                s.state
                    .services
                    .values()
                    .filter(|svc| {
                        let selector = &svc.spec.selector;
                        !selector.is_empty()
                            && dirty.labels.iter().any(|labels| {
                                selector
                                    .iter()
                                    .all(|(k, v)| labels[k.as_str()].as_str() == Some(v.as_str()))
                            })
                    })
                    .map(|svc| svc.metadata.name.clone())
                    .collect()
            });
            services.extend(picked);
        }
        for name in &deployments {
            deployment(&shared, name);
        }
        for name in &services {
            service(&shared, name);
        }
    }
}

/// Puts `objects` of `kind` (those derived from one object) and takes out those of its
/// that are not among them any more: the objects named `prefix...` that `owned` says
/// derive from it.
fn replace_derived(
    store: &super::Store,
    kind: Kind,
    objects: Vec<Value>,
    prefix: &str,
    owned: impl Fn(&Value) -> bool,
) {
    let mut keep = BTreeSet::new();
    for o in objects {
        keep.insert(
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        store.put(kind, o);
    }
    for o in store.with_prefix(kind, prefix) {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        if owned(&o) && !keep.contains(name) {
            store.remove(kind, name);
        }
    }
}

/// Puts `object` of `kind` named `name`, or takes it out when there is none.
fn put_or_remove(store: &super::Store, kind: Kind, name: &str, object: Option<Value>) {
    match object {
        Some(o) => {
            store.put(kind, o);
        }
        None => {
            store.remove(kind, name);
        }
    }
}

/// Renders Deployment `name` with its ReplicaSets and events, or takes them out if it is
/// gone.
fn deployment(shared: &Shared, name: &str) {
    let store = &shared.kube_store;
    let (mut sets, mut events, mut object) = (Vec::new(), Vec::new(), None);
    if let Some(d) = shared.objects.stored_deployment(name) {
        let v = finish(Kind::Deployment, served::deployment_value(shared, &d));
        let pods = store.with_prefix(Kind::Pod, &format!("{name}-"));
        sets = served::replica_sets(&d, &v["status"], &pods);
        events = served::events(shared, &d);
        object = Some(v);
    }
    put_or_remove(store, Kind::Deployment, name, object);
    replace_derived(store, Kind::ReplicaSet, sets, &format!("{name}-"), |rs| {
        rs["metadata"]["ownerReferences"][0]["name"] == name
    });
    replace_derived(store, Kind::Event, events, &format!("{name}."), |e| {
        e["involvedObject"]["name"] == name
    });
}

/// Renders Service `name` with its Endpoints and EndpointSlices, or takes them out if it
/// is gone.
fn service(shared: &Shared, name: &str) {
    let store = &shared.kube_store;
    let (mut endpoints, mut slices, mut object) = (None, Vec::new(), None);
    if let Some(s) = shared.objects.service(name) {
        // The pods with the selector's first label: those it picks are among them.
        let pods = s
            .spec
            .selector
            .iter()
            .next()
            .map(|(k, v)| store.with_label(Kind::Pod, k, v))
            .unwrap_or_default();
        let v = finish(Kind::Service, served::service_value(s));
        (endpoints, slices) = served::service_endpoints(&v, &pods);
        object = Some(v);
    }
    put_or_remove(store, Kind::Service, name, object);
    put_or_remove(store, Kind::Endpoints, name, endpoints);
    replace_derived(
        store,
        Kind::EndpointSlice,
        slices,
        &format!("{name}-"),
        |slice| slice["metadata"]["labels"]["kubernetes.io/service-name"] == name,
    );
}

/// Renders every node gossip knows, takes out those it forgot, and notes their
/// addresses in `hosts`.
async fn nodes(shared: &Shared, hosts: &mut HashMap<String, String>) {
    let store = &shared.kube_store;
    let nodes = served::nodes(shared).await;
    let names: BTreeSet<String> = nodes.iter().map(|n| n.metadata.name.clone()).collect();
    for node in nodes {
        if let Some(ip) = served::host_ip(&node) {
            hosts.insert(node.metadata.name.clone(), ip);
        }
        store.put(Kind::Node, finish(Kind::Node, served::value(node)));
    }
    for name in store.names(Kind::Node) {
        if !names.contains(&name) {
            store.remove(Kind::Node, &name);
        }
    }
}
