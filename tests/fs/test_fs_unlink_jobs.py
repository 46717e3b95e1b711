"""Per-syscall bookkeeping of the data cache kept off the FUSE path (puterfs/fs/data.py):
unlinking the cache files of deleted files (`_unlink_doomed`) is one worker job for a burst of
unlinks (an rm -rf), not a thread hand-off per unlink, and every file is unlinked in the end,
also those deleted while the job runs; counting the cache's bytes (`_maybe_evict`, at every
close) is not a walk of every cached file at each close while the cache is far under its size.
On a real PuterOperations and cache journal; the mount-level unlink and --cache-size are tested
through real mounts in tests/mount."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import trio

from puterfs.fs.cache import CacheStore
from puterfs.fs.operations import PuterOperations
from puterfs.fs.remote import Remote, RemoteEntry

ROOT = "/alice"


def _entry(name: str) -> RemoteEntry:
    return RemoteEntry.from_json({"uid": f"u-{name}", "id": f"u-{name}", "path": f"{ROOT}/{name}", "name": name,
                                  "is_dir": False, "size": 3, "modified": 100, "created": 50, "metadata": None})


def test_a_burst_of_unlinks_is_one_unlinking_job_and_unlinks_every_file(tmp_path: Path) -> None:
    cache = CacheStore(tmp_path / "cache")
    ops = PuterOperations(Remote(None, ROOT), cache)
    names = [f"f{i}" for i in range(12)]
    root = ops.table.root
    data = tmp_path / "cache" / "data"
    ids: list[int] = []

    go = threading.Event()
    real = cache.unlink_doomed
    jobs = []

    def unlink_doomed() -> None:  # the worker job: held until the burst is over
        jobs.append(1)
        go.wait(30)
        real()

    cache.unlink_doomed = unlink_doomed  # type: ignore[method-assign]
    spawned: list[Any] = []

    statvfs = []
    real_statvfs = os.statvfs

    def counting_statvfs(path: Any) -> Any:
        statvfs.append(path)
        return real_statvfs(path)

    async def main() -> None:
        ops._apply_listing(root, [_entry(n) for n in names], ops.table.next_seq())
        root.listed_epoch, root.listed_at = ops.epoch, trio.current_time()  # listed just now
        for n in names:  # a cached copy of each (a data file and an identity record)
            node = root.children[n]
            node.entry = cache.create_for_remote(n, size=3, uid=f"u-{n}", modified=100, mode=node.mode)
            ids.append(node.entry.id)
        assert all((data / str(i)).exists() for i in ids)
        async with trio.open_nursery() as nursery:

            def spawn(fn: Any, *args: Any) -> None:
                spawned.append(fn)
                nursery.start_soon(fn, *args)

            ops.spawn = spawn
            os.statvfs = counting_statvfs
            try:
                for n in names:
                    await ops.unlink(root.inode, n.encode(), None)
                    await trio.sleep(0.01)  # the job is running (held) while the next unlinks come
                assert not any(n in root.children for n in names)
                assert len(spawned) == 1 and jobs == [1]  # one job for the burst
                assert len(statvfs) < len(names)  # the disk's free space is not asked per unlink
            finally:
                os.statvfs = real_statvfs
                go.set()
            with trio.fail_after(30):
                while cache.doomed() or any((data / str(i)).exists() or (data / f"{i}.id").exists() for i in ids):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [op.path for op in ops.ns.ops] == names  # each unlink journaled for the server
    cache.close()


def test_closes_count_the_cache_bytes_only_when_eviction_may_be_due(tmp_path: Path) -> None:
    """Counting the cache's bytes walks every cached file: a close counts them only when the
    last count plus every file closed since could exceed half of --cache-size (or the count is
    EVICT_RECOUNT old), so the bound holds as if each close counted."""
    from puterfs.fs import data

    cache = CacheStore(tmp_path / "cache")
    held = cache.create("held.bin", dirty=False)
    held.size, held.complete = 3000, True
    small = cache.create("small.txt", dirty=False)
    small.size, small.complete = 500, True
    ops = PuterOperations(Remote(None, ROOT), cache, cache_size=10_000)
    counts = []
    real = cache.used_bytes
    cache.used_bytes = lambda: counts.append(1) or real()  # type: ignore[method-assign]
    for _ in range(4):
        ops._maybe_evict(small)
    assert len(counts) == 1  # counted 3,500 at the first close; 3,500 + 3 x 500 <= 5,000 after
    ops._maybe_evict(small)
    assert len(counts) == 2  # the bound passed half the size: counted (3,500, nothing to evict)
    ops._counted_at -= data.EVICT_RECOUNT
    ops._maybe_evict(None)
    assert len(counts) == 3  # an old count is made again
    big = cache.create("big.bin", dirty=False)
    big.size, big.complete = 7000, True
    ops._maybe_evict(big)  # a large file closed: counted at once, and the cache is trimmed
    assert len(counts) > 3 and real() <= 10_000 and "held.bin" not in cache.paths
    cache.close()


class _NoWalk(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise AssertionError("walked every path")


def test_a_file_rename_re_points_one_entry_without_walking_every_path(tmp_path: Path) -> None:
    """A rename in the mount re-points the cache entries and the inode table's nodes at the
    old path and below it: for a file there is nothing below, so no walk of every cached path
    and known node (the mixed workload's renames with 1,600 cached files: 40% of a rename)."""
    from puterfs.fs.inodes import InodeTable

    cache = CacheStore(tmp_path / "cache")
    for i in range(5):
        cache.create(f"d/f{i}")
    a = cache.create("a.txt")
    cache.paths = _NoWalk(cache.paths)
    cache.rename("a.txt", "b.txt", is_dir=False)
    assert cache.paths["b.txt"] is a and a.path == "b.txt" and "a.txt" not in cache.paths
    cache.paths = dict(cache.paths)
    cache.rename("d", "e")  # a directory: everything below it moves
    assert sorted(p for p in cache.paths if p.startswith("e/")) == [f"e/f{i}" for i in range(5)]
    cache.close()

    table = InodeTable()
    d = table.new("d", is_dir=True)
    kids = [table.new(f"d/f{i}", is_dir=False) for i in range(3)]
    f = table.new("a.txt", is_dir=False)
    table.by_path = _NoWalk(table.by_path)
    table.rename(f, "b.txt")
    assert table.by_path["b.txt"] is f and f.path == "b.txt" and "a.txt" not in table.by_path
    table.by_path = dict(table.by_path)
    table.rename(d, "e")
    assert [k.path for k in kids] == [f"e/f{i}" for i in range(3)] and table.by_path["e"] is d


def _cached_listing(ops: PuterOperations, cache: CacheStore, names: list[str]) -> dict[str, int]:
    """`names` listed from the server in the root, each with a cached copy; name -> entry id."""
    root = ops.table.root
    ops._apply_listing(root, [_entry(n) for n in names], ops.table.next_seq())
    root.listed_epoch, root.listed_at = ops.epoch, trio.current_time()
    ids = {}
    for n in names:
        node = root.children[n]
        node.entry = cache.create_for_remote(n, size=3, uid=f"u-{n}", modified=100, mode=node.mode)
        ids[n] = node.entry.id
    return ids


def _count_commits(cache: CacheStore) -> list[int]:
    """Counts the journal's commits from now on (one per transaction, one per statement
    that changes something outside a transaction), in a one-item list."""
    commits = [0]
    in_tx = [False]

    def trace(sql: str) -> None:
        word = sql.split(None, 1)[0].upper()
        if word == "BEGIN":
            in_tx[0] = True
        elif word in ("COMMIT", "ROLLBACK"):
            commits[0] += word == "COMMIT"
            in_tx[0] = False
        elif word in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not in_tx[0]:
            commits[0] += 1

    cache._db.set_trace_callback(trace)
    return commits


def test_an_unlink_is_one_commit_with_its_server_delete_and_survives_kill_9_before_its_files_go(
    tmp_path: Path,
) -> None:
    """An unlink of a file the server holds journals the server's delete and the end of its
    cache row in one commit (not two); a kill -9 right after the unlinks returned, before
    the worker unlinked their cache files, leaves the deletes to apply at the next start
    and the files' data dropped, never recovered."""
    from puterfs.fs.nsjournal import NamespaceJournal

    cache = CacheStore(tmp_path / "cache")
    ops = PuterOperations(Remote(None, ROOT), cache)
    names = [f"f{i}" for i in range(6)]
    data = tmp_path / "cache" / "data"
    go = threading.Event()
    real = cache.unlink_doomed
    cache.unlink_doomed = lambda: go.wait(30) and real()  # type: ignore[method-assign]

    async def main() -> None:
        ids = _cached_listing(ops, cache, names)
        cache.create("kept", dirty=True)  # a file not uploaded yet: it stays
        async with trio.open_nursery() as nursery:
            ops.spawn = nursery.start_soon
            commits = _count_commits(cache)
            for n in names:
                before = commits[0]
                await ops.unlink(ops.table.root.inode, n.encode(), None)
                assert commits[0] - before == 1, n
            cache._db.set_trace_callback(None)
            assert all((data / str(ids[n])).exists() for n in names)  # not unlinked yet
            # kill -9 now: the disk as it is (the -shm is rebuilt from the -wal)
            shutil.copytree(tmp_path / "cache", tmp_path / "killed", ignore=shutil.ignore_patterns("*-shm"))
            go.set()
            with trio.fail_after(30):
                while cache.doomed() or any((data / str(ids[n])).exists() for n in names):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    after = CacheStore(tmp_path / "killed")
    assert sorted(after.paths) == ["kept"] and after.lost == [] and after.recovered == []
    assert sorted(os.listdir(tmp_path / "killed" / "data")) == sorted(
        [str(after.paths["kept"].id), f"{after.paths['kept'].id}.id"])  # fmt: skip
    assert [op.describe() for op in NamespaceJournal(after).ops] == [f"delete {n}" for n in names]
    after.close()
    # and the live cache forgot the unlinked rows once their files were gone
    assert cache._db.execute("SELECT count(*) FROM files WHERE path LIKE ?", ("\x00unlinked/%",)).fetchone()[0] == 0
    cache.close()


def test_an_unlink_the_journal_cannot_commit_fails_and_changes_nothing(tmp_path: Path) -> None:
    """A full cache disk refuses the unlink's commit: ENOSPC, and the file is still there, in
    the tree, in the cache (its row live, its data file kept) and not in the namespace
    journal; once the disk has room the unlink goes through."""
    import errno

    import pyfuse3

    from puterfs.fs.cache import _Tx

    cache = CacheStore(tmp_path / "cache")
    ops = PuterOperations(Remote(None, ROOT), cache)

    class FullDiskTx(_Tx):
        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self._rollback()  # as SQLite does when the disk refuses the commit
                raise OSError(errno.ENOSPC, "the cache disk is full")
            super().__exit__(exc_type, exc, tb)

    async def main() -> None:
        ids = _cached_listing(ops, cache, ["f"])
        root = ops.table.root
        node = root.children["f"]
        async with trio.open_nursery() as nursery:
            ops.spawn = nursery.start_soon
            cache._transaction = lambda: FullDiskTx(cache._db, cache.root / "journal.sqlite3")  # type: ignore[method-assign]
            try:
                await ops.unlink(root.inode, b"f", None)
            except pyfuse3.FUSEError as exc:
                assert exc.errno == errno.ENOSPC
            else:
                raise AssertionError("the unlink succeeded on a full disk")
            assert root.children.get("f") is node and node.in_tree
            assert cache.entries.get(ids["f"]) is node.entry and cache.paths["f"] is node.entry
            assert ops.ns.ops == [] and not cache.doomed()
            row = cache._db.execute("SELECT path FROM files WHERE id = ?", (ids["f"],)).fetchone()
            assert row == ("f",)
            assert (tmp_path / "cache" / "data" / str(ids["f"])).exists()
            del cache._transaction  # room again
            await ops.unlink(root.inode, b"f", None)
            assert "f" not in root.children and [op.describe() for op in ops.ns.ops] == ["delete f"]
            nursery.cancel_scope.cancel()

    trio.run(main)
    cache.close()
