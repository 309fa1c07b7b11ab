//! `make bench-workloads`: Redis (`examples/redis.yaml`) failing over on the test bed with a
//! writer acknowledging every write with `WAIT 1` through `cache-rw`. Prints:
//!   redis_failover_ms p50=… p95=… n=…        kill the primary's pod (grace 0) → first acked write
//!   redis_acked_writes_lost max=… n=…        acknowledged before the kill, absent after
//!   redis_switchover_ms p50=… n=…            `kubectl quorate switchover` → first acked write
//!   fenced_after_agent_freeze_ms p50=… max=… n=…   SIGSTOP the primary's agent → Redis refuses writes
//! and PostgreSQL (`examples/postgres.yaml`, synchronous commit to ANY 1 standby) with a writer
//! committing through `db-rw`:
//!   postgres_failover_ms p50=… p95=… n=…     kill the primary's pod (grace 0) → first acked commit
//!   postgres_acked_writes_lost max=… n=…     acknowledged before the kill, absent after
//!   postgres_switchover_ms p50=… n=…         `kubectl quorate switchover` → first acked commit
//!   postgres_rejoin_ms p50=… n=…             the kill → the old member streams from the new primary

#[allow(dead_code)]
mod common;
#[path = "../common/manifests.rs"]
#[allow(dead_code)]
mod manifests;
#[path = "../e2e/operator.rs"]
#[allow(dead_code)]
mod operator;
#[path = "../e2e/postgres.rs"]
#[allow(dead_code)]
mod postgres;
#[path = "../e2e/smoke.rs"]
#[allow(dead_code)]
mod smoke;
#[path = "../e2e/support.rs"]
mod support;
#[path = "../e2e/workloads.rs"]
#[allow(dead_code)]
mod workloads;

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use support::Ctx;

const FAILOVERS: usize = 10;
const SWITCHOVERS: usize = 10;
const FREEZES: usize = 5;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::from_env().await?;
        operator::ensure_operator(&ctx).await?;
        // `make bench-workloads WORKLOADS=postgres` measures only PostgreSQL.
        if std::env::var("WORKLOADS").is_ok_and(|w| w == "postgres") {
            return postgres_rounds(&ctx).await;
        }
        let ns = ctx.namespace("bench-redis")?;
        let mut group = workloads::redis_example(&ctx)?;
        // The bench trips the flap guard otherwise (that is what it is for).
        group["spec"]["failover"]["maxFailoversPerHour"] = json!(1000);
        let (mut primary, mut epoch) = workloads::create_redis(&ctx, &ns.name, &group).await?;

        let mut failover_ms = Vec::new();
        let mut lost = Vec::new();
        for _ in 0..FAILOVERS {
            let round = workloads::failover_round(
                &ctx,
                &ns.name,
                &primary,
                epoch,
                workloads::Fault::PodDeleted,
            )
            .await?;
            failover_ms.push(round.millis);
            lost.push(round.lost);
            let g =
                operator::wait_ready(&ctx, &ns.name, workloads::GROUP, Duration::from_secs(180))
                    .await?;
            let s = g.status.unwrap_or_default();
            (primary, epoch) = (s.primary.unwrap_or_default(), s.epoch.unwrap_or(0) as u64);
        }
        let s = common::Summary::of(failover_ms);
        println!("redis_failover_ms p50={} p95={} n={}", s.p50, s.p95, s.n);
        println!(
            "redis_acked_writes_lost max={} n={}",
            lost.iter().max().copied().unwrap_or(0),
            lost.len()
        );

        let mut switchover_ms = Vec::new();
        for _ in 0..SWITCHOVERS {
            let round = workloads::failover_round(
                &ctx,
                &ns.name,
                &primary,
                epoch,
                workloads::Fault::Switchover,
            )
            .await?;
            anyhow::ensure!(
                round.lost == 0,
                "{} acknowledged writes lost in a switchover",
                round.lost
            );
            switchover_ms.push(round.millis);
            let g =
                operator::wait_ready(&ctx, &ns.name, workloads::GROUP, Duration::from_secs(180))
                    .await?;
            let s = g.status.unwrap_or_default();
            (primary, epoch) = (s.primary.unwrap_or_default(), s.epoch.unwrap_or(0) as u64);
        }
        let s = common::Summary::of(switchover_ms);
        println!("redis_switchover_ms p50={} n={}", s.p50, s.n);

        let mut fenced = Vec::new();
        for _ in 0..FREEZES {
            let (ms, p, e) = workloads::freeze_round(&ctx, &ns.name, &primary, epoch).await?;
            fenced.push(ms);
            (primary, epoch) = (p, e);
        }
        let s = common::Summary::of(fenced);
        println!(
            "fenced_after_agent_freeze_ms p50={} max={} n={}",
            s.p50, s.max, s.n
        );
        postgres_rounds(&ctx).await
    })
}

async fn postgres_rounds(ctx: &Ctx) -> Result<()> {
    let ns = ctx.namespace("bench-postgres")?;
    let (mut docs, password) = postgres::postgres_example(ctx)?;
    for doc in &mut docs {
        if doc["kind"] == "ReplicaGroup" {
            doc["spec"]["failover"]["maxFailoversPerHour"] = json!(1000);
        }
    }
    let (mut primary, mut epoch) =
        postgres::create_postgres(ctx, &ns.name, &docs, &password).await?;
    let mut failover_ms = Vec::new();
    let mut rejoin_ms = Vec::new();
    let mut lost = Vec::new();
    for _ in 0..FAILOVERS {
        let round = postgres::failover_round(
            ctx,
            &ns.name,
            &password,
            &primary,
            epoch,
            workloads::Fault::PodDeleted,
        )
        .await?;
        eprintln!(
            "postgres failover {} -> {}: {} ms, {} lost",
            round.old, round.new, round.millis, round.lost
        );
        failover_ms.push(round.millis);
        lost.push(round.lost);
        postgres::wait_streaming(
            ctx,
            &ns.name,
            &password,
            &round.new,
            std::slice::from_ref(&round.old),
            Duration::from_secs(180),
        )
        .await?;
        rejoin_ms.push(round.fault_at.elapsed().as_millis());
        let g =
            operator::wait_ready(ctx, &ns.name, postgres::GROUP, Duration::from_secs(180)).await?;
        let s = g.status.unwrap_or_default();
        (primary, epoch) = (s.primary.unwrap_or_default(), s.epoch.unwrap_or(0) as u64);
    }
    let s = common::Summary::of(failover_ms);
    println!("postgres_failover_ms p50={} p95={} n={}", s.p50, s.p95, s.n);
    println!(
        "postgres_acked_writes_lost max={} n={}",
        lost.iter().max().copied().unwrap_or(0),
        lost.len()
    );
    let mut switchover_ms = Vec::new();
    for _ in 0..SWITCHOVERS {
        let round = postgres::failover_round(
            ctx,
            &ns.name,
            &password,
            &primary,
            epoch,
            workloads::Fault::Switchover,
        )
        .await?;
        anyhow::ensure!(
            round.lost == 0,
            "{} acknowledged commits lost in a switchover",
            round.lost
        );
        switchover_ms.push(round.millis);
        let g =
            operator::wait_ready(ctx, &ns.name, postgres::GROUP, Duration::from_secs(180)).await?;
        let s = g.status.unwrap_or_default();
        (primary, epoch) = (s.primary.unwrap_or_default(), s.epoch.unwrap_or(0) as u64);
    }
    let s = common::Summary::of(switchover_ms);
    println!("postgres_switchover_ms p50={} n={}", s.p50, s.n);
    let s = common::Summary::of(rejoin_ms);
    println!("postgres_rejoin_ms p50={} n={}", s.p50, s.n);
    Ok(())
}
