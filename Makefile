# The two commands a new user needs: `make run` and `make test`. Both create .venv and
# install into it first; a second call skips the install unless pyproject.toml changed.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.paralab-installed
# torch comes first, pinned, from PyPI unless TORCH_INDEX names another index. On Linux,
# PyPI's wheel is a CUDA build; for a CPU-only machine use
# TORCH_INDEX=https://download.pytorch.org/whl/cpu (or .../whl/cu130 for a given CUDA build; torch 2.13 has cu126 and cu130).
# The install stamp depends only on pyproject.toml: run `make clean-venv` before changing TORCH_INDEX.
TORCH_INDEX ?=
TORCH_VERSION := 2.13.0
EXPERIMENT ?= experiments/quickstart.yaml
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (0: one process). Two took 1114 s of tests on 2 cores:
# the tests marked ray share one worker, the other takes everything else and then the one
# marked ray(last=True) (tests/conftest.py).
PYTEST_WORKERS ?= 2

.PHONY: run test install lint clean-venv

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/paralab run $(EXPERIMENT)

# Exit status 5 means pytest collected nothing: for this suite that is a failure, not a pass.
test: $(STAMP)
	@TRITON_INTERPRET=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
