//! `quorate-testapp`: a tiny workload for tests and demos (see `quorate::testapp`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "quorate-testapp",
    version,
    about = "Test workload for Quorate groups"
)]
struct Args {
    #[arg(long, env = "QUORATE_TESTAPP_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Member name; defaults to $POD_NAME, then $HOSTNAME.
    #[arg(long)]
    member: Option<String>,
    /// Role file written by the agent (read as a fallback to the callback).
    #[arg(long)]
    role_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let member = args
        .member
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "testapp".into());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quorate-testapp: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        quorate::testapp::App::new(member, args.role_file)
            .serve(listener)
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quorate-testapp: listening on {}: {e}", args.listen);
            ExitCode::FAILURE
        }
    }
}
