#!/usr/bin/env bash
# `make bench-agent|bench-failover|bench-weights|bench-scale|bench-workloads`: a benchmark (all but the first on
# the test bed).
#   hack/bench.sh agent|failover|weights|scale|workloads
# For the test-bed ones: brings the test bed up when it is not running (and down again afterwards unless
# KEEP_CLUSTER=1), builds and imports the images, then runs `cargo bench --bench <name>`, which
# prints its figures.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"
name="${1:-}"
[[ "$name" =~ ^(agent|failover|weights|scale|workloads)$ ]] || die "usage: hack/bench.sh agent|failover|weights|scale|workloads"
if [[ "$name" == agent ]]; then
  # Agent processes on loopback: no cluster.
  release_cargo bench --bench agent
  exit 0
fi

"$HACK/build-tools.sh"
started=0
cleanup() { if [[ $started == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then "$HACK/cluster.sh" down; fi; }
trap cleanup EXIT
if ! "$HACK/cluster.sh" status >/dev/null 2>&1; then
  "$HACK/cluster.sh" up
  started=1
fi
"$HACK/images.sh"
QUORATE_KUBECONFIG="$("$HACK/cluster.sh" kubeconfig)"
QUORATE_KUBECTL="$(bin_dir kubernetes)/kubectl" HELM="$(bin_dir helm)/helm" QUORATE_IMAGE="$(quorate_image)" QUORATE_IMAGE_ID="$(quorate_image_id)"
# The API server's audit log: bench-scale counts the operator's requests in it.
QUORATE_AUDIT_LOG="$("$HACK/cluster.sh" audit-log)"
export_workload_images
export QUORATE_KUBECONFIG QUORATE_KUBECTL HELM QUORATE_IMAGE QUORATE_IMAGE_ID QUORATE_AUDIT_LOG
release_cargo bench --bench "$name"
