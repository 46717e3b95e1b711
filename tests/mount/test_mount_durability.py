"""Durability: no data is lost to a SIGKILL, server errors, a full quota or a concurrent edit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mount_testlib import MountedFs, MountFactory, wait_for

# Every route a mount might upload file content through.
UPLOAD_PATHS = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite", "/fs/completeWrite", "/writeFile")


@pytest.fixture
def faults(emulator: Any) -> Iterator[Any]:
    """The emulator, with its fault rules and capacity reset however the test ends.

    Request it after ``mount``/``mount_factory`` so it is torn down first: a mount stopping
    with faults still active would wait on them.
    """
    emulator.clear_faults()
    try:
        yield emulator
    finally:
        emulator.clear_faults()
        emulator.set_capacity(None)


def _upload_rules(**rule: Any) -> list[dict[str, Any]]:
    return [{"method": "POST", "path": p, **rule} for p in UPLOAD_PATHS]


def _ls_works(path: os.PathLike[str], timeout: float = 10.0) -> list[str]:
    """`ls` through the mount answers promptly (the daemon is alive and not blocked)."""
    proc = subprocess.run(["ls", "-la", str(path)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_sigkill_before_upload_loses_nothing(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    m.remote.write("existing.txt", b"old server content")
    wait_for((m.path / "existing.txt").exists, 10, "existing.txt visible")

    expected: dict[str, bytes] = {
        "a.txt": b"alpha\n",
        "dir/b.bin": os.urandom(70_000),
        "dir/sub/c.txt": b"gamma\n" * 1000,
        "existing.txt": b"new local content, not uploaded yet",
        "renamed.txt": b"written as tmp.txt, renamed before the crash",
        "empty": b"",
    }
    (m.path / "dir" / "sub").mkdir(parents=True)
    for rel, data in expected.items():
        if rel == "renamed.txt":
            (m.path / "tmp.txt").write_bytes(data)
            os.rename(m.path / "tmp.txt", m.path / "renamed.txt")
        else:
            (m.path / rel).write_bytes(data)
    with open(m.path / "a.txt", "ab") as f:  # an append to a dirty file
        f.write(b"appended\n")
    expected["a.txt"] += b"appended\n"

    time.sleep(1.0)
    st = m.proc.state()
    assert st is not None and st["pending"] >= 1, st
    # the crash has to happen before the uploads, or this test proves nothing
    assert m.remote.read("existing.txt") == b"old server content"
    assert not m.remote.exists("a.txt")

    m.kill_and_remount()  # back to the default 0.3 s write-back
    for rel, data in expected.items():
        assert (m.path / rel).read_bytes() == data, f"{rel} lost locally across SIGKILL"
    m.wait_uploaded(timeout=60)
    for rel, data in expected.items():
        assert m.remote.read(rel) == data, f"{rel} did not reach the server after SIGKILL + remount"
    assert not m.remote.exists("tmp.txt")
    m.proc.stop()


def test_sigkill_during_upload_loses_nothing(mount_factory: MountFactory, faults: Any) -> None:
    m = mount_factory()
    data = os.urandom(500_000)
    faults.set_faults(*_upload_rules(stall=True))
    (m.path / "inflight.bin").write_bytes(data)
    m.proc.wait_state(lambda s: s.get("uploading", 0) >= 1, 15, "the upload to start")
    m.proc.kill()
    faults.clear_faults()  # releases the stalled request; the daemon is already gone
    m.kill_and_remount()
    assert (m.path / "inflight.bin").read_bytes() == data
    m.wait_uploaded(timeout=60)
    assert m.remote.read("inflight.bin") == data
    m.proc.stop()


@pytest.mark.parametrize(
    "rule",
    [
        {"status": 503, "count": 3},
        {"status": 503, "retry_after": 1, "count": 2},
        {"status": 500, "count": 2},
        {"drop": True, "count": 3},
    ],
    ids=["503", "503-retry-after", "500", "dropped-connection"],
)
def test_upload_survives_server_errors(mount: MountedFs, faults: Any, rule: dict[str, Any]) -> None:
    faults.clear_log()
    faults.set_faults(*_upload_rules(**rule))
    files = {f"err{i}.bin": os.urandom(10_000 * (i + 1)) for i in range(4)}
    for name, data in files.items():
        (mount.path / name).write_bytes(data)

    # the mount stays usable while its uploads fail
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        listing = _ls_works(mount.path)
        assert any("err0.bin" in line for line in listing)
        st = mount.proc.state()
        if st and st["pending"] == 0 and st["uploading"] == 0:
            break
        time.sleep(0.5)
    mount.wait_uploaded(timeout=90)
    for name, data in files.items():
        assert mount.remote.read(name) == data
        assert (mount.path / name).read_bytes() == data

    hit = [e for e in faults.log() if e.get("path") in UPLOAD_PATHS and e.get("fault")]
    assert hit, "no upload met the injected fault: the test did not exercise it"
    assert mount.proc.alive()


def test_slow_upload_does_not_block_the_mount(mount: MountedFs, faults: Any) -> None:
    (mount.path / "other.txt").write_bytes(b"other")
    mount.wait_uploaded()
    faults.clear_log()
    faults.set_faults(*_upload_rules(latency=4.0, count=1))
    (mount.path / "slow.bin").write_bytes(os.urandom(100_000))
    time.sleep(1.0)  # the upload is now in flight (write-back 0.3 s)
    st = mount.proc.state()
    t0 = time.monotonic()
    assert "other.txt" in os.listdir(mount.path)
    assert (mount.path / "other.txt").read_bytes() == b"other"
    os.stat(mount.path / "slow.bin")
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"file operations took {elapsed:.1f}s while an upload was slow (state {st})"
    (mount.path / "meanwhile.txt").write_bytes(b"written during a slow upload")
    mount.wait_uploaded(timeout=60)
    # (a request enters the log when it completes)
    assert any(e.get("fault") for e in faults.log() if e.get("path") in UPLOAD_PATHS), "the slow upload never happened"
    assert mount.remote.read("meanwhile.txt") == b"written during a slow upload"


def test_quota_full_keeps_data_and_reports(mount: MountedFs, faults: Any) -> None:
    used = mount.remote.df()["used"]
    faults.set_capacity(used + 20_000)
    data = os.urandom(300_000)
    p = mount.path / "toobig.bin"
    p.write_bytes(data)

    st = mount.proc.wait_state(
        lambda s: (s.get("failed_attempts") or 0) > 0 or bool(s.get("last_error")),
        30,
        "the failed upload to be reported in the state file",
    )
    assert st["pending"] >= 1, f"the unuploaded file is not counted as pending: {st}"
    # the data is kept and the mount keeps working
    assert p.read_bytes() == data
    _ls_works(mount.path)
    (mount.path / "small.txt").write_bytes(b"")
    assert not mount.remote.exists("toobig.bin") or mount.remote.read("toobig.bin") != data

    faults.set_capacity(None)
    mount.wait_uploaded(timeout=120)
    assert mount.remote.read("toobig.bin") == data
    st = mount.proc.state()
    assert st is not None and not st.get("failed_attempts"), st


@pytest.mark.parametrize("name", ["report.txt", "Makefile"])
@pytest.mark.parametrize("trigger", ["fsync", "umount"])
def test_conflict_keeps_both_versions(mount_factory: MountFactory, name: str, trigger: str) -> None:
    m = mount_factory(write_back=60, sync_uploads=trigger == "fsync")  # fsync uploads at once
    base, local, server = b"base version\n", b"local edit, longer than the base\n", b"server edit\n"
    m.remote.write(name, base)
    p = m.path / name
    wait_for(lambda: p.exists() and p.read_bytes() == base, 10, "base version visible")

    p.write_bytes(local)  # pending for 60 s
    time.sleep(1.1)  # the server's timestamps are whole seconds
    m.remote.write(name, server)
    time.sleep(2.0)  # a few polls: the mount now knows the server changed
    assert p.read_bytes() == local, "the server's change overwrote pending local edits"

    if trigger == "fsync":
        fd = os.open(p, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        m.remount()
    m.wait_uploaded()

    stem, ext = os.path.splitext(name)
    pattern = re.compile(rf"{re.escape(stem)}\.conflict-\d{{8}}-\d{{6}}{re.escape(ext)}")
    names = m.remote.listdir("")
    conflicts = [n for n in names if pattern.fullmatch(n)]
    assert len(conflicts) == 1, f"expected one conflict copy of {name}, server has {names}"
    assert m.remote.read(name) == local
    assert m.remote.read(conflicts[0]) == server
    wait_for(lambda: conflicts[0] in os.listdir(m.path), 10, "conflict copy visible in the mount")
    assert (m.path / conflicts[0]).read_bytes() == server
    assert p.read_bytes() == local
    m.proc.stop()


def _stall_first_upload(m: MountedFs, faults: Any, path: os.PathLike[str], data: bytes) -> None:
    """Write ``path`` and return once its upload is held in flight by the emulator."""
    rules = _upload_rules(stall=True, count=1)
    faults.set_faults(*rules)
    with open(path, "wb") as f:
        f.write(data)
    m.proc.wait_state(lambda s: s.get("uploading", 0) >= 1, 15, "the upload to start")
    # A rule that fired is gone (count=1): the upload has reached the emulator and waits for a
    # release (one sent before that would not free it). The other rules go: the requests after
    # it (the rename's or delete's /batch) are not held with nobody to release them.
    wait_for(lambda: len(faults._admin("GET", "faults")["rules"]) < len(rules), 15, "the upload to be held")
    faults.set_faults()


def test_delete_during_upload_stays_deleted(mount: MountedFs, faults: Any) -> None:
    p = mount.path / "racy.bin"
    _stall_first_upload(mount, faults, p, os.urandom(50_000))
    p.unlink()
    faults.release()  # the held upload now completes on the server
    mount.wait_uploaded()
    time.sleep(2.0)  # a few polls
    assert not p.exists(), "a file deleted while its upload was in flight came back"
    assert "racy.bin" not in os.listdir(mount.path)
    assert not mount.remote.exists("racy.bin")


def test_rename_during_upload_keeps_one_copy(mount: MountedFs, faults: Any) -> None:
    data = os.urandom(50_000)
    p = mount.path / "moving.bin"
    _stall_first_upload(mount, faults, p, data)
    os.rename(p, mount.path / "moved.bin")
    faults.release()
    mount.wait_uploaded()
    time.sleep(2.0)
    names = [n for n in os.listdir(mount.path) if n.startswith("mov")]
    assert names == ["moved.bin"], names
    assert mount.remote.read("moved.bin") == data
    assert not mount.remote.exists("moving.bin")


def test_overwrite_during_upload_wins(mount: MountedFs, faults: Any) -> None:
    p = mount.path / "twice.txt"
    _stall_first_upload(mount, faults, p, b"first version")
    p.write_bytes(b"second version, written while the first one was uploading")
    faults.release()
    mount.wait_uploaded()
    assert mount.remote.read("twice.txt") == b"second version, written while the first one was uploading"
    assert p.read_bytes() == b"second version, written while the first one was uploading"
    assert [n for n in mount.remote.listdir("") if "conflict" in n] == []


def test_dir_rename_with_pending_edit_makes_no_conflict(mount_factory: MountFactory) -> None:
    """Only a change by another client is a conflict: our own moves are not."""
    m = mount_factory()
    (m.path / "a").mkdir()
    (m.path / "a" / "f.txt").write_bytes(b"v1")
    m.wait_uploaded()
    (m.path / "a" / "f.txt").write_bytes(b"v2, pending")
    os.rename(m.path / "a", m.path / "b")
    with open(m.path / "b" / "f.txt", "ab") as f:
        f.write(b" + v3")
    m.wait_uploaded()
    time.sleep(1.5)
    m.wait_uploaded()
    assert m.remote.listdir("b") == ["f.txt"]
    assert m.remote.read("b/f.txt") == b"v2, pending + v3"
    assert not m.remote.exists("a")
    assert sorted(os.listdir(m.path / "b")) == ["f.txt"]
    m.proc.stop()


def test_dir_rename_during_upload_makes_no_conflict(mount: MountedFs, faults: Any) -> None:
    (mount.path / "a" / "deep").mkdir(parents=True)
    (mount.path / "a" / "deep" / "f.txt").write_bytes(b"v1")
    mount.wait_uploaded()
    _stall_first_upload(mount, faults, mount.path / "a" / "deep" / "f.txt", b"v2, uploading")
    os.rename(mount.path / "a", mount.path / "b")
    faults.release()
    with open(mount.path / "b" / "deep" / "f.txt", "ab") as f:
        f.write(b" + v3")
    mount.wait_uploaded()
    time.sleep(1.5)
    mount.wait_uploaded()
    assert sorted(os.listdir(mount.path / "b" / "deep")) == ["f.txt"]
    assert mount.remote.listdir("b/deep") == ["f.txt"]
    assert mount.remote.read("b/deep/f.txt") == b"v2, uploading + v3"
    assert not mount.remote.exists("a")


@pytest.mark.parametrize("moment", ["server-moved-answer-lost", "sent-not-yet-moved"])
def test_sigkill_mid_directory_rename_keeps_one_tree(mount_factory: MountFactory, faults: Any, moment: str) -> None:
    """kill -9 while a directory rename is on its way to the server: once after the server
    moved the tree (its answer never arrives), once before the server acted. The rename(2)
    returned at once (local first, docs/namespace.md) and its move is in the namespace journal
    until its outcome is known, so the next start applies it again (or finds it done: the
    source gone, the destination there): one tree, the renamed one, and the file not yet
    uploaded in it, with nothing left at the old path."""
    m = mount_factory(write_back=60)
    m.remote.mkdir("d")
    m.remote.write("d/clean.txt", b"uploaded before the rename\n")
    wait_for((m.path / "d" / "clean.txt").exists, 10, "d/clean.txt visible")
    pending = os.urandom(30_000)
    (m.path / "d" / "pending.bin").write_bytes(pending)  # dirty: write-back 60 s
    after = moment == "server-moved-answer-lost"
    faults.set_faults({"method": "POST", "path": "/batch", "stall": True, "after": after})
    os.rename(m.path / "d", m.path / "e")
    m.proc.expected_exit = True
    m.proc.proc.send_signal(signal.SIGTERM)  # unmounting applies the journal now, then uploads
    try:
        if after:
            wait_for(lambda: m.remote.exists("e/clean.txt"), 30, "the server to move d to e (answer held)")
        else:
            wait_for(lambda: faults._admin("GET", "faults")["rules"][0]["fired"], 30, "the /batch to reach the server")
        assert not m.remote.exists("e/pending.bin")  # the upload waits for the move
        m.proc.kill()
    finally:
        faults.clear_faults()
    m.kill_and_remount()
    m.wait_uploaded(timeout=60)
    assert not m.remote.exists("d"), "the tree is split: d is on the server too"
    assert m.remote.read("e/clean.txt") == b"uploaded before the rename\n"
    assert m.remote.read("e/pending.bin") == pending
    assert (m.path / "e" / "pending.bin").read_bytes() == pending
    assert not (m.path / "d").exists()
    m.proc.stop()
    print(f"kill -9 mid directory rename ({moment}): one tree (e), {len(pending) + 27} bytes compared, bytes lost 0")
