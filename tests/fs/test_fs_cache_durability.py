"""What of the cache journal a power cut can take, and what it cannot (docs/write-back.md).

Journal commits are not synced one by one (SQLite WAL, ``synchronous=NORMAL``): each survives
a kill -9 as soon as it returns, and the journal is synced on purpose where a power cut must
not take it: by an fsync (the file's data, its row and every earlier commit, in one go),
before a clean file's bytes change, before an upload is sent. A power cut is simulated the way
it happens: the disk holds each of the cache's files as it was when it was last fsync'ed
(every ``os.fsync``/``os.fdatasync`` is recorded with the bytes it made durable), the
database file as SQLite left it, and nothing else.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from puterfs.fs.cache import INLINE_MAX, JOURNAL, CacheEntry, CacheStore, _Tx
from puterfs.fs.data import DataCache
from puterfs.fs.inodes import Node
from puterfs.fs.readahead import ReadAhead


class Disk:
    """What each of the cache's files and directories held when it was last fsync'ed."""

    def __init__(self) -> None:
        self.synced: dict[str, bytes] = {}
        self.names: dict[str, set[str]] = {}  # directory -> the names it held at its last fsync

    def record(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):
            self.names[path] = set(os.listdir(path))
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                self.synced[path] = f.read()

    def power_cut_image(self, src: Path, dst: Path, *, sizes_kept: bool = False) -> None:
        """dst: the cache dir `src` as a power cut right now would leave it, at worst: the
        database file as SQLite wrote it (it syncs that file itself, at checkpoints), the
        -wal as of its last fsync, a data file only if its name or bytes were synced (with
        its bytes as of its last fsync, else empty; `sizes_kept`: else holes of its size, as
        a sparse file's size survives, journaled with the truncate that made it, while the
        bytes written into its holes do not), no identity record (never synced)."""
        os.mkdir(dst, 0o700)
        os.mkdir(dst / "data", 0o700)
        (dst / JOURNAL).write_bytes((src / JOURNAL).read_bytes())
        wal = str(src / (JOURNAL + "-wal"))
        if wal in self.synced:
            (dst / (JOURNAL + "-wal")).write_bytes(self.synced[wal])
        data = src / "data"
        names = {n for n in self.names.get(str(data), set()) if not n.endswith(".id")}
        names |= {Path(p).name for p in self.synced if Path(p).parent == data and not p.endswith(".id")}
        for name in names:
            unsynced = b"\0" * (data / name).stat().st_size if sizes_kept else b""
            (dst / "data" / name).write_bytes(self.synced.get(str(data / name), unsynced))


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    d = Disk()
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        d.record(fd)

    def fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        d.record(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    yield d


def _write(c: CacheStore, e: CacheEntry, data: bytes) -> None:
    fd = c.open_data(e.id)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def _fsync(c: CacheStore, e: CacheEntry, *, together: bool = True) -> None:
    """What the mount's fsync handler does (DataCache._fsync): a small file's bytes into the
    journal (else its data file synced), the syncs on worker threads together, or (nothing
    else to answer) one after the other on its own thread."""
    fd = c.open_data(e.id)
    try:
        data_fd = None if c.save_fsynced(e, fd) else fd
        mark = c.journal_mark()
        c.sync_files(data_fd, journal=mark, together=together)
        c.journal_synced(mark)
    finally:
        os.close(fd)


@pytest.mark.parametrize("together", [True, False], ids=["on-threads", "one-thread"])
@pytest.mark.parametrize("size", [1100, INLINE_MAX + 1], ids=["in-the-journal", "data-file-synced"])
def test_a_created_file_fsynced_survives_a_power_cut(tmp_path: Path, disk: Disk, together: bool, size: int) -> None:
    c = CacheStore(tmp_path / "live")
    for i in range(3):
        c.create(f"other{i}.txt", dirty=True)  # committed, never synced by themselves
    e = c.create("doc.txt", dirty=True)
    data = (b"saved text\n" * (size // 11 + 1))[:size]
    _write(c, e, data)
    e.size = len(data)
    _fsync(c, e, together=together)
    c.rename("doc.txt", "renamed.txt")  # after the fsync and not synced: a power cut may take it
    disk.power_cut_image(tmp_path / "live", tmp_path / "image")
    after = CacheStore(tmp_path / "image")
    # the fsync made the file, its row and every commit before it durable
    kept = {x.path: x for x in after.dirty_entries()}
    assert set(kept) - {"renamed.txt"} == {"doc.txt", "other0.txt", "other1.txt", "other2.txt"}
    got = kept["doc.txt"]
    with after.open_file(got.id) as f:
        assert f.read() == data
    assert got.size == len(data)
    after.close()


def test_without_fsync_commits_are_not_synced_one_by_one(tmp_path: Path, disk: Disk) -> None:
    """The cost this saves: creating, writing and renaming files syncs nothing."""
    c = CacheStore(tmp_path / "live")
    before = (dict(disk.synced), dict(disk.names))
    for i in range(5):
        e = c.create(f"f{i}", dirty=True)
        _write(c, e, b"x" * i)
        e.size = i
        c.save(e)
        c.rename(f"f{i}", f"g{i}")
    assert (disk.synced, disk.names) == before
    # and a kill -9 (the OS keeps everything written, the store is never closed) loses none of it
    shutil.copytree(tmp_path / "live", tmp_path / "killed", ignore=shutil.ignore_patterns("*-shm"))
    again = CacheStore(tmp_path / "killed")
    assert sorted(x.path for x in again.dirty_entries()) == [f"g{i}" for i in range(5)]
    again.close()
    c.close()


def test_a_clean_file_is_dirty_on_the_disk_before_its_bytes_change(tmp_path: Path, disk: Disk) -> None:
    """Changed bytes that reach the disk must never be taken for the server's copy after a
    power cut: the clean -> dirty transition is synced before the write that follows it."""
    c = CacheStore(tmp_path / "live")
    e = c.create("cached.txt")
    _write(c, e, b"the server's bytes")
    e.size = 18
    c.set_base(e, uid="uid-1", size=18, modified=1_700_000_000)
    _fsync(c, e)  # the clean copy and its row on the disk, as after any sync
    assert not c.paths["cached.txt"].dirty
    c.mark_dirty(e)
    # the write that follows reaches the disk (the kernel wrote it back), the journal did not
    # get another sync: still the image says dirty
    _write(c, e, b"changed bytes here")
    fd = c.open_data(e.id)
    os.fsync(fd)
    os.close(fd)
    disk.power_cut_image(tmp_path / "live", tmp_path / "image")
    after = CacheStore(tmp_path / "image")
    got = after.paths["cached.txt"]
    assert got.dirty
    with after.open_file(got.id) as f:
        assert f.read() == b"changed bytes here"
    after.close()


def test_an_upload_attempt_is_on_the_disk_before_it_is_sent(tmp_path: Path, disk: Disk) -> None:
    c = CacheStore(tmp_path / "live")
    e = c.create("up.txt", dirty=True)
    _write(c, e, b"abc")
    e.size = 3
    _fsync(c, e)
    c.note_attempt(e, "900150983cd24fb0d6963f7d28e17f72")
    disk.power_cut_image(tmp_path / "live", tmp_path / "image")
    after = CacheStore(tmp_path / "image")
    assert after.paths["up.txt"].sent_md5 == ["900150983cd24fb0d6963f7d28e17f72"]
    after.close()


def test_a_sync_with_nothing_to_sync_does_nothing(tmp_path: Path, disk: Disk) -> None:
    c = CacheStore(tmp_path / "live")
    assert c.journal_mark() is None  # the start-up synced it
    c.sync_files(journal=c.journal_mark())  # the directories, once per mount
    before = (dict(disk.synced), dict(disk.names))
    c.sync_files(journal=c.journal_mark())
    assert (disk.synced, disk.names) == before
    c.close()


def test_commits_no_fsync_synced_reach_the_disk_within_the_interval(tmp_path: Path, disk: Disk) -> None:
    """What no fsync made durable is synced by the mount's periodic journal sync (every
    JOURNAL_SYNC_INTERVAL seconds while there are unsynced commits)."""
    c = CacheStore(tmp_path / "live")

    class Ops(DataCache):
        cache = c

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Ops().sync_journal_every, 0.05)
            c.create("made.txt", dirty=True)
            c.rename("made.txt", "moved.txt")
            with trio.fail_after(30):
                while c.journal_mark() is not None:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    disk.power_cut_image(tmp_path / "live", tmp_path / "image")
    after = CacheStore(tmp_path / "image")
    assert sorted(after.paths) == ["moved.txt"] and after.paths["moved.txt"].dirty
    after.close()
    c.close()


def _with_spares(c: CacheStore) -> list[int]:
    """Make spare data files as the mount does (DataCache._want_spares), on this thread."""
    spares = c.prepare_spares(c.spares_wanted())
    c.add_spares(spares, c.make_spares(spares))
    return [e.id for e in spares]


def test_a_create_takes_a_spare_data_file_and_survives_kill_9_and_a_power_cut(tmp_path: Path, disk: Disk) -> None:
    """A create makes no inode: it takes an empty data file made ahead, whose name was synced
    then. The file is the same across a kill -9 and, once fsync'ed, a power cut; the spares
    nobody took are dropped at the next start and nowhere reported."""
    c = CacheStore(tmp_path / "live")
    spare_ids = _with_spares(c)
    assert len(spare_ids) > 4
    names = set(os.listdir(tmp_path / "live" / "data"))
    e = c.create("doc.txt", dirty=True)
    assert e.id in spare_ids and set(os.listdir(tmp_path / "live" / "data")) == names  # no new file
    data = b"typed text\n" * 50
    _write(c, e, data)
    e.size = len(data)
    _fsync(c, e)
    c.create("later.txt", dirty=True)  # not fsync'ed: a kill -9 keeps it, a power cut may not
    shutil.copytree(tmp_path / "live", tmp_path / "killed", ignore=shutil.ignore_patterns("*-shm"))
    disk.power_cut_image(tmp_path / "live", tmp_path / "image")
    for where, expect in (("killed", ["doc.txt", "later.txt"]), ("image", ["doc.txt"])):
        after = CacheStore(tmp_path / where)
        assert sorted(after.paths) == expect, where
        with after.open_file(after.paths["doc.txt"].id) as f:
            assert f.read() == data
        assert after.lost == [] and after.recovered == []
        # the untaken spares are gone, rows and files
        left = {int(n.split(".")[0]) for n in os.listdir(tmp_path / where / "data")}
        assert left == {x.id for x in after.paths.values()}, where
        after.close()
    c.close()
    assert {int(n.split(".")[0]) for n in os.listdir(tmp_path / "live" / "data")} == {e.id, c.paths["later.txt"].id}


def test_a_delete_whose_files_are_unlinked_later_stays_deleted_across_kill_9(tmp_path: Path) -> None:
    """An unlink in the mount leaves the unlinking of the cache files to a worker thread: a
    kill -9 before it ran leaves files whose journal row says they are unlinked (newer than
    their identity record); the next start drops them, it never recovers the deleted file.
    The row goes once the files are unlinked."""
    c = CacheStore(tmp_path / "live")
    keep = c.create("keep.txt", dirty=True)
    gone = c.create("gone.txt", dirty=True)
    _write(c, gone, b"deleted content")
    gone.size = 15
    c.save(gone)
    c.delete(gone, later=True)
    assert os.path.exists(tmp_path / "live" / "data" / str(gone.id))  # not unlinked yet
    shutil.copytree(tmp_path / "live", tmp_path / "killed", ignore=shutil.ignore_patterns("*-shm"))
    after = CacheStore(tmp_path / "killed")
    assert sorted(after.paths) == ["keep.txt"]
    assert after.lost == [] and after.recovered == []
    assert sorted(os.listdir(tmp_path / "killed" / "data")) == sorted([str(keep.id), f"{keep.id}.id"])
    after.close()
    c.unlink_doomed()
    assert sorted(os.listdir(tmp_path / "live" / "data")) == sorted([str(keep.id), f"{keep.id}.id"])
    assert c.forget_unlinked() == 1
    assert [r[0] for r in c._db.execute("SELECT id FROM files").fetchall()] == [keep.id]
    c.close()


SERVER_BYTES = bytes(range(256)) * 40  # 10 KiB, one block


class _Fetching(DataCache):
    """The mount's data cache fetching a server file: what stands for the server answers
    `read_version` (the remote layer's call: bytes and the version tag) from SERVER_BYTES."""

    class _Ns:
        applied = 0

        @staticmethod
        def server_paths(path: str) -> list[str]:
            return [path]

    def __init__(self, cache: CacheStore) -> None:
        self.cache = cache
        self.ns = self._Ns()
        self.remote = self
        self.readahead = ReadAhead(self)
        self._locks: dict[int, trio.Lock] = {}

    def _lock(self, node: Node) -> trio.Lock:
        return self._locks.setdefault(node.inode, trio.Lock())

    async def read_version(self, rel: str, offset: int, length: int, *, size: int) -> tuple[bytes, Any]:
        return SERVER_BYTES[offset:offset + length], "etag-1"

    async def read_signed(self, uid: str, offset: int, length: int, *, size: int) -> None:
        return None  # no signed read URL: by path


def _fetched(c: CacheStore, how: str) -> Node:
    """A clean cached copy of "cached.bin" with every byte of it in its data file: fetched
    through the mount's data cache, or written and uploaded (the uploader's `mark_clean`)."""
    node = Node(inode=2, path="cached.bin", is_dir=False, mode=0o100644, size=len(SERVER_BYTES),
                remote_fp=("uid-1", len(SERVER_BYTES), 1_700_000_000))
    ops = _Fetching(c)
    if how == "fetched":
        trio.run(ops._ensure_complete, node)
    else:
        node.entry = c.create("cached.bin", dirty=True)
        _write(c, node.entry, SERVER_BYTES)
        node.entry.size = len(SERVER_BYTES)
        c.mark_clean(node.entry, uid="uid-1", size=len(SERVER_BYTES), modified=1_700_000_000, etag="etag-1")
    assert node.entry is not None and node.entry.complete and not node.entry.dirty
    with c.open_file(node.entry.id) as f:
        assert f.read() == SERVER_BYTES
    return node


@pytest.mark.parametrize("how", ["fetched", "uploaded"])
@pytest.mark.parametrize("sizes_kept", [True, False], ids=["holes", "short"])
def test_a_clean_cached_file_is_never_complete_in_the_journal_before_its_bytes_are_on_the_disk(
    tmp_path: Path, disk: Disk, how: str, sizes_kept: bool
) -> None:
    """A power cut after the journal was synced (by any fsync, or the periodic sync) but
    before the cached file's bytes reached the disk leaves a data file of holes (its size was
    set when it was made sparse) or a short one: the next start must fetch it again, never
    take the row's word that it is complete and serve zeros."""
    c = CacheStore(tmp_path / "live")
    _fetched(c, how)
    other = c.create("other.txt", dirty=True)
    _fsync(c, other)  # another file's fsync syncs every commit so far, the row of cached.bin's too
    disk.power_cut_image(tmp_path / "live", tmp_path / "image", sizes_kept=sizes_kept)
    after = CacheStore(tmp_path / "image")
    got = after.paths.get("cached.bin")
    if got is not None:  # kept only as what it is: a complete copy of the server's bytes
        assert got.complete and not got.dirty
        with after.open_file(got.id) as f:
            assert f.read() == SERVER_BYTES
    assert "other.txt" in after.paths
    after.close()
    c.close()


@pytest.mark.parametrize("how", ["fetched", "uploaded"])
def test_a_clean_cached_file_is_complete_across_a_power_cut_after_the_periodic_sync(
    tmp_path: Path, disk: Disk, how: str
) -> None:
    """The mount's periodic sync (sync_journal_every) syncs the data files of what was
    completed since, then the journal: from then on a power cut keeps the cached copy."""
    c = CacheStore(tmp_path / "live")
    _fetched(c, how)
    ops = _Fetching(c)

    async def periodic_sync_once() -> None:
        await ops._sync_completed()
        await ops._sync_journal()

    trio.run(periodic_sync_once)
    disk.power_cut_image(tmp_path / "live", tmp_path / "image", sizes_kept=True)
    after = CacheStore(tmp_path / "image")
    got = after.paths["cached.bin"]
    assert got.complete and not got.dirty and got.base_etag == "etag-1"
    with after.open_file(got.id) as f:
        assert f.read() == SERVER_BYTES
    after.close()
    c.close()


def _change(c: CacheStore, e: CacheEntry, data: bytes) -> None:
    """What a write through the mount does to a dirty file (DataCache._dirty, the pwrite,
    the row at close)."""
    fd = c.open_data(e.id)
    try:
        c.uninline(e, fd)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    e.size = len(data)
    c.save(e)


def test_a_small_file_fsynced_then_changed_keeps_the_newest_bytes_across_kill_9_and_a_power_cut(
    tmp_path: Path, disk: Disk
) -> None:
    """An fsync of a small file syncs only the journal, which holds its bytes; before they
    change again its data file is synced and the journal's copy dropped: a kill -9 keeps the
    newer bytes (never the older copy put back), a power cut at least the fsync'ed ones."""
    c = CacheStore(tmp_path / "live")
    e = c.create("log.txt", dirty=True)
    _write(c, e, b"first, fsync'ed\n")
    e.size = 16
    _fsync(c, e)
    assert e.id in c.inlined and str(tmp_path / "live" / "data" / str(e.id)) not in disk.synced
    _change(c, e, b"second, never fsync'ed\n")
    assert e.id not in c.inlined
    other = c.create("other.txt", dirty=True)
    _fsync(c, other)  # syncs the journal: the copy's removal is on the disk, the data file before it
    shutil.copytree(tmp_path / "live", tmp_path / "killed", ignore=shutil.ignore_patterns("*-shm"))
    disk.power_cut_image(tmp_path / "live", tmp_path / "image")
    for where, expect in (("killed", b"second, never fsync'ed\n"), ("image", b"first, fsync'ed\n")):
        after = CacheStore(tmp_path / where)
        got = after.paths["log.txt"]
        assert got.dirty and got.size == len(expect), where
        with after.open_file(got.id) as f:
            assert f.read() == expect, where
        after.close()
    c.close()


def test_an_uploaded_small_file_is_not_put_back_from_the_journal(tmp_path: Path, disk: Disk) -> None:
    """Once uploaded (clean), the journal's copy of a small file's last fsync is dropped: a
    power cut then brings back no stale dirty copy to upload over the server's."""
    c = CacheStore(tmp_path / "live")
    e = c.create("up.txt", dirty=True)
    _write(c, e, b"uploaded bytes")
    e.size = 14
    _fsync(c, e)
    c.mark_clean(e, uid="uid-1", size=14, modified=1_700_000_000)
    assert e.id not in c.inlined
    other = c.create("other.txt", dirty=True)
    _fsync(c, other)
    disk.power_cut_image(tmp_path / "live", tmp_path / "image")
    after = CacheStore(tmp_path / "image")
    assert "up.txt" not in after.paths  # clean, its data file not synced: fetched again when read
    assert after._db.execute("SELECT count(*) FROM synced_data").fetchone()[0] == 0
    after.close()
    c.close()


# -- a rename over a file (an editor's save) ----------------------------------------------
#
# One journal transaction with the deletion of the file it replaces, whose data file becomes
# a spare (docs/write-back.md): a kill -9 at any point of it leaves the rename done or not
# done, never half; a power cut loses at most the rename, never the replaced file's bytes
# before the rename is on the disk. A kill -9 is simulated as it happens: every byte the cache
# wrote is in the OS, so a copy of the cache dir taken between two of its steps is what the
# next start finds.

OLD = b"the document as saved before\n" * 20
NEW = b"the document as saved now\n" * 30
BASE = {"base_uid": "uid-7", "base_size": len(OLD), "base_modified": 1_700_000_000, "base_etag": "etag-7"}


def _saved(c: CacheStore) -> tuple[CacheEntry, CacheEntry]:
    """doc.txt as an earlier save left it, and its next version fsync'ed in a temp file."""
    doc = c.create("doc.txt", dirty=True)
    _write(c, doc, OLD)
    doc.size = len(OLD)
    _fsync(c, doc)
    tmp = c.create(".doc.txt.swp", dirty=True)
    _write(c, tmp, NEW)
    tmp.size = len(NEW)
    _fsync(c, tmp)
    return doc, tmp


def _content(c: CacheStore, path: str) -> bytes:
    with c.open_file(c.paths[path].id) as f:
        return f.read()


def _state(root: Path) -> str:
    """'old' or 'new': what the next start finds in the cache dir `root` (asserts it is one)."""
    after = CacheStore(root)
    try:
        assert after.lost == [] and after.recovered == [], root
        files = {p: _content(after, p) for p in after.paths}
        if files == {"doc.txt": OLD, ".doc.txt.swp": NEW}:
            assert after.paths[".doc.txt.swp"].base_uid is None
            return "old"
        assert files == {"doc.txt": NEW}, (root, sorted(files))
        e = after.paths["doc.txt"]
        assert e.dirty and e.size == len(NEW)
        assert e.base_uid == BASE["base_uid"] and e.base_etag == BASE["base_etag"]
        # nothing is left of the replaced file's row but a spare's, dropped
        ids = {int(n.split(".")[0]) for n in os.listdir(root / "data")}
        assert ids == {e.id}, root
        return "new"
    finally:
        after.close()


def _arm(monkeypatch: pytest.MonkeyPatch, live: Path, shots: list[Path], out: Path) -> None:
    """From now on, a copy of the cache dir into `shots` before and after every journal
    statement, commit, identity record write and unlink the cache makes."""
    def snap() -> None:
        dst = out / f"step-{len(shots):03d}"
        shutil.copytree(live, dst, ignore=shutil.ignore_patterns("*-shm"))
        shots.append(dst)

    def around(cls: type, name: str) -> None:
        real = getattr(cls, name)

        def step(*a: object, **k: object) -> object:
            snap()
            try:
                return real(*a, **k)
            finally:
                snap()

        monkeypatch.setattr(cls, name, step)

    for name in ("_sql", "_write_identity", "_unlink"):
        around(CacheStore, name)
    around(_Tx, "__exit__")


@pytest.mark.parametrize("recycle", [True, False], ids=["data-file-recycled", "data-file-unlinked"])
def test_a_rename_over_survives_kill_9_at_any_point_as_done_or_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recycle: bool
) -> None:
    steps: list[Path] = []
    live = tmp_path / "live"
    c = CacheStore(live)
    _with_spares(c)
    doc, _ = _saved(c)
    c.sync_journal()
    _arm(monkeypatch, live, steps, tmp_path / "shots")
    c.rename(".doc.txt.swp", "doc.txt", is_dir=False, replaced=doc, recycle=recycle, **BASE)
    c.unlink_doomed()  # the worker thread's part (nothing when the data file is recycled)
    monkeypatch.undo()
    assert sorted(c.paths) == ["doc.txt"] and _content(c, "doc.txt") == NEW
    assert [e.id for e, _ in c._recycled] == ([doc.id] if recycle else [])
    states = [_state(s) for s in steps]
    assert len(steps) > 6
    # not done until the one commit, done from it on: never anything in between
    first_new = states.index("new")
    assert states[:first_new] == ["old"] * first_new and states[first_new:] == ["new"] * (len(states) - first_new)
    assert first_new > 1
    c.close()


def test_the_replaced_file_is_emptied_only_once_the_rename_is_on_the_disk(tmp_path: Path, disk: Disk) -> None:
    """A power cut before the rename was synced brings back the document's fsync'ed version
    (and the new one under its temp name): the replaced file's data file is not reused before
    the journal says it is a spare on the disk. After that, a create takes it, emptied."""
    live = tmp_path / "live"
    c = CacheStore(live)
    _with_spares(c)
    doc, _ = _saved(c)
    c.rename(".doc.txt.swp", "doc.txt", is_dir=False, replaced=doc, recycle=True, **BASE)
    early = c.create("early.txt", dirty=True)
    assert early.id != doc.id  # the rename is not synced yet: the replaced file keeps its bytes
    with open(live / "data" / str(doc.id), "rb") as f:
        assert f.read() == OLD
    disk.power_cut_image(live, tmp_path / "before-sync")
    assert _state(tmp_path / "before-sync") == "old"
    c.sync_journal()  # an fsync of anything, or the periodic sync
    later = c.create("later.txt", dirty=True)
    assert later.id == doc.id and os.path.getsize(live / "data" / str(later.id)) == 0
    _write(c, later, b"later")
    later.size = 5
    _fsync(c, later)
    disk.power_cut_image(live, tmp_path / "after-sync")
    after = CacheStore(tmp_path / "after-sync")
    assert {p: _content(after, p) for p in after.paths} == {"doc.txt": NEW, "early.txt": b"", "later.txt": b"later"}
    assert after.lost == []
    after.close()
    c.close()


def test_pending_metadata_follows_renames_and_goes_with_what_a_rename_replaces(tmp_path: Path) -> None:
    """The pending mode/mtime updates follow a directory's and a file's rename, those of a
    replaced entry go, and a rename with none at or below its paths leaves them alone; the
    journal says the same at the next start."""
    c = CacheStore(tmp_path / "c")
    for path, is_dir in (("d", True), ("d/sub", True), ("other", True), ("x.txt", False)):
        c.save_meta(path, is_dir=is_dir, mode=0o40700 if is_dir else 0o100600, mtime_ns=1)
    y = c.create("y.txt", dirty=True)
    c.rename("d", "e")  # a directory and what is below it
    c.rename("plain.txt", "plain2.txt", is_dir=False)  # nothing pending there: the table is left alone
    x = c.create("x.txt", dirty=True)
    c.rename("y.txt", "x.txt", is_dir=False, replaced=x)  # the replaced file's update goes
    expect = ["e", "e/sub", "other"]
    assert sorted(p for p, *_ in c.pending_meta()) == expect and y.path == "x.txt"
    c.close()
    after = CacheStore(tmp_path / "c")
    assert sorted(p for p, *_ in after.pending_meta()) == expect
    after.close()
