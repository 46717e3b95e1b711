"""The cache journal damaged in every way, and a cache dir other users tamper with.

Nothing not known to be on the server is ever deleted: files the journal lost are recovered
from their identity records (data/<id>.id), anything else is kept in lost+found/ and reported.
The damaged journals are made the way they happen: a crash (no close) and then the ``-wal``
gone or cut in half, rows deleted, the database overwritten.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from puterfs.fs.cache import CacheDirError, CacheStore, check_cache_dir, make_private_dirs

NOBODY = 65534


def _dirty_files(root: Path, n: int, *, prefix: str = "f") -> dict[str, bytes]:
    """n dirty files in a cache that then 'crashes' (the store is never closed)."""
    c = CacheStore(root)
    out = {}
    for i in range(n):
        path = f"dir/{prefix}{i}.txt"
        e = c.create(path)
        c.mark_dirty(e)
        data = f"content of {path}\n".encode() * (i + 1)
        fd = c.open_data(e.id)
        os.pwrite(fd, data, 0)
        os.close(fd)
        e.size = len(data)
        c.save(e)
        out[path] = data
    return out


def _crash_copy(src: Path, dst: Path, *, wal: str = "keep") -> None:
    """What the disk holds after a crash, with the -wal kept, gone or cut in half."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("journal.sqlite3-wal", "journal.sqlite3-shm"))
    walfile = src / "journal.sqlite3-wal"
    if wal == "keep":
        shutil.copy(walfile, dst / walfile.name)
    elif wal == "half":
        data = walfile.read_bytes()
        (dst / walfile.name).write_bytes(data[: len(data) // 2])
    os.chmod(dst, 0o700)


def _rows(root: Path) -> int:
    db = sqlite3.connect(f"file:{root / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM files").fetchone()[0])
    except sqlite3.DatabaseError:
        return 0  # not even the table survived
    finally:
        db.close()


def _contents(c: CacheStore) -> dict[str, bytes]:
    out = {}
    for e in c.dirty_entries():
        with c.open_file(e.id) as f:
            out[e.path] = f.read()
    return out


@pytest.mark.parametrize("wal", ["gone", "half"])
def test_lost_wal_loses_no_dirty_file(tmp_path: Path, wal: str) -> None:
    src = tmp_path / "live"
    expected = _dirty_files(src, 20)
    wal_size = (src / "journal.sqlite3-wal").stat().st_size
    assert wal_size > 0  # the rows are only in the -wal: losing it loses them
    dst = tmp_path / "after"
    _crash_copy(src, dst, wal=wal)
    rows = _rows(dst)
    c = CacheStore(dst)
    got = _contents(c)
    print(f"wal {wal}: {len(expected)} dirty files, rows left in the journal: {rows}, recovered {len(c.recovered)}, "
          f"bytes compared {sum(map(len, got.values()))}, files lost {len(set(expected) - set(got))}")
    assert got == expected
    assert c.lost == []
    c.close()
    # the repaired journal is complete again: a second start needs no recovery
    c2 = CacheStore(dst)
    assert _contents(c2) == expected and c2.recovered == []


def test_journal_rows_missing_or_reverted(tmp_path: Path) -> None:
    src = tmp_path / "live"
    expected = _dirty_files(src, 6)
    c = CacheStore(src)
    c.close()
    db = sqlite3.connect(src / "journal.sqlite3")
    db.execute("DELETE FROM files WHERE path LIKE '%f1.txt' OR path LIKE '%f2.txt'")
    db.execute("UPDATE files SET dirty = 0, gen = 0 WHERE path LIKE '%f3.txt'")  # an older state of the row
    db.commit()
    db.close()
    c = CacheStore(src)
    assert _contents(c) == expected
    assert sorted(c.recovered) == ["dir/f1.txt", "dir/f2.txt"]


def test_unreadable_journal_is_kept_aside_and_rebuilt(tmp_path: Path) -> None:
    src = tmp_path / "live"
    expected = _dirty_files(src, 5)
    dst = tmp_path / "after"
    _crash_copy(src, dst, wal="gone")
    (dst / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    c = CacheStore(dst)
    assert _contents(c) == expected
    assert list(dst.glob("journal.sqlite3.damaged-*"))


def test_data_without_row_or_identity_goes_to_lost_found(tmp_path: Path) -> None:
    src = tmp_path / "live"
    expected = _dirty_files(src, 3)
    c = CacheStore(src)
    victim = c.paths["dir/f0.txt"]
    c.close()
    os.unlink(src / "data" / f"{victim.id}.id")
    db = sqlite3.connect(src / "journal.sqlite3")
    db.execute("DELETE FROM files WHERE id = ?", (victim.id,))
    db.commit()
    db.close()
    c = CacheStore(src)
    assert "dir/f0.txt" not in c.paths
    assert len(c.lost) == 1
    kept = Path(c.lost[0]["file"])
    assert kept.parent == src / "lost+found" and kept.read_bytes() == expected["dir/f0.txt"]
    assert _contents(c) == {k: v for k, v in expected.items() if k != "dir/f0.txt"}
    # a new file never reuses the id of the one kept aside
    assert c.create("new.txt").id > victim.id


def test_journal_of_a_clean_file_made_dirty_is_repaired(tmp_path: Path) -> None:
    """The journal lost the clean -> dirty step (an edit of an uploaded file): the identity
    record, written before the journal, still says dirty."""
    src = tmp_path / "live"
    c = CacheStore(src)
    e = c.create_for_remote("up.txt", size=0, uid="u1", modified=1, mode=0o100644)
    c.mark_clean(e, uid="u1", size=0, modified=1)
    c._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the clean state is in the main file
    c.mark_dirty(e)
    fd = c.open_data(e.id)
    os.pwrite(fd, b"edited", 0)
    os.close(fd)
    dst = tmp_path / "after"
    _crash_copy(src, dst, wal="gone")
    c2 = CacheStore(dst)
    assert [x.path for x in c2.dirty_entries()] == ["up.txt"]
    assert c2.dirty_entries()[0].size == 6


def test_clean_files_are_the_only_ones_dropped(tmp_path: Path) -> None:
    c = CacheStore(tmp_path / "c")
    clean = c.create_for_remote("clean.bin", size=10, uid="u", modified=1, mode=0o100644)  # partial
    c.close()
    c = CacheStore(tmp_path / "c")
    assert clean.id not in c.entries and c.lost == []  # its data is on the server


def test_planted_rows_and_symlinks_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o600)
    c = CacheStore(root)
    c.close()
    data = root / "data"
    os.symlink(secret, data / "77")  # a data file that is a link to someone else's file
    (data / "78").write_bytes(b"planted")
    db = sqlite3.connect(root / "journal.sqlite3")
    db.execute("INSERT INTO files (id, path, dirty, complete) VALUES (77, 'stolen.txt', 1, 1)")
    db.execute("INSERT INTO files (id, path, dirty, complete) VALUES (78, '../Public/x.txt', 1, 1)")
    db.commit()
    db.close()
    c = CacheStore(root)
    assert c.dirty_entries() == []
    reasons = sorted(x["reason"] for x in c.lost)
    assert any("symlink" in r for r in reasons) and any("leave the mount" in r for r in reasons)
    assert secret.read_bytes() == b"root only"  # never followed, never touched
    # and a symlink planted under a live id is never opened
    e = c.create("a.txt")
    os.unlink(data / str(e.id))
    os.symlink(secret, data / str(e.id))
    with pytest.raises(OSError) as exc:
        c.open_data(e.id)
    assert exc.value.errno == errno.ELOOP


def _as_nobody(fn) -> None:  # type: ignore[no-untyped-def]
    """Run fn() in a child process as another local user (uid 65534)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second local user")


@pytest.fixture
def shared():  # type: ignore[no-untyped-def]
    """A directory every local user can create entries in (sticky, like /tmp)."""
    d = Path(tempfile.mkdtemp(prefix="puterfs-shared-", dir="/tmp"))
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_cache_dir_another_user_created_first_is_refused(tmp_path: Path, shared: Path) -> None:
    target = shared / "victim-cache"

    def plant() -> None:
        os.mkdir(target, 0o777)
        os.chmod(target, 0o777)
        os.mkdir(target / "data", 0o777)
        os.symlink("/etc/shadow", target / "data" / "1")

    _as_nobody(plant)
    with pytest.raises(CacheDirError, match="belongs to uid 65534"):
        CacheStore(target)
    with pytest.raises(CacheDirError):
        check_cache_dir(target)
    # a symlink planted where the cache dir will be
    link = shared / "victim2"
    _as_nobody(lambda: os.symlink(str(tmp_path), str(link)))
    with pytest.raises(CacheDirError, match="symlink"):
        CacheStore(link)


def test_cache_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(CacheDirError, match="writable by other users"):
        CacheStore(d)
    # a parent anyone may write to (not sticky) lets others swap the cache dir
    os.chmod(d, 0o700)
    os.chmod(tmp_path, 0o777)
    try:
        with pytest.raises(CacheDirError, match="parent"):
            CacheStore(d / "inner")
    finally:
        os.chmod(tmp_path, 0o700)


@needs_root
def test_planted_journal_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    CacheStore(root).close()
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(root / f"journal.sqlite3{suffix}")
        except FileNotFoundError:
            pass
    os.unlink(root / "journal.sqlite3")
    os.symlink(tmp_path / "elsewhere.db", root / "journal.sqlite3")
    with pytest.raises(CacheDirError, match="journal.sqlite3"):
        CacheStore(root)
    os.unlink(root / "journal.sqlite3")
    os.symlink("/etc/passwd", root / "puterfs.log")
    with pytest.raises(CacheDirError, match="puterfs.log"):
        check_cache_dir(root)


def test_parents_are_created_0700_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        target = tmp_path / "a" / "b" / "cache"
        CacheStore(target).close()
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", target, target / "data"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    for f in (target / "journal.sqlite3",):
        assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f
    make_private_dirs(target)  # idempotent


# ------------------------------------------------------------------ a full cache disk (tmpfs)


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 1 MiB tmpfs."""
    return tmpfs("1m")


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk_journal_failure_leaves_memory_clean(small_disk: Path) -> None:
    c = CacheStore(small_disk / "cache")
    up = c.create_for_remote("up.txt", size=0, uid="u1", modified=1, mode=0o100644)
    c.mark_clean(up, uid="u1", size=0, modified=1)
    _fill(small_disk)
    # many transitions: sooner or later the journal needs a new page on the full disk
    entries = [up]
    made = 0
    with pytest.raises(OSError) as exc:
        for i in range(2000):
            e = c.create(f"n{i}.txt")
            entries.append(e)
            made += 1
            c.mark_dirty(e)
    assert exc.value.errno == errno.ENOSPC, exc.value
    # whatever failed left memory consistent with the journal
    c.close()
    c2 = CacheStore(small_disk / "cache")
    assert {e.path for e in c2.dirty_entries()} <= {e.path for e in entries}
    for e in c2.dirty_entries():
        assert c2.paths[e.path].dirty
    print(f"full disk: {made} creates before ENOSPC")


def test_full_disk_delete_frees_space(small_disk: Path) -> None:
    c = CacheStore(small_disk / "cache")
    e = c.create("big.bin")
    c.mark_dirty(e)
    fd = c.open_data(e.id)
    try:
        with pytest.raises(OSError) as exc:
            for off in range(0, 4 << 20, 65536):
                os.pwrite(fd, b"x" * 65536, off)
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    c.delete(e)  # must work on the full disk, and free the space
    assert e.id not in c.entries
    again = c.create("after.txt")
    c.mark_dirty(again)
    c.close()
    assert [x.path for x in CacheStore(small_disk / "cache").dirty_entries()] == ["after.txt"]
