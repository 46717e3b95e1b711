"""Paginated driver methods (apps ``select``, subdomains ``select``, workers ``getFilePaths``).

A page is ``{"items": [...], "cursor": ...}``; the next one is asked for with that cursor until
the cursor is empty or comes back unchanged. A plain list is the last (or only) page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from puterfs.client._errors import ServerError
from puterfs.client._retry import Idempotency

MAX_PAGES = 10_000

DriverCall = Callable[[str, dict[str, Any], Idempotency], Awaitable[Any]]


async def all_pages(call: DriverCall, method: str, args: dict[str, Any], what: str) -> list[Any]:
    """Every item of ``method`` called page by page with ``args``; ``what`` names it in errors."""
    items: list[Any] = []
    args = {**args, "cursor": None}
    for _ in range(MAX_PAGES):
        page = await call(method, dict(args), Idempotency.IDEMPOTENT)
        if isinstance(page, list):
            return items + page
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise ServerError(f"{what}: unexpected answer", body=page)
        items.extend(page["items"])
        cursor = page.get("cursor")
        if not cursor or cursor == args["cursor"]:
            return items
        args["cursor"] = cursor
    raise ServerError(f"{what} did not finish")
