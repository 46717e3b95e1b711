"""The uploader: what the write-back queue (puterfs/fs/writeback.py) calls to get dirty files to
the server -- batching of small files into one /batch, the routes (single upload, streamed,
presigned for large files with a resumable session), attempts journaled by MD5, and the
conflict rule (docs/write-back.md, "Conflicts").

A mixin of `PuterOperations` (puterfs/fs/operations.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import trio

from puterfs.client._errors import (
    AlreadyExists,
    AuthenticationError,
    BadRequest,
    NotFound,
    PermissionDenied,
    PuterConnectionError,
    PuterError,
    QuotaExceeded,
    ServerError,
)
from puterfs.fs.cache import BLOCK_SIZE, CacheEntry
from puterfs.fs.inodes import Node
from puterfs.fs.remote import RemoteEntry, conflict_name, join, split, upload_etag

log = logging.getLogger(__name__)

SMALL_FILE = 256 * 1024  # files up to this size are uploaded together in one /batch request
EDIT_MAX = 1 << 20  # a change of a file the server has, up to this size, takes the edit lane
META_BATCH = 16  # metadata updates (a /move each) one bulk worker sends at once


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


class Uploader:
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

    def _is_small(self, key: int) -> bool:
        ent = self.cache.entries.get(key)
        return ent is not None and ent.size <= SMALL_FILE and ent.base_uid is None

    def _entry_size(self, key: int) -> int:
        ent = self.cache.entries.get(key)
        return ent.size if ent is not None else 0

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
                self.cache.note_attempt(ent, md5, sync=False)
            await self._sync_journal()  # once for the batch, on a worker thread, before it is sent
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
        if ent.echo_due is not None:
            self._own_change(ent.path, result)
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

        async def push(key: int) -> None:
            try:
                await self._push_metadata(key)
                results[key] = None
            except PuterError as exc:
                results[key] = exc

        # metadata updates (see _posix_changed; the queue hands them out up to META_BATCH at
        # once): one request each, sent together (their route has no in-flight cap; the
        # client paces them to the account's budget)
        async with trio.open_nursery() as nursery:
            for key in keys:
                if key < 0:
                    nursery.start_soon(push, key)
        for key in keys:
            if key < 0:
                continue
            ent = self.cache.entries.get(key)
            if ent is None or not ent.dirty:
                results[key] = None
                continue
            if self._is_small(key):
                # new small files go up together (one alone too: it needs no stat first; a
                # name taken on the server is found by the refusal, see _upload_batch_now)
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

    @contextlib.contextmanager
    def _in_flight(self, pairs: list[tuple[int, str]]) -> Iterator[None]:
        """Uploads of these (key, path) are under way: namespace ops on those paths wait for
        them (nsjournal.py). Nested registrations of one key restore the outer one."""
        prev = {k: self._uploading.get(k) for k, _ in pairs}
        for k, p in pairs:
            self._uploading[k] = p
        try:
            yield
        finally:
            for k, old in prev.items():
                if old is None:
                    self._uploading.pop(k, None)
                else:
                    self._uploading[k] = old

    async def _upload_batch(self, batch: list[CacheEntry]) -> dict[int, BaseException | None]:
        # after every namespace op on the way to these files (a rename of their folder, a
        # delete) but not a pending mkdir of a folder: the upload creates missing parents (the
        # mkdir is applied later and finds its folder); from the check on, ops on these paths
        # wait for this upload
        while (blocked := next((e.path for e in batch if self.ns.upload_blocked(e.path)), None)) is not None:
            await self.ns.wait_upload(blocked)
        # a file replaced or deleted meanwhile (a rename over it) is not to be uploaded: its old
        # bytes would take the name before the move that replaced it (a conflict copy of our own)
        done: dict[int, BaseException | None] = {e.id: None for e in batch if not self._still_to_upload(e)}
        batch = [e for e in batch if e.id not in done]
        if not batch:
            return done
        for e in batch:
            self.ns.expose(e.path)
        with self._in_flight([(e.id, e.path) for e in batch]):
            return {**done, **await self._upload_batch_now(batch)}

    def _still_to_upload(self, ent: CacheEntry) -> bool:
        """Whether `ent` is still a dirty file of the cache under its name (not replaced by a
        rename over it, deleted or uploaded while its upload waited for namespace ops)."""
        return self.cache.entries.get(ent.id) is ent and ent.dirty and self.cache.paths.get(ent.path) is ent

    async def _upload_batch_now(self, batch: list[CacheEntry]) -> dict[int, BaseException | None]:
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
        held = await self._held_already(items, outcome)
        for i, (ent, (path, _), version, md5, res) in enumerate(zip(batch, items, versions, md5s, outcome, strict=True)):
            if i in held and ent.path == path:
                # its name was taken on the server by our own bytes (an earlier attempt whose
                # answer was lost got through): done, as _upload_one_now would find
                self._uploaded(ent, version, held[i], md5)
                results[ent.id] = None
            elif isinstance(res, AlreadyExists) or (
                isinstance(res, BaseException) and refused_for_good(res) and len(batch) > 1
            ):
                # A name someone created meanwhile (or an earlier attempt of ours got through),
                # or one file the server refuses: each goes up on its own, so it fails alone
                # and never fails the others.
                results[ent.id] = await self._upload_alone(ent, path, res)
            elif isinstance(res, BaseException):
                results[ent.id] = res
            else:
                self._uploaded(ent, version, res, md5)
                results[ent.id] = None
        return results

    async def _held_already(self, items: list[tuple[str, bytes]], outcome: list[Any]) -> dict[int, RemoteEntry]:
        """The files of a batch refused because their name is taken that the server holds
        with exactly our bytes: checked together (one listing per folder, each file's
        version), not with a /stat and a read each. Refused again after a lost answer whose
        check failed, a batch of 256 took minutes so under the free tier's read budget."""
        taken = [i for i, res in enumerate(outcome) if isinstance(res, AlreadyExists)]
        if len(taken) < 2:
            return {}
        try:
            found = await self.remote.holding([items[i] for i in taken])
        except PuterError as exc:
            log.debug("checking %d files whose names are taken failed (%s); one by one", len(taken), exc)
            return {}
        return {i: e for i, e in zip(taken, found, strict=True) if isinstance(e, RemoteEntry) and not e.is_dir}

    async def _upload_alone(self, ent: CacheEntry, path: str, res: BaseException) -> BaseException | None:
        """Upload one file of a batch on its own, still registered under the batch's `path`
        (no namespace-journal wait here: an op on that path waits for this upload). Renamed
        meanwhile: the queue retries it under its new name, after the rename."""
        if ent.path != path:
            return ServerError(f"{path} was renamed during its upload; it goes up again as {ent.path}")
        try:
            await self._upload_one_now(ent)
            return None
        except PuterError as exc:
            return exc

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
        await self.ns.wait_upload(ent.path)  # see _upload_batch
        if not self._still_to_upload(ent):
            return
        self.ns.expose(ent.path)
        with self._in_flight([(ent.id, ent.path)]):
            await self._upload_one_now(ent)

    async def _upload_one_now(self, ent: CacheEntry) -> None:
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
