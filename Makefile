# The README's commands. Each target sets up what it needs on a fresh machine
# (venv, Python packages, JVM jars) and is fast when that is already done.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STATE := .pricing
PY_STAMP := $(VENV)/.installed
JAR_STAMP := $(STATE)/jars/.fetched
PYTEST_ARGS ?=

.PHONY: help setup jars test unit integration demo schemas-check manifests-check clean

help:
	@echo "make demo   run Kafka + the pricing job on the Flink MiniCluster with sample traffic"
	@echo "make test   schema compatibility check + unit and integration tests"
	@echo "make unit   unit tests only (no services)"

setup: $(PY_STAMP) $(JAR_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==24.3.1"

# Reinstall when the declared or the locked dependencies change.
$(PY_STAMP): $(BIN)/python pyproject.toml requirements.lock
	@echo "installing Python dependencies (first run takes a few minutes) ..."
	$(BIN)/pip install --quiet --progress-bar off -c requirements.lock -e ".[dev]"
	@touch $@

jars: $(JAR_STAMP)

# Maven's tests also check the wire format against Java Avro (deploy/jvm/src/test/java/pricing/interop):
# the Python side's vectors are written first, so the rule reruns when serde or a schema changes.
$(JAR_STAMP): deploy/jvm/pom.xml $(shell find deploy/jvm/src -name '*.java') $(PY_STAMP) \
		pricing_udfs/serde.py tests/pricing_udfs/avro_interop.py $(wildcard schemas/*.avsc schemas/history/*/*.avsc)
	@echo "fetching JVM jars from Maven Central ..."
	$(BIN)/python -m tests.pricing_udfs.avro_interop write $(STATE)/interop
	$(BIN)/pricing jars fetch
	@touch $@

schemas-check: $(PY_STAMP)
	$(BIN)/pricing schemas check

unit: $(PY_STAMP)
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

# Kubernetes manifests and Dockerfiles against the real schemas, offline; the tools and CRDs are
# fetched once into $(STATE)/validate (deploy/validate/fetch.py, README, "Deploy on Kubernetes").
manifests-check: $(PY_STAMP)
	$(BIN)/python deploy/validate/fetch.py
	$(STATE)/validate/venv/bin/python deploy/validate/check.py

test: setup schemas-check manifests-check
	$(BIN)/pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/pricing demo

clean:
	-$(BIN)/pricing kafka stop 2>/dev/null
	rm -rf $(VENV) $(STATE) *.egg-info
