# Market Data Appliance — the two commands of the quick start:
#   make up     install into .venv and run the appliance (embedded PostgreSQL + Redis by default)
#   make test   install the test extras and run the whole test suite

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: up install install-test test test-external test-quick check-config bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test,deploy]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

up: install
	$(VENV)/bin/appliance up

# The whole suite against the embedded PostgreSQL and Redis (the default).
test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

# The integration tests again against external servers (CI: the machine's
# PostgreSQL on 5432 and Redis on 6379).
APPLIANCE_TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
APPLIANCE_TEST_REDIS_URL ?= redis://127.0.0.1:6379
test-external: install-test
	APPLIANCE_TEST_DATABASE_URL=$(APPLIANCE_TEST_DATABASE_URL) \
	APPLIANCE_TEST_REDIS_URL=$(APPLIANCE_TEST_REDIS_URL) \
	$(PY) -m pytest -m "not e2e and not deploy and not slow" tests/integration $(PYTEST_ARGS)

# A fast subset: unit tests and integration tests not marked slow.
test-quick: install-test
	$(PY) -m pytest -m "not e2e and not deploy and not slow" $(PYTEST_ARGS)

check-config: install
	$(VENV)/bin/appliance check-config

bench: install-test
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
