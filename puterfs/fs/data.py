"""The data cache seen from the mount: file contents in cache files (puterfs/fs/cache.py),
fetched from the server in ranged blocks with read-ahead (puterfs/fs/readahead.py), written locally, marked dirty in the
journal before a write returns; file handles (docs/write-back.md).

A mixin of `PuterOperations` (puterfs/fs/operations.py)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pyfuse3
import trio

from puterfs.client._errors import (
    NotFound,
    PuterError,
)
from puterfs.fs.cache import BLOCK_SIZE, CacheEntry
from puterfs.fs.errors import FsError, handlers_running
from puterfs.fs.freshness import content_changed
from puterfs.fs.freshness import verify as verify_version
from puterfs.fs.inodes import Node

T = TypeVar("T")
MAX_ROUNDS = 5  # looks for a file or directory under names a pending rename moves (_at_first)
log = logging.getLogger(__name__)

READAHEAD_BLOCKS = 8  # for sequential readers (8 MiB)
# a write at least this large that extends its cache file reserves the file's blocks first
# (fallocate, FALLOC_FL_KEEP_SIZE): the page-cache write into reserved blocks skips the file
# system's per-block delayed-allocation bookkeeping, a quarter of the write's cost on ext4
PREALLOCATE_MIN = 128 * 1024
# a sequential writer's reservation runs ahead of it: as much again as the file already has,
# at most this (16 fallocate calls for 256 MiB, not 256); what is left past the end at its
# close is given back (`_give_back_reserve`)
PREALLOCATE_AHEAD = 16 << 20
FALLOC_FL_KEEP_SIZE = 1
EVICT_RECOUNT = 5.0  # s: the cache's bytes are counted again at a close at least this often
LOW_SPACE = 64 << 20  # a cache disk with less free than this unlinks deleted files' data at once
UNLINK_GATHER = 0.05  # s: deleted files' cache files are unlinked in jobs of what came meanwhile
LOW_SPACE_RECHECK = 0.5  # s: a burst of unlinks asks the cache disk's free space this often, not per unlink

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _fallocate = _libc.fallocate64 if hasattr(_libc, "fallocate64") else _libc.fallocate
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - not glibc/musl: writes go without it
    _fallocate = None


def preallocate(fd: int, off: int, length: int) -> bool:
    """Reserve the disk blocks of [off, off+length) of `fd` without changing its size. False
    when the file system cannot (it then writes as before); OSError when the disk is full."""
    if _fallocate is None:
        return False
    if _fallocate(fd, FALLOC_FL_KEEP_SIZE, off, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    if err in (errno.ENOSPC, errno.EDQUOT):
        # some file systems keep what they reserved before they ran out: truncating to the
        # same size gives back blocks past the end (ext4 does so)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, os.fstat(fd).st_size)
    raise OSError(err, os.strerror(err))


class _Handle:
    __slots__ = ("node", "writable", "flags", "next_off", "readahead", "reserved")

    def __init__(self, node: Node, writable: bool, flags: int) -> None:
        self.node = node
        self.writable = writable
        self.flags = flags
        self.next_off = -1  # where a sequential reader reads next
        self.readahead = 1  # blocks fetched per request; doubles while the reader is sequential
        # (entry id, its version after this handle's last write, start, end, _reserve_epoch)
        # of the blocks that write reserved past the file's end; valid only while nothing else
        # changed the file
        self.reserved: tuple[int, int, int, int, int] | None = None


class DataCache:
    _syncs_on_threads = 0  # disk syncs waiting for worker threads (`_disk_sync`)
    _preallocate = True  # off once the cache disk's file system says it cannot (preallocate)

    def _fd(self, node: Node) -> int:
        assert node.entry is not None
        if node.fd is None:
            node.fd = self.cache.open_data(node.entry.id)
        return node.fd

    def _ensure_entry(self, node: Node) -> CacheEntry:
        """The cache entry for a file, created sparse for a server file."""
        ent = node.entry
        if ent is not None and ent.id in self.cache.entries:
            return ent
        if node.remote_fp is None:
            ent = self.cache.create(node.path, mode=node.mode)
        else:
            uid, size, modified = node.remote_fp
            ent = self.cache.create_for_remote(node.path, size=size, uid=uid, modified=modified, mode=node.mode)
        node.entry = ent
        return ent

    async def _fetch(self, node: Node, off: int, size: int, *, readahead: int = 1) -> None:
        """Make bytes [off, off+size) of a server file present in its cache file."""
        ent = self._ensure_entry(node)
        if not ent.missing_blocks(off, size):
            return
        async with self._lock(node):
            await self.readahead.settle(ent, off, size)  # what the read-ahead is fetching lands first
            missing = ent.missing_blocks(off, size)
            if not missing:
                return
            last_block = (ent.size - 1) // BLOCK_SIZE
            first = missing[0]
            end = missing[-1]
            end = min(max(end, first + readahead - 1), last_block)
            # one ranged request for the run of missing blocks from `first`
            run_end = first
            while run_end + 1 <= end and (run_end + 1) not in ent.blocks and not self.readahead.busy(ent, run_end + 1):
                run_end += 1
            # the run counts as busy meanwhile: the read-ahead does not fetch it a second time
            with self.readahead.claim(ent, first, run_end):
                for start_block in range(first, run_end + 1, READAHEAD_BLOCKS):
                    stop_block = min(start_block + READAHEAD_BLOCKS - 1, run_end)
                    begin = start_block * BLOCK_SIZE
                    length = min((stop_block + 1) * BLOCK_SIZE, ent.size) - begin
                    data, etag = await self._server_bytes(node, ent, begin, length)
                    if node.entry is not ent:
                        return  # replaced while we fetched
                    if etag is not None and etag != ent.base_etag:
                        if ent.base_etag is not None or ent.blocks:
                            # another version than the cached blocks': never a file of two versions
                            await content_changed(self, node, ent, etag)
                            break
                        ent.base_etag = etag  # the first blocks: the version they all must share
                        self.cache.save(ent)
                    if len(data) != length:
                        raise PuterError(
                            f"short read of {node.path}: wanted {length} bytes at {begin}, got {len(data)} "
                            "(the file changed on the server?)"
                        )
                    if node.entry is not ent:
                        return  # replaced while we fetched
                    self._pwrite(node, data, begin)
                    ent.blocks.update(range(start_block, stop_block + 1))
            if len(ent.blocks) * BLOCK_SIZE >= ent.size and ent.missing_blocks(0, ent.size) == []:
                self.cache.mark_complete(ent)  # in the journal once its data file is synced
        # blocks after the run (not contiguous) are fetched by the next call
        if ent.missing_blocks(off, size):
            await self._fetch(node, off, size)

    async def _read_at(self, where: str, *, begin: int, length: int, size: int) -> tuple[bytes, str | None]:
        return await self.remote.read_version(where, begin, length, size=size)

    async def _server_bytes(self, node: Node, ent: CacheEntry, begin: int, length: int) -> tuple[bytes, str | None]:
        """Bytes [begin, begin+length) of the server's copy of `ent`, and their version:
        through the signed read URL of the file `ent` is based on (by uid, wherever it is
        now), else (no uid, not signed, or refused: the file was replaced) by path."""
        if ent.base_uid is not None:
            got = await self.remote.read_signed(ent.base_uid, begin, length, size=ent.size)
            if got is not None:
                return got
        return await self._at_server(
            node.path, functools.partial(self._read_at, begin=begin, length=length, size=ent.size)
        )

    async def _server_bytes_into(self, node: Node, ent: CacheEntry, buf: memoryview, begin: int, size: int) -> str | None:
        """`_server_bytes` of ``len(buf)`` bytes of a file of `size` bytes, into ``buf`` as they
        arrive (the read-ahead's); returns their version."""
        if ent.base_uid is not None:
            got = await self.remote.read_signed_into(ent.base_uid, buf, begin, size=size)
            if got is not None:
                return got[0]
        return await self._at_server(node.path, lambda where: self.remote.read_version_into(where, buf, begin, size=size))

    async def _at_server(self, path: str, call: Callable[[str], Awaitable[T]]) -> T:
        """`call` with the server's path of what is at `path` here: a rename not on the server
        yet has it under its old name, and one sent with its answer lost under either
        (nsjournal.py, `server_paths`)."""
        return await self._at_first(path, lambda: self.ns.server_paths(path) or [path], call)

    async def _at_first(self, own: str, names: Callable[[], list[str]], call: Callable[[str], Awaitable[T]]) -> T:
        """`call` with the first of `names()` the server has (NotFound: the next). `own` is
        the name the server gives it once the pending ops are applied; the others are names
        those ops take it from, and the journal's applier may move it meanwhile: the names
        are asked again after each miss (a request under the old name, retried after a
        fault, can land after the move), and an answer under an old name is asked for again
        when ops were applied while it came (something new may be at the old name by then:
        a directory made, a file uploaded there after the move)."""
        missed: set[str] = set()
        for _ in range(MAX_ROUNDS):
            todo = [p for p in names() if p not in missed]
            if not todo:
                raise NotFound(f"{', '.join(sorted(missed))}: not on the server")
            for p in todo:
                applied = self.ns.applied
                try:
                    answer = await call(p)
                except NotFound:
                    missed.add(p)
                    continue
                if p == own or self.ns.applied == applied:
                    return answer
                break  # ops applied while it came: look again
        return await call(own)  # the journal kept moving: the name the server has after it

    async def _ensure_complete(self, node: Node) -> CacheEntry:
        ent = self._ensure_entry(node)
        if not ent.complete:
            await self._fetch(node, 0, ent.size, readahead=READAHEAD_BLOCKS)
            self.cache.mark_complete(ent)
        return ent

    async def _disk_sync(self, job: Callable[[bool], None]) -> None:
        """Run the disk syncs `job` (its argument: whether it runs on this thread). With no
        other request to answer meanwhile, on this thread: handing it to a worker thread and
        waking this one again cost more than the syncs did (about 1.5 ms an fsync against
        1.0 ms, editor saves, 2 loaded cores). Otherwise on a worker thread, so that other
        requests go on while the disk works."""
        if self._syncs_on_threads == 0 and handlers_running() <= 1:
            job(True)
            return
        self._syncs_on_threads += 1
        try:
            await trio.to_thread.run_sync(job, False)
        finally:
            self._syncs_on_threads -= 1

    async def _uninline(self, node: Node, ent: CacheEntry) -> None:
        """The bytes of `ent` are about to change: if its last fsync put them in the journal,
        its data file is synced first (cache.uninline), on a worker thread while the mount
        answers other requests, else on this one (as fsync does)."""
        if ent.id not in self.cache.inlined or node.entry is not ent:
            return
        fd = self._fd(node)
        await self._disk_sync(lambda here: os.fdatasync(fd))
        if node.entry is ent:
            self.cache.uninline(ent, fd, synced=True)

    def _dirty(self, node: Node) -> CacheEntry:
        """The file's content is about to change. The journal says dirty first: if it cannot
        (a full cache disk), this raises and nothing in memory changed."""
        ent = node.entry
        assert ent is not None
        if not ent.dirty:
            self.cache.mark_dirty(ent)  # committed before the write returns
            self.readahead.drop(ent.id)
        elif ent.id in self.cache.inlined:
            self.cache.uninline(ent, self._fd(node))  # its last fsync's bytes: synced in its data file
        ent.version += 1
        self.queue.changed(ent.id)
        node.local_seq = self.table.next_seq()
        return ent

    def _reclaim_space(self) -> int:
        """The cache disk is full: unlink now the data of deleted files a worker thread was to
        unlink soon (an unlink, then a create on a full disk, must find the space freed), and
        drop every clean cached file nobody has open. Nonzero when something was freed."""
        unlinked = self.cache.unlink_doomed() + self.cache.drop_recycled()
        given_back = self._give_back_reserves()
        keep = {n.entry.id for n in self.table.by_inode.values() if n.entry is not None and n.opens}
        freed = self.cache.evict(0, keep)
        if freed:
            for n in self.table.by_inode.values():
                if n.entry is not None and n.entry.id not in self.cache.entries:
                    self._close_fd(n)
                    n.entry = None
            log.warning("the cache disk is full: dropped %d bytes of clean cached data", freed)
        return freed or unlinked or given_back

    def _pwrite(self, node: Node, data: bytes, off: int, *, end: int = -1, h: _Handle | None = None) -> int:
        """Write into the cache file; on a full disk free clean cached data once, then ENOSPC.
        `end`: the cache file's size; a large write past it reserves its blocks first
        (`preallocate`), so that a full disk fails it before any byte changed. `h`: the
        handle writing (a sequential writer's reservation runs ahead of it, `_reserve`)."""
        try:
            return self._pwrite_once(node, data, off, end, h)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not self._reclaim_space():
                log.error("the cache disk is full: %s", exc)
                raise OSError(errno.ENOSPC, "the cache disk is full") from None
        return self._pwrite_once(node, data, off, end, h)

    def _pwrite_once(self, node: Node, data: bytes, off: int, end: int, h: _Handle | None = None) -> int:
        fd = self._fd(node)
        n = len(data)
        if self._preallocate and 0 <= end < off + n and n >= PREALLOCATE_MIN:
            r = h.reserved if h is not None else None
            ent = node.entry
            # reserved by this handle's last write, nothing else changed the file since (each
            # change is one version: _dirty) and no full disk took the reservation back
            if not (r is not None and ent is not None and r[0] == ent.id and r[1] + 1 == ent.version
                    and r[2] <= off and off + n <= r[3] and r[4] == self._reserve_epoch):  # fmt: skip
                self._reserve(fd, off, n, end, h)
        written = os.pwrite(fd, data, off)
        if h is not None and h.reserved is not None:
            ent = node.entry
            r = h.reserved
            if ent is not None and r[0] == ent.id:
                h.reserved = (ent.id, ent.version, r[2], r[3], r[4])
        return written

    def _reserve(self, fd: int, off: int, n: int, end: int, h: _Handle | None) -> None:
        """Reserve the blocks of a write past the file's end, and for a handle writing on from
        the end as much again as the file has, up to PREALLOCATE_AHEAD (a disk with room for the
        write but not for that gets the write's own). A write that leaves a hole before it
        reserves only its own: the next write further on would leave the reserve inside the
        file, allocated though never written, where no close gives it back."""
        ahead = max(n, min(end, PREALLOCATE_AHEAD)) if h is not None and off <= end else n
        try:
            ok = preallocate(fd, off, ahead)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or ahead == n:
                raise
            ahead = n
            ok = preallocate(fd, off, n)
        if not ok:
            self._preallocate = False
            return
        ent = h.node.entry if h is not None else None
        if ent is None or ahead == n:
            if h is not None:
                h.reserved = None
            return
        # its version once the write is in (_pwrite_once)
        h.reserved = (ent.id, -2, off, off + ahead, self._reserve_epoch)
        self._reserved_ahead.add(ent.id)

    _reserved_ahead: set[int]  # ids of cache files with blocks reserved past their end (set in __init__)
    _reserve_epoch = 0  # one more each time a full disk took the reservations back

    def _give_back_reserves(self) -> bool:
        """A full cache disk: every file's blocks reserved ahead of its writer are given back
        (their writers reserve again, each its next write's only if space is short)."""
        if not self._reserved_ahead:
            return False
        self._reserve_epoch += 1
        for n in self.table.by_inode.values():
            if n.entry is not None and n.entry.id in self._reserved_ahead:
                self._give_back_reserve(n)
        self._reserved_ahead.clear()
        return True

    def _give_back_reserve(self, node: Node) -> None:
        """The file's last writer closed: the blocks reserved ahead of it past the file's end
        are given back, by a truncate to the file's own size (ext4 and xfs free them so);
        nothing else changes."""
        ent = node.entry
        if ent is None or ent.id not in self._reserved_ahead:
            return
        self._reserved_ahead.discard(ent.id)
        if node.fd is None:
            return
        with contextlib.suppress(OSError):  # they stay reserved: disk space, never data
            os.ftruncate(node.fd, os.fstat(node.fd).st_size)

    # The cache's bytes are counted by a walk of every cached file (0.15 ms for 1,600 of them),
    # not at every close: the last count plus all of each file closed since is a bound (the
    # cache grows through open files), and while it is under half the size nothing is due.
    _used_bound = math.inf
    _counted_at = -math.inf

    def _maybe_evict(self, closed: CacheEntry | None = None) -> None:
        """Trim clean cached data to --cache-size, at the close of `closed`."""
        now = time.monotonic()
        if self._used_bound != math.inf and now - self._counted_at < EVICT_RECOUNT:
            if closed is not None:
                self._used_bound += self.cache.entry_bytes(closed)
            if self._used_bound <= self.cache_size // 2:
                return
        used = self._used_bound = self.cache.used_bytes()
        self._counted_at = now
        if used <= self.cache_size:
            return  # the common case, without a walk of the inode table for the open files
        keep = {n.entry.id for n in self.table.by_inode.values() if n.entry is not None and (n.opens or n.entry.dirty)}
        freed = self.cache.evict(self.cache_size, keep)
        if freed:
            for n in self.table.by_inode.values():
                if n.entry is not None and n.entry.id not in self.cache.entries:
                    n.entry = None
            log.debug("cache: evicted %d bytes", freed)

    async def _truncate(self, node: Node, size: int) -> None:
        if size < 0:
            raise FsError(errno.EINVAL)
        if size == 0:
            ent = node.entry
            if ent is None or ent.id not in self.cache.entries:
                ent = self._ensure_entry(node)
            await self.readahead.settle(ent, 0, ent.size)  # no read-ahead lands after the truncate
            ent.complete = True
            ent.blocks.clear()
        else:
            ent = await self._ensure_complete(node)
        await self._uninline(node, ent)
        self._dirty(node)
        try:
            os.ftruncate(self._fd(node), size)
        except OSError as exc:
            # nothing changed (EFBIG, ENOSPC): the file is still to be uploaded as it is
            if node.writers == 0 and node.in_tree:
                self.queue.schedule(ent.id)
            raise FsError(exc.errno or errno.EIO, f"truncate of {node.path} to {size}: {exc.strerror}") from None
        ent.size = size
        node.size = size
        node.mtime_ns = node.ctime_ns = time.time_ns()
        node.mtime_local = True
        ent.mtime_ns = node.mtime_ns
        self.cache.save(ent)

    def _open_handle(self, node: Node, flags: int) -> pyfuse3.FileInfo:
        acc = flags & os.O_ACCMODE
        writable = acc in (os.O_WRONLY, os.O_RDWR)
        fh = self._alloc_fh()
        self._handles[fh] = _Handle(node, writable, flags)
        node.opens += 1
        if writable:
            node.writers += 1
        # keep the kernel's page cache only while the content is what it cached last time
        current = ("local", node.entry.id) if (node.entry is not None and node.entry.dirty) else ("remote", node.remote_fp)
        keep = node.page_fp == current
        node.page_fp = current
        # a write-only descriptor bypasses the kernel's page cache (FOPEN_DIRECT_IO): the
        # writer's bytes go from its own pages to the daemon, not first into fresh page-cache
        # pages of the mount's file (as costly as a whole local write); it cannot read or be
        # mmapped anyway, and the kernel drops other descriptors' cached pages of what it wrote
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=acc == os.O_WRONLY)

    async def _release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.opens -= 1
        if h.writable:
            node.writers -= 1
            if node.writers == 0:
                self._give_back_reserve(node)
        ent = node.entry
        if h.writable and ent is not None and ent.dirty and node.writers == 0 and node.in_tree:
            # only a writer's last close starts the quiet period: a reader closing a dirty
            # file again and again must not postpone its upload
            try:
                self.cache.save(ent)
            finally:
                # queued even if the row could not be updated (a full cache disk): it says
                # dirty, and its upload reads the size from the data file
                self.queue.schedule(ent.id)
        if node.opens == 0:
            self._close_fd(node)
            if ent is not None:
                self.readahead.drop(ent.id)
            if not node.in_tree:
                self._release_unlinked(node)
                self.table.maybe_drop(node)
            else:
                self._maybe_evict(ent)

    def _release_unlinked(self, node: Node) -> None:
        """Drop the data of a node that left the tree once nothing uses it any more."""
        if node.in_tree or node.opens > 0 or node.entry is None:
            return
        ent = node.entry
        if self.cache.entries.get(ent.id) is ent and self.cache.paths.get(ent.path) is not ent:
            self.queue.cancel(ent.id)
            self._delete_entry(node)
        else:  # still the cache of a path in the tree: keep it, just let go of it
            node.entry = None
            self._close_fd(node)

    def _close_fd(self, node: Node) -> None:
        if node.fd is not None:
            os.close(node.fd)
            node.fd = None

    def _cache_disk_low(self) -> bool:
        """Whether the cache disk has less than LOW_SPACE free: then a deleted file's data is
        unlinked before the unlink returns, not later on a worker thread (a create or write
        right after it, on a full disk, must find the space free)."""
        now = time.monotonic()
        if now - self._roomy_disk_at < LOW_SPACE_RECHECK:
            return False  # not low a moment ago (a full disk's refusal unlinks them anyway)
        try:
            st = os.statvfs(self.cache.root)
        except OSError:
            return True
        low = st.f_bavail * st.f_frsize < LOW_SPACE
        if not low:
            self._roomy_disk_at = now
        return low

    _roomy_disk_at = -math.inf  # when the cache disk last had LOW_SPACE free (monotonic)

    def _delete_entry(self, node: Node, *, ended: bool = False) -> None:
        """Delete the node's cache entry and its data file (`ended`: its row's end is
        committed already, `cache.end_row`)."""
        assert node.entry is not None
        self._close_fd(node)
        if self._free_at_once():
            self.cache.delete(node.entry)  # its space is free when the unlink returns
        else:
            # its files are unlinked on a worker thread, off the syscall's path
            self.cache.delete(node.entry, later=True, ended=ended)
            self._start_unlinker()
        node.entry = None

    def _free_at_once(self) -> bool:
        """Whether a deleted file's data is unlinked before the syscall returns (no task to
        do it later, or a cache disk low on space) rather than by `_unlink_doomed`."""
        return self.spawn is None or self._cache_disk_low()

    def _start_unlinker(self) -> None:
        if not self._unlinking and self.spawn is not None:
            self._unlinking = True
            self.spawn(self._unlink_doomed)

    _unlinking = False  # a task of _unlink_doomed is running

    async def _unlink_doomed(self) -> None:
        """Unlink the files of deleted entries on a worker thread: one job for a burst of
        deletes (an rm -rf), not a thread job per unlink (its hand-offs cost the event loop
        more than the unlink itself); deletes made while it runs are drained by it too."""
        try:
            while self.cache.doomed():
                # the rest of the burst comes meanwhile: a job per UNLINK_GATHER, not per
                # unlink (a thread job's hand-offs cost the event loop about what an unlink does)
                await trio.sleep(UNLINK_GATHER)
                await trio.to_thread.run_sync(self.cache.unlink_doomed)
                self.cache.forget_unlinked()  # and their rows, in one commit
        finally:
            self._unlinking = False

    def _let_go_replaced(self, node: Node) -> CacheEntry | None:
        """`node`, a file a rename replaces, leaves the namespace: its upload goes, and its
        cache entry is returned for `_rename_data` to delete in the rename's own journal
        transaction (None: it has none, or keeps it for the descriptors still open on it)."""
        ent = self._endable(node)
        if ent is None:
            self._discard_data(node)
            return None
        self.queue.cancel(ent.id)
        self._forget_session(ent.id)
        self._close_fd(node)
        node.entry = None
        return ent

    def _rename_data(self, old: str, new: str, *, is_dir: bool, replaced: CacheEntry | None = None,
                     **changes: object) -> None:
        """The cache follows a rename (cache.rename: one journal transaction with the deletion
        of `replaced`, from `_let_go_replaced`). A small dirty file replaced (an editor's save)
        leaves its data file to be a spare (cache.RECYCLE_MAX) unless its upload is under way
        (its request may still read that file) or the cache disk is low (its space is freed at
        once then); another's files are unlinked on a worker thread."""
        low = replaced is not None and self._free_at_once()
        recycle = replaced is not None and not low and replaced.id not in self._uploading
        self.cache.rename(old, new, is_dir=is_dir, replaced=replaced, recycle=recycle, **changes)
        if self.cache.doomed():
            if low:
                self.cache.unlink_doomed()  # its space is free when the rename returns
            else:
                self._start_unlinker()

    def _discard_data(self, node: Node, *, ended: bool = False) -> None:
        """A file leaves the namespace: drop its upload; keep its bytes for open descriptors
        (`ended`: the end of its cache row was committed already, `_endable`)."""
        ent = node.entry
        if ent is None:
            return
        self.queue.cancel(ent.id)
        self._forget_session(ent.id)
        if ent.id not in self.cache.entries:
            return
        if node.opens > 0:
            if self.cache.paths.get(ent.path) is ent:
                del self.cache.paths[ent.path]
            ent.path = f"\x00unlinked/{ent.id}"
            ent.dirty = False
            self.cache.save(ent)
        else:
            self._delete_entry(node, ended=ended)

    def _endable(self, node: Node) -> CacheEntry | None:
        """The cache entry whose row `_discard_data` would end (`cache.end_row`), for the
        caller to end in its own journal transaction; None when there is none to end (no
        entry, or it stays for open descriptors)."""
        ent = node.entry
        if ent is None or node.opens > 0 or self.cache.entries.get(ent.id) is not ent:
            return None
        return ent

    async def read_path(self, rel: str, access: Callable[[int, int, int, int], bool] | None = None) -> bytes:
        """The content of the file at mount-relative `rel`, through the cache (dirty data included).

        `access(st_mode, st_uid, st_gid, want)`, when given, is asked for search permission
        on each directory on the way and read permission on the file (EACCES when refused),
        so that `.ai/ocr` reads a path only as its caller could."""

        def check(node: Node, want: int) -> None:
            if access is not None and not access(node.mode, self.uid, self.gid, want):
                raise FsError(errno.EACCES, f"{rel}: permission denied")

        node = self.table.root
        for part in [p for p in rel.split("/") if p and p != "."]:
            check(node, os.X_OK)
            child = await self._child(node, part)
            if child is None:
                raise FsError(errno.ENOENT, f"{rel}: no such file in the mount")
            node = child
        if node.is_dir:
            raise FsError(errno.EISDIR, f"{rel} is a directory")
        check(node, os.R_OK)
        ent = await self._ensure_complete(node)
        with self.cache.open_file(ent.id) as f:
            return f.read()

    async def _readlink(self, node: Node) -> bytes:
        if not node.is_link:
            raise FsError(errno.EINVAL)
        if node.link_target is None:
            ent = await self._ensure_complete(node)
            with open(self.cache.data_path(ent.id), "rb") as f:
                node.link_target = f.read()
        return node.link_target

    async def _open(self, node: Node, flags: int) -> pyfuse3.FileInfo:
        if node.is_dir:
            raise FsError(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        if writable or flags & os.O_TRUNC:
            self._check_writable()
        await self._refresh_attr(node)
        if writable and flags & os.O_TRUNC:
            await self._truncate(node, 0)
        elif node.entry is not None and not node.entry.dirty and (node.entry.unverified or node.entry.blocks):
            # a partly cached file is checked at every open: its missing blocks must come from
            # the version its cached ones are of
            await verify_version(self, node, force=True)
        return self._open_handle(node, flags)

    async def _read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        h = self._handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        node = h.node
        ent = self._ensure_entry(node)
        if ent.unverified:  # a change event may mean another version (freshness.verify)
            await verify_version(self, node)
        if off >= ent.size:
            return b""
        size = min(size, ent.size - off)
        # in a read-ahead chunk's buffer (landed, or still being written to the cache file)
        data: bytes | memoryview | None = self.readahead.serve(ent, off, size)
        if data is None and ent.missing_blocks(off, size):
            if off == h.next_off:
                h.readahead = min(h.readahead * 2, READAHEAD_BLOCKS)
            else:
                h.readahead = 1
            await self._fetch(node, off, size, readahead=h.readahead)
            if off >= ent.size:
                return b""  # the server's new version is shorter
            size = min(size, ent.size - off)
        self.cache.touch(ent)
        if data is None:
            data = self.readahead.serve(ent, off, size)  # just fetched, still in memory
        if data is None:
            data = os.pread(self._fd(node), size, off)
        h.next_off = off + len(data)
        self.readahead.advance(node, ent, off, len(data))
        return data

    async def _write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles.get(fh)
        if h is None or not h.writable:
            raise FsError(errno.EBADF)
        node = h.node
        ent = await self._ensure_complete(node)
        await self._uninline(node, ent)
        self._dirty(node)
        n = self._pwrite(node, buf, off, end=ent.size, h=h)
        if off + n > ent.size:
            ent.size = off + n
        node.size = ent.size
        node.mtime_ns = node.ctime_ns = ent.mtime_ns = time.time_ns()
        node.mtime_local = True
        return n

    async def _sync_journal(self) -> None:
        """Every namespace op and journal row committed so far onto the local disk (fsyncdir)."""
        mark = self.cache.journal_mark()
        if mark is None:
            return  # everything committed is synced already
        await trio.to_thread.run_sync(lambda: self.cache.sync_files(journal=mark))
        self.cache.journal_synced(mark)

    def _want_spares(self) -> None:
        """Keep spare data files ready (cache.SPARES): made on a worker thread, so that a
        create makes no inode in its syscall (without the mount's nursery, none are made)."""
        if self.spawn is None:
            return
        n = self.cache.spares_wanted()
        if n:
            try:
                spares = self.cache.prepare_spares(n)
            except OSError as exc:
                log.warning("cache: cannot make spare data files: %s", exc)
                return
            self.spawn(self._make_spares, spares)

    async def _make_spares(self, spares: list[CacheEntry]) -> None:
        made: list[CacheEntry] = []
        try:
            made = await trio.to_thread.run_sync(self.cache.make_spares, spares)
        finally:
            self.cache.add_spares(spares, made)

    async def _sync_completed(self) -> None:
        """Sync the data files of the clean files fetched (or uploaded) in full since the last
        time, on a worker thread, and record them complete in the journal (cache.mark_complete)."""
        pending = self.cache.completed_unsynced()
        if pending:
            synced = await trio.to_thread.run_sync(self.cache.sync_data_files, [i for i, _ in pending])
            self.cache.completed_synced(pending, synced)

    async def sync_journal_every(self, interval: float) -> None:
        """Sync the journal's commits every `interval` seconds while there are unsynced ones:
        a power cut takes at most the last few seconds of what no fsync made durable. The
        clean files completed since are synced first and recorded complete."""
        while True:
            await trio.sleep(interval)
            try:
                await self._sync_completed()
            except OSError as exc:  # they stay incomplete in the journal: tried again next time
                log.warning("cache: cannot sync the cached files: %s", exc)
            try:
                await self._sync_journal()
            except OSError as exc:
                log.warning("cache: cannot sync the journal: %s", exc)

    async def _fsync(self, fh: int, datasync: bool) -> None:
        h = self._handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        node = h.node
        ent = node.entry
        if ent is None or not ent.dirty or not node.in_tree:
            return
        # durable on the local disk: the row is committed (size, mtime), then the data file,
        # the journal's commits (this file's and every earlier one: its create, a rename) and
        # the directories are synced in one go. A small file's bytes go into the journal
        # instead (cache.INLINE_MAX), in the same commit as the row: then only the journal is synced
        fd = self._fd(node)
        data_fd = None if self.cache.save_fsynced(ent, fd) else fd
        # fdatasync for fsync too: the cache file's own times are never used (the mount's are in
        # the journal), and its size, which recovery reads, is what fdatasync keeps; an
        # overwrite in place then costs no file system journal commit
        mark = self.cache.journal_mark()
        await self._disk_sync(lambda here: self.cache.sync_files(data_fd, datasync=True, journal=mark, together=not here))
        self.cache.journal_synced(mark)
        if self.sync_uploads:
            await self.queue.upload_now(ent.id)  # and on the server (its own lane)
        else:
            self.queue.upload_soon(ent.id)  # the upload follows in the background
