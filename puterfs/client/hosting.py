"""``client.hosting``: static sites served from a directory (``puter-subdomains``), as
puter.js's ``puter.hosting`` speaks to a 26.07 server (RECORDED-2.md §5).

A site ``<subdomain>`` is served at ``https://<subdomain>.puter.site`` on puter.com and
at ``http://<subdomain>.site.<domain>:<port>`` on a self-hosted server; :meth:`Hosting.url`
gives the address for this client's server. Subdomains are global: a taken one is
:class:`~puterfs.client.AlreadyExists`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from puterfs.client._errors import BadRequest
from puterfs.client._paging import all_pages
from puterfs.client._retry import Idempotency

if TYPE_CHECKING:
    from puterfs.client._client import PuterClient

IFACE = "puter-subdomains"
_ROOT_KEYS = ("root_dir", "rootDir", "dir", "dirPath", "dir_path", "path")


def root_dir_of(options: Mapping[str, Any]) -> Any:
    """The site directory named in putergenai/puter.js-style options (None when absent)."""
    for key in _ROOT_KEYS:
        if options.get(key) is not None:
            return options[key]
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _subdomain(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("a site needs a subdomain")
    return name.strip()


class Hosting:
    def __init__(self, client: PuterClient) -> None:
        self._client = client

    async def _call(self, method: str, args: dict[str, Any], idem: Idempotency) -> Any:
        return await self._client._driver_result(IFACE, method, args, idem=idem)

    async def _dir(self, path: Any) -> str:
        if not isinstance(path, str) or not path:
            raise BadRequest("a site needs the directory it serves")
        return await self._client._abs(path)

    async def create(self, subdomain: str, root_dir: str) -> dict[str, Any]:
        """Serve the directory ``root_dir`` (a Puter path) as ``subdomain``; returns the site."""
        obj = {"subdomain": _subdomain(subdomain), "root_dir": await self._dir(root_dir)}
        return await self._call("create", {"object": obj}, Idempotency.SAFE_REJECTIONS)

    async def get(self, subdomain: str) -> dict[str, Any]:
        return await self._call("read", {"id": {"subdomain": _subdomain(subdomain)}}, Idempotency.IDEMPOTENT)

    async def list(self) -> list[dict[str, Any]]:
        """Every site of the user, page by page (worker hosts left out, as puter.js does)."""
        sites = await all_pages(self._call, "select", {}, "subdomains select")
        return [s for s in sites
                if not (isinstance(s, dict) and str(s.get("subdomain", "")).startswith("workers.puter."))]

    async def update(self, subdomain: str, root_dir: str) -> dict[str, Any]:
        """Serve another directory; returns the site."""
        args = {"id": {"subdomain": _subdomain(subdomain)}, "object": {"root_dir": await self._dir(root_dir)}}
        return await self._call("update", args, Idempotency.IDEMPOTENT)

    async def delete(self, subdomain: str) -> dict[str, Any]:
        """Stop serving ``subdomain``; returns ``{"success": True, "uid": ...}``."""
        return await self._call("delete", {"id": {"subdomain": _subdomain(subdomain)}}, Idempotency.SAFE_REJECTIONS)

    def url(self, subdomain: str) -> str:
        """Where the site is served for this client's server (a server reached by IP address
        is taken to use the default domain ``puter.localhost``)."""
        parts = urlsplit(self._client.api_url)
        host = parts.hostname or ""
        if host == "api.puter.com" or host.endswith(".puter.com"):
            return f"https://{_subdomain(subdomain)}.puter.site"
        if host.startswith("api."):
            domain = host[len("api."):]
        elif host == "localhost" or _is_ip(host):
            domain = "puter.localhost"  # a self-host's default domain, reached by address
        else:
            domain = host
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{_subdomain(subdomain)}.site.{domain}{port}"
