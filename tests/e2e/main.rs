//! The cluster suites: they run against the test bed (or kind) through `make test`, never in a
//! plain `cargo test`. A small harness instead of libtest because the suites run in phases that
//! share cluster-wide fixtures (the CRD, the installed operator): smoke first, then the operator,
//! then traffic, then workloads, then node faults (one test at a time), then the operator's use of
//! its RBAC (the audit log), then the chart upgrade from the previous chart, then the uninstall
//! check.
//! Tests within a phase run concurrently, each in its own namespace. Arguments filter tests by substring, like libtest.

#[path = "../common/manifests.rs"]
mod manifests;
mod nodes;
mod operator;
mod postgres;
mod rbac;
mod smoke;
mod support;
mod traffic;
mod upgrade;
mod workloads;

use std::time::Instant;

use support::{Ctx, Test};

fn main() -> std::process::ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let threads: usize = std::env::args()
        .find_map(|a| {
            a.strip_prefix("--test-threads=")
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(2);
    let phases: Vec<(&str, Vec<Test>)> = vec![
        ("smoke", smoke::tests()),
        ("operator", operator::tests()),
        ("traffic", traffic::tests()),
        (
            "workloads",
            workloads::tests()
                .into_iter()
                .chain(postgres::tests())
                .collect(),
        ),
        // One at a time: a node fault hits every pod on the node.
        ("nodes", nodes::tests()),
        // After everything the operator does, before it is uninstalled.
        ("rbac", rbac::tests()),
        // Alone: it uninstalls the operator and installs the previous chart's.
        ("upgrade", upgrade::tests()),
        ("uninstall", smoke::last_tests()),
    ];
    rbac::EVERY_SUITE_RAN.store(filters.is_empty(), std::sync::atomic::Ordering::SeqCst);
    let _ = rbac::STARTED.set(jiff::Timestamp::now());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let failed = runtime.block_on(async move {
        let ctx = match Ctx::from_env().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e:#}");
                return vec!["setup".to_owned()];
            }
        };
        let mut failed = Vec::new();
        for (phase, tests) in phases {
            let selected: Vec<Test> = tests
                .into_iter()
                .filter(|t| {
                    filters.is_empty() || filters.iter().any(|f| t.name.contains(f.as_str()))
                })
                .collect();
            if selected.is_empty() {
                continue;
            }
            println!("\n== phase {phase}: {} test(s)", selected.len());
            let limit = if phase == "nodes" { 1 } else { threads.max(1) };
            let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
            let mut handles = Vec::new();
            for test in selected {
                let ctx = ctx.clone();
                let permit = semaphore.clone().acquire_owned().await.expect("semaphore");
                handles.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let result = tokio::spawn((test.run)(ctx)).await;
                    drop(permit);
                    let secs = start.elapsed().as_secs_f64();
                    match result {
                        Ok(Ok(())) => {
                            println!("test {} ... ok ({secs:.1} s)", test.name);
                            None
                        }
                        Ok(Err(e)) => {
                            println!("test {} ... FAILED ({secs:.1} s)\n    {e:#}", test.name);
                            Some(test.name.to_owned())
                        }
                        Err(panic) => {
                            println!("test {} ... PANICKED ({secs:.1} s)\n    {panic}", test.name);
                            Some(test.name.to_owned())
                        }
                    }
                }));
            }
            for h in handles {
                if let Ok(Some(name)) = h.await {
                    failed.push(name);
                }
            }
        }
        failed
    });
    if failed.is_empty() {
        println!("\ne2e: all passed");
        std::process::ExitCode::SUCCESS
    } else {
        println!("\ne2e: {} failed: {}", failed.len(), failed.join(", "));
        std::process::ExitCode::FAILURE
    }
}
