"""How the mount learns of changes made elsewhere (docs/write-back.md, "Freshness").

Three sources, from precise to coarse:

1. **Change events** (`Remote.events`, socket.io): each ``item.*`` event is applied to the
   one listing entry it names (add, update, move, remove), a clean cached copy whose
   content changed is dropped (dirty local data never is), and the kernel is told to
   forget just that entry and inode.  The server does not filter echoes, so our own changes
   come back too: applying an event whose state we already hold changes nothing (that is
   how echoes are recognised), and events wait while a namespace change of ours is under
   way in their folder (``PuterOperations.mutating``) so an echo never lands half-way through
   it; events of other folders do not wait.
2. **Polling** of ``/cache/last-change-timestamp`` (``PuterOperations.poll_changes``), only
   while the events are down or refused (a full-api-access token gets ``44``); a change
   then makes every listing stale, as before.
3. **Slow re-listing** of recently used directories (one listing per ``relist_interval``,
   directories used in the last ``RECENT`` seconds whose listing is older than the mount's
   listing age), for what emits nothing at all: ``/touch``.

``state()`` is the ``freshness`` object of the mount's state file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import trio

from puterfs.client._errors import EventsRefused, NotFound, PuterError
from puterfs.client._events import Connected, Disconnected, ItemEvent, Resync
from puterfs.fs.inodes import Node
from puterfs.fs.remote import RemoteEntry, split

log = logging.getLogger(__name__)

VERIFY_WAIT = 5.0  # a version check waits this long at most; then the cached copy answers
VERIFY_RETRY = 10.0  # and the next check of that file is not before this
RECENT = 600.0  # a directory used this recently is re-listed in the background
REFUSED_RETRY = 300.0  # after a refusal, try the events again this late (or when the token changes)


class Freshness:
    def __init__(
        self,
        ops: Any,
        *,
        relist_interval: float = 30.0,
        kernel: bool = True,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.ops = ops
        self.relist_interval = relist_interval
        self.kernel = kernel
        self.on_change = on_change
        self.mode = "polling"
        self.reason: str | None = "connecting to the change events"
        self.applied = 0
        self.echoes = 0  # events that described what we already held (our own changes mostly)
        self._send, self._recv = trio.open_memory_channel[tuple[Any, ...]](10_000)
        # events that wait for a namespace change of ours in their folder, in order
        self._parked: list[tuple[ItemEvent, list[str]]] = []
        self._parked_paths = _Paths()  # the paths of the parked events
        self._has_parked = trio.Event()
        ops.freshness = self

    def state(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason}

    def _set_mode(self, mode: str, reason: str | None) -> None:
        if (mode, reason) == (self.mode, self.reason):
            return
        if mode != self.mode:
            log.info("freshness: %s%s", mode, f" ({reason})" if reason else "")
        self.mode, self.reason = mode, reason
        self.ops.events_live = mode == "events"
        if self.on_change is not None:
            self.on_change()

    async def run(self) -> None:
        async with trio.open_nursery() as n:
            self.ops.background = n  # listing refreshes that outlive their caller
            n.start_soon(self._events)
            n.start_soon(self._drain)
            n.start_soon(self._relist)
            if self.kernel:
                n.start_soon(self._invalidator)

    # ------------------------------------------------------------------ events

    async def _events(self) -> None:
        while True:
            token = getattr(self.ops.remote.client, "token", None)
            try:
                async with self.ops.remote.events() as stream:
                    async for ev in stream:
                        await self._handle(ev)
            except EventsRefused as exc:
                self._set_mode("polling", f"{exc.message}; checking the server's change timestamp instead")
                with trio.move_on_after(REFUSED_RETRY):
                    while getattr(self.ops.remote.client, "token", None) == token:
                        await trio.sleep(2.0)
            except Exception as exc:  # noqa: BLE001 - the mount must outlive any failure here
                log.exception("change events failed; polling instead")
                self._set_mode("polling", f"the change events failed: {exc}")
                await trio.sleep(30.0)

    async def _handle(self, ev: Any) -> None:
        if isinstance(ev, Connected):
            # changes made before the socket (or while it was down) are not known: re-read
            self.ops.epoch += 1
            # the server answers: the poller, the reachability probe, rests from now on
            set_reachable = getattr(self.ops.remote, "set_reachable", None)
            if set_reachable is not None:
                set_reachable(True)
            self._set_mode("events", None)
            unverify_all(self.ops)  # what changed while there were no events is not known
            if isinstance(ev, Resync):
                log.info("change events back after %.1fs; listings are read again", ev.gap)
        elif isinstance(ev, Disconnected):
            self._set_mode("polling", f"the change events are down ({ev.reason}); reconnecting")
        elif isinstance(ev, ItemEvent):
            paths = self._touches(ev)
            if self._held(paths) or any(self._parked_paths.related(p) for p in paths):
                # a namespace change of ours is under way there (or an earlier event waits
                # there): it waits, the events of other folders do not
                self._parked.append((ev, paths))
                for p in paths:
                    self._parked_paths.add(p)
                self._has_parked.set()
                return
            self._apply_safely(ev)

    def _apply_safely(self, ev: ItemEvent) -> None:
        try:
            self.apply(ev)
        except Exception:  # noqa: BLE001 - one odd event must not stop the others
            log.exception("could not apply %s %s; listings are read again", ev.name, ev.path)
            self.ops.epoch += 1

    def _touches(self, ev: ItemEvent) -> list[str]:
        """The mount-relative paths an event names."""
        out = []
        for p in (ev.path, ev.old_path):
            rel = self.ops.remote.relpath(p) if p else None
            if rel is not None:
                out.append(rel)
        return out

    def _held(self, paths: list[str]) -> bool:
        """Whether a namespace change of ours is under way in the folder of one of `paths`,
        or on one of them or a folder above it (`PuterOperations.mutating`): its echo must
        not land half-way through it."""
        for dirs, trees in getattr(self.ops, "mutating", ()):
            for p in paths:
                if split(p)[0] in dirs:
                    return True
                if p in trees:
                    return True
                q = split(p)[0]  # a folder above it in `trees` (a set: one look per level)
                while q:
                    if q in trees:
                        return True
                    q = split(q)[0]
        return False

    async def _drain(self) -> None:
        """Apply parked events, in order, as the changes they wait for end."""
        while True:
            await self._has_parked.wait()
            while self._parked:
                # a look costs a few set lookups per parked event: many parked (the echoes of a
                # tree being uploaded while its namespace ops are pending), fewer looks
                await trio.sleep(0.005 if len(self._parked) < 100 else 0.05)
                still: list[tuple[ItemEvent, list[str]]] = []
                blocked = _Paths()
                for ev, paths in self._parked:
                    if self._held(paths) or any(blocked.related(p) for p in paths):
                        still.append((ev, paths))
                        for p in paths:
                            blocked.add(p)
                    else:
                        self._apply_safely(ev)
                self._parked, self._parked_paths = still, blocked
            self._has_parked = trio.Event()

    # ------------------------------------------------------------------ applying one event

    def apply(self, ev: ItemEvent) -> None:
        """Apply one change event to the listing cache (see the module docstring)."""
        if ev.name == "item.pending":
            return  # a placeholder; the file appears with the item.added of its completion
        remote = self.ops.remote
        rel = remote.relpath(ev.path)
        old_rel = remote.relpath(ev.old_path) if ev.old_path else None
        e = RemoteEntry.from_json(ev.entry)
        self.applied += 1
        log.debug("event %s %s%s %s", ev.name, ev.path, f" (from {ev.old_path})" if ev.old_path else "",
                  e.fingerprint)
        if ev.name == "item.removed":
            if rel is not None:
                if ev.descendants_only:
                    self._stale(rel)
                else:
                    self._remove(rel, e.uid)
            return
        if rel is None or not rel:
            if old_rel:  # moved out of the mount
                self._remove(old_rel, e.uid)
            return
        if self.ops._own_echo(rel, e):
            self.echoes += 1  # our own mkdir or move: the listings have it, and what came after it
            return
        if ev.name == "item.updated" and (old_rel is None or old_rel == rel):
            # a rename is an item.updated without the old path: the same uid elsewhere
            old_rel = self._path_of_uid(e.uid, rel)
        if old_rel is not None and old_rel != rel and self._move(old_rel, rel, e):
            return
        self._upsert(rel, e)

    def _path_of_uid(self, uid: str | None, rel: str) -> str | None:
        """Where the entry `uid` sits in the folder of `rel` under another name (a rename
        never changes the folder)."""
        if uid is None:
            return None
        parent, _ = self._listed_parent(rel)
        for node in parent.children.values() if parent is not None else ():
            if node.remote_fp is not None and node.remote_fp[0] == uid and node.path != rel:
                return node.path
        return None

    @staticmethod
    def _newer(node: Node, e: RemoteEntry) -> int:
        """Whether event entry `e` is newer (1) than what `node` holds of the same server object,
        older (-1: an event sent before a change of ours that is already applied here, e.g. the
        echo of our first rename arriving after our second), or not to be told apart (0: the
        same second; `modified` has whole seconds)."""
        have = node.remote_fp[2] if node.remote_fp is not None else None
        if have is None or e.modified is None:
            return 0
        return (e.modified > have) - (e.modified < have)

    def _listed_parent(self, rel: str) -> tuple[Node | None, str]:
        parent_rel, name = split(rel)
        parent = self.ops.table.by_path.get(parent_rel)
        if parent is None or parent.children is None or not parent.is_dir:
            return None, name
        return parent, name

    def _busy(self, node: Node) -> bool:
        """Whether `node` (or a file below it) holds local data or is open: then only the
        listing machinery, which keeps such files, may decide."""
        ops = self.ops
        if node.opens or (node.entry is not None and node.entry.dirty):
            return True
        if node.is_dir:
            prefix = node.path + "/" if node.path else ""
            for path, ent in ops.cache.paths.items():
                if path.startswith(prefix) and ent.dirty:
                    return True
            for n in ops.table.by_path.values():
                if n.path.startswith(prefix) and n.opens:
                    return True
        return False

    def _stale(self, rel: str) -> None:
        node = self.ops.table.by_path.get(rel)
        if node is not None and node.is_dir:
            node.listed_epoch = -1

    def _upsert(self, rel: str, e: RemoteEntry) -> None:
        ops = self.ops
        parent, name = self._listed_parent(rel)
        if parent is None:
            self._unknown_folder(rel)  # not listed here: the next listing reads it
            return
        if parent is ops.table.root and name == ".ai" and ops.ai is not None:
            return
        node = parent.children.get(name)
        ent = node.entry if node is not None else None
        if ent is not None and ent.dirty and not e.is_dir:
            ent.seen_fps.add(e.fingerprint)  # maybe the echo of an upload not answered yet
        if node is None and parent.tombstones and name in parent.tombstones:
            # removed here since the last listing: a late event or a new file? the listing says
            parent.listed_epoch = -1
            return
        if node is not None and node.remote_fp == e.fingerprint and node.is_dir == e.is_dir:
            self.echoes += 1
            if ent is not None and not ent.dirty and not e.is_dir:
                if ent.echo_due == e.fingerprint:
                    ent.echo_due = None  # the event of our own upload
                else:
                    # the same (uid, size, modified): no event of ours, or a same-size overwrite
                    # elsewhere within the same second; the version (ETag) tells, at the next use
                    ent.unverified = True
                    node.page_fp = None
            if e.metadata is not None and node.remote_meta != e.metadata:
                ops._set_remote(node, e)
            return
        if node is not None and node.remote_fp is not None and node.remote_fp[0] == e.uid:
            order = self._newer(node, e)
            if order < 0:
                self.echoes += 1  # older than what we hold
                return
            if order == 0 and node.remote_fp[1] != e.size and node.entry is not None and not node.entry.dirty:
                parent.listed_epoch = -1  # cannot tell which is newer: read the listing again
                self._invalidate_entry(parent, name, None)
                return
        old_fp = node.remote_fp if node is not None else None
        if node is not None and node.remote_fp is None and node.entry is not None and node.entry.dirty:
            # our new file, its upload not answered yet (this is likely its echo): the upload's
            # answer sets the fingerprint; nothing here may touch the local data
            ops._set_remote(node, e)
            self.echoes += 1
            return
        fresh = ops._node_for_entry(parent, e)
        fresh.local_seq = ops.table.next_seq()  # a listing requested before this must not undo it
        if fresh is not node:
            parent.children[name] = fresh
            if parent.tombstones:
                parent.tombstones.pop(name, None)
            self._invalidate_entry(parent, name, node)
        elif old_fp != e.fingerprint:
            self._invalidate_inode(fresh)

    def _unknown_folder(self, rel: str) -> None:
        """An event below a folder this mount does not know: the folder is new, made without
        an event of its own (a write that creates its missing parents), so the listing of the
        nearest folder listed here lacks it and is read again at its next use (else it would
        wait for --listing-max-age)."""
        path = rel
        while path:
            up, name = split(path)
            node = self.ops.table.by_path.get(up)
            if node is not None:
                if node.is_dir and node.children is not None and name not in node.children:
                    node.listed_epoch = -1
                    self._invalidate_entry(node, name, None)  # a cached "no such entry" too
                return
            path = up

    def _remove(self, rel: str, uid: str | None) -> None:
        ops = self.ops
        node = ops.table.by_path.get(rel)
        if node is None or node is ops.table.root:
            self.echoes += 1
            return  # gone here already (our own delete, or never listed)
        if node.remote_fp is None or (uid is not None and node.remote_fp[0] not in (uid, None)):
            self.echoes += 1
            return  # what is here is not the server object that went (ours, not uploaded yet)
        if self._busy(node):
            # local edits or open files: they stay; an upload puts the file back (docs: conflicts)
            node.remote_fp = None
            if node.entry is not None and node.entry.dirty:
                ent = node.entry
                ent.base_uid = ent.base_size = ent.base_modified = None
                ops.cache.save(ent)
            if node.is_dir:
                node.listed_epoch = -1
            return
        parent, name = self._listed_parent(rel)
        if parent is not None:
            if parent.children.get(name) is node:
                del parent.children[name]
            ops._tombstone(parent, name)
        self._drop_clean_data(node)
        ops.table.detach(node)
        if parent is not None:
            self._invalidate_entry(parent, name, node)

    def _drop_clean_data(self, node: Node) -> None:
        """The server object is gone: its clean cached copies (below a directory too) go."""
        ops = self.ops
        prefix = node.path + "/"
        for path, ent in list(ops.cache.paths.items()):
            if (path == node.path or path.startswith(prefix)) and not ent.dirty:
                holder = ops.table.by_path.get(path)
                if holder is not None and holder.opens:
                    continue
                if holder is not None and holder.entry is ent:
                    ops._delete_entry(holder)
                else:
                    ops.cache.delete(ent)

    def _move(self, old_rel: str, rel: str, e: RemoteEntry) -> bool:
        """Move the node at `old_rel` to `rel` (it keeps its inode and cached data). False
        when there is nothing to move; then the event is an add at `rel`."""
        ops = self.ops
        node = ops.table.by_path.get(old_rel)
        if node is None or node.remote_fp is None or (e.uid is not None and node.remote_fp[0] != e.uid):
            return False
        old_parent, old_name = self._listed_parent(old_rel)
        new_parent, new_name = self._listed_parent(rel)
        order = self._newer(node, e)
        if order < 0:
            self.echoes += 1  # sent before a change of ours that already moved it on
            return True
        if order == 0:
            # a move of ours echoed late, or someone else's within the same second: the
            # listings tell (both folders are read again at their next use)
            for p in (old_parent, new_parent):
                if p is not None:
                    p.listed_epoch = -1
                    self._invalidate_entry(p, old_name if p is old_parent else new_name, None)
            return True
        target = ops.table.by_path.get(rel)
        if self._busy(node) or (target is not None and target is not node and self._busy(target)):
            # local data involved: let the listings sort it out (they keep local files)
            for p in (old_parent, new_parent):
                if p is not None:
                    p.listed_epoch = -1
            node.remote_fp = None if node.entry is not None and node.entry.dirty else node.remote_fp
            return True
        if target is not None and target is not node:
            self._drop_clean_data(target)
            ops.table.detach(target)
        if old_parent is not None:
            if old_parent.children.get(old_name) is node:
                del old_parent.children[old_name]
            ops._tombstone(old_parent, old_name)
            self._invalidate_entry(old_parent, old_name, node)
        ops.cache.rename(old_rel, rel)
        ops.table.rename(node, rel)
        if new_parent is None:
            ops.table.detach(node)  # its new folder is not listed here: read when it is
            return True
        if new_parent.tombstones:
            new_parent.tombstones.pop(new_name, None)
        new_parent.children[new_name] = node
        ent = node.entry
        if ent is not None and not ent.dirty and (ent.base_uid, ent.base_size) == (e.uid, e.size):
            # a move changes no content (any change before it came as its own event); the
            # server bumped `modified`, so the clean copy is re-based rather than dropped
            ent.base_modified = e.modified
            ops.cache.save(ent)
        ops._set_remote(node, e)
        node.attr_epoch = ops.epoch
        node.local_seq = ops.table.next_seq()
        self._invalidate_entry(new_parent, new_name, None)
        return True

    # ------------------------------------------------------------------ the kernel's caches

    def _invalidate_entry(self, parent: Node, name: str, node: Node | None) -> None:
        if self.kernel:
            self._queue(("entry", parent.inode, name, node.inode if node is not None else 0))

    def _invalidate_inode(self, node: Node) -> None:
        if self.kernel:
            self._queue(("inode", node.inode))

    def _queue(self, item: tuple[Any, ...]) -> None:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            log.debug("kernel invalidation queue full; the kernel's 1 s cache timeout covers it")

    async def _invalidator(self) -> None:
        """pyfuse3's invalidations block until a related request finishes: never from a
        handler, never in the trio thread; one worker thread, in order."""
        import pyfuse3

        def run(item: tuple[Any, ...]) -> None:
            try:
                if item[0] == "entry":
                    _, parent, name, deleted = item
                    pyfuse3.invalidate_entry(parent, name.encode("utf-8", "surrogateescape"), deleted=deleted)
                else:
                    pyfuse3.invalidate_inode(item[1], attr_only=False)
            except (OSError, ValueError):  # ENOENT: the kernel never saw it, which is fine
                pass

        async for item in self._recv:
            await trio.to_thread.run_sync(run, item, abandon_on_cancel=True)  # never holds up an unmount

    # ------------------------------------------------------------------ slow re-listing

    async def _relist(self) -> None:
        ops = self.ops
        while True:
            await trio.sleep(self.relist_interval)
            now = trio.current_time()
            due = [
                n for n in ops.table.by_path.values()
                if n.is_dir and n.in_tree and n.children is not None and now - n.used_at < RECENT
                and now - n.listed_at >= ops.listing_max_age and not ops.remote.offline
            ]
            if not due:
                continue
            node = min(due, key=lambda n: n.listed_at)  # the longest unread first
            node.listed_epoch = -1
            try:
                await ops._children(node, use=False)
            except Exception as exc:  # noqa: BLE001 - retried at the next turn
                log.debug("background re-listing of %r failed: %s", node.path or "/", exc)


class _Paths:
    """A set of paths that answers `_related` against all of them in O(depth)."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.above: set[str] = set()  # every folder above one of them

    def add(self, p: str) -> None:
        self.paths.add(p)
        q = split(p)[0]
        while q and q not in self.above:
            self.above.add(q)
            q = split(q)[0]

    def related(self, p: str) -> bool:
        """Whether `_related(p, q)` for one of the paths q."""
        if p in self.paths or p in self.above:
            return True
        q = split(p)[0]
        while q:
            if q in self.paths:
                return True
            q = split(q)[0]
        return False


def _related(p: str, q: str) -> bool:
    """Events on these paths must be applied in order (the same path, or one below the other;
    a rename names both of its paths)."""
    return p == q or p.startswith(q + "/") or q.startswith(p + "/")


# ---------------------------------------------------------------------- versions (ETags)
#
# A server entry shows (uid, size, whole-second modified): a same-size overwrite within the
# same second leaves it as it was. The file's ETag (the MD5 of its content, on every /read
# answer, ranged ones included) changes with every overwrite, so the cache keeps the version
# its data came from (`CacheEntry.base_etag`): each ranged read is compared with it (a
# mismatch drops the cached blocks and reads again, never a file assembled from two
# versions), and a clean cached file that may have changed (`unverified`) asks the server
# for its ETag (one byte) before it is used again.


def unverify_all(ops: Any, since: int | None = None) -> None:
    """Every clean cached file may have changed (a gap in the change events, a change the
    poller saw): each checks its version before its next use. With `since` (server seconds:
    the changes happened after it), only the files whose version is from that second or
    later: an overwrite after it would have moved `modified`, which the listings show."""
    for ent in ops.cache.entries.values():
        if not ent.dirty and (since is None or ent.base_modified is None or ent.base_modified >= since):
            ent.unverified = True
            ent.echo_due = None


async def verify(ops: Any, node: Node, *, force: bool = False) -> None:
    """Check an `unverified` (or with `force` any) clean cached file against the server's
    version (see above)."""
    ent = node.entry
    if ent is None or ent.dirty or not (ent.unverified or force) or ent.id not in ops.cache.entries:
        return
    now = trio.current_time()
    if ent.verify_after > now:
        return  # a check failed a moment ago: the cached copy answers meanwhile
    try:
        with trio.fail_after(VERIFY_WAIT):
            etag = await ops.remote.version(node.path, ent.size)
    except NotFound:
        return  # gone: the listing says so at its next read
    except (PuterError, trio.TooSlowError) as exc:
        # the cached copy answers while the server does not (or slowly); checked again later
        log.debug("%s: version check failed (%s); serving the cached copy", node.path, exc or "too slow")
        ent.verify_after = now + VERIFY_RETRY
        return
    if node.entry is not ent or ent.dirty:
        return
    ent.unverified = False
    if etag is None or etag == ent.base_etag:
        return
    if ent.base_etag is None and not ent.blocks and not ent.complete:
        ent.base_etag = etag  # nothing cached yet: this is the version blocks will come from
        ops.cache.save(ent)
        return
    await content_changed(ops, node, ent, etag)


async def content_changed(ops: Any, node: Node, ent: Any, etag: str) -> None:
    """The server's version of clean cached `ent` is `etag`, not the one its data came from:
    its blocks are dropped (the file stays, sparse, at the server's current size) and the
    kernel's pages of it too."""
    log.info("%s changed on the server (version %s, cached %s): its cached data is dropped",
             node.path, etag, ent.base_etag)
    try:
        e: RemoteEntry | None = await ops.remote.stat(node.path)
    except NotFound:
        e = None
    if node.entry is not ent or ent.dirty or ent.id not in ops.cache.entries:
        return  # replaced or written meanwhile
    size = e.size if e is not None else ent.size
    ra = getattr(ops, "readahead", None)
    if ra is not None:
        ra.drop(ent.id)  # no chunk of the old version is served from memory
    fd = ops._fd(node)
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)
    ent.size = size
    ent.blocks.clear()
    ent.complete = size == 0
    ent.unverified = False
    ent.echo_due = None
    if e is not None:
        ops.cache.set_base(ent, uid=e.uid, size=e.size, modified=e.modified, etag=etag)
        ops._set_remote(node, e)
    else:
        ops.cache.set_base(ent, uid=ent.base_uid, size=size, modified=ent.base_modified, etag=etag)
    node.page_fp = None  # the next open drops the kernel's pages
    fr = getattr(ops, "freshness", None)
    if fr is not None:
        fr._invalidate_inode(node)


__all__ = ["Freshness", "RECENT", "content_changed", "unverify_all", "verify"]
