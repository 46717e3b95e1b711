"""When a failed request may be sent again, and how long to wait first.

Three kinds of calls (each public method picks one and says why):

``IDEMPOTENT``
    Sending it twice has the effect of sending it once (stat, readdir, read, whoami,
    model lists, df, the change timestamp, mkdir without dedupe, overwrite writes,
    touch, delete where "already gone" counts as done). Retried on 429, 5xx and any
    connection or timeout error, including errors after the request was sent.
``SAFE_REJECTIONS``
    Not idempotent (chat, image/speech generation, move, rename, a write that must not
    overwrite). Retried only when the server cannot have acted on it: the connection
    was never made (connect error, connect/pool timeout) or the answer is 429, which
    Puter's rate limiter gives before any handler runs (API reference §9).
``CONNECT_ONLY``
    Retried only when the connection was never made. Used for login: its rate limit
    window is 15 minutes, so backing off for seconds after a 429 only burns attempts.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

import httpx

from puterfs.client._errors import (
    PuterConnectionError,
    PuterError,
    RateLimited,
    ServerError,
    StreamError,
)


class Idempotency(enum.Enum):
    IDEMPOTENT = "idempotent"
    SAFE_REJECTIONS = "safe_rejections"
    CONNECT_ONLY = "connect_only"


# httpx errors raised before a single byte of the request left this process.
NOT_SENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 6
    base_delay: float = 0.25
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based).

        Capped exponential backoff with "full jitter" between half and all of the step,
        so parallel clients spread out. A server's ``Retry-After`` wins over the
        computed step (it knows better), still capped at ``max_delay``.
        """
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_delay))
        step = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(step / 2, step)


def may_retry(kind: Idempotency, exc: PuterError, *, sent: bool) -> bool:
    """Whether ``exc`` (raised by one attempt) allows another attempt of a call of ``kind``.

    ``sent`` is False when the failure happened before the request reached the server.
    """
    if not sent:
        return isinstance(exc, PuterConnectionError)
    if kind is Idempotency.CONNECT_ONLY:
        return False
    if kind is Idempotency.SAFE_REJECTIONS:
        return isinstance(exc, RateLimited)
    if isinstance(exc, (RateLimited, PuterConnectionError)):
        return True
    if isinstance(exc, ServerError) and not isinstance(exc, StreamError):
        return exc.status is None or exc.status >= 500
    return False
