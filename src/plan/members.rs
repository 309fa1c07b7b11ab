//! The members' StatefulSet (the user's pod template with the agent injected as a native
//! sidecar) and the witnesses' StatefulSet (agent only).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Desired, Observed, OperatorSettings};
use crate::api::names::*;
use crate::api::{GroupMode, ReplicaGroup, ReplicaGroupSpec};
use crate::supervisor::config::{AGENT_URL_ENV, HOOKS_ENV, MEMBER_ENV, SupervisorConfig};

/// The agent runs as this user unless the pod says otherwise (distroless "nonroot").
const AGENT_UID: i64 = 65532;

/// Why the template cannot be used, in words for a status condition and an Event.
pub(super) fn template_problem(spec: &ReplicaGroupSpec) -> Option<String> {
    let pod = spec.template.spec.as_ref()?;
    let mut problems = Vec::new();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        if c.name == AGENT_CONTAINER || c.name == INSTALL_CONTAINER {
            problems.push(format!(
                "the container name {:?} is reserved for the containers the operator injects",
                c.name
            ));
        }
        for m in c.volume_mounts.iter().flatten() {
            if m.name.starts_with(RESERVED_PREFIX) {
                problems.push(format!(
                    "container {:?} mounts {:?}: the quorate-* volumes are mounted by the operator only",
                    c.name, m.name
                ));
            }
        }
    }
    for v in pod.volumes.iter().flatten() {
        if v.name.starts_with(RESERVED_PREFIX) {
            problems.push(format!("the volume name {:?} is reserved (names starting with {RESERVED_PREFIX:?} belong to the operator)", v.name));
        }
    }
    for claim in &spec.volume_claim_templates {
        let name = claim.metadata.name.as_deref().unwrap_or_default();
        if name.is_empty() || name.starts_with(RESERVED_PREFIX) {
            problems.push(format!("volumeClaimTemplates: the name {name:?} is empty or reserved (names starting with {RESERVED_PREFIX:?} belong to the operator)"));
        }
    }
    if pod.automount_service_account_token == Some(true) {
        problems.push("automountServiceAccountToken must not be true: member pods hold no Kubernetes credentials".into());
    }
    (!problems.is_empty()).then(|| format!("spec.template: {}", problems.join("; ")))
}

pub(super) fn labels(names: &GroupNames, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (GROUP_LABEL.to_owned(), names.name.clone()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
    ])
}

/// Every pod of the group, members and witnesses.
pub(super) fn group_selector(names: &GroupNames) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            GROUP_LABEL.to_owned(),
            names.name.clone(),
        )])),
        ..Default::default()
    }
}

pub(super) fn object_labels(names: &GroupNames, component: &str) -> BTreeMap<String, String> {
    let mut l = labels(names, component);
    l.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    l.insert(NAME_LABEL.to_owned(), names.name.clone());
    l
}

pub(super) fn meta(names: &GroupNames, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(object_labels(names, component)),
        ..Default::default()
    }
}

fn restricted_security_context(run_as_group: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(AGENT_UID),
        run_as_group: Some(run_as_group),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A mount of one of the operator's volumes (read-only: `read_only: true`, else unset).
fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The pod's own name (the member name) from the downward API.
fn pod_name_env(name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The agent's command line: everything it needs to know about the group, from the spec.
fn agent_args(group: &ReplicaGroup, names: &GroupNames, witness: bool) -> Vec<String> {
    let spec = &group.spec;
    let mut args = vec![
        format!("--data-dir={DATA_DIR}"),
        "--member=$(QUORATE_MEMBER)".to_owned(),
        format!("--listen=0.0.0.0:{AGENT_GRPC_PORT}"),
        format!("--http-listen=0.0.0.0:{AGENT_HTTP_PORT}"),
        format!(
            "--advertise=$(QUORATE_MEMBER).{}.{}.svc.cluster.local:{AGENT_GRPC_PORT}",
            names.peers(),
            names.namespace
        ),
        format!(
            "--mode={}",
            match spec.mode {
                GroupMode::PrimaryBackup => "PrimaryBackup",
                GroupMode::ActiveActive => "ActiveActive",
            }
        ),
        format!("--lease-millis={}", spec.failover.lease_millis),
        format!(
            "--max-failovers-per-hour={}",
            spec.failover.max_failovers_per_hour
        ),
        format!("--role-file={ROLE_FILE}"),
        format!("--tls-cert={TLS_DIR}/tls.crt"),
        format!("--tls-key={TLS_DIR}/tls.key"),
        format!("--tls-ca={TLS_DIR}/ca.crt"),
        "--log-format=json".to_owned(),
    ];
    if witness {
        args.push("--witness".to_owned());
        return args;
    }
    if !spec.failover.priorities.is_empty() {
        let list: Vec<String> = spec
            .failover
            .priorities
            .iter()
            .map(|(m, p)| format!("{m}={p}"))
            .collect();
        args.push(format!("--priorities={}", list.join(",")));
    }
    if let Some(h) = &spec.health {
        if let Some(t) = &h.tcp_socket {
            args.push(format!("--health-tcp={}", t.port));
        } else if let Some(g) = &h.http_get {
            args.push(format!("--health-http={}{}", g.port, g.path));
        }
        // An exec check runs in the workload container, through the supervisor.
        if h.tcp_socket.is_some() || h.http_get.is_some() {
            args.push(format!("--health-period-millis={}", h.period_millis));
            args.push(format!("--health-timeout-millis={}", h.timeout_millis));
            args.push(format!(
                "--health-failure-threshold={}",
                h.failure_threshold
            ));
        }
    }
    if spec.supervised() {
        args.push("--supervised".to_owned());
    }
    if let Some(rc) = &spec.role_change {
        if let Some(post) = &rc.http_post {
            args.push(format!(
                "--role-callback=http://127.0.0.1:{}{}",
                post.port, post.path
            ));
        }
        args.push(format!("--callback-timeout-millis={}", rc.timeout_millis));
        args.push(format!("--callback-retries={}", rc.retries));
    }
    args
}

fn agent_container(
    group: &ReplicaGroup,
    names: &GroupNames,
    settings: &OperatorSettings,
    witness: bool,
    run_as_group: i64,
) -> Container {
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(AGENT_HTTP_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    Container {
        name: AGENT_CONTAINER.into(),
        image: Some(settings.agent_image.clone()),
        image_pull_policy: Some(settings.agent_image_pull_policy.clone()),
        command: Some(vec!["/quorate-agent".into()]),
        args: Some(agent_args(group, names, witness)),
        // A native sidecar: starts before the workload, stops after it, restarts on its own.
        restart_policy: Some("Always".into()),
        env: Some(vec![pod_name_env(MEMBER_ENV)]),
        ports: Some(vec![
            ContainerPort {
                name: Some(AGENT_GRPC_PORT_NAME.into()),
                container_port: AGENT_GRPC_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some(AGENT_HTTP_PORT_NAME.into()),
                container_port: AGENT_HTTP_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readiness", 2, 3)),
        liveness_probe: Some(probe("/health", 10, 6)),
        resources: Some(group.spec.agent.resources.clone().unwrap_or_else(|| {
            ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".into(), Quantity("20m".into())),
                    ("memory".into(), Quantity("32Mi".into())),
                ])),
                limits: Some(BTreeMap::from([(
                    "memory".into(),
                    Quantity("128Mi".into()),
                )])),
                ..Default::default()
            }
        })),
        security_context: Some(restricted_security_context(run_as_group)),
        volume_mounts: Some(vec![
            mount(RUN_VOLUME, RUN_DIR, false),
            mount(DATA_VOLUME, DATA_DIR, false),
            mount(TLS_VOLUME, TLS_DIR, true),
        ]),
        ..Default::default()
    }
}

fn shared_volumes(names: &GroupNames) -> Vec<Volume> {
    vec![
        Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Default::default()
        },
        Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.agent_tls_secret()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// The init container that copies the supervisor from the Quorate image into the pod.
fn install_container(settings: &OperatorSettings, run_as_group: i64) -> Container {
    Container {
        name: INSTALL_CONTAINER.into(),
        image: Some(settings.agent_image.clone()),
        image_pull_policy: Some(settings.agent_image_pull_policy.clone()),
        command: Some(vec![
            SUPERVISOR_IN_IMAGE.into(),
            "install".into(),
            SUPERVISOR_PATH.into(),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        security_context: Some(restricted_security_context(run_as_group)),
        // The run volume too, writable: the mount point of the supervisor's volume is created
        // in it here, so that the workload can mount both while the run volume is read-only.
        volume_mounts: Some(vec![
            mount(RUN_VOLUME, RUN_DIR, false),
            mount(BIN_VOLUME, BIN_DIR, false),
        ]),
        ..Default::default()
    }
}

fn data_claim(group: &ReplicaGroup) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: group.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    group.spec.storage.size.clone(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The node label the scheduler spreads members over.
const NODE_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";

/// The template places its pods itself (pod anti-affinity or topology spread constraints).
pub(super) fn declares_own_spread(pod: &PodSpec) -> bool {
    pod.topology_spread_constraints
        .as_ref()
        .is_some_and(|c| !c.is_empty())
        || pod
            .affinity
            .as_ref()
            .is_some_and(|a| a.pod_anti_affinity.is_some())
}

/// The claims the StatefulSet creates for `pod` (named `CLAIM-POD`, as a StatefulSet names
/// them): the agent's data volume, and for members the template's volumeClaimTemplates.
pub fn claim_names(group: &ReplicaGroup, pod: &str, witness: bool) -> Vec<String> {
    std::iter::once(DATA_VOLUME.to_owned())
        .chain(
            (!witness)
                .then(|| {
                    group
                        .spec
                        .volume_claim_templates
                        .iter()
                        .filter_map(|c| c.metadata.name.clone())
                })
                .into_iter()
                .flatten(),
        )
        .map(|claim| format!("{claim}-{pod}"))
        .collect()
}

/// Members and witnesses of a group go to different nodes, so that a lost node takes one vote
/// and not a majority (nor the primary and the member that would replace it): a topology spread
/// over nodes with `maxSkew: 1` and `DoNotSchedule` (a preferred anti-affinity alone was
/// outweighed by the scheduler's other scores on the test bed, and two members shared a node),
/// counting only nodes whose taints the pod tolerates (`nodeTaintsPolicy: Honor`: a node that is
/// down does not keep a new group's pods Pending). A one-node cluster still runs the group (one
/// domain has no skew). The preferred anti-affinity stays as a tie-breaker. A template that
/// declares its own pod anti-affinity or topology spread constraints gets none of this
/// (docs/operations.md).
fn spread_over_nodes(pod: &mut PodSpec, names: &GroupNames) {
    if declares_own_spread(pod) {
        return;
    }
    pod.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: NODE_TOPOLOGY_KEY.into(),
        when_unsatisfiable: "DoNotSchedule".into(),
        label_selector: Some(group_selector(names)),
        node_taints_policy: Some("Honor".into()),
        ..Default::default()
    }]);
    pod.affinity
        .get_or_insert_with(Affinity::default)
        .pod_anti_affinity = Some(PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                topology_key: NODE_TOPOLOGY_KEY.into(),
                label_selector: Some(group_selector(names)),
                ..Default::default()
            },
        }]),
        ..Default::default()
    });
}

/// The hash the rendered pod template carries (`TEMPLATE_HASH_ANNOTATION`): of its JSON, whose
/// field order is fixed and whose maps are sorted. `DefaultHasher::new()` has fixed keys, so a
/// build of the operator gives the same hash every time; another build may give another, which
/// costs one orderly roll — as that build's new agent image does anyway.
fn template_hash(template: &PodTemplateSpec) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(template)
        .unwrap_or_default()
        .hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The template hash of a StatefulSet the plan rendered.
pub(super) fn rendered_template_hash(set: &StatefulSet) -> Option<&str> {
    set.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(TEMPLATE_HASH_ANNOTATION)
        .map(String::as_str)
}

fn stateful_set(
    group: &ReplicaGroup,
    names: &GroupNames,
    name: String,
    component: &str,
    replicas: i32,
    mut template: PodTemplateSpec,
) -> StatefulSet {
    let hash = template_hash(&template);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH_ANNOTATION.to_owned(), hash);
    StatefulSet {
        metadata: meta(names, name, component),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.peers()),
            selector: LabelSelector {
                match_labels: Some(labels(names, component)),
                ..Default::default()
            },
            // Members form the Raft group together: start them all at once.
            pod_management_policy: Some("Parallel".into()),
            // The operator rolls the pods itself (`plan::roll`): in the group's order (the
            // primary last, after one switchover), and only while the group is Ready.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            // A removed member's volume goes with it: if it comes back it joins with a new id.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Delete".into()),
                },
            ),
            volume_claim_templates: Some(
                std::iter::once(data_claim(group))
                    .chain(
                        (component == COMPONENT_MEMBER)
                            .then(|| group.spec.volume_claim_templates.iter().cloned())
                            .into_iter()
                            .flatten(),
                    )
                    .collect(),
            ),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn stateful_sets(
    group: &ReplicaGroup,
    names: &GroupNames,
    observed: &Observed,
    settings: &OperatorSettings,
    member_replicas: i32,
) -> Vec<Desired> {
    let mut out = vec![Desired::StatefulSet(Box::new(member_set(
        group,
        names,
        observed,
        settings,
        member_replicas,
    )))];
    let witnesses = group.spec.effective_witnesses();
    let witness_pods = observed
        .pods
        .iter()
        .filter(|p| p.witness)
        .map(|p| p.ordinal as i32 + 1)
        .max()
        .unwrap_or(0);
    if witnesses > 0 || witness_pods > 0 {
        out.push(Desired::StatefulSet(Box::new(witness_set(
            group,
            names,
            observed,
            settings,
            witnesses.max(0),
        ))));
    }
    out
}

/// Which certificates and which CA the pod template's pods get (a change rolls them; a new CA
/// restarts them together: `plan::lifecycle`).
fn tls_annotations(observed: &Observed) -> impl Iterator<Item = (String, String)> {
    [
        (TLS_HASH_ANNOTATION.to_owned(), observed.tls_hash.clone()),
        (CA_HASH_ANNOTATION.to_owned(), observed.ca_hash.clone()),
    ]
    .into_iter()
}

fn member_set(
    group: &ReplicaGroup,
    names: &GroupNames,
    observed: &Observed,
    settings: &OperatorSettings,
    replicas: i32,
) -> StatefulSet {
    let mut template = group.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(labels(names, COMPONENT_MEMBER));
    meta.annotations
        .get_or_insert_with(Default::default)
        .extend(tls_annotations(observed));

    let pod = template.spec.get_or_insert_with(PodSpec::default);
    // Member pods talk only to each other and to the operator.
    pod.automount_service_account_token = Some(false);
    spread_over_nodes(pod, names);
    let security = pod
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    // The agent writes its volume: give it the pod's fsGroup as its group.
    let fs_group = *security.fs_group.get_or_insert(AGENT_UID);
    let supervisor =
        SupervisorConfig::for_spec(&group.spec).and_then(|c| serde_json::to_string(&c).ok());
    for c in pod.containers.iter_mut() {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        mounts.push(mount(RUN_VOLUME, RUN_DIR, true));
        if supervisor.is_some() {
            mounts.push(mount(BIN_VOLUME, BIN_DIR, true));
        }
        let env_list = c.env.get_or_insert_with(Vec::new);
        env_list.push(env("QUORATE_ROLE_FILE", ROLE_FILE));
        env_list.push(env(
            AGENT_URL_ENV,
            format!("http://127.0.0.1:{AGENT_HTTP_PORT}"),
        ));
        env_list.push(pod_name_env(MEMBER_ENV));
        if let Some(json) = &supervisor {
            env_list.push(env(HOOKS_ENV, json.clone()));
        }
    }
    // The sidecar goes first so it runs before any user init container that may wait for a role.
    let mut init = vec![agent_container(group, names, settings, false, fs_group)];
    if supervisor.is_some() {
        init.push(install_container(settings, fs_group));
    }
    init.extend(pod.init_containers.take().unwrap_or_default());
    pod.init_containers = Some(init);
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.extend(shared_volumes(names));
    if supervisor.is_some() {
        volumes.push(Volume {
            name: BIN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(Quantity("64Mi".into())),
            }),
            ..Default::default()
        });
    }
    stateful_set(
        group,
        names,
        names.members(),
        COMPONENT_MEMBER,
        replicas,
        template,
    )
}

fn witness_set(
    group: &ReplicaGroup,
    names: &GroupNames,
    observed: &Observed,
    settings: &OperatorSettings,
    replicas: i32,
) -> StatefulSet {
    let mut agent = agent_container(group, names, settings, true, AGENT_UID);
    // A witness is only the agent: a regular container (nothing to run beside).
    agent.restart_policy = None;
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(names, COMPONENT_WITNESS)),
            annotations: Some(tls_annotations(observed).collect()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                fs_group: Some(AGENT_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_grace_period_seconds: Some(10),
            containers: vec![agent],
            volumes: Some(shared_volumes(names)),
            ..Default::default()
        }),
    };
    if let Some(pod) = template.spec.as_mut() {
        spread_over_nodes(pod, names);
    }
    stateful_set(
        group,
        names,
        names.witnesses(),
        COMPONENT_WITNESS,
        replicas,
        template,
    )
}
