//! The Raft log in its own redb file (`raft.redb`): entries by index, the vote, the
//! committed and last purged log ids. Every change is one redb transaction, durable when
//! it commits; `append` tells openraft the entries are flushed only after that.
//!
//! redb is blocking: every call runs on the blocking pool, so a slow disk never stalls
//! the runtime's workers.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Entry, NodeId, TypeConfig};

const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log/v1");
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta/v1");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The log, shared by the storage openraft drives and the readers it asks for.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

impl LogStore {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        // Entries are read back rarely (a follower catching up): a small cache, not
        // redb's 1 GiB default, keeps the node's memory from growing with its log.
        // Every failure as a `redb::Error`, so that a start can tell corruption apart.
        let db = redb::Builder::new()
            .set_cache_size(1 << 20)
            .create(path)
            .map_err(redb::Error::from)
            .with_context(|| format!("failed to open the Raft log {}", path.display()))?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(LOG).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Read, e))?
    }

    fn read_meta<T: serde::de::DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>> {
        let err = |e: &dyn std::fmt::Display| io(ErrorSubject::Store, ErrorVerb::Read, e);
        let txn = db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(META).map_err(|e| err(&e))?;
        let Some(value) = table.get(key).map_err(|e| err(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| err(&e))
    }

    fn write_meta<T: serde::Serialize>(
        db: &Database,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<()> {
        let err = |e: &dyn std::fmt::Display| io(subject.clone(), ErrorVerb::Write, e);
        let bytes = serde_json::to_vec(value).map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(META)
            .map_err(|e| err(&e))?
            .insert(key, bytes.as_slice())
            .map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))
    }

    /// Whether nothing was ever written: no vote and no entry (a node that never took
    /// part in a cluster).
    pub async fn is_empty(&mut self) -> Result<bool> {
        self.blocking(|db| {
            let err = |e: &dyn std::fmt::Display| io(ErrorSubject::Store, ErrorVerb::Read, e);
            let vote: Option<Vote<NodeId>> = Self::read_meta(db, VOTE)?;
            let txn = db.begin_read().map_err(|e| err(&e))?;
            let log = txn.open_table(LOG).map_err(|e| err(&e))?;
            Ok(vote.is_none() && log.is_empty().map_err(|e| err(&e))?)
        })
        .await
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let (start, end) = bounds(&range);
        self.blocking(move |db| {
            let err = |e: &dyn std::fmt::Display| io(ErrorSubject::Logs, ErrorVerb::Read, e);
            let txn = db.begin_read().map_err(|e| err(&e))?;
            let table = txn.open_table(LOG).map_err(|e| err(&e))?;
            let mut out = Vec::new();
            if start >= end {
                return Ok(out);
            }
            for item in table.range(start..end).map_err(|e| err(&e))? {
                let (_, value) = item.map_err(|e| err(&e))?;
                out.push(serde_json::from_slice(value.value()).map_err(|e| err(&e))?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        self.blocking(|db| {
            let err = |e: &dyn std::fmt::Display| io(ErrorSubject::Logs, ErrorVerb::Read, e);
            let purged: Option<LogId<NodeId>> = Self::read_meta(db, PURGED)?;
            let txn = db.begin_read().map_err(|e| err(&e))?;
            let table = txn.open_table(LOG).map_err(|e| err(&e))?;
            let last = match table.last().map_err(|e| err(&e))? {
                Some((_, value)) => {
                    let entry: Entry =
                        serde_json::from_slice(value.value()).map_err(|e| err(&e))?;
                    Some(entry.log_id)
                }
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let vote = *vote;
        self.blocking(move |db| Self::write_meta(db, VOTE, &vote, ErrorSubject::Vote))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.blocking(|db| Self::read_meta(db, VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.blocking(move |db| Self::write_meta(db, COMMITTED, &committed, ErrorSubject::Store))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        self.blocking(|db| Ok(Self::read_meta::<Option<LogId<NodeId>>>(db, COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let written = self
            .blocking(move |db| {
                let err = |e: &dyn std::fmt::Display| io(ErrorSubject::Logs, ErrorVerb::Write, e);
                let txn = db.begin_write().map_err(|e| err(&e))?;
                {
                    let mut table = txn.open_table(LOG).map_err(|e| err(&e))?;
                    for entry in &entries {
                        let bytes = serde_json::to_vec(entry).map_err(|e| err(&e))?;
                        table
                            .insert(entry.log_id.index, bytes.as_slice())
                            .map_err(|e| err(&e))?;
                    }
                }
                // redb's commit is durable (fsync) before it returns.
                txn.commit().map_err(|e| err(&e))
            })
            .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.blocking(move |db| {
            let err = |e: &dyn std::fmt::Display| io(ErrorSubject::Logs, ErrorVerb::Delete, e);
            let txn = db.begin_write().map_err(|e| err(&e))?;
            txn.open_table(LOG)
                .map_err(|e| err(&e))?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(|e| err(&e))?;
            txn.commit().map_err(|e| err(&e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.blocking(move |db| {
            let err = |e: &dyn std::fmt::Display| io(ErrorSubject::Logs, ErrorVerb::Delete, e);
            let bytes = serde_json::to_vec(&log_id).map_err(|e| err(&e))?;
            let txn = db.begin_write().map_err(|e| err(&e))?;
            txn.open_table(META)
                .map_err(|e| err(&e))?
                .insert(PURGED, bytes.as_slice())
                .map_err(|e| err(&e))?;
            txn.open_table(LOG)
                .map_err(|e| err(&e))?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(|e| err(&e))?;
            txn.commit().map_err(|e| err(&e))
        })
        .await
    }
}
