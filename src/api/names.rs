//! Names, labels and annotations of what the operator creates for a group. The naming follows
//! CloudNativePG's shape (`NAME-rw`, `NAME-ro`, `NAME-r`) so users recognise it.

/// Label on every object of a group (and the member pods' selector).
pub const GROUP_LABEL: &str = "quorate.dev/group";
/// What an object is to its group: one of the `COMPONENT_*` values.
pub const COMPONENT_LABEL: &str = "quorate.dev/component";
/// Member pods, their StatefulSet and the PodDisruptionBudget (the scale selector reads it).
pub const COMPONENT_MEMBER: &str = "member";
/// Witness pods and their StatefulSet.
pub const COMPONENT_WITNESS: &str = "witness";
/// Services, EndpointSlices and the HTTPRoute.
pub const COMPONENT_ROUTING: &str = "routing";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "quorate";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label the EndpointSlice controller uses to tie a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const SLICE_MANAGER: &str = "quorate-operator.quorate.dev";
/// The fencing epoch the `-rw` EndpointSlice routes to; routing never goes back to an older one.
pub const EPOCH_ANNOTATION: &str = "quorate.dev/epoch";
/// The weight published for a member (on its per-member Service).
pub const WEIGHT_ANNOTATION: &str = "quorate.dev/weight";
/// Request a planned switchover (`kubectl quorate switchover`): the target member, or empty for
/// the best candidate. The operator performs it and removes the annotation.
pub const SWITCHOVER_ANNOTATION: &str = "quorate.dev/switchover-to";
/// Hash of the group's TLS material on the pod template: new certificates roll the members.
pub const TLS_HASH_ANNOTATION: &str = "quorate.dev/tls-hash";
/// Hash of the group CA: on the members' Secret (which CA issued it) and on the pod template
/// (which CA the pod trusts). Pods that trust a replaced CA restart together: they cannot talk
/// to members that trust the new one, so rolling them one at a time would never finish.
pub const CA_HASH_ANNOTATION: &str = "quorate.dev/ca-hash";
/// Hash of the pod template the operator rendered, on the template itself: a pod whose value
/// differs from its StatefulSet's is on an older template and is rolled (`plan::roll`).
pub const TEMPLATE_HASH_ANNOTATION: &str = "quorate.dev/template-hash";
/// Set on a group's pod template by `kubectl quorate restart`: a new template, so the operator
/// rolls every member onto it (as `kubectl.kubernetes.io/restartedAt` does for Deployments).
pub const RESTARTED_AT_ANNOTATION: &str = "quorate.dev/restarted-at";
/// Pod label set by the StatefulSet controller; per-member Services select on it.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The operator's server-side apply field manager.
pub const FIELD_MANAGER: &str = "quorate-operator";

pub const AGENT_CONTAINER: &str = "quorate-agent";
/// The init container that copies the supervisor into member pods of groups with hooks.
pub const INSTALL_CONTAINER: &str = "quorate-install";
pub const AGENT_GRPC_PORT: i32 = 7470;
pub const AGENT_HTTP_PORT: i32 = 7471;
/// Port names of the agent container (the gRPC one also on the peers Service).
pub const AGENT_GRPC_PORT_NAME: &str = "quorate-grpc";
pub const AGENT_HTTP_PORT_NAME: &str = "quorate-http";
/// The operator's own names in member pods start with this; a template volume that does is
/// refused.
pub const RESERVED_PREFIX: &str = "quorate-";
/// Volumes the operator adds to member pods.
pub const RUN_VOLUME: &str = "quorate-run";
pub const DATA_VOLUME: &str = "quorate-data";
pub const TLS_VOLUME: &str = "quorate-tls";
/// The supervisor's volume (groups with hooks), mounted at [`BIN_DIR`].
pub const BIN_VOLUME: &str = "quorate-bin";
pub const RUN_DIR: &str = "/run/quorate";
pub const BIN_DIR: &str = "/run/quorate/bin";
/// Where the workload finds the supervisor: `command: [/run/quorate/bin/quorate-run, --, ...]`.
pub const SUPERVISOR_PATH: &str = "/run/quorate/bin/quorate-run";
/// The supervisor in the Quorate image.
pub const SUPERVISOR_IN_IMAGE: &str = "/quorate-run";
pub const ROLE_FILE: &str = "/run/quorate/role";
pub const DATA_DIR: &str = "/var/lib/quorate";
pub const TLS_DIR: &str = "/etc/quorate/tls";

/// The Gateway API group (Gateway, HTTPRoute) and the HTTPRoute version the operator writes.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
pub const HTTPROUTE_API_VERSION: &str = "gateway.networking.k8s.io/v1";
pub const HTTPROUTE_KIND: &str = "HTTPRoute";

/// The member's role on member and witness pods (`primary`, `backup`, `active`, `witness`), for
/// NetworkPolicies, monitoring and humans. Never used for routing: `primary` follows the `-rw`
/// EndpointSlice, written first.
pub const ROLE_LABEL: &str = "quorate.dev/role";

/// The names of one group's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupNames {
    pub name: String,
    pub namespace: String,
}

impl GroupNames {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
        }
    }
    /// The members' StatefulSet, the PodDisruptionBudget and the HTTPRoute share the group's name.
    pub fn members(&self) -> String {
        self.name.clone()
    }
    pub fn witnesses(&self) -> String {
        format!("{}-witness", self.name)
    }
    pub fn rw(&self) -> String {
        format!("{}-rw", self.name)
    }
    pub fn ro(&self) -> String {
        format!("{}-ro", self.name)
    }
    pub fn r(&self) -> String {
        format!("{}-r", self.name)
    }
    pub fn peers(&self) -> String {
        format!("{}-peers", self.name)
    }
    /// Member `i` (pod, per-member Service).
    pub fn member(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }
    pub fn witness(&self, ordinal: u32) -> String {
        format!("{}-witness-{ordinal}", self.name)
    }
    /// Secret with the group CA and the operator's client certificate (never mounted in pods).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.name)
    }
    /// Secret with the members' certificate, mounted into the agents.
    pub fn agent_tls_secret(&self) -> String {
        format!("{}-agent-tls", self.name)
    }
    /// Stable DNS name of a member's agent, through the headless peers Service.
    pub fn agent_host(&self, member: &str) -> String {
        format!(
            "{member}.{}.{}.svc.cluster.local",
            self.peers(),
            self.namespace
        )
    }
    pub fn agent_address(&self, member: &str) -> String {
        format!("{}:{AGENT_GRPC_PORT}", self.agent_host(member))
    }
    /// DNS names the members' shared certificate covers (wildcards under the peers Service).
    pub fn agent_dns_names(&self) -> Vec<String> {
        let peers = self.peers();
        let ns = &self.namespace;
        vec![
            format!("*.{peers}.{ns}.svc.cluster.local"),
            format!("*.{peers}.{ns}.svc"),
            format!("*.{peers}.{ns}"),
            format!("*.{peers}"),
        ]
    }
    /// The ordinal of a member or witness name of this group (`cache-2` -> 2, `cache-witness-0` -> 0).
    pub fn ordinal_of(&self, member: &str) -> Option<(bool, u32)> {
        if let Some(rest) = member.strip_prefix(&format!("{}-witness-", self.name)) {
            return parse_ordinal(rest).map(|o| (true, o));
        }
        member
            .strip_prefix(&format!("{}-", self.name))
            .and_then(parse_ordinal)
            .map(|o| (false, o))
    }
}

fn parse_ordinal(s: &str) -> Option<u32> {
    // No leading zeros or signs: `cache-01` is not member 1.
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_only_member_names_of_this_group() {
        let n = GroupNames::new("cache", "shop");
        assert_eq!(n.ordinal_of("cache-2"), Some((false, 2)));
        assert_eq!(n.ordinal_of("cache-witness-0"), Some((true, 0)));
        assert_eq!(n.ordinal_of("cache-01"), None);
        assert_eq!(n.ordinal_of("cache-rw"), None);
        assert_eq!(n.ordinal_of("other-1"), None);
        assert_eq!(
            n.agent_address("cache-1"),
            "cache-1.cache-peers.shop.svc.cluster.local:7470"
        );
    }

    #[test]
    fn names_that_spell_each_other_agree() {
        // Written out (a const cannot be built from another), so held together here.
        assert_eq!(HTTPROUTE_API_VERSION, format!("{GATEWAY_API_GROUP}/v1"));
        for reserved in [
            AGENT_CONTAINER,
            AGENT_GRPC_PORT_NAME,
            AGENT_HTTP_PORT_NAME,
            RUN_VOLUME,
            DATA_VOLUME,
            TLS_VOLUME,
        ] {
            assert!(reserved.starts_with(RESERVED_PREFIX), "{reserved}");
        }
    }
}
