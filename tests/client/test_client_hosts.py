"""Reaching a server by ``*.localhost`` names and by address with ``domain=`` (puterfs/client/_hosts.py).

The unit tests look at what reaches the network (the wrapped transport); the emulator
tests prove it end to end: the emulator routes by ``Host`` like Puter (login only on the
root host, files only on ``api.``), and nothing here touches /etc/hosts.
"""

from __future__ import annotations

import httpx
import pytest

from puterfs.client import NotFound, PuterClient
from puterfs.client._hosts import HostRoutingTransport, with_domain

pytestmark = pytest.mark.anyio


class Wire:
    """What the network would see: connect host/port, Host header, TLS server name."""

    def __init__(self, answer=None) -> None:  # noqa: ANN001
        self.seen: list[tuple[str, int | None, str, str | None]] = []
        self.answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(
            (request.url.host, request.url.port, request.headers["host"], request.extensions.get("sni_hostname"))
        )
        if self.answer is not None:
            return self.answer(request)
        return httpx.Response(200, json={"ok": True})


async def _get(transport: httpx.AsyncBaseTransport, url: str) -> None:
    async with httpx.AsyncClient(transport=transport) as http:
        (await http.get(url)).raise_for_status()


async def test_localhost_names_connect_to_loopback_keeping_host() -> None:
    wire = Wire()
    t = HostRoutingTransport(httpx.MockTransport(wire))
    await _get(t, "http://api.puter.localhost:4100/whoami")
    await _get(t, "http://puter.localhost:4100/login")
    await _get(t, "https://api.puter.com/whoami")
    assert wire.seen == [
        ("127.0.0.1", 4100, "api.puter.localhost:4100", None),
        ("127.0.0.1", 4100, "puter.localhost:4100", None),
        ("api.puter.com", None, "api.puter.com", None),
    ]


async def test_https_keeps_the_name_for_tls() -> None:
    wire = Wire()
    t = HostRoutingTransport(httpx.MockTransport(wire), {"example.org": "10.1.2.3"})
    await _get(t, "https://api.example.org/whoami")
    assert wire.seen == [("10.1.2.3", None, "api.example.org", "api.example.org")]


def test_with_domain() -> None:
    assert with_domain("http://127.0.0.1:4100", "puter.localhost", api=True) == (
        "http://api.puter.localhost:4100", "127.0.0.1"
    )
    assert with_domain("http://127.0.0.1:4100/", "Puter.Localhost.", api=False) == (
        "http://puter.localhost:4100/", "127.0.0.1"
    )
    assert with_domain("http://api.puter.localhost:4100", "puter.localhost", api=True) == (
        "http://api.puter.localhost:4100", None
    )
    with pytest.raises(ValueError):
        with_domain("http://127.0.0.1:4100", "http://puter.localhost", api=True)


async def test_client_with_domain_sends_the_hosts_puter_routes_by() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/login":
            return httpx.Response(200, json={"proceed": True, "token": "T", "user": {"username": "alice"}})
        if request.url.path == "/sign":
            url = "http://api.puter.localhost:4100/file?uid=1&signature=s"
            return httpx.Response(200, json={"signatures": [{"read_url": url}]})
        if request.url.path == "/file":
            return httpx.Response(200, content=b"data")
        return httpx.Response(200, json={"name": "x", "is_dir": False})

    wire = Wire(answer)
    async with PuterClient(api_url="http://127.0.0.1:4100", domain="puter.localhost") as client:
        assert (client.api_url, client.web_url) == ("http://api.puter.localhost:4100", "http://puter.localhost:4100")
        client._http._transport._inner = httpx.MockTransport(wire)  # type: ignore[attr-defined]
        await client.login("alice", "password1")
        await client.fs_stat("/alice/x")
        url = await client.fs_get_read_url("/alice/x")
        assert await client.ai._url_bytes(url) == b"data"
    assert [(h, p, host) for h, p, host, _ in wire.seen] == [
        ("127.0.0.1", 4100, "puter.localhost:4100"),
        ("127.0.0.1", 4100, "api.puter.localhost:4100"),
        ("127.0.0.1", 4100, "api.puter.localhost:4100"),
        ("127.0.0.1", 4100, "api.puter.localhost:4100"),
    ]


async def test_domain_alone_means_https_on_that_domain() -> None:
    client = PuterClient(domain="example.org")
    assert (client.api_url, client.web_url) == ("https://api.example.org", "https://example.org")
    await client.aclose()


# -- against the emulator, over real HTTP ------------------------------------------------------


async def test_emulator_by_localhost_names(emulator, puter_user) -> None:  # noqa: ANN001
    port = emulator.port
    async with PuterClient(
        api_url=f"http://api.puter.localhost:{port}", web_url=f"http://puter.localhost:{port}", tier="unlimited"
    ) as client:
        await client.login(emulator.username, emulator.password)
        assert (await client.whoami())["username"] == emulator.username
        await client.fs_write("~/hosts.txt", b"by name")
        assert await client.fs_read("~/hosts.txt") == b"by name"
        # the signed URL names api.puter.localhost too, and is followed the same way
        assert await client.ai._url_bytes(await client.fs_get_read_url("~/hosts.txt")) == b"by name"


async def test_emulator_by_address_with_domain(emulator, puter_user) -> None:  # noqa: ANN001
    # the address alone is refused (a server answers its names only) ...
    async with PuterClient(api_url=emulator.address_url, tier="unlimited", max_retries=0) as client:
        with pytest.raises(NotFound):
            await client.login(emulator.username, emulator.password)
    # ... the address with the domain given separately works
    async with PuterClient(api_url=emulator.address_url, domain="puter.localhost", tier="unlimited") as client:
        assert client.api_url == f"http://api.puter.localhost:{emulator.port}"
        await client.login(emulator.username, emulator.password)
        await client.fs_write("~/by-address.txt", "x")
        assert (await client.fs_stat("~/by-address.txt"))["size"] == 1
