"""Presigned uploads: files of any size, straight to the server's object storage.

The flow as a Puter 26.07 server answers it (``presign.jsonl``, RECORDED-2.md §1):

1. ``POST /fs/startWrite {fileMetadata: {path, size, ...}, expiresInSeconds}`` opens an
   upload session: one storage URL (``uploadMode: "single"``, up to 10 MiB on a self-host)
   or one URL per part (``"multipart"``, parts of ``multipartPartSize``, 10 MiB there).
2. ``PUT`` each part to its URL, no Puter auth, exactly the declared ``Content-Length``;
   the answer's ``ETag`` names the part.
3. ``POST /fs/completeWrite {uploadId, parts: [{partNumber, etag}]}`` creates the entry.
   ``/fs/signMultipartParts`` signs part URLs again; ``/fs/abortWrite`` drops a session.

**Never neither version.** A session that overwrites an existing file writes onto that
file's object at once (the PUT replaces the live bytes before completion), and aborting it
deletes them (RECORDED-2.md §1, "DANGER"). So this module never opens an overwrite
session: a file that exists is uploaded under a fresh hidden name in the same folder
(``.puterfs-upload-<hex>``, a new object, safe to abort) and moved over the old one with
``/move overwrite`` only once it is complete. Until the move the old file is intact; after
it the new one is. A file that does not exist yet is uploaded under its own name (its
entry only appears at completion, so an abort leaves nothing behind).

**Resumable.** :class:`UploadSession` holds the session id, the name uploaded to, the part
size and the ETag of every part done; it is plain JSON (:meth:`UploadSession.to_json`), so
a caller (the mount's journal) can persist it after every part through ``on_progress``
and pass it back later to finish the upload. A session that expired, or whose ids the
server no longer knows, is dropped and the upload starts again from the first part.

**Memory.** Parts are streamed from the source in chunks (a file is read with ``pread``
in a worker thread, several parts at once); only a source that cannot seek (a pipe, an
async iterator) is held part by part, at most ``parallel`` parts at a time.

**Fallback.** A server without these routes (404 ``Not Found``, 405, 501) or one that
hands out storage URLs this machine cannot reach (a loopback address of a remote server,
connection refused) gets the upload through ``/batch`` instead when the file is under
its 100 MiB cap; otherwise the error says why the file cannot be uploaded.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import posixpath
import secrets
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx

from puterfs.client._errors import (
    AlreadyExists,
    Conflict,
    IsADirectory,
    NotFound,
    PuterConnectionError,
    PuterError,
    QuotaExceeded,
    ServerError,
    error_from_response,
)
from puterfs.client._multipart import CHUNK, guess_type

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

log = logging.getLogger(__name__)

# /batch refuses a file of this size or more (413 too_large, exclusive).
BATCH_MAX_FILE = 100 * 1024 * 1024
# fs_write sends content of this size or more through the presigned flow.
LARGE_FILE = BATCH_MAX_FILE
SESSION_SECONDS = 3600  # the longest the server grants (clamped to 60..3600)
EXPIRY_MARGIN = 120.0  # a saved session this close to its expiry is started afresh
PARALLEL_PARTS = 4
PART_RETRIES = 6
TEMP_PREFIX = ".puterfs-upload-"
BATCH_START_MAX = 32  # files per /fs/startBatchWrite (their sessions all run from its start)

ProgressFn = Callable[["UploadSession"], Any]


class PresignUnavailable(PuterError):
    """The server does not offer presigned uploads, or its storage cannot be reached."""


class SessionLost(PuterError):
    """The server no longer knows the upload session (expired, aborted, failed)."""


@dataclass
class UploadSession:
    """A presigned upload in progress; JSON-serialisable, resumable."""

    target: str  # the path the file ends up at
    upload_path: str  # the path the session writes (target, or a hidden name next to it)
    size: int
    upload_id: str
    mode: str  # "single" or "multipart"
    part_size: int
    part_count: int
    expires_at: float  # seconds since the epoch
    replace: bool  # upload_path is a temporary name to move over target
    dedupe: bool = False  # the server picked a free name ("a (1).txt") at start; known at completion
    etags: dict[int, str] = field(default_factory=dict)  # part number -> ETag of parts done
    completed: bool = False  # completeWrite succeeded (upload_path exists on the server)
    urls: dict[int, str] = field(default_factory=dict, repr=False)  # part number -> signed URL

    @property
    def done_bytes(self) -> int:
        return sum(self._part_length(n) for n in self.etags)

    def _part_length(self, number: int) -> int:
        if self.mode == "single":
            return self.size
        start = (number - 1) * self.part_size
        return max(0, min(self.part_size, self.size - start))

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("urls")  # signed URLs expire; they are signed again on resume
        data["etags"] = {str(k): v for k, v in self.etags.items()}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UploadSession:
        data = json.loads(text)
        data["etags"] = {int(k): v for k, v in (data.get("etags") or {}).items()}
        data.pop("urls", None)
        return cls(**data)

    def expired(self, margin: float = EXPIRY_MARGIN) -> bool:
        return time.time() + margin >= self.expires_at


# -- sources ------------------------------------------------------------------------------


class _Source:
    """Random access (``region``) or sequential access (``take``) to the upload bytes."""

    sequential = False

    def __init__(self, size: int) -> None:
        self.size = size

    async def region(self, offset: int, length: int) -> AsyncIterator[bytes]:  # pragma: no cover
        raise NotImplementedError
        yield b""

    async def take(self, length: int) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


class _MemorySource(_Source):
    def __init__(self, data: bytes) -> None:
        super().__init__(len(data))
        self._view = memoryview(data)

    async def region(self, offset: int, length: int) -> AsyncIterator[bytes]:
        for pos in range(offset, offset + length, CHUNK):
            yield bytes(self._view[pos : min(pos + CHUNK, offset + length)])


class _FdSource(_Source):
    """A file read with ``os.pread`` (parts read concurrently, position untouched)."""

    def __init__(self, fd: int, start: int, size: int, *, owned: bool) -> None:
        super().__init__(size)
        self._fd = fd
        self._start = start
        self._owned = owned

    async def region(self, offset: int, length: int) -> AsyncIterator[bytes]:
        pos, end = offset, offset + length
        while pos < end:
            n = min(CHUNK, end - pos)
            block = await anyio.to_thread.run_sync(os.pread, self._fd, n, self._start + pos)
            if not block:
                raise OSError(f"upload source ended {end - pos} bytes early (file shrank while uploading?)")
            pos += len(block)
            yield block

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
            self._owned = False


class _SeekSource(_Source):
    """A seekable in-memory file object (BytesIO...): seek and read between awaits."""

    def __init__(self, fileobj: IO[bytes], start: int, size: int) -> None:
        super().__init__(size)
        self._f = fileobj
        self._start = start

    async def region(self, offset: int, length: int) -> AsyncIterator[bytes]:
        pos, end = offset, offset + length
        while pos < end:
            self._f.seek(self._start + pos)
            block = self._f.read(min(CHUNK, end - pos))
            if not block:
                raise OSError("upload source ended early")
            pos += len(block)
            yield block


class _StreamSource(_Source):
    """A pipe or an async iterator: read once, in order."""

    sequential = True

    def __init__(self, chunks: AsyncIterator[bytes], size: int) -> None:
        super().__init__(size)
        self._chunks = chunks
        self._buf = bytearray()

    async def take(self, length: int) -> bytes:
        while len(self._buf) < length:
            try:
                block = await self._chunks.__anext__()
            except StopAsyncIteration:
                raise OSError(f"upload source ended {length - len(self._buf)} bytes early") from None
            self._buf += block
        out = bytes(self._buf[:length])
        del self._buf[:length]
        return out


async def _file_chunks(fileobj: IO[bytes]) -> AsyncIterator[bytes]:
    while True:
        block = await anyio.to_thread.run_sync(fileobj.read, CHUNK)
        if not block:
            return
        yield block


def _has_fileno(fileobj: Any) -> bool:
    try:
        fileobj.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return True


def open_source(content: Any, size: int | None = None) -> _Source:
    """A source for ``content``: text, bytes, a path, a binary file object (read from its
    current position) or an async iterable of bytes (``size`` required)."""
    if isinstance(content, str):
        return _MemorySource(content.encode("utf-8"))
    if isinstance(content, (bytes, bytearray, memoryview)):
        return _MemorySource(bytes(content))
    if isinstance(content, os.PathLike):
        fd = os.open(os.fspath(content), os.O_RDONLY)
        return _FdSource(fd, 0, os.fstat(fd).st_size if size is None else size, owned=True)
    if isinstance(content, AsyncIterable):
        if size is None:
            raise TypeError("an async iterable needs size=")
        return _StreamSource(aiter(content), size)
    if hasattr(content, "read"):
        if isinstance(content, io.TextIOBase):
            raise TypeError("file objects passed as content must be opened in binary mode")
        try:
            seekable = bool(content.seekable())
        except (AttributeError, OSError, ValueError):
            seekable = False
        if seekable:
            start = content.tell()
            end = content.seek(0, os.SEEK_END)
            content.seek(start)
            length = max(0, end - start) if size is None else size
            if _has_fileno(content):
                return _FdSource(content.fileno(), start, length, owned=False)
            return _SeekSource(content, start, length)
        if size is None:
            raise TypeError("a file object that cannot seek needs size=")
        return _StreamSource(_file_chunks(content), size)
    raise TypeError(f"content must be str, bytes, a binary file object, a path or an async iterable, not {type(content).__name__}")


# -- entries --------------------------------------------------------------------------------


def legacy_entry(v2: dict[str, Any]) -> dict[str, Any]:
    """The v2 ``fsEntry`` of completeWrite in the legacy shape the rest of the client returns."""
    uid = v2.get("uid") or v2.get("uuid")
    return {
        "id": uid,
        "uid": uid,
        "name": v2.get("name"),
        "path": v2.get("path"),
        "is_dir": bool(v2.get("isDir", v2.get("is_dir", False))),
        "size": v2.get("size"),
        "modified": v2.get("modified"),
        "created": v2.get("created"),
        "accessed": v2.get("accessed"),
        "immutable": v2.get("immutable", False),
        "metadata": v2.get("metadata"),
        "parent_uid": v2.get("parentUid"),
    }


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the upload -----------------------------------------------------------------------------


class PresignedUpload:
    """One upload through the presigned routes (see the module documentation)."""

    def __init__(
        self,
        client: PuterClient,
        target: str,
        source: _Source,
        *,
        overwrite: bool,
        create_missing_parents: bool,
        session: UploadSession | None = None,
        on_progress: ProgressFn | None = None,
        parallel: int = PARALLEL_PARTS,
        content_type: str | None = None,
        metadata: dict[str, Any] | None = None,
        dedupe: bool = False,
    ) -> None:
        self.client = client
        self.target = target
        self.source = source
        self.overwrite = overwrite and not dedupe
        self.dedupe = dedupe
        self.parents = create_missing_parents
        self.session = session
        self.on_progress = on_progress
        self.parallel = max(1, parallel)
        self.content_type = content_type or guess_type(posixpath.basename(target))
        self.metadata = metadata

    # -- server calls ---------------------------------------------------------------------

    async def _post(self, path: str, body: Any, *, idem: Any) -> Any:
        return await self.client._post_json(path, body, idem=idem)

    async def _progress(self) -> None:
        if self.on_progress is not None and self.session is not None:
            result = self.on_progress(self.session)
            if hasattr(result, "__await__"):
                await result

    async def _start(self) -> UploadSession:
        upload_path, replace = await self._plan()
        return await self._open(upload_path, replace=replace)

    async def _plan(self) -> tuple[str, bool]:
        """Where the session writes (``target``, or a hidden name next to an existing file)
        and whether that is a replacement; refuses a directory, or a file without overwrite."""
        if self.dedupe:
            return self.target, False
        try:
            current = await self.client.fs_stat(self.target)
        except NotFound:
            current = None
        if current is not None:
            if current.get("is_dir"):
                raise IsADirectory(f"{self.target} is a directory", status=409, code="cannot_overwrite_a_directory")
            if not self.overwrite:
                raise AlreadyExists(f"{self.target} already exists", status=409, code="item_with_same_name_exists")
        parent, _ = posixpath.split(self.target)
        replace = current is not None
        upload_path = posixpath.join(parent, TEMP_PREFIX + secrets.token_hex(8)) if replace else self.target
        return upload_path, replace

    def _start_body(self, upload_path: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "fileMetadata": {
                "path": upload_path,
                "size": self.source.size,
                "contentType": self.content_type,
                # never an overwrite session: see "Never neither version" above
                "overwrite": False,
                "dedupeName": self.dedupe,
                "createMissingParents": self.parents,
            },
            "expiresInSeconds": SESSION_SECONDS,
        }
        if self.metadata is not None:
            body["fileMetadata"]["metadata"] = self.metadata
        return body

    def _session_from(self, data: Any, upload_path: str, *, replace: bool, route: str) -> UploadSession:
        """The session a startWrite answer (or one item of a startBatchWrite answer) opened."""
        if not isinstance(data, dict) or not data.get("sessionId"):
            raise ServerError(f"unexpected {route} answer")
        mode = data.get("uploadMode")
        if mode == "multipart":
            part_size = int(data["multipartPartSize"])
            count = int(data.get("multipartPartCount") or -(-self.source.size // part_size))
            urls = {int(p["partNumber"]): str(p["url"]) for p in data.get("multipartPartUrls") or []}
        else:
            mode, part_size, count = "single", max(1, self.source.size), 1
            urls = {1: str(data.get("url") or "")}
        expires = float(data.get("expiresAt") or 0) / 1000.0 or time.time() + 900
        return UploadSession(
            target=self.target, upload_path=upload_path, size=self.source.size, upload_id=str(data["sessionId"]),
            mode=mode, part_size=part_size, part_count=count, expires_at=expires, replace=replace, urls=urls,
            dedupe=self.dedupe,
        )

    async def _open(self, upload_path: str, *, replace: bool) -> UploadSession:
        """``/fs/startWrite`` for ``upload_path``: never onto an existing file; with dedupe the
        server takes the next free name (``a (1).txt``) when ``upload_path`` is taken (a new
        object either way, so an abort is always safe)."""
        from puterfs.client._retry import Idempotency

        body = self._start_body(upload_path)
        try:
            # A retried start after a lost answer leaves an unused session that expires.
            data = await self._post("/fs/startWrite", body, idem=Idempotency.SAFE_REJECTIONS)
        except PuterError as exc:
            if _route_missing(exc):
                raise PresignUnavailable(f"the server has no presigned uploads ({exc})", status=exc.status) from exc
            raise
        return self._session_from(data, upload_path, replace=replace, route="/fs/startWrite")

    def _check_reachable(self, s: UploadSession) -> None:
        api_host = urlsplit(self.client.api_url).hostname or ""
        for url in s.urls.values():
            host = urlsplit(url).hostname or ""
            if not url.startswith(("http://", "https://")) or (_loopback(host) and not _loopback(api_host)):
                raise PresignUnavailable(
                    f"the server hands out storage URLs on {host or url!r}, which this machine cannot reach "
                    "(self-hosters: set s3.s3Config.publicEndpoint)"
                )

    async def _sign(self, numbers: list[int]) -> None:
        from puterfs.client._retry import Idempotency

        s = self.session
        assert s is not None
        if s.mode == "single" or not numbers:
            return
        try:
            data = await self._post(
                "/fs/signMultipartParts", {"uploadId": s.upload_id, "partNumbers": numbers}, idem=Idempotency.IDEMPOTENT
            )
        except NotFound as exc:
            raise SessionLost(f"upload session of {s.target} is gone ({exc})") from exc
        for p in data.get("multipartPartUrls") or [] if isinstance(data, dict) else []:
            s.urls[int(p["partNumber"])] = str(p["url"])
        if isinstance(data, dict) and data.get("expiresAt"):
            s.expires_at = float(data["expiresAt"]) / 1000.0
        self._check_reachable(s)

    async def _complete(self) -> dict[str, Any]:
        from puterfs.client._retry import Idempotency

        s = self.session
        assert s is not None
        body: dict[str, Any] = {"uploadId": s.upload_id}
        if s.mode == "multipart":
            body["parts"] = [{"partNumber": n, "etag": s.etags[n]} for n in sorted(s.etags)]
        try:
            # Not retried once sent: a second completeWrite is 409 (handled below).
            data = await self._post("/fs/completeWrite", body, idem=Idempotency.SAFE_REJECTIONS)
        except Conflict as exc:
            if "status=completed" in str(exc.message):
                if s.dedupe:
                    # the server chose the name and its answer was lost: do not guess one
                    raise Conflict(
                        f"the upload of {s.target} was completed under a name the server chose (dedupeName) "
                        "and its answer was lost; look for it next to that name", status=exc.status, code=exc.code,
                    ) from exc
                return await self.client.fs_stat(s.upload_path)  # an earlier attempt completed it
            raise SessionLost(f"upload session of {s.target} cannot complete ({exc})") from exc
        except NotFound as exc:
            raise SessionLost(f"upload session of {s.target} is gone ({exc})") from exc
        except ServerError as exc:
            # a failed completion fails the session for good: start again
            raise SessionLost(f"completing the upload of {s.target} failed ({exc})") from exc
        entry = data.get("fsEntry") if isinstance(data, dict) else None
        if not isinstance(entry, dict):
            raise ServerError("unexpected /fs/completeWrite answer")
        return legacy_entry(entry)

    async def abort(self) -> None:
        """Drop the session (safe: it never writes onto an existing file's object)."""
        from puterfs.client._retry import Idempotency

        s = self.session
        if s is None or s.completed:
            return
        try:
            await self._post("/fs/abortWrite", {"uploadId": s.upload_id}, idem=Idempotency.IDEMPOTENT)
        except PuterError as exc:
            log.info("aborting the upload session of %s failed: %s", s.target, exc)

    # -- parts ------------------------------------------------------------------------------

    async def _put(self, number: int, body: Any, length: int) -> str:
        """PUT one part (``body``: bytes, or a callable giving a fresh async iterator); its ETag."""
        s = self.session
        assert s is not None
        policy = self.client._retry
        attempt = 0
        resigned = False
        while True:
            url = s.urls.get(number)
            if not url:
                await self._sign([number])
                url = s.urls[number]
            content = body() if callable(body) else body
            try:
                response = await self.client._http.put(
                    url, content=content, headers={"Content-Length": str(length)}, timeout=self.client._timeout
                )
            except httpx.RequestError as exc:
                attempt += 1
                if attempt > PART_RETRIES:
                    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and not s.etags:
                        raise PresignUnavailable(f"cannot reach the storage server ({exc})") from exc
                    raise PuterConnectionError(f"uploading part {number} of {s.target} failed ({exc})") from exc
                await anyio.sleep(policy.delay(attempt))
                continue
            if 200 <= response.status_code < 300:
                etag = response.headers.get("etag")
                if not etag:
                    raise ServerError(f"the storage server answered part {number} without an ETag")
                return etag
            err = error_from_response(response.status_code, response.headers, response.content)
            if response.status_code == 403 and not resigned and s.mode == "multipart":
                resigned = True  # an expired or refused signature: sign this part again
                s.urls.pop(number, None)
                continue
            if response.status_code == 404:
                raise SessionLost(f"the storage server does not know the upload of {s.target}") from err
            attempt += 1
            if attempt > PART_RETRIES or not (response.status_code >= 500 or response.status_code == 429):
                raise err
            await anyio.sleep(policy.delay(attempt))

    def _span(self, number: int) -> tuple[int, int]:
        s = self.session
        assert s is not None
        if s.mode == "single":
            return 0, s.size
        start = (number - 1) * s.part_size
        return start, max(0, min(s.part_size, s.size - start))

    async def _upload_parts(self) -> None:
        s = self.session
        assert s is not None
        todo = [n for n in range(1, s.part_count + 1) if n not in s.etags]
        if not todo:
            return
        if s.mode == "multipart" and any(n not in s.urls for n in todo):
            await self._sign(todo)
        limiter = anyio.Semaphore(self.parallel)

        async def one(number: int, data: bytes | None) -> None:
            try:
                offset, length = self._span(number)
                body: Any = data if data is not None else (lambda: self.source.region(offset, length))
                s.etags[number] = await self._put(number, body, length)
                await self._progress()
            finally:
                limiter.release()

        try:
            await self._run_parts(todo, one, limiter)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _run_parts(self, todo: list[int], one: Any, limiter: anyio.Semaphore) -> None:
        s = self.session
        assert s is not None
        async with anyio.create_task_group() as tg:
            if self.source.sequential:
                # parts already done must still be read past
                for n in range(1, s.part_count + 1):
                    offset, length = self._span(n)
                    if n in s.etags:
                        await self.source.take(length)
                        continue
                    await limiter.acquire()
                    tg.start_soon(one, n, await self.source.take(length))
            else:
                for n in todo:
                    await limiter.acquire()
                    tg.start_soon(one, n, None)

    # -- the whole -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        s = self.session
        if s is not None and (s.target != self.target or s.size != self.source.size or s.dedupe != self.dedupe
                              or s.expired()):
            log.info("upload session of %s is stale; starting again", s.target)
            await self.abort()
            s = self.session = None
        restarted = False
        while True:
            if self.session is None:
                self.session = await self._start()
                self._check_reachable(self.session)  # (an unreachable one is aborted by the caller)
                await self._progress()
            try:
                entry = await self._finish()
            except SessionLost as exc:
                if restarted or self.source.sequential:
                    raise
                log.info("%s; starting the upload again", exc)
                restarted = True
                self.session = None
                continue
            return entry

    async def _finish(self) -> dict[str, Any]:
        s = self.session
        assert s is not None
        if not s.completed:
            await self._upload_parts()
            entry = await self._complete()
            if s.dedupe and isinstance(entry.get("path"), str):
                s.upload_path = entry["path"]  # the name the server chose, for a resumed session
            s.completed = True
            await self._progress()
        else:
            entry = await self.client.fs_stat(s.upload_path) if not s.replace else {}
        return await self._settle(entry)

    async def _settle(self, entry: dict[str, Any]) -> dict[str, Any]:
        """After completion: move a replacement over the target (the old file intact until then)."""
        s = self.session
        assert s is not None
        if s.replace:
            try:
                entry = await self.client.fs_move(s.upload_path, s.target, {"overwrite": True})
            except NotFound:
                # a move whose answer was lost, or the temporary file is gone
                entry = await self.client.fs_stat(s.target)
                if entry.get("size") != s.size:
                    raise
            except PuterError:
                # the old file is untouched; do not leave the new copy behind
                try:
                    await self.client.fs_delete(s.upload_path, recursive=False)
                except PuterError:
                    log.warning("could not remove the temporary upload %s", s.upload_path)
                raise
        return entry


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error that failed a group of part uploads (not the cancellations it caused)."""
    cancelled = anyio.get_cancelled_exc_class()
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_error(exc)
        if not isinstance(exc, cancelled):
            return exc
    return group.exceptions[0]


def _route_missing(exc: PuterError) -> bool:
    if exc.status in (405, 501):
        return True
    # a missing route is 404 "Not Found"; a missing parent is 404 "Parent path does not exist"
    return exc.status == 404 and str(exc.message).strip().lower() in ("not found", "")


async def write_large(
    client: PuterClient,
    target: str,
    content: Any,
    *,
    overwrite: bool = True,
    create_missing_parents: bool = False,
    size: int | None = None,
    session: UploadSession | None = None,
    on_progress: ProgressFn | None = None,
    parallel: int = PARALLEL_PARTS,
    metadata: dict[str, Any] | None = None,
    dedupe: bool = False,
) -> dict[str, Any]:
    """Upload ``content`` to ``target`` (absolute) through the presigned flow; its entry.

    ``dedupe``: when ``target`` is taken, the server writes ``name (1).ext`` instead (the
    entry returned has the name used); never an overwrite. Falls back to ``/batch`` when the
    server offers no presigned uploads and the file is under /batch's cap.
    """
    source = open_source(content, size)
    try:
        up = PresignedUpload(
            client, target, source, overwrite=overwrite, create_missing_parents=create_missing_parents,
            session=session, on_progress=on_progress, parallel=parallel, metadata=metadata, dedupe=dedupe,
        )
        return await _run_one(up)
    finally:
        source.close()


async def _run_one(up: PresignedUpload) -> dict[str, Any]:
    """One upload to its end, with the /batch fallback of a server without presigned uploads."""
    client, target, source = up.client, up.target, up.source
    try:
        return await up.run()
    except PresignUnavailable as exc:
        await up.abort()
        if source.size >= BATCH_MAX_FILE:
            raise QuotaExceeded(
                f"{target} is {source.size} bytes: /batch refuses files of 100 MiB or more, and {exc.message}",
                status=413, code="too_large",
            ) from exc
        log.info("%s; uploading %s through /batch", exc.message, target)
        if source.sequential:
            raise
        up.session = None
        entry = await client.fs._write_batch_one(
            target, _SourceFile(source), overwrite=up.overwrite, parents=up.parents, dedupe=up.dedupe,
        )
        if up.metadata is not None:
            entry = await client.fs_set_metadata(
                str(entry.get("path") or target), {"contentType": guess_type(target), **up.metadata}
            )
        return entry


async def write_large_many(
    client: PuterClient,
    files: list[tuple[str, Any, int | None]],
    *,
    overwrite: bool = True,
    create_missing_parents: bool = False,
    parallel: int = PARALLEL_PARTS,
) -> list[dict[str, Any] | PuterError]:
    """Upload several files (``(absolute target, content, size)``) through the presigned flow,
    their sessions opened with one ``/fs/startBatchWrite`` and completed with one
    ``/fs/completeBatchWrite`` (RECORDED-2.md §1 "Batch"); the parts of each file go up as
    :func:`write_large` sends them, one file after another.

    Returns one item per file, in order: its entry or its exception (not raised). The batch
    routes are all-or-nothing (one colliding file fails the whole request, 409), so when a
    batch request fails, its files go on one by one (the sessions a failed start or complete
    leaves open are aborted first, or completed singly), and only the file at fault fails.
    A file whose session expired while the others went up is started again on its own.
    """
    out: list[dict[str, Any] | PuterError | None] = [None] * len(files)
    ups: list[PresignedUpload] = []
    try:
        for target, content, size in files:
            ups.append(PresignedUpload(
                client, target, open_source(content, size), overwrite=overwrite,
                create_missing_parents=create_missing_parents, parallel=parallel,
            ))
        for start in range(0, len(ups), BATCH_START_MAX):
            group = list(range(start, min(start + BATCH_START_MAX, len(ups))))
            await _batch_group(client, ups, group, out)
    finally:
        for up in ups:
            up.source.close()
    return out  # type: ignore[return-value]  # every slot was filled


async def _alone(up: PresignedUpload) -> dict[str, Any] | PuterError:
    try:
        return await _run_one(up)
    except PuterError as exc:
        return exc


async def _abort_all(ups: list[PresignedUpload]) -> None:
    for up in ups:
        await up.abort()
        up.session = None


async def _batch_group(
    client: PuterClient, ups: list[PresignedUpload], group: list[int], out: list[Any]
) -> None:
    from puterfs.client._retry import Idempotency

    # where each session writes; a directory or a refused overwrite fails that file alone
    planned: list[tuple[int, str, bool]] = []
    for i in group:
        up = ups[i]
        if up.source.sequential:
            out[i] = await _alone(up)  # read once, in order: not held back behind the others
            continue
        try:
            upload_path, replace = await up._plan()
        except PuterError as exc:
            out[i] = exc
            continue
        planned.append((i, upload_path, replace))
    if len(planned) < 2:
        for i, _, _ in planned:
            out[i] = await _alone(ups[i])
        return
    batch = [ups[i] for i, _, _ in planned]
    try:
        # A retried start after a lost answer leaves unused sessions that expire.
        data = await client._post_json(
            "/fs/startBatchWrite", [ups[i]._start_body(p) for i, p, _ in planned], idem=Idempotency.SAFE_REJECTIONS
        )
        if not isinstance(data, list) or len(data) != len(planned):
            raise ServerError("unexpected /fs/startBatchWrite answer")
        for (i, upload_path, replace), item in zip(planned, data, strict=True):
            ups[i].session = ups[i]._session_from(item, upload_path, replace=replace, route="/fs/startBatchWrite")
        for up in batch:
            assert up.session is not None
            up._check_reachable(up.session)
    except PuterError as exc:
        # all-or-nothing: a 409 for one file (or no batch route, unreachable storage): one by one
        log.info("/fs/startBatchWrite failed (%s); uploading its %d files one by one", exc, len(planned))
        await _abort_all(batch)
        for i, _, _ in planned:
            out[i] = await _alone(ups[i])
        return
    try:
        await _batch_parts_and_complete(client, ups, [i for i, _, _ in planned], out)
    except Exception:
        # a source that cannot be read, a bug: leave no session of this batch open
        await _abort_all([up for up in batch if up.session is not None and not up.session.completed])
        raise


async def _batch_parts_and_complete(
    client: PuterClient, ups: list[PresignedUpload], started: list[int], out: list[Any]
) -> None:
    from puterfs.client._retry import Idempotency

    # the parts, file after file, as write_large sends them
    ready: list[int] = []
    for i in started:
        up = ups[i]
        s = up.session
        assert s is not None
        if s.expired():
            log.info("upload session of %s expired while the batch went up; starting it again", s.target)
            await _abort_all([up])
            out[i] = await _alone(up)
            continue
        try:
            await up._upload_parts()
        except SessionLost as exc:
            log.info("%s; starting the upload again", exc)
            up.session = None
            out[i] = await _alone(up)
            continue
        except PuterError as exc:
            await _abort_all([up])
            out[i] = exc
            continue
        ready.append(i)
    if not ready:
        return
    if len(ready) == 1:
        out[ready[0]] = await _finish_alone(ups[ready[0]])
        return
    bodies: list[dict[str, Any]] = []
    for i in ready:
        s = ups[i].session
        assert s is not None
        body: dict[str, Any] = {"uploadId": s.upload_id}
        if s.mode == "multipart":
            body["parts"] = [{"partNumber": n, "etag": s.etags[n]} for n in sorted(s.etags)]
        bodies.append(body)
    try:
        # Not retried once sent: a second completion is 409 for the sessions it completed.
        data = await client._post_json("/fs/completeBatchWrite", bodies, idem=Idempotency.SAFE_REJECTIONS)
        if not isinstance(data, list) or len(data) != len(ready):
            raise ServerError("unexpected /fs/completeBatchWrite answer")
        entries = [item.get("fsEntry") if isinstance(item, dict) else None for item in data]
        if not all(isinstance(e, dict) for e in entries):
            raise ServerError("unexpected /fs/completeBatchWrite answer")
    except PuterError as exc:
        # complete each on its own: completeWrite knows a session an earlier try completed
        log.info("/fs/completeBatchWrite failed (%s); completing its %d files one by one", exc, len(ready))
        for i in ready:
            out[i] = await _finish_alone(ups[i])
        return
    for i, entry in zip(ready, entries, strict=True):
        up = ups[i]
        assert up.session is not None
        up.session.completed = True
        try:
            out[i] = await up._settle(legacy_entry(entry))  # type: ignore[arg-type]
        except PuterError as exc:
            out[i] = exc


async def _finish_alone(up: PresignedUpload) -> dict[str, Any] | PuterError:
    """Complete (and settle) one session whose parts are all up; started afresh if lost."""
    try:
        return await up._finish()
    except SessionLost as exc:
        log.info("%s; starting the upload again", exc)
        up.session = None
        return await _alone(up)
    except PuterError as exc:
        await up.abort()
        return exc


class _SourceFile(io.RawIOBase):
    """A random-access source as a (synchronous) binary file object for /batch."""

    def __init__(self, source: _Source) -> None:
        self._src = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._src.size}[whence]
        self._pos = base + pos
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self._src.size - self._pos)
        if n <= 0:
            return 0
        src = self._src
        if isinstance(src, _MemorySource):
            buf[:n] = src._view[self._pos : self._pos + n]
        elif isinstance(src, _FdSource):
            data = os.pread(src._fd, n, src._start + self._pos)
            n = len(data)
            buf[:n] = data
        elif isinstance(src, _SeekSource):
            src._f.seek(src._start + self._pos)
            data = src._f.read(n)
            n = len(data)
            buf[:n] = data
        else:  # pragma: no cover - sequential sources never get here
            raise io.UnsupportedOperation("not seekable")
        self._pos += n
        return n


__all__ = ["LARGE_FILE", "PresignUnavailable", "PresignedUpload", "SessionLost", "UploadSession", "write_large", "write_large_many"]
