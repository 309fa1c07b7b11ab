//! Command-line flags of `quorate-agent` (each also readable from `QUORATE_<FLAG>`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::group::Mode;
use super::health::{HealthConfig, Probe};
use super::role::PublisherConfig;
use super::transport::{TlsClientConfig, TlsServerConfig, TransportError, split_host_port};

/// Everything the agent needs, validated (built from the flags by [`AgentArgs::into_settings`]).
#[derive(Clone)]
pub struct AgentSettings {
    pub data_dir: PathBuf,
    pub member: String,
    pub listen: String,
    pub advertise: String,
    pub http_listen: String,
    pub mode: Mode,
    pub witness: bool,
    pub lease_millis: u64,
    pub max_failovers_per_hour: u32,
    pub priority: u32,
    pub health: Option<HealthConfig>,
    pub supervised: bool,
    pub publisher: PublisherConfig,
    pub tls_server: Option<TlsServerConfig>,
    pub tls_client: Option<TlsClientConfig>,
    pub transition_log: Option<PathBuf>,
    pub enable_fault_injection: bool,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "quorate-agent",
    version,
    about = "Raft-based agent of a Quorate replica group: elects the primary, keeps its lease, publishes roles"
)]
pub struct AgentArgs {
    /// Directory for the node id, Raft log and snapshot (a PVC in Kubernetes).
    #[arg(long, env = "QUORATE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// This member's name, e.g. cache-1 (the ordinal is the suffix after the last '-').
    #[arg(long, env = "QUORATE_MEMBER", value_parser = parse_member)]
    pub member: String,
    /// gRPC listen address.
    #[arg(long, env = "QUORATE_LISTEN", default_value = "0.0.0.0:7470", value_parser = parse_socket_addr)]
    pub listen: String,
    /// How peers reach this node: HOST:PORT, e.g. cache-1.cache-peers.ns.svc.cluster.local:7470.
    #[arg(long, env = "QUORATE_ADVERTISE", value_parser = parse_host_port)]
    pub advertise: String,
    /// HTTP listen address for /primary, /backup, /leader, /health, /readiness, /metrics.
    #[arg(long, env = "QUORATE_HTTP_LISTEN", default_value = "0.0.0.0:7471", value_parser = parse_socket_addr)]
    pub http_listen: String,
    /// Group mode (used when this agent is the first coordinator of a new group).
    #[arg(long, env = "QUORATE_MODE", default_value = "PrimaryBackup", value_parser = parse_mode)]
    pub mode: Mode,
    /// Vote, but never become primary and run no workload checks.
    #[arg(long, env = "QUORATE_WITNESS")]
    pub witness: bool,
    /// Primary lease in milliseconds (bounds crash detection).
    #[arg(long, env = "QUORATE_LEASE_MILLIS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(200..=60_000))]
    pub lease_millis: u64,
    /// Flap guard: automatic failovers allowed per sliding hour.
    #[arg(long, env = "QUORATE_MAX_FAILOVERS_PER_HOUR", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub max_failovers_per_hour: u32,
    /// Candidate priority 0-100 (0 = only if nobody else).
    #[arg(long, env = "QUORATE_PRIORITY", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub priority: u32,
    /// Per-member priorities `NAME=P,NAME=P` (the operator passes the group's whole map, since
    /// a StatefulSet gives every member the same arguments); this member's entry wins over
    /// --priority.
    #[arg(long, env = "QUORATE_PRIORITIES", value_parser = parse_priorities)]
    pub priorities: Option<std::collections::BTreeMap<String, u32>>,
    /// Health check: TCP connect to 127.0.0.1:PORT.
    #[arg(long, env = "QUORATE_HEALTH_TCP", group = "health_check")]
    pub health_tcp: Option<u16>,
    /// Health check: HTTP GET 127.0.0.1:PORT[/PATH] (2xx/3xx = healthy; X-Quorate-Load = load).
    #[arg(long, env = "QUORATE_HEALTH_HTTP", group = "health_check", value_parser = parse_http_probe)]
    pub health_http: Option<Probe>,
    /// The workload runs under the supervisor quorate-run (the group declares hooks): it counts
    /// as healthy only while the supervisor reports so on POST /workload (loopback only).
    #[arg(long, env = "QUORATE_SUPERVISED")]
    pub supervised: bool,
    /// Address of the workload for tcp/http checks (tests run several workloads on one machine).
    #[arg(
        long,
        env = "QUORATE_HEALTH_HOST",
        default_value = "127.0.0.1",
        hide = true
    )]
    pub health_host: std::net::IpAddr,
    #[arg(long, env = "QUORATE_HEALTH_PERIOD_MILLIS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub health_period_millis: u64,
    #[arg(long, env = "QUORATE_HEALTH_TIMEOUT_MILLIS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub health_timeout_millis: u64,
    #[arg(long, env = "QUORATE_HEALTH_FAILURE_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub health_failure_threshold: u32,
    /// Role file, written atomically on every change.
    #[arg(long, env = "QUORATE_ROLE_FILE", default_value = "/run/quorate/role")]
    pub role_file: PathBuf,
    /// POST the role JSON here on every change, e.g. http://127.0.0.1:8080/quorate/role.
    #[arg(long, env = "QUORATE_ROLE_CALLBACK", value_parser = parse_callback)]
    pub role_callback: Option<String>,
    /// A demotion never waits for the callback longer than this.
    #[arg(long, env = "QUORATE_CALLBACK_TIMEOUT_MILLIS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub callback_timeout_millis: u64,
    #[arg(long, env = "QUORATE_CALLBACK_RETRIES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub callback_retries: u32,
    /// PEM certificate of this member (mTLS is on when all three TLS flags are given).
    #[arg(long, env = "QUORATE_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "QUORATE_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// PEM group CA: clients and servers must present certificates it signed.
    #[arg(long, env = "QUORATE_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    #[arg(long, env = "QUORATE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Append every lease transition as a JSON line here (tests, audits).
    #[arg(long, env = "QUORATE_TRANSITION_LOG")]
    pub transition_log: Option<PathBuf>,
    /// Accept the InjectFault RPC (tests only).
    #[arg(long, env = "QUORATE_ENABLE_FAULT_INJECTION", hide = true)]
    pub enable_fault_injection: bool,
}

fn parse_priorities(s: &str) -> Result<std::collections::BTreeMap<String, u32>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not NAME=PRIORITY"))?;
            let value: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("priority of {name:?} must be a number 0-100"))?;
            if value > 100 {
                return Err(format!("priority of {name:?} must be between 0 and 100"));
            }
            Ok((name.trim().to_owned(), value))
        })
        .collect()
}

fn parse_member(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected a pod name: lowercase letters, digits, '-' and '.', e.g. cache-1".into())
    }
}

fn parse_socket_addr(s: &str) -> Result<String, String> {
    s.parse::<std::net::SocketAddr>()
        .map(|_| s.to_string())
        .map_err(|_| "expected IP:PORT, e.g. 0.0.0.0:7470".into())
}

fn parse_host_port(s: &str) -> Result<String, String> {
    split_host_port(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e}; expected HOST:PORT"))
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_http_probe(s: &str) -> Result<Probe, String> {
    s.parse()
}

fn parse_callback(s: &str) -> Result<String, String> {
    let uri: hyper::Uri = s
        .parse()
        .map_err(|e| format!("not a URL: {e}; expected http://HOST:PORT/PATH"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err("expected http://HOST:PORT/PATH".into());
    }
    Ok(s.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("TLS: {0}")]
    Tls(#[from] TransportError),
    #[error("--role-callback: {0}")]
    Callback(String),
}

impl AgentArgs {
    pub fn health_config(&self) -> Option<HealthConfig> {
        let probe = if let Some(port) = self.health_tcp {
            Probe::Tcp { port }
        } else if let Some(p) = &self.health_http {
            p.clone()
        } else {
            return None;
        };
        Some(HealthConfig {
            probe,
            host: self.health_host,
            period: Duration::from_millis(self.health_period_millis),
            timeout: Duration::from_millis(self.health_timeout_millis),
            failure_threshold: self.health_failure_threshold,
        })
    }

    /// Reads certificates and builds the validated settings.
    pub fn into_settings(self) -> Result<AgentSettings, ConfigError> {
        let (tls_server, tls_client) = match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(c), Some(k), Some(a)) => (
                Some(TlsServerConfig::from_files(c, k, a)?),
                Some(TlsClientConfig::from_files(c, k, a)?),
            ),
            _ => (None, None),
        };
        let callback =
            match &self.role_callback {
                Some(s) => Some(s.parse().map_err(|e: hyper::http::uri::InvalidUri| {
                    ConfigError::Callback(e.to_string())
                })?),
                None => None,
            };
        let priority = self
            .priorities
            .as_ref()
            .and_then(|p| p.get(&self.member).copied())
            .unwrap_or(self.priority);
        Ok(AgentSettings {
            health: self.health_config(),
            supervised: self.supervised,
            publisher: PublisherConfig {
                member: self.member.clone(),
                role_file: Some(self.role_file.clone()),
                callback,
                callback_timeout: Duration::from_millis(self.callback_timeout_millis),
                callback_retries: self.callback_retries,
            },
            data_dir: self.data_dir,
            member: self.member,
            listen: self.listen,
            advertise: self.advertise,
            http_listen: self.http_listen,
            mode: self.mode,
            witness: self.witness,
            lease_millis: self.lease_millis,
            max_failovers_per_hour: self.max_failovers_per_hour,
            priority,
            tls_server,
            tls_client,
            transition_log: self.transition_log,
            enable_fault_injection: self.enable_fault_injection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentArgs, String> {
        let mut full = vec![
            "quorate-agent",
            "--data-dir",
            "/tmp/x",
            "--member",
            "cache-1",
            "--advertise",
            "cache-1.peers:7470",
        ];
        full.extend_from_slice(args);
        AgentArgs::try_parse_from(full).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() -> Result<(), String> {
        let a = parse(&[])?;
        assert_eq!(a.listen, "0.0.0.0:7470");
        assert_eq!(a.http_listen, "0.0.0.0:7471");
        assert_eq!(a.lease_millis, 1000);
        assert_eq!(a.max_failovers_per_hour, 6);
        assert_eq!(a.priority, 50);
        assert_eq!(
            parse_priorities("cache-0=10, cache-2=80").map(|m| m.get("cache-2").copied()),
            Ok(Some(80))
        );
        assert!(parse_priorities("cache-0=101").is_err());
        assert!(parse_priorities("cache-0").is_err());
        assert_eq!(a.mode, Mode::PrimaryBackup);
        assert_eq!(a.role_file, PathBuf::from("/run/quorate/role"));
        assert!(a.health_config().is_none());
        Ok(())
    }

    #[test]
    fn bad_flags_name_the_flag_and_what_is_allowed() {
        let e = parse(&["--lease-millis", "50"]).err().unwrap_or_default();
        assert!(
            e.contains("--lease-millis") && e.contains("200..=60000"),
            "{e}"
        );
        let e = parse(&["--mode", "Solo"]).err().unwrap_or_default();
        assert!(
            e.contains("--mode") && e.contains("PrimaryBackup, ActiveActive"),
            "{e}"
        );
        let e = parse(&["--priority", "101"]).err().unwrap_or_default();
        assert!(e.contains("--priority"), "{e}");
        let e = parse(&["--health-tcp", "1", "--health-http", "2/"])
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("--health-tcp") || e.contains("--health-http"),
            "{e}"
        );
        let e = parse(&["--tls-cert", "/a"]).err().unwrap_or_default();
        assert!(e.contains("--tls-key") || e.contains("--tls-ca"), "{e}");
        let e = parse(&["--role-callback", "ftp://x"])
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("--role-callback") && e.contains("http://"),
            "{e}"
        );
        let e = parse(&["--listen", "nowhere"]).err().unwrap_or_default();
        assert!(e.contains("--listen") && e.contains("IP:PORT"), "{e}");
        let e = AgentArgs::try_parse_from([
            "quorate-agent",
            "--data-dir",
            "/x",
            "--member",
            "Cache_1",
            "--advertise",
            "a:1",
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("--member"), "{e}");
    }

    #[test]
    fn health_flags() -> Result<(), String> {
        let a = parse(&[
            "--health-http",
            "8080/healthz",
            "--health-failure-threshold",
            "2",
        ])?;
        let h = a.health_config().ok_or("no health config")?;
        assert_eq!(
            h.probe,
            Probe::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(h.failure_threshold, 2);
        Ok(())
    }
}
