//! The gRPC services: `Agent` (operator API) and `Peer` (Raft and member reports).

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::authz::{self, Caller, Rpc};
use super::clock::{monotonic_millis, unix_millis};
use super::coordinator::MemberReport;
use super::group::{CommandOutcome, GroupCommand, MemberName, MemberNode, Mode, NodeId};
use super::handle::AgentHandle;
use super::metrics::RpcTimer;
use super::proto::{self, agent_server::AgentServer, peer_server::PeerServer};
use super::raft::{AppliedState, RaftNodeError};
use super::snapshot::stable_part;
use super::transport;

/// Metadata on the refusal of an admin request by a member that is not the coordinator: the
/// coordinator's address, which the client follows ([`crate::agent::client`]). Members do not
/// forward admin requests themselves: the coordinator accepts them only from the operator's
/// certificate, and a member's is not that.
pub const COORDINATOR_METADATA: &str = "x-quorate-coordinator";

pub(crate) fn spawn_grpc(
    handle: AgentHandle,
    listener: tokio::net::TcpListener,
) -> Result<(), transport::TransportError> {
    let agent = AgentServer::new(AgentApi { h: handle.clone() })
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    let peer = PeerServer::new(PeerApi { h: handle.clone() })
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .add_service(agent)
        .add_service(peer);
    let mut stopping = handle.stopping.clone();
    let shutdown = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    match handle.settings.tls_server.clone() {
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

/// Authorizes one request by the caller's certificate ([`authz`]); refusals are counted and
/// logged. Returns the RPC's timer.
fn admit<'a, T>(
    h: &'a AgentHandle,
    rpc: Rpc,
    request: &Request<T>,
) -> Result<RpcTimer<'a>, Status> {
    let certs = request.peer_certs();
    let caller = Caller::from_certificates(
        h.settings.tls_server.is_some(),
        certs.as_deref().map(Vec::as_slice),
    );
    if let Err(refusal) = authz::authorize(rpc, &caller) {
        h.metrics.rpc_refused(rpc.name(), caller.kind());
        tracing::warn!(
            rpc = rpc.name(),
            caller = caller.kind(),
            "refused: {refusal}"
        );
        return Err(Status::permission_denied(refusal.to_string()));
    }
    Ok(h.metrics.rpc(rpc.name()))
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

struct AgentApi {
    h: AgentHandle,
}

impl AgentApi {
    async fn propose(&self, command: GroupCommand) -> Result<u64, Status> {
        let (index, outcome) = self.h.raft.propose(command).await.map_err(raft_status)?;
        match outcome {
            CommandOutcome::Applied => Ok(index),
            CommandOutcome::Rejected(why) => Err(Status::failed_precondition(why)),
        }
    }

    fn applied(&self) -> AppliedState {
        self.h.raft.applied().borrow().clone()
    }

    async fn wait_applied<F: Fn(&AppliedState) -> bool>(
        &self,
        timeout: Duration,
        done: F,
    ) -> Result<AppliedState, Status> {
        let mut rx = self.h.raft.applied();
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
        let h = &self.h;
        if h.raft.is_initialized().await.map_err(raft_status)? {
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
        let Some(me) = members.get(&h.id) else {
            return Err(Status::invalid_argument(format!(
                "members must include the node that bootstraps (id {})",
                h.id
            )));
        };
        if me.witness != h.settings.witness {
            return Err(Status::invalid_argument(
                "this node's witness flag differs from its member entry",
            ));
        }
        if h.settings.mode == Mode::PrimaryBackup && members.values().all(|m| m.witness) {
            return Err(Status::invalid_argument(
                "a PrimaryBackup group needs a member that is not a witness",
            ));
        }
        // Every other member must be reachable, be who it claims, and be pristine.
        for (id, node) in &members {
            if *id == h.id {
                continue;
            }
            let channel = h.peers.channel(*id, &node.address).map_err(|e| {
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
        h.raft.initialize(members).await.map_err(raft_status)?;
        tracing::info!(members = req.members.len(), "bootstrapped the group");
        Ok(proto::BootstrapReply {
            initialized_by: h.id,
        })
    }

    fn membership_reply(&self, index: u64) -> proto::MembershipReply {
        let status = self.h.raft.status();
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
        let status = self.h.raft.status();
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
        let learned =
            tokio::time::timeout(Duration::from_secs(60), self.h.raft.add_learner(m.id, node))
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!("{} did not catch up within 60 s", m.name))
                })?
                .map_err(raft_status)?;
        let index = self.h.raft.add_voter(m.id).await.map_err(raft_status)?;
        tracing::info!(member = %m.name, id = m.id, learned, index, "added a member");
        Ok(self.membership_reply(index))
    }

    async fn remove_member_here(&self, id: NodeId) -> Result<proto::MembershipReply, Status> {
        let now = monotonic_millis();
        let status = self.h.raft.status();
        if !status.members.contains_key(&id) {
            return Ok(self.membership_reply(0));
        }
        let applied = self.applied();
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
            let live = self.h.core().coordinator().live_voters(now, Some(id));
            let majority = remaining / 2 + 1;
            if live < majority {
                return Err(Status::failed_precondition(format!(
                    "after the removal only {live} of {remaining} voters would be live, fewer than a majority ({majority})"
                )));
            }
        }
        let index = self.h.raft.remove_member(id).await.map_err(raft_status)?;
        tracing::info!(id, index, "removed a member");
        Ok(self.membership_reply(index))
    }

    async fn switchover_here(&self, target: String) -> Result<proto::SwitchoverReply, Status> {
        let now = monotonic_millis();
        let applied = self.applied();
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
            self.h
                .core()
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
        let lease = self.h.core().lease_millis();
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

impl AgentApi {
    /// Admin requests are carried out on the coordinator only; any other member refuses with
    /// the coordinator's address (when one is elected).
    fn on_coordinator(&self) -> Result<(), Status> {
        let status = self.h.raft.status();
        if status.is_leader {
            return Ok(());
        }
        let Some((id, node)) = status.leader_node() else {
            return Err(Status::unavailable("no coordinator is elected yet"));
        };
        let mut refusal = Status::unavailable(format!(
            "this member is not the coordinator; the coordinator is {} ({id}) at {}",
            node.name, node.address
        ));
        if let Ok(address) = node.address.parse() {
            refusal.metadata_mut().insert(COORDINATOR_METADATA, address);
        }
        Err(refusal)
    }

    async fn set_paused(&self, paused: bool) -> Result<proto::CommandReply, Status> {
        let log_index = self.propose(GroupCommand::SetPaused { paused }).await?;
        Ok(proto::CommandReply { log_index })
    }

    async fn fence_here(
        &self,
        request: proto::FenceRequest,
    ) -> Result<proto::CommandReply, Status> {
        let applied = self.applied();
        let Some(id) = applied.roster.find(&request.member) else {
            return Err(Status::not_found(format!("no member {:?}", request.member)));
        };
        if applied.state.fenced.contains(&id) == request.fenced {
            return Ok(proto::CommandReply { log_index: 0 });
        }
        if request.fenced {
            if applied.state.primary_id() == Some(id) {
                return Err(Status::failed_precondition(format!(
                    "{} is the primary: switch over first",
                    request.member
                )));
            }
            self.h
                .core()
                .coordinator()
                .fence_ok(monotonic_millis(), id)
                .map_err(Status::failed_precondition)?;
        }
        let log_index = self
            .propose(GroupCommand::SetFenced {
                member: MemberName {
                    id,
                    name: request.member.clone(),
                },
                fenced: request.fenced,
            })
            .await?;
        tracing::info!(member = %request.member, fenced = request.fenced, log_index, "fence changed");
        Ok(proto::CommandReply { log_index })
    }

    async fn touch_here(&self) -> Result<proto::CommandReply, Status> {
        let log_index = self
            .propose(GroupCommand::Touch {
                nonce: rand::random(),
            })
            .await?;
        Ok(proto::CommandReply { log_index })
    }
}

#[tonic::async_trait]
impl proto::agent_server::Agent for AgentApi {
    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::GroupState>, Status> {
        let _t = admit(&self.h, Rpc::Status, &request)?;
        Ok(Response::new(self.h.group_state().await))
    }

    type WatchStream = StateStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let _t = admit(&self.h, Rpc::Watch, &request)?;
        let heartbeat = Duration::from_millis(match request.get_ref().heartbeat_millis {
            0 => 1000,
            n => u64::from(n).clamp(50, 60_000),
        });
        let h = self.h.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = h.changes.clone();
            let mut stopping = h.stopping.clone();
            let mut last: Option<proto::GroupState> = None;
            let mut last_sent = tokio::time::Instant::now();
            loop {
                changes.borrow_and_update();
                let state = h.group_state().await;
                let stable = stable_part(&state);
                if last.as_ref() != Some(&stable) || last_sent.elapsed() >= heartbeat {
                    if tx.send(Ok(state)).await.is_err() {
                        return;
                    }
                    last = Some(stable);
                    last_sent = tokio::time::Instant::now();
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return; },
                    _ = tokio::time::sleep_until(last_sent + heartbeat) => {}
                    _ = stopping.wait_for(|s| *s) => return,
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
        let _t = admit(&self.h, Rpc::Bootstrap, &request)?;
        self.bootstrap_here(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn add_member(
        &self,
        request: Request<proto::Member>,
    ) -> Result<Response<proto::MembershipReply>, Status> {
        let _t = admit(&self.h, Rpc::AddMember, &request)?;
        self.on_coordinator()?;
        self.add_member_here(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::MembershipReply>, Status> {
        let _t = admit(&self.h, Rpc::RemoveMember, &request)?;
        self.on_coordinator()?;
        self.remove_member_here(request.into_inner().id)
            .await
            .map(Response::new)
    }

    async fn switchover(
        &self,
        request: Request<proto::SwitchoverRequest>,
    ) -> Result<Response<proto::SwitchoverReply>, Status> {
        let _t = admit(&self.h, Rpc::Switchover, &request)?;
        self.on_coordinator()?;
        self.switchover_here(request.into_inner().target)
            .await
            .map(Response::new)
    }

    async fn pause(
        &self,
        request: Request<proto::PauseRequest>,
    ) -> Result<Response<proto::CommandReply>, Status> {
        let _t = admit(&self.h, Rpc::Pause, &request)?;
        self.on_coordinator()?;
        self.set_paused(true).await.map(Response::new)
    }

    async fn resume(
        &self,
        request: Request<proto::ResumeRequest>,
    ) -> Result<Response<proto::CommandReply>, Status> {
        let _t = admit(&self.h, Rpc::Resume, &request)?;
        self.on_coordinator()?;
        self.set_paused(false).await.map(Response::new)
    }

    async fn fence(
        &self,
        request: Request<proto::FenceRequest>,
    ) -> Result<Response<proto::CommandReply>, Status> {
        let _t = admit(&self.h, Rpc::Fence, &request)?;
        self.on_coordinator()?;
        self.fence_here(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn touch(
        &self,
        request: Request<proto::TouchRequest>,
    ) -> Result<Response<proto::CommandReply>, Status> {
        let _t = admit(&self.h, Rpc::Touch, &request)?;
        self.on_coordinator()?;
        self.touch_here().await.map(Response::new)
    }
}

struct PeerApi {
    h: AgentHandle,
}

impl PeerApi {
    /// `to` is the node id the sender means (0: unspecified).
    fn check_peer(&self, from: NodeId, to: NodeId) -> Result<(), Status> {
        if to != 0 && to != self.h.id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {} (its data directory was replaced); it must be re-added",
                self.h.id, to
            )));
        }
        if self.h.peers.faults().is_isolated(from) {
            return Err(Status::unavailable(format!(
                "peer {from} is isolated by fault injection"
            )));
        }
        Ok(())
    }
}

impl PeerApi {
    /// What every Raft message shares: authorization, metrics, the sender and target check, the
    /// reply envelope. `rpc` is one of the four Raft RPCs (anything else is an append).
    async fn raft_message(
        &self,
        rpc: Rpc,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        let _t = admit(&self.h, rpc, &request)?;
        let m = request.into_inner();
        self.check_peer(m.from_id, m.to_id)?;
        let raft = &self.h.raft;
        let payload = match rpc {
            Rpc::Vote => raft.handle_vote(&m.payload).await,
            Rpc::PreVote => raft.handle_pre_vote(&m.payload).await,
            Rpc::InstallSnapshot => raft.handle_install_snapshot(&m.payload).await,
            _ => raft.handle_append_entries(&m.payload).await,
        }
        .map_err(raft_status)?;
        Ok(Response::new(proto::RaftMessage {
            from_id: self.h.id,
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
        self.raft_message(Rpc::AppendEntries, request).await
    }

    async fn vote(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        self.raft_message(Rpc::Vote, request).await
    }

    async fn pre_vote(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        self.raft_message(Rpc::PreVote, request).await
    }

    async fn install_snapshot(
        &self,
        request: Request<proto::RaftMessage>,
    ) -> Result<Response<proto::RaftMessage>, Status> {
        self.raft_message(Rpc::InstallSnapshot, request).await
    }

    async fn report(
        &self,
        request: Request<proto::MemberReport>,
    ) -> Result<Response<proto::ReportReply>, Status> {
        let _t = admit(&self.h, Rpc::Report, &request)?;
        let r = request.into_inner();
        self.check_peer(r.from_id, 0)?;
        let decision = self
            .h
            .report(r.from_id, MemberReport::from(&r))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let view = if decision.accepted {
            Some(self.h.group_state().await)
        } else {
            None
        };
        let leader = self
            .h
            .core()
            .raft()
            .leader_node()
            .map(|(id, n)| proto::MemberRef {
                id,
                name: n.name,
                address: n.address,
            });
        Ok(Response::new(proto::ReportReply {
            accepted: decision.accepted,
            leader,
            grant: decision.grant.map(proto::LeaseGrant::from),
            demote: decision.demote,
            view,
            position_wanted: decision.position_wanted,
            report_soon: decision.report_soon,
        }))
    }

    async fn demote(
        &self,
        request: Request<proto::DemoteRequest>,
    ) -> Result<Response<proto::DemoteReply>, Status> {
        let _t = admit(&self.h, Rpc::Demote, &request)?;
        let r = request.into_inner();
        self.check_peer(r.from_id, 0)?;
        self.h
            .demote(r.epoch)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::DemoteReply { released: true }))
    }

    async fn inject_fault(
        &self,
        request: Request<proto::FaultRequest>,
    ) -> Result<Response<proto::FaultReply>, Status> {
        let _t = admit(&self.h, Rpc::InjectFault, &request)?;
        if !self.h.settings.enable_fault_injection {
            return Err(Status::permission_denied(
                "fault injection is disabled on this agent",
            ));
        }
        let request = request.into_inner();
        let ids: BTreeSet<NodeId> = request.isolate_from.into_iter().collect();
        let unreachable: BTreeSet<NodeId> = request.unreachable.into_iter().collect();
        tracing::warn!(?ids, ?unreachable, "fault injection: isolating peers");
        self.h.peers.faults().set_isolated(ids);
        self.h.peers.faults().set_unreachable(unreachable);
        Ok(Response::new(proto::FaultReply {}))
    }
}
