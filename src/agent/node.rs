//! The agent runtime: wires Raft, the coordinator, the lease holder, health checks and role
//! publication together. All decisions are made by the pure state machines; this module only
//! moves events between them and the outside world.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::clock::{monotonic_millis, unix_millis};
use super::coordinator::{
    Action, Coordinator, CoordinatorSettings, MemberReport, MemberRole, ReleaseReason,
    ReportDecision,
};
use super::group::{GroupConfig, MemberNode, Mode, NodeId};
use super::health::{HealthConfig, HealthStatus};
use super::lease::{DemotionCause, Grant, LeaseHolder, LeaseTransition};
use super::metrics::{CauseLabels, Metrics};
use super::proto;
use super::raft::{self, AppliedState, Faults, Peers, RaftNode, RaftNodeError};
use super::role::{PublisherConfig, RolePublisher, TransitionLine, TransitionLog};
use super::timing;
use super::transport::{TlsClientConfig, TlsServerConfig};

/// Everything the agent needs, validated.
#[derive(Clone)]
pub struct AgentSettings {
    pub data_dir: PathBuf,
    pub member: String,
    pub listen: String,
    pub advertise: String,
    pub http_listen: String,
    pub mode: Mode,
    pub witness: bool,
    pub lease_millis: u64,
    pub max_failovers_per_hour: u32,
    pub priority: u32,
    pub health: Option<HealthConfig>,
    pub publisher: PublisherConfig,
    pub tls_server: Option<TlsServerConfig>,
    pub tls_client: Option<TlsClientConfig>,
    pub transition_log: Option<PathBuf>,
    pub enable_fault_injection: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Raft(#[from] RaftNodeError),
    #[error(transparent)]
    DataDir(#[from] raft::DataDirError),
    #[error(transparent)]
    Transport(#[from] super::transport::TransportError),
    #[error("HTTP listener on {address}: {source}")]
    Http {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// What one report achieved.
#[derive(Clone, Copy, Debug, Default)]
struct ReportOutcome {
    /// The coordinator asks this member to give its lease back (the caller releases it).
    demote: bool,
    /// The answer carried a lease grant.
    granted: bool,
}

/// The member side: lease, release state, the coordinator's relayed view.
pub(crate) struct MemberSide {
    pub holder: LeaseHolder,
    pub leaving: bool,
    pub release_reason: Option<ReleaseReason>,
    /// The coordinator's last view (monotonic receipt time, view).
    pub relayed: Option<(u64, proto::GroupState)>,
}

pub(crate) struct Inner {
    pub settings: AgentSettings,
    pub id: NodeId,
    pub raft: RaftNode,
    pub peers: Arc<Peers>,
    pub coordinator: Mutex<Coordinator>,
    pub member: Mutex<MemberSide>,
    pub health: watch::Receiver<HealthStatus>,
    pub publisher: RolePublisher,
    pub transitions: Option<TransitionLog>,
    pub metrics: Metrics,
    /// Bumped whenever the group state as seen here may have changed (drives Watch).
    pub changes: watch::Sender<u64>,
    /// The role this member should publish (role, epoch).
    pub desired_role: watch::Sender<(MemberRole, u64)>,
    pub kick_report: Notify,
    pub kick_coordinator: Notify,
    pub kick_quorum: Notify,
    pub stopping: watch::Sender<bool>,
    pub elections_allowed: AtomicBool,
    /// Held until the process exits: no second agent process on this data directory.
    _data_dir_lock: raft::DataDirLock,
}

/// A running agent.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<Inner>,
}

impl Inner {
    pub fn coordinator(&self) -> MutexGuard<'_, Coordinator> {
        self.coordinator.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn member(&self) -> MutexGuard<'_, MemberSide> {
        self.member.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn bump(&self) {
        self.changes.send_modify(|c| *c = c.wrapping_add(1));
    }

    pub fn lease_millis(&self) -> u64 {
        self.coordinator()
            .state()
            .config
            .map_or(self.settings.lease_millis, |c| c.lease_millis)
    }

    pub fn applied(&self) -> AppliedState {
        self.raft.applied().borrow().clone()
    }

    /// The role this member publishes right now.
    pub fn current_role(&self, now: u64) -> (MemberRole, u64) {
        let applied = self.applied();
        let mode = applied.state.config.map_or(self.settings.mode, |c| c.mode);
        let in_group = applied.roster.members.contains_key(&self.id);
        if !in_group {
            return (MemberRole::Unknown, applied.state.epoch);
        }
        if self.settings.witness {
            return (MemberRole::Witness, applied.state.epoch);
        }
        if mode == Mode::ActiveActive {
            return (MemberRole::Active, applied.state.epoch);
        }
        match self.member().holder.live_epoch(now) {
            Some(epoch) => (MemberRole::Primary, epoch),
            None => (MemberRole::Backup, applied.state.epoch),
        }
    }

    fn refresh_role(&self) {
        let role = self.current_role(monotonic_millis());
        self.desired_role.send_if_modified(|r| {
            if *r != role {
                *r = role;
                true
            } else {
                false
            }
        });
        self.metrics.set_role(role.0.as_str());
    }

    /// Reacts to a lease transition: transition log, elections, role.
    pub(crate) fn on_transition(&self, t: LeaseTransition) {
        let now = monotonic_millis();
        let (event, epoch, until, cause) = match t {
            LeaseTransition::Promoted { epoch, lease_until } => {
                ("promote", epoch, lease_until, None)
            }
            LeaseTransition::Renewed { epoch, lease_until } => ("renew", epoch, lease_until, None),
            LeaseTransition::Demoted {
                epoch,
                cause,
                lease_until,
            } => {
                let c = match cause {
                    DemotionCause::Expired => "expired",
                    DemotionCause::Released => "released",
                    DemotionCause::Superseded => "superseded",
                };
                self.metrics
                    .demotions
                    .get_or_create(&CauseLabels { cause: c.into() })
                    .inc();
                ("demote", epoch, lease_until, Some(c.to_string()))
            }
        };
        if event != "renew" {
            tracing::info!(event, epoch, lease_until = until, cause = ?cause, "lease transition");
        }
        if let Some(log) = &self.transitions {
            log.record(&TransitionLine {
                member: self.settings.member.clone(),
                node_id: self.id,
                event: event.into(),
                epoch,
                mono_ms: now,
                wall_ms: unix_millis(),
                lease_until_mono_ms: until,
                cause,
            });
        }
        self.update_elections();
        if event != "renew" {
            self.refresh_role();
            self.bump();
        }
    }

    /// The primary stays out of Raft leadership (a crash of both would cost an election on top
    /// of the lease), unless too few voters exist for anyone else to lead.
    fn update_elections(&self) {
        let now = monotonic_millis();
        let primary = self.member().holder.is_live(now);
        let voters = self.raft.status().voters.len();
        let allow = !(primary && voters >= 3);
        if self.elections_allowed.swap(allow, Ordering::SeqCst) != allow {
            self.raft.allow_elections(allow);
        }
    }

    fn check_expiry(&self) {
        let now = monotonic_millis();
        let t = self.member().holder.tick(now);
        if let Some(t) = t {
            self.on_transition(t);
        }
    }

    fn build_report(&self) -> MemberReport {
        let health = self.health.borrow().clone();
        let status = self.raft.status();
        let m = self.member();
        MemberReport {
            workload_healthy: self.settings.witness || health.healthy,
            load: health.load,
            latency_ms: health.latency_ms,
            applied_index: status.applied_index,
            priority: self.settings.priority,
            released_epoch: m.holder.released_epoch(),
            release_reason: m.release_reason,
            leaving: m.leaving,
        }
    }

    /// Sends one report to the coordinator and acts on the answer.
    async fn report_once(self: &Arc<Self>) -> ReportOutcome {
        let status = self.raft.status();
        let Some(leader) = status.leader else {
            return ReportOutcome::default();
        };
        let report = self.build_report();
        let sent_at = monotonic_millis();
        let reply: Option<(ReportDecision, Option<proto::GroupState>)> = if leader == self.id {
            let decision = self.coordinator().on_report(sent_at, self.id, report);
            self.bump();
            Some((decision, None))
        } else {
            let Some(node) = status.members.get(&leader) else {
                return ReportOutcome::default();
            };
            match self.remote_report(leader, node, &report).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!(leader, error = %e, "report to the coordinator failed");
                    None
                }
            }
        };
        let Some((decision, view)) = reply else {
            return ReportOutcome::default();
        };
        let now = monotonic_millis();
        if let Some(view) = view {
            self.member().relayed = Some((now, view));
            self.bump();
        }
        if !decision.accepted {
            return ReportOutcome::default();
        }
        let granted = decision.grant.is_some();
        if let Some(grant) = decision.grant {
            let transitions = {
                let mut m = self.member();
                let expired = m.holder.tick(now);
                let granted = m.holder.on_grant(sent_at, grant, now);
                [expired, granted]
            };
            for t in transitions.into_iter().flatten() {
                self.on_transition(t);
            }
        }
        ReportOutcome {
            demote: decision.demote,
            granted,
        }
    }

    /// This member holds the primary lease, or is the committed primary waiting for its first
    /// one (and has not given it back): a report without a grant must be retried soon.
    fn wants_lease(&self, now: u64) -> bool {
        let applied = self.applied();
        let m = self.member();
        if m.leaving {
            return false;
        }
        m.holder.is_live(now)
            || (applied.state.primary_id() == Some(self.id)
                && applied.state.epoch > m.holder.released_epoch())
    }

    async fn remote_report(
        &self,
        leader: NodeId,
        node: &MemberNode,
        report: &MemberReport,
    ) -> Result<(ReportDecision, Option<proto::GroupState>), String> {
        let channel = self
            .peers
            .channel(leader, &node.address)
            .map_err(|e| e.to_string())?;
        let mut client = proto::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES);
        let request = proto::MemberReport {
            from_id: self.id,
            workload_healthy: report.workload_healthy,
            load: report.load,
            latency_ms: report.latency_ms,
            applied_index: report.applied_index,
            priority: report.priority,
            released_epoch: report.released_epoch,
            release_reason: match report.release_reason {
                None => proto::ReleaseReason::None,
                Some(ReleaseReason::Shutdown) => proto::ReleaseReason::Shutdown,
                Some(ReleaseReason::Switchover) => proto::ReleaseReason::Switchover,
                Some(ReleaseReason::WorkloadUnhealthy) => proto::ReleaseReason::WorkloadUnhealthy,
            } as i32,
            leaving: report.leaving,
        };
        let timeout = Duration::from_millis(timing::report_interval_millis(self.lease_millis()));
        let reply = tokio::time::timeout(timeout, client.report(request))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|s| s.to_string())?
            .into_inner();
        let decision = ReportDecision {
            accepted: reply.accepted,
            grant: reply.grant.map(|g| Grant {
                epoch: g.epoch,
                remaining_millis: g.remaining_millis,
            }),
            demote: reply.demote,
        };
        Ok((decision, reply.view))
    }

    /// Gives the lease back (if this member holds or was appointed for one): demote, publish the
    /// new role (waiting for the workload's callback at most its timeout), then tell the
    /// coordinator at once. Returns the released epoch.
    pub async fn release(self: &Arc<Self>, reason: ReleaseReason) -> Option<u64> {
        let now = monotonic_millis();
        let applied = self.applied();
        let committed_mine =
            (applied.state.primary_id() == Some(self.id)).then_some(applied.state.epoch);
        let (epoch, transition) = {
            let mut m = self.member();
            let epoch = m.holder.held_epoch().max(committed_mine)?;
            let t = m.holder.release(epoch, now);
            m.release_reason = Some(reason);
            (epoch, t)
        };
        if let Some(t) = transition {
            self.on_transition(t);
        }
        if let Err(e) = self
            .publisher
            .publish(MemberRole::Backup, applied.state.epoch)
            .await
        {
            tracing::warn!(error = %e, "publishing the demotion failed");
        }
        tracing::info!(epoch, ?reason, "released the primary lease");
        self.report_once().await;
        self.kick_coordinator.notify_one();
        Some(epoch)
    }

    fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Propose(command) => {
                    let me = self.clone();
                    let reason = match &command {
                        super::group::GroupCommand::Appoint {
                            failover: Some(f), ..
                        } => Some(format!("{:?}", f.reason)),
                        super::group::GroupCommand::Appoint { failover: None, .. } => {
                            Some("Initial".to_string())
                        }
                        _ => None,
                    };
                    tokio::spawn(async move {
                        tracing::info!(?command, "coordinator proposes");
                        let result = me.raft.propose(command).await;
                        let succeeded = result.is_ok();
                        match result {
                            Ok((index, outcome)) => {
                                tracing::debug!(index, ?outcome, "proposal applied");
                                me.raft.broadcast_commit().await;
                                if let (Some(r), super::group::CommandOutcome::Applied) =
                                    (reason, outcome)
                                {
                                    me.metrics
                                        .failovers
                                        .get_or_create(&CauseLabels { cause: r })
                                        .inc();
                                }
                            }
                            Err(e) => tracing::info!(error = %e, "proposal failed"),
                        }
                        // The applied state reaches the coordinator through the applied loop;
                        // make sure it has it before the next decision.
                        let applied = me.applied();
                        {
                            let mut c = me.coordinator();
                            c.on_applied(monotonic_millis(), &applied.state, &applied.roster);
                            c.on_proposal_done();
                        }
                        // After a failure (typically: no longer the leader) the periodic tick
                        // decides again; kicking at once would spin on an immediate refusal.
                        if succeeded {
                            me.kick_coordinator.notify_one();
                        }
                    });
                }
                Action::RequestDemotion { member, epoch } => {
                    let me = self.clone();
                    tokio::spawn(async move { me.request_demotion(member, epoch).await });
                }
            }
        }
    }

    async fn request_demotion(self: &Arc<Self>, member: NodeId, epoch: u64) {
        if member == self.id {
            if self.release(ReleaseReason::Switchover).await.is_some() {
                self.coordinator()
                    .on_released(member, epoch, ReleaseReason::Switchover);
                self.kick_coordinator.notify_one();
            }
            return;
        }
        let Some(node) = self
            .applied()
            .roster
            .members
            .get(&member)
            .map(|m| m.node.clone())
        else {
            return;
        };
        let Ok(channel) = self.peers.channel(member, &node.address) else {
            return;
        };
        let mut client = proto::peer_client::PeerClient::new(channel);
        let timeout = Duration::from_millis(self.lease_millis());
        let request = proto::DemoteRequest {
            from_id: self.id,
            epoch,
        };
        match tokio::time::timeout(timeout, client.demote(request)).await {
            Ok(Ok(reply)) if reply.get_ref().released => {
                self.coordinator()
                    .on_released(member, epoch, ReleaseReason::Switchover);
                self.kick_coordinator.notify_one();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(member, error = %e, "demotion request failed"),
            Err(_) => tracing::debug!(member, "demotion request timed out"),
        }
    }
}

impl Agent {
    /// Opens the data directory, starts Raft and all loops, and serves gRPC and HTTP.
    pub async fn start(settings: AgentSettings) -> Result<Agent, AgentError> {
        let data_dir_lock = lock_data_dir(&settings.data_dir).await?;
        let (id, created) = raft::load_or_create_node_id(&settings.data_dir)?;
        tracing::info!(node_id = id, created, member = %settings.member, data_dir = %settings.data_dir.display(), "starting quorate-agent");
        let faults = Arc::new(Faults::default());
        let peers = Arc::new(Peers::new(id, settings.tls_client.clone(), faults));
        let raft = RaftNode::start(
            id,
            &settings.data_dir,
            timing::raft_timers(settings.lease_millis),
            timing::election_timers(settings.lease_millis),
            peers.clone(),
        )
        .await?;
        let transitions = match &settings.transition_log {
            Some(p) => Some(TransitionLog::open(p)?),
            None => None,
        };
        let coordinator = Coordinator::new(CoordinatorSettings {
            id,
            initial_config: GroupConfig {
                mode: settings.mode,
                lease_millis: settings.lease_millis,
                max_failovers_per_hour: settings.max_failovers_per_hour,
            },
        });
        let health = super::health::spawn_checker(if settings.witness {
            None
        } else {
            settings.health.clone()
        });
        let grpc_listener = super::transport::bind(&settings.listen).await?;
        let http_listener = tokio::net::TcpListener::bind(&settings.http_listen)
            .await
            .map_err(|source| AgentError::Http {
                address: settings.http_listen.clone(),
                source,
            })?;
        let inner = Arc::new(Inner {
            publisher: RolePublisher::new(settings.publisher.clone()),
            settings,
            id,
            raft,
            peers,
            coordinator: Mutex::new(coordinator),
            member: Mutex::new(MemberSide {
                holder: LeaseHolder::new(),
                leaving: false,
                release_reason: None,
                relayed: None,
            }),
            health,
            transitions,
            metrics: Metrics::new(),
            changes: watch::Sender::new(0),
            desired_role: watch::Sender::new((MemberRole::Unknown, 0)),
            kick_report: Notify::new(),
            kick_coordinator: Notify::new(),
            kick_quorum: Notify::new(),
            stopping: watch::Sender::new(false),
            elections_allowed: AtomicBool::new(true),
            _data_dir_lock: data_dir_lock,
        });
        let applied = inner.applied();
        inner
            .coordinator()
            .on_applied(monotonic_millis(), &applied.state, &applied.roster);
        inner.refresh_role();
        if let Err(e) = inner
            .publisher
            .publish(
                inner.current_role(monotonic_millis()).0,
                applied.state.epoch,
            )
            .await
        {
            tracing::warn!(error = %e, "writing the initial role file failed");
        }
        if let Some(log) = &inner.transitions {
            log.record(&TransitionLine {
                member: inner.settings.member.clone(),
                node_id: id,
                event: "start".into(),
                epoch: applied.state.epoch,
                mono_ms: monotonic_millis(),
                wall_ms: unix_millis(),
                lease_until_mono_ms: 0,
                cause: None,
            });
        }
        spawn_loops(&inner);
        super::server::spawn_grpc(inner.clone(), grpc_listener)?;
        super::http::spawn_http(inner.clone(), http_listener);
        Ok(Agent { inner })
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// Graceful stop: stop being appointable, hand the primary role off, leave.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.member().leaving = true;
        let released = inner.release(ReleaseReason::Shutdown).await;
        if released.is_none() {
            inner.report_once().await;
        }
        if let Some(epoch) = released {
            // Wait (briefly) for the hand-off to be committed so that a coordinator on this node
            // grants the new primary its first lease before it goes away.
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(inner.lease_millis() * 2);
            let mut applied = inner.raft.applied();
            while applied.borrow().state.epoch <= epoch {
                if tokio::time::timeout_at(deadline, applied.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if inner.raft.status().is_leader {
                let until =
                    tokio::time::Instant::now() + Duration::from_millis(inner.lease_millis());
                while tokio::time::Instant::now() < until {
                    let (status, _) = inner.coordinator().lease_status(monotonic_millis());
                    if status == super::coordinator::LeaseStatus::Live {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        inner.stopping.send_replace(true);
        inner.raft.shutdown().await;
    }
}

/// Waits until no other process uses the data directory (a replacement pod can start while the
/// old agent still shuts down on the same volume), then holds it for the life of the process.
async fn lock_data_dir(dir: &std::path::Path) -> Result<raft::DataDirLock, AgentError> {
    let started = tokio::time::Instant::now();
    let mut next_note = started;
    loop {
        if let Some(lock) = raft::DataDirLock::try_acquire(dir)? {
            if next_note > started {
                tracing::info!(waited_ms = started.elapsed().as_millis() as u64, data_dir = %dir.display(), "the previous agent process released the data directory");
            }
            return Ok(lock);
        }
        if tokio::time::Instant::now() >= next_note {
            tracing::warn!(data_dir = %dir.display(), "another agent process still uses the data directory; waiting for it to exit");
            next_note = tokio::time::Instant::now() + Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_loops(inner: &Arc<Inner>) {
    // Raft status: leadership for the coordinator, leader changes for the reporter.
    {
        let me = inner.clone();
        tokio::spawn(async move {
            let mut watch = me.raft.status_watch();
            let mut last_leader = None;
            let mut was_leader = false;
            let mut last_status: Option<super::raft::RaftStatus> = None;
            loop {
                let status = watch.current();
                // openraft republishes its metrics on every heartbeat answer (its quorum-ack
                // age changes each time); only what the agent reads from them is news. Reacting
                // to each one woke every loop and Watch stream thousands of times a second.
                if last_status.as_ref() == Some(&status) {
                    if !watch.changed().await {
                        return;
                    }
                    continue;
                }
                last_status = Some(status.clone());
                let now = monotonic_millis();
                {
                    let mut c = me.coordinator();
                    c.on_raft_status(
                        now,
                        status.is_leader,
                        status.term,
                        status.leader_caught_up(),
                    );
                    if status.is_leader {
                        c.on_replication(status.replication.clone());
                    }
                }
                me.metrics.term.set(status.term as i64);
                me.metrics.is_coordinator.set(i64::from(status.is_leader));
                if status.leader != last_leader {
                    last_leader = status.leader;
                    me.kick_report.notify_one();
                }
                if status.is_leader && !was_leader {
                    me.kick_quorum.notify_one();
                }
                was_leader = status.is_leader;
                me.kick_coordinator.notify_one();
                me.bump();
                if !watch.changed().await {
                    return;
                }
            }
        });
    }
    // Applied state: coordinator input, member fencing, role.
    {
        let me = inner.clone();
        tokio::spawn(async move {
            let mut applied = me.raft.applied();
            loop {
                let a = applied.borrow_and_update().clone();
                me.coordinator()
                    .on_applied(monotonic_millis(), &a.state, &a.roster);
                let now = monotonic_millis();
                let primary_is_me = a.state.primary_id() == Some(me.id);
                let transition =
                    me.member()
                        .holder
                        .observe_committed(a.state.epoch, primary_is_me, now);
                if let Some(t) = transition {
                    me.on_transition(t);
                }
                if primary_is_me && me.member().holder.live_epoch(now) != Some(a.state.epoch) {
                    // Appointed: ask for the first lease right away.
                    me.kick_report.notify_one();
                }
                me.metrics.epoch.set(a.state.epoch as i64);
                me.refresh_role();
                me.update_elections();
                me.kick_coordinator.notify_one();
                me.bump();
                if applied.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    // Coordinator decisions.
    {
        let me = inner.clone();
        tokio::spawn(async move {
            let mut stopping = me.stopping.subscribe();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = me.kick_coordinator.notified() => {}
                    _ = stopping.changed() => return,
                }
                let actions = me.coordinator().tick(monotonic_millis(), unix_millis());
                if !actions.is_empty() {
                    me.execute(actions);
                }
            }
        });
    }
    // Quorum confirmations (leader only): the base of every lease grant.
    {
        let me = inner.clone();
        tokio::spawn(async move {
            let mut stopping = me.stopping.subscribe();
            loop {
                let interval = Duration::from_millis(timing::quorum_confirm_interval_millis(
                    me.lease_millis(),
                ));
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = me.kick_quorum.notified() => {}
                    _ = stopping.changed() => return,
                }
                let status = me.raft.status();
                if !status.is_leader {
                    continue;
                }
                let sent_at = monotonic_millis();
                let timeout = Duration::from_millis(me.lease_millis() / 2);
                if let Ok(Ok(())) = tokio::time::timeout(timeout, me.raft.confirm_quorum()).await {
                    me.coordinator().on_quorum_ack(status.term, sent_at);
                }
            }
        });
    }
    // Member reports (the primary's lease renewals) and lease expiry. A primary whose report
    // brought no grant (no coordinator known, a new coordinator not ready yet, a lost answer)
    // asks again after the short renewal retry instead of a whole report interval: a coordinator
    // change must not cost it its lease.
    {
        let me = inner.clone();
        tokio::spawn(async move {
            let mut stopping = me.stopping.subscribe();
            let mut retry_soon = false;
            loop {
                let lease = me.lease_millis();
                let interval = Duration::from_millis(if retry_soon {
                    timing::renewal_retry_millis(lease)
                } else {
                    timing::report_interval_millis(lease)
                });
                let now = monotonic_millis();
                let expiry = me
                    .member()
                    .holder
                    .lease_until()
                    .map(|u| Duration::from_millis(u.saturating_sub(now)));
                let expiry_sleep = async {
                    match expiry {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = me.kick_report.notified() => {}
                    _ = expiry_sleep => {
                        me.check_expiry();
                        continue;
                    }
                    _ = stopping.changed() => return,
                }
                me.check_expiry();
                let outcome = me.report_once().await;
                if outcome.demote {
                    me.release(ReleaseReason::Switchover).await;
                }
                retry_soon = !outcome.granted && me.wants_lease(monotonic_millis());
            }
        });
    }
    // Workload health: an unhealthy primary releases its lease (immediate hand-off).
    {
        let me = inner.clone();
        tokio::spawn(async move {
            let mut health = me.health.clone();
            let mut was_healthy = health.borrow().healthy;
            while health.changed().await.is_ok() {
                let healthy = health.borrow().healthy;
                if was_healthy && !healthy && me.member().holder.is_live(monotonic_millis()) {
                    tracing::warn!("workload failed its health check; releasing the primary lease");
                    me.release(ReleaseReason::WorkloadUnhealthy).await;
                }
                if healthy != was_healthy {
                    me.kick_report.notify_one();
                }
                was_healthy = healthy;
            }
        });
    }
    // Role publication.
    {
        let me = inner.clone();
        tokio::spawn(async move {
            let mut desired = me.desired_role.subscribe();
            loop {
                let (role, epoch) = *desired.borrow_and_update();
                if let Err(e) = me.publisher.publish(role, epoch).await {
                    tracing::warn!(error = %e, "publishing the role failed");
                }
                if desired.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}
