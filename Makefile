# psapose: the two quick-start commands and a few helpers.
#   make quickstart   run the main job (creates .venv on first use)
#   make test         run the test suite (creates .venv on first use)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of PyTorch; on a CUDA machine install the matching torch build into .venv first.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: quickstart test test-all lint flops gpu-check clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

quickstart: $(STAMP)
	$(PY) tools/quickstart.py

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(PY) -m ruff check psapose tools tests
	$(PY) -m ruff format --check psapose tools tests

flops: $(STAMP)
	$(PY) tools/flops.py

# The prepared GPU check (tools/gpu_check.sh): on a GPU machine, or GPU_CHECK=--cpu-small here.
gpu-check:
	bash tools/gpu_check.sh $(GPU_CHECK)

clean:
	rm -rf $(VENV) runs outputs .pytest_cache .ruff_cache *.egg-info
