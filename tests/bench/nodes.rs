//! `make bench-node-loss`: `examples/redis.yaml` on three nodes of the test bed while the
//! primary's whole node fails (`hack/cluster.sh partition|freeze`, docs/testbed.md). Prints:
//!   node_partition_failover_ms p50=… p95=… n=…        the primary's node partitioned → the first
//!                                                     write acknowledged through `cache-rw`
//!   node_freeze_failover_ms p50=… p95=… n=…           the same with the node frozen
//!   node_loss_with_operator_leader_ms p50=… p95=… n=… the node of the primary and of the
//!                                                     operator leader partitioned
//!   isolated_primary_demoted_ms p50=… max=… n=…       the partition → the isolated primary's
//!                                                     Redis refusing writes (probed inside its node)
//!   two_primary_overlap_ms max=…                      the longest time two members took writes
//!                                                     at once, over every round
//! A round ends with the node restored and the group Ready again.

#[allow(dead_code)]
mod common;
#[path = "../common/manifests.rs"]
#[allow(dead_code)]
mod manifests;
#[path = "../e2e/nodes.rs"]
#[allow(dead_code)]
mod nodes;
#[path = "../e2e/operator.rs"]
#[allow(dead_code)]
mod operator;
#[path = "../e2e/smoke.rs"]
#[allow(dead_code)]
mod smoke;
#[path = "../e2e/support.rs"]
mod support;
#[path = "../e2e/workloads.rs"]
#[allow(dead_code)]
mod workloads;

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use support::Ctx;

/// Rounds per kind of fault; `BENCH_ROUNDS` overrides (a round with the operator leader takes
/// a few minutes: the node stays out until its taints are lifted).
fn rounds() -> usize {
    common::rounds(5)
}

async fn primary_and_epoch(ctx: &Ctx, ns: &str) -> Result<(String, u64)> {
    let s = operator::groups(ctx, ns)
        .get(workloads::GROUP)
        .await?
        .status
        .context("status")?;
    Ok((
        s.primary.context("no primary")?,
        s.epoch.unwrap_or(0) as u64,
    ))
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::from_env().await?;
        operator::ensure_operator(&ctx).await?;
        let ns = ctx.namespace("bench-nodes")?;
        let mut group = workloads::redis_example(&ctx)?;
        // The bench trips the flap guard otherwise (that is what it is for).
        group["spec"]["failover"]["maxFailoversPerHour"] = json!(1000);
        workloads::create_redis(&ctx, &ns.name, &group).await?;
        let nodes = nodes::nodes_of(&ctx, &ns.name, &nodes::members()).await?;
        let (mut partition, mut freeze, mut leader, mut demoted) = (vec![], vec![], vec![], vec![]);
        let mut overlap = 0u128;
        for (fault, figures) in [("partition", &mut partition), ("freeze", &mut freeze)] {
            for _ in 0..rounds() {
                let (primary, epoch) = primary_and_epoch(&ctx, &ns.name).await?;
                let (primary, epoch) = nodes::primary_away_from_the_operator_leader(
                    &ctx, &ns.name, primary, epoch, &nodes,
                )
                .await?;
                let round = nodes::node_fault_round(
                    &ctx,
                    &ns.name,
                    fault,
                    &primary,
                    epoch,
                    &nodes[&primary],
                    Duration::ZERO,
                )
                .await?;
                figures.push(round.failover_ms);
                overlap = overlap.max(round.overlap_ms);
                if fault == "partition" {
                    demoted.push(round.demoted_ms.with_context(|| {
                        format!(
                            "{} never refused a write inside its partitioned node",
                            round.old
                        )
                    })?);
                }
            }
        }
        for _ in 0..rounds() {
            let (primary, epoch) = primary_and_epoch(&ctx, &ns.name).await?;
            let (primary, epoch, node, _) =
                nodes::primary_with_the_operator_leader(&ctx, &ns.name, primary, epoch, &nodes)
                    .await?;
            let round = nodes::node_fault_round(
                &ctx,
                &ns.name,
                "partition",
                &primary,
                epoch,
                &node,
                Duration::ZERO,
            )
            .await?;
            leader.push(round.failover_ms);
            overlap = overlap.max(round.overlap_ms);
            demoted.extend(round.demoted_ms);
        }
        for (name, figures) in [
            ("node_partition_failover_ms", partition),
            ("node_freeze_failover_ms", freeze),
            ("node_loss_with_operator_leader_ms", leader),
        ] {
            let s = common::Summary::of(figures);
            println!("{name} p50={} p95={} n={}", s.p50, s.p95, s.n);
        }
        let s = common::Summary::of(demoted);
        println!(
            "isolated_primary_demoted_ms p50={} max={} n={}",
            s.p50, s.max, s.n
        );
        println!("two_primary_overlap_ms max={overlap}");
        Ok(())
    })
}
