//! Compiled code on disk, sealed so that only code this node compiled is ever loaded.
//!
//! Loading compiled code is `unsafe` in wasmtime: whoever can write the file can run
//! native code in the node. Each entry therefore starts with an HMAC-SHA256 over (kind,
//! digest, code) keyed with a secret only the node can read; an entry whose MAC does not
//! verify is ignored and recompiled.

use std::fs;
use std::io::{self, Write as _};
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use skiff_spec::{AppKind, Digest};
use tracing::warn;

type HmacSha256 = Hmac<Sha256>;
const MAC_LEN: usize = 32;

#[derive(Clone)]
pub(crate) struct CodeCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl CodeCache {
    pub(crate) fn open(dir: PathBuf, key: [u8; 32]) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        // Compile workers' scratch directories that a killed node left.
        for entry in fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".compile-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(Self { dir, key })
    }

    /// The directory entries live in (compile workers write beside them).
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn path(&self, digest: &Digest, kind: AppKind) -> PathBuf {
        self.dir.join(format!("{}.{kind}", digest.hex()))
    }

    fn mac(&self, digest: &Digest, kind: AppKind) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(kind.to_string().as_bytes());
        mac.update(b"\0");
        mac.update(digest.to_string().as_bytes());
        mac.update(b"\0");
        mac
    }

    /// The cached code, if present and sealed by this node.
    pub(crate) fn load(&self, digest: &Digest, kind: AppKind) -> Option<Vec<u8>> {
        let path = self.path(digest, kind);
        let mut bytes = fs::read(&path).ok()?;
        if bytes.len() < MAC_LEN {
            warn!(path = %path.display(), "cache entry too short; ignoring it");
            return None;
        }
        let code = bytes.split_off(MAC_LEN);
        let mut mac = self.mac(digest, kind);
        mac.update(&code);
        if mac.verify_slice(&bytes).is_err() {
            warn!(path = %path.display(), "cache entry not sealed by this node; ignoring it");
            return None;
        }
        Some(code)
    }

    /// Seals and writes code atomically (temp file + rename).
    pub(crate) fn store(&self, digest: &Digest, kind: AppKind, code: &[u8]) -> io::Result<()> {
        let mut mac = self.mac(digest, kind);
        mac.update(code);
        let tag = mac.finalize().into_bytes();
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&tag)?;
        tmp.write_all(code)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(digest, kind)).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_sealed_with_our_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let digest: Digest = format!("sha256:{}", "1".repeat(64)).parse().unwrap();
        let ours = CodeCache::open(dir.path().to_path_buf(), [7; 32]).unwrap();
        ours.store(&digest, AppKind::Http, b"native code").unwrap();
        assert_eq!(ours.load(&digest, AppKind::Http).unwrap(), b"native code");
        assert!(
            ours.load(&digest, AppKind::Wagi).is_none(),
            "kind is part of the seal"
        );

        let theirs = CodeCache::open(dir.path().to_path_buf(), [8; 32]).unwrap();
        assert!(
            theirs.load(&digest, AppKind::Http).is_none(),
            "another key must not load it"
        );

        let path = ours.path(&digest, AppKind::Http);
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(
            ours.load(&digest, AppKind::Http).is_none(),
            "tampered code must not load"
        );
    }
}
