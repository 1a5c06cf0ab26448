# Two entry points (see README): `make demo` and `make test`. Each creates its own virtual
# environment in .venv and installs torch 2.13.0 (CPU) and everything else from the pinned
# constraints.txt. `make test` also installs RELION (the oracle) from Debian's packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist workers for `make test` (one thread each, tests/conftest.py); 0 runs in-process
TEST_WORKERS ?= 2
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_PACKAGES := relion chromium chromium-driver

.PHONY: setup system-deps lint test demo clean

$(BIN)/cryorient: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/cryorient

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get install -y -q $$missing >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $$missing >/dev/null; }; \
	fi

lint: setup
	$(BIN)/ruff check src tests bench

test: setup system-deps lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

demo: setup
	$(BIN)/cryorient demo --outdir runs/demo --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache
