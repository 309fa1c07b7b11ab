//! Rolling the pods onto a new pod template: a new operator and agent version, a change of the
//! group's template, re-issued certificates. The StatefulSets use `OnDelete` and the operator
//! decides who restarts when — one pod at a time, only while the group is Ready and every pod
//! is up: backups, then witnesses (each highest ordinal first), then one planned switchover to
//! a member already on the new template, then the old primary. So a roll costs a
//! PrimaryBackup group exactly one change of primary, never one per restarted member. Pods are
//! evicted, not deleted: the PodDisruptionBudget, shared with node drains, has the last word.

use std::cmp::Reverse;

use serde::Serialize;

use super::lifecycle::AgentAction;
use super::{GroupView, LeaseView, MemberPod, Observed};
use crate::api::{GroupMode, ReplicaGroup};

/// The reason of the roll's switchover (shown in the failover record and its Event).
pub const ROLL_SWITCHOVER_REASON: &str = "RollingUpdate";

/// This reconcile's step of the roll.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Roll {
    /// Pods on an older template than their StatefulSet's, in the order they restart.
    pub outdated: Vec<String>,
    /// The pod to evict now.
    pub evict: Option<String>,
    /// The switchover away from an outdated primary, once everything else is rolled.
    pub action: Option<AgentAction>,
    /// Why the roll waits (for the status), while pods are outdated.
    pub waiting: Option<String>,
}

/// What else the reconcile does to the group; the roll waits while any of it is under way.
pub(super) struct Busy<'a> {
    /// The group's own change this reconcile (membership, a requested switchover, pause).
    pub action: Option<&'a AgentAction>,
    pub draining: usize,
    pub restarting_for_new_ca: usize,
}

/// The roll's next step. `hashes` are the templates the plan rendered (members, witnesses);
/// `ready` is the group's Ready condition this reconcile.
pub(super) fn decide(
    group: &ReplicaGroup,
    observed: &Observed,
    hashes: (Option<&str>, Option<&str>),
    ready: Result<(), String>,
    busy: Busy,
) -> Roll {
    let wanted = |p: &MemberPod| if p.witness { hashes.1 } else { hashes.0 };
    let mut outdated: Vec<&MemberPod> = observed
        .pods
        .iter()
        .filter(|p| !p.terminating)
        .filter(|p| wanted(p).is_some_and(|h| p.template_hash.as_deref() != Some(h)))
        .collect();
    if outdated.is_empty() {
        return Roll::default();
    }
    let view = match &observed.agents {
        super::AgentsObserved::Connected { view, .. } => Some(view),
        _ => None,
    };
    let primary = view
        .filter(|_| group.spec.mode == GroupMode::PrimaryBackup)
        .and_then(|v| v.primary.as_deref());
    // Members before witnesses, highest ordinal first (as a StatefulSet rolls), the primary last.
    outdated.sort_by_key(|p| {
        (
            Some(p.name.as_str()) == primary,
            p.witness,
            Reverse(p.ordinal),
        )
    });
    let mut roll = Roll {
        outdated: outdated.iter().map(|p| p.name.clone()).collect(),
        ..Default::default()
    };
    if let Err(why) = may_restart_one(group, observed, view, ready, &busy) {
        roll.waiting = Some(why);
        return roll;
    }
    let next = outdated[0];
    if Some(next.name.as_str()) != primary {
        roll.evict = Some(next.name.clone());
        return roll;
    }
    // Only the primary is left. Hand off first, unless nobody could take over (a group of one
    // member restarts its only member, as any restart of it would).
    let successor = view.is_some_and(|v| {
        v.members
            .iter()
            .any(|m| Some(m.name.as_str()) != primary && m.voter && !m.witness && m.healthy)
    });
    if successor {
        roll.action = Some(AgentAction::Switchover {
            target: None,
            reason: ROLL_SWITCHOVER_REASON.into(),
        });
    } else {
        roll.evict = Some(next.name.clone());
    }
    roll
}

/// Whether one more pod may restart now: the group is whole, and nothing else changes it.
fn may_restart_one(
    group: &ReplicaGroup,
    observed: &Observed,
    view: Option<&GroupView>,
    ready: Result<(), String>,
    busy: &Busy,
) -> Result<(), String> {
    if busy.action.is_some() {
        return Err("a change of the group's membership or primary goes first".into());
    }
    if busy.draining > 0 || busy.restarting_for_new_ca > 0 {
        return Err("members are being removed or restarted for a new CA".into());
    }
    if let Some(p) = observed.pods.iter().find(|p| p.terminating) {
        return Err(format!("{} is terminating", p.name));
    }
    if super::pods_missing(group, &observed.pods) {
        return Err("a member or witness pod is missing".into());
    }
    if let Some(p) = observed.pods.iter().find(|p| !p.ready) {
        return Err(format!("{} is not ready", p.name));
    }
    let Some(view) = view.filter(|v| v.from_coordinator) else {
        return Err("the group's state is not known first-hand".into());
    };
    if let Some(m) = view.members.iter().find(|m| !m.voter || !m.healthy) {
        return Err(format!("{} is not a healthy voter", m.name));
    }
    if group.spec.paused || view.paused {
        return Err("the group is paused".into());
    }
    ready.map_err(|why| format!("the group is not Ready ({why})"))?;
    if group.spec.mode == GroupMode::PrimaryBackup {
        if view.switchover_pending {
            return Err("a switchover is under way".into());
        }
        if view.primary.is_none() || view.lease != LeaseView::Live {
            return Err("the group has no primary with a live lease".into());
        }
    }
    Ok(())
}
