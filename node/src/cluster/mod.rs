//! The cluster: who the members are and whether they are alive, by sealed gossip
//! (chitchat behind this one module).
//!
//! Every data dir has a node id (random, never reused), a name, a cluster id and a join
//! secret (`join-token`, 0600), kept in `cluster.json` and `join-token`; each start raises
//! the generation, so peers tell a restarted node from its old self. The first node of a
//! cluster makes the cluster id, the secret and the cluster CA; another joins with
//! `--join <api address> --join-token <token>` ([`join`]: over TLS pinned to the CA's
//! hash in the token, the secret proven and never sent) and is given the cluster id,
//! gossip seeds, the CA and the admin token's hash (never the token), so one token and
//! one kubeconfig work on every node. After that a restart needs no flags.
//!
//! Each node gossips a few keys about itself (name, API and ingress addresses, labels,
//! version, start time; see `skiff_spec::cluster`). A member is live once the failure
//! detector says so and it has advertised its API and ingress.

pub mod join;
pub mod seal;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState};
use serde::{Deserialize, Serialize};
use skiff_spec::cluster as keys;
use skiff_spec::k8s::{self, Condition, NodeAddress, NodeInfo, NodeStatus, ObjectMeta};

use self::join::JoinToken;
use self::seal::{GossipStats, Seal, SealedTransport};

/// How a node takes part in a cluster (flags of `skiff up`).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// Where gossip listens (UDP). Port 0 picks one.
    pub gossip_addr: SocketAddr,
    /// The host others reach this node at, when it differs from the listen addresses.
    pub advertise: Option<IpAddr>,
    /// A member's API address, to join its cluster (first start only).
    pub join: Option<String>,
    /// The cluster's join token (`SK1<CA hash>::<secret>`), with `join`.
    pub join_token: Option<String>,
    /// This node's name; default: the host name and a piece of the node id.
    pub node_name: Option<String>,
    /// `--label k=v`.
    pub labels: BTreeMap<String, String>,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Suspicion above which a silent member is dead (phi accrual).
    pub phi_threshold: f64,
    /// How long a Raft voter may be dead before a live node takes its vote.
    pub voter_grace: Duration,
    /// Memory this node offers pods, bytes (placement's weight and bound); default: the
    /// machine's.
    pub capacity_memory: Option<u64>,
    /// A gateway: holds no pods, never votes, only routes.
    pub gateway: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7701)),
            advertise: None,
            join: None,
            join_token: None,
            node_name: None,
            labels: BTreeMap::new(),
            // phi 8 at 200 ms: a silent member is dead in about 1.8 s on this hardware.
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            voter_grace: Duration::from_secs(30),
            capacity_memory: None,
            gateway: false,
        }
    }
}

/// What a data dir knows of its cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    /// Random per data dir, never reused.
    pub node_id: String,
    /// Shown by `get nodes`.
    pub name: String,
    /// The cluster's id (gossip from other clusters does not open).
    pub cluster_id: String,
    /// Gossip addresses to start from.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Raised by every start.
    #[serde(default)]
    pub generation: u64,
    /// Whether this node joined a cluster (else it founded one).
    #[serde(default)]
    pub joined: bool,
    /// Whether `tls/` holds the cluster's CA (a node that joined before nodes talked
    /// over TLS holds a CA of its own).
    #[serde(default)]
    pub cluster_ca: bool,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// The file a joined node keeps the admin token's SHA-256 in (it never has the token).
pub const TOKEN_SHA256: &str = "token.sha256";

/// Joins through `join` as `identity`, proving `secret` over the CA `pin` allows, and
/// keeps what the member answers: the CA in `tls/`, the admin token's hash, the cluster
/// id and seeds.
async fn join_through(
    dir: &Path,
    join: &str,
    pin: join::Pin<'_>,
    secret: &str,
    identity: &mut Identity,
) -> anyhow::Result<()> {
    let answer = join::ask(join, pin, secret, &identity.node_id, &identity.name).await?;
    let ca = crate::tls::Ca {
        cert: answer.ca_cert,
        key: answer.ca_key,
    };
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&answer.admin_token_sha256, &mut hash)
        .context("the join answer's admin token hash is not 64 hex digits")?;
    crate::tls::adopt_ca(&dir.join("tls"), &ca)?;
    crate::files::write_private(
        &dir.join(TOKEN_SHA256),
        &format!("{}\n", answer.admin_token_sha256),
    )?;
    identity.cluster_id = answer.cluster_id;
    identity.seeds = answer.seeds;
    identity.joined = true;
    identity.cluster_ca = true;
    Ok(())
}

/// How long a node that joined before the cluster CA listens to gossip for a member
/// to take the CA from.
const FIND_MEMBER_WITHIN: Duration = Duration::from_secs(60);

/// Takes the cluster CA for a node that joined before nodes talked over TLS and is
/// started without `--join`: gossip (sealed with the secret it has) tells it where the
/// members' APIs are, and it joins through the first that proves the secret back
/// ([`join::Pin::FirstSeen`]). Its id, name and data stay.
async fn take_ca_found_by_gossip(
    dir: &Path,
    settings: &ClusterSettings,
    secret: &str,
    identity: &mut Identity,
) -> anyhow::Result<()> {
    let apis = member_apis(identity, secret, settings, FIND_MEMBER_WITHIN).await?;
    if apis.is_empty() {
        bail!(
            "this node joined its cluster before nodes talked over TLS and heard no member by gossip within {} s to take the cluster CA from: start it with the cluster up, or once with --join <a member's API address> --join-token <the token `skiff cluster join-token` prints on that member>",
            FIND_MEMBER_WITHIN.as_secs()
        );
    }
    let mut failures = Vec::new();
    for api in &apis {
        match join_through(dir, api, join::Pin::FirstSeen, secret, identity).await {
            Ok(()) => {
                tracing::info!(through = %api, "took the cluster CA from a member found by gossip (this node joined before nodes talked over TLS)");
                return Ok(());
            }
            Err(e) => failures.push(format!("{api}: {e:#}")),
        }
    }
    bail!(
        "no member found by gossip gave this node the cluster CA: {}",
        failures.join("; ")
    )
}

/// Gossips as `identity` (its generation raised, so the real start after is newer still)
/// until some live member advertises its API, for at most `within`; returns those API
/// addresses (none at once when it knows no seeds).
async fn member_apis(
    identity: &mut Identity,
    secret: &str,
    settings: &ClusterSettings,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    if identity.seeds.is_empty() {
        return Ok(Vec::new());
    }
    identity.generation += 1;
    let socket = tokio::net::UdpSocket::bind(settings.gossip_addr)
        .await
        .with_context(|| format!("failed to bind gossip to {}/UDP", settings.gossip_addr))?;
    let bound = socket.local_addr()?;
    let seal = Arc::new(Seal::new(secret, &identity.cluster_id));
    let transport = SealedTransport::new(socket, seal, Arc::new(GossipStats::default()));
    let config = gossip_config(identity, settings, bound);
    let handle = chitchat::spawn_chitchat(config, Vec::new(), &transport)
        .await
        .context("failed to start gossip")?;
    let deadline = tokio::time::Instant::now() + within;
    let apis = loop {
        let apis: Vec<String> = {
            let chitchat = handle.chitchat();
            let chitchat = chitchat.lock().await;
            chitchat
                .live_nodes()
                .filter(|id| *id.node_id != *identity.node_id)
                .filter_map(|id| chitchat.node_state(id)?.get(keys::API).map(str::to_string))
                .collect()
        };
        if !apis.is_empty() || tokio::time::Instant::now() >= deadline {
            break apis;
        }
        tokio::time::sleep(settings.gossip_interval).await;
    };
    let _ = handle.shutdown().await;
    Ok(apis)
}

/// Reads (or makes, or joins) the data dir's cluster identity and raises its generation.
/// Joining writes the cluster CA to `tls/` and the admin token's SHA-256 to
/// [`TOKEN_SHA256`]. Returns the identity and the join token.
pub async fn prepare(
    dir: &Path,
    settings: &ClusterSettings,
) -> anyhow::Result<(Identity, JoinToken)> {
    let identity_path = dir.join("cluster.json");
    let secret_path = dir.join("join-token");
    // Read only to join: a stale SKIFF_JOIN_TOKEN in the environment stops no other start.
    let given = match &settings.join {
        Some(_) => settings
            .join_token
            .as_deref()
            .map(str::parse::<JoinToken>)
            .transpose()
            .context("--join-token")?,
        None => None,
    };
    let mut identity = match std::fs::read(&identity_path) {
        Ok(bytes) => serde_json::from_slice::<Identity>(&bytes)
            .with_context(|| format!("{} is not valid", identity_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let node_id = crate::ids::random_hex(8);
            let name = settings
                .node_name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", host_name(), &node_id[..4]));
            skiff_spec::AppName::new(name.clone())
                .map_err(|e| anyhow::anyhow!("node name {name:?}: {e}"))?;
            let mut identity = Identity {
                node_id,
                name,
                cluster_id: crate::ids::random_hex(8),
                seeds: Vec::new(),
                generation: 0,
                joined: false,
                cluster_ca: false,
            };
            match &settings.join {
                Some(join) => {
                    let token = given.clone().context(
                        "--join needs --join-token (what `skiff cluster join-token` prints on a member)",
                    )?;
                    join_through(
                        dir,
                        join,
                        join::Pin::Ca(&token.ca_sha256),
                        &token.secret,
                        &mut identity,
                    )
                    .await?;
                    crate::files::write_private(&secret_path, &format!("{token}\n"))?;
                }
                None => {
                    // A token of a data dir made before tokens carried the CA hash is
                    // only the secret: the same secret, now with its hash.
                    let secret = match std::fs::read_to_string(&secret_path) {
                        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                        _ => crate::ids::random_hex(32),
                    };
                    crate::files::write_private(&secret_path, &format!("{secret}\n"))?;
                    identity.cluster_ca = true;
                }
            }
            identity
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", identity_path.display()));
        }
    };
    if identity.joined && !identity.cluster_ca {
        // Joined before nodes talked over TLS: its CA is its own, not the cluster's.
        match (&settings.join, &given) {
            (Some(join), Some(token)) => {
                join_through(
                    dir,
                    join,
                    join::Pin::Ca(&token.ca_sha256),
                    &token.secret,
                    &mut identity,
                )
                .await?;
                tracing::info!(through = %join, "joined again to take the cluster CA");
            }
            _ => {
                let stored = std::fs::read_to_string(&secret_path)
                    .with_context(|| format!("cannot read {}", secret_path.display()))?;
                let secret = stored.trim();
                take_ca_found_by_gossip(dir, settings, secret, &mut identity).await?;
            }
        }
    } else if settings.join.is_some() {
        tracing::info!("this data dir is in a cluster already; --join is ignored");
    }
    if !identity.joined {
        identity.cluster_ca = true;
    }
    let ca = crate::tls::ca(&dir.join("tls"))?;
    let stored = std::fs::read_to_string(&secret_path)
        .with_context(|| format!("cannot read {}", secret_path.display()))?;
    let stored = stored.trim();
    let secret = match stored.parse::<JoinToken>() {
        Ok(token) => token.secret,
        Err(_) => stored.to_string(),
    };
    if secret.is_empty() {
        bail!("{} is empty", secret_path.display());
    }
    let token = JoinToken {
        ca_sha256: ca.sha256()?,
        secret,
    };
    if stored != token.to_string() {
        crate::files::write_private(&secret_path, &format!("{token}\n"))?;
    }
    identity.generation += 1;
    crate::files::write_private(&identity_path, &serde_json::to_string_pretty(&identity)?)?;
    Ok((identity, token))
}

/// A member as gossip knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its node id.
    pub node_id: String,
    /// The generation seen (the highest).
    pub generation: u64,
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// Its keys.
    pub keys: BTreeMap<String, String>,
    /// Alive and advertising its API and ingress.
    pub live: bool,
}

impl Member {
    fn key(&self, k: &str) -> &str {
        self.keys.get(k).map_or("", String::as_str)
    }

    /// As the Kubernetes API shows a node; `role` (its Raft role, if any) is shown as
    /// kubectl reads roles, a `node-role.kubernetes.io/<role>` label.
    pub fn node(&self, role: &str) -> k8s::Node {
        let mut labels: skiff_spec::Labels =
            serde_json::from_str(self.key(keys::LABELS)).unwrap_or_default();
        if !role.is_empty() {
            labels.insert(format!("node-role.kubernetes.io/{role}").into(), "".into());
        }
        if self.is_gateway() {
            labels.insert("node-role.kubernetes.io/gateway".into(), "".into());
        }
        let api = self.key(keys::API);
        let host = api.rsplit_once(':').map_or(api, |(h, _)| h).to_string();
        k8s::Node {
            api_version: "v1".into(),
            kind: "Node".into(),
            metadata: ObjectMeta {
                name: self.key(keys::NAME).to_string(),
                labels,
                creation_timestamp: Some(self.key(keys::STARTED).to_string())
                    .filter(|s| !s.is_empty()),
                ..ObjectMeta::default()
            },
            spec: k8s::NodeSpec::default(),
            status: NodeStatus {
                conditions: vec![Condition {
                    kind: "Ready".into(),
                    status: if self.live { "True" } else { "Unknown" }.into(),
                    reason: Some(if self.live { "NodeAlive" } else { "NodeSilent" }.into()),
                    message: Some(if self.live {
                        "gossip is heard from this node".to_string()
                    } else {
                        "no gossip from this node: it is down or cut off".to_string()
                    }),
                    last_transition_time: None,
                }],
                addresses: vec![
                    NodeAddress {
                        kind: "InternalIP".into(),
                        address: host,
                    },
                    NodeAddress {
                        kind: "Hostname".into(),
                        address: self.key(keys::NAME).to_string(),
                    },
                ],
                node_info: NodeInfo {
                    kubelet_version: self.key(keys::VERSION).to_string(),
                    machine_id: self.node_id.clone(),
                },
            },
        }
    }
}

/// A live node as placement and routing see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Its node id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Memory it offers pods, bytes.
    pub capacity: u64,
    /// Its ingress.
    pub ingress: Option<SocketAddr>,
    /// Its API (`host:port`).
    pub api: Option<String>,
    /// A gateway: takes no pods.
    pub gateway: bool,
    /// Its pods by Deployment.
    pub pods: BTreeMap<String, PodCounts>,
}

/// A node's pods of one Deployment, as it gossips them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// The revision (pod-template hash) the node rolls out: `updated` counts its pods,
    /// so a node that has not applied a newer revision yet does not count as updated.
    pub hash: String,
    /// Pods, any revision, not terminating.
    pub total: u32,
    /// Of the current revision.
    pub updated: u32,
    /// Ready.
    pub ready: u32,
    /// Ready for `minReadySeconds`.
    pub available: u32,
}

impl PodCounts {
    fn encode(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.hash, self.total, self.updated, self.ready, self.available
        )
    }

    fn decode(value: &str) -> Option<Self> {
        let (hash, counts) = value.split_once(',')?;
        let mut n = counts.split(',').map(|v| v.parse::<u32>().ok());
        Some(Self {
            hash: hash.to_string(),
            total: n.next()??,
            updated: n.next()??,
            ready: n.next()??,
            available: n.next()??,
        })
    }
}

/// What this node sees of the cluster now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// This node's id.
    pub me: String,
    /// The live nodes, this one included.
    pub nodes: Vec<NodeView>,
    /// Every node gossip has heard of, live or not: a peer's certificate is honoured
    /// only for one of these (a node that joined a moment ago knows its peers from the
    /// first gossip round, before it has heard enough to call them live).
    pub members: std::collections::BTreeSet<String>,
    /// Whether this node may change where pods run: it reaches a majority of the voters
    /// (as gossip sees them, confirmed by Raft since the last voter went) and has heard
    /// from every member (or waited long enough to know it will not). Otherwise it
    /// keeps its pods as they are instead of taking over others'.
    pub can_place: bool,
}

impl Member {
    /// Whether it is a gateway (no pods, no vote).
    pub fn is_gateway(&self) -> bool {
        self.key(keys::ROLE) == "gateway"
    }

    /// As placement and routing see it.
    pub fn view(&self) -> NodeView {
        let mut view = self.view_without_pods();
        view.pods = self
            .keys
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(keys::PODS_PREFIX)?, PodCounts::decode(v)?)))
            .filter(|(_, c)| c.total > 0)
            .map(|(d, c)| (d.to_string(), c))
            .collect();
        view
    }

    /// [`Self::view`] without its pods: a node's own view of itself (it knows its pods
    /// first-hand, and its own gossip changing must not look like the cluster changing).
    pub fn view_without_pods(&self) -> NodeView {
        NodeView {
            id: self.node_id.clone(),
            name: self.key(keys::NAME).to_string(),
            labels: serde_json::from_str(self.key(keys::LABELS)).unwrap_or_default(),
            capacity: self.key(keys::CAPACITY).parse().unwrap_or(0),
            ingress: self.key(keys::INGRESS).parse().ok(),
            api: Some(self.key(keys::API).to_string()).filter(|a| !a.is_empty()),
            gateway: self.is_gateway(),
            pods: BTreeMap::new(),
        }
    }
}

/// Gossip's settings for `identity` bound at `bound`.
fn gossip_config(
    identity: &Identity,
    settings: &ClusterSettings,
    bound: SocketAddr,
) -> ChitchatConfig {
    let gossip_addr = advertised(bound, settings.advertise);
    ChitchatConfig {
        chitchat_id: ChitchatId::new(identity.node_id.clone(), identity.generation, gossip_addr),
        cluster_id: identity.cluster_id.clone(),
        gossip_interval: settings.gossip_interval,
        listen_addr: bound,
        seed_nodes: identity
            .seeds
            .iter()
            .filter(|s| **s != gossip_addr.to_string())
            .cloned()
            .collect(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: settings.phi_threshold,
            sampling_window_size: 1000,
            max_interval: Duration::from_secs(10),
            initial_interval: settings.gossip_interval,
            dead_node_grace_period: Duration::from_secs(24 * 3600),
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        // Live only once it says where its API and ingress are.
        extra_liveness_predicate: Some(Box::new(|state: &NodeState| {
            state.get(keys::API).is_some() && state.get(keys::INGRESS).is_some()
        })),
    }
}

/// This node's membership: the gossip task and what it knows.
pub struct Cluster {
    handle: ChitchatHandle,
    /// The seeds last written to `cluster.json`.
    seeds: std::sync::Mutex<Vec<String>>,
    identity: Identity,
    token: JoinToken,
    gate: join::Gate,
    stats: Arc<GossipStats>,
    gossip_addr: SocketAddr,
}

/// The address others reach `bound` at: `advertise` if given, else the bound address
/// (a wildcard is not an address anyone can reach: loopback then).
pub fn advertised(bound: SocketAddr, advertise: Option<IpAddr>) -> SocketAddr {
    let ip = advertise.unwrap_or(if bound.ip().is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        bound.ip()
    });
    SocketAddr::new(ip, bound.port())
}

impl Cluster {
    /// Starts gossiping on `socket` as `identity`, advertising `api` and `ingress`.
    pub async fn start(
        identity: Identity,
        token: JoinToken,
        settings: &ClusterSettings,
        socket: tokio::net::UdpSocket,
        api: SocketAddr,
        ingress: SocketAddr,
    ) -> anyhow::Result<Self> {
        let bound = socket.local_addr()?;
        let gossip_addr = advertised(bound, settings.advertise);
        let stats = Arc::new(GossipStats::default());
        let seal = Arc::new(Seal::new(&token.secret, &identity.cluster_id));
        let transport = SealedTransport::new(socket, seal, stats.clone());
        let config = gossip_config(&identity, settings, bound);
        let started = skiff_image::build::rfc3339(std::time::SystemTime::now());
        let initial = vec![
            (keys::NAME.to_string(), identity.name.clone()),
            (
                keys::API.to_string(),
                advertised(api, settings.advertise).to_string(),
            ),
            (
                keys::INGRESS.to_string(),
                advertised(ingress, settings.advertise).to_string(),
            ),
            (
                keys::VERSION.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (
                keys::LABELS.to_string(),
                serde_json::to_string(&settings.labels)?,
            ),
            (keys::STARTED.to_string(), started),
            (
                keys::CAPACITY.to_string(),
                settings
                    .capacity_memory
                    .unwrap_or_else(skiff_runtime::machine_memory)
                    .to_string(),
            ),
            (
                keys::ROLE.to_string(),
                if settings.gateway { "gateway" } else { "node" }.to_string(),
            ),
        ];
        let handle = chitchat::spawn_chitchat(config, initial, &transport)
            .await
            .context("failed to start gossip")?;
        tracing::info!(node = %identity.name, gossip = %gossip_addr, cluster = %identity.cluster_id, generation = identity.generation, "gossip started");
        Ok(Self {
            handle,
            seeds: std::sync::Mutex::new(identity.seeds.clone()),
            identity,
            token,
            gate: join::Gate::default(),
            stats,
            gossip_addr,
        })
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The cluster's join token (the CA's hash and the secret).
    pub fn join_token(&self) -> &JoinToken {
        &self.token
    }

    /// Where others gossip with this node.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Datagrams dropped, by reason.
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// Every member known, one per node id (its highest generation), by name.
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let live: std::collections::HashSet<ChitchatId> = chitchat.live_nodes().cloned().collect();
        let mut by_node: BTreeMap<String, Member> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            // This node's own pod counts (one key per Deployment: thousands) are what it
            // gossips, never what it reads back: not copied every tick.
            let me = *id.node_id == *self.identity.node_id;
            let keys: BTreeMap<String, String> = state
                .key_values()
                .filter(|(k, _)| !(me && k.starts_with(keys::PODS_PREFIX)))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let member = Member {
                node_id: id.node_id.to_string(),
                generation: id.generation_id,
                gossip: id.gossip_advertise_addr,
                live: live.contains(id)
                    && keys.contains_key(keys::API)
                    && keys.contains_key(keys::INGRESS),
                keys,
            };
            match by_node.get(&member.node_id) {
                Some(seen) if seen.generation >= member.generation => {}
                _ => {
                    by_node.insert(member.node_id.clone(), member);
                }
            }
        }
        let mut members: Vec<Member> = by_node.into_values().collect();
        members.sort_by(|a, b| a.key(keys::NAME).cmp(b.key(keys::NAME)));
        members
    }

    /// The member's side of joins.
    pub fn join_gate(&self) -> &join::Gate {
        &self.gate
    }

    /// The answer to a node asking in with `request` from `client`: the cluster's id,
    /// live seeds, the CA (from `data`) and `admin_sha256`, or why not.
    pub async fn answer_join(
        &self,
        request: &join::JoinRequest,
        data: &Path,
        admin_sha256: &str,
    ) -> Result<join::JoinAnswer, join::Refusal> {
        let now = std::time::Instant::now();
        self.gate
            .check(request, &self.token.secret, &self.token.ca_sha256, now)?;
        let members = self.members().await;
        let live = || members.iter().filter(|m| m.live);
        if live().any(|m| m.node_id == request.node_id) {
            return Err(join::Refusal::IdTaken(request.node_id.clone()));
        }
        if let Some(holder) = live().find(|m| m.key(keys::NAME) == request.name) {
            return Err(join::Refusal::NameTaken {
                name: request.name.clone(),
                node_id: holder.node_id.clone(),
            });
        }
        let ca = crate::tls::ca(&data.join("tls"))
            .map_err(|e| join::Refusal::Invalid(format!("this member has no CA to give: {e:#}")))?;
        let mut seeds: Vec<String> = members
            .into_iter()
            .filter(|m| m.live)
            .map(|m| m.gossip.to_string())
            .collect();
        if !seeds.contains(&self.gossip_addr.to_string()) {
            seeds.push(self.gossip_addr.to_string());
        }
        Ok(join::JoinAnswer {
            proof: join::answer_proof(
                &self.token.secret,
                &request.nonce,
                &request.node_id,
                &self.token.ca_sha256,
                &self.identity.cluster_id,
                admin_sha256,
            ),
            cluster_id: self.identity.cluster_id.clone(),
            seeds,
            ca_cert: ca.cert,
            ca_key: ca.key,
            admin_token_sha256: admin_sha256.to_string(),
        })
    }

    /// Writes the live members' gossip addresses (of `members`) to the data dir when
    /// they changed, so a restart, even after a kill, finds its peers without flags.
    pub fn remember_peers(&self, dir: &Path, members: &[Member]) {
        let mut seeds: Vec<String> = members
            .iter()
            .filter(|m| m.live && m.node_id != self.identity.node_id)
            .map(|m| m.gossip.to_string())
            .collect();
        seeds.sort();
        let mut saved = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
        if seeds.is_empty() || *saved == seeds {
            return;
        }
        let mut identity = self.identity.clone();
        identity.seeds.clone_from(&seeds);
        if let Ok(text) = serde_json::to_string_pretty(&identity)
            && crate::files::write_private(&dir.join("cluster.json"), &text).is_ok()
        {
            *saved = seeds;
        }
    }

    /// Gossips this node's pods of the Deployments whose counts changed (one with none
    /// left is set to zeros, not deleted: deletions leave tombstones in every peer).
    pub async fn publish_pods(&self, changed: Vec<(String, Option<PodCounts>)>) {
        if changed.is_empty() {
            return;
        }
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        let state = chitchat.self_node_state();
        for (d, counts) in changed {
            let key = format!("{}{d}", keys::PODS_PREFIX);
            let gossiped = state.get(&key);
            // None gossiped yet reads as zeros already.
            if counts.is_none() && gossiped.is_none() {
                continue;
            }
            let value = counts.unwrap_or_default().encode();
            if gossiped != Some(value.as_str()) {
                state.set(key, value);
            }
        }
    }

    /// What this node gossips under `key`.
    #[cfg(test)]
    pub(crate) async fn own_key(&self, key: &str) -> Option<String> {
        let chitchat = self.handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat.self_node_state().get(key).map(str::to_string)
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(dir: &Path, joined: bool) {
        std::fs::write(
            dir.join("cluster.json"),
            format!(
                r#"{{"node_id":"00000000000000aa","name":"old","cluster_id":"c1","seeds":[],"generation":4,"joined":{joined}}}"#
            ),
        )
        .unwrap();
        std::fs::write(dir.join("join-token"), "oldsecret\n").unwrap();
    }

    #[tokio::test]
    async fn a_data_dir_from_before_the_cluster_ca_gets_it_keeping_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        legacy(dir.path(), false);
        let (identity, token) = prepare(dir.path(), &ClusterSettings::default())
            .await
            .unwrap();
        assert_eq!(
            (identity.generation, identity.cluster_ca),
            (5, true),
            "{identity:?}"
        );
        assert_eq!(token.secret, "oldsecret", "gossip keys stay the same");
        let ca = crate::tls::ca(&dir.path().join("tls")).unwrap();
        assert_eq!(token.ca_sha256, ca.sha256().unwrap());
        let stored = std::fs::read_to_string(dir.path().join("join-token")).unwrap();
        assert_eq!(stored.trim(), token.to_string());
        // And again: nothing changes but the generation.
        let (again, same) = prepare(dir.path(), &ClusterSettings::default())
            .await
            .unwrap();
        assert_eq!((again.generation, same), (6, token));
    }

    #[tokio::test]
    async fn a_node_that_joined_before_the_cluster_ca_and_knows_no_member_is_told_how_to_take_it() {
        let dir = tempfile::tempdir().unwrap();
        legacy(dir.path(), true);
        let e = prepare(dir.path(), &ClusterSettings::default())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("--join-token"), "{e:#}");
    }
}
