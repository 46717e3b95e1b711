"""pyfuse3 handlers: POSIX semantics on top of Puter's path-keyed, non-POSIX server.

Handlers only: caching lives in `cache`, uploads in `writeback`, the server in `remote`.
Every handler is wrapped by `fuse_errors` (puterfs/fs/errors.py), the one place where
exceptions become errno values, so no failed request can take the mount down.

Design notes are in docs/write-back.md and docs/inodes.md. In short:

* Listings are fetched once per directory and reused until the server's change timestamp
  moves (polled) or `listing_max_age` passes; lookups and getattr are answered from them,
  so `ls -l` costs one request per directory.
* File data goes to the local cache; a file is uploaded after its last close and a quiet
  period, at once on fsync. Namespace operations (mkdir, rmdir, unlink, rename) go to the
  server synchronously, with POSIX checks done here first (server section 11).
* Reads of uncached files fetch 1 MiB blocks with ranged requests, with read-ahead for
  sequential readers; a file is fetched whole only before it is modified.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from puterfs.client._errors import (
    AlreadyExists,
    AuthenticationError,
    BadRequest,
    NotEmpty,
    NotFound,
    PermissionDenied,
    PuterConnectionError,
    PuterError,
    QuotaExceeded,
)
from puterfs.fs.cache import BLOCK_SIZE, CacheEntry, CacheStore
from puterfs.fs.errors import FsError, fuse_errors
from puterfs.fs.freshness import content_changed, unverify_all
from puterfs.fs.freshness import verify as verify_version
from puterfs.fs.inodes import LINK_SUFFIX, InodeTable, Node
from puterfs.fs.remote import (
    Remote,
    RemoteEntry,
    conflict_name,
    join,
    posix_metadata,
    split,
    unlistable,
    upload_etag,
)
from puterfs.fs.writeback import WriteBackQueue

log = logging.getLogger(__name__)

NAME_MAX = 255


def _mutating(fn: Any) -> Any:
    """A handler that changes the namespace on the server: while one runs, change events
    wait (puterfs/fs/freshness.py), so the echo of our own change never lands half-way."""

    @functools.wraps(fn)
    async def wrapper(self: PuterOperations, *args: Any, **kw: Any) -> Any:
        self.mutations += 1
        try:
            return await fn(self, *args, **kw)
        finally:
            self.mutations -= 1

    return wrapper

SMALL_FILE = 256 * 1024  # files up to this size are uploaded together in one /batch request
EDIT_MAX = 1 << 20  # a change of a file the server has, up to this size, takes the edit lane
READAHEAD_BLOCKS = 8  # for sequential readers (8 MiB)


class _Handle:
    __slots__ = ("node", "writable", "flags", "next_off", "readahead")

    def __init__(self, node: Node, writable: bool, flags: int) -> None:
        self.node = node
        self.writable = writable
        self.flags = flags
        self.next_off = -1  # where a sequential reader reads next
        self.readahead = 1  # blocks fetched per request; doubles while the reader is sequential


class _HashingReader:
    """A file object for a streamed upload that records the MD5 of each complete pass over
    its `size` bytes (a retry re-reads from the start), i.e. exactly what the server may hold."""

    def __init__(self, f: Any, size: int) -> None:
        self._f = f
        self._size = size
        self._h = hashlib.md5()
        self._pos = 0
        self._valid = True
        self.complete_passes: list[str] = []

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self._f.fileno())

    def tell(self) -> int:
        return int(self._f.tell())

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        new = int(self._f.seek(pos, whence))
        if new != self._pos:
            self._h = hashlib.md5()
            self._valid = new == 0  # a pass that does not start at 0 is not a whole file
            self._pos = new
        return new

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._f.read(n)
        if self._valid:
            self._h.update(data)
        self._pos += len(data)
        if self._valid and self._pos == self._size:
            digest = self._h.hexdigest()
            if digest not in self.complete_passes:
                self.complete_passes.append(digest)
        return data


class _DirHandle:
    __slots__ = ("node", "entries")

    def __init__(self, node: Node, entries: list[tuple[str, Node]]) -> None:
        self.node = node
        self.entries = entries


def refused_for_good(exc: BaseException) -> bool:
    """Whether the server refuses this upload as it is (retrying the same bytes cannot help):
    too large for every route, a name or place it will not take, no permission. A full
    storage quota is not: space may be freed, and the upload is retried with backoff."""
    if isinstance(exc, AuthenticationError):
        return False  # the token; a new login fixes it
    if isinstance(exc, AlreadyExists):
        return "is a directory" in exc.message  # our own check: a directory in the way
    if isinstance(exc, QuotaExceeded):
        return exc.status == 413 or exc.code == "too_large"
    return isinstance(exc, (BadRequest, PermissionDenied))


class PuterOperations(pyfuse3.Operations):
    supports_dot_lookup = True
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
        )
        self.cache.reclaim = self._reclaim_space
        self._skipped_names: set[tuple[str, str]] = set()  # logged once each
        self.remote.on_reachable = self._server_back
        self._on_change = on_change or (lambda: None)
        # presigned uploads of large files: entry id -> saved session JSON (also in the journal)
        self._sessions: dict[int, str] = {}
        self._orphans: list[str] = []  # sessions of files gone or changed, to abort
        self.large_uploads: dict[int, tuple[int, int]] = {}  # entry id -> (done, total) bytes
        self.ai: Any = None  # puterfs.fs.aifiles.AiFiles, set by the mount
        self.epoch = 0  # bumped whenever the server's change timestamp moves
        self.mutations = 0  # namespace changes of ours under way (see _mutating)
        self.events_live = False  # change events arrive (freshness.py): the timestamp poll rests
        self.freshness: Any = None  # puterfs.fs.freshness.Freshness, set by the mount
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        self._locks: dict[int, trio.Lock] = {}
        self._df: tuple[float, int, int] | None = None
        self._last_change: int | None = None
        self._meta_jobs: dict[int, Node] = {}  # write-back key (-inode) -> node whose attributes go up

    # ------------------------------------------------------------------ start-up / shutdown

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
        pending = self.cache.dirty_entries()
        for e in pending:
            self.queue.schedule(e.id, 0)
        if pending:
            log.info("resuming %d pending upload(s) from the cache journal", len(pending))

    async def poll_changes(self, interval: float) -> None:
        """Watch the server's change timestamp; a move makes every listing stale."""
        while True:
            if self.events_live and not self.remote.suspect:  # the events say what changes
                await self._abort_orphans()
                await trio.sleep(interval)
                continue
            try:
                ts = await self.remote.last_change()
            except PuterError as exc:
                log.debug("change poll failed: %s", exc)
            else:
                if self._last_change is not None and ts != self._last_change:
                    self.epoch += 1
                    unverify_all(self)  # a same-size overwrite shows in no listing
                self._last_change = ts
            await self._abort_orphans()
            await trio.sleep(interval)

    def _server_back(self) -> None:
        """The poller reaches the server again after an outage: failed uploads go at once
        (not after their backoff) and listings are re-read."""
        self.epoch += 1
        self.queue.retry_now()

    async def _abort_orphans(self) -> None:
        """Abort the presigned sessions of uploads given up (file deleted, changed, renamed)."""
        while self._orphans:
            session = self._orphans[0]
            try:
                await self.remote.abort_upload(session)
            except PuterError as exc:
                log.debug("aborting an abandoned upload session failed (it expires anyway): %s", exc)
                return
            self._orphans.pop(0)

    async def release_all(self) -> None:
        """The kernel let go of the mount: a handle still open now will never be released
        (the kernel drops the RELEASE of the last close of a lazily detached mount), so
        release them all, which queues their dirty files as a last close does."""
        for fh in list(self._handles):
            await self._release(fh)

    async def shutdown(self) -> None:
        """Upload everything pending (used on unmount and SIGTERM)."""
        self.queue.flush_all_now()
        await self.queue.wait_idle()

    def failed_files(self) -> list[dict[str, Any]]:
        """Uploads the server refused as they are: path, its message, since (epoch seconds)."""
        out = []
        for key, reason, since in self.queue.failed():
            ent = self.cache.entries.get(key)
            if ent is not None:
                out.append({"path": ent.path, "reason": reason, "since": since})
        return out

    def large_upload_progress(self) -> list[dict[str, Any]]:
        out = []
        for key, (done, total) in self.large_uploads.items():
            ent = self.cache.entries.get(key)
            if ent is not None:
                out.append({"path": ent.path, "done": done, "total": total})
        return out

    def statistics(self) -> dict[str, Any]:
        st = dict(self.queue.statistics())
        # every dirty file counts, also one still open for writing (not queued yet)
        st["pending"] = max(len(self.cache.dirty_entries()), int(st["pending"]))
        st["cache_bytes"] = self.cache.used_bytes()
        # what the start-up recovery of the cache journal did (docs/reliability.md)
        st["recovered"] = len(self.cache.recovered)
        st["lost_found"] = [dict(x) for x in self.cache.lost]
        return st

    # ------------------------------------------------------------------ helpers

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

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.entry_timeout = self.attr_timeout
        a.attr_timeout = self.attr_timeout
        a.st_mode = node.mode
        a.st_nlink = self._nlink(node)
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        size = node.entry.size if (node.entry is not None and not node.is_dir) else node.size
        a.st_size = size
        a.st_blksize = 128 * 1024
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = node.atime_ns or node.mtime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns or node.mtime_ns
        return a

    def _nlink(self, node: Node) -> int:
        """POSIX link counts: a directory has 2 + one per subdirectory ("." and each ".."),
        a file 1 while it has a name, 0 once unlinked (still open)."""
        if not node.is_dir:
            return 1 if node.in_tree else 0
        subdirs = sum(1 for c in (node.children or {}).values() if c.is_dir)
        if node is self.table.root and self.ai is not None:
            subdirs += 1  # .ai
        return 2 + subdirs

    def _name(self, name: bytes, *, creating: bool) -> str:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, "name longer than 255 bytes")
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EINVAL if creating else errno.ENOENT, "name is not UTF-8") from None
        if creating and (text != text.rstrip() or "\x00" in text or text in (".", "..") or not text):
            # the server trims trailing whitespace on lookup: such a name could never be found again
            raise FsError(errno.EINVAL, f"the server cannot hold the name {text!r}")
        if creating and self.links and text.endswith(LINK_SUFFIX):
            # such a file is how a symlink is kept: it would turn into one (see --no-links)
            raise FsError(errno.EINVAL, f"names ending in {LINK_SUFFIX} are reserved for symbolic links")
        return text

    def _check_writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS, "mounted read-only")

    def _fresh(self, node: Node) -> bool:
        return (
            node.children is not None
            and node.listed_epoch == self.epoch
            and (trio.current_time() - node.listed_at) < self.listing_max_age
        )

    def _touch_dir(self, node: Node) -> None:
        """An entry was created or removed in directory `node`: its mtime moves, and is kept
        on the server (the server never changes a directory's own times)."""
        node.local_seq = self.table.next_seq()
        node.mtime_ns = node.ctime_ns = max(time.time_ns(), node.mtime_ns)
        self._posix_changed(node)

    # -- mode and mtime on the server (entry metadata, docs/inodes.md)

    def _posix_changed(self, node: Node) -> None:
        """`node`'s mode or mtime changed here: get it to the server, debounced. A dirty file's
        pending upload carries it (made to start over if one is in flight); anything else gets
        a metadata update (a /move onto itself) through the write-back queue under key -inode."""
        if node is self.table.root or not node.in_tree:
            return
        ent = node.entry
        if ent is not None and ent.dirty and not node.is_dir:
            ent.version += 1  # an upload in flight carries the old attributes: it must not count
            if node.writers == 0:
                self.queue.schedule(ent.id)
            return
        self._meta_jobs[-node.inode] = node
        self.queue.schedule(-node.inode)

    def _meta_pending(self, node: Node) -> bool:
        return self.queue.pending(-node.inode) or (node.entry is not None and node.entry.dirty and not node.is_dir)

    def _posix_metadata(self, mode: int, mtime_ns: int) -> dict[str, str]:
        return posix_metadata(None if stat.S_ISLNK(mode) else mode, mtime_ns)

    @_mutating
    async def _push_metadata(self, key: int) -> None:
        node = self._meta_jobs.pop(key, None)  # a change meanwhile puts it back
        if node is None or not node.in_tree or node is self.table.root:
            return
        try:
            await self._push_metadata_of(node)
        except BaseException:
            self._meta_jobs.setdefault(key, node)  # retried by the queue
            raise

    async def _push_metadata_of(self, node: Node) -> None:
        if node.entry is not None and node.entry.dirty and not node.is_dir:
            return  # its upload carries the attributes
        if node.remote_fp is None and not node.is_dir:
            return  # not on the server yet; its upload will carry them
        md = self._posix_metadata(node.mode, node.mtime_ns)
        path = node.path
        try:
            result = await self.remote.set_metadata(path, md, known=node.remote_meta, is_dir=node.is_dir)
        except NotFound:
            if node.in_tree and node.path != path:
                raise  # renamed meanwhile: retried under the new name
            return  # gone meanwhile
        node.remote_meta = result.metadata
        old = node.remote_fp
        node.remote_fp = result.fingerprint
        ent = node.entry
        if (ent is not None and ent.id in self.cache.entries and not ent.dirty and old is not None
                and (ent.base_uid, ent.base_size, ent.base_modified) == old):
            # the update bumped `modified`: the cached content is still the server's
            self.cache.set_base(ent, uid=result.uid, size=result.size, modified=result.modified, etag=ent.base_etag)
        if node.page_fp == ("remote", old):
            node.page_fp = ("remote", result.fingerprint)

    def _set_remote(self, node: Node, e: RemoteEntry) -> None:
        """Update `node` from what the server says about it.

        Mode and mtime come from the entry's metadata when it has them (else the mtime is the
        server's whole-second `modified`), unless changed here and not on the server yet.
        ctime never goes backwards, nor does a directory's mtime through a refresh (the
        server never moves a directory's own time when its entries change)."""
        fp = e.fingerprint
        fresh = node.remote_fp is None
        changed = not fresh and node.remote_fp != fp
        node.remote_fp = fp
        node.remote_meta = e.metadata
        srv_ctime = max(e.created or 0, e.modified or 0) * 1_000_000_000
        pending = self._meta_pending(node)
        if node.is_dir:
            if not pending:
                mt = e.mtime_ns
                if mt and (fresh or e.meta_mtime_ns is not None or mt > node.mtime_ns):
                    node.mtime_ns = mt
                if e.mode is not None and stat.S_ISDIR(e.mode):
                    node.mode = stat.S_IFDIR | stat.S_IMODE(e.mode)
            if fresh:
                node.ctime_ns = max(srv_ctime, node.mtime_ns)
            elif changed:  # changed elsewhere (our own changes set remote_fp as they land)
                node.ctime_ns = max(node.ctime_ns, srv_ctime)
            return
        ent = node.entry
        if ent is not None and not ent.dirty and ent.base_uid is not None and (ent.base_uid, ent.base_size, ent.base_modified) != fp:
            # the server's copy changed: the clean cached copy is stale
            if node.opens == 0:
                self.cache.delete(ent)
                node.entry = None
            changed = True
        if changed and node.is_link and (ent is None or not ent.dirty):
            node.link_target = None  # changed elsewhere: read it again
        if ent is None or not ent.dirty:
            node.size = e.size
            if not pending or changed:
                mt = e.mtime_ns
                if mt:
                    node.mtime_ns = mt
                    node.mtime_local = False
                if e.mode is not None and not stat.S_ISDIR(e.mode) and not stat.S_ISLNK(node.mode):
                    node.mode = stat.S_IFREG | stat.S_IMODE(e.mode)
                    if node.entry is not None and node.entry.mode != node.mode:
                        node.entry.mode = node.mode
                        self.cache.save(node.entry)
            if fresh:
                node.ctime_ns = max(srv_ctime, node.mtime_ns)
            elif changed:
                node.ctime_ns = max(node.ctime_ns, srv_ctime)

    def _node_for_entry(self, parent: Node, e: RemoteEntry) -> Node:
        path = join(parent.path, e.name)
        is_link = self._link_name(e) is not None
        node = self.table.by_path.get(path)
        if node is not None and (node.is_dir != e.is_dir or node.is_link != is_link):
            if node.entry is not None and node.entry.dirty:
                return node  # local data wins; the upload will meet the server's type
            self.table.detach(node)
            node = None
        if node is None:
            node = self.table.new(path, is_dir=e.is_dir, mode=(stat.S_IFLNK | 0o777) if is_link else None)
            if not e.is_dir:
                ent = self.cache.paths.get(path)
                if ent is not None:
                    node.entry = ent
                    if not is_link:
                        node.mode = stat.S_IFREG | stat.S_IMODE(ent.mode)
        self._set_remote(node, e)
        node.attr_epoch = self.epoch
        return node

    async def _children(self, dirnode: Node, *, use: bool = True) -> dict[str, Node]:
        if not dirnode.is_dir:
            raise FsError(errno.ENOTDIR)
        if use:
            dirnode.used_at = trio.current_time()  # recently used: re-listed in the background
        if self._fresh(dirnode):
            assert dirnode.children is not None
            return dirnode.children
        async with self._lock(dirnode):
            if self._fresh(dirnode):
                assert dirnode.children is not None
                return dirnode.children
            seq = self.table.next_seq()
            epoch = self.epoch
            try:
                entries = await self.remote.listdir(dirnode.path)
            except PuterError as exc:
                if dirnode.children is not None:
                    log.warning("listing %r failed (%s); serving the cached listing", dirnode.path or "/", exc)
                    return dirnode.children
                raise
            if not dirnode.in_tree:
                raise FsError(errno.ENOENT)
            self._apply_listing(dirnode, entries, seq)
            dirnode.listed_epoch = epoch
            dirnode.listed_at = trio.current_time()
            assert dirnode.children is not None
            return dirnode.children

    def _apply_listing(self, dirnode: Node, entries: list[RemoteEntry], seq: int) -> None:
        old = dirnode.children or {}
        new: dict[str, Node] = {}
        tombs = dirnode.tombstones or {}
        plain = {e.name for e in entries}
        for e in entries:
            bad = unlistable(e.name)
            if bad is not None:
                if (dirnode.path, e.name) not in self._skipped_names:
                    self._skipped_names.add((dirnode.path, e.name))
                    log.warning("%s: not listing the server entry %r: %s", dirnode.path or "/", e.name, bad)
                continue
            name = self._link_name(e)
            if name is None:
                name = e.name
            elif name in plain:
                continue  # a file of that name exists too: it wins, the link is not shown
            if tombs.get(name, 0) > seq:
                continue  # removed here after this listing was requested
            if dirnode is self.table.root and name == ".ai" and self.ai is not None:
                continue  # shadowed by the virtual .ai directory (docs/ai-files.md)
            cur = old.get(name)
            if cur is not None and cur.local_seq > seq:
                new[name] = cur  # changed here after the listing was requested
                continue
            new[name] = self._node_for_entry(dirnode, e)
        for name, node in old.items():
            if name in new:
                continue
            if node.local_seq > seq or (node.entry is not None and node.entry.dirty):
                new[name] = node  # created here, not on the server yet
            else:
                self.table.detach(node)
        # files whose upload is pending from an earlier run, or finished after this listing
        # was requested (the listing could not show them yet)
        prefix = dirnode.path + "/" if dirnode.path else ""
        for path, ent in self.cache.paths.items():
            if (ent.dirty or ent.uploaded_seq > seq) and path.startswith(prefix) and "/" not in path[len(prefix):]:
                name = path[len(prefix):]
                if stat.S_ISLNK(ent.mode) and name.endswith(LINK_SUFFIX):
                    name = name[: -len(LINK_SUFFIX)]
                if name not in new or new[name].entry is not ent:
                    node = self.table.by_path.get(path)
                    if node is None or node.is_dir:
                        node = self.table.new(path, is_dir=False, mode=ent.mode)
                    node.entry = ent
                    node.mode = ent.mode
                    node.mtime_ns = ent.mtime_ns
                    node.mtime_local = True
                    if not ent.dirty and ent.base_uid is not None:
                        node.remote_fp = (ent.base_uid, ent.base_size or 0, ent.base_modified)
                    new[name] = node
        dirnode.children = new
        if tombs:
            # a listing requested after a removal already reflects it
            dirnode.tombstones = {n: t for n, t in tombs.items() if t > seq} or None

    def _link_name(self, e: RemoteEntry) -> str | None:
        """The link name a server entry stands for (NAME.rclonelink -> NAME), else None."""
        if self.links and not e.is_dir and e.name.endswith(LINK_SUFFIX) and len(e.name) > len(LINK_SUFFIX):
            return e.name[: -len(LINK_SUFFIX)]
        return None

    async def _child(self, parent: Node, name: str) -> Node | None:
        return (await self._children(parent)).get(name)

    async def _refresh_attr(self, node: Node) -> None:
        if node.attr_epoch == self.epoch or node is self.table.root or not node.in_tree:
            return
        if node.entry is not None and (node.entry.dirty or node.opens):
            return
        parent = self.table.by_path.get(node.parent_path)
        if parent is None:
            return
        children = await self._children(parent)
        if children.get(node.display_name) is not node:
            if node.opens == 0 and node.lookups >= 0:
                raise FsError(errno.ENOENT, f"{node.path} is gone")
        node.attr_epoch = self.epoch

    # ------------------------------------------------------------------ cache data

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
            missing = ent.missing_blocks(off, size)
            if not missing:
                return
            last_block = (ent.size - 1) // BLOCK_SIZE
            first = missing[0]
            end = missing[-1]
            end = min(max(end, first + readahead - 1), last_block)
            # one ranged request for the run of missing blocks from `first`
            run_end = first
            while run_end + 1 <= end and (run_end + 1) not in ent.blocks:
                run_end += 1
            for start_block in range(first, run_end + 1, READAHEAD_BLOCKS):
                stop_block = min(start_block + READAHEAD_BLOCKS - 1, run_end)
                begin = start_block * BLOCK_SIZE
                length = min((stop_block + 1) * BLOCK_SIZE, ent.size) - begin
                data, etag = await self.remote.read_version(node.path, begin, length, size=ent.size)
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
                ent.complete = True
                ent.blocks.clear()
                self.cache.save(ent)
        # blocks after the run (not contiguous) are fetched by the next call
        if ent.missing_blocks(off, size):
            await self._fetch(node, off, size)

    async def _ensure_complete(self, node: Node) -> CacheEntry:
        ent = self._ensure_entry(node)
        if not ent.complete:
            await self._fetch(node, 0, ent.size, readahead=READAHEAD_BLOCKS)
            ent.complete = True
            ent.blocks.clear()
            self.cache.save(ent)
        return ent

    def _dirty(self, node: Node) -> CacheEntry:
        """The file's content is about to change. The journal says dirty first: if it cannot
        (a full cache disk), this raises and nothing in memory changed."""
        ent = node.entry
        assert ent is not None
        if not ent.dirty:
            self.cache.mark_dirty(ent)  # committed before the write returns
        ent.version += 1
        self.queue.changed(ent.id)
        node.local_seq = self.table.next_seq()
        return ent

    def _reclaim_space(self) -> int:
        """The cache disk is full: drop every clean cached file nobody has open."""
        keep = {n.entry.id for n in self.table.by_inode.values() if n.entry is not None and n.opens}
        freed = self.cache.evict(0, keep)
        if freed:
            for n in self.table.by_inode.values():
                if n.entry is not None and n.entry.id not in self.cache.entries:
                    self._close_fd(n)
                    n.entry = None
            log.warning("the cache disk is full: dropped %d bytes of clean cached data", freed)
        return freed

    def _pwrite(self, node: Node, data: bytes, off: int) -> int:
        """Write into the cache file; on a full disk free clean cached data once, then ENOSPC."""
        try:
            return os.pwrite(self._fd(node), data, off)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not self._reclaim_space():
                log.error("the cache disk is full: %s", exc)
                raise OSError(errno.ENOSPC, "the cache disk is full") from None
        return os.pwrite(self._fd(node), data, off)

    def _maybe_evict(self) -> None:
        keep = {n.entry.id for n in self.table.by_inode.values() if n.entry is not None and (n.opens or n.entry.dirty)}
        freed = self.cache.evict(self.cache_size, keep)
        if freed:
            for n in self.table.by_inode.values():
                if n.entry is not None and n.entry.id not in self.cache.entries:
                    n.entry = None
            log.debug("cache: evicted %d bytes", freed)

    # ------------------------------------------------------------------ uploads

    def _is_small(self, key: int) -> bool:
        ent = self.cache.entries.get(key)
        return ent is not None and ent.size <= SMALL_FILE and ent.base_uid is None

    def _is_edit(self, key: int) -> bool:
        """A small change of a file the server has: the edit lane (never behind a tree upload)."""
        ent = self.cache.entries.get(key)
        return ent is not None and ent.base_uid is not None and ent.size <= EDIT_MAX

    def _forget_session(self, key: int, *, abort: bool = True) -> None:
        session = self._sessions.pop(key, None)
        self.large_uploads.pop(key, None)
        if session is None:
            return
        if key in self.cache.entries:
            self.cache.save_upload_session(key, None)
        if abort:
            self._orphans.append(session)

    def _streamed(self, key: int) -> bool:
        """Whether an upload of `key` streams from the cache file (so a change must cancel it);
        small files are read into memory first and their upload may finish."""
        ent = self.cache.entries.get(key)
        return ent is not None and ent.size > SMALL_FILE

    async def _attempt(self, entries: list[CacheEntry], coro: Any, md5s: list[str]) -> Any:
        """Run one upload attempt, keeping track of what may have reached the server: the MD5
        of each file's content is journaled first, so that after a crash or a lost answer a
        server copy with that content is known to be ours (not another client's)."""
        started = time.time()
        try:
            for ent, md5 in zip(entries, md5s, strict=True):
                self.cache.note_attempt(ent, md5)
        except BaseException:
            coro.close()
            raise
        for ent in entries:
            ent.maybe_remote = True
            ent.seen_fps.clear()
        try:
            return await coro
        except BaseException as exc:
            if not isinstance(exc, Exception) or isinstance(exc, PuterConnectionError):
                # cancelled or cut off: the server may or may not have it
                for ent in entries:
                    if ent.uncertain_since is None:
                        ent.uncertain_since = started
            raise

    def _node_of_entry(self, ent: CacheEntry) -> Node | None:
        node = self.table.by_path.get(ent.path)
        return node if node is not None and node.entry is ent else None

    def _uploaded(self, ent: CacheEntry, version: int, result: RemoteEntry, etag: str | None = None) -> None:
        ent.uncertain_since = None
        ent.uploaded_seq = self.table.next_seq()  # listings requested before now may lack it
        if ent.id not in self.cache.entries:
            return
        etag = upload_etag(etag, result.size) if etag is not None else None
        # its change event is still to come, unless it came before this answer
        ent.echo_due = None if result.fingerprint in ent.seen_fps else result.fingerprint
        ent.seen_fps.clear()
        ent.unverified = False
        if ent.version == version:
            self.cache.mark_clean(ent, uid=result.uid, size=result.size, modified=result.modified, etag=etag)
        else:
            # the server has an older version; remember it as the base of the next upload
            self.cache.set_base(ent, uid=result.uid, size=result.size, modified=result.modified, etag=etag)
        node = self._node_of_entry(ent)
        if node is not None:
            node.local_seq = ent.uploaded_seq
            node.remote_fp = result.fingerprint
            node.remote_meta = result.metadata
            node.attr_epoch = self.epoch
            node.page_fp = ("remote", result.fingerprint) if node.page_fp is not None else None

    async def _upload(self, keys: Any) -> dict[int, BaseException | None]:
        if len(keys) > 1 or any(not self._is_edit(k) and not self.queue.awaited(k) for k in keys):
            # bulk (a tree being written, large files): reads and edits go first
            with self.remote.background():
                return await self._upload_keys(keys)
        return await self._upload_keys(keys)

    async def _upload_keys(self, keys: Any) -> dict[int, BaseException | None]:
        results: dict[int, BaseException | None] = {}
        batch: list[CacheEntry] = []
        for key in keys:
            if key < 0:  # a metadata update (see _posix_changed)
                try:
                    await self._push_metadata(key)
                    results[key] = None
                except PuterError as exc:
                    results[key] = exc
                continue
            ent = self.cache.entries.get(key)
            if ent is None or not ent.dirty:
                results[key] = None
                continue
            if len(keys) > 1 and self._is_small(key):
                batch.append(ent)
                continue
            try:
                await self._upload_one(ent)
                results[key] = None
            except PuterError as exc:
                results[key] = exc
        if batch:
            results.update(await self._upload_batch(batch))
        return results

    async def _upload_batch(self, batch: list[CacheEntry]) -> dict[int, BaseException | None]:
        items = []
        versions = []
        metadata = []
        md5s = []
        for ent in batch:
            with self.cache.open_file(ent.id) as f:
                data = f.read()
            items.append((ent.path, data))
            md5s.append(hashlib.md5(data).hexdigest())
            versions.append(ent.version)
            metadata.append(self._posix_metadata(ent.mode, ent.mtime_ns))
        log.debug("uploading %d small files in one request", len(items))
        outcome = await self._attempt(
            batch, self.remote.upload_many(items, overwrite=False, metadata=metadata), md5s
        )
        results: dict[int, BaseException | None] = {}
        for ent, version, md5, res in zip(batch, versions, md5s, outcome, strict=True):
            if isinstance(res, BaseException) and refused_for_good(res) and len(batch) > 1:
                # one file the server refuses must not fail the others: on its own it fails alone
                try:
                    await self._upload_one(ent)
                    results[ent.id] = None
                except PuterError as exc:
                    results[ent.id] = exc
            elif isinstance(res, AlreadyExists):
                # someone created the name meanwhile, or an earlier attempt of ours got through
                try:
                    await self._upload_one(ent)
                    results[ent.id] = None
                except PuterError as exc:
                    results[ent.id] = exc
            elif isinstance(res, BaseException):
                results[ent.id] = res
            else:
                self._uploaded(ent, version, res, md5)
                results[ent.id] = None
        return results

    async def _server_md5(self, path: str, size: int) -> str:
        """The MD5 of the server's copy of `path` (downloaded in ranged pieces)."""
        h = hashlib.md5()
        step = 8 * BLOCK_SIZE
        for off in range(0, size, step):
            h.update(await self.remote.read(path, off, min(step, size - off), size=size))
        return h.hexdigest()

    def _local_md5(self, ent: CacheEntry) -> tuple[str, bytes | None]:
        """MD5 of the cache file, and its bytes when it is small enough to upload as a snapshot."""
        with self.cache.open_file(ent.id) as f:
            if ent.size <= SMALL_FILE:
                data = f.read()
                return hashlib.md5(data).hexdigest(), data
            h = hashlib.md5()
            while chunk := f.read(BLOCK_SIZE):
                h.update(chunk)
            return h.hexdigest(), None

    async def _upload_one(self, ent: CacheEntry) -> None:
        version = ent.version
        path = ent.path
        try:
            current: RemoteEntry | None = await self.remote.stat(path)
        except NotFound:
            current = None
        if current is not None and current.is_dir:
            raise AlreadyExists(f"{path} is a directory on the server", code="conflict")
        md5, snapshot = self._local_md5(ent)
        base = (ent.base_uid, ent.base_size, ent.base_modified) if ent.base_uid is not None else None
        changed = current is not None and current.fingerprint != base
        if current is not None and not changed and ent.base_etag is not None:
            # the entry cannot show a same-size overwrite within the same second; its version can
            theirs_version = await self.remote.version(path, current.size)
            changed = theirs_version is not None and theirs_version != ent.base_etag
            if changed:
                log.info("%s: the server's version is %s, ours is based on %s", path, theirs_version, ent.base_etag)
        if current is not None and changed:
            maybe_ours = current.size == ent.size or bool(ent.sent_md5)
            theirs = await self._server_md5(path, current.size) if maybe_ours else None
            if theirs == md5:
                # an earlier attempt of ours got through but its answer was lost
                self._uploaded(ent, version, current, md5)
                return
            if ent.path != path:
                return  # renamed while we looked; the rename rescheduled it
            if theirs in ent.sent_md5:
                # an attempt of ours whose outcome we never learned (an older version of our
                # data) is what the server holds: not another client's edit
                log.info("%s: the server holds an interrupted upload of ours; replacing it", path)
                current = None
        if current is not None and changed:
            log.debug("%s: server %s, ours based on %s", path, current.fingerprint, base)
            # the server's copy changed while we had local edits: keep both
            parent, name = split(path)
            keep_as = join(parent, conflict_name(name, time.time()))
            log.warning("conflict on %s: the server's version is kept as %s", path, keep_as)
            await self.remote.move(path, keep_as, overwrite=False)
            self.epoch += 1  # the conflict copy must show up in listings
        if self.remote.prefers_presign(ent.size):
            md = self._posix_metadata(ent.mode, ent.mtime_ns)
            result = await self._upload_large(ent, path, version, md, md5)
            self._uploaded(ent, version, result, md5)
            return
        with self.cache.open_file(ent.id) as f:
            # small files go up as a snapshot (a write meanwhile need not cancel the upload);
            # a streamed one hashes what it really sends (the file may change under it)
            source: Any = io.BytesIO(snapshot) if snapshot is not None else _HashingReader(f, ent.size)
            md = self._posix_metadata(ent.mode, ent.mtime_ns)
            try:
                result = await self._attempt(
                    [ent], self.remote.upload(path, source, ent.size, overwrite=True, metadata=md), [md5]
                )
            finally:
                if isinstance(source, _HashingReader):
                    for sent in source.complete_passes:
                        if sent != md5 and ent.id in self.cache.entries:
                            with contextlib.suppress(OSError):
                                self.cache.note_attempt(ent, sent)  # torn by a change: still ours
        self._uploaded(ent, version, result, md5)

    async def _upload_large(
        self, ent: CacheEntry, path: str, version: int, metadata: dict[str, Any] | None, md5: str
    ) -> RemoteEntry:
        """A large file through the presigned flow, its session kept in the journal so that a
        daemon stopped halfway resumes at the next mount (or starts over if it expired). A saved
        session counts only for the same content (its MD5) and the same name."""
        stamp = md5
        saved = self._sessions.get(ent.id)
        session = None
        if saved is not None:
            try:
                record = json.loads(saved)
                if record.get("stamp") == stamp and record.get("path") == path:
                    session = record["session"]
            except (ValueError, KeyError, TypeError):
                pass
            if session is None:
                log.info("%s: its saved upload session is for other content or another name; starting over", path)
                self._forget_session(ent.id)  # abort it
            else:
                log.info("%s: resuming its upload", path)

        def progress(session_json: str, done: int, total: int) -> None:
            record = json.dumps({"stamp": stamp, "path": path, "session": session_json})
            if ent.id in self.cache.entries:
                self._sessions[ent.id] = record
                self.cache.save_upload_session(ent.id, record)
            self.large_uploads[ent.id] = (done, total)
            self._on_change()

        self.large_uploads[ent.id] = (0, ent.size)
        try:
            with self.cache.open_file(ent.id) as f:
                result = await self._attempt(
                    [ent],
                    self.remote.upload_large(
                        path, f, ent.size, session=session, on_progress=progress, metadata=metadata
                    ),
                    [md5],
                )
        except BaseException as exc:
            gone = ent.id not in self.cache.entries or ent.path != path or ent.version != version
            if gone:
                self._forget_session(ent.id)  # abandoned: its content or name changed
            elif isinstance(exc, PuterError) and refused_for_good(exc):
                self._forget_session(ent.id)
            else:
                self.large_uploads.pop(ent.id, None)  # kept in the journal: resumed next time
            raise
        self._forget_session(ent.id, abort=False)
        return result

    # ------------------------------------------------------------------ lookup & attributes

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.ai is not None:
            if self.ai.owns(parent_inode):
                return await self.ai.lookup(parent_inode, name, ctx)
            if parent_inode == pyfuse3.ROOT_INODE and name == self.ai.NAME:
                return self.ai.root_entry()
        parent = self._node(parent_inode)
        if name == b".":
            node = parent
        elif name == b"..":
            node = self.table.by_path.get(parent.parent_path, self.table.root) if parent.path else parent
        else:
            text = self._name(name, creating=False)
            found = await self._child(parent, text)
            if found is None:
                raise FsError(errno.ENOENT)
            node = found
        node.lookups += 1
        return self._attr(node)

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
        if fields.update_uid and attr.st_uid not in (self.uid, 0xFFFFFFFF, -1):
            raise FsError(errno.EPERM, "files on Puter belong to the mounting user")
        if fields.update_gid and attr.st_gid not in (self.gid, 0xFFFFFFFF, -1):
            raise FsError(errno.EPERM, "files on Puter belong to the mounting user's group")
        if fields.update_size:
            self._check_writable()
            if node.is_dir:
                raise FsError(errno.EISDIR)
            await self._truncate(node, attr.st_size)
            if node.writers == 0 and node.entry is not None:
                self.queue.schedule(node.entry.id)
        now = time.time_ns()
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
            if node.entry is not None:
                node.entry.mode = node.mode
                self.cache.save(node.entry)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
            node.mtime_local = True
            if node.entry is not None:
                node.entry.mtime_ns = attr.st_mtime_ns
                self.cache.save(node.entry)
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        node.ctime_ns = max(now, node.ctime_ns)
        if fields.update_mode or fields.update_mtime:
            self._check_writable()
            self._posix_changed(node)
        return self._attr(node)

    async def _truncate(self, node: Node, size: int) -> None:
        if size < 0:
            raise FsError(errno.EINVAL)
        if size == 0:
            ent = node.entry
            if ent is None or ent.id not in self.cache.entries:
                ent = self._ensure_entry(node)
            ent.complete = True
            ent.blocks.clear()
        else:
            ent = await self._ensure_complete(node)
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

    # ------------------------------------------------------------------ directories

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
        return None  # directory operations are synchronous with the server

    @fuse_errors
    @_mutating
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._refuse_ai(parent_inode, name)
        self._check_writable()
        parent = self._node(parent_inode)
        text = self._name(name, creating=True)
        if await self._child(parent, text) is not None:
            raise FsError(errno.EEXIST)
        path = join(parent.path, text)
        e = await self.remote.mkdir(path)
        node = self.table.new(path, is_dir=True, mode=stat.S_IFDIR | (mode & ~ctx.umask & 0o7777))
        self._set_remote(node, e)
        node.children = {}
        node.listed_epoch = self.epoch
        node.listed_at = trio.current_time()
        node.local_seq = self.table.next_seq()
        assert parent.children is not None
        parent.children[text] = node
        self._touch_dir(parent)
        if stat.S_IMODE(node.mode) != 0o755:
            self._posix_changed(node)  # the server's directories have no mode: keep this one's
        node.lookups += 1
        return self._attr(node)

    async def _existing(self, parent_inode: int, name: bytes) -> tuple[Node, str, Node]:
        """(parent, name, node) of an entry about to be removed; ENOENT if there is none."""
        self._refuse_ai(parent_inode, name)
        self._check_writable()
        parent = self._node(parent_inode)
        text = self._name(name, creating=False)
        node = await self._child(parent, text)
        if node is None:
            raise FsError(errno.ENOENT)
        return parent, text, node

    @fuse_errors
    @_mutating
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, text, node = await self._existing(parent_inode, name)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if await self._children(node):
            raise FsError(errno.ENOTEMPTY)
        try:
            await self.remote.delete(node.path, recursive=False)
        except NotFound:
            pass
        except NotEmpty:
            node.listed_epoch = -1  # something appeared on the server meanwhile
            raise
        self._remove_child(parent, text, node)

    def _tombstone(self, parent: Node, name: str) -> None:
        if parent.tombstones is None:
            parent.tombstones = {}
        parent.tombstones[name] = self.table.next_seq()

    def _remove_child(self, parent: Node, name: str, node: Node) -> None:
        if parent.children is not None and parent.children.get(name) is node:
            del parent.children[name]
        self._tombstone(parent, name)
        self._touch_dir(parent)
        self.table.detach(node)
        self._release_unlinked(node)

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

    def _delete_entry(self, node: Node) -> None:
        """Delete the node's cache entry and its data file."""
        assert node.entry is not None
        self.cache.delete(node.entry)
        node.entry = None
        self._close_fd(node)

    def _refuse_ai(self, parent_inode: int, name: bytes | None = None) -> None:
        if self.ai is None:
            return
        if self.ai.owns(parent_inode) or (parent_inode == pyfuse3.ROOT_INODE and name == self.ai.NAME):
            raise FsError(errno.EPERM, ".ai/ holds fixed control files")

    # ------------------------------------------------------------------ unlink / rename

    @fuse_errors
    @_mutating
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent, text, node = await self._existing(parent_inode, name)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        await self._delete_file(parent, text, node)

    async def _delete_file(self, parent: Node, name: str, node: Node) -> None:
        if node.opens > 0 and node.remote_fp is not None:
            await self._ensure_complete(node)  # an open file stays readable after unlink
        ent = node.entry
        if ent is not None:
            await self._quiesce([ent])  # no upload may recreate it while we delete
        if node.remote_fp is not None or (ent is not None and ent.maybe_remote):
            try:
                await self.remote.delete(node.path, recursive=False)
            except NotFound:
                pass
            except BaseException:
                if ent is not None and ent.dirty and node.writers == 0:
                    self.queue.schedule(ent.id)  # still ours to upload
                raise
        self._discard_data(node)
        node.remote_fp = None
        self._remove_child(parent, name, node)

    async def _quiesce(self, entries: list[CacheEntry]) -> None:
        """Before a path changes on the server: no upload of `entries` may be in flight.
        A small (snapshot) upload in flight is let land, a streamed one is cancelled (the
        maybe_remote bookkeeping covers it); no new upload starts until they are scheduled again."""
        for e in entries:
            if self._streamed(e.id):
                self.queue.changed(e.id)
            else:
                self.queue.hold(e.id)
        for e in entries:
            await self.queue.wait_settled(e.id)

    def _discard_data(self, node: Node) -> None:
        """A file leaves the namespace: drop its upload; keep its bytes for open descriptors."""
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
            self._delete_entry(node)

    @fuse_errors
    @_mutating
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._refuse_ai(parent_inode_old, name_old)
        self._refuse_ai(parent_inode_new, name_new)
        self._check_writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        old_parent = self._node(parent_inode_old)
        new_parent = self._node(parent_inode_new)
        old_name = self._name(name_old, creating=False)
        new_name = self._name(name_new, creating=True)
        node = await self._child(old_parent, old_name)
        if node is None:
            raise FsError(errno.ENOENT)
        if not new_parent.is_dir:
            raise FsError(errno.ENOTDIR)
        new_path = join(new_parent.path, new_name + (LINK_SUFFIX if node.is_link else ""))
        if new_path == node.path:
            return
        if node.is_link and len((new_name + LINK_SUFFIX).encode()) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"a link is kept as NAME{LINK_SUFFIX}: {new_name!r} is too long")
        if node.is_dir and (new_path + "/").startswith(node.path + "/"):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        target = await self._child(new_parent, new_name)
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if node.is_dir and not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise FsError(errno.EISDIR)
            if target.is_dir and await self._children(target):
                raise FsError(errno.ENOTEMPTY)
            if target.path != new_path:
                # a link replaced by a file or the other way round: they are kept under different
                # names on the server (NAME.rclonelink), so the old one goes first, as rename(2)
                # replaces it
                await self._delete_file(new_parent, new_name, target)
                target = None

        # uploads of anything under the source must not run while paths change
        moving = [e for p, e in self.cache.paths.items() if e.dirty and (p == node.path or p.startswith(node.path + "/"))]
        if target is not None and target.entry is not None and target.entry.dirty:
            moving.append(target.entry)
        await self._quiesce(moving)
        try:
            await self._rename_remote(node, target, new_path)
        finally:
            for e in moving:
                n = self._node_of_entry(e)
                if e.id in self.cache.entries and e.dirty and (n is None or n.writers == 0):
                    self.queue.schedule(e.id)

        old_path = node.path
        if target is not None:
            self._drop_target(new_parent, new_name, target)
        self.cache.rename(old_path, new_path)
        self.table.rename(node, new_path)
        if old_parent.children is not None and old_parent.children.get(old_name) is node:
            del old_parent.children[old_name]
        self._tombstone(old_parent, old_name)
        if new_parent.children is not None:
            new_parent.children[new_name] = node
        node.local_seq = self.table.next_seq()
        node.ctime_ns = time.time_ns()
        self._touch_dir(old_parent)
        self._touch_dir(new_parent)

    async def _rename_remote(self, node: Node, target: Node | None, new_path: str) -> None:
        target_remote = target is not None and (
            target.remote_fp is not None or (target.entry is not None and target.entry.maybe_remote)
        )
        if node.remote_fp is not None or (node.entry is not None and node.entry.maybe_remote):
            try:
                result = await self.remote.move(node.path, new_path, overwrite=target_remote)
            except NotFound:
                if node.is_dir or node.entry is None or not node.entry.dirty:
                    raise
                # not on the server (after all); our dirty copy goes up under the new name
                node.remote_fp = None
                node.entry.base_uid = node.entry.base_size = node.entry.base_modified = None
                self.cache.save(node.entry)
            else:
                old_fp = node.remote_fp
                node.remote_fp = result.fingerprint
                node.remote_meta = result.metadata
                ent = node.entry
                if ent is not None and ent.id in self.cache.entries and ent.base_uid is not None and (
                    (ent.base_uid, ent.base_size, ent.base_modified) == old_fp
                ):
                    # a move bumps `modified` on the server: our base is the moved copy, not
                    # another client's edit (else the next upload would see a conflict)
                    self.cache.set_base(ent, uid=result.uid, size=result.size, modified=result.modified,
                                        etag=ent.base_etag)
                if node.page_fp == ("remote", old_fp):
                    node.page_fp = ("remote", result.fingerprint)
                return
        if target_remote:
            # the source exists only here and replaces what the server holds at the new name:
            # that goes now (as rename(2) replaces it), our upload recreates the name later
            try:
                await self.remote.delete(new_path, recursive=False)
            except NotFound:
                pass

    def _drop_target(self, parent: Node, name: str, target: Node) -> None:
        self._discard_data(target)
        if parent.children is not None and parent.children.get(name) is target:
            del parent.children[name]
        target.remote_fp = None
        self.table.detach(target)

    # ------------------------------------------------------------------ things Puter cannot hold

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise FsError(errno.EPERM, "Puter has no hard links")

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """A link is a small file NAME.rclonelink holding the target, uploaded like any file."""
        if not self.links:
            raise FsError(errno.EPERM, "symbolic links are turned off (--no-links)")
        self._refuse_ai(parent_inode, name)
        self._check_writable()
        parent = self._node(parent_inode)
        text = self._name(name, creating=True)
        if len((text + LINK_SUFFIX).encode()) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"a link is kept as NAME{LINK_SUFFIX}: {text!r} is too long")
        if not target:
            raise FsError(errno.ENOENT)
        if await self._child(parent, text) is not None:
            raise FsError(errno.EEXIST)
        path = join(parent.path, text + LINK_SUFFIX)
        node = self.table.new(path, is_dir=False, mode=stat.S_IFLNK | 0o777)
        node.link_target = bytes(target)
        ent = node.entry = self.cache.create(path, mode=node.mode, mtime_ns=node.mtime_ns)
        self._dirty(node)
        with open(self.cache.data_path(ent.id), "r+b") as f:
            f.write(node.link_target)
        ent.size = node.size = len(node.link_target)
        self.cache.save(ent)
        assert parent.children is not None
        parent.children[text] = node
        self._touch_dir(parent)
        node.lookups += 1
        self.queue.schedule(ent.id)
        return self._attr(node)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):
            fi, attr = await self._create(parent_inode, name, mode, os.O_WRONLY, ctx)
            await self._release(fi.fh)
            return attr
        raise FsError(errno.EPERM, "Puter cannot hold device nodes, FIFOs or sockets")

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if not node.is_link:
            raise FsError(errno.EINVAL)
        if node.link_target is None:
            ent = await self._ensure_complete(node)
            with open(self.cache.data_path(ent.id), "rb") as f:
                node.link_target = f.read()
        return node.link_target

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FsError(errno.ENOTSUP, "Puter has no extended attributes")

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise FsError(pyfuse3.ENOATTR)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FsError(pyfuse3.ENOATTR)

    # ------------------------------------------------------------------ files

    def _alloc_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

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
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=False)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.ai is not None and self.ai.owns(inode):
            return await self.ai.open(inode, flags, ctx)
        node = self._node(inode)
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

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.ai is not None and (self.ai.owns(parent_inode)):
            return await self.ai.create(parent_inode, name, mode, flags, ctx)
        self._refuse_ai(parent_inode, name)
        return await self._create(parent_inode, name, mode, flags, ctx)

    async def _create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_writable()
        parent = self._node(parent_inode)
        text = self._name(name, creating=True)
        existing = await self._child(parent, text)
        if existing is not None:
            if flags & os.O_EXCL or existing.is_link:
                raise FsError(errno.EEXIST)
            if existing.is_dir:
                raise FsError(errno.EISDIR)
            if flags & os.O_TRUNC:
                await self._truncate(existing, 0)
            existing.lookups += 1
            return self._open_handle(existing, flags), self._attr(existing)
        path = join(parent.path, text)
        perm = stat.S_IFREG | (mode & ~ctx.umask & 0o7777)
        ent = self.cache.create(path, mode=perm, mtime_ns=time.time_ns())
        try:
            self.cache.mark_dirty(ent)  # journal first: a full disk fails the create (ENOSPC)
        except BaseException:
            self.cache.delete(ent)
            raise
        node = self.table.new(path, is_dir=False, mode=perm)
        node.mtime_ns = ent.mtime_ns
        node.entry = ent
        self._dirty(node)
        assert parent.children is not None
        parent.children[text] = node
        self._touch_dir(parent)
        node.lookups += 1
        fi = self._open_handle(node, flags)
        if (flags & os.O_ACCMODE) not in (os.O_WRONLY, os.O_RDWR):
            self.queue.schedule(node.entry.id)
        return fi, self._attr(node)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.read(fh, off, size)
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
        if ent.missing_blocks(off, size):
            if off == h.next_off:
                h.readahead = min(h.readahead * 2, READAHEAD_BLOCKS)
            else:
                h.readahead = 1
            await self._fetch(node, off, size, readahead=h.readahead)
            if off >= ent.size:
                return b""  # the server's new version is shorter
            size = min(size, ent.size - off)
        self.cache.touch(ent)
        data = os.pread(self._fd(node), size, off)
        h.next_off = off + len(data)
        return data

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.write(fh, off, buf)
        h = self._handles.get(fh)
        if h is None or not h.writable:
            raise FsError(errno.EBADF)
        node = h.node
        ent = await self._ensure_complete(node)
        self._dirty(node)
        n = self._pwrite(node, buf, off)
        if off + n > ent.size:
            ent.size = off + n
        node.size = ent.size
        node.mtime_ns = node.ctime_ns = ent.mtime_ns = time.time_ns()
        node.mtime_local = True
        return n

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
        h = self._handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        node = h.node
        ent = node.entry
        if ent is None or not ent.dirty or not node.in_tree:
            return
        # durable on the local disk: the data, then the journal row (and the directories)
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, self._fd(node))
        self.cache.save(ent)
        await trio.to_thread.run_sync(self.cache.sync_entry, ent)
        if self.sync_uploads:
            await self.queue.upload_now(ent.id)  # and on the server (its own lane)
        else:
            self.queue.upload_soon(ent.id)  # the upload follows in the background

    @fuse_errors
    async def release(self, fh: int) -> None:
        if self.ai is not None and self.ai.owns_fh(fh):
            return await self.ai.release(fh)
        await self._release(fh)

    async def _release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.opens -= 1
        if h.writable:
            node.writers -= 1
        ent = node.entry
        if h.writable and ent is not None and ent.dirty and node.writers == 0 and node.in_tree:
            # only a writer's last close starts the quiet period: a reader closing a dirty
            # file again and again must not postpone its upload
            self.cache.save(ent)
            self.queue.schedule(ent.id)
        if node.opens == 0:
            self._close_fd(node)
            if not node.in_tree:
                self._release_unlinked(node)
                self.table.maybe_drop(node)
            else:
                self._maybe_evict()

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True


    # ------------------------------------------------------------------ for the AI files

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
