"""``PuterClient``: an async client for Puter's HTTP API (filesystem, auth, AI drivers).

Public names and signatures follow putergenai 3.5.0 so that code written for it keeps
working, but every request is what the Puter 26.07 server accepts (see
``/work/shared/puter-api/README.md`` §10 for the list of what putergenai got wrong).

Design rules:

* Only httpx and anyio are awaited, so the client runs under asyncio and trio alike.
* Every request goes through :meth:`PuterClient._send`, which adds the token, applies
  the retry policy of the call (see ``_retry.py``) and turns every failure into an
  exception from ``_errors.py`` (HTTP bodies through ``error_from_response``; httpx
  errors into ``PuterConnectionError``/``PuterTimeout`` with ``from exc``).
* The token lives in one attribute and is only ever put into the ``Authorization``
  header; it is not logged, not in ``repr``, not in exceptions, never in a URL.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import posixpath
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx

from puterfs.client._browser import DEFAULT_TIMEOUT as BROWSER_LOGIN_TIMEOUT
from puterfs.client._browser import browser_login, default_show_url, refused_scripted_login
from puterfs.client._chat import (
    ChatEvent,
)
from puterfs.client._errors import (
    AuthenticationError,
    BadRequest,
    IsADirectory,
    NotFound,
    OTPRequired,
    PermissionDenied,
    PuterConnectionError,
    PuterError,
    PuterTimeout,
    RateLimited,
    ServerError,
    error_from_body,
    error_from_response,
    parse_retry_after,
)
from puterfs.client._facade import PutergenaiFacade
from puterfs.client._hosts import HostRoutingTransport, with_domain
from puterfs.client._models import CHAT_DRIVER, SEED_MODEL_IDS

if TYPE_CHECKING:
    from puterfs.client._events import EventStream
from puterfs.client._multipart import Content, MultipartBody, UploadSource, guess_type
from puterfs.client._pacing import Budget, Pacer, Ticket, scopes_for
from puterfs.client._presign import LARGE_FILE, UploadSession, write_large
from puterfs.client._retry import NOT_SENT_ERRORS, Idempotency, RetryPolicy, may_retry
from puterfs.client.ai import AI
from puterfs.client.apps import Apps
from puterfs.client.auth import Auth
from puterfs.client.hosting import Hosting
from puterfs.client.kv import KV
from puterfs.client.net import Net
from puterfs.client.workers import Workers
from puterfs.config import derive_web_url

log = logging.getLogger(__name__)

__all__ = ["PuterClient", "ChatEvent"]

DEFAULT_API_URL = "https://api.puter.com"
DEFAULT_WEB_URL = "https://puter.com"
USER_AGENT = "puterfs/0.1 (+httpx)"

IDEMPOTENT = Idempotency.IDEMPOTENT
SAFE_REJECTIONS = Idempotency.SAFE_REJECTIONS
CONNECT_ONLY = Idempotency.CONNECT_ONLY

MODELS_TTL = 3600.0
# /batch accepts at most 64 files per request (API reference §5.6).
BATCH_MAX_FILES = 64
# Writes that carry entry metadata go as JSON (/fs/write, /fs/batchWrite: /batch has no
# metadata channel), their bytes base64 in the body; the server's JSON parser takes 50 MB.
JSON_WRITE_MAX = 8 << 20  # bytes of content per JSON request; bigger files: /batch, then /move new_metadata
READDIR_PAGE = 1000
# A directory listing bigger than this many pages means the server loops on cursors.
READDIR_MAX_PAGES = 100_000
_warned_insecure = False

_NO_BODY = object()


def _warn_insecure_once() -> None:
    global _warned_insecure
    if not _warned_insecure:
        _warned_insecure = True
        warnings.warn(
            "PuterClient(ignore_ssl=True): TLS certificates are not verified; the token can be "
            "intercepted by anyone on the network path",
            stacklevel=3,
        )


def _map_transport_error(exc: httpx.RequestError) -> PuterConnectionError:
    """httpx's transport errors as client exceptions (the message never has the token)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return PuterTimeout(f"request timed out ({type(exc).__name__}: {detail})")
    return PuterConnectionError(f"connection to Puter failed ({type(exc).__name__}: {detail})")


_OPTION_SPELLINGS = {
    "overwrite": "overwrite",
    "dedupeName": "dedupe_name",
    "dedupe_name": "dedupe_name",
    "createMissingParents": "create_missing_parents",
    "create_missing_parents": "create_missing_parents",
}


def _fs_options(options: dict[str, Any] | None, allowed: tuple[str, ...], what: str) -> dict[str, bool]:
    """putergenai/puter.js-style options (camelCase or snake_case) as snake_case booleans;
    an unknown option is a :class:`BadRequest` rather than silently ignored."""
    out: dict[str, bool] = {}
    for key, value in (options or {}).items():
        name = _OPTION_SPELLINGS.get(key)
        if name is None or name not in allowed:
            known = ", ".join(k for k, v in _OPTION_SPELLINGS.items() if v in allowed)
            raise BadRequest(f"{what}: unknown option {key!r} (known: {known})")
        if not isinstance(value, bool):
            raise BadRequest(f"{what}: option {key!r} must be True or False")
        out[name] = value
    if out.get("overwrite") and out.get("dedupe_name"):
        raise BadRequest(f"{what}: overwrite and dedupeName cannot both be set")
    return out


def _split(path: str) -> tuple[str, str]:
    parent, name = posixpath.split(path)
    return parent or "/", name


class PuterClient(PutergenaiFacade):
    """Async client for Puter (filesystem, account, AI drivers).

    Use it as ``async with PuterClient(token=...) as client:``. ``token``, ``api_url``
    and ``web_url`` default to the environment variables ``PUTER_TOKEN`` (or puter.js's
    ``PUTER_AUTH_TOKEN``),
    ``PUTER_API_URL`` and ``PUTER_WEB_URL``. ``transport`` lets tests plug in
    ``httpx.MockTransport`` or any other httpx transport.

    Paths may be absolute (``/user/x``), home-relative (``~``, ``~/x``) or relative
    (``x``, resolved against :meth:`home`).
    """

    def __init__(
        self,
        token: str | None = None,
        ignore_ssl: bool = False,
        auto_update_models: bool = False,
        *,
        api_url: str | None = None,
        web_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        ai_timeout: float = 600.0,
        max_retries: int = 6,
        retry_base_delay: float = 0.25,
        retry_max_delay: float = 30.0,
        tier: str | None = None,
        budgets: dict[str, Budget] | None = None,
        deadline: float | None = 300.0,
        domain: str | None = None,
    ) -> None:
        if token is None:
            token = os.environ.get("PUTER_TOKEN") or os.environ.get("PUTER_AUTH_TOKEN") or None
        self._token: str | None = token
        self.ignore_ssl = ignore_ssl
        self.auto_update_models = auto_update_models
        explicit_api = api_url or os.environ.get("PUTER_API_URL")
        if not explicit_api and domain:
            explicit_api = f"https://api.{domain.strip().rstrip('.')}"
        self.api_url = (explicit_api or DEFAULT_API_URL).rstrip("/")
        explicit_web = web_url or os.environ.get("PUTER_WEB_URL")
        # Without a web URL, the one that goes with the API URL (as the CLI derives it).
        self.web_url = (explicit_web or derive_web_url(self.api_url)).rstrip("/")
        # Where names connect to when they do not resolve (see _hosts.py).
        routes: dict[str, str] = {}
        self.domain = domain.strip().lower().rstrip(".") if domain else None
        if self.domain:
            given_api = self.api_url
            self.api_url, api_addr = with_domain(given_api, self.domain, api=True)
            if explicit_web:
                self.web_url, web_addr = with_domain(explicit_web.rstrip("/"), self.domain, api=False)
            elif api_addr is not None:
                self.web_url, web_addr = with_domain(given_api, self.domain, api=False)
            else:  # https://api.<domain> -> https://<domain>
                parts = urlsplit(self.api_url)
                self.web_url, web_addr = f"{parts.scheme}://{parts.netloc.removeprefix('api.')}", None
            if api_addr or web_addr:
                routes[self.domain] = api_addr or web_addr  # type: ignore[assignment]
        # One scheduler per client: Puter's limits are per user (see _pacing.py).
        chosen = tier or os.environ.get("PUTER_TIER")
        self._pacer = Pacer(chosen or "free", budgets)
        # not chosen: free, or temp once /whoami says the account is a temporary one
        self._tier_chosen = chosen is not None
        self._deadline = deadline
        self.username: str | None = None
        self.model_to_driver: dict[str, str] = dict.fromkeys(SEED_MODEL_IDS, CHAT_DRIVER)
        self._timeout = httpx.Timeout(timeout)
        # AI answers can take minutes to start; streams get no total deadline at all,
        # only this bound on the silence between two chunks.
        self._ai_timeout = httpx.Timeout(timeout, read=ai_timeout)
        self._retry = RetryPolicy(max_retries, retry_base_delay, retry_max_delay)
        if ignore_ssl:
            _warn_insecure_once()
        self._transport = transport
        # Puter's areas, as puter.js has them (the richer API; the flat putergenai
        # methods call into these).
        self.kv = KV(self)
        self.apps = Apps(self)
        self.hosting = Hosting(self)
        self.workers = Workers(self)
        self.auth = Auth(self)
        self.net = Net(self)
        self.ai = AI(self)
        if transport is None:
            # *.localhost names reach 127.0.0.1, a --domain's names the address given
            transport = HostRoutingTransport(
                httpx.AsyncHTTPTransport(verify=not ignore_ssl, trust_env=True), routes
            )
        self._http = httpx.AsyncClient(
            transport=transport,
            verify=not ignore_ssl,
            timeout=self._timeout,
            # Redirects are answers to look at (e.g. /whoami on the wrong host is 302),
            # and following one could carry the token to another host.
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            trust_env=True,
        )

    # ------------------------------------------------------------------ basics

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value or None

    def __repr__(self) -> str:
        auth = "set" if self._token else "none"
        return f"PuterClient(api_url={self.api_url!r}, username={self.username!r}, token=<{auth}>)"

    async def __aenter__(self) -> PuterClient:
        if self.auto_update_models:
            try:
                await self.update_model_mappings()
            except PuterError as exc:
                log.warning("could not refresh the model list: %s", exc)
        return self

    async def __aexit__(self, exc_type: object, exc_val: object, exc_tb: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def close(self) -> None:
        """Alias of :meth:`aclose` (putergenai's name)."""
        await self.aclose()

    # ---------------------------------------------------------------- transport

    def _headers(self, auth: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers: dict[str, str] = dict(extra or {})
        if auth:
            if not self._token:
                raise AuthenticationError("not logged in: call login() or pass a token", code="token_missing")
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _send(
        self,
        method: str,
        url: str,
        *,
        idem: Idempotency,
        json_body: Any = _NO_BODY,
        params: dict[str, Any] | None = None,
        multipart: MultipartBody | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        ai: bool = False,
        stream: bool = False,
        gone_ok_on_retry: bool = False,
        content: Any = None,
    ) -> httpx.Response:
        """Send one logical request, retrying as ``idem`` allows.

        Every attempt first waits for room in the account's budgets (``_pacing.py``). A
        429 tightens the budget and is retried (when ``idem`` allows) as soon as the
        window has slid, for as long as the call's ``deadline`` lasts; other retryable
        failures get at most ``max_retries`` retries with capped backoff, also within
        the deadline. Returns a response with a 2xx status. With ``stream=True`` the body
        is not read and the caller must ``aclose()`` it. ``gone_ok_on_retry`` makes a 404
        answer to a retry a success (for deletes). ``content`` is a raw body (bytes).
        """
        scopes = self._scopes(method, url, None if json_body is _NO_BODY else json_body)
        end = anyio.current_time() + self._deadline if self._deadline is not None else math.inf
        attempt = 0  # failures other than 429
        refusals = 0  # 429s
        tries = 0
        last_refusal: RateLimited | None = None
        while True:
            tries += 1
            try:
                ticket = await self._pacer.acquire(scopes, deadline=end) if scopes else None
            except RateLimited:
                if last_refusal is not None:
                    raise last_refusal from None  # the server's own answer says more
                raise
            request_headers = self._headers(auth, headers)
            body: Any = content
            upload: Any = None
            if json_body is not _NO_BODY:
                body = json.dumps(json_body).encode("utf-8")
                request_headers["Content-Type"] = "application/json"
            elif multipart is not None:
                body = upload = multipart.stream()
                request_headers["Content-Type"] = multipart.content_type
                request_headers["Content-Length"] = str(multipart.content_length)
            request = self._http.build_request(
                method,
                url,
                params=params,
                content=body,
                headers=request_headers,
                timeout=self._ai_timeout if ai else self._timeout,
            )
            try:
                response = await self._http.send(request, stream=True)
            except httpx.RequestError as exc:
                err = _map_transport_error(exc)
                sent = not isinstance(exc, NOT_SENT_ERRORS)
                if ticket is not None and sent:
                    ticket.release()
                elif ticket is not None:
                    ticket.refund()  # the server never saw it
                if upload is not None:
                    await upload.aclose()  # closes the file it was reading from
                attempt += 1
                delay = self._retry.delay(attempt)
                if attempt <= self._retry.max_retries and may_retry(idem, err, sent=sent) and _before(end, delay):
                    log.info("%s %s: %s; retry %d in %.2fs", method, _path_of(url), err, attempt, delay)
                    await anyio.sleep(delay)
                    continue
                raise err from exc
            except BaseException:
                if ticket is not None:
                    ticket.release()
                raise
            if upload is not None:
                # The server may answer before reading the whole body (an early error).
                await upload.aclose()
            status = response.status_code
            if not 200 <= status < 300:
                try:
                    raw = await response.aread()
                except httpx.RequestError:
                    raw = b""
                finally:
                    await response.aclose()
                err = error_from_response(status, response.headers, raw)
                if isinstance(err, RateLimited):
                    refusals += 1
                    last_refusal = err
                    concurrent = "concurrent" in str(err.message).lower()
                    if ticket is not None:
                        ticket.rate_limited(concurrent=concurrent, retry_after=err.retry_after)
                        ticket.release()
                        # the next acquire waits for the tightened window / a free slot
                        delay = 0.0
                    else:
                        delay = self._retry.delay(refusals, err.retry_after)
                    if may_retry(idem, err, sent=True) and _before(end, delay):
                        log.info(
                            "%s %s: HTTP 429 (%s); retry %d after the window slides",
                            method, _path_of(url), "in flight" if concurrent else "window", refusals,
                        )
                        if delay:
                            await anyio.sleep(delay)
                        continue
                    raise err
                if ticket is not None:
                    ticket.release()
                if gone_ok_on_retry and tries > 1 and isinstance(err, NotFound):
                    return response
                attempt += 1
                delay = self._retry.delay(attempt, parse_retry_after(response.headers.get("retry-after")))
                if attempt <= self._retry.max_retries and may_retry(idem, err, sent=True) and _before(end, delay):
                    log.info("%s %s: HTTP %d; retry %d in %.2fs", method, _path_of(url), status, attempt, delay)
                    await anyio.sleep(delay)
                    continue
                raise err
            if stream:
                if ticket is not None and response.is_closed:
                    ticket.release()  # the body was complete on arrival
                elif ticket is not None:
                    # the server holds the in-flight slot until the whole answer is sent
                    response.stream = _ReleasingStream(response.stream, ticket)
                return response
            try:
                await response.aread()
            except httpx.RequestError as exc:
                err = _map_transport_error(exc)
                attempt += 1
                delay = self._retry.delay(attempt)
                if attempt <= self._retry.max_retries and may_retry(idem, err, sent=True) and _before(end, delay):
                    await anyio.sleep(delay)
                    continue
                raise err from exc
            finally:
                await response.aclose()
                if ticket is not None:
                    ticket.release()
            return response

    def _scopes(self, method: str, url: str, json_body: Any) -> tuple[str, ...]:
        """The rate-limit scopes of a request to our own API host (others are not paced)."""
        if not url.startswith(self.api_url + "/"):
            return ()
        return scopes_for(method, urlsplit(url).path, json_body)

    @property
    def pacer(self) -> Pacer:
        """The request scheduler of this client (its budgets and statistics)."""
        return self._pacer

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(
                f"expected JSON, got {response.headers.get('content-type') or 'no content type'}",
                status=response.status_code,
            ) from exc

    async def _post_json(
        self, path: str, body: Any, *, idem: Idempotency, web: bool = False, auth: bool = True
    ) -> Any:
        base = self.web_url if web else self.api_url
        response = await self._send("POST", base + path, idem=idem, json_body=body, auth=auth)
        return self._json(response)

    async def _get_json(
        self, path: str, *, idem: Idempotency = IDEMPOTENT, auth: bool = True, params: dict[str, Any] | None = None
    ) -> Any:
        response = await self._send("GET", self.api_url + path, idem=idem, auth=auth, params=params)
        return self._json(response)

    # ------------------------------------------------------------------ account

    def _take_login(self, data: Any) -> str:
        if not isinstance(data, dict):
            raise AuthenticationError("unexpected login answer")
        if data.get("next_step") == "otp":
            otp_token = data.get("otp_jwt_token")
            if not isinstance(otp_token, str):
                raise AuthenticationError("the server asked for a second factor but sent no otp token")
            raise OTPRequired(
                "this account uses two-factor authentication: an OTP code is required",
                otp_token=otp_token,
                status=202,
                code="otp_required",
            )
        token = data.get("token")
        if not data.get("proceed") or not isinstance(token, str) or not token:
            raise AuthenticationError("login failed: wrong credentials or code", status=200)
        self._token = token
        user = data.get("user")
        if isinstance(user, dict) and isinstance(user.get("username"), str):
            self.username = user["username"]
        return token

    async def login(self, username: str, password: str, *, otp: str | None = None) -> str:
        """Log in on the web host; store and return the session token.

        With two-factor authentication the server answers ``202 next_step:"otp"``: the
        login is finished with ``otp`` if given, otherwise :class:`OTPRequired` is
        raised carrying ``otp_token`` for :meth:`login_otp`. A server that refuses a
        scripted login (puter.com wants a captcha) raises :class:`ScriptedLoginRefused`, a
        ``ValueError`` whose message names the browser flow (:meth:`login_browser`).
        """
        if not username or not password:
            raise BadRequest("username and password are required")
        field = "email" if "@" in username else "username"
        # No Origin header: the server refuses any Origin but its own GUI's (§2.1).
        with refused_scripted_login(self.web_url):
            response = await self._send(
                "POST",
                self.web_url + "/login",
                idem=CONNECT_ONLY,
                json_body={field: username, "password": password},
                auth=False,
            )
        data = self._json(response)
        try:
            return self._take_login(data)
        except OTPRequired as exc:
            if otp is None:
                raise
            return await self.login_otp(exc.otp_token, otp)

    async def login_otp(self, otp_token: str, code: str) -> str:
        """Finish a two-factor login; a wrong code raises :class:`AuthenticationError`."""
        with refused_scripted_login(self.web_url):
            response = await self._send(
                "POST",
                self.web_url + "/login/otp",
                idem=CONNECT_ONLY,
                json_body={"token": otp_token, "code": str(code).strip()},
                auth=False,
            )
        data = self._json(response)
        if isinstance(data, dict) and data.get("proceed") is False:
            raise AuthenticationError("wrong OTP code", status=200, code="otp_invalid")
        return self._take_login(data)

    async def login_browser(
        self,
        *,
        open_browser: bool | Any = True,
        show_url: Any = default_show_url,
        timeout: float = BROWSER_LOGIN_TIMEOUT,
        port: int = 0,
    ) -> str:
        """Sign in through Puter's AuthMe page in a browser; store and return the token.

        Works where :meth:`login` cannot (puter.com). See :func:`puterfs.client.browser_login`
        for the arguments; the token is a full-api-access token, checked with ``/whoami``.
        """
        result = await browser_login(
            self.web_url, api_url=self.api_url, open_browser=open_browser, show_url=show_url,
            timeout=timeout, port=port, ignore_ssl=self.ignore_ssl, transport=self._transport,
        )
        self._token = result.token
        self.username = result.username
        return result.token

    async def logout(self) -> None:
        """End the session on the server and forget the token."""
        try:
            if self._token:
                await self._send("POST", self.web_url + "/logout", idem=CONNECT_ONLY, json_body={})
        finally:
            self._token = None
            self.username = None

    async def whoami(self) -> dict[str, Any]:
        data = await self._get_json("/whoami")
        if not isinstance(data, dict):
            raise ServerError("unexpected /whoami answer")
        if isinstance(data.get("username"), str):
            self.username = data["username"]
        if not self._tier_chosen and data.get("is_temp") is True and self._pacer.tier == "free":
            self._pacer.set_tier("temp")  # a temporary account has the temp tier's budgets
        return data

    @property
    def tier(self) -> str:
        """The rate-limit tier the client paces itself to (see docs/client.md)."""
        return self._pacer.tier

    async def home(self) -> str:
        """The user's home directory, ``/<username>`` (one ``whoami`` per client)."""
        if not self.username:
            await self.whoami()
        if not self.username:
            raise ServerError("/whoami did not name the user")
        return "/" + self.username

    # -------------------------------------------------------------- filesystem

    async def _abs(self, path: str | os.PathLike[str]) -> str:
        """An absolute, normalised Puter path."""
        path = os.fspath(path)
        if not isinstance(path, str) or not path:
            raise BadRequest("empty path")
        if path == "~" or path.startswith("~/"):
            path = await self.home() + path[1:]
        elif not path.startswith("/"):
            path = await self.home() + "/" + path
        parts: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
        return "/" + "/".join(parts)

    async def fs_stat(self, path: str) -> dict[str, Any]:
        """The legacy entry of ``path`` (``POST /stat``)."""
        return await self._post_json("/stat", {"path": await self._abs(path)}, idem=IDEMPOTENT)

    async def fs_readdir(self, path: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """All entries of a directory, fetched page by page."""
        body: dict[str, Any] = {"path": await self._abs(path)}
        body.update(options or {})
        body.setdefault("limit", READDIR_PAGE)
        # Sending the key "cursor" (even null) switches the server to the paginated
        # envelope {items, cursor?}; a server that ignores it answers with an array.
        body["cursor"] = None
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(READDIR_MAX_PAGES):
            data = await self._post_json("/readdir", body, idem=IDEMPOTENT)
            if isinstance(data, list):
                entries.extend(data)
                return entries
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise ServerError("unexpected /readdir answer")
            entries.extend(data["items"])
            cursor = data.get("cursor")
            if not cursor:
                return entries
            if cursor in seen:
                raise ServerError("/readdir returned the same cursor twice")
            seen.add(cursor)
            body["cursor"] = cursor
        raise ServerError("/readdir did not finish")

    async def fs_mkdir(self, path: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a directory and return its entry.

        The server is idempotent: an existing directory is returned as is (no
        "exists" error); a file in the way is 409. Options are snake_case
        (``create_missing_parents``, ``dedupe_name`` (default False), ...); putergenai's
        camelCase spellings are translated.
        """
        opts = dict(options or {})
        for camel, snake in (("createMissingParents", "create_missing_parents"), ("dedupeName", "dedupe_name")):
            if camel in opts:
                opts.setdefault(snake, opts.pop(camel))
        body = {"path": await self._abs(path), "dedupe_name": False, **opts}
        # A retry of a plain mkdir finds the directory and returns it; with
        # dedupe_name a retry would create "x (1)".
        idem = SAFE_REJECTIONS if body.get("dedupe_name") else IDEMPOTENT
        return await self._post_json("/mkdir", body, idem=idem)

    def _write_op(
        self, index: int, path: str, overwrite: bool, create_missing_parents: bool, dedupe_name: bool = False
    ) -> dict[str, Any]:
        parent, name = _split(path)
        if not name:
            raise BadRequest("cannot write to /")
        return {
            "op": "write",
            "path": parent,
            "name": name,
            "item_upload_id": index,
            "overwrite": overwrite,
            # /batch renames on collision unless told not to (§5.6): only when asked.
            "dedupe_name": dedupe_name,
            "create_missing_parents": create_missing_parents,
        }

    async def _batch_upload(
        self,
        items: Sequence[tuple[str, UploadSource]],
        *,
        overwrite: bool,
        create_missing_parents: bool,
        dedupe_name: bool = False,
    ) -> tuple[int, list[Any]]:
        """One multipart ``/batch`` request; (status, per-op results)."""
        body = MultipartBody()
        ops = [
            self._write_op(i, p, overwrite, create_missing_parents, dedupe_name) for i, (p, _) in enumerate(items)
        ]
        # puter.js order: every fileinfo, then every write op, then every file (§5.6).
        for op, (_, source) in zip(ops, items, strict=True):
            body.add_json("fileinfo", {"name": op["name"], "type": guess_type(op["name"]), "size": source.size})
        for op in ops:
            body.add_json("operation", op)
        for op, (_, source) in zip(ops, items, strict=True):
            body.add_file("file", op["name"], guess_type(op["name"]), source)
        # Overwriting the same bytes twice is harmless; a non-overwrite write retried
        # after it succeeded would fail with "already exists".
        idem = IDEMPOTENT if overwrite else SAFE_REJECTIONS
        response = await self._send("POST", self.api_url + "/batch", idem=idem, multipart=body)
        data = self._json(response)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise ServerError("unexpected /batch answer", status=response.status_code)
        return response.status_code, results

    @staticmethod
    def _op_result(status: int, result: Any) -> dict[str, Any] | PuterError:
        if isinstance(result, dict) and result.get("error"):
            op_status = result.get("status") if isinstance(result.get("status"), int) else status
            return error_from_body(op_status, result)
        if not isinstance(result, dict):
            return ServerError("unexpected /batch result", status=status, body=result)
        return result

    async def fs_write(
        self, path: str, content: Content, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write a file and return its entry.

        ``content`` is text (UTF-8), bytes, a binary file object (read from its
        current position; streamed, never loaded whole) or a path to a local file.
        Options (putergenai's camelCase or snake_case): ``overwrite`` (default True;
        False → :class:`AlreadyExists` when the file exists), ``dedupeName`` (default
        False; True writes ``name (1).ext`` when the name is taken, and the returned
        entry has the name used), ``createMissingParents`` (default False), ``metadata``
        (a dict stored as the entry's metadata, merged by the server with the content
        type; RECORDED-2 §7). Sent as multipart ``/batch``; with ``metadata`` as
        ``/fs/write`` (files up to 8 MiB) or ``/batch`` followed by ``/move new_metadata``.
        Content of 100 MiB or more goes up through the presigned flow (:meth:`fs_write_large`).
        """
        opts = dict(options or {})
        metadata = opts.pop("metadata", None)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError("metadata must be a dict")
        flags = _fs_options(opts, ("overwrite", "dedupe_name", "create_missing_parents"), "fs_write")
        dedupe = flags.get("dedupe_name", False)
        overwrite = flags.get("overwrite", not dedupe)
        parents = flags.get("create_missing_parents", False)
        target = await self._abs(path)
        source = UploadSource(content)
        try:
            if metadata is not None and source.size <= JSON_WRITE_MAX:
                return (await self._json_writes([(target, source, metadata)], overwrite, parents, dedupe))[0]
            if source.size >= LARGE_FILE and not dedupe:
                return await write_large(
                    self, target, source.original(), size=source.size, overwrite=overwrite,
                    create_missing_parents=parents, metadata=metadata,
                )
            else:
                outcome = await self._write_batch_one(target, source, overwrite=overwrite, parents=parents, dedupe=dedupe)
        finally:
            source.close()
        if metadata is not None:
            written = str(outcome.get("path") or target)  # the deduplicated name, if it was
            return await self.fs_set_metadata(written, {"contentType": guess_type(target), **metadata})
        return outcome

    async def _write_batch_one(
        self, target: str, source: UploadSource | Any, *, overwrite: bool, parents: bool, dedupe: bool = False
    ) -> dict[str, Any]:
        if not isinstance(source, UploadSource):
            source = UploadSource(source)
        status, results = await self._batch_upload(
            [(target, source)], overwrite=overwrite, create_missing_parents=parents, dedupe_name=dedupe
        )
        outcome = self._op_result(status, results[0])
        if isinstance(outcome, PuterError):
            raise outcome
        return outcome

    async def _json_writes(
        self,
        items: Sequence[tuple[str, UploadSource, dict[str, Any]]],
        overwrite: bool,
        parents: bool,
        dedupe: bool = False,
    ) -> list[dict[str, Any]]:
        """Files with metadata, in one ``/fs/write`` (one item) or ``/fs/batchWrite`` request;
        their entries in legacy form."""
        reqs = []
        for target, source, metadata in items:
            data = b"".join([chunk async for chunk in source.chunks()])
            reqs.append({
                "fileMetadata": {
                    "path": target, "size": len(data), "contentType": guess_type(target),
                    "overwrite": overwrite, "dedupeName": dedupe, "createMissingParents": parents,
                    "metadata": metadata,
                },
                "fileContent": base64.b64encode(data).decode("ascii"),
                "encoding": "base64",
            })
        idem = IDEMPOTENT if overwrite else SAFE_REJECTIONS
        if len(reqs) == 1:
            answers = [await self._post_json("/fs/write", reqs[0], idem=idem)]
        else:
            answers = await self._post_json("/fs/batchWrite", reqs, idem=idem)
        if not isinstance(answers, list) or len(answers) != len(reqs):
            raise ServerError("unexpected /fs/batchWrite answer")
        out = []
        for a in answers:
            entry = a.get("fsEntry") if isinstance(a, dict) else None
            if not isinstance(entry, dict):
                raise ServerError("unexpected /fs/write answer")
            out.append(legacy_entry(entry))
        return out

    async def fs_set_metadata(self, path: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole metadata of an entry (contentType included: send it along) and
        return the entry: a legacy ``/move`` onto its own name with ``new_metadata``
        (RECORDED-2 §7). It also bumps the entry's ``modified``."""
        target = await self._abs(path)
        parent, name = _split(target)
        if not name:
            raise BadRequest("cannot set the metadata of /")
        body = {
            "source": target, "destination": parent, "new_name": name, "overwrite": False,
            "dedupe_name": False, "new_metadata": metadata,
        }
        # onto its own path: no collision, so a retry after a success is harmless
        data = await self._post_json("/move", body, idem=IDEMPOTENT)
        moved = data.get("moved") if isinstance(data, dict) else None
        if not isinstance(moved, dict):
            raise ServerError("unexpected /move answer")
        return moved

    async def fs_write_large(
        self,
        path: str,
        content: Content | AsyncIterable[bytes],
        *,
        size: int | None = None,
        overwrite: bool = True,
        create_missing_parents: bool = False,
        session: UploadSession | None = None,
        on_progress: Callable[[UploadSession], Any] | None = None,
        parallel: int = 4,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload through the presigned flow (any size; parts of the server's part size).

        ``content`` as for :meth:`fs_write`, or an async iterable of bytes (then ``size``
        is required). ``on_progress(session)`` is called after the session starts,
        after each part and at completion: persist ``session.to_json()`` and pass
        ``UploadSession.from_json(...)`` back as ``session`` to resume. An existing file is
        replaced only once the new one is complete (see ``_presign.py``).
        """
        return await write_large(
            self, await self._abs(path), content, size=size, overwrite=overwrite,
            create_missing_parents=create_missing_parents, session=session, on_progress=on_progress,
            parallel=parallel, metadata=metadata,
        )

    async def fs_write_many(
        self,
        files: Sequence[tuple[str, Content]],
        *,
        overwrite: bool = True,
        create_missing_parents: bool = False,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any] | PuterError]:
        """Upload several files in one ``/batch`` request (one per 64 files).

        Returns one item per file, in order: its entry, or the exception object for
        that file (not raised). When a whole request fails, each of its files gets
        that request's exception. With ``metadata`` (one dict per file) the files go
        as ``/fs/batchWrite`` instead (up to 64 files and 8 MiB per request).
        """
        if metadata is not None:
            return await self._write_many_with_metadata(files, list(metadata), overwrite, create_missing_parents)
        out: list[dict[str, Any] | PuterError] = []
        for start in range(0, len(files), BATCH_MAX_FILES):
            chunk = files[start : start + BATCH_MAX_FILES]
            sources: list[UploadSource] = []
            try:
                items = []
                for path, content in chunk:
                    source = UploadSource(content)
                    sources.append(source)
                    items.append((await self._abs(path), source))
                status, results = await self._batch_upload(
                    items, overwrite=overwrite, create_missing_parents=create_missing_parents
                )
                out.extend(self._op_result(status, r) for r in results)
            except PuterError as exc:
                out.extend([exc] * len(chunk))
            finally:
                for source in sources:
                    source.close()
        return out

    async def _write_many_with_metadata(
        self, files: Sequence[tuple[str, Content]], metadata: list[dict[str, Any]], overwrite: bool, parents: bool
    ) -> list[dict[str, Any] | PuterError]:
        if len(metadata) != len(files):
            raise ValueError("one metadata dict per file")
        out: list[dict[str, Any] | PuterError] = []
        chunk: list[tuple[str, UploadSource, dict[str, Any]]] = []
        size = 0

        async def send() -> None:
            try:
                out.extend(await self._json_writes(chunk, overwrite, parents))
            except PuterError as exc:
                out.extend([exc] * len(chunk))
            finally:
                for _, source, _ in chunk:
                    source.close()
            chunk.clear()

        for (path, content), md in zip(files, metadata, strict=True):
            source = UploadSource(content)
            if chunk and (len(chunk) >= BATCH_MAX_FILES or size + source.size > JSON_WRITE_MAX):
                await send()
                size = 0
            chunk.append((await self._abs(path), source, md))
            size += source.size
        if chunk:
            await send()
        return out

    async def _read_range(
        self, path: str, offset: int | None, length: int | None, size: int | None
    ) -> tuple[str, tuple[int, int] | None, bool]:
        """Plan a read: (abs path, (first, last) byte or None for everything, empty?).

        Puter answers 500 to a Range on an empty file or starting at/after EOF, and to
        multi-ranges (§5.8), so ranges are clamped here against the size, taken from
        ``size`` or a ``stat``.
        """
        target = await self._abs(path)
        if (offset is not None and offset < 0) or (length is not None and length < 0):
            raise BadRequest("offset and length must not be negative")
        start = offset or 0
        if start == 0 and length is None:
            return target, None, False
        if length == 0:
            return target, None, True
        if size is None:
            entry = await self.fs_stat(target)
            if entry.get("is_dir"):
                raise IsADirectory(f"{target} is a directory", status=400, code="cannot_read_a_directory")
            size = int(entry.get("size") or 0)
        if start >= size:
            return target, None, True
        end = size - 1 if length is None else min(size, start + length) - 1
        if start == 0 and end == size - 1:
            return target, None, False
        return target, (start, end), False

    async def fs_read(
        self, path: str, *, offset: int | None = None, length: int | None = None, size: int | None = None
    ) -> bytes:
        """The bytes of a file, or ``length`` bytes from ``offset`` (b"" at/after EOF).

        ``size`` (keyword, optional) is the file size if the caller knows it; a
        partial read otherwise stats the file first to clamp the range.
        """
        target, span, empty = await self._read_range(path, offset, length, size)
        if empty:
            return b""
        headers = {"Range": f"bytes={span[0]}-{span[1]}"} if span else None
        response = await self._send(
            "GET", self.api_url + "/read", idem=IDEMPOTENT, params={"file": target}, headers=headers
        )
        if "text/html" in response.headers.get("content-type", ""):
            # /read always answers application/octet-stream: an HTML page is a proxy's
            raise ServerError(f"an HTML page answered the read of {target}, not the server", status=502)
        data = response.content
        if span and response.status_code == 200:
            # The server ignored the Range: cut the slice out of the full body.
            data = data[span[0] : span[1] + 1]
        return data

    async def fs_read_into(
        self,
        path: str,
        fileobj: IO[bytes],
        *,
        offset: int = 0,
        length: int | None = None,
        size: int | None = None,
    ) -> int:
        """Stream a file (or a range of it) into ``fileobj``; returns the bytes written.

        ``fileobj.write`` is called with chunks as they arrive (a plain sync binary file
        is fine), so large downloads are never held in memory. A retry after a broken
        connection restarts the transfer; the caller's file is rewound to where it was
        when ``fileobj`` supports ``seek``/``truncate``.
        """
        target, span, empty = await self._read_range(path, offset, length, size)
        if empty:
            return 0
        headers = {"Range": f"bytes={span[0]}-{span[1]}"} if span else None
        origin = fileobj.tell() if _seekable(fileobj) else None
        attempt = 0
        while True:
            attempt += 1
            written = 0
            response = await self._send(
                "GET",
                self.api_url + "/read",
                idem=IDEMPOTENT,
                params={"file": target},
                headers=headers,
                stream=True,
            )
            try:
                skip = span[0] if span and response.status_code == 200 else 0
                want = (span[1] - span[0] + 1) if span else None
                async with aclosing(response.aiter_bytes()) as chunks:
                    async for chunk in chunks:
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        if want is not None:
                            chunk = chunk[: max(0, want - written)]
                        if chunk:
                            fileobj.write(chunk)
                            written += len(chunk)
                return written
            except httpx.RequestError as exc:
                err = _map_transport_error(exc)
                if origin is None or attempt > self._retry.max_retries:
                    raise err from exc
                log.info("download of %s broke after %d bytes: %s; restarting", target, written, err)
                fileobj.seek(origin)
                fileobj.truncate()
                await anyio.sleep(self._retry.delay(attempt))
            finally:
                await response.aclose()

    async def _refuse_dangerous(self, target: str, what: str) -> None:
        # Puter deletes a user's home on request and leaves the account broken (§5.12).
        if target == "/" or target == await self.home():
            raise PermissionDenied(f"refusing to {what} {target}: it is the root or your home directory")

    async def fs_delete(self, path: str, *, recursive: bool = True) -> None:
        """Delete a file or directory (recursively by default).

        The home directory and ``/`` are refused without sending anything. Retried
        like an idempotent call; a retry answered with 404 counts as success (the
        entry is gone, most likely deleted by the attempt whose answer was lost).
        """
        target = await self._abs(path)
        await self._refuse_dangerous(target, "delete")
        # Deleting twice has the effect of deleting once, except that a retry whose
        # first attempt had already deleted the entry answers 404: that is success.
        response = await self._send(
            "POST",
            self.api_url + "/delete",
            idem=IDEMPOTENT,
            json_body={"path": target, "recursive": bool(recursive)},
            gone_ok_on_retry=True,
        )
        if response.status_code != 404:
            # the server answers JSON; anything else (an HTML page from a proxy) is no
            # proof that the entry is gone
            self._json(response)

    async def fs_rename(
        self, source: str, destination: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Rename ``source`` to ``destination`` and return the renamed entry.

        ``destination`` is a full path (absolute, ``~/...`` or home-relative, as
        putergenai passes it), or a bare name (no ``/``) for a new name in the same
        directory. Within one directory this is ``/rename``; to another directory, or
        with options, it is :meth:`fs_move`. Options as :meth:`fs_move`; an existing
        destination is never replaced unless ``{"overwrite": True}``.
        """
        opts = _fs_options(options, ("overwrite", "dedupe_name", "create_missing_parents"), "fs_rename")
        src = await self._abs(source)
        if not destination or not isinstance(destination, str):
            raise BadRequest("fs_rename needs a destination")
        if "/" not in destination and not destination.startswith("~"):
            if destination in (".", ".."):
                raise BadRequest(f"cannot rename to {destination!r}")
            dst = posixpath.join(_split(src)[0], destination)
        else:
            dst = await self._abs(destination)
        if _split(dst)[0] != _split(src)[0] or any(opts.values()):
            return await self.fs_move(src, dst, options)
        await self._refuse_dangerous(src, "rename")
        if dst == src:
            return await self.fs_stat(src)
        # Not idempotent: a retry after success would find no source.
        return await self._post_json(
            "/rename", {"path": src, "new_name": _split(dst)[1]}, idem=SAFE_REJECTIONS
        )

    async def _source_and_target(self, source: str, destination: str, what: str) -> tuple[str, str, str, str]:
        src = await self._abs(source)
        dst = await self._abs(destination)
        await self._refuse_dangerous(src, what)
        if dst == "/":
            raise BadRequest(f"cannot {what} onto /")
        # Puter accepts a directory moved onto itself and loses it from the tree (§5.10).
        if dst == src or dst.startswith(src.rstrip("/") + "/"):
            raise BadRequest(f"cannot {what} {src} onto or into itself", code="cannot_move_item_into_itself")
        parent, name = _split(dst)
        return src, dst, parent, name

    async def _copy_move_body(
        self, source: str, destination: str, options: dict[str, Any] | None, what: str
    ) -> tuple[dict[str, Any], dict[str, bool]]:
        opts = _fs_options(options, ("overwrite", "dedupe_name", "create_missing_parents"), f"fs_{what}")
        src, _dst, parent, name = await self._source_and_target(source, destination, what)
        if opts.get("create_missing_parents"):
            # The server ignores create_missing_parents on /move (errata): make them first.
            await self.fs_mkdir(parent, {"create_missing_parents": True})
        body = {
            "source": src,
            "destination": parent,
            "new_name": name,
            "overwrite": opts.get("overwrite", False),
            "dedupe_name": opts.get("dedupe_name", False),
        }
        return body, opts

    async def fs_move(
        self, source: str, destination: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Move ``source`` to the full path ``destination``; returns the moved entry.

        Options (putergenai's camelCase or snake_case): ``overwrite`` (default False: an
        existing destination is :class:`AlreadyExists`; True replaces it, whatever its
        type, §5.10), ``dedupeName`` (default False: True moves to ``name (1)`` when the
        name is taken), ``createMissingParents`` (default False). Sent as
        ``destination=<parent>, new_name=<basename>``.
        """
        body, _opts = await self._copy_move_body(source, destination, options, "move")
        # A retried move whose first attempt succeeded finds no source: never retried
        # once sent.
        data = await self._post_json("/move", body, idem=SAFE_REJECTIONS)
        moved = data.get("moved") if isinstance(data, dict) else None
        if not isinstance(moved, dict):
            raise ServerError("unexpected /move answer")
        return moved

    async def fs_copy(
        self, source: str, destination: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Copy ``source`` (a file or a whole directory) to the full path ``destination``;
        returns the new entry. Options as :meth:`fs_move` (no silent overwrite)."""
        body, opts = await self._copy_move_body(source, destination, options, "copy")
        # Copying again over its own earlier result is harmless with overwrite.
        data = await self._post_json("/copy", body, idem=IDEMPOTENT if opts.get("overwrite") else SAFE_REJECTIONS)
        item = data[0] if isinstance(data, list) and data else data
        copied = item.get("copied") if isinstance(item, dict) else None
        if not isinstance(copied, dict):
            raise ServerError("unexpected /copy answer")
        return copied

    async def fs_touch(self, path: str) -> None:
        """Create an empty file, or set an existing entry's times to now."""
        await self._send(
            "POST", self.api_url + "/touch", idem=IDEMPOTENT, json_body={"path": await self._abs(path)}
        )

    async def fs_df(self) -> dict[str, Any]:
        """``{"used": bytes, "capacity": bytes}``."""
        data = await self._post_json("/df", {}, idem=IDEMPOTENT)
        if not isinstance(data, dict):
            raise ServerError("unexpected /df answer")
        return data

    fs_space = fs_df

    def events(self, *, transport: str = "auto", reconnect: bool = True, max_backoff: float = 30.0) -> EventStream:
        """Puter's change notifications: ``async for event in client.events(): ...``.

        Yields `Connected`/`Resync`, `ItemEvent` (``item.added|updated|moved|removed|pending``
        with the entry), `CacheUpdated` and `Disconnected`; reconnects with backoff; raises
        `EventsRefused` for a token the socket refuses (full-api-access tokens are).
        See ``puterfs/client/_events.py``."""
        from puterfs.client._events import EventStream

        return EventStream(self, transport=transport, reconnect=reconnect, max_backoff=max_backoff)

    async def fs_last_change(self) -> int:
        """Milliseconds timestamp of the user's last change (cheap to poll)."""
        data = await self._get_json("/cache/last-change-timestamp")
        try:
            return int(data["timestamp"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError("unexpected /cache/last-change-timestamp answer") from exc

    # ------------------------------------------------------------------ drivers

    def _driver_body(
        self, interface: str, method: str, args: dict[str, Any] | None, driver: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"interface": interface, "method": method, "args": dict(args or {})}
        if driver:
            body["driver"] = driver
        return body

    @staticmethod
    def _envelope_result(status: int, data: Any) -> Any:
        """``result`` of a driver envelope; errors in the envelope raise (§3.2)."""
        if not isinstance(data, dict) or data.get("success") is False or "result" not in data:
            raise error_from_body(
                status if isinstance(data, dict) and data.get("success") is False else 502,
                data,
                default_message="the driver call returned no result",
            )
        return data["result"]

    async def _driver_response(
        self,
        interface: str,
        method: str,
        args: dict[str, Any] | None,
        *,
        idem: Idempotency,
        driver: str | None = None,
    ) -> httpx.Response:
        return await self._send(
            "POST",
            self.api_url + "/drivers/call",
            idem=idem,
            json_body=self._driver_body(interface, method, args, driver),
            ai=True,
        )

    async def _driver_result(
        self,
        interface: str,
        method: str,
        args: dict[str, Any] | None,
        *,
        idem: Idempotency,
        driver: str | None = None,
    ) -> Any:
        response = await self._driver_response(interface, method, args, idem=idem, driver=driver)
        return self._envelope_result(response.status_code, self._json(response))

    async def _driver_envelope(
        self,
        interface: str,
        method: str,
        args: dict[str, Any] | None,
        *,
        idem: Idempotency,
        driver: str | None = None,
        result: bool = True,
    ) -> dict[str, Any]:
        """The whole JSON envelope of a driver call; with ``result=False`` an envelope
        without ``result`` (KV ``expire``) is a success too."""
        response = await self._driver_response(interface, method, args, idem=idem, driver=driver)
        data = self._json(response)
        if result:
            self._envelope_result(response.status_code, data)
        elif not isinstance(data, dict) or data.get("success") is False:
            raise error_from_body(502 if not isinstance(data, dict) else response.status_code, data,
                                  default_message="the driver call failed")
        return data

    async def drivers_call(
        self,
        interface: str,
        driver: str | None,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        stream: bool = False,
        test_mode: bool = False,
    ) -> Any:
        """Low-level ``/drivers/call`` (putergenai's signature).

        Returns the JSON envelope (``{"success", "result", ...}``), raw bytes for a
        binary answer, or with ``stream=True`` an async iterator of raw body chunks.
        ``stream``/``test_mode`` go inside ``args``, the only place 26.07 reads them.
        Errors raise typed exceptions. Never retried once sent (a driver call may cost
        credits).
        """
        call_args = dict(args or {})
        if test_mode:
            call_args["test_mode"] = True
        if stream:
            call_args["stream"] = True
            return self._raw_stream(self._driver_body(interface, method, call_args, driver))
        response = await self._driver_response(interface, method, call_args, idem=SAFE_REJECTIONS, driver=driver)
        ctype = response.headers.get("content-type", "")
        if "json" not in ctype:
            return response.content
        data = self._json(response)
        self._envelope_result(response.status_code, data)
        return data

    @asynccontextmanager
    async def _open_stream(self, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        response = await self._send(
            "POST",
            self.api_url + "/drivers/call",
            idem=SAFE_REJECTIONS,
            json_body=body,
            ai=True,
            stream=True,
        )
        try:
            yield response
        except httpx.RequestError as exc:
            raise _map_transport_error(exc) from exc
        finally:
            await response.aclose()

    async def _raw_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self._open_stream(body) as response:
            async with aclosing(response.aiter_bytes()) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def fs_get_read_url(self, path: str, options: dict[str, Any] | None = None) -> str:
        """A signed, token-free URL that reads the file (``POST /sign``, action read)."""
        item = {"path": await self._abs(path), "action": "read", **(options or {})}
        data = await self._post_json("/sign", {"items": [item]}, idem=IDEMPOTENT)
        sigs = data.get("signatures") if isinstance(data, dict) else None
        sig = sigs[0] if isinstance(sigs, list) and sigs else None
        url = (sig.get("read_url") or sig.get("url")) if isinstance(sig, dict) else None
        if not isinstance(url, str) or not url:
            raise NotFound(f"cannot sign {item['path']}", status=404, code="subject_does_not_exist")
        return url

    async def fs_upload(
        self,
        files: Content | Sequence[Content],
        destination: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload local files (paths or named binary file objects) into ``destination``
        (default: home) in one ``/batch`` request. Returns ``{"results": [...]}`` with an
        entry or an exception object per file."""
        items = files if isinstance(files, (list, tuple)) else [files]
        opts = options or {}
        target_dir = await self._abs(destination or "~")
        pairs: list[tuple[str, Content]] = []
        for item in items:
            if isinstance(item, str):
                item = Path(item)  # here a string names a local file, as in putergenai
            name = os.path.basename(os.fspath(item)) if isinstance(item, os.PathLike) else None
            name = name or os.path.basename(str(getattr(item, "name", "") or ""))
            if not name:
                raise BadRequest("fs_upload needs paths or file objects with a name")
            pairs.append((f"{target_dir.rstrip('/')}/{name}", item))
        results = await self.fs_write_many(
            pairs,
            overwrite=bool(opts.get("overwrite", True)),
            create_missing_parents=bool(opts.get("create_missing_parents", opts.get("createMissingParents", False))),
        )
        return {"results": results}



def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _path_of(url: str) -> str:
    # For log lines: the path only (query strings can hold file names).
    return urlsplit(url).path


def _before(end: float, delay: float) -> bool:
    """Whether a retry after ``delay`` seconds still starts before the call's deadline."""
    return anyio.current_time() + delay < end


class _ReleasingStream(httpx.AsyncByteStream):
    """A streamed response body that frees its pacing slot when closed."""

    def __init__(self, inner: Any, ticket: Ticket) -> None:
        self._inner = inner
        self._ticket = ticket

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._ticket.release()


def _seekable(fileobj: Any) -> bool:
    try:
        return bool(fileobj.seekable())
    except (AttributeError, OSError, ValueError):
        return False



def legacy_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A v2 entry (``/fs/*`` answers: camelCase) with the legacy keys (``is_dir``, ``id``, ...)
    added, so callers read one shape."""
    out = dict(entry)
    for v2_key, key in (("isDir", "is_dir"), ("parentUid", "parent_uid"), ("isShortcut", "is_shortcut"),
                        ("isSymlink", "is_symlink"), ("isPublic", "is_public")):
        if v2_key in entry and key not in out:
            out[key] = entry[v2_key]
    out.setdefault("id", entry.get("uid") or entry.get("uuid"))
    return out
