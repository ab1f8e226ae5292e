//! Tar layers: written deterministically at build, extracted safely at run.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use cap_std::fs::Dir;

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
    /// A whiteout that names no file below it (`.wh.`, `.wh..`, `.wh...`).
    #[error(
        "layer entry {0:?} is a whiteout of no file (it would name its own directory or the one above)"
    )]
    BadWhiteout(String),
    /// The image would write more than the node allows.
    #[error("{0}")]
    Limit(String),
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

/// An entry to put in a layer.
#[derive(Debug)]
pub enum LayerEntry {
    /// A regular file.
    File {
        /// Content.
        data: Vec<u8>,
        /// Unix mode bits (0o644, 0o755).
        mode: u32,
    },
    /// A symbolic link, its target stored as written: an absolute one means the image's
    /// own root (as runc and the site server read it), a relative one must stay inside
    /// the image (the extractor refuses it otherwise; see [`link_stays_inside`]).
    Symlink {
        /// Where it points.
        target: String,
    },
}

/// Whether a symlink at image path `entry` pointing at `target` stays inside the image
/// when resolved as the extractor resolves it.
pub fn link_stays_inside(entry: &str, target: &str) -> bool {
    !target.is_empty() && link_target(Path::new(entry), Path::new(target), true).is_some()
}

/// A deterministic tar of `files` (paths relative to the image root): every parent
/// directory gets an entry, entries are sorted, owners are root, mtimes are `mtime`.
pub fn write_tar(files: &BTreeMap<String, LayerEntry>, mtime: u64) -> Vec<u8> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in files.keys() {
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    let mut entries: BTreeMap<String, Option<&LayerEntry>> =
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
            Some(LayerEntry::File { data, mode }) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, &path, data.as_slice())
                    .expect("writing to memory");
            }
            Some(LayerEntry::Symlink { target }) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, &path, target)
                    .expect("writing to memory");
            }
        }
    }
    tar.into_inner().expect("writing to memory")
}

/// Bounds on what extracting an image may write: a small compressed layer can expand
/// to far more bytes or inodes than it weighs, and a full disk takes the node's state
/// store and every app with it.
#[derive(Clone, Copy, Debug)]
pub struct ExtractLimits {
    /// Bytes of file content, all layers together. Default 4 GiB.
    pub max_bytes: u64,
    /// Entries (files, directories, links), all layers together. Default 1,000,000.
    pub max_entries: u64,
    /// Components in one path. Default 128.
    pub max_depth: usize,
    /// Bytes that must stay free on the disk holding the tree. Default 512 MiB.
    pub min_free_bytes: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 30,
            max_entries: 1_000_000,
            max_depth: 128,
            min_free_bytes: 512 << 20,
        }
    }
}

/// What extraction has used so far of its [`ExtractLimits`].
struct Budget {
    limits: ExtractLimits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    fn entry(&mut self, name: &str, depth: usize) -> Result<(), LayerError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(LayerError::Limit(format!(
                "the image has more than {} entries (at {name:?})",
                self.limits.max_entries
            )));
        }
        if depth > self.limits.max_depth {
            return Err(LayerError::Limit(format!(
                "layer entry {name:?} is {depth} directories deep; the limit is {}",
                self.limits.max_depth
            )));
        }
        Ok(())
    }

    /// Reserves `size` bytes for the file `name`, checking the disk keeps its reserve.
    fn file(&mut self, name: &str, size: u64, root: &Dir) -> Result<(), LayerError> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_bytes {
            return Err(LayerError::Limit(format!(
                "the image's files add up to more than {} bytes (at {name:?})",
                self.limits.max_bytes
            )));
        }
        if let Ok(fs) = rustix::fs::fstatvfs(root) {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            if free < size.saturating_add(self.limits.min_free_bytes) {
                return Err(LayerError::Limit(format!(
                    "writing {name:?} ({size} bytes) would leave less than {} bytes free on the node's disk ({free} free)",
                    self.limits.min_free_bytes
                )));
            }
        }
        Ok(())
    }
}

/// Extracts `layers` in order into the directory `dest` (which must exist), applying
/// whiteouts, within `limits`.
///
/// Every entry is created beneath a capability handle on `dest` (cap-std), one path
/// component at a time, never following a symlink: an entry cannot reach outside the
/// tree however its earlier entries were laid out. If `dest` is removed while this
/// runs, extraction fails instead of writing a partial tree elsewhere.
pub fn extract(
    blobs: &BlobStore,
    layers: &[Descriptor],
    dest: &Path,
    limits: ExtractLimits,
) -> Result<(), LayerError> {
    let (root, mut budget) = open_tree(dest, limits)?;
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
        extract_tar_into(reader, &root, &mut budget)?;
    }
    Ok(())
}

/// Extracts one uncompressed tar stream into the directory `dest`, within `limits`
/// (the layer extractor on its own, for tests and fuzzing).
pub fn extract_stream(
    reader: impl Read,
    dest: &Path,
    limits: ExtractLimits,
) -> Result<(), LayerError> {
    let (root, mut budget) = open_tree(dest, limits)?;
    extract_tar_into(reader, &root, &mut budget)
}

/// A handle on the tree's root (the node's own directory, so opened with ambient
/// authority) and a fresh budget.
fn open_tree(dest: &Path, limits: ExtractLimits) -> Result<(Dir, Budget), LayerError> {
    let root = Dir::open_ambient_dir(dest, cap_std::ambient_authority()).map_err(|source| {
        LayerError::Io {
            entry: dest.display().to_string(),
            source,
        }
    })?;
    let budget = Budget {
        limits,
        bytes: 0,
        entries: 0,
    };
    Ok((root, budget))
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

/// The tree being extracted: a handle on its root and on the directory the last entry
/// went to (tar entries come grouped by directory).
struct Tree<'a> {
    root: &'a Dir,
    last: Option<(PathBuf, Dir)>,
}

impl Tree<'_> {
    /// The directory `dir` (relative to the root), walked one component at a time
    /// without following symlinks. With `create`, missing directories are made and a
    /// file in the way is replaced; without, `None` when a component is missing.
    fn dir(&mut self, dir: &Path, create: bool, name: &str) -> Result<Option<Dir>, LayerError> {
        let io = |source| LayerError::Io {
            entry: name.to_string(),
            source,
        };
        if let Some((path, handle)) = &self.last
            && path == dir
        {
            return handle.try_clone().map(Some).map_err(io);
        }
        let mut current = self.root.try_clone().map_err(io)?;
        for c in dir.components() {
            match current.symlink_metadata(c) {
                Ok(m) if m.is_symlink() => return Err(LayerError::ThroughSymlink(name.into())),
                Ok(m) if m.is_dir() => {}
                Ok(_) if create => {
                    current.remove_file(c).map_err(io)?;
                    current.create_dir(c).map_err(io)?;
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    current.create_dir(c).map_err(io)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(e)),
            }
            current = current.open_dir(c).map_err(io)?;
        }
        self.last = Some((dir.to_path_buf(), current.try_clone().map_err(io)?));
        Ok(Some(current))
    }

    /// Forgets the cached directory (after a removal that may have taken it).
    fn forget(&mut self) {
        self.last = None;
    }
}

/// Removes `name` from `dir` if it is there, without following it if it is a symlink.
fn remove_entry(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match dir.symlink_metadata(name) {
        Ok(m) if m.is_dir() => dir.remove_dir_all(name),
        Ok(_) => dir.remove_file(name),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn extract_tar_into(reader: impl Read, root: &Dir, budget: &mut Budget) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(reader);
    let io_err = |entry: &str| {
        let entry = entry.to_string();
        move |source| LayerError::Io { entry, source }
    };
    let mut tree = Tree { root, last: None };
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
        budget.entry(&name, rel.components().count())?;
        let parent_path = rel.parent().unwrap_or(Path::new(""));
        let leaf = rel
            .file_name()
            .expect("a clean relative path ends in a name");
        let file_name = leaf.to_string_lossy();
        // Whiteouts (OCI image spec): `.wh..wh..opq` empties its directory, `.wh.x`
        // deletes `x` from the layers below. Nothing else may be named by one: `.wh.`,
        // `.wh..` and `.wh...` would name the directory itself or its parent.
        if file_name == ".wh..wh..opq" {
            if let Some(dir) = tree.dir(parent_path, false, &name)? {
                for e in dir.entries().map_err(io_err(&name))? {
                    let e = e.map_err(io_err(&name))?;
                    remove_entry(&dir, &e.file_name()).map_err(io_err(&name))?;
                }
            }
            tree.forget();
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            if matches!(hidden, "" | "." | "..") || hidden.starts_with(".wh.") {
                return Err(LayerError::BadWhiteout(name));
            }
            if let Some(dir) = tree.dir(parent_path, false, &name)? {
                remove_entry(&dir, OsStr::new(hidden)).map_err(io_err(&name))?;
            }
            tree.forget();
            continue;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mtime = entry.header().mtime().unwrap_or(0);
        let parent = tree
            .dir(parent_path, true, &name)?
            .expect("created when missing");
        if kind.is_dir() {
            match parent.symlink_metadata(leaf) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    parent.remove_file(leaf).map_err(io_err(&name))?;
                    parent.create_dir(leaf).map_err(io_err(&name))?;
                }
                Err(_) => parent.create_dir(leaf).map_err(io_err(&name))?,
            }
            // Set beneath the root (the leaf was just checked to be a directory, and
            // even a link would resolve inside the tree).
            parent
                .set_permissions(leaf, cap_std::fs::PermissionsExt::from_mode(mode | 0o700))
                .map_err(io_err(&name))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            budget.file(&name, entry.size(), root)?;
            remove_entry(&parent, leaf).map_err(io_err(&name))?;
            tree.forget();
            let mut options = cap_std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            let mut f = parent
                .open_with(leaf, &options)
                .map_err(io_err(&name))?
                .into_std();
            // The header's size is what tar reads; the cap guards against a reader
            // that yields more.
            let size = entry.size();
            let written =
                io::copy(&mut (&mut entry).take(size + 1), &mut f).map_err(io_err(&name))?;
            if written > size {
                return Err(LayerError::Limit(format!(
                    "layer entry {name:?} holds more than its header's {size} bytes"
                )));
            }
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
            remove_entry(&parent, leaf).map_err(io_err(&name))?;
            tree.forget();
            // The target is stored as written (an absolute one means the image's root
            // to runc); it is never followed here.
            parent
                .symlink_contents(&link, leaf)
                .map_err(io_err(&name))?;
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
            let source_dir = tree
                .dir(source.parent().unwrap_or(Path::new("")), false, &name)?
                .ok_or_else(|| LayerError::Io {
                    entry: name.clone(),
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("link target {} is not in the image", link.display()),
                    ),
                })?;
            let source_name = source.file_name().expect("not empty");
            match source_dir.symlink_metadata(source_name) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(LayerError::ThroughSymlink(name)),
                Err(e) => return Err(io_err(&name)(e)),
            }
            remove_entry(&parent, leaf).map_err(io_err(&name))?;
            tree.forget();
            source_dir
                .hard_link(source_name, &parent, leaf)
                .map_err(io_err(&name))?;
        } else {
            return Err(LayerError::Unsupported {
                entry: name,
                kind: format!("{kind:?}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extracts one tar into `dest` with `limits`.
    fn extract_with(tar: &[u8], dest: &Path, limits: ExtractLimits) -> Result<(), LayerError> {
        extract_stream(tar, dest, limits)
    }

    fn extract_tar(tar: &[u8], dest: &Path) -> Result<(), LayerError> {
        extract_with(tar, dest, ExtractLimits::default())
    }

    fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o777 } else { 0o644 });
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
                LayerEntry::File {
                    data: b"hi".to_vec(),
                    mode: 0o644,
                },
            ),
            (
                "usr/share/nginx/html/a/b.css".to_string(),
                LayerEntry::File {
                    data: b"x".to_vec(),
                    mode: 0o644,
                },
            ),
        ]);
        let a = write_tar(&files, 0);
        assert_eq!(a, write_tar(&files, 0));
        let dir = tempfile::tempdir().unwrap();
        extract_tar(&a, dir.path()).unwrap();
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
            let err = extract_tar(&tar, &inner).unwrap_err();
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
            annotations: skiff_spec::Labels::new(),
            platform: None,
        })
        .collect();
        let dir = tempfile::tempdir().unwrap();
        extract(&store, &layers, dir.path(), ExtractLimits::default()).unwrap();
        assert!(!dir.path().join("a").exists(), "the zstd layer's whiteout");
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"gzip");
        assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"zstd");

        let mut bad = layers[2].clone();
        bad.media_type = "application/vnd.oci.image.layer.v1.tar+lz4".into();
        let err = extract(&store, &[bad], dir.path(), ExtractLimits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tar+lz4"), "{err}");
    }

    #[test]
    fn whiteouts_delete_lower_files() {
        use tar::EntryType::*;
        let dir = tempfile::tempdir().unwrap();
        extract_tar(
            &raw_tar(&[
                ("d/a", Regular, "", b"1"),
                ("d/b", Regular, "", b"2"),
                ("e/c", Regular, "", b"3"),
            ]),
            dir.path(),
        )
        .unwrap();
        extract_tar(
            &raw_tar(&[
                ("d/.wh.a", Regular, "", b""),
                ("e/.wh..wh..opq", Regular, "", b""),
            ]),
            dir.path(),
        )
        .unwrap();
        assert!(!dir.path().join("d/a").exists());
        assert!(dir.path().join("d/b").exists());
        assert!(dir.path().join("e").is_dir() && !dir.path().join("e/c").exists());
    }

    #[test]
    fn a_directory_entry_over_a_symlink_never_changes_what_it_pointed_at() {
        use std::os::unix::fs::PermissionsExt as _;
        use tar::EntryType::*;
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
        let link = victim.display().to_string();
        let dir = tempfile::tempdir().unwrap();
        // An absolute link is legal (it means the image's own root to runc), so it is
        // stored; the directory entry after it must replace it, not chmod through it.
        extract_tar(
            &raw_tar(&[("v", Symlink, &link, b""), ("v", Directory, "", b"")]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o700,
            "the host directory kept its mode"
        );
        assert!(fs::symlink_metadata(dir.path().join("v")).unwrap().is_dir());
        // Files written "into" such a link are refused, and nothing lands on the host.
        let err = extract_tar(
            &raw_tar(&[("x", Symlink, &link, b""), ("x/evil", Regular, "", b"x")]),
            dir.path(),
        )
        .unwrap_err();
        assert!(matches!(err, LayerError::ThroughSymlink(_)), "{err}");
        assert!(!victim.join("evil").exists());
    }

    #[test]
    fn whiteouts_that_name_no_file_are_refused_and_remove_nothing() {
        use tar::EntryType::*;
        let sites = tempfile::tempdir().unwrap();
        let other = sites.path().join("other-image");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("index.html"), b"keep").unwrap();
        let tree = sites.path().join("tree");
        fs::create_dir(&tree).unwrap();
        for name in [".wh...", ".wh..", ".wh.", "d/.wh...", ".wh..wh.x"] {
            let err = extract_tar(&raw_tar(&[(name, Regular, "", b"")]), &tree).unwrap_err();
            assert!(matches!(err, LayerError::BadWhiteout(_)), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        assert_eq!(fs::read(other.join("index.html")).unwrap(), b"keep");
        assert!(tree.is_dir());
    }

    #[test]
    fn limits_stop_bombs_with_an_error_naming_the_limit() {
        use tar::EntryType::*;
        let limits = ExtractLimits {
            max_bytes: 10,
            max_entries: 3,
            max_depth: 4,
            min_free_bytes: 0,
        };
        let dir = tempfile::tempdir().unwrap();
        let err = extract_with(
            &raw_tar(&[("big", Regular, "", &[0; 11])]),
            dir.path(),
            limits,
        )
        .unwrap_err();
        assert!(err.to_string().contains("more than 10 bytes"), "{err}");
        let many = raw_tar(&[
            ("a", Regular, "", b""),
            ("b", Regular, "", b""),
            ("c", Regular, "", b""),
            ("d", Regular, "", b""),
        ]);
        let err = extract_with(&many, dir.path(), limits).unwrap_err();
        assert!(err.to_string().contains("more than 3 entries"), "{err}");
        let err = extract_with(
            &raw_tar(&[("1/2/3/4/5", Regular, "", b"")]),
            dir.path(),
            limits,
        )
        .unwrap_err();
        assert!(err.to_string().contains("5 directories deep"), "{err}");
        let full = ExtractLimits {
            min_free_bytes: u64::MAX / 2,
            ..ExtractLimits::default()
        };
        let err =
            extract_with(&raw_tar(&[("f", Regular, "", b"x")]), dir.path(), full).unwrap_err();
        assert!(err.to_string().contains("free on the node's disk"), "{err}");
    }

    #[test]
    fn a_tree_removed_during_extraction_is_not_recreated() {
        use tar::EntryType::*;
        let sites = tempfile::tempdir().unwrap();
        let tree = sites.path().join(".extract-x");
        fs::create_dir(&tree).unwrap();
        let (root, mut budget) = open_tree(&tree, ExtractLimits::default()).unwrap();
        fs::remove_dir_all(&tree).unwrap();
        let tar = raw_tar(&[("d/index.html", Regular, "", b"x")]);
        assert!(extract_tar_into(tar.as_slice(), &root, &mut budget).is_err());
        assert!(!tree.exists(), "nothing was written under the old path");
    }
}
