"""The daemon's life: state file, SIGTERM/SIGINT, ``puterfs umount``, daemon mode, options."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mount_testlib import MountedFs, MountFactory, MountProcess, wait_for


def test_state_file_describes_the_mount(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    st = m.proc.wait_state(lambda s: True, 10, "a state file")
    assert st["pid"] == m.proc.pid
    assert os.path.realpath(st["mountpoint"]) == os.path.realpath(m.path)
    assert st["api_url"].rstrip("/") == m.proc.url.rstrip("/")
    assert st["remote_root"] == f"/{m.user.username}"
    assert os.path.realpath(st["cache_dir"]) == os.path.realpath(m.cache_dir)
    assert st["pending"] == 0 and st["uploading"] == 0 and st["failed_attempts"] == 0
    assert st["last_error"] is None
    assert abs(st["updated"] - time.time()) < 60
    assert m.user.token not in m.proc.state_file.read_text()

    for i in range(3):
        (m.path / f"p{i}.txt").write_bytes(b"pending")
    st = m.proc.wait_state(lambda s: s["pending"] == 3, 5, "pending == 3")
    assert st["updated"] >= time.time() - 5
    m.proc.stop()
    assert not m.proc.state_file.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_uploads_pending_then_exits(mount_factory: MountFactory, sig: int) -> None:
    m = mount_factory(write_back=60)
    files = {f"f{i}.bin": os.urandom(1000 * i) for i in range(5)}
    (m.path / "d").mkdir()
    for name, data in files.items():
        (m.path / "d" / name).write_bytes(data)
    time.sleep(0.5)
    assert not m.remote.exists("d/f1.bin"), "uploaded before the 60 s write-back delay"
    assert m.proc.proc is not None
    m.proc.expected_exit = True
    m.proc.proc.send_signal(sig)
    assert m.proc.proc.wait(60) == 0, m.proc.log_text()
    assert not os.path.ismount(m.path)
    assert not m.proc.state_file.exists()
    for name, data in files.items():
        assert m.remote.read(f"d/{name}") == data


def _umount(proc: MountProcess, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "puterfs", "umount", str(proc.mountpoint)],
        env=proc.env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_umount_command_waits_for_uploads(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    data = os.urandom(2_000_000)
    (m.path / "big.bin").write_bytes(data)
    m.proc.expected_exit = True
    done = _umount(m.proc)
    assert done.returncode == 0, done.stdout + done.stderr
    # returns only when the daemon has exited: everything is uploaded by now
    assert m.proc.proc is not None and m.proc.proc.poll() == 0
    assert not os.path.ismount(m.path)
    assert m.remote.read("big.bin") == data


def _running(pid: int) -> bool:
    """Alive and not a zombie (the daemon's reaper may be a PID 1 that never reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_daemon_mode(mount_factory: MountFactory, tmp_path: Path) -> None:
    """Without --foreground the command returns once the mount is usable."""
    proc = MountProcess(
        tmp_path / "dmnt",
        url=mount_factory.url,
        token_file=mount_factory.token_file,
        cache_dir=tmp_path / "dcache",
        xdg_root=tmp_path / "xdg",
        log_path=tmp_path / "daemon.log",
    )
    proc.mountpoint.mkdir()
    argv = [a for a in proc.argv if a != "--foreground"]
    pid = None
    try:
        with open(proc.log_path, "wb") as logf:
            started = subprocess.run(argv, env=proc.env, stdout=logf, stderr=subprocess.STDOUT, timeout=60)
        assert started.returncode == 0, proc.log_text()
        assert os.path.ismount(proc.mountpoint), "the command returned before the mount was ready"
        st = proc.state()
        assert st is not None
        pid = int(st["pid"])
        assert _running(pid), "the daemon is not running"
        (proc.mountpoint / "via-daemon.txt").write_bytes(b"daemon")
        done = _umount(proc)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not os.path.ismount(proc.mountpoint)
        assert not _running(pid), "the daemon still runs after `puterfs umount` returned"
        remote = mount_factory.remote()
        assert remote.read("via-daemon.txt") == b"daemon"
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.force_unmount()


def test_read_only(mount_factory: MountFactory) -> None:
    m0 = mount_factory()
    m0.remote.write("ro/existing.txt", b"readable")
    m0.proc.stop()
    m = mount_factory("--read-only")
    p = m.path / "ro" / "existing.txt"
    assert p.read_bytes() == b"readable"
    for fn, args in [
        (os.open, (m.path / "new.txt", os.O_CREAT | os.O_WRONLY, 0o644)),
        (os.open, (p, os.O_WRONLY)),
        (os.mkdir, (m.path / "newdir",)),
        (os.unlink, (p,)),
        (os.rename, (p, m.path / "ro" / "moved.txt")),
    ]:
        with pytest.raises(OSError) as info:
            fn(*args)
        assert info.value.errno == errno.EROFS, f"{fn.__name__}{args}: {info.value}"
    assert m.remote.read("ro/existing.txt") == b"readable"
    assert m.remote.listdir("ro") == ["existing.txt"]
    m.proc.stop()


def test_remote_root(mount_factory: MountFactory) -> None:
    m0 = mount_factory()
    m0.remote.write("Documents/sub/inner.txt", b"inside documents")
    m0.proc.stop()
    m = mount_factory("--remote-root", f"/{m0.user.username}/Documents")
    assert sorted(os.listdir(m.path)) == sorted(["sub", *[n for n in os.listdir(m.path) if n == ".ai"]])
    assert (m.path / "sub" / "inner.txt").read_bytes() == b"inside documents"
    (m.path / "new.txt").write_bytes(b"new")
    m.wait_uploaded()
    assert m0.remote.read("Documents/new.txt") == b"new"
    m.proc.stop()


def test_mount_survives_emulator_restart(mount: MountedFs) -> None:
    """The server goes away for a while: the mount keeps serving and uploads when it is back."""
    emulator = mount.emulator
    (mount.path / "before.txt").write_bytes(b"before")
    mount.wait_uploaded()
    emulator.stop()
    try:
        took = {}
        for what, fn in [
            ("create", lambda: (mount.path / "offline.txt").write_bytes(b"written while the server was down")),
            ("read", lambda: (mount.path / "before.txt").read_bytes()),
            ("listdir", lambda: os.listdir(mount.path)),
        ]:
            t0 = time.monotonic()
            took[what] = (fn(), round(time.monotonic() - t0, 1))
        assert took["read"][0] == b"before"
        assert "offline.txt" in took["listdir"][0]
        slow = {k: t for k, (_, t) in took.items() if t > 5}
        assert not slow, f"the mount blocked on the unreachable server (seconds): {slow}"
        time.sleep(1.5)
        assert mount.proc.alive()
    finally:
        emulator.start()
    t0 = time.monotonic()
    mount.wait_uploaded(timeout=120)
    # the retry back-off must stay short enough to notice a server that is back
    assert time.monotonic() - t0 < 45, f"uploads resumed only {time.monotonic() - t0:.0f}s after the server came back"
    wait_for(lambda: mount.remote.read("offline.txt") == b"written while the server was down", 30, "offline.txt")
