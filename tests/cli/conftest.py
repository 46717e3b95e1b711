"""Fixtures for the CLI tests: ``python -m puterfs ...`` in a subprocess, with every
XDG directory and HOME in the test's tmp dir so nothing touches the real account."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from puterfs.emulator.testing import EmulatorProcess

# Variables that would point a test's CLI at a real account or server.
REPO = Path(__file__).resolve().parents[2]

_SCRUB = ("PUTER_TOKEN", "PUTER_AUTH_TOKEN", "PUTER_API_URL", "PUTER_WEB_URL", "NOTIFY_SOCKET")

RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    home = tmp_path / "home"
    for sub in ("config", "cache", "data", "runtime"):
        (home / sub).mkdir(parents=True, mode=0o700)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_RUNTIME_DIR=str(home / "runtime"),
        PYTHONUNBUFFERED="1",
        # `python -m puterfs` from this checkout even when the package is not installed
        # and pytest runs from another directory.
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    return env


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> RunCli:
    """Run ``python -m puterfs ARGS``; ``input`` goes to stdin (a pipe, so never a tty)."""

    def run(
        args: Sequence[str],
        *,
        input: str | None = "",
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(cli_env)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "puterfs", *args],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
        )

    return run


def _totp(secret_b32: str, at: float | None = None) -> str:
    """RFC 6238 TOTP (SHA1, 6 digits, 30 s), as authenticator apps compute it."""
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    counter = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{value:06d}"


@pytest.fixture
def totp() -> Callable[..., str]:
    """``totp(secret, at=None)``: the current (or ``at``'s) 6-digit code."""
    return _totp


@pytest.fixture
def wrong_totp(otp_emulator: EmulatorProcess) -> str:
    """A 6-digit code the server will refuse (none of the steps it accepts now)."""
    assert otp_emulator.otp_secret
    good = {_totp(otp_emulator.otp_secret, time.time() + d) for d in (-60, -30, 0, 30, 60)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in good)


@pytest.fixture(scope="session")
def otp_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """A second emulator whose user ``otpuser`` has two-factor authentication (TOTP)."""
    secret = base64.b32encode(os.urandom(10)).decode()
    proc = EmulatorProcess(
        tmp_path_factory.mktemp("otp-emulator"),
        username="otpuser",
        password="otp-password",
        otp_secret=secret,
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.close()
