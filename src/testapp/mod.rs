//! `quorate-testapp`: a tiny workload for tests and demos. It learns its role from the agent's
//! callback (or, as a fallback, the role file), reports a simulated load in `X-Quorate-Load`, and
//! accepts writes only while primary, fenced by epoch.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::agent::role::parse_role_record;

#[derive(Debug)]
pub struct AppState {
    pub member: String,
    pub role: String,
    pub epoch: u64,
    pub load: f64,
    pub slow_ms: u64,
    pub healthy: bool,
    /// Last accepted write: (epoch, value).
    pub writes: Vec<(u64, serde_json::Value)>,
}

#[derive(Clone)]
pub struct App {
    state: Arc<Mutex<AppState>>,
    role_file: Option<PathBuf>,
}

impl App {
    pub fn new(member: String, role_file: Option<PathBuf>) -> Self {
        Self {
            state: Arc::new(Mutex::new(AppState {
                member,
                role: "Unknown".into(),
                epoch: 0,
                load: 0.0,
                slow_ms: 0,
                healthy: true,
                writes: Vec::new(),
            })),
            role_file,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adopts a role record unless it is older than what we hold.
    fn adopt(&self, role: &str, epoch: u64) {
        let mut s = self.state();
        if epoch >= s.epoch {
            s.role = role.to_string();
            s.epoch = epoch;
        }
    }

    /// Reads the role file (fallback when no callback arrives).
    fn poll_role_file(&self) {
        let Some(path) = &self.role_file else {
            return;
        };
        if let Ok(data) = std::fs::read(path)
            && let Ok(r) = parse_role_record(&data)
        {
            self.adopt(&r.role, r.epoch);
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(identity))
            .route("/healthz", get(healthz))
            .route("/quorate/role", post(role_callback))
            .route("/write", post(write))
            .route("/admin/health", post(admin_health))
            .route("/admin/load", post(admin_load))
            .route("/admin/slow", post(admin_slow))
            .with_state(self.clone())
    }

    /// Serves on `listener` and polls the role file every 200 ms.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let poller = self.clone();
        tokio::spawn(async move {
            loop {
                poller.poll_role_file();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        axum::serve(listener, self.router()).await
    }
}

fn identity_headers(s: &AppState) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&s.member) {
        h.insert("x-member", v);
    }
    if let Ok(v) = HeaderValue::from_str(&s.role) {
        h.insert("x-role", v);
    }
    h
}

async fn slow(app: &App) {
    let ms = app.state().slow_ms;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn identity(State(app): State<App>) -> Response {
    slow(&app).await;
    let s = app.state();
    let body = serde_json::json!({
        "member": s.member,
        "role": s.role,
        "epoch": s.epoch,
        "load": s.load,
        "servedAt": jiff::Timestamp::now().to_string(),
    });
    (identity_headers(&s), axum::Json(body)).into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    slow(&app).await;
    let s = app.state();
    let mut h = identity_headers(&s);
    if let Ok(v) = HeaderValue::from_str(&format!("{}", s.load)) {
        h.insert("x-quorate-load", v);
    }
    let code = if s.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, h, if s.healthy { "ok" } else { "unhealthy" }).into_response()
}

async fn role_callback(State(app): State<App>, body: axum::body::Bytes) -> Response {
    match parse_role_record(&body) {
        Ok(r) => {
            app.adopt(&r.role, r.epoch);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[derive(Deserialize)]
struct WriteRequest {
    epoch: u64,
    value: serde_json::Value,
}

async fn write(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<WriteRequest>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"epoch\": N, \"value\": ...}",
        )
            .into_response();
    };
    app.poll_role_file();
    let mut s = app.state();
    if s.role != "Primary" {
        return (
            StatusCode::CONFLICT,
            format!("not primary (role {})", s.role),
        )
            .into_response();
    }
    if req.epoch < s.epoch {
        return (
            StatusCode::CONFLICT,
            format!(
                "stale epoch {}: this primary holds epoch {}",
                req.epoch, s.epoch
            ),
        )
            .into_response();
    }
    let epoch = s.epoch;
    s.writes.push((epoch, req.value.clone()));
    if s.writes.len() > 1000 {
        s.writes.remove(0);
    }
    let body = serde_json::json!({"member": s.member, "epoch": epoch, "value": req.value});
    (identity_headers(&s), axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct OkQuery {
    ok: bool,
}

async fn admin_health(State(app): State<App>, Query(q): Query<OkQuery>) -> StatusCode {
    app.state().healthy = q.ok;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct ValueQuery {
    value: f64,
}

async fn admin_load(State(app): State<App>, Query(q): Query<ValueQuery>) -> StatusCode {
    if !q.value.is_finite() || q.value < 0.0 {
        return StatusCode::BAD_REQUEST;
    }
    app.state().load = q.value;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct MsQuery {
    ms: u64,
}

async fn admin_slow(State(app): State<App>, Query(q): Query<MsQuery>) -> StatusCode {
    app.state().slow_ms = q.ms.min(60_000);
    StatusCode::NO_CONTENT
}
