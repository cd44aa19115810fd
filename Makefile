# Two commands on a fresh machine: `make up` and `make test`.
# Both bootstrap .venv on first run and reuse it afterwards.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: up test bench lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/tradefleet up $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

# Style and types of everything, the tests included (strict mypy, pydantic plugin).
LINTED := protocol workers managers infra_manager tradefleet bench examples tests
lint: $(STAMP)
	$(PY) -m pip install --quiet -e '.[lint]'
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/mypy $(LINTED)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
