# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-fast bench lint services-up services-down services-status clean

# Editable install: builds engine/_core.pyx in place; re-run when the build inputs change.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard engine/_core.pyx engine/*.pxi engine/*.pxd engine/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/engine demo

# Lint and type check first (fast), then every test; ENGINE_TEST_STRICT=1 makes
# a test whose server is missing fail instead of skip (tests/conftest.py).
test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	bash scripts/services.sh up
	ENGINE_TEST_STRICT=1 $(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not services"

bench: install
	bash scripts/services.sh up
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

services-up:
	bash scripts/services.sh up
services-down:
	bash scripts/services.sh down
services-status:
	bash scripts/services.sh status

clean:
	rm -rf build dist *.egg-info engine/_core.c engine/_core*.so
