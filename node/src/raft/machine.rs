//! The Raft state machine is the desired state: each committed entry is applied by
//! [`DesiredStore::apply`], which writes the touched rows, the applied index and this
//! layer's record (applied log id and membership) in one redb transaction, because
//! openraft assumes applied entries and the membership survive a restart together.
//!
//! A snapshot is the whole desired state as JSON, built from the state each time one
//! is asked for (at start, and for a follower that fell behind): none is kept, as a
//! copy of the whole state held for the rare follower would be most of a node's
//! memory. The meta of an installed snapshot is kept, so it is the one given back.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{Entry, NodeId, Peer, Reply, TypeConfig};
use crate::desired::{self, DesiredStore, Versioned};

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
    /// every entry that changed the state.
    pub fn new(
        store: Arc<DesiredStore>,
        changed: Arc<tokio::sync::Notify>,
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
        })
    }

    fn build(&self) -> Result<(SnapshotMeta<NodeId, Peer>, Vec<u8>)> {
        let (snapshot, record) = (self.store.snapshot(), self.record.clone());
        let data = serde_json::to_vec(&snapshot).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        // The copy of the whole state is freed now: its pages go back at once.
        drop(snapshot);
        crate::memory::trim();
        let id = match record.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, crate::random_hex(4)),
            None => format!("none-{}", crate::random_hex(4)),
        };
        let meta = SnapshotMeta {
            last_log_id: record.applied,
            last_membership: record.membership,
            snapshot_id: id,
        };
        Ok((meta, data))
    }
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
            let bytes = serde_json::to_vec(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let store = self.store.clone();
            let index = entry.log_id.index;
            let result = tokio::task::spawn_blocking(move || store.apply(index, command, &bytes))
                .await
                .map_err(|e| sm_err(ErrorVerb::Write, e))?
                // A store that cannot write stops this node's Raft: openraft treats a
                // storage error as fatal, and an entry half applied must not be acknowledged.
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
        let data = snapshot.into_inner();
        let state: desired::Snapshot =
            serde_json::from_slice(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let record = Record {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.restore(state, &bytes))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
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
