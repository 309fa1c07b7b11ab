//! The pure part of `restart`: which pods restart in which order. Backups and witnesses first,
//! one at a time; then one planned switchover; then the old primary — so a rolling restart
//! costs a PrimaryBackup group exactly one change of primary, to a member already restarted.

use kube::ResourceExt;

use super::CliError;
use crate::api::{GroupMode, MemberRole, ReplicaGroup};

/// What `restart` does, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPlan {
    /// Members (not the primary) and witnesses, highest ordinal first (as a StatefulSet rolls).
    pub first: Vec<String>,
    /// The primary, restarted after a switchover away from it (PrimaryBackup only).
    pub primary: Option<String>,
}

/// The order of a rolling restart, from the group as last read. A group that is not Ready is
/// not touched: restarting a member of a group already short of one could cost it its majority.
pub fn plan_restart(group: &ReplicaGroup) -> Result<RestartPlan, CliError> {
    let name = group.name_any();
    let status = group.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        let why = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map_or_else(
                || "no Ready condition yet".to_owned(),
                |c| c.message.clone(),
            );
        return Err(CliError::NotReady { name, why });
    }
    let primary = match group.spec.mode {
        GroupMode::PrimaryBackup => status.primary.clone(),
        GroupMode::ActiveActive => None,
    };
    let mut first: Vec<String> = status
        .members
        .iter()
        .filter(|m| Some(&m.name) != primary.as_ref())
        .map(|m| m.name.clone())
        .collect();
    // Witnesses after members, each highest ordinal first.
    first.sort_by_key(|m| {
        let witness = status
            .members
            .iter()
            .any(|s| &s.name == m && s.role == MemberRole::Witness);
        let ordinal = m
            .rsplit_once('-')
            .and_then(|(_, o)| o.parse::<u32>().ok())
            .unwrap_or(0);
        (witness, std::cmp::Reverse(ordinal))
    });
    Ok(RestartPlan { first, primary })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn group(mode: &str, ready: &str, primary: Option<&str>) -> ReplicaGroup {
        let member = |name: &str, role: &str| json!({"name": name, "role": role, "healthy": true});
        serde_json::from_value(json!({
            "apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"mode": mode, "replicas": 3,
                "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
            "status": {"primary": primary, "replicas": 3,
                "conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": "db-2 is not healthy", "lastTransitionTime": "2026-12-07T10:00:00Z"}],
                "members": [member("db-0", "Backup"), member("db-1", "Primary"), member("db-2", "Backup"),
                            member("db-witness-0", "Witness")]},
        }))
        .expect("fixture group")
    }

    #[test]
    fn backups_then_witnesses_restart_first_and_the_primary_last() {
        let plan = plan_restart(&group("PrimaryBackup", "True", Some("db-1"))).expect("plan");
        assert_eq!(plan.first, ["db-2", "db-0", "db-witness-0"]);
        assert_eq!(plan.primary.as_deref(), Some("db-1"));
        let plan = plan_restart(&group("ActiveActive", "True", None)).expect("plan");
        assert_eq!(plan.primary, None);
        assert_eq!(plan.first.len(), 4);
    }

    #[test]
    fn a_group_that_is_not_ready_is_not_restarted() {
        let err =
            plan_restart(&group("PrimaryBackup", "False", Some("db-1"))).expect_err("refused");
        assert!(err.to_string().contains("db-2 is not healthy"), "{err}");
    }
}
