# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC pins the torch that is installed when the venv has none; on a GPU machine keep it or pass
# e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= out/demo

.PHONY: venv demo test test-all qgis-plugin bench clean

$(VENV)/.stamp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.stamp

demo: venv
	$(PY) -m cli.demo $(DEMO_OUT)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

qgis-plugin:
	$(PYTHON) qgis_plugin/build_zip.py dist/geoimplicit_qgis_plugin.zip

clean:
	rm -rf $(VENV) build dist *.egg-info out
