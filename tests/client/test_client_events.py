"""``client.events()``: the recorded socket.io frames (respx) and the emulator over real HTTP,
on asyncio and trio, over long-polling and WebSocket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from test_client_support import API, TOKEN, WEB

from puterfs.client import (
    CacheUpdated,
    Connected,
    Disconnected,
    EventsRefused,
    ItemEvent,
    PuterClient,
    Resync,
)
from puterfs.client._events import normalize_entry

pytestmark = pytest.mark.anyio
EXCHANGES = "/work/shared/puter-api/exchanges/socket.jsonl"


def _records() -> dict[int, dict[str, Any]]:
    try:
        with open(EXCHANGES) as f:
            return {r["seq"]: r for r in map(json.loads, f)}
    except FileNotFoundError:
        pytest.skip("recorded exchanges not available")


def _text(rec: dict[str, Any]) -> str:
    return "\x1e".join(rec["response"])


class RecordedServer:
    """Serves the recorded polling frames of one session in order, and notes what the client sent."""

    def __init__(self, polls: list[dict[str, Any]], handshakes: list[dict[str, Any]]) -> None:
        self.polls = list(polls)
        self.handshakes = list(handshakes)
        self.posts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        assert q["EIO"] == "4" and q["transport"] == "polling"
        assert "authorization" not in request.headers  # the token goes into CONNECT only
        assert TOKEN not in str(request.url)
        if request.method == "POST":
            self.posts.append(request.content.decode())
            return httpx.Response(200, text="ok", headers={"Content-Type": "text/html"})
        if "sid" not in q:
            rec = self.handshakes.pop(0)
            return httpx.Response(rec["status"], text=_text(rec), headers={"Content-Type": rec["content_type"]})
        rec = self.polls.pop(0)
        return httpx.Response(rec["status"], text=_text(rec), headers={"Content-Type": rec["content_type"]})


@pytest.fixture
async def mocked() -> AsyncIterator[tuple[PuterClient, respx.MockRouter]]:
    router = respx.MockRouter(assert_all_called=False, assert_all_mocked=True)
    c = PuterClient(token=TOKEN, api_url=API, web_url=WEB, transport=httpx.MockTransport(router.async_handler))
    async with c:
        yield c, router


async def test_recorded_frames_typed(mocked: Any) -> None:
    client, router = mocked
    r = _records()
    server = RecordedServer(
        polls=[r[3], r[5], r[22], r[51], r[55], r[62], r[15], r[75], r[86]],
        handshakes=[r[1], r[82]],
    )
    router.route(url__startswith=API + "/socket.io/").mock(side_effect=server)
    stream = client.events(transport="polling", max_backoff=0.01)
    got: list[Any] = []
    async for ev in stream:
        got.append(ev)
        if isinstance(ev, Resync):
            break
    await stream.aclose()
    assert isinstance(got[0], Connected) and got[0].sid == "fLVSWa4RyoWdMV6OAAAA" and got[0].transport == "polling"
    assert server.posts[0] == "40" + json.dumps({"auth_token": TOKEN}, separators=(",", ":"))
    items = [e for e in got if isinstance(e, ItemEvent)]
    assert [e.name for e in items] == ["item.added", "item.moved", "item.moved", "item.removed", "item.added"]
    added, moved, raw_moved, raw_removed, echoed = items
    assert added.entry["is_dir"] is True and added.path == "/exalice/sock" and added.entry["name"] == "sock"
    assert moved.old_path == "/exalice/sock/b.txt" and moved.path == "/exalice/sock/sub/b.txt"
    # the raw FSEntry of /fs/move: camelCase and numeric ids, normalised
    assert raw_moved.old_path == "/exalice/sock/w2.txt"
    assert raw_moved.uid == "879b27c8-dacd-44e1-980f-13e2e4ec4a41" and raw_moved.entry["is_dir"] is False
    assert raw_moved.entry["parent_uid"] == "4ae97a7a-0832-495e-a861-092d55ddc4a6" and raw_moved.entry["size"] == 6
    assert raw_removed.kind == "removed" and raw_removed.descendants_only is False
    assert echoed.origin_socket_id == "fLVSWa4RyoWdMV6OAAAA" and echoed.operation_id == "op-1"
    caches = [e for e in got if isinstance(e, CacheUpdated)]
    assert caches[0].timestamp == 1796115617939
    assert caches[-1].origin_socket_id == "fLVSWa4RyoWdMV6OAAAA"
    assert "3" in server.posts  # the ping of record 15 was answered
    lost = [e for e in got if isinstance(e, Disconnected)]
    assert len(lost) == 1 and "Session ID unknown" in lost[0].reason
    assert isinstance(got[-1], Resync) and got[-1].sid == "avWUkD_UA9TsgNkUAAAD"


async def test_full_access_token_refused(mocked: Any) -> None:
    client, router = mocked
    r = _records()
    server = RecordedServer(polls=[r[84]], handshakes=[r[82]])
    router.route(url__startswith=API + "/socket.io/").mock(side_effect=server)
    with pytest.raises(EventsRefused) as info:
        async for _ in client.events(transport="polling"):
            pass
    assert info.value.code == "user_token_required"
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("seq,code", [(90, "token_missing"), (92, "reauth_required")])
async def test_other_refusals(mocked: Any, seq: int, code: str) -> None:
    client, router = mocked
    r = _records()
    router.route(url__startswith=API + "/socket.io/").mock(side_effect=RecordedServer([r[seq]], [r[88]]))
    with pytest.raises(EventsRefused) as info:
        async for _ in client.events(transport="polling"):
            pass
    assert info.value.code == code


async def test_host_refusal_is_not_retried(mocked: Any) -> None:
    client, router = mocked
    r = _records()
    router.route(url__startswith=API + "/socket.io/").mock(side_effect=RecordedServer([], [r[98]]))
    with pytest.raises(EventsRefused) as info:
        async for _ in client.events(transport="polling"):
            pass
    assert info.value.code == "host_not_allowed"


def test_normalize_legacy_entry_is_kept() -> None:
    r = _records()
    payload = json.loads(r[5]["response"][0][2:])[1]
    e = normalize_entry(payload)
    assert e["uid"] == payload["uid"] and e["path"] == payload["path"] and "from_new_service" not in e


# --- against the emulator -----------------------------------------------------------------------


@pytest.fixture
async def puter(puter_user) -> AsyncIterator[PuterClient]:
    async with PuterClient(token=puter_user.token, api_url=puter_user.url, web_url=puter_user.web_url) as client:
        yield client


async def _next_item(stream: Any) -> ItemEvent:
    async for ev in stream:
        if isinstance(ev, ItemEvent):
            return ev
    raise AssertionError("stream ended")


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_emulator_events(puter: PuterClient, puter_user, emulator, transport: str) -> None:
    home = puter_user.home
    async with puter.events(transport=transport, max_backoff=0.2) as stream:
        first = await stream.__anext__()
        assert isinstance(first, Connected) and first.transport == transport
        await puter.fs_mkdir(f"{home}/ev")
        ev = await _next_item(stream)
        assert (ev.name, ev.path, ev.entry["is_dir"]) == ("item.added", f"{home}/ev", True)
        await puter.fs_write(f"{home}/ev/a.txt", b"hello")
        ev = await _next_item(stream)
        assert (ev.name, ev.path, ev.entry["size"]) == ("item.added", f"{home}/ev/a.txt", 5)
        await puter.fs_touch(f"{home}/ev/t.txt")  # emits nothing
        await puter.fs_move(f"{home}/ev/a.txt", f"{home}/ev/b.txt")
        ev = await _next_item(stream)
        assert (ev.name, ev.old_path, ev.path) == ("item.moved", f"{home}/ev/a.txt", f"{home}/ev/b.txt")
        await puter.fs_delete(f"{home}/ev/b.txt")
        ev = await _next_item(stream)
        assert (ev.name, ev.path) == ("item.removed", f"{home}/ev/b.txt")
        # the connection goes; the stream says so, reconnects and asks for a resync
        assert emulator.drop_sockets() >= 1
        kinds = []
        async for ev in stream:
            kinds.append(type(ev))
            if isinstance(ev, Resync):
                break
        assert Disconnected in kinds and kinds[-1] is Resync and ItemEvent not in kinds
        await puter.fs_mkdir(f"{home}/ev2")
        ev = await _next_item(stream)
        assert ev.path == f"{home}/ev2"


async def test_emulator_refuses_access_token(puter: PuterClient, puter_user) -> None:
    r = await puter._http.post(puter_user.url + "/auth/create-access-token",
                               json={"permissions": ["full-api-access"]},
                               headers={"Authorization": f"Bearer {puter_user.token}"})
    access = r.json()["token"]
    async with PuterClient(token=access, api_url=puter_user.url, web_url=puter_user.web_url) as c:
        with pytest.raises(EventsRefused) as info:
            async for _ in c.events():
                pass
    assert info.value.code == "user_token_required"
