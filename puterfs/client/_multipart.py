"""Streaming ``multipart/form-data`` bodies for ``POST /batch`` uploads.

httpx can stream file objects in multipart bodies, but it puts every data field before
every file in dict order and always rewinds files to offset 0. Puter's ``/batch`` wants
a precise part order (all JSON fields before the first ``file`` part, API reference
§5.6), and a retried upload must restart from where the caller's file object stood,
so the body is built here:

* each file is an :class:`UploadSource` that knows its size up front (the ``fileinfo``
  part and ``Content-Length`` need it) and can produce its bytes again from the start
  for a retry;
* :class:`MultipartBody` yields the body in chunks of at most ``CHUNK`` bytes, so a
  large file is never held in memory; reads from real files run in a worker thread
  because the caller may be a trio FUSE handler that must not block.
"""

from __future__ import annotations

import io
import json
import mimetypes
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, Union

import anyio.to_thread

CHUNK = 256 * 1024
# Non-seekable streams are spooled so they can be sized and re-sent; this much stays
# in memory, the rest goes to a temporary file.
SPOOL_IN_MEMORY = 8 * 1024 * 1024

Content = Union[str, bytes, bytearray, memoryview, IO[bytes], "os.PathLike[str]"]


def guess_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


async def _read(fileobj: IO[bytes], size: int) -> bytes:
    # A file backed by the OS can block (disk, NFS); in-memory buffers never do.
    if _has_fileno(fileobj):
        return await anyio.to_thread.run_sync(fileobj.read, size)
    return fileobj.read(size)


def _has_fileno(fileobj: Any) -> bool:
    try:
        fileobj.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return True


class UploadSource:
    """The bytes of one uploaded file, re-readable from the start for retries."""

    def __init__(self, content: Content) -> None:
        self._data: bytes | None = None
        self._path: str | None = None
        self._fileobj: IO[bytes] | None = None
        self._start = 0
        self._owned: IO[bytes] | None = None  # a spool we created and must close
        if isinstance(content, str):
            self._data = content.encode("utf-8")
            self.size = len(self._data)
        elif isinstance(content, (bytes, bytearray, memoryview)):
            self._data = bytes(content)
            self.size = len(self._data)
        elif isinstance(content, os.PathLike):
            self._path = os.fspath(content)
            self.size = os.stat(self._path).st_size
        elif hasattr(content, "read"):
            self._init_fileobj(content)
        else:
            raise TypeError(
                f"content must be str, bytes, a binary file object or a path, not {type(content).__name__}"
            )

    def _init_fileobj(self, fileobj: IO[bytes]) -> None:
        if isinstance(fileobj, io.TextIOBase):
            raise TypeError("file objects passed as content must be opened in binary mode")
        seekable = False
        try:
            seekable = bool(fileobj.seekable()) if hasattr(fileobj, "seekable") else False
        except (OSError, ValueError):
            seekable = False
        if not seekable:
            # A pipe or socket: its length is unknown and it cannot be re-read, so copy
            # it once (bounded memory) into something that can.
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
            while True:
                block = fileobj.read(CHUNK)
                if not block:
                    break
                if isinstance(block, str):
                    raise TypeError("file objects passed as content must be opened in binary mode")
                spool.write(block)
            spool.seek(0)
            self._owned = spool  # type: ignore[assignment]
            fileobj = spool  # type: ignore[assignment]
        self._fileobj = fileobj
        self._start = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(self._start)
        self.size = max(0, end - self._start)

    def original(self) -> Content:
        """The content again, from its start, for another way of uploading it."""
        if self._data is not None:
            return self._data
        if self._path is not None:
            return Path(self._path)
        assert self._fileobj is not None
        self._fileobj.seek(self._start)
        return self._fileobj

    async def chunks(self) -> AsyncIterator[bytes]:
        """The content from its start, in chunks of at most ``CHUNK`` bytes."""
        if self._data is not None:
            view = memoryview(self._data)
            for pos in range(0, len(view), CHUNK):
                yield bytes(view[pos : pos + CHUNK])
            return
        if self._path is not None:
            fileobj: IO[bytes] = await anyio.to_thread.run_sync(open, self._path, "rb")
            try:
                async for block in self._read_exactly(fileobj, self.size):
                    yield block
            finally:
                fileobj.close()
            return
        assert self._fileobj is not None
        self._fileobj.seek(self._start)
        async for block in self._read_exactly(self._fileobj, self.size):
            yield block

    @staticmethod
    async def _read_exactly(fileobj: IO[bytes], size: int) -> AsyncIterator[bytes]:
        # Exactly ``size`` bytes: the size is already announced in fileinfo and in
        # Content-Length, so a file that grew meanwhile must not overrun the body.
        remaining = size
        while remaining > 0:
            block = await _read(fileobj, min(CHUNK, remaining))
            if not block:
                raise OSError(f"upload source ended {remaining} bytes early (file shrank while uploading?)")
            if isinstance(block, str):
                raise TypeError("file objects passed as content must be opened in binary mode")
            remaining -= len(block)
            yield block

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None


def _quote_filename(name: str) -> str:
    # What browsers do (WHATWG multipart encoding): the real name also travels in
    # the JSON parts, which are what Puter uses for the entry name.
    return name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """An ordered multipart body of JSON text fields and streamed files."""

    def __init__(self) -> None:
        self.boundary = secrets.token_hex(16)
        self._parts: list[tuple[bytes, bytes | UploadSource]] = []

    def add_json(self, name: str, value: Any) -> None:
        head = f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        self._parts.append((head, json.dumps(value, ensure_ascii=False).encode("utf-8")))

    def add_file(self, name: str, filename: str, content_type: str, source: UploadSource) -> None:
        head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{_quote_filename(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self._parts.append((head, source))

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        total = len(self._tail)
        for head, body in self._parts:
            total += len(head) + (len(body) if isinstance(body, bytes) else body.size) + 2
        return total

    @property
    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    async def stream(self) -> AsyncIterator[bytes]:
        """The whole body; call again for a retry (file sources restart from their start)."""
        for head, body in self._parts:
            if isinstance(body, bytes):
                yield head + body + b"\r\n"
                continue
            yield head
            async for block in body.chunks():
                yield block
            yield b"\r\n"
        yield self._tail
