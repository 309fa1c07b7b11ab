//! Test harness: runs `quorate-agent` (and `quorate-testapp`) processes on 127.x.y.z loopback
//! addresses, each with its own data directory, and kills them when dropped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use quorate::agent::client::{AgentClient, GroupState, LeaseState, Member, TlsClientConfig};
use quorate::agent::role::TransitionLine;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn err(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    msg.into().into()
}

static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);

/// A fresh 127.a.b.0/24 for one cluster, distinct across tests of this process and (very
/// likely) across concurrently running test binaries.
fn subnet() -> (u8, u8) {
    let n = NEXT_SUBNET.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let a = 20 + (pid % 200) as u8;
    let b = (n % 250) as u8 + 1;
    (a, b)
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// A process started by a test itself.
    pub fn new(child: Child, log: PathBuf) -> Proc {
        Proc {
            child: Some(child),
            log,
        }
    }
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit code once the process has ended by itself (None while it runs, or when it was
    /// ended by a signal).
    pub fn try_exit_code(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        status.code()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        wait_reaped(&mut self.child, timeout)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A stopped process must be continued to die promptly on some kernels' accounting.
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
        self.kill9();
    }
}

#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub name: String,
    pub ip: String,
    pub witness: bool,
    pub extra: Vec<String>,
    pub with_testapp: bool,
}

pub struct AgentNode {
    pub spec: AgentSpec,
    pub dir: PathBuf,
    pub proc: Proc,
    pub app: Option<Proc>,
    pub id: u64,
}

impl AgentNode {
    pub fn grpc(&self) -> String {
        format!("{}:7470", self.spec.ip)
    }
    pub fn http(&self) -> String {
        format!("{}:7471", self.spec.ip)
    }
    pub fn app_addr(&self) -> String {
        format!("{}:8080", self.spec.ip)
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn role_file(&self) -> PathBuf {
        self.dir.join("role")
    }
    pub fn transition_log(&self) -> PathBuf {
        self.dir.join("transitions.jsonl")
    }
}

pub struct Tls {
    pub ca: quorate::pki::GroupCa,
    pub client: TlsClientConfig,
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<AgentNode>,
    pub tls: Option<Tls>,
    pub common: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub members: usize,
    pub witnesses: usize,
    pub testapp: bool,
    pub tls: bool,
    /// Extra flags for every agent.
    pub args: Vec<String>,
}

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quorate-agent")
}

fn testapp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quorate-testapp")
}

impl Cluster {
    pub fn start(opts: ClusterOptions) -> TestResult<Cluster> {
        let root = tempfile::tempdir()?;
        let (a, b) = subnet();
        let mut specs = Vec::new();
        for i in 0..opts.members + opts.witnesses {
            let witness = i >= opts.members;
            specs.push(AgentSpec {
                name: if witness {
                    format!("g-witness-{}", i - opts.members)
                } else {
                    format!("g-{i}")
                },
                ip: format!("127.{a}.{b}.{}", i + 1),
                witness,
                extra: Vec::new(),
                with_testapp: opts.testapp && !witness,
            });
        }
        let tls = if opts.tls {
            let v = quorate::pki::Validity::days_from(jiff::Zoned::now().date(), 30)?;
            let ca = quorate::pki::generate_group_ca("quorate test group", &v)?;
            for s in &specs {
                let ip: std::net::IpAddr = s.ip.parse()?;
                let cert = quorate::pki::issue_member_certificate(
                    &ca,
                    &s.name,
                    std::slice::from_ref(&s.name),
                    &[ip],
                    &v,
                )?;
                let d = root.path().join(&s.name);
                fs::create_dir_all(&d)?;
                fs::write(d.join("tls.crt"), &cert.cert_pem)?;
                fs::write(d.join("tls.key"), &cert.key_pem)?;
                fs::write(d.join("ca.crt"), &ca.cert_pem)?;
            }
            let op = quorate::pki::issue_client_certificate(
                &ca,
                "test-operator",
                Some(&quorate::pki::Identity::Operator),
                &v,
            )?;
            let client = TlsClientConfig::from_pem(&op.cert_pem, &op.key_pem, &ca.cert_pem)?;
            Some(Tls { ca, client })
        } else {
            None
        };
        let mut cluster = Cluster {
            root,
            nodes: Vec::new(),
            tls,
            common: opts.args.clone(),
        };
        for spec in specs {
            let dir = cluster.root.path().join(&spec.name);
            fs::create_dir_all(&dir)?;
            let mut node = AgentNode {
                spec,
                dir,
                proc: Proc {
                    child: None,
                    log: PathBuf::new(),
                },
                app: None,
                id: 0,
            };
            cluster.spawn(&mut node)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    fn spawn(&self, node: &mut AgentNode) -> TestResult {
        if node.spec.with_testapp && node.app.is_none() {
            let log = node.dir.join("testapp.log");
            let child = Command::new(testapp_bin())
                .args(["--listen", &node.app_addr(), "--member", &node.spec.name])
                .arg("--role-file")
                .arg(node.role_file())
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log)?)
                .stderr(fs::File::create(node.dir.join("testapp.err"))?)
                .spawn()?;
            node.app = Some(Proc {
                child: Some(child),
                log,
            });
        }
        let log = node.dir.join("agent.log");
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--data-dir")
            .arg(node.data_dir())
            .args(["--member", &node.spec.name])
            .args(["--listen", &node.grpc()])
            .args(["--advertise", &node.grpc()])
            .args(["--http-listen", &node.http()])
            .arg("--role-file")
            .arg(node.role_file())
            .arg("--transition-log")
            .arg(node.transition_log())
            .arg("--enable-fault-injection")
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            );
        if node.spec.witness {
            cmd.arg("--witness");
        }
        if node.spec.with_testapp {
            cmd.args([
                "--health-http",
                "8080/healthz",
                "--health-host",
                &node.spec.ip,
            ]);
            cmd.args([
                "--health-period-millis",
                "200",
                "--health-failure-threshold",
                "2",
            ]);
            cmd.arg("--role-callback")
                .arg(format!("http://{}/quorate/role", node.app_addr()));
        }
        if self.tls.is_some() {
            cmd.arg("--tls-cert").arg(node.dir.join("tls.crt"));
            cmd.arg("--tls-key").arg(node.dir.join("tls.key"));
            cmd.arg("--tls-ca").arg(node.dir.join("ca.crt"));
        }
        cmd.args(&self.common);
        cmd.args(&node.spec.extra);
        let child = cmd.spawn()?;
        node.proc = Proc {
            child: Some(child),
            log,
        };
        Ok(())
    }

    pub fn tls_client(&self) -> Option<TlsClientConfig> {
        self.tls.as_ref().map(|t| t.client.clone())
    }

    /// Connects to node `i`, retrying until `timeout`.
    pub async fn client(&self, i: usize) -> TestResult<AgentClient> {
        let addr = self.nodes[i].grpc();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match AgentClient::connect(&addr, self.tls_client()).await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(err(format!(
                        "{e}\n--- agent log ---\n{}",
                        self.nodes[i].proc.log_tail(30)
                    )));
                }
            }
        }
    }

    /// Learns every node's id and bootstraps the group through node 0.
    pub async fn bootstrap(&mut self) -> TestResult {
        let mut members = Vec::new();
        for i in 0..self.nodes.len() {
            let c = self.client(i).await?;
            let s = c.status().await?;
            let id = s.answered_by.ok_or("no identity")?.id;
            self.nodes[i].id = id;
            members.push(Member {
                id,
                name: self.nodes[i].spec.name.clone(),
                address: self.nodes[i].grpc(),
                witness: self.nodes[i].spec.witness,
            });
        }
        self.client(0).await?.bootstrap(members).await?;
        Ok(())
    }

    /// Polls Status of any running node until `pred` holds for a state from the coordinator.
    pub async fn wait_state<F>(
        &self,
        timeout: Duration,
        what: &str,
        pred: F,
    ) -> TestResult<GroupState>
    where
        F: Fn(&GroupState) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            for i in 0..self.nodes.len() {
                let Ok(c) = AgentClient::connect(&self.nodes[i].grpc(), self.tls_client()).await
                else {
                    continue;
                };
                if let Ok(s) = c.status().await {
                    if s.from_coordinator && pred(&s) {
                        return Ok(s);
                    }
                    last = Some(s);
                }
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "timed out after {timeout:?} waiting for {what}; last state: {last:#?}\n{}",
                    self.logs(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "--- {} ({}) ---\n{}\n",
                n.spec.name,
                n.id,
                n.proc.log_tail(lines)
            ));
        }
        out
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].proc.kill9();
    }

    /// Kills node `i` (if running) and starts it again on the same data directory.
    pub fn restart(&mut self, i: usize) -> TestResult {
        self.nodes[i].proc.kill9();
        let mut node = self.nodes.remove(i);
        let result = self.spawn(&mut node);
        self.nodes.insert(i, node);
        result
    }

    /// All transition lines of all members, in file order per member.
    pub fn transitions(&self) -> Vec<TransitionLine> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let text = fs::read_to_string(n.transition_log()).unwrap_or_default();
            for line in text.lines() {
                if let Ok(t) = serde_json::from_str::<TransitionLine>(line) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// The transition lines of node `i`, in file order.
    pub fn lines_of(&self, i: usize) -> Vec<TransitionLine> {
        let name = &self.nodes[i].spec.name;
        self.transitions()
            .into_iter()
            .filter(|l| l.member == *name)
            .collect()
    }

    /// Asserts invariants 1 and 2 (docs/agent.md *Invariants*) over every recorded transition.
    pub fn check_invariants(&self) -> TestResult {
        check_transitions(&self.transitions())
    }
}

/// Each member's primary intervals `(member, epoch, promoted at, lease end)` from its
/// transition lines (monotonic ms).
pub fn primary_intervals(lines: &[TransitionLine]) -> Vec<(String, u64, u64, u64)> {
    let mut out: Vec<(String, u64, u64, u64)> = Vec::new();
    for l in lines {
        match l.event.as_str() {
            "promote" => out.push((l.member.clone(), l.epoch, l.mono_ms, l.lease_until_mono_ms)),
            "renew" => {
                if let Some(i) = out
                    .iter()
                    .rposition(|(m, e, _, _)| *m == l.member && *e == l.epoch)
                {
                    out[i].3 = out[i].3.max(l.lease_until_mono_ms);
                }
            }
            "demote" => {
                if let Some(i) = out
                    .iter()
                    .rposition(|(m, e, _, _)| *m == l.member && *e == l.epoch)
                {
                    out[i].3 = l.lease_until_mono_ms.max(out[i].2);
                }
            }
            _ => {}
        }
    }
    out
}

/// Invariant 1: no two members hold a live lease at the same instant (all agents share
/// CLOCK_MONOTONIC on this machine, so intervals compare directly). Invariant 2: each epoch
/// names one member and epochs are taken in increasing order over time.
pub fn check_transitions(lines: &[TransitionLine]) -> TestResult {
    let intervals = primary_intervals(lines);
    let mut by_epoch: BTreeMap<u64, String> = BTreeMap::new();
    for (member, epoch, _, _) in &intervals {
        if let Some(other) = by_epoch.insert(*epoch, member.clone())
            && other != *member
        {
            return Err(err(format!(
                "epoch {epoch} named both {other} and {member}"
            )));
        }
    }
    for (i, a) in intervals.iter().enumerate() {
        for b in intervals.iter().skip(i + 1) {
            if a.0 == b.0 {
                continue;
            }
            let overlap = a.2 < b.3 && b.2 < a.3;
            if overlap {
                return Err(err(format!(
                    "two live primaries: {} epoch {} [{}, {}] and {} epoch {} [{}, {}]",
                    a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3
                )));
            }
            // Later epochs start later.
            if (a.1 < b.1 && a.2 > b.2) || (b.1 < a.1 && b.2 > a.2) {
                return Err(err(format!(
                    "epoch order differs from time order: {a:?} vs {b:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Polls `cond` every 20 ms until it holds; an error naming `what` after `timeout`.
pub async fn wait_until<F>(timeout: Duration, what: &str, mut cond: F) -> TestResult
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return Err(err(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `member` held the lease of `epoch` without a gap: promoted once, renewed, never demoted.
pub fn held_without_a_gap(lines: &[TransitionLine], member: &str, epoch: u64) -> TestResult {
    let mine: Vec<&TransitionLine> = lines
        .iter()
        .filter(|l| l.member == member && l.epoch == epoch && l.event != "start")
        .collect();
    let promotions = mine.iter().filter(|l| l.event == "promote").count();
    let demotions: Vec<String> = mine
        .iter()
        .filter(|l| l.event == "demote")
        .map(|l| format!("{} at {}", l.cause.as_deref().unwrap_or("?"), l.mono_ms))
        .collect();
    if promotions != 1 || !demotions.is_empty() {
        return Err(err(format!(
            "{member} did not hold epoch {epoch} without a gap: {promotions} promotions, \
             demotions {demotions:?}"
        )));
    }
    Ok(())
}

/// Waits until `pred` holds for the GroupState of the first Watch stream item that satisfies it.
pub async fn lease_live(s: &GroupState) -> bool {
    s.primary_lease == LeaseState::Live as i32
}

pub fn primary_name(s: &GroupState) -> Option<String> {
    s.primary.as_ref().map(|p| p.name.clone())
}

pub async fn http_get(addr: &str, path: &str) -> TestResult<(u16, String)> {
    http_request("GET", addr, path, None).await
}

/// Minimal HTTP/1.1 client over TCP for the tests (no extra dependencies).
pub async fn http_request(
    method: &str,
    addr: &str,
    path: &str,
    body: Option<&str>,
) -> TestResult<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| err(format!("bad HTTP response: {text}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

pub fn read_role(path: &Path) -> Option<quorate::agent::role::RoleRecord> {
    quorate::agent::role::parse_role_record(&fs::read(path).ok()?).ok()
}

/// Waits for `child` to exit by itself and reaps it (then `None`); false if it still runs
/// after `timeout`.
pub fn wait_reaped(child: &mut Option<Child>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | None => {
                *child = None;
                return true;
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}
