"""Mode and mtime of entries on the server, kept in the entries' metadata (docs/inodes.md):
setattr, and the debounced metadata updates through the write-back queue (key -inode).

A mixin of `PuterOperations` (puterfs/fs/operations.py)."""

from __future__ import annotations

import errno
import logging
import stat
import time

import pyfuse3

from puterfs.client._errors import (
    NotFound,
)
from puterfs.fs.errors import FsError
from puterfs.fs.inodes import Node
from puterfs.fs.namespace import _mutating
from puterfs.fs.remote import posix_metadata

log = logging.getLogger(__name__)



class PosixMetadata:
    def _posix_changed(self, node: Node, *, exact: bool = True) -> None:
        """`node`'s mode or mtime changed here: get it to the server, debounced. A dirty file's
        pending upload carries it (made to start over if one is in flight); anything else gets
        a metadata update (a /move onto itself) through the write-back queue under key -inode,
        journaled first. `exact=False` (a directory's mtime moved by an entry created or removed
        in it): a row already journaled in this quiet period is not rewritten, so a burst of
        creates costs one journal write; after a crash the mtime is then that of its first create."""
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
        if not stat.S_ISLNK(node.mode) and (exact or node.inode not in self._meta_journaled):
            try:  # journaled: a remount after a crash still sends it (restore_pending_meta)
                self.cache.save_meta(node.path, is_dir=node.is_dir, mode=node.mode, mtime_ns=node.mtime_ns)
                self._meta_journaled.add(node.inode)
            except OSError as exc:
                log.warning("cannot journal the mode/mtime of %r (kept in memory until sent): %s", node.path, exc)

    def restore_pending_meta(self) -> int:
        """Queue the metadata updates a previous run journaled and never sent (it was killed).
        Each gets a node at its path, carrying the journaled mode and mtime, which a listing
        then completes (a pending change wins over the server's attributes). A file whose upload
        is pending needs none: the upload carries the attributes of the files journal."""
        n = 0
        for path, is_dir, mode, mtime_ns in self.cache.pending_meta():
            ent = self.cache.paths.get(path)
            if (ent is not None and ent.dirty) or stat.S_ISDIR(mode) != is_dir:
                self.cache.drop_meta(path)
                continue
            node = self.table.new(path, is_dir=is_dir, mode=mode)
            node.mtime_ns = mtime_ns
            node.mtime_local = True
            if ent is not None and not is_dir:
                node.entry = ent
            self._meta_restored.add(node.inode)
            self._meta_journaled.add(node.inode)
            self._meta_jobs[-node.inode] = node
            self.queue.schedule(-node.inode, 0)
            n += 1
        return n

    def _meta_sent(self, node: Node) -> None:
        """`node`'s journaled update is on the server (or has nothing left to update)."""
        self._meta_restored.discard(node.inode)
        self._meta_journaled.discard(node.inode)
        other = self.table.by_path.get(node.path)
        if other is not None and other is not node and -other.inode in self._meta_jobs:
            return  # the row is now another node's (a new entry at that path)
        if -node.inode in self._meta_jobs:
            return  # changed again meanwhile: the row holds the newer values
        try:
            self.cache.drop_meta(node.path)
        except OSError as exc:
            log.warning("cannot clear the journaled mode/mtime of %r: %s (sent again next start)", node.path, exc)

    def _meta_pending(self, node: Node) -> bool:
        return self.queue.pending(-node.inode) or (node.entry is not None and node.entry.dirty and not node.is_dir)

    def _posix_metadata(self, mode: int, mtime_ns: int) -> dict[str, str]:
        return posix_metadata(None if stat.S_ISLNK(mode) else mode, mtime_ns)

    @_mutating
    async def _push_metadata(self, key: int) -> None:
        node = self._meta_jobs.pop(key, None)  # a change meanwhile puts it back
        if node is None or node is self.table.root:
            return
        if not node.in_tree:
            self._meta_sent(node)
            return
        try:
            await self._push_metadata_of(node)
        except BaseException:
            self._meta_jobs.setdefault(key, node)  # retried by the queue
            raise
        self._meta_sent(node)

    async def _push_metadata_of(self, node: Node) -> None:
        if node.entry is not None and node.entry.dirty and not node.is_dir:
            return  # its upload carries the attributes
        if node.remote_fp is None and node.inode in self._meta_restored:
            # after the pending namespace ops on its way (the last run's rename that gave it
            # this name is applied again now): a stat before would find nothing and drop it
            await self.ns.wait_path(node.path)
        path = node.path
        if node.remote_fp is None and node.inode in self._meta_restored:
            try:  # journaled by an earlier run: learn the entry's other metadata keys first
                e = await self.remote.stat(path)
            except NotFound:
                if node.in_tree and node.path != path:
                    raise  # renamed meanwhile: retried under the new name
                return  # gone meanwhile
            if e.is_dir != node.is_dir:
                return
            if node.remote_fp is None:
                node.remote_fp, node.remote_meta = e.fingerprint, e.metadata
        if node.remote_fp is None and not node.is_dir:
            return  # not on the server yet; its upload will carry them
        await self.ns.wait_path(node.path)  # after a pending mkdir or rename of it (nsjournal.py)
        # its name now (renamed while it waited): the old one may hold another entry by now,
        # which would get our metadata and a new `modified` (its next upload: a conflict)
        path = node.path
        md = self._posix_metadata(node.mode, node.mtime_ns)
        try:
            with self._in_flight([(-node.inode, path)]):
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

    async def _setattr(self, node: Node, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields) -> None:
        """chown (only to the mounting user), truncate, chmod, utimes."""
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
        if (fields.update_uid or fields.update_gid or fields.update_size or fields.update_mode or fields.update_mtime
                or fields.update_atime):
            node.ctime_ns = max(now, node.ctime_ns)  # not for chown(-1, -1), which changes nothing
        if fields.update_mode or fields.update_mtime:
            self._check_writable()
            self._posix_changed(node)
