# freshrec: two commands on a fresh machine.
#   make demo   creates .venv if missing, installs the exact pins, runs the pipeline on a local Ray
#   make test   the same environment, then the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.freshrec-installed
DEMO_OUT ?= demo-out

.PHONY: demo test test-fast test-quick test-unit test-integration lint format protos bench install clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps torchrec==1.8.0
	$(PY) -m pip install -q --no-deps -e .
	$(MAKE) --no-print-directory protos
	@touch $@

protos:
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. protos/freshrec/v1/*.proto

demo: $(STAMP)
	$(VENV)/bin/freshrec demo --out $(DEMO_OUT)

# the lint gate (ruff.toml) runs first: a lint or format finding fails the run before any test starts
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The unit tests (no Ray, one process each) run in two pytest-xdist processes, a whole module in one process
# (--dist loadfile: module fixtures such as a moto server start once), handed out the most CPU first
# (--no-loadscope-reorder keeps tests/conftest.py's order, from tests/unit/cpu_seconds.json: the workers end
# close together); the integration tests share one Ray and Serve (tests/integration/conftest.py) and run in
# this process, after the unit tests (both run; the exit status is the first failure's). UNIT_XDIST= runs the
# unit tests in one process.
UNIT_XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder
# test, test-fast and test-unit write bytecode (__pycache__, git-ignored) even where PYTHONDONTWRITEBYTECODE is set:
# each worker, and each subprocess check, otherwise compiles the packages and rewrites the test modules anew
# (about 6 of a worker's 13 CPU seconds of collection; docs/testing.md). UNIT_ENV= keeps the environment's.
UNIT_ENV ?= PYTHONDONTWRITEBYTECODE=

test: lint
	$(UNIT_ENV) $(PY) -m pytest -q $(UNIT_XDIST) tests/unit; unit=$$?; $(UNIT_ENV) $(PY) -m pytest -q tests/integration && exit $$unit

test-fast: lint
	$(UNIT_ENV) $(PY) -m pytest -q $(UNIT_XDIST) tests/unit

# everything but the real-process tests of a minute or more (marker slow: the ray start cluster, the SIGKILLed
# freshrec stream, chaos); make test runs them
test-quick: lint
	$(PY) -m pytest -q $(UNIT_XDIST) tests/unit -m "not slow"; unit=$$?; $(PY) -m pytest -q tests/integration -m "not slow" && exit $$unit

test-unit: $(STAMP)
	$(UNIT_ENV) $(PY) -m pytest -q $(UNIT_XDIST) tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
