"""The library's browser sign-in (AuthMe + one-shot loopback listener) and the refusal of a
scripted login, under asyncio and trio, against the emulator over real HTTP.

The "browser" here is an httpx client filling in the emulator's AuthMe forms and then
following the redirect to the listener over real TCP; the real headless Chromium run is
tests/cli/test_cli_browser_login.py."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
import respx
from test_client_support import API, WEB

from puterfs.client import (
    AuthenticationError,
    PuterClient,
    PuterTimeout,
    ScriptedLoginRefused,
    authme_url,
    browser_login,
    token_kind,
)
from puterfs.emulator.testing import EmulatorProcess, LocalHTTP, local_http

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("browser-emu"), username="carol", password="carolpass") as proc:
        yield proc


def _field(page: str, name: str) -> str:
    m = re.search(rf"name='{name}' value='([^']*)'", page)
    assert m, f"no {name} in the page"
    return m.group(1)


async def act_as_browser(url: str, *, approve: bool = True, password: str = "carolpass",
                         http: LocalHTTP = local_http) -> httpx.Response | None:
    """What a person does in the browser: sign in on the AuthMe page, approve, get redirected.
    ``http``: how the browser reaches names (``*.localhost`` by itself, as browsers do)."""
    async with http.AsyncClient(timeout=30, follow_redirects=False) as b:
        page = await b.get(url)
        form = {"step": "login", "username": "carol", "password": password}
        if "captchaToken" in page.text:
            form["captchaToken"] = _field(page.text, "captchaToken")
            form["captchaAnswer"] = re.search(r"<text[^>]*>(\w+)</text>", page.text).group(1)  # type: ignore[union-attr]
        r = await b.post(url, data=form)
        assert r.status_code == 303, r.text
        page = await b.get(url)
        decision = "approve" if approve else "deny"
        r = await b.post(url, data={"step": "authme", "form_key": _field(page.text, "form_key"), "decision": decision})
        if not approve:
            assert "Authorization Cancelled" in r.text
            return None
        assert r.status_code == 303
        return await b.get(r.headers["location"])  # the loopback listener, over real TCP


async def test_browser_login_gets_a_checked_full_api_access_token(emu: EmulatorProcess, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    seen: dict[str, object] = {}

    async def opener(url: str) -> None:
        seen["url"] = url
        seen["answer"] = await act_as_browser(url)

    shown: list[tuple[str, int, bool]] = []
    result = await browser_login(emu.web_url, api_url=emu.url, open_browser=opener,
                                 show_url=lambda u, p, o: shown.append((u, p, o)), timeout=60)
    url = str(seen["url"])
    assert shown and shown[0][0] == url and shown[0][2] is True
    parts = urlsplit(url)
    assert parts.path == "/" and parse_qs(parts.query)["action"] == ["authme"]
    redirect = urlsplit(parse_qs(parts.query)["redirectURL"][0])
    assert redirect.scheme == "http" and redirect.hostname == "127.0.0.1" and redirect.port == shown[0][1]
    assert len(redirect.path) > 20  # the secret
    answer = seen["answer"]
    assert isinstance(answer, httpx.Response) and answer.status_code == 200
    assert "You can close this tab" in answer.text and result.token not in answer.text
    assert result.username == "carol" and result.whoami["username"] == "carol"
    assert token_kind(result.token) == "full-api-access"
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("puterfs"))
    assert result.token not in repr(result) and result.token not in ours
    async with PuterClient(token=result.token, api_url=emu.url, web_url=emu.web_url) as c:
        assert (await c.fs_stat("~"))["is_dir"] is True
    # one shot: the listener is gone
    with pytest.raises(httpx.ConnectError):
        async with local_http.AsyncClient() as b:
            await b.get(f"http://127.0.0.1:{redirect.port}{redirect.path}?token=x")


async def test_listener_takes_only_the_secret_path_and_only_once(emu: EmulatorProcess) -> None:
    answers: dict[str, int] = {}

    async def opener(url: str) -> None:
        redirect = urlsplit(parse_qs(urlsplit(url).query)["redirectURL"][0])
        base = f"http://127.0.0.1:{redirect.port}"
        async with local_http.AsyncClient(timeout=10) as b:
            answers["wrong secret"] = (await b.get(f"{base}/not-the-secret?token=evil")).status_code
            answers["root"] = (await b.get(f"{base}/?token=evil")).status_code
            answers["no token"] = (await b.get(f"{base}{redirect.path}")).status_code
            answers["post"] = (await b.post(f"{base}{redirect.path}?token=evil")).status_code
        r = await act_as_browser(url)
        assert r is not None
        answers["real"] = r.status_code

    result = await browser_login(emu.web_url, api_url=emu.url, open_browser=opener, show_url=None, timeout=60)
    assert answers == {"wrong secret": 404, "root": 404, "no token": 400, "post": 405, "real": 200}
    assert result.username == "carol"


async def test_a_forged_token_on_the_secret_path_is_checked_and_refused(emu: EmulatorProcess) -> None:
    async def opener(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query)["redirectURL"][0]
        async with local_http.AsyncClient(timeout=10) as b:
            await b.get(redirect + "?token=aaa.bbb.ccc")

    with pytest.raises(AuthenticationError) as info:
        await browser_login(emu.web_url, api_url=emu.url, open_browser=opener, show_url=None, timeout=60)
    assert "refused" in info.value.message and "aaa.bbb.ccc" not in str(info.value)


async def test_no_answer_times_out_and_frees_the_port(emu: EmulatorProcess) -> None:
    ports: list[int] = []
    with pytest.raises(PuterTimeout):
        await browser_login(emu.web_url, api_url=emu.url, open_browser=False,
                            show_url=lambda u, p, o: ports.append(p), timeout=0.5)
    # a declined approval sends nothing either; the port is free again
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=ports[0])
    await listener.aclose()


async def test_client_login_browser_stores_the_token(emu: EmulatorProcess) -> None:
    async with PuterClient(token=None, api_url=emu.url, web_url=emu.web_url) as c:
        c.token = None
        token = await c.login_browser(open_browser=act_as_browser, show_url=None, timeout=60)
        assert c.token == token and c.username == "carol"
        assert (await c.whoami())["username"] == "carol"


@pytest.fixture(scope="module")
def named_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """A server whose domain is no *.localhost name: reached by its address plus --domain."""
    with EmulatorProcess(tmp_path_factory.mktemp("named-emu"), username="carol", password="carolpass",
                         domain="puter.test") as proc:
        yield proc


async def test_login_browser_honours_the_domain(named_emu: EmulatorProcess) -> None:
    """The address as --api-url, the domain given separately: the browser goes to the domain's
    AuthMe page (the server answers only its names) and the token is checked on api.<domain>,
    connected to the address, by login_browser() and by browser_login() alike."""
    emu = named_emu
    seen: list[str] = []

    async def opener(url: str) -> None:
        seen.append(url)
        await act_as_browser(url, http=emu.local)  # a browser with DNS (or /etc/hosts) for puter.test

    async with PuterClient(token=None, api_url=emu.address_url, domain="puter.test") as c:
        token = await c.login_browser(open_browser=opener, show_url=None, timeout=60)
        assert c.token == token and c.username == "carol" and token_kind(token) == "full-api-access"
        assert (await c.fs_stat("~"))["is_dir"] is True
    page = urlsplit(seen[-1])
    assert (page.scheme, page.netloc, page.path) == ("http", f"puter.test:{emu.port}", "/")

    result = await browser_login(emu.address_url, domain="puter.test", open_browser=opener, show_url=None,
                                 timeout=60)
    assert result.username == "carol" and result.whoami["username"] == "carol"
    assert urlsplit(seen[-1]).netloc == f"puter.test:{emu.port}"
    # without the domain the address is all the browser gets, and the server answers it 404
    pages: list[int] = []

    async def look(url: str) -> None:
        async with emu.local.AsyncClient(timeout=30) as b:
            pages.append((await b.get(url)).status_code)

    with pytest.raises(PuterTimeout):
        await browser_login(emu.address_url, open_browser=look, show_url=None, timeout=2)
    assert pages == [404]


async def test_login_on_a_captcha_server_raises_value_error_naming_the_browser_flow(emu: EmulatorProcess) -> None:
    emu.set_captcha(True)
    try:
        async with PuterClient(token=None, api_url=emu.url, web_url=emu.web_url) as c:
            with pytest.raises(ValueError) as info:
                await c.login("carol", "carolpass")
            assert isinstance(info.value, ScriptedLoginRefused)
            assert "captcha" in str(info.value) and "browser" in str(info.value)
            assert "\n" not in info.value.message
            # the browser flow still works on that server
            token = await c.login_browser(open_browser=act_as_browser, show_url=None, timeout=60)
            assert token_kind(token) == "full-api-access"
    finally:
        emu.set_captcha(False)


@pytest.mark.parametrize(
    "body",
    [
        {"error": "Captcha verification required.", "message": "Captcha verification required.", "code": "bad_request"},
        {"error": "Invalid captcha response.", "message": "Invalid captcha response.", "code": "bad_request"},
        {"code": "captcha_required"},  # the old backend
    ],
)
async def test_captcha_answers_of_both_backends_are_recognised(router: respx.MockRouter, body: dict) -> None:
    router.post(f"{WEB}/login").mock(return_value=httpx.Response(400, json=body))
    async with PuterClient(api_url=API, web_url=WEB, transport=httpx.MockTransport(router.async_handler),
                           token=None) as c:
        with pytest.raises(ScriptedLoginRefused, match="copyauth"):
            await c.login("someone", "a-password")


async def test_other_bad_requests_stay_bad_requests(router: respx.MockRouter) -> None:
    router.post(f"{WEB}/login").mock(return_value=httpx.Response(
        400, json={"error": "Invalid password.", "message": "Invalid password.", "code": "bad_request"}))
    async with PuterClient(api_url=API, web_url=WEB, transport=httpx.MockTransport(router.async_handler),
                           token=None) as c:
        with pytest.raises(ValueError) as info:
            await c.login("someone", "a-password")
        assert not isinstance(info.value, ScriptedLoginRefused)


async def test_authme_url_and_token_kinds(emu: EmulatorProcess) -> None:
    url = authme_url("https://puter.com/", "http://127.0.0.1:5000/abc")
    assert url == "https://puter.com/?action=authme&redirectURL=http%3A%2F%2F127.0.0.1%3A5000%2Fabc"
    assert token_kind(emu.token) == "session"
    assert token_kind("garbage") == "unknown" and token_kind(None) == "unknown"
    with local_http.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.token}"}) as h:
        narrow = h.post("/auth/create-access-token", json={"permissions": ["fs:x:read"]}).json()["token"]
        full = h.post("/auth/create-access-token", json={"permissions": ["full-api-access"]}).json()["token"]
        app = h.post("/auth/get-user-app-token", json={"origin": "http://x"}).json()["token"]
    assert (token_kind(narrow), token_kind(full), token_kind(app)) == ("access", "full-api-access", "app")
