//! `cargo bench --bench agent` (`make bench-agent`): failover and commit latency of a 3-agent group
//! with default timing, and an agent's idle memory.
//!
//! Default settings except `--max-failovers-per-hour 1000`: 20 crashes in a few minutes would
//! (correctly) trip the flap guard at its default of 6.

#[path = "../agent_support/mod.rs"]
mod agent_support;

use std::time::{Duration, Instant};

use agent_support::*;
use futures::StreamExt;
use quorate::agent::client::{GroupState, LeaseState};

const ROUNDS: usize = 20;
const COMMITS: usize = 1000;

fn live(s: &GroupState) -> bool {
    s.primary.is_some() && s.primary_lease == LeaseState::Live as i32
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn settled(c: &Cluster) -> TestResult<GroupState> {
    c.wait_state(
        Duration::from_secs(30),
        "a primary and three healthy members",
        |s| live(s) && s.members.iter().filter(|m| m.healthy).count() == 3,
    )
    .await
}

/// Watches the members at `addresses` and returns when a coordinator reports a primary with a
/// live lease at an epoch above `after`.
async fn observe_new_primary(
    addresses: Vec<String>,
    tls: Option<quorate::agent::client::TlsClientConfig>,
    after: u64,
) -> TestResult<GroupState> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let mut tasks = Vec::new();
    for addr in addresses {
        let tls = tls.clone();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(client) = quorate::agent::AgentClient::connect(&addr, tls.clone()).await
                else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let mut stream = Box::pin(client.watch());
                while let Some(item) = stream.next().await {
                    let Ok(s) = item else { break };
                    if s.from_coordinator
                        && s.epoch > after
                        && live(&s)
                        && tx.send(s).await.is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let result = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
    for t in tasks {
        t.abort();
    }
    match result {
        Ok(Some(s)) => Ok(s),
        _ => Err(err("no new primary observed within 30 s")),
    }
}

fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn failovers(c: &mut Cluster, graceful: bool) -> TestResult<Vec<f64>> {
    let mut samples = Vec::new();
    for round in 0..ROUNDS {
        let s = settled(c).await?;
        let p = c
            .index_of(s.primary.as_ref().map(|p| p.id).unwrap_or(0))
            .ok_or("unknown primary")?;
        // Let the followers' watch streams connect before the fault.
        let addresses = (0..c.nodes.len())
            .filter(|i| *i != p)
            .map(|i| c.nodes[i].grpc())
            .collect();
        let observer = observe_new_primary(addresses, c.tls_client(), s.epoch);
        tokio::pin!(observer);
        tokio::select! {
            r = &mut observer => { r?; return Err(err("a primary appeared before the fault")); }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let start = Instant::now();
        if graceful {
            c.nodes[p].proc.signal(libc::SIGTERM);
        } else {
            c.kill9(p);
        }
        let s2 = observer
            .await
            .map_err(|e| err(format!("{e}\n{}", c.logs(20))))?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "{} round {round}: {ms:.0} ms, epoch {} -> {}",
            if graceful { "graceful" } else { "crash" },
            s.epoch,
            s2.epoch
        );
        samples.push(ms);
        if graceful && !c.nodes[p].proc.wait_exit(Duration::from_secs(10)) {
            return Err(err("agent did not exit after SIGTERM"));
        }
        c.restart(p)?;
    }
    Ok(samples)
}

async fn run() -> TestResult {
    let mut c = Cluster::start(ClusterOptions {
        members: 3,
        args: vec!["--max-failovers-per-hour".into(), "1000".into()],
        ..Default::default()
    })?;
    c.bootstrap().await?;
    settled(&c).await?;

    // Idle memory first, before the churn.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = c
        .nodes
        .iter()
        .filter_map(|n| n.proc.pid().and_then(rss_mib))
        .fold(0.0f64, f64::max);

    let mut crash = failovers(&mut c, false).await?;
    let mut graceful = failovers(&mut c, true).await?;

    // Commit latency: Touch is one replicated write, answered after commit and apply.
    let s = settled(&c).await?;
    let leader = c
        .index_of(s.leader.as_ref().map(|l| l.id).unwrap_or(0))
        .ok_or("unknown leader")?;
    let client = c.client(leader).await?;
    for _ in 0..20 {
        client.touch().await?;
    }
    let mut commits = Vec::with_capacity(COMMITS);
    for _ in 0..COMMITS {
        let t = Instant::now();
        client.touch().await?;
        commits.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    c.check_invariants()?;

    let by = |a: &f64, b: &f64| a.total_cmp(b);
    crash.sort_by(by);
    graceful.sort_by(by);
    commits.sort_by(by);
    println!(
        "agent_failover_crash_ms p50={:.0} p95={:.0} max={:.0} n={}",
        percentile(&crash, 50.0),
        percentile(&crash, 95.0),
        crash.last().copied().unwrap_or(f64::NAN),
        crash.len()
    );
    println!(
        "agent_failover_graceful_ms p50={:.0} p95={:.0} max={:.0} n={}",
        percentile(&graceful, 50.0),
        percentile(&graceful, 95.0),
        graceful.last().copied().unwrap_or(f64::NAN),
        graceful.len()
    );
    println!(
        "raft_commit_ms p50={:.2} p99={:.2} n={}",
        percentile(&commits, 50.0),
        percentile(&commits, 99.0),
        commits.len()
    );
    println!("agent_rss_mib idle={rss:.1}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; nothing to filter.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
