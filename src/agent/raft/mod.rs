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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;

pub use data_dir::{DataDirError, DataDirLock, load_or_create_node_id};
pub use network::{Faults, PeerError, Peers};
pub use state_machine::AppliedState;

use crate::agent::clock::monotonic_millis;
use crate::agent::election::{
    ElectionGate, ElectionTimers, PreVoteReply, PreVoteRequest, pre_vote_won,
};
use crate::agent::group::{CommandOutcome, GroupCommand, MemberNode, NodeId};
use crate::agent::timing::RaftTimers;
use log_store::LogStore;
use network::NetworkFactory;
use state_machine::StateMachineStore;
use types::{LogId, Raft, RaftMetrics, TypeConfig, Vote};

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
    elections: Arc<Elections>,
    /// A reader of the log handed to openraft (shares its in-memory state).
    log: LogStore,
}

/// This node's vote, last log id and, when it leads, its term.
struct LocalRaftState {
    vote: Vote,
    last_log_id: Option<LogId>,
    leading_term: Option<u64>,
}

/// What the agent's own election logic (see `agent::election`) needs at run time.
struct Elections {
    gate: Mutex<ElectionGate>,
    /// `(term, send time)` of the latest heartbeat round a quorum acknowledged while this node
    /// led in `term` (the election itself counts as one).
    quorum_ack: Mutex<Option<(u64, u64)>>,
    peers: Arc<Peers>,
}

impl Elections {
    fn gate(&self) -> MutexGuard<'_, ElectionGate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_quorum_ack(&self, term: u64, at: u64) {
        let mut q = self.quorum_ack.lock().unwrap_or_else(|p| p.into_inner());
        *q = match *q {
            Some((t, a)) if t == term => Some((t, a.max(at))),
            _ => Some((term, at)),
        };
    }

    /// The latest quorum acknowledgement of the leadership in `term`.
    fn quorum_ack_in(&self, term: u64) -> Option<u64> {
        match *self.quorum_ack.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((t, at)) if t == term => Some(at),
            _ => None,
        }
    }
}

fn jitter(max: u64) -> u64 {
    rand::random::<u64>() % (max + 1)
}

impl RaftNode {
    /// Opens the storage in `data_dir` and starts Raft. openraft's own election timer stays off:
    /// this node campaigns through a pre-vote (`election` timers, see `agent::election`).
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        timers: RaftTimers,
        election: ElectionTimers,
        peers: Arc<Peers>,
    ) -> Result<Self, RaftNodeError> {
        let log = LogStore::open(data_dir)?;
        if log.forget_restored_leadership(id) {
            tracing::info!("led the group before the restart: starting as a follower");
        }
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
            enable_elect: false,
            ..Config::default()
        }
        .validate()
        .map_err(|e| RaftNodeError::Config(e.to_string()))?;
        let network = NetworkFactory {
            peers: peers.clone(),
            heartbeat_millis: timers.heartbeat_millis,
        };
        let log_reader = log.clone();
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| RaftNodeError::Start(e.to_string()))?;
        let elections = Arc::new(Elections {
            gate: Mutex::new(ElectionGate::new(
                monotonic_millis(),
                election,
                jitter(election.jitter_millis),
            )),
            quorum_ack: Mutex::new(None),
            peers,
        });
        let node = Self {
            raft,
            id,
            applied,
            elections,
            log: log_reader,
        };
        tokio::spawn(node.clone().run_elections());
        Ok(node)
    }

    /// The election loop: leadership keeps the gate's contact fresh; a voter that heard from
    /// nobody for its timeout runs a pre-vote round and, if a majority supports it, an election.
    async fn run_elections(self) {
        let timers = self.elections.gate().timers();
        let tick = Duration::from_millis((timers.retry_millis / 10).max(5));
        let mut metrics = self.raft.metrics();
        let mut led_term = None;
        let mut last_status = None;
        loop {
            let ticked = tokio::select! {
                _ = tokio::time::sleep(tick) => true,
                changed = metrics.changed() => if changed.is_err() { return } else { false },
            };
            let status = {
                let m = metrics.borrow_and_update();
                if m.running_state.is_err() {
                    return;
                }
                RaftStatus::from_metrics(&m)
            };
            // Metrics are republished on every heartbeat answer: only a change of what we read
            // (or the timer) needs a look.
            if !ticked && last_status.as_ref() == Some(&status) {
                continue;
            }
            last_status = Some(status.clone());
            let now = monotonic_millis();
            if status.is_leader {
                if led_term != Some(status.term) {
                    // Winning the election was a quorum acknowledging this leadership.
                    led_term = Some(status.term);
                    self.elections.on_quorum_ack(status.term, now);
                }
                self.elections.gate().on_leader_contact(now);
                continue;
            }
            if led_term.take().is_some() {
                // Just stepped down: give the new leader a full lease to reach us.
                self.elections.gate().on_leader_contact(now);
            }
            let due = {
                let mut gate = self.elections.gate();
                let due = gate.campaign_due(now, false, status.voters.contains(&self.id));
                if due {
                    gate.on_campaign(now, jitter(timers.jitter_millis));
                }
                due
            };
            if due {
                self.campaign(&status, timers).await;
            }
        }
    }

    /// The vote, the last log id (openraft does not export its own reader of it: the log store's,
    /// or the snapshot's when the log was purged past it) and whether this node leads.
    async fn local_state(&self) -> Result<LocalRaftState, RaftNodeError> {
        let (vote, snapshot_last, leading_term) = self
            .raft
            .with_raft_state(|st| {
                let leading = (st.server_state == ServerState::Leader)
                    .then(|| st.vote_ref().leader_id().term);
                (*st.vote_ref(), st.snapshot_meta.last_log_id, leading)
            })
            .await
            .map_err(|e| RaftNodeError::Fatal(e.to_string()))?;
        Ok(LocalRaftState {
            vote,
            last_log_id: self.log.last_log_id().max(snapshot_last),
            leading_term,
        })
    }

    /// One pre-vote round, then an openraft election if it was won and still no leader is heard.
    async fn campaign(&self, status: &RaftStatus, timers: ElectionTimers) {
        let Ok(LocalRaftState {
            vote, last_log_id, ..
        }) = self.local_state().await
        else {
            return;
        };
        let configs: Vec<BTreeSet<NodeId>> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .clone();
        let request = PreVoteRequest::<LogId> {
            candidate: self.id,
            last_log_id,
        };
        let Ok(payload) = serde_json::to_vec(&request) else {
            return;
        };
        let timeout = Duration::from_millis(timers.retry_millis);
        let mut granted = BTreeSet::from([self.id]);
        let mut refused = Vec::new();
        let mut asks: FuturesUnordered<_> = status
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .filter_map(|v| status.members.get(v).map(|n| (*v, n.address.clone())))
            .map(|(voter, address)| {
                let peers = self.elections.peers.clone();
                let payload = payload.clone();
                async move {
                    let reply = network::pre_vote(&peers, voter, &address, payload, timeout).await;
                    (voter, reply)
                }
            })
            .collect();
        while let Some((voter, reply)) = asks.next().await {
            match reply
                .and_then(|p| serde_json::from_slice::<PreVoteReply>(&p).map_err(|e| e.to_string()))
            {
                Ok(r) if r.granted => {
                    granted.insert(voter);
                    if pre_vote_won(&granted, &configs) {
                        break;
                    }
                }
                Ok(r) => refused.push(format!(
                    "{voter}: {}",
                    r.reason.unwrap_or_else(|| "refused".into())
                )),
                Err(e) => refused.push(format!("{voter}: {e}")),
            }
        }
        let next_term = vote.leader_id().term + 1;
        if !pre_vote_won(&granted, &configs) {
            tracing::debug!(next_term, ?refused, "pre-vote lost; not campaigning");
            return;
        }
        if self.elections.gate().leader_alive(monotonic_millis()) {
            tracing::debug!("a leader was heard during the pre-vote; not campaigning");
            return;
        }
        tracing::info!(
            next_term,
            supporters = ?granted,
            "no leader heard within its lease and a majority agrees: starting an election"
        );
        if let Err(e) = self.raft.trigger().elect().await {
            tracing::warn!(error = %e, "starting an election failed");
        }
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
        let sent_at = monotonic_millis();
        let term = self.status().term;
        match self.raft.get_read_log_id().await {
            Ok(_) => {
                self.elections.on_quorum_ack(term, sent_at);
                Ok(())
            }
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
        self.elections.gate().set_allowed(allowed);
    }

    /// Turn the leader's periodic heartbeats on or off (the primary stepping aside).
    pub fn set_heartbeats(&self, enabled: bool) {
        self.raft.runtime_config().heartbeat(enabled);
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

    /// AppendEntries from a leader. Accepted (any answer but "higher vote"), it is contact with
    /// a live leader: this node supports no other candidate for a leader lease.
    pub async fn handle_append_entries(&self, payload: &[u8]) -> Result<Vec<u8>, RaftNodeError> {
        let req: AppendEntriesRequest<TypeConfig> =
            serde_json::from_slice(payload).map_err(|e| RaftNodeError::Malformed(e.to_string()))?;
        let result = self.raft.append_entries(req).await;
        if matches!(&result, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.elections.gate().on_leader_contact(monotonic_millis());
        }
        serde_json::to_vec(&result).map_err(|e| RaftNodeError::Malformed(e.to_string()))
    }

    /// A vote request. A leader whose quorum acknowledged it within the leader lease rejects it
    /// (openraft 0.9 measures its own lease from the leader's election, so it would grant).
    pub async fn handle_vote(&self, payload: &[u8]) -> Result<Vec<u8>, RaftNodeError> {
        let req: VoteRequest<NodeId> =
            serde_json::from_slice(payload).map_err(|e| RaftNodeError::Malformed(e.to_string()))?;
        let now = monotonic_millis();
        let status = self.status();
        let defended = status.is_leader
            && self
                .elections
                .quorum_ack_in(status.term)
                .is_some_and(|ack| self.elections.gate().leader_keeps_quorum(now, ack));
        if defended
            && let Ok(LocalRaftState {
                vote, last_log_id, ..
            }) = self.local_state().await
            && vote.is_committed()
            && vote.leader_id().voted_for() == Some(self.id)
        {
            tracing::info!(
                candidate = ?req.vote.leader_id().voted_for(),
                term = req.vote.leader_id().term,
                "rejecting a vote request: leading with a quorum that acknowledged within the lease"
            );
            let reply: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                Ok(VoteResponse::new(vote, last_log_id, false));
            return serde_json::to_vec(&reply).map_err(|e| RaftNodeError::Malformed(e.to_string()));
        }
        let result = self.raft.vote(req).await;
        serde_json::to_vec(&result).map_err(|e| RaftNodeError::Malformed(e.to_string()))
    }

    /// A pre-vote (see `agent::election`): would this node vote for the candidate right now?
    pub async fn handle_pre_vote(&self, payload: &[u8]) -> Result<Vec<u8>, RaftNodeError> {
        let req: PreVoteRequest<LogId> =
            serde_json::from_slice(payload).map_err(|e| RaftNodeError::Malformed(e.to_string()))?;
        let LocalRaftState {
            last_log_id,
            leading_term,
            ..
        } = self.local_state().await?;
        let now = monotonic_millis();
        // A leader without a recorded acknowledgement yet was elected a moment ago.
        let leading = leading_term.map(|t| self.elections.quorum_ack_in(t).unwrap_or(now));
        let up_to_date = req.last_log_id.as_ref() >= last_log_id.as_ref();
        let answer = self.elections.gate().pre_vote(now, leading, up_to_date);
        if let Err(refusal) = answer {
            tracing::debug!(
                candidate = req.candidate,
                reason = refusal.as_str(),
                "pre-vote refused"
            );
        }
        let reply = PreVoteReply {
            granted: answer.is_ok(),
            reason: answer.err().map(|r| r.as_str().to_string()),
        };
        serde_json::to_vec(&reply).map_err(|e| RaftNodeError::Malformed(e.to_string()))
    }

    pub async fn handle_install_snapshot(&self, payload: &[u8]) -> Result<Vec<u8>, RaftNodeError> {
        let req: InstallSnapshotRequest<TypeConfig> =
            serde_json::from_slice(payload).map_err(|e| RaftNodeError::Malformed(e.to_string()))?;
        let sent_vote: Vote = req.vote;
        let result = self.raft.install_snapshot(req).await;
        if matches!(&result, Ok(r) if r.vote == sent_vote) {
            self.elections.gate().on_leader_contact(monotonic_millis());
        }
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
