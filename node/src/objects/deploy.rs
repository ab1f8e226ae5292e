//! Docker's half on the Kubernetes half: `skiff deploy`, the upload API and `skiff apps`
//! are a Deployment and a Service of the app's name.
//!
//! A deploy checks and compiles (or extracts) the image first, so a bad one is refused
//! with nothing changed; then it writes a Deployment whose pod template pins the image
//! by digest and carries the deploy's settings, and a Service (round-robin, as apps
//! always were) selecting its pods; then it waits until the reconciler has rolled the
//! new pods out (ready, old ones stopped), as `deploy` always answered once the new
//! replicas served. Each deploy stamps its template, so every deploy is a new revision
//! (Docker's redeploy replaces the containers; `rollout undo` works on apps too). If the
//! new pods cannot start, the Deployment goes back to what it was and the deploy fails
//! with the pods' error.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use skiff_image::oci::{Descriptor, RunConfig};
use skiff_image::{ImageError, ImageName, ImageSummary, StagedBlob, detect_kind};
use skiff_spec::api::AppStatus;
use skiff_spec::k8s::{self, Deployment, Service};
use skiff_spec::manifest::{Object, validate_deployment, validate_service};
use skiff_spec::{AppKind, AppName, DeployParams, Digest};
use tracing::info;

use super::Objects;
use crate::desired::{Applied, Command};
use crate::error::AppError;
use crate::images::image_spec;
use crate::state::AppRecord;

/// The label that selects an app's pods.
pub(crate) const APP_LABEL: &str = "skiff.dev/app";
/// Marks the Deployments and Services `deploy` manages.
const MANAGED_ANNOTATION: &str = "skiff.dev/managed-by";
const MANAGED: &str = "skiff-deploy";
/// The image as the deploy named it (`hello:latest`).
const IMAGE_REF_ANNOTATION: &str = "skiff.dev/image-ref";
/// When the deploy was made: every deploy is a new revision.
const DEPLOYED_AT_ANNOTATION: &str = "skiff.dev/deployed-at";
/// How long a deploy waits for its pods.
const ROLLOUT_WAIT: Duration = Duration::from_secs(60);

pub(super) fn managed(meta: &k8s::ObjectMeta) -> bool {
    meta.annotations.get(MANAGED_ANNOTATION).map(|v| v.as_str()) == Some(MANAGED)
}

/// The Deployment and Service of app `name` running `digest` with `params`.
fn app_objects(
    name: &AppName,
    params: &DeployParams,
    digest: Digest,
    image_ref: &str,
    kind: AppKind,
    at: &str,
) -> Result<(Deployment, Service), AppError> {
    let mut annotations = serde_json::Map::new();
    let mut put = |k: &str, v: String| {
        annotations.insert(k.to_string(), serde_json::Value::String(v));
    };
    put(IMAGE_REF_ANNOTATION, image_ref.to_string());
    put(DEPLOYED_AT_ANNOTATION, at.to_string());
    if let Some(t) = params.timeout {
        put(
            skiff_spec::manifest::TIMEOUT_ANNOTATION,
            format!("{}ms", t.as_millis()),
        );
    }
    if let Some(c) = params.concurrency {
        put(skiff_spec::manifest::CONCURRENCY_ANNOTATION, c.to_string());
    }
    if !params.allowed_hosts.is_empty() {
        put(
            skiff_spec::manifest::ALLOWED_HOSTS_ANNOTATION,
            params.allowed_hosts.join(","),
        );
    }
    if kind == AppKind::Oci {
        // As `deploy` always did: a Linux replica takes requests at once, and its proxy
        // holds them until the process listens.
        put(crate::reconciler::READY_ANNOTATION, "at-start".into());
    }
    let mut container = serde_json::json!({
        "name": name.as_str(),
        "image": digest.to_string(),
        "env": params.env.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
    });
    if let Some(m) = params.memory_bytes {
        container["resources"] = serde_json::json!({"limits": {"memory": m.to_string()}});
    }
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name.as_str(),
            "annotations": {MANAGED_ANNOTATION: MANAGED},
        },
        "spec": {
            "replicas": params.replicas.unwrap_or(1),
            "selector": {"matchLabels": {APP_LABEL: name.as_str()}},
            "template": {
                "metadata": {"labels": {APP_LABEL: name.as_str()}, "annotations": annotations},
                "spec": {"containers": [container]},
            },
        },
    });
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name.as_str(),
            "annotations": {
                MANAGED_ANNOTATION: MANAGED,
                skiff_spec::manifest::LOAD_BALANCER_ANNOTATION: "round-robin",
            },
        },
        "spec": {"selector": {APP_LABEL: name.as_str()}, "ports": [{"port": 80}]},
    });
    let deployment: Deployment = serde_json::from_value(deployment).map_err(AppError::internal)?;
    let service: Service = serde_json::from_value(service).map_err(AppError::internal)?;
    let problems: Vec<String> = validate_deployment(&deployment)
        .into_iter()
        .chain(validate_service(&service))
        .collect();
    if let Some(p) = problems.first() {
        return Err(AppError::invalid("invalid_parameter", p.clone()));
    }
    Ok((deployment, service))
}

impl Objects {
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

    /// Writes app `name`'s Deployment and Service and waits for its pods: `(created,
    /// status)`. The image was checked and prepared by the caller; `_prepared` keeps its
    /// compiled code warm until the pods have it.
    pub(super) async fn install<P>(
        &self,
        name: AppName,
        params: DeployParams,
        (summary, image_ref): (ImageSummary, String),
        _prepared: P,
    ) -> Result<(bool, AppStatus), AppError> {
        if self.standalone.has_name(name.as_str()).await {
            return Err(AppError::conflict(format!(
                "the name {name} is already used by a container"
            )));
        }
        let (previous, previous_service) = self.desired.read(|s| {
            (
                s.state.deployments.get(name.as_str()).cloned(),
                s.state.services.get(name.as_str()).cloned(),
            )
        });
        if let Some(d) = &previous
            && !managed(&d.object.metadata)
        {
            return Err(AppError::conflict(format!(
                "deployment.apps/{name} was applied from a manifest; change it with skiff apply"
            )));
        }
        if let Some(s) = &previous_service
            && !managed(&s.metadata)
        {
            return Err(AppError::conflict(format!(
                "the name {name} is already used by a Service"
            )));
        }
        let spec = image_spec(params.clone(), &summary, name.clone());
        if matches!(spec.kind, AppKind::Http | AppKind::Wagi) {
            self.launcher.admit(&spec.limits)?;
        }
        let (deployment, service) = app_objects(
            &name,
            &params,
            summary.digest,
            &image_ref,
            spec.kind,
            &crate::clock::now_rfc3339(),
        )?;
        let applied = self
            .apply_object(Object::Deployment(Box::new(deployment)))
            .await?;
        if let Err(e) = self.apply_object(Object::Service(Box::new(service))).await {
            self.undo_install(&name, previous, previous_service).await;
            return Err(e);
        }
        if let Err(e) = self.wait_rollout(name.as_str()).await {
            self.undo_install(&name, previous, previous_service).await;
            return Err(e);
        }
        self.ingress
            .metrics
            .set_apps(self.desired.read(|s| s.state.deployments.len()));
        let status = self.status(&name).await?;
        info!(app = %name, image = %summary.digest, kind = %spec.kind, replicas = status.replicas, generation = status.generation, "app deployed");
        Ok((matches!(applied, Applied::Created(_)), status))
    }

    /// Puts app `name`'s objects back as they were before a deploy that failed.
    async fn undo_install(
        &self,
        name: &AppName,
        previous: Option<Arc<crate::desired::StoredDeployment>>,
        previous_service: Option<Service>,
    ) {
        let restored = match previous {
            Some(d) => {
                self.apply_object(Object::Deployment(Box::new(d.object.clone())))
                    .await
            }
            None => {
                self.submit(Command::DeleteDeployment {
                    name: name.to_string(),
                })
                .await
            }
        };
        let service = match previous_service {
            Some(s) => self.apply_object(Object::Service(Box::new(s))).await,
            None => {
                self.submit(Command::DeleteService {
                    name: name.to_string(),
                })
                .await
            }
        };
        for r in [restored, service] {
            if let Err(e) = r
                && e.code() != "not_found"
            {
                tracing::warn!(app = %name, error = %e, "could not put the app back after a failed deploy");
            }
        }
    }

    /// Waits until Deployment `name`'s rollout is done, or fails with why its new pods
    /// cannot start.
    async fn wait_rollout(&self, name: &str) -> Result<(), AppError> {
        let mut passes = self.reconciler.passes();
        let deadline = tokio::time::Instant::now() + ROLLOUT_WAIT;
        loop {
            let d = self
                .desired
                .read(|s| s.state.deployments.get(name).cloned())
                .ok_or_else(|| AppError::not_found(format!("app {name} was removed")))?;
            let (done, failure) = self.reconciler.rollout_progress(&d);
            if let Some(e) = failure {
                return Err(e);
            }
            if done {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, passes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(AppError::internal("the reconciler stopped")),
                Err(_) => {
                    return Err(AppError::NotReady(format!(
                        "the app's replicas did not become ready within {} s",
                        ROLLOUT_WAIT.as_secs()
                    )));
                }
            }
        }
    }

    /// Removes app `name`: its Deployment and Service; answers once its route is gone.
    pub async fn remove(&self, name: &AppName) -> Result<(), AppError> {
        let known = self
            .desired
            .read(|s| s.state.deployments.contains_key(name.as_str()));
        if !known {
            return Err(AppError::not_found(format!("app {name} not found")));
        }
        let pinned = self.pinned_by(name.as_str());
        let service_is_ours = self.desired.read(|s| {
            s.state
                .services
                .get(name.as_str())
                .is_some_and(|s| managed(&s.metadata))
        });
        self.submit(Command::DeleteDeployment {
            name: name.to_string(),
        })
        .await?;
        if service_is_ours {
            self.submit(Command::DeleteService {
                name: name.to_string(),
            })
            .await?;
        }
        // The next pass takes the route and the pods away.
        let mut passes = self.reconciler.passes();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.ingress.table.get(name.as_str()).is_some() {
                if passes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.ingress
            .metrics
            .set_apps(self.desired.read(|s| s.state.deployments.len()));
        let _guard = self.images.exclusive().await;
        self.collect_images(pinned).await;
        info!(app = %name, "app removed");
        Ok(())
    }

    /// One app's status: a Deployment as `skiff apps` shows it.
    pub async fn status(&self, name: &AppName) -> Result<AppStatus, AppError> {
        let d = self
            .desired
            .read(|s| s.state.deployments.get(name.as_str()).cloned())
            .ok_or_else(|| AppError::not_found(format!("app {name} not found")))?;
        self.app_status(&d).await
    }

    /// At most `limit` apps in name order after the app named `after`, the last name
    /// looked at, and how many deployments come after it: the cost is the page's, not
    /// the node's.
    pub async fn list_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<AppStatus>, Option<String>, u64) {
        use std::ops::Bound::{Excluded, Unbounded};
        let (page, remaining): (Vec<_>, u64) = self.desired.read(|s| {
            let from = after.map_or(Unbounded, Excluded);
            let mut range = s.state.deployments.range::<str, _>((from, Unbounded));
            let page: Vec<_> = range.by_ref().take(limit).map(|(_, d)| d.clone()).collect();
            (page, range.count() as u64)
        });
        let mut out = Vec::with_capacity(page.len());
        for d in &page {
            if let Ok(s) = self.app_status(d).await {
                out.push(s);
            }
        }
        let last = page.last().map(|d| d.object.metadata.name.clone());
        (out, last, remaining)
    }

    /// Every app (Deployment), by name.
    pub async fn list(&self) -> Vec<AppStatus> {
        let deployments: Vec<_> = self
            .desired
            .read(|s| s.state.deployments.values().cloned().collect());
        let mut out = Vec::new();
        for d in &deployments {
            if let Ok(s) = self.app_status(d).await {
                out.push(s);
            }
        }
        out
    }

    async fn app_status(
        &self,
        d: &crate::desired::StoredDeployment,
    ) -> Result<AppStatus, AppError> {
        let object = &d.object;
        let name = AppName::new(object.metadata.name.clone()).map_err(AppError::internal)?;
        let template = &object.spec.template;
        let image_ref = template
            .metadata
            .annotations
            .get(IMAGE_REF_ANNOTATION)
            .map(|r| r.to_string())
            .or_else(|| template.spec.containers.first().map(|c| c.image.clone()))
            .unwrap_or_default();
        let image = template
            .spec
            .containers
            .first()
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let pods = self.reconciler.pod_statuses(&object.metadata.name);
        let ready = pods.iter().filter(|(_, ready, _)| *ready).count() as u32;
        let replicas = u32::try_from(object.spec.replicas.unwrap_or(1)).unwrap_or(0);
        // The image as it runs: from the store when it is there (kind, size, defaults).
        let summary = match self.images.resolve(&image).await {
            Ok(digest) => self.images.summary(digest).await.ok(),
            Err(_) => None,
        };
        let waiting = pods.iter().find_map(|(_, _, why)| why.clone());
        let message = waiting.or_else(|| {
            (ready < replicas).then(|| format!("{ready} of {replicas} replicas ready"))
        });
        let ms = |ts: &str| {
            humantime::parse_rfc3339(ts)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64)
        };
        let created_ms = object.metadata.creation_timestamp.as_deref().map_or(0, ms);
        let updated_ms = ms(&d.current().at);
        let (kind, digest, size, limits, env_keys, allowed_hosts) = match &summary {
            Some(summary) => {
                let spec = crate::reconciler::pod_spec(name.as_str(), template, summary)?;
                (
                    spec.kind,
                    summary.digest,
                    summary.size,
                    spec.limits,
                    spec.env.keys().cloned().collect(),
                    spec.allowed_hosts,
                )
            }
            None => (
                AppKind::Static,
                image
                    .parse::<Digest>()
                    .unwrap_or_else(|_| Digest::from_sha256([0; 32])),
                0,
                skiff_spec::Limits::default(),
                Vec::new(),
                Vec::new(),
            ),
        };
        Ok(AppStatus {
            name: name.to_string(),
            kind,
            image: digest,
            image_ref,
            image_size: size,
            replicas,
            ready,
            generation: u64::try_from(object.metadata.generation.unwrap_or(1)).unwrap_or(1),
            created_ms,
            updated_ms,
            limits,
            env_keys,
            allowed_hosts,
            url: format!("http://{}.{}", name, self.url_suffix),
            message,
            containers: pods.into_iter().map(|(c, _, _)| c).collect(),
        })
    }

    /// Moves apps recorded by a node from before Deployments into the desired state:
    /// each becomes its Deployment and Service (once), and its record goes.
    pub(super) async fn migrate_app_records(&self) -> anyhow::Result<()> {
        let state = self.state.clone();
        let records: Vec<AppRecord> = tokio::task::spawn_blocking(move || state.apps()).await??;
        for record in records {
            let spec = &record.spec;
            let name = spec.name.clone();
            if !self
                .desired
                .read(|s| s.state.deployments.contains_key(name.as_str()))
            {
                let params = DeployParams {
                    env: spec
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    memory_bytes: Some(spec.limits.memory_bytes),
                    timeout: Some(spec.limits.timeout()),
                    replicas: Some(spec.replicas),
                    concurrency: Some(spec.limits.concurrency),
                    allowed_hosts: spec.allowed_hosts.clone(),
                    image: None,
                };
                let image_ref = if record.image_ref.is_empty() {
                    spec.image.to_string()
                } else {
                    record.image_ref.clone()
                };
                let (d, s) = app_objects(
                    &name,
                    &params,
                    spec.image,
                    &image_ref,
                    spec.kind,
                    &crate::clock::now_rfc3339(),
                )
                .map_err(|e| anyhow::anyhow!("app {name}: {e}"))?;
                self.apply_object(Object::Deployment(Box::new(d)))
                    .await
                    .map_err(|e| anyhow::anyhow!("app {name}: {e}"))?;
                if !self.service_named(name.as_str()) {
                    self.apply_object(Object::Service(Box::new(s)))
                        .await
                        .map_err(|e| anyhow::anyhow!("app {name}: {e}"))?;
                }
                info!(app = %name, "app moved to a Deployment and a Service");
            }
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || state.delete_app(&name)).await??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use skiff_image::ImageStore;
    use skiff_image::oci::RunConfig;

    use super::*;
    use crate::state::StateStore;

    /// A WAGI module answering `migrated`.
    const WAGI: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "content-type: text/plain\n\nmigrated\n")
        (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 35))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

    #[tokio::test]
    async fn apps_an_older_node_recorded_become_deployments_and_serve() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::open(&dir.path().join("images")).unwrap();
        let mut w = images.blobs().writer(1 << 20).unwrap();
        w.write(&wat::parse_str(WAGI).unwrap()).unwrap();
        let staged = w.finish().unwrap();
        let size = staged.len();
        let layer = staged.commit().unwrap();
        let desc = images
            .add_wasm(
                layer,
                size,
                AppKind::Wagi,
                RunConfig::default(),
                "2026-01-01T00:00:00Z",
            )
            .unwrap();
        drop(images);
        let params = DeployParams {
            replicas: Some(2),
            ..DeployParams::default()
        };
        let record = AppRecord {
            spec: params.into_spec(AppName::new("old").unwrap(), desc.digest, AppKind::Wagi),
            image_ref: "old:latest".into(),
            created_ms: 1,
            updated_ms: 2,
            generation: 4,
        };
        StateStore::open(&dir.path().join("state.redb"))
            .unwrap()
            .put_app(&record)
            .unwrap();

        let node = crate::start(crate::NodeConfig::for_test(dir.path().to_path_buf()))
            .await
            .unwrap();
        let apps = &node.shared.objects;
        // The node serves while it restores: the app answers once its pods are back.
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            node.shared.reconciler.wait_restored(),
        )
        .await
        .expect("restored within 30 s");
        let d = apps.deployment("old").unwrap();
        assert_eq!(d.spec.replicas, Some(2));
        assert!(apps.service_named("old"));
        assert!(
            apps.state.apps().unwrap().is_empty(),
            "the old record is gone"
        );
        let addr = node.ingress_addr;
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: old.localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("migrated\n"), "{answer}");
        node.shutdown_token().cancel();
        node.wait().await.unwrap();
    }
}
