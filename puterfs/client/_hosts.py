"""Reaching a Puter server by name when the name does not resolve.

Puter routes by the ``Host`` header (API reference §1): the API answers on
``api.<domain>:<port>``, the login routes on ``<domain>:<port>``, and a request whose
``Host`` is an IP address gets 404 everywhere. Two cases need help:

* ``*.localhost`` names (the default self-hosted domain is ``puter.localhost``) are
  loopback by RFC 6761, but many system resolvers do not know them.
* A server reached by an address (``http://10.0.0.5:4100``, a tunnel, a container IP)
  whose configured domain is something else.

The client therefore always builds its URLs with the server's own names (so ``Host``,
and the absolute URLs the server hands back, are right) and :class:`HostRoutingTransport`
decides where to *connect*: ``*.localhost`` → ``127.0.0.1``, and the names under a
``domain`` given separately → the address given. The URL keeps its port; for HTTPS the
TLS server name (SNI and certificate check) stays the name, not the address.

Only the connection target changes; nothing global (no resolver patching, no
``/etc/hosts``).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

import httpx

LOOPBACK = "127.0.0.1"


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _Routes:
    """Where a name connects: ``*.localhost`` → loopback, a domain's names → its address."""

    def __init__(self, domains: dict[str, str] | None = None) -> None:
        # domain -> address: the domain itself and every name below it connect there
        self._domains = {d.lower().rstrip("."): a for d, a in (domains or {}).items()}

    def target(self, host: str) -> str | None:
        """The address to connect to for ``host``, or None to connect to ``host`` itself."""
        h = host.lower().rstrip(".")
        for domain, address in self._domains.items():
            if h == domain or h.endswith("." + domain):
                return address
        if _is_localhost(h):
            return LOOPBACK
        return None

    def _route(self, request: httpx.Request) -> httpx.Request:
        """The request to send: ``request`` itself, or a copy aimed at the address (the
        original is left alone, so the client's view of it, cookies included, keeps the name)."""
        name = request.url.host
        address = self.target(name)
        if address is None or address.lower() == name.lower():
            return request
        extensions = dict(request.extensions)
        if request.url.scheme == "https" and "sni_hostname" not in extensions:
            extensions["sni_hostname"] = name
        # the Host header was set from the URL when the request was built, and stays
        return httpx.Request(request.method, request.url.copy_with(host=address), headers=request.headers,
                             stream=request.stream, extensions=extensions)


class HostRoutingTransport(_Routes, httpx.AsyncBaseTransport):
    """Wraps a transport; connects some names to another address (see the module doc)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, domains: dict[str, str] | None = None) -> None:
        super().__init__(domains)
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(self._route(request))

    async def aclose(self) -> None:
        await self._inner.aclose()


class SyncHostRoutingTransport(_Routes, httpx.BaseTransport):
    """:class:`HostRoutingTransport` for a synchronous ``httpx.Client`` (the CLI's health
    check of the local emulator, test helpers)."""

    def __init__(self, inner: httpx.BaseTransport | None = None, domains: dict[str, str] | None = None) -> None:
        super().__init__(domains)
        self._inner = inner if inner is not None else httpx.HTTPTransport(trust_env=True)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(self._route(request))

    def close(self) -> None:
        self._inner.close()


def with_domain(url: str, domain: str, *, api: bool) -> tuple[str, str | None]:
    """``url`` rewritten to the server's own name under ``domain``, and the address to connect to.

    ``http://127.0.0.1:4100`` with ``puter.localhost`` → ``http://api.puter.localhost:4100``
    (``api=True``) or ``http://puter.localhost:4100``, and ``127.0.0.1``. A URL that already
    names a host under ``domain`` is returned unchanged (address None).
    """
    domain = domain.strip().lower().rstrip(".")
    if not domain or "/" in domain or ":" in domain:
        raise ValueError(f"domain must be a bare host name such as puter.localhost, not {domain!r}")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == domain or host.endswith("." + domain):
        return url, None
    name = f"api.{domain}" if api else domain
    netloc = name if parts.port is None else f"{name}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), host


__all__ = ["HostRoutingTransport", "SyncHostRoutingTransport", "is_address", "with_domain"]
