"""Loopback-only admin routes under ``/_emulator/``: faults, release, disk capacity, captcha, revoke, suspend,
clock, sockets, request log, a subtree's contents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from puterfs.emulator.app import JSONResponse, parse_json_bytes
from puterfs.emulator.errors import ApiError, api_error

if TYPE_CHECKING:
    from puterfs.emulator.app import Emulator


async def handle_admin(emu: Emulator, request: Request) -> Response:
    try:
        return await _handle(emu, request)
    except ApiError as exc:
        return exc.response()


async def _handle(emu: Emulator, request: Request) -> Response:
    method, path = request.method, request.url.path
    if path == "/_emulator/faults":
        if method == "GET":
            return JSONResponse({"rules": emu.faults.rules()})
        if method == "DELETE":
            emu.faults.clear()
            return JSONResponse({"ok": True})
        if method == "POST":
            body = parse_json_bytes(await request.body())
            rules = body.get("rules", [])
            if not isinstance(rules, list):
                raise ApiError(400, "bad_request", "'rules' must be a list")
            try:
                emu.faults.set_rules(rules)
            except (TypeError, ValueError) as exc:
                raise ApiError(400, "bad_request", f"bad fault rule: {exc}") from exc
            return JSONResponse({"ok": True, "rules": emu.faults.rules()})
    elif path == "/_emulator/release" and method == "POST":
        emu.faults.release()
        return JSONResponse({"ok": True})
    elif path == "/_emulator/disk":
        if method == "POST":
            body = parse_json_bytes(await request.body())
            cap = body.get("capacity")
            if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
                raise ApiError(400, "bad_request", "'capacity' must be a byte count or null")
            emu.capacity = cap
        return JSONResponse({"capacity": emu.capacity})
    elif path == "/_emulator/captcha":
        if method == "POST":
            body = parse_json_bytes(await request.body())
            enabled = body.get("enabled")
            if not isinstance(enabled, bool):
                raise ApiError(400, "bad_request", "'enabled' must be true or false")
            emu.captcha = enabled
        return JSONResponse({"enabled": emu.captcha})
    elif path == "/_emulator/revoke" and method == "POST":
        # what "log out everywhere" / revoking a session in Settings does to one token
        body = parse_json_bytes(await request.body())
        token = body.get("token")
        claims = emu._claims_ok(token) if isinstance(token, str) else None
        if claims is None:
            raise ApiError(400, "bad_request", "'token' must be a token this emulator issued")
        emu.store.revoke(str(claims.get("jti")))
        return JSONResponse({"ok": True})
    elif path == "/_emulator/suspend" and method == "POST":
        # an administrator suspends (or reinstates) an account: {"username", "suspended": bool}
        body = parse_json_bytes(await request.body())
        user = emu.store.user_by_name(str(body.get("username")))
        if user is None or not isinstance(body.get("suspended", True), bool):
            raise ApiError(400, "bad_request", "'username' must name a user, 'suspended' be true or false")
        emu.store.update_user(user["id"], suspended=int(body.get("suspended", True)))
        return JSONResponse({"ok": True})
    elif path == "/_emulator/clock":
        if method == "POST":
            body = parse_json_bytes(await request.body())
            adv = body.get("advance", 0)
            if not isinstance(adv, (int, float)) or isinstance(adv, bool) or adv < 0:
                raise ApiError(400, "bad_request", "'advance' must be a number of seconds >= 0")
            emu.clock_offset += float(adv)
        return JSONResponse({"offset": emu.clock_offset, "now": emu.now()})
    elif path == "/_emulator/sockets":
        if method == "GET":
            return JSONResponse({"sessions": [
                {"transport": s.transport, "connected": s.user_id is not None} for s in emu.sockets.sessions.values()
            ]})
        if method == "DELETE":  # drop every socket.io connection (fault injection)
            return JSONResponse({"dropped": emu.sockets.drop_all()})
        if method == "POST":  # {"event_delay": seconds}: events go out late (fault injection)
            body = parse_json_bytes(await request.body())
            delay = body.get("event_delay", 0)
            if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 60:
                raise ApiError(400, "bad_request", "'event_delay' must be a number of seconds from 0 to 60")
            emu.sockets.event_delay = float(delay)
            return JSONResponse({"event_delay": emu.sockets.event_delay})
    elif path == "/_emulator/tier":
        if method == "POST":
            body = parse_json_bytes(await request.body())
            try:
                emu.limiter.set_tier(str(body.get("tier")))
            except ValueError as exc:
                raise ApiError(400, "bad_request", str(exc)) from exc
            if body.get("reset"):
                emu.limiter.reset()
        return JSONResponse({"tier": emu.limiter.tier, "inflight": emu.limiter.inflight()})
    elif path == "/_emulator/users" and method == "POST":
        # test-harness accounts: made as /signup makes them, but not a client request (no
        # signup window, no captcha); {"temp": false} makes a confirmed signed-up user
        body = parse_json_bytes(await request.body())
        return JSONResponse(_new_user(emu, temp=body.get("temp", True) is not False))
    elif path == "/_emulator/tree" and method == "GET":
        # what the server holds below a path, straight from the store (no rate limits, no
        # faults): {relative path: "dir" | sha256 of the stored bytes}; for tests that check
        # thousands of files without spending the account's read budget
        return JSONResponse({"tree": _tree(emu, request.query_params.get("path", ""))})
    elif path == "/_emulator/log":
        if method == "GET":
            bodies = request.query_params.get("bodies", "") not in ("", "0", "false")
            return JSONResponse(emu.log.entries(bodies=bodies))
        if method == "DELETE":
            emu.log.clear()
            return JSONResponse({"ok": True})
    return api_error(404, "not_found", "Not Found")


def _tree(emu: Emulator, path: str) -> dict[str, str]:
    import hashlib

    top = emu.store.by_path(path.rstrip("/") or "/")
    if top is None:
        raise ApiError(404, "subject_does_not_exist", f"{path} does not exist")
    prefix = top["path"].rstrip("/") + "/"
    out: dict[str, str] = {}
    for row in emu.store.descendants(top):
        rel = row["path"][len(prefix):] if row["path"].startswith(prefix) else row["path"]
        if row["is_dir"]:
            out[rel] = "dir"
            continue
        h = hashlib.sha256()
        with emu.store.open_blob(row) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[rel] = h.hexdigest()
    return out


def _new_user(emu: Emulator, temp: bool) -> dict[str, str]:
    import secrets

    from puterfs.emulator.routes_auth import _ADJ, _NOUN

    store = emu.store
    while True:
        name = f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}_{secrets.randbelow(900000) + 100000}"
        if store.user_by_name(name) is None:
            break
    if temp:
        user = store.create_user(name, None, is_temp=True, via_signup=True)
    else:
        user = store.create_user(name, secrets.token_urlsafe(12), email=f"{name}@example.invalid", via_signup=True)
        store.update_user(user["id"], email_confirmed=1)
    row = store.user_by_name(name)
    assert row is not None
    return {"username": name, "token": emu.issue_token(row, "gui")}
