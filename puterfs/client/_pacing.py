"""Client-side pacing: every request waits for room in the account's budgets before it is sent.

Puter limits each user per *scope* (``/work/shared/puter-api/LIMITS.md``): a sliding window
("at most N admissions in the last S seconds") and, for some scopes, a cap on requests in
flight. A request over either gets ``429`` with no ``Retry-After``. The server counts a
request in every window of its route when it is admitted, and holds its concurrency slot
until the response has been sent completely.

:class:`Pacer` mirrors that bookkeeping on the client, one instance per :class:`PuterClient`
(the limits are per user):

* :func:`scopes_for` maps a request (method, path, driver interface/method) to the scopes
  the server charges it to, e.g. ``/readdir`` → ``fs:readdir`` and ``fs:readdir-burst``.
* :meth:`Pacer.acquire` waits until every scope of the request has room in its window and
  a free in-flight slot, then takes them all at once (never some of them, so two requests
  cannot deadlock each other). Waiters are served in order of priority, then arrival; a
  waiter that cannot go holds back later waiters on the scopes it lacks (no overtaking).
* The budgets come from a tier (:data:`TIERS`: ``free`` (default), ``temp``, ``paid``,
  ``unlimited``), optionally overridden per scope.
* When a 429 arrives anyway (another client on the same account, a server with other
  numbers), :meth:`Ticket.rate_limited` tightens the scope: a window 429 lowers its limit
  to what this client has admitted in the current window, so the next request waits for
  the window to slide; a concurrency 429 lowers the in-flight cap. With nothing of ours to
  wait for, the scope is closed for a doubling penalty (capped at the window length). A
  full window without another 429 restores the tier's numbers.

Only ``anyio`` is awaited, so the pacer works under asyncio and trio, and its clock is
``anyio.current_time()`` (trio's ``MockClock`` in tests). Code between two awaits runs
atomically on both, so the state needs no locks.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from puterfs import config
from puterfs.client._errors import RateLimited


@dataclass(frozen=True)
class Budget:
    """One scope: at most ``limit`` admissions per ``window`` seconds (None: no window),
    at most ``concurrency`` in flight (None: no cap)."""

    limit: int | None
    window: float = 60.0
    concurrency: int | None = None


TIER_NAMES = config.TIER_NAMES  # ("free", "temp", "paid", "unlimited"), kept where the CLI reads it cheaply

# (window seconds, limit paid/free/temp, concurrency paid/free/temp or None); LIMITS.md.
_FS: dict[str, tuple[float, tuple[int, int, int], tuple[int, int, int] | None]] = {
    "fs:stat": (60, (1200, 600, 300), None),
    "fs:readdir": (60, (600, 300, 120), None),
    "fs:readdir-burst": (10, (120, 60, 30), None),
    "fs:search": (60, (60, 30, 10), (5, 2, 2)),
    "fs:df": (60, (60, 30, 15), None),
    "fs:read": (60, (600, 300, 120), (10, 5, 3)),
    "fs:write": (60, (300, 120, 30), (15, 6, 3)),
    "fs:multipart": (60, (2400, 1200, 600), None),
    "fs:mutate": (60, (1200, 900, 600), None),
    "fs:mutate-sustained": (3600, (6000, 3000, 1800), None),
    "fs:sign": (60, (300, 150, 60), None),
    "fs:helper": (60, (120, 60, 30), None),
    "fs:poll": (60, (240, 240, 120), None),
    "fs:batch": (60, (600, 300, 300), (5, 2, 2)),
    # signed URLs are keyed by client fingerprint, the same numbers on every tier
    "fs:signed-read": (60, (3000, 3000, 3000), None),
    "fs:signed-write": (60, (600, 600, 600), None),
    "fs:signed": (60, (0, 0, 0), (60, 60, 60)),  # in-flight cap only (limit 0 = no window)
    "drivers-call": (60, (8000, 8000, 8000), None),
    "drivers:list-interfaces": (60, (60, 60, 60), None),
    # drivers (key driver:<interface>:<method>); see _DRIVER_BUDGETS for the mapping
    "ai": (10, (200, 30, 20), (20, 3, 2)),
    "kv": (10, (400, 400, 200), (30, 15, 8)),
    "kv:list": (60, (240, 120, 60), (5, 3, 2)),
    "apps": (10, (100, 100, 50), (20, 10, 5)),
    "apps:write": (60, (240, 120, 60), (20, 10, 5)),
    "apps:name": (60, (60, 30, 10), (20, 10, 5)),
    "subdomains": (10, (200, 200, 100), (20, 10, 5)),
    "subdomains:create": (60, (120, 60, 30), (20, 10, 5)),
    "workers": (60, (600, 300, 150), (10, 5, 3)),
    "workers:create": (60, (120, 80, 40), (5, 2, 2)),
    "workers:destroy": (60, (30, 20, 10), (10, 5, 3)),
    "driver": (60, (600, 600, 600), None),  # a driver that declares no limits of its own
}

_TIER_INDEX = {"paid": 0, "free": 1, "temp": 2}


def _tier_table(tier: str) -> dict[str, Budget]:
    if tier == "unlimited":
        # No numbers known: nothing waits until the server says 429 (then tightening applies).
        return {name: Budget(None, window) for name, (window, _, _) in _FS.items()}
    i = _TIER_INDEX[tier]
    out = {}
    for name, (window, limits, conc) in _FS.items():
        limit = limits[i] or None
        out[name] = Budget(limit, window, conc[i] if conc else None)
    return out


TIERS: dict[str, dict[str, Budget]] = {t: _tier_table(t) for t in TIER_NAMES}

AI_INTERFACES = frozenset(
    {
        "puter-chat-completion",
        "puter-image-generation",
        "puter-ocr",
        "puter-tts",
        "puter-speech2txt",
        "puter-speech2speech",
        "puter-video-generation",
        "puter-txt2speech",
    }
)

_ROUTES: dict[str, tuple[str, ...]] = {}
for _scopes, _paths in (
    (("fs:stat",), ("/stat", "/fs/stat")),
    (("fs:readdir", "fs:readdir-burst"), ("/readdir", "/fs/readdir")),
    (("fs:search",), ("/search", "/fs/search")),
    (("fs:df",), ("/df",)),
    (("fs:read",), ("/read", "/down", "/fs/read")),
    (("fs:write",), ("/fs/write", "/fs/batchWrite")),
    (
        ("fs:multipart",),
        (
            "/fs/startWrite",
            "/fs/startBatchWrite",
            "/fs/completeWrite",
            "/fs/completeBatchWrite",
            "/fs/abortWrite",
            "/fs/signMultipartParts",
        ),
    ),
    (
        ("fs:mutate", "fs:mutate-sustained"),
        (
            "/mkdir", "/touch", "/rename", "/delete", "/move", "/copy",
            "/fs/mkdir", "/fs/touch", "/fs/rename", "/fs/delete", "/fs/move", "/fs/copy", "/fs/mkshortcut",
        ),
    ),
    (("fs:sign",), ("/sign", "/auth/request-app-root-dir", "/auth/check-app-acl")),
    (
        ("fs:helper",),
        ("/open_item", "/get-launch-apps", "/suggest_apps", "/readdir-subdomains", "/update-fsentry-thumbnail"),
    ),
    (("fs:poll",), ("/cache/last-change-timestamp",)),
    (("fs:batch",), ("/batch",)),
    (("fs:signed-read", "fs:signed"), ("/file", "/token-read")),
    (("fs:signed-write", "fs:signed"), ("/writeFile",)),
    (("drivers:list-interfaces",), ("/drivers/list-interfaces",)),
):
    for _p in _paths:
        _ROUTES[_p] = _scopes


def _driver_budget(interface: str, method: str) -> str:
    """Which budget of the tier table a driver method uses (LIMITS.md, Drivers)."""
    if interface in AI_INTERFACES:
        return "ai"
    if interface == "puter-kvstore":
        return "kv:list" if method == "list" else "kv"
    if interface == "puter-apps":
        if method in ("create", "update", "upsert", "delete"):
            return "apps:write"
        return "apps:name" if method == "isNameAvailable" else "apps"
    if interface == "puter-subdomains":
        return "subdomains:create" if method == "create" else "subdomains"
    if interface in ("workers", "worker-service"):
        if method in ("create", "destroy"):
            return f"workers:{method}"
        return "workers"
    return "driver"


def scopes_for(method: str, path: str, json_body: Any = None) -> tuple[str, ...]:
    """The scope keys the server charges this request to (empty: not paced).

    Driver calls are charged to the route (``drivers-call``) and to their own key
    ``driver:<interface>:<method>``, whose budget depends on the driver.
    """
    if path == "/drivers/call" and method == "POST":
        iface = method_name = ""
        if isinstance(json_body, dict):
            iface = str(json_body.get("interface") or "")
            method_name = str(json_body.get("method") or "")
        return ("drivers-call", f"driver:{iface}:{method_name}")
    return _ROUTES.get(path, ())


# -- priorities -------------------------------------------------------------------------

INTERACTIVE = 0
NORMAL = 1
BACKGROUND = 2

_priority: contextvars.ContextVar[int] = contextvars.ContextVar("puterfs_pacing_priority", default=NORMAL)


@contextlib.contextmanager
def priority(level: int) -> Iterator[None]:
    """Requests made inside (in this task and the tasks it starts) wait with ``level``:
    :data:`INTERACTIVE` ones go before :data:`NORMAL` ones, which go before
    :data:`BACKGROUND` ones (bulk uploads), when they wait for the same scope."""
    token = _priority.set(level)
    try:
        yield
    finally:
        _priority.reset(token)


# -- state ------------------------------------------------------------------------------

# A hit is counted for a little longer than the window: the server stamps it when the
# request arrives, a bit later than the client admitted it.
WINDOW_MARGIN = 0.25
RESTORE_AFTER = 1.0
BACKGROUND_RESERVE = 0.15  # share of a window that background requests leave to the others  # windows without a 429 before a tightened scope gets its tier numbers back
CONCURRENCY_PENALTY_MAX = 5.0


@dataclass(eq=False)
class _Scope:
    name: str
    budget: Budget
    hits: deque[float] = field(default_factory=deque)  # admission times inside the window
    in_flight: int = 0
    limit: float = math.inf  # effective window limit (tightened by 429s)
    concurrency: float = math.inf
    closed_until: float = 0.0  # penalty: nothing is admitted before this time
    strikes: int = 0  # consecutive 429s without room of our own to wait for
    last_429: float = -math.inf
    refused: int = 0  # 429s seen for this scope
    waited: int = 0  # admissions that had to wait

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        b = self.budget
        self.limit = math.inf if b.limit is None else b.limit
        self.concurrency = math.inf if b.concurrency is None else b.concurrency
        self.strikes = 0

    @property
    def span(self) -> float:
        return self.budget.window * 1.02 + WINDOW_MARGIN

    def expire(self, now: float) -> None:
        horizon = now - self.span
        while self.hits and self.hits[0] <= horizon:
            self.hits.popleft()
        if self.last_429 != -math.inf and now - self.last_429 >= self.budget.window * RESTORE_AFTER:
            self.last_429 = -math.inf
            self.reset()

    def room_at(self, now: float, *, background: bool = False) -> float:
        """When this scope could admit one more request (now if it can; inf: when a slot frees).

        ``background`` requests leave a part of the window and of the in-flight cap free, so
        that an interactive request never finds a budget used up by bulk work.
        """
        limit, concurrency = self.limit, self.concurrency
        if background:
            if limit != math.inf and limit >= 5:
                limit -= max(1, math.ceil(limit * BACKGROUND_RESERVE))
            if concurrency != math.inf and concurrency >= 3:
                concurrency -= 1
        at = max(now, self.closed_until)
        if len(self.hits) >= limit:
            # the oldest hits must leave the window until fewer than `limit` remain
            excess = len(self.hits) - int(limit)
            at = max(at, self.hits[excess] + self.span)
        if self.in_flight >= concurrency:
            return math.inf
        return at


@dataclass(eq=False)
class _Waiter:
    scopes: tuple[_Scope, ...]
    key: tuple[int, int]
    event: anyio.Event = field(default_factory=anyio.Event)
    ticket: Ticket | None = None
    wake_at: float = math.inf
    rounds: int = 0  # dispatches that could not admit it


class Ticket:
    """The slots one request holds. :meth:`release` when its response is finished."""

    def __init__(self, pacer: Pacer, scopes: tuple[_Scope, ...], admitted_at: float) -> None:
        self._pacer = pacer
        self._scopes = scopes
        self._at = admitted_at
        self._released = False
        self.waited = False

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._scopes)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        for s in self._scopes:
            s.in_flight -= 1
        self._pacer._dispatch()

    def refund(self) -> None:
        """The request never reached the server: its window slots are given back."""
        for s in self._scopes:
            try:
                s.hits.remove(self._at)
            except ValueError:
                pass
        self.release()

    def rate_limited(self, *, concurrent: bool, retry_after: float | None = None) -> None:
        """The server refused this request with 429: tighten the scope it hit."""
        self._pacer._tighten(self, concurrent=concurrent, retry_after=retry_after)


class Pacer:
    """Budgets of one account; see the module documentation."""

    def __init__(self, tier: str = "free", budgets: dict[str, Budget] | None = None) -> None:
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIER_NAMES)}")
        self.tier = tier
        self._overrides = dict(budgets or {})
        self._table = {**TIERS[tier], **self._overrides}
        self._scopes: dict[str, _Scope] = {}
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self.admitted = 0
        self.waited = 0
        self.refused = 0

    def set_tier(self, tier: str) -> None:
        """Switch to another tier's numbers (kept: what is in flight and in the windows)."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIER_NAMES)}")
        self.tier = tier
        self._table = {**TIERS[tier], **self._overrides}
        for name, scope in self._scopes.items():
            scope.budget = self._budget(name)
            scope.reset()
        self._dispatch()

    # -- scopes ---------------------------------------------------------------------------

    def _budget(self, name: str) -> Budget:
        if name.startswith("driver:"):
            _, iface, method = name.split(":", 2)
            exact = self._table.get(name)
            return exact if exact is not None else self._table[_driver_budget(iface, method)]
        return self._table.get(name) or Budget(None)

    def _scope(self, name: str) -> _Scope:
        s = self._scopes.get(name)
        if s is None:
            s = self._scopes[name] = _Scope(name, self._budget(name))
        return s

    # -- admission ------------------------------------------------------------------------

    async def acquire(self, names: Sequence[str], *, deadline: float | None = None) -> Ticket:
        """Wait for room in every scope of ``names`` and take it.

        ``deadline`` (on ``anyio.current_time()``'s clock): raise :class:`RateLimited`
        (``code="budget_exhausted"``) if the request cannot be admitted by then.
        """
        scopes = tuple(self._scope(n) for n in dict.fromkeys(names))
        w = _Waiter(scopes, (_priority.get(), next(self._seq)))
        bisect.insort(self._waiters, w, key=lambda x: x.key)
        try:
            while True:
                self._dispatch()
                if w.ticket is not None:
                    return w.ticket
                now = anyio.current_time()
                until = w.wake_at if deadline is None else min(w.wake_at, deadline)
                if deadline is not None and now >= deadline:
                    lacking = ", ".join(s.name for s in scopes if s.room_at(now) > now) or "its turn"
                    raise RateLimited(
                        f"gave up waiting for the account's request budget ({lacking}) at the deadline",
                        code="budget_exhausted",
                    )
                with anyio.move_on_after(until - now if math.isfinite(until) else math.inf):
                    await w.event.wait()
                w.event = anyio.Event()
        except BaseException:
            if w.ticket is not None:
                # admitted while being cancelled: give the slots back
                w.ticket.refund()
            raise
        finally:
            if w in self._waiters:
                self._waiters.remove(w)

    def _dispatch(self) -> None:
        """Admit every waiter that can go, in order; compute when the others may."""
        if not self._waiters:
            return
        now = anyio.current_time()
        for s in self._scopes.values():
            s.expire(now)
        blocked: set[int] = set()
        admitted: list[_Waiter] = []
        for w in self._waiters:
            if w.ticket is not None:
                continue
            bg = w.key[0] >= BACKGROUND
            lacking = [s for s in w.scopes if id(s) in blocked or s.room_at(now, background=bg) > now]
            if not lacking:
                for s in w.scopes:
                    s.hits.append(now)
                    s.in_flight += 1
                t = Ticket(self, w.scopes, now)
                t.waited = w.rounds > 0
                w.ticket = t
                admitted.append(w)
                continue
            w.rounds += 1
            w.wake_at = min(
                (s.room_at(now, background=bg) for s in lacking if id(s) not in blocked), default=math.inf
            )
            blocked.update(id(s) for s in lacking)
        for w in admitted:
            self.admitted += 1
            if w.ticket is not None and w.ticket.waited:
                self.waited += 1
                for s in w.scopes:
                    s.waited += 1
            w.event.set()

    def has_room(self, names: Sequence[str]) -> bool:
        """Whether a request of these scopes would be admitted now, with nobody waiting."""
        now = anyio.current_time()
        for n in names:
            s = self._scope(n)
            s.expire(now)
            if s.room_at(now) > now or any(s in w.scopes for w in self._waiters):
                return False
        return True

    # -- tightening -----------------------------------------------------------------------

    def _tighten(self, ticket: Ticket, *, concurrent: bool, retry_after: float | None) -> None:
        now = anyio.current_time()
        self.refused += 1
        candidates = list(ticket._scopes)
        if concurrent:
            capped = [s for s in candidates if s.concurrency != math.inf]
            candidates = capped or candidates  # a cap we did not know of: the busiest scope has it
        if not candidates:
            return
        # the server refused it: it did not count in any window
        for s in ticket._scopes:
            try:
                s.hits.remove(ticket._at)
            except ValueError:
                pass
        if concurrent:
            # the scope whose cap is most used is the one that refused
            target = max(candidates, key=lambda s: s.in_flight / (s.concurrency if s.concurrency != math.inf else 1e9))
            own = target.in_flight - 1  # ours besides this request
            target.concurrency = max(1, min(target.concurrency, own if own > 0 else 1))
            cap = CONCURRENCY_PENALTY_MAX
        else:
            target = max(candidates, key=lambda s: len(s.hits) / (s.limit if s.limit != math.inf else 1e9))
            own = len(target.hits)
            target.limit = max(1, min(target.limit, own))
            cap = target.budget.window
        penalty = 0.0
        if own <= 0:
            # nothing of ours to wait for (another client holds the budget): retry at once the
            # first time, then after 1, 2, 4 ... seconds
            penalty = 0.0 if target.strikes == 0 else min(cap, (0.25 if concurrent else 1.0) * 2 ** (target.strikes - 1))
            target.strikes += 1
        if retry_after is not None:
            penalty = max(penalty, retry_after)
        if penalty:
            target.closed_until = max(target.closed_until, now + penalty)
        target.last_429 = now
        target.refused += 1

    # -- introspection --------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        try:
            now: float | None = anyio.current_time()
        except Exception:  # noqa: BLE001 - outside an event loop: report without expiring
            now = None
        scopes = {}
        for name, s in sorted(self._scopes.items()):
            if now is not None:
                s.expire(now)
            scopes[name] = {
                "in_flight": s.in_flight,
                "in_window": len(s.hits),
                "limit": None if s.limit == math.inf else int(s.limit),
                "concurrency": None if s.concurrency == math.inf else int(s.concurrency),
                "refused": s.refused,
                "waited": s.waited,
            }
        return {
            "tier": self.tier,
            "admitted": self.admitted,
            "waited": self.waited,
            "waiting": len(self._waiters),
            "refused": self.refused,
            "scopes": scopes,
        }


__all__ = [
    "BACKGROUND",
    "INTERACTIVE",
    "NORMAL",
    "TIERS",
    "TIER_NAMES",
    "Budget",
    "Pacer",
    "Ticket",
    "priority",
    "scopes_for",
]
