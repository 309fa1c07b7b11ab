#!/usr/bin/env bash
# `make test`: everything, on a real cluster.
#  1. pinned tools (cached builds), 2. lint (hack/lint.sh: rustfmt, clippy, shellcheck, helm),
#  3. one release build of the lib, the binaries and every test target, the cluster suites
#  included (`release_cargo test --no-run`), 4. unit, property, snapshot, agent-process, chart and
#  manifest tests, 5. the test bed (brought up when it is not running), 6. the images (packing the
#  binaries of step 3), 7. the cluster suites (`cargo test --test e2e`), 8. tear-down of a test
#  bed this run started, unless KEEP_CLUSTER=1. A table of the phases' times ends the output, also
#  when a phase fails.
#
# Every cargo step runs through release_cargo (hack/lib.sh): the tests, the images and the
# benchmarks share one set of artifacts (docs/architecture.md, "One build for tests, images and
# benchmarks"). A plain `cargo test` (dev profile) still works and leaves the cluster suites out.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"

# Phases, in order, with their time and outcome (ok, FAILED, skipped ..., or not run).
PHASES=(tools lint build "cargo test" "cluster up" images "cluster suites" "cluster down")
declare -A took=() outcome=()
t0=$SECONDS current="" current_start=0
phase() {
  end_phase ok
  current=$1 current_start=$SECONDS
  log "== $1 (t+$((SECONDS - t0)) s)"
}
end_phase() {
  [[ -n "$current" ]] || return 0
  took[$current]=$((SECONDS - current_start)) outcome[$current]=$1 current=""
}
skip_phase() { outcome[$1]="skipped ($2)"; }
print_phases() {
  local p total=$((SECONDS - t0))
  printf '\n%-16s %8s  %s\n' phase seconds outcome >&2
  for p in "${PHASES[@]}"; do
    if [[ -n "${took[$p]:-}" ]]; then
      printf '%-16s %8s  %s\n' "$p" "${took[$p]}" "${outcome[$p]}" >&2
    else
      printf '%-16s %8s  %s\n' "$p" - "${outcome[$p]:-not run}" >&2
    fi
  done
  printf '%-16s %8s  (%dm%02ds)\n' total "$total" $((total / 60)) $((total % 60)) >&2
}

started=0
on_exit() {
  local rc=$?
  if ((rc == 0)); then end_phase ok; else end_phase FAILED; fi
  if [[ $started == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
    phase "cluster down"
    if "$HACK/cluster.sh" down; then end_phase ok; else end_phase FAILED; rc=1; fi
  elif [[ $started == 1 ]]; then
    skip_phase "cluster down" "KEEP_CLUSTER=1"
  else
    skip_phase "cluster down" "not started here"
  fi
  print_phases
  if ((rc == 0)); then log "all tests passed"; else log "make test failed (exit $rc)"; fi
  exit "$rc"
}
trap on_exit EXIT

phase tools
"$HACK/build-tools.sh"
HELM="$(bin_dir helm)/helm" PROMTOOL="$(bin_dir prometheus)/promtool"
export HELM PROMTOOL

# Early: a formatting or clippy error fails the run in minutes, not after the cluster suites.
# clippy shares the build's target directory, profile and flags, so the build scripts and
# proc-macros it compiles are the ones the build below reuses (and the other way round).
phase lint
"$HACK/lint.sh"

phase build
release_cargo test --release --no-run
# The cluster suites in a second call: built in the same call as the binaries whose paths they
# embed (CARGO_BIN_EXE_*), cargo's mtime check later finds those newer and rebuilds the suites.
release_cargo test --release --no-run --test e2e

phase "cargo test"
release_cargo test --release

if "$HACK/cluster.sh" status >/dev/null 2>&1; then
  skip_phase "cluster up" "already running"
else
  phase "cluster up"
  "$HACK/cluster.sh" up
  started=1
fi

# Packs the binaries the build phase produced; its cargo call finds everything fresh.
phase images
"$HACK/images.sh"

phase "cluster suites"
QUORATE_KUBECONFIG="$("$HACK/cluster.sh" kubeconfig)"
QUORATE_KUBECTL="$(bin_dir kubernetes)/kubectl" QUORATE_IMAGE="$(quorate_image)" QUORATE_IMAGE_ID="$(quorate_image_id)"
# The API server's audit log: the RBAC phase compares the operator's requests with its grants.
QUORATE_AUDIT_LOG="$("$HACK/cluster.sh" audit-log)"
export_workload_images
export QUORATE_KUBECONFIG QUORATE_KUBECTL QUORATE_IMAGE QUORATE_IMAGE_ID QUORATE_AUDIT_LOG
release_cargo test --release --test e2e -- --test-threads="${E2E_THREADS:-2}"
