# Market Data Appliance — the two commands of the quick start:
#   make up     install into .venv and run the appliance (embedded PostgreSQL + Redis by default)
#   make test   install the test extras and run the whole test suite
#   make lint   ruff, the import contracts (lint-imports) and mypy: what .ci/run checks first
#   make test-unit  the pure and unit tests (tests/unit, seconds): the inner loop
#   make lock   refresh requirements.lock from pyproject.toml (LOCK_ARGS=--upgrade
#               to move every pin to the newest allowed release)
#
# Everything is installed from requirements.lock (pinned, with hashes), then the
# package itself without dependencies.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=
# The suite runs in parallel under pytest-xdist: one worker per core here
# (2); each has its own embedded PostgreSQL and Redis (or its own template
# database and Redis db numbers on external servers). A file's tests stay on
# one worker, and the deployment journeys never run two at once (the
# scheduler of tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS)

LOCK    = requirements.lock
LOCK_ARGS ?=

.PHONY: up install install-test lock lint test test-unit test-external test-quick check-config bench clean

# umask 022: the packages must be readable by other users: as root, the
# embedded PostgreSQL (pgserver) runs its binaries as a user of its own, and
# under root's umask 077 initdb failed on a library it could not read.
$(VENV)/bin/python:
	umask 022; $(PYTHON) -m venv $(VENV)

# One lock for the service, the tests and the deployment tools. `make up`
# installs the service's own dependencies only (pyproject.toml's, each at the
# lock's pin and hash: the lock as constraints, as the container image does),
# the tests the whole lock. pip is pinned to a release that reads the hashes
# of a constraints file.
PIP_VERSION = 26.3
$(VENV)/.installed: pyproject.toml $(LOCK) | $(VENV)/bin/python
	umask 022; $(PIP) install "pip==$(PIP_VERSION)"
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > $(VENV)/runtime-deps.txt
	umask 022; $(PIP) install --require-hashes -c $(LOCK) -r $(VENV)/runtime-deps.txt
	umask 022; $(PIP) install --no-deps -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	umask 022; $(PIP) install --require-hashes -r $(LOCK)
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# `uv pip compile` keeps the pins already in the lock unless told to upgrade
# (LOCK_ARGS=--upgrade, or "--upgrade-package NAME"). --universal: one lock for
# every Python 3.11+ on Linux (Debian 12's 3.11.2 needs a package 3.11.7 does not).
lock: install-test
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/uv pip compile --quiet --all-extras \
	  --generate-hashes --universal --python-version 3.11 $(LOCK_ARGS) -o $(LOCK) pyproject.toml
	umask 022; $(PIP) install --require-hashes -r $(LOCK)
	@touch $(VENV)/.installed $(VENV)/.installed-test

# The operator's config, made once from the example and theirs from then on
# (git does not track it: `git pull` never touches it).
config/appliance.yaml:
	cp config/appliance.example.yaml $@

up: install config/appliance.yaml
	$(VENV)/bin/appliance up

# The whole suite against the embedded PostgreSQL and Redis (the default).
test: install-test
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The integration tests again against external servers (CI: the machine's
# PostgreSQL on 5432 and Redis on 6379).
APPLIANCE_TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
APPLIANCE_TEST_REDIS_URL ?= redis://127.0.0.1:6379
test-external: install-test
	APPLIANCE_TEST_DATABASE_URL=$(APPLIANCE_TEST_DATABASE_URL) \
	APPLIANCE_TEST_REDIS_URL=$(APPLIANCE_TEST_REDIS_URL) \
	$(PY) -m pytest $(XDIST) -m "not e2e and not deploy and not slow" tests/integration $(PYTEST_ARGS)

# Static checks: ruff (style, bugs, imports), the import contracts of
# pyproject.toml (lint-imports) and mypy (strict where pyproject says).
lint: install-test
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The inner loop: pure and unit tests, no services started.
test-unit: install-test
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# A fast subset: unit tests and integration tests not marked slow.
test-quick: install-test
	$(PY) -m pytest -m "not e2e and not deploy and not slow" $(PYTEST_ARGS)

check-config: install config/appliance.yaml
	$(VENV)/bin/appliance check-config

bench: install-test
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
