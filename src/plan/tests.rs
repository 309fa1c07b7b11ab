//! Plan tests: snapshots of the objects for representative groups, the routing and lifecycle
//! rules as unit tests, and the routing safety rules as properties.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::api::names::SWITCHOVER_ANNOTATION;
use crate::api::{FailoverSpec, GroupMode, GroupPhase, MemberRole, ReplicaGroupSpec};
use crate::supervisor::protocol::HookOutcome;

const NOW: i64 = 1_800_000_000_000;

fn group(mode: GroupMode, replicas: i32) -> ReplicaGroup {
    let spec: ReplicaGroupSpec = serde_json::from_value(json!({
        "mode": mode,
        "replicas": replicas,
        "ports": [{"name": "http", "port": 8080}],
        "health": {"httpGet": {"port": 8080, "path": "/healthz"}},
        "roleChange": {"httpPost": {"port": 8080, "path": "/quorate/role"}},
        "template": {"spec": {"containers": [{"name": "app", "image": "ghcr.io/quorate-dev/quorate:0.1.0", "command": ["/quorate-testapp"]}]}},
    }))
    .expect("fixture spec");
    let mut g = ReplicaGroup::new("cache", spec);
    g.metadata = ObjectMeta {
        name: Some("cache".into()),
        namespace: Some("shop".into()),
        generation: Some(3),
        ..Default::default()
    };
    g
}

fn settings() -> OperatorSettings {
    OperatorSettings {
        agent_image: "ghcr.io/quorate-dev/quorate:0.1.0".into(),
        agent_image_pull_policy: "IfNotPresent".into(),
        network_policies: true,
        operator_pods: crate::plan::OperatorPods {
            namespace: "quorate-system".into(),
            labels: std::collections::BTreeMap::from([(
                "app.kubernetes.io/name".into(),
                "quorate".into(),
            )]),
        },
    }
}

fn pods(n: u32) -> Vec<MemberPod> {
    (0..n)
        .map(|i| MemberPod {
            name: format!("cache-{i}"),
            witness: false,
            ordinal: i,
            ip: Some(format!("10.88.1.{}", i + 10)),
            agent_running: true,
            terminating: false,
            role_label: None,
            ready: true,
            ..MemberPod::default()
        })
        .collect()
}

fn member(i: u32, role: MemberRole) -> MemberView {
    MemberView {
        id: 100 + i as u64,
        name: format!("cache-{i}"),
        voter: true,
        witness: false,
        role,
        healthy: true,
        load: None,
        latency_ms: None,
        position: None,
        message: String::new(),
        hooks: vec![],
        fenced: false,
    }
}

/// A healthy PrimaryBackup view: `primary` holds a live lease at `epoch`.
fn view(n: u32, primary: u32, epoch: u64) -> GroupView {
    GroupView {
        from_coordinator: true,
        initialized: true,
        epoch,
        primary: Some(format!("cache-{primary}")),
        lease: LeaseView::Live,
        lease_remaining_ms: 900,
        leader: Some("cache-0".into()),
        paused: false,
        flap_guard_tripped: false,
        switchover_pending: false,
        members: (0..n)
            .map(|i| {
                member(
                    i,
                    if i == primary {
                        MemberRole::Primary
                    } else {
                        MemberRole::Backup
                    },
                )
            })
            .collect(),
        failovers: vec![],
    }
}

fn observed(pods: Vec<MemberPod>, agents: AgentsObserved) -> Observed {
    Observed {
        now_ms: NOW,
        pods,
        agents,
        probes: BTreeMap::new(),
        routed_epoch: None,
        rw_version: None,
        routed_addresses: vec![],
        ro_addresses: vec![],
        r_addresses: vec![],
        gateway_api: true,
        route: None,
        tls_hash: "tls-1".into(),
        ca_hash: "ca-1".into(),
        ca_lost: None,
        missing_gateways: vec![],
        name_conflicts: vec![],
        services: vec![],
        pods_rejected: None,
    }
}

fn connected(v: GroupView) -> AgentsObserved {
    AgentsObserved::Connected {
        view: v,
        age_ms: 50,
    }
}

fn bootstrapped(mut g: ReplicaGroup) -> ReplicaGroup {
    let status = g.status.get_or_insert_with(Default::default);
    status.bootstrapped_at = Some(Time(
        jiff::Timestamp::from_millisecond(NOW - 60_000).expect("time"),
    ));
    g
}

fn slice<'a>(
    plan: &'a Plan,
    name: &str,
) -> Option<&'a k8s_openapi::api::discovery::v1::EndpointSlice> {
    plan.apply.iter().find_map(|d| match d {
        Desired::EndpointSlice(s) if s.metadata.name.as_deref() == Some(name) => Some(s.as_ref()),
        _ => None,
    })
}

fn slice_ips(plan: &Plan, name: &str) -> Option<Vec<String>> {
    slice(plan, name).map(|s| {
        s.endpoints
            .iter()
            .flat_map(|e| e.addresses.clone())
            .collect()
    })
}

fn condition<'a>(
    plan: &'a Plan,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

fn statefulset<'a>(
    plan: &'a Plan,
    name: &str,
) -> Option<&'a k8s_openapi::api::apps::v1::StatefulSet> {
    plan.apply.iter().find_map(|d| match d {
        Desired::StatefulSet(s) if s.metadata.name.as_deref() == Some(name) => Some(s.as_ref()),
        _ => None,
    })
}

/// Routing as it follows `primary` (of `n` members) at `epoch`.
fn route(o: &mut Observed, n: u32, primary: u32, epoch: u64) {
    let ip = |i: u32| format!("10.88.1.{}", i + 10);
    o.routed_epoch = Some(epoch);
    o.routed_addresses = vec![ip(primary)];
    o.ro_addresses = (0..n).filter(|i| *i != primary).map(ip).collect();
    o.r_addresses = (0..n).map(ip).collect();
}

/// A PrimaryBackup group of `n` members, `primary` at `epoch`, routed.
fn routed_to(n: u32, primary: u32, epoch: u64) -> Observed {
    let mut o = observed(pods(n), connected(view(n, primary, epoch)));
    route(&mut o, n, primary, epoch);
    o
}

/// Marks every pod as created from the template `plan` renders for its StatefulSet.
fn on_current_template(o: &mut Observed, plan: &Plan, g: &ReplicaGroup) {
    let names = GroupNames::new(
        g.metadata.name.clone().unwrap_or_default(),
        g.metadata.namespace.clone().unwrap_or_default(),
    );
    for pod in &mut o.pods {
        let set = if pod.witness {
            names.witnesses()
        } else {
            names.members()
        };
        pod.template_hash = statefulset(plan, &set)
            .and_then(members::rendered_template_hash)
            .map(str::to_owned);
    }
}

#[test]
fn steady_primary_backup_group_snapshot() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = routed_to(3, 1, 4);
    let first = plan(&g, &o, &settings());
    on_current_template(&mut o, &first, &g);
    let p = plan(&g, &o, &settings());
    insta::assert_yaml_snapshot!("primary_backup_steady", p);
}

/// Applies a roll's eviction the way the cluster would: the pod comes back on the current
/// template.
fn step(o: &mut Observed, p: &Plan) {
    let current = statefulset(p, "cache")
        .and_then(members::rendered_template_hash)
        .map(str::to_owned);
    if let Some(pod) = &p.evict {
        let pod = o
            .pods
            .iter_mut()
            .find(|x| &x.name == pod)
            .expect("evicted pod");
        pod.template_hash = current;
    }
}

#[test]
fn a_roll_restarts_backups_first_then_switches_over_once_then_restarts_the_old_primary() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = routed_to(3, 1, 4);
    let mut order = Vec::new();
    let mut switchovers = 0;
    for _ in 0..6 {
        let p = plan(&g, &o, &settings());
        if let Some(pod) = &p.evict {
            assert_eq!(condition(&p, "UpToDate").reason, "Rolling");
            assert!(
                p.done_events.iter().any(|e| e.reason == "RollingUpdate"),
                "{:?}",
                p.done_events
            );
            assert_eq!(
                p.action, None,
                "never an eviction and a switchover together"
            );
            order.push(pod.clone());
            step(&mut o, &p);
        } else if let Some(action) = &p.action {
            assert_eq!(
                action,
                &AgentAction::Switchover {
                    target: None,
                    reason: ROLL_SWITCHOVER_REASON.into()
                }
            );
            switchovers += 1;
            // The group hands over to a restarted member (cache-2 or cache-0), as it would.
            let hashes = o.pods.clone();
            o = routed_to(3, 0, 5);
            o.pods = hashes;
        } else {
            assert_eq!(condition(&p, "UpToDate").status, "True", "{:?}", p.status);
            break;
        }
    }
    assert_eq!(order, ["cache-2", "cache-0", "cache-1"]);
    assert_eq!(switchovers, 1);
}

#[test]
fn a_roll_waits_while_the_group_is_not_whole_and_says_why() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    type BreakIt = Box<dyn Fn(&mut Observed, &mut ReplicaGroup)>;
    let cases: Vec<(&str, BreakIt)> = vec![
        (
            "cache-0 is not ready",
            Box::new(|o, _| o.pods[0].ready = false),
        ),
        (
            "cache-2 is terminating",
            Box::new(|o, _| o.pods[2].terminating = true),
        ),
        (
            "pod is missing",
            Box::new(|o, _| {
                o.pods.pop();
            }),
        ),
        (
            "cache-0 is not a healthy voter",
            Box::new(|o, _| {
                if let AgentsObserved::Connected { view, .. } = &mut o.agents {
                    view.members[0].healthy = false;
                }
            }),
        ),
        (
            "the group is paused",
            Box::new(|o, g| {
                g.spec.paused = true;
                if let AgentsObserved::Connected { view, .. } = &mut o.agents {
                    view.paused = true;
                }
            }),
        ),
        ("not Ready", Box::new(|o, _| o.routed_addresses.clear())),
        (
            "membership or primary goes first",
            Box::new(|_, g| {
                g.metadata.annotations =
                    Some([(SWITCHOVER_ANNOTATION.to_owned(), "cache-0".to_owned())].into());
            }),
        ),
    ];
    for (why, break_it) in cases {
        let (mut g, mut o) = (g.clone(), routed_to(3, 1, 4));
        break_it(&mut o, &mut g);
        let p = plan(&g, &o, &settings());
        assert_eq!(p.evict, None, "{why}");
        assert!(
            !matches!(&p.action, Some(AgentAction::Switchover { reason, .. }) if reason == ROLL_SWITCHOVER_REASON),
            "{why}"
        );
        let c = condition(&p, "UpToDate");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "RollWaiting"),
            "{why}"
        );
        assert!(c.message.contains(why), "{why}: {}", c.message);
    }
}

#[test]
fn an_active_active_group_rolls_highest_ordinal_first_without_a_switchover() {
    let g = bootstrapped(group(GroupMode::ActiveActive, 3));
    let mut v = view(3, 0, 0);
    v.primary = None;
    v.lease = LeaseView::None;
    for m in &mut v.members {
        m.role = MemberRole::Active;
    }
    let mut o = observed(pods(3), connected(v));
    let mut order = Vec::new();
    for _ in 0..4 {
        let busy = roll::Busy {
            action: None,
            draining: 0,
            restarting_for_new_ca: 0,
        };
        let r = roll::decide(&g, &o, (Some("new"), None), Ok(()), busy);
        assert_eq!(r.action, None);
        let Some(pod) = r.evict else { break };
        o.pods
            .iter_mut()
            .find(|p| p.name == pod)
            .expect("evicted pod")
            .template_hash = Some("new".into());
        order.push(pod);
    }
    assert_eq!(order, ["cache-2", "cache-1", "cache-0"]);
}

#[test]
fn a_group_of_one_restarts_its_member_without_a_switchover() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 1));
    let p = plan(&g, &routed_to(1, 0, 2), &settings());
    assert_eq!(p.evict.as_deref(), Some("cache-0"));
    assert_eq!(p.action, None);
}

#[test]
fn active_active_with_gateway_snapshot() {
    let mut g = bootstrapped(group(GroupMode::ActiveActive, 3));
    g.spec.traffic = serde_json::from_value(json!({
        "policy": "Static", "weights": {"cache-0": 60, "cache-1": 30, "cache-2": 10},
        "gateway": {"parentRefs": [{"name": "public-gw", "sectionName": "http"}], "hostnames": ["cache.example.com"]}
    }))
    .expect("traffic");
    let mut v = view(3, 0, 0);
    v.primary = None;
    v.lease = LeaseView::None;
    for m in &mut v.members {
        m.role = MemberRole::Active;
    }
    let p = plan(&g, &observed(pods(3), connected(v)), &settings());
    insta::assert_yaml_snapshot!("active_active_gateway", p);
}

#[test]
fn the_agent_is_injected_as_a_restricted_native_sidecar() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let p = plan(
        &g,
        &observed(pods(3), connected(view(3, 0, 1))),
        &settings(),
    );
    let sts = statefulset(&p, "cache").expect("member StatefulSet");
    let pod = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.automount_service_account_token, Some(false));
    let agent = &pod.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(agent.name, "quorate-agent");
    assert_eq!(agent.restart_policy.as_deref(), Some("Always"));
    let sc = agent.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let args = agent.args.as_ref().expect("args").join(" ");
    assert!(
        args.contains("--health-http=8080/healthz")
            && args.contains("--role-callback=http://127.0.0.1:8080/quorate/role"),
        "{args}"
    );
    let app = &pod.containers[0];
    assert!(
        app.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/run/quorate" && m.read_only == Some(true))
    );
    let spec = sts.spec.as_ref().expect("spec");
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(spec.service_name.as_deref(), Some("cache-peers"));
}

#[test]
fn the_agent_gets_the_declared_resources_or_the_defaults() {
    let agent_resources = |g: &ReplicaGroup| {
        let p = plan(g, &observed(pods(3), connected(view(3, 0, 1))), &settings());
        let sts = statefulset(&p, "cache").expect("member StatefulSet");
        let pod = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let agent = &pod.and_then(|p| p.init_containers.as_ref()).expect("init")[0];
        serde_json::to_value(&agent.resources).expect("json")
    };
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    assert_eq!(
        agent_resources(&g),
        serde_json::json!({"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
    );
    g.spec.agent.resources = Some(
        serde_json::from_value(serde_json::json!({"requests": {"cpu": "5m", "memory": "24Mi"}}))
            .expect("resources"),
    );
    assert_eq!(
        agent_resources(&g),
        serde_json::json!({"requests": {"cpu": "5m", "memory": "24Mi"}}),
        "replaced as a whole"
    );
}

#[test]
fn rw_routes_exactly_the_primary_while_its_lease_is_live() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let p = plan(
        &g,
        &observed(pods(3), connected(view(3, 2, 7))),
        &settings(),
    );
    assert_eq!(
        slice_ips(&p, "cache-rw"),
        Some(vec!["10.88.1.12".to_owned()])
    );
    let annotations = slice(&p, "cache-rw")
        .and_then(|s| s.metadata.annotations.clone())
        .expect("annotations");
    assert_eq!(
        annotations.get("quorate.dev/epoch").map(String::as_str),
        Some("7")
    );
    assert_eq!(
        slice_ips(&p, "cache-ro"),
        Some(vec!["10.88.1.10".to_owned(), "10.88.1.11".to_owned()])
    );

    for lease in [LeaseView::Expired, LeaseView::Released, LeaseView::None] {
        let mut v = view(3, 2, 7);
        v.lease = lease;
        let p = plan(&g, &observed(pods(3), connected(v)), &settings());
        assert_eq!(
            slice_ips(&p, "cache-rw"),
            Some(vec![]),
            "{lease:?}: no live lease, no writes"
        );
    }
    // A lease that ran out since the state arrived counts as expired.
    let p = plan(
        &g,
        &observed(
            pods(3),
            AgentsObserved::Connected {
                view: view(3, 2, 7),
                age_ms: 950,
            },
        ),
        &settings(),
    );
    assert_eq!(slice_ips(&p, "cache-rw"), Some(vec![]));
}

#[test]
fn routing_never_goes_back_to_an_older_epoch() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = observed(pods(3), connected(view(3, 0, 4)));
    o.routed_epoch = Some(5);
    o.routed_addresses = vec!["10.88.1.11".into()];
    let p = plan(&g, &o, &settings());
    assert!(
        slice(&p, "cache-rw").is_none(),
        "an older view must not rewrite -rw"
    );
    assert_eq!(p.status.routed_epoch, Some(5));
    assert_eq!(condition(&p, "RoutingConverged").status, "False");
}

#[test]
fn relayed_or_missing_state_leaves_routing_alone() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut relayed = view(3, 1, 4);
    relayed.from_coordinator = false;
    for agents in [AgentsObserved::Connecting, connected(relayed)] {
        let p = plan(&g, &observed(pods(3), agents.clone()), &settings());
        assert!(slice(&p, "cache-rw").is_none(), "{agents:?}");
    }
}

#[test]
fn a_relayed_view_keeps_the_primary_last_known_in_the_status() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let status = g.status.get_or_insert_with(Default::default);
    status.primary = Some("cache-1".into());
    status.epoch = Some(4);
    let mut relayed = view(3, 1, 4);
    relayed.from_coordinator = false;
    relayed.primary = None;
    relayed.lease = LeaseView::None;
    let p = plan(&g, &observed(pods(3), connected(relayed)), &settings());
    assert_eq!(p.status.primary.as_deref(), Some("cache-1"));
    // First-hand word that the lease ran out does clear it.
    let mut expired = view(3, 1, 4);
    expired.lease = LeaseView::Expired;
    let p = plan(&g, &observed(pods(3), connected(expired)), &settings());
    assert_eq!(p.status.primary, None);
}

#[test]
fn unreachable_agents_drain_routing_after_a_lease() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let recent = AgentsObserved::Unreachable {
        since_ms: NOW - 300,
        error: "connection refused".into(),
    };
    let p = plan(&g, &observed(pods(3), recent), &settings());
    assert!(slice(&p, "cache-rw").is_none());
    assert_eq!(p.requeue_ms, 700);
    let long = AgentsObserved::Unreachable {
        since_ms: NOW - 5_000,
        error: "connection refused".into(),
    };
    let p = plan(&g, &observed(pods(3), long), &settings());
    for s in ["cache-rw", "cache-ro", "cache-r"] {
        assert_eq!(
            slice_ips(&p, s),
            Some(vec![]),
            "{s}: no routing to members of unknown state"
        );
    }
    assert_eq!(condition(&p, "Degraded").reason, "AgentsUnreachable");
}

#[test]
fn bootstrap_waits_for_every_member_and_happens_once() {
    let g = group(GroupMode::PrimaryBackup, 3);
    let mut o = observed(pods(3), AgentsObserved::Connecting);
    o.probes = (0..2)
        .map(|i| {
            (
                format!("cache-{i}"),
                NodeProbe {
                    id: 10 + i,
                    initialized: false,
                },
            )
        })
        .collect();
    assert_eq!(
        plan(&g, &o, &settings()).action,
        None,
        "cache-2 has not answered yet"
    );
    o.probes.insert(
        "cache-2".into(),
        NodeProbe {
            id: 12,
            initialized: false,
        },
    );
    match plan(&g, &o, &settings()).action {
        Some(AgentAction::Bootstrap { via, members }) => {
            assert_eq!(via, "cache-0");
            assert_eq!(
                members.iter().map(|m| m.id).collect::<Vec<_>>(),
                vec![10, 11, 12]
            );
            assert_eq!(
                members[1].address,
                "cache-1.cache-peers.shop.svc.cluster.local:7470"
            );
        }
        other => panic!("expected a bootstrap, got {other:?}"),
    }
    // Initialized once: members that all come back empty are a problem for a human.
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut v = view(3, 0, 2);
    v.initialized = false;
    o.agents = connected(v);
    let p = plan(&g, &o, &settings());
    assert_eq!(p.action, None);
    assert_eq!(condition(&p, "Degraded").reason, "MembersLostData");
    assert_eq!(p.status.phase, Some(crate::api::GroupPhase::Failed));
}

#[test]
fn before_bootstrap_started_agents_are_polled_and_missing_pods_are_not() {
    let g = group(GroupMode::PrimaryBackup, 3);
    // No pods (a quota, Pod Security): the pod watch reconciles when one appears and the Event
    // watch when one is refused; a poll would cost a reconcile per group every few seconds
    // (1000 pod-less groups kept the operator at 18 % of a core).
    let mut none = observed(vec![], AgentsObserved::Connecting);
    assert_eq!(
        plan(&g, &none, &settings()).requeue_ms,
        crate::plan::RESYNC_MS
    );
    none.pods_rejected = Some("StatefulSet cache: forbidden".into());
    assert_eq!(
        plan(&g, &none, &settings()).requeue_ms,
        crate::plan::RESYNC_MS
    );
    // Pods whose agents have not started yet: the pod watch reconciles when they do.
    let mut starting = pods(3);
    starting.iter_mut().for_each(|p| p.agent_running = false);
    let starting = observed(starting, AgentsObserved::Connecting);
    assert_eq!(
        plan(&g, &starting, &settings()).requeue_ms,
        crate::plan::RESYNC_MS
    );
    // Started agents that have not answered a probe: asked again within a second.
    let running = observed(pods(3), AgentsObserved::Connecting);
    assert_eq!(plan(&g, &running, &settings()).requeue_ms, 1_000);
}

#[test]
fn two_replicas_get_a_witness() {
    let g = group(GroupMode::PrimaryBackup, 2);
    let mut o = observed(pods(2), AgentsObserved::Connecting);
    o.probes = BTreeMap::from([
        (
            "cache-0".into(),
            NodeProbe {
                id: 1,
                initialized: false,
            },
        ),
        (
            "cache-1".into(),
            NodeProbe {
                id: 2,
                initialized: false,
            },
        ),
        (
            "cache-witness-0".into(),
            NodeProbe {
                id: 3,
                initialized: false,
            },
        ),
    ]);
    let p = plan(&g, &o, &settings());
    let witness = statefulset(&p, "cache-witness").expect("witness StatefulSet");
    assert_eq!(witness.spec.as_ref().and_then(|s| s.replicas), Some(1));
    match p.action {
        Some(AgentAction::Bootstrap { members, .. }) => assert!(
            members
                .iter()
                .any(|m| m.witness && m.name == "cache-witness-0")
        ),
        other => panic!("expected a bootstrap with the witness, got {other:?}"),
    }
}

#[test]
fn scale_up_adds_members_one_at_a_time() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 5));
    g.spec.replicas = 5;
    let mut o = observed(pods(5), connected(view(3, 0, 2)));
    o.probes = BTreeMap::from([
        (
            "cache-3".into(),
            NodeProbe {
                id: 33,
                initialized: false,
            },
        ),
        (
            "cache-4".into(),
            NodeProbe {
                id: 44,
                initialized: false,
            },
        ),
    ]);
    let p = plan(&g, &o, &settings());
    assert_eq!(
        statefulset(&p, "cache")
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas),
        Some(5)
    );
    match p.action {
        Some(AgentAction::AddMember(m)) => {
            assert_eq!((m.id, m.name.as_str(), m.witness), (33, "cache-3", false))
        }
        other => panic!("expected AddMember(cache-3), got {other:?}"),
    }
}

#[test]
fn scale_down_moves_the_primary_first_and_keeps_pods_until_removed() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    // The primary is cache-4, which the scale-down removes: switch over first.
    let p = plan(
        &g,
        &observed(pods(5), connected(view(5, 4, 6))),
        &settings(),
    );
    assert_eq!(
        p.action,
        Some(AgentAction::Switchover {
            target: None,
            reason: "PrimaryRemoved".into()
        })
    );
    assert_eq!(
        statefulset(&p, "cache")
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas),
        Some(5)
    );
    // With the primary elsewhere, the highest extra member goes first; the StatefulSet keeps it.
    let p = plan(
        &g,
        &observed(pods(5), connected(view(5, 0, 7))),
        &settings(),
    );
    assert_eq!(
        p.action,
        Some(AgentAction::RemoveMember {
            id: 104,
            name: "cache-4".into(),
            reason: "scaled down".into()
        })
    );
    assert_eq!(
        statefulset(&p, "cache")
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas),
        Some(5)
    );
    let weights: BTreeMap<_, _> = p
        .status
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.weight))
        .collect();
    assert_eq!(
        weights.get("cache-3"),
        Some(&0),
        "members about to go are drained"
    );
    assert_eq!(weights.get("cache-4"), Some(&0));
    // Once both are out of the group, the StatefulSet shrinks.
    let p = plan(
        &g,
        &observed(pods(5), connected(view(3, 0, 7))),
        &settings(),
    );
    assert_eq!(
        statefulset(&p, "cache")
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas),
        Some(3)
    );
}

#[test]
fn a_member_that_lost_its_volume_is_removed_and_re_added() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = observed(pods(3), connected(view(3, 0, 2)));
    o.probes = BTreeMap::from([(
        "cache-2".into(),
        NodeProbe {
            id: 999,
            initialized: false,
        },
    )]);
    let p = plan(&g, &o, &settings());
    assert!(
        matches!(p.action, Some(AgentAction::RemoveMember { id: 102, .. })),
        "{:?}",
        p.action
    );
    // After removal the same pod is added with its new id.
    let mut v = view(3, 0, 2);
    v.members.retain(|m| m.name != "cache-2");
    o.agents = connected(v);
    let p = plan(&g, &o, &settings());
    assert!(
        matches!(p.action, Some(AgentAction::AddMember(ref m)) if m.id == 999),
        "{:?}",
        p.action
    );
}

#[test]
fn a_terminating_primary_hands_over_at_once() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut ps = pods(3);
    ps[1].terminating = true;
    let p = plan(&g, &observed(ps, connected(view(3, 1, 3))), &settings());
    assert_eq!(
        p.action,
        Some(AgentAction::Switchover {
            target: None,
            reason: "PrimaryPodTerminating".into()
        })
    );
    let weights: BTreeMap<_, _> = p
        .status
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.weight))
        .collect();
    assert_eq!(weights.get("cache-1"), Some(&0));
}

#[test]
fn a_paused_group_does_not_hand_over_from_a_terminating_primary() {
    // Pause freezes every automatic change of primary, the hand-off before a pod deletion too.
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut ps = pods(3);
    ps[1].terminating = true;
    let mut v = view(3, 1, 3);
    v.paused = true;
    g.spec.paused = true;
    assert_eq!(
        plan(&g, &observed(ps.clone(), connected(v.clone())), &settings()).action,
        None
    );
    // Paused in the group but not yet resumed by the operator: still no hand-off.
    g.spec.paused = false;
    let p = plan(&g, &observed(ps, connected(v)), &settings());
    assert_eq!(p.action, Some(AgentAction::Resume));
}

#[test]
fn switchover_requests_are_checked_and_handed_over_once() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    g.metadata.annotations = Some(BTreeMap::from([(
        "quorate.dev/switchover-to".into(),
        "cache-2".into(),
    )]));
    let p = plan(
        &g,
        &observed(pods(3), connected(view(3, 0, 3))),
        &settings(),
    );
    assert_eq!(
        p.action,
        Some(AgentAction::Switchover {
            target: Some("cache-2".into()),
            reason: "Requested".into()
        })
    );
    assert!(p.clear_switchover_request);
    g.metadata.annotations = Some(BTreeMap::from([(
        "quorate.dev/switchover-to".into(),
        "cache-7".into(),
    )]));
    let p = plan(
        &g,
        &observed(pods(3), connected(view(3, 0, 3))),
        &settings(),
    );
    assert_eq!(p.action, None);
    assert!(p.clear_switchover_request);
    assert!(
        p.events.iter().any(|e| e.warning
            && e.reason == "SwitchoverRejected"
            && e.note.contains("cache-1, cache-2")),
        "{:?}",
        p.events
    );
}

#[test]
fn pause_and_resume_follow_the_spec() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    g.spec.paused = true;
    assert_eq!(
        plan(
            &g,
            &observed(pods(3), connected(view(3, 0, 1))),
            &settings()
        )
        .action,
        Some(AgentAction::Pause)
    );
    g.spec.paused = false;
    let mut v = view(3, 0, 1);
    v.paused = true;
    assert_eq!(
        plan(&g, &observed(pods(3), connected(v)), &settings()).action,
        Some(AgentAction::Resume)
    );
}

#[test]
fn a_fenced_backup_is_fenced_drained_and_passed_over() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    g.spec.fenced_members = vec!["cache-2".into()];
    // Asked for: the group fences it; meanwhile it is already out of the read traffic.
    let p = plan(
        &g,
        &observed(pods(3), connected(view(3, 0, 1))),
        &settings(),
    );
    assert_eq!(
        p.action,
        Some(AgentAction::SetFenced {
            member: "cache-2".into(),
            fenced: true
        })
    );
    assert_eq!(slice_ips(&p, "cache-ro"), Some(vec!["10.88.1.11".into()]));
    // Fenced: nothing more to do, it keeps running, weight 0, out of -ro and -r; the status
    // says so.
    let mut v = view(3, 0, 1);
    v.members[2].fenced = true;
    let p = plan(&g, &observed(pods(3), connected(v.clone())), &settings());
    assert_eq!(p.action, None);
    assert_eq!(slice_ips(&p, "cache-ro"), Some(vec!["10.88.1.11".into()]));
    assert_eq!(
        slice_ips(&p, "cache-r"),
        Some(vec!["10.88.1.10".into(), "10.88.1.11".into()])
    );
    let m2 = p.status.members.iter().find(|m| m.name == "cache-2");
    assert!(
        m2.is_some_and(|m| m.fenced && m.healthy && m.weight == 0),
        "{m2:?}"
    );
    // A switchover to it is refused.
    let mut requested = g.clone();
    requested.metadata.annotations = Some(BTreeMap::from([(
        crate::cli::SWITCHOVER_ANNOTATION.to_owned(),
        "cache-2".to_owned(),
    )]));
    let p = plan(
        &requested,
        &observed(pods(3), connected(v.clone())),
        &settings(),
    );
    assert_eq!(p.action, None);
    assert!(
        p.events.iter().any(|e| e.reason == "SwitchoverRejected"),
        "{:?}",
        p.events
    );
    // Removed from the spec: unfenced.
    g.spec.fenced_members.clear();
    assert_eq!(
        plan(&g, &observed(pods(3), connected(v)), &settings()).action,
        Some(AgentAction::SetFenced {
            member: "cache-2".into(),
            fenced: false
        })
    );
}

#[test]
fn a_primary_to_fence_is_switched_away_first_and_the_last_candidate_is_not_fenced() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    g.spec.fenced_members = vec!["cache-0".into()];
    assert_eq!(
        plan(
            &g,
            &observed(pods(3), connected(view(3, 0, 1))),
            &settings()
        )
        .action,
        Some(AgentAction::Switchover {
            target: None,
            reason: "PrimaryFenced".into()
        })
    );
    // cache-1 is fenced and cache-2 unhealthy: fencing the primary would leave nobody.
    let mut v = view(3, 0, 1);
    v.members[1].fenced = true;
    v.members[2].healthy = false;
    g.spec.fenced_members = vec!["cache-0".into(), "cache-1".into()];
    let p = plan(&g, &observed(pods(3), connected(v.clone())), &settings());
    assert_eq!(p.action, None);
    let refused = p.events.iter().find(|e| e.reason == "FenceRefused");
    assert!(
        refused.is_some_and(|e| e.warning && e.note.contains("no healthy, unfenced member")),
        "{:?}",
        p.events
    );
    // Likewise a backup that is the only healthy member besides a fenced primary-to-be.
    let mut v = view(2, 0, 1);
    v.members[0].healthy = false;
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 2));
    g.spec.fenced_members = vec!["cache-1".into()];
    let p = plan(&g, &observed(pods(2), connected(v)), &settings());
    assert_eq!(p.action, None);
    assert!(
        p.events.iter().any(|e| e.reason == "FenceRefused"),
        "{:?}",
        p.events
    );
}

#[test]
fn an_invalid_template_is_reported_not_applied() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    if let Some(pod) = g.spec.template.spec.as_mut() {
        pod.containers[0].name = "quorate-agent".into();
    }
    let p = plan(
        &g,
        &observed(pods(3), connected(view(3, 0, 1))),
        &settings(),
    );
    assert!(statefulset(&p, "cache").is_none());
    assert_eq!(condition(&p, "Degraded").reason, "InvalidTemplate");
    assert!(condition(&p, "Degraded").message.contains("reserved"));
    assert!(
        p.events
            .iter()
            .any(|e| e.warning && e.reason == "InvalidTemplate")
    );
    assert_eq!(p.status.phase, Some(crate::api::GroupPhase::Failed));
}

#[test]
fn objects_under_the_groups_names_that_are_not_its_own_are_left_alone_and_reported() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = observed(pods(3), connected(view(3, 0, 1)));
    o.name_conflicts = vec![
        NameConflict {
            kind: "Service".into(),
            name: "cache-rw".into(),
            owner: "no owner".into(),
        },
        NameConflict {
            kind: "PodDisruptionBudget".into(),
            name: "cache".into(),
            owner: "owned by Deployment web".into(),
        },
    ];
    let p = plan(&g, &o, &settings());
    let planned: Vec<(&str, String)> = p.writes().into_iter().map(Desired::kind_and_name).collect();
    assert!(
        !planned.contains(&("Service", "cache-rw".into())),
        "{planned:?}"
    );
    assert!(!planned.contains(&("PodDisruptionBudget", "cache".into())));
    // Everything else is still written: the -rw EndpointSlice, the other Services, members.
    assert!(planned.contains(&("EndpointSlice", "cache-rw".into())));
    assert!(planned.contains(&("Service", "cache-ro".into())));
    assert!(statefulset(&p, "cache").is_some());
    let degraded = condition(&p, "Degraded");
    assert_eq!(degraded.reason, "NameConflict");
    assert_eq!(
        degraded.message,
        "Service cache-rw exists and is not this group's (no owner): the operator leaves it alone; \
         rename or delete it, or give the group another name (and 1 more object(s) under this \
         group's names)"
    );
    assert_eq!(condition(&p, "Ready").status, "False");
    assert_eq!(p.status.phase, Some(crate::api::GroupPhase::Failed));
    assert!(
        p.events
            .iter()
            .any(|e| e.warning && e.reason == "NameConflict")
    );

    // A conflict on an object the group would delete: not deleted either.
    let mut g1 = bootstrapped(group(GroupMode::ActiveActive, 1));
    g1.spec.witnesses = Some(0);
    let mut o1 = observed(pods(1), connected(view(1, 0, 0)));
    let p1 = plan(&g1, &o1, &settings());
    assert!(p1.delete.iter().any(|d| d.kind == "PodDisruptionBudget"));
    o1.name_conflicts = vec![NameConflict {
        kind: "PodDisruptionBudget".into(),
        name: "cache".into(),
        owner: "no owner".into(),
    }];
    let p1 = plan(&g1, &o1, &settings());
    assert!(!p1.delete.iter().any(|d| d.kind == "PodDisruptionBudget"));
}

#[test]
fn per_member_services_of_removed_members_are_deleted_and_no_others() {
    let g = bootstrapped(group(GroupMode::ActiveActive, 3));
    let mut o = observed(pods(3), connected(view(3, 0, 0)));
    o.services = [
        "cache-0",
        "cache-1",
        "cache-2",
        "cache-3",
        "cache-4",
        "cache-peers",
        "cache-r",
    ]
    .map(String::from)
    .to_vec();
    let p = plan(&g, &o, &settings());
    let services = |p: &Plan| -> Vec<String> {
        p.delete
            .iter()
            .filter(|d| d.kind == "Service")
            .map(|d| d.name.clone())
            .collect()
    };
    let planned: Vec<(&str, String)> = p.writes().into_iter().map(Desired::kind_and_name).collect();
    assert!(
        planned.contains(&("Service", "cache-2".into())),
        "{planned:?}"
    );
    assert_eq!(services(&p), ["cache-3", "cache-4"]);
    // No ports: no per-member Services at all, so every one left is deleted; the peers'
    // Service stays.
    let mut portless = g.clone();
    portless.spec.ports.clear();
    portless.spec.health = None;
    portless.spec.role_change = None;
    let p = plan(&portless, &o, &settings());
    assert_eq!(
        services(&p),
        ["cache-0", "cache-1", "cache-2", "cache-3", "cache-4"]
    );
}

#[test]
fn pods_the_api_server_refuses_are_reported_with_its_message() {
    let g = group(GroupMode::PrimaryBackup, 3);
    let mut o = observed(vec![], AgentsObserved::Connecting);
    o.pods_rejected = Some(
        "StatefulSet cache: create Pod cache-0 in StatefulSet cache failed error: pods \"cache-0\" is forbidden: violates PodSecurity \"restricted:latest\": privileged".into(),
    );
    let p = plan(&g, &o, &settings());
    let degraded = condition(&p, "Degraded");
    assert_eq!(degraded.reason, "PodsRejected");
    assert!(
        degraded.message.contains("violates PodSecurity"),
        "{}",
        degraded.message
    );
    assert!(
        p.events
            .iter()
            .any(|e| e.warning && e.reason == "PodsRejected" && e.note.contains("PodSecurity"))
    );
    // The StatefulSet is still applied: fixing the namespace's policy lets it create the pods.
    assert!(statefulset(&p, "cache").is_some());
}

#[test]
fn a_secret_under_the_groups_name_blocks_it_with_a_status_that_says_so() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let conflict = NameConflict {
        kind: "Secret".into(),
        name: "cache-ca".into(),
        owner: "no owner".into(),
    };
    let conflict = Blocked::NameConflict(conflict);
    let (status, events) = blocked(&g, &conflict, NOW);
    let find = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} condition"))
    };
    assert_eq!(find("Degraded").reason, "NameConflict");
    assert!(
        find("Degraded")
            .message
            .starts_with("Secret cache-ca exists")
    );
    assert_eq!(find("Ready").status, "False");
    assert_eq!(status.phase, Some(crate::api::GroupPhase::Failed));
    assert_eq!(events.len(), 1);
    assert!(events[0].warning && events[0].reason == "NameConflict");
    // Once reported, the same conflict is no news.
    g.status = Some(status.clone());
    let (again, events) = blocked(&g, &conflict, NOW + 1000);
    assert!(events.is_empty());
    assert_eq!(again, status);
}

#[test]
fn a_lost_ca_is_reported_while_the_group_is_still_routed() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = observed(pods(3), connected(view(3, 0, 4)));
    o.ca_lost = Some("Secret cache-ca (the group CA) is missing".into());
    let p = plan(&g, &o, &settings());
    let degraded = p
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("a Degraded condition");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "CaLost")
    );
    assert!(degraded.message.contains("cache-ca"));
    assert!(p.events.iter().any(|e| e.warning && e.reason == "CaLost"));
    // Routing and objects go on: the members run with what they have.
    assert!(statefulset(&p, "cache").is_some());
    assert!(p.requeue_ms <= SECRETS_POLL_MS);
    assert!(p.restart_for_new_ca.is_empty());
    // Once reported, no new Event.
    let mut again = g.clone();
    again.status = Some(p.status.clone());
    let p = plan(&again, &o, &settings());
    assert!(!p.events.iter().any(|e| e.reason == "CaLost"));
}

#[test]
fn a_lost_ca_with_nothing_read_before_blocks_the_group() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let why = Blocked::CaLost("Secret cache-ca (the group CA) is missing".into());
    let (status, events) = blocked(&g, &why, NOW);
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("a Degraded condition");
    assert_eq!(degraded.reason, "CaLost");
    assert_eq!(status.phase, Some(crate::api::GroupPhase::Failed));
    assert_eq!(events.len(), 1);
}

#[test]
fn objects_refused_as_invalid_are_reported_once_with_the_api_servers_message() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let p = plan(
        &g,
        &observed(pods(3), connected(view(3, 0, 4))),
        &settings(),
    );
    let refused = vec![
        RefusedWrite {
            kind: "StatefulSet".into(),
            name: "cache".into(),
            message: "StatefulSet.apps \"cache\" is invalid: spec.template.spec.containers[0].image: Required value".into(),
        },
        RefusedWrite {
            kind: "Service".into(),
            name: "cache-rw".into(),
            message: "invalid".into(),
        },
    ];
    let (status, events) = with_refused_writes(&g, p.status.clone(), &refused, NOW);
    let find = |s: &ReplicaGroupStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} condition"))
    };
    let degraded = find(&status, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded.message.contains("StatefulSet cache")
            && degraded
                .message
                .contains("containers[0].image: Required value")
            && degraded.message.contains("and 1 more"),
        "{}",
        degraded.message
    );
    assert_eq!(find(&status, "Ready").status, "False");
    assert_eq!(status.phase, Some(GroupPhase::Failed));
    // The rest of what the plan found stays.
    assert_eq!(status.primary, p.status.primary);
    assert_eq!(find(&status, "Quorum"), find(&p.status, "Quorum"));
    assert_eq!(events.len(), 1);
    assert!(events[0].warning && events[0].reason == "InvalidSpec");
    // Reported once; nothing refused leaves the plan's status as it was.
    g.status = Some(status.clone());
    let (again, events) = with_refused_writes(&g, p.status.clone(), &refused, NOW + 1000);
    assert!(events.is_empty());
    assert_eq!(again, status);
    let (untouched, events) = with_refused_writes(&g, p.status.clone(), &[], NOW);
    assert!(events.is_empty());
    assert_eq!(untouched, p.status);
}

#[test]
fn pods_that_trust_a_replaced_ca_restart_together() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut ps = pods(3);
    ps[0].ca_hash = Some("ca-0".into());
    ps[1].ca_hash = Some("ca-0".into());
    ps[1].terminating = true;
    // A pod of an earlier version says nothing of its CA: left to the roll.
    ps[2].ca_hash = None;
    let mut o = observed(ps.clone(), connected(view(3, 0, 4)));
    let p = plan(&g, &o, &settings());
    assert_eq!(p.restart_for_new_ca, ["cache-0"]);
    assert!(
        p.done_events
            .iter()
            .any(|e| e.reason == "CaReplaced" && e.note.contains("cache-0"))
    );
    // The template carries the CA its pods will trust.
    let sts = statefulset(&p, "cache").expect("member StatefulSet");
    let annotations = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations.get("quorate.dev/ca-hash").map(String::as_str),
        Some("ca-1")
    );
    // Pods that trust the current CA stay; nothing restarts while the CA is lost.
    ps[0].ca_hash = Some("ca-1".into());
    o.pods = ps;
    assert!(plan(&g, &o, &settings()).restart_for_new_ca.is_empty());
    o.pods[0].ca_hash = Some("ca-0".into());
    o.ca_lost = Some("lost".into());
    assert!(plan(&g, &o, &settings()).restart_for_new_ca.is_empty());
}

#[test]
fn members_and_witnesses_prefer_different_nodes_unless_the_template_says_otherwise() {
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, PodAntiAffinity};
    let anti = |p: &Plan, name: &str| {
        statefulset(p, name)
            .and_then(|s| s.spec.as_ref()?.template.spec.as_ref()?.affinity.clone())
            .unwrap_or_default()
    };
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 2));
    g.spec.witnesses = Some(1);
    // A node affinity of the user's stays, next to the spread.
    if let Some(pod) = g.spec.template.spec.as_mut() {
        pod.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity::default()),
            ..Default::default()
        });
    }
    let o = observed(pods(2), connected(view(2, 0, 1)));
    let p = plan(&g, &o, &settings());
    // One selector for members and witnesses alike: no member shares a node with a witness.
    let group_labels = Some(std::collections::BTreeMap::from([(
        crate::api::names::GROUP_LABEL.to_owned(),
        "cache".to_owned(),
    )]));
    for set in ["cache", "cache-witness"] {
        let a = anti(&p, set);
        let terms = a
            .pod_anti_affinity
            .and_then(|p| p.preferred_during_scheduling_ignored_during_execution)
            .unwrap_or_default();
        assert_eq!(terms.len(), 1, "{set}");
        let term = &terms[0].pod_affinity_term;
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            term.label_selector
                .as_ref()
                .and_then(|l| l.match_labels.clone()),
            group_labels,
            "{set}"
        );
    }
    assert!(anti(&p, "cache").node_affinity.is_some());
    // And the spread that is not only preferred: at most one more on any node than on another.
    for set in ["cache", "cache-witness"] {
        let spread = statefulset(&p, set)
            .and_then(|s| {
                s.spec
                    .as_ref()?
                    .template
                    .spec
                    .as_ref()?
                    .topology_spread_constraints
                    .clone()
            })
            .unwrap_or_default();
        assert_eq!(spread.len(), 1, "{set}");
        let c = &spread[0];
        assert_eq!(
            (
                c.max_skew,
                c.topology_key.as_str(),
                c.when_unsatisfiable.as_str(),
                c.node_taints_policy.as_deref()
            ),
            (1, "kubernetes.io/hostname", "DoNotSchedule", Some("Honor")),
            "{set}"
        );
        assert_eq!(
            c.label_selector
                .as_ref()
                .and_then(|l| l.match_labels.clone()),
            group_labels,
            "{set}"
        );
    }

    // The user's own anti-affinity (say, required, across zones) replaces the default.
    let mut g = g.clone();
    let theirs = PodAntiAffinity::default();
    if let Some(pod) = g.spec.template.spec.as_mut() {
        pod.affinity = Some(Affinity {
            pod_anti_affinity: Some(theirs.clone()),
            ..Default::default()
        });
    }
    let p = plan(&g, &o, &settings());
    assert_eq!(anti(&p, "cache").pod_anti_affinity, Some(theirs));
    // So do topology spread constraints.
    if let Some(pod) = g.spec.template.spec.as_mut() {
        pod.affinity = None;
        pod.topology_spread_constraints = Some(vec![Default::default()]);
    }
    let p = plan(&g, &o, &settings());
    assert_eq!(anti(&p, "cache").pod_anti_affinity, None);
}

#[test]
fn the_disruption_budget_keeps_a_majority() {
    // One voter: no budget (it would block every drain), and an earlier one is deleted.
    let p = plan(
        &group(GroupMode::PrimaryBackup, 1),
        &observed(vec![], AgentsObserved::Connecting),
        &settings(),
    );
    assert!(
        !p.apply
            .iter()
            .any(|d| matches!(d, Desired::PodDisruptionBudget(_)))
    );
    assert!(
        p.delete
            .iter()
            .any(|o| o.kind == "PodDisruptionBudget" && o.name == "cache")
    );
    for (replicas, witnesses, min) in [
        (3, None, 2),
        (2, None, 2),
        (5, None, 3),
        (4, Some(1), 3),
        (1, Some(1), 2),
    ] {
        let mut g = group(GroupMode::PrimaryBackup, replicas);
        g.spec.witnesses = witnesses;
        let p = plan(
            &g,
            &observed(vec![], AgentsObserved::Connecting),
            &settings(),
        );
        let pdb = p
            .apply
            .iter()
            .find_map(|d| match d {
                Desired::PodDisruptionBudget(p) => Some(p),
                _ => None,
            })
            .expect("PDB");
        let got = pdb.spec.as_ref().and_then(|s| s.min_available.clone());
        assert_eq!(
            got,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(min)),
            "{replicas}+{witnesses:?}"
        );
    }
}

#[test]
fn ready_needs_quorum_routing_and_healthy_members() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = observed(pods(3), connected(view(3, 1, 4)));
    o.routed_epoch = Some(4);
    o.routed_addresses = vec!["10.88.1.11".into()];
    o.ro_addresses = vec!["10.88.1.10".into(), "10.88.1.12".into()];
    o.r_addresses = vec![
        "10.88.1.10".into(),
        "10.88.1.11".into(),
        "10.88.1.12".into(),
    ];
    let p = plan(&g, &o, &settings());
    assert_eq!(
        condition(&p, "Ready").status,
        "True",
        "{:?}",
        p.status.conditions
    );
    assert_eq!(p.status.primary.as_deref(), Some("cache-1"));
    assert_eq!(
        p.status
            .members
            .iter()
            .find(|m| m.name == "cache-1")
            .map(|m| m.role),
        Some(MemberRole::Primary)
    );
    // Applied routing that differs from the decision is not converged (read-back).
    o.routed_addresses = vec!["10.88.1.10".into()];
    let p = plan(&g, &o, &settings());
    assert_eq!(condition(&p, "RoutingConverged").status, "False");
    assert_eq!(condition(&p, "Ready").status, "False");
}

#[test]
fn a_member_whose_pod_is_going_away_is_not_ready() {
    // Its agent may still report healthy while it shuts down; the group is not whole until the
    // pod is back.
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = observed(pods(3), connected(view(3, 1, 4)));
    o.routed_epoch = Some(4);
    o.routed_addresses = vec!["10.88.1.11".into()];
    o.pods[2].terminating = true;
    let p = plan(&g, &o, &settings());
    assert_eq!(p.status.ready_replicas, 2);
    assert_eq!(
        p.status
            .members
            .iter()
            .find(|m| m.name == "cache-2")
            .map(|m| m.healthy),
        Some(false)
    );
    assert_eq!(
        condition(&p, "Ready").status,
        "False",
        "{:?}",
        p.status.conditions
    );
    o.pods.remove(2);
    let p = plan(&g, &o, &settings());
    assert_eq!(p.status.ready_replicas, 2);
    assert_eq!(
        condition(&p, "Ready").status,
        "False",
        "{:?}",
        p.status.conditions
    );
}

/// A group at epoch 5 whose primary cache-2 replaced cache-0 after a lease expiry.
fn after_a_failover() -> GroupView {
    let mut v = view(3, 2, 5);
    v.failovers = vec![FailoverView {
        from: Some("cache-0".into()),
        to: "cache-2".into(),
        epoch: 5,
        reason: "LeaseExpired".into(),
        detected_at_ms: NOW - 400,
        appointed_at_ms: NOW - 100,
    }];
    v
}

#[test]
fn failovers_are_recorded_with_their_routing_time() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let mut o = observed(pods(3), connected(after_a_failover()));
    o.now_ms = NOW + 250;
    let p = plan(&g, &o, &settings());
    let f = p.status.last_failover.clone().expect("last failover");
    assert_eq!(f.duration_millis, Some(650));
    assert_eq!(f.to.as_deref(), Some("cache-2"));
    assert!(p.events.iter().any(|e| e.warning && e.reason == "Failover"));
    assert!(
        p.events
            .iter()
            .any(|e| e.reason == "RoutingChanged" && e.note.contains("cache-2"))
    );

    // The stored status has whole seconds only; the next reconcile keeps the measured duration.
    let mut g = g;
    g.status = Some(
        serde_json::from_value(serde_json::to_value(&p.status).expect("status to JSON"))
            .expect("status from JSON"),
    );
    let mut o = observed(pods(3), connected(after_a_failover()));
    o.now_ms = NOW + 5_300;
    o.routed_epoch = Some(5);
    let again = plan(&g, &o, &settings())
        .status
        .last_failover
        .expect("last failover");
    assert_eq!(again.duration_millis, Some(650));
}

// --- status, stage by stage ------------------------------------------------------------------

/// What `plan` decides before the status, owned, so that a test can change one input and
/// call one stage.
struct Decided {
    group: ReplicaGroup,
    names: GroupNames,
    observed: Observed,
    previous: ReplicaGroupStatus,
    lifecycle: lifecycle::Lifecycle,
    traffic: routing::TrafficPlan,
    template_problem: Option<String>,
}

impl Decided {
    fn new(group: ReplicaGroup, observed: Observed) -> Self {
        let names = GroupNames::new("cache", "shop");
        let previous = group.status.clone().unwrap_or_default();
        let lifecycle = lifecycle::decide(&group, &names, &observed, &previous);
        let traffic = routing::decide_traffic(
            &group,
            &names,
            &observed,
            &previous,
            &lifecycle.draining,
            lifecycle.member_replicas,
        );
        let template_problem = members::template_problem(&group.spec);
        Decided {
            group,
            names,
            observed,
            previous,
            lifecycle,
            traffic,
            template_problem,
        }
    }

    fn inputs(&self) -> status::StatusInputs<'_> {
        status::StatusInputs {
            group: &self.group,
            names: &self.names,
            observed: &self.observed,
            previous: &self.previous,
            lifecycle: &self.lifecycle,
            traffic: &self.traffic,
            template_problem: self.template_problem.as_deref(),
        }
    }

    fn conditions(&self) -> Vec<Condition> {
        status::conditions(&self.inputs(), &status::member_statuses(&self.inputs()))
    }
}

/// The ready PrimaryBackup group of `ready_needs_quorum_routing_and_healthy_members`.
fn routed_to_cache_1() -> Observed {
    let mut o = observed(pods(3), connected(view(3, 1, 4)));
    o.routed_epoch = Some(4);
    o.routed_addresses = vec!["10.88.1.11".into()];
    o.ro_addresses = vec!["10.88.1.10".into(), "10.88.1.12".into()];
    o.r_addresses = vec![
        "10.88.1.10".into(),
        "10.88.1.11".into(),
        "10.88.1.12".into(),
    ];
    o
}

fn at(ms: i64) -> Time {
    Time(jiff::Timestamp::from_millisecond(ms).expect("time"))
}

fn cond(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: at(NOW),
        observed_generation: Some(3),
    }
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

#[test]
fn member_statuses_show_every_member_and_the_primary_lease() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 2));
    let d = Decided::new(g.clone(), observed(pods(2), connected(view(2, 0, 3))));
    let rows: Vec<_> = status::member_statuses(&d.inputs())
        .into_iter()
        .map(|m| (m.name, m.role, m.id, m.lease, m.healthy))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "cache-0".to_owned(),
                MemberRole::Primary,
                Some(100),
                Some("Live".to_owned()),
                true
            ),
            (
                "cache-1".to_owned(),
                MemberRole::Backup,
                Some(101),
                None,
                true
            ),
            // The witness has no pod and is not in the group yet: listed all the same.
            (
                "cache-witness-0".to_owned(),
                MemberRole::Witness,
                None,
                None,
                false
            ),
        ]
    );
    let mut v = view(2, 0, 3);
    v.members.retain(|m| m.name != "cache-1");
    let d = Decided::new(g.clone(), observed(pods(2), connected(v)));
    let cache_1 = status::member_statuses(&d.inputs())
        .into_iter()
        .find(|m| m.name == "cache-1")
        .expect("cache-1");
    assert_eq!(
        (cache_1.role, cache_1.id, cache_1.healthy),
        (MemberRole::Unknown, None, false)
    );

    // The lease as of now: one that ran out since the state arrived is Expired.
    let lease = |agents| {
        status::member_statuses(&Decided::new(g.clone(), observed(pods(2), agents)).inputs())[0]
            .lease
            .clone()
    };
    assert_eq!(
        lease(AgentsObserved::Connected {
            view: view(2, 0, 3),
            age_ms: 950
        })
        .as_deref(),
        Some("Expired")
    );
    let mut released = view(2, 0, 3);
    released.lease = LeaseView::Released;
    assert_eq!(lease(connected(released)).as_deref(), Some("Released"));
}

#[test]
fn the_failover_record_keeps_the_duration_it_measured() {
    let mut d = Decided::new(
        bootstrapped(group(GroupMode::PrimaryBackup, 3)),
        observed(pods(3), connected(after_a_failover())),
    );
    let v = after_a_failover();
    let first =
        status::last_failover(Some(&v), &d.previous, &d.traffic, NOW + 250).expect("record");
    assert_eq!(
        (first.routed_at.clone(), first.duration_millis),
        (Some(at(NOW + 250)), Some(650))
    );
    assert_eq!(
        (first.epoch, first.to.as_deref(), first.reason.as_deref()),
        (Some(5), Some("cache-2"), Some("LeaseExpired"))
    );

    // Later reconciles keep the figures of the one that routed it, whatever the clock says now.
    d.previous.last_failover = Some(first.clone());
    assert_eq!(
        status::last_failover(Some(&v), &d.previous, &d.traffic, NOW + 60_000).as_ref(),
        Some(&first)
    );
    // Without the group's state the record stays as it was.
    assert_eq!(
        status::last_failover(None, &d.previous, &d.traffic, NOW + 60_000).as_ref(),
        Some(&first)
    );

    // A newer change of primary starts a new record: nothing is carried over from the old one.
    let mut newer = after_a_failover();
    newer.failovers[0].epoch = 6;
    let mut traffic = d.traffic.clone();
    traffic.rw_epoch = Some(6);
    let next =
        status::last_failover(Some(&newer), &d.previous, &traffic, NOW + 100).expect("record");
    assert_eq!((next.epoch, next.duration_millis), (Some(6), Some(500)));
}

#[test]
fn a_failover_is_timed_when_routing_follows_it() {
    let d = Decided::new(
        bootstrapped(group(GroupMode::PrimaryBackup, 3)),
        observed(pods(3), connected(after_a_failover())),
    );
    let v = after_a_failover();
    // -rw still routes the old primary, or an older epoch: not routed yet.
    let mut traffic = d.traffic.clone();
    traffic.routed_primary = Some("cache-0".into());
    let pending =
        status::last_failover(Some(&v), &d.previous, &traffic, NOW + 250).expect("record");
    assert_eq!(
        (pending.routed_at.clone(), pending.duration_millis),
        (None, None)
    );
    traffic.routed_primary = Some("cache-2".into());
    traffic.rw_epoch = Some(4);
    assert_eq!(
        status::last_failover(Some(&v), &d.previous, &traffic, NOW + 250)
            .and_then(|f| f.duration_millis),
        None
    );

    // The stored, not yet routed record is timed by the reconcile that routes it.
    let mut previous = d.previous.clone();
    previous.last_failover = Some(pending);
    let routed = status::last_failover(Some(&v), &previous, &d.traffic, NOW + 900).expect("record");
    assert_eq!(
        (routed.routed_at, routed.duration_millis),
        (Some(at(NOW + 900)), Some(1300))
    );
    // A clock behind the detection time gives no negative duration.
    assert_eq!(
        status::last_failover(Some(&v), &d.previous, &d.traffic, NOW - 1_000)
            .and_then(|f| f.duration_millis),
        Some(0)
    );
}

#[test]
fn condition_times_move_only_when_their_status_does() {
    let first = Decided::new(
        bootstrapped(group(GroupMode::PrimaryBackup, 3)),
        routed_to_cache_1(),
    )
    .conditions();
    assert_eq!(find(&first, "Ready").status, "True", "{first:?}");
    // A minute later the applied -rw no longer matches: RoutingConverged and Ready flip.
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    g.status.get_or_insert_with(Default::default).conditions = first.clone();
    let mut o = routed_to_cache_1();
    o.now_ms = NOW + 60_000;
    o.routed_addresses = vec!["10.88.1.10".into()];
    let second = Decided::new(g, o).conditions();
    for (type_, status, since) in [
        ("Quorum", "True", at(NOW)),
        ("Available", "True", at(NOW)),
        ("RoutingConverged", "False", at(NOW + 60_000)),
        ("Degraded", "False", at(NOW)),
        ("Ready", "False", at(NOW + 60_000)),
    ] {
        let c = find(&second, type_);
        assert_eq!(
            (c.status.as_str(), &c.last_transition_time),
            (status, &since),
            "{type_}"
        );
    }
}

#[test]
fn not_ready_names_what_it_waits_for() {
    let d = Decided::new(
        bootstrapped(group(GroupMode::PrimaryBackup, 3)),
        observed(pods(3), AgentsObserved::Connecting),
    );
    let conditions = d.conditions();
    assert_eq!(find(&conditions, "Quorum").status, "Unknown");
    let ready = find(&conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.message.as_str()),
        (
            "False",
            "waiting for: Connecting, NoPrimary, Pending, MembersUnhealthy"
        )
    );
}

#[test]
fn degraded_reports_the_most_pressing_problem() {
    let mut v = view(3, 1, 4);
    v.flap_guard_tripped = true;
    let mut o = observed(pods(3), connected(v));
    o.pods[2].terminating = true;
    let mut d = Decided::new(bootstrapped(group(GroupMode::PrimaryBackup, 3)), o);
    let reason = |d: &Decided| find(&d.conditions(), "Degraded").reason.clone();
    d.template_problem = Some("spec.template: reserved".into());
    d.lifecycle.problem = Some(("MembersLostData".into(), "restore the volumes".into()));
    assert_eq!(reason(&d), "InvalidTemplate");
    d.template_problem = None;
    assert_eq!(reason(&d), "MembersLostData");
    d.lifecycle.problem = None;
    assert_eq!(reason(&d), "FlapGuard");
    if let AgentsObserved::Connected { view, .. } = &mut d.observed.agents {
        view.flap_guard_tripped = false;
    }
    assert_eq!(reason(&d), "MembersUnhealthy");
    d.observed.pods[2].terminating = false;
    assert_eq!(reason(&d), "AsExpected");
}

#[test]
fn a_problem_is_news_once_and_unhealthy_members_are_not() {
    let mut d = Decided::new(
        bootstrapped(group(GroupMode::PrimaryBackup, 3)),
        routed_to_cache_1(),
    );
    let warnings = |d: &Decided, conditions: &[Condition]| {
        status::events(&d.inputs(), conditions)
            .into_iter()
            .filter(|e| e.warning)
            .collect::<Vec<_>>()
    };
    let flap = [Condition {
        message: "automatic failover is stopped".into(),
        ..cond("Degraded", "True", "FlapGuard")
    }];
    assert_eq!(
        warnings(&d, &flap),
        vec![PlannedEvent {
            warning: true,
            reason: "FlapGuard".into(),
            note: "automatic failover is stopped".into()
        }]
    );
    d.previous.conditions = flap.to_vec();
    assert_eq!(warnings(&d, &flap), vec![], "the same problem again");
    assert_eq!(
        warnings(&d, &[cond("Degraded", "True", "GatewayNotReady")]).len(),
        1,
        "a different problem"
    );
    assert_eq!(
        warnings(&d, &[cond("Degraded", "True", "MembersUnhealthy")]),
        vec![]
    );
}

#[test]
fn the_phase_follows_the_conditions() {
    let mut d = Decided::new(
        bootstrapped(group(GroupMode::PrimaryBackup, 3)),
        routed_to_cache_1(),
    );
    let phase = |d: &Decided, quorum: (&str, &str), ready: &str| {
        status::phase(
            &d.inputs(),
            &[cond("Quorum", quorum.0, quorum.1), cond("Ready", ready, "")],
        )
    };
    assert_eq!(
        phase(&d, ("True", "CoordinatorElected"), "True"),
        GroupPhase::Ready
    );
    assert_eq!(
        phase(&d, ("True", "CoordinatorElected"), "False"),
        GroupPhase::Degraded
    );
    assert_eq!(
        phase(&d, ("False", "NoCoordinator"), "False"),
        GroupPhase::Failed
    );
    assert_eq!(
        phase(&d, ("False", "AgentsUnreachable"), "False"),
        GroupPhase::Failed
    );
    // Not knowing yet (the state stream is being set up, e.g. after an operator restart) is not a failure.
    assert_eq!(
        phase(&d, ("Unknown", "Connecting"), "False"),
        GroupPhase::Degraded
    );

    // A problem the group cannot leave on its own is Failed, whatever the conditions say.
    d.lifecycle.problem = Some(("MembersLostData".into(), "restore the volumes".into()));
    assert_eq!(
        phase(&d, ("True", "CoordinatorElected"), "True"),
        GroupPhase::Failed
    );
    d.lifecycle.problem = None;
    d.template_problem = Some("spec.template: reserved".into());
    assert_eq!(
        phase(&d, ("True", "CoordinatorElected"), "True"),
        GroupPhase::Failed
    );
    d.template_problem = None;

    // Before the bootstrap: Pending until there are pods, then Bootstrapping.
    d.lifecycle.bootstrapped = false;
    assert_eq!(
        phase(&d, ("Unknown", "Connecting"), "False"),
        GroupPhase::Bootstrapping
    );
    d.observed.pods.clear();
    assert_eq!(
        phase(&d, ("Unknown", "Connecting"), "False"),
        GroupPhase::Pending
    );
}

fn arb_lease() -> impl Strategy<Value = LeaseView> {
    prop_oneof![
        Just(LeaseView::None),
        Just(LeaseView::Live),
        Just(LeaseView::Expired),
        Just(LeaseView::Released)
    ]
}

proptest! {
    /// Whatever the agents report, -rw holds at most the reported primary, only with a live
    /// first-hand lease, and the routed epoch never decreases.
    #[test]
    fn rw_is_safe(
        epoch in 0u64..20, floor in proptest::option::of(0u64..20), primary in 0u32..3,
        lease in arb_lease(), remaining in 0u64..2000, age in 0u64..2000, from_coordinator: bool,
    ) {
        let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
        let mut v = view(3, primary, epoch);
        v.lease = lease;
        v.lease_remaining_ms = remaining;
        v.from_coordinator = from_coordinator;
        let mut o = observed(pods(3), AgentsObserved::Connected { view: v, age_ms: age });
        o.routed_epoch = floor;
        let p = plan(&g, &o, &settings());
        if let Some(ips) = slice_ips(&p, "cache-rw") {
            prop_assert!(ips.len() <= 1);
            if let Some(ip) = ips.first() {
                prop_assert_eq!(ip.clone(), format!("10.88.1.{}", primary + 10));
                prop_assert!(lease == LeaseView::Live && from_coordinator && age < remaining);
                prop_assert!(floor.is_none_or(|f| epoch >= f));
            }
        }
        let routed = p.status.routed_epoch.map(|e| e as u64);
        prop_assert!(floor.is_none_or(|f| f == 0 || routed >= Some(f)), "routed {:?} < floor {:?}", routed, floor);
    }
}

#[test]
fn failover_spec_defaults_are_the_documented_ones() {
    let f = FailoverSpec::default();
    assert_eq!((f.lease_millis, f.max_failovers_per_hour), (1000, 6));
}

#[test]
fn writes_go_routing_switch_first_and_members_last() {
    let mut g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    g.spec.traffic.gateway =
        serde_json::from_value(json!({"parentRefs": [{"name": "web"}]})).expect("gateway");
    let plan = plan(
        &g,
        &observed(pods(3), connected(view(3, 0, 1))),
        &settings(),
    );
    let kinds: Vec<String> = plan
        .writes()
        .iter()
        .map(|d| match d {
            Desired::EndpointSlice(s) => format!(
                "EndpointSlice {}",
                s.metadata.name.as_deref().unwrap_or_default()
            ),
            Desired::Service(_) => "Service".into(),
            Desired::HttpRoute(_) => "HTTPRoute".into(),
            Desired::PodDisruptionBudget(_) => "PodDisruptionBudget".into(),
            Desired::NetworkPolicy(_) => "NetworkPolicy".into(),
            Desired::StatefulSet(_) => "StatefulSet".into(),
        })
        .collect();
    let mut expected = kinds.clone();
    expected.dedup();
    assert_eq!(
        expected,
        [
            "EndpointSlice cache-rw",
            "EndpointSlice cache-ro",
            "EndpointSlice cache-r",
            "Service",
            "HTTPRoute",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "StatefulSet"
        ],
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "EndpointSlice cache-rw")
            .count(),
        1,
        "the switch is one write"
    );
    assert_eq!(plan.writes().len(), plan.apply.len());
}

fn outcome(hook: crate::api::HookKind, epoch: u64, ok: bool) -> HookOutcome {
    HookOutcome {
        hook,
        epoch,
        ok,
        exit_code: if ok { Some(0) } else { Some(1) },
        duration_millis: 40,
        message: if ok {
            String::new()
        } else {
            "exited with code 1".into()
        },
        output: String::new(),
    }
}

fn with_hooks(mut g: ReplicaGroup) -> ReplicaGroup {
    g.spec.hooks = Some(
        serde_json::from_value(json!({
            "promote": {"command": ["/hooks/promote"]},
            "position": {"command": ["/hooks/position"]},
        }))
        .expect("hooks"),
    );
    g
}

fn member_status<'a>(p: &'a Plan, name: &str) -> &'a crate::api::MemberStatus {
    p.status
        .members
        .iter()
        .find(|m| m.name == name)
        .expect("member in the status")
}

fn hook_failed(p: &Plan) -> Vec<&str> {
    p.events
        .iter()
        .filter(|e| e.reason == "HookFailed")
        .map(|e| e.note.as_str())
        .collect()
}

#[test]
fn member_statuses_show_the_workload_message_position_and_hooks() {
    use crate::api::HookKind::*;
    let g = with_hooks(bootstrapped(group(GroupMode::PrimaryBackup, 3)));
    let mut v = view(3, 1, 4);
    for m in &mut v.members {
        m.position = Some(1000 + m.id);
        m.hooks = vec![outcome(Health, 4, true), outcome(Position, 4, true)];
    }
    v.members[1].hooks.push(outcome(Promote, 4, true));
    let c2 = &mut v.members[2];
    c2.healthy = false;
    c2.message = "the position hook must print one non-negative integer; it printed \"abc\"".into();
    let mut failed = outcome(Position, 4, false);
    // Newest first: only the latest run of a hook is shown.
    failed.output = format!("{}\nposition: é{}", "x".repeat(300), "z".repeat(255));
    c2.hooks = vec![failed, outcome(Position, 3, true), outcome(Health, 4, true)];
    let p = plan(&g, &observed(pods(3), connected(v)), &settings());

    let healthy = member_status(&p, "cache-0");
    assert_eq!((healthy.position, healthy.message.as_deref()), (None, None));
    let primary = member_status(&p, "cache-1");
    let shown: Vec<_> = primary
        .hooks
        .iter()
        .map(|h| (h.hook, h.ok, h.duration_millis))
        .collect();
    assert_eq!(
        shown,
        [
            (Promote, true, Some(40)),
            (Position, true, None),
            (Health, true, None)
        ],
        "in a fixed order; a duration only for the hooks that run once per epoch"
    );
    let c2 = member_status(&p, "cache-2");
    assert_eq!(
        c2.position,
        Some(1102),
        "shown next to why it is not a candidate"
    );
    assert!(c2.message.as_deref().is_some_and(|m| m.contains("\"abc\"")));
    assert_eq!(c2.hooks.len(), 2, "{:?}", c2.hooks);
    let position = &c2.hooks[0];
    assert_eq!(
        (
            position.hook,
            position.epoch,
            position.ok,
            position.exit_code
        ),
        (Position, 4, false, Some(1))
    );
    assert_eq!(position.message.as_deref(), Some("exited with code 1"));
    let output = position.output.as_deref().expect("the failure's output");
    // The last 256 bytes would start inside `é`: cut after it.
    assert_eq!(output, "z".repeat(255));
    assert!(c2.hooks[1].output.is_none(), "no output of a success");

    // Without a position hook, no position.
    let mut g = g;
    g.spec.hooks.as_mut().expect("hooks").position = None;
    let mut v = view(3, 1, 4);
    v.members[2].healthy = false;
    v.members[2].position = Some(7);
    let p = plan(&g, &observed(pods(3), connected(v)), &settings());
    assert_eq!(member_status(&p, "cache-2").position, None);
}

#[test]
fn hooks_that_keep_succeeding_do_not_change_the_status() {
    use crate::api::HookKind::*;
    let g = with_hooks(bootstrapped(group(GroupMode::PrimaryBackup, 3)));
    let o = |run: u64| {
        let mut v = view(3, 1, 4);
        for m in &mut v.members {
            // Positions move with every write, health and position runs take their time.
            m.position = Some(5000 + 17 * run + m.id);
            let mut health = outcome(Health, 4, true);
            health.duration_millis = 3 + run;
            let mut position = outcome(Position, 4, true);
            position.duration_millis = 9 + 2 * run;
            m.hooks = vec![position, health, outcome(Join, 0, true)];
        }
        routed(observed(pods(3), connected(v)))
    };
    let first = plan(&g, &o(1), &settings());
    let mut g = g;
    g.status = Some(first.status.clone());
    let second = plan(&g, &o(2), &settings());
    assert_eq!(second.status, first.status);
    assert_eq!(hook_failed(&second), Vec::<&str>::new());
}

fn routed(mut o: Observed) -> Observed {
    route(&mut o, 3, 1, 4);
    o
}

#[test]
fn a_hook_failure_is_news_once() {
    use crate::api::HookKind::*;
    let g = with_hooks(bootstrapped(group(GroupMode::PrimaryBackup, 3)));
    let failing = |epoch: u64, output: &str| {
        let mut v = view(3, 1, epoch);
        let mut promote = outcome(Promote, epoch, false);
        promote.output = output.into();
        v.members[0].hooks = vec![promote, outcome(Health, epoch, true)];
        v.members[0].message =
            format!("the promote hook failed for epoch {epoch}; not a candidate for 9 s");
        let mut health = outcome(Health, epoch, false);
        health.exit_code = None;
        health.message = "timed out after 500 ms and was killed".into();
        v.members[2].hooks = vec![health];
        v.members[2].healthy = false;
        v.members[2].message = "the workload's health check fails".into();
        routed(observed(pods(3), connected(v)))
    };
    let output = format!(
        "{}\nERR unknown command 'REPLICAOF'\n\nredis-cli: exiting\n",
        "connecting ".repeat(30)
    );
    let p = plan(&g, &failing(4, &output), &settings());
    let notes = hook_failed(&p);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0].starts_with("cache-0: promote hook failed for epoch 4: exited with code 1: "),
        "{}",
        notes[0]
    );
    assert!(
        notes[0].ends_with("connecting | ERR unknown command 'REPLICAOF' | redis-cli: exiting"),
        "the output's last lines, on one line: {}",
        notes[0]
    );
    let quoted = notes[0]
        .strip_prefix("cache-0: promote hook failed for epoch 4: exited with code 1: ")
        .unwrap_or_default();
    assert_eq!(quoted.chars().count(), 200);
    assert_eq!(
        notes[1],
        "cache-2: health hook failed for epoch 4: timed out after 500 ms and was killed"
    );
    assert!(
        p.events
            .iter()
            .filter(|e| e.reason == "HookFailed")
            .all(|e| e.warning)
    );
    insta::assert_yaml_snapshot!(
        "hook_failure",
        (
            &p.status.members,
            p.events
                .iter()
                .filter(|e| e.reason == "HookFailed")
                .collect::<Vec<_>>()
        )
    );

    // Shown in the status, the same failures are not news again.
    let mut g = g;
    g.status = Some(p.status.clone());
    let again = plan(&g, &failing(4, "another run"), &settings());
    assert_eq!(hook_failed(&again), Vec::<&str>::new());

    // The health hook recovered, then fails again: news once more.
    let mut recovered = failing(4, "");
    if let AgentsObserved::Connected { view, .. } = &mut recovered.agents {
        view.members[2].hooks = vec![outcome(Health, 4, true)];
    }
    let p = plan(&g, &recovered, &settings());
    g.status = Some(p.status.clone());
    let p = plan(&g, &failing(4, ""), &settings());
    assert_eq!(
        hook_failed(&p),
        ["cache-2: health hook failed for epoch 4: timed out after 500 ms and was killed"]
    );

    // A promote failure for another epoch is another failure.
    g.status = Some(p.status.clone());
    let mut next = failing(4, "");
    if let AgentsObserved::Connected { view, .. } = &mut next.agents {
        view.members[0].hooks = vec![outcome(Promote, 5, false)];
    }
    assert_eq!(
        hook_failed(&plan(&g, &next, &settings())),
        ["cache-0: promote hook failed for epoch 5: exited with code 1"]
    );
}

fn labels(p: &Plan) -> Vec<(&str, Option<&str>)> {
    p.role_labels
        .iter()
        .map(|l| (l.pod.as_str(), l.role))
        .collect()
}

fn labelled(mut pods: Vec<MemberPod>, roles: &[&str]) -> Vec<MemberPod> {
    for (p, r) in pods.iter_mut().zip(roles) {
        p.role_label = (!r.is_empty()).then(|| (*r).to_owned());
    }
    pods
}

#[test]
fn role_labels_are_written_only_where_they_differ() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let p = plan(
        &g,
        &routed(observed(pods(3), connected(view(3, 1, 4)))),
        &settings(),
    );
    assert_eq!(
        labels(&p),
        [
            ("cache-0", Some("backup")),
            ("cache-1", Some("primary")),
            ("cache-2", Some("backup"))
        ]
    );
    let right = labelled(pods(3), &["backup", "primary", "backup"]);
    let p = plan(
        &g,
        &routed(observed(right, connected(view(3, 1, 4)))),
        &settings(),
    );
    assert_eq!(labels(&p), [], "nothing to write");

    // A member whose role is unknown loses its label; a terminating pod is left alone.
    let mut v = view(3, 1, 4);
    v.members[2].role = MemberRole::Unknown;
    let mut pods = labelled(pods(3), &["primary", "primary", "backup"]);
    pods[0].terminating = true;
    let p = plan(&g, &routed(observed(pods, connected(v))), &settings());
    assert_eq!(labels(&p), [("cache-2", None)]);
}

#[test]
fn the_primary_label_follows_the_routed_primary() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 3));
    let before = labelled(pods(3), &["backup", "primary", "backup"]);

    // A failover to cache-2 at epoch 5: -rw routes to it in this reconcile.
    let p = plan(
        &g,
        &routed(observed(before.clone(), connected(view(3, 2, 5)))),
        &settings(),
    );
    assert_eq!(slice_ips(&p, "cache-rw"), Some(vec!["10.88.1.12".into()]));
    assert_eq!(
        labels(&p),
        [("cache-1", Some("backup")), ("cache-2", Some("primary"))]
    );

    // The group names a primary whose lease is not live: -rw routes to nobody, nobody is primary.
    let mut v = view(3, 2, 5);
    v.lease = LeaseView::Expired;
    let p = plan(
        &g,
        &routed(observed(before.clone(), connected(v))),
        &settings(),
    );
    assert_eq!(slice_ips(&p, "cache-rw"), Some(vec![]));
    assert_eq!(labels(&p), [("cache-1", Some("backup")), ("cache-2", None)]);

    // A view older than what is routed leaves -rw, and so the primary label, where they are.
    let p = plan(
        &g,
        &routed(observed(before.clone(), connected(view(3, 2, 3)))),
        &settings(),
    );
    assert!(
        slice(&p, "cache-rw").is_none()
            || slice_ips(&p, "cache-rw") == Some(vec!["10.88.1.11".into()])
    );
    assert_eq!(labels(&p), [("cache-2", None)]);

    // No state from the group (an operator restart): nothing moves but what routing moves.
    let p = plan(
        &g,
        &routed(observed(before.clone(), AgentsObserved::Connecting)),
        &settings(),
    );
    assert_eq!(labels(&p), []);
    let mut o = routed(observed(before, AgentsObserved::Connecting));
    o.routed_addresses = vec![];
    let p = plan(&g, &o, &settings());
    assert_eq!(labels(&p), [("cache-1", None)], "-rw routes to nobody");
}

#[test]
fn witness_and_active_members_are_labelled_with_their_role() {
    let g = bootstrapped(group(GroupMode::PrimaryBackup, 2));
    let mut with_witness = pods(2);
    with_witness.push(MemberPod {
        name: "cache-witness-0".into(),
        witness: true,
        ordinal: 0,
        ip: Some("10.88.1.30".into()),
        agent_running: true,
        terminating: false,
        role_label: None,
        ..MemberPod::default()
    });
    let mut v = view(2, 0, 4);
    v.members.push(MemberView {
        id: 300,
        name: "cache-witness-0".into(),
        witness: true,
        role: MemberRole::Witness,
        ..member(0, MemberRole::Witness)
    });
    let mut o = observed(with_witness, connected(v));
    o.routed_epoch = Some(4);
    o.routed_addresses = vec!["10.88.1.10".into()];
    let p = plan(&g, &o, &settings());
    assert_eq!(
        labels(&p),
        [
            ("cache-0", Some("primary")),
            ("cache-1", Some("backup")),
            ("cache-witness-0", Some("witness"))
        ]
    );

    let g = bootstrapped(group(GroupMode::ActiveActive, 2));
    let mut v = view(2, 0, 0);
    v.primary = None;
    v.lease = LeaseView::None;
    for m in &mut v.members {
        m.role = MemberRole::Active;
    }
    let p = plan(
        &g,
        &observed(labelled(pods(2), &["", "active"]), connected(v)),
        &settings(),
    );
    assert_eq!(labels(&p), [("cache-0", Some("active"))]);
}

// --- stranded new members -------------------------------------------------------------------

/// Three new members: cache-0 on node-2, cache-2 on node-3, and cache-1 unschedulable with its
/// agent volume provisioned on node-2 (the scheduler's binding of its other claim conflicted).
fn stranded_pods() -> Vec<MemberPod> {
    let mut p = pods(3);
    p[0].node = Some("node-2".into());
    p[2].node = Some("node-3".into());
    p[1].ip = None;
    p[1].agent_running = false;
    p[1].unschedulable = true;
    p[1].pinned_claims = vec![("quorate-data-cache-1".into(), "node-2".into())];
    p
}

#[test]
fn a_new_member_stranded_on_another_members_node_gets_its_claims_and_pod_deleted() {
    let g = group(GroupMode::PrimaryBackup, 3);
    let p = plan(
        &g,
        &observed(stranded_pods(), AgentsObserved::Connecting),
        &settings(),
    );
    assert_eq!(
        p.release_stranded,
        vec![StrandedMember {
            pod: "cache-1".into(),
            claims: vec!["quorate-data-cache-1".into()],
            node: "node-2".into(),
            blocking: "cache-0".into(),
        }]
    );
    let event = p
        .done_events
        .iter()
        .find(|e| e.reason == "StrandedVolumes")
        .expect("an event");
    assert!(
        event.warning && event.note.contains("quorate-data-cache-1"),
        "{event:?}"
    );
}

#[test]
fn members_that_may_hold_data_or_are_not_blocked_by_the_spread_are_left_alone() {
    let nothing = |g: &ReplicaGroup, pods: Vec<MemberPod>, agents: AgentsObserved| {
        plan(g, &observed(pods, agents), &settings()).release_stranded
    };
    let g = group(GroupMode::PrimaryBackup, 3);
    // A member of the group (its pod waits for its volume's node to come back, say).
    assert_eq!(
        nothing(
            &bootstrapped(g.clone()),
            stranded_pods(),
            connected(view(3, 0, 2))
        ),
        vec![]
    );
    // A bootstrapped group whose state is unknown right now.
    assert_eq!(
        nothing(
            &bootstrapped(g.clone()),
            stranded_pods(),
            AgentsObserved::Connecting
        ),
        vec![]
    );
    // Its volume's node runs no other member: the spread is not what blocks it.
    let mut p = stranded_pods();
    p[1].pinned_claims = vec![("quorate-data-cache-1".into(), "node-1".into())];
    assert_eq!(nothing(&g, p, AgentsObserved::Connecting), vec![]);
    // The template places its pods itself.
    let mut own = g.clone();
    own.spec
        .template
        .spec
        .as_mut()
        .expect("pod spec")
        .topology_spread_constraints = Some(vec![Default::default()]);
    assert_eq!(
        nothing(&own, stranded_pods(), AgentsObserved::Connecting),
        vec![]
    );
    // Scheduled, or not stuck.
    let mut p = stranded_pods();
    p[1].unschedulable = false;
    assert_eq!(nothing(&g, p, AgentsObserved::Connecting), vec![]);
}

#[test]
fn claim_names_follow_the_statefulset_naming() {
    let mut g = group(GroupMode::PrimaryBackup, 3);
    g.spec.volume_claim_templates = vec![k8s_openapi::api::core::v1::PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            ..Default::default()
        },
        ..Default::default()
    }];
    assert_eq!(
        claim_names(&g, "cache-1", false),
        ["quorate-data-cache-1", "data-cache-1"]
    );
    assert_eq!(
        claim_names(&g, "cache-witness-0", true),
        ["quorate-data-cache-witness-0"]
    );
}

fn network_policy(p: &Plan) -> Option<&k8s_openapi::api::networking::v1::NetworkPolicy> {
    p.apply.iter().find_map(|d| match d {
        Desired::NetworkPolicy(n) => Some(n.as_ref()),
        _ => None,
    })
}

/// The ports (number, protocol) of the policy's rule `rule`.
fn policy_ports(
    policy: &k8s_openapi::api::networking::v1::NetworkPolicy,
    rule: usize,
) -> Vec<(i32, String)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let rules = policy.spec.as_ref().and_then(|s| s.ingress.as_ref());
    rules.expect("ingress rules")[rule]
        .ports
        .iter()
        .flatten()
        .map(|p| match &p.port {
            Some(IntOrString::Int(n)) => (*n, p.protocol.clone().unwrap_or_default()),
            other => panic!("a port by number, got {other:?}"),
        })
        .collect()
}

#[test]
fn the_network_policy_admits_only_the_group_and_the_operator_to_the_agents() {
    let mut g = group(GroupMode::PrimaryBackup, 3);
    // The workload declares its port, a UDP port, and (wrongly) the agent's gRPC port.
    let container = &mut g.spec.template.spec.as_mut().expect("pod spec").containers[0];
    container.ports = Some(
        [(6379, None), (5353, Some("UDP")), (7470, None)]
            .into_iter()
            .map(
                |(port, protocol)| k8s_openapi::api::core::v1::ContainerPort {
                    container_port: port,
                    protocol: protocol.map(str::to_owned),
                    ..Default::default()
                },
            )
            .collect(),
    );
    let none = observed(vec![], AgentsObserved::Connecting);
    let p = plan(&g, &none, &settings());
    let policy = network_policy(&p).expect("a NetworkPolicy");
    insta::assert_yaml_snapshot!("network_policy", policy);
    // The gRPC port: only from the group's pods and the operator's, in its namespace.
    assert_eq!(policy_ports(policy, 0), vec![(7470, "TCP".to_owned())]);
    let from = policy.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
        .from
        .clone()
        .expect("peers");
    assert_eq!(from.len(), 2);
    assert_eq!(
        from[0].pod_selector.as_ref().unwrap().match_labels,
        Some(std::collections::BTreeMap::from([(
            crate::api::names::GROUP_LABEL.to_owned(),
            "cache".to_owned()
        )]))
    );
    assert!(
        from[0].namespace_selector.is_none(),
        "the group's own namespace"
    );
    assert_eq!(
        from[1].pod_selector.as_ref().unwrap().match_labels,
        Some(settings().operator_pods.labels)
    );
    // From anywhere: the HTTP port and the workload's ports, never the gRPC port.
    assert_eq!(
        policy_ports(policy, 1),
        vec![
            (7471, "TCP".to_owned()),
            (5353, "UDP".to_owned()),
            (6379, "TCP".to_owned()),
            (8080, "TCP".to_owned()),
        ]
    );
    assert!(!p.delete.iter().any(|o| o.kind == "NetworkPolicy"));

    // Turned off for the group, or for every group: none, and an earlier one is deleted.
    let mut off = g.clone();
    off.spec.network_policy.enabled = false;
    let mut no_policies = settings();
    no_policies.network_policies = false;
    for p in [
        plan(&off, &none, &settings()),
        plan(&g, &none, &no_policies),
    ] {
        assert!(network_policy(&p).is_none());
        assert!(
            p.delete
                .iter()
                .any(|o| o.kind == "NetworkPolicy" && o.name == "cache")
        );
    }
}

proptest! {
    /// Whatever ports the workload declares, the gRPC port is never opened to everyone, and
    /// every other declared port is.
    #[test]
    fn the_grpc_port_is_never_open_to_everyone(
        served in proptest::collection::btree_set(1i32..=65535, 0..6),
        declared in proptest::collection::vec(1i32..=65535, 0..6),
    ) {
        let mut g = group(GroupMode::ActiveActive, 2);
        g.spec.ports = served
            .iter()
            .enumerate()
            .map(|(i, port)| crate::api::MemberPort {
                name: format!("p{i}"),
                port: *port,
                protocol: None,
                app_protocol: None,
            })
            .collect();
        g.spec.template.spec.as_mut().unwrap().containers[0].ports = Some(
            declared
                .iter()
                .map(|port| k8s_openapi::api::core::v1::ContainerPort {
                    container_port: *port,
                    ..Default::default()
                })
                .collect(),
        );
        let p = plan(&g, &observed(vec![], AgentsObserved::Connecting), &settings());
        let open: std::collections::BTreeSet<i32> =
            policy_ports(network_policy(&p).unwrap(), 1).into_iter().map(|(n, _)| n).collect();
        prop_assert!(!open.contains(&7470));
        prop_assert!(open.contains(&7471));
        for port in served.iter().chain(&declared).filter(|p| **p != 7470) {
            prop_assert!(open.contains(port), "port {port} not open");
        }
    }
}
