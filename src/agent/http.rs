//! Patroni-style HTTP endpoints for probes and load balancers, and `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::clock::monotonic_millis;
use super::handle::AgentHandle;
use crate::api::MemberRole;

pub(crate) fn spawn_http(handle: AgentHandle, listener: tokio::net::TcpListener) {
    let mut stopping = handle.stopping.clone();
    let app = Router::new()
        .route("/primary", get(primary))
        .route("/backup", get(backup))
        .route("/leader", get(leader))
        .route("/health", get(health))
        .route("/readiness", get(readiness))
        .route("/role", get(role))
        .route("/metrics", get(metrics))
        .with_state(handle);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
}

fn answer(ok: bool, body: String) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn role_body(h: &AgentHandle) -> (MemberRole, u64, String) {
    let now = monotonic_millis();
    let core = h.core();
    let (role, epoch) = core.role_at(now);
    let remaining = core.lease_remaining(now);
    let body = serde_json::json!({
        "member": h.settings.member,
        "nodeId": h.id,
        "role": role.as_str(),
        "epoch": epoch,
        "leaseRemainingMillis": remaining,
        "monoMillis": now,
    })
    .to_string();
    (role, epoch, body)
}

/// 200 only on the primary with a live lease (checked against the clock at request time).
async fn primary(State(h): State<AgentHandle>) -> Response {
    let (role, _, body) = role_body(&h);
    answer(role == MemberRole::Primary, body)
}

async fn backup(State(h): State<AgentHandle>) -> Response {
    let (role, _, body) = role_body(&h);
    answer(role == MemberRole::Backup, body)
}

/// 200 on the coordinator (Raft leader): the singleton of ActiveActive groups.
async fn leader(State(h): State<AgentHandle>) -> Response {
    let (_, _, body) = role_body(&h);
    answer(h.raft.status().is_leader, body)
}

async fn health(State(h): State<AgentHandle>) -> Response {
    let (_, _, body) = role_body(&h);
    answer(true, body)
}

/// Member of an initialized group that knows its coordinator and has caught up.
async fn readiness(State(h): State<AgentHandle>) -> Response {
    let status = h.raft.status();
    let ready = status.in_membership
        && status.leader.is_some()
        && status.last_log_index.saturating_sub(status.applied_index) <= 16;
    let (_, _, body) = role_body(&h);
    answer(ready, body)
}

async fn role(State(h): State<AgentHandle>) -> Response {
    let (_, _, body) = role_body(&h);
    answer(true, body)
}

async fn metrics(State(h): State<AgentHandle>) -> Response {
    let now = monotonic_millis();
    h.metrics
        .lease_remaining_millis
        .set(h.core().lease_remaining(now) as i64);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
        .into_response()
}
