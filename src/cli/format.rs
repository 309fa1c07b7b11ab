//! The readable views of `kubectl quorate status`: pure functions from ReplicaGroups (and the
//! current time, for ages) to text, so that they are snapshot-tested without a cluster.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;

use super::args::OutputFormat;
use super::{CliError, SWITCHOVER_ANNOTATION};
use crate::api::{GroupMode, GroupPhase, MemberStatus, ReplicaGroup, ReplicaGroupStatus};

/// Placeholder for an unknown or absent value.
const NONE: &str = "-";

/// The age of `since` at `now`, in kubectl's style (`45s`, `3m20s`, `5h`, `12d`).
pub fn human_age(since: Timestamp, now: Timestamp) -> String {
    let secs = now.duration_since(since).as_secs();
    if secs < -1 {
        // More than a second in the future: clocks disagree.
        return "<future>".to_owned();
    }
    let secs = secs.max(0);
    let (minutes, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if hours < 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if days < 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        }
    } else {
        format!("{}y", days / 365)
    }
}

/// Aligns rows under headers, two spaces between columns, `indent` before each line. Cells are
/// made single-line (control characters become spaces); the last column is not padded.
pub fn render_table(indent: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let all: Vec<Vec<String>> = std::iter::once(header_row)
        .chain(rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()))
        .collect();
    let mut widths = vec![0; headers.len()];
    for row in &all {
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &all {
        let mut line = indent.to_owned();
        for (i, cell) in row.iter().enumerate().take(widths.len()) {
            if i + 1 == widths.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[i] - cell.chars().count() + 2,
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A number with at most two decimals and no trailing zeros (`0.5`, `12`, `3.14`).
pub fn decimal(value: f64) -> String {
    if !value.is_finite() {
        return NONE.to_owned();
    }
    let text = format!("{value:.2}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn mode_name(mode: GroupMode) -> &'static str {
    match mode {
        GroupMode::PrimaryBackup => "PrimaryBackup",
        GroupMode::ActiveActive => "ActiveActive",
    }
}

fn phase_name(phase: Option<GroupPhase>) -> &'static str {
    match phase {
        Some(GroupPhase::Pending) => "Pending",
        Some(GroupPhase::Bootstrapping) => "Bootstrapping",
        Some(GroupPhase::Ready) => "Ready",
        Some(GroupPhase::Degraded) => "Degraded",
        Some(GroupPhase::Failed) => "Failed",
        None => NONE,
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| NONE.to_owned(), |v| v.to_string())
}

fn time_with_age(time: Option<&Time>, now: Timestamp) -> String {
    match time {
        Some(t) => format!("{} ({} ago)", t.0, human_age(t.0, now)),
        None => NONE.to_owned(),
    }
}

/// The members table: name, role, healthy, voter, fenced, weight, lease, load, latency.
pub fn members_table(indent: &str, members: &[MemberStatus]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.role.as_str().to_owned(),
                yes_no(m.healthy).to_owned(),
                yes_no(m.voter).to_owned(),
                yes_no(m.fenced).to_owned(),
                m.weight.to_string(),
                m.lease.clone().unwrap_or_else(|| NONE.to_owned()),
                m.load.map_or_else(|| NONE.to_owned(), decimal),
                m.latency_millis
                    .map_or_else(|| NONE.to_owned(), |l| format!("{}ms", decimal(l))),
            ]
        })
        .collect();
    render_table(
        indent,
        &[
            "NAME", "ROLE", "HEALTHY", "VOTER", "FENCED", "WEIGHT", "LEASE", "LOAD", "LATENCY",
        ],
        &rows,
    )
}

/// The readable view of one group (`kubectl quorate status NAME`).
pub fn format_status(group: &ReplicaGroup, now: Timestamp) -> String {
    let spec = &group.spec;
    let empty = ReplicaGroupStatus::default();
    let status = group.status.as_ref().unwrap_or(&empty);
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut field = |key: &str, value: String| lines.push((format!("{key}:"), value));

    field("Name", group.name_any());
    field(
        "Namespace",
        group.namespace().unwrap_or_else(|| NONE.to_owned()),
    );
    field("Mode", mode_name(spec.mode).to_owned());
    let witnesses = spec.effective_witnesses();
    let mut replicas = match group.status {
        Some(_) => format!(
            "{} desired, {} existing, {} ready",
            spec.replicas, status.replicas, status.ready_replicas
        ),
        None => format!("{} desired", spec.replicas),
    };
    if witnesses > 0 {
        replicas.push_str(&format!(
            " (+{witnesses} witness{})",
            if witnesses == 1 { "" } else { "es" }
        ));
    }
    field("Replicas", replicas);
    field("Phase", phase_name(status.phase).to_owned());
    if spec.mode == GroupMode::PrimaryBackup {
        field(
            "Primary",
            status.primary.clone().unwrap_or_else(|| "none".to_owned()),
        );
    }
    let epoch = match (status.epoch, status.routed_epoch) {
        (Some(e), Some(r)) if e != r => format!("{e} (routed: {r})"),
        (e, _) => opt(e),
    };
    field("Epoch", epoch);
    field(
        "Leader",
        status.leader.clone().unwrap_or_else(|| NONE.to_owned()),
    );
    field(
        "Paused",
        if spec.paused {
            "yes (no automatic failover; routing still follows member health)".to_owned()
        } else {
            "no".to_owned()
        },
    );
    field("Traffic", format!("{:?}", spec.traffic.policy));
    let pending = group.annotations().get(SWITCHOVER_ANNOTATION);
    match (pending.map(String::as_str), spec.switchover_to.as_deref()) {
        (Some(""), _) => field(
            "Switchover",
            format!("requested to the best candidate ({SWITCHOVER_ANNOTATION})"),
        ),
        (Some(target), _) => field(
            "Switchover",
            format!("requested to {target} ({SWITCHOVER_ANNOTATION})"),
        ),
        (None, Some(target)) => field(
            "Switchover",
            format!("{target} preferred (spec.switchoverTo)"),
        ),
        (None, None) => {}
    }
    if let (Some(generation), Some(_)) = (group.metadata.generation, &group.status)
        && status.observed_generation != Some(generation)
    {
        let observed = status.observed_generation;
        field(
            "Generation",
            format!(
                "{generation}, status describes {} (the operator has not caught up yet)",
                opt(observed)
            ),
        );
    }
    if group.status.is_none() {
        field(
            "Status",
            "not reported yet (is the operator running?)".to_owned(),
        );
    }

    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (key, value) in &lines {
        out.push_str(&format!("{key:width$}{value}\n"));
    }

    out.push_str("Conditions:\n");
    if status.conditions.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .conditions
            .iter()
            .map(|c| {
                let or_none = |s: &str| {
                    if s.is_empty() {
                        NONE.to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    or_none(&c.reason),
                    human_age(c.last_transition_time.0, now),
                    or_none(&c.message),
                ]
            })
            .collect();
        out.push_str(&render_table(
            "  ",
            &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            &rows,
        ));
    }

    out.push_str("Members:\n");
    if status.members.is_empty() {
        out.push_str("  none reported\n");
    } else {
        out.push_str(&members_table("  ", &status.members));
    }

    out.push_str("Last failover:");
    match &status.last_failover {
        None => out.push_str(" none\n"),
        Some(f) => {
            let mut summary = format!(" {} → {}", opt(f.from.as_deref()), opt(f.to.as_deref()));
            if let Some(reason) = &f.reason {
                summary.push_str(&format!(", reason {reason}"));
            }
            if let Some(epoch) = f.epoch {
                summary.push_str(&format!(", epoch {epoch}"));
            }
            if let Some(ms) = f.duration_millis {
                summary.push_str(&format!(", {ms}ms from detection to routing"));
            }
            out.push_str(&summary);
            out.push('\n');
            out.push_str(&format!(
                "  Detected:   {}\n",
                time_with_age(f.detected_at.as_ref(), now)
            ));
            out.push_str(&format!(
                "  Appointed:  {}\n",
                time_with_age(f.appointed_at.as_ref(), now)
            ));
            out.push_str(&format!(
                "  Routed:     {}\n",
                time_with_age(f.routed_at.as_ref(), now)
            ));
        }
    }
    out
}

/// An Event about a group, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEvent {
    /// When it last happened (the latest of its timestamps).
    pub at: Option<Timestamp>,
    pub warning: bool,
    pub reason: String,
    pub message: String,
    /// How many times it happened (1 when the API server does not say).
    pub count: i32,
}

/// How many of the latest Events `status` shows.
pub const SHOWN_EVENTS: usize = 10;

/// The `Events:` section of `status NAME`: the latest [`SHOWN_EVENTS`], oldest first (as
/// `kubectl describe` does), with their age at `now`.
pub fn events_section(events: &[GroupEvent], now: Timestamp) -> String {
    let mut sorted: Vec<&GroupEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.at);
    let shown = &sorted[sorted.len().saturating_sub(SHOWN_EVENTS)..];
    if shown.is_empty() {
        return "Events: none\n".to_owned();
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|e| {
            let age =
                e.at.map_or_else(|| NONE.to_owned(), |at| human_age(at, now));
            vec![
                if e.count > 1 {
                    format!("{age} (x{})", e.count)
                } else {
                    age
                },
                if e.warning { "Warning" } else { "Normal" }.to_owned(),
                e.reason.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    let more = match sorted.len() - shown.len() {
        0 => String::new(),
        n => format!(" (the latest {SHOWN_EVENTS}; {n} older not shown)"),
    };
    format!(
        "Events{more}:\n{}",
        render_table("  ", &["AGE", "TYPE", "REASON", "MESSAGE"], &rows)
    )
}

/// The table of several groups (`kubectl quorate status` without a name).
pub fn format_list(
    groups: &[ReplicaGroup],
    all_namespaces: bool,
    namespace: &str,
    now: Timestamp,
) -> String {
    if groups.is_empty() {
        return if all_namespaces {
            "No ReplicaGroups found.\n".to_owned()
        } else {
            format!("No ReplicaGroups found in namespace \"{namespace}\".\n")
        };
    }
    let mut headers = vec![];
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME", "MODE", "REPLICAS", "READY", "PRIMARY", "EPOCH", "PHASE", "PAUSED", "AGE",
    ]);
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let status = g.status.as_ref();
            let mut row = vec![];
            if all_namespaces {
                row.push(g.namespace().unwrap_or_else(|| NONE.to_owned()));
            }
            row.extend([
                g.name_any(),
                mode_name(g.spec.mode).to_owned(),
                g.spec.replicas.to_string(),
                opt(status.map(|s| s.ready_replicas)),
                opt(status.and_then(|s| s.primary.clone())),
                opt(status.and_then(|s| s.epoch)),
                phase_name(status.and_then(|s| s.phase)).to_owned(),
                yes_no(g.spec.paused).to_owned(),
                g.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or_else(|| NONE.to_owned(), |t| human_age(t.0, now)),
            ]);
            row
        })
        .collect();
    render_table("", &headers, &rows)
}

fn serialize<T: Serialize>(value: &T, format: OutputFormat) -> Result<String, CliError> {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Output {
                format: "JSON",
                message: e.to_string(),
            }),
        OutputFormat::Yaml => serde_saphyr::to_string(value).map_err(|e| CliError::Output {
            format: "YAML",
            message: e.to_string(),
        }),
    }
}

/// The raw status of one group as JSON or YAML (`null` while the operator has not written one).
pub fn raw_status(group: &ReplicaGroup, format: OutputFormat) -> Result<String, CliError> {
    serialize(&group.status, format)
}

/// One entry of the raw list output.
#[derive(Serialize)]
struct RawEntry<'a> {
    namespace: Option<String>,
    name: String,
    status: &'a Option<ReplicaGroupStatus>,
}

/// The raw status of several groups: a list of `{namespace, name, status}`.
pub fn raw_list(groups: &[ReplicaGroup], format: OutputFormat) -> Result<String, CliError> {
    let entries: Vec<RawEntry<'_>> = groups
        .iter()
        .map(|g| RawEntry {
            namespace: g.namespace(),
            name: g.name_any(),
            status: &g.status,
        })
        .collect();
    serialize(&entries, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid")
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = at(1_000_000_000);
        let age = |secs: i64| human_age(at(1_000_000_000 - secs), now);
        assert_eq!(age(0), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(120), "2m");
        assert_eq!(age(200), "3m20s");
        assert_eq!(age(45 * 60), "45m");
        assert_eq!(age(5 * 3600 + 7 * 60), "5h7m");
        assert_eq!(age(30 * 3600), "30h");
        assert_eq!(age(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(age(100 * 86_400), "100d");
        assert_eq!(age(3 * 365 * 86_400 + 86_400), "3y1d");
        assert_eq!(age(10 * 365 * 86_400), "10y");
        // Slight clock skew counts as now; more is flagged.
        assert_eq!(human_age(at(1_000_000_001), now), "0s");
        assert_eq!(human_age(at(1_000_000_100), now), "<future>");
    }

    #[test]
    fn decimals_are_short() {
        assert_eq!(decimal(0.5), "0.5");
        assert_eq!(decimal(12.0), "12");
        assert_eq!(decimal(1.23456), "1.23");
        assert_eq!(decimal(0.0), "0");
        assert_eq!(decimal(-0.001), "0");
        assert_eq!(decimal(100.0), "100");
        assert_eq!(decimal(f64::NAN), "-");
    }

    #[test]
    fn tables_align_and_stay_on_one_line() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()],
            vec!["bbbb".to_owned(), "v".to_owned(), "two\nlines".to_owned()],
        ];
        let text = render_table("  ", &["H1", "H2", "H3"], &rows);
        assert_eq!(
            text,
            "  H1    H2          H3\n  a     long value  x\n  bbbb  v           two lines\n"
        );
    }
}
