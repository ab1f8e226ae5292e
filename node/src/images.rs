//! The node's images as a service: names resolved, images made ready to run (compiled,
//! extracted), uploads validated once, copies to and from peers, and garbage collection.
//!
//! Everything slow (reading blobs, extracting, compiling) runs off the executor or in
//! the compile worker; everything here is safe to call from any API handler. What holds
//! an image (Deployments, pods, containers) is not known here: collection is told.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use skiff_image::layer::ExtractLimits;
use skiff_image::oci::{Descriptor, RunConfig};
use skiff_image::{ImageError, ImageStore, ImageSummary, Runnable};
use skiff_runtime::{Compiled, Runtime, StaticSite};
use skiff_spec::{AppKind, AppName, AppSpec, DeployParams, Digest, parse_bytes, parse_duration};
use tracing::{info, warn};

use crate::error::AppError;
use crate::metrics::Metrics;

mod peers;

pub(crate) use peers::REPLICA_HEADER;

/// An image made ready to run: compiled code, an extracted site, or a Linux image's
/// extracted tree.
pub(crate) enum Prepared {
    Wasm(Arc<Compiled>),
    Static {
        tree: PathBuf,
        site_root: PathBuf,
        tag: String,
    },
    Oci {
        root: PathBuf,
    },
}

/// Where trees being extracted live until they are complete (the prefix marks them for
/// garbage collection to leave alone, and for the next start to sweep).
const EXTRACTING: &str = ".extract-";

/// Scratch directories in the data dir: a Docker API build's context, a pull's layout.
pub(crate) const BUILD_SCRATCH: &str = ".build-";
pub(crate) const PULL_SCRATCH: &str = ".pull-";

/// Where and how images are kept and copied.
pub(crate) struct Settings {
    /// Directory for extracted trees (static sites, Linux images).
    pub(crate) sites: PathBuf,
    /// The node's data dir (build and pull scratch).
    pub(crate) data: PathBuf,
    /// Bounds on extracting an image.
    pub(crate) extract: ExtractLimits,
    /// What this node sees of the cluster (the peers to copy with).
    pub(crate) view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// This node's TLS client for other nodes (copies present its certificate).
    pub(crate) peer_tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// The largest image archive pulled from a peer.
    pub(crate) pull_cap: u64,
}

/// The node's images.
pub(crate) struct Images {
    store: Arc<ImageStore>,
    runtime: Runtime,
    metrics: Arc<Metrics>,
    /// Extracted trees, by image digest.
    sites: PathBuf,
    extract: ExtractLimits,
    /// Uploaded binaries already validated, by digest, and their kind: the same bytes
    /// again (a deploy of many apps from one binary) are not parsed again.
    validated: std::sync::Mutex<HashMap<Digest, AppKind>>,
    /// Held while images are stored and tagged or Deployments change the images they
    /// pin, and by garbage collection: it never sees a new image before its tag.
    exclusive: tokio::sync::Mutex<()>,
    peers: peers::Peers,
}

impl Images {
    /// The images of `store`, compiled by `runtime`. Sweeps what a killed node left
    /// half-made: trees being extracted, builds and pulls.
    pub(crate) fn new(
        store: Arc<ImageStore>,
        runtime: Runtime,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let Settings {
            sites,
            data,
            extract,
            view,
            peer_tls,
            pull_cap,
        } = settings;
        for (dir, prefixes) in [
            (&sites, &[EXTRACTING][..]),
            (&data, &[BUILD_SCRATCH, PULL_SCRATCH][..]),
        ] {
            for d in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = d.file_name();
                if prefixes
                    .iter()
                    .any(|p| name.to_string_lossy().starts_with(p))
                {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        Self {
            peers: peers::Peers::new(store.clone(), view, peer_tls, pull_cap),
            store,
            runtime,
            metrics,
            sites,
            extract,
            validated: std::sync::Mutex::default(),
            exclusive: tokio::sync::Mutex::new(()),
        }
    }

    /// The image store.
    pub(crate) fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// Holds off garbage collection (and other holders) until the guard drops: taken to
    /// store and tag an image, or to change what a Deployment pins, and then collect.
    pub(crate) async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.exclusive.lock().await
    }

    /// The digest an image name or id on the node names.
    pub(crate) async fn resolve(&self, reference: &str) -> Result<Digest, AppError> {
        let store = self.store.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || store.resolve(&reference))
            .await
            .map_err(AppError::internal)?
            .map_err(|e| match e {
                ImageError::NotFound(_) | ImageError::Ambiguous(_) => {
                    AppError::not_found(e.to_string())
                }
                other => AppError::internal(other),
            })
    }

    /// What image `digest` is and runs.
    pub(crate) async fn summary(&self, digest: Digest) -> Result<ImageSummary, AppError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.summary(&digest))
            .await
            .map_err(AppError::internal)?
            .map_err(|e| match e {
                ImageError::NotFound(_) => AppError::not_found(e.to_string()),
                ImageError::Unsupported { .. } => {
                    AppError::invalid("unsupported_image", e.to_string())
                }
                other => AppError::internal(other),
            })
    }

    /// Compiles a Wasm image or extracts a static site or Linux image: everything slow,
    /// before any state changes.
    pub(crate) async fn prepare(&self, summary: &ImageSummary) -> Result<Prepared, AppError> {
        match &summary.runnable {
            Runnable::Wasm { kind, layer } => {
                let store = self.store.clone();
                let layer = *layer;
                let read = async move {
                    tokio::task::spawn_blocking(move || store.blobs().read_verified(&layer))
                        .await
                        .map_err(AppError::internal)?
                        .map_err(AppError::internal)
                };
                Ok(Prepared::Wasm(self.compile(layer, *kind, read).await?))
            }
            // The image's read-only tree, shared by its containers (each Linux container
            // gets an overlay on it).
            Runnable::Oci { layers } => Ok(Prepared::Oci {
                root: self.extracted(summary.digest, layers).await?,
            }),
            Runnable::Static { layers, site_root } => {
                let site_root = skiff_image::oci::image_path("dev.skiff.siteRoot", site_root)
                    .map_err(|e| AppError::invalid("unsupported_image", e))?;
                let tree = self.extracted(summary.digest, layers).await?;
                let tag = summary.digest.to_string();
                // Opened once here (beneath the tree, as it will be served) so a site root
                // that is missing or leads out of the image is refused at deploy.
                if let Err(e) = StaticSite::open(&tree, &site_root, &tag) {
                    return Err(AppError::invalid(
                        "unsupported_image",
                        format!(
                            "the image's site root /{} is not a directory inside the image: {e}",
                            site_root.display()
                        ),
                    ));
                }
                Ok(Prepared::Static {
                    tree,
                    site_root,
                    tag,
                })
            }
        }
    }

    /// The image's layers extracted once, under `sites/<digest>`.
    async fn extracted(&self, digest: Digest, layers: &[Descriptor]) -> Result<PathBuf, AppError> {
        let dir = self.sites.join(digest.hex());
        if !dir.is_dir() {
            let store = self.store.clone();
            let (layers, sites, dest) = (layers.to_vec(), self.sites.clone(), dir.clone());
            let limits = self.extract;
            tokio::task::spawn_blocking(move || {
                extract_site(&store, &layers, &sites, &dest, limits)
            })
            .await
            .map_err(AppError::internal)??;
        }
        Ok(dir)
    }

    /// The code of module `layer`: the code a running app holds (compiled, counted and
    /// linked already; the module is not even read), else compiled or loaded from the
    /// cache from the bytes `wasm` gives.
    pub(crate) async fn compile(
        &self,
        layer: Digest,
        kind: AppKind,
        wasm: impl Future<Output = Result<Vec<u8>, AppError>>,
    ) -> Result<Arc<Compiled>, AppError> {
        if let Some(loaded) = self.runtime.loaded(layer, kind) {
            return Ok(loaded);
        }
        let (compiled, fresh) = self
            .runtime
            .compile_or_share(layer, kind, wasm.await?.into())
            .await
            .map_err(|e| match e {
                skiff_runtime::CompileError::Invalid { .. } => {
                    AppError::invalid("invalid_wasm", e.to_string())
                }
                // The module's own doing: it costs more than a compile may.
                skiff_runtime::CompileError::TimedOut { .. }
                | skiff_runtime::CompileError::TooBig { .. } => {
                    AppError::invalid("compile_limit", e.to_string())
                }
                other => AppError::internal(other),
            })?;
        if fresh {
            self.metrics
                .compile(compiled.from_cache, compiled.took.as_secs_f64());
        }
        self.runtime
            .check_links(&compiled)
            .map_err(|e| AppError::invalid("unsupported_imports", e.to_string()))?;
        Ok(compiled)
    }

    /// The kind of the binary `digest`, if one with these bytes was validated before.
    pub(crate) fn validated_kind(&self, digest: &Digest) -> Option<AppKind> {
        let known = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        known.get(digest).copied()
    }

    /// Records that the binary `digest` validated as `kind` (up to a thousand binaries;
    /// when full, all are forgotten and the next uploads are parsed again).
    pub(crate) fn remember_valid(&self, digest: Digest, kind: AppKind) {
        const KEEP: usize = 1024;
        let mut known = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KEEP && !known.contains_key(&digest) {
            known.clear();
        }
        known.insert(digest, kind);
    }

    /// Fetches `reference` from a live peer that has it. `Ok(false)`: none has it.
    pub(crate) async fn pull_from_peers(&self, reference: &str) -> Result<bool, AppError> {
        self.peers.pull(reference).await
    }

    /// Copies the images `loaded` (name or digest, manifest digest) to one other node,
    /// so a load, build or upload is on two nodes (all when there are fewer) before it
    /// is acknowledged.
    pub(crate) async fn replicate(
        &self,
        loaded: &[(Option<skiff_image::ImageName>, Digest)],
    ) -> Result<(), AppError> {
        self.peers.replicate(loaded).await
    }

    /// Deletes the images `candidates` (with their config and layers, and extracted
    /// trees) that no tag, Deployment or `in_use` holds: `in_use` is asked only when
    /// some candidate is not pinned by a Deployment of `desired`. Costs the candidates,
    /// not the node. Callers hold [`Self::exclusive`].
    pub(crate) async fn collect(
        &self,
        candidates: BTreeSet<Digest>,
        desired: &crate::desired::DesiredStore,
        in_use: impl AsyncFnOnce() -> BTreeSet<Digest>,
    ) {
        let candidates: BTreeSet<Digest> = candidates
            .into_iter()
            .filter(|d| !desired.pinned(&d.to_string()))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let in_use = in_use().await;
        let store = self.store.clone();
        let sites = self.sites.clone();
        let result = tokio::task::spawn_blocking(move || {
            let removed = store.collect_images(&candidates, |d| in_use.contains(d))?;
            for d in &removed {
                let _ = std::fs::remove_dir_all(sites.join(d.hex()));
            }
            Ok::<_, ImageError>(removed.len())
        })
        .await;
        log_collected(result);
    }

    /// Deletes blobs and extracted trees that no tagged image and no image of `keep`
    /// refers to: every image is read (the image verbs, and once at start). Callers
    /// hold [`Self::exclusive`].
    pub(crate) async fn collect_all(&self, keep: BTreeSet<Digest>) {
        let store = self.store.clone();
        let sites = self.sites.clone();
        let result = tokio::task::spawn_blocking(move || {
            let removed = store.collect_garbage(&keep)?;
            // Extracted trees of images that are gone. Only complete trees (named by
            // their digest) are considered: a `.extract-*` tree is a deploy in progress.
            if let Ok(dirs) = std::fs::read_dir(&sites) {
                for d in dirs.flatten() {
                    let name = d.file_name().to_string_lossy().into_owned();
                    let gone = Digest::from_hex(&name)
                        .is_ok_and(|digest| !store.blobs().contains(&digest));
                    if gone {
                        let _ = std::fs::remove_dir_all(d.path());
                    }
                }
            }
            Ok::<_, ImageError>(removed)
        })
        .await;
        log_collected(result);
    }
}

/// Deploy parameters, with what the image itself says (env, `dev.skiff.*` limit labels)
/// filling what the deploy left open.
fn with_image_defaults(mut params: DeployParams, run: &RunConfig) -> DeployParams {
    let mut env: Vec<(String, String)> = run
        .env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.retain(|(k, _)| !params.env.iter().any(|(pk, _)| pk == k));
    env.append(&mut params.env);
    params.env = env;
    let label = |k: &str| run.labels.get(k).map(String::as_str);
    if params.memory_bytes.is_none() {
        params.memory_bytes = label("dev.skiff.memory").and_then(|m| parse_bytes(m).ok());
    }
    if params.timeout.is_none() {
        params.timeout = label("dev.skiff.timeout").and_then(|t| parse_duration(t).ok());
    }
    if params.concurrency.is_none() {
        params.concurrency = label("dev.skiff.concurrency").and_then(|c| c.parse().ok());
    }
    params
}

/// The spec of an app or container running `summary` under `name`: the deploy's
/// parameters, the image's defaults for what they leave open, the image's routes.
pub(crate) fn image_spec(params: DeployParams, summary: &ImageSummary, name: AppName) -> AppSpec {
    let kind = match &summary.runnable {
        Runnable::Wasm { kind, .. } => *kind,
        Runnable::Static { .. } => AppKind::Static,
        Runnable::Oci { .. } => AppKind::Oci,
    };
    let mut spec = with_image_defaults(params, &summary.run).into_spec(name, summary.digest, kind);
    spec.routes = summary
        .run
        .labels
        .get(skiff_image::build::ROUTES_LABEL)
        .map(|r| r.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    spec.args = summary
        .run
        .entrypoint
        .iter()
        .chain(&summary.run.cmd)
        .cloned()
        .collect();
    spec
}

fn log_collected(result: Result<Result<usize, ImageError>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(n)) if n > 0 => info!(blobs = n, "collected unused image data"),
        Ok(Err(e)) => warn!(error = %e, "garbage collection failed"),
        _ => {}
    }
}

/// Extracts an image's layers beside `dest` and renames the tree into place last, so a
/// tree under its digest's name is always whole: a crash or a failure leaves only a
/// `.extract-*` directory, which nothing uses and the next start removes.
fn extract_site(
    store: &ImageStore,
    layers: &[Descriptor],
    sites: &Path,
    dest: &Path,
    limits: ExtractLimits,
) -> Result<(), AppError> {
    std::fs::create_dir_all(sites).map_err(AppError::internal)?;
    let tmp = tempfile::Builder::new()
        .prefix(EXTRACTING)
        .tempdir_in(sites)
        .map_err(AppError::internal)?;
    skiff_image::layer::extract(store.blobs(), layers, tmp.path(), limits)
        .map_err(|e| AppError::invalid("unsupported_image", e.to_string()))?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another deploy of the same image won the race: its tree is identical.
        if !dest.is_dir() {
            return Err(AppError::internal(e));
        }
    }
    Ok(())
}
