"""When a failed request may be sent again, and how long to wait first.

Three kinds of calls (each public method picks one and says why):

``IDEMPOTENT``
    Sending it twice has the effect of sending it once (stat, readdir, read, whoami,
    model lists, df, the change timestamp, mkdir without dedupe, overwrite writes,
    touch, delete where "already gone" counts as done). Retried on 429, 5xx, any
    connection or timeout error (including errors after the request was sent) and a 2xx
    answer that is not the server's (``BadAnswer``: an HTML page, JSON cut short).
``SAFE_REJECTIONS``
    Not idempotent (chat, image/speech generation, move, rename, a write that must not
    overwrite). Retried only when the server cannot have acted on it: the connection
    was never made (connect error, connect/pool timeout) or the answer is 429, which
    Puter's rate limiter gives before any handler runs (API reference §9). When the
    outcome is uncertain (``uncertain``: the answer was lost, a 5xx, a ``BadAnswer``) a
    call that can look at the server's state passes a *reconcile* function to
    ``PuterClient._send``: it says whether the request took effect (then that is the
    answer) or not (``RESEND``: it is sent again).
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
    BadAnswer,
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


# A reconcile function's verdict: the server's state shows the request did not take effect,
# so it may be sent again.
RESEND = object()


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int | None = 6  # None: until the call's deadline
    base_delay: float = 0.25
    max_delay: float = 30.0

    def allows(self, attempt: int) -> bool:
        """Whether retry number ``attempt`` (1-based) is within the retry count."""
        return self.max_retries is None or attempt <= self.max_retries

    @property
    def bounded(self) -> int:
        """A retry count for loops that have no deadline of their own (6 when unlimited)."""
        return 6 if self.max_retries is None else self.max_retries

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
    if isinstance(exc, (RateLimited, PuterConnectionError, BadAnswer)):
        return True
    if isinstance(exc, ServerError) and not isinstance(exc, StreamError):
        return exc.status is None or exc.status >= 500
    return False


def uncertain(exc: PuterError, *, sent: bool) -> bool:
    """Whether a failed request may have been carried out by the server all the same: it
    was sent, and its answer was lost (connection broken, timeout), a 5xx (the server
    may fail after acting) or not the server's (``BadAnswer``). A 429 or another 4xx is a
    refusal: nothing was done."""
    if not sent or isinstance(exc, RateLimited):
        return False
    if isinstance(exc, (PuterConnectionError, BadAnswer)):
        return True
    if isinstance(exc, ServerError) and not isinstance(exc, StreamError):
        return exc.status is None or exc.status >= 500
    return False
