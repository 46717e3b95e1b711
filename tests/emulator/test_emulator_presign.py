"""Presigned uploads over real HTTP (RECORDED-2.md §1): sessions, storage URLs, states, errors."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import pytest

from puterfs.emulator.testing import local_http

MiB = 1024 * 1024
PATTERN = bytes(range(251)) * (10 * MiB // 251 + 2)


def gen(offset: int, size: int) -> bytes:
    """Bytes ``offset .. offset+size`` of the file whose byte i is i % 251."""
    start = offset % 251
    out = bytearray()
    while len(out) < size:
        n = min(size - len(out), 10 * MiB)
        out += PATTERN[start : start + n]
        start = (start + n) % 251
    return bytes(out)


@pytest.fixture
def api(puter_user):  # noqa: ANN001, ANN201
    with local_http.Client(base_url=puter_user.url, headers={"Authorization": f"Bearer {puter_user.token}"},
                      timeout=60) as client:
        yield client


@pytest.fixture
def storage(puter_user):  # noqa: ANN001, ANN201
    """A client with no Puter credentials, as a PUT to a presigned URL must be."""
    with local_http.Client(timeout=60) as client:
        yield client


def start(api: httpx.Client, path: str, size: int, **kw: object) -> dict:
    meta = {"path": path, "size": size, **{k: v for k, v in kw.items() if k not in ("uploadMode", "expiresInSeconds",
                                                                                       "directory")}}
    body = {"fileMetadata": meta, **{k: v for k, v in kw.items() if k in ("uploadMode", "expiresInSeconds",
                                                                          "directory")}}
    r = api.post("/fs/startWrite", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_single_upload_flow_and_states(api: httpx.Client, storage: httpx.Client, puter_user) -> None:  # noqa: ANN001
    p = f"{puter_user.home}/a.txt"
    s = start(api, p, 5, contentType="text/plain")
    assert s["uploadMode"] == "single" and s["contentType"] == "text/plain" and "bucket" not in s
    # the storage URL is the emulator's own, on the host the client used
    assert s["url"].startswith(puter_user.url + "/puter-local/")
    put = storage.put(s["url"], content=b"hello")
    assert put.status_code == 200 and put.content == b""
    assert put.headers["etag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    assert "retry-after" not in put.headers
    # the entry appears only at completion
    assert api.post("/stat", json={"path": p}).status_code == 404
    done = api.post("/fs/completeWrite", json={"uploadId": s["sessionId"]})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["wasOverwrite"] is False and body["requestedThumbnail"] is None
    assert body["fsEntry"]["size"] == 5 and body["fsEntry"]["metadata"] == '{"contentType":"text/plain"}'
    assert api.get("/read", params={"file": p}).content == b"hello"
    again = api.post("/fs/completeWrite", json={"uploadId": s["sessionId"]})
    assert again.status_code == 409
    assert again.json()["message"] == "Upload session is not pending (status=completed)"


def test_storage_enforces_signature_length_and_expiry(api: httpx.Client, storage: httpx.Client, emulator,  # noqa: ANN001
                                                      puter_user) -> None:  # noqa: ANN001
    s = start(api, f"{puter_user.home}/len.txt", 5)
    r = storage.put(s["url"], content=b"123456")  # the length is a signed header
    assert r.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in r.content
    tampered = s["url"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert storage.put(tampered, content=b"12345").status_code == 403
    unsigned = s["url"].split("?")[0]
    assert storage.put(unsigned, content=b"12345").status_code == 403
    # expiry: expiresInSeconds is clamped to 60..3600 and enforced by the storage URL
    e = start(api, f"{puter_user.home}/exp.txt", 2, expiresInSeconds=5)
    assert e["expiresAt"] - s["expiresAt"] < -800_000  # 60 s, not the default 900 s
    emulator.advance_clock(61)
    r = storage.put(e["url"], content=b"zz")
    assert r.status_code == 403 and b"Request has expired" in r.content
    # and the pending session is gone, like a KV entry past its TTL
    gone = api.post("/fs/completeWrite", json={"uploadId": e["sessionId"]})
    assert gone.status_code == 404 and gone.json() == {"error": "Upload session was not found", "message":
                                                       "Upload session was not found", "code": "not_found"}


def test_multipart_above_10_mib_in_10_mib_parts(api: httpx.Client, storage: httpx.Client, puter_user) -> None:  # noqa: ANN001
    size = 10 * MiB + 1
    p = f"{puter_user.home}/m.bin"
    s = start(api, p, size)
    assert s["uploadMode"] == "multipart" and s["multipartPartSize"] == 10 * MiB and s["multipartPartCount"] == 2
    assert [u["partNumber"] for u in s["multipartPartUrls"]] == [1, 2]
    parts = []
    md5s = b""
    for u in s["multipartPartUrls"]:
        n = u["partNumber"]
        chunk = gen((n - 1) * 10 * MiB, min(10 * MiB, size - (n - 1) * 10 * MiB))
        # each part URL is signed for its own length: the full part size on the last one is refused
        if n == 2:
            assert storage.put(u["url"], content=chunk + b"x").status_code == 403
        r = storage.put(u["url"], content=chunk)
        assert r.status_code == 200, r.text
        parts.append({"partNumber": n, "etag": r.headers["etag"]})
        md5s += hashlib.md5(chunk).digest()
    no_parts = api.post("/fs/completeWrite", json={"uploadId": s["sessionId"]})
    assert no_parts.status_code == 400 and no_parts.json()["message"] == "Multipart upload completion requires parts"
    # that failed completion failed the session for good
    r = api.post("/fs/completeWrite", json={"uploadId": s["sessionId"], "parts": parts})
    assert r.status_code == 409 and r.json()["message"] == "Upload session is not pending (status=failed)"
    s = start(api, p, size)
    for u, part in zip(s["multipartPartUrls"], parts, strict=True):
        n = u["partNumber"]
        assert storage.put(u["url"], content=gen((n - 1) * 10 * MiB, min(10 * MiB, size - (n - 1) * 10 * MiB))
                           ).headers["etag"] == part["etag"]
    r = api.post("/fs/completeWrite", json={"uploadId": s["sessionId"], "parts": parts})
    assert r.status_code == 200, r.text
    assert r.json()["fsEntry"]["size"] == size
    tail = api.get("/read", params={"file": p}, headers={"Range": f"bytes={size - 4}-{size - 1}"})
    assert tail.status_code == 206 and tail.content == gen(size - 4, 4)
    assert tail.headers["etag"] == f'"{hashlib.md5(md5s).hexdigest()}-2"'  # the S3 multipart ETag


def test_multipart_part_errors_and_sign(api: httpx.Client, storage: httpx.Client, puter_user) -> None:  # noqa: ANN001
    s = start(api, f"{puter_user.home}/m3.bin", 10 * MiB + 1)
    uid = s["sessionId"]

    def sign(**body: object) -> httpx.Response:
        return api.post("/fs/signMultipartParts", json={"uploadId": uid, **body})

    assert sign(partNumbers=[3]).json()["message"] == "Part number exceeds multipart part count"
    assert sign(partNumbers=[0]).json()["message"] == "Invalid partNumbers"
    assert sign().json()["message"] == "Missing partNumbers"
    r = sign(partNumbers=[1, 2])
    assert r.status_code == 200 and [u["partNumber"] for u in r.json()["multipartPartUrls"]] == [1, 2]
    assert r.json()["multipartUploadId"] == s["multipartUploadId"]
    first = storage.put(r.json()["multipartPartUrls"][0]["url"], content=gen(0, 10 * MiB))
    assert first.status_code == 200
    # a part listed but never uploaded: an unmapped S3 InvalidPart, 500, the session failed
    bad = api.post("/fs/completeWrite", json={"uploadId": uid, "parts": [
        {"partNumber": 1, "etag": first.headers["etag"]}, {"partNumber": 2, "etag": '"' + "0" * 32 + '"'}]})
    assert bad.status_code == 500 and bad.json()["code"] == "internal_error"
    assert api.post("/fs/completeWrite", json={"uploadId": uid, "parts": [
        {"partNumber": 1, "etag": first.headers["etag"]}]}).status_code == 409
    single = start(api, f"{puter_user.home}/single.txt", 2)
    r = api.post("/fs/signMultipartParts", json={"uploadId": single["sessionId"], "partNumbers": [1]})
    assert r.status_code == 400 and r.json()["message"] == "Upload session is not multipart"
    r = api.post("/fs/signMultipartParts", json={"uploadId": "00000000-0000-4000-8000-000000000000",
                                                 "partNumbers": [1]})
    assert r.status_code == 404
    # a subset of the parts is legal: the entry is what landed
    s2 = start(api, f"{puter_user.home}/m2.bin", 10 * MiB + 1)
    e1 = storage.put(s2["multipartPartUrls"][0]["url"], content=gen(0, 10 * MiB)).headers["etag"]
    r = api.post("/fs/completeWrite", json={"uploadId": s2["sessionId"], "parts": [{"partNumber": 1, "etag": e1}]})
    assert r.status_code == 200 and r.json()["fsEntry"]["size"] == 10 * MiB


def test_mode_and_part_size_choices(api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    h = puter_user.home
    small = start(api, f"{h}/s.txt", 4, uploadMode="multipart")
    assert small["uploadMode"] == "multipart" and small["multipartPartCount"] == 1
    forced = start(api, f"{h}/f.bin", 10 * MiB + 1, uploadMode="single")
    assert forced["uploadMode"] == "multipart"
    big = start(api, f"{h}/b.bin", 50 * MiB, multipartPartSize=20 * MiB)
    assert big["multipartPartSize"] == 20 * MiB and big["multipartPartCount"] == 3
    low = start(api, f"{h}/l.bin", 30 * MiB, multipartPartSize=MiB)
    assert low["multipartPartSize"] == 10 * MiB and low["multipartPartCount"] == 3
    exact = start(api, f"{h}/e.bin", 10 * MiB)
    assert exact["uploadMode"] == "single"


def test_overwrite_session_writes_onto_the_live_file(api: httpx.Client, storage: httpx.Client,  # noqa: ANN001
                                                     puter_user) -> None:  # noqa: ANN001
    """The recorded danger, mirrored: the PUT replaces the live bytes; an abort then deletes them."""
    p = f"{puter_user.home}/victim.txt"
    s = start(api, p, 9)
    storage.put(s["url"], content=b"old bytes")
    api.post("/fs/completeWrite", json={"uploadId": s["sessionId"]}).raise_for_status()
    conflict = api.post("/fs/startWrite", json={"fileMetadata": {"path": p, "size": 3}})
    assert conflict.status_code == 409 and conflict.json()["code"] == "item_with_same_name_exists"
    assert conflict.json()["entry_name"] == "victim.txt"
    o = start(api, p, 4, overwrite=True)
    assert storage.put(o["url"], content=b"new\n").status_code == 200
    assert api.get("/read", params={"file": p}).content == b"new\n"  # before completeWrite
    assert api.post("/fs/abortWrite", json={"uploadId": o["sessionId"]}).json() == {"ok": True}
    assert api.post("/stat", json={"path": p}).status_code == 200  # the row is still there
    r = api.get("/read", params={"file": p})
    assert r.status_code == 404 and r.json()["message"] == "File contents are missing"
    assert api.post("/stat", json={"path": p}).status_code == 404  # ghost healed: the row is gone
    # completion trusts the client: no PUT at all gives an entry without bytes
    c = start(api, f"{puter_user.home}/c.txt", 11)
    done = api.post("/fs/completeWrite", json={"uploadId": c["sessionId"]})
    assert done.status_code == 200 and done.json()["fsEntry"]["size"] == 11
    assert api.get("/read", params={"file": f"{puter_user.home}/c.txt"}).status_code == 404
    # an overwrite that completes keeps the uid
    d = start(api, f"{puter_user.home}/d.txt", 1)
    storage.put(d["url"], content=b"1")
    uid = api.post("/fs/completeWrite", json={"uploadId": d["sessionId"]}).json()["fsEntry"]["uid"]
    d2 = start(api, f"{puter_user.home}/d.txt", 2, overwrite=True)
    storage.put(d2["url"], content=b"22")
    done = api.post("/fs/completeWrite", json={"uploadId": d2["sessionId"]}).json()
    assert done["wasOverwrite"] is True and done["fsEntry"]["uid"] == uid and done["fsEntry"]["size"] == 2


def test_abort_and_session_access(api: httpx.Client, emulator, puter_user) -> None:  # noqa: ANN001
    s = start(api, f"{puter_user.home}/b.txt", 3)
    _, other = emulator.new_user()
    r = local_http.post(emulator.url + "/fs/abortWrite", json={"uploadId": s["sessionId"]},
                   headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403 and r.json()["message"] == "Upload session access denied"
    assert api.post("/fs/abortWrite", json={"uploadId": s["sessionId"]}).json() == {"ok": True}
    assert api.post("/fs/abortWrite", json={"uploadId": s["sessionId"]}).json() == {"ok": True}
    r = api.post("/fs/completeWrite", json={"uploadId": s["sessionId"]})
    assert r.status_code == 409 and r.json()["message"] == "Upload session is not pending (status=aborted)"
    assert api.post("/fs/abortWrite", json={"uploadId": "00000000-0000-4000-8000-000000000000"}).json() == {"ok": True}
    r = api.post("/fs/abortWrite", json={})
    assert r.status_code == 400 and r.json()["message"] == "Missing uploadId"
    r = api.post("/fs/completeWrite", json={})
    assert r.status_code == 404 and r.json()["message"] == "Upload session was not found"


def test_start_write_errors(api: httpx.Client, puter_user) -> None:  # noqa: ANN001
    h = puter_user.home

    def err(body: object) -> tuple[int, str, str]:
        r = api.post("/fs/startWrite", json=body)
        return r.status_code, r.json()["code"], r.json()["message"]

    assert err({"fileMetadata": {"path": f"{h}/nope/x.txt", "size": 1}}) == (
        404, "not_found", f"Parent path does not exist: {h}/nope")
    assert err({"fileMetadata": {"path": "/someone-else/x.txt", "size": 1}})[:2] == (404, "subject_does_not_exist")
    assert err({"fileMetadata": {"path": f"{h}/x.txt"}}) == (400, "bad_request", "Invalid file size")
    assert err({"fileMetadata": {"path": f"{h}/x.txt", "size": -1}}) == (400, "bad_request", "Invalid file size")
    assert err({}) == (400, "bad_request", "Missing path")
    assert err({"fileMetadata": {"path": "/", "size": 1}}) == (400, "cannot_write_to_root", "Cannot write to root path")
    assert err({"fileMetadata": {"path": f"{h}/Documents", "size": 1, "overwrite": True}})[:2] == (
        409, "cannot_overwrite_a_directory")
    assert err({"fileMetadata": {"path": f"{h}/nd", "size": 0}, "directory": True}) == (
        404, "not_found", f"Directory path does not exist: {h}/nd")
    # createMissingParents makes the directories at start, and they stay after an abort
    s = start(api, f"{h}/n1/n2/x.txt", 1, createMissingParents=True)
    assert api.post("/stat", json={"path": f"{h}/n1/n2"}).json()["is_dir"] is True
    api.post("/fs/abortWrite", json={"uploadId": s["sessionId"]}).raise_for_status()
    assert api.post("/stat", json={"path": f"{h}/n1/n2"}).status_code == 200
    # a new name loses its trailing whitespace; ~ is the home
    t = start(api, "~/sw.txt ", 2)
    assert t["sessionId"]
    d = start(api, f"{h}/dir", 0, createMissingParents=True, directory=True)
    assert d["sessionId"] == "" and d["contentType"] == "inode/directory" and d["directoryCreated"] is True
    assert d["fsEntry"]["isDir"] is True
    d2 = start(api, f"{h}/dir", 0, createMissingParents=True, directory=True)
    assert d2["directoryCreated"] is False and d2["fsEntry"]["uid"] == d["fsEntry"]["uid"]
    # metadata: kept, merged with contentType, objectKey stripped
    m = start(api, f"{h}/meta.txt", 0, contentType="text/plain", metadata={"color": "red", "objectKey": "x"})
    done = api.post("/fs/completeWrite", json={"uploadId": m["sessionId"]}).json()
    assert json.loads(done["fsEntry"]["metadata"]) == {"color": "red", "contentType": "text/plain"}
    # dedupeName
    api.post("/fs/write", json={"fileMetadata": {"path": f"{h}/dd.txt", "size": 1}, "fileContent": "x"})
    dd = start(api, f"{h}/dd.txt", 1, dedupeName=True)
    done = api.post("/fs/completeWrite", json={"uploadId": dd["sessionId"]}).json()
    assert done["fsEntry"]["name"] == "dd (1).txt"


def test_batch_start_and_complete(api: httpx.Client, storage: httpx.Client, puter_user) -> None:  # noqa: ANN001
    h = puter_user.home
    r = api.post("/fs/startBatchWrite", json=[
        {"fileMetadata": {"path": f"{h}/batch/one.txt", "size": 3, "contentType": "text/plain",
                          "createMissingParents": True}},
        {"fileMetadata": {"path": f"{h}/batch/two.txt", "size": 3, "createMissingParents": True}},
        {"fileMetadata": {"path": f"{h}/batch/sub", "size": 0, "createMissingParents": True}, "directory": True},
    ])
    assert r.status_code == 200, r.text
    one, two, sub = r.json()
    assert sub["sessionId"] == "" and sub["directoryCreated"] is True
    storage.put(one["url"], content=b"111")
    storage.put(two["url"], content=b"222")
    done = api.post("/fs/completeBatchWrite", json=[{"uploadId": one["sessionId"]}, {"uploadId": two["sessionId"]}])
    assert done.status_code == 200 and [d["fsEntry"]["name"] for d in done.json()] == ["one.txt", "two.txt"]
    r = api.post("/fs/completeBatchWrite", json=[{"uploadId": one["sessionId"]}, {"uploadId": one["sessionId"]}])
    assert r.status_code == 409 and r.json()["message"] == "Batch contains duplicate upload session ids"
    assert api.post("/fs/completeBatchWrite", json=[]).json() == []
    assert api.post("/fs/startBatchWrite", json=[]).json() == []
    assert api.post("/fs/startBatchWrite", json={"fileMetadata": {"path": f"{h}/o.txt", "size": 1}}).json() == []
    r = api.post("/fs/startBatchWrite", json=[{"fileMetadata": {"path": f"{h}/batch/dup.txt", "size": 1}}] * 2)
    assert r.status_code == 409 and r.json()["message"] == f"Batch contains duplicate target path: {h}/batch/dup.txt"
    # all-or-nothing: one colliding item fails the whole request, nothing is started
    before = api.get("/cache/last-change-timestamp").json()["timestamp"]
    r = api.post("/fs/startBatchWrite", json=[{"fileMetadata": {"path": f"{h}/batch/three.txt", "size": 1}},
                                              {"fileMetadata": {"path": f"{h}/batch/one.txt", "size": 1}}])
    assert r.status_code == 409 and r.json()["code"] == "item_with_same_name_exists"
    assert api.get("/cache/last-change-timestamp").json()["timestamp"] == before


def test_expired_sessions_leave_no_parts_behind(api: httpx.Client, storage: httpx.Client, emulator,  # noqa: ANN001
                                                puter_user) -> None:  # noqa: ANN001
    s = start(api, f"{puter_user.home}/e.bin", 10 * MiB + 1, expiresInSeconds=60)
    storage.put(s["multipartPartUrls"][0]["url"], content=gen(0, 10 * MiB)).raise_for_status()
    parts_dir = emulator.data_dir / "uploads" / s["multipartUploadId"]
    assert parts_dir.is_dir()
    emulator.advance_clock(61)
    assert api.post("/fs/completeWrite", json={"uploadId": s["sessionId"]}).status_code == 404
    assert not parts_dir.exists()


def _hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_150_mib_streams_with_flat_memory(api: httpx.Client, storage: httpx.Client, emulator,  # noqa: ANN001
                                          puter_user) -> None:  # noqa: ANN001
    size = 150 * MiB
    p = f"{puter_user.home}/big150.bin"
    s = start(api, p, size)
    assert s["multipartPartCount"] == 15
    assert emulator.proc is not None
    before = _hwm_kib(emulator.proc.pid)
    whole = hashlib.sha256()
    parts = []
    for u in s["multipartPartUrls"]:
        chunk = gen((u["partNumber"] - 1) * 10 * MiB, 10 * MiB)
        whole.update(chunk)
        r = storage.put(u["url"], content=chunk)
        assert r.status_code == 200
        parts.append({"partNumber": u["partNumber"], "etag": r.headers["etag"]})
    r = api.post("/fs/completeWrite", json={"uploadId": s["sessionId"], "parts": parts})
    assert r.status_code == 200 and r.json()["fsEntry"]["size"] == size
    got = hashlib.sha256()
    with api.stream("GET", "/read", params={"file": p}) as resp:
        for chunk in resp.iter_bytes():
            got.update(chunk)
    assert got.hexdigest() == whole.hexdigest()
    # 150 MiB went in and out; the emulator's peak memory grew by far less than one part
    assert _hwm_kib(emulator.proc.pid) - before < 8 * 1024
    boundary = api.get("/read", params={"file": p}, headers={"Range": f"bytes={10 * MiB - 4}-{10 * MiB + 3}"})
    assert boundary.content == gen(10 * MiB - 4, 8)


def test_batch_complete_is_all_or_nothing_on_bad_parts(api: httpx.Client, storage: httpx.Client,  # noqa: ANN001
                                                       puter_user) -> None:  # noqa: ANN001
    """As the server does it: every multipart completion is tried first, and one that fails
    (a wrong ETag) fails the request before any entry is made; that session is failed."""
    h = puter_user.home
    a = start(api, f"{h}/cb/a.txt", 3, uploadMode="multipart", createMissingParents=True)
    b = start(api, f"{h}/cb/b.txt", 3, uploadMode="multipart", createMissingParents=True)
    ea = storage.put(a["multipartPartUrls"][0]["url"], content=b"aaa").headers["etag"]
    storage.put(b["multipartPartUrls"][0]["url"], content=b"bbb").raise_for_status()
    r = api.post("/fs/completeBatchWrite", json=[
        {"uploadId": a["sessionId"], "parts": [{"partNumber": 1, "etag": ea}]},
        {"uploadId": b["sessionId"], "parts": [{"partNumber": 1, "etag": '"0123"'}]},
    ])
    assert r.status_code == 500
    assert api.post("/stat", json={"path": f"{h}/cb/a.txt"}).status_code == 404  # no entry for the good one
    assert api.post("/stat", json={"path": f"{h}/cb/b.txt"}).status_code == 404
    again = api.post("/fs/completeWrite", json={"uploadId": b["sessionId"], "parts": [{"partNumber": 1, "etag": ea}]})
    assert again.status_code == 409 and "status=failed" in again.json()["message"]
