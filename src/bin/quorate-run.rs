//! `quorate-run`: the supervisor the workload runs under (see `quorate::supervisor`).
//!
//!   quorate-run -- <program> [args...]   run the workload under the supervisor
//!   quorate-run install <path>           copy this executable to <path> (the init container)

use std::process::ExitCode;

use quorate::supervisor::config::{AGENT_URL_ENV, HOOKS_ENV, MEMBER_ENV, SupervisorConfig};
use quorate::supervisor::run;

const USAGE: &str = "usage: quorate-run -- <program> [args...] | quorate-run install <path>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("install") => {
            let Some(path) = args.get(1) else {
                eprintln!("quorate-run install: the destination path is missing\n{USAGE}");
                return ExitCode::from(2);
            };
            match run::install(std::path::Path::new(path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("quorate-run: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("--") if args.len() > 1 => supervise(args[1..].to_vec()),
        Some("--version") => {
            println!("quorate-run {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn supervise(argv: Vec<String>) -> ExitCode {
    let config = match std::env::var(HOOKS_ENV) {
        Ok(json) => match SupervisorConfig::parse(&json) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("quorate-run: {e}");
                return ExitCode::from(2);
            }
        },
        // No hooks declared: still the fencing (Kill) and the health of a running process.
        Err(_) => SupervisorConfig::default(),
    };
    let agent_url =
        std::env::var(AGENT_URL_ENV).unwrap_or_else(|_| "http://127.0.0.1:7471".to_owned());
    let member = std::env::var(MEMBER_ENV)
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quorate-run: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(argv, config, agent_url, member)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("quorate-run: {e}");
            ExitCode::FAILURE
        }
    }
}
