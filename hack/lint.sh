#!/usr/bin/env bash
# `make lint` (and a phase of `make test`): every check runs, then the failed ones are named.
#  - rustfmt: cargo fmt --check
#  - clippy: every target, the cluster suites (tests/e2e, test = false) included, -D warnings
#  - shell scripts: every script in hack/ and .ci/run, through Debian's shellcheck (installed
#    when missing)
#  - helm: helm lint --strict charts/quorate (the pinned helm, hack/build-tools.sh helm)
# clippy runs through release_cargo (hack/lib.sh): the target, profile, flags and target
# directory of the shared build, so it compiles no build script or proc-macro of its own and
# reruns no build script (ring's C code, our protoc step) that `make test` already ran.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"

failed=()
check() {
  local name=$1; shift
  log "lint: $name"
  # errexit is off inside a command tested by `if`: the check functions below return their
  # failures explicitly.
  if ! "$@"; then failed+=("$name"); log "lint: $name FAILED"; fi
}

shell_scripts() {
  local f
  for f in "$HACK"/*.sh "$ROOT/.ci/run"; do printf '%s\n' "${f#"$ROOT"/}"; done
}
run_shellcheck() {
  need_pkg shellcheck /usr/bin/shellcheck
  local scripts; mapfile -t scripts < <(shell_scripts) || return 1
  shellcheck --external-sources "${scripts[@]}"
}

run_helm_lint() {
  local helm="${HELM:-$(bin_dir helm)/helm}"
  [[ -x "$helm" ]] || "$HACK/build-tools.sh" helm || return 1
  "$helm" lint --strict charts/quorate
}

need_cmd cargo "install Rust (https://rustup.rs)"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing; install it with 'rustup component add rustfmt'"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing; install it with 'rustup component add clippy'"

check rustfmt cargo fmt --check
check clippy release_cargo clippy --release --all-targets --test e2e -- -D warnings
check shellcheck run_shellcheck
check helm run_helm_lint

((${#failed[@]} == 0)) || die "lint failed: ${failed[*]}"
log "lint: all clean"
