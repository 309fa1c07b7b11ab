//! The policies' targets: the weights each policy wants right now, before hysteresis.

use std::collections::BTreeMap;

use crate::api::{MAX_WEIGHT, TrafficPolicy, TrafficSpec};

use super::{MemberSignal, WEIGHT_TOTAL};

/// Loads and latencies above this count as this, so that sums and means stay finite.
pub(super) const SIGNAL_CAP: f64 = 1e12;
/// Floor of the smoothing term: if every report is (nearly) 0, all members are equally idle
/// instead of dividing by zero.
const MIN_EPSILON: f64 = 1e-9;

/// A member after merging duplicate entries.
struct Member {
    serving: bool,
    load: Option<f64>,
    latency: Option<f64>,
}

/// The weights `spec.traffic.policy` wants for `members` now: one entry per member (duplicate
/// names merged: serving only if every entry says so), 0 for every member that is not serving,
/// and at least one weight above 0 whenever a member is serving. See the module documentation
/// for the formulas.
pub fn target_weights(spec: &TrafficSpec, members: &[MemberSignal]) -> BTreeMap<String, i32> {
    let merged = merge(members);
    let serving: Vec<(&str, &Member)> = merged
        .iter()
        .filter(|(_, m)| m.serving)
        .map(|(n, m)| (*n, m))
        .collect();
    let names: Vec<&str> = serving.iter().map(|(n, _)| *n).collect();

    let computed = match spec.policy {
        TrafficPolicy::Equal => equal(&names),
        // Verbatim; never black-hole traffic while someone serves: fall back to Equal.
        TrafficPolicy::Static => {
            let declared: Vec<(&str, i32)> =
                names.iter().map(|n| (*n, declared(spec, n))).collect();
            if declared.iter().any(|(_, w)| *w > 0) {
                declared
            } else {
                equal(&names)
            }
        }
        TrafficPolicy::WeightedRoundRobin => {
            let capacities = names
                .iter()
                .map(|n| (*n, f64::from(declared(spec, n))))
                .collect();
            proportional(capacities).unwrap_or_else(|| equal(&names))
        }
        TrafficPolicy::LeastLoaded => inverse(serving.iter().map(|(n, m)| (*n, m.load)).collect()),
        TrafficPolicy::LatencyAware => {
            inverse(serving.iter().map(|(n, m)| (*n, m.latency)).collect())
        }
    };

    let mut out: BTreeMap<String, i32> = merged.keys().map(|n| ((*n).to_owned(), 0)).collect();
    out.extend(computed.into_iter().map(|(n, w)| (n.to_owned(), w)));
    out
}

/// A usable report: NaN and negative values are unknown (a broken agent must not attract or
/// repel traffic), huge ones saturate.
pub(super) fn known(value: Option<f64>) -> Option<f64> {
    let v = value?;
    if v.is_nan() || v < 0.0 {
        None
    } else {
        Some(v.min(SIGNAL_CAP))
    }
}

fn merge(members: &[MemberSignal]) -> BTreeMap<&str, Member> {
    let mut merged: BTreeMap<&str, Member> = BTreeMap::new();
    for m in members {
        let entry = merged.entry(m.name.as_str()).or_insert(Member {
            serving: true,
            load: None,
            latency: None,
        });
        // Conflicting reports about one member: the safe reading is "drain it".
        entry.serving &= m.serving();
        entry.load = entry.load.or(known(m.load));
        entry.latency = entry.latency.or(known(m.latency_ms));
    }
    merged
}

/// The declared weight, clamped to the Gateway API bounds (the schema already enforces them;
/// this keeps the math total on any input).
fn declared(spec: &TrafficSpec, name: &str) -> i32 {
    spec.weights
        .get(name)
        .copied()
        .unwrap_or(0)
        .clamp(0, MAX_WEIGHT)
}

fn equal<'a>(names: &[&'a str]) -> Vec<(&'a str, i32)> {
    proportional(names.iter().map(|n| (*n, 1.0)).collect()).unwrap_or_default()
}

/// `w ∝ 1 / (x + mean x)` over the members that report; the others get the mean raw weight.
fn inverse(values: Vec<(&str, Option<f64>)>) -> Vec<(&str, i32)> {
    let known: Vec<f64> = values.iter().filter_map(|(_, v)| *v).collect();
    let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
    if known.is_empty() {
        return equal(&names);
    }
    let count = known.len() as f64;
    // Smoothing by the mean: scale-free (the unit of load does not matter) and bounds an idle
    // member at twice the weight of an average one, so a new member is not flooded.
    let epsilon = (known.iter().sum::<f64>() / count).max(MIN_EPSILON);
    let raw = |x: f64| 1.0 / (x + epsilon);
    let mean_raw = known.iter().map(|x| raw(*x)).sum::<f64>() / count;
    let raws = values
        .iter()
        .map(|(n, v)| (*n, v.map_or(mean_raw, raw)))
        .collect();
    proportional(raws).unwrap_or_else(|| equal(&names))
}

/// Scale non-negative raw weights to `WEIGHT_TOTAL`. Rounds each to nearest (monotone and
/// symmetric: equal inputs give equal weights, a larger input never a smaller weight) and
/// gives every non-zero share at least 1. `None` when nothing is above 0.
fn proportional(raw: Vec<(&str, f64)>) -> Option<Vec<(&str, i32)>> {
    let sum: f64 = raw.iter().map(|(_, r)| *r).filter(|r| *r > 0.0).sum();
    if !(sum > 0.0 && sum.is_finite()) {
        return None;
    }
    let total = f64::from(WEIGHT_TOTAL);
    Some(
        raw.into_iter()
            .map(|(n, r)| {
                if r > 0.0 {
                    // `as` saturates (and maps NaN to 0), so no input can overflow here.
                    let w = (r / sum * total).round() as i32;
                    (n, w.clamp(1, MAX_WEIGHT))
                } else {
                    (n, 0)
                }
            })
            .collect(),
    )
}
