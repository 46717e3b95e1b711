"""``client.apps``: the user's Puter apps (``puter-apps`` / ``es:app``), as puter.js's
``puter.apps`` speaks to a 26.07 server (RECORDED-2.md §5, ``exchanges/apps.jsonl``).

App names are global: a taken name is :class:`~puterfs.client.AlreadyExists` unless
``dedupe_name`` asks the server for a free variant (``name-xxxx``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from puterfs.client._errors import BadRequest, ServerError
from puterfs.client._paging import all_pages
from puterfs.client._retry import Idempotency

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

IFACE = "puter-apps"
DRIVER = "es:app"

# puter.js's camelCase attribute names -> the server's (toAppObject).
_APP_KEYS = {
    "name": "name",
    "title": "title",
    "description": "description",
    "icon": "icon",
    "indexURL": "index_url",
    "indexUrl": "index_url",
    "index_url": "index_url",
    "maximizeOnStart": "maximize_on_start",
    "maximize_on_start": "maximize_on_start",
    "background": "background",
    "filetypeAssociations": "filetype_associations",
    "filetype_associations": "filetype_associations",
    "metadata": "metadata",
}
_OPTION_KEYS = {"dedupeName": "dedupe_name", "dedupe_name": "dedupe_name"}
_APP_UID_RE = re.compile(r"^app-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def app_object(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(app object, create options) from puter.js-style or snake_case attributes; unknown
    keys are a :class:`BadRequest` (the server would ignore them silently)."""
    obj: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in _OPTION_KEYS:
            options[_OPTION_KEYS[key]] = bool(value)
        elif key in _APP_KEYS:
            if value is not None:
                obj[_APP_KEYS[key]] = value
        else:
            raise BadRequest(f"unknown app attribute {key!r} (known: {', '.join(sorted(_APP_KEYS))}, dedupeName)")
    return obj, options


def app_id(ident: str) -> dict[str, str]:
    if not isinstance(ident, str) or not ident.strip():
        raise BadRequest("an app is named by its name or its uid")
    ident = ident.strip()
    return {"uid": ident} if _APP_UID_RE.match(ident) else {"name": ident}


class Apps:
    def __init__(self, client: PuterClient) -> None:
        self._client = client

    async def _call(self, method: str, args: dict[str, Any], idem: Idempotency) -> Any:
        return await self._client._driver_result(IFACE, method, args, idem=idem, driver=DRIVER)

    async def create(
        self, name: str, index_url: str | None = None, *, dedupe_name: bool = False, **attrs: Any
    ) -> dict[str, Any]:
        """Create an app and return it. ``attrs``: ``title`` (default: the name),
        ``description``, ``icon``, ``maximize_on_start``, ``background``,
        ``filetype_associations``, ``metadata`` (puter.js's camelCase works too)."""
        obj, options = app_object({"name": name, **({"index_url": index_url} if index_url else {}), **attrs})
        if not obj.get("index_url"):
            raise BadRequest("an app needs an index_url")
        obj.setdefault("title", obj["name"])
        if dedupe_name:
            options["dedupe_name"] = True
        args: dict[str, Any] = {"object": obj}
        if options:
            args["options"] = options
        # Not retried once sent: a second create would find the name taken.
        return await self._call("create", args, Idempotency.SAFE_REJECTIONS)

    async def get(self, ident: str, *, stats_period: str | None = None, icon_size: int | None = None) -> dict[str, Any]:
        """An app by name or uid; ``stats_period`` (e.g. ``"all"``) adds its ``stats``."""
        args: dict[str, Any] = {"id": app_id(ident)}
        params = {k: v for k, v in (("stats_period", stats_period), ("icon_size", icon_size)) if v is not None}
        if params:
            args["params"] = params
        return await self._call("read", args, Idempotency.IDEMPOTENT)

    async def list(self) -> list[dict[str, Any]]:
        """Every app the user can edit, page by page."""
        return await all_pages(self._call, "select", {"predicate": ["user-can-edit"]}, "apps select")

    async def update(self, ident: str, **attrs: Any) -> dict[str, Any]:
        """Change an app's attributes (``name`` renames it); returns the app."""
        obj, options = app_object(attrs)
        if options:
            raise BadRequest("dedupe_name only applies to create")
        if not obj:
            raise BadRequest("nothing to update")
        return await self._call("update", {"id": app_id(ident), "object": obj}, Idempotency.IDEMPOTENT)

    async def delete(self, ident: str) -> dict[str, Any]:
        """Delete an app; returns ``{"success": True, "uid": ...}``."""
        return await self._call("delete", {"id": app_id(ident)}, Idempotency.SAFE_REJECTIONS)

    async def name_available(self, name: str) -> bool:
        """Whether no app has this name yet (``GET /apps/nameAvailable``)."""
        if not isinstance(name, str) or not name:
            raise BadRequest("an app name is required")
        data = await self._client._get_json("/apps/nameAvailable", params={"name": name})
        if not isinstance(data, dict) or not isinstance(data.get("available"), bool):
            raise ServerError("unexpected /apps/nameAvailable answer", body=data)
        return data["available"]

    async def developer_profile(self) -> dict[str, Any]:
        """``GET /get-dev-profile``."""
        data = await self._client._get_json("/get-dev-profile")
        if not isinstance(data, dict):
            raise ServerError("unexpected /get-dev-profile answer", body=data)
        return data
