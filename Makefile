# The two entry points of README.md. Each sets up .venv first (once; again when pyproject.toml changes).
VENV ?= .venv
INSTALLED := $(VENV)/.posttrain-installed

.PHONY: quickstart test test-fast test-min lint gpu-check mutants wheel

quickstart: $(INSTALLED)
	$(VENV)/bin/posttrain quickstart

# The suite runs in TEST_WORKERS processes (pytest-xdist), each with one thread per library (tests/conftest.py):
# most of a test's time is Python, imports and subprocesses. On 2 cores 3 workers were fastest (docs/testing.md):
# a third keeps a core busy while another worker waits on a process it started.
TEST_WORKERS ?= 3

test: $(INSTALLED)
	bash scripts/setup.sh --browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal

# The inner loop: lint, then every test not marked slow (no smollm2-135m runs, no notebook runs).
test-fast: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist worksteal -m "not slow"

# The floors: the tests not marked slow, 3-step runs and a check of every shipped recipe, with every direct
# dependency at the lowest version pyproject.toml admits, in a venv of its own (scripts/test_min.sh). CI runs it
# after `make test`.
MIN_VENV ?= .venv-min

test-min: $(INSTALLED)
	bash scripts/test_min.sh $(MIN_VENV)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Mutation testing of the core invariants (docs/testing.md): each bug of scripts/mutant_list.py injected into a copy
# of the package, the module's fast tests run against it; the report goes to benchmarks/results/mutants.json.
mutants: $(INSTALLED)
	$(VENV)/bin/python scripts/mutants.py

# The GPU acceptance check (docs/benchmarks.md). It does not set up .venv, since a GPU machine may have no network:
# point GPU_PYTHON at the Python that has torch (or VENV at its venv) and WHEELS at benchmarks/fetch_gpu_wheels.sh's
# folder. What is below a pyproject.toml floor is installed from WHEELS (--upgrade) into that Python's environment, or
# into INSTALL_INTO when set (a folder put first on sys.path, for an environment that is not writable).
GPU_CHECK_OUTPUT ?= benchmarks/results/gpu_check
GPU_PYTHON ?= $(VENV)/bin/python
WHEELS ?=
INSTALL_INTO ?=

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --output $(GPU_CHECK_OUTPUT) $(if $(WHEELS),--wheels $(WHEELS)) \
		$(if $(INSTALL_INTO),--install-into $(INSTALL_INTO))

# A wheel of posttrain in dist/, for Colab: put it in MyDrive/posttrain on Google Drive (or upload it to /content) and
# the notebooks' install cell installs it. pip builds it with pyproject.toml's build backend (hatchling).
PYTHON ?= python3
WHEEL_DIR ?= dist

wheel:
	rm -f $(WHEEL_DIR)/posttrain-*.whl
	$(PYTHON) -m pip wheel --no-deps --wheel-dir $(WHEEL_DIR) .

$(INSTALLED): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
