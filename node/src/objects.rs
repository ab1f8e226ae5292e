//! Deployments and Services as desired, and the verbs that change them: every change
//! is a [`Command`] submitted through the cluster's log (durable on a quorum before it
//! is acknowledged), then the reconciler is woken. It holds what the verbs need (the
//! desired store, consensus, images) and asks the [`Reconciler`] what it observed
//! (status, events, a rollout's progress), never its pod table.
//!
//! - this file: apply, delete, the commands of the Kubernetes API (scale, set image,
//!   undo, cordon go through [`Objects::submit`]), the desired reads (Deployments,
//!   Services, cordoned nodes, rollout history), the images Deployments and pods hold.
//! - `deploy`: `skiff deploy` and the upload API as a Deployment and a Service.
//!
//! Manifest files are read here, on the node, with the bounded reader: a client cannot
//! make the node parse more than [`manifest::MAX_MANIFEST_BYTES`] a file, and every
//! document of every file is checked before anything is applied. A deploy validates and
//! compiles the image before anything changes; a rollout starts new pods before it stops
//! old ones, which drain: no request fails because of a redeploy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skiff_spec::Digest;
use skiff_spec::api::{ApplyResult, ManifestFile, ObjectResult};
use skiff_spec::k8s;
use skiff_spec::manifest::{self, Object};

mod deploy;

use crate::desired::{Applied, Command, DesiredStore, Rejected, StoredDeployment};
use crate::error::AppError;
use crate::images::Images;
use crate::ingress::Ingress;
use crate::launcher::Launcher;
use crate::reconciler::Reconciler;
use crate::standalone::Standalone;
use crate::state::StateStore;

/// Most manifest files in one request.
pub const MAX_MANIFEST_FILES: usize = 64;

/// A stored Service with the status Kubernetes shows for one without an external
/// load balancer.
fn with_status(mut s: k8s::Service) -> k8s::Service {
    s.status = Some(k8s::ServiceStatus::default());
    s
}

fn result(applied: Applied) -> ObjectResult {
    let (reference, action) = match applied {
        Applied::Created(r) => (r, "created"),
        Applied::Configured(r) => (r, "configured"),
        Applied::Unchanged(r) => (r, "unchanged"),
        Applied::Deleted(r) => (r, "deleted"),
    };
    ObjectResult {
        reference,
        action: action.into(),
    }
}

/// Where and how the verbs work.
pub(crate) struct Settings {
    /// `{domain}:{port}/`, for app URLs.
    pub(crate) url_suffix: String,
    /// Deployments and Services.
    pub(crate) desired: Arc<DesiredStore>,
    /// The cluster's log, which every change goes through.
    pub(crate) consensus: Arc<crate::raft::Consensus>,
}

/// Deployments and Services as desired, and the verbs that change them.
pub(crate) struct Objects {
    images: Arc<Images>,
    /// App records of an older node (moved to Deployments at start).
    state: Arc<StateStore>,
    /// The app count metric, and routes (`remove` answers once its route is gone).
    ingress: Arc<Ingress>,
    /// `skiff run` containers: their names and images count here too.
    standalone: Arc<Standalone>,
    /// Admits a deploy against the node's memory budget.
    launcher: Arc<Launcher>,
    /// Deployments and Services, as desired.
    desired: Arc<DesiredStore>,
    /// The cluster's log: every change to `desired` goes through it.
    consensus: Arc<crate::raft::Consensus>,
    /// What the node observed: status, events, rollouts, the images pods hold.
    reconciler: Arc<Reconciler>,
    /// `http://{name}.{domain}:{port}/`
    url_suffix: String,
}

impl Objects {
    pub(crate) fn new(
        images: Arc<Images>,
        state: Arc<StateStore>,
        ingress: Arc<Ingress>,
        standalone: Arc<Standalone>,
        launcher: Arc<Launcher>,
        reconciler: Arc<Reconciler>,
        settings: Settings,
    ) -> Self {
        let Settings {
            url_suffix,
            desired,
            consensus,
        } = settings;
        Self {
            images,
            state,
            ingress,
            standalone,
            launcher,
            desired,
            consensus,
            reconciler,
            url_suffix,
        }
    }

    /// Brings the desired state up to date at start: apps of an older node become
    /// Deployments (their pods come back in the reconciler's first passes while the
    /// node serves, so the first app answers before the last is made).
    pub(crate) async fn restore(&self) -> anyhow::Result<()> {
        self.migrate_app_records().await?;
        self.ingress
            .metrics
            .set_apps(self.desired.read(|s| s.state.deployments.len()));
        Ok(())
    }

    /// Whether the state store can be written (`Err` says why not).
    pub fn state_health(&self) -> Result<(), String> {
        self.state.health()
    }

    /// Applies one command through the cluster's log (durable on a quorum, applied on
    /// this node before it answers) and wakes the reconciler.
    pub(crate) async fn submit(&self, command: Command) -> Result<Applied, AppError> {
        let outcome = self.consensus.write(command).await?;
        self.reconciler.kick();
        let outcome =
            outcome.ok_or_else(|| AppError::internal("a command's entry had no answer"))?;
        outcome.map_err(|rejected| match rejected {
            Rejected::NotFound(what) => AppError::not_found(format!("{what} not found")),
            Rejected::Invalid(why) => AppError::invalid("invalid", why),
        })
    }

    /// Nodes cordoned, by name.
    pub(crate) fn cordoned(&self) -> std::collections::BTreeSet<String> {
        self.desired.read(|s| s.state.cordoned.clone())
    }

    /// Whether a Service takes `name` (an app or container may not).
    pub(crate) fn service_named(&self, name: &str) -> bool {
        self.desired.read(|s| s.state.services.contains_key(name))
    }

    /// Reads every document of every file; refuses all of them at the first problem.
    async fn read_manifests(
        &self,
        files: &[ManifestFile],
    ) -> Result<(Vec<Object>, Vec<String>), AppError> {
        if files.is_empty() {
            return Err(AppError::invalid(
                "invalid_manifest",
                "no manifest files given",
            ));
        }
        if files.len() > MAX_MANIFEST_FILES {
            return Err(AppError::invalid(
                "invalid_manifest",
                format!(
                    "{} files; at most {MAX_MANIFEST_FILES} at once",
                    files.len()
                ),
            ));
        }
        let owned = files.to_vec();
        let parsed = tokio::task::spawn_blocking(move || {
            let mut objects = Vec::new();
            let mut warnings = Vec::new();
            let mut seen: BTreeMap<String, String> = BTreeMap::new();
            for f in &owned {
                let documents = manifest::parse(&f.source, &f.text).map_err(|e| e.to_string())?;
                for d in documents {
                    let reference = d.object.reference();
                    let place = format!("{}: document {}", f.source, d.index);
                    if let Some(first) = seen.insert(reference.clone(), place.clone()) {
                        return Err(format!(
                            "{place}: {reference} is also defined at {first}; an object may appear once"
                        ));
                    }
                    warnings.extend(d.warnings.iter().map(|w| format!("{place}: {w}")));
                    objects.push(d.object);
                }
            }
            Ok((objects, warnings))
        })
        .await
        .map_err(AppError::internal)?;
        parsed.map_err(|e| AppError::invalid("invalid_manifest", e))
    }

    /// `apply -f`: every object of every file, or none.
    pub(crate) async fn apply_files(
        &self,
        files: &[ManifestFile],
    ) -> Result<ApplyResult, AppError> {
        let (objects, warnings) = self.read_manifests(files).await?;
        for o in &objects {
            if let Object::Service(s) = o {
                self.check_service_name(s).await?;
            }
        }
        let mut results = Vec::new();
        for o in objects {
            results.push(result(self.apply_object(o).await?));
        }
        Ok(ApplyResult { results, warnings })
    }

    /// Creates or replaces one object (validated by the caller or by the manifest
    /// reader).
    pub(crate) async fn apply_object(&self, object: Object) -> Result<Applied, AppError> {
        let at = crate::clock::now_rfc3339();
        let command = match object {
            Object::Deployment(deployment) => Command::ApplyDeployment { deployment, at },
            Object::Service(service) => {
                self.check_service_name(&service).await?;
                Command::ApplyService { service, at }
            }
        };
        self.submit(command).await
    }

    /// A Service answers at its name: refused when an app or container has it (an
    /// app's own Service, which `deploy` writes, is its to replace).
    async fn check_service_name(&self, service: &k8s::Service) -> Result<(), AppError> {
        let name = service.metadata.name.as_str();
        let is_app_service = deploy::managed(&service.metadata);
        let app = !is_app_service
            && self.desired.read(|s| {
                s.state
                    .deployments
                    .get(name)
                    .is_some_and(|d| deploy::managed(&d.object.metadata))
            });
        let container = self.standalone.has_name(name).await;
        if app || container {
            let what = if app { "an app" } else { "a container" };
            return Err(AppError::conflict(format!(
                "service/{name}: the name is taken by {what} (both would answer at {name}.<domain>)"
            )));
        }
        Ok(())
    }

    /// `delete -f`: removes every object the files name (all files are read first).
    pub(crate) async fn delete_files(
        &self,
        files: &[ManifestFile],
    ) -> Result<ApplyResult, AppError> {
        let (objects, _) = self.read_manifests(files).await?;
        let mut results = Vec::new();
        for o in objects {
            let reference = o.reference();
            let command = match o {
                Object::Deployment(d) => Command::DeleteDeployment {
                    name: d.metadata.name,
                },
                Object::Service(s) => Command::DeleteService {
                    name: s.metadata.name,
                },
            };
            results.push(match self.submit(command).await {
                Ok(applied) => result(applied),
                Err(e) if e.code() == "not_found" => ObjectResult {
                    reference,
                    action: "not found".into(),
                },
                Err(e) => return Err(e),
            });
        }
        Ok(ApplyResult {
            results,
            warnings: Vec::new(),
        })
    }

    /// The stored Deployment `name`, or 404.
    pub(crate) fn stored(&self, name: &str) -> Result<Arc<StoredDeployment>, AppError> {
        self.desired
            .read(|s| s.state.deployments.get(name).cloned())
            .ok_or_else(|| AppError::not_found(format!("deployment.apps/{name} not found")))
    }

    /// The stored Deployment `name`, if there is one.
    pub(crate) fn stored_deployment(&self, name: &str) -> Option<Arc<StoredDeployment>> {
        self.desired
            .read(|s| s.state.deployments.get(name).cloned())
    }

    /// The Service `name` as it is shown, if there is one.
    pub(crate) fn service(&self, name: &str) -> Option<k8s::Service> {
        self.desired
            .read(|s| s.state.services.get(name).cloned())
            .map(with_status)
    }

    /// A Deployment with its status, or 404.
    pub(crate) fn deployment(&self, name: &str) -> Result<k8s::Deployment, AppError> {
        Ok(self.reconciler.deployment_object(&*self.stored(name)?))
    }

    /// A Deployment's revisions and events, or 404.
    pub(crate) fn rollout_history(
        &self,
        name: &str,
    ) -> Result<skiff_spec::api::RolloutHistory, AppError> {
        Ok(self.reconciler.history(&*self.stored(name)?))
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
        for (digest, pod) in self.reconciler.pod_images() {
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
                let mut in_use: BTreeSet<Digest> = self
                    .reconciler
                    .pod_images()
                    .into_iter()
                    .map(|(d, _)| d)
                    .collect();
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

    /// Runs garbage collection now (after an image was untagged, and once the start's
    /// pods are back: what a killed node left, a blob written and its image never
    /// tagged, goes then).
    pub async fn collect_garbage_now(&self) {
        let _guard = self.images.exclusive().await;
        // Images of apps and of containers (running or stopped) stay.
        let keep: BTreeSet<Digest> = self.image_users().await.into_keys().collect();
        self.images.collect_all(keep).await;
    }
}
