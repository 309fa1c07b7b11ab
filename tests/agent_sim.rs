//! Deterministic simulation of the group protocol: the agent's real sans-IO core
//! (`quorate::agent::core::AgentCore`, the value the `quorate-agent` binary runs) on every node,
//! on top of a simulated Raft (elections, log replication, heartbeat quorum confirmations) and a
//! simulated network, under random crashes, pauses (SIGSTOP), partitions, one-way loss, workload
//! failures, graceful stops, switchovers and clock-rate drift within the configured bound.
//!
//! The simulation only stands in for IO: it delivers each [`Effect`] the core returns the way
//! the runtime (`agent::node`) does — a report becomes a message to the coordinator's core and
//! its answer (or a time-out, never both) comes back as `ReportAnswered`; a quorum confirmation
//! is a heartbeat round; a proposal is a log entry whose commit (or loss) comes back as
//! `ProposalDone`; a role publication completes after a short delay — and it fires the core's
//! one timer at `next_deadline`. So a bug in the wiring between report, grant, release and
//! appointment fails a seed here.
//!
//! Checked on every event: invariant 1 (at most one live primary at any real instant, each
//! judged on its own drifting clock), invariant 2 (epochs never regress, one member per epoch)
//! and invariant 3 (committed entries are never lost or changed). After the faults heal, the
//! group must have a live primary again (the protocol is not vacuously safe).
//!
//! A third of the seeds run *supervised* members: next to every agent the real supervisor core
//! (`quorate::supervisor::core::SupervisorCore`, what `quorate-run` runs) polls the agent's
//! `/role` answer every 50 ms, runs simulated hooks (join, promote, demote, position) that take
//! time and may fail, and reports back over a simulated loopback. Its workload's writes are what
//! a user sees, so on those seeds invariant 1 is also checked from the workload's side: at most
//! one workload may accept writes (is primary or being promoted) at any real instant. Extra
//! faults there: promote hooks that fail, and the workload container crashing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use quorate::agent::coordinator::{MemberReport, ReportDecision};
use quorate::agent::core::{
    AgentCore, CoreSettings, Effect, Input, Now, Reply, ReplyTo, ReportAnswer,
};
use quorate::agent::group::{
    GroupCommand, GroupConfig, MemberNode, Mode, NodeId, ReplicatedState, Roster, RosterEntry,
};
use quorate::agent::health::HealthStatus;
use quorate::agent::lease::LeaseTransition;
use quorate::agent::raft::{AppliedState, RaftStatus};
use quorate::agent::timing::{MAX_CLOCK_RATE_ERROR, report_interval_millis};
use quorate::api::{FenceMode, HookKind};
use quorate::supervisor::core::{Action, Declared, SupervisorCore};
use quorate::supervisor::protocol::{HookOutcome, WorkloadReport};

const LEASE: u64 = 1000;
const HEARTBEAT: u64 = 100;
const SIM_MILLIS: u64 = 14_000;
const FAULTS_UNTIL: u64 = 8_000;
const HEAL_AT: u64 = 9_000;
/// A failed promote keeps a member out for 10 s: the last such fault comes early enough for the
/// group to have candidates again before the end.
const PROMOTE_FAULTS_UNTIL: u64 = 2_500;
/// The supervisor's poll of `/role` (`supervisor::run::POLL_MILLIS`) and the loopback delay.
const POLL_US: u64 = 50_000;
const LOOPBACK_US: u64 = 500;

/// SplitMix64: small, deterministic, good enough for fault schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug)]
struct Entry {
    term: u64,
    command: Option<GroupCommand>,
}

#[derive(Clone, Debug)]
enum Msg {
    Vote {
        term: u64,
        last_term: u64,
        last_index: usize,
    },
    VoteReply {
        term: u64,
        granted: bool,
    },
    Append {
        term: u64,
        log: Vec<Entry>,
        commit: usize,
        sent_at: u64,
    },
    AppendReply {
        term: u64,
        ok: bool,
        matched: usize,
        sent_at: u64,
    },
    Report {
        sent_at: u64,
        report: MemberReport,
    },
    ReportReply {
        sent_at: u64,
        decision: ReportDecision,
    },
    Demote {
        epoch: u64,
    },
    DemoteReply {
        epoch: u64,
    },
}

#[derive(Clone, Debug)]
enum Event {
    /// The simulated Raft's periodic work (elections, heartbeats) of node, incarnation.
    Tick(usize, u64),
    /// The core's timer: node, incarnation, timer generation (a newer one supersedes it).
    CoreTimer(usize, u64, u64),
    /// The runtime gives up waiting for an answer: node, incarnation, what.
    Timeout(usize, u64, Pending),
    /// A role publication finished: node, incarnation, seq.
    Published(usize, u64, u64),
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    Fault,
    Heal,
    Restart(usize),
    Resume(usize),
    Unpartition(usize),
    Recover(usize),
    /// The supervisor reads its agent's `/role`: node, supervisor incarnation.
    SupPoll(usize, u64),
    /// The supervisor's timer: node, supervisor incarnation, generation.
    SupTimer(usize, u64, u64),
    /// A hook run ended (or its process group was killed): node, supervisor incarnation, run.
    HookDone(usize, u64, u64),
    /// A supervisor report reaches the agent over the pod's loopback.
    SupReport(usize, Box<WorkloadReport>),
    /// The supervisor repeats its latest report: node, supervisor incarnation.
    SupRepeat(usize, u64),
    /// The workload container starts again.
    SupRestart(usize),
    PromoteHeals(usize),
}

/// The supervisor next to a node's agent and the workload it runs.
struct Sup {
    core: SupervisorCore,
    incarnation: u64,
    generation: u64,
    /// Hook runs in flight: run → (hook, epoch, started on the node's clock).
    runs: BTreeMap<u64, (HookKind, u64, u64)>,
    cancelled: BTreeSet<u64>,
    workload_up: bool,
    /// The report the runtime repeats.
    last_report: Option<WorkloadReport>,
}

/// An answer a node's runtime waits for; exactly one of the answer and the time-out arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Report { sent_at: u64 },
    Confirm { sent_at: u64 },
    Demotion { member: NodeId, epoch: u64 },
}

/// A peer's request the core answers later (`Effect::Reply`).
#[derive(Clone, Copy, Debug)]
enum Asked {
    Report { from: usize, sent_at: u64 },
    Demote { from: usize, epoch: u64 },
}

#[derive(PartialEq, Eq)]
enum RaftRole {
    Follower,
    Candidate(BTreeSet<usize>),
    Leader {
        matched: BTreeMap<usize, usize>,
        /// Heartbeat rounds by send time: who acknowledged.
        rounds: BTreeMap<u64, BTreeSet<usize>>,
    },
}

struct Node {
    id: NodeId,
    rate: f64,
    offset: f64,
    up: bool,
    incarnation: u64,
    paused_until: Option<u64>,
    /// A graceful stop is under way: the node goes down at `ShutdownDone`.
    stopping: Option<u64>,
    // Durable.
    term: u64,
    voted_for: Option<usize>,
    log: Vec<Entry>,
    // Volatile Raft.
    role: RaftRole,
    leader: Option<usize>,
    commit: usize,
    applied: usize,
    state: ReplicatedState,
    election_deadline: u64,
    next_heartbeat: u64,
    elections_allowed: bool,
    /// Periodic heartbeats of a leader (off while the primary steps aside).
    heartbeats: bool,
    // The agent.
    core: AgentCore,
    healthy: bool,
    timer_generation: u64,
    pending: BTreeSet<Pending>,
    asked: BTreeMap<ReplyTo, Asked>,
    next_reply: u64,
    /// Proposals awaiting their outcome: (log index, term).
    proposals: Vec<(usize, u64)>,
    last_status: Option<RaftStatus>,
    last_applied: Option<AppliedState>,
    // The workload container (supervised seeds only; None while it is down).
    sup: Option<Sup>,
    sup_incarnation: u64,
    promote_fails: bool,
}

struct Sim {
    rng: Rng,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    roster: Roster,
    blocked: BTreeSet<(usize, usize)>,
    /// Invariant 2: epoch → member.
    epochs: BTreeMap<u64, NodeId>,
    /// Invariant 3: the committed log as far as any leader committed it.
    committed: Vec<(u64, Option<GroupCommand>)>,
    stats: Stats,
    supervised: bool,
    fence: FenceMode,
    /// A control: supervisors that claim their workload is never primary (the agent then
    /// confirms releases too early). Only the checker's own test sets it.
    lying_supervisors: bool,
}

#[derive(Default, Debug)]
struct Stats {
    promotions: u64,
    appointments: u64,
    graceful_stops: u64,
    workload_promotions: u64,
    failed_promotes: u64,
    workload_crashes: u64,
}

fn config() -> GroupConfig {
    GroupConfig {
        mode: Mode::PrimaryBackup,
        lease_millis: LEASE,
        max_failovers_per_hour: 100_000,
    }
}

fn health(healthy: bool) -> HealthStatus {
    HealthStatus {
        healthy,
        ..HealthStatus::unchecked_healthy()
    }
}

fn new_core(id: NodeId, i: usize, healthy: bool, now: Now, supervised: bool) -> AgentCore {
    AgentCore::new(
        CoreSettings {
            id,
            member: format!("m-{i}"),
            advertise: format!("m-{i}:7470"),
            witness: false,
            priority: 50,
            initial_config: config(),
            supervised,
        },
        health(healthy),
        now,
    )
}

fn declared(fence: FenceMode) -> Declared {
    Declared {
        join: true,
        promote: true,
        demote: true,
        position: true,
        health: false,
        fence,
        health_period_millis: 1000,
        health_failure_threshold: 3,
        position_period_millis: 1000,
    }
}

impl Sim {
    fn new(seed: u64, n: usize) -> Self {
        Self::with(seed, n, false)
    }

    fn with(seed: u64, n: usize, supervised: bool) -> Self {
        let mut rng = Rng(seed);
        let mut roster = Roster::default();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = 100 + i as u64;
            roster.members.insert(
                id,
                RosterEntry {
                    node: MemberNode {
                        name: format!("m-{i}"),
                        address: format!("m-{i}:7470"),
                        witness: false,
                    },
                    voter: true,
                },
            );
            // Clock rates anywhere within the bound the margin is designed for.
            let rate = 1.0 + MAX_CLOCK_RATE_ERROR * (2.0 * rng.unit() - 1.0);
            let offset = rng.range(0, 1_000_000) as f64;
            let start = Now {
                mono: offset as u64,
                unix: 0,
            };
            nodes.push(Node {
                id,
                rate,
                offset,
                up: true,
                incarnation: 0,
                paused_until: None,
                stopping: None,
                term: 0,
                voted_for: None,
                log: Vec::new(),
                role: RaftRole::Follower,
                leader: None,
                commit: 0,
                applied: 0,
                state: ReplicatedState::default(),
                election_deadline: 0,
                next_heartbeat: 0,
                elections_allowed: true,
                heartbeats: true,
                core: new_core(id, i, true, start, supervised),
                healthy: true,
                timer_generation: 0,
                pending: BTreeSet::new(),
                asked: BTreeMap::new(),
                next_reply: 0,
                proposals: Vec::new(),
                last_status: None,
                last_applied: None,
                sup: None,
                sup_incarnation: 0,
                promote_fails: false,
            });
        }
        let mut sim = Sim {
            rng,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            roster,
            blocked: BTreeSet::new(),
            epochs: BTreeMap::new(),
            committed: Vec::new(),
            stats: Stats::default(),
            supervised,
            fence: if seed.is_multiple_of(2) {
                FenceMode::Demote
            } else {
                FenceMode::Kill
            },
            lying_supervisors: false,
        };
        for i in 0..n {
            let jitter = sim.rng.range(0, 20_000);
            sim.schedule(jitter, Event::Tick(i, 0));
            let now = sim.local(i);
            sim.nodes[i].election_deadline = now + sim.rng.range(300, 600);
            if supervised {
                sim.sup_start(i);
            }
        }
        let first = sim.rng.range(500_000, 1_000_000);
        sim.schedule(first, Event::Fault);
        sim.schedule(HEAL_AT * 1000, Event::Heal);
        sim
    }

    fn schedule(&mut self, after_us: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now_us + after_us, self.seq)));
        self.events.insert(self.seq, e);
    }

    /// Node `i`'s monotonic clock (ms) at the current real time.
    fn local(&self, i: usize) -> u64 {
        let n = &self.nodes[i];
        (n.offset + self.now_us as f64 / 1000.0 * n.rate) as u64
    }

    /// Real microseconds from now until node `i`'s clock shows `local_ms`.
    fn until_local(&self, i: usize, local_ms: u64) -> u64 {
        let n = &self.nodes[i];
        let real_us = ((local_ms as f64 - n.offset) / n.rate * 1000.0)
            .ceil()
            .max(0.0) as u64;
        real_us.saturating_sub(self.now_us)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.blocked.contains(&(from, to)) {
            return;
        }
        let delay = self.rng.range(300, 12_000);
        self.schedule(delay, Event::Deliver { from, to, msg });
    }

    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn run(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.sync(i)?;
        }
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if t > SIM_MILLIS * 1000 {
                break;
            }
            self.now_us = t;
            let Some(e) = self.events.remove(&seq) else {
                continue;
            };
            self.handle(e)?;
        }
        self.check_liveness()
    }

    fn running(&self, i: usize, incarnation: u64) -> bool {
        self.nodes[i].up && self.nodes[i].incarnation == incarnation
    }

    fn handle(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::Tick(i, incarnation) => {
                if self.running(i, incarnation) {
                    if self.nodes[i].paused_until.is_none() {
                        self.raft_tick(i)?;
                    }
                    self.schedule(10_000, Event::Tick(i, incarnation));
                }
            }
            Event::CoreTimer(i, incarnation, generation) => {
                if self.running(i, incarnation) && self.nodes[i].timer_generation == generation {
                    match self.nodes[i].paused_until {
                        // A stopped process fires its timer when it resumes.
                        Some(until) => {
                            let wait = until.saturating_sub(self.now_us) + 1;
                            self.schedule(wait, Event::CoreTimer(i, incarnation, generation));
                        }
                        None => self.feed(i, Input::Tick)?,
                    }
                }
            }
            Event::Timeout(i, incarnation, what) => {
                if self.running(i, incarnation) {
                    if let Some(until) = self.nodes[i].paused_until {
                        let wait = until.saturating_sub(self.now_us) + 1;
                        self.schedule(wait, Event::Timeout(i, incarnation, what));
                    } else if self.nodes[i].pending.remove(&what) {
                        let input = match what {
                            Pending::Report { sent_at } => Input::ReportAnswered {
                                sent_at,
                                answer: None,
                            },
                            Pending::Confirm { sent_at } => Input::QuorumConfirmed {
                                term: self.nodes[i].term,
                                sent_at,
                                confirmed: false,
                            },
                            Pending::Demotion { member, epoch } => Input::DemotionAnswered {
                                member,
                                epoch,
                                released: false,
                            },
                        };
                        self.feed(i, input)?;
                    }
                }
            }
            Event::Published(i, incarnation, seq) => {
                if self.running(i, incarnation) {
                    match self.nodes[i].paused_until {
                        Some(until) => {
                            let wait = until.saturating_sub(self.now_us) + 1;
                            self.schedule(wait, Event::Published(i, incarnation, seq));
                        }
                        None => self.feed(i, Input::Published { seq })?,
                    }
                }
            }
            Event::Deliver { from, to, msg } => {
                if self.blocked.contains(&(from, to)) || !self.nodes[to].up {
                    return Ok(());
                }
                if let Some(until) = self.nodes[to].paused_until {
                    // A stopped process reads its socket buffers when it resumes.
                    let wait = until.saturating_sub(self.now_us) + 1;
                    self.schedule(wait, Event::Deliver { from, to, msg });
                    return Ok(());
                }
                self.deliver(from, to, msg)?;
                self.sync(to)?;
            }
            Event::Fault => {
                self.inject_fault()?;
                if self.now_us < FAULTS_UNTIL * 1000 {
                    let next = self.rng.range(200_000, 900_000);
                    self.schedule(next, Event::Fault);
                }
            }
            Event::Heal => {
                self.blocked.clear();
                for i in 0..self.nodes.len() {
                    if !self.nodes[i].up {
                        self.restart(i)?;
                    }
                    self.nodes[i].paused_until = None;
                    self.set_health(i, true)?;
                    self.nodes[i].promote_fails = false;
                    if self.supervised && self.nodes[i].sup.is_none() {
                        self.sup_start(i);
                    }
                }
            }
            Event::Restart(i) => {
                if !self.nodes[i].up {
                    self.restart(i)?;
                }
            }
            Event::Resume(i) => {
                if self.nodes[i].paused_until.is_some_and(|u| u <= self.now_us) {
                    self.nodes[i].paused_until = None;
                }
            }
            Event::Unpartition(i) => {
                self.blocked.retain(|(a, b)| *a != i && *b != i);
            }
            Event::Recover(i) => self.set_health(i, true)?,
            Event::SupPoll(i, inc) => {
                if self.sup_alive(i, inc) {
                    // A stopped or dead agent does not answer: the poll times out.
                    if self.nodes[i].up && self.nodes[i].paused_until.is_none() {
                        let now = self.local(i);
                        let role = self.nodes[i].core.agent_role(now);
                        let actions = match self.nodes[i].sup.as_mut() {
                            Some(sup) => {
                                let actions = sup.core.on_agent(role, now);
                                // The repeated report carries the latest answer seen.
                                let (a, r) = sup.core.role_seen();
                                if let Some(last) = sup.last_report.as_mut() {
                                    last.role_seen_incarnation = a;
                                    last.role_seen_revision = r;
                                }
                                actions
                            }
                            None => Vec::new(),
                        };
                        self.sup_perform(i, actions)?;
                    }
                    self.schedule(POLL_US, Event::SupPoll(i, inc));
                }
            }
            Event::SupTimer(i, inc, generation) => {
                if self.sup_alive(i, inc)
                    && self.nodes[i].sup.as_ref().map(|s| s.generation) == Some(generation)
                {
                    let now = self.local(i);
                    let actions = match self.nodes[i].sup.as_mut() {
                        Some(sup) => sup.core.on_tick(now),
                        None => Vec::new(),
                    };
                    self.sup_perform(i, actions)?;
                }
            }
            Event::HookDone(i, inc, run) => {
                if self.sup_alive(i, inc) {
                    self.hook_done(i, run)?;
                }
            }
            Event::SupReport(i, report) => {
                if self.nodes[i].up && self.nodes[i].paused_until.is_none() {
                    self.feed(i, Input::Workload(*report))?;
                }
            }
            Event::SupRepeat(i, inc) => {
                if self.sup_alive(i, inc) {
                    let last = self.nodes[i]
                        .sup
                        .as_ref()
                        .and_then(|s| s.last_report.clone());
                    if let Some(r) = last {
                        self.schedule(LOOPBACK_US, Event::SupReport(i, Box::new(r)));
                    }
                    let every = quorate::supervisor::core::REPORT_INTERVAL_MILLIS * 1000;
                    self.schedule(every, Event::SupRepeat(i, inc));
                }
            }
            Event::SupRestart(i) => {
                if self.nodes[i].sup.is_none() {
                    self.sup_start(i);
                }
            }
            Event::PromoteHeals(i) => self.nodes[i].promote_fails = false,
        }
        Ok(())
    }

    // --- the supervisor and its workload (supervised seeds) -----------------------------------

    fn sup_alive(&self, i: usize, incarnation: u64) -> bool {
        self.nodes[i].sup.is_some() && self.nodes[i].sup_incarnation == incarnation
    }

    /// The workload container starts: a new supervisor, nothing applied yet.
    fn sup_start(&mut self, i: usize) {
        self.nodes[i].sup_incarnation += 1;
        let incarnation = self.nodes[i].sup_incarnation;
        self.nodes[i].sup = Some(Sup {
            core: SupervisorCore::new(declared(self.fence)),
            incarnation,
            generation: 0,
            runs: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            workload_up: false,
            last_report: None,
        });
        let jitter = self.rng.range(1, POLL_US);
        self.schedule(jitter, Event::SupPoll(i, incarnation));
        let jitter = self.rng.range(1, 200_000);
        self.schedule(jitter, Event::SupRepeat(i, incarnation));
    }

    fn hook_done(&mut self, i: usize, run: u64) -> Result<(), String> {
        let now = self.local(i);
        let promote_fails = self.nodes[i].promote_fails;
        let Some(sup) = self.nodes[i].sup.as_mut() else {
            return Ok(());
        };
        // A cancelled run ends twice (killed, and its own end): only the first counts.
        let Some((hook, epoch, started)) = sup.runs.remove(&run) else {
            return Ok(());
        };
        let killed = sup.cancelled.remove(&run);
        let ok = !(killed || (hook == HookKind::Promote && promote_fails));
        match (hook, ok) {
            (HookKind::Promote, true) => self.stats.workload_promotions += 1,
            (HookKind::Promote, false) if !killed => self.stats.failed_promotes += 1,
            _ => {}
        }
        let outcome = HookOutcome {
            hook,
            epoch,
            ok,
            exit_code: (!killed).then_some(if ok { 0 } else { 1 }),
            duration_millis: now.saturating_sub(started),
            message: match (killed, ok) {
                (true, _) => "timed out after 1000 ms and was killed".into(),
                (false, false) => "exited with code 1".into(),
                (false, true) => String::new(),
            },
            output: String::new(),
        };
        // The simulated workload's replication position: a monotone function of time is
        // enough here (the coordinator's position rounds run; their choice is unit-tested).
        let stdout = (self.now_us / 1000).to_string();
        let actions = sup.core.on_hook_done(run, outcome, stdout.as_bytes(), now);
        self.sup_perform(i, actions)
    }

    /// Carries out the supervisor's actions the way `supervisor::run` does, re-arms its timer,
    /// and checks invariant 1 from the workloads' side.
    fn sup_perform(&mut self, i: usize, actions: Vec<Action>) -> Result<(), String> {
        let now = self.local(i);
        for action in actions {
            let Some(sup) = self.nodes[i].sup.as_mut() else {
                break;
            };
            let incarnation = sup.incarnation;
            match action {
                Action::Run { run, hook, env } => {
                    sup.runs.insert(run, (hook, env.epoch, now));
                    let ms = match hook {
                        HookKind::Join => self.rng.range(1, 20),
                        // Redis' hooks take a few ms, PostgreSQL's up to seconds.
                        HookKind::Promote | HookKind::Demote => self.rng.range(1, 300),
                        HookKind::Position | HookKind::Health => self.rng.range(1, 5),
                    };
                    self.schedule(ms * 1000, Event::HookDone(i, incarnation, run));
                }
                Action::Cancel { run } => {
                    sup.cancelled.insert(run);
                    self.schedule(1000, Event::HookDone(i, incarnation, run));
                }
                Action::StartWorkload => sup.workload_up = true,
                Action::KillWorkload { .. } => {
                    // The workload is gone at once; the supervisor says so and exits, and the
                    // container restarts.
                    sup.workload_up = false;
                    sup.core.on_workload_exited();
                    let last = sup.core.report();
                    self.nodes[i].sup = None;
                    self.stats.workload_crashes += 1;
                    self.schedule(LOOPBACK_US, Event::SupReport(i, Box::new(last)));
                    let after = self.rng.range(200_000, 1_000_000);
                    self.schedule(after, Event::SupRestart(i));
                }
                Action::Report(mut report) => {
                    if self.lying_supervisors {
                        report.primary_epoch = None;
                    }
                    sup.last_report = Some(report.clone());
                    self.schedule(LOOPBACK_US, Event::SupReport(i, Box::new(report)));
                }
            }
        }
        if let Some(sup) = self.nodes[i].sup.as_mut() {
            sup.generation += 1;
            let e = Event::SupTimer(i, sup.incarnation, sup.generation);
            let deadline = sup.core.next_deadline(now);
            let after = self.until_local(i, deadline);
            self.schedule(after.max(1), e);
        }
        self.check_workloads()
    }

    /// Invariant 1 from the workloads' side: at most one accepts writes (is primary, or is
    /// being promoted and may already be) at any real instant.
    fn check_workloads(&self) -> Result<(), String> {
        let writable: Vec<(usize, u64)> = (0..self.nodes.len())
            .filter_map(|i| {
                let sup = self.nodes[i].sup.as_ref()?;
                if !sup.workload_up {
                    return None;
                }
                sup.core.report().primary_epoch.map(|e| (i, e))
            })
            .collect();
        if writable.len() > 1 {
            return Err(format!(
                "two workloads accept writes at {} us: (node, epoch) {writable:?}",
                self.now_us
            ));
        }
        Ok(())
    }

    fn set_health(&mut self, i: usize, healthy: bool) -> Result<(), String> {
        if self.nodes[i].healthy == healthy {
            return Ok(());
        }
        self.nodes[i].healthy = healthy;
        if self.nodes[i].up {
            self.feed(i, Input::Health(health(healthy)))?;
        }
        Ok(())
    }

    fn inject_fault(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        let victim = match self.rng.range(0, 3) {
            // Aim at the primary or the coordinator more often than not: that is where it hurts.
            0 => (0..n).find(|i| {
                self.nodes[*i].up && self.nodes[*i].core.live_epoch(self.local(*i)).is_some()
            }),
            1 => (0..n).find(|i| self.is_leader(*i)),
            _ => None,
        }
        .unwrap_or_else(|| self.rng.range(0, n as u64) as usize);
        let duration = self.rng.range(100_000, 3_000_000);
        let kinds = if self.supervised { 9 } else { 7 };
        match self.rng.range(0, kinds) {
            0 => {
                // kill -9: volatile state is gone, durable Raft state stays.
                self.kill(victim);
                self.schedule(duration, Event::Restart(victim));
            }
            1 => {
                self.nodes[victim].paused_until = Some(self.now_us + duration);
                self.schedule(duration, Event::Resume(victim));
            }
            2 => {
                for j in 0..n {
                    if j != victim {
                        self.blocked.insert((victim, j));
                        self.blocked.insert((j, victim));
                    }
                }
                self.schedule(duration, Event::Unpartition(victim));
            }
            3 => {
                // One-way loss: the victim hears others but cannot answer.
                for j in 0..n {
                    if j != victim {
                        self.blocked.insert((victim, j));
                    }
                }
                self.schedule(duration, Event::Unpartition(victim));
            }
            4 => {
                self.set_health(victim, false)?;
                self.schedule(duration, Event::Recover(victim));
            }
            5 => {
                // SIGTERM: the agent hands off and exits, then the pod comes back.
                let v = &mut self.nodes[victim];
                if v.up && v.paused_until.is_none() && v.stopping.is_none() {
                    v.stopping = Some(duration);
                    self.feed(victim, Input::Shutdown)?;
                }
            }
            7 if self.now_us < PROMOTE_FAULTS_UNTIL * 1000 => {
                // The workload cannot be promoted for a while (its promote hook fails).
                self.nodes[victim].promote_fails = true;
                self.schedule(duration, Event::PromoteHeals(victim));
            }
            8 => {
                // The workload container crashes (the agent keeps running) and restarts.
                if self.nodes[victim].sup.take().is_some() {
                    self.stats.workload_crashes += 1;
                    self.schedule(duration, Event::SupRestart(victim));
                }
            }
            7 => {}
            _ => {
                // A planned switchover through whoever leads.
                if let Some(l) = (0..n).find(|i| self.nodes[*i].up && self.is_leader(*i)) {
                    let epoch = self.nodes[l].state.epoch;
                    if self.nodes[l].state.primary.is_some() {
                        let now = self.local(l);
                        let term = self.nodes[l].term;
                        self.nodes[l].log.push(Entry {
                            term,
                            command: Some(GroupCommand::BeginSwitchover {
                                epoch,
                                target: None,
                                requested_at_unix_millis: now as i64,
                            }),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
        self.nodes[i].stopping = None;
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let now = self.local(i);
        let deadline = now + self.rng.range(300, 600);
        let healthy = self.nodes[i].healthy;
        let n = &mut self.nodes[i];
        n.up = true;
        n.incarnation += 1;
        let incarnation = n.incarnation;
        n.paused_until = None;
        n.stopping = None;
        n.role = RaftRole::Follower;
        n.leader = None;
        n.commit = 0;
        n.applied = 0;
        n.state = ReplicatedState::default();
        n.election_deadline = deadline;
        n.elections_allowed = true;
        n.heartbeats = true;
        n.core = new_core(
            n.id,
            i,
            healthy,
            Now {
                mono: now,
                unix: (self.now_us / 1000) as i64,
            },
            self.supervised,
        );
        n.pending.clear();
        n.asked.clear();
        n.proposals.clear();
        n.last_status = None;
        n.last_applied = None;
        self.schedule(1, Event::Tick(i, incarnation));
        self.sync(i)
    }

    fn is_leader(&self, i: usize) -> bool {
        matches!(self.nodes[i].role, RaftRole::Leader { .. })
    }

    // --- the agent core and its effects --------------------------------------------------------

    /// Feeds `input` to node `i`'s core, carries out the effects, re-arms its timer.
    fn feed(&mut self, i: usize, input: Input) -> Result<(), String> {
        let now = Now {
            mono: self.local(i),
            unix: (self.now_us / 1000) as i64,
        };
        let effects = self.nodes[i].core.handle(input, now);
        for effect in effects {
            self.perform(i, effect)?;
        }
        if self.nodes[i].up {
            let deadline = self.nodes[i].core.next_deadline();
            let after = self.until_local(i, deadline);
            let n = &mut self.nodes[i];
            n.timer_generation += 1;
            let e = Event::CoreTimer(i, n.incarnation, n.timer_generation);
            self.schedule(after.max(1), e);
        }
        Ok(())
    }

    fn perform(&mut self, i: usize, effect: Effect) -> Result<(), String> {
        let incarnation = self.nodes[i].incarnation;
        match effect {
            Effect::SendReport {
                to,
                report,
                sent_at,
                ..
            } => {
                let Some(j) = self.index_of(to) else {
                    return Err(format!("node {i} reports to unknown node {to}"));
                };
                self.nodes[i].pending.insert(Pending::Report { sent_at });
                let timeout = self.until_local(i, sent_at + report_interval_millis(LEASE));
                self.schedule(
                    timeout.max(1),
                    Event::Timeout(i, incarnation, Pending::Report { sent_at }),
                );
                self.send(i, j, Msg::Report { sent_at, report });
            }
            Effect::ConfirmQuorum { .. } => {
                if self.is_leader(i) {
                    let sent_at = self.local(i);
                    self.nodes[i].pending.insert(Pending::Confirm { sent_at });
                    let timeout = self.until_local(i, sent_at + LEASE / 2);
                    self.schedule(
                        timeout.max(1),
                        Event::Timeout(i, incarnation, Pending::Confirm { sent_at }),
                    );
                    self.broadcast_append(i, sent_at)?;
                } else {
                    let sent_at = self.local(i);
                    let term = self.nodes[i].term;
                    self.feed(
                        i,
                        Input::QuorumConfirmed {
                            term,
                            sent_at,
                            confirmed: false,
                        },
                    )?;
                }
            }
            Effect::Propose(command) => {
                if !self.is_leader(i) {
                    let applied = self.applied_state(i);
                    return self.feed(
                        i,
                        Input::ProposalDone {
                            applied,
                            succeeded: false,
                        },
                    );
                }
                if matches!(command, GroupCommand::Appoint { .. }) {
                    self.stats.appointments += 1;
                }
                let term = self.nodes[i].term;
                self.nodes[i].log.push(Entry {
                    term,
                    command: Some(command),
                });
                let index = self.nodes[i].log.len();
                self.nodes[i].proposals.push((index, term));
                let now = self.local(i);
                self.broadcast_append(i, now)?;
            }
            Effect::RequestDemotion { member, epoch, .. } => {
                let Some(j) = self.index_of(member) else {
                    return Err(format!("node {i} asks unknown node {member} to demote"));
                };
                let what = Pending::Demotion { member, epoch };
                self.nodes[i].pending.insert(what);
                let timeout = self.until_local(i, self.local(i) + LEASE);
                self.schedule(timeout.max(1), Event::Timeout(i, incarnation, what));
                self.send(i, j, Msg::Demote { epoch });
            }
            Effect::PublishRole { seq, .. } => {
                // The role file and callback take a moment.
                let delay = self.rng.range(100, 5_000);
                self.schedule(delay, Event::Published(i, incarnation, seq));
            }
            Effect::AllowElections(allowed) => self.nodes[i].elections_allowed = allowed,
            Effect::RaftHeartbeats(enabled) => self.nodes[i].heartbeats = enabled,
            Effect::Transition(t) => self.on_transition(i, t)?,
            Effect::Reply { to, reply } => {
                let Some(asked) = self.nodes[i].asked.remove(&to) else {
                    return Err(format!("node {i} answers {to:?}, which nobody asked"));
                };
                match (asked, reply) {
                    (Asked::Report { from, sent_at }, Reply::Report(decision)) => {
                        self.send(i, from, Msg::ReportReply { sent_at, decision });
                    }
                    (Asked::Demote { from, epoch }, Reply::Demoted) => {
                        self.send(i, from, Msg::DemoteReply { epoch });
                    }
                    (asked, reply) => {
                        return Err(format!("node {i} answers {asked:?} with {reply:?}"));
                    }
                }
            }
            Effect::ShutdownDone => {
                if let Some(down_for) = self.nodes[i].stopping.take() {
                    self.stats.graceful_stops += 1;
                    self.kill(i);
                    self.schedule(down_for, Event::Restart(i));
                }
            }
        }
        Ok(())
    }

    fn ask(&mut self, i: usize, asked: Asked) -> ReplyTo {
        let n = &mut self.nodes[i];
        n.next_reply += 1;
        let to = ReplyTo(n.next_reply);
        n.asked.insert(to, asked);
        to
    }

    fn applied_state(&self, i: usize) -> AppliedState {
        let n = &self.nodes[i];
        AppliedState {
            state: n.state.clone(),
            roster: self.roster.clone(),
            applied_index: n.applied as u64,
            applied_term: if n.applied > 0 {
                n.log[n.applied - 1].term
            } else {
                0
            },
        }
    }

    fn raft_status(&self, i: usize) -> RaftStatus {
        let n = &self.nodes[i];
        let ids: Vec<NodeId> = self.nodes.iter().map(|x| x.id).collect();
        RaftStatus {
            id: n.id,
            term: n.term,
            is_leader: self.is_leader(i),
            leader: n.leader.map(|l| ids[l]),
            last_log_index: n.log.len() as u64,
            applied_index: n.applied as u64,
            applied_term: if n.applied > 0 {
                n.log[n.applied - 1].term
            } else {
                0
            },
            replication: match &n.role {
                RaftRole::Leader { matched, .. } => {
                    matched.iter().map(|(j, m)| (ids[*j], *m as u64)).collect()
                }
                _ => BTreeMap::new(),
            },
            voters: ids.iter().copied().collect(),
            members: self
                .roster
                .members
                .iter()
                .map(|(id, e)| (*id, e.node.clone()))
                .collect(),
            in_membership: true,
        }
    }

    /// Tells node `i`'s core what changed in its Raft status and applied state (as the runtime
    /// passes only real changes).
    fn sync(&mut self, i: usize) -> Result<(), String> {
        if !self.nodes[i].up {
            return Ok(());
        }
        let status = self.raft_status(i);
        if self.nodes[i].last_status.as_ref() != Some(&status) {
            self.nodes[i].last_status = Some(status.clone());
            self.feed(i, Input::Raft(status))?;
        }
        let applied = self.applied_state(i);
        if self.nodes[i].last_applied.as_ref() != Some(&applied) {
            self.nodes[i].last_applied = Some(applied.clone());
            self.feed(i, Input::Applied(applied))?;
        }
        Ok(())
    }

    /// Invariant 1, checked whenever a lease becomes live or is extended.
    fn on_transition(&mut self, i: usize, t: LeaseTransition) -> Result<(), String> {
        if let LeaseTransition::Promoted { epoch, .. } | LeaseTransition::Renewed { epoch, .. } = t
        {
            if matches!(t, LeaseTransition::Promoted { .. }) {
                self.stats.promotions += 1;
            }
            for j in 0..self.nodes.len() {
                if j == i || !self.nodes[j].up {
                    continue;
                }
                let their_now = self.local(j);
                if let Some(other) = self.nodes[j].core.live_epoch(their_now) {
                    return Err(format!(
                        "two live primaries at {} us: node {i} epoch {epoch} and node {j} epoch {other}",
                        self.now_us
                    ));
                }
            }
        }
        Ok(())
    }

    // --- the simulated Raft --------------------------------------------------------------------

    fn raft_tick(&mut self, i: usize) -> Result<(), String> {
        let now = self.local(i);
        let n = self.nodes.len();
        if self.is_leader(i) {
            if self.nodes[i].heartbeats && now >= self.nodes[i].next_heartbeat {
                self.nodes[i].next_heartbeat = now + HEARTBEAT;
                self.broadcast_append(i, now)?;
            }
        } else if now >= self.nodes[i].election_deadline {
            let node = &mut self.nodes[i];
            node.election_deadline = now + 300 + self.rng.range(0, 300);
            if !node.elections_allowed {
                return self.sync(i);
            }
            // Start an election.
            node.term += 1;
            node.voted_for = Some(i);
            node.role = RaftRole::Candidate(BTreeSet::from([i]));
            node.leader = None;
            let term = node.term;
            let last_term = node.log.last().map_or(0, |e| e.term);
            let last_index = node.log.len();
            for j in 0..n {
                if j != i {
                    self.send(
                        i,
                        j,
                        Msg::Vote {
                            term,
                            last_term,
                            last_index,
                        },
                    );
                }
            }
            if self.majority() == 1 {
                self.become_leader(i, now)?;
            }
        }
        self.sync(i)
    }

    fn broadcast_append(&mut self, i: usize, now: u64) -> Result<(), String> {
        let n = self.nodes.len();
        let term = self.nodes[i].term;
        let log = self.nodes[i].log.clone();
        let commit = self.nodes[i].commit;
        if let RaftRole::Leader { rounds, .. } = &mut self.nodes[i].role {
            rounds.insert(now, BTreeSet::from([i]));
            // Keep only recent rounds.
            while rounds.len() > 64 {
                let first = *rounds.keys().next().unwrap_or(&0);
                rounds.remove(&first);
            }
        }
        self.maybe_commit(i)?;
        for j in 0..n {
            if j != i {
                self.send(
                    i,
                    j,
                    Msg::Append {
                        term,
                        log: log.clone(),
                        commit,
                        sent_at: now,
                    },
                );
            }
        }
        Ok(())
    }

    fn become_leader(&mut self, i: usize, now: u64) -> Result<(), String> {
        let n = self.nodes.len();
        let node = &mut self.nodes[i];
        let term = node.term;
        node.log.push(Entry {
            term,
            command: None,
        });
        let len = node.log.len();
        let mut matched = BTreeMap::new();
        for j in 0..n {
            matched.insert(j, if j == i { len } else { 0 });
        }
        node.role = RaftRole::Leader {
            matched,
            rounds: BTreeMap::new(),
        };
        node.leader = Some(i);
        node.next_heartbeat = now;
        self.broadcast_append(i, now)
    }

    fn step_down(&mut self, i: usize, term: u64) -> Result<(), String> {
        let node = &mut self.nodes[i];
        if term > node.term {
            node.term = term;
            node.voted_for = None;
        }
        if !matches!(node.role, RaftRole::Follower) {
            node.role = RaftRole::Follower;
            node.leader = None;
        }
        // A leader that lost its term answers its pending proposals with an error.
        if !node.proposals.is_empty() {
            node.proposals.clear();
            let applied = self.applied_state(i);
            self.feed(
                i,
                Input::ProposalDone {
                    applied,
                    succeeded: false,
                },
            )?;
        }
        Ok(())
    }

    fn maybe_commit(&mut self, i: usize) -> Result<(), String> {
        let majority = self.majority();
        let node = &self.nodes[i];
        let RaftRole::Leader { matched, .. } = &node.role else {
            return Ok(());
        };
        let mut values: Vec<usize> = matched.values().copied().collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = values[majority - 1];
        if candidate > node.commit && node.log[candidate - 1].term == node.term {
            self.nodes[i].commit = candidate;
        }
        self.apply(i)
    }

    fn apply(&mut self, i: usize) -> Result<(), String> {
        while self.nodes[i].applied < self.nodes[i].commit.min(self.nodes[i].log.len()) {
            let idx = self.nodes[i].applied;
            let entry = self.nodes[i].log[idx].clone();
            // Invariant 3: the committed log only grows and never changes.
            match self.committed.get(idx) {
                Some((term, _)) if *term != entry.term => {
                    return Err(format!(
                        "committed entry {idx} changed: term {term} became {}",
                        entry.term
                    ));
                }
                Some(_) => {}
                None => {
                    if idx != self.committed.len() {
                        return Err(format!("commit skipped index {}", self.committed.len()));
                    }
                    self.committed.push((entry.term, entry.command.clone()));
                }
            }
            if let Some(cmd) = &entry.command {
                let before = self.nodes[i].state.epoch;
                self.nodes[i].state.apply(cmd);
                let after = self.nodes[i].state.epoch;
                if after < before {
                    return Err(format!(
                        "epoch regressed from {before} to {after} on node {i}"
                    ));
                }
                if let Some(p) = self.nodes[i].state.primary_id()
                    && after > before
                {
                    let first = *self.epochs.entry(after).or_insert(p);
                    if first != p {
                        return Err(format!("epoch {after} names {first} and {p}"));
                    }
                }
            }
            self.nodes[i].applied += 1;
        }
        // Proposals this node made as leader and now sees applied.
        let applied = self.nodes[i].applied;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.nodes[i].proposals)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.nodes[i].proposals = waiting;
        for (index, term) in done {
            let succeeded = self.nodes[i].log[index - 1].term == term;
            let state = self.applied_state(i);
            self.feed(
                i,
                Input::ProposalDone {
                    applied: state,
                    succeeded,
                },
            )?;
        }
        Ok(())
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) -> Result<(), String> {
        let now = self.local(to);
        match msg {
            Msg::Vote {
                term,
                last_term,
                last_index,
            } => {
                if term > self.nodes[to].term {
                    self.step_down(to, term)?;
                }
                let node = &self.nodes[to];
                let my_last_term = node.log.last().map_or(0, |e| e.term);
                let up_to_date = (last_term, last_index) >= (my_last_term, node.log.len());
                let granted =
                    term == node.term && up_to_date && node.voted_for.is_none_or(|v| v == from);
                if granted {
                    self.nodes[to].voted_for = Some(from);
                    self.nodes[to].election_deadline = now + self.rng.range(300, 600);
                }
                let t = self.nodes[to].term;
                self.send(to, from, Msg::VoteReply { term: t, granted });
            }
            Msg::VoteReply { term, granted } => {
                if term > self.nodes[to].term {
                    return self.step_down(to, term);
                }
                let majority = self.majority();
                let mut won = false;
                let current = self.nodes[to].term;
                if let RaftRole::Candidate(votes) = &mut self.nodes[to].role
                    && term == current
                    && granted
                {
                    votes.insert(from);
                    won = votes.len() >= majority;
                }
                if won {
                    self.become_leader(to, now)?;
                }
            }
            Msg::Append {
                term,
                log,
                commit,
                sent_at,
            } => {
                if term < self.nodes[to].term {
                    let t = self.nodes[to].term;
                    self.send(
                        to,
                        from,
                        Msg::AppendReply {
                            term: t,
                            ok: false,
                            matched: 0,
                            sent_at,
                        },
                    );
                    return Ok(());
                }
                if term > self.nodes[to].term || !matches!(self.nodes[to].role, RaftRole::Follower)
                {
                    self.step_down(to, term)?;
                    self.nodes[to].term = term;
                }
                let deadline = now + self.rng.range(300, 600);
                let node = &mut self.nodes[to];
                node.leader = Some(from);
                node.election_deadline = deadline;
                // Raft's AppendEntries: keep what matches, cut at the first conflict, append the
                // rest. A delayed shorter copy of the same log truncates nothing.
                let conflict = node
                    .log
                    .iter()
                    .zip(&log)
                    .position(|(a, b)| a.term != b.term);
                if let Some(at) = conflict {
                    if at < node.applied {
                        return Err(format!(
                            "leader {from} would overwrite applied entry {at} of {to}"
                        ));
                    }
                    node.log.truncate(at);
                }
                if log.len() > node.log.len() {
                    let start = node.log.len();
                    node.log.extend_from_slice(&log[start..]);
                }
                let matched = log.len();
                node.commit = node.commit.max(commit.min(matched));
                self.apply(to)?;
                let t = self.nodes[to].term;
                self.send(
                    to,
                    from,
                    Msg::AppendReply {
                        term: t,
                        ok: true,
                        matched,
                        sent_at,
                    },
                );
            }
            Msg::AppendReply {
                term,
                ok,
                matched,
                sent_at,
            } => {
                if term > self.nodes[to].term {
                    return self.step_down(to, term);
                }
                if !ok || term != self.nodes[to].term {
                    return Ok(());
                }
                let majority = self.majority();
                let mut acked = false;
                if let RaftRole::Leader { matched: m, rounds } = &mut self.nodes[to].role {
                    let e = m.entry(from).or_insert(0);
                    *e = (*e).max(matched);
                    if let Some(acks) = rounds.get_mut(&sent_at) {
                        acks.insert(from);
                        acked = acks.len() >= majority;
                    }
                }
                self.maybe_commit(to)?;
                if acked && self.nodes[to].pending.remove(&Pending::Confirm { sent_at }) {
                    let term = self.nodes[to].term;
                    self.feed(
                        to,
                        Input::QuorumConfirmed {
                            term,
                            sent_at,
                            confirmed: true,
                        },
                    )?;
                }
            }
            Msg::Report { sent_at, report } => {
                let id = self.nodes[from].id;
                let reply = self.ask(to, Asked::Report { from, sent_at });
                self.feed(
                    to,
                    Input::PeerReport {
                        from: id,
                        report,
                        reply,
                    },
                )?;
            }
            Msg::ReportReply { sent_at, decision } => {
                if self.nodes[to].pending.remove(&Pending::Report { sent_at }) {
                    self.feed(
                        to,
                        Input::ReportAnswered {
                            sent_at,
                            answer: Some(ReportAnswer {
                                decision,
                                view: None,
                            }),
                        },
                    )?;
                }
            }
            Msg::Demote { epoch } => {
                let reply = self.ask(to, Asked::Demote { from, epoch });
                self.feed(to, Input::DemoteRequested { epoch, reply })?;
            }
            Msg::DemoteReply { epoch } => {
                let member = self.nodes[from].id;
                if self.nodes[to]
                    .pending
                    .remove(&Pending::Demotion { member, epoch })
                {
                    self.feed(
                        to,
                        Input::DemotionAnswered {
                            member,
                            epoch,
                            released: true,
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    fn check_liveness(&self) -> Result<(), String> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i].up && self.nodes[*i].core.live_epoch(self.local(*i)).is_some()
            })
            .collect();
        if self.supervised && live.len() == 1 {
            // And its workload was made primary under that epoch.
            let i = live[0];
            let epoch = self.nodes[i].core.live_epoch(self.local(i));
            let primary = self.nodes[i]
                .sup
                .as_ref()
                .and_then(|s| s.core.report().primary_epoch);
            if primary != epoch {
                return Err(format!(
                    "after healing, node {i} holds epoch {epoch:?} but its workload is primary for {primary:?}"
                ));
            }
        }
        if live.len() != 1 {
            return Err(format!(
                "after healing, {} live primaries (epochs {:?}, leaders {:?})",
                live.len(),
                self.nodes.iter().map(|n| n.state.epoch).collect::<Vec<_>>(),
                (0..self.nodes.len())
                    .filter(|i| self.is_leader(*i))
                    .collect::<Vec<_>>()
            ));
        }
        Ok(())
    }
}

fn run_seed(seed: u64) -> Result<Stats, String> {
    let n = if seed.is_multiple_of(4) { 5 } else { 3 };
    let supervised = seed % 3 == 2;
    let mut sim = Sim::with(seed, n, supervised);
    sim.run().map_err(|e| {
        format!(
            "seed {seed} ({n} nodes{}): {e}",
            if supervised { ", supervised" } else { "" }
        )
    })?;
    Ok(sim.stats)
}

#[test]
fn simulated_groups_keep_the_invariants_over_1000_seeds() {
    let mut totals = Stats::default();
    let mut failures = Vec::new();
    for seed in 0..1000u64 {
        match std::panic::catch_unwind(|| run_seed(seed)) {
            Ok(Ok(stats)) => {
                totals.promotions += stats.promotions;
                totals.appointments += stats.appointments;
                totals.graceful_stops += stats.graceful_stops;
                totals.workload_promotions += stats.workload_promotions;
                totals.failed_promotes += stats.failed_promotes;
                totals.workload_crashes += stats.workload_crashes;
            }
            Ok(Err(e)) => failures.push(e),
            Err(p) => failures.push(format!(
                "seed {seed}: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 1000 seeds failed, first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Not vacuous: the faults did move the primary around, and graceful stops completed.
    println!("{totals:?}");
    assert!(totals.appointments > 3000, "{totals:?}");
    assert!(totals.promotions > 3000, "{totals:?}");
    assert!(totals.graceful_stops > 300, "{totals:?}");
    // The supervised third promoted workloads through hooks, saw promotes fail and workload
    // containers crash.
    assert!(totals.workload_promotions > 600, "{totals:?}");
    assert!(totals.failed_promotes > 10, "{totals:?}");
    assert!(totals.workload_crashes > 50, "{totals:?}");
}

#[test]
fn the_checker_catches_supervisors_that_confirm_a_release_too_early() {
    // Supervisors that never admit their workload is primary make the agent hand the role on
    // while the old workload still accepts writes: the workload-side check must see it.
    let mut broken = 0;
    for seed in 0..200u64 {
        let mut sim = Sim::with(seed, 3, true);
        sim.lying_supervisors = true;
        if let Err(e) = sim.run()
            && e.contains("two workloads accept writes")
        {
            broken += 1;
        }
    }
    assert!(
        broken > 0,
        "the workload-side checker never fired with supervisors that confirm too early"
    );
}

#[test]
fn the_checker_catches_a_coordinator_without_a_drift_margin() {
    // The same simulation with clocks drifting twice as far as the margin allows must be able
    // to break invariant 1: otherwise the checker above would prove nothing.
    let mut broken = 0;
    for seed in 0..300u64 {
        let mut sim = Sim::new(seed, 3);
        for n in &mut sim.nodes {
            n.rate = if n.id % 2 == 0 { 0.75 } else { 1.25 };
        }
        if let Err(e) = sim.run()
            && e.contains("two live primaries")
        {
            broken += 1;
        }
    }
    assert!(
        broken > 0,
        "the invariant checker never fired with out-of-bound drift"
    );
}
