"""Wiring of the AI routes to ``puterfs.emulator.drivers`` (written separately).

This module owns authentication, the per-request ``DriverContext`` (file access,
stream fault shaping, URL fetching) and the token gates of the OpenAI/Anthropic-
compatible endpoints; what the drivers answer lives in ``drivers.py``, imported
lazily so the rest of the emulator works without it.
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.responses import Response

from puterfs.emulator.app import Call, JSONResponse, route
from puterfs.emulator.errors import ApiError
from puterfs.emulator.faults import StreamShaper

MAX_FETCH = 50 << 20


class DriverContext:
    """What drivers may ask of the core during one request."""

    def __init__(self, call: Call):
        self._call = call
        self.call = call  # for the drivers that keep state (KV, apps, hosting)
        self.username = call.me.username
        self._shaper: StreamShaper = call.state["shaper"]

    async def read_file(self, path: str) -> bytes:
        from puterfs.emulator.routes_fs import resolve

        e = resolve(self._call, path)
        if e["is_dir"]:
            raise ApiError(400, "cannot_read_a_directory", "Cannot read a directory")
        with self._call.store.open_blob(e) as fh:
            return fh.read()

    async def before_stream_chunk(self, index: int) -> None:
        await self._shaper.before_chunk(index)

    async def fetch_url(self, url: str) -> bytes:
        if not url.startswith(("http://", "https://")):
            raise ApiError(400, "bad_request", f"Unsupported URL: {url}")
        try:
            async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:
                resp = await client.get(url)
        except httpx.HTTPError as exc:
            raise ApiError(500, "internal_error", "Internal Server Error") from exc
        if resp.status_code >= 400:
            raise ApiError(400, "bad_request", f"Could not fetch {url}: HTTP {resp.status_code}")
        if len(resp.content) > MAX_FETCH:
            raise ApiError(400, "bad_request", "Fetched file is too large")
        return resp.content


def _drivers() -> Any:
    try:
        from puterfs.emulator import drivers
    except ImportError as exc:  # drivers.py is written separately; say so clearly
        raise ApiError(500, "internal_error", "Emulator drivers are not available") from exc
    return drivers


@route("POST", "/drivers/call", auth="drivers")
async def drivers_call(call: Call) -> Response:
    call.request.scope["state"]["log"]["body"] = call.body
    return await _drivers().handle_call(call.body, DriverContext(call))


@route("GET", "/drivers/list-interfaces", auth="drivers")
async def list_interfaces(call: Call) -> Response:
    return JSONResponse(await _drivers().list_interfaces(DriverContext(call)))


@route("GET", "/puterai/chat/models", auth="none")
async def chat_models(call: Call) -> Response:
    return JSONResponse({"models": _drivers().public_chat_models()})


@route("GET", "/puterai/chat/models/details", auth="none")
async def chat_model_details(call: Call) -> Response:
    return JSONResponse({"models": _drivers().chat_model_details()})


@route("GET", "/puterai/image/models", auth="none")
async def image_models(call: Call) -> Response:
    return JSONResponse({"models": _drivers().image_models()})


_SESSION_MSG = (
    "This API cannot be called with an account session token. Use an app or worker token, or create an API "
    "token from the dashboard (Account \u2192 API Token)."
)


def _compat_gate(call: Call) -> None:
    me = call.me
    if me.kind in ("gui", "s"):
        raise ApiError(403, "app_or_api_token_required", _SESSION_MSG)
    if me.kind == "au":
        raise ApiError(403, "forbidden", "This endpoint is only available to user sessions")
    if not me.full_access:
        raise ApiError(403, "forbidden", "Access tokens are not allowed to access this resource")


@route("POST", "/puterai/openai/v1/chat/completions", auth="user")
async def openai_chat(call: Call) -> Response:
    _compat_gate(call)
    fn = getattr(_drivers(), "openai_chat_completions", None)
    if fn is None:
        raise ApiError(501, "not_implemented", "OpenAI-compatible chat is not emulated")
    return await fn(call.body, DriverContext(call))


@route("POST", "/puterai/openai/v1/completions", auth="user")
async def openai_completions(call: Call) -> Response:
    _compat_gate(call)
    raise ApiError(501, "not_implemented", "OpenAI-compatible completions are not emulated")


@route("POST", "/puterai/openai/v1/responses", auth="user")
async def openai_responses(call: Call) -> Response:
    _compat_gate(call)
    raise ApiError(501, "not_implemented", "OpenAI-compatible responses are not emulated")


@route("POST", "/puterai/anthropic/v1/messages", auth="user")
async def anthropic_messages(call: Call) -> Response:
    _compat_gate(call)
    fn = getattr(_drivers(), "anthropic_messages", None)
    if fn is None:
        raise ApiError(501, "not_implemented", "Anthropic-compatible messages are not emulated")
    return await fn(call.body, DriverContext(call))
