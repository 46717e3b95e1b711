"""Per-syscall bookkeeping of the data cache kept off the FUSE path (puterfs/fs/data.py):
unlinking the cache files of deleted files (`_unlink_doomed`) is one worker job for a burst of
unlinks (an rm -rf), not a thread hand-off per unlink, and every file is unlinked in the end,
also those deleted while the job runs; counting the cache's bytes (`_maybe_evict`, at every
close) is not a walk of every cached file at each close while the cache is far under its size.
On a real PuterOperations and cache journal; the mount-level unlink and --cache-size are tested
through real mounts in tests/mount."""

from __future__ import annotations

import os
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
