//! What the reconciler reports: a Deployment's status, conditions and events from
//! each plan, and pods shaped as the Kubernetes API shapes them.

use super::*;

/// Updates a Deployment's progress, conditions and status from its plan.
/// `target` is this node's share of the Deployment's replicas.
pub(super) fn track(inner: &mut Inner, d: &StoredDeployment, target: i32, plan: &Plan, now: u64) {
    let name = d.object.metadata.name.clone();
    let current = d.current();
    let generation = d.object.metadata.generation.unwrap_or(1);
    let counts = (plan.replicas, plan.updated, plan.ready, plan.available);
    let p = inner
        .progress
        .entry(name.clone())
        .or_insert_with(|| Progress {
            hash: String::new(),
            generation,
            counts,
            since_ms: now,
            failed: false,
            complete: false,
            shown: None,
            events: VecDeque::new(),
        });
    // What other nodes see of it (a new entry has no hash yet).
    if p.hash != current.hash || p.counts != counts {
        inner.regossip.insert(name);
    }
    if p.hash != current.hash {
        p.hash.clone_from(&current.hash);
        p.since_ms = now;
        p.failed = false;
        p.complete = false;
        push_event(
            &mut p.events,
            "Normal",
            "ScalingReplicaSet",
            format!(
                "Rolling out revision {} ({})",
                current.number,
                current
                    .template
                    .spec
                    .containers
                    .first()
                    .map_or("", |c| c.image.as_str())
            ),
        );
    }
    if p.generation != generation {
        p.generation = generation;
        p.since_ms = now;
        p.failed = false;
    }
    if p.counts != counts {
        p.counts = counts;
        p.since_ms = now;
    }
    let deadline_ms =
        u64::try_from(d.object.spec.progress_deadline_seconds.unwrap_or(600)).unwrap_or(600) * 1000;
    if plan.complete {
        if !p.complete {
            p.complete = true;
            p.failed = false;
            push_event(
                &mut p.events,
                "Normal",
                "RolloutComplete",
                format!("revision {} is available", current.number),
            );
        }
    } else {
        p.complete = false;
        if !p.failed && now.saturating_sub(p.since_ms) > deadline_ms {
            p.failed = true;
            push_event(
                &mut p.events,
                "Warning",
                "ProgressDeadlineExceeded",
                format!(
                    "revision {} made no progress for {} s",
                    current.number,
                    deadline_ms / 1000
                ),
            );
        }
    }
    let (_, max_unavailable) = rollout::bounds_for(&d.object, target);
    p.shown = Some(Shown {
        revision: current.number,
        desired: target,
        max_unavailable,
        at_ms: now,
    });
}

impl Progress {
    /// The status this node's part of the Deployment shows: built when asked, from what
    /// the last plan left (a node holds thousands of these; the strings are made for
    /// the few that are read).
    pub(super) fn status(&self) -> DeploymentStatus {
        let Some(shown) = &self.shown else {
            return DeploymentStatus::default();
        };
        let (replicas, updated, ready, available_replicas) = self.counts;
        let revision = shown.revision;
        let at = Some(crate::clock::rfc3339_ms(shown.at_ms));
        let available = available_replicas >= shown.desired - shown.max_unavailable;
        let condition = |kind: &str, ok: bool, reason: &str, message: String| Condition {
            kind: kind.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: at.clone(),
        };
        let progressing = if self.failed {
            condition(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                format!("revision {revision} has timed out progressing"),
            )
        } else if self.complete {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("revision {revision} has successfully progressed"),
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("revision {revision} is progressing"),
            )
        };
        DeploymentStatus {
            replicas,
            ready_replicas: ready,
            updated_replicas: updated,
            available_replicas,
            observed_generation: Some(self.generation),
            conditions: vec![
                condition(
                    "Available",
                    available,
                    if available {
                        "MinimumReplicasAvailable"
                    } else {
                        "MinimumReplicasUnavailable"
                    },
                    format!(
                        "{available_replicas} of {} replicas available",
                        shown.desired
                    ),
                ),
                progressing,
            ],
        }
    }
}

pub(super) fn pod_object(name: &str, p: &PodEntry, node: &str) -> k8s::Pod {
    let c = p.template.spec.containers.first();
    let (phase, ready, state, ip, image_id, started) = match &p.state {
        PodState::Waiting {
            reason, message, ..
        } => (
            "Pending",
            false,
            K8sState {
                waiting: Some(StateReason {
                    reason: Some((*reason).into()),
                    message: (!message.is_empty()).then(|| message.clone()),
                }),
                ..K8sState::default()
            },
            None,
            String::new(),
            None,
        ),
        PodState::Running { container, .. } | PodState::Terminating { container, .. } => {
            let (image, ready) = match &p.state {
                PodState::Running {
                    image, ready_since, ..
                } => (
                    image.to_string(),
                    ready_since.is_some() && container.is_ready(),
                ),
                _ => (String::new(), false),
            };
            let started = skiff_image::build::rfc3339(
                std::time::UNIX_EPOCH + Duration::from_millis(container.started_ms),
            );
            (
                "Running",
                ready,
                K8sState {
                    running: Some(StateRunning {
                        started_at: Some(started.clone()),
                    }),
                    ..K8sState::default()
                },
                launcher::network(container).0,
                image,
                Some(started),
            )
        }
    };
    let mut labels = p.labels.clone();
    labels.insert("pod-template-hash".into(), p.hash.as_str().into());
    k8s::Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            name: name.to_string(),
            namespace: Some("default".into()),
            labels,
            annotations: p.template.metadata.annotations.clone(),
            creation_timestamp: Some(p.created.to_string()),
            deletion_timestamp: match &p.state {
                PodState::Terminating { since, .. } => Some(since.clone()),
                _ => None,
            },
            ..ObjectMeta::default()
        },
        spec: k8s::PodSpec {
            node_name: Some(node.to_string()),
            ..p.template.spec.clone()
        },
        status: k8s::PodStatus {
            phase: phase.into(),
            pod_ip: ip,
            host_ip: None,
            start_time: started,
            conditions: vec![Condition {
                kind: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Condition::default()
            }],
            container_statuses: vec![k8s::ContainerStatus {
                name: c.map(|c| c.name.clone()).unwrap_or_default(),
                image: c.map(|c| c.image.clone()).unwrap_or_default(),
                image_id,
                ready,
                restart_count: p.restarts,
                state,
            }],
        },
    }
}
