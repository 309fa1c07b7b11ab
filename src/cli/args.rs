//! Command-line arguments of `kubectl quorate` (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operate Quorate ReplicaGroups: show and watch their state and Events, read their members'
/// logs, write a diagnostics report, restart them one member at a time, switch the primary
/// over, pause and resume automatic failover, fence and unfence members, and validate
/// manifests offline.
///
/// kubectl runs this plugin as `kubectl quorate ...` when `kubectl-quorate` is on the PATH.
/// It talks only to the Kubernetes API, with the credentials of your kubeconfig; the operator
/// carries out what it asks for.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "kubectl-quorate",
    bin_name = "kubectl quorate",
    version,
    propagate_version = true
)]
#[command(after_help = "Examples:\n  \
    kubectl quorate status cache\n  \
    kubectl quorate status -A\n  \
    kubectl quorate status cache --watch\n  \
    kubectl quorate logs cache --since 1h -f\n  \
    kubectl quorate report cache\n  \
    kubectl quorate restart cache\n  \
    kubectl quorate switchover cache --to cache-2\n  \
    kubectl quorate pause cache\n  \
    kubectl quorate fence cache cache-2\n  \
    kubectl quorate validate -f examples/redis.yaml")]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the cluster, as in kubectl (these flags go after `kubectl quorate`).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
#[command(next_help_heading = "Cluster options (as in kubectl)")]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the group (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show a ReplicaGroup: mode, phase, primary, epoch, conditions, members and the last
    /// failover. Without NAME, list the groups of the namespace (-A: of all namespaces).
    Status(StatusArgs),
    /// Move the primary of a PrimaryBackup group to another member, without a window with two
    /// primaries.
    ///
    /// Sets the annotation `quorate.dev/switchover-to` on the group (the target member, or empty
    /// for the best candidate); the operator performs the switchover and removes the annotation.
    /// By default the command then waits until the new primary is appointed (the epoch grows).
    Switchover(SwitchoverArgs),
    /// Pause automatic failover of a group (sets spec.paused to true).
    ///
    /// While a group is paused, no new primary is appointed automatically: the current primary
    /// keeps its role for as long as its lease holds, and if it fails the group stays without a
    /// primary until it is resumed. Routing still follows member health:
    /// unhealthy members are drained from the Services and routes, and a primary whose lease
    /// expired is no longer routed. Use it for maintenance on the workload or the nodes.
    Pause(NameArg),
    /// Resume automatic failover of a paused group (sets spec.paused to false).
    Resume(NameArg),
    /// Fence a member: it keeps running (and replicating) but is never appointed primary and
    /// gets no traffic: it leaves NAME-ro, NAME-r and the Gateway weights.
    ///
    /// Adds the member to spec.fencedMembers; the operator has the group fence it, switching
    /// the primary away first when the member is the primary. Refused when it would leave the
    /// group no healthy, unfenced member to take over. By default the command then waits until
    /// the group's status shows the member fenced (and no longer primary). Undo with `unfence`.
    Fence(FenceArgs),
    /// Unfence a member: it is a candidate for primary and gets traffic again (removes it from
    /// spec.fencedMembers).
    Unfence(FenceArgs),
    /// Check ReplicaGroup manifests offline, with the schema and CEL rules of the CRD (the same
    /// checks the API server runs). Documents of other kinds are ignored.
    ///
    /// Prints each problem as `FILE: document N (NAME): FIELD: MESSAGE` and exits with status 1
    /// when any ReplicaGroup is invalid, 0 otherwise. Documents are numbered from 1 in each
    /// file (empty documents are not counted). A group that appears twice in the input is
    /// checked the second time as an update of the first, as `kubectl apply` would apply it.
    Validate(ValidateArgs),
    /// Print the logs of every member and witness of a group — the agent's and the workload's —
    /// interleaved by time, each line prefixed with its time, pod and container.
    Logs(LogsArgs),
    /// Write a diagnostics bundle of a group into a new directory: the group, its objects, its
    /// and their Events, what each agent says of itself, and the recent logs of every container.
    /// Secrets appear with their key names only, and literal environment variable values are
    /// replaced by <redacted>.
    Report(ReportArgs),
    /// Restart every member and witness of a group, one at a time: the plugin stamps the pod
    /// template (quorate.dev/restarted-at) and the operator rolls the members onto it, backups
    /// and witnesses first (each back and the group Ready before the next), then one planned
    /// switchover to a restarted member, then the old primary; the plugin follows the roll
    /// until it is done. Refused for a group that is not Ready.
    Restart(RestartArgs),
    /// Print the version of this plugin.
    Version,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  \
    kubectl quorate report cache                 # into ./quorate-report-cache-<time>/\n  \
    kubectl quorate report cache --since 6h --output-dir /tmp/cache-report")]
pub struct ReportArgs {
    /// Name of the ReplicaGroup.
    pub name: String,
    /// The directory to create (it must not exist); default `quorate-report-NAME-TIME`.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// How far back the logs go: a number of seconds or a duration such as `90s`, `2h`.
    #[arg(long, default_value = "1h", value_parser = parse_since, value_name = "DURATION")]
    pub since: Duration,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  \
    kubectl quorate restart cache\n  \
    kubectl quorate restart cache --timeout 10m   # per step of the roll: a member back, the switchover")]
pub struct RestartArgs {
    /// Name of the ReplicaGroup.
    pub name: String,
    /// How long each step may take (a pod back and the group Ready; the switchover): a number
    /// of seconds or a duration such as `90s`, `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
}

/// Which containers `logs` reads.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogsOf {
    /// The agents (`quorate-agent`).
    Agent,
    /// The workload containers (the template's).
    Workload,
    /// Both.
    All,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  \
    kubectl quorate logs cache                      # the last 10 minutes of every member, by time\n  \
    kubectl quorate logs cache --since 1h --of agent\n  \
    kubectl quorate logs cache -f                   # and follow, until Ctrl-C")]
pub struct LogsArgs {
    /// Name of the ReplicaGroup.
    pub name: String,
    /// How far back: a number of seconds or a duration such as `90s`, `10m`, `2h`.
    #[arg(long, default_value = "10m", value_parser = parse_since, value_name = "DURATION")]
    pub since: Duration,
    /// Keep printing new lines as they are written, until interrupted (Ctrl-C). The lines read
    /// at the start are sorted by time; followed lines are printed as they arrive.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Whose logs: the agents, the workload containers, or both.
    #[arg(long, value_enum, default_value = "all", value_name = "WHOSE")]
    pub of: LogsOf,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct NameArg {
    /// Name of the ReplicaGroup.
    pub name: String,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  \
    kubectl quorate status cache              # one group, with its latest Events\n  \
    kubectl quorate status cache --watch      # and again on every change, until Ctrl-C\n  \
    kubectl quorate status -A                 # every group of every namespace\n  \
    kubectl quorate status cache -o yaml      # the raw status")]
pub struct StatusArgs {
    /// Name of the ReplicaGroup (omit it to list the groups).
    pub name: Option<String>,
    /// List the groups of all namespaces.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Print the raw status instead of the readable view (a list: name, namespace and status of
    /// each group).
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// After printing, watch: print again whenever the group (or a listed group) changes, until
    /// interrupted (Ctrl-C). Each view starts with a line saying when.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Yaml,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverArgs {
    /// Name of the ReplicaGroup.
    pub name: String,
    /// The member to become primary, `NAME-<ordinal>` (default: the best candidate the group
    /// chooses: healthy, most caught up, highest priority).
    #[arg(long, value_name = "MEMBER")]
    pub to: Option<String>,
    /// Wait until the new primary is appointed (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Return as soon as the request is recorded.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// How long to wait: a number of seconds or a duration such as `90s`, `2m`, `1500ms`.
    #[arg(long, default_value = "60s", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = "Examples:\n  \
    kubectl quorate fence cache cache-2             # cache-2 keeps running, gets no traffic, is never primary\n  \
    kubectl quorate fence cache cache-0 --timeout 2m  # the primary: switched away first\n  \
    kubectl quorate unfence cache cache-2")]
pub struct FenceArgs {
    /// Name of the ReplicaGroup.
    pub name: String,
    /// The member, `NAME-<ordinal>`.
    pub member: String,
    /// Return as soon as the request is recorded, without waiting for the group.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait: a number of seconds or a duration such as `90s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
}

impl SwitchoverArgs {
    /// Whether to wait for the switchover: on unless `--no-wait` came last.
    pub fn should_wait(&self) -> bool {
        !self.no_wait
    }
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ValidateArgs {
    /// Manifest file, directory (its .yaml, .yml and .json files) or `-` for standard input;
    /// repeat for several.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// Parses `--timeout`: a positive number of seconds, or a number with `ms`, `s`, `m` or `h`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(
            "the timeout must be greater than 0 (use --no-wait to skip waiting)".to_owned(),
        );
    }
    Ok(duration)
}

/// Parses `logs --since`: as `--timeout`.
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) {
        return Err("--since must be at least 1s".to_owned());
    }
    Ok(duration)
}

/// A number of seconds, or a number with `ms`, `s`, `m` or `h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        format!(
            "{text:?} is not a duration; use a number of seconds or a value such as 90s, 2m, 1500ms"
        )
    };
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(invalid()),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_parse_with_and_without_units() {
        assert_eq!(parse_timeout("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "-5", "1.5s", "10d", "abc", "0", "0s"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn switchover_waits_by_default_and_the_last_flag_wins() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).expect("valid").command {
            Command::Switchover(s) => s,
            other => panic!("unexpected {other:?}"),
        };
        let s = parse(&["kubectl-quorate", "switchover", "cache"]);
        assert!(s.should_wait());
        assert_eq!(s.timeout, Duration::from_secs(60));
        assert_eq!(s.to, None);
        assert!(!parse(&["kubectl-quorate", "switchover", "cache", "--no-wait"]).should_wait());
        assert!(
            parse(&[
                "kubectl-quorate",
                "switchover",
                "cache",
                "--no-wait",
                "--wait"
            ])
            .should_wait()
        );
        assert!(
            !parse(&[
                "kubectl-quorate",
                "switchover",
                "cache",
                "--wait",
                "--no-wait"
            ])
            .should_wait()
        );
        let s = parse(&[
            "kubectl-quorate",
            "switchover",
            "cache",
            "--to",
            "cache-2",
            "--timeout",
            "5s",
        ]);
        assert_eq!(s.to.as_deref(), Some("cache-2"));
        assert_eq!(s.timeout, Duration::from_secs(5));
    }

    #[test]
    fn cluster_flags_go_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from([
            "kubectl-quorate",
            "-n",
            "shop",
            "--context",
            "prod",
            "status",
            "cache",
        ])
        .expect("valid");
        let b = Cli::try_parse_from([
            "kubectl-quorate",
            "status",
            "cache",
            "--namespace=shop",
            "--context=prod",
        ])
        .expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.cluster.namespace.as_deref(), Some("shop"));
        assert_eq!(a.cluster.context.as_deref(), Some("prod"));
    }

    #[test]
    fn all_namespaces_conflicts_with_a_name() {
        let err = Cli::try_parse_from(["kubectl-quorate", "status", "cache", "-A"])
            .expect_err("conflict");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let ok =
            Cli::try_parse_from(["kubectl-quorate", "status", "-A", "-o", "yaml"]).expect("valid");
        assert!(matches!(
            ok.command,
            Command::Status(StatusArgs {
                all_namespaces: true,
                output: Some(OutputFormat::Yaml),
                ..
            })
        ));
    }

    #[test]
    fn validate_needs_a_file() {
        let err = Cli::try_parse_from(["kubectl-quorate", "validate"]).expect_err("missing -f");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let ok = Cli::try_parse_from(["kubectl-quorate", "validate", "-f", "a.yaml", "-f", "-"])
            .expect("valid");
        assert!(
            matches!(ok.command, Command::Validate(ValidateArgs { files }) if files.len() == 2)
        );
    }
}
