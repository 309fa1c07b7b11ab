//! `ReplicaGroup` status: what the operator observed and did.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

use super::HookKind;

/// Observed state of a ReplicaGroup, written by the operator from the group's own state stream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaGroupStatus {
    /// Lifecycle phase: Pending, Bootstrapping, Ready, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<GroupPhase>,
    /// Members that exist (the scale subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Members that are healthy and part of the Raft group.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The current primary's member name (PrimaryBackup), while its lease is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The member currently coordinating the group (the Raft leader); ActiveActive workloads
    /// that need a singleton can follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Fencing epoch of the current appointment; strictly increases with every appointment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// The epoch the NAME-rw routing currently carries. Routing never goes back to an older epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_epoch: Option<i64>,
    /// One entry per member and witness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Ready, Available, Quorum, RoutingConverged and Degraded, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The most recent change of primary, with what caused it (`reason`: LeaseExpired,
    /// Released, WorkloadUnhealthy or Switchover) and how long routing took to follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// When the operator initialized the group's Raft state (it does so exactly once; a group
    /// whose members all lost their data is reported Failed instead of being re-initialized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrapped_at: Option<Time>,
    /// When the published weights last changed (the dwell time of load-driven policies counts from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_changed_at: Option<Time>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Label selector of the member pods, for the scale subresource (`kubectl scale`, autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// Lifecycle phase of a group.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum GroupPhase {
    /// Objects are being created; no member has reported yet.
    Pending,
    /// Members run and the Raft group is being formed.
    Bootstrapping,
    /// The group has a quorum, a primary (PrimaryBackup) and converged routing.
    Ready,
    /// The group serves but something needs attention; see the Degraded condition.
    Degraded,
    /// The group cannot serve: no quorum, or its spec cannot be realised.
    Failed,
}

/// A member's role.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum MemberRole {
    Primary,
    Backup,
    /// An ActiveActive member.
    Active,
    /// Votes in Raft, never runs the workload.
    Witness,
    /// Not (yet) part of the Raft group, or its state is unknown.
    Unknown,
}

impl MemberRole {
    /// The role's name as the status, `kubectl quorate`, the role file, metrics and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Primary => "Primary",
            MemberRole::Backup => "Backup",
            MemberRole::Active => "Active",
            MemberRole::Witness => "Witness",
            MemberRole::Unknown => "Unknown",
        }
    }
}

/// What the operator knows of one member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name, `NAME-<ordinal>` (witnesses: `NAME-witness-<ordinal>`).
    pub name: String,
    /// Raft node id, persisted on the member's volume; a member whose volume was lost gets a new id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub role: MemberRole,
    /// The agent's health check of the local workload.
    #[serde(default)]
    pub healthy: bool,
    /// Whether the member votes (false while it is a learner catching up).
    #[serde(default)]
    pub voter: bool,
    /// The weight published for this member (0 = drained).
    #[serde(default)]
    pub weight: i32,
    /// Fenced (`spec.fencedMembers`): the member keeps running but is never appointed primary
    /// and gets no traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// The primary's lease: Live, Expired or Released (only on the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The load the member reports (arbitrary units); shown with a load-driven traffic policy
    /// (LeastLoaded, LatencyAware), where it decides the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// The response time the member reports, in milliseconds, with a load-driven traffic
    /// policy (LeastLoaded, LatencyAware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_millis: Option<f64>,
    /// The workload's replication position, as the position hook printed it (only with
    /// `spec.hooks.position`). Shown only while the member is unhealthy or not a candidate (see
    /// `message`): it moves with every write to the workload, and the status is not rewritten
    /// for each one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// Why the member's workload is unhealthy or not a candidate for primary, in words (a failed
    /// health check, a position hook that printed no number, a failed promote hook, a workload
    /// not started under the supervisor). Absent while all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The latest run of each hook that has run on this member (`spec.hooks`, and the health
    /// check the supervisor runs), in the order promote, demote, join, position, health.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookStatus>,
}

/// The latest run of one hook on one member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    /// Which hook: promote, demote, join, position or health.
    pub hook: HookKind,
    /// The epoch the hook ran for (0 when none).
    #[serde(default)]
    pub epoch: i64,
    /// Whether it succeeded (exit code 0 within its timeout).
    #[serde(default)]
    pub ok: bool,
    /// Its exit code; absent when it was killed (timeout, signal) or could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How long it ran, in milliseconds; only for promote, demote and join, which run once per
    /// epoch or container start (health and position run all the time, with a new duration
    /// every run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_millis: Option<i64>,
    /// Why it failed, in words (exit code, timeout, could not start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last lines it printed (at most 256 bytes), only when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// How the last failover went, with the times of each step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    /// When the group noticed the old primary was gone (lease expired or released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<Time>,
    /// When the new primary's appointment was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointed_at: Option<Time>,
    /// When NAME-rw routed to the new primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_at: Option<Time>,
    /// From detection to routing, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_millis: Option<i64>,
    /// The old primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The new primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The new epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Why: LeaseExpired, Released, WorkloadUnhealthy, Switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::MemberRole;

    #[test]
    fn role_names_are_the_serialized_ones() {
        // `kubectl quorate` prints `as_str`; it must read as what `kubectl get -o yaml` shows.
        for role in [
            MemberRole::Primary,
            MemberRole::Backup,
            MemberRole::Active,
            MemberRole::Witness,
            MemberRole::Unknown,
        ] {
            assert_eq!(
                serde_json::to_value(role).expect("role to JSON"),
                role.as_str()
            );
        }
    }
}
