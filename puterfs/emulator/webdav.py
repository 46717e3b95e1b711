"""WebDAV on ``dav.<domain>`` as the 26.07 server serves it (RECORDED-2.md §6, webdav.jsonl).

- Every path is ``/<user>/…``; ``/`` is a virtual collection holding the caller's home.
  Another user's tree is 403 "Permission denied".
- Auth on every verb except a CORS preflight: Basic ``user:password`` (with 2FA the 6-digit
  code appended to the password), Basic ``-token:<token>`` (GUI or full-api-access token) or
  ``Authorization: Bearer``.  Failures are 401 + ``WWW-Authenticate: Basic realm="WebDAV"``.
- The rate limit scope ``dav`` (ratelimit.DAV: 600 per 60 s per fingerprint, 10 in flight)
  runs before auth, as on the server.
- Errors are plain text (``text/html``).  PROPFIND answers a fixed property set (the request
  body is ignored), Depth defaults to 1 and ``infinity`` is 1.  PUT creates missing parent
  collections and trims trailing whitespace from the name; ``._*``/``.DS_Store`` are 422.
- LOCK is always exclusive (the body is not parsed) and a lock silently expires after 30 s
  although the answer says ``Second-7200``; PROPPATCH is a stub that stores nothing.

Every change goes through the same helpers as the HTTP FS routes (routes_fs: do_mkdir,
store_upload, move_body, copy_body, do_delete, changed), so quota, change timestamps and
socket events are the same as for /mkdir, /fs/write, /move, /copy and /delete.

The multistatus bodies are written from templates (the server's exact layout mixes
``<D:x/>`` and ``<D:x></D:x>``, which ElementTree cannot serialise); text is escaped with
``xml.sax.saxutils``.  Request bodies are never parsed, as on the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from puterfs.emulator.auth import check_password, totp_verify
from puterfs.emulator.errors import ApiError
from puterfs.emulator.ratelimit import DAV, RateLimited, fingerprint
from puterfs.emulator.store import mime_for, split_path

if TYPE_CHECKING:
    from puterfs.emulator.app import Actor, Emulator

DAV_HEADERS = {"DAV": "1, 2, ordered-collections", "MS-Author-Via": "DAV"}
ALLOW = "OPTIONS, GET, HEAD, POST, PUT, DELETE, COPY, MOVE, MKCOL, PROPFIND, PROPPATCH, LOCK, UNLOCK, TRACE"
REALM = {"WWW-Authenticate": 'Basic realm="WebDAV"'}
LOCK_SECONDS = 30.0  # controllers/webdav/locks.ts: the advertised Second-7200 is not what is kept
XML_TYPE = "application/xml; charset=utf-8"
ROOT_DATE = 1735689600  # the virtual root's fixed times (2025-01-01)
MAC_JUNK = re.compile(r"^(\._.*|\.DS_Store)$")
_TOKEN_RE = re.compile(r"<(urn:uuid:[0-9a-fA-F-]+)>")
# encodeURI's unescaped set (the hrefs are built with it)
_HREF_SAFE = "/;,?:@&=+$-_.!~*'()#"


def is_dav_host(host_header: str, domain: str) -> bool:
    host = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else ""
    return host.lower() == f"dav.{domain}"


def text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(message, status_code=status, headers=headers, media_type="text/html")


@dataclass
class Lock:
    token: str
    path: str
    expires: float


class Locks:
    """The server's in-memory lock table: one exclusive lock per path."""

    def __init__(self, clock: Any):
        self.clock = clock
        self.by_path: dict[str, Lock] = {}

    def get(self, path: str) -> Lock | None:
        lock = self.by_path.get(path)
        if lock is not None and lock.expires <= self.clock():
            del self.by_path[path]
            return None
        return lock

    def by_token(self, token: str) -> Lock | None:
        for lock in list(self.by_path.values()):
            if lock.token == token:
                return self.get(lock.path)
        return None

    def check(self, path: str, request: Request) -> None:
        """423 unless ``path`` is unlocked or the request names its token in ``If``."""
        lock = self.get(path)
        if lock is not None and lock.token not in _TOKEN_RE.findall(request.headers.get("if", "")):
            raise _Answer(text(423, "Locked"))


class _Answer(Exception):  # noqa: N818 - control flow: a finished answer
    def __init__(self, response: Response):
        super().__init__()
        self.response = response


def locks_of(emu: Emulator) -> Locks:
    locks = getattr(emu, "dav_locks", None)
    if locks is None:
        locks = emu.dav_locks = Locks(emu.now)
    return locks


# --- entry point ----------------------------------------------------------------------------


async def handle(emu: Emulator, request: Request) -> Response:
    method = request.method
    release = _rate_limit(emu, request)
    if release is not None:
        request.scope["state"].setdefault("rl_release", []).append(release)
    if method == "OPTIONS" and "origin" in request.headers and "access-control-request-method" in request.headers:
        return Response(b"", headers={**DAV_HEADERS, "Allow": ALLOW, "Access-Control-Max-Age": "86400",
                                      "Access-Control-Allow-Origin": request.headers["origin"],
                                      "Access-Control-Allow-Methods": ALLOW,
                                      "Access-Control-Allow-Headers": request.headers.get(
                                          "access-control-request-headers", "*")})
    try:
        actor = _authenticate(emu, request)
        from puterfs.emulator.app import Call

        call = Call(emu, request, {}, actor)
        handler = HANDLERS.get(method)
        if handler is None:
            return text(405, "Method Not Allowed", {"Allow": ALLOW})
        return await handler(call, _request_path(request))
    except _Answer as ans:
        return ans.response
    except RateLimited:
        raise
    except ApiError as exc:  # a shared FS helper refused: the same status, as plain text
        return text(exc.status, exc.message)


def _rate_limit(emu: Emulator, request: Request) -> Any:
    tier = emu.limiter.tier_of(None)
    if tier is None:
        return None
    client = request.scope.get("client")
    ip = str(client[0]) if client else "127.0.0.1"
    fp = fingerprint(ip, request.headers)
    try:
        return emu.limiter.admit(DAV, tier, {"fingerprint": fp, "user": fp, "ip": ip})
    except RateLimited as exc:
        request.scope["state"]["log"]["ratelimit"] = {"scope": exc.scope, "kind": exc.kind}
        raise


def _authenticate(emu: Emulator, request: Request) -> Actor:
    auth = request.headers.get("authorization", "")
    if not auth.strip():
        raise _Answer(text(401, "Authentication required", {**DAV_HEADERS, **REALM}))
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer":
        return _token_actor(emu, value.strip())
    if scheme.lower() != "basic":
        raise _Answer(text(401, "Authentication required", {**DAV_HEADERS, **REALM}))
    try:
        user_name, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _Answer(text(401, "Invalid credentials", REALM)) from None
    if not sep:
        raise _Answer(text(401, "Invalid credentials", REALM))
    if user_name == "-token":
        return _token_actor(emu, password)
    from puterfs.emulator.app import Actor

    user = emu.store.user_by_name(user_name)
    if user is None or user["password"] is None:
        raise _Answer(text(401, "Invalid credentials", REALM))
    if user["otp_enabled"]:
        # the 6-digit code is appended to the password
        code, password = password[-6:], password[:-6]
        if not totp_verify(user["otp_secret"], code):
            raise _Answer(text(401, "Invalid credentials", REALM))
    if not check_password(password, user["password"]):
        raise _Answer(text(401, "Invalid credentials", REALM))
    return Actor(user=user, kind="gui", claims={}, token="")


def _token_actor(emu: Emulator, token: str) -> Actor:
    try:
        actor = emu.actor_for(token)
    except ApiError:
        raise _Answer(text(401, "Invalid token", REALM)) from None
    if actor.kind == "t" and not actor.full_access:
        raise _Answer(text(401, "Invalid token", REALM))
    return actor


def _request_path(request: Request) -> str:
    raw = request.scope.get("raw_path")
    path = unquote(raw.decode("latin-1").split("?", 1)[0]) if raw else request.url.path
    return _clean(path)


def _clean(path: str) -> str:
    comps = [c for c in path.split("/") if c not in ("", ".")]
    if ".." in comps:
        raise _Answer(text(400, "Bad Request"))
    return "/" + "/".join(comps)


def _owned(call: Any, path: str) -> None:
    """403 for anything outside the caller's home (the root itself is fine)."""
    if path != "/" and path.split("/")[1] != call.me.username:
        raise _Answer(text(403, "Permission denied"))


def _entry(call: Any, path: str) -> Any:
    from puterfs.emulator.routes_fs import norm_path

    return call.store.by_path(norm_path(call, path)) if path != "/" else None


# --- properties -----------------------------------------------------------------------------


def href_of(path: str, is_dir: bool) -> str:
    h = quote(path, safe=_HREF_SAFE)
    return h if not is_dir or h.endswith("/") else h + "/"


def etag_of(e: Any) -> str:
    return f'"{e["uid"]}-{int(e["modified"])}"'


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


_LOCKS_XML = (
    "        <D:supportedlock>\n"
    "          <D:lockentry><D:lockscope><D:exclusive/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>\n"
    "          <D:lockentry><D:lockscope><D:shared/></D:lockscope><D:locktype><D:write/></D:locktype></D:lockentry>\n"
    "        </D:supportedlock>\n"
    "        <D:lockdiscovery/>\n"
    "        <D:ishidden>0</D:ishidden>\n"
)


def _response_xml(href: str, name: str, modified: int, created: int, is_dir: bool, etag: str,
                  size: int | None = None, ctype: str | None = None) -> str:
    extra = ""
    if not is_dir:
        extra = (f"        <D:getcontentlength>{size}</D:getcontentlength>\n"
                 f"        <D:getcontenttype>{escape(ctype or 'application/octet-stream')}</D:getcontenttype>\n")
    return (
        "  <D:response>\n"
        f"    <D:href>{escape(href)}</D:href>\n"
        "    <D:propstat>\n"
        "      <D:prop>\n"
        f"        <D:displayname>{escape(name)}</D:displayname>\n"
        f"        <D:getlastmodified>{formatdate(modified, usegmt=True)}</D:getlastmodified>\n"
        f"        <D:creationdate>{_iso(created)}</D:creationdate>\n"
        f"        <D:resourcetype>{'<D:collection/>' if is_dir else ''}</D:resourcetype>\n"
        f"        <D:getetag>{escape(etag)}</D:getetag>\n"
        f"{_LOCKS_XML}{extra}"
        "      </D:prop>\n"
        "      <D:status>HTTP/1.1 200 OK</D:status>\n"
        "    </D:propstat>\n"
        "  </D:response>"
    )


def _entry_xml(e: Any) -> str:
    is_dir = bool(e["is_dir"])
    return _response_xml(href_of(e["path"], is_dir), e["name"], int(e["modified"]), int(e["created"]), is_dir,
                         etag_of(e), int(e["size"] or 0), mime_for(e["name"], charset=False))


def _multistatus(parts: list[str]) -> Response:
    body = '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">\n' + "\n".join(parts) + \
        "\n</D:multistatus>"
    return Response(body, status_code=207, media_type=XML_TYPE)


# --- verbs ----------------------------------------------------------------------------------


async def options(call: Any, path: str) -> Response:
    return Response(b"", media_type="text/plain", headers={
        **DAV_HEADERS, "Allow": ALLOW, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"})


async def propfind(call: Any, path: str) -> Response:
    depth = 0 if call.request.headers.get("depth", "1").strip() == "0" else 1  # infinity = 1
    _owned(call, path)
    if path == "/":
        parts = [_response_xml("/", "/", ROOT_DATE, ROOT_DATE, True, f'"root-{ROOT_DATE}"')]
        home = call.store.by_path("/" + call.me.username)
        if depth and home is not None:
            parts.append(_entry_xml(home))
        return _multistatus(parts)
    e = _entry(call, path)
    if e is None:
        return text(404, "Not Found")
    parts = [_entry_xml(e)]
    if depth and e["is_dir"]:
        kids = sorted(call.store.children(e), key=lambda r: r["name"])
        parts += [_entry_xml(k) for k in kids]
    return _multistatus(parts)


async def proppatch(call: Any, path: str) -> Response:
    _owned(call, path)
    if path != "/" and _entry(call, path) is None:
        return text(404, "Not Found")
    body = ('<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:"><D:response><D:href>'
            f"{escape(href_of(path, False))}</D:href><D:propstat><D:prop/><D:status>HTTP/1.1 200 OK</D:status>"
            "</D:propstat></D:response></D:multistatus>")
    return Response(body, status_code=207, media_type=XML_TYPE)


async def get(call: Any, path: str) -> Response:
    from puterfs.emulator.routes_fs import _file_chunks, _parse_range

    _owned(call, path)
    e = _entry(call, path) if path != "/" else None
    if path == "/" or (e is not None and e["is_dir"]):
        return text(400, "Cannot GET a directory")
    blob = call.store.blob_path(e["uid"]) if e is not None else None
    if e is None or e["shortcut_to"] is not None or (not blob.exists() and e["size"] > 0):
        return text(404, "Not Found")
    size = blob.stat().st_size if blob.exists() else 0
    headers = {"ETag": etag_of(e), "Last-Modified": formatdate(e["modified"], usegmt=True), "Accept-Ranges": "bytes"}
    status, start, length = 200, 0, size
    rng = call.request.headers.get("range")
    if rng is not None:
        try:
            start, end = _parse_range(rng, size)
        except ApiError:
            return text(500, "Internal Server Error", headers)
        length, status = end - start + 1, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(length)
    if call.request.method == "HEAD":
        return Response(b"", status_code=status, headers=headers)
    fh = call.store.open_blob(e)
    return StreamingResponse(_file_chunks(fh, start, length), status_code=status, headers=headers,
                             media_type="application/octet-stream")


async def put(call: Any, path: str) -> Response:
    from puterfs.emulator.routes_fs import changed, ensure_dir, store_upload

    _owned(call, path)
    parent_path, name = split_path(path)
    name = name.rstrip()  # WebDAV PUT trims trailing whitespace (README errata)
    if path == "/" or parent_path == "/" or not name:
        return text(403, "Cannot create at root")
    if MAC_JUNK.match(name):
        return text(422, "Ignored macOS metadata file")
    target = parent_path.rstrip("/") + "/" + name
    locks_of(call.emu).check(target, call.request)
    existing = call.store.by_path(target)
    if existing is not None and existing["is_dir"]:
        return text(405, "Cannot PUT to a directory")
    tmp = call.store.new_tmp()
    try:
        md5, size = hashlib.md5(), 0
        with tmp.open("wb") as fh:
            async for chunk in call.request.stream():
                fh.write(chunk)
                md5.update(chunk)
                size += len(chunk)
        parent = ensure_dir(call, parent_path, True)  # PUT creates missing parent collections
        row, was = store_upload(call, parent, name, tmp, size, md5.hexdigest(), "application/octet-stream",
                                overwrite=True, dedupe_name=False)
    finally:
        tmp.unlink(missing_ok=True)
    changed(call, "item.updated" if was else "item.added", row)
    return Response(b"", status_code=204 if was else 201,
                    headers={"ETag": etag_of(row), "Last-Modified": formatdate(row["modified"], usegmt=True)})


async def mkcol(call: Any, path: str) -> Response:
    from puterfs.emulator.routes_fs import changed, do_mkdir

    if path == "/" or len(path.split("/")) == 2:
        _owned(call, path)
        return text(403, "Cannot create at root")
    _owned(call, path)
    if await call.request.body():
        return text(415, "MKCOL must not have a body")
    if _entry(call, path) is not None:
        return text(405, "Already exists")
    locks_of(call.emu).check(path, call.request)
    row = do_mkdir(call, path, {})
    changed(call, "item.added", row)
    return Response(b"", status_code=201, headers={"Location": href_of(row["path"], True)})


async def delete(call: Any, path: str) -> Response:
    from puterfs.emulator.routes_fs import _delete_announced

    _owned(call, path)
    if path == "/" or len(path.split("/")) == 2:
        return text(403, "Cannot delete root")
    e = _entry(call, path)
    if e is None:
        return text(404, "Not Found")
    locks_of(call.emu).check(e["path"], call.request)
    _delete_announced(call, e, recursive=True, descendants_only=False)  # recursive, one item.removed
    return Response(b"", status_code=204)


def _destination(call: Any) -> str:
    dest = call.request.headers.get("destination")
    if not dest:
        raise _Answer(text(400, "Missing Destination header"))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", dest):
        dest = urlsplit(dest).path
    return _clean(unquote(dest))


async def _copy_or_move(call: Any, path: str, copy: bool) -> Response:
    from puterfs.emulator.routes_fs import _move_announced, changed, copy_body

    dest_path = _destination(call)
    _owned(call, path)
    src = _entry(call, path)
    if src is None or path == "/":
        return text(404, "Source not found")
    _owned(call, dest_path)
    if dest_path == "/" or len(dest_path.split("/")) == 2:
        return text(403, "Cannot create at root")
    if dest_path == src["path"]:
        return text(403, "Source and destination are the same")
    parent_path, name = split_path(dest_path)
    parent = _entry(call, parent_path)
    if parent is None or not parent["is_dir"]:
        return text(409, "Destination parent missing or not a directory")
    existing = call.store.child(parent, name)
    if existing is not None and call.request.headers.get("overwrite", "T").strip().upper() == "F":
        return text(412, "Destination exists and Overwrite=F")
    locks = locks_of(call.emu)
    if not copy:
        locks.check(src["path"], call.request)
    locks.check(dest_path, call.request)
    body = {"source": src["path"], "destination": parent["path"], "new_name": name, "overwrite": True}
    if copy:
        copied, _, _ = copy_body(call, body, default_dedupe=False)
        changed(call, "item.added", copied)
    else:
        _move_announced(call, body, new_metadata=False)
    return Response(b"", status_code=204 if existing is not None else 201)


async def copy(call: Any, path: str) -> Response:
    return await _copy_or_move(call, path, copy=True)


async def move(call: Any, path: str) -> Response:
    return await _copy_or_move(call, path, copy=False)


def _lock_xml(token: str, path: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<D:prop xmlns:D="DAV:">\n  <D:lockdiscovery>\n'
        "    <D:activelock>\n      <D:locktype><D:write/></D:locktype>\n"
        "      <D:lockscope><D:exclusive/></D:lockscope>\n      <D:depth>0</D:depth>\n"
        "      <D:owner><D:href>webdav-user</D:href></D:owner>\n      <D:timeout>Second-7200</D:timeout>\n"
        f"      <D:locktoken><D:href>{token}</D:href></D:locktoken>\n"
        f"      <D:lockroot><D:href>{escape(href_of(path, False))}</D:href></D:lockroot>\n"
        "    </D:activelock>\n  </D:lockdiscovery>\n</D:prop>"
    )


async def lock(call: Any, path: str) -> Response:
    _owned(call, path)
    if path == "/":
        return text(403, "Cannot lock root")
    locks = locks_of(call.emu)
    current = locks.get(path)
    sent = _TOKEN_RE.findall(call.request.headers.get("if", ""))
    if current is not None:
        if current.token not in sent:
            return text(423, "Locked \u2014 conflicting lock exists")
        current.expires = call.emu.now() + LOCK_SECONDS  # a refresh
        return Response(_lock_xml(current.token, path), media_type=XML_TYPE, headers=dict(DAV_HEADERS))
    token = f"urn:uuid:{uuid.uuid4()}"
    locks.by_path[path] = Lock(token, path, call.emu.now() + LOCK_SECONDS)  # a missing path stays missing
    return Response(_lock_xml(token, path), media_type=XML_TYPE,
                    headers={**DAV_HEADERS, "Lock-Token": f"<{token}>"})


async def unlock(call: Any, path: str) -> Response:
    _owned(call, path)
    header = call.request.headers.get("lock-token")
    if not header:
        return text(400, "Missing Lock-Token header")
    token = header.strip().strip("<>")
    locks = locks_of(call.emu)
    held = locks.by_token(token)
    if held is not None:
        if held.path != path:
            return text(403, "Lock token does not match this path")
        del locks.by_path[held.path]
    return Response(b"", status_code=204)


HANDLERS = {
    "OPTIONS": options, "PROPFIND": propfind, "PROPPATCH": proppatch, "GET": get, "HEAD": get, "PUT": put,
    "MKCOL": mkcol, "DELETE": delete, "COPY": copy, "MOVE": move, "LOCK": lock, "UNLOCK": unlock,
}
