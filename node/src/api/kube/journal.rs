//! resourceVersions and watch events for the Kubernetes API.
//!
//! The objects kubectl sees come from several places (desired state, the reconciler's
//! pods on every node, gossip's members), and only the desired state is versioned. The
//! journal gives them one version line: each time a kind is read, its objects are
//! compared with the last ones seen, and every object that changed, appeared or went
//! away gets the next version and an event (`ADDED`, `MODIFIED`, `DELETED`). A list's
//! `resourceVersion` is the journal's version when it was read; a watch from it replays
//! the events after it, then follows new ones, so `kubectl get -w` and `rollout status`
//! miss nothing between their list and their watch. Only the last [`HISTORY`] events
//! are kept: a watch from before them is answered `410 Gone`, and the client lists
//! again, as with a compacted etcd.
//!
//! Versions start at the node's start time in microseconds, so a version a client
//! holds from before a restart is older than anything the restarted node has and is
//! answered `410` rather than taken for a recent one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::broadcast;

use super::Kind;

/// Events kept for watches that resume from a version.
pub(crate) const HISTORY: usize = 4096;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// One change of one object, with the object as it then was.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) version: u64,
    pub(crate) kind: Kind,
    pub(crate) change: Change,
    pub(crate) object: Value,
}

#[derive(Default)]
struct Inner {
    version: u64,
    /// Events before this version are forgotten.
    oldest: u64,
    /// The last state of every object seen, its version set.
    objects: HashMap<(Kind, String), Value>,
    history: VecDeque<Arc<Event>>,
}

/// The journal: one per node.
pub(crate) struct Journal {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    /// Serialises reads of the objects with their recording, so an older read never
    /// lands after a newer one.
    pub(crate) reading: tokio::sync::Mutex<()>,
}

impl Default for Journal {
    fn default() -> Self {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Self {
            inner: Mutex::new(Inner {
                version: start,
                oldest: start,
                ..Inner::default()
            }),
            events: broadcast::channel(HISTORY).0,
            reading: tokio::sync::Mutex::new(()),
        }
    }
}

fn name_of(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn set_version(object: &mut Value, version: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(version.to_string()));
    }
}

/// The object without its version, for comparing.
fn unversioned(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    o
}

/// Where a watch starts.
pub(crate) enum Start {
    /// Every object the journal holds now, as `ADDED`, and the version they are at.
    Now(Vec<Value>, u64),
    /// The events after the version asked for.
    After(Vec<Arc<Event>>),
}

impl Journal {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock still holds whole values.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The journal's version now.
    #[cfg(test)]
    fn version(&self) -> u64 {
        self.lock().version
    }

    /// Records what the objects of `kind` are now (every one of them) and gives them
    /// back with their versions, with the journal's version.
    pub(crate) fn observe(&self, kind: Kind, now: Vec<Value>) -> (Vec<Value>, u64) {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(now.len());
        let mut present = std::collections::HashSet::new();
        for mut object in now {
            let name = name_of(&object);
            present.insert(name.clone());
            let key = (kind, name);
            let fresh = unversioned(&object);
            match inner.objects.get(&key) {
                Some(old) if unversioned(old) == fresh => out.push(old.clone()),
                old => {
                    let change = if old.is_some() {
                        Change::Modified
                    } else {
                        Change::Added
                    };
                    inner.version += 1;
                    let version = inner.version;
                    set_version(&mut object, version);
                    inner.objects.insert(key, object.clone());
                    self.record(&mut inner, kind, change, object.clone());
                    out.push(object);
                }
            }
        }
        let gone: Vec<(Kind, String)> = inner
            .objects
            .keys()
            .filter(|(k, n)| *k == kind && !present.contains(n))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut object) = inner.objects.remove(&key) {
                inner.version += 1;
                let version = inner.version;
                set_version(&mut object, version);
                self.record(&mut inner, kind, Change::Deleted, object);
            }
        }
        let version = inner.version;
        (out, version)
    }

    fn record(&self, inner: &mut Inner, kind: Kind, change: Change, object: Value) {
        let event = Arc::new(Event {
            version: inner.version,
            kind,
            change,
            object,
        });
        if inner.history.len() == HISTORY
            && let Some(dropped) = inner.history.pop_front()
        {
            inner.oldest = dropped.version;
        }
        inner.history.push_back(event.clone());
        // No receiver is fine: nobody watches.
        let _ = self.events.send(event);
    }

    /// Starts a watch of `kind` from `from` (none or 0: from now, with every object the
    /// journal holds). Subscribes before reading, so nothing falls between the two; an
    /// event in both is told once by its version.
    pub(crate) fn watch(
        &self,
        kind: Kind,
        from: Option<u64>,
    ) -> Result<(Start, broadcast::Receiver<Arc<Event>>), u64> {
        let rx = self.events.subscribe();
        let inner = self.lock();
        let start = match from {
            Some(v) if v > 0 => {
                if v < inner.oldest {
                    return Err(inner.oldest);
                }
                Start::After(
                    inner
                        .history
                        .iter()
                        .filter(|e| e.kind == kind && e.version > v)
                        .cloned()
                        .collect(),
                )
            }
            _ => {
                let mut now: Vec<Value> = inner
                    .objects
                    .iter()
                    .filter(|((k, _), _)| *k == kind)
                    .map(|(_, o)| o.clone())
                    .collect();
                now.sort_by_key(name_of);
                Start::Now(now, inner.version)
            }
        };
        Ok((start, rx))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"phase": phase}})
    }

    #[test]
    fn changes_get_versions_and_events_in_order_and_old_watches_are_gone() {
        let j = Journal::default();
        let (objs, v0) = j.observe(Kind::Pod, vec![pod("a", "Pending")]);
        assert_eq!(objs[0]["metadata"]["resourceVersion"], v0.to_string());
        // Unchanged: same version, no event.
        let (objs, v1) = j.observe(Kind::Pod, vec![pod("a", "Pending")]);
        assert_eq!(v1, v0);
        assert_eq!(objs[0]["metadata"]["resourceVersion"], v0.to_string());
        let (Start::After(none), _) = j.watch(Kind::Pod, Some(v0)).unwrap() else {
            panic!()
        };
        assert!(none.is_empty());

        j.observe(Kind::Pod, vec![pod("a", "Running"), pod("b", "Pending")]);
        j.observe(Kind::Pod, vec![pod("b", "Pending")]);
        // Other kinds do not show in a pod watch.
        j.observe(Kind::Service, vec![json!({"metadata": {"name": "s"}})]);
        let (Start::After(events), _) = j.watch(Kind::Pod, Some(v0)).unwrap() else {
            panic!()
        };
        let seen: Vec<(Change, String)> = events
            .iter()
            .map(|e| (e.change, name_of(&e.object)))
            .collect();
        assert_eq!(
            seen,
            [
                (Change::Modified, "a".into()),
                (Change::Added, "b".into()),
                (Change::Deleted, "a".into())
            ]
        );
        assert!(events.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(
            events[2].object["metadata"]["resourceVersion"],
            events[2].version.to_string()
        );

        // Past the history: 410.
        for i in 0..HISTORY {
            j.observe(Kind::Pod, vec![pod("b", &i.to_string())]);
        }
        assert!(j.watch(Kind::Pod, Some(v0)).is_err());
        assert!(j.watch(Kind::Pod, Some(j.version())).is_ok());
    }
}
