"""Rate limits as the Puter 26.07 server enforces them (LIMITS.md): per-user sliding windows and
in-flight caps per scope and tier, applied as route-level gates.

How the real server does it, and so the emulator:

- Each route has an ordered list of sliding windows and at most one concurrency cap.  They run
  after host routing, the global JSON body parser, authentication and the email-confirmation
  check; the windows first, in order, then the concurrency cap.
- A window admits a request while it holds fewer than ``limit`` hits of the last ``seconds``
  and then records the hit; a refused request is not counted (an earlier window of the same
  route has already counted it, as the real middlewares run one after the other).
- A request refused for concurrency has already used its window slots.  A concurrency slot is
  held from admission until the response has been sent completely (streamed bodies
  included) or the client went away.
- Keys: ``user`` = the account (a request without one falls back to the fingerprint),
  ``fingerprint`` = sha256 of IP, User-Agent, Accept-Language and Accept-Encoding, ``ip``.
- 429 bodies: "Too many requests." (window) or "Too many concurrent requests." (concurrency),
  code ``too_many_requests``, and no ``Retry-After`` or ``RateLimit-*`` header.
- Tiers: ``paid`` (the base limits), ``free`` (a signed-up user), ``temp`` (a temp user).  The
  server-wide tier (``--tier``) is what signed-up users get; temp users get ``temp`` unless the
  server tier is ``paid``.  ``unlimited`` switches every limit off.

Driver calls (``POST /drivers/call``) pass the route window ``drivers-call`` and then the
driver's own window and cap, keyed by interface and method (``driver:<iface>:<method>:<user>``).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from puterfs.emulator.errors import ApiError

TIERS = ("free", "temp", "paid", "unlimited")
_IDX = {"paid": 0, "free": 1, "temp": 2}

WINDOW_MESSAGE = "Too many requests."
CONCURRENCY_MESSAGE = "Too many concurrent requests."


@dataclass(frozen=True)
class Window:
    scope: str
    seconds: float
    limits: tuple[int, int, int]  # paid, free, temp
    key: str = "user"  # "user", "fingerprint", "ip"

    def limit(self, tier: str) -> int:
        return self.limits[_IDX[tier]]


@dataclass(frozen=True)
class Cap:
    scope: str
    caps: tuple[int, int, int]
    key: str = "user"

    def cap(self, tier: str) -> int:
        return self.caps[_IDX[tier]]


@dataclass(frozen=True)
class Gates:
    windows: tuple[Window, ...] = ()
    cap: Cap | None = None


def _all(n: int) -> tuple[int, int, int]:
    return (n, n, n)


MIN, HOUR = 60.0, 3600.0

# --- filesystem (controllers/fs/limits.ts) --------------------------------------------------

FS_STAT = Gates((Window("fs:stat", MIN, (1200, 600, 300)),))
FS_READDIR = Gates((Window("fs:readdir", MIN, (600, 300, 120)), Window("fs:readdir-burst", 10.0, (120, 60, 30))))
FS_SEARCH = Gates((Window("fs:search", MIN, (60, 30, 10)),), Cap("fs:search", (5, 2, 2)))
FS_DF = Gates((Window("fs:df", MIN, (60, 30, 15)),))
FS_READ = Gates((Window("fs:read", MIN, (600, 300, 120)),), Cap("fs:read", (10, 5, 3)))
FS_WRITE = Gates((Window("fs:write", MIN, (300, 120, 30)),), Cap("fs:write", (15, 6, 3)))
FS_MULTIPART = Gates((Window("fs:multipart", MIN, (2400, 1200, 600)),))
FS_MUTATE = Gates((Window("fs:mutate", MIN, (1200, 900, 600)), Window("fs:mutate-sustained", HOUR, (6000, 3000, 1800))))
FS_SIGN = Gates((Window("fs:sign", MIN, (300, 150, 60)),))
FS_HELPER = Gates((Window("fs:helper", MIN, (120, 60, 30)),))
FS_POLL = Gates((Window("fs:poll", MIN, (240, 240, 120)),))
FS_BATCH = Gates((Window("fs:batch", MIN, (600, 300, 300)),), Cap("fs:batch", (5, 2, 2)))
FS_SIGNED_READ = Gates((Window("fs:signed-read", MIN, _all(3000), "fingerprint"),), Cap("fs:signed", _all(60), "fingerprint"))
FS_SIGNED_WRITE = Gates((Window("fs:signed-write", MIN, _all(600), "fingerprint"),),
                        Cap("fs:signed", _all(60), "fingerprint"))

# WebDAV (controllers/webdav/WebDAVController.ts:98-102): every verb on dav.<domain>, before auth
DAV = Gates((Window("dav", MIN, _all(600), "fingerprint"),), Cap("dav", _all(10), "fingerprint"))


def _auth(scope: str, seconds: float, fp: int, ip: int) -> Gates:
    return Gates((Window(scope, seconds, _all(fp), "fingerprint"), Window(scope + ":ip", seconds, _all(ip), "ip")))


ROUTES: dict[tuple[str, str], Gates] = {}


def _add(gates: Gates, *routes: str) -> None:
    for r in routes:
        methods, path = r.split(" ", 1)
        for m in methods.split(","):
            ROUTES[(m, path)] = gates


_add(FS_STAT, "POST /stat", "POST /fs/stat")
_add(FS_READDIR, "POST /readdir", "GET,POST /fs/readdir")
_add(FS_SEARCH, "POST /search", "POST /fs/search")
_add(FS_DF, "GET,POST /df")
_add(FS_READ, "GET /read", "POST /down", "GET /fs/read")
_add(FS_WRITE, "POST /fs/write", "POST /fs/batchWrite")
_add(FS_MULTIPART, "POST /fs/startWrite", "POST /fs/startBatchWrite", "POST /fs/completeWrite",
     "POST /fs/completeBatchWrite", "POST /fs/abortWrite", "POST /fs/signMultipartParts")
_add(FS_MUTATE, "POST /mkdir", "POST /touch", "POST /rename", "POST /delete", "POST /move", "POST /copy",
     "POST /fs/mkdir", "POST /fs/touch", "POST /fs/rename", "POST /fs/delete", "POST /fs/move", "POST /fs/copy",
     "POST /fs/mkshortcut")
_add(FS_SIGN, "POST /sign", "POST /auth/request-app-root-dir", "POST /auth/check-app-acl")
_add(FS_HELPER, "POST /open_item", "POST /get-launch-apps", "GET /get-launch-apps", "POST /suggest_apps",
     "POST /readdir-subdomains", "POST /update-fsentry-thumbnail")
_add(FS_POLL, "GET /cache/last-change-timestamp")
_add(FS_BATCH, "POST /batch")
_add(FS_SIGNED_READ, "GET /file", "GET /token-read")
_add(FS_SIGNED_WRITE, "POST /writeFile")

# --- authentication (controllers/auth/AuthController.ts) ------------------------------------

_add(_auth("login", 15 * MIN, 10, 50), "POST /login")
_add(_auth("login-otp", 30 * MIN, 15, 60), "POST /login/otp")
_add(_auth("login-recovery", HOUR, 10, 40), "POST /login/recovery-code")
_add(_auth("signup", 15 * MIN, 10, 50), "POST /signup")
_add(Gates((Window("login-wait", 15 * MIN, _all(100), "ip"),)), "POST /login/wait")
_add(Gates((Window("login-set", 15 * MIN, _all(60), "ip"),)), "POST /login/set")
_add(Gates((Window("confirm-email", 10 * MIN, _all(10)),)), "POST /confirm-email")
_add(Gates((Window("credential-mint", HOUR, _all(20)),)), "POST /auth/create-access-token")
_add(Gates((Window("app-token", MIN, _all(120)),)), "POST /auth/get-user-app-token")
_add(Gates((Window("session", MIN, _all(60)),)), "POST /logout")
TWO_FACTOR = Gates((Window("two-factor", 15 * MIN, _all(30)),))
PREFIXES: list[tuple[str, str, Gates]] = [("POST", "/auth/configure-2fa/", TWO_FACTOR)]

# --- drivers (controllers/drivers/DriverController.ts and each driver) ----------------------

_add(Gates((Window("drivers-call", MIN, _all(8000)),)), "POST /drivers/call")
_add(Gates((Window("drivers-list-interfaces", MIN, _all(60)),)), "GET /drivers/list-interfaces")
_add(Gates((Window("apps-name-available", MIN, _all(60)),)), "GET /apps/nameAvailable")
_add(Gates((Window("app-icon", MIN, _all(12000)),)), "GET /app-icon/")

AI_INTERFACES = ("puter-chat-completion", "puter-image-generation", "puter-ocr", "puter-tts", "puter-speech2txt",
                 "puter-speech2speech", "puter-video-generation")
AI = ((10.0, (200, 30, 20)), (20, 3, 2))
DRIVER_DEFAULT = ((MIN, _all(600)), None)

# interface -> {method or "*": ((seconds, limits), caps or None)}
DRIVERS: dict[str, dict[str, tuple[tuple[float, tuple[int, int, int]], tuple[int, int, int] | None]]] = {
    "puter-kvstore": {"*": ((10.0, (400, 400, 200)), (30, 15, 8)), "list": ((MIN, (240, 120, 60)), (5, 3, 2))},
    "puter-apps": {
        "*": ((10.0, (100, 100, 50)), (20, 10, 5)),
        **{m: ((MIN, (240, 120, 60)), (20, 10, 5)) for m in ("create", "update", "upsert", "delete")},
        "isNameAvailable": ((MIN, (60, 30, 10)), (20, 10, 5)),
    },
    "puter-subdomains": {"*": ((10.0, (200, 200, 100)), (20, 10, 5)), "create": ((MIN, (120, 60, 30)), (20, 10, 5))},
    "workers": {"*": ((MIN, (600, 300, 150)), (10, 5, 3)), "create": ((MIN, (120, 80, 40)), (5, 2, 2)),
                "destroy": ((MIN, (30, 20, 10)), (10, 5, 3))},
    **{iface: {"*": AI} for iface in AI_INTERFACES},
}


def driver_gates(iface: str, method: str) -> Gates:
    spec = DRIVERS.get(iface, {})
    (seconds, limits), caps = spec.get(method) or spec.get("*") or DRIVER_DEFAULT
    scope = f"driver:{iface}:{method}"
    return Gates((Window(scope, seconds, limits),), Cap(scope, caps) if caps else None)


def gates_for(method: str, path: str) -> Gates | None:
    g = ROUTES.get((method, path))
    if g is None and method == "HEAD":
        g = ROUTES.get(("GET", path))
    if g is None:
        for m, prefix, pg in PREFIXES:
            if m == method and path.startswith(prefix):
                return pg
        if method == "GET" and path.startswith("/app-icon/"):
            return ROUTES[("GET", "/app-icon/")]
    return g


# --- the limiter ----------------------------------------------------------------------------


class RateLimited(ApiError):
    def __init__(self, scope: str, kind: str):
        super().__init__(429, "too_many_requests", WINDOW_MESSAGE if kind == "window" else CONCURRENCY_MESSAGE)
        self.scope = scope
        self.kind = kind


def fingerprint(ip: str, headers: Any) -> str:
    raw = "\n".join([ip, headers.get("user-agent", ""), headers.get("accept-language", ""),
                     headers.get("accept-encoding", "")])
    return base64.urlsafe_b64encode(hashlib.sha256(raw.encode()).digest()).decode()[:16]


@dataclass
class Limiter:
    """Sliding windows and in-flight counters; ``clock`` gives seconds (the emulator's clock)."""

    clock: Callable[[], float]
    tier: str = "free"
    _hits: dict[str, deque[float]] = field(default_factory=dict)
    _inflight: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_tier(self, tier: str) -> None:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}")
        self.tier = tier

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()
            self._inflight.clear()

    def tier_of(self, user: Any) -> str | None:
        """The limits tier of ``user`` (a users row, or None); None = no limits at all."""
        if self.tier == "unlimited":
            return None
        if user is not None and user["is_temp"] and self.tier != "paid":
            return "temp"
        return self.tier

    def admit(self, gates: Gates, tier: str, keys: dict[str, str]) -> Callable[[], None] | None:
        """Pass the windows in order, then take a concurrency slot.  Raises ``RateLimited``;
        returns the slot's release function (or None when the route has no cap)."""
        now = self.clock()
        with self._lock:
            for w in gates.windows:
                key = f"{w.scope}:{keys[w.key]}"
                hits = self._hits.setdefault(key, deque())
                while hits and hits[0] <= now - w.seconds:
                    hits.popleft()
                if len(hits) >= w.limit(tier):
                    raise RateLimited(w.scope, "window")
                hits.append(now)
            cap = gates.cap
            if cap is None:
                return None
            ckey = f"{cap.scope}:{keys[cap.key]}"
            n = self._inflight.get(ckey, 0)
            if n >= cap.cap(tier):
                raise RateLimited(cap.scope, "concurrency")
            self._inflight[ckey] = n + 1

        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            with self._lock:
                left = self._inflight.get(ckey, 1) - 1
                if left > 0:
                    self._inflight[ckey] = left
                else:
                    self._inflight.pop(ckey, None)

        return release

    def inflight(self) -> dict[str, int]:
        with self._lock:
            return dict(self._inflight)
