"""Login (incl. the 2FA flow), logout, whoami, and keeping the token secret."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import respx
from test_client_support import API, TOKEN, WEB, exchange, recorded_response

from puterfs.client import (
    AuthenticationError,
    BadRequest,
    NotFound,
    OTPRequired,
    PermissionDenied,
    PuterClient,
)

pytestmark = pytest.mark.anyio

FRESH = "fresh-TOKEN-77c1"


def _with_token(rec: dict, token: str = FRESH) -> httpx.Response:
    body = dict(rec["response"])
    body["token"] = token
    return httpx.Response(rec["status"], json=body)


@pytest.fixture
async def anon(router: respx.MockRouter):
    async with PuterClient(api_url=API, web_url=WEB, transport=httpx.MockTransport(router.async_handler),
                           token=None, retry_base_delay=0.001, retry_max_delay=0.01) as c:
        c.token = None
        yield c


async def test_login_posts_to_web_host_without_origin(anon: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("auth-more.jsonl", "login admin (full body)")
    route = router.post(f"{WEB}/login").mock(return_value=_with_token(rec))
    token = await anon.login("admin", "pw-123456")
    request = route.calls.last.request
    assert request.url.host == "puter.test" and request.url.path == "/login"
    assert json.loads(request.content) == {"username": "admin", "password": "pw-123456"}
    assert "origin" not in request.headers and "authorization" not in request.headers
    assert token == FRESH and anon.token == FRESH
    assert anon.username == rec["response"]["user"]["username"]


async def test_login_with_email_sends_email_field(anon: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("auth-more.jsonl", "login with email field")
    route = router.post(f"{WEB}/login").mock(return_value=_with_token(rec))
    await anon.login("someone@example.com", "pw-123456")
    assert set(json.loads(route.calls.last.request.content)) == set(rec["request"]) == {"email", "password"}


@pytest.mark.parametrize(
    ("file", "name", "exc"),
    [
        ("auth-more.jsonl", "login wrong password", AuthenticationError),
        ("auth-more.jsonl", "login unknown user", NotFound),
        ("auth.jsonl", "login bad origin", PermissionDenied),
    ],
)
async def test_login_errors_keep_status_and_code(
    anon: PuterClient, router: respx.MockRouter, file: str, name: str, exc: type
) -> None:
    rec = exchange(file, name)
    route = router.post(f"{WEB}/login").mock(return_value=recorded_response(rec))
    with pytest.raises(exc) as info:
        await anon.login("admin", "wrong-pw")
    assert info.value.status == rec["status"] and info.value.code == rec["response"]["code"]
    assert anon.token is None
    assert route.call_count == 1


async def test_login_old_backend_plain_text_error(anon: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{WEB}/login").mock(
        return_value=httpx.Response(400, text="Incorrect password.", headers={"content-type": "text/html"})
    )
    with pytest.raises(BadRequest, match="Incorrect password"):
        await anon.login("admin", "wrong-pw")


async def test_login_rate_limit_is_not_retried(anon: PuterClient, router: respx.MockRouter) -> None:
    from puterfs.client import RateLimited

    route = router.post(f"{WEB}/login").mock(
        return_value=httpx.Response(429, json={"code": "too_many_requests", "message": "Too many requests."})
    )
    with pytest.raises(RateLimited):
        await anon.login("admin", "pw-123456")
    assert route.call_count == 1


async def test_otp_required_without_code(anon: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("auth-more.jsonl", "login with 2FA enabled -> otp step")
    assert rec["status"] == 202
    body = dict(rec["response"], otp_jwt_token="otp-jwt-1")
    router.post(f"{WEB}/login").mock(return_value=httpx.Response(202, json=body))
    with pytest.raises(OTPRequired) as info:
        await anon.login("twofa", "pw-123456")
    assert isinstance(info.value, ValueError)
    assert info.value.otp_token == "otp-jwt-1"
    assert "otp-jwt-1" not in repr(info.value) and "otp-jwt-1" not in str(info.value)
    assert anon.token is None


async def test_otp_flow_with_code(anon: PuterClient, router: respx.MockRouter) -> None:
    step = exchange("auth-more.jsonl", "login with 2FA enabled -> otp step")
    ok = exchange("auth-more.jsonl", "login/otp right code")
    router.post(f"{WEB}/login").mock(
        return_value=httpx.Response(202, json=dict(step["response"], otp_jwt_token="otp-jwt-1"))
    )
    otp_route = router.post(f"{WEB}/login/otp").mock(return_value=_with_token(ok))
    assert await anon.login("twofa", "pw-123456", otp="123456") == FRESH
    assert json.loads(otp_route.calls.last.request.content) == {"token": "otp-jwt-1", "code": "123456"}
    assert anon.username == ok["response"]["user"]["username"]


async def test_otp_wrong_code_then_retry_with_same_token(anon: PuterClient, router: respx.MockRouter) -> None:
    wrong = exchange("auth-more.jsonl", "login/otp wrong code")
    ok = exchange("auth-more.jsonl", "login/otp right code")
    assert wrong["status"] == 200 and wrong["response"] == {"proceed": False}
    route = router.post(f"{WEB}/login/otp").mock(side_effect=[recorded_response(wrong), _with_token(ok)])
    with pytest.raises(AuthenticationError):
        await anon.login_otp("otp-jwt-1", "000000")
    assert anon.token is None
    assert await anon.login_otp("otp-jwt-1", "654321") == FRESH
    assert route.call_count == 2


async def test_otp_bad_token_is_bad_request(anon: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{WEB}/login/otp").mock(
        return_value=recorded_response(exchange("auth-more.jsonl", "login/otp bad token"))
    )
    with pytest.raises(BadRequest):
        await anon.login_otp("expired", "123456")


async def test_whoami_sets_username(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("auth-more.jsonl", "whoami (admin, full body)")
    route = router.get(f"{API}/whoami").mock(return_value=recorded_response(rec))
    client.username = None
    data = await client.whoami()
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "content-type" not in request.headers and "origin" not in request.headers
    assert data == rec["response"] and client.username == rec["response"]["username"]


async def test_logout_posts_to_web_and_forgets_token(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{WEB}/logout").mock(return_value=httpx.Response(200, text="ok"))
    await client.logout()
    assert route.calls.last.request.headers["authorization"] == f"Bearer {TOKEN}"
    assert client.token is None and client.username is None
    with pytest.raises(AuthenticationError):
        await client.fs_stat("/admin")


async def test_no_token_fails_before_sending(anon: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/stat")
    with pytest.raises(AuthenticationError):
        await anon.fs_stat("/admin/x")
    assert route.call_count == 0


async def test_token_is_never_shown(client: PuterClient, router: respx.MockRouter, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    rec = exchange("fs.jsonl", "stat bad token", "fs")
    router.post(f"{API}/stat").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(503, json={"code": "db_unavailable"}),
                     recorded_response(rec)]
    )
    with pytest.raises(AuthenticationError) as info:
        await client.fs_stat("/admin/x")
    assert TOKEN not in repr(client) and "token=<set>" in repr(client)
    assert TOKEN not in repr(info.value) and TOKEN not in str(info.value) and TOKEN not in str(info.value.body)
    assert TOKEN not in caplog.text
    assert "stat" in caplog.text  # the retries were logged, without the token


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUTER_TOKEN", "env-token")
    monkeypatch.setenv("PUTER_API_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("PUTER_WEB_URL", "http://127.0.0.1:9")
    c = PuterClient()
    assert c.token == "env-token" and c.api_url == "http://127.0.0.1:9" and c.web_url == "http://127.0.0.1:9"
    assert "env-token" not in repr(c)
