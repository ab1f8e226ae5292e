//! The Raft log in its own redb file (`raft.redb`): entries by index, the vote, the
//! committed and last purged log ids. Every change is one redb transaction, durable when
//! it commits; `append` tells openraft the entries are flushed only after that.
//!
//! redb is blocking: every call runs on the blocking pool, so a slow disk never stalls
//! the runtime's workers. The database is opened again after an I/O error (redb refuses
//! every write after one until then), and a write that finds the disk full waits for
//! space instead of failing: openraft would stop for good on a storage error (see
//! `disk.rs` for why waiting is sound).

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

use super::disk::DiskWait;
use super::{Entry, NodeId, TypeConfig};
use crate::state::{Opener, Reopening};

const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log/v1");
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta/v1");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The log, shared by the storage openraft drives and the readers it asks for.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Reopening>,
    /// Where a write that finds the disk full waits for space.
    wait: Arc<DiskWait>,
}

fn io(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

/// Whether redb failed because the disk is full.
fn no_space(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(io) if skiff_image::disk::is_no_space(io))
}

impl LogStore {
    /// Opens (or creates) the log at `path`; writes that find the disk full wait on
    /// `wait`.
    pub fn open(path: &Path, wait: Arc<DiskWait>) -> anyhow::Result<Self> {
        let file = path.to_path_buf();
        // Entries are read back rarely (a follower catching up): a small cache, not
        // redb's 1 GiB default, keeps the node's memory from growing with its log.
        let open = Box::new(move || redb::Builder::new().set_cache_size(1 << 20).create(&file));
        Self::open_with(path, open, wait)
    }

    fn open_with(path: &Path, open: Opener, wait: Arc<DiskWait>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let db = Reopening::open("Raft log", open)
            .with_context(|| format!("failed to open the Raft log {}", path.display()))?;
        db.run("create its tables", |db| {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        })
        .with_context(|| format!("failed to open the Raft log {}", path.display()))?;
        Ok(Self {
            db: Arc::new(db),
            wait,
        })
    }

    /// `Err(why)` while the log cannot be written (reopening it did not help).
    pub fn health(&self) -> std::result::Result<(), String> {
        self.db.health()
    }

    /// Runs `f` on the blocking pool (redb blocks: a slow disk must not stall the
    /// runtime's workers), reopening the database after an I/O error and waiting for
    /// space while the disk is full (see `disk.rs`).
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        f: impl Fn(&Database) -> std::result::Result<T, redb::Error> + Send + Sync + 'static,
    ) -> Result<T> {
        let f = Arc::new(f);
        self.wait
            .retry(
                "the Raft log",
                || {
                    let (db, f) = (self.db.clone(), f.clone());
                    async move {
                        tokio::task::spawn_blocking(move || db.run(op, |db| f(db)))
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()).into()))
                    }
                },
                no_space,
            )
            .await
            .map_err(|e| io(subject, verb, e))
    }

    async fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>> {
        let bytes = self
            .run("read", ErrorSubject::Store, ErrorVerb::Read, move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(META)?;
                Ok(table.get(key)?.map(|v| v.value().to_vec()))
            })
            .await?;
        bytes
            .map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| io(subject.clone(), ErrorVerb::Write, e))?;
        self.run("write", subject, ErrorVerb::Write, move |db| {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            // redb's commit is durable (fsync) before it returns.
            Ok(txn.commit()?)
        })
        .await
    }

    /// Whether nothing was ever written: no vote and no entry (a node that never took
    /// part in a cluster).
    pub async fn is_empty(&mut self) -> Result<bool> {
        let vote: Option<Vote<NodeId>> = self.read_meta(VOTE).await?;
        let no_entries = self
            .run("read", ErrorSubject::Logs, ErrorVerb::Read, |db| {
                let txn = db.begin_read()?;
                Ok(txn.open_table(LOG)?.is_empty()?)
            })
            .await?;
        Ok(vote.is_none() && no_entries)
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
        if start >= end {
            return Ok(Vec::new());
        }
        let rows = self
            .run("read", ErrorSubject::Logs, ErrorVerb::Read, move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(LOG)?;
                let mut out = Vec::new();
                for item in table.range(start..end)? {
                    let (_, value) = item?;
                    out.push(value.value().to_vec());
                }
                Ok(out)
            })
            .await?;
        rows.iter()
            .map(|r| {
                serde_json::from_slice(r).map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> = self.read_meta(PURGED).await?;
        let last = self
            .run("read", ErrorSubject::Logs, ErrorVerb::Read, |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(LOG)?;
                Ok(table.last()?.map(|(_, v)| v.value().to_vec()))
            })
            .await?;
        let last = match last {
            Some(bytes) => {
                let entry: Entry = serde_json::from_slice(&bytes)
                    .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(entry.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.write_meta(VOTE, vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta(VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.write_meta(COMMITTED, &committed, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|entry| {
                serde_json::to_vec(&entry)
                    .map(|bytes| (entry.log_id.index, bytes))
                    .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, e))
            })
            .collect::<Result<Vec<(u64, Vec<u8>)>>>();
        let written = match rows {
            Ok(rows) => {
                self.run("append", ErrorSubject::Logs, ErrorVerb::Write, move |db| {
                    let txn = db.begin_write()?;
                    {
                        let mut table = txn.open_table(LOG)?;
                        for (index, bytes) in &rows {
                            table.insert(*index, bytes.as_slice())?;
                        }
                    }
                    // redb's commit is durable (fsync) before it returns.
                    Ok(txn.commit()?)
                })
                .await
            }
            Err(e) => Err(e),
        };
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
        self.run(
            "truncate",
            ErrorSubject::Logs,
            ErrorVerb::Delete,
            move |db| {
                let txn = db.begin_write()?;
                txn.open_table(LOG)?
                    .retain_in(log_id.index.., |_, _| false)?;
                Ok(txn.commit()?)
            },
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let bytes = serde_json::to_vec(&log_id)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.run("purge", ErrorSubject::Logs, ErrorVerb::Delete, move |db| {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(PURGED, bytes.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            Ok(txn.commit()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use openraft::CommittedLeaderId;
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test]
    async fn a_write_that_finds_the_disk_full_waits_for_space_then_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let (open, fail) = crate::state::testing::flaky_opener(&path);
        let shutdown = CancellationToken::new();
        let wait = Arc::new(DiskWait::new(dir.path(), shutdown.clone()));
        let mut log = LogStore::open_with(&path, open, wait.clone()).unwrap();
        let first = Vote::new(1, 7);
        log.save_vote(&first).await.unwrap();

        // The disk fills: openraft's call waits (a storage error would stop Raft for
        // good), and the node's health says what waits.
        fail.store(true, Ordering::SeqCst);
        let second = Vote::new_committed(2, 7);
        let saving = {
            let mut log = log.clone();
            tokio::spawn(async move { log.save_vote(&second).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while wait.health().is_ok() {
            assert!(Instant::now() < deadline, "the write did not wait");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!saving.is_finished());

        // Space is back: the same call goes through, on a database opened again.
        fail.store(false, Ordering::SeqCst);
        saving.await.unwrap().unwrap();
        assert!(wait.health().is_ok());
        assert_eq!(log.read_vote().await.unwrap(), Some(second));
        log.save_committed(Some(LogId::new(CommittedLeaderId::new(2, 7), 3)))
            .await
            .unwrap();

        // Shutting down ends a wait with the error (openraft is stopping anyway), and
        // what failed was not written.
        fail.store(true, Ordering::SeqCst);
        let saving = {
            let mut log = log.clone();
            tokio::spawn(async move { log.save_vote(&Vote::new(3, 7)).await })
        };
        while wait.health().is_ok() {
            assert!(Instant::now() < deadline, "the write did not wait");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        assert!(saving.await.unwrap().is_err());
        fail.store(false, Ordering::SeqCst);
        drop(log);
        let mut log = LogStore::open(&path, wait).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(second));
        assert_eq!(
            log.read_committed().await.unwrap().map(|l| l.index),
            Some(3)
        );
    }
}
