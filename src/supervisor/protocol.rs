//! What the agent and the supervisor say to each other over the pod's loopback: the agent's
//! `GET /role` answer (read by the supervisor) and the supervisor's `POST /workload` report (read
//! by the agent). Both are JSON; the agent is the only server.

use serde::{Deserialize, Serialize};

use crate::api::{HookKind, MemberRole};

/// The agent's `/role` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRole {
    pub member: String,
    pub role: MemberRole,
    pub epoch: u64,
    /// The end of this member's primary lease on the pod's CLOCK_MONOTONIC (shared by every
    /// container of the pod); absent when it holds none. The supervisor fences at this moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until_mono_millis: Option<u64>,
    /// The primary this member knows of (member name and stable DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_host: Option<String>,
    /// The coordinator wants a workload position measured after it asked: the supervisor runs
    /// the position hook as soon as this grows, and reports the token with the position.
    #[serde(default)]
    pub position_wanted: u64,
    /// The agent's clock when it answered (for logs).
    #[serde(default)]
    pub mono_millis: u64,
    /// Which agent process answered (its start on the monotonic clock) and the revision of
    /// the state it answered from: the supervisor echoes them in its reports, so that the agent
    /// knows which of its decisions (a release) the supervisor had seen.
    #[serde(default)]
    pub incarnation: u64,
    #[serde(default)]
    pub revision: u64,
}

/// The last run of a hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookOutcome {
    pub hook: HookKind,
    /// The epoch the hook acted for (0 when none).
    pub epoch: u64,
    pub ok: bool,
    /// The exit code; absent when the hook was killed (timeout) or could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// 0 for a successful health or position run (they run all the time).
    pub duration_millis: u64,
    /// Why it failed, in words (timeout, not found, exit code), and the last lines it printed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// What the workload was last made, by the hooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Applied {
    /// Nothing yet (starting, or joining).
    None,
    Primary {
        epoch: u64,
    },
    /// Following `primary` (empty: no primary known).
    Backup {
        epoch: u64,
        primary: String,
    },
    /// Past its lease without renewal: told to stop accepting writes (or stopped).
    Fenced {
        epoch: u64,
    },
}

/// The supervisor's `POST /workload` report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReport {
    /// The workload process runs (joined) and its health check, if any, passes.
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_message: String,
    /// The last position the position hook printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// The agent's `position_wanted` token current when that position was measured.
    #[serde(default)]
    pub position_token: u64,
    /// Why there is no position (the hook failed or printed something else than an integer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub position_error: String,
    pub applied: Applied,
    /// The hooks' latest outcomes, one per hook that ran, in the order of `HookKind`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookOutcome>,
    /// The epoch the workload is primary under or being promoted for: it may accept writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_epoch: Option<u64>,
    /// `AgentRole::incarnation` and `revision` of the last `/role` answer the supervisor acted
    /// on. A report that saw the state after a release shows whether the workload still is
    /// primary after it (an answer from before can no longer make it primary).
    #[serde(default)]
    pub role_seen_incarnation: u64,
    #[serde(default)]
    pub role_seen_revision: u64,
    /// The workload process has ended and this supervisor starts nothing any more (it exits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
}

impl WorkloadReport {
    /// The workload is certainly not primary for `epoch` or an earlier one: the process is
    /// gone, or the supervisor saw the agent's state of `revision` (of agent `incarnation`) or
    /// a later one and the workload is not (being made) primary under such an epoch.
    pub fn shows_released(&self, epoch: u64, incarnation: u64, revision: u64) -> bool {
        self.exited
            || (self.role_seen_incarnation == incarnation
                && self.role_seen_revision >= revision
                && self.primary_epoch.is_none_or(|e| e > epoch))
    }
}

/// Largest report the agent accepts.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// The last bytes of a hook's output that are kept.
pub const OUTPUT_TAIL_BYTES: usize = 1024;

/// The last `OUTPUT_TAIL_BYTES` of `output`, cut at a line (or character) boundary.
pub fn output_tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let text = text.trim_end();
    if text.len() <= OUTPUT_TAIL_BYTES {
        return text.to_owned();
    }
    let mut start = text.len() - OUTPUT_TAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    match tail.find('\n') {
        Some(i) if i + 1 < tail.len() => tail[i + 1..].to_owned(),
        _ => tail.to_owned(),
    }
}

/// A position hook's output: one non-negative integer, surrounding white space allowed.
pub fn parse_position(output: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(output)
        .map_err(|_| "the position hook printed bytes that are not UTF-8".to_owned())?
        .trim();
    text.parse::<u64>().map_err(|_| {
        let shown: String = text.chars().take(40).collect();
        format!("the position hook must print one non-negative integer; it printed {shown:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn positions_parse_only_as_integers() {
        assert_eq!(parse_position(b" 1234\n"), Ok(1234));
        assert!(parse_position(b"").is_err());
        assert!(parse_position(b"-1").is_err());
        assert!(parse_position(b"12 34").is_err());
        assert!(parse_position(b"master_repl_offset:12").is_err());
        assert!(parse_position(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn the_tail_keeps_whole_last_lines() {
        let mut long = String::new();
        for i in 0..500 {
            long.push_str(&format!("line {i}\n"));
        }
        let tail = output_tail(long.as_bytes());
        assert!(tail.len() <= OUTPUT_TAIL_BYTES);
        assert!(tail.starts_with("line "), "{tail:?}");
        assert!(tail.ends_with("line 499"));
        assert_eq!(output_tail(b"short\n"), "short");
    }

    proptest! {
        #[test]
        fn arbitrary_output_never_panics(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = parse_position(&data);
            prop_assert!(output_tail(&data).len() <= OUTPUT_TAIL_BYTES + 3);
        }
    }

    #[test]
    fn a_release_shows_only_in_a_report_that_saw_it() {
        let report = |primary_epoch, incarnation, revision, exited| WorkloadReport {
            healthy: true,
            health_message: String::new(),
            position: None,
            position_token: 0,
            position_error: String::new(),
            applied: Applied::None,
            hooks: Vec::new(),
            primary_epoch,
            role_seen_incarnation: incarnation,
            role_seen_revision: revision,
            exited,
        };
        // The release was decided in state 10 of agent incarnation 7.
        assert!(report(None, 7, 10, false).shows_released(3, 7, 10));
        assert!(report(None, 7, 12, false).shows_released(3, 7, 10));
        // An answer from before the release may still make the workload primary.
        assert!(!report(None, 7, 9, false).shows_released(3, 7, 10));
        // Another agent process's revisions say nothing about this one's.
        assert!(!report(None, 6, 99, false).shows_released(3, 7, 10));
        // Primary (or being promoted) under that epoch or an earlier one: not released.
        assert!(!report(Some(3), 7, 11, false).shows_released(3, 7, 10));
        assert!(!report(Some(2), 7, 11, false).shows_released(3, 7, 10));
        // Primary under a later epoch, or the process gone: not primary for this one.
        assert!(report(Some(4), 7, 11, false).shows_released(3, 7, 10));
        assert!(report(Some(3), 0, 0, true).shows_released(3, 7, 10));
    }

    #[test]
    fn reports_round_trip() {
        let r = WorkloadReport {
            healthy: true,
            health_message: String::new(),
            position: Some(7),
            position_token: 2,
            position_error: String::new(),
            applied: Applied::Backup {
                epoch: 3,
                primary: "cache-1".into(),
            },
            hooks: vec![HookOutcome {
                hook: HookKind::Demote,
                epoch: 3,
                ok: true,
                exit_code: Some(0),
                duration_millis: 4,
                message: String::new(),
                output: "OK".into(),
            }],
            primary_epoch: None,
            role_seen_incarnation: 5,
            role_seen_revision: 90,
            exited: false,
        };
        let text = serde_json::to_string(&r).expect("encode");
        assert_eq!(serde_json::from_str::<WorkloadReport>(&text).ok(), Some(r));
    }
}
