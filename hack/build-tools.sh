#!/usr/bin/env bash
# Builds the test bed's components from their pinned Go module versions (hack/versions.env)
# into a cache outside the checkout, one directory per component and version:
#   $QUORATE_CACHE/tools/<component>-<version>/bin/...
# A component is skipped when its cached binary reports the pinned version, so a warm run
# costs a few exec calls. Usage: hack/build-tools.sh [component ...]   (default: all)
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

# -dwarf=false: every binary is linked with -s -w (no symbol table, no DWARF), so the DWARF the
# compiler generates for each package is thrown away at link time. Not generating it took ~10%
# less compile CPU for etcd from a cold build cache (docs/testbed.md, Timings); the binaries have
# the same size and differ only by this setting, recorded in their build info.
export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -gcflags=all=-dwarf=false"
SRC="$QUORATE_CACHE/src"
mkdir -p "$SRC"

# go_wrapper DIR: a fresh wrapper module (the upstream go.mod `replace` lines are not inherited
# by a dependent module, so each component gets a module of ours that pins what it needs).
go_wrapper() {
  rm -rf "$1" && mkdir -p "$1" && (cd "$1" && go mod init quorate.local/build >/dev/null 2>&1)
}

# installed NAME VERSION BINARY [ARGS [PATTERN]]: true when the cached BINARY, run with ARGS
# (words; default --version), prints PATTERN (default VERSION without its v).
installed() {
  local bin args out; bin="$(tool_dir "$1" "$2")/bin/$3"
  read -ra args <<<"${4:---version}"
  [[ -x "$bin" ]] || return 1
  # Read the whole output before matching: with pipefail, `cmd | grep -q` fails at random when
  # grep exits at the first match and the command then dies of SIGPIPE on its next line
  # (kubectl's second line did, and a warm run rebuilt Kubernetes from scratch).
  out="$("$bin" "${args[@]}" 2>&1)" || return 1
  grep -qF -- "${5:-${2#v}}" <<<"$out"
}

begin() { log "building $1 $2 (cold build; cached afterwards)"; BUILD_START=$SECONDS; }
finish() { log "built $1 $2 in $((SECONDS - BUILD_START)) s"; }

build_kubernetes() {
  local v=$KUBERNETES_VERSION name=kubernetes
  installed $name "$v" kubelet --version "Kubernetes $v" && installed $name "$v" kubectl "version --client" "$v" && return 0
  begin $name "$v"
  local w="$SRC/$name-$v" staging minor="${v#v1.}"
  go_wrapper "$w"; cd "$w"
  local gomod; gomod="$(go mod download -json "k8s.io/kubernetes@$v" | jq -r .GoMod)"
  # Staging modules are required at the fake version v0.0.0 and replaced with local folders
  # upstream; map each to its published v0.X.Y (Kubernetes v1.X.Y <-> staging v0.X.Y).
  staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")"
  [[ -n "$staging" ]] || die "no staging modules found in $gomod"
  for m in $staging; do go mod edit -replace "$m=$m@v0.$minor"; done
  grep '^godebug' "$gomod" >>go.mod || true
  local cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
  local tools=(); for c in $cmds; do tools+=("k8s.io/kubernetes/cmd/$c@$v"); done
  go get -tool "${tools[@]}" >/dev/null  # one module-graph resolution, not one per command
  go mod tidy >/dev/null 2>&1 || true
  local commit; commit="$(go mod download -json "k8s.io/kubernetes@$v" | jq -r '.Origin.Hash // "0000000000000000000000000000000000000000"')"
  local ld="" pkg
  local major=1 minornum="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minornum"
    ld+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  local pkgs=(); for c in $cmds; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  CGO_ENABLED=0 go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "-s -w $ld" -o "$out/" "${pkgs[@]}"
  finish $name "$v"
}

build_etcd() {
  local v=$ETCD_VERSION name=etcd
  installed $name "$v" etcd && return 0
  begin $name "$v"
  local w="$SRC/$name-$v"; go_wrapper "$w"; cd "$w"
  # server/v3's go.mod points its sibling modules at ../api etc.; pin them to the same tag.
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do go mod edit -replace "go.etcd.io/etcd/$m=go.etcd.io/etcd/$m@$v"; done
  go get -tool "go.etcd.io/etcd/server/v3@$v" >/dev/null
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$v" -o "$out/etcd" go.etcd.io/etcd/server/v3
  finish $name "$v"
}

build_containerd() {
  local v=$CONTAINERD_VERSION name=containerd
  installed $name "$v" containerd && return 0
  begin $name "$v"
  local w="$SRC/$name-$v"; go_wrapper "$w"; cd "$w"
  local m=github.com/containerd/containerd/v2
  go get -tool "$m/cmd/containerd@$v" "$m/cmd/ctr@$v" "$m/cmd/containerd-shim-runc-v2@$v" >/dev/null
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  CGO_ENABLED=0 go build -trimpath -tags no_btrfs,no_devmapper,no_zfs,no_aufs \
    -ldflags "-s -w -X $m/version.Version=$v -X $m/version.Revision=$v" \
    -o "$out/" "$m/cmd/containerd" "$m/cmd/ctr" "$m/cmd/containerd-shim-runc-v2"
  finish $name "$v"
}

build_runc() {
  local v=$RUNC_VERSION name=runc
  installed $name "$v" runc && return 0
  need_pkg libseccomp-dev /usr/include/seccomp.h
  begin $name "$v"
  local w="$SRC/$name-$v"; go_wrapper "$w"; cd "$w"
  go get -tool "github.com/opencontainers/runc@$v" >/dev/null
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  CGO_ENABLED=1 go build -trimpath -tags seccomp -ldflags "-s -w -X main.version=${v#v}" -o "$out/runc" github.com/opencontainers/runc
  finish $name "$v"
}

build_cni() {
  local v=$CNI_PLUGINS_VERSION name=cni-plugins
  installed $name "$v" bridge "" "$v" && return 0
  begin $name "$v"
  local w="$SRC/$name-$v"; go_wrapper "$w"; cd "$w"
  local m=github.com/containernetworking/plugins
  local p=("$m/plugins/main/bridge" "$m/plugins/ipam/host-local" "$m/plugins/main/loopback" "$m/plugins/meta/portmap")
  go get -tool "${p[@]/%/@$v}" >/dev/null
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$v" -o "$out/" "${p[@]}"
  finish $name "$v"
}

build_crictl() {
  local v=$CRI_TOOLS_VERSION name=crictl
  installed $name "$v" crictl && return 0
  begin $name "$v"
  local w="$SRC/$name-$v"; go_wrapper "$w"; cd "$w"
  go get -tool "sigs.k8s.io/cri-tools/cmd/crictl@$v" >/dev/null
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$v" -o "$out/crictl" sigs.k8s.io/cri-tools/cmd/crictl
  finish $name "$v"
}

build_coredns() {
  local v=$COREDNS_VERSION name=coredns
  installed $name "$v" coredns -version "${v#v}" && return 0
  begin $name "$v"
  local w="$SRC/$name-$v"; go_wrapper "$w"; cd "$w"
  go get -tool "github.com/coredns/coredns@$v" >/dev/null
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/coredns" github.com/coredns/coredns
  finish $name "$v"
}

build_helm() {
  local v=$HELM_VERSION name=helm
  # The marker records the default Kubernetes version compiled into helm (see below).
  installed $name "$v" helm version "$v" && [[ -f "$(tool_dir $name "$v")/k8s-${KUBERNETES_VERSION}" ]] && return 0
  begin $name "$v"
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  # Without the Kubernetes version helm assumes v1.20 for `helm template` and lint
  # (upstream's Makefile sets these); use the test bed's version.
  local kminor="${KUBERNETES_VERSION#v1.}"; kminor="${kminor%%.*}" ld="-s -w -X helm.sh/helm/v3/internal/version.version=$v"
  for p in chartutil lint/rules; do ld+=" -X helm.sh/helm/v3/pkg/$p.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$p.k8sVersionMinor=$kminor"; done
  GOBIN="$out" CGO_ENABLED=0 go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$v"
  touch "$(tool_dir $name "$v")/k8s-${KUBERNETES_VERSION}"  # helm's built-in default Kubernetes version
  finish $name "$v"
}

# go_install_prometheus NAME COMMAND: one command of the Prometheus module at the pinned version.
# remove_all_sd leaves out Prometheus' service discoveries (cloud SDKs): neither the rule checks
# nor the dashboard's scrapes (file_sd, kept) use them, and they are a third of the build.
go_install_prometheus() {
  local v=$PROMETHEUS_VERSION name=$1 cmd=$2
  installed "$name" "$v" "$cmd" --version "version ${v#v}" && return 0
  begin "$name" "$v"
  local out; out="$(tool_dir "$name" "$v")/bin"; mkdir -p "$out"
  GOBIN="$out" CGO_ENABLED=0 go install -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=${v#v}" \
    "github.com/prometheus/prometheus/cmd/$cmd@$v"
  finish "$name" "$v"
}

# promtool: `make test` checks the chart's alerting rules and runs their unit tests with it.
build_prometheus() { go_install_prometheus prometheus promtool; }

# The Prometheus server: only hack/dashboard-snapshot.sh runs it (not in the default set).
build_prometheus_server() { go_install_prometheus prometheus-server prometheus; }

build_provisioner() {
  local v; v="$(provisioner_version)"; local name=hostpath-provisioner
  installed $name "$v" hostpath-provisioner --version "$v" && return 0
  begin $name "$v"
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  (cd "$HACK/testbed/hostpath-provisioner" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.buildVersion=$v" -o "$out/hostpath-provisioner" .)
  finish $name "$v"
}

build_traefik() {
  local v=$TRAEFIK_VERSION name=traefik
  installed $name "$v" traefik version "Version:      $v" && return 0
  begin $name "$v"
  local w="$SRC/$name-$v" m=github.com/traefik/traefik/v3
  go_wrapper "$w"; cd "$w"
  local gomod; gomod="$(go mod download -json "$m@$v" | jq -r .GoMod)"
  [[ -f "$gomod" ]] || die "no go.mod for $m@$v"
  # Upstream's replace/exclude lines are not inherited by a dependent module: copy them. The
  # only replace to a local folder is the nested module github.com/traefik/traefik/dynamic/ext
  # (./pkg/config/dynamic/ext), which the module proxy does not serve (nested modules are cut
  # out of the zip). Upstream it holds two empty extension points embedded in
  # dynamic.HTTPConfiguration and dynamic.Router (copied by value in the generated deepcopy):
  # supply the same locally.
  local r old new
  while IFS=$'\t' read -r old new; do
    case "$old=$new" in
      github.com/traefik/traefik/dynamic/ext=./*)
        mkdir -p ext
        printf 'module %s\n\ngo 1.24.0\n' "$old" >ext/go.mod
        cat >ext/ext.go <<'GO'
// Package ext stands in for Traefik's nested module github.com/traefik/traefik/dynamic/ext
// (pkg/config/dynamic/ext upstream, not served by the module proxy): empty extension points.
package ext

// HTTP is a dynamic.HTTP extension.
type HTTP struct{}

// Router is a dynamic.Router extension.
type Router struct{}
GO
        go mod edit -replace "$old=./ext" ;;
      github.com/abbot/go-http-auth=*)
        # Containous' fork at the pseudo-version upstream pins is not served by the module
        # proxy here; use the fork's long-standing version pinned in versions.env (same API;
        # only the basicAuth/digestAuth middlewares use it, and the test bed uses neither).
        go mod edit -replace "$old=${new%@*}@$TRAEFIK_HTTP_AUTH_FORK_VERSION" ;;
      *=./*|*=../*) die "$m@$v replaces $old with a local folder ($new); teach build_traefik about it" ;;
      *) go mod edit -replace "$old=$new" ;;
    esac
  done < <(go mod edit -json "$gomod" | jq -r '.Replace[]? | [(.Old.Path + (if .Old.Version then "@" + .Old.Version else "" end)), (.New.Path + (if .New.Version then "@" + .New.Version else "" end))] | @tsv')
  for r in $(go mod edit -json "$gomod" | jq -r '.Exclude[]? | .Path + "@" + .Version'); do go mod edit -exclude "$r"; done
  grep '^godebug' "$gomod" >>go.mod || true
  # ACME DNS-01 providers: lego's providers/dns imports ~200 DNS provider SDKs, a dozen of which
  # the module proxy here does not serve. An offline test bed never talks to an ACME server, so
  # build lego with a factory that knows no DNS provider (everything else in lego is upstream's).
  local lego; lego="$(go mod edit -json "$gomod" | jq -r '.Require[] | select(.Path == "github.com/go-acme/lego/v5") | .Version')"
  [[ -n "$lego" ]] || die "$m@$v no longer requires github.com/go-acme/lego/v5; revisit the lego stub in build_traefik"
  mkdir -p lego && cp -r "$(go mod download -json "github.com/go-acme/lego/v5@$lego" | jq -r .Dir)/." lego/ && chmod -R u+w lego
  find lego/providers/dns -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} + && rm -f lego/providers/dns/*.go
  rm -rf lego/cmd  # the lego CLI also imports every DNS provider
  cat >lego/providers/dns/dns_providers.go <<'GO'
// Package dns is the test bed's stand-in for lego's DNS-01 provider factory: no provider is built in.
package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName always fails: this Traefik build has no ACME DNS-01 providers.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("DNS provider %q is not built into the test bed's Traefik (no ACME DNS-01 providers)", name)
}
GO
  go mod edit -replace "github.com/go-acme/lego/v5=./lego"
  # The web UI is embedded from webui/static (//go:embed static); the module zip ships
  # webui/static/DONT-EDIT-FILES-IN-THIS-DIRECTORY.md there, which satisfies the embed without
  # the built UI. The test bed never enables the dashboard.
  local dir; dir="$(go mod download -json "$m@$v" | jq -r .Dir)"
  compgen -G "$dir/webui/static/[!._]*" >/dev/null || die "$m@$v has no file under webui/static for its //go:embed"
  go get -tool "$m/cmd/traefik@$v" >/dev/null
  local out; out="$(tool_dir $name "$v")/bin"; mkdir -p "$out"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X $m/pkg/version.Version=$v -X $m/pkg/version.Codename=testbed \
    -X $m/pkg/version.BuildDate=1970-01-01T00:00:00Z" -o "$out/traefik" "$m/cmd/traefik"
  finish $name "$v"
}

# Gateway API standard-channel CRDs, copied from the module cache so cluster-up needs no network.
build_gatewayapi() {
  local v=$GATEWAY_API_VERSION dest; dest="$(gateway_api_crds)"
  grep -qsF "gateway.networking.k8s.io/bundle-version: $v" "$dest/gateway.networking.k8s.io_gateways.yaml" && return 0
  begin gateway-api "$v"
  local dir; dir="$(cd "$SRC" && go mod download -json "sigs.k8s.io/gateway-api@$v" | jq -r .Dir)"
  compgen -G "$dir/config/crd/standard/*.yaml" >/dev/null || die "no standard CRDs in sigs.k8s.io/gateway-api@$v"
  rm -rf "$dest" && mkdir -p "$dest"
  cp "$dir"/config/crd/standard/*.yaml "$dest/" && chmod -R u+w "$dest"
  finish gateway-api "$v"
}

all="kubernetes etcd containerd runc cni crictl coredns helm prometheus provisioner traefik gatewayapi"
components=("$@")
((${#components[@]} > 0)) || read -ra components <<<"$all"
for c in "${components[@]}"; do
  declare -F "build_${c//-/_}" >/dev/null || die "unknown component '$c' (known: $all prometheus-server)"
  # Not `( build ) || die`: errexit is ignored inside anything that is tested with ||, so a
  # failed step would not stop the build and a broken component would be reported as built.
  set +e; ( set -e; "build_${c//-/_}" ); rc=$?; set -e
  ((rc == 0)) || die "building $c failed (see the output above)"
done
