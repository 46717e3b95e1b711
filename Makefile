# `make test` does every set-up step a fresh Debian machine lacks, then runs the whole suite.
# `make mount` mounts ~/puter (against the local emulator when no Puter account is configured).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
MOUNTPOINT ?= $(HOME)/puter
PYTEST_ARGS ?=

.PHONY: test deps venv mount umount lint bench clean

deps:
	@# FUSE and what building pyfuse3 needs (it has no wheels): libfuse3 headers, pkg-config,
	@# a C compiler and the Python headers; venv for the .venv. Installed only when missing.
	@need=""; \
	command -v fusermount3 >/dev/null || need="$$need fuse3"; \
	pkg-config --exists fuse3 2>/dev/null || need="$$need libfuse3-dev pkg-config"; \
	command -v gcc >/dev/null || need="$$need gcc"; \
	[ -f "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need="$$need python3-dev"; \
	$(PY) -c 'import venv, ensurepip' 2>/dev/null || need="$$need python3-venv"; \
	for p in fio stress-ng rsync git; do command -v $$p >/dev/null || need="$$need $$p"; done; \
	command -v vim >/dev/null || need="$$need vim"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing:$$need (run: sudo apt-get install -y$$need)"; exit 1; fi; \
	  echo "installing:$$need"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; \
	fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

venv: deps $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

test: venv
	$(BIN)/ruff check puterfs tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

mount: venv
	mkdir -p $(MOUNTPOINT)
	$(BIN)/puterfs mount --auto $(MOUNTPOINT)

umount:
	$(BIN)/puterfs umount $(MOUNTPOINT)

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
