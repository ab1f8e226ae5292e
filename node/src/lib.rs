//! The node agent: everything `skiff up` runs on one machine.
//!
//! - [`api`]: the HTTP API (axum) on `--api-addr`: uploads, apps, logs, metrics; bearer
//!   token auth with a constant-time comparison; one error type mapped to HTTP.
//! - `objects`: Deployments and Services as desired (see [`desired`]) and the verbs
//!   that change them, every one a command through Raft; `skiff deploy` and the upload
//!   API write a Deployment and a Service of the app's name (`objects::deploy`).
//! - `reconciler`: turns the desired state into this node's pods, with the gateway's
//!   routing table pointed at them; one controller per kind (Deployment -> pods,
//!   Service -> routes, NodePort Services -> listeners) fed by a work queue of typed
//!   object references. Logs are kept per Deployment (pods share one book, each line
//!   naming its pod), so `logs -f` of an app follows it across rollouts.
//! - `images`: the node's images as a service (prepare, validated uploads, peer copies,
//!   collection); `launcher`: the one starter of every container, in process or under
//!   runc, whose process is part of the container's workload, so whoever retires a
//!   container stops its process; `standalone`: `skiff run` containers, the same
//!   [`container`] objects with an id, published ports, a restart policy and a
//!   stop/start lifecycle; `restart`: the one back-off both kinds of container use, with
//!   Kubernetes' and Docker's presets.
//! - [`ingress`]: the data plane on `--ingress-addr`: `Host: <app>.<domain>` to a ready
//!   replica, concurrency permits (503 when saturated), error mapping (504/500/502).
//! - [`listener`]: how every HTTP listener (API, ingress, published ports) is served:
//!   a connection cap and header, idle, body and write timeouts, so no client can hold
//!   a connection or an app's permits for ever.
//! - [`desired`]: desired state as a deterministic state machine of Kubernetes objects
//!   (Deployments, Services) changed by versioned commands, durable in redb with a
//!   change feed; the rollout planner. The `reconciler` turns it into pods and
//!   Service routes.
//! - [`metrics`]: Prometheus exposition.
//! - [`cluster`]: membership by sealed gossip (chitchat): identity, joining with the
//!   join token, live members as Kubernetes nodes; [`raft`] keeps the desired state, and
//!   [`placement`] decides where pods run.
//!
//! Data dir layout: `token` (API token, 0600), `node.key` (seals compiled code, 0600),
//! `join-token` and `cluster.json` (the cluster, 0600), `lock` (one node per data dir),
//! `state.redb`, `kube-versions` (the Kubernetes API's version high-water mark),
//! `images/` (an OCI image layout), `sites/<image>/` (extracted static sites and Linux
//! image trees), `cache/…` (compiled code), `containers/<id>/` (runc bundles), `runc/`
//! (runc state).

#![deny(missing_docs)]

pub mod api;
mod clock;
pub mod cluster;
pub mod container;
mod datafiles;
pub mod desired;
pub mod error;
mod files;
mod ids;
mod images;
pub mod ingress;
mod launcher;
pub mod listener;
mod memory;
pub mod metrics;
mod objects;
pub mod placement;
pub mod raft;
mod reconciler;
mod restart;
mod route;
mod standalone;
pub mod state;
mod tls;

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use skiff_gateway::RoutingTable;
use skiff_image::ImageStore;
use skiff_image::layer::ExtractLimits;
use skiff_runtime::{ProgressBody, Runtime, RuntimeConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::listener::ListenerLimits;
pub use crate::tls::member_client;
pub use skiff_image::layer::ExtractLimits as ImageExtractLimits;
pub use skiff_runtime::{CompilerCommand, compile_worker};

use crate::datafiles::DataFile;
use crate::metrics::Metrics;
use crate::state::StateStore;

/// Node settings. Every address and directory has a flag and an env twin in the CLI.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// API listener. Default `127.0.0.1:7700`.
    pub api_addr: SocketAddr,
    /// Ingress listener. Default `127.0.0.1:7780`.
    pub ingress_addr: SocketAddr,
    /// Apps are served at `<app>.<domain>`. Default `localhost`.
    pub domain: String,
    /// Largest upload accepted, in bytes. Default 64 MiB.
    pub upload_cap: u64,
    /// How long shutdown waits for in-flight requests. Default 10 s.
    pub drain_timeout: Duration,
    /// Try the pooling allocator. Default true.
    pub pooling: bool,
    /// Timeouts and the connection cap of every listener.
    pub listener: ListenerLimits,
    /// Bounds on extracting an image's layers; its `min_free_bytes` is also what an
    /// image blob being written must leave free on the data dir's disk.
    pub extract: ExtractLimits,
    /// Bytes a change to the node's state (a Raft entry, a tag) must leave free on the
    /// data dir's disk; below it writes are refused (507). Default 64 MiB.
    pub state_reserve: u64,
    /// Guest memory the node may commit at once (bytes). Default: half the machine's.
    pub memory_budget: u64,
    /// Longest a compilation may take. Default 120 s.
    pub compile_timeout: Duration,
    /// Where compilation runs: a child process (`skiff up` sets its own binary), or in
    /// the node's process when `None`.
    pub compiler: Option<CompilerCommand>,
    /// Gossip, joining, the node's name and labels.
    pub cluster: cluster::ClusterSettings,
}

impl NodeConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7700)),
            ingress_addr: SocketAddr::from(([127, 0, 0, 1], 7780)),
            domain: "localhost".into(),
            upload_cap: 64 << 20,
            drain_timeout: Duration::from_secs(10),
            pooling: true,
            listener: ListenerLimits::default(),
            extract: ExtractLimits::default(),
            state_reserve: 64 << 20,
            memory_budget: skiff_runtime::machine_memory() / 2,
            compile_timeout: Duration::from_secs(120),
            compiler: None,
            cluster: cluster::ClusterSettings::default(),
        }
    }

    /// Defaults with every listener on an ephemeral loopback port.
    pub fn for_test(data_dir: PathBuf) -> Self {
        let mut config = Self {
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ingress_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::new(data_dir)
        };
        config.cluster.gossip_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}

/// What the API handlers and the ingress share.
pub(crate) struct Shared {
    config: NodeConfig,
    token: AdminToken,
    images: Arc<images::Images>,
    /// Deployments and Services as desired, and the verbs that change them.
    objects: objects::Objects,
    /// This node's pods and routes, made to match the desired state.
    reconciler: Arc<reconciler::Reconciler>,
    /// `skiff run` and `docker run` containers.
    standalone: Arc<standalone::Standalone>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    cluster: cluster::Cluster,
    consensus: Arc<raft::Consensus>,
    /// What this node sees of the cluster, for the reconciler.
    view: tokio::sync::watch::Sender<Arc<cluster::View>>,
    /// Docker API execs: made by one call, started and inspected by others.
    docker_execs: api::docker::Execs,
    /// Deployments and Services, as desired (read; changed only through `consensus`).
    desired: Arc<desired::DesiredStore>,
    /// The Kubernetes API's objects as served, versioned, with their watch events.
    kube_store: api::kube::Store,
    /// This node's pods as peers fetch them (kept by the Kubernetes API's feed).
    local_pods: api::kube::PodLog,
    /// The cluster CA (PEM), for kubeconfigs.
    api_ca: String,
    /// Where others reach this node's API (`host:port`).
    api_advertised: String,
    /// Live peers' addresses, for the API listener's connections kept for them.
    peers: Arc<listener::Peers>,
    /// Peer requests' ids seen within the signature window.
    peer_replays: raft::peer::Replays,
}

/// A started node.
pub struct RunningNode {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the ingress listens.
    pub ingress_addr: SocketAddr,
    /// The API token file (a node that joined a cluster has only the token's hash: the
    /// token is the first node's).
    pub token_path: PathBuf,
    /// Whether the token was created by this start.
    pub token_created: bool,
    /// The full API on a unix socket (mode 0600): the local CLI's way in, no token sent.
    pub api_socket: Option<PathBuf>,
    /// Where gossip listens (as others reach it).
    pub gossip_addr: SocketAddr,
    /// The cluster's join token (what `--join-token` takes).
    pub join_token: String,
    /// The Docker API's unix socket (`DOCKER_HOST=unix://...`), unless it could not be
    /// made (the node serves without it).
    pub docker_socket: Option<PathBuf>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Why the node stopped itself, if it did.
    failure: Arc<std::sync::OnceLock<String>>,
    _lock: File,
}

impl RunningNode {
    /// A token that stops the node when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for shutdown, then for in-flight requests to drain. An error says why the
    /// node stopped itself (Raft stopped on a storage error: a restart recovers from
    /// what is on disk, so the process should exit for its supervisor to start it again).
    pub async fn wait(self) -> anyhow::Result<()> {
        for t in self.tasks {
            let _ = t.await;
        }
        self.shared.standalone.stop_all().await;
        self.shared
            .reconciler
            .drain_all(self.shared.config.drain_timeout)
            .await;
        let members = self.shared.cluster.members().await;
        self.shared
            .cluster
            .remember_peers(&self.shared.config.data_dir, &members);
        self.shared.consensus.shutdown().await;
        info!("node stopped");
        match self.failure.get() {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }
}

/// The cluster's admin token as this node knows it: the first node made it and holds it
/// (`token`); a node that joined holds only its SHA-256 (`token.sha256`), so the token
/// never crossed the network, and accepts it all the same.
pub(crate) struct AdminToken {
    plain: Option<String>,
    sha256: [u8; 32],
}

impl AdminToken {
    /// Reads the token (or its hash) from `dir`, making a token on a first node's first
    /// start. Also says whether it was made now.
    fn load(dir: &Path, joined: bool) -> anyhow::Result<(Self, bool)> {
        use sha2::Digest as _;
        let token_path = dir.join("token");
        let hash_path = dir.join(cluster::TOKEN_SHA256);
        // A node that joined before tokens were hashed holds the token itself: kept.
        if joined && !token_path.exists() {
            let text = fs::read_to_string(&hash_path)
                .with_context(|| format!("cannot read {}", hash_path.display()))?;
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut sha256)
                .with_context(|| format!("{} is not 64 hex digits", hash_path.display()))?;
            return Ok((
                Self {
                    plain: None,
                    sha256,
                },
                false,
            ));
        }
        let (token, created) = files::load_or_create_secret(&token_path, || ids::random_hex(32))?;
        let sha256 = sha2::Sha256::digest(token.as_bytes()).into();
        Ok((
            Self {
                plain: Some(token),
                sha256,
            },
            created,
        ))
    }

    /// Whether `presented` is the token (constant time).
    pub(crate) fn accepts(&self, presented: &str) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let digest = sha2::Sha256::digest(presented.as_bytes());
        bool::from(digest.as_slice().ct_eq(&self.sha256))
    }

    /// Its SHA-256, hex: what a joining node is given.
    pub(crate) fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The token, on the node that made it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn plain(&self) -> Option<&str> {
        self.plain.as_deref()
    }
}

/// Stops the node when Raft stops on its own (openraft stops its core for good on a
/// storage error other than a full disk, which its storage waits out): a node whose
/// consensus is gone would only refuse every write until someone restarts it.
async fn exit_if_consensus_fails(
    shared: Arc<Shared>,
    failure: Arc<std::sync::OnceLock<String>>,
    shutdown: CancellationToken,
) {
    let why = tokio::select! {
        () = shutdown.cancelled() => return,
        why = shared.consensus.failed() => why,
    };
    let why = format!(
        "Raft stopped on this node ({why}; data dir {}): exiting so that a restart recovers from what is on disk",
        shared.config.data_dir.display()
    );
    tracing::error!("{why}");
    let _ = failure.set(why);
    shutdown.cancel();
}

/// Tells consensus what gossip sees, every 250 ms: which nodes are live (for the quorum
/// check and the voters' grace), and, once a second, lets the leader tend the
/// membership.
async fn follow_membership(shared: &Shared, shutdown: CancellationToken) {
    let mut settle = Settle::new(&shared.config.cluster);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let members = shared.cluster.members().await;
        let live: std::collections::BTreeMap<raft::NodeId, raft::Peer> = members
            .iter()
            .filter(|m| m.live)
            .filter_map(|m| {
                let id = raft::raft_id(&m.node_id)?;
                let peer = raft::Peer {
                    api: m.keys.get(skiff_spec::cluster::API)?.clone(),
                    name: m.keys.get(skiff_spec::cluster::NAME)?.clone(),
                    gateway: m.is_gateway(),
                };
                Some((id, peer))
            })
            .collect();
        shared.consensus.set_live(&live).await;
        shared.peers.set(
            members
                .iter()
                .filter(|m| m.live && m.node_id != shared.cluster.identity().node_id)
                .flat_map(|m| {
                    let api = m.keys.get(skiff_spec::cluster::API);
                    let api = api.and_then(|a| a.parse::<SocketAddr>().ok());
                    [Some(m.gossip.ip()), api.map(|a| a.ip())]
                })
                .flatten()
                .collect(),
        );
        shared
            .cluster
            .remember_peers(&shared.config.data_dir, &members);
        let majority = shared.consensus.in_majority();
        if !majority {
            settle.in_minority();
        }
        let confirmed = shared.consensus.confirmed_since_a_voter_went();
        // Waiting for Raft to confirm the majority after a voter went (a heartbeat
        // away): look again soon rather than a whole tick later.
        if majority && !confirmed {
            tick.reset_after(Duration::from_millis(50));
        }
        let view = view_of(
            &shared.cluster,
            &members,
            &shared.consensus,
            settle,
            majority && confirmed,
        );
        shared.view.send_if_modified(|v| {
            let changed = **v != view;
            if changed {
                *v = Arc::new(view);
            }
            changed
        });
        shared
            .cluster
            .publish_pods(shared.reconciler.changed_pod_counts())
            .await;
        if n % 4 == 0 {
            shared.consensus.tend(&live).await;
        }
    }
}

/// How long a node that starts, or comes back from a minority (a healed partition),
/// waits to hear from every member before it treats the ones it has not heard from as
/// gone: until then it takes over nobody's pods (a node it has not heard from again yet
/// may well be running them, and heartbeats come back one node at a time).
#[derive(Clone, Copy)]
struct Settle {
    until: std::time::Instant,
    wait: Duration,
}

impl Settle {
    fn new(settings: &cluster::ClusterSettings) -> Self {
        // Twice the failure detector's time: long enough to hear from every live node.
        let wait = settings
            .gossip_interval
            .mul_f64(settings.phi_threshold * 2.0);
        Self {
            until: std::time::Instant::now() + wait,
            wait,
        }
    }

    /// While this node is in a minority, the wait starts again.
    fn in_minority(&mut self) {
        self.until = std::time::Instant::now() + self.wait;
    }
}

/// What this node sees of the cluster: the live members (itself always), and whether
/// it may move work (`majority`: it reaches a majority of the voters and Raft has
/// confirmed that since the last voter went; and it has heard from every member or
/// waited long enough to know it will not).
fn view_of(
    cluster: &cluster::Cluster,
    members: &[cluster::Member],
    consensus: &raft::Consensus,
    settle: Settle,
    majority: bool,
) -> cluster::View {
    let me = &cluster.identity().node_id;
    let mut nodes: Vec<cluster::NodeView> = members
        .iter()
        .filter(|m| m.live || &m.node_id == me)
        .map(|m| {
            if &m.node_id == me {
                m.view_without_pods()
            } else {
                m.view()
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let heard_from_all = consensus
        .roles()
        .keys()
        .all(|id| nodes.iter().any(|n| raft::raft_id(&n.id) == Some(*id)));
    let settled = heard_from_all || std::time::Instant::now() >= settle.until;
    cluster::View {
        me: me.clone(),
        nodes,
        members: members.iter().map(|m| m.node_id.clone()).collect(),
        can_place: settled && majority,
    }
}

/// Opens the data dir, restores the apps, binds both listeners and starts serving.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    memory::tune();
    let dir = &config.data_dir;
    fs::create_dir_all(dir)
        .with_context(|| format!("failed to create data dir {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("failed to restrict {}", dir.display()))?;
    let lock = File::create(dir.join("lock")).context("failed to create the data dir lock")?;
    if lock.try_lock().is_err() {
        bail!("data dir {} is in use by another skiff node", dir.display());
    }
    let token_path = dir.join("token");
    let (identity, join_token) = cluster::prepare(dir, &config.cluster).await?;
    let (token, token_created) = AdminToken::load(dir, identity.joined)?;
    let (key_hex, _) = files::load_or_create_secret(&dir.join("node.key"), || ids::random_hex(32))?;
    let mut cache_key = [0u8; 32];
    hex::decode_to_slice(key_hex.trim(), &mut cache_key)
        .context("node.key is not 64 hex digits")?;

    let images = Arc::new(datafiles::open(DataFile::Tags, dir, || {
        ImageStore::open_reserving(
            &dir.join("images"),
            skiff_image::disk::Reserve {
                bulk: config.extract.min_free_bytes,
                state: config.state_reserve,
            },
        )
        .context("failed to open the image store")
    })?);
    // The desired state is read here too: a corrupt page may only show when read.
    let (state, desired) = datafiles::open(DataFile::State, dir, || {
        let state = Arc::new(
            StateStore::open(&dir.join("state.redb"))
                .context("failed to open the state database")?,
        );
        let desired = desired::DesiredStore::open(state.clone())
            .context("failed to read the desired state")?;
        Ok((state, Arc::new(desired)))
    })?;
    let mut rt_config = RuntimeConfig::new(dir.join("cache"), cache_key);
    rt_config.pooling = config.pooling;
    rt_config.memory_budget = config.memory_budget;
    rt_config.compile_timeout = config.compile_timeout;
    rt_config.compiler = config.compiler.clone();
    let runtime = Runtime::new(rt_config).context("failed to start the wasm runtime")?;

    let api_listener = TcpListener::bind(config.api_addr)
        .await
        .with_context(|| format!("failed to bind the API to {}", config.api_addr))?;
    let ingress_listener = TcpListener::bind(config.ingress_addr)
        .await
        .with_context(|| format!("failed to bind the ingress to {}", config.ingress_addr))?;
    let api_addr = api_listener.local_addr()?;
    // TLS serves kubectl, and is how nodes join and talk to each other.
    let node_tls = tls::load(
        dir,
        &identity.node_id,
        &[
            api_addr.ip(),
            cluster::advertised(api_addr, config.cluster.advertise).ip(),
        ],
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
    )
    .context("failed to set up the node's TLS (the cluster CA in tls/ of the data dir)")?;
    let ingress_addr = ingress_listener.local_addr()?;
    let gossip_socket = tokio::net::UdpSocket::bind(config.cluster.gossip_addr)
        .await
        .with_context(|| {
            format!(
                "failed to bind gossip to {}/UDP",
                config.cluster.gossip_addr
            )
        })?;
    let cluster = cluster::Cluster::start(
        identity,
        join_token,
        &config.cluster,
        gossip_socket,
        api_addr,
        ingress_addr,
    )
    .await?;

    // Requests one node's ingress forwards to another's are marked with this key.
    let forward_key = {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(
            Some(b"skiff forwarded v1"),
            cluster.join_token().secret.as_bytes(),
        );
        let mut key = [0u8; 32];
        hk.expand(cluster.identity().cluster_id.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        skiff_runtime::ForwardKey::new(key)
    };
    let table = Arc::new(RoutingTable::default());
    let metrics = Arc::new(Metrics::default());
    let ingress = Arc::new(ingress::Ingress {
        domain: config.domain.clone(),
        table: table.clone(),
        metrics: metrics.clone(),
        limits: config.listener,
        node_port_ip: ingress_addr.ip(),
        forward_key: forward_key.clone(),
    });
    let url_suffix = format!("{}:{}/", config.domain, ingress_addr.port());
    let shutdown = CancellationToken::new();
    let kick = Arc::new(tokio::sync::Notify::new());
    let identity = cluster.identity().clone();
    let raft_id = raft::raft_id(&identity.node_id)
        .with_context(|| format!("node id {:?} is not 16 hex digits", identity.node_id))?;
    let peer_key = raft::peer::PeerKey::new(&cluster.join_token().secret, &identity.cluster_id);
    let consensus = Arc::new(
        raft::Consensus::start(
            dir,
            &identity.cluster_id,
            raft_id,
            raft::Peer {
                api: cluster::advertised(api_addr, config.cluster.advertise).to_string(),
                name: identity.name.clone(),
                gateway: config.cluster.gateway,
            },
            desired.clone(),
            kick.clone(),
            raft::peer::PeerClient::new(peer_key, raft_id, node_tls.peer.clone()),
            !identity.joined,
            config.cluster.voter_grace,
            config.state_reserve,
            shutdown.clone(),
        )
        .await?,
    );
    // Before gossip is heard only a lone voter sees a majority: a restarted member of a
    // larger cluster starts no pods before it knows where the others run theirs.
    let initial = view_of(
        &cluster,
        &cluster.members().await,
        &consensus,
        Settle::new(&config.cluster),
        consensus.in_majority() && consensus.confirmed_since_a_voter_went(),
    );
    let (view_tx, view_rx) = tokio::sync::watch::channel(Arc::new(initial));
    let images = Arc::new(images::Images::new(
        images,
        runtime.clone(),
        metrics.clone(),
        images::Settings {
            sites: dir.join("sites"),
            data: dir.clone(),
            extract: config.extract,
            view: view_rx.clone(),
            peer_tls: node_tls.peer.clone(),
            pull_cap: config.upload_cap,
        },
    ));
    let launcher = Arc::new(launcher::Launcher::new(
        runtime,
        dir,
        config.listener.body_timeout,
    ));
    let pods = Arc::new(reconciler::PodTable::new(kick));
    let standalone = Arc::new(standalone::Standalone::new(standalone::Settings {
        images: images.clone(),
        launcher: launcher.clone(),
        ingress: ingress.clone(),
        state: state.clone(),
        desired: desired.clone(),
        pods: pods.clone(),
        shutdown: shutdown.clone(),
        drain: config.drain_timeout,
    }));
    let reconciler = Arc::new(reconciler::Reconciler::new(
        launcher.clone(),
        images.clone(),
        pods,
        ingress.clone(),
        Arc::new(ingress::NodePorts::new(
            ingress.clone(),
            shutdown.clone(),
            config.drain_timeout,
        )),
        reconciler::Settings {
            desired: desired.clone(),
            view: view_rx,
            body_timeout: config.listener.body_timeout,
            forward_key,
        },
    ));
    let objects = objects::Objects::new(
        images.clone(),
        state,
        ingress.clone(),
        standalone.clone(),
        launcher,
        reconciler.clone(),
        objects::Settings {
            url_suffix,
            desired: desired.clone(),
            consensus: consensus.clone(),
        },
    );
    // Brings the node back: leftovers of a killed node cleaned, apps of an older node
    // made Deployments (their pods come back in the reconciler's first passes while the
    // node serves), `skiff run` containers restarted. A pod that cannot start waits with
    // its reason rather than stopping the node.
    reconciler.clean_leftovers().await;
    objects.restore().await?;
    standalone.restore().await?;

    let shared = Arc::new(Shared {
        config: config.clone(),
        token,
        images,
        objects,
        reconciler,
        standalone,
        metrics,
        shutdown: shutdown.clone(),
        cluster,
        consensus,
        view: view_tx,
        docker_execs: Default::default(),
        desired,
        kube_store: api::kube::Store::open(dir.join("kube-versions")),
        local_pods: Default::default(),
        api_ca: node_tls.ca.clone(),
        api_advertised: cluster::advertised(api_addr, config.cluster.advertise).to_string(),
        peers: Default::default(),
        peer_replays: Default::default(),
    });

    let exits = {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::join!(
                shared.reconciler.run_exit_loop(shutdown.clone()),
                shared.standalone.run_exit_loop(shutdown),
            );
        })
    };
    let reconciler = {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move { shared.reconciler.run(shutdown).await })
    };
    let restore = {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            if shared.reconciler.track_restore(shutdown).await {
                // What a killed node left (a blob written, its image never tagged) goes
                // once, now that the pods have what they need.
                shared.objects.collect_garbage_now().await;
                // A restore allocates for every pod at once; what it freed goes back.
                memory::trim();
            }
        })
    };
    let kube_feed = {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move { api::kube::run_feed(shared, shutdown).await })
    };
    let membership = {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move { follow_membership(&shared, shutdown).await })
    };
    let failure = Arc::new(std::sync::OnceLock::new());
    let consensus_watch = tokio::spawn(exit_if_consensus_fails(
        shared.clone(),
        failure.clone(),
        shutdown.clone(),
    ));
    let ingress = tokio::spawn(ingress::serve(
        ingress_listener,
        ingress.clone(),
        ingress::Target::ByHost,
        shutdown.clone(),
        config.drain_timeout,
    ));
    let api = serve_router(
        listener::Listening::TcpOrTls(
            api_listener,
            node_tls.acceptor.clone(),
            shared.peers.clone(),
        ),
        api::router(shared.clone()),
        &config,
        &shutdown,
        "api",
    );
    // The Docker API on a unix socket: whoever can open it (root and the socket's group)
    // is an admin, as with Docker's own.
    let socket_path = dir.join("docker.sock");
    let docker = match unix_listener(&socket_path, 0o660) {
        Ok(socket) => Some(serve_router(
            listener::Listening::Unix(socket),
            api::docker::router(shared.clone()),
            &config,
            &shutdown,
            "docker",
        )),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the Docker API socket is not served");
            None
        }
    };
    // The whole API on a socket only the data dir's owner can open: the local CLI's way
    // in, with no token on any wire.
    let api_socket_path = dir.join("api.sock");
    let api_local = match unix_listener(&api_socket_path, 0o600) {
        Ok(socket) => Some(serve_router(
            listener::Listening::Unix(socket),
            api::router(shared.clone()),
            &config,
            &shutdown,
            "api-local",
        )),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the API's unix socket is not served");
            None
        }
    };
    let api_socket = api_local.is_some().then_some(api_socket_path);
    info!(%api_addr, %ingress_addr, data_dir = %dir.display(), "node started");
    Ok(RunningNode {
        api_addr,
        ingress_addr,
        token_path,
        token_created,
        gossip_addr: shared.cluster.gossip_addr(),
        join_token: shared.cluster.join_token().to_string(),
        api_socket,
        docker_socket: docker.is_some().then_some(socket_path),
        shutdown,
        tasks: [
            ingress,
            api,
            exits,
            reconciler,
            restore,
            kube_feed,
            membership,
            consensus_watch,
        ]
        .into_iter()
        .chain(docker)
        .chain(api_local)
        .collect(),
        shared,
        failure,
        _lock: lock,
    })
}

/// Serves `router` on `listening` within the node's listener limits.
fn serve_router(
    listening: listener::Listening,
    router: axum::Router,
    config: &NodeConfig,
    shutdown: &CancellationToken,
    what: &'static str,
) -> JoinHandle<()> {
    let body_timeout = config.listener.body_timeout;
    tokio::spawn(listener::serve(
        listening,
        config.listener,
        shutdown.clone(),
        config.drain_timeout,
        what,
        move |req: http::Request<hyper::body::Incoming>, _, _| {
            // Uploads that stop moving fail instead of holding a temp file open.
            let req = req.map(|b| axum::body::Body::new(ProgressBody::new(b, body_timeout)));
            let router = router.clone();
            async move {
                match tower::ServiceExt::oneshot(router, req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        },
    ))
}

/// Listens on a unix socket at `path` with `mode`, replacing a stale socket a killed node
/// left (never another kind of file).
fn unix_listener(path: &Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)
            .with_context(|| format!("failed to remove the old {}", path.display()))?;
    }
    let socket = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("failed to listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to set the mode of {}", path.display()))?;
    Ok(socket)
}
