//! From the policy's target and what is published to what to publish now: drains and returns
//! at once, load-driven changes through hysteresis and dwell.

use std::collections::BTreeMap;

use crate::api::{MAX_WEIGHT, TrafficSpec};

use super::policy::target_weights;
use super::{Decision, MemberSignal, Published, WEIGHT_TOTAL, WeightReason};

/// Weights below this count as this when measuring a relative change (1 % of the total), so a
/// member at weight 1 moving to 2 is not a "100 % change".
pub(super) const HYSTERESIS_FLOOR: i32 = WEIGHT_TOTAL / 100;

/// The weights to publish at `now_ms`, given the members' current signals and what was last
/// published. See the module documentation for the rules.
pub fn decide(
    spec: &TrafficSpec,
    members: &[MemberSignal],
    published: &Published,
    now_ms: u64,
) -> Decision {
    let target = target_weights(spec, members);
    let publish = |reason| Decision {
        changed: target != published.weights,
        weights: target.clone(),
        reason,
    };

    let previous = &published.weights;
    // Weights we could not have published (out of bounds) are state we cannot trust: start over.
    let trusted = previous.values().all(|w| (0..=MAX_WEIGHT).contains(w));
    if !trusted || (previous.is_empty() && !target.is_empty()) {
        return publish(WeightReason::Initial);
    }
    if target == *previous {
        return publish(WeightReason::Unchanged);
    }
    let weight = |map: &BTreeMap<String, i32>, name: &str| map.get(name).copied().unwrap_or(0);
    if previous
        .iter()
        .any(|(n, w)| *w > 0 && weight(&target, n) == 0)
    {
        return publish(WeightReason::Drain);
    }
    if target
        .iter()
        .any(|(n, w)| *w > 0 && weight(previous, n) == 0)
    {
        return publish(WeightReason::Admit);
    }
    if !previous.keys().eq(target.keys()) {
        return publish(WeightReason::Membership);
    }
    if !spec.policy.load_driven() {
        return publish(WeightReason::Policy);
    }

    // Same members, same who-serves: only the load-driven split moved.
    let hold = |reason| Decision {
        weights: published.weights.clone(),
        changed: false,
        reason,
    };
    let min_change = i64::from(spec.min_change_percent.clamp(0, 100));
    if !target
        .iter()
        .any(|(n, w)| significant(weight(previous, n), *w, min_change))
    {
        return hold(WeightReason::Hysteresis);
    }
    let dwell = u64::try_from(spec.dwell_millis).unwrap_or(0);
    if let Some(elapsed) = published
        .changed_at_ms
        .and_then(|at| now_ms.checked_sub(at))
        && elapsed < dwell
    {
        return hold(WeightReason::Dwell {
            wait_ms: dwell - elapsed,
        });
    }
    publish(WeightReason::Signal)
}

/// `new` differs from `old` by at least `min_change_percent` % of `old` (floored at
/// `HYSTERESIS_FLOOR`). Integer math: exact at the boundary, no overflow (|Δ| ≤ 10⁶, base ≤ 10⁶).
pub(super) fn significant(old: i32, new: i32, min_change_percent: i64) -> bool {
    let delta = (i64::from(new) - i64::from(old)).abs();
    let base = i64::from(old.max(HYSTERESIS_FLOOR));
    delta > 0 && delta * 100 >= min_change_percent * base
}
