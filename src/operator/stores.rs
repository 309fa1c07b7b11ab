//! Reflector stores of the objects every reconcile reads (member pods, the operator's
//! EndpointSlices, the StatefulSets' `FailedCreate` Events, and with the Gateway API its
//! HTTPRoutes and the Gateways), kept by watches
//! instead of LISTs per reconcile. Each watch also triggers a reconcile of the group an object
//! belongs to.
//!
//! The same watches, and metadata-only watches of the other kinds the operator writes
//! (StatefulSets, Services, PodDisruptionBudgets, Secrets), tell the caches of what was written
//! (operator/applied.rs, operator/tls.rs) when an object is no longer as the operator left it.
//!
//! The watches run in tasks of their own, not inside the controller: a controller busy with as
//! many reconciles as its concurrency allows stops polling its inputs, and reconciles waiting
//! for a store that only the controller's polling fills would never finish.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::Error;
use super::applied::AppliedCache;
use super::observe::{gateway_resource, http_route_resource};
use crate::api::ReplicaGroup;
use crate::api::names::{GROUP_LABEL, GroupNames, HTTPROUTE_KIND, MANAGED_BY, MANAGED_BY_LABEL};

pub type GroupRef = ObjectRef<DeserializeGuard<ReplicaGroup>>;

/// How long a reconcile waits for a store's first LIST before it fails (and is retried).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long our own write of an EndpointSlice is preferred over an older stored version; the
/// watch delivers it within milliseconds, so this only bounds a lost event.
const WRITTEN_TTL: Duration = Duration::from_secs(30);

/// Our latest write of each EndpointSlice ((namespace, name) -> the server's answer, when).
type Written = HashMap<(String, String), (Arc<EndpointSlice>, Instant)>;

pub struct Stores {
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    /// The operator's Services, metadata only: which per-member Services exist (a scale-down
    /// deletes those of removed members).
    services: Store<PartialObjectMeta<Service>>,
    /// StatefulSets' `FailedCreate` Events (any StatefulSet's: Events carry no labels to select
    /// the operator's by): why the API server refuses a group's pods. A LIST per reconcile of a
    /// group whose pods are refused read every Event of the namespace from etcd, and 1000 such
    /// groups saturated the API server.
    failed_creates: Store<Event>,
    /// Read-your-writes for the routing slices: a reconcile right after a routing switch (the
    /// group's state stream triggers them within milliseconds) must see the switch, not the
    /// stored version the watch has not replaced yet; its events and RoutingConverged are
    /// decided from what is routed.
    written: Mutex<Written>,
    /// Set once the Gateway API CRDs were seen installed.
    gateway_api: OnceLock<GatewayStores>,
    client: Client,
    groups: Store<DeserializeGuard<ReplicaGroup>>,
    trigger: mpsc::UnboundedSender<GroupRef>,
    applied: Arc<AppliedCache>,
}

struct GatewayStores {
    routes: Store<DynamicObject>,
    gateways: Store<DynamicObject>,
}

/// The objects the operator writes carry its managed-by label.
fn owned() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
}

/// The changes of one kind of object the operator writes and the controller owns (the trigger
/// stream of `Controller::owns_stream`): metadata only, as `Controller::owns` watches them,
/// shown to the cache of what was applied on the way, and only those that differ from it.
pub fn owned_changes<K>(
    client: Client,
    applied: Arc<AppliedCache>,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + k8s_openapi::Resource,
    K: Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(Api::<PartialObjectMeta<K>>::all(client), owned())
        .default_backoff()
        // Only what differs from what was applied triggers a reconcile: a status update (the
        // StatefulSet controller's) or our own write coming back has nothing to repair.
        .try_filter(move |e| {
            futures::future::ready(applied.watched(<K as k8s_openapi::Resource>::KIND, e))
        })
        .touched_objects()
}

/// The group an object carries in its group label.
fn group_of(obj: &impl ResourceExt) -> Option<GroupRef> {
    Some(ObjectRef::new(obj.labels().get(GROUP_LABEL)?).within(&obj.namespace()?))
}

/// The Events the `failed_creates` store keeps (selected on the server).
const FAILED_CREATE_SELECTOR: &str = "involvedObject.kind=StatefulSet,reason=FailedCreate";

/// An Event seen for the first time: not yet counted again, no series.
fn first_occurrence(event: &Event) -> bool {
    event.count.unwrap_or(1) <= 1 && event.series.is_none()
}

/// The group whose member or witness StatefulSet an Event is about: a lookup by name (the
/// Events come in bursts while the StatefulSet controller retries, with many groups).
fn groups_of_statefulset(
    groups: &Store<DeserializeGuard<ReplicaGroup>>,
    event: &Event,
) -> Vec<GroupRef> {
    let (Some(namespace), Some(statefulset)) = (
        event.involved_object.namespace.as_deref(),
        event.involved_object.name.as_deref(),
    ) else {
        return Vec::new();
    };
    // `NAME` or `NAME-witness`: the candidates are the name and every shorter prefix ending
    // before a '-'; the one whose derived name is the StatefulSet's is the group.
    std::iter::once(statefulset)
        .chain(
            statefulset
                .rmatch_indices('-')
                .map(|(i, _)| &statefulset[..i]),
        )
        .filter(|candidate| {
            let names = GroupNames::new(*candidate, namespace);
            names.members() == statefulset || names.witnesses() == statefulset
        })
        .map(|candidate| ObjectRef::new(candidate).within(namespace))
        .filter(|group| groups.get(group).is_some())
        .collect()
}

/// Groups whose `spec.traffic.gateway.parentRefs` name `namespace/name`.
fn groups_of_gateway(
    groups: &Store<DeserializeGuard<ReplicaGroup>>,
    namespace: &str,
    name: &str,
) -> Vec<GroupRef> {
    groups
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|g| {
            let ns = g.namespace().unwrap_or_default();
            g.spec.traffic.gateway.as_ref().is_some_and(|gw| {
                gw.parent_refs
                    .iter()
                    .any(|p| p.name == name && p.namespace.as_deref().unwrap_or(&ns) == namespace)
            })
        })
        .map(|g| ObjectRef::new(&g.name_any()).within(&g.namespace().unwrap_or_default()))
        .collect()
}

/// Runs a watch into `writer` until the process ends, showing every event to `seen` and sending
/// the groups `map` names for every object seen (added, changed, deleted, re-listed) to
/// `trigger`.
fn spawn_reflector<K, I>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    trigger: mpsc::UnboundedSender<GroupRef>,
    seen: impl Fn(&watcher::Event<K>) + Send + 'static,
    map: impl Fn(&K) -> I + Send + 'static,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
    I: IntoIterator<Item = GroupRef> + 'static,
{
    let stream = watcher(api, config)
        .default_backoff()
        // Nobody reads managedFields; they are most of a stored pod's size.
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .inspect_ok(seen)
        .reflect(writer)
        .touched_objects();
    tokio::spawn(trigger_groups(what, stream, trigger, map));
}

/// Like `spawn_reflector` for dynamic objects (the Gateway API has no typed crate here).
fn spawn_dynamic_reflector(
    what: &'static str,
    api: Api<DynamicObject>,
    config: watcher::Config,
    writer: Writer<DynamicObject>,
    trigger: mpsc::UnboundedSender<GroupRef>,
    seen: impl Fn(&watcher::Event<DynamicObject>) + Send + 'static,
    map: impl Fn(&DynamicObject) -> Vec<GroupRef> + Send + 'static,
) {
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|o: &mut DynamicObject| o.metadata.managed_fields = None)
        .inspect_ok(seen)
        .reflect(writer)
        .touched_objects();
    tokio::spawn(trigger_groups(what, stream, trigger, map));
}

async fn trigger_groups<K, I>(
    what: &'static str,
    stream: impl Stream<Item = Result<K, watcher::Error>>,
    trigger: mpsc::UnboundedSender<GroupRef>,
    map: impl Fn(&K) -> I,
) where
    I: IntoIterator<Item = GroupRef>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(obj) => {
                for group in map(&obj) {
                    if trigger.send(group).is_err() {
                        return;
                    }
                }
            }
            // The watcher retries with backoff; the store keeps its last state meanwhile.
            Err(e) => debug!(error = %e, "watching {what}"),
        }
    }
}

impl Stores {
    /// Starts the pod, EndpointSlice and Service watches; the Gateway API ones start with
    /// `start_gateway_api`.
    pub fn start(
        client: Client,
        groups: Store<DeserializeGuard<ReplicaGroup>>,
        applied: Arc<AppliedCache>,
    ) -> (Arc<Stores>, impl Stream<Item = GroupRef> + Send + 'static) {
        let (trigger, triggers) = mpsc::unbounded_channel();
        let pods = Writer::<Pod>::default();
        let slices = Writer::<EndpointSlice>::default();
        let services = Writer::<PartialObjectMeta<Service>>::default();
        let failed_creates = Writer::<Event>::default();
        let stores = Arc::new(Stores {
            pods: pods.as_reader(),
            slices: slices.as_reader(),
            services: services.as_reader(),
            failed_creates: failed_creates.as_reader(),
            written: Mutex::default(),
            gateway_api: OnceLock::new(),
            client: client.clone(),
            groups,
            trigger: trigger.clone(),
            applied: applied.clone(),
        });
        // Member pods: a terminating primary, a new pod IP, a restarted member. The cache of
        // what was applied learns of them too: the operator writes their role label.
        let pods_applied = applied.clone();
        spawn_reflector(
            "pods",
            Api::all(client.clone()),
            watcher::Config::default().labels(GROUP_LABEL),
            pods,
            trigger.clone(),
            move |e| {
                pods_applied.watched(<Pod as k8s_openapi::Resource>::KIND, e);
            },
            group_of,
        );
        // A StatefulSet's refused pod: the group reports it at once. Only the first occurrence
        // triggers: the StatefulSet controller retries and the Event's count goes up with
        // every retry, which changes nothing the group reports (at 1000 pod-less groups those
        // reconciles were most of the operator's idle CPU); the resync reads the rest.
        let failed_groups = stores.groups.clone();
        spawn_reflector(
            "FailedCreate Events",
            Api::all(client.clone()),
            watcher::Config::default().fields(FAILED_CREATE_SELECTOR),
            failed_creates,
            trigger.clone(),
            |_| {},
            move |e: &Event| {
                if first_occurrence(e) {
                    groups_of_statefulset(&failed_groups, e)
                } else {
                    Vec::new()
                }
            },
        );
        let services_applied = applied.clone();
        // The operator's EndpointSlices (the same selector as for its other objects).
        spawn_reflector(
            "EndpointSlices",
            Api::all(client.clone()),
            owned(),
            slices,
            trigger.clone(),
            move |e| {
                applied.watched(<EndpointSlice as k8s_openapi::Resource>::KIND, e);
            },
            group_of,
        );
        // The operator's Services (metadata): kept in a store, and, like the other kinds the
        // operator owns, a change that differs from what it applied triggers the group.
        let services = watcher(
            Api::<PartialObjectMeta<Service>>::all(client.clone()),
            owned(),
        )
        .default_backoff()
        .modify(|o: &mut PartialObjectMeta<Service>| o.metadata.managed_fields = None)
        .reflect(services)
        .try_filter(move |e| {
            futures::future::ready(
                services_applied.watched(<Service as k8s_openapi::Resource>::KIND, e),
            )
        })
        .touched_objects();
        tokio::spawn(trigger_groups(
            "Services",
            services,
            trigger.clone(),
            |s: &PartialObjectMeta<Service>| group_of(s),
        ));
        (
            stores,
            tokio_stream::wrappers::UnboundedReceiverStream::new(triggers),
        )
    }

    /// Starts the HTTPRoute and Gateway watches, once: called when the Gateway API CRDs are
    /// found installed, which may be long after the operator started.
    pub fn start_gateway_api(&self) {
        if self.gateway_api.get().is_some() {
            return;
        }
        let routes = Writer::<DynamicObject>::new(http_route_resource());
        let gateways = Writer::<DynamicObject>::new(gateway_resource());
        if self
            .gateway_api
            .set(GatewayStores {
                routes: routes.as_reader(),
                gateways: gateways.as_reader(),
            })
            .is_err()
        {
            return; // another reconcile started them meanwhile
        }
        info!("the Gateway API is installed: watching HTTPRoutes and Gateways");
        let route_api = Api::all_with(self.client.clone(), &http_route_resource());
        // A Gateway controller's status update or another writer's change of the route.
        let applied = self.applied.clone();
        spawn_dynamic_reflector(
            "HTTPRoutes",
            route_api,
            owned(),
            routes,
            self.trigger.clone(),
            // Every route event triggers: the Gateway's status is what RoutingConverged reads.
            move |e| {
                applied.watched(HTTPROUTE_KIND, e);
            },
            |r| group_of(r).into_iter().collect(),
        );
        // A Gateway created after the group, or deleted.
        let groups = self.groups.clone();
        let gateway_api = Api::all_with(self.client.clone(), &gateway_resource());
        spawn_dynamic_reflector(
            "Gateways",
            gateway_api,
            watcher::Config::default(),
            gateways,
            self.trigger.clone(),
            |_| {},
            move |g| groups_of_gateway(&groups, &g.namespace().unwrap_or_default(), &g.name_any()),
        );
    }

    async fn ready<K: Resource + Clone>(store: &Store<K>, what: &str) -> Result<(), Error>
    where
        K::DynamicType: Eq + Hash + Clone,
    {
        match tokio::time::timeout(READY_TIMEOUT, store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Error::StoreNotReady {
                what: what.to_owned(),
            }),
        }
    }

    /// The group's pods (those with its group label), once the first LIST is in.
    pub async fn pods(&self, names: &GroupNames) -> Result<Vec<Arc<Pod>>, Error> {
        Self::ready(&self.pods, "pods").await?;
        Ok(self.pods.state_filter(|p| in_group(p, names)))
    }

    /// The group's operator-written EndpointSlices, once the first LIST is in.
    pub async fn slices(&self, names: &GroupNames) -> Result<Vec<Arc<EndpointSlice>>, Error> {
        Self::ready(&self.slices, "EndpointSlices").await?;
        let stored = self.slices.state_filter(|s| in_group(s, names));
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        Ok(with_written(stored, &mut written, names, Instant::now()))
    }

    /// The names of the group's Services.
    pub async fn services(&self, names: &GroupNames) -> Result<Vec<String>, Error> {
        Self::ready(&self.services, "Services").await?;
        let mut found: Vec<String> = self
            .services
            .state()
            .iter()
            .filter(|s| in_group(s.as_ref(), names))
            .map(|s| s.name_any())
            .collect();
        found.sort();
        Ok(found)
    }

    /// The `FailedCreate` Events of StatefulSets `statefulsets` of the group's namespace.
    pub async fn failed_creates(
        &self,
        names: &GroupNames,
        statefulsets: &[String],
    ) -> Result<Vec<Arc<Event>>, Error> {
        Self::ready(&self.failed_creates, "FailedCreate Events").await?;
        Ok(self.failed_creates.state_filter(|e| {
            e.involved_object.namespace.as_deref() == Some(names.namespace.as_str())
                && e.involved_object
                    .name
                    .as_ref()
                    .is_some_and(|n| statefulsets.contains(n))
        }))
    }

    /// An EndpointSlice as the API server answered our write of it.
    pub fn wrote_slice(&self, slice: EndpointSlice) {
        let key = (slice.namespace().unwrap_or_default(), slice.name_any());
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (Arc::new(slice), Instant::now()));
    }

    /// The operator's HTTPRoute `namespace/name`: `None` while the route watch is not started or
    /// has not listed yet (the caller reads the API instead).
    pub fn route(&self, namespace: &str, name: &str) -> Option<Option<Arc<DynamicObject>>> {
        let stores = self.gateway_api.get()?;
        is_ready(&stores.routes).then(|| {
            stores
                .routes
                .get(&ObjectRef::new_with(name, http_route_resource()).within(namespace))
        })
    }

    /// Whether Gateway `namespace/name` exists: `None` while the Gateway watch is not started or
    /// has not listed yet.
    /// Whether the Gateway `namespace/name` exists, once the Gateway watch has listed (it starts
    /// when the Gateway API CRDs are found, `start_gateway_api`).
    pub async fn gateway_exists(&self, namespace: &str, name: &str) -> Result<bool, Error> {
        let stores = self.gateway_api.get().ok_or_else(|| Error::StoreNotReady {
            what: "Gateways".to_owned(),
        })?;
        Self::ready(&stores.gateways, "Gateways").await?;
        Ok(stores
            .gateways
            .get(&ObjectRef::new_with(name, gateway_resource()).within(namespace))
            .is_some())
    }
}

/// The group's stored slices with our own later writes in place of the versions they replaced.
/// A write is forgotten once the store holds it (the same resourceVersion) or a newer version
/// (a larger one, when both are numbers, as etcd's revisions are), or after `WRITTEN_TTL`.
fn with_written(
    mut stored: Vec<Arc<EndpointSlice>>,
    written: &mut Written,
    names: &GroupNames,
    now: Instant,
) -> Vec<Arc<EndpointSlice>> {
    let version = |s: &EndpointSlice| s.metadata.resource_version.clone().unwrap_or_default();
    written.retain(|(ns, name), (ours, at)| {
        if ns != &names.namespace || !in_group(ours.as_ref(), names) {
            return now.saturating_duration_since(*at) < WRITTEN_TTL;
        }
        if now.saturating_duration_since(*at) >= WRITTEN_TTL {
            return false;
        }
        let position = stored
            .iter()
            .position(|s| s.metadata.name.as_deref() == Some(name.as_str()));
        if let Some(i) = position {
            let (theirs, mine) = (version(&stored[i]), version(ours));
            let caught_up = theirs == mine
                || matches!((theirs.parse::<u64>(), mine.parse::<u64>()), (Ok(t), Ok(m)) if t > m);
            if caught_up {
                return false;
            }
            stored[i] = ours.clone();
        } else {
            stored.push(ours.clone());
        }
        true
    });
    stored
}

/// Whether the store's first LIST is in (without waiting for it).
fn is_ready<K: Resource + Clone>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

fn in_group(obj: &impl ResourceExt, names: &GroupNames) -> bool {
    obj.namespace().as_deref() == Some(names.namespace.as_str())
        && obj.labels().get(GROUP_LABEL) == Some(&names.name)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(ns: &str, group: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("g-0".into()),
                namespace: Some(ns.into()),
                labels: group.map(|g| [(GROUP_LABEL.to_owned(), g.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn objects_belong_to_the_group_of_their_label_in_their_namespace() {
        let names = GroupNames::new("g", "ns");
        assert!(in_group(&pod("ns", Some("g")), &names));
        assert!(!in_group(&pod("other", Some("g")), &names));
        assert!(!in_group(&pod("ns", Some("h")), &names));
        assert!(!in_group(&pod("ns", None), &names));
        assert_eq!(
            group_of(&pod("ns", Some("g"))),
            Some(ObjectRef::new("g").within("ns"))
        );
        assert_eq!(group_of(&pod("ns", None)), None);
    }

    fn group(
        ns: &str,
        name: &str,
        gateway: Option<serde_json::Value>,
    ) -> DeserializeGuard<ReplicaGroup> {
        let mut spec = serde_json::json!({
            "mode": "PrimaryBackup", "replicas": 3,
            "ports": [{"name": "http", "port": 8080}],
            "health": {"httpGet": {"port": 8080, "path": "/healthz"}},
            "roleChange": {"httpPost": {"port": 8080, "path": "/quorate/role"}},
            "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
        });
        if let Some(gateway) = gateway {
            spec["traffic"] = serde_json::json!({"gateway": gateway});
        }
        let mut g = ReplicaGroup::new(name, serde_json::from_value(spec).expect("fixture spec"));
        g.metadata.namespace = Some(ns.into());
        DeserializeGuard(Ok(g))
    }

    #[test]
    fn a_gateway_triggers_the_groups_that_name_it() {
        let mut writer = Writer::<DeserializeGuard<ReplicaGroup>>::default();
        for g in [
            group(
                "shop",
                "a",
                Some(serde_json::json!({"parentRefs": [{"name": "web"}]})),
            ),
            group(
                "shop",
                "b",
                Some(serde_json::json!({"parentRefs": [{"name": "web", "namespace": "infra"}]})),
            ),
            group("shop", "c", None),
            group(
                "blog",
                "d",
                Some(serde_json::json!({"parentRefs": [{"name": "web"}]})),
            ),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(g));
        }
        let store = writer.as_reader();
        assert_eq!(
            groups_of_gateway(&store, "shop", "web"),
            [ObjectRef::new("a").within("shop")]
        );
        assert_eq!(
            groups_of_gateway(&store, "infra", "web"),
            [ObjectRef::new("b").within("shop")]
        );
        assert!(groups_of_gateway(&store, "shop", "other").is_empty());
    }

    #[test]
    fn a_failed_create_event_triggers_the_group_of_its_statefulset() {
        let mut writer = Writer::<DeserializeGuard<ReplicaGroup>>::default();
        // "db-witness" is a group of its own too: its members' StatefulSet is "db-witness",
        // the witnesses of "db" are "db-witness" as well (both are triggered).
        for g in [
            group("shop", "db", None),
            group("shop", "db-witness", None),
            group("shop", "web-cache", None),
            group("blog", "web", None),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(g));
        }
        let store = writer.as_reader();
        let event = |ns: &str, statefulset: &str| Event {
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("StatefulSet".into()),
                namespace: Some(ns.into()),
                name: Some(statefulset.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let groups = |ns: &str, statefulset: &str| {
            let mut found: Vec<String> = groups_of_statefulset(&store, &event(ns, statefulset))
                .into_iter()
                .map(|g| g.name)
                .collect();
            found.sort();
            found
        };
        assert_eq!(groups("shop", "db"), ["db"]);
        assert_eq!(groups("shop", "db-witness"), ["db", "db-witness"]);
        assert_eq!(groups("shop", "web-cache"), ["web-cache"]);
        assert_eq!(groups("shop", "web-cache-witness"), ["web-cache"]);
        // Another namespace's group, a StatefulSet of no group, an Event without a name.
        assert!(groups("shop", "web").is_empty());
        assert!(groups("shop", "other").is_empty());
        assert!(groups_of_statefulset(&store, &Event::default()).is_empty());
        // Only the first occurrence triggers; the StatefulSet controller's retries count up.
        let mut retried = event("shop", "db");
        assert!(first_occurrence(&retried));
        retried.count = Some(2);
        assert!(!first_occurrence(&retried));
        let mut series = event("shop", "db");
        series.series = Some(Default::default());
        assert!(!first_occurrence(&series));
    }

    fn routing_slice(name: &str, version: &str, address: &str) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                labels: Some([(GROUP_LABEL.to_owned(), "g".to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![k8s_openapi::api::discovery::v1::Endpoint {
                addresses: vec![address.into()],
                ..Default::default()
            }],
            ports: None,
        })
    }

    fn addresses(slices: &[Arc<EndpointSlice>]) -> Vec<(String, String)> {
        let mut out: Vec<_> = slices
            .iter()
            .map(|s| (s.name_any(), s.endpoints[0].addresses[0].clone()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn our_own_write_is_seen_until_the_watch_catches_up() {
        let names = GroupNames::new("g", "ns");
        let now = Instant::now();
        let mut written = Written::new();
        let key = |n: &str| ("ns".to_owned(), n.to_owned());
        written.insert(key("g-rw"), (routing_slice("g-rw", "12", "10.0.0.2"), now));
        written.insert(key("g-ro"), (routing_slice("g-ro", "13", "10.0.0.1"), now));
        // The store still has the old -rw and no -ro yet: our writes stand in.
        let stored = vec![
            routing_slice("g-rw", "7", "10.0.0.1"),
            routing_slice("g-r", "8", "10.0.0.9"),
        ];
        let seen = with_written(stored, &mut written, &names, now);
        assert_eq!(
            addresses(&seen),
            [
                ("g-r".into(), "10.0.0.9".into()),
                ("g-ro".into(), "10.0.0.1".into()),
                ("g-rw".into(), "10.0.0.2".into())
            ]
        );
        assert_eq!(written.len(), 2);
        // The watch delivered our -rw write and a newer -ro: the store wins, the writes are forgotten.
        let stored = vec![
            routing_slice("g-rw", "12", "10.0.0.2"),
            routing_slice("g-ro", "20", "10.0.0.3"),
        ];
        let seen = with_written(stored, &mut written, &names, now);
        assert_eq!(
            addresses(&seen),
            [
                ("g-ro".into(), "10.0.0.3".into()),
                ("g-rw".into(), "10.0.0.2".into())
            ]
        );
        assert!(written.is_empty());
    }

    #[test]
    fn an_old_write_is_forgotten_and_other_groups_writes_are_kept() {
        let names = GroupNames::new("g", "ns");
        let then = Instant::now();
        let mut written = Written::new();
        written.insert(
            ("ns".into(), "g-rw".into()),
            (routing_slice("g-rw", "12", "10.0.0.2"), then),
        );
        let mut other = (*routing_slice("h-rw", "14", "10.0.0.5")).clone();
        other.metadata.labels = Some([(GROUP_LABEL.to_owned(), "h".to_owned())].into());
        written.insert(("ns".into(), "h-rw".into()), (Arc::new(other), then));
        let seen = with_written(
            vec![routing_slice("g-rw", "7", "10.0.0.1")],
            &mut written,
            &names,
            then + WRITTEN_TTL,
        );
        assert_eq!(addresses(&seen), [("g-rw".into(), "10.0.0.1".into())]);
        assert!(written.is_empty(), "both are past WRITTEN_TTL");
        written.insert(
            ("ns".into(), "h-rw".into()),
            (routing_slice("h-rw", "14", "10.0.0.5"), then),
        );
        with_written(vec![], &mut written, &GroupNames::new("x", "ns"), then);
        assert_eq!(written.len(), 1, "another group's write stays");
    }
}
