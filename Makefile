# studyflow: build, run the reference pipeline, test.
# One build profile (dev, dependencies optimised) serves runs and tests, so polars compiles once.
# The build cache lives outside the clone so fresh clones and CI reuse it.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/studyflow-target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/debug/studyflow
PIPELINE ?= pipelines/reference.yaml

.PHONY: build run test lint bench clean toolchain

toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { \
	  echo "cargo not found: installing the Rust toolchain with rustup"; \
	  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }

build: toolchain
	$(CARGO) build --locked

run: build
	$(BIN) run $(PIPELINE)

test: toolchain
	$(CARGO) test --locked

lint: toolchain
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Benchmark (README "Performance"): cohort size and rounds are parameters, e.g.
# `make bench BENCH_SUBJECTS=2000 BENCH_YEARS=3 BENCH_ROUNDS=5`. Release build, data in bench-data/.
BENCH_SUBJECTS ?= 5000
BENCH_YEARS ?= 5
BENCH_ROUNDS ?= 3
BENCH_ARGS ?=

bench: toolchain
	$(CARGO) build --locked --release --bin studyflow --example floor
	python3 bench/run.py --subjects $(BENCH_SUBJECTS) --years $(BENCH_YEARS) --rounds $(BENCH_ROUNDS) \
	  --bin $(CARGO_TARGET_DIR)/release/studyflow --floor $(CARGO_TARGET_DIR)/release/examples/floor $(BENCH_ARGS)

clean:
	rm -rf out
	$(CARGO) clean
