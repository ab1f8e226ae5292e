//! What is read of containers (and, for Docker's listing, of pods): waits, exec,
//! logs, the list, stats, inspect.

use std::collections::HashMap;
use std::sync::Arc;

use skiff_runtime::LogBook;
use skiff_spec::api::ContainerInfo;
use skiff_spec::{AppKind, RestartPolicy};
use tokio::sync::{MutexGuard, watch};

use super::{Entry, Standalone};
use crate::clock::now_ms;
use crate::container::Container;
use crate::error::AppError;

impl Standalone {
    /// `docker wait`: the container's exit code once it is not running (at once if it
    /// is not). A `--rm` container's code is kept for those waiting when it is removed.
    pub async fn wait_container(&self, key: &str) -> Result<i32, AppError> {
        self.container_waiter(key, false).await?.await
    }

    /// `wait`, or with `next` Docker's `condition=next-exit` (the code of the run that
    /// ends next: a container not running now must first start), as a future that is
    /// subscribed already: the caller may answer before it resolves.
    pub async fn container_waiter(
        &self,
        key: &str,
        next: bool,
    ) -> Result<impl Future<Output = Result<i32, AppError>> + Send + 'static, AppError> {
        let (standalone, id) = self.locate(key).await?;
        let mut rx = standalone[&id].exit.subscribe();
        drop(standalone);
        let key = key.to_string();
        Ok(async move {
            if next && rx.wait_for(Option::is_none).await.is_err() {
                return Err(AppError::not_found(format!(
                    "container {key} was removed before it ran"
                )));
            }
            let code = match rx.wait_for(Option::is_some).await {
                Ok(code) => *code,
                Err(_) => None,
            };
            let code = code.or(*rx.borrow());
            code.ok_or_else(|| {
                AppError::not_found(format!("container {key} was removed while running"))
            })
        })
    }

    /// `docker exec`: runs a command in a running Linux container (one of `run`'s or a
    /// deployment's pod), its output and exit code on the returned channel.
    pub async fn exec_container(
        &self,
        key: &str,
        spec: skiff_runtime::oci::ExecSpec,
    ) -> Result<tokio::sync::mpsc::Receiver<skiff_runtime::oci::ExecOutput>, AppError> {
        let standalone = self.entries.lock().await;
        let container = match Self::find(&standalone, key) {
            Ok(id) => {
                let entry = &standalone[&id];
                match &entry.running {
                    Some(r) => r.container.clone(),
                    None => {
                        return Err(AppError::conflict(format!(
                            "container {} is not running: start it first",
                            entry.record.spec.name
                        )));
                    }
                }
            }
            Err(e) => {
                drop(standalone);
                self.pods.pod_container(key).map(|(c, _)| c).ok_or(e)?
            }
        };
        let Some(process) = container.workload().oci_process() else {
            let what = match container.workload() {
                skiff_runtime::Workload::Static(_) => "a static site",
                _ => "a WebAssembly app",
            };
            return Err(AppError::invalid(
                "exec_unsupported",
                format!(
                    "exec is not supported for container {}: it is {what}, which has no processes to run a command beside",
                    container.name
                ),
            ));
        };
        process.exec(spec).await.map_err(|e| {
            AppError::conflict(format!("cannot exec in container {}: {e}", container.name))
        })
    }

    /// A receiver of the container's exit (see [`Entry::exit`]), if `key` is one.
    pub async fn container_exit(&self, key: &str) -> Option<watch::Receiver<Option<i32>>> {
        let standalone = self.entries.lock().await;
        Self::find(&standalone, key)
            .ok()
            .map(|id| standalone[&id].exit.subscribe())
    }

    /// The container named or id-prefixed by `key`, with the lock that guards it. A
    /// deployment's replica is managed by the deployment: that is said instead of "not
    /// found". (Locks `apps` only after releasing `standalone`, keeping the lock order.)
    pub(super) async fn locate(
        &self,
        key: &str,
    ) -> Result<(MutexGuard<'_, HashMap<String, Entry>>, String), AppError> {
        let standalone = self.entries.lock().await;
        let not_found = match Self::find(&standalone, key) {
            Ok(id) => return Ok((standalone, id)),
            Err(e) => e,
        };
        drop(standalone);
        let owner = self.pods.pod_container(key);
        Err(owner.map_or(not_found, |(container, app)| {
            AppError::conflict(format!(
                "container {} belongs to deployment {app}; change or remove the deployment instead",
                container.name
            ))
        }))
    }

    /// The log book of a container.
    pub async fn container_log(&self, key: &str) -> Result<Arc<LogBook>, AppError> {
        let standalone = self.entries.lock().await;
        if let Ok(id) = Self::find(&standalone, key) {
            return Ok(standalone[&id].log.clone());
        }
        drop(standalone);
        // A pod's output is in its deployment's log.
        self.pods
            .pod_container(key)
            .and_then(|(_, deployment)| self.pods.log(&deployment))
            .ok_or_else(|| AppError::not_found(format!("no such container: {key}")))
    }

    /// `docker ps [-a]`: standalone containers and the replicas of deployments.
    pub async fn list_containers(&self, all: bool) -> Vec<ContainerInfo> {
        let standalone = self.entries.lock().await;
        let mut out: Vec<ContainerInfo> = standalone
            .values()
            .filter(|s| all || s.running.is_some())
            .map(|s| self.info_of(s))
            .collect();
        drop(standalone);
        for (c, deployment, image, limits) in self.pods.running_pods() {
            let (ip_address, sandbox_key) = crate::launcher::network(&c);
            let app = self
                .desired
                .read(|s| s.state.deployments.get(&deployment).cloned());
            // The image as the Deployment names it: an app's own name for it, else the
            // template's (a digest pinned by `deploy` reads better short).
            let template = app.as_ref().map(|d| &d.object.spec.template);
            let image_ref = template
                .and_then(|t| t.metadata.annotations.get("skiff.dev/image-ref"))
                .map(|r| r.to_string())
                .or_else(|| {
                    template
                        .and_then(|t| t.spec.containers.first())
                        .map(|c| c.image.clone())
                        .filter(|i| !i.starts_with("sha256:"))
                })
                .unwrap_or_else(|| image.short());
            let kind = match c.workload() {
                skiff_runtime::Workload::Http(_) => skiff_spec::AppKind::Http,
                skiff_runtime::Workload::Wagi(_) => skiff_spec::AppKind::Wagi,
                skiff_runtime::Workload::Static(_) => skiff_spec::AppKind::Static,
                skiff_runtime::Workload::Oci(_) => skiff_spec::AppKind::Oci,
                // Pods of other nodes are listed by those nodes.
                skiff_runtime::Workload::Remote(_) => continue,
            };
            out.push(ContainerInfo {
                id: c.id.clone(),
                name: c.name.clone(),
                image: image_ref,
                image_id: image,
                kind,
                state: "running".into(),
                created_ms: c.started_ms,
                started_ms: c.started_ms,
                finished_ms: 0,
                exit_code: None,
                oom_killed: false,
                exit_reason: None,
                ports: vec![],
                ip_address,
                sandbox_key,
                restart: RestartPolicy::Always,
                auto_remove: false,
                labels: Default::default(),
                deployment: Some(deployment),
                limits,
                env_keys: Vec::new(),
            });
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.created_ms));
        out
    }

    /// `docker stats`: what each running container (of `run` or a deployment's pod on
    /// this node) uses now. Static sites are listed with their requests untracked.
    pub async fn container_stats(&self) -> Vec<skiff_spec::api::ContainerStats> {
        let mut containers: Vec<(Arc<Container>, Option<u64>)> = {
            let standalone = self.entries.lock().await;
            standalone
                .values()
                .filter_map(|s| {
                    let r = s.running.as_ref()?;
                    Some((r.container.clone(), s.record.oci.memory_bytes))
                })
                .collect()
        };
        containers.extend(self.pods.pod_containers().into_iter().map(|c| (c, None)));
        let machine = skiff_runtime::machine_memory();
        let mut out = Vec::new();
        for (c, oci_limit) in containers {
            let kind = match c.workload() {
                skiff_runtime::Workload::Http(_) => AppKind::Http,
                skiff_runtime::Workload::Wagi(_) => AppKind::Wagi,
                skiff_runtime::Workload::Static(_) => AppKind::Static,
                skiff_runtime::Workload::Oci(_) => AppKind::Oci,
                skiff_runtime::Workload::Remote(_) => continue,
            };
            let mut stats = skiff_spec::api::ContainerStats {
                id: c.id.clone(),
                name: c.name.clone(),
                kind,
                read_ms: now_ms(),
                cpu_ns: 0,
                memory: 0,
                memory_limit: machine,
                pids: None,
                requests: None,
                net: None,
            };
            if let Some(u) = c.workload().usage() {
                stats.cpu_ns = u.cpu_ns();
                stats.memory = u.memory();
                stats.requests = Some(u.requests());
                if let Some(m) = c.workload().instance_memory() {
                    stats.memory_limit = (m * u64::from(c.concurrency())).min(machine);
                }
            }
            if let Some(p) = c.workload().oci_process() {
                let Some(u) = p.usage() else { continue };
                stats.cpu_ns = u.cpu_ns;
                stats.memory = u.memory;
                stats.memory_limit = u.memory_limit.or(oci_limit).unwrap_or(machine).min(machine);
                stats.pids = Some(u.pids);
                stats.net = u.net;
            }
            out.push(stats);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// `docker inspect`.
    pub async fn inspect_container(&self, key: &str) -> Result<ContainerInfo, AppError> {
        let all = self.list_containers(true).await;
        all.into_iter()
            .find(|c| c.name == key || (key.len() >= 4 && c.id.starts_with(key)))
            .ok_or_else(|| AppError::not_found(format!("no such container: {key}")))
    }

    pub(super) fn info_of(&self, s: &Entry) -> ContainerInfo {
        let r = &s.record;
        let state = match (s.running.is_some(), r.started_ms) {
            (true, _) => "running",
            (false, 0) => "created",
            (false, _) => "exited",
        };
        let (ip_address, sandbox_key) = s
            .running
            .as_ref()
            .map_or((None, None), |r| crate::launcher::network(&r.container));
        ContainerInfo {
            id: r.id.clone(),
            name: r.spec.name.to_string(),
            image: r.image_ref.clone(),
            image_id: r.spec.image,
            kind: r.spec.kind,
            state: state.into(),
            created_ms: r.created_ms,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            exit_code: r.exit_code,
            oom_killed: r.oom_killed,
            exit_reason: match (r.oom_killed, r.oci.memory_bytes) {
                (true, Some(limit)) => Some(format!(
                    "OOMKilled: it reached its memory limit of {limit} bytes"
                )),
                (true, None) => Some("OOMKilled: the kernel ran out of memory".to_string()),
                (false, _) => r.exit_error.clone(),
            },
            ports: r.ports.clone(),
            ip_address,
            sandbox_key,
            restart: r.restart,
            auto_remove: r.auto_remove,
            labels: r.labels.clone(),
            deployment: None,
            limits: r.spec.limits.clone(),
            env_keys: r.spec.env.keys().cloned().collect(),
        }
    }
}
