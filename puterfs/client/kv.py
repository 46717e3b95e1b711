"""``client.kv``: Puter's key-value store (the ``puter-kvstore`` driver), as puter.js's
``puter.kv`` speaks it to a 26.07 server (RECORDED-2.md §4, ``exchanges/kv.jsonl``).

Server limits (answered as :class:`~puterfs.client.BadRequest`): keys up to 1024 UTF-8
bytes, values up to 408576 bytes of JSON, ``list`` offsets up to 5000. Every method
takes ``app=`` (keyword) to use an app's namespace (``optConfig.appUuid``) instead of
the account's own.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from puterfs.client._errors import BadRequest, ServerError
from puterfs.client._retry import Idempotency

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

IFACE = "puter-kvstore"
LIST_PAGE = 1000  # what puter.js asks for per page
# A list that never ends (a server repeating cursors) stops here.
MAX_LIST_PAGES = 100_000

IDEMPOTENT = Idempotency.IDEMPOTENT
SAFE_REJECTIONS = Idempotency.SAFE_REJECTIONS


def _key(key: Any) -> str:
    if isinstance(key, bool) or not isinstance(key, (str, int, float)):
        raise BadRequest(f"a KV key is a string, not {type(key).__name__}")
    key = str(key) if not isinstance(key, str) else key
    if not key:
        raise BadRequest("a KV key must not be empty")
    return key


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{what} must be a number of seconds")
    return value


def unix_seconds(timestamp: int | float | str | datetime) -> float:
    """``timestamp`` as Unix seconds: a number, a numeric string, an ISO 8601 string or a
    ``datetime`` (naive means local time)."""
    if isinstance(timestamp, datetime):
        return timestamp.timestamp()
    if isinstance(timestamp, str):
        text = timestamp.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise BadRequest(f"not a timestamp: {timestamp!r}") from None
    return _seconds(timestamp, "timestamp")


def _split_pattern(pattern: str | None) -> tuple[str, str | None]:
    """(server prefix, glob to filter with or None). The server matches prefixes only;
    ``"*"`` is everything, ``"page:*"`` the prefix ``page:``, anything with a wildcard
    further in is narrowed to the prefix before it and filtered here."""
    if pattern is None or pattern in ("", "*"):
        return "", None
    if not isinstance(pattern, str):
        raise BadRequest("a KV pattern is a string")
    cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
    prefix = pattern[:cut]
    rest = pattern[cut:]
    if rest in ("", "*"):
        return prefix, None
    return prefix, pattern


class KV:
    """The key-value store of the signed-in user (or of an app, with ``app=``)."""

    def __init__(self, client: PuterClient) -> None:
        self._client = client

    async def _envelope(self, method: str, args: dict[str, Any], idem: Idempotency, app: str | None) -> dict[str, Any]:
        if app:
            args["optConfig"] = {"appUuid": app}
        return await self._client._driver_envelope(IFACE, method, args, idem=idem, result=False)

    async def _call(self, method: str, args: dict[str, Any], idem: Idempotency, app: str | None) -> Any:
        envelope = await self._envelope(method, args, idem, app)
        if "result" not in envelope:
            raise ServerError(f"kv {method}: the server sent no result", body=envelope)
        return envelope["result"]

    # ------------------------------------------------------------------ values

    async def set(
        self, key: str, value: Any, *, expire_at: int | float | str | datetime | None = None, app: str | None = None
    ) -> bool:
        """Store ``value`` (any JSON) under ``key``; ``expire_at`` (Unix seconds, ISO text or a
        datetime) makes it vanish then."""
        args: dict[str, Any] = {"key": _key(key), "value": value}
        if expire_at is not None:
            args["expireAt"] = unix_seconds(expire_at)
        return bool(await self._call("set", args, IDEMPOTENT, app))

    async def set_many(
        self, items: Mapping[str, Any] | Iterable[tuple[str, Any] | Mapping[str, Any]], *, app: str | None = None
    ) -> bool:
        """Store several keys in one request (``batchPut``): a mapping, ``(key, value)`` pairs or
        ``{"key", "value", "expire_at"?}`` dicts."""
        pairs = items.items() if isinstance(items, Mapping) else items
        out = []
        for item in pairs:
            if isinstance(item, Mapping):
                entry = {"key": _key(item.get("key")), "value": item.get("value")}
                when = item.get("expire_at", item.get("expireAt"))
                if when is not None:
                    entry["expireAt"] = unix_seconds(when)
            else:
                key, value = item
                entry = {"key": _key(key), "value": value}
            out.append(entry)
        if not out:
            return True
        return bool(await self._call("batchPut", {"items": out}, IDEMPOTENT, app))

    async def get(self, key: str | list[str], *, app: str | None = None) -> Any:
        """The value of ``key`` (None when missing or expired); a list of keys gives a list."""
        wanted: Any = [_key(k) for k in key] if isinstance(key, (list, tuple)) else _key(key)
        return await self._call("get", {"key": wanted}, IDEMPOTENT, app)

    async def delete(self, key: str, *, app: str | None = None) -> bool:
        """Delete ``key``; True also when it did not exist."""
        return bool(await self._call("del", {"key": _key(key)}, IDEMPOTENT, app))

    # ------------------------------------------------------------------ numbers, lists, objects

    @staticmethod
    def _paths(value: Any, what: str) -> dict[str, Any]:
        if isinstance(value, Mapping):
            if not value:
                raise BadRequest(f"{what}: the path map is empty")
            return {str(k): v for k, v in value.items()}
        return {"": value}

    async def incr(self, key: str, amount: float | Mapping[str, float] = 1, *, app: str | None = None) -> Any:
        """Add ``amount`` (a number, or ``{"dot.path": number}``) and return the new number (or
        the whole object for paths). A missing key counts from 0."""
        return await self._call("incr", {"key": _key(key), "pathAndAmountMap": self._paths(amount, "incr")},
                                SAFE_REJECTIONS, app)

    async def decr(self, key: str, amount: float | Mapping[str, float] = 1, *, app: str | None = None) -> Any:
        """Subtract ``amount``; like :meth:`incr`."""
        return await self._call("decr", {"key": _key(key), "pathAndAmountMap": self._paths(amount, "decr")},
                                SAFE_REJECTIONS, app)

    async def add(self, key: str, value: Any, *, app: str | None = None) -> Any:
        """Append ``value`` (an item, or a list of items) to the list at ``key``; a mapping
        ``{"dot.path": items}`` appends inside an object. Returns the stored value."""
        return await self._call("add", {"key": _key(key), "pathAndValueMap": self._paths(value, "add")},
                                SAFE_REJECTIONS, app)

    async def update(
        self, key: str, paths: Mapping[str, Any], *, ttl: int | float | None = None, app: str | None = None
    ) -> Any:
        """Set ``{"dot.path": value}`` inside the object at ``key`` (created when missing) and
        return the whole object; ``ttl`` (seconds) also sets its expiry."""
        if not isinstance(paths, Mapping) or not paths:
            raise BadRequest("kv update needs a non-empty {path: value} mapping")
        args: dict[str, Any] = {"key": _key(key), "pathAndValueMap": {str(k): v for k, v in paths.items()}}
        if ttl is not None:
            args["ttl"] = _seconds(ttl, "ttl")
        return await self._call("update", args, IDEMPOTENT, app)

    async def remove(self, key: str, *paths: str, app: str | None = None) -> Any:
        """Remove dot-paths from the object at ``key``; returns what is left."""
        cleaned = [p for p in paths if p is not None]
        if not cleaned or not all(isinstance(p, str) and p for p in cleaned):
            raise BadRequest("kv remove needs at least one non-empty path")
        return await self._call("remove", {"key": _key(key), "paths": cleaned}, IDEMPOTENT, app)

    # ------------------------------------------------------------------ expiry

    async def expire(self, key: str, seconds: int | float, *, app: str | None = None) -> dict[str, Any]:
        """Let ``key`` expire ``seconds`` from now; returns the server's answer."""
        return await self._envelope("expire", {"key": _key(key), "ttl": _seconds(seconds, "seconds")}, IDEMPOTENT, app)

    async def expire_at(
        self, key: str, timestamp: int | float | str | datetime, *, app: str | None = None
    ) -> dict[str, Any]:
        """Let ``key`` expire at ``timestamp`` (Unix seconds, ISO text or a datetime)."""
        args = {"key": _key(key), "timestamp": unix_seconds(timestamp)}
        return await self._envelope("expireAt", args, IDEMPOTENT, app)

    # ------------------------------------------------------------------ listing

    async def page(
        self,
        pattern: str | None = None,
        *,
        values: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
        offset: int | None = None,
        include_total: bool = False,
        app: str | None = None,
    ) -> dict[str, Any]:
        """One page: ``{"items": [...], "cursor"?: str, "total"?: int}``. Items are keys, or
        ``{"key", "value"}`` entries with ``values=True``. A page without ``cursor`` is the last."""
        prefix, glob = _split_pattern(pattern)
        args: dict[str, Any] = {"limit": int(limit) if limit is not None else LIST_PAGE}
        if not values:
            args["as"] = "keys"
        if prefix:
            args["pattern"] = prefix
        if cursor is not None:
            args["cursor"] = cursor
        if offset is not None:
            args["offset"] = int(offset)
        if include_total:
            args["includeTotal"] = True
        result = await self._call("list", args, IDEMPOTENT, app)
        if isinstance(result, list):  # a server that does not page
            result = {"items": result}
        if not isinstance(result, dict) or not isinstance(result.get("items"), list):
            raise ServerError("kv list: unexpected answer", body=result)
        if glob is not None:
            result["items"] = [
                it for it in result["items"]
                if fnmatch.fnmatchcase(it["key"] if isinstance(it, dict) else str(it), glob)
            ]
        return result

    async def list(self, pattern: str | None = None, *, values: bool = False, app: str | None = None) -> list[Any]:
        """Every key matching ``pattern`` (``"prefix*"`` or a glob), sorted; ``values=True``
        gives ``{"key", "value"}`` entries. Fetched page by page."""
        items: list[Any] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            page = await self.page(pattern, values=values, cursor=cursor, app=app)
            items.extend(page["items"])
            cursor = page.get("cursor")
            if not cursor:
                return items
            if cursor in seen:
                raise ServerError("kv list: the server sent the same cursor twice")
            seen.add(cursor)
        raise ServerError("kv list did not finish")

    async def flush(self, pattern: str | None = None, *, app: str | None = None) -> int | None:
        """Delete every key (``pattern`` None or ``"*"``: one request), or only those matching
        ``pattern`` (listed, then deleted one by one: returns how many)."""
        if pattern in (None, "", "*"):
            await self._call("flush", {}, IDEMPOTENT, app)
            return None
        keys = await self.list(pattern, app=app)
        for key in keys:
            await self.delete(key, app=app)
        return len(keys)
