//! The keys each node gossips about itself: defined once, read by every node.

/// The node's name (`get nodes`).
pub const NAME: &str = "name";
/// Its API address, `host:port` (also the peer API).
pub const API: &str = "api";
/// Its ingress address, `host:port`.
pub const INGRESS: &str = "ingress";
/// skiff's version on it.
pub const VERSION: &str = "version";
/// Its labels, a JSON object (`--label k=v`).
pub const LABELS: &str = "labels";
/// When this generation started (RFC 3339).
pub const STARTED: &str = "started";
/// Memory it offers pods, bytes (`--capacity-memory`).
pub const CAPACITY: &str = "capacity";
/// `pods.<deployment>`: the Deployment's pods on it,
/// `hash,total,updated,ready,available` (`hash`: the revision it rolls out).
pub const PODS_PREFIX: &str = "pods.";
/// `node` (holds pods) or `gateway` (only routes: `skiff gateway`).
pub const ROLE: &str = "role";
