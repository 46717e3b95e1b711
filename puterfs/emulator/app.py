"""The emulator's ASGI application: host routing, authentication, faults, request log.

One ``Emulator`` owns a ``Store`` (SQLite + blob files), a ``Faults`` switchboard and a
``RequestLog``; ``Emulator.app`` is a plain ASGI callable.  Request handling uses
Starlette's request/response objects and anyio only, so the app runs under uvicorn
(asyncio) and in process through ``httpx.ASGITransport`` under asyncio or trio.

Hosts (README §1): ``api.*`` gets API routes only, the configured root domain gets
root routes only (login, signup, ...); an IP address, ``localhost`` or any other name
gets both, so ``http://127.0.0.1:PORT`` is both the API and the web URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response

from puterfs.emulator.auth import TokenFormatError, TokenSignatureError, sign_token, verify_token
from puterfs.emulator.errors import ApiError, api_error
from puterfs.emulator.faults import Faults, RequestLog, Rule, StreamShaper
from puterfs.emulator.hosting import serve_site
from puterfs.emulator.ratelimit import Limiter, RateLimited, driver_gates, fingerprint, gates_for
from puterfs.emulator.store import Store
from puterfs.emulator.webdav import handle as serve_dav
from puterfs.emulator.webdav import is_dav_host

log = logging.getLogger(__name__)

VERSION = {"version": "26.07", "major": 26, "minor": 7, "patch": None, "environment": "dev", "location": None}
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class JSONResponse(_StarletteJSON):
    """JSON with the real server's ``Content-Type`` (it names the charset)."""

    media_type = "application/json; charset=utf-8"


class DroppedConnection(httpx.RemoteProtocolError):
    """In-process stand-in for a connection closed without a response.

    An ``httpx.RemoteProtocolError`` so that a client on ``httpx.ASGITransport`` sees
    the same exception class as one whose TCP connection was closed."""


# Returned (instead of None) by the ASGI callable to make uvicorn close the connection
# without writing a response: its h11 protocol closes the transport on a non-None result.
_DROP = "emulator-drop"


@dataclass
class Actor:
    """Who is calling: the user and the kind of token (gui, s, au, t)."""

    user: sqlite3.Row
    kind: str
    claims: dict[str, Any]
    token: str

    @property
    def username(self) -> str:
        return self.user["username"]

    @property
    def permissions(self) -> list[str]:
        perms = self.claims.get("perm")
        return perms if isinstance(perms, list) else []

    @property
    def app_uid(self) -> str | None:
        return self.claims.get("app")

    @property
    def full_access(self) -> bool:
        if self.kind in ("gui", "s"):
            return True
        # the real server carries full access as a signed ``full_access`` claim
        return self.kind == "t" and (self.claims.get("full_access") is True or "full-api-access" in self.permissions)


@dataclass
class Call:
    """Everything a route handler gets."""

    emu: Emulator
    request: Request
    body: dict[str, Any]
    actor: Actor | None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def me(self) -> Actor:
        assert self.actor is not None
        return self.actor

    @property
    def store(self) -> Store:
        return self.emu.store

    def base_url(self) -> str:
        host = self.request.headers.get("host") or "127.0.0.1"
        return f"{self.request.url.scheme}://{host}"


Handler = Callable[[Call], Awaitable[Response]]


@dataclass
class Route:
    handler: Handler
    host: str  # "api", "root", "any", "storage" (presigned storage URLs: any host, not Puter's routing)
    auth: str  # "none", "user", "fs", "drivers", "optional"
    body: str = "json"  # "json" or "raw" (the handler reads the body itself)


ROUTES: dict[tuple[str, str], Route] = {}
PREFIX_ROUTES: list[tuple[str, str, Route]] = []


def route(methods: str, path: str, host: str = "api", auth: str = "fs", body: str = "json", prefix: bool = False):
    def deco(fn: Handler) -> Handler:
        for m in methods.split(","):
            r = Route(fn, host, auth, body)
            if prefix:
                PREFIX_ROUTES.append((m.strip().upper(), path, r))
            else:
                ROUTES[(m.strip().upper(), path)] = r
        return fn

    return deco


def find_route(method: str, path: str) -> Route | None:
    entry = ROUTES.get((method, path))
    if entry is None:
        for m, p, r in PREFIX_ROUTES:
            if m == method and path.startswith(p):
                return r
    return entry


def parse_json_bytes(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "Invalid JSON body") from exc
    if not isinstance(data, dict):
        return {"$": data}
    return data


JSON_LIMIT = 50 * 1024 * 1024  # express.json({limit: "50mb"}), server.ts:516-523
FORM_LIMIT = 100 * 1024  # express.urlencoded default "100kb", server.ts:530


def _entity_too_large() -> ApiError:
    return ApiError(413, "client_bad_request", "request entity too large", headers={"X-Needs-Upgrade": "true"})


async def read_body(request: Request) -> dict[str, Any]:
    """The request body as the server's global parsers see it: JSON for ``application/json``
    and exactly ``text/plain;actually=json`` (50 MB), form fields for urlencoded (100 kB),
    nothing for any other type.  Over the limit: 413; malformed JSON: 400 ``client_bad_json``."""
    ctype = request.headers.get("content-type", "")
    base = ctype.split(";")[0].strip().lower()
    if base == "application/json" or ctype.strip() == "text/plain;actually=json":
        limit, kind = JSON_LIMIT, "json"
    elif base == "application/x-www-form-urlencoded":
        limit, kind = FORM_LIMIT, "form"
    else:
        return {}
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _entity_too_large()  # raw-body refuses on the declared length, before reading
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise _entity_too_large()
    if kind == "form":
        from urllib.parse import parse_qsl

        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    if not raw.strip():
        return {}
    try:
        data = json.loads(bytes(raw))
    except ValueError as exc:
        raise ApiError(400, "client_bad_json", "Malformed JSON in request body") from exc
    if not isinstance(data, (dict, list)):
        raise ApiError(400, "client_bad_json", "Malformed JSON in request body")  # body-parser strict mode
    return data if isinstance(data, dict) else {"$": data}


def host_kind(host_header: str, domain: str) -> str:
    host = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else host_header.split("]")[0][1:]
    host = host.lower()
    if host.startswith("api."):
        return "api"
    if host == domain:
        return "root"
    return "both"


def _is_ip_host(host_header: str) -> bool:
    host = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else host_header.split("]")[0][1:]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(client: Any) -> bool:
    if client is None:
        return True
    addr = client[0]
    if addr in LOOPBACK or addr == "testclient":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


class Emulator:
    """A Puter 26.07 look-alike. ``.app`` is the ASGI app; ``.token`` the start-up user's token."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        username: str = "puter",
        password: str = "puterpass",
        otp_secret: str | None = None,
        domain: str = "puter.localhost",
        tier: str = "free",
        refuse_ip_hosts: bool = True,
    ):
        self.data_dir = Path(data_dir)
        self.store = Store(self.data_dir)
        self.domain = domain
        self.faults = Faults()
        self.log = RequestLog()
        self.limiter = Limiter(clock=self.now, tier=tier)  # see ratelimit.py; "unlimited" = off
        # The real server routes by Host and answers 404 on every route to a request whose Host
        # is an IP address (the errata); `--allow-ip-hosts` (False) serves both route sets there.
        self.refuse_ip_hosts = refuse_ip_hosts
        self.capacity: int | None = None
        self.behind_server = False  # set by the CLI runner: drops then close the socket for real
        # set by the CLI runner: /_emulator/* then needs this in X-Emulator-Secret (an app
        # driven in process is reachable only from its own process)
        self.admin_secret: str | None = None
        # puter.com's captcha on /login, /login/otp, /login/recovery-code, /signup (routes_gui.py)
        self.captcha = False
        self.captchas: dict[str, tuple[str, float]] = {}
        self.started = time.time()
        self.clock_offset = 0.0  # moved by /_emulator/clock: lets tests see expiries and windows pass
        from puterfs.emulator.sockets import SocketHub

        self.sockets = SocketHub(self)
        user = self.store.user_by_name(username)
        if user is None:
            user = self.store.create_user(username, password)
            self.store.update_user(user["id"], email_confirmed=1)
        if otp_secret:
            self.store.update_user(user["id"], otp_secret=otp_secret.replace(" ", "").upper(), otp_enabled=1)
        self.username = username
        self.password = password
        key = f"cli_token:{username}"
        token = self.store.get_meta(key)
        if token is None or self._claims_ok(token) is None:
            token = self.issue_token(self.store.user_by_name(username), "gui")  # type: ignore[arg-type]
            self.store.set_meta(key, token)
        self.token = token
        self._write_token_file()
        # Imported here: the route modules register themselves on import.
        from puterfs.emulator import drivers_apps, presign, routes_ai, routes_auth, routes_fs, routes_gui  # noqa: F401

    def now(self) -> float:
        """The emulator's wall clock (seconds): upload expiries and rate windows use it."""
        return time.time() + self.clock_offset

    # --- tokens ----------------------------------------------------------------------------

    def issue_token(self, user: sqlite3.Row, kind: str, **extra: Any) -> str:
        claims = {"t": kind, "uu": user["uuid"], "jti": secrets.token_hex(8), "iat": int(time.time()), **extra}
        return sign_token(self.store.secret, claims)

    def _claims_ok(self, token: str) -> dict[str, Any] | None:
        try:
            return verify_token(self.store.secret, token)
        except (TokenFormatError, TokenSignatureError):
            return None

    def actor_for(self, token: str) -> Actor:
        try:
            claims = verify_token(self.store.secret, token)
        except TokenFormatError as exc:
            raise ApiError(401, "reauth_required", "Re-authentication required", reason="token_v1") from exc
        except TokenSignatureError as exc:
            raise ApiError(401, "token_auth_failed", "Authentication failed") from exc
        kind = claims.get("t")
        if kind not in ("gui", "s", "au", "t"):
            raise ApiError(401, "token_auth_failed", "Authentication failed")
        user = self.store.user_by_uuid(str(claims.get("uu")))
        if user is None or self.store.is_revoked(str(claims.get("jti"))):
            raise ApiError(401, "token_auth_failed", "Authentication failed")
        return Actor(user=user, kind=kind, claims=claims, token=token)

    def _write_token_file(self) -> None:
        path = self.data_dir / "token"
        tmp = path.with_name("token.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (self.token + "\n").encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    # --- ASGI ------------------------------------------------------------------------------

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return None
        if scope["type"] == "websocket":
            return await self._serve_websocket(scope, receive, send)
        if scope["type"] != "http":
            return None
        path = scope["path"]
        if path.startswith("/_emulator/"):
            request = Request(scope, receive)
            if not _is_loopback(scope.get("client")):
                await api_error(403, "forbidden", "emulator admin routes are loopback-only")(scope, receive, send)
                return None
            if self.admin_secret is not None and not hmac.compare_digest(
                request.headers.get("x-emulator-secret", ""), self.admin_secret
            ):
                await api_error(
                    403, "forbidden", "emulator admin routes need X-Emulator-Secret (DATA/admin-secret)"
                )(scope, receive, send)
                return None
            from puterfs.emulator.admin import handle_admin

            response = await handle_admin(self, request)
            await response(scope, receive, send)
            return None
        return await self._serve_logged(scope, receive, send)

    async def _serve_logged(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        record: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "status": None,
            "bytes_in": 0,
            "bytes_out": 0,
            "t": time.time(),
        }
        state = scope.setdefault("state", {})
        state["log"] = record

        async def counting_receive() -> Any:
            msg = await receive()
            if msg["type"] == "http.request":
                record["bytes_in"] += len(msg.get("body", b""))
            return msg

        async def counting_send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                record["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                record["bytes_out"] += len(msg.get("body", b""))
            await send(msg)

        try:
            return await self._serve(scope, counting_receive, counting_send)
        finally:
            record["end"] = time.time()  # with "t": which requests were in flight together
            self.log.add(record)

    async def _serve_websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """WebSockets exist only for socket.io; logged as one GET request (status 101 when accepted)."""
        from puterfs.emulator.sockets import PATH

        record: dict[str, Any] = {"method": "GET", "path": scope["path"], "status": None, "bytes_in": 0,
                                  "bytes_out": 0, "t": time.time(), "websocket": True}
        self.log.add(record)
        rule = self.faults.take("GET", scope["path"])
        if scope["path"] != PATH or (rule is not None and (rule.drop or rule.status is not None)):
            msg = await receive()
            if msg["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
            record["status"] = 0 if rule is not None and rule.drop else (rule.status if rule else 404) or 403
            if rule is not None:
                record["fault"] = True
            return None
        record["status"] = await self.sockets.handle_ws(scope, receive, send, record)
        return None

    def refuses_host(self, method: str, path: str, host: str) -> bool:
        """A request whose Host is an IP address: 404 on every route, as on the real server (the
        errata), unless `--allow-ip-hosts`. Presigned storage URLs are another server's (a
        self-host's S3 on a raw address) and answer any host; socket.io answers such a Host
        with its own recorded 403 (sockets.py)."""
        if not self.refuse_ip_hosts or not _is_ip_host(host):
            return False
        entry = find_route(method, path) or (find_route("GET", path) if method == "HEAD" else None)
        return entry is None or entry.host != "storage"

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        from puterfs.emulator.sockets import PATH

        method, path = scope["method"], scope["path"]
        rule = self.faults.take(method, path)
        if rule is not None and not rule.after:
            outcome = await self._apply_fault(rule, scope, receive, send)
            if outcome is not None:
                return None if outcome is True else outcome
        request = Request(scope, receive)
        try:
            try:
                if path == PATH:  # socket.io refuses an address itself: 403 (sockets.py)
                    response = await self.sockets.handle_http(request)
                elif self.refuses_host(method, path, request.headers.get("host", "")):
                    response = api_error(404, "not_found", "Not Found")
                else:
                    response = await self.dispatch(request, rule)
            except ApiError as exc:
                response = exc.response()
            except DroppedConnection:
                raise
            except Exception:
                log.exception("unhandled error in %s %s", method, path)
                response = api_error(500, "internal_error", "Internal Server Error")
            if path != PATH:  # engine.io answers outside Express: no ETag
                _weak_etag(response)
            if rule is not None and rule.after:
                # the server has acted; now the answer is lost, late, wrong or cut (faults.py)
                outcome = await self._apply_fault_after(rule, response, scope, receive, send)
                if outcome is not None:
                    return None if outcome is True else outcome
            await response(scope, receive, send)
        finally:
            # concurrency slots are held until the response has been sent (or the client left)
            for release in scope["state"].pop("rl_release", ()):
                release()
        return None

    async def _apply_fault_after(self, rule: Rule, response: Any, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """A fault applied once the request was served. Same outcomes as `_apply_fault`."""
        from puterfs.emulator.faults import html_response, truncated_response

        scope["state"]["log"]["fault"] = "after"
        if rule.latency:
            await anyio.sleep(rule.latency)
        if rule.stall:
            await self.faults.wait_release(self.faults.generation())
        if rule.drop:
            scope["state"]["log"]["status"] = 0
            if self.behind_server:
                return _DROP
            raise DroppedConnection("emulator: connection dropped by fault injection (after acting)")
        if rule.html:
            await html_response()(scope, receive, send)
            return True
        if rule.truncate:
            await (await truncated_response(response))(scope, receive, send)
            return True
        if rule.status is not None:
            code = rule.code or _default_code(rule.status)
            message = rule.message or _default_message(rule.status)
            await api_error(rule.status, code, message)(scope, receive, send)
            return True
        return None

    async def _apply_fault(self, rule: Rule, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Returns None to go on serving, True when a response was sent, or the drop marker."""
        scope["state"]["log"]["fault"] = True
        if rule.latency:
            await anyio.sleep(rule.latency)
        if rule.drop:
            scope["state"]["log"]["status"] = 0
            if self.behind_server:
                return _DROP
            raise DroppedConnection("emulator: connection dropped by fault injection")
        if rule.stall:
            gen = self.faults.generation()
            disconnected = False
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal disconnected
                    while True:
                        msg = await receive()
                        if msg["type"] == "http.disconnect":
                            disconnected = True
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
                await self.faults.wait_release(gen)
                tg.cancel_scope.cancel()
            if disconnected:
                scope["state"]["log"]["status"] = 0
                return True
            # released: carry on with the request below (its body was consumed by watch,
            # so answer with a retryable error unless the rule also gives a status)
            if rule.status is None:
                await api_error(503, "emulator_stall_released", "Stalled request released")(scope, receive, send)
                return True
        if rule.html:
            from puterfs.emulator.faults import html_response

            await html_response()(scope, receive, send)
            return True
        if rule.status is not None:
            headers = {}
            if rule.retry_after is not None:
                ra = rule.retry_after
                headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            code = rule.code or _default_code(rule.status)
            message = rule.message or _default_message(rule.status)
            await api_error(rule.status, code, message, headers=headers)(scope, receive, send)
            return True
        return None

    async def dispatch(self, request: Request, rule: Rule | None) -> Response:
        method, path = request.method, request.url.path
        if is_dav_host(request.headers.get("host", ""), self.domain):  # webdav.py
            return await serve_dav(self, request)
        site = serve_site(self, method, path, request.headers.get("host", ""))
        if site is not None:  # <sub>.site.<domain>, <name>.workers.<domain>
            return site
        kind = host_kind(request.headers.get("host", ""), self.domain)
        entry = find_route(method, path)
        if entry is None and method == "HEAD":
            entry = find_route("GET", path)
        if entry is None or (entry.host not in ("any", "storage") and kind != "both" and kind != entry.host):
            if kind == "root" and path == "/whoami":
                return Response(status_code=302, headers={"Location": "/"})
            return api_error(404, "not_found", "Not Found")
        body: dict[str, Any] = {}
        if entry.body == "json" and method not in ("GET", "HEAD"):
            body = await read_body(request)
        actor = None
        if entry.auth != "none":
            token = self._find_token(request, body)
            if token is None:
                if entry.auth != "optional":
                    raise ApiError(401, "token_missing", "Missing authentication token")
            else:
                actor = self.actor_for(token)
            if actor is not None:
                self._gate(entry.auth, actor)
        self._rate_limit(request, actor, body)
        call = Call(self, request, body, actor)
        call.state["shaper"] = StreamShaper(self.faults, rule)
        return await entry.handler(call)

    def _rate_limit(self, request: Request, actor: Actor | None, body: dict[str, Any]) -> None:
        """The route's windows and concurrency cap (ratelimit.py), after auth as on the server."""
        user = actor.user if actor is not None else None
        tier = self.limiter.tier_of(user)
        if tier is None:
            return
        method, path = request.method, request.url.path
        gates = [gates_for(method, path)]
        if method == "POST" and path == "/drivers/call":
            iface, meth = body.get("interface"), body.get("method")
            if isinstance(iface, str) and isinstance(meth, str):
                gates.append(driver_gates(iface, meth))
        if not any(gates):
            return
        client = request.scope.get("client")
        ip = str(client[0]) if client else "127.0.0.1"
        fp = fingerprint(ip, request.headers)
        keys = {"user": f"user:{user['id']}" if user is not None else fp, "fingerprint": fp, "ip": ip}
        state = request.scope["state"]
        for g in gates:
            if g is None:
                continue
            try:
                release = self.limiter.admit(g, tier, keys)
            except RateLimited as exc:
                state["log"]["ratelimit"] = {"scope": exc.scope, "kind": exc.kind}
                raise
            if release is not None:
                state.setdefault("rl_release", []).append(release)

    @staticmethod
    def _find_token(request: Request, body: dict[str, Any]) -> str | None:
        tok = body.get("auth_token")
        if isinstance(tok, str) and tok:
            return tok
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            val = auth[7:].strip()
            if val:
                return val
        key = request.headers.get("x-api-key")
        if key:
            return key.strip()
        cookie = request.cookies.get("puter_auth_token")
        if cookie:
            return cookie
        q = request.query_params.get("auth_token")
        return q or None

    @staticmethod
    def _gate(policy: str, actor: Actor) -> None:
        if policy in ("fs", "drivers") and actor.kind == "t" and not actor.full_access:
            raise ApiError(403, "forbidden", "Access tokens are not allowed to access this resource")
        user = actor.user
        if user["suspended"]:  # gates.ts assertNotSuspended: every authenticated route
            raise ApiError(403, "forbidden", "Account suspended")
        if policy == "fs" and user["email"] is not None and not user["email_confirmed"]:
            raise ApiError(403, "email_confirmation_required", "Please confirm your email to continue")


def _weak_etag(response: Response) -> None:
    """Express adds a weak ETag to every buffered body (JSON, the empty touch reply); so do we."""
    body = getattr(response, "body", None)
    if isinstance(body, bytes) and "etag" not in response.headers and response.status_code != 204:
        digest = base64.b64encode(hashlib.sha1(body).digest()).decode()[:27]
        response.headers["ETag"] = f'W/"{len(body):x}-{digest}"'


def _default_code(status: int) -> str:
    return {
        400: "bad_request",
        401: "token_auth_failed",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        429: "too_many_requests",
        500: "internal_error",
        502: "upstream_failed",
        503: "db_unavailable",
        504: "upstream_failed",
    }.get(status, "internal_error" if status >= 500 else "bad_request")


def _default_message(status: int) -> str:
    return {
        429: "Too many requests.",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }.get(status, f"Emulated error {status}")


# --- system routes (any host) --------------------------------------------------------------


@route("GET", "/healthcheck", host="any", auth="none")
async def healthcheck(call: Call) -> Response:
    return JSONResponse({"ok": True})


@route("GET", "/version", host="any", auth="none")
async def version(call: Call) -> Response:
    return JSONResponse({**VERSION, "deploy_timestamp": int(call.emu.started * 1000)})
