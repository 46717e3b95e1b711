"""The filesystem's view of the server: mount-relative paths, plain entry records, deadlines.

This adapter is the only part of `puterfs.fs` that calls the client. It knows nothing of
HTTP (the client does), and nothing of FUSE. Every call gets a deadline, because pyfuse3
cannot interrupt a handler: a hung request would hang the caller's syscall forever.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import trio

from puterfs.client import _pacing
from puterfs.client._errors import (
    AuthenticationError,
    NotFound,
    PermissionDenied,
    PuterConnectionError,
    PuterError,
    PuterTimeout,
)
from puterfs.client._multipart import guess_type
from puterfs.client._presign import BATCH_MAX_FILE, UploadSession
from puterfs.client.fs import JSON_BATCH_MAX_FILES

PROBE_TIMEOUT = 10.0  # the change poller's probe: longer means the server is not answering
PRESIGN_BUSY = 16 * 1024 * 1024  # from this size a file skips a busy /batch for the presigned flow
# Up to this size the server's ETag of a file is the MD5 of its content (recorded: 5 MiB
# through /batch); above the object store's part size it is a multipart ETag
# ("<md5 of the part MD5s>-<parts>", recorded for 10 MiB + 1 byte), which only the server knows.
PLAIN_ETAG_MAX = 5 * 1024 * 1024
PROBE_FAILURES = 3  # consecutive failed probes before the server counts as unreachable
PROBE_RETRIES = 2  # retries inside one probe
TOKEN_REFUSED = "the token was refused: run `puterfs login`"
# Signed read URLs (`SignedReads`): how many uids the mount remembers, each way
SIGNED_MAX = 10_000

log = logging.getLogger(__name__)

UPLOAD_BATCH_MAX = JSON_BATCH_MAX_FILES  # small files per upload_many request (/fs/batchWrite)


# The POSIX attributes the mount keeps in an entry's metadata (docs/inodes.md), named as
# rclone names them: "mode" is st_mode in octal ("100755"), "mtime" RFC 3339 with nanoseconds.
META_MODE = "mode"
META_MTIME = "mtime"
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def format_mtime(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def parse_mtime(text: Any) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time, None when it is not one."""
    m = _RFC3339.match(text) if isinstance(text, str) else None
    if m is None:
        return None
    y, mo, d, h, mi, s_, frac, tz = m.groups()
    try:
        sec = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s_), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        sec -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return sec * 1_000_000_000 + int((frac or "").ljust(9, "0"))


def parse_mode(text: Any) -> int | None:
    if not isinstance(text, str) or not re.fullmatch(r"[0-7]{1,7}", text):
        return None
    return int(text, 8)


def posix_metadata(mode: int | None, mtime_ns: int) -> dict[str, str]:
    md = {META_MTIME: format_mtime(mtime_ns)}
    if mode is not None:
        md[META_MODE] = f"{mode:o}"
    return md


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    is_dir: bool
    size: int
    modified: int | None  # seconds
    created: int | None
    uid: str | None
    metadata: dict[str, Any] | None = None  # the entry's metadata when it is a JSON object

    @property
    def fingerprint(self) -> tuple[str | None, int, int | None]:
        return (self.uid, self.size, self.modified)

    @property
    def mode(self) -> int | None:
        """st_mode kept in the metadata (by this mount or another rclone-style tool)."""
        return parse_mode((self.metadata or {}).get(META_MODE))

    @property
    def meta_mtime_ns(self) -> int | None:
        return parse_mtime((self.metadata or {}).get(META_MTIME))

    @property
    def mtime_ns(self) -> int | None:
        """The file's own mtime: from the metadata, else the server's (whole-second) modified."""
        m = self.meta_mtime_ns
        if m is not None:
            return m
        return self.modified * 1_000_000_000 if self.modified else None

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> RemoteEntry:
        md: Any = e.get("metadata")
        if isinstance(md, str):
            try:
                md = json.loads(md)  # a string, often JSON; any client can store any string
            except ValueError:
                md = None
        return cls(
            name=str(e.get("name") or ""),
            is_dir=bool(e.get("is_dir")),
            size=int(e.get("size") or 0),
            modified=int(e["modified"]) if e.get("modified") is not None else None,
            created=int(e["created"]) if e.get("created") is not None else None,
            uid=e.get("uid") or e.get("id") or e.get("uuid"),
            metadata=md if isinstance(md, dict) else None,
        )


class Remote:
    def __init__(self, client: Any, root: str, *, timeout: float = 60.0) -> None:
        self.client = client
        self.root = root.rstrip("/") or "/"
        self.timeout = timeout
        # Reachability is the change poller's verdict, never one request's: each request's
        # failure is judged on its own (one dropped answer must not fail every other call).
        # While the poller cannot reach the server, calls fail at once (callers fall back to
        # cached data) instead of each waiting for its own deadline.
        self.unreachable: str | None = None  # why, while the poller cannot get through
        self.on_reachable: Callable[[], None] | None = None  # the server is back
        self._probe_failures = 0
        # A call could not reach the server: the poller probes even while change events
        # arrive (which otherwise let it rest), until a probe gets through.
        self.suspect = False
        # A 401 is not temporary: until a new token is in place (resume_auth) no call is
        # sent at all; each fails at once with AuthenticationError (EACCES), and dirty files
        # stay in the cache. `on_auth_change` is called when this flips either way.
        self.token_refused: str | None = None  # the server's words, while refused
        self.on_auth_change: Callable[[], None] | None = None
        self.signed = SignedReads(self)

    def refuse_auth(self, detail: str) -> None:
        if self.token_refused is None:
            log.error("%s (the server said: %s); changes stay in the cache until then", TOKEN_REFUSED, detail)
        self.token_refused = detail
        if self.on_auth_change is not None:
            self.on_auth_change()

    def resume_auth(self) -> None:
        if self.token_refused is not None:
            log.info("the new token was accepted; reaching the server again")
        self.token_refused = None
        if self.on_auth_change is not None:
            self.on_auth_change()

    @property
    def offline(self) -> bool:
        return self.unreachable is not None

    def set_reachable(self, ok: bool, why: str = "") -> None:
        """The change poller's verdict (see `probe`)."""
        if ok:
            if self.unreachable is not None:
                log.info("the server answers again; resuming uploads")
                self.unreachable = None
                if self.on_reachable is not None:
                    self.on_reachable()
        elif self.unreachable is None:
            log.warning("the server cannot be reached (%s); serving cached data, retrying", why)
            self.unreachable = why or "unreachable"

    def relpath(self, path: str | None) -> str | None:
        """The mount-relative path of a server path, None when it is outside the mount."""
        if not path:
            return None
        path = path.rstrip("/") or "/"
        if self.root == "/":
            return path.lstrip("/")
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1:]
        return None

    def events(self) -> Any:
        """The server's change events (`PuterClient.events`): Connected/Resync, ItemEvent, ..."""
        return self.client.events()

    def abspath(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    async def _call(
        self, what: str, coro_fn: Any, *args: Any, timeout: float | None = None, probe: bool = False,
        token: bool = True, **kw: Any,
    ) -> Any:
        """`coro_fn` under the call's deadline. ``token=False``: the call does not carry the
        token (a signed read), so its 401 says nothing of the token (`refuse_auth`)."""
        if self.token_refused is not None:
            raise AuthenticationError(f"{what}: {TOKEN_REFUSED}", status=401, code="token_refused")
        if self.unreachable is not None and not probe:
            raise PuterConnectionError(f"{what}: the server is unreachable (retrying in the background)")
        limit = self.timeout if timeout is None else timeout
        try:
            with trio.fail_after(limit):
                result = await coro_fn(*args, **kw)
        except trio.TooSlowError:
            self.suspect = self.suspect or not probe
            raise PuterTimeout(f"{what} took longer than {limit:.0f}s") from None
        except PuterConnectionError:
            self.suspect = self.suspect or not probe
            raise
        except AuthenticationError as exc:
            if token:
                self.refuse_auth(exc.message)
            raise
        return result

    async def stat(self, rel: str) -> RemoteEntry:
        return RemoteEntry.from_json(await self._call("stat", self.client.fs_stat, self.abspath(rel)))

    async def listdir(self, rel: str) -> list[RemoteEntry]:
        entries = await self._call("readdir", self.client.fs_readdir, self.abspath(rel), timeout=self.timeout * 3)
        return [RemoteEntry.from_json(e) for e in entries]

    async def read(self, rel: str, offset: int, length: int, *, size: int) -> bytes:
        """`length` bytes at `offset` of a file whose size is known to be `size` (no stat first)."""
        data: bytes = await self._call(
            "read", self.client.fs_read, self.abspath(rel), offset=offset, length=length, size=size,
            timeout=self.timeout + length / (256 * 1024),
        )
        return data

    async def read_version(self, rel: str, offset: int, length: int, *, size: int) -> tuple[bytes, str | None]:
        """`read`, with the version (ETag) of the file the bytes come from (None: unknown)."""
        data, etag = await self._call(
            "read", self.client.fs_read_version, self.abspath(rel), offset=offset, length=length, size=size,
            timeout=self.timeout + length / (256 * 1024),
        )
        return data, etag

    async def read_version_into(self, rel: str, buf: memoryview, offset: int, *, size: int) -> str | None:
        """`read_version` of ``len(buf)`` bytes at `offset`, written into ``buf`` as they arrive."""
        etag: str | None = await self._call(
            "read", self.client.fs_read_version_into, self.abspath(rel), buf, offset=offset, size=size,
            timeout=self.timeout + len(buf) / (256 * 1024),
        )
        return etag

    async def read_signed(self, uid: str, offset: int, length: int, *, size: int) -> tuple[bytes, str | None] | None:
        """`read_version` of the file with this uid, wherever it is now, through its signed
        read URL (`SignedReads`); None when it has none or it was refused: read it by path."""
        got = await self._signed_call(uid, length, self.client.fs_read_signed, offset=offset, length=length, size=size)
        return None if got is _UNSIGNED else got

    async def read_signed_into(self, uid: str, buf: memoryview, offset: int, *, size: int) -> tuple[str | None] | None:
        """`read_version_into` through the signed read URL of the file with this uid: (its
        version,), or None when it has none or it was refused (read it by path)."""
        etag = await self._signed_call(uid, len(buf), self.client.fs_read_signed_into, buf, offset=offset, size=size)
        return None if etag is _UNSIGNED else (etag,)

    async def _signed_call(self, uid: str, nbytes: int, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """`fn(signed URL of uid, *args, **kw)` for `nbytes` bytes; `_UNSIGNED` when the file has
        no URL or the server refused it (the caller reads it by path)."""
        signed = await self.signed.get(uid)
        if signed is None:
            return _UNSIGNED
        try:
            return await self._call(
                "read", fn, signed, *args, **kw, token=False, timeout=self.timeout + nbytes / (256 * 1024)
            )
        except (PermissionDenied, NotFound, AuthenticationError) as exc:
            self.signed.refused(uid, exc)
            return _UNSIGNED

    async def version(self, rel: str, size: int) -> str | None:
        """The server's current version (ETag) of a file of `size` bytes, for the price of one
        byte (an empty file is read whole: Puter refuses any Range on it)."""
        if size <= 0:
            _, etag = await self._call("read", self.client.fs_read_version, self.abspath(rel))
        else:
            _, etag = await self.read_version(rel, 0, 1, size=size)
        return etag

    async def upload(
        self, rel: str, source: IO[bytes], size: int, *, overwrite: bool = True, metadata: dict[str, Any] | None = None
    ) -> RemoteEntry:
        """Upload a file; `metadata` becomes its entry metadata (every upload must carry it:
        the server drops custom keys on an overwrite)."""
        opts: dict[str, Any] = {"overwrite": overwrite, "create_missing_parents": True}
        if metadata is not None:
            opts["metadata"] = metadata
        entry = await self._call(
            "upload", self.client.fs_write, self.abspath(rel), source, opts,
            timeout=self.timeout + size / (128 * 1024),
        )
        return RemoteEntry.from_json(entry)

    async def upload_large(
        self, rel: str, source: IO[bytes], size: int, *, session: str | None,
        on_progress: Callable[[str, int, int], None], metadata: dict[str, Any] | None = None,
    ) -> RemoteEntry:
        """Upload through the presigned flow, resuming ``session`` (JSON) when given.

        ``on_progress(session_json, done_bytes, total)`` after the start and each part.
        """
        resumed = UploadSession.from_json(session) if session else None

        def progress(s: UploadSession) -> None:
            on_progress(s.to_json(), s.done_bytes, s.size)

        entry = await self._call(
            "large upload", self.client.fs_write_large, self.abspath(rel), source, size=size,
            overwrite=True, create_missing_parents=True, session=resumed, on_progress=progress,
            metadata=metadata, timeout=self.timeout + size / (128 * 1024),
        )
        return RemoteEntry.from_json(entry)

    async def abort_upload(self, session: str) -> None:
        """Drop an abandoned presigned session (safe: sessions never overwrite a file).

        ``session``: an :class:`UploadSession`'s JSON, or the mount's journal record that
        holds one under ``"session"`` (with the content stamp and the path it was for)."""
        try:
            data = json.loads(session)
            if isinstance(data, dict) and isinstance(data.get("session"), str):
                data = json.loads(data["session"])
            upload_id = str(data["upload_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("cannot read an abandoned upload session to abort it (it expires anyway)")
            return
        await self._call(
            "abort upload", self.client._post_json, "/fs/abortWrite", {"uploadId": upload_id},
            idem=_pacing_idempotent(),
        )

    def prefers_presign(self, size: int) -> bool:
        """Whether a file of ``size`` goes up through the presigned flow rather than /batch:
        always from /batch's cap; from PRESIGN_BUSY when /batch's in-flight slots are taken."""
        if size >= BATCH_MAX_FILE:
            return True
        if size < PRESIGN_BUSY:
            return False
        pacer = getattr(self.client, "pacer", None)
        return pacer is not None and not pacer.has_room(("fs:batch",))

    @staticmethod
    @contextlib.contextmanager
    def background() -> Iterator[None]:
        """Requests made inside wait behind interactive ones for the same budget (bulk uploads)."""
        with _pacing.priority(_pacing.BACKGROUND):
            yield

    async def upload_many(
        self, items: Sequence[tuple[str, bytes]], *, overwrite: bool, metadata: Sequence[dict[str, Any]] | None = None
    ) -> list[RemoteEntry | BaseException]:
        total = sum(len(d) for _, d in items)
        kw: dict[str, Any] = {} if metadata is None else {"metadata": list(metadata)}
        results = await self._call(
            "batch upload", self.client.fs_write_many, [(self.abspath(rel), data) for rel, data in items],
            overwrite=overwrite, create_missing_parents=True, timeout=self.timeout + total / (128 * 1024), **kw,
        )
        return [r if isinstance(r, BaseException) else RemoteEntry.from_json(r) for r in results]

    async def holding(self, items: Sequence[tuple[str, bytes]]) -> list[RemoteEntry | BaseException | None]:
        """For each (path, data): the server's entry when it holds exactly `data` at `path`,
        None when not, or the error of that check (`PuterClient.fs_holding`)."""
        results = await self._call(
            "check", self.client.fs_holding, [(self.abspath(rel), data) for rel, data in items],
            timeout=self.timeout * 3,
        )
        return [r if r is None or isinstance(r, BaseException) else RemoteEntry.from_json(r) for r in results]

    async def mkdir(self, rel: str, *, parents: bool = False) -> RemoteEntry:
        """mkdir (the client retries it until the deadline: a plain mkdir of an existing
        directory answers that directory, so a retry after a lost answer is the check).
        `parents`: create missing ancestors too."""
        opts = {"create_missing_parents": True} if parents else None
        return RemoteEntry.from_json(await self._call("mkdir", self.client.fs_mkdir, self.abspath(rel), opts))

    async def batch(self, ops: Sequence[dict[str, Any]]) -> list[RemoteEntry | dict[str, Any] | BaseException]:
        """Namespace operations in one JSON ``/batch`` request, applied by the server in order.

        Ops in mount-relative paths: ``("mkdir", path)``, ``("delete", path, recursive)``,
        ``("move", src, dst, overwrite)`` as dicts ``{"op", "path"/"src"/"dst", ...}``.
        One item per op: the entry (mkdir, move), ``{"ok": True}`` (delete) or the exception
        object for that op. A failed request raises (nothing is known of what it did)."""
        wire: list[dict[str, Any]] = []
        for op in ops:
            kind = op["op"]
            if kind == "mkdir":
                parent, name = split(op["path"])
                wire.append({"op": "mkdir", "path": self.abspath(parent), "name": name, "dedupe_name": False})
            elif kind == "delete":
                if not op["path"]:
                    raise PermissionError("the root of the mount cannot be deleted")
                wire.append({"op": "delete", "path": self.abspath(op["path"]), "recursive": bool(op["recursive"])})
            elif kind == "move":
                parent, name = split(op["dst"])
                wire.append({"op": "move", "source": self.abspath(op["src"]), "destination": self.abspath(parent),
                             "new_name": name, "overwrite": bool(op["overwrite"]), "dedupe_name": False})
            else:
                raise ValueError(f"unknown namespace op {kind!r}")
        results = await self._call("batch", self.client.fs.batch, wire)
        out: list[RemoteEntry | dict[str, Any] | BaseException] = []
        for op, r in zip(ops, results, strict=True):
            if isinstance(r, BaseException) or op["op"] == "delete":
                out.append(r)
            else:
                out.append(RemoteEntry.from_json(r))
        return out

    async def delete(self, rel: str, *, recursive: bool) -> None:
        if not rel:
            raise PermissionError("the root of the mount cannot be deleted")
        await self._call("delete", self.client.fs_delete, self.abspath(rel), recursive=recursive)

    async def move(self, src: str, dst: str, *, overwrite: bool) -> RemoteEntry:
        """move; after an answer that says nothing (lost, 5xx, not the server's) the client
        reconciles with the server's state (the source gone and the destination there: it
        was done; the source there: it is sent again), so a directory rename is never left
        half-known and the tree cannot split."""
        moved = await self._call(
            "move", self.client.fs_move, self.abspath(src), self.abspath(dst), {"overwrite": overwrite}
        )
        return RemoteEntry.from_json(moved)  # the client returns the moved entry itself

    async def set_metadata(
        self, rel: str, metadata: dict[str, Any], *, known: dict[str, Any] | None, is_dir: bool
    ) -> RemoteEntry:
        """Store `metadata`'s keys in the entry's metadata, keeping the other keys of `known`
        (what the server held as last seen) and a file's content type: the server replaces
        the whole metadata."""
        if not rel:
            raise PermissionError("the mount root's metadata is not kept on the server")
        md = dict(known or {})
        md.update(metadata)
        if "contentType" not in md and not is_dir:
            md["contentType"] = guess_type(rel.rpartition("/")[2])
        return RemoteEntry.from_json(await self._call("set metadata", self.client.fs_set_metadata, self.abspath(rel), md))

    async def df(self) -> tuple[int, int]:
        d = await self._call("df", self.client.fs_df)
        return int(d.get("used") or 0), int(d.get("capacity") or 0)

    async def last_change(self) -> int:
        """The server's change timestamp; also the probe that decides reachability: a
        connection failure or no answer within PROBE_TIMEOUT marks the server unreachable,
        an answer marks it reachable again (and wakes the uploads)."""
        try:
            # a probe is a sample: a few retries (one dropped answer is no outage), not --timeout
            with self.client.retries(PROBE_RETRIES) if hasattr(self.client, "retries") else contextlib.nullcontext():
                ts = int(await self._call(
                    "last-change", self.client.fs_last_change, probe=True, timeout=min(self.timeout, PROBE_TIMEOUT)
                ))
        except PuterConnectionError as exc:  # timeouts included
            self._probe_failures += 1
            if self._probe_failures >= PROBE_FAILURES:
                self.set_reachable(False, str(exc))
            raise
        except PuterError:
            self._probe_failures = 0
            self.suspect = False
            self.set_reachable(True)  # it answered (with an error)
            raise
        self._probe_failures = 0
        self.suspect = False
        self.set_reachable(True)
        return ts


_UNSIGNED = object()  # SignedReads: no answer from /sign


class SignedReads:
    """The signed read URLs of server files, by uid, in memory only (at most SIGNED_MAX).

    A file's data is read through ``GET /file`` with its signed URL (3,000 a minute and 60 in
    flight, on every tier) rather than ``/read`` (300 a minute and 5 in flight on the free
    tier). Getting the URL costs a ``/sign`` (150 a minute on the free tier), so a file's
    first read goes by path: one that is read in one request (most small files) never spends
    one; from its second read on, its uid is signed. The uids wanted while a ``/sign`` is
    under way go together in the next one. A uid the server cannot sign (gone) or whose URL
    it refused (403: signature, 404: the file is gone or was replaced, 401: the owner
    suspended) is read by path from then on: the path read decides what the file is now."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self._urls: OrderedDict[str, Any] = OrderedDict()  # uid -> SignedRead (a credential: never logged)
        self._seen: OrderedDict[str, None] = OrderedDict()  # uids read once (by path)
        self._no: OrderedDict[str, None] = OrderedDict()  # uids read by path only
        self._wanted: list[str] = []  # uids to sign in the next /sign
        self._done: dict[str, trio.Event] = {}  # uid -> set once its /sign answered (or failed)
        self._signing = False  # a task is sending /sign requests
        self.signs = 0  # /sign requests sent (statistics)

    @staticmethod
    def _remember(d: OrderedDict[str, Any], uid: str, value: Any = None) -> None:
        d[uid] = value
        d.move_to_end(uid)
        while len(d) > SIGNED_MAX:
            d.popitem(last=False)

    async def get(self, uid: str) -> Any:
        """The SignedRead of `uid`, signing it now if it is wanted; None: read it by path."""
        url = self._urls.get(uid)
        if url is not None:
            self._urls.move_to_end(uid)
            return url
        if uid in self._no:
            return None
        if uid not in self._seen:
            self._remember(self._seen, uid)
            return None  # its first read: by path (a file read in one request never needs a /sign)
        done = self._done.get(uid)
        if done is None:
            pacer = getattr(self.remote.client, "pacer", None)
            if pacer is not None and not pacer.has_room(("fs:sign",)):
                return None  # /sign's budget is spent: by path now rather than wait for it
            done = self._done[uid] = trio.Event()
            self._wanted.append(uid)
        if not self._signing:
            await self._sign_wanted()
        else:
            await done.wait()
        return self._urls.get(uid)

    async def _sign_wanted(self) -> None:
        """Send /sign for the wanted uids, and again for those wanted meanwhile, until none
        is left; whatever happens, every uid taken or wanted is answered (its event set)."""
        self._signing = True
        taken: list[str] = []
        try:
            while self._wanted:
                taken, self._wanted = self._wanted, []
                self.signs += 1
                try:
                    got = await self.remote._call("sign", self.remote.client.fs_sign_reads, taken)
                except PuterError as exc:  # this time by path; signed again when read again
                    log.debug("signing %d read URLs failed (%s); reading by path", len(taken), exc)
                    got = [_UNSIGNED] * len(taken)
                for uid, signed in zip(taken, got, strict=True):
                    if signed is None:
                        self._remember(self._no, uid)  # the server cannot sign it (gone)
                    elif signed is not _UNSIGNED:
                        self._remember(self._urls, uid, signed)
                    self._done.pop(uid).set()
                taken = []
        finally:
            for uid in taken + self._wanted:  # cancelled: they are read by path this time
                ev = self._done.pop(uid, None)
                if ev is not None:
                    ev.set()
            self._wanted = []
            self._signing = False

    def refused(self, uid: str, exc: BaseException) -> None:
        """The server refused the URL of `uid`: forget it, read the file by path from now on."""
        self._urls.pop(uid, None)
        self._remember(self._no, uid)
        log.info("the signed read URL of %s was refused (%s); reading it by path", uid, type(exc).__name__)


def _pacing_idempotent() -> Any:
    from puterfs.client._retry import Idempotency

    return Idempotency.IDEMPOTENT


def upload_etag(md5: str, size: int) -> str | None:
    """The ETag the server will give content we upload with this MD5 (None: not known here)."""
    return md5 if size <= PLAIN_ETAG_MAX else None


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def split(path: str) -> tuple[str, str]:
    head, _, tail = path.rpartition("/")
    return head, tail


NAME_MAX = 255


def unlistable(name: str) -> str | None:
    """Why a server entry's name cannot appear in a POSIX directory listing (None: it can)."""
    if not name or name in (".", ".."):
        return "an empty or dot name"
    if "/" in name or "\x00" in name:
        return "it contains '/' or NUL"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate)"
    if size > NAME_MAX:
        return f"it is {size} bytes long (NAME_MAX is {NAME_MAX})"
    return None


def conflict_name(name: str, when: float) -> str:
    """``report.txt`` -> ``report.conflict-20261125-174501.txt`` (the server's copy); the stem
    is shortened (on a UTF-8 character boundary) so the result fits NAME_MAX."""
    import time as _time

    stamp = _time.strftime("%Y%m%d-%H%M%S", _time.localtime(when))
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem):
        stem, ext = name, ""
    tail = f".conflict-{stamp}" + (f".{ext}" if ext else "")
    room = NAME_MAX - len(tail.encode("utf-8"))
    if room < 1:  # an absurdly long extension: keep it out of the name
        tail = f".conflict-{stamp}"
        stem = name
        room = NAME_MAX - len(tail)
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return stem + tail


__all__ = ["Remote", "RemoteEntry", "join", "split", "conflict_name", "unlistable", "posix_metadata", "format_mtime", "parse_mtime"]
