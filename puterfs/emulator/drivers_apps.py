"""``puter-apps`` (``es:app``), ``puter-subdomains`` (``es:subdomain``) and ``workers``
(``worker-service``), as a self-hosted Puter 26.07 answers them (``exchanges/apps.jsonl``,
RECORDED-2.md §5), plus ``GET /apps/nameAvailable``, ``GET /get-dev-profile`` and the
metering extension's ``GET /metering/usage[/<app>]`` (source, not recorded).

Workers are answered like a self-host without Cloudflare: ``create`` checks its
arguments, then 503 "Cloudflare Workers not configured" (code ``response_timeout``,
as recorded); there are never any workers to list, get or destroy.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
import uuid
from typing import Any

from starlette.responses import JSONResponse, Response

from puterfs.emulator import hosting
from puterfs.emulator.app import Call, route
from puterfs.emulator.errors import ApiError

_JSON = "application/json; charset=utf-8"
APP_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
SUBDOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
WORKER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# `www` is recorded as reserved; the others are the labels the server's own hosts use.
RESERVED_SUBDOMAINS = frozenset({"www", "api", "dav", "site", "host", "workers", "puter"})
# Fields of an app object a client may set (snake_case, as puter.js's toAppObject sends).
APP_FIELDS = (
    "name", "title", "description", "icon", "index_url", "background", "maximize_on_start",
    "metadata", "filetype_associations", "is_private", "feedback_enabled",
)
_INCENTIVE_FIELDS = ("approved_for_listing", "approved_for_opening_items", "approved_for_incentive_program")


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _ok(result: Any, service: str) -> Response:
    return JSONResponse({"success": True, "result": result, "service": {"name": service}}, media_type=_JSON)


def _now_sql() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def _iso(sql_time: str) -> str:
    return sql_time.replace(" ", "T") + ".000Z"


def _call(ctx: Any) -> Call:
    call = ctx.call
    hosting.ensure_schema(call.store)
    return call


def _next_seq(call: Call, table: str) -> int:
    row = call.store.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()  # noqa: S608
    return int(row[0])


def _page(rows: list[Any], args: dict[str, Any], make: Any) -> dict[str, Any]:
    """``select`` paging: ``{items, cursor?, total?}``; the cursor is base64 ``{"id": seq}``."""
    total = len(rows)
    cursor = args.get("cursor")
    if cursor is not None:
        try:
            after = int(json.loads(base64.b64decode(str(cursor), validate=True))["id"])
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise _bad("Invalid cursor") from exc
        rows = [r for r in rows if r["seq"] > after]
    limit = args.get("limit")
    out: dict[str, Any] = {}
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise _bad("`limit` must be a positive integer")
        rows = rows[:limit]
        if len(rows) == limit:
            out["cursor"] = base64.b64encode(json.dumps({"id": rows[-1]["seq"]}).encode()).decode()
    out = {"items": [make(r) for r in rows], **out}
    if args.get("includeTotal"):
        out["total"] = total
    return out


# --------------------------------------------------------------------------- apps


def _owner(call: Call, owner_id: int) -> dict[str, Any]:
    user = call.store.user_by_id(owner_id)
    return {"username": user["username"], "uuid": user["uuid"]} if user else {"username": None, "uuid": None}


def _app_object(call: Call, row: Any, *, stats: bool = False, params: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.loads(row["data"])
    obj: dict[str, Any] = {
        "uid": row["uid"],
        "name": row["name"],
        "title": data.get("title", row["name"]),
        "description": data.get("description"),
        "icon": data.get("icon"),
        "index_url": data.get("index_url"),
        "background": bool(data.get("background", False)),
        "maximize_on_start": bool(data.get("maximize_on_start", False)),
        "feedback_enabled": bool(data.get("feedback_enabled", False)),
        "godmode": False,
        "is_private": bool(data.get("is_private", False)),
        "protected": False,
        **{k: False for k in _INCENTIVE_FIELDS},
        "metadata": data.get("metadata"),
        "filetype_associations": list(data.get("filetype_associations") or []),
        "created_at": row["created_at"],
        "created_from_origin": data.get("created_from_origin"),
        "stats": {"open_count": 0, "user_count": 0, "referral_count": None} if stats else None,
        "owner": _owner(call, row["owner_id"]),
    }
    if params and params.get("icon_size") is not None:
        obj["icon_size"] = params["icon_size"]
    return obj


def _app_row(call: Call, ident: Any) -> Any:
    if not isinstance(ident, dict):
        raise _bad("Missing or invalid `id`")
    if isinstance(ident.get("uid"), str):
        row = call.store.db.execute("SELECT * FROM apps WHERE uid=?", (ident["uid"],)).fetchone()
    elif isinstance(ident.get("name"), str):
        row = call.store.db.execute("SELECT * FROM apps WHERE name=?", (ident["name"],)).fetchone()
    else:
        raise _bad("Missing or invalid `id`")
    if row is None:
        raise ApiError(404, "not_found", "App not found")
    return row


def _check_app_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise _bad("Missing `name`")
    if not APP_NAME_RE.match(name):
        raise _bad("`name` has an invalid format")
    return name


def _name_taken(call: Call, name: str, except_uid: str | None = None) -> bool:
    row = call.store.db.execute("SELECT uid FROM apps WHERE name=?", (name,)).fetchone()
    return row is not None and row["uid"] != except_uid


def _origin_of(url: str) -> str | None:
    """``created_from_origin``: set when the app lives on one of Puter's own origins (recorded:
    the worker sandbox); null for an external ``index_url``."""
    m = re.match(r"^(https?://([^/]+))", url)
    if not m:
        return None
    host = m.group(2).split(":")[0].lower()
    if host == "puter.com" or host.endswith((".puter.com", ".puter.site", ".puter.localhost")):
        return m.group(1)
    return None


def _app_fields(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: obj[k] for k in APP_FIELDS if k in obj and k != "name"}


async def apps(method: str, args: dict[str, Any], ctx: Any, service: str) -> Response:
    call = _call(ctx)
    db = call.store.db
    me = call.me
    if method == "create":
        obj = args.get("object")
        if not isinstance(obj, dict):
            raise _bad("Missing or invalid `object`")
        name = _check_app_name(obj.get("name"))
        index_url = obj.get("index_url")
        if not isinstance(index_url, str) or not index_url:
            raise _bad("Missing `index_url`")
        if _name_taken(call, name):
            options = args.get("options") if isinstance(args.get("options"), dict) else {}
            if not options.get("dedupe_name"):
                raise ApiError(400, "app_name_already_in_use", "An app with this name already exists")
            base = name
            while _name_taken(call, name):
                name = f"{base}-{''.join(secrets.choice('abcdefghijklmnopqrstuvwxyz0123456789') for _ in range(4))}"
        data = _app_fields(obj)
        data.setdefault("title", name)
        data["created_from_origin"] = _origin_of(index_url)
        uid = f"app-{uuid.uuid4()}"
        db.execute(
            "INSERT INTO apps(uid, name, owner_id, data, created_at, seq) VALUES (?, ?, ?, ?, ?, ?)",
            (uid, name, me.user["id"], json.dumps(data), _now_sql(), _next_seq(call, "apps")),
        )
        return _ok(_app_object(call, db.execute("SELECT * FROM apps WHERE uid=?", (uid,)).fetchone()), service)
    if method == "read":
        row = _app_row(call, args.get("id"))
        params = args.get("params") if isinstance(args.get("params"), dict) else {}
        return _ok(_app_object(call, row, stats=bool(params.get("stats_period")), params=params), service)
    if method == "select":
        rows = db.execute("SELECT * FROM apps WHERE owner_id=? ORDER BY seq", (me.user["id"],)).fetchall()
        return _ok(_page(rows, args, lambda r: _app_object(call, r, stats=True)), service)
    if method in ("update", "delete"):
        row = _app_row(call, args.get("id"))
        if row["owner_id"] != me.user["id"]:
            raise ApiError(403, "forbidden", "Permission denied")
        if method == "delete":
            db.execute("DELETE FROM apps WHERE uid=?", (row["uid"],))
            return _ok({"success": True, "uid": row["uid"]}, service)
        obj = args.get("object")
        if not isinstance(obj, dict):
            raise _bad("Missing or invalid `object`")
        name = row["name"]
        if "name" in obj and obj["name"] != name:
            name = _check_app_name(obj["name"])
            if _name_taken(call, name, except_uid=row["uid"]):
                raise ApiError(400, "app_name_already_in_use", "An app with this name already exists")
        if "index_url" in obj and (not isinstance(obj["index_url"], str) or not obj["index_url"]):
            raise _bad("Missing `index_url`")
        data = json.loads(row["data"])
        data.update(_app_fields(obj))
        db.execute("UPDATE apps SET name=?, data=? WHERE uid=?", (name, json.dumps(data), row["uid"]))
        return _ok(_app_object(call, db.execute("SELECT * FROM apps WHERE uid=?", (row["uid"],)).fetchone()), service)
    if method == "isNameAvailable":
        name = args.get("name")
        return _ok(isinstance(name, str) and bool(name) and not _name_taken(call, name), service)
    raise ApiError(404, "not_found", f"Method '{method}' not found on driver 'puter-apps'")


@route("GET", "/apps/nameAvailable", auth="user")
async def name_available(call: Call) -> Response:
    hosting.ensure_schema(call.store)
    name = call.request.query_params.get("name")
    if not name:
        raise _bad("Missing or invalid `name` query param")
    return JSONResponse({"name": name, "available": not _name_taken(call, name)}, media_type=_JSON)


@route("GET", "/get-dev-profile", auth="user")
async def dev_profile(call: Call) -> Response:
    return JSONResponse(
        {
            "first_name": None,
            "last_name": None,
            "approved_for_incentive_program": False,
            "joined_incentive_program": False,
            "paypal": None,
        },
        media_type=_JSON,
    )


# --------------------------------------------------------------------------- metering

# The free policies' monthly allowance in microcents ($0.01 = 1,000,000): registered
# users $0.50, temp users $0.25 (data/subPolicies/*FreePolicy.ts). The emulator meters
# nothing, so usage is always 0 and all of the allowance remains.
ALLOWANCE = {False: 50_000_000, True: 25_000_000}


@route("GET", "/metering/usage", auth="user")
async def metering_usage(call: Call) -> Response:
    allowance = ALLOWANCE[bool(call.me.user["is_temp"])]
    return JSONResponse(
        {
            "usage": {"total": 0},
            "appTotals": {},
            "allowanceInfo": {"remaining": allowance, "monthUsageAllowance": allowance, "addons": {}},
        },
        media_type=_JSON,
    )


@route("GET", "/metering/usage/", auth="user", prefix=True)
async def metering_app_usage(call: Call) -> Response:
    app = call.request.url.path[len("/metering/usage/"):]
    if not app or "/" in app:
        raise ApiError(404, "not_found", "Not Found")
    if not app.startswith("app-"):
        hosting.ensure_schema(call.store)
        if call.store.db.execute("SELECT 1 FROM apps WHERE name=?", (app,)).fetchone() is None:
            raise ApiError(404, "not_found", "App not found")
    return JSONResponse({"total": 0}, media_type=_JSON)


# --------------------------------------------------------------------------- subdomains


def _scheme(call: Call) -> str:
    return call.request.url.scheme or "http"


def _root_dir(call: Call, uid: str | None) -> dict[str, Any] | None:
    from puterfs.emulator.routes_fs import legacy

    entry = call.store.by_uid(uid) if uid else None
    if entry is None:
        return None
    full = legacy(call, entry)
    keys = (
        "id", "uid", "parent_id", "parent_uid", "is_dir", "is_public", "is_shortcut", "is_symlink",
        "symlink_path", "name", "metadata", "modified", "created", "accessed", "size", "layout", "path",
        "dirname", "dirpath", "writable", "subdomains", "workers", "has_website",
    )
    out = {k: full.get(k) for k in keys}
    out.update(public_token=None, file_request_token=None, sort_by=None, sort_order=None,
               immutable=int(bool(entry["immutable"])))
    return out


def _site_object(call: Call, row: Any, *, listing: bool = False) -> dict[str, Any]:
    return {
        "uid": row["uid"],
        "subdomain": row["subdomain"],
        "domain": "",
        "root_dir": _root_dir(call, row["root_uid"]),
        "associated_app": None,
        # Recorded: null from create and read, an ISO time from select and update.
        "created_at": _iso(row["created_at"]) if listing else None,
        "owner": _owner(call, row["owner_id"]),
        "app_owner": None,
        "protected": False,
    }


def _resolve_root(call: Call, raw: Any) -> str:
    from puterfs.emulator.routes_fs import resolve

    if raw is None or raw == "":
        raise _bad("Path cannot be empty")
    if not isinstance(raw, str):
        raise _bad("`root_dir` must be a path")
    path = raw if raw.startswith(("/", "~")) else "~/" + raw
    try:
        entry = resolve(call, path)
    except ApiError as exc:
        if exc.status == 404:
            raise _bad("root_dir_id does not exist") from exc
        raise
    if not entry["is_dir"]:
        raise _bad("root_dir must be a directory")
    return entry["uid"]


def _site_row(call: Call, ident: Any) -> Any:
    if not isinstance(ident, dict):
        raise _bad("Missing or invalid `id`")
    if isinstance(ident.get("subdomain"), str):
        row = call.store.db.execute("SELECT * FROM subdomains WHERE subdomain=?", (ident["subdomain"],)).fetchone()
    elif isinstance(ident.get("uid"), str):
        row = call.store.db.execute("SELECT * FROM subdomains WHERE uid=?", (ident["uid"],)).fetchone()
    else:
        raise _bad("Missing or invalid `id`")
    if row is None or row["owner_id"] != call.me.user["id"]:
        raise ApiError(404, "not_found", "Subdomain not found")
    return row


async def subdomains(method: str, args: dict[str, Any], ctx: Any, service: str) -> Response:
    call = _call(ctx)
    db = call.store.db
    if method == "create":
        obj = args.get("object")
        if not isinstance(obj, dict):
            raise _bad("Missing or invalid `object`")
        sub = obj.get("subdomain")
        if not isinstance(sub, str) or not sub:
            raise _bad("Missing `subdomain`")
        if not SUBDOMAIN_RE.match(sub):
            raise _bad("Invalid subdomain format (lowercase alphanumeric + hyphens, must not start/end with hyphen)")
        if sub in RESERVED_SUBDOMAINS:
            raise ApiError(400, "subdomain_reserved", f"Subdomain '{sub}' is reserved")
        if db.execute("SELECT 1 FROM subdomains WHERE subdomain=?", (sub,)).fetchone():
            raise ApiError(409, "conflict", "A site with this subdomain already exists")
        root_uid = _resolve_root(call, obj.get("root_dir"))
        uid = str(uuid.uuid4())
        db.execute(
            "INSERT INTO subdomains(uid, subdomain, owner_id, root_uid, created_at, seq) VALUES (?, ?, ?, ?, ?, ?)",
            (uid, sub, call.me.user["id"], root_uid, _now_sql(), _next_seq(call, "subdomains")),
        )
        return _ok(_site_object(call, db.execute("SELECT * FROM subdomains WHERE uid=?", (uid,)).fetchone()), service)
    if method == "read":
        return _ok(_site_object(call, _site_row(call, args.get("id"))), service)
    if method == "select":
        rows = db.execute(
            "SELECT * FROM subdomains WHERE owner_id=? ORDER BY seq", (call.me.user["id"],)
        ).fetchall()
        return _ok(_page(rows, args, lambda r: _site_object(call, r, listing=True)), service)
    if method == "update":
        row = _site_row(call, args.get("id"))
        obj = args.get("object")
        if not isinstance(obj, dict):
            raise _bad("Missing or invalid `object`")
        if "root_dir" in obj:
            db.execute("UPDATE subdomains SET root_uid=? WHERE uid=?", (_resolve_root(call, obj["root_dir"]), row["uid"]))
        row = db.execute("SELECT * FROM subdomains WHERE uid=?", (row["uid"],)).fetchone()
        return _ok(_site_object(call, row, listing=True), service)
    if method == "delete":
        row = _site_row(call, args.get("id"))
        db.execute("DELETE FROM subdomains WHERE uid=?", (row["uid"],))
        return _ok({"success": True, "uid": row["uid"]}, service)
    raise ApiError(404, "not_found", f"Method '{method}' not found on driver 'puter-subdomains'")


# --------------------------------------------------------------------------- workers


async def workers(method: str, args: dict[str, Any], ctx: Any, service: str) -> Response:
    if method == "create":
        name = args.get("workerName")
        if not isinstance(name, str) or not name:
            raise _bad("Missing `workerName`")
        if not WORKER_NAME_RE.match(name):
            raise _bad("Worker name must be alphanumeric (plus _ and -)")
        if not isinstance(args.get("filePath"), str) or not args["filePath"]:
            raise _bad("Missing `filePath`")
        raise ApiError(503, "response_timeout", "Cloudflare Workers not configured")
    if method == "getFilePaths":
        return _ok([] if args.get("workerName") is not None else {"items": []}, service)
    if method == "destroy":
        raise ApiError(404, "not_found", "Worker not found")
    if method == "getLoggingUrl":
        return _ok(None, service)
    raise ApiError(404, "not_found", f"Method '{method}' not found on driver 'workers'")


HANDLERS = {
    "puter-apps": (apps, frozenset({"create", "read", "select", "update", "delete", "isNameAvailable"})),
    "puter-subdomains": (subdomains, frozenset({"create", "read", "select", "update", "delete"})),
    "workers": (workers, frozenset({"create", "getFilePaths", "destroy", "getLoggingUrl"})),
}
