"""putergenai's options dicts on fs_copy / fs_move / fs_rename / fs_write, against the
emulator over real HTTP (both event loops): nothing is ever replaced unless asked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from puterfs.client import AlreadyExists, BadRequest, NotFound, PuterClient

pytestmark = pytest.mark.anyio


@pytest.fixture
async def puter(puter_user) -> AsyncIterator[PuterClient]:
    async with PuterClient(
        token=puter_user.token, api_url=puter_user.url, web_url=puter_user.web_url,
        retry_base_delay=0.01, retry_max_delay=0.1,
    ) as client:
        await client.fs_mkdir("o")
        await client.fs_write("o/src.txt", "source")
        await client.fs_write("o/dst.txt", "keep me")
        yield client


async def test_copy_refuses_to_overwrite(puter: PuterClient) -> None:
    for options in (None, {}, {"overwrite": False}):
        with pytest.raises(AlreadyExists):
            await puter.fs_copy("o/src.txt", "o/dst.txt", options)
        assert await puter.fs_read("o/dst.txt") == b"keep me"
    await puter.fs_copy("o/src.txt", "o/dst.txt", {"overwrite": True})
    assert await puter.fs_read("o/dst.txt") == b"source"


async def test_move_refuses_to_overwrite(puter: PuterClient) -> None:
    for options in (None, {"overwrite": False}):
        with pytest.raises(AlreadyExists):
            await puter.fs_move("o/src.txt", "o/dst.txt", options)
        assert await puter.fs_read("o/dst.txt") == b"keep me"
        assert await puter.fs_read("o/src.txt") == b"source"
    moved = await puter.fs_move("o/src.txt", "o/dst.txt", {"overwrite": True})
    assert moved["name"] == "dst.txt" and await puter.fs_read("o/dst.txt") == b"source"
    with pytest.raises(NotFound):
        await puter.fs_stat("o/src.txt")


async def test_dedupe_name_picks_a_free_name(puter: PuterClient) -> None:
    copied = await puter.fs_copy("o/src.txt", "o/dst.txt", {"dedupeName": True})
    assert copied["name"] != "dst.txt" and copied["name"].startswith("dst")
    assert await puter.fs_read("o/dst.txt") == b"keep me"
    moved = await puter.fs_move("o/src.txt", "o/dst.txt", {"dedupe_name": True})
    assert moved["name"] not in ("dst.txt", copied["name"])
    written = await puter.fs_write("o/dst.txt", "third", {"dedupeName": True})
    assert written["name"] not in ("dst.txt", copied["name"], moved["name"])
    assert await puter.fs_read("o/dst.txt") == b"keep me"
    assert await puter.fs_read(written["path"]) == b"third"


async def test_move_and_copy_create_missing_parents(puter: PuterClient) -> None:
    with pytest.raises(NotFound):
        await puter.fs_move("o/src.txt", "o/new/deeper/x.txt")
    moved = await puter.fs_move("o/src.txt", "o/new/deeper/x.txt", {"createMissingParents": True})
    assert moved["path"].endswith("/o/new/deeper/x.txt")
    copied = await puter.fs_copy("o/dst.txt", "o/other/y.txt", {"create_missing_parents": True})
    assert copied["path"].endswith("/o/other/y.txt")


async def test_rename_takes_full_paths_and_bare_names(puter: PuterClient, puter_user) -> None:
    home = puter_user.home
    renamed = await puter.fs_rename(f"{home}/o/src.txt", f"{home}/o/renamed.txt")
    assert renamed["path"] == f"{home}/o/renamed.txt"
    again = await puter.fs_rename("o/renamed.txt", "bare.txt")  # a bare name: same directory
    assert again["path"] == f"{home}/o/bare.txt"
    await puter.fs_mkdir("elsewhere")
    across = await puter.fs_rename("~/o/bare.txt", "~/elsewhere/far.txt")  # another directory: a move
    assert across["path"] == f"{home}/elsewhere/far.txt"
    with pytest.raises(AlreadyExists):
        await puter.fs_rename("elsewhere/far.txt", f"{home}/o/dst.txt")
    assert await puter.fs_read("o/dst.txt") == b"keep me"
    await puter.fs_write("o/same.txt", "x")
    with pytest.raises(AlreadyExists):
        await puter.fs_rename("o/same.txt", "dst.txt")
    replaced = await puter.fs_rename("o/same.txt", "dst.txt", {"overwrite": True})
    assert replaced["name"] == "dst.txt" and await puter.fs_read("o/dst.txt") == b"x"


async def test_write_options(puter: PuterClient) -> None:
    with pytest.raises(AlreadyExists):
        await puter.fs_write("o/dst.txt", "new", {"overwrite": False})
    assert await puter.fs_read("o/dst.txt") == b"keep me"
    await puter.fs_write("o/dst.txt", "new", {"overwrite": True})
    assert await puter.fs_read("o/dst.txt") == b"new"
    with pytest.raises(NotFound):
        await puter.fs_write("o/a/b/c.txt", "deep")
    await puter.fs_write("o/a/b/c.txt", "deep", {"createMissingParents": True})
    assert await puter.fs_read("o/a/b/c.txt") == b"deep"


@pytest.mark.parametrize(
    "options",
    [{"overwrite": "yes"}, {"overwrite": True, "dedupeName": True}, {"clobber": True}, {"recursive": True}],
)
async def test_bad_options_are_refused_before_sending(puter: PuterClient, options: dict) -> None:
    for call in (
        lambda: puter.fs_copy("o/src.txt", "o/dst.txt", options),
        lambda: puter.fs_move("o/src.txt", "o/dst.txt", options),
        lambda: puter.fs_rename("o/src.txt", "o/dst.txt", options),
        lambda: puter.fs_write("o/dst.txt", "bad", options),
    ):
        with pytest.raises(BadRequest):
            await call()
    assert await puter.fs_read("o/dst.txt") == b"keep me"
    assert await puter.fs_read("o/src.txt") == b"source"
