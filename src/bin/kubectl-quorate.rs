//! `kubectl-quorate`: the kubectl plugin for ReplicaGroups (`kubectl quorate status|switchover|
//! pause|resume|validate|version`). Everything but the error printing is in `quorate::cli`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use quorate::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(anyhow::Error::new(e)),
    }
}

/// Prints `error: <message>: <cause>: ...` on one line; causes whose text the message already
/// holds (kube's errors repeat their source) are left out.
fn fail(error: anyhow::Error) -> ExitCode {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    // Not eprintln!: a closed stderr must not turn an error into a panic.
    let _ = writeln!(std::io::stderr().lock(), "error: {text}");
    ExitCode::FAILURE
}
