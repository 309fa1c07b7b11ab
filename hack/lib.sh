# shellcheck shell=bash
# Shared helpers for the hack/ scripts. Sourced, not run.
HACK="${HACK:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
ROOT="$(cd "$HACK/.." && pwd)"
# shellcheck source=hack/versions.env
source "$HACK/versions.env"
export QUORATE_CACHE="${QUORATE_CACHE:-$HOME/.cache/quorate}"
# The same build cache as `make` (docs/architecture.md), also when a script is run directly.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$QUORATE_CACHE/target}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Release builds (the images and every benchmark) share one target triple and one set of flags,
# hence one build: a host build without them would rebuild every dependency, and back again.
# Static glibc (no musl target here); RUSTFLAGS with --target leaves build scripts dynamic.
RELEASE_TARGET=x86_64-unknown-linux-gnu
# release_cargo SUBCOMMAND ARGS...: the options go right after the subcommand, so they stay cargo's
# when ARGS hold a `--` (`test ... -- --test-threads=2`, `clippy ... -- -D warnings`); after it
# they would reach the test binary or rustc, and cargo would build for the host with the static
# flags, which proc-macros cannot be.
# INSTA_WORKSPACE_ROOT: the target cache is shared between checkouts, and a test binary built in
# another checkout (CI's clone) is fresh for cargo here; insta would then look for its snapshots
# under that checkout's path, baked in at compile time.
release_cargo() {
  local sub=$1; shift
  (cd "$ROOT" && INSTA_WORKSPACE_ROOT="$ROOT" RUSTFLAGS="-C target-feature=+crt-static" \
    cargo "$sub" --locked --target "$RELEASE_TARGET" "$@")
}

# tool_dir NAME VERSION: where the pinned build of a component lives.
tool_dir() { printf '%s/tools/%s-%s' "$QUORATE_CACHE" "$1" "$2"; }

# need_cmd CMD HOW: fail with a message naming the missing prerequisite and how to get it.
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed; $2"; }

# need_pkg PKG FILE: install a Debian package when FILE is missing (the test bed runs as root).
need_pkg() {
  [[ -e "$2" ]] && return 0
  command -v apt-get >/dev/null || die "'$2' is missing; install the package '$1' (Debian/Ubuntu name)"
  log "installing Debian package $1 (provides $2)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; } \
    || die "could not install Debian package '$1'; install it and retry"
}

# Our own small provisioner (hack/testbed/hostpath-provisioner) is versioned by its source hash.
provisioner_version() {
  cat "$HACK/testbed/hostpath-provisioner/"{main.go,go.mod,go.sum} | sha256sum | cut -c1-12
}

# bin_dir COMPONENT: the cached bin directory of a pinned component.
bin_dir() {
  case "$1" in
    kubernetes) tool_dir kubernetes "$KUBERNETES_VERSION" ;;
    etcd) tool_dir etcd "$ETCD_VERSION" ;;
    containerd) tool_dir containerd "$CONTAINERD_VERSION" ;;
    runc) tool_dir runc "$RUNC_VERSION" ;;
    cni) tool_dir cni-plugins "$CNI_PLUGINS_VERSION" ;;
    crictl) tool_dir crictl "$CRI_TOOLS_VERSION" ;;
    coredns) tool_dir coredns "$COREDNS_VERSION" ;;
    helm) tool_dir helm "$HELM_VERSION" ;;
    prometheus) tool_dir prometheus "$PROMETHEUS_VERSION" ;;
    prometheus-server) tool_dir prometheus-server "$PROMETHEUS_VERSION" ;;
    provisioner) tool_dir hostpath-provisioner "$(provisioner_version)" ;;
    traefik) tool_dir traefik "$TRAEFIK_VERSION" ;;
    *) die "unknown component $1" ;;
  esac
  printf '/bin'
}

# The project's image (operator, agent, test workload and kubectl plugin in one image).
quorate_image() {
  local version; version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
  printf '%s' "${QUORATE_IMAGE:-ghcr.io/quorate-dev/quorate:$version}"
}

# A short digest of the packed image archive: the e2e suites put it on the operator's pods so a
# rebuilt image under the same tag restarts them (helm sees no other change).
quorate_image_id() {
  local archive="$QUORATE_CACHE/images/quorate.tar"
  if [[ -f "$archive" ]]; then sha256sum "$archive" | cut -c1-16; fi
}

# gateway_api_crds: the cached Gateway API standard-channel CRDs (hack/build-tools.sh gatewayapi).
gateway_api_crds() { printf '%s/crds/standard' "$(tool_dir gateway-api "$GATEWAY_API_VERSION")"; }

# render TEMPLATE NAME[=VALUE]...: TEMPLATE's text with each ${NAME} replaced by VALUE (or by the
# shell variable NAME's value), written to stdout byte for byte (pure bash: no envsubst needed).
# A placeholder left over is an error, so a template and its caller cannot drift apart silently.
render() {
  local _tmpl=$1 _text _arg _name _value; shift
  [[ -f "$_tmpl" ]] || die "template $_tmpl is missing"
  _text="$(cat "$_tmpl"; printf x)"; _text="${_text%x}"  # keep trailing newlines
  for _arg in "$@"; do
    _name="${_arg%%=*}"
    if [[ "$_arg" == *=* ]]; then _value="${_arg#*=}"
    elif [[ -v "$_name" ]]; then _value="${!_name}"
    else die "render: $_name (for $_tmpl) is not set"; fi
    _text="${_text//"\${$_name}"/"$_value"}"  # quoted: no pattern or & expansion
  done
  if [[ "$_text" =~ \$\{[A-Za-z_][A-Za-z0-9_]*\} ]]; then die "render: ${BASH_REMATCH[0]} in $_tmpl has no value"; fi
  printf '%s' "$_text"
}

# Workload images built from pinned Debian packages (hack/debian-image.sh; table
# hack/debian-images.txt, exact packages hack/debian-images.lock).
# debian_images: the table's image names.
debian_images() { awk '!/^#/ && NF { print $1 }' "$HACK/debian-images.txt"; }
# debian_image_field NAME KEY: the value of KEY=... on NAME's line (empty when absent).
debian_image_field() {
  local line f
  line="$(awk -v n="$1" '$1 == n' "$HACK/debian-images.txt")"
  [[ -n "$line" ]] || die "no image $1 in hack/debian-images.txt"
  for f in $line; do [[ "$f" == "$2="* ]] && printf '%s' "${f#*=}"; done
  return 0
}
# workload_image NAME: the image reference, quorate.test/NAME:<pinned version without its epoch>
# (e.g. quorate.test/redis:7.0.15-1-deb12u10). A local name: it is no official image.
workload_image() {
  local pin version
  pin="$(debian_image_field "$1" pin)"
  [[ -n "$pin" && -n "${!pin:-}" ]] || die "image $1: its pin '$pin' is not set in hack/versions.env"
  version="${!pin#*:}"
  printf 'quorate.test/%s:%s' "$1" "${version//[^A-Za-z0-9_.-]/-}"
}
# export_workload_images: QUORATE_<NAME>_IMAGE=`workload_image NAME` for every image of the table
# (the suites and benchmarks put them in place of the public images the examples name).
export_workload_images() {
  local n var
  for n in $(debian_images); do
    var="QUORATE_${n^^}_IMAGE"
    printf -v "$var" '%s' "$(workload_image "$n")"
    export "${var?}"
  done
}
# workload_archive NAME: its cached OCI archive, keyed by its table line, its pin, its locked
# packages and the two scripts that build it.
workload_archive() {
  local pin key
  pin="$(debian_image_field "$1" pin)"
  key="$({ awk -v n="$1" '$1 == n' "$HACK/debian-images.txt" "$HACK/debian-images.lock" 2>/dev/null
    printf '%s\n' "${!pin:-}"; cat "$HACK/debian-image.sh" "$HACK/mkoci.py"; } | sha256sum | cut -c1-12)"
  printf '%s/images/%s-%s.tar' "$QUORATE_CACHE" "$1" "$key"
}

# venv_from_wheels REQUIREMENTS DIR: a virtual environment of Debian's /usr/bin/python3 at DIR
# with exactly the packages of REQUIREMENTS (pinned, --no-deps), installed from wheels cached
# under $QUORATE_CACHE/wheels (downloaded once per version of the file).
venv_from_wheels() {
  local requirements=$1 dir=$2 wheels tmp
  [[ -x /usr/bin/python3 ]] || die "needs /usr/bin/python3 (Debian's python3 and python3-venv)"
  wheels="$QUORATE_CACHE/wheels/$(basename "$requirements" .txt)-$(sha256sum "$requirements" | cut -c1-12)"
  if [[ ! -e "$wheels/.complete" ]]; then
    log "downloading the packages of $requirements into $wheels"
    tmp="$(mktemp -d)"
    /usr/bin/python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" download -q --no-deps --prefer-binary -d "$wheels" -r "$requirements"
    rm -rf "$tmp"
    touch "$wheels/.complete"
  fi
  /usr/bin/python3 -m venv "$dir"
  "$dir/bin/pip" install -q --no-index --no-deps --find-links "$wheels" -r "$requirements"
}
