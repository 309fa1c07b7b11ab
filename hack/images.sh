#!/usr/bin/env bash
# Builds the project's binaries as static executables, packs them into one OCI image archive
# (no Docker: hack/mkoci.py), builds the workload images of hack/debian-images.txt from pinned
# Debian packages (hack/debian-image.sh, cached) and imports them all into the test bed's
# containerd when it runs (an image containerd already has at the same digest is skipped).
#   hack/images.sh            build, pack, import if the cluster runs
# The image is $QUORATE_IMAGE (default ghcr.io/quorate-dev/quorate:<crate version>); the workload
# images are `workload_image NAME` (hack/lib.sh; QUORATE_WORKLOAD_IMAGES="redis ..." picks them,
# default all). Pods use them with imagePullPolicy IfNotPresent. For kind: hack/kind.sh up.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

BINARIES="${QUORATE_BINARIES:-quorate-operator quorate-agent quorate-run quorate-testapp kubectl-quorate}"
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

workloads="${QUORATE_WORKLOAD_IMAGES:-$(debian_images | xargs)}"
for name in $workloads; do "$HACK/debian-image.sh" "$name"; done

sock="${QUORATE_CLUSTER_DIR:-/var/tmp/quorate-cluster}/containerd/containerd.sock"
# import_archive ARCHIVE REF: into the test bed's containerd, unless it has REF at the archive's digest.
import_archive() {
  local ctr=("$(bin_dir containerd)/ctr" --address "$sock" -n k8s.io) digest
  digest="$(tar -xOf "$1" index.json | jq -r '.manifests[0].digest')"
  if "${ctr[@]}" images ls 2>/dev/null | awk -v r="$2" '$1 == r { print $3 }' | grep -qx "$digest"; then
    log "$2: already in the test bed"
    return 0
  fi
  "${ctr[@]}" images import "$1" >/dev/null 2>&1 || die "importing $1 into the test bed's containerd failed"
  log "imported $2 into the test bed"
}
if [[ -S "$sock" ]]; then
  import_archive "$archive" "$image"
  for name in $workloads; do import_archive "$(workload_archive "$name")" "$(workload_image "$name")"; done
else
  log "the test bed is not running: archives only (make cluster-up, then make images, imports them)"
fi
