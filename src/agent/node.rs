//! The agent runtime: one task owns the [`AgentCore`], feeds it what happens (Raft status,
//! applied state, health, answers, peers' requests, its one timer) and carries out the effects
//! it returns. Every effect that waits on the network or the workload runs in a task of its own
//! and comes back as an input, so the core task never blocks: a lease runs out on time even
//! while a report or a callback hangs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::clock::{monotonic_millis, unix_millis};
use super::config::AgentSettings;
use super::core::{AgentCore, CoreSettings, Effect, Input, Now, Reply, ReplyTo, ReportAnswer};
use super::group::{CommandOutcome, GroupCommand, GroupConfig, NodeId};
use super::handle::{AgentHandle, Request};
use super::health::HealthStatus;
use super::lease::{DemotionCause, LeaseTransition};
use super::metrics::{CauseLabels, Metrics};
use super::raft::{self, Faults, Peers, RaftNode, RaftNodeError};
use super::role::{RolePublisher, TransitionLine, TransitionLog};
use super::{proto, timing, wire};
use crate::api::MemberRole;

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

/// A running agent.
pub struct Agent {
    handle: AgentHandle,
    stopping: watch::Sender<bool>,
    /// Held until the process exits: no second agent process on this data directory.
    _data_dir_lock: raft::DataDirLock,
}

fn now() -> Now {
    Now {
        mono: monotonic_millis(),
        unix: unix_millis(),
    }
}

impl Agent {
    /// Opens the data directory, starts Raft and the core task, and serves gRPC and HTTP.
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
        let core = AgentCore::new(
            CoreSettings {
                id,
                member: settings.member.clone(),
                advertise: settings.advertise.clone(),
                witness: settings.witness,
                priority: settings.priority,
                initial_config: GroupConfig {
                    mode: settings.mode,
                    lease_millis: settings.lease_millis,
                    max_failovers_per_hour: settings.max_failovers_per_hour,
                },
                supervised: settings.supervised && !settings.witness,
            },
            health.borrow().clone(),
            now(),
        );
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::new());
        let (stopping, stopping_rx) = watch::channel(false);
        let (requests_tx, requests) = mpsc::channel(64);
        let (view_tx, view) = watch::channel(Arc::new(core.clone()));
        let (changes_tx, changes) = watch::channel(0);
        let (inputs_tx, inputs) = mpsc::unbounded_channel();
        let publisher = spawn_publisher(
            RolePublisher::new(settings.publisher.clone()),
            inputs_tx.clone(),
        );
        if let Some(log) = &transitions {
            log.record(&TransitionLine {
                member: settings.member.clone(),
                node_id: id,
                event: "start".into(),
                epoch: raft.applied().borrow().state.epoch,
                mono_ms: monotonic_millis(),
                wall_ms: unix_millis(),
                lease_until_mono_ms: 0,
                cause: None,
            });
        }
        let handle = AgentHandle {
            settings: settings.clone(),
            id,
            raft: raft.clone(),
            peers: peers.clone(),
            metrics: metrics.clone(),
            requests: requests_tx,
            view,
            changes,
            stopping: stopping_rx.clone(),
        };
        let runtime = Runtime {
            core,
            raft,
            peers,
            metrics,
            transitions,
            publisher,
            inputs_tx,
            view: view_tx,
            changes: changes_tx,
            replies: HashMap::new(),
            next_reply: 0,
            shutdown_waiter: None,
            settings: settings.clone(),
        };
        tokio::spawn(runtime.run(requests, inputs, health, stopping_rx));
        super::server::spawn_grpc(handle.clone(), grpc_listener)?;
        super::http::spawn_http(handle.clone(), http_listener);
        Ok(Agent {
            handle,
            stopping,
            _data_dir_lock: data_dir_lock,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.handle.id
    }

    /// Graceful stop: stop being appointable, hand the primary role off, leave.
    pub async fn shutdown(&self) {
        if self.handle.shutdown().await.is_err() {
            tracing::warn!("the agent's core stopped before the hand-off finished");
        }
        self.stopping.send_replace(true);
        self.handle.raft.shutdown().await;
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

/// Serializes role publications; a newer request supersedes one still queued.
fn spawn_publisher(
    publisher: RolePublisher,
    inputs: mpsc::UnboundedSender<Input>,
) -> watch::Sender<(u64, MemberRole, u64)> {
    let (tx, mut rx) = watch::channel((0, MemberRole::Unknown, 0));
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let (seq, role, epoch) = *rx.borrow_and_update();
            if let Err(e) = publisher.publish(role, epoch).await {
                tracing::warn!(error = %e, "publishing the role failed");
            }
            if inputs.send(Input::Published { seq }).is_err() {
                return;
            }
        }
    });
    tx
}

/// Who waits for an answer from the core.
enum Waiter {
    Report(oneshot::Sender<super::coordinator::ReportDecision>),
    Demote(oneshot::Sender<()>),
}

struct Runtime {
    core: AgentCore,
    settings: Arc<AgentSettings>,
    raft: RaftNode,
    peers: Arc<Peers>,
    metrics: Arc<Metrics>,
    transitions: Option<TransitionLog>,
    publisher: watch::Sender<(u64, MemberRole, u64)>,
    /// Where effect tasks send their outcome.
    inputs_tx: mpsc::UnboundedSender<Input>,
    view: watch::Sender<Arc<AgentCore>>,
    changes: watch::Sender<u64>,
    replies: HashMap<ReplyTo, Waiter>,
    next_reply: u64,
    shutdown_waiter: Option<oneshot::Sender<()>>,
}

impl Runtime {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut health: watch::Receiver<HealthStatus>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut status = self.raft.status_watch();
        let mut applied = self.raft.applied();
        let mut last_status = status.current();
        self.step(Input::Raft(last_status.clone()));
        self.step(Input::Applied(applied.borrow_and_update().clone()));
        loop {
            let wait = self.core.next_deadline().saturating_sub(monotonic_millis());
            let input = tokio::select! {
                Some(request) = requests.recv() => self.accept(request),
                Some(input) = inputs.recv() => input,
                changed = status.changed() => {
                    if !changed {
                        return;
                    }
                    // openraft republishes its metrics on every heartbeat answer; only what the
                    // agent reads from them is news (reacting to each woke everything thousands
                    // of times a second).
                    let s = status.current();
                    if s == last_status {
                        continue;
                    }
                    last_status = s.clone();
                    Input::Raft(s)
                }
                changed = applied.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    Input::Applied(applied.borrow_and_update().clone())
                }
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    Input::Health(health.borrow_and_update().clone())
                }
                _ = tokio::time::sleep(Duration::from_millis(wait)) => Input::Tick,
                _ = stopping.wait_for(|s| *s) => return,
            };
            self.step(input);
        }
    }

    /// Turns a request into an input; the answer comes back as an effect.
    fn accept(&mut self, request: Request) -> Input {
        let reply = ReplyTo(self.next_reply);
        self.next_reply += 1;
        match request {
            Request::Report {
                from,
                report,
                answer,
            } => {
                self.replies.insert(reply, Waiter::Report(answer));
                Input::PeerReport {
                    from,
                    report,
                    reply,
                }
            }
            Request::Demote { epoch, answer } => {
                self.replies.insert(reply, Waiter::Demote(answer));
                Input::DemoteRequested { epoch, reply }
            }
            Request::Shutdown { done } => {
                self.shutdown_waiter = Some(done);
                Input::Shutdown
            }
            Request::Workload(report) => Input::Workload(report),
        }
    }

    fn step(&mut self, input: Input) {
        let effects = self.core.handle(input, now());
        for effect in effects {
            self.perform(effect);
        }
        self.view.send_replace(Arc::new(self.core.clone()));
        let revision = self.core.revision();
        self.changes.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        let core = &self.core;
        let (role, epoch) = core.role_at(monotonic_millis());
        self.metrics.set_role(role.as_str());
        self.metrics.epoch.set(epoch as i64);
        self.metrics.term.set(core.raft().term as i64);
        self.metrics
            .is_coordinator
            .set(i64::from(core.raft().is_leader));
    }

    fn perform(&mut self, effect: Effect) {
        let lease = self.core.lease_millis();
        match effect {
            Effect::SendReport {
                to,
                address,
                report,
                sent_at,
            } => {
                let (peers, inputs, id) =
                    (self.peers.clone(), self.inputs_tx.clone(), self.core.id());
                let timeout = Duration::from_millis(timing::report_interval_millis(lease));
                tokio::spawn(async move {
                    let answer = match report_to(&peers, id, to, &address, &report, timeout).await {
                        Ok(a) => Some(a),
                        Err(e) => {
                            tracing::debug!(leader = to, error = %e, "report to the coordinator failed");
                            None
                        }
                    };
                    let _ = inputs.send(Input::ReportAnswered { sent_at, answer });
                });
            }
            Effect::ConfirmQuorum { term } => {
                let (raft, inputs) = (self.raft.clone(), self.inputs_tx.clone());
                let timeout = Duration::from_millis(lease / 2);
                tokio::spawn(async move {
                    let sent_at = monotonic_millis();
                    let confirmed = matches!(
                        tokio::time::timeout(timeout, raft.confirm_quorum()).await,
                        Ok(Ok(()))
                    );
                    let _ = inputs.send(Input::QuorumConfirmed {
                        term,
                        sent_at,
                        confirmed,
                    });
                });
            }
            Effect::Propose(command) => {
                let (raft, inputs, metrics) = (
                    self.raft.clone(),
                    self.inputs_tx.clone(),
                    self.metrics.clone(),
                );
                tokio::spawn(async move {
                    tracing::info!(?command, "coordinator proposes");
                    let reason = appointment_reason(&command);
                    let result = raft.propose(command).await;
                    let succeeded = result.is_ok();
                    match result {
                        Ok((index, outcome)) => {
                            tracing::debug!(index, ?outcome, "proposal applied");
                            raft.broadcast_commit().await;
                            if let (Some(cause), CommandOutcome::Applied) = (reason, outcome) {
                                metrics
                                    .failovers
                                    .get_or_create(&CauseLabels { cause })
                                    .inc();
                            }
                        }
                        Err(e) => tracing::info!(error = %e, "proposal failed"),
                    }
                    let applied = raft.applied().borrow().clone();
                    let _ = inputs.send(Input::ProposalDone { applied, succeeded });
                });
            }
            Effect::RequestDemotion {
                member,
                address,
                epoch,
            } => {
                let (peers, inputs, id) =
                    (self.peers.clone(), self.inputs_tx.clone(), self.core.id());
                let timeout = Duration::from_millis(lease);
                tokio::spawn(async move {
                    let released =
                        request_demotion(&peers, id, member, &address, epoch, timeout).await;
                    let _ = inputs.send(Input::DemotionAnswered {
                        member,
                        epoch,
                        released,
                    });
                });
            }
            Effect::PublishRole { seq, role, epoch } => {
                self.publisher.send_replace((seq, role, epoch));
            }
            Effect::AllowElections(allowed) => self.raft.allow_elections(allowed),
            Effect::RaftHeartbeats(enabled) => {
                tracing::info!(
                    enabled,
                    "{}",
                    if enabled {
                        "Raft heartbeats on"
                    } else {
                        "the primary leads Raft: stepping aside (heartbeats off until another voter is elected)"
                    }
                );
                self.raft.set_heartbeats(enabled);
            }
            Effect::Transition(t) => self.record(t),
            Effect::Reply { to, reply } => match (self.replies.remove(&to), reply) {
                (Some(Waiter::Report(tx)), Reply::Report(decision)) => {
                    let _ = tx.send(decision);
                }
                (Some(Waiter::Demote(tx)), Reply::Demoted) => {
                    let _ = tx.send(());
                }
                (waiter, reply) => {
                    tracing::error!(
                        ?to,
                        ?reply,
                        known = waiter.is_some(),
                        "an answer that matches no request"
                    );
                }
            },
            Effect::ShutdownDone => {
                if let Some(done) = self.shutdown_waiter.take() {
                    let _ = done.send(());
                }
            }
        }
    }

    /// A lease transition: logs, the transition log, metrics.
    fn record(&self, t: LeaseTransition) {
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
                node_id: self.core.id(),
                event: event.into(),
                epoch,
                mono_ms: monotonic_millis(),
                wall_ms: unix_millis(),
                lease_until_mono_ms: until,
                cause,
            });
        }
    }
}

/// The failover counter's label for an appointment (`Initial` for the first one).
fn appointment_reason(command: &GroupCommand) -> Option<String> {
    match command {
        GroupCommand::Appoint {
            failover: Some(f), ..
        } => Some(format!("{:?}", f.reason)),
        GroupCommand::Appoint { failover: None, .. } => Some("Initial".to_string()),
        _ => None,
    }
}

async fn report_to(
    peers: &Peers,
    from: NodeId,
    leader: NodeId,
    address: &str,
    report: &super::coordinator::MemberReport,
    timeout: Duration,
) -> Result<ReportAnswer, String> {
    let channel = peers.channel(leader, address).map_err(|e| e.to_string())?;
    let mut client = proto::peer_client::PeerClient::new(channel)
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES);
    let reply = tokio::time::timeout(timeout, client.report(wire::member_report(from, report)))
        .await
        .map_err(|_| {
            peers.timed_out(address);
            format!("no answer within {timeout:?}")
        })?
        .map_err(|s| s.to_string())?
        .into_inner();
    peers.answered(address);
    Ok(ReportAnswer {
        decision: (&reply).into(),
        view: reply.view,
    })
}

/// Asks `member` to release the lease of `epoch`; true when it confirmed.
async fn request_demotion(
    peers: &Peers,
    from: NodeId,
    member: NodeId,
    address: &str,
    epoch: u64,
    timeout: Duration,
) -> bool {
    let Ok(channel) = peers.channel(member, address) else {
        return false;
    };
    let mut client = proto::peer_client::PeerClient::new(channel);
    let request = proto::DemoteRequest {
        from_id: from,
        epoch,
    };
    match tokio::time::timeout(timeout, client.demote(request)).await {
        Ok(Ok(reply)) => {
            peers.answered(address);
            reply.get_ref().released
        }
        Ok(Err(e)) => {
            tracing::debug!(member, error = %e, "demotion request failed");
            false
        }
        Err(_) => {
            peers.timed_out(address);
            tracing::debug!(member, "demotion request timed out");
            false
        }
    }
}
