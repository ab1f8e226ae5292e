//! Kubernetes objects as skiff reads and prints them: `apps/v1 Deployment` and
//! `v1 Service`, shaped field for field as the Kubernetes API shapes them (camelCase,
//! `apiVersion`/`kind`/`metadata`/`spec`/`status`), so the same values serve
//! `skiff apply -f`, `-o json|yaml`, and a Kubernetes-API front door for kubectl.
//!
//! Narrow on purpose: only the fields skiff acts on. Unknown fields are tolerated here
//! (replicated state must accept fields a newer node wrote); the manifest reader
//! reports them as warnings naming their path, as kubectl does.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::map::{Labels, SortedMap};

/// A list as decoded, holding only its elements: serde grows a `Vec` as it reads (room
/// for four after the first element), and a stored template keeps its one container.
fn exact<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    let mut v = Vec::<T>::deserialize(deserializer)?;
    v.shrink_to_fit();
    Ok(v)
}

/// The most pods one Deployment may ask for (a bound on what one request can make a
/// node start).
pub const MAX_REPLICAS: i32 = 1000;

/// `metadata` of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// DNS-1123 label.
    #[serde(default)]
    pub name: String,
    /// Only `default` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub labels: Labels,
    /// Annotations (`skiff.dev/load-balancer`, ...).
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub annotations: Labels,
    /// Set by the node: a unique id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Set by the node: changes with every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Set by the node: bumped when the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Set by the node: RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Set on a pod that is stopping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
}

/// A number or a name/percentage (`targetPort: 8080` or `http`; `maxSurge: 25%`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i32),
    /// A string.
    String(String),
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl IntOrString {
    /// The count this means out of `total`: an integer as is, a percentage of `total`
    /// rounded up (`round_up`, as Kubernetes does for maxSurge) or down (maxUnavailable).
    pub fn scaled(&self, total: i32, round_up: bool) -> Result<i32, String> {
        match self {
            IntOrString::Int(i) if *i >= 0 => Ok(*i),
            IntOrString::Int(i) => Err(format!("must not be negative, got {i}")),
            IntOrString::String(s) => {
                let pct: i64 = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| format!("{s:?} is neither a count nor a percentage"))?;
                let scaled = i64::from(total) * pct;
                let v = if round_up {
                    (scaled + 99) / 100
                } else {
                    scaled / 100
                };
                Ok(v.min(i64::from(i32::MAX)) as i32)
            }
        }
    }
}

/// `matchLabels` and `matchExpressions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be equal.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub match_labels: Labels,
    /// Set-based requirements.
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// For `In` and `NotIn`.
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector (an empty selector matches everything, as
    /// in Kubernetes).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(e.key.as_str());
                let listed = |v: &crate::Str| e.values.iter().any(|x| x == v);
                match e.operator.as_str() {
                    "In" => value.is_some_and(listed),
                    "NotIn" => value.is_none_or(|v| !listed(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// `apps/v1 Deployment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// `apps/v1`.
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    /// Name, labels, annotations.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What should run.
    #[serde(default)]
    pub spec: DeploymentSpec,
    /// What runs (set by the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

/// A Deployment's desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Pods to run. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Which pods are its own; must match the template's labels.
    #[serde(default)]
    pub selector: LabelSelector,
    /// The pods. Shared: a node keeps it in the object, its current revision and each
    /// of its pods, one copy for all.
    #[serde(default)]
    pub template: Arc<PodTemplateSpec>,
    /// How a new template replaces the old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
    /// Old revisions kept for undo. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// A rollout with no progress for this long has failed. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    /// A new pod counts as available once ready for this long. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
}

/// `RollingUpdate` (default) or `Recreate`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    /// `RollingUpdate` or `Recreate`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Bounds of a rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// maxSurge and maxUnavailable (counts or percentages; 25% each by default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// Pods above `replicas` during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Pods below `replicas` during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// A pod template: labels and one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    /// Labels (what selectors match) and annotations.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The containers.
    #[serde(default)]
    pub spec: PodSpec,
}

/// A pod's containers (skiff runs one per pod).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Exactly one.
    #[serde(default, deserialize_with = "exact")]
    pub containers: Vec<Container>,
    /// The node a pod runs on (set by the node, on pods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Labels a node must have to run the pod.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub node_selector: Labels,
    /// What its containers run as unless their own `securityContext` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// The node's network namespace (refused when true: a pod has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// The node's pid namespace (refused when true).
    #[serde(default, rename = "hostPID", skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<bool>,
    /// The node's IPC namespace (refused when true).
    #[serde(default, rename = "hostIPC", skip_serializing_if = "Option::is_none")]
    pub host_ipc: Option<bool>,
    /// false asks for a user namespace, which skiff does not make (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_users: Option<bool>,
}

/// A pod's `securityContext`: the fields skiff honours (the manifest reader refuses the
/// others, since dropping a security setting would leave the pod less confined than
/// written).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    /// The uid its containers' processes run as (over the image's `User`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// Their gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// Refuse to start a container that would run as uid 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// A supplementary group of every container's process (it owns no volumes here:
    /// skiff mounts none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
    /// More supplementary groups.
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub supplemental_groups: Vec<i64>,
    /// `RuntimeDefault` (Docker's profile, which every container has); others refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

/// A container's `securityContext`, over its pod's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    /// The uid its process runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// Its gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// Refuse to start it as uid 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Its root filesystem is read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    /// Capabilities added to and dropped from the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// false: no_new_privileges, which every container has (true is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    /// Refused when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// As the pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

/// `capabilities: {add: [...], drop: [...]}`, by Kubernetes' names (`NET_RAW`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Added to the defaults (`ALL`: every one).
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub add: Vec<String>,
    /// Dropped (`ALL`: every one, then `add` alone).
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub drop: Vec<String>,
}

/// `seccompProfile`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    /// `RuntimeDefault`, `Unconfined` or `Localhost`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// A profile on the node (with `Localhost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_profile: Option<String>,
}

/// A pod's container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// An image in the node's store (`my-web-app:latest`).
    #[serde(default)]
    pub image: String,
    /// Replaces the image's ENTRYPOINT.
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub command: Vec<String>,
    /// Replaces the image's CMD.
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    /// Environment (`value` only).
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<EnvVar>,
    /// Ports it listens on.
    #[serde(
        default,
        deserialize_with = "exact",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ContainerPort>,
    /// `limits.memory`, `limits.cpu` as Kubernetes quantities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// When it takes requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// When it must be restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Who it runs as and what confines it, over the pod's `securityContext`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

/// `name: value`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// The variable.
    pub name: String,
    /// Its value.
    #[serde(default)]
    pub value: String,
}

/// `containerPort` (and a name Services may target).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// The port.
    pub container_port: i32,
    /// A name for `targetPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `limits` and `requests` by resource name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    /// `memory: 128Mi`, `cpu: 500m`.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub limits: SortedMap<String, Quantity>,
    /// What placement counts (`memory`), as Kubernetes schedules: a limit without a
    /// request stands for it.
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub requests: SortedMap<String, Quantity>,
}

/// A Kubernetes quantity as written (`128Mi`, `0.5`, `500m`); numbers are accepted too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    /// Written as a number.
    Number(u64),
    /// Written as a string.
    Text(String),
}

impl Quantity {
    fn text(&self) -> String {
        match self {
            Quantity::Number(n) => n.to_string(),
            Quantity::Text(t) => t.trim().to_string(),
        }
    }

    /// As bytes: `128Mi`, `1G`, `1e3`, `512`.
    pub fn bytes(&self) -> Result<u64, String> {
        let t = self.text();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{t:?} is not a quantity"))?;
        let mult: f64 = match unit {
            "" => 1.0,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            u if u.starts_with(['e', 'E']) => 10f64.powi(
                u[1..]
                    .parse()
                    .map_err(|_| format!("{t:?} is not a quantity"))?,
            ),
            _ => return Err(format!("{t:?} has an unknown unit {unit:?}")),
        };
        let bytes = (n * mult).ceil();
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(format!("{t:?} is too large"));
        }
        Ok(bytes as u64)
    }

    /// As thousandths of a CPU: `500m` -> 500, `0.5` -> 500, `2` -> 2000.
    pub fn millicpus(&self) -> Result<u64, String> {
        let t = self.text();
        let millis = match t.strip_suffix('m') {
            Some(m) => m
                .parse::<f64>()
                .map_err(|_| format!("{t:?} is not a CPU quantity"))?,
            None => {
                t.parse::<f64>()
                    .map_err(|_| format!("{t:?} is not a CPU quantity"))?
                    * 1000.0
            }
        };
        if !(millis.is_finite() && millis > 0.0 && millis < 1e9) {
            return Err(format!("{t:?} is not a positive CPU quantity"));
        }
        Ok(millis.ceil() as u64)
    }
}

/// `httpGet` probes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// The request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// Seconds between probes. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Failures in a row that count. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    /// Seconds before the first probe. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds a probe may take. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// `path` and `port` of an HTTP probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpGetAction {
    /// Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A number or a container port's name.
    pub port: IntOrString,
}

impl Default for IntOrString {
    fn default() -> Self {
        IntOrString::Int(0)
    }
}

/// What a Deployment has (set by the node).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods of the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Pods ready for minReadySeconds.
    #[serde(default)]
    pub available_replicas: i32,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available`, `Progressing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A condition as Kubernetes reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Available`, `Progressing`, `Ready`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `"True"`, `"False"`, `"Unknown"`.
    pub status: String,
    /// A CamelCase reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// `v1 Service`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `v1`.
    pub api_version: String,
    /// `Service`.
    pub kind: String,
    /// Name, labels, annotations (`skiff.dev/load-balancer`, `skiff.dev/hash-on`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Selector and ports.
    #[serde(default)]
    pub spec: ServiceSpec,
    /// Set by the node on output (`loadBalancer: {}`, as Kubernetes shows a Service
    /// without an external balancer); never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

/// A Service's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Always empty on skiff (no external load balancer).
    #[serde(default)]
    pub load_balancer: LoadBalancerStatus,
}

/// An external load balancer's state: none on skiff.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerStatus {}

/// A Service's selector and ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Pods with these labels (of any Deployment).
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub selector: Labels,
    /// Its ports.
    #[serde(default, deserialize_with = "exact")]
    pub ports: Vec<ServicePort>,
    /// `ClusterIP` (default) or `NodePort`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// One port of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Its name (required when there are several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The Service's port.
    pub port: i32,
    /// The pods' port: a number or a container port's name. Default: `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// For `NodePort`: 30000-32767.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
}

/// `v1 Pod`: what the node reports of a Deployment's pod (pods are never applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// Name (`<deployment>-<template hash>-<suffix>`), the template's labels plus
    /// `pod-template-hash`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The template's spec and the node it runs on.
    #[serde(default)]
    pub spec: PodSpec,
    /// Phase, address, containers.
    #[serde(default)]
    pub status: PodStatus,
}

/// Where a pod is in its life.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`.
    #[serde(default)]
    pub phase: String,
    /// Its address, where it has one of its own (a Linux container on the bridge).
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// The address of its node.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One per container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// One container of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name in the template.
    pub name: String,
    /// Its image, as the template names it.
    #[serde(default)]
    pub image: String,
    /// The image's digest (`sha256:...`).
    #[serde(default, rename = "imageID", skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    /// Takes requests.
    #[serde(default)]
    pub ready: bool,
    /// Times it was restarted.
    #[serde(default)]
    pub restart_count: i32,
    /// Running, waiting or terminated.
    #[serde(default)]
    pub state: ContainerState,
}

/// One of `running`, `waiting`, `terminated` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// Running since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<StateRunning>,
    /// Not running yet, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<StateReason>,
    /// Ended, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<StateReason>,
}

/// `running`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRunning {
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// `waiting` or `terminated`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReason {
    /// CamelCase (`ContainerCreating`, `CrashLoopBackOff`, `Error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A list of objects as the Kubernetes API returns them (`DeploymentList`, or `List`
/// for mixed kinds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    /// `v1`, `apps/v1`.
    pub api_version: String,
    /// `List`, `DeploymentList`, `ServiceList`, `PodList`.
    pub kind: String,
    /// The state's version when listed.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The objects.
    pub items: Vec<T>,
}

/// A list's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// The desired state's version.
    #[serde(default)]
    pub resource_version: String,
}

/// `v1 Node`: a member of the cluster, as `skiff get nodes` and the Kubernetes API show
/// it (never applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `v1`.
    pub api_version: String,
    /// `Node`.
    pub kind: String,
    /// Name and labels (`--label`).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Whether it takes new pods.
    #[serde(default)]
    pub spec: NodeSpec,
    /// Ready, addresses, version.
    #[serde(default)]
    pub status: NodeStatus,
}

/// A node's spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Cordoned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
}

/// A node's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// `Ready`: `"True"` while it is live.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Where it is reached: `InternalIP`, `Hostname`.
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
    /// Its software.
    #[serde(default)]
    pub node_info: NodeInfo,
}

/// One address of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// `InternalIP`, `Hostname`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The address.
    pub address: String,
}

/// A node's software and identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// skiff's version (where kubectl shows the kubelet's).
    #[serde(default)]
    pub kubelet_version: String,
    /// The node's id (random per data dir).
    #[serde(default, rename = "machineID")]
    pub machine_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_lists_hold_only_their_elements() {
        let json = r#"{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"web","image":"web:1","args":["a"],"ports":[{"containerPort":80}]}]}}"#;
        let t: PodTemplateSpec = serde_json::from_str(json).unwrap();
        assert_eq!(t.spec.containers.capacity(), 1);
        assert_eq!(t.spec.containers[0].args.capacity(), 1);
        assert_eq!(t.spec.containers[0].ports.capacity(), 1);
        let s: ServiceSpec = serde_json::from_str(r#"{"ports":[{"port":80}]}"#).unwrap();
        assert_eq!(s.ports.capacity(), 1);
    }

    #[test]
    fn pods_use_kubectl_field_names() {
        let pod = Pod {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: ObjectMeta {
                name: "web-abc-1".into(),
                deletion_timestamp: Some("t".into()),
                ..ObjectMeta::default()
            },
            spec: PodSpec {
                containers: Vec::new(),
                node_name: Some("n".into()),
                ..PodSpec::default()
            },
            status: PodStatus {
                phase: "Running".into(),
                pod_ip: Some("10.213.0.2".into()),
                host_ip: Some("127.0.0.1".into()),
                container_statuses: vec![ContainerStatus {
                    name: "web".into(),
                    image_id: "sha256:x".into(),
                    restart_count: 2,
                    ..ContainerStatus::default()
                }],
                ..PodStatus::default()
            },
        };
        let json = serde_json::to_string(&pod).unwrap();
        for field in [
            "\"podIP\"",
            "\"hostIP\"",
            "\"nodeName\"",
            "\"deletionTimestamp\"",
            "\"containerStatuses\"",
            "\"imageID\"",
            "\"restartCount\"",
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
    }
}
