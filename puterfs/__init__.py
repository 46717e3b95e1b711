"""puterfs: Puter's files and AI as a local FUSE mount, and an async Puter client."""

from __future__ import annotations

from puterfs.client import PuterClient  # noqa: F401
from puterfs.client._errors import (  # noqa: F401
    AlreadyExists,
    AuthenticationError,
    BadRequest,
    Conflict,
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
    ServerError,
    StreamError,
)

__version__ = "0.1.0"
