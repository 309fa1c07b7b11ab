//! Unit and snapshot tests with concrete numbers.

use std::collections::BTreeMap;

use serde::Serialize;

use super::*;
use crate::api::{MAX_WEIGHT, TrafficPolicy, TrafficSpec};

pub(super) fn spec(policy: TrafficPolicy) -> TrafficSpec {
    TrafficSpec {
        policy,
        ..TrafficSpec::default()
    }
}

fn declared(policy: TrafficPolicy, weights: &[(&str, i32)]) -> TrafficSpec {
    TrafficSpec {
        weights: weights.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect(),
        ..spec(policy)
    }
}

fn up(name: &str) -> MemberSignal {
    MemberSignal {
        name: name.to_owned(),
        healthy: true,
        ..MemberSignal::default()
    }
}

fn down(name: &str) -> MemberSignal {
    MemberSignal {
        healthy: false,
        ..up(name)
    }
}

fn draining(name: &str) -> MemberSignal {
    MemberSignal {
        draining: true,
        ..up(name)
    }
}

fn load(name: &str, load: f64) -> MemberSignal {
    MemberSignal {
        load: Some(load),
        ..up(name)
    }
}

fn latency(name: &str, ms: f64) -> MemberSignal {
    MemberSignal {
        latency_ms: Some(ms),
        ..up(name)
    }
}

fn map(entries: &[(&str, i32)]) -> BTreeMap<String, i32> {
    entries.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect()
}

fn published(entries: &[(&str, i32)], at: u64) -> Published {
    Published {
        weights: map(entries),
        changed_at_ms: Some(at),
    }
}

// --- policies -------------------------------------------------------------------------------

#[test]
fn equal_gives_every_serving_member_the_same_weight() {
    let w = target_weights(&spec(TrafficPolicy::Equal), &[up("a"), up("b"), up("c")]);
    assert_eq!(w, map(&[("a", 3333), ("b", 3333), ("c", 3333)]));
}

#[test]
fn equal_drains_unhealthy_and_draining_members() {
    let w = target_weights(
        &spec(TrafficPolicy::Equal),
        &[up("a"), down("b"), draining("c"), up("d")],
    );
    assert_eq!(w, map(&[("a", 5000), ("b", 0), ("c", 0), ("d", 5000)]));
}

#[test]
fn static_publishes_60_30_10_verbatim() {
    let s = declared(TrafficPolicy::Static, &[("a", 60), ("b", 30), ("c", 10)]);
    assert_eq!(
        target_weights(&s, &[up("a"), up("b"), up("c")]),
        map(&[("a", 60), ("b", 30), ("c", 10)])
    );
}

#[test]
fn static_drains_a_down_member_and_keeps_the_others_numbers() {
    let s = declared(TrafficPolicy::Static, &[("a", 60), ("b", 30), ("c", 10)]);
    assert_eq!(
        target_weights(&s, &[up("a"), down("b"), up("c")]),
        map(&[("a", 60), ("b", 0), ("c", 10)])
    );
}

#[test]
fn static_gives_unlisted_members_zero_and_ignores_unknown_names() {
    let s = declared(TrafficPolicy::Static, &[("a", 5), ("ghost", 7)]);
    assert_eq!(
        target_weights(&s, &[up("a"), up("b")]),
        map(&[("a", 5), ("b", 0)])
    );
}

#[test]
fn static_falls_back_to_equal_when_every_declared_member_is_down() {
    let s = declared(TrafficPolicy::Static, &[("a", 100)]);
    let w = target_weights(&s, &[down("a"), up("b"), up("c")]);
    assert_eq!(w, map(&[("a", 0), ("b", 5000), ("c", 5000)]));
}

#[test]
fn static_clamps_out_of_range_declared_weights() {
    let s = declared(TrafficPolicy::Static, &[("a", -5), ("b", i32::MAX)]);
    assert_eq!(
        target_weights(&s, &[up("a"), up("b")]),
        map(&[("a", 0), ("b", MAX_WEIGHT)])
    );
}

#[test]
fn weighted_round_robin_rescales_60_30_10_to_the_total() {
    let s = declared(
        TrafficPolicy::WeightedRoundRobin,
        &[("a", 60), ("b", 30), ("c", 10)],
    );
    assert_eq!(
        target_weights(&s, &[up("a"), up("b"), up("c")]),
        map(&[("a", 6000), ("b", 3000), ("c", 1000)])
    );
    // b down: 60:10 over the rest, total kept at 10 000.
    assert_eq!(
        target_weights(&s, &[up("a"), down("b"), up("c")]),
        map(&[("a", 8571), ("b", 0), ("c", 1429)])
    );
}

#[test]
fn weighted_round_robin_keeps_a_tiny_capacity_above_zero() {
    let s = declared(
        TrafficPolicy::WeightedRoundRobin,
        &[("a", MAX_WEIGHT), ("b", 1), ("c", 0)],
    );
    assert_eq!(
        target_weights(&s, &[up("a"), up("b"), up("c")]),
        map(&[("a", 10_000), ("b", 1), ("c", 0)])
    );
}

#[test]
fn weighted_round_robin_falls_back_to_equal() {
    let s = declared(TrafficPolicy::WeightedRoundRobin, &[("a", 3), ("b", 0)]);
    assert_eq!(
        target_weights(&s, &[draining("a"), up("b"), up("c")]),
        map(&[("a", 0), ("b", 5000), ("c", 5000)])
    );
}

#[test]
fn least_loaded_with_one_member_at_ten_times_the_load() {
    // mean load 4: 1/(1+4) : 1/(1+4) : 1/(10+4) = 0.4242 : 0.4242 : 0.1515
    let w = target_weights(
        &spec(TrafficPolicy::LeastLoaded),
        &[load("a", 1.0), load("b", 1.0), load("c", 10.0)],
    );
    assert_eq!(w, map(&[("a", 4242), ("b", 4242), ("c", 1515)]));
}

#[test]
fn least_loaded_gives_unreporting_members_the_mean_weight() {
    // mean load 2: raw 1/3 and 1/5, the silent member gets their mean 4/15.
    let w = target_weights(
        &spec(TrafficPolicy::LeastLoaded),
        &[load("a", 1.0), load("b", 3.0), up("c")],
    );
    assert_eq!(w, map(&[("a", 4167), ("b", 2500), ("c", 3333)]));
}

#[test]
fn least_loaded_treats_nan_and_negative_as_unknown() {
    let w = target_weights(
        &spec(TrafficPolicy::LeastLoaded),
        &[
            load("a", f64::NAN),
            load("b", -3.0),
            load("c", f64::NEG_INFINITY),
        ],
    );
    assert_eq!(w, map(&[("a", 3333), ("b", 3333), ("c", 3333)]));
    // One known report among unknowns: everyone at "the mean", equal.
    let w = target_weights(
        &spec(TrafficPolicy::LeastLoaded),
        &[load("a", f64::NAN), load("b", 7.0)],
    );
    assert_eq!(w, map(&[("a", 5000), ("b", 5000)]));
}

#[test]
fn least_loaded_with_huge_and_zero_loads_stays_in_bounds() {
    let w = target_weights(
        &spec(TrafficPolicy::LeastLoaded),
        &[
            load("a", f64::INFINITY),
            load("b", f64::MAX),
            load("c", 0.0),
        ],
    );
    // a and b saturate at the cap (equal); c is idle: 1/(0+m) vs 1/(cap+m) with m = 2/3 cap,
    // 2.5 times their weight.
    assert_eq!(w["a"], w["b"]);
    assert!(w["c"] > w["a"] && w["a"] >= 1, "{w:?}");
    let w = target_weights(
        &spec(TrafficPolicy::LeastLoaded),
        &[load("a", 0.0), load("b", 0.0)],
    );
    assert_eq!(w, map(&[("a", 5000), ("b", 5000)]));
}

#[test]
fn least_loaded_idle_member_gets_at_most_twice_an_average_member() {
    // loads 0, 10, 10: mean 6.67; 1/6.67 : 1/16.67 : 1/16.67 = 55.6 % : 22.2 % : 22.2 %
    let w = target_weights(
        &spec(TrafficPolicy::LeastLoaded),
        &[load("new", 0.0), load("b", 10.0), load("c", 10.0)],
    );
    assert_eq!(w, map(&[("b", 2222), ("c", 2222), ("new", 5556)]));
}

#[test]
fn latency_aware_uses_latency_with_the_same_formula() {
    // Only ratios matter: 10/10/100 ms gives the same split as loads 1/1/10.
    let w = target_weights(
        &spec(TrafficPolicy::LatencyAware),
        &[latency("a", 10.0), latency("b", 10.0), latency("c", 100.0)],
    );
    assert_eq!(w, map(&[("a", 4242), ("b", 4242), ("c", 1515)]));
    // LatencyAware ignores load and vice versa.
    let w = target_weights(
        &spec(TrafficPolicy::LatencyAware),
        &[load("a", 1.0), load("b", 100.0)],
    );
    assert_eq!(w, map(&[("a", 5000), ("b", 5000)]));
}

#[test]
fn duplicate_members_are_merged_conservatively() {
    let w = target_weights(&spec(TrafficPolicy::Equal), &[up("a"), up("b"), down("a")]);
    assert_eq!(w, map(&[("a", 0), ("b", 10_000)]));
}

#[test]
fn no_members_no_weights() {
    let d = decide(
        &spec(TrafficPolicy::LeastLoaded),
        &[],
        &Published::default(),
        0,
    );
    assert!(d.weights.is_empty());
    assert!(!d.changed);
    assert_eq!(d.reason, WeightReason::Unchanged);
}

#[test]
fn many_members_still_get_at_least_one() {
    let members: Vec<MemberSignal> = (0..30_000).map(|i| up(&format!("m-{i}"))).collect();
    let w = target_weights(&spec(TrafficPolicy::Equal), &members);
    assert!(w.values().all(|w| *w == 1));
}

// --- decisions ------------------------------------------------------------------------------

fn ll() -> TrafficSpec {
    TrafficSpec {
        min_change_percent: 10,
        dwell_millis: 2000,
        ..spec(TrafficPolicy::LeastLoaded)
    }
}

#[test]
fn first_decision_is_immediate() {
    let d = decide(
        &ll(),
        &[load("a", 1.0), load("b", 1.0), load("c", 10.0)],
        &Published::default(),
        5,
    );
    assert_eq!(d.reason, WeightReason::Initial);
    assert!(d.changed);
    assert_eq!(d.weights, map(&[("a", 4242), ("b", 4242), ("c", 1515)]));
}

#[test]
fn a_drain_is_never_held_by_dwell() {
    let p = published(&[("a", 5000), ("b", 5000)], 1000);
    let d = decide(
        &ll(),
        &[
            load("a", 1.0),
            MemberSignal {
                healthy: false,
                ..load("b", 1.0)
            },
        ],
        &p,
        1001,
    );
    assert_eq!(d.reason, WeightReason::Drain);
    assert_eq!(d.weights, map(&[("a", 10_000), ("b", 0)]));
    let d = decide(
        &ll(),
        &[
            load("a", 1.0),
            MemberSignal {
                draining: true,
                ..load("b", 1.0)
            },
        ],
        &p,
        1001,
    );
    assert_eq!(
        (d.reason, d.weights),
        (WeightReason::Drain, map(&[("a", 10_000), ("b", 0)]))
    );
}

#[test]
fn a_removed_member_drains_at_once() {
    let p = published(&[("a", 5000), ("b", 5000)], 1000);
    let d = decide(&ll(), &[load("a", 1.0)], &p, 1001);
    assert_eq!((d.reason, d.changed), (WeightReason::Drain, true));
    assert_eq!(d.weights, map(&[("a", 10_000)]));
}

#[test]
fn a_member_back_to_health_gets_weight_at_once() {
    let p = published(&[("a", 10_000), ("b", 0)], 1000);
    let d = decide(&ll(), &[load("a", 1.0), load("b", 1.0)], &p, 1001);
    assert_eq!(d.reason, WeightReason::Admit);
    assert_eq!(d.weights, map(&[("a", 5000), ("b", 5000)]));
}

#[test]
fn a_new_member_that_is_not_healthy_yet_is_listed_at_zero() {
    let p = published(&[("a", 10_000)], 1000);
    let d = decide(&ll(), &[load("a", 1.0), down("b")], &p, 1001);
    assert_eq!((d.reason, d.changed), (WeightReason::Membership, true));
    assert_eq!(d.weights, map(&[("a", 10_000), ("b", 0)]));
}

#[test]
fn hysteresis_threshold_is_relative_to_the_published_weight() {
    let p = published(&[("a", 5000), ("b", 5000)], 0);
    // loads 84:116 -> 5400/4600: 8 % of 5000, held.
    let d = decide(&ll(), &[load("a", 84.0), load("b", 116.0)], &p, 10_000);
    assert_eq!((d.reason, d.changed), (WeightReason::Hysteresis, false));
    assert_eq!(d.weights, p.weights);
    // loads 2:3 -> 5500/4500: exactly 10 %, published.
    let d = decide(&ll(), &[load("a", 2.0), load("b", 3.0)], &p, 10_000);
    assert_eq!((d.reason, d.changed), (WeightReason::Signal, true));
    assert_eq!(d.weights, map(&[("a", 5500), ("b", 4500)]));
}

#[test]
fn hysteresis_floors_small_weights_at_one_percent() {
    assert!(
        !decide::significant(1, 2, 10),
        "1 -> 2 is 1 % of the floor 100"
    );
    assert!(decide::significant(5, 15, 10));
    assert!(!decide::significant(100, 109, 10));
    assert!(decide::significant(100, 110, 10));
    assert!(decide::significant(5000, 4500, 10));
    assert!(
        !decide::significant(7, 7, 0),
        "no change is never significant"
    );
    assert!(decide::significant(7, 8, 0));
}

#[test]
fn dwell_holds_a_large_change_and_says_how_long() {
    let p = published(&[("a", 5000), ("b", 5000)], 1000);
    let members = [load("a", 1.0), load("b", 10.0)];
    let d = decide(&ll(), &members, &p, 2500);
    assert_eq!(
        (d.reason, d.changed),
        (WeightReason::Dwell { wait_ms: 500 }, false)
    );
    assert_eq!(d.weights, p.weights);
    let d = decide(&ll(), &members, &p, 3000);
    assert_eq!((d.reason, d.changed), (WeightReason::Signal, true));
}

#[test]
fn unknown_or_future_change_time_does_not_freeze_weights() {
    let members = [load("a", 1.0), load("b", 10.0)];
    let mut p = published(&[("a", 5000), ("b", 5000)], u64::MAX);
    assert_eq!(decide(&ll(), &members, &p, 10).reason, WeightReason::Signal);
    p.changed_at_ms = None;
    assert_eq!(decide(&ll(), &members, &p, 10).reason, WeightReason::Signal);
}

#[test]
fn declared_policies_are_never_held() {
    let s = TrafficSpec {
        dwell_millis: 600_000,
        min_change_percent: 100,
        ..declared(TrafficPolicy::Static, &[("a", 60), ("b", 40)])
    };
    let p = published(&[("a", 50), ("b", 50)], 1000);
    let d = decide(&s, &[up("a"), up("b")], &p, 1001);
    assert_eq!(
        (d.reason, d.weights),
        (WeightReason::Policy, map(&[("a", 60), ("b", 40)]))
    );
}

#[test]
fn untrusted_published_weights_start_over() {
    let p = published(&[("a", -1), ("b", MAX_WEIGHT + 1)], 1000);
    let d = decide(&ll(), &[load("a", 1.0), load("b", 1.0)], &p, 1001);
    assert_eq!((d.reason, d.changed), (WeightReason::Initial, true));
    assert_eq!(d.weights, map(&[("a", 5000), ("b", 5000)]));
    // Garbage left over for members that are all gone: cleared.
    let d = decide(&ll(), &[], &published(&[("x", -7)], 0), 1);
    assert_eq!(
        (d.reason, d.changed, d.weights.len()),
        (WeightReason::Initial, true, 0)
    );
}

#[test]
fn unchanged_inputs_change_nothing() {
    let members = [load("a", 1.0), load("b", 10.0)];
    let d = decide(&ll(), &members, &Published::default(), 0);
    let p = Published::default().after(&d, 0);
    let again = decide(&ll(), &members, &p, 1);
    assert_eq!(
        (again.reason, again.changed),
        (WeightReason::Unchanged, false)
    );
    assert_eq!(
        p.after(&again, 1),
        p,
        "an unchanged decision keeps the dwell clock"
    );
    assert_eq!(d.serving().collect::<Vec<_>>(), ["a", "b"]);
}

// --- PrimaryBackup --------------------------------------------------------------------------

#[test]
fn primary_backup_routes_writes_to_the_live_primary_and_reads_to_backups() {
    let members = [up("db-0"), up("db-1"), down("db-2"), up("db-3")];
    let r = primary_backup_routes(&spec(TrafficPolicy::Equal), &members, Some("db-0"), true);
    assert_eq!(r.rw.as_deref(), Some("db-0"));
    assert_eq!(r.ro, map(&[("db-1", 5000), ("db-2", 0), ("db-3", 5000)]));
    assert_eq!(
        r.r.iter().map(String::as_str).collect::<Vec<_>>(),
        ["db-0", "db-1", "db-3"]
    );

    let r = primary_backup_routes(&spec(TrafficPolicy::Equal), &members, Some("db-0"), false);
    assert_eq!(r.rw, None, "no writes without a live lease");
    assert!(
        !r.ro.contains_key("db-0"),
        "the primary is not a backup even while its lease is out"
    );
    assert_eq!(
        primary_backup_routes(&spec(TrafficPolicy::Equal), &members, Some("ghost"), true).rw,
        None
    );
    assert_eq!(
        primary_backup_routes(&spec(TrafficPolicy::Equal), &members, None, true).rw,
        None
    );
}

#[test]
fn primary_backup_reads_spread_by_the_policy_over_backups() {
    // Static weights that only name the primary: the backups share reads equally.
    let s = declared(TrafficPolicy::Static, &[("db-0", 10)]);
    let r = primary_backup_routes(
        &s,
        &[up("db-0"), up("db-1"), up("db-2")],
        Some("db-0"),
        true,
    );
    assert_eq!(r.ro, map(&[("db-1", 5000), ("db-2", 5000)]));
    assert_eq!(r.r.iter().map(String::as_str).collect::<Vec<_>>(), ["db-0"]);
    // LeastLoaded over backups.
    let r = primary_backup_routes(
        &spec(TrafficPolicy::LeastLoaded),
        &[
            load("db-0", 50.0),
            load("db-1", 1.0),
            load("db-2", 1.0),
            load("db-3", 10.0),
        ],
        Some("db-0"),
        true,
    );
    assert_eq!(r.ro, map(&[("db-1", 4242), ("db-2", 4242), ("db-3", 1515)]));
    // No serving backup: ro empty, never the primary.
    let r = primary_backup_routes(
        &spec(TrafficPolicy::Equal),
        &[up("db-0"), down("db-1")],
        Some("db-0"),
        true,
    );
    assert_eq!(r.ro, map(&[("db-1", 0)]));
}

// --- snapshots ------------------------------------------------------------------------------

#[derive(Serialize)]
struct Step {
    at_ms: u64,
    event: &'static str,
    reason: WeightReason,
    changed: bool,
    weights: BTreeMap<String, i32>,
}

/// A LeastLoaded group through noise, a load step, dwell, a crash and a return.
#[test]
fn snapshot_least_loaded_timeline() {
    let s = ll();
    let events: Vec<(u64, &'static str, Vec<MemberSignal>)> = vec![
        (
            0,
            "start, equal loads",
            vec![
                load("web-0", 10.0),
                load("web-1", 10.0),
                load("web-2", 10.0),
            ],
        ),
        (
            500,
            "noise: web-1 +5 %",
            vec![
                load("web-0", 10.0),
                load("web-1", 10.5),
                load("web-2", 10.0),
            ],
        ),
        (
            1000,
            "web-2 at 10x load",
            vec![
                load("web-0", 10.0),
                load("web-1", 10.0),
                load("web-2", 100.0),
            ],
        ),
        (
            2000,
            "dwell passed",
            vec![
                load("web-0", 10.0),
                load("web-1", 10.0),
                load("web-2", 100.0),
            ],
        ),
        (
            2100,
            "web-0 crashes",
            vec![down("web-0"), load("web-1", 10.0), load("web-2", 100.0)],
        ),
        (
            2200,
            "web-0 back, idle",
            vec![
                load("web-0", 0.0),
                load("web-1", 10.0),
                load("web-2", 100.0),
            ],
        ),
        (
            2300,
            "loads even out",
            vec![
                load("web-0", 30.0),
                load("web-1", 30.0),
                load("web-2", 30.0),
            ],
        ),
        (
            4200,
            "dwell passed",
            vec![
                load("web-0", 30.0),
                load("web-1", 30.0),
                load("web-2", 30.0),
            ],
        ),
    ];
    let mut p = Published::default();
    let mut steps = Vec::new();
    for (at_ms, event, members) in events {
        let d = decide(&s, &members, &p, at_ms);
        p = p.after(&d, at_ms);
        steps.push(Step {
            at_ms,
            event,
            reason: d.reason,
            changed: d.changed,
            weights: d.weights,
        });
    }
    insta::assert_yaml_snapshot!(steps);
}

/// One decision per policy for the same three members (b unhealthy, c slow and loaded).
#[test]
fn snapshot_policies_side_by_side() {
    let members = [
        MemberSignal {
            load: Some(2.0),
            latency_ms: Some(20.0),
            ..up("a")
        },
        MemberSignal {
            load: Some(1.0),
            latency_ms: Some(5.0),
            ..down("b")
        },
        MemberSignal {
            load: Some(8.0),
            latency_ms: Some(80.0),
            ..up("c")
        },
        MemberSignal {
            load: None,
            latency_ms: None,
            ..up("d")
        },
    ];
    let weights = &[("a", 60), ("b", 30), ("c", 10)];
    let out: BTreeMap<String, Decision> = [
        TrafficPolicy::Equal,
        TrafficPolicy::Static,
        TrafficPolicy::WeightedRoundRobin,
        TrafficPolicy::LeastLoaded,
        TrafficPolicy::LatencyAware,
    ]
    .into_iter()
    .map(|policy| {
        let s = if matches!(
            policy,
            TrafficPolicy::Static | TrafficPolicy::WeightedRoundRobin
        ) {
            declared(policy, weights)
        } else {
            spec(policy)
        };
        (
            format!("{policy:?}"),
            decide(&s, &members, &Published::default(), 0),
        )
    })
    .collect();
    insta::assert_yaml_snapshot!(out);
}

#[test]
fn snapshot_primary_backup_routes() {
    let members = [
        load("db-0", 5.0),
        load("db-1", 1.0),
        draining("db-2"),
        load("db-3", 3.0),
    ];
    let routes = primary_backup_routes(
        &spec(TrafficPolicy::LeastLoaded),
        &members,
        Some("db-0"),
        true,
    );
    insta::assert_yaml_snapshot!(routes);
}
