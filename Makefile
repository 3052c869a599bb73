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

# Debian packages the tests use: OpenSSH's sshd emulates the participants' private VMs;
# cloud-init checks the aggregator's user data against its schema (its services are disabled
# first, so they never act on this machine); shellcheck checks every script sent to a VM;
# systemd-analyze rates the SuperLink unit's sandbox; openssl verifies the certificates.
test-deps:
	@missing=; \
	{ command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd; } || missing="$$missing openssh-server openssh-client"; \
	command -v cloud-init >/dev/null 2>&1 || missing="$$missing cloud-init"; \
	command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages the tests use)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO mkdir -p /etc/cloud && $$SUDO touch /etc/cloud/cloud-init.disabled; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup test-deps
	$(BIN)/fedcloud up --stack local

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q

clean:
	rm -rf .fedcloud .pytest_cache .mypy_cache .ruff_cache
