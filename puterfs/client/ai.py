"""``client.ai``: Puter's AI drivers, as puter.js's ``puter.ai`` reaches them on a 26.07
server: chat (``puter-chat-completion`` / ``ai-chat``, streamed as NDJSON), OCR
(``puter-ocr``), image generation (``puter-image-generation`` / ``ai-image``), speech
(``puter-tts``, ``puter-speech2txt``, ``puter-speech2speech``), video
(``puter-video-generation``) and the model lists (``/puterai/chat/models``).

putergenai's flat ``ai_*`` methods on :class:`~puterfs.client.PuterClient` call these;
``chat_events``, ``txt2img_bytes``, ``voices`` and ``chat_models`` are puterfs's own.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

import anyio
import httpx

from puterfs.client._chat import (
    URL_PREFIXES,
    ChatEvent,
    build_messages,
    event_from_line,
    image_part,
    result_text,
)
from puterfs.client._errors import ModelSubstituted, PuterError, ServerError, StreamError
from puterfs.client._models import CHAT_DRIVER
from puterfs.client._retry import Idempotency
from puterfs.config import DEFAULT_CHAT_MODEL

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

log = logging.getLogger(__name__)

IDEMPOTENT = Idempotency.IDEMPOTENT
SAFE_REJECTIONS = Idempotency.SAFE_REJECTIONS
MODELS_TTL = 3600.0

# The recorded working image model (drivers-more.jsonl "image generate test_mode with
# model"); ids are case-insensitive and puterIds such as "openai:openai/gpt-image-1"
# are accepted too.
DEFAULT_IMAGE_MODEL = "gpt-image-1"
# putergenai passed driver names as the image "model"; none of them exists as a model.
_LEGACY_IMAGE_DRIVERS = frozenset(
    {"pollinations-image", "openai-image-generation", "gemini-image-generation", "together-image-generation"}
)


def _decode_data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ServerError("the server returned a broken base64 data: URI") from exc
    return unquote_to_bytes(payload)


def _sniff_image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:2] == b"BM":
        return "image/bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data.startswith(b"%PDF"):
        return "application/pdf"
    return "application/octet-stream"


def _ocr_text(result: Any) -> str:
    """Text of a ``puter-ocr recognize`` result (Textract blocks or Mistral pages)."""
    if isinstance(result, str):
        return result
    if not isinstance(result, dict):
        return ""
    blocks = result.get("blocks")
    if isinstance(blocks, list):
        blocks = [b for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]
        # Textract returns every line twice: as a LINE and again word by word.
        lines = [b["text"] for b in blocks if str(b.get("type", "")).endswith(":LINE")]
        if lines:
            return "\n".join(lines)
        texts = [
            b["text"]
            for b in blocks
            if str(b.get("type", "")).startswith("text/") and not str(b.get("type", "")).endswith(":WORD")
        ]
        return "\n".join(texts)
    pages = result.get("pages")
    if isinstance(pages, list):
        return "\n".join(p.get("markdown", "") for p in pages if isinstance(p, dict))
    text = result.get("text")
    return text if isinstance(text, str) else ""


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class AI:
    """The AI drivers of the signed-in user's Puter."""

    def __init__(self, client: PuterClient) -> None:
        self._c = client
        self._models_cache: dict[str, Any] | None = None
        self._models_time = 0.0
        self._details_cache: list[dict[str, Any]] | None = None
        self._details_time = 0.0

    # ------------------------------------------------------------------ models

    async def available_models(self, force_refresh: bool = False) -> dict[str, Any]:
        """``{"models": [...]}`` from the public model list, cached for an hour.

        On an error the last good list is returned when there is one.
        """
        now = time.monotonic()
        if not force_refresh and self._models_cache is not None and now - self._models_time < MODELS_TTL:
            return self._models_cache
        try:
            data = await self._c._get_json("/puterai/chat/models", auth=False)
        except PuterError:
            if self._models_cache is not None:
                log.warning("model list unavailable; using the cached one")
                return self._models_cache
            raise
        if isinstance(data, list):
            data = {"models": data}
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            if self._models_cache is not None:
                return self._models_cache
            raise ServerError("unexpected model list shape")
        self._models_cache = {"models": list(data["models"])}
        self._models_time = now
        return self._models_cache

    async def _model_details(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._details_cache is not None and now - self._details_time < MODELS_TTL:
            return self._details_cache
        try:
            data = await self._c._get_json("/puterai/chat/models/details", auth=False)
        except PuterError:
            if self._details_cache is not None:
                return self._details_cache
            raise
        models = data.get("models") if isinstance(data, dict) else data
        self._details_cache = [m for m in models or [] if isinstance(m, dict)]
        self._details_time = now
        return self._details_cache

    async def update_model_mappings(self) -> None:
        """Add every listed model to :attr:`model_to_driver`; 26.07's only chat driver is ``ai-chat``."""
        data = await self.available_models()
        for model_id in self.model_list(data):
            self._c.model_to_driver[model_id] = CHAT_DRIVER

    @staticmethod
    def _model_id(item: Any) -> str:
        if isinstance(item, dict):
            for key in ("id", "name", "model"):
                if item.get(key) is not None:
                    return str(item[key])
        return str(item)

    def model_list(self, models_data: dict[str, Any] | None = None) -> list[str]:
        if models_data is None:
            models_data = self._models_cache or {"models": []}
        return [self._model_id(m) for m in models_data.get("models", [])]

    async def _canonical_models(self) -> dict[str, str]:
        """Lower-cased id, puterId and alias → lower-cased id."""
        table: dict[str, str] = {}
        for item in await self._model_details():
            ident = str(item.get("id") or item.get("puterId") or "").lower()
            if not ident:
                continue
            table[ident] = ident
            if isinstance(item.get("puterId"), str):
                table[item["puterId"].lower()] = ident
            for alias in item.get("aliases") or []:
                if isinstance(alias, str):
                    table[alias.lower()] = ident
        return table

    async def is_model_available(self, model_name: str) -> bool:
        """Whether the server lists ``model_name`` as an id, puterId or alias (case-insensitive)."""
        wanted = model_name.lower()
        data = await self.available_models()
        if wanted in (m.lower() for m in self.model_list(data)):
            return True
        for item in data["models"]:
            if isinstance(item, dict) and wanted in (str(a).lower() for a in item.get("aliases") or []):
                return True
        try:
            return wanted in await self._canonical_models()
        except PuterError as exc:
            log.warning("model details unavailable: %s", exc)
            return False

    async def chat_models(self) -> list[dict[str, Any]]:
        """Model objects of the chat driver, including the test models (``fake``, ...)."""
        result = await self._c._driver_result("puter-chat-completion", "models", {}, idem=IDEMPOTENT)
        return list(result) if isinstance(result, list) else []


    # ---------------------------------------------------------------------- chat

    async def _chat_args(
        self,
        prompt: str | list[dict[str, Any]] | None,
        options: dict[str, Any] | None,
        test_mode: bool,
        image_url: str | list[str] | None,
        messages: list[dict[str, Any]] | None,
    ) -> tuple[dict[str, Any], str | None]:
        opts = dict(options or {})  # never touch the caller's dict
        refs = [image_url] if isinstance(image_url, str) else list(image_url or [])
        parts = []
        for ref in refs:
            ref = str(ref)
            if not ref.startswith(URL_PREFIXES) and not ref.startswith(("/", "~")):
                ref = await self._c._abs(ref)
            parts.append(image_part(ref))
        args: dict[str, Any] = {"messages": build_messages(prompt, messages, parts)}
        model = opts.pop("model", None)
        opts.pop("driver", None)  # 26.07 has one chat driver; provider hints go in args.provider
        stream = bool(opts.pop("stream", False))
        opts.pop("testMode", None)
        if test_mode and not model:
            # 26.07 ignores test_mode for chat (§7.2); its offline model is "fake".
            model = "fake"
        if not model:
            model = DEFAULT_CHAT_MODEL  # the server has no default ("Model not found: undefined")
        if model:
            args["model"] = model
        if stream:
            args["stream"] = True
        if test_mode:
            args["test_mode"] = True
        for key, value in opts.items():
            if value is not None:
                args[key] = value
        return args, model

    async def _check_model(self, requested: str | None, used: str | None, strict: bool) -> str | None:
        if not requested or not used:
            return used or requested
        if requested.lower() != used.lower():
            try:
                table = await self._canonical_models()
            except PuterError:
                table = {}
            want = table.get(requested.lower(), requested.lower())
            got = table.get(used.lower(), used.lower())
            if want != got:
                message = f"requested model {requested!r}, but the server used {used!r}"
                if strict:
                    raise ModelSubstituted(message, requested=requested, used=used, code="model_substituted")
                log.warning("%s", message)
        return used

    async def chat(
        self,
        prompt: str | list[dict[str, Any]] | None = None,
        options: dict[str, Any] | None = None,
        test_mode: bool = False,
        image_url: str | list[str] | None = None,
        messages: list[dict[str, Any]] | None = None,
        retry_count: int = 0,
        strict_model: bool = False,
    ) -> Any:
        """Chat completion through the ``ai-chat`` driver.

        Without ``options["stream"]``: ``{"response": <JSON envelope>, "used_model":
        <metadata.providerUsed, else the requested model>}``. With it: an async
        iterator of ``(text_delta, model)`` (richer events: :meth:`ai_chat_events`).
        Only the options given are sent (no default temperature or max_tokens).
        ``test_mode`` selects the server's offline model ``fake`` when no model is
        given. ``strict_model`` raises :class:`ModelSubstituted` when the server
        answers with a different model.
        """
        args, requested = await self._chat_args(prompt, options, test_mode, image_url, messages)
        if args.get("stream"):
            return self._chat_text_stream(args, requested, strict_model)
        response = await self._c._driver_response(
            "puter-chat-completion", "complete", args, idem=SAFE_REJECTIONS, driver=CHAT_DRIVER
        )
        envelope = self._c._json(response)
        self._c._envelope_result(response.status_code, envelope)
        metadata = envelope.get("metadata") if isinstance(envelope.get("metadata"), dict) else {}
        used = metadata.get("providerUsed") if isinstance(metadata.get("providerUsed"), str) else None
        used = await self._check_model(requested, used, strict_model)
        return {"response": envelope, "used_model": used or requested}

    async def _chat_text_stream(
        self, args: dict[str, Any], requested: str | None, strict: bool
    ) -> AsyncIterator[tuple[str, str | None]]:
        async with aclosing(self._chat_stream(args, requested, strict)) as events:
            async for event in events:
                if event.type == "text" and event.text:
                    yield event.text, event.model

    async def chat_events(
        self,
        prompt: str | list[dict[str, Any]] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        options: dict[str, Any] | None = None,
        image_url: str | list[str] | None = None,
        strict_model: bool = False,
    ) -> AsyncIterator[ChatEvent]:
        """Stream a chat answer as :class:`ChatEvent` objects (text, reasoning,
        tool_use, usage, ...). An ``error`` line raises :class:`StreamError`."""
        opts = dict(options or {})
        opts["stream"] = True
        args, requested = await self._chat_args(prompt, opts, False, image_url, messages)
        async with aclosing(self._chat_stream(args, requested, strict_model)) as events:
            async for event in events:
                yield event

    async def _chat_stream(
        self, args: dict[str, Any], requested: str | None, strict: bool
    ) -> AsyncIterator[ChatEvent]:
        body = self._c._driver_body("puter-chat-completion", "complete", args, CHAT_DRIVER)
        async with self._c._open_stream(body) as response:
            ctype = response.headers.get("content-type", "").lower()
            if "ndjson" in ctype or "jsonl" in ctype:
                checked = False
                failure: StreamError | None = None
                async with aclosing(response.aiter_lines()) as lines:
                    async for line in lines:
                        if failure is not None:
                            continue  # the server ends the stream after an error line
                        try:
                            event = event_from_line(line, requested)
                        except StreamError as exc:
                            # Read the stream to its end before raising: it ends right
                            # after the error line, and leaving it half-read strands
                            # httpx's inner generators (ResourceWarnings under trio).
                            failure = exc
                            continue
                        if event is None:
                            continue
                        if not checked and "model" in event.data:
                            checked = True
                            event.model = await self._check_model(requested, event.model, strict)
                        yield event
                if failure is not None:
                    raise failure
                return
            if "event-stream" in ctype:
                async with aclosing(response.aiter_lines()) as lines:
                    async for line in lines:
                        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                            event = event_from_line(line[5:], requested)
                            if event is not None:
                                yield event
                return
            # Not a stream: an error (old backend: HTTP 200 success:false) or a server
            # that answered the whole completion at once.
            if "json" not in ctype:
                raise ServerError(f"unexpected chat answer of type {ctype or 'unknown'}")
            await response.aread()
            data = self._c._json(response)
            result = self._c._envelope_result(response.status_code, data)
            metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
            used = await self._check_model(requested, metadata.get("providerUsed"), strict)
            yield ChatEvent("text", result_text(result), data, used or requested)

    # -------------------------------------------------------------- other AI

    async def _image_source(self, image: str | bytes | IO[bytes]) -> str:
        return await self._media_source(image, None)

    async def img2txt(self, image: str | bytes | IO[bytes], test_mode: bool = False) -> str:
        """OCR (``puter-ocr recognize``): the recognised text, lines joined with newlines.

        ``image`` is an http(s) or ``data:`` URL, a Puter path, bytes or a binary file.
        """
        args: dict[str, Any] = {"source": await self._image_source(image)}
        if test_mode:
            args["test_mode"] = True
        result = await self._c._driver_result("puter-ocr", "recognize", args, idem=SAFE_REJECTIONS)
        return _ocr_text(result)

    async def txt2img(self, prompt: str, model: str = "pollinations-image", test_mode: bool = False) -> str:
        """Generate an image; returns its URL or a ``data:`` URL.

        putergenai's driver names given as ``model`` (its default ``"pollinations-image"``,
        which is no model on 26.07) select the default model, ``gpt-image-1``.
        """
        response = await self._image_response(prompt, model, test_mode)
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("image/"):
            return f"data:{ctype};base64,{base64.b64encode(response.content).decode('ascii')}"
        result = self._c._envelope_result(response.status_code, self._c._json(response))
        if isinstance(result, dict):
            result = result.get("url") or result.get("image_url") or result.get("data")
        if not isinstance(result, str) or not result:
            raise ServerError("the image driver returned no image")
        return result

    async def _image_response(self, prompt: str, model: str | None, test_mode: bool) -> httpx.Response:
        if not model or model in _LEGACY_IMAGE_DRIVERS:
            model = DEFAULT_IMAGE_MODEL
        args: dict[str, Any] = {"prompt": prompt, "model": model}
        if test_mode:
            args["test_mode"] = True
        return await self._c._driver_response(
            "puter-image-generation", "generate", args, idem=SAFE_REJECTIONS, driver="ai-image"
        )

    async def txt2img_bytes(
        self, prompt: str, model: str = DEFAULT_IMAGE_MODEL, test_mode: bool = False
    ) -> bytes:
        """Generate an image and return its bytes (decoding or fetching the result)."""
        url = await self.txt2img(prompt, model=model, test_mode=test_mode)
        return await self._url_bytes(url)

    async def _url_bytes(self, url: str) -> bytes:
        if url.startswith("data:"):
            return _decode_data_uri(url)
        if not url.startswith(("http://", "https://")):
            raise ServerError("the server returned an unusable URL")
        # Only our own API host gets the token; anything else is a third party.
        same_origin = _origin(url) == _origin(self._c.api_url)
        response = await self._c._send("GET", url, idem=IDEMPOTENT, auth=same_origin and bool(self._c._token))
        return response.content

    async def txt2speech(self, text: str, options: dict[str, Any] | None = None) -> bytes:
        """Text to speech (``puter-tts synthesize``); returns the audio bytes.

        ``options`` go into the driver args: ``voice``, ``engine``, ``language``,
        ``provider``, ``model``, ``response_format``, ``test_mode`` ... A JSON answer
        with a ``url`` (what test mode gives) is fetched.
        """
        args: dict[str, Any] = {"text": text}
        for key, value in (options or {}).items():
            if value is None:
                continue
            args["test_mode" if key == "testMode" else key] = value
        response = await self._c._driver_response("puter-tts", "synthesize", args, idem=SAFE_REJECTIONS)
        ctype = response.headers.get("content-type", "").lower()
        if "json" not in ctype:
            return response.content
        result = self._c._envelope_result(response.status_code, self._c._json(response))
        if isinstance(result, dict):
            result = result.get("url") or result.get("data")
        if not isinstance(result, str):
            raise ServerError("the speech driver returned no audio")
        return await self._url_bytes(result)

    async def voices(self, provider: str | None = None) -> list[dict[str, Any]]:
        args = {"provider": provider} if provider else {}
        result = await self._c._driver_result("puter-tts", "list_voices", args, idem=IDEMPOTENT)
        return list(result) if isinstance(result, list) else []

    # ------------------------------------------- more of putergenai's surface, fixed

    async def _media_source(self, source: str | bytes | IO[bytes], default_type: str | None) -> str:
        """A driver ``source``/``file``/``audio`` argument: a URL, ``data:`` URI or Puter path as
        given, bytes inlined as a ``data:`` URI (of `default_type`, or sniffed image type if None)."""
        if isinstance(source, str):
            if source.startswith(URL_PREFIXES) or source.startswith(("/", "~")):
                return source
            return await self._c._abs(source)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif hasattr(source, "read"):
            data = await anyio.to_thread.run_sync(source.read)
        else:
            raise TypeError("expected a URL, a Puter path, bytes or a binary file object")
        mime = default_type or _sniff_image_type(data)
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    async def speech2txt(
        self,
        source: str | bytes | IO[bytes],
        options: dict[str, Any] | None = None,
        test_mode: bool = False,
    ) -> str | dict[str, Any]:
        """Speech to text (``puter-speech2txt transcribe``; ``translate`` with
        ``options["translate"]``). Returns the text when that is all there is or
        ``response_format`` is ``"text"``, else the whole result."""
        opts = {("test_mode" if k == "testMode" else k): v for k, v in (options or {}).items() if v is not None}
        method = "translate" if opts.pop("translate", False) else "transcribe"
        args: dict[str, Any] = {"file": await self._media_source(source, "audio/mpeg"), **opts}
        if test_mode:
            args["test_mode"] = True
        result = await self._c._driver_result("puter-speech2txt", method, args, idem=SAFE_REJECTIONS)
        if isinstance(result, dict) and isinstance(result.get("text"), str):
            if opts.get("response_format") == "text" or len(result) == 1:
                return result["text"]
        return result if isinstance(result, dict) else str(result)

    async def speech2speech(
        self,
        source: str | bytes | IO[bytes],
        options: dict[str, Any] | None = None,
        test_mode: bool = False,
    ) -> bytes:
        """Voice conversion (``puter-speech2speech convert``); returns audio bytes."""
        opts = {("test_mode" if k == "testMode" else k): v for k, v in (options or {}).items() if v is not None}
        args: dict[str, Any] = {"audio": await self._media_source(source, "audio/mpeg"), **opts}
        if test_mode:
            args["test_mode"] = True
        response = await self._c._driver_response("puter-speech2speech", "convert", args, idem=SAFE_REJECTIONS)
        if "json" not in response.headers.get("content-type", "").lower():
            return response.content
        result = self._c._envelope_result(response.status_code, self._c._json(response))
        url = result.get("url") if isinstance(result, dict) else result
        if not isinstance(url, str):
            raise ServerError("the voice changer returned no audio")
        return await self._url_bytes(url)

    async def txt2vid(
        self, prompt: str, options: dict[str, Any] | None = None, test_mode: bool = False
    ) -> Any:
        """Video generation (``puter-video-generation generate``); returns the driver result."""
        opts = {("test_mode" if k == "testMode" else k): v for k, v in (options or {}).items() if v is not None}
        args: dict[str, Any] = {"prompt": prompt, **opts}
        if test_mode:
            args["test_mode"] = True
        return await self._c._driver_result("puter-video-generation", "generate", args, idem=SAFE_REJECTIONS)

    async def list_models(self, force_refresh: bool = False) -> dict[str, Any]:
        return await self.available_models(force_refresh=force_refresh)

    async def list_model_providers(self, force_refresh: bool = False) -> list[str]:
        """Provider names of the listed chat models (from the public details list)."""
        if force_refresh:
            self._details_cache = None
        return sorted({str(m["provider"]) for m in await self._model_details() if m.get("provider")})

