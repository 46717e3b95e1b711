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
	@if ! command -v fusermount3 >/dev/null || ! pkg-config --exists fuse3 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev pkg-config; \
	  else echo "need root to install fuse3 libfuse3-dev pkg-config (sudo make deps)"; exit 1; fi; fi
	@# programs the mount tests drive through the real mount
	@missing=""; for p in fio stress-ng rsync git vim; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
	  pk=$$(echo $$missing | sed 's/\bvim\b/vim-tiny/'); apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pk; fi

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

venv: deps $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

test: venv
	$(BIN)/ruff check puterfs tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

mount: venv
	$(BIN)/puterfs mount --auto $(MOUNTPOINT)

umount:
	$(BIN)/puterfs umount $(MOUNTPOINT)

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
