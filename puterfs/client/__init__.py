"""Puter HTTP client (knows HTTP, nothing of FUSE).

``PuterClient`` has every public method of putergenai 3.5.0 with its signature, and speaks
what the Puter 26.07 server accepts; its areas (``client.fs``, ``client.ai``, ``client.kv``,
``client.apps``, ``client.hosting``, ``client.workers``, ``client.auth``, ``client.net``)
are the richer API. Every failure is one of the exceptions below, all ``ValueError``s.
"""

from __future__ import annotations

from puterfs.client._browser import BrowserLogin, authme_url, browser_login, has_desktop_browser
from puterfs.client._chat import ChatEvent
from puterfs.client._client import PuterClient
from puterfs.client._errors import (
    AlreadyExists,
    AuthenticationError,
    BadAnswer,
    BadRequest,
    Conflict,
    EventsRefused,
    IsADirectory,
    ModelSubstituted,
    NotADirectory,
    NotEmpty,
    NotFound,
    OTPRequired,
    PermissionDenied,
    PuterConnectionError,
    PuterError,
    PuterTimeout,
    QuotaExceeded,
    RateLimited,
    ScriptedLoginRefused,
    ServerError,
    StreamError,
    error_from_body,
    error_from_response,
    is_temporary,
)
from puterfs.client._events import (
    CacheUpdated,
    Connected,
    Disconnected,
    EventStream,
    ItemEvent,
    Resync,
    SocketEvent,
)
from puterfs.client._presign import UploadSession
from puterfs.client._tokens import token_kind
from puterfs.client.fs import SignedRead

__all__ = [
    "AlreadyExists",
    "AuthenticationError",
    "BadAnswer",
    "BadRequest",
    "BrowserLogin",
    "CacheUpdated",
    "ChatEvent",
    "Conflict",
    "Connected",
    "Disconnected",
    "EventStream",
    "EventsRefused",
    "IsADirectory",
    "ItemEvent",
    "ModelSubstituted",
    "NotADirectory",
    "NotEmpty",
    "NotFound",
    "OTPRequired",
    "PermissionDenied",
    "PuterClient",
    "PuterConnectionError",
    "PuterError",
    "PuterTimeout",
    "QuotaExceeded",
    "RateLimited",
    "ScriptedLoginRefused",
    "Resync",
    "ServerError",
    "SignedRead",
    "SocketEvent",
    "StreamError",
    "UploadSession",
    "authme_url",
    "browser_login",
    "error_from_body",
    "error_from_response",
    "has_desktop_browser",
    "is_temporary",
    "token_kind",
]
