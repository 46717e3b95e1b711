"""The request scheduler (puterfs/client/_pacing.py) and the client's use of it.

Time is trio's MockClock (autojump): the assertions are about order, counts and the mock
time at which something became possible, never about wall-clock speed.
"""

from __future__ import annotations

import json
import math

import anyio
import httpx
import pytest
import trio
import trio.testing
from test_client_support import API, TOKEN, WEB

from puterfs.client import PuterClient, RateLimited
from puterfs.client._pacing import BACKGROUND, INTERACTIVE, TIERS, Budget, Pacer, priority, scopes_for

WINDOW_429 = {"error": "Too many requests.", "message": "Too many requests.", "code": "too_many_requests"}
CONC_429 = {
    "error": "Too many concurrent requests.",
    "message": "Too many concurrent requests.",
    "code": "too_many_requests",
}
STAT = {"name": "a", "path": "/admin/a", "is_dir": False, "size": 1, "uid": "u1"}


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# -- which scopes a request is charged to --------------------------------------------------


def test_routes_map_to_the_scopes_of_limits_md() -> None:
    assert scopes_for("GET", "/read") == ("fs:read",)
    assert scopes_for("GET", "/fs/read") == ("fs:read",)
    assert scopes_for("POST", "/readdir") == ("fs:readdir", "fs:readdir-burst")
    assert scopes_for("POST", "/batch") == ("fs:batch",)
    assert scopes_for("POST", "/move") == ("fs:mutate", "fs:mutate-sustained")
    assert scopes_for("POST", "/fs/startWrite") == ("fs:multipart",)
    assert scopes_for("GET", "/cache/last-change-timestamp") == ("fs:poll",)
    assert scopes_for("POST", "/login") == ()
    body = {"interface": "puter-chat-completion", "method": "complete", "args": {}}
    assert scopes_for("POST", "/drivers/call", body) == ("drivers-call", "driver:puter-chat-completion:complete")


def test_tier_numbers() -> None:
    free, paid, temp = TIERS["free"], TIERS["paid"], TIERS["temp"]
    assert (free["fs:read"].limit, free["fs:read"].concurrency) == (300, 5)
    assert (free["fs:batch"].limit, free["fs:batch"].concurrency) == (300, 2)
    assert (free["fs:readdir-burst"].limit, free["fs:readdir-burst"].window) == (60, 10)
    assert (paid["fs:read"].limit, paid["fs:read"].concurrency) == (600, 10)
    assert (temp["fs:read"].limit, temp["fs:read"].concurrency) == (120, 3)
    assert (free["ai"].limit, free["ai"].window, free["ai"].concurrency) == (30, 10, 3)
    assert all(b.limit is None and b.concurrency is None for b in TIERS["unlimited"].values())
    with pytest.raises(ValueError):
        Pacer("gold")


def test_driver_budgets() -> None:
    p = Pacer("free")
    assert p._budget("driver:puter-chat-completion:complete") == TIERS["free"]["ai"]
    assert p._budget("driver:puter-kvstore:list") == TIERS["free"]["kv:list"]
    assert p._budget("driver:puter-kvstore:set") == TIERS["free"]["kv"]
    assert p._budget("driver:workers:create") == TIERS["free"]["workers:create"]
    assert p._budget("driver:something-else:x") == TIERS["free"]["driver"]


# -- the scheduler on its own -----------------------------------------------------------------


@pytest.mark.trio
async def test_in_flight_cap_queues_a_burst(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("free")
    held = peak = done = 0

    async def read() -> None:
        nonlocal held, peak, done
        t = await pacer.acquire(scopes_for("GET", "/read"))
        held += 1
        peak = max(peak, held)
        await trio.sleep(1)
        held -= 1
        t.release()
        done += 1

    async with trio.open_nursery() as n:
        for _ in range(12):
            n.start_soon(read)
    assert done == 12
    assert peak == 5
    assert pacer.statistics()["scopes"]["fs:read"]["in_flight"] == 0


@pytest.mark.trio
async def test_window_slides_before_the_next_admission(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("free")
    times: list[float] = []

    async def listing() -> None:
        t = await pacer.acquire(scopes_for("POST", "/readdir"))
        times.append(trio.current_time())
        t.release()

    start = trio.current_time()
    async with trio.open_nursery() as n:
        for _ in range(61):
            n.start_soon(listing)
    # 60 per 10 s: the first 60 at once, the 61st only when the first has left the window
    assert sum(1 for t in times if t == start) == 60
    assert max(times) - start >= 10
    assert pacer.waited == 1


@pytest.mark.trio
async def test_interactive_requests_go_before_background_ones(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("free")
    first = [await pacer.acquire(["fs:batch"]), await pacer.acquire(["fs:batch"])]  # cap 2: full
    order: list[str] = []

    async def upload(name: str, level: int) -> None:
        with priority(level):
            t = await pacer.acquire(["fs:batch"])
        order.append(name)
        await trio.sleep(1)
        t.release()

    async with trio.open_nursery() as n:
        for i in range(3):
            n.start_soon(upload, f"bulk{i}", BACKGROUND)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(upload, "edit", INTERACTIVE)
        await trio.testing.wait_all_tasks_blocked()
        first[0].release()  # one slot frees: the edit, last to come, gets it
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["edit"]
        first[1].release()
    assert sorted(order[1:]) == ["bulk0", "bulk1", "bulk2"]


@pytest.mark.trio
async def test_waiting_on_one_scope_does_not_block_another(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("free")
    ai = [await pacer.acquire(scopes_for("POST", "/drivers/call", {"interface": "puter-ocr", "method": "recognize"}))
          for _ in range(3)]  # AI: 3 in flight
    got_kv = trio.Event()

    async def blocked_ai() -> None:
        t = await pacer.acquire(scopes_for("POST", "/drivers/call", {"interface": "puter-ocr", "method": "recognize"}))
        t.release()

    async def kv() -> None:
        t = await pacer.acquire(scopes_for("POST", "/drivers/call", {"interface": "puter-kvstore", "method": "get"}))
        got_kv.set()
        t.release()

    async with trio.open_nursery() as n:
        n.start_soon(blocked_ai)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(kv)
        await got_kv.wait()  # the kv call shares drivers-call with the waiting AI call
        assert pacer.statistics()["waiting"] == 1
        for t in ai:
            t.release()


@pytest.mark.trio
async def test_deadline_and_cancellation(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("free", {"fs:stat": Budget(1, 60)})
    t = await pacer.acquire(["fs:stat"])
    t.release()
    with pytest.raises(RateLimited) as info:
        await pacer.acquire(["fs:stat"], deadline=trio.current_time() + 5)
    assert info.value.code == "budget_exhausted"
    with trio.move_on_after(5):
        await pacer.acquire(["fs:stat"])
    assert pacer.statistics()["waiting"] == 0
    t = await pacer.acquire(["fs:stat"])  # the window slid; nothing leaked
    assert trio.current_time() >= 60
    t.release()


@pytest.mark.trio
async def test_429s_tighten_and_a_quiet_window_restores(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("free")
    tickets = [await pacer.acquire(["fs:read"]) for _ in range(3)]
    # another client on the account holds the rest: the server refuses our 3rd
    tickets[2].rate_limited(concurrent=True)
    tickets[2].release()
    assert pacer.statistics()["scopes"]["fs:read"]["concurrency"] == 2
    # window 429 with 2 of ours in the window: the limit drops to 2, the next waits for the slide
    w = await pacer.acquire(["fs:stat"])
    w2 = await pacer.acquire(["fs:stat"])
    w3 = await pacer.acquire(["fs:stat"])
    w3.rate_limited(concurrent=False)
    w3.release()
    assert pacer.statistics()["scopes"]["fs:stat"]["limit"] == 2
    w.release()
    w2.release()
    start = trio.current_time()
    again = await pacer.acquire(["fs:stat"])
    assert trio.current_time() - start >= 60
    again.release()
    for t in tickets[:2]:
        t.release()
    await trio.sleep(120)
    t = await pacer.acquire(["fs:read"])
    st = pacer.statistics()["scopes"]
    assert (st["fs:read"]["concurrency"], st["fs:stat"]["limit"]) == (5, 600)
    t.release()


@pytest.mark.trio
async def test_a_429_with_nothing_of_ours_to_wait_for_backs_off(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("unlimited")
    waits = []
    for _ in range(4):
        start = trio.current_time()
        t = await pacer.acquire(["fs:read"])
        waits.append(trio.current_time() - start)
        t.rate_limited(concurrent=False)
        t.release()
    assert waits[0] == waits[1] == 0  # the first retry goes at once
    assert waits[1] < waits[2] < waits[3] <= 60.0 * 1.02 + 1


# -- the client -------------------------------------------------------------------------------


class StrictServer:
    """A mock Puter that enforces an in-flight cap on /read and counts what it refused."""

    def __init__(self, cap: int, *, hold: float = 0.5) -> None:
        self.cap = cap
        self.hold = hold
        self.in_flight = 0
        self.peak = 0
        self.calls = 0
        self.refused = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.in_flight >= self.cap:
            self.refused += 1
            return httpx.Response(429, json=CONC_429)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(self.hold)
        finally:
            self.in_flight -= 1
        return httpx.Response(200, content=b"x")


def _client(handler, **kw) -> PuterClient:  # noqa: ANN001
    c = PuterClient(
        token=TOKEN, api_url=API, web_url=WEB, transport=httpx.MockTransport(handler),
        retry_base_delay=0.001, retry_max_delay=0.01, **kw,
    )
    c.username = "admin"
    return c


@pytest.mark.trio
async def test_client_burst_of_reads_draws_no_429(clock: trio.testing.MockClock) -> None:
    server = StrictServer(cap=5)
    async with _client(server) as client, trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(client.fs_read, f"/admin/f{i}")
    assert (server.calls, server.refused, server.peak) == (12, 0, 5)


@pytest.mark.anyio
async def test_client_burst_of_reads_draws_no_429_real_clock() -> None:
    server = StrictServer(cap=5, hold=0.01)
    async with _client(server) as client, anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(client.fs_read, f"/admin/f{i}")
    assert (server.calls, server.refused) == (12, 0)


@pytest.mark.trio
async def test_unknown_cap_is_learned_from_429s(clock: trio.testing.MockClock) -> None:
    server = StrictServer(cap=3)
    async with _client(server, tier="unlimited") as client, trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(client.fs_read, f"/admin/f{i}")
    # every read succeeded; after the first refusals the client kept under the cap
    assert server.calls - server.refused == 12
    assert server.refused <= 9
    assert client.pacer.statistics()["scopes"]["fs:read"]["concurrency"] <= 3


@pytest.mark.trio
async def test_window_429_waits_and_succeeds(clock: trio.testing.MockClock) -> None:
    answers = [httpx.Response(429, json=WINDOW_429)] * 2 + [httpx.Response(200, json=STAT)]
    calls: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(trio.current_time())
        return answers[len(calls) - 1]

    async with _client(handler, max_retries=1) as client:  # (0 would turn off 429 retries too)
        entry = await client.fs_stat("/admin/a")
    assert entry["uid"] == "u1"
    assert len(calls) == 3
    # nothing of ours to wait for: the first retry at once, then it backs off (no Retry-After needed)
    assert calls[1] == calls[0] and calls[2] > calls[1]


@pytest.mark.trio
async def test_429s_retry_until_the_deadline_then_fail(clock: trio.testing.MockClock) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(429, json=WINDOW_429)

    async with _client(handler, max_retries=1, deadline=200.0) as client:
        start = trio.current_time()
        with pytest.raises(RateLimited):
            await client.fs_stat("/admin/a")
        assert trio.current_time() - start <= 200.0
    assert calls > 2  # not bounded by max_retries


@pytest.mark.trio
async def test_login_is_not_retried_on_429(clock: trio.testing.MockClock) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(429, json=WINDOW_429)

    async with _client(handler) as client:
        with pytest.raises(RateLimited):
            await client.login("alice", "secret-pw")
    assert calls == 1


@pytest.mark.trio
async def test_a_stream_holds_its_slot_until_closed(clock: trio.testing.MockClock) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["interface"] == "puter-chat-completion"
        async def body():  # a body that arrives over time, as a real stream does
            yield b'{"type":"text","text":"hi"}\n'

        return httpx.Response(200, content=body(), headers={"content-type": "application/x-ndjson"})

    async with _client(handler) as client:
        async with client._open_stream({"interface": "puter-chat-completion", "method": "complete", "args": {}}) as r:
            st = client.pacer.statistics()["scopes"]
            assert st["driver:puter-chat-completion:complete"]["in_flight"] == 1
            await r.aread()
        st = client.pacer.statistics()["scopes"]
        assert st["driver:puter-chat-completion:complete"]["in_flight"] == 0
        assert st["drivers-call"]["in_window"] == 1


def test_the_tier_comes_from_the_constructor_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUTER_TIER", raising=False)
    assert PuterClient(token="t", api_url=API).tier == "free"
    assert PuterClient(token="t", api_url=API, tier="paid").tier == "paid"
    monkeypatch.setenv("PUTER_TIER", "temp")
    assert PuterClient(token="t", api_url=API).tier == "temp"
    with pytest.raises(ValueError):
        PuterClient(token="t", api_url=API, tier="gold")
    assert math.isinf(Pacer("unlimited")._scope("fs:read").limit)


@pytest.mark.trio
async def test_background_work_leaves_room_for_interactive_requests(clock: trio.testing.MockClock) -> None:
    pacer = Pacer("temp")  # fs:write: 30 per minute, 3 in flight
    with priority(BACKGROUND):
        bulk = []
        with trio.move_on_after(1):
            while True:
                bulk.append(await pacer.acquire(["fs:write"]))
    assert len(bulk) == 2  # of 3 in flight, one is left for others
    t = await pacer.acquire(["fs:write"])  # an edit gets it at once
    for b in [*bulk, t]:
        b.release()
    with priority(BACKGROUND):
        n = 0
        with trio.move_on_after(30):
            while True:
                (await pacer.acquire(["fs:write"])).release()
                n += 1
    assert n == 30 - 3 - 5  # the window: 30, minus what was used, minus the reserve (5)
    t = await pacer.acquire(["fs:write"])  # still room for an interactive request
    t.release()


@pytest.mark.anyio
async def test_a_temporary_account_gets_the_temp_tier() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"username": "alice", "is_temp": True})

    async with PuterClient(token=TOKEN, api_url=API, transport=httpx.MockTransport(handler)) as c:
        assert c.tier == "free"
        await c.whoami()
        assert c.tier == "temp"
    async with PuterClient(token=TOKEN, api_url=API, transport=httpx.MockTransport(handler), tier="paid") as c:
        await c.whoami()
        assert c.tier == "paid"  # chosen: kept


# -- against the strict emulator (free tier, tests/conftest.py) ------------------------------


@pytest.mark.anyio
async def test_ai_driver_caps_are_paced_against_the_strict_emulator(emulator) -> None:  # noqa: ANN001
    """The AI drivers' own limits (LIMITS.md: free 30 per 10 s and 3 in flight per method) are
    budgets of the client: of 5 streamed chats at once, 3 go out and 2 wait in the client while
    the first 3 are held open, instead of drawing 429s; all 5 answer once they are let go."""
    _, token = emulator.new_user(temp=False)  # a signed-up account: the free tier on both sides
    scope = "driver:puter-chat-completion:complete"
    texts: dict[int, str] = {}
    async with PuterClient(token=token, api_url=emulator.url) as client:
        await client.whoami()
        emulator.clear_log()
        emulator.set_faults({"path": "/drivers/call", "stream_hold": True, "count": 3})

        started: set[int] = set()  # streams whose first piece arrived: held by the emulator now

        async def one(i: int) -> None:
            stream = await client.ai_chat(f"burst {i} of five", {"model": "echo", "stream": True})
            parts = []
            async for text, _ in stream:
                started.add(i)
                parts.append(text)
            texts[i] = "".join(parts)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(one, i)
                with anyio.fail_after(60):
                    while True:
                        stats = client.pacer.statistics()
                        # in flight for the client is not yet held by the emulator: a hold that
                        # begins after the release below would wait for another one
                        held = len(started) == 3
                        if held and stats["scopes"].get(scope, {}).get("in_flight") == 3 and stats["waiting"] == 2:
                            break
                        await anyio.sleep(0.05)
                await anyio.to_thread.run_sync(emulator.release)
        finally:
            emulator.release()
    assert sorted(texts) == [0, 1, 2, 3, 4] and all(f"burst {i}" in texts[i] for i in texts)
    calls = [r for r in emulator.log() if r["path"] == "/drivers/call"]
    assert [r["status"] for r in calls] == [200] * 5  # no 429 at all
