"""Read-ahead for sequential readers: several ranged requests in flight ahead of the reader.

A reader whose reads follow each other (the kernel's reads of one file, offsets within half a
block of where the last one ended) is a *stream*. Once a stream is confirmed (two reads in a
row), the blocks ahead of it, up to its *window*, are fetched in the background in chunks of
up to ``CHUNK_MAX`` blocks, at most ``PARALLEL`` ranged requests per file at once; the window
starts at ``WINDOW_START`` blocks and doubles each time the reader enters a new block, up to
``WINDOW_MAX``. So a cold sequential read of a large file costs about ``size / 4 MiB`` ``/read``
requests (64 for 256 MiB, within the free tier's 300 a minute and 5 in flight) and the reader
rarely waits for the network, while random readers (no stream) fetch only what they read.
Background requests are paced at background priority (docs/client.md): a reader's own fetch,
of this file or another, goes first when both wait for the account's read budget.

A read that needs a block a background request is fetching waits for it (``settle``) instead
of asking again. A background chunk is only a hint: it is stored only if the file is still the
same clean, incomplete, open cache entry at the same size and the server's version (ETag) is the
one the cached blocks come from; otherwise (or on any error) it is dropped and the reader's own
fetch does the work and reports what went wrong. See docs/performance.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from puterfs.fs.cache import BLOCK_SIZE

log = logging.getLogger(__name__)

CHUNK_MAX = 4  # blocks per background ranged request (4 MiB)
WINDOW_START = 4  # blocks kept ahead of a stream once confirmed
WINDOW_MAX = 16  # at most this many blocks ahead of the reader (16 MiB)
PARALLEL = 4  # background ranged requests in flight per file
NEAR = BLOCK_SIZE // 2  # a read within this distance of the last one's end continues its stream
MAX_STREAMS = 64


@dataclass(eq=False)
class _Stream:
    pos: int  # the furthest byte a read of this stream reached
    hits: int = 0  # reads in a row that continued the stream
    window: int = WINDOW_START
    tasks: int = 0  # background requests in flight


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


class ReadAhead:
    def __init__(self, ops: Any) -> None:
        self.ops = ops  # PuterOperations: remote, cache, _pwrite, spawn
        self._inflight: dict[int, dict[int, trio.Event]] = {}  # entry id -> block -> landed
        self._streams: dict[int, _Stream] = {}  # entry id -> its sequential reader

    def busy(self, ent: Any, block: int) -> bool:
        """Whether a background request is fetching `block` of `ent`."""
        blocks = self._inflight.get(ent.id)
        return blocks is not None and block in blocks

    async def settle(self, ent: Any, off: int, size: int) -> None:
        """Wait until no background request is fetching a block of [off, off+size)."""
        first, last = off // BLOCK_SIZE, (off + max(size, 1) - 1) // BLOCK_SIZE
        while (blocks := self._inflight.get(ent.id)) is not None:
            pending = [ev for b, ev in blocks.items() if first <= b <= last]
            if not pending:
                return
            await pending[0].wait()

    def advance(self, node: Any, ent: Any, off: int, n: int) -> None:
        """A read of `n` bytes at `off` was served: follow its stream, keep the window full."""
        spawn: Callable[..., Any] | None = getattr(self.ops, "spawn", None)
        if spawn is None or n <= 0:
            return
        if ent.complete or ent.dirty:
            self._streams.pop(ent.id, None)
            return
        end = off + n
        st = self._streams.get(ent.id)
        if st is None or not st.pos - NEAR <= off <= st.pos + NEAR:
            if len(self._streams) >= MAX_STREAMS:
                for key in [k for k, s in self._streams.items() if s.tasks == 0]:
                    del self._streams[key]
            self._streams[ent.id] = _Stream(pos=end)
            return
        st.hits += 1
        if end // BLOCK_SIZE > st.pos // BLOCK_SIZE:
            st.window = min(st.window * 2, WINDOW_MAX)  # entered a new block: reach further
        st.pos = max(st.pos, end)
        if st.hits >= 2:
            self._fill(spawn, node, ent, st)

    def _fill(self, spawn: Callable[..., Any], node: Any, ent: Any, st: _Stream) -> None:
        if ent.complete or ent.dirty or ent.size <= 0:
            return
        last_block = (ent.size - 1) // BLOCK_SIZE
        start = st.pos // BLOCK_SIZE
        end = min(start + st.window, last_block)
        chunk = max(1, min(CHUNK_MAX, st.window // PARALLEL))
        b = start
        while st.tasks < PARALLEL and b <= end:
            if b in ent.blocks or self.busy(ent, b):
                b += 1
                continue
            e = b
            while e + 1 <= end and e + 1 - b < chunk and (e + 1) not in ent.blocks and not self.busy(ent, e + 1):
                e += 1
            if e + 1 - b < chunk and e < last_block and not (e + 1 in ent.blocks or self.busy(ent, e + 1)):
                break  # whole chunks only (fewer, larger requests): the window moves on first
            blocks = self._inflight.setdefault(ent.id, {})
            for i in range(b, e + 1):
                blocks[i] = trio.Event()
            st.tasks += 1
            spawn(self._chunk, node, ent, st, b, e)
            b = e + 1

    def _still_wanted(self, node: Any, ent: Any, size: int, etag: str | None) -> bool:
        """Whether bytes of version `etag` fetched for `ent` at `size` may still be stored."""
        if (
            node.entry is not ent or ent.dirty or ent.complete or ent.size != size or node.opens == 0
            or ent.id not in self.ops.cache.entries
        ):
            return False
        # another version than the cached blocks': the reader's own fetch sees to it
        return etag is None or ent.base_etag is None and not ent.blocks or etag == ent.base_etag

    async def _chunk(self, node: Any, ent: Any, st: _Stream, first: int, last: int) -> None:
        ops = self.ops
        size = ent.size
        stored = False
        try:
            begin = first * BLOCK_SIZE
            length = min((last + 1) * BLOCK_SIZE, size) - begin
            with ops.remote.background():  # a reader's own fetch goes first when both wait for the budget
                data, etag = await ops.remote.read_version(node.path, begin, length, size=size)
            if not self._still_wanted(node, ent, size, etag) or len(data) != length:
                return  # the file changed, was written or closed meanwhile: not ours to store
            # the copy into the cache file in a worker thread (a large pwrite would hold up every
            # handler), through a descriptor of our own (the file's may be closed meanwhile)
            fd = os.dup(ops._fd(node))
            try:
                await trio.to_thread.run_sync(_pwrite_all, fd, data, begin)
            finally:
                os.close(fd)
            if not self._still_wanted(node, ent, size, etag):
                return  # unmarked bytes are never served: a read fetches its blocks first
            if etag is not None and ent.base_etag is None:
                ent.base_etag = etag  # the first blocks: the version they all must share
                ops.cache.save(ent)
            ent.blocks.update(range(first, last + 1))
            stored = True
            if ent.missing_blocks(0, ent.size) == []:
                ent.complete = True
                ent.blocks.clear()
                ops.cache.save(ent)
        except Exception as exc:  # noqa: BLE001 - a hint only; the reader's own fetch reports errors
            log.debug("read-ahead of %s blocks %d-%d dropped: %s", node.path, first, last, exc)
        finally:
            st.tasks -= 1
            blocks = self._inflight.get(ent.id, {})
            for i in range(first, last + 1):
                ev = blocks.pop(i, None)
                if ev is not None:
                    ev.set()
            if not blocks:
                self._inflight.pop(ent.id, None)
        spawn = getattr(ops, "spawn", None)
        if stored and spawn is not None and self._streams.get(ent.id) is st and node.opens:
            self._fill(spawn, node, ent, st)  # keep the requests flowing while the reader catches up
