//! The reconcile decision, as a pure function: `(ReplicaGroup, Observed) -> Plan`.
//!
//! `Observed` is everything the operator read (pods, the group's state streamed by its agents,
//! the current routing objects, the clock); `Plan` is everything it should do: objects to apply
//! with server-side apply, objects to delete, the pods' role labels to change, at most one agent
//! action, the new status, the events to record and when to look again. No client, no clock, no
//! randomness here, so every decision is unit-, property- and snapshot-tested.

mod lifecycle;
mod members;
mod network;
mod roll;
mod routing;
mod status;
pub use status::{Blocked, blocked, with_refused_writes};
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::Resource as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Serialize;

use crate::api::names::{GroupNames, HTTPROUTE_KIND};
use crate::api::{MemberRole, ReplicaGroup, ReplicaGroupStatus};
use crate::supervisor::protocol::HookOutcome;

pub use crate::api::names::HTTPROUTE_API_VERSION;
pub use lifecycle::{AgentAction, StrandedMember, fence_leaves_a_candidate};
pub use members::claim_names;
pub use roll::ROLL_SWITCHOVER_REASON;
pub use routing::{ROUTE_RULE_NAME, merge_route};

/// Settings of the operator itself (from its flags), not of a group.
#[derive(Clone, Debug, Serialize)]
pub struct OperatorSettings {
    /// Image of the injected agent sidecar.
    pub agent_image: String,
    pub agent_image_pull_policy: String,
    /// Whether groups get their NetworkPolicy (`spec.networkPolicy.enabled` opts one out).
    pub network_policies: bool,
    /// The operator's own pods, which the groups' NetworkPolicies admit to the agents.
    pub operator_pods: OperatorPods,
}

/// Where the operator's pods run and the labels that select them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OperatorPods {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// A member or witness pod as the operator sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemberPod {
    pub name: String,
    pub witness: bool,
    pub ordinal: u32,
    pub ip: Option<String>,
    /// The pod runs and its agent container has started.
    pub agent_running: bool,
    /// The pod has a deletionTimestamp (graceful deletion in progress).
    pub terminating: bool,
    /// Its `quorate.dev/role` label as it is now.
    pub role_label: Option<String>,
    /// The node it was scheduled to (`spec.nodeName`).
    pub node: Option<String>,
    /// The scheduler found no node for it (`PodScheduled` False, reason `Unschedulable`).
    pub unschedulable: bool,
    /// The `quorate.dev/ca-hash` of its template: which group CA it trusts (none on pods of
    /// earlier versions).
    pub ca_hash: Option<String>,
    /// The `quorate.dev/template-hash` of its template (none on pods of earlier versions).
    pub template_hash: Option<String>,
    /// Its `Ready` condition is True.
    pub ready: bool,
    /// Only for an unschedulable pod: its claims that were already provisioned for a node
    /// (claim name, node from the claim's `volume.kubernetes.io/selected-node`).
    pub pinned_claims: Vec<(String, String)>,
}

/// A member's own answer to `Status` (asked for members not in the group view yet).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeProbe {
    pub id: u64,
    pub initialized: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LeaseView {
    None,
    Live,
    Expired,
    Released,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub voter: bool,
    pub witness: bool,
    pub role: MemberRole,
    pub healthy: bool,
    pub load: Option<f64>,
    pub latency_ms: Option<f64>,
    /// The workload's replication position (groups with `hooks.position`).
    pub position: Option<u64>,
    /// Why the workload is unhealthy or not a candidate, in words; empty when all is well.
    pub message: String,
    /// The latest outcome of each hook the member's supervisor ran.
    pub hooks: Vec<HookOutcome>,
    /// Fenced: keeps running, is never appointed, gets no traffic.
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailoverView {
    pub from: Option<String>,
    pub to: String,
    pub epoch: u64,
    /// LeaseExpired, Released, WorkloadUnhealthy or Switchover.
    pub reason: String,
    pub detected_at_ms: i64,
    pub appointed_at_ms: i64,
}

/// The group's own state, as its agents streamed it (converted from the agent API).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupView {
    /// First-hand from the coordinator (Raft leader): only then is the lease state trusted.
    pub from_coordinator: bool,
    pub initialized: bool,
    pub epoch: u64,
    pub primary: Option<String>,
    pub lease: LeaseView,
    pub lease_remaining_ms: u64,
    pub leader: Option<String>,
    pub paused: bool,
    pub flap_guard_tripped: bool,
    pub switchover_pending: bool,
    pub members: Vec<MemberView>,
    pub failovers: Vec<FailoverView>,
}

/// What the operator knows of the agents' state stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum AgentsObserved {
    /// The stream is being set up (operator start, leader change); decide nothing about routing yet.
    Connecting,
    /// The latest state and how old it is (ms since it arrived).
    Connected { view: GroupView, age_ms: u64 },
    /// No agent answered since `since_ms` (unix ms).
    Unreachable { since_ms: i64, error: String },
}

/// What the Gateway did with the group's HTTPRoute (read back from its status).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteObserved {
    /// Weights of our backendRefs as stored in the route (member Service name -> weight).
    pub weights: BTreeMap<String, i32>,
    /// Per parent (Gateway name): (Accepted, ResolvedRefs, message of the first false condition).
    pub parents: BTreeMap<String, (bool, bool, String)>,
}

/// Everything the operator read for one reconcile.
#[derive(Clone, Debug, Serialize)]
pub struct Observed {
    /// Wall clock, unix milliseconds (status timestamps, dwell times).
    pub now_ms: i64,
    pub pods: Vec<MemberPod>,
    pub agents: AgentsObserved,
    pub probes: BTreeMap<String, NodeProbe>,
    /// Epoch annotation and addresses of the current `-rw` EndpointSlice.
    pub routed_epoch: Option<u64>,
    /// Its resourceVersion, the precondition of its next write (not an input of the plan).
    #[serde(skip)]
    pub rw_version: Option<String>,
    pub routed_addresses: Vec<String>,
    /// `-ro` and `-r` EndpointSlice addresses as they are now.
    pub ro_addresses: Vec<String>,
    pub r_addresses: Vec<String>,
    /// Whether the Gateway API (HTTPRoute CRD) is installed.
    pub gateway_api: bool,
    pub route: Option<RouteObserved>,
    /// Hash of the group's TLS material (rolls the pods when certificates change).
    pub tls_hash: String,
    /// Hash of the group CA (pods that trust another one restart together).
    pub ca_hash: String,
    /// The group CA's Secret is gone or unusable while the members still trust it: the
    /// operator goes on with what it read before and says so (why, and the recovery steps).
    pub ca_lost: Option<String>,
    /// Gateways named in parentRefs that do not exist (namespace/name).
    pub missing_gateways: Vec<String>,
    /// Objects under names this group derives that exist and are not this group's.
    pub name_conflicts: Vec<NameConflict>,
    /// The names of the group's Services as they exist (per-member ones of removed members
    /// are deleted).
    pub services: Vec<String>,
    /// Why the API server refused to create a member or witness pod lately (the StatefulSet's
    /// latest `FailedCreate` Event), while pods are missing.
    pub pods_rejected: Option<String>,
}

/// An object derived from the spec that the API server refused as invalid (a template field it
/// checks and the CRD schema cannot: a container without an image, a quantity that does not
/// parse, a hostname): the spec is at fault, and the group says so (`Degraded`/`InvalidSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusedWrite {
    pub kind: String,
    pub name: String,
    /// The API server's message (it names the field).
    pub message: String,
}

/// An object under one of the group's derived names that is not the group's (another owner,
/// or none: a user's object, or another group's). The operator writes nothing to it and
/// deletes nothing of it — applying would take it over, and the group's deletion would then
/// garbage-collect it — and the group reports `Degraded` with reason `NameConflict`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NameConflict {
    pub kind: String,
    pub name: String,
    /// Who owns it instead, for humans: `ReplicaGroup other`, `no owner`.
    pub owner: String,
}

impl NameConflict {
    pub fn message(&self) -> String {
        format!(
            "{} {} exists and is not this group's ({}): the operator leaves it alone; rename or delete it, or give the group another name",
            self.kind, self.name, self.owner
        )
    }
}

/// An object to create or update with server-side apply.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Desired {
    StatefulSet(Box<StatefulSet>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// Gateway API HTTPRoute (no typed crate: the `gateway-api` crate is built on kube 4).
    HttpRoute(serde_json::Value),
}

impl Desired {
    /// The object's kind and name.
    pub fn kind_and_name(&self) -> (&'static str, String) {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        match self {
            Desired::StatefulSet(o) => (StatefulSet::KIND, name(&o.metadata)),
            Desired::Service(o) => (Service::KIND, name(&o.metadata)),
            Desired::EndpointSlice(o) => (EndpointSlice::KIND, name(&o.metadata)),
            Desired::PodDisruptionBudget(o) => (PodDisruptionBudget::KIND, name(&o.metadata)),
            Desired::NetworkPolicy(o) => (NetworkPolicy::KIND, name(&o.metadata)),
            Desired::HttpRoute(v) => (
                HTTPROUTE_KIND,
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        }
    }
}

/// An object the group no longer needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Obsolete {
    pub kind: &'static str,
    pub name: String,
}

/// A pod whose `quorate.dev/role` label must change: set to `role`, or removed (`None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleLabel {
    pub pod: String,
    pub role: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Everything to do for one reconcile.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub apply: Vec<Desired>,
    pub delete: Vec<Obsolete>,
    pub action: Option<AgentAction>,
    pub status: ReplicaGroupStatus,
    /// Events about the new status (a new primary, a problem): published after the status
    /// write, and planned again with it when that write meets a conflict.
    pub events: Vec<PlannedEvent>,
    /// Events about what this reconcile's own writes do (an eviction, pods deleted): published
    /// as soon as those writes are done, whatever happens to the status write after them.
    pub done_events: Vec<PlannedEvent>,
    /// Role labels to change on member and witness pods, written after the objects (see
    /// `Plan::writes`). Nothing routes by them.
    pub role_labels: Vec<RoleLabel>,
    /// Remove the `quorate.dev/switchover-to` annotation (its request was handed to the group).
    pub clear_switchover_request: bool,
    /// New members stuck on volumes provisioned for the wrong node: delete those claims, then
    /// the pod, and the StatefulSet creates both again.
    pub release_stranded: Vec<StrandedMember>,
    /// Pods that trust a replaced group CA: deleted together, after the objects (their
    /// StatefulSet creates them again with the new CA).
    pub restart_for_new_ca: Vec<String>,
    /// The pod the roll onto a new template restarts now (evicted, after the objects).
    pub evict: Option<String>,
    /// The pods on an older template, in the order the roll restarts them.
    pub outdated: Vec<String>,
    /// Look again after this long at the latest (lease expiry, dwell time, safety net).
    pub requeue_ms: u64,
}

/// How often a group is looked at when nothing happens: a safety net, since every input that
/// matters triggers a reconcile (the watches, the agents' state streams, and the plan's own
/// deadlines: lease expiry, dwell times, polls). At 1000 idle groups a 60 s resync was most of
/// the operator's idle reconciles (bench-scale).
pub const RESYNC_MS: u64 = 300_000;

/// How soon a group looks again after the roll evicted a pod (an eviction the
/// PodDisruptionBudget refused is not watched; what else the roll waits for is).
pub const ROLL_POLL_MS: u64 = 2_000;

/// How soon a group blocked by a Secret under its name, or whose CA is lost, looks again
/// (Secrets are not watched, so the removal of the one in the way, or the restored CA, is
/// noticed by this poll, or by a change of the group).
pub const SECRETS_POLL_MS: u64 = 30_000;

/// Fewer member or witness pods exist than the spec asks for.
pub fn pods_missing(group: &ReplicaGroup, pods: &[MemberPod]) -> bool {
    let members = pods.iter().filter(|p| !p.witness).count() as i64;
    let witnesses = pods.iter().filter(|p| p.witness).count() as i64;
    members < i64::from(group.spec.replicas)
        || witnesses < i64::from(group.spec.effective_witnesses())
}

/// The reconcile decision.
pub fn plan(group: &ReplicaGroup, observed: &Observed, settings: &OperatorSettings) -> Plan {
    let names = GroupNames::new(
        group.metadata.name.clone().unwrap_or_default(),
        group.metadata.namespace.clone().unwrap_or_default(),
    );
    let previous = group.status.clone().unwrap_or_default();
    let template_problem = members::template_problem(&group.spec);

    let lifecycle = lifecycle::decide(group, &names, observed, &previous);
    let traffic = routing::decide_traffic(
        group,
        &names,
        observed,
        &previous,
        &lifecycle.draining,
        lifecycle.member_replicas,
    );

    let mut apply = Vec::new();
    if template_problem.is_none() {
        apply.extend(members::stateful_sets(
            group,
            &names,
            observed,
            settings,
            lifecycle.member_replicas,
        ));
    }
    apply.extend(routing::services(group, &names, &traffic));
    apply.extend(routing::endpoint_slices(group, &names, &traffic));
    let mut delete = Vec::new();
    match routing::disruption_budget(group, &names) {
        Some(budget) => apply.push(budget),
        None => delete.push(Obsolete {
            kind: <PodDisruptionBudget as k8s_openapi::Resource>::KIND,
            name: names.members(),
        }),
    }
    match network::network_policy(group, &names, settings) {
        Some(policy) => apply.push(policy),
        None => delete.push(Obsolete {
            kind: <NetworkPolicy as k8s_openapi::Resource>::KIND,
            name: names.members(),
        }),
    }
    if let Some(route) = routing::http_route(group, &names, observed, &traffic) {
        apply.push(route);
    }
    if group.spec.effective_witnesses() == 0 && lifecycle.witness_replicas == 0 {
        delete.push(Obsolete {
            kind: <StatefulSet as k8s_openapi::Resource>::KIND,
            name: names.witnesses(),
        });
    }
    if group.spec.traffic.gateway.is_none() && observed.route.is_some() {
        delete.push(Obsolete {
            kind: HTTPROUTE_KIND,
            name: names.members(),
        });
    }

    // Per-member Services of members that are gone (a scale-down), or of a group that no
    // longer routes per member.
    let planned_services: std::collections::BTreeSet<String> = apply
        .iter()
        .filter_map(|d| match d.kind_and_name() {
            (Service::KIND, name) => Some(name),
            _ => None,
        })
        .collect();
    for name in &observed.services {
        if matches!(names.ordinal_of(name), Some((false, _))) && !planned_services.contains(name) {
            delete.push(Obsolete {
                kind: Service::KIND,
                name: name.clone(),
            });
        }
    }
    // Nothing is written to, or deleted of, an object that is not the group's.
    let conflicting = |kind: &str, name: &str| {
        observed
            .name_conflicts
            .iter()
            .any(|c| c.kind == kind && c.name == name)
    };
    apply.retain(|d| {
        let (kind, name) = d.kind_and_name();
        !conflicting(kind, &name)
    });
    delete.retain(|o| !conflicting(o.kind, &o.name));

    let (mut status, events) = status::build(&status::StatusInputs {
        group,
        names: &names,
        observed,
        previous: &previous,
        lifecycle: &lifecycle,
        traffic: &traffic,
        template_problem: template_problem.as_deref(),
    });
    let mut done_events = Vec::new();
    for s in &lifecycle.stranded {
        done_events.push(PlannedEvent {
            warning: true,
            reason: "StrandedVolumes".into(),
            note: format!(
                "{} cannot be scheduled: its new volume(s) {} were provisioned on {}, where {} runs \
                 (the scheduler failed binding its other volumes and placed {} there meanwhile); \
                 deleting them and the pod so that the StatefulSet creates both again",
                s.pod,
                s.claims.join(", "),
                s.node,
                s.blocking,
                s.blocking
            ),
        });
    }
    let restart_for_new_ca = lifecycle::trusting_another_ca(observed);
    if !restart_for_new_ca.is_empty() {
        done_events.push(PlannedEvent {
            warning: true,
            reason: "CaReplaced".into(),
            note: format!(
                "the group CA was replaced: restarting {} together (they trust the old CA and cannot talk to members that trust the new one)",
                restart_for_new_ca.join(", ")
            ),
        });
    }
    let rendered = |name: String| {
        apply.iter().find_map(|d| match d {
            Desired::StatefulSet(s) if s.metadata.name.as_deref() == Some(name.as_str()) => {
                members::rendered_template_hash(s).map(str::to_owned)
            }
            _ => None,
        })
    };
    let hashes = (rendered(names.members()), rendered(names.witnesses()));
    let roll = roll::decide(
        group,
        observed,
        (hashes.0.as_deref(), hashes.1.as_deref()),
        status::ready_gate(&status),
        roll::Busy {
            action: lifecycle.action.as_ref(),
            draining: lifecycle.draining.len(),
            restarting_for_new_ca: restart_for_new_ca.len(),
        },
    );
    status::add_roll_condition(group, &mut status, observed.now_ms, &roll);
    if let Some(pod) = &roll.evict {
        done_events.push(PlannedEvent {
            warning: false,
            reason: "RollingUpdate".into(),
            note: format!(
                "restarting {pod} onto the current pod template ({} of the group's pods are on an older one)",
                roll.outdated.len()
            ),
        });
    }
    let role_labels = routing::role_labels(group, observed, &traffic);
    let requeue_ms = [
        Some(RESYNC_MS),
        traffic.requeue_ms,
        lifecycle.requeue_ms,
        observed.ca_lost.is_some().then_some(SECRETS_POLL_MS),
        roll.evict.is_some().then_some(ROLL_POLL_MS),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(RESYNC_MS);
    Plan {
        apply,
        delete,
        action: lifecycle.action.or(roll.action),
        status,
        events,
        done_events,
        role_labels,
        clear_switchover_request: lifecycle.clear_switchover_request,
        release_stranded: lifecycle.stranded,
        restart_for_new_ca,
        evict: roll.evict,
        outdated: roll.outdated,
        requeue_ms,
    }
}
