//! `quorate-run` next to a real `quorate-agent` (processes on loopback, no Kubernetes): the hooks
//! run with the role's environment, a hook that hangs is killed with everything it started at
//! its timeout and reported, a position that is not an integer keeps the member out with a
//! message that says so, the workload is fenced on the supervisor's own timer when its agent
//! stops answering, and SIGTERM reaches the workload, whose exit status the supervisor returns.

mod agent_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::*;
use quorate::agent::client::{GroupState, LeaseState};
use serde_json::{Value, json};

/// The agents' lease (their default).
const LEASE_MILLIS: u64 = 1000;

struct Supervised {
    cluster: Cluster,
    supervisors: Vec<Proc>,
}

/// A hook that runs `script` with /bin/sh, killed after `timeout_millis`.
fn hook(script: &str, timeout_millis: u64) -> Value {
    json!({"command": ["/bin/sh", "-c", script], "timeoutMillis": timeout_millis})
}

/// Hooks that append `<hook> <role> <epoch>` to `events` in the member's directory (the
/// supervisor's working directory).
fn recording(hook_name: &str) -> String {
    format!("echo {hook_name} $QUORATE_ROLE $QUORATE_EPOCH >> events")
}

/// A group of `members` agents started with `--supervised`, each with `quorate-run` running
/// `workload` under `hooks`, bootstrapped.
async fn start(members: usize, hooks: Value, workload: &str) -> TestResult<Supervised> {
    let mut cluster = Cluster::start(ClusterOptions {
        members,
        args: vec!["--supervised".into()],
        ..Default::default()
    })?;
    let mut supervisors = Vec::new();
    for node in &cluster.nodes {
        let log = node.dir.join("supervisor.log");
        let child = Command::new(env!("CARGO_BIN_EXE_quorate-run"))
            .args(["--", "/bin/sh", "-c", workload])
            .current_dir(&node.dir)
            .env("QUORATE_HOOKS", json!({ "hooks": hooks }).to_string())
            .env("QUORATE_AGENT_URL", format!("http://{}", node.http()))
            .env("QUORATE_MEMBER", &node.spec.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        supervisors.push(Proc::new(child, log));
    }
    cluster.bootstrap().await?;
    Ok(Supervised {
        cluster,
        supervisors,
    })
}

impl Supervised {
    fn dir(&self, i: usize) -> PathBuf {
        self.cluster.nodes[i].dir.clone()
    }

    fn logs(&self) -> String {
        let mut out = self.cluster.logs(20);
        for s in &self.supervisors {
            out.push_str(&format!("--- {}\n{}\n", s.log.display(), s.log_tail(20)));
        }
        out
    }
}

fn events(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_file<F>(timeout: Duration, what: &str, logs: &str, mut cond: F) -> TestResult
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return Err(err(format!(
                "timed out after {timeout:?} waiting for {what}\n{logs}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_is_promoted_through_its_hook_and_fenced_when_its_agent_stops() -> TestResult {
    let hooks = json!({
        "promote": hook(&recording("promote"), 5000),
        "demote": hook(&recording("demote"), 5000),
        "position": hook("echo 42", 1000),
    });
    let g = start(1, hooks, "exec sleep 600").await?;
    let s = g
        .cluster
        .wait_state(Duration::from_secs(15), "a primary", |s: &GroupState| {
            s.primary.is_some() && s.primary_lease == LeaseState::Live as i32
        })
        .await?;
    let dir = g.dir(0);
    let promoted = format!("promote primary {}", s.epoch);
    let logs = g.logs();
    wait_file(Duration::from_secs(5), &promoted, &logs, || {
        events(&dir).contains(&promoted)
    })
    .await?;
    // The position reached the group state through the agent.
    g.cluster
        .wait_state(Duration::from_secs(5), "the reported position", |s| {
            s.members.first().and_then(|m| m.workload_position) == Some(42)
        })
        .await?;

    // The agent stops (SIGSTOP): nobody renews the lease, so the supervisor alone must fence.
    let stopped = Instant::now();
    g.cluster.nodes[0].proc.signal(libc::SIGSTOP);
    let fenced = format!("demote fenced {}", s.epoch);
    let waited = wait_file(
        Duration::from_millis(LEASE_MILLIS + 2000),
        &fenced,
        &logs,
        || events(&dir).contains(&fenced),
    )
    .await;
    let after = stopped.elapsed();
    g.cluster.nodes[0].proc.signal(libc::SIGCONT);
    waited?;
    // The lease the agent last gave ends at most one lease after the stop: the fence must not
    // wait for the agent (the bound is loose: make bench-workloads measures it).
    assert!(
        after <= Duration::from_millis(LEASE_MILLIS + 1000),
        "fenced {after:?} after the agent stopped; lease {LEASE_MILLIS} ms"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_promote_is_killed_with_its_children_reported_and_the_epoch_given_back()
-> TestResult {
    // The hook starts a child that would outlive it, records the child's PID, and hangs.
    let hooks = json!({
        "promote": hook("sleep 300 & echo $! > sleeper.pid; echo about to hang; wait", 400),
        "demote": hook(&recording("demote"), 5000),
    });
    let g = start(1, hooks, "exec sleep 600").await?;
    let s = g
        .cluster
        .wait_state(
            Duration::from_secs(20),
            "the failed promote in the status",
            |s| {
                s.members.first().is_some_and(|m| {
                    m.hooks
                        .iter()
                        .any(|h| h.hook == "promote" && !h.ok && h.message.contains("timed out"))
                })
            },
        )
        .await?;
    let outcome = s.members[0]
        .hooks
        .iter()
        .find(|h| h.hook == "promote")
        .cloned()
        .ok_or("no promote outcome")?;
    assert_eq!(outcome.message, "timed out after 400 ms and was killed");
    assert_eq!(outcome.exit_code, None, "{outcome:?}");
    assert!(
        (400..2000).contains(&outcome.duration_millis),
        "{outcome:?}"
    );
    assert!(outcome.output.contains("about to hang"), "{outcome:?}");
    // Everything the hook started is gone with it.
    let pid: i32 = fs::read_to_string(g.dir(0).join("sleeper.pid"))?
        .trim()
        .parse()?;
    let logs = g.logs();
    wait_file(
        Duration::from_secs(2),
        "the hook's child to end",
        &logs,
        || !process_exists(pid),
    )
    .await?;
    // The member gave the epoch back: its lease is released, not left to run out as primary,
    // and it stays out of the candidates for a while (a one-member group has no other).
    let s = g
        .cluster
        .wait_state(Duration::from_secs(5), "the epoch given back", |s| {
            s.primary_lease != LeaseState::Live as i32
        })
        .await?;
    assert!(
        s.members[0].workload_message.contains("promote"),
        "the member says why it is out: {:?}",
        s.members[0].workload_message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_that_is_not_an_integer_keeps_the_member_out_with_a_message() -> TestResult {
    let hooks = json!({
        "promote": hook(&recording("promote"), 5000),
        "position": hook("echo master_repl_offset:12", 1000),
    });
    let g = start(1, hooks, "exec sleep 600").await?;
    let s = g
        .cluster
        .wait_state(Duration::from_secs(15), "the position error", |s| {
            // Before the hook first ran, the message says no position was printed yet.
            s.members.first().is_some_and(|m| {
                m.workload_message
                    .contains("must print one non-negative integer")
            })
        })
        .await?;
    let m = &s.members[0];
    assert!(
        m.workload_message
            .contains("must print one non-negative integer")
            && m.workload_message.contains("master_repl_offset:12"),
        "{:?}",
        m.workload_message
    );
    assert!(!m.healthy, "{m:?}");
    // Never a candidate: over several leases no primary is appointed and promote never runs.
    let until = Instant::now() + Duration::from_millis(3 * LEASE_MILLIS);
    while Instant::now() < until {
        let s = g
            .cluster
            .wait_state(Duration::from_secs(5), "a state", |_| true)
            .await?;
        assert!(s.primary.is_none(), "appointed: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(events(&g.dir(0)).is_empty(), "{:?}", events(&g.dir(0)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reaches_the_workload_and_its_exit_status_is_returned() -> TestResult {
    let hooks = json!({ "promote": hook(&recording("promote"), 5000) });
    let mut g = start(
        1,
        hooks,
        "trap 'echo term >> events; exit 7' TERM; while true; do sleep 0.05; done",
    )
    .await?;
    g.cluster
        .wait_state(Duration::from_secs(15), "a primary", |s| {
            s.primary.is_some()
        })
        .await?;
    g.supervisors[0].signal(libc::SIGTERM);
    let mut exited = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && exited.is_none() {
        exited = g.supervisors[0].try_exit_code();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(exited, Some(7), "{}", g.logs());
    assert!(events(&g.dir(0)).contains(&"term".to_owned()));
    Ok(())
}
