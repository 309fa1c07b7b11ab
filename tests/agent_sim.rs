//! Deterministic simulation of the group protocol: the real coordinator and lease-holder state
//! machines on top of a simulated Raft (elections, log replication, heartbeat quorum
//! confirmations) and a simulated network, under random crashes, pauses (SIGSTOP), partitions,
//! workload failures, switchovers and clock-rate drift within the configured bound.
//!
//! Checked on every event: DESIGN.md invariant 1 (at most one live primary at any real instant,
//! each judged on its own drifting clock), invariant 2 (epochs never regress, one member per
//! epoch) and invariant 3 (committed entries are never lost or changed). After the faults heal,
//! the group must have a live primary again (the protocol is not vacuously safe).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use quorate::agent::coordinator::{
    Action, Coordinator, CoordinatorSettings, MemberReport, ReleaseReason,
};
use quorate::agent::group::{
    GroupCommand, GroupConfig, MemberNode, Mode, NodeId, ReplicatedState, Roster, RosterEntry,
};
use quorate::agent::lease::{Grant, LeaseHolder, LeaseTransition};
use quorate::agent::timing::{MAX_CLOCK_RATE_ERROR, report_interval_millis};

const LEASE: u64 = 1000;
const HEARTBEAT: u64 = 100;
const SIM_MILLIS: u64 = 14_000;
const FAULTS_UNTIL: u64 = 8_000;
const HEAL_AT: u64 = 9_000;

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
        grant: Option<Grant>,
        demote: bool,
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
    /// Node, incarnation (a restart starts a new tick chain).
    Tick(usize, u64),
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
    // Durable.
    term: u64,
    voted_for: Option<usize>,
    log: Vec<Entry>,
    // Volatile.
    role: RaftRole,
    leader: Option<usize>,
    commit: usize,
    applied: usize,
    state: ReplicatedState,
    election_deadline: u64,
    next_heartbeat: u64,
    next_report: u64,
    coordinator: Coordinator,
    holder: LeaseHolder,
    healthy: bool,
    release_reason: Option<ReleaseReason>,
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
}

#[derive(Default, Debug)]
struct Stats {
    promotions: u64,
    appointments: u64,
}

fn config() -> GroupConfig {
    GroupConfig {
        mode: Mode::PrimaryBackup,
        lease_millis: LEASE,
        max_failovers_per_hour: 100_000,
    }
}

impl Sim {
    fn new(seed: u64, n: usize) -> Self {
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
            nodes.push(Node {
                id,
                rate,
                offset,
                up: true,
                incarnation: 0,
                paused_until: None,
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
                next_report: 0,
                coordinator: Coordinator::new(CoordinatorSettings {
                    id,
                    initial_config: config(),
                }),
                holder: LeaseHolder::new(),
                healthy: true,
                release_reason: None,
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
        };
        for i in 0..n {
            let jitter = sim.rng.range(0, 20_000);
            sim.schedule(jitter, Event::Tick(i, 0));
            let now = sim.local(i);
            sim.nodes[i].election_deadline = now + sim.rng.range(300, 600);
            sim.nodes[i]
                .coordinator
                .on_applied(now, &ReplicatedState::default(), &sim.roster);
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
        self.local_at(i, self.now_us)
    }

    fn local_at(&self, i: usize, real_us: u64) -> u64 {
        let n = &self.nodes[i];
        (n.offset + real_us as f64 / 1000.0 * n.rate) as u64
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

    fn run(&mut self) -> Result<(), String> {
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

    fn handle(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::Tick(i, incarnation) => {
                if self.nodes[i].up && self.nodes[i].incarnation == incarnation {
                    if self.nodes[i].paused_until.is_none() {
                        self.tick(i)?;
                    }
                    self.schedule(10_000, Event::Tick(i, incarnation));
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
            }
            Event::Fault => {
                self.inject_fault();
                if self.now_us < FAULTS_UNTIL * 1000 {
                    let next = self.rng.range(200_000, 900_000);
                    self.schedule(next, Event::Fault);
                }
            }
            Event::Heal => {
                self.blocked.clear();
                for i in 0..self.nodes.len() {
                    if !self.nodes[i].up {
                        self.restart(i);
                    }
                    self.nodes[i].paused_until = None;
                    self.nodes[i].healthy = true;
                }
            }
            Event::Restart(i) => {
                if !self.nodes[i].up {
                    self.restart(i);
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
            Event::Recover(i) => self.nodes[i].healthy = true,
        }
        Ok(())
    }

    fn inject_fault(&mut self) {
        let n = self.nodes.len();
        let victim = match self.rng.range(0, 3) {
            // Aim at the primary or the coordinator more often than not: that is where it hurts.
            0 => self
                .nodes
                .iter()
                .position(|x| x.holder.held_epoch().is_some()),
            1 => self
                .nodes
                .iter()
                .position(|x| matches!(x.role, RaftRole::Leader { .. })),
            _ => None,
        }
        .unwrap_or_else(|| self.rng.range(0, n as u64) as usize);
        let duration = self.rng.range(100_000, 3_000_000);
        match self.rng.range(0, 6) {
            0 => {
                // kill -9: volatile state is gone, durable Raft state stays.
                self.nodes[victim].up = false;
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
                self.nodes[victim].healthy = false;
                self.schedule(duration, Event::Recover(victim));
            }
            _ => {
                // A planned switchover through whoever leads.
                if let Some(l) = self
                    .nodes
                    .iter()
                    .position(|x| x.up && matches!(x.role, RaftRole::Leader { .. }))
                {
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
    }

    fn restart(&mut self, i: usize) {
        let now = self.local(i);
        let deadline = now + self.rng.range(300, 600);
        let n = &mut self.nodes[i];
        n.up = true;
        n.incarnation += 1;
        let incarnation = n.incarnation;
        n.paused_until = None;
        n.role = RaftRole::Follower;
        n.leader = None;
        n.commit = 0;
        n.applied = 0;
        n.state = ReplicatedState::default();
        n.election_deadline = deadline;
        n.coordinator = Coordinator::new(CoordinatorSettings {
            id: n.id,
            initial_config: config(),
        });
        n.holder = LeaseHolder::new();
        n.release_reason = None;
        let roster = self.roster.clone();
        self.nodes[i]
            .coordinator
            .on_applied(now, &ReplicatedState::default(), &roster);
        self.schedule(1, Event::Tick(i, incarnation));
    }

    fn is_leader(&self, i: usize) -> bool {
        matches!(self.nodes[i].role, RaftRole::Leader { .. })
    }

    fn tick(&mut self, i: usize) -> Result<(), String> {
        let now = self.local(i);
        let n = self.nodes.len();
        // Lease expiry.
        if let Some(t) = self.nodes[i].holder.tick(now) {
            self.on_transition(i, t)?;
        }
        // A failed workload makes the primary give its lease back at once.
        if !self.nodes[i].healthy
            && let Some(epoch) = self.nodes[i].holder.held_epoch()
        {
            self.nodes[i].release_reason = Some(ReleaseReason::WorkloadUnhealthy);
            if let Some(t) = self.nodes[i].holder.release(epoch, now) {
                self.on_transition(i, t)?;
            }
            self.nodes[i].next_report = now;
        }
        if self.is_leader(i) {
            if now >= self.nodes[i].next_heartbeat {
                self.nodes[i].next_heartbeat = now + HEARTBEAT;
                self.broadcast_append(i, now);
            }
            let caught_up = self.nodes[i].applied > 0
                && self.nodes[i].log[self.nodes[i].applied - 1].term == self.nodes[i].term;
            let term = self.nodes[i].term;
            self.nodes[i]
                .coordinator
                .on_raft_status(now, true, term, caught_up);
            let actions = self.nodes[i]
                .coordinator
                .tick(now, self.now_us as i64 / 1000);
            for a in actions {
                match a {
                    Action::Propose(command) => {
                        if let GroupCommand::Appoint { .. } = &command {
                            self.stats.appointments += 1;
                        }
                        let term = self.nodes[i].term;
                        self.nodes[i].log.push(Entry {
                            term,
                            command: Some(command),
                        });
                        self.broadcast_append(i, now);
                    }
                    Action::RequestDemotion { member, epoch } => {
                        if let Some(j) = self.nodes.iter().position(|x| x.id == member) {
                            if j == i {
                                self.demote_self(i, epoch)?;
                                let id = self.nodes[i].id;
                                self.nodes[i].coordinator.on_released(
                                    id,
                                    epoch,
                                    ReleaseReason::Switchover,
                                );
                            } else {
                                self.send(i, j, Msg::Demote { epoch });
                            }
                        }
                    }
                }
            }
        } else if now >= self.nodes[i].election_deadline {
            // Start an election.
            let node = &mut self.nodes[i];
            node.term += 1;
            node.voted_for = Some(i);
            node.role = RaftRole::Candidate(BTreeSet::from([i]));
            node.leader = None;
            node.election_deadline = now + 300 + self.rng.range(0, 300);
            let term = node.term;
            let last_term = node.log.last().map_or(0, |e| e.term);
            let last_index = node.log.len();
            node.coordinator.on_raft_status(now, false, term, false);
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
                self.become_leader(i, now);
            }
        }
        // Reports (the primary's renewals).
        if now >= self.nodes[i].next_report {
            self.nodes[i].next_report = now + report_interval_millis(LEASE);
            self.report(i, now)?;
        }
        Ok(())
    }

    fn report(&mut self, i: usize, now: u64) -> Result<(), String> {
        let Some(leader) = self.nodes[i].leader else {
            return Ok(());
        };
        let report = MemberReport {
            workload_healthy: self.nodes[i].healthy,
            load: None,
            latency_ms: None,
            applied_index: self.nodes[i].applied as u64,
            priority: 50,
            released_epoch: self.nodes[i].holder.released_epoch(),
            release_reason: self.nodes[i].release_reason,
            leaving: false,
        };
        if leader == i {
            let id = self.nodes[i].id;
            let d = self.nodes[i].coordinator.on_report(now, id, report);
            self.on_report_reply(i, now, d.grant, d.demote)?;
        } else {
            self.send(
                i,
                leader,
                Msg::Report {
                    sent_at: now,
                    report,
                },
            );
        }
        Ok(())
    }

    fn on_report_reply(
        &mut self,
        i: usize,
        sent_at: u64,
        grant: Option<Grant>,
        demote: bool,
    ) -> Result<(), String> {
        let now = self.local(i);
        if let Some(g) = grant {
            if let Some(t) = self.nodes[i].holder.tick(now) {
                self.on_transition(i, t)?;
            }
            if let Some(t) = self.nodes[i].holder.on_grant(sent_at, g, now) {
                self.on_transition(i, t)?;
            }
        }
        if demote {
            let epoch = self.nodes[i].state.epoch;
            self.demote_self(i, epoch)?;
        }
        Ok(())
    }

    fn demote_self(&mut self, i: usize, epoch: u64) -> Result<(), String> {
        let now = self.local(i);
        self.nodes[i].release_reason = Some(ReleaseReason::Switchover);
        if let Some(t) = self.nodes[i].holder.release(epoch, now) {
            self.on_transition(i, t)?;
        }
        self.nodes[i].next_report = now;
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
                if let Some(other) = self.nodes[j].holder.live_epoch(their_now) {
                    return Err(format!(
                        "two live primaries at {} us: node {i} epoch {epoch} and node {j} epoch {other}",
                        self.now_us
                    ));
                }
            }
        }
        Ok(())
    }

    fn broadcast_append(&mut self, i: usize, now: u64) {
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
        self.maybe_commit(i);
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
    }

    fn become_leader(&mut self, i: usize, now: u64) {
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
        node.coordinator.on_raft_status(now, true, term, false);
        self.broadcast_append(i, now);
    }

    fn step_down(&mut self, i: usize, term: u64) {
        let now = self.local(i);
        let node = &mut self.nodes[i];
        if term > node.term {
            node.term = term;
            node.voted_for = None;
        }
        if !matches!(node.role, RaftRole::Follower) {
            node.role = RaftRole::Follower;
            node.leader = None;
            node.coordinator
                .on_raft_status(now, false, node.term, false);
        }
    }

    fn maybe_commit(&mut self, i: usize) {
        let majority = self.majority();
        let node = &self.nodes[i];
        let RaftRole::Leader { matched, .. } = &node.role else {
            return;
        };
        let mut values: Vec<usize> = matched.values().copied().collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = values[majority - 1];
        if candidate > node.commit && node.log[candidate - 1].term == node.term {
            self.nodes[i].commit = candidate;
        }
        self.apply(i);
    }

    fn apply(&mut self, i: usize) {
        let now = self.local(i);
        while self.nodes[i].applied < self.nodes[i].commit.min(self.nodes[i].log.len()) {
            let idx = self.nodes[i].applied;
            let entry = self.nodes[i].log[idx].clone();
            // Invariant 3: the committed log only grows and never changes.
            match self.committed.get(idx) {
                Some((term, _)) if *term != entry.term => {
                    panic_or_fail(format!(
                        "committed entry {idx} changed: term {term} became {}",
                        entry.term
                    ));
                }
                Some(_) => {}
                None => {
                    assert_eq!(idx, self.committed.len(), "commit skipped an index");
                    self.committed.push((entry.term, entry.command.clone()));
                }
            }
            if let Some(cmd) = &entry.command {
                let before = self.nodes[i].state.epoch;
                self.nodes[i].state.apply(cmd);
                let after = self.nodes[i].state.epoch;
                assert!(after >= before, "epoch regressed");
                if let Some(p) = self.nodes[i].state.primary_id()
                    && after > before
                {
                    let first = *self.epochs.entry(after).or_insert(p);
                    if first != p {
                        panic_or_fail(format!("epoch {after} names {first} and {p}"));
                    }
                }
            }
            self.nodes[i].applied += 1;
        }
        let state = self.nodes[i].state.clone();
        let roster = self.roster.clone();
        let id = self.nodes[i].id;
        let node = &mut self.nodes[i];
        node.coordinator.on_applied(now, &state, &roster);
        if node.coordinator.is_leader() {
            node.coordinator.on_proposal_done();
        }
        if let Some(t) =
            node.holder
                .observe_committed(state.epoch, state.primary_id() == Some(id), now)
        {
            let _ = t;
        }
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
                    self.step_down(to, term);
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
                    self.step_down(to, term);
                    return Ok(());
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
                    self.become_leader(to, now);
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
                    self.step_down(to, term);
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
                self.apply(to);
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
                    self.step_down(to, term);
                    return Ok(());
                }
                if !ok || term != self.nodes[to].term {
                    return Ok(());
                }
                let majority = self.majority();
                let mut acked_at = None;
                if let RaftRole::Leader { matched: m, rounds } = &mut self.nodes[to].role {
                    let e = m.entry(from).or_insert(0);
                    *e = (*e).max(matched);
                    if let Some(acks) = rounds.get_mut(&sent_at) {
                        acks.insert(from);
                        if acks.len() >= majority {
                            acked_at = Some(sent_at);
                        }
                    }
                }
                self.maybe_commit(to);
                if let Some(t) = acked_at {
                    let term = self.nodes[to].term;
                    self.nodes[to].coordinator.on_quorum_ack(term, t);
                }
            }
            Msg::Report { sent_at, report } => {
                let id = self.nodes[from].id;
                let d = self.nodes[to].coordinator.on_report(now, id, report);
                if d.accepted {
                    self.send(
                        to,
                        from,
                        Msg::ReportReply {
                            sent_at,
                            grant: d.grant,
                            demote: d.demote,
                        },
                    );
                }
            }
            Msg::ReportReply {
                sent_at,
                grant,
                demote,
            } => {
                self.on_report_reply(to, sent_at, grant, demote)?;
            }
            Msg::Demote { epoch } => {
                self.demote_self(to, epoch)?;
                self.send(to, from, Msg::DemoteReply { epoch });
            }
            Msg::DemoteReply { epoch } => {
                let id = self.nodes[from].id;
                self.nodes[to]
                    .coordinator
                    .on_released(id, epoch, ReleaseReason::Switchover);
            }
        }
        Ok(())
    }

    fn check_liveness(&self) -> Result<(), String> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].up && self.nodes[*i].holder.is_live(self.local(*i)))
            .collect();
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

fn panic_or_fail(msg: String) -> ! {
    panic!("{msg}")
}

fn run_seed(seed: u64) -> Result<Stats, String> {
    let n = if seed.is_multiple_of(4) { 5 } else { 3 };
    let mut sim = Sim::new(seed, n);
    sim.run()
        .map_err(|e| format!("seed {seed} ({n} nodes): {e}"))?;
    Ok(sim.stats)
}

#[test]
fn simulated_groups_keep_the_invariants_over_1000_seeds() {
    let mut promotions = 0;
    let mut appointments = 0;
    let mut failures = Vec::new();
    for seed in 0..1000u64 {
        match std::panic::catch_unwind(|| run_seed(seed)) {
            Ok(Ok(stats)) => {
                promotions += stats.promotions;
                appointments += stats.appointments;
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
    // Not vacuous: the faults did move the primary around.
    assert!(appointments > 3000, "only {appointments} appointments");
    assert!(promotions > 3000, "only {promotions} promotions");
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
