//! The Deployment controller: what this node does with one Deployment's pods in a pass,
//! as a function of plain values (the Deployment, this node's share of it, the pods
//! observed, the time). The rollout planner ([`rollout::plan_replicas`]) says which pods
//! to start and stop; this adds which waiting pods are due to be made, and whether the
//! Deployment has settled (nothing more to do until something changes) or must be
//! looked at again soon. The pass carries the decision out.

use skiff_spec::k8s::Deployment;

use crate::desired::rollout::{self, Plan, PodPhase};

/// A pod of the Deployment as the pass observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Observed {
    /// Its name, template hash and phase, as the planner reads them.
    pub(super) pod: rollout::Pod,
    /// When a pod without a container (being made, or after a failure) may be made
    /// (ms); `None` for a pod that has one.
    pub(super) retry_ms: Option<u64>,
}

/// What the controller decided for one Deployment.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Decision {
    /// The planner's actions (pods to start, pods to stop) and the counts its status
    /// reports.
    pub(super) plan: Plan,
    /// Waiting pods whose back-off is over: their containers are made now.
    pub(super) launch: Vec<String>,
    /// Nothing is under way: every pod is of the current template and ready, none
    /// waits or stops. An unsettled Deployment is looked at again soon (a rollout, a
    /// back-off, a deadline).
    pub(super) settled: bool,
}

/// The decision for `deployment`, whose current template hash is `hash`, of which this
/// node runs `target` pods, given the pods `observed` here, at `now_ms`.
pub(super) fn reconcile(
    deployment: &Deployment,
    target: i32,
    hash: &str,
    observed: &[Observed],
    now_ms: u64,
) -> Decision {
    let pods: Vec<rollout::Pod> = observed.iter().map(|o| o.pod.clone()).collect();
    let plan = rollout::plan_replicas(deployment, target, hash, &pods, now_ms);
    let stopping: Vec<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            rollout::Action::Stop { pod } => Some(pod.as_str()),
            rollout::Action::Start { .. } => None,
        })
        .collect();
    let launch = observed
        .iter()
        .filter(|o| o.retry_ms.is_some_and(|at| at <= now_ms))
        .filter(|o| !stopping.contains(&o.pod.name.as_str()))
        .map(|o| o.pod.name.clone())
        .collect();
    let settled = plan.complete
        && plan.actions.is_empty()
        && observed
            .iter()
            .all(|o| matches!(o.pod.phase, PodPhase::Ready { .. }));
    Decision {
        plan,
        launch,
        settled,
    }
}

#[cfg(test)]
mod tests {
    use skiff_spec::manifest::{Object, parse};

    use super::*;
    use crate::desired::rollout::Action;

    fn deployment(replicas: i32) -> Deployment {
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: web:v1\n"
        );
        match parse("d.yaml", &yaml).unwrap().remove(0).object {
            Object::Deployment(d) => *d,
            Object::Service(_) => unreachable!(),
        }
    }

    fn pod(name: &str, hash: &str, phase: PodPhase, retry_ms: Option<u64>) -> Observed {
        Observed {
            pod: rollout::Pod {
                name: name.into(),
                hash: hash.into(),
                phase,
            },
            retry_ms,
        }
    }

    const READY: PodPhase = PodPhase::Ready { since_ms: 0 };

    #[test]
    fn a_new_deployment_starts_its_share_and_is_not_settled() {
        let d = reconcile(&deployment(3), 2, "h1", &[], 1000);
        let starts = d
            .plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Start { hash } if hash == "h1"))
            .count();
        assert_eq!(starts, 2, "this node's share, not the whole Deployment");
        assert!(d.launch.is_empty());
        assert!(!d.settled);
    }

    #[test]
    fn ready_pods_of_the_current_template_settle_it() {
        let observed = [pod("web-h1-a", "h1", READY, None)];
        let d = reconcile(&deployment(1), 1, "h1", &observed, 60_000);
        assert!(d.plan.actions.is_empty() && d.plan.complete);
        assert!(d.settled);
        // The same pod still starting: nothing to do, but not settled either.
        let starting = [pod("web-h1-a", "h1", PodPhase::Starting, None)];
        let d = reconcile(&deployment(1), 1, "h1", &starting, 60_000);
        assert!(d.plan.actions.is_empty());
        assert!(!d.settled);
    }

    #[test]
    fn a_waiting_pod_is_made_once_its_back_off_is_over() {
        let observed = [pod("web-h1-a", "h1", PodPhase::Starting, Some(5000))];
        let early = reconcile(&deployment(1), 1, "h1", &observed, 4999);
        assert!(early.launch.is_empty());
        assert!(!early.settled, "looked at again until it is made");
        let due = reconcile(&deployment(1), 1, "h1", &observed, 5000);
        assert_eq!(due.launch, ["web-h1-a"]);
    }

    #[test]
    fn a_waiting_pod_the_plan_stops_is_not_made() {
        // Scaled to none: the waiting pod goes instead of being made.
        let observed = [pod("web-h1-a", "h1", PodPhase::Starting, Some(0))];
        let d = reconcile(&deployment(0), 0, "h1", &observed, 1000);
        assert_eq!(
            d.plan.actions,
            [Action::Stop {
                pod: "web-h1-a".into()
            }]
        );
        assert!(d.launch.is_empty());
        assert!(!d.settled);
    }
}
