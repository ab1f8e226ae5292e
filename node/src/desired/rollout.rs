//! What a Deployment's pods should do next: a pure function of the Deployment, its
//! current template hash, the pods observed and the time, in the manner of a Kubernetes
//! controller. Level-triggered and idempotent: run it whenever anything changes; it
//! reads the whole picture each time and says which pods to start and which to stop.
//!
//! RollingUpdate follows Kubernetes' rules: never more than `replicas + maxSurge` pods,
//! never fewer than `replicas - maxUnavailable` available ones (maxSurge rounded up,
//! maxUnavailable down; both 0 is refused at validation). Old pods that are not
//! available go first, as they cost no availability. Recreate stops every old pod before
//! starting a new one. A pod counts as available once ready for `minReadySeconds`.

use skiff_spec::k8s::{Deployment, IntOrString};

/// A pod as the reconciler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Its name.
    pub name: String,
    /// The template hash it runs.
    pub hash: String,
    /// Where it is in its life.
    pub phase: PodPhase,
}

/// The phases that matter to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    /// Started, not ready yet.
    Starting,
    /// Ready since this time (ms).
    Ready {
        /// When it became ready.
        since_ms: u64,
    },
    /// Ended or failed; to be removed and replaced.
    Failed,
    /// Stopping: finishing what it has, counted nowhere.
    Terminating,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a pod of the template with this hash.
    Start {
        /// The template hash.
        hash: String,
    },
    /// Stop (drain, then remove) this pod.
    Stop {
        /// The pod.
        pod: String,
    },
}

/// The actions and the counts a Deployment's status reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to do now.
    pub actions: Vec<Action>,
    /// Pods that exist (not terminating).
    pub replicas: i32,
    /// Of those, running the current template.
    pub updated: i32,
    /// Ready.
    pub ready: i32,
    /// Ready for minReadySeconds.
    pub available: i32,
    /// The rollout is done: every pod is of the current template and available.
    pub complete: bool,
}

fn scaled(v: Option<&IntOrString>, replicas: i32, round_up: bool) -> i32 {
    v.map_or_else(
        || IntOrString::String("25%".into()).scaled(replicas, round_up),
        |v| v.scaled(replicas, round_up),
    )
    .unwrap_or(0)
}

/// maxSurge and maxUnavailable of a RollingUpdate `deployment` as pod counts, rounded as
/// Kubernetes rounds them (surge up, unavailable down); never both 0, so a rollout can
/// always move.
pub fn bounds(deployment: &Deployment) -> (i32, i32) {
    bounds_for(deployment, deployment.spec.replicas.unwrap_or(1))
}

/// [`bounds`] for `desired` replicas of `deployment`'s strategy (a node's share).
pub fn bounds_for(deployment: &Deployment, desired: i32) -> (i32, i32) {
    let spec = &deployment.spec;
    let desired = desired.max(0);
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, true);
    let unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), desired, false);
    // Validation refuses both 0; be safe anyway.
    if surge == 0 && unavailable == 0 {
        (1, 0)
    } else {
        (surge, unavailable)
    }
}

/// The next actions for `deployment` whose current template hash is `hash`, given its
/// `pods`, at `now_ms`.
pub fn plan(deployment: &Deployment, hash: &str, pods: &[Pod], now_ms: u64) -> Plan {
    plan_replicas(
        deployment,
        deployment.spec.replicas.unwrap_or(1),
        hash,
        pods,
        now_ms,
    )
}

/// [`plan`] for `desired` replicas of `deployment` (a node's share of it), whatever its
/// spec asks in all.
pub fn plan_replicas(
    deployment: &Deployment,
    desired: i32,
    hash: &str,
    pods: &[Pod],
    now_ms: u64,
) -> Plan {
    let spec = &deployment.spec;
    let desired = desired.max(0);
    let min_ready_ms = u64::try_from(spec.min_ready_seconds.unwrap_or(0)).unwrap_or(0) * 1000;
    let available = |p: &Pod| matches!(p.phase, PodPhase::Ready { since_ms } if now_ms.saturating_sub(since_ms) >= min_ready_ms);
    let ready = |p: &Pod| matches!(p.phase, PodPhase::Ready { .. });
    let mut actions = Vec::new();
    // Failed pods go whatever their revision; they count nowhere.
    for p in pods.iter().filter(|p| p.phase == PodPhase::Failed) {
        actions.push(Action::Stop {
            pod: p.name.clone(),
        });
    }
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| !matches!(p.phase, PodPhase::Failed | PodPhase::Terminating))
        .collect();
    let terminating = pods
        .iter()
        .filter(|p| p.phase == PodPhase::Terminating)
        .count() as i32;
    let (mut new, mut old): (Vec<&Pod>, Vec<&Pod>) = live.iter().partition(|p| p.hash == hash);
    // Least useful first: not ready, then not yet available, then the rest.
    let usefulness = |p: &&Pod| (available(p), ready(p));
    new.sort_by_key(usefulness);
    old.sort_by_key(usefulness);
    let count = |v: &[&Pod], f: &dyn Fn(&Pod) -> bool| v.iter().filter(|p| f(p)).count() as i32;
    let new_available = count(&new, &available);
    let old_available = count(&old, &available);
    let n_new = new.len() as i32;
    let n_old = old.len() as i32;
    let recreate = spec.strategy.as_ref().and_then(|s| s.kind.as_deref()) == Some("Recreate");
    let start = |n: i32, actions: &mut Vec<Action>| {
        for _ in 0..n.max(0) {
            actions.push(Action::Start {
                hash: hash.to_string(),
            });
        }
    };
    let stop = |pods: &[&Pod], n: i32, actions: &mut Vec<Action>| {
        for p in pods.iter().take(n.max(0) as usize) {
            actions.push(Action::Stop {
                pod: p.name.clone(),
            });
        }
    };
    if recreate {
        if n_old > 0 {
            stop(&old, n_old, &mut actions);
        } else if terminating == 0 {
            // Only once every old pod is gone.
            start(desired - n_new, &mut actions);
            stop(&new, n_new - desired, &mut actions);
        }
    } else {
        let (surge, unavailable) = bounds_for(deployment, desired);
        if n_new > desired {
            stop(&new, n_new - desired, &mut actions);
        } else {
            // Up: new pods while the total stays within replicas + maxSurge.
            let room = desired + surge - (n_new + n_old);
            start((desired - n_new).min(room), &mut actions);
        }
        // Down: old pods while availability stays at replicas - maxUnavailable. Old pods
        // that are not available cost nothing to stop.
        let min_available = desired - unavailable;
        let spare = (new_available + old_available - min_available).max(0);
        let unavailable_old = n_old - old_available;
        let to_stop = unavailable_old + spare.min(old_available);
        stop(&old, to_stop.min(n_old), &mut actions);
    }
    let updated = n_new;
    Plan {
        complete: n_old == 0 && n_new == desired && new_available == desired && terminating == 0,
        actions,
        replicas: n_new + n_old,
        updated,
        ready: count(&new, &ready) + count(&old, &ready),
        available: new_available + old_available,
    }
}

#[cfg(test)]
mod tests {
    use skiff_spec::manifest::{Object, parse};

    use super::*;

    fn deployment(replicas: i32, strategy: &str) -> Deployment {
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n{strategy}  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: web, image: web}}]}}\n"
        );
        match parse("d.yaml", &yaml).unwrap().remove(0).object {
            Object::Deployment(d) => *d,
            Object::Service(_) => unreachable!(),
        }
    }

    /// A simulated world: applies plans, makes started pods ready one step later and
    /// stopped pods disappear one step later, and checks the bounds at every step.
    struct World {
        pods: Vec<Pod>,
        next: u32,
        now: u64,
    }

    impl World {
        fn with(n: usize, hash: &str) -> Self {
            let pods = (0..n)
                .map(|i| Pod {
                    name: format!("{hash}-{i}"),
                    hash: hash.into(),
                    phase: PodPhase::Ready { since_ms: 0 },
                })
                .collect();
            World {
                pods,
                next: 100,
                now: 1_000_000,
            }
        }

        /// One round: plan, act, let time pass. Returns the plan.
        fn step(&mut self, d: &Deployment, hash: &str) -> Plan {
            let plan = plan(d, hash, &self.pods, self.now);
            // Pods stopped last round are gone; pods started last round are ready.
            self.pods.retain(|p| p.phase != PodPhase::Terminating);
            for p in &mut self.pods {
                if p.phase == PodPhase::Starting {
                    p.phase = PodPhase::Ready { since_ms: self.now };
                }
            }
            for a in &plan.actions {
                match a {
                    Action::Start { hash } => {
                        self.next += 1;
                        self.pods.push(Pod {
                            name: format!("{hash}-{}", self.next),
                            hash: hash.clone(),
                            phase: PodPhase::Starting,
                        });
                    }
                    Action::Stop { pod } => {
                        let p = self.pods.iter_mut().find(|p| &p.name == pod).unwrap();
                        p.phase = PodPhase::Terminating;
                    }
                }
            }
            self.now += 1_000;
            plan
        }

        fn live(&self) -> usize {
            self.pods
                .iter()
                .filter(|p| p.phase != PodPhase::Terminating)
                .count()
        }

        fn available(&self) -> usize {
            self.pods
                .iter()
                .filter(|p| matches!(p.phase, PodPhase::Ready { .. }))
                .count()
        }

        /// Steps until the plan is complete and quiet; the most live pods and the
        /// fewest available seen.
        fn settle(&mut self, d: &Deployment, hash: &str) -> (usize, usize) {
            let (mut most, mut fewest) = (self.live(), self.available());
            for _ in 0..50 {
                let plan = self.step(d, hash);
                most = most.max(self.live());
                fewest = fewest.min(self.available());
                if plan.complete && plan.actions.is_empty() {
                    return (most, fewest);
                }
            }
            panic!("no convergence: {:?}", self.pods);
        }
    }

    #[test]
    fn a_new_deployment_starts_its_replicas_and_is_then_complete() {
        let d = deployment(3, "");
        let p = plan(&d, "h1", &[], 0);
        assert_eq!(p.actions, vec![Action::Start { hash: "h1".into() }; 3]);
        assert!(!p.complete);
        let mut w = World::with(0, "h1");
        w.settle(&d, "h1");
        assert_eq!(w.live(), 3);
        let p = plan(&d, "h1", &w.pods, w.now);
        assert!(p.actions.is_empty() && p.complete, "{p:?}");
        assert_eq!((p.replicas, p.updated, p.ready, p.available), (3, 3, 3, 3));
    }

    #[test]
    fn a_rolling_update_keeps_within_surge_and_unavailability() {
        // 3 replicas, the defaults (25%/25%): surge 1, unavailable 0.
        let d = deployment(3, "");
        let mut w = World::with(3, "old");
        let (most, fewest) = w.settle(&d, "new");
        assert!(most <= 4, "at most replicas + surge pods: {most}");
        assert!(
            fewest >= 3,
            "never below replicas - maxUnavailable available: {fewest}"
        );
        assert!(w.pods.iter().all(|p| p.hash == "new"));
        // maxSurge 0, maxUnavailable 1: down first, then up.
        let d = deployment(
            4,
            "  strategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: 1}\n",
        );
        let mut w = World::with(4, "old");
        let (most, fewest) = w.settle(&d, "new");
        assert!(most <= 4, "{most}");
        assert!(fewest >= 3, "{fewest}");
        assert_eq!(w.live(), 4);
    }

    #[test]
    fn recreate_stops_every_old_pod_before_starting_new_ones() {
        let d = deployment(2, "  strategy: {type: Recreate}\n");
        let mut w = World::with(2, "old");
        let first = w.step(&d, "new");
        assert_eq!(
            first
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Stop { .. }))
                .count(),
            2
        );
        assert!(
            !first
                .actions
                .iter()
                .any(|a| matches!(a, Action::Start { .. }))
        );
        w.settle(&d, "new");
        assert!(w.pods.iter().all(|p| p.hash == "new") && w.live() == 2);
    }

    #[test]
    fn scaling_and_failures_converge() {
        let mut w = World::with(5, "h");
        w.settle(&deployment(2, ""), "h");
        assert_eq!(w.live(), 2);
        w.settle(&deployment(4, ""), "h");
        assert_eq!(w.live(), 4);
        w.pods[0].phase = PodPhase::Failed;
        let p = plan(&deployment(4, ""), "h", &w.pods, w.now);
        assert!(p.actions.contains(&Action::Stop {
            pod: w.pods[0].name.clone()
        }));
        assert!(p.actions.contains(&Action::Start { hash: "h".into() }));
        w.settle(&deployment(0, ""), "h");
        assert_eq!(w.live(), 0);
    }

    #[test]
    fn min_ready_seconds_holds_old_pods_until_new_ones_have_lasted() {
        let d = deployment(1, "  minReadySeconds: 10\n");
        let now = 1_000_000;
        let pods = [
            Pod {
                name: "old-0".into(),
                hash: "old".into(),
                phase: PodPhase::Ready { since_ms: 0 },
            },
            Pod {
                name: "new-0".into(),
                hash: "new".into(),
                phase: PodPhase::Ready {
                    since_ms: now - 5_000,
                },
            },
        ];
        let p = plan(&d, "new", &pods, now);
        assert!(
            p.actions.is_empty(),
            "the new pod is ready but not yet available: {p:?}"
        );
        let p = plan(&d, "new", &pods, now + 5_000);
        assert_eq!(
            p.actions,
            [Action::Stop {
                pod: "old-0".into()
            }]
        );
    }
}
