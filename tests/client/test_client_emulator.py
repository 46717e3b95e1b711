"""The whole client API against the emulator, over real HTTP on loopback, on both backends.

Each test gets a fresh temp user (``puter_user`` from tests/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from puterfs.client import (
    AlreadyExists,
    AuthenticationError,
    BadRequest,
    IsADirectory,
    ModelSubstituted,
    NotADirectory,
    NotEmpty,
    NotFound,
    OTPRequired,
    PermissionDenied,
    PuterClient,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def puter(puter_user) -> AsyncIterator[PuterClient]:
    async with PuterClient(
        token=puter_user.token, api_url=puter_user.url, web_url=puter_user.web_url,
        retry_base_delay=0.01, retry_max_delay=0.1,
    ) as client:
        yield client


async def test_identity(puter: PuterClient, puter_user) -> None:
    me = await puter.whoami()
    assert me["username"] == puter_user.username == puter.username
    assert await puter.home() == puter_user.home
    home = await puter.fs_stat("~")
    assert home["is_dir"] is True and home["path"] == puter_user.home


async def test_filesystem_round_trip(puter: PuterClient, puter_user, tmp_path: Path) -> None:
    home = puter_user.home
    before = await puter.fs_last_change()

    d = await puter.fs_mkdir("work/a/b", {"create_missing_parents": True})
    assert d["is_dir"] and d["path"] == f"{home}/work/a/b"
    again = await puter.fs_mkdir("work/a/b")
    assert again["uid"] == d["uid"]  # mkdir is idempotent

    e1 = await puter.fs_write("work/text.txt", "héllo\n")
    assert e1["size"] == len("héllo\n".encode()) and e1["name"] == "text.txt"
    await puter.fs_write("work/bytes.bin", bytes(range(256)))
    await puter.fs_write("work/fileobj.bin", io.BytesIO(b"from a file object"))
    src = tmp_path / "local.dat"
    src.write_bytes(b"L" * 100_000)
    await puter.fs_write("work/local.dat", src)
    await puter.fs_write("work/empty.txt", b"")
    await puter.fs_write("work/deep/er/x.txt", "x", {"create_missing_parents": True})

    assert await puter.fs_read("work/text.txt") == "héllo\n".encode()
    assert await puter.fs_read(f"{home}/work/bytes.bin") == bytes(range(256))
    assert await puter.fs_read("~/work/fileobj.bin") == b"from a file object"
    assert await puter.fs_read("work/local.dat") == b"L" * 100_000
    assert await puter.fs_read("work/empty.txt") == b""
    assert await puter.fs_read("work/deep/er/x.txt") == b"x"
    assert (await puter.fs_stat("work/local.dat"))["size"] == 100_000
    assert await puter.fs_last_change() > before

    # overwrite by default, refuse when asked not to
    await puter.fs_write("work/text.txt", "v2")
    assert await puter.fs_read("work/text.txt") == b"v2"
    with pytest.raises(AlreadyExists):
        await puter.fs_write("work/text.txt", "v3", {"overwrite": False})
    assert await puter.fs_read("work/text.txt") == b"v2"

    # ranges, clamping, EOF, empty files
    assert await puter.fs_read("work/bytes.bin", offset=10, length=5) == bytes(range(10, 15))
    assert await puter.fs_read("work/bytes.bin", offset=250, length=100) == bytes(range(250, 256))
    assert await puter.fs_read("work/bytes.bin", offset=256, length=1) == b""
    assert await puter.fs_read("work/bytes.bin", offset=1000) == b""
    assert await puter.fs_read("work/empty.txt", offset=0, length=10) == b""
    out = io.BytesIO()
    assert await puter.fs_read_into("work/local.dat", out, offset=99_990) == 10
    assert out.getvalue() == b"L" * 10

    names = {e["name"] for e in await puter.fs_readdir("work")}
    assert names == {"a", "text.txt", "bytes.bin", "fileobj.bin", "local.dat", "empty.txt", "deep"}

    renamed = await puter.fs_rename("work/text.txt", "renamed.txt")
    assert renamed["path"] == f"{home}/work/renamed.txt"
    moved = await puter.fs_move("work/renamed.txt", "work/a/b/moved.txt")
    assert moved["path"] == f"{home}/work/a/b/moved.txt"
    assert await puter.fs_read("work/a/b/moved.txt") == b"v2"
    with pytest.raises(NotFound):
        await puter.fs_stat("work/renamed.txt")
    with pytest.raises(AlreadyExists):
        await puter.fs_move("work/bytes.bin", "work/a/b/moved.txt")
    replaced = await puter.fs_move("work/bytes.bin", "work/a/b/moved.txt", {"overwrite": True})
    assert replaced["name"] == "moved.txt"
    assert await puter.fs_read("work/a/b/moved.txt") == bytes(range(256))
    await puter.fs_move("work/fileobj.bin", "work/new/parent/f.bin", {"createMissingParents": True})
    assert await puter.fs_read("work/new/parent/f.bin") == b"from a file object"

    copied = await puter.fs_copy("work/a/b/moved.txt", "work/copy.txt")
    assert copied["path"] == f"{home}/work/copy.txt"
    assert await puter.fs_read("work/copy.txt") == bytes(range(256))
    with pytest.raises(AlreadyExists):
        await puter.fs_copy("work/local.dat", "work/copy.txt")
    await puter.fs_copy("work/local.dat", "work/copy.txt", {"overwrite": True})
    assert (await puter.fs_stat("work/copy.txt"))["size"] == 100_000
    tree = await puter.fs_copy("work/a", "work/a-copy")
    assert tree["is_dir"] and await puter.fs_read("work/a-copy/b/moved.txt") == bytes(range(256))

    await puter.fs_touch("work/touched.txt")
    assert (await puter.fs_stat("work/touched.txt"))["size"] == 0

    df = await puter.fs_df()
    assert df["used"] >= 0 and df["capacity"] > 0

    with pytest.raises(NotEmpty):
        await puter.fs_delete("work/a", recursive=False)
    await puter.fs_delete("work/a")
    with pytest.raises(NotFound):
        await puter.fs_stat("work/a/b/moved.txt")
    with pytest.raises(NotFound):
        await puter.fs_delete("work/a")
    await puter.fs_delete("work")
    assert "work" not in {e["name"] for e in await puter.fs_readdir("~")}


async def test_filesystem_errors_and_refusals(puter: PuterClient, puter_user) -> None:
    await puter.fs_write("f.txt", "x")
    await puter.fs_mkdir("d")
    with pytest.raises(NotADirectory):
        await puter.fs_readdir("f.txt")
    with pytest.raises(IsADirectory):
        await puter.fs_read("d")
    with pytest.raises(NotFound):
        await puter.fs_read("missing.txt")
    with pytest.raises(PermissionDenied):
        await puter.fs_delete("~")
    with pytest.raises(PermissionDenied):
        await puter.fs_delete(puter_user.home)
    with pytest.raises(BadRequest):
        await puter.fs_move("d", "d/inside")
    with pytest.raises(BadRequest):
        await puter.fs_move("d", "d")
    assert (await puter.fs_stat("d"))["is_dir"]  # still there
    assert (await puter.fs_stat("~"))["is_dir"]


async def test_readdir_pages_through_many_entries(puter: PuterClient, emulator) -> None:
    names = [f"n{i:03d}.txt" for i in range(70)]
    emulator.clear_log()
    results = await puter.fs_write_many([(f"many/{n}", n) for n in names], create_missing_parents=True)
    assert all(isinstance(r, dict) for r in results)
    # 70 files: one request of 64 and one of 6
    assert [r["path"] for r in emulator.log()].count("/batch") == 2
    emulator.clear_log()
    listed = await puter.fs_readdir("many", {"limit": 7})
    assert [r["path"] for r in emulator.log()].count("/readdir") == 10
    assert sorted(e["name"] for e in listed) == names
    assert len(listed) == len({e["uid"] for e in listed})


async def test_write_many_reports_per_file_failures(puter: PuterClient) -> None:
    await puter.fs_write("wm/a.txt", "old", {"create_missing_parents": True})
    results = await puter.fs_write_many([("wm/b.txt", "new"), ("wm/a.txt", "clobber?")], overwrite=False)
    assert isinstance(results[0], dict) and results[0]["name"] == "b.txt"
    assert isinstance(results[1], AlreadyExists)
    assert await puter.fs_read("wm/a.txt") == b"old"
    assert await puter.fs_read("wm/b.txt") == b"new"


async def test_chat_against_emulator(puter: PuterClient) -> None:
    out = await puter.ai_chat("echo me", {"model": "echo"})
    assert out["used_model"] == "echo"
    msg = out["response"]["result"]["message"]
    text = msg["content"] if isinstance(msg["content"], str) else "".join(b.get("text", "") for b in msg["content"])
    assert text == "echo me"

    chunks = [c async for c, _ in await puter.ai_chat("stream me please", {"model": "echo", "stream": True})]
    assert "".join(chunks) == "stream me please"

    sub = await puter.ai_chat("hi", {"model": "gpt-4o"})
    assert sub["used_model"] == "gpt-4o-mini"
    with pytest.raises(ModelSubstituted):
        await puter.ai_chat("hi", {"model": "gpt-4o"}, strict_model=True)
    ok = await puter.ai_chat("hi", {"model": "claude-opus-4.5"}, strict_model=True)
    assert ok["used_model"]

    events = [e async for e in puter.ai_chat_events("hello events", options={"model": "echo"})]
    assert "".join(e.text for e in events if e.type == "text") == "hello events"
    assert events[-1].type == "usage"

    models = await puter.get_available_models()
    assert "gpt-4o" in puter.get_model_list(models)
    assert await puter.is_model_available("GPT-4O")
    assert await puter.is_model_available("claude-opus-4-5")
    assert not await puter.is_model_available("no-such-model")
    assert "fake" in {m["id"] for m in await puter.chat_models()}
    with pytest.raises(BadRequest):
        await puter.ai_chat("hi", {"model": "no-such-model"})


async def test_media_against_emulator(puter: PuterClient) -> None:
    png = await puter.ai_txt2img_bytes("HELLO PUTER")
    assert png.startswith(b"\x89PNG")
    text = await puter.ai_img2txt(png)
    assert "HELLO PUTER" in text
    await puter.fs_write("pics/hello.png", png, {"create_missing_parents": True})
    assert "HELLO PUTER" in await puter.ai_img2txt("pics/hello.png")

    audio = await puter.ai_txt2speech("Hello there", {"voice": "eve"})
    assert audio[:3] == b"ID3" or (audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0)
    voices = await puter.tts_voices()
    assert isinstance(voices, list)


def _totp(secret: str, at: float | None = None) -> str:
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


@pytest.fixture(scope="module")
def otp_emulator(tmp_path_factory: pytest.TempPathFactory):
    from puterfs.emulator.testing import EmulatorProcess

    secret = "JBSWY3DPEHPK3PXP"
    proc = EmulatorProcess(tmp_path_factory.mktemp("otp-emulator"), otp_secret=secret)
    proc.start()
    try:
        yield proc, secret
    finally:
        proc.close()


async def test_login_with_two_factor(otp_emulator) -> None:
    emu, secret = otp_emulator
    async with PuterClient(api_url=emu.url, web_url=emu.web_url, token=None) as c:
        c.token = None
        with pytest.raises(AuthenticationError):
            await c.login(emu.username, "wrong-password")
        with pytest.raises(OTPRequired) as info:
            await c.login(emu.username, emu.password)
        with pytest.raises(AuthenticationError):
            await c.login_otp(info.value.otp_token, "000000" if _totp(secret) != "000000" else "111111")
        token = await c.login_otp(info.value.otp_token, _totp(secret))
        assert token and c.token == token
        assert (await c.whoami())["username"] == emu.username
        await c.logout()
        assert c.token is None
    async with PuterClient(api_url=emu.url, web_url=emu.web_url, token=None) as c:
        c.token = None
        await c.login(emu.username, emu.password, otp=_totp(secret))
        assert await c.home() == "/" + emu.username


async def test_retries_over_real_http(puter: PuterClient, puter_user, emulator) -> None:
    await puter.fs_write("r.txt", "retry me")
    emulator.set_faults({"path": "/stat", "status": 503, "retry_after": 0.2, "count": 2})
    async with PuterClient(
        token=puter_user.token, api_url=puter_user.url, web_url=puter_user.web_url,
        retry_base_delay=0.0, retry_max_delay=5.0,
    ) as patient:
        start = time.monotonic()
        assert (await patient.fs_stat("r.txt"))["size"] == 8
        assert time.monotonic() - start >= 0.4  # two waits of Retry-After: 0.2
    emulator.set_faults({"path": "/read", "drop": True, "count": 1})
    assert await puter.fs_read("r.txt") == b"retry me"
    # not idempotent: a 500 is reconciled with the server's state before anything is sent
    # again. Before the server acted: the source is still there, so the move is sent again.
    emulator.set_faults({"path": "/move", "status": 500, "count": 1})
    moved = await puter.fs_move("r.txt", "r2.txt")
    assert moved["name"] == "r2.txt" and (await puter.fs_stat("r2.txt"))["size"] == 8
    # After it acted (the answer is an error, an HTML page, cut short): the source gone and
    # the destination there means done; it is not sent again (that would fail: no source).
    for fault in ({"status": 500}, {"html": True}, {"truncate": True}, {"drop": True}):
        emulator.clear_log()
        emulator.set_faults({"path": "/move", "after": True, "count": 1, **fault})
        moved = await puter.fs_move("r2.txt", "r3.txt")
        assert moved["name"] == "r3.txt", fault
        assert [r["path"] for r in emulator.log() if r["path"] == "/move"] == ["/move"], fault
        await puter.fs_move("r3.txt", "r2.txt")
    emulator.clear_faults()


async def test_stream_error_line_over_real_http(puter: PuterClient, emulator) -> None:
    from puterfs.client import StreamError

    emulator.set_faults({"path": "/drivers/call", "stream_error_after": 1, "count": 1})
    got = []
    with pytest.raises(StreamError):
        async for chunk, _ in await puter.ai_chat("one two three four", {"model": "echo", "stream": True}):
            got.append(chunk)
    assert "".join(got) != "one two three four"
    emulator.clear_faults()


async def test_compat_extras_against_emulator(puter: PuterClient, tmp_path: Path) -> None:
    from puterfs.emulator.testing import local_http

    await puter.fs_write("signed.txt", "read me without a token")
    url = await puter.fs_get_read_url("signed.txt")
    async with local_http.AsyncClient() as plain:
        assert (await plain.get(url)).content == b"read me without a token"
    local = tmp_path / "up.txt"
    local.write_text("uploaded")
    out = await puter.fs_upload([str(local)], "~/uploads", {"create_missing_parents": True})
    assert out["results"][0]["name"] == "up.txt"
    assert await puter.fs_read("uploads/up.txt") == b"uploaded"
    result = await puter.ai_speech2txt(b"\x00" * 64, test_mode=True)
    assert isinstance(result, dict) and result["text"]
    assert await puter.auth_is_signed_in()


async def test_entry_metadata_round_trip(puter: PuterClient, puter_user) -> None:
    """Metadata rides on writes (/fs/write, /fs/batchWrite, /batch + /move for big files),
    an overwrite without it drops it, fs_set_metadata replaces it (RECORDED-2 §7)."""
    import json

    small = await puter.fs_write("m/a.txt", b"abc", {"metadata": {"mode": "100755"}, "create_missing_parents": True})
    assert small["is_dir"] is False and small["size"] == 3
    assert json.loads(small["metadata"]) == {"mode": "100755", "contentType": "text/plain"}
    big = b"x" * ((8 << 20) + 1)
    entry = await puter.fs_write("m/big.bin", big, {"metadata": {"mtime": "t"}})
    assert entry["size"] == len(big) and json.loads(entry["metadata"])["mtime"] == "t"
    many = await puter.fs_write_many(
        [("m/b.txt", b"b"), ("m/c.txt", b"cc")], metadata=[{"k": 1}, {"k": 2}], create_missing_parents=True
    )
    assert [json.loads(e["metadata"])["k"] for e in many] == [1, 2]  # type: ignore[index]
    stat = await puter.fs_stat("m/c.txt")
    assert json.loads(stat["metadata"]) == {"k": 2, "contentType": "text/plain"} and stat["size"] == 2
    listed = {e["name"]: e["metadata"] for e in await puter.fs_readdir("m")}
    assert json.loads(listed["b.txt"])["k"] == 1
    await puter.fs_write("m/a.txt", b"new")  # an overwrite without metadata drops the custom keys
    assert json.loads((await puter.fs_stat("m/a.txt"))["metadata"]) == {"contentType": "text/plain"}
    moved = await puter.fs_set_metadata("m/a.txt", {"mode": "100600"})
    assert json.loads(moved["metadata"]) == {"mode": "100600"} and moved["path"].endswith("/m/a.txt")
    assert await puter.fs_read("m/a.txt") == b"new"
    d = await puter.fs_set_metadata("m", {"mtime": "1"})
    assert d["is_dir"] and json.loads((await puter.fs_stat("m"))["metadata"]) == {"mtime": "1"}
    assert sorted(e["name"] for e in await puter.fs_readdir("m")) == ["a.txt", "b.txt", "big.bin", "c.txt"]
