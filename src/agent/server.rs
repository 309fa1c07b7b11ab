//! The gRPC services: `Agent` (operator API) and `Peer` (Raft and member reports).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::clock::{monotonic_millis, unix_millis};
use super::coordinator::{LeaseStatus, MemberReport, MemberRole, ReleaseReason};
use super::group::{FailoverReason, GroupCommand, MemberNode, Mode, NodeId};
use super::node::Inner;
use super::proto::{self, agent_server::AgentServer, peer_server::PeerServer};
use super::raft::RaftNodeError;
use super::transport;

/// Metadata set on requests a member forwards to the coordinator (prevents loops).
const FORWARDED: &str = "x-quorate-forwarded";

pub(crate) fn spawn_grpc(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
) -> Result<(), transport::TransportError> {
    let agent = AgentServer::new(AgentApi {
        inner: inner.clone(),
    })
    .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    let peer = PeerServer::new(PeerApi {
        inner: inner.clone(),
    })
    .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .add_service(agent)
        .add_service(peer);
    let mut stopping = inner.stopping.subscribe();
    let shutdown = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    match inner.settings.tls_server.clone() {
        Some(tls) => {
            let incoming = transport::tls_incoming(listener, &tls);
            tokio::spawn(async move {
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            });
        }
        None => {
            let incoming = transport::plain_incoming(listener);
            tokio::spawn(async move {
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            });
        }
    }
    Ok(())
}

fn role_to_proto(role: MemberRole) -> proto::Role {
    match role {
        MemberRole::Primary => proto::Role::Primary,
        MemberRole::Backup => proto::Role::Backup,
        MemberRole::Active => proto::Role::Active,
        MemberRole::Witness => proto::Role::Witness,
        MemberRole::Unknown => proto::Role::Unknown,
    }
}

fn reason_to_proto(r: FailoverReason) -> proto::FailoverReason {
    match r {
        FailoverReason::LeaseExpired => proto::FailoverReason::LeaseExpired,
        FailoverReason::Released => proto::FailoverReason::Released,
        FailoverReason::WorkloadUnhealthy => proto::FailoverReason::WorkloadUnhealthy,
        FailoverReason::Switchover => proto::FailoverReason::Switchover,
    }
}

fn raft_status(e: RaftNodeError) -> Status {
    match e {
        RaftNodeError::NotLeader { .. } => Status::unavailable(e.to_string()),
        RaftNodeError::AlreadyInitialized => Status::failed_precondition(e.to_string()),
        RaftNodeError::Membership(_) => Status::failed_precondition(e.to_string()),
        RaftNodeError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        RaftNodeError::Malformed(_) => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// Builds the group state as this node sees it.
pub(crate) async fn group_state(inner: &Inner) -> proto::GroupState {
    let now = monotonic_millis();
    let status = inner.raft.status();
    let applied = inner.applied();
    let initialized = inner.raft.is_initialized().await.unwrap_or(false);
    let commit_index = if initialized {
        inner.raft.committed_index().await
    } else {
        0
    };
    let (own_role, _) = inner.current_role(now);
    let member_ref = |id: NodeId| -> Option<proto::MemberRef> {
        applied.roster.members.get(&id).map(|m| proto::MemberRef {
            id,
            name: m.node.name.clone(),
            address: m.node.address.clone(),
        })
    };
    let from_coordinator = status.is_leader && inner.coordinator().is_leader();
    // Soft state: first-hand on the coordinator, relayed elsewhere.
    let mut soft: BTreeMap<NodeId, proto::MemberStatus> = BTreeMap::new();
    let (lease, remaining) = if from_coordinator {
        let c = inner.coordinator();
        let view = c.view(now);
        for m in view.members {
            soft.insert(
                m.id,
                proto::MemberStatus {
                    id: m.id,
                    role: role_to_proto(m.role) as i32,
                    healthy: m.healthy,
                    load: m.load,
                    latency_ms: m.latency_ms,
                    last_report_age_ms: m.last_report_age_millis,
                    applied_index: m.applied_index,
                    matched_index: m.matched_index,
                    priority: m.priority,
                    ..Default::default()
                },
            );
        }
        let lease = match view.lease {
            LeaseStatus::None => proto::LeaseState::None,
            LeaseStatus::Live => proto::LeaseState::Live,
            LeaseStatus::Expired => proto::LeaseState::Expired,
            LeaseStatus::Released => proto::LeaseState::Released,
        };
        (lease, view.lease_remaining_millis)
    } else {
        let relayed = inner.member().relayed.clone();
        match relayed {
            Some((at, view)) if view.epoch == applied.state.epoch => {
                let age = now.saturating_sub(at);
                for m in view.members {
                    soft.insert(m.id, m);
                }
                let remaining = view.primary_lease_remaining_millis.saturating_sub(age);
                let lease = match proto::LeaseState::try_from(view.primary_lease) {
                    Ok(proto::LeaseState::Live) if remaining == 0 => proto::LeaseState::Expired,
                    Ok(l) => l,
                    Err(_) => proto::LeaseState::Expired,
                };
                (lease, remaining)
            }
            _ if applied.state.primary.is_none() => (proto::LeaseState::None, 0),
            _ => (proto::LeaseState::Expired, 0),
        }
    };
    let members = applied
        .roster
        .members
        .iter()
        .map(|(id, entry)| {
            let s = soft.remove(id).unwrap_or_default();
            let mut role = proto::Role::try_from(s.role).unwrap_or(proto::Role::Unknown);
            if *id == inner.id {
                role = role_to_proto(own_role);
            } else if entry.node.witness {
                role = proto::Role::Witness;
            }
            proto::MemberStatus {
                id: *id,
                name: entry.node.name.clone(),
                address: entry.node.address.clone(),
                voter: entry.voter,
                witness: entry.node.witness,
                role: role as i32,
                ..s
            }
        })
        .collect();
    let state = &applied.state;
    proto::GroupState {
        answered_by: Some(proto::NodeInfo {
            id: inner.id,
            name: inner.settings.member.clone(),
            address: inner.settings.advertise.clone(),
            initialized,
            witness: inner.settings.witness,
            role: role_to_proto(own_role) as i32,
        }),
        from_coordinator,
        epoch: state.epoch,
        primary: state
            .primary
            .as_ref()
            .and_then(|p| member_ref(p.id))
            .or_else(|| {
                state.primary.as_ref().map(|p| proto::MemberRef {
                    id: p.id,
                    name: p.name.clone(),
                    address: String::new(),
                })
            }),
        primary_lease: lease as i32,
        primary_lease_remaining_millis: remaining,
        leader: status.leader.and_then(member_ref),
        term: status.term,
        commit_index,
        applied_index: applied.applied_index,
        paused: state.paused,
        flap_guard_tripped: state.flap_guard_tripped,
        switchover_target: state
            .switchover
            .as_ref()
            .and_then(|s| s.target)
            .and_then(member_ref),
        switchover_pending: state.switchover.is_some(),
        members,
        failovers: state
            .history
            .iter()
            .map(|r| proto::FailoverRecord {
                from: r.from.as_ref().map(|f| proto::MemberRef {
                    id: f.id,
                    name: f.name.clone(),
                    address: String::new(),
                }),
                to: Some(proto::MemberRef {
                    id: r.to.id,
                    name: r.to.name.clone(),
                    address: String::new(),
                }),
                epoch: r.epoch,
                reason: reason_to_proto(r.reason) as i32,
                detected_at_unix_millis: r.detected_at_unix_millis,
                appointed_at_unix_millis: r.appointed_at_unix_millis,
            })
            .collect(),
        config: state.config.map(|c| proto::GroupConfig {
            mode: match c.mode {
                Mode::PrimaryBackup => proto::Mode::PrimaryBackup,
                Mode::ActiveActive => proto::Mode::ActiveActive,
            } as i32,
            lease_millis: c.lease_millis,
            max_failovers_per_hour: c.max_failovers_per_hour,
        }),
    }
}

/// The state without fields that change on every tick (to detect real changes for Watch).
fn stable_part(s: &proto::GroupState) -> proto::GroupState {
    let mut s = s.clone();
    s.primary_lease_remaining_millis = 0;
    for m in &mut s.members {
        m.last_report_age_ms = m.last_report_age_ms.map(|_| 0);
        m.load = None;
        m.latency_ms = None;
        m.applied_index = 0;
        m.matched_index = None;
    }
    s.applied_index = 0;
    s.commit_index = 0;
    s
}

struct AgentApi {
    inner: Arc<Inner>,
}

impl AgentApi {
    fn leader_client(
        &self,
        request_metadata: &tonic::metadata::MetadataMap,
    ) -> Result<proto::agent_client::AgentClient<tonic::transport::Channel>, Status> {
        let status = self.inner.raft.status();
        let Some((id, node)) = status.leader_node() else {
            return Err(Status::unavailable("no coordinator is elected yet"));
        };
        if request_metadata.get(FORWARDED).is_some() {
            return Err(Status::unavailable(format!(
                "forwarded to a member that is not the coordinator; the coordinator is {} ({id}) at {}",
                node.name, node.address
            )));
        }
        let channel = self.inner.peers.channel(id, &node.address).map_err(|e| {
            Status::unavailable(format!(
                "coordinator {} at {}: {e}",
                node.name, node.address
            ))
        })?;
        Ok(proto::agent_client::AgentClient::new(channel))
    }

    fn forwarded<T>(message: T) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        r.set_timeout(Duration::from_secs(30));
        r
    }

    async fn propose(&self, command: GroupCommand) -> Result<u64, Status> {
        let (index, outcome) = self
            .inner
            .raft
            .propose(command)
            .await
            .map_err(raft_status)?;
        self.inner.kick_coordinator.notify_one();
        match outcome {
            super::group::CommandOutcome::Applied => Ok(index),
            super::group::CommandOutcome::Rejected(why) => Err(Status::failed_precondition(why)),
        }
    }

    async fn wait_applied<F: Fn(&super::raft::AppliedState) -> bool>(
        &self,
        timeout: Duration,
        done: F,
    ) -> Result<super::raft::AppliedState, Status> {
        let mut rx = self.inner.raft.applied();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let a = rx.borrow_and_update();
                if done(&a) {
                    return Ok(a.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("agent is stopping")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "not done within {timeout:?}"
                    )));
                }
            }
        }
    }

    async fn bootstrap_here(
        &self,
        req: proto::BootstrapRequest,
    ) -> Result<proto::BootstrapReply, Status> {
        let inner = &self.inner;
        if inner.raft.is_initialized().await.map_err(raft_status)? {
            return Err(Status::failed_precondition(
                "this node is already initialized",
            ));
        }
        if req.members.is_empty() {
            return Err(Status::invalid_argument("members must not be empty"));
        }
        let mut members = BTreeMap::new();
        let mut names = BTreeSet::new();
        for m in &req.members {
            validate_member(m)?;
            if !names.insert(m.name.clone()) {
                return Err(Status::invalid_argument(format!(
                    "member name {} appears twice",
                    m.name
                )));
            }
            if members
                .insert(
                    m.id,
                    MemberNode {
                        name: m.name.clone(),
                        address: m.address.clone(),
                        witness: m.witness,
                    },
                )
                .is_some()
            {
                return Err(Status::invalid_argument(format!(
                    "member id {} appears twice",
                    m.id
                )));
            }
        }
        let Some(me) = members.get(&inner.id) else {
            return Err(Status::invalid_argument(format!(
                "members must include the node that bootstraps (id {})",
                inner.id
            )));
        };
        if me.witness != inner.settings.witness {
            return Err(Status::invalid_argument(
                "this node's witness flag differs from its member entry",
            ));
        }
        if inner.settings.mode == Mode::PrimaryBackup && members.values().all(|m| m.witness) {
            return Err(Status::invalid_argument(
                "a PrimaryBackup group needs a member that is not a witness",
            ));
        }
        // Every other member must be reachable, be who it claims, and be pristine.
        for (id, node) in &members {
            if *id == inner.id {
                continue;
            }
            let channel = inner.peers.channel(*id, &node.address).map_err(|e| {
                Status::unavailable(format!("{} at {}: {e}", node.name, node.address))
            })?;
            let mut client = proto::agent_client::AgentClient::new(channel);
            let mut request = Request::new(proto::StatusRequest {});
            request.set_timeout(Duration::from_secs(5));
            let answer = client
                .status(request)
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "{} at {}: {}",
                        node.name,
                        node.address,
                        e.message()
                    ))
                })?
                .into_inner();
            let Some(info) = answer.answered_by else {
                return Err(Status::unavailable(format!(
                    "{} did not identify itself",
                    node.name
                )));
            };
            if info.id != *id {
                return Err(Status::failed_precondition(format!(
                    "{} at {} has node id {}, not {id}",
                    node.name, node.address, info.id
                )));
            }
            if info.initialized {
                return Err(Status::failed_precondition(format!(
                    "{} ({id}) is already initialized: the group exists",
                    node.name
                )));
            }
        }
        inner.raft.initialize(members).await.map_err(raft_status)?;
        tracing::info!(members = req.members.len(), "bootstrapped the group");
        Ok(proto::BootstrapReply {
            initialized_by: inner.id,
        })
    }

    fn membership_reply(&self, index: u64) -> proto::MembershipReply {
        let status = self.inner.raft.status();
        proto::MembershipReply {
            voters: status.voters.iter().copied().collect(),
            learners: status
                .members
                .keys()
                .filter(|id| !status.voters.contains(id))
                .copied()
                .collect(),
            log_index: index,
        }
    }

    async fn add_member_here(&self, m: proto::Member) -> Result<proto::MembershipReply, Status> {
        validate_member(&m)?;
        let status = self.inner.raft.status();
        if let Some((other, _)) = status
            .members
            .iter()
            .find(|(id, n)| **id != m.id && (n.name == m.name || n.address == m.address))
        {
            return Err(Status::failed_precondition(format!(
                "name {} or address {} is already used by member {other}; remove it first",
                m.name, m.address
            )));
        }
        if let Some(existing) = status.members.get(&m.id)
            && (existing.name != m.name
                || existing.address != m.address
                || existing.witness != m.witness)
        {
            return Err(Status::failed_precondition(format!(
                "member {} exists as {existing}; remove it first to change it",
                m.id
            )));
        }
        if status.voters.contains(&m.id) {
            return Ok(self.membership_reply(0));
        }
        let node = MemberNode {
            name: m.name.clone(),
            address: m.address.clone(),
            witness: m.witness,
        };
        let learned = tokio::time::timeout(
            Duration::from_secs(60),
            self.inner.raft.add_learner(m.id, node),
        )
        .await
        .map_err(|_| Status::deadline_exceeded(format!("{} did not catch up within 60 s", m.name)))?
        .map_err(raft_status)?;
        let index = self.inner.raft.add_voter(m.id).await.map_err(raft_status)?;
        tracing::info!(member = %m.name, id = m.id, learned, index, "added a member");
        Ok(self.membership_reply(index))
    }

    async fn remove_member_here(&self, id: NodeId) -> Result<proto::MembershipReply, Status> {
        let now = monotonic_millis();
        let status = self.inner.raft.status();
        if !status.members.contains_key(&id) {
            return Ok(self.membership_reply(0));
        }
        let applied = self.inner.applied();
        if applied.state.primary_id() == Some(id) {
            return Err(Status::failed_precondition(
                "the member is the primary: switch over first",
            ));
        }
        if status.voters.contains(&id) {
            let remaining = status.voters.len() - 1;
            if remaining == 0 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            let live = self.inner.coordinator().live_voters(now, Some(id));
            let majority = remaining / 2 + 1;
            if live < majority {
                return Err(Status::failed_precondition(format!(
                    "after the removal only {live} of {remaining} voters would be live, fewer than a majority ({majority})"
                )));
            }
        }
        let index = self
            .inner
            .raft
            .remove_member(id)
            .await
            .map_err(raft_status)?;
        tracing::info!(id, index, "removed a member");
        Ok(self.membership_reply(index))
    }

    async fn switchover_here(&self, target: String) -> Result<proto::SwitchoverReply, Status> {
        let inner = &self.inner;
        let now = monotonic_millis();
        let applied = inner.applied();
        let state = &applied.state;
        if state.config.map(|c| c.mode) == Some(Mode::ActiveActive) {
            return Err(Status::failed_precondition(
                "ActiveActive groups have no primary",
            ));
        }
        let Some(primary) = state.primary.clone() else {
            return Err(Status::failed_precondition("no primary is appointed yet"));
        };
        let target_id = if target.is_empty() {
            None
        } else {
            let Some(id) = applied.roster.find(&target) else {
                return Err(Status::not_found(format!("no member {target:?}")));
            };
            Some(id)
        };
        if target_id == Some(primary.id) {
            return Ok(proto::SwitchoverReply {
                primary: Some(proto::MemberRef {
                    id: primary.id,
                    name: primary.name,
                    address: String::new(),
                }),
                epoch: state.epoch,
            });
        }
        if let Some(t) = target_id {
            inner
                .coordinator()
                .switchover_target_ok(now, t)
                .map_err(Status::failed_precondition)?;
        }
        let epoch = state.epoch;
        if state.switchover.as_ref().is_none_or(|s| s.epoch != epoch) {
            self.propose(GroupCommand::BeginSwitchover {
                epoch,
                target: target_id,
                requested_at_unix_millis: unix_millis(),
            })
            .await?;
        }
        let lease = inner.lease_millis();
        let done = self
            .wait_applied(Duration::from_millis(lease * 3 + 2000), |a| {
                a.state.epoch > epoch
            })
            .await?;
        let p = done.state.primary.clone();
        Ok(proto::SwitchoverReply {
            primary: p.map(|p| proto::MemberRef {
                address: done
                    .roster
                    .members
                    .get(&p.id)
                    .map(|m| m.node.address.clone())
                    .unwrap_or_default(),
                id: p.id,
                name: p.name,
            }),
            epoch: done.state.epoch,
        })
    }
}

fn validate_member(m: &proto::Member) -> Result<(), Status> {
    if m.id == 0 {
        return Err(Status::invalid_argument("member id must not be 0"));
    }
    if m.name.is_empty() {
        return Err(Status::invalid_argument("member name must not be empty"));
    }
    transport::split_host_port(&m.address).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(())
}

type StateStream = Pin<Box<dyn Stream<Item = Result<proto::GroupState, Status>> + Send>>;

macro_rules! forward_or {
    ($self:ident, $request:ident, $method:ident, $local:expr) => {{
        if $self.inner.raft.status().is_leader {
            let message = $request.into_inner();
            #[allow(clippy::redundant_closure_call)]
            return ($local)(message).await.map(Response::new);
        }
        let mut client = $self.leader_client($request.metadata())?;
        return client.$method(Self::forwarded($request.into_inner())).await;
    }};
}

#[tonic::async_trait]
impl proto::agent_server::Agent for AgentApi {
    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::GroupState>, Status> {
        let _t = self.inner.metrics.rpc("Status");
        Ok(Response::new(group_state(&self.inner).await))
    }

    type WatchStream = StateStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let _t = self.inner.metrics.rpc("Watch");
        let heartbeat = match request.get_ref().heartbeat_millis {
            0 => 1000,
            n => u64::from(n).clamp(50, 60_000),
        };
        let inner = self.inner.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = inner.changes.subscribe();
            let mut stopping = inner.stopping.subscribe();
            let mut last: Option<proto::GroupState> = None;
            let mut last_sent = tokio::time::Instant::now();
            loop {
                let state = group_state(&inner).await;
                let stable = stable_part(&state);
                let due = last_sent.elapsed() >= Duration::from_millis(heartbeat);
                if last.as_ref() != Some(&stable) || due {
                    if tx.send(Ok(state)).await.is_err() {
                        return;
                    }
                    last = Some(stable);
                    last_sent = tokio::time::Instant::now();
                }
                let next_heartbeat = last_sent + Duration::from_millis(heartbeat);
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return; },
                    _ = tokio::time::sleep_until(next_heartbeat) => {}
                    _ = stopping.changed() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn bootstrap(
        &self,
        request: Request<proto::BootstrapRequest>,
    ) -> Result<Response<proto::BootstrapReply>, Status> {
        let _t = self.inner.metrics.rpc("Bootstrap");
        self.bootstrap_here(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn add_member(
        &self,
        request: Request<proto::Member>,
    ) -> Result<Response<proto::MembershipReply>, Status> {
        let _t = self.inner.metrics.rpc("AddMember");
        forward_or!(self, request, add_member, |m| self.add_member_here(m))
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::MembershipReply>, Status> {
        let _t = self.inner.metrics.rpc("RemoveMember");
        forward_or!(
            self,
            request,
            remove_member,
            |m: proto::RemoveMemberRequest| self.remove_member_here(m.id)
        )
    }

    async fn switchover(
        &self,
        request: Request<proto::SwitchoverRequest>,
    ) -> Result<Response<proto::SwitchoverReply>, Status> {
        let _t = self.inner.metrics.rpc("Switchover");
        forward_or!(self, request, switchover, |m: proto::SwitchoverRequest| {
            self.switchover_here(m.target)
        })
    }

    async fn pause(
        &self,
        request: Request<proto::PauseRequest>,
    ) -> Result<Response<proto::CommandReply>, Status> {
        let _t = self.inner.metrics.rpc("Pause");
        forward_or!(self, request, pause, |_m| async {
            let log_index = self
                .propose(GroupCommand::SetPaused { paused: true })
                .await?;
            Ok::<_, Status>(proto::CommandReply { log_index })
        })
    }

    async fn resume(
        &self,
        request: Request<proto::ResumeRequest>,
    ) -> Result<Response<proto::CommandReply>, Status> {
        let _t = self.inner.metrics.rpc("Resume");
        forward_or!(self, request, resume, |_m| async {
            let log_index = self
                .propose(GroupCommand::SetPaused { paused: false })
                .await?;
            Ok::<_, Status>(proto::CommandReply { log_index })
        })
    }

    async fn touch(
        &self,
        request: Request<proto::TouchRequest>,
    ) -> Result<Response<proto::CommandReply>, Status> {
        let _t = self.inner.metrics.rpc("Touch");
        forward_or!(self, request, touch, |_m| async {
            let log_index = self
                .propose(GroupCommand::Touch {
                    nonce: rand::random(),
                })
                .await?;
            Ok::<_, Status>(proto::CommandReply { log_index })
        })
    }
}

struct PeerApi {
    inner: Arc<Inner>,
}

impl PeerApi {
    /// `to` is the node id the sender means (0: unspecified).
    fn check_peer(&self, from: NodeId, to: NodeId) -> Result<(), Status> {
        if to != 0 && to != self.inner.id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {} (its data directory was replaced); it must be re-added",
                self.inner.id, to
            )));
        }
        if self.inner.peers.faults().is_isolated(from) {
            return Err(Status::unavailable(format!(
                "peer {from} is isolated by fault injection"
            )));
        }
        Ok(())
    }
}

/// The Raft messages between peers: one JSON payload in, one out.
#[derive(Clone, Copy)]
enum RaftRpc {
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
}

impl RaftRpc {
    fn name(self) -> &'static str {
        match self {
            RaftRpc::AppendEntries => "AppendEntries",
            RaftRpc::Vote => "Vote",
            RaftRpc::PreVote => "PreVote",
            RaftRpc::InstallSnapshot => "InstallSnapshot",
        }
    }
}

impl PeerApi {
    /// What every Raft message shares: metrics, the sender and target check, the reply envelope.
    async fn raft_message(
        &self,
        rpc: RaftRpc,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        let _t = self.inner.metrics.rpc(rpc.name());
        let m = request.into_inner();
        self.check_peer(m.from_id, m.to_id)?;
        let raft = &self.inner.raft;
        let payload = match rpc {
            RaftRpc::AppendEntries => raft.handle_append_entries(&m.payload).await,
            RaftRpc::Vote => raft.handle_vote(&m.payload).await,
            RaftRpc::PreVote => raft.handle_pre_vote(&m.payload).await,
            RaftRpc::InstallSnapshot => raft.handle_install_snapshot(&m.payload).await,
        }
        .map_err(raft_status)?;
        Ok(Response::new(proto::RaftMessage {
            from_id: self.inner.id,
            payload,
            to_id: m.from_id,
        }))
    }
}

#[tonic::async_trait]
impl proto::peer_server::Peer for PeerApi {
    async fn append_entries(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        self.raft_message(RaftRpc::AppendEntries, request).await
    }

    async fn vote(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        self.raft_message(RaftRpc::Vote, request).await
    }

    async fn pre_vote(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        self.raft_message(RaftRpc::PreVote, request).await
    }

    async fn install_snapshot(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        self.raft_message(RaftRpc::InstallSnapshot, request).await
    }

    async fn report(
        &self,
        request: Request<proto::MemberReport>,
    ) -> Result<Response<proto::ReportReply>, Status> {
        let _t = self.inner.metrics.rpc("Report");
        let r = request.into_inner();
        self.check_peer(r.from_id, 0)?;
        let report = MemberReport {
            workload_healthy: r.workload_healthy,
            load: r.load.filter(|v| v.is_finite()),
            latency_ms: r.latency_ms.filter(|v| v.is_finite()),
            applied_index: r.applied_index,
            priority: r.priority.min(100),
            released_epoch: r.released_epoch,
            release_reason: match proto::ReleaseReason::try_from(r.release_reason) {
                Ok(proto::ReleaseReason::Shutdown) => Some(ReleaseReason::Shutdown),
                Ok(proto::ReleaseReason::Switchover) => Some(ReleaseReason::Switchover),
                Ok(proto::ReleaseReason::WorkloadUnhealthy) => {
                    Some(ReleaseReason::WorkloadUnhealthy)
                }
                _ => None,
            },
            leaving: r.leaving,
        };
        let known = self.inner.applied().roster.members.contains_key(&r.from_id);
        let decision = if known {
            self.inner
                .coordinator()
                .on_report(monotonic_millis(), r.from_id, report)
        } else {
            super::coordinator::ReportDecision {
                accepted: false,
                grant: None,
                demote: false,
            }
        };
        self.inner.bump();
        if decision.accepted {
            self.inner.kick_coordinator.notify_one();
        }
        let view = if decision.accepted {
            Some(group_state(&self.inner).await)
        } else {
            None
        };
        let status = self.inner.raft.status();
        Ok(Response::new(proto::ReportReply {
            accepted: decision.accepted,
            leader: status.leader_node().map(|(id, n)| proto::MemberRef {
                id,
                name: n.name,
                address: n.address,
            }),
            grant: decision.grant.map(|g| proto::LeaseGrant {
                epoch: g.epoch,
                remaining_millis: g.remaining_millis,
            }),
            demote: decision.demote,
            view,
        }))
    }

    async fn demote(
        &self,
        request: Request<proto::DemoteRequest>,
    ) -> Result<Response<proto::DemoteReply>, Status> {
        let _t = self.inner.metrics.rpc("Demote");
        let r = request.into_inner();
        self.check_peer(r.from_id, 0)?;
        let applied = self.inner.applied();
        if r.epoch < applied.state.epoch {
            // That epoch is over already; nothing to give back.
            return Ok(Response::new(proto::DemoteReply { released: true }));
        }
        let holds = self
            .inner
            .member()
            .holder
            .held_epoch()
            .is_some_and(|e| e <= r.epoch);
        if holds || applied.state.primary_id() == Some(self.inner.id) {
            self.inner.release(ReleaseReason::Switchover).await;
        } else {
            // Nothing held: still refuse grants for that epoch from now on.
            let transition = self
                .inner
                .member()
                .holder
                .release(r.epoch, monotonic_millis());
            if let Some(t) = transition {
                self.inner.on_transition(t);
            }
        }
        Ok(Response::new(proto::DemoteReply { released: true }))
    }

    async fn inject_fault(
        &self,
        request: Request<proto::FaultRequest>,
    ) -> Result<Response<proto::FaultReply>, Status> {
        if !self.inner.settings.enable_fault_injection {
            return Err(Status::permission_denied(
                "fault injection is disabled on this agent",
            ));
        }
        let request = request.into_inner();
        let ids: BTreeSet<NodeId> = request.isolate_from.into_iter().collect();
        let unreachable: BTreeSet<NodeId> = request.unreachable.into_iter().collect();
        tracing::warn!(?ids, ?unreachable, "fault injection: isolating peers");
        self.inner.peers.faults().set_isolated(ids);
        self.inner.peers.faults().set_unreachable(unreachable);
        Ok(Response::new(proto::FaultReply {}))
    }
}
