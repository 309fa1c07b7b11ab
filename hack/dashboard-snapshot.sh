#!/usr/bin/env bash
# `make dashboard-snapshot`: renders the chart's Grafana dashboard (charts/quorate/files/
# dashboard.json) from a real run into docs/images/dashboard.png. On the running test bed
# (`make cluster-up images`) it installs the operator with the chart, creates a 3-member group
# of the test workload in the namespace dashboard-demo, and runs Prometheus (built from its Go
# module like promtool) on 127.0.0.1:9099, scraping the operator and every agent on their pod
# IPs (the targets file is rewritten every 2 s, with the labels the chart's ServiceMonitor and
# PodMonitor give). Meanwhile it force-deletes the primary's pod, asks for a switchover, fences a
# backup and unfences it, a minute apart. hack/render-dashboard.py then runs every panel's queries against
# that Prometheus over the run and draws them where the dashboard places them. Grafana is not
# used (its licence); the picture is the dashboard's queries on this run's data.
# Prometheus, the targets loop and the namespace are removed at the end.
set -euo pipefail
HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
source "$HACK/lib.sh"
cd "$ROOT"

"$HACK/build-tools.sh" prometheus-server
kubeconfig="$("$HACK/cluster.sh" kubeconfig)"
[[ -f "$kubeconfig" ]] || die "the test bed is not running: make cluster-up images"
kubectl="$(bin_dir kubernetes)/kubectl" helm="$(bin_dir helm)/helm"
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
image="$(quorate_image)" ns=dashboard-demo group=demo
work="$(mktemp -d /tmp/quorate-dashboard.XXXXXX)"
prometheus_pid="" targets_pid=""
cleanup() {
  touch "$work/stop"
  [[ -n "$targets_pid" ]] && wait "$targets_pid" 2>/dev/null
  [[ -n "$prometheus_pid" ]] && kill "$prometheus_pid" 2>/dev/null && wait "$prometheus_pid" 2>/dev/null
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The image's id on the pods: a rebuilt image keeps its tag, and only a changed pod template
# makes helm replace the operator's pods with ones that run it.
log "installing the operator ($image)"
"$helm" --kubeconfig "$kubeconfig" upgrade --install quorate charts/quorate --namespace quorate-system \
  --create-namespace --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
  --set-string "podAnnotations.quorate\.dev/image-id=$(quorate_image_id)" \
  --take-ownership --wait --timeout 180s >/dev/null
k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
k apply -n "$ns" -f - >/dev/null <<EOF
apiVersion: quorate.dev/v1alpha1
kind: ReplicaGroup
metadata:
  name: $group
spec:
  mode: PrimaryBackup
  replicas: 3
  ports: [{name: http, port: 8080}]
  health: {httpGet: {port: 8080, path: /healthz}, periodMillis: 250, failureThreshold: 2, timeoutMillis: 200}
  roleChange: {httpPost: {port: 8080, path: /quorate/role}, timeoutMillis: 500, retries: 1}
  storage: {size: 16Mi}
  template:
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: app
          image: $image
          imagePullPolicy: IfNotPresent
          command: [/quorate-testapp]
          args: [--listen, 0.0.0.0:8080, --role-file, /run/quorate/role]
          env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
          ports: [{name: http, containerPort: 8080}]
          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            runAsNonRoot: true
            capabilities: {drop: [ALL]}
            seccompProfile: {type: RuntimeDefault}
EOF
k wait -n "$ns" "rg/$group" --for=condition=Ready --timeout=240s >/dev/null

# The scrape targets, as the chart's monitors label them: the operator's pods (their group series
# carry their own namespace label: honor_labels) and every agent (namespace, pod, group).
write_targets() {
  k get pods -n quorate-system -l app.kubernetes.io/name=quorate -o json \
    | jq '[.items[] | select(.status.podIP) | {targets: ["\(.status.podIP):8080"], labels: {pod: .metadata.name}}]' \
    >"$work/operator.json.tmp" && mv "$work/operator.json.tmp" "$work/operator.json"
  k get pods -n "$ns" -l quorate.dev/group -o json \
    | jq '[.items[] | select(.status.podIP) | {targets: ["\(.status.podIP):7471"], labels: {namespace: .metadata.namespace, pod: .metadata.name, group: .metadata.labels["quorate.dev/group"]}}]' \
    >"$work/agents.json.tmp" && mv "$work/agents.json.tmp" "$work/agents.json"
}
write_targets
( for _ in $(seq 1 600); do [[ -e "$work/stop" ]] && exit 0; write_targets || true; sleep 2; done ) &
targets_pid=$!
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
scrape_configs:
  - job_name: operator
    honor_labels: true
    file_sd_configs: [{files: ["$work/operator.json"], refresh_interval: 5s}]
  - job_name: agents
    file_sd_configs: [{files: ["$work/agents.json"], refresh_interval: 5s}]
EOF
"$(bin_dir prometheus-server)/prometheus" --config.file="$work/prometheus.yml" \
  --storage.tsdb.path="$work/data" --web.listen-address=127.0.0.1:9099 >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
start=$(date +%s)

primary() { k get rg -n "$ns" "$group" -o jsonpath='{.status.primary}'; }
step() { log "$1"; sleep "$2"; }
step "recording the group at rest" 60
old="$(primary)"
k delete pod -n "$ns" "$old" --grace-period=0 --force >/dev/null 2>&1
step "force-deleted the primary's pod $old" 75
k annotate rg -n "$ns" "$group" quorate.dev/switchover-to= --overwrite >/dev/null
step "asked for a switchover (away from $(primary))" 60
backup="$(k get rg -n "$ns" "$group" -o json | jq -r '[.status.members[] | select(.role == "Backup") | .name][0]')"
k patch rg -n "$ns" "$group" --type merge -p "{\"spec\":{\"fencedMembers\":[\"$backup\"]}}" >/dev/null
step "fenced $backup" 60
k patch rg -n "$ns" "$group" --type merge -p '{"spec":{"fencedMembers":[]}}' >/dev/null
step "unfenced $backup" 45
end=$(date +%s)

venv_from_wheels "$HACK/dashboard-requirements.txt" "$work/venv"
mkdir -p docs/images
"$work/venv/bin/python" "$HACK/render-dashboard.py" charts/quorate/files/dashboard.json \
  http://127.0.0.1:9099 "$start" "$end" "$ns" docs/images/dashboard.png
log "docs/images/dashboard.png: the dashboard over $((end - start)) s of this run"
