//! The objects the Kubernetes API serves, kept as they are served: one versioned store
//! per node with a change feed (the shape of kine's, over an in-memory map).
//!
//! Objects are kept as the JSON they are served as (a tenth of the memory of parsed
//! values), with a digest to tell a rendering that changes nothing and an index of
//! their labels. What fills it is the [`feed`]: it renders an object again only when what it is made
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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::broadcast;

use super::Kind;
use crate::clock::now_micros;

/// Events kept per kind for watches that resume from a version.
pub(crate) const HISTORY: usize = 4096;

/// Bytes of events kept per kind, whatever their number.
const HISTORY_BYTES: usize = 4 << 20;

/// How far ahead of this node's clock a version a client brings may move it: further
/// is a clock gone wrong or a made-up version, and is not followed.
const MAX_AHEAD: Duration = Duration::from_secs(600);

/// A version a client brings this far ahead of the clock is written down before it is
/// followed, so the node starts past it after a restart (a restart takes longer than
/// this, so what is closer needs no writing).
const REMEMBER_AHEAD: Duration = Duration::from_secs(1);

/// A version a client brought from too far ahead (Kubernetes' "Too large resource
/// version").
#[derive(Debug)]
pub(crate) struct TooLarge {
    /// The version now.
    pub(crate) current: u64,
}

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

/// One change of one object, with the object as it then was (its JSON).
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) version: u64,
    pub(crate) change: Change,
    pub(crate) object: Bytes,
}

/// What a put did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Put {
    /// The object was there, the same.
    Same,
    /// A new object.
    Added,
    /// The object changed; it was this (its JSON).
    Modified(Bytes),
}

/// An object as kept: its JSON as served (with its version), and a digest of it
/// without the version, to tell a new rendering that changes nothing.
struct Entry {
    json: Bytes,
    digest: [u8; 16],
    labels: Vec<(String, String)>,
}

/// One kind's objects, their labels and recent events.
#[derive(Default)]
struct Shelf {
    objects: BTreeMap<String, Entry>,
    /// Names by label (key, value).
    labelled: HashMap<(String, String), BTreeSet<String>>,
    history: VecDeque<Arc<Event>>,
    history_bytes: usize,
    /// Events before this version are forgotten.
    oldest: u64,
}

impl Shelf {
    fn unlabel(&mut self, name: &str, labels: &[(String, String)]) {
        for l in labels {
            if let Some(names) = self.labelled.get_mut(l) {
                names.remove(name);
                if names.is_empty() {
                    self.labelled.remove(l);
                }
            }
        }
    }
}

struct Inner {
    version: u64,
    /// The high-water mark on disk: versions up to it are safe to give out after a restart.
    remembered: u64,
    shelves: HashMap<Kind, Shelf>,
}

/// The store: one per node.
pub(crate) struct Store {
    inner: Mutex<Inner>,
    /// Where the high-water mark of versions is kept (none: in tests).
    mark: Option<std::path::PathBuf>,
    feeds: HashMap<Kind, broadcast::Sender<Arc<Event>>>,
    /// Whether the feed has filled every kind once (reads wait for it).
    filled: tokio::sync::watch::Sender<bool>,
    /// Serialises rendering with putting, so an object rendered from an older state
    /// never lands after one rendered from a newer (see [`Store::render`]).
    rendering: tokio::sync::Mutex<()>,
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn labels_of(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

fn encode(object: &Value) -> Vec<u8> {
    serde_json::to_vec(object).expect("objects serialize")
}

/// Parses JSON the store made.
pub(crate) fn parse(json: &[u8]) -> Value {
    serde_json::from_slice(json).expect("the store holds JSON it wrote")
}

/// Where a watch starts.
pub(crate) enum Start {
    /// Every object now (their JSON), as `ADDED`, and the version they are at.
    Now(Vec<Bytes>, u64),
    /// The events after the version asked for.
    After(Vec<Arc<Event>>),
}

/// A watch from a version older than the events kept.
pub(crate) struct Expired {
    /// The oldest version a watch may start from.
    pub(crate) oldest: u64,
}

impl Store {
    /// An empty store whose versions start at the clock's now, kept only in memory.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::start(now_micros(), None)
    }

    /// An empty store whose versions start past the clock's now and past the high-water
    /// mark in `mark` (a version a client brought from ahead before a restart), which it
    /// keeps there.
    pub(crate) fn open(mark: std::path::PathBuf) -> Self {
        let remembered = std::fs::read_to_string(&mark)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut store = Self::start(now_micros().max(remembered), Some(mark));
        store.inner.get_mut().expect("new").remembered = remembered;
        store
    }

    fn start(start: u64, mark: Option<std::path::PathBuf>) -> Self {
        Self {
            mark,
            inner: Mutex::new(Inner {
                version: start,
                remembered: 0,
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
    /// far ahead of the clock is not followed: it is refused, with the version now.
    /// One well ahead of the clock is remembered on disk first (see [`Store::open`]).
    pub(crate) fn witness(&self, version: u64) -> Result<(), TooLarge> {
        let now = now_micros();
        if version > now.saturating_add(MAX_AHEAD.as_micros() as u64) {
            return Err(TooLarge {
                current: self.lock().version,
            });
        }
        let remembered = {
            let mut inner = self.lock();
            if version <= inner.version {
                return Ok(());
            }
            if version <= inner.remembered || version <= now + REMEMBER_AHEAD.as_micros() as u64 {
                inner.version = version;
                return Ok(());
            }
            inner.remembered
        };
        // Remembered a little further than asked, so a client pushing it forward a step
        // at a time writes once per step of REMEMBER_AHEAD; written without holding the
        // store, which every read takes.
        let mark = version + REMEMBER_AHEAD.as_micros() as u64;
        if let Some(path) = &self.mark
            && let Err(e) = crate::files::write_private(path, &mark.to_string())
        {
            tracing::warn!(error = %e, "the versions' high-water mark could not be written; a version this far ahead is refused");
            return Err(TooLarge {
                current: self.lock().version,
            });
        }
        let mut inner = self.lock();
        inner.remembered = inner.remembered.max(mark).max(remembered);
        inner.version = inner.version.max(version);
        Ok(())
    }

    fn tick(inner: &mut Inner) -> u64 {
        inner.version = (inner.version + 1).max(now_micros());
        inner.version
    }

    /// Puts `object` (of `kind`, named by its `metadata.name`) as it is now. The same
    /// object again changes nothing.
    pub(crate) fn put(&self, kind: Kind, mut object: Value) -> Put {
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let digest: [u8; 16] = Sha256::digest(encode(&object))[..16]
            .try_into()
            .expect("16 bytes");
        let name = name_of(&object).to_string();
        let labels = labels_of(&object);
        let mut inner = self.lock();
        let old = inner
            .shelves
            .get(&kind)
            .and_then(|s| s.objects.get(&name))
            .map(|e| (e.digest, e.json.clone()));
        if let Some((d, _)) = &old
            && *d == digest
        {
            return Put::Same;
        }
        let version = Self::tick(&mut inner);
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(version.to_string()));
        }
        let json = Bytes::from(encode(&object));
        let shelf = inner.shelves.entry(kind).or_default();
        if let Some(old) = shelf.objects.get(&name) {
            let old_labels = old.labels.clone();
            shelf.unlabel(&name, &old_labels);
        }
        for l in &labels {
            shelf
                .labelled
                .entry(l.clone())
                .or_default()
                .insert(name.clone());
        }
        shelf.objects.insert(
            name,
            Entry {
                json: json.clone(),
                digest,
                labels,
            },
        );
        let (change, put) = match old {
            Some((_, old)) => (Change::Modified, Put::Modified(old)),
            None => (Change::Added, Put::Added),
        };
        self.record(&mut inner, kind, change, json, version);
        put
    }

    /// Removes object `name` of `kind`, if there is one; gives back what it was.
    pub(crate) fn remove(&self, kind: Kind, name: &str) -> Option<Bytes> {
        let mut inner = self.lock();
        let shelf = inner.shelves.get_mut(&kind)?;
        let old = shelf.objects.remove(name)?;
        shelf.unlabel(name, &old.labels);
        let version = Self::tick(&mut inner);
        let mut object = parse(&old.json);
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(version.to_string()));
        }
        self.record(
            &mut inner,
            kind,
            Change::Deleted,
            Bytes::from(encode(&object)),
            version,
        );
        Some(old.json)
    }

    fn record(&self, inner: &mut Inner, kind: Kind, change: Change, object: Bytes, version: u64) {
        let shelf = inner.shelves.entry(kind).or_default();
        let event = Arc::new(Event {
            version,
            change,
            object,
        });
        shelf.history_bytes += event.object.len();
        shelf.history.push_back(event.clone());
        while shelf.history.len() > HISTORY || shelf.history_bytes > HISTORY_BYTES {
            let Some(dropped) = shelf.history.pop_front() else {
                break;
            };
            shelf.history_bytes -= dropped.object.len();
            shelf.oldest = dropped.version;
        }
        if let Some(feed) = self.feeds.get(&kind) {
            // No receiver is fine: nobody watches.
            let _ = feed.send(event);
        }
    }

    /// Object `name` of `kind` (its JSON).
    pub(crate) fn get(&self, kind: Kind, name: &str) -> Option<Bytes> {
        Some(
            self.lock()
                .shelves
                .get(&kind)?
                .objects
                .get(name)?
                .json
                .clone(),
        )
    }

    /// The objects `pick` finds in `kind`'s shelf, parsed outside the lock.
    fn found(&self, kind: Kind, pick: impl FnOnce(&Shelf) -> Vec<Bytes>) -> Vec<Value> {
        let found = match self.lock().shelves.get(&kind) {
            Some(shelf) => pick(shelf),
            None => return Vec::new(),
        };
        found.iter().map(|j| parse(j)).collect()
    }

    /// The objects of `kind` whose names start with `prefix`, by name.
    pub(crate) fn with_prefix(&self, kind: Kind, prefix: &str) -> Vec<Value> {
        self.found(kind, |shelf| {
            shelf
                .objects
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(n, _)| n.starts_with(prefix))
                .map(|(_, e)| e.json.clone())
                .collect()
        })
    }

    /// The objects of `kind` labelled `key=value`, by name.
    pub(crate) fn with_label(&self, kind: Kind, key: &str, value: &str) -> Vec<Value> {
        self.found(kind, |shelf| {
            shelf
                .labelled
                .get(&(key.to_string(), value.to_string()))
                .into_iter()
                .flatten()
                .filter_map(|n| Some(shelf.objects.get(n)?.json.clone()))
                .collect()
        })
    }

    /// The names of `kind`'s objects, in order.
    pub(crate) fn names(&self, kind: Kind) -> Vec<String> {
        self.lock()
            .shelves
            .get(&kind)
            .map(|s| s.objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every object of `kind` by name (their JSON), and the version they are at.
    pub(crate) fn list(&self, kind: Kind) -> (Vec<Bytes>, u64) {
        let inner = self.lock();
        let objects = inner
            .shelves
            .get(&kind)
            .map(|s| s.objects.values().map(|e| e.json.clone()).collect())
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
            _ => Start::Now(
                shelf.objects.values().map(|e| e.json.clone()).collect(),
                inner.version,
            ),
        };
        Ok((start, rx))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": "a"}}, "status": {"phase": phase}})
    }

    fn version_of(json: &[u8]) -> u64 {
        parse(json)["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn changes(events: &[Arc<Event>]) -> Vec<(Change, String)> {
        events
            .iter()
            .map(|e| (e.change, name_of(&parse(&e.object)).to_string()))
            .collect()
    }

    #[test]
    fn changes_get_versions_and_events_in_order_and_old_watches_are_gone() {
        let s = Store::new();
        assert_eq!(s.put(Kind::Pod, pod("a", "Pending")), Put::Added);
        let v0 = version_of(&s.get(Kind::Pod, "a").unwrap());
        // Unchanged (whatever version it is sent with): same version, no event.
        let mut again = pod("a", "Pending");
        again["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(s.put(Kind::Pod, again), Put::Same);
        assert_eq!(version_of(&s.get(Kind::Pod, "a").unwrap()), v0);
        assert_eq!(s.version(), v0);
        let Ok((Start::After(none), _)) = s.watch(Kind::Pod, Some(v0)) else {
            panic!()
        };
        assert!(none.is_empty());

        let Put::Modified(old) = s.put(Kind::Pod, pod("a", "Running")) else {
            panic!("a change is a modification")
        };
        assert_eq!(parse(&old)["status"]["phase"], "Pending", "what it was");
        s.put(Kind::Pod, pod("b", "Pending"));
        assert!(s.remove(Kind::Pod, "a").is_some());
        assert!(s.remove(Kind::Pod, "nothing").is_none());
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
        assert_eq!(version_of(&events[2].object), events[2].version);
        let (now, _) = s.list(Kind::Pod);
        assert_eq!(now.len(), 1);
        assert_eq!(
            parse(&s.get(Kind::Pod, "b").unwrap())["status"]["phase"],
            "Pending"
        );
        assert!(s.get(Kind::Pod, "a").is_none());
        assert_eq!(s.names(Kind::Pod), ["b"]);

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
    fn the_history_is_bounded_in_bytes_too() {
        let s = Store::new();
        let big = "x".repeat(64 << 10);
        s.put(Kind::Pod, pod("a", "0"));
        let v0 = version_of(&s.get(Kind::Pod, "a").unwrap());
        for i in 0..100 {
            s.put(Kind::Pod, pod("a", &format!("{i}{big}")));
        }
        let inner = s.lock();
        let shelf = &inner.shelves[&Kind::Pod];
        assert!(shelf.history_bytes <= HISTORY_BYTES);
        assert!(shelf.history.len() < 100);
        drop(inner);
        assert!(s.watch(Kind::Pod, Some(v0)).is_err(), "forgotten: 410");
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
        s.witness(ahead).unwrap();
        s.put(Kind::Pod, pod("a", "Pending"));
        let v = version_of(&s.get(Kind::Pod, "a").unwrap());
        assert!(v > ahead, "a version after one a client has seen is newer");
        let before = s.version();
        let too_far = s.witness(u64::MAX - 1).unwrap_err();
        assert_eq!(too_far.current, before);
        assert_eq!(s.version(), before, "a made-up version is not followed");
    }

    #[test]
    fn a_version_brought_from_ahead_is_remembered_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("kube-versions");
        let ahead = now_micros() + 300_000_000;
        {
            let s = Store::open(mark.clone());
            s.witness(ahead).unwrap();
        }
        let s = Store::open(mark.clone());
        s.put(Kind::Pod, pod("a", "Pending"));
        let v = version_of(&s.get(Kind::Pod, "a").unwrap());
        assert!(
            v > ahead,
            "after a restart, versions are past any given out before"
        );
        // One second ahead or less is not written (a restart takes longer).
        let near = Store::open(dir.path().join("near"));
        near.witness(now_micros() + 500_000).unwrap();
        assert!(!dir.path().join("near").exists());
    }

    #[test]
    fn objects_are_found_by_prefix_and_by_label() {
        let s = Store::new();
        for n in ["web-1", "web-2", "web2", "webx", "a"] {
            s.put(
                Kind::ReplicaSet,
                json!({"metadata": {"name": n, "labels": {"app": n.trim_end_matches(['1', '2', 'x'])}}}),
            );
        }
        let names = |found: Vec<Value>| -> Vec<String> {
            found.iter().map(|o| name_of(o).to_string()).collect()
        };
        assert_eq!(
            names(s.with_prefix(Kind::ReplicaSet, "web-")),
            ["web-1", "web-2"]
        );
        assert_eq!(
            names(s.with_label(Kind::ReplicaSet, "app", "web-")),
            ["web-1", "web-2"]
        );
        // Labels follow changes and removals.
        s.put(
            Kind::ReplicaSet,
            json!({"metadata": {"name": "web-1", "labels": {"app": "other"}}}),
        );
        s.remove(Kind::ReplicaSet, "web-2");
        assert!(s.with_label(Kind::ReplicaSet, "app", "web-").is_empty());
        assert_eq!(
            names(s.with_label(Kind::ReplicaSet, "app", "other")),
            ["web-1"]
        );
    }
}
