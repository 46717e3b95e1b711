""".ai/ never traps a tree walker, and it answers only whom it should.

`.ai` is not listed in the mount root (reachable by name only), a read waiting for an
answer ends as soon as its reader is killed or interrupted, and with ``--allow-other`` the
files answer only the mount's owner, while `.ai/ocr` reads a path only as its caller could.
The answer is held by the emulator's ``stream_hold`` fault: without these properties every
command here would hang until the release.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import MountedFs, local_tree, tree_diff, wait_for

from puterfs.emulator.media import render_text_png

HOLD = {"path": "/drivers/call", "stream_hold": True, "count": 1}
NOBODY = 65534


def sh(cwd: Path, script: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, timeout=timeout, **kw)


def first_bytes(proc: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    """Some output of `proc`: proof that it is now inside a read of the held answer."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the reader printed nothing"
    return os.read(proc.stdout.fileno(), 65536)


def wait_in_read(proc: subprocess.Popen[bytes], path: Path, timeout: float = 30) -> None:
    """Wait until ``proc`` is inside a system call on its descriptor of ``path``: its output only
    proves it read, and a handled signal that comes before its next read() starts is handled in
    user space, so that read then waits for the answer with no signal pending."""

    def in_read() -> bool:
        fd_dir = f"/proc/{proc.pid}/fd"
        fds = {int(fd) for fd in os.listdir(fd_dir) if os.readlink(f"{fd_dir}/{fd}") == str(path)}
        fields = Path(f"/proc/{proc.pid}/syscall").read_text().split()  # "NR ARG0 ...", "running", "-1 ..."
        return len(fields) > 1 and fields[0] not in ("running", "-1") and int(fields[1], 16) in fds

    wait_for(in_read, timeout, f"{proc.args} to wait in a read of {path}", interval=0.02)


def held_reader(mount: MountedFs, code: str = "") -> subprocess.Popen[bytes]:
    """A prompt whose answer is held, and a process reading it (blocked after the first piece)."""
    assert sh(mount.path, "cat .ai/model").returncode == 0  # the model list must not use the fault
    mount.emulator.set_faults(HOLD)
    assert sh(mount.path, "echo one two three four five six seven eight nine ten > .ai/chat").returncode == 0
    if not code:
        argv = ["cat", str(mount.path / ".ai" / "chat")]
    else:
        argv = [sys.executable, "-c", code, str(mount.path / ".ai" / "chat")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert first_bytes(proc)
    assert proc.poll() is None
    return proc


def test_tree_walkers_over_the_root_while_an_answer_is_pending(mount: MountedFs, tmp_path: Path) -> None:
    for i in range(12):
        d = mount.path / f"d{i % 3}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_text(f"needle {i}\n")
    mount.wait_uploaded()  # a tree still being uploaded is another matter than .ai/
    reader = held_reader(mount)
    try:
        # Not listed; still there by name.
        assert ".ai" not in os.listdir(mount.path)
        assert "help" in os.listdir(mount.path / ".ai")
        tar = sh(mount.path, f"tar cf {tmp_path / 'all.tar'} .")
        assert tar.returncode == 0, tar.stderr
        with tarfile.open(tmp_path / "all.tar") as tf:
            names = tf.getnames()
        assert "./d1/f4.txt" in names and not [n for n in names if ".ai" in n]
        copy = tmp_path / "copy"
        rsync = sh(mount.path, f"rsync -a ./ {copy}/")
        assert rsync.returncode == 0, rsync.stderr
        assert not (copy / ".ai").exists()
        assert not tree_diff(local_tree(copy), local_tree(mount.path))
        grep = sh(mount.path, "grep -r needle .")
        assert grep.returncode == 0, grep.stderr
        assert grep.stdout.count(b"needle") == 12 and b".ai" not in grep.stdout
        find = sh(mount.path, "find .")
        assert find.returncode == 0 and b"./d2/f5.txt" in find.stdout and b".ai" not in find.stdout
        du = sh(mount.path, "du -s .")
        assert du.returncode == 0, du.stderr
        # rsync back onto the mount (the round trip that used to fail on .ai/).
        back = sh(tmp_path, f"rsync -a copy/ {mount.path}/")
        assert back.returncode == 0, back.stderr
        assert reader.poll() is None  # the answer is still held
        # kill -9 takes effect while the read waits (the kernel alone would wait for the answer).
        reader.kill()
        assert reader.wait(timeout=15) == -signal.SIGKILL
    finally:
        mount.emulator.release()
        if reader.poll() is None:
            reader.kill()
            reader.wait(30)
    # The mount is fine afterwards.
    assert sh(mount.path, "echo after > .ai/chat; cat .ai/chat").stdout == b"after\n"


def test_a_waiting_reader_can_be_interrupted(mount: MountedFs) -> None:
    # Python handles SIGINT (KeyboardInterrupt): the read ends with EINTR and the handler runs.
    # The reader installs the handler itself: Python leaves SIGINT ignored when it starts with it
    # ignored, as every command started in the background by a non-interactive shell does.
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n"
        "    while True:\n"
        "        chunk = os.read(fd, 65536)\n"
        "        if not chunk: break\n"
        "        sys.stdout.buffer.write(chunk); sys.stdout.flush()\n"
        "except KeyboardInterrupt:\n"
        "    print('INTERRUPTED', flush=True)\n"
        "    sys.exit(3)\n"
    )
    reader = held_reader(mount, code)
    try:
        wait_in_read(reader, mount.path / ".ai" / "chat")
        reader.send_signal(signal.SIGINT)
        out, err = reader.communicate(timeout=15)
        assert reader.returncode == 3, err
        assert b"INTERRUPTED" in out
        # SIGTERM's default action ends cat at once too.
        mount.emulator.release()
        reader2 = held_reader(mount)
        reader2.terminate()
        assert reader2.wait(timeout=15) == -signal.SIGTERM
    finally:
        mount.emulator.release()
        if reader.poll() is None:
            reader.kill()


def test_a_held_answer_fails_after_the_ai_timeout(mount_factory: Any) -> None:
    m = mount_factory(ai_timeout=2)
    assert sh(m.path, "cat .ai/model").returncode == 0
    m.emulator.set_faults(HOLD)
    try:
        assert sh(m.path, "echo wait for me > .ai/chat").returncode == 0
        fd = os.open(m.path / ".ai" / "chat", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as info:
                while os.read(fd, 65536):
                    pass
            assert info.value.errno == errno.ETIMEDOUT
        finally:
            os.close(fd)
    finally:
        m.emulator.release()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as a second user")


@needs_root
def test_ai_answers_only_its_owner(mount_factory: Any) -> None:
    m = mount_factory(allow_other=True)
    (m.path / "shared.txt").write_text("for everyone\n")

    def as_nobody(script: str) -> subprocess.CompletedProcess[bytes]:
        return sh(m.path, script, user=NOBODY, group=NOBODY)

    assert as_nobody("cat shared.txt").stdout == b"for everyone\n"  # the mount itself is shared
    for script in ("cat .ai/help", "ls .ai", "echo spend > .ai/chat", "cat .ai/models"):
        proc = as_nobody(script)
        assert proc.returncode != 0 and b"Permission denied" in proc.stderr, (script, proc)
    assert sh(m.path, "echo mine > .ai/chat; cat .ai/chat").stdout == b"mine\n"
    assert not [e for e in m.emulator.log(bodies=True) if "spend" in str(e.get("body"))]


@needs_root
def test_ocr_reads_a_path_as_its_caller_could(mount_factory: Any) -> None:
    m = mount_factory(allow_other=True, ai_all_users=True)
    (m.path / "open.png").write_bytes(render_text_png("OPEN"))
    (m.path / "secret.png").write_bytes(render_text_png("SECRET"))
    (m.path / "private").mkdir()
    (m.path / "private" / "inner.png").write_bytes(render_text_png("INNER"))
    os.chmod(m.path / "open.png", 0o644)
    os.chmod(m.path / "secret.png", 0o600)
    os.chmod(m.path / "private", 0o700)
    os.chmod(m.path / "private" / "inner.png", 0o644)

    def as_nobody(script: str) -> subprocess.CompletedProcess[bytes]:
        return sh(m.path, script, user=NOBODY, group=NOBODY)

    # Files are usable by every user now, each with their own answers.
    assert stat_mode(m.path / ".ai" / "chat") == 0o666
    assert as_nobody("echo open.png > .ai/ocr; cat .ai/ocr").stdout == b"OPEN\n"
    for path in ("secret.png", "private/inner.png"):
        proc = as_nobody(f"echo {path} > .ai/ocr; cat .ai/ocr")
        assert proc.returncode != 0 and b"Permission denied" in proc.stderr, (path, proc)
        assert b"permission denied" in as_nobody("cat .ai/error").stdout.lower()
    # The owner reads them all.
    assert sh(m.path, "echo secret.png > .ai/ocr; cat .ai/ocr").stdout == b"SECRET\n"
    assert sh(m.path, "echo private/inner.png > .ai/ocr; cat .ai/ocr").stdout == b"INNER\n"


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777
