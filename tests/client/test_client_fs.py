"""Filesystem methods: request shapes and parsing against recorded 26.07 exchanges."""

from __future__ import annotations

import io
import json
import os

import httpx
import pytest
import respx
from test_client_support import API, assert_api_request, exchange, parse_multipart, recorded_response

from puterfs.client import (
    AlreadyExists,
    BadRequest,
    Conflict,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    PuterClient,
)

pytestmark = pytest.mark.anyio

FS2_USER = "savvy_door_942390"
FS2 = f"/{FS2_USER}/fs2"


def _json(request: httpx.Request) -> dict:
    assert request.headers["content-type"] == "application/json"
    return json.loads(request.content)


# ---------------------------------------------------------------- stat / readdir


async def test_stat_sends_post_with_path_and_returns_entry(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "stat home", "fs")
    route = router.post(f"{API}/stat").mock(return_value=recorded_response(rec))
    entry = await client.fs_stat("~")
    request = route.calls.last.request
    assert_api_request(request, "POST", "/stat")
    assert _json(request) == rec["request"] == {"path": "/admin"}
    assert entry["path"] == "/admin" and entry["is_dir"] is True and entry["size"] is None


@pytest.mark.parametrize(
    ("name", "exc"),
    [("stat missing", NotFound), ("stat no auth", None), ("stat bad token", None)],
)
async def test_stat_errors(client: PuterClient, router: respx.MockRouter, name: str, exc: type | None) -> None:
    from puterfs.client import AuthenticationError

    rec = exchange("fs.jsonl", name, "fs")
    router.post(f"{API}/stat").mock(return_value=recorded_response(rec))
    with pytest.raises(exc or AuthenticationError) as info:
        await client.fs_stat("/admin/nope.txt")
    assert info.value.status == rec["status"]
    assert info.value.code == rec["response"]["code"]


async def test_relative_and_tilde_paths_resolve_against_home(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "stat file", "fs")
    route = router.post(f"{API}/stat").mock(return_value=recorded_response(rec))
    for given, sent in [
        ("t1/hello.txt", "/admin/t1/hello.txt"),
        ("~/t1/./hello.txt", "/admin/t1/hello.txt"),
        ("/admin//t1/x/../hello.txt", "/admin/t1/hello.txt"),
        ("~", "/admin"),
    ]:
        await client.fs_stat(given)
        assert _json(route.calls.last.request) == {"path": sent}


async def test_home_uses_whoami_once(router: respx.MockRouter) -> None:
    rec = exchange("auth-more.jsonl", "whoami (admin, full body)")
    who = router.get(f"{API}/whoami").mock(return_value=recorded_response(rec))
    router.post(f"{API}/stat").mock(return_value=recorded_response(exchange("fs.jsonl", "stat home", "fs")))
    async with PuterClient(
        token="t", api_url=API, web_url="http://puter.test", transport=httpx.MockTransport(router.async_handler)
    ) as c:
        assert await c.home() == "/" + rec["response"]["username"]
        await c.fs_stat("x")
        await c.home()
    assert who.call_count == 1
    assert c.username == rec["response"]["username"]


async def test_readdir_follows_cursor_pages(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    pages = [
        exchange("fs-more.jsonl", "readdir paginated limit 2 includeTotal (page 1)"),
        exchange("fs-more.jsonl", "readdir paginated limit 2 (page 2, cursor)"),
        exchange("fs-more.jsonl", "readdir paginated limit 2 (page 3, cursor)"),
    ]
    route = router.post(f"{API}/readdir").mock(side_effect=[recorded_response(p) for p in pages])
    entries = await client.fs_readdir("fs2/pg", {"limit": 2})
    assert [e["name"] for e in entries] == ["e1", "e2", "e3", "e4", "e5"]
    bodies = [_json(call.request) for call in route.calls]
    assert bodies[0] == {"path": f"{FS2}/pg", "limit": 2, "cursor": None}
    assert bodies[1]["cursor"] == pages[0]["response"]["cursor"]
    assert bodies[2]["cursor"] == pages[1]["response"]["cursor"]
    assert "cursor" not in pages[2]["response"]


async def test_readdir_accepts_plain_array(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "readdir", "fs")
    router.post(f"{API}/readdir").mock(return_value=recorded_response(rec))
    entries = await client.fs_readdir("/admin/t1")
    assert isinstance(entries, list) and entries == rec["response"]


async def test_readdir_errors(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/readdir").mock(
        side_effect=[
            recorded_response(exchange("fs.jsonl", "readdir missing", "fs")),
            recorded_response(exchange("fs.jsonl", "readdir of file", "fs")),
        ]
    )
    with pytest.raises(NotFound):
        await client.fs_readdir("/admin/missing")
    with pytest.raises(NotADirectory):
        await client.fs_readdir("/admin/t1/hello.txt")


# ------------------------------------------------------------------- mkdir


async def test_mkdir_sends_snake_case_options(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "mkdir parents", "fs")
    route = router.post(f"{API}/mkdir").mock(return_value=recorded_response(rec))
    entry = await client.fs_mkdir("/admin/t1/a/b", {"createMissingParents": True})
    body = _json(route.calls.last.request)
    assert body == {"path": "/admin/t1/a/b", "dedupe_name": False, "create_missing_parents": True}
    assert entry["is_dir"] is True and entry["path"] == rec["response"]["path"]


async def test_mkdir_existing_returns_entry_and_file_in_way_conflicts(
    client: PuterClient, router: respx.MockRouter
) -> None:
    client.username = FS2_USER
    router.post(f"{API}/mkdir").mock(
        side_effect=[
            recorded_response(exchange("fs.jsonl", "mkdir exists", "fs")),
            recorded_response(exchange("fs-more.jsonl", "mkdir where a file of that name exists")),
            recorded_response(exchange("fs-more.jsonl", "mkdir under a file (parent is a file)")),
        ]
    )
    assert (await client.fs_mkdir("/admin/t1"))["name"] == "t1"
    with pytest.raises(AlreadyExists):
        await client.fs_mkdir("fs2/a.txt")
    with pytest.raises((Conflict, NotADirectory)):
        await client.fs_mkdir("fs2/a.txt/sub")


# ------------------------------------------------------------------- write


async def test_write_is_multipart_batch_with_explicit_flags(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    rec = exchange("fs-more.jsonl", "batch write a.txt")
    route = router.post(f"{API}/batch").mock(return_value=recorded_response(rec))
    entry = await client.fs_write("fs2/a.txt", "hello world\n")
    request = route.calls.last.request
    assert_api_request(request, "POST", "/batch")
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(request.headers["content-length"]) == len(request.content)
    parts = parse_multipart(request)
    assert [p["name"] for p in parts] == ["fileinfo", "operation", "file"]
    assert parts[0]["value"] == {"name": "a.txt", "type": "text/plain", "size": 12}
    assert parts[1]["value"] == {
        "op": "write",
        "path": FS2,
        "name": "a.txt",
        "item_upload_id": 0,
        "overwrite": True,
        "dedupe_name": False,
        "create_missing_parents": False,
    }
    assert parts[2]["filename"] == "a.txt" and parts[2]["body"] == b"hello world\n"
    assert entry == rec["response"]["results"][0]


async def test_write_no_overwrite_raises_already_exists_on_218(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "batch write again (exists, overwrite false, dedupe false)", "fs")
    assert rec["status"] == 218
    route = router.post(f"{API}/batch").mock(return_value=recorded_response(rec))
    with pytest.raises(AlreadyExists) as info:
        await client.fs_write("/admin/t1/hello.txt", b"hello world\n", {"overwrite": False})
    assert info.value.status == 409 and info.value.code == "item_with_same_name_exists"
    op = parse_multipart(route.calls.last.request)[1]["value"]
    assert op["overwrite"] is False and op["dedupe_name"] is False
    assert route.call_count == 1  # a non-overwrite write is not retried


async def test_write_create_missing_parents_and_file_objects(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    rec = exchange("fs-more.jsonl", "batch write with create_missing_parents into missing folder")
    route = router.post(f"{API}/batch").mock(return_value=recorded_response(rec))
    buf = io.BytesIO(b"skip:" + b"payload")
    buf.seek(5)  # content starts at the file object's position
    await client.fs_write("fs2/new/deep/c.txt", buf, {"create_missing_parents": True})
    parts = parse_multipart(route.calls.last.request)
    assert parts[1]["value"]["create_missing_parents"] is True
    assert parts[1]["value"]["path"] == f"{FS2}/new/deep"
    assert parts[0]["value"]["size"] == 7 and parts[2]["body"] == b"payload"


async def test_write_from_path_and_empty_file(
    client: PuterClient, router: respx.MockRouter, tmp_path
) -> None:
    client.username = FS2_USER
    rec = exchange("fs-more.jsonl", "batch write empty (0-byte) file")
    route = router.post(f"{API}/batch").mock(return_value=recorded_response(rec))
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    entry = await client.fs_write("fs2/empty.txt", src)
    parts = parse_multipart(route.calls.last.request)
    assert parts[0]["value"]["size"] == 0 and parts[2]["body"] == b""
    assert entry["size"] == 0


async def test_write_refuses_text_mode_files_before_sending(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/batch")
    with pytest.raises(TypeError):
        await client.fs_write("x.txt", io.StringIO("text"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await client.fs_write("x.txt", 42)  # type: ignore[arg-type]
    assert route.call_count == 0


async def test_write_spools_non_seekable_streams(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs-more.jsonl", "batch write a.txt")
    route = router.post(f"{API}/batch").mock(
        side_effect=[httpx.Response(500, json={"code": "internal_error"}), recorded_response(rec)]
    )
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"through a pipe")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        await client.fs_write("a.txt", pipe)
    parts = [parse_multipart(call.request) for call in route.calls]
    assert [p[2]["body"] for p in parts] == [b"through a pipe"] * 2
    assert parts[0][0]["value"]["size"] == 14


async def test_overwrite_write_retries_and_resends_from_start(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    rec = exchange("fs-more.jsonl", "batch overwrite a.txt (different size)")
    route = router.post(f"{API}/batch").mock(
        side_effect=[httpx.Response(503, json={"code": "internal_error", "message": "busy"}), recorded_response(rec)]
    )
    buf = io.BytesIO(b"0123456789")
    await client.fs_write("fs2/a.txt", buf)
    assert route.call_count == 2
    bodies = [parse_multipart(c.request)[2]["body"] for c in route.calls]
    assert bodies == [b"0123456789", b"0123456789"]


async def test_write_many_one_request_with_per_file_results(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    rec = exchange("fs-more.jsonl", "batch two files: one new, one colliding (dedupe false, overwrite false)")
    route = router.post(f"{API}/batch").mock(return_value=recorded_response(rec))
    results = await client.fs_write_many([("fs2/b.txt", "bbb\n"), ("fs2/a.txt", b"AAAA\n")], overwrite=False)
    assert route.call_count == 1
    parts = parse_multipart(route.calls.last.request)
    assert [p["name"] for p in parts] == ["fileinfo", "fileinfo", "operation", "operation", "file", "file"]
    assert [p["value"]["item_upload_id"] for p in parts[2:4]] == [0, 1]
    assert [p["body"] for p in parts[4:]] == [b"bbb\n", b"AAAA\n"]
    assert isinstance(results[0], dict) and results[0]["name"] == "b.txt"
    assert isinstance(results[1], AlreadyExists)


async def test_write_many_splits_above_64_files(client: PuterClient, router: respx.MockRouter) -> None:
    template = exchange("fs-more.jsonl", "batch write a.txt")["response"]["results"][0]

    def answer(request: httpx.Request) -> httpx.Response:
        ops = [p["value"] for p in parse_multipart(request) if p["name"] == "operation"]
        return httpx.Response(200, json={"results": [dict(template, name=op["name"]) for op in ops]})

    route = router.post(f"{API}/batch").mock(side_effect=answer)
    files = [(f"d/f{i}.txt", f"{i}") for i in range(70)]
    results = await client.fs_write_many(files)
    assert route.call_count == 2
    assert [r["name"] for r in results] == [f"f{i}.txt" for i in range(70)]


async def test_write_many_whole_request_failure_is_returned_per_file(
    client: PuterClient, router: respx.MockRouter
) -> None:
    router.post(f"{API}/batch").mock(
        return_value=recorded_response(exchange("fs.jsonl", "stat bad token", "fs"))
    )
    from puterfs.client import AuthenticationError

    results = await client.fs_write_many([("a", "1"), ("b", "2")])
    assert len(results) == 2 and all(isinstance(r, AuthenticationError) for r in results)


# -------------------------------------------------------------------- read


async def test_read_full_uses_file_query_and_no_range(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    rec = exchange("fs-more.jsonl", "read full (headers)")
    route = router.get(f"{API}/read").mock(return_value=recorded_response(rec))
    data = await client.fs_read("fs2/a.txt")
    request = route.calls.last.request
    assert_api_request(request, "GET", "/read")
    assert request.url.params["file"] == f"{FS2}/a.txt"
    assert str(request.url).endswith(rec["path"].split("?")[1])
    assert "range" not in request.headers and "content-type" not in request.headers
    assert data == b"hello world\n"


async def test_read_range_is_clamped_with_stat(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    stat = exchange("fs-more.jsonl", "stat a.txt")
    assert stat["response"]["size"] == 12
    router.post(f"{API}/stat").mock(return_value=recorded_response(stat))
    rec = exchange("fs-more.jsonl", "read Range bytes=3-100 (end past EOF)")
    route = router.get(f"{API}/read").mock(return_value=recorded_response(rec))
    data = await client.fs_read("fs2/a.txt", offset=3, length=97)
    assert route.calls.last.request.headers["range"] == "bytes=3-11"
    assert data == base64_of(rec)


async def test_read_at_or_past_eof_and_empty_file_send_nothing(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    stat_route = router.post(f"{API}/stat").mock(
        return_value=recorded_response(exchange("fs-more.jsonl", "stat a.txt"))
    )
    read_route = router.get(f"{API}/read")
    assert await client.fs_read("fs2/a.txt", offset=12, length=5) == b""
    assert await client.fs_read("fs2/a.txt", offset=100) == b""
    assert await client.fs_read("fs2/a.txt", offset=0, length=0) == b""
    assert await client.fs_read("fs2/empty.txt", offset=0, length=10, size=0) == b""
    assert read_route.call_count == 0
    assert stat_route.call_count == 2


async def test_read_whole_range_of_known_size_needs_no_range(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs-more.jsonl", "read full (headers)")
    route = router.get(f"{API}/read").mock(return_value=recorded_response(rec))
    assert await client.fs_read("/x/a.txt", offset=0, length=100, size=12) == b"hello world\n"
    assert "range" not in route.calls.last.request.headers


async def test_read_range_ignored_by_server_is_sliced(client: PuterClient, router: respx.MockRouter) -> None:
    router.get(f"{API}/read").mock(return_value=recorded_response(exchange("fs-more.jsonl", "read full (headers)")))
    assert await client.fs_read("/x/a.txt", offset=6, length=5, size=12) == b"world"


async def test_read_version_is_the_etag_of_the_whole_file_even_for_a_range(
    client: PuterClient, router: respx.MockRouter
) -> None:
    full = exchange("fs-more.jsonl", "read full (headers)")
    ranged = exchange("fs-more.jsonl", "read Range bytes=3-100 (end past EOF)")
    after = exchange("fs-more.jsonl", "read after overwrite (new ETag?)")
    router.get(f"{API}/read").mock(side_effect=[recorded_response(r) for r in (full, ranged, after)])
    data, v1 = await client.fs_read_version("/x/a.txt")
    part, v2 = await client.fs_read_version("/x/a.txt", offset=3, length=97, size=12)
    _, v3 = await client.fs_read_version("/x/a.txt")
    assert (data, part) == (b"hello world\n", b"lo world\n")
    assert v1 == v2 == "6f5902ac237024bdd0c176cb93063dc4"  # the quoted MD5, unquoted
    assert v3 == "6a296d58d4c490710b8e85ad23170d08" != v1  # an overwrite changes it
    # an empty range sends nothing and knows no version
    assert await client.fs_read_version("/x/a.txt", offset=12, length=1, size=12) == (b"", None)


async def test_read_errors(client: PuterClient, router: respx.MockRouter) -> None:
    router.get(f"{API}/read").mock(
        side_effect=[
            recorded_response(exchange("fs.jsonl", "read missing", "fs")),
            recorded_response(exchange("fs.jsonl", "read dir", "fs")),
        ]
    )
    with pytest.raises(NotFound):
        await client.fs_read("/admin/t1/missing.txt")
    with pytest.raises(IsADirectory):
        await client.fs_read("/admin/t1")


async def test_read_into_streams_range(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs-more.jsonl", "read Range bytes=5-")
    route = router.get(f"{API}/read").mock(return_value=recorded_response(rec))
    out = io.BytesIO()
    n = await client.fs_read_into("/x/a.txt", out, offset=5, size=12)
    assert route.calls.last.request.headers["range"] == "bytes=5-11"
    assert n == 7 and out.getvalue() == base64_of(rec) == b" world\n"


async def test_read_version_into_fills_the_buffer_from_a_ranged_answer(
    client: PuterClient, router: respx.MockRouter
) -> None:
    rec = exchange("fs-more.jsonl", "read Range bytes=5-")
    route = router.get(f"{API}/read").mock(return_value=recorded_response(rec))
    buf = bytearray(7)
    etag = await client.fs_read_version_into("/x/a.txt", memoryview(buf), offset=5, size=12)
    assert route.calls.last.request.headers["range"] == "bytes=5-11"
    assert bytes(buf) == base64_of(rec) == b" world\n"
    _, expected = await client.fs_read_version("/x/a.txt", offset=5, length=7, size=12)
    assert etag == expected == "6f5902ac237024bdd0c176cb93063dc4"


async def test_read_version_into_cuts_its_range_from_a_whole_file_answer(
    client: PuterClient, router: respx.MockRouter
) -> None:
    router.get(f"{API}/read").mock(return_value=recorded_response(exchange("fs-more.jsonl", "read full (headers)")))
    buf = bytearray(5)
    await client.fs_read_version_into("/x/a.txt", memoryview(buf), offset=6, size=12)
    assert bytes(buf) == b"world"
    whole = bytearray(12)  # the whole file: no Range, checked against its MD5 ETag
    await client.fs_read_version_into("/x/a.txt", memoryview(whole), offset=0, size=12)
    assert bytes(whole) == b"hello world\n"
    assert "range" not in router.calls.last.request.headers


async def test_read_version_into_sends_again_after_a_short_or_wrong_answer(
    client: PuterClient, router: respx.MockRouter
) -> None:
    rec = exchange("fs-more.jsonl", "read Range bytes=5-")
    short = recorded_response(rec)
    short = httpx.Response(206, headers=dict(short.headers), content=b" wor")  # cut short
    html = httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>proxy</html>")
    full = recorded_response(exchange("fs-more.jsonl", "read full (headers)"))
    corrupt = httpx.Response(200, headers=dict(full.headers), content=b"hello World\n")  # not its MD5
    route = router.get(f"{API}/read").mock(side_effect=[short, html, corrupt, recorded_response(rec)])
    buf = bytearray(7)
    await client.fs_read_version_into("/x/a.txt", memoryview(buf), offset=5, size=12)
    assert bytes(buf) == b" world\n" and route.call_count == 4


async def test_read_version_into_refuses_a_range_outside_the_file(
    client: PuterClient, router: respx.MockRouter
) -> None:
    route = router.get(f"{API}/read")
    for off, n in ((10, 5), (-1, 2), (0, 0)):
        with pytest.raises(BadRequest):
            await client.fs_read_version_into("/x/a.txt", memoryview(bytearray(n)), offset=off, size=12)
    assert route.call_count == 0


def base64_of(rec: dict) -> bytes:
    import base64

    return base64.b64decode(rec["response_base64"])


# ---------------------------------------------------------- delete / rename / move / copy


async def test_delete_sends_path_in_body(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "delete file", "fs")
    route = router.post(f"{API}/delete").mock(return_value=recorded_response(rec))
    assert await client.fs_delete("/admin/t1/moved.txt") is None
    request = route.calls.last.request
    assert_api_request(request, "POST", "/delete")
    assert request.url.query == b""
    assert _json(request) == {"path": "/admin/t1/moved.txt", "recursive": True}


async def test_delete_missing_and_not_empty(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/delete").mock(
        side_effect=[
            recorded_response(exchange("fs.jsonl", "delete missing", "fs")),
            recorded_response(exchange("fs.jsonl", "delete non-empty dir (recursive default true)", "fs")),
        ]
    )
    with pytest.raises(NotFound):
        await client.fs_delete("/admin/t1/missing")
    with pytest.raises(NotEmpty):
        await client.fs_delete("/admin/t1/full", recursive=False)


async def test_delete_retry_that_finds_entry_gone_is_success(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/delete").mock(
        side_effect=[
            httpx.ReadError("connection reset"),
            recorded_response(exchange("fs.jsonl", "delete missing", "fs")),
        ]
    )
    await client.fs_delete("/admin/t1/x")
    assert route.call_count == 2


@pytest.mark.parametrize("path", ["~", "/admin", "/", "~/", "/admin/t1/..", "."])
async def test_delete_refuses_home_and_root_without_sending(
    client: PuterClient, router: respx.MockRouter, path: str
) -> None:
    route = router.post(f"{API}/delete")
    with pytest.raises(PermissionDenied):
        await client.fs_delete(path)
    assert route.call_count == 0


async def test_rename_sends_path_and_new_name(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "rename", "fs")
    route = router.post(f"{API}/rename").mock(return_value=recorded_response(rec))
    entry = await client.fs_rename(rec["request"]["path"], rec["request"]["new_name"])
    assert _json(route.calls.last.request) == rec["request"]
    assert entry["name"] == rec["request"]["new_name"]


async def test_rename_onto_existing_is_already_exists(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "rename to existing", "fs")
    router.post(f"{API}/rename").mock(return_value=recorded_response(rec))
    with pytest.raises(AlreadyExists):
        await client.fs_rename(rec["request"]["path"], rec["request"]["new_name"])


async def test_move_splits_destination_into_parent_and_name(client: PuterClient, router: respx.MockRouter) -> None:
    client.username = FS2_USER
    rec = exchange("fs-more.jsonl", "move with new_name (rename across dirs)")
    route = router.post(f"{API}/move").mock(return_value=recorded_response(rec))
    dest = rec["request"]["destination"] + "/" + rec["request"]["new_name"]
    moved = await client.fs_move(rec["request"]["source"], dest)
    body = _json(route.calls.last.request)
    assert body["source"] == rec["request"]["source"]
    assert body["destination"] == rec["request"]["destination"]
    assert body["new_name"] == rec["request"]["new_name"]
    assert body["overwrite"] is False and body["dedupe_name"] is False
    assert moved == rec["response"]["moved"]


async def test_move_conflict_and_not_retried(client: PuterClient, router: respx.MockRouter) -> None:
    """A refusal (409) is final; a 500 is not retried blindly: the server's state decides."""
    route = router.post(f"{API}/move").mock(
        side_effect=[
            recorded_response(exchange("fs-more.jsonl", "move without overwrite onto existing file")),
            httpx.Response(500, json={"error": "x", "message": "x", "code": "internal_error"}),
        ]
    )
    stat = router.post(f"{API}/stat").mock(side_effect=_stat_of({"/u/c": {"name": "c", "path": "/u/c"}}))
    with pytest.raises(AlreadyExists):
        await client.fs_move("/u/a", "/u/b")
    assert stat.call_count == 0  # a refusal needs no look
    # the 500 came after the server acted: /u/a is gone and /u/c there, so it was done
    assert (await client.fs_move("/u/a", "/u/c"))["path"] == "/u/c"
    assert route.call_count == 2  # the 500 was not sent again


def _stat_of(entries: dict[str, dict]) -> object:
    """A /stat handler answering from ``entries`` (404 for any other path)."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = json.loads(request.content)["path"]
        if path in entries:
            return httpx.Response(200, json={"is_dir": False, "size": 1, **entries[path]})
        return httpx.Response(404, json={"error": {"code": "subject_does_not_exist", "message": "not found"}})

    return handler


@pytest.mark.parametrize("failure", ["500", "html", "cut", "dropped"])
async def test_move_with_an_unknown_outcome_is_reconciled(
    client: PuterClient, router: respx.MockRouter, failure: str
) -> None:
    """The source still there after a failure that says nothing means the move was not
    done: it is sent again; gone from both places means someone else took it: the error."""
    bad = {
        "500": httpx.Response(500, json={"error": "x", "message": "x", "code": "internal_error"}),
        "html": httpx.Response(200, html="<html><body>Sign in</body></html>"),
        "cut": httpx.Response(200, content=b'{"moved": {"name": "d", "pa', headers={"content-type": "application/json"}),
        "dropped": httpx.RemoteProtocolError("Server disconnected without sending a response."),
    }[failure]
    moved = httpx.Response(200, json={"moved": {"name": "d", "path": "/u/d", "is_dir": False}})
    route = router.post(f"{API}/move").mock(side_effect=[bad, moved])
    router.post(f"{API}/stat").mock(side_effect=_stat_of({"/u/a": {"name": "a", "path": "/u/a"}}))
    assert (await client.fs_move("/u/a", "/u/d"))["path"] == "/u/d"
    assert route.call_count == 2
    before = route.call_count
    route.mock(side_effect=[bad])
    router.post(f"{API}/stat").mock(side_effect=_stat_of({}))
    from puterfs.client import PuterConnectionError, ServerError

    with pytest.raises((ServerError, PuterConnectionError)):
        await client.fs_move("/u/x", "/u/y")  # the failure itself, not a NotFound of the look
    assert route.call_count == before + 1


@pytest.mark.parametrize("answer", ["html", "cut", "short-range", "wrong-md5"])
async def test_idempotent_calls_retry_answers_that_are_not_the_servers(
    client: PuterClient, router: respx.MockRouter, answer: str
) -> None:
    """A 2xx that is not the server's answer (a proxy's page, JSON cut short, a read shorter
    than its range or not matching its MD5 ETag) is retried like a 5xx."""
    import hashlib

    data = b"0123456789"
    good_stat = httpx.Response(200, json={"name": "f", "path": "/u/f", "size": 10, "is_dir": False})
    stat = router.post(f"{API}/stat").mock(side_effect=[
        httpx.Response(200, html="<html>portal</html>") if answer == "html" else
        httpx.Response(200, content=b'{"name": "f", "pa', headers={"content-type": "application/json"}),
        good_stat,
    ])
    assert (await client.fs_stat("/u/f"))["size"] == 10
    assert stat.call_count == 2
    etag = {"etag": f'"{hashlib.md5(data).hexdigest()}"'}
    bad = {
        "html": httpx.Response(200, html="<html>portal</html>"),
        "cut": httpx.Response(200, content=data[:5], headers=etag),
        "short-range": httpx.Response(206, content=data[2:4], headers={"content-range": "bytes 2-5/10"}),
        "wrong-md5": httpx.Response(200, content=b"X" * 10, headers=etag),
    }[answer]
    good = (
        httpx.Response(206, content=data[2:6], headers={"content-range": "bytes 2-5/10"})
        if answer == "short-range" else httpx.Response(200, content=data, headers=etag)
    )
    read = router.get(f"{API}/read").mock(side_effect=[bad, good])
    if answer == "short-range":
        assert await client.fs_read("/u/f", offset=2, length=4, size=10) == data[2:6]
    else:
        assert await client.fs_read("/u/f", size=10) == data
    assert read.call_count == 2


async def test_delete_answered_with_a_page_is_sent_again(client: PuterClient, router: respx.MockRouter) -> None:
    """An HTML 200 is no proof the entry is gone: sent again; a 404 then means it is."""
    route = router.post(f"{API}/delete").mock(side_effect=[
        httpx.Response(200, html="<html>portal</html>"),
        httpx.Response(404, json={"error": {"code": "subject_does_not_exist", "message": "gone"}}),
    ])
    await client.fs_delete("/u/f")
    assert route.call_count == 2


@pytest.mark.parametrize(("src", "dst"), [("/admin/d", "/admin/d"), ("/admin/d", "/admin/d/d"), ("~/d", "d/x/y")])
async def test_move_into_itself_refused_without_sending(
    client: PuterClient, router: respx.MockRouter, src: str, dst: str
) -> None:
    route = router.post(f"{API}/move")
    with pytest.raises(BadRequest):
        await client.fs_move(src, dst)
    assert route.call_count == 0


async def test_move_overwrite_flag(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs-more.jsonl", "move with overwrite:true onto existing file")
    route = router.post(f"{API}/move").mock(return_value=recorded_response(rec))
    mkdir = router.post(f"{API}/mkdir").mock(
        return_value=recorded_response(exchange("fs-more.jsonl", "mkdir create_missing_parents"))
    )
    moved = await client.fs_move("/u/a.txt", "/u/new/b.txt", {"overwrite": True, "createMissingParents": True})
    body = _json(route.calls.last.request)
    assert body["overwrite"] is True and body["destination"] == "/u/new" and body["new_name"] == "b.txt"
    # /move ignores create_missing_parents (errata): the parents are made first
    assert "create_missing_parents" not in body
    assert _json(mkdir.calls.last.request) == {"path": "/u/new", "dedupe_name": False, "create_missing_parents": True}
    assert moved == rec["response"]["moved"]


async def test_copy_returns_copied_entry(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs-more.jsonl", "copy file (full)")
    route = router.post(f"{API}/copy").mock(return_value=recorded_response(rec))
    copied = await client.fs_copy(rec["request"]["source"], rec["request"]["destination"] + "/b2.txt")
    body = _json(route.calls.last.request)
    assert body["source"] == rec["request"]["source"]
    assert body["destination"] == rec["request"]["destination"] and body["new_name"] == "b2.txt"
    assert copied == rec["response"][0]["copied"]


async def test_copy_existing_is_already_exists(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/copy").mock(return_value=recorded_response(exchange("fs.jsonl", "copy again (exists)", "fs")))
    with pytest.raises(AlreadyExists):
        await client.fs_copy("/admin/t1/a", "/admin/t1/b")


# -------------------------------------------------------- touch / df / last change


async def test_touch_accepts_empty_html_answer(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "touch", "fs")
    route = router.post(f"{API}/touch").mock(
        return_value=httpx.Response(200, headers={"content-type": rec["content_type"]}, content=b"")
    )
    assert await client.fs_touch("/admin/t1/t.txt") is None
    assert _json(route.calls.last.request) == {"path": "/admin/t1/t.txt"}


async def test_touch_missing_parent(client: PuterClient, router: respx.MockRouter) -> None:
    router.post(f"{API}/touch").mock(
        return_value=recorded_response(exchange("fs-more.jsonl", "touch in missing parent (no create_missing_parents)"))
    )
    with pytest.raises(NotFound):
        await client.fs_touch("/u/missing/t.txt")


async def test_df_and_space_alias(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "df", "fs")
    route = router.post(f"{API}/df").mock(return_value=recorded_response(rec))
    assert await client.fs_df() == rec["response"]
    assert await client.fs_space() == rec["response"]
    assert _json(route.calls.last.request) == {}
    assert set(rec["response"]) == {"used", "capacity"}


async def test_last_change_is_milliseconds_int(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "cache last change", "fs")
    route = router.get(f"{API}/cache/last-change-timestamp").mock(return_value=recorded_response(rec))
    value = await client.fs_last_change()
    assert value == rec["response"]["timestamp"] and value > 10**12
    request = route.calls.last.request
    assert_api_request(request, "GET", "/cache/last-change-timestamp")
    assert "content-type" not in request.headers


@pytest.mark.parametrize("there", ["ours", "nothing", "another"])
async def test_non_overwrite_write_with_an_unknown_outcome_is_reconciled(
    client: PuterClient, router: respx.MockRouter, there: str
) -> None:
    """A write that must not overwrite, answered with a 500: what the server holds decides.
    Our bytes there: done (not sent again); nothing there: sent again; other bytes: the
    failure stands (the caller keeps both)."""
    import hashlib

    from puterfs.client import ServerError

    data = b"our new file\n"
    held = {"ours": data, "another": b"their file!!\n"}.get(there)
    entry = {"name": "n.txt", "path": "/u/n.txt", "size": len(data), "is_dir": False, "uid": "u1"}
    ok = httpx.Response(200, json={"fsEntry": {**entry, "id": "u1"}})
    route = router.post(f"{API}/fs/write").mock(side_effect=[
        httpx.Response(500, json={"error": "x", "message": "x", "code": "internal_error"}), ok,
    ])
    router.post(f"{API}/readdir").mock(return_value=httpx.Response(200, json=[] if held is None else [entry]))
    if held is not None:
        router.get(f"{API}/read").mock(return_value=httpx.Response(
            200, content=held, headers={"etag": f'"{hashlib.md5(held).hexdigest()}"'}
        ))
    if there == "another":
        with pytest.raises(ServerError):
            await client.fs.write("/u/n.txt", data, overwrite=False, metadata={"k": "v"})
        assert route.call_count == 1
        return
    out = await client.fs.write("/u/n.txt", data, overwrite=False, metadata={"k": "v"})
    assert out["path"] == "/u/n.txt"
    assert route.call_count == (1 if there == "ours" else 2)


async def test_lost_batch_write_answer_is_settled_file_by_file_by_version(
    client: PuterClient, router: respx.MockRouter
) -> None:
    """A /fs/batchWrite (no overwrite) whose answer is lost: one listing of the folder, then each
    file that could be ours is checked by its version through a signed read (one byte; the ETag
    is the MD5 of the whole file), a file that cannot be signed by reading it. Each file is
    settled on its own: ours there is done, a free name is not (the request's error: sent again
    later), any other file there has its name taken (the caller applies the conflict rule).
    Nothing is sent again here and no file is read whole but the one without a signature."""
    import hashlib

    from puterfs.client import ServerError

    ours = {n: f"our {n}\n".encode() for n in ("ours.txt", "theirs.txt", "resized.txt", "new.txt", "unsigned.txt")}
    held = {"ours.txt": ours["ours.txt"], "theirs.txt": b"X" * len(ours["theirs.txt"]),
            "resized.txt": b"much longer than ours", "unsigned.txt": ours["unsigned.txt"]}
    uid = {n: f"u-{n}" for n in held}
    listing = [{"name": n, "path": f"/u/d/{n}", "size": len(b), "is_dir": False, "uid": uid[n], "id": uid[n]}
               for n, b in held.items()]
    write = router.post(f"{API}/fs/batchWrite").mock(
        return_value=httpx.Response(500, json={"error": "x", "message": "x", "code": "internal_error"}))
    router.post(f"{API}/readdir").mock(return_value=httpx.Response(200, json=listing))
    sig = "67d0293d7020c5697be94bb004fc9d6ad19d52ece1635b71004727fbeb40abfb"

    def sign(request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)["items"]
        return httpx.Response(200, json={"signatures": [
            {} if i["uid"] == uid["unsigned.txt"] else {"uid": i["uid"], "expires": 10**13, "signature": sig}
            for i in items]})

    by_uid = {u: n for n, u in uid.items()}

    def file(request: httpx.Request) -> httpx.Response:
        data = held[by_uid[request.url.params["uid"]]]
        return httpx.Response(206, content=data[:1], headers={
            "etag": f'"{hashlib.md5(data).hexdigest()}"', "content-range": f"bytes 0-0/{len(data)}"})

    signs = router.post(f"{API}/sign").mock(side_effect=sign)
    files = router.get(f"{API}/file").mock(side_effect=file)
    reads = router.get(f"{API}/read").mock(return_value=httpx.Response(200, content=held["unsigned.txt"]))
    stats = router.post(f"{API}/stat").mock(return_value=httpx.Response(500))
    names = list(ours)
    out = await client.fs.write_many([(f"/u/d/{n}", ours[n]) for n in names], overwrite=False,
                                     metadata=[{"k": "v"}] * len(names))
    got = dict(zip(names, out, strict=True))
    assert isinstance(got["ours.txt"], dict) and got["ours.txt"]["uid"] == uid["ours.txt"]
    assert isinstance(got["unsigned.txt"], dict) and got["unsigned.txt"]["uid"] == uid["unsigned.txt"]
    assert isinstance(got["theirs.txt"], AlreadyExists) and isinstance(got["resized.txt"], AlreadyExists)
    assert isinstance(got["new.txt"], ServerError) and not isinstance(got["new.txt"], AlreadyExists)
    assert write.call_count == 1 and signs.call_count == 1 and stats.call_count == 0
    assert sorted(c.request.url.params["uid"] for c in files.calls) == [uid["ours.txt"], uid["theirs.txt"]]
    assert reads.call_count == 1
