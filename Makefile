# Hyperion. `make test` and `make demo` each set up a fresh machine first.
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## install system packages, mount bpffs, create .venv, build the XDP object
	@scripts/setup.sh

build: setup ## (re)build the XDP object
	@$(MAKE) --no-print-directory -C bpf

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

test: setup ## set up, lint, run the whole test suite (kernel tests need root)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup ## set up and run the demo scene (sandbox, attach, traffic, counters)
	$(PY) -m hyperion.demo

bench-quick: setup ## the drop-rate comparison at small sizes (smoke, < 2 min)
	$(PY) -m hyperion.bench --quick

bench: setup ## fast-path drop rate, reload/scrape times, AF_XDP slow path, dnsperf with and without
	$(PY) -m hyperion.bench --out bench-out
	$(PY) -m hyperion.bench --reload
	$(PY) -m hyperion.bench --slowpath
	$(PY) -m hyperion.bench --dns

clean: ## remove build products (not .venv)
	$(MAKE) --no-print-directory -C bpf clean
	rm -rf build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

.PHONY: help setup build lint test demo bench bench-quick clean
