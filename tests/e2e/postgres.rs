//! PostgreSQL: `examples/postgres.yaml` as a user applies it (only the image reference is the
//! test bed's PostgreSQL, built from Debian's packages), failing over with a writer committing
//! through `db-rw`. Invariants are checked from the database's side: every commit PostgreSQL
//! acknowledged (synchronous replication, `ANY 1`) before a failover is on the new primary, and
//! no commit of the old primary is acknowledged once the new one acknowledged one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use quorate::api::{HookKind, HookStatus};
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

use crate::operator::{ensure_operator, groups, pod_ip, routed_primary, service_ip, wait_ready};
use crate::support::{Acks, Ctx, wait_for};
use crate::workloads::{Fault, Frozen, agent_pid, fault_on_primary, lose_claim};

pub fn tests() -> Vec<crate::support::Test> {
    crate::tests![
        postgres_group_streams_to_two_synchronous_standbys,
        postgres_fails_over_without_losing_an_acknowledged_commit,
        a_crashed_postgres_primary_is_rewound_and_streams_again,
        postgres_switchover_with_commits_running_loses_nothing,
        a_postgres_standby_whose_claim_is_deleted_is_copied_again,
        a_postgres_standby_that_cannot_reach_the_primary_retries_its_copy_and_reports_it,
        a_postgres_member_whose_rewind_fails_stays_out_and_reports_it,
        a_frozen_agent_leaves_no_postgres_primary_taking_commits_past_its_lease,
    ]
}

pub const GROUP: &str = "db";
const PORT: u16 = 5432;

/// `examples/postgres.yaml` (a Secret, a ConfigMap, the group) with the test bed's PostgreSQL
/// image in the group (the only change), and the superuser's password from its Secret.
pub fn postgres_example(ctx: &Ctx) -> Result<(Vec<Value>, String)> {
    let text = std::fs::read_to_string(ctx.root.join("examples/postgres.yaml"))?;
    let mut docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).context("examples/postgres.yaml")?;
    let mut password = None;
    for doc in &mut docs {
        match doc["kind"].as_str() {
            Some("ReplicaGroup") => {
                doc["spec"]["template"]["spec"]["containers"][0]["image"] =
                    Value::String(ctx.workload_image("postgres")?);
            }
            Some("Secret") => {
                password = doc["stringData"]["postgres-password"]
                    .as_str()
                    .map(str::to_owned);
            }
            _ => {}
        }
    }
    let password = password.context("examples/postgres.yaml: no Secret with postgres-password")?;
    Ok((docs, password))
}

/// A session as the superuser on `host` (a pod or Service IP).
pub async fn connect(host: &str, password: &str) -> Result<Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(PORT)
        .user("postgres")
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_millis(700));
    let (client, connection) = tokio::time::timeout(Duration::from_secs(2), config.connect(NoTls))
        .await
        .map_err(|_| anyhow!("connecting to {host}:{PORT}: no answer in 2 s"))??;
    tokio::spawn(connection);
    Ok(client)
}

/// A session on `host`, retried for up to `within`: right after a fault or a switchover a
/// server restarts (a demoted primary comes back as a standby) and kube-proxy rewrites a
/// Service's rules, so one refused connection says nothing yet.
pub async fn connect_within(host: &str, password: &str, within: Duration) -> Result<Client> {
    wait_for(
        &format!("{host}:{PORT} to accept a session"),
        within,
        || async { connect(host, password).await.map(Some) },
    )
    .await
}

/// One query, bounded: a session on a server that went away must not hang a test.
async fn query_one(client: &Client, sql: &str) -> Result<tokio_postgres::Row> {
    tokio::time::timeout(Duration::from_secs(3), client.query_one(sql, &[]))
        .await
        .map_err(|_| anyhow!("{sql}: no answer in 3 s"))?
        .with_context(|| sql.to_owned())
}

/// Row numbers, unique in the process: the rounds of a benchmark share the table.
static NEXT_ROW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);

fn next_row() -> i64 {
    NEXT_ROW.fetch_add(1, Ordering::SeqCst)
}

/// Commits row `n` of `server` into the writer's table; true once PostgreSQL acknowledged it
/// (bounded: a commit waiting for a standby that never comes is no acknowledgement).
async fn commit(c: &Client, n: i64, server: &str) -> bool {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&n, &server];
    let insert = c.execute("INSERT INTO acked (n, server) VALUES ($1, $2)", &params);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), insert).await,
        Ok(Ok(1))
    )
}

/// Tries a write on `c`: PostgreSQL's refusal as text, empty when the write went through.
async fn write_refusal(c: &Client, server: &str) -> String {
    // A standby looks the table up before it refuses the write: until it has replayed the
    // table's creation (with ANY 1, the other standby may have been the one that acknowledged
    // it) the error is "relation does not exist", not the refusal this is about.
    // Not there in 10 s: the INSERT below says what is wrong.
    let _ = wait_for("the writer's table", Duration::from_secs(10), || async {
        let row = c
            .query_one("SELECT to_regclass('acked') IS NOT NULL", &[])
            .await?;
        Ok(row.get::<_, bool>(0).then_some(()))
    })
    .await;
    c.execute("INSERT INTO acked (n, server) VALUES (0, $1)", &[&server])
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default()
}

/// The group as written in `ns`, Ready, with a primary routed and writable through `db-rw`,
/// and a commit acknowledged by a standby (the writer's table created by it). Returns
/// (primary, epoch).
pub async fn create_postgres(
    ctx: &Ctx,
    ns: &str,
    docs: &[Value],
    password: &str,
) -> Result<(String, u64)> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    ctx.kubectl_stdin(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(&list.to_string()),
    )?;
    wait_ready(ctx, ns, GROUP, Duration::from_secs(300)).await?;
    let (primary, epoch) =
        wait_routed_primary(ctx, ns, password, 0, Duration::from_secs(60)).await?;
    let rw = service_ip(ctx, ns, &format!("{GROUP}-rw")).await?;
    wait_for(
        "a commit through db-rw, acknowledged by a standby",
        Duration::from_secs(120),
        || async {
            let Ok(c) = connect(&rw, password).await else {
                return Ok(None);
            };
            let created = tokio::time::timeout(
                Duration::from_secs(3),
                c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS acked (n bigint PRIMARY KEY, server text NOT NULL)",
                ),
            )
            .await;
            Ok(matches!(created, Ok(Ok(()))).then_some(()))
        },
    )
    .await?;
    Ok((primary, epoch))
}

/// `create_postgres` of the example as written (with the test bed's image).
async fn create_example(ctx: &Ctx, ns: &str) -> Result<(String, u64, String)> {
    let (docs, password) = postgres_example(ctx)?;
    let (primary, epoch) = create_postgres(ctx, ns, &docs, &password).await?;
    Ok((primary, epoch, password))
}

/// Waits until the group has a primary above epoch `after`, routed by `db-rw`, and PostgreSQL
/// through `db-rw` is out of recovery. Returns (primary, epoch).
pub async fn wait_routed_primary(
    ctx: &Ctx,
    ns: &str,
    password: &str,
    after: u64,
    timeout: Duration,
) -> Result<(String, u64)> {
    let rw = service_ip(ctx, ns, &format!("{GROUP}-rw")).await?;
    wait_for(
        &format!("{GROUP}: a PostgreSQL primary routed above epoch {after}"),
        timeout,
        || async {
            let Some(routed) = routed_primary(ctx, ns, GROUP, after).await? else {
                return Ok(None);
            };
            let Ok(c) = connect(&rw, password).await else {
                return Ok(None);
            };
            let primary = query_one(&c, "select not pg_is_in_recovery()")
                .await
                .is_ok_and(|r| r.get::<_, bool>(0));
            Ok(primary.then_some(routed))
        },
    )
    .await
}

/// The standbys streaming from the server at `host`: (application_name = member, sync_state).
async fn streaming_standbys(host: &str, password: &str) -> Result<Vec<(String, String)>> {
    let c = connect(host, password).await?;
    let rows = tokio::time::timeout(
        Duration::from_secs(3),
        c.query(
            "select application_name, sync_state from pg_stat_replication where state = 'streaming' order by 1",
            &[],
        ),
    )
    .await
    .map_err(|_| anyhow!("pg_stat_replication: no answer in 3 s"))??;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Waits until `primary` has `standbys` streaming from it.
pub async fn wait_streaming(
    ctx: &Ctx,
    ns: &str,
    password: &str,
    primary: &str,
    standbys: &[String],
    timeout: Duration,
) -> Result<Vec<(String, String)>> {
    wait_for(
        &format!("{} streaming from {primary}", standbys.join(", ")),
        timeout,
        || async {
            let ip = pod_ip(ctx, ns, primary).await?.context("primary pod IP")?;
            let rows = streaming_standbys(&ip, password).await?;
            let all = standbys
                .iter()
                .all(|s| rows.iter().any(|(name, _)| name == s));
            Ok(all.then_some(rows))
        },
    )
    .await
}

fn members() -> Vec<String> {
    (0..3).map(|i| format!("{GROUP}-{i}")).collect()
}

/// One acknowledged commit: its number, when it returned, and which server took it.
#[derive(Clone, Debug)]
pub struct Acked {
    pub n: i64,
    pub at: Instant,
    /// The pod IP of the server (`inet_server_addr()`, asked on every new session).
    pub server: String,
}

/// Commits `INSERT INTO acked` through `db-rw` in a loop; reconnects on every error, as a
/// client would. Bounded: stops after `limit` at the latest.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub acked: Acks<Acked>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(addr: String, password: String, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acked = Acks::new();
        let log = acked.clone();
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + limit;
            let mut session: Option<(Client, String)> = None;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                if session.is_none() {
                    session = match connect(&addr, &password).await {
                        Ok(c) => query_one(&c, "select host(inet_server_addr())")
                            .await
                            .ok()
                            .map(|r| (c, r.get::<_, String>(0))),
                        Err(_) => None,
                    };
                    if session.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let Some((c, server)) = session.as_ref() else {
                    continue;
                };
                let n = next_row();
                if commit(c, n, server).await {
                    log.push(Acked {
                        n,
                        at: Instant::now(),
                        server: server.clone(),
                    });
                } else {
                    session = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self { stop, acked, task }
    }

    pub async fn stop(self) -> Result<Vec<Acked>> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?;
        Ok(self.acked.snapshot())
    }
}

/// The acknowledged commits missing on the server at `host`.
async fn missing(host: &str, password: &str, acked: &[Acked]) -> Result<Vec<i64>> {
    let c = connect_within(host, password, Duration::from_secs(30)).await?;
    let wanted: Vec<i64> = acked.iter().map(|a| a.n).collect();
    let rows = tokio::time::timeout(
        Duration::from_secs(10),
        c.query("select n from acked where n = any($1)", &[&wanted]),
    )
    .await
    .map_err(|_| anyhow!("reading the acknowledged commits: no answer in 10 s"))??;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(wanted
        .into_iter()
        .filter(|n| !present.contains(n))
        .collect())
}

/// The result of one failover round.
pub struct Round {
    /// From the kill (or the switchover request) to the first commit the new primary
    /// acknowledged.
    pub millis: u128,
    /// Acknowledged and missing on the new primary afterwards.
    pub lost: usize,
    pub acked: usize,
    pub old: String,
    pub new: String,
    /// When the fault was made.
    pub fault_at: Instant,
}

/// Makes `fault` on the primary while the writer runs;
/// measures until the first commit acknowledged by another server, then checks every
/// acknowledged commit, and that the old primary acknowledged none after the new one began.
pub async fn failover_round(
    ctx: &Ctx,
    ns: &str,
    password: &str,
    old: &str,
    epoch: u64,
    fault: Fault,
) -> Result<Round> {
    let rw = service_ip(ctx, ns, &format!("{GROUP}-rw")).await?;
    let old = old.to_owned();
    let old_ip = pod_ip(ctx, ns, &old)
        .await?
        .context("the primary's pod IP")?;
    let writer = Writer::start(rw.clone(), password.to_owned(), Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fault_at = Instant::now();
    fault_on_primary(ctx, ns, GROUP, &old, fault)?;
    let (new, _) = wait_routed_primary(ctx, ns, password, epoch, Duration::from_secs(90)).await?;
    // Until the writer has a commit acknowledged by another server (bounded), then a little
    // more: a late acknowledgement by the old primary would show.
    let acked_again = writer
        .acked
        .wait_until(
            &format!("a commit acknowledged by the new primary {new}"),
            Duration::from_secs(60),
            |a| a.at > fault_at && a.server != old_ip,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writer.stop().await?;
    acked_again?;
    let first_after = acked
        .iter()
        .find(|a| a.at > fault_at && a.server != old_ip)
        .with_context(|| format!("no commit was acknowledged by the new primary {new}"))?;
    let before = acked.iter().filter(|a| a.at <= fault_at).count();
    ensure!(
        before >= 5,
        "only {before} commits acknowledged before the fault"
    );
    if let Some(late) = acked
        .iter()
        .find(|a| a.server == old_ip && a.at > first_after.at)
    {
        bail!(
            "commit {} acknowledged by the old primary {old} after the new primary {new} acknowledged commit {}",
            late.n,
            first_after.n
        );
    }
    let lost = missing(&rw, password, &acked).await?;
    Ok(Round {
        millis: first_after.at.duration_since(fault_at).as_millis(),
        lost: lost.len(),
        acked: acked.len(),
        old,
        new,
        fault_at,
    })
}

async fn postgres_group_streams_to_two_synchronous_standbys(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-ready")?;
    let (primary, _, password) = create_example(&ctx, &ns.name).await?;
    let standbys: Vec<String> = members().into_iter().filter(|m| *m != primary).collect();
    let rows = wait_streaming(
        &ctx,
        &ns.name,
        &password,
        &primary,
        &standbys,
        Duration::from_secs(60),
    )
    .await?;
    ensure!(
        rows.iter().all(|(_, sync)| sync == "quorum"),
        "the standbys of {primary} are not synchronous (ANY 1): {rows:?}"
    );
    // A standby answers reads and refuses writes.
    let ip = pod_ip(&ctx, &ns.name, &standbys[0])
        .await?
        .context("standby pod IP")?;
    let c = connect(&ip, &password).await?;
    ensure!(
        query_one(&c, "select pg_is_in_recovery()")
            .await?
            .get::<_, bool>(0),
        "{} is not in recovery",
        standbys[0]
    );
    let refused = write_refusal(&c, "standby").await;
    ensure!(
        refused.contains("read-only"),
        "a write on the standby {} was not refused as read-only: {refused}",
        standbys[0]
    );
    println!("    {primary} streams to {rows:?}");
    Ok(())
}

async fn postgres_fails_over_without_losing_an_acknowledged_commit(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-failover")?;
    let (primary, epoch, password) = create_example(&ctx, &ns.name).await?;
    let round = failover_round(
        &ctx,
        &ns.name,
        &password,
        &primary,
        epoch,
        Fault::PodDeleted,
    )
    .await?;
    ensure!(
        round.lost == 0,
        "{} of {} acknowledged commits lost in the failover {} -> {}",
        round.lost,
        round.acked,
        round.old,
        round.new
    );
    // The old primary comes back as a streaming standby of the new one (rewound if needed).
    wait_streaming(
        &ctx,
        &ns.name,
        &password,
        &round.new,
        std::slice::from_ref(&round.old),
        Duration::from_secs(120),
    )
    .await?;
    println!(
        "    postgres failover {} -> {}: {} ms to the first acknowledged commit, {} acknowledged, 0 lost; {} streams again after {} ms",
        round.old,
        round.new,
        round.millis,
        round.acked,
        round.old,
        round.fault_at.elapsed().as_millis()
    );
    Ok(())
}

/// kill -9 of the primary's postmaster: no clean shutdown, so the data needs crash recovery
/// (pg_rewind runs it in single-user mode) before it can be rewound onto the new timeline.
const CRASH: Fault = Fault::Crash {
    container: "postgres",
    command: r#"kill -9 "$(head -n 1 /var/lib/postgresql/data/pgdata/postmaster.pid)""#,
};

async fn a_crashed_postgres_primary_is_rewound_and_streams_again(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-crash")?;
    let (primary, epoch, password) = create_example(&ctx, &ns.name).await?;
    let round = failover_round(&ctx, &ns.name, &password, &primary, epoch, CRASH).await?;
    ensure!(
        round.lost == 0,
        "{} of {} acknowledged commits lost when the primary {} crashed",
        round.lost,
        round.acked,
        round.old
    );
    wait_streaming(
        &ctx,
        &ns.name,
        &password,
        &round.new,
        std::slice::from_ref(&round.old),
        Duration::from_secs(120),
    )
    .await?;
    // The same pod, its PostgreSQL restarted in place (not a new pod with a clean shutdown).
    let restarts = ctx.kubectl(&[
        "get",
        "pod",
        &round.old,
        "-n",
        &ns.name,
        "-o",
        r#"jsonpath={.status.containerStatuses[?(@.name=="postgres")].restartCount}"#,
    ])?;
    ensure!(
        restarts.trim().parse::<u32>().is_ok_and(|n| n >= 1),
        "the postgres container of {} shows {restarts:?} restarts after the crash",
        round.old
    );
    println!(
        "    postgres crash {} -> {}: {} ms to the first acknowledged commit, {} acknowledged, 0 lost; {} rewound and streams again after {} ms",
        round.old,
        round.new,
        round.millis,
        round.acked,
        round.old,
        round.fault_at.elapsed().as_millis()
    );
    Ok(())
}

async fn postgres_switchover_with_commits_running_loses_nothing(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-switch")?;
    let (primary, epoch, password) = create_example(&ctx, &ns.name).await?;
    let round = failover_round(
        &ctx,
        &ns.name,
        &password,
        &primary,
        epoch,
        Fault::Switchover,
    )
    .await?;
    ensure!(
        round.lost == 0,
        "{} acknowledged commits lost in the switchover",
        round.lost
    );
    // The old primary takes no writes: it is a standby of the new one.
    let ip = pod_ip(&ctx, &ns.name, &round.old)
        .await?
        .context("old primary pod IP")?;
    wait_streaming(
        &ctx,
        &ns.name,
        &password,
        &round.new,
        std::slice::from_ref(&round.old),
        Duration::from_secs(60),
    )
    .await?;
    let c = connect_within(&ip, &password, Duration::from_secs(30)).await?;
    let refused = write_refusal(&c, "old").await;
    ensure!(
        refused.contains("read-only"),
        "the old primary {} took a write after the switchover: {refused}",
        round.old
    );
    println!(
        "    postgres switchover {} -> {}: {} ms to the first acknowledged commit, {} acknowledged, 0 lost",
        round.old, round.new, round.millis, round.acked
    );
    Ok(())
}

async fn a_postgres_standby_whose_claim_is_deleted_is_copied_again(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-reseed")?;
    let (primary, _, password) = create_example(&ctx, &ns.name).await?;
    let rw = service_ip(&ctx, &ns.name, &format!("{GROUP}-rw")).await?;
    let c = connect(&rw, &password).await?;
    ensure!(
        commit(&c, next_row(), "seeded").await,
        "no commit through db-rw"
    );
    let standby = members()
        .into_iter()
        .find(|m| *m != primary)
        .context("a standby")?;
    lose_claim(&ctx, &ns.name, &standby).await?;
    wait_ready(&ctx, &ns.name, GROUP, Duration::from_secs(240)).await?;
    let (primary, _) =
        wait_routed_primary(&ctx, &ns.name, &password, 0, Duration::from_secs(60)).await?;
    wait_streaming(
        &ctx,
        &ns.name,
        &password,
        &primary,
        std::slice::from_ref(&standby),
        Duration::from_secs(120),
    )
    .await?;
    let s = standby.clone();
    wait_for(
        "the copied standby to hold the data",
        Duration::from_secs(60),
        || async {
            let Some(ip) = pod_ip(&ctx, &ns.name, &s).await? else {
                return Ok(None);
            };
            let Ok(c) = connect(&ip, &password).await else {
                return Ok(None);
            };
            Ok(
                query_one(&c, "select count(*) from acked where server = 'seeded'")
                    .await
                    .ok()
                    .filter(|r| r.get::<_, i64>(0) == 1)
                    .map(|_| ()),
            )
        },
    )
    .await?;
    Ok(())
}

/// PostgreSQL traffic of one pod dropped (in that pod's own network namespace, entered through
/// one of its processes); lifted when dropped.
struct Blocked(i32);

const BLOCK_CHAIN: &str = "QUORATE-E2E-BLOCK";

/// The test bed's host and node addresses (hack/cluster.sh, docs/testbed.md).
const TESTBED_NODE_NETWORK: &str = "10.89.0.0/16";

impl Blocked {
    /// New connections to the pod's PostgreSQL, unless they come from `allowed`.
    fn inbound(pid: i32, allowed: &[String]) -> Result<Self> {
        let block = Self(pid);
        block.iptables(&["-N", BLOCK_CHAIN])?;
        for source in allowed {
            block.iptables(&["-A", BLOCK_CHAIN, "-s", source, "-j", "RETURN"])?;
        }
        block.iptables(&["-A", BLOCK_CHAIN, "-j", "DROP"])?;
        block.iptables(&[
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "5432",
            "-j",
            BLOCK_CHAIN,
        ])?;
        Ok(block)
    }

    /// Every connection from the pod to another PostgreSQL.
    fn outbound(pid: i32) -> Result<Self> {
        let block = Self(pid);
        block.iptables(&["-N", BLOCK_CHAIN])?;
        block.iptables(&["-A", BLOCK_CHAIN, "-o", "lo", "-j", "RETURN"])?;
        block.iptables(&["-A", BLOCK_CHAIN, "-j", "DROP"])?;
        block.iptables(&[
            "-I",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "5432",
            "-j",
            BLOCK_CHAIN,
        ])?;
        Ok(block)
    }

    fn iptables(&self, args: &[&str]) -> Result<()> {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &self.0.to_string(), "-n", "iptables", "-w"])
            .args(args)
            .output()
            .context("nsenter iptables")?;
        ensure!(
            out.status.success(),
            "iptables {} in the network namespace of process {}: {}",
            args.join(" "),
            self.0,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // The namespace may be gone with its pod: nothing left to lift then.
        for chain in ["INPUT", "OUTPUT"] {
            let _ = self.iptables(&[
                "-D",
                chain,
                "-p",
                "tcp",
                "--dport",
                "5432",
                "-j",
                BLOCK_CHAIN,
            ]);
        }
        let _ = self.iptables(&["-F", BLOCK_CHAIN]);
        let _ = self.iptables(&["-X", BLOCK_CHAIN]);
    }
}

/// The latest failed hook of `member` whose output contains `text`, from the group's status.
async fn wait_hook_failure(ctx: &Ctx, ns: &str, member: &str, text: &str) -> Result<HookStatus> {
    let g = groups(ctx, ns);
    wait_for(
        &format!("{member}'s status to report a failed hook printing {text:?}"),
        Duration::from_secs(120),
        || async {
            let group = g.get(GROUP).await?;
            Ok(group
                .status
                .into_iter()
                .flat_map(|s| s.members)
                .filter(|m| m.name == member)
                .flat_map(|m| m.hooks)
                .find(|h| !h.ok && h.output.as_deref().is_some_and(|o| o.contains(text))))
        },
    )
    .await
}

/// A HookFailed Event about `member` whose message contains `text`.
async fn wait_hook_failed_event(ctx: &Ctx, ns: &str, member: &str, text: &str) -> Result<String> {
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), ns);
    wait_for(
        &format!("a HookFailed event about {member} saying {text:?}"),
        Duration::from_secs(60),
        || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("HookFailed"))
                .filter_map(|e| e.message)
                .find(|m| m.starts_with(&format!("{member}:")) && m.contains(text)))
        },
    )
    .await
}

/// A standby copied again (its claim lost) while the primary drops its connections: the join
/// hook fails, the member's status and an Event say why, and the copy is retried until it works.
async fn a_postgres_standby_that_cannot_reach_the_primary_retries_its_copy_and_reports_it(
    ctx: Ctx,
) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-join")?;
    let (primary, _, password) = create_example(&ctx, &ns.name).await?;
    let standbys: Vec<String> = members().into_iter().filter(|m| *m != primary).collect();
    let (joining, streaming) = (&standbys[0], &standbys[1]);
    // The other standby keeps streaming (synchronous commit needs one); the host, the nodes
    // and the pod itself keep reaching it.
    let mut allowed = vec!["127.0.0.0/8".to_owned()];
    for member in [&primary, streaming] {
        allowed.push(
            pod_ip(&ctx, &ns.name, member)
                .await?
                .with_context(|| format!("{member} has no IP"))?,
        );
    }
    // The test bed's node network: the host (this test, through Services too) and the nodes.
    allowed.push(TESTBED_NODE_NETWORK.to_owned());
    let block = Blocked::inbound(agent_pid(GROUP, &primary, &ns.name)?, &allowed)?;
    lose_claim(&ctx, &ns.name, joining).await?;
    let failed = wait_hook_failure(&ctx, &ns.name, joining, "no primary answers at").await?;
    ensure!(failed.hook == HookKind::Join, "{failed:?}");
    let event = wait_hook_failed_event(&ctx, &ns.name, joining, "join hook failed").await?;
    println!("    {joining} could not copy from {primary}: {event}");
    drop(block);
    // The next attempt comes after the supervisor's back-off (up to 30 s), and an attempt that
    // started just before the block was lifted fails first (~20 s); then the copy itself. A
    // full `make test` on two cores once needed more than 120 s.
    wait_streaming(
        &ctx,
        &ns.name,
        &password,
        &primary,
        std::slice::from_ref(joining),
        Duration::from_secs(180),
    )
    .await?;
    wait_ready(&ctx, &ns.name, GROUP, Duration::from_secs(120)).await?;
    Ok(())
}

/// A primary crashes while it cannot reach any other PostgreSQL: its rewind onto the new
/// primary's timeline fails. It must stay out of the candidates and say why (status, Event), the
/// new primary stays the only one, and once it can reach the new primary it is rewound and
/// streams.
async fn a_postgres_member_whose_rewind_fails_stays_out_and_reports_it(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-rewind")?;
    let (old, epoch, password) = create_example(&ctx, &ns.name).await?;
    let block = Blocked::outbound(agent_pid(GROUP, &old, &ns.name)?)?;
    fault_on_primary(&ctx, &ns.name, GROUP, &old, CRASH)?;
    let (new, new_epoch) =
        wait_routed_primary(&ctx, &ns.name, &password, epoch, Duration::from_secs(60)).await?;
    ensure!(new != old, "{old} is still the routed primary");
    let failed = wait_hook_failure(&ctx, &ns.name, &old, "cannot rewind").await?;
    let event = wait_hook_failed_event(&ctx, &ns.name, &old, "cannot rewind").await?;
    println!("    {old} could not be rewound onto {new}: {event}");
    let g = groups(&ctx, &ns.name).get(GROUP).await?;
    let s = g.status.context("status")?;
    ensure!(
        s.primary.as_deref() == Some(new.as_str()) && s.epoch == Some(new_epoch as i64),
        "the primary moved while {old} could not be rewound: {:?} at {:?} ({failed:?})",
        s.primary,
        s.epoch
    );
    let member = s
        .members
        .iter()
        .find(|m| m.name == old)
        .context("the old member's status")?;
    ensure!(
        !member.healthy,
        "{old} counts as healthy although its {:?} hook failed",
        failed.hook
    );
    drop(block);
    wait_streaming(
        &ctx,
        &ns.name,
        &password,
        &new,
        std::slice::from_ref(&old),
        Duration::from_secs(120),
    )
    .await?;
    Ok(())
}

/// Freezes the primary's agent (SIGSTOP; PostgreSQL keeps running) and measures how long
/// PostgreSQL on that pod still commits; keeps it frozen until another member is the routed
/// primary, then resumes it. Returns (ms, new primary).
pub async fn freeze_round(
    ctx: &Ctx,
    ns: &str,
    password: &str,
    primary: &str,
    epoch: u64,
) -> Result<(u128, String)> {
    let ip = pod_ip(ctx, ns, primary).await?.context("primary pod IP")?;
    let c = connect(&ip, password).await?;
    ensure!(
        commit(&c, next_row(), "probe").await,
        "{primary} does not commit before the freeze"
    );
    let pid = agent_pid(GROUP, primary, ns)?;
    let frozen = Frozen::freeze(pid);
    let start = Instant::now();
    let mut session = Some(c);
    let fenced = loop {
        let n = next_row();
        let committed = match session.as_ref() {
            Some(c) => commit(c, n, "probe").await,
            None => false,
        };
        if !committed {
            // The session ended (a fast shutdown), or the commit was refused or hangs: a new
            // session must not commit either.
            let Ok(c) = connect(&ip, password).await else {
                break start.elapsed();
            };
            if !commit(&c, n, "probe").await {
                break start.elapsed();
            }
            session = Some(c);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "{primary} still commits 20 s after its agent was frozen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (new, _) = wait_routed_primary(ctx, ns, password, epoch, Duration::from_secs(60)).await?;
    drop(frozen);
    Ok((fenced.as_millis(), new))
}

async fn a_frozen_agent_leaves_no_postgres_primary_taking_commits_past_its_lease(
    ctx: Ctx,
) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("pg-freeze")?;
    let (primary, epoch, password) = create_example(&ctx, &ns.name).await?;
    let (ms, new) = freeze_round(&ctx, &ns.name, &password, &primary, epoch).await?;
    let lease = 1000;
    ensure!(
        ms <= lease + 200,
        "{primary} committed for {ms} ms after its agent froze (lease {lease} ms)"
    );
    ensure!(
        new != primary,
        "the frozen primary {primary} is still routed"
    );
    wait_ready(&ctx, &ns.name, GROUP, Duration::from_secs(240)).await?;
    println!("    {primary} stopped committing {ms} ms after its agent froze; {new} took over");
    Ok(())
}
