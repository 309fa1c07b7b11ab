//! Traffic weights: how a group's traffic is split over its members.
//!
//! Quorate does not balance requests itself. It computes one **weight** per member and publishes
//! it; the data plane (a Gateway API implementation, kube-proxy) does the per-request balancing:
//!
//! * as the `weight` of each member's `backendRef` in the group's Gateway API `HTTPRoute`
//!   (when `spec.traffic.gateway` is set),
//! * as the `quorate.dev/weight` annotation on each member's Service,
//! * and a member with weight 0 is left out of the `NAME-r` EndpointSlice (it is *drained*).
//!
//! A member receives roughly `its weight / sum of all weights` of the requests.
//!
//! This module is the weight math only: pure functions, no IO, no clock (the caller passes the
//! time in). The operator calls [`decide`] on every reconcile and whenever a member's reported
//! load or latency changes.
//!
//! # Who gets traffic
//!
//! A member is **serving** when it is healthy (its agent's health check passes) and not draining
//! (it is not about to be removed by a scale-down). Only serving members ever get a weight above
//! 0. Whenever at least one member is serving, at least one weight is above 0: Quorate never
//! sends all traffic into the void while a healthy member exists.
//!
//! # Scale
//!
//! `Static` publishes your numbers as they are. Every other policy publishes weights that add up
//! to [`WEIGHT_TOTAL`] (10 000) over the serving members, up to rounding (at most one unit per
//! member), so a weight reads as a share in hundredths of a percent: 2500 is 25 %. A serving
//! member whose share is not zero gets at least 1 (rounding never drains a member), and no
//! weight is ever above 1 000 000, the Gateway API limit.
//!
//! # Policies (`spec.traffic.policy`)
//!
//! * **`Equal`** (default): round robin. Every serving member gets the same weight,
//!   `10000 / serving members`.
//! * **`Static`**: the weights in `spec.traffic.weights`, published exactly as declared. Members
//!   not listed get 0; a listed member that is unhealthy or draining gets 0 and the others keep
//!   their numbers, so they share its traffic in proportion. If that leaves no serving member
//!   with a weight above 0 (every member you gave weight is down), the serving members share the
//!   traffic equally until one of yours is back.
//! * **`WeightedRoundRobin`**: the weights in `spec.traffic.weights` as relative capacities.
//!   Quorate rescales them over the serving members so that they always add up to 10 000: with
//!   `{a: 60, b: 30, c: 10}` the published weights are 6000/3000/1000, and while `b` is down
//!   8571/0/1429. The split between the members is the same as with `Static`; the difference is
//!   that the published numbers keep a constant total (a member's weight is its share), which
//!   keeps the group's share constant when your HTTPRoute rule also holds backends of your own.
//!   Unlisted members get 0, with the same fallback to equal weights as `Static`.
//! * **`LeastLoaded`**: from the load each member's agent reports (any unit, for example active
//!   requests or CPU): `weight ∝ 1 / (load + mean load)`, where the mean is taken over the
//!   serving members that report. A member at the mean load gets half the weight of an idle one,
//!   one at 3× the mean a quarter; an idle member never gets more than twice the weight of a
//!   member at the mean, so a freshly started member is not flooded. Only ratios of loads
//!   matter: multiplying every load by the same factor changes nothing. Members that report no
//!   load (or a negative or not-a-number value) get the average weight of those that do; if no
//!   one reports, weights are equal. Very large loads count as 10¹².
//! * **`LatencyAware`**: the same formula with each member's reported response time in
//!   milliseconds: `weight ∝ 1 / (latency + mean latency)`.
//!
//! A member with a lower load (or latency) never gets a lower weight than one with a higher.
//!
//! # Knobs against flapping (`LeastLoaded` and `LatencyAware` only)
//!
//! Reported load and latency are noisy, and every weight change costs the data plane a
//! reconfiguration. A new set of load-driven weights is published only when both hold:
//!
//! * **`minChangePercent`** (default 10): some member's weight moves by at least this percentage
//!   of its currently published weight. Weights below 1 % of the total (100) count as 100 here,
//!   so that members with tiny weights do not cause churn (100 → 110 is a 10 % change, and so
//!   is 5 → 15).
//! * **`dwellMillis`** (default 2000): at least this long has passed since the last published
//!   change.
//!
//! Changes are measured against what is published, not against the previous computation, so a
//! slow drift adds up and is published once it reaches the threshold. When a change is
//! published, all weights jump to the policy's current target at once.
//!
//! These never delay:
//!
//! * the first weights of a group,
//! * draining: a member that becomes unhealthy, starts draining or disappears goes to 0 at once,
//! * a member that becomes serving (new, or healthy again) gets its weight at once,
//! * any change of `Equal`, `Static` and `WeightedRoundRobin` weights (they only change when you
//!   edit the spec or when health changes).
//!
//! **Convergence:** when loads change and then stay put, the published weights change at most
//! once more: at the first decision at least `dwellMillis` after the previous change. With the
//! operator deciding at least every `dwellMillis`, the weights are final within two decisions
//! (at most two dwell intervals) and equal the policy's target, unless the whole change is below
//! `minChangePercent`, in which case nothing changes at all.
//!
//! # PrimaryBackup groups
//!
//! [`primary_backup_routes`]: `NAME-rw` routes to the primary only, and only while its lease is
//! live; `NAME-ro` to the serving backups, weighted by the policy applied to the backups alone;
//! `NAME-r` to every serving member with a weight above 0 under the policy. With no serving
//! backup `NAME-ro` is empty (reads are never silently moved to the primary; use `NAME-r` for
//! "any member").

mod decide;
mod policy;
mod routes;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use decide::decide;
pub use policy::target_weights;
pub use routes::{PrimaryBackupRoutes, primary_backup_routes};

/// What the computed policies' weights add up to (up to rounding): weights read as hundredths of
/// a percent. Far finer than any data plane's split accuracy, and readable.
pub const WEIGHT_TOTAL: i32 = 10_000;

/// What the operator knows about one member when it decides weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberSignal {
    /// Member name, `NAME-<ordinal>`; the key of every weight map.
    pub name: String,
    /// The agent's health check of the workload passes.
    pub healthy: bool,
    /// About to be removed (scale-down): drained to 0 before it goes.
    pub draining: bool,
    /// Reported load, any unit (LeastLoaded). NaN, negative or missing: unknown.
    pub load: Option<f64>,
    /// Reported response time in milliseconds (LatencyAware). NaN, negative or missing: unknown.
    pub latency_ms: Option<f64>,
}

impl MemberSignal {
    /// Healthy and not draining: may get a weight above 0.
    pub fn serving(&self) -> bool {
        self.healthy && !self.draining
    }
}

/// What was last published, as the operator keeps it (status / annotations).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// Member name to published weight. Empty: nothing published yet.
    pub weights: BTreeMap<String, i32>,
    /// When those weights were published (milliseconds, same clock as `now_ms`). Unknown or in
    /// the future (clock skew between operator replicas): the dwell time counts as passed, so a
    /// lost or bogus timestamp can never freeze the weights.
    pub changed_at_ms: Option<u64>,
}

impl Published {
    /// The state after the operator has published `decision` at `now_ms`: unchanged when the
    /// decision changed nothing, so the dwell clock keeps running from the last real change.
    pub fn after(&self, decision: &Decision, now_ms: u64) -> Published {
        if decision.changed {
            Published {
                weights: decision.weights.clone(),
                changed_at_ms: Some(now_ms),
            }
        } else {
            self.clone()
        }
    }
}

/// The weights to publish now, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// One entry per member (duplicates merged), every value in `0..=MAX_WEIGHT`.
    pub weights: BTreeMap<String, i32>,
    /// `weights` differ from what was published: write them, then record the time.
    pub changed: bool,
    pub reason: WeightReason,
}

impl Decision {
    /// Members with a weight above 0: the `NAME-r` EndpointSlice.
    pub fn serving(&self) -> impl Iterator<Item = &str> {
        self.weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(n, _)| n.as_str())
    }
}

/// Why a [`Decision`] is what it is. Published at once: `Initial`, `Drain`, `Admit`,
/// `Membership`, `Policy`, `Signal`. Nothing to do: `Unchanged`. Held back (the previous weights
/// stay): `Hysteresis`, `Dwell`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum WeightReason {
    /// Nothing (valid) was published before.
    Initial,
    /// A member lost its traffic: unhealthy, draining, removed, or its declared weight went to 0.
    Drain,
    /// A member gained traffic: new, healthy again, or its declared weight went above 0.
    Admit,
    /// Members came or went that carry no traffic either way (for example a new member that is
    /// not healthy yet); no split changed.
    Membership,
    /// `Equal`, `Static` or `WeightedRoundRobin` weights changed (spec edited): never held.
    Policy,
    /// Reported load or latency moved a weight past `minChangePercent` after the dwell time.
    Signal,
    /// The published weights are the policy's target.
    Unchanged,
    /// Held: the load-driven target differs, but no member's weight would move by
    /// `minChangePercent`.
    Hysteresis,
    /// Held: the change is large enough, but the last change was less than `dwellMillis` ago.
    /// Decide again in `wait_ms`.
    Dwell { wait_ms: u64 },
}
