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
    /// A symbolic link whose target is outside the archive.
    #[error(
        "link {0:?} in the archive points to {1:?}, outside the archive: links may only name other files of the archive"
    )]
    OutsideLink(String, String),
    /// A hard link (a layer archive's own links are fine; the image archive has no use for them).
    #[error(
        "hard link {0:?} in the archive: image archives may hold files and symbolic links only"
    )]
    HardLink(String),
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

impl ArchiveError {
    /// Whether the disk was too full to take the archive (see [`crate::disk`]).
    pub fn is_disk_full(&self) -> bool {
        match self {
            ArchiveError::Store(e) => e.is_disk_full(),
            ArchiveError::Image(e) => e.is_disk_full(),
            _ => false,
        }
    }
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
        let mut annotations = skiff_spec::Labels::new();
        if let Some(name) = name {
            annotations.insert(oci::REF_NAME.into(), name.to_string().into());
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

/// One image in a `docker save` archive's `manifest.json`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The parts of an image config that tie it to its layers.
#[derive(serde::Deserialize)]
struct DockerConfig {
    rootfs: DockerRootFs,
}

#[derive(serde::Deserialize)]
struct DockerRootFs {
    diff_ids: Vec<Digest>,
}

/// Loads an image archive of at most `cap` bytes of content into `store`: an OCI image
/// layout tarball (`skiff save`, `docker save` since 25), or a classic `docker save`
/// tarball (`manifest.json` naming a config and layer tars by path: Docker before 25
/// writes `<id>/layer.tar` files, skopeo and podman `<digest>.tar` files with
/// `<id>/layer.tar` links to them). Links may only name files inside the archive.
pub fn import(store: &ImageStore, input: impl Read, cap: u64) -> Result<Vec<Loaded>, ArchiveError> {
    let mut staged: BTreeMap<Digest, StagedBlob> = BTreeMap::new();
    // Where each file of the archive went, for `docker save`'s path references.
    let mut by_path: BTreeMap<String, Digest> = BTreeMap::new();
    let mut docker: Option<Vec<DockerEntry>> = None;
    let mut index: Option<Index> = None;
    // Symbolic links: (name, what it names, relative to the archive's root).
    let mut links: Vec<(String, String)> = Vec::new();
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
        let escapes = name.starts_with('/') || name.split('/').any(|c| c == "..");
        if escapes {
            return Err(ArchiveError::Unexpected(path));
        }
        if kind.is_dir() {
            // blobs/, blobs/sha256/, and docker save's per-layer directories.
            continue;
        }
        if kind.is_symlink() {
            // skopeo and podman write `<id>/layer.tar -> ../<digest>.tar`: another name for
            // a file of the archive, resolved once every file is in.
            let target = entry
                .link_name()
                .map_err(tar_err)?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            let resolved = resolve_link(&name, &target)
                .ok_or_else(|| ArchiveError::OutsideLink(path.clone(), target.clone()))?;
            links.push((name, resolved));
            continue;
        }
        if kind.is_hard_link() {
            return Err(ArchiveError::HardLink(path));
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
            "manifest.json" => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(tar_err)?;
                docker = Some(serde_json::from_slice(&bytes).map_err(|e| {
                    ArchiveError::Invalid(format!(
                        "manifest.json is not a docker save manifest: {e}"
                    ))
                })?);
            }
            // Legacy docker save metadata that the manifest and configs repeat.
            "repositories" => {}
            other if other.ends_with("/VERSION") || other.ends_with("/json") => {}
            other => {
                let expected = match other.strip_prefix("blobs/sha256/") {
                    Some(hex) => Some(
                        Digest::from_hex(hex)
                            .map_err(|_| ArchiveError::Unexpected(path.clone()))?,
                    ),
                    // docker save names configs and layers by path: staged, checked below.
                    None if other.ends_with(".json") || other.ends_with(".tar") => None,
                    None => return Err(ArchiveError::Unexpected(path.clone())),
                };
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
                if expected.is_some_and(|e| e != blob.digest()) {
                    return Err(ArchiveError::DigestMismatch {
                        name: other.to_string(),
                        actual: blob.digest(),
                    });
                }
                by_path.insert(other.to_string(), blob.digest());
                staged.insert(blob.digest(), blob);
            }
        }
    }
    // A link names a file, or another link (a few hops at most); one that names nothing
    // is an error only if manifest.json uses it.
    for _ in 0..8 {
        let mut added = false;
        for (name, target) in &links {
            if !by_path.contains_key(name)
                && let Some(digest) = by_path.get(target).copied()
            {
                by_path.insert(name.clone(), digest);
                added = true;
            }
        }
        if !added {
            break;
        }
    }
    let index = match (index, docker) {
        (Some(index), _) => index,
        (None, Some(entries)) => docker_index(store, &entries, &by_path, &mut staged)?,
        (None, None) => {
            return Err(ArchiveError::Invalid(
                "the archive has neither an index.json (OCI layout) nor a manifest.json (docker save)".into(),
            ));
        }
    };
    let have = |d: &Digest| staged.contains_key(d) || store.blobs().contains(d);
    let read = |d: &Digest| -> Result<Vec<u8>, ArchiveError> {
        match staged.get(d) {
            Some(b) => Ok(b.read()?),
            None => Ok(store.blobs().read_verified(d)?),
        }
    };
    let mut loaded: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for outer in &index.manifests {
        // A multi-platform image: the one for this machine (as `pull` takes it).
        let nested;
        let desc = if Index::is_index(outer) {
            if !have(&outer.digest) {
                return Err(ArchiveError::MissingBlob {
                    image: outer.digest,
                    blob: outer.digest,
                });
            }
            nested = serde_json::from_slice::<Index>(&read(&outer.digest)?).map_err(|e| {
                ArchiveError::Invalid(format!("index {} is not an OCI index: {e}", outer.digest))
            })?;
            let chosen = nested
                .choose_platform()
                .map_err(|e| ArchiveError::Invalid(format!("image {}: {e}", outer.digest)))?;
            if Index::is_index(chosen) {
                return Err(ArchiveError::Invalid(format!(
                    "image {} nests indexes more than one deep",
                    outer.digest
                )));
            }
            chosen
        } else {
            outer
        };
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
        // Paths in the config are checked now, so a hostile image is refused at load
        // with the field named, not when something first runs it.
        let config: serde_json::Value = serde_json::from_slice(&read(&manifest.config.digest)?)
            .map_err(|e| {
                ArchiveError::Invalid(format!(
                    "config {} is not JSON: {e}",
                    manifest.config.digest
                ))
            })?;
        if let Some(root) = config.get("dev.skiff.siteRoot") {
            let root = root.as_str().ok_or_else(|| {
                ArchiveError::Invalid(
                    "the image config's dev.skiff.siteRoot is not a string".into(),
                )
            })?;
            oci::image_path("dev.skiff.siteRoot", root).map_err(ArchiveError::Invalid)?;
        }
        let names = loaded.entry(desc.digest).or_default();
        if let Some(name) = outer.annotations.get(oci::REF_NAME) {
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
            annotations: skiff_spec::Labels::new(),
            platform: None,
        };
        for tag in &tags {
            store.tag(&ImageName::parse(tag).expect("validated above"), &desc)?;
        }
        out.push(Loaded { tags, digest });
    }
    Ok(out)
}

/// Where a symbolic link at `name` pointing to `target` leads, as a path from the
/// archive's root; `None` when it leads outside (absolute, or `..` past the root).
fn resolve_link(name: &str, target: &str) -> Option<String> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Turns `docker save`'s manifest.json into the OCI index the rest of `import` reads:
/// each image gets an OCI manifest over its (staged) config and layers, after checking
/// that the layers are exactly the ones its config's `rootfs.diff_ids` name.
fn docker_index(
    store: &ImageStore,
    entries: &[DockerEntry],
    by_path: &BTreeMap<String, Digest>,
    staged: &mut BTreeMap<Digest, StagedBlob>,
) -> Result<Index, ArchiveError> {
    let find = |p: &String| {
        by_path
            .get(p.trim_start_matches("./"))
            .copied()
            .ok_or_else(|| {
                ArchiveError::Invalid(format!(
                    "manifest.json names {p}, which is not in the archive"
                ))
            })
    };
    let mut index = Index {
        schema_version: 2,
        media_type: Some(oci::INDEX_V1.into()),
        manifests: vec![],
    };
    for e in entries {
        let config = find(&e.config)?;
        let cfg_bytes = staged
            .get(&config)
            .map(StagedBlob::read)
            .transpose()?
            .unwrap_or_default();
        let cfg: DockerConfig = serde_json::from_slice(&cfg_bytes).map_err(|err| {
            ArchiveError::Invalid(format!("{} is not an image config: {err}", e.config))
        })?;
        if cfg.rootfs.diff_ids.len() != e.layers.len() {
            return Err(ArchiveError::Invalid(format!(
                "{} lists {} layers but manifest.json gives {}",
                e.config,
                cfg.rootfs.diff_ids.len(),
                e.layers.len()
            )));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in e.layers.iter().zip(&cfg.rootfs.diff_ids) {
            let digest = find(path)?;
            if digest != *diff_id {
                return Err(ArchiveError::DigestMismatch {
                    name: path.clone(),
                    actual: digest,
                });
            }
            layers.push(Descriptor {
                media_type: oci::LAYER_TAR.into(),
                digest,
                size: staged.get(&digest).map_or(0, StagedBlob::len),
                annotations: skiff_spec::Labels::new(),
                platform: None,
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MANIFEST_V1.into()),
            artifact_type: None,
            config: Descriptor {
                media_type: oci::CONFIG_V1.into(),
                digest: config,
                size: staged.get(&config).map_or(0, StagedBlob::len),
                annotations: skiff_spec::Labels::new(),
                platform: None,
            },
            layers,
            annotations: BTreeMap::new(),
        };
        // Staged like every other blob: nothing is visible until the whole archive checks out.
        let bytes = serde_json::to_vec(&manifest).expect("manifests serialize");
        let mut w = store.blobs().writer(u64::MAX)?;
        w.write(&bytes)?;
        let blob = w.finish()?;
        let desc = Descriptor {
            media_type: oci::MANIFEST_V1.into(),
            digest: blob.digest(),
            size: blob.len(),
            annotations: skiff_spec::Labels::new(),
            platform: None,
        };
        staged.insert(blob.digest(), blob);
        let tags = e.repo_tags.clone().unwrap_or_default();
        if tags.is_empty() {
            index.manifests.push(desc.clone());
        }
        for tag in tags {
            let mut d = desc.clone();
            // docker save writes `busybox:latest`; Docker Hub's library/ prefix is implied.
            let name = tag.strip_prefix("docker.io/").unwrap_or(&tag);
            let name = name.strip_prefix("library/").unwrap_or(name);
            d.annotations
                .insert(oci::REF_NAME.into(), name.to_string().into());
            index.manifests.push(d);
        }
    }
    Ok(index)
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

    /// A layer holding one small executable.
    fn one_file_layer() -> Vec<u8> {
        crate::layer::write_tar(
            &BTreeMap::from([(
                "bin/hello".to_string(),
                crate::layer::LayerEntry::File {
                    data: b"#!/bin/sh".to_vec(),
                    mode: 0o755,
                },
            )]),
            0,
        )
    }

    /// A link entry, as skopeo and podman write them (or a hostile one).
    fn with_link(mut archive: Vec<u8>, name: &str, target: &str, kind: tar::EntryType) -> Vec<u8> {
        // Drop the two zero blocks that end the archive, append the link, end it again.
        archive.truncate(archive.len() - 1024);
        let mut t = tar::Builder::new(archive);
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        t.append(&h, &[][..]).unwrap();
        t.into_inner().unwrap()
    }

    #[test]
    fn links_inside_the_archive_are_other_names_and_links_outside_are_refused() {
        use sha2::{Digest as _, Sha256};
        let layer = one_file_layer();
        let hex = hex::encode(Sha256::digest(&layer));
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{hex}"]}}}}"#
        );
        // skopeo's docker-archive: layers by digest, the legacy names as links to them.
        let manifest = r#"[{"Config":"cfg.json","RepoTags":["docker.io/library/bb:v1"],"Layers":["legacy/layer.tar"]}]"#;
        let layer_name = format!("{hex}.tar");
        let base = tar_of(&[
            ("manifest.json", manifest.as_bytes()),
            ("cfg.json", config.as_bytes()),
            (&layer_name, &layer),
            ("legacy/VERSION", b"1.0"),
        ]);
        let good = with_link(
            base.clone(),
            "legacy/layer.tar",
            &format!("../{hex}.tar"),
            tar::EntryType::Symlink,
        );
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let loaded = import(&store, good.as_slice(), 1 << 30).unwrap();
        assert_eq!(loaded[0].tags, ["bb:v1"]);
        let m = store.manifest(&store.resolve("bb:v1").unwrap()).unwrap();
        assert_eq!(m.layers[0].digest.hex(), hex);

        for (target, kind) in [
            ("../../etc/passwd", tar::EntryType::Symlink),
            ("/etc/passwd", tar::EntryType::Symlink),
            (layer_name.as_str(), tar::EntryType::Link),
        ] {
            let bad = with_link(base.clone(), "legacy/layer.tar", target, kind);
            let dir = tempfile::tempdir().unwrap();
            let store = ImageStore::open(dir.path()).unwrap();
            let err = import(&store, bad.as_slice(), 1 << 30).unwrap_err();
            assert!(
                matches!(
                    err,
                    ArchiveError::OutsideLink(..) | ArchiveError::HardLink(_)
                ),
                "{target}: {err}"
            );
            assert!(err.to_string().contains("legacy/layer.tar"), "{err}");
            assert!(store.blobs().list().unwrap().is_empty(), "nothing kept");
            assert!(store.list().unwrap().is_empty());
        }
        // A link to a name the archive lacks: manifest.json names a missing file.
        let dangling = with_link(
            base,
            "legacy/layer.tar",
            "nothing.tar",
            tar::EntryType::Symlink,
        );
        let (_d, store, _) = store_with_image();
        let err = import(&store, dangling.as_slice(), 1 << 30).unwrap_err();
        assert!(err.to_string().contains("legacy/layer.tar"), "{err}");
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

    #[test]
    fn loads_docker_save_tarballs_checking_layers_against_the_config() {
        use sha2::{Digest as _, Sha256};
        let layer = one_file_layer();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        );
        let manifest = br#"[{"Config":"abc123.json","RepoTags":["busybox:latest"],"Layers":["l1/layer.tar"]}]"#;
        let archive = tar_of(&[
            ("manifest.json", manifest),
            ("repositories", b"{}"),
            ("abc123.json", config.as_bytes()),
            ("l1/VERSION", b"1.0"),
            ("l1/json", b"{}"),
            ("l1/layer.tar", &layer),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let loaded = import(&store, archive.as_slice(), 1 << 30).unwrap();
        assert_eq!(loaded[0].tags, ["busybox:latest"]);
        let digest = store.resolve("busybox").unwrap();
        let m = store.manifest(&digest).unwrap();
        assert_eq!(m.layers[0].digest.to_string(), diff_id);
        let s = store.summary(&digest).unwrap();
        assert!(matches!(s.runnable, crate::Runnable::Oci { ref layers } if layers.len() == 1));
        assert_eq!(s.run.cmd, ["sh"]);

        // A layer that is not the one the config names is refused, and nothing stays.
        let bad = tar_of(&[
            ("manifest.json", manifest),
            ("abc123.json", config.as_bytes()),
            ("l1/layer.tar", b"other bytes"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let err = import(&store, bad.as_slice(), 1 << 30).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::DigestMismatch { name, .. } if name == "l1/layer.tar"),
            "{err}"
        );
        assert!(store.blobs().list().unwrap().is_empty());
    }
}
