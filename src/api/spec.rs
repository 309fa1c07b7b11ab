//! `ReplicaGroup` spec: what the user declares. Every doc comment here becomes
//! `kubectl explain replicagroup.spec...` text, so it is written for users.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema::{map_of_bounded_ints, member_key_rule, member_list_rule};
use super::status::ReplicaGroupStatus;

/// Largest group: 15 members keeps Raft quorum traffic and failover decisions fast.
pub const MAX_REPLICAS: i32 = 15;
/// The Gateway API bound for a backendRef weight.
pub const MAX_WEIGHT: i32 = 1_000_000;
pub const MIN_LEASE_MILLIS: i32 = 200;
pub const MAX_LEASE_MILLIS: i32 = 60_000;
pub const MAX_PORTS: usize = 16;
/// Longest argv of a hook or exec check.
pub const MAX_HOOK_ARGS: usize = 64;
/// Bounds of a hook's timeout: from a quick position query to a long initial copy of the data.
pub const MIN_HOOK_TIMEOUT_MILLIS: i32 = 100;
pub const MAX_HOOK_TIMEOUT_MILLIS: i32 = 3_600_000;

/// A replicated group of pods: one primary and its backups (`PrimaryBackup`), or N members that
/// share traffic by weight (`ActiveActive`). The group elects its primary itself, through Raft in
/// an agent injected into every member pod; the operator routes Services and Gateway API routes
/// from the group's state.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "quorate.dev",
    version = "v1alpha1",
    kind = "ReplicaGroup",
    namespaced,
    shortname = "rg",
    category = "quorate",
    status = "ReplicaGroupStatus",
    derive = "PartialEq",
    doc = "A replicated group of pods with a Raft-elected primary (PrimaryBackup) or weighted active members (ActiveActive).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode", description = "PrimaryBackup or ActiveActive"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas", description = "Desired members"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas", description = "Healthy members"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary", description = "Current primary"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch", description = "Fencing epoch of the current appointment"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Lifecycle phase"),
    printcolumn(name = "Up-To-Date", type_ = "string", json_path = ".status.conditions[?(@.type==\"UpToDate\")].status", description = "Every pod runs the current pod template (False while a roll is under way or waits)"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(self.metadata.name) || !self.metadata.name.endsWith('-witness')")
        .message("metadata.name may not end in -witness: NAME-witness is the StatefulSet (and NAME-witness-0 the pods) of the witnesses of the group NAME, so the objects of the two groups would have the same names"),
    validation = member_key_rule("traffic.weights"),
    validation = member_key_rule("failover.priorities"),
    validation = member_list_rule("fencedMembers"),
)]
#[x_kube(
    validation = Rule::new("self.mode != 'PrimaryBackup' || self.replicas >= 2")
        .message("spec.replicas: a PrimaryBackup group needs at least 2 replicas so that it survives the loss of one member (use mode ActiveActive for a single member)")
        .field_path(".replicas"),
    validation = Rule::new("self.mode == 'PrimaryBackup' || !has(self.witnesses) || self.witnesses == 0")
        .message("spec.witnesses: witnesses are only allowed in PrimaryBackup groups; set witnesses to 0 or leave it unset for ActiveActive")
        .field_path(".witnesses"),
    validation = Rule::new("!(self.mode == 'PrimaryBackup' && self.replicas == 2 && has(self.witnesses) && self.witnesses == 0)")
        .message("spec.witnesses: a PrimaryBackup group of 2 replicas needs 1 witness to keep a Raft majority when a member fails; leave witnesses unset (the operator adds one) or set it to 1 or 2")
        .field_path(".witnesses"),
    validation = Rule::new("has(self.volumeClaimTemplates) == has(oldSelf.volumeClaimTemplates)")
        .message("spec.volumeClaimTemplates is fixed when the group is created (a StatefulSet's claim templates cannot change); delete and re-create the group to change it")
        .field_path(".volumeClaimTemplates"),
    validation = Rule::new("!has(self.health) || !has(self.health.exec) || has(self.hooks)")
        .message("spec.health.exec runs in the workload container through the supervisor: set spec.hooks (an empty {} will do) and start the workload under /run/quorate/bin/quorate-run")
        .field_path(".health.exec"),
    validation = Rule::new("!has(self.traffic) || !has(self.traffic.gateway) || (has(self.ports) && size(self.ports) > 0)")
        .message("spec.ports: traffic.gateway routes to a member port, so spec.ports must name at least one port")
        .field_path(".ports"),
    validation = Rule::new("!has(self.traffic) || !has(self.traffic.gateway) || !has(self.traffic.gateway.port) || (has(self.ports) && self.ports.exists(p, p.port == self.traffic.gateway.port))")
        .message("spec.traffic.gateway.port must be one of the port numbers in spec.ports")
        .field_path(".traffic.gateway.port"),
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaGroupSpec {
    /// How the members share work. `PrimaryBackup`: one member is the primary (takes writes,
    /// routed by the NAME-rw Service), the others are backups (NAME-ro). `ActiveActive`: every
    /// healthy member serves and traffic is split by weight (NAME-r and the optional HTTPRoute).
    /// Immutable after creation.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.mode is immutable: delete and re-create the group to change between PrimaryBackup and ActiveActive"))]
    pub mode: GroupMode,

    /// Number of members that run the workload, 1 to 15 (PrimaryBackup: at least 2).
    /// `kubectl scale rg/NAME --replicas=N` changes it; members are added to and removed from the
    /// Raft group one at a time, and the primary is switched away before its member is removed.
    #[schemars(range(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 15").message("spec.replicas must be between 1 and 15"))]
    pub replicas: i32,

    /// Agent-only members that vote in Raft but never run the workload and never become
    /// primary, 0 to 2, PrimaryBackup only. Unset means automatic: 1 witness when replicas is 2
    /// (so that a single failure leaves a majority), otherwise none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2))]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 2").message("spec.witnesses must be between 0 and 2"))]
    pub witnesses: Option<i32>,

    /// The pod template of the workload. The operator adds the quorate-agent sidecar, the shared
    /// role volume, the supervisor's volume (`/run/quorate/bin/quorate-run`, see `hooks`) and the
    /// agent's data volume; the container name `quorate-agent` and volume names starting with
    /// `quorate-` are reserved.
    #[x_kube(
        validation = Rule::new("has(self.spec) && size(self.spec.containers) > 0").message("spec.template.spec.containers must hold at least one container"),
        validation = Rule::new("!has(self.spec) || self.spec.containers.all(c, c.name != 'quorate-agent') && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, c.name != 'quorate-agent' && c.name != 'quorate-install'))").message("spec.template.spec.containers[].name: the names quorate-agent and quorate-install are reserved for the containers the operator injects").field_path(".spec.containers"),
        validation = Rule::new("!has(self.spec) || !has(self.spec.volumes) || self.spec.volumes.all(v, !v.name.startsWith('quorate-'))").message("spec.template.spec.volumes[].name: names starting with quorate- are reserved for the operator's volumes").field_path(".spec.volumes"),
        validation = Rule::new("!has(self.spec) || !has(self.spec.volumes) || self.spec.volumes.all(v, !has(v.hostPath) || !(v.hostPath.path in ['/', '/var', '/var/', '/var/lib', '/var/lib/', '/var/lib/kubelet'] || v.hostPath.path.startsWith('/var/lib/kubelet/') || v.hostPath.path.contains('//') || v.hostPath.path.contains('/./') || v.hostPath.path.contains('/../') || v.hostPath.path.endsWith('/.') || v.hostPath.path.endsWith('/..')))").message("spec.template.spec.volumes[].hostPath.path: the node's /var/lib/kubelet (where the kubelet keeps every pod's volumes, the agent's certificate and key among them), its parent directories, and paths with //, . or .. segments are not allowed").field_path(".spec.volumes"),
        validation = Rule::new("!has(self.spec) || self.spec.containers.all(c, !has(c.volumeMounts) || c.volumeMounts.all(m, !m.name.startsWith('quorate-'))) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, !has(c.volumeMounts) || c.volumeMounts.all(m, !m.name.startsWith('quorate-'))))").message("spec.template.spec.containers[].volumeMounts[].name: a workload container must not mount the operator's quorate-* volumes (the operator mounts the role and supervisor volumes itself; the agent's TLS and data volumes are the agent's only)").field_path(".spec.containers"),
    )]
    pub template: PodTemplateSpec,

    /// Persistent volume claims of each member's workload, as in a StatefulSet: every member gets
    /// its own claim per template (named `TEMPLATE-NAME-<member>`), which the user's containers
    /// mount by the template's name. A claim stays with its member across pod restarts and
    /// reschedules and is deleted with the member when the group scales down or is deleted (see
    /// docs/workloads.md: a member that comes back starts empty, joins with a new Raft id and is
    /// seeded by its `join` hook). Names starting with `quorate-` are reserved; at most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(
        validation = Rule::new("self.all(c, has(c.metadata) && has(c.metadata.name) && !c.metadata.name.startsWith('quorate-'))").message("spec.volumeClaimTemplates[].metadata.name: every template needs a name, and names starting with quorate- are reserved for the agent's own volume"),
        validation = Rule::new("self.all(c, self.exists_one(d, d.metadata.name == c.metadata.name))").message("spec.volumeClaimTemplates[].metadata.name: template names must be unique"),
        validation = Rule::new("self == oldSelf").message("spec.volumeClaimTemplates is fixed when the group is created (a StatefulSet's claim templates cannot change); delete and re-create the group to change it"),
    )]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,

    /// Commands the supervisor `quorate-run` runs inside the workload container, with the
    /// container's own tools, when the member's role changes (`promote`, `demote`), before the
    /// workload starts (`join`) and periodically (`position`; a health check `health.exec` runs
    /// there too). Run the workload under the supervisor:
    /// `command: [/run/quorate/bin/quorate-run, --, redis-server, ...]`. The supervisor also
    /// fences the workload when the primary's lease ends without a renewal, even when the agent
    /// is frozen or dead. Unset: the workload learns its role only from the role file and the
    /// optional callback (`roleChange`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksSpec>,

    /// Ports the workload serves. Each becomes a port of the NAME-rw, NAME-ro, NAME-r and
    /// per-member Services. Names and numbers must be unique; at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(
        validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("spec.ports: port names must be unique"),
        validation = Rule::new("self.all(p, self.exists_one(q, q.port == p.port))").message("spec.ports: port numbers must be unique"),
    )]
    pub ports: Vec<MemberPort>,

    /// How the agent judges the health of its local workload. An unhealthy primary releases its
    /// lease so that a healthy backup takes over at once. Unset: the workload counts as healthy
    /// while its member pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,

    /// How the workload learns its role besides the role file `/run/quorate/role` (always
    /// written): an optional HTTP callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_change: Option<RoleChange>,

    /// Primary lease and failover limits.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// How traffic is spread over the members: the weight policy and an optional Gateway API
    /// HTTPRoute.
    #[serde(default)]
    pub traffic: TrafficSpec,

    /// The persistent volume of each member's agent (Raft log, vote and snapshots).
    #[serde(default)]
    pub storage: StorageSpec,

    /// The quorate-agent sidecar of every member (and witness) pod.
    #[serde(default, skip_serializing_if = "AgentSpec::is_default")]
    pub agent: AgentSpec,

    /// Freeze automatic failover: the current primary keeps its role for as long as its lease
    /// holds, no new primary is appointed, and routing keeps following member health.
    #[serde(default)]
    pub paused: bool,

    /// Request a planned switchover to this member (for example `cache-2`). The operator asks the
    /// group to move the primary there without a window with two primaries, then clears nothing:
    /// the field stays as the declared preference until changed. Also possible with the
    /// `quorate.dev/switchover-to` annotation or `kubectl quorate switchover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub switchover_to: Option<String>,

    /// Members to fence, for example `[cache-2]`: a fenced member keeps running (and
    /// replicating) but is never appointed primary and gets no traffic (it leaves `NAME-ro`,
    /// `NAME-r` and the Gateway weights), for maintenance or an investigation. A fenced primary
    /// is switched away first. Fencing is refused while it would leave no healthy, unfenced
    /// member to take over (the group reports `FenceRefused`). Also `kubectl quorate fence`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // Bounded (member names are pod names, DNS labels) so that the API server can afford the
    // CEL rule that checks every entry.
    #[schemars(length(max = 15), inner(length(min = 1, max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub fenced_members: Vec<String>,

    /// The group's NetworkPolicy, enforced where the cluster's network plugin enforces
    /// NetworkPolicies (see docs/security.md, "Network").
    #[serde(default, skip_serializing_if = "NetworkPolicySpec::is_default")]
    pub network_policy: NetworkPolicySpec,
}

/// Whether the operator writes the group's NetworkPolicy `NAME`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Write the NetworkPolicy `NAME` (default true; the operator's `--network-policies=false`,
    /// the chart's `networkPolicy.enabled`, turns it off for every group). It admits the agents'
    /// gRPC port (7470: Raft, admin calls) only from the group's own pods and the operator; the
    /// agents' HTTP port (7471: probes, `/metrics`, the role) and the workload's ports
    /// (`spec.ports` and the ports its containers declare) from anywhere; nothing else. Other
    /// NetworkPolicies that select the pods add to what it admits.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl NetworkPolicySpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How the members of a group share work.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum GroupMode {
    /// One primary (writes) and N backups (standbys, optionally serving reads).
    PrimaryBackup,
    /// Every healthy member serves; traffic is split by weight.
    ActiveActive,
}

/// A port of the workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberPort {
    /// Port name, a DNS label (lowercase letters, digits and '-', at most 15 characters).
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Port number, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("spec.ports[].port must be between 1 and 65535"))]
    pub port: i32,
    /// TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocol>,
    /// Application protocol hint for Services and Gateways (for example `http`, `kubernetes.io/h2c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub app_protocol: Option<String>,
}

/// Transport protocol of a port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PortProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl PortProtocol {
    /// Its name in Kubernetes objects (a Service port, a NetworkPolicy port).
    pub fn name(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
        }
    }
}

/// A health check of the local workload, run by the agent. Set exactly one of tcpSocket,
/// httpGet and exec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.tcpSocket) ? 1 : 0) + (has(self.httpGet) ? 1 : 0) + (has(self.exec) ? 1 : 0) == 1").message("spec.health: set exactly one of tcpSocket, httpGet or exec"),
    // A check that may outlast its period would overlap the next one.
    validation = Rule::new("self.timeoutMillis <= self.periodMillis").message("spec.health.timeoutMillis must not be longer than spec.health.periodMillis"),
)]
pub struct HealthCheck {
    /// Healthy when a TCP connection to this port opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketCheck>,
    /// Healthy when this HTTP GET answers 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetCheck>,
    /// Healthy when this command exits 0. The supervisor `quorate-run` runs it inside the
    /// workload container (needs `spec.hooks` and the workload started under the supervisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
    /// Milliseconds between checks, 100 to 60000 (default 1000).
    #[serde(default = "default_health_period")]
    #[schemars(range(min = 100, max = 60000))]
    #[x_kube(validation = Rule::new("self >= 100 && self <= 60000").message("spec.health.periodMillis must be between 100 and 60000"))]
    pub period_millis: i32,
    /// Milliseconds a single check may take, 50 to 60000 and at most periodMillis (default 500).
    #[serde(default = "default_health_timeout")]
    #[schemars(range(min = 50, max = 60000))]
    #[x_kube(validation = Rule::new("self >= 50 && self <= 60000").message("spec.health.timeoutMillis must be between 50 and 60000"))]
    pub timeout_millis: i32,
    /// Consecutive failed checks before the workload counts as unhealthy, 1 to 20 (default 3).
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 20").message("spec.health.failureThreshold must be between 1 and 20"))]
    pub failure_threshold: i32,
}

fn default_health_period() -> i32 {
    1000
}
fn default_health_timeout() -> i32 {
    500
}
fn default_failure_threshold() -> i32 {
    3
}

/// A TCP connect check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSocketCheck {
    /// Port of the workload, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("spec.health.tcpSocket.port must be between 1 and 65535"))]
    pub port: i32,
}

/// An HTTP GET check against the workload on the pod's loopback address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetCheck {
    /// Request path (default `/`).
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^/"))]
    pub path: String,
    /// Port of the workload, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("spec.health.httpGet.port must be between 1 and 65535"))]
    pub port: i32,
}

fn default_path() -> String {
    "/".to_owned()
}

/// A command check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecCheck {
    /// The command and its arguments, 1 to 64 (no shell unless you call one).
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
}

/// The supervisor's hooks; see `spec.hooks`. Every hook gets the environment of its container
/// plus QUORATE_ROLE (primary, backup, fenced), QUORATE_EPOCH, QUORATE_MEMBER,
/// QUORATE_PRIMARY (the primary's member name, empty when none is known) and
/// QUORATE_PRIMARY_HOST (its stable DNS name), and runs with its argv as written (no shell
/// unless you call one).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HooksSpec {
    /// Run when this member becomes the primary (epoch in QUORATE_EPOCH), e.g. Redis
    /// `REPLICAOF NO ONE`. A failure (non-zero exit, timeout) gives the epoch back at once and
    /// the group appoints the next candidate. Default timeout 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<Hook>,
    /// Run when this member stops being the primary, when it is a backup and the primary
    /// changes (follow QUORATE_PRIMARY_HOST), and to fence it (QUORATE_ROLE=fenced: the lease
    /// ended without renewal; stop accepting writes). A failed demote fences by stopping the
    /// workload process (the container restarts). Default timeout 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demote: Option<Hook>,
    /// Run before the workload process starts, every time the container starts: seed an empty
    /// data directory from the primary (QUORATE_PRIMARY_HOST; the hook decides whether the data
    /// is empty). The workload starts only once it succeeded. Default timeout 10 min.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Hook>,
    /// Prints the workload's replication position as one non-negative integer (Redis
    /// `master_repl_offset`, PostgreSQL's LSN as a number). Declared, it makes the group promote
    /// the healthy member with the highest position; a member whose position cannot be read
    /// is not a candidate. Default timeout 2 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Hook>,
    /// How the supervisor fences a primary whose lease ended without renewal: `Demote` (run the
    /// demote hook with QUORATE_ROLE=fenced; stop the process if it fails) or `Kill` (stop the
    /// workload process at once; the container restarts). Default Demote.
    #[serde(default)]
    pub fence: FenceMode,
}

/// One hook: a command and its timeout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// The command and its arguments, 1 to 64 (no shell unless you call one).
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 64").message("spec.hooks.*.command needs 1 to 64 arguments"))]
    pub command: Vec<String>,
    /// Milliseconds the hook may run before it is killed and counted as failed, 100 to 3600000
    /// (defaults: promote and demote 10000, join 600000, position 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 3600000))]
    #[x_kube(validation = Rule::new("self >= 100 && self <= 3600000").message("spec.hooks.*.timeoutMillis must be between 100 and 3600000"))]
    pub timeout_millis: Option<i32>,
}

/// How a primary past its lease is fenced.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum FenceMode {
    /// Run the demote hook (QUORATE_ROLE=fenced); if it fails, stop the process.
    #[default]
    Demote,
    /// Stop the workload process at once.
    Kill,
}

/// Which hook: the supervisor's vocabulary, the status' and the Events'.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum HookKind {
    Promote,
    Demote,
    Join,
    Position,
    Health,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Promote => "promote",
            HookKind::Demote => "demote",
            HookKind::Join => "join",
            HookKind::Position => "position",
            HookKind::Health => "health",
        }
    }

    /// The timeout when the spec gives none.
    pub fn default_timeout_millis(self) -> i32 {
        match self {
            HookKind::Promote | HookKind::Demote => 10_000,
            HookKind::Join => 600_000,
            HookKind::Position => 2_000,
            HookKind::Health => 500,
        }
    }
}

/// How the workload is told about a role change. The role file `/run/quorate/role` (JSON:
/// role, epoch, since) is always written; this adds an HTTP callback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleChange {
    /// POST the new role as JSON (`{"role":"Primary","epoch":7,"since":"..."}`) to this path and
    /// port on the pod's loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_post: Option<HttpPostAction>,
    /// Milliseconds to wait for the callback to answer, 50 to 30000 (default 1000). A workload
    /// that does not answer never delays a demotion beyond this.
    #[serde(default = "default_callback_timeout")]
    #[schemars(range(min = 50, max = 30000))]
    #[x_kube(validation = Rule::new("self >= 50 && self <= 30000").message("spec.roleChange.timeoutMillis must be between 50 and 30000"))]
    pub timeout_millis: i32,
    /// Attempts after the first failed one, 0 to 10 (default 2).
    #[serde(default = "default_callback_retries")]
    #[schemars(range(min = 0, max = 10))]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10").message("spec.roleChange.retries must be between 0 and 10"))]
    pub retries: i32,
}

fn default_callback_timeout() -> i32 {
    1000
}
fn default_callback_retries() -> i32 {
    2
}

/// An HTTP POST target on the workload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpPostAction {
    /// Request path.
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^/"))]
    pub path: String,
    /// Port of the workload, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("spec.roleChange.httpPost.port must be between 1 and 65535"))]
    pub port: i32,
}

/// Primary lease and failover limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// How long the primary may act without hearing from a Raft majority, 200 to 60000
    /// milliseconds (default 1000). It bounds crash detection: a crashed primary is replaced
    /// about one lease (plus a safety margin) after its last renewal. Shorter leases fail over
    /// faster but risk false failovers on a slow network or an overloaded node. Fixed at creation.
    #[serde(default = "default_lease_millis")]
    #[schemars(range(min = 200, max = 60000))]
    #[x_kube(
        validation = Rule::new("self >= 200 && self <= 60000").message("spec.failover.leaseMillis must be between 200 and 60000"),
        validation = Rule::new("self == oldSelf").message("spec.failover.leaseMillis is fixed when the group is created (its agents agree on it through Raft); delete and re-create the group to change it"),
    )]
    pub lease_millis: i32,
    /// Automatic failovers allowed in any hour, at least 1 (default 6). One more and the group
    /// stops failing over on its own, reports Degraded, and waits for a manual switchover.
    /// Fixed at creation.
    #[serde(default = "default_max_failovers")]
    #[schemars(range(min = 1, max = 1000))]
    #[x_kube(
        validation = Rule::new("self >= 1 && self <= 1000").message("spec.failover.maxFailoversPerHour must be between 1 and 1000"),
        validation = Rule::new("self == oldSelf").message("spec.failover.maxFailoversPerHour is fixed when the group is created (its agents agree on it through Raft); delete and re-create the group to change it"),
    )]
    pub max_failovers_per_hour: i32,
    /// Preference among healthy, equally caught-up candidates: member name (`NAME-<ordinal>`) to
    /// priority 0 to 100 (default 50); higher wins, ties go to the lowest ordinal. Priority 0
    /// means "never primary unless no other member can be".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "priorities_schema")]
    pub priorities: BTreeMap<String, i32>,
}

fn priorities_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    map_of_bounded_ints(
        g,
        0,
        100,
        "spec.failover.priorities values must be between 0 and 100",
    )
}

fn default_lease_millis() -> i32 {
    1000
}
fn default_max_failovers() -> i32 {
    6
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            lease_millis: default_lease_millis(),
            max_failovers_per_hour: default_max_failovers(),
            priorities: BTreeMap::new(),
        }
    }
}

/// How traffic is spread over the members.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.policy == 'Static' || self.policy == 'WeightedRoundRobin') || (has(self.weights) && size(self.weights) > 0)")
        .message("spec.traffic.weights: the Static and WeightedRoundRobin policies need weights, for example {NAME-0: 60, NAME-1: 40}")
        .field_path(".weights"),
    validation = Rule::new("self.policy == 'Static' || self.policy == 'WeightedRoundRobin' || !has(self.weights) || size(self.weights) == 0")
        .message("spec.traffic.weights are only used by the Static and WeightedRoundRobin policies; remove them or change spec.traffic.policy")
        .field_path(".weights"),
    validation = Rule::new("!has(self.weights) || size(self.weights) == 0 || self.weights.exists(k, self.weights[k] > 0)")
        .message("spec.traffic.weights: at least one weight must be greater than 0")
        .field_path(".weights"),
)]
pub struct TrafficSpec {
    /// The weight policy: `Equal` (every healthy member the same weight), `Static` (the declared
    /// weights as they are), `WeightedRoundRobin` (the declared weights as relative capacities,
    /// renormalised over the healthy members), `LeastLoaded` (weights from the load each member
    /// reports) or `LatencyAware` (weights from each member's response time). Unhealthy members
    /// always get weight 0.
    #[serde(default)]
    pub policy: TrafficPolicy,
    /// Declared weights for Static and WeightedRoundRobin: member name (`NAME-<ordinal>`, an
    /// existing member) to weight 0 to 1000000 (the Gateway API bound); at least one above 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "weights_schema")]
    pub weights: BTreeMap<String, i32>,
    /// Smallest relative change, in percent (0 to 100, default 10), that makes a load-driven
    /// policy publish new weights; smaller changes are noise and ignored.
    #[serde(default = "default_min_change")]
    #[schemars(range(min = 0, max = 100))]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("spec.traffic.minChangePercent must be between 0 and 100"))]
    pub min_change_percent: i32,
    /// Shortest time, in milliseconds (0 to 600000, default 2000), between two weight changes
    /// of a load-driven policy. Draining an unhealthy member is never delayed.
    #[serde(default = "default_dwell")]
    #[schemars(range(min = 0, max = 600000))]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 600000").message("spec.traffic.dwellMillis must be between 0 and 600000"))]
    pub dwell_millis: i32,
    /// Publish the weights as a Gateway API HTTPRoute named after the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRoute>,
}

fn weights_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    map_of_bounded_ints(
        g,
        0,
        MAX_WEIGHT as i64,
        "spec.traffic.weights values must be between 0 and 1000000",
    )
}

fn default_min_change() -> i32 {
    10
}
fn default_dwell() -> i32 {
    2000
}

impl Default for TrafficSpec {
    fn default() -> Self {
        Self {
            policy: TrafficPolicy::default(),
            weights: BTreeMap::new(),
            min_change_percent: default_min_change(),
            dwell_millis: default_dwell(),
            gateway: None,
        }
    }
}

/// The weight policies.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum TrafficPolicy {
    /// Every healthy member gets the same weight (round robin).
    #[default]
    Equal,
    /// The declared weights, as they are.
    Static,
    /// The declared weights as relative capacities, renormalised over the healthy members.
    WeightedRoundRobin,
    /// Weights inversely proportional to the load each member reports.
    LeastLoaded,
    /// Weights inversely proportional to each member's reported response time.
    LatencyAware,
}

impl TrafficPolicy {
    /// The policies that follow the members' load or latency reports (noisy: their changes go
    /// through hysteresis and dwell, and only their groups show the reports in the status).
    pub fn load_driven(self) -> bool {
        matches!(self, Self::LeastLoaded | Self::LatencyAware)
    }
}

/// A Gateway API HTTPRoute for the group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRoute {
    /// The Gateways (or listeners) the route attaches to, 1 to 32.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route answers, at most 16 (default: all of the listener's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
    /// Path prefix the route matches (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^/"))]
    pub path_prefix: Option<String>,
    /// Port of the member Services the route sends to; one of spec.ports (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// A reference to a Gateway, as in Gateway API's `parentRefs`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Gateway (default: the group's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// A listener of the Gateway, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
    /// A listener of the Gateway, by port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// The quorate-agent sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Compute resources of the agent container, replacing the defaults as a whole (requests:
    /// cpu 20m, memory 32Mi; limits: memory 128Mi). The agent renews the primary's lease, so
    /// keep its CPU request above zero and its memory limit well above its ~12 MiB resident set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl AgentSpec {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// The persistent volume of each member's agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of the volume (default 64Mi). The Raft log is compacted into snapshots, so it stays small.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// StorageClass of the volume (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> Quantity {
    Quantity("64Mi".to_owned())
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

impl ReplicaGroupSpec {
    /// The workload runs under the supervisor: hooks are declared.
    pub fn supervised(&self) -> bool {
        self.hooks.is_some()
    }

    /// The effective number of witnesses: unset means 1 for a PrimaryBackup group of 2.
    pub fn effective_witnesses(&self) -> i32 {
        match (self.mode, self.witnesses) {
            (_, Some(n)) => n,
            (GroupMode::PrimaryBackup, None) if self.replicas == 2 => 1,
            _ => 0,
        }
    }
}
