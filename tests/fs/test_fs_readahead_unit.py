"""The read-ahead's chunk buffers and cache-file writes (puterfs/fs/readahead.py), unit level:
a bounded pool, bytes served from memory only while they are the entry's, and the O_DIRECT
write with its fallback to the page cache where the cache disk refuses it."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from puterfs.fs import readahead as ra
from puterfs.fs.cache import BLOCK_SIZE


class _DataDir:
    """The one method of the cache `_store` uses: data/<id> opened by id."""

    def __init__(self, root: Path, refuse_direct: bool = False) -> None:
        self.root = root
        self.refuse_direct = refuse_direct
        self.flags: list[int] = []

    def open_data(self, entry_id: int, flags: int = os.O_RDWR) -> int:
        self.flags.append(flags)
        if self.refuse_direct and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return os.open(self.root / str(entry_id), flags | os.O_CREAT, 0o600)


@pytest.mark.parametrize("refuse", [False, True])
def test_store_writes_the_chunk_with_or_without_o_direct(tmp_path: Path, refuse: bool) -> None:
    cache = _DataDir(tmp_path, refuse_direct=refuse)
    data = os.urandom(2 * BLOCK_SIZE + 1234)  # an unaligned tail, as a file's last chunk
    buf = ra.mmap.mmap(-1, ra.CHUNK_BYTES)
    buf[: len(data)] = data
    (tmp_path / "7").write_bytes(b"\0" * (BLOCK_SIZE + len(data)))
    still_direct = ra._store(cache, 7, memoryview(buf)[: len(data)], BLOCK_SIZE, True)
    assert still_direct is (not refuse)
    assert (tmp_path / "7").read_bytes() == b"\0" * BLOCK_SIZE + data
    assert any(f & os.O_DIRECT for f in cache.flags)
    cache.flags.clear()
    ra._store(cache, 7, memoryview(buf)[: len(data)], BLOCK_SIZE, still_direct)
    assert any(f & os.O_DIRECT for f in cache.flags) is (not refuse)  # refused once: not asked again


def _ent(i: int = 1, etag: str | None = "v1") -> Any:
    return SimpleNamespace(id=i, dirty=False, base_etag=etag)


def test_landed_bytes_are_served_only_while_they_are_the_entrys() -> None:
    r = ra.ReadAhead(SimpleNamespace())
    ent = _ent()
    buf = r._take_buffer()
    assert buf is not None
    buf[:8] = b"abcdefgh"
    r._landed.append(ra._Landed(ent, 4 * BLOCK_SIZE, BLOCK_SIZE, buf, "v1"))
    assert bytes(r.serve(ent, 4 * BLOCK_SIZE + 2, 3)) == b"cde"
    assert r.serve(ent, 5 * BLOCK_SIZE - 1, 2) is None  # not all of it in the chunk
    assert r.serve(_ent(), 4 * BLOCK_SIZE, 3) is None  # another entry (replaced) of the same id
    ent.base_etag = "v2"  # another version of the file
    assert r.serve(ent, 4 * BLOCK_SIZE, 3) is None
    ent.base_etag, ent.dirty = "v1", True  # written locally
    assert r.serve(ent, 4 * BLOCK_SIZE, 3) is None
    ent.dirty = False
    r.drop(ent.id)
    assert r.serve(ent, 4 * BLOCK_SIZE, 3) is None
    assert r._buffers == 0 and r._free == []  # nothing in use: the memory is given back


def test_the_buffers_are_bounded_and_the_oldest_landed_chunk_is_reused() -> None:
    r = ra.ReadAhead(SimpleNamespace())
    taken = [r._take_buffer() for _ in range(ra.MAX_BUFFERS)]
    assert all(b is not None for b in taken)
    assert r._take_buffer() is None  # every buffer in flight
    a, b = _ent(1), _ent(2)
    r._landed += [ra._Landed(a, 0, BLOCK_SIZE, taken[0], "v1"), ra._Landed(b, 0, BLOCK_SIZE, taken[1], "v1")]
    assert r._take_buffer() is taken[0]  # the oldest landed chunk's
    assert r.serve(a, 0, 1) is None and r.serve(b, 0, 1) is not None
    r._passed(b, 3 * BLOCK_SIZE)  # the reader left it behind
    assert r.serve(b, 0, 1) is None and r._free == [taken[1]]


def test_a_chunk_being_written_is_served_and_its_buffer_kept_until_written() -> None:
    r = ra.ReadAhead(SimpleNamespace())
    ent = _ent()
    taken = [r._take_buffer() for _ in range(ra.MAX_BUFFERS)]
    buf = taken[0]
    assert buf is not None
    buf[:3] = b"abc"
    r._landed.append(ra._Landed(ent, 0, BLOCK_SIZE, buf, "v1", storing=True))
    assert bytes(r.serve(ent, 0, 3)) == b"abc"  # the reader does not wait for the disk
    assert r._take_buffer() is None  # not taken for another chunk while it is written
    r._passed(ent, 3 * BLOCK_SIZE)
    r.drop(ent.id)
    assert buf not in r._free and not buf.closed  # nor given back or freed


class _SlowDisk:
    """The cache-file side of a chunk task: data/<id> on disk, each write held until released."""

    def __init__(self, root: Path) -> None:
        import threading

        self.data = _DataDir(root)
        self.entries: dict[int, Any] = {}
        self.release = threading.Event()
        self.writing = threading.Event()

    def open_data(self, entry_id: int, flags: int = os.O_RDWR) -> int:
        self.writing.set()
        assert self.release.wait(30)
        return self.data.open_data(entry_id, flags)

    def save(self, ent: Any) -> None:
        pass

    def mark_complete(self, ent: Any) -> None:
        ent.complete = True
        ent.blocks.clear()


@pytest.mark.trio
@pytest.mark.parametrize("closes", [False, True])
async def test_the_reader_has_a_chunk_while_the_disk_writes_it(tmp_path: Path, closes: bool) -> None:
    """`closes`: the reader has what it wanted from the buffer and closes the file before the
    disk is done: the bytes stay the cache's (a remount serves them without a download)."""
    import contextlib

    import trio

    from puterfs.fs.cache import CacheEntry

    body = os.urandom(2 * BLOCK_SIZE)

    async def read_version_into(where: str, view: Any, begin: int, *, size: int) -> str:
        view[:] = body[begin : begin + len(view)]
        return "v1"

    async def server_bytes_into(node: Any, ent: Any, view: Any, begin: int, size: int) -> str:
        return await read_version_into(node.path, view, begin, size=size)

    disk = _SlowDisk(tmp_path)
    ent = CacheEntry(id=3, path="big.bin", size=len(body))
    disk.entries[ent.id] = ent
    (tmp_path / "3").write_bytes(b"")
    remote = SimpleNamespace(background=contextlib.nullcontext, read_version_into=read_version_into)
    ops = SimpleNamespace(remote=remote, cache=disk, _server_bytes_into=server_bytes_into)
    r = ra.ReadAhead(ops)
    node = SimpleNamespace(path="big.bin", entry=ent, opens=1)
    st = ra._Stream(pos=0)
    buf = r._take_buffer()
    assert buf is not None
    r._inflight[ent.id] = {0: trio.Event(), 1: trio.Event()}
    st.tasks = 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(r._chunk, node, ent, st, 0, 1, buf)
        await trio.to_thread.run_sync(disk.writing.wait, 30)
        # written to the cache file, not done yet: the bytes are served from the buffer
        assert bytes(r.serve(ent, BLOCK_SIZE, 4096)) == body[BLOCK_SIZE : BLOCK_SIZE + 4096]
        assert ent.blocks == set()  # not yet the cache file's
        if closes:
            node.opens = 0
        disk.release.set()
    assert ent.complete and (tmp_path / "3").read_bytes() == body
    assert bytes(r.serve(ent, 0, 16)) == body[:16]  # landed: still served until the reader passes


def test_a_readers_own_fetch_keeps_its_blocks_from_the_read_ahead() -> None:
    """`claim`: the blocks a reader's request fetches are busy meanwhile (the read-ahead's
    window skips them instead of fetching them twice); a block the read-ahead had already
    is left to it; all is free again after."""
    import trio

    r = ra.ReadAhead(SimpleNamespace())
    ent = _ent()
    theirs = trio.Event()
    r._inflight[ent.id] = {3: theirs}
    with r.claim(ent, 1, 3):
        assert [r.busy(ent, b) for b in range(5)] == [False, True, True, True, False]
        assert r._inflight[ent.id][3] is theirs
    assert r._inflight[ent.id] == {3: theirs} and not theirs.is_set()
    with r.claim(ent, 7, 7):
        pass
    r._inflight[ent.id].pop(3)
    with r.claim(ent, 0, 0):
        pass
    assert ent.id not in r._inflight
