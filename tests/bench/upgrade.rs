//! `make bench-upgrade`: operator upgrades with a 3-member PrimaryBackup group asked through
//! `db-rw` every 100 ms. Each round is a `helm upgrade` to another tag of the same build
//! (`QUORATE_UPGRADE_IMAGE`, made by hack/bench.sh) or back: the operator's pods roll, and the
//! new leader renders a new agent image into every group's pod template, which it rolls one
//! member at a time (plan/roll.rs). A round ends when every member pod was replaced and the
//! group is Ready and UpToDate again. Prints:
//!   upgrade_write_gap_ms p50=… max=… n=…   per upgrade, the longest time db-rw did not answer
//!                                          as the primary (the test app accepts writes only
//!                                          there)
//!   upgrade_switchovers_per_group max=…     changes of primary per group per upgrade

#[allow(dead_code)]
mod common;
#[path = "../common/manifests.rs"]
#[allow(dead_code)]
mod manifests;
#[path = "../e2e/operator.rs"]
#[allow(dead_code)]
mod operator;
#[path = "../e2e/smoke.rs"]
#[allow(dead_code)]
mod smoke;
#[path = "../e2e/support.rs"]
mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use support::Ctx;

/// Upgrades measured; `BENCH_ROUNDS` overrides.
fn rounds() -> usize {
    common::rounds(6)
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::from_env().await?;
        let next = std::env::var("QUORATE_UPGRADE_IMAGE").context(
            "QUORATE_UPGRADE_IMAGE (another tag of the image, on every node) is not set: run `make bench-upgrade`",
        )?;
        operator::ensure_operator(&ctx).await?;
        let ns = ctx.namespace("bench-upgrade")?;
        let group = operator::test_group(&ctx, "db", "PrimaryBackup", 3);
        ctx.kubectl_stdin(
            &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
            Some(&group.to_string()),
        )?;
        operator::wait_ready(&ctx, &ns.name, "db", Duration::from_secs(180)).await?;
        let (mut gaps, mut switchovers) = (Vec::new(), 0);
        let mut result = Ok(());
        for round in 0..rounds() {
            let image = if round % 2 == 0 { &next } else { &ctx.image };
            let (_, epoch) =
                operator::wait_routed_primary(&ctx, &ns.name, "db", 0, Duration::from_secs(60))
                    .await?;
            // helm waits for the operator's rollout; the group's roll is measured meanwhile.
            let helm = {
                let (ctx, image) = (ctx.clone(), image.clone());
                tokio::task::spawn_blocking(move || operator::install_operator(&ctx, &image))
            };
            let seen = operator::roll_with_traffic(&ctx, &ns.name, epoch, || Ok(()), true).await;
            let helm = helm.await.context("helm upgrade")?;
            match (seen, helm) {
                (Ok(seen), Ok(())) => {
                    eprintln!("  round {round} ({image}): {seen}");
                    gaps.push(seen.longest_gap.as_millis());
                    switchovers = switchovers.max(seen.epochs.1.saturating_sub(seen.epochs.0));
                }
                (seen, helm) => {
                    result = seen.map(drop).and(helm).with_context(|| format!("round {round}"));
                    break;
                }
            }
        }
        // The suites' image again, whatever happened.
        operator::install_operator(&ctx, &ctx.image)?;
        result?;
        let gap = common::Summary::of(gaps);
        println!(
            "upgrade_write_gap_ms p50={} max={} n={}",
            gap.p50, gap.max, gap.n
        );
        println!("upgrade_switchovers_per_group max={switchovers}");
        Ok(())
    })
}
