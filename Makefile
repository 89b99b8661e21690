# The two entry points of README.md. Each sets up .venv first (once; again when pyproject.toml changes).
VENV ?= .venv
INSTALLED := $(VENV)/.posttrain-installed

.PHONY: quickstart test lint

quickstart: $(INSTALLED)
	$(VENV)/bin/posttrain quickstart

test: $(INSTALLED)
	bash scripts/setup.sh --browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

$(INSTALLED): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@
