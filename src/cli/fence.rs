//! The pure parts of `fence` and `unfence`: the checks, the merge patch of
//! `spec.fencedMembers`, and the condition the wait looks for.

use kube::ResourceExt;
use serde_json::{Value, json};

use super::CliError;
use super::switchover::{member_ordinal, member_range};
use crate::api::{MemberRole, ReplicaGroup};
use crate::plan::fence_leaves_a_candidate;

/// Checks `fence` (`fenced`) or `unfence` of `member` against the group as last read: the member
/// must be `NAME-<ordinal>` below spec.replicas, and fencing must leave another healthy,
/// unfenced member to take over (the rule the operator applies too). `Ok(false)`: nothing to do.
pub fn check_fence(group: &ReplicaGroup, member: &str, fenced: bool) -> Result<bool, CliError> {
    let name = group.name_any();
    let namespace = group.namespace().unwrap_or_default();
    let replicas = group.spec.replicas;
    if member_ordinal(&name, member).is_none_or(|o| i64::from(o) >= i64::from(replicas)) {
        return Err(CliError::NoSuchMember {
            name,
            namespace,
            member: member.to_owned(),
            members: member_range(&group.name_any(), replicas),
        });
    }
    let listed = group.spec.fenced_members.iter().any(|m| m == member);
    if listed == fenced {
        return Ok(false);
    }
    if fenced {
        let members = group
            .status
            .as_ref()
            .map(|s| s.members.as_slice())
            .unwrap_or_default();
        let takers = members
            .iter()
            .filter(|m| m.voter && m.healthy && !m.fenced && m.role != MemberRole::Witness)
            .map(|m| m.name.as_str());
        fence_leaves_a_candidate(member, takers).map_err(|why| CliError::FenceRefused {
            name,
            namespace,
            why,
        })?;
    }
    Ok(true)
}

/// The merge patch that adds `member` to (or removes it from) `spec.fencedMembers`, conditional
/// on the group's resourceVersion: a concurrent change of the list fails with a conflict
/// instead of being overwritten.
pub fn fence_patch(group: &ReplicaGroup, member: &str, fenced: bool) -> Value {
    let mut list: Vec<String> = group
        .spec
        .fenced_members
        .iter()
        .filter(|m| *m != member)
        .cloned()
        .collect();
    if fenced {
        list.push(member.to_owned());
    }
    json!({
        "metadata": { "resourceVersion": group.resource_version() },
        "spec": { "fencedMembers": list },
    })
}

/// Whether the group's status shows `member` fenced (`fenced`) or not, and, when fenced, no
/// longer the primary.
pub fn fence_done(group: &ReplicaGroup, member: &str, fenced: bool) -> bool {
    let Some(status) = &group.status else {
        return false;
    };
    let shown = status
        .members
        .iter()
        .any(|m| m.name == member && m.fenced == fenced);
    shown && (!fenced || status.primary.as_deref() != Some(member))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(fenced: &[&str], members: &[(&str, &str, bool, bool)]) -> ReplicaGroup {
        let members: Vec<Value> = members
            .iter()
            .map(|(name, role, healthy, is_fenced)| {
                json!({"name": name, "role": role, "healthy": healthy, "voter": true,
                       "weight": 0, "fenced": is_fenced})
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup",
            "metadata": {"name": "cache", "namespace": "shop", "resourceVersion": "42"},
            "spec": {"mode": "PrimaryBackup", "replicas": 3, "fencedMembers": fenced,
                     "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}},
            "status": {"primary": "cache-0", "members": members},
        }))
        .expect("fixture group")
    }

    const HEALTHY: &[(&str, &str, bool, bool)] = &[
        ("cache-0", "Primary", true, false),
        ("cache-1", "Backup", true, false),
        ("cache-2", "Backup", true, false),
    ];

    #[test]
    fn only_members_of_the_group_can_be_fenced() {
        let g = group(&[], HEALTHY);
        for bad in ["cache-3", "cache-01", "other-1", "cache-witness-0"] {
            let e = check_fence(&g, bad, true).expect_err(bad).to_string();
            assert!(
                e.contains("replicagroup \"cache\" in namespace \"shop\"")
                    && e.contains("cache-0 to cache-2"),
                "{e}"
            );
        }
        assert!(check_fence(&g, "cache-1", true).is_ok_and(|todo| todo));
        assert!(check_fence(&g, "cache-1", false).is_ok_and(|todo| !todo));
    }

    #[test]
    fn fencing_the_only_healthy_member_is_refused_with_the_reason() {
        let g = group(
            &["cache-1"],
            &[
                ("cache-0", "Primary", true, false),
                ("cache-1", "Backup", true, true),
                ("cache-2", "Backup", false, false),
            ],
        );
        let e = check_fence(&g, "cache-0", true).expect_err("only healthy member");
        let e = e.to_string();
        assert!(
            e.contains("cache-0") && e.contains("no healthy, unfenced member"),
            "{e}"
        );
        // Unfencing is always allowed.
        assert!(check_fence(&g, "cache-1", false).is_ok_and(|todo| todo));
    }

    #[test]
    fn the_patch_is_conditional_and_keeps_the_other_entries() {
        let g = group(&["cache-2"], HEALTHY);
        assert_eq!(
            fence_patch(&g, "cache-1", true),
            json!({"metadata": {"resourceVersion": "42"},
                   "spec": {"fencedMembers": ["cache-2", "cache-1"]}})
        );
        assert_eq!(
            fence_patch(&g, "cache-2", false),
            json!({"metadata": {"resourceVersion": "42"}, "spec": {"fencedMembers": []}})
        );
    }

    #[test]
    fn done_once_the_status_shows_the_fence_and_another_primary() {
        let g = group(&["cache-0"], HEALTHY);
        assert!(!fence_done(&g, "cache-0", true));
        let g = group(
            &["cache-0"],
            &[
                ("cache-0", "Primary", true, true),
                ("cache-1", "Backup", true, false),
            ],
        );
        assert!(!fence_done(&g, "cache-0", true), "still the primary");
        let mut g = g;
        if let Some(s) = g.status.as_mut() {
            s.primary = Some("cache-1".into());
        }
        assert!(fence_done(&g, "cache-0", true));
        assert!(fence_done(&group(&[], HEALTHY), "cache-2", false));
    }
}
