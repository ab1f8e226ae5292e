//! The node's images as an OCI image layout: `oci-layout`, `index.json` (one entry per
//! tag, named by `org.opencontainers.image.ref.name`), and `blobs/sha256/…`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use skiff_spec::{AppKind, Digest};

use crate::disk::Reserve;
use crate::oci::{self, Descriptor, ImageConfig, Index, Manifest, RunConfig};
use crate::{BlobStore, ImageName, StoreError};

/// Failures of the image store, naming the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No image by that name, id or digest.
    #[error("image {0} not found")]
    NotFound(String),
    /// A short id matched more than one image.
    #[error("image id {0} is ambiguous; give more digits")]
    Ambiguous(String),
    /// A document did not parse.
    #[error("{what} {digest} is not valid JSON of its kind: {message}")]
    BadDocument {
        /// Which document.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// serde's message.
        message: String,
    },
    /// The layout's index is unreadable.
    #[error("failed to {op} {path}: {message}")]
    Index {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A database file of the layout (`tags.redb`) is not one, or its pages do not
    /// hold together.
    #[error("{path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// redb's message.
        message: String,
    },
    /// The image is not something skiff can run.
    #[error("image {image}: {message}")]
    Unsupported {
        /// The image.
        image: String,
        /// Why.
        message: String,
    },
}

impl ImageError {
    /// Whether the disk was too full (see [`crate::disk`]).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, ImageError::Store(e) if e.is_disk_full())
    }
}

/// One image as `skiff images` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Manifest digest: the image id.
    pub digest: Digest,
    /// Names pointing at it.
    pub tags: Vec<String>,
    /// `http`, `wagi`, `static`, or what the manifest says.
    pub kind: String,
    /// Config + layers, in bytes.
    pub size: u64,
    /// Creation time from the config.
    pub created: String,
}

/// What an image runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runnable {
    /// A Wasm binary (the artifact's one layer).
    Wasm {
        /// `http` or `wagi`.
        kind: AppKind,
        /// The binary's blob.
        layer: Digest,
    },
    /// A Linux container image: tar layers applied in order make its root filesystem.
    Oci {
        /// Layers in order.
        layers: Vec<Descriptor>,
    },
    /// Files from tar layers, served from `site_root`.
    Static {
        /// Layers in order.
        layers: Vec<Descriptor>,
        /// The directory served.
        site_root: String,
    },
}

/// An image's id, what it runs as, and its runtime settings.
#[derive(Clone, Debug)]
pub struct ImageSummary {
    /// Manifest digest.
    pub digest: Digest,
    /// Config + layers in bytes.
    pub size: u64,
    /// What it runs as.
    pub runnable: Runnable,
    /// Env, ports, labels, cmd.
    pub run: RunConfig,
}

/// The node's image store.
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobStore,
    /// The tags, durable in `tags.redb` and read from memory. Its lock serialises
    /// tag changes and garbage collection.
    tags: Mutex<Tags>,
    /// `tags.redb`; `None` after an I/O error, until it is opened again. Written only
    /// under the lock of `tags`.
    db: Mutex<Option<Database>>,
    open_db: Opener,
    /// What writes must leave free on the disk.
    reserve: Reserve,
}

/// How many times a tag write is tried, the database opened again before each retry:
/// redb refuses every write after one I/O error (a full disk) until it is reopened.
const TAG_ATTEMPTS: usize = 3;

/// What a change to the tags is called in a [`DiskFull`](crate::disk::DiskFull).
const STATE_WRITE: &str = "a change to the node's state";

/// Opens (or creates) the tags database, again after an I/O error.
type Opener = Box<dyn Fn() -> Result<Database, redb::Error> + Send + Sync>;

/// Opens `tags.redb` at `path`.
fn tags_file(path: PathBuf) -> Opener {
    Box::new(move || {
        // Tags are read from memory: redb's page cache (1 GiB by default) stays small.
        with_table(redb::Builder::new().set_cache_size(1 << 20).create(&path)?)
    })
}

/// `db` with the tags table made.
fn with_table(db: Database) -> Result<Database, redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(TAGS)?;
    txn.commit()?;
    Ok(db)
}

/// The table of tags: name -> manifest descriptor (JSON).
const TAGS: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("tags/v1");

/// The tags in memory, both ways. A tag's descriptor is in `tags.redb`; what a lookup
/// needs of it is the digest (a node holds a tag per app: thousands).
#[derive(Default)]
struct Tags {
    by_name: BTreeMap<String, Digest>,
    by_digest: BTreeMap<Digest, BTreeSet<String>>,
    /// Built the first time a collection removes a manifest.
    refs: Option<Refs>,
}

impl Tags {
    fn insert(&mut self, name: String, digest: Digest) {
        self.by_digest
            .entry(digest)
            .or_default()
            .insert(name.clone());
        if let Some(old) = self.by_name.insert(name.clone(), digest) {
            self.forget(&name, old);
        }
    }

    fn remove(&mut self, name: &str) -> Option<Digest> {
        let old = self.by_name.remove(name)?;
        self.forget(name, old);
        Some(old)
    }

    /// Drops `name` from `digest`'s names (unless it still names it).
    fn forget(&mut self, name: &str, digest: Digest) {
        if self.by_name.get(name) == Some(&digest) {
            return;
        }
        if let Some(names) = self.by_digest.get_mut(&digest) {
            names.remove(name);
            if names.is_empty() {
                self.by_digest.remove(&digest);
            }
        }
    }
}

/// Which stored manifests refer to each blob: built once from the store, then kept up
/// to date from the blobs committed since (the blob store records them), so removing
/// one image costs that image, not the store. Manifests never change (a digest names
/// its bytes), so what one refers to is read once.
#[derive(Default)]
struct Refs {
    /// Manifests counted, with the blobs each refers to.
    counted: HashMap<Digest, Vec<Digest>>,
    /// Counted manifests referring to each blob.
    parents: HashMap<Digest, u32>,
}

impl Refs {
    fn add(&mut self, manifest: Digest, m: &Manifest) {
        if self.counted.contains_key(&manifest) {
            return;
        }
        let children: Vec<Digest> = std::iter::once(m.config.digest)
            .chain(m.layers.iter().map(|l| l.digest))
            .collect();
        for c in &children {
            *self.parents.entry(*c).or_default() += 1;
        }
        self.counted.insert(manifest, children);
    }

    /// Forgets `manifest`; returns the blobs no counted manifest refers to any more.
    fn remove(&mut self, manifest: &Digest) -> Vec<Digest> {
        let mut orphans = Vec::new();
        for c in self.counted.remove(manifest).unwrap_or_default() {
            if let Some(n) = self.parents.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    self.parents.remove(&c);
                    orphans.push(c);
                }
            }
        }
        orphans
    }
}

/// Largest blob read as a possible manifest when the store is first counted.
const MAX_MANIFEST: u64 = 1 << 20;

impl ImageStore {
    /// Opens (or creates) the layout at `root`. Tags of a store written before tags
    /// moved to `tags.redb` (its `index.json`) are carried over once.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Self::open_reserving(root, Reserve::default())
    }

    /// [`ImageStore::open`], refusing blobs and tag changes that would leave less than
    /// `reserve` free on the disk.
    pub fn open_reserving(root: &Path, reserve: Reserve) -> Result<Self, ImageError> {
        Self::open_with(root, reserve, tags_file(root.join("tags.redb")))
    }

    fn open_with(root: &Path, reserve: Reserve, open_db: Opener) -> Result<Self, ImageError> {
        let blobs = BlobStore::open(root)?.reserving(reserve.bulk);
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(
                &layout,
                format!("{{\"imageLayoutVersion\":\"{}\"}}", oci::LAYOUT_VERSION).as_bytes(),
            )?;
        }
        let db_path = root.join("tags.redb");
        let db_err = |op: &'static str| {
            let path = db_path.clone();
            move |e: redb::Error| {
                let message = e.to_string();
                // Not a database, or pages that do not hold together: the node's start
                // says what to do about that.
                let corrupt = match &e {
                    redb::Error::Corrupted(_) => true,
                    redb::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
                    _ => false,
                };
                if corrupt {
                    ImageError::Corrupt { path, message }
                } else {
                    ImageError::Index { op, path, message }
                }
            }
        };
        let db = open_db().map_err(db_err("open"))?;
        let mut tags = Tags::default();
        {
            let txn = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
            let table = txn.open_table(TAGS).map_err(|e| db_err("read")(e.into()))?;
            for row in table.iter().map_err(|e| db_err("read")(e.into()))? {
                let (name, value) = row.map_err(|e| db_err("read")(e.into()))?;
                let entry: Descriptor =
                    serde_json::from_slice(value.value()).map_err(|e| ImageError::Index {
                        op: "parse a tag of",
                        path: db_path.clone(),
                        message: e.to_string(),
                    })?;
                tags.insert(name.value().to_string(), entry.digest);
            }
        }
        let store = Self {
            root: root.to_path_buf(),
            blobs,
            tags: Mutex::new(Tags::default()),
            db: Mutex::new(Some(db)),
            open_db,
            reserve,
        };
        let index_path = store.root.join("index.json");
        let listed: Option<Vec<Descriptor>> = fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            .map(|i| i.manifests);
        let rewrite_index = listed.as_ref().is_none_or(|m| !m.is_empty());
        let legacy = listed.unwrap_or_default();
        if tags.by_name.is_empty() && !legacy.is_empty() {
            let db = store.db.lock().unwrap_or_else(|e| e.into_inner());
            let txn = db
                .as_ref()
                .expect("opened above")
                .begin_write()
                .map_err(|e| db_err("write")(e.into()))?;
            {
                let mut table = txn
                    .open_table(TAGS)
                    .map_err(|e| db_err("write")(e.into()))?;
                for entry in legacy {
                    if let Some(name) = entry.annotations.get(oci::REF_NAME).cloned() {
                        let bytes = serde_json::to_vec(&entry).expect("descriptors serialize");
                        table
                            .insert(name.as_str(), bytes.as_slice())
                            .map_err(|e| db_err("write")(e.into()))?;
                        tags.insert(name.into(), entry.digest);
                    }
                }
            }
            txn.commit().map_err(|e| db_err("write")(e.into()))?;
        }
        if rewrite_index {
            // The layout keeps a valid index; the tags are in `tags.redb`.
            let empty = Index {
                schema_version: 2,
                media_type: Some(oci::INDEX_V1.into()),
                manifests: vec![],
            };
            write_atomic(
                &index_path,
                &serde_json::to_vec(&empty).expect("index serializes"),
            )?;
        }
        *store.lock() = tags;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tags> {
        self.tags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes (`Some`) or removes (`None`) the tag `name`, durably. A new tag is refused
    /// while the disk is below the state reserve (removing one is how images, and so
    /// space, are freed); after an I/O error (a full disk), `tags.redb` is opened again
    /// and the write tried again, up to [`TAG_ATTEMPTS`] times, so the store heals once
    /// space is back instead of refusing every write until a restart.
    fn write_tag(&self, name: &str, entry: Option<&Descriptor>) -> Result<(), ImageError> {
        if entry.is_some() {
            crate::disk::check(&self.root, self.reserve.state, 0, STATE_WRITE)
                .map_err(StoreError::from)?;
        }
        let path = self.root.join("tags.redb");
        let bytes = entry.map(|e| serde_json::to_vec(e).expect("descriptors serialize"));
        let write = |db: &Database| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(TAGS)?;
                match &bytes {
                    Some(bytes) => {
                        table.insert(name, bytes.as_slice())?;
                    }
                    None => {
                        table.remove(name)?;
                    }
                }
            }
            Ok(txn.commit()?)
        };
        let mut db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let mut failed = redb::Error::PreviousIo;
        for _ in 0..TAG_ATTEMPTS {
            if db.is_none() {
                match (self.open_db)() {
                    Ok(fresh) => *db = Some(fresh),
                    Err(e) => {
                        failed = e;
                        continue;
                    }
                }
            }
            match write(db.as_ref().expect("opened above")) {
                Ok(()) => return Ok(()),
                Err(e @ (redb::Error::Io(_) | redb::Error::PreviousIo)) => {
                    tracing::warn!(path = %path.display(), error = %e, "the tags database failed on I/O; opening it again");
                    // The old handle (and its file lock) must be gone before reopening.
                    *db = None;
                    failed = e;
                }
                Err(e) => {
                    failed = e;
                    break;
                }
            }
        }
        Err(match failed {
            redb::Error::Io(e) if crate::disk::is_no_space(&e) => StoreError::from(
                crate::disk::full(&self.root, self.reserve.state, STATE_WRITE),
            )
            .into(),
            e => ImageError::Index {
                op: "write",
                path,
                message: e.to_string(),
            },
        })
    }

    /// The content-addressed blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Stores `value` as a JSON blob and describes it.
    pub fn put_json<T: Serialize>(
        &self,
        media_type: &str,
        value: &T,
    ) -> Result<Descriptor, ImageError> {
        let bytes = serde_json::to_vec(value).expect("documents serialize");
        let digest = self.blobs.put(&bytes)?;
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            annotations: skiff_spec::Labels::new(),
            platform: None,
        })
    }

    /// Writes config and manifest for `layers` (already stored) and returns the manifest
    /// descriptor (its digest is the image id).
    pub fn write_image(
        &self,
        config_media_type: &str,
        config: &ImageConfig,
        layers: Vec<Descriptor>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Descriptor, ImageError> {
        let config = self.put_json(config_media_type, config)?;
        let artifact_type =
            (config_media_type == oci::WASM_CONFIG).then(|| oci::WASM_CONFIG.to_string());
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MANIFEST_V1.into()),
            artifact_type,
            config,
            layers,
            annotations,
        };
        self.put_json(oci::MANIFEST_V1, &manifest)
    }

    /// Makes a CNCF Wasm artifact of a stored binary (config `application/vnd.wasm.config.v0+json`,
    /// one `application/wasm` layer) and returns its manifest descriptor.
    pub fn add_wasm(
        &self,
        layer: Digest,
        size: u64,
        kind: AppKind,
        run: RunConfig,
        created: &str,
    ) -> Result<Descriptor, ImageError> {
        let os = if kind == AppKind::Wagi {
            "wasip1"
        } else {
            "wasip2"
        };
        let config = ImageConfig {
            created: created.to_string(),
            architecture: "wasm".into(),
            os: os.into(),
            config: run,
            layer_digests: vec![layer],
            rootfs: None,
            site_root: None,
        };
        let layer = Descriptor {
            media_type: oci::WASM_LAYER.into(),
            digest: layer,
            size,
            annotations: skiff_spec::Labels::new(),
            platform: None,
        };
        let annotations = BTreeMap::from([(oci::KIND_ANNOTATION.to_string(), kind.to_string())]);
        self.write_image(oci::WASM_CONFIG, &config, vec![layer], annotations)
    }

    /// What the image `digest` runs as.
    pub fn summary(&self, digest: &Digest) -> Result<ImageSummary, ImageError> {
        let manifest = self.manifest(digest)?;
        let config = self.config(&manifest)?;
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let unsupported = |message: String| ImageError::Unsupported {
            image: digest.to_string(),
            message,
        };
        let wasm_layer = manifest
            .layers
            .iter()
            .find(|l| l.media_type == oci::WASM_LAYER);
        config.site_root_path().map_err(unsupported)?;
        let runnable = if let Some(root) = &config.site_root {
            Runnable::Static {
                layers: manifest.layers.clone(),
                site_root: root.clone(),
            }
        } else if let Some(layer) = wasm_layer {
            if manifest.layers.len() != 1 {
                return Err(unsupported(format!(
                    "a Wasm artifact has one layer, this one has {}",
                    manifest.layers.len()
                )));
            }
            let kind = match manifest
                .annotations
                .get(oci::KIND_ANNOTATION)
                .map(String::as_str)
            {
                Some("http") => AppKind::Http,
                Some("wagi") => AppKind::Wagi,
                // Pushed by another tool: look at the binary itself.
                _ => crate::detect_kind(&self.blobs.read_verified(&layer.digest)?)
                    .map_err(|e| unsupported(e.to_string()))?,
            };
            Runnable::Wasm {
                kind,
                layer: layer.digest,
            }
        } else if config.os == "linux" {
            if config.architecture != "amd64" {
                return Err(unsupported(format!(
                    "a linux/{} image; this node runs linux/amd64",
                    config.architecture
                )));
            }
            Runnable::Oci {
                layers: manifest.layers.clone(),
            }
        } else {
            return Err(unsupported(format!(
                "config {} with layers [{}] is neither a Wasm artifact nor a static site",
                manifest.config.media_type,
                manifest
                    .layers
                    .iter()
                    .map(|l| l.media_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        Ok(ImageSummary {
            digest: *digest,
            size,
            runnable,
            run: config.config,
        })
    }

    /// Reads and parses a manifest.
    pub fn manifest(&self, digest: &Digest) -> Result<Manifest, ImageError> {
        let bytes = self.blobs.read_verified(digest).map_err(|e| match e {
            StoreError::NotFound(d) => ImageError::NotFound(d.to_string()),
            other => other.into(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::BadDocument {
            what: "manifest",
            digest: *digest,
            message: e.to_string(),
        })
    }

    /// Reads and parses an image's config.
    pub fn config(&self, manifest: &Manifest) -> Result<ImageConfig, ImageError> {
        let digest = manifest.config.digest;
        let bytes = self.blobs.read_verified(&digest)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::BadDocument {
            what: "config",
            digest,
            message: e.to_string(),
        })
    }

    /// Points `name` at `manifest` (replacing what it named before); returns the image
    /// it named before, if another.
    pub fn tag(
        &self,
        name: &ImageName,
        manifest: &Descriptor,
    ) -> Result<Option<Digest>, ImageError> {
        let mut tags = self.lock();
        let name = name.to_string();
        let previous = tags
            .by_name
            .get(&name)
            .copied()
            .filter(|d| *d != manifest.digest);
        let mut entry = manifest.clone();
        entry
            .annotations
            .insert(oci::REF_NAME.into(), name.as_str().into());
        self.write_tag(&name, Some(&entry))?;
        tags.insert(name, entry.digest);
        Ok(previous)
    }

    /// Removes the tag `name`; returns the image it named.
    pub fn untag(&self, name: &ImageName) -> Result<Digest, ImageError> {
        let mut tags = self.lock();
        let name = name.to_string();
        if !tags.by_name.contains_key(&name) {
            return Err(ImageError::NotFound(name));
        }
        self.write_tag(&name, None)?;
        Ok(tags.remove(&name).expect("checked above"))
    }

    /// Resolves a name (`app`, `app:tag`), a full digest or an id prefix (4+ hex
    /// digits) to an image.
    pub fn resolve(&self, reference: &str) -> Result<Digest, ImageError> {
        if let Ok(d) = reference.parse::<Digest>() {
            return if self.blobs.contains(&d) {
                Ok(d)
            } else {
                Err(ImageError::NotFound(reference.into()))
            };
        }
        let tags = self.lock();
        if let Ok(name) = ImageName::parse(reference)
            && let Some(d) = tags.by_name.get(&name.to_string())
        {
            return Ok(*d);
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<Digest> = tags
                .by_digest
                .keys()
                .filter(|d| d.hex().starts_with(prefix))
                .take(2)
                .copied()
                .collect();
            return match matches[..] {
                [] => Err(ImageError::NotFound(reference.into())),
                [one] => Ok(one),
                _ => Err(ImageError::Ambiguous(reference.into())),
            };
        }
        Err(ImageError::NotFound(reference.into()))
    }

    /// Every tagged image (untagged ones are garbage and collected).
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let by_digest: Vec<(Digest, Vec<String>)> = self
            .lock()
            .by_digest
            .iter()
            .map(|(d, names)| (*d, names.iter().cloned().collect()))
            .collect();
        let mut out = Vec::new();
        for (digest, tags) in by_digest {
            let manifest = self.manifest(&digest)?;
            let created = self
                .config(&manifest)
                .map(|c| c.created)
                .unwrap_or_default();
            let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
            let kind = match manifest.annotations.get(oci::KIND_ANNOTATION) {
                Some(k) => k.clone(),
                // Made by another tool: say what it runs as, if anything.
                None => match self.summary(&digest).map(|s| s.runnable) {
                    Ok(Runnable::Wasm { kind, .. }) => kind.to_string(),
                    Ok(Runnable::Static { .. }) => "static".into(),
                    Ok(Runnable::Oci { .. }) => "oci".into(),
                    Err(_) => "unknown".into(),
                },
            };
            out.push(ImageInfo {
                digest,
                tags,
                kind,
                size,
                created,
            });
        }
        Ok(out)
    }

    /// Names pointing at `digest`.
    pub fn tags_of(&self, digest: &Digest) -> Result<Vec<String>, ImageError> {
        Ok(self
            .lock()
            .by_digest
            .get(digest)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// Deletes every blob that no tagged image and no image in `keep` refers to.
    /// Returns how many blobs were removed. Reads every image: for a start, and for
    /// the image verbs (`rmi`); a deploy collects [`Self::collect_images`].
    pub fn collect_garbage(&self, keep: &BTreeSet<Digest>) -> Result<usize, ImageError> {
        let mut tags = self.lock();
        let mut live = BTreeSet::new();
        for digest in tags.by_digest.keys().chain(keep.iter()).copied() {
            live.insert(digest);
            if let Ok(m) = self.manifest(&digest) {
                live.insert(m.config.digest);
                live.extend(m.layers.iter().map(|l| l.digest));
            }
        }
        let mut removed = 0;
        for digest in self.blobs.list()? {
            if !live.contains(&digest) {
                self.blobs.remove(&digest)?;
                removed += 1;
            }
        }
        // Counted again from the store the next time they are needed.
        tags.refs = None;
        self.blobs.record(false);
        Ok(removed)
    }

    /// Deletes the images `candidates` (manifest digests) that no tag names and `used`
    /// does not claim, with the config and layers no other stored image refers to.
    /// Returns the blobs removed. Costs the candidates, not the store: what each
    /// manifest refers to is counted once (the first time, by reading the store's
    /// manifests), then kept up to date from the blobs committed since.
    pub fn collect_images(
        &self,
        candidates: &BTreeSet<Digest>,
        used: impl Fn(&Digest) -> bool,
    ) -> Result<Vec<Digest>, ImageError> {
        let mut tags = self.lock();
        let garbage: Vec<Digest> = candidates
            .iter()
            .filter(|d| !tags.by_digest.contains_key(d) && self.blobs.contains(d) && !used(d))
            .copied()
            .collect();
        if garbage.is_empty() {
            return Ok(Vec::new());
        }
        let refs = match tags.refs.take() {
            Some(mut refs) => {
                for d in self.blobs.recorded() {
                    if let Ok(m) = self.manifest_if_small(&d) {
                        refs.add(d, &m);
                    }
                }
                refs
            }
            None => {
                // Blobs committed while the store is read are recorded, so none is
                // missed; one counted twice is counted once.
                self.blobs.record(true);
                let mut refs = Refs::default();
                for d in self.blobs.list()? {
                    if let Ok(m) = self.manifest_if_small(&d) {
                        refs.add(d, &m);
                    }
                }
                for d in self.blobs.recorded() {
                    if let Ok(m) = self.manifest_if_small(&d) {
                        refs.add(d, &m);
                    }
                }
                refs
            }
        };
        let Tags {
            by_digest,
            refs: slot,
            ..
        } = &mut *tags;
        let refs = slot.insert(refs);
        let mut removed = Vec::new();
        for manifest in garbage {
            let orphans = refs.remove(&manifest);
            self.blobs.remove(&manifest)?;
            removed.push(manifest);
            for blob in orphans {
                // A blob that is itself an image someone holds stays.
                if by_digest.contains_key(&blob) || refs.counted.contains_key(&blob) || used(&blob)
                {
                    continue;
                }
                self.blobs.remove(&blob)?;
                removed.push(blob);
            }
        }
        Ok(removed)
    }

    /// The manifest `digest`, if it is a small blob that reads as one.
    fn manifest_if_small(&self, digest: &Digest) -> Result<Manifest, ImageError> {
        if self.blobs.size(digest)? > MAX_MANIFEST {
            return Err(ImageError::NotFound(digest.to_string()));
        }
        self.manifest(digest)
    }
}

/// Writes a small file atomically: temp file, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = |op: &'static str| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ImageError::Index {
            op,
            path,
            message: e.to_string(),
        }
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err("create a temp file for"))?;
    tmp.write_all(bytes).map_err(err("write"))?;
    tmp.as_file().sync_all().map_err(err("fsync"))?;
    tmp.persist(path)
        .map_err(|e| err("rename into place")(e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync the directory of"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            created: "1970-01-01T00:00:00Z".into(),
            architecture: "wasm".into(),
            os: "wasip2".into(),
            config: Default::default(),
            layer_digests: vec![],
            rootfs: None,
            site_root: None,
        }
    }

    #[test]
    fn tags_resolve_and_garbage_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert!(dir.path().join("oci-layout").is_file());
        let layer = store.blobs().put(b"\0asm fake").unwrap();
        let layer = Descriptor {
            media_type: oci::WASM_LAYER.into(),
            digest: layer,
            size: 9,
            annotations: skiff_spec::Labels::new(),
            platform: None,
        };
        let image = store
            .write_image(
                oci::WASM_CONFIG,
                &config(),
                vec![layer.clone()],
                BTreeMap::new(),
            )
            .unwrap();
        let name = ImageName::parse("hello").unwrap();
        assert_eq!(store.tag(&name, &image).unwrap(), None);
        assert_eq!(store.resolve("hello").unwrap(), image.digest);
        assert_eq!(store.resolve("hello:latest").unwrap(), image.digest);
        assert_eq!(
            store.resolve(&image.digest.hex()[..12]).unwrap(),
            image.digest
        );
        assert_eq!(
            store.resolve(&image.digest.to_string()).unwrap(),
            image.digest
        );
        assert!(matches!(
            store.resolve("nope"),
            Err(ImageError::NotFound(_))
        ));
        let list = store.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].tags, ["hello:latest"]);

        assert_eq!(
            store.collect_garbage(&BTreeSet::new()).unwrap(),
            0,
            "tagged images are live"
        );
        store.untag(&name).unwrap();
        assert_eq!(
            store
                .collect_garbage(&BTreeSet::from([image.digest]))
                .unwrap(),
            0,
            "kept images are live"
        );
        assert_eq!(
            store.collect_garbage(&BTreeSet::new()).unwrap(),
            3,
            "manifest, config and layer go"
        );
        assert!(!store.blobs().contains(&layer.digest));
    }

    /// `bytes` stored as a Wasm layer.
    fn wasm_layer(store: &ImageStore, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: oci::WASM_LAYER.into(),
            digest: store.blobs().put(bytes).unwrap(),
            size: bytes.len() as u64,
            annotations: skiff_spec::Labels::new(),
            platform: None,
        }
    }

    /// An image of the shared layer `layer` whose config differs by `created`.
    fn image_of(store: &ImageStore, layer: &Descriptor, created: &str) -> Descriptor {
        let mut c = config();
        c.created = created.into();
        store
            .write_image(oci::WASM_CONFIG, &c, vec![layer.clone()], BTreeMap::new())
            .unwrap()
    }

    #[test]
    fn collecting_images_removes_only_what_no_other_image_refers_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let layer = wasm_layer(&store, b"\0asm shared");
        let one = image_of(&store, &layer, "2026-01-01T00:00:01Z");
        let two = image_of(&store, &layer, "2026-01-01T00:00:02Z");
        let (a, b) = (
            ImageName::parse("a").unwrap(),
            ImageName::parse("b").unwrap(),
        );
        store.tag(&a, &one).unwrap();
        store.tag(&b, &two).unwrap();
        let candidates = BTreeSet::from([one.digest, two.digest]);
        assert!(
            store
                .collect_images(&candidates, |_| false)
                .unwrap()
                .is_empty(),
            "tagged images stay"
        );
        store.untag(&a).unwrap();
        assert!(
            store
                .collect_images(&candidates, |d| *d == one.digest)
                .unwrap()
                .is_empty(),
            "images in use stay"
        );
        let config_one = store.manifest(&one.digest).unwrap().config.digest;
        let removed = store.collect_images(&candidates, |_| false).unwrap();
        assert_eq!(removed, [one.digest, config_one], "the shared layer stays");
        assert!(store.blobs().contains(&layer.digest));
        // An image written after the counts were made is counted too.
        let three = image_of(&store, &layer, "2026-01-01T00:00:03Z");
        store.tag(&a, &three).unwrap();
        store.untag(&b).unwrap();
        let removed = store.collect_images(&candidates, |_| false).unwrap();
        assert_eq!(
            removed.len(),
            2,
            "manifest and config of the second: {removed:?}"
        );
        assert!(
            store.blobs().contains(&layer.digest),
            "the third still needs it"
        );
        store.untag(&a).unwrap();
        let removed = store
            .collect_images(&BTreeSet::from([three.digest]), |_| false)
            .unwrap();
        assert_eq!(removed.len(), 3, "the last image takes the layer with it");
        assert!(store.blobs().list().unwrap().is_empty());
    }

    #[test]
    fn tags_survive_reopening_and_an_old_index_is_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let layer = {
            let store = ImageStore::open(dir.path()).unwrap();
            let layer = wasm_layer(&store, b"\0asm kept");
            let image = image_of(&store, &layer, "2026-01-01T00:00:00Z");
            store
                .tag(&ImageName::parse("kept").unwrap(), &image)
                .unwrap();
            image
        };
        let store = ImageStore::open(dir.path()).unwrap();
        assert_eq!(store.resolve("kept").unwrap(), layer.digest);
        drop(store);

        // A store whose tags are in index.json, as stores were before tags.redb.
        let old = tempfile::tempdir().unwrap();
        let image = {
            let store = ImageStore::open(old.path()).unwrap();
            let layer = wasm_layer(&store, b"\0asm old");
            image_of(&store, &layer, "2026-01-01T00:00:00Z")
        };
        std::fs::remove_file(old.path().join("tags.redb")).unwrap();
        let mut entry = image.clone();
        entry
            .annotations
            .insert(oci::REF_NAME.into(), "old:v1".into());
        let index = Index {
            schema_version: 2,
            media_type: Some(oci::INDEX_V1.into()),
            manifests: vec![entry],
        };
        std::fs::write(
            old.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        let store = ImageStore::open(old.path()).unwrap();
        assert_eq!(store.resolve("old:v1").unwrap(), image.digest);
        assert_eq!(store.tags_of(&image.digest).unwrap(), ["old:v1"]);
        let rewritten: Index =
            serde_json::from_slice(&std::fs::read(old.path().join("index.json")).unwrap()).unwrap();
        assert!(
            rewritten.manifests.is_empty(),
            "the tags live in tags.redb now"
        );
    }

    #[test]
    fn the_tags_heal_once_the_disk_has_room_again() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let fail = std::sync::Arc::new(AtomicBool::new(false));
        let path = dir.path().join("tags.redb");
        let failing = fail.clone();
        let opener: Opener = Box::new(move || {
            let backend = crate::disk::FlakyDisk::open(&path, failing.clone())?;
            with_table(Database::builder().create_with_backend(backend)?)
        });
        let store = ImageStore::open_with(dir.path(), Reserve::default(), opener).unwrap();
        let layer = wasm_layer(&store, b"\0asm tagged");
        let image = image_of(&store, &layer, "2026-01-01T00:00:00Z");
        let name = |n: &str| ImageName::parse(n).unwrap();
        store.tag(&name("before"), &image).unwrap();

        // The disk fills: the write fails as a full disk's, and is not applied.
        fail.store(true, Ordering::SeqCst);
        let refused = store.tag(&name("refused"), &image).unwrap_err();
        assert!(refused.is_disk_full(), "{refused}");
        assert!(
            refused.to_string().contains("insufficient storage"),
            "{refused}"
        );
        assert!(matches!(
            store.resolve("refused"),
            Err(ImageError::NotFound(_))
        ));

        // Space is back: the next write reopens the database instead of answering
        // redb's "previous I/O error" for ever.
        fail.store(false, Ordering::SeqCst);
        store.tag(&name("after"), &image).unwrap();
        store.untag(&name("before")).unwrap();
        drop(store);
        let store = ImageStore::open(dir.path()).unwrap();
        assert_eq!(store.tags_of(&image.digest).unwrap(), ["after:latest"]);
    }

    #[test]
    fn writes_that_would_eat_the_disk_reserve_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = {
            let store = ImageStore::open(dir.path()).unwrap();
            let layer = wasm_layer(&store, b"\0asm reserved");
            image_of(&store, &layer, "2026-01-01T00:00:00Z")
        };
        let all = crate::disk::free_bytes(dir.path()).unwrap() + (1 << 40);
        let store = ImageStore::open_reserving(
            dir.path(),
            Reserve {
                bulk: all,
                state: all,
            },
        )
        .unwrap();
        let e = store
            .tag(&ImageName::parse("full").unwrap(), &image)
            .unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert!(
            e.to_string().contains(&dir.path().display().to_string()),
            "{e}"
        );
        assert!(matches!(
            store.resolve("full"),
            Err(ImageError::NotFound(_))
        ));
        let e = store.blobs().writer(1 << 20).unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert!(e.to_string().contains("image data must leave"), "{e}");
    }
}
