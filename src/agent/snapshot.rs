//! The group state as one member sees it (`Status`, `Watch`, the view relayed with report
//! answers): a pure function of a copy of the core and the two facts only Raft can tell.

use std::collections::BTreeMap;

use super::coordinator::LeaseStatus;
use super::core::AgentCore;
use super::group::NodeId;
use super::proto;
use super::wire;
use crate::api::MemberRole;

/// What Raft tells besides the core's copy of its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftFacts {
    pub initialized: bool,
    pub commit_index: u64,
}

/// The group state at `now` (monotonic ms): soft state first-hand on the coordinator, relayed
/// from the coordinator's last answer elsewhere (only while it describes the current epoch).
pub fn group_state(core: &AgentCore, raft: RaftFacts, now: u64) -> proto::GroupState {
    let settings = core.settings();
    let status = core.raft();
    let applied = core.applied();
    let state = &applied.state;
    let (own_role, _) = core.role_at(now);
    let member_ref = |id: NodeId| -> Option<proto::MemberRef> {
        applied.roster.members.get(&id).map(|m| proto::MemberRef {
            id,
            name: m.node.name.clone(),
            address: m.node.address.clone(),
        })
    };
    let from_coordinator = core.coordinating();
    let mut soft: BTreeMap<NodeId, proto::MemberStatus> = BTreeMap::new();
    let (lease, remaining) = if from_coordinator {
        let view = core.coordinator().view(now);
        for m in view.members {
            soft.insert(
                m.id,
                proto::MemberStatus {
                    id: m.id,
                    role: proto::Role::from(m.role) as i32,
                    healthy: m.healthy,
                    load: m.load,
                    latency_ms: m.latency_ms,
                    last_report_age_ms: m.last_report_age_millis,
                    applied_index: m.applied_index,
                    matched_index: m.matched_index,
                    priority: m.priority,
                    workload_position: m.workload_position,
                    workload_message: m.workload_message.clone(),
                    hooks: m.hooks.iter().map(proto::HookOutcome::from).collect(),
                    ..Default::default()
                },
            );
        }
        (
            proto::LeaseState::from(view.lease),
            view.lease_remaining_millis,
        )
    } else {
        match core.relayed() {
            Some(r) if r.view.epoch == state.epoch => {
                let age = now.saturating_sub(r.at);
                for m in &r.view.members {
                    soft.insert(m.id, m.clone());
                }
                let remaining = r.view.primary_lease_remaining_millis.saturating_sub(age);
                let lease = match wire::lease_status(r.view.primary_lease) {
                    LeaseStatus::Live if remaining == 0 => LeaseStatus::Expired,
                    l => l,
                };
                (proto::LeaseState::from(lease), remaining)
            }
            _ if state.primary.is_none() => (proto::LeaseState::None, 0),
            _ => (proto::LeaseState::Expired, 0),
        }
    };
    let members = applied
        .roster
        .members
        .iter()
        .map(|(id, entry)| {
            let s = soft.remove(id).unwrap_or_default();
            let role = if *id == settings.id {
                own_role
            } else if entry.node.witness {
                MemberRole::Witness
            } else {
                wire::role(s.role)
            };
            proto::MemberStatus {
                id: *id,
                name: entry.node.name.clone(),
                address: entry.node.address.clone(),
                voter: entry.voter,
                witness: entry.node.witness,
                role: proto::Role::from(role) as i32,
                fenced: state.fenced.contains(id),
                ..s
            }
        })
        .collect();
    proto::GroupState {
        answered_by: Some(proto::NodeInfo {
            id: settings.id,
            name: settings.member.clone(),
            address: settings.advertise.clone(),
            initialized: raft.initialized,
            witness: settings.witness,
            role: proto::Role::from(own_role) as i32,
        }),
        from_coordinator,
        epoch: state.epoch,
        primary: state
            .primary
            .as_ref()
            .map(|p| member_ref(p.id).unwrap_or_else(|| wire::member_ref(p))),
        primary_lease: lease as i32,
        primary_lease_remaining_millis: remaining,
        leader: status.leader.and_then(member_ref),
        term: status.term,
        commit_index: if raft.initialized {
            raft.commit_index
        } else {
            0
        },
        applied_index: applied.applied_index,
        paused: state.paused,
        flap_guard_tripped: state.flap_guard_tripped,
        switchover_target: state
            .switchover
            .as_ref()
            .and_then(|s| s.target)
            .and_then(member_ref),
        switchover_pending: state.switchover.is_some(),
        members,
        failovers: state
            .history
            .iter()
            .map(proto::FailoverRecord::from)
            .collect(),
        config: state.config.map(proto::GroupConfig::from),
    }
}

/// The state without the fields that change on every report (Watch sends a new state only
/// when something else changed, or at its heartbeat).
pub fn stable_part(s: &proto::GroupState) -> proto::GroupState {
    let mut s = s.clone();
    s.primary_lease_remaining_millis = 0;
    for m in &mut s.members {
        m.last_report_age_ms = m.last_report_age_ms.map(|_| 0);
        m.load = None;
        m.latency_ms = None;
        m.applied_index = 0;
        m.matched_index = None;
    }
    s.applied_index = 0;
    s.commit_index = 0;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::coordinator::{MemberReport, ReportDecision};
    use crate::agent::core::{CoreSettings, Input, Now, ReplyTo, ReportAnswer};
    use crate::agent::group::{
        GroupCommand, GroupConfig, MemberNode, Mode, ReplicatedState, Roster, RosterEntry,
    };
    use crate::agent::health::HealthStatus;
    use crate::agent::raft::{AppliedState, RaftStatus};

    fn roster() -> Roster {
        let mut r = Roster::default();
        for id in [1, 2, 3] {
            r.members.insert(
                id,
                RosterEntry {
                    node: MemberNode {
                        name: format!("m-{id}"),
                        address: format!("m-{id}:7470"),
                        witness: id == 3,
                    },
                    voter: true,
                },
            );
        }
        r
    }

    fn config() -> GroupConfig {
        GroupConfig {
            mode: Mode::PrimaryBackup,
            lease_millis: 1000,
            max_failovers_per_hour: 6,
        }
    }

    fn applied() -> AppliedState {
        let mut state = ReplicatedState::default();
        state.apply(&GroupCommand::Configure(config()));
        state.apply(&GroupCommand::Appoint {
            member: roster().member_name(2),
            epoch: 1,
            failover: None,
        });
        AppliedState {
            state,
            roster: roster(),
            applied_index: 5,
            applied_term: 2,
        }
    }

    fn core(id: NodeId, leader: NodeId) -> AgentCore {
        let now = Now { mono: 0, unix: 0 };
        let mut c = AgentCore::new(
            CoreSettings {
                id,
                member: format!("m-{id}"),
                advertise: format!("m-{id}:7470"),
                witness: false,
                priority: 50,
                initial_config: config(),
                supervised: false,
            },
            HealthStatus::unchecked_healthy(),
            now,
        );
        let r = roster();
        c.handle(Input::Applied(applied()), now);
        c.handle(
            Input::Raft(RaftStatus {
                id,
                term: 2,
                is_leader: id == leader,
                leader: Some(leader),
                applied_index: 5,
                applied_term: 2,
                voters: r.members.keys().copied().collect(),
                members: r
                    .members
                    .iter()
                    .map(|(i, e)| (*i, e.node.clone()))
                    .collect(),
                in_membership: true,
                ..RaftStatus::default()
            }),
            now,
        );
        c
    }

    const FACTS: RaftFacts = RaftFacts {
        initialized: true,
        commit_index: 5,
    };

    fn member(s: &proto::GroupState, id: NodeId) -> proto::MemberStatus {
        s.members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn the_coordinator_reports_first_hand_soft_state_and_its_lease() {
        let mut c = core(1, 1);
        c.handle(
            Input::QuorumConfirmed {
                term: 2,
                sent_at: 0,
                confirmed: true,
            },
            Now { mono: 1, unix: 0 },
        );
        let healthy = MemberReport {
            workload_healthy: true,
            load: Some(3.0),
            priority: 50,
            ..MemberReport::default()
        };
        c.handle(
            Input::PeerReport {
                from: 2,
                report: healthy,
                reply: ReplyTo(1),
            },
            Now { mono: 100, unix: 0 },
        );
        let s = group_state(&c, FACTS, 300);
        assert!(s.from_coordinator);
        assert_eq!(s.primary_lease, proto::LeaseState::Live as i32);
        assert_eq!(
            s.primary_lease_remaining_millis, 700,
            "granted until 1000, asked at 300"
        );
        assert_eq!(
            s.primary.as_ref().map(|p| p.address.as_str()),
            Some("m-2:7470")
        );
        let primary = member(&s, 2);
        assert_eq!(wire::role(primary.role), MemberRole::Primary);
        assert_eq!(
            (primary.healthy, primary.load, primary.last_report_age_ms),
            (true, Some(3.0), Some(200))
        );
        assert_eq!(wire::role(member(&s, 3).role), MemberRole::Witness);
        assert_eq!(
            wire::role(member(&s, 1).role),
            MemberRole::Backup,
            "the answering member's own role"
        );
        assert_eq!(
            (s.epoch, s.term, s.commit_index, s.applied_index),
            (1, 2, 5, 5)
        );
        assert_eq!(s.leader.as_ref().map(|l| l.name.as_str()), Some("m-1"));
        assert_eq!(
            s.answered_by
                .as_ref()
                .map(|a| (a.name.as_str(), a.initialized)),
            Some(("m-1", true))
        );
        // Fields that change with every report are not part of the stable part.
        let later = group_state(&c, FACTS, 400);
        assert_ne!(s, later);
        assert_eq!(stable_part(&s), stable_part(&later));
    }

    #[test]
    fn a_member_relays_the_coordinators_view_only_for_the_current_epoch() {
        let coordinator = {
            let mut c = core(1, 1);
            c.handle(
                Input::QuorumConfirmed {
                    term: 2,
                    sent_at: 0,
                    confirmed: true,
                },
                Now { mono: 1, unix: 0 },
            );
            c
        };
        let mut view = group_state(&coordinator, FACTS, 10);
        view.primary_lease = proto::LeaseState::Live as i32;
        view.primary_lease_remaining_millis = 500;
        let mut m = core(2, 1);
        m.handle(
            Input::ReportAnswered {
                sent_at: 0,
                answer: Some(ReportAnswer {
                    decision: ReportDecision {
                        accepted: true,
                        grant: None,
                        ..ReportDecision::default()
                    },
                    view: Some(view.clone()),
                }),
            },
            Now { mono: 100, unix: 0 },
        );
        let s = group_state(&m, FACTS, 300);
        assert!(!s.from_coordinator);
        assert_eq!(s.primary_lease, proto::LeaseState::Live as i32);
        assert_eq!(s.primary_lease_remaining_millis, 300, "aged since receipt");
        let s = group_state(&m, FACTS, 700);
        assert_eq!(
            (s.primary_lease, s.primary_lease_remaining_millis),
            (proto::LeaseState::Expired as i32, 0)
        );
        // A view of an older epoch says nothing about the current lease.
        view.epoch = 0;
        m.handle(
            Input::ReportAnswered {
                sent_at: 300,
                answer: Some(ReportAnswer {
                    decision: ReportDecision {
                        accepted: true,
                        grant: None,
                        ..ReportDecision::default()
                    },
                    view: Some(view),
                }),
            },
            Now { mono: 310, unix: 0 },
        );
        let s = group_state(&m, FACTS, 320);
        assert_eq!(s.primary_lease, proto::LeaseState::Expired as i32);
        assert_eq!(
            group_state(&m, RaftFacts::default(), 320).commit_index,
            0,
            "uninitialized"
        );
    }
}
