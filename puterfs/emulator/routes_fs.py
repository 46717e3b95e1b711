"""Filesystem routes (README §4, §5, §11), quirks included.

The real server is not POSIX and the emulator does not fix that: mkdir is
idempotent, /batch writes dedupe by default, /move with overwrite replaces anything
(and a directory moved onto itself "succeeds"), /delete of ``paths`` is not atomic,
Range edge cases give 500, /touch resets ``created``.  Clients and the mount have
to cope with exactly this.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import shutil
import sqlite3
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.responses import Response, StreamingResponse

from puterfs.emulator import multipart
from puterfs.emulator.app import Call, JSONResponse, read_body, route
from puterfs.emulator.errors import ApiError
from puterfs.emulator.hosting import subdomains_of
from puterfs.emulator.sockets import announce, echo_ids, raw_entry
from puterfs.emulator.store import (
    EMPTY_MD5,
    dedupe,
    join,
    metadata_json,
    mime_for,
    now_s,
    s3_etag,
    split_path,
)

Row = sqlite3.Row
CHUNK = 256 * 1024
SIGN_EXPIRY_OFFSET = 10**13  # the recorded server signs URLs that practically never expire


# --- rendering -----------------------------------------------------------------------------


def _path_of(e: Row, quirk: bool = True) -> str:
    # A directory moved onto itself is its own parent; the real server then reports
    # its path as "<stored path>/<name>" on later lookups (recorded), so do the same.
    if quirk and e["parent_id"] is not None and e["parent_id"] == e["id"]:
        return join(e["path"], e["name"])
    return e["path"]


def legacy(call: Call, e: Row, full: bool = False, size: int | None = None, quirk: bool = True) -> dict[str, Any]:
    """The legacy entry (§5.2). ``full`` = stat style (is_empty on dirs too, and owner)."""
    store = call.store
    parent = store.by_id(e["parent_id"])
    path = _path_of(e, quirk)
    dirname = split_path(path)[0]
    is_home = e["parent_id"] is None
    is_dir = bool(e["is_dir"])
    if is_home:
        sz: int | None = None
    elif is_dir:
        sz = size if size is not None else 0
    else:
        sz = e["size"]
    sites = subdomains_of(store, call.emu.domain, e["uid"], call.request.url.scheme or "http") if is_dir else []
    shortcut = e["shortcut_to"]
    d: dict[str, Any] = {
        "id": e["uid"],
        "uid": e["uid"],
        "uuid": e["uid"],
        "parent_id": parent["uid"] if parent else None,
        "parent_uid": parent["uid"] if parent else None,
        "path": path,
        "dirname": dirname,
        "dirpath": dirname,
        "name": e["name"],
        "is_dir": is_dir,
        "is_shortcut": 0 if shortcut is None else 1,
        "shortcut_to": shortcut,
        "is_symlink": 0,
        "symlink_path": None,
        "type": "folder" if is_dir else (None if shortcut is not None else mime_for(e["name"])),
        "writable": True,
        "is_public": None if e["is_public"] is None else bool(e["is_public"]),
        "thumbnail": None,
        "immutable": bool(e["immutable"]),
        "metadata": e["metadata"],
        "modified": e["modified"],
        "created": e["created"],
        "accessed": None if is_home else e["accessed"],
        "size": sz,
        "layout": None,
        "subdomains": sites,
        "workers": [],
        "has_website": bool(sites),
        "suggested_apps": [],
        "associated_app": None,
    }
    if full:
        d["is_empty"] = (not store.has_children(e)) if (is_dir and not is_home) else False
        d["owner"] = {"username": store.owner_name(e)}
    elif not is_dir:
        d["is_empty"] = False
    return d


def v2(call: Call, e: Row, listing: bool = False, size: int | None = None) -> dict[str, Any]:
    parent = call.store.by_id(e["parent_id"])
    is_dir = bool(e["is_dir"])
    is_home = e["parent_id"] is None
    d: dict[str, Any] = {
        "uuid": e["uid"],
        "uid": e["uid"],
        "parentUid": parent["uid"] if parent else None,
        "path": _path_of(e),
        "name": e["name"],
        "isDir": is_dir,
        "isShortcut": e["shortcut_to"] is not None,
        "shortcutTo": e["shortcut_to"],
        "isSymlink": False,
        "symlinkPath": None,
        "isPublic": None if e["is_public"] is None else bool(e["is_public"]),
        "immutable": bool(e["immutable"]),
        "metadata": e["metadata"],
        "modified": e["modified"],
        "created": e["created"],
        "accessed": None if is_home else e["accessed"],
        "size": None if is_home else (size if size is not None else (0 if is_dir else e["size"])),
        "layout": None,
        "subdomains": [],
        "workers": [],
        "hasWebsite": False,
        "suggestedApps": [],
    }
    if listing:
        d.update(type="folder" if is_dir else mime_for(e["name"]), thumbnail=None, associatedApp=None)
    return d


# --- paths, selectors, permissions ---------------------------------------------------------


def norm_path(call: Call, raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ApiError(400, "bad_request", "`path` is required")
    path = raw
    if path == "~" or path.startswith("~/"):
        path = "/" + call.me.username + path[1:]
    comps: list[str] = []
    for comp in path.split("/"):
        # path lookups trim trailing whitespace (recorded: "trail " is then unreachable by path)
        comp = comp.rstrip()
        if comp in ("", "."):
            continue
        if comp == "..":
            if comps:
                comps.pop()
            continue
        comps.append(comp)
    return "/" + "/".join(comps)


def _not_found(call: Call, raw: str, npath: str) -> ApiError:
    me = call.me
    top = npath.split("/")[1] if npath != "/" else ""
    if me.kind != "au" and top != me.username:
        return ApiError(404, "subject_does_not_exist", "Subject does not exist")
    return ApiError(404, "subject_does_not_exist", f"Entry not found: path={raw}")


def _sandbox_root(call: Call) -> str:
    return f"/{call.me.username}/AppData/{call.me.app_uid}"


def can_see(call: Call, e: Row, write: bool = False) -> bool:
    me = call.me
    path = e["path"]
    if e["owner_id"] == me.user["id"]:
        if me.kind == "au":
            root = _sandbox_root(call)
            return path == root or path.startswith(root + "/")
        return True
    if write:
        return False
    owner = call.store.owner_name(e)
    public = f"/{owner}/Public"
    return path == public or path.startswith(public + "/")


def check_access(call: Call, e: Row, raw: str, write: bool = False) -> Row:
    if can_see(call, e, write):
        return e
    if call.me.kind == "au":
        raise ApiError(404, "subject_does_not_exist", f"Entry not found: path={raw}")
    raise ApiError(404, "subject_does_not_exist", "Subject does not exist")


def by_path(call: Call, raw: Any, write: bool = False) -> Row:
    npath = norm_path(call, raw)
    e = call.store.by_path(npath)
    if e is None:
        raise _not_found(call, str(raw), npath)
    return check_access(call, e, str(raw), write)


def by_uid(call: Call, uid: Any, write: bool = False) -> Row:
    e = call.store.by_uid(str(uid))
    if e is None:
        raise ApiError(404, "subject_does_not_exist", f"Entry not found: uid={uid}")
    return check_access(call, e, e["path"], write)


def resolve(call: Call, sel: Any, write: bool = False) -> Row:
    """A selector: a path/uid string, or {path} / {uid|uuid|id} / {parent, name}."""
    if isinstance(sel, str):
        if sel.startswith("/") or sel.startswith("~"):
            return by_path(call, sel, write)
        return by_uid(call, sel, write)
    if not isinstance(sel, dict):
        raise ApiError(400, "bad_request", "Invalid selector")
    for key in ("uid", "uuid", "id"):
        if isinstance(sel.get(key), str) and sel[key]:
            return by_uid(call, sel[key], write)
    if sel.get("path") is not None:
        return by_path(call, sel["path"], write)
    if sel.get("parent") is not None and isinstance(sel.get("name"), str):
        parent = resolve(call, sel["parent"])
        e = call.store.child(parent, sel["name"])
        if e is None:
            raise ApiError(404, "subject_does_not_exist", f"Entry not found: path={join(parent['path'], sel['name'])}")
        return check_access(call, e, e["path"], write)
    raise ApiError(400, "bad_request", "Missing entry reference (expected one of: path, uid, id)")


def check_name(name: Any, *, required_msg: str = "`name` is required") -> str:
    if not isinstance(name, str) or name == "":
        raise ApiError(400, "bad_request", required_msg)
    if "/" in name:
        raise ApiError(400, "bad_request", "Name cannot contain a slash")
    if name in (".", ".."):
        raise ApiError(400, "bad_request", "Name cannot be `.` or `..`")
    if not name.strip():
        raise ApiError(400, "bad_request", "Name cannot be empty")
    return name


def ensure_dir(call: Call, raw: Any, create: bool) -> Row:
    """The directory at ``raw`` (writable by the caller), created with its ancestors if asked."""
    npath = norm_path(call, raw)
    store = call.store
    e = store.by_path(npath)
    if e is not None:
        check_access(call, e, str(raw), write=True)
        if not e["is_dir"]:
            raise ApiError(409, "conflict", f"Path is not a directory: {e['path']}")
        return e
    if not create:
        top = npath.split("/")[1] if npath != "/" else ""
        if call.me.kind != "au" and top != call.me.username:
            raise _not_found(call, str(raw), npath)
        # the errata: a missing parent on write or mkdir is not_found, naming the directory
        raise ApiError(404, "not_found", f"Parent path does not exist: {npath}")
    comps = npath.strip("/").split("/")
    cur = store.by_path("/" + comps[0])
    if cur is None:
        raise _not_found(call, str(raw), npath)
    check_access(call, cur, "/" + comps[0], write=True)
    for comp in comps[1:]:
        nxt = store.child(cur, comp)
        if nxt is None:
            nxt = store.mkdir(cur, comp, cur["owner_id"])
        elif not nxt["is_dir"]:
            raise ApiError(409, "conflict", f"Path is not a directory: {nxt['path']}")
        cur = nxt
    return cur


def check_quota(call: Call, owner_id: int, delta: int) -> None:
    cap = call.emu.capacity
    if cap is not None and delta > 0 and call.store.used(owner_id) + delta > cap:
        raise ApiError(400, "storage_limit_reached", "Storage capacity limit reached.")


def bump(call: Call, owner_id: int | None = None) -> None:
    call.store.bump(call.me.user["id"] if owner_id is None else owner_id)


def flag(body: dict[str, Any], *names: str, default: bool = False) -> bool:
    for n in names:
        if n in body and body[n] is not None:
            return bool(body[n])
    return default


# --- stat / readdir ------------------------------------------------------------------------


def _root_listing(call: Call) -> list[Row]:
    if call.me.kind == "au":
        return []
    home = call.store.by_path("/" + call.me.username)
    return [home] if home is not None else []


@route("POST", "/stat")
async def stat(call: Call) -> Response:
    e = resolve(call, call.body)
    size = call.store.subtree_size(e) if (e["is_dir"] and flag(call.body, "return_size")) else None
    return JSONResponse(legacy(call, e, full=True, size=size))


@route("POST", "/fs/stat")
async def fs_stat(call: Call) -> Response:
    e = resolve(call, call.body)
    size = call.store.subtree_size(e) if (e["is_dir"] and flag(call.body, "return_size")) else None
    return JSONResponse(v2(call, e, size=size))


def _encode_cursor(e: Row, sort: str, desc: bool) -> str:
    col = {"name": "name", "modified": "modified", "size": "size", "type": "is_dir"}.get(sort, "name")
    payload = {"v": e[col], "id": e["id"], "s": sort, "o": "desc" if desc else "asc"}
    return base64.b64encode(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()).decode()


def _decode_cursor(cursor: Any) -> tuple[Any, int]:
    try:
        data = json.loads(base64.b64decode(str(cursor)))
        return data["v"], int(data["id"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ApiError(400, "bad_request", "Invalid cursor") from exc


def _listing(call: Call, body: dict[str, Any]) -> tuple[list[Row], dict[str, Any] | None]:
    """Children of the selected dir, and the envelope fields when paginated."""
    sel = body if (body.get("path") is not None or body.get("uid") or body.get("parent")) else {"path": "~"}
    if isinstance(sel, dict) and sel.get("path") == "/":
        return _root_listing(call), None
    e = resolve(call, sel)
    if not e["is_dir"]:
        raise ApiError(400, "dest_is_not_a_directory", "Target is not a directory")
    sort = str(body.get("sortBy") or body.get("sort_by") or "name")
    desc = str(body.get("sortOrder") or body.get("sort_order") or "asc").lower() == "desc"
    limit = body.get("limit")
    limit = int(limit) if isinstance(limit, (int, float, str)) and str(limit).isdigit() and int(limit) > 0 else None
    offset = body.get("offset")
    offset = int(offset) if isinstance(offset, (int, str)) and str(offset).isdigit() else 0
    paginated = "cursor" in body or bool(body.get("includeTotal"))
    store = call.store
    if not paginated:
        return store.children(e, sort=sort, desc=desc, limit=limit, offset=offset), None
    page = limit or 1000
    after = _decode_cursor(body["cursor"]) if body.get("cursor") else None
    rows = store.children(e, sort=sort, desc=desc, after=after, limit=page + 1, offset=0 if after else offset)
    env: dict[str, Any] = {}
    if len(rows) > page:
        rows = rows[:page]
        env["cursor"] = _encode_cursor(rows[-1], sort, desc)
    if body.get("includeTotal"):
        env["total"] = store.count_children(e)
    return rows, env


@route("POST", "/readdir")
async def readdir(call: Call) -> Response:
    rows, env = _listing(call, call.body)
    items = [legacy(call, r) for r in rows]
    if env is None:
        return JSONResponse(items)
    return JSONResponse({"items": items, **env})


@route("GET,POST", "/fs/readdir")
async def fs_readdir(call: Call) -> Response:
    body = dict(call.body) if call.request.method == "POST" else dict(call.request.query_params)
    if call.request.method == "GET" and "includeTotal" in body:
        body["includeTotal"] = body["includeTotal"] not in ("", "0", "false")
    rows, env = _listing(call, body)
    items = [v2(call, r, listing=True) for r in rows]
    if env is None:
        return JSONResponse(items)
    return JSONResponse({"items": items, **env})


# --- mkdir / touch -------------------------------------------------------------------------


def do_mkdir(call: Call, full: str, body: dict[str, Any]) -> Row:
    store = call.store
    npath = norm_path(call, full)
    parent_path, name = split_path(npath)
    check_name(name)
    if parent_path == "/":
        raise ApiError(400, "bad_request", "Cannot create a directory in the root")
    parent = ensure_dir(call, parent_path, flag(body, "create_missing_parents", "create_missing_ancestors"))
    existing = store.child(parent, name)
    if existing is not None:
        if flag(body, "dedupe_name", "change_name"):
            name = dedupe(name, lambda n: store.child(parent, n) is not None)
        elif existing["is_dir"]:
            return existing  # idempotent: the existing entry, same uid
        elif flag(body, "overwrite"):
            store.delete_tree(existing)
        else:
            raise ApiError(409, "conflict", f"An entry already exists at {existing['path']}")
    row = store.mkdir(parent, name, parent["owner_id"])
    bump(call, parent["owner_id"])
    return row


def _mkdir_target(body: dict[str, Any]) -> Any:
    path = body.get("path")
    parent = body.get("parent")
    if isinstance(parent, str) and isinstance(path, str) and not path.startswith(("/", "~")):
        return join(parent, path) if parent.startswith(("/", "~")) else parent + "/" + path
    if isinstance(path, str) and isinstance(body.get("name"), str):
        return join(path, body["name"])  # JSON batch form: {"path": parent, "name": x}
    return path


def changed(call: Call, event: str, e: Row, *, v2_route: bool = False, raw: bool = False,
            body: dict[str, Any] | None = None, **extra: Any) -> None:
    """A mutation happened: announce it on socket.io (legacy entry, or the raw FSEntry of
    /fs/move and /fs/delete; /fs/* routes echo the GUI's ids).  /touch calls nothing."""
    payload = raw_entry(call, e) if raw else legacy(call, e)
    after = {}
    if raw and "descendants_only" in extra:
        after["descendants_only"] = extra.pop("descendants_only")
    payload.update(extra)
    announce(call, event, payload, e["owner_id"], echo=echo_ids(call.body if body is None else body) if v2_route else None,
             after=after.items())


@route("POST", "/mkdir")
async def mkdir(call: Call) -> Response:
    row = do_mkdir(call, _mkdir_target(call.body), call.body)
    changed(call, "item.added", row)
    return JSONResponse(legacy(call, row))


@route("POST", "/fs/mkdir")
async def fs_mkdir(call: Call) -> Response:
    row = do_mkdir(call, _mkdir_target(call.body), call.body)
    changed(call, "item.added", row, v2_route=True)
    return JSONResponse(v2(call, row))


def do_touch(call: Call, body: dict[str, Any]) -> Row:
    store = call.store
    npath = norm_path(call, body.get("path"))
    parent_path, name = split_path(npath)
    if parent_path == "/":
        raise ApiError(400, "bad_request", "Cannot touch in root")
    e = store.by_path(npath)
    ts = now_s()
    if e is not None:
        check_access(call, e, str(body.get("path")), write=True)
        flags = {k: ts for k in ("accessed", "modified", "created") if flag(body, f"set_{k}_to_now")}
        # a plain touch resets created too (recorded)
        store.set_times(e, **(flags or {"accessed": ts, "modified": ts, "created": ts}))
    else:
        parent = store.by_path(parent_path)
        if parent is None and flag(body, "create_missing_parents"):
            parent = ensure_dir(call, parent_path, True)
        if parent is None:
            raise ApiError(404, "not_found", f"Parent path does not exist: {parent_path}")
        check_access(call, parent, parent_path, write=True)
        if not parent["is_dir"]:
            raise ApiError(409, "conflict", f"Path is not a directory: {parent['path']}")
        check_name(name)
        e = store.touch_new(parent, name, parent["owner_id"])
    # /touch and /fs/touch do not move the change timestamp and emit no event (fs-extra.jsonl)
    row = store.by_id(e["id"])
    assert row is not None
    return row


@route("POST", "/touch")
async def touch(call: Call) -> Response:
    do_touch(call, call.body)
    return Response(b"", media_type="text/html; charset=utf-8")


@route("POST", "/fs/touch")
async def fs_touch(call: Call) -> Response:
    return JSONResponse(v2(call, do_touch(call, call.body)))


# --- writes --------------------------------------------------------------------------------


def store_upload(
    call: Call,
    parent: Row,
    name: str,
    src: Any,
    size: int,
    md5: str,
    content_type: str,
    *,
    overwrite: bool,
    dedupe_name: bool,
    metadata: Any = None,
) -> tuple[Row, bool]:
    """Put an uploaded temp file at parent/name; returns (entry, was_overwrite).

    ``metadata`` is the client's ``fileMetadata.metadata`` (``/fs/write`` and friends; /batch
    has none): an overwrite replaces the stored metadata, so custom keys not sent again are gone."""
    store = call.store
    check_name(name)
    existing = store.child(parent, name)
    if existing is not None:
        if overwrite and not existing["is_dir"]:
            pass
        elif dedupe_name and not overwrite:
            name = dedupe(name, lambda n: store.child(parent, n) is not None)
            existing = None
        else:
            raise ApiError(409, "item_with_same_name_exists",
                           "A file already exists at this path and overwrite was not requested", entry_name=name)
    check_quota(call, parent["owner_id"], size - (existing["size"] if existing is not None else 0))
    md5 = s3_etag(Path(src), size, md5)
    row = store.write_file(parent, name, parent["owner_id"], src, size, md5, client_metadata(metadata, content_type),
                           existing)
    bump(call, parent["owner_id"])
    return row, existing is not None


RESERVED_METADATA_KEYS = ("objectKey",)


def _strip_reserved(md: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in md.items() if k not in RESERVED_METADATA_KEYS}


def client_metadata(raw: Any, content_type: str | None) -> str | None:
    """The stored ``metadata`` string for a write (RECORDED-2 §7): an object (an array counts,
    by index) is merged with ``contentType``, reserved keys removed; a string is kept verbatim
    (JSON or not, and without contentType); nothing else is sent: ``{contentType}``."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        raw = {str(i): v for i, v in enumerate(raw)}
    if isinstance(raw, dict):
        md = _strip_reserved(raw)
        if content_type is not None:
            md["contentType"] = content_type
        return json.dumps(md, separators=(",", ":"))
    return metadata_json(content_type)


def _op_error(exc: ApiError) -> dict[str, Any]:
    return {"error": True, "status": exc.status, "message": exc.message, "code": exc.code, **exc.extra}


def run_op(call: Call, op: dict[str, Any], files: list[multipart.Part], infos: list[dict[str, Any]],
           write_index: int) -> dict[str, Any]:
    kind = op.get("op")
    if kind == "write":
        idx = op.get("item_upload_id", write_index)
        if not isinstance(idx, int) or not 0 <= idx < len(files):
            raise ApiError(400, "bad_request", f"No file part for item_upload_id {idx}")
        part = files[idx]
        info = infos[idx] if idx < len(infos) else {}
        # a new name loses its trailing whitespace (the errata)
        raw_name = str(op.get("name") or info.get("name") or part.filename or "")
        name = raw_name.rstrip() or raw_name  # all blanks: check_name says "Name cannot be empty"
        parent = ensure_dir(call, op.get("path"), flag(op, "create_missing_parents", "create_missing_ancestors"))
        ctype = info.get("type") or part.content_type or "application/octet-stream"
        assert part.path is not None
        row, _ = store_upload(call, parent, str(name), part.path, part.size, part.md5, ctype,
                              overwrite=flag(op, "overwrite"), dedupe_name=flag(op, "dedupe_name", "change_name",
                                                                                default=True))
        changed(call, "item.added", row)  # an overwrite too (recorded)
        return legacy(call, row)
    if kind == "mkdir":
        # the op dedupes by default, unlike /mkdir (LegacyFSController batch: dedupe_name ?? true)
        row = do_mkdir(call, _mkdir_target(op), {**op, "dedupe_name": flag(op, "dedupe_name", "change_name", default=True)})
        changed(call, "item.added", row)
        return legacy(call, row)
    if kind == "delete":
        e = resolve(call, op, write=True)
        uid = e["uid"]
        _delete_announced(call, e, flag(op, "recursive", default=True), flag(op, "descendants_only"))
        return {"ok": True, "uid": uid}
    if kind == "move":
        # the batch op passes no new_metadata on, and its result is the moved entry itself
        # (LegacyFSController batch: toLegacyEntry(moved)), not /move's {moved, old_path}
        return _move_announced(call, op, new_metadata=False)["moved"]
    if kind == "shortcut":
        name = op.get("name")
        target_uid = op.get("shortcut_to_uid") or op.get("shortcut_to")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "shortcut_target_not_found", "shortcut op missing `name`")
        if not isinstance(target_uid, str) or not target_uid:
            raise ApiError(400, "shortcut_target_not_found", "shortcut op missing `shortcut_to_uid`")
        target = call.store.by_uid(target_uid)
        if target is None or not can_see(call, target):
            raise ApiError(404, "subject_does_not_exist", f"Entry not found: uuid={target_uid}")
        parent = resolve(call, {"path": op.get("path") or "/"}, write=True)
        return legacy(call, make_shortcut(call, parent, name, target, flag(op, "dedupe_name", default=True)))
    raise ApiError(400, "bad_request", f"Unsupported batch op: '{kind}'")


def make_shortcut(call: Call, parent: Row, name: str, target: Row, dedupe_name: bool, v2_route: bool = False) -> Row:
    """A shortcut (RECORDED-2 §7): the only link kind a client can create; it points at the
    target's row id, cannot be read, and outlives its target."""
    check_name(name)
    if not parent["is_dir"]:
        raise ApiError(400, "dest_is_not_a_directory", "Destination is not a directory")
    if call.store.child(parent, name) is not None:
        if not dedupe_name:
            raise ApiError(409, "item_with_same_name_exists", f"An entry already exists at {join(parent['path'], name)}",
                           entry_name=name)
        name = dedupe(name, lambda n: call.store.child(parent, n) is not None)
    row = call.store.make_shortcut(parent, name, parent["owner_id"], target)
    bump(call, parent["owner_id"])
    changed(call, "item.added", row, v2_route=v2_route)
    return row


@route("POST", "/fs/mkshortcut")
async def fs_mkshortcut(call: Call) -> Response:
    """``{parent: selector, name, target: selector, dedupeName?}`` -> the v2 entry."""
    body = call.body
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "bad_request", "`name` is required")
    target = resolve(call, body.get("target"))
    parent = resolve(call, body.get("parent"), write=True)
    row = make_shortcut(call, parent, name, target, flag(body, "dedupeName", "dedupe_name"), v2_route=True)
    return JSONResponse(v2(call, row))


def run_ops(call: Call, ops: list[Any], files: list[multipart.Part], infos: list[dict[str, Any]]) -> Response:
    results: list[dict[str, Any]] = []
    failed = False
    writes = 0
    for op in ops:
        try:
            if not isinstance(op, dict):
                raise ApiError(400, "bad_request", "Each operation must be an object")
            results.append(run_op(call, op, files, infos, writes))
        except ApiError as exc:
            failed = True
            results.append(_op_error(exc))
        if isinstance(op, dict) and op.get("op") == "write":
            writes += 1
    # 218: partial failure, failed ops in place (recorded)
    return JSONResponse({"results": results}, status_code=218 if failed else 200)


def _json_part(part: multipart.Part) -> Any:
    # a field cut at 1 MiB, or malformed JSON: JSON.parse throws unmapped on the server (500)
    try:
        return json.loads(part.text)
    except ValueError as exc:
        raise ApiError(500, "internal_error", "Internal Server Error") from exc


@route("POST", "/batch", body="raw")
async def batch(call: Call) -> Response:
    request = call.request
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/"):
        body = await read_body(request)
        ops = body.get("operations", body.get("ops"))
        if not isinstance(ops, list):
            raise ApiError(400, "bad_request", "`operations` must be an array")
        call.request.scope["state"]["log"]["body"] = body  # the request log shows the ops (tests)
        return run_ops(call, ops, [], [])
    boundary = multipart.boundary_of(ctype)
    if not boundary:
        raise ApiError(400, "bad_request", "multipart body without a boundary")
    parts = await multipart.parse(request.stream(), boundary, call.store.new_tmp)
    try:
        ops: list[Any] = []
        infos: list[dict[str, Any]] = []
        files: list[multipart.Part] = []
        for part in parts:
            if part.filename is not None or part.name == "file":
                if part.path is None:  # a "file" field sent without filename: spool it anyway
                    part.path = call.store.new_tmp()
                    part.path.write_bytes(bytes(part.data))
                    part.md5 = hashlib.md5(part.data).hexdigest()
                files.append(part)
            elif part.name == "operation":
                ops.append(_json_part(part))
            elif part.name == "fileinfo":
                info = _json_part(part)
                infos.append(info if isinstance(info, dict) else {})
        call.request.scope["state"]["log"]["ops"] = len(ops)
        return run_ops(call, ops, files, infos)
    finally:
        for part in parts:
            if part.path is not None:
                part.path.unlink(missing_ok=True)


def _decode_content(content: Any, encoding: str) -> bytes:
    if not isinstance(content, str):
        raise ApiError(400, "bad_request", "`fileContent` must be a string")
    try:
        if encoding == "base64":
            return base64.b64decode(content, validate=False)
        if encoding == "hex":
            return bytes.fromhex(content)
        return content.encode("utf-8")
    except (ValueError, binascii.Error) as exc:
        raise ApiError(400, "bad_request", f"fileContent is not valid {encoding}") from exc


def do_fs_write(call: Call, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "Each write must be an object")
    meta = body.get("fileMetadata")
    if not isinstance(meta, dict):
        raise ApiError(400, "bad_request", "`fileMetadata` is required")
    encoding = str(body.get("encoding") or "utf8").lower().replace("-", "")
    data = _decode_content(body.get("fileContent", ""), encoding)
    npath = norm_path(call, meta.get("path"))
    parent_path, name = split_path(npath)
    if npath.split("/")[1] != call.me.username:
        raise ApiError(404, "subject_does_not_exist", "Subject does not exist")
    parent = ensure_dir(call, parent_path, flag(meta, "createMissingParents", "create_missing_parents"))
    tmp = call.store.new_tmp()
    tmp.write_bytes(data)
    try:
        row, was = store_upload(call, parent, name, tmp, len(data), hashlib.md5(data).hexdigest(),
                                str(meta.get("contentType") or "application/octet-stream"),
                                overwrite=flag(meta, "overwrite"), dedupe_name=flag(meta, "dedupeName"),
                                metadata=meta.get("metadata"))
    finally:
        tmp.unlink(missing_ok=True)
    changed(call, "item.updated" if was else "item.added", row, v2_route=True, body=body)
    return {"fsEntry": v2(call, row), "wasOverwrite": was, "requestedThumbnail": None,
            "contentHashSha256": hashlib.sha256(data).hexdigest()}


@route("POST", "/fs/write")
async def fs_write(call: Call) -> Response:
    return JSONResponse(do_fs_write(call, call.body))


@route("POST", "/fs/batchWrite")
async def fs_batch_write(call: Call) -> Response:
    """JSON mode: an array of /fs/write requests in, an array of their answers out."""
    body = call.body.get("$")
    if not isinstance(body, list):
        raise ApiError(400, "bad_request", "Batch write body must be an array of write requests")
    return JSONResponse([do_fs_write(call, item) for item in body])


# --- read ----------------------------------------------------------------------------------


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """One ``bytes=a-b`` range, clamped; anything the real server cannot serve is a 500 there."""
    err = ApiError(500, "internal_error", "Internal Server Error")
    h = header.strip()
    if not h.startswith("bytes=") or "," in h or size == 0:
        raise err
    spec = h[6:].strip()
    a, sep, b = spec.partition("-")
    if not sep:
        raise err
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                raise err
            return max(0, size - n), size - 1
        start = int(a)
        end = int(b) if b != "" else size - 1
    except ValueError as exc:
        raise err from exc
    if start < 0 or start >= size or end < start:
        raise err
    return start, min(end, size - 1)


async def _file_chunks(fh: Any, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        fh.seek(start)
        left = length
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        fh.close()


def serve_file(call: Call, e: Row, content_type: str) -> Response:
    if e["is_dir"]:
        raise ApiError(400, "cannot_read_a_directory", "Cannot read a directory")
    if e["shortcut_to"] is not None:
        raise ApiError(400, "shortcut_target_not_found", "Cannot read content of a symlink or shortcut directly")
    blob = call.store.blob_path(e["uid"])
    if blob.exists():
        size = blob.stat().st_size  # what the object holds (a presigned PUT may have replaced it)
    elif e["size"] > 0:
        # bytes gone (a presigned upload completed without its PUT, or an overwrite session
        # aborted after its PUT): the real server answers once and deletes the row ("ghost file")
        call.store.delete_tree(e)
        raise ApiError(404, "subject_does_not_exist", "File contents are missing", path=e["path"], uid=e["uid"])
    else:
        size = 0
    headers = {
        "ETag": f'"{e["md5"] or EMPTY_MD5}"',
        "Last-Modified": formatdate(e["modified"], usegmt=True),
        "Content-Disposition": f'inline; filename="{quote(e["name"], safe="!~*()._-" + chr(39))}"',
    }
    status, start, length = 200, 0, size
    rng = call.request.headers.get("range")
    if rng is not None:
        start, end = _parse_range(rng, size)
        length = end - start + 1
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(length)
    fh = call.store.open_blob(e)
    if call.request.method == "HEAD":
        fh.close()
        return Response(b"", status_code=status, headers=headers, media_type=content_type)
    return StreamingResponse(_file_chunks(fh, start, length), status_code=status, headers=headers,
                             media_type=content_type)


def _read_selector(call: Call) -> Any:
    q = call.request.query_params
    if q.get("file"):
        return q["file"]
    if q.get("path"):
        return {"path": q["path"]}
    if q.get("uid"):
        return {"uid": q["uid"]}
    raise ApiError(400, "bad_request", "`file` is required")


@route("GET", "/read")
async def read(call: Call) -> Response:
    return serve_file(call, resolve(call, _read_selector(call)), "application/octet-stream")


@route("GET", "/fs/read")
async def fs_read(call: Call) -> Response:
    e = resolve(call, _read_selector(call))
    ctype = "application/octet-stream"
    if e["metadata"]:
        try:
            ctype = json.loads(e["metadata"]).get("contentType") or ctype
        except (ValueError, AttributeError):
            pass
    return serve_file(call, e, ctype)


# --- rename / move / copy / delete ---------------------------------------------------------


def do_rename(call: Call, body: dict[str, Any]) -> Row:
    new_name = body.get("new_name")
    if not isinstance(new_name, str) or new_name == "":
        raise ApiError(400, "bad_request", "`new_name` is required")
    check_name(new_name)
    e = resolve(call, body, write=True)
    store = call.store
    parent = store.by_id(e["parent_id"])
    if parent is None:
        raise ApiError(403, "forbidden", "Cannot rename a home directory")
    other = store.child(parent, new_name)
    if other is not None and other["id"] != e["id"]:
        raise ApiError(409, "conflict", f"An entry already exists at {join(parent['path'], new_name)}")
    row = store.relocate(e, parent, new_name)
    bump(call, e["owner_id"])
    return row


@route("POST", "/rename")
async def rename(call: Call) -> Response:
    row = do_rename(call, call.body)
    changed(call, "item.updated", row)
    return JSONResponse(legacy(call, row))


@route("POST", "/fs/rename")
async def fs_rename(call: Call) -> Response:
    row = do_rename(call, call.body)
    changed(call, "item.updated", row, v2_route=True)
    return JSONResponse(v2(call, row))


def _is_inside(store: Any, inner: Row, outer: Row) -> bool:
    """True if ``inner`` is ``outer`` or below it (by parent links, bounded)."""
    cur: Row | None = inner
    for _ in range(10_000):
        if cur is None:
            return False
        if cur["id"] == outer["id"]:
            return True
        if cur["parent_id"] == cur["id"]:
            return False
        cur = store.by_id(cur["parent_id"])
    return False


def _target(call: Call, body: dict[str, Any], src: Row, copy: bool) -> tuple[Row, str, Row | None]:
    store = call.store
    dest_sel = body.get("destination")
    if dest_sel is None:
        raise ApiError(400, "bad_request", "`destination` is required")
    # /move, /fs/move and the /batch move op ignore create_missing_parents (the errata)
    create = copy and flag(body, "create_missing_parents")
    if create and isinstance(dest_sel, str) and dest_sel.startswith(("/", "~")):
        dest = ensure_dir(call, dest_sel, True)
    else:
        dest = resolve(call, dest_sel, write=True)
    if not dest["is_dir"]:
        raise ApiError(400, "dest_is_not_a_directory", "Destination is not a directory")
    if src["is_dir"]:
        if copy and _is_inside(store, dest, src):
            raise ApiError(400, "cannot_copy_directory_into_itself",
                           "Cannot copy a directory into itself or a descendant")
        # destination == source is accepted by the real server (the dir becomes its own
        # parent); only a strict descendant is refused
        if not copy and dest["id"] != src["id"] and _is_inside(store, dest, src):
            raise ApiError(400, "cannot_move_directory_into_itself", "Cannot move a directory into itself")
    name = body.get("new_name") or src["name"]
    check_name(name)
    if copy:
        name = name.rstrip()  # /copy trims a new name; /move new_name keeps it (the errata)
    existing = store.child(dest, name)
    if existing is not None and existing["id"] == src["id"]:
        existing = None
    if existing is not None:
        if flag(body, "overwrite"):
            pass  # replaced below, whatever its type (recorded)
        elif flag(body, "dedupe_name", "change_name", default=False):
            name = dedupe(name, lambda n: store.child(dest, n) is not None)
            existing = None
        else:
            raise ApiError(409, "item_with_same_name_exists",
                           f"An entry already exists at {join(dest['path'], name)}", entry_name=name)
    return dest, name, existing


def move_body(call: Call, body: dict[str, Any], v2_style: bool = False, new_metadata: bool = True) -> dict[str, Any]:
    """``new_metadata`` (an object) replaces the whole stored metadata, contentType included, on
    the legacy /move only; null or a string leaves it as is; /fs/move and the /batch op ignore it."""
    store = call.store
    src = resolve(call, body.get("source"), write=True)
    dest, name, existing = _target(call, body, src, copy=False)
    old_path = src["path"]
    result: dict[str, Any] = {}
    if existing is not None:
        store.delete_tree(existing)
        # rendered after the delete, as the server does: is_empty is then true (recorded)
        result["overwritten"] = legacy(call, existing, full=True)
    if new_metadata and not v2_style and isinstance(body.get("new_metadata"), dict):
        store.db.execute("UPDATE entries SET metadata=? WHERE id=?",
                         (json.dumps(_strip_reserved(body["new_metadata"]), separators=(",", ":")), src["id"]))
        src = store.by_id(src["id"])
    moved = store.relocate(src, dest, name)
    bump(call, src["owner_id"])
    if v2_style:
        return v2(call, moved)
    out = {"moved": legacy(call, moved, full=True, quirk=False), "old_path": old_path}
    if "overwritten" in result:
        out["overwritten"] = result["overwritten"]
    return out


def _move_announced(call: Call, body: dict[str, Any], new_metadata: bool = True) -> dict[str, Any]:
    out = move_body(call, body, new_metadata=new_metadata)
    row = call.store.by_uid(out["moved"]["uid"])
    if row is not None:
        changed(call, "item.moved", row, is_empty=False, old_path=out["old_path"])
    return out


@route("POST", "/move")
async def move(call: Call) -> Response:
    call.request.scope["state"]["log"]["body"] = call.body  # the request log shows what moved (tests)
    return JSONResponse(_move_announced(call, call.body))


@route("POST", "/fs/move")
async def fs_move(call: Call) -> Response:
    from_path = resolve(call, call.body.get("source"), write=True)["path"]
    out = move_body(call, call.body, v2_style=True)
    row = call.store.by_uid(out["uid"])
    if row is not None:
        changed(call, "item.moved", row, v2_route=True, raw=True, from_path=from_path)
    return JSONResponse(out)


def copy_body(call: Call, body: dict[str, Any], default_dedupe: bool) -> tuple[Row, Row | None, dict | None]:
    store = call.store
    src = resolve(call, body.get("source"))
    if "dedupe_name" not in body and "change_name" not in body:
        body = {**body, "dedupe_name": default_dedupe}
    dest, name, existing = _target(call, body, src, copy=True)
    size = store.subtree_size(src)
    check_quota(call, dest["owner_id"], size - (store.subtree_size(existing) if existing is not None else 0))
    overwritten = None
    if existing is not None:
        store.delete_tree(existing)
        overwritten = legacy(call, existing, full=True)
    copied = store.copy_tree(src, dest, name, dest["owner_id"])
    bump(call, dest["owner_id"])
    return copied, existing, overwritten


@route("POST", "/copy")
async def copy(call: Call) -> Response:
    copied, _, overwritten = copy_body(call, call.body, default_dedupe=False)
    changed(call, "item.added", copied)
    item: dict[str, Any] = {"copied": legacy(call, copied, full=True)}
    if overwritten is not None:
        item["overwritten"] = overwritten
    return JSONResponse([item])


@route("POST", "/fs/copy")
async def fs_copy(call: Call) -> Response:
    copied, _, _ = copy_body(call, call.body, default_dedupe=True)
    changed(call, "item.added", copied, v2_route=True)
    return JSONResponse(v2(call, copied))


def do_delete(call: Call, e: Row, recursive: bool, descendants_only: bool = False) -> None:
    store = call.store
    if e["is_dir"] and not recursive and store.has_children(e):
        raise ApiError(409, "conflict", "Directory is not empty")
    # Deleting the home is accepted by the real server (and breaks the account); so here.
    store.delete_tree(e, descendants_only=descendants_only)
    bump(call, e["owner_id"])


def _delete_announced(call: Call, e: Row, recursive: bool, descendants_only: bool, *, v2_route: bool = False) -> None:
    """One item.removed for the entry itself, none for its descendants (recorded)."""
    do_delete(call, e, recursive, descendants_only)
    if v2_route:
        changed(call, "item.removed", e, v2_route=True, raw=True, descendants_only=descendants_only)
    else:
        changed(call, "item.removed", e, descendants_only=descendants_only)


@route("POST", "/delete")
async def delete(call: Call) -> Response:
    body = call.body
    recursive = flag(body, "recursive", default=True)
    descendants_only = flag(body, "descendants_only")
    paths = body.get("paths")
    if isinstance(paths, list):
        removed = []
        for p in paths:  # not atomic: stops at the first missing path (recorded)
            e = resolve(call, p, write=True)
            removed.append(legacy(call, e))
            _delete_announced(call, e, recursive, descendants_only)
        return JSONResponse(removed)
    e = resolve(call, body, write=True)
    uid = e["uid"]
    _delete_announced(call, e, recursive, descendants_only)
    return JSONResponse({"ok": True, "uid": uid})


@route("POST", "/fs/delete")
async def fs_delete(call: Call) -> Response:
    body = call.body
    e = resolve(call, body, write=True)
    _delete_announced(call, e, flag(body, "recursive", default=False), flag(body, "descendants_only"),
                      v2_route=True)
    return JSONResponse({"ok": True})


# --- df / search / sign / change timestamp -------------------------------------------------


@route("GET,POST", "/df")
async def df(call: Call) -> Response:
    used = call.store.used(call.me.user["id"])
    cap = call.emu.capacity
    if cap is None:
        cap = used + shutil.disk_usage(call.emu.data_dir).free
    return JSONResponse({"used": used, "capacity": cap})


@route("POST", "/search")
async def search(call: Call) -> Response:
    text = call.body.get("query", call.body.get("text"))
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "bad_request", "`query` is required")
    rows = [r for r in call.store.search(call.me.user["id"], text) if can_see(call, r)]
    return JSONResponse([legacy(call, r) for r in rows])


def _signature(call: Call, uid: str, action: str, expires: int) -> str:
    msg = f"{uid}/{action}/{expires}".encode()
    return hmac.new(call.store.secret, msg, hashlib.sha256).hexdigest()


def _signed(call: Call, e: Row, ttl: int = SIGN_EXPIRY_OFFSET, write: bool = True) -> dict[str, Any]:
    """fileSigning.ts signFile: the signed URLs of an entry (the child of a signed listing has
    no write_url: its signer only proved read access)."""
    base = call.base_url()
    expires = now_s() + ttl
    rsig = _signature(call, e["uid"], "read", expires)
    q = f"uid={e['uid']}&expires={expires}&signature="
    out: dict[str, Any] = {
        "uid": e["uid"],
        "expires": expires,
        "signature": rsig,
        "url": f"{base}/file?{q}{rsig}",
        "read_url": f"{base}/file?{q}{rsig}",
    }
    if write:
        out["write_url"] = f"{base}/writeFile?{q}{_signature(call, e['uid'], 'write', expires)}"
    out.update({
        "metadata_url": f"{base}/itemMetadata?{q}{rsig}",
        "fsentry_type": "folder" if e["is_dir"] else mime_for(e["name"], charset=False),
        "fsentry_is_dir": bool(e["is_dir"]),
        "fsentry_name": e["name"],
        "fsentry_size": e["size"],
        "fsentry_accessed": e["accessed"],
        "fsentry_modified": e["modified"],
        "fsentry_created": e["created"],
        "path": _path_of(e),
    })
    return out


@route("POST", "/sign")
async def sign(call: Call) -> Response:
    items = call.body.get("items")
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise ApiError(400, "bad_request", "`items` is required")
    out: list[dict[str, Any]] = []
    for item in items:
        try:
            e = resolve(call, item)
        except ApiError:
            out.append({})  # unresolvable item: an empty slot
            continue
        out.append(_signed(call, e))
    return JSONResponse({"signatures": out})


NON_OWNER_SIGNATURE_TTL = 3600  # fileSigning.ts: the children of a signed listing


def _signed_entry(call: Call, action: str) -> Row:
    """fileSigning.ts verifySignature, then the entry (LegacyFSController ``file``): every
    refusal of the signature is a 403 ``forbidden``; a write signature also reads."""
    q = call.request.query_params
    uid, sig = q.get("uid", ""), q.get("signature", "")
    if not uid:
        raise ApiError(403, "forbidden", "`uid` is required for signature-based auth")
    if not sig:
        raise ApiError(403, "forbidden", "`signature` is required for signature-based auth")
    try:
        expires = float(q.get("expires", "").strip() or 0)  # JS Number(""): 0
    except ValueError:
        expires = math.nan
    if not math.isfinite(expires):
        raise ApiError(403, "forbidden", "`expires` is required for signature-based auth")
    if expires < now_s():
        raise ApiError(403, "forbidden", "Authentication failed. Signature expired.")
    stamp = int(expires) if expires.is_integer() else expires
    if not any(hmac.compare_digest(_signature(call, uid, a, stamp), sig) for a in ("write", action)):
        raise ApiError(403, "forbidden", "Authentication failed")
    e = call.store.by_uid(uid)
    if e is None:
        raise ApiError(404, "subject_does_not_exist", f"Entry not found: uuid={uid}")
    owner = call.store.user_by_id(e["owner_id"])
    if owner is not None and owner["suspended"]:
        # a signature minted before a suspension must not keep serving the owner's files
        raise ApiError(401, "account_suspended", "Account suspended")
    return e


@route("GET", "/file", auth="none")
async def signed_file(call: Call) -> Response:
    e = _signed_entry(call, "read")
    if e["is_dir"]:
        # a signed listing of the direct children, each signed for read only, for an hour
        kids = call.store.children(e)
        return JSONResponse([_signed(call, k, NON_OWNER_SIGNATURE_TTL, write=False) for k in kids])
    return serve_file(call, e, mime_for(e["name"], charset=False) or "application/octet-stream")


@route("GET,POST", "/itemMetadata", auth="none")
async def item_metadata(call: Call) -> Response:
    raise ApiError(410, "gone", "This endpoint is no longer available")


@route("GET", "/cache/last-change-timestamp", auth="user")
async def last_change(call: Call) -> Response:
    row = call.store.user_by_id(call.me.user["id"])
    return JSONResponse({"timestamp": row["change_ts"] if row else 0})
