"""The one place where exceptions become errno values for FUSE.

Every pyfuse3 handler in `puterfs.fs` runs inside `fuse_errors`; only `pyfuse3.FUSEError`
leaves it. An unexpected exception becomes EIO and a log line, never a dead mount.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from puterfs.client import _errors as E

log = logging.getLogger(__name__)

# Codes that mean the *storage* is full (ENOSPC) rather than an AI/credit quota (EDQUOT).
_STORAGE_CODES = {"storage_limit_reached", "file_too_large"}


class FsError(Exception):
    """Raised inside the filesystem layer with the errno to report and a message for the log."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


def to_errno(exc: BaseException) -> int:
    """The errno that reports `exc` to the caller of a syscall."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, E.NotFound):
        return errno.ENOENT
    if isinstance(exc, E.AlreadyExists):
        return errno.EEXIST
    if isinstance(exc, E.NotEmpty):
        return errno.ENOTEMPTY
    if isinstance(exc, E.NotADirectory):
        return errno.ENOTDIR
    if isinstance(exc, E.IsADirectory):
        return errno.EISDIR
    if isinstance(exc, E.AuthenticationError):
        return errno.EACCES
    if isinstance(exc, E.PermissionDenied):
        return errno.EACCES
    if isinstance(exc, E.QuotaExceeded):
        return errno.ENOSPC if (exc.code in _STORAGE_CODES or exc.status == 413) else errno.EDQUOT
    if isinstance(exc, E.RateLimited):
        return errno.EAGAIN
    if isinstance(exc, E.PuterTimeout):
        return errno.ETIMEDOUT
    if isinstance(exc, E.PuterConnectionError):
        return errno.EIO
    if isinstance(exc, E.Conflict):
        return errno.EEXIST
    if isinstance(exc, E.PuterError) and "moderation" in ((exc.code or "") + " " + exc.message).lower():
        return errno.EACCES  # refused by moderation: a permission problem, not a malformed request
    if isinstance(exc, E.BadRequest):
        return errno.EINVAL
    if isinstance(exc, E.PuterError):
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


_running = 0  # handlers decorated by fuse_errors under way (all on the trio thread)


def handlers_running() -> int:
    """How many FUSE requests the mount is answering right now (the caller's own included)."""
    return _running


def fuse_errors(func: F) -> F:
    """Decorate a pyfuse3 handler so that any failure reaches the kernel as an errno (and
    count it while it runs: `handlers_running`)."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _running
        _running += 1
        try:
            return await func(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the mount must survive anything
            if not isinstance(exc, Exception):
                raise  # cancellation and KeyboardInterrupt propagate
            code = to_errno(exc)
            if isinstance(exc, (FsError, E.NotFound, E.AlreadyExists, E.NotEmpty)):
                log.debug("%s: %s -> %s", func.__name__, exc, errno.errorcode.get(code, code))
            elif isinstance(exc, E.PuterError):
                log.warning("%s failed: %s", func.__name__, exc)
            elif isinstance(exc, OSError) and exc.errno:
                # the cache disk refused (EFBIG, ENOSPC, ...): the caller gets that errno
                log.warning("%s: %s", func.__name__, exc)
            else:
                log.exception("%s: unexpected error, reporting EIO", func.__name__)
            raise pyfuse3.FUSEError(code) from None
        finally:
            _running -= 1

    return wrapper  # type: ignore[return-value]
