//! Weighted traffic through a real Gateway (Traefik on the test bed, `docs/testbed-gateway.md`):
//! the split the operator publishes is the split the data plane applies, a weight change holds
//! quickly (the 2 s target is `make bench-weights`' business), `LeastLoaded` follows the load members report, a killed member is drained and no
//! request fails once routing has converged again, rules and filters of others survive
//! reconciles, and a missing or rejecting Gateway is reported without stopping the group.
//!
//! Every test has its own namespace, its own Gateway (listener `http`, port 8000, which Traefik
//! binds to its `web` entrypoint on 10.89.0.1:8000) and its own route hostname
//! (`<namespace>.test`), so the tests run concurrently. The helpers here are shared with
//! `tests/bench/weights.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use quorate::api::ReplicaGroup;
use serde_json::{Value, json};

use crate::operator::{
    ensure_operator, groups, pod_ip, service_ip, test_group, wait_ready, who_answers,
};
use crate::support::{Ctx, Namespace, wait_for};
use crate::tests;

pub fn tests() -> Vec<crate::support::Test> {
    tests![
        static_split_holds_and_a_weight_change_applies,
        least_loaded_gives_the_loaded_member_the_smallest_share,
        killed_member_is_drained_and_no_request_fails_once_converged,
        user_rule_and_filter_survive_reconciles,
        missing_gateway_is_reported_and_the_group_keeps_working,
        rejected_route_reports_the_gateways_reason,
    ]
}

/// Traefik's `web` entrypoint: every Gateway listener on port 8000.
pub const GATEWAY_URL: &str = "http://10.89.0.1:8000";
/// The group every test creates (in its own namespace) and its members.
pub const GROUP: &str = "web";
pub const MEMBERS: [&str; 3] = ["web-0", "web-1", "web-2"];
/// Split accuracy the issue asks for, in percentage points.
pub const SPLIT_TOLERANCE_PP: f64 = 3.0;

// --- manifests ----------------------------------------------------------------------------------

pub fn gateway_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": name},
        "spec": {
            "gatewayClassName": "traefik",
            "listeners": [{"name": "http", "protocol": "HTTP", "port": 8000, "allowedRoutes": {"namespaces": {"from": "Same"}}}],
        },
    })
}

/// The ActiveActive group `web` of three test-workload members, with `traffic` (policy and
/// knobs) published through `parent_ref` for `host`.
pub fn traffic_group(ctx: &Ctx, host: &str, parent_ref: Value, traffic: Value) -> Value {
    let mut group = test_group(ctx, GROUP, "ActiveActive", 3);
    let mut traffic = traffic;
    traffic["gateway"] = json!({"parentRefs": [parent_ref], "hostnames": [host]});
    group["spec"]["traffic"] = traffic;
    group
}

pub fn apply(ctx: &Ctx, ns: &str, doc: &Value) -> Result<()> {
    ctx.kubectl_stdin(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(&doc.to_string()),
    )?;
    Ok(())
}

/// A namespace holding the Gateway `gw` and the group `web` with `traffic`.
pub struct Setup {
    pub ns: Namespace,
    /// The route's hostname: send it as `Host` to reach the group through the Gateway.
    pub host: String,
}

/// Creates the Gateway and the group, waits until the group is Ready (which includes
/// RoutingConverged: the Gateway accepted the route with the published weights) and the
/// Gateway's data plane answers for the route's hostname.
pub async fn ready_group(ctx: &Ctx, prefix: &str, traffic: Value) -> Result<Setup> {
    ensure_operator(ctx).await?;
    let ns = ctx.namespace(prefix)?;
    let host = format!("{}.test", ns.name);
    apply(ctx, &ns.name, &gateway_manifest("gw"))?;
    apply(
        ctx,
        &ns.name,
        &traffic_group(
            ctx,
            &host,
            json!({"name": "gw", "sectionName": "http"}),
            traffic,
        ),
    )?;
    wait_ready(ctx, &ns.name, GROUP, Duration::from_secs(240)).await?;
    wait_for(
        &format!("the Gateway to answer for {host}"),
        Duration::from_secs(30),
        || async { Ok((request(ctx, &host, "/").await.status == 200).then_some(())) },
    )
    .await?;
    Ok(Setup { ns, host })
}

// --- reading the group and its route ------------------------------------------------------------

pub fn condition(group: &ReplicaGroup, type_: &str) -> Option<Condition> {
    group
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

fn http_routes(ctx: &Ctx, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ));
    Api::namespaced_with(ctx.client.clone(), ns, &resource)
}

pub async fn http_route(ctx: &Ctx, ns: &str) -> Result<Value> {
    let route = http_routes(ctx, ns)
        .get(GROUP)
        .await
        .with_context(|| format!("reading HTTPRoute {ns}/{GROUP}"))?;
    Ok(serde_json::to_value(route)?)
}

/// The rule named `name` of a route.
pub fn rule<'a>(route: &'a Value, name: &str) -> Option<&'a Value> {
    route["spec"]["rules"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

/// The weights of Quorate's rule (`quorate`) by backend name.
pub fn route_weights(route: &Value) -> BTreeMap<String, i32> {
    rule(route, "quorate")
        .and_then(|r| r["backendRefs"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| {
            Some((
                b["name"].as_str()?.to_owned(),
                b["weight"].as_i64().unwrap_or(1) as i32,
            ))
        })
        .collect()
}

/// Patches the group's declared weights (a JSON merge patch of `spec.traffic.weights`).
pub async fn patch_weights(ctx: &Ctx, ns: &str, weights: &BTreeMap<String, i32>) -> Result<()> {
    let patch = json!({"spec": {"traffic": {"weights": weights}}});
    groups(ctx, ns)
        .patch(GROUP, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the route carries `weights` in our rule and the group reports RoutingConverged
/// with those weights; returns the route as it is then.
pub async fn wait_converged_on(
    ctx: &Ctx,
    ns: &str,
    weights: &BTreeMap<String, i32>,
    timeout: Duration,
) -> Result<Value> {
    let api = groups(ctx, ns);
    wait_for(
        &format!("RoutingConverged with weights {weights:?}"),
        timeout,
        || async {
            let route = http_route(ctx, ns).await?;
            let group = api.get(GROUP).await?;
            let published: BTreeMap<String, i32> = group
                .status
                .iter()
                .flat_map(|s| s.members.iter())
                .map(|m| (m.name.clone(), m.weight))
                .collect();
            let converged =
                condition(&group, "RoutingConverged").is_some_and(|c| c.status == "True");
            Ok(
                (converged && route_weights(&route) == *weights && published == *weights)
                    .then_some(route),
            )
        },
    )
    .await
}

/// Every version of the HTTPRoute a watch delivers: when it was seen, our rule's weights, and
/// whether every parent reported Accepted for that generation.
#[derive(Clone, Debug)]
pub struct RouteVersion {
    pub seen: Instant,
    pub weights: BTreeMap<String, i32>,
    pub accepted: bool,
}

/// Records the route's versions until dropped (the watch task is aborted with it).
pub struct RouteLog {
    pub versions: Arc<Mutex<Vec<RouteVersion>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RouteLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RouteLog {
    pub async fn start(ctx: &Ctx, ns: &str) -> Result<Self> {
        let versions: Arc<Mutex<Vec<RouteVersion>>> = Arc::default();
        let out = versions.clone();
        let api = http_routes(ctx, ns);
        let task = tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={GROUP}"));
            let mut stream = watcher(api, config).applied_objects().boxed();
            while let Some(Ok(route)) = stream.next().await {
                let route = serde_json::to_value(route).unwrap_or_default();
                let generation = route["metadata"]["generation"].as_i64();
                let parents = route["status"]["parents"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let accepted = !parents.is_empty()
                    && parents.iter().all(|p| {
                        p["conditions"].as_array().into_iter().flatten().any(|c| {
                            c["type"] == "Accepted"
                                && c["status"] == "True"
                                && c["observedGeneration"].as_i64() == generation
                        })
                    });
                out.lock().expect("lock").push(RouteVersion {
                    seen: Instant::now(),
                    weights: route_weights(&route),
                    accepted,
                });
            }
        });
        let log = RouteLog { versions, task };
        wait_for(
            "the HTTPRoute watch to start",
            Duration::from_secs(10),
            || async { Ok((!log.versions.lock().expect("lock").is_empty()).then_some(())) },
        )
        .await?;
        Ok(log)
    }

    /// When the route first carried `weights` after `after`, and when the Gateway first
    /// reported Accepted for it.
    pub fn applied(
        &self,
        weights: &BTreeMap<String, i32>,
        after: Instant,
    ) -> (Option<Instant>, Option<Instant>) {
        let versions = self.versions.lock().expect("lock");
        let mine = versions
            .iter()
            .filter(|v| v.seen >= after && v.weights == *weights);
        let written = mine.clone().next().map(|v| v.seen);
        let accepted = mine.filter(|v| v.accepted).map(|v| v.seen).next();
        (written, accepted)
    }
}

/// Milliseconds from `from` to `to`, for reports ("-" when it never happened).
pub fn ms_since(from: Instant, to: Option<Instant>) -> String {
    to.map_or_else(
        || "-".to_owned(),
        |t| t.saturating_duration_since(from).as_millis().to_string(),
    )
}

// --- requests through the Gateway ---------------------------------------------------------------

/// One request through the Gateway: when it was sent, its status (0: no answer) and the member
/// that answered (the test workload names itself in its JSON answer).
#[derive(Clone, Debug)]
pub struct Sample {
    pub sent: Instant,
    pub status: u16,
    pub member: Option<String>,
}

pub async fn request(ctx: &Ctx, host: &str, path: &str) -> Sample {
    let sent = Instant::now();
    match ctx
        .http_get(&format!("{GATEWAY_URL}{path}"), Some(host))
        .await
    {
        Ok((status, body)) => {
            let member = (status == 200)
                .then(|| serde_json::from_str::<Value>(&body).ok())
                .flatten()
                .and_then(|v| v["member"].as_str().map(str::to_owned));
            Sample {
                sent,
                status,
                member,
            }
        }
        Err(_) => Sample {
            sent,
            status: 0,
            member: None,
        },
    }
}

/// `n` requests, one after the other (bounded: `n` requests of at most 5 s each).
pub async fn requests(ctx: &Ctx, host: &str, n: usize) -> Vec<Sample> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(request(ctx, host, "/").await);
    }
    out
}

/// Each member's share of `samples` in percent (failed requests count in the total).
pub fn shares(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        if let Some(m) = &s.member {
            *counts.entry(m.clone()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(m, c)| (m, 100.0 * c as f64 / samples.len().max(1) as f64))
        .collect()
}

/// The share in percent each member should get under `weights`.
pub fn target_shares(weights: &BTreeMap<String, i32>) -> BTreeMap<String, f64> {
    let total: f64 = weights.values().map(|w| f64::from((*w).max(0))).sum();
    weights
        .iter()
        .map(|(m, w)| {
            (
                m.clone(),
                if total > 0.0 {
                    100.0 * f64::from((*w).max(0)) / total
                } else {
                    0.0
                },
            )
        })
        .collect()
}

/// The largest deviation, in percentage points, of any member (of either map).
pub fn split_error(observed: &BTreeMap<String, f64>, target: &BTreeMap<String, f64>) -> f64 {
    observed
        .keys()
        .chain(target.keys())
        .map(|m| {
            (observed.get(m).copied().unwrap_or(0.0) - target.get(m).copied().unwrap_or(0.0)).abs()
        })
        .fold(0.0, f64::max)
}

pub fn failures(samples: &[Sample]) -> Vec<u16> {
    samples
        .iter()
        .filter(|s| s.status != 200)
        .map(|s| s.status)
        .collect()
}

/// Where in `samples` the failures were: "HTTP 503 ×38 at requests 120..190 (+1.2 s..+1.9 s)".
pub fn describe_failures(samples: &[Sample]) -> String {
    let Some(first) = samples.first() else {
        return "no requests".into();
    };
    let failed: Vec<(usize, &Sample)> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status != 200)
        .collect();
    let (Some((i, a)), Some((j, b))) = (failed.first(), failed.last()) else {
        return format!(
            "no failures in {} requests; shares {}",
            samples.len(),
            show(&shares(samples))
        );
    };
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, s) in &failed {
        *codes.entry(s.status).or_default() += 1;
    }
    let codes: Vec<String> = codes
        .iter()
        .map(|(c, n)| format!("HTTP {c} x{n}"))
        .collect();
    let at = |s: &Sample| s.sent.saturating_duration_since(first.sent).as_secs_f64();
    format!(
        "{} of {} failed ({}) at requests {i}..{j} (+{:.2} s..+{:.2} s); shares {}",
        failed.len(),
        samples.len(),
        codes.join(", "),
        at(a),
        at(b),
        show(&shares(samples))
    )
}

pub fn show(shares: &BTreeMap<String, f64>) -> String {
    shares
        .iter()
        .map(|(m, s)| format!("{m}={s:.1}%"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends requests until the last `window` of them split as `target` within `tolerance_pp`, and
/// returns the send time of the first request of that window: from then on the data plane
/// applies the new split. Traefik's weighted round robin is deterministic and smooth (earliest
/// deadline first), so any `window` consecutive requests under one configuration match their
/// split to within a request or two per member; a window that still holds requests of the old
/// split is off by their share of it. Stops (with an error) once no window can start before
/// `deadline` any more, or after `max_requests`.
pub async fn until_split(
    ctx: &Ctx,
    host: &str,
    target: &BTreeMap<String, f64>,
    tolerance_pp: f64,
    window: usize,
    deadline: Instant,
    max_requests: usize,
) -> Result<Instant> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut best = f64::INFINITY;
    while samples.len() < max_requests {
        if samples.len() >= window && samples[samples.len() - window].sent > deadline {
            break;
        }
        samples.push(request(ctx, host, "/").await);
        if samples.len() >= window {
            let last = &samples[samples.len() - window..];
            let error = split_error(&shares(last), target);
            best = best.min(error);
            if error <= tolerance_pp {
                return Ok(last[0].sent);
            }
        }
    }
    let tail = &samples[samples.len().saturating_sub(window)..];
    anyhow::bail!(
        "no window of {window} requests split as {} (±{tolerance_pp} pp) in time; closest {best:.1} pp; last window: {} failures {:?}",
        show(target),
        show(&shares(tail)),
        failures(tail)
    )
}

// --- the tests ----------------------------------------------------------------------------------

/// The weights `LeastLoaded` wants for these loads (the operator's own policy code).
pub fn least_loaded_weights(loads: &BTreeMap<String, f64>) -> BTreeMap<String, i32> {
    let spec = quorate::api::TrafficSpec {
        policy: quorate::api::TrafficPolicy::LeastLoaded,
        ..Default::default()
    };
    let members: Vec<quorate::traffic::MemberSignal> = loads
        .iter()
        .map(|(name, load)| quorate::traffic::MemberSignal {
            name: name.clone(),
            healthy: true,
            load: Some(*load),
            ..Default::default()
        })
        .collect();
    quorate::traffic::target_weights(&spec, &members)
}

fn weights(pairs: [(&str, i32); 3]) -> BTreeMap<String, i32> {
    pairs.into_iter().map(|(m, w)| (m.to_owned(), w)).collect()
}

async fn static_split_holds_and_a_weight_change_applies(ctx: Ctx) -> Result<()> {
    let first = weights([("web-0", 60), ("web-1", 30), ("web-2", 10)]);
    let s = ready_group(
        &ctx,
        "tr-static",
        json!({"policy": "Static", "weights": first}),
    )
    .await?;
    // "Served through the Gateway" is one answer; the route may have been written with other
    // weights while members became healthy, and Traefik applies a change after its throttled
    // reload. Measure once the data plane itself shows the split (a matching window of 100).
    let deadline = Instant::now() + Duration::from_secs(30);
    until_split(
        &ctx,
        &s.host,
        &target_shares(&first),
        SPLIT_TOLERANCE_PP,
        100,
        deadline,
        3000,
    )
    .await?;
    let samples = requests(&ctx, &s.host, 1000).await;
    ensure!(
        failures(&samples).is_empty(),
        "through the Gateway: {}",
        describe_failures(&samples)
    );
    let observed = shares(&samples);
    let error = split_error(&observed, &target_shares(&first));
    eprintln!(
        "    60/30/10 over 1000 requests: {} (error {error:.1} pp)",
        show(&observed)
    );
    ensure!(
        error <= SPLIT_TOLERANCE_PP,
        "split {} is off 60/30/10 by {error:.1} pp",
        show(&observed)
    );

    let second = weights([("web-0", 20), ("web-1", 30), ("web-2", 50)]);
    let target = target_shares(&second);
    let log = RouteLog::start(&ctx, &s.ns.name).await?;
    let patched = Instant::now();
    patch_weights(&ctx, &s.ns.name, &second).await?;
    // Windows of 100 requests: one whole cycle of 20/30/50. A window that matches within 3 pp
    // holds at most a few requests of the old split (which is off by 40 pp for web-0 and web-2).
    // The issue's 2 s is a speed target: `make bench-weights` measures it (and prints it here);
    // this test bounds it loosely so that a busy two-core CI machine does not make it flake.
    let limit = Duration::from_secs(10);
    let held = until_split(
        &ctx,
        &s.host,
        &target,
        SPLIT_TOLERANCE_PP,
        100,
        patched + limit,
        5000,
    )
    .await;
    let (written, accepted) = log.applied(&second, patched);
    let breakdown = format!(
        "route written +{} ms, accepted by the Gateway +{} ms",
        ms_since(patched, written),
        ms_since(patched, accepted)
    );
    let took = held
        .with_context(|| breakdown.clone())?
        .saturating_duration_since(patched);
    eprintln!(
        "    weights 60/30/10 -> 20/30/50: {breakdown}, the new split holds in the data plane +{} ms",
        took.as_millis()
    );
    ensure!(
        took <= limit,
        "the new split held only {took:?} after the patch"
    );
    let samples = requests(&ctx, &s.host, 1000).await;
    ensure!(
        failures(&samples).is_empty(),
        "after the change: {}",
        describe_failures(&samples)
    );
    let observed = shares(&samples);
    let error = split_error(&observed, &target);
    eprintln!(
        "    20/30/50 over 1000 requests: {} (error {error:.1} pp)",
        show(&observed)
    );
    ensure!(
        error <= SPLIT_TOLERANCE_PP,
        "split {} is off 20/30/50 by {error:.1} pp",
        show(&observed)
    );
    Ok(())
}

async fn least_loaded_gives_the_loaded_member_the_smallest_share(ctx: Ctx) -> Result<()> {
    let s = ready_group(&ctx, "tr-load", json!({"policy": "LeastLoaded"})).await?;
    let ip = pod_ip(&ctx, &s.ns.name, "web-1")
        .await?
        .context("web-1 has no pod IP")?;
    let loads: BTreeMap<String, f64> = [("web-0", 0.0), ("web-1", 10.0), ("web-2", 0.0)]
        .into_iter()
        .map(|(m, l)| (m.to_owned(), l))
        .collect();
    let wanted = least_loaded_weights(&loads);
    let log = RouteLog::start(&ctx, &s.ns.name).await?;
    let changed = Instant::now();
    let (code, body) = ctx
        .http_post(&format!("http://{ip}:8080/admin/load?value=10"), "")
        .await?;
    ensure!(code == 204, "POST /admin/load: HTTP {code}: {body}");
    // Loads 0/10/0: the policy wants 4444/1111/4444 (11 % for web-1); wait until the data plane
    // gives web-1 clearly less than each of the others, then count 1000 requests.
    let below = |sh: &BTreeMap<String, f64>| {
        let of = |m: &str| sh.get(m).copied().unwrap_or(0.0);
        of("web-1") + 10.0 < of("web-0").min(of("web-2"))
    };
    wait_for(
        "web-1's share through the Gateway to drop",
        Duration::from_secs(30),
        || async { Ok(below(&shares(&requests(&ctx, &s.host, 100).await)).then_some(())) },
    )
    .await?;
    let (written, accepted) = log.applied(&wanted, changed);
    eprintln!(
        "    load 10 on web-1: route weights {wanted:?} written +{} ms, accepted +{} ms; share dropped in the data plane by +{} ms",
        ms_since(changed, written),
        ms_since(changed, accepted),
        changed.elapsed().as_millis()
    );
    let samples = requests(&ctx, &s.host, 1000).await;
    ensure!(
        failures(&samples).is_empty(),
        "{}",
        describe_failures(&samples)
    );
    let observed = shares(&samples);
    let route = http_route(&ctx, &s.ns.name).await?;
    eprintln!(
        "    1000 requests: {} (route weights {:?})",
        show(&observed),
        route_weights(&route)
    );
    let of = |m: &str| observed.get(m).copied().unwrap_or(0.0);
    ensure!(
        of("web-1") < of("web-0") && of("web-1") < of("web-2"),
        "the loaded web-1 is not below the others: {}",
        show(&observed)
    );
    Ok(())
}

/// Every status of the group as a watch delivers it: (when seen, RoutingConverged status).
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

fn record_routing_converged(ctx: &Ctx, ns: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let api = groups(ctx, ns);
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={GROUP}"));
        let mut stream = watcher(api, config).applied_objects().boxed();
        while let Some(Ok(group)) = stream.next().await {
            let status = condition(&group, "RoutingConverged")
                .map_or_else(|| "Unknown".to_owned(), |c| c.status);
            out.lock().expect("lock").push((Instant::now(), status));
        }
    });
    (seen, task)
}

async fn killed_member_is_drained_and_no_request_fails_once_converged(ctx: Ctx) -> Result<()> {
    let s = ready_group(&ctx, "tr-kill", json!({"policy": "Equal"})).await?;
    let ns = &s.ns.name;
    // The Gateway may take a moment longer to route to the last member's Service than to
    // report on the route (one run saw two of three members for the first 300 requests): a
    // precondition of this test, not what it checks.
    wait_for(
        "every member to answer through the Gateway",
        Duration::from_secs(30),
        || async { Ok((shares(&requests(&ctx, &s.host, 60).await).len() == 3).then_some(())) },
    )
    .await?;
    let before = requests(&ctx, &s.host, 300).await;
    ensure!(
        failures(&before).is_empty(),
        "before the kill: {}",
        describe_failures(&before)
    );
    ensure!(
        shares(&before).len() == 3,
        "not every member answers: {}",
        show(&shares(&before))
    );

    let (seen, watch) = record_routing_converged(&ctx, ns);
    // The watch's first event is the current object: wait for it so later events are news.
    wait_for(
        "the group watch to start",
        Duration::from_secs(10),
        || async { Ok((!seen.lock().expect("lock").is_empty()).then_some(())) },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let killed = Instant::now();
    pods.delete(
        "web-1",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let drained = wait_for(
        "web-1's weight 0 in the HTTPRoute",
        Duration::from_secs(30),
        || async {
            let route = http_route(&ctx, ns).await?;
            Ok((route_weights(&route).get("web-1") == Some(&0)).then(Instant::now))
        },
    )
    .await?;
    // RoutingConverged goes False when the weights change and True again once the Gateway has
    // taken the new route.
    let converged = wait_for(
        "RoutingConverged False, then True again",
        Duration::from_secs(60),
        || async {
            let seen = seen.lock().expect("lock");
            let went_false = seen.iter().position(|(at, c)| *at >= killed && c != "True");
            Ok(went_false.and_then(|i| {
                seen[i..]
                    .iter()
                    .find(|(_, c)| c == "True")
                    .map(|(at, _)| *at)
            }))
        },
    )
    .await;
    watch.abort();
    let converged = converged?;
    eprintln!(
        "    web-1 killed: weight 0 in the route after {} ms, RoutingConverged True again after {} ms",
        drained.duration_since(killed).as_millis(),
        converged.saturating_duration_since(killed).as_millis()
    );
    // The Gateway reports the route's generation before its data plane serves it (docs/traffic.md
    // "RoutingConverged"): Traefik applies changes after its provider throttle (200 ms on the test
    // bed) and a reload. From then on no request may fail.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = requests(&ctx, &s.host, 300).await;
    ensure!(
        failures(&after).is_empty(),
        "1 s after RoutingConverged was True again: {}",
        describe_failures(&after)
    );
    eprintln!(
        "    300 requests after convergence, none failed: {}",
        show(&shares(&after))
    );
    Ok(())
}

/// GET through the Gateway; (status, the answering member, the value of response header `header`).
async fn get_with_header(
    ctx: &Ctx,
    host: &str,
    path: &str,
    header: &str,
) -> Result<(u16, Option<String>, Option<String>)> {
    use http_body_util::{BodyExt, Full};
    let req = hyper::Request::get(format!("{GATEWAY_URL}{path}"))
        .header("host", host)
        .body(Full::new(bytes::Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), ctx.http.request(req))
        .await
        .context("HTTP timeout")??;
    let status = resp.status().as_u16();
    let value = resp
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    let member = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["member"].as_str().map(str::to_owned));
    Ok((status, member, value))
}

async fn user_rule_and_filter_survive_reconciles(ctx: Ctx) -> Result<()> {
    let first = weights([("web-0", 60), ("web-1", 30), ("web-2", 10)]);
    let s = ready_group(
        &ctx,
        "tr-user",
        json!({"policy": "Static", "weights": first}),
    )
    .await?;
    let ns = &s.ns.name;
    let route = http_route(&ctx, ns).await?;
    let ours = route["spec"]["rules"]
        .as_array()
        .context("rules")?
        .iter()
        .position(|r| r["name"] == "quorate")
        .context("our rule")?;
    // What a user adds by hand: a rule of their own (/user, rewritten to /, to web-0 only) and a
    // response header filter on Quorate's rule.
    let user_rule = json!({
        "name": "user-rule",
        "matches": [{"path": {"type": "PathPrefix", "value": "/user"}}],
        "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
        "backendRefs": [{"name": "web-0", "port": 8080}],
    });
    let filter = json!([{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-User-Filter", "value": "kept"}]}}]);
    let patch = json!([
        {"op": "add", "path": "/spec/rules/-", "value": user_rule},
        {"op": "add", "path": format!("/spec/rules/{ours}/filters"), "value": filter},
    ]);
    ctx.kubectl(&[
        "patch",
        "httproute",
        GROUP,
        "-n",
        ns,
        "--type",
        "json",
        "-p",
        &patch.to_string(),
    ])?;

    for next in [
        weights([("web-0", 20), ("web-1", 30), ("web-2", 50)]),
        weights([("web-0", 10), ("web-1", 80), ("web-2", 10)]),
    ] {
        patch_weights(&ctx, ns, &next).await?;
        let route = wait_converged_on(&ctx, ns, &next, Duration::from_secs(60)).await?;
        let user = rule(&route, "user-rule").with_context(|| {
            format!(
                "the user's rule is gone after a reconcile: {}",
                route["spec"]
            )
        })?;
        ensure!(
            user["backendRefs"][0]["name"] == "web-0" && user["filters"][0]["type"] == "URLRewrite",
            "the user's rule changed: {user}"
        );
        let quorate = rule(&route, "quorate").context("our rule")?;
        ensure!(
            quorate["filters"] == filter,
            "the user's filter on our rule is gone: {quorate}"
        );
    }
    // And the data plane has both: /user reaches web-0 only, our rule's answers carry the header.
    wait_for(
        "the user's rule and filter in the data plane",
        Duration::from_secs(30),
        || async {
            let (status, member, header) =
                get_with_header(&ctx, &s.host, "/", "x-user-filter").await?;
            let (user_status, user_member, _) =
                get_with_header(&ctx, &s.host, "/user", "x-user-filter").await?;
            Ok((status == 200
                && member.is_some()
                && header.as_deref() == Some("kept")
                && user_status == 200
                && user_member.as_deref() == Some("web-0"))
            .then_some(()))
        },
    )
    .await?;
    for _ in 0..20 {
        let (status, member, _) = get_with_header(&ctx, &s.host, "/user", "x-user-filter").await?;
        ensure!(
            status == 200 && member.as_deref() == Some("web-0"),
            "/user answered HTTP {status} by {member:?}"
        );
    }
    // The route's status says converged before Traefik's throttled reload serves it: measure
    // once the data plane itself shows the split (a window of 100 requests), not after a guess.
    let target = target_shares(&weights([("web-0", 10), ("web-1", 80), ("web-2", 10)]));
    until_split(
        &ctx,
        &s.host,
        &target,
        SPLIT_TOLERANCE_PP,
        100,
        Instant::now() + Duration::from_secs(30),
        3000,
    )
    .await?;
    let samples = requests(&ctx, &s.host, 500).await;
    let observed = shares(&samples);
    let error = split_error(&observed, &target);
    ensure!(
        failures(&samples).is_empty() && error <= SPLIT_TOLERANCE_PP,
        "10/80/10 with the user's filter: observed {} against {} ({error:.1} pp, allowed {SPLIT_TOLERANCE_PP}); {}",
        show(&observed),
        show(&target),
        describe_failures(&samples)
    );
    Ok(())
}

/// Waits for `type_` to have `status` with `needle` in its message.
async fn wait_condition(
    ctx: &Ctx,
    ns: &str,
    type_: &str,
    status: &str,
    needle: &str,
    timeout: Duration,
) -> Result<Condition> {
    let api = groups(ctx, ns);
    let last = Mutex::new(String::new());
    let r = wait_for(
        &format!("{type_}={status} mentioning {needle:?}"),
        timeout,
        || async {
            let group = api.get(GROUP).await?;
            let c = condition(&group, type_);
            *last.lock().expect("lock") = format!("{c:?}");
            Ok(c.filter(|c| c.status == status && c.message.contains(needle)))
        },
    )
    .await;
    r.with_context(|| format!("last {type_}: {}", last.lock().expect("lock")))
}

/// The members are healthy and `web-r` routes to all three of them: the group works without
/// its Gateway.
async fn group_works_without_the_gateway(ctx: &Ctx, ns: &str) -> Result<()> {
    let api = groups(ctx, ns);
    wait_for(
        "three healthy members",
        Duration::from_secs(240),
        || async {
            let g = api.get(GROUP).await?;
            let members = g.status.map(|s| s.members).unwrap_or_default();
            Ok((members.len() == 3 && members.iter().all(|m| m.healthy)).then_some(()))
        },
    )
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    wait_for(
        "web-r to route to three members",
        Duration::from_secs(30),
        || async {
            let slice = slices.get_opt("web-r").await?;
            Ok(slice.is_some_and(|s| s.endpoints.len() == 3).then_some(()))
        },
    )
    .await?;
    let ip = service_ip(ctx, ns, "web-r").await?;
    // The slice is written; kube-proxy programs the Service a moment later (until then a
    // connection is refused), so the data plane is asked until it answers, as a client would
    // (wait_for reports the last answer or error).
    wait_for(
        "web-r to answer from a member",
        Duration::from_secs(30),
        || async {
            let answer = who_answers(ctx, &ip).await?;
            let member = answer["member"].as_str().unwrap_or_default();
            ensure!(MEMBERS.contains(&member), "web-r answered {answer}");
            Ok(Some(()))
        },
    )
    .await
}

async fn missing_gateway_is_reported_and_the_group_keeps_working(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("tr-nogw")?;
    let host = format!("{}.test", ns.name);
    apply(
        &ctx,
        &ns.name,
        &traffic_group(
            &ctx,
            &host,
            json!({"name": "late-gw"}),
            json!({"policy": "Equal"}),
        ),
    )?;
    let degraded = wait_condition(
        &ctx,
        &ns.name,
        "Degraded",
        "True",
        "late-gw",
        Duration::from_secs(240),
    )
    .await?;
    let routing = wait_condition(
        &ctx,
        &ns.name,
        "RoutingConverged",
        "False",
        "late-gw",
        Duration::from_secs(30),
    )
    .await?;
    eprintln!(
        "    Degraded: {}: {}\n    RoutingConverged: {}: {}",
        degraded.reason, degraded.message, routing.reason, routing.message
    );
    group_works_without_the_gateway(&ctx, &ns.name).await?;
    // The Gateway appears: the route attaches and the group becomes Ready.
    let created = Instant::now();
    apply(&ctx, &ns.name, &gateway_manifest("late-gw"))?;
    ready_and_served_through_the_gateway(&ctx, &ns.name, &host).await?;
    eprintln!(
        "    Gateway created: group Ready and served through it after {} ms",
        created.elapsed().as_millis()
    );
    // spec.traffic.gateway removed: the operator deletes its route, and the group stays Ready.
    ctx.kubectl(&[
        "patch",
        "rg",
        GROUP,
        "-n",
        &ns.name,
        "--type",
        "json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/traffic/gateway"}]"#,
    ])?;
    wait_for(
        "the HTTPRoute to be deleted with spec.traffic.gateway",
        Duration::from_secs(60),
        || async {
            let left = ctx.kubectl(&["get", "httproutes", "-n", &ns.name, "-o", "name"])?;
            Ok(left.trim().is_empty().then_some(()))
        },
    )
    .await?;
    wait_ready(&ctx, &ns.name, GROUP, Duration::from_secs(60)).await?;
    Ok(())
}

/// The group is Ready and the Gateway answers for its host.
async fn ready_and_served_through_the_gateway(ctx: &Ctx, ns: &str, host: &str) -> Result<()> {
    wait_ready(ctx, ns, GROUP, Duration::from_secs(120)).await?;
    wait_for(
        &format!("the Gateway to answer for {host}"),
        Duration::from_secs(30),
        || async { Ok((request(ctx, host, "/").await.status == 200).then_some(())) },
    )
    .await
}

async fn rejected_route_reports_the_gateways_reason(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("tr-reject")?;
    let host = format!("{}.test", ns.name);
    apply(&ctx, &ns.name, &gateway_manifest("gw"))?;
    // The Gateway has no listener `nope`: Traefik answers Accepted=False, NoMatchingParent.
    apply(
        &ctx,
        &ns.name,
        &traffic_group(
            &ctx,
            &host,
            json!({"name": "gw", "sectionName": "nope"}),
            json!({"policy": "Equal"}),
        ),
    )?;
    let routing = wait_condition(
        &ctx,
        &ns.name,
        "RoutingConverged",
        "False",
        "NoMatchingParent",
        Duration::from_secs(240),
    )
    .await?;
    eprintln!(
        "    RoutingConverged: {}: {}",
        routing.reason, routing.message
    );
    ensure!(
        routing.message.contains("gw"),
        "the message does not name the Gateway: {}",
        routing.message
    );
    group_works_without_the_gateway(&ctx, &ns.name).await?;
    // Fixed by the user: the route is accepted and the group becomes Ready.
    let fixed = Instant::now();
    let patch = json!({"spec": {"traffic": {"gateway": {"parentRefs": [{"name": "gw", "sectionName": "http"}]}}}});
    groups(&ctx, &ns.name)
        .patch(GROUP, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    ready_and_served_through_the_gateway(&ctx, &ns.name, &host).await?;
    eprintln!(
        "    sectionName fixed: group Ready and served through the Gateway after {} ms",
        fixed.elapsed().as_millis()
    );
    Ok(())
}
