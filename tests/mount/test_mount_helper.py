"""`mount -t fuse.puterfs` and fstab lines, through mount(8) and the mount.fuse.puterfs helper."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import wait_for

from puterfs import mounthelper

HELPER = Path("/sbin/mount.fuse.puterfs")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installing a mount helper into /sbin needs root"),
    pytest.mark.skipif(shutil.which("mount") is None, reason="mount(8) is not installed"),
]


# mount(8) finds helpers only in /sbin: the one path of this suite shared by the whole machine.
# Test runs at the same time (parallel workers, other checkouts) take turns on it under this lock
# instead of seeing one another's helper and skipping.
HELPER_LOCK = Path("/run/lock/puterfs-test-mount-helper.lock")


@pytest.fixture
def helper() -> Iterator[Path]:
    """/sbin/mount.fuse.puterfs for this test, as docs/cli.md says to install it."""
    HELPER_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(HELPER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the test fails
        yield from _installed_helper()


def _installed_helper() -> Iterator[Path]:
    if HELPER.exists() or HELPER.is_symlink():
        pytest.skip(f"{HELPER} exists already; not replacing it")
    script = Path(sys.executable).parent / "mount.fuse.puterfs"
    if script.exists():
        HELPER.symlink_to(script)
    else:  # a venv installed before the entry point existed: the same module
        src = Path(mounthelper.__file__).resolve().parents[1]
        HELPER.write_text(f'#!/bin/sh\nPYTHONPATH={src} exec {sys.executable} -m puterfs.mounthelper "$@"\n')
        HELPER.chmod(0o755)
    try:
        yield HELPER
    finally:
        HELPER.unlink()


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUTER_", "XDG_"))}
    for sub in ("run", "config", "cache", "data"):
        (tmp_path / "xdg" / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        XDG_RUNTIME_DIR=str(tmp_path / "xdg" / "run"), XDG_CONFIG_HOME=str(tmp_path / "xdg" / "config"),
        XDG_CACHE_HOME=str(tmp_path / "xdg" / "cache"), XDG_DATA_HOME=str(tmp_path / "xdg" / "data"),
    )  # fmt: skip
    src = str(Path(mounthelper.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def _fstype(path: Path) -> str | None:
    res = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", str(path)], capture_output=True, text=True)
    return res.stdout.strip() or None


@contextlib.contextmanager
def _cleanup(*mps: Path) -> Iterator[None]:
    try:
        yield
    finally:
        for mp in mps:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, timeout=30)


def test_mount_t_fuse_puterfs_and_an_fstab_line(helper: Path, mount_factory: Any, tmp_path: Path) -> None:
    env = _env(tmp_path)
    remote = mount_factory.remote()
    remote.write("Documents/in-docs.txt", b"docs\n")
    mp = tmp_path / "mnt"
    mp2 = tmp_path / "docs"
    mp.mkdir()
    mp2.mkdir()
    opts = (
        f"api_url={mount_factory.url},token_file={mount_factory.token_file},cache_dir={tmp_path / 'c1'},"
        "write_back=0.2,noauto,_netdev,x-systemd.automount,rw"
    )
    with _cleanup(mp, mp2):
        res = subprocess.run(
            ["mount", "-t", "fuse.puterfs", "puterfs:", str(mp), "-o", opts],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert os.path.ismount(mp) and _fstype(mp) == "fuse.puterfs"
        (mp / "via-mount-t.txt").write_text("hello from mount -t\n")
        wait_for(lambda: remote.exists("via-mount-t.txt"), 30, "the upload")
        assert remote.read("via-mount-t.txt") == b"hello from mount -t\n"
        # umount(8): the kernel lets go, the daemon uploads what is left and exits.
        (mp / "last.txt").write_text("written just before umount\n")
        res = subprocess.run(["umount", str(mp)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        wait_for(lambda: remote.exists("last.txt"), 60, "the upload after umount")

        # An fstab line: SOURCE is the Puter folder to mount, ro from the generic options.
        fstab = tmp_path / "fstab"
        fstab.write_text(
            f"puterfs:/{mount_factory.user.username}/Documents {mp2} fuse.puterfs "
            f"noauto,ro,api_url={mount_factory.url},token_file={mount_factory.token_file},"
            f"cache_dir={tmp_path / 'c2'} 0 0\n"
        )
        res = subprocess.run(["mount", "-T", str(fstab), str(mp2)], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert (mp2 / "in-docs.txt").read_text() == "docs\n"
        with pytest.raises(OSError):
            (mp2 / "new.txt").write_text("refused: read-only")
        assert subprocess.run(["umount", str(mp2)], capture_output=True, timeout=60).returncode == 0

        # A misspelt option: refused in one line naming it; nothing mounted.
        res = subprocess.run(
            ["mount", "-t", "fuse.puterfs", "puterfs:", str(mp), "-o", "writeback=3"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode != 0 and "unknown option 'writeback'" in res.stderr
        assert not os.path.ismount(mp)


def test_option_translation() -> None:
    args, user = mounthelper.translate(
        "puterfs:/alice/Documents", "/mnt/x", ["rw", "noauto", "write_back=5", "ai-timeout=60", "ro", "setuid=alice", "x-systemd.automount"]
    )
    assert args == ["--remote-root", "/alice/Documents", "--write-back", "5", "--ai-timeout", "60", "--read-only", "/mnt/x"]
    assert user == "alice"
    assert mounthelper.translate("puterfs:", "/m", ["tier=paid", "domain=puter.localhost"])[0] == [
        "--tier", "paid", "--domain", "puter.localhost", "/m"]
    with pytest.raises(mounthelper.UsageError, match="needs a value"):
        mounthelper.translate("puterfs:", "/m", ["cache_dir"])
    assert mounthelper.translate("puterfs", "/m", [])[0] == ["/m"]
    with pytest.raises(mounthelper.UsageError, match="source 'bogus'"):
        mounthelper.translate("bogus", "/m", [])
    with pytest.raises(mounthelper.UsageError, match="source '/local/dir'"):
        mounthelper.translate("/local/dir", "/m", [])
    assert mounthelper.parse_argv(["puterfs", "/m", "-o", "a,b", "-n", "-oc"]) == ("puterfs", "/m", ["a", "b", "c"])
