"""`puterfs umount`: `fusermount3 -u` plus waiting for the uploads, with honest exit codes.

Busy mounts are refused (exit 1, the processes named) unless `--lazy`; a second `umount`
keeps waiting; only `--force` stops the wait (exit 1, the files named, kept in the cache);
"Unmounted" and exit 0 only when everything reached the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from mount_testlib import MountedFs, MountProcess, wait_for

# Every upload fails (a transient 500), so a drain cannot finish until the rule is cleared.
UPLOAD_PATHS = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite", "/fs/completeWrite", "/writeFile")
UPLOADS_FAIL = [{"path": p, "status": 500, "message": "injected: uploads fail"} for p in UPLOAD_PATHS]

HOLDER = (
    "import sys\n"
    "f = open(sys.argv[1], 'w')\n"
    "f.write('first half\\n'); f.flush()\n"
    "print('open', flush=True)\n"
    "sys.stdin.readline()\n"
    "f.write('second half\\n')\n"
    "f.close()\n"
    "print('closed', flush=True)\n"
)


def umount(proc: MountProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "puterfs", "umount", *args, str(proc.mountpoint)],
        env=proc.env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def umount_bg(proc: MountProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "puterfs", "umount", *args, str(proc.mountpoint)],
        env=proc.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def holder(path: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None and p.stdout.readline() == "open\n"
    return p


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate("\n", timeout=60)
    return p.returncode, out, err


def test_busy_is_refused_and_names_the_process(mount: MountedFs) -> None:
    h = holder(mount.path / "open.txt")
    try:
        res = umount(mount.proc)
        assert res.returncode == 1, res
        assert "busy" in res.stderr and str(h.pid) in res.stderr and "open.txt" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert os.path.ismount(mount.path) and mount.proc.alive()
    finally:
        rc, out, err = finish(h)
    assert rc == 0 and out == "closed\n", err  # the writer never noticed
    mount.proc.expected_exit = True
    res = umount(mount.proc)
    assert res.returncode == 0 and res.stdout.startswith("Unmounted"), res
    assert mount.proc.proc is not None and mount.proc.proc.wait(30) == 0
    assert mount.remote.read("open.txt") == b"first half\nsecond half\n"


def test_lazy_detaches_and_the_writer_keeps_working(mount: MountedFs) -> None:
    h = holder(mount.path / "lazy.txt")
    mount.proc.expected_exit = True
    um = umount_bg(mount.proc, "--lazy")
    try:
        wait_for(lambda: not os.path.ismount(mount.path), 30, "the mount to be detached")
        assert um.poll() is None  # waits for the writer, then for the upload
    finally:
        rc, out, err = finish(h)
    assert rc == 0 and out == "closed\n", err  # no "Transport endpoint is not connected"
    out, err = um.communicate(timeout=120)
    assert um.returncode == 0 and out.startswith("Unmounted"), (out, err)
    assert mount.proc.proc is not None and mount.proc.proc.wait(30) == 0
    assert mount.remote.read("lazy.txt") == b"first half\nsecond half\n"


def test_second_umount_keeps_waiting_and_force_stops(mount: MountedFs, mount_factory: Any) -> None:
    (mount.path / "stuck.txt").write_text("cannot go up yet\n")
    mount.emulator.set_faults(*UPLOADS_FAIL)
    first = None
    try:
        mount.proc.expected_exit = True
        first = umount_bg(mount.proc)
        wait_for(lambda: not os.path.ismount(mount.path), 30, "the unmount")
        # Another umount does not abort the uploads: it waits too (here until its timeout).
        second = umount(mount.proc, "--timeout", "2")
        assert second.returncode == 1, second
        assert "timed out" in second.stderr and "1 uploads pending" in second.stderr
        assert "--force" in second.stderr
        assert mount.proc.alive() and first.poll() is None
        # --force: the daemon stops waiting; the file stays in the cache, named.
        forced = umount(mount.proc, "--force")
        assert forced.returncode == 1, forced
        line = forced.stderr.strip()
        assert len(line.splitlines()) == 1
        assert "stuck.txt" in line and str(mount.cache_dir) in line and "Unmounted" not in forced.stdout
        out, err = first.communicate(timeout=60)
        assert first.returncode == 1 and "stuck.txt" in err and "Unmounted" not in out, (out, err)
        assert mount.proc.proc is not None and mount.proc.proc.wait(30) == 1
        st = mount.proc.state()  # kept for `puterfs status` until the next mount
        assert st is not None and st["stopped"] and [f["path"] for f in st["pending_files"]] == ["stuck.txt"]
    finally:
        mount.emulator.clear_faults()
        if first is not None and first.poll() is None:
            first.kill()
    assert not mount.remote.exists("stuck.txt")
    # The next mount with that cache uploads it.
    mount.proc = mount._factory.spawn(mount.path, mount.cache_dir, [])
    again = mount
    again.wait_uploaded()
    assert again.remote.read("stuck.txt") == b"cannot go up yet\n"


def test_a_daemon_dying_in_the_flush_is_reported(mount: MountedFs) -> None:
    (mount.path / "a.txt").write_text("a\n")
    (mount.path / "b.txt").write_text("b\n")
    mount.emulator.set_faults(*UPLOADS_FAIL)
    try:
        mount.proc.expected_exit = True
        um = umount_bg(mount.proc)
        mount.proc.wait_state(lambda s: bool(s.get("stopping")), 30, "the daemon to start draining")
        os.kill(mount.proc.daemon_pid(), signal.SIGKILL)
        out, err = um.communicate(timeout=60)
        # reaped before the teardown looks: umount can report the death while the killed
        # daemon is still exiting, and the teardown would then SIGTERM it and see -9
        assert mount.proc.proc is not None and mount.proc.proc.wait(30) == -signal.SIGKILL
    finally:
        mount.emulator.clear_faults()
    assert um.returncode == 1 and "Unmounted" not in out, (out, err)
    assert "died" in err and "a.txt" in err and "b.txt" in err and str(mount.cache_dir) in err
    assert not os.path.ismount(mount.path)


def test_umount_of_a_mount_whose_state_file_is_elsewhere(mount: MountedFs, tmp_path: Path) -> None:
    """Another XDG_RUNTIME_DIR (say, the daemon runs under systemd): unmounted like
    fusermount3 -u, busy refused; the daemon still uploads before it exits."""
    env = {**mount.proc.env, "XDG_RUNTIME_DIR": str(tmp_path / "other-run")}
    (mount.path / "from-elsewhere.txt").write_text("still uploaded\n")
    h = holder(mount.path / "held.txt")
    try:
        res = subprocess.run([sys.executable, "-m", "puterfs", "umount", str(mount.path)],
                             env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 1 and "busy" in res.stderr and str(h.pid) in res.stderr, res
    finally:
        finish(h)
    mount.proc.expected_exit = True
    res = subprocess.run([sys.executable, "-m", "puterfs", "umount", str(mount.path)],
                         env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0 and "its daemon is unknown here" in res.stdout, res
    assert mount.proc.proc is not None and mount.proc.proc.wait(60) == 0
    assert mount.remote.read("from-elsewhere.txt") == b"still uploaded\n"
