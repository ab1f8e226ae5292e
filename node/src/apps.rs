//! The supervisor: turns desired state (app records) into running containers and keeps
//! the routing table pointing at them.
//!
//! A deploy validates and compiles the image before anything changes, builds the new
//! containers, persists the record, and only then swaps the route in one atomic step.
//! The old containers drain: requests already on them finish, new ones go to the new
//! containers. No request fails because of a redeploy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use skiff_gateway::RoutingTable;
use skiff_image::{BlobStore, StagedBlob, detect_kind};
use skiff_runtime::{Compiled, ContainerConfig, LogBook, Runtime};
use skiff_spec::api::AppStatus;
use skiff_spec::{AppName, AppSpec, DeployParams};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::api::ApiError;
use crate::container::{Container, ContainerState};
use crate::metrics::Metrics;
use crate::state::{AppRecord, StateStore};

/// Lines of output kept per app.
const LOG_LINES: usize = 2000;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What runs for one app.
struct AppEntry {
    record: AppRecord,
    image_size: u64,
    log: Arc<LogBook>,
    containers: Vec<Arc<Container>>,
    /// Why the app is not serving, when it is not.
    message: Option<String>,
}

/// The node's apps: desired state, running containers, routes.
pub struct Apps {
    runtime: Runtime,
    blobs: BlobStore,
    state: Arc<StateStore>,
    table: Arc<RoutingTable<Container>>,
    metrics: Arc<Metrics>,
    /// One deploy or removal at a time changes the app map; compiles run outside it.
    apps: Mutex<HashMap<AppName, AppEntry>>,
    /// `http://{name}.{domain}:{port}/`
    url_suffix: String,
}

impl Apps {
    pub(crate) fn new(
        runtime: Runtime,
        blobs: BlobStore,
        state: Arc<StateStore>,
        table: Arc<RoutingTable<Container>>,
        metrics: Arc<Metrics>,
        url_suffix: String,
    ) -> Self {
        Self {
            runtime,
            blobs,
            state,
            table,
            metrics,
            apps: Mutex::new(HashMap::new()),
            url_suffix,
        }
    }

    /// Brings back every persisted app (compiled code comes from the cache). An app that
    /// cannot start is kept, with the reason, rather than stopping the node.
    pub async fn restore(&self) -> anyhow::Result<()> {
        let state = self.state.clone();
        let records = tokio::task::spawn_blocking(move || state.apps()).await??;
        let mut apps = self.apps.lock().await;
        for record in records {
            let name = record.spec.name.clone();
            let log = LogBook::new(LOG_LINES);
            let mut entry = AppEntry {
                image_size: 0,
                log,
                containers: Vec::new(),
                message: None,
                record,
            };
            match self.start_containers(&entry.record.spec, &entry.log).await {
                Ok((containers, size)) => {
                    entry.image_size = size;
                    self.route(&name, &containers);
                    entry.containers = containers;
                    info!(app = %name, replicas = entry.containers.len(), "app restored");
                }
                Err(e) => {
                    warn!(app = %name, error = %e, "app could not be restored");
                    entry.message = Some(e.to_string());
                }
            }
            apps.insert(name, entry);
        }
        self.metrics.set_apps(apps.len());
        Ok(())
    }

    /// Compiles the app's image and starts its replicas (not yet routed).
    async fn start_containers(
        &self,
        spec: &AppSpec,
        log: &Arc<LogBook>,
    ) -> Result<(Vec<Arc<Container>>, u64), ApiError> {
        let blobs = self.blobs.clone();
        let digest = spec.image;
        let wasm = tokio::task::spawn_blocking(move || blobs.read_verified(&digest))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let size = wasm.len() as u64;
        let compiled = self.compile(spec, wasm).await?;
        Ok((self.containers(spec, &compiled, log)?, size))
    }

    async fn compile(&self, spec: &AppSpec, wasm: Vec<u8>) -> Result<Arc<Compiled>, ApiError> {
        let compiled = self
            .runtime
            .compile(spec.image, spec.kind, wasm.into())
            .await
            .map_err(|e| match e {
                skiff_runtime::CompileError::Invalid { .. } => {
                    ApiError::bad_request("invalid_wasm", e.to_string())
                }
                other => ApiError::internal(other),
            })?;
        self.metrics
            .compile(compiled.from_cache, compiled.took.as_secs_f64());
        Ok(compiled)
    }

    fn containers(
        &self,
        spec: &AppSpec,
        compiled: &Compiled,
        log: &Arc<LogBook>,
    ) -> Result<Vec<Arc<Container>>, ApiError> {
        let env: Vec<(String, String)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let allowed: Arc<[String]> = spec.allowed_hosts.clone().into();
        // Like a pod-template hash: containers of the same spec share it, a redeploy
        // with other settings (even of the same image) gets new names.
        let spec_json = serde_json::to_vec(spec).map_err(ApiError::internal)?;
        let generation_tag = &hex::encode(Sha256::digest(&spec_json))[..10];
        let started = now_ms();
        (0..spec.replicas)
            .map(|i| {
                let name = format!("{}-{generation_tag}-{i}", spec.name);
                let config = ContainerConfig {
                    name: name.clone().into(),
                    env: env.clone(),
                    limits: spec.limits.clone(),
                    allowed_hosts: allowed.clone(),
                    log: log.clone(),
                };
                let workload = self
                    .runtime
                    .prepare(compiled, config)
                    .map_err(|e| ApiError::bad_request("unsupported_imports", e.to_string()))?;
                let c = Container::new(
                    name,
                    spec.name.clone(),
                    workload,
                    spec.limits.concurrency,
                    started,
                );
                c.transition(ContainerState::Ready)
                    .map_err(ApiError::internal)?;
                Ok(Arc::new(c))
            })
            .collect()
    }

    fn route(
        &self,
        name: &AppName,
        containers: &[Arc<Container>],
    ) -> Option<Arc<skiff_gateway::Backends<Container>>> {
        self.table.set(name.as_str(), containers.to_vec())
    }

    /// Deploys (or redeploys) `name` from an uploaded binary. Nothing changes unless the
    /// binary validates, compiles and links.
    pub async fn deploy(
        &self,
        name: AppName,
        params: DeployParams,
        staged: StagedBlob,
    ) -> Result<(bool, AppStatus), ApiError> {
        let (staged, wasm) = tokio::task::spawn_blocking(move || {
            let wasm = staged.read();
            (staged, wasm)
        })
        .await
        .map_err(ApiError::internal)?;
        let wasm = wasm.map_err(ApiError::internal)?;
        let kind =
            detect_kind(&wasm).map_err(|e| ApiError::bad_request("invalid_wasm", e.to_string()))?;
        let spec = params.into_spec(name.clone(), staged.digest(), kind);
        let image_size = staged.len();
        let compiled = self.compile(&spec, wasm).await?;
        let log = {
            let apps = self.apps.lock().await;
            apps.get(&name)
                .map_or_else(|| LogBook::new(LOG_LINES), |e| e.log.clone())
        };
        let containers = self.containers(&spec, &compiled, &log)?;

        let mut apps = self.apps.lock().await;
        // Committed under the lock: a removal collecting unused images cannot delete this
        // blob between its commit and the record that refers to it.
        tokio::task::spawn_blocking(move || staged.commit())
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let now = now_ms();
        let previous = apps.get(&name).map(|e| e.record.clone());
        let record = AppRecord {
            spec: spec.clone(),
            created_ms: previous.as_ref().map_or(now, |p| p.created_ms),
            updated_ms: now,
            generation: previous.as_ref().map_or(1, |p| p.generation + 1),
        };
        let state = self.state.clone();
        let to_save = record.clone();
        tokio::task::spawn_blocking(move || state.put_app(&to_save))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;

        self.route(&name, &containers);
        let old = apps.insert(
            name.clone(),
            AppEntry {
                record,
                image_size,
                log,
                containers,
                message: None,
            },
        );
        self.metrics.set_apps(apps.len());
        if let Some(old) = old {
            self.retire(old.containers, &old.record.spec);
            self.collect_image(&apps, old.record.spec.image);
        }
        let entry = &apps[&name];
        info!(app = %name, image = %spec.image, kind = %spec.kind, replicas = spec.replicas, generation = entry.record.generation, "app deployed");
        Ok((previous.is_none(), self.status_of(entry)))
    }

    /// Drains replaced or removed containers in the background.
    fn retire(&self, containers: Vec<Arc<Container>>, spec: &AppSpec) {
        let grace = spec.limits.timeout() + Duration::from_secs(1);
        for c in containers {
            tokio::spawn(async move { c.drain(grace).await });
        }
    }

    /// Deletes an image blob no app refers to any more.
    fn collect_image(&self, apps: &HashMap<AppName, AppEntry>, digest: skiff_spec::Digest) {
        if apps.values().any(|e| e.record.spec.image == digest) {
            return;
        }
        if let Err(e) = self.blobs.remove(&digest) {
            warn!(image = %digest, error = %e, "failed to remove unused image");
        }
    }

    /// Removes an app: its record, its route, its containers (after draining).
    pub async fn remove(&self, name: &AppName) -> Result<(), ApiError> {
        let mut apps = self.apps.lock().await;
        if !apps.contains_key(name) {
            return Err(ApiError::not_found(format!("app {name} not found")));
        }
        let state = self.state.clone();
        let key = name.clone();
        tokio::task::spawn_blocking(move || state.delete_app(&key))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        self.table.remove(name.as_str());
        let entry = apps.remove(name).expect("checked above");
        self.metrics.set_apps(apps.len());
        self.retire(entry.containers, &entry.record.spec);
        self.collect_image(&apps, entry.record.spec.image);
        info!(app = %name, "app removed");
        Ok(())
    }

    /// One app's status.
    pub async fn status(&self, name: &AppName) -> Result<AppStatus, ApiError> {
        let apps = self.apps.lock().await;
        apps.get(name)
            .map(|e| self.status_of(e))
            .ok_or_else(|| ApiError::not_found(format!("app {name} not found")))
    }

    /// Every app's status, by name.
    pub async fn list(&self) -> Vec<AppStatus> {
        let apps = self.apps.lock().await;
        let mut out: Vec<AppStatus> = apps.values().map(|e| self.status_of(e)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The app's log book.
    pub async fn log(&self, name: &AppName) -> Result<Arc<LogBook>, ApiError> {
        let apps = self.apps.lock().await;
        apps.get(name)
            .map(|e| e.log.clone())
            .ok_or_else(|| ApiError::not_found(format!("app {name} not found")))
    }

    fn status_of(&self, e: &AppEntry) -> AppStatus {
        let spec = &e.record.spec;
        let ready = e
            .containers
            .iter()
            .filter(|c| c.state() == ContainerState::Ready)
            .count() as u32;
        let message = e.message.clone().or_else(|| {
            (ready < spec.replicas).then(|| format!("{ready} of {} replicas ready", spec.replicas))
        });
        AppStatus {
            name: spec.name.to_string(),
            kind: spec.kind,
            image: spec.image,
            image_size: e.image_size,
            replicas: spec.replicas,
            ready,
            generation: e.record.generation,
            created_ms: e.record.created_ms,
            updated_ms: e.record.updated_ms,
            limits: spec.limits.clone(),
            env_keys: spec.env.keys().cloned().collect(),
            allowed_hosts: spec.allowed_hosts.clone(),
            url: format!("http://{}.{}", spec.name, self.url_suffix),
            message,
            containers: e.containers.iter().map(|c| c.status()).collect(),
        }
    }

    /// Stops routing to every container and drains them (node shutdown).
    pub async fn drain_all(&self, grace: Duration) {
        let apps = self.apps.lock().await;
        let drains = apps
            .values()
            .flat_map(|e| e.containers.iter().cloned())
            .map(|c| async move { c.drain(grace).await });
        futures_util::future::join_all(drains).await;
    }
}
