"""``client.auth``: the signed-in account, as puter.js's ``puter.auth`` (26.07 routes:
``/whoami``, ``/logout`` on the web host, ``/metering/usage[/<app>]``).

Signing in itself (password, 2FA, browser) is :meth:`PuterClient.login` /
:meth:`PuterClient.login_browser`. Usage amounts are in microcents ($0.01 = 1,000,000)
unless the answer says ``"unit": "credits"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from puterfs.client._errors import AuthenticationError, BadRequest, ServerError

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient


class Auth:
    def __init__(self, client: PuterClient) -> None:
        self._client = client

    async def user(self) -> dict[str, Any]:
        """The account (``GET /whoami``)."""
        return await self._client.whoami()

    async def is_signed_in(self) -> bool:
        """Whether the client has a token the server accepts."""
        if not self._client.token:
            return False
        try:
            await self._client.whoami()
        except AuthenticationError:
            return False
        return True

    async def sign_out(self) -> None:
        """End the session and forget the token."""
        await self._client.logout()

    async def monthly_usage(self) -> dict[str, Any]:
        """This month's usage: ``{"usage": {"total", <type>: {...}}, "appTotals": {<app>: {...}},
        "allowanceInfo": {"monthUsageAllowance", "remaining", ...}}``."""
        data = await self._client._get_json("/metering/usage")
        if not isinstance(data, dict):
            raise ServerError("unexpected /metering/usage answer", body=data)
        return data

    async def app_usage(self, app: str) -> dict[str, Any]:
        """This month's usage of one app (its uid ``app-...`` or its name), per API."""
        if not isinstance(app, str) or not app.strip():
            raise BadRequest("an app uid or name is required")
        data = await self._client._get_json("/metering/usage/" + quote(app.strip(), safe=""))
        if not isinstance(data, dict):
            raise ServerError("unexpected /metering/usage answer", body=data)
        return data
