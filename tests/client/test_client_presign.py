"""Presigned uploads (puterfs/client/_presign.py) against a mock server that answers as
presign.jsonl records it: single and multipart sessions, the storage PUTs, resuming from a
saved session, per-part retries, replacing an existing file without ever exposing it to
an overwrite session, and the fallbacks to /batch."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

import httpx
import pytest
from test_client_support import API, TOKEN, WEB, exchange

import puterfs.client._presign as presign
import puterfs.client.fs as fs_module
from puterfs.client import AlreadyExists, PuterClient, PuterConnectionError, QuotaExceeded, UploadSession

pytestmark = pytest.mark.anyio

STORAGE = "http://s3.puter.test"
PART = 1024  # the mock server's part size (the client must follow the server's answer)


class FakePuter:
    """Just enough of Puter + its object storage for the presigned flow."""

    def __init__(self, *, storage: str = STORAGE, part_size: int = PART) -> None:
        self.storage = storage
        self.part_size = part_size
        self.files: dict[str, bytes] = {}
        self.uids: dict[str, str] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, dict[int, bytes]] = {}
        self.calls: list[tuple[str, str]] = []
        self.puts: list[int] = []  # part numbers PUT, in order
        self.fail_put: dict[int, int] = {}  # part number -> failures to answer (500)
        self.cut_put: set[int] = set()  # part numbers whose PUT "loses the connection"
        self.no_presign = False
        self.lose_complete = 0  # completeWrite answers 404 this many times
        self.seen_during_put: list[bytes | None] = []
        self.batches: list[list[str]] = []  # the paths of each /batch request
        self.starts: list[dict[str, Any]] = []  # each /fs/startWrite fileMetadata
        self.batch_starts: list[list[str]] = []  # the paths of each /fs/startBatchWrite
        self.batch_completes: list[int] = []  # the size of each /fs/completeBatchWrite
        self.stat_misses: set[str] = set()  # files /stat does not see yet (made by someone else meanwhile)
        self.fail_complete_batch = False  # /fs/completeBatchWrite answers 500

    # -- helpers
    def _entry(self, path: str) -> dict[str, Any]:
        return {"name": path.rsplit("/", 1)[1], "path": path, "uid": self.uids[path], "id": self.uids[path],
                "is_dir": False, "size": len(self.files[path]), "modified": 1, "created": 1}

    def _url(self, key: str, sid: str, n: int | None) -> str:
        q = f"?X-Amz-Signature=s&x-id={'UploadPart' if n else 'PutObject'}"
        if n:
            q += f"&partNumber={n}&uploadId={sid}"
        return f"{self.storage}/puter-local/{key}{q}"

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((request.method, path))
        if path.startswith("/puter-local/"):
            return self._put(request)
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        body = json.loads(request.content) if request.content and path != "/batch" else None
        if path == "/stat":
            p = body["path"]
            if p not in self.files or p in self.stat_misses:
                return httpx.Response(404, json={"code": "subject_does_not_exist", "message": "Subject does not exist"})
            return httpx.Response(200, json=self._entry(p))
        if path.startswith("/fs/") and self.no_presign:
            return httpx.Response(404, json={"error": "Not Found", "message": "Not Found", "code": "not_found"})
        if path == "/fs/startWrite":
            return self._start(body)
        if path == "/fs/signMultipartParts":
            s = self.sessions.get(body["uploadId"])
            if s is None:
                return httpx.Response(404, json={"code": "not_found", "message": "Upload session was not found"})
            urls = [{"partNumber": n, "url": self._url(s["key"], body["uploadId"], n)} for n in body["partNumbers"]]
            return httpx.Response(200, json={"uploadId": body["uploadId"], "multipartUploadId": "m",
                                             "expiresAt": 9999999999999, "multipartPartUrls": urls})
        if path == "/fs/completeWrite":
            return self._complete(body)
        if path == "/fs/startBatchWrite":
            return self._start_batch(body)
        if path == "/fs/completeBatchWrite":
            return self._complete_batch(body)
        if path == "/fs/abortWrite":
            s = self.sessions.get(body["uploadId"])
            if s is not None:
                s["status"] = "aborted"
                self.objects.pop(s["key"], None)
            return httpx.Response(200, json={"ok": True})
        if path == "/move":
            src = body["source"]
            dst = f"{body['destination']}/{body['new_name']}"
            assert body["overwrite"] is True
            self.files[dst] = self.files.pop(src)
            self.uids[dst] = self.uids.pop(src)
            return httpx.Response(200, json={"moved": self._entry(dst)})
        if path == "/delete":
            self.files.pop(body["path"], None)
            return httpx.Response(200, json={})
        if path == "/batch":
            return self._batch(request)
        raise AssertionError(f"unexpected {request.method} {path}")

    def _free(self, p: str) -> str:
        """The server's dedupe: ``a.txt`` -> ``a (1).txt``, the first free one."""
        stem, dot, ext = p.rpartition(".") if "." in p.rsplit("/", 1)[1] else (p, "", "")
        n = 1
        while f"{stem} ({n}){dot}{ext}" in self.files:
            n += 1
        return f"{stem} ({n}){dot}{ext}"

    def _start(self, body: dict[str, Any]) -> httpx.Response:
        meta = body["fileMetadata"]
        self.starts.append(meta)
        assert meta["overwrite"] is False  # never an overwrite session
        p, size = meta["path"], meta["size"]
        if p in self.files and meta.get("dedupeName"):
            p = self._free(p)
        elif p in self.files:
            return httpx.Response(409, json={"code": "item_with_same_name_exists", "message": "exists"})
        sid, key = str(uuid.uuid4()), str(uuid.uuid4())
        s = {"path": p, "size": size, "key": key, "status": "pending"}
        self.sessions[sid] = s
        self.objects[key] = {}
        base = {"sessionId": sid, "contentType": meta.get("contentType", "application/octet-stream"),
                "expiresAt": 9999999999999}
        if size <= self.part_size:
            s["mode"] = "single"
            return httpx.Response(200, json={**base, "uploadMode": "single", "url": self._url(key, sid, None)})
        s["mode"] = "multipart"
        count = -(-size // self.part_size)
        urls = [{"partNumber": n, "url": self._url(key, sid, n)} for n in range(1, count + 1)]
        return httpx.Response(200, json={**base, "uploadMode": "multipart", "multipartUploadId": "m",
                                         "multipartPartSize": self.part_size, "multipartPartCount": count,
                                         "multipartPartUrls": urls})

    def _start_batch(self, items: list[dict[str, Any]]) -> httpx.Response:
        """All-or-nothing as recorded (presign.jsonl 105, 106): one colliding item -> 409."""
        self.batch_starts.append([item["fileMetadata"]["path"] for item in items])
        paths = [item["fileMetadata"]["path"] for item in items]
        if len(set(paths)) != len(paths):
            return httpx.Response(409, json={"code": "conflict", "message": "Batch contains duplicate target path"})
        for p in paths:
            if p in self.files:
                return httpx.Response(409, json={
                    "code": "item_with_same_name_exists", "entry_name": p.rsplit("/", 1)[1],
                    "message": "A file already exists at this path and overwrite was not requested"})
        return httpx.Response(200, json=[json.loads(self._start(item).content) for item in items])

    def _complete_batch(self, items: list[dict[str, Any]]) -> httpx.Response:
        self.batch_completes.append(len(items))
        if self.fail_complete_batch:
            return httpx.Response(500, json={"code": "internal_error", "message": "Internal Server Error"})
        for item in items:
            s = self.sessions.get(item["uploadId"])
            if s is None:
                return httpx.Response(404, json={"code": "not_found", "message": "Upload session was not found"})
            if s["status"] != "pending":
                return httpx.Response(409, json={"code": "conflict",
                                                 "message": f"Upload session is not pending (status={s['status']})"})
        return httpx.Response(200, json=[json.loads(self._complete(item).content) for item in items])

    def _put(self, request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers  # no Puter auth to the storage server
        key = request.url.path.rsplit("/", 1)[1]
        n = int(request.url.params.get("partNumber", 1))
        data = request.content
        assert int(request.headers["content-length"]) == len(data)
        if n in self.cut_put:
            raise httpx.ReadError("connection lost")
        if self.fail_put.get(n, 0) > 0:
            self.fail_put[n] -= 1
            return httpx.Response(500, text="<Error>InternalError</Error>")
        self.puts.append(n)
        self.objects.setdefault(key, {})[n] = data
        target = next((s["path"] for s in self.sessions.values() if s["key"] == key), None)
        self.seen_during_put.append(self.files.get(target.rsplit("/", 1)[0] + "/big.bin") if target else None)
        return httpx.Response(200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _complete(self, body: dict[str, Any]) -> httpx.Response:
        if self.lose_complete:
            self.lose_complete -= 1
            return httpx.Response(404, json={"code": "not_found", "message": "Upload session was not found"})
        s = self.sessions.get(body["uploadId"])
        if s is None:
            return httpx.Response(404, json={"code": "not_found", "message": "Upload session was not found"})
        if s["status"] != "pending":
            return httpx.Response(409, json={"code": "conflict",
                                             "message": f"Upload session is not pending (status={s['status']})"})
        parts = self.objects[s["key"]]
        if s["mode"] == "multipart":
            listed = body["parts"]
            for p in listed:
                assert p["etag"] == f'"{hashlib.md5(parts[p["partNumber"]]).hexdigest()}"'
            data = b"".join(parts[p["partNumber"]] for p in listed)
        else:
            data = parts.get(1, b"")
        s["status"] = "completed"
        self.files[s["path"]] = data
        self.uids[s["path"]] = s["key"]
        v2 = {"uuid": s["key"], "uid": s["key"], "path": s["path"], "name": s["path"].rsplit("/", 1)[1],
              "isDir": False, "size": len(data), "modified": 1, "created": 1, "accessed": 1, "metadata": None}
        return httpx.Response(200, json={"sessionId": body["uploadId"], "fsEntry": v2, "wasOverwrite": False,
                                         "requestedThumbnail": None})

    def _batch(self, request: httpx.Request) -> httpx.Response:
        text = request.content
        ops = [json.loads(m) for m in re.findall(rb'name="operation"\r\n\r\n(.*?)\r\n--', text)]
        files = re.findall(rb'filename="[^"]*"\r\nContent-Type: [^\r]*\r\n\r\n(.*?)\r\n--', text, re.S)
        results = []
        self.batches.append([f"{op['path']}/{op['name']}" for op in ops])
        if any(len(data) >= presign.BATCH_MAX_FILE for data in files):
            return httpx.Response(413, headers={"X-Needs-Upgrade": "true"}, json={
                "code": "too_large", "message": f"File in batch exceeds {presign.BATCH_MAX_FILE} bytes"})
        for op, data in zip(ops, files, strict=True):
            p = f"{op['path']}/{op['name']}"
            if p in self.files and op.get("dedupe_name"):
                p = self._free(p)
            self.files[p] = data
            self.uids[p] = str(uuid.uuid4())
            results.append(self._entry(p))
        return httpx.Response(200, json={"results": results})


def test_mock_answers_have_the_recorded_keys() -> None:
    fake = FakePuter()
    single = fake._start({"fileMetadata": {"path": "/a/x", "size": 5, "overwrite": False}}).json()
    multi = fake._start({"fileMetadata": {"path": "/a/y", "size": PART + 1, "overwrite": False}}).json()
    assert set(single) == set(exchange("presign.jsonl", "startWrite single (5 bytes)")["response"])
    assert set(multi) == set(exchange("presign.jsonl", "startWrite 10 MiB + 1 byte (multipart)")["response"])


def _client(fake: FakePuter, api: str = API) -> PuterClient:
    c = PuterClient(token=TOKEN, api_url=api, web_url=WEB, transport=httpx.MockTransport(fake.handler),
                    retry_base_delay=0.001, retry_max_delay=0.01, tier="unlimited")
    c.username = "admin"
    return c


def _data(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


async def test_single_upload_of_a_new_file() -> None:
    fake = FakePuter()
    async with _client(fake) as client:
        entry = await client.fs_write_large("/admin/s.txt", b"hello")
    assert fake.files["/admin/s.txt"] == b"hello"
    assert entry["path"] == "/admin/s.txt" and entry["size"] == 5 and entry["is_dir"] is False
    assert [c for c in fake.calls if c[1].startswith("/fs/")] == [("POST", "/fs/startWrite"), ("POST", "/fs/completeWrite")]


async def test_multipart_upload_streams_parts_from_a_file(tmp_path) -> None:  # noqa: ANN001
    fake = FakePuter()
    data = _data(PART * 5 + 17)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    async with _client(fake) as client:
        with open(src, "rb") as f:
            entry = await client.fs_write_large("/admin/big.bin", f, parallel=3)
    assert fake.files["/admin/big.bin"] == data
    assert sorted(fake.puts) == [1, 2, 3, 4, 5, 6]
    assert entry["size"] == len(data)


async def test_an_existing_file_is_replaced_only_when_the_new_one_is_complete() -> None:
    fake = FakePuter()
    fake.files["/admin/big.bin"] = b"old version"
    fake.uids["/admin/big.bin"] = "old-uid"
    async with _client(fake) as client:
        await client.fs_write_large("/admin/big.bin", _data(PART * 3))
        with pytest.raises(AlreadyExists):
            await client.fs_write_large("/admin/big.bin", b"x", overwrite=False)
    # every part went to a new object under a hidden name; the old file stayed whole until the move
    assert fake.seen_during_put == [b"old version"] * 3
    starts = [s for s in fake.sessions.values()]
    assert starts[0]["path"].startswith("/admin/.puterfs-upload-")
    assert fake.files["/admin/big.bin"] == _data(PART * 3)
    assert not any(".puterfs-upload-" in p for p in fake.files)


async def test_a_part_that_fails_is_retried_alone() -> None:
    fake = FakePuter()
    fake.fail_put[2] = 2
    async with _client(fake) as client:
        await client.fs_write_large("/admin/r.bin", _data(PART * 4))
    assert sorted(fake.puts) == [1, 2, 3, 4]  # each successful once
    assert fake.files["/admin/r.bin"] == _data(PART * 4)


async def test_resume_from_a_saved_session_sends_only_the_missing_parts() -> None:
    fake = FakePuter()
    data = _data(PART * 6)
    saved: list[str] = []
    fake.cut_put = {5}
    async with _client(fake) as client:
        with pytest.raises(PuterConnectionError):
            await client.fs_write_large("/admin/big.bin", data, parallel=1, on_progress=lambda s: saved.append(s.to_json()))
        assert "/admin/big.bin" not in fake.files
        session = UploadSession.from_json(saved[-1])
        assert {1, 2, 3, 4} <= set(session.etags) and 5 not in session.etags
        assert session.done_bytes == len(session.etags) * PART
        missing = sorted(set(range(1, 7)) - set(session.etags))
        fake.cut_put = set()
        fake.puts.clear()
        await client.fs_write_large("/admin/big.bin", data, session=session)
    assert sorted(fake.puts) == missing
    assert ("POST", "/fs/signMultipartParts") in fake.calls  # URLs signed again on resume
    assert fake.files["/admin/big.bin"] == data


async def test_an_expired_or_lost_session_starts_again() -> None:
    fake = FakePuter()
    data = _data(PART * 2 + 1)
    saved: list[UploadSession] = []
    async with _client(fake) as client:
        fake.lose_complete = 1  # the server forgot the session: start again, once
        await client.fs_write_large("/admin/l.bin", data, on_progress=saved.append)
        assert fake.files["/admin/l.bin"] == data
        stale = UploadSession.from_json(saved[0].to_json())
        stale.expires_at = 0
        stale.target = "/admin/e.bin"
        before = len(fake.sessions)
        await client.fs_write_large("/admin/e.bin", data, session=stale)
    assert len(fake.sessions) == before + 1
    assert fake.files["/admin/e.bin"] == data


async def test_async_iterator_source() -> None:
    fake = FakePuter()
    data = _data(PART * 3 + 5)

    async def gen():
        for i in range(0, len(data), 300):
            yield data[i : i + 300]

    async with _client(fake) as client:
        await client.fs_write_large("/admin/it.bin", gen(), size=len(data))
    assert fake.files["/admin/it.bin"] == data


async def test_fallback_to_batch_without_presigned_routes() -> None:
    fake = FakePuter()
    fake.no_presign = True
    async with _client(fake) as client:
        entry = await client.fs_write_large("/admin/f.bin", _data(3000))
    assert fake.files["/admin/f.bin"] == _data(3000)
    assert entry["path"] == "/admin/f.bin"
    assert ("POST", "/batch") in fake.calls


async def test_fallback_when_storage_urls_point_at_the_servers_own_loopback() -> None:
    fake = FakePuter(storage="http://127.0.0.1:4566")  # the server's own loopback; the API is remote
    async with _client(fake) as client:
        await client.fs_write_large("/admin/u.bin", _data(3000))
    assert fake.puts == []
    assert ("POST", "/fs/abortWrite") in fake.calls
    assert fake.files["/admin/u.bin"] == _data(3000)


async def test_too_large_for_batch_and_no_presign_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presign, "BATCH_MAX_FILE", 2000)
    fake = FakePuter()
    fake.no_presign = True
    async with _client(fake) as client:
        with pytest.raises(QuotaExceeded) as info:
            await client.fs_write_large("/admin/t.bin", _data(3000))
    assert info.value.code == "too_large" and "100 MiB" in info.value.message
    assert "/admin/t.bin" not in fake.files


async def test_fs_write_uses_the_presigned_flow_for_large_content(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fs_module, "LARGE_FILE", 2000)
    fake = FakePuter(storage="http://api.puter.test")
    async with _client(fake) as client:
        await client.fs_write("/admin/w.bin", _data(2500))
        await client.fs_write("/admin/small.txt", b"small")
    assert fake.files["/admin/w.bin"] == _data(2500)
    assert ("POST", "/fs/startWrite") in fake.calls and ("POST", "/batch") in fake.calls


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """/batch's 100 MiB cap (exclusive) and the client's threshold, both made 2000 bytes."""
    monkeypatch.setattr(fs_module, "LARGE_FILE", 2000)
    monkeypatch.setattr(presign, "BATCH_MAX_FILE", 2000)
    return 2000


async def test_fs_write_many_sends_files_at_the_cap_presigned(small_cap: int) -> None:
    fake = FakePuter(storage="http://api.puter.test")
    names = ["/admin/a.txt", "/admin/at-cap.bin", "/admin/below.bin", "/admin/b.txt", "/admin/over.bin"]
    contents = [b"a", _data(small_cap), _data(small_cap - 1), b"b", _data(3 * small_cap)]
    async with _client(fake) as client:
        results = await client.fs_write_many(list(zip(names, contents, strict=True)))
    assert [r["path"] for r in results] == names  # one entry per file, in order
    assert all(fake.files[n] == c for n, c in zip(names, contents, strict=True))
    # the small ones in one /batch; the files of the cap or more through presigned sessions
    assert fake.batches == [["/admin/a.txt", "/admin/below.bin", "/admin/b.txt"]]
    assert [m["path"] for m in fake.starts] == ["/admin/at-cap.bin", "/admin/over.bin"]


def _count(fake: FakePuter, path: str) -> int:
    return sum(1 for _, p in fake.calls if p == path)


async def test_fs_write_many_starts_and_completes_large_files_in_one_batch(small_cap: int) -> None:
    fake = FakePuter(storage="http://api.puter.test")
    fake.files["/admin/old.bin"] = b"the old one"  # replaced: uploaded under a hidden name, then moved
    fake.uids["/admin/old.bin"] = "u-old"
    names = ["/admin/l1.bin", "/admin/s.txt", "/admin/old.bin", "/admin/l3.bin"]
    contents = [_data(small_cap), b"small", _data(small_cap + PART), _data(small_cap + 7)]
    async with _client(fake) as client:
        results = await client.fs_write_many(list(zip(names, contents, strict=True)))
    assert [r["path"] for r in results] == names
    assert all(fake.files[n] == c for n, c in zip(names, contents, strict=True))
    large = [names[0], names[2], names[3]]
    assert len(fake.batch_starts) == 1 and fake.batch_starts[0][0::2] == [large[0], large[2]]
    assert fake.batch_starts[0][1].startswith("/admin/.puterfs-upload-")  # never an overwrite session
    assert fake.batch_completes == [3]
    assert _count(fake, "/fs/startWrite") == 0 and _count(fake, "/fs/completeWrite") == 0
    # the parts of each file as before: ceil(size / part size) PUTs each
    assert len(fake.puts) == sum(-(-len(c) // PART) for c in (contents[0], contents[2], contents[3]))
    assert not any(n.startswith("/admin/.puterfs-upload-") for n in fake.files)


async def test_fs_write_many_batch_409_falls_back_to_one_by_one(small_cap: int) -> None:
    """startBatchWrite is all-or-nothing: a file that appeared meanwhile fails the whole
    request (409); the files then go one by one and only that one fails."""
    fake = FakePuter(storage="http://api.puter.test")
    fake.files["/admin/raced.bin"] = b"someone else's"
    fake.uids["/admin/raced.bin"] = "u-raced"
    fake.stat_misses.add("/admin/raced.bin")
    names = ["/admin/a.bin", "/admin/raced.bin", "/admin/c.bin"]
    contents = [_data(small_cap), _data(small_cap + 1), _data(small_cap + 2)]
    async with _client(fake) as client:
        results = await client.fs_write_many(list(zip(names, contents, strict=True)))
    assert len(fake.batch_starts) == 1 and fake.batch_completes == []
    assert results[0]["path"] == names[0] and results[2]["path"] == names[2]
    assert isinstance(results[1], AlreadyExists)
    assert fake.files["/admin/raced.bin"] == b"someone else's"  # untouched
    assert fake.files[names[0]] == contents[0] and fake.files[names[2]] == contents[2]
    assert _count(fake, "/fs/startWrite") == 3 and _count(fake, "/fs/completeWrite") == 2
    assert all(s["status"] != "pending" for s in fake.sessions.values())


async def test_fs_write_many_failed_batch_completion_completes_one_by_one(small_cap: int) -> None:
    fake = FakePuter(storage="http://api.puter.test")
    fake.fail_complete_batch = True
    names = ["/admin/x.bin", "/admin/y.bin"]
    contents = [_data(small_cap), _data(small_cap + 3)]
    async with _client(fake) as client:
        results = await client.fs_write_many(list(zip(names, contents, strict=True)))
    assert [r["path"] for r in results] == names
    assert all(fake.files[n] == c for n, c in zip(names, contents, strict=True))
    assert len(fake.batch_starts) == 1 and _count(fake, "/fs/startWrite") == 0
    assert _count(fake, "/fs/completeWrite") == 2  # each session completed on its own, no re-upload
    assert len(fake.puts) == sum(-(-len(c) // PART) for c in contents)


async def test_fs_write_many_a_large_file_that_cannot_go_up_fails_alone(small_cap: int) -> None:
    fake = FakePuter()
    fake.no_presign = True  # no presigned routes, and /batch refuses it: that file's error only
    async with _client(fake) as client:
        results = await client.fs_write_many([("/admin/ok.txt", b"ok"), ("/admin/big.bin", _data(small_cap))])
    assert results[0]["path"] == "/admin/ok.txt" and fake.files["/admin/ok.txt"] == b"ok"
    assert isinstance(results[1], QuotaExceeded) and results[1].code == "too_large"
    assert "/admin/big.bin" not in fake.files and ["/admin/big.bin"] not in fake.batches


async def test_fs_write_many_with_metadata_sends_large_files_presigned(small_cap: int) -> None:
    fake = FakePuter(storage="http://api.puter.test")
    async with _client(fake) as client:
        results = await client.fs_write_many([("/admin/m.bin", _data(small_cap))], metadata=[{"k": "v"}])
    assert results[0]["path"] == "/admin/m.bin" and fake.files["/admin/m.bin"] == _data(small_cap)
    assert fake.starts == [{**fake.starts[0], "metadata": {"k": "v"}}] and fake.batches == []


async def test_fs_write_dedupe_name_of_large_content_goes_presigned(small_cap: int) -> None:
    fake = FakePuter(storage="http://api.puter.test")
    async with _client(fake) as client:
        await client.fs_write("/admin/d.bin", b"the old one")
        entry = await client.fs_write("/admin/d.bin", _data(small_cap), {"dedupeName": True})
        again = await client.fs_write("/admin/d.bin", _data(small_cap + 1), {"dedupeName": True})
    assert entry["path"] == "/admin/d (1).bin" and fake.files["/admin/d (1).bin"] == _data(small_cap)
    assert again["path"] == "/admin/d (2).bin" and fake.files["/admin/d (2).bin"] == _data(small_cap + 1)
    assert fake.files["/admin/d.bin"] == b"the old one"  # never an overwrite
    # the server picks the free name at start: no hidden name, no /move
    assert [(m["path"], m["dedupeName"]) for m in fake.starts] == [("/admin/d.bin", True)] * 2
    assert fake.batches == [["/admin/d.bin"]] and ("POST", "/move") not in fake.calls


# -- against the emulator (its presigned routes and storage URLs are as strict as real S3) -------

MIB = 1024 * 1024


def _pattern(n: int) -> bytes:
    block = bytes(i % 251 for i in range(251 * 1024))
    return (block * (n // len(block) + 1))[:n]


async def _sha_on_server(client: PuterClient, path: str) -> str:
    import io

    buf = io.BytesIO()
    await client.fs_read_into(path, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.fixture
async def emu_client(puter_user):  # noqa: ANN001, ANN201
    async with PuterClient(token=puter_user.token, api_url=puter_user.url, web_url=puter_user.web_url,
                           retry_base_delay=0.01, retry_max_delay=0.1) as client:
        yield client


async def test_emulator_multipart_upload_and_replace(emu_client: PuterClient, emulator) -> None:  # noqa: ANN001
    data = _pattern(21 * MIB + 1)  # 3 parts of the emulator's 10 MiB
    await emu_client.fs_write("~/old.bin", b"the old version")
    entry = await emu_client.fs_write_large("~/big.bin", data)
    assert entry["size"] == len(data)
    assert await _sha_on_server(emu_client, "~/big.bin") == hashlib.sha256(data).hexdigest()
    # replacing an existing file: a hidden name, then a move; nothing left behind
    entry = await emu_client.fs_write_large("~/old.bin", data[: 11 * MIB])
    assert entry["size"] == 11 * MIB
    assert await _sha_on_server(emu_client, "~/old.bin") == hashlib.sha256(data[: 11 * MIB]).hexdigest()
    names = [e["name"] for e in await emu_client.fs_readdir("~")]
    assert not [n for n in names if n.startswith(".puterfs-upload-")]


async def test_emulator_resume_after_an_interrupted_upload(emu_client: PuterClient, emulator) -> None:  # noqa: ANN001
    data = _pattern(31 * MIB)  # 4 parts
    saved: list[str] = []

    class Stop(Exception):
        pass

    def progress(session: UploadSession) -> None:
        saved.append(session.to_json())
        if len(session.etags) >= 2:
            raise Stop  # the process "dies" after two parts

    with pytest.raises(Stop):
        await emu_client.fs_write_large("~/resumed.bin", data, parallel=1, on_progress=progress)
    session = UploadSession.from_json(saved[-1])
    assert len(session.etags) == 2
    emulator.clear_log()
    await emu_client.fs_write_large("~/resumed.bin", data, session=session)
    puts = [r for r in emulator.log() if r["method"] == "PUT"]
    assert len(puts) == 2  # only the missing parts
    assert await _sha_on_server(emu_client, "~/resumed.bin") == hashlib.sha256(data).hexdigest()


class _Hasher:
    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def write(self, chunk: bytes) -> int:
        self.h.update(chunk)
        return len(chunk)


async def test_emulator_fs_write_of_150_mib_goes_presigned(emu_client: PuterClient, emulator, tmp_path) -> None:  # noqa: ANN001
    size = 150 * MIB
    src = tmp_path / "big150.bin"
    h = hashlib.sha256()
    block = _pattern(MIB)
    with open(src, "wb") as f:
        for i in range(150):
            b = i.to_bytes(4, "little") + block[4:]
            f.write(b)
            h.update(b)
    emulator.clear_log()
    entry = await emu_client.fs_write("~/big150.bin", src)
    assert entry["size"] == size
    paths = [r["path"] for r in emulator.log()]
    assert "/fs/startWrite" in paths and "/batch" not in paths
    sink = _Hasher()
    await emu_client.fs_read_into("~/big150.bin", sink)  # streamed: checked without holding it
    assert sink.h.hexdigest() == h.hexdigest()


async def test_emulator_fs_write_many_with_a_file_of_exactly_100_mib(emu_client: PuterClient, emulator,  # noqa: ANN001
                                                                     tmp_path) -> None:  # noqa: ANN001
    """The real cap: /batch refuses a file of 100 MiB or more (413), so write_many must send that
    one presigned and the others in one /batch. The file is sparse (cheap to make and read)."""
    big = tmp_path / "exactly-100-mib.bin"
    with open(big, "wb") as f:
        f.write(b"head")
        f.truncate(100 * MIB)
    emulator.clear_log()
    results = await emu_client.fs_write_many([("~/m1.txt", b"one"), ("~/m100.bin", big), ("~/m2.txt", b"two")])
    home = await emu_client.home()
    assert [r["path"] for r in results] == [f"{home}/m1.txt", f"{home}/m100.bin", f"{home}/m2.txt"]
    assert results[1]["size"] == 100 * MIB
    log = emulator.log()
    assert [r["status"] for r in log if r["path"] == "/batch"] == [200]  # the two small ones
    assert any(r["path"] == "/fs/startWrite" for r in log) and any(r["method"] == "PUT" for r in log)
    assert await emu_client.fs_read("~/m100.bin", offset=0, length=8) == b"head\0\0\0\0"
    assert await emu_client.fs_read("~/m2.txt") == b"two"


async def test_emulator_fs_write_dedupe_name_presigned(emu_client: PuterClient, emulator,  # noqa: ANN001
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """dedupeName through the presigned flow, as the emulator (startWrite) answers it: the
    client's threshold lowered to 1 MiB so that a small file takes that route here."""
    monkeypatch.setattr(fs_module, "LARGE_FILE", MIB)
    await emu_client.fs_write("~/dd.bin", b"old")
    emulator.clear_log()
    entry = await emu_client.fs_write("~/dd.bin", _pattern(MIB), {"dedupeName": True})
    home = await emu_client.home()
    assert entry["path"] == f"{home}/dd (1).bin" and entry["size"] == MIB
    assert await emu_client.fs_read("~/dd.bin") == b"old"
    assert await _sha_on_server(emu_client, "~/dd (1).bin") == hashlib.sha256(_pattern(MIB)).hexdigest()
    paths = [r["path"] for r in emulator.log()]
    assert "/fs/startWrite" in paths and "/batch" not in paths and "/move" not in paths


async def test_emulator_fs_write_many_sends_large_files_in_one_batch(emu_client: PuterClient, emulator,  # noqa: ANN001
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the emulator's /fs/startBatchWrite and /fs/completeBatchWrite (threshold lowered
    to 1 MiB): one start and one completion for three files, one of them replacing a file and
    one in a folder made on the way."""
    monkeypatch.setattr(fs_module, "LARGE_FILE", MIB)
    await emu_client.fs_write("~/eb2.bin", b"the old one")
    emulator.clear_log()
    contents = [_pattern(MIB), _pattern(MIB + 5)[::-1], _pattern(2 * MIB)]
    names = ["~/eb1.bin", "~/eb2.bin", "~/ebdir/eb3.bin"]
    results = await emu_client.fs_write_many(list(zip(names, contents, strict=True)), create_missing_parents=True)
    home = await emu_client.home()
    assert [r["path"] for r in results] == [n.replace("~", home) for n in names]
    log = emulator.log()
    paths = [r["path"] for r in log]
    assert paths.count("/fs/startBatchWrite") == 1 and paths.count("/fs/completeBatchWrite") == 1
    assert "/fs/startWrite" not in paths and "/fs/completeWrite" not in paths and "/batch" not in paths
    assert all(r["status"] == 200 for r in log if r["path"].startswith("/fs/"))
    for n, c in zip(names, contents, strict=True):
        assert await _sha_on_server(emu_client, n) == hashlib.sha256(c).hexdigest()
    # a file that exists with overwrite=False fails alone; the others still go up
    emulator.clear_log()
    again = await emu_client.fs_write_many([("~/eb1.bin", _pattern(MIB)), ("~/eb4.bin", _pattern(MIB))],
                                           overwrite=False)
    assert isinstance(again[0], AlreadyExists) and again[1]["path"] == f"{home}/eb4.bin"
    assert await _sha_on_server(emu_client, "~/eb4.bin") == hashlib.sha256(_pattern(MIB)).hexdigest()
