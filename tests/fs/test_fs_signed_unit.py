"""fs/remote.py `SignedReads`: which reads get a signed URL, how uids are signed together, and
what a refusal or a failed /sign leaves (a client standing in for the server)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from puterfs.client._errors import AuthenticationError, NotFound, PermissionDenied, PuterConnectionError
from puterfs.fs import remote as remote_mod
from puterfs.fs.remote import Remote

pytestmark = pytest.mark.trio


class _Client:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = trio.Event()
        self.gate.set()
        self.fail_sign: BaseException | None = None
        self.gone: set[str] = set()
        self.read_error: BaseException | None = None
        self.reads: list[Any] = []

    async def fs_sign_reads(self, uids: list[str]) -> list[Any]:
        self.batches.append(list(uids))
        await self.gate.wait()
        if self.fail_sign is not None:
            raise self.fail_sign
        return [None if u in self.gone else ("signed", u) for u in uids]

    async def fs_read_signed(self, signed: Any, *, offset: int, length: int, size: int) -> tuple[bytes, str]:
        self.reads.append(signed)
        if self.read_error is not None:
            raise self.read_error
        return b"x" * length, "v1"


def _remote() -> tuple[Remote, _Client]:
    client = _Client()
    return Remote(client, "/u"), client


async def test_a_files_first_read_goes_by_path_then_it_is_signed_once() -> None:
    r, c = _remote()
    assert await r.read_signed("a", 0, 4, size=10) is None  # first read: by path, nothing signed
    assert c.batches == []
    assert await r.read_signed("a", 4, 4, size=10) == (b"xxxx", "v1")
    assert await r.read_signed("a", 8, 2, size=10) == (b"xx", "v1")
    assert c.batches == [["a"]] and c.reads == [("signed", "a")] * 2


async def test_uids_wanted_while_a_sign_is_under_way_go_together_in_the_next() -> None:
    r, c = _remote()
    for u in "abcd":
        await r.signed.get(u)  # each read once
    c.gate = trio.Event()
    got: dict[str, Any] = {}

    async def want(u: str) -> None:
        got[u] = await r.signed.get(u)

    async with trio.open_nursery() as n:
        n.start_soon(want, "a")
        await trio.testing.wait_all_tasks_blocked()
        for u in "bcd":
            n.start_soon(want, u)
        await trio.testing.wait_all_tasks_blocked()
        c.gate.set()
    assert [sorted(b) for b in c.batches] == [["a"], ["b", "c", "d"]]
    assert got == {u: ("signed", u) for u in "abcd"}


async def test_a_failed_sign_reads_by_path_this_time_only() -> None:
    r, c = _remote()
    await r.signed.get("a")
    c.fail_sign = PuterConnectionError("down")
    assert await r.signed.get("a") is None
    c.fail_sign = None
    assert await r.signed.get("a") == ("signed", "a")  # signed on the next read
    c.gone.add("b")
    await r.signed.get("b")
    assert await r.signed.get("b") is None and await r.signed.get("b") is None
    assert c.batches == [["a"], ["a"], ["b"]]  # a uid the server cannot sign: never asked again


@pytest.mark.parametrize("exc", [PermissionDenied("refused", status=403), NotFound("gone", status=404),
                                 AuthenticationError("Account suspended", status=401, code="account_suspended")])
async def test_a_refused_url_is_dropped_and_the_file_read_by_path(exc: BaseException) -> None:
    r, c = _remote()
    await r.signed.get("a")
    c.read_error = exc
    assert await r.read_signed("a", 0, 4, size=10) is None
    assert r.token_refused is None  # a 401 of a signed read says nothing of the token
    c.read_error = None
    assert await r.read_signed("a", 0, 4, size=10) is None  # by path from now on
    assert c.batches == [["a"]] and len(c.reads) == 1


async def test_the_urls_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_mod, "SIGNED_MAX", 3)
    r, c = _remote()
    for u in "abcde":
        await r.signed.get(u)
        await r.signed.get(u)
    assert list(r.signed._urls) == ["c", "d", "e"] and len(r.signed._seen) == 3
    await r.signed.get("e")
    assert len(c.batches) == 5  # "e" still known
