# Continuum — every target creates what it needs (.venv, .tools/) from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= --durations=25  # the slowest tests in every run (the suite is kept near 15 min on 2 cores)
# helm: $(HELM) if set, else helm on PATH, else a static build fetched into .tools/ (see `make helm`).
HELM ?= $(or $(shell command -v helm 2>/dev/null),$(CURDIR)/.tools/helm)
DOCKER ?= docker
IMAGE_REGISTRY ?= ghcr.io/continuum-dev
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create .venv with every extra installed (editable)

.PHONY: demo
demo: $(STAMP) ## Run the operator against an embedded API emulator on the examples (no cluster needed)
	$(BIN)/continuum demo $(DEMO_ARGS)

.PHONY: test
test: $(STAMP) $(HELM) cluster-bin ## Run the whole test suite (unit, property, integration, chart, real control plane)
	HELM=$(HELM) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The real control plane (scripts/cluster.py): etcd, kube-apiserver, controller-manager, scheduler, kwok.
# Binaries are built once per machine into ~/.cache/continuum (CONTINUUM_CACHE_DIR) and reused;
# CONTINUUM_K8S_BIN or KUBEBUILDER_ASSETS point at ready ones instead.
.PHONY: cluster-bin
cluster-bin: ## Build (once, cached outside the clone) the control-plane binaries when Go is present
	@if command -v go >/dev/null 2>&1 || [ -n "$${CONTINUUM_K8S_BIN:-}" ]; then \
		$(PYTHON) scripts/cluster.py build >/dev/null; \
	else \
		echo "cluster-bin: no Go toolchain and no CONTINUUM_K8S_BIN: the real-control-plane suite (tests/cluster) will skip"; \
	fi

.PHONY: cluster
cluster: ## Start a local control plane (kwok nodes); the last line printed is the admin kubeconfig
	@$(PYTHON) scripts/cluster.py up

.PHONY: demo-cluster
demo-cluster: $(STAMP) ## The demo's story on the real control plane (make cluster; needs Go or CONTINUUM_K8S_BIN)
	$(BIN)/continuum demo --kubeconfig "$$($(PYTHON) scripts/cluster.py up | tail -1)" $(DEMO_ARGS)

.PHONY: cluster-down
cluster-down: ## Stop the local control plane and remove its files
	@$(PYTHON) scripts/cluster.py down

$(CURDIR)/.tools/helm:
	$(PYTHON) scripts/fetch_helm.py $@

.PHONY: helm
helm: $(HELM) ## Fetch a static helm into .tools/ when none is on PATH
	@$(HELM) version --short

.PHONY: chart
chart: $(STAMP) $(HELM) ## helm lint + template the chart with default values
	$(HELM) lint --strict charts/continuum
	$(HELM) template continuum charts/continuum --namespace continuum-system >/dev/null && echo "chart renders"

.PHONY: images
images: ## Build the operator and worker images (needs Docker)
	@command -v $(DOCKER) >/dev/null || { echo "no $(DOCKER): images need a container engine" >&2; exit 1; }
	$(DOCKER) build -f operator/Dockerfile -t $(IMAGE_REGISTRY)/continuum-operator:$(IMAGE_TAG) .
	$(DOCKER) build -f inference-worker/Dockerfile -t $(IMAGE_REGISTRY)/continuum-worker:$(IMAGE_TAG) .

.PHONY: lint
lint: $(STAMP) ## ruff, mypy on the core, import-linter layering
	$(BIN)/ruff check operator inference-worker tests bench scripts
	$(BIN)/mypy operator/continuum/api operator/continuum/placement operator/continuum/render
	$(BIN)/lint-imports

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ and the chart's copy from the pydantic models
	$(BIN)/continuum crds --out crds --chart charts/continuum

.PHONY: plan
plan: $(STAMP) ## Decide placements for examples/ offline (the GitOps review)
	$(BIN)/continuum plan -f examples/cluster -f examples/workloads; rc=$$?; [ $$rc -le 2 ] || exit $$rc

.PHONY: bench
bench: $(STAMP) ## Run every benchmark; tables go to docs/benchmarks.md
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/state.py

.PHONY: e2e-kind
e2e-kind: $(STAMP) $(HELM) ## Real-cluster suite on kind (skipped cleanly without Docker)
	HELM=$(HELM) bash tests/e2e/run.sh

.PHONY: clean
clean: ## Remove the virtualenv, tools and caches
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis
