//! `quorate-operator run`: the Kubernetes operator for ReplicaGroups.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};
use quorate::operator::{self, Config};
use quorate::plan::{OperatorPods, OperatorSettings};

#[derive(Parser)]
#[command(
    name = "quorate-operator",
    version,
    about = "Operator for replicated pod groups (ReplicaGroup, quorate.dev/v1alpha1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the leader of the replicas writes; the others stand by).
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the Prometheus metrics endpoint (/metrics).
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Address of the health endpoints (/healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_addr: SocketAddr,
    /// Image of the quorate-agent sidecar injected into member pods.
    #[arg(long, env = "QUORATE_AGENT_IMAGE")]
    agent_image: String,
    /// Pull policy of the agent image: Always, IfNotPresent or Never.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    agent_image_pull_policy: String,
    /// Name of the Lease used for leader election in the operator's namespace; empty disables
    /// the election (a single replica).
    #[arg(long, default_value = "quorate-operator")]
    leader_election_lease: String,
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "quorate-system")]
    namespace: String,
    /// Identity in the leader election.
    #[arg(long, env = "POD_NAME", default_value = "quorate-operator")]
    pod_name: String,
    /// How often each group's Secrets are read again, in seconds (1 to 86400). Secrets are not
    /// watched: a CA Secret someone deleted is reported within this time.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86400))]
    secret_reread_seconds: u64,
    /// Write each group's NetworkPolicy (`spec.networkPolicy.enabled: false` opts a group out);
    /// false writes none and deletes those written before.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    network_policies: bool,
    /// The labels of the operator's own pods, `key=value,...`: the groups' NetworkPolicies admit
    /// these pods of the operator's namespace to the agents' gRPC port.
    #[arg(long, default_value = "app.kubernetes.io/name=quorate,app.kubernetes.io/component=operator", value_parser = parse_labels)]
    operator_pod_labels: std::collections::BTreeMap<String, String>,
}

/// `key=value,...`, at least one pair, keys and values non-empty.
fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let labels = text
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok((k.trim().to_owned(), v.trim().to_owned()))
            }
            _ => Err(format!(
                "{pair:?} is not key=value (expected labels such as app.kubernetes.io/name=quorate,app.kubernetes.io/instance=quorate)"
            )),
        })
        .collect::<Result<std::collections::BTreeMap<_, _>, _>>()?;
    Ok(labels)
}

fn main() -> anyhow::Result<()> {
    let Command::Run(args) = Cli::parse().command;
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},kube=warn,tower=warn,hyper=warn,hyper_util=warn,h2=warn,tonic=info,rustls=info",
        args.log_level
    ))
    .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", args.log_level))?;
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    // One crypto provider (ring) for every TLS user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config {
        metrics_addr: args.metrics_addr,
        health_addr: args.health_addr,
        settings: OperatorSettings {
            agent_image: args.agent_image,
            agent_image_pull_policy: args.agent_image_pull_policy,
            network_policies: args.network_policies,
            operator_pods: OperatorPods {
                namespace: args.namespace.clone(),
                labels: args.operator_pod_labels,
            },
        },
        leader_election_lease: Some(args.leader_election_lease).filter(|l| !l.is_empty()),
        namespace: args.namespace,
        pod_name: args.pod_name,
        secret_reread: std::time::Duration::from_secs(args.secret_reread_seconds),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(operator::run(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_pod_labels_are_key_value_pairs() {
        let labels = parse_labels("app.kubernetes.io/name=quorate, app.kubernetes.io/instance=q")
            .expect("valid");
        assert_eq!(
            labels,
            std::collections::BTreeMap::from([
                ("app.kubernetes.io/instance".to_owned(), "q".to_owned()),
                ("app.kubernetes.io/name".to_owned(), "quorate".to_owned()),
            ])
        );
        for bad in ["", "name", "name=", "=quorate", "a=b,,c=d"] {
            let e = parse_labels(bad).expect_err(bad);
            assert!(e.contains("is not key=value"), "{bad:?}: {e}");
        }
        // Through clap: the flag's name is in the message.
        let e = Cli::try_parse_from([
            "quorate-operator",
            "run",
            "--agent-image=x",
            "--operator-pod-labels=nope",
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("--operator-pod-labels"), "{e}");
    }
}
