//! `make bench-compare`: PostgreSQL failover under Quorate and under Patroni, in one run, on this
//! machine, with the same PostgreSQL binaries (the test bed's image, `hack/debian-images.txt`),
//! the same settings, the same fault and the same client. Prints:
//!   patroni_failover_ms config=tightest p50=… p95=… n=…
//!   patroni_failover_ms config=defaults p50=… p95=… n=…
//!   quorate_failover_ms p50=… p95=… n=…
//!   ratio_p50 tightest=… defaults=…
//!
//! Three members each, on loopback addresses of a private network namespace (hack/bench.sh
//! runs this under `unshare --net`: nothing here can reach or be reached from outside):
//! - Quorate: three `quorate-agent --supervised` with `quorate-run` running the scripts of
//!   `examples/postgres.yaml` as they are, each member chrooted into the image's root filesystem
//!   with its own data, socket and script directories mounted where the pod has them.
//! - Patroni (pinned, hack/patroni-requirements.txt) with its Raft DCS, PostgreSQL from the same
//!   image, synchronous_mode on (every commit on a standby before it returns, as with the
//!   example's ANY 1), the example's PostgreSQL settings.
//!
//! The fault: kill -9 of the primary's agent (quorate-agent / patroni) and its postmaster at once.
//! The figure: from the kill to the first commit acknowledged by another member, the client
//! trying every member's address (as a multi-host connection string would). Then the killed
//! member is started again (as the kubelet or systemd would) and rejoins before the next round.

#[path = "../agent_support/mod.rs"]
mod agent_support;
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
#[allow(dead_code)]
mod support;
#[path = "../e2e/workloads.rs"]
#[allow(dead_code)]
mod workloads;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use common::Summary;
use support::wait_for;

const ROUNDS: usize = 10;
/// The image's postgres user (`user=postgres:999:999` in hack/debian-images.txt), as in the pod.
const POSTGRES_UID: u32 = 999;
/// Patroni runs as this host user: PostgreSQL refuses root, and initdb needs a passwd entry.
const NOBODY: u32 = 65534;
const PASSWORD: &str = "bench-password";
const REPLICATION_PASSWORD: &str = "bench-replication";
/// The example's PostgreSQL settings that matter for replication and failover, given to
/// Patroni too (Patroni writes postgresql.conf itself).
const SHARED_PARAMETERS: &[(&str, &str)] = &[
    ("max_connections", "50"),
    ("shared_buffers", "32MB"),
    ("jit", "off"),
    ("wal_level", "replica"),
    ("hot_standby", "on"),
    ("wal_log_hints", "on"),
    ("max_wal_senders", "10"),
    ("wal_keep_size", "128MB"),
    ("synchronous_commit", "on"),
    ("wal_retrieve_retry_interval", "200ms"),
    ("wal_receiver_timeout", "5s"),
    ("wal_sender_timeout", "5s"),
];

/// Where hack/bench.sh put things.
struct Setup {
    /// The PostgreSQL image's root filesystem.
    root: PathBuf,
    patroni: PathBuf,
    /// A world-readable working directory of this run.
    work: PathBuf,
}

fn setup() -> Result<Setup> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| anyhow!("{name} is not set: run `make bench-compare`"))
    };
    // Only loopback: the bench must run in its own network namespace (/proc/self/net is this
    // process's namespace; /sys/class/net would show the namespace sysfs was mounted in).
    let interfaces: Vec<String> = fs::read_to_string("/proc/self/net/dev")
        .context("reading /proc/self/net/dev")?
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect();
    ensure!(
        interfaces == ["lo"],
        "network interfaces {interfaces:?}: run `make bench-compare`, which runs this in a private network namespace"
    );
    Ok(Setup {
        root: var("QUORATE_PG_ROOT")?.into(),
        patroni: var("QUORATE_PATRONI")?.into(),
        work: var("QUORATE_COMPARE_DIR")?.into(),
    })
}

fn main() -> Result<()> {
    let setup = setup()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Interrupted: every process and PostgreSQL this bench started is stopped on the way
        // out (the beds' Drop), not left behind.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(&setup) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}

async fn run(setup: &Setup) -> Result<()> {
    {
        let tightest = patroni_rounds(setup, PatroniConfig::Tightest).await?;
        println!("patroni_failover_ms config=tightest {}", tightest.figures());
        let quorate = quorate_rounds(setup).await?;
        println!("quorate_failover_ms {}", quorate.figures());
        let defaults = patroni_rounds(setup, PatroniConfig::Defaults).await?;
        println!("patroni_failover_ms config=defaults {}", defaults.figures());
        println!(
            "ratio_p50 tightest={:.1} defaults={:.1}",
            tightest.p50 as f64 / quorate.p50.max(1) as f64,
            defaults.p50 as f64 / quorate.p50.max(1) as f64
        );
        Ok(())
    }
}

trait Figures {
    fn figures(&self) -> String;
}

impl Figures for Summary {
    fn figures(&self) -> String {
        format!("p50={} p95={} n={}", self.p50, self.p95, self.n)
    }
}

/// A process of this bench: killed (SIGKILL) with its process group and reaped on drop.
struct Owned {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Owned {
    fn spawn(what: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self {
            what: what.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// SIGKILL to the process only (the fault), reaped.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({})\n{}",
            self.what,
            self.log.display(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The whole group: PostgreSQL and the hooks started under it.
            // SAFETY: signalling the process group this bench created.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

fn kill9_pid(pid: i32) {
    // SAFETY: a postmaster this bench started (read from its own data directory).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// The postmaster's PID from `postmaster.pid` in `pgdata`.
fn postmaster_pid(pgdata: &Path) -> Option<i32> {
    fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn chown_dir(path: &Path, uid: u32, mode: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .with_context(|| format!("chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}

/// Which member is the primary, with both others streaming from it (their WAL receivers, as
/// the standbys see it: a `pg_basebackup` copying has a WAL sender too) and a commit acknowledged:
/// every member's PostgreSQL asked directly.
async fn settled(hosts: &[String], timeout: Duration) -> Result<usize> {
    wait_for(
        "one primary with two streaming standbys",
        timeout,
        || async {
            let mut primary = None;
            let mut senders = Vec::new();
            for (i, h) in hosts.iter().enumerate() {
                let Ok(c) = postgres::connect(h, PASSWORD).await else {
                    return Ok(None);
                };
                let row = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.query_one(
                        "select pg_is_in_recovery(), (select sender_host from pg_stat_wal_receiver where status = 'streaming')",
                        &[],
                    ),
                )
                .await;
                let Ok(Ok(row)) = row else {
                    return Ok(None);
                };
                if !row.get::<_, bool>(0) {
                    primary = Some(i);
                } else if let Some(sender) = row.get::<_, Option<String>>(1) {
                    senders.push(sender);
                }
            }
            match primary {
                Some(p)
                    if senders.iter().filter(|s| **s == hosts[p]).count() == 2
                        && commit_on(&hosts[p]).await =>
                {
                    Ok(Some(p))
                }
                _ => Ok(None),
            }
        },
    )
    .await
}

/// One commit on `host`, acknowledged (synchronous commit: a standby has it), within 2 s.
async fn commit_on(host: &str) -> bool {
    let Ok(c) = postgres::connect(host, PASSWORD).await else {
        return false;
    };
    let insert = c.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench (at timestamptz NOT NULL); INSERT INTO bench VALUES (now())",
    );
    matches!(
        tokio::time::timeout(Duration::from_secs(2), insert).await,
        Ok(Ok(()))
    )
}

/// From `fault_at` until a member other than `old` acknowledges a commit: every other member
/// tried in its own task, every 20 ms.
async fn first_commit_elsewhere(hosts: &[String], old: usize, fault_at: Instant) -> Result<u128> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let mut tasks = Vec::new();
    for (i, h) in hosts.iter().enumerate().filter(|(i, _)| *i != old) {
        let (h, tx) = (h.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                if commit_on(&h).await {
                    let _ = tx.send((i, Instant::now())).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    drop(tx);
    let first = tokio::time::timeout(Duration::from_secs(180), rx.recv()).await;
    for t in &tasks {
        t.abort();
    }
    let (_, at) = first
        .map_err(|_| anyhow!("no member took a commit within 180 s of the kill"))?
        .context("every commit task ended")?;
    Ok(at.duration_since(fault_at).as_millis())
}

// --- Quorate ------------------------------------------------------------------------------

/// The example's group spec and its ConfigMap's files.
fn postgres_example() -> Result<(quorate::api::ReplicaGroupSpec, Vec<(String, String)>)> {
    let path = manifests::repo_root().join("examples/postgres.yaml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).context("examples/postgres.yaml")?;
    let group = docs
        .iter()
        .find(|d| d["kind"] == "ReplicaGroup")
        .context("examples/postgres.yaml: no ReplicaGroup")?;
    let spec: quorate::api::ReplicaGroupSpec =
        serde_json::from_value(group["spec"].clone()).context("the example's spec")?;
    let scripts = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"].as_object())
        .context("examples/postgres.yaml: no ConfigMap with data")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    Ok((spec, scripts))
}

/// A file of the example's ConfigMap as member `ip` gets it. One line differs: a pod has an
/// address of its own, so the example listens on every address ('*'); here the three members
/// share one network namespace, and each listens on its own loopback address.
fn member_file(name: &str, text: &str, ip: &str) -> Result<String> {
    if name != "postgresql.conf" {
        return Ok(text.to_owned());
    }
    let line = "listen_addresses = '*'";
    ensure!(
        text.contains(line),
        "examples/postgres.yaml: postgresql.conf no longer has {line}"
    );
    Ok(text.replace(line, &format!("listen_addresses = '{ip}'")))
}

struct QuorateBed {
    cluster: agent_support::Cluster,
    supervisors: Vec<Option<Owned>>,
    dirs: Vec<PathBuf>,
    hosts: Vec<String>,
    hooks: String,
    root: PathBuf,
}

impl QuorateBed {
    /// `quorate-run` for member `i`, in its own mount namespace, chrooted into the image as
    /// the image's postgres user, with its data, socket and scripts where the pod has them.
    fn start_supervisor(&mut self, i: usize) -> Result<()> {
        let d = &self.dirs[i];
        let r = self.root.display().to_string();
        let script = format!(
            "set -e
mount --bind {d}/data {r}/var/lib/postgresql/data
mount --bind {d}/run {r}/var/run/postgresql
mount --bind {d}/scripts {r}/scripts
mount --bind {run} {r}/run/quorate/bin/quorate-run
mount -t proc proc {r}/proc
mount --rbind /dev {r}/dev
cd {r}/var/lib/postgresql
exec chroot --userspec={POSTGRES_UID}:{POSTGRES_UID} {r} /run/quorate/bin/quorate-run -- sh /scripts/run.sh",
            d = d.display(),
            run = env!("CARGO_BIN_EXE_quorate-run"),
        );
        let node = &self.cluster.nodes[i];
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/var/lib/postgresql")
            .env("QUORATE_HOOKS", &self.hooks)
            .env("QUORATE_AGENT_URL", format!("http://{}", node.http()))
            .env("QUORATE_MEMBER", &node.spec.name)
            .env("POSTGRES_PASSWORD", PASSWORD)
            .env("REPLICATION_PASSWORD", REPLICATION_PASSWORD);
        self.supervisors[i] = Some(Owned::spawn(
            &format!("quorate-run {}", node.spec.name),
            cmd,
            d.join("supervisor.log"),
        )?);
        Ok(())
    }

    fn logs(&self) -> String {
        let mut out = self.cluster.logs(15);
        for s in self.supervisors.iter().flatten() {
            out.push_str(&s.tail());
            out.push('\n');
        }
        out
    }
}

impl Drop for QuorateBed {
    fn drop(&mut self) {
        self.supervisors.clear();
        stop_postmasters(self.dirs.iter().map(|d| d.join("data/pgdata")));
    }
}

/// Every postmaster still running in these data directories, killed: quorate-run starts
/// PostgreSQL in a process group of its own, and Patroni detaches it from itself.
fn stop_postmasters(pgdatas: impl Iterator<Item = PathBuf>) {
    for pgdata in pgdatas {
        if let Some(pid) = postmaster_pid(&pgdata) {
            // Only when that PID is still a postmaster (a process in a data directory).
            let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
            if cwd.is_some_and(|c| c.ends_with("pgdata")) {
                kill9_pid(pid);
            }
        }
    }
}

async fn quorate_rounds(setup: &Setup) -> Result<Summary> {
    let (spec, scripts) = postgres_example()?;
    let hooks = quorate::supervisor::config::SupervisorConfig::for_spec(&spec)
        .context("the example declares hooks")?;
    // The agents' flags as the operator sets them from the spec; the flap guard raised (ten
    // failovers in minutes would trip it at the example's 6 per hour: that is what it is for,
    // and Patroni has none).
    let cluster = agent_support::Cluster::start(agent_support::ClusterOptions {
        members: 3,
        args: vec![
            "--supervised".into(),
            format!("--lease-millis={}", spec.failover.lease_millis),
            "--max-failovers-per-hour=1000".into(),
        ],
        ..Default::default()
    })
    .map_err(|e| anyhow!("starting the agents: {e}"))?;
    let base = setup.work.join("quorate");
    let mut dirs = Vec::new();
    for node in &cluster.nodes {
        let d = base.join(&node.spec.name);
        for (sub, mode) in [("data", 0o700), ("run", 0o2775)] {
            chown_dir(&d.join(sub), POSTGRES_UID, mode)?;
        }
        chown_dir(&d.join("scripts"), 0, 0o755)?;
        for (name, text) in &scripts {
            fs::write(
                d.join("scripts").join(name),
                member_file(name, text, &node.spec.ip)?,
            )?;
        }
        dirs.push(d);
    }
    let hosts = cluster.nodes.iter().map(|n| n.spec.ip.clone()).collect();
    let mut bed = QuorateBed {
        cluster,
        supervisors: (0..3).map(|_| None).collect(),
        dirs,
        hosts,
        hooks: serde_json::to_string(&hooks)?,
        root: setup.root.clone(),
    };
    for i in 0..3 {
        bed.start_supervisor(i)?;
    }
    bed.cluster
        .bootstrap()
        .await
        .map_err(|e| anyhow!("bootstrapping the group: {e}"))?;
    let result = quorate_measure(&mut bed).await;
    if result.is_err() {
        eprintln!("{}", bed.logs());
    }
    result
}

async fn quorate_measure(bed: &mut QuorateBed) -> Result<Summary> {
    let mut ms = Vec::new();
    for round in 0..ROUNDS {
        let old = settled(&bed.hosts, Duration::from_secs(180)).await?;
        // Every member's agent settled too (healthy, positions read).
        bed.cluster
            .wait_state(Duration::from_secs(60), "three healthy members", |s| {
                s.members.iter().filter(|m| m.healthy).count() == 3
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let pid = postmaster_pid(&bed.dirs[old].join("data/pgdata"))
            .context("the primary's postmaster.pid")?;
        let fault_at = Instant::now();
        bed.cluster.kill9(old);
        kill9_pid(pid);
        let took = first_commit_elsewhere(&bed.hosts, old, fault_at).await?;
        eprintln!(
            "quorate round {}: {} killed, {took} ms to a commit elsewhere",
            round + 1,
            bed.cluster.nodes[old].spec.name
        );
        ms.push(took);
        // As the kubelet would: the agent and the container start again.
        if let Some(mut s) = bed.supervisors[old].take() {
            let gone = agent_support::wait_reaped(&mut s.child, Duration::from_secs(10));
            ensure!(
                gone,
                "quorate-run did not exit after its postmaster was killed"
            );
        }
        bed.cluster
            .restart(old)
            .map_err(|e| anyhow!("restarting the agent: {e}"))?;
        bed.start_supervisor(old)?;
    }
    Ok(Summary::of(ms))
}

// --- Patroni ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum PatroniConfig {
    /// The smallest values Patroni accepts: ttl ≥ 20, loop_wait ≥ 1, retry_timeout ≥ 3.
    Tightest,
    /// Patroni's defaults: ttl 30, loop_wait 10, retry_timeout 10.
    Defaults,
}

impl PatroniConfig {
    fn name(self) -> &'static str {
        match self {
            Self::Tightest => "tightest",
            Self::Defaults => "defaults",
        }
    }

    fn timing(self) -> (u64, u64, u64) {
        match self {
            Self::Tightest => (20, 1, 3),
            Self::Defaults => (30, 10, 10),
        }
    }
}

/// `bin_dir` for Patroni: the image's PostgreSQL programs with the image's libraries.
fn patroni_bin_dir(setup: &Setup) -> Result<PathBuf> {
    let dir = setup.work.join("patroni-bin");
    fs::create_dir_all(&dir)?;
    let r = setup.root.display();
    for prog in [
        "postgres",
        "pg_ctl",
        "initdb",
        "pg_basebackup",
        "pg_rewind",
        "pg_controldata",
        "pg_isready",
        "psql",
    ] {
        let path = dir.join(prog);
        fs::write(
            &path,
            format!(
                "#!/bin/sh\nLD_LIBRARY_PATH={r}/usr/lib/x86_64-linux-gnu:{r}/lib/x86_64-linux-gnu exec {r}/usr/lib/postgresql/15/bin/{prog} \"$@\"\n"
            ),
        )?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

fn patroni_yaml(
    config: PatroniConfig,
    i: usize,
    hosts: &[String],
    dir: &Path,
    bin_dir: &Path,
) -> Value {
    let (ttl, loop_wait, retry_timeout) = config.timing();
    let parameters: serde_json::Map<String, Value> = SHARED_PARAMETERS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let host = &hosts[i];
    let raft = |j: usize| format!("{}:{}", hosts[j], 2222 + j);
    json!({
        "scope": format!("bench-{}", config.name()),
        "name": format!("pg-{i}"),
        "log": {"level": "INFO"},
        "restapi": {"listen": format!("{host}:8008"), "connect_address": format!("{host}:8008")},
        // pysyncobj listens on every address of its port: one port per member.
        "raft": {
            "data_dir": dir.join("raft"),
            "self_addr": raft(i),
            "partner_addrs": (0..hosts.len()).filter(|j| *j != i).map(raft).collect::<Vec<_>>(),
        },
        "bootstrap": {
            "dcs": {
                "ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry_timeout,
                "synchronous_mode": true,
                "postgresql": {"use_pg_rewind": true, "parameters": parameters},
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
        },
        "postgresql": {
            "listen": format!("{host}:5432"),
            "connect_address": format!("{host}:5432"),
            "data_dir": dir.join("pgdata"),
            "bin_dir": bin_dir,
            "pgpass": dir.join("pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": PASSWORD},
                "replication": {"username": "replicator", "password": REPLICATION_PASSWORD},
                "rewind": {"username": "postgres", "password": PASSWORD},
            },
            "parameters": {"unix_socket_directories": dir.join("run")},
            "pg_hba": [
                "local all all trust",
                "host replication replicator 127.0.0.0/8 scram-sha-256",
                "host all all 127.0.0.0/8 scram-sha-256",
            ],
        },
    })
}

struct PatroniBed {
    procs: Vec<Option<Owned>>,
    dirs: Vec<PathBuf>,
    hosts: Vec<String>,
    patroni: PathBuf,
}

impl PatroniBed {
    fn start(&mut self, i: usize) -> Result<()> {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .arg(&self.patroni)
        .arg(self.dirs[i].join("patroni.yml"))
        .current_dir(&self.dirs[i])
        .env("HOME", &self.dirs[i]);
        self.procs[i] = Some(Owned::spawn(
            &format!("patroni pg-{i}"),
            cmd,
            self.dirs[i].join("patroni.log"),
        )?);
        Ok(())
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .flatten()
            .map(Owned::tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for PatroniBed {
    fn drop(&mut self) {
        self.procs.clear();
        stop_postmasters(self.dirs.iter().map(|d| d.join("pgdata")));
    }
}

async fn patroni_rounds(setup: &Setup, config: PatroniConfig) -> Result<Summary> {
    let bin_dir = patroni_bin_dir(setup)?;
    let base = setup.work.join(format!("patroni-{}", config.name()));
    let net = match config {
        PatroniConfig::Tightest => 31,
        PatroniConfig::Defaults => 32,
    };
    let hosts: Vec<String> = (1..=3).map(|i| format!("127.0.{net}.{i}")).collect();
    let mut dirs = Vec::new();
    for i in 0..3 {
        let d = base.join(format!("pg-{i}"));
        chown_dir(&d, NOBODY, 0o700)?;
        chown_dir(&d.join("run"), NOBODY, 0o700)?;
        chown_dir(&d.join("raft"), NOBODY, 0o700)?;
        let yaml = serde_json::to_string_pretty(&patroni_yaml(config, i, &hosts, &d, &bin_dir))?;
        fs::write(d.join("patroni.yml"), yaml)?;
        dirs.push(d);
    }
    let mut bed = PatroniBed {
        procs: (0..3).map(|_| None).collect(),
        dirs,
        hosts,
        patroni: setup.patroni.clone(),
    };
    for i in 0..3 {
        bed.start(i)?;
    }
    let result = patroni_measure(&mut bed, config).await;
    if result.is_err() {
        eprintln!("{}", bed.logs());
    }
    result
}

async fn patroni_measure(bed: &mut PatroniBed, config: PatroniConfig) -> Result<Summary> {
    let mut ms = Vec::new();
    for round in 0..ROUNDS {
        let old = settled(&bed.hosts, Duration::from_secs(300)).await?;
        // Patroni settled too: a synchronous standby named in its DCS (until then no replica
        // may take over, by design), both replicas streaming in its view.
        let api = format!("{}:8008", bed.hosts[old]);
        wait_for(
            "Patroni to name a synchronous standby",
            Duration::from_secs(120),
            || async {
                let Ok((200, body)) = agent_support::http_get(&api, "/cluster").await else {
                    return Ok(None);
                };
                let cluster: Value = serde_json::from_str(&body)?;
                let members = cluster["members"].as_array().cloned().unwrap_or_default();
                let sync = members
                    .iter()
                    .filter(|m| m["role"] == "sync_standby")
                    .count();
                let streaming = members.iter().filter(|m| m["state"] == "streaming").count();
                Ok((sync >= 1 && streaming == 2).then_some(()))
            },
        )
        .await?;
        let pid = postmaster_pid(&bed.dirs[old].join("pgdata"))
            .context("the primary's postmaster.pid")?;
        let fault_at = Instant::now();
        match bed.procs[old].as_mut() {
            Some(p) => p.kill9(),
            None => bail!("pg-{old} is not running"),
        }
        kill9_pid(pid);
        let took = first_commit_elsewhere(&bed.hosts, old, fault_at).await?;
        eprintln!(
            "patroni {} round {}: pg-{old} killed, {took} ms to a commit elsewhere",
            config.name(),
            round + 1
        );
        ms.push(took);
        bed.procs[old] = None;
        bed.start(old)?;
    }
    Ok(Summary::of(ms))
}
