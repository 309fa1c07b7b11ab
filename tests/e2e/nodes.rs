//! Node faults on the multi-node test bed: `examples/redis.yaml` (three members on three nodes)
//! while a whole node is partitioned, frozen or killed (`hack/cluster.sh partition|freeze|kill|
//! restore`, docs/testbed.md). What counts is what the workload does: every member is probed
//! from inside its own network namespace every 50 ms (a write: does it act as the primary?), and
//! the group's epoch and `cache-rw`'s epoch are sampled from the API server as often. Throughout
//! a round: never two members taking writes at overlapping times, and neither epoch going back.
//!
//! The phase runs its tests one at a time: a node fault hits every pod on the node.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::operator::{
    OPERATOR_NAMESPACE, ensure_operator, event_messages, groups, lease_holder, plugin, rw_slice,
    service_ip, wait_ready,
};
use crate::support::{Ctx, wait_for};
use crate::workloads::{
    GROUP, REDIS_PORT, Redis, Reply, agent_pid, create_redis, redis_example, wait_acked_write,
    wait_routed_primary,
};

pub fn tests() -> Vec<crate::support::Test> {
    crate::tests![
        fault_commands_name_the_nodes_and_restoring_a_healthy_node_changes_nothing,
        members_of_a_group_land_on_three_different_nodes,
        the_primarys_node_partitioned_a_primary_elsewhere_takes_writes,
        the_primarys_node_frozen_and_resumed_the_old_primary_never_takes_writes,
        a_backups_node_killed_the_group_keeps_its_primary,
        new_members_stranded_on_one_node_are_created_again_elsewhere,
        the_node_of_the_primary_and_the_operator_leader_partitioned_routing_follows,
    ]
}

/// The lease of `examples/redis.yaml` (spec.failover.leaseMillis).
pub const LEASE_MILLIS: u128 = 1000;

/// Node faults need the local test bed (kind runs its nodes in containers).
fn on_test_bed() -> bool {
    std::env::var("E2E_ENV").as_deref() != Ok("kind")
}

// --- node faults ----------------------------------------------------------------------------

/// A fault on one node (`hack/cluster.sh FAULT NODE`), lifted when dropped: a test that fails
/// never leaves a node partitioned, frozen or off.
pub struct NodeFault {
    script: PathBuf,
    pub node: String,
    restored: bool,
}

fn cluster_sh(script: &PathBuf, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(script)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", script.display(), args.join(" ")))?;
    ensure!(
        out.status.success(),
        "{} {}: {}",
        script.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl NodeFault {
    /// `fault` is partition, freeze or kill.
    pub fn apply(ctx: &Ctx, fault: &str, node: &str) -> Result<Self> {
        let script = ctx.root.join("hack/cluster.sh");
        cluster_sh(&script, &[fault, node])?;
        Ok(Self {
            script,
            node: node.to_owned(),
            restored: false,
        })
    }

    /// Lifts the fault (a killed node starts again and waits until it is Ready).
    pub fn restore(mut self) -> Result<()> {
        self.restored = true;
        cluster_sh(&self.script, &["restore", &self.node]).map(drop)
    }
}

impl Drop for NodeFault {
    fn drop(&mut self) {
        if !self.restored
            && let Err(e) = cluster_sh(&self.script, &["restore", &self.node])
        {
            eprintln!("    restoring {} failed: {e:#}", self.node);
        }
    }
}

/// The node each member runs on.
pub async fn nodes_of(ctx: &Ctx, ns: &str, members: &[String]) -> Result<BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = BTreeMap::new();
    for m in members {
        let node = pods
            .get(m)
            .await?
            .spec
            .and_then(|s| s.node_name)
            .with_context(|| format!("{m} is not scheduled"))?;
        out.insert(m.clone(), node);
    }
    Ok(out)
}

pub fn members() -> Vec<String> {
    (0..3).map(|i| format!("{GROUP}-{i}")).collect()
}

/// Container restarts of every operator replica, by pod: a replica that loses its lease stands
/// by again in the same process, so a fault never restarts one.
pub async fn operator_restarts(ctx: &Ctx) -> Result<BTreeMap<String, i32>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), OPERATOR_NAMESPACE);
    Ok(pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .map(|p| {
            let restarts = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .iter()
                .map(|c| c.restart_count)
                .sum();
            (p.metadata.name.unwrap_or_default(), restarts)
        })
        .collect())
}

/// The pod (and its node) that holds the operator's lease.
pub async fn operator_leader(ctx: &Ctx) -> Result<(String, String)> {
    let holder = lease_holder(ctx)?;
    ensure!(!holder.is_empty(), "no operator replica holds the lease");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), OPERATOR_NAMESPACE);
    let node = pods
        .get(&holder)
        .await?
        .spec
        .and_then(|s| s.node_name)
        .with_context(|| format!("{holder} is not scheduled"))?;
    Ok((holder, node))
}

// --- probes ---------------------------------------------------------------------------------

/// One probe of one member: did it take a write (`Some(true)`), refuse it (`Some(false)`), or
/// not answer within 40 ms (`None`: frozen, killed, or restarting)?
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub writable: Option<bool>,
}

/// Enters the network namespace of `pid` on this thread (sockets made afterwards live there).
fn enter_netns(pid: i32) -> Result<()> {
    let file = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("the network namespace of process {pid}"))?;
    // SAFETY: setns on a valid namespace descriptor; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(
        rc == 0,
        "setns into the network namespace of {pid}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Probes `member`'s Redis on 127.0.0.1 inside its pod every 50 ms until `stop` (or `limit`).
fn probe_member(ns: String, member: String, stop: Arc<AtomicBool>, limit: Duration) -> Vec<Sample> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("probe runtime");
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut entered: Option<i32> = None;
    let mut conn: Option<Redis> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < limit {
        let tick = Instant::now();
        // The pod's namespace, again after its agent restarted (a killed node's pods).
        if entered.is_none_or(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            conn = None;
            entered = agent_pid(GROUP, &member, &ns)
                .ok()
                .filter(|pid| enter_netns(*pid).is_ok());
        }
        n += 1;
        let value = n.to_string();
        let key = format!("probe:{member}");
        let writable = if entered.is_some() {
            runtime.block_on(async {
                let io = async {
                    if conn.is_none() {
                        conn = Some(Redis::connect(&format!("127.0.0.1:{REDIS_PORT}")).await?);
                    }
                    let c = conn.as_mut().context("connection")?;
                    c.cmd(&["SET", &key, &value]).await
                };
                match tokio::time::timeout(Duration::from_millis(40), io).await {
                    Ok(Ok(Reply::Status(s))) => Some(s == "OK"),
                    Ok(Ok(_)) => Some(false),
                    Ok(Err(_)) | Err(_) => {
                        conn = None;
                        None
                    }
                }
            })
        } else {
            None
        };
        samples.push(Sample { at: tick, writable });
        std::thread::sleep(Duration::from_millis(50).saturating_sub(tick.elapsed()));
    }
    samples
}

/// The control plane's view, sampled as often: the group's epoch and `cache-rw`'s epoch.
#[derive(Clone, Debug, Default)]
pub struct ApiSamples {
    pub group_epochs: Vec<(Instant, u64)>,
    pub rw_epochs: Vec<(Instant, u64)>,
}

pub struct Probes {
    stop: Arc<AtomicBool>,
    members: Vec<(String, std::thread::JoinHandle<Vec<Sample>>)>,
    api: tokio::task::JoinHandle<ApiSamples>,
}

/// What the probes saw in one round.
#[derive(Debug)]
pub struct Observed {
    pub members: BTreeMap<String, Vec<Sample>>,
    pub api: ApiSamples,
}

impl Probes {
    /// Bounded: every probe stops by itself after `limit`.
    pub fn start(ctx: &Ctx, ns: &str, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let members = members()
            .into_iter()
            .map(|m| {
                let (ns, member, stop) = (ns.to_owned(), m.clone(), stop.clone());
                (
                    m,
                    std::thread::spawn(move || probe_member(ns, member, stop, limit)),
                )
            })
            .collect();
        let (ctx2, ns2, stop2) = (ctx.clone(), ns.to_owned(), stop.clone());
        let api = tokio::spawn(async move {
            let started = Instant::now();
            let mut out = ApiSamples::default();
            while !stop2.load(Ordering::SeqCst) && started.elapsed() < limit {
                let tick = Instant::now();
                if let Ok(g) = groups(&ctx2, &ns2).get(GROUP).await
                    && let Some(e) = g.status.and_then(|s| s.epoch)
                {
                    out.group_epochs.push((tick, e as u64));
                }
                if let Ok((_, Some(e))) = rw_slice(&ctx2, &ns2, GROUP).await {
                    out.rw_epochs.push((tick, e));
                }
                tokio::time::sleep(Duration::from_millis(50).saturating_sub(tick.elapsed())).await;
            }
            out
        });
        Self { stop, members, api }
    }

    pub async fn stop(self) -> Result<Observed> {
        self.stop.store(true, Ordering::SeqCst);
        let mut members = BTreeMap::new();
        for (m, h) in self.members {
            let samples = tokio::task::spawn_blocking(move || h.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the probe of {m} panicked"))?;
            members.insert(m, samples);
        }
        Ok(Observed {
            members,
            api: self.api.await?,
        })
    }
}

/// Runs of consecutive samples in which a member took writes, as [first, last].
fn writable_runs(samples: &[Sample]) -> Vec<(Instant, Instant)> {
    let mut runs = Vec::new();
    let mut current: Option<(Instant, Instant)> = None;
    for s in samples {
        match (s.writable, current) {
            (Some(true), None) => current = Some((s.at, s.at)),
            (Some(true), Some((a, _))) => current = Some((a, s.at)),
            (_, Some(run)) => {
                runs.push(run);
                current = None;
            }
            (_, None) => {}
        }
    }
    runs.extend(current);
    runs
}

impl Observed {
    /// The longest time two members both took writes (0 when never), with who and when.
    pub fn two_primary_overlap(&self) -> (Duration, Option<String>) {
        let runs: Vec<(&String, Vec<(Instant, Instant)>)> = self
            .members
            .iter()
            .map(|(m, s)| (m, writable_runs(s)))
            .collect();
        let mut worst = (Duration::ZERO, None);
        for (i, (a, ra)) in runs.iter().enumerate() {
            for (b, rb) in &runs[i + 1..] {
                for &(s1, e1) in ra {
                    for &(s2, e2) in rb {
                        let (start, end) = (s1.max(s2), e1.min(e2));
                        if end >= start {
                            let d = end - start;
                            if worst.1.is_none() || d > worst.0 {
                                worst = (d, Some(format!("{a} and {b} both took writes")));
                            }
                        }
                    }
                }
            }
        }
        worst
    }

    /// Neither the group's epoch nor `cache-rw`'s went back.
    pub fn epochs_never_go_back(&self) -> Result<()> {
        for (what, samples) in [
            ("the group's epoch", &self.api.group_epochs),
            ("cache-rw's epoch", &self.api.rw_epochs),
        ] {
            for w in samples.windows(2) {
                ensure!(
                    w[1].1 >= w[0].1,
                    "{what} went back from {} to {}",
                    w[0].1,
                    w[1].1
                );
            }
        }
        Ok(())
    }

    /// From `cut` until `member` first refused a write (its workload fenced), in ms.
    pub fn refused_after(&self, member: &str, cut: Instant) -> Option<u128> {
        self.members.get(member)?.iter().find_map(|s| {
            (s.at >= cut && s.writable == Some(false)).then(|| (s.at - cut).as_millis())
        })
    }

    /// Whether `member` took a write at or after `from`.
    pub fn took_writes_after(&self, member: &str, from: Instant) -> bool {
        self.members
            .get(member)
            .is_some_and(|s| s.iter().any(|s| s.at >= from && s.writable == Some(true)))
    }

    /// The round's invariants: no overlap, no epoch going back.
    pub fn check(&self) -> Result<()> {
        let (overlap, who) = self.two_primary_overlap();
        if let Some(who) = who {
            bail!("{who} for {} ms", overlap.as_millis());
        }
        self.epochs_never_go_back()
    }
}

// --- rounds ---------------------------------------------------------------------------------

/// Until a write through `cache-rw` is acknowledged by a backup (`SET` + `WAIT 1`), from the
/// host, in ms since `cut`. With the old primary's node cut off, only a new primary can answer.
/// A new attempt starts every 50 ms, each on its own connection with its own timeout (what a
/// client with a short connect timeout sees): one waiting on a connection to the cut-off node
/// does not hold back the one that reaches the new primary once `cache-rw` routes to it.
pub async fn first_acked_write_through_rw(ctx: &Ctx, ns: &str, cut: Instant) -> Result<u128> {
    let rw = format!(
        "{}:{REDIS_PORT}",
        service_ip(ctx, ns, &format!("{GROUP}-rw")).await?
    );
    let mut attempts = tokio::task::JoinSet::new();
    let mut next = tokio::time::interval(Duration::from_millis(50));
    next.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = next.tick() => {
                ensure!(
                    cut.elapsed() < Duration::from_secs(60),
                    "no write through {GROUP}-rw acknowledged 60 s after the fault"
                );
                n += 1;
                let (rw, n) = (rw.clone(), n.to_string());
                attempts.spawn(async move {
                    let attempt = async {
                        let mut r = Redis::connect(&rw).await?;
                        let set = r.cmd(&["SET", "node-fault", &n]).await?;
                        let wait = r.cmd(&["WAIT", "1", "200"]).await?;
                        Ok::<_, anyhow::Error>(
                            set == Reply::Status("OK".into()) && wait == Reply::Int(1),
                        )
                    };
                    matches!(
                        tokio::time::timeout(Duration::from_millis(600), attempt).await,
                        Ok(Ok(true))
                    )
                });
            }
            Some(done) = attempts.join_next() => {
                if done.unwrap_or(false) {
                    return Ok(cut.elapsed().as_millis());
                }
            }
        }
    }
}

/// A Ready Redis group on three nodes, its primary and epoch.
pub async fn spread_group(ctx: &Ctx, ns: &str) -> Result<(String, u64, BTreeMap<String, String>)> {
    let (primary, epoch) = create_redis(ctx, ns, &redis_example(ctx)?).await?;
    let nodes = nodes_of(ctx, ns, &members()).await?;
    let distinct: std::collections::BTreeSet<&String> = nodes.values().collect();
    ensure!(
        distinct.len() == 3,
        "the members share nodes: {nodes:?} (the test bed has {} node(s))",
        ctx.kubectl(&["get", "nodes", "-o", "name"])?
            .lines()
            .count()
    );
    Ok((primary, epoch, nodes))
}

/// The figures of one round.
#[derive(Debug)]
pub struct Round {
    /// The fault → the first write acknowledged through `cache-rw` (by the new primary).
    pub failover_ms: u128,
    /// The fault → the old primary's workload refusing writes (probed inside its node).
    pub demoted_ms: Option<u128>,
    pub overlap_ms: u128,
    pub old: String,
    pub new: String,
}

/// Faults the node of the group's primary (`partition` or `freeze`), measures, holds the fault
/// for `hold` after the failover, restores the node, and waits until the group is Ready again
/// with the old primary following the new one.
pub async fn node_fault_round(
    ctx: &Ctx,
    ns: &str,
    fault: &str,
    primary: &str,
    epoch: u64,
    node: &str,
    hold: Duration,
) -> Result<Round> {
    let probes = Probes::start(ctx, ns, Duration::from_secs(240));
    // A few samples of the steady state first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut = Instant::now();
    let faulted = NodeFault::apply(ctx, fault, node)?;
    let failover_ms = first_acked_write_through_rw(ctx, ns, cut).await?;
    let (new, _) = wait_routed_primary(ctx, ns, GROUP, epoch, Duration::from_secs(30)).await?;
    ensure!(new != primary, "{primary} is still the routed primary");
    tokio::time::sleep(hold).await;
    let resumed = Instant::now();
    faulted.restore()?;
    wait_ready(ctx, ns, GROUP, Duration::from_secs(180)).await?;
    // The old primary follows the new one: writes are acknowledged by a backup again.
    wait_acked_write(ctx, ns, "after-node-fault").await?;
    let observed = probes.stop().await?;
    observed.check()?;
    ensure!(
        !observed.took_writes_after(primary, resumed),
        "{primary} took writes after its node was restored"
    );
    let status = groups(ctx, ns).get(GROUP).await?.status.context("status")?;
    ensure!(
        status.primary.as_deref() == Some(new.as_str()),
        "the primary moved on to {:?} after the restore",
        status.primary
    );
    Ok(Round {
        failover_ms,
        demoted_ms: observed.refused_after(primary, cut),
        overlap_ms: observed.two_primary_overlap().0.as_millis(),
        old: primary.to_owned(),
        new,
    })
}

// --- tests ----------------------------------------------------------------------------------

async fn fault_commands_name_the_nodes_and_restoring_a_healthy_node_changes_nothing(
    ctx: Ctx,
) -> Result<()> {
    if !on_test_bed() {
        return Ok(());
    }
    let script = ctx.root.join("hack/cluster.sh");
    let nodes = ctx.kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])?;
    for fault in ["partition", "freeze", "kill", "restore"] {
        let refused = cluster_sh(&script, &[fault, "no-such-node"])
            .err()
            .with_context(|| format!("{fault} of an unknown node succeeded"))?;
        let message = format!("{refused:#}");
        ensure!(
            message.contains("unknown node 'no-such-node'")
                && nodes.split_whitespace().all(|n| message.contains(n)),
            "{fault} of an unknown node: {message:?} does not name the nodes {nodes:?}"
        );
    }
    // A node without a fault: restoring it is a no-op, and it stays Ready.
    let node = nodes.split_whitespace().next().context("a node")?;
    cluster_sh(&script, &["restore", node])?;
    let faults = cluster_sh(&script, &["faults"])?;
    ensure!(
        !faults.contains(node),
        "{node} shows a fault after a restore without one: {faults:?}"
    );
    let ready = ctx.kubectl(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])?;
    ensure!(
        ready.trim() == "True",
        "{node} is not Ready after the no-op restore: {ready:?}"
    );
    Ok(())
}

async fn members_of_a_group_land_on_three_different_nodes(ctx: Ctx) -> Result<()> {
    if !on_test_bed() {
        return Ok(());
    }
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("node-spread")?;
    let (_, _, nodes) = spread_group(&ctx, &ns.name).await?;
    println!("    members on {nodes:?}");
    Ok(())
}

async fn the_primarys_node_partitioned_a_primary_elsewhere_takes_writes(ctx: Ctx) -> Result<()> {
    if !on_test_bed() {
        return Ok(());
    }
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("node-part")?;
    let (primary, epoch, nodes) = spread_group(&ctx, &ns.name).await?;
    let (primary, epoch) =
        primary_away_from_the_operator_leader(&ctx, &ns.name, primary, epoch, &nodes).await?;
    let round = node_fault_round(
        &ctx,
        &ns.name,
        "partition",
        &primary,
        epoch,
        &nodes[&primary],
        Duration::ZERO,
    )
    .await?;
    let demoted = round
        .demoted_ms
        .with_context(|| format!("{primary} never refused a write inside its partitioned node"))?;
    ensure!(
        demoted <= LEASE_MILLIS + 200,
        "{primary} took writes for {demoted} ms inside its partitioned node (lease {LEASE_MILLIS} ms)"
    );
    println!(
        "    {} partitioned: {} -> {} routed and acknowledging after {} ms; {} refused writes after {demoted} ms; overlap {} ms",
        nodes[&primary], round.old, round.new, round.failover_ms, round.old, round.overlap_ms
    );
    Ok(())
}

async fn the_primarys_node_frozen_and_resumed_the_old_primary_never_takes_writes(
    ctx: Ctx,
) -> Result<()> {
    if !on_test_bed() {
        return Ok(());
    }
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("node-freeze")?;
    let (primary, epoch, nodes) = spread_group(&ctx, &ns.name).await?;
    let (primary, epoch) =
        primary_away_from_the_operator_leader(&ctx, &ns.name, primary, epoch, &nodes).await?;
    let started = Instant::now();
    // Frozen for about 30 s: the failover, then 28 s more.
    let round = node_fault_round(
        &ctx,
        &ns.name,
        "freeze",
        &primary,
        epoch,
        &nodes[&primary],
        Duration::from_secs(28),
    )
    .await?;
    println!(
        "    {} frozen: {} -> {} routed and acknowledging after {} ms; resumed after {} s, never took writes again",
        nodes[&primary],
        round.old,
        round.new,
        round.failover_ms,
        started.elapsed().as_secs()
    );
    Ok(())
}

async fn a_backups_node_killed_the_group_keeps_its_primary(ctx: Ctx) -> Result<()> {
    if !on_test_bed() {
        return Ok(());
    }
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("node-kill")?;
    let (primary, epoch, nodes) = spread_group(&ctx, &ns.name).await?;
    let backup = members()
        .into_iter()
        .find(|m| *m != primary)
        .context("a backup")?;
    let probes = Probes::start(&ctx, &ns.name, Duration::from_secs(240));
    let killed = NodeFault::apply(&ctx, "kill", &nodes[&backup])?;
    // For 10 s, writes keep being acknowledged (by the other backup) and the primary stays.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        wait_acked_write(&ctx, &ns.name, "backup-node-killed").await?;
        let status = groups(&ctx, &ns.name)
            .get(GROUP)
            .await?
            .status
            .context("status")?;
        ensure!(
            status.primary.as_deref() == Some(primary.as_str())
                && status.epoch == Some(epoch as i64),
            "the primary changed to {:?} (epoch {:?}) when a backup's node was killed",
            status.primary,
            status.epoch
        );
        ensure!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True"),
            "the group is not Available with a backup's node down: {:?}",
            status.conditions
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restarted = Instant::now();
    killed.restore()?;
    wait_ready(&ctx, &ns.name, GROUP, Duration::from_secs(180)).await?;
    let observed = probes.stop().await?;
    observed.check()?;
    println!(
        "    {} killed under {backup}: {primary} kept the writes; Ready again {} s after the node came back",
        nodes[&backup],
        restarted.elapsed().as_secs()
    );
    Ok(())
}

async fn new_members_stranded_on_one_node_are_created_again_elsewhere(ctx: Ctx) -> Result<()> {
    if !on_test_bed() {
        return Ok(());
    }
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("node-stranded")?;
    // What a scheduler's claim binding that conflicted half-way leaves behind: the agent
    // volumes of two new members provisioned for one node. Both members cannot run there.
    let node = ctx
        .kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])?
        .trim()
        .to_owned();
    let group = redis_example(&ctx)?;
    let size = group["spec"]["storage"]["size"]
        .as_str()
        .context("spec.storage.size in examples/redis.yaml")?
        .to_owned();
    for pod in ["cache-0", "cache-1"] {
        let claim = serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": format!("quorate-data-{pod}"),
                "annotations": {"volume.kubernetes.io/selected-node": node},
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}},
            },
        });
        ctx.kubectl_stdin(
            &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
            Some(&claim.to_string()),
        )?;
    }
    let (_, _, nodes) = spread_group(&ctx, &ns.name).await?;
    let events = event_messages(&ctx, &ns.name, "StrandedVolumes")?;
    ensure!(
        events.contains(&node),
        "no StrandedVolumes event naming {node}: {events:?}"
    );
    println!("    members on {nodes:?}; {events}");
    Ok(())
}

/// Makes a member on another node than the operator leader's the primary (a switchover when
/// the primary is on it), so that a fault of the primary's node measures the agents and the
/// routing alone; `primary_with_the_operator_leader` measures the other case. Returns
/// (primary, epoch).
pub async fn primary_away_from_the_operator_leader(
    ctx: &Ctx,
    ns: &str,
    mut primary: String,
    mut epoch: u64,
    nodes: &BTreeMap<String, String>,
) -> Result<(String, u64)> {
    // A few tries: right after the group is created the coordinator may appoint another member
    // than the one asked for (one not caught up yet is no candidate), and the operator's leader
    // may move meanwhile.
    for _ in 0..3 {
        let (_, node) = operator_leader(ctx).await?;
        if nodes[&primary] != node {
            return Ok((primary, epoch));
        }
        let target = nodes
            .iter()
            .find(|(_, n)| **n != node)
            .map(|(m, _)| m.clone())
            .with_context(|| format!("every member is on the operator leader's node {node}"))?;
        if let Err(e) = switch_over(ctx, ns, &target, epoch).await {
            println!("    switchover to {target}: {e:#}");
        }
        wait_ready(ctx, ns, GROUP, Duration::from_secs(120)).await?;
        let status = groups(ctx, ns).get(GROUP).await?.status.context("status")?;
        primary = status.primary.context("no primary after a switchover")?;
        epoch = status.epoch.context("no epoch after a switchover")? as u64;
    }
    anyhow::bail!("{primary} is still on the operator leader's node after 3 switchovers")
}

/// Asks for a switchover to `target` and waits until the routed primary's epoch is past `epoch`
/// and the group is Ready again. Returns (primary, epoch); the primary is `target`.
async fn switch_over(ctx: &Ctx, ns: &str, target: &str, epoch: u64) -> Result<(String, u64)> {
    plugin(
        ctx,
        &[
            "-n",
            ns,
            "switchover",
            GROUP,
            "--to",
            target,
            "--timeout",
            "60s",
        ],
    )?;
    let (new, new_epoch) =
        wait_routed_primary(ctx, ns, GROUP, epoch, Duration::from_secs(60)).await?;
    ensure!(new == target, "switched over to {new}, asked for {target}");
    wait_ready(ctx, ns, GROUP, Duration::from_secs(120)).await?;
    wait_acked_write(ctx, ns, "switched-over").await?;
    Ok((new, new_epoch))
}

/// Makes the member on the operator leader's node the primary (a switchover when it is not),
/// so that one node holds both. Returns (primary, epoch, node, leader pod).
pub async fn primary_with_the_operator_leader(
    ctx: &Ctx,
    ns: &str,
    mut primary: String,
    mut epoch: u64,
    nodes: &BTreeMap<String, String>,
) -> Result<(String, u64, String, String)> {
    // A few tries, as in `primary_away_from_the_operator_leader`: the coordinator may appoint
    // another member than the one asked for, and the operator's leader may move meanwhile.
    for _ in 0..3 {
        let (leader, node) = operator_leader(ctx).await?;
        let target = nodes
            .iter()
            .find(|(_, n)| **n == node)
            .map(|(m, _)| m.clone())
            .with_context(|| {
                format!("no member on the operator leader's node {node}: {nodes:?}")
            })?;
        if target == primary {
            return Ok((primary, epoch, node, leader));
        }
        if let Err(e) = switch_over(ctx, ns, &target, epoch).await {
            println!("    switchover to {target}: {e:#}");
        }
        wait_ready(ctx, ns, GROUP, Duration::from_secs(120)).await?;
        let status = groups(ctx, ns).get(GROUP).await?.status.context("status")?;
        primary = status.primary.context("no primary after a switchover")?;
        epoch = status.epoch.context("no epoch after a switchover")? as u64;
    }
    anyhow::bail!("{primary} is still not on the operator leader's node after 3 switchovers")
}

async fn the_node_of_the_primary_and_the_operator_leader_partitioned_routing_follows(
    ctx: Ctx,
) -> Result<()> {
    if !on_test_bed() {
        return Ok(());
    }
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("node-leader")?;
    let (primary, epoch, nodes) = spread_group(&ctx, &ns.name).await?;
    let (primary, epoch, node, leader) =
        primary_with_the_operator_leader(&ctx, &ns.name, primary, epoch, &nodes).await?;
    let restarts = operator_restarts(&ctx).await?;
    let round = node_fault_round(
        &ctx,
        &ns.name,
        "partition",
        &primary,
        epoch,
        &node,
        Duration::ZERO,
    )
    .await?;
    let (new_leader, _) = wait_for(
        "an operator replica leading again",
        Duration::from_secs(60),
        || async { Ok(operator_leader(&ctx).await.ok()) },
    )
    .await?;
    let after = operator_restarts(&ctx).await?;
    ensure!(
        after == restarts,
        "an operator replica restarted (restarts before {restarts:?}, after {after:?}): one that loses its lease must stand by in the same process"
    );
    println!(
        "    {node} (primary {primary}, operator leader {leader}) partitioned: {} routed and acknowledging after {} ms; leader now {new_leader}",
        round.new, round.failover_ms
    );
    Ok(())
}
