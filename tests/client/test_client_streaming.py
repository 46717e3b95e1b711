"""Large uploads and downloads stream: memory stays far below the file size.

The fake server here is an httpx transport that consumes the request body chunk by
chunk and hashes it (respx would buffer the whole body and hide the client's
behaviour), and produces download bodies from a generator.
"""

from __future__ import annotations

import hashlib
import os
import re
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from puterfs.client import PuterClient

pytestmark = pytest.mark.anyio

SIZE = 50 * 1024 * 1024 + 123  # not a multiple of any chunk size
LIMIT = 8 * 1024 * 1024  # peak traced memory allowed for a 50 MiB transfer


def _pattern(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))


class CountingServer(httpx.AsyncBaseTransport):
    """Accepts /batch uploads without buffering; serves /read from a generator."""

    def __init__(self, file_size: int, fail_first_uploads: int = 0) -> None:
        self.file_size = file_size
        self.fail_first_uploads = fail_first_uploads
        self.uploads: list[tuple[int, str]] = []
        self.file_digests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/batch":
            return await self._upload(request)
        if request.url.path == "/read":
            return self._download(request)
        return httpx.Response(404, json={"code": "not_found", "message": "Not Found"})

    async def _upload(self, request: httpx.Request) -> httpx.Response:
        boundary = re.search(r"boundary=(\S+)", request.headers["content-type"]).group(1).encode()
        total = 0
        whole = hashlib.sha256()
        # Hash only the file part: everything between the file part's header and the
        # closing boundary. Keep a small tail to find the boundary across chunks.
        in_file = False
        pending = b""
        file_hash = hashlib.sha256()
        async for chunk in request.stream:  # type: ignore[union-attr]
            total += len(chunk)
            whole.update(chunk)
            pending += chunk
            if not in_file:
                marker = b'name="file"'
                at = pending.find(marker)
                if at >= 0:
                    head_end = pending.find(b"\r\n\r\n", at)
                    if head_end >= 0:
                        in_file = True
                        pending = pending[head_end + 4 :]
                if not in_file:
                    pending = pending[-4096:]
                    continue
            keep = len(boundary) + 8
            if len(pending) > keep:
                file_hash.update(pending[:-keep])
                pending = pending[-keep:]
        tail = b"\r\n--" + boundary + b"--\r\n"
        assert pending.endswith(tail)
        file_hash.update(pending[: -len(tail)])
        assert total == int(request.headers["content-length"])
        self.uploads.append((total, whole.hexdigest()))
        self.file_digests.append(file_hash.hexdigest())
        if self.fail_first_uploads:
            self.fail_first_uploads -= 1
            return httpx.Response(503, json={"code": "internal_error", "message": "try again"})
        return httpx.Response(200, json={"results": [{"name": "big.bin", "size": self.file_size, "is_dir": False}]})

    def _download(self, request: httpx.Request) -> httpx.Response:
        start, end = 0, self.file_size - 1
        status = 200
        if "range" in request.headers:
            a, b = request.headers["range"].removeprefix("bytes=").split("-")
            start, end, status = int(a), int(b), 206
        # The pattern repeats every 256 bytes, so any 1 MiB slice of it is a slice of
        # this block: the fake server holds no copy of the whole file either.
        block = bytes(range(256)) * ((1 << 20) // 256 + 1)

        async def body() -> AsyncIterator[bytes]:
            for pos in range(start, end + 1, 1 << 20):
                n = min(1 << 20, end + 1 - pos)
                yield block[pos % 256 : pos % 256 + n]

        return httpx.Response(status, headers={"content-type": "application/octet-stream"}, content=body())


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(_pattern(SIZE))
    return path


@pytest.mark.slow
async def test_upload_of_50mib_file_streams(big_file: Path) -> None:
    server = CountingServer(SIZE)
    expected = hashlib.sha256(big_file.read_bytes()).hexdigest()
    async with PuterClient(token="t", api_url="http://api.test", transport=server) as client:
        client.username = "u"
        tracemalloc.start()
        try:
            with big_file.open("rb") as f:
                entry = await client.fs_write("~/big.bin", f)
            await client.fs_write("~/big.bin", big_file)  # a path, too
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert entry["size"] == SIZE
    assert server.file_digests == [expected, expected]
    assert peak < LIMIT, f"peak traced memory {peak} bytes for a {SIZE}-byte upload"


@pytest.mark.slow
async def test_retried_upload_resends_whole_file_from_start(big_file: Path) -> None:
    server = CountingServer(SIZE, fail_first_uploads=1)
    async with PuterClient(
        token="t", api_url="http://api.test", transport=server, retry_base_delay=0.001, retry_max_delay=0.01
    ) as client:
        client.username = "u"
        with big_file.open("rb") as f:
            await client.fs_write("big.bin", f)
    assert len(server.uploads) == 2
    assert server.uploads[0] == server.uploads[1]  # identical bodies, byte for byte
    assert len(set(server.file_digests)) == 1


@pytest.mark.slow
async def test_read_into_streams_50mib_to_file(tmp_path: Path) -> None:
    server = CountingServer(SIZE)
    out_path = tmp_path / "out.bin"
    async with PuterClient(token="t", api_url="http://api.test", transport=server) as client:
        tracemalloc.start()
        try:
            with out_path.open("wb") as out:
                n = await client.fs_read_into("/u/big.bin", out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        with (tmp_path / "part.bin").open("wb") as out:
            m = await client.fs_read_into("/u/big.bin", out, offset=SIZE - 1000, length=5000, size=SIZE)
    assert n == SIZE and os.path.getsize(out_path) == SIZE
    assert peak < LIMIT, f"peak traced memory {peak} bytes for a {SIZE}-byte download"
    assert hashlib.sha256(out_path.read_bytes()).digest() == hashlib.sha256(_pattern(SIZE)).digest()
    assert m == 1000 and (tmp_path / "part.bin").read_bytes() == _pattern(SIZE)[-1000:]
