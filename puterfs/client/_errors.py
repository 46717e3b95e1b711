"""The exception hierarchy of the Puter client, and the one place that maps HTTP to it.

    PuterError (a ValueError)       base; .status, .code, .message, .body (never the token)
    ├── AuthenticationError         401, bad credentials, token_missing/reauth_required
    │   ├── OTPRequired             login needs a second factor: .otp_token
    │   └── ScriptedLoginRefused    /login wants a captcha (puter.com): use the browser flow
    ├── PermissionDenied            403
    ├── NotFound                    404 (subject_does_not_exist, not_found)
    ├── AlreadyExists               409 item_with_same_name_exists / "already exists" conflicts
    ├── NotEmpty                    409 "Directory is not empty"
    ├── Conflict                    other 409s
    ├── BadRequest                  400 and other 4xx
    │   ├── NotADirectory           dest_is_not_a_directory / readdir_of_non_directory
    │   ├── IsADirectory            cannot_read_a_directory
    │   └── ModelSubstituted        strict_model and the server used another model
    ├── QuotaExceeded               402, 413, storage_limit_reached, insufficient_funds
    ├── RateLimited                 429; .retry_after (seconds or None)
    ├── ServerError                 5xx, a 2xx body that says success:false with a 5xx meaning
    │   └── StreamError             an NDJSON ``error`` line after a stream started
    ├── EventsRefused               socket.io refused this client (a ``44`` for the token kind, host, protocol)
    └── PuterConnectionError        the server could not be reached or the connection broke
        └── PuterTimeout            a request exceeded its deadline

Every class is a ``ValueError``: putergenai 3.5.0 raised ``ValueError`` for each of these
failures somewhere (login wraps every HTTP and connection error in one; any driver or
API answer with ``success: false``, which the old backend gives for every kind of error,
raises one; so do bad input, a missing token and unparsable answers), so code written
for it with ``except ValueError`` still catches them. The mount tells them apart by
class (``puterfs/fs/errors.py``), never by ``ValueError``.

`error_from_response` understands both error styles of the API reference (§3): the 26.07
``{"error","message","code"}`` with the real status, and the old backend's plain-text
bodies and HTTP 200 ``{"success": false, "error": {...} | "..."}`` driver envelopes.
"""

from __future__ import annotations

import json
from typing import Any


class PuterError(ValueError):
    """Base class of every error the client raises (a ``ValueError``, as putergenai's were)."""

    status: int | None
    code: str | None
    message: str

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body

    def __str__(self) -> str:
        parts = [self.message]
        extra = []
        if self.status is not None:
            extra.append(f"HTTP {self.status}")
        if self.code:
            extra.append(f"code {self.code}")
        if extra:
            parts.append("(" + ", ".join(extra) + ")")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"


class AuthenticationError(PuterError):
    pass


class OTPRequired(AuthenticationError):
    """The account has two-factor authentication: finish with ``login(..., otp=code)``
    or ``login_otp(exc.otp_token, code)``."""

    def __init__(self, message: str, *, otp_token: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.otp_token = otp_token

    def __repr__(self) -> str:  # never show the otp token
        return f"OTPRequired({self.message!r})"


class ScriptedLoginRefused(AuthenticationError):
    """The server does not take a password from a script (puter.com: a captcha is required).
    Sign in through the browser instead (``browser_login`` / ``PuterClient.login_browser``)."""


class PermissionDenied(PuterError):
    pass


class NotFound(PuterError):
    pass


class AlreadyExists(PuterError):
    pass


class NotEmpty(PuterError):
    pass


class Conflict(PuterError):
    pass


class BadRequest(PuterError):
    pass


class NotADirectory(BadRequest):
    pass


class IsADirectory(BadRequest):
    pass


class ModelSubstituted(BadRequest):
    def __init__(self, message: str, *, requested: str, used: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.requested = requested
        self.used = used


class QuotaExceeded(PuterError):
    pass


class RateLimited(PuterError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(PuterError):
    pass


class StreamError(ServerError):
    pass


class BadAnswer(ServerError):
    """A 2xx answer that is not what the server sends: a proxy's or captive portal's HTML
    page, JSON cut short, a body shorter than announced or not matching its MD5 ETag, an
    answer of the wrong shape. The request may or may not have been carried out; an
    idempotent one is sent again (``_retry.py``), another one is reconciled with the
    server's state."""


class EventsRefused(PuterError):
    """The socket.io endpoint will not serve this client: the token is of a kind it refuses
    (a full-api-access or app token gets ``44 only user tokens accepted``), is missing or
    invalid, or the host or protocol is not allowed.  Retrying cannot help; ``.code`` says why:
    ``user_token_required``, ``reauth_required``, ``token_missing``, ``auth_failed``,
    ``host_not_allowed``, ``unsupported_protocol``."""


_SOCKET_REFUSALS = {
    "socket auth: only user tokens accepted": "user_token_required",
    "socket auth token missing": "token_missing",
    "socket auth token empty": "token_missing",
    "reauth_required": "reauth_required",
}


def events_refusal(data: Any) -> EventsRefused:
    """The error for a socket.io CONNECT_ERROR (``44``) payload."""
    message = data.get("message") if isinstance(data, dict) else None
    message = message if isinstance(message, str) and message else "socket.io refused the connection"
    code = _SOCKET_REFUSALS.get(message, "auth_failed")
    text = {
        "user_token_required": "the socket refuses this token: only a user (session) token gets change "
                               "events; a full-api-access or app token does not",
        "token_missing": "the socket needs a token",
        "reauth_required": "the socket refuses this token: sign in again",
    }.get(code, f"the socket refused the connection: {message}")
    return EventsRefused(text, code=code, body=data)


def engineio_error(status: int, content: bytes) -> PuterError:
    """An Engine.IO HTTP error (``{"code": n, "message": ...}``): permanent ones are
    `EventsRefused`; a lost session and anything else are `ServerError`/`PuterConnectionError`
    (the caller reconnects)."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    eio_code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else None
    message = message or f"socket.io answered HTTP {status}"
    if status == 403 and eio_code == 4:
        return EventsRefused(f"the socket refuses this host: {message}", status=status, code="host_not_allowed",
                             body=body)
    if status == 400 and eio_code == 5:
        return EventsRefused(message, status=status, code="unsupported_protocol", body=body)
    if status == 400 and eio_code == 1:
        return PuterConnectionError(f"socket session lost: {message}", status=status, code="session_unknown",
                                    body=body)
    if status == 429:
        return RateLimited(message, status=status, code="too_many_requests", body=body)
    return ServerError(message, status=status, body=body)


class PuterConnectionError(PuterError):
    pass


class PuterTimeout(PuterConnectionError):
    pass


_CODE_MAP: dict[str, type[PuterError]] = {
    "token_missing": AuthenticationError,
    "reauth_required": AuthenticationError,
    "token_auth_failed": AuthenticationError,
    "token_expired": AuthenticationError,
    "password_mismatch": AuthenticationError,
    "password_required": AuthenticationError,
    "account_suspended": AuthenticationError,
    "user_not_found": AuthenticationError,
    "upstream_auth_failed": ServerError,
    "forbidden": PermissionDenied,
    "permission_denied": PermissionDenied,
    "app_or_api_token_required": PermissionDenied,
    "email_confirmation_required": PermissionDenied,
    "immutable": PermissionDenied,
    "cannot_write_to_root": PermissionDenied,
    "subject_does_not_exist": NotFound,
    "source_does_not_exist": NotFound,
    "dest_does_not_exist": NotFound,
    "not_found": NotFound,
    "interface_not_found": NotFound,
    "method_not_found": NotFound,
    "item_with_same_name_exists": AlreadyExists,
    "app_name_already_in_use": AlreadyExists,
    "not_empty": NotEmpty,
    "dest_is_not_a_directory": NotADirectory,
    "readdir_of_non_directory": NotADirectory,
    "cannot_read_a_directory": IsADirectory,
    "insufficient_funds": QuotaExceeded,
    "subscription_required": QuotaExceeded,
    "storage_limit_reached": QuotaExceeded,
    "file_too_large": QuotaExceeded,
    "too_many_requests": RateLimited,
    "rate_limit_exceeded": RateLimited,
    "upstream_rate_limited": RateLimited,
    "internal_error": ServerError,
    "db_unavailable": ServerError,
    "no_implementation_available": ServerError,
    "upstream_provider_unavailable": ServerError,
    "upstream_failed": ServerError,
}


def _class_for(status: int | None, code: str | None, message: str) -> type[PuterError]:
    if code == "conflict":
        low = message.lower()
        if "not empty" in low:
            return NotEmpty
        if "already exists" in low:
            return AlreadyExists
        if "not a directory" in low:
            return NotADirectory
        return Conflict
    if code and code in _CODE_MAP:
        return _CODE_MAP[code]
    if status is None:
        return PuterError
    if status == 401:
        return AuthenticationError
    if status in (402, 413):
        return QuotaExceeded
    if status == 403:
        return PermissionDenied
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status == 429:
        return RateLimited
    if status >= 500:
        return ServerError
    if status >= 400:
        return BadRequest
    return ServerError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import datetime as _dt
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = _dt.datetime.now(when.tzinfo or _dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


def error_from_body(
    status: int | None,
    body: Any,
    *,
    retry_after: float | None = None,
    default_message: str | None = None,
) -> PuterError:
    """Build the exception for an error body in any of the server's styles.

    ``body`` is parsed JSON (dict, str, ...) or raw text. An old-backend driver
    envelope ``{"success": false, "error": {...}}`` carries its intended status inside.
    """
    code: str | None = None
    message: str | None = None
    if isinstance(body, dict):
        err = body.get("error")
        if body.get("success") is False and isinstance(err, dict):
            code = err.get("code")
            message = err.get("message")
            if isinstance(err.get("status"), int):
                status = err["status"]
        elif body.get("success") is False and isinstance(err, str):
            message = err
        else:
            code = body.get("code") if isinstance(body.get("code"), str) else None
            message = body.get("message") if isinstance(body.get("message"), str) else None
            if message is None and isinstance(err, str):
                message = err
            elif message is None and isinstance(err, dict):
                message = err.get("message")
                code = code or err.get("code")
    elif isinstance(body, str) and body.strip():
        message = body.strip()[:500]
    if not message:
        message = default_message or (f"HTTP {status}" if status else "Puter request failed")
    cls = _class_for(status, code, message)
    if cls is RateLimited:
        return RateLimited(message, status=status, code=code, body=body, retry_after=retry_after)
    return cls(message, status=status, code=code, body=body)


def error_from_response(status: int, headers: Any, content: bytes) -> PuterError:
    """Map a failed HTTP response (status, headers mapping, raw body) to an exception."""
    text = content.decode("utf-8", errors="replace")
    body: Any = text
    ctype = ""
    if headers is not None:
        ctype = headers.get("content-type", "") or ""
    if "json" in ctype or text[:1] in "{[":
        try:
            body = json.loads(text)
        except ValueError:
            body = text
    retry_after = parse_retry_after(headers.get("retry-after") if headers is not None else None)
    return error_from_body(status, body, retry_after=retry_after)


def is_temporary(exc: BaseException) -> bool:
    """Whether retrying the same idempotent request may succeed."""
    if isinstance(exc, (RateLimited, PuterConnectionError, BadAnswer)):
        return True
    if isinstance(exc, ServerError) and not isinstance(exc, StreamError):
        return exc.status is None or exc.status >= 500
    return False
