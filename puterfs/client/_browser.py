"""Sign in through the browser: Puter's AuthMe flow with a one-shot loopback listener.

puter.com refuses a scripted ``/login`` (it wants a captcha, and the route is for its own
GUI). The sanctioned way for a tool is AuthMe: the user opens
``<web>/?action=authme&redirectURL=<url>``, signs in there and approves, and the page
navigates to ``<url>?token=<full-api-access token>``.

:func:`browser_login` listens on ``127.0.0.1`` (a random port unless one is given) for
exactly one request to a random secret path, builds that URL, opens it with the desktop's
browser when there is one, hands it to ``show_url`` so that a person on a headless machine
can open it elsewhere (with the port forwarded by ``ssh -L``), waits a few minutes at most,
answers the browser with a small "you can close this tab" page, checks the token with
``/whoami`` and returns it. Only anyio is awaited, so it runs under asyncio and trio.

The token is never logged, never put in an exception, and the request line carrying it is
not echoed anywhere.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import anyio.abc
import httpx

from puterfs.client._errors import AuthenticationError, BadRequest, PuterTimeout, ScriptedLoginRefused
from puterfs.client._hosts import HostRoutingTransport, with_domain

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
MAX_REQUEST = 16 * 1024
READ_TIMEOUT = 10.0
OPENER_GRACE = 10.0
CAPTCHA_CODES = frozenset({"captcha_required", "captcha_invalid"})


def refusal_message(web_url: str) -> str:
    """The one line for a server that will not take a password from a script."""
    web = web_url.rstrip("/")
    return (
        f"{web} does not accept a password login from scripts (it asks for a captcha): sign in with the "
        f"browser (`puterfs login --browser`, or browser_login()/PuterClient.login_browser() in Python), "
        f"or paste a token from {web}/?action=copyauth into `puterfs login --token-stdin`"
    )


def is_captcha_refusal(exc: BaseException) -> bool:
    """26.07: 400 bad_request "Captcha verification required." / "Invalid captcha response.";
    the old backend: 400 ``{"code": "captcha_required"}``."""
    if not isinstance(exc, BadRequest) or exc.status != 400:
        return False
    return (exc.code or "") in CAPTCHA_CODES or "captcha" in (exc.message or "").lower()


@contextmanager
def refused_scripted_login(web_url: str) -> Iterator[None]:
    """Turn a captcha refusal of /login or /login/otp into :class:`ScriptedLoginRefused`."""
    try:
        yield
    except BadRequest as exc:
        if is_captcha_refusal(exc):
            raise ScriptedLoginRefused(refusal_message(web_url), status=exc.status, code=exc.code) from None
        raise

_DONE_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>puterfs: signed in</title>
<meta name="referrer" content="no-referrer"></head>
<body style="font-family:system-ui,sans-serif;text-align:center;margin-top:15vh">
<h1 id="done">puterfs is signed in</h1><p>You can close this tab.</p>
<script>history.replaceState(null, "", "/");</script></body></html>"""

_ERROR_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>puterfs</title></head>
<body style="font-family:system-ui,sans-serif;text-align:center;margin-top:15vh">
<h1>{title}</h1><p>{detail}</p></body></html>"""


def has_desktop_browser() -> bool:
    """True when :mod:`webbrowser` can show a page to the person at this machine."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def authme_url(web_url: str, redirect_url: str) -> str:
    """``<web>/?action=authme&redirectURL=<redirect_url>`` (what the GUI's own helper builds)."""
    return web_url.rstrip("/") + "/?" + urlencode({"action": "authme", "redirectURL": redirect_url})


@dataclass
class BrowserLogin:
    """The outcome of :func:`browser_login`. ``repr`` never shows the token."""

    token: str = field(repr=False)
    username: str | None
    whoami: dict[str, Any] = field(repr=False, default_factory=dict)


class _Listener:
    """One-shot HTTP listener: the first GET of the secret path with a token wins."""

    def __init__(self, secret: str) -> None:
        self.path = "/" + secret
        self.token: str | None = None
        self.got = anyio.Event()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                with anyio.move_on_after(READ_TIMEOUT):
                    head = await self._read_head(stream)
                    if head is None:
                        return
                    status, body = self._answer(head)
                    try:
                        await stream.send(_response(status, body))
                    finally:
                        if self.token is not None:
                            self.got.set()  # after the page went out (or could not)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass

    @staticmethod
    async def _read_head(stream: anyio.abc.SocketStream) -> bytes | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_REQUEST:
                return None
            try:
                chunk = await stream.receive(4096)
            except anyio.EndOfStream:
                return None
            buf += chunk
        return buf.split(b"\r\n", 1)[0]

    def _answer(self, request_line: bytes) -> tuple[int, str]:
        try:
            method, target, _ = request_line.decode("latin-1").split(" ", 2)
        except ValueError:
            return 400, _ERROR_PAGE.format(title="Bad request", detail="")
        parts = urlsplit(target)
        if parts.path.rstrip("/") != self.path:
            return 404, _ERROR_PAGE.format(title="Not found", detail="")
        if method != "GET":
            return 405, _ERROR_PAGE.format(title="Method not allowed", detail="")
        if self.token is not None:
            return 410, _ERROR_PAGE.format(
                title="Already signed in", detail="This sign-in link has been used; puterfs needs nothing more."
            )
        tokens = parse_qs(parts.query).get("token", [])
        token = tokens[0].strip() if len(tokens) == 1 else ""
        if not token or any(c.isspace() for c in token):
            return 400, _ERROR_PAGE.format(
                title="No token", detail="This page expects Puter to send you here after you approve the sign-in."
            )
        self.token = token
        return 200, _DONE_PAGE


def _response(status: int, body: str) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 410: "Gone"}[status]
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + data


def default_show_url(url: str, port: int, opened: bool) -> None:
    """``opened``: a browser is being started with the URL (it may still fail to)."""
    """Print the sign-in URL and how to reach the listener from another machine (stderr)."""
    lines = [
        "To sign in to Puter, open this URL in a browser" + (" (opening it in yours now)" if opened else "") + ":",
        "",
        f"    {url}",
        "",
        "Sign in there and approve; Puter then sends the token back to puterfs on "
        f"http://127.0.0.1:{port}/.",
        "On a headless machine, open the URL on your own computer after forwarding the port:",
        f"    ssh -L {port}:127.0.0.1:{port} <this machine>",
        "Waiting for the browser...",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


async def browser_login(
    web_url: str = "https://puter.com",
    *,
    api_url: str | None = None,
    open_browser: bool | Callable[[str], Any] = True,
    show_url: Callable[[str, int, bool], Any] | None = default_show_url,
    timeout: float = DEFAULT_TIMEOUT,
    host: str = "127.0.0.1",
    port: int = 0,
    ignore_ssl: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    domain: str | None = None,
) -> BrowserLogin:
    """Get a full-api-access token through Puter's AuthMe page in a browser.

    ``open_browser``: True opens the URL with :mod:`webbrowser` when this machine has a
    desktop (``DISPLAY``/``WAYLAND_DISPLAY``/``BROWSER``, macOS, Windows); False never does;
    a callable is called with the URL instead (tests drive a headless browser this way).
    ``show_url(url, port, opened)`` tells the person where to go (default: a few lines on
    stderr, with the ``ssh -L`` hint); pass None to stay silent. ``timeout`` bounds the
    whole wait (:class:`PuterTimeout`). The token is checked with ``/whoami`` on ``api_url``
    (default: derived from ``web_url``) before it is returned; a refused one raises
    :class:`AuthenticationError`.

    ``domain``: the server's own domain when ``web_url``/``api_url`` give its address, as
    for :class:`PuterClient` (a server answers only its names, never an address): the
    browser is sent to ``<domain>``'s AuthMe page and ``/whoami`` goes to ``api.<domain>``,
    connected to the address given.
    """
    web_url = web_url.rstrip("/")
    api_url = (api_url or _api_for(web_url)).rstrip("/")
    routes: dict[str, str] = {}
    if domain:
        name = domain.strip().lower().rstrip(".")
        web_url, web_addr = with_domain(web_url, name, api=False)
        api_url, api_addr = with_domain(api_url, name, api=True)
        if api_addr or web_addr:
            routes[name] = api_addr or web_addr  # type: ignore[assignment]
    return await _browser_login(
        web_url, api_url, routes, open_browser=open_browser, show_url=show_url, timeout=timeout, host=host,
        port=port, ignore_ssl=ignore_ssl, transport=transport,
    )


async def _browser_login(
    web_url: str,
    api_url: str,
    routes: dict[str, str],
    *,
    open_browser: bool | Callable[[str], Any],
    show_url: Callable[[str, int, bool], Any] | None,
    timeout: float,
    host: str,
    port: int,
    ignore_ssl: bool,
    transport: httpx.AsyncBaseTransport | None,
) -> BrowserLogin:
    """:func:`browser_login` with the server's names already chosen; ``routes`` as for
    :class:`HostRoutingTransport` (where names that do not resolve connect)."""
    from puterfs.client._client import PuterClient

    secret = secrets.token_urlsafe(24)
    listener = _Listener(secret)
    tcp = await anyio.create_tcp_listener(local_host=host, local_port=port)
    try:
        bound = int(tcp.extra(anyio.abc.SocketAttribute.local_port))
        shown_host = f"[{host}]" if ":" in host else host
        url = authme_url(web_url, f"http://{shown_host}:{bound}{listener.path}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(tcp.serve, listener.handle)
            opener_done = anyio.Event()
            opener_done.set()
            opening = callable(open_browser) or bool(open_browser and has_desktop_browser())
            # The URL first: a browser that runs in this terminal may not return before the end.
            if show_url is not None:
                show_url(url, bound, opening)
            if callable(open_browser):
                opener_done = anyio.Event()
                tg.start_soon(_call_opener, open_browser, url, opener_done)
            elif opening:
                tg.start_soon(_open_with_webbrowser, url)
            with anyio.move_on_after(timeout):
                await listener.got.wait()
            if listener.got.is_set():
                with anyio.move_on_after(OPENER_GRACE):
                    await opener_done.wait()  # a driven browser reads its page before we go
            tg.cancel_scope.cancel()
    finally:
        await tcp.aclose()
    token = listener.token
    if token is None:
        raise PuterTimeout(
            f"no sign-in came back from the browser within {timeout:g}s", code="browser_login_timeout"
        )
    if transport is None:
        transport = HostRoutingTransport(httpx.AsyncHTTPTransport(verify=not ignore_ssl, trust_env=True), routes)
    async with PuterClient(
        token=token, api_url=api_url, web_url=web_url, ignore_ssl=ignore_ssl,
        transport=transport, max_retries=3,
    ) as client:
        try:
            me = await client.whoami()
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"the token from the browser was refused by the server: {exc.message}", status=exc.status,
                code=exc.code,
            ) from None
    name = me.get("username")
    return BrowserLogin(token=token, username=name if isinstance(name, str) else None, whoami=me)


async def _call_opener(opener: Callable[[str], Any], url: str, done: anyio.Event) -> None:
    try:
        result = opener(url)
        if hasattr(result, "__await__"):
            await result
    finally:
        done.set()


async def _open_with_webbrowser(url: str) -> None:
    import webbrowser

    try:
        # abandoned on cancel: a terminal browser (BROWSER=w3m) returns only when it quits
        if not await anyio.to_thread.run_sync(webbrowser.open, url, abandon_on_cancel=True):
            log.debug("no browser could be started; the URL is printed")
    except Exception as exc:  # noqa: BLE001 - no browser is not an error: the URL is printed
        log.debug("could not start a browser: %s", exc)


def _api_for(web_url: str) -> str:
    """``https://puter.com`` -> ``https://api.puter.com``; a bare address serves both."""
    parts = urlsplit(web_url)
    host = parts.hostname or ""
    try:
        import ipaddress

        ipaddress.ip_address(host)
        return web_url
    except ValueError:
        pass
    if host == "localhost":
        return web_url
    return f"{parts.scheme}://api.{parts.netloc}"
