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

import contextvars
import json
import logging
import math
import os
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx

from puterfs.client._browser import DEFAULT_TIMEOUT as BROWSER_LOGIN_TIMEOUT
from puterfs.client._browser import _browser_login, default_show_url, refused_scripted_login
from puterfs.client._chat import (
    ChatEvent,
)
from puterfs.client._errors import (
    AuthenticationError,
    BadAnswer,
    BadRequest,
    NotFound,
    OTPRequired,
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
from puterfs.client._multipart import MultipartBody
from puterfs.client._pacing import Budget, Pacer, Ticket, scopes_for
from puterfs.client._retry import NOT_SENT_ERRORS, RESEND, Idempotency, RetryPolicy, may_retry, uncertain
from puterfs.client.ai import AI
from puterfs.client.apps import Apps
from puterfs.client.auth import Auth
from puterfs.client.fs import FS
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

_warned_insecure = False

_NO_BODY = object()
_AGAIN = object()  # _send: send the request again

# PuterClient.retries(n): a cap on the retries of the calls made inside (this task only).
_RETRY_CAP: contextvars.ContextVar[int | None] = contextvars.ContextVar("puterfs_retry_cap", default=None)


def _warn_insecure_once() -> None:
    global _warned_insecure
    if not _warned_insecure:
        _warned_insecure = True
        warnings.warn(
            "PuterClient(ignore_ssl=True): TLS certificates are not verified; the token can be "
            "intercepted by anyone on the network path",
            stacklevel=3,
        )


_SIGNATURE = re.compile(r"(signature=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the signature of every signed URL in it replaced (a signed URL reads or
    writes its file for anyone who holds it: a credential like a token)."""
    return _SIGNATURE.sub(r"\1<redacted>", text)


class _RedactSignatures(logging.Filter):
    """On httpx's logger: its request lines (``HTTP Request: GET <url> ...``, at INFO) show
    the full URL, query and all; a signed URL's signature is replaced there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any("signature=" in str(a).lower() for a in record.args):
            record.args = tuple(redact(str(a)) if "signature=" in str(a).lower() else a for a in record.args)
        if isinstance(record.msg, str) and "signature=" in record.msg.lower():
            record.msg = redact(record.msg)
        return True


def _redact_httpx_logs() -> None:
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSignatures) for f in logger.filters):
            logger.addFilter(_RedactSignatures())


_redact_httpx_logs()


def _map_transport_error(exc: httpx.RequestError) -> PuterConnectionError:
    """httpx's transport errors as client exceptions (the message never has the token)."""
    detail = redact(str(exc)) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return PuterTimeout(f"request timed out ({type(exc).__name__}: {detail})")
    return PuterConnectionError(f"connection to Puter failed ({type(exc).__name__}: {detail})")


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
        max_retries: int | None = 6,
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
        self._routes = routes
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
        # When set and False, failures are not retried (429s aside): the caller knows the
        # server cannot be reached (the mount's change poller says so).
        self.keep_retrying: Callable[[], bool] | None = None
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
        self.fs = FS(self)
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

    @contextmanager
    def retries(self, count: int) -> Iterator[None]:
        """At most ``count`` retries (429s aside) for the calls made inside, whatever the
        client's policy: a probe that decides reachability is a sample, not a task."""
        token = _RETRY_CAP.set(count)
        try:
            yield
        finally:
            _RETRY_CAP.reset(token)

    def _may_try_again(self, attempt: int) -> bool:
        cap = _RETRY_CAP.get()
        if cap is not None and attempt > cap:
            return False
        if not self._retry.allows(attempt):
            return False
        return self.keep_retrying is None or self.keep_retrying()

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
        decode: Callable[[httpx.Response], Any] | None = None,
        reconcile: Callable[[PuterError], Awaitable[Any]] | None = None,
    ) -> Any:
        """Send one logical request, retrying as ``idem`` allows; each failure is judged on
        its own (no state is kept from one call to the next).

        Every attempt first waits for room in the account's budgets (``_pacing.py``). A
        429 tightens the budget and is retried (when ``idem`` allows) as soon as the
        window has slid, for as long as the call's ``deadline`` lasts; other retryable
        failures get at most ``max_retries`` retries (None: no limit) with capped backoff,
        also within the deadline, while ``keep_retrying`` (when set) says so.

        Returns a response with a 2xx status, or with ``decode`` what ``decode(response)``
        returns: a ``BadAnswer`` it raises (an HTML page, JSON cut short) is a failure like
        a 5xx, so an idempotent call is sent again. A call that is not idempotent and whose
        outcome is uncertain (``_retry.uncertain``) is reconciled when it gives
        ``reconcile``: that function looks at the server's state and returns the call's
        result (it took effect) or ``RESEND`` (it did not: send it again); without one the
        failure is raised. With ``stream=True`` the body is not read and the caller must
        ``aclose()`` it. ``gone_ok_on_retry`` makes a 404 answer to a retry a success
        (for deletes; the result is then the response, or None with ``decode``).
        ``content`` is a raw body (bytes).
        """
        scopes = self._scopes(method, url, None if json_body is _NO_BODY else json_body)
        end = anyio.current_time() + self._deadline if self._deadline is not None else math.inf
        attempt = 0  # failures other than 429
        refusals = 0  # 429s
        tries = 0
        last_refusal: RateLimited | None = None

        async def failed(err: PuterError, *, sent: bool, retry_after: float | None = None) -> Any:
            """After a failed attempt: _AGAIN to send the request again, else the call's
            result (a reconcile found it done); raises ``err`` when it may not be retried."""
            nonlocal attempt
            retry = may_retry(idem, err, sent=sent)
            if not retry and (reconcile is None or not uncertain(err, sent=sent)):
                raise err  # a refusal (404, 409 ...) or an outcome nobody can learn
            attempt += 1
            delay = self._retry.delay(attempt, retry_after)
            if not (_before(end, delay) and self._may_try_again(attempt)):
                raise err
            if retry:
                log.info("%s %s: %s; retry %d in %.2fs", method, _path_of(url), err, attempt, delay)
                await anyio.sleep(delay)
                return _AGAIN
            log.info("%s %s: %s; checking the server's state", method, _path_of(url), err)
            try:
                verdict = await reconcile(err)
            except PuterError as exc:
                if exc is err:
                    raise  # the server's state says the failure stands
                log.info("%s %s: the server's state could not be learned: %s", method, _path_of(url), exc)
                raise err from exc
            if verdict is not RESEND:
                log.info("%s %s: the server's state shows it was done", method, _path_of(url))
                return verdict
            log.info("%s %s: not done on the server; sending it again in %.2fs", method, _path_of(url), delay)
            await anyio.sleep(delay)
            return _AGAIN

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
                try:
                    outcome = await failed(err, sent=sent)
                except PuterError as final:
                    raise final from exc
                if outcome is _AGAIN:
                    continue
                return outcome
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
                    # max_retries=0 turns off every retry, 429s included
                    if self._retry.max_retries != 0 and may_retry(idem, err, sent=True) and _before(end, delay):
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
                    return response if decode is None else None
                outcome = await failed(err, sent=True, retry_after=parse_retry_after(response.headers.get("retry-after")))
                if outcome is _AGAIN:
                    continue
                return outcome
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
                await response.aclose()
                if ticket is not None:
                    ticket.release()
                try:
                    outcome = await failed(err, sent=True)
                except PuterError as final:
                    raise final from exc
                if outcome is _AGAIN:
                    continue
                return outcome
            await response.aclose()
            if ticket is not None:
                ticket.release()
            if decode is None:
                return response
            try:
                return decode(response)
            except BadAnswer as bad:
                outcome = await failed(bad, sent=True)
                if outcome is _AGAIN:
                    continue
                return outcome

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
        """The JSON body of a 2xx answer; anything else (a proxy's HTML page, JSON cut
        short) is a ``BadAnswer``, which ``_send`` retries or reconciles."""
        try:
            return response.json()
        except ValueError as exc:
            raise BadAnswer(
                f"expected JSON, got {response.headers.get('content-type') or 'no content type'}"
                f" ({len(response.content)} bytes that do not decode)",
                status=response.status_code,
            ) from exc

    @classmethod
    def _json_checked(cls, check: Callable[[Any], Any] | None) -> Callable[[httpx.Response], Any]:
        """A ``decode`` for ``_send``: the JSON body, passed through ``check`` (which raises
        ``BadAnswer`` for an answer of the wrong shape, or returns what the caller wants)."""

        def decode(response: httpx.Response) -> Any:
            data = cls._json(response)
            return data if check is None else check(data)

        return decode

    async def _post_json(
        self,
        path: str,
        body: Any,
        *,
        idem: Idempotency,
        web: bool = False,
        auth: bool = True,
        check: Callable[[Any], Any] | None = None,
        reconcile: Callable[[PuterError], Awaitable[Any]] | None = None,
    ) -> Any:
        base = self.web_url if web else self.api_url
        return await self._send(
            "POST", base + path, idem=idem, json_body=body, auth=auth,
            decode=self._json_checked(check), reconcile=reconcile,
        )

    async def _get_json(
        self,
        path: str,
        *,
        idem: Idempotency = IDEMPOTENT,
        auth: bool = True,
        params: dict[str, Any] | None = None,
        check: Callable[[Any], Any] | None = None,
    ) -> Any:
        return await self._send(
            "GET", self.api_url + path, idem=idem, auth=auth, params=params, decode=self._json_checked(check)
        )

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
        # the names this client uses, connected where this client connects them (--domain)
        result = await _browser_login(
            self.web_url, self.api_url, self._routes, open_browser=open_browser, show_url=show_url,
            timeout=timeout, host="127.0.0.1", port=port, ignore_ssl=self.ignore_ssl, transport=self._transport,
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

    def events(self, *, transport: str = "auto", reconnect: bool = True, max_backoff: float = 30.0) -> EventStream:
        """Puter's change notifications: ``async for event in client.events(): ...``.

        Yields `Connected`/`Resync`, `ItemEvent` (``item.added|updated|moved|removed|pending``
        with the entry), `CacheUpdated` and `Disconnected`; reconnects with backoff; raises
        `EventsRefused` for a token the socket refuses (full-api-access tokens are).
        See ``puterfs/client/_events.py``."""
        from puterfs.client._events import EventStream

        return EventStream(self, transport=transport, reconnect=reconnect, max_backoff=max_backoff)

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
