"""The listing cache: each directory's entries as the server last listed them, and the
attributes the kernel is answered with (docs/architecture.md, "The filesystem modules").

A mixin of `PuterOperations` (puterfs/fs/operations.py): it works on the operations' inode
table, epoch and remote, and is never used on its own."""

from __future__ import annotations

import errno
import logging
import math
import stat

import pyfuse3
import trio

from puterfs.client._errors import (
    NotFound,
    PuterError,
)
from puterfs.fs.errors import FsError
from puterfs.fs.freshness import unverify_all
from puterfs.fs.inodes import LINK_SUFFIX, Node
from puterfs.fs.remote import RemoteEntry, join, unlistable

log = logging.getLogger(__name__)

STALE_WAIT = 2.0  # a listing refresh slower than this: cached attributes answer meanwhile



class ListingCache:
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

    def _fresh(self, node: Node) -> bool:
        return (
            node.children is not None
            and node.listed_epoch == self.epoch
            and (trio.current_time() - node.listed_at) < self.listing_max_age
        )

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
                # while the events are live they say what changed: the probe only checked
                # that the server answers (a retried request made it suspect); re-reading
                # every listing for our own changes would spend the readdir budget
                if self._last_change is not None and ts != self._last_change and not self.events_live:
                    self.epoch += 1
                    # a same-size overwrite shows in no listing: the files it may have hit
                    # (last modified no earlier than the second before these changes) check
                    # their version before their next use
                    unverify_all(self, since=self._last_change // 1000 - 1)
                self._last_change = ts
            await self._abort_orphans()
            await trio.sleep(interval)

    def _server_back(self) -> None:
        """The poller reaches the server again after an outage: failed uploads go at once
        (not after their backoff) and listings are re-read."""
        self.epoch += 1
        self.queue.retry_now()
        self.ns.retry_now()

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

    async def _children(self, dirnode: Node, *, use: bool = True, stale_ok: bool = False) -> dict[str, Node]:
        """The listing of `dirnode`, read again when stale. With `stale_ok` (the attributes of
        an entry that is cached), a refresh slower than STALE_WAIT answers the cached listing
        and goes on in the background."""
        if not dirnode.is_dir:
            raise FsError(errno.ENOTDIR)
        if use:
            dirnode.used_at = trio.current_time()  # recently used: re-listed in the background
        if self._fresh(dirnode):
            assert dirnode.children is not None
            return dirnode.children
        if dirnode.children is not None and self.background is not None:
            # the refresh runs on its own: a caller that gives up (stale_ok, or interrupted)
            # leaves it to finish for the next one
            running = self._refreshing.get(dirnode.inode)
            if running is None:
                running = self._refreshing[dirnode.inode] = (trio.Event(), trio.current_time())
                self.background.start_soon(self._refresh_listing, dirnode, running[0])
            done, started = running
            # STALE_WAIT from the refresh's start: callers after that answer at once
            with trio.move_on_at(started + STALE_WAIT if stale_ok else math.inf):
                await done.wait()
            if not dirnode.in_tree:
                raise FsError(errno.ENOENT)
            return dirnode.children
        return await self._list(dirnode)

    async def _refresh_listing(self, dirnode: Node, done: trio.Event) -> None:
        try:
            await self._list(dirnode)
        except Exception as exc:  # noqa: BLE001 - the callers have the cached listing
            log.debug("refreshing the listing of %r failed: %s", dirnode.path or "/", exc)
        finally:
            self._refreshing.pop(dirnode.inode, None)
            done.set()

    async def _list(self, dirnode: Node) -> dict[str, Node]:
        async with self._lock(dirnode):
            if self._fresh(dirnode):
                assert dirnode.children is not None
                return dirnode.children
            sources = [dirnode.path]  # where the server may hold it, the likeliest first
            if self.ns.listing_blocked(dirnode.path):
                # the server does not show our pending namespace ops yet: the cached listing
                # is the truth (it has them); without one, the server's listing of what it
                # renames (the same entries), else wait until the server has them
                if dirnode.children is not None:
                    return dirnode.children
                sources = self.ns.listing_sources(dirnode.path)
                if not sources:
                    with trio.move_on_after(self.remote.timeout):
                        await self.ns.wait_listing(dirnode.path)
                    if not dirnode.in_tree:
                        raise FsError(errno.ENOENT)
                    if self.ns.listing_blocked(dirnode.path):
                        raise FsError(errno.EAGAIN, f"{dirnode.path or '/'}: namespace changes not on the server yet")
                    sources = [dirnode.path]
            seq = self.table.next_seq()
            epoch = self.epoch
            try:
                entries = await self._at_first(
                    dirnode.path, lambda: self._sources(dirnode, sources), self.remote.listdir
                )
            except NotFound:
                if not self._dirty_below(dirnode.path):
                    raise
                entries = []  # not on the server (yet): made here, its files' uploads make it
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

    def _sources(self, dirnode: Node, first: list[str]) -> list[str]:
        """Where the server may hold directory `dirnode`: `first` (asked before the listing),
        then the names pending renames give it now (one sent or applied since, see
        DataCache._at_first)."""
        now = self.ns.listing_sources(dirnode.path) or [dirnode.path]
        return [*first, *(p for p in now if p not in first)]

    def _apply_listing(self, dirnode: Node, entries: list[RemoteEntry], seq: int) -> None:
        old = dirnode.children or {}
        new: dict[str, Node] = {}
        tombs = dirnode.tombstones or {}
        plain = {e.name for e in entries}
        for e in entries:
            bad = unlistable(self._link_name(e) or e.name)  # a link's NAME, not NAME.rclonelink
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
            ent = self.cache.paths.get(join(dirnode.path, e.name))
            if ent is not None and ent.uploaded_seq > seq:
                # uploaded after the listing was requested: the listing shows the version our
                # upload replaced, which would drop the clean copy as stale and leave the name
                # with the old fingerprint (its size: a read of it came back longer, EIO). The
                # loop below takes the file from its upload
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
            elif ent.dirty and path.startswith(prefix):
                # a dirty file deeper down whose folder the server does not have (its mkdir
                # was lost with a damaged journal): the folder shows, the upload makes it
                name = path[len(prefix):].split("/", 1)[0]
                if name not in new and (dirnode is not self.table.root or name != ".ai" or self.ai is None):
                    sub = self.table.by_path.get(prefix + name)
                    if sub is None or not sub.is_dir:
                        sub = self.table.new(prefix + name, is_dir=True, mode=stat.S_IFDIR | 0o755)
                    sub.local_seq = self.table.next_seq()
                    new[name] = sub
        dirnode.children = new
        if tombs:
            # a listing requested after a removal already reflects it
            dirnode.tombstones = {n: t for n, t in tombs.items() if t > seq} or None

    def _dirty_below(self, path: str) -> bool:
        prefix = path + "/" if path else ""
        return any(ent.dirty and p.startswith(prefix) for p, ent in self.cache.paths.items())

    def _link_name(self, e: RemoteEntry) -> str | None:
        """The link name a server entry stands for (NAME.rclonelink -> NAME), else None."""
        if self.links and not e.is_dir and e.name.endswith(LINK_SUFFIX) and len(e.name) > len(LINK_SUFFIX):
            return e.name[: -len(LINK_SUFFIX)]
        return None

    async def _child(self, parent: Node, name: str) -> Node | None:
        """The entry `name` of `parent`: a cached one answers while a slow refresh goes on; a
        name not cached waits for the refresh to say whether it exists."""
        found = (await self._children(parent, stale_ok=True)).get(name)
        if found is not None or self._fresh(parent):
            return found
        return (await self._children(parent)).get(name)

    async def _refresh_attr(self, node: Node) -> None:
        if node.attr_epoch == self.epoch or node is self.table.root or not node.in_tree:
            return
        if node.entry is not None and (node.entry.dirty or node.opens):
            return
        parent = self.table.by_path.get(node.parent_path)
        if parent is None:
            return
        children = await self._children(parent, stale_ok=True)
        if children.get(node.display_name) is not node:
            if node.opens == 0 and node.lookups >= 0:
                raise FsError(errno.ENOENT, f"{node.path} is gone")
        node.attr_epoch = self.epoch

    async def _lookup(self, parent_inode: int, name: bytes) -> Node:
        """The node `name` names in directory `parent_inode`, its lookup count raised; ENOENT if none."""
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
        return node
