//! Changing Deployments and Services: every change is a [`Command`] submitted to the
//! desired state (durable before it is acknowledged), then the reconciler is woken.
//! Manifest files are read here, on the node, with the bounded reader: a client cannot
//! make the node parse more than [`manifest::MAX_MANIFEST_BYTES`] a file, and every document of
//! every file is checked before anything is applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff_spec::api::{ApplyResult, ManifestFile, ObjectResult};
use skiff_spec::k8s;
use skiff_spec::manifest::{self, Object};

use super::Apps;
use crate::desired::{Applied, Command, Rejected, StoredDeployment};
use crate::error::AppError;

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

impl Apps {
    /// Applies one command through the cluster's log (durable on a quorum, applied on
    /// this node before it answers) and wakes the reconciler.
    pub(crate) async fn submit(&self, command: Command) -> Result<Applied, AppError> {
        let outcome = self.consensus.write(command).await?;
        self.pods.kick();
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

    /// What this node sees of the cluster now.
    pub(crate) fn view(&self) -> std::sync::Arc<crate::cluster::View> {
        self.view.borrow().clone()
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
        let is_app_service = super::deploy::managed(&service.metadata);
        let app = !is_app_service
            && self.desired.read(|s| {
                s.state
                    .deployments
                    .get(name)
                    .is_some_and(|d| super::deploy::managed(&d.object.metadata))
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
    pub(super) fn stored(&self, name: &str) -> Result<Arc<StoredDeployment>, AppError> {
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
        Ok(self.deployment_object(&*self.stored(name)?))
    }

    /// A Deployment's revisions and events, or 404.
    pub(crate) fn rollout_history(
        &self,
        name: &str,
    ) -> Result<skiff_spec::api::RolloutHistory, AppError> {
        Ok(self.history(&*self.stored(name)?))
    }
}
