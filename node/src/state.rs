//! Desired state on disk (redb): one record per app. Every commit is durable before the
//! API acknowledges it, so a `kill -9` loses nothing that was answered.

use std::path::Path;
use std::sync::{Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use skiff_spec::{AppName, AppSpec, PortMapping, RestartPolicy};

/// Every table maps a key to a JSON record.
type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const APPS: Table = TableDefinition::new("apps/v1");
const CONTAINERS: Table = TableDefinition::new("containers/v1");
/// Desired-state rows (`node::desired::store`): `deployments/<name>`, `services/<name>`,
/// `meta/version`, `meta/applied`.
const DESIRED: Table = TableDefinition::new("desired/v1");

/// A `skiff run` container as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    /// What runs (`spec.name` is the container name, one replica).
    pub spec: AppSpec,
    /// The image as the user named it.
    pub image_ref: String,
    /// Published host ports.
    pub ports: Vec<PortMapping>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Created (Unix ms).
    pub created_ms: u64,
    /// Whether it should be running.
    pub running: bool,
    /// Last start (Unix ms).
    pub started_ms: u64,
    /// Last stop (Unix ms).
    pub finished_ms: u64,
    /// Last exit code.
    pub exit_code: Option<i32>,
    /// The OOM killer ended the last run.
    #[serde(default)]
    pub oom_killed: bool,
    /// Why runc could not start the last run's command.
    #[serde(default)]
    pub exit_error: Option<String>,
    /// Settings only Linux containers have.
    #[serde(default)]
    pub oci: OciOptions,
    /// `--rm`: removed once it stops.
    #[serde(default)]
    pub auto_remove: bool,
    /// Its labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ContainerRecord {
    /// Records how a Linux container's run ended.
    pub fn exited(&mut self, exit: &skiff_runtime::oci::Exit) {
        self.exit_code = Some(exit.code);
        self.oom_killed = exit.oom_killed;
        self.exit_error.clone_from(&exit.error);
    }
}

/// `docker run` settings that only Linux containers take.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciOptions {
    /// `--memory` (bytes); none: unlimited, as Docker.
    pub memory_bytes: Option<u64>,
    /// `--cpus` in thousandths.
    pub milli_cpus: Option<u32>,
    /// `--pids-limit`.
    pub pids_limit: Option<i64>,
    /// `--network host`.
    pub host_network: bool,
    /// `-u`, or a pod's `runAsUser`/`runAsGroup` over the image's `User`; none: the
    /// image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `-w`; none: the image's `WorkingDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Capabilities, read-only root, tmpfs mounts, groups, `runAsNonRoot`.
    #[serde(default, skip_serializing_if = "skiff_spec::Security::is_default")]
    pub security: skiff_spec::Security,
}

/// An app as persisted: its spec plus bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRecord {
    /// What the user asked for.
    pub spec: AppSpec,
    /// The image as the user named it (`hello:latest`); empty in records from before.
    #[serde(default)]
    pub image_ref: String,
    /// First deploy (Unix ms).
    pub created_ms: u64,
    /// Last deploy (Unix ms).
    pub updated_ms: u64,
    /// 1 at creation, +1 per redeploy.
    pub generation: u64,
}

/// Failures of the state database, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// redb failed.
    #[error("state database: failed to {op}: {message}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// redb's message.
        message: String,
    },
    /// The file is not a redb database, or its pages do not hold together.
    #[error("state database is corrupt: {message}")]
    Corrupt {
        /// redb's message.
        message: String,
    },
    /// The disk is full: nothing was written (see `skiff_image::disk`).
    #[error("state database: failed to {op}: the disk is full ({message})")]
    NoSpace {
        /// What was being done.
        op: &'static str,
        /// redb's message.
        message: String,
    },
    /// A record did not decode (written by an incompatible version, or corrupt).
    #[error("state database: record {key:?} is unreadable: {message}")]
    Decode {
        /// The record's key.
        key: String,
        /// serde's message.
        message: String,
    },
}

fn db_err<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> StateError {
    move |e| StateError::Db {
        op,
        message: e.to_string(),
    }
}

/// A failure of redb as a [`StateError`]: [`StateError::NoSpace`] when the disk is full.
fn state_err(op: &'static str) -> impl FnOnce(redb::Error) -> StateError {
    move |e| match &e {
        redb::Error::Io(io) if skiff_image::disk::is_no_space(io) => StateError::NoSpace {
            op,
            message: e.to_string(),
        },
        _ => match corruption(&e) {
            Some(message) => StateError::Corrupt { message },
            None => db_err(op)(e),
        },
    }
}

/// Opens the database (again, after an I/O error).
pub(crate) type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// A redb database that is opened again after an I/O error.
///
/// redb refuses every write after one failed I/O ("Previous I/O error occurred") until
/// the database is opened again. A full disk or a hiccup of the device is usually
/// transient, so on such an error the database is reopened and the operation tried once
/// more; while that does not help, [`Reopening::health`] says why.
pub(crate) struct Reopening {
    /// What it is, for messages: "state database", "Raft log".
    name: &'static str,
    db: RwLock<Option<Database>>,
    open: Opener,
    /// Why the last operation failed on I/O and reopening did not help.
    broken: Mutex<Option<String>>,
}

impl Reopening {
    /// Opens it with `open`.
    pub(crate) fn open(name: &'static str, open: Opener) -> Result<Self, redb::DatabaseError> {
        let db = open()?;
        Ok(Self {
            name,
            db: RwLock::new(Some(db)),
            open,
            broken: Mutex::new(None),
        })
    }

    /// `Err(why)` while the database cannot be written.
    pub(crate) fn health(&self) -> Result<(), String> {
        match &*self.broken.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Runs `f` on the database; after an I/O error, reopens it and runs `f` once more.
    pub(crate) fn run<T>(
        &self,
        op: &'static str,
        f: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        let first = {
            let db = self.db.read().unwrap_or_else(|e| e.into_inner());
            match &*db {
                Some(db) => f(db),
                None => Err(redb::Error::PreviousIo),
            }
        };
        let e = match first {
            Ok(v) => return Ok(v),
            Err(e @ (redb::Error::Io(_) | redb::Error::PreviousIo)) => e,
            Err(e) => return Err(e),
        };
        tracing::warn!(db = self.name, op, error = %e, "database I/O failed; reopening it");
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle must be gone (and its file lock released) before reopening.
        *db = None;
        let retried = match (self.open)() {
            Ok(fresh) => {
                let r = f(&fresh);
                *db = Some(fresh);
                r
            }
            Err(open) => Err(redb::Error::from(open)),
        };
        let mut broken = self.broken.lock().unwrap_or_else(|e| e.into_inner());
        match retried {
            Ok(v) => {
                *broken = None;
                Ok(v)
            }
            Err(e) => {
                *broken = Some(format!("{}: failed to {op}: {e}", self.name));
                Err(e)
            }
        }
    }
}

/// The node's desired-state store, on a database that heals ([`Reopening`]): a full
/// disk's failed write does not refuse every write after it until a restart; while
/// reopening does not help, [`StateStore::health`] says why (and the node's `/healthz`
/// with it).
pub struct StateStore {
    db: Reopening,
}

/// Pages of the state file kept in memory.
const STATE_CACHE: usize = 2 << 20;

impl StateStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let path = path.to_path_buf();
        // redb caches up to 1 GiB of pages by default: a node's resident memory would
        // grow with its state file. The OS's page cache still holds what is read often.
        Self::with_opener(Box::new(move || {
            redb::Builder::new()
                .set_cache_size(STATE_CACHE)
                .create(&path)
        }))
    }

    fn with_opener(open: Opener) -> Result<Self, StateError> {
        let db = Reopening::open("state database", open)
            .map_err(|e| state_err("open")(redb::Error::from(e)))?;
        let store = Self { db };
        store.run("create the tables", |db| {
            let txn = db.begin_write()?;
            txn.open_table(APPS)?;
            txn.open_table(CONTAINERS)?;
            txn.open_table(DESIRED)?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(store)
    }

    /// `Err(why)` while the database cannot be written.
    pub fn health(&self) -> Result<(), String> {
        self.db.health()
    }

    /// Runs `f` on the database, reopening it after an I/O error (see [`Reopening`]).
    fn run<T>(
        &self,
        op: &'static str,
        f: impl Fn(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StateError> {
        self.db.run(op, f).map_err(state_err(op))
    }

    /// Inserts or replaces an app record, durably.
    pub fn put_app(&self, record: &AppRecord) -> Result<(), StateError> {
        self.put(APPS, record.spec.name.as_str(), record)
    }

    /// Deletes an app record, durably. Returns whether it existed.
    pub fn delete_app(&self, name: &AppName) -> Result<bool, StateError> {
        self.delete(APPS, name.as_str())
    }

    /// Every app record.
    pub fn apps(&self) -> Result<Vec<AppRecord>, StateError> {
        self.all(APPS)
    }

    /// Inserts or replaces a container record, durably.
    pub fn put_container(&self, record: &ContainerRecord) -> Result<(), StateError> {
        self.put(CONTAINERS, &record.id, record)
    }

    /// Deletes a container record, durably. Returns whether it existed.
    pub fn delete_container(&self, id: &str) -> Result<bool, StateError> {
        self.delete(CONTAINERS, id)
    }

    /// Every container record.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StateError> {
        self.all(CONTAINERS)
    }

    /// Writes desired-state rows (`None` deletes one) in one durable transaction.
    pub fn write_desired(&self, rows: &[(String, Option<Vec<u8>>)]) -> Result<(), StateError> {
        self.run("write desired state", |db| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(DESIRED)?;
                for (key, value) in rows {
                    match value {
                        Some(v) => {
                            t.insert(key.as_str(), v.as_slice())?;
                        }
                        None => {
                            t.remove(key.as_str())?;
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Replaces every desired-state row in one durable transaction (a snapshot restore).
    pub fn replace_desired(&self, rows: &[(String, Vec<u8>)]) -> Result<(), StateError> {
        self.run("restore desired state", |db| {
            let txn = db.begin_write()?;
            txn.delete_table(DESIRED)?;
            {
                let mut t = txn.open_table(DESIRED)?;
                for (key, value) in rows {
                    t.insert(key.as_str(), value.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Every desired-state row.
    pub fn desired_rows(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.rows(DESIRED, "read desired state")
    }

    /// Every row of `table`, raw.
    fn rows(&self, table: Table, op: &'static str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.run(op, |db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(table)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (key, value) = item?;
                out.push((key.value().to_string(), value.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn put<T: Serialize>(&self, table: Table, key: &str, record: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(record).map_err(db_err("encode a record"))?;
        self.run("write a record", |db| {
            let txn = db.begin_write()?;
            txn.open_table(table)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
    }

    fn delete(&self, table: Table, key: &str) -> Result<bool, StateError> {
        self.run("delete a record", |db| {
            let txn = db.begin_write()?;
            let existed = txn.open_table(table)?.remove(key)?.is_some();
            txn.commit()?;
            Ok(existed)
        })
    }

    fn all<T: serde::de::DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, StateError> {
        let raw = self.rows(table, "list records")?;
        raw.into_iter()
            .map(|(key, value)| {
                serde_json::from_slice(&value).map_err(|e| StateError::Decode {
                    key,
                    message: e.to_string(),
                })
            })
            .collect()
    }
}

/// A store whose disk can be made to fail, for tests of what survives an I/O error.
/// redb's word that a file is corrupt: its pages do not hold together, or it is not a
/// redb database at all.
pub(crate) fn corruption(e: &redb::Error) -> Option<String> {
    match e {
        redb::Error::Corrupted(_) => Some(e.to_string()),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => Some(io.to_string()),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use redb::Database;

    use super::StateStore;

    /// A store on `path` whose writes fail while the returned flag is set.
    pub(crate) fn flaky_store(path: &Path) -> (StateStore, Arc<AtomicBool>) {
        let (open, fail) = flaky_opener(path);
        let store = StateStore::with_opener(open).expect("open a flaky store");
        (store, fail)
    }

    /// Opens a database on `path` whose writes fail (ENOSPC) while the flag is set.
    pub(crate) fn flaky_opener(path: &Path) -> (super::Opener, Arc<AtomicBool>) {
        let fail = Arc::new(AtomicBool::new(false));
        let opener_fail = fail.clone();
        let path = path.to_path_buf();
        let open: super::Opener = Box::new(move || {
            let backend = skiff_image::disk::FlakyDisk::open(&path, opener_fail.clone())?;
            Database::builder().create_with_backend(backend)
        });
        (open, fail)
    }
}

#[cfg(test)]
mod tests {
    use skiff_spec::{AppKind, DeployParams};

    use super::*;

    fn record(name: &str, generation: u64) -> AppRecord {
        let digest = format!("sha256:{}", "2".repeat(64)).parse().unwrap();
        AppRecord {
            spec: DeployParams::default().into_spec(
                AppName::new(name).unwrap(),
                digest,
                AppKind::Http,
            ),
            image_ref: format!("{name}:latest"),
            created_ms: 1,
            updated_ms: 2,
            generation,
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = StateStore::open(&path).unwrap();
            s.put_app(&record("a", 1)).unwrap();
            s.put_app(&record("b", 1)).unwrap();
            s.put_app(&record("a", 2)).unwrap();
            assert!(s.delete_app(&AppName::new("b").unwrap()).unwrap());
            assert!(!s.delete_app(&AppName::new("zz").unwrap()).unwrap());
        }
        let s = StateStore::open(&path).unwrap();
        assert_eq!(s.apps().unwrap(), vec![record("a", 2)]);
    }

    #[test]
    fn a_transient_io_error_is_recovered_by_reopening() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let (s, fail) = testing::flaky_store(&dir.path().join("state.redb"));
        s.put_app(&record("a", 1)).unwrap();
        fail.store(true, Ordering::SeqCst);
        let err = s.put_app(&record("b", 1)).unwrap_err();
        assert!(err.to_string().contains("write a record"), "{err}");
        assert!(s.health().is_err(), "health reports the broken store");
        fail.store(false, Ordering::SeqCst);
        // The disk is back: writes work again without a restart, and nothing acknowledged
        // before was lost.
        s.put_app(&record("c", 1)).unwrap();
        assert!(s.health().is_ok());
        let names: Vec<String> = s
            .apps()
            .unwrap()
            .iter()
            .map(|r| r.spec.name.to_string())
            .collect();
        assert_eq!(names, ["a", "c"]);
    }
}
