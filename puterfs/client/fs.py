"""``client.fs``: the Puter filesystem (legacy routes ``/stat``, ``/readdir``, ``/mkdir``,
multipart ``/batch``, ``/read``, ``/rename``, ``/move``, ``/copy``, ``/delete``, ``/touch``,
``/df``, ``/sign``; ``/fs/write`` for metadata), as the 26.07 server accepts them.

Paths may be absolute (``/user/x``), home-relative (``~``, ``~/x``) or relative (``x``,
resolved against the home). putergenai's flat ``fs_*`` methods on
:class:`~puterfs.client.PuterClient` call these, turning their options dicts into the
keyword flags here.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import posixpath
import re
from collections.abc import AsyncIterable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import anyio
import httpx

from puterfs.client._errors import (
    AlreadyExists,
    BadAnswer,
    BadRequest,
    IsADirectory,
    NotFound,
    PermissionDenied,
    PuterError,
    ServerError,
    error_from_body,
)
from puterfs.client._multipart import Content, MultipartBody, UploadSource, guess_type
from puterfs.client._presign import LARGE_FILE, UploadSession, write_large, write_large_many
from puterfs.client._retry import RESEND, Idempotency

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

log = logging.getLogger(__name__)

IDEMPOTENT = Idempotency.IDEMPOTENT
SAFE_REJECTIONS = Idempotency.SAFE_REJECTIONS

# /batch accepts at most 64 files per request (API reference §5.6).
BATCH_MAX_FILES = 64
# Writes that carry entry metadata go as JSON (/fs/write, /fs/batchWrite: /batch has no
# metadata channel), their bytes base64 in the body; the server's JSON parser takes 50 MB.
JSON_WRITE_MAX = 8 << 20  # bytes of content per JSON request; bigger files: /batch, then /move new_metadata
# /fs/batchWrite (JSON) has no file cap of its own (FSController.batchWrites; only the body's
# 50 MB), unlike /batch's 64: small files go up to this many per request (within JSON_WRITE_MAX)
JSON_BATCH_MAX_FILES = 256
READDIR_PAGE = 1000
# A directory listing bigger than this many pages means the server loops on cursors.
READDIR_MAX_PAGES = 100_000
_PLAIN_MD5 = re.compile(r'^(?:W/)?"?([0-9a-f]{32})"?$')


def _entry(data: Any) -> dict[str, Any]:
    """A ``check`` for answers that are one entry."""
    if not isinstance(data, dict):
        raise BadAnswer("expected an entry")
    return data


def _moved(data: Any) -> dict[str, Any]:
    moved = data.get("moved") if isinstance(data, dict) else None
    if not isinstance(moved, dict):
        raise BadAnswer("unexpected /move answer")
    return moved


async def _fill_from(response: httpx.Response, buf: memoryview, span: tuple[int, int] | None) -> str | None:
    """Copy a streamed ``/read`` answer into ``buf`` (exactly its size), checking it as
    `_read_body` does; returns the answer's ETag header."""
    if "text/html" in response.headers.get("content-type", ""):
        raise BadAnswer("an HTML page answered the read, not the server", status=response.status_code)
    skip = 0
    if response.status_code == 206 and span is not None:
        m = re.match(r"bytes (\d+)-(\d+)/", response.headers.get("content-range", ""))
        if m is None:
            raise BadAnswer("a ranged read answered without a Content-Range", status=206)
        if (int(m.group(1)), int(m.group(2))) != span:
            raise BadAnswer(f"a ranged read answered bytes {m.group(1)}-{m.group(2)} for {span[0]}-{span[1]}")
    elif span is not None:
        skip = span[0]  # the server ignored the Range: the whole file, from which the range is cut
    # a whole file with its MD5 as ETag is checked against it, as read_version does
    m = _PLAIN_MD5.match(response.headers.get("etag", "")) if response.status_code == 200 else None
    md5 = hashlib.md5() if m is not None else None
    want, pos = len(buf), 0
    async with aclosing(response.aiter_bytes()) as chunks:
        async for chunk in chunks:
            if md5 is not None:
                md5.update(chunk)
            n = len(chunk)
            if skip:
                if n <= skip:
                    skip -= n
                    continue
                chunk, n, skip = chunk[skip:], n - skip, 0
            if pos + n > want:
                if span is None or response.status_code == 206:
                    raise BadAnswer(f"the read answered more than the {want} bytes asked for")
                n = want - pos  # the rest of the whole file is not wanted
            if n:
                buf[pos : pos + n] = chunk[:n] if n < len(chunk) else chunk
                pos += n
    if pos != want or skip:
        raise BadAnswer(f"the read answered {pos} of the {want} bytes asked for (cut short?)", status=response.status_code)
    if md5 is not None and m is not None and md5.hexdigest() != m.group(1):
        raise BadAnswer("the bytes read do not match their ETag (cut short?)", status=200)
    return response.headers.get("etag")


def _read_body(span: tuple[int, int] | None) -> Callable[[httpx.Response], bytes]:
    """The ``decode`` of a ``/read``: the bytes, once they are known to be the file's. An
    HTML page (a proxy's; /read always answers application/octet-stream), a ranged answer
    shorter than its range, or a whole file that does not match its MD5 ``ETag`` is a
    ``BadAnswer`` (retried)."""

    def decode(response: httpx.Response) -> bytes:
        if "text/html" in response.headers.get("content-type", ""):
            raise BadAnswer("an HTML page answered the read, not the server", status=response.status_code)
        data = response.content
        if response.status_code == 206 and span is not None:
            m = re.match(r"bytes (\d+)-(\d+)/", response.headers.get("content-range", ""))
            if m is None:
                raise BadAnswer("a ranged read answered without a Content-Range", status=206)
            first, last = int(m.group(1)), int(m.group(2))
            if first != span[0] or len(data) != last - first + 1:
                raise BadAnswer(
                    f"a ranged read answered {len(data)} bytes at {first} for bytes {first}-{last}", status=206
                )
            return data
        m = _PLAIN_MD5.match(response.headers.get("etag", ""))
        if m is not None and hashlib.md5(data).hexdigest() != m.group(1):
            raise BadAnswer(f"the {len(data)} bytes read do not match their ETag (cut short?)", status=200)
        if span is not None:
            if len(data) <= span[1]:
                raise BadAnswer(f"the whole file answered a ranged read is {len(data)} bytes, too short")
            data = data[span[0] : span[1] + 1]  # the server ignored the Range
        return data

    return decode


_OPTION_SPELLINGS = {
    "overwrite": "overwrite",
    "dedupeName": "dedupe_name",
    "dedupe_name": "dedupe_name",
    "createMissingParents": "create_missing_parents",
    "create_missing_parents": "create_missing_parents",
}


def _fs_options(options: dict[str, Any] | None, allowed: tuple[str, ...], what: str) -> dict[str, bool]:
    """putergenai/puter.js-style options (camelCase or snake_case) as snake_case booleans;
    an unknown option is a :class:`BadRequest` rather than silently ignored."""
    out: dict[str, bool] = {}
    for key, value in (options or {}).items():
        name = _OPTION_SPELLINGS.get(key)
        if name is None or name not in allowed:
            known = ", ".join(k for k, v in _OPTION_SPELLINGS.items() if v in allowed)
            raise BadRequest(f"{what}: unknown option {key!r} (known: {known})")
        if not isinstance(value, bool):
            raise BadRequest(f"{what}: option {key!r} must be True or False")
        out[name] = value
    if out.get("overwrite") and out.get("dedupe_name"):
        raise BadRequest(f"{what}: overwrite and dedupeName cannot both be set")
    return out


def _listing(data: Any) -> Any:
    if isinstance(data, list) or (isinstance(data, dict) and isinstance(data.get("items"), list)):
        return data
    raise BadAnswer("unexpected /readdir answer")


def _copied(data: Any) -> dict[str, Any]:
    item = data[0] if isinstance(data, list) and data else data
    copied = item.get("copied") if isinstance(item, dict) else None
    if not isinstance(copied, dict):
        raise BadAnswer("unexpected /copy answer")
    return copied


def _split(path: str) -> tuple[str, str]:
    parent, name = posixpath.split(path)
    return parent or "/", name


def _seekable(fileobj: Any) -> bool:
    try:
        return bool(fileobj.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def legacy_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A v2 entry (``/fs/*`` answers: camelCase) with the legacy keys (``is_dir``, ``id``, ...)
    added, so callers read one shape."""
    out = dict(entry)
    for v2_key, key in (("isDir", "is_dir"), ("parentUid", "parent_uid"), ("isShortcut", "is_shortcut"),
                        ("isSymlink", "is_symlink"), ("isPublic", "is_public")):
        if v2_key in entry and key not in out:
            out[key] = entry[v2_key]
    out.setdefault("id", entry.get("uid") or entry.get("uuid"))
    return out


SIGN_MAX_ITEMS = 100  # uids per /sign request (the server sets no cap; a JSON body of ~6 KiB)
_HEX = re.compile(r"^[0-9a-f]{16,128}$")


def _check_within(buf: memoryview, offset: int, size: int) -> None:
    if len(buf) == 0 or offset < 0 or offset + len(buf) > size:
        raise BadRequest(f"bytes {offset}+{len(buf)} are not within a file of {size} bytes")


def _maybe_file_of(entry: dict[str, Any] | None, size: int) -> bool:
    """Whether a listed entry can be a file of `size` bytes."""
    return entry is not None and not entry.get("is_dir") and int(entry.get("size") or 0) == size


@dataclass(frozen=True, repr=False)
class SignedRead:
    """A token-free read URL of one file (``/file?uid&expires&signature``, from ``/sign``).

    The signature is a credential like a token (anyone holding it reads the file, for as long
    as it is valid: practically forever): it is never shown by ``repr``/``str``, and the
    client sends it only as the query of ``GET /file`` on its own API host."""

    uid: str
    expires: int
    signature: str = field(compare=False)

    def __repr__(self) -> str:
        return f"SignedRead(uid={self.uid!r}, expires={self.expires})"

    __str__ = __repr__

    def params(self) -> dict[str, str]:
        return {"uid": self.uid, "expires": str(self.expires), "signature": self.signature}

    @classmethod
    def from_answer(cls, uid: str, slot: Any) -> SignedRead | None:
        """One slot of a ``/sign`` answer for ``uid``: None for the ``{}`` of an item the
        server could not sign; anything else that is not a signature of that uid is a
        ``BadAnswer``."""
        if slot == {}:
            return None
        sig = slot.get("signature") if isinstance(slot, dict) else None
        expires = slot.get("expires") if isinstance(slot, dict) else None
        if (
            not isinstance(sig, str) or not _HEX.match(sig) or slot.get("uid") != uid
            or not isinstance(expires, int) or isinstance(expires, bool)
        ):
            raise BadAnswer("/sign answered something that is not a read signature of the uid asked for")
        return cls(uid, expires, sig)


class FS:
    """The signed-in user's files."""

    def __init__(self, client: PuterClient) -> None:
        self._c = client

    async def stat(self, path: str) -> dict[str, Any]:
        """The legacy entry of ``path`` (``POST /stat``)."""
        return await self._c._post_json("/stat", {"path": await self._c._abs(path)}, idem=IDEMPOTENT, check=_entry)

    async def readdir(self, path: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """All entries of a directory, fetched page by page."""
        body: dict[str, Any] = {"path": await self._c._abs(path)}
        body.update(options or {})
        body.setdefault("limit", READDIR_PAGE)
        # Sending the key "cursor" (even null) switches the server to the paginated
        # envelope {items, cursor?}; a server that ignores it answers with an array.
        body["cursor"] = None
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(READDIR_MAX_PAGES):
            data = await self._c._post_json("/readdir", body, idem=IDEMPOTENT, check=_listing)
            if isinstance(data, list):
                entries.extend(data)
                return entries
            entries.extend(data["items"])
            cursor = data.get("cursor")
            if not cursor:
                return entries
            if cursor in seen:
                raise ServerError("/readdir returned the same cursor twice")
            seen.add(cursor)
            body["cursor"] = cursor
        raise ServerError("/readdir did not finish")

    async def mkdir(self, path: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a directory and return its entry.

        The server is idempotent: an existing directory is returned as is (no
        "exists" error); a file in the way is 409. Options are snake_case
        (``create_missing_parents``, ``dedupe_name`` (default False), ...); putergenai's
        camelCase spellings are translated.
        """
        opts = dict(options or {})
        for camel, snake in (("createMissingParents", "create_missing_parents"), ("dedupeName", "dedupe_name")):
            if camel in opts:
                opts.setdefault(snake, opts.pop(camel))
        body = {"path": await self._c._abs(path), "dedupe_name": False, **opts}
        # A retry of a plain mkdir finds the directory and returns it; with
        # dedupe_name a retry would create "x (1)".
        idem = SAFE_REJECTIONS if body.get("dedupe_name") else IDEMPOTENT
        return await self._c._post_json("/mkdir", body, idem=idem, check=_entry)

    def _write_op(
        self, index: int, path: str, overwrite: bool, create_missing_parents: bool, dedupe_name: bool = False
    ) -> dict[str, Any]:
        parent, name = _split(path)
        if not name:
            raise BadRequest("cannot write to /")
        return {
            "op": "write",
            "path": parent,
            "name": name,
            "item_upload_id": index,
            "overwrite": overwrite,
            # /batch renames on collision unless told not to (§5.6): only when asked.
            "dedupe_name": dedupe_name,
            "create_missing_parents": create_missing_parents,
        }

    async def _batch_upload(
        self,
        items: Sequence[tuple[str, UploadSource]],
        *,
        overwrite: bool,
        create_missing_parents: bool,
        dedupe_name: bool = False,
    ) -> tuple[int, list[Any]]:
        """One multipart ``/batch`` request; (status, per-op results)."""
        body = MultipartBody()
        ops = [
            self._write_op(i, p, overwrite, create_missing_parents, dedupe_name) for i, (p, _) in enumerate(items)
        ]
        # puter.js order: every fileinfo, then every write op, then every file (§5.6).
        for op, (_, source) in zip(ops, items, strict=True):
            body.add_json("fileinfo", {"name": op["name"], "type": guess_type(op["name"]), "size": source.size})
        for op in ops:
            body.add_json("operation", op)
        for op, (_, source) in zip(ops, items, strict=True):
            body.add_file("file", op["name"], guess_type(op["name"]), source)
        # Overwriting the same bytes twice is harmless; a non-overwrite write retried
        # after it succeeded would fail with "already exists".
        idem = IDEMPOTENT if overwrite else SAFE_REJECTIONS

        def decode(response: httpx.Response) -> tuple[int, list[Any]]:
            data = self._c._json(response)
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list) or len(results) != len(items):
                raise BadAnswer("unexpected /batch answer", status=response.status_code)
            return response.status_code, results

        async def reconcile(err: PuterError) -> Any:
            # not one of the files there: nothing was written, it may be sent again; any
            # of them there is left to the caller (it may be ours or another client's)
            listed = await self._listed({_split(p)[0] or "/" for p, _ in items})
            if not any(p in listed for p, _ in items):
                return RESEND
            raise err

        result: tuple[int, list[Any]] = await self._c._send(
            "POST", self._c.api_url + "/batch", idem=idem, multipart=body, decode=decode,
            reconcile=None if overwrite else reconcile,
        )
        return result

    async def _listed(self, folders: set[str]) -> dict[str, dict[str, Any]]:
        """{path: entry} of what the folders hold now (a missing folder holds nothing)."""
        out: dict[str, dict[str, Any]] = {}
        for folder in sorted(folders):
            try:
                entries = await self.readdir(folder)
            except NotFound:
                continue
            for e in entries:
                name = e.get("name")
                if isinstance(name, str):
                    out[posixpath.join(folder, name)] = e
        return out

    async def _all_held(
        self, items: Sequence[tuple[str, bytes]], entries: Sequence[dict[str, Any] | None] | None = None
    ) -> list[dict[str, Any] | PuterError | None]:
        """`_holds` of each (path, data) (its entry, when known, spares a stat), a few at a
        time (the server's read cap is 5); the error of each check that failed in its slot
        (one failed read must not throw away what the others learned)."""
        out: list[dict[str, Any] | PuterError | None] = [None] * len(items)
        limit = anyio.CapacityLimiter(4)
        # With the entries known (a listing), each file's version is asked through a signed
        # read instead: its ETag is the MD5 of the whole file, for one byte, from a budget ten
        # times /read's (3,000 a minute, 60 in flight, against 300 and 5 on the free tier), so
        # 256 checks take seconds, not the minute /read's budget spreads them over (a lost
        # /fs/batchWrite answer then outlived its request's deadline). Any doubt (no
        # signature, no plain MD5, a failure) falls back to reading the file. One file alone
        # is read (one request rather than a /sign and a /file).
        signed: dict[int, SignedRead] = {}
        if entries is not None:
            idx = [i for i, (_, data) in enumerate(items)
                   if data and isinstance((entries[i] or {}).get("uid"), str) and _maybe_file_of(entries[i], len(data))]
            try:
                sigs = await self.sign_reads([entries[i]["uid"] for i in idx]) if len(idx) > 1 else []  # type: ignore[index]
            except PuterError as exc:
                log.debug("could not sign reads to check %d files (%s); reading them", len(idx), exc)
                sigs = []
            signed = {i: sig for i, sig in zip(idx, sigs, strict=False) if sig is not None}
        fast = anyio.CapacityLimiter(16)

        async def by_version(i: int, data: bytes) -> bool | None:
            """Whether file i holds `data` by its version; None when that cannot tell."""
            async with fast:
                try:
                    _, etag = await self.read_signed(signed[i], offset=0, length=1, size=len(data))
                except PuterError as exc:
                    log.debug("signed version check of %s failed: %s", items[i][0], exc)
                    return None
            m = _PLAIN_MD5.match(etag or "")
            return None if m is None else m.group(1) == hashlib.md5(data).hexdigest()

        async def one(i: int, path: str, data: bytes) -> None:
            entry = entries[i] if entries is not None else None
            if i in signed:
                same = await by_version(i, data)
                if same is not None:
                    out[i] = entry if same else None
                    return
            async with limit:
                try:
                    out[i] = await self._holds(path, data, entry)
                except PuterError as exc:
                    out[i] = exc

        async with anyio.create_task_group() as tg:
            for i, (path, data) in enumerate(items):
                tg.start_soon(one, i, path, data)
        return out

    async def holding(self, items: Sequence[tuple[str, bytes]]) -> list[dict[str, Any] | PuterError | None]:
        """For each (path, data): its entry when the server holds exactly ``data`` at ``path``,
        None when it holds something else there or nothing, or the error of a check that
        failed. One listing per folder, then each file that could hold it checked by its
        version (see `_all_held`)."""
        return (await self._held_at([(await self._c._abs(p), d) for p, d in items]))[1]

    async def _held_at(
        self, items: Sequence[tuple[str, bytes]]
    ) -> tuple[list[dict[str, Any] | None], list[dict[str, Any] | PuterError | None]]:
        """For (absolute path, data) pairs: what the server has at each path (one listing per
        folder; None: nothing), and for each its entry when it holds exactly ``data``, None when
        it does not (or nothing is there), or the error of a check that failed (`_all_held`)."""
        listed = await self._listed({_split(p)[0] or "/" for p, _ in items})
        there = [listed.get(p) for p, _ in items]
        checks = [i for i, ((_, d), e) in enumerate(zip(items, there, strict=True)) if _maybe_file_of(e, len(d))]
        found = await self._all_held([items[i] for i in checks], [there[i] for i in checks])
        held: list[dict[str, Any] | PuterError | None] = [None] * len(items)
        for i, h in zip(checks, found, strict=True):
            held[i] = h
        return there, held

    async def _holds(self, path: str, data: bytes, entry: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The entry at ``path`` when the server holds exactly ``data`` there, else None."""
        if entry is None:
            try:
                entry = await self.stat(path)
            except NotFound:
                return None
        if entry.get("is_dir") or int(entry.get("size") or 0) != len(data):
            return None
        there = await self.read(path, size=len(data)) if data else b""
        return entry if hashlib.md5(there).digest() == hashlib.md5(data).digest() else None

    @staticmethod
    def _op_result(status: int, result: Any) -> dict[str, Any] | PuterError:
        if isinstance(result, dict) and result.get("error"):
            op_status = result.get("status") if isinstance(result.get("status"), int) else status
            return error_from_body(op_status, result)
        if not isinstance(result, dict):
            return ServerError("unexpected /batch result", status=status, body=result)
        return result

    async def write(
        self,
        path: str,
        content: Content,
        *,
        overwrite: bool | None = None,
        dedupe_name: bool = False,
        create_missing_parents: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write a file and return its entry.

        ``content`` is text (UTF-8), bytes, a binary file object (read from its
        current position; streamed, never loaded whole) or a path to a local file.
        ``overwrite`` (default True, False with ``dedupe_name``; False →
        :class:`AlreadyExists` when the file exists), ``dedupe_name`` (True writes
        ``name (1).ext`` when the name is taken; the returned entry has the name used),
        ``create_missing_parents``, ``metadata`` (a dict stored as the entry's metadata,
        merged by the server with the content type; RECORDED-2 §7). Sent as multipart
        ``/batch``; with ``metadata`` as ``/fs/write`` (files up to 8 MiB) or ``/batch``
        followed by ``/move new_metadata``. Content of 100 MiB or more goes up through the
        presigned flow (:meth:`write_large`).
        """
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError("metadata must be a dict")
        if overwrite and dedupe_name:
            raise BadRequest("fs write: overwrite and dedupe_name cannot both be set")
        dedupe = bool(dedupe_name)
        overwrite = (not dedupe) if overwrite is None else bool(overwrite)
        parents = bool(create_missing_parents)
        target = await self._c._abs(path)
        source = UploadSource(content)
        try:
            if source.size >= LARGE_FILE:  # /batch refuses it
                return await write_large(
                    self._c, target, source.original(), size=source.size, overwrite=overwrite,
                    create_missing_parents=parents, metadata=metadata, dedupe=dedupe,
                )
            if metadata is not None and source.size <= JSON_WRITE_MAX:
                return (await self._json_writes([(target, source, metadata)], overwrite, parents, dedupe))[0]
            outcome = await self._write_batch_one(target, source, overwrite=overwrite, parents=parents, dedupe=dedupe)
        finally:
            source.close()
        if metadata is not None:
            written = str(outcome.get("path") or target)  # the deduplicated name, if it was
            return await self.set_metadata(written, {"contentType": guess_type(target), **metadata})
        return outcome

    async def _write_batch_one(
        self, target: str, source: UploadSource | Any, *, overwrite: bool, parents: bool, dedupe: bool = False
    ) -> dict[str, Any]:
        if not isinstance(source, UploadSource):
            source = UploadSource(source)
        status, results = await self._batch_upload(
            [(target, source)], overwrite=overwrite, create_missing_parents=parents, dedupe_name=dedupe
        )
        outcome = self._op_result(status, results[0])
        if isinstance(outcome, PuterError):
            raise outcome
        return outcome

    async def write_large(
        self,
        path: str,
        content: Content | AsyncIterable[bytes],
        *,
        size: int | None = None,
        overwrite: bool = True,
        create_missing_parents: bool = False,
        session: UploadSession | None = None,
        on_progress: Callable[[UploadSession], Any] | None = None,
        parallel: int = 4,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload through the presigned flow (any size; parts of the server's part size).

        ``content`` as for :meth:`write`, or an async iterable of bytes (then ``size``
        is required). ``on_progress(session)`` is called after the session starts,
        after each part and at completion: persist ``session.to_json()`` and pass
        ``UploadSession.from_json(...)`` back as ``session`` to resume. An existing file is
        replaced only once the new one is complete (see ``_presign.py``).
        """
        return await write_large(
            self._c, await self._c._abs(path), content, size=size, overwrite=overwrite,
            create_missing_parents=create_missing_parents, session=session, on_progress=on_progress,
            parallel=parallel, metadata=metadata,
        )

    async def _json_writes(
        self,
        items: Sequence[tuple[str, UploadSource, dict[str, Any]]],
        overwrite: bool,
        parents: bool,
        dedupe: bool = False,
    ) -> list[dict[str, Any]]:
        """Files with metadata, in one ``/fs/write`` (one item) or ``/fs/batchWrite`` request;
        their entries in legacy form."""
        reqs = []
        for target, source, metadata in items:
            data = b"".join([chunk async for chunk in source.chunks()])
            reqs.append({
                "fileMetadata": {
                    "path": target, "size": len(data), "contentType": guess_type(target),
                    "overwrite": overwrite, "dedupeName": dedupe, "createMissingParents": parents,
                    "metadata": metadata,
                },
                "fileContent": base64.b64encode(data).decode("ascii"),
                "encoding": "base64",
            })
        idem = IDEMPOTENT if overwrite else SAFE_REJECTIONS

        def entries(answers: Any) -> list[dict[str, Any]]:
            if not isinstance(answers, list) or len(answers) != len(reqs):
                raise BadAnswer("unexpected /fs/batchWrite answer")
            out = []
            for a in answers:
                entry = a.get("fsEntry") if isinstance(a, dict) else None
                if not isinstance(entry, dict):
                    raise BadAnswer("unexpected /fs/write answer")
                out.append(legacy_entry(entry))
            return out

        async def reconcile(err: PuterError) -> Any:
            # what is there now decides (one listing per folder, then a read of each file
            # that could be ours): every file holding our bytes (done), none of them there
            # (not done: send again). Else, for a batch, each file on its own: ours there is
            # done; a name free is not done (the request's error: sent again later); anything
            # else there (another client's, an older attempt of ours, or one whose read
            # failed) has its name taken: the caller checks it itself (the conflict rule)
            items = [(r["fileMetadata"]["path"], base64.b64decode(r["fileContent"])) for r in reqs]
            there, held = await self._held_at(items)  # nothing there: no check sent
            if all(e is None for e in there):
                return RESEND
            out: list[dict[str, Any] | PuterError] = []
            for i, (path, _) in enumerate(items):
                if there[i] is None:
                    out.append(err)
                    continue
                h = held[i]
                if isinstance(h, dict):
                    out.append(h)
                elif len(items) == 1:
                    raise h if isinstance(h, PuterError) else err
                else:
                    why = f" (its check failed: {h})" if isinstance(h, PuterError) else ""
                    out.append(AlreadyExists(f"{path} exists on the server and may not be ours{why}",
                                             code="item_with_same_name_exists"))
            return out

        rec = None if overwrite or dedupe else reconcile
        if len(reqs) == 1:
            return await self._c._post_json(
                "/fs/write", reqs[0], idem=idem, check=lambda a: entries([a]), reconcile=rec
            )
        return await self._c._post_json("/fs/batchWrite", reqs, idem=idem, check=entries, reconcile=rec)

    async def set_metadata(self, path: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole metadata of an entry (contentType included: send it along) and
        return the entry: a legacy ``/move`` onto its own name with ``new_metadata``
        (RECORDED-2 §7). It also bumps the entry's ``modified``."""
        target = await self._c._abs(path)
        parent, name = _split(target)
        if not name:
            raise BadRequest("cannot set the metadata of /")
        body = {
            "source": target, "destination": parent, "new_name": name, "overwrite": False,
            "dedupe_name": False, "new_metadata": metadata,
        }
        # onto its own path: no collision, so a retry after a success is harmless
        return await self._c._post_json("/move", body, idem=IDEMPOTENT, check=_moved)

    async def write_many(
        self,
        files: Sequence[tuple[str, Content]],
        *,
        overwrite: bool = True,
        create_missing_parents: bool = False,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any] | PuterError]:
        """Upload several files: the small ones in one ``/batch`` request per 64 files, the
        files of 100 MiB or more through the presigned flow (``/batch`` refuses those), after
        the small ones; two or more of those are opened with one ``/fs/startBatchWrite`` and
        completed with one ``/fs/completeBatchWrite`` (one by one if that batch fails).

        Returns one item per file, in order: its entry, or the exception object for
        that file (not raised). When a whole request fails, each of its files gets
        that request's exception. With ``metadata`` (one dict per file) the small files go
        as ``/fs/batchWrite`` instead (up to 256 files and 8 MiB per request).
        """
        if metadata is not None:
            return await self._write_many_with_metadata(files, list(metadata), overwrite, create_missing_parents)
        out: list[dict[str, Any] | PuterError | None] = [None] * len(files)
        pending: list[tuple[int, str, UploadSource]] = []  # small files for the next /batch
        large: list[tuple[int, str, UploadSource]] = []  # files for the presigned flow, sent last

        async def send() -> None:
            try:
                status, results = await self._batch_upload(
                    [(target, source) for _, target, source in pending], overwrite=overwrite,
                    create_missing_parents=create_missing_parents,
                )
                for (i, _, _), r in zip(pending, results, strict=True):
                    out[i] = self._op_result(status, r)
            except PuterError as exc:
                for i, _, _ in pending:
                    out[i] = exc
            finally:
                for _, _, source in pending:
                    source.close()
                pending.clear()

        try:
            for i, (path, content) in enumerate(files):
                source = UploadSource(content)
                try:
                    target = await self._c._abs(path)
                except BaseException:
                    source.close()
                    raise
                if source.size < LARGE_FILE:
                    pending.append((i, target, source))
                    if len(pending) >= BATCH_MAX_FILES:
                        await send()
                    continue
                large.append((i, target, source))
            if pending:
                await send()
            if len(large) == 1:
                i, target, source = large[0]
                try:
                    out[i] = await write_large(
                        self._c, target, source.original(), size=source.size, overwrite=overwrite,
                        create_missing_parents=create_missing_parents,
                    )
                except PuterError as exc:
                    out[i] = exc
            elif large:
                # their sessions opened and completed together (/fs/startBatchWrite)
                results = await write_large_many(
                    self._c, [(target, source.original(), source.size) for _, target, source in large],
                    overwrite=overwrite, create_missing_parents=create_missing_parents,
                )
                for (i, _, _), r in zip(large, results, strict=True):
                    out[i] = r
        finally:
            for _, _, source in pending + large:
                source.close()
        return out  # type: ignore[return-value]  # every slot was filled

    async def batch(self, operations: Sequence[dict[str, Any]]) -> list[dict[str, Any] | PuterError]:
        """Run namespace operations in one JSON ``/batch`` request (§5.7), in order.

        Each op is the server's form: ``{"op":"mkdir","path":<parent>,"name":x,
        "dedupe_name":false}`` (the op dedupes by default), ``{"op":"delete","path":p,
        "recursive":bool}`` (recursive by default), ``{"op":"move","source":p,
        "destination":<parent>,"new_name":x,"overwrite":bool,"dedupe_name":false}``; paths
        may be relative to the home directory. Returns one item per op: its result (an
        entry, or ``{"ok":true,"uid"}`` for a delete) or the exception object for that op
        (partial failure is HTTP 218). A request that fails as a whole raises. Never
        retried once sent: a retried move whose first attempt got through finds no source.
        """
        ops: list[dict[str, Any]] = []
        for op in operations:
            kind = op.get("op")
            if kind not in ("mkdir", "delete", "move"):
                raise BadRequest(f"unsupported batch op {kind!r}")
            o = dict(op)
            for key in ("path", "source", "destination"):
                if isinstance(o.get(key), str):
                    o[key] = await self._c._abs(o[key])
            if kind == "delete":
                await self._refuse_dangerous(o["path"], "delete")
            elif kind == "move":
                await self._refuse_dangerous(o["source"], "move")
            ops.append(o)
        if not ops:
            return []
        response = await self._c._send(
            "POST", self._c.api_url + "/batch", idem=SAFE_REJECTIONS, json_body={"operations": ops}
        )
        data = self._c._json(response)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(ops):
            raise ServerError("unexpected /batch answer", status=response.status_code)
        return [self._op_result(response.status_code, r) for r in results]

    async def _write_many_with_metadata(
        self, files: Sequence[tuple[str, Content]], metadata: list[dict[str, Any]], overwrite: bool, parents: bool
    ) -> list[dict[str, Any] | PuterError]:
        if len(metadata) != len(files):
            raise ValueError("one metadata dict per file")
        out: list[dict[str, Any] | PuterError | None] = [None] * len(files)
        chunk: list[tuple[int, str, UploadSource, dict[str, Any]]] = []
        size = 0

        async def send() -> None:
            try:
                entries = await self._json_writes([(t, src, md) for _, t, src, md in chunk], overwrite, parents)
                for (i, _, _, _), entry in zip(chunk, entries, strict=True):
                    out[i] = entry
            except PuterError as exc:
                for i, _, _, _ in chunk:
                    out[i] = exc
            finally:
                for _, _, source, _ in chunk:
                    source.close()
            chunk.clear()

        for i, ((path, content), md) in enumerate(zip(files, metadata, strict=True)):
            source = UploadSource(content)
            if source.size > JSON_WRITE_MAX or source.size >= LARGE_FILE:
                # too big for a JSON body: alone, the way write() sends it (/batch and then the
                # metadata, or the presigned flow from 100 MiB)
                try:
                    out[i] = await self.write(path, source.original(), overwrite=overwrite,
                                              create_missing_parents=parents, metadata=md)
                except PuterError as exc:
                    out[i] = exc
                finally:
                    source.close()
                continue
            if chunk and (len(chunk) >= JSON_BATCH_MAX_FILES or size + source.size > JSON_WRITE_MAX):
                await send()
                size = 0
            chunk.append((i, await self._c._abs(path), source, md))
            size += source.size
        if chunk:
            await send()
        return out  # type: ignore[return-value]  # every slot was filled

    async def _read_range(
        self, path: str, offset: int | None, length: int | None, size: int | None
    ) -> tuple[str, tuple[int, int] | None, bool]:
        """Plan a read: (abs path, (first, last) byte or None for everything, empty?), as
        `_span` does, with the size from ``size`` or a ``stat`` when the range needs it."""
        target = await self._c._abs(path)
        if size is None and not ((offset or 0) == 0 and length is None) and length != 0:
            self._span(offset, length, 0)  # negative offset or length: refused before any request
            entry = await self.stat(target)
            if entry.get("is_dir"):
                raise IsADirectory(f"{target} is a directory", status=400, code="cannot_read_a_directory")
            size = int(entry.get("size") or 0)
        span, empty = self._span(offset, length, size or 0)
        return target, span, empty

    async def read(
        self, path: str, *, offset: int | None = None, length: int | None = None, size: int | None = None
    ) -> bytes:
        """The bytes of a file, or ``length`` bytes from ``offset`` (b"" at/after EOF).

        ``size`` (keyword, optional) is the file size if the caller knows it; a
        partial read otherwise stats the file first to clamp the range.
        """
        data, _ = await self.read_version(path, offset=offset, length=length, size=size)
        return data

    async def read_version(
        self, path: str, *, offset: int | None = None, length: int | None = None, size: int | None = None
    ) -> tuple[bytes, str | None]:
        """Like `read`, with the version the bytes come from: the answer's ``ETag`` (the
        quoted MD5 of the content, or the object store's multipart ``"<md5>-<parts>"``; a
        ranged answer carries the ETag of the whole file), unquoted; None when there was no
        request (an empty range) or no ETag. Puter ignores conditional requests (§5.8), so
        a caller that expects a version compares this itself."""
        target, span, empty = await self._read_range(path, offset, length, size)
        if empty:
            return b"", None
        return await self._get_version("/read", {"file": target}, span)

    async def read_version_into(self, path: str, buf: memoryview, *, offset: int, size: int) -> str | None:
        """Fill the writable buffer ``buf`` with the ``len(buf)`` bytes of a file of ``size``
        bytes from ``offset``, straight from the answer as it arrives (no copy of the body is
        collected in memory); returns the version (ETag) like `read_version`.

        The answer is checked like `read_version`'s (an HTML page, a ranged answer for other
        bytes, one too short or too long, a whole file when a range was asked for is skipped to
        the range); a bad answer or a connection broken mid-body sends the request again (up to
        the client's bounded retries), filling ``buf`` anew."""
        _check_within(buf, offset, size)
        target, span, _ = await self._read_range(path, offset, len(buf), size)
        return await self._get_into("/read", {"file": target}, buf, span, what=target)

    async def sign_reads(self, uids: Sequence[str]) -> list[SignedRead | None]:
        """Token-free read URLs of files by uid (``POST /sign``, action read, as many items
        per request as `SIGN_MAX_ITEMS`), in order; None for a uid the server cannot sign
        (it answers ``{}`` in that slot: gone, or not this account's to sign). The owner's
        signatures never expire in practice (fileSigning.ts: a TTL of 9,999,999,999,999 s).
        Each request draws from ``fs:sign`` (150 a minute on the free tier)."""
        out: list[SignedRead | None] = []
        for i in range(0, len(uids), SIGN_MAX_ITEMS):
            part = list(uids[i : i + SIGN_MAX_ITEMS])
            body = {"items": [{"uid": u, "action": "read"} for u in part]}
            data = await self._c._post_json("/sign", body, idem=IDEMPOTENT)
            sigs = data.get("signatures") if isinstance(data, dict) else None
            if not isinstance(sigs, list) or len(sigs) != len(part):
                raise BadAnswer(f"/sign answered {len(sigs) if isinstance(sigs, list) else 'no'} signatures"
                                f" for {len(part)} items")
            out.extend(SignedRead.from_answer(u, sig) for u, sig in zip(part, sigs, strict=True))
        return out

    async def read_signed(
        self, signed: SignedRead, *, offset: int, length: int, size: int
    ) -> tuple[bytes, str | None]:
        """`read_version` through a signed read URL (``GET /file``, no token; Range support,
        the ETag of the whole file, as ``/read``): ``length`` bytes at ``offset`` of the file
        of ``size`` bytes, and their version. Drawn from the ``fs:signed-read`` budget (3,000
        a minute and 60 in flight, keyed by the client's network, on every tier) instead of
        ``fs:read``'s. The answers are checked and retried as `read_version`'s; a refused
        signature is ``PermissionDenied`` (403), a uid gone ``NotFound`` (404), a suspended
        owner ``AuthenticationError`` (401)."""
        span, empty = self._span(offset, length, size)
        if empty:
            return b"", None
        return await self._get_version("/file", signed.params(), span, auth=False)

    async def read_signed_into(self, signed: SignedRead, buf: memoryview, *, offset: int, size: int) -> str | None:
        """`read_version_into` through a signed read URL (see `read_signed`)."""
        _check_within(buf, offset, size)
        span, _ = self._span(offset, len(buf), size)
        return await self._get_into("/file", signed.params(), buf, span, what=repr(signed), auth=False)

    @staticmethod
    def _span(offset: int | None, length: int | None, size: int) -> tuple[tuple[int, int] | None, bool]:
        """A read's plan for a file of ``size`` bytes: ((first, last) byte or None for
        everything, empty?). Puter answers 500 to a Range on an empty file or starting at/after
        EOF, and to multi-ranges (§5.8), so ranges are clamped here against the size."""
        if (offset is not None and offset < 0) or (length is not None and length < 0):
            raise BadRequest("offset and length must not be negative")
        start = offset or 0
        if start == 0 and length is None:
            return None, False
        if length == 0 or start >= size:
            return None, True
        end = size - 1 if length is None else min(size, start + length) - 1
        if start == 0 and end == size - 1:
            return None, False
        return (start, end), False

    async def _get_version(
        self, route: str, params: dict[str, Any], span: tuple[int, int] | None, *, auth: bool = True
    ) -> tuple[bytes, str | None]:
        """One read of ``route`` (``/read`` or ``/file``), checked (`_read_body`) and retried
        by the transport; the bytes and their version."""
        headers = {"Range": f"bytes={span[0]}-{span[1]}"} if span else None
        body = _read_body(span)
        data, etag = await self._c._send(
            "GET", self._c.api_url + route, idem=IDEMPOTENT, params=params, headers=headers, auth=auth,
            decode=lambda r: (body(r), r.headers.get("etag")),
        )
        return data, parse_etag(etag)

    async def _get_into(
        self, route: str, params: dict[str, Any], buf: memoryview, span: tuple[int, int] | None, *,
        what: str, auth: bool = True,
    ) -> str | None:
        """One read of ``route`` streamed into ``buf`` (`_fill_from`), sent again after a bad
        answer or a connection broken mid-body; ``what`` names it in log lines."""
        headers = {"Range": f"bytes={span[0]}-{span[1]}"} if span else None
        attempt = 0
        while True:
            attempt += 1
            response = await self._c._send(
                "GET", self._c.api_url + route, idem=IDEMPOTENT, params=params, headers=headers, auth=auth,
                stream=True,
            )
            try:
                etag = await _fill_from(response, buf, span)
                return parse_etag(etag)
            except (httpx.RequestError, BadAnswer) as exc:
                from puterfs.client._client import _map_transport_error  # the transport's own mapping

                err = exc if isinstance(exc, BadAnswer) else _map_transport_error(exc)
                if attempt > self._c._retry.bounded:
                    raise err from exc
                log.info("read of %s into a buffer failed (%s); sending it again", what, err)
                await anyio.sleep(self._c._retry.delay(attempt))
            finally:
                await response.aclose()

    async def read_into(
        self,
        path: str,
        fileobj: IO[bytes],
        *,
        offset: int = 0,
        length: int | None = None,
        size: int | None = None,
    ) -> int:
        """Stream a file (or a range of it) into ``fileobj``; returns the bytes written.

        ``fileobj.write`` is called with chunks as they arrive (a plain sync binary file
        is fine), so large downloads are never held in memory. A retry after a broken
        connection restarts the transfer; the caller's file is rewound to where it was
        when ``fileobj`` supports ``seek``/``truncate``.
        """
        target, span, empty = await self._read_range(path, offset, length, size)
        if empty:
            return 0
        headers = {"Range": f"bytes={span[0]}-{span[1]}"} if span else None
        origin = fileobj.tell() if _seekable(fileobj) else None
        attempt = 0
        while True:
            attempt += 1
            written = 0
            response = await self._c._send(
                "GET",
                self._c.api_url + "/read",
                idem=IDEMPOTENT,
                params={"file": target},
                headers=headers,
                stream=True,
            )
            try:
                skip = span[0] if span and response.status_code == 200 else 0
                want = (span[1] - span[0] + 1) if span else None
                async with aclosing(response.aiter_bytes()) as chunks:
                    async for chunk in chunks:
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        if want is not None:
                            chunk = chunk[: max(0, want - written)]
                        if chunk:
                            fileobj.write(chunk)
                            written += len(chunk)
                return written
            except httpx.RequestError as exc:
                from puterfs.client._client import _map_transport_error  # the transport's own mapping

                err = _map_transport_error(exc)
                if origin is None or attempt > self._c._retry.bounded:
                    raise err from exc
                log.info("download of %s broke after %d bytes: %s; restarting", target, written, err)
                fileobj.seek(origin)
                fileobj.truncate()
                await anyio.sleep(self._c._retry.delay(attempt))
            finally:
                await response.aclose()

    async def _refuse_dangerous(self, target: str, what: str) -> None:
        # Puter deletes a user's home on request and leaves the account broken (§5.12).
        if target == "/" or target == await self._c.home():
            raise PermissionDenied(f"refusing to {what} {target}: it is the root or your home directory")

    async def delete(self, path: str, *, recursive: bool = True) -> None:
        """Delete a file or directory (recursively by default).

        The home directory and ``/`` are refused without sending anything. Retried
        like an idempotent call; a retry answered with 404 counts as success (the
        entry is gone, most likely deleted by the attempt whose answer was lost).
        """
        target = await self._c._abs(path)
        await self._refuse_dangerous(target, "delete")
        # Deleting twice has the effect of deleting once, except that a retry whose
        # first attempt had already deleted the entry answers 404: that is success.
        # The server answers JSON; anything else (an HTML page from a proxy) is no proof
        # that the entry is gone: it is sent again (and a 404 then says it is gone).
        await self._c._send(
            "POST",
            self._c.api_url + "/delete",
            idem=IDEMPOTENT,
            json_body={"path": target, "recursive": bool(recursive)},
            gone_ok_on_retry=True,
            decode=self._c._json,
        )

    async def rename(
        self,
        source: str,
        destination: str,
        *,
        overwrite: bool = False,
        dedupe_name: bool = False,
        create_missing_parents: bool = False,
    ) -> dict[str, Any]:
        """Rename ``source`` to ``destination`` and return the renamed entry.

        ``destination`` is a full path (absolute, ``~/...`` or home-relative, as
        putergenai passes it), or a bare name (no ``/``) for a new name in the same
        directory. Within one directory this is ``/rename``; to another directory, or
        with a flag set, it is :meth:`move` (same flags). An existing destination is
        never replaced unless ``overwrite``.
        """
        src = await self._c._abs(source)
        if not destination or not isinstance(destination, str):
            raise BadRequest("rename needs a destination")
        if "/" not in destination and not destination.startswith("~"):
            if destination in (".", ".."):
                raise BadRequest(f"cannot rename to {destination!r}")
            dst = posixpath.join(_split(src)[0], destination)
        else:
            dst = await self._c._abs(destination)
        if _split(dst)[0] != _split(src)[0] or overwrite or dedupe_name or create_missing_parents:
            return await self.move(
                src, dst, overwrite=overwrite, dedupe_name=dedupe_name, create_missing_parents=create_missing_parents
            )
        await self._refuse_dangerous(src, "rename")
        if dst == src:
            return await self.stat(src)
        # Not idempotent: a retry after success would find no source; reconciled instead.
        return await self._c._post_json(
            "/rename", {"path": src, "new_name": _split(dst)[1]}, idem=SAFE_REJECTIONS, check=_entry,
            reconcile=self._moved_or_not(src, dst),
        )

    def _moved_or_not(self, src: str, dst: str) -> Callable[[PuterError], Any]:
        """The reconcile of a move or rename whose outcome is unknown: the source gone and
        the destination there means it was done (the destination's entry is the answer);
        the source still there means it was not (a move takes the source away), so it is
        sent again (an existing destination then gets the server's own refusal)."""

        async def reconcile(err: PuterError) -> Any:
            try:
                await self.stat(src)
                return RESEND
            except NotFound:
                pass
            try:
                return await self.stat(dst)
            except NotFound:
                raise err from None  # neither there: someone else moved or deleted it

        return reconcile

    async def _source_and_target(self, source: str, destination: str, what: str) -> tuple[str, str, str, str]:
        src = await self._c._abs(source)
        dst = await self._c._abs(destination)
        await self._refuse_dangerous(src, what)
        if dst == "/":
            raise BadRequest(f"cannot {what} onto /")
        # Puter accepts a directory moved onto itself and loses it from the tree (§5.10).
        if dst == src or dst.startswith(src.rstrip("/") + "/"):
            raise BadRequest(f"cannot {what} {src} onto or into itself", code="cannot_move_item_into_itself")
        parent, name = _split(dst)
        return src, dst, parent, name

    async def _copy_move_body(
        self, source: str, destination: str, what: str, overwrite: bool, dedupe_name: bool, parents: bool
    ) -> dict[str, Any]:
        if overwrite and dedupe_name:
            raise BadRequest(f"fs {what}: overwrite and dedupe_name cannot both be set")
        src, _dst, parent, name = await self._source_and_target(source, destination, what)
        if parents:
            # The server ignores create_missing_parents on /move (errata): make them first.
            await self.mkdir(parent, {"create_missing_parents": True})
        return {
            "source": src,
            "destination": parent,
            "new_name": name,
            "overwrite": bool(overwrite),
            "dedupe_name": bool(dedupe_name),
        }

    async def move(
        self,
        source: str,
        destination: str,
        *,
        overwrite: bool = False,
        dedupe_name: bool = False,
        create_missing_parents: bool = False,
    ) -> dict[str, Any]:
        """Move ``source`` to the full path ``destination``; returns the moved entry.

        ``overwrite``: replace what is there, whatever its type (§5.10); otherwise an
        existing destination is :class:`AlreadyExists`. ``dedupe_name``: move to
        ``name (1)`` when the name is taken. ``create_missing_parents``: make the
        destination's parents first. Sent as ``destination=<parent>, new_name=<basename>``.
        """
        body = await self._copy_move_body(source, destination, "move", overwrite, dedupe_name, create_missing_parents)
        # A retried move whose first attempt succeeded finds no source: never retried
        # blindly once sent; an unknown outcome is reconciled (with dedupe_name the name
        # it would have is unknown, so it cannot be).
        dst = posixpath.join(body["destination"], body["new_name"])
        reconcile = None if dedupe_name else self._moved_or_not(body["source"], dst)
        return await self._c._post_json("/move", body, idem=SAFE_REJECTIONS, check=_moved, reconcile=reconcile)

    async def copy(
        self,
        source: str,
        destination: str,
        *,
        overwrite: bool = False,
        dedupe_name: bool = False,
        create_missing_parents: bool = False,
    ) -> dict[str, Any]:
        """Copy ``source`` (a file or a whole directory) to the full path ``destination``;
        returns the new entry. Flags as :meth:`move` (nothing replaced unless ``overwrite``)."""
        body = await self._copy_move_body(source, destination, "copy", overwrite, dedupe_name, create_missing_parents)
        # Copying again over its own earlier result is harmless with overwrite.
        data = await self._c._post_json(
            "/copy", body, idem=IDEMPOTENT if overwrite else SAFE_REJECTIONS, check=_copied
        )
        return data

    async def touch(self, path: str) -> None:
        """Create an empty file, or set an existing entry's times to now."""
        await self._c._send(
            "POST", self._c.api_url + "/touch", idem=IDEMPOTENT, json_body={"path": await self._c._abs(path)}
        )

    async def df(self) -> dict[str, Any]:
        """``{"used": bytes, "capacity": bytes}``."""
        data: dict[str, Any] = await self._c._post_json("/df", {}, idem=IDEMPOTENT, check=_entry)
        return data


    async def last_change(self) -> int:
        """Milliseconds timestamp of the user's last change (cheap to poll)."""
        def check(data: Any) -> int:
            try:
                return int(data["timestamp"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BadAnswer("unexpected /cache/last-change-timestamp answer") from exc

        ts: int = await self._c._get_json("/cache/last-change-timestamp", check=check)
        return ts

    async def read_url(self, path: str, options: dict[str, Any] | None = None) -> str:
        """A signed, token-free URL that reads the file (``POST /sign``, action read)."""
        item = {"path": await self._c._abs(path), "action": "read", **(options or {})}
        data = await self._c._post_json("/sign", {"items": [item]}, idem=IDEMPOTENT)
        sigs = data.get("signatures") if isinstance(data, dict) else None
        sig = sigs[0] if isinstance(sigs, list) and sigs else None
        url = (sig.get("read_url") or sig.get("url")) if isinstance(sig, dict) else None
        if not isinstance(url, str) or not url:
            raise NotFound(f"cannot sign {item['path']}", status=404, code="subject_does_not_exist")
        return url

    async def upload(
        self,
        files: Content | Sequence[Content],
        destination: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload local files (paths or named binary file objects) into ``destination``
        (default: home) in one ``/batch`` request. Returns ``{"results": [...]}`` with an
        entry or an exception object per file."""
        items = files if isinstance(files, (list, tuple)) else [files]
        opts = options or {}
        target_dir = await self._c._abs(destination or "~")
        pairs: list[tuple[str, Content]] = []
        for item in items:
            if isinstance(item, str):
                item = Path(item)  # here a string names a local file, as in putergenai
            name = os.path.basename(os.fspath(item)) if isinstance(item, os.PathLike) else None
            name = name or os.path.basename(str(getattr(item, "name", "") or ""))
            if not name:
                raise BadRequest("fs_upload needs paths or file objects with a name")
            pairs.append((f"{target_dir.rstrip('/')}/{name}", item))
        results = await self.write_many(
            pairs,
            overwrite=bool(opts.get("overwrite", True)),
            create_missing_parents=bool(opts.get("create_missing_parents", opts.get("createMissingParents", False))),
        )
        return {"results": results}


def parse_etag(value: str | None) -> str | None:
    """``"abc"`` -> ``abc``; a weak ETag (``W/"..."``, Express's for JSON bodies) is no
    content version: None."""
    if not value or value.startswith("W/"):
        return None
    return value.strip().strip('"') or None
