//! What makes a new group state worth a reconcile: the fields the plan decides on, compared as
//! typed values. Heartbeats that only refresh the lease's remaining time are not a change; load
//! and latency are, for load-sensitive groups only, to two significant digits (the traffic
//! policy's hysteresis judges what matters). So are a member's workload message and the results
//! of its hooks (the status shows them; a failure is an Event), but not the figures in them: the
//! workload position, the hooks' durations and the numbers in a message (a countdown) change
//! with every report.

use crate::agent::client::GroupState;

/// The part of a group state a reconcile reacts to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relevant {
    epoch: u64,
    primary: Option<u64>,
    primary_lease: i32,
    leader: Option<u64>,
    paused: bool,
    flap_guard_tripped: bool,
    switchover_pending: bool,
    from_coordinator: bool,
    initialized: bool,
    failovers: usize,
    members: Vec<RelevantMember>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RelevantMember {
    id: u64,
    name: String,
    voter: bool,
    role: i32,
    healthy: bool,
    fenced: bool,
    /// (load, latency) rounded; `None` unless the group is load-sensitive.
    signals: Option<(Option<Rounded>, Option<Rounded>)>,
    /// The workload message without its digits.
    message: String,
    /// (hook, epoch, ok) of each hook outcome, sorted.
    hooks: Vec<(String, u64, bool)>,
}

/// A number to two significant digits: mantissa 10..=99 (0 for zero) and a decimal exponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rounded {
    mantissa: i64,
    exponent: i32,
}

fn rounded(x: f64) -> Rounded {
    if x == 0.0 || !x.is_finite() {
        // Non-finite values compare equal to each other, never to a number.
        return Rounded {
            mantissa: 0,
            exponent: if x.is_finite() { 0 } else { i32::MAX },
        };
    }
    let mut exponent = x.abs().log10().floor() as i32 - 1;
    let mut mantissa = (x / 10f64.powi(exponent)).round() as i64;
    if mantissa.abs() >= 100 {
        // 9.96 rounds to 10, the same value as 10.0.
        mantissa /= 10;
        exponent += 1;
    }
    Rounded { mantissa, exponent }
}

impl Relevant {
    pub fn of(state: &GroupState, load_sensitive: bool) -> Relevant {
        Relevant {
            epoch: state.epoch,
            primary: state.primary.as_ref().map(|p| p.id),
            primary_lease: state.primary_lease,
            leader: state.leader.as_ref().map(|l| l.id),
            paused: state.paused,
            flap_guard_tripped: state.flap_guard_tripped,
            switchover_pending: state.switchover_pending,
            from_coordinator: state.from_coordinator,
            initialized: state.answered_by.as_ref().is_some_and(|n| n.initialized),
            failovers: state.failovers.len(),
            members: state
                .members
                .iter()
                .map(|m| RelevantMember {
                    id: m.id,
                    name: m.name.clone(),
                    voter: m.voter,
                    role: m.role,
                    healthy: m.healthy,
                    fenced: m.fenced,
                    signals: load_sensitive
                        .then(|| (m.load.map(rounded), m.latency_ms.map(rounded))),
                    message: m
                        .workload_message
                        .chars()
                        .filter(|c| !c.is_ascii_digit())
                        .collect(),
                    hooks: {
                        let mut hooks: Vec<(String, u64, bool)> = m
                            .hooks
                            .iter()
                            .map(|h| (h.hook.clone(), h.epoch, h.ok))
                            .collect();
                        hooks.sort();
                        hooks
                    },
                })
                .collect(),
        }
    }
}

/// The last relevant state a stream reported; `changed` says whether a new one differs.
#[derive(Debug, Default)]
pub struct ChangeDetector {
    last: Option<Relevant>,
}

impl ChangeDetector {
    /// Records `state`; true when it differs from the previous one in a field that matters (the
    /// first state always does).
    pub fn changed(&mut self, state: &GroupState, load_sensitive: bool) -> bool {
        let relevant = Relevant::of(state, load_sensitive);
        if self.last.as_ref() == Some(&relevant) {
            return false;
        }
        self.last = Some(relevant);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::client::{MemberRef, MemberStatus};
    use crate::agent::proto::HookOutcome;

    fn state() -> GroupState {
        GroupState {
            epoch: 3,
            primary: Some(MemberRef {
                id: 1,
                name: "g-0".into(),
                ..Default::default()
            }),
            leader: Some(MemberRef {
                id: 2,
                name: "g-1".into(),
                address: "g-1.g-peers".into(),
            }),
            primary_lease_remaining_millis: 1500,
            from_coordinator: true,
            members: vec![MemberStatus {
                id: 1,
                name: "g-0".into(),
                voter: true,
                healthy: true,
                load: Some(0.42),
                latency_ms: Some(12.0),
                hooks: vec![HookOutcome {
                    hook: "health".into(),
                    epoch: 3,
                    ok: true,
                    duration_millis: 12,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn changes(before: &GroupState, after: &GroupState, load_sensitive: bool) -> bool {
        let mut d = ChangeDetector::default();
        assert!(
            d.changed(before, load_sensitive),
            "the first state is a change"
        );
        d.changed(after, load_sensitive)
    }

    #[test]
    fn a_heartbeat_is_not_a_change() {
        let mut after = state();
        after.primary_lease_remaining_millis = 900;
        assert!(!changes(&state(), &after, false));
        assert!(!changes(&state(), &after, true));
    }

    #[test]
    fn a_relevant_field_is_a_change() {
        type Edit = (&'static str, fn(&mut GroupState));
        let edits: Vec<Edit> = vec![
            ("epoch", |s| s.epoch += 1),
            ("primary", |s| s.primary.as_mut().unwrap().id = 2),
            ("lease state", |s| s.primary_lease += 1),
            ("leader", |s| s.leader = None),
            ("paused", |s| s.paused = true),
            ("flap guard", |s| s.flap_guard_tripped = true),
            ("switchover", |s| s.switchover_pending = true),
            ("relayed", |s| s.from_coordinator = false),
            ("failovers", |s| s.failovers.push(Default::default())),
            ("member health", |s| s.members[0].healthy = false),
            ("member role", |s| s.members[0].role += 1),
            ("member voter", |s| s.members[0].voter = false),
            ("member fenced", |s| s.members[0].fenced = true),
            ("member added", |s| s.members.push(Default::default())),
            ("workload message", |s| {
                s.members[0].workload_message = "the workload's health check fails".into()
            }),
            ("hook failed", |s| {
                s.members[0].hooks[0].ok = false;
                s.members[0].hooks[0].message = "exited with code 1".into();
            }),
            ("hook for a new epoch", |s| s.members[0].hooks[0].epoch += 1),
            ("another hook ran", |s| {
                s.members[0].hooks.push(HookOutcome {
                    hook: "demote".into(),
                    ok: true,
                    ..Default::default()
                })
            }),
        ];
        for (what, edit) in edits {
            let mut after = state();
            edit(&mut after);
            assert!(changes(&state(), &after, false), "{what}");
        }
    }

    #[test]
    fn the_figures_of_a_report_are_not_a_change() {
        let mut before = state();
        before.members[0].workload_message =
            "the promote hook failed for epoch 4; not a candidate for 9 s".into();
        let mut after = before.clone();
        after.members[0].workload_message =
            "the promote hook failed for epoch 4; not a candidate for 8 s".into();
        after.members[0].workload_position = Some(123_456);
        after.members[0].hooks[0].duration_millis += 7;
        assert!(!changes(&before, &after, false));
    }

    #[test]
    fn load_and_latency_matter_only_when_load_sensitive() {
        let mut after = state();
        after.members[0].load = Some(0.9);
        after.members[0].latency_ms = Some(80.0);
        assert!(!changes(&state(), &after, false));
        assert!(changes(&state(), &after, true));
    }

    #[test]
    fn load_is_compared_to_two_significant_digits() {
        let mut after = state();
        after.members[0].load = Some(0.4201);
        assert!(!changes(&state(), &after, true));
        after.members[0].load = Some(0.43);
        assert!(changes(&state(), &after, true));
        after.members[0].load = None;
        assert!(changes(&state(), &after, true));
        assert_eq!(rounded(9.96), rounded(10.0));
        assert_eq!(
            rounded(0.0),
            Rounded {
                mantissa: 0,
                exponent: 0
            }
        );
        assert_ne!(rounded(f64::NAN), rounded(0.0));
    }
}
