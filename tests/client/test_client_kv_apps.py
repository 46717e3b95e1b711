"""KV, apps, hosting, workers and usage: putergenai's flat methods and the namespaced areas,
against the emulator over real HTTP (both event loops) and, with respx, against the
exchanges recorded from a real 26.07 server (kv.jsonl, apps.jsonl)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import httpx
import pytest
import respx
from test_client_support import API, TOKEN, exchange, recorded_response

from puterfs.client import AlreadyExists, BadRequest, NotFound, PuterClient, ServerError
from puterfs.emulator.testing import local_http

pytestmark = pytest.mark.anyio


@pytest.fixture
async def puter(puter_user) -> AsyncIterator[PuterClient]:
    async with PuterClient(
        token=puter_user.token, api_url=puter_user.url, web_url=puter_user.web_url,
        retry_base_delay=0.01, retry_max_delay=0.1,
    ) as client:
        yield client


def _sent(route: respx.Route) -> dict:
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    return json.loads(request.content)


# ------------------------------------------------------------------ against the emulator


async def test_kv_flat_methods(puter: PuterClient) -> None:
    assert (await puter.kv_set("greeting", "hello"))["result"] is True
    assert await puter.kv_get("greeting") == "hello"
    assert await puter.kv_get("nope") is None
    await puter.kv_set("user:1", {"name": "Ann", "tags": ["a"], "nested": {"x": 1}})
    assert await puter.kv_incr("count", 1) == 1
    assert await puter.kv_incr("count", 10) == 11
    assert await puter.kv_decr("count", 1) == 10
    assert await puter.kv_incr("stats", {"views": 1, "clicks.today": 2}) == {"views": 1, "clicks": {"today": 2}}
    assert await puter.kv_add("list1", "a") == ["a"]
    assert await puter.kv_add("list1", ["b", "c"]) == ["a", "b", "c"]
    assert await puter.kv_update("user:1", {"name": "Bea", "nested.y": 2}) == {
        "name": "Bea", "tags": ["a"], "nested": {"x": 1, "y": 2}}
    assert await puter.kv_remove("user:1", "nested.x", "tags") == {"name": "Bea", "nested": {"y": 2}}
    assert await puter.kv_list() == ["count", "greeting", "list1", "stats", "user:1"]
    assert await puter.kv_list("s*") == ["stats"]
    assert await puter.kv_list("*1") == ["list1", "user:1"]  # a glob, not only a prefix
    entries = await puter.kv_list("g*", return_values=True)
    assert entries == [{"key": "greeting", "value": "hello"}]
    page = await puter.kv_list(limit=2)
    assert page["items"] == ["count", "greeting"] and page["cursor"]
    rest = await puter.kv_list(limit=10, cursor=page["cursor"])
    assert rest["items"] == ["list1", "stats", "user:1"] and "cursor" not in rest
    assert (await puter.kv_expire("greeting", 3600))["success"] is True
    assert (await puter.kv_expire_at("count", datetime.now(timezone.utc).replace(year=2000)))["success"] is True
    assert await puter.kv_get("count") is None  # expired
    assert await puter.kv_delete("stats") is True
    assert await puter.kv_delete("stats") is True
    assert (await puter.kv_flush("list*"))["deleted"] == 1
    assert await puter.kv_list() == ["greeting", "user:1"]
    assert (await puter.kv_flush())["result"] is True
    assert await puter.kv_list() == []


async def test_kv_errors_are_typed_and_value_errors(puter: PuterClient) -> None:
    with pytest.raises(BadRequest, match="1024 byte"):
        await puter.kv_set("€" * 342, 1)  # 342 characters, 1026 UTF-8 bytes
    with pytest.raises(BadRequest, match="408576"):
        await puter.kv_set("big", "v" * 408576)
    await puter.kv_set("text", "abc")
    with pytest.raises(ValueError) as info:  # what a putergenai caller catches
        await puter.kv_incr("text", 1)
    assert info.value.code == "upstream_bad_request"
    with pytest.raises(BadRequest):
        await puter.kv_set("", 1)
    with pytest.raises(BadRequest):
        await puter.kv_remove("text")


async def test_kv_namespaced_api(puter: PuterClient) -> None:
    app = "app-00000000-0000-4000-8000-000000000001"
    assert await puter.kv.set("scoped", "in app", app=app) is True
    assert await puter.kv.get("scoped") is None
    assert await puter.kv.get("scoped", app=app) == "in app"
    assert await puter.kv.set_many({"b:1": 1, "b:2": 2}) is True
    assert await puter.kv.get(["b:1", "b:2", "b:3"]) == [1, 2, None]
    await puter.kv.set("soon", 1, expire_at=time.time() - 1)
    assert await puter.kv.get("soon") is None
    many = {f"k{i:04d}": i for i in range(1100)}
    await puter.kv.set_many(many)
    listed = await puter.kv.list("k*")
    assert listed == sorted(many)  # more than one 1000-key page
    page = await puter.kv.page("k", limit=5, offset=1000, include_total=True)
    assert page["items"] == [f"k{i:04d}" for i in range(1000, 1005)] and page["total"] == 1100
    assert await puter.kv.flush(app=app) is None
    assert await puter.kv.get("scoped", app=app) is None


async def test_apps_flat_and_namespaced(puter: PuterClient, puter_user) -> None:
    name = f"app-{puter_user.username}".replace("_", "-")[:50]
    app = await puter.apps_create({"name": name, "indexURL": "https://example.com/a/", "maximizeOnStart": True})
    assert app["name"] == name and app["title"] == name and app["maximize_on_start"] is True
    assert app["uid"].startswith("app-")
    with pytest.raises(AlreadyExists):
        await puter.apps_create({"name": name, "indexURL": "https://example.com/b/"})
    deduped = await puter.apps_create({"name": name, "indexURL": "https://example.com/b/", "dedupeName": True})
    assert deduped["name"].startswith(name + "-")
    assert (await puter.apps_get(name))["uid"] == app["uid"]
    assert (await puter.apps_get(app["uid"]))["name"] == name
    assert (await puter.apps.get(name, stats_period="all"))["stats"]["open_count"] == 0
    listed = await puter.apps_list()
    assert [a["name"] for a in listed["items"]] == [name, deduped["name"]]
    updated = await puter.apps_update(name, {"title": "Mine", "description": "d"})
    assert updated["title"] == "Mine" and updated["description"] == "d"
    assert await puter.apps.name_available(name) is False
    assert (await puter.apps_delete(name)) == {"success": True, "uid": app["uid"]}
    with pytest.raises(NotFound):
        await puter.apps_get(name)
    with pytest.raises(BadRequest, match="unknown app attribute"):
        await puter.apps_create({"name": "x", "indexURL": "https://e.x/", "colour": "red"})
    assert await puter.apps.name_available(name) is True
    assert set(await puter.apps.developer_profile()) >= {"first_name", "paypal"}


async def test_hosting_serves_the_directory(puter: PuterClient, puter_user, emulator) -> None:
    await puter.fs_mkdir("site")
    await puter.fs_write("site/index.html", "<h1>hi</h1>")
    sub = puter_user.username.lower().replace("_", "-")[:40]
    site = await puter.hosting_create({"subdomain": sub, "root_dir": "site"})
    assert site["subdomain"] == sub and site["root_dir"]["path"] == f"{puter_user.home}/site"
    assert (await puter.hosting_get(sub))["uid"] == site["uid"]
    assert [s["subdomain"] for s in (await puter.hosting_list())["items"]] == [sub]
    url = puter.hosting.url(sub)
    assert url == f"http://{sub}.site.puter.localhost:{emulator.url.rsplit(':', 1)[1]}"
    host = url.split("://", 1)[1]
    async with local_http.AsyncClient() as http:
        page = await http.get(emulator.url + "/", headers={"Host": host})
    assert page.status_code == 200 and page.text == "<h1>hi</h1>"
    with pytest.raises(AlreadyExists):
        await puter.hosting_create({"subdomain": sub, "root_dir": "~/site"})
    with pytest.raises(BadRequest, match="reserved"):
        await puter.hosting_create({"subdomain": "www", "root_dir": "~/site"})
    await puter.fs_mkdir("site2")
    moved = await puter.hosting_update(sub, {"dirPath": "~/site2"})
    assert moved["root_dir"]["path"] == f"{puter_user.home}/site2"
    assert (await puter.hosting_delete(sub))["success"] is True
    with pytest.raises(NotFound):
        await puter.hosting_get(sub)


async def test_workers_on_a_server_without_cloudflare(puter: PuterClient, puter_user) -> None:
    await puter.fs_write("worker.js", "router.get('/', () => new Response('hi'));")
    with pytest.raises(ServerError, match="Cloudflare Workers not configured") as info:
        await puter.workers_create({"name": "w1", "filePath": "~/worker.js"})
    assert isinstance(info.value, ValueError)
    # puter.js's sequence made the worker's sandbox app first
    assert (await puter.apps_get("sandbox-w1"))["index_url"] == "https://worker-sandbox.puter.com/"
    assert await puter.workers_list() == {"items": []}
    with pytest.raises(NotFound):
        await puter.workers_get("w1")
    with pytest.raises(NotFound):
        await puter.workers_delete("w1")
    with pytest.raises(BadRequest):
        await puter.workers_create({"name": "bad name", "filePath": "~/worker.js"})


async def test_usage(puter: PuterClient) -> None:
    usage = await puter.auth_get_monthly_usage()
    assert usage["usage"]["total"] == 0 and usage["allowanceInfo"]["remaining"] > 0
    assert await puter.auth_get_detailed_app_usage() == {}
    with pytest.raises(NotFound):
        await puter.auth_get_detailed_app_usage(app_id="no-such-app")


# ------------------------------------------------------------------ against the recorded exchanges


@pytest.mark.parametrize(
    ("call", "record"),
    [
        (lambda c: c.kv_set("greeting", "hello"), "set string"),
        (lambda c: c.kv_get("greeting"), "get string"),
        (lambda c: c.kv_get("nope"), "get missing key"),
        (lambda c: c.kv_incr("count", 10), "incr by 10"),
        (lambda c: c.kv_incr("stats", {"views": 1, "clicks.today": 2}), "incr nested paths"),
        (lambda c: c.kv_add("list1", "a"), "add to a list (new key)"),
        (lambda c: c.kv_add("list1", ["b", "c"]), "add another item"),
        (lambda c: c.kv_update("user:1", {"name": "Bea", "nested.y": 2}), "update paths"),
        (lambda c: c.kv_remove("user:1", "nested.x", "tags"), "remove paths"),
        (lambda c: c.kv_expire("greeting", 3600), "expire (ttl seconds)"),
        (lambda c: c.kv_expire_at("count", 1796119413), "expireAt (timestamp seconds)"),
        (lambda c: c.kv_delete("page:0"), "del"),
        (lambda c: c.kv_flush(), "flush"),
        (lambda c: c.kv.get(["greeting", "user:1", "nope"]), "get several keys (array)"),
        (lambda c: c.kv.update("user:1", {"n": 2}, ttl=3600), "update with ttl"),
        (lambda c: c.kv.set("scoped", "in app ns", app="app-00000000-0000-4000-8000-000000000001"),
         "set with optConfig.appUuid"),
    ],
)
async def test_kv_wire_shape_matches_puter_js(client: PuterClient, router: respx.MockRouter, call, record) -> None:
    rec = exchange("kv.jsonl", record)
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    result = await call(client)
    sent = _sent(route)
    assert {k: sent[k] for k in ("interface", "method", "args")} == {
        k: rec["request"][k] for k in ("interface", "method", "args")}
    envelope = rec["response"]
    assert result in (envelope, envelope.get("result"), True)


async def test_kv_list_pages_like_puter_js(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("kv.jsonl", "list keys with pattern 'page:*'")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    assert await client.kv_list("page:*") == rec["response"]["result"]["items"]
    assert _sent(route)["args"] == {"as": "keys", "pattern": "page:", "limit": 1000}
    first, second, third = (exchange("kv.jsonl", f"list page {n}" + (" (cursor)" if n > 1 else " (limit 2, includeTotal)"))
                            for n in (1, 2, 3))
    route.side_effect = [recorded_response(second), recorded_response(third)]
    page = await client.kv_list("page:*", limit=2, cursor=first["response"]["result"]["cursor"])
    assert page == second["response"]["result"]
    assert _sent(route)["args"]["cursor"] == first["response"]["result"]["cursor"]


async def test_kv_errors_from_the_recording(client: PuterClient, router: respx.MockRouter) -> None:
    for name, cls, call in [
        ("set key of 1025 bytes", BadRequest, lambda: client.kv_set("k" * 1025, 1)),
        ("incr a string value", BadRequest, lambda: client.kv_incr("greeting", 1)),
        ("list with offset 6000", BadRequest, lambda: client.kv.page(limit=1, offset=6000)),
        ("kv call without auth", ValueError, lambda: client.kv_get("x")),
    ]:
        router.post(f"{API}/drivers/call").mock(return_value=recorded_response(exchange("kv.jsonl", name)))
        with pytest.raises(cls) as info:
            await call()
        assert isinstance(info.value, ValueError) and info.value.message == exchange("kv.jsonl", name)["response"]["message"]


async def test_apps_and_hosting_wire_shapes(client: PuterClient, router: respx.MockRouter) -> None:
    cases = [
        (lambda: client.apps_create({"name": "exalice-app1", "indexURL": "https://example.com/app1/"}),
         "puter.apps.create(name, indexURL)"),
        (lambda: client.apps_get("exalice-app1"), "puter.apps.get(name)"),
        (lambda: client.apps_update("exalice-app1", {"title": "App One", "description": "updated"}),
         "puter.apps.update(name, {title, description})"),
        (lambda: client.apps_delete("exalice-app1-renamed"), "puter.apps.delete('exalice-app1-renamed')"),
        (lambda: client.hosting_get("exalicesite"), "puter.hosting.get(subdomain)"),
        (lambda: client.hosting_delete("exalicesite"), "puter.hosting.delete('exalicesite')"),
        (lambda: client.hosting_create({"subdomain": "exalicesite2", "root_dir": "/exalice/site"}),
         "puter.hosting.create(subdomain, absolute path)"),
    ]
    for call, name in cases:
        rec = exchange("apps.jsonl", name)
        route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
        assert await call() == rec["response"]["result"]
        sent = _sent(route)
        assert {k: sent.get(k) for k in ("interface", "driver", "method", "args")} == {
            k: rec["request"].get(k) for k in ("interface", "driver", "method", "args")}, name


async def test_apps_list_follows_cursors(client: PuterClient, router: respx.MockRouter) -> None:
    page1 = exchange("apps.jsonl", "puter.apps.list({limit:1, includeTotal:true})")
    rest = exchange("apps.jsonl", "puter.apps.list()")
    route = router.post(f"{API}/drivers/call").mock(side_effect=[recorded_response(page1), recorded_response(rest)])
    listed = await client.apps_list()
    assert listed["items"] == page1["response"]["result"]["items"] + rest["response"]["result"]["items"]
    assert _sent(route)["args"]["cursor"] == page1["response"]["result"]["cursor"]


async def test_workers_create_replays_the_puter_js_sequence(client: PuterClient, router: respx.MockRouter) -> None:
    whoami = exchange("apps.jsonl", "puter.workers.create step 1: whoami (is_user_token?)")
    router.get(f"{API}/whoami").mock(return_value=recorded_response(whoami))
    recs = [exchange("apps.jsonl", n) for n in (
        "puter.workers.create step 2: apps.get('sandbox-w1')",
        "puter.workers.create step 3: apps.create('sandbox-w1', 'https://worker-sandbox.puter.com/')",
        "puter.workers.create step 5: workers create",
    )]
    route = router.post(f"{API}/drivers/call").mock(side_effect=[recorded_response(r) for r in recs])
    with pytest.raises(ServerError, match="Cloudflare") as info:
        await client.workers_create({"name": "w1", "filePath": "~/worker.js"})
    assert info.value.status == 503
    bodies = [json.loads(c.request.content) for c in route.calls]
    assert [b["method"] for b in bodies] == ["read", "create", "create"]
    last = recs[-1]["request"]["args"]
    assert bodies[-1]["args"] == {**last, "authorization": TOKEN, "appId": recs[1]["response"]["result"]["uid"]}


# ------------------------------------------------------------------ net_fetch and workers_exec


async def test_net_fetch_keeps_the_token_unless_asked(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.get("https://example.org/data").mock(return_value=httpx.Response(200, json={"a": 1}))
    assert await client.net_fetch("https://example.org/data", params={"q": "1"}, return_json=True) == {"a": 1}
    request = route.calls.last.request
    assert "authorization" not in request.headers and request.url.params["q"] == "1"
    assert json.loads(await client.net_fetch("https://example.org/data")) == {"a": 1}  # bytes
    await client.net_fetch("https://example.org/data", include_auth=True)
    assert route.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"


async def test_net_fetch_retries_only_safe_methods(client: PuterClient, router: respx.MockRouter) -> None:
    busy = httpx.Response(503, text="busy")
    get = router.get("https://example.org/x").mock(side_effect=[busy, httpx.Response(200, text="ok")])
    assert await client.net_fetch("https://example.org/x") == b"ok" and get.call_count == 2
    post = router.post("https://example.org/x").mock(side_effect=[busy, httpx.Response(200, text="ok")])
    with pytest.raises(ServerError) as info:
        await client.net_fetch("https://example.org/x", method="POST", data=b"\x00raw")
    assert post.call_count == 1 and post.calls.last.request.content == b"\x00raw"
    assert isinstance(info.value, ValueError) and info.value.status == 503
    with pytest.raises(BadRequest):
        await client.net_fetch("file:///etc/passwd")


async def test_workers_exec_sends_puter_auth(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post("https://w1.puter.work/api").mock(return_value=httpx.Response(200, json={"ok": True}))
    out = await client.workers_exec("https://w1.puter.work/api", method="POST", json_body={"x": 1}, return_json=True)
    request = route.calls.last.request
    assert out == {"ok": True} and request.headers["puter-auth"] == TOKEN
    assert json.loads(request.content) == {"x": 1} and "authorization" not in request.headers
    await client.workers_exec("https://w1.puter.work/api", method="POST", headers={"x-puter-no-auth": "1"})
    assert "puter-auth" not in route.calls.last.request.headers
    assert "x-puter-no-auth" not in route.calls.last.request.headers


async def test_net_fetch_over_real_http(puter: PuterClient, emulator) -> None:
    assert await puter.net_fetch(emulator.url + "/healthcheck", return_json=True) == {"ok": True}
    with pytest.raises(NotFound):
        await puter.workers_exec(emulator.url + "/", headers={"Host": "w1.workers.puter.localhost"})
