"""``client.net``: plain HTTP requests to any URL (putergenai's ``net_fetch``; the worker
calls of ``workers_exec``), on the client's connection pool and TLS settings.

These are not requests to Puter's API, so they are not paced by the client's request
scheduler and never carry the Puter token unless asked (``include_auth=True``, or a
worker's ``puter-auth`` header). A non-2xx answer raises the typed error
(``error_from_response``); a broken connection :class:`~puterfs.client.PuterConnectionError`.
Safe methods (GET, HEAD, OPTIONS) are retried on connection errors and 5xx; others
only when the connection was never made.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from puterfs.client._errors import (
    AuthenticationError,
    BadRequest,
    PuterConnectionError,
    PuterTimeout,
    ServerError,
    error_from_response,
)
from puterfs.client._retry import NOT_SENT_ERRORS, Idempotency, may_retry

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _transport_error(exc: httpx.RequestError) -> PuterConnectionError:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return PuterTimeout(f"request timed out ({type(exc).__name__}: {detail})")
    return PuterConnectionError(f"connection failed ({type(exc).__name__}: {detail})")


class Net:
    def __init__(self, client: PuterClient) -> None:
        self._client = client

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: Any = None,
        return_json: bool = False,
        include_auth: bool = False,
        puter_auth_header: str | None = None,
    ) -> Any:
        """Send one request and return the body: bytes, or parsed JSON with ``return_json``.

        ``data`` is bytes, text or a dict (sent as a form); ``json_body`` any JSON.
        ``include_auth`` adds ``Authorization: Bearer <token>``; ``puter_auth_header``
        names a header that gets the bare token (workers use ``puter-auth``).
        """
        if not isinstance(url, str) or not url.strip().lower().startswith(("http://", "https://")):
            raise BadRequest("net_fetch needs an http(s) URL")
        if json_body is not None and data is not None:
            raise BadRequest("give json_body or data, not both")
        method = method.upper()
        hdrs = dict(headers or {})
        if include_auth or puter_auth_header:
            token = self._client.token
            if not token:
                raise AuthenticationError("not logged in: call login() or pass a token", code="token_missing")
            if include_auth:
                hdrs["Authorization"] = f"Bearer {token}"
            if puter_auth_header and not any(k.lower() == puter_auth_header.lower() for k in hdrs):
                hdrs[puter_auth_header] = token
        kwargs: dict[str, Any] = {"headers": hdrs, "params": params}
        if json_body is not None:
            kwargs["content"] = json.dumps(json_body).encode("utf-8")
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(data, dict):
            kwargs["data"] = data
        elif isinstance(data, str):
            kwargs["content"] = data.encode("utf-8")
        elif data is not None:
            kwargs["content"] = data
        idem = Idempotency.IDEMPOTENT if method in SAFE_METHODS else Idempotency.CONNECT_ONLY
        policy = self._client._retry
        http = self._client._http
        attempt = 0
        while True:
            attempt += 1
            request = http.build_request(method, url, **kwargs)
            try:
                # Redirects are followed only without credentials (they could take the token elsewhere).
                response = await http.send(request, follow_redirects=not (include_auth or puter_auth_header))
            except httpx.RequestError as exc:
                err = _transport_error(exc)
                if attempt <= policy.bounded and may_retry(idem, err, sent=not isinstance(exc, NOT_SENT_ERRORS)):
                    await anyio.sleep(policy.delay(attempt))
                    continue
                raise err from exc
            if not 200 <= response.status_code < 300:
                err = error_from_response(response.status_code, response.headers, response.content)
                if attempt <= policy.bounded and may_retry(idem, err, sent=True):
                    await anyio.sleep(policy.delay(attempt))
                    continue
                raise err
            if not return_json:
                return response.content
            try:
                return response.json()
            except ValueError as exc:
                raise ServerError(
                    f"expected JSON from {url.split('?', 1)[0]}, got "
                    f"{response.headers.get('content-type') or 'no content type'}",
                    status=response.status_code,
                ) from exc
