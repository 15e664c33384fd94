# The README's two commands: `make demo` (set up, then run the three stages on a small default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint format clean-demo

$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install pfo with the tested versions

# PFO_DEMO_SCALE=test runs every stage for a few steps (what tests/test_demo.py checks); PFO_LPIPS_WEIGHTS names an
# AlexNet weights file for LPIPS; PFO_DEMO_LOGS moves the run folders (default logs/).
demo: setup  ## victim -> prior -> PFO, GLASS and rMLE on 8 CIFAR-10 images (~6 min on 2 cores); prints the table
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

# One thread per process: the reproducibility tests compare runs bitwise, and CPU kernels round differently with
# another thread count (Lightning also gives each of N CPU processes cores/N threads, so a 1-process and a
# 2-process run would otherwise differ in rounding, not in what they compute).
# One worker process per core (pytest-xdist); a file's tests stay in one worker, in order, sharing its fixtures.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadfile

test: setup  ## the whole test suite (what CI runs)
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow and not slurm"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean-demo:
	rm -rf logs/demo_victim logs/demo_prior logs/demo_pfo logs/demo_glass logs/demo_rmle logs/demo_comparison.png
