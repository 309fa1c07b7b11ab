# Quorate. `make demo` and `make test` are the two set-up commands; everything they need is
# built by this repository's own scripts (hack/), pinned in hack/versions.env and cached in
# $(QUORATE_CACHE) between runs.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
export QUORATE_CACHE ?= $(HOME)/.cache/quorate
# Cargo's build output lives in the cache too, so a fresh clone (CI) starts warm.
export CARGO_TARGET_DIR ?= $(QUORATE_CACHE)/target

.DEFAULT_GOAL := help
.PHONY: help demo test tools crds build images cluster-up cluster-down cluster-status \
        bench-agent bench-failover bench-weights bench-scale bench-workloads bench-compare bench-node-loss bench-upgrade dashboard-snapshot lint kind-up kind-e2e check-cargo

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

check-cargo:
	@command -v cargo >/dev/null || { echo "error: cargo is not installed; install Rust from https://rustup.rs" >&2; exit 1; }
	@command -v go >/dev/null || { echo "error: go is not installed; the test bed builds Kubernetes from Go modules (https://go.dev/dl)" >&2; exit 1; }

demo: check-cargo ## the main job: local cluster, images, operator install, a group, its status
	hack/demo.sh

test: check-cargo ## lint and every test: unit, property, snapshot, agent processes, chart, and the cluster suites
	hack/test.sh

tools: ## build the pinned test-bed components (cached)
	hack/build-tools.sh

crds: check-cargo ## regenerate the CRD YAML from the Rust types
	source hack/lib.sh && release_cargo run --quiet --release --bin crdgen > crds/replicagroups.quorate.dev.yaml
	cp crds/replicagroups.quorate.dev.yaml charts/quorate/files/crds/replicagroups.quorate.dev.yaml

build: check-cargo ## release binaries (static; the build make test, the images and the benchmarks share)
	source hack/lib.sh && release_cargo build --release --bins --examples  # --examples: see hack/images.sh

images: check-cargo ## static binaries packed as an OCI image, imported into the test bed
	hack/images.sh

cluster-up: tools ## start the local cluster: a control plane and NODES worker nodes (default 3)
	hack/cluster.sh up

cluster-down: ## stop it and remove everything it created
	hack/cluster.sh down

cluster-status: ## what runs
	hack/cluster.sh status

bench-agent: check-cargo ## agent failover and commit latency (3 agent processes, no Kubernetes)
	hack/bench.sh agent

bench-failover: check-cargo ## failover through Kubernetes routing on the test bed
	hack/bench.sh failover

bench-weights: check-cargo ## weight convergence and split accuracy through a real Gateway
	hack/bench.sh weights

bench-scale: check-cargo ## the operator with 100 running and 1000 pod-less groups: memory, CPU, API requests, failover
	hack/bench.sh scale

bench-workloads: check-cargo ## Redis and PostgreSQL (examples/) failover, switchover, fencing and rejoin with a writer running, on the test bed
	hack/bench.sh workloads

bench-compare: check-cargo ## PostgreSQL failover under Quorate and under Patroni (tightest and default timeouts), same binaries, same fault, on loopback
	hack/bench.sh compare

bench-node-loss: check-cargo ## the primary's whole node partitioned or frozen (and with the operator leader on it): failover, fencing and overlap, on the 3-node test bed
	hack/bench.sh nodes

bench-upgrade: check-cargo ## operator upgrades (helm upgrade to another tag and back) with a group answering through -rw: the longest gap per upgrade, switchovers per group
	hack/bench.sh upgrade

dashboard-snapshot: ## the Grafana dashboard's panels from a scripted run on the test bed (primary deleted, switchover, fence) into docs/images/dashboard.png
	hack/dashboard-snapshot.sh

lint: check-cargo ## rustfmt --check, clippy -D warnings (every target), shellcheck (hack/), helm lint --strict
	hack/lint.sh

kind-up: ## (users with Docker) a kind cluster with the images loaded
	hack/kind.sh up

kind-e2e: ## (users with Docker) the cluster suites on kind
	hack/kind.sh e2e
