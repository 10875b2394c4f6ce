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

.PHONY: build run test lint bench clean toolchain

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

lint: toolchain
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

bench:
	@echo "make bench: the registry-scale benchmark is not built yet (see the README)"; exit 1

clean:
	rm -rf out
	$(CARGO) clean
