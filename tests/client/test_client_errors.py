"""Error mapping (both server error styles), retries, backoff, Retry-After, TLS warning."""

from __future__ import annotations

import time
import warnings

import httpx
import pytest
import respx
from test_client_support import API, WEB, exchange, recorded_response

import puterfs.client._client as client_module
from puterfs.client import (
    AuthenticationError,
    NotFound,
    PermissionDenied,
    PuterClient,
    PuterConnectionError,
    PuterTimeout,
    QuotaExceeded,
    RateLimited,
    ServerError,
)
from puterfs.client._retry import RetryPolicy

pytestmark = pytest.mark.anyio

OLD_STYLE_DRIVER_ERROR = {
    "success": False,
    "error": {"$": "heyputer:api/APIError", "code": "forbidden", "message": "Permission denied.", "status": 403},
}


@pytest.mark.parametrize(
    ("file", "name", "exc"),
    [
        ("fs.jsonl", "stat no auth", AuthenticationError),
        ("fs.jsonl", "stat bad token", AuthenticationError),
        ("fs.jsonl", "stat on root host (no api subdomain)", NotFound),
        ("fs.jsonl", "fs stat with chat-only access token", PermissionDenied),
        ("fs.jsonl", "stat own home as new user", PermissionDenied),
    ],
)
async def test_new_style_errors(client: PuterClient, router: respx.MockRouter, file, name, exc) -> None:
    rec = exchange(file, name)
    router.post(f"{API}/stat").mock(return_value=recorded_response(rec))
    with pytest.raises(exc) as info:
        await client.fs_stat("/admin")
    assert info.value.status == rec["status"] and info.value.code == rec["response"]["code"]


async def test_old_style_rest_error_without_error_key(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/stat").mock(
        return_value=httpx.Response(404, json={"message": "File or directory not found.", "code": "subject_does_not_exist"})
    )
    with pytest.raises(NotFound, match="File or directory not found"):
        await client.fs_stat("/admin/x")


async def test_old_style_driver_error_in_http_200(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(return_value=httpx.Response(200, json=OLD_STYLE_DRIVER_ERROR))
    with pytest.raises(PermissionDenied) as info:
        await client.ai_chat("hi", {"model": "fake"})
    assert info.value.status == 403 and info.value.code == "forbidden"


async def test_old_style_driver_error_string(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(
        return_value=httpx.Response(200, json={"success": False, "error": "something broke"})
    )
    with pytest.raises(ServerError, match="something broke"):
        await client.drivers_call("puter-chat-completion", None, "complete", {"model": "fake"})


async def test_driver_200_without_result_is_an_error(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/drivers/call").mock(return_value=httpx.Response(200, json={"success": True}))
    with pytest.raises(ServerError):
        await client.tts_voices()


async def test_quota_error(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/batch").mock(
        return_value=httpx.Response(
            413, headers={"X-Needs-Upgrade": "true"},
            json={"error": "too big", "message": "too big", "code": "file_too_large"},
        )
    )
    with pytest.raises(QuotaExceeded):
        await client.fs_write("/admin/big.bin", b"x", {"overwrite": False})


async def test_idempotent_call_retries_5xx_and_connection_errors(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "stat file", "fs")
    route = router.post(f"{API}/stat").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.Response(500, json={"error": "Internal Server Error", "code": "internal_error"}),
            recorded_response(rec),
        ]
    )
    assert (await client.fs_stat("/admin/t1/hello.txt"))["name"] == rec["response"]["name"]
    assert route.call_count == 4


async def test_retries_are_bounded(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/stat").mock(
        return_value=httpx.Response(503, json={"code": "db_unavailable", "message": "down"})
    )
    with pytest.raises(ServerError) as info:
        await client.fs_stat("/admin")
    assert info.value.status == 503
    assert route.call_count == 1 + 3  # max_retries=3 in the fixture


async def test_retry_after_is_honoured(router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "df", "fs")
    route = router.post(f"{API}/df").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "0.3"}, json={"code": "too_many_requests", "message": "Too many requests."}),
            recorded_response(rec),
        ]
    )
    async with PuterClient(
        token="t", api_url=API, web_url=WEB, transport=httpx.MockTransport(router.async_handler),
        retry_base_delay=0.0, retry_max_delay=5.0,
    ) as c:
        start = time.monotonic()
        assert await c.fs_df() == rec["response"]
        assert time.monotonic() - start >= 0.29
    assert route.call_count == 2


async def test_non_idempotent_not_retried_after_sending(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/drivers/call").mock(side_effect=httpx.ReadError("reset"))
    with pytest.raises(PuterConnectionError):
        await client.ai_chat("hi", {"model": "fake"})
    assert route.call_count == 1
    route.side_effect = None
    route.return_value = httpx.Response(502, json={"error": "bad gateway", "code": "upstream_failed"})
    with pytest.raises(ServerError):
        await client.ai_chat("hi", {"model": "fake"})
    assert route.call_count == 2


async def test_non_idempotent_retried_on_connect_error_and_429(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers-more.jsonl", "chat non-stream fake (full body, metadata)")
    route = router.post(f"{API}/drivers/call").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(429, json={"code": "too_many_requests", "message": "Too many concurrent requests."}),
            recorded_response(rec),
        ]
    )
    out = await client.ai_chat("hi", {"model": "fake"})
    assert out["used_model"] == "fake"
    assert route.call_count == 3


async def test_timeout_maps_to_puter_timeout(client: PuterClient, router: respx.MockRouter) -> None:
    router.get(f"{API}/whoami").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(PuterTimeout) as info:
        await client.whoami()
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


async def test_rate_limited_carries_retry_after(client: PuterClient, router: respx.MockRouter) -> None:
    # login is not retried on 429 (its window is 15 minutes); the error keeps Retry-After.
    # How 429s are retried otherwise: test_client_pacing.py.
    route = router.post(f"{WEB}/login").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "0"}, json={"code": "too_many_requests"})
    )
    with pytest.raises(RateLimited) as info:
        await client.login("alice", "password1")
    assert info.value.retry_after == 0.0
    assert route.call_count == 1


def test_backoff_grows_with_jitter_and_cap() -> None:
    policy = RetryPolicy(max_retries=6, base_delay=0.25, max_delay=2.0)
    for attempt, step in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (6, 2.0)]:
        for _ in range(20):
            assert step / 2 <= policy.delay(attempt) <= step
    assert policy.delay(1, retry_after=1.5) == 1.5
    assert policy.delay(1, retry_after=100.0) == 2.0


def test_ignore_ssl_warns_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_warned_insecure", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PuterClient(token="t", ignore_ssl=True, api_url="https://127.0.0.1:1")
        PuterClient(token="t", ignore_ssl=True, api_url="https://127.0.0.1:1")
    assert len([w for w in caught if "TLS" in str(w.message)]) == 1
