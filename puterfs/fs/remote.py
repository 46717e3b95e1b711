"""The filesystem's view of the server: mount-relative paths, plain entry records, deadlines.

This adapter is the only part of `puterfs.fs` that calls the client. It knows nothing of
HTTP (the client does), and nothing of FUSE. Every call gets a deadline, because pyfuse3
cannot interrupt a handler: a hung request would hang the caller's syscall forever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import trio

from puterfs.client._errors import PuterConnectionError, PuterTimeout

OFFLINE_GRACE = 5.0  # after a failure to reach the server, calls fail at once for this long

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    is_dir: bool
    size: int
    modified: int | None  # seconds
    created: int | None
    uid: str | None

    @property
    def fingerprint(self) -> tuple[str | None, int, int | None]:
        return (self.uid, self.size, self.modified)

    @classmethod
    def from_json(cls, e: dict[str, Any]) -> RemoteEntry:
        return cls(
            name=str(e.get("name") or ""),
            is_dir=bool(e.get("is_dir")),
            size=int(e.get("size") or 0),
            modified=int(e["modified"]) if e.get("modified") is not None else None,
            created=int(e["created"]) if e.get("created") is not None else None,
            uid=e.get("uid") or e.get("id") or e.get("uuid"),
        )


class Remote:
    def __init__(self, client: Any, root: str, *, timeout: float = 60.0) -> None:
        self.client = client
        self.root = root.rstrip("/") or "/"
        self.timeout = timeout
        # When the server cannot be reached, every call would wait for its retries; instead
        # calls fail at once (callers fall back to cached data) until the change poller,
        # which keeps trying, gets through again.
        self._offline_until = 0.0

    @property
    def offline(self) -> bool:
        return trio.current_time() < self._offline_until

    def abspath(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    async def _call(
        self, what: str, coro_fn: Any, *args: Any, timeout: float | None = None, probe: bool = False, **kw: Any
    ) -> Any:
        if self.offline and not probe:
            raise PuterConnectionError(f"{what}: the server is unreachable (retrying in the background)")
        try:
            with trio.fail_after(self.timeout if timeout is None else timeout):
                result = await coro_fn(*args, **kw)
        except trio.TooSlowError:
            self._offline_until = trio.current_time() + OFFLINE_GRACE
            raise PuterTimeout(f"{what} took longer than {self.timeout if timeout is None else timeout:.0f}s") from None
        except PuterConnectionError:
            self._offline_until = trio.current_time() + OFFLINE_GRACE
            raise
        self._offline_until = 0.0
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

    async def upload(self, rel: str, source: IO[bytes], size: int, *, overwrite: bool = True) -> RemoteEntry:
        entry = await self._call(
            "upload", self.client.fs_write, self.abspath(rel), source,
            {"overwrite": overwrite, "create_missing_parents": True},
            timeout=self.timeout + size / (128 * 1024),
        )
        return RemoteEntry.from_json(entry)

    async def upload_many(
        self, items: Sequence[tuple[str, bytes]], *, overwrite: bool
    ) -> list[RemoteEntry | BaseException]:
        total = sum(len(d) for _, d in items)
        results = await self._call(
            "batch upload", self.client.fs_write_many, [(self.abspath(rel), data) for rel, data in items],
            overwrite=overwrite, create_missing_parents=True, timeout=self.timeout + total / (128 * 1024),
        )
        return [r if isinstance(r, BaseException) else RemoteEntry.from_json(r) for r in results]

    async def mkdir(self, rel: str) -> RemoteEntry:
        return RemoteEntry.from_json(await self._call("mkdir", self.client.fs_mkdir, self.abspath(rel)))

    async def delete(self, rel: str, *, recursive: bool) -> None:
        if not rel:
            raise PermissionError("the root of the mount cannot be deleted")
        await self._call("delete", self.client.fs_delete, self.abspath(rel), recursive=recursive)

    async def move(self, src: str, dst: str, *, overwrite: bool) -> RemoteEntry:
        moved = await self._call(
            "move", self.client.fs_move, self.abspath(src), self.abspath(dst), overwrite=overwrite
        )
        return RemoteEntry.from_json(moved)  # the client returns the moved entry itself

    async def df(self) -> tuple[int, int]:
        d = await self._call("df", self.client.fs_df)
        return int(d.get("used") or 0), int(d.get("capacity") or 0)

    async def last_change(self) -> int:
        return int(await self._call("last-change", self.client.fs_last_change, probe=True))


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def split(path: str) -> tuple[str, str]:
    head, _, tail = path.rpartition("/")
    return head, tail


def conflict_name(name: str, when: float) -> str:
    """``report.txt`` -> ``report.conflict-20261125-174501.txt`` (the server's copy)."""
    import time as _time

    stamp = _time.strftime("%Y%m%d-%H%M%S", _time.localtime(when))
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        return f"{stem}.conflict-{stamp}.{ext}"
    return f"{name}.conflict-{stamp}"


__all__ = ["Remote", "RemoteEntry", "join", "split", "conflict_name"]
