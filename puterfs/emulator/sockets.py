"""socket.io change notifications (RECORDED-2.md §3, exchanges/socket.jsonl): Engine.IO v4
over HTTP long-polling and WebSocket, the Socket.IO v5 packets on top, and the events the
filesystem routes announce.

Written here rather than taken from python-socketio: its ASGI server runs on asyncio only,
while the emulator also runs in process under trio (``httpx.ASGITransport``), and the
records need details a generic server does not give (the ``ok`` answers, Puter's ``44``
refusal texts, the host rule, connection caps that accept and then disconnect).  The
protocol subset is small: open/close/ping/pong/message/upgrade/noop, CONNECT, DISCONNECT,
EVENT, CONNECT_ERROR.

No background task: a long-poll GET (or a WebSocket's own task) waits for packets until
the next ping is due, and every entry point first applies the ping/pong deadlines.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.responses import Response

from puterfs.emulator.errors import ApiError

if TYPE_CHECKING:
    from puterfs.emulator.app import Call, Emulator

log = logging.getLogger(__name__)

PATH = "/socket.io/"
PING_INTERVAL = 25.0
PING_TIMEOUT = 20.0
MAX_PAYLOAD = 1_000_000
SEP = "\x1e"
# per-user connection caps by tier, and per (user, Origin) (LIMITS.md, SocketService.ts)
USER_CAPS = {"temp": 100, "free": 200, "paid": 400}
ORIGIN_CAP = 150
# GUI-side echo ids the /fs/* routes copy into their events (FSController.ts #extractGuiMetadata)
ECHO_KEYS = (("original_client_socket_id", "originalClientSocketId"), ("socket_id", "socketId"),
             ("operation_id", "operationId"))

TEXT = "text/plain; charset=UTF-8"
HTML = "text/html"


def _sid() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(15)).decode()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _eio_error(status: int, code: int, message: str) -> Response:
    return Response(_dumps({"code": code, "message": message}), status_code=status, media_type="application/json")


@dataclass(eq=False)
class EngineSession:
    sid: str
    transport: str  # "polling" or "websocket"
    origin: str | None
    next_ping: float
    pong_due: float | None = None
    user_id: int | None = None  # set once the socket.io CONNECT is accepted
    socket_sid: str | None = None
    outbox: list[str] = field(default_factory=list)
    late: list[tuple[float, str]] = field(default_factory=list)  # (due, event packet), in order
    waiters: set[anyio.Event] = field(default_factory=set)
    polling_busy: bool = False
    closed: bool = False
    closing_at: float | None = None  # ends once its last packets went out (or at this time)
    close_reason: str = ""

    def push(self, packet: str) -> None:
        if self.closed:
            return
        self.outbox.append(packet)
        self.wake()

    def wake(self) -> None:
        for ev in list(self.waiters):
            ev.set()

    def take(self) -> list[str]:
        out, self.outbox = self.outbox, []
        return out

    async def wait(self, timeout: float) -> None:
        if self.outbox or self.closed or timeout <= 0:
            return
        ev = anyio.Event()
        self.waiters.add(ev)
        try:
            with anyio.move_on_after(timeout):
                await ev.wait()
        finally:
            self.waiters.discard(ev)


class SocketHub:
    """Every engine.io session of the emulator, and the per-user rooms events go to."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.sessions: dict[str, EngineSession] = {}
        # tests may shorten these (the open packet then says so)
        self.ping_interval = PING_INTERVAL
        self.ping_timeout = PING_TIMEOUT
        # fault injection: events go out this many seconds after their change (a loaded
        # server or network: the answers of later requests overtake them); pings do not wait
        self.event_delay = 0.0

    # --- bookkeeping -------------------------------------------------------------------------

    def _open_packet(self, s: EngineSession, upgrades: list[str]) -> str:
        return "0" + _dumps({"sid": s.sid, "upgrades": upgrades, "pingInterval": int(self.ping_interval * 1000),
                             "pingTimeout": int(self.ping_timeout * 1000), "maxPayload": MAX_PAYLOAD})

    def _new(self, transport: str, origin: str | None) -> EngineSession:
        s = EngineSession(_sid(), transport, origin, next_ping=time.monotonic() + self.ping_interval)
        self.sessions[s.sid] = s
        return s

    def close(self, s: EngineSession, reason: str) -> None:
        if s.closed:
            return
        s.closed = True
        s.close_reason = reason
        self.sessions.pop(s.sid, None)
        s.wake()

    def tick(self, s: EngineSession, now: float | None = None) -> None:
        """Apply the ping schedule: ping when due, close when a ping went unanswered."""
        now = time.monotonic() if now is None else now
        if s.closed:
            return
        while s.late and s.late[0][0] <= now:
            s.push(s.late.pop(0)[1])
        if s.closing_at is not None:
            if now >= s.closing_at:
                self.close(s, s.close_reason or "closed")
            return
        if s.pong_due is not None:
            if now >= s.pong_due:
                self.close(s, "ping timeout")
        elif now >= s.next_ping:
            s.push("2")
            s.pong_due = now + self.ping_timeout

    def _tick_all(self) -> None:
        now = time.monotonic()
        for s in list(self.sessions.values()):
            self.tick(s, now)

    def _deadline(self, s: EngineSession) -> float:
        if s.closing_at is not None:
            return 0 if s.outbox else s.closing_at - time.monotonic()
        due = s.pong_due if s.pong_due is not None else s.next_ping
        if s.late:
            due = min(due, s.late[0][0])
        return due - time.monotonic()

    def connected(self, user_id: int) -> list[EngineSession]:
        return [s for s in self.sessions.values() if s.user_id == user_id and not s.closed and s.closing_at is None]

    def _close_after_flush(self, s: EngineSession, reason: str) -> None:
        """Send the close packet, then forget the session once it went out."""
        s.push("1")
        s.close_reason = reason
        s.closing_at = time.monotonic() + self.ping_timeout

    def drop_all(self) -> int:
        """Fault injection: end every session at once (clients see their connection go)."""
        n = 0
        for s in list(self.sessions.values()):
            if s.transport == "polling":
                self._close_after_flush(s, "dropped by the emulator")
                s.user_id = None
            else:
                self.close(s, "dropped by the emulator")
            n += 1
        return n

    # --- events ------------------------------------------------------------------------------

    def emit(self, user_id: int, name: str, payload: Any) -> None:
        self._tick_all()
        packet = "42" + _dumps([name, payload])
        for s in self.connected(user_id):
            if self.event_delay > 0 or s.late:
                due = time.monotonic() + self.event_delay
                s.late.append((max(due, s.late[-1][0]) if s.late else due, packet))  # in order
                s.wake()  # its waiter looks at the new deadline
            else:
                s.push(packet)

    # --- packets from a client -----------------------------------------------------------------

    def _receive(self, s: EngineSession, packet: str, headers: Any) -> None:
        if not packet:
            return
        kind, data = packet[0], packet[1:]
        if kind == "1":
            self.close(s, "client close")
        elif kind == "2":  # a v3-style client ping: answer it
            s.push("3" + data)
        elif kind == "3":
            if s.pong_due is not None:
                s.pong_due = None
                s.next_ping = time.monotonic() + self.ping_interval
        elif kind == "4":
            self._socketio(s, data)
        elif kind == "6":
            pass
        else:
            raise ValueError(f"bad engine.io packet type {kind!r}")

    def _socketio(self, s: EngineSession, data: str) -> None:
        if not data:
            raise ValueError("empty socket.io packet")
        kind, rest = data[0], data[1:]
        if rest.startswith("/"):
            ns, _, rest = rest.partition(",")
            s.push(f"44{ns}," + _dumps({"message": "Invalid namespace"}))
            return
        if kind == "0":
            if s.socket_sid is not None:
                return  # already connected on "/"
            auth: Any = None
            if rest:
                try:
                    auth = json.loads(rest)
                except ValueError:
                    raise ValueError("bad CONNECT payload") from None
            self._connect(s, auth if isinstance(auth, dict) else {})
        elif kind == "1":
            s.user_id = None
            s.socket_sid = None
        elif kind == "2":
            pass  # client events (trash.is_empty, puter_is_actually_open) are accepted and not relayed
        else:
            raise ValueError(f"bad socket.io packet type {kind!r}")

    def _connect(self, s: EngineSession, auth: dict[str, Any]) -> None:
        from puterfs.emulator.auth import TokenFormatError, TokenSignatureError, verify_token

        raw = auth.get("auth_token")
        if not isinstance(raw, str) or not raw:
            s.push("44" + _dumps({"message": "socket auth token missing"}))
            return
        token = raw[7:].strip() if raw[:7].lower() == "bearer " else raw.strip()
        if not token:
            s.push("44" + _dumps({"message": "socket auth token empty"}))
            return
        try:
            verify_token(self.emu.store.secret, token)
        except TokenFormatError:
            s.push("44" + _dumps({"message": "reauth_required",
                                  "data": {"code": "reauth_required", "reason": "token_v1"}}))
            return
        except TokenSignatureError:
            s.push("44" + _dumps({"message": "socket auth failed"}))
            return
        try:
            actor = self.emu.actor_for(token)
        except ApiError:
            s.push("44" + _dumps({"message": "socket auth failed"}))
            return
        if actor.kind in ("t", "au"):  # access tokens and app tokens (isAccessTokenActor / isAppActor)
            s.push("44" + _dumps({"message": "socket auth: only user tokens accepted"}))
            return
        user = actor.user
        s.user_id = user["id"]
        s.socket_sid = _sid()
        s.push("40" + _dumps({"sid": s.socket_sid}))
        # over a cap: accepted, then disconnected (SocketService.ts #admitConnection)
        mine = [o for o in self.connected(user["id"]) if o is not s]
        cap = USER_CAPS["temp" if user["is_temp"] else "free"]
        same_origin = [o for o in mine if o.origin == s.origin]
        if len(mine) >= cap or len(same_origin) >= ORIGIN_CAP:
            s.push("41")
            s.user_id = None
            s.socket_sid = None
            self._close_after_flush(s, "over the connection cap")

    # --- HTTP long-polling -----------------------------------------------------------------------

    def _host_allowed(self, host: str) -> bool:
        from puterfs.emulator.app import _is_ip_host, host_kind

        name = host.rsplit(":", 1)[0].strip("[]").lower() if host else ""
        if host_kind(host, self.emu.domain) in ("api", "root"):
            return name in (self.emu.domain, "api." + self.emu.domain)
        if _is_ip_host(host):
            # refused as on the real server (the recorded 403), unless --allow-ip-hosts (app.py)
            return not self.emu.refuse_ip_hosts
        return name == "localhost"

    async def handle_http(self, request: Request) -> Response:
        q = request.query_params
        if not self._host_allowed(request.headers.get("host", "")):
            return _eio_error(403, 4, "socket.io: host not allowed")
        if q.get("EIO") != "4":
            return _eio_error(400, 5, "Unsupported protocol version")
        transport = q.get("transport")
        if transport not in ("polling", "websocket"):
            return _eio_error(400, 0, "Transport unknown")
        if transport == "websocket":
            return _eio_error(400, 3, "Bad request")  # a websocket needs the Upgrade handshake
        self._tick_all()
        sid = q.get("sid")
        if sid is None:
            if request.method != "GET":
                return _eio_error(400, 3, "Bad request")
            s = self._new("polling", request.headers.get("origin"))
            return Response(self._open_packet(s, ["websocket"]), media_type=TEXT)
        s = self.sessions.get(sid)
        if s is None:
            return _eio_error(400, 1, "Session ID unknown")
        if s.transport != "polling":
            return _eio_error(400, 3, "Bad request")
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_PAYLOAD:
                self.close(s, "payload too large")
                return _eio_error(413, 3, "Payload too large")
            try:
                for packet in body.decode("utf-8").split(SEP):
                    self._receive(s, packet, request.headers)
            except (UnicodeDecodeError, ValueError):
                self.close(s, "parse error")
                return _eio_error(400, 3, "Bad request")
            return Response("ok", media_type=HTML)
        if request.method != "GET":
            return _eio_error(400, 2, "Bad handshake method")
        if s.polling_busy:
            self.close(s, "overlapping polls")
            return _eio_error(400, 3, "Bad request")
        s.polling_busy = True
        try:
            while not s.outbox and not s.closed:
                await s.wait(self._deadline(s))
                self.tick(s)
                if s.transport != "polling":
                    return Response("6", media_type=TEXT)
        finally:
            s.polling_busy = False
        packets = s.take()
        if s.closing_at is not None:
            self.close(s, s.close_reason)
        if not packets:  # closed with nothing to say
            return _eio_error(400, 1, "Session ID unknown")
        return Response(SEP.join(packets), media_type=TEXT)

    # --- WebSocket ---------------------------------------------------------------------------------

    async def handle_ws(self, scope: dict[str, Any], receive: Any, send: Any, record: dict[str, Any]) -> int:
        """Serve one WebSocket; ``record`` (its request log line) gets status 101 once accepted."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        q = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return 400
        if (not self._host_allowed(headers.get("host", "")) or q.get("EIO") != "4"
                or q.get("transport") != "websocket"):
            await send({"type": "websocket.close", "code": 1008})
            return 400
        self._tick_all()
        sid = q.get("sid")
        upgrading: EngineSession | None = None
        if sid is not None:
            upgrading = self.sessions.get(sid)
            if upgrading is None or upgrading.transport != "polling":
                await send({"type": "websocket.close", "code": 1008})
                return 400
        await send({"type": "websocket.accept"})
        record["status"] = 101
        if upgrading is None:
            s = self._new("websocket", headers.get("origin"))
            await send({"type": "websocket.send", "text": self._open_packet(s, [])})
        else:
            s = upgrading
            first = await receive()
            if first.get("type") != "websocket.receive" or first.get("text") != "2probe":
                await send({"type": "websocket.close", "code": 1002})
                return 101
            await send({"type": "websocket.send", "text": "3probe"})
            second = await receive()
            if second.get("type") != "websocket.receive" or second.get("text") != "5":
                await send({"type": "websocket.close", "code": 1002})
                return 101
            s.transport = "websocket"
            s.wake()  # a pending long-poll answers with a noop
        await self._ws_loop(s, receive, send)
        return 101

    async def _ws_loop(self, s: EngineSession, receive: Any, send: Any) -> None:
        gone = False

        async def reader(tg: Any) -> None:
            nonlocal gone
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    gone = True
                    self.close(s, "transport close")
                    tg.cancel_scope.cancel()
                    return
                text = msg.get("text")
                if text is None:
                    text = (msg.get("bytes") or b"").decode("utf-8", "replace")
                if len(text) > MAX_PAYLOAD:
                    self.close(s, "payload too large")
                    return
                try:
                    self._receive(s, text, {})
                except ValueError:
                    self.close(s, "parse error")
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, tg)
            while not s.closed:
                await s.wait(self._deadline(s))
                self.tick(s)
                for packet in s.take():
                    await send({"type": "websocket.send", "text": packet})
                if s.closing_at is not None:
                    self.close(s, s.close_reason)
            for packet in s.take():  # e.g. the DISCONNECT of a connection over the cap
                await send({"type": "websocket.send", "text": packet})
            if not gone:
                await send({"type": "websocket.close", "code": 1000})
            tg.cancel_scope.cancel()


# --- what the filesystem routes announce ---------------------------------------------------------


def echo_ids(body: dict[str, Any]) -> dict[str, Any]:
    """The GUI echo ids of a /fs/* request (snake or camel case, top level or in guiMetadata)."""
    out: dict[str, Any] = {}
    sources = [body]
    if isinstance(body.get("guiMetadata"), dict):
        sources.append(body["guiMetadata"])
    for snake, camel in ECHO_KEYS:
        for src in sources:
            for key in (snake, camel):
                if src.get(key) is not None and snake not in out:
                    out[snake] = src[key]
    return out


def raw_entry(call: Call, e: Any) -> dict[str, Any]:
    """The internal FSEntry the /fs/move and /fs/delete events carry (camelCase, numeric ids)."""
    store = call.store
    parent = store.by_id(e["parent_id"])
    is_dir = bool(e["is_dir"])
    return {
        "id": e["id"], "uuid": e["uid"], "uid": e["uid"], "userId": e["owner_id"],
        "parentId": e["parent_id"], "parentUid": parent["uid"] if parent else None,
        "path": e["path"], "name": e["name"], "isDir": is_dir,
        "bucket": None if is_dir else "puter-local", "bucketRegion": None if is_dir else "us-west-2",
        "publicToken": None, "fileRequestToken": None, "isShortcut": False, "shortcutTo": None,
        "associatedAppId": None, "layout": None, "sortBy": None, "sortOrder": None,
        "isPublic": None if e["is_public"] is None else bool(e["is_public"]), "thumbnail": None,
        "immutable": bool(e["immutable"]), "metadata": e["metadata"], "modified": e["modified"],
        "created": e["created"], "accessed": e["accessed"], "size": 0 if is_dir else e["size"],
        "symlinkPath": None, "isSymlink": False, "subdomains": [], "workers": [], "hasWebsite": False,
        "suggestedApps": [],
    }


def announce(call: Call, event: str, payload: dict[str, Any], owner_id: int, *,
             echo: dict[str, Any] | None = None, after: Iterable[tuple[str, Any]] = ()) -> None:
    """The one notification point of a mutation: ``event`` with ``payload`` (legacy or raw entry),
    then ``cache.updated``, to every socket of the owner.  ``echo`` = the /fs/* echo ids."""
    hub: SocketHub | None = getattr(call.emu, "sockets", None)
    if hub is None:
        return
    body = dict(payload)
    body.update(echo or {})
    body["from_new_service"] = True
    body.update(after)  # keys the server adds after from_new_service (descendants_only of /fs/delete)
    hub.emit(owner_id, event, body)
    user = call.store.user_by_id(owner_id)
    cache: dict[str, Any] = {"timestamp": user["change_ts"] if user is not None else int(time.time() * 1000)}
    if echo and echo.get("original_client_socket_id") is not None:
        cache["original_client_socket_id"] = echo["original_client_socket_id"]
    hub.emit(owner_id, "cache.updated", cache)
