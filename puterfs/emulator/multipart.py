"""A streaming multipart/form-data parser.

Parts come back in wire order (``/batch`` depends on it).  File parts (those with a
``filename``) are written to a temp file while they arrive, with their MD5 and size
computed on the way, so a large upload never sits in memory.

Limits are busboy's, as ``/batch`` sets them on the real server (LegacyFSController.ts
:92-95): a text field is cut at 1 MiB (``Part.truncated``); a file reaching ``max_file``
bytes, more than ``max_files`` files or ``max_parts`` parts make the parse fail with 413
``too_large``, but only after the whole body has been read, as the real server does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from puterfs.emulator.errors import ApiError

MAX_FIELD = 1 << 20
MAX_HEADER = 16 << 10
MAX_PARTS = 256
MAX_FILES = 64
MAX_FILE = 100 * 1024 * 1024  # exclusive: a file of exactly 100 MiB is refused (busboy 'limit')

_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def boundary_of(content_type: str) -> str | None:
    for key, value in _PARAM.findall(";" + content_type.split(";", 1)[1] if ";" in content_type else ""):
        if key.lower() == "boundary":
            value = value.strip()
            return value[1:-1] if value.startswith('"') else value
    return None


@dataclass
class Part:
    name: str
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)
    path: Path | None = None
    size: int = 0
    md5: str = ""
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _disposition(headers: dict[str, str]) -> tuple[str, str | None]:
    name, filename = "", None
    for key, value in _PARAM.findall(";" + headers.get("content-disposition", "").split(";", 1)[-1]):
        value = value.strip()
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        if key.lower() == "name":
            name = value
        elif key.lower() == "filename":
            filename = value
    return name, filename


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message, headers={"X-Needs-Upgrade": "true"})


async def parse(stream: AsyncIterator[bytes], boundary: str, new_tmp: Callable[[], Path], *,
                max_file: int = MAX_FILE, max_files: int = MAX_FILES, max_parts: int = MAX_PARTS) -> list[Part]:
    delim = b"--" + boundary.encode("latin-1")
    marker = b"\r\n" + delim
    buf = bytearray()
    parts: list[Part] = []
    refused: ApiError | None = None  # the first limit met; raised once the body is read
    seen_parts = seen_files = 0
    it = stream.__aiter__()
    eof = False

    async def more() -> bool:
        nonlocal eof
        if eof:
            return False
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            eof = True
            return False
        buf.extend(chunk)
        return True

    def bad(msg: str) -> ApiError:
        return ApiError(400, "bad_request", f"Malformed multipart body: {msg}")

    # preamble up to the first delimiter
    while True:
        i = buf.find(delim)
        if i >= 0:
            del buf[: i + len(delim)]
            break
        if not await more():
            raise bad("no boundary")
    try:
        while True:
            while len(buf) < 2:
                if not await more():
                    raise bad("truncated")
            if buf[:2] == b"--":  # closing delimiter
                if refused is not None:
                    raise refused
                return parts
            # headers
            while True:
                j = buf.find(b"\r\n\r\n")
                if j >= 0:
                    break
                if len(buf) > MAX_HEADER or not await more():
                    raise bad("bad part headers")
            head = bytes(buf[:j]).decode("utf-8", "replace")
            del buf[: j + 4]
            headers: dict[str, str] = {}
            for line in head.split("\r\n"):
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            name, filename = _disposition(headers)
            part = Part(name=name, filename=filename, content_type=headers.get("content-type"))
            seen_parts += 1
            seen_files += filename is not None
            keep_part = refused is None
            if seen_parts > max_parts:
                refused = refused or too_large(f"Too many parts in batch (max {max_parts})")
                keep_part = False
            elif filename is not None and seen_files > max_files:
                refused = refused or too_large(f"Too many files in batch (max {max_files})")
                keep_part = False
            if keep_part:
                parts.append(part)
            md5 = hashlib.md5()
            fh = None
            if filename is not None and keep_part:
                part.path = new_tmp()
                fh = open(part.path, "wb")  # noqa: SIM115 - closed in finally below
            try:
                while True:
                    k = buf.find(marker)
                    if k >= 0:
                        body, rest = buf[:k], k + len(marker)
                    else:
                        # keep a tail that could be the start of the marker
                        keep = len(marker) - 1
                        body, rest = buf[: max(0, len(buf) - keep)], None
                    if body and keep_part:
                        if fh is not None:
                            if part.size + len(body) >= max_file:
                                refused = refused or too_large(f"File in batch exceeds {max_file} bytes")
                                fh.close()
                                fh = None
                                keep_part = False
                            else:
                                fh.write(body)
                                md5.update(body)
                        elif filename is None:
                            room = MAX_FIELD - len(part.data)
                            if len(body) > room:
                                part.truncated = True
                            part.data.extend(body[: max(0, room)])
                        part.size += len(body)
                    if rest is not None:
                        del buf[:rest]
                        break
                    del buf[: len(body)]
                    if not await more():
                        raise bad("truncated part")
            finally:
                if fh is not None:
                    fh.close()
            part.md5 = md5.hexdigest()
    except BaseException:
        for p in parts:
            if p.path is not None:
                p.path.unlink(missing_ok=True)
        raise
