//! Free space on the disk that holds the node's data, checked before a write starts.
//!
//! A full disk makes every database commit fail (and redb refuses all writes after one
//! failed commit until it is opened again), so writes are refused up front while the
//! disk is below a reserve, with an error naming the path and the bytes free, instead
//! of failing half way through. Two reserves: bulk data (image blobs, extracted trees)
//! must leave the larger one free, so that changes to the node's state (Raft entries,
//! tags, records), which need only the smaller one, still go through once bulk writes
//! are refused.

use std::path::{Path, PathBuf};

/// Bytes a write must leave free on the data dir's disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reserve {
    /// What image blobs and extracted trees must leave free. The node's default is
    /// 512 MiB (`--min-free-disk`).
    pub bulk: u64,
    /// What a change to the node's state (a Raft entry, a tag, a record) must leave
    /// free. The node's default is 64 MiB (`--min-free-disk-state`).
    pub state: u64,
}

/// A write refused because the disk is (nearly) full.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "insufficient storage: the disk holding {path} has {free} bytes free, and {what} must leave {reserve} bytes free; free some space on it and try again",
    path = path.display()
)]
pub struct DiskFull {
    /// The directory checked (the data dir or a directory in it).
    pub path: PathBuf,
    /// Bytes free (for unprivileged writers) when it was checked.
    pub free: u64,
    /// The reserve the write had to leave.
    pub reserve: u64,
    /// What was refused, in words: "a change to the node's state", "image data".
    pub what: &'static str,
}

/// Bytes free for unprivileged writers on the filesystem holding `path`, if it can be
/// asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(path).ok()?;
    Some(fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// `Ok` when writing `need` bytes under `path` leaves `reserve` bytes free (or the free
/// space cannot be asked: then the write itself tells).
pub fn check(path: &Path, reserve: u64, need: u64, what: &'static str) -> Result<(), DiskFull> {
    match free_bytes(path) {
        Some(free) if free < need.saturating_add(reserve) => Err(DiskFull {
            path: path.to_path_buf(),
            free,
            reserve,
            what,
        }),
        _ => Ok(()),
    }
}

/// Whether an I/O error says the disk is full (no space, or the quota is spent).
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
            || code == rustix::io::Errno::DQUOT.raw_os_error()
    )
}

/// The [`DiskFull`] a write under `path` that failed with no space left amounts to.
pub fn full(path: &Path, reserve: u64, what: &'static str) -> DiskFull {
    DiskFull {
        path: path.to_path_buf(),
        free: free_bytes(path).unwrap_or(0),
        reserve,
        what,
    }
}

/// A database file whose writes fail with ENOSPC, as a full disk's do, while its flag
/// is set: what tests of stores that must survive a full disk open their redb with.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct FlakyDisk {
    file: redb::backends::FileBackend,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(any(test, feature = "testing"))]
impl FlakyDisk {
    /// The file at `path` (made if missing), failing while `fail` is set.
    pub fn open(
        path: &Path,
        fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, redb::DatabaseError> {
        let io = |e| redb::DatabaseError::Storage(redb::StorageError::Io(e));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            file: redb::backends::FileBackend::new(file)?,
            fail,
        })
    }

    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            // ENOSPC: what a full disk answers.
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
impl redb::StorageBackend for FlakyDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_would_eat_the_reserve_is_refused_naming_the_path_and_free_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("statvfs works on a temp dir");
        assert!(check(dir.path(), 0, 0, "a test").is_ok());
        let refused = check(dir.path(), free.saturating_add(1 << 30), 0, "a test").unwrap_err();
        assert_eq!(refused.path, dir.path());
        let message = refused.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("bytes free"), "{message}");
        assert!(message.starts_with("insufficient storage"), "{message}");
        // What is written counts against the reserve too.
        assert!(check(dir.path(), 0, free.saturating_add(1 << 30), "a test").is_err());
    }

    #[test]
    fn no_space_and_spent_quotas_are_a_full_disk_other_errors_are_not() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(28)));
        assert!(is_no_space(&std::io::Error::from_raw_os_error(122)));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(5)));
        assert!(!is_no_space(&std::io::Error::other("no errno")));
    }
}
