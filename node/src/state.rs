//! Desired state on disk (redb): one record per app. Every commit is durable before the
//! API acknowledges it, so a `kill -9` loses nothing that was answered.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use skiff_spec::{AppName, AppSpec, PortMapping, RestartPolicy};

/// Every table maps a key to a JSON record.
type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const APPS: Table = TableDefinition::new("apps/v1");
const CONTAINERS: Table = TableDefinition::new("containers/v1");

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

/// The node's desired-state store.
pub struct StateStore {
    db: Database,
}

impl StateStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = Database::create(path).map_err(db_err("open"))?;
        let txn = db.begin_write().map_err(db_err("begin a transaction"))?;
        txn.open_table(APPS)
            .map_err(db_err("create the apps table"))?;
        txn.open_table(CONTAINERS)
            .map_err(db_err("create the containers table"))?;
        txn.commit().map_err(db_err("commit"))?;
        Ok(Self { db })
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

    fn put<T: Serialize>(&self, table: Table, key: &str, record: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(record).map_err(db_err("encode a record"))?;
        let txn = self
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        {
            let mut t = txn.open_table(table).map_err(db_err("open a table"))?;
            t.insert(key, bytes.as_slice())
                .map_err(db_err("write a record"))?;
        }
        txn.commit().map_err(db_err("commit"))
    }

    fn delete(&self, table: Table, key: &str) -> Result<bool, StateError> {
        let txn = self
            .db
            .begin_write()
            .map_err(db_err("begin a transaction"))?;
        let existed = {
            let mut t = txn.open_table(table).map_err(db_err("open a table"))?;
            t.remove(key).map_err(db_err("delete a record"))?.is_some()
        };
        txn.commit().map_err(db_err("commit"))?;
        Ok(existed)
    }

    fn all<T: serde::de::DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, StateError> {
        let txn = self.db.begin_read().map_err(db_err("begin a read"))?;
        let t = txn.open_table(table).map_err(db_err("open a table"))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err("list records"))? {
            let (key, value) = item.map_err(db_err("read a record"))?;
            out.push(
                serde_json::from_slice(value.value()).map_err(|e| StateError::Decode {
                    key: key.value().to_string(),
                    message: e.to_string(),
                })?,
            );
        }
        Ok(out)
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
}
