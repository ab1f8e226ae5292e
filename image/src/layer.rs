//! Tar layers: written deterministically at build, extracted safely at run.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::BlobStore;
use crate::oci::{self, Descriptor};

/// Why a layer could not be extracted. Every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The entry's path leaves the tree (`..`, absolute) or is empty.
    #[error("layer entry {0:?} has a path outside the image (.. or absolute)")]
    PathEscapes(String),
    /// A symlink or hardlink whose target leads outside the tree.
    #[error("layer entry {entry:?} links to {target:?}, outside the image")]
    LinkEscapes {
        /// The link.
        entry: String,
        /// Where it points.
        target: String,
    },
    /// Writing would go through a symlink.
    #[error("layer entry {0:?} would be written through a symlink")]
    ThroughSymlink(String),
    /// Devices, fifos and the like.
    #[error("layer entry {entry:?} is a {kind}, which images may not contain")]
    Unsupported {
        /// The entry.
        entry: String,
        /// Its type.
        kind: String,
    },
    /// A media type that is not a tar layer.
    #[error("layer {0} has media type {1}, which is not a tar layer")]
    MediaType(String, String),
    /// The tar stream or the disk failed.
    #[error("failed to extract layer entry {entry:?}: {source}")]
    Io {
        /// The entry (or the layer).
        entry: String,
        /// The error.
        source: io::Error,
    },
}

/// A file to put in a layer.
pub struct LayerFile {
    /// Content.
    pub data: Vec<u8>,
    /// Unix mode bits (0o644, 0o755).
    pub mode: u32,
}

/// A deterministic tar of `files` (paths relative to the image root): every parent
/// directory gets an entry, entries are sorted, owners are root, mtimes are `mtime`.
pub fn write_tar(files: &BTreeMap<String, LayerFile>, mtime: u64) -> Vec<u8> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    let mut entries: BTreeMap<String, Option<&LayerFile>> =
        dirs.into_iter().map(|d| (d, None)).collect();
    entries.extend(files.iter().map(|(p, f)| (p.clone(), Some(f))));
    let mut tar = tar::Builder::new(Vec::new());
    for (path, file) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        match file {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, &path, io::empty())
                    .expect("writing to memory");
            }
            Some(f) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(f.mode);
                h.set_size(f.data.len() as u64);
                tar.append_data(&mut h, &path, f.data.as_slice())
                    .expect("writing to memory");
            }
        }
    }
    tar.into_inner().expect("writing to memory")
}

/// Extracts `layers` in order into `dest` (which must exist), applying whiteouts.
pub fn extract(blobs: &BlobStore, layers: &[Descriptor], dest: &Path) -> Result<(), LayerError> {
    for layer in layers {
        let path = blobs.path(&layer.digest);
        let file = fs::File::open(&path).map_err(|source| LayerError::Io {
            entry: layer.digest.to_string(),
            source,
        })?;
        let reader: Box<dyn Read> = match layer.media_type.as_str() {
            oci::LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => Box::new(file),
            oci::LAYER_TAR_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Box::new(flate2::read::GzDecoder::new(file))
            }
            oci::LAYER_TAR_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
                Box::new(zstd::stream::read::Decoder::new(file).map_err(|source| {
                    LayerError::Io {
                        entry: layer.digest.to_string(),
                        source,
                    }
                })?)
            }
            other => {
                return Err(LayerError::MediaType(
                    layer.digest.to_string(),
                    other.to_string(),
                ));
            }
        };
        extract_tar(reader, dest)?;
    }
    Ok(())
}

/// The entry path as clean relative components, or `None` if it leaves the root.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Resolves a link target lexically, as seen from `entry`'s directory (absolute targets
/// are relative to the image root); `None` if it climbs out.
fn link_target(entry: &Path, target: &Path, symlink: bool) -> Option<PathBuf> {
    let mut out: Vec<Component> = if symlink && !target.is_absolute() {
        entry
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    for c in target.components() {
        match c {
            Component::Normal(_) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

/// Refuses to write at `rel` if any existing parent of it is a symlink.
fn check_parents(dest: &Path, rel: &Path, name: &str) -> Result<(), LayerError> {
    let mut p = dest.to_path_buf();
    for c in rel.parent().into_iter().flat_map(|p| p.components()) {
        p.push(c);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(LayerError::ThroughSymlink(name.to_string()));
        }
    }
    Ok(())
}

fn extract_tar(reader: impl Read, dest: &Path) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(reader);
    let io_err = |entry: &str| {
        let entry = entry.to_string();
        move |source| LayerError::Io { entry, source }
    };
    for entry in archive.entries().map_err(io_err("<layer>"))? {
        let mut entry = entry.map_err(io_err("<layer>"))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let Some(rel) = relative(Path::new(&name)) else {
            if matches!(name.as_str(), "./" | "." | "/") {
                continue;
            }
            return Err(LayerError::PathEscapes(name));
        };
        check_parents(dest, &rel, &name)?;
        let target = dest.join(&rel);
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Whiteouts (OCI image spec): `.wh..wh..opq` empties its directory, `.wh.x`
        // deletes `x` from the layers below.
        if file_name == ".wh..wh..opq" {
            if let Some(dir) = target.parent()
                && let Ok(read) = fs::read_dir(dir)
            {
                for e in read.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() && !p.is_symlink() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let victim = target.with_file_name(hidden);
            let _ = if victim.is_dir() && !victim.is_symlink() {
                fs::remove_dir_all(&victim)
            } else {
                fs::remove_file(&victim)
            };
            continue;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mtime = entry.header().mtime().unwrap_or(0);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err(&name))?;
        }
        if kind.is_dir() {
            if !target.is_dir() {
                let _ = fs::remove_file(&target);
                fs::create_dir(&target).map_err(io_err(&name))?;
            }
            fs::set_permissions(
                &target,
                std::os::unix::fs::PermissionsExt::from_mode(mode | 0o700),
            )
            .map_err(io_err(&name))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            remove_existing(&target);
            let mut f = fs::File::create(&target).map_err(io_err(&name))?;
            io::copy(&mut entry, &mut f).map_err(io_err(&name))?;
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(io_err(&name))?;
            f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                .map_err(io_err(&name))?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(io_err(&name))?
                .map(|l| l.into_owned())
                .unwrap_or_default();
            if link_target(&rel, &link, true).is_none() {
                return Err(LayerError::LinkEscapes {
                    entry: name,
                    target: link.display().to_string(),
                });
            }
            remove_existing(&target);
            std::os::unix::fs::symlink(&link, &target).map_err(io_err(&name))?;
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(io_err(&name))?
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let Some(source) =
                link_target(&rel, &link, false).filter(|s| !s.as_os_str().is_empty())
            else {
                return Err(LayerError::LinkEscapes {
                    entry: name,
                    target: link.display().to_string(),
                });
            };
            check_parents(dest, &source, &name)?;
            let source = dest.join(source);
            if fs::symlink_metadata(&source).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(LayerError::ThroughSymlink(name));
            }
            remove_existing(&target);
            fs::hard_link(&source, &target).map_err(io_err(&name))?;
        } else {
            return Err(LayerError::Unsupported {
                entry: name,
                kind: format!("{kind:?}"),
            });
        }
    }
    Ok(())
}

fn remove_existing(path: &Path) {
    if let Ok(m) = fs::symlink_metadata(path) {
        let _ = if m.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            t.append(&h, *data).unwrap();
        }
        t.into_inner().unwrap()
    }

    #[test]
    fn writes_deterministic_tars_that_extract() {
        let files = BTreeMap::from([
            (
                "usr/share/nginx/html/index.html".to_string(),
                LayerFile {
                    data: b"hi".to_vec(),
                    mode: 0o644,
                },
            ),
            (
                "usr/share/nginx/html/a/b.css".to_string(),
                LayerFile {
                    data: b"x".to_vec(),
                    mode: 0o644,
                },
            ),
        ]);
        let a = write_tar(&files, 0);
        assert_eq!(a, write_tar(&files, 0));
        let dir = tempfile::tempdir().unwrap();
        extract_tar(a.as_slice(), dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("usr/share/nginx/html/index.html")).unwrap(),
            b"hi"
        );
        assert_eq!(
            fs::read(dir.path().join("usr/share/nginx/html/a/b.css")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn hostile_entries_are_refused_by_name() {
        use tar::EntryType::*;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw_tar(&[("../evil", Regular, "", b"x")]), "../evil"),
            (raw_tar(&[("/etc/evil", Regular, "", b"x")]), "/etc/evil"),
            (
                raw_tar(&[("a/../../evil", Regular, "", b"x")]),
                "a/../../evil",
            ),
            (raw_tar(&[("link", Symlink, "../../etc", b"")]), "link"),
            (raw_tar(&[("hard", Link, "../outside", b"")]), "hard"),
            (
                raw_tar(&[
                    ("abs", Symlink, "/etc", b""),
                    ("abs/passwd", Regular, "", b"x"),
                ]),
                "abs/passwd",
            ),
            (raw_tar(&[("dev", Char, "", b"")]), "dev"),
        ];
        for (tar, entry) in cases {
            let dir = tempfile::tempdir().unwrap();
            let inner = dir.path().join("root");
            fs::create_dir(&inner).unwrap();
            let err = extract_tar(tar.as_slice(), &inner).unwrap_err();
            assert!(err.to_string().contains(entry), "{entry}: {err}");
            assert!(!dir.path().join("evil").exists() && !dir.path().join("outside").exists());
        }
    }

    #[test]
    fn plain_gzip_and_zstd_layers_apply_in_order() {
        use tar::EntryType::*;
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::open(root.path()).unwrap();
        let base = raw_tar(&[("a", Regular, "", b"plain"), ("b", Regular, "", b"plain")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw_tar(&[("b", Regular, "", b"gzip")])).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(
            raw_tar(&[("c", Regular, "", b"zstd"), (".wh.a", Regular, "", b"")]).as_slice(),
            3,
        )
        .unwrap();
        let layers: Vec<Descriptor> = [
            (oci::LAYER_TAR, base),
            (oci::LAYER_TAR_GZIP, gz),
            (oci::LAYER_TAR_ZSTD, zst),
        ]
        .into_iter()
        .map(|(media_type, bytes)| Descriptor {
            media_type: media_type.into(),
            digest: store.put(&bytes).unwrap(),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        })
        .collect();
        let dir = tempfile::tempdir().unwrap();
        extract(&store, &layers, dir.path()).unwrap();
        assert!(!dir.path().join("a").exists(), "the zstd layer's whiteout");
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"gzip");
        assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"zstd");

        let mut bad = layers[2].clone();
        bad.media_type = "application/vnd.oci.image.layer.v1.tar+lz4".into();
        let err = extract(&store, &[bad], dir.path()).unwrap_err().to_string();
        assert!(err.contains("tar+lz4"), "{err}");
    }

    #[test]
    fn whiteouts_delete_lower_files() {
        use tar::EntryType::*;
        let dir = tempfile::tempdir().unwrap();
        extract_tar(
            raw_tar(&[
                ("d/a", Regular, "", b"1"),
                ("d/b", Regular, "", b"2"),
                ("e/c", Regular, "", b"3"),
            ])
            .as_slice(),
            dir.path(),
        )
        .unwrap();
        extract_tar(
            raw_tar(&[
                ("d/.wh.a", Regular, "", b""),
                ("e/.wh..wh..opq", Regular, "", b""),
            ])
            .as_slice(),
            dir.path(),
        )
        .unwrap();
        assert!(!dir.path().join("d/a").exists());
        assert!(dir.path().join("d/b").exists());
        assert!(dir.path().join("e").is_dir() && !dir.path().join("e/c").exists());
    }
}
