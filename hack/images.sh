#!/usr/bin/env bash
# Builds the project's binaries as static executables, packs them into one OCI image archive
# (no Docker: hack/mkoci.py), builds the workload images of hack/debian-images.txt from pinned
# Debian packages (hack/debian-image.sh, cached) and imports them all into the test bed's
# containerd of every node when it runs (an image a node already has at the same digest is
# skipped).
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

# import_archive SOCKET ARCHIVE REF: into one node's containerd, unless it has REF at the archive's digest.
import_archive() {
  local ctr=("$(bin_dir containerd)/ctr" --address "$1" -n k8s.io) digest node
  node="$(basename "$(dirname "$(dirname "$1")")")"
  digest="$(tar -xOf "$2" index.json | jq -r '.manifests[0].digest')"
  if "${ctr[@]}" images ls 2>/dev/null | awk -v r="$3" '$1 == r { print $3 }' | grep -qx "$digest"; then
    log "$3: already on $node"
    return 0
  fi
  "${ctr[@]}" images import "$2" >/dev/null 2>&1 || die "importing $2 into the containerd of $node failed"
  log "imported $3 into $node"
}
# import_node SOCKET: every image into one node.
import_node() {
  import_archive "$1" "$archive" "$image"
  for name in $workloads; do import_archive "$1" "$(workload_archive "$name")" "$(workload_image "$name")"; done
}
if sockets="$("$HACK/cluster.sh" containerd-sockets 2>/dev/null)" && [[ -n "$sockets" ]]; then
  # The nodes import in parallel (each has its own containerd).
  pids=()
  for sock in $sockets; do import_node "$sock" & pids+=($!); done
  failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  ((failed == 0)) || die "importing the images into the test bed failed"
else
  log "the test bed is not running: archives only (make cluster-up, then make images, imports them)"
fi
