# connbalance: every entry point a person or CI needs. `make test` works on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Builds are cached on the machine, keyed by what they depend on, and never required:
# a cold machine rebuilds everything from the package registries.
CACHE ?= $(HOME)/.cache/connbalance
PYTHON ?= python3
# Keyed by the dependency lists only (the product's, and the simulator's with its entry points, in
# sim/), so editing tool settings in pyproject does not rebuild it.
PYHASH := $(shell { sed -n '/^dependencies/,/^\[project.scripts\]/p' pyproject.toml; \
  sed -n '/^dependencies/,/^\[tool.setuptools\]/p' sim/pyproject.toml; } | sha256sum | cut -c1-12)
VENV ?= $(CACHE)/venv-$(PYHASH)
VENV_BIN := $(VENV)/bin
PY := $(VENV_BIN)/python
export PATH := $(VENV_BIN):$(PATH)

# Fragments in mk/ add to these: Debian packages the tests need, targets to build first, benchmarks.
APT_PACKAGES := iproute2
TEST_PREREQS :=
BENCH_TARGETS :=
PYTEST_ARGS ?=
# Test paths left out of `make test` (pytest --ignore/--deselect options); none now.
TEST_IGNORES :=

-include mk/*.mk

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: system-deps
system-deps: ## install the Debian packages the tests use (apt-get update first, only when one is missing)
	@missing=""; for p in $(sort $(APT_PACKAGES)); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.deps-ok:
	@echo "creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]' -e ./sim
	touch $@

.PHONY: venv
venv: $(VENV)/.deps-ok ## the Python environment: connbalance and its simulator (sim/) from this checkout
	@# The venv outlives checkouts: point its editable installs at this one.
	@ln -sfn $(VENV) .venv
	@$(PY) -c 'import connbalance, connbalance_sim, importlib.metadata as m, pathlib, sys; m.distribution("connbalance-sim"); \
	  sys.exit(any(pathlib.Path(p.__file__).parent.parent != pathlib.Path("$(CURDIR)/operator") for p in (connbalance, connbalance_sim)))' 2>/dev/null \
	  || $(PY) -m pip install -q --no-deps --no-build-isolation -e . -e ./sim

.PHONY: lint
lint: venv ## ruff, mypy --strict and the layer contract on operator/
	$(VENV_BIN)/ruff check operator tests
	cd operator && $(VENV_BIN)/mypy --config-file ../pyproject.toml
	$(VENV_BIN)/lint-imports

.PHONY: test
test: system-deps venv lint $(TEST_PREREQS) ## everything, from a fresh machine: environment, builds, lint, the whole suite
	$(PY) -m pytest $(TEST_IGNORES) $(PYTEST_ARGS)

.PHONY: demo
demo: system-deps venv ## the whole story on loopback: a fleet, a rolling restart, the skew, the fix
	$(VENV_BIN)/connbalance demo

.PHONY: bench
bench: system-deps venv $(BENCH_TARGETS) ## strategies one after another: JSON and a plot
	$(VENV_BIN)/connbalance bench --json

.PHONY: clean
clean: ## remove this checkout's build output (the machine caches stay)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build sim/build *.egg-info operator/*.egg-info

.PHONY: print-py
print-py: ## print the venv's python (for scripts and helpers)
	@echo $(PY)
