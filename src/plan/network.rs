//! The group's NetworkPolicy: the agents' gRPC port only from the group's own pods and the
//! operator. Where the cluster's network plugin does not enforce NetworkPolicies it changes
//! nothing; where it does, it is what keeps other pods from even starting a TLS handshake with
//! an agent (docs/security.md, "Network").

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::members::{group_selector, meta};
use super::{Desired, OperatorSettings};
use crate::api::names::*;
use crate::api::{PortProtocol, ReplicaGroup};

/// The label every namespace carries with its own name (set by the API server).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The policy `NAME`, or `None` when the group or the operator turned policies off.
pub(super) fn network_policy(
    group: &ReplicaGroup,
    names: &GroupNames,
    settings: &OperatorSettings,
) -> Option<Desired> {
    if !settings.network_policies || !group.spec.network_policy.enabled {
        return None;
    }
    let port = |number: i32, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(protocol.to_owned()),
        ..Default::default()
    };
    let group_pods = NetworkPolicyPeer {
        pod_selector: Some(group_selector(names)),
        ..Default::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_owned(),
                settings.operator_pods.namespace.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(settings.operator_pods.labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // From anywhere: the kubelet's probes and Prometheus on the HTTP port, the workload's
    // clients (and its own replication between members) on the workload's ports.
    let mut open = vec![port(AGENT_HTTP_PORT, "TCP")];
    open.extend(
        workload_ports(group)
            .into_iter()
            .map(|(number, protocol)| port(number, protocol)),
    );
    Some(Desired::NetworkPolicy(Box::new(NetworkPolicy {
        metadata: meta(names, names.members(), COMPONENT_MEMBER),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(group_selector(names)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![group_pods, operator]),
                    ports: Some(vec![port(AGENT_GRPC_PORT, "TCP")]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(open),
                },
            ]),
            ..Default::default()
        }),
    })))
}

/// The workload's ports: `spec.ports` and the ports its containers declare (the agent's own
/// are left out: the gRPC port must not be opened to everyone by a workload that declares it).
fn workload_ports(group: &ReplicaGroup) -> BTreeSet<(i32, &'static str)> {
    // A container port's protocol is one of these three (the API server checks it).
    let protocol = |p: Option<&str>| match p {
        Some("UDP") => PortProtocol::Udp,
        Some("SCTP") => PortProtocol::Sctp,
        _ => PortProtocol::Tcp,
    };
    let declared = group
        .spec
        .template
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| (p.container_port, protocol(p.protocol.as_deref())));
    let served = group
        .spec
        .ports
        .iter()
        .map(|p| (p.port, p.protocol.unwrap_or(PortProtocol::Tcp)));
    declared
        .chain(served)
        .map(|(number, protocol)| (number, protocol.name()))
        .filter(|(number, _)| ![AGENT_GRPC_PORT, AGENT_HTTP_PORT].contains(number))
        .collect()
}
