"""Fixtures for the client tests: both anyio backends and a client on a mocked server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from test_client_support import API, TOKEN, WEB

from puterfs.client import PuterClient


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False, assert_all_mocked=True)


@pytest.fixture
async def client(router: respx.MockRouter) -> AsyncIterator[PuterClient]:
    c = PuterClient(
        token=TOKEN,
        api_url=API,
        web_url=WEB,
        transport=httpx.MockTransport(router.async_handler),
        max_retries=3,
        retry_base_delay=0.001,
        retry_max_delay=0.01,
    )
    c.username = "admin"
    async with c:
        yield c
