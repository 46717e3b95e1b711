"""The systemd user unit: `systemd-analyze verify` must accept it without warnings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "puterfs@.service"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_contract():
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["%h/.local/bin/puterfs mount --foreground %f"]
    (stop,) = s["ExecStop"]
    assert stop.startswith("%h/.local/bin/puterfs umount") and stop.endswith(" %f")
    assert s["Restart"] == ["on-failure"]
    assert s["TimeoutStopSec"] == ["15min"]
    # Units get no PATH: every command is absolute or %h-relative.
    for key in ("ExecStart", "ExecStop", "ExecStartPre", "ExecStopPost"):
        for cmd in s.get(key, []):
            assert cmd.lstrip("-").startswith(("/", "%h/")), cmd
    # umount's own --timeout must run out before systemd's stop timeout kills the daemon.
    timeout = float(stop.split("--timeout", 1)[1].split()[0])
    assert timeout < 15 * 60


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    home = tmp_path / "home"
    bindir = home / ".local" / "bin"
    bindir.mkdir(parents=True)
    # verify checks that ExecStart's program exists: give %h/.local/bin/puterfs a real one.
    launcher = bindir / "puterfs"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m puterfs "$@"\n')
    launcher.chmod(0o755)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    # A template is verified through an instance: the escaped mountpoint /home/x/puter.
    instance = tmp_path / "puterfs@home-x-puter.service"
    instance.write_text(UNIT.read_text())
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    res = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(instance)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if "Failed to initialize manager" in res.stderr or "Failed to lookup RuntimeDirectory" in res.stderr:
        pytest.skip(f"systemd-analyze cannot run a user manager here: {res.stderr.strip()}")
    # verify exits 0 on unknown keys and bad values too, only warning: any line about our unit fails.
    complaints = [line for line in res.stderr.splitlines() if "puterfs" in line]
    assert res.returncode == 0 and not complaints, res.stderr
