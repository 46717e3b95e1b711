"""The emulator's rate limits and caps (LIMITS.md, limits.jsonl), over real HTTP, free tier.

Windows slide on the emulator's clock, which the tests move (``advance_clock``) instead of
sleeping; concurrency is held by responses that are not read yet or by uploads whose body is
still on its way.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from puterfs.emulator.testing import EmulatorProcess, local_http

MiB = 1024 * 1024
WINDOW_429 = {"error": "Too many requests.", "message": "Too many requests.", "code": "too_many_requests"}
CONC_429 = {"error": "Too many concurrent requests.", "message": "Too many concurrent requests.",
            "code": "too_many_requests"}


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("limits-emu"), tier="free") as proc:
        yield proc


@pytest.fixture
def fresh(emu: EmulatorProcess) -> Iterator[EmulatorProcess]:
    emu.set_tier("free", reset=True)
    emu.clear_faults()
    emu.clear_log()
    yield emu
    emu.release()
    emu.clear_faults()
    emu.set_tier("free", reset=True)


def client(emu: EmulatorProcess, token: str, **kw: object) -> httpx.Client:
    return local_http.Client(base_url=emu.url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw)


def signed_up(emu: EmulatorProcess) -> tuple[str, httpx.Client]:
    name, token = emu.new_user(temp=False)
    return "/" + name, client(emu, token)


def refusals(emu: EmulatorProcess) -> list[dict]:
    return [e for e in emu.log() if e["status"] == 429]


def assert_429(r: httpx.Response, body: dict) -> None:
    assert r.status_code == 429, r.text
    assert r.json() == body
    for h in r.headers:
        assert h.lower() != "retry-after" and not h.lower().startswith(("ratelimit", "x-ratelimit")), h


def test_window_refuses_without_counting_and_slides(fresh: EmulatorProcess) -> None:
    _, api = signed_up(fresh)
    with api:
        for _ in range(30):  # free fs:search: 30 per minute
            assert api.post("/search", json={"query": "x"}).status_code == 200
        assert_429(api.post("/search", json={"query": "x"}), WINDOW_429)
        assert refusals(fresh)[-1]["ratelimit"] == {"scope": "fs:search", "kind": "window"}
        # refused requests are not counted: refuse more half a minute later ...
        fresh.advance_clock(30)
        for _ in range(5):
            assert api.post("/search", json={"query": "x"}).status_code == 429
        # ... and once the 30 admitted hits are a minute old, the window is open again
        fresh.advance_clock(30.5)
        assert api.post("/search", json={"query": "x"}).status_code == 200


def test_readdir_burst_window_of_10_seconds(fresh: EmulatorProcess) -> None:
    home, api = signed_up(fresh)
    with api:
        for _ in range(60):
            assert api.post("/readdir", json={"path": home}).status_code == 200
        assert_429(api.post("/readdir", json={"path": home}), WINDOW_429)
        assert refusals(fresh)[-1]["ratelimit"] == {"scope": "fs:readdir-burst", "kind": "window"}
        # the legacy and v2 routes share the scope
        assert api.get("/fs/readdir", params={"path": home}).status_code == 429
        fresh.advance_clock(10.5)
        assert api.post("/readdir", json={"path": home}).status_code == 200


def test_windows_are_per_user_and_temp_users_get_the_temp_tier(fresh: EmulatorProcess) -> None:
    _, token = fresh.new_user()  # a temp user: temp tier, fs:search 10 per minute
    _, other = fresh.new_user()
    with client(fresh, token) as a, client(fresh, other) as b:
        for _ in range(10):
            assert a.post("/search", json={"query": "x"}).status_code == 200
        assert a.post("/search", json={"query": "x"}).status_code == 429
        assert b.post("/search", json={"query": "x"}).status_code == 200
        # tiers at runtime: paid gives everyone the base limits (search 60)
        fresh.set_tier("paid")
        assert a.post("/search", json={"query": "x"}).status_code == 200
        fresh.set_tier("unlimited")
        for _ in range(70):
            assert a.post("/search", json={"query": "x"}).status_code == 200
        fresh.set_tier("temp")  # everyone temp, counters kept
        assert a.post("/search", json={"query": "x"}).status_code == 429


def _upload(api: httpx.Client, parent: str, name: str, data: object, size: int) -> httpx.Response:
    op = {"op": "write", "path": parent, "name": name, "item_upload_id": 0, "overwrite": True, "dedupe_name": False}
    files = [("operation", (None, json.dumps(op))),
             ("fileinfo", (None, json.dumps({"name": name, "type": "application/octet-stream", "size": size}))),
             ("file", (name, data, "application/octet-stream"))]
    return api.post("/batch", files=files)


def test_read_concurrency_held_until_the_streamed_body_is_sent(fresh: EmulatorProcess) -> None:
    home, api = signed_up(fresh)
    with api:
        size = 32 * MiB  # far more than loopback socket buffers: an unread response stays in flight
        assert _upload(api, home, "big.bin", b"\x01" * size, size).status_code == 200
        assert api.post("/touch", json={"path": f"{home}/small.txt"}).status_code == 200
        streams = []
        try:
            for _ in range(5):  # free fs:read: 5 in flight
                s = api.stream("GET", "/read", params={"file": f"{home}/big.bin"})
                r = s.__enter__()
                streams.append((s, r))
                assert r.status_code == 200
            assert_429(api.get("/read", params={"file": f"{home}/small.txt"}), CONC_429)
            assert refusals(fresh)[-1]["ratelimit"] == {"scope": "fs:read", "kind": "concurrency"}
            assert fresh.http.get("/_emulator/tier").json()["inflight"]
            # one body read to its end frees its slot
            first, r = streams.pop(0)
            assert sum(len(c) for c in r.iter_bytes()) == size
            first.__exit__(None, None, None)
            assert api.get("/read", params={"file": f"{home}/small.txt"}).status_code == 200
        finally:
            for s, _ in streams:
                s.__exit__(None, None, None)
        # a client that goes away mid-body frees its slots too
        for _ in range(5):
            assert api.get("/read", params={"file": f"{home}/small.txt"}).status_code == 200
        # the request refused for concurrency used a window slot (fs:read: 300 per minute);
        # so far: 5 streams + 1 refused + 1 + 5 = 12 hits in the window
        for _ in range(300 - 12):
            assert api.get("/read", params={"file": f"{home}/small.txt"}).status_code == 200
        assert_429(api.get("/read", params={"file": f"{home}/small.txt"}), WINDOW_429)
        assert refusals(fresh)[-1]["ratelimit"] == {"scope": "fs:read", "kind": "window"}


def test_batch_concurrency_is_taken_before_the_body_is_read(fresh: EmulatorProcess) -> None:
    home, api = signed_up(fresh)
    gate = threading.Event()
    results: list[int] = []

    def slow_body(name: str) -> Iterator[bytes]:
        op = {"op": "write", "path": home, "name": name, "item_upload_id": 0, "overwrite": True}
        yield (f'--BND\r\nContent-Disposition: form-data; name="operation"\r\n\r\n{json.dumps(op)}\r\n'
               f'--BND\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
               "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\x02" * 65536
        gate.wait(30)  # the rest of the body only once the test has seen the third upload refused
        yield b"\x02" * 65536 + b"\r\n--BND--\r\n"

    def run(i: int) -> None:
        with client(fresh, api.headers["Authorization"][7:]) as c:
            r = c.post("/batch", content=slow_body(f"p{i}.bin"),
                       headers={"Content-Type": "multipart/form-data; boundary=BND"})
            results.append(r.status_code)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    with api:
        try:
            for t in threads:
                t.start()
            # wait until both uploads hold their slot (free fs:batch: 2 in flight)
            for _ in range(200):
                if sum(fresh.http.get("/_emulator/tier").json()["inflight"].values()) >= 2:
                    break
                threading.Event().wait(0.05)
            assert_429(_upload(api, home, "third.bin", b"x", 1), CONC_429)
            assert refusals(fresh)[-1]["ratelimit"] == {"scope": "fs:batch", "kind": "concurrency"}
        finally:
            gate.set()
            for t in threads:
                t.join(30)
        assert results == [200, 200]
        assert _upload(api, home, "fourth.bin", b"x", 1).status_code == 200


def test_ai_driver_window_and_streamed_concurrency(fresh: EmulatorProcess) -> None:
    _, api = signed_up(fresh)
    with api:
        def call(method: str, **args: object) -> httpx.Response:
            return api.post("/drivers/call", json={"interface": "puter-chat-completion", "method": method,
                                                   "args": args})

        for _ in range(30):  # free AI_RATE_LIMIT: 30 per 10 s, per method
            assert call("list").status_code == 200
        assert_429(call("list"), WINDOW_429)
        assert refusals(fresh)[-1]["ratelimit"] == {"scope": "driver:puter-chat-completion:list", "kind": "window"}
        assert call("models").status_code == 200  # another method, another bucket
        # AI_CONCURRENT (free 3): streamed answers hold their slot until they end
        fresh.set_faults({"path": "/drivers/call", "stream_hold": True, "count": 3})
        streams = []
        try:
            for _ in range(3):
                s = api.stream("POST", "/drivers/call", json={
                    "interface": "puter-chat-completion", "method": "complete",
                    "args": {"model": "echo", "stream": True,
                             "messages": [{"role": "user", "content": "one two three four five six seven"}]}})
                r = s.__enter__()
                assert r.status_code == 200
                lines = r.iter_lines()  # kept: dropping the iterator would close the connection
                assert next(lines)  # the first chunk came; the rest is held
                streams.append((s, lines))
            assert_429(call("complete", model="echo", messages=[{"role": "user", "content": "hi"}]), CONC_429)
            assert refusals(fresh)[-1]["ratelimit"] == {"scope": "driver:puter-chat-completion:complete",
                                                        "kind": "concurrency"}
            fresh.release()
            for s, lines in streams:
                for _ in lines:
                    pass
                s.__exit__(None, None, None)
            streams.clear()
            assert call("complete", model="echo", messages=[{"role": "user", "content": "hi"}]).status_code == 200
        finally:
            fresh.release()
            for s, _ in streams:
                s.__exit__(None, None, None)


def test_login_is_limited_per_fingerprint(fresh: EmulatorProcess) -> None:
    def login(ua: str) -> httpx.Response:
        return local_http.post(fresh.web_url + "/login", json={"username": fresh.username, "password": "wrong-password"},
                          headers={"User-Agent": ua}, timeout=30)

    for _ in range(10):  # 10 per 15 min per fingerprint (IP, User-Agent, Accept-*)
        assert login("tool/1").status_code == 401
    assert_429(login("tool/1"), WINDOW_429)
    assert refusals(fresh)[-1]["ratelimit"] == {"scope": "login", "kind": "window"}
    assert login("tool/2").status_code == 401  # another fingerprint
    fresh.advance_clock(15 * 60 + 1)
    assert login("tool/1").status_code == 401


def test_unlimited_tier_refuses_nothing(fresh: EmulatorProcess) -> None:
    fresh.set_tier("unlimited")
    home, api = signed_up(fresh)
    with api:
        for _ in range(70):
            assert api.post("/readdir", json={"path": home}).status_code == 200
    assert not refusals(fresh)


def test_tier_admin_route_rejects_unknown_tiers(fresh: EmulatorProcess) -> None:
    r = fresh.http.post("/_emulator/tier", json={"tier": "gold"})
    assert r.status_code == 400
    assert fresh.http.get("/_emulator/tier").json()["tier"] == "free"


# --- caps -----------------------------------------------------------------------------------


def test_batch_file_size_cap_is_exclusive(fresh: EmulatorProcess, tmp_path) -> None:  # noqa: ANN001
    home, api = signed_up(fresh)
    limit = 100 * MiB
    with api:
        for size, status in ((limit, 413), (limit - 1, 200)):
            f = tmp_path / f"f{size}"
            with open(f, "wb") as fh:
                fh.truncate(size)
            with open(f, "rb") as fh:
                r = _upload(api, home, f"f{size}.bin", fh, size)
            assert r.status_code == status, r.text
            if status == 413:
                assert r.json() == {"error": "File in batch exceeds 104857600 bytes",
                                    "message": "File in batch exceeds 104857600 bytes", "code": "too_large"}
                assert r.headers["x-needs-upgrade"] == "true"
                assert api.post("/stat", json={"path": f"{home}/f{size}.bin"}).status_code == 404
            else:
                assert r.json()["results"][0]["size"] == size


def test_batch_file_and_part_counts(fresh: EmulatorProcess) -> None:
    home, api = signed_up(fresh)
    with api:
        files = []
        for i in range(65):
            op = {"op": "write", "path": home, "name": f"f{i}.txt", "item_upload_id": i}
            files.append(("operation", (None, json.dumps(op))))
        files += [("file", (f"f{i}.txt", b"x", "text/plain")) for i in range(65)]
        r = api.post("/batch", files=files)
        assert r.status_code == 413 and r.json()["message"] == "Too many files in batch (max 64)"
        assert r.headers["x-needs-upgrade"] == "true"
        assert api.post("/stat", json={"path": f"{home}/f0.txt"}).status_code == 404
        r = api.post("/batch", files=[("operation_id", (None, str(i))) for i in range(257)])
        assert r.status_code == 413 and r.json()["message"] == "Too many parts in batch (max 256)"
        # 64 files is fine
        r = api.post("/batch", files=files[:64] + files[65:129])
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 64


def test_batch_json_fields(fresh: EmulatorProcess) -> None:
    home, api = signed_up(fresh)
    with api:
        big = json.dumps({"op": "mkdir", "path": home, "name": "bigfield", "pad": "x" * (MiB + 10)})
        r = api.post("/batch", files=[("operation", (None, big))])
        assert r.status_code == 500 and r.json()["code"] == "internal_error"
        r = api.post("/batch", files=[("operation", (None, "{not json"))])
        assert r.status_code == 500 and r.json()["code"] == "internal_error"


def test_json_body_caps_and_parsing(fresh: EmulatorProcess) -> None:
    home, api = signed_up(fresh)
    with api:
        huge = json.dumps({"fileMetadata": {"path": f"{home}/huge.txt"}, "fileContent": "x" * (50 * MiB)})
        r = api.post("/fs/write", content=huge, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json() == {"error": "request entity too large",
                                                     "message": "request entity too large",
                                                     "code": "client_bad_request"}
        assert r.headers["x-needs-upgrade"] == "true"
        ok = json.dumps({"fileMetadata": {"path": f"{home}/big49.txt"}, "fileContent": "x" * (49 * MiB)})
        assert api.post("/fs/write", content=ok, headers={"Content-Type": "application/json"}).status_code == 200
        bad = {"error": "Malformed JSON in request body", "message": "Malformed JSON in request body",
               "code": "client_bad_json"}
        for ctype in ("application/json", "text/plain;actually=json"):
            r = api.post("/stat", content=b"{nope", headers={"Content-Type": ctype})
            assert r.status_code == 400 and r.json() == bad
        body = json.dumps({"path": home})
        r = api.post("/stat", content=body, headers={"Content-Type": "text/plain;actually=json"})
        assert r.status_code == 200 and r.json()["path"] == home
        r = api.post("/stat", content=body, headers={"Content-Type": "text/plain"})
        assert r.status_code == 400  # not parsed at all
        r = api.post("/stat", content="path=" + "a" * (100 * 1024),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413


# --- more scopes, in process (thousands of requests; same app, same limiter) ----------------


def run_in_process(tmp_path, fn) -> None:  # noqa: ANN001
    """Call ``fn(emu, client_for)`` under anyio with an in-process free-tier emulator."""
    import anyio

    from puterfs.emulator import Emulator

    async def main() -> None:
        emu = Emulator(tmp_path / "emu", tier="free")
        clients: list[httpx.AsyncClient] = []

        def client_for(token: str | None, **headers: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=emu.app, client=("127.0.0.1", 40000))
            h = {"Host": "api.puter.localhost:4100", **headers}
            if token:
                h["Authorization"] = f"Bearer {token}"
            c = httpx.AsyncClient(transport=transport, base_url="http://api.puter.localhost", headers=h)
            clients.append(c)
            return c

        try:
            await fn(emu, client_for)
        finally:
            for c in clients:
                await c.aclose()
            emu.store.close()

    anyio.run(main)


def _temp_token(emu) -> tuple[str, str]:  # noqa: ANN001
    from puterfs.emulator.admin import _new_user

    u = _new_user(emu, temp=True)
    return "/" + u["username"], u["token"]


def _last_refusal(emu) -> dict:  # noqa: ANN001
    return [e for e in emu.log.entries() if e["status"] == 429][-1]["ratelimit"]


@pytest.mark.parametrize(("method", "path", "body", "scope", "limit"), [
    ("POST", "/df", {}, "fs:df", 15),
    ("GET", "/cache/last-change-timestamp", None, "fs:poll", 120),
    ("POST", "/fs/abortWrite", {"uploadId": "00000000-0000-4000-8000-000000000000"}, "fs:multipart", 600),
    ("POST", "/fs/stat", {"path": "~"}, "fs:stat", 300),
    ("POST", "/sign", {"items": []}, "fs:sign", 60),
])
def test_temp_tier_windows(tmp_path, method: str, path: str, body: dict | None, scope: str,  # noqa: ANN001
                           limit: int) -> None:
    async def check(emu, client_for) -> None:  # noqa: ANN001
        _, token = _temp_token(emu)  # a temp user: the temp tier
        api = client_for(token)
        for _ in range(limit):
            assert (await api.request(method, path, json=body)).status_code != 429
        assert_429(await api.request(method, path, json=body), WINDOW_429)
        assert _last_refusal(emu) == {"scope": scope, "kind": "window"}

    run_in_process(tmp_path, check)


def test_mutations_have_a_sustained_hourly_window(tmp_path) -> None:  # noqa: ANN001
    async def check(emu, client_for) -> None:  # noqa: ANN001
        home, token = _temp_token(emu)  # temp: fs:mutate 600 per minute, fs:mutate-sustained 1800 per hour
        api = client_for(token)
        for _ in range(3):
            for _ in range(600):
                assert (await api.post("/mkdir", json={"path": f"{home}/d"})).status_code == 200
            assert (await api.post("/mkdir", json={"path": f"{home}/d"})).status_code == 429
            assert _last_refusal(emu) == {"scope": "fs:mutate", "kind": "window"}
            emu.clock_offset += 61
        # the minute window is open again, the hour is spent
        assert_429(await api.post("/touch", json={"path": f"{home}/t.txt"}), WINDOW_429)
        assert _last_refusal(emu) == {"scope": "fs:mutate-sustained", "kind": "window"}
        emu.clock_offset += 3600 - 3 * 61 + 1  # the first 600 are an hour old
        assert (await api.post("/touch", json={"path": f"{home}/t.txt"})).status_code == 200

    run_in_process(tmp_path, check)


def test_kvstore_driver_window(tmp_path) -> None:  # noqa: ANN001
    async def check(emu, client_for) -> None:  # noqa: ANN001
        _, token = _temp_token(emu)  # temp: puter-kvstore 200 per 10 s, per method
        api = client_for(token)

        async def kv(method: str, **args: object) -> httpx.Response:
            return await api.post("/drivers/call", json={"interface": "puter-kvstore", "method": method,
                                                         "args": args})

        for _ in range(200):
            assert (await kv("get", key="k")).status_code == 200
        assert_429(await kv("get", key="k"), WINDOW_429)
        assert _last_refusal(emu) == {"scope": "driver:puter-kvstore:get", "kind": "window"}
        assert (await kv("set", key="k", value="v")).status_code == 200  # another method
        emu.clock_offset += 10.1
        assert (await kv("get", key="k")).status_code == 200

    run_in_process(tmp_path, check)


def test_signed_reads_are_counted_per_fingerprint(tmp_path) -> None:  # noqa: ANN001
    """/file (signed URLs) is limited per client fingerprint, before the signature is checked."""
    async def check(emu, client_for) -> None:  # noqa: ANN001
        a = client_for(None, **{"User-Agent": "reader/1"})
        b = client_for(None, **{"User-Agent": "reader/2"})
        q = {"uid": "x", "expires": "1", "signature": "y"}
        for _ in range(3000):
            assert (await a.get("/file", params=q)).status_code != 429
        assert_429(await a.get("/file", params=q), WINDOW_429)
        assert _last_refusal(emu) == {"scope": "fs:signed-read", "kind": "window"}
        assert (await b.get("/file", params=q)).status_code != 429

    run_in_process(tmp_path, check)
