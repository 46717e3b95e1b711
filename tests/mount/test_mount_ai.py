"""`.ai/` through a real mount: the shell idioms of docs/ai-files.md, byte for byte.

The emulator's chat models answer with the text of the last user message (streamed in
about eight pieces), its TTS gives real MP3, its image generator draws the prompt and its
OCR reads that drawing back, so every answer here is known in advance.
"""

from __future__ import annotations

import errno
import io
import json
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import MountedFs

from puterfs.emulator.media import mp3_duration, render_text_png

HOLD = {"path": "/drivers/call", "stream_hold": True, "count": 1}


def sh(
    mount: MountedFs, script: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """Run a shell one-liner in the mount's root, as a user would."""
    proc = subprocess.run(["sh", "-c", script], cwd=mount.path, capture_output=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (
            f"{script!r} -> {proc.returncode}: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def read_errno(path: Path) -> tuple[bytes, int | None]:
    """Read a whole file; (what was read, the errno that ended it or None)."""
    out = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError as exc:
                return bytes(out), exc.errno
            if not chunk:
                return bytes(out), None
            out += chunk
    finally:
        os.close(fd)


def warm_up(mount: MountedFs) -> None:
    """Resolve the default model first: that lists models through /drivers/call, which
    would otherwise use up a counted fault rule meant for the chat request."""
    assert sh(mount, "cat .ai/model").stdout.strip()


def chat_args(mount: MountedFs) -> list[dict[str, Any]]:
    return [
        e["body"]["args"]
        for e in mount.emulator.log(bodies=True)
        if isinstance(e.get("body"), dict) and e["body"].get("method") == "complete"
    ]


@pytest.fixture
def png_server() -> Iterator[Any]:
    """Serves one PNG (set `.data`) over HTTP on loopback."""

    class Handler(BaseHTTPRequestHandler):
        data = b""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(Handler.data)))
            self.end_headers()
            self.wfile.write(Handler.data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.handler = Handler  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# -- chat ---------------------------------------------------------------------------------------


def test_echo_then_cat_and_the_directory(mount: MountedFs) -> None:
    assert sh(mount, "cat .ai/chat").stdout == b""  # before any prompt: empty
    assert sh(mount, "echo hi > .ai/chat; cat .ai/chat").stdout == b"hi\n"
    assert sh(mount, "printf 'no newline' > .ai/chat; cat .ai/chat").stdout == b"no newline\n"
    names = sorted(os.listdir(mount.path / ".ai"))
    assert names == sorted(
        [
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
    )
    # Hidden from the root listing (tree walkers never enter it), reachable by name.
    assert ".ai" not in os.listdir(mount.path)
    assert os.path.isdir(mount.path / ".ai")
    assert stat.S_IMODE(os.stat(mount.path / ".ai").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(mount.path / ".ai" / "chat").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(mount.path / ".ai" / "help").st_mode) == 0o400
    st = os.stat(mount.path / ".ai" / "chat")
    assert st.st_size == len(b"no newline\n")
    assert b"docs/ai-files.md" in (mount.path / ".ai" / "help").read_bytes()
    # Namespace changes are refused; nothing of .ai reaches the server.
    for script in ("rm .ai/chat", "mkdir .ai/x", "mv .ai/chat .ai/talk", "touch .ai/newfile"):
        assert sh(mount, script, check=False).returncode != 0, script
    mount.wait_uploaded()
    assert not mount.remote.exists(".ai")


def test_streaming_is_visible_before_the_end(mount: MountedFs) -> None:
    warm_up(mount)
    text = "one two three four five six seven eight nine ten eleven twelve"
    mount.emulator.set_faults(HOLD)
    chunks: queue.Queue[bytes | BaseException] = queue.Queue()

    def reader() -> None:
        try:
            with open(mount.path / ".ai" / "chat", "rb", buffering=0) as f:
                while chunk := f.read(1 << 16):
                    chunks.put(chunk)
            chunks.put(b"")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            chunks.put(exc)

    try:
        sh(mount, f"echo '{text}' > .ai/chat")
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        first = chunks.get(timeout=20)
        assert isinstance(first, bytes) and first and text.encode().startswith(first)
        assert len(first) < len(text)
        # The emulator holds the rest: nothing more arrives meanwhile.
        with pytest.raises(queue.Empty):
            chunks.get(timeout=1.0)
    finally:
        mount.emulator.release()
    rest = bytearray()
    while (item := chunks.get(timeout=20)) != b"":
        assert isinstance(item, bytes), item
        rest += item
    thread.join(10)
    assert first + rest == (text + "\n").encode()


def test_prompt_of_many_kilobytes(mount: MountedFs) -> None:
    notes = "".join(f"- note {i}: the quick brown fox jumps over the lazy dog\n" for i in range(4000))
    (mount.path / "notes.md").write_text(notes)
    out = sh(mount, "cat notes.md > .ai/chat; cat .ai/chat").stdout
    assert len(notes) > 200_000
    assert out == notes.encode()  # the answer repeats the prompt, its final newline included


def test_model_switch_and_refusal(mount: MountedFs) -> None:
    assert sh(mount, "cat .ai/model").stdout == b"gpt-5-nano\n"
    models = sh(mount, "cat .ai/models").stdout.decode().splitlines()
    assert "gpt-4o-mini" in models and "echo" in models
    sh(mount, "echo gpt-4o-mini > .ai/model")
    assert sh(mount, "cat .ai/model").stdout == b"gpt-4o-mini\n"
    assert sh(mount, "echo which > .ai/chat; cat .ai/chat").stdout == b"which\n"
    assert chat_args(mount)[-1]["model"] == "gpt-4o-mini"
    # dash's builtin echo says "I/O error" for any errno: coreutils' echo shows the real one.
    bad = sh(mount, "/bin/echo no-such-model > .ai/model", check=False)
    assert bad.returncode != 0 and b"Invalid argument" in bad.stderr
    assert sh(mount, "cat .ai/model").stdout == b"gpt-4o-mini\n"
    error = sh(mount, "cat .ai/error").stdout.decode()
    assert "unknown model 'no-such-model'" in error and "[EINVAL]" in error


def test_conversation_and_reset(mount: MountedFs) -> None:
    assert sh(mount, "echo first > .ai/chat; cat .ai/chat").stdout == b"first\n"
    assert sh(mount, "echo second > .ai/chat; cat .ai/chat").stdout == b"second\n"
    assert [m["content"] for m in chat_args(mount)[-1]["messages"]] == ["first", "first", "second"]
    history = json.loads(sh(mount, "cat .ai/conversation").stdout)
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "first"), ("assistant", "first"), ("user", "second"), ("assistant", "second"),
    ]  # fmt: skip
    sh(mount, "echo > .ai/reset")
    assert json.loads(sh(mount, "cat .ai/conversation").stdout) == []
    assert sh(mount, "echo third > .ai/chat; cat .ai/chat").stdout == b"third\n"
    assert [m["content"] for m in chat_args(mount)[-1]["messages"]] == ["third"]
    # Save and restore with cp.
    sh(mount, "cp .ai/conversation saved.json; echo > .ai/reset; cp saved.json .ai/conversation")
    assert [m["content"] for m in json.loads(sh(mount, "cat .ai/conversation").stdout)] == ["third", "third"]


def test_options(mount: MountedFs) -> None:
    sh(mount, "echo temperature=0.3 > .ai/options; echo 'system=Answer briefly.' >> .ai/options")
    shown = sh(mount, "cat .ai/options").stdout.decode()
    assert "temperature=0.3\n" in shown and "system=Answer briefly.\n" in shown
    sh(mount, "echo hello > .ai/chat; cat .ai/chat")
    args = chat_args(mount)[-1]
    assert args["temperature"] == 0.3
    assert args["messages"][0] == {"role": "system", "content": "Answer briefly."}
    bad = sh(mount, "/bin/echo colour=blue >> .ai/options", check=False)
    assert bad.returncode != 0 and b"Invalid argument" in bad.stderr
    assert "unknown key 'colour'" in sh(mount, "cat .ai/error").stdout.decode()
    assert "temperature=0.3\n" in sh(mount, "cat .ai/options").stdout.decode()


def test_rdwr_descriptor_and_two_users_chatting_while_a_third_lists(mount: MountedFs) -> None:
    warm_up(mount)
    for i in range(30):
        (mount.path / f"dir{i % 3}").mkdir(exist_ok=True)
        (mount.path / f"dir{i % 3}" / f"f{i}.txt").write_text(f"file {i}\n")
    chatter = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "os.write(fd, sys.argv[2].encode() + b'\\n')\n"
        "out = b''\n"
        "while True:\n"
        "    chunk = os.read(fd, 65536)\n"
        "    if not out: print('FIRST', flush=True)\n"
        "    if not chunk: break\n"
        "    out += chunk\n"
        "os.close(fd)\n"
        "sys.stdout.write('ANSWER ' + out.decode())\n"
    )
    chat = str(mount.path / ".ai" / "chat")
    mount.emulator.set_faults(HOLD)
    a = b = None
    try:
        text_a = "slow answer for process A with many words in it"
        a = subprocess.Popen([sys.executable, "-c", chatter, chat, text_a], stdout=subprocess.PIPE, text=True)
        assert a.stdout is not None
        assert a.stdout.readline() == "FIRST\n"  # A has its first chunk; the rest is held
        b = subprocess.run(
            [sys.executable, "-c", chatter, chat, "quick answer for B"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert b.stdout.endswith("ANSWER quick answer for B\n"), b
        # The mount stays responsive for a third process while A's answer is held.
        started = time.monotonic()
        lister = subprocess.run(["ls", "-lR", str(mount.path)], capture_output=True, text=True, timeout=30)
        assert lister.returncode == 0 and "f29.txt" in lister.stdout
        assert (mount.path / "dir1" / "f1.txt").read_text() == "file 1\n"
        assert time.monotonic() - started < 10
        assert a.poll() is None
    finally:
        mount.emulator.release()
    out, _ = a.communicate(timeout=30)
    assert out == f"ANSWER {text_a}\n"
    # Private answers did not become the user's shared answer.
    assert sh(mount, "cat .ai/chat").stdout == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as a second user")
def test_two_users_of_one_mount_never_mix(mount_factory: Any) -> None:
    m = mount_factory(allow_other=True, ai_all_users=True)

    def as_nobody(script: str) -> bytes:
        # cwd is entered before the uid changes, so the root-only test directory above the
        # mount does not matter; the mount itself lets everyone in (allow_other).
        proc = subprocess.run(
            ["sh", "-c", script], cwd=m.path, user=65534, group=65534, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    sh(m, "echo question of root > .ai/chat")
    as_nobody("echo question of nobody > .ai/chat")
    assert sh(m, "cat .ai/chat").stdout == b"question of root\n"
    assert as_nobody("cat .ai/chat") == b"question of nobody\n"
    assert [c["content"] for c in json.loads(as_nobody("cat .ai/conversation"))] == ["question of nobody"] * 2
    as_nobody("echo gpt-4o-mini > .ai/model")
    assert as_nobody("cat .ai/model") == b"gpt-4o-mini\n"
    assert sh(m, "cat .ai/model").stdout == b"gpt-5-nano\n"


# -- tts, ocr, img ------------------------------------------------------------------------------


def test_tts_writes_mp3(mount: MountedFs, tmp_path: Path) -> None:
    sh(mount, "echo hello > .ai/tts; cat .ai/tts > hello.mp3")
    audio = (mount.path / "hello.mp3").read_bytes()
    assert mp3_duration(audio) > 0.2
    voices = sh(mount, "cat .ai/voices").stdout.decode().splitlines()
    voice = voices[-1].split("\t")[0]
    assert voice
    sh(mount, f"echo voice={voice} >> .ai/options; echo hello > .ai/tts; cat .ai/tts > {tmp_path}/voice.mp3")
    other = (tmp_path / "voice.mp3").read_bytes()
    assert mp3_duration(other) > 0.2 and other != audio


def test_ocr_of_an_image_file_a_path_and_a_url(mount: MountedFs, png_server: Any) -> None:
    png = render_text_png("SCAN ME")
    (mount.path / "scans").mkdir()
    (mount.path / "scans" / "scan.png").write_bytes(png)
    assert sh(mount, "cp scans/scan.png .ai/ocr; cat .ai/ocr").stdout == b"SCAN ME\n"
    assert sh(mount, "echo scans/scan.png > .ai/ocr; cat .ai/ocr").stdout == b"SCAN ME\n"
    png_server.handler.data = render_text_png("FROM A URL")
    url = f"http://127.0.0.1:{png_server.server_address[1]}/page.png"
    assert sh(mount, f"echo {url} > .ai/ocr; cat .ai/ocr").stdout == b"FROM A URL\n"
    sh(mount, "echo scans/missing.png > .ai/ocr")
    assert read_errno(mount.path / ".ai" / "ocr") == (b"", errno.ENOENT)


def test_img_writes_png(mount: MountedFs) -> None:
    from PIL import Image

    sh(mount, "echo 'A RED FOX' > .ai/img; cat .ai/img > fox.png")
    data = (mount.path / "fox.png").read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size[0] >= 64
    # What was drawn is the prompt: the OCR of the result reads it back.
    assert sh(mount, "cp fox.png .ai/ocr; cat .ai/ocr").stdout == b"A RED FOX\n"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected", "text"),
    [
        (
            {"status": 402, "code": "insufficient_funds", "message": "Insufficient funds"},
            errno.EDQUOT,
            "funds",
        ),
        (
            {"status": 422, "code": "moderation_failed", "message": "Flagged by moderation"},
            errno.EACCES,
            "moder",
        ),
        (
            {"status": 400, "code": "bad_request", "message": "Model not found: gone"},
            errno.EINVAL,
            "not found",
        ),
        (
            {"status": 500, "code": "internal_error", "message": "Internal Server Error"},
            errno.EIO,
            "Internal",
        ),
    ],
)
def test_request_errors(mount: MountedFs, rule: dict[str, Any], expected: int, text: str) -> None:
    warm_up(mount)
    mount.emulator.set_faults({"path": "/drivers/call", "method": "POST", "count": 1, **rule})
    sh(mount, "echo will fail > .ai/chat")
    assert read_errno(mount.path / ".ai" / "chat") == (b"", expected)
    error = sh(mount, "cat .ai/error").stdout.decode()
    assert text in error and f"[{errno.errorcode[expected]}]" in error
    assert sh(mount, "echo fine > .ai/chat; cat .ai/chat").stdout == b"fine\n"


@pytest.mark.slow
def test_rate_limit_is_eagain(mount_factory: Any) -> None:
    # --timeout 10: the client's deadline (2 s less) bounds how long it retries the 429s
    # before giving up, 58 s with the default 60
    mount = mount_factory(timeout=10)
    warm_up(mount)
    # A standing rule: the client retries a 429 with backoff before giving up.
    mount.emulator.set_faults({"path": "/drivers/call", "status": 429, "code": "too_many_requests"})
    try:
        sh(mount, "echo busy > .ai/chat")
        got, code = read_errno(mount.path / ".ai" / "chat")
    finally:
        mount.emulator.clear_faults()
    assert (got, code) == (b"", errno.EAGAIN)
    assert "[EAGAIN]" in sh(mount, "cat .ai/error").stdout.decode()


def test_timeout_error_mid_stream_and_cancel(mount: MountedFs) -> None:
    warm_up(mount)
    # A stream that breaks after two pieces: the text so far, then EIO.
    mount.emulator.set_faults(
        {"path": "/drivers/call", "count": 1, "stream_error_after": 2, "message": "provider went away"}
    )
    sh(mount, "echo one two three four five six seven eight nine ten > .ai/chat")
    got, code = read_errno(mount.path / ".ai" / "chat")
    assert code == errno.EIO and got and b"one two three four five six seven eight nine ten".startswith(got)
    assert "provider went away" in sh(mount, "cat .ai/error").stdout.decode()
    # The timeout option: a held answer fails with ETIMEDOUT.
    sh(mount, "echo timeout=1 >> .ai/options")
    mount.emulator.set_faults(HOLD)
    try:
        sh(mount, "echo wait for me please > .ai/chat")
        started = time.monotonic()
        got, code = read_errno(mount.path / ".ai" / "chat")
        assert code == errno.ETIMEDOUT and time.monotonic() - started < 10
    finally:
        mount.emulator.release()
    assert "[ETIMEDOUT]" in sh(mount, "cat .ai/error").stdout.decode()


def test_bad_input_is_refused_at_write(mount: MountedFs) -> None:
    chat = mount.path / ".ai" / "chat"
    sh(mount, "echo before > .ai/chat")
    # Binary data: the write itself fails.
    fd = os.open(chat, os.O_WRONLY | os.O_TRUNC)
    try:
        with pytest.raises(OSError) as info:
            os.write(fd, b"\x89PNG\r\n\x1a\n\x00\x00binary")
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert "binary data refused" in sh(mount, "cat .ai/error").stdout.decode()
    assert read_errno(chat) == (b"", errno.EINVAL)
    # Too large: EFBIG once past 1 MiB.
    proc = sh(mount, "head -c 1100000 /dev/zero | tr '\\0' a > .ai/chat", check=False)
    assert proc.returncode != 0 and b"too large" in proc.stderr.lower()
    assert read_errno(chat) == (b"", errno.EFBIG)
    # An empty prompt: reported by close and then by every read.
    sh(mount, "echo > .ai/chat", check=False)
    assert read_errno(chat) == (b"", errno.EINVAL)
    assert "empty prompt" in sh(mount, "cat .ai/error").stdout.decode()
    # The mount is fine afterwards.
    assert sh(mount, "echo after > .ai/chat; cat .ai/chat").stdout == b"after\n"
