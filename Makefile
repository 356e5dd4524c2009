# moga_analysis: `make test` (the CI command) and `make demo` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# glibc: keep freed memory instead of returning it to the OS (CPU speed is set by allocation here)
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184

.PHONY: venv test test-all lint demo figures docs clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-all: venv
	$(PY) -m pytest -q -n 2 -m ''

lint: venv
	$(PY) -m ruff check moga_analysis tests experiments

demo: venv
	$(PY) -m moga_analysis.demo --out runs/demo

figures: venv
	$(PY) experiments/make_figures.py

# the docs site (mkdocs-material + mkdocstrings), warnings as errors, into build/site/
docs: venv
	$(PY) -m pip install -q -e '.[docs]'
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
