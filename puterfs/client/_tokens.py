"""What kind of token a token is, read from its JWT claims (not verified: only a label).

Puter's tokens are JWTs whose ``t`` claim names the kind (API reference §2.5; the server
compresses ``type`` to ``t`` and its values to ``s``/``t``/``au``). What each kind can do:

==================== =========================== ============================================
kind                 where it comes from         what it can do
==================== =========================== ============================================
``session``          ``/login``, ``/signup``     everything, including account settings and
                     (``t:"gui"``), the cookie   socket.io (live change events)
``full-api-access``  AuthMe (``puterfs login``   every FS, driver and AI route; not account
                     in the browser), copyauth,  management, not minting tokens, and
                     ``create-access-token``     socket.io refuses it (``44`` connect error)
``access``           ``create-access-token``     only the permissions it was given
                     with narrow permissions     (FS routes answer 403)
``app``              ``get-user-app-token``      sandboxed to its app's folder
==================== =========================== ============================================
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

KINDS = ("session", "full-api-access", "access", "app", "unknown")


def token_claims(token: str | None) -> dict[str, Any] | None:
    """The JWT payload of ``token`` (unverified), or None when it is not a JWT."""
    if not token:
        return None
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def token_kind(token: str | None) -> str:
    """``session``, ``full-api-access``, ``access``, ``app`` or ``unknown`` (see the table above)."""
    claims = token_claims(token)
    if claims is None:
        return "unknown"
    kind = claims.get("t", claims.get("type"))
    if kind in ("gui", "s", "session"):
        return "session"
    if kind in ("au", "app-under-user"):
        return "app"
    if kind in ("t", "access-token"):
        perms = claims.get("perm")
        full = claims.get("full_access") is True or (isinstance(perms, list) and "full-api-access" in perms)
        return "full-api-access" if full else "access"
    return "unknown"
