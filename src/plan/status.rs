//! The status the operator reports (phase, members, conditions, last failover) and the events
//! that explain what changed.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::lifecycle::Lifecycle;
use super::routing::{SliceDecision, TrafficPlan};
use super::{AgentsObserved, GroupView, LeaseView, NameConflict, Observed, PlannedEvent};
use crate::api::names::{COMPONENT_LABEL, COMPONENT_MEMBER, GROUP_LABEL, GroupNames};
use crate::api::{
    FailoverRecord, GroupMode, GroupPhase, HookKind, HookStatus, MemberRole, MemberStatus,
    ReplicaGroup, ReplicaGroupStatus,
};
use crate::supervisor::protocol::HookOutcome;

pub const READY: &str = "Ready";
pub const AVAILABLE: &str = "Available";
pub const QUORUM: &str = "Quorum";
pub const ROUTING_CONVERGED: &str = "RoutingConverged";
pub const DEGRADED: &str = "Degraded";
/// Every pod runs its StatefulSet's current template (False while a roll is under way or waits).
pub const UP_TO_DATE: &str = "UpToDate";

/// The Quorum reason while the state stream is being set up: the phase does not call that Failed.
const CONNECTING: &str = "Connecting";
/// The Degraded reason of an object under the group's names that is not the group's.
pub const NAME_CONFLICT: &str = "NameConflict";
/// The Degraded reason of a spec whose derived objects the API server refuses.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// The Degraded reason of a group CA Secret that is gone while the members trust it.
pub const CA_LOST: &str = "CaLost";
/// The Degraded reason that gets no event (members are unhealthy for a while in every rollout).
const MEMBERS_UNHEALTHY: &str = "MembersUnhealthy";
/// The most of a failed hook's output the status keeps (the supervisor sends up to 1 KiB).
const HOOK_OUTPUT_STATUS_BYTES: usize = 256;
/// The most of a failed hook's output an Event's note quotes.
const HOOK_OUTPUT_EVENT_CHARS: usize = 200;

fn time(ms: i64) -> Time {
    Time(jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

struct Conditions<'a> {
    previous: &'a [Condition],
    now_ms: i64,
    generation: Option<i64>,
    out: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    /// None set yet, over the conditions `group` has now.
    fn of(group: &'a ReplicaGroup, now_ms: i64) -> Self {
        Self {
            previous: group
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            now_ms,
            generation: group.metadata.generation,
            out: Vec::new(),
        }
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        self.set_raw(
            type_,
            if status { "True" } else { "False" },
            reason,
            message.into(),
        );
    }
    fn set_raw(&mut self, type_: &str, status: &str, reason: &str, message: String) {
        // The transition time moves only when the status does.
        let since = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| time(self.now_ms));
        self.out.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: since,
            observed_generation: self.generation,
        });
    }
}

fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

fn addresses(d: &SliceDecision) -> Option<Vec<String>> {
    match d {
        SliceDecision::Keep => None,
        SliceDecision::Route(m) => {
            let mut a: Vec<String> = m.iter().map(|(_, ip)| ip.clone()).collect();
            a.sort();
            Some(a)
        }
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// What the status is built from: what the operator read, the status it wrote last time, and
/// this reconcile's other decisions (lifecycle, traffic), which the status reports on.
#[derive(Clone, Copy)]
pub(super) struct StatusInputs<'a> {
    pub group: &'a ReplicaGroup,
    pub names: &'a GroupNames,
    pub observed: &'a Observed,
    pub previous: &'a ReplicaGroupStatus,
    pub lifecycle: &'a Lifecycle,
    pub traffic: &'a TrafficPlan,
    /// Why the pod template cannot be used (`members::template_problem`).
    pub template_problem: Option<&'a str>,
}

impl<'a> StatusInputs<'a> {
    /// The group's state as its agents last streamed it, if the stream is up.
    fn view(&self) -> Option<&'a GroupView> {
        match &self.observed.agents {
            AgentsObserved::Connected { view, .. } => Some(view),
            _ => None,
        }
    }

    /// The primary's lease is trusted (first-hand) and has not run out since the state arrived.
    fn primary_live(&self) -> bool {
        match &self.observed.agents {
            AgentsObserved::Connected { view, age_ms } => {
                view.from_coordinator
                    && view.lease == LeaseView::Live
                    && *age_ms < view.lease_remaining_ms
            }
            _ => false,
        }
    }

    /// The members the spec asks for; members beyond them are only kept until they leave.
    fn wanted_members(&self) -> Vec<String> {
        (0..self.group.spec.replicas.max(0) as u32)
            .map(|i| self.names.member(i))
            .collect()
    }
}

/// The new status and the events that explain it. Each stage is a function of the inputs and
/// of what the stages before it produced: members, then conditions (which read the members),
/// then events and phase (which read the conditions).
pub(super) fn build(inputs: &StatusInputs) -> (ReplicaGroupStatus, Vec<PlannedEvent>) {
    let StatusInputs {
        group,
        names,
        observed,
        previous,
        lifecycle,
        traffic,
        ..
    } = *inputs;
    let view = inputs.view();
    let now = observed.now_ms;

    let members = member_statuses(inputs);
    let conditions = conditions(inputs, &members);
    let events = events(inputs, &conditions);
    let phase = phase(inputs, &conditions);

    let wanted = inputs.wanted_members();
    let ready_replicas = members
        .iter()
        .filter(|m| wanted.contains(&m.name) && m.healthy && m.voter)
        .count() as i32;
    let epoch = view.map(|v| v.epoch as i64).max(previous.epoch);
    let status = ReplicaGroupStatus {
        phase: Some(phase),
        replicas: observed.pods.iter().filter(|p| !p.witness).count() as i32,
        ready_replicas,
        primary: match (group.spec.mode, view) {
            (GroupMode::PrimaryBackup, Some(v)) if inputs.primary_live() => v.primary.clone(),
            // A relayed view says nothing first-hand about the lease (as for routing): the
            // primary last known stays, instead of flapping to none while the operator follows
            // a new coordinator (after an operator restart, or a node's return).
            (GroupMode::PrimaryBackup, Some(v)) if !v.from_coordinator => previous.primary.clone(),
            (GroupMode::PrimaryBackup, None) => previous.primary.clone(),
            _ => None,
        },
        leader: view
            .and_then(|v| v.leader.clone())
            .or_else(|| view.is_none().then(|| previous.leader.clone()).flatten()),
        epoch: epoch.filter(|e| *e > 0),
        routed_epoch: traffic.rw_epoch.map(|e| e as i64).filter(|e| *e > 0),
        members,
        conditions,
        last_failover: last_failover(view, previous, traffic, now),
        bootstrapped_at: previous
            .bootstrapped_at
            .clone()
            .or_else(|| lifecycle.bootstrapped.then(|| time(now))),
        weights_changed_at: if traffic.weights_changed {
            Some(time(now))
        } else {
            previous.weights_changed_at.clone()
        },
        observed_generation: group.metadata.generation,
        selector: Some(format!(
            "{GROUP_LABEL}={},{COMPONENT_LABEL}={COMPONENT_MEMBER}",
            names.name
        )),
    };
    (status, events)
}

/// One entry per member and witness the StatefulSets keep, then any other member the group
/// still has (so a member on its way out stays visible until it is gone).
pub(super) fn member_statuses(inputs: &StatusInputs) -> Vec<MemberStatus> {
    let StatusInputs {
        group,
        names,
        observed,
        lifecycle,
        traffic,
        ..
    } = *inputs;
    let view = inputs.view();
    let primary_live = inputs.primary_live();
    let position_hook = group
        .spec
        .hooks
        .as_ref()
        .is_some_and(|h| h.position.is_some());
    let mut member_names: Vec<String> = (0..lifecycle.member_replicas.max(0) as u32)
        .map(|i| names.member(i))
        .chain((0..lifecycle.witness_replicas.max(0) as u32).map(|i| names.witness(i)))
        .collect();
    for m in view.map(|v| v.members.as_slice()).unwrap_or_default() {
        if !member_names.contains(&m.name) {
            member_names.push(m.name.clone());
        }
    }
    let pod_serving = |name: &str| {
        observed
            .pods
            .iter()
            .any(|p| p.name == name && !p.terminating && p.ip.is_some())
    };
    member_names
        .iter()
        .map(|name| {
            let in_view = view.and_then(|v| v.members.iter().find(|m| &m.name == name));
            let is_primary = view.is_some_and(|v| v.primary.as_deref() == Some(name.as_str()));
            let witness = names.ordinal_of(name).is_some_and(|(w, _)| w);
            // A member whose pod is being deleted or is gone is not healthy, whatever its
            // agent last said: the group is not whole again until the pod is back.
            let healthy = in_view.is_some_and(|m| m.healthy) && pod_serving(name);
            MemberStatus {
                name: name.clone(),
                id: in_view.map(|m| m.id as i64),
                role: in_view.map_or(
                    if witness {
                        MemberRole::Witness
                    } else {
                        MemberRole::Unknown
                    },
                    |m| m.role,
                ),
                healthy,
                voter: in_view.is_some_and(|m| m.voter),
                weight: traffic.weights.get(name).copied().unwrap_or(0),
                fenced: in_view.is_some_and(|m| m.fenced),
                lease: (is_primary && group.spec.mode == GroupMode::PrimaryBackup).then(|| {
                    match view.map(|v| v.lease) {
                        Some(LeaseView::Live) if primary_live => "Live",
                        Some(LeaseView::Released) => "Released",
                        Some(LeaseView::None) | None => "None",
                        _ => "Expired",
                    }
                    .to_owned()
                }),
                // Reports change all the time: in the status (each change a write) only where
                // they decide the weights.
                load: in_view
                    .filter(|_| group.spec.traffic.policy.load_driven())
                    .and_then(|m| m.load),
                latency_millis: in_view
                    .filter(|_| group.spec.traffic.policy.load_driven())
                    .and_then(|m| m.latency_ms),
                // The position moves with every write to the workload: in the status (each
                // change a write) only while it explains something, i.e. while the member is
                // unhealthy or not a candidate, next to the message that says why.
                position: in_view
                    .filter(|m| position_hook && (!healthy || !m.message.is_empty()))
                    .and_then(|m| m.position)
                    .map(|p| i64::try_from(p).unwrap_or(i64::MAX)),
                message: in_view.map(|m| m.message.clone()).filter(|m| !m.is_empty()),
                hooks: in_view.map_or_else(Vec::new, |m| hook_statuses(&m.hooks)),
            }
        })
        .collect()
}

/// The first outcome of each hook kind, in the order of `HookKind` (the supervisor sends one
/// per kind; an agent of another version may list more).
fn latest_outcomes(outcomes: &[HookOutcome]) -> impl Iterator<Item = &HookOutcome> {
    let mut latest: BTreeMap<HookKind, &HookOutcome> = BTreeMap::new();
    for o in outcomes {
        latest.entry(o.hook).or_insert(o);
    }
    latest.into_values()
}

/// The hooks' outcomes as the status shows them. Nothing in them may change while the hooks
/// keep giving the same result, or every report would be a status write: the duration only for
/// the hooks that run once per epoch or container start (promote, demote, join; health and
/// position run every period, each run with a new duration), the output only of failures,
/// and in a fixed order.
fn hook_statuses(outcomes: &[HookOutcome]) -> Vec<HookStatus> {
    latest_outcomes(outcomes)
        .map(|o| HookStatus {
            hook: o.hook,
            epoch: i64::try_from(o.epoch).unwrap_or(i64::MAX),
            ok: o.ok,
            exit_code: o.exit_code,
            duration_millis: matches!(
                o.hook,
                HookKind::Promote | HookKind::Demote | HookKind::Join
            )
            .then(|| i64::try_from(o.duration_millis).unwrap_or(i64::MAX)),
            message: (!o.message.is_empty()).then(|| o.message.clone()),
            output: (!o.ok && !o.output.is_empty())
                .then(|| tail_bytes(&o.output, HOOK_OUTPUT_STATUS_BYTES).to_owned()),
        })
        .collect()
}

/// The last `max` bytes of `text` at most, starting at a character boundary.
fn tail_bytes(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A failed hook's output for an Event's note: its last characters, on one line.
fn output_for_note(output: &str) -> String {
    let one_line = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    let skip = one_line
        .chars()
        .count()
        .saturating_sub(HOOK_OUTPUT_EVENT_CHARS);
    one_line.chars().skip(skip).collect()
}

/// `HookFailed` events: a member's hook failure that the previous status did not show (the
/// same member, hook and epoch, failed). A promote, demote or join failure is news, and so is a
/// health or position hook that starts failing, once: while it goes on failing, the status
/// shows it.
fn hook_failures(view: &GroupView, previous: &ReplicaGroupStatus) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    for m in &view.members {
        let before = previous.members.iter().find(|p| p.name == m.name);
        for o in latest_outcomes(&m.hooks).filter(|o| !o.ok) {
            let epoch = i64::try_from(o.epoch).unwrap_or(i64::MAX);
            let shown = before.is_some_and(|b| {
                b.hooks
                    .iter()
                    .any(|h| h.hook == o.hook && h.epoch == epoch && !h.ok)
            });
            if shown {
                continue;
            }
            let mut note = format!("{}: {} hook failed", m.name, o.hook.as_str());
            if o.epoch > 0 {
                note.push_str(&format!(" for epoch {}", o.epoch));
            }
            for part in [o.message.clone(), output_for_note(&o.output)] {
                if !part.is_empty() {
                    note.push_str(": ");
                    note.push_str(&part);
                }
            }
            events.push(PlannedEvent {
                warning: true,
                reason: "HookFailed".into(),
                note,
            });
        }
    }
    events
}

/// The last change of primary, with the time routing followed it.
pub(super) fn last_failover(
    view: Option<&GroupView>,
    previous: &ReplicaGroupStatus,
    traffic: &TrafficPlan,
    now: i64,
) -> Option<FailoverRecord> {
    // Every change of primary, switchovers included: the operator itself switches over as soon
    // as the primary's pod is being deleted, and that is an unplanned event for the user.
    let Some(record) = view.and_then(|v| v.failovers.last()) else {
        return previous.last_failover.clone();
    };
    let same = previous
        .last_failover
        .as_ref()
        .filter(|p| p.epoch == Some(record.epoch as i64));
    // Once routed, keep the figures of the reconcile that routed it: the stored routedAt has
    // only whole seconds, so a duration computed again from it would be off by up to a second.
    let (routed_at, duration) = match same.filter(|p| p.routed_at.is_some()) {
        Some(p) => (p.routed_at.clone(), p.duration_millis),
        None => {
            let routed = traffic.routed_primary.as_deref() == Some(record.to.as_str())
                && traffic.rw_epoch >= Some(record.epoch);
            let routed_at = routed.then(|| time(now));
            (
                routed_at,
                routed.then(|| (now - record.detected_at_ms).max(0)),
            )
        }
    };
    Some(FailoverRecord {
        detected_at: Some(time(record.detected_at_ms)),
        appointed_at: Some(time(record.appointed_at_ms)),
        routed_at,
        duration_millis: duration,
        from: record.from.clone(),
        to: Some(record.to.clone()),
        epoch: Some(record.epoch as i64),
        reason: Some(record.reason.clone()),
    })
}

/// Quorum, Available, RoutingConverged, Degraded, then Ready from those four.
pub(super) fn conditions(inputs: &StatusInputs, members: &[MemberStatus]) -> Vec<Condition> {
    let mut c = Conditions {
        previous: &inputs.previous.conditions,
        now_ms: inputs.observed.now_ms,
        generation: inputs.group.metadata.generation,
        out: Vec::new(),
    };
    quorum(inputs, &mut c);
    available(inputs, &mut c);
    routing_converged(inputs, &mut c);
    match degradation(inputs, members) {
        Some((reason, message)) => c.set(DEGRADED, true, reason, message),
        None => c.set(DEGRADED, false, "AsExpected", "every member is healthy"),
    }
    ready(&mut c);
    c.out
}

fn quorum(inputs: &StatusInputs, c: &mut Conditions) {
    match (&inputs.observed.agents, inputs.view()) {
        (_, Some(v)) if v.from_coordinator && v.leader.is_some() => c.set(
            QUORUM,
            true,
            "CoordinatorElected",
            format!(
                "{} coordinates the group",
                v.leader.as_deref().unwrap_or_default()
            ),
        ),
        (_, Some(_)) => c.set(
            QUORUM,
            false,
            "NoCoordinator",
            "the members have no coordinator (no Raft majority reachable)",
        ),
        (AgentsObserved::Connecting, _) => c.set_raw(
            QUORUM,
            "Unknown",
            CONNECTING,
            "connecting to the group's agents".into(),
        ),
        (AgentsObserved::Unreachable { error, .. }, _) => {
            c.set(QUORUM, false, "AgentsUnreachable", error.clone())
        }
        (AgentsObserved::Connected { .. }, None) => c.set(
            QUORUM,
            false,
            "AgentsUnreachable",
            "no state from the agents",
        ),
    }
}

/// Whether the group's Service routes anywhere after this reconcile (what it keeps when this
/// decision leaves the slice alone).
fn available(inputs: &StatusInputs, c: &mut Conditions) {
    let StatusInputs {
        group,
        names,
        observed,
        traffic,
        ..
    } = *inputs;
    let rw_now = addresses(&traffic.rw).unwrap_or_else(|| sorted(&observed.routed_addresses));
    let r_now = addresses(&traffic.r).unwrap_or_else(|| sorted(&observed.r_addresses));
    let available = match group.spec.mode {
        GroupMode::PrimaryBackup => !rw_now.is_empty(),
        GroupMode::ActiveActive => !r_now.is_empty(),
    };
    match group.spec.mode {
        GroupMode::PrimaryBackup if available => c.set(
            AVAILABLE,
            true,
            "PrimaryRouted",
            format!(
                "{} routes to the primary{}",
                names.rw(),
                traffic
                    .routed_primary
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default()
            ),
        ),
        GroupMode::PrimaryBackup => c.set(
            AVAILABLE,
            false,
            "NoPrimary",
            format!(
                "{} routes to no member: no primary holds a live lease",
                names.rw()
            ),
        ),
        GroupMode::ActiveActive if available => c.set(
            AVAILABLE,
            true,
            "MembersRouted",
            format!("{} routes to {} member(s)", names.r(), r_now.len()),
        ),
        GroupMode::ActiveActive => c.set(
            AVAILABLE,
            false,
            "NoHealthyMember",
            format!("{} routes to no member", names.r()),
        ),
    }
}

/// Converged: what is applied (read back) equals what this decision wants.
fn routing_converged(inputs: &StatusInputs, c: &mut Conditions) {
    let StatusInputs {
        group,
        names,
        observed,
        traffic,
        ..
    } = *inputs;
    let mut differences = Vec::new();
    for (label, want, have) in [
        (
            names.rw(),
            addresses(&traffic.rw),
            &observed.routed_addresses,
        ),
        (names.ro(), addresses(&traffic.ro), &observed.ro_addresses),
        (names.r(), addresses(&traffic.r), &observed.r_addresses),
    ] {
        if let Some(want) = want
            && want != sorted(have)
            && !group.spec.ports.is_empty()
        {
            differences.push(format!(
                "{label}: applied {:?}, wanted {want:?}",
                sorted(have)
            ));
        }
    }
    if let Some(why) = &traffic.held {
        differences.push(format!("routing held: {why}"));
    }
    route_differences(group, observed, traffic, &mut differences);
    if differences.is_empty() {
        c.set(
            ROUTING_CONVERGED,
            true,
            "Converged",
            "the applied routing matches the group's state",
        );
    } else {
        c.set(ROUTING_CONVERGED, false, "Pending", differences.join("; "));
    }
}

/// The most pressing problem, if any, as (reason, message): what needs a human first.
fn degradation<'a>(
    inputs: &StatusInputs<'a>,
    members: &[MemberStatus],
) -> Option<(&'a str, String)> {
    let StatusInputs {
        group,
        names,
        observed,
        lifecycle,
        ..
    } = *inputs;
    if let Some(p) = inputs.template_problem {
        return Some(("InvalidTemplate", p.to_owned()));
    }
    if let Some(conflict) = observed.name_conflicts.first() {
        let others = observed.name_conflicts.len() - 1;
        let more = match others {
            0 => String::new(),
            n => format!(" (and {n} more object(s) under this group's names)"),
        };
        return Some((NAME_CONFLICT, format!("{}{more}", conflict.message())));
    }
    if let Some(lost) = &observed.ca_lost {
        return Some((CA_LOST, lost.clone()));
    }
    if let Some(rejected) = &observed.pods_rejected {
        return Some(("PodsRejected", rejected.clone()));
    }
    if let Some((reason, message)) = &lifecycle.problem {
        return Some((reason.as_str(), message.clone()));
    }
    if inputs.view().is_some_and(|v| v.flap_guard_tripped) {
        return Some((
            "FlapGuard",
            format!(
                "more than {} automatic failovers in an hour: automatic failover is stopped; run `kubectl quorate switchover {}` once the cause is fixed",
                group.spec.failover.max_failovers_per_hour, names.name
            ),
        ));
    }
    if let AgentsObserved::Unreachable { error, .. } = &observed.agents {
        return Some(("AgentsUnreachable", error.clone()));
    }
    if let Some(missing) = gateway_problem(group, observed) {
        return Some(("GatewayNotReady", missing));
    }
    // Wanted members and every witness; a member on its way out does not count.
    let wanted = inputs.wanted_members();
    let unhealthy: Vec<&str> = members
        .iter()
        .filter(|m| {
            (wanted.contains(&m.name) || names.ordinal_of(&m.name).is_some_and(|(w, _)| w))
                && !(m.healthy && m.voter)
        })
        .map(|m| m.name.as_str())
        .collect();
    if lifecycle.bootstrapped && !unhealthy.is_empty() {
        return Some((
            MEMBERS_UNHEALTHY,
            format!("not healthy or not voting yet: {}", unhealthy.join(", ")),
        ));
    }
    None
}

/// Why the operator cannot reconcile a group at all (operator/tls.rs checks its Secrets before
/// anything else): the name of one of them is taken, or its CA is lost and the operator has
/// nothing read before to go on with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    NameConflict(NameConflict),
    CaLost(String),
}

impl Blocked {
    fn reason(&self) -> &'static str {
        match self {
            Blocked::NameConflict(_) => NAME_CONFLICT,
            Blocked::CaLost(_) => CA_LOST,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Blocked::NameConflict(c) => c.message(),
            Blocked::CaLost(m) => m.clone(),
        }
    }
}

/// The status of a group the operator cannot reconcile at all: the previous status, with
/// Degraded and the reason, Ready false and phase Failed; and the event when that is news.
pub fn blocked(
    group: &ReplicaGroup,
    why: &Blocked,
    now_ms: i64,
) -> (ReplicaGroupStatus, Vec<PlannedEvent>) {
    let previous = group.status.clone().unwrap_or_default();
    let (conditions, events) = degraded_with(
        group,
        &previous.conditions,
        why.reason(),
        why.message(),
        now_ms,
    );
    let status = ReplicaGroupStatus {
        conditions,
        phase: Some(GroupPhase::Failed),
        ..previous
    };
    (status, events)
}

/// `conditions` with Degraded set to `reason` and `message` and Ready judged again; and the
/// Warning event of that reason, unless the group already said so.
fn degraded_with(
    group: &ReplicaGroup,
    conditions: &[Condition],
    reason: &str,
    message: String,
    now_ms: i64,
) -> (Vec<Condition>, Vec<PlannedEvent>) {
    let mut c = Conditions::of(group, now_ms);
    let previous = c.previous;
    c.out = conditions
        .iter()
        .filter(|x| x.type_ != DEGRADED && x.type_ != READY)
        .cloned()
        .collect();
    c.set(DEGRADED, true, reason, message.clone());
    ready(&mut c);
    let events = if reason_of(previous, DEGRADED) == Some(reason) {
        Vec::new()
    } else {
        vec![PlannedEvent {
            warning: true,
            reason: reason.into(),
            note: message,
        }]
    };
    (c.out, events)
}

/// The planned status once the API server refused objects derived from the spec (`refused`,
/// not empty): Degraded/InvalidSpec naming the first object and the API server's message (which
/// names the field), Ready false and phase Failed; and the event when that is news. What else
/// the plan found is kept (the refused objects stay as they were, the rest was written).
pub fn with_refused_writes(
    group: &ReplicaGroup,
    planned: ReplicaGroupStatus,
    refused: &[super::RefusedWrite],
    now_ms: i64,
) -> (ReplicaGroupStatus, Vec<PlannedEvent>) {
    let Some(first) = refused.first() else {
        return (planned, Vec::new());
    };
    let more = match refused.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more object(s))"),
    };
    let message = format!(
        "the API server refused {} {}, derived from this spec: {}{more}",
        first.kind, first.name, first.message
    );
    let (conditions, events) =
        degraded_with(group, &planned.conditions, INVALID_SPEC, message, now_ms);
    let status = ReplicaGroupStatus {
        conditions,
        phase: Some(GroupPhase::Failed),
        ..planned
    };
    (status, events)
}

/// The group's Ready condition as a gate: Ok, or why not.
pub(super) fn ready_gate(status: &ReplicaGroupStatus) -> Result<(), String> {
    match status.conditions.iter().find(|c| c.type_ == READY) {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(c.message.clone()),
        None => Err("no Ready condition".into()),
    }
}

/// The UpToDate condition from the roll's step (it has no part in Ready: a group is Ready on
/// an older template, and the roll itself waits for Ready).
pub(super) fn add_roll_condition(
    group: &ReplicaGroup,
    status: &mut ReplicaGroupStatus,
    now_ms: i64,
    roll: &super::roll::Roll,
) {
    let mut c = Conditions::of(group, now_ms);
    let to_go = format!(
        "{} pod(s) on an older pod template: {}",
        roll.outdated.len(),
        roll.outdated.join(", ")
    );
    if roll.outdated.is_empty() {
        c.set(
            UP_TO_DATE,
            true,
            "UpToDate",
            "every pod runs the current pod template",
        );
    } else if let Some(pod) = &roll.evict {
        c.set(
            UP_TO_DATE,
            false,
            "Rolling",
            format!("restarting {pod}; {to_go}"),
        );
    } else if roll.action.is_some() {
        let primary = status.primary.clone().unwrap_or_default();
        c.set(
            UP_TO_DATE,
            false,
            "Rolling",
            format!("switching over from {primary} before it restarts; {to_go}"),
        );
    } else {
        let why = roll.waiting.clone().unwrap_or_default();
        c.set(
            UP_TO_DATE,
            false,
            "RollWaiting",
            format!("{to_go}; waiting: {why}"),
        );
    }
    status.conditions.extend(c.out);
}

/// Ready when the other four are as they should be; otherwise it names the reasons why not.
fn ready(c: &mut Conditions) {
    let ready = is_true(&c.out, QUORUM)
        && is_true(&c.out, AVAILABLE)
        && is_true(&c.out, ROUTING_CONVERGED)
        && !is_true(&c.out, DEGRADED);
    if ready {
        c.set(
            READY,
            true,
            "Ready",
            "the group has a quorum, routed traffic and healthy members",
        );
    } else {
        let why = c
            .out
            .iter()
            .filter(|x| {
                (x.type_ == DEGRADED && x.status == "True")
                    || (x.type_ != DEGRADED && x.status != "True")
            })
            .map(|x| x.reason.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        c.set(READY, false, "NotReady", format!("waiting for: {why}"));
    }
}

/// Events on transitions only (the recorder would aggregate repeats, but a status change is
/// the news): a new primary, a new problem, a failed hook, a rejected request, changed routing
/// or weights.
pub(super) fn events(inputs: &StatusInputs, conditions: &[Condition]) -> Vec<PlannedEvent> {
    let StatusInputs {
        group,
        names,
        observed,
        previous,
        lifecycle,
        traffic,
        ..
    } = *inputs;
    let view = inputs.view();
    let known_epoch = previous.epoch.unwrap_or(0).max(0) as u64;
    let mut events = Vec::new();
    if let Some(record) = view.and_then(|v| v.failovers.last())
        && record.epoch > known_epoch
    {
        let from = record.from.clone().unwrap_or_else(|| "(none)".into());
        let (warning, reason) = if record.reason == "Switchover" {
            (false, "Switchover")
        } else {
            (true, "Failover")
        };
        events.push(PlannedEvent {
            warning,
            reason: reason.into(),
            note: format!(
                "primary {from} -> {} at epoch {} ({})",
                record.to, record.epoch, record.reason
            ),
        });
    }
    if let Some(v) = view
        && v.epoch > known_epoch
        && let Some(p) = &v.primary
    {
        events.push(PlannedEvent {
            warning: false,
            reason: "PrimaryAppointed".into(),
            note: format!("{p} appointed primary with epoch {}", v.epoch),
        });
    }
    let degraded = |conditions: &[Condition]| {
        conditions
            .iter()
            .find(|x| x.type_ == DEGRADED && x.status == "True")
            .map(|x| (x.reason.clone(), x.message.clone()))
    };
    // Unhealthy members come and go during every rollout: that is in the status, not news.
    if let Some((reason, message)) = degraded(conditions)
        && degraded(&previous.conditions).is_none_or(|(before, _)| before != reason)
        && reason != MEMBERS_UNHEALTHY
    {
        events.push(PlannedEvent {
            warning: true,
            reason,
            note: message,
        });
    }
    if let Some(v) = view {
        events.extend(hook_failures(v, previous));
    }
    if let Some((reason, message)) = &lifecycle.rejected_request {
        events.push(PlannedEvent {
            warning: true,
            reason: reason.clone(),
            note: message.clone(),
        });
    }
    if let SliceDecision::Route(m) = &traffic.rw {
        let target: Vec<String> = m.iter().map(|(_, ip)| ip.clone()).collect();
        if sorted(&target) != sorted(&observed.routed_addresses) {
            let note = match m.first() {
                Some((name, ip)) => format!(
                    "{} routes to {name} ({ip}) at epoch {}",
                    names.rw(),
                    traffic.rw_epoch.unwrap_or(0)
                ),
                None => format!("{} routes to no member (no live primary)", names.rw()),
            };
            events.push(PlannedEvent {
                warning: false,
                reason: "RoutingChanged".into(),
                note,
            });
        }
    }
    if traffic.weights_changed && group.spec.mode == GroupMode::ActiveActive {
        let list: Vec<String> = traffic
            .weights
            .iter()
            .map(|(m, w)| format!("{m}={w}"))
            .collect();
        events.push(PlannedEvent {
            warning: false,
            reason: "WeightsChanged".into(),
            note: list.join(" "),
        });
    }
    events
}

/// The phase, from the lifecycle and the conditions just set.
pub(super) fn phase(inputs: &StatusInputs, conditions: &[Condition]) -> GroupPhase {
    let lifecycle = inputs.lifecycle;
    if inputs.template_problem.is_some()
        || lifecycle.problem.is_some()
        || !inputs.observed.name_conflicts.is_empty()
    {
        GroupPhase::Failed
    } else if !lifecycle.bootstrapped {
        if inputs.observed.pods.is_empty() {
            GroupPhase::Pending
        } else {
            GroupPhase::Bootstrapping
        }
    } else if is_true(conditions, READY) {
        GroupPhase::Ready
    } else if !is_true(conditions, QUORUM) && reason_of(conditions, QUORUM) != Some(CONNECTING) {
        // No quorum is Failed; not knowing yet (the stream is being set up) is not.
        GroupPhase::Failed
    } else {
        GroupPhase::Degraded
    }
}

/// Why the HTTPRoute cannot work, if it cannot: no Gateway API, a missing Gateway.
fn gateway_problem(group: &ReplicaGroup, observed: &Observed) -> Option<String> {
    group.spec.traffic.gateway.as_ref()?;
    if !observed.gateway_api {
        return Some("spec.traffic.gateway is set but the Gateway API (HTTPRoute CRD) is not installed in the cluster".into());
    }
    if !observed.missing_gateways.is_empty() {
        return Some(format!(
            "Gateway not found: {}",
            observed.missing_gateways.join(", ")
        ));
    }
    None
}

/// HTTPRoute read-back: accepted by every parent, refs resolved, weights as published.
fn route_differences(
    group: &ReplicaGroup,
    observed: &Observed,
    traffic: &TrafficPlan,
    out: &mut Vec<String>,
) {
    let Some(gateway) = &group.spec.traffic.gateway else {
        return;
    };
    if !observed.gateway_api {
        out.push("the Gateway API is not installed".into());
        return;
    }
    let Some(route) = &observed.route else {
        out.push("the HTTPRoute does not exist yet".into());
        return;
    };
    if route.weights != traffic.weights {
        out.push(format!(
            "HTTPRoute weights {:?}, wanted {:?}",
            route.weights, traffic.weights
        ));
    }
    for parent in &gateway.parent_refs {
        match route.parents.get(&parent.name) {
            None => out.push(format!(
                "Gateway {} has not reported on the route yet",
                parent.name
            )),
            Some((accepted, resolved, message)) if !(*accepted && *resolved) => out.push(format!(
                "Gateway {} {}: {message}",
                parent.name,
                if *accepted {
                    "cannot resolve the route's backends"
                } else {
                    "did not accept the route"
                }
            )),
            _ => {}
        }
    }
}
