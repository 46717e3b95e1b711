"""Login, signup, 2FA, whoami and token routes (README §2)."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
import uuid as uuidlib
from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from puterfs.emulator.app import Call, JSONResponse, route
from puterfs.emulator.auth import check_password, new_totp_secret, totp_verify
from puterfs.emulator.errors import ApiError
from puterfs.emulator.routes_gui import check_captcha
from puterfs.emulator.store import WHOAMI_DIRS, join

_APPS = (
    ("app-0b37f054-07d4-4627-8765-11bd23e889d4", "dev-center", "Dev Center", True, True,
     "https://builtins.namespaces.puter.com/dev-center", "This is the app that makes apps"),
    ("app-5584fbf7-ed69-41fc-99cd-85da21b1ef51", "camera", "Camera", False, False,
     "https://online-camera.com", "Camera in the browser."),
    ("app-7bdca1a4-6373-4c98-ad97-03ff2d608ca1", "recorder", "Recorder", False, False,
     "https://voice-recorder.com",
     "Online voice recorder in the browser with cloud storage. Take voice memos by recording through your "
     "mic directly in your web browser on any device."),
)
_ADJ = ("amazing", "savvy", "neat", "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "lucky", "proud")
_NOUN = ("bed", "door", "violin", "river", "cloud", "lamp", "stone", "garden", "pencil", "window", "kettle", "tree")
OTP_TTL = 300


def taskbar_items(base_url: str, with_icon: bool) -> list[dict[str, Any]]:
    items = []
    for uid, name, title, god, maxi, url, desc in _APPS:
        item: dict[str, Any] = {"uid": uid, "uuid": uid, "name": name, "title": title}
        if with_icon:
            item["icon"] = f"{base_url}/app-icon/{uid}/256"
        item.update(godmode=god, maximize_on_start=maxi, index_url=url, description=desc)
        items.append(item)
    return items


def login_body(call: Call, user: sqlite3.Row, token: str) -> dict[str, Any]:
    return {
        "proceed": True,
        "next_step": "complete",
        "token": token,
        "user": {
            "username": user["username"],
            "uuid": user["uuid"],
            "email": user["email"],
            "email_confirmed": bool(user["email_confirmed"]) and user["email"] is not None,
            "requires_email_confirmation": user["email"] is not None and not user["email_confirmed"],
            "phone": None,
            "requires_phone_verification": False,
            "requires_card_verification": False,
            "is_temp": bool(user["is_temp"]),
            "taskbar_items": taskbar_items(call.base_url(), True),
        },
    }


def _session(call: Call, user: sqlite3.Row) -> Response:
    token = call.emu.issue_token(user, "gui")
    resp = JSONResponse(login_body(call, user, token))
    resp.set_cookie("puter_auth_token", token, httponly=True, samesite="lax")
    return resp


def _check_origin(call: Call) -> None:
    origin = call.request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != call.base_url():
        raise ApiError(403, "forbidden", "This endpoint cannot be called cross-origin.")


@route("POST", "/login", host="root", auth="none")
async def login(call: Call) -> Response:
    _check_origin(call)
    check_captcha(call, call.body)
    body = call.body
    username, email, password = body.get("username"), body.get("email"), body.get("password")
    if not username and not email:
        raise ApiError(400, "bad_request", "Username or email is required.")
    if not password:
        raise ApiError(400, "password_required", "Password is required.")
    if not isinstance(password, str) or len(password) < 6:
        raise ApiError(400, "bad_request", "Invalid password.")
    store = call.store
    if username:
        user = store.user_by_name(str(username))
        if user is None:
            raise ApiError(404, "not_found", "Username not found.")
    else:
        user = store.user_by_email(str(email))
        if user is None:
            raise ApiError(404, "not_found", "Email not found.")
    if not check_password(password, user["password"]):
        raise ApiError(401, "password_mismatch", "Incorrect password.")
    if user["otp_enabled"]:
        otp_token = call.emu.issue_token(user, "otp", exp=int(time.time()) + OTP_TTL)
        return JSONResponse({"proceed": True, "next_step": "otp", "otp_jwt_token": otp_token}, status_code=202)
    return _session(call, user)


def _otp_user(call: Call) -> tuple[sqlite3.Row, str]:
    _check_origin(call)
    check_captcha(call, call.body)
    token, code = call.body.get("token"), call.body.get("code")
    if not token:
        raise ApiError(400, "bad_request", "token is required.")
    if not code:
        raise ApiError(400, "bad_request", "code is required.")
    claims = call.emu._claims_ok(str(token))
    user = None if claims is None or claims.get("t") != "otp" else call.store.user_by_uuid(str(claims.get("uu")))
    if user is None:
        raise ApiError(400, "bad_request", "Invalid token.")
    return user, str(code)


@route("POST", "/login/otp", host="root", auth="none")
async def login_otp(call: Call) -> Response:
    user, code = _otp_user(call)
    if not totp_verify(user["otp_secret"], code):
        return JSONResponse({"proceed": False})
    return _session(call, user)


@route("POST", "/login/recovery-code", host="root", auth="none")
async def login_recovery(call: Call) -> Response:
    user, code = _otp_user(call)
    codes = json.loads(user["recovery_codes"] or "[]")
    if code not in codes:
        return JSONResponse({"proceed": False})
    codes.remove(code)  # one use each
    call.store.update_user(user["id"], recovery_codes=json.dumps(codes))
    return _session(call, user)


@route("POST", "/signup", host="root", auth="none")
async def signup(call: Call) -> Response:
    _check_origin(call)
    check_captcha(call, call.body)
    body, store = call.body, call.store
    if body.get("is_temp"):
        for _ in range(1000):
            name = f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}_{secrets.randbelow(900000) + 100000}"
            if store.user_by_name(name) is None:
                break
        user = store.create_user(name, None, is_temp=True, via_signup=True)
        return _session(call, user)
    username, email, password = body.get("username"), body.get("email"), body.get("password")
    if not isinstance(username, str) or not username or "/" in username:
        raise ApiError(400, "bad_request", "Username is required.")
    if not isinstance(password, str) or len(password) < 6:
        raise ApiError(400, "bad_request", "Invalid password.")
    if not isinstance(email, str) or "@" not in email:
        raise ApiError(400, "bad_request", "Email is required.")
    if store.user_by_name(username) is not None:
        raise ApiError(409, "conflict", "This username already exists in our database. Please use another one.")
    if store.user_by_email(email) is not None:
        raise ApiError(409, "conflict", "This email already exists in our database. Please use another one.")
    user = store.create_user(username, password, email=email, via_signup=True)
    return _session(call, user)


@route("POST", "/logout", host="root", auth="optional")
async def logout(call: Call) -> Response:
    if call.actor is not None:
        call.store.revoke(str(call.actor.claims.get("jti")))
    resp = Response("logged out", media_type="text/plain")
    resp.delete_cookie("puter_auth_token")
    return resp


def _age(seconds: float) -> str:
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


@route("GET", "/whoami", auth="user")
async def whoami(call: Call) -> Response:
    user, store = call.me.user, call.store
    home = "/" + user["username"]
    dirs = {}
    for name in WHOAMI_DIRS:
        entry = store.by_path(join(home, name))
        if entry is not None:
            dirs[entry["path"]] = entry["uid"]
    confirmed = bool(user["email_confirmed"])
    body: dict[str, Any] = {
        "username": user["username"],
        "uuid": user["uuid"],
        "email": user["email"],
        "unconfirmed_email": user["email"],
        "email_confirmed": confirmed,
        "requires_email_confirmation": user["email"] is not None and not confirmed,
        "requires_phone_verification": False,
        "requires_card_verification": False,
        "desktop_bg_url": None,
        "desktop_bg_color": None,
        "desktop_bg_fit": None,
        "is_temp": bool(user["is_temp"]),
        "is_user_token": call.me.kind in ("gui", "s", "t"),
        "referral_code": None,
        "oidc_only": False,
        "taskbar_items": taskbar_items(call.base_url(), False),
        "otp": bool(user["otp_enabled"]),
        "feature_flags": {},
        "created_ts": user["created_ts"],
        "human_readable_age": _age(time.time() - user["created_ts"]),
        "metadata": {},
        "hasDevAccountAccess": False,
        "directories": dirs,
    }
    if user["via_signup"]:
        body["last_activity_ts"] = int(time.time())
    if call.me.kind == "au":
        body["app_uid"] = call.me.app_uid
    return JSONResponse(body)


@route("POST", "/confirm-email", auth="user")
async def confirm_email(call: Call) -> Response:
    user = call.me.user
    code = call.body.get("code")
    ok = user["email_code"] is not None and isinstance(code, (str, int)) and str(code) == user["email_code"]
    if ok:
        call.store.update_user(user["id"], email_confirmed=1)
    return JSONResponse({"email_confirmed": bool(ok or user["email_confirmed"])})


@route("POST", "/auth/create-access-token", auth="user")
async def create_access_token(call: Call) -> Response:
    perms = call.body.get("permissions")
    if not isinstance(perms, list) or not perms or not all(isinstance(p, str) for p in perms):
        raise ApiError(400, "bad_request", "`permissions` must be a non-empty array of strings")
    if call.me.kind not in ("gui", "s"):
        raise ApiError(403, "forbidden", "This endpoint is only available to user sessions")
    extra: dict[str, Any] = {"perm": perms}
    if "full-api-access" in perms:
        extra["full_access"] = True  # a signed claim on the real server too
    label = call.body.get("label")
    if isinstance(label, str):
        extra["label"] = label
    exp = _parse_expires(call.body.get("expiresIn"))
    if exp is not None:
        extra["exp"] = int(time.time()) + exp
    return JSONResponse({"token": call.emu.issue_token(call.me.user, "t", **extra)})


def _parse_expires(value: Any) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value[:-1].isdigit() and value[-1] in "smhd":
        return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
    return None


@route("POST", "/auth/get-user-app-token", auth="user")
async def get_user_app_token(call: Call) -> Response:
    origin, app_uid = call.body.get("origin"), call.body.get("app_uid")
    if isinstance(origin, str) and origin:
        app_uid = "app-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, origin.rstrip("/")))
    elif not (isinstance(app_uid, str) and app_uid):
        raise ApiError(400, "bad_request", "`origin` or `app_uid` is required")
    token = call.emu.issue_token(call.me.user, "au", app=app_uid)
    return JSONResponse({"token": token, "app_uid": app_uid})


async def _configure_2fa(call: Call, action: str) -> Response:
    user, store = call.me.user, call.store
    if action == "setup":
        if user["otp_enabled"]:
            raise ApiError(409, "conflict", "2FA is already enabled.")
        secret = new_totp_secret()
        codes = [secrets.token_hex(4) for _ in range(10)]
        store.update_user(user["id"], otp_secret=secret, recovery_codes=json.dumps(codes))
        label = quote(f"puter.com:{user['username']}", safe=":@")
        url = f"otpauth://totp/{label}?issuer=puter.com&secret={secret}&algorithm=SHA1&digits=6&period=30"
        return JSONResponse({"url": url, "secret": secret, "codes": codes})
    if action == "test":
        return JSONResponse({"ok": totp_verify(user["otp_secret"], call.body.get("code"))})
    if action == "enable":
        if user["otp_enabled"]:
            raise ApiError(409, "conflict", "2FA is already enabled.")
        if not user["otp_secret"]:
            raise ApiError(409, "conflict", "2FA has not been configured. Call setup first.")
        if user["email"] is None or not user["email_confirmed"]:
            raise ApiError(403, "forbidden", "You must confirm your email address before enabling 2FA.")
        store.update_user(user["id"], otp_enabled=1)
        return JSONResponse({})
    if action == "disable":
        store.update_user(user["id"], otp_enabled=0, otp_secret=None, recovery_codes="[]")
        return JSONResponse({})
    raise ApiError(400, "bad_request", f"Invalid action: {action}")


@route("POST", "/auth/configure-2fa/", auth="user", prefix=True)
async def configure_2fa(call: Call) -> Response:
    return await _configure_2fa(call, call.request.url.path.rsplit("/", 1)[1])
