//! The desired state, durable: the entries of the replicated log applied to the
//! in-memory [`State`] and written to redb in one transaction with the applied index and
//! the consensus layer's own record (its applied log id and membership, which Raft
//! assumes survive with the state), a change feed for whoever acts on the state (the
//! reconciler, `get -w`), and snapshots to restore from (what a follower that fell behind
//! installs).
//!
//! Only the rows an entry touched are written (an object, `meta/version`,
//! `meta/applied`, `meta/raft`), so a write costs the same with ten objects or ten
//! thousand. The applied index advances for rejected commands too: in a replicated log
//! every entry is applied, and a rejection is part of the state machine's answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Applied, Command, ObjectRef, Rejected, State};
use crate::state::{StateError, StateStore};

/// One change to the desired state, as the feed carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The command's index.
    pub index: u64,
    /// What it did (never `Unchanged`: those are not sent).
    pub applied: Applied,
    /// The object it touched.
    pub object: ObjectRef,
}

/// The whole state at an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last command it includes.
    pub applied: u64,
    /// The state.
    pub state: State,
}

/// Changes a slow watcher may fall behind before it is told it lagged (it then reads
/// the whole state again, as a Kubernetes watch does after a 410).
const FEED: usize = 1024;

/// The durable desired state.
pub struct DesiredStore {
    db: std::sync::Arc<StateStore>,
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Change>,
    /// Snapshots restored so far: a restore replaces everything and is not in the feed.
    restores: std::sync::atomic::AtomicU64,
}

struct Inner {
    snapshot: Snapshot,
    /// The consensus layer's record, opaque here.
    raft: Option<Vec<u8>>,
    /// How many Deployments name each image in a revision (garbage collection asks).
    pins: BTreeMap<String, u32>,
}

/// The images a Deployment's revisions name, each once.
fn images_of(d: Option<&super::StoredDeployment>) -> BTreeSet<String> {
    d.into_iter()
        .flat_map(|d| &d.revisions)
        .flat_map(|r| &r.template.spec.containers)
        .map(|c| c.image.clone())
        .collect()
}

/// Every image's pins in `state`.
fn pins_of(state: &State) -> BTreeMap<String, u32> {
    let mut pins = BTreeMap::new();
    for d in state.deployments.values() {
        for image in images_of(Some(d)) {
            *pins.entry(image).or_default() += 1;
        }
    }
    pins
}

/// Moves `pins` from the images of `before` to those of `after`.
fn repin(pins: &mut BTreeMap<String, u32>, before: BTreeSet<String>, after: BTreeSet<String>) {
    for image in before.difference(&after) {
        if let Some(n) = pins.get_mut(image) {
            *n -= 1;
            if *n == 0 {
                pins.remove(image);
            }
        }
    }
    for image in after.difference(&before) {
        *pins.entry(image.clone()).or_default() += 1;
    }
}

/// A stored object's row value.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored objects serialize")
}

/// The row `key` holds in `state`, encoded; `None` when the object does not exist.
fn row(state: &State, key: &str) -> Option<Vec<u8>> {
    match key.split_once('/') {
        Some(("deployments", name)) => state.deployments.get(name).map(encode),
        Some(("services", name)) => state.services.get(name).map(encode),
        Some(("nodes", name)) => state.cordoned.contains(name).then(|| b"cordoned".to_vec()),
        _ => None,
    }
}

/// Every row of `snapshot`.
fn rows(snapshot: &Snapshot) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, d) in &snapshot.state.deployments {
        out.push((format!("deployments/{name}"), encode(d)));
    }
    for (name, s) in &snapshot.state.services {
        out.push((format!("services/{name}"), encode(s)));
    }
    for name in &snapshot.state.cordoned {
        out.push((format!("nodes/{name}"), b"cordoned".to_vec()));
    }
    out.push((
        "meta/version".into(),
        snapshot.state.version.to_string().into_bytes(),
    ));
    out.push((
        "meta/applied".into(),
        snapshot.applied.to_string().into_bytes(),
    ));
    out
}

/// The row of the consensus layer's record.
const RAFT_ROW: &str = "meta/raft";

impl DesiredStore {
    /// Loads the state `db` holds.
    pub fn open(db: std::sync::Arc<StateStore>) -> Result<Self, StateError> {
        let mut snapshot = Snapshot {
            applied: 0,
            state: State::default(),
        };
        let mut raft = None;
        for (key, value) in db.desired_rows()? {
            let bad = |e: &dyn std::fmt::Display| StateError::Decode {
                key: key.clone(),
                message: e.to_string(),
            };
            let number = || {
                std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| bad(&"not a number"))
            };
            match key.split_once('/') {
                Some(("deployments", name)) => {
                    let mut d: super::StoredDeployment =
                        serde_json::from_slice(&value).map_err(|e| bad(&e))?;
                    d.share_templates();
                    snapshot
                        .state
                        .deployments
                        .insert(name.to_string(), std::sync::Arc::new(d));
                }
                Some(("services", name)) => {
                    let s = serde_json::from_slice(&value).map_err(|e| bad(&e))?;
                    snapshot.state.services.insert(name.to_string(), s);
                }
                Some(("nodes", name)) => {
                    snapshot.state.cordoned.insert(name.to_string());
                }
                Some(("meta", "version")) => snapshot.state.version = number()?,
                Some(("meta", "applied")) => snapshot.applied = number()?,
                Some(("meta", "raft")) => raft = Some(value.clone()),
                // Rows of a newer node: kept on disk, not read.
                _ => {}
            }
        }
        let pins = pins_of(&snapshot.state);
        Ok(Self {
            db,
            inner: Mutex::new(Inner {
                snapshot,
                raft,
                pins,
            }),
            feed: broadcast::channel(FEED).0,
            restores: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Applies the log entry at `index`, a command or `None` (an entry that only moves
    /// the index: Raft's blank and membership entries), and stores `raft` with it; durable
    /// before it answers. The outer error is the store's (nothing changed); the inner
    /// result the state machine's answer (a rejection advanced the index too).
    pub fn apply(
        &self,
        index: u64,
        command: Option<Command>,
        raft: &[u8],
    ) -> Result<Option<Result<Applied, Rejected>>, StateError> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *guard;
        let state = &mut inner.snapshot.state;
        let mut rows = vec![
            (RAFT_ROW.to_string(), Some(raft.to_vec())),
            (
                "meta/applied".to_string(),
                Some(index.to_string().into_bytes()),
            ),
        ];
        let mut undo = None;
        let mut pinned = None;
        let object = command.as_ref().map(Command::object);
        let result = command.map(|command| {
            let touched = command.object();
            let key = touched.key();
            undo = Some((key.clone(), state.clone_entry(&key), state.version));
            let deployment = match touched {
                ObjectRef::Deployment(name) => Some(name),
                _ => None,
            };
            let before = deployment
                .as_ref()
                .map(|n| images_of(state.deployments.get(n).map(|d| &**d)));
            let result = state.apply(command);
            if let (Some(n), Some(before)) = (&deployment, before) {
                pinned = Some((before, images_of(state.deployments.get(n).map(|d| &**d))));
            }
            rows.push((key.clone(), row(state, &key)));
            rows.push((
                "meta/version".to_string(),
                Some(state.version.to_string().into_bytes()),
            ));
            result
        });
        if let Err(e) = self.db.write_desired(&rows) {
            // Nothing is acknowledged that is not on disk: undo the change in memory.
            if let Some((key, before, version)) = undo {
                state.restore_entry(&key, before);
                state.version = version;
            }
            return Err(e);
        }
        inner.snapshot.applied = index;
        inner.raft = Some(raft.to_vec());
        if let Some((before, after)) = pinned {
            repin(&mut inner.pins, before, after);
        }
        if let (Some(Ok(applied)), Some(object)) = (&result, object)
            && !matches!(applied, Applied::Unchanged(_))
        {
            // No receivers is fine: nobody is watching.
            let _ = self.feed.send(Change {
                index,
                applied: applied.clone(),
                object,
            });
        }
        Ok(result)
    }

    /// The consensus layer's record as last stored (`None`: a state never replicated,
    /// such as one written by a node before clusters).
    pub fn raft_record(&self) -> Option<Vec<u8>> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .raft
            .clone()
    }

    /// The state now and the index it is at.
    pub fn snapshot(&self) -> Snapshot {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot
            .clone()
    }

    /// Reads the state now without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot)
    }

    /// Whether a revision of some Deployment names `image`.
    pub fn pinned(&self, image: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pins
            .contains_key(image)
    }

    /// The feed of changes from now on (without a copy of the state).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    /// How many snapshots replaced the whole state since the node started.
    pub fn restores(&self) -> u64 {
        self.restores.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The state now and a feed of every change after it, with none missed between.
    pub fn watch(&self) -> (Snapshot, broadcast::Receiver<Change>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.snapshot.clone(), self.feed.subscribe())
    }

    /// Replaces the whole state with `snapshot` and the consensus layer's record with
    /// `raft` (durably, in one transaction).
    pub fn restore(&self, mut snapshot: Snapshot, raft: &[u8]) -> Result<(), StateError> {
        for d in snapshot.state.deployments.values_mut() {
            std::sync::Arc::make_mut(d).share_templates();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = rows(&snapshot);
        all.push((RAFT_ROW.to_string(), raft.to_vec()));
        self.db.replace_desired(&all)?;
        *inner = Inner {
            pins: pins_of(&snapshot.state),
            snapshot,
            raft: Some(raft.to_vec()),
        };
        self.restores
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
}

/// One object of the state, by row key, to put back after a failed write.
pub(super) enum Entry {
    Deployment(Option<std::sync::Arc<super::StoredDeployment>>),
    Service(Option<Box<skiff_spec::k8s::Service>>),
    Cordoned(bool),
    Other,
}

impl State {
    fn clone_entry(&self, key: &str) -> Entry {
        match key.split_once('/') {
            Some(("deployments", name)) => Entry::Deployment(self.deployments.get(name).cloned()),
            Some(("services", name)) => {
                Entry::Service(self.services.get(name).cloned().map(Box::new))
            }
            Some(("nodes", name)) => Entry::Cordoned(self.cordoned.contains(name)),
            _ => Entry::Other,
        }
    }

    fn restore_entry(&mut self, key: &str, entry: Entry) {
        let Some((_, name)) = key.split_once('/') else {
            return;
        };
        match entry {
            Entry::Deployment(Some(d)) => {
                self.deployments.insert(name.to_string(), d);
            }
            Entry::Deployment(None) => {
                self.deployments.remove(name);
            }
            Entry::Service(Some(s)) => {
                self.services.insert(name.to_string(), *s);
            }
            Entry::Service(None) => {
                self.services.remove(name);
            }
            Entry::Cordoned(true) => {
                self.cordoned.insert(name.to_string());
            }
            Entry::Cordoned(false) => {
                self.cordoned.remove(name);
            }
            Entry::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use skiff_spec::manifest::{Object, parse};

    use super::*;

    fn apply_yaml(yaml: &str, at: &str) -> Command {
        match parse("m.yaml", yaml).unwrap().remove(0).object {
            Object::Deployment(d) => Command::ApplyDeployment {
                deployment: d,
                at: at.into(),
            },
            Object::Service(s) => Command::ApplyService {
                service: s,
                at: at.into(),
            },
        }
    }

    fn web(image: &str) -> Command {
        apply_yaml(
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
            ),
            "t",
        )
    }

    /// Applies `command` as the entry after the last.
    fn submit(
        store: &DesiredStore,
        command: Command,
    ) -> Result<Result<Applied, Rejected>, StateError> {
        let next = store.snapshot().applied + 1;
        let raft = format!("log {next}");
        store
            .apply(next, Some(command), raft.as_bytes())
            .map(|r| r.expect("a command has an answer"))
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";

    #[test]
    fn images_stay_pinned_while_a_revision_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = DesiredStore::open(Arc::new(StateStore::open(&path).unwrap())).unwrap();
        submit(&store, web("web:v1")).unwrap().unwrap();
        submit(&store, web("web:v2")).unwrap().unwrap();
        assert!(store.pinned("web:v1"), "an old revision keeps its image");
        assert!(store.pinned("web:v2"));
        assert!(!store.pinned("web:v3"));
        drop(store);
        let store = DesiredStore::open(Arc::new(StateStore::open(&path).unwrap())).unwrap();
        assert!(store.pinned("web:v1"), "counted again when opened");
        submit(&store, Command::DeleteDeployment { name: "web".into() })
            .unwrap()
            .unwrap();
        assert!(!store.pinned("web:v1") && !store.pinned("web:v2"));
    }

    #[test]
    fn commands_survive_reopening_with_their_index_and_feed_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = DesiredStore::open(Arc::new(StateStore::open(&path).unwrap())).unwrap();
            let (before, mut feed) = store.watch();
            assert_eq!(before.applied, 0);
            assert!(submit(&store, web("web:v1")).unwrap().is_ok());
            assert!(submit(&store, apply_yaml(SERVICE, "t")).unwrap().is_ok());
            assert_eq!(
                submit(&store, web("web:v1")).unwrap(),
                Ok(Applied::Unchanged("deployment.apps/web".into()))
            );
            let rejected = submit(
                &store,
                Command::DeleteService {
                    name: "nope".into(),
                },
            )
            .unwrap();
            assert!(rejected.is_err());
            assert!(submit(&store, web("web:v2")).unwrap().is_ok());
            // The feed saw the three changes, in order, with their indexes.
            let seen: Vec<u64> = std::iter::from_fn(|| feed.try_recv().ok())
                .map(|c| c.index)
                .collect();
            assert_eq!(seen, [1, 2, 5]);
        }
        let store = DesiredStore::open(Arc::new(StateStore::open(&path).unwrap())).unwrap();
        assert_eq!(store.raft_record().as_deref(), Some(&b"log 5"[..]));
        // An entry without a command moves the index and the record only.
        assert_eq!(store.apply(6, None, b"log 6").unwrap(), None);
        let snap = store.snapshot();
        assert_eq!(
            snap.applied, 6,
            "rejections and unchanged commands are applied entries too"
        );
        let d = &snap.state.deployments["web"];
        assert_eq!(d.revisions.len(), 2);
        assert_eq!(d.object.spec.template.spec.containers[0].image, "web:v2");
        assert!(snap.state.services.contains_key("web"));
    }

    #[test]
    fn a_failed_write_changes_nothing_and_restore_replaces_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (db, fail) = crate::state::testing::flaky_store(&dir.path().join("state.redb"));
        let store = DesiredStore::open(Arc::new(db)).unwrap();
        submit(&store, web("web:v1")).unwrap().unwrap();
        let before = store.snapshot();
        fail.store(true, Ordering::SeqCst);
        assert!(submit(&store, web("web:v2")).is_err());
        assert_eq!(store.snapshot(), before, "memory matches the disk");
        fail.store(false, Ordering::SeqCst);
        submit(&store, web("web:v2")).unwrap().unwrap();
        assert_eq!(store.snapshot().applied, 2);

        // A snapshot from elsewhere (a leader's) replaces the whole state.
        let mut other = State::default();
        other.apply(apply_yaml(SERVICE, "t0")).unwrap();
        let snapshot = Snapshot {
            applied: 40,
            state: other,
        };
        store.restore(snapshot.clone(), b"leader's").unwrap();
        assert_eq!(store.snapshot(), snapshot);
        assert_eq!(store.raft_record().as_deref(), Some(&b"leader's"[..]));
        let reopened = DesiredStore::open(store.db.clone()).unwrap();
        assert_eq!(reopened.snapshot(), snapshot);
        assert_eq!(reopened.raft_record().as_deref(), Some(&b"leader's"[..]));
    }
}
