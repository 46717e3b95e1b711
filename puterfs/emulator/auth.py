"""Tokens and TOTP for the emulator.

Tokens look like the real server's JWTs (three base64url parts, HS256) so that
clients treating them as opaque strings see the same shape.  They are signed
with a secret kept in the emulator's SQLite file, so a token stays valid across
restarts (the CLI prints one token at start and writes it to DATA/token).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
import time
from typing import Any


class TokenFormatError(Exception):
    """Not a token of ours at all (the real server says ``reauth_required``/``token_v1``)."""


class TokenSignatureError(Exception):
    """Well-formed but not signed by this server (``token_auth_failed``)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


def sign_token(secret: bytes, claims: dict[str, Any]) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(sig)}"


def verify_token(secret: bytes, token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenFormatError("not a JWT")
    try:
        header = json.loads(_unb64url(parts[0]))
        claims = json.loads(_unb64url(parts[1]))
        sig = _unb64url(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise TokenFormatError("undecodable token") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "HS256":
        raise TokenFormatError("unexpected token header")
    want = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(want, sig):
        raise TokenSignatureError("bad signature")
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and exp < time.time():
        raise TokenSignatureError("expired")
    return claims


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 50_000)
    return f"{salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored or "$" not in stored:
        return False
    salt_hex, _ = stored.split("$", 1)
    return hmac.compare_digest(hash_password(password, bytes.fromhex(salt_hex)), stored)


# --- TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps) -------------------------------------


def new_totp_secret() -> str:
    return base64.b32encode(os.urandom(20)).decode().rstrip("=")


def _b32decode(secret: str) -> bytes:
    s = secret.strip().replace(" ", "").upper()
    return base64.b32decode(s + "=" * (-len(s) % 8))


def totp(secret: str, at: float | None = None, step: int = 30, digits: int = 6) -> str:
    counter = int((time.time() if at is None else at) // step)
    mac = hmac.new(_b32decode(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % (10**digits)
    return str(code).zfill(digits)


def totp_verify(secret: str | None, code: object, at: float | None = None) -> bool:
    """Accept the previous, current and next step, as the real server does."""
    if not secret or not isinstance(code, (str, int)):
        return False
    code = str(code).strip()
    now = time.time() if at is None else at
    try:
        return any(hmac.compare_digest(totp(secret, now + d * 30), code) for d in (-1, 0, 1))
    except (ValueError, binascii.Error):
        return False
