"""pyfuse3 handlers: POSIX semantics on top of Puter's path-keyed, non-POSIX server.

Handlers only, each a few lines of argument handling and one call (docs/architecture.md):

* `namespace.py`  mkdir, create, rename, unlink, rmdir, symlink and their POSIX checks
* `listing.py`    the listing cache (lookups and attributes answered from listings)
* `data.py`       file data in the local cache, reads with read-ahead, file handles
* `uploader.py`   what the write-back queue calls: batching, upload routes, conflicts
* `metadata.py`   mode and mtime on the server (setattr, debounced metadata updates)

`PuterOperations` combines them (they are mixins sharing its state: inode table, cache
journal, remote, write-back queue). Every handler is wrapped by `fuse_errors`
(puterfs/fs/errors.py), the one place where exceptions become errno values, so no failed
request can take the mount down.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from puterfs.client._errors import NotFound, PuterError
from puterfs.fs.cache import CacheStore
from puterfs.fs.data import READAHEAD_BLOCKS, DataCache, _Handle
from puterfs.fs.errors import FsError, fuse_errors
from puterfs.fs.inodes import InodeTable, Node
from puterfs.fs.listing import ListingCache
from puterfs.fs.metadata import PosixMetadata
from puterfs.fs.namespace import NAME_MAX, Namespace
from puterfs.fs.nsjournal import NamespaceJournal
from puterfs.fs.readahead import ReadAhead
from puterfs.fs.remote import UPLOAD_BATCH_MAX, Remote
from puterfs.fs.uploader import EDIT_MAX, META_BATCH, SMALL_FILE, Uploader, refused_for_good
from puterfs.fs.writeback import WriteBackQueue

log = logging.getLogger(__name__)

__all__ = ["EDIT_MAX", "NAME_MAX", "READAHEAD_BLOCKS", "SMALL_FILE", "PuterOperations", "refused_for_good"]


class _DirHandle:
    __slots__ = ("node", "entries")

    def __init__(self, node: Node, entries: list[tuple[str, Node]]) -> None:
        self.node = node
        self.entries = entries


class PuterOperations(Namespace, Uploader, PosixMetadata, DataCache, ListingCache, pyfuse3.Operations):
    supports_dot_lookup = True
    # Off on purpose (docs/performance.md): with it the kernel trusts its own size and mtime of
    # a cached regular file and ignores the server's, so a file changed elsewhere kept its old
    # size and bytes through the mount; and close() waits for the flush anyway, so a sequential
    # write to close measured slower with it (0.10-0.12 s vs 0.07 s for 64 MiB).
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        remote: Remote,
        cache: CacheStore,
        *,
        uid: int | None = None,
        gid: int | None = None,
        attr_timeout: float = 1.0,
        listing_max_age: float = 60.0,
        write_back: float = 2.0,
        cache_size: int = 10 << 30,
        read_only: bool = False,
        upload_workers: int = 4,
        on_change: Callable[[], None] | None = None,
        links: bool = True,
        sync_uploads: bool = False,
    ) -> None:
        super().__init__()
        self.sync_uploads = sync_uploads  # fsync waits for the server (else: for the local disk)
        self.readahead = ReadAhead(self)  # background ranged reads ahead of sequential readers
        self.spawn: Callable[..., Any] | None = None  # start_soon of the mount's nursery (set by the mount)
        self.links = links  # symlinks as NAME.rclonelink files (docs/inodes.md)
        self.remote = remote
        self.cache = cache
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.attr_timeout = attr_timeout
        self.listing_max_age = listing_max_age
        self.cache_size = cache_size
        self.read_only = read_only
        self.table = InodeTable()
        self.queue = WriteBackQueue(
            self._upload, delay=write_back, workers=upload_workers, is_small=self._is_small, on_change=on_change,
            cancel_on_change=self._streamed, lane=self._is_edit, is_permanent=refused_for_good,
            max_batch=UPLOAD_BATCH_MAX, size_of=self._entry_size,
            groupable=lambda key: key < 0, max_group=META_BATCH,  # metadata updates (key -inode)
        )
        self.cache.reclaim = self._reclaim_space
        # mkdir/rmdir/unlink/rename as the server must replay them (nsjournal.py), in the
        # cache's SQLite journal; applied after the same quiet period as uploads
        self.ns = NamespaceJournal(cache, delay=write_back)
        self.ns.apply = self._apply_ns
        self.ns.on_change = on_change or (lambda: None)
        self._uploading: dict[int, str] = {}  # upload key -> the path it is being uploaded to
        self._skipped_names: set[tuple[str, str]] = set()  # logged once each
        self.remote.on_reachable = self._server_back
        self._on_change = on_change or (lambda: None)
        # presigned uploads of large files: entry id -> saved session JSON (also in the journal)
        self._sessions: dict[int, str] = {}
        self._orphans: list[str] = []  # sessions of files gone or changed, to abort
        self.large_uploads: dict[int, tuple[int, int]] = {}  # entry id -> (done, total) bytes
        self.ai: Any = None  # puterfs.fs.aifiles.AiFiles, set by the mount
        self.epoch = 0  # bumped whenever the server's change timestamp moves
        self._mutations = 0  # namespace changes of ours under way (see _mutating)
        # a nursery for listing refreshes that outlive their caller (Freshness.run sets it)
        self.background: trio.Nursery | None = None
        self._refreshing: dict[int, tuple[trio.Event, float]] = {}  # folder inode -> (done, started)
        self._mutating_scopes: list[tuple[set[str], set[str]]] = []  # the handlers' (folders, subtrees)
        # (path, uid, size, modified) of what our own changes made on the server, the
        # newest last: the change event of each is our echo (Namespace._own_echo)
        self._own_changes: dict[tuple[str, str | None, int, int | None], None] = {}
        self.events_live = False  # change events arrive (freshness.py): the timestamp poll rests
        self.freshness: Any = None  # puterfs.fs.freshness.Freshness, set by the mount
        self._handles: dict[int, _Handle] = {}
        self._reserved_ahead: set[int] = set()  # DataCache._reserve
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        self._locks: dict[int, trio.Lock] = {}
        self._df: tuple[float, int, int] | None = None
        self._last_change: int | None = None
        self._meta_jobs: dict[int, Node] = {}  # write-back key (-inode) -> node whose attributes go up
        self._meta_restored: set[int] = set()  # inodes whose update came from the journal (restore_pending_meta)
        self._meta_journaled: set[int] = set()  # inodes with a pending_meta row not yet sent

    async def _settle_moves(self) -> None:
        """Moves the last daemon asked for without learning the outcome (killed meanwhile):
        the server's state says which way it went (the source gone and the destination
        there: moved, and the journal follows; else not), before any upload could recreate
        the old path beside the moved tree."""
        for old, new in self.cache.pending_moves():
            try:
                await self.remote.stat(old)
                moved = False
            except NotFound:
                try:
                    await self.remote.stat(new)
                    moved = True
                except NotFound:
                    moved = False
            if moved:
                log.info("the move of %s to %s was done on the server before the last stop; following it", old, new)
                self.cache.rename(old, new)
            self.cache.end_move(old, new)

    async def prepare(self) -> None:
        """Check the remote root and restore pending uploads from the journal."""
        root = await self.remote.stat("")
        if not root.is_dir:
            raise FsError(errno.ENOTDIR, f"{self.remote.root} is not a directory")
        r = self.table.root
        r.mtime_ns = (root.modified or int(time.time())) * 1_000_000_000
        r.ctime_ns = (root.created or root.modified or int(time.time())) * 1_000_000_000
        r.remote_fp = root.fingerprint
        for entry_id, session in self.cache.upload_sessions().items():
            e = self.cache.entries.get(entry_id)
            if e is not None and e.dirty:
                self._sessions[entry_id] = session  # resumed by the upload
            else:
                self._orphans.append(session)
                self.cache.save_upload_session(entry_id, None)
        await self._settle_moves()
        pending = self.cache.dirty_entries()
        for e in pending:
            self.queue.schedule(e.id, 0)
        if pending:
            log.info("resuming %d pending upload(s) from the cache journal", len(pending))
        if n := self.restore_pending_meta():
            log.info("resuming %d pending mode/mtime update(s) from the cache journal", n)
        if self.ns.ops:
            log.info("applying %d pending namespace operation(s) from the cache journal", len(self.ns.ops))

    @property
    def mutations(self) -> int:
        """Namespace changes of ours not on the server yet: handlers under way and journaled ops."""
        return self._mutations + len(self.ns.ops)

    @property
    def mutating(self) -> list[tuple[set[str], set[str]]]:
        """(folders, subtrees) of the namespace changes of ours not on the server yet: change
        events there wait (freshness.py), so an echo never lands before the rest of our
        changes are on the server. The handlers under way, and every journaled op."""
        return [*self._mutating_scopes, *self.ns.scopes()]

    async def release_all(self) -> None:
        """The kernel let go of the mount: a handle still open now will never be released
        (the kernel drops the RELEASE of the last close of a lazily detached mount), so
        release them all, which queues their dirty files as a last close does."""
        for fh in list(self._handles):
            await self._release(fh)

    async def shutdown(self) -> None:
        """Apply every pending namespace op and upload everything pending (used on unmount
        and SIGTERM)."""
        self.queue.flush_all_now()
        self.ns.retry_now()
        await self.ns.wait_all()
        await self.queue.wait_idle()
        await self.ns.wait_all()

    def statistics(self) -> dict[str, Any]:
        st = dict(self.queue.statistics())
        # every dirty file counts, also one still open for writing (not queued yet)
        st["pending"] = max(len(self.cache.dirty_entries()), int(st["pending"]))
        # and every namespace op (mkdir, rmdir, unlink, rename) not on the server yet
        st["namespace_pending"] = self.ns.pending()
        st["pending"] += self.ns.pending()
        if self.ns.last_error and not st.get("last_error"):
            st["last_error"] = self.ns.last_error
        st["failed_attempts"] = int(st.get("failed_attempts") or 0) + (1 if self.ns.attempts else 0)
        st["cache_bytes"] = self.cache.used_bytes()
        # what the start-up recovery of the cache journal did (docs/reliability.md)
        st["recovered"] = len(self.cache.recovered)
        st["lost_found"] = [dict(x) for x in self.cache.lost]
        return st

    def _lock(self, node: Node) -> trio.Lock:
        lock = self._locks.get(node.inode)
        if lock is None:
            lock = self._locks[node.inode] = trio.Lock()
        return lock

    def _node(self, inode: int) -> Node:
        node = self.table.get(inode)
        if node is None:
            raise FsError(errno.ENOENT, f"unknown inode {inode}")
        return node

    def _check_writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS, "mounted read-only")

    def _alloc_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.ai is not None:
            if self.ai.owns(parent_inode):
                return await self.ai.lookup(parent_inode, name, ctx)
            if parent_inode == pyfuse3.ROOT_INODE and name == self.ai.NAME:
                return self.ai.root_entry()
        return self._attr(await self._lookup(parent_inode, name))

    @fuse_errors
    async def forget(self, inode_list: Any) -> None:
        for inode, n in inode_list:
            node = self.table.get(inode)
            self.table.forget(inode, n)
            if node is not None and self.table.get(inode) is None:
                self._locks.pop(inode, None)
                self._release_unlinked(node)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        if self.ai is not None and self.ai.owns(inode):
            return await self.ai.getattr(inode, ctx)
        node = self._node(inode)
        await self._refresh_attr(node)
        return self._attr(node)

    @fuse_errors
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if self.ai is not None and self.ai.owns(inode):
            return await self.ai.setattr(inode, attr, fields, fh, ctx)
        node = self._node(inode)
        await self._setattr(node, attr, fields)
        return self._attr(node)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        now = trio.current_time()
        if self._df is None or now - self._df[0] > 10:
            try:
                used, capacity = await self.remote.df()
                self._df = (now, used, capacity)
            except PuterError as exc:
                if self._df is None:
                    raise
                log.debug("df failed (%s); using the last answer", exc)
        assert self._df is not None
        _, used, capacity = self._df
        s = pyfuse3.StatvfsData()
        bsize = 4096
        s.f_bsize = bsize
        s.f_frsize = bsize
        s.f_blocks = max(capacity, used) // bsize
        s.f_bfree = max(capacity - used, 0) // bsize
        s.f_bavail = s.f_bfree
        s.f_files = 1 << 32
        s.f_ffree = (1 << 32) - len(self.table.by_inode)
        s.f_favail = s.f_ffree
        s.f_namemax = NAME_MAX
        return s

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self.ai is not None and self.ai.owns(inode):
            return await self.ai.opendir(inode, ctx)
        node = self._node(inode)
        children = await self._children(node)
        entries = sorted(children.items())
        fh = self._alloc_fh()
        self._dirs[fh] = _DirHandle(node, entries)
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.readdir(fh, start_id, token)
        dh = self._dirs.get(fh)
        if dh is None:
            raise FsError(errno.EBADF)
        # offsets are positions in the snapshot taken at opendir: stable, O(n) overall
        # .ai is not listed: reachable by name only, so that tree walkers never enter it.
        entries = dh.entries
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            attr = self._attr(node)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                break

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.releasedir(fh)
        self._dirs.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if self.ai is not None and self.ai.owns_fh(fh):
            return None
        # the namespace ops below are journaled as they happen; this puts them on the disk
        await self._sync_journal()

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(await self._mkdir(parent_inode, name, mode, ctx.umask))

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._rmdir(parent_inode, name)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._unlink(parent_inode, name)

    @fuse_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self._rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise FsError(errno.EPERM, "Puter has no hard links")

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(await self._symlink(parent_inode, name, target))

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):
            fi, attr = await self._create(parent_inode, name, mode, os.O_WRONLY, ctx)
            await self._release(fi.fh)
            return attr
        raise FsError(errno.EPERM, "Puter cannot hold device nodes, FIFOs or sockets")

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self._readlink(self._node(inode))

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FsError(errno.ENOTSUP, "Puter has no extended attributes")

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # ENOSYS: the kernel stops asking (every getxattr(2) then gets ENOTSUP at once), so a
        # write(2) no longer costs a round trip for its security.capability check
        raise FsError(errno.ENOSYS, "Puter has no extended attributes")

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FsError(pyfuse3.ENOATTR)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.ai is not None and self.ai.owns(inode):
            return await self.ai.open(inode, flags, ctx)
        return await self._open(self._node(inode), flags)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.ai is not None and (self.ai.owns(parent_inode)):
            return await self.ai.create(parent_inode, name, mode, flags, ctx)
        self._refuse_ai(parent_inode, name)
        return await self._create(parent_inode, name, mode, flags, ctx)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.read(fh, off, size)
        return await self._read(fh, off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.write(fh, off, buf)
        return await self._write(fh, off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.flush(fh)
        h = self._handles.get(fh)
        if h is not None and h.node.entry is not None and h.node.entry.dirty:
            self.cache.save(h.node.entry)  # size and mtime reach the journal at every close()

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.fsync(fh, datasync)
        await self._fsync(fh, datasync)

    @fuse_errors
    async def release(self, fh: int) -> None:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.release(fh)
        await self._release(fh)

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True
