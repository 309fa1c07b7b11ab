#!/usr/bin/env bash
# `make test`: everything, on a real cluster.
#  1. pinned tools (cached builds), 2. unit, property, snapshot, agent-process, chart and
#  manifest tests (`cargo test`), 3. the test bed (brought up when it is not running),
#  4. the images, 5. the cluster suites (`cargo test --test e2e`), 6. tear-down of a test bed
#  this run started, unless KEEP_CLUSTER=1.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"
t0=$SECONDS
step() { log "== $* (t+$((SECONDS - t0)) s)"; }

step "tools"
"$HACK/build-tools.sh"
HELM="$(bin_dir helm)/helm"
export HELM

step "cargo test (no cluster)"
cargo test --locked

started=0
cleanup() {
  if [[ $started == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then step "cluster down"; "$HACK/cluster.sh" down; fi
}
trap cleanup EXIT
if ! "$HACK/cluster.sh" status >/dev/null 2>&1; then
  step "cluster up"
  "$HACK/cluster.sh" up
  started=1
fi

step "images"
"$HACK/images.sh"

step "cluster suites"
QUORATE_KUBECONFIG="$("$HACK/cluster.sh" kubeconfig)"
QUORATE_KUBECTL="$(bin_dir kubernetes)/kubectl" QUORATE_IMAGE="$(quorate_image)" QUORATE_IMAGE_ID="$(quorate_image_id)"
export QUORATE_KUBECONFIG QUORATE_KUBECTL QUORATE_IMAGE QUORATE_IMAGE_ID
cargo test --locked --test e2e -- --test-threads="${E2E_THREADS:-2}"
step "all tests passed"
