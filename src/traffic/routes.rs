//! Who gets traffic in a PrimaryBackup group.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::api::TrafficSpec;

use super::{MemberSignal, target_weights};

/// The three routes of a PrimaryBackup group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrimaryBackupRoutes {
    /// `NAME-rw`: the primary, only while its lease is live (its health is the lease's business:
    /// an unhealthy primary releases its lease). `None`: no member takes writes.
    pub rw: Option<String>,
    /// `NAME-ro`: every backup with its weight under the policy applied to the backups alone
    /// (the primary is never listed); weight 0 = not in the EndpointSlice.
    pub ro: BTreeMap<String, i32>,
    /// `NAME-r`: every member with a weight above 0 under the policy over all members.
    pub r: BTreeSet<String>,
}

/// The routes of a PrimaryBackup group. `primary` is the member named primary (if any),
/// `lease_live` whether its lease is live right now. Membership changes of these routes are
/// always immediate, so no hysteresis applies; to publish `ro` weights to a weighted route, run
/// [`super::decide`] over the backups instead.
pub fn primary_backup_routes(
    spec: &TrafficSpec,
    members: &[MemberSignal],
    primary: Option<&str>,
    lease_live: bool,
) -> PrimaryBackupRoutes {
    // A primary we do not know as a member has no endpoint to route to.
    let primary = primary.filter(|p| members.iter().any(|m| m.name == *p));
    let backups: Vec<MemberSignal> = members
        .iter()
        .filter(|m| Some(m.name.as_str()) != primary)
        .cloned()
        .collect();
    let all = target_weights(spec, members);
    PrimaryBackupRoutes {
        rw: primary.filter(|_| lease_live).map(str::to_owned),
        ro: target_weights(spec, &backups),
        r: all
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(n, _)| n)
            .collect(),
    }
}
