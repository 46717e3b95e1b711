"""Helpers shared by the client tests: recorded exchanges as responses, request checks.

Named test_client_*.py so it sits with the tests; it holds no tests itself.

Responses are built from the exchanges recorded against a real Puter 26.07 server
(/work/shared/puter-api/exchanges), so the client is tested against what the server
really answered, not against what we think it answers.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

EXCHANGES = Path(os.environ.get("PUTER_EXCHANGES", "/work/shared/puter-api/exchanges"))
API = "http://api.puter.test"
WEB = "http://puter.test"
TOKEN = "tok-SECRET-3f9a"


_cache: dict[str, list[dict[str, Any]]] = {}


def exchange(file: str, name: str, session: str | None = None) -> dict[str, Any]:
    """The recorded exchange called ``name`` in ``file`` (e.g. ``"fs-more.jsonl"``)."""
    if file not in _cache:
        path = EXCHANGES / file
        if not path.exists():
            pytest.skip(f"recorded exchanges not available at {path}")
        _cache[file] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for record in _cache[file]:
        if record["name"] == name and (session is None or record["session"] == session):
            return record
    raise KeyError(f"no exchange {name!r} in {file}")


def recorded_response(record: dict[str, Any], **overrides: Any) -> httpx.Response:
    """An httpx response with the recorded status, content type, headers and body."""
    headers = {"content-type": record.get("content_type") or "application/json"}
    for key, value in (record.get("response_headers") or {}).items():
        if key.lower() not in ("content-length",):
            headers[key.lower()] = value
    kind = record.get("response_kind")
    if kind == "bytes":
        content = base64.b64decode(record.get("response_base64") or "")
    elif kind == "ndjson":
        content = "".join(json.dumps(line) + "\n" for line in record["response"]).encode()
    elif kind == "empty":
        content = b""
    else:
        content = json.dumps(record["response"]).encode()
    status = overrides.pop("status", record["status"])
    return httpx.Response(status, headers=headers, content=content)


def parse_multipart(request: httpx.Request) -> list[dict[str, Any]]:
    """Parts of a multipart request in wire order: {name, filename?, content_type?, body}."""
    ctype = request.headers["content-type"]
    boundary = re.search(r"boundary=([^;]+)", ctype).group(1).encode()  # type: ignore[union-attr]
    body = request.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, payload = chunk[2:-2].partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line
        )
        disp = headers["Content-Disposition"]
        name = re.search(r'name="([^"]*)"', disp).group(1)  # type: ignore[union-attr]
        filename = re.search(r'filename="([^"]*)"', disp)
        part: dict[str, Any] = {"name": name, "body": payload}
        if filename:
            part["filename"] = filename.group(1)
            part["content_type"] = headers.get("Content-Type")
        else:
            part["value"] = json.loads(payload)
        parts.append(part)
    return parts


def assert_api_request(request: httpx.Request, method: str, path: str) -> None:
    assert request.method == method
    assert request.url.host == "api.puter.test"
    assert request.url.path == path
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert "origin" not in request.headers
    assert "referer" not in request.headers


