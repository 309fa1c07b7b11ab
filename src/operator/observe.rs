//! Observe: everything one reconcile reads — member pods, the agents' state (and direct probes
//! of members that are not in the group yet), the routing objects as applied, the HTTPRoute's
//! status as the Gateway wrote it. Pods and EndpointSlices come from the reflector stores
//! (`super::stores`), and so do the HTTPRoute and Gateways once their watches have listed; the
//! functions turning store snapshots into `Observed` parts are pure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client, ResourceExt};

use super::tls::GroupTls;
use super::{Context, Error, KubeContext};
use crate::api::ReplicaGroup;
use crate::api::names::*;
use crate::plan::{AgentsObserved, MemberPod, Observed, RouteObserved};

/// Whether the Gateway API is installed, looked up at most every 30 s.
#[derive(Default)]
pub struct GatewayApiProbe {
    cached: Mutex<Option<(bool, Instant)>>,
}

impl GatewayApiProbe {
    pub async fn installed(&self, client: &Client) -> bool {
        if let Some((v, at)) = *self.cached.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < Duration::from_secs(30)
        {
            return v;
        }
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let installed = matches!(
            crds.get_opt("httproutes.gateway.networking.k8s.io").await,
            Ok(Some(_))
        );
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((installed, Instant::now()));
        installed
    }
}

pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        HTTPROUTE_KIND,
    ))
}

pub fn gateway_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
    ))
}

fn member_pod(names: &GroupNames, pod: &Pod) -> Option<MemberPod> {
    let name = pod.name_any();
    let (witness, ordinal) = names.ordinal_of(&name)?;
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    // The agent is a native sidecar (an init container) in members, a container in witnesses.
    let agent_running = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .any(|c| {
            c.name == AGENT_CONTAINER && c.state.as_ref().is_some_and(|st| st.running.is_some())
        });
    Some(MemberPod {
        name,
        witness,
        ordinal,
        ip: status.and_then(|s| s.pod_ip.clone()).filter(|_| running),
        agent_running,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        role_label: pod.labels().get(ROLE_LABEL).cloned(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        unschedulable: status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        }),
        ca_hash: pod.annotations().get(CA_HASH_ANNOTATION).cloned(),
        template_hash: pod.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        pinned_claims: Vec::new(),
    })
}

/// How long a member the group knows but reports unhealthy may take to answer a probe (a
/// running agent answers `Status` in milliseconds).
const KNOWN_MEMBER_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// The node the scheduler had a claim provisioned for (WaitForFirstConsumer binding).
const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";

/// The claims of `pod` already provisioned for a node: (claim, node).
async fn pinned_claims(
    client: &Client,
    ns: &str,
    group: &ReplicaGroup,
    pod: &MemberPod,
) -> Result<Vec<(String, String)>, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut pinned = Vec::new();
    for name in crate::plan::claim_names(group, &pod.name, pod.witness) {
        let claim = claims
            .get_opt(&name)
            .await
            .context(|| format!("reading PersistentVolumeClaim {ns}/{name}"))?;
        if let Some(node) = claim
            .as_ref()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .and_then(|c| c.annotations().get(SELECTED_NODE_ANNOTATION))
        {
            pinned.push((name, node.clone()));
        }
    }
    Ok(pinned)
}

/// The group's member and witness pods, by name (the order a LIST returns them in).
pub(super) fn member_pods(names: &GroupNames, pods: &[Arc<Pod>]) -> Vec<MemberPod> {
    let mut pods: Vec<MemberPod> = pods.iter().filter_map(|p| member_pod(names, p)).collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods
}

/// What the operator-written EndpointSlices route to now.
#[derive(Debug, Default, PartialEq)]
pub(super) struct SlicesObserved {
    pub routed_epoch: Option<u64>,
    /// The `-rw` slice's resourceVersion: its next write is conditional on it (apply.rs).
    pub rw_version: Option<String>,
    pub rw: Vec<String>,
    pub ro: Vec<String>,
    pub r: Vec<String>,
}

pub(super) fn slices_observed(names: &GroupNames, slices: &[Arc<EndpointSlice>]) -> SlicesObserved {
    // Only the slices we write (the EndpointSlice controller's would carry its own label).
    let ours: Vec<&EndpointSlice> = slices
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| {
            s.labels().get(SLICE_MANAGED_BY_LABEL).map(String::as_str) == Some(SLICE_MANAGER)
        })
        .collect();
    let named = |name: &str| -> Vec<&EndpointSlice> {
        ours.iter()
            .copied()
            .filter(|s| s.metadata.name.as_deref() == Some(name))
            .collect()
    };
    let addresses = |name: &str| -> Vec<String> {
        named(name)
            .iter()
            .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
            .collect()
    };
    let rw = names.rw();
    SlicesObserved {
        routed_epoch: named(&rw).iter().find_map(|s| {
            s.metadata
                .annotations
                .as_ref()?
                .get(EPOCH_ANNOTATION)?
                .parse()
                .ok()
        }),
        rw_version: named(&rw)
            .iter()
            .find_map(|s| s.metadata.resource_version.clone()),
        rw: addresses(&rw),
        ro: addresses(&names.ro()),
        r: addresses(&names.r()),
    }
}

/// The group's HTTPRoute: from the store when its watch has listed and holds it, else read.
/// `foreign` reads a route the store cannot hold: it holds only routes with our managed-by
/// label, and one created by someone else (before our first apply labels it) is read from the
/// API. Without `foreign`, a listed store that holds no route is the answer (no API call).
async fn read_route(
    ctx: &Context,
    ns: &str,
    name: &str,
    foreign: bool,
) -> Result<Option<Arc<DynamicObject>>, Error> {
    match ctx.stores.route(ns, name) {
        Some(Some(route)) => return Ok(Some(route)),
        Some(None) if !foreign => return Ok(None),
        _ => {}
    }
    let routes: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &http_route_resource());
    Ok(routes
        .get_opt(name)
        .await
        .context(|| format!("reading HTTPRoute {ns}/{name}"))?
        .map(Arc::new))
}

pub async fn observe(
    ctx: &Context,
    group: &ReplicaGroup,
    names: &GroupNames,
    tls: &GroupTls,
) -> Result<Observed, Error> {
    let client = &ctx.client;
    let ns = &names.namespace;
    let mut pods = member_pods(names, &ctx.stores.pods(names).await?);
    // Rare and cheap: only a pod the scheduler cannot place has its claims read.
    for pod in pods
        .iter_mut()
        .filter(|p| p.unschedulable && p.node.is_none())
    {
        pod.pinned_claims = pinned_claims(client, ns, group, pod).await?;
    }

    // Before anything dials a member: a replaced pod is reachable by its new IP at once.
    ctx.hub.learn_pod_ips(pods.iter().map(|p| {
        (
            names.agent_address(&p.name),
            p.ip.as_deref().and_then(|ip| ip.parse().ok()),
        )
    }));
    let agents = ctx.hub.observe(ns, &names.name);
    // Ask members directly who they are when the group's view cannot say: before bootstrap,
    // new members, and members that stopped reporting (a lost volume shows up as a new id).
    let view = match &agents {
        AgentsObserved::Connected { view, .. } => Some(view),
        _ => None,
    };
    // A member the group's view knows but reports unhealthy is probed only for a lost volume
    // (a new id), which can wait for a later reconcile: it gets a short answer time, because
    // one on a cut-off or frozen node never answers, and this reconcile is often the one that
    // routes to the new primary (waiting the full connect timeout for it held failovers back
    // by a second on the test bed).
    let to_probe: Vec<(&MemberPod, Option<Duration>)> = pods
        .iter()
        .filter(|p| p.agent_running && !p.terminating)
        .filter_map(|p| match view {
            Some(v) if v.initialized => match v.members.iter().find(|m| m.name == p.name) {
                Some(m) if m.healthy => None,
                Some(_) => Some((p, Some(KNOWN_MEMBER_PROBE_TIMEOUT))),
                None => Some((p, None)),
            },
            _ => Some((p, None)),
        })
        .collect();
    let probes = join_all(to_probe.iter().map(|(p, timeout)| {
        let address = names.agent_address(&p.name);
        let tls = tls.client.clone();
        let hub = &ctx.hub;
        async move {
            let probe = hub.probe(&address, Some(tls));
            let probe = match timeout {
                Some(t) => tokio::time::timeout(*t, probe).await.ok(),
                None => Some(probe.await),
            };
            (p.name.clone(), probe.and_then(Result::ok))
        }
    }))
    .await
    .into_iter()
    .filter_map(|(name, probe)| probe.map(|probe| (name, probe)))
    .collect();

    let slices = slices_observed(names, &ctx.stores.slices(names).await?);
    let pods_rejected = if crate::plan::pods_missing(group, &pods) {
        pod_creation_failure(ctx, group, names).await?
    } else {
        None
    };

    let gateway_api = ctx.gateway_api.installed(client).await;
    if gateway_api {
        // The CRDs may have been installed after the operator started.
        ctx.stores.start_gateway_api();
    }
    let mut route = None;
    let mut missing_gateways = Vec::new();
    if let Some(gateway) = &group.spec.traffic.gateway {
        if gateway_api {
            route = read_route(ctx, ns, &names.members(), true)
                .await?
                .map(|r| route_observed(&r.data, names));
            for parent in &gateway.parent_refs {
                let gns = parent.namespace.as_deref().unwrap_or(ns);
                if !ctx.stores.gateway_exists(gns, &parent.name).await? {
                    missing_gateways.push(format!("{gns}/{}", parent.name));
                }
            }
        }
    } else if gateway_api {
        // Only to notice a route that should go away.
        if let Ok(Some(r)) = read_route(ctx, ns, &names.members(), false).await
            && r.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        {
            route = Some(route_observed(&r.data, names));
        }
    }

    Ok(Observed {
        now_ms: jiff::Timestamp::now().as_millisecond(),
        pods,
        agents,
        probes,
        routed_epoch: slices.routed_epoch,
        rw_version: slices.rw_version,
        routed_addresses: slices.rw,
        ro_addresses: slices.ro,
        r_addresses: slices.r,
        gateway_api: gateway_api && group.spec.traffic.gateway.is_some(),
        route,
        tls_hash: tls.hash.clone(),
        ca_hash: tls.ca_hash.clone(),
        ca_lost: tls.ca_lost.clone(),
        missing_gateways,
        // Found once the plan names the objects (`name_conflicts`).
        name_conflicts: Vec::new(),
        services: ctx.stores.services(names).await?,
        pods_rejected,
    })
}

/// How recent a StatefulSet's failure to create a pod must be to be reported.
const POD_CREATION_FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// The latest `FailedCreate` Event of the group's StatefulSets in the last few minutes: the
/// API server refused a pod (Pod Security admission, a quota, a webhook), and only the
/// StatefulSet's Events say why. Read (from the watch's store) only while pods are missing.
async fn pod_creation_failure(
    ctx: &Context,
    group: &ReplicaGroup,
    names: &GroupNames,
) -> Result<Option<String>, Error> {
    let mut statefulsets = vec![names.members()];
    if group.spec.effective_witnesses() > 0 {
        statefulsets.push(names.witnesses());
    }
    let failures = ctx.stores.failed_creates(names, &statefulsets).await?;
    let now = jiff::Timestamp::now();
    let latest = failures
        .into_iter()
        .filter_map(|e| {
            let at = e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
                .or_else(|| e.event_time.as_ref().map(|t| t.0))?;
            Some((at, e))
        })
        .filter(|(at, _)| now.duration_since(*at).unsigned_abs() <= POD_CREATION_FAILURE_WINDOW)
        .max_by_key(|(at, _)| *at);
    Ok(latest.map(|(_, e)| {
        format!(
            "StatefulSet {}: {}",
            e.involved_object.name.as_deref().unwrap_or_default(),
            e.message.as_deref().unwrap_or_default()
        )
    }))
}

/// Who owns `meta` instead of the group, for a NameConflict message.
pub(super) fn owner_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    match owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or(owners.first())
    {
        Some(o) => format!("owned by {} {}", o.kind, o.name),
        None => "no owner".to_owned(),
    }
}

/// Whether `meta` belongs to `group` (an owner reference with the group's uid).
pub(super) fn owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    group: &ReplicaGroup,
) -> bool {
    let Some(uid) = group.metadata.uid.as_deref() else {
        return false;
    };
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid)
}

/// The objects the plan would write or delete that exist under that name and are not the
/// group's. Each object is read once per operator process: one this process wrote (or found
/// to be the group's and then wrote) is the group's, and a watch event that shows it changed
/// makes it be read again. The HTTPRoute is left out: merging into a route someone else made
/// is how `spec.traffic.gateway` works (plan::merge_route).
pub async fn name_conflicts(
    ctx: &Context,
    group: &ReplicaGroup,
    names: &GroupNames,
    plan: &crate::plan::Plan,
) -> Result<Vec<crate::plan::NameConflict>, Error> {
    let planned = plan
        .writes()
        .into_iter()
        .map(crate::plan::Desired::kind_and_name)
        .chain(plan.delete.iter().map(|o| (o.kind, o.name.clone())))
        .filter(|(kind, _)| *kind != HTTPROUTE_KIND);
    // Read in parallel: after a restart or a re-list this is on the path of a failover's write.
    let reads = planned
        .filter(|(kind, name)| {
            let key = super::applied::ObjectKey::new(kind, &names.namespace, name);
            !ctx.applied.written(&key) && !ctx.applied.deleted(&key)
        })
        .filter_map(|(kind, name)| Some((kind, name, super::apply::api_resource(kind)?)))
        .map(|(kind, name, resource)| async move {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &names.namespace, &resource);
            let found = api
                .get_opt(&name)
                .await
                .context(|| format!("reading {kind} {}/{name}", names.namespace))?;
            Ok::<_, Error>(
                found
                    .filter(|object| !owned_by(&object.metadata, group))
                    .map(|object| crate::plan::NameConflict {
                        kind: kind.to_owned(),
                        name,
                        owner: owner_of(&object.metadata),
                    }),
            )
        });
    let mut conflicts = Vec::new();
    for read in join_all(reads).await {
        conflicts.extend(read?);
    }
    Ok(conflicts)
}

/// The weights of our rule and what each parent Gateway said about the route.
fn route_observed(data: &serde_json::Value, names: &GroupNames) -> RouteObserved {
    let mut weights = BTreeMap::new();
    for rule in data["spec"]["rules"].as_array().into_iter().flatten() {
        if rule["name"] != crate::plan::ROUTE_RULE_NAME {
            continue;
        }
        for backend in rule["backendRefs"].as_array().into_iter().flatten() {
            if let Some(name) = backend["name"]
                .as_str()
                .filter(|n| names.ordinal_of(n).is_some_and(|(w, _)| !w))
            {
                weights.insert(
                    name.to_owned(),
                    backend["weight"].as_i64().unwrap_or(1) as i32,
                );
            }
        }
    }
    let generation = data["metadata"]["generation"].as_i64();
    let mut parents = BTreeMap::new();
    for parent in data["status"]["parents"].as_array().into_iter().flatten() {
        let Some(name) = parent["parentRef"]["name"].as_str() else {
            continue;
        };
        let conditions = parent["conditions"].as_array().cloned().unwrap_or_default();
        let current = |type_: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == type_)
                .is_some_and(|c| {
                    // A condition about an older generation says nothing about the current route.
                    c["status"] == "True"
                        && (generation.is_none()
                            || c["observedGeneration"]
                                .as_i64()
                                .is_none_or(|g| Some(g) >= generation))
                })
        };
        let message = conditions
            .iter()
            .find(|c| c["status"] != "True")
            .map(|c| {
                format!(
                    "{}: {}",
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )
            })
            .unwrap_or_else(|| "not yet reported for this generation".into());
        parents.insert(
            name.to_owned(),
            (current("Accepted"), current("ResolvedRefs"), message),
        );
    }
    RouteObserved { weights, parents }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, PodStatus,
    };
    use k8s_openapi::api::discovery::v1::Endpoint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn names() -> GroupNames {
        GroupNames::new("g", "ns")
    }

    fn pod(name: &str, phase: &str, ip: &str, agent_running: bool) -> Arc<Pod> {
        let agent = ContainerStatus {
            name: AGENT_CONTAINER.into(),
            state: Some(ContainerState {
                running: agent_running.then(ContainerStateRunning::default),
                ..Default::default()
            }),
            ..Default::default()
        };
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: Some(ip.into()),
                init_container_statuses: Some(vec![agent]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn member_pods_in_name_order_with_their_running_ip() {
        let mut terminating = (*pod("g-2", "Running", "10.0.0.3", true)).clone();
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let pods = [
            Arc::new(terminating),
            pod("g-witness-0", "Running", "10.0.0.9", true),
            pod("g-0", "Pending", "10.0.0.1", false),
            pod("other", "Running", "10.0.0.5", true),
        ];
        let observed = member_pods(&names(), &pods);
        let summary: Vec<_> = observed
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.witness,
                    p.ordinal,
                    p.ip.as_deref(),
                    p.agent_running,
                    p.terminating,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("g-0", false, 0, None, false, false),
                ("g-2", false, 2, Some("10.0.0.3"), true, true),
                ("g-witness-0", true, 0, Some("10.0.0.9"), true, false),
            ]
        );
    }

    #[test]
    fn a_member_pod_carries_its_role_label() {
        let mut labelled = (*pod("g-1", "Running", "10.0.0.2", true)).clone();
        labelled.metadata.labels = Some([(ROLE_LABEL.to_owned(), "primary".to_owned())].into());
        let observed = member_pods(
            &names(),
            &[Arc::new(labelled), pod("g-0", "Running", "10.0.0.1", true)],
        );
        let labels: Vec<_> = observed
            .iter()
            .map(|p| (p.name.as_str(), p.role_label.as_deref()))
            .collect();
        assert_eq!(labels, [("g-0", None), ("g-1", Some("primary"))]);
    }

    fn slice(
        name: &str,
        ours: bool,
        epoch: Option<&str>,
        addresses: &[&str],
    ) -> Arc<EndpointSlice> {
        let labels =
            ours.then(|| [(SLICE_MANAGED_BY_LABEL.to_owned(), SLICE_MANAGER.to_owned())].into());
        let annotations = epoch.map(|e| [(EPOCH_ANNOTATION.to_owned(), e.to_owned())].into());
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels,
                annotations,
                resource_version: Some(format!("{name}-{}", ours as u8)),
                ..Default::default()
            },
            endpoints: addresses
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![(*a).into()],
                    ..Default::default()
                })
                .collect(),
            address_type: "IPv4".into(),
            ports: None,
        })
    }

    #[test]
    fn the_slices_say_what_is_routed() {
        let slices = [
            slice("g-rw", true, Some("7"), &["10.0.0.1"]),
            slice("g-ro", true, None, &["10.0.0.2", "10.0.0.3"]),
            slice("g-r", true, None, &[]),
            // Written by someone else (the EndpointSlice controller's label is missing).
            slice("g-rw", false, Some("9"), &["10.0.0.8"]),
        ];
        let observed = slices_observed(&names(), &slices);
        assert_eq!(
            observed,
            SlicesObserved {
                routed_epoch: Some(7),
                // Ours, not the other writer's: the precondition of our next write.
                rw_version: Some("g-rw-1".into()),
                rw: vec!["10.0.0.1".into()],
                ro: vec!["10.0.0.2".into(), "10.0.0.3".into()],
                r: vec![]
            }
        );
        assert_eq!(slices_observed(&names(), &[]), SlicesObserved::default());
    }
}
