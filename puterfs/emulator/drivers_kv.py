"""The ``puter-kvstore`` driver, as Puter 26.07 answers it (``exchanges/kv.jsonl``,
RECORDED-2.md §4, LIMITS.md "KV").

Keys live in namespaces ``v1:<user uuid>:<app uid | os-global>``; a user token may
name any app namespace with ``optConfig.appUuid``, an app token gets its app's.
Values are JSON, stored in the emulator's SQLite database with an optional expiry
in Unix seconds. Limits and messages are the recorded ones: keys up to 1024 UTF-8
bytes, values up to 408576 bytes of ``JSON.stringify(value)``, ``list`` offsets up
to 5000; ``incr`` of a non-number is DynamoDB's ``upstream_bad_request``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from puterfs.emulator.errors import ApiError

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 399 * 1024  # 408576
MAX_OFFSET = 5000
SERVICE = "puter-kvstore"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expire_at REAL,
    PRIMARY KEY (ns, key)
);
"""

_UPSTREAM_TYPE = "An operand in the update expression has an incorrect data type"


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _upstream_type_error() -> ApiError:
    return ApiError(400, "upstream_bad_request", _UPSTREAM_TYPE, upstreamStatus=400)


def _ok(result: Any, *, with_result: bool = True) -> Response:
    body: dict[str, Any] = {"success": True}
    if with_result:
        body["result"] = result
    body["service"] = {"name": SERVICE}
    return JSONResponse(body, media_type="application/json; charset=utf-8")


def ensure_schema(store: Any) -> None:
    if not getattr(store, "_kv_ready", False):
        store.db.executescript(_SCHEMA)
        store._kv_ready = True


def _js_string(value: Any) -> str:
    """``String(value)`` for the JSON scalars a key may be."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return str(int(value))
    return str(value)


def _key(args: dict[str, Any], name: str = "key") -> str:
    raw = args.get(name)
    if raw is None or raw == "":
        raise _bad(f"Missing `{name}`")
    if isinstance(raw, (dict, list)):
        raise _bad(f"Missing `{name}`")
    key = raw if isinstance(raw, str) else _js_string(raw)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise _bad(f"kv: key exceeds {MAX_KEY_BYTES} byte limit")
    return key


def _js_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _check_proto(value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "__proto__":
                raise _bad("kv: value key `__proto__` is not allowed")
            _check_proto(v)
    elif isinstance(value, list):
        for v in value:
            _check_proto(v)


def _value(args: dict[str, Any], name: str = "value") -> Any:
    if name not in args:
        raise _bad(f"Missing `{name}`")
    value = args[name]
    _check_size(value)
    return value


def _check_size(value: Any) -> None:
    _check_proto(value)
    try:
        encoded = _js_json(value)
    except ValueError as exc:
        raise _bad("kv: value is not JSON") from exc
    if len(encoded.encode("utf-8")) > MAX_VALUE_BYTES:
        raise _bad(f"kv: value exceeds {MAX_VALUE_BYTES} byte limit")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _path(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise _bad("kv: paths must be strings")
    if path == "":
        return []
    parts = path.split(".")
    if "__proto__" in parts:
        raise _bad("kv: path segment `__proto__` is not allowed")
    if any(p == "" for p in parts):
        raise _bad(f"kv: invalid path `{path}`")
    return parts


class _Space:
    """One namespace of one store."""

    def __init__(self, ctx: Any, args: dict[str, Any]):
        call = ctx.call
        self.db = call.store.db
        ensure_schema(call.store)
        actor = call.me
        app = actor.app_uid
        opt = args.get("optConfig")
        if app is None and isinstance(opt, dict) and isinstance(opt.get("appUuid"), str) and opt["appUuid"]:
            app = opt["appUuid"]
        self.ns = f"v1:{actor.user['uuid']}:{app or 'os-global'}"

    def get(self, key: str) -> tuple[bool, Any]:
        row = self.db.execute("SELECT value, expire_at FROM kv WHERE ns=? AND key=?", (self.ns, key)).fetchone()
        if row is None:
            return False, None
        if row["expire_at"] is not None and row["expire_at"] <= time.time():
            self.db.execute("DELETE FROM kv WHERE ns=? AND key=?", (self.ns, key))
            return False, None
        return True, json.loads(row["value"])

    def put(self, key: str, value: Any, expire_at: float | None = None, keep_expiry: bool = False) -> None:
        _check_size(value)
        if keep_expiry:
            row = self.db.execute("SELECT expire_at FROM kv WHERE ns=? AND key=?", (self.ns, key)).fetchone()
            expire_at = row["expire_at"] if row is not None else None
        self.db.execute(
            "INSERT OR REPLACE INTO kv(ns, key, value, expire_at) VALUES (?, ?, ?, ?)",
            (self.ns, key, _js_json(value), expire_at),
        )

    def set_expiry(self, key: str, expire_at: float) -> None:
        self.db.execute("UPDATE kv SET expire_at=? WHERE ns=? AND key=?", (expire_at, self.ns, key))

    def delete(self, key: str) -> None:
        self.db.execute("DELETE FROM kv WHERE ns=? AND key=?", (self.ns, key))

    def flush(self) -> None:
        self.db.execute("DELETE FROM kv WHERE ns=?", (self.ns,))

    def rows(self, prefix: str, after: str | None) -> list[tuple[str, Any]]:
        now = time.time()
        sql = "SELECT key, value FROM kv WHERE ns=? AND substr(key, 1, ?)=? AND (expire_at IS NULL OR expire_at > ?)"
        params: list[Any] = [self.ns, len(prefix), prefix, now]
        if after is not None:
            sql += " AND key > ?"
            params.append(after)
        sql += " ORDER BY key"
        return [(r["key"], json.loads(r["value"])) for r in self.db.execute(sql, params)]


def _expire_at(args: dict[str, Any]) -> float | None:
    if "expireAt" not in args or args["expireAt"] is None:
        return None
    if not _number(args["expireAt"]):
        raise _bad("`expireAt` must be a number")
    return float(args["expireAt"])


def _ttl(args: dict[str, Any], required: bool) -> float | None:
    if args.get("ttl") is None:
        if required:
            raise _bad("`ttl` must be a number (seconds)")
        return None
    if not _number(args["ttl"]):
        raise _bad("`ttl` must be a number (seconds)")
    return time.time() + float(args["ttl"])


def _walk(root: Any, parts: list[str], create: bool) -> tuple[dict[str, Any], str]:
    """The object holding the last segment of ``parts`` and that segment."""
    node = root
    for part in parts[:-1]:
        if not isinstance(node, dict):
            raise _upstream_type_error()
        nxt = node.get(part)
        if nxt is None and create:
            nxt = node[part] = {}
        node = nxt
    if not isinstance(node, dict):
        raise _upstream_type_error()
    return node, parts[-1]


def _map_arg(args: dict[str, Any], name: str) -> dict[str, Any]:
    value = args.get(name)
    if not isinstance(value, dict) or not value:
        raise _bad(f"Missing or invalid `{name}`")
    return value


async def _incr(space: _Space, args: dict[str, Any], sign: int) -> Any:
    key = _key(args)
    amounts = _map_arg(args, "pathAndAmountMap")
    if not all(_number(v) for v in amounts.values()):
        raise _bad("kv: all values in pathAndAmountMap must be numbers")
    paths = {p: _path(p) for p in amounts}
    found, value = space.get(key)
    if "" in amounts:
        current = value if found and value is not None else 0
        if not _number(current):
            raise _upstream_type_error()
        result = current + sign * amounts[""]
        space.put(key, result, keep_expiry=True)
        return result
    root = value if found and value is not None else {}
    if not isinstance(root, dict):
        raise _upstream_type_error()
    for path, parts in paths.items():
        holder, last = _walk(root, parts, create=True)
        current = holder.get(last, 0)
        if current is None:
            current = 0
        if not _number(current):
            raise _upstream_type_error()
        holder[last] = current + sign * amounts[path]
    space.put(key, root, keep_expiry=True)
    return root


async def _add(space: _Space, args: dict[str, Any]) -> Any:
    key = _key(args)
    values = _map_arg(args, "pathAndValueMap")
    paths = {p: _path(p) for p in values}
    found, stored = space.get(key)

    def appended(current: Any, item: Any) -> list[Any]:
        if current is None:
            current = []
        if not isinstance(current, list):
            raise _upstream_type_error()
        return current + (list(item) if isinstance(item, list) else [item])

    if "" in values:
        result = appended(stored if found else None, values[""])
        space.put(key, result, keep_expiry=True)
        return result
    root = stored if found and stored is not None else {}
    if not isinstance(root, dict):
        raise _upstream_type_error()
    for path, parts in paths.items():
        holder, last = _walk(root, parts, create=True)
        holder[last] = appended(holder.get(last), values[path])
    space.put(key, root, keep_expiry=True)
    return root


async def _update(space: _Space, args: dict[str, Any]) -> Any:
    key = _key(args)
    values = _map_arg(args, "pathAndValueMap")
    paths = {p: _path(p) for p in values}
    for v in values.values():
        _check_proto(v)
    expire_at = _ttl(args, required=False)
    found, stored = space.get(key)
    if "" in values:
        root = values[""]
    else:
        root = stored if found and stored is not None else {}
        if not isinstance(root, dict):
            raise _upstream_type_error()
        for path, parts in paths.items():
            holder, last = _walk(root, parts, create=True)
            holder[last] = values[path]
    space.put(key, root, expire_at, keep_expiry=expire_at is None)
    return root


async def _remove(space: _Space, args: dict[str, Any]) -> Any:
    key = _key(args)
    paths = args.get("paths")
    if not isinstance(paths, list) or not paths:
        raise _bad("Missing or invalid `paths`")
    parsed = [_path(p) for p in paths]
    found, stored = space.get(key)
    if not found:
        return None
    if any(not p for p in parsed):
        space.delete(key)
        return None
    if not isinstance(stored, dict):
        raise _upstream_type_error()
    for parts in parsed:
        node: Any = stored
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    space.put(key, stored, keep_expiry=True)
    return stored


def _decode_cursor(space: _Space, cursor: Any) -> str:
    if not isinstance(cursor, str) or not cursor:
        raise _bad("invalid kv: cursor")
    try:
        data = json.loads(base64.b64decode(cursor, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise _bad("invalid kv: cursor") from exc
    if not isinstance(data, dict) or data.get("namespace") != space.ns or not isinstance(data.get("key"), str):
        raise _bad("invalid kv: cursor")
    return data["key"]


def _encode_cursor(space: _Space, key: str) -> str:
    raw = json.dumps({"namespace": space.ns, "key": key}, separators=(",", ":"))
    return base64.b64encode(raw.encode()).decode("ascii")


async def _list(space: _Space, args: dict[str, Any]) -> Any:
    shape = args.get("as", "entries")
    if shape is None:
        shape = "entries"
    if shape not in ("keys", "values", "entries"):
        raise _bad('kv: list "as" must be keys, values, or entries')
    pattern = args.get("pattern")
    prefix = pattern if isinstance(pattern, str) else ""
    limit = args.get("limit")
    cursor = args.get("cursor")
    offset = args.get("offset")
    include_total = bool(args.get("includeTotal"))
    paged = any(args.get(k) is not None for k in ("limit", "cursor", "offset")) or include_total
    if limit is not None and (not _number(limit) or limit <= 0):
        raise _bad("kv: limit must be a positive number")
    if args.get("fetchUntilFull") and limit is None:
        raise _bad("kv: fetchUntilFull requires limit")
    if cursor is not None and offset is not None:
        raise _bad("kv: cursor and offset cannot be combined")
    if offset is not None:
        if not _number(offset) or offset < 0:
            raise _bad("kv: offset must be a non-negative number")
        if offset > MAX_OFFSET:
            raise _bad(f"kv: offset may not exceed {MAX_OFFSET}")
    after = _decode_cursor(space, cursor) if cursor is not None else None
    rows = space.rows(prefix, after)
    total = len(space.rows(prefix, None)) if include_total else None
    if offset:
        rows = rows[int(offset):]
    next_cursor = None
    if limit is not None:
        page = rows[: int(limit)]
        # Like DynamoDB: a full page carries a cursor, even when nothing follows.
        if page and len(page) == int(limit):
            next_cursor = _encode_cursor(space, page[-1][0])
        rows = page

    def shaped(key: str, value: Any) -> Any:
        if shape == "keys":
            return key
        if shape == "values":
            return value
        return {"key": key, "value": value}

    items = [shaped(k, v) for k, v in rows]
    if not paged:
        return items
    out: dict[str, Any] = {"items": items}
    if next_cursor is not None:
        out["cursor"] = next_cursor
    if total is not None:
        out["total"] = total
    return out


async def kvstore(method: str, args: dict[str, Any], ctx: Any, service: str) -> Response:
    space = _Space(ctx, args)
    if method == "set":
        key = _key(args)
        value = _value(args)
        space.put(key, value, _expire_at(args))
        return _ok(True)
    if method == "batchPut":
        items = args.get("items")
        if not isinstance(items, list) or not items:
            raise _bad("Missing or invalid `items`")
        checked = []
        for item in items:
            if not isinstance(item, dict):
                raise _bad("Missing or invalid `items`")
            checked.append((_key(item), _value(item), _expire_at(item)))
        for key, value, expire_at in checked:
            space.put(key, value, expire_at)
        return _ok(True)
    if method == "get":
        raw = args.get("key")
        if isinstance(raw, list):
            keys = [_key({"key": k}) for k in raw]
            return _ok([space.get(k)[1] for k in keys])
        return _ok(space.get(_key(args))[1])
    if method == "del":
        space.delete(_key(args))
        return _ok(True)
    if method in ("incr", "decr"):
        return _ok(await _incr(space, args, 1 if method == "incr" else -1))
    if method == "add":
        return _ok(await _add(space, args))
    if method == "update":
        return _ok(await _update(space, args))
    if method == "remove":
        return _ok(await _remove(space, args))
    if method == "expire":
        key = _key(args)
        expire_at = _ttl(args, required=True)
        assert expire_at is not None
        space.set_expiry(key, expire_at)
        return _ok(None, with_result=False)
    if method == "expireAt":
        key = _key(args)
        if not _number(args.get("timestamp")):
            raise _bad("`timestamp` must be a number")
        space.set_expiry(key, float(args["timestamp"]))
        return _ok(None, with_result=False)
    if method == "flush":
        space.flush()
        return _ok(True)
    if method == "list":
        return _ok(await _list(space, args))
    raise ApiError(404, "not_found", f"Method '{method}' not found on driver '{SERVICE}'")


METHODS = frozenset(
    {"set", "batchPut", "get", "del", "incr", "decr", "add", "update", "remove", "expire", "expireAt", "flush", "list"}
)
HANDLERS = {"puter-kvstore": (kvstore, METHODS)}
