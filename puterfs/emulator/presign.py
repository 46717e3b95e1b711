"""Presigned uploads (RECORDED-2.md §1, presign.jsonl) and the storage URLs they hand out.

``/fs/startWrite`` opens an upload session and answers with storage URLs; the client
PUTs the bytes there (no Puter auth, exactly the signed ``Content-Length``) and then
calls ``/fs/completeWrite`` to create the entry.  The storage side is served by the
emulator itself under ``/puter-local/<objectKey>`` on whatever host the client used,
like the in-process S3 store of a self-hosted server, but strict where real S3 is:
the signature, the signed length and the expiry are enforced (403 with an S3 XML
error), which the recording server's fauxqs did not do.

Mirrored on purpose (recorded):

- the object key of an overwrite session is the existing file's uid, so a PUT replaces
  the live bytes at once and an abort afterwards deletes them (the entry then reads
  404 "File contents are missing" once and disappears);
- completion trusts the client: without a PUT the entry gets the declared size and no
  bytes; a single-mode URL stays writable after completion;
- above 10 MiB the upload is multipart in parts of max(10 MiB, requested) bytes; the
  entry's ETag is then the S3 multipart ETag ``"<md5 of the part md5s>-<n>"``;
- sessions live until ``expiresAt`` and are then gone (404 "Upload session was not
  found"), their parts deleted; a failed completion leaves the session ``failed``.

Bytes are streamed to files (parts under ``DATA/uploads/<multipartUploadId>/``), never
held in memory.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import math
import os
import secrets
import shutil
import sqlite3
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from puterfs.emulator.app import Call, JSONResponse, route
from puterfs.emulator.errors import ApiError
from puterfs.emulator.routes_fs import (
    bump,
    changed,
    check_access,
    check_name,
    check_quota,
    ensure_dir,
    flag,
    norm_path,
    v2,
)
from puterfs.emulator.sockets import announce, echo_ids
from puterfs.emulator.store import dedupe, split_path

Row = sqlite3.Row

BUCKET = "puter-local"
MAX_SINGLE = 10 * 1024 * 1024  # fauxqs maxSingleUploadSize: above this, multipart
MIN_PART = 10 * 1024 * 1024  # part size floor on a self-host (requested sizes may only raise it)
DEFAULT_PART_REQUEST = 5 * 1024 * 1024
S3_MIN_PART = 5 * 1024 * 1024  # every part but the last (CompleteMultipartUpload EntityTooSmall)
MAX_PARTS = 10_000
DEFAULT_EXPIRY = 900
MIN_EXPIRY, MAX_EXPIRY = 60, 3600
CHUNK = 256 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS upload_sessions (
    id TEXT PRIMARY KEY,
    owner_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    data TEXT NOT NULL
);
"""


# --- session storage ------------------------------------------------------------------------


def _db(call: Call) -> sqlite3.Connection:
    db = call.store.db
    if not getattr(call.emu, "_upload_schema", False):
        db.executescript(_SCHEMA)
        call.emu._upload_schema = True  # type: ignore[attr-defined]
    return db


def _uploads_dir(call: Call) -> Path:
    d = call.store.data_dir / "uploads"
    d.mkdir(exist_ok=True)
    return d


def _now_ms(call: Call) -> int:
    return int(call.emu.now() * 1000)


def _expire(call: Call) -> None:
    """Drop every pending session past its expiry (the KV TTL of the real server)."""
    db = _db(call)
    rows = db.execute("SELECT id, data FROM upload_sessions WHERE expires_at <= ?", (_now_ms(call),)).fetchall()
    for row in rows:
        data = json.loads(row["data"])
        _discard_parts(call, data)
        if data.get("status") == "pending" and not data.get("overwrite_uid"):
            # the object a new-file session may have received: nothing will ever own it
            if call.store.by_uid(data["object_key"]) is None:
                call.store.blob_path(data["object_key"]).unlink(missing_ok=True)
        db.execute("DELETE FROM upload_sessions WHERE id=?", (row["id"],))


def _load(call: Call, upload_id: Any) -> dict[str, Any]:
    _expire(call)
    if not isinstance(upload_id, str) or not upload_id:
        raise ApiError(404, "not_found", "Upload session was not found")
    row = _db(call).execute("SELECT data FROM upload_sessions WHERE id=?", (upload_id,)).fetchone()
    if row is None:
        raise ApiError(404, "not_found", "Upload session was not found")
    data = json.loads(row["data"])
    if data["owner_id"] != call.me.user["id"]:
        raise ApiError(403, "forbidden", "Upload session access denied")
    return data


def _save(call: Call, data: dict[str, Any]) -> None:
    _db(call).execute(
        "INSERT OR REPLACE INTO upload_sessions(id, owner_id, status, expires_at, data) VALUES (?,?,?,?,?)",
        (data["id"], data["owner_id"], data["status"], data["expires_at"], json.dumps(data)),
    )


def _set_status(call: Call, data: dict[str, Any], status: str) -> None:
    data["status"] = status
    _save(call, data)


def _discard_parts(call: Call, data: dict[str, Any]) -> None:
    mp = data.get("multipart_upload_id")
    if mp:
        shutil.rmtree(_uploads_dir(call) / mp, ignore_errors=True)


def multipart_upload_exists(emu: Any, upload_id: str) -> bool:
    return (Path(emu.store.data_dir) / "uploads" / upload_id).is_dir()


# --- signing --------------------------------------------------------------------------------


def _sig(secret: bytes, key: str, part: int | None, mp_id: str | None, date: str, expires: int, length: int) -> str:
    msg = f"PUT\n{BUCKET}/{key}\n{part or ''}\n{mp_id or ''}\n{date}\n{expires}\n{length}"
    return hmac.new(secret, msg.encode(), hashlib.sha256).hexdigest()


def _url(call: Call, key: str, length: int, expires_in: int, part: int | None = None,
         mp_id: str | None = None) -> str:
    signed_at = call.emu.now()
    date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
    day = date[:8]
    sig = _sig(call.store.secret, key, part, mp_id, date, expires_in, length)
    q = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
        ("X-Amz-Credential", f"puterfsEmulator/{day}/us-west-2/s3/aws4_request"),
        ("X-Amz-Date", date),
        ("X-Amz-Expires", str(expires_in)),
        ("X-Amz-Signature", sig),
        ("X-Amz-SignedHeaders", "content-length;host"),
    ]
    if part is not None:
        q += [("partNumber", str(part)), ("uploadId", str(mp_id))]
    q += [("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-sdk-checksum-algorithm", "CRC32"),
          ("x-id", "UploadPart" if part is not None else "PutObject")]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in q)
    return f"{call.base_url()}/{BUCKET}/{key}?{query}"


def _part_length(data: dict[str, Any], n: int) -> int:
    size, psize = data["size"], data["part_size"]
    if data["part_count"] == 1:
        return size
    return psize if n < data["part_count"] else size - psize * (data["part_count"] - 1)


def _part_urls(call: Call, data: dict[str, Any], numbers: list[int], expires_in: int) -> list[dict[str, Any]]:
    return [{"partNumber": n, "url": _url(call, data["object_key"], _part_length(data, n), expires_in, n,
                                          data["multipart_upload_id"])} for n in numbers]


# --- startWrite -----------------------------------------------------------------------------


def _expires_in(body: dict[str, Any]) -> int:
    raw = body.get("expiresInSeconds")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return int(min(MAX_EXPIRY, max(MIN_EXPIRY, raw)))
    return DEFAULT_EXPIRY


def _plan(call: Call, req: Any) -> dict[str, Any]:
    """Validate one startWrite request against the current tree (no side effects)."""
    if not isinstance(req, dict):
        raise ApiError(400, "bad_request", "Missing path")
    meta = req.get("fileMetadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("path"), str) or not meta.get("path"):
        raise ApiError(400, "bad_request", "Missing path")
    npath = norm_path(call, meta["path"])
    if npath == "/":
        raise ApiError(400, "cannot_write_to_root", "Cannot write to root path")
    if npath.split("/")[1] != call.me.username:
        raise ApiError(404, "subject_does_not_exist", "Subject does not exist")
    create = flag(meta, "createMissingParents", "create_missing_parents")
    store = call.store
    if flag(req, "directory"):
        e = store.by_path(npath)
        if e is None and not create:
            raise ApiError(404, "not_found", f"Directory path does not exist: {npath}")
        if e is not None and not e["is_dir"]:
            raise ApiError(409, "conflict", f"Path is not a directory: {npath}")
        return {"directory": True, "path": npath, "create": create}
    size = meta.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ApiError(400, "bad_request", "Invalid file size")
    parent_path, name = split_path(npath)
    check_name(name)
    parent = store.by_path(parent_path)
    if parent is not None:
        check_access(call, parent, parent_path, write=True)
        if not parent["is_dir"]:
            raise ApiError(409, "conflict", f"Path is not a directory: {parent['path']}")
    else:
        if not create:
            raise ApiError(404, "not_found", f"Parent path does not exist: {parent_path}")
        _check_chain(call, parent_path)
    existing = store.child(parent, name) if parent is not None else None
    overwrite_uid = None
    if existing is not None:
        if existing["is_dir"]:
            raise ApiError(409, "cannot_overwrite_a_directory", "Cannot overwrite an existing directory")
        if flag(meta, "overwrite"):
            overwrite_uid = existing["uid"]
        elif flag(meta, "dedupeName"):
            assert parent is not None
            name = dedupe(name, lambda n: store.child(parent, n) is not None)
        else:
            raise ApiError(409, "item_with_same_name_exists",
                           "A file already exists at this path and overwrite was not requested", entry_name=name)
    check_quota(call, call.me.user["id"], size - (existing["size"] if overwrite_uid else 0))
    ctype = meta.get("contentType") if isinstance(meta.get("contentType"), str) and meta.get("contentType") \
        else "application/octet-stream"
    extra = meta.get("metadata") if isinstance(meta.get("metadata"), dict) else {}
    metadata = {k: v for k, v in extra.items() if k != "objectKey"}
    metadata["contentType"] = ctype
    requested = meta.get("multipartPartSize")
    if not isinstance(requested, int) or isinstance(requested, bool) or requested <= 0:
        requested = DEFAULT_PART_REQUEST
    multipart = req.get("uploadMode") == "multipart" or size > MAX_SINGLE
    return {
        "directory": False, "path": join_path(parent_path, name), "parent_path": parent_path, "name": name,
        "create": create, "size": size, "content_type": ctype, "metadata": metadata,
        "overwrite_uid": overwrite_uid, "multipart": multipart, "part_size": max(MIN_PART, requested),
    }


def join_path(parent: str, name: str) -> str:
    return ("" if parent == "/" else parent) + "/" + name


def _check_chain(call: Call, dir_path: str) -> None:
    """For createMissingParents: a file anywhere in the existing part of the chain is a 409."""
    comps = dir_path.strip("/").split("/")
    cur = ""
    for comp in comps:
        cur += "/" + comp
        e = call.store.by_path(cur)
        if e is None:
            return
        if not e["is_dir"]:
            raise ApiError(409, "conflict", f"Path is not a directory: {e['path']}")


def _v2_ready(call: Call, e: Row) -> dict[str, Any]:
    return v2(call, e)


def _open(call: Call, plan: dict[str, Any], expires_in: int) -> dict[str, Any]:
    """Carry out a validated plan: directories now, an upload session otherwise."""
    expires_at = _now_ms(call) + expires_in * 1000
    store = call.store
    if plan["directory"]:
        e = store.by_path(plan["path"])
        created = e is None
        if e is None:
            e = ensure_dir(call, plan["path"], True)
            bump(call)
        return {"sessionId": "", "uploadMode": "single", "contentType": "inode/directory", "expiresAt": expires_at,
                "directoryCreated": created, "fsEntry": v2(call, e)}
    if plan["create"] and store.by_path(plan["parent_path"]) is None:
        ensure_dir(call, plan["parent_path"], True)  # created at start, kept after an abort (recorded)
    data: dict[str, Any] = {
        "id": str(uuidlib.uuid4()),
        "owner_id": call.me.user["id"],
        "status": "pending",
        "expires_at": expires_at,
        "path": plan["path"],
        "parent_path": plan["parent_path"],
        "name": plan["name"],
        "size": plan["size"],
        "content_type": plan["content_type"],
        "metadata": plan["metadata"],
        "overwrite_uid": plan["overwrite_uid"],
        "object_key": plan["overwrite_uid"] or str(uuidlib.uuid4()),
        "mode": "multipart" if plan["multipart"] else "single",
    }
    out: dict[str, Any] = {"sessionId": data["id"], "uploadMode": data["mode"], "contentType": data["content_type"],
                           "expiresAt": expires_at}
    if plan["multipart"]:
        psize = plan["part_size"]
        count = max(1, math.ceil(plan["size"] / psize))
        if count > MAX_PARTS:
            raise ApiError(400, "bad_request", "Too many parts for multipart upload")
        data.update(multipart_upload_id=str(uuidlib.uuid4()), part_size=psize, part_count=count)
        (_uploads_dir(call) / data["multipart_upload_id"]).mkdir()
        out.update(multipartUploadId=data["multipart_upload_id"], multipartPartSize=psize, multipartPartCount=count,
                   multipartPartUrls=_part_urls(call, data, list(range(1, count + 1)), expires_in))
    else:
        out["url"] = _url(call, data["object_key"], plan["size"], expires_in)
    _save(call, data)
    bump(call)  # the item.pending event moves the change timestamp (fs-extra.jsonl)
    key = data["object_key"]
    announce(call, "item.pending", {"id": key, "uid": key, "uuid": key, "path": data["path"], "name": data["name"],
                                    "is_dir": False, "content_type": data["content_type"], "size": data["size"],
                                    "upload_id": data["id"], "pending_upload": True, "status": "pending"},
             data["owner_id"], echo=echo_ids(call.body))
    return out


@route("POST", "/fs/startWrite")
async def start_write(call: Call) -> Response:
    _expire(call)
    plan = _plan(call, call.body)
    return JSONResponse(_open(call, plan, _expires_in(call.body)))


@route("POST", "/fs/startBatchWrite")
async def start_batch_write(call: Call) -> Response:
    _expire(call)
    items = call.body.get("$")
    if not isinstance(items, list):
        return JSONResponse([])  # a non-array body is silently an empty batch (recorded)
    plans = [_plan(call, item) for item in items]  # all-or-nothing: validate everything first
    seen: set[str] = set()
    for plan in plans:
        if plan["path"] in seen:
            raise ApiError(409, "conflict", f"Batch contains duplicate target path: {plan['path']}")
        seen.add(plan["path"])
    return JSONResponse([_open(call, plan, _expires_in(item)) for plan, item in zip(plans, items, strict=True)])


# --- signMultipartParts ---------------------------------------------------------------------


@route("POST", "/fs/signMultipartParts")
async def sign_parts(call: Call) -> Response:
    data = _load(call, call.body.get("uploadId"))
    if data["mode"] != "multipart":
        raise ApiError(400, "bad_request", "Upload session is not multipart")
    if data["status"] != "pending":
        raise ApiError(409, "conflict", f"Upload session is not pending (status={data['status']})")
    numbers = call.body.get("partNumbers")
    if numbers is None or numbers == []:
        raise ApiError(400, "bad_request", "Missing partNumbers")
    if not isinstance(numbers, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                                for n in numbers):
        raise ApiError(400, "bad_request", "Invalid partNumbers")
    if any(n > data["part_count"] for n in numbers):
        raise ApiError(400, "bad_request", "Part number exceeds multipart part count")
    expires_in = _expires_in(call.body)
    data["expires_at"] = max(data["expires_at"], _now_ms(call) + expires_in * 1000)
    _save(call, data)
    return JSONResponse({"uploadId": data["id"], "multipartUploadId": data["multipart_upload_id"],
                         "expiresAt": data["expires_at"],
                         "multipartPartUrls": _part_urls(call, data, list(numbers), expires_in)})


# --- completeWrite --------------------------------------------------------------------------


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _assemble(call: Call, data: dict[str, Any], parts: Any) -> tuple[Path, int, str]:
    """CompleteMultipartUpload: the listed parts, in order, into one temp file."""
    internal = ApiError(500, "internal_error", "Internal Server Error")
    if not isinstance(parts, list) or not parts:
        raise ApiError(400, "bad_request", "Multipart upload completion requires parts")
    pdir = _uploads_dir(call) / data["multipart_upload_id"]
    chosen: list[tuple[Path, str]] = []
    last = 0
    for p in parts:
        if not isinstance(p, dict):
            raise internal
        n, etag = p.get("partNumber"), p.get("etag")
        if not isinstance(n, int) or isinstance(n, bool) or n <= last or not isinstance(etag, str):
            raise internal  # InvalidPartOrder / malformed
        last = n
        path = pdir / str(n)
        meta = pdir / f"{n}.etag"
        if not path.exists() or not meta.exists() or meta.read_text().strip('"') != etag.strip().strip('"'):
            raise internal  # InvalidPart (an unmapped S3 error: 500)
        chosen.append((path, meta.read_text().strip('"')))
    for path, _ in chosen[:-1]:
        if path.stat().st_size < S3_MIN_PART:
            raise internal  # EntityTooSmall
    tmp = call.store.new_tmp()
    digests = b""
    size = 0
    with open(tmp, "wb") as out:
        for path, md5 in chosen:
            with open(path, "rb") as fh:
                shutil.copyfileobj(fh, out, CHUNK * 4)
            size += path.stat().st_size
            digests += bytes.fromhex(md5)
    return tmp, size, f"{hashlib.md5(digests).hexdigest()}-{len(chosen)}"


def _complete(call: Call, data: dict[str, Any], parts: Any,
              assembled: tuple[Path, int, str] | None = None) -> dict[str, Any]:
    if data["status"] != "pending":
        raise ApiError(409, "conflict", f"Upload session is not pending (status={data['status']})")
    store = call.store
    try:
        blob = store.blob_path(data["object_key"])
        if data["mode"] == "multipart":
            tmp, size, md5 = assembled if assembled is not None else _assemble(call, data, parts)
            blob.parent.mkdir(exist_ok=True)
            os.replace(tmp, blob)
            _discard_parts(call, data)
            md5_value: str | None = md5
        elif blob.exists():  # the size is reconciled with a HEAD of the object
            size, md5_value = blob.stat().st_size, _file_md5(blob)
        else:  # no PUT at all: the declared size, no bytes (recorded)
            size, md5_value = data["size"], None
        parent = store.by_path(data["parent_path"])
        if parent is None or not parent["is_dir"]:
            raise ApiError(404, "not_found", f"Parent path does not exist: {data['parent_path']}")
        metadata = json.dumps(data["metadata"], separators=(",", ":"))
        existing = store.child(parent, data["name"])
        if data["overwrite_uid"] and existing is not None and existing["uid"] == data["overwrite_uid"]:
            ts = int(call.emu.now())
            store.db.execute("UPDATE entries SET size=?, md5=?, metadata=?, modified=?, accessed=? WHERE id=?",
                             (size, md5_value, metadata, ts, ts, existing["id"]))
            row = store.by_id(existing["id"])
            was = True
        else:
            if existing is not None:
                raise ApiError(409, "item_with_same_name_exists",
                               "A file already exists at this path and overwrite was not requested",
                               entry_name=data["name"])
            row = store.add_file(parent, data["name"], parent["owner_id"], data["object_key"], size, md5_value,
                                 metadata)
            was = False
    except ApiError:
        _set_status(call, data, "failed")
        raise
    assert row is not None
    _set_status(call, data, "completed")
    bump(call, row["owner_id"])
    changed(call, "item.updated" if was else "item.added", row, v2_route=True)
    return {"sessionId": data["id"], "fsEntry": v2(call, row), "wasOverwrite": was, "requestedThumbnail": None}


@route("POST", "/fs/completeWrite")
async def complete_write(call: Call) -> Response:
    data = _load(call, call.body.get("uploadId"))
    return JSONResponse(_complete(call, data, call.body.get("parts")))


@route("POST", "/fs/completeBatchWrite")
async def complete_batch_write(call: Call) -> Response:
    items = call.body.get("$")
    if not isinstance(items, list):
        return JSONResponse([])
    ids = [item.get("uploadId") if isinstance(item, dict) else None for item in items]
    if len(set(map(str, ids))) != len(ids):
        raise ApiError(409, "conflict", "Batch contains duplicate upload session ids")
    sessions = [_load(call, uid) for uid in ids]
    for data in sessions:  # all-or-nothing on the session states
        if data["status"] != "pending":
            raise ApiError(409, "conflict", f"Upload session is not pending (status={data['status']})")
    # The server completes every multipart upload in storage first (all settled) and makes
    # entries only if all of them succeeded: one bad part list fails the whole request and
    # creates nothing. The failed sessions are marked failed; the others stay pending, but
    # their storage uploads were completed (their parts are gone: assumed, the strict way).
    assembled: dict[int, tuple[Path, int, str]] = {}
    failures: list[ApiError] = []
    for k, (data, item) in enumerate(zip(sessions, items, strict=True)):
        if data["mode"] != "multipart":
            continue
        try:
            assembled[k] = _assemble(call, data, item.get("parts"))
        except ApiError as exc:
            _set_status(call, data, "failed")
            failures.append(exc)
    if failures:
        for k, (tmp, _, _) in assembled.items():
            blob = call.store.blob_path(sessions[k]["object_key"])
            blob.parent.mkdir(exist_ok=True)
            os.replace(tmp, blob)
            _discard_parts(call, sessions[k])
        raise failures[0]
    return JSONResponse([_complete(call, data, item.get("parts"), assembled.get(k))
                         for k, (data, item) in enumerate(zip(sessions, items, strict=True))])


# --- abortWrite -----------------------------------------------------------------------------


@route("POST", "/fs/abortWrite")
async def abort_write(call: Call) -> Response:
    upload_id = call.body.get("uploadId")
    if not isinstance(upload_id, str) or not upload_id:
        raise ApiError(400, "bad_request", "Missing uploadId")
    try:
        data = _load(call, upload_id)
    except ApiError as exc:
        if exc.status == 404:
            return JSONResponse({"ok": True})  # unknown sessions are silently accepted (recorded)
        raise
    if data["status"] == "pending":
        if data["mode"] == "multipart":
            _discard_parts(call, data)
        else:
            # DeleteObject at the session's key: for an overwrite session that is the live
            # file's own object (recorded danger, mirrored)
            call.store.blob_path(data["object_key"]).unlink(missing_ok=True)
        _set_status(call, data, "aborted")
    return JSONResponse({"ok": True})


# --- the storage side (S3 PutObject / UploadPart on presigned URLs) -----------------------


def _s3_error(status: int, code: str, message: str) -> Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>")
    return Response(body.encode(), status_code=status, media_type="application/xml")


@route("PUT", f"/{BUCKET}/", host="storage", auth="none", body="raw", prefix=True)
async def storage_put(call: Call) -> Response:
    request = call.request
    key = request.url.path[len(BUCKET) + 2:]
    q = request.query_params
    part_raw, mp_id = q.get("partNumber"), q.get("uploadId")
    part = int(part_raw) if part_raw and part_raw.isdigit() else None
    date, expires_raw, sig = q.get("X-Amz-Date", ""), q.get("X-Amz-Expires", ""), q.get("X-Amz-Signature", "")
    length_raw = request.headers.get("content-length")
    if not key or "/" in key or not date or not expires_raw.isdigit() or not sig:
        return _s3_error(403, "AccessDenied", "Query-string authentication requires the Signature, Expires and "
                                              "Credential parameters")
    if length_raw is None or not length_raw.isdigit():
        return _s3_error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
    length = int(length_raw)
    want = _sig(call.store.secret, key, part, mp_id, date, int(expires_raw), length)
    if not hmac.compare_digest(want, sig):
        # the length is a signed header: a PUT of another size does not match the signature
        return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                                                        "signature you provided.")
    try:
        signed_at = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return _s3_error(403, "AccessDenied", "X-Amz-Date is not valid")
    if call.emu.now() > signed_at + int(expires_raw):
        return _s3_error(403, "AccessDenied", "Request has expired")
    if part is not None:
        pdir = Path(call.store.data_dir) / "uploads" / str(mp_id)
        if not pdir.is_dir():
            return _s3_error(404, "NoSuchUpload", "The specified multipart upload does not exist.")
    tmp = call.store.new_tmp()
    h = hashlib.md5()
    got = 0
    try:
        with open(tmp, "wb") as out:
            async for chunk in request.stream():
                if not chunk:
                    continue
                got += len(chunk)
                if got > length:
                    break
                h.update(chunk)
                out.write(chunk)
        if got != length:
            tmp.unlink(missing_ok=True)
            return _s3_error(400, "IncompleteBody", "You did not provide the number of bytes specified by the "
                                                    "Content-Length HTTP header.")
        md5 = h.hexdigest()
        if part is not None:
            pdir = Path(call.store.data_dir) / "uploads" / str(mp_id)
            if not pdir.is_dir():  # aborted or completed while we were receiving
                tmp.unlink(missing_ok=True)
                return _s3_error(404, "NoSuchUpload", "The specified multipart upload does not exist.")
            os.replace(tmp, pdir / str(part))
            (pdir / f"{part}.etag").write_text(md5)
        else:
            dest = call.store.blob_path(key)
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)  # an overwrite session's key is the live file: replaced now
            row = call.store.by_uid(key)
            if row is not None:  # a completed entry keeps its recorded size; only the ETag source moves
                call.store.db.execute("UPDATE entries SET md5=? WHERE id=?", (md5, row["id"]))
    finally:
        tmp.unlink(missing_ok=True)
    return Response(b"", status_code=200, headers={
        "ETag": f'"{md5}"', "x-amz-request-id": secrets.token_hex(8).upper(), "x-amz-id-2": "puterfs-emulator",
    })
