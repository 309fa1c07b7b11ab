//! The one edge between the agent's own types and its protobuf messages: every mapping is
//! written once here, as `From`/`TryFrom` or a small function, and the gRPC server, the member
//! side's client calls and the operator use these instead of matching on generated enums.

use super::coordinator::{LeaseStatus, MemberReport, ReleaseReason, ReportDecision};
use super::group::{
    FailoverReason, FailoverRecord, GroupConfig, MemberName, MemberNode, Mode, NodeId,
};
use super::lease::Grant;
use super::proto;
use crate::api::{HookKind, MemberRole};
use crate::supervisor::protocol::{HookOutcome, OUTPUT_TAIL_BYTES};

impl From<MemberRole> for proto::Role {
    fn from(role: MemberRole) -> Self {
        match role {
            MemberRole::Primary => proto::Role::Primary,
            MemberRole::Backup => proto::Role::Backup,
            MemberRole::Active => proto::Role::Active,
            MemberRole::Witness => proto::Role::Witness,
            MemberRole::Unknown => proto::Role::Unknown,
        }
    }
}

impl From<proto::Role> for MemberRole {
    fn from(role: proto::Role) -> Self {
        match role {
            proto::Role::Primary => MemberRole::Primary,
            proto::Role::Backup => MemberRole::Backup,
            proto::Role::Active => MemberRole::Active,
            proto::Role::Witness => MemberRole::Witness,
            proto::Role::Unknown => MemberRole::Unknown,
        }
    }
}

/// A role as carried in a message field (an unknown value from a newer peer is `Unknown`).
pub fn role(value: i32) -> MemberRole {
    proto::Role::try_from(value).map_or(MemberRole::Unknown, MemberRole::from)
}

impl From<FailoverReason> for proto::FailoverReason {
    fn from(r: FailoverReason) -> Self {
        match r {
            FailoverReason::LeaseExpired => proto::FailoverReason::LeaseExpired,
            FailoverReason::Released => proto::FailoverReason::Released,
            FailoverReason::WorkloadUnhealthy => proto::FailoverReason::WorkloadUnhealthy,
            FailoverReason::Switchover => proto::FailoverReason::Switchover,
        }
    }
}

/// A failover reason as carried in a message field; `None` for an unspecified or unknown value.
pub fn failover_reason(value: i32) -> Option<FailoverReason> {
    match proto::FailoverReason::try_from(value) {
        Ok(proto::FailoverReason::LeaseExpired) => Some(FailoverReason::LeaseExpired),
        Ok(proto::FailoverReason::Released) => Some(FailoverReason::Released),
        Ok(proto::FailoverReason::WorkloadUnhealthy) => Some(FailoverReason::WorkloadUnhealthy),
        Ok(proto::FailoverReason::Switchover) => Some(FailoverReason::Switchover),
        Ok(proto::FailoverReason::Unspecified) | Err(_) => None,
    }
}

impl From<LeaseStatus> for proto::LeaseState {
    fn from(s: LeaseStatus) -> Self {
        match s {
            LeaseStatus::None => proto::LeaseState::None,
            LeaseStatus::Live => proto::LeaseState::Live,
            LeaseStatus::Expired => proto::LeaseState::Expired,
            LeaseStatus::Released => proto::LeaseState::Released,
        }
    }
}

/// A lease state as carried in a message field (an unknown value counts as expired: never live).
pub fn lease_status(value: i32) -> LeaseStatus {
    match proto::LeaseState::try_from(value) {
        Ok(proto::LeaseState::None) => LeaseStatus::None,
        Ok(proto::LeaseState::Live) => LeaseStatus::Live,
        Ok(proto::LeaseState::Released) => LeaseStatus::Released,
        Ok(proto::LeaseState::Expired) | Err(_) => LeaseStatus::Expired,
    }
}

impl From<Mode> for proto::Mode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::PrimaryBackup => proto::Mode::PrimaryBackup,
            Mode::ActiveActive => proto::Mode::ActiveActive,
        }
    }
}

impl From<Option<ReleaseReason>> for proto::ReleaseReason {
    fn from(r: Option<ReleaseReason>) -> Self {
        match r {
            None => proto::ReleaseReason::None,
            Some(ReleaseReason::Shutdown) => proto::ReleaseReason::Shutdown,
            Some(ReleaseReason::Switchover) => proto::ReleaseReason::Switchover,
            Some(ReleaseReason::WorkloadUnhealthy) => proto::ReleaseReason::WorkloadUnhealthy,
        }
    }
}

fn release_reason(value: i32) -> Option<ReleaseReason> {
    match proto::ReleaseReason::try_from(value) {
        Ok(proto::ReleaseReason::Shutdown) => Some(ReleaseReason::Shutdown),
        Ok(proto::ReleaseReason::Switchover) => Some(ReleaseReason::Switchover),
        Ok(proto::ReleaseReason::WorkloadUnhealthy) => Some(ReleaseReason::WorkloadUnhealthy),
        Ok(proto::ReleaseReason::None) | Err(_) => None,
    }
}

/// A report as sent by member `from`.
pub fn member_report(from: NodeId, r: &MemberReport) -> proto::MemberReport {
    proto::MemberReport {
        from_id: from,
        workload_healthy: r.workload_healthy,
        load: r.load,
        latency_ms: r.latency_ms,
        applied_index: r.applied_index,
        priority: r.priority,
        released_epoch: r.released_epoch,
        release_reason: proto::ReleaseReason::from(r.release_reason) as i32,
        leaving: r.leaving,
        workload_position: r.workload_position,
        position_token: r.position_token,
        workload_message: r.workload_message.clone(),
        hooks: r.hooks.iter().map(proto::HookOutcome::from).collect(),
    }
}

impl From<&HookOutcome> for proto::HookOutcome {
    fn from(o: &HookOutcome) -> Self {
        proto::HookOutcome {
            hook: o.hook.as_str().to_owned(),
            epoch: o.epoch,
            ok: o.ok,
            exit_code: o.exit_code,
            duration_millis: o.duration_millis,
            message: o.message.clone(),
            output: o.output.clone(),
        }
    }
}

/// A hook kind as carried in a message field; `None` for one this version does not know.
pub fn hook_kind(name: &str) -> Option<HookKind> {
    [
        HookKind::Promote,
        HookKind::Demote,
        HookKind::Join,
        HookKind::Position,
        HookKind::Health,
    ]
    .into_iter()
    .find(|k| k.as_str() == name)
}

/// Received hook outcomes, bounded (a report carries at most one per hook kind).
pub fn hook_outcomes(list: &[proto::HookOutcome]) -> Vec<HookOutcome> {
    list.iter()
        .take(8)
        .filter_map(|o| {
            Some(HookOutcome {
                hook: hook_kind(&o.hook)?,
                epoch: o.epoch,
                ok: o.ok,
                exit_code: o.exit_code,
                duration_millis: o.duration_millis,
                message: truncate(&o.message, 512),
                output: truncate(&o.output, OUTPUT_TAIL_BYTES),
            })
        })
        .collect()
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl From<&proto::MemberReport> for MemberReport {
    /// A received report, made safe for the weight math: non-finite samples are dropped and the
    /// priority is capped at the allowed maximum.
    fn from(r: &proto::MemberReport) -> Self {
        MemberReport {
            workload_healthy: r.workload_healthy,
            load: r.load.filter(|v| v.is_finite()),
            latency_ms: r.latency_ms.filter(|v| v.is_finite()),
            applied_index: r.applied_index,
            priority: r.priority.min(100),
            released_epoch: r.released_epoch,
            release_reason: release_reason(r.release_reason),
            leaving: r.leaving,
            workload_position: r.workload_position,
            position_token: r.position_token,
            workload_message: truncate(&r.workload_message, 512),
            hooks: hook_outcomes(&r.hooks),
        }
    }
}

impl From<Grant> for proto::LeaseGrant {
    fn from(g: Grant) -> Self {
        proto::LeaseGrant {
            epoch: g.epoch,
            remaining_millis: g.remaining_millis,
        }
    }
}

impl From<proto::LeaseGrant> for Grant {
    fn from(g: proto::LeaseGrant) -> Self {
        Grant {
            epoch: g.epoch,
            remaining_millis: g.remaining_millis,
        }
    }
}

impl From<&proto::ReportReply> for ReportDecision {
    fn from(reply: &proto::ReportReply) -> Self {
        ReportDecision {
            accepted: reply.accepted,
            grant: reply.grant.map(Grant::from),
            demote: reply.demote,
            position_wanted: reply.position_wanted,
            report_soon: reply.report_soon,
        }
    }
}

/// A member reference without an address (history records, names only).
pub fn member_ref(m: &MemberName) -> proto::MemberRef {
    proto::MemberRef {
        id: m.id,
        name: m.name.clone(),
        address: String::new(),
    }
}

impl From<&FailoverRecord> for proto::FailoverRecord {
    fn from(r: &FailoverRecord) -> Self {
        proto::FailoverRecord {
            from: r.from.as_ref().map(member_ref),
            to: Some(member_ref(&r.to)),
            epoch: r.epoch,
            reason: proto::FailoverReason::from(r.reason) as i32,
            detected_at_unix_millis: r.detected_at_unix_millis,
            appointed_at_unix_millis: r.appointed_at_unix_millis,
        }
    }
}

impl From<GroupConfig> for proto::GroupConfig {
    fn from(c: GroupConfig) -> Self {
        proto::GroupConfig {
            mode: proto::Mode::from(c.mode) as i32,
            lease_millis: c.lease_millis,
            max_failovers_per_hour: c.max_failovers_per_hour,
        }
    }
}

impl From<&proto::Member> for MemberNode {
    fn from(m: &proto::Member) -> Self {
        MemberNode {
            name: m.name.clone(),
            address: m.address.clone(),
            witness: m.witness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_values_are_unknown() {
        for r in [
            MemberRole::Primary,
            MemberRole::Backup,
            MemberRole::Active,
            MemberRole::Witness,
            MemberRole::Unknown,
        ] {
            assert_eq!(role(proto::Role::from(r) as i32), r);
        }
        assert_eq!(role(99), MemberRole::Unknown);
    }

    #[test]
    fn reasons_and_lease_states_map_both_ways() {
        for r in [
            FailoverReason::LeaseExpired,
            FailoverReason::Released,
            FailoverReason::WorkloadUnhealthy,
            FailoverReason::Switchover,
        ] {
            assert_eq!(
                failover_reason(proto::FailoverReason::from(r) as i32),
                Some(r)
            );
        }
        assert_eq!(failover_reason(0), None);
        for s in [
            LeaseStatus::None,
            LeaseStatus::Live,
            LeaseStatus::Expired,
            LeaseStatus::Released,
        ] {
            assert_eq!(lease_status(proto::LeaseState::from(s) as i32), s);
        }
        assert_eq!(lease_status(42), LeaseStatus::Expired);
    }

    #[test]
    fn a_received_report_is_sanitised_and_round_trips() {
        let sent = MemberReport {
            workload_healthy: true,
            load: Some(0.5),
            latency_ms: Some(3.0),
            applied_index: 7,
            priority: 60,
            released_epoch: 4,
            release_reason: Some(ReleaseReason::WorkloadUnhealthy),
            leaving: true,
            workload_position: Some(12),
            position_token: 3,
            workload_message: "the position hook printed \"x\"".into(),
            hooks: vec![crate::supervisor::protocol::HookOutcome {
                hook: HookKind::Promote,
                epoch: 4,
                ok: false,
                exit_code: Some(2),
                duration_millis: 5,
                message: "exited with code 2".into(),
                output: "ERR".into(),
            }],
        };
        let wire = member_report(3, &sent);
        assert_eq!(wire.from_id, 3);
        assert_eq!(MemberReport::from(&wire), sent);
        let hostile = proto::MemberReport {
            load: Some(f64::NAN),
            latency_ms: Some(f64::INFINITY),
            priority: 1000,
            release_reason: 17,
            ..wire
        };
        let got = MemberReport::from(&hostile);
        assert_eq!(
            (got.load, got.latency_ms, got.priority, got.release_reason),
            (None, None, 100, None)
        );
    }
}
