//! Deployments and Services on this node, and the verbs that change them (what is left
//! of the supervisor once images, the launcher and `skiff run` containers became
//! services of their own):
//!
//! - `deployments`: the reconciler, the only thing that starts and stops a Deployment's
//!   pods, with their probes and restart policy; Service routes and node ports.
//! - `objects`: commands from the API (apply, delete, scale, set image, undo).
//! - `deploy`: `skiff deploy` and the upload API as a Deployment and a Service.
//!
//! A deploy validates and compiles the image before anything changes; a rollout starts
//! new pods before it stops old ones, which drain: requests already on them finish, new
//! ones go to the new pods. No request fails because of a redeploy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use skiff_image::oci::{Descriptor, RunConfig};
use skiff_image::{ImageError, ImageName, StagedBlob, detect_kind};
use skiff_runtime::LogBook;
use skiff_spec::api::AppStatus;
use skiff_spec::{AppName, DeployParams, Digest};
use tokio_util::sync::CancellationToken;

mod deploy;
mod deployments;
mod objects;

pub use crate::error::AppError;
pub(crate) use deployments::PodTable;

use crate::desired::DesiredStore;
use crate::images::{Images, Prepared};
use crate::ingress::Ingress;
use crate::launcher::Launcher;
use crate::standalone::Standalone;
use crate::state::StateStore;

/// A Deployment's pod's Linux process ended (handled by [`Apps::run_exit_loop`]).
pub(crate) struct PodExit {
    /// The pod.
    pub(crate) pod: String,
    /// Which start of it (the Container object's id).
    pub(crate) instance: String,
    /// How it ended.
    pub(crate) exit: skiff_runtime::oci::Exit,
}

/// Lines of output kept per app.
const LOG_LINES: usize = 2000;

/// Where and how the supervisor works.
pub(crate) struct Settings {
    /// `{domain}:{port}/`, for app URLs.
    pub(crate) url_suffix: String,
    /// The node's shutdown: published-port listeners stop with it.
    pub(crate) shutdown: CancellationToken,
    /// How long stops wait for requests in flight.
    pub(crate) drain: Duration,
    /// Deployments and Services.
    pub(crate) desired: Arc<DesiredStore>,
    /// The cluster's log, which every change goes through.
    pub(crate) consensus: Arc<crate::raft::Consensus>,
    /// What this node sees of the cluster (placement and remote endpoints).
    pub(crate) view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// How long a request body forwarded to another node may stall.
    pub(crate) body_timeout: Duration,
    /// Marks requests forwarded to other nodes' ingresses.
    pub(crate) forward_key: skiff_runtime::ForwardKey,
}

/// How far the node's start has brought its pods back.
pub(crate) struct Restore {
    started: std::time::Instant,
    /// How long it took, once done.
    done: tokio::sync::watch::Sender<Option<Duration>>,
}

/// The node's apps: desired state, running containers, routes.
pub struct Apps {
    restore: Restore,
    images: Arc<Images>,
    state: Arc<StateStore>,
    /// Routing table and metrics, shared with the ingress listeners.
    ingress: Arc<Ingress>,
    /// `skiff run` containers (their names and images count here too).
    standalone: Arc<Standalone>,
    /// Stops published-port listeners with the node.
    shutdown: CancellationToken,
    /// How long stopping listeners wait for requests in flight.
    drain: Duration,
    /// `http://{name}.{domain}:{port}/`
    url_suffix: String,
    /// Starts every container, pods and `skiff run` ones alike.
    launcher: Arc<Launcher>,
    /// Pods' Linux processes' exits, handled by [`Apps::run_exit_loop`].
    exits: crate::launcher::Inbox<PodExit>,
    /// Deployments and Services, as desired.
    desired: Arc<DesiredStore>,
    /// The cluster's log: every change to `desired` goes through it.
    consensus: Arc<crate::raft::Consensus>,
    /// Deployments' pods and what the reconciler knows of them.
    pods: Arc<PodTable>,
    /// What this node sees of the cluster.
    view: tokio::sync::watch::Receiver<Arc<crate::cluster::View>>,
    /// Connections to other nodes' ingresses, for their pods.
    remote_client: deployments::spread::RemoteClient,
    /// How long a request body forwarded to another node may stall.
    body_timeout: Duration,
}

impl Apps {
    pub(crate) fn new(
        launcher: Arc<Launcher>,
        images: Arc<Images>,
        standalone: Arc<Standalone>,
        pods: Arc<PodTable>,
        state: Arc<StateStore>,
        ingress: Arc<Ingress>,
        settings: Settings,
    ) -> Self {
        let Settings {
            url_suffix,
            shutdown,
            drain,
            desired,
            consensus,
            view,
            body_timeout,
            forward_key,
        } = settings;
        Self {
            images,
            state,
            ingress,
            standalone,
            url_suffix,
            shutdown,
            drain,
            launcher,
            exits: crate::launcher::Inbox::new(),
            desired,
            consensus,
            pods,
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
        }
    }

    /// Handles pods' Linux processes' exits until the node stops. Run once, by the node.
    pub(crate) async fn run_exit_loop(&self, shutdown: CancellationToken) {
        self.exits
            .run(
                shutdown,
                |PodExit {
                     pod,
                     instance,
                     exit,
                 }| {
                    self.on_pod_exit(&pod, &instance, &exit);
                    std::future::ready(())
                },
            )
            .await;
    }

    /// Brings the node back: leftovers of a killed node cleaned, Deployments' pods
    /// started (compiled code comes from the cache), `skiff run` containers restarted. A
    /// pod that cannot start waits with its reason rather than stopping the node.
    pub async fn restore(&self) -> anyhow::Result<()> {
        // runc outlives a killed node: whatever Linux containers it left (standalone or
        // replicas) go before anything starts. Nothing of this node runs yet, so every
        // bundle under containers/ is a leftover.
        if let Some(host) = self.launcher.oci()
            && let Ok(dirs) = std::fs::read_dir(self.launcher.bundles())
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
        self.standalone.restore().await
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
        let known = self.images.validated_kind(&layer);
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
        self.images.remember_valid(layer, kind);
        let compiled = self.images.compile(layer, kind, async { Ok(wasm) }).await?;

        let guard = self.images.exclusive().await;
        // Stored and tagged under the lock, so garbage collection (which also runs under
        // it) never sees the new blobs untagged.
        let images = self.images.store().clone();
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
        let summary = self.images.summary(desc.digest).await?;
        let image_ref = format!("{name}:latest");
        let app = name.to_string();
        let pinned_before = self.pinned_by(&app);
        // On a second node before it is acknowledged (then deployed).
        let installed = match self
            .images
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
            let images = self.images.store().clone();
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
        let digest = self.images.resolve(reference).await?;
        let summary = self.images.summary(digest).await?;
        let prepared = self.images.prepare(&summary).await?;
        let _guard = self.images.exclusive().await;
        if !self.images.store().blobs().contains(&digest) {
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
        for (image, name) in self.standalone.images_in_use().await {
            users
                .entry(image)
                .or_default()
                .push(format!("container {name}"));
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

    /// Deletes the images `candidates` that no tag, Deployment, pod or container holds
    /// any more (pods and containers are looked at only for an image nothing else
    /// holds). Callers hold [`Images::exclusive`].
    pub(crate) async fn collect_images(&self, candidates: BTreeSet<Digest>) {
        self.images
            .collect(candidates, &self.desired, async || {
                let mut in_use: BTreeSet<Digest> =
                    self.pods.images().into_iter().map(|(d, _)| d).collect();
                in_use.extend(
                    self.standalone
                        .images_in_use()
                        .await
                        .into_iter()
                        .map(|(d, _)| d),
                );
                in_use
            })
            .await;
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

    /// Runs garbage collection now (after an image was untagged).
    pub async fn collect_garbage_now(&self) {
        let _guard = self.images.exclusive().await;
        // Images of apps and of containers (running or stopped) stay.
        let keep: BTreeSet<Digest> = self.image_users().await.into_keys().collect();
        self.images.collect_all(keep).await;
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
        self.standalone.stop_all().await;
        if let Some(host) = self.launcher.oci() {
            host.shutdown();
        }
        let drains = self
            .pods
            .pod_containers()
            .into_iter()
            .map(|c| async move { crate::launcher::retire(&c, grace, grace).await });
        futures_util::future::join_all(drains).await;
    }
}
