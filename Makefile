# make train: set up .venv (bootstrapping uv if needed) and run the default job; make test: the whole suite.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY := .venv/bin/python
# Bytecode cached in .venv/pycache for the suite's ~40 interpreters (xdist workers, the command line, torchrun ranks):
# with PYTHONDONTWRITEBYTECODE set (as on our machines) each one compiled torch's and our modules again, ~3 s apiece
PYCACHE := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/.venv/pycache
TEST_JOBS ?= 2  # pytest-xdist workers (each test file stays on one worker, with its fixtures; tests/conftest.py orders them)

.PHONY: setup train test test-fast benchmark docs clean

$(UV):
	python3 -m pip install --user --quiet uv || python3 -m pip install --quiet --break-system-packages uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	touch $@

setup: .venv/.synced

train: setup
	$(PY) train.py

test: setup
	WANDB_MODE=disabled $(PYCACHE) $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

test-fast: setup
	WANDB_MODE=disabled $(PYCACHE) $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder -m "not slow"

benchmark: setup
	$(PY) benchmarks/train_throughput.py

docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf outputs multirun .pytest_cache site
