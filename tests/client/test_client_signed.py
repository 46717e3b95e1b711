"""Signed reads: ``POST /sign`` by uid, then ``GET /file`` with a Range (no token), checked and
retried as ``/read`` is, and the signature kept out of reprs, errors and log lines."""

from __future__ import annotations

import hashlib
import json
import logging

import httpx
import pytest
import respx
from test_client_support import API

from puterfs.client import (
    AuthenticationError,
    BadAnswer,
    NotFound,
    PermissionDenied,
    PuterClient,
    PuterConnectionError,
    SignedRead,
)
from puterfs.client.fs import SIGN_MAX_ITEMS

pytestmark = pytest.mark.anyio

DATA = b"hello world\n"
MD5 = hashlib.md5(DATA).hexdigest()
SIG = "67d0293d7020c5697be94bb004fc9d6ad19d52ece1635b71004727fbeb40abfb"
EXPIRES = 10001795626751
SIGNED = SignedRead("c0799416-4140-4a0b-afb3-d6f656455f52", EXPIRES, SIG)


def slot(uid: str) -> dict:
    q = f"uid={uid}&expires={EXPIRES}&signature={SIG}"
    return {"uid": uid, "expires": EXPIRES, "signature": SIG, "url": f"{API}/file?{q}",
            "read_url": f"{API}/file?{q}", "fsentry_name": "a.txt", "fsentry_size": 12}


def ranged(first: int, last: int, body: bytes | None = None) -> httpx.Response:
    part = DATA[first : last + 1] if body is None else body
    return httpx.Response(206, content=part, headers={
        "content-type": "text/plain", "etag": f'"{MD5}"', "content-range": f"bytes {first}-{last}/{len(DATA)}"})


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": message, "message": message, "code": code})


async def test_sign_reads_signs_many_uids_in_one_request(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/sign").mock(
        return_value=httpx.Response(200, json={"signatures": [slot("u1"), {}, slot("u3")]}))
    got = await client.fs_sign_reads(["u1", "u2", "u3"])
    assert route.call_count == 1
    assert json.loads(route.calls.last.request.content) == {
        "items": [{"uid": u, "action": "read"} for u in ("u1", "u2", "u3")]}
    assert got == [SignedRead("u1", EXPIRES, SIG), None, SignedRead("u3", EXPIRES, SIG)]
    assert got[0] is not None and got[0].params() == {"uid": "u1", "expires": str(EXPIRES), "signature": SIG}
    # more than one request's worth: split, in order
    many = [f"u{i}" for i in range(SIGN_MAX_ITEMS + 1)]
    route.mock(side_effect=lambda r: httpx.Response(200, json={
        "signatures": [slot(i["uid"]) for i in json.loads(r.content)["items"]]}))
    assert [s.uid for s in await client.fs_sign_reads(many) if s] == many
    assert route.call_count == 3


async def test_sign_reads_refuses_an_answer_for_other_uids(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/sign").mock(return_value=httpx.Response(200, json={"signatures": [slot("other")]}))
    with pytest.raises(BadAnswer):
        await client.fs_sign_reads(["u1"])


def test_the_signature_is_never_shown() -> None:
    assert SIG not in repr(SIGNED) and SIG not in str(SIGNED) and SIGNED.uid in repr(SIGNED)


async def test_read_signed_sends_a_ranged_get_of_file_without_the_token(
    client: PuterClient, router: respx.MockRouter
) -> None:
    route = router.get(f"{API}/file").mock(return_value=ranged(6, 10))
    data, etag = await client.fs_read_signed(SIGNED, offset=6, length=5, size=12)
    assert (data, etag) == (b"world", MD5)  # the ETag of the whole file, unquoted
    req = route.calls.last.request
    assert dict(req.url.params) == {"uid": SIGNED.uid, "expires": str(EXPIRES), "signature": SIG}
    assert req.headers["range"] == "bytes=6-10" and "authorization" not in req.headers
    # the scopes of /file, not /read's
    scopes = client.pacer.statistics()["scopes"]
    assert scopes["fs:signed-read"]["in_window"] == 1 and "fs:read" not in scopes
    # an empty range sends nothing; past the end is clamped
    assert await client.fs_read_signed(SIGNED, offset=12, length=4, size=12) == (b"", None)
    route.mock(return_value=ranged(8, 11))
    assert (await client.fs_read_signed(SIGNED, offset=8, length=100, size=12))[0] == b"rld\n"
    assert route.calls.last.request.headers["range"] == "bytes=8-11"


async def test_read_signed_into_fills_the_buffer_and_sends_again_after_bad_answers(
    client: PuterClient, router: respx.MockRouter
) -> None:
    short = ranged(5, 11, b" wor")  # cut short
    other = ranged(4, 10)  # other bytes than asked for
    html = httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>proxy</html>")
    busy = error(502, "bad_gateway", "Bad Gateway")
    route = router.get(f"{API}/file").mock(side_effect=[short, other, html, busy, ranged(5, 11)])
    buf = bytearray(7)
    etag = await client.fs_read_signed_into(SIGNED, memoryview(buf), offset=5, size=12)
    assert bytes(buf) == b" world\n" and etag == MD5 and route.call_count == 5
    assert "authorization" not in route.calls.last.request.headers
    # a whole file that does not match its MD5 ETag is refused as well, then read again
    whole = {"content-type": "text/plain", "etag": f'"{MD5}"'}
    route.mock(side_effect=[httpx.Response(200, content=b"hello World\n", headers=whole),
                            httpx.Response(200, content=DATA, headers=whole)])
    full = bytearray(12)
    assert await client.fs_read_signed_into(SIGNED, memoryview(full), offset=0, size=12) == MD5
    assert bytes(full) == DATA and "range" not in route.calls.last.request.headers


@pytest.mark.parametrize(("status", "code", "message", "exc"), [
    (403, "forbidden", "Authentication failed", PermissionDenied),
    (404, "subject_does_not_exist", "Entry not found: uuid=c0799416-4140-4a0b-afb3-d6f656455f52", NotFound),
    (401, "account_suspended", "Account suspended", AuthenticationError),
])
async def test_refusals_of_a_signed_read_are_not_retried(
    client: PuterClient, router: respx.MockRouter, status: int, code: str, message: str, exc: type
) -> None:
    route = router.get(f"{API}/file").mock(return_value=error(status, code, message))
    with pytest.raises(exc):
        await client.fs_read_signed(SIGNED, offset=0, length=4, size=12)
    with pytest.raises(exc):
        await client.fs_read_signed_into(SIGNED, memoryview(bytearray(4)), offset=0, size=12)
    assert route.call_count == 2


async def test_the_signature_stays_out_of_errors_and_logs(
    client: PuterClient, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx's request lines too (INFO)
    route = router.get(f"{API}/file").mock(side_effect=[ranged(0, 3, b"he"), ranged(0, 3)])
    await client.fs_read_signed_into(SIGNED, memoryview(bytearray(4)), offset=0, size=12)
    assert route.call_count == 2
    lines = [r.getMessage() for r in caplog.records]
    assert any("/file?" in line for line in lines)  # httpx logged the URL ...
    assert any("sending it again" in line for line in lines)
    assert not any(SIG in line for line in lines)  # ... without the signature
    route.mock(side_effect=httpx.ConnectError(f"cannot reach {API}/file?uid=u&signature={SIG}"))
    with pytest.raises(PuterConnectionError) as info:
        await client.fs_read_signed(SIGNED, offset=0, length=4, size=12)
    assert SIG not in str(info.value) and SIG not in repr(info.value)
    assert not any(SIG in r.getMessage() for r in caplog.records)
