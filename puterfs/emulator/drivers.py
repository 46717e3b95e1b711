"""``/drivers/call`` and the ``/puterai/*`` listings, as Puter 26.07 answers them.

Interfaces emulated here (reference: /work/shared/puter-api/README.md §7):

- ``puter-chat-completion`` (driver ``ai-chat``): the server's own ``fake-chat``
  provider (``fake``, ``costly``, ``abuse``) plus emulator models answered by a
  deterministic *echo* engine: ``echo`` and stand-ins for real model ids
  (``gpt-4o-mini``, ``gpt-5-nano``, ``claude-sonnet-4.5``, ``claude-opus-4.5``).
  ``gpt-4o`` is accepted but served by ``gpt-4o-mini`` (``metadata.providerUsed``
  says so): the one documented model substitution, for clients' strict-model checks.
- ``puter-ocr`` (``ai-ocr``): reads text drawn in the emulator's bitmap font.
- ``puter-tts`` (``ai-tts``): real MP3 of a synthetic voice (``media.synthesize_mp3``).
- ``puter-image-generation`` (``ai-image``): a PNG of the prompt drawn in the
  emulator font, so OCR of a generated image returns the prompt.
- ``puter-speech2txt`` (``ai-speech2txt``): ``test_mode`` only; otherwise it
  answers like a server without a speech-to-text provider (500).

``openai_chat_completions`` and ``anthropic_messages`` serve the same chat models
in the OpenAI and Anthropic wire shapes (README §8, non-stream JSON and SSE).

``puter-kvstore`` is in ``drivers_kv.py``; ``puter-apps``, ``puter-subdomains`` and
``workers`` are in ``drivers_apps.py`` (both registered in ``_IMPLEMENTED`` below).
The other interfaces of ``/drivers/list-interfaces`` are listed as recorded but
answer 500 "no provider" (the emulator does not implement them).

Errors are raised as ``ApiError`` inside and returned by ``handle_call`` as the
26.07 error body with the real HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import math
import random
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread
from starlette.responses import JSONResponse, Response, StreamingResponse

from puterfs.emulator import drivers_apps, drivers_kv, media
from puterfs.emulator.errors import ApiError

log = logging.getLogger(__name__)


class DriverContext(Protocol):
    """What the server core hands to a driver call (one per request)."""

    username: str

    async def read_file(self, path: str) -> bytes: ...

    async def before_stream_chunk(self, index: int) -> None: ...

    async def fetch_url(self, url: str) -> bytes: ...


# --------------------------------------------------------------------------- constants

MAX_INPUT_CHARS = 1_000_000  # the emulated context length, in characters
ECHO_STREAM_CHUNKS = 8
ECHO_STREAM_PAUSE = 0.02  # seconds between echo chunks, so streaming is observable
FAKE_STREAM_DELAY = 0.5  # the fake provider answers after about half a second (recorded)
TTS_MAX_CHARS = 3000
IMAGE_MAX_PROMPT = 32000
IMAGE_DEFAULT_SIDE = 1024
IMAGE_MIN_SIDE, IMAGE_MAX_SIDE = 64, 4096

OCR_TEST_RESULT = {
    "blocks": [
        {
            "type": "text/puter:sample-output",
            "confidence": 1,
            "text": "test_mode is enabled; this is a sample OCR response.",
        }
    ]
}
TTS_TEST_RESULT = {"url": "https://puter-sample-data.puter.site/tts_example.mp3", "content_type": "audio"}
IMAGE_TEST_RESULT = "https://puter-sample-data.puter.site/image_example.png"
SPEECH2TXT_TEST_RESULT = {
    "text": "Hello! This is a sample transcription returned while test mode is enabled.",
    "language": "en",
    "duration_seconds": 2,
    "words": [
        {"start": 0, "end": 0.5, "text": "Hello"},
        {"start": 1.1, "end": 2, "text": "This is a sample transcription."},
    ],
    "model": "gpt-4o-mini-transcribe",
}

# As recorded from GET /drivers/list-interfaces (default driver first).
INTERFACES: dict[str, dict[str, Any]] = {
    "puter-kvstore": {"drivers": ["puter-kvstore"], "default": "puter-kvstore"},
    "puter-chat-completion": {"drivers": ["ai-chat"], "default": "ai-chat"},
    "puter-image-generation": {
        "drivers": [
            "ai-image",
            "openai-image-generation",
            "gemini-image-generation",
            "together-image-generation",
            "cloudflare-image-generation",
            "xai-image-generation",
            "replicate-image-generation",
            "byteplus-image-generation",
        ],
        "default": "ai-image",
    },
    "puter-tts": {
        "drivers": [
            "ai-tts",
            "aws-polly",
            "openai-tts",
            "elevenlabs-tts",
            "gemini-tts",
            "xai-tts",
            "speechify-tts",
        ],
        "default": "ai-tts",
    },
    "puter-video-generation": {
        "drivers": [
            "ai-video",
            "openai-video-generation",
            "together-video-generation",
            "gemini-video-generation",
            "byteplus-video-generation",
        ],
        "default": "ai-video",
    },
    "puter-speech2speech": {
        "drivers": ["ai-speech2speech", "elevenlabs-voice-changer"],
        "default": "ai-speech2speech",
    },
    "puter-speech2txt": {
        "drivers": ["ai-speech2txt", "openai-speech2txt", "xai-speech2txt"],
        "default": "ai-speech2txt",
    },
    "puter-ocr": {"drivers": ["ai-ocr", "aws-textract", "mistral"], "default": "ai-ocr"},
    "puter-apps": {"drivers": ["es:app"], "default": "es:app"},
    "puter-subdomains": {"drivers": ["es:subdomain"], "default": "es:subdomain"},
    "puter-notifications": {"drivers": ["es:notification"], "default": "es:notification"},
    "workers": {"drivers": ["worker-service"], "default": "worker-service"},
    "app-telemetry": {"drivers": ["app-telemetry"], "default": "app-telemetry"},
}


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _ok(result: Any, service: str, metadata: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"success": True, "result": result, "service": {"name": service}}
    if metadata is not None:
        body["metadata"] = metadata
    return JSONResponse(body)


def _ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


# --------------------------------------------------------------------------- chat models


@dataclass(frozen=True)
class ChatModel:
    id: str
    provider: str  # reported as metadata.service_used
    engine: str  # "fake" | "costly" | "abuse" | "echo"
    aliases: tuple[str, ...] = ()
    name: str | None = None
    costs: tuple[int, int] = (0, 0)  # usd-cents per million input / output tokens
    context: int | None = None
    max_tokens: int = 8192
    public: bool = True
    served_by: str | None = None  # another model id answers instead (substitution)

    def listing(self) -> dict[str, Any]:
        """The entry of ``method:"models"`` (fake-chat entries exactly as recorded)."""
        entry: dict[str, Any] = {
            "id": self.id,
            "aliases": list(self.aliases),
            "costs_currency": "usd-cents",
            "costs": {"input-tokens": self.costs[0], "output-tokens": self.costs[1]},
            "max_tokens": self.max_tokens,
            "provider": self.provider,
        }
        if self.name is not None:
            entry["name"] = self.name
        if self.context is not None:
            entry["context"] = self.context
        return entry

    def details(self) -> dict[str, Any]:
        """The entry of ``/puterai/chat/models/details``."""
        return {
            "id": self.id,
            "provider": self.provider,
            "aliases": list(self.aliases),
            "name": self.name or self.id,
            "costs_currency": "usd-cents",
            "costs": {"input-tokens": self.costs[0], "output-tokens": self.costs[1]},
            "context": self.context,
            "max_tokens": self.max_tokens,
        }


CHAT_MODELS: tuple[ChatModel, ...] = (
    ChatModel("abuse", "fake-chat", "abuse", public=False),
    ChatModel("costly", "fake-chat", "costly", costs=(1000, 2000), public=False),
    ChatModel("fake", "fake-chat", "fake", public=False),
    ChatModel(
        "echo",
        "emulator",
        "echo",
        name="Echo (Puter emulator)",
        context=MAX_INPUT_CHARS // 4,
        max_tokens=MAX_INPUT_CHARS // 4,
    ),
    ChatModel(
        "gpt-4o-mini",
        "openai-completion",
        "echo",
        ("openai/gpt-4o-mini", "openai:openai/gpt-4o-mini"),
        "GPT-4o mini (emulated)",
        (15, 60),
        128000,
        16384,
    ),
    ChatModel(
        "gpt-4o",
        "openai-completion",
        "echo",
        ("openai/gpt-4o", "openai:openai/gpt-4o"),
        "GPT-4o (emulated, served by gpt-4o-mini)",
        (250, 1000),
        128000,
        16384,
        served_by="gpt-4o-mini",
    ),
    ChatModel(
        "gpt-5-nano",
        "openai-completion",
        "echo",
        ("openai/gpt-5-nano", "openai:openai/gpt-5-nano"),
        "GPT-5 nano (emulated)",
        (5, 40),
        400000,
        128000,
    ),
    ChatModel(
        "claude-sonnet-4.5",
        "claude",
        "echo",
        ("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5"),
        "Claude Sonnet 4.5 (emulated)",
        (300, 1500),
        200000,
        64000,
    ),
    ChatModel(
        "claude-opus-4.5",
        "claude",
        "echo",
        ("claude-opus-4-5", "anthropic/claude-opus-4.5"),
        "Claude Opus 4.5 (emulated)",
        (500, 2500),
        200000,
        64000,
    ),
)
_CHAT_BY_ID = {m.id: m for m in CHAT_MODELS}
_CHAT_LOOKUP: dict[str, ChatModel] = {}
for _m in CHAT_MODELS:
    for _key in (_m.id, *_m.aliases):
        _CHAT_LOOKUP[_key.lower()] = _m
# A provider hint without a model selects that provider's default model.
_PROVIDER_DEFAULT = {
    "fake-chat": "fake",
    "emulator": "echo",
    "openai-completion": "gpt-4o-mini",
    "claude": "claude-sonnet-4.5",
}


def public_chat_models() -> list[str]:
    """``GET /puterai/chat/models``: sorted public ids (the fake-chat models are internal)."""
    return sorted(m.id for m in CHAT_MODELS if m.public)


def chat_model_details() -> list[dict[str, Any]]:
    """``GET /puterai/chat/models/details``."""
    return [m.details() for m in sorted(CHAT_MODELS, key=lambda m: m.id) if m.public]


def resolve_chat_model(model: Any, provider: Any = None) -> ChatModel:
    """The model a request names (case-insensitive, aliases allowed), or 400 as the server says it."""
    if model is None or model == "":
        if isinstance(provider, str) and provider in _PROVIDER_DEFAULT:
            return _CHAT_BY_ID[_PROVIDER_DEFAULT[provider]]
        raise _bad("Model not found: undefined")
    if not isinstance(model, str) or model.lower() not in _CHAT_LOOKUP:
        raise _bad(f"Model not found: {model}")
    return _CHAT_LOOKUP[model.lower()]


# --------------------------------------------------------------------------- chat engine

_LOREM_WORDS = (
    "ad adipisicing aliqua aliquip amet anim aute cillum commodo consectetur consequat culpa cupidatat "
    "deserunt do dolor dolore duis ea eiusmod elit enim esse est et eu ex excepteur exercitation fugiat "
    "id in incididunt ipsum irure labore laboris laborum Lorem magna minim mollit nisi non nostrud nulla "
    "occaecat officia pariatur proident qui quis reprehenderit sint sit sunt tempor ullamco ut velit veniam "
    "voluptate"
).split()

ABUSE_TEXT = (
    "<h1>Emulated abuse model</h1>\n<p>This <b>fixed HTML</b> answer lets clients test how they "
    "<i>escape or render</i> markup that a model returns.</p>\n<script>/* not for execution */</script>"
)


def lorem_paragraphs(rng: random.Random, count: int) -> str:
    """Lorem ipsum like the server's fake provider: 4-8 sentences of 12-20 words per paragraph."""
    paragraphs = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(4, 8)):
            words = [rng.choice(_LOREM_WORDS) for _ in range(rng.randint(12, 20))]
            sentence = " ".join(words)
            sentences.append(sentence[0].upper() + sentence[1:] + ".")
        paragraphs.append(" ".join(sentences))
    return "\n".join(paragraphs)


@dataclass
class ChatReply:
    text: str
    tool_use: dict[str, Any] | None
    usage: dict[str, Any]
    stop_reason: str
    finish_reason: str
    message_id: str


async def _message_text(content: Any, ctx: DriverContext) -> str:
    """The text of one message's content.  ``file`` parts are read (the server inlines
    them), so a missing ``puter_path`` fails like the server's FS error."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise _bad("Message `content` must be a string or an array of parts")
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind == "text" or (kind is None and isinstance(part.get("text"), str)):
                text = part.get("text")
                if not isinstance(text, str):
                    raise _bad("A `text` part needs a string `text`")
                texts.append(text)
            elif kind == "file" and part.get("puter_path") is not None:
                path = part["puter_path"]
                if not isinstance(path, str):
                    raise _bad("`puter_path` must be a string")
                await ctx.read_file(_puter_path(path, ctx))
            elif kind == "tool_result" and isinstance(part.get("content"), str):
                texts.append(part["content"])
            # image_url and other parts carry no text for the echo engine
        else:
            raise _bad("Invalid message part")
    return "\n".join(texts)


def _tool_names(tools: Any) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise _bad("`tools` must be an array")
    names = set()
    for tool in tools:
        if isinstance(tool, dict):
            fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            if isinstance(fn.get("name"), str):
                names.add(fn["name"])
    return names


def _parse_tool_call(text: str, tools: set[str]) -> dict[str, Any] | None:
    """``call:NAME {json}`` in the last user message asks the echo engine for a tool call."""
    if not tools or not text.startswith("call:"):
        return None
    name, _, rest = text[5:].strip().partition(" ")
    if name not in tools:
        return None
    rest = rest.strip()
    try:
        arguments = json.loads(rest) if rest else {}
    except json.JSONDecodeError:
        return None
    if not isinstance(arguments, dict):
        return None
    return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": arguments}


def _check_number_args(args: dict[str, Any]) -> int | None:
    temperature = args.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        raise _bad("`temperature` must be a number between 0 and 2")
    max_tokens = args.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _bad("`max_tokens` must be a positive integer")
    return max_tokens


async def _chat_reply(model: ChatModel, args: dict[str, Any], ctx: DriverContext) -> ChatReply:
    """Validate a ``complete`` request and compute the whole answer (streamed or not)."""
    max_tokens = _check_number_args(args)
    messages = args.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise _bad("`messages` must be an array")
    total_chars = 0
    last_user: str | None = None
    for msg in messages:
        if isinstance(msg, str):  # a bare string is a user message
            msg = {"role": "user", "content": msg}
        if not isinstance(msg, dict):
            raise _bad("Each message must be an object")
        text = await _message_text(msg.get("content"), ctx)
        total_chars += len(text)
        if total_chars > MAX_INPUT_CHARS:
            raise _bad(
                f"Input is too long: the messages exceed the model's context length of "
                f"{MAX_INPUT_CHARS} characters"
            )
        if msg.get("role", "user") == "user":
            last_user = text
    tools = _tool_names(args.get("tools"))
    msg_id = (
        "00000000-0000-0000-0000-000000000000" if model.provider == "fake-chat" else f"msg_{uuid.uuid4().hex}"
    )

    if model.engine in ("fake", "costly", "abuse"):
        rng = random.Random()
        if model.engine == "abuse":
            text = ABUSE_TEXT
        else:
            text = lorem_paragraphs(rng, rng.randint(1, 3))
        if model.engine == "costly":
            usage = {"input_tokens": math.ceil(total_chars / 4), "output_tokens": rng.randint(50, 200)}
        else:
            usage = {"input_tokens": 0, "output_tokens": 1}
        usage["usd_cents"] = None  # metering is off, as on the recorded server
        return ChatReply(text, None, usage, "end_turn", "stop", msg_id)

    reply = last_user or ""
    tool_use = _parse_tool_call(reply, tools)
    stop_reason, finish_reason = "end_turn", "stop"
    if tool_use is not None:
        reply = ""
        out_chars = len(tool_use["name"]) + len(json.dumps(tool_use["input"]))
        stop_reason, finish_reason = "tool_use", "tool_calls"
    else:
        if max_tokens is not None and len(reply) > max_tokens * 4:
            reply = reply[: max_tokens * 4]
            stop_reason, finish_reason = "max_tokens", "length"
        out_chars = len(reply)
    usage = {
        "input_tokens": math.ceil(total_chars / 4),
        "output_tokens": math.ceil(out_chars / 4),
        "usd_cents": None,
    }
    return ChatReply(reply, tool_use, usage, stop_reason, finish_reason, msg_id)


def split_stream_chunks(text: str, chunks: int = ECHO_STREAM_CHUNKS) -> list[str]:
    """Split ``text`` at word boundaries into about ``chunks`` pieces that join back exactly."""
    words = re.findall(r"\s*\S+\s*|\s+", text)
    if not words:
        return []
    n = min(chunks, len(words))
    size, extra = divmod(len(words), n)
    out, i = [], 0
    for k in range(n):
        step = size + (1 if k < extra else 0)
        out.append("".join(words[i : i + step]))
        i += step
    return out


async def _reply_pieces(
    model: ChatModel, reply: ChatReply, ctx: DriverContext
) -> AsyncIterator[tuple[str, Any]]:
    """The streamed pieces of a reply, paced like the provider: ("text", str) and ("tool_use", dict).

    ``ctx.before_stream_chunk`` runs before each piece and may raise ``StreamAbort``."""
    if model.engine != "echo":
        # The fake provider sends its whole answer in one line after ~0.5 s (recorded).
        await anyio.sleep(FAKE_STREAM_DELAY)
        await ctx.before_stream_chunk(0)
        yield "text", reply.text
        return
    index = 0
    for chunk in split_stream_chunks(reply.text):
        if index:
            await anyio.sleep(ECHO_STREAM_PAUSE)
        await ctx.before_stream_chunk(index)
        index += 1
        yield "text", chunk
    if reply.tool_use is not None:
        await ctx.before_stream_chunk(index)
        yield "tool_use", reply.tool_use


async def _chat_stream(model: ChatModel, reply: ChatReply, ctx: DriverContext) -> AsyncIterator[bytes]:
    from puterfs.emulator.faults import StreamAbort  # the core's module; imported late on purpose

    try:
        async for kind, piece in _reply_pieces(model, reply, ctx):
            if kind == "text":
                yield _ndjson({"type": "text", "text": piece})
            else:
                yield _ndjson({**piece, "text": ""})
        # The fake provider's usage line is recorded as {"usd_cents": null}.
        usage = reply.usage if model.engine == "echo" else {"usd_cents": None}
        yield _ndjson({"type": "usage", "usage": usage})
    except StreamAbort as exc:
        log.info("chat stream aborted: %s", exc)
        yield _ndjson({"type": "error", "message": str(exc)})


def _claude_message(reply: Any, served: Any, usage: dict[str, Any]) -> dict[str, Any]:
    """A Claude-style assistant message (the fake provider's shape, and Anthropic's)."""
    content = [reply.tool_use] if reply.tool_use is not None else [{"type": "text", "text": reply.text}]
    return {
        "id": reply.message_id,
        "type": "message",
        "role": "assistant",
        "model": served.id,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


async def _chat(method: str, args: dict[str, Any], ctx: DriverContext, service: str) -> Response:
    if method == "list":
        return _ok(sorted(m.id for m in CHAT_MODELS), service)
    if method == "models":
        return _ok([m.listing() for m in sorted(CHAT_MODELS, key=lambda m: m.id)], service)
    # complete
    requested = resolve_chat_model(args.get("model"), args.get("provider"))
    served = _CHAT_BY_ID[requested.served_by] if requested.served_by else requested
    reply = await _chat_reply(served, args, ctx)
    if requested is not served:
        log.info("chat: model %s served by %s", requested.id, served.id)
    if args.get("stream") is True:
        # Everything that can fail has failed by now: errors before the stream are plain JSON.
        return StreamingResponse(_chat_stream(served, reply, ctx), media_type="application/x-ndjson")
    message = _claude_message(reply, served, reply.usage)
    result = {
        "message": message,
        "usage": dict(reply.usage),
        "finish_reason": reply.finish_reason,
        "via_ai_chat_service": True,
    }
    return _ok(result, service, {"service_used": served.provider, "providerUsed": served.id})


# --------------------------------------------------------------------------- OpenAI/Anthropic-compatible chat
# (README §8; the route checks the token kind before calling these.)


def _sse(obj: Any) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _compat_args(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    return {k: body.get(k) for k in ("messages", "temperature", "max_tokens", "tools")}


async def openai_chat_completions(body: dict[str, Any], ctx: DriverContext) -> Response:
    """``POST /puterai/openai/v1/chat/completions``: the same models, OpenAI's shapes."""
    from puterfs.emulator.faults import StreamAbort

    args = _compat_args(body)
    if args["max_tokens"] is None and body.get("max_completion_tokens") is not None:
        args["max_tokens"] = body["max_completion_tokens"]
    requested = resolve_chat_model(body.get("model"))
    served = _CHAT_BY_ID[requested.served_by] if requested.served_by else requested
    reply = await _chat_reply(served, args, ctx)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    tool_calls = None
    if reply.tool_use is not None:
        tool_calls = [
            {
                "id": reply.tool_use["id"],
                "type": "function",
                "function": {
                    "name": reply.tool_use["name"],
                    "arguments": json.dumps(reply.tool_use["input"]),
                },
            }
        ]
    usage = {
        "prompt_tokens": reply.usage["input_tokens"],
        "completion_tokens": reply.usage["output_tokens"],
        "total_tokens": reply.usage["input_tokens"] + reply.usage["output_tokens"],
    }
    if body.get("stream") is not True:
        message: dict[str, Any] = {"role": "assistant", "content": None if tool_calls else reply.text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason}
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": served.id,
                "choices": [choice],
                "usage": usage,
            }
        )

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": served.id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    async def events() -> AsyncIterator[bytes]:
        try:
            async for kind, piece in _reply_pieces(served, reply, ctx):
                if kind == "text":
                    yield chunk({"content": piece})
                else:
                    yield chunk({"tool_calls": [{"index": 0, **tool_calls[0]}] if tool_calls else []})
            yield chunk({}, reply.finish_reason)
            yield _sse("[DONE]")
        except StreamAbort as exc:
            yield _sse({"error": {"message": str(exc), "type": "server_error"}})

    return StreamingResponse(events(), media_type="text/event-stream")


async def anthropic_messages(body: dict[str, Any], ctx: DriverContext) -> Response:
    """``POST /puterai/anthropic/v1/messages``: the same models, Anthropic's shapes."""
    from puterfs.emulator.faults import StreamAbort

    args = _compat_args(body)
    system = body.get("system")
    if system is not None:
        # Anthropic passes the system prompt beside the messages; it counts as input.
        messages = args["messages"] if isinstance(args["messages"], list) else []
        args["messages"] = [{"role": "system", "content": system}, *messages]
    requested = resolve_chat_model(body.get("model"))
    served = _CHAT_BY_ID[requested.served_by] if requested.served_by else requested
    reply = await _chat_reply(served, args, ctx)
    usage = {"input_tokens": reply.usage["input_tokens"], "output_tokens": reply.usage["output_tokens"]}
    message = _claude_message(reply, served, usage)
    if body.get("stream") is not True:
        return JSONResponse(message)

    def event(name: str, data: dict[str, Any]) -> bytes:
        return (
            f"event: {name}\ndata: {json.dumps({'type': name, **data}, separators=(',', ':'))}\n\n".encode()
        )

    async def events() -> AsyncIterator[bytes]:
        yield event(
            "message_start",
            {
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {**usage, "output_tokens": 0},
                }
            },
        )
        block = -1
        try:
            async for kind, piece in _reply_pieces(served, reply, ctx):
                if kind == "text":
                    if block < 0:
                        block = 0
                        yield event(
                            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
                        )
                    yield event(
                        "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}}
                    )
                else:
                    if block >= 0:
                        yield event("content_block_stop", {"index": block})
                    block += 1
                    yield event(
                        "content_block_start", {"index": block, "content_block": {**piece, "input": {}}}
                    )
                    yield event(
                        "content_block_delta",
                        {
                            "index": block,
                            "delta": {"type": "input_json_delta", "partial_json": json.dumps(piece["input"])},
                        },
                    )
            if block >= 0:
                yield event("content_block_stop", {"index": block})
            yield event(
                "message_delta",
                {
                    "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
            yield event("message_stop", {})
        except StreamAbort as exc:
            yield event("error", {"error": {"type": "api_error", "message": str(exc)}})

    return StreamingResponse(events(), media_type="text/event-stream")


# --------------------------------------------------------------------------- sources (OCR input)


def _puter_path(path: str, ctx: DriverContext) -> str:
    """``~`` and relative paths are relative to the user's home, as on the server."""
    if path == "~" or path.startswith("~/"):
        return f"/{ctx.username}{path[1:]}"
    if not path.startswith("/"):
        return f"/{ctx.username}/{path}"
    return path


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a ``data:`` URI (base64 or percent-encoded)."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise _bad("Invalid data: URI (no comma)")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"Invalid base64 in data: URI: {exc}") from exc
    return urllib.parse.unquote_to_bytes(payload)


async def load_source(source: Any, ctx: DriverContext, name: str = "source") -> bytes:
    """Bytes of a ``data:`` URI, an http(s) URL or a Puter path."""
    if not isinstance(source, str) or not source:
        raise _bad(f"Missing `{name}`" if not source else f"`{name}` must be a string")
    if source.startswith("data:"):
        return decode_data_uri(source)
    if source.startswith(("http://", "https://")):
        try:
            return await ctx.fetch_url(source)
        except ApiError:
            raise
        except Exception as exc:  # any network failure: tell the caller which URL failed
            log.info("fetching %s failed: %s", source, exc)
            raise _bad(f"Could not fetch {source}: {exc}") from exc
    return await ctx.read_file(_puter_path(source, ctx))


# --------------------------------------------------------------------------- OCR


async def _ocr(method: str, args: dict[str, Any], ctx: DriverContext, service: str) -> Response:
    if args.get("test_mode") is True:
        return _ok(copy.deepcopy(OCR_TEST_RESULT), service)
    source = args.get("source") if args.get("source") is not None else args.get("file")
    data = await load_source(source, ctx)
    try:
        lines = await anyio.to_thread.run_sync(media.ocr_image, data)
    except ValueError as exc:
        raise _bad(f"Could not read the image: {exc}") from exc
    blocks = [{"type": "text/textract:LINE", "confidence": 0.99, "text": line} for line in lines]
    return _ok({"blocks": blocks}, service)


# --------------------------------------------------------------------------- TTS

TTS_PROVIDERS = ("aws-polly", "elevenlabs", "gemini", "openai", "speechify", "xai")
# Listed as the recorded server with an xAI TTS key lists them.  Synthesis accepts
# any provider above and any voice or engine name (unknown voices get a pitch
# derived from their name), so Polly- or OpenAI-style requests work too.
TTS_VOICES: tuple[dict[str, str], ...] = (
    {"id": "eve", "name": "Eve", "description": "Energetic, upbeat", "provider": "xai"},
    {"id": "ara", "name": "Ara", "description": "Warm, friendly", "provider": "xai"},
    {"id": "rex", "name": "Rex", "description": "Confident, clear", "provider": "xai"},
    {"id": "sal", "name": "Sal", "description": "Smooth, balanced", "provider": "xai"},
    {"id": "leo", "name": "Leo", "description": "Authoritative, strong", "provider": "xai"},
)
TTS_ENGINES: tuple[dict[str, Any], ...] = (
    {"id": "xai-tts", "name": "xAI TTS", "provider": "xai", "pricing_per_million_chars": 1500},
)


def _opt_str(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"`{key}` must be a string")
    return value


async def _tts(method: str, args: dict[str, Any], ctx: DriverContext, service: str) -> Response:
    provider = _opt_str(args, "provider")
    if provider is not None and provider not in TTS_PROVIDERS:
        raise _bad(f"TTS provider not configured: {provider}. Available: {', '.join(TTS_PROVIDERS)}")
    if method == "list_voices":
        return _ok([dict(v) for v in TTS_VOICES if provider in (None, v["provider"])], service)
    if method == "list_engines":
        return _ok([dict(e) for e in TTS_ENGINES if provider in (None, e["provider"])], service)
    # synthesize
    if args.get("test_mode") is True:
        return _ok(dict(TTS_TEST_RESULT), service)
    text = args.get("text")
    if not isinstance(text, str) or not text:
        raise _bad("Missing `text`")
    if len(text) > TTS_MAX_CHARS:
        raise _bad(f"`text` is too long: {len(text)} characters (at most {TTS_MAX_CHARS})")
    voice, engine, language = _opt_str(args, "voice"), _opt_str(args, "engine"), _opt_str(args, "language")
    audio = await anyio.to_thread.run_sync(lambda: media.synthesize_mp3(text, voice, engine, language))
    return Response(audio, media_type="audio/mpeg")


# --------------------------------------------------------------------------- image generation

IMAGE_MODELS = (
    "emulator-image",
    "openai:openai/gpt-image-1",
    "openai:openai/gpt-image-1-mini",
    "openai:openai/gpt-image-1.5",
    "openai:openai/gpt-image-2",
)
_IMAGE_LOOKUP: dict[str, str] = {}
for _id in IMAGE_MODELS:
    _IMAGE_LOOKUP[_id] = _id
    _IMAGE_LOOKUP[_id.split(":", 1)[-1]] = _id  # openai/gpt-image-1
    _IMAGE_LOOKUP[_id.rsplit("/", 1)[-1]] = _id  # gpt-image-1


def image_models() -> list[str]:
    """``GET /puterai/image/models``."""
    return sorted(IMAGE_MODELS)


def _side(args: dict[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not IMAGE_MIN_SIDE <= value <= IMAGE_MAX_SIDE:
        raise _bad(f"`{key}` must be an integer between {IMAGE_MIN_SIDE} and {IMAGE_MAX_SIDE}")
    return value


def image_size(args: dict[str, Any]) -> tuple[int, int]:
    """``width``/``height`` if given, else ``ratio`` {w,h} on a 1024 long side, else 1024x1024."""
    width, height = _side(args, "width"), _side(args, "height")
    ratio = args.get("ratio")
    if (width is None or height is None) and ratio is not None:
        if not isinstance(ratio, dict):
            raise _bad("`ratio` must be an object {w, h}")
        rw, rh = ratio.get("w"), ratio.get("h")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in (rw, rh)):
            raise _bad("`ratio` needs positive numbers `w` and `h`")
        if not 1 / 8 <= rw / rh <= 8:
            raise _bad("`ratio` must be between 1:8 and 8:1")
        long_side = IMAGE_DEFAULT_SIDE
        if rw >= rh:
            w, h = long_side, max(IMAGE_MIN_SIDE, round(long_side * rh / rw))
        else:
            w, h = max(IMAGE_MIN_SIDE, round(long_side * rw / rh)), long_side
        return width or w, height or h
    return width or IMAGE_DEFAULT_SIDE, height or IMAGE_DEFAULT_SIDE


async def _image(method: str, args: dict[str, Any], ctx: DriverContext, service: str) -> Response:
    model = args.get("model")
    if model is not None and model != "":
        if not isinstance(model, str) or model.lower() not in _IMAGE_LOOKUP:
            raise _bad(f"Model not found: {model}")
    if args.get("test_mode") is True:
        return _ok(IMAGE_TEST_RESULT, service)
    if model is None or model == "":
        raise _bad("Missing `model`")
    prompt = args.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("Missing `prompt`")
    if len(prompt) > IMAGE_MAX_PROMPT:
        raise _bad(f"`prompt` is too long: {len(prompt)} characters (at most {IMAGE_MAX_PROMPT})")
    width, height = image_size(args)
    png = await anyio.to_thread.run_sync(lambda: media.render_text_png(prompt, width, height))
    return _ok("data:image/png;base64," + base64.b64encode(png).decode("ascii"), service)


# --------------------------------------------------------------------------- speech to text


async def _speech2txt(method: str, args: dict[str, Any], ctx: DriverContext, service: str) -> Response:
    if args.get("test_mode") is True:
        return _ok(copy.deepcopy(SPEECH2TXT_TEST_RESULT), service)
    # Like a server without a speech-to-text provider: the emulator does not transcribe.
    raise ApiError(500, "internal_error", "No speech-to-text provider configured")


# --------------------------------------------------------------------------- dispatch

Handler = Callable[[str, dict[str, Any], DriverContext, str], Coroutine[Any, Any, Response]]
_IMPLEMENTED: dict[str, tuple[Handler, frozenset[str]]] = {
    "puter-chat-completion": (_chat, frozenset({"complete", "list", "models"})),
    "puter-ocr": (_ocr, frozenset({"recognize"})),
    "puter-tts": (_tts, frozenset({"synthesize", "list_voices", "list_engines"})),
    "puter-image-generation": (_image, frozenset({"generate"})),
    "puter-speech2txt": (_speech2txt, frozenset({"transcribe", "translate"})),
}
# KV, apps, hosting and workers live in their own modules.
_IMPLEMENTED.update(drivers_kv.HANDLERS)
_IMPLEMENTED.update(drivers_apps.HANDLERS)


async def list_interfaces(ctx: DriverContext) -> dict[str, Any]:
    """``GET /drivers/list-interfaces``, as recorded."""
    return copy.deepcopy(INTERFACES)


async def _dispatch(body: Any, ctx: DriverContext) -> Response:
    if not isinstance(body, dict):
        raise _bad("Missing or invalid `interface`")
    iface, method, driver = body.get("interface"), body.get("method"), body.get("driver")
    if not isinstance(iface, str) or not iface:
        raise _bad("Missing or invalid `interface`")
    if not isinstance(method, str) or not method:
        raise _bad("Missing or invalid `method`")
    info = INTERFACES.get(iface)
    if info is None:
        raise ApiError(404, "not_found", f"Driver not found: {iface}:(no default)")
    if driver is not None and driver != "":
        if not isinstance(driver, str) or driver not in info["drivers"]:
            raise ApiError(404, "not_found", f"Driver not found: {iface}:{driver}")
        service = driver
    else:
        service = info["default"]
    args = body.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _bad("`args` must be an object")
    impl = _IMPLEMENTED.get(iface)
    if impl is None:
        raise ApiError(500, "internal_error", f"No provider for {iface} in the Puter emulator")
    handler, methods = impl
    if method not in methods:
        raise ApiError(404, "not_found", f"Method '{method}' not found on driver '{iface}'")
    return await handler(method, args, ctx, service)


async def handle_call(body: dict[str, Any], ctx: DriverContext) -> Response:
    """``POST /drivers/call`` (after authentication): the JSON envelope, a stream, raw
    audio, or the 26.07 error body with its real status."""
    try:
        return await _dispatch(body, ctx)
    except ApiError as exc:
        return exc.response()
