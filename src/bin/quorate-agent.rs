//! `quorate-agent`: runs one member's agent until SIGTERM/SIGINT, then hands the primary role off
//! and exits.

use std::process::ExitCode;

use clap::Parser;
use quorate::agent::config::AgentArgs;
use quorate::agent::node::Agent;

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    init_logging(&args.log_format);
    // Two workers are plenty for an agent and keep its memory small.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quorate-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("quorate-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let settings = args.into_settings()?;
    let agent = Agent::start(settings).await?;
    wait_for_signal().await?;
    tracing::info!("stopping: handing off the primary role");
    // Bounded: never hang a pod termination.
    if tokio::time::timeout(std::time::Duration::from_secs(5), agent.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("graceful shutdown took too long; exiting anyway");
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
