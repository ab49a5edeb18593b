# dishwatch — every command a developer or CI needs.  `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DATA   ?= data/dsm100
PRESET ?= dsm100

.PHONY: help setup setup-edge run test lint format data model bench deploy clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# --- environments -------------------------------------------------------------------------------
# Stamps make setup idempotent and quick: pip runs again only when pyproject.toml changes.
$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

$(VENV)/.edge: pyproject.toml $(VENV)/.created
	$(PIP) install --quiet -e ".[edge]"
	touch $@

$(VENV)/.full: pyproject.toml $(VENV)/.created
	$(PIP) install --quiet -e ".[edge,train,features,dev]"
	touch $@

setup-edge: $(VENV)/.edge system-deps  ## the device's environment only (no TensorFlow)

setup: $(VENV)/.full system-deps  ## everything: edge, train, dev tools, system packages

.PHONY: system-deps
system-deps:  ## Debian packages the tests need (installed when missing and root)
	@bash scripts/system-deps.sh

# --- the two commands -------------------------------------------------------------------------
run: setup-edge  ## run the main job on its built-in defaults
	$(PY) -m train synth --preset dsm50 --out data/dsm50
	$(PY) -m train inspect --data data/dsm50

test: setup  ## the whole test suite (installs what it needs first)
	$(PY) -m pytest -q

# --- the rest -----------------------------------------------------------------------------------
lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

data: setup-edge  ## synthetic dsm50 and dsm100 presets under data/
	$(PY) -m train synth --preset dsm50 --out data/dsm50
	$(PY) -m train synth --preset dsm100 --out data/dsm100

clean:  ## remove the virtual environment and caches (keeps data/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
