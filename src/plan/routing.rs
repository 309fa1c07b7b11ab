//! Routing: who gets traffic (the traffic policy over the group's state), and the objects that
//! carry it — Services, the operator-written EndpointSlices, per-member Services with weights, the
//! PodDisruptionBudget and the optional Gateway API HTTPRoute.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::json;

use super::members::{group_selector, meta, object_labels};
use super::{AgentsObserved, Desired, GroupView, LeaseView, Observed};
use crate::api::names::*;
use crate::api::{GroupMode, MemberRole, PortProtocol, ReplicaGroup, ReplicaGroupStatus};
use crate::traffic::{self, MemberSignal, Published};

/// Name of the HTTPRoute rule Quorate owns; other rules of the route are left alone.
pub const ROUTE_RULE_NAME: &str = "quorate";

/// What to do with one operator-written EndpointSlice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum SliceDecision {
    /// Leave it as it is (the group's state is not known yet, or is older than what is routed).
    Keep,
    /// Exactly these members (name, pod IP).
    Route(Vec<(String, String)>),
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct TrafficPlan {
    /// Weight per member (members still in the StatefulSet; 0 = drained).
    pub weights: BTreeMap<String, i32>,
    pub weights_changed: bool,
    pub rw: SliceDecision,
    /// The epoch the `-rw` slice carries after this reconcile.
    pub rw_epoch: Option<u64>,
    pub ro: SliceDecision,
    pub r: SliceDecision,
    /// The primary the `-rw` slice routes to now (for events and status).
    pub routed_primary: Option<String>,
    /// Why routing is held (view older than what is routed, agents unreachable ...).
    pub held: Option<String>,
    pub requeue_ms: Option<u64>,
}

/// The view the routing may act on: fresh, from the coordinator, not older than what is routed.
fn lease_live(view: &GroupView, age_ms: u64) -> bool {
    view.from_coordinator && view.lease == LeaseView::Live && age_ms < view.lease_remaining_ms
}

pub(super) fn decide_traffic(
    group: &ReplicaGroup,
    names: &GroupNames,
    observed: &Observed,
    previous: &ReplicaGroupStatus,
    draining: &BTreeSet<String>,
    member_replicas: i32,
) -> TrafficPlan {
    let spec = &group.spec;
    let ip_of = |name: &str| {
        observed
            .pods
            .iter()
            .find(|p| p.name == name && !p.witness)
            .and_then(|p| p.ip.clone())
    };
    let routed_floor = observed
        .routed_epoch
        .max(previous.routed_epoch.map(|e| e.max(0) as u64));
    let lease_ms = spec.failover.lease_millis.max(0) as u64;
    let member_names: Vec<String> = (0..member_replicas.max(0) as u32)
        .map(|i| names.member(i))
        .collect();

    let (view, age_ms) = match &observed.agents {
        AgentsObserved::Connected { view, age_ms } => (Some(view), *age_ms),
        AgentsObserved::Connecting => {
            return TrafficPlan::hold(
                previous,
                routed_floor,
                "waiting for the group's state stream".into(),
                &member_names,
            );
        }
        AgentsObserved::Unreachable { since_ms, error } => {
            let unreachable_for = (observed.now_ms - since_ms).max(0) as u64;
            if unreachable_for < lease_ms {
                let mut plan = TrafficPlan::hold(
                    previous,
                    routed_floor,
                    format!("agents unreachable: {error}"),
                    &member_names,
                );
                plan.requeue_ms = Some(lease_ms - unreachable_for);
                return plan;
            }
            (None, 0)
        }
    };
    let Some(view) = view else {
        // Nobody answers for longer than a lease: no member's state is known, route to none.
        let mut plan = TrafficPlan::hold(
            previous,
            routed_floor,
            "agents unreachable: no member's state is known".into(),
            &member_names,
        );
        plan.rw = SliceDecision::Route(vec![]);
        plan.ro = SliceDecision::Route(vec![]);
        plan.r = SliceDecision::Route(vec![]);
        plan.weights = member_names.iter().map(|n| (n.clone(), 0)).collect();
        plan.weights_changed = previous.members.iter().any(|m| m.weight != 0);
        return plan;
    };

    // Weights from the traffic policy (with hysteresis against what was published).
    let signals: Vec<MemberSignal> = member_names
        .iter()
        .map(|name| {
            let m = view.members.iter().find(|m| &m.name == name);
            MemberSignal {
                name: name.clone(),
                healthy: m.is_some_and(|m| m.healthy) && ip_of(name).is_some(),
                draining: draining.contains(name)
                    || observed
                        .pods
                        .iter()
                        .any(|p| &p.name == name && p.terminating),
                load: m.and_then(|m| m.load),
                latency_ms: m.and_then(|m| m.latency_ms),
            }
        })
        .collect();
    let published = Published {
        weights: previous
            .members
            .iter()
            .filter(|m| member_names.contains(&m.name))
            .map(|m| (m.name.clone(), m.weight))
            .collect(),
        changed_at_ms: previous
            .weights_changed_at
            .as_ref()
            .map(|t| t.0.as_millisecond().max(0) as u64),
    };
    let now = observed.now_ms.max(0) as u64;
    let mut requeue_ms = None;
    let (weights, weights_changed, ro_weights) = match spec.mode {
        GroupMode::ActiveActive => {
            let decision = traffic::decide(&spec.traffic, &signals, &published, now);
            if let traffic::WeightReason::Dwell { wait_ms } = decision.reason {
                requeue_ms = Some(wait_ms);
            }
            (decision.weights.clone(), decision.changed, BTreeMap::new())
        }
        GroupMode::PrimaryBackup => {
            let live = lease_live(view, age_ms);
            let routes = traffic::primary_backup_routes(
                &spec.traffic,
                &signals,
                view.primary.as_deref(),
                live,
            );
            // Member Services carry the read weights; the primary serves writes only.
            let weights: BTreeMap<String, i32> = member_names
                .iter()
                .map(|n| (n.clone(), routes.ro.get(n).copied().unwrap_or(0)))
                .collect();
            let changed = weights != published.weights;
            (weights, changed, routes.ro)
        }
    };

    // -rw: exactly the primary, only while its lease is live, never an older epoch.
    let mut held = None;
    let (rw, rw_epoch, routed_primary) = if spec.mode != GroupMode::PrimaryBackup {
        (SliceDecision::Keep, routed_floor, None)
    } else if routed_floor.is_some_and(|floor| view.epoch < floor) {
        held = Some(format!(
            "the group reports epoch {} but epoch {} is already routed; routing never goes back",
            view.epoch,
            routed_floor.unwrap_or(0)
        ));
        (SliceDecision::Keep, routed_floor, None)
    } else if !view.from_coordinator
        && view.lease == LeaseView::Live
        && age_ms < view.lease_remaining_ms
    {
        // A relayed view with a lease that may still run: wait for the coordinator's own word.
        held = Some("waiting for the coordinator's first-hand state".into());
        requeue_ms = Some(view.lease_remaining_ms - age_ms);
        (SliceDecision::Keep, routed_floor, None)
    } else if lease_live(view, age_ms) {
        match view
            .primary
            .as_deref()
            .and_then(|p| ip_of(p).map(|ip| (p.to_owned(), ip)))
        {
            Some((primary, ip)) => (
                SliceDecision::Route(vec![(primary.clone(), ip)]),
                Some(view.epoch).max(routed_floor),
                Some(primary),
            ),
            None => (
                SliceDecision::Route(vec![]),
                routed_floor.max(Some(view.epoch)),
                None,
            ),
        }
    } else {
        (
            SliceDecision::Route(vec![]),
            routed_floor.max((view.epoch > 0).then_some(view.epoch)),
            None,
        )
    };

    let with_ip = |names: &mut dyn Iterator<Item = &String>| -> Vec<(String, String)> {
        names
            .filter_map(|n| ip_of(n).map(|ip| (n.clone(), ip)))
            .collect()
    };
    let (ro, r) = match spec.mode {
        GroupMode::PrimaryBackup => {
            let ro_members: Vec<&String> = ro_weights
                .iter()
                .filter(|(_, w)| **w > 0)
                .map(|(n, _)| n)
                .collect();
            let healthy: Vec<&String> = signals
                .iter()
                .filter(|s| s.serving())
                .map(|s| &s.name)
                .collect();
            (
                SliceDecision::Route(with_ip(&mut ro_members.into_iter())),
                SliceDecision::Route(with_ip(&mut healthy.into_iter())),
            )
        }
        GroupMode::ActiveActive => {
            let serving: Vec<&String> = weights
                .iter()
                .filter(|(_, w)| **w > 0)
                .map(|(n, _)| n)
                .collect();
            (
                SliceDecision::Keep,
                SliceDecision::Route(with_ip(&mut serving.into_iter())),
            )
        }
    };
    TrafficPlan {
        weights,
        weights_changed,
        rw,
        rw_epoch,
        ro,
        r,
        routed_primary,
        held,
        requeue_ms,
    }
}

impl TrafficPlan {
    fn hold(
        previous: &ReplicaGroupStatus,
        routed_floor: Option<u64>,
        why: String,
        members: &[String],
    ) -> Self {
        let weights = members
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    previous
                        .members
                        .iter()
                        .find(|m| &m.name == n)
                        .map_or(0, |m| m.weight),
                )
            })
            .collect();
        TrafficPlan {
            weights,
            weights_changed: false,
            rw: SliceDecision::Keep,
            rw_epoch: routed_floor,
            ro: SliceDecision::Keep,
            r: SliceDecision::Keep,
            routed_primary: previous.primary.clone(),
            held: Some(why),
            requeue_ms: None,
        }
    }
}

fn service_ports(group: &ReplicaGroup) -> Vec<ServicePort> {
    group
        .spec
        .ports
        .iter()
        .map(|p| ServicePort {
            name: Some(p.name.clone()),
            port: p.port,
            target_port: Some(IntOrString::Int(p.port)),
            protocol: Some(protocol(p.protocol)),
            app_protocol: p.app_protocol.clone(),
            ..Default::default()
        })
        .collect()
}

fn protocol(p: Option<PortProtocol>) -> String {
    p.unwrap_or(PortProtocol::Tcp).name().to_owned()
}

fn service(
    names: &GroupNames,
    name: String,
    spec: ServiceSpec,
    annotations: Option<BTreeMap<String, String>>,
) -> Desired {
    let mut metadata = meta(names, name, COMPONENT_ROUTING);
    metadata.annotations = annotations;
    Desired::Service(Box::new(Service {
        metadata,
        spec: Some(spec),
        ..Default::default()
    }))
}

pub(super) fn services(
    group: &ReplicaGroup,
    names: &GroupNames,
    traffic: &TrafficPlan,
) -> Vec<Desired> {
    let mut out = vec![service(
        names,
        names.peers(),
        ServiceSpec {
            cluster_ip: Some("None".into()),
            // Agents must find each other before they are ready (they become ready by joining).
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(
                GROUP_LABEL.to_owned(),
                names.name.clone(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some(AGENT_GRPC_PORT_NAME.into()),
                port: AGENT_GRPC_PORT,
                target_port: Some(IntOrString::Int(AGENT_GRPC_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        },
        None,
    )];
    let ports = service_ports(group);
    if ports.is_empty() {
        return out;
    }
    let selectorless = || ServiceSpec {
        ports: Some(ports.clone()),
        ..Default::default()
    };
    let routed: Vec<String> = match group.spec.mode {
        GroupMode::PrimaryBackup => vec![names.rw(), names.ro(), names.r()],
        GroupMode::ActiveActive => vec![names.r()],
    };
    for name in routed {
        out.push(service(names, name, selectorless(), None));
    }
    for (member, weight) in &traffic.weights {
        out.push(service(
            names,
            member.clone(),
            ServiceSpec {
                selector: Some(BTreeMap::from([(
                    POD_NAME_LABEL.to_owned(),
                    member.clone(),
                )])),
                ports: Some(ports.clone()),
                // The member's weight is the routing decision (0 while the agent finds the
                // workload unhealthy); waiting for the kubelet's readiness probe as well would
                // leave a Gateway with a weighted backend without endpoints (503s) for a probe
                // period after every admission.
                publish_not_ready_addresses: Some(true),
                ..Default::default()
            },
            Some(BTreeMap::from([(
                WEIGHT_ANNOTATION.to_owned(),
                weight.to_string(),
            )])),
        ));
    }
    out
}

fn slice(
    group: &ReplicaGroup,
    names: &GroupNames,
    service: String,
    members: &[(String, String)],
    epoch: Option<u64>,
) -> Desired {
    let mut metadata = meta(names, service.clone(), COMPONENT_ROUTING);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    labels.insert(SERVICE_NAME_LABEL.to_owned(), service);
    labels.insert(SLICE_MANAGED_BY_LABEL.to_owned(), SLICE_MANAGER.to_owned());
    if let Some(e) = epoch {
        metadata.annotations = Some(BTreeMap::from([(
            EPOCH_ANNOTATION.to_owned(),
            e.to_string(),
        )]));
    }
    Desired::EndpointSlice(Box::new(EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: members
            .iter()
            .map(|(name, ip)| Endpoint {
                addresses: vec![ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    namespace: Some(names.namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(
            group
                .spec
                .ports
                .iter()
                .map(|p| EndpointPort {
                    name: Some(p.name.clone()),
                    port: Some(p.port),
                    protocol: Some(protocol(p.protocol)),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
        ),
    }))
}

pub(super) fn endpoint_slices(
    group: &ReplicaGroup,
    names: &GroupNames,
    traffic: &TrafficPlan,
) -> Vec<Desired> {
    if group.spec.ports.is_empty() {
        return vec![];
    }
    let mut out = Vec::new();
    if let SliceDecision::Route(members) = &traffic.rw {
        out.push(slice(group, names, names.rw(), members, traffic.rw_epoch));
    }
    if let SliceDecision::Route(members) = &traffic.ro {
        out.push(slice(group, names, names.ro(), members, None));
    }
    if let SliceDecision::Route(members) = &traffic.r {
        out.push(slice(group, names, names.r(), members, None));
    }
    out
}

/// Voluntary disruptions (drains, evictions) never take the group below a Raft majority. None
/// for a single voter: its majority is itself, and a budget would block every node drain
/// forever (the group accepts that downtime by having one voter).
pub(super) fn disruption_budget(group: &ReplicaGroup, names: &GroupNames) -> Option<Desired> {
    let voters = group.spec.replicas.max(1) + group.spec.effective_witnesses();
    if voters < 2 {
        return None;
    }
    Some(Desired::PodDisruptionBudget(Box::new(
        PodDisruptionBudget {
            metadata: meta(names, names.members(), COMPONENT_MEMBER),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(voters / 2 + 1)),
                selector: Some(group_selector(names)),
                ..Default::default()
            }),
            ..Default::default()
        },
    )))
}

/// The group's HTTPRoute: one rule of ours (named `quorate`) with a backendRef per member Service.
pub(super) fn http_route(
    group: &ReplicaGroup,
    names: &GroupNames,
    observed: &Observed,
    traffic: &TrafficPlan,
) -> Option<Desired> {
    let gateway = group.spec.traffic.gateway.as_ref()?;
    if !observed.gateway_api {
        return None;
    }
    let port = gateway
        .port
        .or_else(|| group.spec.ports.first().map(|p| p.port))?;
    let parent_refs: Vec<serde_json::Value> = gateway
        .parent_refs
        .iter()
        .map(|p| {
            let mut r = json!({"group": GATEWAY_API_GROUP, "kind": "Gateway", "name": p.name});
            if let Some(ns) = &p.namespace {
                r["namespace"] = json!(ns);
            }
            if let Some(s) = &p.section_name {
                r["sectionName"] = json!(s);
            }
            if let Some(port) = p.port {
                r["port"] = json!(port);
            }
            r
        })
        .collect();
    let backend_refs: Vec<serde_json::Value> = traffic
        .weights
        .iter()
        .map(|(member, weight)| json!({"group": "", "kind": "Service", "name": member, "port": port, "weight": weight}))
        .collect();
    let mut spec = json!({
        "parentRefs": parent_refs,
        "rules": [{
            "name": ROUTE_RULE_NAME,
            "matches": [{"path": {"type": "PathPrefix", "value": gateway.path_prefix.clone().unwrap_or_else(|| "/".into())}}],
            "backendRefs": backend_refs,
        }],
    });
    if !gateway.hostnames.is_empty() {
        spec["hostnames"] = json!(gateway.hostnames);
    }
    Some(Desired::HttpRoute(json!({
        "apiVersion": HTTPROUTE_API_VERSION,
        "kind": HTTPROUTE_KIND,
        "metadata": {"name": names.members(), "namespace": names.namespace, "labels": object_labels(names, COMPONENT_ROUTING)},
        "spec": spec,
    })))
}

/// Our HTTPRoute merged into the route as it exists: rules someone else added stay, and so do
/// backendRefs and filters someone else added to our rule. (`spec.rules` is an atomic list in
/// the Gateway API schema, so server-side apply alone would replace the whole list.)
pub fn merge_route(
    desired: &serde_json::Value,
    existing: Option<&serde_json::Value>,
    names: &GroupNames,
) -> serde_json::Value {
    let mut merged = desired.clone();
    let Some(existing) = existing else {
        return merged;
    };
    let ours = |b: &serde_json::Value| {
        b["name"]
            .as_str()
            .is_some_and(|n| names.ordinal_of(n).is_some_and(|(w, _)| !w))
    };
    let mut rules = Vec::new();
    for rule in desired["spec"]["rules"].as_array().into_iter().flatten() {
        let mut rule = rule.clone();
        let before = existing["spec"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == ROUTE_RULE_NAME);
        if let Some(before) = before {
            let foreign: Vec<serde_json::Value> = before["backendRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| !ours(b))
                .cloned()
                .collect();
            if let Some(refs) = rule["backendRefs"].as_array_mut() {
                refs.extend(foreign);
            }
            for field in ["filters", "timeouts", "retry", "sessionPersistence"] {
                if !before[field].is_null() {
                    rule[field] = before[field].clone();
                }
            }
        }
        rules.push(rule);
    }
    rules.extend(
        existing["spec"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["name"] != ROUTE_RULE_NAME)
            .cloned(),
    );
    merged["spec"]["rules"] = serde_json::Value::Array(rules);
    merged
}

/// The `quorate.dev/role` label's value for a role the group reports; none for Unknown, and
/// none for Primary: only the member `-rw` routes to is labelled primary (`role_labels`).
fn role_label_value(role: MemberRole) -> Option<&'static str> {
    match role {
        MemberRole::Backup => Some(ROLE_BACKUP),
        MemberRole::Active => Some(ROLE_ACTIVE),
        MemberRole::Witness => Some(ROLE_WITNESS),
        MemberRole::Primary | MemberRole::Unknown => None,
    }
}

const ROLE_PRIMARY: &str = "primary";
const ROLE_BACKUP: &str = "backup";
const ROLE_ACTIVE: &str = "active";
const ROLE_WITNESS: &str = "witness";

/// The pods whose `quorate.dev/role` label must change, and to what.
///
/// The label is for NetworkPolicies, monitoring and humans; nothing routes by it (routing is
/// the EndpointSlices, written before it). It therefore follows routing: `primary` only on the
/// member the `-rw` slice routes to after this reconcile (at the epoch it carries), never on a
/// member the group calls primary before `-rw` follows it, and on nobody while `-rw` routes to
/// nobody. The other members carry the role the group reports (`backup`, `active`), witness
/// pods `witness`; a member whose role is unknown loses the label. Without the group's state
/// (the stream is being set up, the agents are unreachable) only the primary label moves, with
/// the routing, so that labels do not flap on every operator restart. Pods being deleted are
/// left alone.
pub(super) fn role_labels(
    group: &ReplicaGroup,
    observed: &Observed,
    traffic: &TrafficPlan,
) -> Vec<super::RoleLabel> {
    let view = match &observed.agents {
        AgentsObserved::Connected { view, .. } => Some(view),
        _ => None,
    };
    let rw_member: Option<String> = match (&group.spec.mode, &traffic.rw) {
        (GroupMode::PrimaryBackup, SliceDecision::Route(m)) => m.first().map(|(n, _)| n.clone()),
        // The slice stays as it is: whoever it routes to now.
        (GroupMode::PrimaryBackup, SliceDecision::Keep) => observed
            .pods
            .iter()
            .find(|p| {
                !p.witness
                    && p.ip
                        .as_ref()
                        .is_some_and(|ip| observed.routed_addresses.contains(ip))
            })
            .map(|p| p.name.clone()),
        (GroupMode::ActiveActive, _) => None,
    };
    observed
        .pods
        .iter()
        .filter(|p| !p.terminating)
        .filter_map(|p| {
            let want = if rw_member.as_deref() == Some(p.name.as_str()) {
                Some(ROLE_PRIMARY)
            } else if p.witness {
                Some(ROLE_WITNESS)
            } else if let Some(v) = view {
                v.members
                    .iter()
                    .find(|m| m.name == p.name)
                    .and_then(|m| role_label_value(m.role))
            } else if p.role_label.as_deref() == Some(ROLE_PRIMARY) {
                None
            } else {
                return None;
            };
            (p.role_label.as_deref() != want).then(|| super::RoleLabel {
                pod: p.name.clone(),
                role: want,
            })
        })
        .collect()
}

/// The order of writes, decided here rather than at apply time because it is what a failover
/// waits for: the `-rw` EndpointSlice (the switch itself, one object and so one write) goes
/// first, then the other slices, the Services, the HTTPRoute, the PodDisruptionBudget and the
/// NetworkPolicy, and the members' StatefulSets last. The pods' role labels (`Plan::role_labels`) follow them: no
/// routing depends on a label, and a label that cannot be written must not hold up the objects
/// the group needs. The status is written after all of them (by the IO shell).
fn write_rank(d: &Desired) -> u8 {
    match d {
        Desired::EndpointSlice(s)
            if s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-rw")) =>
        {
            0
        }
        Desired::EndpointSlice(_) => 1,
        Desired::Service(_) => 2,
        Desired::HttpRoute(_) => 3,
        Desired::PodDisruptionBudget(_) | Desired::NetworkPolicy(_) => 4,
        Desired::StatefulSet(_) => 5,
    }
}

impl super::Plan {
    /// The objects to apply, in the order to write them (stable within a kind).
    pub fn writes(&self) -> Vec<&Desired> {
        let mut writes: Vec<&Desired> = self.apply.iter().collect();
        writes.sort_by_key(|d| write_rank(d));
        writes
    }
}
