//! The Raft state machine is the desired state: each committed entry is applied by
//! [`DesiredStore::apply`], which writes the touched rows, the applied index and this
//! layer's record (applied log id and membership) in one redb transaction, because
//! openraft assumes applied entries and the membership survive a restart together.
//!
//! A snapshot is the whole desired state as JSON, built from the state each time one
//! is asked for (at start, and for a follower that fell behind): none is kept, as a
//! copy of the whole state held for the rare follower would be most of a node's
//! memory. The meta of an installed snapshot is kept, so it is the one given back.
//!
//! A write that finds the disk full is tried again until space is back (`disk.rs`);
//! any other failure of the store stops Raft on this node.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::disk::DiskWait;
use super::{Entry, NodeId, Peer, Reply, TypeConfig};
use crate::desired::{self, DesiredStore, Versioned};
use crate::state::StateError;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What this layer stores beside the state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Peer>,
}

/// The state machine openraft drives.
pub struct Machine {
    store: Arc<DesiredStore>,
    record: Record,
    /// The meta of the last snapshot installed.
    installed: Option<SnapshotMeta<NodeId, Peer>>,
    /// Wakes the reconciler after a change.
    changed: Arc<tokio::sync::Notify>,
    /// Where a write that finds the disk full waits for space.
    wait: Arc<DiskWait>,
}

/// What the state machine's writes are called while they wait.
const WAITER: &str = "the desired state";

/// Whether the store failed because the disk is full.
fn no_space(e: &StateError) -> bool {
    matches!(e, StateError::NoSpace { .. })
}

/// A blocking task that died as a store error (fatal, as any but a full disk).
fn died(e: tokio::task::JoinError) -> StateError {
    StateError::Db {
        op: "apply an entry",
        message: e.to_string(),
    }
}

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

impl Machine {
    /// The machine over `store`, at the record it holds; `changed` is notified after
    /// every entry that changed the state; writes that find the disk full wait on `wait`.
    pub fn new(
        store: Arc<DesiredStore>,
        changed: Arc<tokio::sync::Notify>,
        wait: Arc<DiskWait>,
    ) -> anyhow::Result<Self> {
        let record = match store.raft_record() {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("the desired state's Raft record is not valid: {e}")
            })?,
            // A state written before clusters: kept, and entries apply on top of it.
            None => Record::default(),
        };
        Ok(Self {
            store,
            record,
            installed: None,
            changed,
            wait,
        })
    }

    fn build(&self) -> Result<(SnapshotMeta<NodeId, Peer>, Vec<u8>)> {
        let (snapshot, record) = (self.store.snapshot(), self.record.clone());
        let data = serde_json::to_vec(&snapshot).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        // The copy of the whole state is freed now: its pages go back at once.
        drop(snapshot);
        crate::memory::trim();
        let id = match record.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, crate::ids::random_hex(4)),
            None => format!("none-{}", crate::ids::random_hex(4)),
        };
        let meta = SnapshotMeta {
            last_log_id: record.applied,
            last_membership: record.membership,
            snapshot_id: id,
        };
        Ok((meta, data))
    }
}

/// Why a snapshot was not installed.
#[derive(Debug, thiserror::Error)]
enum RestoreError {
    #[error("the snapshot is not a desired state: {0}")]
    Parse(serde_json::Error),
    #[error(transparent)]
    Store(StateError),
}

/// Builds snapshots of the state as it is when asked.
pub struct Builder {
    snapshot: Result<(SnapshotMeta<NodeId, Peer>, Vec<u8>)>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (meta, data) = std::mem::replace(
            &mut self.snapshot,
            Err(sm_err(ErrorVerb::Read, "built once")),
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Peer>)> {
        Ok((self.record.applied, self.record.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut changed = false;
        for entry in entries {
            let mut record = self.record.clone();
            record.applied = Some(entry.log_id);
            let command = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(Versioned::V1(command)) => Some(command),
                EntryPayload::Membership(m) => {
                    record.membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            };
            let bytes =
                Arc::new(serde_json::to_vec(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?);
            let index = entry.log_id.index;
            // A failed write changed nothing (the store undoes it in memory), so it is
            // tried again while the disk is full; any other failure stops this node's
            // Raft: openraft treats a storage error as fatal, and an entry half applied
            // must not be acknowledged.
            let result = self
                .wait
                .retry(
                    WAITER,
                    || {
                        let (store, command, bytes) =
                            (self.store.clone(), command.clone(), bytes.clone());
                        async move {
                            tokio::task::spawn_blocking(move || store.apply(index, command, &bytes))
                                .await
                                .unwrap_or_else(|e| Err(died(e)))
                        }
                    },
                    no_space,
                )
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            self.record = record;
            changed |=
                matches!(&result, Some(Ok(a)) if !matches!(a, desired::Applied::Unchanged(_)));
            replies.push(Reply::from(result));
        }
        if changed {
            self.changed.notify_one();
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            snapshot: self.build(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = Arc::new(snapshot.into_inner());
        let record = Record {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let bytes = Arc::new(serde_json::to_vec(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?);
        // Parsed in each try rather than copied: the state is most of a node's memory.
        let restored: std::result::Result<(), RestoreError> = self
            .wait
            .retry(
                WAITER,
                || {
                    let (store, data, bytes) = (self.store.clone(), data.clone(), bytes.clone());
                    async move {
                        tokio::task::spawn_blocking(move || {
                            let state: desired::Snapshot =
                                serde_json::from_slice(&data).map_err(RestoreError::Parse)?;
                            store.restore(state, &bytes).map_err(RestoreError::Store)
                        })
                        .await
                        .unwrap_or_else(|e| Err(RestoreError::Store(died(e))))
                    }
                },
                |e| matches!(e, RestoreError::Store(e) if no_space(e)),
            )
            .await;
        restored.map_err(|e| match e {
            RestoreError::Parse(e) => sm_err(ErrorVerb::Read, e),
            RestoreError::Store(e) => sm_err(ErrorVerb::Write, e),
        })?;
        self.record = record;
        self.installed = Some(meta.clone());
        self.changed.notify_one();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let (mut meta, data) = self.build()?;
        if let Some(installed) = &self.installed
            && installed.last_log_id == self.record.applied
        {
            // Nothing applied since: the state is the installed snapshot's.
            meta = installed.clone();
        }
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use openraft::{CommittedLeaderId, EntryPayload};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::desired::{Applied, Command};
    use crate::state::StateStore;

    fn cordon(index: u64, node: &str) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Versioned::V1(Command::Cordon {
                node: node.into(),
                unschedulable: true,
            })),
        }
    }

    #[tokio::test]
    async fn an_entry_that_finds_the_disk_full_is_applied_once_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (db, fail) = crate::state::testing::flaky_store(&path);
        let store = Arc::new(DesiredStore::open(Arc::new(db)).unwrap());
        let wait = Arc::new(DiskWait::new(dir.path(), CancellationToken::new()));
        let mut machine = Machine::new(
            store.clone(),
            Arc::new(tokio::sync::Notify::new()),
            wait.clone(),
        )
        .unwrap();
        machine.apply([cordon(1, "a")]).await.unwrap();

        fail.store(true, Ordering::SeqCst);
        let applying = tokio::spawn(async move {
            let replies = machine.apply([cordon(2, "b")]).await;
            (machine, replies)
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while wait.health().is_ok() {
            assert!(Instant::now() < deadline, "the entry did not wait");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Waiting, not half applied: memory matches the disk.
        assert!(!store.snapshot().state.cordoned.contains("b"));
        fail.store(false, Ordering::SeqCst);
        let (mut machine, replies) = applying.await.unwrap();
        assert_eq!(
            replies.unwrap(),
            [Some(Ok(Applied::Configured("node/b".into())))]
        );
        assert!(wait.health().is_ok());
        let (applied, _) = machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        drop((machine, store));
        let reopened = DesiredStore::open(Arc::new(StateStore::open(&path).unwrap())).unwrap();
        let cordoned = reopened.snapshot().state.cordoned;
        assert_eq!(cordoned.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }
}
