"""putergenai 3.5.0's README examples, run unchanged against the emulator over real HTTP.

Each example below is copied from the putergenai README (METADATA lines 80-215). Only
the import line differs (``from puterfs import PuterClient``), and the credentials and
URL come from the environment (PUTER_USERNAME / PUTER_PASSWORD and PUTER_API_URL only:
the login URL is derived from it, set here to the emulator). Each runs as the README runs
it, ``asyncio.run(main())``, and again under ``trio.run``: the client is backend-neutral.
The README's vision and OCR snippets fetch images from example.com, which a test run
offline cannot reach; those calls are tested with data: URLs and recorded exchanges in
test_client_ai.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest
import trio

from puterfs import PuterClient


@pytest.fixture(autouse=True)
def _env(emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PUTER_API_URL", emulator.url)
    # only the API URL: the client derives the web (login) URL from it, as the CLI does
    monkeypatch.delenv("PUTER_WEB_URL", raising=False)
    monkeypatch.setenv("PUTER_USERNAME", emulator.username)
    monkeypatch.setenv("PUTER_PASSWORD", emulator.password)
    monkeypatch.delenv("PUTER_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # the text-to-speech example writes output.mp3 here


# ------------------------------------------------------------ the README examples


async def main():
    async with PuterClient() as client:
        await client.login(os.environ["PUTER_USERNAME"], os.environ["PUTER_PASSWORD"])

        result = await client.ai_chat(
            prompt="Hello, how are you?",
            options={"model": "gpt-4o"}
        )

        print(result["response"]["result"]["message"]["content"])


async def stream_example():
    async with PuterClient() as client:
        await client.login(os.environ["PUTER_USERNAME"], os.environ["PUTER_PASSWORD"])

        stream = await client.ai_chat(
            prompt="Tell me a story",
            options={"model": "claude-opus-4.5", "stream": True}
        )

        async for chunk, model in stream:  # noqa: B007 (the README's line, unchanged)
            print(chunk, end='', flush=True)


async def file_example():
    async with PuterClient() as client:
        await client.login(os.environ["PUTER_USERNAME"], os.environ["PUTER_PASSWORD"])

        await client.fs_write("test.txt", "Hello, Puter!")
        content = await client.fs_read("test.txt")
        print(content.decode('utf-8'))
        await client.fs_delete("test.txt")


async def kv_example():
    async with PuterClient() as client:
        await client.login(os.environ["PUTER_USERNAME"], os.environ["PUTER_PASSWORD"])

        await client.kv_set("my_key", "my_value")
        value = await client.kv_get("my_key")
        print(value)


async def image_example():
    async with PuterClient() as client:
        await client.login(os.environ["PUTER_USERNAME"], os.environ["PUTER_PASSWORD"])

        image_url = await client.ai_txt2img(
            "A beautiful sunset over mountains",
            model="pollinations-image"
        )
        print(image_url)


async def speech_example():
    async with PuterClient() as client:
        await client.login(os.environ["PUTER_USERNAME"], os.environ["PUTER_PASSWORD"])

        audio_bytes = await client.ai_txt2speech("Hello, world!")
        with open("output.mp3", "wb") as f:
            f.write(audio_bytes)


# --------------------------------------------------------------------- the tests

RUNNERS = {
    "asyncio": lambda fn: asyncio.run(fn()),
    "trio": lambda fn: trio.run(fn),
}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest):
    return RUNNERS[request.param]


def test_readme_basic_chat(run, capsys: pytest.CaptureFixture[str]) -> None:
    run(main)
    out = capsys.readouterr().out
    # the emulator's echo engine answers with the last user message
    assert "Hello, how are you?" in out


def test_readme_streaming_chat(run, capsys: pytest.CaptureFixture[str]) -> None:
    run(stream_example)
    assert capsys.readouterr().out == "Tell me a story"


def test_readme_file_operations(run, capsys: pytest.CaptureFixture[str], emulator) -> None:
    run(file_example)
    assert capsys.readouterr().out == "Hello, Puter!\n"


def test_readme_key_value_store(run, capsys: pytest.CaptureFixture[str]) -> None:
    run(kv_example)
    assert capsys.readouterr().out == "my_value\n"


def test_readme_image_generation(run, capsys: pytest.CaptureFixture[str]) -> None:
    run(image_example)
    url = capsys.readouterr().out.strip()
    assert url.startswith(("data:image/", "http://", "https://"))
    if url.startswith("data:image/png;base64,"):
        assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_readme_text_to_speech(run, tmp_path: Path) -> None:
    run(speech_example)
    audio = (tmp_path / "output.mp3").read_bytes()
    # an MP3 starts with an ID3 tag or an MPEG frame sync
    assert audio[:3] == b"ID3" or (audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0)
    assert len(audio) > 1000
