//! Observe: everything one reconcile reads — member pods, the agents' state (and direct probes
//! of members that are not in the group yet), the routing objects as applied, the HTTPRoute's
//! status as the Gateway wrote it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client, ResourceExt};

use super::tls::GroupTls;
use super::{Context, Error, KubeContext};
use crate::api::names::*;
use crate::api::ReplicaGroup;
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
        let installed = matches!(crds.get_opt("httproutes.gateway.networking.k8s.io").await, Ok(Some(_)));
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((installed, Instant::now()));
        installed
    }
}

pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"))
}

fn gateway_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"))
}

fn member_pod(names: &GroupNames, pod: &Pod) -> Option<MemberPod> {
    let name = pod.name_any();
    let (witness, ordinal) = names.ordinal_of(&name)?;
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    // The agent is a native sidecar (an init container) in members, a container in witnesses.
    let agent_running = status
        .into_iter()
        .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
        .any(|c| c.name == AGENT_CONTAINER && c.state.as_ref().is_some_and(|st| st.running.is_some()));
    Some(MemberPod {
        name,
        witness,
        ordinal,
        ip: status.and_then(|s| s.pod_ip.clone()).filter(|_| running),
        agent_running,
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

pub async fn observe(ctx: &Context, group: &ReplicaGroup, names: &GroupNames, tls: &GroupTls) -> Result<Observed, Error> {
    let client = &ctx.client;
    let ns = &names.namespace;
    let selector = format!("{GROUP_LABEL}={}", names.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods: Vec<MemberPod> = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .context(|| format!("listing the pods of {ns}/{}", names.name))?
        .items
        .iter()
        .filter_map(|p| member_pod(names, p))
        .collect();

    // Before anything dials a member: a replaced pod is reachable by its new IP at once.
    ctx.hub.learn_pod_ips(pods.iter().map(|p| (names.agent_address(&p.name), p.ip.as_deref().and_then(|ip| ip.parse().ok()))));
    let agents = ctx.hub.observe(ns, &names.name);
    // Ask members directly who they are when the group's view cannot say: before bootstrap,
    // new members, and members that stopped reporting (a lost volume shows up as a new id).
    let view = match &agents {
        AgentsObserved::Connected { view, .. } => Some(view),
        _ => None,
    };
    let to_probe: Vec<&MemberPod> = pods
        .iter()
        .filter(|p| p.agent_running && !p.terminating)
        .filter(|p| view.is_none_or(|v| !v.initialized || v.members.iter().find(|m| m.name == p.name).is_none_or(|m| !m.healthy)))
        .collect();
    let probes = join_all(to_probe.iter().map(|p| {
        let address = names.agent_address(&p.name);
        let tls = tls.client.clone();
        let hub = &ctx.hub;
        async move { (p.name.clone(), hub.probe(&address, Some(tls)).await) }
    }))
    .await
    .into_iter()
    .filter_map(|(name, r)| r.ok().map(|probe| (name, probe)))
    .collect();

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let slices = slices
        .list(&ListParams::default().labels(&format!("{selector},{SLICE_MANAGED_BY_LABEL}={SLICE_MANAGER}")))
        .await
        .context(|| format!("listing the EndpointSlices of {ns}/{}", names.name))?
        .items;
    let addresses = |name: &str| -> Vec<String> {
        slices
            .iter()
            .filter(|s| s.metadata.name.as_deref() == Some(name))
            .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
            .collect()
    };
    let routed_epoch = slices
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(names.rw().as_str()))
        .and_then(|s| s.metadata.annotations.as_ref()?.get(EPOCH_ANNOTATION)?.parse().ok());

    let mut gateway_api = false;
    let mut route = None;
    let mut missing_gateways = Vec::new();
    if let Some(gateway) = &group.spec.traffic.gateway {
        gateway_api = ctx.gateway_api.installed(client).await;
        if gateway_api {
            let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &http_route_resource());
            route = routes
                .get_opt(&names.members())
                .await
                .context(|| format!("reading HTTPRoute {ns}/{}", names.members()))?
                .map(|r| route_observed(&r.data, names));
            for parent in &gateway.parent_refs {
                let gns = parent.namespace.as_deref().unwrap_or(ns);
                let gateways: Api<DynamicObject> = Api::namespaced_with(client.clone(), gns, &gateway_resource());
                if gateways.get_opt(&parent.name).await.context(|| format!("reading Gateway {gns}/{}", parent.name))?.is_none() {
                    missing_gateways.push(format!("{gns}/{}", parent.name));
                }
            }
        }
    } else {
        // Only to notice a route that should go away.
        if ctx.gateway_api.installed(client).await {
            let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &http_route_resource());
            if let Ok(Some(r)) = routes.get_opt(&names.members()).await
                && r.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            {
                route = Some(route_observed(&r.data, names));
            }
        }
    }

    Ok(Observed {
        now_ms: jiff::Timestamp::now().as_millisecond(),
        pods,
        agents,
        probes,
        routed_epoch,
        routed_addresses: addresses(&names.rw()),
        ro_addresses: addresses(&names.ro()),
        r_addresses: addresses(&names.r()),
        gateway_api,
        route,
        tls_hash: tls.hash.clone(),
        missing_gateways,
    })
}

/// The weights of our rule and what each parent Gateway said about the route.
fn route_observed(data: &serde_json::Value, names: &GroupNames) -> RouteObserved {
    let mut weights = BTreeMap::new();
    for rule in data["spec"]["rules"].as_array().into_iter().flatten() {
        if rule["name"] != crate::plan::ROUTE_RULE_NAME {
            continue;
        }
        for backend in rule["backendRefs"].as_array().into_iter().flatten() {
            if let Some(name) = backend["name"].as_str().filter(|n| names.ordinal_of(n).is_some_and(|(w, _)| !w)) {
                weights.insert(name.to_owned(), backend["weight"].as_i64().unwrap_or(1) as i32);
            }
        }
    }
    let generation = data["metadata"]["generation"].as_i64();
    let mut parents = BTreeMap::new();
    for parent in data["status"]["parents"].as_array().into_iter().flatten() {
        let Some(name) = parent["parentRef"]["name"].as_str() else { continue };
        let conditions = parent["conditions"].as_array().cloned().unwrap_or_default();
        let current = |type_: &str| {
            conditions.iter().find(|c| c["type"] == type_).is_some_and(|c| {
                // A condition about an older generation says nothing about the current route.
                c["status"] == "True" && (generation.is_none() || c["observedGeneration"].as_i64().is_none_or(|g| Some(g) >= generation))
            })
        };
        let message = conditions
            .iter()
            .find(|c| c["status"] != "True")
            .map(|c| format!("{}: {}", c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")))
            .unwrap_or_else(|| "not yet reported for this generation".into());
        parents.insert(name.to_owned(), (current("Accepted"), current("ResolvedRefs"), message));
    }
    RouteObserved { weights, parents }
}
