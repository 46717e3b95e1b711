"""AI methods: chat (plain, streamed, events), models, OCR, images, speech, raw driver calls."""

from __future__ import annotations

import base64
import copy
import io
import json

import httpx
import pytest
import respx
from test_client_support import API, assert_api_request, exchange, recorded_response

from puterfs.client import (
    BadRequest,
    ChatEvent,
    ModelSubstituted,
    NotFound,
    PuterClient,
    ServerError,
    StreamError,
)

pytestmark = pytest.mark.anyio

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAACAAFUok9dAAAAAElFTkSuQmCC"
)


def _body(route: respx.Route) -> dict:
    request = route.calls.last.request
    assert_api_request(request, "POST", "/drivers/call")
    return json.loads(request.content)


def _ndjson(*lines: dict) -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-type": "application/x-ndjson"},
        content="".join(json.dumps(line) + "\n" for line in lines).encode(),
    )


def _envelope(result, provider_used: str | None = None) -> httpx.Response:
    body = {"success": True, "result": result, "service": {"name": "ai-chat"}}
    if provider_used:
        body["metadata"] = {"service_used": "x", "providerUsed": provider_used}
    return httpx.Response(200, json=body)


# --------------------------------------------------------------------- chat


async def test_chat_request_sends_only_given_options(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat non-stream fake (full body, metadata)")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    options = {"model": "fake"}
    before = copy.deepcopy(options)
    out = await client.ai_chat("hi", options)
    body = _body(route)
    assert body == {**rec["request"], "driver": "ai-chat"}
    assert "temperature" not in body["args"] and "max_tokens" not in body["args"]
    assert "test_mode" not in body and "stream" not in body
    assert options == before
    assert out["response"] == rec["response"]
    assert out["used_model"] == rec["response"]["metadata"]["providerUsed"] == "fake"
    # the README's way of reading the answer works on the real shape
    content = out["response"]["result"]["message"]["content"]
    assert content[0]["type"] == "text" and content[0]["text"]


async def test_chat_passes_caller_options_through(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat non-stream with tools")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    tools = rec["request"]["args"]["tools"]
    await client.ai_chat("weather in Paris?", {"model": "fake", "tools": tools, "temperature": 0, "max_tokens": 5,
                                               "provider": "fake-chat", "top_p": None})
    args = _body(route)["args"]
    assert args["tools"] == tools and args["temperature"] == 0 and args["max_tokens"] == 5
    assert args["provider"] == "fake-chat" and "top_p" not in args


async def test_chat_test_mode_uses_fake_model(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/drivers/call").mock(
        return_value=recorded_response(exchange("drivers.jsonl", "chat fake non-stream", "ai"))
    )
    await client.ai_chat("hi", test_mode=True)
    args = _body(route)["args"]
    assert args["model"] == "fake" and args["test_mode"] is True


async def test_chat_image_urls_become_parts(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat non-stream with system message and image_url part")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    data_url = rec["request"]["args"]["messages"][1]["content"][1]["image_url"]["url"]
    await client.ai_chat("what is in this image?", {"model": "fake"},
                         image_url=[data_url, "https://example.com/a.jpg", "~/pic.png", "pics/b.png"])
    content = _body(route)["args"]["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "file", "puter_path": "~/pic.png"},
        {"type": "file", "puter_path": "/admin/pics/b.png"},
    ]


async def test_chat_messages_are_sent_as_given_and_not_mutated(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat non-stream with system message and image_url part")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    messages = copy.deepcopy(rec["request"]["args"]["messages"])
    await client.ai_chat(messages=messages, options={"model": "fake"}, image_url="https://example.com/x.png")
    assert messages == rec["request"]["args"]["messages"]
    sent = _body(route)["args"]["messages"]
    assert sent[0] == messages[0]
    assert sent[1]["content"][:2] == messages[1]["content"]
    assert sent[1]["content"][2] == {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}


async def test_chat_openai_style_result(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        return_value=_envelope(
            {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop",
             "usage": {"prompt_tokens": 8, "completion_tokens": 2}},
        )
    )
    out = await client.ai_chat("hi", {"model": "gpt-4o"})
    assert out["used_model"] == "gpt-4o"
    assert out["response"]["result"]["message"]["content"] == "Hello!"


@pytest.mark.parametrize(
    ("file", "name", "exc"),
    [
        ("drivers.jsonl", "chat unknown model", BadRequest),
        ("drivers.jsonl", "chat default model (no provider keys)", BadRequest),
        ("drivers-more.jsonl", "call without auth", None),
        ("drivers.jsonl", "bad iface", NotFound),
    ],
)
async def test_chat_errors(client: PuterClient, router: respx.MockRouter, file, name, exc) -> None:
    from puterfs.client import AuthenticationError

    rec = exchange(file, name)
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    with pytest.raises(exc or AuthenticationError) as info:
        await client.ai_chat("hi", {"model": "nope"})
    assert info.value.code == rec["response"]["code"] and info.value.status == rec["status"]
    assert route.call_count == 1


async def test_strict_model_detects_substitution(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat non-stream fake (full body, metadata)")
    body = copy.deepcopy(rec["response"])
    body["metadata"]["providerUsed"] = "gpt-4o-mini"
    router.post(f"{API}/drivers/call").mock(return_value=httpx.Response(200, json=body))
    router.get(f"{API}/puterai/chat/models/details").mock(
        return_value=httpx.Response(200, json={"models": [
            {"id": "gpt-4o", "provider": "openai", "aliases": []},
            {"id": "gpt-4o-mini", "provider": "openai", "aliases": []},
        ]})
    )
    out = await client.ai_chat("hi", {"model": "gpt-4o"})
    assert out["used_model"] == "gpt-4o-mini"
    with pytest.raises(ModelSubstituted) as info:
        await client.ai_chat("hi", {"model": "gpt-4o"}, strict_model=True)
    assert info.value.requested == "gpt-4o" and info.value.used == "gpt-4o-mini"


async def test_strict_model_accepts_case_and_aliases(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        side_effect=[
            _envelope({"message": {"content": "x"}}, "claude-opus-4-5-20251101"),
            _envelope({"message": {"content": "x"}}, "fake"),
        ]
    )
    details = router.get(f"{API}/puterai/chat/models/details").mock(
        return_value=httpx.Response(200, json={"models": [
            {"id": "claude-opus-4-5-20251101", "puterId": "anthropic:anthropic/claude-opus-4-5",
             "aliases": ["claude-opus-4.5", "claude-opus-4-5"], "provider": "claude"},
        ]})
    )
    out = await client.ai_chat("hi", {"model": "claude-opus-4.5"}, strict_model=True)
    assert out["used_model"] == "claude-opus-4-5-20251101"
    out = await client.ai_chat("hi", {"model": "FAKE"}, strict_model=True)
    assert out["used_model"] == "fake"
    assert details.call_count == 1


async def test_stream_yields_text_and_model(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat stream fake (full NDJSON)")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    options = {"model": "fake", "stream": True}
    stream = await client.ai_chat("hi", options)
    chunks = [item async for item in stream]
    assert _body(route)["args"] == {**rec["request"]["args"]}
    assert options == {"model": "fake", "stream": True}
    text = "".join(c for c, _ in chunks)
    assert text == "".join(line["text"] for line in rec["response"] if line["type"] == "text")
    assert {m for _, m in chunks} == {"fake"}


async def test_stream_error_line_raises(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        return_value=_ndjson({"type": "text", "text": "partial "}, {"type": "error", "message": "provider died"})
    )
    got = []
    with pytest.raises(StreamError, match="provider died"):
        async for chunk, _model in await client.ai_chat("hi", {"model": "fake", "stream": True}):
            got.append(chunk)
    assert got == ["partial "]


async def test_stream_error_before_start_raises_typed(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat stream unknown model (error before stream)")
    router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    stream = await client.ai_chat("hi", {"model": "no-such-model-xyz", "stream": True})
    with pytest.raises(BadRequest, match="Model not found"):
        async for _ in stream:
            pass


async def test_stream_old_backend_error_envelope(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        return_value=httpx.Response(200, json={"success": False, "error": {"code": "forbidden", "message": "no", "status": 403}})
    )
    from puterfs.client import PermissionDenied

    with pytest.raises(PermissionDenied):
        async for _ in await client.ai_chat("hi", {"model": "fake", "stream": True}):
            pass


async def test_chat_events_expose_every_line_type(client: PuterClient, router: respx.MockRouter) -> None:
    lines = [
        {"type": "reasoning", "reasoning": "thinking..."},
        {"type": "text", "text": "Hel"},
        {"type": "text", "text": "lo"},
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}, "text": ""},
        {"type": "extra_content", "extra_content": {"k": 1}},
        {"type": "brand_new_type", "x": 1},
        {"type": "usage", "usage": {"input_tokens": 3, "output_tokens": 2}},
    ]
    route = router.post(f"{API}/drivers/call").mock(return_value=_ndjson(*lines))
    events = [e async for e in client.ai_chat_events("hi", options={"model": "fake"})]
    assert _body(route)["args"]["stream"] is True
    assert all(isinstance(e, ChatEvent) for e in events)
    assert [e.type for e in events] == [line["type"] for line in lines]
    assert events[0].text == "thinking..." and events[1].text == "Hel"
    assert events[3].data["input"] == {"city": "Paris"} and events[3].data["name"] == "get_weather"
    assert events[-1].data["usage"]["output_tokens"] == 2
    assert all(e.model == "fake" for e in events)
    # the tuple API yields only the text
    route.return_value = _ndjson(*lines)
    assert [c async for c, _ in await client.ai_chat("hi", {"model": "fake", "stream": True})] == ["Hel", "lo"]


async def test_chat_events_with_recorded_tools_stream(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat stream with tools")
    router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    events = [e async for e in client.ai_chat_events(
        "weather in Paris?", options={"model": "fake", "tools": rec["request"]["args"]["tools"]})]
    assert [e.type for e in events] == [line["type"] for line in rec["response"]]


async def test_stream_strict_model_when_lines_name_a_model(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(return_value=_ndjson({"type": "text", "text": "x", "model": "gpt-4o-mini"}))
    router.get(f"{API}/puterai/chat/models/details").mock(return_value=httpx.Response(200, json={"models": []}))
    with pytest.raises(ModelSubstituted):
        async for _ in await client.ai_chat("hi", {"model": "gpt-4o", "stream": True}, strict_model=True):
            pass


# -------------------------------------------------------------------- models


async def test_models_listing_is_public_and_cached(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("puterai.jsonl", "chat models (no auth)")
    route = router.get(f"{API}/puterai/chat/models").mock(
        return_value=httpx.Response(200, json={"models": ["claude-opus-4-5", "gpt-4o", "gpt-4o-mini"]})
    )
    data = await client.get_available_models()
    assert "authorization" not in route.calls.last.request.headers
    assert rec["request_headers"] == {}
    assert data == {"models": ["claude-opus-4-5", "gpt-4o", "gpt-4o-mini"]}
    await client.get_available_models()
    assert route.call_count == 1
    route.return_value = httpx.Response(500, json={"code": "internal_error"})
    assert await client.get_available_models(force_refresh=True) == data  # error → cached list
    assert client.get_model_list() == ["claude-opus-4-5", "gpt-4o", "gpt-4o-mini"]
    await client.update_model_mappings()
    assert client.model_to_driver["claude-opus-4-5"] == "ai-chat"
    assert set(client.model_to_driver.values()) == {"ai-chat"}


async def test_models_error_without_cache_raises(client: PuterClient, router: respx.MockRouter) -> None:
    router.get(f"{API}/puterai/chat/models").mock(return_value=httpx.Response(404, json={"code": "not_found"}))
    with pytest.raises(NotFound):
        await client.get_available_models()


async def test_is_model_available_uses_ids_and_aliases(client: PuterClient, router: respx.MockRouter) -> None:
    router.get(f"{API}/puterai/chat/models").mock(return_value=httpx.Response(200, json={"models": ["gpt-4o"]}))
    router.get(f"{API}/puterai/chat/models/details").mock(
        return_value=httpx.Response(200, json={"models": [
            {"id": "gpt-4o", "aliases": []},
            {"id": "claude-opus-4-5", "puterId": "anthropic:anthropic/claude-opus-4-5", "aliases": ["claude-opus-4.5"]},
        ]})
    )
    assert await client.is_model_available("GPT-4o")
    assert await client.is_model_available("claude-opus-4.5")
    assert await client.is_model_available("anthropic:anthropic/claude-opus-4-5")
    assert not await client.is_model_available("dall-e-3")


async def test_chat_models_includes_fake(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat models")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    models = await client.chat_models()
    assert _body(route) == rec["request"]
    assert "fake" in {m["id"] for m in models}


# ------------------------------------------------------------------------ OCR


async def test_img2txt_sources(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "ocr recognize test_mode with data: URI")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    text = await client.ai_img2txt(PNG_1PX, test_mode=True)
    assert _body(route) == rec["request"]
    assert text == rec["response"]["result"]["blocks"][0]["text"]
    await client.ai_img2txt(io.BytesIO(PNG_1PX))
    assert _body(route)["args"] == {"source": rec["request"]["args"]["source"]}
    for given, sent in [("https://example.com/a.png", "https://example.com/a.png"), ("~/x.png", "~/x.png"),
                        ("/admin/x.png", "/admin/x.png"), ("scans/x.png", "/admin/scans/x.png")]:
        await client.ai_img2txt(given)
        assert _body(route)["args"]["source"] == sent


async def test_img2txt_joins_textract_lines(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(return_value=_envelope({"blocks": [
        {"type": "text/textract:LINE", "confidence": 0.99, "text": "Hello world"},
        {"type": "text/textract:WORD", "confidence": 0.99, "text": "Hello"},
        {"type": "text/textract:WORD", "confidence": 0.99, "text": "world"},
        {"type": "text/textract:LINE", "confidence": 0.98, "text": "second line"},
    ]}))
    assert await client.ai_img2txt("https://example.com/a.png") == "Hello world\nsecond line"


async def test_img2txt_without_provider(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        return_value=recorded_response(exchange("drivers-more.jsonl", "ocr recognize data: URI without test_mode"))
    )
    with pytest.raises(ServerError, match="No OCR provider"):
        await client.ai_img2txt(PNG_1PX)


# --------------------------------------------------------------------- images


async def test_txt2img_url_result_and_request(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "image generate test_mode with model")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    url = await client.ai_txt2img("a cat", test_mode=True)
    assert _body(route) == {**rec["request"], "driver": "ai-image"}
    assert url == rec["response"]["result"]
    await client.ai_txt2img("a cat", model="pollinations-image")  # putergenai's default "model"
    assert _body(route)["args"]["model"] == "gpt-image-1"
    await client.ai_txt2img("a cat", model="openai:openai/gpt-image-1.5")
    assert _body(route)["args"]["model"] == "openai:openai/gpt-image-1.5"


async def test_txt2img_image_bytes_answer_becomes_data_url(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        return_value=httpx.Response(200, headers={"content-type": "image/png"}, content=PNG_1PX)
    )
    url = await client.ai_txt2img("a cat")
    assert url == "data:image/png;base64," + base64.b64encode(PNG_1PX).decode()
    assert await client.ai_txt2img_bytes("a cat") == PNG_1PX


async def test_txt2img_bytes_fetches_url_without_leaking_token(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(return_value=_envelope("https://cdn.example.net/img.png"))
    fetch = router.get("https://cdn.example.net/img.png").mock(
        return_value=httpx.Response(200, headers={"content-type": "image/png"}, content=PNG_1PX)
    )
    assert await client.ai_txt2img_bytes("a cat") == PNG_1PX
    assert "authorization" not in fetch.calls.last.request.headers


async def test_txt2img_errors(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        return_value=recorded_response(exchange("drivers.jsonl", "image test_mode model", "ai"))
    )
    with pytest.raises(BadRequest, match="Model not found"):
        await client.ai_txt2img("a cat", model="dall-e-3")


# --------------------------------------------------------------------- speech


async def test_txt2speech_audio_bytes_and_args(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/drivers/call").mock(
        return_value=httpx.Response(200, headers={"content-type": "audio/mpeg"}, content=b"ID3\x03mp3data")
    )
    options = {"voice": "eve", "engine": "neural", "language": "en-US", "provider": "xai"}
    audio = await client.ai_txt2speech("Hello, world!", options)
    body = _body(route)
    assert body["interface"] == "puter-tts" and body["method"] == "synthesize"
    assert body["args"] == {"text": "Hello, world!", **options}
    assert audio == b"ID3\x03mp3data"


async def test_txt2speech_test_mode_url_is_fetched(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "tts synthesize test_mode")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    router.get(rec["response"]["result"]["url"]).mock(
        return_value=httpx.Response(200, headers={"content-type": "audio/mpeg"}, content=b"ID3sample")
    )
    assert await client.ai_txt2speech("hello", {"testMode": True}) == b"ID3sample"
    assert _body(route) == rec["request"]


async def test_txt2speech_no_provider(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(return_value=recorded_response(exchange("drivers.jsonl", "tts", "ai")))
    with pytest.raises(BadRequest, match="TTS provider not configured"):
        await client.ai_txt2speech("hello")


async def test_tts_voices(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "tts list_voices")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    assert await client.tts_voices() == rec["response"]["result"]
    assert _body(route) == rec["request"]
    await client.tts_voices("xai")
    assert _body(route)["args"] == {"provider": "xai"}


# ------------------------------------------------------------- drivers_call


async def test_drivers_call_envelope_and_stream(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat list")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    envelope = await client.drivers_call("puter-chat-completion", None, "list")
    assert envelope == rec["response"] and "driver" not in _body(route)
    stream_rec = exchange("drivers-more.jsonl", "chat stream fake (full NDJSON)")
    route.return_value = recorded_response(stream_rec)
    raw = b"".join([c async for c in await client.drivers_call(
        "puter-chat-completion", "ai-chat", "complete", {"model": "fake", "messages": [{"role": "user", "content": "hi"}]},
        stream=True, test_mode=True)])
    body = _body(route)
    assert body["driver"] == "ai-chat" and body["args"]["stream"] is True and body["args"]["test_mode"] is True
    assert [json.loads(line) for line in raw.splitlines()] == stream_rec["response"]


async def test_drivers_call_unknown_method(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(return_value=recorded_response(exchange("drivers-more.jsonl", "unknown method")))
    with pytest.raises(NotFound):
        await client.drivers_call("puter-chat-completion", None, "nope")
