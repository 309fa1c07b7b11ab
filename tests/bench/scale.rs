//! `make bench-scale`: the operator with many groups on the test bed. Prints:
//!   operator_rss_mib groups=10 rss=…   (and groups=100, groups=1000)
//!   operator_cpu_pct_idle groups=1000 cpu=…
//!   reconcile_p50_ms groups=1000 p50=…
//!   api_requests_per_min_steady groups=100 reads=… writes=…
//!   failover_crash_ms_under_load groups=100 p50=… p95=… n=20
//!
//! First pod-less groups (their namespace's quota admits no pods; the operator does all its
//! per-group work but no agent answers), grown to 10, 100 and 1000 in a freshly installed
//! operator: the leader's resident memory, at 1000 its CPU over two idle minutes, and how long a
//! spec change takes to be reconciled (from the patch until `status.observedGeneration` reaches
//! the new generation). Then, once those are deleted, 100 running groups: `db` (three members,
//! the one that fails over) and 99 one-member groups with their pods. In their steady state the
//! operator's own requests are counted from the API server's audit log (the test bed logs every
//! service account's requests), then `db`'s primary pod is deleted with grace period 0, 20
//! times, as `make bench-failover` does.

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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::{Ctx, wait_for};

/// The group that fails over and 99 others.
const RUNNING_GROUPS: usize = 100;
const ROUNDS: usize = 20;
const PODLESS_STEPS: [usize; 3] = [10, 100, 1000];
const STEADY_WINDOW: Duration = Duration::from_secs(180);
const IDLE_WINDOW: Duration = Duration::from_secs(120);
const RECONCILE_SAMPLES: usize = 20;

/// One of the 99 background groups: the test workload with small requests (100 pods fit on
/// the test bed's two cores only so) and a health check once a second.
fn background_group(ctx: &Ctx, name: &str) -> Value {
    let mut g = operator::test_group(ctx, name, "ActiveActive", 1);
    g["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "64Mi"}});
    g["spec"]["agent"] = json!({"resources": {"requests": {"cpu": "5m", "memory": "24Mi"}, "limits": {"memory": "128Mi"}}});
    g["spec"]["health"]["periodMillis"] = json!(1000);
    g
}

/// The operator's requests in the API server's audit log between two instants.
#[derive(Default, Debug)]
struct Requests {
    reads: usize,
    writes: usize,
    /// Writes of the leader election Lease: one renewal every few seconds, whatever the number
    /// of groups.
    lease_writes: usize,
    /// (verb, resource) -> count, for the report.
    by_verb: BTreeMap<(String, String), usize>,
}

fn operator_requests(
    audit_log: &str,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Result<Requests> {
    let user = format!("system:serviceaccount:{}:", operator::OPERATOR_NAMESPACE);
    let text = std::fs::read_to_string(audit_log)
        .with_context(|| format!("reading the audit log {audit_log}"))?;
    let mut out = Requests::default();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue; // a line being written
        };
        if event["stage"] != "RequestReceived"
            || !event["user"]["username"]
                .as_str()
                .is_some_and(|u| u.starts_with(&user))
        {
            continue;
        }
        let Some(at) = event["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        if at < from || at >= to {
            continue;
        }
        let verb = event["verb"].as_str().unwrap_or_default().to_owned();
        let resource = event["objectRef"]["resource"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match verb.as_str() {
            "get" | "list" | "watch" => out.reads += 1,
            _ if resource == "leases" => out.lease_writes += 1,
            _ => out.writes += 1,
        }
        *out.by_verb.entry((verb, resource)).or_default() += 1;
    }
    Ok(out)
}

async fn wait_all_ready(ctx: &Ctx, ns: &str, expected: usize) -> Result<()> {
    let api = operator::groups(ctx, ns);
    let started = Instant::now();
    let last_report = AtomicU64::new(0);
    wait_for("every group Ready", Duration::from_secs(1200), || async {
        let groups = api.list(&Default::default()).await?;
        let ready = groups
            .items
            .iter()
            .filter(|g| {
                g.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        let elapsed = started.elapsed().as_secs();
        if elapsed >= last_report.load(Ordering::Relaxed) + 30 {
            last_report.store(elapsed, Ordering::Relaxed);
            eprintln!("  {ready}/{expected} groups Ready after {elapsed} s");
        }
        Ok((ready == expected).then_some(()))
    })
    .await
}

/// 100 running groups: the steady state's API requests, then failovers of one of them.
async fn under_load(ctx: &Ctx, audit_log: &str) -> Result<()> {
    let ns = ctx.namespace("bench-load")?;
    let mut db = operator::test_group(ctx, "db", "PrimaryBackup", 3);
    // The bench trips the flap guard otherwise (that is what it is for).
    db["spec"]["failover"] = json!({"maxFailoversPerHour": 1000});
    let mut items = vec![db];
    items.extend((1..RUNNING_GROUPS).map(|i| background_group(ctx, &format!("g{i}"))));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    ctx.kubectl_stdin(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&list.to_string()),
    )?;
    let started = Instant::now();
    wait_all_ready(ctx, &ns.name, RUNNING_GROUPS).await?;
    eprintln!(
        "  {RUNNING_GROUPS} groups Ready in {} s",
        started.elapsed().as_secs()
    );
    // Past the start-up: statuses written, pods Ready beyond the DNS cache time.
    tokio::time::sleep(Duration::from_secs(30)).await;

    let from = jiff::Timestamp::now();
    tokio::time::sleep(STEADY_WINDOW).await;
    let to = jiff::Timestamp::now();
    // The API server writes its log asynchronously: let the window's last lines land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = operator_requests(audit_log, from, to)?;
    let minutes = STEADY_WINDOW.as_secs_f64() / 60.0;
    eprintln!(
        "  steady state over {} s: {:?}; leader election Lease writes {:.1}/min",
        STEADY_WINDOW.as_secs(),
        requests.by_verb,
        requests.lease_writes as f64 / minutes
    );
    println!(
        "api_requests_per_min_steady groups={RUNNING_GROUPS} reads={:.1} writes={:.1}",
        requests.reads as f64 / minutes,
        requests.writes as f64 / minutes
    );

    let mut ms = Vec::new();
    for round in 0..ROUNDS {
        let m = common::failover(ctx, &ns.name, "db", 3, Some(0))
            .await
            .with_context(|| format!("under load, round {round}"))?;
        eprintln!(
            "  under load round {round}: {} ms (-rw EndpointSlice after {} ms)",
            m.total_ms, m.slice_ms
        );
        ms.push(m.total_ms);
    }
    let s = common::Summary::of(ms);
    println!(
        "failover_crash_ms_under_load groups={RUNNING_GROUPS} p50={} p95={} n={}",
        s.p50, s.p95, s.n
    );
    Ok(())
}

/// From a change of `spec.traffic.dwellMillis` until the status says it was reconciled.
async fn reconcile_ms(ctx: &Ctx, ns: &str, group: &str, dwell: u32) -> Result<u128> {
    let api = operator::groups(ctx, ns);
    let started = Instant::now();
    let patched = api
        .patch(
            group,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"traffic": {"dwellMillis": dwell}}})),
        )
        .await?;
    let generation = patched.metadata.generation.context("no generation")?;
    loop {
        let g = api.get(group).await?;
        if g.status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_some_and(|o| o >= generation)
        {
            return Ok(started.elapsed().as_millis());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{ns}/{group} generation {generation} not reconciled within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pod-less groups at 10, 100 and 1000: memory, idle CPU and reconcile latency.
async fn podless(ctx: &Ctx) -> Result<()> {
    common::restart_operator(ctx).await?;
    let ns = common::podless_namespace(ctx, "bench-scale")?;
    let mut created = 0;
    for step in PODLESS_STEPS {
        let started = Instant::now();
        common::podless_groups(ctx, &ns.name, created..step).await?;
        eprintln!(
            "  {} more groups reconciled in {} s",
            step - created,
            started.elapsed().as_secs()
        );
        created = step;
        // Past the first reconciles of the new groups.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let rss = common::operator_rss_mib(ctx).await?;
        println!("operator_rss_mib groups={step} rss={rss:.1}");
    }

    let cpu = |m: &str| common::metric(m, "quorate_operator_process_cpu_seconds");
    let before = cpu(&common::leader_metrics(ctx).await?)?;
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = cpu(&common::leader_metrics(ctx).await?)?;
    let pct = (after - before) / started.elapsed().as_secs_f64() * 100.0;
    println!("operator_cpu_pct_idle groups={created} cpu={pct:.2}");

    let mut ms = Vec::new();
    for i in 0..RECONCILE_SAMPLES {
        // Groups spread over the namespace; each change a new value.
        let group = format!("g{}", i * created / RECONCILE_SAMPLES);
        ms.push(reconcile_ms(ctx, &ns.name, &group, 1000 + i as u32).await?);
    }
    eprintln!(
        "  reconcile after a spec change: {}",
        common::Summary::of(ms.clone())
    );
    println!(
        "reconcile_p50_ms groups={created} p50={}",
        common::Summary::of(ms).p50
    );
    // The running phase counts 100 groups, not 1100: wait until these are gone.
    ctx.kubectl(&[
        "delete",
        "namespace",
        &ns.name,
        "--wait=true",
        "--timeout=900s",
    ])?;
    Ok(())
}

fn main() -> Result<()> {
    let audit_log = std::env::var("QUORATE_AUDIT_LOG").context(
        "QUORATE_AUDIT_LOG is not set: run the benchmark with `make bench-scale`, which points it at the test bed's audit log",
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::from_env().await?;
        // The chart's defaults (info logs, Secrets re-read every 30 minutes): the operator's
        // load as users run it, not the suites' settings.
        operator::ensure_operator_with(&ctx, operator::OperatorValues::Defaults).await?;
        // Each figure as soon as it is measured: a later phase that fails keeps the earlier ones.
        podless(&ctx).await?;
        under_load(&ctx, &audit_log).await
    })
}
