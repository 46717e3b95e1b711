"""socket.io in the emulator: the recorded session (exchanges/socket.jsonl) replayed frame by
frame, then what the records describe but a replay cannot show (WebSocket, caps, drops)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from test_emulator_contract import ADMIN_PW, HOSTS, SESSIONS, Replayer
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

import puterfs.emulator.presign  # noqa: F401 - registers the presigned-upload routes
from puterfs.emulator import Emulator
from puterfs.emulator.app import find_route
from puterfs.emulator.testing import local_http

SEP = "\x1e"
RECS = SESSIONS.get("socket", [])
# the presigned-upload routes are not in the emulator yet: those records and their polls wait
PRESIGN = set(range(33, 46))
# socket.io answers a Host that is an address with the recorded 403 (sockets.py _host_allowed)
LOOPBACK_HOST = 98


def _packets(rec_or_text: Any) -> list[str]:
    if isinstance(rec_or_text, list):
        return [p for item in rec_or_text for p in str(item).split(SEP)]
    return str(rec_or_text).split(SEP) if rec_or_text else []


def _shape(packet: str) -> Any:
    """What must match in a packet: its type, and for events the name and payload keys."""
    if packet.startswith("42"):
        name, payload = json.loads(packet[2:])
        return ("event", name, sorted(payload) if isinstance(payload, dict) else type(payload).__name__)
    if packet.startswith(("40", "44")):
        body = json.loads(packet[2:]) if len(packet) > 2 else None
        return (packet[:2], sorted(body) if isinstance(body, dict) else None,
                body.get("message") if packet.startswith("44") and isinstance(body, dict) else None)
    if packet.startswith("0"):
        body = json.loads(packet[1:])
        # the replay shortens the ping interval; the defaults are checked in test_websocket_direct_and_upgrade
        return ("open", sorted(body), body["maxPayload"], body["upgrades"])
    return packet


class SocketReplayer(Replayer):
    def __init__(self, emu: Emulator, client: httpx.AsyncClient) -> None:
        super().__init__(emu, client)
        self.sids: dict[str, str] = {}

    def map_str(self, s: str) -> str:
        for old, new in self.sids.items():
            s = s.replace(old, new)
        return super().map_str(s)


async def _replay(tmp: Path) -> dict[int, list[str]]:
    emu = Emulator(tmp / "socket", username="admin", password=ADMIN_PW)
    hub = emu.sockets
    hub.ping_interval = 1.0  # a poll with nothing to say returns at the next ping, as recorded
    hub.ping_timeout = 60.0
    out: dict[int, list[str]] = {}
    transport = httpx.ASGITransport(app=emu.app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.puter.localhost", timeout=90) as client:
        rp = SocketReplayer(emu, client)
        rp.names["exalice"] = "admin"
        rp.tokens["gui"] = emu.issue_token(emu.store.user_by_name("admin"), "gui")
        has_presign = find_route("POST", "/fs/startWrite") is not None
        for rec in RECS:
            seq = rec["seq"]
            if seq in PRESIGN and not has_presign:
                continue
            if rec["path"].startswith("/socket.io/"):
                out[seq] = await _socket_record(rec, rp, client)
                continue
            kw = rp.build_request(rec)
            if "json" in kw and kw["json"] is None:
                kw.pop("json")
            url = kw.pop("url", None) or rp.map_str(rec["path"])
            resp = await client.request(rec["method"], url, **kw)
            rp.learn(rec, kw, resp)
            out[seq] = [] if resp.status_code == rec["status"] else [f"status {resp.status_code} != {rec['status']}"]
    emu.store.close()
    return out


async def _socket_record(rec: dict[str, Any], rp: SocketReplayer, client: httpx.AsyncClient) -> list[str]:
    seq = rec["seq"]
    hub = rp.emu.sockets
    headers = {"Host": "127.0.0.1:4180" if seq == LOOPBACK_HOST else HOSTS[rec["host"]]}
    content = None
    if rec["method"] == "POST":
        body = str(rec["request"])
        token = rp.tokens["access_token:full-api-access"] if rec["auth"].startswith("access_token") else rp.tokens["gui"]
        content = rp.map_str(body.replace("<token>", token))
        headers["Content-Type"] = "text/plain;charset=UTF-8"
    if seq == 79:
        hub.ping_timeout = 0.5  # the recorded session waited 22 s after this unanswered ping
    if seq == 80:
        await anyio.sleep(0.7)
    path = rp.map_str(rec["path"]).replace("4180", "4100")
    resp = await client.request(rec["method"], path, headers=headers, content=content)
    if seq == 80:
        hub.ping_timeout = 60.0
    problems = []
    if resp.status_code != rec["status"]:
        problems.append(f"status {resp.status_code} != {rec['status']}: {resp.text[:200]}")
    if not resp.headers.get("content-type", "").startswith(rec["content_type"].split(";")[0]):
        problems.append(f"content type {resp.headers.get('content-type')} != {rec['content_type']}")
    got = _packets(resp.text)
    want = _packets(rec["response"])
    if rec["method"] == "GET" and resp.status_code == 200:
        if ("2" in got and "2" not in want) or (got == ["2"] and "not answered" not in rec["name"]):
            # our (shorter) ping interval: answer it as the recorded client would have
            await client.post(path, headers={**headers, "Content-Type": "text/plain;charset=UTF-8"}, content="3")
        if want[0].startswith("0"):
            rp.sids[json.loads(want[0][1:])["sid"]] = json.loads(got[0][1:])["sid"]
        if not (want == ["2"]):
            got = [p for p in got if p != "2"]
            want = [p for p in want if p != "2"]
    elif resp.status_code >= 400:
        got = [json.dumps(resp.json(), sort_keys=True)]
        want = [json.dumps(json.loads(w), sort_keys=True) for w in want]
    got_shape = [_shape(p) for p in got]
    want_shape = [_shape(p) for p in want]
    if got_shape != want_shape:
        problems.append(f"frames {got_shape} != recorded {want_shape}")
    return problems


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[str]]:
    return anyio.run(_replay, tmp_path_factory.mktemp("socket"))


def _params() -> list[Any]:
    out = []
    for rec in RECS:
        marks = []
        if rec["seq"] in PRESIGN and find_route("POST", "/fs/startWrite") is None:
            marks.append(pytest.mark.skip(reason="presigned uploads (/fs/startWrite) are not in the emulator yet"))
        out.append(pytest.param(rec["seq"], id=f"{rec['seq']}-{rec['name'][:40]}", marks=marks))
    return out


@pytest.mark.skipif(not RECS, reason="no recorded exchanges on this machine")
@pytest.mark.parametrize("seq", _params())
def test_recorded_socket_frame(replayed: dict[int, list[str]], seq: int) -> None:
    problems = replayed.get(seq)
    assert problems is not None, "record was not replayed"
    assert not problems, "\n".join(problems)


# --- beyond the replay -------------------------------------------------------------------------


API = {"Host": HOSTS["api"]}


async def _open(client: httpx.AsyncClient, token: str | None, origin: str | None = None) -> tuple[str, list[str]]:
    headers = dict(API)
    if origin:
        headers["Origin"] = origin
    r = await client.get("/socket.io/?EIO=4&transport=polling", headers=headers)
    sid = json.loads(r.text[1:])["sid"]
    auth = json.dumps({"auth_token": token}) if token else ""
    await client.post(f"/socket.io/?EIO=4&transport=polling&sid={sid}", headers=headers, content="40" + auth)
    r = await client.get(f"/socket.io/?EIO=4&transport=polling&sid={sid}", headers=headers)
    return sid, r.text.split(SEP)


@pytest.fixture
async def emu_client(tmp_path: Path):  # noqa: ANN201
    emu = Emulator(tmp_path / "emu")
    transport = httpx.ASGITransport(app=emu.app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.puter.localhost", timeout=30) as client:
        yield emu, client
    emu.store.close()


@pytest.mark.anyio
async def test_touch_emits_nothing_and_other_users_hear_nothing(emu_client: Any) -> None:
    emu, client = emu_client
    other = emu.store.create_user("bob", "bobpass12")
    emu.store.update_user(other["id"], email_confirmed=1)
    bob = emu.issue_token(emu.store.user_by_name("bob"), "gui")
    sid, first = await _open(client, emu.token)
    bsid, _ = await _open(client, bob)
    assert first[0].startswith("40")
    auth = {**API, "Authorization": f"Bearer {emu.token}"}
    await client.post("/touch", headers=auth, json={"path": f"/{emu.username}/Documents/t.txt"})
    await client.post("/mkdir", headers=auth, json={"path": f"/{emu.username}/Documents/d"})
    r = await client.get(f"/socket.io/?EIO=4&transport=polling&sid={sid}", headers=API)
    names = [json.loads(p[2:])[0] for p in r.text.split(SEP)]
    assert names == ["item.added", "cache.updated"]
    assert json.loads(r.text.split(SEP)[0][2:])[1]["path"] == f"/{emu.username}/Documents/d"
    emu.sockets.ping_interval = 0.05  # bob's poll returns with a ping, not with alice's events
    r = await client.get(f"/socket.io/?EIO=4&transport=polling&sid={bsid}", headers=API)
    assert r.text == "2"


@pytest.mark.anyio
async def test_foreign_host_refused(emu_client: Any) -> None:
    _, client = emu_client
    r = await client.get("/socket.io/?EIO=4&transport=polling", headers={"Host": "evil.example:4100"})
    assert r.status_code == 403 and r.json() == {"code": 4, "message": "socket.io: host not allowed"}


@pytest.mark.anyio
async def test_connection_cap_accepts_then_disconnects(emu_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from puterfs.emulator import sockets

    emu, client = emu_client
    monkeypatch.setitem(sockets.USER_CAPS, "free", 2)
    for _ in range(2):
        _, packets = await _open(client, emu.token)
        assert packets[0].startswith("40") and len(packets) == 1
    sid, packets = await _open(client, emu.token)
    assert packets[0].startswith("40") and packets[1:] == ["41", "1"]
    r = await client.get(f"/socket.io/?EIO=4&transport=polling&sid={sid}", headers=API)
    assert r.status_code == 400 and r.json() == {"code": 1, "message": "Session ID unknown"}


@pytest.mark.anyio
async def test_drop_ends_every_session(emu_client: Any) -> None:
    emu, client = emu_client
    sid, _ = await _open(client, emu.token)
    assert emu.sockets.drop_all() == 1
    r = await client.get(f"/socket.io/?EIO=4&transport=polling&sid={sid}", headers=API)
    assert r.text == "1"
    r = await client.get(f"/socket.io/?EIO=4&transport=polling&sid={sid}", headers=API)
    assert r.status_code == 400


def test_websocket_direct_and_upgrade(emulator: Any) -> None:
    """Over a real socket: direct WebSocket (upgrades []), events as text frames, the ping,
    and a polling session upgraded with 2probe/3probe/5."""
    from puterfs.client._events import _Polling, _WebSocket

    username, token = emulator.new_user()

    async def main() -> None:
        async with local_http.AsyncClient(headers={"Host": f"api.puter.localhost:{emulator.port}"}) as http:
            ws = _WebSocket(http, emulator.url + "/socket.io/")
            info = await ws.open()
            assert info.upgrades == [] and info.ping_interval == 25 and info.ping_timeout == 20
            await ws.send(["40" + json.dumps({"auth_token": token})])
            assert (await ws.receive())[0].startswith("40{")
            r = await http.post(emulator.url + "/mkdir", json={"path": f"/{username}/wsdir"},
                                headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            ev = json.loads((await ws.receive())[0][2:])
            assert ev[0] == "item.added" and ev[1]["path"] == f"/{username}/wsdir"
            assert json.loads((await ws.receive())[0][2:])[0] == "cache.updated"
            await ws.close()

            p = _Polling(http, emulator.url + "/socket.io/")
            await p.open()
            assert (await http.get(emulator.url + "/_emulator/sockets",
                                   headers={"X-Emulator-Secret": emulator.admin_secret})).json()["sessions"]
            up = _WebSocket(http, emulator.url + "/socket.io/")
            # upgrade by hand: the same sid, probe, then 5
            key = base64.b64encode(os.urandom(16)).decode()
            req = http.build_request("GET", emulator.url + "/socket.io/",
                                     params={"EIO": "4", "transport": "websocket", "sid": p.sid},
                                     headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                              "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"})
            resp = await http.send(req, stream=True)
            assert resp.status_code == 101
            up.response, up.stream, up.conn = resp, resp.extensions["network_stream"], Connection(ConnectionType.CLIENT)
            await up._write(up.conn.send(TextMessage(data="2probe")))
            assert await up._next_text(10) == "3probe"
            await up._write(up.conn.send(TextMessage(data="5")))
            await anyio.sleep(0.2)
            r = await http.get(emulator.url + "/socket.io/", params={"EIO": "4", "transport": "polling", "sid": p.sid})
            assert r.status_code == 400 and r.json() == {"code": 3, "message": "Bad request"}
            await up.close()

    anyio.run(main)
    assert [r["status"] for r in emulator.log() if r.get("websocket")][-2:] == [101, 101]
