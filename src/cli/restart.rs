//! The pure part of `restart`. The plugin restarts no pod itself: it stamps the group's pod
//! template with `quorate.dev/restarted-at` (as `kubectl rollout restart` does for a
//! Deployment), and the operator rolls the members onto the new template in its order —
//! backups and witnesses first, one planned switchover, the old primary last
//! (docs/operations.md, "Upgrades and rolls") — which the plugin follows in the group's
//! `UpToDate` condition.

use kube::ResourceExt;
use serde_json::{Value, json};

use super::CliError;
use crate::api::ReplicaGroup;
use crate::api::names::RESTARTED_AT_ANNOTATION;

/// A group that is not Ready is not restarted: a restart could cost a group already short of a
/// member its majority (the operator's roll would wait anyway; refusing says so at once).
pub fn check_ready(group: &ReplicaGroup) -> Result<(), CliError> {
    let status = group.status.clone().unwrap_or_default();
    match status.conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" => Ok(()),
        found => Err(CliError::NotReady {
            name: group.name_any(),
            why: found.map_or_else(
                || "no Ready condition yet".to_owned(),
                |c| c.message.clone(),
            ),
        }),
    }
}

/// The merge patch that asks for the restart: a new pod template, stamped with `at`.
pub fn restart_patch(at: &str) -> Value {
    json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: at}}}}})
}

/// Where the roll is, from the group as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollProgress {
    /// Every pod runs the template of `generation` (or a later one) and the group is Ready.
    Done,
    /// What the roll does or waits for, in the operator's words.
    Rolling(String),
}

/// `generation`: the group's generation right after the patch.
pub fn roll_progress(group: &ReplicaGroup, generation: i64) -> RollProgress {
    let status = group.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return RollProgress::Rolling("waiting for the operator to see the new template".into());
    }
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let up_to_date = condition("UpToDate");
    let ready = condition("Ready").is_some_and(|c| c.status == "True");
    match up_to_date {
        Some(c) if c.status == "True" && ready => RollProgress::Done,
        Some(c) if c.status == "True" => RollProgress::Rolling(format!(
            "every pod restarted; waiting for the group to be Ready ({})",
            condition("Ready").map_or("", |c| c.message.as_str())
        )),
        Some(c) => RollProgress::Rolling(c.message.clone()),
        None => RollProgress::Rolling(
            "the group reports no UpToDate condition: is the operator older than this plugin?"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(generation: i64, observed: i64, conditions: &[(&str, &str, &str)]) -> ReplicaGroup {
        let conditions: Vec<Value> = conditions
            .iter()
            .map(|(t, s, m)| json!({"type": t, "status": s, "reason": "R", "message": m, "lastTransitionTime": "2026-12-07T10:00:00Z"}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup",
            "metadata": {"name": "db", "namespace": "ns", "generation": generation},
            "spec": {"mode": "PrimaryBackup", "replicas": 3,
                "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
            "status": {"observedGeneration": observed, "conditions": conditions},
        }))
        .expect("fixture group")
    }

    #[test]
    fn a_group_that_is_not_ready_is_not_restarted() {
        let g = group(1, 1, &[("Ready", "False", "db-2 is not healthy")]);
        let err = check_ready(&g).expect_err("refused");
        assert!(err.to_string().contains("db-2 is not healthy"), "{err}");
        assert!(check_ready(&group(1, 1, &[("Ready", "True", "")])).is_ok());
    }

    #[test]
    fn the_patch_stamps_the_pod_template() {
        assert_eq!(
            restart_patch("2026-12-07T10:00:00Z")["spec"]["template"]["metadata"]["annotations"]
                [RESTARTED_AT_ANNOTATION],
            "2026-12-07T10:00:00Z"
        );
    }

    #[test]
    fn the_roll_is_done_once_the_new_template_is_everywhere_and_the_group_is_ready() {
        let rolling = (
            "UpToDate",
            "False",
            "restarting db-2; 3 pod(s) on an older pod template",
        );
        // The operator has not seen the patch yet: an UpToDate of before says nothing.
        let stale = group(5, 4, &[("UpToDate", "True", ""), ("Ready", "True", "")]);
        assert!(
            matches!(roll_progress(&stale, 5), RollProgress::Rolling(m) if m.contains("operator to see"))
        );
        assert_eq!(
            roll_progress(&group(5, 5, &[rolling, ("Ready", "True", "")]), 5),
            RollProgress::Rolling(rolling.2.into())
        );
        let settling = group(
            5,
            5,
            &[
                ("UpToDate", "True", ""),
                ("Ready", "False", "waiting for: Pending"),
            ],
        );
        assert!(
            matches!(roll_progress(&settling, 5), RollProgress::Rolling(m) if m.contains("Pending"))
        );
        let done = group(6, 6, &[("UpToDate", "True", ""), ("Ready", "True", "")]);
        assert_eq!(roll_progress(&done, 5), RollProgress::Done);
        let old_operator = group(5, 5, &[("Ready", "True", "")]);
        assert!(
            matches!(roll_progress(&old_operator, 5), RollProgress::Rolling(m) if m.contains("older"))
        );
    }
}
