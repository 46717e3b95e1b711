"""Apps and hosted sites: the emulator's tables, and serving a site on its host.

A site made with ``puter-subdomains create`` is served, as on a self-hosted 26.07
server, at ``http://<subdomain>.site.<domain>[:port]/`` and also on
``<subdomain>.host.<domain>`` (RECORDED-2.md §5, apps.jsonl 38-42): ``/`` is the
root directory's ``index.html``, an unknown site is 404 text "Subdomain not found",
a missing file 404 HTML. ``<name>.workers.<domain>`` answers 404 ``not_found``
(no Cloudflare Workers on a self-host).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from puterfs.emulator.errors import api_error
from puterfs.emulator.store import mime_for

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    uid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subdomains (
    uid TEXT PRIMARY KEY,
    subdomain TEXT NOT NULL UNIQUE,
    owner_id INTEGER NOT NULL,
    root_uid TEXT,
    created_at TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS subdomains_root ON subdomains(root_uid);
"""

NOT_FOUND_HTML = "<h1>404</h1><p>Not Found</p>"


def ensure_schema(store: Any) -> None:
    if not getattr(store, "_hosting_ready", False):
        store.db.executescript(_SCHEMA)
        store._hosting_ready = True


def site_address(domain: str, subdomain: str, scheme: str = "http") -> str:
    return f"{scheme}://{subdomain}.site.{domain}"


def subdomains_of(store: Any, domain: str, entry_uid: str, scheme: str = "http") -> list[dict[str, Any]]:
    """``subdomains`` of a directory's entry: the sites whose root it is."""
    ensure_schema(store)
    rows = store.db.execute(
        "SELECT uid, subdomain FROM subdomains WHERE root_uid=? ORDER BY seq", (entry_uid,)
    ).fetchall()
    return [
        {"uuid": r["uid"], "subdomain": r["subdomain"], "address": site_address(domain, r["subdomain"], scheme)}
        for r in rows
    ]


def _host_label(host_header: str, domain: str) -> tuple[str, str] | None:
    """(kind, label) for ``<label>.site|host|workers.<domain>``."""
    host = host_header.rsplit(":", 1)[0].lower() if not host_header.startswith("[") else ""
    for kind in ("site", "host", "workers"):
        suffix = f".{kind}.{domain}"
        if host.endswith(suffix) and len(host) > len(suffix):
            label = host[: -len(suffix)]
            if "." not in label:
                return ("workers" if kind == "workers" else "site"), label
    return None


def serve_site(emu: Any, method: str, path: str, host_header: str) -> Response | None:
    """The answer of a hosted site or the workers host, or None for other hosts."""
    found = _host_label(host_header, emu.domain)
    if found is None:
        return None
    response = _site_response(emu, method, path, found)
    if path == "/":
        response.headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
    return response


def _site_response(emu: Any, method: str, path: str, found: tuple[str, str]) -> Response:
    kind, label = found
    if kind == "workers":
        return api_error(404, "not_found", "Not Found")
    store = emu.store
    ensure_schema(store)
    row = store.db.execute("SELECT root_uid FROM subdomains WHERE subdomain=?", (label,)).fetchone()
    root = store.by_uid(row["root_uid"]) if row is not None and row["root_uid"] else None
    if root is None or not root["is_dir"]:
        return Response("Subdomain not found", status_code=404, media_type="text/plain; charset=utf-8")
    if method not in ("GET", "HEAD"):
        return Response(NOT_FOUND_HTML, status_code=404, media_type="text/html; charset=utf-8")
    node = root
    for part in [p for p in path.split("/") if p]:
        if part in (".", "..") or node is None or not node["is_dir"]:
            node = None
            break
        node = store.child(node, part)
    if node is not None and node["is_dir"]:
        node = store.child(node, "index.html")
    if node is None or node["is_dir"]:
        return Response(NOT_FOUND_HTML, status_code=404, media_type="text/html; charset=utf-8")
    with store.open_blob(node) as fh:
        data = fh.read()
    ctype = mime_for(node["name"]) or "application/octet-stream"
    if method == "HEAD":
        return Response(b"", media_type=ctype, headers={"Content-Length": str(len(data))})
    return Response(data, media_type=ctype)
