//! Upgrading the chart with groups running: from the previous chart, which shipped the CRD in
//! its crds/ folder (Helm installs that once and never upgrades it), to the current one, which
//! templates the CRD so that `helm upgrade` upgrades it (charts/quorate/README.md, "CRDs").
//!
//! The previous chart is `tests/e2e/previous-chart.tgz` (`hack/previous-chart.sh` packages it
//! from its commit); its CRD lacks the `Up-To-Date` printer column the current one has.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::operator::{
    OperatorValues, RELEASE, create_group, ensure_operator, install_chart, install_operator,
    test_group, uninstall_operator, wait_ready, wait_routed_primary,
};
use crate::support::Ctx;
use crate::tests;

pub fn tests() -> Vec<crate::support::Test> {
    tests![the_crd_upgrades_with_the_chart_and_the_group_keeps_its_primary]
}

const CRD: &str = "customresourcedefinition/replicagroups.quorate.dev";
const PREVIOUS_CHART: &str = "tests/e2e/previous-chart.tgz";
const NEW_COLUMN: &str = "Up-To-Date";

/// The CRD as the API server serves it.
fn served_crd(ctx: &Ctx) -> Result<Value> {
    let text = ctx.kubectl(&["get", CRD, "-o", "json"])?;
    serde_json::from_str(&text).context("the CRD as JSON")
}

fn printer_columns(crd: &Value) -> Vec<String> {
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// The previous chart's CRD file, from inside the packaged chart.
fn previous_crd(ctx: &Ctx) -> Result<Value> {
    let out = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(ctx.root.join(PREVIOUS_CHART))
        .arg("quorate/crds/replicagroups.quorate.dev.yaml")
        .output()
        .context("running tar")?;
    ensure!(
        out.status.success(),
        "reading the CRD from {PREVIOUS_CHART}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_str(&String::from_utf8(out.stdout)?).context("the previous CRD as YAML")
}

async fn the_crd_upgrades_with_the_chart_and_the_group_keeps_its_primary(ctx: Ctx) -> Result<()> {
    ensure_operator(&ctx).await?;
    let ns = ctx.namespace("upgrade-crd")?;
    create_group(&ctx, &ns.name, &test_group(&ctx, "db", "PrimaryBackup", 3)).await?;
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(180)).await?;
    let (primary, epoch) =
        wait_routed_primary(&ctx, &ns.name, "db", 0, Duration::from_secs(30)).await?;
    let current: Value = serde_saphyr::from_str(&std::fs::read_to_string(
        ctx.root
            .join("charts/quorate/files/crds/replicagroups.quorate.dev.yaml"),
    )?)?;
    let columns = printer_columns(&current);
    ensure!(
        columns.iter().any(|c| c == NEW_COLUMN),
        "the current CRD has no {NEW_COLUMN} column: {columns:?}"
    );

    // A cluster on the previous chart: the release gone (its CRD and the group stay, crds.keep),
    // the CRD as the previous chart's `helm install` left it (its crds/ file, no Helm labels),
    // then the previous chart itself.
    uninstall_operator(&ctx)?;
    let kept = served_crd(&ctx).context("the CRD after helm uninstall (crds.keep)")?;
    ensure!(
        kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
        "the kept CRD has no keep policy: {}",
        kept["metadata"]
    );
    let mut previous = previous_crd(&ctx)?;
    ensure!(
        !printer_columns(&previous).iter().any(|c| c == NEW_COLUMN),
        "{PREVIOUS_CHART}'s CRD already has {NEW_COLUMN}: the test would prove nothing"
    );
    // A replace (not an apply): nothing of the current CRD's, Helm's labels included, survives.
    previous["metadata"]["resourceVersion"] = kept["metadata"]["resourceVersion"].clone();
    ctx.kubectl_stdin(&["replace", "-f", "-"], Some(&previous.to_string()))?;
    let served = served_crd(&ctx)?;
    ensure!(
        printer_columns(&served) == printer_columns(&previous)
            && served["metadata"]["labels"].is_null(),
        "the previous CRD is not what is served: {:?} {}",
        printer_columns(&served),
        served["metadata"]
    );
    install_chart(
        &ctx,
        &ctx.root.join(PREVIOUS_CHART),
        &ctx.image,
        OperatorValues::Suites,
    )?;
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(120)).await?;

    // The upgrade, as a user runs it (charts/quorate/README.md, "CRDs": --take-ownership once).
    install_operator(&ctx, &ctx.image)?;
    let upgraded = served_crd(&ctx)?;
    ensure!(
        printer_columns(&upgraded) == columns,
        "helm upgrade left the CRD's columns at {:?}, the chart has {columns:?}",
        printer_columns(&upgraded)
    );
    ensure!(
        upgraded["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
            && upgraded["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep",
        "the upgraded CRD is not the release's, kept: {}",
        upgraded["metadata"]
    );
    let listed = ctx.kubectl(&["get", "rg", "-n", &ns.name])?;
    ensure!(
        listed.contains("UP-TO-DATE"),
        "kubectl get rg does not show the new column:\n{listed}"
    );
    // The CRD and the operator changed under the group; its members did not.
    wait_ready(&ctx, &ns.name, "db", Duration::from_secs(120)).await?;
    let (after, after_epoch) =
        wait_routed_primary(&ctx, &ns.name, "db", 0, Duration::from_secs(30)).await?;
    ensure!(
        after == primary && after_epoch == epoch,
        "the upgrade moved the primary: {primary} at epoch {epoch} before, {after} at {after_epoch} after"
    );
    Ok(())
}
