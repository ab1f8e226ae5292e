use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use skiff_spec::Digest;
use tempfile::{NamedTempFile, TempPath};

use crate::disk::{self, DiskFull};

/// Failures of the blob store, naming the blob or file and the step.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob is larger than the cap the writer was opened with.
    #[error("blob is larger than the {cap}-byte limit")]
    TooLarge {
        /// The cap in bytes.
        cap: u64,
    },
    /// No blob with this digest is stored.
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// The bytes on disk no longer hash to their name.
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// The digest the blob is stored under.
        expected: Digest,
        /// What its content hashes to now.
        actual: Digest,
    },
    /// The disk is too full to take the blob (see [`crate::disk`]).
    #[error(transparent)]
    DiskFull(#[from] DiskFull),
    /// A filesystem operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl StoreError {
    /// Whether the disk was too full: refused up front, or a write found no space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Io { source, .. } => disk::is_no_space(source),
            _ => false,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Content-addressed blobs under one directory.
#[derive(Clone, Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    /// Blobs committed since recording began (`None`: not recording), for whoever
    /// keeps counts of what the stored blobs refer to.
    recorded: std::sync::Arc<std::sync::Mutex<Option<Vec<Digest>>>>,
    /// Bytes a blob being written must leave free on the disk.
    reserve: u64,
}

/// Bytes a blob writer writes between two looks at the free space.
const CHECK_EVERY: u64 = 1 << 20;

impl BlobStore {
    /// Opens (creating if needed) a store rooted at `root`. Temp files left by a crash
    /// are removed: they were never acknowledged.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("clean", &tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        Ok(Self {
            blobs,
            tmp,
            recorded: Default::default(),
            reserve: 0,
        })
    }

    /// The store, refusing blobs that would leave less than `bytes` free on its disk.
    pub fn reserving(mut self, bytes: u64) -> Self {
        self.reserve = bytes;
        self
    }

    /// Starts (or stops) recording the blobs committed from now on.
    pub fn record(&self, on: bool) {
        *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Vec::new);
    }

    /// The blobs committed since the last call (while recording).
    pub fn recorded(&self) -> Vec<Digest> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn committed(&self, digest: Digest) {
        if let Some(list) = self
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            list.push(digest);
        }
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The blob's size in bytes.
    pub fn size(&self, digest: &Digest) -> Result<u64, StoreError> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*digest)),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// Reads the whole blob and checks that it still hashes to its name.
    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(*digest));
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let actual = Digest::from_sha256(Sha256::digest(&bytes).into());
        if actual != *digest {
            return Err(StoreError::Corrupt {
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>, StoreError> {
        let entries = fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.blobs))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Removes a blob; removing one that is not there is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Starts writing a new blob of at most `cap` bytes; refused while the disk is below
    /// the store's reserve.
    pub fn writer(&self, cap: u64) -> Result<BlobWriter, StoreError> {
        self.check_free(0)?;
        let file =
            NamedTempFile::new_in(&self.tmp).map_err(io_err("create a temp file in", &self.tmp))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            len: 0,
            unchecked: 0,
            cap,
            store: self.clone(),
        })
    }

    /// `Ok` when writing `need` more bytes leaves the reserve free.
    fn check_free(&self, need: u64) -> Result<(), StoreError> {
        Ok(disk::check(&self.tmp, self.reserve, need, "image data")?)
    }

    /// Stores `bytes` as a blob (a convenience for small, already-validated content).
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let mut w = self.writer(u64::MAX)?;
        w.write(bytes)?;
        w.finish()?.commit()
    }
}

/// A blob being written. Dropping it without [`BlobWriter::finish`] deletes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: NamedTempFile,
    hasher: Sha256,
    len: u64,
    /// Bytes written since the free space was last looked at.
    unchecked: u64,
    cap: u64,
    store: BlobStore,
}

impl BlobWriter {
    /// Appends a chunk, refusing it (and everything after) once the cap would be passed
    /// or the disk's reserve reached; nothing past the cap is ever written.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let new_len = self.len + chunk.len() as u64;
        if new_len > self.cap {
            return Err(StoreError::TooLarge { cap: self.cap });
        }
        self.unchecked += chunk.len() as u64;
        if self.unchecked >= CHECK_EVERY {
            self.store.check_free(chunk.len() as u64)?;
            self.unchecked = 0;
        }
        let path = self.file.path().to_path_buf();
        self.file.write_all(chunk).map_err(io_err("write", &path))?;
        self.hasher.update(chunk);
        self.len = new_len;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes the content to disk and names it; the blob is not in the store until
    /// [`StagedBlob::commit`].
    pub fn finish(mut self) -> Result<StagedBlob, StoreError> {
        let path = self.file.path().to_path_buf();
        self.file.flush().map_err(io_err("flush", &path))?;
        self.file
            .as_file()
            .sync_all()
            .map_err(io_err("fsync", &path))?;
        let digest = Digest::from_sha256(self.hasher.finalize().into());
        // Only the path is kept: an archive of many small blobs must not hold a file
        // descriptor per blob until it is committed (the node's descriptors are shared
        // by every app).
        Ok(StagedBlob {
            file: self.file.into_temp_path(),
            digest,
            len: self.len,
            store: self.store,
        })
    }
}

/// A complete, durable blob waiting to be committed (or dropped, which deletes it).
#[derive(Debug)]
pub struct StagedBlob {
    file: TempPath,
    digest: Digest,
    len: u64,
    store: BlobStore,
}

impl StagedBlob {
    /// The content digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the staged content back (for validation before it is committed).
    pub fn read(&self) -> Result<Vec<u8>, StoreError> {
        let path: &Path = &self.file;
        let mut f = File::open(path).map_err(io_err("open", path))?;
        let mut out = Vec::with_capacity(self.len as usize);
        f.read_to_end(&mut out).map_err(io_err("read", path))?;
        Ok(out)
    }

    /// Moves the blob into the store under its digest and makes the rename durable.
    pub fn commit(self) -> Result<Digest, StoreError> {
        let dest = self.store.path(&self.digest);
        self.store.committed(self.digest);
        if dest.is_file() {
            // Same digest, same bytes: the temp file is dropped (deleted).
            return Ok(self.digest);
        }
        self.file.persist(&dest).map_err(|e| StoreError::Io {
            op: "rename into place",
            path: dest.clone(),
            source: e.error,
        })?;
        let dir = &self.store.blobs;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", dir))?;
        Ok(self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_verifies_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer(10).unwrap();
        w.write(b"hello").unwrap();
        w.write(b"world").unwrap();
        assert!(matches!(
            w.write(b"!"),
            Err(StoreError::TooLarge { cap: 10 })
        ));
        let staged = w.finish().unwrap();
        assert_eq!(staged.read().unwrap(), b"helloworld");
        let d = staged.commit().unwrap();
        assert_eq!(
            d.to_string(),
            "sha256:936a185caaa266bb9cbe981e9e05cb78cd732b0b3280eb944412bb6f8f8f07af"
        );
        assert_eq!(store.read_verified(&d).unwrap(), b"helloworld");
        assert_eq!(store.size(&d).unwrap(), 10);

        fs::write(store.path(&d), b"tampered!!").unwrap();
        assert!(matches!(
            store.read_verified(&d),
            Err(StoreError::Corrupt { .. })
        ));
        store.remove(&d).unwrap();
        assert!(matches!(
            store.read_verified(&d),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn dropped_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer(100).unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        let staged = {
            let mut w = store.writer(100).unwrap();
            w.write(b"staged").unwrap();
            w.finish().unwrap()
        };
        let digest = staged.digest();
        drop(staged);
        assert!(!store.contains(&digest));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }
}
