//! Patroni-style HTTP endpoints for probes and load balancers, and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::clock::monotonic_millis;
use super::coordinator::MemberRole;
use super::node::Inner;

pub(crate) fn spawn_http(inner: Arc<Inner>, listener: tokio::net::TcpListener) {
    let mut stopping = inner.stopping.subscribe();
    let app = Router::new()
        .route("/primary", get(primary))
        .route("/backup", get(backup))
        .route("/leader", get(leader))
        .route("/health", get(health))
        .route("/readiness", get(readiness))
        .route("/role", get(role))
        .route("/metrics", get(metrics))
        .with_state(inner);
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

fn role_body(inner: &Inner) -> (MemberRole, u64, String) {
    let now = monotonic_millis();
    let (role, epoch) = inner.current_role(now);
    let remaining = inner.member().holder.remaining(now);
    let body = serde_json::json!({
        "member": inner.settings.member,
        "nodeId": inner.id,
        "role": role.as_str(),
        "epoch": epoch,
        "leaseRemainingMillis": remaining,
        "monoMillis": now,
    })
    .to_string();
    (role, epoch, body)
}

/// 200 only on the primary with a live lease (checked against the clock at request time).
async fn primary(State(inner): State<Arc<Inner>>) -> Response {
    let (role, _, body) = role_body(&inner);
    answer(role == MemberRole::Primary, body)
}

async fn backup(State(inner): State<Arc<Inner>>) -> Response {
    let (role, _, body) = role_body(&inner);
    answer(role == MemberRole::Backup, body)
}

/// 200 on the coordinator (Raft leader): the singleton of ActiveActive groups.
async fn leader(State(inner): State<Arc<Inner>>) -> Response {
    let (_, _, body) = role_body(&inner);
    answer(inner.raft.status().is_leader, body)
}

async fn health(State(inner): State<Arc<Inner>>) -> Response {
    let (_, _, body) = role_body(&inner);
    answer(true, body)
}

/// Member of an initialized group that knows its coordinator and has caught up.
async fn readiness(State(inner): State<Arc<Inner>>) -> Response {
    let status = inner.raft.status();
    let ready = status.in_membership
        && status.leader.is_some()
        && status.last_log_index.saturating_sub(status.applied_index) <= 16;
    let (_, _, body) = role_body(&inner);
    answer(ready, body)
}

async fn role(State(inner): State<Arc<Inner>>) -> Response {
    let (_, _, body) = role_body(&inner);
    answer(true, body)
}

async fn metrics(State(inner): State<Arc<Inner>>) -> Response {
    let now = monotonic_millis();
    inner
        .metrics
        .lease_remaining_millis
        .set(inner.member().holder.remaining(now) as i64);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        inner.metrics.encode(),
    )
        .into_response()
}
