# `make mount` mounts ~/puter (against the local emulator when no Puter account is configured),
# installing only what mounting needs. `make test` installs everything, then runs the whole suite.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MOUNTPOINT ?= $(HOME)/puter
PYTEST_ARGS ?=
# The suite runs in PYTEST_JOBS pytest-xdist workers (each with its own emulator; a test file's
# tests stay in one worker, files with slow tests handed out first: tests/conftest.py): most
# tests wait on mounts, write-back delays and subprocesses, not on the CPU, so 4 workers on
# 2 cores take well under half the serial time (11 min for 27 on the 2-core CI machine).
# PYTEST_JOBS=0 runs serially.
PYTEST_JOBS ?= 4

# Debian packages: what building and running pyfuse3 needs, and what only the tests use
# (fio, stress-ng, rsync, git, vim drive the mount; systemd-analyze checks the unit; Chromium
# and Node run `puterfs login` in a real headless browser; autoconf/automake build pjdfstest
# and rclone is its comparison in bench/pjdfstest.py).
MOUNT_TOOLS := fusermount3:fuse3 gcc:gcc
TEST_TOOLS := fio:fio stress-ng:stress-ng rsync:rsync git:git vim:vim systemd-analyze:systemd \
	chromium:chromium node:nodejs npm:npm autoreconf:autoconf automake:automake rclone:rclone curl:curl
# playwright-core drives the system Chromium (no browser download); project-local, gitignored.
# 1.61 is the newest that still runs on Debian 12's Node 18 (1.62 wants Node 20).
PLAYWRIGHT_VERSION := 1.61.0
PLAYWRIGHT := .tools/node/node_modules/playwright-core

.PHONY: test deps deps-mount venv mount-venv mount umount lint bench clean

# $(call install_missing,TOOLS,EXTRA-CHECKS): apt-get install what is missing (root), or say
# what to run (non-root); silent when nothing is missing.
define install_missing
	@need=""; \
	for pair in $(1); do command -v "$${pair%%:*}" >/dev/null || need="$$need $${pair#*:}"; done; \
	$(2) \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing:$$need (run: sudo apt-get install -y$$need)"; exit 1; fi; \
	  echo "==> installing Debian packages:$$need"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$need; \
	fi
endef

PYFUSE3_BUILD_CHECKS = \
	pkg-config --exists fuse3 2>/dev/null || need="$$need libfuse3-dev pkg-config"; \
	[ -f "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need="$$need python3-dev"; \
	$(PY) -c 'import venv, ensurepip' 2>/dev/null || need="$$need python3-venv";

deps-mount:
	$(call install_missing,$(MOUNT_TOOLS),$(PYFUSE3_BUILD_CHECKS))

deps: deps-mount
	$(call install_missing,$(TEST_TOOLS),)
	@grep -qs '"version": "$(PLAYWRIGHT_VERSION)"' $(PLAYWRIGHT)/package.json || { \
	  echo "==> installing playwright-core $(PLAYWRIGHT_VERSION) into .tools/node"; \
	  npm install --prefix .tools/node --no-save --no-audit --no-fund --loglevel=error \
	    playwright-core@$(PLAYWRIGHT_VERSION); }

$(BIN)/python:
	@echo "==> creating the virtualenv $(VENV)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# Stamps: pip runs again only when pyproject.toml changed (or the venv is new).
$(VENV)/.installed-mount: pyproject.toml | $(BIN)/python
	@echo "==> installing puterfs and what mounting needs into $(VENV)"
	@echo "    (the first time this builds pyfuse3 from source: a minute or two)"
	$(BIN)/pip install --progress-bar on -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	@echo "==> installing puterfs with the test tools into $(VENV)"
	$(BIN)/pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed-mount

mount-venv: deps-mount $(VENV)/.installed-mount

venv: deps $(VENV)/.installed-test

test: venv
	$(BIN)/ruff check puterfs tests bench
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

mount: mount-venv
	@mkdir -p $(MOUNTPOINT)
	@echo "==> mounting $(MOUNTPOINT)"
	$(BIN)/puterfs mount --auto $(MOUNTPOINT)

umount:
	$(BIN)/puterfs umount $(MOUNTPOINT)

# The benchmark needs what mounting needs plus git and tar (its workloads); rclone mount is its
# reference column, installed from Debian when missing; without it (not root, no package) that
# column is skipped with a note in the table. Not the whole test toolchain (no Chromium, no npm).
# Defaults: both tiers, 3 passes each, 256 MiB (bench/README.md: about 13 minutes here).
# The results go to .bench/latest.json (every median and every pass's figures) and
# .bench/latest.md (the table as Markdown, for docs/performance.md); BENCH_OUT moves them.
BENCH_ARGS ?=
BENCH_OUT ?= .bench
BENCH_TOOLS := git:git tar:tar
bench: mount-venv
	$(call install_missing,$(BENCH_TOOLS),)
	@command -v rclone >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rclone; } || \
	  echo "note: rclone could not be installed; the rclone column will be skipped"
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python bench/run.py --json $(BENCH_OUT)/latest.json --markdown $(BENCH_OUT)/latest.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
