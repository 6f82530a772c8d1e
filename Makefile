# Developer entry points. Every target installs (or refreshes) the virtualenv first,
# so a change to pyproject.toml is picked up on the next run.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := engine actors storage

.PHONY: run test test-fast test-oldest bench lint clean cluster

$(STAMP): pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -e '.[test,bench,dev]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/motet serve --data ./motet-data

# A throwaway PostgreSQL and three nodes on it, until Ctrl-C (see README, "Several nodes").
cluster: $(STAMP)
	$(PY) deploy/local_cluster.py

# Everything, subprocesses and Prometheus included.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# The in-process suite only: no test marked `process` (see tests/conftest.py).
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not process"

bench: $(STAMP)
	$(PY) -m benchmarks.seed_workload

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf .lint && mkdir -p .lint/motet
	for package in $(PACKAGES); do ln -s ../../$$package .lint/motet/$$package; done
	cd .lint && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p motet

# Removes build and tool caches only: never the virtualenv or a data directory.
clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache .lint
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# The suite against the oldest releases pyproject.toml allows, in a venv of its own.
OLDEST := .venv-oldest
test-oldest: pyproject.toml .ci/oldest.txt
	rm -rf $(OLDEST)
	python3 -m venv $(OLDEST) && $(OLDEST)/bin/pip install -c .ci/oldest.txt -e '.[test]'
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider
