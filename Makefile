# Two commands matter: `make demo` (install, then run the whole pipeline on
# synthetic data) and `make test` (install, then lint and run every test).
# Both create .venv on first use; nothing else is needed but Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test test-slow lint format bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[serve]"
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[dev,onnx,backends,dicom,serve,serve-test,distributed]"
	touch $@ $(STAMP_RUN)

install: $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(VENV)/bin/unet demo

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP_TEST)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# The suite under TensorFlow (the default backend) without the slow tests, then
# the model subset (-m backend) under JAX and PyTorch: under 15 minutes on 2 cores.
# `make test-slow` runs the slow ones (fresh processes, kills, real-data training,
# multi-device and Ray runs, the browser); CI (.ci/run) runs both.
test: lint
	$(PY) -m pytest -m "not slow"
	KERAS_BACKEND=jax   $(PY) -m pytest -m backend -p no:cacheprovider -q
	KERAS_BACKEND=torch $(PY) -m pytest -m backend -p no:cacheprovider -q

test-slow: $(STAMP_TEST)
	$(PY) -m pytest -m slow -p no:cacheprovider

bench: $(STAMP_TEST)
	$(PIP) install --quiet -e ".[bench]"
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
