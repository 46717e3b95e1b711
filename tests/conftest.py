"""Shared fixtures: one emulator subprocess per session, a fresh temp user per test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from puterfs.emulator.testing import EmulatorProcess

# The rate-limit tier of every emulator the test suite starts (issue 8): the one place it is set.
# EmulatorProcess() reads it from $PUTERFS_EMULATOR_TIER, emulator_app passes it. The client
# paces itself (puterfs/client/_pacing.py), so the whole suite runs against the free tier's
# limits, as a real server enforces them (temporary users get the temp tier's).
# Tests about the limits themselves pass tier="free" explicitly.
EMULATOR_TIER = "free"
os.environ["PUTERFS_EMULATOR_TIER"] = EMULATOR_TIER


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`: -n, --dist loadfile, --no-loadscope-reorder) each worker
    takes the next whole file in collection order when it is done with one. Files with a test
    marked slow go first, then the other real-mount files, then the quick unit tests, so that no
    worker starts a minutes-long file while the others run out of work. Serial runs keep the
    usual order."""
    if not hasattr(config, "workerinput"):  # only an xdist worker has it (pytest-xdist's own test)
        return

    def weight(item: pytest.Item) -> int:
        if item.get_closest_marker("slow"):
            return 0
        if item.get_closest_marker("mount") or "mount" in item.path.parent.name:
            return 1
        return 2

    by_file: dict[object, int] = {}
    for item in items:
        by_file[item.path] = min(by_file.get(item.path, 2), weight(item))
    items.sort(key=lambda item: by_file[item.path])  # stable: each file keeps its order


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(tmp_path_factory.mktemp("emulator"), tier=EMULATOR_TIER)
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture(autouse=True)
def _fresh_rate_limits(request: pytest.FixtureRequest) -> None:
    """Each test that uses the session emulator starts with its rate-limit windows empty, as
    on a server nobody used for a while: tests see the limits, but not each other's traffic
    (/login's window, 10 per 15 minutes per client, would otherwise be shared by the suite)."""
    if "emulator" not in request.fixturenames:
        return
    emu = request.getfixturevalue("emulator")
    if emu.proc is not None and emu.proc.poll() is None:
        emu.set_tier(EMULATOR_TIER, reset=True)


@dataclass
class PuterUser:
    url: str  # the API, by name (http://api.puter.localhost:PORT): an address as Host gets 404
    username: str
    token: str
    web_url: str = ""  # the root host (/login, /signup): http://puter.localhost:PORT

    @property
    def home(self) -> str:
        return "/" + self.username

    def __repr__(self) -> str:  # keep the token out of test output
        return f"PuterUser(url={self.url!r}, username={self.username!r})"


@pytest.fixture
def puter_user(emulator: EmulatorProcess) -> Iterator[PuterUser]:
    if emulator.proc is None or emulator.proc.poll() is not None:
        emulator.start()  # a previous test stopped it
    username, token = emulator.new_user()
    yield PuterUser(url=emulator.url, username=username, token=token, web_url=emulator.web_url)
    if emulator.proc is not None and emulator.proc.poll() is None:
        emulator.clear_faults()
        emulator.set_capacity(None)


@pytest.fixture
def emulator_app(tmp_path):  # noqa: ANN201 - puterfs.emulator.Emulator
    from puterfs.emulator import Emulator

    emu = Emulator(tmp_path / "emulator", tier=EMULATOR_TIER)
    yield emu
    emu.store.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("4m")``: a new empty tmpfs of that size (mode 0700) under tmp_path, unmounted
    after the test; the test is skipped where tmpfs cannot be mounted. For full-disk tests."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        d = tmp_path / f"disk{len(mounted) or ''}"
        d.mkdir(mode=0o700)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(d)],
                              capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
        mounted.append(d)
        return d

    try:
        yield make
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], check=False)
