# Two commands do all the set-up: `make demo` and `make test`. Both create .venv/ when missing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test env clean-results

env: $(STAMP)

# pip prints one "Location ... is ignored" line per package for this machine's local indexes: hidden.
$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(VENV)/bin/pip install -q -r requirements.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(VENV)/bin/pip install -q --no-deps -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores 2 --profile profiles/default
	@echo; cat results/tables/summary.md

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean-results:
	rm -rf results .snakemake
