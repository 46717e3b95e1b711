"""The emulator's WebDAV (dav.<domain>, webdav.py) driven by real clients over real HTTP:
curl for every verb, rclone's webdav backend for a copy/list/move/delete round trip, and
the ``dav`` rate limit scope (600 per 60 s per fingerprint before auth, 10 in flight)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from puterfs.emulator.testing import EmulatorProcess, local_http

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (make deps)")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("dav-emu"), tier="free") as proc:
        yield proc


class Curl:
    """curl against dav.puter.localhost:<port> (resolved to 127.0.0.1), the credentials in a
    config file rather than argv."""

    def __init__(self, emu: EmulatorProcess, tmp: Path, user: str | None = None, password: str | None = None):
        self.host = f"dav.puter.localhost:{emu.port}"
        self.base = f"http://{self.host}"
        self.cfg = tmp / f"curl-{user or 'anon'}.cfg"
        lines = [f'resolve = "{self.host}:127.0.0.1"', "silent", "show-error"]
        if user is not None:
            lines.append(f'user = "{user}:{password}"')
        self.cfg.write_text("\n".join(lines) + "\n")
        self.cfg.chmod(0o600)
        self.tmp = tmp

    def __call__(self, method: str, path: str, *args: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        hdr = self.tmp / "headers.txt"
        body = self.tmp / "body.bin"
        cmd = ["curl", "-K", str(self.cfg), "-X", method, "-D", str(hdr), "-o", str(body), *args]
        if data is not None:
            src = self.tmp / "upload.bin"
            src.write_bytes(data)
            cmd += ["--data-binary", f"@{src}"]
        if method == "HEAD":
            cmd[cmd.index("-X"):cmd.index("-X") + 2] = ["-I"]
        cmd.append(self.base + path)
        subprocess.run(cmd, check=True, timeout=60)
        blocks = hdr.read_bytes().decode("latin-1").strip().split("\r\n\r\n")
        lines = blocks[-1].split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return status, headers, body.read_bytes() if body.exists() else b""


@pytest.fixture
def curl(emu: EmulatorProcess, tmp_path: Path) -> Curl:
    return Curl(emu, tmp_path, emu.username, emu.password)


def api_stat(emu: EmulatorProcess, path: str) -> httpx.Response:
    return local_http.post(emu.url + "/stat", json={"path": path}, headers={"Authorization": f"Bearer {emu.token}"})


def change_ts(emu: EmulatorProcess) -> int:
    r = local_http.get(emu.url + "/cache/last-change-timestamp", headers={"Authorization": f"Bearer {emu.token}"})
    return r.json()["timestamp"]


def test_curl_every_verb(emu: EmulatorProcess, curl: Curl) -> None:
    home = "/" + emu.username
    d = home + "/curl-dav"
    st, h, _ = curl("OPTIONS", "/")
    assert st == 200 and h["dav"] == "1, 2, ordered-collections" and "PROPFIND" in h["allow"]

    before = change_ts(emu)
    st, h, _ = curl("MKCOL", d)
    assert (st, h["location"]) == (201, d + "/")
    assert curl("MKCOL", d)[0] == 405
    assert change_ts(emu) > before  # the same mutation path as /mkdir: the change timestamp moved

    # PUT: new 201, overwrite 204, a trailing space trimmed, missing parents created
    st, h, _ = curl("PUT", d + "/hello.txt", data=b"hello dav\n")
    assert st == 201 and h["etag"].startswith('"') and "last-modified" in h
    assert curl("PUT", d + "/hello.txt", data=b"HELLO DAV!\n")[0] == 204
    assert curl("PUT", d + "/spaced.txt%20", data=b"s")[0] == 201
    assert api_stat(emu, d + "/spaced.txt").json()["name"] == "spaced.txt"
    assert curl("PUT", d + "/deep/er/f.txt", data=b"deep")[0] == 201
    assert api_stat(emu, d + "/deep/er").json()["is_dir"] is True
    assert curl("PUT", d + "/.DS_Store", data=b"junk")[0] == 422

    # GET / HEAD / Range
    st, h, body = curl("GET", d + "/hello.txt")
    assert (st, body, h["content-type"], h["accept-ranges"]) == (200, b"HELLO DAV!\n", "application/octet-stream",
                                                                   "bytes")
    st, h, body = curl("GET", d + "/hello.txt", "-H", "Range: bytes=1-3")
    assert (st, body, h["content-range"]) == (206, b"ELL", "bytes 1-3/11")
    st, h, _ = curl("HEAD", d + "/hello.txt")
    assert (st, h["content-length"]) == (200, "11")
    assert curl("GET", d)[0] == 400

    # PROPFIND: depth 0 is the entry, depth 1 its children (sorted), infinity = 1
    st, h, body = curl("PROPFIND", d, "-H", "Depth: 0")
    assert st == 207 and h["content-type"].startswith("application/xml")
    assert body.count(b"<D:response>") == 1
    st, _, body = curl("PROPFIND", d, "-H", "Depth: infinity")
    hrefs = [x.split(b"</D:href>")[0].decode() for x in body.split(b"<D:href>")[1:]]
    assert hrefs == [d + "/", d + "/deep/", d + "/hello.txt", d + "/spaced.txt"]
    assert b"<D:getcontentlength>11</D:getcontentlength>" in body

    # COPY / MOVE with Destination and Overwrite
    assert curl("COPY", d + "/hello.txt", "-H", f"Destination: {curl.base}{d}/copy.txt")[0] == 201
    assert curl("COPY", d + "/hello.txt", "-H", f"Destination: {d}/copy.txt", "-H", "Overwrite: F")[0] == 412
    assert curl("MOVE", d + "/copy.txt", "-H", f"Destination: {d}/moved.txt")[0] == 201
    assert api_stat(emu, d + "/copy.txt").status_code == 404
    assert curl("MOVE", d + "/moved.txt", "-H", f"Destination: {d}/spaced.txt")[0] == 204  # replaced
    assert curl("GET", d + "/spaced.txt")[2] == b"HELLO DAV!\n"
    assert curl("MOVE", d + "/hello.txt", "-H", f"Destination: {d}/nope/x.txt")[0] == 409
    assert curl("COPY", d + "/deep", "-H", f"Destination: {d}/deep2")[0] == 201
    assert curl("GET", d + "/deep2/er/f.txt")[2] == b"deep"

    # LOCK / UNLOCK: writes without the token are 423, with If: (<token>) they pass
    st, h, _ = curl("LOCK", d + "/hello.txt")
    token = h["lock-token"]
    assert st == 200 and token.startswith("<urn:uuid:")
    assert curl("PUT", d + "/hello.txt", data=b"x")[0] == 423
    assert curl("DELETE", d + "/hello.txt")[0] == 423
    assert curl("PUT", d + "/hello.txt", "-H", f"If: ({token})", data=b"locked write\n")[0] == 204
    assert curl("UNLOCK", d + "/hello.txt", "-H", f"Lock-Token: {token}")[0] == 204
    assert curl("DELETE", d + "/hello.txt")[0] == 204

    # PROPPATCH stores nothing; POST is 405; DELETE is recursive
    assert curl("PROPPATCH", d + "/spaced.txt", data=b"<x/>")[0] == 207
    st, h, _ = curl("POST", d + "/spaced.txt", data=b"x")
    assert st == 405 and "PROPFIND" in h["allow"]
    assert curl("DELETE", d + "/deep")[0] == 204
    assert api_stat(emu, d + "/deep/er/f.txt").status_code == 404
    assert curl("DELETE", d + "/deep")[0] == 404


def test_curl_auth(emu: EmulatorProcess, tmp_path: Path) -> None:
    st, h, body = Curl(emu, tmp_path)("PROPFIND", "/")
    assert (st, body, h["www-authenticate"]) == (401, b"Authentication required", 'Basic realm="WebDAV"')
    st, h, body = Curl(emu, tmp_path, emu.username, "wrong-password")("PROPFIND", "/")
    assert (st, body, h["www-authenticate"]) == (401, b"Invalid credentials", 'Basic realm="WebDAV"')
    assert Curl(emu, tmp_path, "-token", emu.token)("PROPFIND", "/" + emu.username, "-H", "Depth: 0")[0] == 207
    assert Curl(emu, tmp_path, "-token", "garbage")("PROPFIND", "/")[2] == b"Invalid token"
    other, _ = emu.new_user(temp=False)
    assert Curl(emu, tmp_path, emu.username, emu.password)("PROPFIND", "/" + other)[:3:2] == (403, b"Permission denied")


class HostProxy:
    """A plain-HTTP forward proxy to the emulator for clients that cannot resolve
    ``dav.puter.localhost`` (Go's resolver, so rclone): each request's absolute-form target
    becomes origin-form, its Host header is kept, and the connection closes after the answer."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.port)) as up:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            head, rest = head.split(b"\r\n\r\n", 1)
            first, *lines = head.split(b"\r\n")
            method, target, version = first.split(b" ")
            target = b"/" + target.split(b"/", 3)[3] if target.startswith(b"http://") else target
            lines = [ln for ln in lines if not ln.lower().startswith((b"connection:", b"proxy-connection:"))]
            up.sendall(b"\r\n".join([b" ".join([method, target, version]), *lines, b"Connection: close"])
                       + b"\r\n\r\n" + rest)

            def upload() -> None:
                try:
                    while chunk := conn.recv(65536):
                        up.sendall(chunk)
                except OSError:
                    pass

            threading.Thread(target=upload, daemon=True).start()
            while chunk := up.recv(65536):
                conn.sendall(chunk)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (make deps)")
def test_rclone_webdav_remote(emu: EmulatorProcess, tmp_path: Path) -> None:
    """rclone's webdav backend (vendor "other") as a user would configure it: copy a tree up,
    list it, check it (content downloaded), move a file, purge the tree."""
    obscured = subprocess.run(["rclone", "obscure", "-"], input=emu.password, capture_output=True, text=True,
                              check=True).stdout.strip()
    proxy = HostProxy(emu.port)
    env = {**os.environ, "RCLONE_CONFIG": str(tmp_path / "rclone.conf"), "HTTP_PROXY": proxy.url,
           "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": "",
           "RCLONE_CONFIG_PUTER_TYPE": "webdav", "RCLONE_CONFIG_PUTER_VENDOR": "other",
           "RCLONE_CONFIG_PUTER_URL": f"http://dav.puter.localhost:{emu.port}/{emu.username}",
           "RCLONE_CONFIG_PUTER_USER": emu.username, "RCLONE_CONFIG_PUTER_PASS": obscured}
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "sub").mkdir()
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 400)

    def rclone(*args: str) -> str:
        r = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    try:
        rclone("copy", str(src), "puter:rc")
        assert sorted(rclone("lsf", "-R", "puter:rc").split()) == ["a.txt", "sub/", "sub/b.bin"]
        assert api_stat(emu, f"/{emu.username}/rc/sub/b.bin").json()["size"] == 256 * 400
        rclone("check", "--download", str(src), "puter:rc")
        rclone("moveto", "puter:rc/a.txt", "puter:rc/sub/a2.txt")
        assert sorted(rclone("lsf", "-R", "puter:rc").split()) == ["sub/", "sub/a2.txt", "sub/b.bin"]
        assert rclone("cat", "puter:rc/sub/a2.txt") == "alpha\n"
        rclone("purge", "puter:rc")
        assert api_stat(emu, f"/{emu.username}/rc").status_code == 404
    finally:
        proxy.close()




def test_dav_rate_limit_window(tmp_path: Path) -> None:
    """600 requests per 60 s per fingerprint, counted before auth: the 601st is 429."""
    with EmulatorProcess(tmp_path / "emu", tier="free") as emu, local_http.Client(
            base_url=emu.url, headers={"Host": f"dav.puter.localhost:{emu.port}"}, timeout=30) as c:
        codes = [c.request("OPTIONS", "/").status_code for _ in range(600)]
        assert set(codes) == {401}  # unauthenticated requests count too
        r = c.request("PROPFIND", "/", auth=(emu.username, emu.password))
        assert r.status_code == 429 and r.json()["code"] == "too_many_requests"
        # another fingerprint (User-Agent) has its own window
        ok = c.request("PROPFIND", "/", auth=(emu.username, emu.password), headers={"User-Agent": "other"})
        assert ok.status_code == 207


def test_dav_rate_limit_in_flight(tmp_path: Path) -> None:
    """10 requests in flight per fingerprint: an 11th while 10 GETs are still streaming is 429."""
    with EmulatorProcess(tmp_path / "emu", tier="free") as emu:
        host = {"Host": f"dav.puter.localhost:{emu.port}"}
        auth = (emu.username, emu.password)
        big = os.urandom(32 * 1024 * 1024)
        with local_http.Client(base_url=emu.url, headers=host, auth=auth, timeout=60) as c:
            assert c.put(f"/{emu.username}/big.bin", content=big).status_code == 201
        clients = [local_http.Client(base_url=emu.url, headers=host, auth=auth, timeout=60) for _ in range(11)]
        try:
            streams = [cl.stream("GET", f"/{emu.username}/big.bin") for cl in clients[:10]]
            responses = [s.__enter__() for s in streams]  # headers received, bodies not read
            assert [r.status_code for r in responses] == [200] * 10
            refused = clients[10].request("PROPFIND", "/")
            assert refused.status_code == 429
            assert refused.json()["message"] == "Too many concurrent requests."
            for s in streams:
                s.__exit__(None, None, None)
            done = threading.Event()
            # the slots are given back once those responses are gone (closed connections)
            for _ in range(200):
                if clients[10].request("PROPFIND", "/").status_code == 207:
                    done.set()
                    break
                done.wait(0.05)
            assert done.is_set()
        finally:
            for cl in clients:
                cl.close()


# --- in process: the events of WebDAV changes, 2FA ---------------------------------------------

SEP = "\x1e"


@pytest.fixture
async def dav_client(tmp_path: Path):  # noqa: ANN201
    from puterfs.emulator import Emulator

    emu = Emulator(tmp_path / "emu", username="alice", password="alicepass1")
    transport = httpx.ASGITransport(app=emu.app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.puter.localhost", timeout=30,
                                 headers={"Host": "dav.puter.localhost:4100"}) as client:
        yield emu, client
    emu.store.close()


@pytest.mark.anyio
async def test_dav_changes_announce_like_the_fs_routes(dav_client: tuple) -> None:
    """Each WebDAV change goes through the HTTP FS routes' mutation path: the same socket.io
    frames as /mkdir, /fs/write, /copy, /move and /delete, each followed by cache.updated."""
    emu, client = dav_client
    api = {"Host": "api.puter.localhost:4100"}
    r = await client.get("/socket.io/?EIO=4&transport=polling", headers=api)
    sid = json.loads(r.text[1:])["sid"]
    poll = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    await client.post(poll, headers=api, content="40" + json.dumps({"auth_token": emu.token}))
    assert (await client.get(poll, headers=api)).text.startswith("40")
    auth = ("alice", "alicepass1")
    d = "/alice/ev"

    async def frames() -> list[tuple[str, dict]]:
        text = (await client.get(poll, headers=api)).text
        return [tuple(json.loads(p[2:])) for p in text.split(SEP)]

    steps = [
        (("MKCOL", d, {}, None), "item.added", d),
        (("PUT", d + "/a.txt", {}, b"one"), "item.added", d + "/a.txt"),
        (("PUT", d + "/a.txt", {}, b"two"), "item.updated", d + "/a.txt"),
        (("COPY", d + "/a.txt", {"Destination": d + "/b.txt"}, None), "item.added", d + "/b.txt"),
        (("MOVE", d + "/b.txt", {"Destination": d + "/c.txt"}, None), "item.moved", d + "/c.txt"),
        (("DELETE", d, {}, None), "item.removed", d),
    ]
    for (method, path, headers, body), event, where in steps:
        r = await client.request(method, path, headers=headers, content=body, auth=auth)
        assert r.status_code in (201, 204), (method, r.status_code, r.text)
        got = await frames()
        assert [name for name, _ in got] == [event, "cache.updated"], (method, got)
        assert got[0][1]["path"] == where
    assert (await client.request("PROPFIND", d, auth=auth)).status_code == 404


@pytest.mark.anyio
async def test_dav_basic_auth_with_2fa_code_appended(dav_client: tuple) -> None:
    from puterfs.emulator.auth import new_totp_secret, totp

    emu, client = dav_client
    secret = new_totp_secret()
    emu.store.update_user(emu.store.user_by_name("alice")["id"], otp_enabled=1, otp_secret=secret)
    r = await client.request("PROPFIND", "/alice", headers={"Depth": "0"}, auth=("alice", "alicepass1"))
    assert (r.status_code, r.text) == (401, "Invalid credentials")  # the code is required
    r = await client.request("PROPFIND", "/alice", headers={"Depth": "0"},
                             auth=("alice", "alicepass1" + totp(secret)))
    assert r.status_code == 207
    wrong = "000000" if totp(secret) != "000000" else "111111"
    r = await client.request("PROPFIND", "/alice", headers={"Depth": "0"}, auth=("alice", "alicepass1" + wrong))
    assert r.status_code == 401


@pytest.mark.anyio
async def test_dav_lock_expires_after_30_s(dav_client: tuple) -> None:
    emu, client = dav_client
    auth = ("alice", "alicepass1")
    assert (await client.put("/alice/l.txt", content=b"x", auth=auth)).status_code == 201
    r = await client.request("LOCK", "/alice/l.txt", auth=auth)
    assert "Second-7200" in r.text
    assert (await client.put("/alice/l.txt", content=b"y", auth=auth)).status_code == 423
    emu.clock_offset += 29.0
    assert (await client.put("/alice/l.txt", content=b"y", auth=auth)).status_code == 423
    emu.clock_offset += 1.5
    assert (await client.put("/alice/l.txt", content=b"z", auth=auth)).status_code == 204
