//! `make bench-weights`: weight convergence and split accuracy through a real Gateway (Traefik on
//! the test bed, `docs/testbed-gateway.md`). Prints:
//!   weights_converge_ms p50=… p95=… n=16
//!   split_error_pp max=…
//!
//! **weights_converge_ms**: a `LeastLoaded` group `web` of three test-workload members
//! (`minChangePercent` 10, `dwellMillis` 250). Each round changes one member's load with
//! `POST /admin/load` on its pod (0 → 10, then 10 → 0, member after member), which moves the
//! policy's target between 3333/3333/3333 and 4444/1111/4444 (a member at load 10 while the
//! others idle gets a ninth of the traffic). Measured: from just before the POST until the
//! send time of the first request of the first window of 90 consecutive requests through the
//! Gateway whose split matches the new target within 3 percentage points (`until_split` of the
//! traffic suite). 90 requests are ten whole cycles of Traefik's smooth weighted round robin
//! under either target; the two targets differ by 22 points for the member that changed, so a
//! matching window holds at most about 12 requests of the old split (a few tens of ms at the
//! request rate here): the figure is the time until the data plane applies the new split,
//! give or take those few requests. Each round also checks that the HTTPRoute carried exactly
//! the weights the operator's own policy code computes for the new loads. What the figure
//! covers: the workload's load header → the agent's next health check (every 250 ms) → its next
//! report to the coordinator (every leaseMillis / 4 = 250 ms) → the state stream to the
//! operator → a reconcile → the HTTPRoute write → Traefik's watch, its 200 ms provider throttle
//! and reload. Rounds are spaced by at least a second after the previous change, so the dwell
//! never holds a change here (a load change within `dwellMillis` of the previous weight change
//! waits for the rest of it).
//!
//! **split_error_pp**: a `Static` group declared 60/30/10, then 20/30/50, 90/5/5 and 34/33/33.
//! For each: wait until the group reports RoutingConverged with those weights in the HTTPRoute
//! and a 100-request window through the Gateway is within 5 points of the split (the new
//! configuration is live in the data plane), then send 1000 fresh requests and take the largest
//! deviation, in percentage points, of any member's observed share from its declared share
//! (failed requests count in the total). The figure is the worst over the four splits.

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
#[path = "../e2e/traffic.rs"]
#[allow(dead_code)]
mod traffic;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::json;
use support::Ctx;
use traffic::{
    MEMBERS, RouteLog, SPLIT_TOLERANCE_PP, ms_since, shares, show, split_error, target_shares,
};

/// Convergence rounds: each member's load goes up once and back down once, and again.
const ROUNDS: usize = 16;
/// The load a round gives a member (any value: with the others idle, the split is 4:1:4).
const LOAD: f64 = 10.0;
const DWELL_MILLIS: u64 = 250;
/// Requests per sliding window: ten cycles of 4:1:4 (9 requests) and thirty of 1:1:1.
const WINDOW: usize = 90;
/// A round that has not converged by then fails the bench.
const ROUND_LIMIT: Duration = Duration::from_secs(15);
const MAX_REQUESTS_PER_ROUND: usize = 20_000;

/// The Static splits, in an order where each differs from the previous by 14 points or more.
const SPLITS: [[i32; 3]; 4] = [[60, 30, 10], [20, 30, 50], [90, 5, 5], [34, 33, 33]];
const SPLIT_REQUESTS: usize = 1000;
/// "The new configuration is live": a window within this of the new split (the splits are far
/// further apart); the measurement is the 1000 requests after it.
const LIVE_TOLERANCE_PP: f64 = 5.0;

/// Nearest-rank percentile of sorted values.
fn nearest_rank(sorted: &[u128], p: f64) -> u128 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn by_member<T: Copy>(values: [T; 3]) -> BTreeMap<String, T> {
    MEMBERS
        .iter()
        .map(|m| (*m).to_owned())
        .zip(values)
        .collect()
}

/// One round: set `member`'s load, wait until the Gateway applies the split the policy wants.
async fn converge_round(
    ctx: &Ctx,
    setup: &traffic::Setup,
    log: &RouteLog,
    loads: &mut BTreeMap<String, f64>,
    member: &str,
    load: f64,
) -> Result<u128> {
    let ip = operator::pod_ip(ctx, &setup.ns.name, member)
        .await?
        .with_context(|| format!("{member} has no pod IP"))?;
    loads.insert(member.to_owned(), load);
    let wanted = traffic::least_loaded_weights(loads);
    let target = target_shares(&wanted);
    let started = Instant::now();
    let (code, body) = ctx
        .http_post(&format!("http://{ip}:8080/admin/load?value={load}"), "")
        .await?;
    ensure!(
        code == 204,
        "POST /admin/load on {member}: HTTP {code}: {body}"
    );
    let held = traffic::until_split(
        ctx,
        &setup.host,
        &target,
        SPLIT_TOLERANCE_PP,
        WINDOW,
        started + ROUND_LIMIT,
        MAX_REQUESTS_PER_ROUND,
    )
    .await;
    let (written, accepted) = log.applied(&wanted, started);
    let breakdown = format!(
        "route {wanted:?} written +{} ms, accepted +{} ms",
        ms_since(started, written),
        ms_since(started, accepted)
    );
    let held = held.with_context(|| breakdown.clone())?;
    ensure!(
        written.is_some(),
        "the split matched but the HTTPRoute never carried {wanted:?}"
    );
    let ms = held.saturating_duration_since(started).as_millis();
    eprintln!("  {member} load {load}: {breakdown}, split applied in the data plane +{ms} ms");
    Ok(ms)
}

async fn convergence(ctx: &Ctx) -> Result<Vec<u128>> {
    let traffic =
        json!({"policy": "LeastLoaded", "minChangePercent": 10, "dwellMillis": DWELL_MILLIS});
    let setup = traffic::ready_group(ctx, "bench-converge", traffic).await?;
    // Every member idles at load 0 (the test workload's default): equal weights.
    let mut loads = by_member([0.0; 3]);
    traffic::wait_converged_on(
        ctx,
        &setup.ns.name,
        &traffic::least_loaded_weights(&loads),
        Duration::from_secs(60),
    )
    .await?;
    let log = RouteLog::start(ctx, &setup.ns.name).await?;
    let mut out = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Let the previous change settle well past the dwell time.
        tokio::time::sleep(Duration::from_millis(DWELL_MILLIS.max(1000))).await;
        let member = MEMBERS[(round / 2) % MEMBERS.len()];
        let load = if round % 2 == 0 { LOAD } else { 0.0 };
        let ms = converge_round(ctx, &setup, &log, &mut loads, member, load)
            .await
            .with_context(|| format!("convergence round {round}"))?;
        out.push(ms);
    }
    Ok(out)
}

async fn split_accuracy(ctx: &Ctx) -> Result<f64> {
    let first = by_member(SPLITS[0]);
    let setup = traffic::ready_group(
        ctx,
        "bench-split",
        json!({"policy": "Static", "weights": first}),
    )
    .await?;
    let ns = &setup.ns.name;
    let mut worst: f64 = 0.0;
    for (i, split) in SPLITS.iter().enumerate() {
        let declared = by_member(*split);
        if i > 0 {
            traffic::patch_weights(ctx, ns, &declared).await?;
        }
        let patched = Instant::now();
        traffic::wait_converged_on(ctx, ns, &declared, Duration::from_secs(90)).await?;
        let converged = patched.elapsed().as_millis();
        let target = target_shares(&declared);
        let deadline = Instant::now() + Duration::from_secs(10);
        traffic::until_split(
            ctx,
            &setup.host,
            &target,
            LIVE_TOLERANCE_PP,
            100,
            deadline,
            5000,
        )
        .await
        .with_context(|| format!("split {split:?}"))?;
        eprintln!(
            "  {split:?}: RoutingConverged +{converged} ms, live in the data plane +{} ms",
            patched.elapsed().as_millis()
        );
        let samples = traffic::requests(ctx, &setup.host, SPLIT_REQUESTS).await;
        let observed = shares(&samples);
        let error = split_error(&observed, &target);
        let failed = traffic::failures(&samples).len();
        eprintln!(
            "  {split:?} over {SPLIT_REQUESTS} requests: {} ({failed} failed), error {error:.1} pp",
            show(&observed)
        );
        worst = worst.max(error);
    }
    Ok(worst)
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::from_env().await?;
        operator::ensure_operator(&ctx).await?;
        let split = split_accuracy(&ctx).await?;
        let mut converge = convergence(&ctx).await?;
        converge.sort_unstable();
        println!(
            "weights_converge_ms p50={} p95={} n={}",
            nearest_rank(&converge, 0.5),
            nearest_rank(&converge, 0.95),
            converge.len()
        );
        println!("split_error_pp max={split:.1}");
        Ok(())
    })
}
