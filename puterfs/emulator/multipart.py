"""A streaming multipart/form-data parser.

Parts come back in wire order (``/batch`` depends on it).  File parts (those with a
``filename``) are written to a temp file while they arrive, with their MD5 and size
computed on the way, so a large upload never sits in memory.  Text fields are
limited to 1 MiB, as on the real server.
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


async def parse(stream: AsyncIterator[bytes], boundary: str, new_tmp: Callable[[], Path]) -> list[Part]:
    delim = b"--" + boundary.encode("latin-1")
    marker = b"\r\n" + delim
    buf = bytearray()
    parts: list[Part] = []
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
            if buf[:2] == b"--":
                return parts  # closing delimiter
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
            if len(parts) >= MAX_PARTS:
                raise ApiError(400, "bad_request", f"Too many parts (max {MAX_PARTS})")
            parts.append(part)
            md5 = hashlib.md5()
            fh = None
            if filename is not None:
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
                    if body:
                        if fh is not None:
                            fh.write(body)
                            md5.update(body)
                        else:
                            part.data.extend(body)
                            if len(part.data) > MAX_FIELD:
                                raise ApiError(400, "bad_request", f"Field {name!r} is larger than 1 MiB")
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
