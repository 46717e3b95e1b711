"""``client.events()``: Puter's socket.io change notifications (RECORDED-2.md §3).

Engine.IO v4 + Socket.IO v5, client side, over a WebSocket (wsproto framing on the
connection httpx opened and upgraded, so TLS, proxies and the Host header are httpx's) or
over HTTP long-polling with httpx.  Everything is pulled by the consumer's iteration:
there is no background task, so the stream runs under asyncio and trio alike, and it
answers the server's pings (``2`` -> ``3``) while the consumer iterates.

What a consumer sees:

* `Connected` once the socket is authenticated, `Resync` instead after every reconnection
  (events may have been missed in the gap: re-read what you cache);
* `ItemEvent` for ``item.added/updated/moved/removed/pending`` with the entry normalised to
  the legacy shape (the ``/fs/move`` and ``/fs/delete`` events carry the raw camelCase
  FSEntry; ``from_path`` becomes ``old_path``), `CacheUpdated`, `SocketEvent` for others;
* `Disconnected` when the connection is lost (then it reconnects, backing off up to
  ``max_backoff``);
* `EventsRefused` raised (not retried) when the socket refuses the token: a full-api-access
  token gets ``44 socket auth: only user tokens accepted``.

The token goes only into the CONNECT packet, never into a URL or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import posixpath
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from puterfs.client._errors import (
    EventsRefused,
    PuterConnectionError,
    PuterError,
    PuterTimeout,
    engineio_error,
    events_refusal,
)

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

log = logging.getLogger(__name__)

__all__ = [
    "CacheUpdated", "Connected", "Disconnected", "Event", "EventStream", "ItemEvent", "Resync", "SocketEvent",
    "normalize_entry",
]

PATH = "/socket.io/"
SEP = "\x1e"
ITEM_EVENTS = ("item.added", "item.updated", "item.moved", "item.removed", "item.pending")
_ECHO = ("original_client_socket_id", "socket_id", "operation_id")
_CAMEL = {
    "isDir": "is_dir", "parentUid": "parent_uid", "isShortcut": "is_shortcut", "shortcutTo": "shortcut_to",
    "isSymlink": "is_symlink", "symlinkPath": "symlink_path", "isPublic": "is_public",
    "hasWebsite": "has_website", "suggestedApps": "suggested_apps", "associatedAppId": "associated_app_id",
}
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Connected:
    sid: str  # the engine.io session id (what /fs/* routes take as original_client_socket_id)
    transport: str  # "websocket" or "polling"


@dataclass(frozen=True)
class Resync(Connected):
    """Connected again after a gap of ``gap`` seconds: events may have been missed."""

    gap: float = 0.0


@dataclass(frozen=True)
class Disconnected:
    reason: str
    retry_in: float


@dataclass(frozen=True)
class ItemEvent:
    name: str  # one of ITEM_EVENTS
    entry: dict[str, Any]  # legacy-shaped: uid, path, name, is_dir, size, modified, created, ...
    old_path: str | None = None  # item.moved
    descendants_only: bool = False  # item.removed
    origin_socket_id: str | None = None  # echoed by /fs/* routes only
    operation_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return self.name.partition(".")[2]

    @property
    def path(self) -> str:
        return str(self.entry.get("path") or "")

    @property
    def uid(self) -> str | None:
        return self.entry.get("uid")


@dataclass(frozen=True)
class CacheUpdated:
    timestamp: int
    origin_socket_id: str | None = None


@dataclass(frozen=True)
class SocketEvent:
    """Any other event the server emits (``name``, ``data``)."""

    name: str
    data: Any


Event = Connected | Disconnected | ItemEvent | CacheUpdated | SocketEvent


def normalize_entry(d: dict[str, Any]) -> dict[str, Any]:
    """A legacy-shaped entry from a legacy, v2 or raw FSEntry payload."""
    entry: dict[str, Any] = {}
    for k, v in d.items():
        if k in _ECHO or k in ("from_new_service", "from_path", "old_path", "descendants_only"):
            continue
        entry[_CAMEL.get(k, k)] = v
    raw_id = d.get("id")
    uid = d.get("uid") or d.get("uuid") or (raw_id if isinstance(raw_id, str) else None)
    entry["id"] = entry["uid"] = entry["uuid"] = uid
    if "parent_uid" in entry:
        entry["parent_id"] = entry["parent_uid"]
    path = entry.get("path")
    if isinstance(path, str) and path:
        entry.setdefault("name", posixpath.basename(path))
        entry.setdefault("dirname", posixpath.dirname(path))
    entry["is_dir"] = bool(entry.get("is_dir"))
    return entry


def _event(name: str, data: Any) -> ItemEvent | CacheUpdated | SocketEvent:
    if name in ITEM_EVENTS and isinstance(data, dict):
        return ItemEvent(
            name=name,
            entry=normalize_entry(data),
            old_path=data.get("old_path") or data.get("from_path"),
            descendants_only=bool(data.get("descendants_only")),
            origin_socket_id=data.get("original_client_socket_id") or data.get("socket_id"),
            operation_id=data.get("operation_id"),
            raw=data,
        )
    if name == "cache.updated" and isinstance(data, dict):
        ts = data.get("timestamp")
        return CacheUpdated(int(ts) if isinstance(ts, (int, float)) else 0, data.get("original_client_socket_id"))
    return SocketEvent(name, data)


# --------------------------------------------------------------------------- transports


@dataclass
class _Open:
    sid: str
    ping_interval: float
    ping_timeout: float
    max_payload: int
    upgrades: list[str]


def _parse_open(packet: str) -> _Open:
    if not packet.startswith("0"):
        raise PuterConnectionError(f"socket.io: expected an open packet, got {packet[:20]!r}")
    try:
        d = json.loads(packet[1:])
        return _Open(str(d["sid"]), float(d["pingInterval"]) / 1000, float(d["pingTimeout"]) / 1000,
                     int(d.get("maxPayload") or 1_000_000), list(d.get("upgrades") or []))
    except (ValueError, KeyError, TypeError) as exc:
        raise PuterConnectionError(f"socket.io: bad open packet {packet[:60]!r}") from exc


def _connection_error(exc: httpx.RequestError) -> PuterConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return PuterTimeout(f"socket.io: {type(exc).__name__}")
    return PuterConnectionError(f"socket.io: {type(exc).__name__}: {exc}")


class _Polling:
    name = "polling"

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.sid: str | None = None
        self.wait = 45.0

    async def _request(self, method: str, content: str | None = None, timeout: float = 30.0) -> str:
        params = {"EIO": "4", "transport": "polling"}
        if self.sid is not None:
            params["sid"] = self.sid
        headers = {"Content-Type": "text/plain;charset=UTF-8"} if content is not None else {}
        try:
            r = await self.http.request(method, self.url, params=params, content=content, headers=headers,
                                        timeout=httpx.Timeout(timeout))
        except httpx.RequestError as exc:
            raise _connection_error(exc) from exc
        if r.status_code != 200:
            raise engineio_error(r.status_code, r.content)
        return r.text

    async def open(self) -> _Open:
        info = _parse_open((await self._request("GET")).split(SEP)[0])
        self.sid = info.sid
        self.wait = info.ping_interval + info.ping_timeout + 5
        return info

    async def send(self, packets: list[str]) -> None:
        await self._request("POST", SEP.join(packets))

    async def receive(self) -> list[str]:
        text = await self._request("GET", timeout=self.wait)
        return text.split(SEP) if text else []

    async def close(self) -> None:
        if self.sid is not None:
            with anyio.move_on_after(2):
                try:
                    await self._request("POST", "1", timeout=2)
                except PuterError:
                    pass
            self.sid = None


class _NotUpgraded(PuterError):
    """The server (or a proxy) answered the WebSocket handshake with plain HTTP."""


class _WebSocket:
    name = "websocket"

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.response: httpx.Response | None = None
        self.stream: Any = None
        self.conn: Any = None
        self.wait = 45.0
        self._pending: list[str] = []
        self._partial: list[str] = []

    async def open(self) -> _Open:
        from wsproto.connection import Connection, ConnectionType

        key = base64.b64encode(os.urandom(16)).decode()
        headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Key": key,
                   "Sec-WebSocket-Version": "13"}
        request = self.http.build_request("GET", self.url, params={"EIO": "4", "transport": "websocket"},
                                          headers=headers, timeout=httpx.Timeout(30.0))
        try:
            response = await self.http.send(request, stream=True)
        except httpx.RequestError as exc:
            raise _connection_error(exc) from exc
        if response.status_code != 101:
            try:
                body = await response.aread()
            except httpx.RequestError:
                body = b""
            finally:
                await response.aclose()
            err = engineio_error(response.status_code, body)
            if isinstance(err, EventsRefused) or response.status_code >= 500 or response.status_code == 429:
                raise err
            raise _NotUpgraded(f"no WebSocket upgrade (HTTP {response.status_code})", status=response.status_code)
        expected = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if response.headers.get("sec-websocket-accept") != expected:
            await response.aclose()
            raise _NotUpgraded("the WebSocket handshake answer does not match the key")
        self.response = response
        self.stream = response.extensions["network_stream"]
        self.conn = Connection(ConnectionType.CLIENT)
        first = await self._next_text(30.0)
        info = _parse_open(first)
        self.wait = info.ping_interval + info.ping_timeout + 5
        return info

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except Exception as exc:  # noqa: BLE001 - httpcore's network errors
            raise PuterConnectionError(f"socket.io: the WebSocket broke while writing ({type(exc).__name__})") from exc

    async def _next_text(self, timeout: float) -> str:
        from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

        deadline = time.monotonic() + timeout
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PuterTimeout("socket.io: nothing from the server within the ping deadline")
            try:
                data = await self.stream.read(65536, timeout=left)
            except Exception as exc:  # noqa: BLE001 - httpcore's ReadTimeout / ReadError
                if "timeout" in type(exc).__name__.lower():
                    raise PuterTimeout("socket.io: nothing from the server within the ping deadline") from exc
                raise PuterConnectionError(f"socket.io: the WebSocket broke ({type(exc).__name__})") from exc
            if not data:
                raise PuterConnectionError("socket.io: the server closed the WebSocket")
            self.conn.receive_data(data)
            for ev in self.conn.events():
                if isinstance(ev, TextMessage):
                    self._partial.append(ev.data)
                    if ev.message_finished:
                        self._pending.append("".join(self._partial))
                        self._partial = []
                elif isinstance(ev, BytesMessage):
                    continue  # socket.io binary attachments: not used by Puter's events
                elif isinstance(ev, Ping):
                    await self._write(self.conn.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    try:
                        await self._write(self.conn.send(ev.response()))
                    except (PuterConnectionError, Exception):  # noqa: BLE001
                        pass
                    raise PuterConnectionError(f"socket.io: the server closed the WebSocket (code {ev.code})")
        return self._pending.pop(0)

    async def send(self, packets: list[str]) -> None:
        from wsproto.events import TextMessage

        for p in packets:
            await self._write(self.conn.send(TextMessage(data=p)))

    async def receive(self) -> list[str]:
        return [await self._next_text(self.wait)]

    async def close(self) -> None:
        if self.response is None:
            return
        from wsproto.events import CloseConnection

        with anyio.move_on_after(2):
            try:
                await self.send(["1"])
                await self._write(self.conn.send(CloseConnection(code=1000)))
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        with anyio.CancelScope(shield=True):
            try:
                await self.response.aclose()
            except Exception:  # noqa: BLE001
                pass
        self.response = None


# --------------------------------------------------------------------------- the stream


class EventStream:
    """``async for event in client.events()``; also ``async with client.events() as stream``.

    ``transport``: ``"auto"`` (WebSocket, falling back to long-polling when the WebSocket
    handshake is not answered with an upgrade), ``"websocket"`` or ``"polling"``.
    ``reconnect=False`` ends the stream at the first disconnection instead.
    """

    def __init__(self, client: PuterClient, *, transport: str = "auto", reconnect: bool = True,
                 min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        if transport not in ("auto", "websocket", "polling"):
            raise ValueError("transport must be 'auto', 'websocket' or 'polling'")
        self._client = client
        self._mode = transport
        self._reconnect = reconnect
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._gen = self._run()
        self.sid: str | None = None
        self.transport: str | None = None
        self.connected = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _url(self) -> str:
        return self._client.api_url + PATH

    def _new_transport(self) -> _Polling | _WebSocket:
        http = self._client._http
        if self._mode == "polling":
            return _Polling(http, self._url())
        return _WebSocket(http, self._url())

    async def _handshake(self, t: _Polling | _WebSocket) -> list[str]:
        """Open the engine.io session and CONNECT with the token; the packets that came after the ack."""
        token = self._client.token
        info = await t.open()
        self.sid = info.sid
        auth = {"auth_token": token} if token else {}
        await t.send(["40" + json.dumps(auth, separators=(",", ":"))])
        while True:
            packets = await t.receive()
            for i, packet in enumerate(packets):
                if packet == "2":
                    await t.send(["3"])
                elif packet.startswith("40"):
                    return packets[i + 1:]
                elif packet.startswith("44"):
                    try:
                        data = json.loads(packet[2:])
                    except ValueError:
                        data = None
                    raise events_refusal(data)
                elif packet == "1":
                    raise PuterConnectionError("socket.io: the server closed the session during CONNECT")

    async def _run(self) -> AsyncIterator[Event]:
        attempt = 0
        down_since: float | None = None
        ever_connected = False
        while True:
            t = self._new_transport()
            reason = ""
            connected_at: float | None = None
            try:
                leftover = await self._handshake(t)
                connected_at = time.monotonic()
                self.connected = True
                self.transport = t.name
                assert self.sid is not None
                if ever_connected:
                    yield Resync(self.sid, t.name, gap=(time.monotonic() - down_since) if down_since else 0.0)
                else:
                    yield Connected(self.sid, t.name)
                ever_connected = True
                down_since = None
                while True:
                    packets, leftover = leftover or await t.receive(), []
                    for packet in packets:
                        ev = await self._packet(t, packet)
                        if ev is not None:
                            yield ev
            except EventsRefused:
                await t.close()
                raise
            except _NotUpgraded as exc:
                log.info("socket.io: %s; using long-polling", exc)
                self._mode = "polling"
                reason = str(exc)
            except (PuterError, _Closed) as exc:
                reason = str(exc)
            except BaseException:  # closed by the consumer (aclose) or cancelled: let go of the socket
                self.connected = False
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await t.close()
                raise
            finally:
                self.connected = False
            await t.close()
            if connected_at is not None and time.monotonic() - connected_at >= 10:
                attempt = 0
            if down_since is None:
                down_since = time.monotonic()
            if not self._reconnect:
                yield Disconnected(reason, 0.0)
                return
            attempt += 1
            delay = min(self._max_backoff, self._min_backoff * 2 ** (attempt - 1))
            delay *= random.uniform(0.8, 1.2)
            log.debug("socket.io: %s; reconnecting in %.1fs", reason, delay)
            yield Disconnected(reason, delay)
            await anyio.sleep(delay)

    async def _packet(self, t: _Polling | _WebSocket, packet: str) -> Event | None:
        if not packet:
            return None
        kind = packet[0]
        if kind == "2":
            await t.send(["3" + packet[1:]])
            return None
        if kind in ("3", "6"):
            return None
        if kind == "1":
            raise _Closed("socket.io: the server closed the session")
        if kind != "4":
            return None
        sio = packet[1:2]
        rest = packet[2:]
        if sio == "2":
            if rest.startswith("/"):
                return None  # another namespace
            # an ack id may precede the array: digits
            i = 0
            while i < len(rest) and rest[i].isdigit():
                i += 1
            try:
                arr = json.loads(rest[i:])
            except ValueError:
                log.warning("socket.io: unparsable event %r", packet[:80])
                return None
            if not isinstance(arr, list) or not arr or not isinstance(arr[0], str):
                return None
            return _event(arr[0], arr[1] if len(arr) > 1 else None)
        if sio == "1":
            raise _Closed("socket.io: the server disconnected the socket")
        if sio == "4":
            try:
                data = json.loads(rest)
            except ValueError:
                data = None
            raise events_refusal(data)
        return None


class _Closed(Exception):
    pass
