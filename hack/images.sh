#!/usr/bin/env bash
# Builds the project's binaries as static executables, packs them into one OCI image archive
# (no Docker: hack/mkoci.py) and imports it into the test bed's containerd when it runs.
#   hack/images.sh            build, pack, import if the cluster runs
# The image is $QUORATE_IMAGE (default ghcr.io/quorate-dev/quorate:<crate version>); pods use
# it with imagePullPolicy IfNotPresent. For kind: `kind load image-archive <archive>`.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

BINARIES="${QUORATE_BINARIES:-quorate-operator quorate-agent quorate-testapp kubectl-quorate}"
archive="$QUORATE_CACHE/images/quorate.tar"
image="$(quorate_image)"
mkdir -p "$QUORATE_CACHE/images"

need_cmd cargo "install Rust (https://rustup.rs)"
log "building static release binaries ($BINARIES)"
bins=(); for b in $BINARIES; do bins+=(--bin "$b"); done
# `--examples` (the package has none) makes cargo resolve features as for a test build: with
# resolver 2 a plain `build --bin` leaves the dev-dependencies' features out (tokio's test-util,
# among others) and would rebuild tokio, everything above it and our crate, where after
# `make test`'s build (hack/test.sh) this call finds everything fresh and costs under a second.
release_cargo build --release "${bins[@]}" --examples
out="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/$RELEASE_TARGET/release"
entries=()
for b in $BINARIES; do entries+=("$out/$b:/$b"); done
python3 "$HACK/mkoci.py" "$archive" "$image" --entrypoint '["/quorate-operator"]' --user 65532:65532 "${entries[@]}" >/dev/null
log "packed $image into $archive ($(du -h "$archive" | cut -f1))"

sock="${QUORATE_CLUSTER_DIR:-/var/tmp/quorate-cluster}/containerd/containerd.sock"
if [[ -S "$sock" ]]; then
  "$(bin_dir containerd)/ctr" --address "$sock" -n k8s.io images import "$archive" >/dev/null 2>&1 \
    || die "importing $archive into the test bed's containerd failed"
  log "imported $image into the test bed"
else
  log "the test bed is not running: archive only (make cluster-up, then make images, imports it)"
fi
