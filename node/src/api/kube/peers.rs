//! Pods between nodes: each node keeps a log of its own pods' changes ([`PodLog`]), and
//! each peer follows it with one long-poll at a time ([`follow`]): it asks with the
//! version it has and is answered with what changed since (or everything, when it has
//! nothing, or the log no longer reaches back that far), as soon as something changes
//! or after [`POLL_HOLD`] with nothing. So a pod's change crosses the network once per
//! peer, as a few pods, however many watch and however many pods a node runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_spec::k8s;
use tokio::sync::mpsc;

use crate::Shared;

/// How long a peer holds a request for its pods before answering "no change".
pub(crate) const POLL_HOLD: Duration = Duration::from_secs(20);

/// How long to wait before asking a peer again after it failed to answer.
const RETRY: Duration = Duration::from_secs(1);

/// Changes kept for peers that ask from a version: one further behind gets everything.
const LOG: usize = 4096;

/// An answer: everything (`pods`), what changed (`changed`, `removed`), or nothing new.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LocalPods {
    /// The version of the pods it brings the asker to.
    pub(crate) version: u64,
    /// Every pod (the asker drops those it had that are not here).
    #[serde(default)]
    pub(crate) pods: Option<Vec<k8s::Pod>>,
    /// Pods new or changed since the version asked from.
    #[serde(default)]
    pub(crate) changed: Vec<k8s::Pod>,
    /// Pods gone since the version asked from.
    #[serde(default)]
    pub(crate) removed: Vec<String>,
}

/// What a peer asks with: the version of this node's pods it has (0: none).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PodsAfter {
    pub(crate) after: u64,
}

/// What a peer's answer tells the feed about node `node`'s pods.
pub(crate) enum Remote {
    /// All of them.
    All(String, Vec<k8s::Pod>),
    /// These changed, these went.
    Changed(String, Vec<k8s::Pod>, Vec<String>),
}

struct Log {
    version: u64,
    pods: BTreeMap<String, k8s::Pod>,
    /// (version, pod) of each change, oldest first.
    changes: VecDeque<(u64, String)>,
    /// Every change after this version is in `changes`.
    floor: u64,
}

/// This node's pods, with a log of their changes, for peers.
pub(crate) struct PodLog {
    log: Mutex<Log>,
    versions: tokio::sync::watch::Sender<u64>,
}

impl Default for PodLog {
    fn default() -> Self {
        // From the clock: a version a peer holds from before a restart is older than the
        // log's floor (everything is sent again), never taken for a recent one.
        let start = crate::clock::now_micros();
        Self {
            log: Mutex::new(Log {
                version: start,
                pods: BTreeMap::new(),
                changes: VecDeque::new(),
                floor: start,
            }),
            versions: tokio::sync::watch::Sender::new(start),
        }
    }
}

impl PodLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records pods that came or changed, and pods that went.
    pub(crate) fn record(&self, changed: Vec<k8s::Pod>, removed: Vec<String>) {
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        let mut log = self.lock();
        for pod in changed {
            log.version += 1;
            let (v, name) = (log.version, pod.metadata.name.clone());
            log.pods.insert(name.clone(), pod);
            log.changes.push_back((v, name));
        }
        for name in removed {
            if log.pods.remove(&name).is_some() {
                log.version += 1;
                let v = log.version;
                log.changes.push_back((v, name));
            }
        }
        while log.changes.len() > LOG {
            if let Some((v, _)) = log.changes.pop_front() {
                log.floor = v;
            }
        }
        let version = log.version;
        drop(log);
        self.versions.send_replace(version);
    }

    /// What a peer at version `after` is missing.
    pub(crate) fn since(&self, after: u64) -> LocalPods {
        let log = self.lock();
        if after == log.version {
            return LocalPods {
                version: after,
                ..LocalPods::default()
            };
        }
        if after < log.floor || after > log.version {
            return LocalPods {
                version: log.version,
                pods: Some(log.pods.values().cloned().collect()),
                ..LocalPods::default()
            };
        }
        let names: std::collections::BTreeSet<&String> = log
            .changes
            .iter()
            .filter(|(v, _)| *v > after)
            .map(|(_, n)| n)
            .collect();
        let mut answer = LocalPods {
            version: log.version,
            ..LocalPods::default()
        };
        for name in names {
            match log.pods.get(name) {
                Some(pod) => answer.changed.push(pod.clone()),
                None => answer.removed.push(name.clone()),
            }
        }
        answer
    }

    /// Answers a peer at version `after`: at once if the pods changed since, else when
    /// they change or after `hold` (then with nothing new).
    pub(crate) async fn after(&self, after: u64, hold: Duration) -> LocalPods {
        let mut rx = self.versions.subscribe();
        let _ = tokio::time::timeout(hold, rx.wait_for(|v| *v != after)).await;
        self.since(after)
    }
}

/// Answers a peer that has this node's pods at `after` (see [`PodLog::after`]); at once
/// when the node stops, so a held request does not hold up its drain.
pub(crate) async fn pods_after(shared: &Shared, after: u64) -> LocalPods {
    tokio::select! {
        answer = shared.local_pods.after(after, POLL_HOLD) => answer,
        () = shared.shutdown.cancelled() => shared.local_pods.since(after),
    }
}

/// Asks the peer `id` at `api` for its pods each time they change, and hands them to the
/// feed as node `name`'s, until aborted.
pub(super) async fn follow(
    shared: Arc<Shared>,
    id: u64,
    api: String,
    name: String,
    to: mpsc::Sender<Remote>,
) {
    let mut after = 0;
    loop {
        let answer = shared
            .consensus
            .client()
            .call::<_, LocalPods>(
                id,
                &api,
                "/v1/peer/pods/changes",
                &PodsAfter { after },
                POLL_HOLD + Duration::from_secs(10),
            )
            .await;
        let news = match answer {
            Ok(LocalPods {
                version,
                pods: Some(pods),
                ..
            }) => {
                after = version;
                Remote::All(name.clone(), pods)
            }
            Ok(LocalPods {
                version,
                changed,
                removed,
                ..
            }) => {
                after = version;
                if changed.is_empty() && removed.is_empty() {
                    continue;
                }
                Remote::Changed(name.clone(), changed, removed)
            }
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "a peer's pods could not be fetched");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if to.send(news).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str) -> k8s::Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": []},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn names(pods: &[k8s::Pod]) -> Vec<&str> {
        pods.iter().map(|p| p.metadata.name.as_str()).collect()
    }

    #[test]
    fn a_peer_gets_everything_first_then_what_changed_and_everything_when_too_far_behind() {
        let log = PodLog::default();
        log.record(vec![pod("a", "Pending"), pod("b", "Pending")], vec![]);
        let first = log.since(0);
        assert_eq!(names(first.pods.as_deref().unwrap()), ["a", "b"]);
        let at = first.version;
        assert!(log.since(at).pods.is_none() && log.since(at).changed.is_empty());

        log.record(vec![pod("a", "Running")], vec!["b".into(), "never".into()]);
        let next = log.since(at);
        assert!(next.pods.is_none(), "only what changed");
        assert_eq!(names(&next.changed), ["a"]);
        assert_eq!(next.changed[0].status.phase, "Running");
        assert_eq!(next.removed, ["b"]);
        assert!(next.version > at);

        // A version from before a restart, or ahead of the log: everything.
        assert!(log.since(1).pods.is_some());
        assert!(log.since(u64::MAX).pods.is_some());
        // Past the log: everything.
        for i in 0..=LOG {
            log.record(vec![pod("c", &i.to_string())], vec![]);
        }
        let all = log.since(next.version);
        assert_eq!(names(all.pods.as_deref().unwrap()), ["a", "c"]);
    }

    #[tokio::test]
    async fn a_peer_waits_for_a_change_or_the_hold() {
        let log = Arc::new(PodLog::default());
        let at = log.since(0).version;
        // Nothing changes: answered after the hold with nothing new.
        let quiet = log.after(at, Duration::from_millis(20)).await;
        assert_eq!(quiet.version, at);
        assert!(quiet.pods.is_none() && quiet.changed.is_empty());
        // A change wakes a waiting peer.
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.after(at, Duration::from_secs(600)).await }
        });
        tokio::task::yield_now().await;
        log.record(vec![pod("a", "Pending")], vec![]);
        let woke = waiting.await.unwrap();
        assert_eq!(names(&woke.changed), ["a"]);
    }
}
