//! The supervisor's decisions, sans IO: what to run, when to fence, what to report. The runtime
//! (`supervisor::run`) feeds it the agent's answers, hook results and the clock, and carries out
//! its [`Action`]s.
//!
//! Three lanes run independently: the *role* lane (join, promote, demote, one at a time), the
//! *health* lane and the *position* lane. Fencing preempts the role lane: when the lease the
//! workload was promoted under ends without renewal, a running promote is cancelled and the
//! workload is demoted (`fence: Demote`) or stopped (`fence: Kill`), whatever the agent does.

use std::collections::BTreeMap;

use super::protocol::{AgentRole, Applied, HookOutcome, WorkloadReport};
use crate::api::{FenceMode, HookKind, MemberRole};

/// The environment a hook gets (besides its container's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEnv {
    /// `primary`, `backup`, `fenced`, `joining`, or the current role for health and position.
    pub role: &'static str,
    pub epoch: u64,
    pub primary: String,
    pub primary_host: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Run `hook`; its outcome comes back with the same `run` number.
    Run {
        run: u64,
        hook: HookKind,
        env: HookEnv,
    },
    /// Kill the running hook `run` (its process group).
    Cancel { run: u64 },
    /// Start the workload process (after a successful join).
    StartWorkload,
    /// Stop the workload with SIGKILL: fencing, or a failed demote. The supervisor exits when
    /// it is gone and the container restarts.
    KillWorkload { reason: String },
    /// Send the agent this report now.
    Report(WorkloadReport),
}

/// What the spec declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub join: bool,
    pub promote: bool,
    pub demote: bool,
    pub position: bool,
    pub health: bool,
    pub fence: FenceMode,
    pub health_period_millis: u64,
    pub health_failure_threshold: u32,
    pub position_period_millis: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the agent's first answer.
    WaitingForAgent,
    /// The join hook runs (or failed and waits to retry at `retry_at`).
    Joining {
        retry_at: Option<u64>,
        attempt: u32,
    },
    Running,
    /// The workload is being killed; nothing else runs.
    Stopping,
}

/// A hook in flight on the role lane and what it makes the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RoleHook {
    run: u64,
    hook: HookKind,
    target: Applied,
}

#[derive(Clone, Debug)]
pub struct SupervisorCore {
    declared: Declared,
    phase: Phase,
    agent: Option<AgentRole>,
    /// When the agent last answered (monotonic ms).
    agent_seen_at: Option<u64>,
    /// The lease end the workload is primary under (renewals move it on).
    lease_until: Option<u64>,
    applied: Applied,
    role_hook: Option<RoleHook>,
    /// A promote that failed for this epoch is not retried for it.
    failed_promote_epoch: Option<u64>,
    next_health_at: u64,
    health_failures: u32,
    health_checked: bool,
    health_message: String,
    position_running: Option<u64>,
    next_position_at: u64,
    position: Option<u64>,
    position_token: u64,
    position_error: String,
    outcomes: BTreeMap<HookKind, HookOutcome>,
    runs: u64,
    /// The report last handed to the runtime.
    last_report: Option<WorkloadReport>,
    /// A failed follow-the-primary demote waits until then.
    role_retry_at: Option<u64>,
    /// The demote hook failed before the workload ever reached a role since it started (a
    /// restarted former primary that could not be rewound, say): its data's relation to the
    /// group is unknown, so it is no candidate until a role hook succeeds.
    unplaced_demote_failed: Option<String>,
    health_run: Option<u64>,
    position_run: Option<u64>,
    /// The agent incarnation and state revision of the last answer acted on (reported: see
    /// `WorkloadReport`).
    role_seen: (u64, u64),
    /// The agent's role or epoch changed since the last report: the next one goes out at once,
    /// so that a release is confirmed without waiting for the report interval.
    role_changed: bool,
    /// The workload process has ended.
    exited: bool,
}

/// How soon a failed demote of a workload that was not primary is tried again.
pub const ROLE_RETRY_MILLIS: u64 = 1000;

/// How often the supervisor reports even when nothing changed (the agent counts a silent
/// supervisor as an unhealthy workload after a few of these).
pub const REPORT_INTERVAL_MILLIS: u64 = 200;

impl SupervisorCore {
    pub fn new(declared: Declared) -> Self {
        Self {
            declared,
            phase: Phase::WaitingForAgent,
            agent: None,
            agent_seen_at: None,
            lease_until: None,
            applied: Applied::None,
            role_hook: None,
            failed_promote_epoch: None,
            next_health_at: 0,
            health_failures: 0,
            health_checked: false,
            health_message: String::new(),
            position_running: None,
            next_position_at: 0,
            position: None,
            position_token: 0,
            position_error: String::new(),
            outcomes: BTreeMap::new(),
            runs: 0,
            last_report: None,
            role_retry_at: None,
            unplaced_demote_failed: None,
            health_run: None,
            position_run: None,
            role_seen: (0, 0),
            role_changed: false,
            exited: false,
        }
    }

    fn next_run(&mut self) -> u64 {
        self.runs += 1;
        self.runs
    }

    pub fn applied(&self) -> &Applied {
        &self.applied
    }

    /// The agent incarnation and state revision of the last answer acted on.
    pub fn role_seen(&self) -> (u64, u64) {
        self.role_seen
    }

    /// The agent answered `/role`.
    pub fn on_agent(&mut self, role: AgentRole, now: u64) -> Vec<Action> {
        if role.role == MemberRole::Primary
            && self.holds(role.epoch)
            && let Some(until) = role.lease_until_mono_millis
        {
            // A renewal of the lease the workload is primary under.
            self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
        }
        if self
            .agent
            .as_ref()
            .is_none_or(|a| (a.role, a.epoch) != (role.role, role.epoch))
        {
            self.role_changed = true;
        }
        self.role_seen = (role.incarnation, role.revision);
        let in_group = role.role != MemberRole::Unknown;
        self.agent = Some(role);
        self.agent_seen_at = Some(now);
        // Not before the agent holds the group's state with this member in it: until then it
        // knows no epoch and no primary, and a join hook would take this member for the first
        // of a new group (PostgreSQL's would run initdb instead of copying the primary).
        if self.phase == Phase::WaitingForAgent && in_group {
            self.phase = Phase::Joining {
                retry_at: None,
                attempt: 0,
            };
        }
        self.decide(now)
    }

    /// A hook finished (or was killed at its timeout, or could not start).
    pub fn on_hook_done(
        &mut self,
        run: u64,
        outcome: HookOutcome,
        stdout: &[u8],
        now: u64,
    ) -> Vec<Action> {
        let hook = outcome.hook;
        match hook {
            HookKind::Health if self.health_run == Some(run) => {
                self.health_run = None;
                self.health_checked = true;
                if outcome.ok {
                    self.health_failures = 0;
                    self.health_message.clear();
                } else {
                    self.health_failures += 1;
                    self.health_message = format!("health hook: {}", outcome.message);
                }
                self.next_health_at = now + self.declared.health_period_millis;
            }
            HookKind::Position if self.position_run == Some(run) => {
                self.position_run = None;
                let token = self.position_running.take().unwrap_or(0);
                if outcome.ok {
                    match super::protocol::parse_position(stdout) {
                        Ok(p) => {
                            self.position = Some(p);
                            self.position_error.clear();
                        }
                        Err(e) => {
                            self.position = None;
                            self.position_error = e;
                        }
                    }
                } else {
                    self.position = None;
                    self.position_error = format!("position hook: {}", outcome.message);
                }
                self.position_token = token;
                self.next_position_at = now + self.declared.position_period_millis;
            }
            HookKind::Join if self.role_hook.as_ref().is_some_and(|r| r.run == run) => {
                if let Phase::Joining { attempt, .. } = self.phase {
                    self.role_hook = None;
                    if outcome.ok {
                        self.phase = Phase::Running;
                        self.record(outcome);
                        let mut out = vec![Action::StartWorkload];
                        out.extend(self.decide(now));
                        return out;
                    }
                    // Back off 1 s, 2 s, 4 s ... 30 s.
                    let delay = (1000u64 << attempt.min(5)).min(30_000);
                    self.phase = Phase::Joining {
                        retry_at: Some(now + delay),
                        attempt: attempt + 1,
                    };
                }
            }
            HookKind::Promote | HookKind::Demote
                if self.role_hook.as_ref().is_some_and(|r| r.run == run) =>
            {
                let Some(running) = self.role_hook.take() else {
                    return self.decide(now);
                };
                if outcome.ok {
                    self.applied = running.target.clone();
                    self.unplaced_demote_failed = None;
                    if !matches!(running.target, Applied::Primary { .. }) {
                        self.lease_until = None;
                    }
                } else if hook == HookKind::Promote {
                    // The agent gives the epoch back when it reads this outcome. A workload still
                    // primary under an earlier lease stays fenced by that lease's end.
                    self.failed_promote_epoch = Some(outcome.epoch);
                    if !matches!(self.applied, Applied::Primary { .. }) {
                        self.lease_until = None;
                    }
                } else if matches!(
                    self.applied,
                    Applied::Primary { .. } | Applied::Fenced { .. }
                ) {
                    // A workload that could not be demoted is stopped: it must not stay primary.
                    self.record(outcome);
                    return self.kill(now, "the demote hook failed".into());
                } else {
                    // Not primary since it started (it may still be starting up): try again soon.
                    self.role_retry_at = Some(now + ROLE_RETRY_MILLIS);
                    if self.applied == Applied::None {
                        self.unplaced_demote_failed = Some(outcome.message.clone());
                    }
                }
            }
            // A run that was cancelled or superseded: only its outcome is news.
            _ => {}
        }
        self.record(outcome);
        self.decide(now)
    }

    /// The workload process ended (on its own or killed).
    pub fn on_workload_exited(&mut self) {
        self.phase = Phase::Stopping;
        self.exited = true;
    }

    /// The timer fired.
    pub fn on_tick(&mut self, now: u64) -> Vec<Action> {
        self.decide(now)
    }

    /// When the runtime must call [`Self::on_tick`] at the latest.
    pub fn next_deadline(&self, now: u64) -> u64 {
        let mut at = now + REPORT_INTERVAL_MILLIS;
        if let Some(until) = self.lease_until {
            at = at.min(until.max(now));
        }
        if self.phase == Phase::Running {
            if self.declared.health && self.health_run.is_none() {
                at = at.min(self.next_health_at.max(now));
            }
            if self.declared.position && self.position_run.is_none() {
                at = at.min(self.next_position_at.max(now));
            }
        }
        if let Phase::Joining {
            retry_at: Some(r), ..
        } = self.phase
        {
            at = at.min(r.max(now));
        }
        if let Some(r) = self.role_retry_at {
            at = at.min(r.max(now));
        }
        at
    }

    /// The report the agent gets now.
    pub fn report(&self) -> WorkloadReport {
        let running = self.phase == Phase::Running;
        let health_ok = !self.declared.health
            || (self.health_checked
                && self.health_failures < self.declared.health_failure_threshold);
        let healthy = running
            && health_ok
            && !matches!(self.applied, Applied::Fenced { .. })
            && self.unplaced_demote_failed.is_none();
        let health_message = match &self.phase {
            Phase::WaitingForAgent if self.agent.is_some() => {
                "waiting for the agent to be added to the group".to_owned()
            }
            Phase::WaitingForAgent => "waiting for the agent".to_owned(),
            Phase::Joining { .. } => "the join hook has not succeeded yet".to_owned(),
            Phase::Stopping => "the workload process is stopping".to_owned(),
            Phase::Running if let Some(m) = &self.unplaced_demote_failed => format!(
                "not following the primary yet: the demote hook failed ({m}); retrying every {} ms",
                ROLE_RETRY_MILLIS
            ),
            Phase::Running if !self.health_checked && self.declared.health => {
                "the health hook has not run yet".to_owned()
            }
            Phase::Running => self.health_message.clone(),
        };
        // A declared position not read yet is no position: the member must not be a candidate
        // before its first position, or the coordinator would choose without it (as if the
        // group had no position hook).
        let position_error = if self.declared.position
            && self.position.is_none()
            && self.position_error.is_empty()
        {
            "the position hook has not printed a position yet".to_owned()
        } else {
            self.position_error.clone()
        };
        WorkloadReport {
            healthy,
            health_message,
            position: self.position,
            position_token: self.position_token,
            position_error,
            applied: self.applied.clone(),
            // One per hook kind, in a fixed order: a report changes only when an outcome does.
            hooks: self.outcomes.values().cloned().collect(),
            primary_epoch: match (&self.applied, &self.role_hook) {
                (
                    _,
                    Some(RoleHook {
                        target: Applied::Primary { epoch },
                        ..
                    }),
                )
                | (Applied::Primary { epoch }, _) => Some(*epoch),
                _ => None,
            },
            role_seen_incarnation: self.role_seen.0,
            role_seen_revision: self.role_seen.1,
            exited: self.exited,
        }
    }

    fn record(&mut self, mut outcome: HookOutcome) {
        let hook = outcome.hook;
        // Health and position run all the time: a successful run is news only as "ok", not
        // by its duration (every report would differ, and each one wakes the agent).
        if outcome.ok && !hook_is_event(hook) {
            outcome.duration_millis = 0;
        }
        self.outcomes.insert(hook, outcome);
    }

    /// The workload is primary (or being made primary) under `epoch`.
    fn holds(&self, epoch: u64) -> bool {
        matches!(self.applied, Applied::Primary { epoch: e } if e == epoch)
            || matches!(&self.role_hook, Some(RoleHook { target: Applied::Primary { epoch: e }, .. }) if *e == epoch)
    }

    fn kill(&mut self, _now: u64, reason: String) -> Vec<Action> {
        self.phase = Phase::Stopping;
        let mut out = Vec::new();
        if let Some(h) = self.role_hook.take() {
            out.push(Action::Cancel { run: h.run });
        }
        out.push(Action::KillWorkload { reason });
        out
    }

    fn env(&self, role: &'static str, epoch: u64) -> HookEnv {
        let agent = self.agent.as_ref();
        HookEnv {
            role,
            epoch,
            primary: agent.and_then(|a| a.primary.clone()).unwrap_or_default(),
            primary_host: agent
                .and_then(|a| a.primary_host.clone())
                .unwrap_or_default(),
        }
    }

    fn decide(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match self.phase {
            Phase::WaitingForAgent | Phase::Stopping => {}
            Phase::Joining { retry_at, .. } => {
                if self.role_hook.is_none() && retry_at.is_none_or(|r| now >= r) {
                    if self.declared.join {
                        self.phase = Phase::Joining {
                            retry_at: None,
                            attempt: match self.phase {
                                Phase::Joining { attempt, .. } => attempt,
                                _ => 0,
                            },
                        };
                        let run = self.next_run();
                        self.role_hook = Some(RoleHook {
                            run,
                            hook: HookKind::Join,
                            target: Applied::None,
                        });
                        let epoch = self.agent.as_ref().map_or(0, |a| a.epoch);
                        out.push(Action::Run {
                            run,
                            hook: HookKind::Join,
                            env: self.env("joining", epoch),
                        });
                    } else {
                        self.phase = Phase::Running;
                        out.push(Action::StartWorkload);
                    }
                }
            }
            Phase::Running => {
                self.fence_if_lease_over(now, &mut out);
                if self.phase == Phase::Running {
                    self.role_lane(now, &mut out);
                    self.probe_lanes(now, &mut out);
                }
            }
        }
        // Whatever changed the report (a position, a token, health, a hook's outcome, the
        // agent's role) is sent at once; the runtime repeats the latest one (with the latest
        // answer seen, which alone is no news) every report interval.
        let report = self.report();
        let news = self.role_changed
            || self.last_report.as_ref().is_none_or(|last| {
                let mut last = last.clone();
                last.role_seen_incarnation = report.role_seen_incarnation;
                last.role_seen_revision = report.role_seen_revision;
                last != report
            });
        if news {
            self.role_changed = false;
            self.last_report = Some(report.clone());
            out.push(Action::Report(report));
        }
        out
    }

    fn fence_if_lease_over(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(until) = self.lease_until else {
            return;
        };
        if now < until {
            return;
        }
        self.lease_until = None;
        let epoch = match (&self.applied, &self.role_hook) {
            // Already on its way out of the primary role: that demote finishes it (or, if it
            // fails, the process is stopped); from now on the workload is primary for no one.
            (
                Applied::Primary { epoch },
                Some(RoleHook {
                    hook: HookKind::Demote,
                    ..
                }),
            ) => {
                self.applied = Applied::Fenced { epoch: *epoch };
                return;
            }
            (
                _,
                Some(RoleHook {
                    hook: HookKind::Demote,
                    ..
                }),
            ) => return,
            (Applied::Primary { epoch }, _) => *epoch,
            (
                _,
                Some(RoleHook {
                    target: Applied::Primary { epoch },
                    ..
                }),
            ) => *epoch,
            _ => return,
        };
        if let Some(h) = self.role_hook.take() {
            out.push(Action::Cancel { run: h.run });
        }
        if self.declared.fence == FenceMode::Kill || !self.declared.demote {
            out.extend(self.kill(
                now,
                format!("the lease of epoch {epoch} ended without renewal"),
            ));
            return;
        }
        // From now on the workload is no longer primary for anyone, demote hook done or not.
        self.applied = Applied::Fenced { epoch };
        let run = self.next_run();
        self.role_hook = Some(RoleHook {
            run,
            hook: HookKind::Demote,
            target: Applied::Fenced { epoch },
        });
        out.push(Action::Run {
            run,
            hook: HookKind::Demote,
            env: self.env("fenced", epoch),
        });
    }

    fn role_lane(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.role_hook.is_some() || self.role_retry_at.is_some_and(|r| now < r) {
            return;
        }
        self.role_retry_at = None;
        let Some(agent) = self.agent.clone() else {
            return;
        };
        let lease_live = agent.lease_until_mono_millis.is_some_and(|u| now < u);
        match agent.role {
            MemberRole::Primary if lease_live => {
                let target = Applied::Primary { epoch: agent.epoch };
                if self.applied == target || self.failed_promote_epoch == Some(agent.epoch) {
                    return;
                }
                // The lease of the epoch being promoted replaces the one before: the coordinator
                // ended that one before it appointed this epoch.
                self.lease_until = agent.lease_until_mono_millis;
                if self.declared.promote {
                    let run = self.next_run();
                    self.role_hook = Some(RoleHook {
                        run,
                        hook: HookKind::Promote,
                        target,
                    });
                    out.push(Action::Run {
                        run,
                        hook: HookKind::Promote,
                        env: self.env("primary", agent.epoch),
                    });
                } else {
                    self.applied = target;
                }
            }
            MemberRole::Backup => {
                let primary = agent.primary.clone().unwrap_or_default();
                // A backup keeps following its primary while a new one is not known yet; a
                // former primary is demoted at once, with or without a primary to follow.
                let needed = match &self.applied {
                    Applied::Primary { .. } => true,
                    Applied::Backup { primary: p, .. } => !primary.is_empty() && *p != primary,
                    Applied::None | Applied::Fenced { .. } => !primary.is_empty(),
                };
                if !needed {
                    return;
                }
                let target = Applied::Backup {
                    epoch: agent.epoch,
                    primary,
                };
                if self.declared.demote {
                    let run = self.next_run();
                    self.role_hook = Some(RoleHook {
                        run,
                        hook: HookKind::Demote,
                        target,
                    });
                    out.push(Action::Run {
                        run,
                        hook: HookKind::Demote,
                        env: self.env("backup", agent.epoch),
                    });
                } else {
                    self.applied = target;
                    self.lease_until = None;
                }
            }
            _ => {}
        }
    }

    fn probe_lanes(&mut self, now: u64, out: &mut Vec<Action>) {
        let role = self.current_role_name();
        let epoch = self.agent.as_ref().map_or(0, |a| a.epoch);
        if self.declared.health && self.health_run.is_none() && now >= self.next_health_at {
            let run = self.next_run();
            self.health_run = Some(run);
            out.push(Action::Run {
                run,
                hook: HookKind::Health,
                env: self.env(role, epoch),
            });
        }
        let wanted = self.agent.as_ref().map_or(0, |a| a.position_wanted);
        if self.declared.position
            && self.position_run.is_none()
            && (now >= self.next_position_at || wanted > self.position_token)
        {
            let run = self.next_run();
            self.position_run = Some(run);
            self.position_running = Some(wanted);
            out.push(Action::Run {
                run,
                hook: HookKind::Position,
                env: self.env(role, epoch),
            });
        }
    }

    fn current_role_name(&self) -> &'static str {
        match self.applied {
            Applied::Primary { .. } => "primary",
            Applied::Backup { .. } => "backup",
            Applied::Fenced { .. } => "fenced",
            Applied::None => "joining",
        }
    }
}

/// Hooks whose every run is news (role changes); periodic ones report only when their result
/// changes.
fn hook_is_event(hook: HookKind) -> bool {
    matches!(hook, HookKind::Promote | HookKind::Demote | HookKind::Join)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn agent(role: MemberRole, epoch: u64, until: Option<u64>, primary: Option<&str>) -> AgentRole {
        AgentRole {
            member: "cache-0".into(),
            role,
            epoch,
            lease_until_mono_millis: until,
            primary: primary.map(str::to_owned),
            primary_host: primary.map(|p| format!("{p}.cache-peers")),
            position_wanted: 0,
            mono_millis: 0,
            incarnation: 1,
            revision: 0,
        }
    }

    fn outcome(hook: HookKind, epoch: u64, ok: bool) -> HookOutcome {
        HookOutcome {
            hook,
            epoch,
            ok,
            exit_code: Some(if ok { 0 } else { 1 }),
            duration_millis: 3,
            message: if ok {
                String::new()
            } else {
                "exited with code 1".into()
            },
            output: String::new(),
        }
    }

    fn runs(actions: &[Action]) -> Vec<(u64, HookKind, &'static str)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Run { run, hook, env } => Some((*run, *hook, env.role)),
                _ => None,
            })
            .collect()
    }

    fn run_of(actions: &[Action], kind: HookKind) -> u64 {
        runs(actions)
            .into_iter()
            .find(|(_, k, _)| *k == kind)
            .map_or(0, |(r, _, _)| r)
    }

    /// A supervisor past its join, with the workload started and its first position read.
    fn started(fence: FenceMode) -> SupervisorCore {
        let mut s = SupervisorCore::new(declared(fence));
        let a = s.on_agent(agent(MemberRole::Backup, 1, None, None), 0);
        let join = run_of(&a, HookKind::Join);
        assert!(join > 0, "{a:?}");
        assert!(
            !a.contains(&Action::StartWorkload),
            "the workload waits for the join"
        );
        let a = s.on_hook_done(join, outcome(HookKind::Join, 1, true), b"", 10);
        assert!(a.contains(&Action::StartWorkload), "{a:?}");
        let position = run_of(&a, HookKind::Position);
        s.on_hook_done(position, outcome(HookKind::Position, 1, true), b"41\n", 12);
        s
    }

    #[test]
    fn no_join_before_the_agent_is_in_the_group() {
        let mut s = SupervisorCore::new(declared(FenceMode::Demote));
        // A new member's agent answers before the group added it: no epoch, no primary yet.
        let a = s.on_agent(agent(MemberRole::Unknown, 0, None, None), 0);
        assert!(runs(&a).is_empty(), "{a:?}");
        assert!(!s.report().healthy);
        assert_eq!(
            s.report().health_message,
            "waiting for the agent to be added to the group"
        );
        let a = s.on_agent(agent(MemberRole::Backup, 4, None, Some("cache-1")), 500);
        assert_eq!(
            runs(&a),
            vec![(run_of(&a, HookKind::Join), HookKind::Join, "joining")]
        );
        let Some(Action::Run { env, .. }) = a.iter().find(|a| matches!(a, Action::Run { .. }))
        else {
            unreachable!()
        };
        assert_eq!(env.epoch, 4);
    }

    #[test]
    fn promote_renew_and_fence_on_a_lease_without_renewal() {
        let mut s = started(FenceMode::Demote);
        let a = s.on_agent(
            agent(MemberRole::Primary, 2, Some(1000), Some("cache-0")),
            100,
        );
        let promote = run_of(&a, HookKind::Promote);
        assert_eq!(
            runs(&a).iter().find(|r| r.0 == promote).map(|r| r.2),
            Some("primary")
        );
        s.on_hook_done(promote, outcome(HookKind::Promote, 2, true), b"", 120);
        assert_eq!(s.applied(), &Applied::Primary { epoch: 2 });
        // Renewals move the deadline on.
        s.on_agent(
            agent(MemberRole::Primary, 2, Some(1500), Some("cache-0")),
            400,
        );
        assert!(s.next_deadline(1400) <= 1500);
        assert!(
            runs(&s.on_tick(1499))
                .iter()
                .all(|r| r.1 != HookKind::Demote)
        );
        // No renewal after that (the agent is frozen): fenced at the lease's end.
        let a = s.on_tick(1500);
        assert_eq!(
            runs(&a)
                .iter()
                .find(|r| r.1 == HookKind::Demote)
                .map(|r| r.2),
            Some("fenced")
        );
        assert_eq!(s.applied(), &Applied::Fenced { epoch: 2 });
        assert!(!s.report().healthy, "a fenced workload is no candidate");
    }

    fn reports(actions: &[Action]) -> Vec<&WorkloadReport> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_demotion_shows_as_released_only_once_the_demote_hook_is_done() {
        let mut s = started(FenceMode::Demote);
        let mut primary = agent(MemberRole::Primary, 2, Some(1000), Some("cache-0"));
        primary.revision = 5;
        let a = s.on_agent(primary, 100);
        // While the promote runs the workload may already accept writes.
        assert_eq!(s.report().primary_epoch, Some(2));
        s.on_hook_done(
            run_of(&a, HookKind::Promote),
            outcome(HookKind::Promote, 2, true),
            b"",
            120,
        );
        // A later answer with the same role is no news: nothing is sent for it alone.
        let mut renewed = agent(MemberRole::Primary, 2, Some(1300), Some("cache-0"));
        renewed.revision = 8;
        assert!(reports(&s.on_agent(renewed, 300)).is_empty());
        assert_eq!(s.report().role_seen_revision, 8);
        // The agent released in its state 9: the answer that shows it is news at once, but the
        // workload stays primary until the demote hook is done.
        let mut backup = agent(MemberRole::Backup, 2, None, Some("cache-1"));
        backup.revision = 9;
        let a = s.on_agent(backup, 401);
        let sent = reports(&a);
        assert_eq!(sent.len(), 1, "{a:?}");
        assert!(!sent[0].shows_released(2, 1, 9), "{:?}", sent[0]);
        let a = s.on_hook_done(
            run_of(&a, HookKind::Demote),
            outcome(HookKind::Demote, 2, true),
            b"",
            420,
        );
        let sent = reports(&a);
        assert!(sent.len() == 1 && sent[0].shows_released(2, 1, 9), "{a:?}");
    }

    #[test]
    fn a_promote_that_began_before_a_release_keeps_the_epoch_held_until_it_is_undone() {
        let mut s = started(FenceMode::Demote);
        let a = s.on_agent(
            agent(MemberRole::Primary, 2, Some(1000), Some("cache-0")),
            100,
        );
        let promote = run_of(&a, HookKind::Promote);
        // The agent released while the promote ran: seen, but the workload may be primary.
        let mut backup = agent(MemberRole::Backup, 2, None, Some("cache-1"));
        backup.revision = 4;
        s.on_agent(backup, 150);
        assert!(!s.report().shows_released(2, 1, 4));
        let a = s.on_hook_done(promote, outcome(HookKind::Promote, 2, true), b"", 160);
        let demote = run_of(&a, HookKind::Demote);
        assert!(
            demote > 0,
            "the promoted workload is demoted at once: {a:?}"
        );
        assert!(!s.report().shows_released(2, 1, 4));
        s.on_hook_done(demote, outcome(HookKind::Demote, 2, true), b"", 170);
        assert!(s.report().shows_released(2, 1, 4));
    }

    #[test]
    fn an_exited_workload_shows_as_released() {
        let mut s = started(FenceMode::Demote);
        let a = s.on_agent(
            agent(MemberRole::Primary, 2, Some(1000), Some("cache-0")),
            100,
        );
        s.on_hook_done(
            run_of(&a, HookKind::Promote),
            outcome(HookKind::Promote, 2, true),
            b"",
            120,
        );
        assert!(!s.report().shows_released(2, 1, 0));
        s.on_workload_exited();
        assert!(s.report().shows_released(2, 99, 99));
    }

    #[test]
    fn kill_fencing_stops_the_process() {
        let mut s = started(FenceMode::Kill);
        let a = s.on_agent(
            agent(MemberRole::Primary, 2, Some(1000), Some("cache-0")),
            100,
        );
        s.on_hook_done(
            run_of(&a, HookKind::Promote),
            outcome(HookKind::Promote, 2, true),
            b"",
            120,
        );
        let a = s.on_tick(1000);
        assert!(
            a.iter().any(|x| matches!(x, Action::KillWorkload { .. })),
            "{a:?}"
        );
    }

    #[test]
    fn a_promote_still_running_at_the_lease_end_is_cancelled_and_the_workload_fenced() {
        let mut s = started(FenceMode::Demote);
        let a = s.on_agent(
            agent(MemberRole::Primary, 2, Some(1000), Some("cache-0")),
            100,
        );
        let promote = run_of(&a, HookKind::Promote);
        let a = s.on_tick(1000);
        assert!(a.contains(&Action::Cancel { run: promote }), "{a:?}");
        let fence = run_of(&a, HookKind::Demote);
        // The cancelled promote's outcome arrives: it changes nothing about the fencing.
        let a = s.on_hook_done(promote, outcome(HookKind::Promote, 2, false), b"", 1005);
        assert!(!a.iter().any(|x| matches!(x, Action::KillWorkload { .. })));
        s.on_hook_done(fence, outcome(HookKind::Demote, 2, true), b"", 1010);
        assert_eq!(s.applied(), &Applied::Fenced { epoch: 2 });
    }

    #[test]
    fn a_failed_promote_is_reported_and_not_retried_for_its_epoch() {
        let mut s = started(FenceMode::Demote);
        let a = s.on_agent(
            agent(MemberRole::Primary, 2, Some(1000), Some("cache-0")),
            100,
        );
        s.on_hook_done(
            run_of(&a, HookKind::Promote),
            outcome(HookKind::Promote, 2, false),
            b"",
            120,
        );
        let report = s.report();
        assert!(
            report
                .hooks
                .iter()
                .any(|h| h.hook == HookKind::Promote && !h.ok && h.epoch == 2)
        );
        assert_ne!(s.applied(), &Applied::Primary { epoch: 2 });
        let a = s.on_agent(
            agent(MemberRole::Primary, 2, Some(1200), Some("cache-0")),
            200,
        );
        assert!(runs(&a).iter().all(|r| r.1 != HookKind::Promote), "{a:?}");
        // A new epoch is a new chance.
        let a = s.on_agent(
            agent(MemberRole::Primary, 3, Some(5000), Some("cache-0")),
            3000,
        );
        assert!(runs(&a).iter().any(|r| r.1 == HookKind::Promote));
    }

    #[test]
    fn a_failed_demote_stops_a_former_primary_and_is_retried_on_a_backup() {
        let mut s = started(FenceMode::Demote);
        let a = s.on_agent(agent(MemberRole::Backup, 2, None, Some("cache-1")), 100);
        let demote = run_of(&a, HookKind::Demote);
        // Never primary since it started (still starting up, say): tried again a second later.
        let a = s.on_hook_done(demote, outcome(HookKind::Demote, 2, false), b"", 150);
        assert!(
            !a.iter().any(|x| matches!(x, Action::KillWorkload { .. })),
            "{a:?}"
        );
        // Not in any role since it started: no candidate until a demote succeeds.
        let r = s.report();
        assert!(!r.healthy, "{r:?}");
        assert!(r.health_message.contains("demote hook failed"), "{r:?}");
        assert!(
            runs(&s.on_tick(1000))
                .iter()
                .all(|r| r.1 != HookKind::Demote)
        );
        let a = s.on_tick(1150);
        let retry = run_of(&a, HookKind::Demote);
        assert!(retry > demote, "{a:?}");
        s.on_hook_done(retry, outcome(HookKind::Demote, 2, true), b"", 1160);
        assert!(s.report().healthy, "{:?}", s.report());
        // A primary whose demote fails is stopped.
        let a = s.on_agent(
            agent(MemberRole::Primary, 3, Some(5000), Some("cache-0")),
            2000,
        );
        s.on_hook_done(
            run_of(&a, HookKind::Promote),
            outcome(HookKind::Promote, 3, true),
            b"",
            2010,
        );
        let a = s.on_agent(agent(MemberRole::Backup, 4, None, Some("cache-1")), 3000);
        let a = s.on_hook_done(
            run_of(&a, HookKind::Demote),
            outcome(HookKind::Demote, 4, false),
            b"",
            3010,
        );
        assert!(
            a.iter().any(|x| matches!(x, Action::KillWorkload { .. })),
            "{a:?}"
        );
    }

    #[test]
    fn a_backup_follows_each_new_primary_and_keeps_following_while_none_is_known() {
        let mut s = started(FenceMode::Demote);
        let a = s.on_agent(agent(MemberRole::Backup, 2, None, Some("cache-1")), 100);
        s.on_hook_done(
            run_of(&a, HookKind::Demote),
            outcome(HookKind::Demote, 2, true),
            b"",
            110,
        );
        let a = s.on_agent(agent(MemberRole::Backup, 2, None, None), 200);
        assert!(runs(&a).iter().all(|r| r.1 != HookKind::Demote), "{a:?}");
        let a = s.on_agent(agent(MemberRole::Backup, 3, None, Some("cache-2")), 300);
        assert!(runs(&a).iter().any(|r| r.1 == HookKind::Demote), "{a:?}");
    }

    #[test]
    fn a_declared_position_not_read_yet_is_reported_as_missing() {
        let mut s = SupervisorCore::new(declared(FenceMode::Demote));
        let a = s.on_agent(agent(MemberRole::Backup, 1, None, None), 0);
        let a = s.on_hook_done(
            run_of(&a, HookKind::Join),
            outcome(HookKind::Join, 1, true),
            b"",
            10,
        );
        // Running, the position hook started but not done: the agent must not count a
        // position-less member as a candidate (a position-less group would choose without it).
        let r = s.report();
        assert_eq!(r.position, None);
        assert!(
            r.position_error.contains("not printed a position yet"),
            "{r:?}"
        );
        s.on_hook_done(
            run_of(&a, HookKind::Position),
            outcome(HookKind::Position, 1, true),
            b"7\n",
            12,
        );
        let r = s.report();
        assert_eq!((r.position, r.position_error.as_str()), (Some(7), ""));
    }

    #[test]
    fn a_wanted_position_is_measured_at_once_and_reported_with_its_token() {
        let mut s = started(FenceMode::Demote);
        assert_eq!(s.report().position, Some(41));
        let first = s.runs;
        let mut wanted = agent(MemberRole::Backup, 2, None, None);
        wanted.position_wanted = 7;
        let a = s.on_agent(wanted, 150);
        let second = run_of(&a, HookKind::Position);
        assert!(second > first, "{a:?}");
        let a = s.on_hook_done(
            second,
            outcome(HookKind::Position, 2, true),
            b"garbage",
            160,
        );
        assert!(
            a.iter()
                .any(|x| matches!(x, Action::Report(r) if r.position_token == 7)),
            "the new token is sent at once: {a:?}"
        );
        let r = s.report();
        assert_eq!((r.position, r.position_token), (None, 7));
        assert!(r.position_error.contains("integer"), "{}", r.position_error);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Agent {
            primary: bool,
            epoch: u64,
            lease: u64,
        },
        Silent,
        FinishOldest {
            ok: bool,
        },
        Time(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<bool>(), 1u64..4, 0u64..1500).prop_map(|(primary, epoch, lease)| Step::Agent {
                primary,
                epoch,
                lease
            }),
            Just(Step::Silent),
            any::<bool>().prop_map(|ok| Step::FinishOldest { ok }),
            (1u64..700).prop_map(Step::Time),
        ]
    }

    proptest! {
        /// Whatever the agent says or stops saying and however the hooks end, the workload is
        /// never left primary past the last lease end the agent gave for its epoch.
        #[test]
        fn the_workload_is_never_primary_past_its_lease(steps in proptest::collection::vec(step(), 1..60)) {
            let mut s = started(FenceMode::Demote);
            let mut now = 20u64;
            let mut running: Vec<(u64, HookKind, u64)> = Vec::new();
            let mut lease_end: std::collections::BTreeMap<u64, u64> = Default::default();
            let mut killed = false;
            let mut last_epoch = 0;
            for st in steps {
                let actions = match st {
                    Step::Agent { primary, epoch, lease } => {
                        // An agent's epochs never go back.
                        let epoch = epoch.max(last_epoch);
                        last_epoch = epoch;
                        let role = if primary { MemberRole::Primary } else { MemberRole::Backup };
                        let until = primary.then_some(now + lease);
                        if let Some(u) = until {
                            let e = lease_end.entry(epoch).or_insert(u);
                            *e = (*e).max(u);
                        }
                        s.on_agent(agent(role, epoch, until, Some(if primary { "cache-0" } else { "cache-1" })), now)
                    }
                    Step::Silent => Vec::new(),
                    Step::FinishOldest { ok } => {
                        if running.is_empty() { Vec::new() } else {
                            let (run, hook, epoch) = running.remove(0);
                            s.on_hook_done(run, outcome(hook, epoch, ok), b"5", now)
                        }
                    }
                    Step::Time(d) => {
                        // The runtime never sleeps past the core's deadline.
                        let target = now + d;
                        let mut acts = Vec::new();
                        while now < target {
                            now = s.next_deadline(now).min(target).max(now + 1);
                            acts.extend(s.on_tick(now));
                        }
                        acts
                    }
                };
                for a in &actions {
                    match a {
                        Action::Run { run, hook, env } => running.push((*run, *hook, env.epoch)),
                        Action::Cancel { run } => running.retain(|r| r.0 != *run),
                        Action::KillWorkload { .. } => killed = true,
                        _ => {}
                    }
                }
                if killed {
                    break;
                }
                if let Applied::Primary { epoch } = s.applied() {
                    // A lease of this epoch or a later one given to this member.
                    let end = lease_end.range(*epoch..).map(|(_, u)| *u).max().unwrap_or(0);
                    prop_assert!(now < end, "primary under epoch {} at {} but its lease ended at {}", epoch, now, end);
                }
            }
        }
    }
}
