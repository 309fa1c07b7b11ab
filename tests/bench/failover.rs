//! `make bench-failover`: failover through Kubernetes routing on the test bed.
//! 20 times the primary's pod is deleted with grace period 0, 20 times with the default grace
//! period; each time from the delete call until the `-rw` EndpointSlice names the new primary
//! **and** a request through the `-rw` Service is answered by it. Then the operator's resident
//! memory with 200 groups. Prints:
//!   failover_crash_ms p50=… p95=… max=… n=20
//!   failover_graceful_ms p50=… p95=… max=… n=20
//!   operator_rss_mib groups=… rss=…

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

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;
use support::{Ctx, wait_for};

const ROUNDS: usize = 20;
const GROUPS_FOR_RSS: usize = 200;

fn percentile(sorted: &[u128], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut ms: Vec<u128>) {
    ms.sort_unstable();
    println!(
        "{name} p50={} p95={} max={} n={}",
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
        ms.last().copied().unwrap_or(0),
        ms.len()
    );
}

/// What one failover took, from the delete call.
struct Measured {
    /// Until a request through `-rw` was answered by the new primary (the figure).
    total_ms: u128,
    /// Until the `-rw` EndpointSlice named the new primary.
    slice_ms: u128,
}

/// Each round starts from a whole group: every member pod Ready for longer than the cluster
/// DNS caches a missing name (the test bed's CoreDNS: 5 s). A pod replaced in the previous round
/// is not resolvable by its peers until then, and deleting the next primary meanwhile measures a
/// group that has lost its quorum, not a failover.
async fn settle(ctx: &Ctx, ns: &str) -> Result<()> {
    const DNS_NEGATIVE_CACHE: Duration = Duration::from_secs(6);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    wait_for(
        "every member pod Ready beyond the DNS cache time",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&kube::api::ListParams::default().labels("quorate.dev/group=db"))
                .await?;
            let now = jiff::Timestamp::now();
            let ready_since = |p: &Pod| {
                p.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.status == "True")?
                    .last_transition_time
                    .clone()
            };
            let settled = list.items.len() == 3
                && list.items.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && ready_since(p).is_some_and(|t| {
                            now.duration_since(t.0).as_millis() as u128
                                >= DNS_NEGATIVE_CACHE.as_millis()
                        })
                });
            Ok(settled.then_some(()))
        },
    )
    .await
}

/// One failover: delete the primary's pod, wait for the new primary to be routed and to answer.
async fn failover(ctx: &Ctx, ns: &str, grace: Option<u32>) -> Result<Measured> {
    operator::wait_ready(ctx, ns, "db", Duration::from_secs(180)).await?;
    settle(ctx, ns).await?;
    let (old, epoch) =
        operator::wait_routed_primary(ctx, ns, "db", 0, Duration::from_secs(30)).await?;
    let rw = operator::service_ip(ctx, ns, "db-rw").await?;
    let old_ip = operator::pod_ip(ctx, ns, &old)
        .await?
        .context("old primary IP")?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let started = Instant::now();
    pods.delete(
        &old,
        &DeleteParams {
            grace_period_seconds: grace,
            ..Default::default()
        },
    )
    .await?;
    let mut slice_ms = None;
    // Polled every 20 ms; a request that kube-proxy still sends to the old pod's address gets no
    // answer at all, so each one is cut off after 250 ms and tried again (as a client would).
    while started.elapsed() < Duration::from_secs(30) {
        let (addresses, slice_epoch) = operator::rw_slice(ctx, ns, "db").await?;
        let named = addresses.len() == 1
            && addresses[0] != old_ip
            && slice_epoch.is_some_and(|e| e > epoch);
        if named {
            let at = *slice_ms.get_or_insert(started.elapsed().as_millis());
            if let Ok(Ok(answer)) =
                tokio::time::timeout(Duration::from_millis(250), operator::who_answers(ctx, &rw))
                    .await
            {
                let ok = answer["role"] == "Primary"
                    && answer["member"] != old.as_str()
                    && answer["epoch"].as_u64().is_some_and(|e| e > epoch);
                if ok {
                    return Ok(Measured {
                        total_ms: started.elapsed().as_millis(),
                        slice_ms: at,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the operator and the group said when it did not happen: the figure alone does not
    // tell where a failover got stuck.
    let status = operator::groups(ctx, ns)
        .get("db")
        .await
        .ok()
        .and_then(|g| g.status);
    let slice = operator::rw_slice(ctx, ns, "db").await.ok();
    let events = ctx
        .kubectl(&[
            "get",
            "events",
            "-n",
            ns,
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=T:.lastTimestamp,R:.reason,M:.message",
        ])
        .unwrap_or_default();
    anyhow::bail!(
        "no new primary routed and answering within 30 s (slice named one after {slice_ms:?} ms): deleted {old} (epoch {epoch}); -rw now {slice:?}; status {status:#?}; events:\n{events}"
    )
}

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
        let m = failover(ctx, &ns.name, grace)
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

/// Resident memory of the operator leader with many groups. The groups are "tiny": their
/// namespace's quota admits no pods, so the operator does all its per-group work (objects,
/// certificates, a state stream trying to reach agents) without 600 pods on one node.
async fn operator_rss(ctx: &Ctx) -> Result<f64> {
    let ns = ctx.namespace("bench-rss")?;
    let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}});
    ctx.kubectl_stdin(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&quota.to_string()),
    )?;
    let mut list = Vec::new();
    for i in 0..GROUPS_FOR_RSS {
        let mut g = operator::test_group(ctx, &format!("g{i}"), "ActiveActive", 1);
        g["spec"]["paused"] = json!(true);
        list.push(g);
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": list});
    ctx.kubectl_stdin(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&list.to_string()),
    )?;
    let api = operator::groups(ctx, &ns.name);
    wait_for(
        "every group to have a status",
        Duration::from_secs(600),
        || async {
            let groups = api.list(&Default::default()).await?;
            let done = groups
                .items
                .iter()
                .filter(|g| g.status.as_ref().is_some_and(|s| s.phase.is_some()))
                .count();
            Ok((done == GROUPS_FOR_RSS).then_some(()))
        },
    )
    .await?;
    // Let the per-group streams settle into their steady state before sampling.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let holder = ctx.kubectl(&[
        "get",
        "lease",
        operator::RELEASE,
        "-n",
        operator::OPERATOR_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    let ip = ctx.kubectl(&[
        "get",
        "pod",
        &holder,
        "-n",
        operator::OPERATOR_NAMESPACE,
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    let (code, metrics) = ctx
        .http_get(&format!("http://{ip}:8080/metrics"), None)
        .await?;
    ensure!(code == 200, "operator metrics: HTTP {code}");
    let bytes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quorate_operator_process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .context("no resident memory in the operator's metrics")?;
    Ok(bytes / (1024.0 * 1024.0))
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::from_env().await?;
        operator::ensure_operator(&ctx).await?;
        // Each figure as soon as it is measured: a later phase that fails keeps the earlier ones.
        report(
            "failover_crash_ms",
            failovers(&ctx, Some(0), "crash").await?,
        );
        report(
            "failover_graceful_ms",
            failovers(&ctx, None, "graceful").await?,
        );
        let rss = operator_rss(&ctx).await?;
        println!("operator_rss_mib groups={GROUPS_FOR_RSS} rss={rss:.1}");
        Ok(())
    })
}
