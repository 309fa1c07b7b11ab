//! The supervisor's edges: the workload process (it is PID 1 of its container: it reaps every
//! child, forwards SIGTERM and SIGINT, exits with the workload's status), the hooks' processes
//! (each in its own process group, killed with it at its timeout), and the agent over loopback
//! HTTP. Decisions are [`super::core`]'s.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot, watch};

use super::config::SupervisorConfig;
use super::core::{Action, HookEnv, SupervisorCore};
use super::protocol::{AgentRole, HookOutcome, OUTPUT_TAIL_BYTES, WorkloadReport, output_tail};
use crate::agent::clock::monotonic_millis;
use crate::api::HookKind;

/// How often the agent's role is read: fencing itself runs on the supervisor's own timer, this
/// only bounds how late a promotion or a renewal is seen.
pub const POLL_MILLIS: u64 = 50;
/// An agent that does not answer within this is treated as silent for this round.
const AGENT_TIMEOUT: Duration = Duration::from_millis(250);
/// Output kept per hook stream while it runs (the report keeps only the tail).
const OUTPUT_KEEP_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting the workload {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor needs the workload's command after `--`")]
    NoCommand,
    #[error("installing the supervisor at {path}: {source}")]
    Install {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up signal handling: {0}")]
    Signals(#[source] std::io::Error),
}

/// Copies this executable to `dest` (the init container's job): written next to it, then renamed.
pub fn install(dest: &std::path::Path) -> Result<(), RunError> {
    let err = |source| RunError::Install {
        path: dest.display().to_string(),
        source,
    };
    let me = std::env::current_exe().map_err(err)?;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = dest.with_extension("tmp");
    std::fs::copy(&me, &tmp).map_err(err)?;
    std::fs::set_permissions(
        &tmp,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .map_err(err)?;
    std::fs::rename(&tmp, dest).map_err(err)
}

enum Event {
    Agent(AgentRole),
    Exited {
        pid: i32,
        status: i32,
    },
    HookDone {
        run: u64,
        outcome: HookOutcome,
        stdout: Vec<u8>,
    },
    Signal(i32),
}

/// What waits for a child's exit.
enum Waiter {
    Workload,
    Hook(oneshot::Sender<i32>),
}

/// Runs `argv` under the supervisor until it exits; returns the exit code for the container.
pub async fn run(
    argv: Vec<String>,
    config: SupervisorConfig,
    agent_url: String,
    member: String,
) -> Result<i32, RunError> {
    let Some(program) = argv.first().cloned() else {
        return Err(RunError::NoCommand);
    };
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    spawn_reaper(events_tx.clone());
    spawn_signals(events_tx.clone())?;
    let client: Client<HttpConnector, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    spawn_agent_poll(client.clone(), agent_url.clone(), events_tx.clone());
    let (report_tx, report_rx) = watch::channel::<Option<WorkloadReport>>(None);
    let workload_uri: Option<hyper::Uri> = format!("{agent_url}/workload").parse().ok();
    spawn_reporter(client.clone(), workload_uri.clone(), report_rx);

    let config = Arc::new(config);
    let mut core = SupervisorCore::new(config.declared());
    let mut waiters: HashMap<i32, Waiter> = HashMap::new();
    let mut hook_groups: HashMap<u64, i32> = HashMap::new();
    let mut workload: Option<i32> = None;
    let mut killed_for: Option<String> = None;
    // Exits that arrived before their waiter was registered (a hook that ends at once).
    let mut early_exits: HashMap<i32, i32> = HashMap::new();
    let mut pending_signal: Option<i32> = None;

    loop {
        let now = monotonic_millis();
        let deadline = core.next_deadline(now);
        let sleep = tokio::time::sleep(Duration::from_millis(deadline.saturating_sub(now)));
        let actions = tokio::select! {
            _ = sleep => core.on_tick(monotonic_millis()),
            event = events.recv() => {
                let Some(event) = event else { return Ok(1) };
                let now = monotonic_millis();
                match event {
                    Event::Agent(role) => {
                        let actions = core.on_agent(role, now);
                        // The repeated report carries the latest answer seen (no news by itself).
                        let (incarnation, revision) = core.role_seen();
                        report_tx.send_if_modified(|r| {
                            if let Some(r) = r.as_mut() {
                                r.role_seen_incarnation = incarnation;
                                r.role_seen_revision = revision;
                            }
                            false
                        });
                        actions
                    }
                    Event::HookDone { run, outcome, stdout } => {
                        hook_groups.remove(&run);
                        log_outcome(&outcome);
                        core.on_hook_done(run, outcome, &stdout, now)
                    }
                    Event::Exited { pid, status } => {
                        match waiters.remove(&pid) {
                            Some(Waiter::Workload) => {
                                core.on_workload_exited();
                                for pgid in hook_groups.values() {
                                    kill_group(*pgid);
                                }
                                let code = exit_code(status);
                                match &killed_for {
                                    Some(reason) => eprintln!("quorate-run: the workload was stopped ({reason}); exiting {code} so that the container restarts"),
                                    None => eprintln!("quorate-run: the workload exited with {code}"),
                                }
                                // Tell the agent before going: a primary's release is confirmed
                                // by it (the process is gone), so a hand-off need not wait for
                                // the lease to run out.
                                if let Some(uri) = &workload_uri {
                                    post_report(&client, uri, &core.report()).await;
                                }
                                return Ok(if killed_for.is_some() && code == 0 { 1 } else { code });
                            }
                            Some(Waiter::Hook(tx)) => { let _ = tx.send(status); }
                            // An orphan reparented to PID 1, or a hook not registered yet.
                            None => { early_exits.insert(pid, status); }
                        }
                        Vec::new()
                    }
                    Event::Signal(sig) => {
                        match workload {
                            Some(pid) => forward(pid, sig),
                            None => pending_signal = Some(sig),
                        }
                        if workload.is_none() {
                            // Not started yet (joining): nothing to wait for.
                            for pgid in hook_groups.values() {
                                kill_group(*pgid);
                            }
                            return Ok(128 + sig);
                        }
                        Vec::new()
                    }
                }
            }
        };
        for action in actions {
            match action {
                Action::Run { run, hook, env } => {
                    let (tx, rx) = oneshot::channel();
                    match spawn_hook(&config, hook, &env, &member) {
                        Ok((pid, output)) => {
                            hook_groups.insert(run, pid);
                            if let Some(status) = early_exits.remove(&pid) {
                                let _ = tx.send(status);
                            } else {
                                waiters.insert(pid, Waiter::Hook(tx));
                            }
                            tokio::spawn(finish_hook(
                                run,
                                hook,
                                env.epoch,
                                pid,
                                config.timeout_millis(hook),
                                rx,
                                output,
                                events_tx.clone(),
                            ));
                        }
                        Err(e) => {
                            let outcome = HookOutcome {
                                hook,
                                epoch: env.epoch,
                                ok: false,
                                exit_code: None,
                                duration_millis: 0,
                                message: format!("could not start: {e}"),
                                output: String::new(),
                            };
                            let _ = events_tx.send(Event::HookDone {
                                run,
                                outcome,
                                stdout: Vec::new(),
                            });
                        }
                    }
                }
                Action::Cancel { run } => {
                    if let Some(pgid) = hook_groups.get(&run) {
                        kill_group(*pgid);
                    }
                }
                Action::StartWorkload => {
                    let child =
                        Command::new(&program)
                            .args(&argv[1..])
                            .spawn()
                            .map_err(|source| RunError::Spawn {
                                program: program.clone(),
                                source,
                            })?;
                    let pid = child.id() as i32;
                    eprintln!("quorate-run: started {program} (pid {pid})");
                    if let Some(status) = early_exits.remove(&pid) {
                        let _ = events_tx.send(Event::Exited { pid, status });
                    }
                    waiters.insert(pid, Waiter::Workload);
                    workload = Some(pid);
                    if let Some(sig) = pending_signal.take() {
                        forward(pid, sig);
                    }
                }
                Action::KillWorkload { reason } => {
                    eprintln!("quorate-run: fencing: {reason}; stopping the workload");
                    killed_for = Some(reason);
                    match workload {
                        Some(pid) => forward(pid, libc::SIGKILL),
                        None => return Ok(1),
                    }
                }
                Action::Report(report) => {
                    let _ = report_tx.send(Some(report));
                }
            }
        }
    }
}

fn log_outcome(o: &HookOutcome) {
    if o.ok && matches!(o.hook, HookKind::Health | HookKind::Position) {
        return;
    }
    let verdict = if o.ok { "succeeded" } else { "failed" };
    eprintln!(
        "quorate-run: {} hook (epoch {}) {verdict} in {} ms{}{}",
        o.hook.as_str(),
        o.epoch,
        o.duration_millis,
        if o.message.is_empty() { "" } else { ": " },
        o.message
    );
    // What a failed hook printed (its `die` message, a tool's error) belongs in the container's
    // log, where `kubectl logs` shows it next to the failure.
    if !o.ok {
        for line in o.output.lines().filter(|l| !l.trim().is_empty()) {
            eprintln!("quorate-run:   {line}");
        }
    }
}

fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

fn forward(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid this process started; an already-reaped pid yields ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn kill_group(pgid: i32) {
    // SAFETY: killpg(2) of a process group this process created for a hook.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// The output a hook printed so far, filled by reader threads.
#[derive(Clone, Default)]
struct Output {
    stdout: Arc<Mutex<Vec<u8>>>,
    combined: Arc<Mutex<Vec<u8>>>,
    readers_done: Arc<std::sync::atomic::AtomicUsize>,
}

fn spawn_hook(
    config: &SupervisorConfig,
    hook: HookKind,
    env: &HookEnv,
    member: &str,
) -> std::io::Result<(i32, Output)> {
    let argv = config
        .command(hook)
        .ok_or_else(|| std::io::Error::other("the hook is not declared"))?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut child = Command::new(program)
        .args(args)
        .env("QUORATE_HOOK", hook.as_str())
        .env("QUORATE_ROLE", env.role)
        .env("QUORATE_EPOCH", env.epoch.to_string())
        .env("QUORATE_MEMBER", member)
        .env("QUORATE_PRIMARY", &env.primary)
        .env("QUORATE_PRIMARY_HOST", &env.primary_host)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills the hook and everything it started.
        .process_group(0)
        .spawn()?;
    let pid = child.id() as i32;
    let output = Output::default();
    for (stream, is_stdout) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            true,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            false,
        ),
    ] {
        let Some(mut stream) = stream else {
            output
                .readers_done
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            continue;
        };
        let out = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for target in [is_stdout.then_some(&out.stdout), Some(&out.combined)]
                    .into_iter()
                    .flatten()
                {
                    let mut t = target.lock().unwrap_or_else(|p| p.into_inner());
                    t.extend_from_slice(&buf[..n]);
                    if t.len() > OUTPUT_KEEP_BYTES {
                        let cut = t.len() - OUTPUT_KEEP_BYTES;
                        t.drain(..cut);
                    }
                }
            }
            out.readers_done
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
    // The reaper collects the exit status; the Child handle is only dropped.
    drop(child);
    Ok((pid, output))
}

#[allow(clippy::too_many_arguments)]
async fn finish_hook(
    run: u64,
    hook: HookKind,
    epoch: u64,
    pgid: i32,
    timeout_millis: u64,
    exited: oneshot::Receiver<i32>,
    output: Output,
    events: mpsc::UnboundedSender<Event>,
) {
    let started = Instant::now();
    let mut exited = exited;
    let (status, timed_out) =
        match tokio::time::timeout(Duration::from_millis(timeout_millis), &mut exited).await {
            Ok(status) => (status.ok(), false),
            Err(_) => {
                kill_group(pgid);
                (exited.await.ok(), true)
            }
        };
    // The output pipes close with the hook (or shortly after its last child): wait a little.
    for _ in 0..20 {
        if output
            .readers_done
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stdout = output.stdout.lock().map(|s| s.clone()).unwrap_or_default();
    let combined = output
        .combined
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let exit_code = status
        .filter(|s| libc::WIFEXITED(*s))
        .map(|s| libc::WEXITSTATUS(s));
    let ok = !timed_out && exit_code == Some(0);
    let message = if timed_out {
        format!("timed out after {timeout_millis} ms and was killed")
    } else {
        match (exit_code, status) {
            (Some(0), _) => String::new(),
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(s)) if libc::WIFSIGNALED(s) => {
                format!("killed by signal {}", libc::WTERMSIG(s))
            }
            _ => "ended without an exit status".to_owned(),
        }
    };
    let outcome = HookOutcome {
        hook,
        epoch,
        ok,
        exit_code,
        duration_millis: started.elapsed().as_millis() as u64,
        message,
        output: if ok && matches!(hook, HookKind::Health | HookKind::Position) {
            String::new()
        } else {
            output_tail(&combined[combined.len().saturating_sub(OUTPUT_TAIL_BYTES * 4)..])
        },
    };
    let _ = events.send(Event::HookDone {
        run,
        outcome,
        stdout,
    });
}

/// Reaps every child (the supervisor is PID 1 of its container) and reports each exit.
fn spawn_reaper(events: mpsc::UnboundedSender<Event>) {
    std::thread::spawn(move || {
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                if events.send(Event::Exited { pid, status }).is_err() {
                    return;
                }
            } else {
                // No children right now (ECHILD) or interrupted: look again soon.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
}

fn spawn_signals(events: mpsc::UnboundedSender<Event>) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    for (kind, number) in [
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::interrupt(), libc::SIGINT),
    ] {
        let mut stream = signal(kind).map_err(RunError::Signals)?;
        let events = events.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if events.send(Event::Signal(number)).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn spawn_agent_poll(
    client: Client<HttpConnector, Full<bytes::Bytes>>,
    agent_url: String,
    events: mpsc::UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let uri: Option<hyper::Uri> = format!("{agent_url}/role").parse().ok();
        let Some(uri) = uri else {
            eprintln!("quorate-run: {agent_url:?} is not a URL; the agent cannot be followed");
            return;
        };
        let mut complained = false;
        loop {
            match get_role(&client, &uri).await {
                Ok(role) => {
                    complained = false;
                    if events.send(Event::Agent(role)).is_err() {
                        return;
                    }
                }
                Err(e) if !complained => {
                    eprintln!("quorate-run: reading the agent's role at {uri}: {e}");
                    complained = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(POLL_MILLIS)).await;
        }
    });
}

async fn get_role(
    client: &Client<HttpConnector, Full<bytes::Bytes>>,
    uri: &hyper::Uri,
) -> Result<AgentRole, String> {
    let request = hyper::Request::get(uri.clone())
        .body(Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(AGENT_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let body = tokio::time::timeout(AGENT_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}

/// Posts one report to the agent (an agent that does not answer in time misses it).
async fn post_report(
    client: &Client<HttpConnector, Full<bytes::Bytes>>,
    uri: &hyper::Uri,
    report: &WorkloadReport,
) {
    if let Ok(body) = serde_json::to_vec(report)
        && let Ok(request) = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
    {
        let _ = tokio::time::timeout(AGENT_TIMEOUT, client.request(request)).await;
    }
}

/// Sends the latest report whenever it changes, and again every report interval.
fn spawn_reporter(
    client: Client<HttpConnector, Full<bytes::Bytes>>,
    uri: Option<hyper::Uri>,
    mut reports: watch::Receiver<Option<WorkloadReport>>,
) {
    tokio::spawn(async move {
        let Some(uri) = uri else {
            return;
        };
        loop {
            let latest = reports.borrow_and_update().clone();
            if let Some(report) = latest {
                post_report(&client, &uri, &report).await;
            }
            let interval = Duration::from_millis(super::core::REPORT_INTERVAL_MILLIS);
            if let Ok(Err(_)) = tokio::time::timeout(interval, reports.changed()).await {
                return;
            }
        }
    });
}
