//! The objects the Kubernetes API serves, kept as they are served: one versioned store
//! per node with a change feed (the shape of kine's, over an in-memory map).
//!
//! What fills it is the [`feed`]: it renders an object again only when what it is made
//! from changed (a command applied to the desired state, a pass of the reconciler, a
//! peer's pods, gossip's view) and puts it here. A put that changes nothing costs a
//! comparison; one that changes the object gives it the next version and sends an event
//! (`ADDED`, `MODIFIED`, `DELETED`) to that kind's watchers. So a GET reads one object,
//! a list reads one kind, and a watch is pushed: nothing is re-read or diffed per
//! request, and nothing is asked of peers per watcher.
//!
//! Versions are a hybrid logical clock in microseconds: each change takes
//! `max(last + 1, now)`, and a version a client brings from another node moves the clock
//! past it ([`Store::witness`]). So versions grow across restarts (the clock does) and
//! across the nodes one client talks to (the clock is carried by the client), and a
//! watch resumed on another node replays what that node saw after the client's version.
//! Only the last [`HISTORY`] events of a kind are kept: a watch from before them is
//! answered `410 Gone`, and the client lists again, as with a compacted etcd.
//!
//! [`feed`]: super::feed

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::broadcast;

use super::Kind;

/// Events kept per kind for watches that resume from a version.
pub(crate) const HISTORY: usize = 4096;

/// How far ahead of this node's clock a version a client brings may move it: further
/// is a clock gone wrong or a made-up version, and is not followed.
const MAX_AHEAD: Duration = Duration::from_secs(600);

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
    pub(crate) change: Change,
    pub(crate) object: Arc<Value>,
}

/// One kind's objects and recent events.
#[derive(Default)]
struct Shelf {
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    /// Events before this version are forgotten.
    oldest: u64,
}

struct Inner {
    version: u64,
    shelves: HashMap<Kind, Shelf>,
}

/// The store: one per node.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    feeds: HashMap<Kind, broadcast::Sender<Arc<Event>>>,
    /// Whether the feed has filled every kind once (reads wait for it).
    filled: tokio::sync::watch::Sender<bool>,
    /// Serialises rendering with putting, so an object rendered from an older state
    /// never lands after one rendered from a newer (see [`Store::render`]).
    rendering: tokio::sync::Mutex<()>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn set_version(object: &mut Value, version: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(version.to_string()));
    }
}

/// Whether `a` and `b` are the same object but for their versions.
fn same(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    if a.len() != b.len() {
        return false;
    }
    a.iter().all(|(k, va)| {
        let Some(vb) = b.get(k) else { return false };
        if k != "metadata" {
            return va == vb;
        }
        let (Some(ma), Some(mb)) = (va.as_object(), vb.as_object()) else {
            return va == vb;
        };
        let n = |m: &serde_json::Map<String, Value>| {
            m.len() - usize::from(m.contains_key("resourceVersion"))
        };
        n(ma) == n(mb)
            && ma
                .iter()
                .filter(|(k, _)| *k != "resourceVersion")
                .all(|(k, v)| mb.get(k) == Some(v))
    })
}

/// Where a watch starts.
pub(crate) enum Start {
    /// Every object now, as `ADDED`, and the version they are at.
    Now(Vec<Arc<Value>>, u64),
    /// The events after the version asked for.
    After(Vec<Arc<Event>>),
}

/// A watch from a version older than the events kept.
pub(crate) struct Expired {
    /// The oldest version a watch may start from.
    pub(crate) oldest: u64,
}

impl Store {
    /// An empty store whose versions start at the clock's now.
    pub(crate) fn new() -> Self {
        let start = now_micros();
        Self {
            inner: Mutex::new(Inner {
                version: start,
                shelves: Kind::ALL
                    .iter()
                    .map(|kind| {
                        (
                            *kind,
                            Shelf {
                                oldest: start,
                                ..Shelf::default()
                            },
                        )
                    })
                    .collect(),
            }),
            feeds: Kind::ALL
                .iter()
                .map(|kind| (*kind, broadcast::channel(HISTORY).0))
                .collect(),
            filled: tokio::sync::watch::Sender::new(false),
            rendering: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock still holds whole values.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the turn to render objects and put them (the feed, and a write that
    /// answers with what it wrote).
    pub(crate) async fn render(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.rendering.lock().await
    }

    /// Marks the store filled: reads stop waiting.
    pub(crate) fn set_filled(&self) {
        self.filled.send_replace(true);
    }

    /// Waits until the feed has filled the store once (at most `limit`).
    pub(crate) async fn filled(&self, limit: Duration) {
        let mut rx = self.filled.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|f| *f)).await;
    }

    /// The version now.
    #[cfg(test)]
    pub(crate) fn version(&self) -> u64 {
        self.lock().version
    }

    /// Moves the clock past `version`, one a client brings (from this node or another):
    /// what this node versions next is newer than what the client has seen. A version
    /// far ahead of the clock is not followed.
    pub(crate) fn witness(&self, version: u64) {
        let limit = now_micros().saturating_add(MAX_AHEAD.as_micros() as u64);
        if version <= limit {
            let mut inner = self.lock();
            inner.version = inner.version.max(version);
        }
    }

    fn tick(inner: &mut Inner) -> u64 {
        inner.version = (inner.version + 1).max(now_micros());
        inner.version
    }

    /// Puts `object` (of `kind`, named by its `metadata.name`) as it is now; gives it
    /// back with its version. The same object again changes nothing.
    pub(crate) fn put(&self, kind: Kind, mut object: Value) -> Arc<Value> {
        let mut inner = self.lock();
        let name = name_of(&object).to_string();
        let shelf = inner.shelves.get(&kind);
        let old = shelf.and_then(|s| s.objects.get(&name));
        if let Some(old) = old
            && same(old, &object)
        {
            return old.clone();
        }
        let change = if old.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        let version = Self::tick(&mut inner);
        set_version(&mut object, version);
        let object = Arc::new(object);
        self.record(&mut inner, kind, name, change, object.clone(), version);
        object
    }

    /// Removes object `name` of `kind`, if there is one.
    pub(crate) fn remove(&self, kind: Kind, name: &str) {
        let mut inner = self.lock();
        let Some(old) = inner
            .shelves
            .get(&kind)
            .and_then(|s| s.objects.get(name))
            .cloned()
        else {
            return;
        };
        let version = Self::tick(&mut inner);
        let mut object = (*old).clone();
        set_version(&mut object, version);
        self.record(
            &mut inner,
            kind,
            name.to_string(),
            Change::Deleted,
            Arc::new(object),
            version,
        );
    }

    fn record(
        &self,
        inner: &mut Inner,
        kind: Kind,
        name: String,
        change: Change,
        object: Arc<Value>,
        version: u64,
    ) {
        let shelf = inner.shelves.entry(kind).or_default();
        if change == Change::Deleted {
            shelf.objects.remove(&name);
        } else {
            shelf.objects.insert(name, object.clone());
        }
        let event = Arc::new(Event {
            version,
            change,
            object,
        });
        if shelf.history.len() == HISTORY
            && let Some(dropped) = shelf.history.pop_front()
        {
            shelf.oldest = dropped.version;
        }
        shelf.history.push_back(event.clone());
        if let Some(feed) = self.feeds.get(&kind) {
            // No receiver is fine: nobody watches.
            let _ = feed.send(event);
        }
    }

    /// Object `name` of `kind`.
    pub(crate) fn get(&self, kind: Kind, name: &str) -> Option<Arc<Value>> {
        self.lock().shelves.get(&kind)?.objects.get(name).cloned()
    }

    /// The objects of `kind` whose names start with `prefix`, by name.
    pub(crate) fn with_prefix(&self, kind: Kind, prefix: &str) -> Vec<Arc<Value>> {
        let inner = self.lock();
        let Some(shelf) = inner.shelves.get(&kind) else {
            return Vec::new();
        };
        shelf
            .objects
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(n, _)| n.starts_with(prefix))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every object of `kind` by name, and the version they are at.
    pub(crate) fn list(&self, kind: Kind) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let objects = inner
            .shelves
            .get(&kind)
            .map(|s| s.objects.values().cloned().collect())
            .unwrap_or_default();
        (objects, inner.version)
    }

    /// Starts a watch of `kind` from `from` (none or 0: from now, with every object).
    /// Subscribes before reading, so nothing falls between the two; an event in both is
    /// told once by its version.
    pub(crate) fn watch(
        &self,
        kind: Kind,
        from: Option<u64>,
    ) -> Result<(Start, broadcast::Receiver<Arc<Event>>), Expired> {
        let rx = self.feeds[&kind].subscribe();
        let inner = self.lock();
        let shelf = &inner.shelves[&kind];
        let start = match from {
            Some(v) if v > 0 => {
                if v < shelf.oldest {
                    return Err(Expired {
                        oldest: shelf.oldest,
                    });
                }
                Start::After(
                    shelf
                        .history
                        .iter()
                        .filter(|e| e.version > v)
                        .cloned()
                        .collect(),
                )
            }
            _ => Start::Now(shelf.objects.values().cloned().collect(), inner.version),
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

    fn changes(events: &[Arc<Event>]) -> Vec<(Change, String)> {
        events
            .iter()
            .map(|e| (e.change, name_of(&e.object).to_string()))
            .collect()
    }

    #[test]
    fn changes_get_versions_and_events_in_order_and_old_watches_are_gone() {
        let s = Store::new();
        let a = s.put(Kind::Pod, pod("a", "Pending"));
        let v0: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // Unchanged: same version, no event.
        let again = s.put(Kind::Pod, pod("a", "Pending"));
        assert_eq!(again["metadata"]["resourceVersion"], v0.to_string());
        assert_eq!(s.version(), v0);
        let Ok((Start::After(none), _)) = s.watch(Kind::Pod, Some(v0)) else {
            panic!()
        };
        assert!(none.is_empty());

        s.put(Kind::Pod, pod("a", "Running"));
        s.put(Kind::Pod, pod("b", "Pending"));
        s.remove(Kind::Pod, "a");
        s.remove(Kind::Pod, "nothing");
        // Other kinds do not show in a pod watch.
        s.put(Kind::Service, json!({"metadata": {"name": "s"}}));
        let Ok((Start::After(events), _)) = s.watch(Kind::Pod, Some(v0)) else {
            panic!()
        };
        assert_eq!(
            changes(&events),
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
        let (now, _) = s.list(Kind::Pod);
        assert_eq!(now.len(), 1);
        assert_eq!(s.get(Kind::Pod, "b").unwrap()["status"]["phase"], "Pending");
        assert!(s.get(Kind::Pod, "a").is_none());

        // Past the history: 410.
        for i in 0..HISTORY {
            s.put(Kind::Pod, pod("b", &i.to_string()));
        }
        assert!(s.watch(Kind::Pod, Some(v0)).is_err());
        assert!(s.watch(Kind::Pod, Some(s.version())).is_ok());
        // Another kind's history is its own.
        assert!(s.watch(Kind::Service, Some(v0)).is_ok());
    }

    #[test]
    fn a_watch_sees_what_is_put_after_it_started() {
        let s = Store::new();
        s.put(Kind::Pod, pod("a", "Pending"));
        let Ok((Start::Now(now, at), mut rx)) = s.watch(Kind::Pod, None) else {
            panic!()
        };
        assert_eq!(now.len(), 1);
        s.put(Kind::Pod, pod("a", "Running"));
        let e = rx.try_recv().unwrap();
        assert_eq!(e.change, Change::Modified);
        assert!(e.version > at);
        assert!(rx.try_recv().is_err(), "one change, one event");
    }

    #[test]
    fn versions_follow_a_clients_version_but_not_one_from_far_ahead() {
        let s = Store::new();
        let ahead = now_micros() + 5_000_000;
        s.witness(ahead);
        let put = s.put(Kind::Pod, pod("a", "Pending"));
        let v: u64 = put["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(v > ahead, "a version after one a client has seen is newer");
        let before = s.version();
        s.witness(u64::MAX - 1);
        assert_eq!(s.version(), before, "a made-up version is not followed");
    }

    #[test]
    fn objects_from_a_prefix_are_only_those() {
        let s = Store::new();
        for n in ["web-1", "web-2", "web2", "webx", "a"] {
            s.put(Kind::ReplicaSet, json!({"metadata": {"name": n}}));
        }
        let found: Vec<String> = s
            .with_prefix(Kind::ReplicaSet, "web-")
            .iter()
            .map(|o| name_of(o).to_string())
            .collect();
        assert_eq!(found, ["web-1", "web-2"]);
    }
}
