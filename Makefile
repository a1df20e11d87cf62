# lm_lightning: `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU-only machine must not pull a multi-GB CUDA build: torch is installed first, pinned.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Two pytest-xdist workers, one per core of the 2-core reference machine; a test file stays on one
# worker (--dist loadfile), so a module's shared fixture (the FSDP2 torchrun job) runs once.
# Most of the suite's time is subprocesses importing torch and Lightning, one core each.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2

.PHONY: help install train test lint bench clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml or setup.py changes: a second `make install` installs nothing.
$(STAMP): pyproject.toml setup.py | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project (idempotent)

train: install  ## the default run: Collatz, model=small
	$(PY) train.py

test: install  ## the whole test suite
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install  ## ruff
	$(PY) -m ruff check src tests bench

bench: install  ## benchmarks; rewrites BENCHMARKS.md
	PYTHONPATH=. $(PY) -m bench.run

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
