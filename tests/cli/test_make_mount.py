"""`make mount` on a clean HOME: a new virtualenv with only what mounting needs, a working
mount of the local emulator, the next steps printed; a second run skips the install."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,  # builds pyfuse3 from source in a fresh virtualenv
    pytest.mark.mount,
    pytest.mark.skipif(
        not os.access("/dev/fuse", os.R_OK | os.W_OK) or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3",
    ),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_mount_on_a_clean_home(cli_env: dict[str, str], tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    home = Path(cli_env["HOME"])
    mp = home / "puter"
    env = dict(cli_env)
    env.pop("PYTHONPATH", None)  # the new venv's own install, not this checkout on the path
    env["PUTERFS_EMULATOR_PORT"] = str(_free_port())
    # pip's download cache is not puterfs state: share it so the test does not refetch wheels.
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    make = ["make", "-C", str(REPO), "mount", f"VENV={venv}", f"MOUNTPOINT={mp}", f"PY={sys._base_executable}"]
    puterfs = venv / "bin" / "puterfs"
    try:
        first = subprocess.run(make, env=env, capture_output=True, text=True, timeout=900)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "==> installing puterfs and what mounting needs" in first.stdout
        # Only the mount's dependencies: none of the test tools.
        listed = subprocess.run([str(venv / "bin" / "pip"), "list"], capture_output=True, text=True).stdout
        assert "pyfuse3" in listed and "pytest" not in listed and "respx" not in listed
        assert os.path.ismount(mp) and "Documents" in os.listdir(mp)
        out = first.stdout
        assert "user puter, password puterpass" in out
        assert f"puterfs is {puterfs}" in out
        assert f"{puterfs} umount {mp}" in out and f"{puterfs} emulator --stop" in out

        res = subprocess.run([str(puterfs), "umount", str(mp)], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "Unmounted" in res.stdout, res.stderr

        # Up to date: nothing is installed again.
        second = subprocess.run(make, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert "==> installing" not in second.stdout and "==> creating" not in second.stdout
        assert os.path.ismount(mp)
        res = subprocess.run([str(puterfs), "umount", str(mp)], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        stop = subprocess.run([str(puterfs), "emulator", "--stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0 and "Stopped the emulator" in stop.stdout, stop
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, timeout=30)
        if puterfs.exists():
            subprocess.run([str(puterfs), "emulator", "--stop"], env=env, capture_output=True, timeout=60)
