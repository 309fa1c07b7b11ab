//! The pure parts of `switchover`, `pause` and `resume`: the checks of `--to`, the merge
//! patches, and the condition the wait looks for.

use kube::ResourceExt;
use serde_json::{Value, json};

use super::{CliError, SWITCHOVER_ANNOTATION};
use crate::api::{GroupMode, MemberRole, ReplicaGroup};

/// The ordinal of `member` in group `group` (`cache-2` → 2), if it has the member name shape
/// `NAME-<ordinal>` (decimal, no leading zeros).
pub fn member_ordinal(group: &str, member: &str) -> Option<u32> {
    let ordinal = member.strip_prefix(group)?.strip_prefix('-')?;
    let canonical = !ordinal.is_empty()
        && ordinal.bytes().all(|b| b.is_ascii_digit())
        && (ordinal == "0" || !ordinal.starts_with('0'));
    if canonical {
        ordinal.parse().ok()
    } else {
        None
    }
}

/// The members that can be named: `cache-0 to cache-2`.
pub(crate) fn member_range(name: &str, replicas: i32) -> String {
    match replicas {
        ..=0 => "none".to_owned(),
        1 => format!("{name}-0"),
        n => format!("{name}-0 to {name}-{}", n - 1),
    }
}

/// Checks a switchover request against the group as last read: the group must be PrimaryBackup
/// and the target (when given) a member `NAME-<ordinal>` with ordinal < spec.replicas that is
/// not already the primary. Returns notes worth showing (the request is still sent).
pub fn check_switchover(
    group: &ReplicaGroup,
    target: Option<&str>,
) -> Result<Vec<String>, CliError> {
    let name = group.name_any();
    if group.spec.mode != GroupMode::PrimaryBackup {
        return Err(CliError::NoPrimaryMode { name });
    }
    let status = group.status.as_ref();
    let mut notes = Vec::new();
    if let Some(target) = target {
        let invalid = |reason: String| CliError::InvalidTarget {
            target: target.to_owned(),
            reason,
        };
        let replicas = group.spec.replicas;
        if target.is_empty() {
            return Err(invalid(
                "needs a member name; leave out --to to let the group choose the best candidate"
                    .to_owned(),
            ));
        }
        let witness_prefix = format!("{name}-witness-");
        if target.starts_with(&witness_prefix) {
            return Err(invalid(format!(
                "witnesses never become primary; choose a member ({})",
                member_range(&name, replicas)
            )));
        }
        let Some(ordinal) = member_ordinal(&name, target) else {
            return Err(invalid(format!(
                "not a member of replicagroup \"{name}\"; members are named {name}-<ordinal> ({})",
                member_range(&name, replicas)
            )));
        };
        if i64::from(ordinal) >= i64::from(replicas) {
            return Err(invalid(format!(
                "replicagroup \"{name}\" has {replicas} replica{}, so the members are {}",
                if replicas == 1 { "" } else { "s" },
                member_range(&name, replicas)
            )));
        }
        if status.and_then(|s| s.primary.as_deref()) == Some(target) {
            let epoch = status
                .and_then(|s| s.epoch)
                .map_or_else(String::new, |e| format!(" (epoch {e})"));
            return Err(invalid(format!(
                "{target} is already the primary{epoch}; choose another member, or leave out --to for the best candidate"
            )));
        }
        match status.and_then(|s| s.members.iter().find(|m| m.name == target)) {
            Some(m) if !m.healthy => {
                notes.push(format!("the last status reports {target} unhealthy; the group may refuse to appoint it"))
            }
            Some(m) if m.role == MemberRole::Unknown || !m.voter => notes.push(format!(
                "the last status reports {target} as not (yet) a voting member; the group may refuse to appoint it"
            )),
            _ => {}
        }
        if let Some(preferred) = group.spec.switchover_to.as_deref()
            && preferred != target
        {
            notes.push(format!("spec.switchoverTo prefers {preferred}; the operator may move the primary back there"));
        }
    }
    if let Some(pending) = group.annotations().get(SWITCHOVER_ANNOTATION) {
        let what = if pending.is_empty() {
            "the best candidate".to_owned()
        } else {
            pending.clone()
        };
        notes.push(format!(
            "a switchover to {what} was still pending; this request replaces it"
        ));
    }
    Ok(notes)
}

/// The merge patch that requests a switchover (`""` = the best candidate).
pub fn switchover_patch(target: Option<&str>) -> Value {
    json!({ "metadata": { "annotations": { SWITCHOVER_ANNOTATION: target.unwrap_or("") } } })
}

/// The merge patch of `pause` (true) and `resume` (false).
pub fn paused_patch(paused: bool) -> Value {
    json!({ "spec": { "paused": paused } })
}

/// Where a requested switchover stands, from a fresh read of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The annotation is gone and the epoch grew: a new appointment happened.
    Done { primary: Option<String>, epoch: i64 },
    /// Not yet; what was seen, for the timeout message.
    Waiting {
        annotation: Option<String>,
        primary: Option<String>,
        epoch: Option<i64>,
    },
}

/// Evaluates the wait condition: the annotation removed by the operator, `status.epoch`
/// greater than `epoch_before` (any epoch counts when there was none) and a primary named. A
/// status written between the appointment and the new primary's live lease shows the new epoch
/// without a primary: that is not done yet (the timeout message says what was seen).
pub fn switchover_progress(group: &ReplicaGroup, epoch_before: Option<i64>) -> Progress {
    let annotation = group.annotations().get(SWITCHOVER_ANNOTATION).cloned();
    let status = group.status.as_ref();
    let primary = status.and_then(|s| s.primary.clone());
    let epoch = status.and_then(|s| s.epoch);
    match epoch {
        Some(e)
            if annotation.is_none() && epoch_before.is_none_or(|b| e > b) && primary.is_some() =>
        {
            Progress::Done { primary, epoch: e }
        }
        _ => Progress::Waiting {
            annotation,
            primary,
            epoch,
        },
    }
}

/// What the timeout error says it saw.
pub fn describe_waiting(progress: &Progress, epoch_before: Option<i64>) -> String {
    let epoch_text = |e: Option<i64>| e.map_or_else(|| "none".to_owned(), |e| e.to_string());
    match progress {
        Progress::Done { primary, epoch } => {
            format!(
                "the switchover completed: primary {}, epoch {epoch}",
                primary.as_deref().unwrap_or("none")
            )
        }
        Progress::Waiting {
            annotation,
            primary,
            epoch,
        } => {
            let request = match annotation {
                Some(_) => format!(
                    "the annotation {SWITCHOVER_ANNOTATION} is still set (is the operator running? `kubectl get pods -n quorate-system`)"
                ),
                None => "the operator removed the annotation but no new primary was appointed (it may have refused the request: see `kubectl describe rg` events)".to_owned(),
            };
            format!(
                "{request}; primary {}, epoch {} (before: {})",
                primary.as_deref().unwrap_or("none"),
                epoch_text(*epoch),
                epoch_text(epoch_before)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ordinals_need_the_exact_shape() {
        assert_eq!(member_ordinal("cache", "cache-0"), Some(0));
        assert_eq!(member_ordinal("cache", "cache-12"), Some(12));
        for bad in [
            "cache",
            "cache-",
            "cache-01",
            "cache--1",
            "cache-1a",
            "cache-+1",
            "cache2",
            "cachex-1",
            "other-1",
            "cache-witness-0",
            "cache- 1",
        ] {
            assert_eq!(member_ordinal("cache", bad), None, "{bad}");
        }
        // A group whose name ends like a member of another.
        assert_eq!(member_ordinal("db-1", "db-1-0"), Some(0));
        assert_eq!(member_ordinal("db", "db-1-0"), None);
        assert_eq!(member_ordinal("cache", "cache-99999999999999999999"), None);
    }

    #[test]
    fn patches_have_the_expected_shape() {
        assert_eq!(
            switchover_patch(Some("cache-2")),
            json!({"metadata": {"annotations": {"quorate.dev/switchover-to": "cache-2"}}})
        );
        assert_eq!(
            switchover_patch(None),
            json!({"metadata": {"annotations": {"quorate.dev/switchover-to": ""}}})
        );
        assert_eq!(paused_patch(true), json!({"spec": {"paused": true}}));
        assert_eq!(paused_patch(false), json!({"spec": {"paused": false}}));
    }
}
