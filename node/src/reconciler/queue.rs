//! The reconciler's work queue: which objects its next pass looks at. Triggers (a
//! change in the desired state's feed, a pod that became ready or ended, another
//! node's pods, a Deployment still rolling out) only put an object here; what a pass
//! does with it is decided from the whole desired and observed state, as a
//! level-triggered controller does. Each object is queued once however often it is
//! named; one may be queued for later (a retry, a back-off, a rollout still under way).

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::ObjectRef;

/// What one pass takes: everything, or the Deployments and Services named.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Batch {
    /// Every Deployment and Service (start, resync, a missed feed, a restored snapshot,
    /// a change of the cluster's nodes, a cordon).
    pub(super) all: bool,
    pub(super) deployments: BTreeSet<String>,
    pub(super) services: BTreeSet<String>,
}

/// Objects to reconcile, each once, now or from a time on.
#[derive(Default)]
pub(super) struct WorkQueue {
    all: bool,
    now: BTreeSet<ObjectRef>,
    /// Objects due later, with when (ms since the epoch).
    later: BTreeMap<ObjectRef, u64>,
}

impl WorkQueue {
    /// Queues `object` for the next pass (a later entry for it is dropped: the pass
    /// queues it again if it still waits).
    pub(super) fn add(&mut self, object: ObjectRef) {
        self.later.remove(&object);
        self.now.insert(object);
    }

    /// Queues every object for the next pass.
    pub(super) fn add_all(&mut self) {
        self.all = true;
    }

    /// Queues `object` for the first pass from `at_ms` on (the earlier time wins when
    /// it is queued twice; one queued for now stays queued for now).
    pub(super) fn add_after(&mut self, object: ObjectRef, at_ms: u64) {
        if self.now.contains(&object) {
            return;
        }
        let at = self.later.entry(object).or_insert(at_ms);
        *at = (*at).min(at_ms);
    }

    /// Takes what is due at `now_ms`. A node named means everything: whether it may
    /// take pods changes placement everywhere.
    pub(super) fn take(&mut self, now_ms: u64) -> Batch {
        let due: Vec<ObjectRef> = self
            .later
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(o, _)| o.clone())
            .collect();
        for o in due {
            self.later.remove(&o);
            self.now.insert(o);
        }
        let mut batch = Batch {
            all: std::mem::take(&mut self.all),
            ..Batch::default()
        };
        for object in std::mem::take(&mut self.now) {
            match object {
                ObjectRef::Deployment(name) => {
                    batch.deployments.insert(name);
                }
                ObjectRef::Service(name) => {
                    batch.services.insert(name);
                }
                ObjectRef::Node(_) => batch.all = true,
            }
        }
        if batch.all {
            // Everything is looked at: what waited for later is too.
            self.later.clear();
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_change_marks_only_the_object_it_names() {
        let mut q = WorkQueue::default();
        q.add(ObjectRef::Deployment("web".into()));
        q.add(ObjectRef::Service("web".into()));
        q.add(ObjectRef::Deployment("api".into()));
        q.add(ObjectRef::Deployment("web".into()));
        let batch = q.take(0);
        assert!(!batch.all);
        assert_eq!(batch.deployments, names(&["api", "web"]));
        assert_eq!(batch.services, names(&["web"]));
        assert_eq!(q.take(0), Batch::default(), "taken once");
        // A cordon changes where everything may run.
        q.add(ObjectRef::Node("one".into()));
        assert!(q.take(0).all);
    }

    #[test]
    fn an_object_queued_for_later_waits_until_then() {
        let mut q = WorkQueue::default();
        q.add_after(ObjectRef::Deployment("web".into()), 1000);
        q.add_after(ObjectRef::Deployment("web".into()), 2000);
        assert_eq!(q.take(999), Batch::default());
        assert_eq!(
            q.take(1000).deployments,
            names(&["web"]),
            "the earlier time wins"
        );
        assert_eq!(q.take(5000), Batch::default(), "and it is gone once taken");
        // Named now, it goes now and its later entry with it.
        q.add_after(ObjectRef::Deployment("web".into()), 1000);
        q.add(ObjectRef::Deployment("web".into()));
        q.add_after(ObjectRef::Deployment("web".into()), 500);
        assert_eq!(q.take(0).deployments, names(&["web"]));
        assert_eq!(q.take(u64::MAX), Batch::default());
    }

    #[test]
    fn everything_takes_what_waited_for_later_too() {
        let mut q = WorkQueue::default();
        q.add_after(ObjectRef::Deployment("web".into()), 1000);
        q.add_all();
        let batch = q.take(0);
        assert!(batch.all && batch.deployments.is_empty());
        assert_eq!(q.take(u64::MAX), Batch::default());
    }
}
