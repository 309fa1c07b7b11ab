//! Prometheus metrics (`/metrics` on `--metrics-addr`) and the health endpoints (`/healthz`,
//! `/readyz` on `--health-addr`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{GroupPhase, ReplicaGroupStatus};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
/// (namespace, name) of a group.
type GroupKey = (String, String);

/// The per-group gauges: what dashboards and alerts read about each group
/// (charts/quorate/files/). Their names are `quorate_operator_` + [`GroupGauge::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupGauge {
    Epoch,
    Condition,
    PodsOutdated,
    Member,
    MemberHealthy,
    MemberWeight,
    LastFailoverDuration,
    CertificateExpiry,
}

impl GroupGauge {
    pub const ALL: [GroupGauge; 8] = [
        GroupGauge::Epoch,
        GroupGauge::Condition,
        GroupGauge::PodsOutdated,
        GroupGauge::Member,
        GroupGauge::MemberHealthy,
        GroupGauge::MemberWeight,
        GroupGauge::LastFailoverDuration,
        GroupGauge::CertificateExpiry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GroupGauge::Epoch => "group_epoch",
            GroupGauge::Condition => "group_condition",
            GroupGauge::PodsOutdated => "group_pods_outdated",
            GroupGauge::Member => "group_member",
            GroupGauge::MemberHealthy => "group_member_healthy",
            GroupGauge::MemberWeight => "group_member_weight",
            GroupGauge::LastFailoverDuration => "group_last_failover_duration_seconds",
            GroupGauge::CertificateExpiry => "group_certificate_expiry_timestamp_seconds",
        }
    }

    fn help(self) -> &'static str {
        match self {
            GroupGauge::Epoch => "The group's fencing epoch as last reported in its status",
            GroupGauge::Condition => {
                "The group's conditions (condition, reason): 1 while True, 0 while False"
            }
            GroupGauge::PodsOutdated => {
                "The group's pods on an older pod template than their StatefulSet's (a roll to go)"
            }
            GroupGauge::Member => "1 for each member of the group, with its role",
            GroupGauge::MemberHealthy => "1 while the member's agent reports its workload healthy",
            GroupGauge::MemberWeight => "The member's traffic weight (0 = drained)",
            GroupGauge::LastFailoverDuration => {
                "The group's last change of primary, from detection to the -rw EndpointSlice naming the new one"
            }
            GroupGauge::CertificateExpiry => {
                "When the members' certificate expires (Unix time); it is re-issued 30 days before"
            }
        }
    }
}

/// A group's gauge series for one status: pure, so what a dashboard sees is unit-tested.
/// `certificate_expiry` is the members' certificate's end, Unix seconds.
pub fn group_series(
    namespace: &str,
    name: &str,
    status: &ReplicaGroupStatus,
    outdated_pods: usize,
    certificate_expiry: Option<i64>,
) -> Vec<(GroupGauge, Labels, f64)> {
    let labels = group_labels(namespace, name);
    let with = |extra: &[(&str, &str)]| {
        let mut l = labels.clone();
        l.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        l
    };
    let mut out = vec![
        (
            GroupGauge::Epoch,
            labels.clone(),
            status.epoch.unwrap_or(0) as f64,
        ),
        (
            GroupGauge::PodsOutdated,
            labels.clone(),
            outdated_pods as f64,
        ),
    ];
    for c in &status.conditions {
        out.push((
            GroupGauge::Condition,
            with(&[("condition", &c.type_), ("reason", &c.reason)]),
            if c.status == "True" { 1.0 } else { 0.0 },
        ));
    }
    for m in &status.members {
        let member = with(&[("member", &m.name)]);
        out.push((
            GroupGauge::Member,
            with(&[("member", &m.name), ("role", m.role.as_str())]),
            1.0,
        ));
        out.push((
            GroupGauge::MemberHealthy,
            member.clone(),
            if m.healthy { 1.0 } else { 0.0 },
        ));
        out.push((GroupGauge::MemberWeight, member, f64::from(m.weight)));
    }
    if let Some(ms) = status
        .last_failover
        .as_ref()
        .and_then(|f| f.duration_millis)
    {
        out.push((
            GroupGauge::LastFailoverDuration,
            labels.clone(),
            ms.max(0) as f64 / 1000.0,
        ));
    }
    if let Some(at) = certificate_expiry {
        out.push((GroupGauge::CertificateExpiry, labels, at as f64));
    }
    out
}

fn group_labels(namespace: &str, name: &str) -> Labels {
    vec![
        ("namespace".to_owned(), namespace.to_owned()),
        ("group".to_owned(), name.to_owned()),
    ]
}

fn failover_labels(namespace: &str, name: &str, reason: &str) -> Labels {
    let mut labels = group_labels(namespace, name);
    labels.push(("reason".to_owned(), reason.to_owned()));
    labels
}

/// The reasons of `status.lastFailover` (api::FailoverRecord), the `reason` label of failovers.
const FAILOVER_REASONS: &[&str] = &[
    "LeaseExpired",
    "Released",
    "WorkloadUnhealthy",
    "Switchover",
];

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<Labels, Counter>,
    pub reconcile_errors: Family<Labels, Counter>,
    pub reconcile_duration: Histogram,
    failovers: Family<Labels, Counter>,
    pub failover_duration: Histogram,
    pub groups: Family<Labels, Gauge>,
    /// Per group (`namespace`, `group`, and `member` or `condition` where the gauge says): a
    /// few series per group and member, replaced on each reconcile and removed with the group.
    group_gauges: HashMap<GroupGauge, Family<Labels, FloatGauge>>,
    /// The series each group published last, to remove the ones a new status no longer has
    /// (a member scaled away, a condition's old reason).
    published: Mutex<HashMap<GroupKey, Vec<(GroupGauge, Labels)>>>,
    pub agent_streams: Gauge,
    pub agent_state_changes: Counter,
    pub leader: Gauge,
    resident_memory: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    phases: Mutex<HashMap<String, Option<GroupPhase>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        crate::build_info::register(&mut root, "operator");
        let registry = root.sub_registry_with_prefix("quorate_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let reconcile_errors = Family::<Labels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let failovers = Family::<Labels, Counter>::default();
        let failover_duration = Histogram::new(exponential_buckets(0.1, 1.5, 14));
        let groups = Family::<Labels, Gauge>::default();
        let group_gauges: HashMap<GroupGauge, Family<Labels, FloatGauge>> = GroupGauge::ALL
            .into_iter()
            .map(|g| (g, Family::default()))
            .collect();
        let agent_streams = Gauge::default();
        let agent_state_changes = Counter::default();
        let leader = Gauge::default();
        let resident_memory = Gauge::default();
        let cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "failovers",
            "Changes of primary routed by the operator, by group and reason",
            failovers.clone(),
        );
        for gauge in GroupGauge::ALL {
            registry.register(gauge.name(), gauge.help(), group_gauges[&gauge].clone());
        }
        registry.register(
            "failover_duration_seconds",
            "From the group noticing the old primary gone to the -rw EndpointSlice naming the new one",
            failover_duration.clone(),
        );
        registry.register("groups", "ReplicaGroups by phase", groups.clone());
        registry.register(
            "agent_streams",
            "Open group state streams",
            agent_streams.clone(),
        );
        registry.register(
            "agent_state_changes",
            "Group state changes received from agents",
            agent_state_changes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the elected leader",
            leader.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the operator process",
            resident_memory.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "CPU time (user and system) the operator process has used",
            cpu_seconds.clone(),
        );
        Self {
            registry: root,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            failovers,
            failover_duration,
            groups,
            group_gauges,
            published: Mutex::default(),
            agent_streams,
            agent_state_changes,
            leader,
            resident_memory,
            cpu_seconds,
            phases: Mutex::default(),
        }
    }

    /// Tracks each group's phase and republishes the per-phase counts.
    pub fn record_phase(&self, group: &str, phase: Option<GroupPhase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        if phases.get(group) == Some(&phase) {
            return;
        }
        phases.insert(group.to_owned(), phase);
        self.publish_phases(&phases);
    }

    fn publish_phases(&self, phases: &HashMap<String, Option<GroupPhase>>) {
        let mut counts: HashMap<String, i64> = HashMap::new();
        for p in phases.values() {
            *counts
                .entry(p.map_or("Unknown".to_owned(), |p| format!("{p:?}")))
                .or_default() += 1;
        }
        for name in [
            "Pending",
            "Bootstrapping",
            "Ready",
            "Degraded",
            "Failed",
            "Unknown",
        ] {
            self.groups
                .get_or_create(&vec![("phase".to_owned(), name.to_owned())])
                .set(counts.get(name).copied().unwrap_or(0));
        }
    }

    /// A group's own series, from the status just written, the roll's pods to go and the
    /// members' certificate's end (Unix seconds).
    pub fn record_group(
        &self,
        namespace: &str,
        name: &str,
        status: &ReplicaGroupStatus,
        outdated_pods: usize,
        certificate_expiry: Option<i64>,
    ) {
        let series = group_series(namespace, name, status, outdated_pods, certificate_expiry);
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        for (gauge, labels) in published.remove(&key).unwrap_or_default() {
            if !series.iter().any(|(g, l, _)| *g == gauge && *l == labels) {
                self.group_gauges[&gauge].remove(&labels);
            }
        }
        for (gauge, labels, value) in &series {
            self.group_gauges[gauge].get_or_create(labels).set(*value);
        }
        published.insert(key, series.into_iter().map(|(g, l, _)| (g, l)).collect());
        // Every reason's counter exists from the start, at 0: `increase()` over a counter that
        // first appears at 1 is 0, and a group's first failover would not show.
        for reason in FAILOVER_REASONS {
            drop(
                self.failovers
                    .get_or_create(&failover_labels(namespace, name, reason)),
            );
        }
    }

    /// Counts a change of primary of a group, once it is routed.
    pub fn count_failover(&self, namespace: &str, name: &str, reason: &str) {
        self.failovers
            .get_or_create(&failover_labels(namespace, name, reason))
            .inc();
    }

    /// Drops a deleted group's series (and its phase from the per-phase counts).
    pub fn forget_group(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let gone = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        for (gauge, series) in gone.unwrap_or_default() {
            self.group_gauges[&gauge].remove(&series);
        }
        for reason in FAILOVER_REASONS {
            self.failovers
                .remove(&failover_labels(namespace, name, reason));
        }
        let key = format!("{namespace}/{name}");
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        if phases.remove(&key).is_some() {
            self.publish_phases(&phases);
        }
    }

    /// Drops every group's series: a replica that stops leading must not go on serving what
    /// it last saw (a group's old `Available` 0 would keep an alert firing); the new leader
    /// publishes them.
    pub fn forget_all_groups(&self) {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for family in self.group_gauges.values() {
            family.clear();
        }
        self.failovers.clear();
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        phases.clear();
        self.publish_phases(&phases);
    }

    pub fn encode(&self) -> String {
        self.resident_memory.set(resident_memory_bytes());
        self.cpu_seconds.set(cpu_seconds());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Starts the metrics and health servers; fails when an address cannot be bound.
pub async fn serve(
    metrics_addr: SocketAddr,
    health_addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let metrics_app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    let health_app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    let health_listener = tokio::net::TcpListener::bind(health_addr).await?;
    tokio::spawn(async move { axum::serve(metrics_listener, metrics_app).await });
    tokio::spawn(async move { axum::serve(health_listener, health_app).await });
    Ok(())
}

/// Resident set size from /proc/self/statm (pages), 0 where there is no /proc.
fn resident_memory_bytes() -> i64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf takes a constant and reads no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * if page > 0 { page } else { 4096 }
}

/// User and system CPU time of this process, seconds (getrusage).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_status(members: &[(&str, &str, bool, i32)]) -> ReplicaGroupStatus {
        let members: Vec<_> = members
            .iter()
            .map(|(name, role, healthy, weight)| {
                serde_json::json!({"name": name, "role": role, "healthy": healthy,
                                   "voter": true, "weight": weight})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "epoch": 4,
            "members": members,
            "lastFailover": {"durationMillis": 1250, "reason": "LeaseExpired", "epoch": 4},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                 "lastTransitionTime": "2026-12-07T10:00:00Z"},
                {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "",
                 "lastTransitionTime": "2026-12-07T10:00:00Z"},
            ],
        }))
        .expect("fixture status")
    }

    #[test]
    fn per_group_series_are_labelled_and_go_with_the_group() {
        let m = Metrics::new();
        let status = fixture_status(&[
            ("cache-0", "Primary", true, 100),
            ("cache-1", "Backup", false, 0),
        ]);
        m.record_group("shop", "cache", &status, 2, Some(1_800_000_000));
        m.count_failover("shop", "cache", "Switchover");
        m.record_phase("shop/cache", Some(GroupPhase::Ready));
        let text = m.encode();
        for line in [
            r#"quorate_operator_group_epoch{namespace="shop",group="cache"} 4.0"#,
            r#"quorate_operator_group_condition{namespace="shop",group="cache",condition="Ready",reason="Ready"} 1.0"#,
            r#"quorate_operator_group_condition{namespace="shop",group="cache",condition="Degraded",reason="AsExpected"} 0.0"#,
            r#"quorate_operator_group_pods_outdated{namespace="shop",group="cache"} 2.0"#,
            r#"quorate_operator_group_member{namespace="shop",group="cache",member="cache-0",role="Primary"} 1.0"#,
            r#"quorate_operator_group_member_healthy{namespace="shop",group="cache",member="cache-1"} 0.0"#,
            r#"quorate_operator_group_member_weight{namespace="shop",group="cache",member="cache-0"} 100.0"#,
            r#"quorate_operator_group_last_failover_duration_seconds{namespace="shop",group="cache"} 1.25"#,
            r#"quorate_operator_group_certificate_expiry_timestamp_seconds{namespace="shop",group="cache"} 1800000000.0"#,
            r#"quorate_operator_failovers_total{namespace="shop",group="cache",reason="Switchover"} 1"#,
            r#"quorate_operator_failovers_total{namespace="shop",group="cache",reason="LeaseExpired"} 0"#,
            r#"quorate_operator_groups{phase="Ready"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A member scaled away and a role changed: their old series go.
        let status = fixture_status(&[("cache-1", "Primary", true, 100)]);
        m.record_group("shop", "cache", &status, 0, Some(1_800_000_000));
        let text = m.encode();
        assert!(!text.contains(r#"member="cache-0""#), "{text}");
        assert!(
            !text.contains(r#"member="cache-1",role="Backup""#),
            "{text}"
        );
        assert!(
            text.contains(r#"quorate_operator_group_member{namespace="shop",group="cache",member="cache-1",role="Primary"} 1.0"#),
            "{text}"
        );
        m.record_group("shop", "other", &status, 0, None);
        m.forget_group("shop", "cache");
        let text = m.encode();
        assert!(!text.contains(r#"group="cache""#), "{text}");
        assert!(text.contains(r#"group="other""#), "{text}");
        assert!(
            text.contains(r#"quorate_operator_groups{phase="Ready"} 0"#),
            "{text}"
        );
        m.forget_all_groups();
        assert!(!m.encode().contains("group="), "{}", m.encode());
    }
}
