//! `skiff save` / `skiff load`: images as an OCI image layout in a tar file.
//!
//! Loading checks everything before anything becomes visible: only the layout's own files
//! are accepted, every blob must hash to its name, and every blob an image refers to must
//! be in the archive or already in the store. Blobs are staged as they stream in and
//! committed (and tags written) only once the whole archive checked out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use skiff_spec::Digest;

use crate::oci::{self, Descriptor, Index, Manifest};
use crate::{ImageError, ImageName, ImageStore, StagedBlob, StoreError};

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The tar stream itself is broken (truncated, not a tar).
    #[error("not a readable tar archive: {0}")]
    Tar(String),
    /// An entry that has no place in an OCI layout.
    #[error(
        "unexpected entry {0:?} in the archive: an OCI layout holds only oci-layout, index.json and blobs/sha256/<digest>"
    )]
    Unexpected(String),
    /// A blob whose content does not hash to its name.
    #[error("blob {name} does not match its digest: its content hashes to {actual}")]
    DigestMismatch {
        /// The entry's name.
        name: String,
        /// What it hashes to.
        actual: Digest,
    },
    /// The archive is bigger than allowed.
    #[error("archive is larger than the {0}-byte limit")]
    TooLarge(u64),
    /// A document is missing or malformed.
    #[error("{0}")]
    Invalid(String),
    /// An image refers to a blob that is neither in the archive nor in the store.
    #[error("image {image} refers to blob {blob}, which is not in the archive")]
    MissingBlob {
        /// The manifest.
        image: Digest,
        /// The missing blob.
        blob: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Writing the archive failed.
    #[error("failed to write the archive: {0}")]
    Write(std::io::Error),
}

/// An image that was loaded: its names and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Names it was tagged with.
    pub tags: Vec<String>,
    /// Manifest digest.
    pub digest: Digest,
}

/// Writes `images` (name, manifest) as an OCI layout tarball. The output is
/// deterministic: entries sorted, zero mtimes, root ownership.
pub fn export(
    store: &ImageStore,
    images: &[(Option<ImageName>, Digest)],
    out: impl Write,
) -> Result<(), ArchiveError> {
    let mut blobs = BTreeSet::new();
    let mut index = Index {
        schema_version: 2,
        media_type: Some(oci::INDEX_V1.into()),
        manifests: vec![],
    };
    for (name, digest) in images {
        let manifest = store.manifest(digest)?;
        blobs.insert(*digest);
        blobs.insert(manifest.config.digest);
        blobs.extend(manifest.layers.iter().map(|l| l.digest));
        let size = store.blobs().size(digest)?;
        let mut annotations = BTreeMap::new();
        if let Some(name) = name {
            annotations.insert(oci::REF_NAME.to_string(), name.to_string());
        }
        index.manifests.push(Descriptor {
            media_type: oci::MANIFEST_V1.into(),
            digest: *digest,
            size,
            annotations,
            platform: None,
        });
    }
    let mut tar = tar::Builder::new(out);
    let file = |tar: &mut tar::Builder<_>, path: &str, data: &mut dyn Read, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data)
            .map_err(ArchiveError::Write)
    };
    let layout = format!("{{\"imageLayoutVersion\":\"{}\"}}", oci::LAYOUT_VERSION);
    file(
        &mut tar,
        "oci-layout",
        &mut layout.as_bytes(),
        layout.len() as u64,
    )?;
    let index = serde_json::to_vec(&index).expect("index serializes");
    file(
        &mut tar,
        "index.json",
        &mut index.as_slice(),
        index.len() as u64,
    )?;
    for digest in blobs {
        let path = store.blobs().path(&digest);
        let size = store.blobs().size(&digest)?;
        let mut f = std::fs::File::open(&path).map_err(ArchiveError::Write)?;
        file(
            &mut tar,
            &format!("blobs/sha256/{}", digest.hex()),
            &mut f,
            size,
        )?;
    }
    tar.into_inner()
        .map_err(ArchiveError::Write)?
        .flush()
        .map_err(ArchiveError::Write)
}

/// Loads an OCI layout tarball of at most `cap` bytes of content into `store`.
pub fn import(store: &ImageStore, input: impl Read, cap: u64) -> Result<Vec<Loaded>, ArchiveError> {
    let mut staged: BTreeMap<Digest, StagedBlob> = BTreeMap::new();
    let mut index: Option<Index> = None;
    let mut total = 0u64;
    let mut archive = tar::Archive::new(input);
    let tar_err = |e: std::io::Error| ArchiveError::Tar(e.to_string());
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let path = entry
            .path()
            .map_err(tar_err)?
            .to_string_lossy()
            .into_owned();
        let name = path.trim_start_matches("./").to_string();
        let kind = entry.header().entry_type();
        if kind.is_dir() && matches!(name.trim_end_matches('/'), "" | "blobs" | "blobs/sha256") {
            continue;
        }
        if !kind.is_file() {
            return Err(ArchiveError::Unexpected(path));
        }
        total += entry.size();
        if total > cap {
            return Err(ArchiveError::TooLarge(cap));
        }
        match name.as_str() {
            "oci-layout" => {
                let mut s = String::new();
                entry.read_to_string(&mut s).map_err(tar_err)?;
                if !s.contains("imageLayoutVersion") {
                    return Err(ArchiveError::Invalid(format!(
                        "oci-layout is not an image layout marker: {s:?}"
                    )));
                }
            }
            "index.json" => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(tar_err)?;
                index = Some(serde_json::from_slice(&bytes).map_err(|e| {
                    ArchiveError::Invalid(format!("index.json is not an OCI index: {e}"))
                })?);
            }
            other => {
                let hex = other
                    .strip_prefix("blobs/sha256/")
                    .ok_or_else(|| ArchiveError::Unexpected(path.clone()))?;
                let expected =
                    Digest::from_hex(hex).map_err(|_| ArchiveError::Unexpected(path.clone()))?;
                let mut writer = store.blobs().writer(cap)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = entry.read(&mut buf).map_err(tar_err)?;
                    if n == 0 {
                        break;
                    }
                    writer.write(&buf[..n])?;
                }
                let blob = writer.finish()?;
                if blob.digest() != expected {
                    return Err(ArchiveError::DigestMismatch {
                        name: other.to_string(),
                        actual: blob.digest(),
                    });
                }
                staged.insert(expected, blob);
            }
        }
    }
    let index =
        index.ok_or_else(|| ArchiveError::Invalid("the archive has no index.json".into()))?;
    let have = |d: &Digest| staged.contains_key(d) || store.blobs().contains(d);
    let read = |d: &Digest| -> Result<Vec<u8>, ArchiveError> {
        match staged.get(d) {
            Some(b) => Ok(b.read()?),
            None => Ok(store.blobs().read_verified(d)?),
        }
    };
    let mut loaded: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for desc in &index.manifests {
        if desc.media_type == oci::INDEX_V1 || desc.media_type.contains("manifest.list") {
            return Err(ArchiveError::Invalid(format!(
                "image {} is a multi-platform index; load a single-platform image",
                desc.digest
            )));
        }
        if !have(&desc.digest) {
            return Err(ArchiveError::MissingBlob {
                image: desc.digest,
                blob: desc.digest,
            });
        }
        let manifest: Manifest = serde_json::from_slice(&read(&desc.digest)?).map_err(|e| {
            ArchiveError::Invalid(format!(
                "manifest {} is not an OCI manifest: {e}",
                desc.digest
            ))
        })?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !have(&blob.digest) {
                return Err(ArchiveError::MissingBlob {
                    image: desc.digest,
                    blob: blob.digest,
                });
            }
        }
        let names = loaded.entry(desc.digest).or_default();
        if let Some(name) = desc.annotations.get(oci::REF_NAME) {
            let name = ImageName::parse(name).map_err(|e| ArchiveError::Invalid(e.to_string()))?;
            names.push(name.to_string());
        }
    }
    if loaded.is_empty() {
        return Err(ArchiveError::Invalid("index.json lists no images".into()));
    }
    // Everything checked out: make it visible.
    for (_, blob) in staged {
        blob.commit()?;
    }
    let mut out = Vec::new();
    for (digest, tags) in loaded {
        let size = store.blobs().size(&digest)?;
        let desc = Descriptor {
            media_type: oci::MANIFEST_V1.into(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
        };
        for tag in &tags {
            store.tag(&ImageName::parse(tag).expect("validated above"), &desc)?;
        }
        out.push(Loaded { tags, digest });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::RunConfig;

    fn store_with_image() -> (tempfile::TempDir, ImageStore, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let wasm = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        let layer = store.blobs().put(&wasm).unwrap();
        let image = store
            .add_wasm(
                layer,
                wasm.len() as u64,
                skiff_spec::AppKind::Wagi,
                RunConfig::default(),
                "1970-01-01T00:00:00Z",
            )
            .unwrap();
        store
            .tag(&ImageName::parse("app:v1").unwrap(), &image)
            .unwrap();
        (dir, store, image.digest)
    }

    #[test]
    fn round_trips_and_is_reproducible() {
        let (_d, store, digest) = store_with_image();
        let mut a = Vec::new();
        export(
            &store,
            &[(Some(ImageName::parse("app:v1").unwrap()), digest)],
            &mut a,
        )
        .unwrap();
        let mut b = Vec::new();
        export(
            &store,
            &[(Some(ImageName::parse("app:v1").unwrap()), digest)],
            &mut b,
        )
        .unwrap();
        assert_eq!(a, b, "same images, same bytes");

        let dir2 = tempfile::tempdir().unwrap();
        let other = ImageStore::open(dir2.path()).unwrap();
        let loaded = import(&other, a.as_slice(), 1 << 30).unwrap();
        assert_eq!(
            loaded,
            vec![Loaded {
                tags: vec!["app:v1".into()],
                digest
            }]
        );
        assert_eq!(other.resolve("app:v1").unwrap(), digest);
        assert!(matches!(
            other.summary(&digest).unwrap().runnable,
            crate::Runnable::Wasm {
                kind: skiff_spec::AppKind::Wagi,
                ..
            }
        ));
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Raw name bytes: `set_path` refuses the hostile names these tests need.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            t.append(&h, *data).unwrap();
        }
        t.into_inner().unwrap()
    }

    #[test]
    fn refuses_bad_archives_and_leaves_nothing() {
        let (_d, store, digest) = store_with_image();
        let mut good = Vec::new();
        export(
            &store,
            &[(Some(ImageName::parse("app:v1").unwrap()), digest)],
            &mut good,
        )
        .unwrap();

        let dir2 = tempfile::tempdir().unwrap();
        let other = ImageStore::open(dir2.path()).unwrap();
        let err = import(&other, &good[..good.len() / 2], 1 << 30).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::Tar(_) | ArchiveError::Invalid(_) | ArchiveError::MissingBlob { .. }
            ),
            "truncated: {err}"
        );
        let err = import(
            &other,
            &b"this is not a tar file at all, not even close"[..],
            1 << 30,
        )
        .unwrap_err();
        assert!(
            matches!(err, ArchiveError::Tar(_) | ArchiveError::Invalid(_)),
            "junk: {err}"
        );

        let fake = format!("blobs/sha256/{}", "a".repeat(64));
        let err = import(&other, tar_of(&[(&fake, b"not that")]).as_slice(), 1 << 30).unwrap_err();
        assert!(matches!(err, ArchiveError::DigestMismatch { .. }), "{err}");
        let err = import(
            &other,
            tar_of(&[("../../etc/passwd", b"x")]).as_slice(),
            1 << 30,
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Unexpected(_)), "{err}");
        let index = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":3}]}"#;
        let err = import(&other, tar_of(&[("index.json", index)]).as_slice(), 1 << 30).unwrap_err();
        assert!(matches!(err, ArchiveError::MissingBlob { .. }), "{err}");
        let err = import(&other, good.as_slice(), 100).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge(100)), "{err}");

        assert!(
            other.blobs().list().unwrap().is_empty(),
            "nothing partial was kept"
        );
        assert!(other.list().unwrap().is_empty());
    }
}
