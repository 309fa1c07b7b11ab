//! Group lifecycle: bootstrap once, add and remove members around StatefulSet changes, planned
//! switchovers (requested, or because the primary's pod goes away), pause and resume.
//! At most one agent action per reconcile: each changes the group, and the next decision should
//! see its effect.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{AgentsObserved, GroupView, Observed};
use crate::api::names::{GroupNames, SWITCHOVER_ANNOTATION};
use crate::api::{GroupMode, MemberRole, ReplicaGroup, ReplicaGroupStatus};

/// A member joining the Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JoinSpec {
    pub id: u64,
    pub name: String,
    pub address: String,
    pub witness: bool,
}

/// A call to the group's agents (through the coordinator, or a named member for bootstrap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum AgentAction {
    /// Initialize the group on member `via` with these voters. Done exactly once per group.
    Bootstrap {
        via: String,
        members: Vec<JoinSpec>,
    },
    AddMember(JoinSpec),
    RemoveMember {
        id: u64,
        name: String,
        reason: String,
    },
    /// Planned hand-off; `target` None = the best candidate.
    Switchover {
        target: Option<String>,
        reason: String,
    },
    Pause,
    Resume,
    /// Fence (never appoint, no traffic) or unfence a member.
    SetFenced {
        member: String,
        fenced: bool,
    },
}

#[derive(Clone, Debug, Default)]
pub(super) struct Lifecycle {
    pub member_replicas: i32,
    pub witness_replicas: i32,
    pub action: Option<AgentAction>,
    pub clear_switchover_request: bool,
    pub requeue_ms: Option<u64>,
    /// The group is initialized (now, or before).
    pub bootstrapped: bool,
    /// Members about to be removed: drained to weight 0 first.
    pub draining: BTreeSet<String>,
    /// A condition the group cannot leave on its own: (reason, message).
    pub problem: Option<(String, String)>,
    /// A switchover request that cannot be done: (reason, message), reported as a Warning event.
    pub rejected_request: Option<(String, String)>,
    /// New members to unstick (their claims and pod deleted).
    pub stranded: Vec<StrandedMember>,
}

/// Pods that trust another group CA than the current one: after the CA was replaced (its
/// Secret lost, and the members' one deleted on purpose: docs/security.md) they cannot talk to
/// members that trust the new one, so they restart together instead of one at a time (a roll
/// would stall on its first pod). Pods of earlier versions (no CA hash) and pods already going
/// away are left alone; nothing happens while the CA is lost.
pub fn trusting_another_ca(observed: &Observed) -> Vec<String> {
    if observed.ca_hash.is_empty() || observed.ca_lost.is_some() {
        return Vec::new();
    }
    observed
        .pods
        .iter()
        .filter(|p| !p.terminating)
        .filter(|p| p.ca_hash.as_deref().is_some_and(|h| h != observed.ca_hash))
        .map(|p| p.name.clone())
        .collect()
}

/// A new member the scheduler cannot place because volumes of its were already provisioned for
/// a node where another member runs. The scheduler binds a pod's claims one by one; when one
/// write conflicts (another controller updated the claim meanwhile) the pod is retried, but
/// the claims bound before the conflict keep the node they were provisioned on. If another
/// member was placed on that node meanwhile, the group's topology spread forbids it and the pod
/// stays Pending for ever (seen on the test bed with two claims per member). The claims of a
/// member that never joined the group hold no data, so they are deleted with the pod and the
/// StatefulSet creates both again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StrandedMember {
    pub pod: String,
    /// The claims to delete.
    pub claims: Vec<String>,
    /// The node they were provisioned on, and the member that runs there.
    pub node: String,
    pub blocking: String,
}

/// Stranded new members (see [`StrandedMember`]): not in the group's membership (before the
/// bootstrap, or not added yet). Never a member of the group: its volumes may hold the only
/// copy of its data (a pod waiting for its node to come back is Pending on its volumes as
/// well), nor anything while the membership is unknown. Only when the group's own spread is in
/// effect.
fn stranded_members(
    group: &ReplicaGroup,
    observed: &Observed,
    view: Option<&GroupView>,
    bootstrapped: bool,
) -> Vec<StrandedMember> {
    if super::members::declares_own_spread(
        group
            .spec
            .template
            .spec
            .as_ref()
            .unwrap_or(&Default::default()),
    ) {
        return Vec::new();
    }
    let in_group = |name: &str| -> Option<bool> {
        match view {
            Some(v) if v.initialized => Some(v.members.iter().any(|m| m.name == name)),
            // Without the group's state a bootstrapped group's members are unknown.
            _ if bootstrapped => None,
            _ => Some(false),
        }
    };
    observed
        .pods
        .iter()
        .filter(|p| p.unschedulable && p.node.is_none() && !p.terminating)
        .filter(|p| in_group(&p.name) == Some(false))
        .filter_map(|p| {
            let (node, blocking) = p.pinned_claims.iter().find_map(|(_, node)| {
                observed
                    .pods
                    .iter()
                    .find(|o| o.name != p.name && !o.terminating && o.node.as_ref() == Some(node))
                    .map(|o| (node.clone(), o.name.clone()))
            })?;
            Some(StrandedMember {
                pod: p.name.clone(),
                claims: p
                    .pinned_claims
                    .iter()
                    .filter(|(_, n)| *n == node)
                    .map(|(c, _)| c.clone())
                    .collect(),
                node,
                blocking,
            })
        })
        .collect()
}

/// While members are being added or waited for, look again soon.
const MEMBERSHIP_POLL_MS: u64 = 1_000;

pub(super) fn decide(
    group: &ReplicaGroup,
    names: &GroupNames,
    observed: &Observed,
    previous: &ReplicaGroupStatus,
) -> Lifecycle {
    let spec = &group.spec;
    let desired_members = spec.replicas.max(0) as u32;
    let desired_witnesses = spec.effective_witnesses().max(0) as u32;
    let mut out = Lifecycle {
        member_replicas: desired_members as i32,
        witness_replicas: desired_witnesses as i32,
        ..Default::default()
    };
    let view = match &observed.agents {
        AgentsObserved::Connected { view, .. } => Some(view),
        _ => None,
    };
    let wanted: Vec<(String, bool)> = (0..desired_members)
        .map(|i| (names.member(i), false))
        .chain((0..desired_witnesses).map(|i| (names.witness(i), true)))
        .collect();

    // --- bootstrap, exactly once -------------------------------------------------------------
    out.stranded = stranded_members(group, observed, view, previous.bootstrapped_at.is_some());
    let initialized_somewhere =
        view.is_some_and(|v| v.initialized) || observed.probes.values().any(|p| p.initialized);
    if previous.bootstrapped_at.is_none() && !initialized_somewhere {
        let probed: Vec<JoinSpec> = wanted
            .iter()
            .filter_map(|(name, witness)| {
                let probe = observed.probes.get(name)?;
                Some(JoinSpec {
                    id: probe.id,
                    name: name.clone(),
                    address: names.agent_address(name),
                    witness: *witness,
                })
            })
            .collect();
        if probed.len() == wanted.len() && !wanted.is_empty() {
            out.action = Some(AgentAction::Bootstrap {
                via: names.member(0),
                members: probed,
            });
        }
        // Probes are asked, not watched: poll while a started agent has not answered yet (or
        // the bootstrap is under way). A pod that does not exist or whose agent has not started
        // is waited for by the pod watch, which reconciles when it changes: a group whose pods
        // cannot be created (a quota, nothing schedulable) costs no reconcile a second.
        let unanswered = observed
            .pods
            .iter()
            .any(|p| p.agent_running && !p.terminating && !observed.probes.contains_key(&p.name));
        if unanswered || out.action.is_some() {
            out.requeue_ms = Some(MEMBERSHIP_POLL_MS);
        }
        return out;
    }
    out.bootstrapped = true;

    let Some(view) = view else {
        // Without the group's state never shrink anything: a member may still hold data the
        // group needs. Keep the pods that exist.
        keep_existing_pods(&mut out, observed);
        return out;
    };
    if !view.initialized {
        // Connected to a member that has no Raft state although the group was initialized:
        // every member we can reach lost its data. Re-initializing would silently lose the
        // group's committed state, so a human decides.
        if observed.probes.values().all(|p| !p.initialized) && !observed.probes.is_empty() {
            out.problem = Some((
                "MembersLostData".into(),
                "every reachable member has an empty data directory although the group was initialized; \
                 restore the volumes, or delete and re-create the group"
                    .into(),
            ));
        }
        keep_existing_pods(&mut out, observed);
        out.requeue_ms = Some(MEMBERSHIP_POLL_MS);
        return out;
    }

    // Members still in the Raft group keep their pods until they are removed from it.
    let in_group_ordinals = |witness: bool| {
        view.members
            .iter()
            .filter_map(|m| names.ordinal_of(&m.name))
            .filter(|(w, _)| *w == witness)
            .map(|(_, o)| o + 1)
            .max()
            .unwrap_or(0)
    };
    out.member_replicas = desired_members.max(in_group_ordinals(false)) as i32;
    out.witness_replicas = desired_witnesses.max(in_group_ordinals(true)) as i32;
    let extra = |name: &str| match names.ordinal_of(name) {
        Some((false, o)) => o >= desired_members,
        Some((true, o)) => o >= desired_witnesses,
        None => true,
    };
    // Members being removed, and fenced ones (by the group's word, or about to be), get no
    // traffic.
    out.draining = view
        .members
        .iter()
        .filter(|m| extra(&m.name) || m.fenced || spec.fenced_members.contains(&m.name))
        .map(|m| m.name.clone())
        .collect();

    out.action = switchover(group, observed, view, &mut out, &extra)
        .or_else(|| membership(names, observed, view, &wanted, &extra, &mut out))
        .or_else(|| pause(group, view))
        .or_else(|| fence(group, view, &mut out));
    out
}

fn keep_existing_pods(out: &mut Lifecycle, observed: &Observed) {
    let highest = |witness: bool| {
        observed
            .pods
            .iter()
            .filter(|p| p.witness == witness)
            .map(|p| p.ordinal + 1)
            .max()
            .unwrap_or(0) as i32
    };
    out.member_replicas = out.member_replicas.max(highest(false));
    out.witness_replicas = out.witness_replicas.max(highest(true));
}

fn switchover(
    group: &ReplicaGroup,
    observed: &Observed,
    view: &GroupView,
    out: &mut Lifecycle,
    extra: &dyn Fn(&str) -> bool,
) -> Option<AgentAction> {
    if group.spec.mode != GroupMode::PrimaryBackup {
        return None;
    }
    let candidate = |name: &str| {
        view.members
            .iter()
            .any(|m| m.name == name && m.voter && !m.witness && m.healthy && !m.fenced)
    };
    // 1. An explicit request (annotation): hand it over once, then forget it.
    if let Some(request) = group
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SWITCHOVER_ANNOTATION))
    {
        out.clear_switchover_request = true;
        let target = request.trim();
        if target.is_empty() {
            return Some(AgentAction::Switchover {
                target: None,
                reason: "Requested".into(),
            });
        }
        if view.primary.as_deref() == Some(target) {
            out.rejected_request = Some((
                "SwitchoverNotNeeded".into(),
                format!("{target} is already the primary"),
            ));
            return None;
        }
        if !candidate(target) {
            out.rejected_request = Some((
                "SwitchoverRejected".into(),
                format!(
                    "{target} is not a healthy voting member of the group; choose one of {}",
                    candidates(view)
                ),
            ));
            return None;
        }
        return Some(AgentAction::Switchover {
            target: Some(target.to_owned()),
            reason: "Requested".into(),
        });
    }
    if view.switchover_pending {
        return None;
    }
    let primary = view.primary.as_deref()?;
    // 2. The primary's pod is being deleted: hand off now rather than after its lease runs out.
    // Not while paused: this hand-off is automatic, and pause freezes every automatic change of
    // primary (the routing drains the primary once its lease is gone).
    let paused = group.spec.paused || view.paused;
    if !paused
        && observed
            .pods
            .iter()
            .any(|p| p.name == primary && p.terminating)
    {
        return Some(AgentAction::Switchover {
            target: None,
            reason: "PrimaryPodTerminating".into(),
        });
    }
    // 3. Scale-down removes the primary's member, or the primary is to be fenced: move the
    // primary first.
    if extra(primary) {
        return Some(AgentAction::Switchover {
            target: None,
            reason: "PrimaryRemoved".into(),
        });
    }
    if group.spec.fenced_members.iter().any(|m| m == primary) {
        if let Err(why) = fence_leaves_a_candidate(primary, takers(view)) {
            out.rejected_request = Some(("FenceRefused".into(), why));
            return None;
        }
        return Some(AgentAction::Switchover {
            target: None,
            reason: "PrimaryFenced".into(),
        });
    }
    // 4. The declared preference.
    let preferred = group.spec.switchover_to.as_deref()?;
    if preferred != primary && candidate(preferred) && !view.flap_guard_tripped {
        return Some(AgentAction::Switchover {
            target: Some(preferred.to_owned()),
            reason: "PreferredPrimary".into(),
        });
    }
    None
}

fn candidates(view: &GroupView) -> String {
    let names: Vec<&str> = view
        .members
        .iter()
        .filter(|m| m.voter && !m.witness && m.healthy && m.role != MemberRole::Primary)
        .map(|m| m.name.as_str())
        .collect();
    if names.is_empty() {
        "(none is healthy now)".into()
    } else {
        names.join(", ")
    }
}

fn membership(
    names: &GroupNames,
    observed: &Observed,
    view: &GroupView,
    wanted: &[(String, bool)],
    extra: &dyn Fn(&str) -> bool,
    out: &mut Lifecycle,
) -> Option<AgentAction> {
    // A member whose volume was lost comes back with a new, uninitialized id: remove the old id,
    // then add the new one (an id is never reused).
    for (name, _) in wanted {
        let (Some(member), Some(probe)) = (
            view.members.iter().find(|m| &m.name == name),
            observed.probes.get(name),
        ) else {
            continue;
        };
        if probe.id != member.id
            && !probe.initialized
            && view.primary.as_deref() != Some(name.as_str())
        {
            out.requeue_ms = Some(MEMBERSHIP_POLL_MS);
            return Some(AgentAction::RemoveMember {
                id: member.id,
                name: name.clone(),
                reason: format!(
                    "{name} restarted with an empty data directory (new id {}); re-adding it",
                    probe.id
                ),
            });
        }
    }
    // New members: their pod runs, their agent answered, they are not in the group yet.
    for (name, witness) in wanted {
        if view.members.iter().any(|m| &m.name == name) {
            continue;
        }
        out.requeue_ms = Some(MEMBERSHIP_POLL_MS);
        if let Some(probe) = observed.probes.get(name).filter(|p| !p.initialized) {
            return Some(AgentAction::AddMember(JoinSpec {
                id: probe.id,
                name: name.clone(),
                address: names.agent_address(name),
                witness: *witness,
            }));
        }
    }
    // Scale-down: remove members beyond the desired count, one at a time, never the primary
    // (it is switched away first, see `switchover`).
    let removable = view
        .members
        .iter()
        .filter(|m| extra(&m.name) && view.primary.as_deref() != Some(m.name.as_str()));
    // Highest ordinal first, as the StatefulSet removes pods.
    if let Some(member) = removable.max_by_key(|m| names.ordinal_of(&m.name).map(|(w, o)| (!w, o)))
    {
        out.requeue_ms = Some(MEMBERSHIP_POLL_MS);
        return Some(AgentAction::RemoveMember {
            id: member.id,
            name: member.name.clone(),
            reason: "scaled down".into(),
        });
    }
    None
}

/// Fencing `name` must leave another member that could take over (be primary, or serve in an
/// ActiveActive group): `takers` are the group's healthy, unfenced, voting non-witness members.
/// The operator checks it against the group's state, `kubectl quorate fence` against the
/// status, before asking.
pub fn fence_leaves_a_candidate<'a>(
    name: &str,
    takers: impl IntoIterator<Item = &'a str>,
) -> Result<(), String> {
    if !takers.into_iter().any(|t| t != name) {
        return Err(format!(
            "fencing {name} would leave no healthy, unfenced member to take over: \
             wait until another member is healthy, or unfence one"
        ));
    }
    Ok(())
}

/// The members of `view` that could take over from a fenced one.
fn takers(view: &GroupView) -> impl Iterator<Item = &str> {
    view.members
        .iter()
        .filter(|m| m.voter && !m.witness && m.healthy && !m.fenced)
        .map(|m| m.name.as_str())
}

/// `spec.fencedMembers` against the members the group has fenced, one change per reconcile:
/// unfencing first (it only adds candidates). The primary is switched away before it is fenced
/// (`switchover`); a member that is not in the group yet is fenced once it joins.
fn fence(group: &ReplicaGroup, view: &GroupView, out: &mut Lifecycle) -> Option<AgentAction> {
    let wanted = &group.spec.fenced_members;
    if let Some(m) = view
        .members
        .iter()
        .find(|m| m.fenced && !wanted.contains(&m.name))
    {
        return Some(AgentAction::SetFenced {
            member: m.name.clone(),
            fenced: false,
        });
    }
    for name in wanted {
        let Some(m) = view.members.iter().find(|m| &m.name == name) else {
            continue;
        };
        if m.fenced || view.primary.as_deref() == Some(name.as_str()) {
            continue;
        }
        if let Err(why) = fence_leaves_a_candidate(name, takers(view)) {
            out.rejected_request = Some(("FenceRefused".into(), why));
            continue;
        }
        return Some(AgentAction::SetFenced {
            member: name.clone(),
            fenced: true,
        });
    }
    None
}

fn pause(group: &ReplicaGroup, view: &GroupView) -> Option<AgentAction> {
    match (group.spec.paused, view.paused) {
        (true, false) => Some(AgentAction::Pause),
        (false, true) => Some(AgentAction::Resume),
        _ => None,
    }
}
