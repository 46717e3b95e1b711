"""Fault injection and the request log.

Rules are matched per request (first matching rule wins) and switched at run time,
in process (``emulator.faults.set_rules(...)``) or over ``POST /_emulator/faults``.
A rule may answer with an error status, add latency, drop the connection, stall
until released, answer an HTML page with status 200 (a proxy or captive portal), cut
the JSON answer short, or shape a streamed response (delay, hold after the first
chunk, abort before chunk k).

``probability`` (0..1, with an optional ``seed``) makes a rule hit only that share of
the requests it matches; ``after: true`` applies the fault *after* the server has done
what was asked (the write happened, the answer is lost, late, wrong or cut), which is
what a client must reconcile; the default is before (nothing happened). ``count``
limits how many times a rule hits; ``fired`` in the rule listing says how often it did.

Waiting (holds, stalls) polls a release counter instead of using an event object:
polling works the same under asyncio and trio, from any thread, and every wait
has an upper bound so a forgotten hold cannot keep a test process alive.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio

log = logging.getLogger(__name__)

MAX_WAIT = 300.0  # seconds a hold or stall waits at most for a release
_POLL = 0.02


class StreamAbort(Exception):
    """Raised by ``before_stream_chunk``; the driver emits an NDJSON error line and ends the stream."""


@dataclass
class Rule:
    path: str
    method: str | None = None
    status: int | None = None
    retry_after: float | None = None
    code: str | None = None
    message: str | None = None
    count: int | None = None
    latency: float = 0.0
    drop: bool = False
    stream_delay: float = 0.0
    stream_hold: bool = False
    stream_error_after: int | None = None
    stall: bool = False
    probability: float | None = None
    seed: int | None = None
    after: bool = False
    html: bool = False
    truncate: bool = False
    fired: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        if not isinstance(d, dict) or not isinstance(d.get("path"), str):
            raise ValueError("each rule needs a string 'path'")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown rule keys: {sorted(unknown)}")
        rule = cls(**d)
        if rule.method is not None:
            rule.method = rule.method.upper()
        if rule.probability is not None and not 0.0 <= float(rule.probability) <= 1.0:
            raise ValueError("'probability' must be between 0 and 1")
        if rule.truncate:
            rule.after = True  # there is no answer to cut before the server acted
        return rule

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v for k, v in self.__dict__.items()
            if not k.startswith("_") and (v not in (None, False, 0.0) or k in ("path", "fired"))
        }

    def hits(self) -> bool:
        """Whether this matching request is one of the share the rule faults."""
        return self.probability is None or self._rng.random() < float(self.probability)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._release_gen = 0

    # --- configuration -------------------------------------------------------------------

    def set_rules(self, rules: list[dict[str, Any] | Rule]) -> None:
        parsed = [r if isinstance(r, Rule) else Rule.from_dict(r) for r in rules]
        with self._lock:
            self._rules = parsed

    def add(self, **rule: Any) -> None:
        parsed = Rule.from_dict(rule)
        with self._lock:
            self._rules.append(parsed)

    def clear(self) -> None:
        with self._lock:
            self._rules = []
        self.release()  # nothing should stay stuck on a rule that no longer exists

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self._rules]

    def release(self) -> None:
        with self._lock:
            self._release_gen += 1

    # --- use -----------------------------------------------------------------------------

    def take(self, method: str, path: str) -> Rule | None:
        """The first rule matching this request; counts one use of a counted rule."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    if not rule.hits():
                        continue
                    rule.fired += 1
                    if rule.count is not None:
                        rule.count -= 1
                        if rule.count <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def generation(self) -> int:
        with self._lock:
            return self._release_gen

    async def wait_release(self, since: int, limit: float = MAX_WAIT) -> bool:
        """Wait until ``release()`` is called after generation ``since`` (True) or ``limit`` passes."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.generation() != since:
                return True
            await anyio.sleep(_POLL)
        return False


HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Gateway</title></head>"
    b"<body><h1>Please sign in to continue</h1><p>This network requires authentication.</p></body></html>"
)


def html_response() -> Any:
    """What a proxy or captive portal answers instead of the server: 200, text/html."""
    from starlette.responses import Response

    return Response(HTML_PAGE, status_code=200, media_type="text/html")


async def response_body(response: Any) -> bytes:
    """The whole body of a (possibly streaming) Starlette response."""
    iterator = getattr(response, "body_iterator", None)
    if iterator is None:
        return bytes(response.body)
    parts = []
    async for chunk in iterator:
        parts.append(chunk if isinstance(chunk, bytes) else str(chunk).encode())
    return b"".join(parts)


async def truncated_response(response: Any) -> Any:
    """The server's answer cut in half, with a Content-Length that matches the cut (so the
    client reads a complete, but wrong, body: truncated JSON, short file data)."""
    from starlette.responses import Response

    body = await response_body(response)
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-range")}
    return Response(body[: len(body) // 2], status_code=response.status_code, headers=headers)


class StreamShaper:
    """Applies a rule's stream_* settings; handed to drivers through the driver context."""

    def __init__(self, faults: Faults, rule: Rule | None):
        self.faults = faults
        self.rule = rule
        self.gen = faults.generation()

    async def before_chunk(self, index: int) -> None:
        rule = self.rule
        if rule is None:
            return
        if rule.stream_error_after is not None and index >= rule.stream_error_after:
            raise StreamAbort(rule.message or "emulator: stream aborted by fault injection")
        if rule.stream_hold and index == 1:
            await self.faults.wait_release(self.gen)
        if rule.stream_delay and index > 0:
            await anyio.sleep(rule.stream_delay)


@dataclass
class RequestLog:
    """The last ``maxlen`` requests: method, path, status, bytes in/out, start and end time."""

    maxlen: int = 10_000
    _items: deque[dict[str, Any]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(record)
            while len(self._items) > self.maxlen:
                self._items.popleft()

    def entries(self, bodies: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._items)
        if bodies:
            return [dict(r) for r in items]
        return [{k: v for k, v in r.items() if k != "body"} for r in items]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
