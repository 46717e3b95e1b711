"""The behaviours of the errata (README top, fs-extra.jsonl), one test each, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from puterfs.emulator.testing import EmulatorProcess, local_http

NOT_FOUND = {"error": "Not Found", "message": "Not Found", "code": "not_found"}


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("errata-emu"), tier="free") as proc:
        yield proc


@pytest.fixture
def home_api(emu: EmulatorProcess) -> Iterator[tuple[str, httpx.Client]]:
    name, token = emu.new_user(temp=False)
    with local_http.Client(base_url=emu.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        yield "/" + name, api


def upload(api: httpx.Client, parent: str, name: str, data: bytes = b"hi", **op: object) -> httpx.Response:
    write = {"op": "write", "path": parent, "name": name, "item_upload_id": 0, "overwrite": False,
             "dedupe_name": False, **op}
    return api.post("/batch", files=[("operation", (None, json.dumps(write))),
                                     ("fileinfo", (None, json.dumps({"name": name, "type": "text/plain",
                                                                     "size": len(data)}))),
                                     ("file", (name, data, "text/plain"))])


def ts(api: httpx.Client) -> int:
    return api.get("/cache/last-change-timestamp").json()["timestamp"]


def err(r: httpx.Response) -> tuple[int, str, str]:
    return r.status_code, r.json()["code"], r.json()["message"]


def test_touch_does_not_move_the_change_timestamp(home_api: tuple[str, httpx.Client]) -> None:
    home, api = home_api
    before = ts(api)
    assert api.post("/touch", json={"path": f"{home}/t.txt"}).status_code == 200
    assert api.post("/touch", json={"path": f"{home}/t.txt"}).status_code == 200
    assert api.post("/fs/touch", json={"path": f"{home}/t2.txt"}).status_code == 200
    assert api.post("/touch", json={"path": f"{home}/tp/a/b.txt", "create_missing_parents": True}).status_code == 200
    assert ts(api) == before
    assert api.post("/stat", json={"path": f"{home}/tp/a"}).json()["is_dir"] is True
    assert api.post("/mkdir", json={"path": f"{home}/cmp"}).status_code == 200
    assert ts(api) > before  # every other mutation moves it
    r = api.post("/touch", json={"path": "/x.txt"})
    assert err(r) == (400, "bad_request", "Cannot touch in root")


def test_new_names_lose_trailing_whitespace_but_renames_keep_it(home_api: tuple[str, httpx.Client]) -> None:
    home, api = home_api
    assert upload(api, home, "trail.txt ").json()["results"][0]["name"] == "trail.txt"
    assert upload(api, home, " lead.txt").json()["results"][0]["name"] == " lead.txt"  # leading kept
    r = api.post("/fs/write", json={"fileMetadata": {"path": f"{home}/fsw.txt "}, "fileContent": "x"})
    assert r.json()["fsEntry"]["name"] == "fsw.txt"
    assert api.post("/mkdir", json={"path": f"{home}/dir "}).json()["name"] == "dir"
    assert api.post("/fs/mkdir", json={"path": f"{home}/dir2 "}).json()["name"] == "dir2"
    r = api.post("/copy", json={"source": f"{home}/trail.txt", "destination": home, "new_name": "d.txt "})
    assert r.json()[0]["copied"]["name"] == "d.txt"
    # kept by /rename, /fs/rename and /move new_name: the entry is then unreachable by path
    r = api.post("/rename", json={"path": f"{home}/d.txt", "new_name": "b.txt "})
    uid = r.json()["uid"]
    assert r.json()["name"] == "b.txt "
    assert api.post("/stat", json={"path": f"{home}/b.txt "}).status_code == 404
    assert api.post("/stat", json={"path": f"{home}/b.txt"}).status_code == 404
    assert api.post("/stat", json={"uid": uid}).json()["name"] == "b.txt "
    names = [e["name"] for e in api.post("/readdir", json={"path": home}).json()]
    assert "b.txt " in names and " lead.txt" in names and "trail.txt" in names
    api.post("/rename", json={"uid": uid, "new_name": "b.txt"}).raise_for_status()
    r = api.post("/move", json={"source": f"{home}/b.txt", "destination": home, "new_name": "c.txt "})
    assert r.json()["moved"]["name"] == "c.txt "
    assert api.post("/fs/rename", json={"path": f"{home}/trail.txt", "new_name": "e.txt "}).json()["name"] == "e.txt "
    r = api.post("/rename", json={"path": f"{home}/fsw.txt", "new_name": "   "})
    assert err(r) == (400, "bad_request", "Name cannot be empty")


def test_missing_parent_is_not_found_naming_the_parent(home_api: tuple[str, httpx.Client]) -> None:
    home, api = home_api
    assert err(api.post("/mkdir", json={"path": f"{home}/x/y"})) == (
        404, "not_found", f"Parent path does not exist: {home}/x")
    assert err(api.post("/fs/mkdir", json={"path": f"{home}/q/r"})) == (
        404, "not_found", f"Parent path does not exist: {home}/q")
    r = api.post("/fs/write", json={"fileMetadata": {"path": f"{home}/q/r/f.txt"}, "fileContent": "x"})
    assert err(r) == (404, "not_found", f"Parent path does not exist: {home}/q/r")
    assert err(api.post("/touch", json={"path": f"{home}/nope/x.txt"})) == (
        404, "not_found", f"Parent path does not exist: {home}/nope")
    r = upload(api, f"{home}/x/y", "f.txt")
    assert r.status_code == 218
    assert r.json()["results"] == [{"error": True, "status": 404, "code": "not_found",
                                    "message": f"Parent path does not exist: {home}/x/y"}]
    r = api.post("/batch", json={"operations": [{"op": "mkdir", "path": f"{home}/m/n", "name": "o"}]})
    assert r.status_code == 218 and r.json()["results"][0]["message"] == f"Parent path does not exist: {home}/m/n"
    # with create_missing_parents both work
    assert upload(api, f"{home}/x/y", "f.txt", create_missing_parents=True).status_code == 200
    r = api.post("/batch", json={"operations": [{"op": "mkdir", "path": f"{home}/m/n", "name": "o",
                                                 "create_missing_parents": True}]})
    assert r.status_code == 200
    # copy and move to a missing destination are entry lookups
    r = api.post("/copy", json={"source": f"{home}/x/y/f.txt", "destination": f"{home}/nope"})
    assert err(r) == (404, "subject_does_not_exist", f"Entry not found: path={home}/nope")


def test_a_file_in_the_parent_chain_is_a_conflict(home_api: tuple[str, httpx.Client]) -> None:
    home, api = home_api
    upload(api, home, "d.txt").raise_for_status()
    want = (409, "conflict", f"Path is not a directory: {home}/d.txt")
    assert err(api.post("/mkdir", json={"path": f"{home}/d.txt/sub"})) == want
    assert err(api.post("/mkdir", json={"path": f"{home}/d.txt/sub/x", "create_missing_parents": True})) == want
    r = upload(api, f"{home}/d.txt", "f.txt")
    assert r.status_code == 218 and (r.json()["results"][0]["status"], r.json()["results"][0]["message"]) == (
        409, want[2])
    r = api.post("/fs/write", json={"fileMetadata": {"path": f"{home}/d.txt/f.txt", "createMissingParents": True},
                                    "fileContent": "x"})
    assert err(r) == want
    assert err(api.post("/touch", json={"path": f"{home}/d.txt/t.txt"})) == want


def test_move_ignores_create_missing_parents(home_api: tuple[str, httpx.Client]) -> None:
    home, api = home_api
    upload(api, home, "mv.txt").raise_for_status()
    want = (404, "subject_does_not_exist", f"Entry not found: path={home}/n1/n2")
    for body in ({"create_missing_parents": True, "new_name": "mv.txt"}, {"create_missing_ancestors": True}):
        r = api.post("/move", json={"source": f"{home}/mv.txt", "destination": f"{home}/n1/n2", **body})
        assert err(r) == want
    r = api.post("/fs/move", json={"source": {"path": f"{home}/mv.txt"}, "destination": {"path": f"{home}/n1/n2"},
                                   "create_missing_parents": True})
    assert err(r) == want
    r = api.post("/batch", json={"operations": [{"op": "move", "source": f"{home}/mv.txt",
                                                 "destination": f"{home}/n1/n2", "create_missing_parents": True}]})
    assert r.status_code == 218 and r.json()["results"][0]["message"] == want[2]
    assert api.post("/stat", json={"path": f"{home}/n1"}).status_code == 404  # nothing was created
    api.post("/mkdir", json={"path": f"{home}/n1/n2", "create_missing_parents": True}).raise_for_status()
    r = api.post("/move", json={"source": f"{home}/mv.txt", "destination": f"{home}/n1/n2"})
    assert r.status_code == 200 and r.json()["moved"]["path"] == f"{home}/n1/n2/mv.txt"
    # the destination is the parent directory: a full target path is looked up as a directory
    r = api.post("/move", json={"source": f"{home}/n1/n2/mv.txt", "destination": f"{home}/n1/renamed.txt"})
    assert r.status_code == 404


def test_ip_address_hosts_get_404_on_every_route(tmp_path) -> None:  # noqa: ANN001
    with EmulatorProcess(tmp_path / "emu", tier="free") as emu:  # the default, as a real server
        assert emu.url == f"http://api.puter.localhost:{emu.port}"  # what it prints on READY
        by_ip = emu.address_url  # http://127.0.0.1:PORT, Host: 127.0.0.1:PORT
        auth = {"Authorization": f"Bearer {emu.token}"}
        for method, path in (("GET", "/healthcheck"), ("GET", "/version"), ("POST", "/stat"), ("GET", "/whoami"),
                             ("GET", "/"), ("POST", "/fs/startWrite")):
            r = httpx.request(method, by_ip + path, json={"path": "~"} if method == "POST" else None, headers=auth)
            assert r.status_code == 404 and r.json() == NOT_FOUND, (path, r.text)
        r = httpx.post(by_ip + "/login", json={"username": emu.username, "password": emu.password})
        assert r.status_code == 404 and r.json() == NOT_FOUND
        # socket.io answers an address with its own recorded 403 (socket.jsonl seq 98)
        r = httpx.get(by_ip + "/socket.io/?EIO=4&transport=polling")
        assert r.status_code == 403 and "host not allowed" in r.text
        # by name, through the same address (a client's --domain)
        assert httpx.post(by_ip + "/stat", json={"path": "~"}, headers={**auth, "Host": emu.api_host}).status_code == 200
        r = httpx.post(by_ip + "/login", json={"username": emu.username, "password": emu.password},
                       headers={"Host": f"puter.localhost:{emu.port}"})
        assert r.status_code == 200
        # and by name, connected the *.localhost way (RFC 6761)
        assert local_http.get(emu.url + "/healthcheck").json() == {"ok": True}
        # storage URLs belong to the storage server (a self-host's S3 on a raw address): any host
        s = local_http.post(emu.url + "/fs/startWrite", json={"fileMetadata": {"path": "~/s.txt", "size": 2}},
                            headers=auth).json()
        put = httpx.put(s["url"].replace(emu.url, by_ip), content=b"ok")
        assert put.status_code == 200
        assert emu.http.get("/_emulator/tier").status_code == 200  # admin routes stay reachable


def test_allow_ip_hosts_serves_both_route_sets_on_an_address(tmp_path) -> None:  # noqa: ANN001
    with EmulatorProcess(tmp_path / "emu", tier="free", extra_args=["--allow-ip-hosts"]) as emu:
        auth = {"Authorization": f"Bearer {emu.token}"}
        assert httpx.post(emu.address_url + "/stat", json={"path": "~"}, headers=auth).status_code == 200
        r = httpx.post(emu.address_url + "/login", json={"username": emu.username, "password": emu.password})
        assert r.status_code == 200
        assert local_http.post(emu.url + "/stat", json={"path": "~"}, headers=auth).status_code == 200


def test_batch_namespace_ops_as_the_server_runs_them(home_api: tuple[str, httpx.Client]) -> None:
    """JSON /batch ops run in order (LegacyFSController batch): mkdir dedupes unless told not to,
    move answers the moved entry itself (not /move's {moved, old_path}), delete is recursive
    unless told not to, and a failed op is in place with HTTP 218."""
    home, api = home_api
    api.post("/mkdir", json={"path": f"{home}/bd"}).raise_for_status()
    r = api.post("/batch", json={"operations": [
        {"op": "mkdir", "path": home, "name": "bd"},  # exists: dedupes to "bd (1)" by default
        {"op": "mkdir", "path": home, "name": "bd", "dedupe_name": False},  # exists: that one
        {"op": "mkdir", "path": f"{home}/bd", "name": "in"},
        {"op": "move", "source": f"{home}/bd/in", "destination": home, "new_name": "out"},
        {"op": "delete", "path": f"{home}/bd (1)", "recursive": False},
    ]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["name"] == "bd (1)" and res[1]["path"] == f"{home}/bd"
    assert res[3]["path"] == f"{home}/out" and res[3]["uid"] == res[2]["uid"] and "moved" not in res[3]
    assert res[4]["ok"] is True
    upload(api, f"{home}/out", "f.txt").raise_for_status()
    r = api.post("/batch", json={"operations": [
        {"op": "delete", "path": f"{home}/out", "recursive": False},
        {"op": "move", "source": f"{home}/nothing", "destination": home, "new_name": "x"},
        {"op": "delete", "path": f"{home}/bd", "recursive": False},
    ]})
    assert r.status_code == 218, r.text
    res = r.json()["results"]
    assert res[0]["error"] is True and res[0]["status"] == 409 and "not empty" in res[0]["message"].lower()
    assert res[1]["error"] is True and res[1]["status"] == 404
    assert res[2]["ok"] is True
