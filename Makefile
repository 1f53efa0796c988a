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
	$(PY) -m hyperion.lab.demo

BENCH_OUT ?= bench-out

bench-quick: setup ## every benchmark section, small (smoke, < 2 min): report in BENCH_OUT/quick
	$(PY) -m hyperion.lab.bench --quick --out $(BENCH_OUT)/quick

bench: setup ## drop, pass-through, slow path, DNS, scale, reload: REPORT.md, results.json, plots in BENCH_OUT (bench-out)
	$(PY) -m hyperion.lab.bench --out $(BENCH_OUT)

FUZZ_BIN := build/fuzz/fuzz_dns
FUZZ_SECONDS ?= 600
FUZZ_SOURCES := native/fuzz/fuzz_dns.c native/slowpath/dns.c native/slowpath/packet.c native/slowpath/rules.c \
	native/slowpath/tcp_stream.c

$(FUZZ_BIN): $(FUZZ_SOURCES) $(wildcard native/slowpath/*.h) bpf/include/hyperion_parser.h
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		-Inative/slowpath -Ibpf/include $(FUZZ_SOURCES) -lhs -o $@

fuzz-build: setup $(FUZZ_BIN) ## build the libFuzzer harness of the slow path's parsers (ASan + UBSan)

fuzz: fuzz-build ## fuzz the slow path's DNS and frame parsers for FUZZ_SECONDS (default 600)
	@mkdir -p build/fuzz/corpus
	$(PY) -m hyperion.lab.fuzzseeds build/fuzz/corpus ../shared/captures
	$(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/corpus native/fuzz/corpus

FUZZ_PACKETS ?= 1000000
fuzz-xdp: setup ## XDP program vs the Python reference classifier on FUZZ_PACKETS hypothesis frames (default 1M)
	HYPERION_FUZZ_PACKETS=$(FUZZ_PACKETS) $(PY) -m pytest -q -s -p no:cacheprovider tests/kernel/test_xdp_hypothesis.py \
		-k test_program_agrees_with_the_reference_classifier

clean: ## remove build products (not .venv)
	$(MAKE) --no-print-directory -C bpf clean
	rm -rf build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

.PHONY: help setup build lint test demo bench bench-quick fuzz fuzz-build fuzz-xdp clean
