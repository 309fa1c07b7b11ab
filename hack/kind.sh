#!/usr/bin/env bash
# For users with Docker: the same cluster suites on kind.
#   hack/kind.sh up     create the kind cluster, load the images, install the Gateway API and Traefik
#   hack/kind.sh e2e    run the cluster suites against it (`cargo test --test e2e`)
#   hack/kind.sh down   delete it
# Needs docker, kind, kubectl and helm on PATH (pinned versions below) and, for the host to
# reach Services and pods like the suites do, root for two routes via the kind node (Linux).
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"
CLUSTER=quorate
NODE_IMAGE="kindest/node:${KIND_NODE_VERSION:-v1.34.0}"
KUBECONFIG_KIND="${QUORATE_CACHE}/kind.kubeconfig"
for c in docker kind kubectl helm; do need_cmd "$c" "install $c (see docs/testbed.md, section kind)"; done

up() {
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --config "$HACK/kind/cluster.yaml" --image "$NODE_IMAGE" --wait 120s
  kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_KIND"
  export KUBECONFIG="$KUBECONFIG_KIND"
  "$HACK/images.sh"
  kind load image-archive "$QUORATE_CACHE/images/quorate.tar" --name "$CLUSTER"
  # The workload images built from Debian packages (hack/debian-image.sh, run by images.sh).
  for name in $(debian_images); do kind load image-archive "$(workload_archive "$name")" --name "$CLUSTER"; done
  # The smoke suite's helper image.
  docker pull -q busybox:1.36 >/dev/null && docker tag busybox:1.36 docker.io/library/busybox:1.35-testbed
  kind load docker-image docker.io/library/busybox:1.35-testbed --name "$CLUSTER"
  kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"
  helm repo add traefik https://traefik.github.io/charts >/dev/null && helm repo update >/dev/null
  helm upgrade --install traefik traefik/traefik --namespace traefik --create-namespace --version "${KIND_TRAEFIK_CHART:-37.4.0}" \
    --set providers.kubernetesGateway.enabled=true --set gateway.enabled=false --set gatewayClass.enabled=true \
    --set gatewayClass.name=traefik --wait
  # The suites call Services and pods from the host, as on the local test bed.
  node_ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CLUSTER-control-plane")"
  sudo ip route replace 10.96.0.0/16 via "$node_ip"
  sudo ip route replace 10.244.0.0/16 via "$node_ip"
  echo "kind cluster $CLUSTER ready (KUBECONFIG=$KUBECONFIG_KIND)"
}

e2e() {
  [[ -f "$KUBECONFIG_KIND" ]] || die "no kind cluster: run make kind-up first"
  QUORATE_KUBECONFIG="$KUBECONFIG_KIND" QUORATE_KUBECTL="$(command -v kubectl)" HELM="$(command -v helm)"
  QUORATE_IMAGE="$(quorate_image)" E2E_ENV=kind QUORATE_IMAGE_ID="$(quorate_image_id)"
  E2E_GATEWAY_ADDR="$(KUBECONFIG="$KUBECONFIG_KIND" kubectl get svc traefik -n traefik -o jsonpath='{.spec.clusterIP}'):80"
  export_workload_images
  export QUORATE_KUBECONFIG QUORATE_KUBECTL HELM QUORATE_IMAGE E2E_ENV QUORATE_IMAGE_ID E2E_GATEWAY_ADDR
  # The build the images came from (hack/images.sh), as on the test bed (hack/test.sh).
  release_cargo test --release --test e2e -- --test-threads=2
}

case "${1:-}" in
  up) up ;;
  e2e) e2e ;;
  down) kind delete cluster --name "$CLUSTER" ;;
  *) die "usage: hack/kind.sh up|e2e|down" ;;
esac
