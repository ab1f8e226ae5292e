//! Consensus on the desired state (openraft, behind this one module).
//!
//! Every node runs Raft, a lone node too: the log is in `raft.redb`, the state machine
//! is the desired state (`machine.rs`), and the peers talk over the API with signed
//! requests (`peer.rs`). The first node of a cluster initializes it as its one voter;
//! every other node is added as a learner by the leader once gossip shows it live, and
//! the leader promotes learners to keep 3 voters from 3 nodes (5 from 5), replacing a
//! voter only after it has been dead for the grace period, one change at a time.
//!
//! Writes go through [`Consensus::write`] on any node: a follower forwards the command
//! to the leader (one hop), then waits until the entry is applied locally, so a client
//! reads its own write from the node it asked. With no quorum of voters reachable (by
//! gossip), a write fails at once, naming the voters it can reach; the node keeps
//! serving what it runs. Reads are local; [`Consensus::linearize`] makes one
//! linearizable (the leader confirms it still leads, and this node catches up to it).
//!
//! A full disk: a write is refused before it is proposed while the data dir's disk is
//! below the state reserve (507, naming the data dir and the bytes free), so it never
//! reaches the log. Once proposed, a write's fate is Raft's: when it is not confirmed
//! (a timeout, Raft stopping, a leader that did not answer) the client is told the
//! outcome is unknown, never that it failed, as it may still be applied. Storage that
//! finds the disk full anyway waits for space rather than stopping Raft, and any other
//! storage error makes the node exit to be restarted (`disk.rs` says why).

// openraft's storage and RPC traits fix their error types, which are large.
#![allow(clippy::result_large_err)]

pub mod disk;
pub mod log;
pub mod machine;
pub mod peer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, Config, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::disk::DiskWait;
use self::peer::{CallError, PeerClient};
use crate::desired::{Applied, Command, DesiredStore, Rejected, Versioned};

/// A node's Raft id: its node id's 64 random bits.
pub type NodeId = u64;

/// What Raft keeps of a member: where its API is, its name for messages, and whether
/// it is a gateway (which never votes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its API address (the peer API too).
    pub api: String,
    /// Its node name.
    pub name: String,
    /// A gateway: a learner only.
    #[serde(default)]
    pub gateway: bool,
}

/// The state machine's answer to an entry: `None` for entries that carry no command.
pub type Reply = Option<Result<Applied, Rejected>>;

openraft::declare_raft_types!(
    /// skiff's Raft types.
    pub TypeConfig:
        D = Versioned,
        R = Reply,
        NodeId = NodeId,
        Node = Peer,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;

/// The Raft id of node id `node_id` (16 hex digits).
pub fn raft_id(node_id: &str) -> Option<NodeId> {
    u64::from_str_radix(node_id, 16).ok()
}

/// Why a write or a linearizable read did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// Too few voters are reachable to commit anything.
    #[error(
        "no quorum: this node reaches {reachable} of the cluster's {total} voters ({voters}); writes need {need}. Running pods keep serving; try again when the voters are back"
    )]
    NoQuorum {
        /// How many voters are reachable (this node included).
        reachable: usize,
        /// How many voters there are.
        total: usize,
        /// Each voter and whether it is reachable.
        voters: String,
        /// How many are needed.
        need: usize,
    },
    /// No leader could be found in time (an election that does not end).
    #[error("no Raft leader was elected within {0:?}; try again")]
    NoLeader(Duration),
    /// The write was sent but not known to be committed in time.
    #[error(
        "the write's outcome is unknown: it was not confirmed within {0:?} and may still be applied; read the object before trying again"
    )]
    Timeout(Duration),
    /// The write was proposed, then something failed before it was confirmed: it may
    /// or may not be applied.
    #[error(
        "the write's outcome is unknown: {0}; it may still be applied, so read the object before trying again"
    )]
    Unknown(String),
    /// The disk is too full to take a write: refused before it was proposed.
    #[error("{0}")]
    DiskFull(String),
    /// A write forwarded here, to a node that no longer leads: nothing was proposed.
    #[error("this node no longer leads the cluster; nothing was written")]
    NotLeader,
    /// The leader could not be reached or refused.
    #[error("the Raft leader {leader} could not take the write: {message}")]
    Leader {
        /// The leader's name.
        leader: String,
        /// Why.
        message: String,
    },
    /// The leader could not be connected to (nothing was sent: safe to try again).
    #[error("the Raft leader could not be reached")]
    Refused,
    /// Raft stopped on this node (a storage failure).
    #[error("consensus failed on this node: {0}")]
    Fatal(String),
}

/// What a leader answers a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    /// The entry's log index.
    pub index: u64,
    /// The state machine's answer.
    pub reply: Reply,
}

/// The role `get nodes` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leads the voters.
    Leader,
    /// Votes.
    Voter,
    /// Follows the log, does not vote.
    Learner,
    /// Not in the membership (yet).
    None,
}

impl Role {
    /// As `get nodes` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::None => "",
        }
    }
}

/// How long a write may take, forwarding and waiting included.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write through a node that has just joined waits for the leader to add it.
const JOINED_WAIT: Duration = Duration::from_secs(10);

/// The consensus module of one node.
pub struct Consensus {
    raft: Raft<TypeConfig>,
    id: NodeId,
    client: PeerClient,
    /// Where each node's API is, as gossip last said.
    book: AddressBook,
    /// The Raft ids gossip says are live (this node included), and since when each
    /// known one has been dead.
    liveness: Mutex<Liveness>,
    /// A voter dead this long is replaced by a live learner.
    grace: Duration,
    /// The data dir, whose disk must keep `reserve` bytes free for a write to be taken.
    dir: PathBuf,
    reserve: u64,
    /// Where storage that finds the disk full waits for space.
    wait: Arc<DiskWait>,
    /// The log (for its health).
    log: log::LogStore,
}

#[derive(Default)]
struct Liveness {
    live: BTreeSet<NodeId>,
    dead_since: HashMap<NodeId, Instant>,
    /// When this node last took entries (or a heartbeat) from a leader.
    leader_heard: Option<Instant>,
}

/// Raft timing for a small machine: heartbeats every 250 ms, elections after 1-2 s
/// of silence (a 2-core node under load must not start needless elections).
fn config(cluster_id: &str) -> anyhow::Result<Config> {
    let config = Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        install_snapshot_timeout: 10_000,
        // Bounded requests for the peer API (its body limit is 32 MiB).
        snapshot_max_chunk_size: 1 << 20,
        max_payload_entries: 64,
        ..Config::default()
    };
    Ok(config.validate()?)
}

impl Consensus {
    /// Starts Raft as node `id` (`me`), on the log in `dir/raft.redb` and the state
    /// machine over `store`. `found` initializes a new cluster with this node as its
    /// one voter when the log is empty; `changed` is woken after every change. Writes
    /// are refused while `dir`'s disk has less than `reserve` bytes free; storage that
    /// finds it full waits for space until `shutdown`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        dir: &Path,
        cluster_id: &str,
        id: NodeId,
        me: Peer,
        store: Arc<DesiredStore>,
        changed: Arc<tokio::sync::Notify>,
        client: PeerClient,
        found: bool,
        grace: Duration,
        reserve: u64,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let wait = Arc::new(DiskWait::new(dir, shutdown));
        let mut log = crate::datafiles::open(crate::datafiles::DataFile::Raft, dir, || {
            log::LogStore::open(&dir.join("raft.redb"), wait.clone())
        })?;
        let empty = log.is_empty().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let machine = machine::Machine::new(store, changed, wait.clone())?;
        let log_health = log.clone();
        let book: AddressBook = Arc::default();
        let network = Network {
            client: client.clone(),
            book: book.clone(),
        };
        let raft = Raft::new(id, Arc::new(config(cluster_id)?), network, log, machine)
            .await
            .context("failed to start Raft")?;
        if empty && found {
            let members = BTreeMap::from([(id, me)]);
            raft.initialize(members)
                .await
                .context("failed to initialize the cluster's Raft membership")?;
            info!("a new cluster: this node is its first voter");
        }
        if !empty {
            // Metrics start empty: wait until they show the membership the log holds.
            raft.wait(Some(Duration::from_secs(10)))
                .metrics(
                    |m| m.membership_config.log_id().is_some(),
                    "the membership loaded",
                )
                .await
                .context("Raft did not load its membership")?;
        }
        // A lone voter (a new cluster, or a one-node one restarted) leads at once: wait
        // for it, so the node takes writes as soon as it serves.
        let lone = {
            let metrics = raft.metrics().borrow().clone();
            let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
            voters == [id] || (empty && found)
        };
        if lone {
            raft.wait(Some(Duration::from_secs(10)))
                .state(ServerState::Leader, "a lone voter leads")
                .await
                .context("this node is the cluster's one voter but did not become its leader")?;
        }
        let consensus = Self {
            raft,
            id,
            client,
            book,
            liveness: Mutex::new(Liveness {
                live: BTreeSet::from([id]),
                ..Liveness::default()
            }),
            grace,
            dir: dir.to_path_buf(),
            reserve,
            wait,
            log: log_health,
        };
        Ok(consensus)
    }

    /// `Err(why)` while Raft's storage cannot be written: it waits for disk space, or
    /// its log could not be opened again after an I/O error.
    pub fn health(&self) -> Result<(), String> {
        self.wait.health().and_then(|()| self.log.health())
    }

    /// Resolves with why, if Raft stops on this node for another reason than being shut
    /// down (a storage error: openraft stops its core for good then).
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(e) = &metrics.borrow().running_state
                && !matches!(e, openraft::error::Fatal::Stopped)
            {
                return e.to_string();
            }
            if metrics.changed().await.is_err() {
                // The core's task ended without saying why (it panicked).
                return match &metrics.borrow().running_state {
                    Err(e) if !matches!(e, openraft::error::Fatal::Stopped) => e.to_string(),
                    _ => "Raft's core task ended".to_string(),
                };
            }
        }
    }

    /// `Ok` when this node's disk has room for `command`: refused before it is proposed
    /// otherwise, so a full disk never fails a write inside the log. A deletion may use
    /// half of the reserve: deleting is how images, and so space, are freed.
    fn has_room(&self, command: &Command) -> Result<(), ConsensusError> {
        let (reserve, what) = match command {
            Command::DeleteDeployment { .. } | Command::DeleteService { .. } => {
                (self.reserve / 2, "a deletion")
            }
            _ => (self.reserve, "a change to the node's state"),
        };
        skiff_image::disk::check(&self.dir, reserve, 0, what)
            .map_err(|e| ConsensusError::DiskFull(e.to_string()))
    }

    /// The client for calls to peers.
    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    /// The key peer requests are signed with.
    pub fn peer_key(&self) -> &peer::PeerKey {
        self.client.key()
    }

    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft handle (the peer API's handlers call it).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Every node's role, by Raft id.
    pub fn roles(&self) -> BTreeMap<NodeId, Role> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, _)| {
                let role = if metrics.current_leader == Some(*id) {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Voter
                } else {
                    Role::Learner
                };
                (*id, role)
            })
            .collect()
    }

    /// Tells consensus which nodes gossip says are live and where their APIs are now
    /// (Raft reaches a node at its gossiped address, so a node restarted on other ports
    /// is reachable before the membership records the move).
    ///
    /// A leader that sees a voter go sends a heartbeat at once: it is what confirms the
    /// majority to every node (see [`Self::confirmed_since_a_voter_went`]), so pods move
    /// off the node that went without waiting for the next one.
    pub async fn set_live(&self, live: &BTreeMap<NodeId, Peer>) {
        {
            let mut book = self.book.write().unwrap_or_else(|e| e.into_inner());
            for (id, peer) in live {
                book.insert(*id, peer.api.clone());
            }
        }
        let (a_voter_went, leader) = {
            let live: BTreeSet<NodeId> = live.keys().copied().collect();
            let mut l = self.liveness.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let mut a_voter_went = false;
            for (id, _) in membership.nodes() {
                if live.contains(id) || *id == self.id {
                    l.dead_since.remove(id);
                } else if !l.dead_since.contains_key(id) {
                    l.dead_since.insert(*id, now);
                    a_voter_went |= membership.voter_ids().any(|v| v == *id);
                }
            }
            l.live = live;
            l.live.insert(self.id);
            (a_voter_went, metrics.state == ServerState::Leader)
        };
        if a_voter_went && leader {
            let _ = self.raft.trigger().heartbeat().await;
        }
    }

    /// Whether this node sees a majority of the voters (so its view of the cluster may
    /// move work; a node cut off from the majority keeps what it has).
    pub fn in_majority(&self) -> bool {
        self.quorum().is_ok()
    }

    /// Hands a leader's entries (or heartbeat) to Raft, noting when one was taken.
    pub async fn append_entries(
        &self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let answer = self.raft.append_entries(rpc).await;
        if matches!(
            answer,
            Ok(AppendEntriesResponse::Success
                | AppendEntriesResponse::PartialSuccess(_)
                | AppendEntriesResponse::Conflict)
        ) {
            self.lock_liveness().leader_heard = Some(Instant::now());
        }
        answer
    }

    /// Whether Raft has confirmed this node's majority since the last voter gossip saw
    /// go: a leader has had a quorum's acknowledgement since, a follower a leader's
    /// heartbeat. Gossip alone cannot tell: a node cut off from every peer sees them go
    /// one at a time, and until the last has gone it counts itself in a majority, which
    /// would let it take over the pods of the one that went first.
    pub fn confirmed_since_a_voter_went(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let liveness = self.lock_liveness();
        let Some(went) = membership
            .voter_ids()
            .filter(|v| *v != self.id)
            .filter_map(|v| liveness.dead_since.get(&v))
            .max()
            .copied()
        else {
            return true;
        };
        let contact = if metrics.state == ServerState::Leader {
            metrics
                .millis_since_quorum_ack
                .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)))
        } else {
            liveness.leader_heard
        };
        contact.is_some_and(|c| c > went)
    }

    fn lock_liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` when a majority of the voters is reachable, else the error naming them.
    fn quorum(&self) -> Result<(), ConsensusError> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let live = self
            .liveness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .clone();
        let voters: Vec<(NodeId, String)> = membership
            .nodes()
            .filter(|(id, _)| membership.voter_ids().any(|v| v == **id))
            .map(|(id, p)| (*id, p.name.clone()))
            .collect();
        if voters.is_empty() {
            return Err(ConsensusError::NoQuorum {
                reachable: 0,
                total: 0,
                voters: "none yet: this node has not been added to the cluster's membership".into(),
                need: 1,
            });
        }
        let reachable = voters.iter().filter(|(id, _)| live.contains(id)).count();
        let (total, need) = (voters.len(), voters.len() / 2 + 1);
        if reachable >= need {
            return Ok(());
        }
        let names = voters
            .iter()
            .map(|(id, name)| {
                let state = if live.contains(id) {
                    "reachable"
                } else {
                    "unreachable"
                };
                format!("{name} {state}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        Err(ConsensusError::NoQuorum {
            reachable,
            total,
            voters: names,
            need,
        })
    }

    /// Runs `work`, unless (or until) gossip shows the quorum lost: then it fails at
    /// once with the error naming the voters, instead of waiting out a timeout.
    async fn with_quorum<T>(
        &self,
        work: impl Future<Output = Result<T, ConsensusError>>,
    ) -> Result<T, ConsensusError> {
        self.quorum()?;
        let lost = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Err(e) = self.quorum() {
                    return e;
                }
            }
        };
        tokio::select! {
            result = work => result,
            e = lost => Err(e),
        }
    }

    /// Applies `command` through the cluster's log; answers once it is applied on this
    /// node.
    pub async fn write(&self, command: Command) -> Result<Reply, ConsensusError> {
        // This node applies the entry too, so it needs the room even when another leads.
        self.has_room(&command)?;
        self.wait_to_be_added().await;
        self.with_quorum(self.write_inner(command)).await
    }

    /// A node that has just joined is in no membership until the leader adds it (one
    /// change a second): a write through it waits for that, up to [`JOINED_WAIT`],
    /// instead of failing at once for want of voters it cannot see yet.
    async fn wait_to_be_added(&self) {
        let known = |m: &openraft::RaftMetrics<NodeId, Peer>| {
            m.membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
        };
        if known(&self.raft.metrics().borrow()) {
            return;
        }
        let _ = self
            .raft
            .wait(Some(JOINED_WAIT))
            .metrics(known, "this node added to the cluster's membership")
            .await;
    }

    async fn write_inner(&self, command: Command) -> Result<Reply, ConsensusError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let data = Versioned::V1(command);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = tokio::time::timeout(left, self.raft.client_write(data.clone()))
                .await
                .map_err(|_| ConsensusError::Timeout(WRITE_TIMEOUT))?;
            match outcome {
                Ok(response) => return Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    let Some(leader) = self.leader(f) else {
                        self.wait_for_leader(deadline).await?;
                        continue;
                    };
                    match self.forward(leader, &data, deadline).await {
                        // A leader that is gone (nothing was sent): once gossip sees it
                        // dead, either the others elect another or the quorum is lost.
                        Err(ConsensusError::Refused) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => return other,
                    }
                }
                // Raft stopped here after the entry may have reached the log.
                Err(e) => {
                    return Err(ConsensusError::Unknown(format!(
                        "Raft stopped on this node ({e})"
                    )));
                }
            }
        }
    }

    /// The leader a `ForwardToLeader` names, at the address gossip gives for it.
    fn leader(&self, f: openraft::error::ForwardToLeader<NodeId, Peer>) -> Option<(NodeId, Peer)> {
        let (id, mut peer) = (f.leader_id?, f.leader_node?);
        if let Some(api) = self.book.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            peer.api.clone_from(api);
        }
        Some((id, peer))
    }

    /// Waits until some node leads, or `deadline`.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<(), ConsensusError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map(|_| ())
            .map_err(|_| ConsensusError::NoLeader(WRITE_TIMEOUT))
    }

    /// Sends a write to `leader`, then waits for it here.
    async fn forward(
        &self,
        (leader_id, leader): (NodeId, Peer),
        data: &Versioned,
        deadline: Instant,
    ) -> Result<Reply, ConsensusError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer: Forwarded = self
            .client
            .call(leader_id, &leader.api, "/v1/raft/write", data, left)
            .await
            .map_err(|e| match e {
                CallError::Refused { .. } => ConsensusError::Refused,
                // Refused before it was proposed: the leader's disk is full.
                CallError::Status {
                    status, message, ..
                } if status == http::StatusCode::INSUFFICIENT_STORAGE => {
                    ConsensusError::DiskFull(format!(
                        "the Raft leader {} refused the write: {message}",
                        leader.name
                    ))
                }
                // Refused as a request (not a peer's, not readable): nothing was proposed.
                e @ CallError::Status { status, .. } if status.is_client_error() => {
                    ConsensusError::Leader {
                        leader: leader.name.clone(),
                        message: e.to_string(),
                    }
                }
                // It may have arrived and been proposed: whether it is applied is unknown.
                e => ConsensusError::Unknown(format!(
                    "the Raft leader {} did not confirm it ({e})",
                    leader.name
                )),
            })?;
        self.wait_applied(answer.index, deadline).await?;
        Ok(answer.reply)
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ConsensusError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "an entry applied here")
            .await
            .map(|_| ())
            .map_err(|_| ConsensusError::Timeout(WRITE_TIMEOUT))
    }

    /// A write forwarded by a follower: applied here, as the leader, or refused.
    pub async fn write_as_leader(&self, data: Versioned) -> Result<Forwarded, ConsensusError> {
        let Versioned::V1(command) = &data;
        self.has_room(command)?;
        let outcome = tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(data))
            .await
            .map_err(|_| ConsensusError::Timeout(WRITE_TIMEOUT))?;
        match outcome {
            Ok(r) => Ok(Forwarded {
                index: r.log_id.index,
                reply: r.data,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ConsensusError::NotLeader)
            }
            Err(e) => Err(ConsensusError::Unknown(format!(
                "Raft stopped on the leader ({e})"
            ))),
        }
    }

    /// The index a linearizable read must see, as the leader (it confirms with a quorum
    /// that it still leads).
    pub async fn read_index_as_leader(&self) -> Result<u64, ConsensusError> {
        let outcome = tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable())
            .await
            .map_err(|_| ConsensusError::Timeout(WRITE_TIMEOUT))?;
        match outcome {
            Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
            Err(e) => Err(ConsensusError::Fatal(e.to_string())),
        }
    }

    /// Returns once this node's state includes every write acknowledged before the call.
    pub async fn linearize(&self) -> Result<(), ConsensusError> {
        self.with_quorum(self.linearize_inner()).await
    }

    async fn linearize_inner(&self) -> Result<(), ConsensusError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = tokio::time::timeout(left, self.raft.ensure_linearizable())
                .await
                .map_err(|_| ConsensusError::Timeout(WRITE_TIMEOUT))?;
            match outcome {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    let Some((leader_id, leader)) = self.leader(f) else {
                        self.wait_for_leader(deadline).await?;
                        continue;
                    };
                    let asked: Result<u64, CallError> = self
                        .client
                        .call(leader_id, &leader.api, "/v1/raft/read-index", &(), left)
                        .await;
                    match asked {
                        Ok(index) => return self.wait_applied(index, deadline).await,
                        // Gone: wait for gossip to say so (then another leads, or the
                        // quorum is lost), as writes do.
                        Err(CallError::Refused { .. }) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            return Err(ConsensusError::Leader {
                                leader: leader.name.clone(),
                                message: e.to_string(),
                            });
                        }
                    }
                }
                Err(e) => return Err(ConsensusError::Fatal(e.to_string())),
            }
        }
    }

    /// One step of membership upkeep, on the leader only: add live nodes as learners,
    /// promote caught-up learners to reach the voter target, replace a voter dead for
    /// longer than the grace period. At most one change per call.
    pub async fn tend(&self, live: &BTreeMap<NodeId, Peer>) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return;
        }
        let membership = metrics.membership_config.membership().clone();
        let nodes: BTreeMap<NodeId, Peer> =
            membership.nodes().map(|(i, p)| (*i, p.clone())).collect();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        // A node gossip shows that Raft does not know yet.
        if let Some((id, peer)) = live.iter().find(|(id, _)| !nodes.contains_key(id)) {
            info!(node = %peer.name, "adding a node to the cluster's Raft membership");
            if let Err(e) = self.raft.add_learner(*id, peer.clone(), false).await {
                warn!(node = %peer.name, error = %e, "could not add a learner");
            }
            return;
        }
        // A known node that came back at another address (a restart on other ports): the
        // same node id, so replacing its address is safe. Gossip, sealed with the
        // cluster's key, is what says where it is now.
        if let Some((id, peer)) = live
            .iter()
            .find(|(id, p)| nodes.get(id).is_some_and(|known| known != *p))
        {
            info!(node = %peer.name, api = %peer.api, "a node moved: updating its address in Raft");
            let change = ChangeMembers::SetNodes(BTreeMap::from([(*id, peer.clone())]));
            if let Err(e) = self.raft.change_membership(change, true).await {
                warn!(node = %peer.name, error = %e, "could not update a node's address");
            }
            return;
        }
        let target = match nodes.values().filter(|p| !p.gateway).count() {
            0..=2 => 1,
            3 | 4 => 3,
            _ => 5,
        };
        let last = metrics.last_log_index.unwrap_or(0);
        let caught_up = |id: &NodeId| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .is_some_and(|l| l.index + 100 >= last)
        };
        let candidate = nodes
            .iter()
            .find(|(id, p)| {
                !p.gateway && !voters.contains(id) && live.contains_key(id) && caught_up(id)
            })
            .map(|(id, _)| *id);
        let dead: Vec<NodeId> = {
            let l = self.liveness.lock().unwrap_or_else(|e| e.into_inner());
            voters
                .iter()
                .filter(|v| {
                    l.dead_since
                        .get(v)
                        .is_some_and(|since| since.elapsed() >= self.grace)
                })
                .copied()
                .collect()
        };
        let change = match (candidate, dead.first()) {
            (Some(c), _) if voters.len() < target => {
                Some(ChangeMembers::AddVoterIds(BTreeSet::from([c])))
            }
            (Some(c), Some(d)) => {
                let mut next = voters.clone();
                next.remove(d);
                next.insert(c);
                Some(ChangeMembers::ReplaceAllVoters(next))
            }
            _ => None,
        };
        if let Some(change) = change {
            info!(?change, "changing the cluster's voters");
            if let Err(e) = self.raft.change_membership(change, true).await {
                warn!(error = %e, "could not change the voters");
            }
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Nodes' API addresses by Raft id, from gossip.
type AddressBook = Arc<std::sync::RwLock<HashMap<NodeId, String>>>;

/// Makes connections to peers for openraft.
struct Network {
    client: PeerClient,
    book: AddressBook,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Peer) -> Self::Network {
        Connection {
            client: self.client.clone(),
            book: self.book.clone(),
            target,
            addr: node.api.clone(),
        }
    }
}

/// One peer, as openraft calls it.
struct Connection {
    client: PeerClient,
    book: AddressBook,
    target: NodeId,
    /// Its address in the membership, used until gossip says otherwise.
    addr: String,
}

impl Connection {
    async fn rpc<Req: Serialize, Resp: serde::de::DeserializeOwned, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Peer, RaftError<NodeId, E>>>
    where
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let addr = self
            .book
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.target)
            .cloned()
            .unwrap_or_else(|| self.addr.clone());
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, CallError> = self
            .client
            .call(self.target, &addr, path, request, option.hard_ttl())
            .await;
        match answer {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            // openraft backs off from an unreachable peer instead of retrying at once.
            Err(
                e @ (CallError::Refused { .. }
                | CallError::Unreachable { .. }
                | CallError::Timeout { .. }),
            ) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.rpc("/v1/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/v1/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.rpc("/v1/raft/vote", &rpc, &option).await
    }

    /// A peer that cannot be reached is tried again after 0.5 s, doubling to 4 s: a dead
    /// node costs a few connection attempts, not a stream of them.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new((0u32..).map(|i| Duration::from_millis(500u64 << i.min(3))))
    }
}
