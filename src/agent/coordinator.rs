//! The coordinator's decisions (pure state machine).
//!
//! The Raft leader is the group's coordinator. Inputs: time (`now`, monotonic ms of this node),
//! members' reports, Raft events (leadership, quorum confirmations, applied state). Outputs:
//! lease grants (answers to reports) and [`Action`]s the runtime carries out (propose a command,
//! ask the primary to demote).
//!
//! Safety rules (docs/agent.md *Invariants*, invariant 1):
//! - A grant is only given to the committed primary, by a leader that applied everything committed
//!   before its term, and it lasts `lease - (now - t0)` where `t0` is the send time of the latest
//!   heartbeat round a quorum acknowledged. So every lease a leader of term T granted ends before
//!   `t0 + lease` with `t0` earlier than any later leader's election.
//! - A new primary is proposed only when the current one's lease is certainly over: it released it,
//!   or `now >= max(last grant's end, leadership start + lease) + drift margin`. From that moment
//!   on this coordinator never grants the old epoch again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::group::{
    FailoverFacts, FailoverReason, GroupCommand, GroupConfig, MemberName, Mode, NodeId,
    ReplicatedState, Roster, ordinal_of,
};
use super::lease::Grant;
use super::timing::{
    drift_margin_millis, renewal_retry_millis, report_interval_millis, report_stale_after_millis,
};
use crate::api::MemberRole;

/// Why a primary gave its lease back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    Shutdown,
    Switchover,
    WorkloadUnhealthy,
}

/// A member's soft state, sent to the coordinator every report interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    pub workload_healthy: bool,
    pub load: Option<f64>,
    pub latency_ms: Option<f64>,
    pub applied_index: u64,
    pub priority: u32,
    /// The highest epoch whose lease this member gave back (0 = none).
    pub released_epoch: u64,
    pub release_reason: Option<ReleaseReason>,
    /// Shutting down: never appoint it.
    pub leaving: bool,
    /// The workload's replication position (`hooks.position`), when the group declares one.
    pub workload_position: Option<u64>,
    /// The coordinator's position round that position was measured in (see
    /// [`ReportDecision::position_wanted`]).
    pub position_token: u64,
    /// Why the workload is not healthy or not a candidate, in words (empty when it is).
    pub workload_message: String,
    /// The supervisor's latest hook outcomes.
    pub hooks: Vec<crate::supervisor::protocol::HookOutcome>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportDecision {
    /// False: this node is not the coordinator.
    pub accepted: bool,
    pub grant: Option<Grant>,
    /// The member is the primary and a switchover asks it to give the lease back.
    pub demote: bool,
    /// The coordinator is choosing a new primary by workload position and wants positions
    /// measured from now on: the member reports one with this token (0: none wanted).
    pub position_wanted: u64,
    /// A primary chosen by workload position may be needed shortly (the primary's report is
    /// overdue, its lease is about to end, or a position round runs): the member reports again
    /// after the short retry interval instead of a whole report interval, so that a round's
    /// request reaches it at once.
    pub report_soon: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Propose(GroupCommand),
    /// Ask the primary to release the lease of `epoch` (switchover).
    RequestDemotion {
        member: NodeId,
        epoch: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseStatus {
    None,
    Live,
    Expired,
    Released,
}

/// The coordinator's first-hand view of soft state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorView {
    pub lease: LeaseStatus,
    pub lease_remaining_millis: u64,
    pub members: Vec<MemberView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub role: MemberRole,
    pub healthy: bool,
    pub load: Option<f64>,
    pub latency_ms: Option<f64>,
    pub last_report_age_millis: Option<u64>,
    pub applied_index: u64,
    pub matched_index: Option<u64>,
    pub priority: u32,
    pub workload_position: Option<u64>,
    pub workload_message: String,
    pub hooks: Vec<crate::supervisor::protocol::HookOutcome>,
}

/// Who may become primary.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateInfo {
    pub id: NodeId,
    pub name: String,
    pub witness: bool,
    pub voter: bool,
    /// Fresh report with a passing workload check.
    pub healthy: bool,
    pub leaving: bool,
    /// Raft log position (max of reported applied and replicated-to index).
    pub position: u64,
    /// The workload's replication position, when the group declares a position hook.
    pub workload_position: Option<u64>,
    /// That workload position was measured in the current position round.
    pub position_fresh: bool,
    pub priority: u32,
    pub is_coordinator: bool,
    /// Fenced (`kubectl quorate fence`): never appointed.
    pub fenced: bool,
}

/// Positions within this many entries of the best count as equally caught up: they differ only
/// by reports taken at slightly different moments.
pub const POSITION_TOLERANCE: u64 = 16;

/// Candidate choice: healthy voters that are not witnesses, not fenced and not leaving; when workload
/// positions are reported, only members with one, and of those only the highest (a replication
/// stream is ordered, so the member furthest along holds every write any other member holds: with
/// synchronous acknowledgement, every acknowledged one); then the highest Raft log position; then
/// priority (0 = only if nobody else); then, to keep the primary and the Raft leader
/// apart (a crash of both costs an election on top of the lease), members other than the
/// coordinator; then lowest ordinal; then lowest id.
pub fn choose_candidate(candidates: &[CandidateInfo], exclude: Option<NodeId>) -> Option<NodeId> {
    let eligible: Vec<&CandidateInfo> = candidates
        .iter()
        .filter(|c| {
            c.healthy && c.voter && !c.witness && !c.fenced && !c.leaving && Some(c.id) != exclude
        })
        .collect();
    let eligible = match eligible.iter().filter_map(|c| c.workload_position).max() {
        Some(best) => eligible
            .into_iter()
            .filter(|c| c.workload_position == Some(best))
            .collect(),
        None => eligible,
    };
    let any_positive = eligible.iter().any(|c| c.priority > 0);
    let pool: Vec<&CandidateInfo> = eligible
        .into_iter()
        .filter(|c| !any_positive || c.priority > 0)
        .collect();
    let best_position = pool.iter().map(|c| c.position).max()?;
    pool.into_iter()
        .filter(|c| c.position + POSITION_TOLERANCE >= best_position)
        .min_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.is_coordinator.cmp(&b.is_coordinator))
                .then(
                    ordinal_of(&a.name)
                        .unwrap_or(u32::MAX)
                        .cmp(&ordinal_of(&b.name).unwrap_or(u32::MAX)),
                )
                .then(a.id.cmp(&b.id))
        })
        .map(|c| c.id)
}

#[derive(Clone, Debug)]
struct Received {
    at: u64,
    report: MemberReport,
}

#[derive(Clone, Debug)]
struct PrimaryLease {
    epoch: u64,
    /// When this coordinator first saw the epoch: a newly appointed primary gets a full lease
    /// to come and fetch its first grant before it counts as gone.
    seen_at: u64,
    /// End of the latest grant, on this node's clock.
    granted_until: Option<u64>,
    released: Option<ReleaseReason>,
    /// Set once this coordinator decided the lease is over: never grant this epoch again.
    revoked: bool,
    /// When the need to replace the primary was first noticed (unix ms), for the history.
    detected_at_unix: Option<i64>,
    last_demotion_request: Option<u64>,
}

impl PrimaryLease {
    fn new(epoch: u64, seen_at: u64) -> Self {
        Self {
            epoch,
            seen_at,
            granted_until: None,
            released: None,
            revoked: false,
            detected_at_unix: None,
            last_demotion_request: None,
        }
    }
}

#[derive(Clone, Debug)]
struct Leadership {
    term: u64,
    since: u64,
    /// The leader applied an entry of its own term, so its state includes everything committed
    /// before it was elected.
    caught_up: bool,
    quorum_ack_at: Option<u64>,
    lease: PrimaryLease,
    proposal_since: Option<u64>,
    /// The position round of the current vacancy: positions reported with a token at least
    /// this, measured after the round began, are final for the choice.
    position_round: Option<PositionRound>,
    rounds: u64,
}

impl Leadership {
    /// When the current primary's lease ends at the latest as far as this coordinator knows:
    /// its latest grant, or a full lease from when this coordinator took over or first saw the
    /// epoch (a lease granted before is no longer than that).
    fn lease_end(&self, lease_millis: u64) -> u64 {
        self.lease
            .granted_until
            .unwrap_or(0)
            .max(self.since.max(self.lease.seen_at) + lease_millis)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PositionRound {
    token: u64,
    /// The epoch whose vacancy it is for.
    epoch: u64,
    started_at: u64,
}

/// Whether workload positions decide, and if so whether the choice may be made now: every
/// healthy candidate has reported a position of the current round, or the round's wait is over
/// (then only those that did remain candidates). Starts the round when none runs for `epoch`.
/// The primary being `replaced` is not waited for: it is appointed again only when no other
/// member can be, and the writes that matter are those it had acknowledged, which are on a
/// standby (synchronous replication). In a switchover it is restarting as a standby just then.
fn positions_ready(
    l: &mut Leadership,
    epoch: u64,
    wait: u64,
    now: u64,
    candidates: &mut [CandidateInfo],
    replaced: Option<NodeId>,
) -> bool {
    if !candidates.iter().any(|c| c.workload_position.is_some()) {
        return true;
    }
    let Some(round) = l.position_round.filter(|r| r.epoch == epoch) else {
        l.rounds += 1;
        // Tokens grow across coordinators too: the term leads.
        l.position_round = Some(PositionRound {
            token: (l.term << 24) | (l.rounds & 0xff_ffff),
            epoch,
            started_at: now,
        });
        return false;
    };
    let waiting = candidates.iter().any(|c| {
        c.healthy
            && c.voter
            && !c.witness
            && !c.leaving
            && !c.position_fresh
            && Some(c.id) != replaced
    });
    if waiting && now < round.started_at + wait {
        return false;
    }
    for c in candidates.iter_mut().filter(|c| !c.position_fresh) {
        c.healthy = false;
    }
    true
}

/// How long the coordinator waits for every candidate's fresh workload position before it
/// chooses among those that answered: long enough for a report answer to carry the request, the
/// supervisor to run the position hook and the next report to come back.
pub fn position_wait_millis(lease_millis: u64) -> u64 {
    2 * report_interval_millis(lease_millis) + 250
}

/// Settings of this coordinator (from the agent's flags).
#[derive(Clone, Debug)]
pub struct CoordinatorSettings {
    pub id: NodeId,
    /// Proposed when the group has no configuration yet.
    pub initial_config: GroupConfig,
}

#[derive(Clone, Debug)]
pub struct Coordinator {
    settings: CoordinatorSettings,
    state: ReplicatedState,
    roster: Roster,
    reports: BTreeMap<NodeId, Received>,
    matched: BTreeMap<NodeId, u64>,
    leadership: Option<Leadership>,
}

impl Coordinator {
    pub fn new(settings: CoordinatorSettings) -> Self {
        Self {
            settings,
            state: ReplicatedState::default(),
            roster: Roster::default(),
            reports: BTreeMap::new(),
            matched: BTreeMap::new(),
            leadership: None,
        }
    }

    pub fn id(&self) -> NodeId {
        self.settings.id
    }

    /// The token of the position round running for the current epoch (0: none).
    pub fn position_wanted(&self) -> u64 {
        self.leadership
            .as_ref()
            .and_then(|l| l.position_round)
            .filter(|r| r.epoch == self.state.epoch)
            .map_or(0, |r| r.token)
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.is_some()
    }

    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    fn lease_millis(&self) -> u64 {
        self.state
            .config
            .map_or(self.settings.initial_config.lease_millis, |c| {
                c.lease_millis
            })
    }

    /// Raft says who leads. `caught_up`: the applied log includes an entry of `term`.
    pub fn on_raft_status(&mut self, now: u64, is_leader: bool, term: u64, caught_up: bool) {
        if !is_leader {
            self.leadership = None;
            return;
        }
        match &mut self.leadership {
            Some(l) if l.term == term => l.caught_up |= caught_up,
            _ => {
                self.leadership = Some(Leadership {
                    term,
                    since: now,
                    caught_up,
                    quorum_ack_at: None,
                    lease: PrimaryLease::new(self.state.epoch, now),
                    proposal_since: None,
                    position_round: None,
                    rounds: 0,
                });
            }
        }
    }

    /// A heartbeat round sent at `sent_at` (this node's clock) was acknowledged by a quorum in
    /// `term`.
    pub fn on_quorum_ack(&mut self, term: u64, sent_at: u64) {
        if let Some(l) = &mut self.leadership
            && l.term == term
        {
            l.quorum_ack_at = Some(l.quorum_ack_at.map_or(sent_at, |t| t.max(sent_at)));
        }
    }

    /// The locally applied state changed.
    pub fn on_applied(&mut self, now: u64, state: &ReplicatedState, roster: &Roster) {
        self.state = state.clone();
        self.roster = roster.clone();
        self.reports.retain(|id, _| roster.members.contains_key(id));
        if let Some(l) = &mut self.leadership
            && l.lease.epoch != state.epoch
        {
            l.lease = PrimaryLease::new(state.epoch, now);
        }
    }

    /// Raft's replication progress (leader only): member → matched log index.
    pub fn on_replication(&mut self, matched: BTreeMap<NodeId, u64>) {
        self.matched = matched;
    }

    /// A proposal finished (committed, rejected or failed); another may be made.
    pub fn on_proposal_done(&mut self) {
        if let Some(l) = &mut self.leadership {
            l.proposal_since = None;
        }
    }

    /// The primary confirmed it released the lease of `epoch` (answer to a demotion request).
    pub fn on_released(&mut self, member: NodeId, epoch: u64, reason: ReleaseReason) {
        if self.state.primary_id() != Some(member) || self.state.epoch != epoch {
            return;
        }
        if let Some(l) = &mut self.leadership
            && l.lease.epoch == epoch
            && l.lease.released.is_none()
        {
            l.lease.released = Some(reason);
        }
    }

    /// A member's report at `now`. The answer carries a lease grant for the primary.
    pub fn on_report(&mut self, now: u64, from: NodeId, report: MemberReport) -> ReportDecision {
        let released = report.released_epoch;
        let release_reason = report.release_reason;
        let healthy = report.workload_healthy && !report.leaving;
        self.reports.insert(from, Received { at: now, report });
        let lease_millis = self.lease_millis();
        let epoch = self.state.epoch;
        let is_primary = self.state.primary_id() == Some(from);
        let switchover_pending = self
            .state
            .switchover
            .as_ref()
            .is_some_and(|s| s.epoch == epoch);
        let mode = self.state.config.map(|c| c.mode);
        let primary_heard_at = self
            .state
            .primary_id()
            .and_then(|p| self.reports.get(&p))
            .map(|r| r.at);
        let positions_declared = self
            .reports
            .values()
            .any(|r| r.report.workload_position.is_some());
        let Some(l) = &mut self.leadership else {
            return ReportDecision::default();
        };
        let position_wanted = l
            .position_round
            .filter(|r| r.epoch == epoch)
            .map_or(0, |r| r.token);
        let interval = report_interval_millis(lease_millis);
        // Bounded: a vacancy nobody can fill (no candidate, a paused group) is no reason to
        // report twenty times a second for ever.
        let vacancy_recent = now
            < l.lease_end(lease_millis)
                + drift_margin_millis(lease_millis)
                + position_wait_millis(lease_millis)
                + lease_millis;
        let vacancy_near = vacancy_recent
            && (position_wanted != 0
                || switchover_pending
                || (self.state.primary.is_some()
                    && (now + interval >= l.lease_end(lease_millis)
                        || primary_heard_at.is_none_or(|at| {
                            now >= at + interval + renewal_retry_millis(lease_millis)
                        }))));
        let mut decision = ReportDecision {
            accepted: true,
            position_wanted,
            report_soon: mode == Some(Mode::PrimaryBackup)
                && positions_declared
                && !is_primary
                && l.caught_up
                && vacancy_near,
            ..ReportDecision::default()
        };
        if mode != Some(Mode::PrimaryBackup) || !is_primary || !l.caught_up {
            return decision;
        }
        if released >= epoch && l.lease.released.is_none() {
            l.lease.released = Some(release_reason.unwrap_or(ReleaseReason::Shutdown));
        }
        if switchover_pending {
            decision.demote = true;
            return decision;
        }
        if l.lease.revoked || l.lease.released.is_some() || !healthy {
            return decision;
        }
        let Some(t0) = l.quorum_ack_at else {
            return decision;
        };
        let age = now.saturating_sub(t0);
        if age >= lease_millis {
            return decision;
        }
        let remaining = lease_millis - age;
        let until = now + remaining;
        l.lease.granted_until = Some(l.lease.granted_until.map_or(until, |g| g.max(until)));
        decision.grant = Some(Grant {
            epoch,
            remaining_millis: remaining,
        });
        decision
    }

    fn candidates(&self, now: u64) -> Vec<CandidateInfo> {
        let stale = report_stale_after_millis(self.lease_millis());
        let round = self
            .leadership
            .as_ref()
            .and_then(|l| l.position_round)
            .filter(|r| r.epoch == self.state.epoch)
            .map(|r| r.token);
        self.roster
            .members
            .iter()
            .map(|(id, entry)| {
                let received = self.reports.get(id);
                let fresh = received.is_some_and(|r| now.saturating_sub(r.at) <= stale);
                let report = received.map(|r| &r.report);
                CandidateInfo {
                    id: *id,
                    name: entry.node.name.clone(),
                    witness: entry.node.witness,
                    voter: entry.voter,
                    healthy: fresh && report.is_some_and(|r| r.workload_healthy),
                    leaving: report.is_some_and(|r| r.leaving),
                    position: report
                        .map_or(0, |r| r.applied_index)
                        .max(self.matched.get(id).copied().unwrap_or(0)),
                    workload_position: report.and_then(|r| r.workload_position),
                    position_fresh: round
                        .is_some_and(|t| report.is_some_and(|r| r.position_token >= t)),
                    priority: report.map_or(0, |r| r.priority),
                    is_coordinator: *id == self.settings.id,
                    fenced: self.state.fenced.contains(id),
                }
            })
            .collect()
    }

    /// Can `member` be a switchover target right now?
    pub fn switchover_target_ok(&self, now: u64, member: NodeId) -> Result<(), String> {
        let candidates = self.candidates(now);
        let Some(c) = candidates.iter().find(|c| c.id == member) else {
            return Err(format!("{member} is not a member"));
        };
        if c.witness {
            return Err(format!("{} is a witness", c.name));
        }
        if !c.voter {
            return Err(format!("{} is a learner that has not caught up", c.name));
        }
        if !c.healthy || c.leaving {
            return Err(format!("{} is not healthy", c.name));
        }
        if c.fenced {
            return Err(format!("{} is fenced (kubectl quorate unfence)", c.name));
        }
        Ok(())
    }

    /// Can `member` be fenced right now? Not when no other member could be primary then
    /// (PrimaryBackup) or serve (ActiveActive): fencing the only healthy member would leave the
    /// group with nothing to fail over to.
    pub fn fence_ok(&self, now: u64, member: NodeId) -> Result<(), String> {
        let candidates = self.candidates(now);
        let Some(target) = candidates.iter().find(|c| c.id == member) else {
            return Err(format!("{member} is not a member"));
        };
        if target.witness {
            return Err(format!(
                "{} is a witness: witnesses are never primary and serve no traffic",
                target.name
            ));
        }
        let others = candidates
            .iter()
            .filter(|c| c.id != member && c.healthy && c.voter && !c.witness && !c.fenced)
            .count();
        if others == 0 {
            return Err(format!(
                "{} would leave no healthy, unfenced member to take over: fence it once another member is healthy, or unfence one",
                target.name
            ));
        }
        Ok(())
    }

    /// A coordinator that just took over has only its own report: it chooses a primary only
    /// once every voter has reported to it, or two report intervals into its leadership (a
    /// member that has not reported by then is not coming soon). Otherwise a member that just
    /// became leader would appoint itself for lack of known alternatives.
    fn candidates_settled(&self, now: u64) -> bool {
        let Some(l) = &self.leadership else {
            return false;
        };
        if now >= l.since + 2 * report_interval_millis(self.lease_millis()) {
            return true;
        }
        self.roster.voters().all(|id| {
            id == self.settings.id || self.reports.get(&id).is_some_and(|r| r.at >= l.since)
        })
    }

    /// Periodic decisions at `now` (monotonic) / `now_unix` (wall clock, for records only).
    pub fn tick(&mut self, now: u64, now_unix: i64) -> Vec<Action> {
        let mut candidates = self.candidates(now);
        let position_wait = position_wait_millis(self.lease_millis());
        let settled = self.candidates_settled(now);
        let state = &self.state;
        let roster = &self.roster;
        let initial_config = self.settings.initial_config;
        let Some(l) = &mut self.leadership else {
            return Vec::new();
        };
        if !l.caught_up {
            return Vec::new();
        }
        if let Some(since) = l.proposal_since {
            // A proposal normally finishes within milliseconds; after two leases assume the
            // runtime lost it.
            let lease = state
                .config
                .map_or(initial_config.lease_millis, |c| c.lease_millis);
            if now.saturating_sub(since) < 2 * lease {
                return Vec::new();
            }
            l.proposal_since = None;
        }
        let Some(config) = state.config else {
            l.proposal_since = Some(now);
            return vec![Action::Propose(GroupCommand::Configure(initial_config))];
        };
        if config.mode != Mode::PrimaryBackup {
            return Vec::new();
        }
        let lease = config.lease_millis;
        let margin = drift_margin_millis(lease);

        let Some(primary) = state.primary.clone() else {
            // No primary was ever appointed, so no lease exists anywhere.
            if state.paused || !settled {
                return Vec::new();
            }
            if !positions_ready(l, state.epoch, position_wait, now, &mut candidates, None) {
                return Vec::new();
            }
            let Some(member) = choose_candidate(&candidates, None) else {
                return Vec::new();
            };
            l.proposal_since = Some(now);
            return vec![Action::Propose(GroupCommand::Appoint {
                member: roster.member_name(member),
                epoch: state.epoch + 1,
                failover: None,
            })];
        };

        let switchover = state.switchover.as_ref().filter(|s| s.epoch == state.epoch);
        let lease_end = l.lease_end(lease);
        let released = l.lease.released;
        let still_member = roster.members.contains_key(&primary.id);
        let needs_replacement =
            switchover.is_some() || released.is_some() || now >= lease_end || !still_member;
        if !needs_replacement {
            l.lease.detected_at_unix = None;
            return Vec::new();
        }
        if l.lease.detected_at_unix.is_none() {
            l.lease.detected_at_unix = Some(match switchover {
                Some(s) => s.requested_at_unix_millis,
                None => now_unix,
            });
        }
        let certainly_over = released.is_some() || now >= lease_end + margin;
        if !certainly_over {
            if switchover.is_some() {
                let due = l
                    .lease
                    .last_demotion_request
                    .is_none_or(|t| now.saturating_sub(t) >= lease / 4);
                if due {
                    l.lease.last_demotion_request = Some(now);
                    return vec![Action::RequestDemotion {
                        member: primary.id,
                        epoch: state.epoch,
                    }];
                }
            }
            return Vec::new();
        }
        // From here on the old lease is over for good.
        l.lease.revoked = true;
        if switchover.is_none() && state.paused {
            return Vec::new();
        }
        // What actually ended the lease: a primary that gave it back on its own (shutdown, failed
        // workload) was not switched over, even if a switchover was asked for meanwhile (the
        // operator asks for one as soon as the primary's pod is being deleted).
        let reason = match (released, switchover) {
            (Some(ReleaseReason::WorkloadUnhealthy), _) => FailoverReason::WorkloadUnhealthy,
            (Some(ReleaseReason::Shutdown), _) => FailoverReason::Released,
            (Some(ReleaseReason::Switchover), _) | (None, Some(_)) => FailoverReason::Switchover,
            (None, None) => FailoverReason::LeaseExpired,
        };
        if !settled {
            return Vec::new();
        }
        if reason.is_automatic() && state.flap_guard_blocks(now_unix) {
            if state.flap_guard_tripped {
                return Vec::new();
            }
            l.proposal_since = Some(now);
            return vec![Action::Propose(GroupCommand::TripFlapGuard)];
        }
        if !positions_ready(
            l,
            state.epoch,
            position_wait,
            now,
            &mut candidates,
            Some(primary.id),
        ) {
            return Vec::new();
        }
        let requested = switchover
            .and_then(|s| s.target)
            .filter(|t| *t != primary.id)
            .filter(|t| {
                candidates
                    .iter()
                    .any(|c| c.id == *t && c.healthy && c.voter && !c.witness && !c.leaving)
            })
            // A requested target behind another member's workload would lose the writes it
            // lacks: then the member furthest along is appointed instead.
            .filter(|t| {
                let best = candidates
                    .iter()
                    .filter(|c| c.healthy && c.voter && !c.witness && !c.leaving)
                    .filter_map(|c| c.workload_position)
                    .max();
                let mine = candidates
                    .iter()
                    .find(|c| c.id == *t)
                    .and_then(|c| c.workload_position);
                best.is_none() || mine == best
            });
        let member = requested
            .or_else(|| choose_candidate(&candidates, Some(primary.id)))
            // The old primary itself, under a new epoch, if it is the only one left (it gave
            // its old lease back and refuses grants for it).
            .or_else(|| choose_candidate(&candidates, None));
        let Some(member) = member else {
            return Vec::new();
        };
        l.proposal_since = Some(now);
        vec![Action::Propose(GroupCommand::Appoint {
            member: roster.member_name(member),
            epoch: state.epoch + 1,
            failover: Some(FailoverFacts {
                from: Some(MemberName {
                    id: primary.id,
                    name: primary.name.clone(),
                }),
                reason,
                detected_at_unix_millis: l.lease.detected_at_unix.unwrap_or(now_unix),
                appointed_at_unix_millis: now_unix,
            }),
        })]
    }

    /// The next instant after `now` at which `tick` may decide something new without any other
    /// input (for the runtime's timer); `None` when only an input can change anything. Every
    /// time `tick` consults is listed: a proposal given up as lost, the end of the candidates'
    /// settling time, the current lease's end (detection) and its end plus the drift margin
    /// (replacement), and the next demotion request of a pending switchover.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let l = self.leadership.as_ref()?;
        if !l.caught_up {
            return None;
        }
        let lease = self.lease_millis();
        if let Some(since) = l.proposal_since {
            return Some((since + 2 * lease).max(now + 1));
        }
        let config = self.state.config?;
        if config.mode != Mode::PrimaryBackup {
            return None;
        }
        let mut points = vec![l.since + 2 * report_interval_millis(lease)];
        if let Some(r) = l.position_round.filter(|r| r.epoch == self.state.epoch) {
            points.push(r.started_at + position_wait_millis(lease));
        }
        if self.state.primary.is_some() {
            let end = l.lease_end(lease);
            points.push(end);
            points.push(end + drift_margin_millis(lease));
            let switchover = self
                .state
                .switchover
                .as_ref()
                .is_some_and(|s| s.epoch == self.state.epoch);
            if switchover && let Some(t) = l.lease.last_demotion_request {
                points.push(t + lease / 4);
            }
        }
        points.into_iter().filter(|t| *t > now).min()
    }

    /// Lease state of the current primary as this coordinator sees it.
    pub fn lease_status(&self, now: u64) -> (LeaseStatus, u64) {
        if self.state.primary.is_none() {
            return (LeaseStatus::None, 0);
        }
        let Some(l) = &self.leadership else {
            return (LeaseStatus::Expired, 0);
        };
        if l.lease.released.is_some() {
            return (LeaseStatus::Released, 0);
        }
        match l.lease.granted_until {
            Some(until) if now < until && !l.lease.revoked => (LeaseStatus::Live, until - now),
            _ => (LeaseStatus::Expired, 0),
        }
    }

    /// The coordinator's view of all members (only meaningful on the leader).
    pub fn view(&self, now: u64) -> CoordinatorView {
        let (lease, lease_remaining_millis) = self.lease_status(now);
        let stale = report_stale_after_millis(self.lease_millis());
        let mode = self
            .state
            .config
            .map_or(self.settings.initial_config.mode, |c| c.mode);
        let primary = self.state.primary_id();
        let members = self
            .roster
            .members
            .iter()
            .map(|(id, entry)| {
                let received = self.reports.get(id);
                let age = received.map(|r| now.saturating_sub(r.at));
                let fresh = age.is_some_and(|a| a <= stale);
                let report = received.map(|r| &r.report);
                let healthy = fresh && report.is_some_and(|r| r.workload_healthy);
                let role = if entry.node.witness {
                    MemberRole::Witness
                } else if !fresh {
                    MemberRole::Unknown
                } else if mode == Mode::ActiveActive {
                    MemberRole::Active
                } else if primary == Some(*id) && lease == LeaseStatus::Live {
                    MemberRole::Primary
                } else {
                    MemberRole::Backup
                };
                MemberView {
                    id: *id,
                    role,
                    healthy,
                    load: report.and_then(|r| r.load),
                    latency_ms: report.and_then(|r| r.latency_ms),
                    last_report_age_millis: age,
                    applied_index: report.map_or(0, |r| r.applied_index),
                    matched_index: self.matched.get(id).copied(),
                    priority: report.map_or(0, |r| r.priority),
                    workload_position: report.and_then(|r| r.workload_position),
                    workload_message: report
                        .map(|r| r.workload_message.clone())
                        .unwrap_or_default(),
                    hooks: report.map(|r| r.hooks.clone()).unwrap_or_default(),
                }
            })
            .collect();
        CoordinatorView {
            lease,
            lease_remaining_millis,
            members,
        }
    }

    /// Live voters (fresh reports) other than `excluding`, for membership safety checks.
    pub fn live_voters(&self, now: u64, excluding: Option<NodeId>) -> usize {
        let stale = report_stale_after_millis(self.lease_millis());
        self.roster
            .voters()
            .filter(|id| Some(*id) != excluding)
            .filter(|id| {
                *id == self.settings.id
                    || self
                        .reports
                        .get(id)
                        .is_some_and(|r| now.saturating_sub(r.at) <= stale)
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::group::{CommandOutcome, MemberNode, RosterEntry};
    use proptest::prelude::*;

    const LEASE: u64 = 1000;
    const MARGIN: u64 = 110;

    fn config() -> GroupConfig {
        GroupConfig {
            mode: Mode::PrimaryBackup,
            lease_millis: LEASE,
            max_failovers_per_hour: 3,
        }
    }

    fn roster(ids: &[NodeId]) -> Roster {
        let mut r = Roster::default();
        for id in ids {
            r.members.insert(
                *id,
                RosterEntry {
                    node: MemberNode {
                        name: format!("m-{id}"),
                        address: format!("127.0.0.{id}:7470"),
                        witness: *id >= 9,
                    },
                    voter: true,
                },
            );
        }
        r
    }

    fn healthy() -> MemberReport {
        MemberReport {
            workload_healthy: true,
            priority: 50,
            ..MemberReport::default()
        }
    }

    /// A coordinator (node 1) leading a configured group of 1, 2, 3 at `now`.
    fn leading(now: u64) -> (Coordinator, ReplicatedState, Roster) {
        let mut c = Coordinator::new(CoordinatorSettings {
            id: 1,
            initial_config: config(),
        });
        let roster = roster(&[1, 2, 3]);
        let mut state = ReplicatedState::default();
        state.apply(&GroupCommand::Configure(config()));
        c.on_applied(0, &state, &roster);
        c.on_raft_status(now, true, 1, true);
        (c, state, roster)
    }

    fn apply(
        c: &mut Coordinator,
        state: &mut ReplicatedState,
        roster: &Roster,
        actions: &[Action],
    ) {
        for a in actions {
            if let Action::Propose(cmd) = a {
                state.apply(cmd);
            }
        }
        c.on_applied(0, state, roster);
        c.on_proposal_done();
    }

    fn appointed(actions: &[Action]) -> Option<(NodeId, u64)> {
        actions.iter().find_map(|a| match a {
            Action::Propose(GroupCommand::Appoint { member, epoch, .. }) => {
                Some((member.id, *epoch))
            }
            _ => None,
        })
    }

    #[test]
    fn unconfigured_group_gets_configured_first() {
        let mut c = Coordinator::new(CoordinatorSettings {
            id: 1,
            initial_config: config(),
        });
        c.on_applied(0, &ReplicatedState::default(), &roster(&[1, 2, 3]));
        c.on_raft_status(0, true, 1, true);
        assert_eq!(
            c.tick(0, 0),
            vec![Action::Propose(GroupCommand::Configure(config()))]
        );
        // No second proposal while the first is in flight.
        assert_eq!(c.tick(1, 0), vec![]);
    }

    #[test]
    fn first_appointment_prefers_a_non_coordinator_by_ordinal() {
        let (mut c, _, _) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        assert_eq!(appointed(&c.tick(1, 0)), Some((2, 1)));
    }

    #[test]
    fn no_grant_without_a_quorum_confirmation_and_grant_shrinks_with_its_age() {
        let (mut c, mut state, roster) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        let a = c.tick(1, 0);
        apply(&mut c, &mut state, &roster, &a);
        assert_eq!(c.on_report(10, 2, healthy()).grant, None);
        c.on_quorum_ack(1, 100);
        let d = c.on_report(300, 2, healthy());
        assert_eq!(
            d.grant,
            Some(Grant {
                epoch: 1,
                remaining_millis: 800
            })
        );
        // Backups get no grant.
        assert_eq!(c.on_report(300, 3, healthy()).grant, None);
        // A confirmation from an older term does not count.
        c.on_quorum_ack(0, 1000);
        assert_eq!(c.on_report(1150, 2, healthy()).grant, None);
    }

    #[test]
    fn crashed_primary_is_replaced_only_after_lease_and_margin() {
        let (mut c, mut state, roster) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        let a = c.tick(1, 0);
        apply(&mut c, &mut state, &roster, &a);
        // Wait out the new-coordinator period with renewals.
        let mut now = 0;
        while now < 3000 {
            now += 100;
            c.on_quorum_ack(1, now);
            for id in [1, 2, 3] {
                c.on_report(now, id, healthy());
            }
            assert_eq!(c.tick(now, 0), vec![]);
        }
        // Primary 2 goes silent after its last grant at `now` (lease until now + 1000).
        let last = now;
        loop {
            now += 10;
            c.on_quorum_ack(1, now);
            for id in [1, 3] {
                c.on_report(now, id, healthy());
            }
            let actions = c.tick(now, now as i64);
            if let Some((member, epoch)) = appointed(&actions) {
                assert!(now >= last + LEASE + MARGIN, "appointed at {now}");
                assert_eq!(
                    member, 3,
                    "a member other than the coordinator is preferred"
                );
                assert_eq!(epoch, 2);
                break;
            }
            assert!(now < last + 5000, "never replaced");
        }
        // The old primary coming back gets nothing for epoch 1 once the decision is made.
        assert_eq!(c.on_report(now + 1, 2, healthy()).grant, None);
    }

    fn at_position(position: u64, token: u64) -> MemberReport {
        MemberReport {
            workload_position: Some(position),
            position_token: token,
            ..healthy()
        }
    }

    /// Coordinator 1 appoints member 2 (epoch 1) through a first position round, in which every
    /// member reported position 0; returns the round's token too.
    fn appointed_by_position() -> (Coordinator, u64) {
        let (mut c, mut state, roster) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, at_position(0, 0));
        }
        // The first appointment already asks for a position round.
        assert_eq!(appointed(&c.tick(1, 0)), None);
        let token = c.on_report(2, 2, at_position(0, 0)).position_wanted;
        assert!(token > 0);
        for id in [1, 2, 3] {
            c.on_report(3, id, at_position(0, token));
        }
        let a = c.tick(4, 0);
        assert_eq!(appointed(&a), Some((2, 1)));
        apply(&mut c, &mut state, &roster, &a);
        (c, token)
    }

    #[test]
    fn the_highest_workload_position_wins_over_priority_and_ordinal() {
        let base = CandidateInfo {
            id: 0,
            name: String::new(),
            witness: false,
            voter: true,
            healthy: true,
            leaving: false,
            position: 100,
            workload_position: Some(10),
            position_fresh: true,
            priority: 50,
            is_coordinator: false,
            fenced: false,
        };
        let c = |id: NodeId, name: &str, wp: Option<u64>, priority: u32| CandidateInfo {
            id,
            name: name.into(),
            workload_position: wp,
            priority,
            ..base.clone()
        };
        let all = vec![c(5, "a-0", Some(10), 90), c(6, "a-1", Some(12), 10)];
        assert_eq!(choose_candidate(&all, None), Some(6));
        // Without a position where others have one: not a candidate.
        let all = vec![c(5, "a-0", None, 90), c(6, "a-1", Some(0), 10)];
        assert_eq!(choose_candidate(&all, None), Some(6));
        // Equal positions: the existing rules decide.
        let all = vec![c(5, "a-2", Some(7), 90), c(6, "a-1", Some(7), 50)];
        assert_eq!(choose_candidate(&all, None), Some(5));
    }

    #[test]
    fn a_vacancy_waits_for_fresh_workload_positions_and_appoints_the_furthest() {
        let (mut c, token) = appointed_by_position();
        let mut now = 0;
        while now < 3000 {
            now += 100;
            c.on_quorum_ack(1, now);
            for id in [1, 2, 3] {
                c.on_report(now, id, at_position(now, token));
            }
            assert_eq!(c.tick(now, 0), vec![]);
        }
        // Primary 2 is gone. Member 1 (the coordinator) got the last writes, member 3 did not:
        // stale positions would tie at the old round's, fresh ones must decide.
        let mut asked = 0;
        loop {
            now += 10;
            c.on_quorum_ack(1, now);
            let wanted = c
                .on_report(now, 3, at_position(2900, asked))
                .position_wanted;
            c.on_report(now, 1, at_position(3000, asked));
            if wanted > token && asked == 0 {
                assert!(
                    now >= 3000 + LEASE + MARGIN,
                    "asked at {now}, before the lease was over"
                );
                asked = wanted;
            }
            if let Some((member, epoch)) = appointed(&c.tick(now, now as i64)) {
                assert!(asked > 0, "appointed without fresh positions");
                assert_eq!(
                    (member, epoch),
                    (1, 2),
                    "the furthest member holds every write"
                );
                break;
            }
            assert!(now < 10_000, "never replaced");
        }
    }

    #[test]
    fn backups_report_soon_only_while_a_vacancy_by_position_is_near() {
        let (mut c, mut state, roster) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, at_position(0, 0));
        }
        assert_eq!(appointed(&c.tick(1, 0)), None);
        let token = c.on_report(2, 2, at_position(0, 0)).position_wanted;
        // The first appointment's round runs: everyone is asked to report soon.
        assert!(c.on_report(2, 3, at_position(0, 0)).report_soon);
        for id in [1, 2, 3] {
            c.on_report(3, id, at_position(0, token));
        }
        let a = c.tick(4, 0);
        assert_eq!(appointed(&a), Some((2, 1)));
        apply(&mut c, &mut state, &roster, &a);
        // Steady state: the primary renews every report interval; nobody reports early.
        let mut now = 0;
        while now < 3000 {
            now += 250;
            c.on_quorum_ack(1, now);
            assert!(!c.on_report(now, 2, at_position(now, token)).report_soon);
            assert!(!c.on_report(now + 1, 3, at_position(now, token)).report_soon);
            assert_eq!(c.tick(now + 1, 0), vec![]);
        }
        // Primary 2 goes quiet: once its report is overdue the backups report soon, through the
        // vacancy's position round, until the new primary is appointed.
        let last = now;
        let mut soon_since = None;
        loop {
            now += 10;
            c.on_quorum_ack(1, now);
            let d = c.on_report(now, 3, at_position(last, token));
            if d.report_soon && soon_since.is_none() {
                soon_since = Some(now);
            }
            let actions = c.tick(now, 0);
            if let Some((member, _)) = appointed(&actions) {
                assert_ne!(member, 2);
                apply(&mut c, &mut state, &roster, &actions);
                break;
            }
            if d.position_wanted > 0 {
                c.on_report(now, 1, at_position(last, d.position_wanted));
                c.on_report(now, 3, at_position(last, d.position_wanted));
            }
            assert!(now < last + 5000, "never replaced");
        }
        let soon_since = soon_since.expect("never asked to report soon");
        assert!(
            soon_since <= last + report_interval_millis(LEASE) + 60,
            "asked to report soon only at {soon_since} (last primary report {last})"
        );
        // The new primary renews; the vacancy is over.
        c.on_quorum_ack(1, now + 10);
        let new = state.primary_id().unwrap();
        c.on_report(now + 10, new, at_position(last, 0));
        let other = [1, 3].into_iter().find(|id| *id != new).unwrap();
        assert!(
            !c.on_report(now + 11, other, at_position(last, 0))
                .report_soon
        );
    }

    #[test]
    fn a_vacancy_nobody_fills_stops_the_early_reports() {
        let (mut c, token) = appointed_by_position();
        c.on_quorum_ack(1, 5);
        c.on_report(5, 2, at_position(0, token));
        // The primary goes quiet and member 3's workload is unhealthy: nobody can take over.
        let unhealthy = MemberReport {
            workload_healthy: false,
            ..at_position(0, token)
        };
        let mut last_soon = None;
        for now in (10..10_000).step_by(50) {
            c.on_quorum_ack(1, now);
            if c.on_report(now, 3, unhealthy.clone()).report_soon {
                last_soon = Some(now);
            }
            let a = c.tick(now, 0);
            assert_eq!(appointed(&a), None);
        }
        let last_soon = last_soon.expect("asked to report soon at first");
        assert!(last_soon < 5 + 3 * LEASE, "still asked at {last_soon}");
    }

    #[test]
    fn no_early_reports_without_workload_positions() {
        let (mut c, mut state, roster) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        let a = c.tick(600, 0);
        apply(&mut c, &mut state, &roster, &a);
        assert!(state.primary_id().is_some());
        // The primary never reports: without positions nothing is gained by reporting early.
        for now in (700..3000).step_by(100) {
            c.on_quorum_ack(1, now);
            assert!(!c.on_report(now, 3, healthy()).report_soon);
            let a = c.tick(now, 0);
            apply(&mut c, &mut state, &roster, &a);
        }
    }

    #[test]
    fn a_released_primary_is_not_waited_for_in_the_position_round() {
        let (mut c, token) = appointed_by_position();
        let mut now = 0;
        while now < 3000 {
            now += 100;
            c.on_quorum_ack(1, now);
            for id in [1, 2, 3] {
                c.on_report(now, id, at_position(now, token));
            }
            assert_eq!(c.tick(now, 0), vec![]);
        }
        // Primary 2 gives its lease back (it is restarting as a standby) and reports no fresh
        // position; the standbys answer the round at once.
        let released = MemberReport {
            released_epoch: 1,
            release_reason: Some(ReleaseReason::Switchover),
            ..at_position(3000, token)
        };
        c.on_report(now, 2, released.clone());
        assert_eq!(c.tick(now, now as i64), vec![], "the round starts first");
        let asked = c
            .on_report(now, 3, at_position(3000, token))
            .position_wanted;
        assert!(asked > token);
        let start = now;
        loop {
            now += 10;
            c.on_quorum_ack(1, now);
            c.on_report(now, 2, released.clone());
            c.on_report(now, 1, at_position(3000, asked));
            c.on_report(now, 3, at_position(3000, asked));
            if let Some((member, epoch)) = appointed(&c.tick(now, now as i64)) {
                assert_ne!(member, 2);
                assert_eq!(epoch, 2);
                break;
            }
            assert!(now < start + 5000, "never replaced");
        }
        assert!(
            now - start < position_wait_millis(LEASE),
            "waited {} ms for the released primary's position",
            now - start
        );
    }

    #[test]
    fn a_candidate_that_never_reports_a_fresh_position_is_left_out_after_the_wait() {
        let (mut c, mut state, roster) = leading(0);
        let token = {
            for id in [1, 2, 3] {
                c.on_report(0, id, at_position(0, 0));
            }
            c.tick(1, 0);
            c.on_report(2, 2, at_position(0, 0)).position_wanted
        };
        // Member 3 answers with a stale token only (its supervisor does not run the hook).
        c.on_report(3, 1, at_position(5, token));
        c.on_report(3, 2, at_position(5, token));
        c.on_report(3, 3, at_position(9, 0));
        let mut now = 3;
        let appointed_at = loop {
            now += 10;
            c.on_report(now, 3, at_position(9, 0));
            c.on_report(now, 1, at_position(5, token));
            c.on_report(now, 2, at_position(5, token));
            let a = c.tick(now, 0);
            if let Some((member, _)) = appointed(&a) {
                assert_ne!(member, 3);
                apply(&mut c, &mut state, &roster, &a);
                break now;
            }
            assert!(now < 5000);
        };
        assert!(
            appointed_at >= position_wait_millis(LEASE),
            "waited {appointed_at} ms"
        );
    }

    #[test]
    fn new_coordinator_waits_a_full_lease_but_keeps_renewing_the_primary() {
        let mut c = Coordinator::new(CoordinatorSettings {
            id: 1,
            initial_config: config(),
        });
        let roster = roster(&[1, 2, 3]);
        let mut state = ReplicatedState::default();
        state.apply(&GroupCommand::Configure(config()));
        state.apply(&GroupCommand::Appoint {
            member: roster.member_name(2),
            epoch: 1,
            failover: None,
        });
        c.on_applied(0, &state, &roster);
        c.on_raft_status(5000, true, 7, false);
        // Not caught up with its own term: no decisions, no grants.
        c.on_quorum_ack(7, 5000);
        assert_eq!(c.on_report(5001, 2, healthy()).grant, None);
        assert_eq!(c.tick(5001, 0), vec![]);
        c.on_raft_status(5002, true, 7, true);
        // Renewal of the same primary is allowed at once.
        assert!(c.on_report(5003, 2, healthy()).grant.is_some());
        // Primary 2 dies right away. Others report; nothing happens before 5000 + lease + margin
        // even though the last grant ends earlier... (it ends at 5003 + 997).
        let mut now = 5003;
        loop {
            now += 5;
            c.on_quorum_ack(7, now);
            c.on_report(now, 3, healthy());
            let actions = c.tick(now, 0);
            if appointed(&actions).is_some() {
                assert!(now >= 5000 + LEASE + MARGIN);
                break;
            }
        }
    }

    #[test]
    fn released_lease_allows_immediate_hand_off() {
        let (mut c, mut state, roster) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        let a = c.tick(1, 0);
        apply(&mut c, &mut state, &roster, &a);
        c.on_quorum_ack(1, 10);
        assert!(c.on_report(10, 2, healthy()).grant.is_some());
        let released = MemberReport {
            released_epoch: 1,
            release_reason: Some(ReleaseReason::Shutdown),
            leaving: true,
            ..healthy()
        };
        assert_eq!(c.on_report(20, 2, released).grant, None);
        let actions = c.tick(21, 21);
        assert_eq!(appointed(&actions), Some((3, 2)));
        assert!(matches!(
            &actions[0],
            Action::Propose(GroupCommand::Appoint {
                failover: Some(FailoverFacts {
                    reason: FailoverReason::Released,
                    ..
                }),
                ..
            })
        ));
    }

    #[test]
    fn switchover_demotes_then_appoints_the_target() {
        let (mut c, mut state, roster) = leading(0);
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        let a = c.tick(1, 0);
        apply(&mut c, &mut state, &roster, &a);
        c.on_quorum_ack(1, 10);
        assert!(c.on_report(10, 2, healthy()).grant.is_some());
        let begin = [Action::Propose(GroupCommand::BeginSwitchover {
            epoch: 1,
            target: Some(1),
            requested_at_unix_millis: 20,
        })];
        apply(&mut c, &mut state, &roster, &begin);
        // No more grants; the primary is told to demote.
        let d = c.on_report(30, 2, healthy());
        assert!(d.demote);
        assert_eq!(d.grant, None);
        assert_eq!(
            c.tick(31, 31),
            vec![Action::RequestDemotion {
                member: 2,
                epoch: 1
            }]
        );
        assert_eq!(c.tick(32, 32), vec![], "demotion requests are rate limited");
        c.on_released(2, 1, ReleaseReason::Switchover);
        let actions = c.tick(40, 40);
        assert_eq!(appointed(&actions), Some((1, 2)));
    }

    #[test]
    fn flap_guard_stops_automatic_failovers() {
        let (mut c, mut state, roster) = leading(0);
        let mut now = 0;
        for id in [1, 2, 3] {
            c.on_report(now, id, healthy());
        }
        let a = c.tick(now, 0);
        apply(&mut c, &mut state, &roster, &a);
        let mut failovers = 0;
        let mut tripped = false;
        for _ in 0..10 {
            // The primary releases because its workload failed.
            let p = state.primary_id().unwrap_or(0);
            now += 10;
            let bad = MemberReport {
                workload_healthy: false,
                released_epoch: state.epoch,
                release_reason: Some(ReleaseReason::WorkloadUnhealthy),
                ..healthy()
            };
            for id in [1, 2, 3] {
                let r = if id == p { bad.clone() } else { healthy() };
                c.on_report(now, id, r);
            }
            let actions = c.tick(now, now as i64);
            if appointed(&actions).is_some() {
                failovers += 1;
            }
            if actions.contains(&Action::Propose(GroupCommand::TripFlapGuard)) {
                tripped = true;
            }
            apply(&mut c, &mut state, &roster, &actions);
        }
        assert_eq!(failovers, 3);
        assert!(tripped);
        assert!(state.flap_guard_tripped);
    }

    #[test]
    fn pause_blocks_automatic_appointment() {
        let (mut c, mut state, roster) = leading(0);
        apply(
            &mut c,
            &mut state,
            &roster,
            &[Action::Propose(GroupCommand::SetPaused { paused: true })],
        );
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        assert_eq!(c.tick(1, 0), vec![]);
    }

    #[test]
    fn candidate_choice_order() {
        let base = CandidateInfo {
            id: 0,
            name: String::new(),
            witness: false,
            voter: true,
            healthy: true,
            leaving: false,
            position: 100,
            workload_position: None,
            position_fresh: false,
            priority: 50,
            is_coordinator: false,
            fenced: false,
        };
        let c = |id: NodeId, name: &str, f: &dyn Fn(&mut CandidateInfo)| {
            let mut x = CandidateInfo {
                id,
                name: name.into(),
                ..base.clone()
            };
            f(&mut x);
            x
        };
        // Lowest ordinal wins a tie.
        let all = vec![c(5, "a-2", &|_| {}), c(6, "a-1", &|_| {})];
        assert_eq!(choose_candidate(&all, None), Some(6));
        // Higher priority beats ordinal.
        let all = vec![c(5, "a-2", &|x| x.priority = 90), c(6, "a-1", &|_| {})];
        assert_eq!(choose_candidate(&all, None), Some(5));
        // Position beats priority.
        let all = vec![
            c(5, "a-2", &|x| x.priority = 90),
            c(6, "a-1", &|x| x.position = 200),
        ];
        assert_eq!(choose_candidate(&all, None), Some(6));
        // Priority 0 only if nobody else.
        let all = vec![
            c(5, "a-0", &|x| x.priority = 0),
            c(6, "a-1", &|x| x.position = 90),
        ];
        assert_eq!(choose_candidate(&all, None), Some(6));
        let all = vec![
            c(5, "a-0", &|x| x.priority = 0),
            c(6, "a-1", &|x| x.healthy = false),
        ];
        assert_eq!(choose_candidate(&all, None), Some(5));
        // Witnesses, learners, leaving, unhealthy and fenced members never.
        let all = vec![
            c(1, "a-0", &|x| x.witness = true),
            c(2, "a-1", &|x| x.voter = false),
            c(3, "a-2", &|x| x.leaving = true),
            c(4, "a-3", &|x| x.healthy = false),
            c(7, "a-4", &|x| x.fenced = true),
        ];
        assert_eq!(choose_candidate(&all, None), None);
        // The coordinator only if it is the only one.
        let all = vec![
            c(5, "a-0", &|x| x.is_coordinator = true),
            c(6, "a-1", &|_| {}),
        ];
        assert_eq!(choose_candidate(&all, None), Some(6));
        assert_eq!(choose_candidate(&all, Some(6)), Some(5));
    }

    #[test]
    fn a_fenced_member_is_never_chosen_and_the_last_candidate_is_not_fenced() {
        let fence = |id: NodeId| {
            Action::Propose(GroupCommand::SetFenced {
                member: MemberName {
                    id,
                    name: format!("m-{id}"),
                },
                fenced: true,
            })
        };
        let (mut c, mut state, roster) = leading(0);
        apply(&mut c, &mut state, &roster, &[fence(2)]);
        for id in [1, 2, 3] {
            c.on_report(0, id, healthy());
        }
        // Member 2 would be first (lowest ordinal that is not the coordinator).
        let a = c.tick(1, 0);
        assert_eq!(appointed(&a), Some((3, 1)));
        apply(&mut c, &mut state, &roster, &a);
        assert!(
            c.switchover_target_ok(2, 2)
                .is_err_and(|e| e.contains("fenced"))
        );
        // Member 1 may be fenced (3 stays); then 3 is the last unfenced healthy one.
        assert_eq!(c.fence_ok(2, 1), Ok(()));
        apply(&mut c, &mut state, &roster, &[fence(1)]);
        let refused = c.fence_ok(3, 3).expect_err("the only candidate left");
        assert!(refused.contains("no healthy, unfenced member"), "{refused}");
    }

    // --- Property: a coordinator never lets two leases overlap -------------------------------

    #[derive(Clone, Debug)]
    enum Ev {
        Advance(u64),
        Report(NodeId, bool, bool),
        Ack,
        Tick,
        Lead(bool),
    }

    fn arb_ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (1u64..300).prop_map(Ev::Advance),
            (1u64..4, any::<bool>(), any::<bool>())
                .prop_map(|(id, ok, rel)| Ev::Report(id, ok, rel)),
            Just(Ev::Ack),
            Just(Ev::Tick),
            prop::bool::weighted(0.9).prop_map(Ev::Lead),
        ]
    }

    proptest! {
        /// Whatever the order of reports, confirmations, leadership changes and ticks, a new
        /// appointment is proposed only after every grant this coordinator gave for the previous
        /// epoch (counted from the report time) has ended plus the margin, or after a release.
        #[test]
        fn appointments_never_overlap_granted_leases(events in proptest::collection::vec(arb_ev(), 1..200)) {
            let (mut c, mut state, roster) = leading(0);
            let mut now = 0u64;
            let mut term = 1u64;
            let mut lead_since = 0u64;
            let mut grant_end: BTreeMap<u64, u64> = BTreeMap::new();
            let mut released: BTreeMap<u64, bool> = BTreeMap::new();
            let mut released_by: BTreeMap<NodeId, u64> = BTreeMap::new();
            for ev in events {
                match ev {
                    Ev::Advance(d) => now += d,
                    Ev::Report(id, ok, rel) => {
                        let mut r = healthy();
                        r.workload_healthy = ok;
                        if rel && state.primary_id() == Some(id) {
                            released_by.insert(id, state.epoch);
                            released.insert(state.epoch, true);
                        }
                        // A member keeps reporting the highest epoch it gave back.
                        if let Some(e) = released_by.get(&id) {
                            r.released_epoch = *e;
                            r.release_reason = Some(ReleaseReason::WorkloadUnhealthy);
                        }
                        if let Some(g) = c.on_report(now, id, r).grant {
                            prop_assert_eq!(Some(id), state.primary_id());
                            prop_assert!(!released.get(&g.epoch).copied().unwrap_or(false));
                            let e = grant_end.entry(g.epoch).or_insert(0);
                            *e = (*e).max(now + g.remaining_millis);
                        }
                    }
                    Ev::Ack => c.on_quorum_ack(term, now),
                    Ev::Tick => {
                        let actions = c.tick(now, now as i64);
                        for a in &actions {
                            if let Action::Propose(GroupCommand::Appoint { epoch, .. }) = a {
                                let prev = epoch - 1;
                                if prev > 0 && !released.get(&prev).copied().unwrap_or(false) {
                                    let end = grant_end.get(&prev).copied().unwrap_or(0);
                                    prop_assert!(now >= end + MARGIN, "appointed {} at {} but lease {} ran to {}", epoch, now, prev, end);
                                    prop_assert!(now >= lead_since + LEASE + MARGIN);
                                }
                            }
                        }
                        for a in &actions {
                            if let Action::Propose(cmd) = a {
                                prop_assert_eq!(state.apply(cmd), CommandOutcome::Applied);
                            }
                        }
                        c.on_applied(now, &state, &roster);
                        c.on_proposal_done();
                    }
                    Ev::Lead(keep) => {
                        if !keep {
                            c.on_raft_status(now, false, term, false);
                            term += 1;
                            lead_since = now;
                            c.on_raft_status(now, true, term, true);
                        }
                    }
                }
            }
        }
    }
}
