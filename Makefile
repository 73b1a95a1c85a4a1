# Two commands do everything on a fresh machine (Python 3.11):
#   make demo   train the seed model, export it through tf2onnx, run it without TensorFlow, prove parity
#   make test   lint and type check, the whole test suite, the runtime suite again in a TensorFlow-free environment,
#               and the Node.js cross-language check (run from the suite)
# Both set up their own virtual environments: .venv (everything) and .venv-slim (runtime only, no TensorFlow).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
SLIM := .venv-slim
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: demo test test-full test-slim bench lint clean gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) -e '.[export,serve,bench,progress,test,ray]'
	touch $@

$(SLIM)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SLIM)
	$(SLIM)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(SLIM)/bin/python -m pip install $(PIP_FLAGS) -e '.[test]'
	$(SLIM)/bin/python -c "import importlib.util as u, sys; bad = [m for m in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx') if u.find_spec(m)]; sys.exit(f'slim env must not have {bad}' if bad else 0)"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/python -m models.demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-full: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

test-slim: $(SLIM)/.installed
	$(SLIM)/bin/python -m pytest -q -p no:cacheprovider tests/runtime

test: lint test-full test-slim

bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.compare

# On a machine with a GPU provider (docs/gpu.md): parity and CPU-vs-GPU timings into $(OUT).
gpu-check: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/gpu_check.py $(or $(OUT),build/gpu-check)

clean:
	rm -rf $(VENV) $(SLIM) build .pytest_cache
