//! The node's images as an OCI image layout: `oci-layout`, `index.json` (one entry per
//! tag, named by `org.opencontainers.image.ref.name`), and `blobs/sha256/…`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use skiff_spec::{AppKind, Digest};

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
    /// The image is not something skiff can run.
    #[error("image {image}: {message}")]
    Unsupported {
        /// The image.
        image: String,
        /// Why.
        message: String,
    },
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
    /// Serialises read-modify-write of `index.json`.
    index: Mutex<()>,
}

impl ImageStore {
    /// Opens (or creates) the layout at `root`.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let blobs = BlobStore::open(root)?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(
                &layout,
                format!("{{\"imageLayoutVersion\":\"{}\"}}", oci::LAYOUT_VERSION).as_bytes(),
            )?;
        }
        let store = Self {
            root: root.to_path_buf(),
            blobs,
            index: Mutex::new(()),
        };
        if !store.index_path().exists() {
            store.write_index(&Index {
                schema_version: 2,
                media_type: Some(oci::INDEX_V1.into()),
                manifests: vec![],
            })?;
        }
        Ok(store)
    }

    /// The content-addressed blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The layout's index.
    pub fn index(&self) -> Result<Index, ImageError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(|e| ImageError::Index {
            op: "read",
            path: path.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Index {
            op: "parse",
            path,
            message: e.to_string(),
        })
    }

    fn write_index(&self, index: &Index) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec(index).expect("index serializes");
        write_atomic(&self.index_path(), &bytes)
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
            annotations: BTreeMap::new(),
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
            annotations: BTreeMap::new(),
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
        let _guard = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = self.index()?;
        let name = name.to_string();
        let mut previous = None;
        index.manifests.retain(|d| {
            let same = d.annotations.get(oci::REF_NAME) == Some(&name);
            if same && d.digest != manifest.digest {
                previous = Some(d.digest);
            }
            !same
        });
        let mut entry = manifest.clone();
        entry.annotations.insert(oci::REF_NAME.into(), name);
        index.manifests.push(entry);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(oci::REF_NAME)
                .cmp(&b.annotations.get(oci::REF_NAME))
        });
        self.write_index(&index)?;
        Ok(previous)
    }

    /// Removes the tag `name`; returns the image it named.
    pub fn untag(&self, name: &ImageName) -> Result<Digest, ImageError> {
        let _guard = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut index = self.index()?;
        let name_s = name.to_string();
        let pos = index
            .manifests
            .iter()
            .position(|d| d.annotations.get(oci::REF_NAME) == Some(&name_s))
            .ok_or_else(|| ImageError::NotFound(name_s.clone()))?;
        let removed = index.manifests.remove(pos);
        self.write_index(&index)?;
        Ok(removed.digest)
    }

    /// Resolves a name (`app`, `app:tag`), a full digest or an id prefix (12+ hex
    /// digits) to an image.
    pub fn resolve(&self, reference: &str) -> Result<Digest, ImageError> {
        if let Ok(d) = reference.parse::<Digest>() {
            return if self.blobs.contains(&d) {
                Ok(d)
            } else {
                Err(ImageError::NotFound(reference.into()))
            };
        }
        let index = self.index()?;
        if let Ok(name) = ImageName::parse(reference) {
            let name = name.to_string();
            if let Some(d) = index
                .manifests
                .iter()
                .find(|d| d.annotations.get(oci::REF_NAME) == Some(&name))
            {
                return Ok(d.digest);
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: BTreeSet<Digest> = index
                .manifests
                .iter()
                .map(|d| d.digest)
                .filter(|d| d.hex().starts_with(prefix))
                .collect();
            return match matches.len() {
                0 => Err(ImageError::NotFound(reference.into())),
                1 => Ok(*matches.first().expect("one")),
                _ => Err(ImageError::Ambiguous(reference.into())),
            };
        }
        Err(ImageError::NotFound(reference.into()))
    }

    /// Every tagged image (untagged ones are garbage and collected).
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let index = self.index()?;
        let mut by_digest: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for d in &index.manifests {
            by_digest
                .entry(d.digest)
                .or_default()
                .extend(d.annotations.get(oci::REF_NAME).cloned());
        }
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
            .index()?
            .manifests
            .iter()
            .filter(|d| d.digest == *digest)
            .filter_map(|d| d.annotations.get(oci::REF_NAME).cloned())
            .collect())
    }

    /// Deletes every blob that no tagged image and no image in `keep` refers to.
    /// Returns how many blobs were removed.
    pub fn collect_garbage(&self, keep: &BTreeSet<Digest>) -> Result<usize, ImageError> {
        let _guard = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let index = self.index()?;
        let mut live = BTreeSet::new();
        for digest in index
            .manifests
            .iter()
            .map(|d| d.digest)
            .chain(keep.iter().copied())
        {
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
        Ok(removed)
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
            annotations: BTreeMap::new(),
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
}
