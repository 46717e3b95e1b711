"""``/drivers/call`` of the emulator, called directly with a fake driver context.

Request bodies and expected shapes come from the exchanges recorded against a
real Puter 26.07 server (README §7, drivers*.jsonl); the recorded-contract test
replays them when the corpus is available.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from puterfs.emulator import drivers, media
from puterfs.emulator.errors import ApiError
from puterfs.emulator.faults import StreamAbort
from puterfs.emulator.testing import local_http

EXCHANGES = Path(os.environ.get("PUTER_EXCHANGES", "/work/shared/puter-api/exchanges"))

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


class FakeCtx:
    """A driver context: an in-memory home, canned URLs, and a stream fault switch."""

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        urls: dict[str, bytes] | None = None,
        abort_at: int | None = None,
    ) -> None:
        self.username = "alice"
        self.files = files or {}
        self.urls = urls or {}
        self.abort_at = abort_at
        self.chunks: list[int] = []
        self.read_paths: list[str] = []

    async def read_file(self, path: str) -> bytes:
        self.read_paths.append(path)
        if path not in self.files:
            raise ApiError(404, "subject_does_not_exist", f"Entry not found: path={path}")
        return self.files[path]

    async def before_stream_chunk(self, index: int) -> None:
        self.chunks.append(index)
        if self.abort_at is not None and index >= self.abort_at:
            raise StreamAbort("upstream went away")

    async def fetch_url(self, url: str) -> bytes:
        if url not in self.urls:
            raise OSError("connection refused")
        return self.urls[url]


async def call(body: dict[str, Any], ctx: FakeCtx | None = None) -> tuple[int, str, Any]:
    """(status, content type, parsed body) of a driver call; NDJSON as a list of lines."""
    resp = await drivers.handle_call(body, ctx or FakeCtx())
    ctype = resp.headers.get("content-type", "")
    if hasattr(resp, "body_iterator"):
        raw = b"".join([chunk async for chunk in resp.body_iterator])
    else:
        raw = resp.body
    if ctype.startswith("application/x-ndjson"):
        assert raw.endswith(b"\n")
        return resp.status_code, ctype, [json.loads(line) for line in raw.decode().split("\n") if line]
    if ctype.startswith("application/json"):
        return resp.status_code, ctype, json.loads(raw)
    return resp.status_code, ctype, raw


def chat(args: dict[str, Any], method: str = "complete", **extra: Any) -> dict[str, Any]:
    return {"interface": "puter-chat-completion", "method": method, "args": args, **extra}


def user(text: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_error(result: tuple[int, str, Any], status: int, code: str, message: str | None = None) -> None:
    got_status, ctype, body = result
    assert got_status == status, body
    assert ctype.startswith("application/json")
    assert body["code"] == code
    assert body["error"] == body["message"]
    if message is not None:
        assert body["message"] == message


# --------------------------------------------------------------------------- envelope errors


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (
            {"interface": "no-such-iface", "method": "x", "args": {}},
            404,
            "not_found",
            "Driver not found: no-such-iface:(no default)",
        ),
        (chat({}, "nope"), 404, "not_found", "Method 'nope' not found on driver 'puter-chat-completion'"),
        (
            chat({"model": "fake"}, driver="claude"),
            404,
            "not_found",
            "Driver not found: puter-chat-completion:claude",
        ),
        (
            chat({"model": "fake"}, driver="openai-completion"),
            404,
            "not_found",
            "Driver not found: puter-chat-completion:openai-completion",
        ),
        (
            {"interface": None, "method": "complete", "args": {}},
            400,
            "bad_request",
            "Missing or invalid `interface`",
        ),
        (
            {"interface": "puter-chat-completion", "args": {}},
            400,
            "bad_request",
            "Missing or invalid `method`",
        ),
        (chat([]), 400, "bad_request", None),  # type: ignore[arg-type]
    ],
)
async def test_envelope_errors(body: dict[str, Any], status: int, code: str, message: str | None) -> None:
    assert_error(await call(body), status, code, message)


async def test_other_listed_driver_names_are_served() -> None:
    status, _, body = await call(
        {"interface": "puter-tts", "method": "list_voices", "driver": "xai-tts", "args": {}}
    )
    assert status == 200 and body["service"] == {"name": "xai-tts"}


async def test_unimplemented_interface_answers_like_a_server_without_provider() -> None:
    assert_error(
        await call({"interface": "puter-notifications", "method": "select", "args": {}}),
        500,
        "internal_error",
    )


async def test_list_interfaces_is_as_recorded() -> None:
    result = await drivers.list_interfaces(FakeCtx())
    assert result["puter-chat-completion"] == {"drivers": ["ai-chat"], "default": "ai-chat"}
    assert result["puter-ocr"]["drivers"] == ["ai-ocr", "aws-textract", "mistral"]
    assert len(result) == 13
    result["puter-ocr"]["drivers"].clear()  # callers get a copy
    assert (await drivers.list_interfaces(FakeCtx()))["puter-ocr"]["drivers"]


# --------------------------------------------------------------------------- chat: fake-chat provider


async def test_fake_non_stream_shape() -> None:
    status, ctype, body = await call(chat({"messages": user("hi"), "model": "fake"}))
    assert status == 200 and ctype.startswith("application/json")
    assert body["success"] is True and body["service"] == {"name": "ai-chat"}
    assert body["metadata"] == {"service_used": "fake-chat", "providerUsed": "fake"}
    result = body["result"]
    msg = result["message"]
    assert msg["id"] == "00000000-0000-0000-0000-000000000000"
    assert (msg["type"], msg["role"], msg["model"]) == ("message", "assistant", "fake")
    assert msg["stop_reason"] == "end_turn" and msg["stop_sequence"] is None
    assert len(msg["content"]) == 1 and msg["content"][0]["type"] == "text"
    paragraphs = msg["content"][0]["text"].split("\n")
    assert 1 <= len(paragraphs) <= 3 and all(p.endswith(".") for p in paragraphs)
    assert result["usage"] == {"input_tokens": 0, "output_tokens": 1, "usd_cents": None}
    assert result["finish_reason"] == "stop" and result["via_ai_chat_service"] is True


async def test_provider_fake_chat_alone_selects_fake() -> None:
    status, _, body = await call(chat({"messages": user("hi"), "provider": "fake-chat"}))
    assert status == 200 and body["result"]["message"]["model"] == "fake"


async def test_costly_usage() -> None:
    status, _, body = await call(chat({"messages": user("hi"), "model": "costly"}))
    assert status == 200
    usage = body["result"]["usage"]
    assert usage["input_tokens"] == 1 and 50 <= usage["output_tokens"] <= 200
    assert body["metadata"]["providerUsed"] == "costly"


async def test_abuse_returns_fixed_html() -> None:
    bodies = [(await call(chat({"messages": user("x"), "model": "abuse"})))[2] for _ in range(2)]
    texts = [b["result"]["message"]["content"][0]["text"] for b in bodies]
    assert texts[0] == texts[1] and texts[0].startswith("<h1>")


async def test_fake_stream_waits_then_sends_whole_text_and_usage() -> None:
    ctx = FakeCtx()
    start = time.monotonic()
    status, ctype, lines = await call(chat({"messages": user("hi"), "model": "fake", "stream": True}), ctx)
    assert time.monotonic() - start >= 0.45
    assert status == 200 and ctype == "application/x-ndjson"
    assert [line["type"] for line in lines] == ["text", "usage"]
    assert lines[0]["text"] and lines[1] == {"type": "usage", "usage": {"usd_cents": None}}
    assert ctx.chunks == [0]


async def test_fake_with_tools_never_calls_tools() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    _, _, lines = await call(
        chat({"messages": user("call:get_weather {}"), "model": "fake", "tools": tools, "stream": True})
    )
    assert [line["type"] for line in lines] == ["text", "usage"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"messages": user("hi")}, "Model not found: undefined"),
        ({"messages": user("hi"), "provider": "nobody"}, "Model not found: undefined"),
        (
            {"messages": user("hi"), "model": "no-such-model-xyz", "stream": True},
            "Model not found: no-such-model-xyz",
        ),
        ({"messages": user("hi"), "model": "dall-e-3"}, "Model not found: dall-e-3"),
    ],
)
async def test_unknown_model(args: dict[str, Any], message: str) -> None:
    assert_error(await call(chat(args)), 400, "bad_request", message)


async def test_list_and_models() -> None:
    _, _, listed = await call(chat({}, "list"))
    assert listed["result"] == sorted(listed["result"])
    assert {"abuse", "costly", "fake", "echo", "gpt-4o-mini", "claude-sonnet-4.5"} <= set(listed["result"])
    _, _, models = await call(chat({}, "models"))
    by_id = {m["id"]: m for m in models["result"]}
    assert set(by_id) == set(listed["result"])
    assert by_id["costly"] == {
        "id": "costly",
        "aliases": [],
        "costs_currency": "usd-cents",
        "costs": {"input-tokens": 1000, "output-tokens": 2000},
        "max_tokens": 8192,
        "provider": "fake-chat",
    }
    assert "claude-opus-4-5" in by_id["claude-opus-4.5"]["aliases"]


def test_public_listings() -> None:
    public = drivers.public_chat_models()
    assert public == sorted(public)
    assert not {"fake", "costly", "abuse"} & set(public)
    assert {"echo", "gpt-4o-mini", "gpt-5-nano", "claude-sonnet-4.5", "claude-opus-4.5"} <= set(public)
    details = drivers.chat_model_details()
    assert [d["id"] for d in details] == public
    for d in details:
        assert set(d) == {
            "id",
            "provider",
            "aliases",
            "name",
            "costs_currency",
            "costs",
            "context",
            "max_tokens",
        }
    assert drivers.image_models()[0] == "emulator-image"
    assert "openai:openai/gpt-image-1" in drivers.image_models()


# --------------------------------------------------------------------------- chat: echo engine


async def test_echo_replies_with_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "what did I say?"},
    ]
    status, _, body = await call(chat({"messages": messages, "model": "echo"}))
    assert status == 200
    result = body["result"]
    assert result["message"]["content"] == [{"type": "text", "text": "what did I say?"}]
    total = sum(len(m["content"]) for m in messages)
    assert result["usage"]["input_tokens"] == math.ceil(total / 4)
    assert result["usage"]["output_tokens"] == math.ceil(len("what did I say?") / 4)
    assert result["message"]["id"].startswith("msg_")
    assert body["metadata"] == {"service_used": "emulator", "providerUsed": "echo"}


async def test_echo_multimodal_parts_and_files() -> None:
    ctx = FakeCtx(files={"/alice/pic.png": media.render_text_png("pic")})
    content = [
        {"type": "text", "text": "line one"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        "bare string part",
        {"type": "file", "puter_path": "~/pic.png"},
        {"type": "text", "text": "line three"},
    ]
    status, _, body = await call(chat({"messages": user(content), "model": "echo"}), ctx)
    assert status == 200
    assert body["result"]["message"]["content"][0]["text"] == "line one\nbare string part\nline three"
    assert ctx.read_paths == ["/alice/pic.png"]
    missing = [{"type": "file", "puter_path": "/alice/missing.png"}]
    assert_error(
        await call(chat({"messages": user(missing), "model": "echo"}), ctx), 404, "subject_does_not_exist"
    )


@pytest.mark.parametrize(
    ("requested", "used", "service"),
    [
        ("gpt-4o-mini", "gpt-4o-mini", "openai-completion"),
        ("GPT-4o-Mini", "gpt-4o-mini", "openai-completion"),
        ("gpt-5-nano", "gpt-5-nano", "openai-completion"),
        ("claude-sonnet-4.5", "claude-sonnet-4.5", "claude"),
        ("claude-opus-4-5", "claude-opus-4.5", "claude"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4.5", "claude"),
        ("gpt-4o", "gpt-4o-mini", "openai-completion"),  # the documented substitution
    ],
)
async def test_stand_ins_aliases_and_substitution(requested: str, used: str, service: str) -> None:
    status, _, body = await call(chat({"messages": user("ping"), "model": requested}))
    assert status == 200
    assert body["metadata"] == {"service_used": service, "providerUsed": used}
    assert body["result"]["message"]["model"] == used
    assert body["result"]["message"]["content"][0]["text"] == "ping"


async def test_echo_stream_in_several_chunks() -> None:
    text = "The quick brown fox jumps over the lazy dog, again and again, twelve words."
    ctx = FakeCtx()
    start = time.monotonic()
    status, ctype, lines = await call(
        chat({"messages": user(text), "model": "gpt-4o-mini", "stream": True}), ctx
    )
    elapsed = time.monotonic() - start
    assert status == 200 and ctype == "application/x-ndjson"
    texts = [line["text"] for line in lines if line["type"] == "text"]
    assert len(texts) == 8 and "".join(texts) == text
    assert lines[-1] == {
        "type": "usage",
        "usage": {
            "input_tokens": math.ceil(len(text) / 4),
            "output_tokens": math.ceil(len(text) / 4),
            "usd_cents": None,
        },
    }
    assert ctx.chunks == list(range(8))
    assert elapsed >= 7 * drivers.ECHO_STREAM_PAUSE * 0.9


def test_split_stream_chunks_keeps_text_exactly() -> None:
    for text in ["", "one", "  spaced   out  ", "a b c d e f g h i j k l m n o p", "x\ny\n\nz "]:
        chunks = drivers.split_stream_chunks(text)
        assert "".join(chunks) == text
        assert len(chunks) <= drivers.ECHO_STREAM_CHUNKS


async def test_stream_abort_becomes_error_line() -> None:
    ctx = FakeCtx(abort_at=3)
    text = " ".join(f"w{i}" for i in range(40))
    status, _, lines = await call(chat({"messages": user(text), "model": "echo", "stream": True}), ctx)
    assert status == 200
    assert [line["type"] for line in lines] == ["text", "text", "text", "error"]
    assert lines[-1]["message"] == "upstream went away"
    aborted = FakeCtx(abort_at=0)
    _, _, lines = await call(chat({"messages": user("hi"), "model": "fake", "stream": True}), aborted)
    assert lines == [{"type": "error", "message": "upstream went away"}]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


async def test_echo_tool_use_non_stream() -> None:
    args = {
        "messages": user('call:get_weather {"city":"Paris"}'),
        "model": "claude-sonnet-4.5",
        "tools": [WEATHER_TOOL],
    }
    status, _, body = await call(chat(args))
    assert status == 200
    (block,) = body["result"]["message"]["content"]
    assert (
        block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {"city": "Paris"}
    )
    assert block["id"].startswith("toolu_")
    assert body["result"]["message"]["stop_reason"] == "tool_use"


async def test_echo_tool_use_stream() -> None:
    args = {
        "messages": user('call:get_weather {"city":"Paris"}'),
        "model": "echo",
        "tools": [WEATHER_TOOL],
        "stream": True,
    }
    _, _, lines = await call(chat(args))
    assert [line["type"] for line in lines] == ["tool_use", "usage"]
    tool = lines[0]
    assert (tool["name"], tool["input"], tool["text"]) == ("get_weather", {"city": "Paris"}, "")
    assert isinstance(tool["id"], str) and tool["id"]


async def test_call_prefix_without_matching_tool_is_plain_text() -> None:
    for args in (
        {"messages": user("call:get_weather {}"), "model": "echo"},
        {"messages": user("call:other {}"), "model": "echo", "tools": [WEATHER_TOOL]},
        {"messages": user("call:get_weather {not json"), "model": "echo", "tools": [WEATHER_TOOL]},
    ):
        _, _, body = await call(chat(args))
        assert body["result"]["message"]["content"][0]["type"] == "text"


async def test_tool_result_conversation_is_accepted() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    ]
    status, _, body = await call(chat({"messages": messages, "model": "echo", "tools": [WEATHER_TOOL]}))
    assert status == 200 and body["result"]["message"]["content"][0]["text"] == "weather in Paris?"


async def test_max_tokens_truncates() -> None:
    text = "abcdefghij" * 10
    _, _, body = await call(chat({"messages": user(text), "model": "echo", "max_tokens": 5}))
    result = body["result"]
    assert result["message"]["content"][0]["text"] == text[:20]
    assert result["finish_reason"] == "length" and result["usage"]["output_tokens"] == 5
    _, _, lines = await call(chat({"messages": user(text), "model": "echo", "max_tokens": 5, "stream": True}))
    assert "".join(x["text"] for x in lines if x["type"] == "text") == text[:20]


@pytest.mark.parametrize(
    "args",
    [
        {"temperature": 2.5},
        {"temperature": -0.1},
        {"temperature": "hot"},
        {"max_tokens": 0},
        {"max_tokens": "10"},
        {"messages": "hi"},
        {"messages": [42]},
        {"messages": user(12)},
        {"tools": "nope", "messages": user("x")},
    ],
)
async def test_invalid_chat_args(args: dict[str, Any]) -> None:
    body = {"messages": user("x"), "model": "echo", **args}
    assert_error(await call(chat(body)), 400, "bad_request")


async def test_temperature_in_range_accepted() -> None:
    for temperature in (0, 0.7, 2):
        status, _, _ = await call(chat({"messages": user("x"), "model": "echo", "temperature": temperature}))
        assert status == 200


async def test_oversized_input_is_refused() -> None:
    big = "x" * (drivers.MAX_INPUT_CHARS // 2 + 1)
    result = await call(chat({"messages": [{"role": "user", "content": big}] * 2, "model": "echo"}))
    assert_error(result, 400, "bad_request")
    assert "context length" in result[2]["message"]
    ok = await call(chat({"messages": user("x" * drivers.MAX_INPUT_CHARS), "model": "echo"}))
    assert ok[0] == 200


# --------------------------------------------------------------------------- OCR


def _ocr(args: dict[str, Any]) -> dict[str, Any]:
    return {"interface": "puter-ocr", "method": "recognize", "args": args}


async def test_ocr_test_mode_sample() -> None:
    status, _, body = await call(_ocr({"source": "~/x.png", "test_mode": True}))
    assert status == 200
    assert body == {"success": True, "result": drivers.OCR_TEST_RESULT, "service": {"name": "ai-ocr"}}


async def test_ocr_sources() -> None:
    png = media.render_text_png("Invoice 42\nTotal: $13.37")
    expected = {
        "blocks": [
            {"type": "text/textract:LINE", "confidence": 0.99, "text": "Invoice 42"},
            {"type": "text/textract:LINE", "confidence": 0.99, "text": "Total: $13.37"},
        ]
    }
    ctx = FakeCtx(files={"/alice/docs/scan.png": png}, urls={"https://example.test/scan.png": png})
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    for args in (
        {"source": data_uri},
        {"file": data_uri},
        {"source": "https://example.test/scan.png"},
        {"source": "/alice/docs/scan.png"},
        {"source": "~/docs/scan.png"},
        {"source": "docs/scan.png"},
    ):
        status, _, body = await call(_ocr(args), ctx)
        assert status == 200, (args, body)
        assert body["result"] == expected and body["service"] == {"name": "ai-ocr"}


async def test_ocr_errors() -> None:
    ctx = FakeCtx()
    assert_error(await call(_ocr({}), ctx), 400, "bad_request")
    assert_error(
        await call(_ocr({"source": "data:image/png;base64,bm90IGFuIGltYWdl"}), ctx), 400, "bad_request"
    )
    assert_error(await call(_ocr({"source": "~/missing.png"}), ctx), 404, "subject_does_not_exist")
    assert_error(await call(_ocr({"source": "https://example.test/down.png"}), ctx), 400, "bad_request")
    blank = io.BytesIO()
    Image.new("RGB", (50, 50), "white").save(blank, "PNG")
    status, _, body = await call(
        _ocr({"source": "data:image/png;base64," + base64.b64encode(blank.getvalue()).decode()})
    )
    assert status == 200 and body["result"] == {"blocks": []}


# --------------------------------------------------------------------------- TTS


def _tts(args: dict[str, Any], method: str = "synthesize") -> dict[str, Any]:
    return {"interface": "puter-tts", "method": method, "args": args}


async def test_tts_synthesize_returns_real_mp3() -> None:
    status, ctype, audio = await call(
        _tts(
            {
                "text": "hello there",
                "voice": "Joanna",
                "engine": "neural",
                "language": "en-US",
                "provider": "aws-polly",
            }
        )
    )
    assert status == 200 and ctype == "audio/mpeg"
    assert audio == media.synthesize_mp3("hello there", "Joanna", "neural", "en-US")
    assert media.mp3_duration(audio) == pytest.approx(11 * media.CHAR_SECONDS, abs=0.15)
    _, _, other = await call(_tts({"text": "hello there", "voice": "rex"}))
    assert other != audio


async def test_tts_test_mode_and_listings() -> None:
    status, _, body = await call(_tts({"text": "hello", "test_mode": True}))
    assert status == 200 and body == {
        "success": True,
        "result": {"url": "https://puter-sample-data.puter.site/tts_example.mp3", "content_type": "audio"},
        "service": {"name": "ai-tts"},
    }
    _, _, voices = await call(_tts({}, "list_voices"))
    assert {"id": "eve", "name": "Eve", "description": "Energetic, upbeat", "provider": "xai"} in voices[
        "result"
    ]
    _, _, xai = await call(_tts({"provider": "xai"}, "list_voices"))
    assert {v["provider"] for v in xai["result"]} == {"xai"}
    _, _, engines = await call(_tts({}, "list_engines"))
    assert engines["result"][0] == {
        "id": "xai-tts",
        "name": "xAI TTS",
        "provider": "xai",
        "pricing_per_million_chars": 1500,
    }


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"text": ""},
        {"text": 5},
        {"text": "x" * 3001},
        {"text": "hi", "voice": 3},
        {"text": "hi", "provider": "nobody"},
    ],
)
async def test_tts_errors(args: dict[str, Any]) -> None:
    assert_error(await call(_tts(args)), 400, "bad_request")


# --------------------------------------------------------------------------- image generation


def _img(args: dict[str, Any]) -> dict[str, Any]:
    return {"interface": "puter-image-generation", "method": "generate", "args": args}


def _decode_png(result: str) -> Image.Image:
    assert result.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(result.split(",", 1)[1])))
    img.load()
    assert img.format == "PNG"
    return img


async def test_image_generate_renders_prompt_and_ocr_reads_it_back() -> None:
    prompt = "a cat sitting on a mat, in the style of an old terminal (80x25)"
    status, _, body = await call(_img({"prompt": prompt, "model": "gpt-image-1"}))
    assert status == 200 and body["service"] == {"name": "ai-image"}
    img = _decode_png(body["result"])
    assert img.size == (1024, 1024)
    status, _, ocr = await call(_ocr({"source": body["result"]}))
    assert " ".join(b["text"] for b in ocr["result"]["blocks"]) == prompt


@pytest.mark.parametrize(
    ("args", "size"),
    [
        ({"width": 640, "height": 200}, (640, 200)),
        ({"ratio": {"w": 16, "h": 9}}, (1024, 576)),
        ({"ratio": {"w": 1, "h": 2}}, (512, 1024)),
    ],
)
async def test_image_sizes(args: dict[str, Any], size: tuple[int, int]) -> None:
    status, _, body = await call(_img({"prompt": "sized", "model": "emulator-image", **args}))
    assert status == 200
    img = _decode_png(body["result"])
    assert img.size == size
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert media.ocr_image(buf.getvalue()) == ["sized"]


async def test_image_test_mode_and_errors() -> None:
    sample = "https://puter-sample-data.puter.site/image_example.png"
    for args in (
        {"prompt": "a cat", "test_mode": True},
        {"prompt": "a cat", "test_mode": True, "model": "gpt-image-1"},
    ):
        status, _, body = await call(_img(args))
        assert (status, body["result"]) == (200, sample)
    assert_error(await call(_img({"prompt": "a cat"})), 400, "bad_request", "Missing `model`")
    assert_error(
        await call(_img({"prompt": "a cat", "test_mode": True, "model": "dall-e-3"})),
        400,
        "bad_request",
        "Model not found: dall-e-3",
    )
    assert_error(await call(_img({"model": "emulator-image"})), 400, "bad_request")
    assert_error(
        await call(_img({"prompt": "x", "model": "emulator-image", "width": 10})), 400, "bad_request"
    )
    assert_error(
        await call(_img({"prompt": "x", "model": "emulator-image", "ratio": {"w": 0, "h": 1}})),
        400,
        "bad_request",
    )


# --------------------------------------------------------------------------- speech to text


async def test_speech2txt() -> None:
    body = {
        "interface": "puter-speech2txt",
        "method": "transcribe",
        "args": {"file": "data:audio/wav;base64,AAAA", "test_mode": True},
    }
    status, _, result = await call(body)
    assert status == 200 and result["result"] == drivers.SPEECH2TXT_TEST_RESULT
    assert result["service"] == {"name": "ai-speech2txt"}
    body["args"] = {"file": "data:audio/wav;base64,AAAA"}
    assert_error(await call(body), 500, "internal_error")


# --------------------------------------------------------------------------- recorded contract


def _recorded() -> list[dict[str, Any]]:
    records = []
    for name in ("drivers.jsonl", "drivers-more.jsonl"):
        path = EXCHANGES / name
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def _same_shape(expected: Any, got: Any, path: str = "") -> None:
    """Same keys and value types (recorded text, ids and counts may differ)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), path
        for key, value in expected.items():
            assert key in got, f"{path}.{key} missing"
            _same_shape(value, got[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list), path
        if expected and got:
            _same_shape(expected[0], got[0], f"{path}[0]")
    elif isinstance(expected, bool) or expected is None:
        assert got == expected or expected is None, path
    elif isinstance(expected, (int, float)):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), path
    else:
        assert type(got) is type(expected), path


# Recorded on a server without the providers the emulator has: these differ on purpose.
_DIFFERENT_ON_PURPOSE = {
    "ai": {"tts", "tts test_mode", "tts list_voices", "ocr", "image test_mode", "chat unknown model"},
    "ai2": {"tts no test_mode (dummy key, no internet)", "image no test_mode"},
    "ai3": {"ocr recognize data: URI without test_mode"},
}


async def test_recorded_driver_calls_have_the_recorded_shape() -> None:
    records = [
        r
        for r in _recorded()
        if r["path"] == "/drivers/call"
        and r["auth"] == "gui"
        and r["status"] != 401
        and r["name"] not in _DIFFERENT_ON_PURPOSE.get(r["session"], set())
    ]
    if not records:
        pytest.skip(f"recorded exchanges not available at {EXCHANGES}")
    for record in records:
        status, ctype, body = await call(record["request"])
        assert status == record["status"], record["name"]
        assert ctype.split(";")[0] == record["content_type"].split(";")[0], record["name"]
        if record["response_kind"] == "ndjson":
            assert [x["type"] for x in body] == [x["type"] for x in record["response"]] or record.get(
                "response_truncated"
            ), record["name"]
            _same_shape(record["response"][0], body[0], record["name"])
        elif record["status"] >= 400:
            assert body == record["response"], record["name"]
        else:
            _same_shape(record["response"], body, record["name"])


# --------------------------------------------------------------------------- over real HTTP (emulator subprocess)


def _post(puter_user: Any, body: dict[str, Any]) -> Any:

    return local_http.post(
        puter_user.url + "/drivers/call",
        json=body,
        headers={"Authorization": f"Bearer {puter_user.token}"},
        timeout=30,
    )


def test_http_echo_stream_arrives_incrementally(puter_user: Any) -> None:

    text = " ".join(f"word{i}" for i in range(32))
    body = chat({"messages": user(text), "model": "gpt-4o-mini", "stream": True})
    arrivals: list[float] = []
    lines: list[dict[str, Any]] = []
    with local_http.stream(
        "POST",
        puter_user.url + "/drivers/call",
        json=body,
        headers={"Authorization": f"Bearer {puter_user.token}"},
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/x-ndjson"
        for line in resp.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                lines.append(json.loads(line))
    assert "".join(x["text"] for x in lines if x["type"] == "text") == text
    assert lines[-1]["type"] == "usage"
    # The chunks were not buffered into one response: they arrived spread over time.
    assert arrivals[-1] - arrivals[0] >= 5 * drivers.ECHO_STREAM_PAUSE


def test_http_substitution_errors_and_public_models(puter_user: Any) -> None:

    resp = _post(puter_user, chat({"messages": user("hi"), "model": "gpt-4o"}))
    assert resp.status_code == 200 and resp.json()["metadata"]["providerUsed"] == "gpt-4o-mini"
    resp = _post(puter_user, chat({"messages": user("hi"), "model": "nope"}))
    assert resp.status_code == 400 and resp.json()["code"] == "bad_request"
    models = local_http.get(puter_user.url + "/puterai/chat/models", timeout=30).json()
    assert models == {"models": drivers.public_chat_models()}


def test_http_tts_and_image_ocr_round_trip(puter_user: Any) -> None:
    resp = _post(puter_user, _tts({"text": "over the wire", "voice": "eve"}))
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/mpeg"
    assert media.mp3_duration(resp.content) == pytest.approx(13 * media.char_samples(1.1) / 24000, abs=0.15)
    image = _post(puter_user, _img({"prompt": "Round trip, over HTTP!", "model": "emulator-image"}))
    assert image.status_code == 200
    ocr = _post(puter_user, _ocr({"source": image.json()["result"]}))
    assert [b["text"] for b in ocr.json()["result"]["blocks"]] == ["Round trip, over HTTP!"]


# --------------------------------------------------------------------------- OpenAI/Anthropic-compatible chat


async def _read(resp: Any) -> tuple[str, bytes]:
    if hasattr(resp, "body_iterator"):
        return resp.headers["content-type"], b"".join([c async for c in resp.body_iterator])
    return resp.headers["content-type"], resp.body


def _sse_data(raw: bytes) -> list[Any]:
    out = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def test_openai_compat_non_stream_and_stream() -> None:
    body = {"model": "gpt-4o", "messages": user("compat works")}
    ctype, raw = await _read(await drivers.openai_chat_completions(body, FakeCtx()))
    result = json.loads(raw)
    assert ctype.startswith("application/json")
    assert result["object"] == "chat.completion" and result["id"].startswith("chatcmpl-")
    assert result["model"] == "gpt-4o-mini"  # the substitution is visible here too
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "compat works"}
    assert (
        result["usage"]["total_tokens"]
        == result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]
    )
    ctype, raw = await _read(await drivers.openai_chat_completions({**body, "stream": True}, FakeCtx()))
    events = _sse_data(raw)
    assert ctype.startswith("text/event-stream") and events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "compat works"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_openai_compat_tool_calls_and_abort() -> None:
    body = {"model": "echo", "messages": user('call:get_weather {"city":"Oslo"}'), "tools": [WEATHER_TOOL]}
    _, raw = await _read(await drivers.openai_chat_completions(body, FakeCtx()))
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call_ = choice["message"]["tool_calls"][0]
    assert call_["function"]["name"] == "get_weather" and json.loads(call_["function"]["arguments"]) == {
        "city": "Oslo"
    }
    _, raw = await _read(
        await drivers.openai_chat_completions(
            {"model": "echo", "messages": user("a b c d"), "stream": True}, FakeCtx(abort_at=1)
        )
    )
    events = _sse_data(raw)
    assert events[-1] == {"error": {"message": "upstream went away", "type": "server_error"}}
    with pytest.raises(ApiError) as err:
        await drivers.openai_chat_completions({"model": "nope", "messages": user("x")}, FakeCtx())
    assert err.value.status == 400


async def test_anthropic_compat_non_stream_and_stream() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "system": "be brief",
        "messages": user("hello claude"),
    }
    _, raw = await _read(await drivers.anthropic_messages(body, FakeCtx()))
    msg = json.loads(raw)
    assert msg["type"] == "message" and msg["model"] == "claude-sonnet-4.5"
    assert msg["content"] == [{"type": "text", "text": "hello claude"}] and msg["stop_reason"] == "end_turn"
    assert msg["usage"]["input_tokens"] == math.ceil(len("be briefhello claude") / 4)
    ctype, raw = await _read(await drivers.anthropic_messages({**body, "stream": True}, FakeCtx()))
    events = _sse_data(raw)
    assert ctype.startswith("text/event-stream")
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "hello claude"
