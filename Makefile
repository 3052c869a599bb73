# fedcloud: two commands for a fresh Debian machine: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: demo test setup test-deps lint typecheck check clean

setup: $(STAMP)

# torch first, from the CPU wheel (a bare resolver would pull the CUDA build); then uv resolves
# the rest with overrides.txt (flwr 1.41's packaging cap vs pulumi 3.272).
$(STAMP): pyproject.toml overrides.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 "uv==0.12.*"
	$(BIN)/uv pip install -q --python $(BIN)/python --find-links /opt/wheels \
		--override overrides.txt -e '.[dev]'
	touch $(STAMP)

# OpenSSH's sshd emulates the participants' private VMs in the tests and the local stack.
test-deps:
	@command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd || { \
		echo "installing openssh-server (tests start real sshd on 127.0.1.x)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssh-server openssh-client >/dev/null; }

demo: setup test-deps
	$(BIN)/fedcloud up --stack local

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

clean:
	rm -rf .fedcloud .pytest_cache .mypy_cache .ruff_cache
