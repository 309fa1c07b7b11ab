#!/usr/bin/env bash
# The local test bed: a real single-node Kubernetes cluster from the components built by
# hack/build-tools.sh, run as host processes (no container engine, no registry).
#
#   hack/cluster.sh up       start (idempotent), prints "cluster-up: ready in N s"
#   hack/cluster.sh down     stop everything it started and remove what it created (idempotent)
#   hack/cluster.sh status   what runs
#
# Network safety (TESTBED.md): the Service CIDR is routed onto the local bridge before
# kube-proxy or any pod starts; pods cannot forward beyond the bridge; DNS never forwards.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

DIR="${QUORATE_CLUSTER_DIR:-/var/tmp/quorate-cluster}"
AUDIT_LOG="$DIR/logs/audit.log"
NODE=quorate-node
BRIDGE=cni0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
# shellcheck disable=SC2034  # used by name: render ... DNS_IP (hack/testbed/config)
DNS_IP=10.96.0.10
PKI="$DIR/pki"
KUBECONFIG_ADMIN="$DIR/kubeconfig"
# The configuration files and manifests, rendered with the values above (render, hack/lib.sh).
CONFIG="$HACK/testbed/config"
# Traefik, the Gateway API implementation (docs/testbed-gateway.md): the Gateway entrypoint `web`
# listens on the bridge only, ping on loopback. Its egress is confined by the group it runs as.
TRAEFIK_WEB_PORT=8000
TRAEFIK_PING_ADDR=127.0.0.1:18082
TRAEFIK_GID=18082
# Start order; `down` stops in reverse.
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns hostpath-provisioner traefik"
# Kernel settings the kubelet insists on (protectKernelDefaults), plus forwarding/bridge
# filtering for Services; the previous values are restored by `down`.
SYSCTLS="vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1 kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000 net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1"

kubectl() { "$(bin_dir kubernetes)/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
crictl() { "$(bin_dir crictl)/crictl" --runtime-endpoint "unix://$DIR/containerd/containerd.sock" "$@"; }
pidfile() { echo "$DIR/pids/$1.pid"; }
running() { local p; p="$(cat "$(pidfile "$1")" 2>/dev/null)" && [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

# ---------------------------------------------------------------------------------------
prerequisites() {
  [[ $EUID -eq 0 ]] || die "the test bed runs as root (it creates a bridge, iptables rules and cgroups)"
  need_cmd ip "install the Debian package iproute2"
  need_pkg iptables /usr/sbin/iptables
  need_pkg conntrack /usr/sbin/conntrack
  need_cmd openssl "install the Debian package openssl"
  need_cmd python3 "install python3"
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || die "the kernel lacks br_netfilter (needed for Service traffic between pods on the bridge)"
  for c in kubernetes etcd containerd runc cni crictl coredns provisioner traefik; do
    [[ -d "$(bin_dir $c)" ]] || die "component '$c' is not built: run 'make tools' (hack/build-tools.sh)"
  done
  compgen -G "$(gateway_api_crds)/*.yaml" >/dev/null || die "the Gateway API CRDs are not cached: run 'make tools' (hack/build-tools.sh)"
  need_cmd setpriv "install the Debian package util-linux"
}

# ---------------------------------------------------------------------------------------
gen_pki() {
  [[ -f "$PKI/admin.crt" ]] && { gen_pki_traefik; return 0; }
  mkdir -p "$PKI"; cd "$PKI"
  local ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  # shellcheck disable=SC2086
  openssl req -x509 $ec -keyout ca.key -out ca.crt -days 3650 -subj "/CN=quorate-testbed-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  sign() { # name subject extensions
    # shellcheck disable=SC2086
    openssl req -new $ec -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  local client=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
  local server=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'
  sign apiserver "/CN=kube-apiserver" "$server
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$NODE_IP,IP:$API_SERVICE_IP"
  sign kubelet-serving "/CN=$NODE" "$server
subjectAltName=DNS:$NODE,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
  sign admin "/O=system:masters/CN=quorate-testbed-admin" "$client"
  sign controller-manager "/CN=system:kube-controller-manager" "$client"
  sign scheduler "/CN=system:kube-scheduler" "$client"
  sign kube-proxy "/CN=system:kube-proxy" "$client"
  sign kubelet "/O=system:nodes/CN=system:node:$NODE" "$client"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  # CoreDNS and the provisioner get their own identities, bound to the RBAC they need below.
  sign coredns "/CN=quorate-testbed:coredns" "$client"
  sign provisioner "/CN=quorate-testbed:provisioner" "$client"
  for u in admin controller-manager scheduler kube-proxy kubelet coredns provisioner; do
    render "$CONFIG/kubeconfig.yaml" NODE_IP PKI KUBECONFIG_USER="$u" >"$u.kubeconfig"
  done
  cp admin.kubeconfig "$KUBECONFIG_ADMIN"
  cd - >/dev/null
  gen_pki_traefik
}

# Traefik's identity, bound to what its Kubernetes Gateway provider reads and writes (apply_gateway_api).
# Made apart from the rest so a cluster brought up before Traefik joined the test bed gets it on
# its existing CA.
gen_pki_traefik() {
  [[ -f "$PKI/traefik.kubeconfig" ]] && return 0
  local ext=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/traefik.key" \
    -out "$PKI/traefik.csr" -subj "/CN=quorate-testbed:traefik" 2>/dev/null
  openssl x509 -req -in "$PKI/traefik.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 825 \
    -out "$PKI/traefik.crt" -extfile <(printf '%s\n' "$ext") 2>/dev/null
  rm -f "$PKI/traefik.csr"
  render "$CONFIG/kubeconfig.yaml" NODE_IP PKI KUBECONFIG_USER=traefik >"$PKI/traefik.kubeconfig"
}

# ---------------------------------------------------------------------------------------
setup_host() {
  mkdir -p "$DIR"/{pids,logs,state}
  # Remember the kernel settings we change, once, so `down` restores the originals.
  if [[ ! -f "$DIR/state/sysctl.orig" ]]; then
    for kv in $SYSCTLS; do echo "${kv%%=*}=$(sysctl -n "${kv%%=*}")"; done >"$DIR/state/sysctl.orig"
  fi
  for kv in $SYSCTLS; do sysctl -qw "$kv"; done
  # Network namespaces that exist before us are not ours to remove.
  [[ -f "$DIR/state/netns.before" ]] || { ls /var/run/netns 2>/dev/null || true; } >"$DIR/state/netns.before"

  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/16" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # The Service CIDR stays on this machine: a DNAT miss must never leave via the default route.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  # Pods may talk to each other and to this host, never beyond the bridge (they also get no
  # default route: only the pod network and the Service CIDR are reachable from a pod).
  if ! iptables -w -nL QUORATE-TESTBED >/dev/null 2>&1; then
    iptables -w -N QUORATE-TESTBED
    iptables -w -A QUORATE-TESTBED -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
    iptables -w -I FORWARD 1 -j QUORATE-TESTBED
  fi
  printf 'search cluster.local\n' >"$DIR/resolv.conf"  # no outside nameserver for pods
}

# put FILE TEMPLATE NAME[=VALUE]...: render TEMPLATE (hack/testbed/config) into FILE only when
# that changes FILE (kube-proxy exits when its config changes, so a second `up` must not touch
# unchanged files).
put() {
  local file=$1 tmp; shift
  tmp="$(mktemp "$file.XXXX")"
  if ! (render "$@") >"$tmp"; then rm -f "$tmp"; die "could not write $file from $1"; fi
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else mv "$tmp" "$file"; fi
}

write_configs() {
  local cni_conf="$DIR/cni/net.d"
  mkdir -p "$cni_conf" "$DIR/containerd" "$DIR/kubelet" "$DIR/volumes"
  put "$cni_conf/10-quorate.conflist" "$CONFIG/10-quorate.conflist" BRIDGE POD_CIDR NODE_IP SERVICE_CIDR DIR
  put "$DIR/containerd/config.toml" "$CONFIG/containerd.toml" DIR PAUSE_IMAGE \
    RUNC_BIN_DIR="$(bin_dir runc)" CNI_BIN_DIR="$(bin_dir cni)" CNI_CONF_DIR="$cni_conf"
  put "$DIR/kubelet/config.yaml" "$CONFIG/kubelet.yaml" NODE_IP PKI DIR DNS_IP
  put "$DIR/kube-proxy.yaml" "$CONFIG/kube-proxy.yaml" PKI POD_CIDR NODE NODE_IP
  put "$DIR/scheduler.yaml" "$CONFIG/scheduler.yaml" PKI
  # The requests of workload service accounts (the operator's among them), one line each, as
  # they arrive: `make bench-scale` counts the operator's own from this log.
  put "$DIR/audit-policy.yaml" "$CONFIG/audit-policy.yaml"
  # No `forward`: names outside the cluster are never resolved upstream.
  put "$DIR/Corefile" "$CONFIG/Corefile" NODE_IP PKI
}

# ---------------------------------------------------------------------------------------
# start NAME CMD...: run a component in its own session, record its PID, log to logs/NAME.log.
start() {
  local name=$1; shift
  running "$name" && return 0
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# wait_for NAME SECONDS CMD...: poll until CMD succeeds; on timeout show the component's log.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      tail -n 30 "$DIR/logs/$name.log" >&2 || true
      die "$name exited during start-up (log: $DIR/logs/$name.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$DIR/logs/$name.log" >&2 || true
      die "$name did not become ready in ${secs}s (log: $DIR/logs/$name.log)"
    fi
    sleep 0.2
  done
}

https_ok() { curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$1"; }

start_control_plane() {
  local k; k="$(bin_dir kubernetes)"
  start etcd "$(bin_dir etcd)/etcd" --name "$NODE" --data-dir "$DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE=http://127.0.0.1:2380" --unsafe-no-fsync --log-level warn
  wait_for etcd 30 curl -sf --max-time 2 http://127.0.0.1:2379/health

  start kube-apiserver "$k/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
    --service-cluster-ip-range "$SERVICE_CIDR" --service-node-port-range 30000-32767 \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --audit-policy-file "$DIR/audit-policy.yaml" --audit-log-path "$AUDIT_LOG" \
    --audit-log-maxsize 200 --audit-log-maxbackup 1 --audit-log-format json \
    --profiling=false --v=1
  wait_for kube-apiserver 90 https_ok "https://$NODE_IP:6443/readyz"

  start kube-controller-manager "$k/kube-controller-manager" --kubeconfig "$PKI/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$PKI/controller-manager.kubeconfig" --authorization-kubeconfig "$PKI/controller-manager.kubeconfig" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" --use-service-account-credentials \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --leader-elect=false --bind-address 127.0.0.1 --v=1
  start kube-scheduler "$k/kube-scheduler" --config "$DIR/scheduler.yaml" \
    --authentication-kubeconfig "$PKI/scheduler.kubeconfig" --authorization-kubeconfig "$PKI/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --v=1
  wait_for kube-controller-manager 60 curl -skf --max-time 2 https://127.0.0.1:10257/healthz
  wait_for kube-scheduler 60 curl -skf --max-time 2 https://127.0.0.1:10259/healthz
}

# Cluster objects the node-side components need: RBAC for CoreDNS and the provisioner, the
# DNS Service on its fixed IP (pointing at CoreDNS on the bridge) and the default StorageClass.
apply_addons() {
  render "$CONFIG/addons.yaml" DNS_IP NODE_IP \
    | kubectl apply --server-side --force-conflicts --field-manager quorate-testbed -f - >/dev/null
}

start_node() {
  local k; k="$(bin_dir kubernetes)"
  # containerd finds containerd-shim-runc-v2 on PATH.
  start containerd env PATH="$(bin_dir containerd):$(bin_dir runc):$PATH" \
    "$(bin_dir containerd)/containerd" --config "$DIR/containerd/config.toml"
  wait_for containerd 30 crictl info
  import_image "$PAUSE_ARCHIVE"
  import_image "$BUSYBOX_ARCHIVE"

  start kubelet "$k/kubelet" --config "$DIR/kubelet/config.yaml" --kubeconfig "$PKI/kubelet.kubeconfig" \
    --hostname-override "$NODE" --node-ip "$NODE_IP" --root-dir "$DIR/kubelet/root" \
    --cert-dir "$DIR/kubelet/pki" --v=1
  start kube-proxy "$k/kube-proxy" --config "$DIR/kube-proxy.yaml" --v=1
  wait_for kube-proxy 60 curl -sf --max-time 2 http://127.0.0.1:10256/healthz
  start coredns "$(bin_dir coredns)/coredns" -conf "$DIR/Corefile"
  wait_for coredns 30 curl -sf --max-time 2 http://127.0.0.1:18181/ready
  start hostpath-provisioner "$(bin_dir provisioner)/hostpath-provisioner" \
    --kubeconfig "$PKI/provisioner.kubeconfig" --root "$DIR/volumes" --node "$NODE"
  wait_for kubelet 90 node_ready
  # Pods cannot be created before the controller-manager made the default ServiceAccount.
  wait_for kube-controller-manager 60 kubectl get serviceaccount default --namespace default
}

# ---------------------------------------------------------------------------------------
# The Gateway: Gateway API standard CRDs (cached by hack/build-tools.sh), the GatewayClass
# `traefik`, and Traefik as a host process with its Kubernetes Gateway provider.
install_gateway_crds() {
  local crds f; crds="$(gateway_api_crds)"
  # One call instead of nine (a warm `up` finds them unchanged); the files are separate documents.
  for f in "$crds"/*.yaml; do echo ---; cat "$f"; done \
    | kubectl apply --server-side --force-conflicts --field-manager quorate-testbed -f - >/dev/null
  kubectl wait --for condition=Established --timeout 60s -f "$crds/gateway.networking.k8s.io_gatewayclasses.yaml" \
    -f "$crds/gateway.networking.k8s.io_gateways.yaml" -f "$crds/gateway.networking.k8s.io_httproutes.yaml" >/dev/null
}

apply_gateway_api() {
  # Exactly what Traefik's Kubernetes Gateway provider (v3.7, experimentalChannel=false) reads and
  # writes: informers (list/watch) on namespaces, Services, EndpointSlices, Secrets, ConfigMaps and
  # the standard-channel Gateway API kinds, and status updates. No `get`: it reads through its
  # informer caches. No pods (only for OpenTelemetry attributes), no TCPRoutes (experimental).
  render "$CONFIG/gateway-api.yaml" | kubectl apply --server-side --force-conflicts --field-manager quorate-testbed -f - >/dev/null
}

# Traefik runs with the group TRAEFIK_GID, and that group may only reach loopback, the pod
# network and the Service CIDR: a hand-made EndpointSlice can never send it elsewhere.
traefik_egress_guard() {
  iptables -w -nL QUORATE-TRAEFIK-OUT >/dev/null 2>&1 && return 0
  iptables -w -N QUORATE-TRAEFIK-OUT
  local d
  for d in 127.0.0.0/8 "$POD_CIDR" "$SERVICE_CIDR"; do iptables -w -A QUORATE-TRAEFIK-OUT -d "$d" -j RETURN; done
  iptables -w -A QUORATE-TRAEFIK-OUT -j REJECT
  iptables -w -I OUTPUT 1 -m owner --gid-owner "$TRAEFIK_GID" -j QUORATE-TRAEFIK-OUT
}

start_traefik() {
  traefik_egress_guard
  # A Gateway listener binds to the entrypoint whose address ends in ":<listener port>", so a
  # listener on port 8000 lands on `web`; no other entrypoint may end in :8000.
  local flags=(
    --global.checkNewVersion=false --global.sendAnonymousUsage=false
    --entryPoints.web.address="$NODE_IP:$TRAEFIK_WEB_PORT"
    --entryPoints.traefik.address="$TRAEFIK_PING_ADDR" --ping=true --ping.entryPoint=traefik
    --providers.kubernetesgateway=true --providers.kubernetesgateway.experimentalChannel=false
    --providers.kubernetesgateway.statusAddress.ip="$NODE_IP"
    # Traefik applies a provider's first change at once, then holds later ones until this much
    # time has passed (default 2s): a weight change right after another one (or after an
    # EndpointSlice change) would wait up to 2 s. Shorter here so convergence is measurable.
    --providers.providersThrottleDuration=200ms
    --log.level="${QUORATE_TRAEFIK_LOG_LEVEL:-INFO}" --log.noColor=true --accesslog=false
  )
  # KUBECONFIG selects Traefik's cluster-external client (its own identity, gen_pki_traefik).
  start traefik setpriv --regid "$TRAEFIK_GID" --clear-groups \
    env -u KUBERNETES_SERVICE_HOST -u KUBERNETES_SERVICE_PORT KUBECONFIG="$PKI/traefik.kubeconfig" \
    "$(bin_dir traefik)/traefik" "${flags[@]}"
  wait_for traefik 30 curl -sf --max-time 2 "http://$TRAEFIK_PING_ADDR/ping"
  # Ready means the provider synced and handles our class (proves its RBAC too).
  wait_for traefik 30 gatewayclass_accepted
}

gatewayclass_accepted() {
  kubectl get gatewayclass traefik -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}' | grep -qx True
}

node_ready() { kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }

# Images the test bed itself needs: the pause image (sandbox) and busybox (smoke tests).
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
PAUSE_ARCHIVE="$QUORATE_CACHE/images/pause-3.10.2.tar"
BUSYBOX_IMAGE=docker.io/library/busybox:1.35-testbed
BUSYBOX_ARCHIVE="$QUORATE_CACHE/images/busybox-1.35-testbed.tar"

build_base_images() {
  mkdir -p "$QUORATE_CACHE/images"
  if [[ ! -f "$PAUSE_ARCHIVE" ]]; then
    gcc -static -O2 -o "$QUORATE_CACHE/images/pause" "$HACK/testbed/pause/pause.c"
    python3 "$HACK/mkoci.py" "$PAUSE_ARCHIVE" "$PAUSE_IMAGE" --entrypoint '["/pause"]' --user 65535:65535 \
      "$QUORATE_CACHE/images/pause:/pause" >/dev/null
  fi
  if [[ ! -f "$BUSYBOX_ARCHIVE" ]]; then
    need_pkg busybox-static /bin/busybox
    { ldd /bin/busybox 2>&1 || true; } | grep -q "not a dynamic" \
      || die "/bin/busybox is not static; install the Debian package busybox-static"
    local links=() a
    for a in sh ls cat echo mkdir sleep wget nslookup nc ip hostname true false grep sed id env date rm; do links+=("@/bin/$a=busybox"); done
    python3 "$HACK/mkoci.py" "$BUSYBOX_ARCHIVE" "$BUSYBOX_IMAGE" --entrypoint '["/bin/sh"]' \
      /bin/busybox:/bin/busybox "${links[@]}" >/dev/null
  fi
}

import_image() {
  "$(bin_dir containerd)/ctr" --address "$DIR/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$1" >/dev/null \
    || die "importing $1 into containerd failed"
}

cmd_up() {
  local t0=$SECONDS
  prerequisites
  build_base_images
  gen_pki
  setup_host
  write_configs
  start_control_plane
  apply_addons
  # The Gateway API CRDs take a few seconds to be established: install them while the node starts.
  install_gateway_crds & local crds=$!
  start_node
  wait "$crds" || die "installing the Gateway API CRDs failed"
  apply_gateway_api
  start_traefik
  echo "cluster-up: ready in $((SECONDS - t0)) s (kubeconfig: $KUBECONFIG_ADMIN)"
}

# ---------------------------------------------------------------------------------------
stop_pid() { # name pid: TERM, then KILL after a grace period
  local name=$1 pid=$2
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "$name ($pid) did not stop on SIGTERM; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_component() {
  local f; f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 0
  stop_pid "$1" "$(cat "$f")"
  rm -f "$f"
}

remove_pods() {
  # Stop the kubelet first so it does not restart what we remove, then remove every sandbox
  # through the runtime (which runs CNI DEL, freeing IPs and the CNI iptables rules).
  stop_component hostpath-provisioner
  stop_component kubelet
  if running containerd; then
    timeout 60 "$(bin_dir crictl)/crictl" --runtime-endpoint "unix://$DIR/containerd/containerd.sock" --timeout 20s rmp -af >/dev/null 2>&1 || true
  fi
  # Shims that outlive containerd are ours: containerd recorded their PIDs in its state dir.
  local f
  for f in "$DIR"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    if [[ -f "$f" ]]; then stop_pid shim "$(cat "$f")"; fi
  done
}

cleanup_iptables() {
  # kube-proxy removes its own rules; then the chains kubelet/CNI created (KUBE-*, CNI-*).
  "$(bin_dir kubernetes)/kube-proxy" --cleanup >/dev/null 2>&1 || true
  local table chain rule
  for table in filter nat mangle; do
    # Jumps from built-in chains into KUBE-*/CNI-* chains, then the chains themselves.
    while read -r rule; do
      # shellcheck disable=SC2086
      [[ -n "$rule" ]] && iptables -w -t "$table" ${rule/#-A/-D} 2>/dev/null
    done < <(iptables -w -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-)' || true)
    for chain in $(iptables -w -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
      iptables -w -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -w -t "$table" -S 2>/dev/null | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
      iptables -w -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  if iptables -w -nL QUORATE-TESTBED >/dev/null 2>&1; then
    iptables -w -D FORWARD -j QUORATE-TESTBED 2>/dev/null || true
    iptables -w -F QUORATE-TESTBED && iptables -w -X QUORATE-TESTBED
  fi
  if iptables -w -nL QUORATE-TRAEFIK-OUT >/dev/null 2>&1; then
    iptables -w -D OUTPUT -m owner --gid-owner "$TRAEFIK_GID" -j QUORATE-TRAEFIK-OUT 2>/dev/null || true
    iptables -w -F QUORATE-TRAEFIK-OUT && iptables -w -X QUORATE-TRAEFIK-OUT
  fi
}

cleanup_cgroups() {
  # Pod cgroups live outside this session's cgroup (cgroupfs driver): remove them deepest first.
  local root
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [[ -d "$root" ]] || continue
    find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

cleanup_mounts() {
  # Everything mounted under our directory (overlay rootfs, tmpfs for secrets, netns), deepest first.
  local m
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$DIR" '$2 ~ "^"d {print $2}' /proc/self/mounts | sort -r)
}

cmd_down() {
  [[ $EUID -eq 0 ]] || die "the test bed runs as root"
  [[ -d "$DIR" ]] || { echo "cluster-down: nothing to do"; return 0; }
  remove_pods
  local c
  for c in $(echo "$COMPONENTS" | tr ' ' '\n' | tac); do stop_component "$c"; done
  cleanup_iptables
  cleanup_mounts
  cleanup_cgroups
  # Network namespaces created while the cluster ran (containerd keeps them under its state dir;
  # older layouts use /var/run/netns).
  if [[ -f "$DIR/state/netns.before" ]]; then
    for ns in /var/run/netns/*; do
      [[ -e "$ns" ]] || continue  # no namespaces: the glob stays unexpanded
      ns="${ns##*/}"
      grep -qx "$ns" "$DIR/state/netns.before" || ip netns delete "$ns" 2>/dev/null || true
    done
  fi
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  if [[ -f "$DIR/state/sysctl.orig" ]]; then
    while read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done <"$DIR/state/sysctl.orig"
  fi
  rm -rf "$DIR"
  echo "cluster-down: stopped and removed"
}

cmd_status() {
  if [[ ! -d "$DIR/pids" ]]; then echo "cluster: not running"; return 1; fi
  local c state all=0
  for c in $COMPONENTS; do
    if running "$c"; then state="running (pid $(cat "$(pidfile "$c")"))"; else state="stopped"; all=1; fi
    printf '%-24s %s\n' "$c" "$state"
  done
  echo "kubeconfig: $KUBECONFIG_ADMIN"
  echo "logs:       $DIR/logs/"
  if running kube-apiserver; then kubectl get nodes -o wide 2>/dev/null || true; fi
  return $all
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubeconfig) echo "$KUBECONFIG_ADMIN" ;;
  audit-log) echo "$AUDIT_LOG" ;;
  *) die "usage: hack/cluster.sh up|down|status|kubeconfig|audit-log" ;;
esac
