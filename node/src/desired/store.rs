//! The desired state, durable: commands applied to the in-memory [`State`] and written
//! to redb in one transaction with the applied index, a change feed for whoever acts on
//! the state (the reconciler, `get -w`), and a snapshot to restore from (what a Raft
//! follower that fell behind installs).
//!
//! Only the rows a command touched are written (an object, `meta/version`,
//! `meta/applied`), so a write costs the same with ten objects or ten thousand. The
//! applied index advances for rejected commands too: in a replicated log every entry is
//! applied, and a rejection is part of the state machine's answer.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Applied, Command, Rejected, State};
use crate::state::{StateError, StateStore};

/// One change to the desired state, as the feed carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The command's index.
    pub index: u64,
    /// What it did (never `Unchanged`: those are not sent).
    pub applied: Applied,
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
    inner: Mutex<Snapshot>,
    feed: broadcast::Sender<Change>,
}

/// The rows of the objects a command touches.
fn touched_key(command: &Command) -> String {
    match command {
        Command::ApplyDeployment { deployment, .. } => {
            format!("deployments/{}", deployment.metadata.name)
        }
        Command::ScaleDeployment { name, .. }
        | Command::SetImage { name, .. }
        | Command::Rollback { name, .. }
        | Command::DeleteDeployment { name } => format!("deployments/{name}"),
        Command::ApplyService { service, .. } => format!("services/{}", service.metadata.name),
        Command::DeleteService { name } => format!("services/{name}"),
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

impl DesiredStore {
    /// Loads the state `db` holds.
    pub fn open(db: std::sync::Arc<StateStore>) -> Result<Self, StateError> {
        let mut snapshot = Snapshot {
            applied: 0,
            state: State::default(),
        };
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
                    let d = serde_json::from_slice(&value).map_err(|e| bad(&e))?;
                    snapshot.state.deployments.insert(name.to_string(), d);
                }
                Some(("services", name)) => {
                    let s = serde_json::from_slice(&value).map_err(|e| bad(&e))?;
                    snapshot.state.services.insert(name.to_string(), s);
                }
                Some(("meta", "version")) => snapshot.state.version = number()?,
                Some(("meta", "applied")) => snapshot.applied = number()?,
                // Rows of a newer node: kept on disk, not read.
                _ => {}
            }
        }
        Ok(Self {
            db,
            inner: Mutex::new(snapshot),
            feed: broadcast::channel(FEED).0,
        })
    }

    /// Applies `command` as the next index and makes it durable before answering. The
    /// outer error is the store's (nothing changed); the inner one the state machine's
    /// rejection (the index advanced).
    pub fn submit(&self, command: Command) -> Result<Result<Applied, Rejected>, StateError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = touched_key(&command);
        let before = inner.state.clone_entry(&key);
        let version_before = inner.state.version;
        let index = inner.applied + 1;
        let result = inner.state.apply(command);
        let rows = vec![
            (key.clone(), row(&inner.state, &key)),
            (
                "meta/version".to_string(),
                Some(inner.state.version.to_string().into_bytes()),
            ),
            (
                "meta/applied".to_string(),
                Some(index.to_string().into_bytes()),
            ),
        ];
        if let Err(e) = self.db.write_desired(&rows) {
            // Nothing is acknowledged that is not on disk: undo the change in memory.
            inner.state.restore_entry(&key, before);
            inner.state.version = version_before;
            return Err(e);
        }
        inner.applied = index;
        if let Ok(applied) = &result
            && !matches!(applied, Applied::Unchanged(_))
        {
            // No receivers is fine: nobody is watching.
            let _ = self.feed.send(Change {
                index,
                applied: applied.clone(),
            });
        }
        Ok(result)
    }

    /// The state now and the index it is at.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the state now without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The state now and a feed of every change after it, with none missed between.
    pub fn watch(&self) -> (Snapshot, broadcast::Receiver<Change>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.clone(), self.feed.subscribe())
    }

    /// Replaces the whole state with `snapshot` (durably, in one transaction).
    pub fn restore(&self, snapshot: Snapshot) -> Result<(), StateError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.db.replace_desired(&rows(&snapshot))?;
        *inner = snapshot;
        Ok(())
    }
}

/// One object of the state, by row key, to put back after a failed write.
pub(super) enum Entry {
    Deployment(Option<Box<super::StoredDeployment>>),
    Service(Option<Box<skiff_spec::k8s::Service>>),
    Other,
}

impl State {
    fn clone_entry(&self, key: &str) -> Entry {
        match key.split_once('/') {
            Some(("deployments", name)) => {
                Entry::Deployment(self.deployments.get(name).cloned().map(Box::new))
            }
            Some(("services", name)) => {
                Entry::Service(self.services.get(name).cloned().map(Box::new))
            }
            _ => Entry::Other,
        }
    }

    fn restore_entry(&mut self, key: &str, entry: Entry) {
        let Some((_, name)) = key.split_once('/') else {
            return;
        };
        match entry {
            Entry::Deployment(Some(d)) => {
                self.deployments.insert(name.to_string(), *d);
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

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";

    #[test]
    fn commands_survive_reopening_with_their_index_and_feed_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = DesiredStore::open(Arc::new(StateStore::open(&path).unwrap())).unwrap();
            let (before, mut feed) = store.watch();
            assert_eq!(before.applied, 0);
            assert!(store.submit(web("web:v1")).unwrap().is_ok());
            assert!(store.submit(apply_yaml(SERVICE, "t")).unwrap().is_ok());
            assert_eq!(
                store.submit(web("web:v1")).unwrap(),
                Ok(Applied::Unchanged("deployment.apps/web".into()))
            );
            let rejected = store
                .submit(Command::DeleteService {
                    name: "nope".into(),
                })
                .unwrap();
            assert!(rejected.is_err());
            assert!(store.submit(web("web:v2")).unwrap().is_ok());
            // The feed saw the three changes, in order, with their indexes.
            let seen: Vec<u64> = std::iter::from_fn(|| feed.try_recv().ok())
                .map(|c| c.index)
                .collect();
            assert_eq!(seen, [1, 2, 5]);
        }
        let store = DesiredStore::open(Arc::new(StateStore::open(&path).unwrap())).unwrap();
        let snap = store.snapshot();
        assert_eq!(
            snap.applied, 5,
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
        store.submit(web("web:v1")).unwrap().unwrap();
        let before = store.snapshot();
        fail.store(true, Ordering::SeqCst);
        assert!(store.submit(web("web:v2")).is_err());
        assert_eq!(store.snapshot(), before, "memory matches the disk");
        fail.store(false, Ordering::SeqCst);
        store.submit(web("web:v2")).unwrap().unwrap();
        assert_eq!(store.snapshot().applied, 2);

        // A snapshot from elsewhere (a leader's) replaces the whole state.
        let mut other = State::default();
        other.apply(apply_yaml(SERVICE, "t0")).unwrap();
        let snapshot = Snapshot {
            applied: 40,
            state: other,
        };
        store.restore(snapshot.clone()).unwrap();
        assert_eq!(store.snapshot(), snapshot);
    }
}
