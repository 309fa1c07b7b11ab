//! Property tests: bounds, drains, monotonicity, no flapping under noise, convergence.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::decide::significant;
use super::policy::known;
use super::tests::spec;
use super::*;
use crate::api::{MAX_WEIGHT, TrafficPolicy, TrafficSpec};

fn policy() -> impl Strategy<Value = TrafficPolicy> {
    prop_oneof![
        Just(TrafficPolicy::Equal),
        Just(TrafficPolicy::Static),
        Just(TrafficPolicy::WeightedRoundRobin),
        Just(TrafficPolicy::LeastLoaded),
        Just(TrafficPolicy::LatencyAware),
    ]
}

/// Any report, including the hostile ones.
fn signal() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        (0.0..1e4f64).prop_map(Some),
        any::<f64>().prop_map(Some),
        Just(Some(f64::NAN)),
        Just(Some(f64::INFINITY)),
        Just(Some(-1.0)),
        Just(Some(0.0)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    (0..10u32).prop_map(|i| format!("m-{i}"))
}

fn member() -> impl Strategy<Value = MemberSignal> {
    (
        name(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        signal(),
        signal(),
    )
        .prop_map(|(name, healthy, draining, load, latency_ms)| MemberSignal {
            name,
            healthy,
            draining,
            load,
            latency_ms,
        })
}

fn weight() -> impl Strategy<Value = i32> {
    prop_oneof![0..=10_000i32, 0..=MAX_WEIGHT, any::<i32>()]
}

fn any_spec() -> impl Strategy<Value = TrafficSpec> {
    (
        policy(),
        prop::collection::btree_map(name(), weight(), 0..6),
        prop_oneof![0..=100i32, any::<i32>()],
        prop_oneof![0..=600_000i32, any::<i32>()],
    )
        .prop_map(
            |(policy, weights, min_change_percent, dwell_millis)| TrafficSpec {
                policy,
                weights,
                min_change_percent,
                dwell_millis,
                gateway: None,
            },
        )
}

fn any_published() -> impl Strategy<Value = Published> {
    (
        prop::collection::btree_map(name(), weight(), 0..8),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(weights, changed_at_ms)| Published {
            weights,
            changed_at_ms,
        })
}

/// Member names mapped to "serving", with duplicates merged the way the policy does.
fn serving_by_name(members: &[MemberSignal]) -> BTreeMap<&str, bool> {
    let mut out: BTreeMap<&str, bool> = BTreeMap::new();
    for m in members {
        *out.entry(m.name.as_str()).or_insert(true) &= m.serving();
    }
    out
}

/// Distinct members with the given health and signal (load or latency, per policy).
fn members_with(
    policy: TrafficPolicy,
    signals: &[Option<f64>],
    healthy: &[bool],
) -> Vec<MemberSignal> {
    signals
        .iter()
        .zip(healthy)
        .enumerate()
        .map(|(i, (s, h))| MemberSignal {
            name: format!("m-{i:02}"),
            healthy: *h,
            draining: false,
            load: if policy == TrafficPolicy::LeastLoaded {
                *s
            } else {
                None
            },
            latency_ms: if policy == TrafficPolicy::LatencyAware {
                *s
            } else {
                None
            },
        })
        .collect()
}

fn load_policy() -> impl Strategy<Value = TrafficPolicy> {
    prop_oneof![
        Just(TrafficPolicy::LeastLoaded),
        Just(TrafficPolicy::LatencyAware)
    ]
}

proptest! {
    /// Any input at all: bounds, one entry per member, drained members at 0, someone serving
    /// whenever someone can, held decisions keep exactly what is published.
    #[test]
    fn decisions_are_bounded_and_never_black_hole(
        s in any_spec(),
        members in prop::collection::vec(member(), 0..12),
        arbitrary in any_published(),
        same_members in any::<bool>(),
        published_values in prop::collection::vec(prop_oneof![Just(0), 1..=10_000i32], 12),
        now in any::<u64>(),
        ago in 0..700_000u64,
    ) {
        // Half the cases: published weights for exactly these members, changed moments ago,
        // so that hysteresis and dwell would hold (the paths where a drain could get stuck).
        let p = if same_members {
            let weights = serving_by_name(&members).keys().zip(&published_values).map(|(n, w)| ((*n).to_owned(), *w)).collect();
            Published { weights, changed_at_ms: Some(now.saturating_sub(ago)) }
        } else {
            arbitrary
        };
        let d = decide(&s, &members, &p, now);
        let serving = serving_by_name(&members);
        prop_assert!(d.weights.keys().map(String::as_str).eq(serving.keys().copied()));
        let declared = |n: &str| s.weights.get(n).copied().unwrap_or(0).clamp(0, MAX_WEIGHT);
        let declared_serves = serving.iter().any(|(n, s)| *s && declared(n) > 0);
        for (n, w) in &d.weights {
            prop_assert!((0..=MAX_WEIGHT).contains(w), "{n}: {w}");
            if !serving[n.as_str()] {
                prop_assert_eq!(*w, 0, "{} is unhealthy or draining", n);
                continue;
            }
            match s.policy {
                TrafficPolicy::Equal | TrafficPolicy::LeastLoaded | TrafficPolicy::LatencyAware => {
                    prop_assert!(*w > 0, "{} serves but got 0", n);
                }
                TrafficPolicy::Static if declared_serves => prop_assert_eq!(*w, declared(n)),
                TrafficPolicy::WeightedRoundRobin if declared(n) > 0 => prop_assert!(*w > 0, "{} has capacity but got 0", n),
                _ => {}
            }
        }
        if serving.values().any(|s| *s) {
            prop_assert!(d.weights.values().any(|w| *w > 0), "black hole: {:?}", d);
        }
        prop_assert_eq!(d.changed, d.weights != p.weights);
        if matches!(d.reason, WeightReason::Hysteresis | WeightReason::Dwell { .. }) {
            prop_assert_eq!(&d.weights, &p.weights);
        }
    }

    /// Deciding again with what was just published never changes anything (no self-flapping).
    #[test]
    fn a_second_decision_on_the_same_inputs_changes_nothing(
        s in any_spec(),
        members in prop::collection::vec(member(), 0..12),
        p in any_published(),
        now in any::<u64>(),
        later in 0..1_000_000u64,
    ) {
        let d = decide(&s, &members, &p, now);
        let p = p.after(&d, now);
        let again = decide(&s, &members, &p, now.saturating_add(later));
        prop_assert!(!again.changed, "{:?} then {:?}", d, again);
    }

    /// Computed policies (all but Static) add up to WEIGHT_TOTAL, off by less than one unit per
    /// serving member.
    #[test]
    fn computed_weights_add_up_to_the_total(
        s in any_spec().prop_filter("computed", |s| s.policy != TrafficPolicy::Static),
        members in prop::collection::vec(member(), 1..12),
    ) {
        let w = target_weights(&s, &members);
        let n = w.values().filter(|w| **w > 0).count() as i64;
        if n > 0 {
            let sum: i64 = w.values().map(|w| i64::from(*w)).sum();
            prop_assert!((sum - i64::from(WEIGHT_TOTAL)).abs() <= n, "sum {} over {} members", sum, n);
        }
    }

    /// Lower load (latency) never gets a lower weight than higher load (latency).
    #[test]
    fn less_loaded_members_never_get_less(
        policy in load_policy(),
        signals in prop::collection::vec(signal(), 1..12),
        healthy in prop::collection::vec(prop::bool::weighted(0.8), 12),
    ) {
        let members = members_with(policy, &signals, &healthy);
        let w = target_weights(&spec(policy), &members);
        let initial = decide(&spec(policy), &members, &Published::default(), 0);
        prop_assert_eq!(&initial.weights, &w);
        for a in members.iter().filter(|m| m.serving()) {
            for b in members.iter().filter(|m| m.serving()) {
                let (sa, sb) = match policy {
                    TrafficPolicy::LeastLoaded => (known(a.load), known(b.load)),
                    _ => (known(a.latency_ms), known(b.latency_ms)),
                };
                if let (Some(x), Some(y)) = (sa, sb)
                    && x < y
                {
                    prop_assert!(w[&a.name] >= w[&b.name], "{}={} got {}, {}={} got {}", a.name, x, w[&a.name], b.name, y, w[&b.name]);
                }
            }
        }
    }

    /// Only ratios of loads matter: scaling every report by the same factor keeps the weights
    /// (up to one unit of rounding).
    #[test]
    fn load_units_do_not_matter(
        policy in load_policy(),
        signals in prop::collection::vec(prop::option::of(1e-3..1e6f64), 1..12),
        factor in 1e-3..1e3f64,
    ) {
        let all = vec![true; signals.len()];
        let scaled: Vec<Option<f64>> = signals.iter().map(|s| s.map(|x| x * factor)).collect();
        let a = target_weights(&spec(policy), &members_with(policy, &signals, &all));
        let b = target_weights(&spec(policy), &members_with(policy, &scaled, &all));
        for (n, w) in &a {
            prop_assert!((w - b[n]).abs() <= 1, "{}: {} vs {}", n, w, b[n]);
        }
    }

    /// Static with every member healthy publishes the declared weights exactly.
    #[test]
    fn static_with_all_healthy_is_verbatim(
        declared in prop::collection::vec(0..=MAX_WEIGHT, 1..12),
        first_positive in 1..=MAX_WEIGHT,
    ) {
        let mut declared = declared;
        declared[0] = first_positive;
        let weights: BTreeMap<String, i32> = declared.iter().enumerate().map(|(i, w)| (format!("m-{i:02}"), *w)).collect();
        let s = TrafficSpec { weights: weights.clone(), ..spec(TrafficPolicy::Static) };
        let members = members_with(TrafficPolicy::Static, &vec![None; declared.len()], &vec![true; declared.len()]);
        prop_assert_eq!(target_weights(&s, &members), weights);
    }

    /// WeightedRoundRobin keeps the declared proportions of the serving members to one unit,
    /// and rounding never drains a member with capacity (mixes tiny and huge capacities).
    #[test]
    fn weighted_round_robin_keeps_proportions(
        declared in prop::collection::vec(prop_oneof![0..=3i32, 0..=MAX_WEIGHT], 1..12),
        healthy in prop::collection::vec(prop::bool::weighted(0.7), 12),
    ) {
        let weights: BTreeMap<String, i32> = declared.iter().enumerate().map(|(i, w)| (format!("m-{i:02}"), *w)).collect();
        let s = TrafficSpec { weights: weights.clone(), ..spec(TrafficPolicy::WeightedRoundRobin) };
        let members = members_with(TrafficPolicy::WeightedRoundRobin, &vec![None; declared.len()], &healthy);
        let w = target_weights(&s, &members);
        let capacity: f64 = members.iter().filter(|m| m.serving()).map(|m| f64::from(weights[&m.name])).sum();
        if capacity > 0.0 {
            for m in members.iter().filter(|m| m.serving()) {
                let ideal = f64::from(weights[&m.name]) / capacity * f64::from(WEIGHT_TOTAL);
                prop_assert!((f64::from(w[&m.name]) - ideal).abs() <= 1.0, "{}: {} vs {}", m.name, w[&m.name], ideal);
                prop_assert_eq!(w[&m.name] > 0, weights[&m.name] > 0, "{}", m.name);
            }
        }
    }

    /// Noise that moves every report by at most minChangePercent/4 % never changes the published
    /// weights, however long it goes on. (Such noise moves a share by at most
    /// (1+δ)/(1−δ) − 1 ≈ 2δ = minChangePercent/2 %, plus 1 % of rounding on the floored base.)
    #[test]
    fn noise_below_the_threshold_never_changes_weights(
        policy in load_policy(),
        base in prop::collection::vec(prop::option::of(1.0..1000.0f64), 1..12),
        min_change in 10..=100i32,
        dwell in 0..=10_000i32,
        start in 0..1_000_000_000u64,
        noise in prop::collection::vec(prop::collection::vec(-1.0..=1.0f64, 12), 1..12),
    ) {
        let s = TrafficSpec { min_change_percent: min_change, dwell_millis: dwell, ..spec(policy) };
        let all = vec![true; base.len()];
        let delta = f64::from(min_change) / 400.0;
        let first = decide(&s, &members_with(policy, &base, &all), &Published::default(), start);
        let mut p = Published::default().after(&first, start);
        let mut now = start;
        for round in &noise {
            now += u64::try_from(dwell).unwrap_or(0) + 1;
            let noisy: Vec<Option<f64>> = base.iter().zip(round).map(|(b, u)| b.map(|x| x * (1.0 + delta * u))).collect();
            let d = decide(&s, &members_with(policy, &noisy, &all), &p, now);
            prop_assert!(!d.changed, "noise {:?} changed {:?} to {:?}", noisy, p.weights, d);
            p = p.after(&d, now);
        }
    }

    /// After a step change in load, with a decision every dwell interval: at most one change,
    /// made by the second decision at the latest, after which the published weights are the
    /// policy's target (or, if the whole step was below minChangePercent, nothing changed).
    #[test]
    fn a_step_change_converges_within_two_decisions(
        policy in load_policy(),
        before in prop::collection::vec(prop::option::of(0.0..1e4f64), 1..12),
        after in prop::collection::vec(prop::option::of(0.0..1e4f64), 12),
        healthy in prop::collection::vec(prop::bool::weighted(0.8), 12),
        min_change in 0..=100i32,
        dwell in 0..=60_000i32,
        start in 0..1_000_000_000_000u64,
        first_offset in 0..=120_000u64,
    ) {
        let s = TrafficSpec { min_change_percent: min_change, dwell_millis: dwell, ..spec(policy) };
        let n = before.len();
        let old = members_with(policy, &before, &healthy[..n]);
        let new = members_with(policy, &after[..n], &healthy[..n]);
        let first = decide(&s, &old, &Published::default(), start);
        let mut p = Published::default().after(&first, start);

        let target = target_weights(&s, &new);
        let mut now = start + first_offset;
        let mut changes = Vec::new();
        for step in 0..6 {
            let d = decide(&s, &new, &p, now);
            if d.changed {
                changes.push(step);
                // Same members, same health: a load-driven change, which waits out the dwell.
                prop_assert_eq!(d.reason, WeightReason::Signal);
                let since = now - p.changed_at_ms.unwrap_or(0);
                prop_assert!(since >= u64::try_from(dwell).unwrap_or(0), "changed {}ms after the last change", since);
            }
            p = p.after(&d, now);
            now += u64::try_from(dwell).unwrap_or(0);
        }
        prop_assert!(changes.len() <= 1 && changes.iter().all(|step| *step <= 1), "changes at {:?}", changes);
        if p.weights != target {
            prop_assert!(changes.is_empty());
            for (n, w) in &target {
                prop_assert!(!significant(p.weights[n], *w, i64::from(min_change)), "{} held at {} vs {}", n, p.weights[n], w);
            }
        }
    }

    /// PrimaryBackup: writes only to a live primary, reads never to the primary, `r` only to
    /// serving members, and someone serves reads whenever a backup can.
    #[test]
    fn primary_backup_routes_follow_lease_and_health(
        s in any_spec(),
        members in prop::collection::vec(member(), 0..12),
        primary in prop::option::of(name()),
        lease_live in any::<bool>(),
    ) {
        let r = primary_backup_routes(&s, &members, primary.as_deref(), lease_live);
        let serving = serving_by_name(&members);
        if let Some(rw) = &r.rw {
            prop_assert!(lease_live && Some(rw) == primary.as_ref() && serving.contains_key(rw.as_str()));
        }
        prop_assert!(primary.as_ref().is_none_or(|p| !r.ro.contains_key(p)));
        let names: BTreeSet<&str> = serving.iter().filter(|(_, s)| **s).map(|(n, _)| *n).collect();
        prop_assert!(r.r.iter().all(|n| names.contains(n.as_str())));
        prop_assert!(r.ro.iter().all(|(n, w)| (0..=MAX_WEIGHT).contains(w) && (*w == 0 || names.contains(n.as_str()))));
        if names.iter().any(|n| Some(*n) != primary.as_deref()) {
            prop_assert!(r.ro.values().any(|w| *w > 0));
        }
        if !names.is_empty() {
            prop_assert!(!r.r.is_empty());
        }
    }
}
