#!/usr/bin/env bash
# `make test`: everything, on a real cluster.
#  1. pinned tools (cached builds), 2. one release build of the lib, the binaries and every test
#  target, the cluster suites included, 3. unit, property, snapshot, agent-process, chart and
#  manifest tests (`cargo test`), 4. the test bed (brought up when it is not running),
#  5. the images (packing the binaries of step 2), 6. the cluster suites (`cargo test --test
#  e2e`), 7. tear-down of a test bed this run started, unless KEEP_CLUSTER=1.
#
# Every cargo step runs through release_cargo (hack/lib.sh): the tests, the images and the
# benchmarks share one set of artifacts (docs/architecture.md, "One build for tests, images and
# benchmarks"). A plain `cargo test` (dev profile) still works and leaves the cluster suites out.
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

step "build (shared by the tests, the images and the benchmarks)"
release_cargo test --release --no-run
# The cluster suites in a second call: built in the same call as the binaries whose paths they
# embed (CARGO_BIN_EXE_*), cargo's mtime check later finds those newer and rebuilds the suites.
release_cargo test --release --no-run --test e2e

step "cargo test (no cluster)"
release_cargo test --release

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

# Packs the binaries the build step produced; its cargo call finds everything fresh.
step "images"
"$HACK/images.sh"

step "cluster suites"
QUORATE_KUBECONFIG="$("$HACK/cluster.sh" kubeconfig)"
QUORATE_KUBECTL="$(bin_dir kubernetes)/kubectl" QUORATE_IMAGE="$(quorate_image)" QUORATE_IMAGE_ID="$(quorate_image_id)"
export QUORATE_KUBECONFIG QUORATE_KUBECTL QUORATE_IMAGE QUORATE_IMAGE_ID
release_cargo test --release --test e2e -- --test-threads="${E2E_THREADS:-2}"
step "all tests passed"
