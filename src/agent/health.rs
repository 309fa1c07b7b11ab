//! Workload health checks (tcpSocket, httpGet against 127.0.0.1) and the load / response-time
//! samples the weight policies use. An exec check runs in the workload's container, through the
//! supervisor (`supervisor`), not here: the agent's image has no shell and no workload tools.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Tcp { port: u16 },
    Http { port: u16, path: String },
}

impl std::str::FromStr for Probe {
    type Err = String;
    /// `PORT[/PATH]` for HTTP (path defaults to `/`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, path) = match s.find('/') {
            Some(i) => (&s[..i], s[i..].to_string()),
            None => (s, "/".to_string()),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("expected PORT[/PATH], e.g. 8080/healthz; got {s:?}"))?;
        Ok(Probe::Http { port, path })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    pub probe: Probe,
    /// Where the workload listens: 127.0.0.1 in a pod (tests run several on other loopback IPs).
    pub host: std::net::IpAddr,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HealthStatus {
    pub healthy: bool,
    /// From the `X-Quorate-Load` header of the HTTP check.
    pub load: Option<f64>,
    /// Smoothed check duration.
    pub latency_ms: Option<f64>,
    pub consecutive_failures: u32,
    /// At least one check has run.
    pub checked: bool,
}

impl HealthStatus {
    /// Without a configured check the workload counts as healthy.
    pub fn unchecked_healthy() -> Self {
        Self {
            healthy: true,
            load: None,
            latency_ms: None,
            consecutive_failures: 0,
            checked: false,
        }
    }

    fn initial() -> Self {
        Self {
            healthy: false,
            ..Self::unchecked_healthy()
        }
    }
}

/// One probe's result.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    pub duration: Duration,
    pub load: Option<f64>,
    pub error: Option<String>,
}

/// Weight of a new latency sample in the moving average.
const LATENCY_SMOOTHING: f64 = 0.3;

/// Pure update of the status with one result.
pub fn update(status: &HealthStatus, result: &ProbeResult, failure_threshold: u32) -> HealthStatus {
    let sample = result.duration.as_secs_f64() * 1000.0;
    let latency_ms = Some(match status.latency_ms {
        Some(prev) => prev + LATENCY_SMOOTHING * (sample - prev),
        None => sample,
    });
    if result.ok {
        HealthStatus {
            healthy: true,
            load: result
                .load
                .or(if status.checked { status.load } else { None }),
            latency_ms,
            consecutive_failures: 0,
            checked: true,
        }
    } else {
        let failures = status.consecutive_failures.saturating_add(1);
        HealthStatus {
            // Unhealthy from the start until the first success; afterwards only after
            // `failure_threshold` failures in a row.
            healthy: status.checked && status.healthy && failures < failure_threshold.max(1),
            load: status.load,
            latency_ms,
            consecutive_failures: failures,
            checked: true,
        }
    }
}

/// Parses the `X-Quorate-Load` header value.
pub fn parse_load(value: &str) -> Option<f64> {
    let v: f64 = value.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

pub async fn probe(probe: &Probe, host: std::net::IpAddr, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let outcome = tokio::time::timeout(timeout, run_probe(probe, host)).await;
    let duration = start.elapsed();
    match outcome {
        Ok(Ok(load)) => ProbeResult {
            ok: true,
            duration,
            load,
            error: None,
        },
        Ok(Err(e)) => ProbeResult {
            ok: false,
            duration,
            load: None,
            error: Some(e),
        },
        Err(_) => ProbeResult {
            ok: false,
            duration,
            load: None,
            error: Some(format!("timed out after {timeout:?}")),
        },
    }
}

async fn run_probe(probe: &Probe, host: std::net::IpAddr) -> Result<Option<f64>, String> {
    match probe {
        Probe::Tcp { port } => {
            tokio::net::TcpStream::connect((host, *port))
                .await
                .map_err(|e| format!("tcp {host}:{port}: {e}"))?;
            Ok(None)
        }
        Probe::Http { port, path } => {
            let client: Client<_, Empty<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let uri: hyper::Uri = format!("http://{host}:{port}{path}")
                .parse()
                .map_err(|e| format!("bad health URL: {e}"))?;
            let resp = client
                .get(uri.clone())
                .await
                .map_err(|e| format!("GET {uri}: {e}"))?;
            let status = resp.status();
            let load = resp
                .headers()
                .get("x-quorate-load")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_load);
            // Drain the body so the connection closes cleanly.
            let _ = resp.into_body().collect().await;
            if status.is_success() || status.is_redirection() {
                Ok(load)
            } else {
                Err(format!("GET {uri}: HTTP {status}"))
            }
        }
    }
}

/// Runs the check every period and publishes the status.
pub fn spawn_checker(config: Option<HealthConfig>) -> watch::Receiver<HealthStatus> {
    let Some(config) = config else {
        let (tx, rx) = watch::channel(HealthStatus::unchecked_healthy());
        // Keep the sender alive while anyone listens, so receivers never see "closed".
        tokio::spawn(async move { tx.closed().await });
        return rx;
    };
    let (tx, rx) = watch::channel(HealthStatus::initial());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(config.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = probe(&config.probe, config.host, config.timeout).await;
            if let Some(e) = &result.error {
                tracing::debug!(error = %e, "workload health check failed");
            }
            let next = update(&tx.borrow(), &result, config.failure_threshold);
            if next.healthy != tx.borrow().healthy {
                tracing::info!(healthy = next.healthy, error = ?result.error, "workload health changed");
            }
            if tx.send(next).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool, ms: u64, load: Option<f64>) -> ProbeResult {
        ProbeResult {
            ok,
            duration: Duration::from_millis(ms),
            load,
            error: None,
        }
    }

    #[test]
    fn failure_threshold_and_recovery() {
        let s = HealthStatus::initial();
        let s = update(&s, &result(false, 1, None), 3);
        assert!(!s.healthy, "unhealthy until the first success");
        let s = update(&s, &result(true, 10, Some(0.5)), 3);
        assert!(s.healthy);
        assert_eq!(s.load, Some(0.5));
        let s = update(&s, &result(false, 10, None), 3);
        let s = update(&s, &result(false, 10, None), 3);
        assert!(s.healthy, "two failures of three");
        let s = update(&s, &result(false, 10, None), 3);
        assert!(!s.healthy);
        let s = update(&s, &result(true, 10, None), 3);
        assert!(s.healthy);
        assert_eq!(
            s.load,
            Some(0.5),
            "load is kept when a response carries none"
        );
    }

    #[test]
    fn latency_is_smoothed() {
        let s = update(&HealthStatus::initial(), &result(true, 100, None), 1);
        assert_eq!(s.latency_ms, Some(100.0));
        let s = update(&s, &result(true, 0, None), 1);
        assert!(matches!(s.latency_ms, Some(l) if (l - 70.0).abs() < 1e-9));
    }

    #[test]
    fn load_header_parsing() {
        assert_eq!(parse_load(" 0.75 "), Some(0.75));
        assert_eq!(parse_load("-1"), None);
        assert_eq!(parse_load("NaN"), None);
        assert_eq!(parse_load("inf"), None);
        assert_eq!(parse_load("x"), None);
    }

    #[test]
    fn http_probe_spec_parsing() {
        assert_eq!(
            "8080/healthz".parse::<Probe>(),
            Ok(Probe::Http {
                port: 8080,
                path: "/healthz".into()
            })
        );
        assert_eq!(
            "8080".parse::<Probe>(),
            Ok(Probe::Http {
                port: 8080,
                path: "/".into()
            })
        );
        assert!("x/y".parse::<Probe>().is_err());
    }

    const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn probes_against_real_sockets() {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let ok = probe(&Probe::Tcp { port }, LOCAL, Duration::from_secs(1)).await;
        assert!(ok.ok, "{:?}", ok.error);
        drop(listener);
        let closed = probe(&Probe::Tcp { port }, LOCAL, Duration::from_secs(1)).await;
        assert!(!closed.ok);
    }
}
