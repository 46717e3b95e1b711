"""`AiFiles` driven directly (no kernel, no mount) with a real PuterClient against the emulator.

Each test plays what the kernel would send for a shell idiom: open, write, flush, release,
then open and read. readdir needs a kernel token and is covered by the mount tests.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from puterfs.client import PuterClient
from puterfs.emulator.media import mp3_duration
from puterfs.fs.aifiles import AI_FH_BASE, CHAT_MAX_BYTES, AiFiles
from puterfs.fs.errors import FsError, to_errno

BASE = 1 << 40
ALICE = SimpleNamespace(uid=1000, gid=1000, pid=4242, umask=0o022)
BOB = SimpleNamespace(uid=1001, gid=1001, pid=4343, umask=0o022)
WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
APPEND = os.O_WRONLY | os.O_APPEND


@pytest.fixture
async def client(emulator: Any, puter_user: Any) -> AsyncIterator[PuterClient]:
    c = PuterClient(
        token=puter_user.token,
        api_url=getattr(puter_user, "url", None) or emulator.url,
        web_url=getattr(puter_user, "web_url", None) or emulator.web_url,
        # Fault-injection tests want the first error, not the client's backoff (max_retries=0
        # also means a 429 is not retried).
        max_retries=0,
    )
    async with c:
        await c.whoami()  # as the mount does at start: a temporary user's client paces to the temp tier
        yield c


@pytest.fixture
async def ai(client: PuterClient, nursery: trio.Nursery, puter_user: Any) -> AsyncIterator[AiFiles]:
    async def read_mount_file(rel: str, access: Any = None) -> bytes:
        # The mount reads through its cache; here the file is read from the server directly.
        return await client.fs_read(f"/{puter_user.username}/{rel}")

    files = AiFiles(
        client,
        inode_base=BASE,
        read_mount_file=read_mount_file,
        uid=0,
        gid=0,
        timeout=60.0,
        default_model="echo",
        all_users=True,  # ALICE and BOB are not the owner (uid 0)
    )
    await files.start(nursery)
    yield files
    await files.aclose()


async def ino(ai: AiFiles, name: str, ctx: Any = ALICE) -> int:
    return (await ai.lookup(ai.root_inode, name.encode(), ctx)).st_ino


async def put(
    ai: AiFiles, name: str, data: bytes | str, ctx: Any = ALICE, flags: int = WRITE, chunk: int = 128 << 10
) -> None:
    """`echo data > .ai/name`: open, write in kernel-sized chunks, close (flush + release)."""
    if isinstance(data, str):
        data = data.encode()
    fi = await ai.open(await ino(ai, name, ctx), flags, ctx)
    try:
        for off in range(0, len(data), chunk):
            assert await ai.write(fi.fh, off, data[off : off + chunk]) == len(data[off : off + chunk])
        await ai.flush(fi.fh)
    finally:
        await ai.release(fi.fh)


async def get(ai: AiFiles, name: str, ctx: Any = ALICE) -> bytes:
    """`cat .ai/name`."""
    fi = await ai.open(await ino(ai, name, ctx), os.O_RDONLY, ctx)
    out = bytearray()
    try:
        while True:
            with trio.fail_after(30):
                chunk = await ai.read(fi.fh, len(out), 128 << 10)
            if not chunk:
                return bytes(out)
            out += chunk
    finally:
        await ai.release(fi.fh)


async def errno_of(coro: Any) -> tuple[int, str]:
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - the mount maps whatever comes out
        return to_errno(exc), str(exc)
    raise AssertionError("expected an error")


def chat_bodies(emulator: Any) -> list[dict[str, Any]]:
    """The args of every chat `complete` call the emulator received."""
    out = []
    for entry in emulator.log(bodies=True):
        body = entry.get("body")
        if isinstance(body, dict) and body.get("method") == "complete":
            out.append(body["args"])
    return out


# -- chat ----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_echo_then_cat_prints_the_answer(ai: AiFiles) -> None:
    assert await get(ai, "chat") == b""  # before any prompt: empty
    await put(ai, "chat", "hello world\n")
    assert await get(ai, "chat") == b"hello world\n"
    # Reading again shows the same answer; the size is known once it is complete.
    assert await get(ai, "chat") == b"hello world\n"
    assert (await ai.getattr(await ino(ai, "chat"), ALICE)).st_size == len(b"hello world\n")


@pytest.mark.trio
async def test_answer_streams_before_it_is_complete(ai: AiFiles, emulator: Any) -> None:
    text = "one two three four five six seven eight nine ten"
    emulator.set_faults({"path": "/drivers/call", "stream_hold": True, "count": 1})
    try:
        await put(ai, "chat", text + "\n")
        fi = await ai.open(await ino(ai, "chat"), os.O_RDONLY, ALICE)
        with trio.fail_after(20):
            first = await ai.read(fi.fh, 0, 4096)
        assert first and text.startswith(first.decode()) and len(first) < len(text)
        # The rest is held by the emulator: a read waits, and other requests go on.
        with trio.move_on_after(0.5) as waited:
            await ai.read(fi.fh, len(first), 4096)
        assert waited.cancelled_caught
        assert (await get(ai, "model")) == b"echo\n"
    finally:
        emulator.release()
    rest = bytearray()
    with trio.fail_after(20):
        while chunk := await ai.read(fi.fh, len(first) + len(rest), 4096):
            rest += chunk
    await ai.release(fi.fh)
    assert first + rest == (text + "\n").encode()


@pytest.mark.trio
async def test_big_prompt_and_oversized_prompt(ai: AiFiles) -> None:
    prompt = "".join(f"line {i}: lorem ipsum dolor sit amet\n" for i in range(3000))  # ~100 KB
    await put(ai, "chat", prompt, chunk=4096)
    assert await get(ai, "chat") == prompt.rstrip("\n").encode() + b"\n"
    fi = await ai.open(await ino(ai, "chat"), WRITE, ALICE)
    await ai.write(fi.fh, 0, b"x" * CHAT_MAX_BYTES)
    code, msg = await errno_of(ai.write(fi.fh, CHAT_MAX_BYTES, b"x"))
    assert code == errno.EFBIG and "1048576" in msg
    await ai.flush(fi.fh)
    await ai.release(fi.fh)
    assert "prompt larger" in (await get(ai, "error")).decode()
    # The refused prompt was not sent; `cat` reports the refusal instead of an old answer.
    code, _ = await errno_of(get(ai, "chat"))
    assert code == errno.EFBIG


@pytest.mark.trio
async def test_binary_and_empty_prompts_are_refused(ai: AiFiles) -> None:
    await put(ai, "chat", "first\n")
    fi = await ai.open(await ino(ai, "chat"), WRITE, ALICE)
    code, msg = await errno_of(ai.write(fi.fh, 0, b"\x89PNG\r\n\x1a\n\0\0\0"))
    assert code == errno.EINVAL and "binary" in msg
    await ai.flush(fi.fh)
    await ai.release(fi.fh)
    assert "binary data refused" in (await get(ai, "error")).decode()
    assert (await errno_of(get(ai, "chat")))[0] == errno.EINVAL
    # Invalid UTF-8 without a NUL byte is refused too.
    fi = await ai.open(await ino(ai, "chat"), WRITE, ALICE)
    assert (await errno_of(ai.write(fi.fh, 0, b"caf\xe9 \xff\xfe")))[0] == errno.EINVAL
    await ai.release(fi.fh)
    # A prompt of whitespace is refused on close (and by the next read).
    code, msg = await errno_of(put(ai, "chat", "  \n\n"))
    assert code == errno.EINVAL and "empty prompt" in msg
    assert (await errno_of(get(ai, "chat")))[0] == errno.EINVAL
    # Opening for writing without writing (touch, `: >`) sends nothing and changes nothing.
    await put(ai, "chat", "again\n")
    await put(ai, "chat", b"")
    assert await get(ai, "chat") == b"again\n"
    # A UTF-8 character split between two writes is fine.
    data = "naïve café ✓\n".encode()
    await put(ai, "chat", data, chunk=3)
    assert await get(ai, "chat") == data


@pytest.mark.trio
async def test_new_prompt_cancels_the_streaming_answer(ai: AiFiles, emulator: Any) -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"
    emulator.set_faults({"path": "/drivers/call", "stream_hold": True, "count": 1})
    try:
        await put(ai, "chat", text)
        reader = await ai.open(await ino(ai, "chat"), os.O_RDONLY, ALICE)
        with trio.fail_after(20):
            first = await ai.read(reader.fh, 0, 4096)
        await put(ai, "chat", "second prompt")
        # The old reader gets what had arrived, then ECANCELED.
        code, msg = await errno_of(ai.read(reader.fh, len(first), 4096))
        assert code == errno.ECANCELED and "newer prompt" in msg
        await ai.release(reader.fh)
        assert await get(ai, "chat") == b"second prompt\n"
    finally:
        emulator.release()
    # The cancelled turn is not part of the conversation.
    history = json.loads(await get(ai, "conversation"))
    assert [m["content"] for m in history] == ["second prompt", "second prompt"]


@pytest.mark.trio
async def test_rdwr_descriptor_gets_its_own_answers(ai: AiFiles) -> None:
    await put(ai, "chat", "shared\n")
    fds = [await ai.open(await ino(ai, "chat"), os.O_RDWR, ALICE) for _ in range(2)]
    assert all(fi.nonseekable for fi in fds)
    for i, fi in enumerate(fds):
        await ai.write(fi.fh, 0, f"private {i}\n".encode())

    results: dict[int, bytes] = {}

    async def read_all(i: int, fh: int) -> None:
        out = bytearray()
        # The kernel passes offsets that count the written bytes too: they are ignored.
        while chunk := await ai.read(fh, 1000 + len(out), 3):
            out += chunk
        results[i] = bytes(out)

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            for i, fi in enumerate(fds):
                n.start_soon(read_all, i, fi.fh)
    assert results == {0: b"private 0\n", 1: b"private 1\n"}
    # A second prompt on the same descriptor, after reading the first answer.
    await ai.write(fds[0].fh, 0, b"next question\n")
    with trio.fail_after(20):
        out = bytearray()
        while chunk := await ai.read(fds[0].fh, 0, 4096):
            out += chunk
    assert out == b"next question\n"
    for fi in fds:
        await ai.flush(fi.fh)
        await ai.release(fi.fh)
    # Private answers never replaced the user's shared answer.
    assert await get(ai, "chat") == b"shared\n"


@pytest.mark.trio
async def test_rdwr_descriptor_recovers_from_a_refused_prompt(ai: AiFiles) -> None:
    fi = await ai.open(await ino(ai, "chat"), os.O_RDWR, ALICE)
    assert (await errno_of(ai.write(fi.fh, 0, b"bin\0ary")))[0] == errno.EINVAL
    assert (await errno_of(ai.write(fi.fh, 7, b"more")))[0] == errno.EINVAL  # the prompt is spoilt
    assert (await errno_of(ai.read(fi.fh, 11, 4096)))[0] == errno.EINVAL  # its answer is the refusal
    await ai.write(fi.fh, 11, b"a clean prompt\n")
    out = bytearray()
    with trio.fail_after(20):
        while chunk := await ai.read(fi.fh, 0, 4096):
            out += chunk
    assert out == b"a clean prompt\n"
    await ai.flush(fi.fh)
    await ai.release(fi.fh)


@pytest.mark.trio
async def test_rdwr_closed_without_reading_acts_like_a_write(ai: AiFiles) -> None:
    fi = await ai.open(await ino(ai, "chat"), os.O_RDWR, ALICE)
    await ai.write(fi.fh, 0, b"via rdwr\n")
    await ai.flush(fi.fh)
    await ai.release(fi.fh)
    assert await get(ai, "chat") == b"via rdwr\n"


@pytest.mark.trio
async def test_users_do_not_see_each_other(ai: AiFiles) -> None:
    await put(ai, "chat", "from alice", ALICE)
    await put(ai, "chat", "from bob", BOB)
    assert await get(ai, "chat", ALICE) == b"from alice\n"
    assert await get(ai, "chat", BOB) == b"from bob\n"
    await put(ai, "model", "fake\n", BOB)
    assert await get(ai, "model", ALICE) == b"echo\n"
    assert await get(ai, "model", BOB) == b"fake\n"
    assert len(json.loads(await get(ai, "conversation", ALICE))) == 2
    await put(ai, "reset", "", BOB)
    assert len(json.loads(await get(ai, "conversation", ALICE))) == 2
    assert json.loads(await get(ai, "conversation", BOB)) == []


# -- model, options, conversation ----------------------------------------------------------


@pytest.mark.trio
async def test_model_switch_and_refusal(ai: AiFiles, emulator: Any) -> None:
    models = (await get(ai, "models")).decode().splitlines()
    assert "echo" in models and "gpt-4o-mini" in models and "fake" in models
    assert await get(ai, "model") == b"echo\n"
    # Aliases and other cases are accepted and shown as the model's id.
    await put(ai, "model", "OpenAI/GPT-4o-Mini\n")
    assert await get(ai, "model") == b"gpt-4o-mini\n"
    await put(ai, "chat", "which model?")
    assert await get(ai, "chat") == b"which model?\n"
    assert chat_bodies(emulator)[-1]["model"] == "gpt-4o-mini"
    # An unknown name fails at write time, and the model stays.
    fi = await ai.open(await ino(ai, "model"), WRITE, ALICE)
    code, msg = await errno_of(ai.write(fi.fh, 0, b"no-such-model\n"))
    assert code == errno.EINVAL and "no-such-model" in msg
    await ai.flush(fi.fh)
    await ai.release(fi.fh)
    assert await get(ai, "model") == b"gpt-4o-mini\n"
    error = (await get(ai, "error")).decode()
    assert "unknown model 'no-such-model'" in error and "[EINVAL]" in error
    code, _ = await errno_of(put(ai, "model", "two names\n"))
    assert code == errno.EINVAL


@pytest.mark.trio
async def test_default_model_comes_from_the_server(client: PuterClient, nursery: trio.Nursery) -> None:
    async def no_files(rel: str, access: Any = None) -> bytes:
        raise FsError(errno.ENOENT, rel)

    files = AiFiles(client, inode_base=BASE, read_mount_file=no_files, uid=0, gid=0, all_users=True)
    await files.start(nursery)
    # The emulator lists gpt-5-nano, the first of the preferred cheap models.
    assert await get(files, "model") == b"gpt-5-nano\n"
    await put(files, "chat", "hi")
    assert await get(files, "chat") == b"hi\n"


@pytest.mark.trio
async def test_conversation_is_kept_and_reset(ai: AiFiles, emulator: Any) -> None:
    await put(ai, "chat", "first question\n")
    assert await get(ai, "chat") == b"first question\n"
    await put(ai, "chat", "second question\n")
    assert await get(ai, "chat") == b"second question\n"
    sent = chat_bodies(emulator)[-1]["messages"]
    assert [m["content"] for m in sent] == ["first question", "first question", "second question"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    history = json.loads(await get(ai, "conversation"))
    assert [m["role"] for m in history] == ["user", "assistant"] * 2
    # `echo > .ai/reset` starts over.
    await put(ai, "reset", "\n")
    assert json.loads(await get(ai, "conversation")) == []
    await put(ai, "chat", "fresh\n")
    await get(ai, "chat")
    assert [m["content"] for m in chat_bodies(emulator)[-1]["messages"]] == ["fresh"]
    # A saved conversation can be written back; bad JSON is refused on close.
    saved = [{"role": "user", "content": "old q"}, {"role": "assistant", "content": "old a"}]
    await put(ai, "conversation", json.dumps(saved))
    assert json.loads(await get(ai, "conversation")) == saved
    code, msg = await errno_of(put(ai, "conversation", "[1, 2]"))
    assert code == errno.EINVAL and "JSON list" in msg
    assert json.loads(await get(ai, "conversation")) == saved
    await put(ai, "conversation", "")  # `: > .ai/conversation` clears it
    assert json.loads(await get(ai, "conversation")) == []


@pytest.mark.trio
async def test_options(ai: AiFiles, emulator: Any) -> None:
    shown = (await get(ai, "options")).decode()
    assert "temperature=\n" in shown and "system=\n" in shown and "voice=\n" in shown
    await put(ai, "options", "temperature=0.5\nmax_tokens=50\nsystem=Be brief.\\nVery brief.\n")
    await put(ai, "options", "history=off\n", flags=APPEND)  # `>>` keeps the other keys
    shown = (await get(ai, "options")).decode()
    assert "temperature=0.5\n" in shown and "max_tokens=50\n" in shown and "history=off\n" in shown
    assert "system=Be brief.\\nVery brief.\n" in shown
    await put(ai, "chat", "one")
    await get(ai, "chat")
    await put(ai, "chat", "two")
    assert await get(ai, "chat") == b"two\n"
    args = chat_bodies(emulator)[-1]
    assert args["temperature"] == 0.5 and args["max_tokens"] == 50
    # history=off: only the system prompt and the new prompt are sent.
    assert args["messages"] == [
        {"role": "system", "content": "Be brief.\nVery brief."},
        {"role": "user", "content": "two"},
    ]
    # Unknown keys and bad values fail the write and change nothing.
    for bad in ("colour=blue\n", "temperature=7\n", "max_tokens=-1\n", "history=maybe\n", "nonsense\n"):
        fi = await ai.open(await ino(ai, "options"), APPEND, ALICE)
        code, _ = await errno_of(ai.write(fi.fh, 0, bad.encode()))
        assert code == errno.EINVAL, bad
        await ai.flush(fi.fh)
        await ai.release(fi.fh)
    assert "temperature=0.5\n" in (await get(ai, "options")).decode()
    assert "options: " in (await get(ai, "error")).decode()
    # `key=` unsets; `>` replaces everything.
    await put(ai, "options", "temperature=\n", flags=APPEND)
    assert "temperature=\n" in (await get(ai, "options")).decode()
    await put(ai, "options", "max_tokens=7\n")
    shown = (await get(ai, "options")).decode()
    assert "max_tokens=7\n" in shown and "history=\n" in shown and "system=\n" in shown


# -- tts, ocr, img ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_tts_returns_mp3_and_voice_is_selectable(ai: AiFiles) -> None:
    assert await get(ai, "tts") == b""
    await put(ai, "tts", "hello world\n")
    audio = await get(ai, "tts")
    assert mp3_duration(audio) > 0.2
    voices = [line.split("\t") for line in (await get(ai, "voices")).decode().splitlines()]
    # id, provider, name, description: as the server lists them
    assert voices and all(len(v) == 4 and v[0] for v in voices)
    await put(ai, "options", f"voice={voices[-1][0]}\n")
    await put(ai, "tts", "hello world\n")
    other = await get(ai, "tts")
    assert mp3_duration(other) > 0.2 and other != audio
    code, msg = await errno_of(put(ai, "tts", "x" * 3001))
    assert code == errno.EFBIG and "3000" in msg


@pytest.mark.trio
async def test_img_returns_png_and_ocr_reads_it(ai: AiFiles, client: PuterClient, puter_user: Any) -> None:
    from PIL import Image

    await put(ai, "img", "HELLO OCR\n")
    png = await get(ai, "img")
    assert png.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size[0] > 0
    # OCR of image bytes written to the file.
    await put(ai, "ocr", png)
    assert (await get(ai, "ocr")).decode().strip() == "HELLO OCR"
    # OCR of a path inside the mount (relative to the mount root).
    await client.fs_mkdir(f"/{puter_user.username}/scans")
    await client.fs_write(f"/{puter_user.username}/scans/page.png", png)
    await put(ai, "ocr", "scans/page.png\n")
    assert (await get(ai, "ocr")).decode().strip() == "HELLO OCR"
    # A missing file is ENOENT at read time; a non-image file EINVAL.
    await put(ai, "ocr", "scans/missing.png\n")
    assert (await errno_of(get(ai, "ocr")))[0] == errno.ENOENT
    await client.fs_write(f"/{puter_user.username}/scans/notes.txt", b"just text")
    await put(ai, "ocr", "/scans/notes.txt")
    assert (await errno_of(get(ai, "ocr")))[0] == errno.EINVAL
    # Paths into .ai, upwards, other schemes, and binary non-images are refused on close.
    for bad in (".ai/img", "../etc/passwd", "ftp://host/x.png", b"\x00\x01\x02garbage", "a\nb"):
        code, _ = await errno_of(put(ai, "ocr", bad))
        assert code == errno.EINVAL, bad


@pytest.mark.trio
async def test_ocr_of_a_url(ai: AiFiles, client: PuterClient) -> None:
    png = await client.ai_txt2img_bytes("URL TEXT", model="emulator-image")
    server = await trio.to_thread.run_sync(_serve_bytes, png)
    try:
        await put(ai, "ocr", f"http://127.0.0.1:{server.server_address[1]}/scan.png\n")
        assert (await get(ai, "ocr")).decode().strip() == "URL TEXT"
    finally:
        server.shutdown()
        server.server_close()


def _serve_bytes(data: bytes) -> Any:
    """A one-file HTTP server on loopback, in a thread (shut down by the caller)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("rule", "expected", "text"),
    [
        (
            {"status": 429, "code": "too_many_requests", "message": "Too many requests."},
            errno.EAGAIN,
            "Too many",
        ),
        (
            {"status": 402, "code": "insufficient_funds", "message": "Insufficient funds"},
            errno.EDQUOT,
            "funds",
        ),
        (
            {"status": 401, "code": "token_auth_failed", "message": "Authentication failed"},
            errno.EACCES,
            "Auth",
        ),
        (
            {"status": 422, "code": "moderation_failed", "message": "Flagged by moderation"},
            errno.EACCES,
            "moderation",
        ),
        (
            {"status": 400, "code": "bad_request", "message": "Model not found: gone"},
            errno.EINVAL,
            "Model not found",
        ),
        (
            {"status": 500, "code": "internal_error", "message": "Internal Server Error"},
            errno.EIO,
            "Internal",
        ),
        ({"drop": True}, errno.EIO, ""),
    ],
)
async def test_server_errors_map_to_errno(
    ai: AiFiles, emulator: Any, rule: dict[str, Any], expected: int, text: str
) -> None:
    emulator.set_faults({"path": "/drivers/call", "method": "POST", "count": 1, **rule})
    await put(ai, "chat", "will fail\n")
    code, msg = await errno_of(get(ai, "chat"))
    assert code == expected, msg
    error = (await get(ai, "error")).decode()
    assert error.startswith("20") and ".ai/chat:" in error and text in error
    assert f"[{errno.errorcode[expected]}]" in error
    # The failure stays until the next prompt, which clears the error.
    assert (await errno_of(get(ai, "chat")))[0] == expected
    await put(ai, "chat", "works again\n")
    assert await get(ai, "chat") == b"works again\n"
    assert await get(ai, "error") == b""


@pytest.mark.trio
async def test_error_in_the_middle_of_a_stream(ai: AiFiles, emulator: Any) -> None:
    emulator.set_faults(
        {"path": "/drivers/call", "count": 1, "stream_error_after": 2, "message": "provider went away"}
    )
    text = "one two three four five six seven eight nine ten eleven twelve"
    await put(ai, "chat", text)
    fi = await ai.open(await ino(ai, "chat"), os.O_RDONLY, ALICE)
    got = bytearray()
    with pytest.raises(FsError) as info:
        with trio.fail_after(20):
            while chunk := await ai.read(fi.fh, len(got), 4096):
                got += chunk
    await ai.release(fi.fh)
    assert info.value.errno == errno.EIO
    assert got and text.encode().startswith(bytes(got)) and len(got) < len(text)
    assert "provider went away" in (await get(ai, "error")).decode()
    assert json.loads(await get(ai, "conversation")) == []


@pytest.mark.trio
async def test_timeout_option(ai: AiFiles, emulator: Any) -> None:
    await put(ai, "options", "timeout=1\n")
    emulator.set_faults({"path": "/drivers/call", "count": 1, "stream_hold": True})
    try:
        await put(ai, "chat", "slow slow slow slow slow slow slow slow\n")
        with trio.fail_after(20):
            code, msg = await errno_of(get(ai, "chat"))
    finally:
        emulator.release()
    assert code == errno.ETIMEDOUT and "within 1 s" in msg


# -- the directory and its files --------------------------------------------------------------


@pytest.mark.trio
async def test_namespace_attributes_and_handles(ai: AiFiles) -> None:
    root = ai.root_entry()
    assert root.st_ino == BASE and root.st_mode & 0o170000 == 0o040000
    assert ai.owns(BASE) and ai.owns(await ino(ai, "chat")) and not ai.owns(BASE - 1)
    names = [
        "chat",
        "model",
        "models",
        "options",
        "conversation",
        "reset",
        "tts",
        "voices",
        "ocr",
        "img",
        "error",
        "help",
    ]
    inodes = [await ino(ai, n) for n in names]
    assert inodes == list(range(BASE + 1, BASE + 1 + len(names)))
    attrs = await ai.getattr(inodes[0], ALICE)
    assert attrs.attr_timeout == 0 and attrs.entry_timeout == 0 and attrs.st_mode & 0o777 == 0o666
    assert (await errno_of(ai.lookup(BASE, b"nope", ALICE)))[0] == errno.ENOENT
    # create of an existing control file opens it; of anything else is refused.
    fi, entry = await ai.create(BASE, b"chat", 0o644, WRITE, ALICE)
    assert entry.st_ino == inodes[0] and ai.owns_fh(fi.fh) and fi.fh >= AI_FH_BASE and fi.direct_io
    await ai.write(fi.fh, 0, b"created\n")
    await ai.flush(fi.fh)
    await ai.release(fi.fh)
    assert await get(ai, "chat") == b"created\n"
    assert (await errno_of(ai.create(BASE, b"new-file", 0o644, WRITE, ALICE)))[0] == errno.EACCES
    # Read-only files refuse writers; help is readable.
    assert (await errno_of(ai.open(await ino(ai, "models"), os.O_WRONLY, ALICE)))[0] == errno.EACCES
    assert b"docs/ai-files.md" in await get(ai, "help")
    # Truncating the error file clears it; a non-zero truncate is refused.
    await put(ai, "chat", "")
    await errno_of(put(ai, "chat", "\n"))
    assert await get(ai, "error") != b""
    fields = SimpleNamespace(update_size=True)
    await ai.setattr(await ino(ai, "error"), SimpleNamespace(st_size=0), fields, None, ALICE)
    assert await get(ai, "error") == b""
    code, _ = await errno_of(ai.setattr(inodes[0], SimpleNamespace(st_size=5), fields, None, ALICE))
    assert code == errno.EINVAL


@pytest.mark.trio
async def test_aclose_cancels_running_requests(ai: AiFiles, emulator: Any) -> None:
    emulator.set_faults({"path": "/drivers/call", "count": 1, "stream_hold": True})
    try:
        await put(ai, "chat", "never finished because the mount stops\n")
        fi = await ai.open(await ino(ai, "chat"), os.O_RDONLY, ALICE)
        await ai.read(fi.fh, 0, 4096)

        async def stop_soon() -> None:
            await trio.sleep(0.2)
            await ai.aclose()

        async with trio.open_nursery() as n:
            n.start_soon(stop_soon)
            with trio.fail_after(10):
                code, _ = await errno_of(ai.read(fi.fh, 10_000, 4096))
        assert code == errno.ECANCELED
        await ai.release(fi.fh)
    finally:
        emulator.release()


def test_image_helpers() -> None:
    from PIL import Image

    from puterfs.fs.aifiles import _image_mime, _to_png

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="JPEG")
    jpeg = buf.getvalue()
    assert _image_mime(jpeg) == "image/jpeg"
    png = _to_png(jpeg)
    assert _image_mime(png) == "image/png"
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (8, 8)
    webp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(webp, format="WEBP")
    assert _image_mime(webp.getvalue()) == "image/webp"
    assert _image_mime(b"scans/page.png\n") is None
