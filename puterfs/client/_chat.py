"""Chat helpers: request messages, NDJSON stream events, and reading the answer.

The 26.07 chat driver answers a streaming call with ``application/x-ndjson`` lines
(API reference §7.3) and a plain call with a JSON envelope whose ``result`` is either
Claude-style (``message.content`` is a list of blocks) or OpenAI-style (a string).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from puterfs.client._errors import StreamError

log = logging.getLogger(__name__)

# Content-part URL schemes the chat driver fetches itself; anything else given as an
# image is a Puter path that the server inlines ({"type": "file", "puter_path": ...}).
URL_PREFIXES = ("http://", "https://", "data:")


@dataclass
class ChatEvent:
    """One line of a chat stream.

    ``type`` is the line's type (``"text"``, ``"reasoning"``, ``"tool_use"``, ``"usage"``,
    ``"extra_content"``, or anything newer servers send); ``text`` the text delta for
    ``text``/``reasoning`` lines (else ``""``); ``data`` the raw line; ``model`` the model
    the line names, or the requested one.
    """

    type: str
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    model: str | None = None


def image_part(ref: str) -> dict[str, Any]:
    if ref.startswith(URL_PREFIXES):
        return {"type": "image_url", "image_url": {"url": ref}}
    return {"type": "file", "puter_path": ref}


def build_messages(
    prompt: str | list[dict[str, Any]] | None,
    messages: list[dict[str, Any]] | None,
    image_parts: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The ``messages`` argument, never sharing (and so never mutating) the caller's lists."""
    if messages is not None:
        out = [dict(m) for m in messages]
        if image_parts:
            # Attach the images to the last user turn, as the prompt form does.
            for msg in reversed(out):
                if msg.get("role") == "user":
                    msg["content"] = _as_parts(msg.get("content")) + image_parts
                    break
            else:
                out.append({"role": "user", "content": list(image_parts)})
        return out
    if prompt is None:
        if image_parts:
            return [{"role": "user", "content": list(image_parts)}]
        raise ValueError("ai_chat needs a prompt or messages")
    if image_parts:
        return [{"role": "user", "content": _as_parts(prompt) + image_parts}]
    content: Any = [dict(p) for p in prompt] if isinstance(prompt, list) else prompt
    return [{"role": "user", "content": content}]


def _as_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [p if isinstance(p, dict) else {"type": "text", "text": str(p)} for p in content]
    return [{"type": "text", "text": str(content)}]


def result_text(result: Any) -> str:
    """The assistant text of a non-streaming chat ``result`` (either shape)."""
    if not isinstance(result, dict):
        return result if isinstance(result, str) else ""
    message = result.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
            )
    choices = result.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        msg = choices[0].get("message") or {}
        if isinstance(msg.get("content"), str):
            return msg["content"]
    return ""


def event_from_line(line: bytes | str, model: str | None) -> ChatEvent | None:
    """Parse one NDJSON line. Raises :class:`StreamError` for an ``error`` line."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        # A broken line cannot be trusted as text; say so, but keep the stream going.
        log.warning("ignoring a chat stream line that is not JSON (%d chars)", len(line))
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    line_model = data.get("model") if isinstance(data.get("model"), str) else model
    if kind == "error" or (data.get("success") is False):
        err = data.get("error")
        message = data.get("message")
        code = data.get("code")
        if isinstance(err, dict):
            message = message or err.get("message")
            code = code or err.get("code")
        elif isinstance(err, str):
            message = message or err
        raise StreamError(
            message or "the chat stream reported an error",
            code=code if isinstance(code, str) else None,
            body=data,
        )
    if kind == "text":
        return ChatEvent("text", str(data.get("text") or ""), data, line_model)
    if kind == "reasoning":
        return ChatEvent("reasoning", str(data.get("reasoning") or data.get("text") or ""), data, line_model)
    if isinstance(kind, str):
        return ChatEvent(kind, "", data, line_model)
    # An OpenAI-style chunk (old backends / compatible proxies).
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str):
            return ChatEvent("text", text, data, line_model)
    return ChatEvent("unknown", "", data, line_model)
