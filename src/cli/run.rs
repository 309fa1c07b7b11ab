//! Runs one `kubectl quorate` command: the thin IO layer around the pure parts.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use super::args::{
    Cli, Command, FenceArgs, LogsArgs, ReportArgs, RestartArgs, StatusArgs, SwitchoverArgs,
};
use super::cluster::{Cluster, connect};
use super::switchover::{
    Progress, check_switchover, describe_waiting, paused_patch, switchover_patch,
    switchover_progress,
};
use super::{CliError, SWITCHOVER_ANNOTATION, fence, format, logs, report, restart, validate};

/// How often `switchover --wait` reads the group.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Writes to standard output; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "note: {text}");
}

/// Runs the command; `Ok` carries the exit status (validate: 1 when anything is invalid).
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Version => {
            emit(&format!(
                "kubectl-quorate {} (ReplicaGroup API quorate.dev/v1alpha1)\n",
                env!("CARGO_PKG_VERSION")
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => {
            let reports = validate::check_inputs(&args.files);
            for report in &reports {
                emit(&report.render());
            }
            Ok(if reports.iter().all(validate::FileReport::is_valid) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Status(args) => status(&connect(&cli.cluster).await?, &args).await,
        Command::Switchover(args) => switchover(&connect(&cli.cluster).await?, &args).await,
        Command::Pause(args) => set_paused(&connect(&cli.cluster).await?, &args.name, true).await,
        Command::Resume(args) => set_paused(&connect(&cli.cluster).await?, &args.name, false).await,
        Command::Fence(args) => set_fenced(&connect(&cli.cluster).await?, &args, true).await,
        Command::Unfence(args) => set_fenced(&connect(&cli.cluster).await?, &args, false).await,
        Command::Logs(args) => print_logs(&connect(&cli.cluster).await?, &args).await,
        Command::Report(args) => write_report(&connect(&cli.cluster).await?, &args).await,
        Command::Restart(args) => rolling_restart(&connect(&cli.cluster).await?, &args).await,
    }
}

async fn status(cluster: &Cluster, args: &StatusArgs) -> Result<ExitCode, CliError> {
    if !args.watch {
        emit(&status_view(cluster, args).await?);
        return Ok(ExitCode::SUCCESS);
    }
    // Every change of the watched group(s) prints the view again; the watch re-lists and
    // retries on its own, a failure is noted and the watch goes on. Ends with Ctrl-C.
    let mut changes = std::pin::pin!(cluster.changes(args.name.as_deref(), args.all_namespaces));
    while let Some(change) = futures::StreamExt::next(&mut changes).await {
        match change {
            Ok(()) => match status_view(cluster, args).await {
                Ok(view) => emit(&format!(
                    "--- {}\n{view}",
                    Timestamp::now()
                        .round(jiff::Unit::Second)
                        .unwrap_or_else(|_| Timestamp::now())
                )),
                Err(CliError::NotFound { name, namespace }) => {
                    emit(&format!(
                        "--- {}\nreplicagroup \"{name}\" in namespace \"{namespace}\" does not exist (now)\n",
                        Timestamp::now()
                            .round(jiff::Unit::Second)
                            .unwrap_or_else(|_| Timestamp::now())
                    ));
                }
                Err(e) => return Err(e),
            },
            Err(e) => note(&format!("{e}; retrying")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `status` prints once.
async fn status_view(cluster: &Cluster, args: &StatusArgs) -> Result<String, CliError> {
    let now = Timestamp::now();
    let text = match &args.name {
        Some(name) => {
            let group = cluster.get(name).await?;
            match args.output {
                Some(output) => format::raw_status(&group, output)?,
                None => {
                    let events = match cluster.events(name).await {
                        Ok(events) => format::events_section(&events, now),
                        // The group is shown all the same; say why its Events are not.
                        Err(e) => format!("Events: not shown: {e}\n"),
                    };
                    format!("{}{events}", format::format_status(&group, now))
                }
            }
        }
        None => {
            let groups = cluster.list(args.all_namespaces).await?;
            match args.output {
                Some(output) => format::raw_list(&groups, output)?,
                None => format::format_list(&groups, args.all_namespaces, &cluster.namespace, now),
            }
        }
    };
    Ok(text)
}

async fn switchover(cluster: &Cluster, args: &SwitchoverArgs) -> Result<ExitCode, CliError> {
    let group = cluster.get(&args.name).await?;
    for text in check_switchover(&group, args.to.as_deref())? {
        note(&text);
    }
    let epoch_before = group.status.as_ref().and_then(|s| s.epoch);
    cluster
        .merge_patch(&args.name, &switchover_patch(args.to.as_deref()))
        .await?;
    let target = args.to.as_deref().unwrap_or("the best candidate");
    emit(&format!(
        "replicagroup \"{}\": switchover to {target} requested ({SWITCHOVER_ANNOTATION})\n",
        args.name
    ));
    if !args.should_wait() {
        return Ok(ExitCode::SUCCESS);
    }

    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut seen = "the group could not be read since the request".to_owned();
    loop {
        let read = match tokio::time::timeout_at(deadline, cluster.get(&args.name)).await {
            Ok(read) => read,
            Err(_elapsed) => Err(CliError::SwitchoverTimeout {
                name: args.name.clone(),
                waited: args.timeout,
                seen: String::new(),
            }),
        };
        let read_error = match read {
            Ok(group) => match switchover_progress(&group, epoch_before) {
                Progress::Done { primary, epoch } => {
                    let primary = primary.unwrap_or_else(|| "none".to_owned());
                    if let Some(requested) = &args.to
                        && *requested != primary
                    {
                        return Err(CliError::OtherPrimary {
                            name: args.name.clone(),
                            requested: requested.clone(),
                            primary,
                            epoch,
                        });
                    }
                    emit(&format!(
                        "replicagroup \"{}\": primary is now {primary} (epoch {epoch})\n",
                        args.name
                    ));
                    return Ok(ExitCode::SUCCESS);
                }
                waiting => {
                    seen = describe_waiting(&waiting, epoch_before);
                    None
                }
            },
            Err(CliError::NotFound { name, namespace }) => {
                return Err(CliError::DeletedWhileWaiting {
                    name,
                    namespace,
                    waiting_for: "the switchover",
                });
            }
            // A transient failure (network, API server restart): keep trying until the deadline.
            Err(CliError::SwitchoverTimeout { .. }) => {
                Some("the API server did not answer in time".to_owned())
            }
            Err(e) => Some(e.to_string()),
        };
        if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
            if let Some(e) = read_error {
                seen = format!("{seen}; the last read failed: {e}");
            }
            return Err(CliError::SwitchoverTimeout {
                name: args.name.clone(),
                waited: args.timeout,
                seen,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn print_logs(cluster: &Cluster, args: &LogsArgs) -> Result<ExitCode, CliError> {
    use futures::StreamExt;
    let sources = cluster.log_sources(&args.name, args.of).await?;
    if sources.is_empty() {
        // A missing group is an error; a group without pods (yet) is not.
        cluster.get(&args.name).await?;
        note(&format!("replicagroup \"{}\" has no pods (yet)", args.name));
        return Ok(ExitCode::SUCCESS);
    }
    let started = Timestamp::now();
    let since = since_start(started, args.since);
    let mut backlog = Vec::new();
    let mut followed_from = std::collections::BTreeMap::new();
    for source in &sources {
        match cluster.log(source, since).await {
            Ok(text) => {
                followed_from.insert(source.clone(), logs::last_time(&text));
                backlog.push((source.clone(), text));
            }
            // A container not started yet, or gone: the others are still worth reading.
            Err(why) => note(&format!("{source}: no log: {why}")),
        }
    }
    for line in logs::interleave(backlog) {
        emit(&format!("{line}\n"));
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Each container from its last line read (or from the start of the command), without
    // printing that line again; lines are printed as they arrive.
    let mut streams = Vec::new();
    for source in sources {
        let last = followed_from.get(&source).copied().flatten();
        match cluster.follow(&source, last.unwrap_or(started)).await {
            Ok(lines) => {
                let tagged = source.clone();
                streams.push(lines.map(move |l| (tagged.clone(), last, l)).boxed());
            }
            Err(why) => note(&format!("{source}: cannot follow: {why}")),
        }
    }
    let mut merged = futures::stream::select_all(streams);
    while let Some((source, last, line)) = merged.next().await {
        match line {
            Ok(raw) => {
                let line = logs::parse_line(&raw);
                if line.at.is_some() && line.at <= last {
                    continue;
                }
                emit(&format!("{}\n", logs::render(&source, &line)));
            }
            Err(e) => note(&format!("{source}: {e}")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn rolling_restart(cluster: &Cluster, args: &RestartArgs) -> Result<ExitCode, CliError> {
    let group = cluster.get(&args.name).await?;
    restart::check_ready(&group)?;
    let stamped = cluster
        .merge_patch(
            &args.name,
            &restart::restart_patch(&Timestamp::now().to_string()),
        )
        .await?;
    let generation = stamped.metadata.generation.unwrap_or(0);
    emit(&format!(
        "replicagroup \"{}\": restart requested; the operator restarts the members one at a time, backups first, then one switchover, then the old primary\n",
        args.name
    ));
    // `--timeout` bounds each step: the deadline moves whenever the roll says something new.
    let mut last = String::new();
    let mut deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        match cluster.get(&args.name).await {
            Ok(g) => match restart::roll_progress(&g, generation) {
                restart::RollProgress::Done => {
                    let status = g.status.unwrap_or_default();
                    let primary = match (&status.primary, status.epoch) {
                        (Some(p), Some(e)) => format!(" (primary {p}, epoch {e})"),
                        _ => String::new(),
                    };
                    emit(&format!(
                        "replicagroup \"{}\": every member restarted{primary}\n",
                        args.name
                    ));
                    return Ok(ExitCode::SUCCESS);
                }
                restart::RollProgress::Rolling(message) => {
                    if message != last {
                        emit(&format!("replicagroup \"{}\": {message}\n", args.name));
                        last = message;
                        deadline = tokio::time::Instant::now() + args.timeout;
                    }
                }
            },
            Err(CliError::NotFound { name, namespace }) => {
                return Err(CliError::DeletedWhileWaiting {
                    name,
                    namespace,
                    waiting_for: "its restart",
                });
            }
            // A transient failure (network, API server restart): keep trying until the deadline.
            Err(_) => {}
        }
        if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
            return Err(CliError::WaitTimeout {
                what: format!(
                    "replicagroup \"{}\" to go on with its roll (last: {last})",
                    args.name
                ),
                waited: args.timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The start of `since` before `now`.
fn since_start(now: Timestamp, since: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(since)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

async fn write_report(cluster: &Cluster, args: &ReportArgs) -> Result<ExitCode, CliError> {
    let now = Timestamp::now();
    let group = cluster.get(&args.name).await?;
    let dir = args.output_dir.clone().unwrap_or_else(|| {
        format!(
            "quorate-report-{}-{}",
            args.name,
            now.strftime("%Y%m%dT%H%M%SZ")
        )
        .into()
    });
    let write = |file: &str, text: &str| -> Result<(), CliError> {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| CliError::ReportWrite {
                path: parent.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| CliError::ReportWrite { path, source })
    };
    // A new directory: never mix with, or overwrite, an earlier report.
    std::fs::create_dir(&dir).map_err(|source| CliError::ReportWrite {
        path: dir.clone(),
        source,
    })?;
    let mut notes: Vec<String> = Vec::new();

    let group_value = serde_json::to_value(&group).unwrap_or_default();
    write(
        "replicagroup.yaml",
        &report::yaml_documents(vec![group_value]).unwrap_or_else(|e| format!("# {e}\n")),
    )?;
    let events = cluster.events(&args.name).await.unwrap_or_else(|e| {
        notes.push(format!("the group's Events: {e}"));
        Vec::new()
    });
    write(
        "status.txt",
        &format!(
            "{}{}",
            format::format_status(&group, now),
            format::events_section(&events, now)
        ),
    )?;
    let (objects, object_notes) = cluster.group_objects(&args.name).await;
    notes.extend(object_notes);
    write(
        "objects.yaml",
        &report::yaml_documents(objects).unwrap_or_else(|e| format!("# {e}\n")),
    )?;
    match cluster.events_about(&args.name).await {
        Ok(mut about) => {
            about.sort_by_key(|(_, e)| e.at);
            let lines: String = about
                .iter()
                .map(|(object, e)| {
                    let at = e.at.map_or_else(|| "-".to_owned(), |t| t.to_string());
                    let kind = if e.warning { "Warning" } else { "Normal" };
                    format!(
                        "{at} {kind} {} {object} (x{}) {}\n",
                        e.reason,
                        e.count,
                        e.message.replace('\n', " ")
                    )
                })
                .collect();
            write("events.txt", &lines)?;
        }
        Err(e) => notes.push(format!("the namespace's Events: {e}")),
    }
    let sources = cluster
        .log_sources(&args.name, super::args::LogsOf::All)
        .await?;
    let mut pods: Vec<&str> = sources.iter().map(|s| s.pod.as_str()).collect();
    pods.dedup();
    for pod in pods {
        match cluster.agent_role(pod).await {
            Ok(role) => write(&format!("agents/{pod}.json"), &role)?,
            Err(e) => notes.push(format!("{pod}: the agent's /role: {e}")),
        }
    }
    let since = since_start(now, args.since);
    for source in &sources {
        match cluster.log(source, since).await {
            Ok(text) => write(
                &format!(
                    "logs/{}",
                    report::log_file_name(&source.pod, &source.container)
                ),
                &text,
            )?,
            Err(e) => notes.push(format!("{source}: no log: {e}")),
        }
    }
    let mut readme = format!(
        "Quorate report of replicagroup {}/{} at {now}\n\n\
         replicagroup.yaml  the group (spec and status)\n\
         status.txt         kubectl quorate status, with the group's latest Events\n\
         objects.yaml       its StatefulSets, pods, Services, EndpointSlices, budget, claims, Secrets (metadata only), HTTPRoute\n\
         events.txt         the namespace's Events about the group and its objects, oldest first\n\
         agents/POD.json    each agent's own view (GET /role through the API server)\n\
         logs/POD_CONTAINER.log  the last {} of every container\n\n\
         Redacted: Secret values (never read), literal env values, managedFields and kubectl's last-applied-configuration.\n",
        cluster.namespace,
        args.name,
        humantime_like(args.since),
    );
    if !notes.is_empty() {
        readme.push_str("\nNot included:\n");
        for note in &notes {
            readme.push_str(&format!("  {note}\n"));
        }
    }
    write("README.txt", &readme)?;
    for n in &notes {
        note(n);
    }
    emit(&format!(
        "replicagroup \"{}\": report written to {}\n",
        args.name,
        dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// `3600s` as `1h`, `90s` as `90s`.
fn humantime_like(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `fence` (`fenced`) or `unfence`: the conditional patch of spec.fencedMembers (read again and
/// retried when someone else changed the group meanwhile), then the wait for the status.
async fn set_fenced(
    cluster: &Cluster,
    args: &FenceArgs,
    fenced: bool,
) -> Result<ExitCode, CliError> {
    let (name, member) = (&args.name, &args.member);
    let word = if fenced { "fenced" } else { "unfenced" };
    let mut conflicts = 0;
    loop {
        let group = cluster.get(name).await?;
        if !fence::check_fence(&group, member, fenced)? {
            break;
        }
        match cluster
            .merge_patch(name, &fence::fence_patch(&group, member, fenced))
            .await
        {
            Ok(_) => break,
            Err(CliError::Api {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 && conflicts < 5 => conflicts += 1,
            Err(e) => return Err(e),
        }
    }
    if args.no_wait {
        emit(&format!(
            "replicagroup \"{name}\": {member} to be {word} (requested)\n"
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        match cluster.get(name).await {
            Ok(g) if fence::fence_done(&g, member, fenced) => break,
            Ok(_) => {}
            Err(CliError::NotFound { name, namespace }) => {
                return Err(CliError::DeletedWhileWaiting {
                    name,
                    namespace,
                    waiting_for: "the fence",
                });
            }
            // A transient failure (network, API server restart): keep trying until the deadline.
            Err(_) => {}
        }
        if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
            return Err(CliError::WaitTimeout {
                what: format!(
                    "replicagroup \"{name}\" to show {member} {word}: `kubectl quorate status {name}` shows its Events (a FenceRefused Event says why the group refuses)"
                ),
                waited: args.timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let what = if fenced {
        format!(
            "it keeps running but is never appointed primary and gets no traffic, until `kubectl quorate unfence {name} {member}`"
        )
    } else {
        "it is a candidate for primary and gets traffic again".to_owned()
    };
    emit(&format!(
        "replicagroup \"{name}\": {member} {word}: {what}\n"
    ));
    Ok(ExitCode::SUCCESS)
}

async fn set_paused(cluster: &Cluster, name: &str, paused: bool) -> Result<ExitCode, CliError> {
    let group = cluster.get(name).await?;
    let word = if paused { "paused" } else { "resumed" };
    if group.spec.paused == paused {
        emit(&format!(
            "replicagroup \"{}\" is already {}\n",
            group.name_any(),
            if paused {
                "paused"
            } else {
                "running (not paused)"
            }
        ));
        return Ok(ExitCode::SUCCESS);
    }
    cluster.merge_patch(name, &paused_patch(paused)).await?;
    let what = if paused {
        format!(
            "no automatic failover until `kubectl quorate resume {name}`; routing still follows member health"
        )
    } else {
        "automatic failover is on again".to_owned()
    };
    emit(&format!("replicagroup \"{name}\" {word}: {what}\n"));
    Ok(ExitCode::SUCCESS)
}
