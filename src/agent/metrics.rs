//! Prometheus metrics of the agent (`/metrics`).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub method: String,
    /// `operator`, `member`, `unidentified` (see `authz::Caller::kind`).
    pub caller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: String,
}

fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0002, 2.0, 16))
}

pub struct Metrics {
    pub registry: Registry,
    /// 1 for the role this member publishes, 0 for the others.
    pub role: Family<RoleLabels, Gauge>,
    pub epoch: Gauge,
    pub term: Gauge,
    pub is_coordinator: Gauge,
    pub lease_remaining_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Appointments this node made as coordinator, by reason.
    pub failovers: Family<CauseLabels, Counter>,
    pub demotions: Family<CauseLabels, Counter>,
    pub rpc_requests: Family<MethodLabels, Counter>,
    pub rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// RPCs refused because the caller's certificate may not call them.
    pub rpc_refused: Family<RefusalLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        crate::build_info::register(&mut root, "agent");
        let registry = root.sub_registry_with_prefix("quorate_agent");
        let role = Family::<RoleLabels, Gauge>::default();
        let epoch = Gauge::default();
        let term = Gauge::default();
        let is_coordinator = Gauge::default();
        let lease_remaining_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let failovers = Family::<CauseLabels, Counter>::default();
        let demotions = Family::<CauseLabels, Counter>::default();
        let rpc_requests = Family::<MethodLabels, Counter>::default();
        let rpc_seconds =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                rpc_histogram,
            );
        let rpc_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "role",
            "Role this member publishes (1 = current)",
            role.clone(),
        );
        registry.register("epoch", "Current fencing epoch", epoch.clone());
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register(
            "coordinator",
            "1 while this node is the Raft leader",
            is_coordinator.clone(),
        );
        registry.register(
            "lease_remaining_seconds",
            "Seconds left on the primary lease this member holds",
            lease_remaining_seconds.clone(),
        );
        registry.register(
            "failovers",
            "Primary appointments made by this coordinator",
            failovers.clone(),
        );
        registry.register(
            "demotions",
            "Times this member stopped acting as primary",
            demotions.clone(),
        );
        registry.register("rpc_requests", "gRPC requests served", rpc_requests.clone());
        registry.register(
            "rpc_duration_seconds",
            "gRPC request latency",
            rpc_seconds.clone(),
        );
        registry.register(
            "rpc_refused",
            "gRPC requests refused: the caller's certificate may not call the method",
            rpc_refused.clone(),
        );
        Self {
            registry: root,
            role,
            epoch,
            term,
            is_coordinator,
            lease_remaining_seconds,
            failovers,
            demotions,
            rpc_requests,
            rpc_seconds,
            rpc_refused,
        }
    }

    pub fn rpc_refused(&self, method: &str, caller: &str) {
        self.rpc_refused
            .get_or_create(&RefusalLabels {
                method: method.to_owned(),
                caller: caller.to_owned(),
            })
            .inc();
    }

    pub fn set_role(&self, role: &str) {
        for r in ["Primary", "Backup", "Active", "Witness", "Unknown"] {
            self.role
                .get_or_create(&RoleLabels { role: r.into() })
                .set(i64::from(r == role));
        }
    }

    /// Times one RPC; counts it when dropped.
    pub fn rpc(&self, method: &'static str) -> RpcTimer<'_> {
        RpcTimer {
            metrics: self,
            method,
            start: Instant::now(),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub struct RpcTimer<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    start: Instant,
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        let labels = MethodLabels {
            method: self.method.into(),
        };
        self.metrics.rpc_requests.get_or_create(&labels).inc();
        self.metrics
            .rpc_seconds
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        let m = Metrics::new();
        m.set_role("Primary");
        m.epoch.set(3);
        drop(m.rpc("Status"));
        let text = m.encode();
        assert!(
            text.contains("quorate_agent_role{role=\"Primary\"} 1"),
            "{text}"
        );
        assert!(text.contains("quorate_agent_epoch 3"), "{text}");
        assert!(
            text.contains("quorate_agent_rpc_requests_total{method=\"Status\"} 1"),
            "{text}"
        );
    }
}
