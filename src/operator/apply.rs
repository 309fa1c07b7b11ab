//! Apply: server-side apply of the planned objects with one field manager, owned by the group
//! (so deleting the group deletes them), skipping objects whose content did not change since
//! the last successful apply; then the status.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Api, Resource};
use serde_json::{Value, json};

use super::observe::http_route_resource;
use super::{Context, Error, KubeContext};
use crate::api::names::{FIELD_MANAGER, GroupNames, SWITCHOVER_ANNOTATION};
use crate::api::{ReplicaGroup, ReplicaGroupStatus};
use crate::plan::{Desired, Obsolete, merge_route};

/// Content hashes of what was applied, so an unchanged object costs no API call. Entries expire,
/// so that an object someone changed or deleted behind our back is re-applied within minutes
/// (owned objects also trigger a reconcile when they change).
#[derive(Default)]
pub struct AppliedCache {
    entries: Mutex<HashMap<String, (u64, Instant)>>,
}

const CACHE_TTL: Duration = Duration::from_secs(300);

impl AppliedCache {
    fn fresh(&self, key: &str, hash: u64) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).is_some_and(|(h, at)| *h == hash && at.elapsed() < CACHE_TTL)
    }
    fn record(&self, key: String, hash: u64) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (hash, Instant::now()));
    }
    fn forget(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

fn content_hash(v: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

fn resource_of(desired: &Desired) -> (ApiResource, &'static str) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    match desired {
        Desired::StatefulSet(_) => (ApiResource::erase::<StatefulSet>(&()), "StatefulSet"),
        Desired::Service(_) => (ApiResource::erase::<Service>(&()), "Service"),
        Desired::EndpointSlice(_) => (ApiResource::erase::<EndpointSlice>(&()), "EndpointSlice"),
        Desired::PodDisruptionBudget(_) => (ApiResource::erase::<PodDisruptionBudget>(&()), "PodDisruptionBudget"),
        Desired::HttpRoute(_) => (http_route_resource(), "HTTPRoute"),
    }
}

/// Applies one object. Returns whether a request was made.
async fn apply_one(ctx: &Context, group: &ReplicaGroup, names: &GroupNames, desired: &Desired) -> Result<bool, Error> {
    let (resource, kind) = resource_of(desired);
    let mut body = serde_json::to_value(desired).map_err(|e| Error::Tls(format!("serializing {kind}: {e}")))?;
    body["apiVersion"] = json!(resource.api_version);
    body["kind"] = json!(resource.kind);
    let name = body["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    if let Some(owner) = group.controller_owner_ref(&()) {
        body["metadata"]["ownerReferences"] = json!([owner]);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &names.namespace, &resource);
    if let Desired::HttpRoute(_) = desired {
        // Keep what others added to the route (see plan::merge_route).
        let existing = api.get_opt(&name).await.context(|| format!("reading {kind} {name}"))?;
        let existing = existing.map(|o| serde_json::to_value(&o).unwrap_or(Value::Null));
        body = merge_route(&body, existing.as_ref(), names);
    }
    let key = format!("{}/{kind}/{name}", names.namespace);
    let hash = content_hash(&body);
    if ctx.applied.fresh(&key, hash) {
        return Ok(false);
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .context(|| format!("applying {kind} {}/{name}", names.namespace))?;
    ctx.applied.record(key, hash);
    Ok(true)
}

/// Order matters for failover time: the `-rw` EndpointSlice goes first, members last.
fn order(d: &Desired) -> u8 {
    match d {
        Desired::EndpointSlice(s) if s.metadata.name.as_deref().is_some_and(|n| n.ends_with("-rw")) => 0,
        Desired::EndpointSlice(_) => 1,
        Desired::Service(_) => 2,
        Desired::HttpRoute(_) => 3,
        Desired::PodDisruptionBudget(_) => 4,
        Desired::StatefulSet(_) => 5,
    }
}

pub async fn apply_objects(ctx: &Context, group: &ReplicaGroup, names: &GroupNames, objects: &[Desired]) -> Result<usize, Error> {
    let mut sorted: Vec<&Desired> = objects.iter().collect();
    sorted.sort_by_key(|d| order(d));
    let mut writes = 0;
    for d in sorted {
        if apply_one(ctx, group, names, d).await? {
            writes += 1;
        }
    }
    Ok(writes)
}

pub async fn delete_objects(ctx: &Context, names: &GroupNames, obsolete: &[Obsolete]) -> Result<(), Error> {
    for o in obsolete {
        let resource = match o.kind {
            "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
            "HTTPRoute" => http_route_resource(),
            other => return Err(Error::InvalidObject { name: o.name.clone(), message: format!("cannot delete kind {other}") }),
        };
        let key = format!("{}/{}/{}#deleted", names.namespace, o.kind, o.name);
        if ctx.applied.fresh(&key, 0) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &names.namespace, &resource);
        match api.delete(&o.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::Kube { context: format!("deleting {} {}", o.kind, o.name), source: e }),
        }
        ctx.applied.forget(&format!("{}/{}/{}", names.namespace, o.kind, o.name));
        ctx.applied.record(key, 0);
    }
    Ok(())
}

/// Server-side apply of the status subresource: fields we no longer set are removed.
pub async fn apply_status(ctx: &Context, names: &GroupNames, status: &ReplicaGroupStatus) -> Result<(), Error> {
    let api: Api<ReplicaGroup> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let body = json!({"apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup", "metadata": {"name": names.name}, "status": status});
    api.patch_status(&names.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .context(|| format!("updating the status of {}/{}", names.namespace, names.name))?;
    Ok(())
}

/// The switchover request was handed to the group: remove the annotation (a merge patch, so
/// nothing else of the object is touched).
pub async fn clear_switchover_request(ctx: &Context, names: &GroupNames) -> Result<(), Error> {
    let api: Api<ReplicaGroup> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let patch = json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: null}}});
    api.patch(&names.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context(|| format!("removing the {SWITCHOVER_ANNOTATION} annotation of {}/{}", names.namespace, names.name))?;
    Ok(())
}
