//! The agent's sans-IO core: one value that owns the coordinator, the member side (lease holder,
//! release, reports) and the role decisions, driven by `handle(input, now) -> effects` and
//! [`AgentCore::next_deadline`] (docs/agent.md *Runtime*).
//!
//! Like raft-rs's `RawNode`, the core never performs IO and never reads a clock: the runtime
//! (`agent::node`) feeds it what happened (Raft status, applied state, health, answers to the
//! RPCs it asked for, requests from peers, timers) and carries out the [`Effect`]s it returns.
//! The deterministic simulation (`tests/agent_sim.rs`) drives this same type with simulated
//! time, network and faults, so the wiring between report, grant, release and appointment that
//! runs in production is the wiring the simulation checks.

use super::coordinator::{
    Action, Coordinator, CoordinatorSettings, MemberReport, ReleaseReason, ReportDecision,
};
use super::group::{GroupCommand, GroupConfig, Mode, NodeId};
use super::health::HealthStatus;
use super::lease::{LeaseHolder, LeaseTransition};
use super::proto;
use super::raft::{AppliedState, RaftStatus};
use super::timing;
use crate::api::{HookKind, MemberRole};
use crate::supervisor::protocol::{AgentRole, Applied, WorkloadReport};

/// What the core knows about this member from its flags.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    pub id: NodeId,
    /// The member (pod) name.
    pub member: String,
    /// How peers reach this member (HOST:PORT).
    pub advertise: String,
    pub witness: bool,
    pub priority: u32,
    /// Proposed when the group has no configuration yet; its lease applies until one is committed.
    pub initial_config: GroupConfig,
    /// The workload runs under the supervisor (`spec.hooks`): it is healthy only while the
    /// supervisor reports so, and its reports carry the workload's position and hook outcomes.
    pub supervised: bool,
}

/// A supervisor that has not reported for this long counts as an unhealthy workload (it
/// reports every 200 ms).
pub const SUPERVISOR_STALE_MILLIS: u64 = 1000;

/// How long a member whose promote hook failed stays out of the candidates.
pub fn promote_failure_cooldown_millis(lease_millis: u64) -> u64 {
    (10 * lease_millis).max(10_000)
}

/// The two clocks of one instant: leases run on the monotonic one, records carry wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (`clock::monotonic_millis`).
    pub mono: u64,
    /// Unix milliseconds, for human-facing records only.
    pub unix: i64,
}

/// Names a pending answer to a peer's request; the runtime keeps the reply channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyTo(pub u64);

/// The coordinator's answer to this member's report, as received.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportAnswer {
    pub decision: ReportDecision,
    /// The coordinator's view of the group, relayed to members that do not coordinate.
    pub view: Option<proto::GroupState>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Raft's status changed (the runtime passes only real changes).
    Raft(RaftStatus),
    /// The locally applied group state changed.
    Applied(AppliedState),
    Health(HealthStatus),
    /// The supervisor's report (`POST /workload` on the loopback HTTP port).
    Workload(WorkloadReport),
    /// The deadline from [`AgentCore::next_deadline`] passed (or the runtime just woke up).
    Tick,
    /// The answer to [`Effect::SendReport`] (`None`: failed or not answered in time).
    ReportAnswered {
        sent_at: u64,
        answer: Option<ReportAnswer>,
    },
    /// The outcome of [`Effect::ConfirmQuorum`]: a heartbeat round sent at `sent_at`.
    QuorumConfirmed {
        term: u64,
        sent_at: u64,
        confirmed: bool,
    },
    /// A proposal of [`Effect::Propose`] finished; `applied` is the state right after it.
    ProposalDone {
        applied: AppliedState,
        succeeded: bool,
    },
    /// The answer to [`Effect::RequestDemotion`].
    DemotionAnswered {
        member: NodeId,
        epoch: u64,
        released: bool,
    },
    /// A member's report arrived (answered with [`Reply::Report`]).
    PeerReport {
        from: NodeId,
        report: MemberReport,
        reply: ReplyTo,
    },
    /// The coordinator asks this member to give back the lease of `epoch` (answered with
    /// [`Reply::Demoted`] once the workload was told).
    DemoteRequested {
        epoch: u64,
        reply: ReplyTo,
    },
    /// Every role publication up to [`Effect::PublishRole`]'s `seq` is done (file written,
    /// callback confirmed or timed out).
    Published {
        seq: u64,
    },
    /// Stop being appointable, hand the primary role off ([`Effect::ShutdownDone`] follows).
    Shutdown,
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Report to the coordinator `to` at `address`; answer with [`Input::ReportAnswered`].
    SendReport {
        to: NodeId,
        address: String,
        report: MemberReport,
        sent_at: u64,
    },
    /// Send a heartbeat round (leader of `term`); answer with [`Input::QuorumConfirmed`].
    ConfirmQuorum {
        term: u64,
    },
    /// Propose a command through Raft; answer with [`Input::ProposalDone`].
    Propose(GroupCommand),
    /// Ask the primary to release the lease of `epoch`; answer with [`Input::DemotionAnswered`].
    RequestDemotion {
        member: NodeId,
        address: String,
        epoch: u64,
    },
    /// Publish the role to the workload; publications are serialized and a newer one supersedes
    /// an older one still queued. Answer with [`Input::Published`].
    PublishRole {
        seq: u64,
        role: MemberRole,
        epoch: u64,
    },
    /// Allow or forbid this node to campaign for Raft leadership.
    AllowElections(bool),
    /// Turn Raft's periodic heartbeats (leader only) on or off: off while the primary steps
    /// aside from leadership, so that the followers' leader lease runs out and one of them is
    /// elected.
    RaftHeartbeats(bool),
    /// The lease changed (for logs, the transition log and metrics).
    Transition(LeaseTransition),
    Reply {
        to: ReplyTo,
        reply: Reply,
    },
    /// The graceful stop is complete: the runtime may stop Raft and exit.
    ShutdownDone,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Report(ReportDecision),
    Demoted,
}

/// A release a supervised workload has not confirmed yet: until it does, the coordinator is
/// told only of `prior` (it then waits for the lease to run out, which the supervisor fences
/// on its own), and demotion answers wait.
#[derive(Clone, Copy, Debug, PartialEq)]
struct UnconfirmedRelease {
    epoch: u64,
    /// The revision of the state that holds the release: a report that saw it or a later one
    /// tells the truth about the workload after the release.
    revision: u64,
    /// The released epoch the coordinator may know of meanwhile.
    prior: u64,
}

/// Waits on a role publication (and, when supervised, on the workload's confirmation).
#[derive(Clone, Debug, PartialEq)]
enum AfterPublish {
    /// Tell the coordinator about the release at once.
    Report,
    /// Answer a demotion request.
    ReplyDemoted(ReplyTo),
    /// This node coordinates and released its own lease for a switchover.
    CoordinatorReleased { epoch: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ShutdownStage {
    /// Waiting for the report that tells the coordinator this member leaves.
    Report,
    /// Released `epoch`: waiting (until `until`) for the hand-off to be committed, so that a
    /// coordinator on this node grants the new primary its first lease before it goes away.
    HandOff {
        epoch: u64,
        until: u64,
    },
    /// This node coordinates: waiting (until `until`) for the new primary's lease to be live.
    Grant {
        until: u64,
    },
    Done,
}

/// The coordinator's view relayed by the last report answer, with its receipt time.
#[derive(Clone, Debug, PartialEq)]
pub struct Relayed {
    pub at: u64,
    pub view: proto::GroupState,
}

/// The agent's state and decisions; see the module documentation.
#[derive(Clone, Debug)]
pub struct AgentCore {
    settings: CoreSettings,
    coordinator: Coordinator,
    holder: LeaseHolder,
    raft: RaftStatus,
    applied: AppliedState,
    health: HealthStatus,
    /// The supervisor's last report and when it came.
    workload: Option<(u64, WorkloadReport)>,
    /// The position round the coordinator last asked for.
    position_wanted: u64,
    /// A promote hook failed for this epoch: the member is no candidate until the instant.
    promote_failed: Option<(u64, u64)>,
    /// The workload's health as last judged (to notice changes that only time makes).
    workload_healthy_seen: bool,
    /// This process's start on the monotonic clock (`AgentRole::incarnation`).
    incarnation: u64,
    release_unconfirmed: Option<UnconfirmedRelease>,
    leaving: bool,
    release_reason: Option<ReleaseReason>,
    relayed: Option<Relayed>,
    /// When the next report is due; `report_now` makes it due at once.
    next_report_at: u64,
    report_now: bool,
    /// Send time of the report in flight.
    report_in_flight: Option<u64>,
    next_confirm_at: u64,
    confirm_in_flight: bool,
    /// After a failed proposal the coordinator waits this long (a refusal is immediate, so
    /// deciding again at once would spin).
    coordinator_quiet_until: u64,
    /// The last role publication asked for, and the highest one done.
    published: Option<(MemberRole, u64)>,
    publish_seq: u64,
    published_seq: u64,
    after_publish: Vec<(u64, AfterPublish)>,
    elections_allowed: bool,
    /// Since when this node, the primary and the Raft leader, stays silent (no heartbeats, no
    /// quorum rounds) so that another voter takes leadership.
    stepping_aside_since: Option<u64>,
    /// After a step-aside nobody took over, the next one waits until then.
    step_aside_not_before: u64,
    shutdown: Option<ShutdownStage>,
    /// Bumped when what the group-state snapshot shows may have changed (Watch streams).
    revision: u64,
    /// The time of the last input (monotonic ms).
    now: u64,
}

impl AgentCore {
    /// A core at start-up: nothing applied, no leader known, the workload not yet checked
    /// (`health`: the checker's initial status).
    pub fn new(settings: CoreSettings, health: HealthStatus, now: Now) -> Self {
        let healthy_at_start = health.healthy && !settings.supervised;
        let coordinator = Coordinator::new(CoordinatorSettings {
            id: settings.id,
            initial_config: settings.initial_config,
        });
        Self {
            settings,
            coordinator,
            holder: LeaseHolder::new(),
            raft: RaftStatus::default(),
            applied: AppliedState::default(),
            health,
            workload: None,
            position_wanted: 0,
            promote_failed: None,
            workload_healthy_seen: healthy_at_start,
            incarnation: now.mono.max(1),
            release_unconfirmed: None,
            leaving: false,
            release_reason: None,
            relayed: None,
            next_report_at: now.mono,
            report_now: false,
            report_in_flight: None,
            next_confirm_at: now.mono,
            confirm_in_flight: false,
            coordinator_quiet_until: 0,
            published: None,
            publish_seq: 0,
            published_seq: 0,
            after_publish: Vec::new(),
            elections_allowed: true,
            stepping_aside_since: None,
            step_aside_not_before: 0,
            shutdown: None,
            revision: 0,
            now: now.mono,
        }
    }

    /// Feeds one input at `now`; returns what the runtime must do, in order.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        let t = now.mono;
        self.now = t;
        match input {
            Input::Raft(status) => self.on_raft(status, t),
            Input::Applied(applied) => self.on_applied(applied, t, &mut out),
            Input::Health(health) => self.on_health(health, t, &mut out),
            Input::Workload(report) => self.on_workload(report, t, &mut out),
            Input::Tick => self.on_workload_health_change(t, &mut out),
            Input::ReportAnswered { sent_at, answer } => {
                self.report_in_flight = None;
                self.on_report_answer(sent_at, answer, t, &mut out);
            }
            Input::QuorumConfirmed {
                term,
                sent_at,
                confirmed,
            } => {
                self.confirm_in_flight = false;
                self.next_confirm_at =
                    t + timing::quorum_confirm_interval_millis(self.lease_millis());
                if confirmed {
                    self.coordinator.on_quorum_ack(term, sent_at);
                }
            }
            Input::ProposalDone { applied, succeeded } => {
                // The applied state may reach this node after the proposal's answer: take it
                // first, or the coordinator would decide on the state from before.
                self.on_applied(applied, t, &mut out);
                self.coordinator.on_proposal_done();
                if !succeeded {
                    self.coordinator_quiet_until = t + timing::PROPOSAL_RETRY_MILLIS;
                }
            }
            Input::DemotionAnswered {
                member,
                epoch,
                released,
            } => {
                if released {
                    self.coordinator
                        .on_released(member, epoch, ReleaseReason::Switchover);
                }
            }
            Input::PeerReport {
                from,
                report,
                reply,
            } => {
                let decision = if self.applied.roster.members.contains_key(&from) {
                    self.coordinator.on_report(t, from, report)
                } else {
                    ReportDecision::default()
                };
                self.revision += 1;
                out.push(Effect::Reply {
                    to: reply,
                    reply: Reply::Report(decision),
                });
            }
            Input::DemoteRequested { epoch, reply } => {
                self.on_demote_request(epoch, reply, t, &mut out)
            }
            Input::Published { seq } => self.on_published(seq, &mut out),
            Input::Shutdown => self.on_shutdown(t, &mut out),
        }
        self.settle(now, &mut out);
        out
    }

    /// The next instant (monotonic ms) something is due without any input: the runtime's only
    /// timer. Whatever was due at the last input has been done, so this is always later.
    pub fn next_deadline(&self) -> u64 {
        let mut next = if self.report_in_flight.is_some() {
            u64::MAX
        } else {
            self.next_report_at
        };
        if let Some(until) = self.holder.lease_until() {
            next = next.min(until);
        }
        if self.settings.supervised {
            // A supervisor report ages out, a promote failure's exclusion ends.
            if let Some((at, _)) = &self.workload
                && at + SUPERVISOR_STALE_MILLIS >= self.now
            {
                next = next.min(at + SUPERVISOR_STALE_MILLIS + 1);
            }
            if let Some((_, until)) = self.promote_failed
                && until > self.now
            {
                next = next.min(until);
            }
        }
        if self.raft.is_leader && !self.confirm_in_flight && self.stepping_aside_since.is_none() {
            next = next.min(self.next_confirm_at);
        }
        if let Some(since) = self.stepping_aside_since {
            next = next.min(since + timing::step_aside_window_millis(self.lease_millis()));
        }
        if self.coordinator.is_leader() {
            if self.now < self.coordinator_quiet_until {
                next = next.min(self.coordinator_quiet_until);
            } else if let Some(d) = self.coordinator.next_deadline(self.now) {
                next = next.min(d);
            }
        }
        if let Some(ShutdownStage::HandOff { until, .. } | ShutdownStage::Grant { until }) =
            self.shutdown
        {
            next = next.min(until);
        }
        next.max(self.now + 1)
    }

    // --- queries (the gRPC and HTTP layers read a published copy) -----------------------------

    pub fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    pub fn id(&self) -> NodeId {
        self.settings.id
    }

    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    pub fn raft(&self) -> &RaftStatus {
        &self.raft
    }

    pub fn applied(&self) -> &AppliedState {
        &self.applied
    }

    pub fn relayed(&self) -> Option<&Relayed> {
        self.relayed.as_ref()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// This node leads Raft and its coordinator is active: its soft state is first-hand.
    pub fn coordinating(&self) -> bool {
        self.raft.is_leader && self.coordinator.is_leader()
    }

    /// The group's lease once configured, the flag's until then.
    pub fn lease_millis(&self) -> u64 {
        self.applied
            .state
            .config
            .map_or(self.settings.initial_config.lease_millis, |c| {
                c.lease_millis
            })
    }

    /// The epoch of the lease this member holds, if it is live at `now`.
    pub fn live_epoch(&self, now: u64) -> Option<u64> {
        self.holder.live_epoch(now)
    }

    /// Millis left on this member's lease at `now` (0 when none).
    pub fn lease_remaining(&self, now: u64) -> u64 {
        self.holder.remaining(now)
    }

    /// The role this member acts in at `now`, and the epoch that goes with it. Judged against
    /// the clock when asked, so a copy of the core read later never shows an expired lease live.
    pub fn role_at(&self, now: u64) -> (MemberRole, u64) {
        let epoch = self.applied.state.epoch;
        if !self.applied.roster.members.contains_key(&self.settings.id) {
            return (MemberRole::Unknown, epoch);
        }
        if self.settings.witness {
            return (MemberRole::Witness, epoch);
        }
        let mode = self
            .applied
            .state
            .config
            .map_or(self.settings.initial_config.mode, |c| c.mode);
        if mode == Mode::ActiveActive {
            return (MemberRole::Active, epoch);
        }
        match self.holder.live_epoch(now) {
            Some(e) => (MemberRole::Primary, e),
            None => (MemberRole::Backup, epoch),
        }
    }

    // --- inputs --------------------------------------------------------------------------------

    fn on_raft(&mut self, status: RaftStatus, t: u64) {
        self.coordinator.on_raft_status(
            t,
            status.is_leader,
            status.term,
            status.leader_caught_up(),
        );
        if status.is_leader {
            self.coordinator.on_replication(status.replication.clone());
            if !self.raft.is_leader {
                // A new leader confirms its quorum at once: every grant rests on it.
                self.next_confirm_at = t;
            }
        }
        if status.leader != self.raft.leader {
            self.report_now = true;
        }
        self.raft = status;
        self.revision += 1;
    }

    fn on_applied(&mut self, applied: AppliedState, t: u64, out: &mut Vec<Effect>) {
        if applied == self.applied {
            return;
        }
        self.coordinator
            .on_applied(t, &applied.state, &applied.roster);
        let primary_is_me = applied.state.primary_id() == Some(self.settings.id);
        if let Some(tr) = self
            .holder
            .observe_committed(applied.state.epoch, primary_is_me, t)
        {
            out.push(Effect::Transition(tr));
        }
        if primary_is_me && self.holder.live_epoch(t) != Some(applied.state.epoch) {
            // Appointed: ask for the first lease right away.
            self.report_now = true;
        }
        self.applied = applied;
        self.revision += 1;
    }

    fn on_health(&mut self, health: HealthStatus, t: u64, out: &mut Vec<Effect>) {
        self.health = health;
        self.on_workload_health_change(t, out);
    }

    /// The workload's health may have changed (a check, a supervisor report, or time: a
    /// supervisor report ages out).
    fn on_workload_health_change(&mut self, t: u64, out: &mut Vec<Effect>) {
        let was = self.workload_healthy_seen;
        let healthy = self.workload_healthy_at(t);
        self.workload_healthy_seen = healthy;
        if was && !healthy && self.holder.is_live(t) {
            // An unhealthy primary hands off at once instead of waiting for its lease to end.
            self.release(ReleaseReason::WorkloadUnhealthy, None, t, out);
        }
        if was != healthy {
            self.report_now = true;
            self.revision += 1;
        }
    }

    fn on_workload(&mut self, report: WorkloadReport, t: u64, out: &mut Vec<Effect>) {
        let old_token = self.workload.as_ref().map_or(0, |(_, r)| r.position_token);
        let old_hooks = self.workload.as_ref().map(|(_, r)| r.hooks.clone());
        // A promote that failed for the epoch this member holds: give the epoch back, stay out
        // of the candidates for a while, and let the coordinator appoint the next one.
        if let Some(epoch) = self.holder.live_epoch(t)
            && report
                .hooks
                .iter()
                .any(|h| h.hook == HookKind::Promote && !h.ok && h.epoch == epoch)
            && self.promote_failed.is_none_or(|(e, _)| e != epoch)
        {
            self.promote_failed = Some((
                epoch,
                t + promote_failure_cooldown_millis(self.lease_millis()),
            ));
            self.workload = Some((t, report));
            self.workload_healthy_seen = false;
            self.release(ReleaseReason::WorkloadUnhealthy, None, t, out);
            self.report_now = true;
            self.revision += 1;
            return;
        }
        let fresh_position = report.position_token > old_token
            && report.position_token >= self.position_wanted
            && self.position_wanted > 0;
        if old_hooks.as_ref() != Some(&report.hooks) {
            self.report_now = true;
            self.revision += 1;
        }
        if let Some(r) = self.release_unconfirmed
            && report.shows_released(r.epoch, self.incarnation, r.revision)
        {
            self.release_unconfirmed = None;
            self.report_now = true;
            self.revision += 1;
        }
        self.workload = Some((t, report));
        if fresh_position {
            self.report_now = true;
        }
        self.flush_after_publish(out);
        self.on_workload_health_change(t, out);
    }

    fn on_report_answer(
        &mut self,
        sent_at: u64,
        answer: Option<ReportAnswer>,
        t: u64,
        out: &mut Vec<Effect>,
    ) {
        let mut granted = false;
        let mut answer_asks_soon = false;
        if let Some(ReportAnswer { decision, view }) = answer {
            answer_asks_soon = decision.accepted && decision.report_soon;
            if let Some(view) = view {
                self.relayed = Some(Relayed { at: t, view });
                self.revision += 1;
            }
            if decision.accepted {
                if decision.position_wanted != self.position_wanted {
                    self.position_wanted = decision.position_wanted;
                    self.revision += 1;
                }
                if let Some(grant) = decision.grant {
                    granted = true;
                    for tr in [self.holder.tick(t), self.holder.on_grant(sent_at, grant, t)]
                        .into_iter()
                        .flatten()
                    {
                        out.push(Effect::Transition(tr));
                    }
                }
                if decision.demote {
                    self.release(ReleaseReason::Switchover, None, t, out);
                }
            }
        }
        // A primary whose report brought no grant (no coordinator known, a new coordinator not
        // ready yet, a lost answer) asks again after the short renewal retry instead of a whole
        // report interval: a coordinator change must not cost it its lease. A member the
        // coordinator asks to report soon (a vacancy chosen by workload position is near) does
        // the same, so that the position round reaches it at once.
        let lease = self.lease_millis();
        let report_soon = answer_asks_soon || (!granted && self.wants_lease(t));
        self.next_report_at = t + if report_soon {
            timing::renewal_retry_millis(lease)
        } else {
            timing::report_interval_millis(lease)
        };
        // The answer that ends a shutdown is the one to the report saying this member leaves
        // (a report already in flight when the shutdown began did not say so).
        if self.shutdown == Some(ShutdownStage::Report) && !self.report_now {
            self.finish_shutdown(out);
        }
    }

    fn on_demote_request(&mut self, epoch: u64, reply: ReplyTo, t: u64, out: &mut Vec<Effect>) {
        if epoch < self.applied.state.epoch {
            // That epoch is over already; nothing to give back.
            out.push(Effect::Reply {
                to: reply,
                reply: Reply::Demoted,
            });
            return;
        }
        let holds = self.holder.held_epoch().is_some_and(|e| e <= epoch);
        let appointed = self.applied.state.primary_id() == Some(self.settings.id);
        if (holds || appointed)
            && self
                .release(
                    ReleaseReason::Switchover,
                    Some(AfterPublish::ReplyDemoted(reply)),
                    t,
                    out,
                )
                .is_some()
        {
            return;
        }
        // Nothing held: still refuse grants for that epoch from now on.
        if let Some(tr) = self.holder.release(epoch, t) {
            out.push(Effect::Transition(tr));
        }
        out.push(Effect::Reply {
            to: reply,
            reply: Reply::Demoted,
        });
    }

    fn on_published(&mut self, seq: u64, out: &mut Vec<Effect>) {
        self.published_seq = self.published_seq.max(seq);
        self.flush_after_publish(out);
    }

    /// Runs what waited for the role publications done so far, once a supervised workload
    /// confirmed the release they carry (answering a demotion earlier would let the next
    /// primary start while this workload still accepts writes).
    fn flush_after_publish(&mut self, out: &mut Vec<Effect>) {
        if self.release_unconfirmed.is_some() {
            return;
        }
        let done = self.published_seq;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.after_publish)
            .into_iter()
            .partition(|(s, _)| *s <= done);
        self.after_publish = waiting;
        for (_, after) in ready {
            match after {
                AfterPublish::Report => self.report_now = true,
                AfterPublish::ReplyDemoted(to) => out.push(Effect::Reply {
                    to,
                    reply: Reply::Demoted,
                }),
                AfterPublish::CoordinatorReleased { epoch } => {
                    let id = self.settings.id;
                    self.coordinator
                        .on_released(id, epoch, ReleaseReason::Switchover);
                }
            }
        }
    }

    fn on_shutdown(&mut self, t: u64, out: &mut Vec<Effect>) {
        if self.shutdown.is_some() {
            return;
        }
        self.leaving = true;
        self.revision += 1;
        match self.release(ReleaseReason::Shutdown, None, t, out) {
            Some(epoch) => {
                self.shutdown = Some(ShutdownStage::HandOff {
                    epoch,
                    until: t + 2 * self.lease_millis(),
                });
            }
            None => {
                self.shutdown = Some(ShutdownStage::Report);
                self.report_now = true;
            }
        }
    }

    // --- decisions -----------------------------------------------------------------------------

    /// Gives the lease back (if this member holds or was appointed for one): demote, publish the
    /// new role, and once the workload was told, report at once (and run `after`). Returns the
    /// released epoch.
    fn release(
        &mut self,
        reason: ReleaseReason,
        after: Option<AfterPublish>,
        t: u64,
        out: &mut Vec<Effect>,
    ) -> Option<u64> {
        let committed_mine = (self.applied.state.primary_id() == Some(self.settings.id))
            .then_some(self.applied.state.epoch);
        let epoch = self.holder.held_epoch().max(committed_mine)?;
        let prior = self.holder.released_epoch();
        if let Some(tr) = self.holder.release(epoch, t) {
            out.push(Effect::Transition(tr));
        }
        self.release_reason = Some(reason);
        self.revision += 1;
        if self.settings.supervised {
            self.release_unconfirmed = Some(UnconfirmedRelease {
                epoch,
                revision: self.revision,
                prior: self.release_unconfirmed.map_or(prior, |r| r.prior),
            });
        }
        let (role, role_epoch) = self.role_at(t);
        let seq = self.publish(role, role_epoch, out);
        self.after_publish.push((seq, AfterPublish::Report));
        if let Some(a) = after {
            self.after_publish.push((seq, a));
        }
        Some(epoch)
    }

    fn publish(&mut self, role: MemberRole, epoch: u64, out: &mut Vec<Effect>) -> u64 {
        self.publish_seq += 1;
        self.published = Some((role, epoch));
        out.push(Effect::PublishRole {
            seq: self.publish_seq,
            role,
            epoch,
        });
        self.publish_seq
    }

    /// This member holds the primary lease, or is the committed primary waiting for its first
    /// one (and has not given it back): a report without a grant must be retried soon.
    fn wants_lease(&self, t: u64) -> bool {
        if self.leaving {
            return false;
        }
        self.holder.is_live(t)
            || (self.applied.state.primary_id() == Some(self.settings.id)
                && self.applied.state.epoch > self.holder.released_epoch())
    }

    fn build_report(&self, t: u64) -> MemberReport {
        let workload = self.fresh_workload(t);
        MemberReport {
            workload_healthy: self.settings.witness || self.workload_healthy_at(t),
            load: self.health.load,
            latency_ms: self.health.latency_ms,
            applied_index: self.raft.applied_index,
            priority: self.settings.priority,
            released_epoch: self.reported_released_epoch(),
            release_reason: self.release_reason,
            leaving: self.leaving,
            workload_position: workload.and_then(|r| r.position),
            position_token: workload.map_or(0, |r| r.position_token),
            workload_message: self.workload_message(t),
            hooks: self
                .workload
                .as_ref()
                .map(|(_, r)| r.hooks.clone())
                .unwrap_or_default(),
        }
    }

    /// The released epoch the coordinator may rely on: a supervised workload's release counts
    /// once the supervisor confirmed it.
    fn reported_released_epoch(&self) -> u64 {
        match self.release_unconfirmed {
            Some(r) => r.prior,
            None => self.holder.released_epoch(),
        }
    }

    /// The supervisor's report if it is recent enough to count.
    fn fresh_workload(&self, t: u64) -> Option<&WorkloadReport> {
        self.workload
            .as_ref()
            .filter(|(at, _)| t.saturating_sub(*at) <= SUPERVISOR_STALE_MILLIS)
            .map(|(_, r)| r)
    }

    /// The workload counts as healthy at `t`: its check passes and, when supervised, a recent
    /// supervisor report says so, it has a position when one is declared (a report with a
    /// position error has none) and no promote failed recently.
    pub fn workload_healthy_at(&self, t: u64) -> bool {
        if !self.health.healthy {
            return false;
        }
        if !self.settings.supervised {
            return true;
        }
        let Some(r) = self.fresh_workload(t) else {
            return false;
        };
        r.healthy
            && r.position_error.is_empty()
            && !matches!(r.applied, Applied::Fenced { .. })
            && self.promote_failed.is_none_or(|(_, until)| t >= until)
    }

    /// Why the workload is not healthy or not a candidate, in words (empty when it is).
    pub fn workload_message(&self, t: u64) -> String {
        if !self.health.healthy {
            return "the workload's health check fails".to_owned();
        }
        if !self.settings.supervised {
            return String::new();
        }
        if let Some((epoch, until)) = self.promote_failed
            && t < until
        {
            return format!(
                "the promote hook failed for epoch {epoch}; not a candidate for {} s",
                (until - t).div_ceil(1000)
            );
        }
        match self.fresh_workload(t) {
            None => format!(
                "no report from the supervisor for {} ms: start the workload under /run/quorate/bin/quorate-run",
                SUPERVISOR_STALE_MILLIS
            ),
            Some(r) if !r.position_error.is_empty() => r.position_error.clone(),
            Some(r) if !r.healthy => r.health_message.clone(),
            Some(_) => String::new(),
        }
    }

    /// The position round the coordinator asked for last (the supervisor reads it).
    pub fn position_wanted(&self) -> u64 {
        self.position_wanted
    }

    /// The `/role` answer at `now`, as the supervisor reads it.
    pub fn agent_role(&self, now: u64) -> AgentRole {
        let (role, epoch) = self.role_at(now);
        let primary = self.primary_to_follow(now);
        AgentRole {
            member: self.settings.member.clone(),
            role,
            epoch,
            lease_until_mono_millis: self.lease_until(now),
            primary: primary.as_ref().map(|(name, _)| name.clone()),
            primary_host: primary.map(|(_, host)| host),
            position_wanted: self.position_wanted,
            mono_millis: now,
            incarnation: self.incarnation,
            revision: self.revision,
        }
    }

    /// End of this member's lease on the monotonic clock, while it holds one.
    pub fn lease_until(&self, now: u64) -> Option<u64> {
        self.holder.live_epoch(now)?;
        self.holder.lease_until()
    }

    /// The primary this member follows: the committed one, unless that is this member without
    /// a live lease (it gave the role back and waits for the next appointment).
    pub fn primary_to_follow(&self, now: u64) -> Option<(String, String)> {
        let primary = self.applied.state.primary.as_ref()?;
        if primary.id == self.settings.id && self.holder.live_epoch(now).is_none() {
            return None;
        }
        let entry = self.applied.roster.members.get(&primary.id)?;
        let host = entry
            .node
            .address
            .rsplit_once(':')
            .map_or(entry.node.address.as_str(), |(h, _)| h);
        Some((primary.name.clone(), host.to_owned()))
    }

    fn send_report(&mut self, t: u64, out: &mut Vec<Effect>) {
        self.report_now = false;
        let report = self.build_report(t);
        match self.raft.leader {
            Some(leader) if leader == self.settings.id => {
                let decision = self.coordinator.on_report(t, leader, report);
                self.revision += 1;
                let answer = ReportAnswer {
                    decision,
                    view: None,
                };
                self.on_report_answer(t, Some(answer), t, out);
            }
            Some(leader) => match self.raft.members.get(&leader) {
                Some(node) => {
                    self.report_in_flight = Some(t);
                    out.push(Effect::SendReport {
                        to: leader,
                        address: node.address.clone(),
                        report,
                        sent_at: t,
                    });
                }
                None => self.on_report_answer(t, None, t, out),
            },
            None => self.on_report_answer(t, None, t, out),
        }
    }

    /// Everything that is due at `now`, after any input.
    fn settle(&mut self, now: Now, out: &mut Vec<Effect>) {
        let t = now.mono;
        if let Some(tr) = self.holder.tick(t) {
            out.push(Effect::Transition(tr));
        }
        if self.coordinator.is_leader() && t >= self.coordinator_quiet_until {
            let actions = self.coordinator.tick(t, now.unix);
            for action in actions {
                match action {
                    Action::Propose(command) => out.push(Effect::Propose(command)),
                    Action::RequestDemotion { member, epoch } if member == self.settings.id => {
                        self.release(
                            ReleaseReason::Switchover,
                            Some(AfterPublish::CoordinatorReleased { epoch }),
                            t,
                            out,
                        );
                    }
                    Action::RequestDemotion { member, epoch } => {
                        if let Some(entry) = self.applied.roster.members.get(&member) {
                            out.push(Effect::RequestDemotion {
                                member,
                                address: entry.node.address.clone(),
                                epoch,
                            });
                        }
                    }
                }
            }
        }
        // Before the quorum round: a step-aside that ends now resumes them at once.
        let must_not_lead = self.holder.is_live(t) && self.raft.voters.len() >= 3;
        self.step_aside(t, must_not_lead, out);
        if self.raft.is_leader
            && !self.confirm_in_flight
            && self.stepping_aside_since.is_none()
            && t >= self.next_confirm_at
        {
            self.confirm_in_flight = true;
            out.push(Effect::ConfirmQuorum {
                term: self.raft.term,
            });
        }
        // This member's own coordinator started a position round: learn it now, not at the
        // next report.
        if self.coordinator.is_leader()
            && self.coordinator.position_wanted() != self.position_wanted
        {
            self.report_now = true;
        }
        if self.report_in_flight.is_none() && (self.report_now || t >= self.next_report_at) {
            self.send_report(t, out);
        }
        let role = self.role_at(t);
        if self.published != Some(role) {
            self.publish(role.0, role.1, out);
            self.revision += 1;
        }
        // The primary stays out of Raft leadership (a crash of both would cost an election on
        // top of the lease), unless too few voters exist for anyone else to lead.
        let allow = !(self.holder.is_live(t) && self.raft.voters.len() >= 3);
        if allow != self.elections_allowed {
            self.elections_allowed = allow;
            out.push(Effect::AllowElections(allow));
        }
        // Again: the report above may have brought this node its lease.
        self.step_aside(t, !allow, out);
        self.advance_shutdown(t, out);
    }

    /// A primary that leads Raft (a switchover to the coordinator, or it was the only candidate
    /// left) steps aside: a loss of its node would otherwise cost an election before the
    /// lease's wait. openraft 0.9 has no leadership transfer, so it goes silent — no
    /// heartbeats, no quorum rounds — until the followers' leader lease runs out and one of
    /// them is elected (it votes for it: its own lease is undefended without quorum rounds).
    /// Its lease, counted from the last quorum round, outlasts the election (`timing`). If
    /// nobody took over within the window it leads normally again and tries later.
    fn step_aside(&mut self, t: u64, must_not_lead: bool, out: &mut Vec<Effect>) {
        let lease = self.lease_millis();
        match self.stepping_aside_since {
            Some(since) => {
                let done = !self.raft.is_leader || !must_not_lead;
                let gave_up = t >= since + timing::step_aside_window_millis(lease);
                if done || gave_up {
                    self.stepping_aside_since = None;
                    if gave_up && !done {
                        self.step_aside_not_before = t + timing::step_aside_retry_millis(lease);
                    }
                    out.push(Effect::RaftHeartbeats(true));
                }
            }
            None => {
                if self.raft.is_leader
                    && must_not_lead
                    && self.shutdown.is_none()
                    && t >= self.step_aside_not_before
                {
                    self.stepping_aside_since = Some(t);
                    out.push(Effect::RaftHeartbeats(false));
                }
            }
        }
    }

    fn advance_shutdown(&mut self, t: u64, out: &mut Vec<Effect>) {
        if let Some(ShutdownStage::HandOff { epoch, until }) = self.shutdown
            && (self.applied.state.epoch > epoch || t >= until)
        {
            if self.raft.is_leader {
                self.shutdown = Some(ShutdownStage::Grant {
                    until: t + self.lease_millis(),
                });
            } else {
                self.finish_shutdown(out);
            }
        }
        if let Some(ShutdownStage::Grant { until }) = self.shutdown {
            let (status, _) = self.coordinator.lease_status(t);
            if status == super::coordinator::LeaseStatus::Live || t >= until {
                self.finish_shutdown(out);
            }
        }
    }

    fn finish_shutdown(&mut self, out: &mut Vec<Effect>) {
        if self.shutdown != Some(ShutdownStage::Done) {
            self.shutdown = Some(ShutdownStage::Done);
            out.push(Effect::ShutdownDone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::coordinator::LeaseStatus;
    use crate::agent::group::{MemberNode, ReplicatedState, Roster, RosterEntry};
    use crate::agent::lease::{DemotionCause, Grant};

    const LEASE: u64 = 1000;

    fn config() -> GroupConfig {
        GroupConfig {
            mode: Mode::PrimaryBackup,
            lease_millis: LEASE,
            max_failovers_per_hour: 100,
        }
    }

    fn roster() -> Roster {
        let mut r = Roster::default();
        for id in [1, 2, 3] {
            r.members.insert(
                id,
                RosterEntry {
                    node: MemberNode {
                        name: format!("m-{id}"),
                        address: format!("m-{id}:7470"),
                        witness: false,
                    },
                    voter: true,
                },
            );
        }
        r
    }

    /// A configured group whose primary is `primary` at `epoch` (0: none yet).
    fn applied(primary: Option<NodeId>, epoch: u64) -> AppliedState {
        let mut state = ReplicatedState::default();
        state.apply(&GroupCommand::Configure(config()));
        if let Some(p) = primary {
            for e in 1..=epoch {
                state.apply(&GroupCommand::Appoint {
                    member: roster().member_name(p),
                    epoch: e,
                    failover: None,
                });
            }
        }
        AppliedState {
            state,
            roster: roster(),
            applied_index: 3,
            applied_term: 1,
        }
    }

    fn raft(id: NodeId, leader: NodeId) -> RaftStatus {
        let r = roster();
        RaftStatus {
            id,
            term: 1,
            is_leader: id == leader,
            leader: Some(leader),
            last_log_index: 3,
            applied_index: 3,
            applied_term: 1,
            voters: r.members.keys().copied().collect(),
            members: r
                .members
                .iter()
                .map(|(i, e)| (*i, e.node.clone()))
                .collect(),
            in_membership: true,
            ..RaftStatus::default()
        }
    }

    fn at(mono: u64) -> Now {
        Now {
            mono,
            unix: 1_700_000_000_000 + mono as i64,
        }
    }

    fn core(id: NodeId) -> AgentCore {
        core_with(id, false)
    }

    fn core_with(id: NodeId, supervised: bool) -> AgentCore {
        AgentCore::new(
            CoreSettings {
                id,
                member: format!("m-{id}"),
                advertise: format!("m-{id}:7470"),
                witness: false,
                priority: 50,
                initial_config: config(),
                supervised,
            },
            HealthStatus::unchecked_healthy(),
            at(0),
        )
    }

    /// A supervisor's report that saw `seen` (an answer of `c`'s) and says the workload is
    /// (being made) primary under `primary_epoch`.
    fn workload(seen: &AgentRole, primary_epoch: Option<u64>) -> WorkloadReport {
        WorkloadReport {
            healthy: true,
            health_message: String::new(),
            position: None,
            position_token: 0,
            position_error: String::new(),
            applied: match primary_epoch {
                Some(epoch) => Applied::Primary { epoch },
                None => Applied::Backup {
                    epoch: 1,
                    primary: String::new(),
                },
            },
            hooks: Vec::new(),
            primary_epoch,
            role_seen_incarnation: seen.incarnation,
            role_seen_revision: seen.revision,
            exited: false,
        }
    }

    fn reported_release(effects: &[Effect]) -> Option<u64> {
        effects.iter().find_map(|e| match e {
            Effect::SendReport { report, .. } => Some(report.released_epoch),
            _ => None,
        })
    }

    fn demoted(effects: &[Effect]) -> bool {
        effects.iter().any(|e| {
            matches!(
                e,
                Effect::Reply {
                    reply: Reply::Demoted,
                    ..
                }
            )
        })
    }

    fn sent_report(effects: &[Effect]) -> Option<u64> {
        effects.iter().find_map(|e| match e {
            Effect::SendReport { sent_at, .. } => Some(*sent_at),
            _ => None,
        })
    }

    fn published(effects: &[Effect]) -> Option<(u64, MemberRole)> {
        effects.iter().find_map(|e| match e {
            Effect::PublishRole { seq, role, .. } => Some((*seq, *role)),
            _ => None,
        })
    }

    fn grant(epoch: u64, remaining_millis: u64) -> Option<ReportAnswer> {
        Some(ReportAnswer {
            decision: ReportDecision {
                accepted: true,
                grant: Some(Grant {
                    epoch,
                    remaining_millis,
                }),
                ..ReportDecision::default()
            },
            view: None,
        })
    }

    /// Member 2, appointed at epoch 1 by coordinator 1, holding a lease until 1000 + `t`.
    fn primary_with_lease(t: u64) -> AgentCore {
        primary_with_lease_from(core(2), t)
    }

    fn primary_with_lease_from(mut c: AgentCore, t: u64) -> AgentCore {
        c.handle(Input::Applied(applied(Some(2), 1)), at(t));
        let fx = c.handle(Input::Raft(raft(2, 1)), at(t));
        let sent = sent_report(&fx).expect("a member reports to a new coordinator at once");
        let fx = c.handle(
            Input::ReportAnswered {
                sent_at: sent,
                answer: grant(1, LEASE),
            },
            at(t + 5),
        );
        assert!(fx.contains(&Effect::Transition(LeaseTransition::Promoted {
            epoch: 1,
            lease_until: sent + LEASE
        })));
        assert_eq!(c.role_at(t + 5), (MemberRole::Primary, 1));
        c
    }

    #[test]
    fn an_appointed_member_without_a_grant_asks_again_after_the_short_retry() {
        let mut c = core(2);
        c.handle(Input::Raft(raft(2, 1)), at(90));
        c.handle(
            Input::ReportAnswered {
                sent_at: 90,
                answer: None,
            },
            at(95),
        );
        let fx = c.handle(Input::Applied(applied(Some(2), 1)), at(100));
        assert_eq!(
            sent_report(&fx),
            Some(100),
            "an appointed member reports at once"
        );
        c.handle(
            Input::ReportAnswered {
                sent_at: 100,
                answer: None,
            },
            at(130),
        );
        assert_eq!(c.next_deadline(), 130 + timing::renewal_retry_millis(LEASE));
        // A backup waits a whole report interval.
        let mut b = core(3);
        b.handle(Input::Raft(raft(3, 1)), at(100));
        b.handle(Input::Applied(applied(Some(2), 1)), at(100));
        b.handle(
            Input::ReportAnswered {
                sent_at: 100,
                answer: None,
            },
            at(130),
        );
        assert_eq!(
            b.next_deadline(),
            130 + timing::report_interval_millis(LEASE)
        );
    }

    #[test]
    fn the_lease_end_is_a_deadline_and_the_primary_demotes_on_time() {
        let mut c = primary_with_lease(0);
        // Reports keep failing (the coordinator is gone).
        for t in [
            250, 300, 350, 400, 450, 500, 550, 600, 650, 700, 750, 800, 850, 900, 950,
        ] {
            if c.next_deadline() <= t {
                let fx = c.handle(Input::Tick, at(t));
                if let Some(sent) = sent_report(&fx) {
                    c.handle(
                        Input::ReportAnswered {
                            sent_at: sent,
                            answer: None,
                        },
                        at(t + 1),
                    );
                }
            }
        }
        assert!(c.next_deadline() <= 1000, "{}", c.next_deadline());
        let fx = c.handle(Input::Tick, at(1000));
        assert!(fx.contains(&Effect::Transition(LeaseTransition::Demoted {
            epoch: 1,
            cause: DemotionCause::Expired,
            lease_until: 1000
        })));
        assert_eq!(published(&fx).map(|p| p.1), Some(MemberRole::Backup));
        assert_eq!(c.role_at(1000), (MemberRole::Backup, 1));
    }

    #[test]
    fn a_supervised_release_counts_only_once_the_supervisor_saw_it_and_the_workload_let_go() {
        let mut c = core_with(2, true);
        let seen = c.agent_role(1);
        c.handle(Input::Workload(workload(&seen, None)), at(1));
        let mut c = primary_with_lease_from(c, 1);
        let seen = c.agent_role(20);
        assert_eq!(seen.role, MemberRole::Primary);
        c.handle(Input::Workload(workload(&seen, Some(1))), at(20));
        let fx = c.handle(
            Input::DemoteRequested {
                epoch: 1,
                reply: ReplyTo(7),
            },
            at(100),
        );
        let (seq, _) = published(&fx).expect("the demotion is published");
        let fx = c.handle(Input::Published { seq }, at(101));
        assert!(!demoted(&fx), "the workload has not let go yet: {fx:?}");
        // A report from before the release says nothing about after it, even if it shows no
        // primary (an older answer may still promote the workload).
        let fx = c.handle(Input::Workload(workload(&seen, None)), at(110));
        assert!(!demoted(&fx), "{fx:?}");
        // The supervisor saw the release but the demote hook still runs.
        let after = c.agent_role(120);
        assert_eq!(after.role, MemberRole::Backup);
        let fx = c.handle(Input::Workload(workload(&after, Some(1))), at(120));
        assert!(!demoted(&fx), "{fx:?}");
        // Meanwhile the coordinator hears of no release: it waits for the lease to run out.
        let t = c.next_deadline();
        let fx = c.handle(Input::Tick, at(t));
        let sent = sent_report(&fx).expect("a report is due");
        assert_eq!(reported_release(&fx), Some(0), "{fx:?}");
        c.handle(
            Input::ReportAnswered {
                sent_at: sent,
                answer: None,
            },
            at(t + 1),
        );
        let fx = c.handle(Input::Workload(workload(&after, None)), at(t + 2));
        assert!(demoted(&fx), "answered once the workload let go: {fx:?}");
        assert_eq!(
            reported_release(&fx),
            Some(1),
            "and the coordinator told at once: {fx:?}"
        );
    }

    #[test]
    fn a_silent_supervisor_never_confirms_a_release() {
        let mut c = core_with(2, true);
        let seen = c.agent_role(1);
        c.handle(Input::Workload(workload(&seen, None)), at(1));
        let mut c = primary_with_lease_from(c, 1);
        let seen = c.agent_role(20);
        c.handle(Input::Workload(workload(&seen, Some(1))), at(20));
        // No report after this one: it goes stale, the member releases as unhealthy, and the
        // coordinator must wait for the lease (the supervisor fences on its own clock).
        let mut t = 20;
        let mut released = Vec::new();
        while t < 1500 {
            t = c.next_deadline();
            let fx = c.handle(Input::Tick, at(t));
            if let Some(sent) = sent_report(&fx) {
                released.extend(reported_release(&fx));
                c.handle(
                    Input::ReportAnswered {
                        sent_at: sent,
                        answer: None,
                    },
                    at(t + 1),
                );
            }
        }
        assert_eq!(c.role_at(t).0, MemberRole::Backup);
        assert!(!released.is_empty());
        assert!(released.iter().all(|e| *e == 0), "{released:?}");
    }

    #[test]
    fn a_demotion_is_answered_only_once_the_workload_was_told() {
        let mut c = primary_with_lease(0);
        let fx = c.handle(
            Input::DemoteRequested {
                epoch: 1,
                reply: ReplyTo(7),
            },
            at(100),
        );
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Transition(LeaseTransition::Demoted {
                cause: DemotionCause::Released,
                ..
            })
        )));
        let (seq, role) = published(&fx).expect("the demotion is published");
        assert_eq!(role, MemberRole::Backup);
        assert!(
            !fx.iter().any(|e| matches!(e, Effect::Reply { .. })),
            "{fx:?}"
        );
        let fx = c.handle(Input::Published { seq }, at(140));
        assert!(fx.contains(&Effect::Reply {
            to: ReplyTo(7),
            reply: Reply::Demoted
        }));
        // ... and the coordinator hears of the release at once.
        assert!(sent_report(&fx).is_some(), "{fx:?}");
        // A grant for the released epoch is refused from now on.
        c.handle(
            Input::ReportAnswered {
                sent_at: 140,
                answer: grant(1, LEASE),
            },
            at(150),
        );
        assert_eq!(c.role_at(150), (MemberRole::Backup, 1));
    }

    #[test]
    fn an_unhealthy_primary_releases_at_once() {
        let mut c = primary_with_lease(0);
        let unhealthy = HealthStatus {
            healthy: false,
            ..HealthStatus::unchecked_healthy()
        };
        let fx = c.handle(Input::Health(unhealthy), at(200));
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Transition(LeaseTransition::Demoted {
                cause: DemotionCause::Released,
                ..
            })
        )));
        assert_eq!(c.role_at(200).0, MemberRole::Backup);
    }

    #[test]
    fn shutdown_hands_off_and_finishes_when_the_next_epoch_is_committed() {
        let mut c = primary_with_lease(0);
        let fx = c.handle(Input::Shutdown, at(100));
        let (seq, _) = published(&fx).expect("published");
        assert!(!fx.contains(&Effect::ShutdownDone));
        let fx = c.handle(Input::Published { seq }, at(120));
        let report = fx
            .iter()
            .find_map(|e| match e {
                Effect::SendReport { report, .. } => Some(report.clone()),
                _ => None,
            })
            .expect("reports the release");
        assert!(report.leaving && report.released_epoch == 1, "{report:?}");
        assert!(!fx.contains(&Effect::ShutdownDone));
        let mut next = applied(Some(2), 1);
        next.state.apply(&GroupCommand::Appoint {
            member: roster().member_name(3),
            epoch: 2,
            failover: None,
        });
        let fx = c.handle(Input::Applied(next), at(300));
        assert!(fx.contains(&Effect::ShutdownDone), "{fx:?}");
        // A member that holds nothing only tells the coordinator it leaves.
        let mut b = core(3);
        b.handle(Input::Raft(raft(3, 1)), at(0));
        b.handle(Input::Applied(applied(Some(2), 1)), at(0));
        b.handle(
            Input::ReportAnswered {
                sent_at: 0,
                answer: None,
            },
            at(1),
        );
        let fx = b.handle(Input::Shutdown, at(10));
        let sent = sent_report(&fx).expect("reports that it leaves");
        let fx = b.handle(
            Input::ReportAnswered {
                sent_at: sent,
                answer: None,
            },
            at(20),
        );
        assert!(fx.contains(&Effect::ShutdownDone));
    }

    /// Member 1 leading Raft (its first quorum round confirmed at 2) in a group whose primary is
    /// `primary` at epoch 1.
    fn coordinating_with_primary(primary: NodeId) -> AgentCore {
        let mut c = core(1);
        c.handle(Input::Applied(applied(Some(primary), 1)), at(0));
        let fx = c.handle(Input::Raft(raft(1, 1)), at(0));
        assert!(fx.contains(&Effect::ConfirmQuorum { term: 1 }));
        c.handle(
            Input::QuorumConfirmed {
                term: 1,
                sent_at: 0,
                confirmed: true,
            },
            at(2),
        );
        c
    }

    /// Member 1, the Raft leader, appointed primary (a switchover to the coordinator): returns
    /// the core and the effects of the moment its lease became live.
    fn primary_leading() -> (AgentCore, Vec<Effect>) {
        let mut c = coordinating_with_primary(1);
        // Its own report without a grant (no quorum round yet) is retried soon.
        let fx = c.handle(Input::Tick, at(c.next_deadline()));
        assert_eq!(c.role_at(c.now), (MemberRole::Primary, 1), "{fx:?}");
        (c, fx)
    }

    fn confirms(fx: &[Effect]) -> bool {
        fx.iter().any(|e| matches!(e, Effect::ConfirmQuorum { .. }))
    }

    #[test]
    fn a_primary_that_leads_raft_steps_aside_and_leads_normally_again_if_nobody_takes_over() {
        let (mut c, fx) = primary_leading();
        assert!(fx.contains(&Effect::RaftHeartbeats(false)), "{fx:?}");
        // Silent through the window: no quorum rounds, although they would be due.
        let window = timing::step_aside_window_millis(LEASE);
        let since = c.now;
        let mut t = since;
        while t + 10 < since + window {
            t += 10;
            let fx = c.handle(Input::Tick, at(t));
            assert!(!confirms(&fx), "a quorum round at {t} while stepping aside");
            assert!(c.next_deadline() <= since + window);
        }
        // Nobody was elected: heartbeats and quorum rounds again, the lease is still live.
        let end = since + window;
        let fx = c.handle(Input::Tick, at(end));
        assert!(fx.contains(&Effect::RaftHeartbeats(true)), "{fx:?}");
        assert!(confirms(&fx), "{fx:?}");
        assert_eq!(c.role_at(end), (MemberRole::Primary, 1));
        // And no new attempt before the retry time.
        c.handle(
            Input::QuorumConfirmed {
                term: 1,
                sent_at: end,
                confirmed: true,
            },
            at(end + 1),
        );
        let fx = c.handle(Input::Tick, at(end + 100));
        assert!(!fx.contains(&Effect::RaftHeartbeats(false)));
    }

    #[test]
    fn a_primary_stepping_aside_turns_heartbeats_back_on_once_another_voter_leads() {
        let (mut c, _) = primary_leading();
        let t = c.now + 300;
        let fx = c.handle(Input::Raft(raft(1, 3)), at(t));
        assert!(fx.contains(&Effect::RaftHeartbeats(true)), "{fx:?}");
        // A backup leading Raft is fine: it never steps aside.
        let mut b = core(3);
        b.handle(Input::Applied(applied(Some(1), 1)), at(0));
        let fx = b.handle(Input::Raft(raft(3, 3)), at(0));
        assert!(!fx.contains(&Effect::RaftHeartbeats(false)));
    }

    #[test]
    fn the_coordinator_replaces_a_silent_primary_at_its_deadline_without_polling() {
        let mut c = coordinating_with_primary(2);
        let healthy = MemberReport {
            workload_healthy: true,
            priority: 50,
            ..MemberReport::default()
        };
        // The primary's last report gets a lease until 1000; member 3 keeps reporting.
        c.handle(
            Input::PeerReport {
                from: 2,
                report: healthy.clone(),
                reply: ReplyTo(1),
            },
            at(10),
        );
        assert_eq!(c.coordinator().lease_status(10).0, LeaseStatus::Live);
        let mut t = 10;
        let mut appointed = None;
        while t < 3000 && appointed.is_none() {
            t = c.next_deadline().min(t + 200);
            let fx = c.handle(
                Input::PeerReport {
                    from: 3,
                    report: healthy.clone(),
                    reply: ReplyTo(t),
                },
                at(t),
            );
            appointed = fx.iter().find_map(|e| match e {
                Effect::Propose(GroupCommand::Appoint { member, epoch, .. }) => {
                    Some((member.id, *epoch, t))
                }
                _ => None,
            });
            if let Some(s) = sent_report(&fx) {
                c.handle(
                    Input::ReportAnswered {
                        sent_at: s,
                        answer: None,
                    },
                    at(t),
                );
            }
            if fx.contains(&Effect::ConfirmQuorum { term: 1 }) {
                c.handle(
                    Input::QuorumConfirmed {
                        term: 1,
                        sent_at: t,
                        confirmed: true,
                    },
                    at(t),
                );
            }
        }
        let (member, epoch, when) = appointed.expect("a new primary is appointed");
        assert_eq!((member, epoch), (3, 2));
        // Not before the lease plus the drift margin, and not much later either.
        let margin = timing::drift_margin_millis(LEASE);
        assert!(
            when >= 1000 + margin && when <= 1000 + margin + 200,
            "appointed at {when}"
        );
    }
}
