//! The supervisor: images made ready to run (compiled, extracted), containers made from
//! them, and the verbs that change what runs.
//!
//! - `deployments`: the reconciler, the only thing that starts and stops a Deployment's
//!   pods, with their probes and restart policy; Service routes and node ports.
//! - `objects`: commands from the API (apply, delete, scale, set image, undo).
//! - `deploy`: `skiff deploy` and the upload API as a Deployment and a Service.
//! - `standalone`: `skiff run` containers.
//! - `linux`: starting and retiring runc containers for both.
//!
//! A deploy validates and compiles the image before anything changes; a rollout starts
//! new pods before it stops old ones, which drain: requests already on them finish, new
//! ones go to the new pods. No request fails because of a redeploy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_image::layer::ExtractLimits;
use skiff_image::oci::{Descriptor, RunConfig};
use skiff_image::{
    ImageError, ImageName, ImageStore, ImageSummary, Runnable, StagedBlob, detect_kind,
};
use skiff_runtime::{Compiled, ContainerConfig, LogBook, Runtime, StaticSite, Workload};
use skiff_spec::api::AppStatus;
use skiff_spec::{AppKind, AppName, AppSpec, DeployParams, Digest, parse_bytes, parse_duration};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod deploy;
mod deployments;
mod error;
pub(crate) mod events;
mod linux;
mod objects;
mod pull;
mod standalone;

pub use error::AppError;
pub(crate) use pull::REPLICA_HEADER;
pub use standalone::Attached;

use crate::container::Container;
use crate::desired::DesiredStore;
use crate::ingress::Ingress;
use crate::state::StateStore;

/// Lines of output kept per app.
const LOG_LINES: usize = 2000;

/// An image made ready to run: compiled code, an extracted site, or a Linux image's
/// extracted tree.
enum Prepared {
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

/// Extracts an image's layers beside `dest` and renames the tree into place last, so a
/// tree under its digest's name is always whole: a crash or a failure leaves only a
/// `.extract-*` directory, which nothing uses and the next start removes.
fn extract_site(
    images: &ImageStore,
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
    skiff_image::layer::extract(images.blobs(), layers, tmp.path(), limits)
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
fn image_spec(params: DeployParams, summary: &ImageSummary, name: AppName) -> AppSpec {
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

/// Where and how the supervisor works.
pub(crate) struct Settings {
    /// Directory for extracted static sites.
    pub(crate) sites: PathBuf,
    /// `{domain}:{port}/`, for app URLs.
    pub(crate) url_suffix: String,
    /// The node's shutdown: published-port listeners stop with it.
    pub(crate) shutdown: CancellationToken,
    /// How long stops wait for requests in flight.
    pub(crate) drain: Duration,
    /// The node's data dir.
    pub(crate) data: PathBuf,
    /// Bounds on extracting an image.
    pub(crate) extract: ExtractLimits,
    /// Deployments and Services.
    pub(crate) desired: Arc<DesiredStore>,
    /// The cluster's log, which every change goes through.
    pub(crate) consensus: Arc<crate::raft::Consensus>,
    /// Wakes the reconciler (the state machine rings it after a change).
    pub(crate) kick: Arc<tokio::sync::Notify>,
    /// What this node sees of the cluster (placement and remote endpoints).
    pub(crate) view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// How long a request body forwarded to another node may stall.
    pub(crate) body_timeout: Duration,
    /// This node's TLS client for other nodes (image copies present its certificate).
    pub(crate) peer_tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// Marks requests forwarded to other nodes' ingresses.
    pub(crate) forward_key: skiff_runtime::ForwardKey,
    /// The largest image archive pulled from a peer.
    pub(crate) pull_cap: u64,
}

/// How far the node's start has brought its pods back.
pub(crate) struct Restore {
    started: std::time::Instant,
    /// How long it took, once done.
    done: tokio::sync::watch::Sender<Option<Duration>>,
}

/// The body of requests to other nodes' APIs.
type PeerBody = http_body_util::Full<bytes::Bytes>;

/// The node's apps: desired state, running containers, routes.
pub struct Apps {
    restore: Restore,
    runtime: Runtime,
    images: Arc<ImageStore>,
    /// Extracted static sites, by image digest.
    sites: PathBuf,
    /// Bounds on extracting an image.
    extract: ExtractLimits,
    state: Arc<StateStore>,
    /// Routing table and metrics, shared with the ingress listeners.
    ingress: Arc<Ingress>,
    /// One deploy, removal or garbage collection at a time; compiles run outside it.
    deploying: Mutex<()>,
    /// Uploaded binaries already validated, by digest, and their kind: the same bytes
    /// again (a deploy of many apps from one binary) are not parsed again.
    validated: std::sync::Mutex<HashMap<Digest, AppKind>>,
    /// `skiff run` containers by id. Locked after `apps` when both are needed.
    standalone: Mutex<HashMap<String, standalone::Standalone>>,
    /// What happened to those containers, for `docker events`.
    pub(crate) container_events: events::ContainerEvents,
    /// Stops published-port listeners with the node.
    shutdown: CancellationToken,
    /// How long stopping listeners wait for requests in flight.
    drain: Duration,
    /// `http://{name}.{domain}:{port}/`
    url_suffix: String,
    /// The node's data dir (Linux containers' bundles live in `containers/`).
    data: PathBuf,
    /// runc, if this node can run Linux containers; else why not.
    oci: Result<skiff_runtime::oci::OciHost, String>,
    /// Linux containers' exits, handled by [`Apps::run_exit_loop`].
    exits: tokio::sync::mpsc::UnboundedSender<linux::LinuxEvent>,
    exit_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<linux::LinuxEvent>>>,
    /// Deployments and Services, as desired.
    desired: Arc<DesiredStore>,
    /// The cluster's log: every change to `desired` goes through it.
    consensus: Arc<crate::raft::Consensus>,
    /// Deployments' pods and what the reconciler knows of them.
    pods: Arc<deployments::PodTable>,
    /// What this node sees of the cluster.
    view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// Connections to other nodes' ingresses, for their pods.
    remote_client: deployments::spread::RemoteClient,
    /// How long a request body forwarded to another node may stall.
    body_timeout: Duration,
    /// Other nodes' APIs, over TLS with this node's certificate.
    peers: hyper_util::client::legacy::Client<crate::raft::peer::PeerConnector, PeerBody>,
    /// The largest image archive pulled from a peer.
    pull_cap: u64,
}

impl Apps {
    pub(crate) fn new(
        runtime: Runtime,
        images: Arc<ImageStore>,
        state: Arc<StateStore>,
        ingress: Arc<Ingress>,
        settings: Settings,
    ) -> Self {
        let Settings {
            sites,
            url_suffix,
            shutdown,
            drain,
            data,
            extract,
            desired,
            consensus,
            kick,
            view,
            body_timeout,
            peer_tls,
            forward_key,
            pull_cap,
        } = settings;
        // Trees a killed node was extracting, builds and pulls it was in the middle of:
        // never complete, never used.
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
        let oci = skiff_runtime::oci::OciHost::probe(&data.join("runc")).map_err(|e| e.to_string());
        if let Err(why) = &oci {
            info!(reason = %why, "Linux containers are not available on this node; Wasm is");
        }
        let (exits, exit_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            runtime,
            images,
            sites,
            extract,
            state,
            ingress,
            deploying: Mutex::new(()),
            validated: std::sync::Mutex::default(),
            standalone: Mutex::new(HashMap::new()),
            container_events: Default::default(),
            url_suffix,
            shutdown,
            drain,
            data,
            oci,
            exits,
            exit_rx: std::sync::Mutex::new(Some(exit_rx)),
            desired,
            consensus,
            pods: Arc::new(deployments::PodTable::new(kick)),
            restore: Restore {
                started: std::time::Instant::now(),
                done: tokio::sync::watch::Sender::new(None),
            },
            view,
            remote_client: deployments::spread::RemoteClient {
                client: skiff_runtime::RemoteWorkload::client(),
                key: forward_key,
            },
            body_timeout,
            peers:
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(crate::raft::peer::connector(peer_tls)),
            pull_cap,
        }
    }

    /// Handles Linux containers' exits until the node stops. Run once, by the node.
    pub(crate) async fn run_exit_loop(&self, shutdown: CancellationToken) {
        let Some(mut rx) = self
            .exit_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = rx.recv() => match ev {
                    Some(linux::LinuxEvent::PodExited { pod, instance, exit }) => {
                        self.on_pod_exit(&pod, &instance, &exit);
                    }
                    Some(ev) => self.on_exit(ev).await,
                    None => return,
                },
            }
        }
    }

    /// Brings the node back: leftovers of a killed node cleaned, Deployments' pods
    /// started (compiled code comes from the cache), `skiff run` containers restarted. A
    /// pod that cannot start waits with its reason rather than stopping the node.
    pub async fn restore(&self) -> anyhow::Result<()> {
        // runc outlives a killed node: whatever Linux containers it left (standalone or
        // replicas) go before anything starts. Nothing of this node runs yet, so every
        // bundle under containers/ is a leftover.
        if let Ok(host) = &self.oci
            && let Ok(dirs) = std::fs::read_dir(self.data.join("containers"))
        {
            for dir in dirs.flatten() {
                let id = dir.file_name().to_string_lossy().into_owned();
                if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    host.clean_leftovers(&id, &dir.path()).await;
                }
            }
        }
        // Apps of an older node become Deployments. Their pods come back in the
        // reconciler's first passes while the node serves (`track_restore`), so the
        // first app answers before the last is made.
        self.migrate_app_records().await?;
        self.ingress
            .metrics
            .set_apps(self.desired.read(|s| s.state.deployments.len()));
        self.restore_standalone().await
    }

    /// The digest an image name or id on the node names.
    async fn resolve(&self, reference: &str) -> Result<Digest, AppError> {
        let images = self.images.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(AppError::internal)?
            .map_err(|e| match e {
                ImageError::NotFound(_) | ImageError::Ambiguous(_) => {
                    AppError::not_found(e.to_string())
                }
                other => AppError::internal(other),
            })
    }

    async fn summary(&self, digest: Digest) -> Result<ImageSummary, AppError> {
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.summary(&digest))
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

    /// Compiles a Wasm image or extracts a static site: everything slow, before any
    /// state changes.
    async fn prepare(&self, summary: &ImageSummary) -> Result<Prepared, AppError> {
        match &summary.runnable {
            Runnable::Wasm { kind, layer } => {
                let images = self.images.clone();
                let layer = *layer;
                let read = async move {
                    tokio::task::spawn_blocking(move || images.blobs().read_verified(&layer))
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
            let images = self.images.clone();
            let (layers, sites, dest) = (layers.to_vec(), self.sites.clone(), dir.clone());
            let limits = self.extract;
            tokio::task::spawn_blocking(move || {
                extract_site(&images, &layers, &sites, &dest, limits)
            })
            .await
            .map_err(AppError::internal)??;
        }
        Ok(dir)
    }

    /// The code of module `layer`: the code a running app holds (compiled, counted and
    /// linked already; the module is not even read), else compiled or loaded from the
    /// cache from the bytes `wasm` gives.
    async fn compile(
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
            self.ingress
                .metrics
                .compile(compiled.from_cache, compiled.took.as_secs_f64());
        }
        self.runtime
            .check_links(&compiled)
            .map_err(|e| AppError::invalid("unsupported_imports", e.to_string()))?;
        Ok(compiled)
    }

    /// A Wasm or static container named `name` running `spec`, in state `Starting`.
    fn in_process(
        &self,
        name: String,
        spec: &AppSpec,
        prepared: &Prepared,
        log: &Arc<LogBook>,
    ) -> Result<Container, AppError> {
        let workload = match prepared {
            Prepared::Wasm(compiled) => {
                let config = ContainerConfig {
                    name: name.clone().into(),
                    env: spec
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    args: spec.args.clone(),
                    limits: spec.limits.clone(),
                    allowed_hosts: spec.allowed_hosts.clone().into(),
                    log: log.clone(),
                };
                self.runtime
                    .prepare(compiled, config)
                    .map_err(|e| AppError::invalid("unsupported_imports", e.to_string()))?
            }
            Prepared::Oci { .. } => {
                return Err(AppError::internal(
                    "a Linux image's containers are started with runc",
                ));
            }
            Prepared::Static {
                tree,
                site_root,
                tag,
            } => Workload::Static(
                StaticSite::open(tree, site_root, tag).map_err(AppError::internal)?,
            ),
        };
        Ok(Container::new(
            name,
            spec.name.clone(),
            workload,
            spec.limits.concurrency,
            crate::clock::now_ms(),
            spec.routes.clone(),
        ))
    }

    /// The kind of the binary `digest`, if one with these bytes was validated before.
    fn validated_kind(&self, digest: &Digest) -> Option<AppKind> {
        let known = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        known.get(digest).copied()
    }

    /// Records that the binary `digest` validated as `kind` (up to a thousand binaries;
    /// when full, all are forgotten and the next uploads are parsed again).
    fn remember_valid(&self, digest: Digest, kind: AppKind) {
        const KEEP: usize = 1024;
        let mut known = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KEEP && !known.contains_key(&digest) {
            known.clear();
        }
        known.insert(digest, kind);
    }

    /// The upload shortcut: stores the binary as the image `<name>:latest`, then deploys
    /// it. Nothing changes unless the binary validates, compiles and links.
    pub async fn deploy_upload(
        &self,
        name: AppName,
        params: DeployParams,
        staged: StagedBlob,
    ) -> Result<(bool, AppStatus), AppError> {
        let layer = staged.digest();
        let known = self.validated_kind(&layer);
        // Reading and parsing a large binary takes a while: off the async executor.
        let (staged, read) = tokio::task::spawn_blocking(move || {
            let read = staged.read().map(|wasm| {
                let kind = known.map_or_else(|| detect_kind(&wasm), Ok);
                (wasm, kind)
            });
            (staged, read)
        })
        .await
        .map_err(AppError::internal)?;
        let (wasm, kind) = read.map_err(AppError::internal)?;
        let kind = kind.map_err(|e| AppError::invalid("invalid_wasm", e.to_string()))?;
        self.remember_valid(layer, kind);
        let compiled = self.compile(layer, kind, async { Ok(wasm) }).await?;

        let guard = self.deploying.lock().await;
        // Stored and tagged under the lock, so garbage collection (which also runs under
        // it) never sees the new blobs untagged.
        let images = self.images.clone();
        let image_name = ImageName::parse(&format!("{name}:latest")).map_err(AppError::internal)?;
        let created = crate::clock::now_rfc3339();
        let tag_name = image_name.clone();
        let (desc, previous) = tokio::task::spawn_blocking(move || {
            let previous = images.resolve(&tag_name.to_string()).ok();
            let size = staged.len();
            let layer = staged.commit()?;
            let desc = images.add_wasm(layer, size, kind, RunConfig::default(), &created)?;
            images.tag(&tag_name, &desc)?;
            Ok::<_, ImageError>((desc, previous))
        })
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::image)?;
        let summary = self.summary(desc.digest).await?;
        let image_ref = format!("{name}:latest");
        let app = name.to_string();
        let pinned_before = self.pinned_by(&app);
        // On a second node before it is acknowledged (then deployed).
        let installed = match self
            .replicate(&[(Some(image_name.clone()), desc.digest)])
            .await
        {
            Ok(()) => {
                self.install(name, params, (summary, image_ref), compiled)
                    .await
            }
            Err(e) => Err(e),
        };
        // What may be garbage now: the image the tag named before, the revisions' images
        // the Deployment dropped, and (when refused) the new image.
        let mut candidates: BTreeSet<Digest> = previous.into_iter().collect();
        candidates.extend(self.unpinned_since(&app, pinned_before));
        if installed.is_err() {
            candidates.insert(desc.digest);
            // A refused deploy leaves the name where it was: on the image that still runs
            // (or on none).
            let images = self.images.clone();
            let _ = tokio::task::spawn_blocking(move || match previous {
                Some(digest) => {
                    let size = images.blobs().size(&digest)?;
                    images
                        .tag(
                            &image_name,
                            &Descriptor {
                                media_type: skiff_image::oci::MANIFEST_V1.into(),
                                digest,
                                size,
                                annotations: skiff_spec::Labels::new(),
                                platform: None,
                            },
                        )
                        .map(drop)
                }
                None => images.untag(&image_name).map(drop),
            })
            .await;
        }
        self.collect_images(candidates).await;
        drop(guard);
        installed
    }

    /// Deploys (or redeploys) `name` from an image in the store.
    pub async fn deploy_image(
        &self,
        name: AppName,
        params: DeployParams,
        reference: &str,
    ) -> Result<(bool, AppStatus), AppError> {
        let image_ref = reference.to_string();
        let digest = self.resolve(reference).await?;
        let summary = self.summary(digest).await?;
        let prepared = self.prepare(&summary).await?;
        let _guard = self.deploying.lock().await;
        if !self.images.blobs().contains(&digest) {
            return Err(AppError::not_found(format!(
                "image {digest} was removed during the deploy"
            )));
        }
        let pinned_before = self.pinned_by(name.as_str());
        let app = name.to_string();
        let installed = self
            .install(name, params, (summary, image_ref), prepared)
            .await;
        self.collect_images(self.unpinned_since(&app, pinned_before))
            .await;
        installed
    }

    /// Who runs each image: app names and container names, by image.
    pub async fn image_users(&self) -> BTreeMap<Digest, Vec<String>> {
        let mut users: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        // Deployments pin images by digest (apps) or name them by tag (manifests, kept
        // by the tag itself); pods hold the image they run whatever happens to tags.
        let pinned: Vec<(Digest, String)> = self.desired.read(|s| {
            s.state
                .deployments
                .values()
                .flat_map(|d| {
                    d.revisions.iter().filter_map(move |r| {
                        let image = &r.template.spec.containers.first()?.image;
                        Some((
                            image.parse::<Digest>().ok()?,
                            d.object.metadata.name.clone(),
                        ))
                    })
                })
                .collect()
        });
        for (digest, app) in pinned {
            let list = users.entry(digest).or_default();
            let label = format!("app {app}");
            if !list.contains(&label) {
                list.push(label);
            }
        }
        for (digest, pod) in self.pods.images() {
            users.entry(digest).or_default().push(format!("pod {pod}"));
        }
        for c in self.standalone.lock().await.values() {
            users
                .entry(c.image())
                .or_default()
                .push(format!("container {}", c.name()));
        }
        users
    }

    /// The images Deployment `name`'s revisions name.
    pub(crate) fn pinned_by(&self, name: &str) -> BTreeSet<Digest> {
        self.desired.read(|s| {
            s.state
                .deployments
                .get(name)
                .into_iter()
                .flat_map(|d| &d.revisions)
                .flat_map(|r| &r.template.spec.containers)
                .filter_map(|c| c.image.parse().ok())
                .collect()
        })
    }

    /// Of `before` (what Deployment `name` pinned), the images it no longer pins.
    pub(crate) fn unpinned_since(&self, name: &str, before: BTreeSet<Digest>) -> BTreeSet<Digest> {
        let after = self.pinned_by(name);
        before.difference(&after).copied().collect()
    }

    /// Deletes the images `candidates` (with their config and layers, and extracted
    /// sites) that no tag, Deployment, pod or container holds any more. Costs the
    /// candidates, not the node: pods and containers are looked at only for an image
    /// nothing else holds. Callers hold `deploying`.
    pub(crate) async fn collect_images(&self, candidates: BTreeSet<Digest>) {
        let candidates: BTreeSet<Digest> = candidates
            .into_iter()
            .filter(|d| !self.desired.pinned(&d.to_string()))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let mut in_use: BTreeSet<Digest> = self.pods.images().into_iter().map(|(d, _)| d).collect();
        in_use.extend(self.standalone.lock().await.values().map(|c| c.image()));
        let images = self.images.clone();
        let sites = self.sites.clone();
        let result = tokio::task::spawn_blocking(move || {
            let removed = images.collect_images(&candidates, |d| in_use.contains(d))?;
            for d in &removed {
                let _ = std::fs::remove_dir_all(sites.join(d.hex()));
            }
            Ok::<_, ImageError>(removed.len())
        })
        .await;
        match result {
            Ok(Ok(n)) if n > 0 => info!(blobs = n, "collected unused image data"),
            Ok(Err(e)) => warn!(error = %e, "garbage collection failed"),
            _ => {}
        }
    }

    /// Deletes blobs and extracted sites no tagged image, app or container refers to:
    /// every image is read (the image verbs, and once at start). Callers hold
    /// `deploying`.
    async fn collect_garbage(&self) {
        // Images of apps and of containers (running or stopped) stay.
        let keep: BTreeSet<Digest> = self.image_users().await.into_keys().collect();
        let images = self.images.clone();
        let sites = self.sites.clone();
        let result = tokio::task::spawn_blocking(move || {
            let removed = images.collect_garbage(&keep)?;
            // Extracted trees of images that are gone. Only complete trees (named by
            // their digest) are considered: a `.extract-*` tree is a deploy in progress.
            if let Ok(dirs) = std::fs::read_dir(&sites) {
                for d in dirs.flatten() {
                    let name = d.file_name().to_string_lossy().into_owned();
                    let gone = Digest::from_hex(&name)
                        .is_ok_and(|digest| !images.blobs().contains(&digest));
                    if gone {
                        let _ = std::fs::remove_dir_all(d.path());
                    }
                }
            }
            Ok::<_, ImageError>(removed)
        })
        .await;
        match result {
            Ok(Ok(n)) if n > 0 => info!(blobs = n, "collected unused image data"),
            Ok(Err(e)) => warn!(error = %e, "garbage collection failed"),
            _ => {}
        }
    }

    /// `/healthz`'s line about the pods a start brings back: how many are ready while
    /// it is under way, how long it took once done.
    pub fn restore_line(&self) -> String {
        let done = *self.restore.done.borrow();
        match done {
            Some(took) => format!("restored: pods back in {} ms", took.as_millis()),
            None => {
                let (ready, total, _) = self.restore_progress();
                format!("restoring: {ready} of {total} pods ready")
            }
        }
    }

    /// Waits until the start's pods are back (what `/healthz` then says).
    pub async fn wait_restored(&self) {
        let _ = self
            .restore
            .done
            .subscribe()
            .wait_for(Option::is_some)
            .await;
    }

    /// Whether the state store can be written (`Err` says why not).
    pub fn state_health(&self) -> Result<(), String> {
        self.state.health()
    }

    /// Collects `image` (and what only it refers to) if nothing holds it any more
    /// (after a container that ran it was removed).
    pub(crate) async fn collect_images_now(&self, image: Digest) {
        let _guard = self.deploying.lock().await;
        self.collect_images(BTreeSet::from([image])).await;
    }

    /// Runs garbage collection now (after an image was untagged).
    pub async fn collect_garbage_now(&self) {
        let _guard = self.deploying.lock().await;
        self.collect_garbage().await;
    }

    /// The log book of an app (a Deployment's pods).
    pub async fn log(&self, name: &AppName) -> Result<Arc<LogBook>, AppError> {
        self.pods
            .log(name.as_str())
            .or_else(|| {
                self.desired
                    .read(|s| s.state.deployments.contains_key(name.as_str()))
                    .then(|| LogBook::new(1))
            })
            .ok_or_else(|| AppError::not_found(format!("app {name} not found")))
    }

    /// Stops routing to every container and drains them (node shutdown).
    pub async fn drain_all(&self, grace: Duration) {
        self.stop_all_standalone().await;
        if let Ok(host) = &self.oci {
            host.shutdown();
        }
        let drains = self
            .pod_containers()
            .into_iter()
            .map(|c| async move { linux::retire(&c, grace, grace).await });
        futures_util::future::join_all(drains).await;
    }
}
