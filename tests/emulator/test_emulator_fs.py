"""FS routes over real HTTP (the session emulator, api.puter.localhost on 127.0.0.1), one temp user per test."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from puterfs.emulator.testing import local_http


@pytest.fixture
def api(puter_user):  # noqa: ANN001, ANN201
    with local_http.Client(base_url=puter_user.url, headers={"Authorization": f"Bearer {puter_user.token}"},
                      timeout=30) as client:
        yield client


def upload(api: httpx.Client, parent: str, name: str, data: bytes, **op: object) -> httpx.Response:
    write = {"op": "write", "path": parent, "name": name, "item_upload_id": 0, **op}
    files = [
        ("operation", (None, json.dumps(write))),
        ("fileinfo", (None, json.dumps({"name": name, "type": "text/plain", "size": len(data)}))),
        ("file", (name, data, "text/plain")),
    ]
    return api.post("/batch", files=files)


def test_home_layout_and_whoami(api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    names = [e["name"] for e in api.post("/readdir", json={"path": puter_user.home}).json()]
    assert names == ["AppData", "Desktop", "Documents", "Pictures", "Public", "Trash", "Videos"]
    who = api.get("/whoami").json()
    assert who["username"] == puter_user.username and who["is_temp"] is True
    assert set(who["directories"]) == {f"{puter_user.home}/{d}" for d in
                                       ("Desktop", "AppData", "Documents", "Pictures", "Videos", "Trash")}
    home = api.post("/stat", json={"path": "~"}).json()
    assert home["size"] is None and home["immutable"] is True and home["accessed"] is None


def test_batch_write_read_range_and_dedupe(api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    home = puter_user.home
    r = upload(api, home, "a.txt", b"hello world\n", dedupe_name=False, overwrite=False)
    assert r.status_code == 200, r.text
    entry = r.json()["results"][0]
    assert entry["size"] == 12 and entry["metadata"] == '{"contentType":"text/plain"}'
    # dedupe_name defaults to true on the write op
    r = upload(api, home, "a.txt", b"other")
    assert r.json()["results"][0]["name"] == "a (1).txt"
    # explicit no-dedupe, no-overwrite: 218 with the error in place
    r = upload(api, home, "a.txt", b"x", dedupe_name=False, overwrite=False)
    assert r.status_code == 218
    assert r.json()["results"][0]["code"] == "item_with_same_name_exists"
    full = api.get("/read", params={"file": f"{home}/a.txt"})
    assert full.content == b"hello world\n"
    digest = hashlib.md5(b"hello world\n").hexdigest()
    assert full.headers["etag"] == f'"{digest}"'
    assert "accept-ranges" not in full.headers
    part = api.get("/read", params={"file": f"{home}/a.txt"}, headers={"Range": "bytes=6-"})
    assert part.status_code == 206 and part.content == b"world\n"
    assert part.headers["content-range"] == "bytes 6-11/12"
    bad = api.get("/read", params={"file": f"{home}/a.txt"}, headers={"Range": "bytes=12-"})
    assert bad.status_code == 500 and bad.json()["code"] == "internal_error"


def test_large_upload_streams_to_disk(api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    data = bytes((i * 7) % 251 for i in range(3 * 1024 * 1024))
    r = upload(api, puter_user.home + "/Documents", "big.bin", data, dedupe_name=False)
    assert r.status_code == 200
    got = api.get("/read", params={"file": f"{puter_user.home}/Documents/big.bin"})
    assert got.content == data
    tail = api.get("/read", params={"file": f"{puter_user.home}/Documents/big.bin"},
                   headers={"Range": "bytes=-10"})
    assert tail.content == data[-10:]


def test_mkdir_move_copy_delete_semantics(api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    home = puter_user.home
    d = api.post("/mkdir", json={"path": f"{home}/x/y", "create_missing_parents": True}).json()
    again = api.post("/mkdir", json={"path": f"{home}/x/y"}).json()
    assert again["uid"] == d["uid"]  # idempotent
    upload(api, f"{home}/x/y", "f.txt", b"abc", dedupe_name=False)
    assert api.post("/mkdir", json={"path": f"{home}/x/y/f.txt"}).status_code == 409
    mv = api.post("/move", json={"source": f"{home}/x/y/f.txt", "destination": f"{home}/x", "new_name": "g.txt"})
    assert mv.status_code == 200 and mv.json()["old_path"] == f"{home}/x/y/f.txt"
    cp = api.post("/copy", json={"source": f"{home}/x", "destination": home, "new_name": "x2"})
    assert cp.status_code == 200 and cp.json()[0]["copied"]["path"] == f"{home}/x2"
    assert api.get("/read", params={"file": f"{home}/x2/g.txt"}).content == b"abc"
    assert api.post("/delete", json={"path": f"{home}/x", "recursive": False}).status_code == 409
    assert api.post("/delete", json={"path": f"{home}/x"}).json()["ok"] is True
    assert api.post("/stat", json={"path": f"{home}/x/y"}).status_code == 404
    # the change timestamp moves on writes, not on reads, and not on /touch (the errata)
    t1 = api.get("/cache/last-change-timestamp").json()["timestamp"]
    api.post("/stat", json={"path": home})
    assert api.get("/cache/last-change-timestamp").json()["timestamp"] == t1
    api.post("/touch", json={"path": f"{home}/t.txt"})
    assert api.get("/cache/last-change-timestamp").json()["timestamp"] == t1
    api.post("/mkdir", json={"path": f"{home}/t-dir"})
    assert api.get("/cache/last-change-timestamp").json()["timestamp"] > t1


def test_other_users_home_hidden_public_readable(emulator, api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    other, other_token = emulator.new_user()
    with local_http.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {other_token}"}) as o:
        upload(o, f"/{other}/Public", "pub.txt", b"public!", dedupe_name=False)
    r = api.post("/stat", json={"path": f"/{other}"})
    assert r.status_code == 404 and r.json()["code"] == "subject_does_not_exist"
    assert api.get("/read", params={"file": f"/{other}/Public/pub.txt"}).content == b"public!"
    assert api.post("/delete", json={"path": f"/{other}/Public/pub.txt"}).status_code == 404


def test_fs_write_v2_and_sign(api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    path = f"{puter_user.home}/v2.bin"
    body = {"fileMetadata": {"path": path, "size": 3}, "fileContent": "AAEC", "encoding": "base64"}
    r = api.post("/fs/write", json=body)
    assert r.status_code == 200 and r.json()["fsEntry"]["size"] == 3
    assert api.post("/fs/write", json=body).status_code == 409
    sig = api.post("/sign", json={"items": [{"path": path, "action": "read"}]}).json()["signatures"][0]
    got = local_http.get(sig["read_url"])  # no auth: the signature is the credential
    assert got.status_code == 200 and got.content == b"\x00\x01\x02"


def test_auth_errors_and_hosts(emulator, puter_user) -> None:  # noqa: ANN001
    url = emulator.url
    assert local_http.post(url + "/stat", json={"path": "/x"}).json()["code"] == "token_missing"
    bad = local_http.post(url + "/stat", json={"path": "/x"}, headers={"Authorization": "Bearer xyz.abc.def"})
    assert bad.status_code == 401 and bad.json()["reason"] == "token_v1"
    on_api = local_http.post(url + "/login", json={"username": emulator.username, "password": emulator.password})
    assert on_api.status_code == 404  # /login is on the root host only
    ok = local_http.post(emulator.web_url + "/login",
                         json={"username": emulator.username, "password": emulator.password})
    assert ok.status_code == 200 and ok.json()["token"]
    wrong = local_http.post(emulator.web_url + "/login", json={"username": emulator.username, "password": "nope-nope"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "password_mismatch"
    # token probe order: x-api-key and ?auth_token work too
    assert local_http.get(url + "/whoami", headers={"x-api-key": puter_user.token}).status_code == 200
    assert local_http.get(url + "/whoami", params={"auth_token": puter_user.token}).status_code == 200


def test_disk_capacity(emulator, api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    emulator.set_capacity(100)
    assert api.post("/df", json={}).json()["capacity"] == 100
    r = upload(api, puter_user.home, "big.txt", b"x" * 200, dedupe_name=False)
    assert r.status_code == 218 and r.json()["results"][0]["code"] == "storage_limit_reached"
    emulator.set_capacity(None)
    assert upload(api, puter_user.home, "big.txt", b"x" * 200, dedupe_name=False).status_code == 200


def test_request_log(emulator, api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    emulator.clear_log()
    upload(api, puter_user.home, "l.txt", b"12345", dedupe_name=False)
    api.get("/read", params={"file": f"{puter_user.home}/l.txt"})
    log = emulator.log()
    read = [r for r in log if r["path"] == "/read"][-1]
    assert read["status"] == 200 and read["bytes_out"] == 5
    assert [r for r in log if r["path"] == "/batch"][-1]["bytes_in"] > 5


def test_signed_file_as_the_server_serves_it(emulator, api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    """GET /file (LegacyFSController.file): the same readContent as /read (Range: 206,
    Content-Range, the ETag of the whole file; an unsatisfiable range is the object store's
    error, a 500), a write signature also reads, 403 for any bad signature, 404 for a uid
    gone, a signed listing for a folder, 401 once the owner is suspended."""
    home = puter_user.home
    data = b"0123456789abcdef"
    assert upload(api, home, "s.bin", data).status_code == 200
    sig = api.post("/sign", json={"items": [{"path": f"{home}/s.bin", "action": "read"}, {"path": f"{home}/nope"}]})
    first, missing = sig.json()["signatures"]
    assert missing == {}
    url = first["read_url"]
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    whole = local_http.get(url)
    assert whole.status_code == 200 and whole.content == data and whole.headers["etag"] == etag
    part = local_http.get(url, headers={"Range": "bytes=4-9"})
    assert part.status_code == 206 and part.content == b"456789"
    assert part.headers["content-range"] == "bytes 4-9/16" and part.headers["etag"] == etag
    tail = local_http.get(url, headers={"Range": "bytes=10-99"})  # clamped to the end, as S3 does
    assert tail.status_code == 206 and tail.headers["content-range"] == "bytes 10-15/16"
    bad = local_http.get(url, headers={"Range": "bytes=16-"})
    assert bad.status_code == 500 and bad.json()["code"] == "internal_error"
    # the write URL's signature reads too; a changed or missing signature, an expiry, no uid: 403
    assert local_http.get(first["write_url"].replace("/writeFile?", "/file?")).content == data
    forged = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    for u in (forged, url.split("&signature=")[0], url.replace(f"uid={first['uid']}&", ""),
              url.replace(f"expires={first['expires']}", "expires=1"),
              url.replace(f"expires={first['expires']}", "expires=soon")):
        r = local_http.get(u)
        assert r.status_code == 403 and r.json()["code"] == "forbidden", u
    # a folder: its children, each signed for reading only
    folder = api.post("/sign", json={"items": [{"path": home}]}).json()["signatures"][0]
    listing = local_http.get(folder["read_url"]).json()
    kid = next(k for k in listing if k["fsentry_name"] == "s.bin")
    assert "write_url" not in kid and local_http.get(kid["read_url"]).content == data
    # replaced: the new file has another uid, the old URL finds nothing
    api.post("/delete", json={"paths": [f"{home}/s.bin"]})
    assert upload(api, home, "s.bin", b"new").status_code == 200
    gone = local_http.get(url, headers={"Range": "bytes=0-1"})
    assert gone.status_code == 404 and gone.json()["code"] == "subject_does_not_exist"
    # a suspended owner's signatures serve nothing (401), and their token is refused (403)
    fresh = api.post("/sign", json={"items": [{"path": f"{home}/s.bin"}]}).json()["signatures"][0]["read_url"]
    emulator.suspend(puter_user.username)
    try:
        r = local_http.get(fresh)
        assert r.status_code == 401 and r.json()["code"] == "account_suspended"
        r = api.post("/stat", json={"path": home})
        assert r.status_code == 403 and r.json()["message"] == "Account suspended"
    finally:
        emulator.suspend(puter_user.username, False)
    assert local_http.get(fresh).content == b"new"
