#!/usr/bin/env bash
# Packages "the previous chart" the CRD-upgrade test (tests/e2e/upgrade.rs) upgrades from: the
# chart as of PREVIOUS_CHART_COMMIT, which shipped the CRD in its crds/ folder (installed once by
# Helm, never upgraded) and whose CRD lacks the Up-To-Date printer column the current one has.
# Writes tests/e2e/previous-chart.tgz (committed, so a clone without history can run the test).
# Run it from a clone with history when moving the pin to a released chart.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
PREVIOUS_CHART_COMMIT=bc0ac0f
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$ROOT" archive "$PREVIOUS_CHART_COMMIT" charts/quorate | tar -x -C "$work"
[[ -f "$work/charts/quorate/crds/replicagroups.quorate.dev.yaml" ]] || die "$PREVIOUS_CHART_COMMIT has no chart with crds/"
"$(bin_dir helm)/helm" package "$work/charts/quorate" --destination "$work" >/dev/null
mv "$work"/quorate-*.tgz "$ROOT/tests/e2e/previous-chart.tgz"
log "tests/e2e/previous-chart.tgz: the chart of $PREVIOUS_CHART_COMMIT"
