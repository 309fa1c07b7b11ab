#!/usr/bin/env bash
# The local test bed: a real Kubernetes cluster of one control plane and NODES worker nodes
# (default 3), from the components built by hack/build-tools.sh, run as host processes (no
# container engine, no registry). docs/testbed.md describes the layout.
#
#   hack/cluster.sh up                  start (idempotent; adds nodes when NODES grew)
#   hack/cluster.sh down                stop everything it started and remove what it created
#   hack/cluster.sh status              what runs
#   hack/cluster.sh nodes               the worker nodes' names, one per line
#   hack/cluster.sh partition NODE      drop all of NODE's traffic, both ways (processes keep running)
#   hack/cluster.sh freeze NODE         stop every process of NODE (kubelet, runtime, pods)
#   hack/cluster.sh kill NODE           end every process of NODE at once, like a power loss
#   hack/cluster.sh restore [NODE]      undo the fault of NODE (every node without NODE); a no-op
#                                       for a node without a fault
#   hack/cluster.sh faults              the nodes with a fault, and which
#
# The control plane (etcd, kube-apiserver, controller-manager, scheduler), CoreDNS, the volume
# provisioner, Traefik and a kube-proxy (so the host reaches Services as a pod does) run on the
# host, on the address HOST_IP of the port-less bridge quorate0. Each node is a network namespace
# with a veth to the host, its own bridge and pod CIDR, containerd, kubelet and kube-proxy; every
# process of a node (pods included) is in the node's freezer cgroup.
#
# Network safety (TESTBED.md): the Service CIDR, the pod CIDR and the node network are routed on
# this machine before kube-proxy or any pod starts; nodes and pods forward only to each other and
# to the host; pods have no default route; DNS never forwards.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"

DIR="${QUORATE_CLUSTER_DIR:-/var/tmp/quorate-cluster}"
AUDIT_LOG="$DIR/logs/audit.log"
NODES="${NODES:-3}"
HOST_IF=quorate0
HOST_IP=10.89.0.1
# Node i: netns quorate-node-i, veth qnode<i> (host, 10.89.<i>.1) <-> eth0 (node, 10.89.<i>.2),
# bridge cni0 10.88.<i>.1 with pods in 10.88.<i>.0/24.
NODE_NET=10.89.0.0/16
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
# shellcheck disable=SC2034  # used by name: render ... DNS_IP (hack/testbed/config)
DNS_IP=10.96.0.10
# The control plane's name where a component wants a node name (the host's kube-proxy).
CONTROL_PLANE=quorate-control-plane
PKI="$DIR/pki"
KUBECONFIG_ADMIN="$DIR/kubeconfig"
FREEZER=/sys/fs/cgroup/freezer
# The configuration files and manifests, rendered with the values above (render, hack/lib.sh).
CONFIG="$HACK/testbed/config"
# Traefik, the Gateway API implementation (docs/testbed-gateway.md): the Gateway entrypoint `web`
# listens on HOST_IP only, ping on loopback. Its egress is confined by the group it runs as.
TRAEFIK_WEB_PORT=8000
TRAEFIK_PING_ADDR=127.0.0.1:18082
TRAEFIK_GID=18082
# Start order of the host's components; `down` stops in reverse. Each node runs NODE_COMPONENTS.
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy coredns hostpath-provisioner traefik"
NODE_COMPONENTS="containerd kubelet kube-proxy"
# Kernel settings the kubelet insists on (protectKernelDefaults), plus forwarding; the previous
# values are restored by `down`.
SYSCTLS="vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1 kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000 net.ipv4.ip_forward=1"

kubectl() { "$(bin_dir kubernetes)/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
pidfile() { echo "$DIR/pids/$1.pid"; }
running() { local p; p="$(cat "$(pidfile "$1")" 2>/dev/null)" && [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

# Node i's names and addresses.
node_name() { echo "quorate-node-$1"; }
node_index() { # NODE -> i, or a clear error naming the nodes
  local n=$1
  if [[ "$n" =~ ^quorate-node-([1-9])$ && -d "$DIR/nodes/$n" ]]; then echo "${BASH_REMATCH[1]}"; return 0; fi
  die "unknown node '$n' (nodes: $(known_nodes | xargs | sed 's/ /, /g'))"
}
known_nodes() { local d; for d in "$DIR"/nodes/quorate-node-*; do [[ -d "$d" ]] && basename "$d"; done; true; }
node_dir() { echo "$DIR/nodes/$(node_name "$1")"; }
node_ip() { echo "10.89.$1.2"; }
node_gw() { echo "10.89.$1.1"; }
node_veth() { echo "qnode$1"; }
node_netns() { node_name "$1"; }
in_netns() { local i=$1; shift; nsenter --net="/var/run/netns/$(node_netns "$i")" -- "$@"; }
crictl_node() { local i=$1; shift; "$(bin_dir crictl)/crictl" --runtime-endpoint "unix://$(node_dir "$i")/containerd/containerd.sock" "$@"; }

# ---------------------------------------------------------------------------------------
prerequisites() {
  [[ $EUID -eq 0 ]] || die "the test bed runs as root (it creates network namespaces, iptables rules and cgroups)"
  [[ "$NODES" =~ ^[1-9]$ ]] || die "NODES=$NODES: the number of worker nodes must be 1 to 9"
  need_cmd ip "install the Debian package iproute2"
  need_cmd nsenter "install the Debian package util-linux"
  need_pkg iptables /usr/sbin/iptables
  need_pkg conntrack /usr/sbin/conntrack
  need_cmd openssl "install the Debian package openssl"
  need_cmd python3 "install python3"
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || die "the kernel lacks br_netfilter (needed for Service traffic between pods on a bridge)"
  [[ -d "$FREEZER" ]] || die "the cgroup v1 freezer is not mounted at $FREEZER (node freeze and kill need it)"
  for c in kubernetes etcd containerd runc cni crictl coredns provisioner traefik; do
    [[ -d "$(bin_dir $c)" ]] || die "component '$c' is not built: run 'make tools' (hack/build-tools.sh)"
  done
  compgen -G "$(gateway_api_crds)/*.yaml" >/dev/null || die "the Gateway API CRDs are not cached: run 'make tools' (hack/build-tools.sh)"
  need_cmd setpriv "install the Debian package util-linux"
}

# ---------------------------------------------------------------------------------------
CLIENT_EXT=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
SERVER_EXT=$'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'
# sign NAME SUBJECT EXTENSIONS: a key and a certificate signed by the test bed's CA, in $PKI.
sign() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$1.key" -out "$PKI/$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 825 \
    -out "$PKI/$1.crt" -extfile <(printf '%s\n' "$3") 2>/dev/null
  rm -f "$PKI/$1.csr"
}
kubeconfig_for() { render "$CONFIG/kubeconfig.yaml" HOST_IP PKI KUBECONFIG_USER="$1" >"$PKI/$1.kubeconfig"; }

gen_pki() {
  if [[ ! -f "$PKI/admin.crt" ]]; then
    mkdir -p "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/ca.key" \
      -out "$PKI/ca.crt" -days 3650 -subj "/CN=quorate-testbed-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null && openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    sign apiserver "/CN=kube-apiserver" "$SERVER_EXT
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$HOST_IP,IP:$API_SERVICE_IP"
    sign controller-manager "/CN=system:kube-controller-manager" "$CLIENT_EXT"
    sign scheduler "/CN=system:kube-scheduler" "$CLIENT_EXT"
    sign kube-proxy "/CN=system:kube-proxy" "$CLIENT_EXT"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$CLIENT_EXT"
    # CoreDNS, the provisioner and Traefik get their own identities, bound to the RBAC they
    # need (addons.yaml, gateway-api.yaml).
    sign coredns "/CN=quorate-testbed:coredns" "$CLIENT_EXT"
    sign provisioner "/CN=quorate-testbed:provisioner" "$CLIENT_EXT"
    sign traefik "/CN=quorate-testbed:traefik" "$CLIENT_EXT"
    local u
    for u in controller-manager scheduler kube-proxy coredns provisioner traefik; do kubeconfig_for "$u"; done
    # The admin's last: its certificate says the PKI is complete.
    sign admin "/O=system:masters/CN=quorate-testbed-admin" "$CLIENT_EXT"
    kubeconfig_for admin
    cp "$PKI/admin.kubeconfig" "$KUBECONFIG_ADMIN"
  fi
}

# Each node's kubelet: a client identity system:node:<node> (NodeRestriction) and a serving
# certificate for its own address.
gen_pki_node() {
  local i=$1 n; n="$(node_name "$1")"
  [[ -f "$PKI/kubelet-$n.kubeconfig" ]] && return 0
  sign "kubelet-serving-$n" "/CN=$n" "$SERVER_EXT
subjectAltName=DNS:$n,DNS:localhost,IP:127.0.0.1,IP:$(node_ip "$i")"
  sign "kubelet-$n" "/O=system:nodes/CN=system:node:$n" "$CLIENT_EXT"
  kubeconfig_for "kubelet-$n"
}

# ---------------------------------------------------------------------------------------
# ensure_fault_chain TABLE HOOK: the chain QUORATE-FAULTS in TABLE, jumped to first from HOOK.
ensure_fault_chain() {
  iptables -w -t "$1" -nL QUORATE-FAULTS >/dev/null 2>&1 && return 0
  iptables -w -t "$1" -N QUORATE-FAULTS
  iptables -w -t "$1" -I "$2" 1 -j QUORATE-FAULTS
}

setup_host() {
  mkdir -p "$DIR"/{pids,logs,state,nodes}
  # Remember the kernel settings we change, once, so `down` restores the originals.
  if [[ ! -f "$DIR/state/sysctl.orig" ]]; then
    for kv in $SYSCTLS; do echo "${kv%%=*}=$(sysctl -n "${kv%%=*}")"; done >"$DIR/state/sysctl.orig"
  fi
  for kv in $SYSCTLS; do sysctl -qw "$kv"; done

  # The control plane's address, on a bridge without ports (this kernel has no dummy devices).
  # The Service CIDR is routed onto it: a DNAT miss
  # from the host goes nowhere, never via the default route. Pod CIDR and node network: every
  # node's part gets a more specific route below; what no node has is unreachable.
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type bridge
    ip addr add "$HOST_IP/32" dev "$HOST_IF"
  fi
  ip link set "$HOST_IF" up
  ip route replace "$SERVICE_CIDR" dev "$HOST_IF"
  ip route replace unreachable "$POD_CIDR"
  ip route replace unreachable "$NODE_NET"
  # Nodes forward only to each other: nothing from a node leaves through another interface,
  # nothing from elsewhere is forwarded into a node.
  if ! iptables -w -nL QUORATE-TESTBED >/dev/null 2>&1; then
    iptables -w -N QUORATE-TESTBED
    iptables -w -A QUORATE-TESTBED -i qnode+ -o qnode+ -j RETURN
    iptables -w -A QUORATE-TESTBED -i qnode+ -j DROP
    iptables -w -A QUORATE-TESTBED -o qnode+ -j DROP
    iptables -w -I FORWARD 1 -j QUORATE-TESTBED
  fi
  # Node faults (cmd_partition): in the raw table's PREROUTING (every packet that arrives from
  # a node) and the mangle table's POSTROUTING (every packet that leaves towards one). Not in
  # filter: kube-proxy's KUBE-FORWARD accepts established connections before any rule of ours,
  # so a partition there cut only new connections.
  ensure_fault_chain raw PREROUTING
  ensure_fault_chain mangle POSTROUTING
  printf 'search cluster.local\n' >"$DIR/resolv.conf"  # no outside nameserver for pods
}

# The network namespace of node i, its veth to the host, its bridge and its routes: only the
# pod CIDR, the node network (the host among it) and the Service CIDR (onto the bridge, where a
# DNAT miss ends) are reachable from the node; there is no default route.
setup_node_network() {
  local i=$1 ns veth; ns="$(node_netns "$i")" veth="$(node_veth "$i")"
  [[ -e "/var/run/netns/$ns" ]] || ip netns add "$ns"
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip addr add "$(node_gw "$i")/24" dev "$veth"
  fi
  ip link set "$veth" up
  ip route replace "10.88.$i.0/24" via "$(node_ip "$i")" dev "$veth"
  in_netns "$i" sh -ec "
    ip link set lo up
    ip addr replace $(node_ip "$i")/24 dev eth0
    ip link set eth0 up
    ip link show cni0 >/dev/null 2>&1 || ip link add cni0 type bridge
    ip addr replace 10.88.$i.1/24 dev cni0
    ip link set cni0 up
    ip route replace $SERVICE_CIDR dev cni0
    ip route replace $POD_CIDR via $(node_gw "$i")
    ip route replace $NODE_NET via $(node_gw "$i")
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
    # Pods forward only to pods and to the node network.
    if ! iptables -w -nL QUORATE-TESTBED >/dev/null 2>&1; then
      iptables -w -N QUORATE-TESTBED
      iptables -w -A QUORATE-TESTBED -i cni0 -d $POD_CIDR -j RETURN
      iptables -w -A QUORATE-TESTBED -i cni0 -d $NODE_NET -j RETURN
      iptables -w -A QUORATE-TESTBED -i cni0 -j DROP
      iptables -w -I FORWARD 1 -j QUORATE-TESTBED
    fi"
}

# The node's freezer cgroup holds its daemons (…/daemons) and, through the kubelet's cgroupRoot,
# its pods (…/kubepods). The kubelet wants its cgroupRoot in every hierarchy.
setup_node_cgroups() {
  local n; n="$(node_name "$1")"
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ "$h" == */unified/ ]] && continue
    mkdir -p "$h$n"
    if [[ -f "${h}cpuset.cpus" && -z "$(cat "$h$n/cpuset.cpus")" ]]; then
      cat "${h}cpuset.cpus" >"$h$n/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$n/cpuset.mems"
    fi
  done
  mkdir -p "$FREEZER/$n/daemons"
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
  put "$DIR/kube-proxy.yaml" "$CONFIG/kube-proxy.yaml" PKI POD_CIDR NODE="$CONTROL_PLANE" NODE_IP="$HOST_IP"
  put "$DIR/scheduler.yaml" "$CONFIG/scheduler.yaml" PKI
  # The requests of workload service accounts (the operator's among them), one line each, as
  # they arrive: `make bench-scale` counts the operator's own from this log.
  put "$DIR/audit-policy.yaml" "$CONFIG/audit-policy.yaml"
  # No `forward`: names outside the cluster are never resolved upstream.
  put "$DIR/Corefile" "$CONFIG/Corefile" HOST_IP PKI
}

write_node_configs() {
  local i=$1 n nd; n="$(node_name "$i")" nd="$(node_dir "$i")"
  mkdir -p "$nd"/{cni/net.d,containerd,kubelet,volumes,pod-logs}
  put "$nd/cni/net.d/10-quorate.conflist" "$CONFIG/10-quorate.conflist" POD_CIDR NODE_NET SERVICE_CIDR \
    NODE_SUBNET="10.88.$i.0/24" BRIDGE_IP="10.88.$i.1" NODE_DIR="$nd"
  put "$nd/containerd/config.toml" "$CONFIG/containerd.toml" NODE_DIR="$nd" PAUSE_IMAGE \
    RUNC_BIN_DIR="$(bin_dir runc)" CNI_BIN_DIR="$(bin_dir cni)" CNI_CONF_DIR="$nd/cni/net.d"
  put "$nd/kubelet/config.yaml" "$CONFIG/kubelet.yaml" NODE_IP="$(node_ip "$i")" NODE="$n" PKI NODE_DIR="$nd" DIR DNS_IP
  # Health and metrics on the node's own loopback (its network namespace).
  put "$nd/kube-proxy.yaml" "$CONFIG/kube-proxy.yaml" PKI POD_CIDR NODE="$n" NODE_IP="$(node_ip "$i")"
}

# ---------------------------------------------------------------------------------------
# start NAME CMD...: run a component in its own session, record its PID, log to logs/NAME.log.
start() {
  local name=$1; shift
  running "$name" && return 0
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# start_in_node I NAME CMD...: start NAME (node-qualified) in node I's network namespace and
# freezer cgroup; what it starts (shims, containers) stays in both.
start_in_node() {
  local i=$1 name=$2 n; shift 2; n="$(node_name "$i")"
  # shellcheck disable=SC2016  # $$, $0 and $@ are the inner shell's
  start "$n.$name" nsenter --net="/var/run/netns/$(node_netns "$i")" -- \
    sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$FREEZER/$n/daemons" "$@"
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
  start etcd "$(bin_dir etcd)/etcd" --name quorate-etcd --data-dir "$DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "quorate-etcd=http://127.0.0.1:2380" --unsafe-no-fsync --log-level warn
  wait_for etcd 30 curl -sf --max-time 2 http://127.0.0.1:2379/health

  start kube-apiserver "$k/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$HOST_IP" --advertise-address "$HOST_IP" --secure-port 6443 \
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
  wait_for kube-apiserver 90 https_ok "https://$HOST_IP:6443/readyz"

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

# Cluster objects the components need: RBAC for CoreDNS and the provisioner, the DNS Service on
# its fixed IP (pointing at CoreDNS on the host) and the default StorageClass.
apply_addons() {
  render "$CONFIG/addons.yaml" DNS_IP HOST_IP \
    | kubectl apply --server-side --force-conflicts --field-manager quorate-testbed -f - >/dev/null
}

# The host's own services: kube-proxy (the host reaches ClusterIPs as a pod does), CoreDNS and
# the provisioner (one for every node: a volume is a directory of the node it was made for).
start_host_services() {
  start kube-proxy "$(bin_dir kubernetes)/kube-proxy" --config "$DIR/kube-proxy.yaml" --v=1
  wait_for kube-proxy 60 curl -sf --max-time 2 http://127.0.0.1:10256/livez
  start coredns "$(bin_dir coredns)/coredns" -conf "$DIR/Corefile"
  wait_for coredns 30 curl -sf --max-time 2 http://127.0.0.1:18181/ready
  start hostpath-provisioner "$(bin_dir provisioner)/hostpath-provisioner" \
    --kubeconfig "$PKI/provisioner.kubeconfig" --root "$DIR/nodes" --volumes-dir volumes
}

# start_node I: node I's daemons, in its network namespace and freezer cgroup.
start_node() {
  local i=$1 n nd k; n="$(node_name "$i")" nd="$(node_dir "$i")" k="$(bin_dir kubernetes)"
  # containerd finds containerd-shim-runc-v2 on PATH.
  start_in_node "$i" containerd env PATH="$(bin_dir containerd):$(bin_dir runc):$PATH" \
    "$(bin_dir containerd)/containerd" --config "$nd/containerd/config.toml"
  wait_for "$n.containerd" 30 crictl_node "$i" info
  import_image "$i" "$PAUSE_ARCHIVE"
  import_image "$i" "$BUSYBOX_ARCHIVE"
  start_in_node "$i" kubelet "$k/kubelet" --config "$nd/kubelet/config.yaml" --kubeconfig "$PKI/kubelet-$n.kubeconfig" \
    --hostname-override "$n" --node-ip "$(node_ip "$i")" --root-dir "$nd/kubelet/root" \
    --cert-dir "$nd/kubelet/pki" --v=1
  start_in_node "$i" kube-proxy "$k/kube-proxy" --config "$nd/kube-proxy.yaml" --v=1
}

wait_node() {
  local i=$1 n; n="$(node_name "$i")"
  wait_for "$n.kube-proxy" 60 in_netns "$i" curl -sf --max-time 2 http://127.0.0.1:10256/livez
  wait_for "$n.kubelet" 90 node_ready "$n"
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

# Traefik runs with the group TRAEFIK_GID, and that group may only reach loopback, the API
# server, the pod network and the Service CIDR: a hand-made EndpointSlice can never send it
# elsewhere.
traefik_egress_guard() {
  iptables -w -nL QUORATE-TRAEFIK-OUT >/dev/null 2>&1 && return 0
  iptables -w -N QUORATE-TRAEFIK-OUT
  local d
  for d in 127.0.0.0/8 "$HOST_IP/32" "$POD_CIDR" "$SERVICE_CIDR"; do iptables -w -A QUORATE-TRAEFIK-OUT -d "$d" -j RETURN; done
  iptables -w -A QUORATE-TRAEFIK-OUT -j REJECT
  iptables -w -I OUTPUT 1 -m owner --gid-owner "$TRAEFIK_GID" -j QUORATE-TRAEFIK-OUT
}

start_traefik() {
  traefik_egress_guard
  # A Gateway listener binds to the entrypoint whose address ends in ":<listener port>", so a
  # listener on port 8000 lands on `web`; no other entrypoint may end in :8000.
  local flags=(
    --global.checkNewVersion=false --global.sendAnonymousUsage=false
    --entryPoints.web.address="$HOST_IP:$TRAEFIK_WEB_PORT"
    --entryPoints.traefik.address="$TRAEFIK_PING_ADDR" --ping=true --ping.entryPoint=traefik
    --providers.kubernetesgateway=true --providers.kubernetesgateway.experimentalChannel=false
    --providers.kubernetesgateway.statusAddress.ip="$HOST_IP"
    # Traefik applies a provider's first change at once, then holds later ones until this much
    # time has passed (default 2s): a weight change right after another one (or after an
    # EndpointSlice change) would wait up to 2 s. Shorter here so convergence is measurable.
    --providers.providersThrottleDuration=200ms
    --log.level="${QUORATE_TRAEFIK_LOG_LEVEL:-INFO}" --log.noColor=true --accesslog=false
  )
  # KUBECONFIG selects Traefik's cluster-external client (its own identity, gen_pki).
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

node_ready() { kubectl get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }
# Ready and without the node lifecycle controller's taints (not-ready, unreachable): until they
# are lifted, the scheduler keeps new pods off the node and members of a new group would share one.
node_schedulable() {
  node_ready "$1" || return 1
  ! kubectl get node "$1" -o jsonpath='{range .spec.taints[*]}{.key}{"\n"}{end}' \
    | grep -qE '^node\.kubernetes\.io/(not-ready|unreachable)$'
}

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

import_image() { # I ARCHIVE
  "$(bin_dir containerd)/ctr" --address "$(node_dir "$1")/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$2" >/dev/null \
    || die "importing $2 into the containerd of $(node_name "$1") failed"
}

cmd_up() {
  local t0=$SECONDS i
  prerequisites
  build_base_images
  gen_pki
  setup_host
  write_configs
  for i in $(seq 1 "$NODES"); do
    gen_pki_node "$i"
    setup_node_network "$i"
    setup_node_cgroups "$i"
    write_node_configs "$i"
  done
  start_control_plane
  apply_addons
  # The Gateway API CRDs take a few seconds to be established: install them while the nodes start.
  install_gateway_crds & local crds=$!
  start_host_services
  for i in $(seq 1 "$NODES"); do start_node "$i"; done
  for i in $(seq 1 "$NODES"); do wait_node "$i"; done
  # Pods cannot be created before the controller-manager made the default ServiceAccount.
  wait_for kube-controller-manager 60 kubectl get serviceaccount default --namespace default
  wait "$crds" || die "installing the Gateway API CRDs failed"
  apply_gateway_api
  start_traefik
  echo "cluster-up: $(known_nodes | wc -l) nodes ready in $((SECONDS - t0)) s (kubeconfig: $KUBECONFIG_ADMIN)"
}

# ---------------------------------------------------------------------------------------
# Node faults. The fault of a node is recorded in state/faults/NODE (partitioned, frozen or
# killed) so that `restore` knows what to undo and `down` can undo it.
fault_file() { echo "$DIR/state/faults/$1"; }
fault_of() { cat "$(fault_file "$1")" 2>/dev/null || true; }

need_running_bed() { [[ -d "$DIR/nodes" ]] || die "the test bed is not running (make cluster-up)"; }
need_no_fault() {
  local f; f="$(fault_of "$1")"
  [[ -z "$f" ]] || die "$1 is already $f: restore it first (hack/cluster.sh restore $1)"
}
record_fault() { mkdir -p "$DIR/state/faults"; echo "$2" >"$(fault_file "$1")"; }

cmd_partition() {
  need_running_bed
  # One assignment per line: in `i=$(..) veth=$(..)` the status is the last substitution's,
  # and an unknown node would not stop the script.
  local n=$1 i veth
  i="$(node_index "$n")"
  veth="$(node_veth "$i")"
  need_no_fault "$n"
  iptables -w -t raw -A QUORATE-FAULTS -i "$veth" -j DROP
  iptables -w -t mangle -A QUORATE-FAULTS -o "$veth" -j DROP
  record_fault "$n" partitioned
  echo "$n: partitioned"
}

freezer_state() { cat "$FREEZER/$1/freezer.state"; }
freeze_cgroup() { # NODE: freeze and wait until every task is frozen
  echo FROZEN >"$FREEZER/$1/freezer.state"
  local _
  for _ in $(seq 1 100); do [[ "$(freezer_state "$1")" == FROZEN ]] && return 0; sleep 0.05; done
  die "$1 did not freeze in 5 s (freezer.state: $(freezer_state "$1"))"
}
thaw_cgroup() { echo THAWED >"$FREEZER/$1/freezer.state"; }

cmd_freeze() {
  need_running_bed
  local n=$1; node_index "$n" >/dev/null
  need_no_fault "$n"
  freeze_cgroup "$n"
  record_fault "$n" frozen
  echo "$n: frozen"
}

# Every task of the node's freezer cgroup (daemons and pods).
node_tasks() { find "$FREEZER/$1" -name tasks -exec cat {} + 2>/dev/null | sort -un; }

# kill_node_tasks NODE: frozen first, so nothing forks or restarts meanwhile, then SIGKILL to
# every task, then thawed so the signals are delivered; waits until none is left.
kill_node_tasks() {
  local n=$1 pid _
  freeze_cgroup "$n"
  for pid in $(node_tasks "$n"); do kill -KILL "$pid" 2>/dev/null || true; done
  thaw_cgroup "$n"
  for _ in $(seq 1 100); do [[ -z "$(node_tasks "$n")" ]] && return 0; sleep 0.05; done
  die "$n: processes survived SIGKILL: $(node_tasks "$n" | xargs)"
}

cmd_kill() {
  need_running_bed
  local n=$1; node_index "$n" >/dev/null
  need_no_fault "$n"
  kill_node_tasks "$n"
  record_fault "$n" killed
  echo "$n: killed"
}

cmd_restore() {
  need_running_bed
  local n=$1 i f veth
  i="$(node_index "$n")"
  f="$(fault_of "$n")"
  veth="$(node_veth "$i")"
  case "$f" in
    "") echo "$n: no fault"; return 0 ;;
    partitioned)
      iptables -w -t raw -D QUORATE-FAULTS -i "$veth" -j DROP 2>/dev/null || true
      iptables -w -t mangle -D QUORATE-FAULTS -o "$veth" -j DROP 2>/dev/null || true ;;
    frozen) thaw_cgroup "$n" ;;
    killed)
      # Power back on: the node's daemons start again; the kubelet restarts its pods.
      start_node "$i"
      wait_node "$i" ;;
    *) die "$n: unknown fault '$f' in $(fault_file "$n")" ;;
  esac
  rm -f "$(fault_file "$n")"
  wait_for "$n.kubelet" 120 node_schedulable "$n"
  echo "$n: restored (was $f)"
}

cmd_faults() {
  need_running_bed
  local n f
  for n in $(known_nodes); do f="$(fault_of "$n")"; [[ -z "$f" ]] || echo "$n $f"; done
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

# stop_node I: the node's pods through its runtime (CNI DEL frees their addresses), its daemons,
# then whatever is left in its freezer cgroup (only this node's processes are there).
stop_node() {
  local i=$1 n nd; n="$(node_name "$i")" nd="$(node_dir "$i")"
  if [[ -d "$FREEZER/$n" ]]; then thaw_cgroup "$n" 2>/dev/null || true; fi
  # The kubelet first, so it does not restart what we remove.
  stop_component "$n.kubelet"
  if running "$n.containerd"; then
    timeout 60 "$(bin_dir crictl)/crictl" --runtime-endpoint "unix://$nd/containerd/containerd.sock" --timeout 20s rmp -af >/dev/null 2>&1 || true
  fi
  stop_component "$n.kube-proxy"
  stop_component "$n.containerd"
  local f
  for f in "$nd"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    if [[ -f "$f" ]]; then stop_pid shim "$(cat "$f")"; fi
  done
  # A subshell: a process that survives is reported, and the rest of `down` still runs.
  if [[ -d "$FREEZER/$n" ]]; then (kill_node_tasks "$n") || true; fi
}

cleanup_iptables() {
  # kube-proxy removes its own rules; then the chains kubelet/CNI created (KUBE-*, CNI-*). The
  # nodes' rules go with their network namespaces.
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
  local hook
  # table:hook:chain; the filter table's QUORATE-FAULTS is an earlier layout's.
  # Every jump first, then the chains (a chain still jumped to cannot be deleted).
  local hooks="filter:FORWARD:QUORATE-TESTBED filter:INPUT:QUORATE-FAULTS filter:OUTPUT:QUORATE-FAULTS
    filter:FORWARD:QUORATE-FAULTS raw:PREROUTING:QUORATE-FAULTS mangle:POSTROUTING:QUORATE-FAULTS"
  for chain in $hooks; do
    IFS=: read -r table hook chain <<<"$chain"
    while iptables -w -t "$table" -D "$hook" -j "$chain" 2>/dev/null; do :; done
  done
  for chain in $hooks; do
    IFS=: read -r table hook chain <<<"$chain"
    if iptables -w -t "$table" -nL "$chain" >/dev/null 2>&1; then
      iptables -w -t "$table" -F "$chain" && iptables -w -t "$table" -X "$chain"
    fi
  done
  if iptables -w -nL QUORATE-TRAEFIK-OUT >/dev/null 2>&1; then
    iptables -w -D OUTPUT -m owner --gid-owner "$TRAEFIK_GID" -j QUORATE-TRAEFIK-OUT 2>/dev/null || true
    iptables -w -F QUORATE-TRAEFIK-OUT && iptables -w -X QUORATE-TRAEFIK-OUT
  fi
}

cleanup_cgroups() {
  # Pod cgroups live under each node's cgroup root, in every hierarchy: deepest first. (Also
  # `kubepods` at the top, where an earlier single-node test bed kept them.)
  local root
  for root in /sys/fs/cgroup/*/quorate-node-* /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
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

# An earlier single-node test bed ran one containerd on the host, on the bridge cni0.
down_single_node_layout() {
  local sock="$DIR/containerd/containerd.sock" f
  stop_component hostpath-provisioner
  stop_component kubelet
  if running containerd; then
    timeout 60 "$(bin_dir crictl)/crictl" --runtime-endpoint "unix://$sock" --timeout 20s rmp -af >/dev/null 2>&1 || true
  fi
  stop_component containerd
  for f in "$DIR"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
    if [[ -f "$f" ]]; then stop_pid shim "$(cat "$f")"; fi
  done
  ip route del "$SERVICE_CIDR" dev cni0 2>/dev/null || true
  ip link del cni0 2>/dev/null || true
}

cmd_down() {
  [[ $EUID -eq 0 ]] || die "the test bed runs as root"
  [[ -d "$DIR" ]] || { echo "cluster-down: nothing to do"; return 0; }
  local n i c
  for n in $(known_nodes); do stop_node "${n#quorate-node-}"; done
  [[ -d "$DIR/containerd" ]] && down_single_node_layout
  for c in $(echo "$COMPONENTS" | tr ' ' '\n' | tac); do stop_component "$c"; done
  cleanup_iptables
  cleanup_mounts
  for n in $(known_nodes); do
    i=${n#quorate-node-}
    ip netns delete "$(node_netns "$i")" 2>/dev/null || true
    ip link del "$(node_veth "$i")" 2>/dev/null || true  # gone with the namespace, normally
  done
  cleanup_cgroups
  # Pod network namespaces are mounted under each containerd's state directory (cleanup_mounts);
  # an earlier layout kept some under /var/run/netns.
  if [[ -f "$DIR/state/netns.before" ]]; then
    for ns in /var/run/netns/cni-*; do
      [[ -e "$ns" ]] || continue  # no namespaces: the glob stays unexpanded
      ns="${ns##*/}"
      grep -qx "$ns" "$DIR/state/netns.before" || ip netns delete "$ns" 2>/dev/null || true
    done
  fi
  ip route del "$SERVICE_CIDR" dev "$HOST_IF" 2>/dev/null || true
  ip route del unreachable "$POD_CIDR" 2>/dev/null || true
  ip route del unreachable "$NODE_NET" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  if [[ -f "$DIR/state/sysctl.orig" ]]; then
    while read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done <"$DIR/state/sysctl.orig"
  fi
  rm -rf "$DIR"
  echo "cluster-down: stopped and removed"
}

cmd_status() {
  if [[ ! -d "$DIR/pids" ]]; then echo "cluster: not running"; return 1; fi
  local c n state all=0
  for c in $COMPONENTS; do
    if running "$c"; then state="running (pid $(cat "$(pidfile "$c")"))"; else state="stopped"; all=1; fi
    printf '%-36s %s\n' "$c" "$state"
  done
  for n in $(known_nodes); do
    for c in $NODE_COMPONENTS; do
      if running "$n.$c"; then state="running (pid $(cat "$(pidfile "$n.$c")"))"; else state="stopped"; all=1; fi
      printf '%-36s %s\n' "$n.$c" "$state"
    done
    c="$(fault_of "$n")"
    if [[ -n "$c" ]]; then printf '%-36s %s\n' "$n" "$c"; all=1; fi
  done
  # Fewer nodes than asked for: `up` adds them.
  (($(known_nodes | wc -l) >= NODES)) || all=1
  echo "kubeconfig: $KUBECONFIG_ADMIN"
  echo "logs:       $DIR/logs/"
  if running kube-apiserver; then kubectl get nodes -o wide 2>/dev/null || true; fi
  return $all
}

node_arg() { [[ -n "${1:-}" ]] || die "usage: hack/cluster.sh $2 NODE (nodes: $(known_nodes | xargs | sed 's/ /, /g'))"; }

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  nodes) need_running_bed; known_nodes ;;
  partition | freeze | kill) node_arg "${2:-}" "$1"; "cmd_$1" "$2" ;;
  restore)
    if [[ -n "${2:-}" ]]; then cmd_restore "$2"
    else need_running_bed; for n in $(known_nodes); do cmd_restore "$n" >/dev/null; done; echo "every node restored"; fi ;;
  faults) cmd_faults ;;
  kubeconfig) echo "$KUBECONFIG_ADMIN" ;;
  audit-log) echo "$AUDIT_LOG" ;;
  containerd-sockets) need_running_bed; for n in $(known_nodes); do echo "$DIR/nodes/$n/containerd/containerd.sock"; done ;;
  *) die "usage: hack/cluster.sh up|down|status|nodes|partition NODE|freeze NODE|kill NODE|restore [NODE]|faults|kubeconfig|audit-log|containerd-sockets" ;;
esac
