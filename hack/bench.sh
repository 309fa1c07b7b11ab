#!/usr/bin/env bash
# `make bench-agent|bench-failover|bench-weights|bench-scale|bench-workloads|bench-compare|
# bench-node-loss|bench-upgrade`: a
# benchmark (agent and compare on loopback, the others on the test bed).
#   hack/bench.sh agent|failover|weights|scale|workloads|compare|nodes|upgrade
# For the test-bed ones: brings the test bed up when it is not running (and down again afterwards unless
# KEEP_CLUSTER=1), builds and imports the images, then runs `cargo bench --bench <name>`, which
# prints its figures.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"
name="${1:-}"
[[ "$name" =~ ^(agent|failover|weights|scale|workloads|compare|nodes|upgrade)$ ]] || die "usage: hack/bench.sh agent|failover|weights|scale|workloads|compare|nodes|upgrade"
if [[ "$name" == agent ]]; then
  # Agent processes on loopback: no cluster.
  release_cargo bench --bench agent
  exit 0
fi
if [[ "$name" == compare ]]; then
  # PostgreSQL under Quorate and under Patroni (tests/bench/compare.rs), on loopback addresses
  # of a network namespace of its own: the image's root filesystem (the same PostgreSQL for
  # both), Patroni in a virtual environment made from cached wheels (hack/patroni-requirements.txt).
  for c in unshare chroot setpriv ip; do need_cmd "$c" "the comparison runs PostgreSQL in namespaces (util-linux, coreutils, iproute2)"; done
  [[ $(id -u) == 0 ]] || die "bench-compare needs root: it makes a network namespace and chroots PostgreSQL"
  [[ -x /usr/bin/python3 ]] || die "bench-compare runs Patroni with /usr/bin/python3 (Debian's python3 and python3-venv)"
  "$HACK/debian-image.sh" postgres
  archive="$(workload_archive postgres)"
  rootfs="$QUORATE_CACHE/rootfs/$(basename "$archive" .tar)"
  if [[ ! -e "$rootfs/.complete" ]]; then
    log "unpacking $(basename "$archive") into $rootfs"
    rm -rf "$rootfs" && mkdir -p "$rootfs"
    layer="$(python3 -c 'import json, sys, tarfile
t = tarfile.open(sys.argv[1]); index = json.load(t.extractfile("index.json"))
m = json.load(t.extractfile("blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]))
print(m["layers"][0]["digest"].split(":")[1])' "$archive")"
    tar -xOf "$archive" "blobs/sha256/$layer" | tar -xz -C "$rootfs"
    # Where the pod mounts the scripts, the claim and the supervisor.
    mkdir -p "$rootfs/scripts" "$rootfs/var/lib/postgresql/data" "$rootfs/run/quorate/bin"
    touch "$rootfs/run/quorate/bin/quorate-run" "$rootfs/.complete"
  fi
  release_cargo bench --no-run --bench compare
  # World-readable (Patroni runs as nobody); removed afterwards.
  work="$(mktemp -d /tmp/quorate-compare.XXXXXX)"
  trap 'rm -rf --one-file-system "$work"' EXIT
  chmod 0755 "$work"
  venv_from_wheels "$HACK/patroni-requirements.txt" "$work/venv"
  export QUORATE_PG_ROOT="$work/pgroot" QUORATE_PATRONI="$work/venv/bin/patroni" QUORATE_COMPARE_DIR="$work"
  # A network namespace with only loopback, and a mount namespace in which the cached root
  # filesystem (under $HOME) appears in the world-readable $work for Patroni's user.
  # shellcheck disable=SC2016 # expanded by the inner shell
  unshare --net --mount --propagation private --fork -- bash -c 'ip link set lo up \
    && mkdir "$QUORATE_PG_ROOT" && mount --bind "$2" "$QUORATE_PG_ROOT" \
    && source "$1/lib.sh" && release_cargo bench --offline --bench compare' _ "$HACK" "$rootfs"
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
if [[ "$name" == upgrade ]]; then
  # The version upgraded to: the same image under another tag, on every node.
  QUORATE_UPGRADE_IMAGE="$QUORATE_IMAGE-upgrade"
  for sock in $("$HACK/cluster.sh" containerd-sockets); do
    "$(bin_dir containerd)/ctr" --address "$sock" -n k8s.io images tag --force "$QUORATE_IMAGE" "$QUORATE_UPGRADE_IMAGE" >/dev/null \
      || die "tagging $QUORATE_IMAGE as $QUORATE_UPGRADE_IMAGE in $sock failed"
  done
  export QUORATE_UPGRADE_IMAGE
fi
release_cargo bench --bench "$name"
