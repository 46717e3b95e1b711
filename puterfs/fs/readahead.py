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

A background chunk's answer is copied, as it arrives, into one of a few page-aligned chunk
buffers (at most ``MAX_BUFFERS``: the daemon's memory stays bounded whatever the number of
readers); from there it is written to the cache file with ``O_DIRECT`` where the cache disk
allows it (no second copy of the bytes in the page cache: the kernel already caches them for
the mount's file, and copying into fresh page-cache pages was the largest CPU cost of a cold
read), and the kernel's reads of it are answered from the buffer as soon as the answer is in,
while it is still being written (an ``O_DIRECT`` write waits for the disk, which on a busy
machine took from 5 ms to 0.5 s per 4 MiB chunk: the reader must not wait for it), until the
reader has passed it (``serve``); after that, or once the buffer is wanted for a newer chunk,
from the cache file. A buffer being written is never reused or freed before the write is done.

A read that needs a block a background request is fetching waits for it (``settle``) instead
of asking again. A background chunk is only a hint: it is stored only if the file is still the
same clean, incomplete, open cache entry at the same size and the server's version (ETag) is the
one the cached blocks come from; otherwise (or on any error) it is dropped and the reader's own
fetch does the work and reports what went wrong. See docs/performance.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
from collections.abc import Callable, Iterator
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
CHUNK_BYTES = CHUNK_MAX * BLOCK_SIZE
MAX_BUFFERS = 8  # chunk buffers in all (in flight, or landed and not yet read past): 32 MiB
DIRECT_ALIGN = 4096  # O_DIRECT wants offsets, lengths and addresses aligned to the disk's blocks


@dataclass(eq=False)
class _Stream:
    pos: int  # the furthest byte a read of this stream reached
    hits: int = 0  # reads in a row that continued the stream
    window: int = WINDOW_START
    tasks: int = 0  # background requests in flight


@dataclass(eq=False)
class _Landed:
    """A chunk in the cache file whose bytes are also still in its buffer."""

    ent: Any
    begin: int
    length: int
    buf: mmap.mmap
    etag: str | None
    storing: bool = False  # still being written to the cache file: the buffer stays ours


def _pwrite_all(fd: int, data: Any, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _store(cache: Any, entry_id: int, view: memoryview, off: int, direct: bool) -> bool:
    """Write `view` at `off` of data/<entry_id>: its aligned part with O_DIRECT when `direct`,
    the rest through the page cache. Returns whether O_DIRECT is still to be used (a cache disk
    that refuses it, EINVAL, is written through the page cache from then on)."""
    aligned = len(view) // DIRECT_ALIGN * DIRECT_ALIGN if direct and off % DIRECT_ALIGN == 0 else 0
    if aligned:
        try:
            fd = cache.open_data(entry_id, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            direct, aligned = False, 0
        else:
            try:
                _pwrite_all(fd, view[:aligned], off)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                direct, aligned = False, 0
            finally:
                os.close(fd)
    if aligned < len(view):
        fd = cache.open_data(entry_id, os.O_WRONLY)
        try:
            _pwrite_all(fd, view[aligned:], off + aligned)
        finally:
            os.close(fd)
    return direct


class ReadAhead:
    def __init__(self, ops: Any) -> None:
        self.ops = ops  # PuterOperations: remote, cache, _pwrite, spawn
        self._inflight: dict[int, dict[int, trio.Event]] = {}  # entry id -> block -> landed
        self._streams: dict[int, _Stream] = {}  # entry id -> its sequential reader
        self._landed: list[_Landed] = []  # oldest first
        self._free: list[mmap.mmap] = []
        self._buffers = 0  # chunk buffers allocated (free, in flight or landed)
        self._direct = hasattr(os, "O_DIRECT")

    def _take_buffer(self) -> mmap.mmap | None:
        """A chunk buffer: a free one, a new one, or the oldest landed chunk's; None when every
        buffer is in flight."""
        if self._free:
            return self._free.pop()
        if self._buffers < MAX_BUFFERS:
            self._buffers += 1
            return mmap.mmap(-1, CHUNK_BYTES)
        for i, c in enumerate(self._landed):
            if not c.storing:
                return self._landed.pop(i).buf
        return None

    def _give_back(self, buf: mmap.mmap) -> None:
        self._free.append(buf)
        if len(self._free) == self._buffers:  # nothing in flight or landed: free the memory
            for b in self._free:
                with contextlib.suppress(BufferError):  # a reply still holds a view: the GC unmaps it
                    b.close()
            self._free.clear()
            self._buffers = 0

    def serve(self, ent: Any, off: int, size: int) -> memoryview | None:
        """The bytes [off, off+size) of `ent` from a landed chunk's buffer, or None (then the
        cache file has them, or they are to be fetched). Only for a clean entry whose version
        is the chunk's; a chunk still being written to the cache file is served too."""
        if ent.dirty:
            return None
        for c in self._landed:
            if c.ent is ent and c.begin <= off and off + size <= c.begin + c.length:
                if c.etag != ent.base_etag:
                    return None
                return memoryview(c.buf)[off - c.begin : off - c.begin + size]
        return None

    def drop(self, ent_id: int) -> None:
        """Forget the landed chunks of an entry (written, truncated, changed on the server or
        closed): its cache file has their bytes."""
        keep = [c for c in self._landed if c.ent.id != ent_id]
        if len(keep) != len(self._landed):
            gone = [c for c in self._landed if c.ent.id == ent_id]
            self._landed = keep
            for c in gone:
                if not c.storing:  # else its chunk task gives it back once written
                    self._give_back(c.buf)

    def _passed(self, ent: Any, pos: int) -> None:
        """The reader of `ent` is at `pos`: the chunks it left behind go back to the pool."""
        gone = [c for c in self._landed if c.ent is ent and c.begin + c.length + BLOCK_SIZE <= pos]
        if gone:
            self._landed = [c for c in self._landed if c not in gone]
            for c in gone:
                if not c.storing:  # else its chunk task gives it back once written
                    self._give_back(c.buf)

    def busy(self, ent: Any, block: int) -> bool:
        """Whether a background request is fetching `block` of `ent`."""
        blocks = self._inflight.get(ent.id)
        return blocks is not None and block in blocks

    @contextlib.contextmanager
    def claim(self, ent: Any, first: int, last: int) -> Iterator[None]:
        """Blocks `first`..`last` of `ent` are being fetched by a reader's own request: while
        it runs they count as busy, so the read-ahead does not fetch them a second time (a
        kernel read served meanwhile moves the window over them)."""
        blocks = self._inflight.setdefault(ent.id, {})
        mine = {i: trio.Event() for i in range(first, last + 1) if i not in blocks}
        blocks.update(mine)
        try:
            yield
        finally:
            blocks = self._inflight.get(ent.id, {})
            for i, ev in mine.items():
                if blocks.get(i) is ev:
                    del blocks[i]
                ev.set()
            if not blocks:
                self._inflight.pop(ent.id, None)

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
        entered = end // BLOCK_SIZE > st.pos // BLOCK_SIZE
        if entered:
            st.window = min(st.window * 2, WINDOW_MAX)  # entered a new block: reach further
        st.pos = max(st.pos, end)
        # the window moves only when the reader enters a new block (a chunk that lands fills it
        # again itself): the kernel's other reads of a block have nothing to start or free
        if entered and self._landed:
            self._passed(ent, st.pos)
        if st.hits == 2 or (entered and st.hits > 2):
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
            buf = self._take_buffer()
            if buf is None:
                break  # every buffer is in flight: the reader's own fetch if it gets there first
            blocks = self._inflight.setdefault(ent.id, {})
            for i in range(b, e + 1):
                blocks[i] = trio.Event()
            st.tasks += 1
            spawn(self._chunk, node, ent, st, b, e, buf)
            b = e + 1

    def _still_wanted(self, node: Any, ent: Any, size: int, etag: str | None, *, stored: bool = False) -> bool:
        """Whether bytes of version `etag` fetched for `ent` at `size` may still be stored;
        `stored`: they are in the cache file already, and a reader that closed the file
        meanwhile (it read them from the buffer) leaves them the cache's."""
        if (
            node.entry is not ent or ent.dirty or ent.complete or ent.size != size or (node.opens == 0 and not stored)
            or ent.id not in self.ops.cache.entries
        ):
            return False
        # another version than the cached blocks': the reader's own fetch sees to it
        return etag is None or ent.base_etag is None and not ent.blocks or etag == ent.base_etag

    async def _chunk(self, node: Any, ent: Any, st: _Stream, first: int, last: int, buf: mmap.mmap) -> None:
        ops = self.ops
        size = ent.size
        stored = False
        chunk: _Landed | None = None
        begin = first * BLOCK_SIZE
        length = min((last + 1) * BLOCK_SIZE, size) - begin
        view = memoryview(buf)[:length]
        try:
            with ops.remote.background():  # a reader's own fetch goes first when both wait for the budget
                # by its signed URL, else by path (a rename not on the server yet: its old name)
                etag = await ops._server_bytes_into(node, ent, view, begin, size)
            if not self._still_wanted(node, ent, size, etag):
                return  # the file changed, was written or closed meanwhile: not ours to store
            if etag is not None and ent.base_etag is None:
                ent.base_etag = etag  # the first blocks: the version they all must share
                ops.cache.save(ent)
            # the reader has the bytes from the buffer at once, while they are written
            chunk = _Landed(ent, begin, length, buf, etag, storing=True)
            self._landed.append(chunk)
            # into the cache file in a worker thread (a large write would hold up every handler)
            self._direct = await trio.to_thread.run_sync(_store, ops.cache, ent.id, view, begin, self._direct)
            chunk.storing = False
            if not self._still_wanted(node, ent, size, etag, stored=True):
                return  # unmarked bytes are never served from the cache file: a read fetches them
            ent.blocks.update(range(first, last + 1))
            stored = True
            if ent.missing_blocks(0, ent.size) == []:
                ops.cache.mark_complete(ent)  # in the journal once its data file is synced
        except Exception as exc:  # noqa: BLE001 - a hint only; the reader's own fetch reports errors
            log.debug("read-ahead of %s blocks %d-%d dropped: %s", node.path, first, last, exc)
        finally:
            with contextlib.suppress(BufferError):  # a view still held somewhere: the GC frees it
                view.release()
            if chunk is not None:
                chunk.storing = False
                if not stored and chunk in self._landed:
                    self._landed.remove(chunk)  # not in the cache file: served no more
            if chunk is None or chunk not in self._landed:
                self._give_back(buf)  # never landed, or dropped or passed while it was written
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
