"""The token of a running mount: refused tokens pause it, a new token resumes it.

A 401 makes the mount's :class:`~puterfs.fs.remote.Remote` stop sending (every call that
needs the server fails at once with EACCES, dirty files stay in the cache, and the state
file and the log say "the token was refused: run `puterfs login`"). :class:`MountAuth`
watches the token file the mount was started with: when it changes (``puterfs login``
rewrites it and sends SIGHUP; SIGHUP alone also rereads it; an edit by hand is noticed
within a few seconds), the new token is checked with ``/whoami`` and, if the server takes
it, put into the client, the refusal is lifted and every upload that failed meanwhile is
retried at once. Nothing is lost and nothing is remounted.

A token from ``PUTER_TOKEN``/``PUTER_AUTH_TOKEN`` cannot be renewed this way (the
environment of a running process does not change); the state file says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from puterfs import config
from puterfs.client import token_kind
from puterfs.client._errors import AuthenticationError, PuterError
from puterfs.fs.remote import TOKEN_REFUSED

log = logging.getLogger("puterfs.mount")

POLL_INTERVAL = 2.0


def _stamp(path: Path | None) -> tuple[int, int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class MountAuth:
    def __init__(
        self,
        client: Any,
        remote: Any,
        *,
        token_file: Path | None,
        token_source: str,
        on_resume: Callable[[], None],
        on_change: Callable[[], None],
    ) -> None:
        self.client = client
        self.remote = remote
        self.token_file = token_file
        self.token_source = token_source
        self._on_resume = on_resume
        self._on_change = on_change
        self._stamp = _stamp(token_file)
        self._wake = trio.Event()
        self.renewals = 0

    def state(self) -> dict[str, Any]:
        """The ``auth`` object of the mount's state file."""
        refused = self.remote.token_refused
        if refused is None:
            message = None
        elif self.token_file is None:
            message = f"the token was refused: the mount reads it from {self.token_source}; set a new one and remount"
        else:
            message = TOKEN_REFUSED
        return {
            "state": "refused" if refused is not None else "ok",
            "message": message,
            "detail": refused,
            "token_kind": token_kind(self.client.token),
            "token_source": self.token_source,
            "token_file": str(self.token_file) if self.token_file is not None else None,
        }

    def upload_block(self) -> BaseException | None:
        """For the upload queue: why no upload can succeed now, or None."""
        if self.remote.token_refused is None:
            return None
        return AuthenticationError(f"upload: {TOKEN_REFUSED}", status=401, code="token_refused")

    def reread(self) -> None:
        """SIGHUP: look at the token file now."""
        self._wake.set()

    async def run(self) -> None:
        """Watch the token file; renew when it changed or a SIGHUP asked."""
        while True:
            with trio.move_on_after(POLL_INTERVAL):
                await self._wake.wait()
            asked = self._wake.is_set()
            self._wake = trio.Event()
            stamp = _stamp(self.token_file)
            if asked or stamp != self._stamp:
                self._stamp = stamp
                await self.renew(asked=asked)

    async def renew(self, *, asked: bool = False) -> bool:
        """Take the token file's token if the server accepts it. True when the mount may go on."""
        if self.token_file is None:
            if asked:
                log.info("SIGHUP: the token comes from %s and cannot be reread", self.token_source)
            return self.remote.token_refused is None
        token = config.read_token_file(self.token_file)
        if token is None:
            if asked or self.remote.token_refused is None:
                log.warning("the token file %s is missing or empty; the mount keeps its token", self.token_file)
            return self.remote.token_refused is None
        if token == self.client.token and self.remote.token_refused is None:
            return True
        if token == self.client.token and not asked:
            return False  # still the refused token; wait for a new one
        old = self.client.token
        self.client.token = token
        try:
            await self.client.whoami()
        except AuthenticationError as exc:
            self.client.token = old if self.remote.token_refused is None else token
            if self.remote.token_refused is None:
                log.warning("the new token in %s was refused (%s); keeping the current one", self.token_file,
                            exc.message)
            else:
                self.remote.refuse_auth(exc.message)
                log.warning("the token in %s was refused too (%s): run `puterfs login`", self.token_file,
                            exc.message)
            self._on_change()
            return False
        except PuterError as exc:
            log.info("could not check the new token now (%s); using it", exc)
        self.renewals += 1
        was_refused = self.remote.token_refused is not None
        self.remote.resume_auth()
        log.info("now using the token in %s (%s)", self.token_file, token_kind(token))
        if was_refused:
            self._on_resume()
        self._on_change()
        return True
