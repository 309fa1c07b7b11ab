//! `make bench-failover`: failover through Kubernetes routing on the test bed.
//! 20 times the primary's pod is deleted with grace period 0, 20 times with the default grace
//! period; each time from the delete call until the `-rw` EndpointSlice names the new primary
//! **and** a request through the `-rw` Service is answered by it. Then the operator's resident
//! memory with 200 groups. Prints:
//!   failover_crash_ms p50=… p95=… max=… n=20
//!   failover_graceful_ms p50=… p95=… max=… n=20
//!   operator_rss_mib groups=… rss=…

#[allow(dead_code)]
mod common;
#[path = "../common/manifests.rs"]
#[allow(dead_code)]
mod manifests;
#[path = "../e2e/operator.rs"]
#[allow(dead_code)]
mod operator;
#[path = "../e2e/smoke.rs"]
#[allow(dead_code)]
mod smoke;
#[path = "../e2e/support.rs"]
mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use support::Ctx;

const ROUNDS: usize = 20;
const GROUPS_FOR_RSS: usize = 200;

async fn failovers(ctx: &Ctx, grace: Option<u32>, label: &str) -> Result<Vec<u128>> {
    let ns = ctx.namespace(&format!("bench-{label}"))?;
    let mut group = operator::test_group(ctx, "db", "PrimaryBackup", 3);
    // The bench trips the flap guard otherwise (that is what it is for).
    group["spec"]["failover"] = json!({"maxFailoversPerHour": 1000});
    ctx.kubectl_stdin(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&group.to_string()),
    )?;
    let mut out = Vec::new();
    for round in 0..ROUNDS {
        let m = common::failover(ctx, &ns.name, "db", 3, grace)
            .await
            .with_context(|| format!("{label} round {round}"))?;
        eprintln!(
            "  {label} round {round}: {} ms (-rw EndpointSlice after {} ms)",
            m.total_ms, m.slice_ms
        );
        out.push(m.total_ms);
    }
    Ok(out)
}

/// Resident memory of the operator leader with many pod-less groups.
async fn operator_rss(ctx: &Ctx) -> Result<f64> {
    let ns = common::podless_namespace(ctx, "bench-rss")?;
    common::podless_groups(ctx, &ns.name, 0..GROUPS_FOR_RSS).await?;
    // Let the per-group streams settle into their steady state before sampling.
    tokio::time::sleep(Duration::from_secs(20)).await;
    common::operator_rss_mib(ctx).await
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::from_env().await?;
        operator::ensure_operator(&ctx).await?;
        // Each figure as soon as it is measured: a later phase that fails keeps the earlier ones.
        let crash = failovers(&ctx, Some(0), "crash").await?;
        println!("failover_crash_ms {}", common::Summary::of(crash));
        let graceful = failovers(&ctx, None, "graceful").await?;
        println!("failover_graceful_ms {}", common::Summary::of(graceful));
        let rss = operator_rss(&ctx).await?;
        println!("operator_rss_mib groups={GROUPS_FOR_RSS} rss={rss:.1}");
        Ok(())
    })
}
