"""KV, apps, hosting and workers in the emulator, over real HTTP: what the contract
replay (kv.jsonl, apps.jsonl) does not pin down on its own."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from puterfs.emulator.testing import local_http


def _call(user, iface: str, method: str, args: dict, driver: str | None = None) -> httpx.Response:
    body = {"interface": iface, "method": method, "args": args}
    if driver:
        body["driver"] = driver
    return local_http.post(
        f"{user.url}/drivers/call", json=body, headers={"Authorization": f"Bearer {user.token}"}, timeout=10
    )


def _result(resp: httpx.Response):
    assert resp.status_code == 200, resp.text
    return resp.json()["result"]


def test_kv_is_per_user_and_expires(emulator, puter_user) -> None:
    other_name, other_token = emulator.new_user()
    assert _result(_call(puter_user, "puter-kvstore", "set", {"key": "k", "value": {"a": [1]}})) is True
    assert _result(_call(puter_user, "puter-kvstore", "get", {"key": "k"})) == {"a": [1]}
    other = type(puter_user)(url=puter_user.url, username=other_name, token=other_token)
    assert _result(_call(other, "puter-kvstore", "get", {"key": "k"})) is None
    # an expiry in the past hides the key from get and list at once
    _call(puter_user, "puter-kvstore", "expireAt", {"key": "k", "timestamp": time.time() - 1})
    assert _result(_call(puter_user, "puter-kvstore", "get", {"key": "k"})) is None
    assert _result(_call(puter_user, "puter-kvstore", "list", {"as": "keys"})) == []


def test_kv_list_pages_to_the_end_and_cursor_is_per_namespace(puter_user) -> None:
    for i in range(7):
        _result(_call(puter_user, "puter-kvstore", "set", {"key": f"p:{i}", "value": i}))
    seen, cursor = [], None
    while True:
        args = {"as": "values", "pattern": "p:", "limit": 3}
        if cursor:
            args["cursor"] = cursor
        page = _result(_call(puter_user, "puter-kvstore", "list", args))
        seen += page["items"]
        cursor = page.get("cursor")
        if not cursor:
            break
    assert seen == list(range(7))
    first = _result(_call(puter_user, "puter-kvstore", "list", {"as": "keys", "limit": 3}))
    app_ns = {"optConfig": {"appUuid": "app-00000000-0000-4000-8000-000000000009"}}
    resp = _call(puter_user, "puter-kvstore", "list", {"as": "keys", "limit": 3, "cursor": first["cursor"], **app_ns})
    assert resp.status_code == 400 and resp.json()["message"] == "invalid kv: cursor"


def test_kv_incr_of_a_nested_non_number_is_the_upstream_error(puter_user) -> None:
    _result(_call(puter_user, "puter-kvstore", "set", {"key": "o", "value": {"a": "text"}}))
    resp = _call(puter_user, "puter-kvstore", "incr", {"key": "o", "pathAndAmountMap": {"a": 1}})
    assert resp.status_code == 400 and resp.json()["code"] == "upstream_bad_request"
    assert _result(_call(puter_user, "puter-kvstore", "get", {"key": "o"})) == {"a": "text"}


@pytest.fixture
def site(puter_user):
    headers = {"Authorization": f"Bearer {puter_user.token}"}
    local_http.post(f"{puter_user.url}/mkdir", json={"path": f"{puter_user.home}/www"}, headers=headers).raise_for_status()
    local_http.post(
        f"{puter_user.url}/batch",
        headers=headers,
        files=[
            ("operation", (None, json.dumps({"op": "write", "path": f"{puter_user.home}/www", "name": "index.html",
                                             "overwrite": True}))),
            ("file", ("index.html", b"<p>hi</p>", "text/html")),
        ],
    ).raise_for_status()
    sub = puter_user.username.lower().replace("_", "-")[:40]
    created = _result(_call(puter_user, "puter-subdomains", "create", {"object": {"subdomain": sub, "root_dir": "~/www"}}))
    return sub, created


def test_hosted_site_is_served_on_its_host_and_gone_after_delete(emulator, puter_user, site) -> None:
    sub, created = site
    assert created["root_dir"]["path"] == f"{puter_user.home}/www"
    port = emulator.url.rsplit(":", 1)[1]
    for kind in ("site", "host"):
        resp = local_http.get(f"{emulator.url}/", headers={"Host": f"{sub}.{kind}.puter.localhost:{port}"})
        assert resp.status_code == 200 and resp.text == "<p>hi</p>"
        assert resp.headers["content-type"] == "text/html; charset=utf-8"
    missing = local_http.get(f"{emulator.url}/nope.html", headers={"Host": f"{sub}.site.puter.localhost:{port}"})
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    stat = local_http.post(f"{emulator.url}/stat", json={"path": f"{puter_user.home}/www"},
                      headers={"Authorization": f"Bearer {puter_user.token}"}).json()
    assert stat["has_website"] is True and [s["subdomain"] for s in stat["subdomains"]] == [sub]
    assert _result(_call(puter_user, "puter-subdomains", "delete", {"id": {"subdomain": sub}}))["success"] is True
    gone = local_http.get(f"{emulator.url}/", headers={"Host": f"{sub}.site.puter.localhost:{port}"})
    assert gone.status_code == 404 and gone.text == "Subdomain not found"


def test_subdomains_are_global_and_private(emulator, puter_user, site) -> None:
    sub, _ = site
    name, token = emulator.new_user()
    other = type(puter_user)(url=puter_user.url, username=name, token=token)
    taken = _call(other, "puter-subdomains", "create", {"object": {"subdomain": sub, "root_dir": "~"}})
    assert taken.status_code == 409 and taken.json()["code"] == "conflict"
    assert _call(other, "puter-subdomains", "read", {"id": {"subdomain": sub}}).status_code == 404
    assert _result(_call(other, "puter-subdomains", "select", {"cursor": None})) == {"items": []}


def test_apps_names_are_global_and_only_the_owner_edits(emulator, puter_user) -> None:
    name = f"app-{puter_user.username}"[:60].replace("_", "-")
    app = _result(_call(puter_user, "puter-apps", "create", {"object": {"name": name, "index_url": "https://e.x/"}},
                        driver="es:app"))
    assert app["uid"].startswith("app-") and app["title"] == name
    other_name, other_token = emulator.new_user()
    other = type(puter_user)(url=puter_user.url, username=other_name, token=other_token)
    dup = _call(other, "puter-apps", "create", {"object": {"name": name, "index_url": "https://e.x/"}})
    assert dup.status_code == 400 and dup.json()["code"] == "app_name_already_in_use"
    assert _call(other, "puter-apps", "delete", {"id": {"name": name}}).status_code == 403
    avail = local_http.get(f"{puter_user.url}/apps/nameAvailable", params={"name": name},
                      headers={"Authorization": f"Bearer {other_token}"}).json()
    assert avail == {"name": name, "available": False}


def test_workers_answer_like_a_self_host_without_cloudflare(emulator, puter_user) -> None:
    resp = _call(puter_user, "workers", "create", {"workerName": "w1", "filePath": "~/w.js"}, driver="worker-service")
    assert resp.status_code == 503 and resp.json()["code"] == "response_timeout"
    assert _result(_call(puter_user, "workers", "getFilePaths", {})) == {"items": []}
    port = emulator.url.rsplit(":", 1)[1]
    host = local_http.get(f"{emulator.url}/", headers={"Host": f"w1.workers.puter.localhost:{port}"})
    assert host.status_code == 404 and host.json()["code"] == "not_found"
