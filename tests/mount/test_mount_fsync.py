"""fsync(2) through the mount (issue 13, issue 10).

By default fsync returns once the file and its journal rows are on the local disk and the
upload follows in the background; ``--sync-uploads`` makes it return only once the server
holds the file, through a lane of its own (never behind uploads nobody waits for).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import MountFactory, wait_for

from puterfs.fs.cache import SPARES

UPLOAD_PATHS = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite", "/fs/completeWrite", "/writeFile")


@pytest.fixture
def faults(emulator: Any) -> Iterator[Any]:
    """The emulator's fault rules, cleared (and stalls released) however the test ends.
    Request it after ``mount_factory`` so it is torn down first."""
    emulator.clear_faults()
    try:
        yield emulator
    finally:
        emulator.clear_faults()
        emulator.release()


def _uploads(emulator: Any) -> list[str]:
    return [e["path"] for e in emulator.log() if e["path"] in UPLOAD_PATHS]


class _Fsync(threading.Thread):
    """open + write + fsync + close of `path` in a thread, so the test can look meanwhile."""

    def __init__(self, path: Path, data: bytes) -> None:
        super().__init__(daemon=True)
        self.path, self.data = path, data
        self.synced = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, self.data)
                os.fsync(fd)
                self.synced.set()
            finally:
                os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.synced.set()


@pytest.mark.parametrize("size", [4_000, 70_000], ids=["bytes-in-the-journal", "data-file-synced"])
def test_fsync_is_local_then_the_upload_follows_and_survives_kill_9(mount_factory: MountFactory, size: int) -> None:
    """Up to 64 KiB the fsync puts the file's bytes in the journal (docs/write-back.md); a
    write after it must win over that copy at the next start, as after any kill -9."""
    m = mount_factory(write_back=60)  # only fsync or the restart can explain an upload
    m.emulator.clear_log()
    data = os.urandom(size)
    fd = os.open(m.path / "saved.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.fdatasync(fd)
        # fsync returned with nothing sent to the server
        assert _uploads(m.emulator) == []
        assert not m.remote.exists("saved.bin")
        m.proc.wait_state(lambda s: s.get("pending", 0) >= 1, 10, "the state file to show the pending upload")
        tail = b"written after the fsync"
        os.write(fd, tail)
        data += tail
        # kill -9 right after (the file still open): the next mount uploads it
        m.kill_and_remount(write_back=0.3)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # ENOTCONN: its mount died with the daemon
    m.wait_uploaded()
    assert m.remote.read("saved.bin") == data
    assert (m.path / "saved.bin").read_bytes() == data
    m.proc.stop()


def test_fsync_of_a_file_kept_open_starts_its_upload(mount_factory: MountFactory) -> None:
    """A file that stays open (a log) is uploaded after an fsync too, without waiting for it."""
    m = mount_factory(write_back=0.3)
    with open(m.path / "app.log", "wb") as f:
        f.write(b"line 1\n")
        f.flush()
        os.fsync(f.fileno())
        wait_for(lambda: m.remote.exists("app.log") and m.remote.read("app.log") == b"line 1\n", 30,
                 "the fsync'ed file on the server while still open")
        f.write(b"line 2\n")
    m.wait_uploaded()
    assert m.remote.read("app.log") == b"line 1\nline 2\n"
    m.proc.stop()


def test_sync_uploads_fsync_returns_once_the_server_has_it(mount_factory: MountFactory, faults: Any) -> None:
    m = mount_factory("--sync-uploads", write_back=60)
    faults.set_faults(*[{"method": "POST", "path": p, "stall": True, "count": 1} for p in UPLOAD_PATHS])
    data = b"precious\n" * 100
    t = _Fsync(m.path / "doc.txt", data)
    t.start()
    m.proc.wait_state(lambda s: s.get("uploading", 0) >= 1, 30, "the upload to start")
    assert not t.synced.is_set(), "fsync returned while the server did not have the file"
    assert not m.remote.exists("doc.txt")
    faults.release()
    assert t.synced.wait(60), "fsync did not return after the upload went through"
    assert t.error is None, t.error
    assert m.remote.read("doc.txt") == data  # at once: fsync meant "on the server"
    t.join(30)
    m.proc.stop()


def test_sync_uploads_small_fsync_not_held_behind_four_big_uploads(mount_factory: MountFactory, faults: Any) -> None:
    """Issue 10: fsync of a 5-byte file must not wait behind four busy large uploads. All four
    upload workers are held by the server: two in their /stat, two in their /fs/write (no more
    than two: the tier's in-flight cap for background uploads may be two)."""
    m = mount_factory("--sync-uploads", write_back=0.3)
    faults.set_faults(
        {"method": "POST", "path": "/stat", "stall": True, "count": 2},
        {"method": "POST", "path": "/fs/write", "stall": True, "count": 2},
    )
    big = {f"big{i}.bin": os.urandom(300_000) for i in range(4)}  # above the batch size: one upload each
    for name, data in big.items():
        (m.path / name).write_bytes(data)

    def held() -> bool:  # both rules used up: two uploads stalled in each
        return all(r["fired"] >= 2 for r in m.emulator._admin("GET", "faults")["rules"])

    wait_for(held, 30, "four big uploads held by the server")
    m.proc.wait_state(lambda s: s.get("uploading", 0) >= 4, 30, "four uploads in flight")
    t = _Fsync(m.path / "small.txt", b"hello")
    t.start()
    assert t.synced.wait(30), (f"the small file's fsync waited behind the big uploads; "
                               f"requests {[e['path'] for e in m.emulator.log()][-15:]}; log {m.proc.log_text(3000)}")
    assert t.error is None, t.error
    assert m.remote.read("small.txt") == b"hello"
    assert not any(m.remote.exists(name) for name in big), "the big uploads were not held after all"
    faults.release()
    t.join(30)
    m.wait_uploaded()
    for name, data in big.items():
        assert m.remote.read(name) == data
    m.proc.stop()


def _save(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """An editor's save: write a temp file (fsync'ed), rename it over the document."""
    tmp = path.with_name("." + path.name + ".swp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def test_editor_saves_survive_kill_9_after_the_rename(mount_factory: MountFactory) -> None:
    """The journal commits of a create, a rename over and an unlink are not synced one by one
    (only fsync syncs them, with the file): each survives a kill -9 once its syscall returned.
    Saves over a server file, over a save not uploaded yet, with and without fsync, then a
    kill -9 right after the last rename (no fsync after it): the document holds the last
    save, the temp name is gone, and after the next start the server has the last save once,
    no conflict copy."""
    m = mount_factory(write_back=60)  # nothing goes up before the kill
    m.remote.write("notes/doc.txt", b"the server's version\n")
    wait_for((m.path / "notes" / "doc.txt").exists, 10, "doc.txt visible")
    doc = m.path / "notes" / "doc.txt"
    last = b""
    for i in range(4):
        last = f"save {i}\n".encode() * (10 + i)
        _save(doc, last, fsync=i != 2)
    fresh = m.path / "notes" / "new.txt"
    _save(fresh, b"a new document\n")
    os.unlink(m.path / "notes" / "new.txt")
    _save(fresh, b"a new document, saved again\n", fsync=False)
    assert m.remote.read("notes/doc.txt") == b"the server's version\n"  # the kill comes first
    m.kill_and_remount(write_back=0.3)
    assert doc.read_bytes() == last
    assert fresh.read_bytes() == b"a new document, saved again\n"
    assert sorted(os.listdir(m.path / "notes")) == ["doc.txt", "new.txt"]
    m.wait_uploaded()
    assert m.remote.read("notes/doc.txt") == last
    assert m.remote.read("notes/new.txt") == b"a new document, saved again\n"
    assert sorted(m.remote.listdir("notes")) == ["doc.txt", "new.txt"]
    m.proc.stop()


def test_editor_saves_reuse_the_replaced_files_data_files(mount_factory: MountFactory) -> None:
    """Once a few saves ran, a save makes no cache file and unlinks none: the document's
    previous version's data file becomes a spare once the rename is on the disk, and the next
    save's temp file takes it. After a kill -9 the last save is the document, no temp name
    is left, and the next start drops the recycled files (none is reported or recovered)."""
    m = mount_factory(write_back=60)  # nothing goes up meanwhile
    (m.path / "notes").mkdir()
    doc = m.path / "notes" / "doc.txt"
    data = m.cache_dir / "data"
    last = b""
    for i in range(20):
        last = f"save {i}\n".encode() * (20 + i)
        _save(doc, last)
        if i == 3:
            # the spare data files the first create asked for are made (a worker thread's job)
            wait_for(lambda: len([n for n in os.listdir(data) if not n.endswith(".id")]) > SPARES, 30,
                     "the spare data files")
            names = sorted(os.listdir(data))
    assert sorted(os.listdir(data)) == names  # saves 5 to 20: no file made or unlinked
    m.kill_and_remount(write_back=0.3)
    assert doc.read_bytes() == last
    assert sorted(os.listdir(m.path / "notes")) == ["doc.txt"]
    assert not (m.cache_dir / "lost+found").exists()
    m.wait_uploaded()
    assert m.remote.read("notes/doc.txt") == last
    m.proc.stop()
