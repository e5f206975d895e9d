# chatd developer entry points. `make test` and `make demo` work on a fresh
# machine: they create the virtualenv and, as root on Debian/Ubuntu, install
# the PostgreSQL test extensions themselves.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PG_MAJOR ?= 15
APT_PACKAGES := postgresql-$(PG_MAJOR) postgresql-$(PG_MAJOR)-pgtap postgresql-$(PG_MAJOR)-plpgsql-check libtap-parser-sourcehandler-pgtap-perl pgbouncer chromium
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: help setup system-deps container-deps ha-deps test test-containers test-ha test-python test-sdk-floors lint migrate db db-stop demo bench clean

# The oldest SDKs pyproject.toml accepts: `make test-sdk-floors` runs the
# provider tests against them in a throwaway virtualenv.
SDK_FLOORS := openai==2.0.0 anthropic==1.0.0
FLOOR_VENV ?= .venv-sdk-floors

help:
	@echo "make setup    create $(VENV), install chatd with dev extras, install PostgreSQL test extensions"
	@echo "make test     setup, then lint + the whole suite (pgTAP, Python, migrations)"
	@echo "make lint     sqlfluff (migrations/, sql/, tests/sql/), squawk (new migrations), ruff, mypy"
	@echo "make test-containers  pgTAP + migration suites through testcontainers, chatd image smoke test (root; starts a private Docker engine)"
	@echo "make test-ha  the failover tests (pg_auto_failover monitor, primary, synchronous standby; about 1-2 minutes)"
	@echo "make test-sdk-floors  provider tests against the oldest declared openai/anthropic SDKs"
	@echo "make migrate  apply migrations to \$$DATABASE_URL"
	@echo "make db       start a throwaway local PostgreSQL and print its URL (make db-stop removes it)"
	@echo "make demo     run chatd end to end on a throwaway database and a scripted LLM, then serve the web page (DEMO_ARGS=--no-serve: terminal only)"
	@echo "make bench    run the benchmarks in bench/"

setup: system-deps $(STAMP)

# The test suite needs pgTAP, plpgsql_check and pg_prove next to the server, and
# pgbouncer (the transaction-pooling test in tests/python/test_faults.py starts one).
system-deps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	elif command -v dpkg-query >/dev/null; then \
	  echo "missing Debian packages:$$missing"; \
	  echo "install them with: sudo apt-get install$$missing (or run make as root)"; exit 1; \
	else \
	  echo "note: not a Debian system; the tests need PostgreSQL $(PG_MAJOR) with pgTAP, plpgsql_check and pg_prove installed"; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,http]'
	touch $(STAMP)

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

# squawk lints migrations from this version on (.squawk.toml has the rules);
# the older ones are applied everywhere and frozen by their checksums.
SQUAWK_FROM ?= 0009

# The container path (scripts/test-containers.sh): a private dockerd (Debian's
# docker.io, installed if missing), images built locally from a debootstrap
# base (debootstrap installed if missing), then the pgTAP and migration suites
# through testcontainers and a smoke test of the chatd image. Exit 77: no engine.
test-containers: setup container-deps
	BIN=$(BIN) PYTEST_ARGS="$(PYTEST_ARGS)" scripts/test-containers.sh

# Debian's docker.io and debootstrap, without recommended packages, as root
# (the package's init script is kept from starting a system-wide engine).
container-deps:
	scripts/container-engine.sh install

# The failover tests (tests/ha) need pg_auto_failover next to the server;
# `make test` leaves them out (CHATD_TEST_HA=1 lets pytest collect them).
HA_APT_PACKAGES := postgresql-$(PG_MAJOR)-auto-failover pg-auto-failover-cli

ha-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(HA_APT_PACKAGES)"

test-ha: setup ha-deps
	CHATD_TEST_HA=1 $(BIN)/pytest tests/ha -rP $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/sqlfluff lint --disable-progress-bar migrations/ sql/ tests/sql/
	@files=$$(for f in migrations/*.up.sql; do n=$$(basename $$f); [[ "$$n" < "$(SQUAWK_FROM)" ]] || echo $$f; done); \
	if [ -n "$$files" ]; then echo "squawk $$files"; $(BIN)/squawk --config .squawk.toml $$files; \
	else echo "squawk: no migration from $(SQUAWK_FROM) on"; fi
	$(BIN)/ruff check python_worker tests bench
	$(BIN)/mypy

migrate: $(STAMP)
	$(BIN)/chatd migrate

db: setup
	@$(BIN)/chatd db start

db-stop: $(STAMP)
	@$(BIN)/chatd db stop

demo: $(STAMP)
	$(BIN)/chatd demo $(DEMO_ARGS)

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .chatd .pytest_cache .mypy_cache .ruff_cache

test-sdk-floors: system-deps
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install -q -e '.[dev,http]' $(SDK_FLOORS)
	$(FLOOR_VENV)/bin/pytest tests/python/test_providers.py tests/python/test_provider_turns.py \
		tests/python/test_openai_responses.py tests/python/test_anthropic_thinking.py -q $(PYTEST_ARGS)
