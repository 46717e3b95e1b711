"""The systemd user unit and `puterfs install-service`: `systemd-analyze verify` must accept
the shipped unit and the installed one without warnings."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from puterfs import cli

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "puterfs@.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_contract():
    assert UNIT.resolve() == cli.SHIPPED_UNIT  # one file: systemd/ links to the package's copy
    s = _unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/usr/bin/env puterfs mount --foreground %f"]
    (stop,) = s["ExecStop"]
    assert stop.startswith("/usr/bin/env puterfs umount") and stop.endswith(" %f")
    assert "PATH=%h/.local/bin:/usr/local/bin:/usr/bin:/bin" in s["Environment"]
    assert s["Restart"] == ["on-failure"]
    assert s["TimeoutStopSec"] == ["15min"]
    # Units get no PATH: every command is absolute.
    for key in ("ExecStart", "ExecStop", "ExecStartPre", "ExecStopPost"):
        for cmd in s.get(key, []):
            assert cmd.lstrip("-").startswith("/"), cmd
    # umount's own --timeout must run out before systemd's stop timeout kills the daemon.
    timeout = float(stop.split("--timeout", 1)[1].split()[0])
    assert timeout < 15 * 60


def _verify(unit_text: str, tmp_path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    # A template is verified through an instance: the escaped mountpoint /home/x/puter.
    d = tmp_path / "verify"
    d.mkdir(exist_ok=True)
    instance = d / "puterfs@home-x-puter.service"
    instance.write_text(unit_text)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    res = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(instance)], capture_output=True, text=True, env=env, timeout=60
    )
    if "Failed to initialize manager" in res.stderr or "Failed to lookup RuntimeDirectory" in res.stderr:
        pytest.skip(f"systemd-analyze cannot run a user manager here: {res.stderr.strip()}")
    return res


@needs_analyze
def test_systemd_analyze_verify_accepts_the_shipped_unit(tmp_path):
    home = tmp_path / "home"  # a clean HOME: nothing in ~/.local/bin
    home.mkdir()
    res = _verify(UNIT.read_text(), tmp_path, home)
    # verify exits 0 on unknown keys and bad values too, only warning: any line about our unit fails.
    complaints = [line for line in res.stderr.splitlines() if "puterfs" in line]
    assert res.returncode == 0 and not complaints, res.stderr


def _fake_systemctl(bindir: Path, works: bool) -> Path:
    """A `systemctl` that records its arguments, and fails like one without a user bus."""
    log = bindir / "systemctl.log"
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "systemctl"
    fail = 'echo "Failed to connect to bus: No medium found" >&2; exit 1' if not works else "exit 0"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n{fail}\n')
    script.chmod(0o755)
    return log


@needs_analyze
def test_install_service_writes_a_unit_that_verifies_and_enables_it(run_cli, cli_env, tmp_path):
    bindir = tmp_path / "fakebin"
    log = _fake_systemctl(bindir, works=True)
    path = f"{bindir}:{os.environ['PATH']}"
    mp = Path(cli_env["HOME"]) / "my puter"
    res = run_cli(["install-service", str(mp)], env={"PATH": path})
    assert res.returncode == 0, res.stderr
    unit = Path(cli_env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "puterfs@.service"
    text = unit.read_text()
    (start,) = _unit_settings(text)["ExecStart"]
    exe = start.split(" mount ")[0].strip('"')
    # The executable this puterfs runs from, absolute (a unit has no PATH).
    assert os.path.isabs(exe) and os.access(exe, os.X_OK), start
    assert exe in (str(Path(sys.executable).parent / "puterfs"), sys.executable)
    instance = f"puterfs@{cli.systemd_escape_path(str(mp))}.service"
    assert instance == "puterfs@" + subprocess.run(
        ["systemd-escape", "--path", str(mp)], capture_output=True, text=True
    ).stdout.strip() + ".service"
    calls = log.read_text().splitlines()
    assert "--user daemon-reload" in calls and f"--user enable --now {instance}" in calls
    assert f"Enabled and started {instance}" in res.stdout
    assert "puterfs login" in res.stderr  # no token saved in this HOME
    res = _verify(text, tmp_path, Path(cli_env["HOME"]))
    complaints = [line for line in res.stderr.splitlines() if "puterfs" in line]
    assert res.returncode == 0 and not complaints, res.stderr
    # Again: up to date.
    assert "is up to date" in run_cli(["install-service", str(mp)], env={"PATH": path}).stdout


def test_install_service_prints_the_commands_without_a_user_manager(run_cli, cli_env, tmp_path):
    bindir = tmp_path / "fakebin"
    log = _fake_systemctl(bindir, works=False)
    res = run_cli(["install-service"], env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert res.returncode == 0, res.stderr
    instance = f"puterfs@{cli.systemd_escape_path(os.path.join(cli_env['HOME'], 'puter'))}.service"
    assert "Not enabled (Failed to connect to bus: No medium found)" in res.stdout
    assert f"systemctl --user enable --now {shlex.quote(instance)}" in res.stdout  # pasteable
    assert "enable" not in log.read_text()  # only the probe ran
    assert (Path(cli_env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "puterfs@.service").exists()
