# studyflow: build, run the reference pipeline, test.
# One build profile (dev, dependencies optimised) serves runs and tests, so polars compiles once.
# The build cache lives outside the clone so fresh clones and CI reuse it.

export CARGO_TARGET_DIR ?= $(HOME)/.cache/studyflow-target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/debug/studyflow
PIPELINE ?= pipelines/reference.yaml
# Test-only oracles (independent Parquet readers) live in a virtualenv outside the clone.
VENV ?= $(HOME)/.cache/studyflow-venv
PY := $(VENV)/bin/python

.PHONY: build run test lint bench clean toolchain crashtest fuzz

toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { \
	  echo "cargo not found: installing the Rust toolchain with rustup"; \
	  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }

build: toolchain
	$(CARGO) build --locked

run: build
	$(BIN) run $(PIPELINE)

$(PY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet pyarrow==26.0.1 duckdb==2.0.1

test: toolchain $(PY)
	STUDYFLOW_PYTHON=$(PY) $(CARGO) test --locked

# Crash consistency: the reference pipeline killed at random moments and at every failpoint.
CRASH_ITERATIONS ?= 1000
crashtest: toolchain
	STUDYFLOW_CRASH_ITERATIONS=$(CRASH_ITERATIONS) $(CARGO) test --locked --test tests crash:: -- --nocapture

# Property-based fuzzing of the CSV reader, the dialect and the YAML spec, FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 600
fuzz: toolchain
	STUDYFLOW_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --locked --test tests fuzz_ -- --nocapture --test-threads 1

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
