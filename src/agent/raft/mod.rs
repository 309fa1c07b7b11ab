//! Our small wrapper around openraft (pinned `=0.9.25`). The rest of the agent never names
//! openraft types: it proposes [`GroupCommand`]s, changes membership, reads [`RaftStatus`] and
//! follows the [`AppliedState`].

pub mod codec;
pub mod data_dir;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;

pub use data_dir::{DataDirError, load_or_create_node_id};
pub use network::{Faults, PeerError, Peers};
pub use state_machine::AppliedState;

use crate::agent::group::{CommandOutcome, GroupCommand, MemberNode, NodeId};
use crate::agent::timing::RaftTimers;
use log_store::LogStore;
use network::NetworkFactory;
use state_machine::StateMachineStore;
use types::{Raft, RaftMetrics};

#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("starting Raft: {0}")]
    Start(String),
    /// This node is not the leader; the leader, if known.
    #[error("not the coordinator{}", .leader.as_ref().map(|(id, n)| format!("; the coordinator is {} ({id}) at {}", n.name, n.address)).unwrap_or_default())]
    NotLeader {
        leader: Option<(NodeId, MemberNode)>,
    },
    #[error("already initialized")]
    AlreadyInitialized,
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("Raft stopped: {0}")]
    Fatal(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("malformed Raft message: {0}")]
    Malformed(String),
}

/// What the agent needs to know about Raft right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: NodeId,
    pub term: u64,
    pub is_leader: bool,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub applied_term: u64,
    /// Leader only: matched log index per member.
    pub replication: BTreeMap<NodeId, u64>,
    pub voters: BTreeSet<NodeId>,
    pub members: BTreeMap<NodeId, MemberNode>,
    /// Whether this node is a member (voter or learner) of the configuration it knows.
    pub in_membership: bool,
}

impl RaftStatus {
    fn from_metrics(m: &RaftMetrics) -> Self {
        let membership = m.membership_config.membership();
        let members: BTreeMap<NodeId, MemberNode> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        RaftStatus {
            id: m.id,
            term: m.current_term,
            is_leader: m.state == ServerState::Leader,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            applied_term: m.last_applied.map_or(0, |l| l.leader_id.term),
            replication: m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
            voters: membership.voter_ids().collect(),
            in_membership: members.contains_key(&m.id),
            members,
        }
    }

    /// The leader has applied an entry of its own term, so its applied state contains every
    /// entry committed before its election.
    pub fn leader_caught_up(&self) -> bool {
        self.is_leader && self.applied_term == self.term
    }

    pub fn leader_node(&self) -> Option<(NodeId, MemberNode)> {
        let id = self.leader?;
        Some((id, self.members.get(&id)?.clone()))
    }
}

fn not_leader(status: &RaftStatus) -> RaftNodeError {
    RaftNodeError::NotLeader {
        leader: status.leader_node(),
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> RaftNodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RaftNodeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            RaftNodeError::Membership(c.to_string())
        }
        RaftError::Fatal(f) => RaftNodeError::Fatal(f.to_string()),
    }
}

/// A running Raft node.
#[derive(Clone)]
pub struct RaftNode {
    raft: Raft,
    id: NodeId,
    applied: watch::Receiver<AppliedState>,
}

impl RaftNode {
    /// Opens the storage in `data_dir` and starts Raft.
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        timers: RaftTimers,
        peers: Arc<Peers>,
    ) -> Result<Self, RaftNodeError> {
        let log = LogStore::open(data_dir)?;
        let sm = StateMachineStore::open(data_dir)?;
        let applied = sm.subscribe();
        let config = Config {
            cluster_name: "quorate".into(),
            heartbeat_interval: timers.heartbeat_millis,
            election_timeout_min: timers.election_timeout_min_millis,
            election_timeout_max: timers.election_timeout_max_millis,
            install_snapshot_timeout: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 200,
            replication_lag_threshold: 100,
            ..Config::default()
        }
        .validate()
        .map_err(|e| RaftNodeError::Config(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config), NetworkFactory { peers }, log, sm)
            .await
            .map_err(|e| RaftNodeError::Start(e.to_string()))?;
        Ok(Self { raft, id, applied })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn status(&self) -> RaftStatus {
        RaftStatus::from_metrics(&self.raft.metrics().borrow())
    }

    /// A receiver that fires on every metrics change (cheap to clone).
    pub fn status_watch(&self) -> StatusWatch {
        StatusWatch {
            rx: self.raft.metrics(),
        }
    }

    pub fn applied(&self) -> watch::Receiver<AppliedState> {
        self.applied.clone()
    }

    pub async fn is_initialized(&self) -> Result<bool, RaftNodeError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))
    }

    /// Initializes a pristine node with the initial voters.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, MemberNode>,
    ) -> Result<(), RaftNodeError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(RaftNodeError::AlreadyInitialized)
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(RaftNodeError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(RaftNodeError::Fatal(f.to_string())),
        }
    }

    /// Proposes a command; returns its log index and outcome once committed and applied here.
    pub async fn propose(
        &self,
        command: GroupCommand,
    ) -> Result<(u64, CommandOutcome), RaftNodeError> {
        let r = self.raft.client_write(command).await.map_err(write_error)?;
        Ok((r.log_id.index, r.data))
    }

    /// Sends a heartbeat round and returns once a quorum acknowledged it (leader only).
    pub async fn confirm_quorum(&self) -> Result<(), RaftNodeError> {
        match self.raft.get_read_log_id().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(_)) => Err(not_leader(&self.status())),
            Err(RaftError::Fatal(f)) => Err(RaftNodeError::Fatal(f.to_string())),
        }
    }

    /// Adds `id` as a learner and waits until it caught up (leader only).
    pub async fn add_learner(&self, id: NodeId, node: MemberNode) -> Result<u64, RaftNodeError> {
        let r = self
            .raft
            .add_learner(id, node, true)
            .await
            .map_err(write_error)?;
        Ok(r.log_id.index)
    }

    pub async fn add_voter(&self, id: NodeId) -> Result<u64, RaftNodeError> {
        let r = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(r.log_id.index)
    }

    /// Removes `id` entirely (voter or learner).
    pub async fn remove_member(&self, id: NodeId) -> Result<u64, RaftNodeError> {
        let status = self.status();
        if status.voters.contains(&id) {
            let r = self
                .raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
            Ok(r.log_id.index)
        } else {
            let r = self
                .raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(write_error)?;
            Ok(r.log_id.index)
        }
    }

    /// Sends a heartbeat round now, so followers learn the new commit index at once instead of
    /// at the next periodic heartbeat (an appointment reaches the new primary sooner).
    pub async fn broadcast_commit(&self) {
        if let Err(e) = self.raft.trigger().heartbeat().await {
            tracing::debug!(error = %e, "triggering a heartbeat failed");
        }
    }

    /// Allow or forbid this node to start elections (the primary stays out of leadership).
    pub fn allow_elections(&self, allowed: bool) {
        self.raft.runtime_config().elect(allowed);
    }

    /// The last committed log index (from Raft's own state).
    pub async fn committed_index(&self) -> u64 {
        self.raft
            .with_raft_state(|st| st.committed.map_or(0, |l| l.index))
            .await
            .unwrap_or(0)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
    }

    // --- incoming peer RPCs ------------------------------------------------------------------

    pub async fn handle_append_entries(&self, payload: &[u8]) -> Result<Vec<u8>, RaftNodeError> {
        let req =
            serde_json::from_slice(payload).map_err(|e| RaftNodeError::Malformed(e.to_string()))?;
        let result = self.raft.append_entries(req).await;
        serde_json::to_vec(&result).map_err(|e| RaftNodeError::Malformed(e.to_string()))
    }

    pub async fn handle_vote(&self, payload: &[u8]) -> Result<Vec<u8>, RaftNodeError> {
        let req =
            serde_json::from_slice(payload).map_err(|e| RaftNodeError::Malformed(e.to_string()))?;
        let result = self.raft.vote(req).await;
        serde_json::to_vec(&result).map_err(|e| RaftNodeError::Malformed(e.to_string()))
    }

    pub async fn handle_install_snapshot(&self, payload: &[u8]) -> Result<Vec<u8>, RaftNodeError> {
        let req =
            serde_json::from_slice(payload).map_err(|e| RaftNodeError::Malformed(e.to_string()))?;
        let result = self.raft.install_snapshot(req).await;
        serde_json::to_vec(&result).map_err(|e| RaftNodeError::Malformed(e.to_string()))
    }
}

/// Follows Raft status changes.
#[derive(Clone)]
pub struct StatusWatch {
    rx: watch::Receiver<RaftMetrics>,
}

impl StatusWatch {
    /// Waits for the next change; `false` when Raft stopped.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    pub fn current(&self) -> RaftStatus {
        RaftStatus::from_metrics(&self.rx.borrow())
    }
}
