"""``client.workers``: serverless workers (``workers`` / ``worker-service``), as puter.js's
``puter.workers`` speaks to a 26.07 server (RECORDED-2.md §5).

Workers run on Cloudflare: puter.com has them, a self-hosted server without Cloudflare
configuration answers ``create`` with 503 "Cloudflare Workers not configured"
(:class:`~puterfs.client.ServerError`, code ``response_timeout``) and has none to list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from puterfs.client._errors import BadRequest, NotFound, ServerError
from puterfs.client._paging import all_pages
from puterfs.client._retry import Idempotency

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

IFACE = "workers"
DRIVER = "worker-service"
SANDBOX_INDEX_URL = "https://worker-sandbox.puter.com/"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def worker_spec(options: Mapping[str, Any]) -> tuple[str, str]:
    """(name, file path) from putergenai/puter.js-style options."""
    name = options.get("name", options.get("workerName", options.get("worker_name")))
    path = options.get("filePath", options.get("file_path", options.get("path", options.get("file"))))
    return name, path


def _name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BadRequest("a worker name is letters, digits, _ and - only")
    return name


class Workers:
    def __init__(self, client: PuterClient) -> None:
        self._client = client

    async def _call(self, method: str, args: dict[str, Any], idem: Idempotency) -> Any:
        return await self._client._driver_result(IFACE, method, args, idem=idem, driver=DRIVER)

    async def _sandbox_app(self, name: str) -> str:
        """The app a user-token worker runs as: ``sandbox-<name>``, created when missing
        (puter.js does the same)."""
        app_name = f"sandbox-{name}"
        try:
            app = await self._client.apps.get(app_name)
        except NotFound:
            app = await self._client.apps.create(app_name, SANDBOX_INDEX_URL)
        uid = app.get("uid") if isinstance(app, dict) else None
        if not isinstance(uid, str):
            raise ServerError("the sandbox app has no uid", body=app)
        return uid

    async def create(self, name: str, file_path: str) -> dict[str, Any]:
        """Deploy the Puter file ``file_path`` (JavaScript) as worker ``name``; returns the
        server's answer (with the worker's ``url`` on puter.com)."""
        name = _name(name)
        if not isinstance(file_path, str) or not file_path:
            raise BadRequest("a worker needs the Puter path of its source file")
        path = file_path if file_path.startswith(("/", "~")) else await self._client._abs(file_path)
        who = await self._client.whoami()
        args: dict[str, Any] = {"authorization": self._client.token, "filePath": path, "workerName": name}
        if who.get("is_user_token", True):
            args["appId"] = await self._sandbox_app(name)
        # Deploying costs; never sent twice.
        return await self._call("create", args, Idempotency.SAFE_REJECTIONS)

    async def list(self) -> list[dict[str, Any]]:
        """Every worker of the user."""
        return await all_pages(self._call, "getFilePaths", {}, "workers getFilePaths")

    async def get(self, name: str) -> dict[str, Any]:
        """One worker; :class:`NotFound` when there is none of that name."""
        result = await self._call("getFilePaths", {"workerName": _name(name)}, Idempotency.IDEMPOTENT)
        if isinstance(result, list) and result:
            return result[0]
        if isinstance(result, dict) and result:
            return result
        raise NotFound(f"no worker named {name!r}", status=404, code="not_found")

    async def delete(self, name: str) -> Any:
        """Destroy a worker; :class:`NotFound` when there is none of that name."""
        args = {"authorization": self._client.token, "workerName": _name(name)}
        return await self._call("destroy", args, Idempotency.SAFE_REJECTIONS)

    async def exec(
        self,
        worker_url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: Any = None,
        return_json: bool = False,
    ) -> Any:
        """Call a worker's URL with the user's token in ``puter-auth`` (as puter.js does, so the
        worker acts for the user; a ``puter-auth`` or ``x-puter-no-auth`` header of your own
        wins). Returns the body: bytes, or JSON with ``return_json``."""
        hdrs = dict(headers or {})
        no_auth = any(k.lower() == "x-puter-no-auth" for k in hdrs)
        hdrs = {k: v for k, v in hdrs.items() if k.lower() != "x-puter-no-auth"}
        return await self._client.net.fetch(
            worker_url, method=method, headers=hdrs, params=params, json_body=json_body, data=data,
            return_json=return_json, puter_auth_header=None if no_auth else "puter-auth",
        )

    async def logging_url(self, name: str) -> str | None:
        """Where the worker's logs stream (None when the server has none)."""
        # puter.js passes this one positionally, so the server sees args {"0": ..., "1": ...}.
        return await self._call("getLoggingUrl", {"0": self._client.token, "1": _name(name)}, Idempotency.IDEMPOTENT)
