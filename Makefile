# The two entry points of README.md. Each sets up .venv first (once; again when pyproject.toml changes).
VENV ?= .venv
INSTALLED := $(VENV)/.posttrain-installed

.PHONY: quickstart test test-fast lint

quickstart: $(INSTALLED)
	$(VENV)/bin/posttrain quickstart

test: $(INSTALLED)
	bash scripts/setup.sh --browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

# The inner loop: lint, then every test not marked slow (no smollm2-135m runs, no notebook runs).
test-fast: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -m "not slow"

lint: $(INSTALLED)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

$(INSTALLED): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
