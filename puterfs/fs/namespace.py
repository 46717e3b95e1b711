"""The namespace: mkdir, create, rename, unlink, rmdir and symlink, their POSIX checks against
the cached listing, and how each reaches the server (docs/namespace.md, docs/inodes.md).

Local first: each operation completes against the cached listing and the inode table, and
what the server must do is journaled (puterfs/fs/nsjournal.py) and applied in the background,
in order, coalesced and batched (`_apply_ns`). Files themselves reach the server through the
upload queue under their current name, so a file created and removed before its upload
never reaches the server at all.

A mixin of `PuterOperations` (puterfs/fs/operations.py)."""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from typing import Any

import pyfuse3
import trio

from puterfs.client._errors import (
    AlreadyExists,
    NotADirectory,
    NotEmpty,
    NotFound,
    PuterError,
)
from puterfs.fs.cache import CacheEntry
from puterfs.fs.errors import FsError
from puterfs.fs.inodes import LINK_SUFFIX, Node
from puterfs.fs.nsjournal import NsOp, ops_wire, parent_of, under
from puterfs.fs.remote import RemoteEntry, conflict_name, join, split

log = logging.getLogger(__name__)

NAME_MAX = 255
OWN_CHANGES_KEPT = 4096  # the newest answers to our own changes kept to recognise their echoes


def _mutating(fn: Any) -> Any:
    """A handler that changes the namespace: while one runs (and while its journaled ops are
    pending, see `PuterOperations.mutating`), change events in the folders it touches wait
    (puterfs/fs/freshness.py), so the echo of our own change never lands half-way; the
    events of other folders do not."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any, **kw: Any) -> Any:
        scope = mutation_scope(self.table, args)
        self._mutations += 1
        self._mutating_scopes.append(scope)
        try:
            return await fn(self, *args, **kw)
        finally:
            self._mutations -= 1
            self._mutating_scopes.remove(scope)

    return wrapper


def mutation_scope(table: Any, args: tuple[Any, ...]) -> tuple[set[str], set[str]]:
    """The folders whose entries, and the subtrees, a `_mutating` handler touches: its
    (parent inode, name) pairs (mkdir, rmdir, unlink, rename), or the node of a metadata
    update (its key is -inode)."""
    dirs: set[str] = set()
    trees: set[str] = set()
    for i, a in enumerate(args):
        if not isinstance(a, int) or isinstance(a, bool):
            continue
        nxt = args[i + 1] if i + 1 < len(args) else None
        if isinstance(nxt, bytes) and a > 0:
            parent = table.get(a)
            if parent is not None:
                dirs.add(parent.path)
                trees.add(join(parent.path, nxt.decode("utf-8", "surrogateescape")))
        elif a < 0 and i == 0:
            node = table.get(-a)
            if node is not None:
                dirs.add(node.parent_path)
    return dirs, trees


class Namespace:
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

    def _touch_dir(self, node: Node) -> None:
        """An entry was created or removed in directory `node`: its mtime moves, and is kept
        on the server (the server never changes a directory's own times)."""
        node.local_seq = self.table.next_seq()
        node.mtime_ns = node.ctime_ns = max(time.time_ns(), node.mtime_ns)
        self._posix_changed(node, exact=False)

    def _refuse_ai(self, parent_inode: int, name: bytes | None = None) -> None:
        if self.ai is None:
            return
        if self.ai.owns(parent_inode) or (parent_inode == pyfuse3.ROOT_INODE and name == self.ai.NAME):
            raise FsError(errno.EPERM, ".ai/ holds fixed control files")

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

    def _tombstone(self, parent: Node, name: str) -> None:
        if parent.tombstones is None:
            parent.tombstones = {}
        parent.tombstones[name] = self.table.next_seq()

    def _remove_child(self, parent: Node, name: str, node: Node) -> None:
        if parent.children is not None and parent.children.get(name) is node:
            del parent.children[name]
        self._tombstone(parent, name)
        self._touch_dir(parent)
        self._drop_meta_job(node)
        self.table.detach(node)
        self._release_unlinked(node)

    def _drop_meta_job(self, node: Node) -> None:
        """`node` leaves the tree: a pending update of its mode/mtime has nothing to update."""
        if self._meta_jobs.pop(-node.inode, None) is not None or self.queue.pending(-node.inode):
            self.queue.cancel(-node.inode)

    def _maybe_on_server(self, node: Node) -> bool:
        """Whether the server may hold `node` at its path: listed or uploaded, an upload that
        may have got through, or one in flight (a directory: always; a pending mkdir of it
        coalesces with whatever follows)."""
        if node.is_dir or node.remote_fp is not None:
            return True
        ent = node.entry
        return ent is not None and (ent.maybe_remote or ent.id in self._uploading)

    async def _delete_file(self, parent: Node, name: str, node: Node) -> None:
        if node.opens > 0 and node.remote_fp is not None:
            await self._ensure_complete(node)  # an open file stays readable after unlink
        ended = False
        if self._maybe_on_server(node):
            # journaled first (a full cache disk fails the unlink and changes nothing), in one
            # commit with the end of its cache row (a kill -9 keeps both or neither); the
            # upload of it, if one is in flight, is cancelled below or lands first
            ent = self._endable(node)
            end_row = None if ent is None else functools.partial(self.cache.end_row, ent)
            self.ns.record_delete(node.path, is_dir=False, also=end_row)
            ended = ent is not None
        self._discard_data(node, ended=ended)
        node.remote_fp = None
        self._remove_child(parent, name, node)

    def _drop_target(self, parent: Node, name: str, target: Node) -> CacheEntry | None:
        """A rename replaces `target`; its cache entry, if the rename is to delete it."""
        ent = self._let_go_replaced(target)
        if parent.children is not None and parent.children.get(name) is target:
            del parent.children[name]
        target.remote_fp = None
        self._drop_meta_job(target)
        self.table.detach(target)
        return ent

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
        # dirty in the journal from its first commit: a full disk fails the create (ENOSPC)
        ent = self.cache.create(path, mode=perm, mtime_ns=time.time_ns(), dirty=True)
        self._want_spares()
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

    @_mutating
    async def _mkdir(self, parent_inode: int, name: bytes, mode: int, umask: int) -> Node:
        self._refuse_ai(parent_inode, name)
        self._check_writable()
        parent = self._node(parent_inode)
        text = self._name(name, creating=True)
        if await self._child(parent, text) is not None:
            raise FsError(errno.EEXIST)
        path = join(parent.path, text)
        self.ns.record_mkdir(path)  # journaled first: a full cache disk fails the mkdir (ENOSPC)
        node = self.table.new(path, is_dir=True, mode=stat.S_IFDIR | (mode & ~umask & 0o7777))
        self.ns.ops[-1].node = node  # its entry on the server, once made, is this node's
        node.mtime_ns = node.ctime_ns = time.time_ns()
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
        return node

    @_mutating
    async def _rmdir(self, parent_inode: int, name: bytes) -> None:
        parent, text, node = await self._existing(parent_inode, name)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if await self._children(node):
            raise FsError(errno.ENOTEMPTY)  # the cached listing is authoritative
        self.ns.record_delete(node.path, is_dir=True)
        self._remove_child(parent, text, node)

    @_mutating
    async def _unlink(self, parent_inode: int, name: bytes) -> None:
        parent, text, node = await self._existing(parent_inode, name)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        await self._delete_file(parent, text, node)

    @_mutating
    async def _rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int
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

        # What the server must do, journaled before anything changes here. Uploads follow
        # the files' new names by themselves (they wait for this op; see nsjournal.py).
        target_remote = target is not None and self._maybe_on_server(target)
        ent = node.entry
        base: dict[str, Any] = {}
        if self._maybe_on_server(node):
            self.ns.record_move(node.path, new_path, is_dir=node.is_dir, overwrite=target_remote, node=node)
        elif target_remote and target is not None and not node.is_dir and ent is not None and ent.dirty:
            # the source exists only here and replaces what the server holds at the new name
            # (an editor's save): the server keeps that version until the upload of the new
            # content replaces it, so a full or refusing server still has one of the two. The
            # new content is based on it (its upload is no conflict), and the name is on the
            # server as far as unlink and rename go.
            t_ent, fp = target.entry, target.remote_fp
            etag = None
            if t_ent is not None and fp is not None and (t_ent.base_uid, t_ent.base_size, t_ent.base_modified) == fp:
                etag = t_ent.base_etag
            if t_ent is not None and t_ent.sent_md5:
                # an upload of the target's whose outcome is unknown may be what the server holds
                ent.sent_md5 = [*ent.sent_md5, *t_ent.sent_md5][-4:]
            if fp is not None:
                # committed with the rename (one transaction)
                base = {"base_uid": fp[0], "base_size": fp[1], "base_modified": fp[2], "base_etag": etag}
                node.remote_fp = fp
                node.remote_meta = target.remote_meta
            # else: base unknown, the upload's checks keep both if need be
            ent.maybe_remote = True
        elif target_remote:
            # a directory that exists only here replaces an empty one on the server: that goes
            # (as rename(2) replaces it), our mkdir recreates the name later
            assert target is not None
            self.ns.record_delete(new_path, is_dir=target.is_dir)

        old_path = node.path
        replaced = self._drop_target(new_parent, new_name, target) if target is not None else None
        self._rename_data(old_path, new_path, is_dir=node.is_dir, replaced=replaced, **base)
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

    async def _symlink(self, parent_inode: int, name: bytes, target: bytes) -> Node:
        """A link is a small file NAME.rclonelink holding the target, uploaded like any file."""
        if not self.links:
            raise FsError(errno.EPERM, "symbolic links are turned off (--no-links)")
        self._refuse_ai(parent_inode, name)
        self._check_writable()
        parent = self._node(parent_inode)
        text = self._name(name, creating=True)  # NAME_MAX holds for NAME; the server takes NAME.rclonelink
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
        return node

    # ------------------------------------------------------------------ applying the journal

    async def _apply_ns(self, batch: list[NsOp]) -> dict[int, BaseException | None]:
        """Send `batch` (ops in journal order) in one /batch request and settle each op's
        outcome; None for an op that is done (or never can be: refused, logged, the server's
        state kept), an exception for one to retry."""
        paths = [p for op in batch for p in op.paths()]
        # uploads in flight under these paths land (or, streamed, are cancelled) first
        waiting = [k for k, p in self._uploading.items() if any(under(p, q) for q in paths)]
        streamed = [k for k in waiting if k > 0 and self._streamed(k)]
        for k in streamed:
            self.queue.changed(k)
        self._mutations += 1
        try:
            for k in waiting:
                await self.queue.wait_settled(k)
            try:
                # what the server is about to do is on the local disk first (journal commits are
                # not synced one by one): after a power cut the journal is never behind it
                await self._sync_journal()
            except OSError as exc:
                return {op.seq: exc for op in batch}
            try:
                results = await self.remote.batch(ops_wire(batch))
            except PuterError as exc:
                return {op.seq: exc for op in batch}
            out: dict[int, BaseException | None] = {}
            behind: BaseException | None = None
            for op, res in zip(batch, results, strict=True):
                if behind is not None:
                    # an op before it is to be retried: this one goes again after it, so its
                    # result now (done, or refused because of the op before) settles nothing
                    out[op.seq] = behind
                    continue
                try:
                    out[op.seq] = await self._settle_ns(op, res)
                except PuterError as exc:
                    out[op.seq] = exc
                behind = out[op.seq]
            return out
        finally:
            self._mutations -= 1
            for k in streamed:
                ent = self.cache.entries.get(k)
                n = self._node_of_entry(ent) if ent is not None else None
                if ent is not None and ent.dirty and (n is None or n.writers == 0):
                    self.queue.schedule(k)

    async def _settle_ns(self, op: NsOp, res: Any) -> BaseException | None:
        if not isinstance(res, BaseException):
            self._ns_applied(op, res)
            return None
        if op.kind == "delete":
            if isinstance(res, NotFound):
                return None  # gone already (an earlier attempt, or deleted elsewhere)
            if isinstance(res, NotEmpty):
                # entries were made in it elsewhere meanwhile: they stay, and so does it
                log.warning("%s was not removed on the server: it holds entries made elsewhere since", op.path)
                self.epoch += 1
                return None
        elif op.kind == "mkdir":
            if isinstance(res, NotFound):
                # its parent went on the server meanwhile: made again, nothing of ours is lost
                self._ns_applied(op, await self.remote.mkdir(op.path, parents=True))
                return None
            if isinstance(res, AlreadyExists) and await self._keep_theirs(op.path):
                self._ns_applied(op, await self.remote.mkdir(op.path))
                return None
        elif op.kind == "move":
            if isinstance(res, AlreadyExists) and await self._keep_theirs(op.dest):
                # the name was taken on the server meanwhile: theirs is kept under a conflict name
                self._ns_applied(op, await self.remote.move(op.path, op.dest, overwrite=False))
                return None
            if isinstance(res, NotFound):
                try:
                    await self.remote.stat(op.path)
                except NotFound:
                    try:
                        there = await self.remote.stat(op.dest)
                    except NotFound:
                        self._ns_source_gone(op)  # deleted elsewhere meanwhile
                        return None
                    self._ns_applied(op, there)  # an earlier attempt got through, its answer lost
                    return None
                # the destination's folder went on the server meanwhile (a move makes no parents)
                if parent_of(op.dest):
                    await self.remote.mkdir(parent_of(op.dest), parents=True)
                self._ns_applied(op, await self.remote.move(op.path, op.dest, overwrite=op.overwrite))
                return None
        if self._ns_refused(res):
            log.error("%s: the server refuses it (%s); the server keeps its state", op.describe(), res)
            self.epoch += 1
            return None
        return res

    @staticmethod
    def _ns_refused(exc: BaseException) -> bool:
        from puterfs.fs.uploader import refused_for_good

        # a file where a folder on the way must be (made elsewhere meanwhile): the files below
        # fail to upload on their own and stay in the cache (docs/write-back.md, refused uploads)
        return isinstance(exc, (NotADirectory, NotEmpty)) or (isinstance(exc, PuterError) and refused_for_good(exc))

    async def _keep_theirs(self, path: str) -> bool:
        """The conflict rule for a name taken on the server meanwhile: the server's entry at
        `path` moves aside to NAME.conflict-...; False when there is nothing there to move."""
        try:
            await self.remote.stat(path)
        except NotFound:
            return False
        parent, name = split(path)
        keep_as = join(parent, conflict_name(name, time.time()))
        log.warning("conflict on %s: the server's entry there is kept as %s", path, keep_as)
        await self.remote.move(path, keep_as, overwrite=False)
        self.epoch += 1  # the conflict copy must show up in listings
        return True

    def _ns_applied(self, op: NsOp, e: Any) -> None:
        if not isinstance(e, RemoteEntry):
            return
        if op.kind in ("mkdir", "move"):
            self._own_change(op.dest or op.path, e)
        if op.kind == "mkdir":
            node = op.node
            if node is not None and node.in_tree and node.is_dir and node.remote_fp is None:
                node.remote_fp = e.fingerprint
                node.remote_meta = e.metadata
            return
        if op.kind != "move" or e.uid is None:
            return
        # a move keeps the entry's uid and bumps its `modified`: what we knew of it is the moved
        # copy, not another client's edit (else the next upload would see a conflict)
        for node in self.table.by_inode.values():
            old = node.remote_fp
            if old is None or old[0] != e.uid:
                continue
            node.remote_fp = e.fingerprint
            node.remote_meta = e.metadata
            if node.page_fp == ("remote", old):
                node.page_fp = ("remote", e.fingerprint)
        for ent in list(self.cache.entries.values()):
            if ent.base_uid == e.uid and ent.base_size == e.size and ent.base_modified != e.modified:
                self.cache.set_base(ent, uid=e.uid, size=e.size, modified=e.modified, etag=ent.base_etag)

    def _own_change(self, path: str, e: RemoteEntry) -> None:
        """The server answered a change of ours (a mkdir, a move, an upload whose event has
        not come yet) with `e` at `path`: its change event will be our echo."""
        self._own_changes[(path, *e.fingerprint)] = None
        while len(self._own_changes) > OWN_CHANGES_KEPT:
            del self._own_changes[next(iter(self._own_changes))]

    def _own_echo(self, path: str, e: RemoteEntry) -> bool:
        """Whether a change event showing `e` at `path` is the echo of a change of ours (the
        entry our mkdir, move or upload made there, as its answer had it); each is taken once.
        Its change is here already, and so is every change of ours after it: applied to the
        listings, an echo that comes late (queued behind the answer on a loaded machine, or
        parked until our later ops were applied) would undo them: bring back a name a later
        rename moved away, or the size of a file a later rename replaced."""
        key = (path, *e.fingerprint)
        if key not in self._own_changes:
            return False
        del self._own_changes[key]
        node = self.table.by_path.get(path)
        ent = node.entry if node is not None else None
        if ent is not None and ent.echo_due == e.fingerprint:
            ent.echo_due = None  # the event of our own upload (see Freshness._upsert)
        return True

    def _ns_source_gone(self, op: NsOp) -> None:
        """The server has no source for this move: deleted elsewhere (or moved by an attempt
        whose answer was lost). Dirty files there go up as new files under their names."""
        for path, ent in list(self.cache.paths.items()):
            if under(path, op.dest) and ent.dirty and ent.base_uid is not None:
                ent.base_uid = ent.base_size = ent.base_modified = None
                self.cache.save(ent)
        self.epoch += 1

