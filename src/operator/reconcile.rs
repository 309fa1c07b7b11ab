//! One reconcile: observe -> plan -> apply (objects, then role labels) -> agent action -> status
//! -> events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::hub::StreamConfig;
use super::{Context, Error, apply, observe};
use crate::api::ReplicaGroup;
use crate::api::names::GroupNames;
use crate::plan::{self, AgentAction};

/// Per-object retry delays: exponential from 200 ms to 30 s, reset by a successful reconcile
/// (kube's error_policy is not told about successes, so we keep the count ourselves).
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    fn next(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_millis(200u64.saturating_mul(1 << (*n - 1).min(8)))
            .min(Duration::from_secs(30))
    }
    fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

fn key_of(obj: &DeserializeGuard<ReplicaGroup>) -> String {
    let meta = match &obj.0 {
        Ok(g) => &g.metadata,
        Err(invalid) => &invalid.metadata,
    };
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

pub async fn reconcile(
    obj: Arc<DeserializeGuard<ReplicaGroup>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let key = key_of(&obj);
    let group = match &obj.0 {
        Ok(g) => g,
        Err(invalid) => {
            // One bad object must not stop the others: report it and wait for a change.
            warn!(group = %key, error = %invalid.error, "cannot read ReplicaGroup");
            ctx.metrics
                .reconcile_errors
                .get_or_create(&vec![("reason".to_owned(), "invalid_object".to_owned())])
                .inc();
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("quorate.dev/v1alpha1".into()),
                kind: Some("ReplicaGroup".into()),
                name: invalid.metadata.name.clone(),
                namespace: invalid.metadata.namespace.clone(),
                uid: invalid.metadata.uid.clone(),
                ..Default::default()
            };
            let event = event(
                EventType::Warning,
                "InvalidObject",
                &format!(
                    "the operator cannot read this ReplicaGroup: {}",
                    invalid.error
                ),
            );
            let _ = ctx.recorder.publish(&event, &reference).await;
            return Ok(Action::await_change());
        }
    };
    if group.metadata.deletion_timestamp.is_some() {
        // Owner references make the garbage collector remove everything the group created.
        return Ok(Action::await_change());
    }
    let names = GroupNames::new(group.name_any(), group.namespace().unwrap_or_default());
    let result = reconcile_group(group, &names, &ctx).await;
    let elapsed = started.elapsed().as_secs_f64();
    ctx.metrics.reconcile_duration.observe(elapsed);
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&vec![("result".to_owned(), outcome.to_owned())])
        .inc();
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result
}

async fn reconcile_group(
    group: &ReplicaGroup,
    names: &GroupNames,
    ctx: &Context,
) -> Result<Action, Error> {
    let spec = &group.spec;
    let tls = match ctx.tls.get(&ctx.client, group, names).await {
        Ok(tls) => tls,
        // Nothing can be done without the group's Secrets: say why in the status.
        Err(e @ (Error::NameConflict(_) | Error::CaLost(_))) => {
            let why = match e {
                Error::NameConflict(conflict) => plan::Blocked::NameConflict(conflict),
                other => plan::Blocked::CaLost(other.to_string()),
            };
            warn!(group = %names.name, namespace = %names.namespace, "{}", why.message());
            let (status, events) =
                plan::blocked(group, &why, jiff::Timestamp::now().as_millisecond());
            if group.status.as_ref() != Some(&status) {
                apply::apply_status(
                    &ctx.client,
                    names,
                    &status,
                    group.metadata.resource_version.as_deref(),
                )
                .await?;
            }
            publish(ctx, group, &events).await;
            return Ok(Action::requeue(Duration::from_millis(
                plan::SECRETS_POLL_MS,
            )));
        }
        Err(e) => return Err(e),
    };
    let existing = group.status.as_ref().map_or(0, |s| s.replicas);
    let addresses: Vec<String> = (0..spec.replicas.max(existing).max(0) as u32)
        .map(|i| names.agent_address(&names.member(i)))
        .chain(
            (0..spec.effective_witnesses().max(0) as u32)
                .map(|i| names.agent_address(&names.witness(i))),
        )
        .collect();
    ctx.hub.ensure(
        &names.namespace,
        &names.name,
        StreamConfig {
            addresses: addresses.clone(),
            tls: Some(tls.client.clone()),
            lease: Duration::from_millis(spec.failover.lease_millis.max(200) as u64),
            load_sensitive: spec.traffic.policy.load_driven(),
            tls_hash: tls.hash.clone(),
        },
    );

    let started = Instant::now();
    let observed = observe::observe(ctx, group, names, &tls).await?;
    let observed_ms = started.elapsed().as_millis() as u64;
    let plan = plan::plan(group, &observed, &ctx.settings);
    // Objects under the group's names that are not the group's are left alone (re-planned
    // without them, and reported).
    let conflicts = observe::name_conflicts(ctx, group, names, &plan).await?;
    let plan = if conflicts.is_empty() {
        plan
    } else {
        let mut observed = observed.clone();
        observed.name_conflicts = conflicts;
        plan::plan(group, &observed, &ctx.settings)
    };

    let objects = async {
        let route = ctx
            .stores
            .route(&names.namespace, &names.members())
            .flatten();
        let applied = apply::apply_objects(
            &ctx.client,
            &ctx.applied,
            group,
            names,
            &plan.writes(),
            route.as_deref(),
            observed.rw_version.as_deref(),
        )
        .await?;
        // The next reconcile sees these slices even before their watch events arrive.
        for slice in applied
            .written
            .into_iter()
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "EndpointSlice"))
        {
            if let Ok(slice) = slice.try_parse() {
                ctx.stores.wrote_slice(slice);
            }
        }
        apply::delete_objects(&ctx.client, &ctx.applied, names, &plan.delete).await?;
        apply::release_stranded(&ctx.client, names, &plan.release_stranded).await?;
        apply::restart_for_new_ca(&ctx.client, names, &plan.restart_for_new_ca).await?;
        apply::evict_for_roll(&ctx.client, names, plan.evict.as_deref()).await?;
        // After the routing and the objects: nothing routes by a role label, and one that
        // cannot be written (its error is returned once the status is written) holds up
        // neither the objects nor the status.
        let labelled = apply::label_pods(&ctx.client, &ctx.applied, names, &plan.role_labels).await;
        Ok::<_, Error>((applied.refused, labelled))
    };
    let action = async {
        match &plan.action {
            Some(action) => Some(
                ctx.hub
                    .execute(
                        &names.namespace,
                        &names.name,
                        action,
                        &addresses,
                        Some(tls.client.clone()),
                    )
                    .await,
            ),
            None => None,
        }
    };
    let (objects_result, action_result) =
        if matches!(plan.action, Some(AgentAction::Switchover { .. })) {
            // A hand-off is what a failover waits for (the primary's pod is going away): it starts
            // now, and the object writes go alongside it.
            futures::join!(objects, action)
        } else {
            // Routing and objects first: a failover's one EndpointSlice write must not wait behind
            // membership calls.
            let objects_result = objects.await;
            let action_result = if objects_result.is_ok() {
                action.await
            } else {
                None
            };
            (objects_result, action_result)
        };
    let (refused, labels_result) = objects_result?;
    debug!(group = %names.name, namespace = %names.namespace, observed_ms, applied_ms = started.elapsed().as_millis() as u64, "reconciled objects");
    // What was done is told now: a status write that meets a conflict below is planned again,
    // these writes are not.
    let mut done = plan.done_events.clone();

    let mut events = plan.events.clone();
    // Objects the API server refused as invalid: the spec is at fault, and the status says so.
    let (status, refused_events) = plan::with_refused_writes(
        group,
        plan.status.clone(),
        &refused,
        jiff::Timestamp::now().as_millisecond(),
    );
    for r in &refused {
        warn!(group = %names.name, namespace = %names.namespace, kind = %r.kind, object = %r.name, "the API server refused a derived object: {}", r.message);
    }
    events.extend(refused_events);
    if let (Some(action), Some(result)) = (&plan.action, action_result) {
        match result {
            Ok(summary) => {
                info!(group = %names.name, namespace = %names.namespace, action = ?action, "{summary}");
                done.push(plan::PlannedEvent {
                    warning: false,
                    reason: action_reason(action).into(),
                    note: summary,
                });
            }
            // The group refused (e.g. a member cannot be removed yet): its answer, not our fault.
            Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                warn!(group = %names.name, action = ?action, error = %e, "the group refused");
                done.push(plan::PlannedEvent {
                    warning: true,
                    reason: format!("{}Refused", action_reason(action)),
                    note: e.to_string(),
                });
            }
            Err(source) => {
                publish(ctx, group, &done).await;
                publish(ctx, group, &events).await;
                return Err(Error::Agent {
                    action: action_reason(action).into(),
                    source,
                });
            }
        }
    }
    publish(ctx, group, &done).await;
    if plan.clear_switchover_request {
        apply::clear_switchover_request(&ctx.client, names).await?;
    }
    if group.status.as_ref() != Some(&status) {
        apply::apply_status(
            &ctx.client,
            names,
            &status,
            group.metadata.resource_version.as_deref(),
        )
        .await?;
        record_failover_metrics(ctx, group, &status);
    }
    ctx.metrics
        .record_phase(&format!("{}/{}", names.namespace, names.name), status.phase);
    ctx.metrics.record_group(
        &names.namespace,
        &names.name,
        &status,
        plan.outdated.len(),
        Some(tls.member_expiry),
    );
    publish(ctx, group, &events).await;
    labels_result?;
    Ok(Action::requeue(Duration::from_millis(plan.requeue_ms)))
}

fn action_reason(action: &AgentAction) -> &'static str {
    match action {
        AgentAction::Bootstrap { .. } => "Bootstrapped",
        AgentAction::AddMember(_) => "MemberAdded",
        AgentAction::RemoveMember { .. } => "MemberRemoved",
        AgentAction::Switchover { .. } => "Switchover",
        AgentAction::Pause => "Paused",
        AgentAction::Resume => "Resumed",
        AgentAction::SetFenced { fenced: true, .. } => "Fenced",
        AgentAction::SetFenced { fenced: false, .. } => "Unfenced",
    }
}

fn record_failover_metrics(
    ctx: &Context,
    group: &ReplicaGroup,
    status: &crate::api::ReplicaGroupStatus,
) {
    let Some(new) = &status.last_failover else {
        return;
    };
    let before = group.status.as_ref().and_then(|s| s.last_failover.as_ref());
    // Count a failover once, when it is first seen routed.
    let newly_routed = new.routed_at.is_some()
        && before.is_none_or(|b| b.epoch != new.epoch || b.routed_at.is_none());
    if newly_routed {
        ctx.metrics.count_failover(
            &group.namespace().unwrap_or_default(),
            &group.name_any(),
            new.reason.as_deref().unwrap_or_default(),
        );
        if let Some(ms) = new.duration_millis {
            ctx.metrics
                .failover_duration
                .observe(ms.max(0) as f64 / 1000.0);
        }
    }
}

/// An Event whose `action` names its reason and note: kube's recorder turns an Event with the
/// same type, reason and action into a repeat (a series count on the first Event, whose note
/// stays), so without the note in it a second, different hook failure of a group within the
/// recorder's cache time would show only as a count on the first one.
fn event(type_: EventType, reason: &str, note: &str) -> Event {
    use std::hash::{Hash, Hasher};
    let note: String = note.chars().take(1000).collect();
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    note.hash(&mut digest);
    Event {
        type_,
        reason: reason.to_owned(),
        action: format!("{reason}-{:016x}", digest.finish()),
        note: Some(note),
        secondary: None,
    }
}

async fn publish(ctx: &Context, group: &ReplicaGroup, events: &[plan::PlannedEvent]) {
    let reference = group.object_ref(&());
    for e in events {
        let type_ = if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let event = event(type_, &e.reason, &e.note);
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %err, reason = %e.reason, "publishing an event");
        }
    }
}

/// How soon a reconcile whose write met a changed object plans again.
const CONFLICT_RETRY: Duration = Duration::from_millis(100);

pub fn error_policy(
    obj: Arc<DeserializeGuard<ReplicaGroup>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = key_of(&obj);
    if error.reason() == "namespace_terminating" {
        // The namespace goes away with everything in it: nothing to retry.
        return Action::await_change();
    }
    ctx.metrics
        .reconcile_errors
        .get_or_create(&vec![("reason".to_owned(), error.reason().to_owned())])
        .inc();
    if error.reason() == "conflict" {
        // A write's precondition failed: the group changed since it was read (the watch brings
        // the new version in a moment, or another replica leads now). Plan again from fresh.
        debug!(group = %key, error = %error, "the group changed meanwhile; planning again");
        return Action::requeue(CONFLICT_RETRY);
    }
    let delay = ctx.backoff.next(&key);
    warn!(group = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_repeat_only_with_the_same_note() {
        let a = event(
            EventType::Warning,
            "HookFailed",
            "db-1: join hook failed: no primary",
        );
        let again = event(
            EventType::Warning,
            "HookFailed",
            "db-1: join hook failed: no primary",
        );
        let other = event(EventType::Warning, "HookFailed", "db-2: health hook failed");
        assert_eq!(a.action, again.action);
        assert_ne!(a.action, other.action);
        assert!(a.action.starts_with("HookFailed-") && a.action.len() <= 128);
        let long = event(EventType::Normal, "MemberAdded", &"x".repeat(5000));
        assert_eq!(long.note.map(|n| n.chars().count()), Some(1000));
    }
}
