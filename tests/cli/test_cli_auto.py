"""``puterfs mount --auto`` (what ``make mount`` runs): the local emulator when no token is set.

These run a real FUSE mount through the CLI in daemon mode, the way a user does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from puterfs.emulator.testing import local_http


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fuse_missing() -> str | None:
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not available"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


pytestmark = [pytest.mark.mount, pytest.mark.skipif(_fuse_missing() is not None, reason=str(_fuse_missing()))]


def _force_unmount(mp: Path) -> None:
    # Unconditionally: os.path.ismount is False on a dead FUSE mount (stat fails with ENOTCONN).
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, timeout=30)


def _stop_pid(pid: int, timeout: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def test_mount_auto_starts_and_uses_the_local_emulator(run_cli, cli_env, tmp_path):
    port = _free_port()
    cli_env["PUTERFS_EMULATOR_PORT"] = str(port)  # 4100 unless set; a free one here
    AUTO_URL = f"http://api.puter.localhost:{port}"  # noqa: N806 - by name: an address as Host gets 404
    mp = tmp_path / "mp"
    mp.mkdir()
    data = Path(cli_env["XDG_DATA_HOME"]) / "puterfs" / "emulator"
    try:
        res = run_cli(["mount", "--auto", "--write-back", "0.2", str(mp)], timeout=120)
        assert res.returncode == 0, res.stderr
        assert f"mounting against the local emulator at {AUTO_URL} (user puter, password puterpass;" in res.stdout
        # The next steps: where puterfs is, how to unmount, how to stop the emulator.
        assert f"Mounted {mp}. Next:" in res.stdout
        assert f"umount {mp}" in res.stdout and "emulator --stop" in res.stdout
        assert os.path.ismount(mp)
        token = (data / "token").read_text().strip()
        assert token not in res.stdout + res.stderr
        assert (data / "emulator.log").exists()

        assert "Documents" in os.listdir(mp)
        (mp / "Documents" / "auto.txt").write_text("made through --auto\n")

        (m,) = json.loads(run_cli(["status", "--json"]).stdout)["mounts"]
        assert m["mountpoint"] == str(mp) and m["alive"] and m["api_url"] == AUTO_URL

        res = run_cli(["umount", str(mp)], timeout=120)
        assert res.returncode == 0, res.stderr
        assert not os.path.ismount(mp)
        assert json.loads(run_cli(["status", "--json"]).stdout)["mounts"] == []

        # umount returned only after the upload: the emulator has the file now.
        user = local_http.get(
            f"{AUTO_URL}/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        got = local_http.get(
            f"{AUTO_URL}/read",
            params={"file": f"/{user['username']}/Documents/auto.txt"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert got.status_code == 200 and got.text == "made through --auto\n"

        # A second --auto mount reuses the running emulator instead of starting another.
        pid = int((data / "emulator.pid").read_text())
        res = run_cli(["mount", "--auto", str(mp)], timeout=120)
        assert res.returncode == 0, res.stderr
        assert int((data / "emulator.pid").read_text()) == pid
        assert (mp / "Documents" / "auto.txt").read_text() == "made through --auto\n"
        assert run_cli(["umount", str(mp)], timeout=120).returncode == 0

        # `emulator --stop` stops it, and never a process that merely has its old pid.
        res = run_cli(["emulator", "--stop"], timeout=60)
        assert res.returncode == 0 and f"Stopped the emulator (pid {pid})" in res.stdout, res
        wait_gone = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < wait_gone
            time.sleep(0.05)
        other = subprocess.Popen(["sleep", "60"])
        try:
            (data / "emulator.pid").write_text(f"{other.pid}\n")
            res = run_cli(["emulator", "--stop"], timeout=60)
            assert res.returncode == 0 and "stale" in res.stdout, res
            assert other.poll() is None and not (data / "emulator.pid").exists()
        finally:
            other.kill()
            other.wait()
    finally:
        _force_unmount(mp)
        pid_file = data / "emulator.pid"
        if pid_file.exists():
            _stop_pid(int(pid_file.read_text()))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_mount_auto_with_a_token_uses_the_account(run_cli, cli_env, tmp_path, puter_user):
    mp = tmp_path / "mp"
    mp.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(puter_user.token + "\n")
    try:
        res = run_cli(
            ["mount", "--auto", "--api-url", puter_user.url, "--token-file", str(token_file), str(mp)],
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert "local emulator" not in res.stdout
        assert not (Path(cli_env["XDG_DATA_HOME"]) / "puterfs" / "emulator").exists()
        assert os.path.ismount(mp)
        (m,) = json.loads(run_cli(["status", "--json"]).stdout)["mounts"]
        assert m["api_url"] == puter_user.url and m["remote_root"] == puter_user.home
        assert run_cli(["umount", str(mp)], timeout=120).returncode == 0
        assert not os.path.ismount(mp)
    finally:
        _force_unmount(mp)


def test_umount_after_the_daemon_was_killed(run_cli, cli_env, tmp_path, puter_user):
    mp = tmp_path / "mp"
    mp.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(puter_user.token + "\n")
    try:
        res = run_cli(
            ["mount", "--api-url", puter_user.url, "--token-file", str(token_file), str(mp)], timeout=120
        )
        assert res.returncode == 0, res.stderr
        (m,) = json.loads(run_cli(["status", "--json"]).stdout)["mounts"]
        os.kill(m["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while json.loads(run_cli(["status", "--json"]).stdout)["mounts"][0]["alive"]:
            assert time.monotonic() < deadline, "the killed daemon still looks alive"
            time.sleep(0.1)
        # A dead FUSE mount: stat fails, but umount clears it and the stale state file.
        res = run_cli(["umount", str(mp)], timeout=60)
        assert res.returncode == 0, res.stderr
        assert "next mount with the same --cache-dir" in res.stdout
        assert not os.path.ismount(mp) and os.listdir(mp) == []
        assert json.loads(run_cli(["status", "--json"]).stdout)["mounts"] == []
        assert run_cli(["umount", str(mp)]).returncode == 1
    finally:
        _force_unmount(mp)
