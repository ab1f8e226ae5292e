//! Desired state as a deterministic state machine: Kubernetes objects changed only by
//! [`Command`]s, applied by one function with no clock, no randomness and no I/O (the
//! time of a change comes inside its command). The same sequence of commands gives the
//! same state on every node, which is what a Raft log needs; one node persists it the
//! same way: [`DesiredStore`] writes each command's rows to redb in one transaction with
//! the applied index, feeds watchers, and restores snapshots.
//!
//! Deployments keep their revisions as Kubernetes does: a new pod template is a new
//! revision numbered one past the highest; going back to an earlier template (an undo,
//! or applying the old YAML again) moves that revision to the top instead of copying it;
//! `revisionHistoryLimit` old revisions are kept.

use std::collections::BTreeMap;

pub mod rollout;
mod store;

pub use store::{Change, DesiredStore, Snapshot};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use skiff_spec::k8s::{Deployment, PodTemplateSpec, Service};

/// A change to the desired state. Versioned on the wire, so a node can refuse a
/// command it does not know instead of misreading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Create or replace a Deployment's spec, labels and annotations (`apply -f`).
    ApplyDeployment {
        /// The object as applied (validated by the caller).
        deployment: Box<Deployment>,
        /// When (RFC 3339), for creation timestamps and revision times.
        at: String,
    },
    /// Change only the replica count (`scale`).
    ScaleDeployment {
        /// The Deployment.
        name: String,
        /// New count.
        replicas: i32,
    },
    /// Set one container's image (`set image`).
    SetImage {
        /// The Deployment.
        name: String,
        /// The container.
        container: String,
        /// The image.
        image: String,
        /// When.
        at: String,
    },
    /// Go back to a revision's template (`rollout undo [--to-revision N]`; none: the
    /// one before the current).
    Rollback {
        /// The Deployment.
        name: String,
        /// The revision.
        to_revision: Option<i64>,
        /// When.
        at: String,
    },
    /// Remove a Deployment.
    DeleteDeployment {
        /// Its name.
        name: String,
    },
    /// Create or replace a Service.
    ApplyService {
        /// The object as applied (validated by the caller).
        service: Box<Service>,
        /// When.
        at: String,
    },
    /// Remove a Service.
    DeleteService {
        /// Its name.
        name: String,
    },
    /// Mark a node unschedulable, or schedulable again (`cordon`, `uncordon`).
    Cordon {
        /// The node's name.
        node: String,
        /// True to cordon.
        unschedulable: bool,
    },
}

/// The object a command touches, typed: what the reconciler is told to look at again.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectRef {
    /// A Deployment, by name.
    Deployment(String),
    /// A Service, by name.
    Service(String),
    /// A node (cordoned or not), by name.
    Node(String),
}

impl ObjectRef {
    /// Its row in the store (`deployments/<name>`, ...).
    pub(crate) fn key(&self) -> String {
        match self {
            ObjectRef::Deployment(name) => format!("deployments/{name}"),
            ObjectRef::Service(name) => format!("services/{name}"),
            ObjectRef::Node(name) => format!("nodes/{name}"),
        }
    }
}

impl Command {
    /// The object it touches.
    pub fn object(&self) -> ObjectRef {
        match self {
            Command::ApplyDeployment { deployment, .. } => {
                ObjectRef::Deployment(deployment.metadata.name.clone())
            }
            Command::ScaleDeployment { name, .. }
            | Command::SetImage { name, .. }
            | Command::Rollback { name, .. }
            | Command::DeleteDeployment { name } => ObjectRef::Deployment(name.clone()),
            Command::ApplyService { service, .. } => {
                ObjectRef::Service(service.metadata.name.clone())
            }
            Command::DeleteService { name } => ObjectRef::Service(name.clone()),
            Command::Cordon { node, .. } => ObjectRef::Node(node.clone()),
        }
    }
}

/// A command as it travels and is stored: versioned, so a newer format is refused by
/// name rather than misread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum Versioned {
    /// The first format.
    #[serde(rename = "1")]
    V1(Command),
}

/// What a command did, as kubectl says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// New object.
    Created(String),
    /// Changed object.
    Configured(String),
    /// Nothing to change.
    Unchanged(String),
    /// Removed.
    Deleted(String),
}

/// Why a command changed nothing. Part of the state machine's answer, not a failure of
/// the store: every node reaches the same rejection for the same command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejected {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The command does not fit the object.
    #[error("{0}")]
    Invalid(String),
}

/// One old or current pod template of a Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// 1, 2, ...: higher is newer.
    pub number: i64,
    /// The pod-template hash (names the revision's pods: `<deployment>-<hash>-<n>`).
    pub hash: String,
    /// The template (shared with the object while current, and with the pods).
    pub template: std::sync::Arc<PodTemplateSpec>,
    /// When it became current.
    pub at: String,
}

/// A Deployment as stored: the object and its revisions (the last is current).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDeployment {
    /// The object, with the node's metadata (uid, generation, resourceVersion).
    pub object: Deployment,
    /// Oldest first; the last is the current template.
    pub revisions: Vec<Revision>,
}

impl StoredDeployment {
    /// The current revision.
    pub fn current(&self) -> &Revision {
        self.revisions
            .last()
            .expect("a stored deployment has a revision")
    }

    /// Makes the revision whose template is the object's hold the object's copy: read
    /// back from disk or a snapshot they are two, which every pod would keep apart.
    pub fn share_templates(&mut self) {
        let template = &self.object.spec.template;
        for r in &mut self.revisions {
            if !std::sync::Arc::ptr_eq(&r.template, template) && r.template == *template {
                r.template = template.clone();
            }
        }
    }
}

/// The whole desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Deployments by name.
    pub deployments: BTreeMap<String, std::sync::Arc<StoredDeployment>>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Bumped by every change; objects carry the value of their last change as their
    /// `resourceVersion`.
    pub version: u64,
    /// Nodes that take no new pods, by name.
    #[serde(default)]
    pub cordoned: std::collections::BTreeSet<String>,
}

/// The pod-template hash: 10 characters of a digest of the template, as stable as the
/// template's JSON.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).expect("templates serialize");
    let digest = Sha256::digest(&json);
    // Lowercase letters and digits without vowels, as Kubernetes' safe encoding, so
    // hashes never spell words in pod names.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    digest
        .iter()
        .take(10)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A deterministic uid for an object created at `version` (no randomness in the state
/// machine: every node must give the same uid).
fn uid(kind: &str, name: &str, version: u64) -> String {
    uid_of(&format!("{kind}/{name}/{version}"))
}

/// A uid (`8-4-4-4-12` hex) that is a digest of `seed`: the same seed, the same uid.
pub fn uid_of(seed: &str) -> String {
    let h = hex::encode(&Sha256::digest(seed.as_bytes())[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl State {
    /// Applies one command. Deterministic: the same state and command give the same
    /// result everywhere.
    pub fn apply(&mut self, command: Command) -> Result<Applied, Rejected> {
        match command {
            Command::ApplyDeployment { deployment, at } => self.apply_deployment(*deployment, &at),
            Command::ScaleDeployment { name, replicas } => {
                if !(0..=skiff_spec::k8s::MAX_REPLICAS).contains(&replicas) {
                    return Err(Rejected::Invalid(format!(
                        "replicas must be 0 to {}, got {replicas}",
                        skiff_spec::k8s::MAX_REPLICAS
                    )));
                }
                let version = self.version + 1;
                let d = self.deployment_mut(&name)?;
                if d.object.spec.replicas.unwrap_or(1) == replicas {
                    return Ok(Applied::Unchanged(reference(&name)));
                }
                d.object.spec.replicas = Some(replicas);
                bump(&mut d.object, version);
                self.version = version;
                Ok(Applied::Configured(reference(&name)))
            }
            Command::SetImage {
                name,
                container,
                image,
                at,
            } => {
                let d = self.deployment(&name)?;
                let mut next = d.object.clone();
                let c = std::sync::Arc::make_mut(&mut next.spec.template)
                    .spec
                    .containers
                    .iter_mut()
                    .find(|c| c.name == container)
                    .ok_or_else(|| {
                        Rejected::Invalid(format!(
                            "{} has no container {container:?}",
                            reference(&name)
                        ))
                    })?;
                c.image = image;
                self.apply_deployment(next, &at)
            }
            Command::Rollback {
                name,
                to_revision,
                at,
            } => {
                let d = self.deployment(&name)?;
                let target = match to_revision {
                    Some(n) => d.revisions.iter().find(|r| r.number == n).ok_or_else(|| {
                        Rejected::Invalid(format!("{} has no revision {n}", reference(&name)))
                    })?,
                    None => d.revisions.iter().rev().nth(1).ok_or_else(|| {
                        Rejected::Invalid(format!("{} has no previous revision", reference(&name)))
                    })?,
                };
                let mut next = d.object.clone();
                next.spec.template = target.template.clone();
                self.apply_deployment(next, &at)
            }
            Command::DeleteDeployment { name } => match self.deployments.remove(&name) {
                Some(_) => {
                    self.version += 1;
                    Ok(Applied::Deleted(reference(&name)))
                }
                None => Err(Rejected::NotFound(reference(&name))),
            },
            Command::ApplyService { service, at } => {
                let mut service = *service;
                // What the node reports is never taken from the applied object.
                service.status = None;
                let name = service.metadata.name.clone();
                let r = format!("service/{name}");
                let version = self.version + 1;
                self.assign_node_ports(&mut service)?;
                match self.services.get(&name) {
                    Some(old)
                        if old.spec == service.spec
                            && old.metadata.labels == service.metadata.labels
                            && old.metadata.annotations == service.metadata.annotations =>
                    {
                        Ok(Applied::Unchanged(r))
                    }
                    old => {
                        let created = old.is_none();
                        let meta = &mut service.metadata;
                        meta.namespace = Some("default".into());
                        match old {
                            Some(old) => {
                                meta.uid.clone_from(&old.metadata.uid);
                                meta.creation_timestamp
                                    .clone_from(&old.metadata.creation_timestamp);
                            }
                            None => {
                                meta.uid = Some(uid("Service", &name, version));
                                meta.creation_timestamp = Some(at);
                            }
                        }
                        meta.resource_version = Some(version.to_string());
                        self.services.insert(name, service);
                        self.version = version;
                        Ok(if created {
                            Applied::Created(r)
                        } else {
                            Applied::Configured(r)
                        })
                    }
                }
            }
            Command::DeleteService { name } => match self.services.remove(&name) {
                Some(_) => {
                    self.version += 1;
                    Ok(Applied::Deleted(format!("service/{name}")))
                }
                None => Err(Rejected::NotFound(format!("service/{name}"))),
            },
            Command::Cordon {
                node,
                unschedulable,
            } => {
                let reference = format!("node/{node}");
                let changed = if unschedulable {
                    self.cordoned.insert(node)
                } else {
                    self.cordoned.remove(&node)
                };
                if !changed {
                    return Ok(Applied::Unchanged(reference));
                }
                self.version += 1;
                Ok(Applied::Configured(reference))
            }
        }
    }

    /// Gives a NodePort Service's ports without a nodePort one: the one it had (same
    /// port), else the lowest free in 30000-32767. Refuses a nodePort another Service
    /// holds. Deterministic, so every node assigns the same.
    ///
    /// Only a NodePort Service looks at the others (one that is not ignores its ports'
    /// nodePorts), so applying any other costs nothing however many Services there are.
    fn assign_node_ports(&self, service: &mut Service) -> Result<(), Rejected> {
        if service.spec.kind.as_deref() != Some("NodePort") {
            return Ok(());
        }
        let name = &service.metadata.name;
        let taken: BTreeMap<i32, &str> = self
            .services
            .values()
            .filter(|s| &s.metadata.name != name)
            .flat_map(|s| {
                s.spec
                    .ports
                    .iter()
                    .filter_map(|p| p.node_port.map(|np| (np, s.metadata.name.as_str())))
            })
            .collect();
        let old = self.services.get(name);
        let mut mine: Vec<i32> = service
            .spec
            .ports
            .iter()
            .filter_map(|p| p.node_port)
            .collect();
        for port in &mut service.spec.ports {
            if let Some(np) = port.node_port {
                if let Some(other) = taken.get(&np) {
                    return Err(Rejected::Invalid(format!(
                        "service/{name}: nodePort {np} is already used by service/{other}"
                    )));
                }
                continue;
            }
            let kept = old.and_then(|o| {
                o.spec
                    .ports
                    .iter()
                    .find(|p| p.port == port.port)
                    .and_then(|p| p.node_port)
            });
            let np = match kept.filter(|np| !taken.contains_key(np) && !mine.contains(np)) {
                Some(np) => np,
                None => (30000..=32767)
                    .find(|np| !taken.contains_key(np) && !mine.contains(np))
                    .ok_or_else(|| Rejected::Invalid("no free nodePort in 30000-32767".into()))?,
            };
            port.node_port = Some(np);
            mine.push(np);
        }
        Ok(())
    }

    fn deployment(&self, name: &str) -> Result<&StoredDeployment, Rejected> {
        self.deployments
            .get(name)
            .map(std::sync::Arc::as_ref)
            .ok_or_else(|| Rejected::NotFound(reference(name)))
    }

    fn deployment_mut(&mut self, name: &str) -> Result<&mut StoredDeployment, Rejected> {
        self.deployments
            .get_mut(name)
            .map(std::sync::Arc::make_mut)
            .ok_or_else(|| Rejected::NotFound(reference(name)))
    }

    fn apply_deployment(&mut self, mut next: Deployment, at: &str) -> Result<Applied, Rejected> {
        let name = next.metadata.name.clone();
        let version = self.version + 1;
        // What the node sets is never taken from the applied object.
        next.status = None;
        next.metadata.namespace = Some("default".into());
        let hash = template_hash(&next.spec.template);
        let limit = usize::try_from(next.spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
        let Some(stored) = self.deployments.get_mut(&name) else {
            next.metadata.uid = Some(uid("Deployment", &name, version));
            next.metadata.creation_timestamp = Some(at.to_string());
            next.metadata.generation = Some(1);
            next.metadata.resource_version = Some(version.to_string());
            let revision = Revision {
                number: 1,
                hash,
                template: next.spec.template.clone(),
                at: at.to_string(),
            };
            self.deployments.insert(
                name.clone(),
                std::sync::Arc::new(StoredDeployment {
                    object: next,
                    revisions: vec![revision],
                }),
            );
            self.version = version;
            return Ok(Applied::Created(reference(&name)));
        };
        let old = &stored.object;
        let same_spec = old.spec == next.spec
            && old.metadata.labels == next.metadata.labels
            && old.metadata.annotations == next.metadata.annotations;
        if same_spec {
            return Ok(Applied::Unchanged(reference(&name)));
        }
        next.metadata.uid.clone_from(&old.metadata.uid);
        next.metadata
            .creation_timestamp
            .clone_from(&old.metadata.creation_timestamp);
        next.metadata.generation = old.metadata.generation;
        if old.spec != next.spec {
            next.metadata.generation = Some(old.metadata.generation.unwrap_or(0) + 1);
        }
        next.metadata.resource_version = Some(version.to_string());
        // Copied only now, if a reader holds it: an unchanged apply copies nothing.
        let stored = std::sync::Arc::make_mut(stored);
        if stored.current().hash != hash {
            let number = stored.revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1;
            // An old template coming back is moved up, not copied.
            stored.revisions.retain(|r| r.hash != hash);
            stored.revisions.push(Revision {
                number,
                hash,
                template: next.spec.template.clone(),
                at: at.to_string(),
            });
            let keep = limit + 1;
            if stored.revisions.len() > keep {
                let drop = stored.revisions.len() - keep;
                stored.revisions.drain(..drop);
            }
        } else if stored.current().template == next.spec.template {
            // The same template (labels or replicas changed): one copy stays shared.
            next.spec.template = stored.current().template.clone();
        }
        stored.object = next;
        self.version = version;
        Ok(Applied::Configured(reference(&name)))
    }
}

/// Bumps generation and resourceVersion after a spec change.
fn bump(d: &mut Deployment, version: u64) {
    d.metadata.generation = Some(d.metadata.generation.unwrap_or(0) + 1);
    d.metadata.resource_version = Some(version.to_string());
}

fn reference(name: &str) -> String {
    format!("deployment.apps/{name}")
}

#[cfg(test)]
mod tests {
    use skiff_spec::manifest::{Object, parse};

    use super::*;

    #[test]
    fn every_command_names_the_object_it_touches() {
        let name = || "web".to_string();
        let cases = [
            (
                Command::ApplyDeployment {
                    deployment: deployment("web:v1", 1),
                    at: "t".into(),
                },
                ObjectRef::Deployment(name()),
            ),
            (
                Command::ScaleDeployment {
                    name: name(),
                    replicas: 2,
                },
                ObjectRef::Deployment(name()),
            ),
            (
                Command::DeleteService { name: name() },
                ObjectRef::Service(name()),
            ),
            (
                Command::Cordon {
                    node: "one".into(),
                    unschedulable: true,
                },
                ObjectRef::Node("one".into()),
            ),
        ];
        for (command, object) in cases {
            assert_eq!(command.object(), object);
        }
        assert_eq!(ObjectRef::Deployment(name()).key(), "deployments/web");
        assert_eq!(ObjectRef::Service(name()).key(), "services/web");
        assert_eq!(ObjectRef::Node("one".into()).key(), "nodes/one");
    }

    fn deployment(image: &str, replicas: i32) -> Box<Deployment> {
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  revisionHistoryLimit: 2\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
        );
        match parse("d.yaml", &yaml).unwrap().remove(0).object {
            Object::Deployment(d) => d,
            Object::Service(_) => unreachable!(),
        }
    }

    fn apply(state: &mut State, image: &str, replicas: i32, at: &str) -> Applied {
        state
            .apply(Command::ApplyDeployment {
                deployment: deployment(image, replicas),
                at: at.into(),
            })
            .unwrap()
    }

    fn current_image(state: &State) -> (i64, String) {
        let d = &state.deployments["web"];
        (
            d.current().number,
            d.object.spec.template.spec.containers[0].image.clone(),
        )
    }

    #[test]
    fn the_current_revision_shares_the_objects_template_also_when_read_back() {
        let mut s = State::default();
        apply(&mut s, "web:v1", 1, "t1");
        apply(&mut s, "web:v2", 1, "t2");
        let shared = |d: &StoredDeployment| {
            std::sync::Arc::ptr_eq(&d.object.spec.template, &d.current().template)
        };
        assert!(shared(&s.deployments["web"]));
        apply(&mut s, "web:v2", 3, "t3");
        assert!(
            shared(&s.deployments["web"]),
            "a new replica count, the same template"
        );
        let json = serde_json::to_vec(&s.deployments["web"]).unwrap();
        let mut back: StoredDeployment = serde_json::from_slice(&json).unwrap();
        assert!(!shared(&back), "decoding makes two copies");
        back.share_templates();
        assert!(shared(&back));
        assert_eq!(back, *s.deployments["web"]);
        assert!(
            !std::sync::Arc::ptr_eq(&back.revisions[0].template, &back.object.spec.template),
            "an old revision keeps its own template"
        );
    }

    #[test]
    fn apply_creates_then_says_unchanged_and_scaling_makes_no_revision() {
        let mut s = State::default();
        assert_eq!(
            apply(&mut s, "web:v1", 3, "t1"),
            Applied::Created("deployment.apps/web".into())
        );
        // A reader's copy (a reconciler pass) is not duplicated by an unchanged apply.
        let held = s.deployments["web"].clone();
        assert_eq!(
            apply(&mut s, "web:v1", 3, "t2"),
            Applied::Unchanged("deployment.apps/web".into())
        );
        assert!(std::sync::Arc::ptr_eq(&held, &s.deployments["web"]));
        drop(held);
        let d = &s.deployments["web"].object;
        assert_eq!(d.metadata.generation, Some(1));
        assert_eq!(d.metadata.creation_timestamp.as_deref(), Some("t1"));
        let version = s.version;
        let scaled = s
            .apply(Command::ScaleDeployment {
                name: "web".into(),
                replicas: 5,
            })
            .unwrap();
        assert_eq!(scaled, Applied::Configured("deployment.apps/web".into()));
        assert_eq!(s.version, version + 1);
        let stored = &s.deployments["web"];
        assert_eq!(stored.object.metadata.generation, Some(2));
        assert_eq!(stored.revisions.len(), 1, "a scale is not a new template");
        for replicas in [-1, 1_000_000] {
            assert!(matches!(
                s.apply(Command::ScaleDeployment {
                    name: "web".into(),
                    replicas
                }),
                Err(Rejected::Invalid(_))
            ));
        }
    }

    #[test]
    fn new_templates_are_revisions_and_undo_moves_the_old_one_up() {
        let mut s = State::default();
        apply(&mut s, "web:v1", 3, "t1");
        apply(&mut s, "web:v2", 3, "t2");
        assert_eq!(current_image(&s), (2, "web:v2".into()));
        let hash_v2 = s.deployments["web"].current().hash.clone();
        s.apply(Command::Rollback {
            name: "web".into(),
            to_revision: None,
            at: "t3".into(),
        })
        .unwrap();
        // As Kubernetes: revision 1 becomes revision 3, there is no copy.
        assert_eq!(current_image(&s), (3, "web:v1".into()));
        let numbers: Vec<i64> = s.deployments["web"]
            .revisions
            .iter()
            .map(|r| r.number)
            .collect();
        assert_eq!(numbers, [2, 3]);
        s.apply(Command::SetImage {
            name: "web".into(),
            container: "web".into(),
            image: "web:v2".into(),
            at: "t4".into(),
        })
        .unwrap();
        assert_eq!(current_image(&s), (4, "web:v2".into()));
        assert_eq!(
            s.deployments["web"].current().hash,
            hash_v2,
            "same template, same hash"
        );
        // History beyond revisionHistoryLimit (2) is dropped; unknown revisions refused.
        apply(&mut s, "web:v3", 3, "t5");
        apply(&mut s, "web:v4", 3, "t6");
        let numbers: Vec<i64> = s.deployments["web"]
            .revisions
            .iter()
            .map(|r| r.number)
            .collect();
        assert_eq!(numbers, [4, 5, 6]);
        assert!(matches!(
            s.apply(Command::Rollback {
                name: "web".into(),
                to_revision: Some(1),
                at: "t7".into()
            }),
            Err(Rejected::Invalid(_))
        ));
        s.apply(Command::Rollback {
            name: "web".into(),
            to_revision: Some(4),
            at: "t8".into(),
        })
        .unwrap();
        assert_eq!(current_image(&s), (7, "web:v2".into()));
    }

    #[test]
    fn node_ports_are_assigned_kept_and_never_shared() {
        let svc = |name: &str, node_port: Option<i32>| {
            let np = node_port.map_or(String::new(), |n| format!("    nodePort: {n}\n"));
            match parse(
                "s.yaml",
                &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector:\n    app: web\n  ports:\n  - port: 80\n{np}"),
            )
            .unwrap()
            .remove(0)
            .object
            {
                Object::Service(s) => s,
                Object::Deployment(_) => unreachable!(),
            }
        };
        let node_port = |s: &State, name: &str| s.services[name].spec.ports[0].node_port;
        let mut s = State::default();
        let apply = |s: &mut State, service| {
            s.apply(Command::ApplyService {
                service,
                at: "t".into(),
            })
        };
        assert_eq!(
            apply(&mut s, svc("a", Some(30000))),
            Ok(Applied::Created("service/a".into()))
        );
        apply(&mut s, svc("b", None)).unwrap();
        assert_eq!(node_port(&s, "b"), Some(30001), "the lowest free");
        // Applying the same file again keeps the port, and says unchanged.
        assert_eq!(
            apply(&mut s, svc("b", None)),
            Ok(Applied::Unchanged("service/b".into()))
        );
        assert!(
            matches!(apply(&mut s, svc("c", Some(30001))), Err(Rejected::Invalid(m)) if m.contains("service/b"))
        );
    }

    #[test]
    fn the_same_commands_give_the_same_state_everywhere() {
        let service = match parse(
            "s.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n",
        )
        .unwrap()
        .remove(0)
        .object
        {
            Object::Service(s) => s,
            Object::Deployment(_) => unreachable!(),
        };
        let commands = [
            Command::ApplyDeployment {
                deployment: deployment("web:v1", 3),
                at: "t1".into(),
            },
            Command::ApplyService {
                service: service.clone(),
                at: "t1".into(),
            },
            Command::ApplyService {
                service,
                at: "t2".into(),
            },
            Command::SetImage {
                name: "web".into(),
                container: "web".into(),
                image: "web:v2".into(),
                at: "t3".into(),
            },
            Command::ScaleDeployment {
                name: "web".into(),
                replicas: 1,
            },
            Command::DeleteService {
                name: "nope".into(),
            },
        ];
        // Through the wire format, as a log would carry them.
        let wire: Vec<String> = commands
            .iter()
            .map(|c| serde_json::to_string(&Versioned::V1(c.clone())).unwrap())
            .collect();
        let run = |wire: &[String]| {
            let mut s = State::default();
            let results: Vec<String> = wire
                .iter()
                .map(|w| {
                    let Versioned::V1(c) = serde_json::from_str(w).unwrap();
                    format!("{:?}", s.apply(c))
                })
                .collect();
            (serde_json::to_string(&s).unwrap(), results)
        };
        let (a, ra) = run(&wire);
        let (b, rb) = run(&wire);
        assert_eq!((a, ra.clone()), (b, rb));
        assert!(ra[2].contains("Unchanged"), "{ra:?}");
        assert!(ra[5].contains("NotFound"), "{ra:?}");
        // A command of a newer format is refused by name, not misread.
        let newer = r#"{"version":"2","command":"apply_deployment"}"#;
        assert!(serde_json::from_str::<Versioned>(newer).is_err());
        // The node's own fields never come from the applied object.
        let mut s = State::default();
        let mut d = deployment("web:v1", 1);
        d.metadata.uid = Some("forged".into());
        d.metadata.generation = Some(99);
        s.apply(Command::ApplyDeployment {
            deployment: d,
            at: "t".into(),
        })
        .unwrap();
        let meta = &s.deployments["web"].object.metadata;
        assert_ne!(meta.uid.as_deref(), Some("forged"));
        assert_eq!(meta.generation, Some(1));
    }
}
