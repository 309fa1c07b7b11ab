//! Patroni-style HTTP endpoints for probes and load balancers, and `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::clock::monotonic_millis;
use super::handle::AgentHandle;
use crate::api::MemberRole;
use crate::supervisor::protocol::{MAX_REPORT_BYTES, WorkloadReport};

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
        .route("/workload", post(workload))
        .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
        .with_state(handle);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
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

/// The role as the supervisor and probes read it (`supervisor::protocol::AgentRole`).
fn role_body(h: &AgentHandle) -> (MemberRole, u64, String) {
    let answer = h.core().agent_role(monotonic_millis());
    let body = serde_json::to_string(&answer).unwrap_or_default();
    (answer.role, answer.epoch, body)
}

/// The supervisor's report; accepted only over the pod's loopback (it runs in the same pod).
async fn workload(
    State(h): State<AgentHandle>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "POST /workload is accepted only from the pod's loopback address\n",
        )
            .into_response();
    }
    if !h.settings.supervised {
        return (
            StatusCode::CONFLICT,
            "this agent does not follow a supervisor (the group declares no spec.hooks)\n",
        )
            .into_response();
    }
    let report: WorkloadReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a supervisor report: {e}\n"),
            )
                .into_response();
        }
    };
    match h.workload(report).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
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
        .lease_remaining_seconds
        .set(h.core().lease_remaining(now) as f64 / 1000.0);
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
