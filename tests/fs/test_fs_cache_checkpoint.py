"""The cache journal's checkpoints (puterfs/fs/cache.py `checkpoint`) run on a worker thread
through a connection of their own, not inside a commit on the FUSE thread (where SQLite's
automatic checkpoint syncs the -wal and the database file every 1,000 pages: a burst of
unlinks waited for it every few hundred unlinks). Commits made while one runs are kept, also
across a kill -9."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from puterfs.fs.cache import AUTO_CHECKPOINT_PAGES, CHECKPOINT_CHANGES, JOURNAL, CacheStore


def _rows_in_database_file(cache_dir: Path) -> int:
    """The files rows the database file itself holds (what checkpoints copied), without its -wal."""
    copy = cache_dir.parent / "db-only.sqlite3"
    copy.write_bytes((cache_dir / JOURNAL).read_bytes())
    db = sqlite3.connect(copy)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'files'").fetchone() is None:
            return 0  # every table is still in the -wal only
        return int(db.execute("SELECT count(*) FROM files").fetchone()[0])
    finally:
        db.close()
        copy.unlink()


def test_commits_leave_checkpoints_to_the_worker_and_it_copies_the_wal(tmp_path: Path) -> None:
    cache = CacheStore(tmp_path / "cache")
    # the committing connection checkpoints only far past SQLite's default (a fallback)
    assert cache._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTO_CHECKPOINT_PAGES
    before = _rows_in_database_file(tmp_path / "cache")
    assert cache.checkpoint_due() is None
    for i in range(CHECKPOINT_CHANGES):
        cache.create(f"f{i}.txt", dirty=True)
    mark = cache.checkpoint_due()
    assert mark is not None
    assert _rows_in_database_file(tmp_path / "cache") == before  # not copied by the commits
    t = threading.Thread(target=cache.checkpoint, args=(mark,))
    t.start()
    t.join(30)
    assert _rows_in_database_file(tmp_path / "cache") >= before + CHECKPOINT_CHANGES
    assert cache.checkpoint_due() is None  # until as many rows changed again
    cache.close()


def test_commits_during_a_checkpoint_survive_kill_9(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    child = textwrap.dedent(f"""
        import os, threading
        from puterfs.fs.cache import CacheStore
        cache = CacheStore({str(root)!r})
        stop = threading.Event()
        def worker():
            while not stop.is_set():
                cache.checkpoint(cache._db.total_changes)
        t = threading.Thread(target=worker)
        for i in range(300):
            if i == 20:
                t.start()
            e = cache.create(f"d/f{{i}}.txt", dirty=True)
            fd = cache.open_data(e.id)
            os.write(fd, b"x%d" % i)
            os.close(fd)
            if i % 3 == 0:
                cache.delete(e, later=True)  # and deletes, whose row goes in the same journal
        stop.set()
        t.join()
        os._exit(0)  # as a kill -9: no close, no final checkpoint
    """)
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    cache = CacheStore(root)
    want = {f"d/f{i}.txt" for i in range(300) if i % 3}
    assert set(cache.paths) == want
    assert all(cache.paths[p].dirty for p in want)
    assert not cache.lost and not cache.recovered
    for p in want:
        with cache.open_file(cache.paths[p].id) as f:
            assert f.read() == b"x" + p.removeprefix("d/f").removesuffix(".txt").encode()
    # the deleted ones' files, left by the kill before their unlinking, went at the start
    assert sorted(os.listdir(root / "data")) == sorted(
        n for e in cache.entries.values() for n in (str(e.id), f"{e.id}.id")
    )
    cache.close()
