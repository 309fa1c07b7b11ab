#!/usr/bin/env bash
# `make demo`: the main job, end to end on the local test bed —
#   cluster up, images built and loaded, the operator installed with Helm, the PrimaryBackup
#   example applied (with the test workload, since the test bed pulls no images), its status,
#   then a failover: the primary's pod is deleted and the group routes to a new primary.
# The cluster keeps running afterwards (make cluster-down stops it).
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"

"$HACK/build-tools.sh"
"$HACK/cluster.sh" up
"$HACK/images.sh"
KUBECONFIG="$("$HACK/cluster.sh" kubeconfig)"
export KUBECONFIG
kubectl() { "$(bin_dir kubernetes)/kubectl" "$@"; }
helm() { "$(bin_dir helm)/helm" "$@"; }
image="$(quorate_image)"

log "installing the operator (charts/quorate)"
helm upgrade --install quorate charts/quorate --namespace quorate-system --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --wait --timeout 180s >/dev/null

log "applying a PrimaryBackup group of the test workload"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
python3 - "$image" <<'PY' | kubectl apply --server-side -n demo -f - >/dev/null
import json, sys
image = sys.argv[1]
doc = {
  "apiVersion": "quorate.dev/v1alpha1", "kind": "ReplicaGroup", "metadata": {"name": "cache"},
  "spec": {
    "mode": "PrimaryBackup", "replicas": 3,
    "ports": [{"name": "http", "port": 8080}],
    "health": {"httpGet": {"port": 8080, "path": "/healthz"}, "periodMillis": 500},
    "roleChange": {"httpPost": {"port": 8080, "path": "/quorate/role"}},
    "storage": {"size": "16Mi"},
    "template": {"spec": {"containers": [{
      "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
      "command": ["/quorate-testapp"], "args": ["--listen", "0.0.0.0:8080", "--role-file", "/run/quorate/role"],
      "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
      "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
                          "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
                          "seccompProfile": {"type": "RuntimeDefault"}}}]}}}}
print(json.dumps(doc))
PY
kubectl wait rg/cache -n demo --for=condition=Ready --timeout=180s >/dev/null
plugin="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/x86_64-unknown-linux-gnu/release/kubectl-quorate"
echo; kubectl get rg -n demo; echo
"$plugin" -n demo status cache
rw="$(kubectl get service cache-rw -n demo -o jsonpath='{.spec.clusterIP}')"
echo; echo "a request through cache-rw ($rw):"; curl -s --max-time 3 "http://$rw:8080/"; echo

primary="$(kubectl get rg cache -n demo -o jsonpath='{.status.primary}')"
log "failover: deleting the primary's pod $primary with grace period 0"
kubectl delete pod "$primary" -n demo --grace-period=0 --force >/dev/null 2>&1
for _ in $(seq 1 100); do
  answer="$(curl -s --max-time 1 "http://$rw:8080/" || true)"
  if [[ "$answer" == *'"role":"Primary"'* && "$answer" != *"\"member\":\"$primary\""* ]]; then break; fi
  sleep 0.1
done
echo "cache-rw now answers: $answer"
kubectl wait rg/cache -n demo --for=condition=Ready --timeout=180s >/dev/null
echo; "$plugin" -n demo status cache
echo
log "demo done. Explore with: KUBECONFIG=$KUBECONFIG $(bin_dir kubernetes)/kubectl get rg -A; stop with: make cluster-down"
