//! Apply: server-side apply of the planned objects in the plan's order of writes
//! (`Plan::writes`), with one field manager, owned by the group (so deleting the group deletes
//! them), skipping objects that are still as the last successful apply left them
//! (operator/applied.rs); then the pods' role labels (`Plan::role_labels`); then the status. Every function takes only a client (and the cache), so that the order of writes
//! and the error paths are tested against a scripted API server.

use std::hash::{Hash, Hasher};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Api, Client, Resource};
use serde_json::{Value, json};

use super::applied::{AppliedCache, ObjectKey, version_of};
use super::observe::http_route_resource;
use super::{Error, KubeContext};
use crate::api::names::{
    FIELD_MANAGER, GroupNames, HTTPROUTE_KIND, ROLE_LABEL, SWITCHOVER_ANNOTATION,
};
use crate::api::{ReplicaGroup, ReplicaGroupStatus};
use crate::plan::{Desired, Obsolete, RefusedWrite, RoleLabel, merge_route};
use k8s_openapi::Resource as _;

fn content_hash(v: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// The API resource of a kind the operator writes or deletes.
pub(super) fn api_resource(kind: &str) -> Option<ApiResource> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    Some(match kind {
        StatefulSet::KIND => ApiResource::erase::<StatefulSet>(&()),
        Service::KIND => ApiResource::erase::<Service>(&()),
        EndpointSlice::KIND => ApiResource::erase::<EndpointSlice>(&()),
        PodDisruptionBudget::KIND => ApiResource::erase::<PodDisruptionBudget>(&()),
        NetworkPolicy::KIND => ApiResource::erase::<NetworkPolicy>(&()),
        HTTPROUTE_KIND => http_route_resource(),
        _ => return None,
    })
}

/// Applies one object. Returns the object as the API server answered, if a request was made.
/// `rw_read_at`: the `-rw` slice's resourceVersion when it was read (see `apply_objects`).
async fn apply_one(
    client: &Client,
    applied: &AppliedCache,
    group: &ReplicaGroup,
    names: &GroupNames,
    desired: &Desired,
    route: Option<&DynamicObject>,
    rw_read_at: Option<&str>,
) -> Result<Option<DynamicObject>, Error> {
    let (kind, _) = desired.kind_and_name();
    let resource = api_resource(kind).ok_or_else(|| Error::InvalidObject {
        name: names.name.clone(),
        message: format!("cannot apply kind {kind}"),
    })?;
    let mut body = serde_json::to_value(desired)
        .map_err(|e| Error::Tls(format!("serializing {kind}: {e}")))?;
    body["apiVersion"] = json!(resource.api_version);
    body["kind"] = json!(resource.kind);
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(owner) = group.controller_owner_ref(&()) {
        body["metadata"]["ownerReferences"] = json!([owner]);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &names.namespace, &resource);
    if let Desired::HttpRoute(_) = desired {
        // Keep what others added to the route (see plan::merge_route): the route as its watch
        // last saw it, or as the API has it when the watch does not hold it (a route someone
        // else created carries no label of ours).
        let existing = match route {
            Some(r) => Some(r.clone()),
            None => api
                .get_opt(&name)
                .await
                .context(|| format!("reading {kind} {name}"))?,
        };
        let existing = existing.map(|o| serde_json::to_value(&o).unwrap_or(Value::Null));
        body = merge_route(&body, existing.as_ref(), names);
    }
    let key = ObjectKey::new(kind, &names.namespace, &name);
    let hash = content_hash(&body);
    if applied.applied(&key, hash) {
        return Ok(None);
    }
    if let (Desired::EndpointSlice(_), Some(version)) = (desired, rw_read_at)
        && name == names.rw()
    {
        body["metadata"]["resourceVersion"] = json!(version);
    }
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .context(|| format!("applying {kind} {}/{name}", names.namespace))?;
    applied.record_applied(key, hash, version_of(kind, &written.metadata));
    Ok(Some(written))
}

/// What `apply_objects` wrote, and what the API server refused as invalid.
#[derive(Debug, Default)]
pub struct Applied {
    /// The objects written, as the API server answered (unchanged ones are skipped).
    pub written: Vec<DynamicObject>,
    /// Objects the API server refused as invalid (400, 422): derived from a spec it accepted,
    /// so the spec is at fault; reported in the group's status (`plan::with_refused_writes`).
    pub refused: Vec<RefusedWrite>,
}

/// The API server refused this write as invalid: retrying the same object cannot succeed. A
/// value it cannot even decode (a quantity that does not parse) comes back as a 500 that says
/// so, not as a 422.
fn refused_as_invalid(e: &Error) -> Option<&kube::core::Status> {
    match e {
        Error::Kube {
            source: kube::Error::Api(e),
            ..
        } if e.code == 400
            || e.code == 422
            || (e.code == 500 && e.message.contains("unable to convert unstructured object")) =>
        {
            Some(e)
        }
        _ => None,
    }
}

/// Applies `writes` one after the other, in the given order (the plan's); stops at the first
/// error, except that an object the API server refuses as invalid is noted and skipped: the
/// writes after it (routing first, members last) still go out, so that a bad change of one
/// object's spec never holds up another's, the routing least of all.
/// `route` is the group's HTTPRoute as its watch holds it, if it does.
///
/// `rw_read_at` is the resourceVersion of the `-rw` slice the plan read its routed epoch from:
/// the slice is written only if it is still at that version (409 Conflict otherwise), so that a
/// write planned from an older view — a deposed leader's, in flight while its node was cut off —
/// can never route an older epoch after a newer one was routed (`apply_status` does the same).
pub async fn apply_objects(
    client: &Client,
    applied: &AppliedCache,
    group: &ReplicaGroup,
    names: &GroupNames,
    writes: &[&Desired],
    route: Option<&DynamicObject>,
    rw_read_at: Option<&str>,
) -> Result<Applied, Error> {
    let mut done = Applied::default();
    for d in writes {
        match apply_one(client, applied, group, names, d, route, rw_read_at).await {
            Ok(written) => done.written.extend(written),
            Err(e) => match refused_as_invalid(&e) {
                Some(response) => {
                    let (kind, name) = d.kind_and_name();
                    done.refused.push(RefusedWrite {
                        kind: kind.to_owned(),
                        name,
                        message: response.message.clone(),
                    });
                }
                None => return Err(e),
            },
        }
    }
    Ok(done)
}

/// Unsticks new members stranded on volumes of the wrong node (`plan::StrandedMember`): their
/// claims first (each stays until the pod that references it is gone), then the pod; the
/// StatefulSet creates both again. Objects already gone are fine.
pub async fn release_stranded(
    client: &Client,
    names: &GroupNames,
    stranded: &[crate::plan::StrandedMember],
) -> Result<(), Error> {
    let ns = &names.namespace;
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for s in stranded {
        let why = format!("of the stranded member {}", s.pod);
        for claim in &s.claims {
            delete_if_present(&claims, claim, &why).await?;
        }
        delete_if_present(&pods, &s.pod, &why).await?;
    }
    Ok(())
}

/// Deletes the pods that trust a replaced group CA, all of them before any is back (their
/// StatefulSet creates them again, in parallel, with the new CA). Pods already gone are fine.
pub async fn restart_for_new_ca(
    client: &Client,
    names: &GroupNames,
    pods: &[String],
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    for pod in pods {
        delete_if_present(&api, pod, "it trusts a replaced group CA").await?;
    }
    Ok(())
}

/// Evicts the pod the roll restarts now: through the Eviction API, so the group's
/// PodDisruptionBudget (which node drains share) has the last word. A refusal (429: the budget
/// allows no disruption now) is not an error; the roll asks again on its next poll.
pub async fn evict_for_roll(
    client: &Client,
    names: &GroupNames,
    pod: Option<&str>,
) -> Result<(), Error> {
    let Some(pod) = pod else { return Ok(()) };
    let api: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    match api.evict(pod, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 429 => {
            tracing::info!(group = %names.name, namespace = %names.namespace, %pod, "the disruption budget refused the roll's eviction for now: {}", e.message);
            Ok(())
        }
        Err(e) => Err(Error::Kube {
            context: format!("evicting pod {pod} (rolling it onto the current template)"),
            source: e,
        }),
    }
}

async fn delete_if_present<K>(api: &Api<K>, name: &str, why: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            context: format!("deleting {} {name} ({why})", K::kind(&())),
            source: e,
        }),
    }
}

pub async fn delete_objects(
    client: &Client,
    applied: &AppliedCache,
    names: &GroupNames,
    obsolete: &[Obsolete],
) -> Result<(), Error> {
    for o in obsolete {
        let Some(resource) = api_resource(o.kind) else {
            return Err(Error::InvalidObject {
                name: o.name.clone(),
                message: format!("cannot delete kind {}", o.kind),
            });
        };
        let key = ObjectKey::new(o.kind, &names.namespace, &o.name);
        if applied.deleted(&key) {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &names.namespace, &resource);
        match api.delete(&o.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(Error::Kube {
                    context: format!("deleting {} {}", o.kind, o.name),
                    source: e,
                });
            }
        }
        applied.record_deleted(key);
    }
    Ok(())
}

/// Sets or removes the `quorate.dev/role` label of the planned pods, one merge patch of that
/// label each, under the operator's field manager. A merge patch rather than server-side
/// apply: the pods belong to their StatefulSet, and an apply to a pod that was deleted
/// meanwhile would try to create one; the merge patch gets a 404, skipped here (the
/// replacement's watch event brings the next reconcile). A label this process wrote and the
/// pod's watch has not shown changed since is not written again (operator/applied.rs).
pub async fn label_pods(
    client: &Client,
    applied: &AppliedCache,
    names: &GroupNames,
    labels: &[RoleLabel],
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    for label in labels {
        let patch = json!({"metadata": {"labels": {ROLE_LABEL: label.role}}});
        let key = ObjectKey::new(Pod::KIND, &names.namespace, &label.pod);
        let hash = content_hash(&patch);
        if applied.applied(&key, hash) {
            continue;
        }
        match api.patch(&label.pod, &params, &Patch::Merge(&patch)).await {
            Ok(pod) => applied.record_applied(key, hash, version_of(Pod::KIND, &pod.metadata)),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Kube {
                    context: format!(
                        "setting the {ROLE_LABEL} label of pod {}/{} to {}",
                        names.namespace,
                        label.pod,
                        label.role.unwrap_or("(none)")
                    ),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Server-side apply of the status subresource: fields we no longer set are removed.
///
/// `read_at` is the resourceVersion of the group the status was planned from: the API server
/// applies the status only if the group is still at that version (409 Conflict otherwise). A
/// replica that lost the operator lease while its node was cut off may still have writes in
/// flight, planned from what it saw then; when the node comes back they land after the new
/// leader's and would put an older epoch back. With the precondition they fail instead.
pub async fn apply_status(
    client: &Client,
    names: &GroupNames,
    status: &ReplicaGroupStatus,
    read_at: Option<&str>,
) -> Result<(), Error> {
    let api: Api<ReplicaGroup> = Api::namespaced(client.clone(), &names.namespace);
    let mut body = json!({"apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup", "metadata": {"name": names.name}, "status": status});
    if let Some(version) = read_at {
        body["metadata"]["resourceVersion"] = json!(version);
    }
    api.patch_status(
        &names.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .context(|| format!("updating the status of {}/{}", names.namespace, names.name))?;
    Ok(())
}

/// The switchover request was handed to the group: remove the annotation (a merge patch, so
/// nothing else of the object is touched).
pub async fn clear_switchover_request(client: &Client, names: &GroupNames) -> Result<(), Error> {
    let api: Api<ReplicaGroup> = Api::namespaced(client.clone(), &names.namespace);
    let patch = json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: null}}});
    api.patch(&names.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context(|| {
            format!(
                "removing the {SWITCHOVER_ANNOTATION} annotation of {}/{}",
                names.namespace, names.name
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use hyper::{Request, Response, StatusCode};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::client::Body;

    use super::*;
    use crate::plan::Plan;

    /// A scripted API server: answers every request with its own body (or `fail` for the
    /// object whose path ends so), and returns the requests as "METHOD path" in order.
    async fn serve(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        fail: Option<&'static str>,
        code: StatusCode,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let line = format!("{} {}", request.method(), request.uri().path());
            let failed = fail.is_some_and(|f| request.uri().path().ends_with(f));
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let response = if failed {
                let (reason, message) = match code {
                    StatusCode::CONFLICT => (
                        "Conflict",
                        "Apply failed with 1 conflict: conflict with \"someone\"",
                    ),
                    _ => (
                        "Invalid",
                        "StatefulSet.apps \"g\" is invalid: spec.template.spec.containers[0].image: Required value",
                    ),
                };
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": reason, "code": code.as_u16(), "message": message});
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
            } else {
                Response::builder().body(Body::from(body.to_vec()))
            };
            seen.push(line);
            send.send_response(response.expect("response"));
        }
        seen
    }

    /// A client talking to `serve`, and the task that returns the requests it saw.
    fn scripted(fail: Option<&'static str>) -> (Client, tokio::task::JoinHandle<Vec<String>>) {
        scripted_with(fail, StatusCode::CONFLICT)
    }

    /// As `scripted`, failing with `code`.
    fn scripted_with(
        fail: Option<&'static str>,
        code: StatusCode,
    ) -> (Client, tokio::task::JoinHandle<Vec<String>>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(serve(handle, fail, code));
        (Client::new(service, "default"), server)
    }

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn plan() -> Plan {
        Plan {
            apply: vec![
                Desired::StatefulSet(Box::new(StatefulSet {
                    metadata: meta("g"),
                    ..Default::default()
                })),
                Desired::Service(Box::new(Service {
                    metadata: meta("g-rw"),
                    ..Default::default()
                })),
                Desired::EndpointSlice(Box::new(EndpointSlice {
                    metadata: meta("g-ro"),
                    address_type: "IPv4".into(),
                    endpoints: vec![],
                    ports: None,
                })),
                Desired::EndpointSlice(Box::new(EndpointSlice {
                    metadata: meta("g-rw"),
                    address_type: "IPv4".into(),
                    endpoints: vec![],
                    ports: None,
                })),
            ],
            delete: vec![],
            action: None,
            status: Default::default(),
            events: vec![],
            done_events: vec![],
            role_labels: vec![],
            release_stranded: vec![],
            restart_for_new_ca: vec![],
            evict: None,
            outdated: vec![],
            clear_switchover_request: false,
            requeue_ms: 1000,
        }
    }

    fn group() -> ReplicaGroup {
        let mut g: ReplicaGroup = serde_json::from_value(json!({
            "apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup",
            "metadata": {"name": "g", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "mode": "PrimaryBackup", "replicas": 3,
                "ports": [{"name": "http", "port": 8080}],
                "health": {"httpGet": {"port": 8080, "path": "/healthz"}},
                "roleChange": {"httpPost": {"port": 8080, "path": "/quorate/role"}},
                "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}},
            },
        }))
        .expect("fixture group");
        g.metadata.namespace = Some("ns".into());
        g
    }

    #[tokio::test]
    async fn objects_are_written_in_the_plans_order_and_unchanged_ones_not_again() {
        let (client, server) = scripted(None);
        let names = GroupNames::new("g", "ns");
        let applied = AppliedCache::default();
        let plan = plan();
        let written = apply_objects(
            &client,
            &applied,
            &group(),
            &names,
            &plan.writes(),
            None,
            None,
        )
        .await
        .expect("apply")
        .written;
        let written: Vec<String> = written
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o.types.as_ref().unwrap().kind,
                    o.metadata.name.as_deref().unwrap()
                )
            })
            .collect();
        assert_eq!(
            written,
            [
                "EndpointSlice g-rw",
                "EndpointSlice g-ro",
                "Service g-rw",
                "StatefulSet g"
            ],
            "the server's answers"
        );
        assert!(
            apply_objects(
                &client,
                &applied,
                &group(),
                &names,
                &plan.writes(),
                None,
                None
            )
            .await
            .expect("apply")
            .written
            .is_empty(),
            "nothing changed"
        );
        drop(client);
        assert_eq!(
            server.await.unwrap(),
            [
                "PATCH /apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/g-rw",
                "PATCH /apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/g-ro",
                "PATCH /api/v1/namespaces/ns/services/g-rw",
                "PATCH /apis/apps/v1/namespaces/ns/statefulsets/g",
            ]
        );
    }

    #[tokio::test]
    async fn an_object_changed_behind_our_back_is_written_again_and_only_it() {
        let (client, server) = scripted(None);
        let names = GroupNames::new("g", "ns");
        let applied = AppliedCache::default();
        let plan = plan();
        apply_objects(
            &client,
            &applied,
            &group(),
            &names,
            &plan.writes(),
            None,
            None,
        )
        .await
        .expect("apply");
        // The Service's watch shows a resourceVersion that is not our write's.
        applied.seen(
            &ObjectKey::new("Service", "ns", "g-rw"),
            crate::operator::applied::Seen::Present {
                version: Some("99"),
            },
        );
        let again = apply_objects(
            &client,
            &applied,
            &group(),
            &names,
            &plan.writes(),
            None,
            None,
        )
        .await
        .expect("apply")
        .written;
        assert_eq!(again.len(), 1);
        drop(client);
        let seen = server.await.unwrap();
        assert_eq!(
            seen.last().map(String::as_str),
            Some("PATCH /api/v1/namespaces/ns/services/g-rw"),
            "{seen:?}"
        );
        assert_eq!(seen.len(), 5, "{seen:?}");
    }

    #[tokio::test]
    async fn an_obsolete_object_is_deleted_once_until_it_comes_back() {
        let (client, server) = scripted(None);
        let names = GroupNames::new("g", "ns");
        let applied = AppliedCache::default();
        let obsolete = [Obsolete {
            kind: "StatefulSet",
            name: "g-witness".into(),
        }];
        for _ in 0..3 {
            delete_objects(&client, &applied, &names, &obsolete)
                .await
                .expect("delete");
        }
        applied.seen(
            &ObjectKey::new("StatefulSet", "ns", "g-witness"),
            crate::operator::applied::Seen::Present { version: Some("5") },
        );
        delete_objects(&client, &applied, &names, &obsolete)
            .await
            .expect("delete");
        drop(client);
        assert_eq!(
            server.await.unwrap(),
            [
                "DELETE /apis/apps/v1/namespaces/ns/statefulsets/g-witness",
                "DELETE /apis/apps/v1/namespaces/ns/statefulsets/g-witness",
            ]
        );
    }

    #[tokio::test]
    async fn a_conflict_names_the_object_and_stops_the_writes() {
        let (client, server) = scripted(Some("/services/g-rw"));
        let names = GroupNames::new("g", "ns");
        let applied = AppliedCache::default();
        let error = apply_objects(
            &client,
            &applied,
            &group(),
            &names,
            &plan().writes(),
            None,
            None,
        )
        .await
        .expect_err("a conflict");
        assert_eq!(error.reason(), "conflict");
        assert!(
            error.to_string().contains("applying Service ns/g-rw"),
            "{error}"
        );
        drop(client);
        let seen = server.await.unwrap();
        assert_eq!(
            seen.last().map(String::as_str),
            Some("PATCH /api/v1/namespaces/ns/services/g-rw"),
            "no write after the failed one: {seen:?}"
        );
        // The failed object is not recorded as applied: the retry writes it again.
        let (client, server) = scripted(None);
        assert_eq!(
            apply_objects(
                &client,
                &applied,
                &group(),
                &names,
                &plan().writes(),
                None,
                None
            )
            .await
            .expect("retry")
            .written
            .len(),
            2
        );
        drop(client);
        assert_eq!(server.await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_object_refused_as_invalid_is_reported_and_the_other_writes_go_out() {
        // The StatefulSet is written last; make the first write (-rw) refused as well.
        for path in ["/statefulsets/g", "/endpointslices/g-rw"] {
            let (client, server) = scripted_with(Some(path), StatusCode::UNPROCESSABLE_ENTITY);
            let names = GroupNames::new("g", "ns");
            let applied = AppliedCache::default();
            let done = apply_objects(
                &client,
                &applied,
                &group(),
                &names,
                &plan().writes(),
                None,
                None,
            )
            .await
            .expect("an invalid object is no error of the reconcile");
            assert_eq!(done.written.len(), 3, "{path}");
            assert_eq!(done.refused.len(), 1, "{path}");
            assert!(
                done.refused[0].message.contains("containers[0].image"),
                "{:?}",
                done.refused
            );
            drop(client);
            assert_eq!(server.await.unwrap().len(), 4, "every write was tried");
        }
    }

    #[tokio::test]
    async fn role_labels_are_merge_patches_of_that_label_only_and_not_repeated() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let path = request.uri().path().to_owned();
                let line = format!(
                    "{} {path}?{} {}",
                    request.method(),
                    request.uri().query().unwrap_or_default(),
                    request
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                );
                let body = request.into_body().collect_bytes().await.expect("body");
                seen.push((line, String::from_utf8_lossy(&body).into_owned()));
                let response = if path.ends_with("/g-2") {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "pods \"g-2\" not found"});
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Body::from(serde_json::to_vec(&status).unwrap()))
                } else {
                    let pod = json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": path.rsplit('/').next(), "resourceVersion": "41"}});
                    Response::builder().body(Body::from(serde_json::to_vec(&pod).unwrap()))
                };
                send.send_response(response.expect("response"));
            }
            seen
        });
        let client = Client::new(service, "default");
        let names = GroupNames::new("g", "ns");
        let applied = AppliedCache::default();
        let labels = [
            RoleLabel {
                pod: "g-0".into(),
                role: Some("primary"),
            },
            RoleLabel {
                pod: "g-1".into(),
                role: None,
            },
            // Deleted meanwhile: not an error.
            RoleLabel {
                pod: "g-2".into(),
                role: Some("backup"),
            },
        ];
        label_pods(&client, &applied, &names, &labels)
            .await
            .expect("labels");
        // The watch has not delivered our writes yet: they are not written again.
        label_pods(&client, &applied, &names, &labels[..2])
            .await
            .expect("labels");
        drop(client);
        let seen = server.await.unwrap();
        let merge = format!("?&fieldManager={FIELD_MANAGER} application/merge-patch+json");
        assert_eq!(
            seen,
            [
                (
                    format!("PATCH /api/v1/namespaces/ns/pods/g-0{merge}"),
                    r#"{"metadata":{"labels":{"quorate.dev/role":"primary"}}}"#.to_owned()
                ),
                (
                    format!("PATCH /api/v1/namespaces/ns/pods/g-1{merge}"),
                    r#"{"metadata":{"labels":{"quorate.dev/role":null}}}"#.to_owned()
                ),
                (
                    format!("PATCH /api/v1/namespaces/ns/pods/g-2{merge}"),
                    r#"{"metadata":{"labels":{"quorate.dev/role":"backup"}}}"#.to_owned()
                ),
            ]
        );
    }

    #[tokio::test]
    async fn the_status_is_applied_to_the_status_subresource_with_our_field_manager() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a request");
            let query = request.uri().query().unwrap_or_default().to_owned();
            let line = format!("{} {}", request.method(), request.uri().path());
            let sent: Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.expect("a body"))
                    .expect("JSON");
            let body = serde_json::to_vec(&group()).unwrap();
            send.send_response(Response::builder().body(Body::from(body)).unwrap());
            (line, query, sent)
        });
        let client = Client::new(service, "default");
        let names = GroupNames::new("g", "ns");
        apply_status(&client, &names, &ReplicaGroupStatus::default(), Some("41"))
            .await
            .expect("status");
        let (line, query, sent) = server.await.unwrap();
        // The precondition: applied only while the group is at the version it was planned from.
        assert_eq!(sent["metadata"]["resourceVersion"], "41");
        assert_eq!(
            line,
            "PATCH /apis/quorate.dev/v1alpha1/namespaces/ns/replicagroups/g/status"
        );
        assert!(
            query.contains(&format!("fieldManager={FIELD_MANAGER}"))
                && query.contains("force=true"),
            "{query}"
        );
    }
}
