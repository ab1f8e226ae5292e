//! Pods made and stopped: a pod's container built from its template (image pulled
//! from a peer when missing, prepared, launched), its exits, its stop.

use std::sync::Arc;
use std::time::Duration;

use skiff_image::ImageSummary;
use skiff_runtime::LogBook;
use skiff_runtime::oci::Exit;
use skiff_spec::k8s::PodTemplateSpec;
use skiff_spec::manifest::annotation_params;
use skiff_spec::{AppKind, AppName, AppSpec, Digest};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::*;
use crate::clock::now_ms;
use crate::container::Container;
use crate::error::AppError;
use crate::images::image_spec;
use crate::launcher::{self, LinuxStart};
use crate::state::OciOptions;

/// Random lowercase letters and digits without vowels (Kubernetes' pod-name suffix).
pub(super) fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The app spec of a pod of `deployment` from `template`, with the image's defaults.
pub(crate) fn pod_spec(
    deployment: &str,
    template: &PodTemplateSpec,
    summary: &ImageSummary,
) -> Result<AppSpec, AppError> {
    let c = template
        .spec
        .containers
        .first()
        .ok_or_else(|| AppError::invalid("invalid_manifest", "the pod has no container"))?;
    let invalid = |e: String| AppError::invalid("invalid_manifest", e);
    let mut params = annotation_params(&template.metadata.annotations).map_err(invalid)?;
    params.env = c
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    params.memory_bytes = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.get("memory"))
        .map(|q| q.bytes())
        .transpose()
        .map_err(|e| invalid(format!("resources.limits.memory: {e}")))?;
    params.replicas = Some(1);
    let name = AppName::new(deployment.to_string()).map_err(AppError::internal)?;
    let mut spec = image_spec(params, summary, name);
    // As Kubernetes: `command` replaces the image's ENTRYPOINT, `args` its CMD.
    if !c.command.is_empty() || !c.args.is_empty() {
        let entry = if c.command.is_empty() {
            summary.run.entrypoint.clone()
        } else {
            c.command.clone()
        };
        spec.args = entry.into_iter().chain(c.args.iter().cloned()).collect();
    }
    Ok(spec)
}

impl Reconciler {
    /// Stops a pod: out of its Services, drained, its process stopped, then forgotten.
    pub(super) fn stop_pod(&self, pod: &str) {
        let mut inner = self.pods.lock();
        let Some(p) = inner.pods.get_mut(pod) else {
            return;
        };
        match &p.state {
            PodState::Waiting { .. } => {
                inner.remove_pod(pod);
            }
            PodState::Terminating { .. } => {}
            PodState::Running {
                container,
                probes,
                limits,
                ..
            } => {
                probes.cancel();
                let (container, grace) =
                    (container.clone(), limits.timeout() + Duration::from_secs(1));
                p.state = PodState::Terminating {
                    container: container.clone(),
                    since: crate::clock::now_rfc3339(),
                };
                let labels = p.labels.clone();
                let services: Vec<String> = inner
                    .selectors
                    .selecting(&labels)
                    .into_iter()
                    .map(String::from)
                    .collect();
                let (table, pod) = (self.pods.clone(), pod.to_string());
                let metrics = self.ingress.metrics.clone();
                tokio::spawn(async move {
                    launcher::retire(&container, grace, launcher::STOP_GRACE).await;
                    let mut inner = table.lock();
                    if let Some(p) = inner.remove_pod(&pod) {
                        inner.queue.add(ObjectRef::Deployment(p.deployment.into()));
                    }
                    drop(inner);
                    metrics.forget_endpoint(&pod, services.iter().map(String::as_str));
                    table.kick();
                });
            }
        }
    }

    /// Makes a waiting pod's container; on failure the pod waits for the back-off.
    pub(super) async fn launch(&self, pod: &str) {
        let (deployment, template, log) = {
            let mut inner = self.pods.lock();
            let Some(p) = inner.pods.get(pod) else {
                return;
            };
            if !matches!(p.state, PodState::Waiting { .. }) {
                return;
            }
            let (deployment, template) = (p.deployment.to_string(), p.template.clone());
            let log = inner
                .logs
                .entry(deployment.clone())
                .or_insert_with(|| LogBook::new(LOG_LINES))
                .clone();
            (deployment, template, log)
        };
        let made = self.make_pod(pod, &deployment, &template, &log).await;
        let mut inner = self.pods.lock();
        let waiting = inner
            .pods
            .get(pod)
            .is_some_and(|p| matches!(p.state, PodState::Waiting { .. }));
        if !waiting {
            // Stopped while it was being made.
            if let Ok((container, ..)) = made {
                tokio::spawn(async move {
                    launcher::retire(&container, Duration::ZERO, Duration::ZERO).await;
                });
            }
            return;
        }
        let p = inner.pods.get_mut(pod).expect("checked above");
        match made {
            Ok((container, image, limits)) => {
                let probes = CancellationToken::new();
                p.state = PodState::Running {
                    container: container.clone(),
                    image,
                    ready_since: None,
                    probes: probes.clone(),
                    limits,
                };
                let spec = template.spec.containers[0].clone();
                let at_start = template
                    .metadata
                    .annotations
                    .get(READY_ANNOTATION)
                    .is_some_and(|v| v == "at-start");
                info!(pod, deployment, "pod started");
                tokio::spawn(watch_pod(
                    self.pods.clone(),
                    pod.to_string(),
                    container,
                    spec,
                    at_start,
                    probes,
                ));
            }
            Err(e) => {
                p.crashes += 1;
                let wait = backoff_ms(p.crashes);
                let reason = match e.code() {
                    "not_found" => "ErrImagePull",
                    launcher::CONFIG_ERROR => "CreateContainerConfigError",
                    _ => "CreateContainerError",
                };
                p.state = PodState::Waiting {
                    reason,
                    message: e.message().to_string(),
                    retry_ms: now_ms() + wait,
                    failure: Some(e.clone()),
                };
                warn!(pod, deployment, error = %e, "pod could not start; trying again after a back-off");
                inner.event(
                    &deployment,
                    "Warning",
                    "Failed",
                    format!("pod {pod}: {}", e.message()),
                );
            }
        }
    }

    /// A pod's container from its template: the image resolved, compiled or extracted,
    /// and a container made (Wasm, static) or started (Linux), not ready yet.
    pub(super) async fn make_pod(
        &self,
        pod: &str,
        deployment: &str,
        template: &PodTemplateSpec,
        log: &Arc<LogBook>,
    ) -> Result<(Arc<Container>, Digest, skiff_spec::Limits), AppError> {
        let c = template
            .spec
            .containers
            .first()
            .ok_or_else(|| AppError::invalid("invalid_manifest", "the pod has no container"))?;
        let digest = match self.images.resolve(&c.image).await {
            Err(AppError::NotFound(why)) => {
                // Not here: another node may have it.
                if !self.images.pull_from_peers(&c.image).await? {
                    return Err(AppError::NotFound(why));
                }
                self.images.resolve(&c.image).await?
            }
            other => other?,
        };
        let summary = self.images.summary(digest).await?;
        let prepared = self.images.prepare(&summary).await?;
        let spec = pod_spec(deployment, template, &summary)?;
        // Checked at apply too; a pod refuses what it cannot honour all the same.
        let (user, security) = skiff_spec::security::of_pod(&template.spec, 0, &summary.run.user)
            .map_err(|e| AppError::invalid(launcher::CONFIG_ERROR, e))?;
        let container = match &prepared {
            Prepared::Oci { root } => {
                let milli_cpus = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.limits.get("cpu"))
                    .map(|q| q.millicpus())
                    .transpose()
                    .map_err(|e| AppError::invalid("invalid_manifest", e))?
                    .map(|m| u32::try_from(m).unwrap_or(u32::MAX));
                let name = pod.to_string();
                self.launcher
                    .start_linux(
                        LinuxStart {
                            id: &crate::ids::new_id(),
                            name: pod,
                            spec: &spec,
                            summary: &summary,
                            root,
                            log,
                            oci: &OciOptions {
                                memory_bytes: Some(spec.limits.memory_bytes),
                                milli_cpus,
                                user: Some(user),
                                security,
                                ..OciOptions::default()
                            },
                            port: c
                                .ports
                                .first()
                                .and_then(|p| u16::try_from(p.container_port).ok()),
                            ready: false,
                        },
                        {
                            let exits = self.exits.sender();
                            move |instance, exit| {
                                let _ = exits.send(PodExit {
                                    pod: name,
                                    instance,
                                    exit,
                                });
                            }
                        },
                    )
                    .await?
            }
            _ => {
                security
                    .check_in_process(None)
                    .map_err(|e| AppError::invalid(launcher::CONFIG_ERROR, e))?;
                if matches!(spec.kind, AppKind::Http | AppKind::Wagi) {
                    self.launcher.admit(&spec.limits)?;
                }
                Arc::new(
                    self.launcher
                        .in_process(pod.to_string(), &spec, &prepared, log)?,
                )
            }
        };
        Ok((container, digest, spec.limits))
    }

    /// A Linux pod's process ended.
    pub(crate) fn on_pod_exit(&self, pod: &str, instance: &str, exit: &Exit) {
        let how = if exit.oom_killed {
            "was killed for using more than its memory limit".to_string()
        } else {
            format!("exited with code {}", exit.code)
        };
        self.pods
            .restart(pod, instance, "BackOff", format!("container {how}"));
    }
}
