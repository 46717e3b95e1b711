"""The GUI pages a tool signs in through: AuthMe and CopyAuth on the root host, and captchas.

The real GUI is a single-page app; what a tool sees of it is (``src/gui/src/initgui.js``,
``src/gui/src/util/authmeGrant.js`` in HeyPuter/puter):

* ``ROOT/?action=authme&redirectURL=<url>``: a destination that is not ``http:``/``https:``
  (``javascript:``, ``data:``, garbage) is refused before anything is shown. Otherwise the
  user signs in if needed (password, then the 2FA code), sees an approval dialog naming
  the destination, and on approval the page navigates to ``<url>?token=<token>`` (an
  existing ``token`` parameter is replaced, the others are kept). The token is a new
  labelled full-api-access access token, ``External app (<host>)``. With
  ``token_type=session`` *and* a loopback destination the dialog asks the user to type
  ``grant full access`` and hands over a GUI session token instead; for any other
  destination ``token_type=session`` is ignored (the restricted token is given).
  Declining shows "Authorization Cancelled" and sends nothing.
* ``ROOT/?action=copyauth``: after sign-in, a form (label, expiry) that mints a
  full-api-access token and shows it once, to copy by hand.

Here the pages are plain server-rendered HTML forms posting back to the same URL (no
JavaScript needed), with the same outcomes. The session is the ``puter_auth_token``
cookie that ``/login`` also sets. Approval forms carry a token bound to the session so
that another site cannot submit them.

Captchas (``GET /api/captcha/generate``): when the emulator runs with ``--captcha`` (or
``POST /_emulator/captcha {"enabled": true}``), ``/login``, ``/login/otp``,
``/login/recovery-code`` and ``/signup`` want ``captchaToken`` and ``captchaAnswer`` in the
body, as puter.com does, and a scripted login gets ``400 {"code":"bad_request",
"message":"Captcha verification required."}``. The emulator's captcha image is an SVG
whose ``<text>`` is the answer: it stops scripts that do not know it is there, which is
all the tests need, not a person's adversary.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import secrets
import sqlite3
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.responses import HTMLResponse, RedirectResponse, Response

from puterfs.emulator.app import Call, JSONResponse, route
from puterfs.emulator.auth import check_password, totp_verify
from puterfs.emulator.errors import ApiError

CAPTCHA_TTL = 600.0
CAPTCHA_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o/1/i/l, as the real one
CONFIRM_PHRASE = "grant full access"
BAD_REDIRECT = (
    "This authorization request was cancelled because its destination is not a valid web "
    "address. Nothing has been shared with it."
)
EXPIRY = {"": None, "7d": "7d", "30d": "30d", "90d": "90d"}


# --------------------------------------------------------------------------- captcha


def new_captcha(call: Call) -> tuple[str, str]:
    emu = call.emu
    now = time.time()
    for tok in [t for t, (_, exp) in emu.captchas.items() if exp < now]:
        del emu.captchas[tok]
    answer = "".join(secrets.choice(CAPTCHA_ALPHABET) for _ in range(6))
    token = secrets.token_hex(32)
    emu.captchas[token] = (answer, now + CAPTCHA_TTL)
    image = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="180" height="50" viewBox="0 0 180 50">'
        '<rect width="180" height="50" fill="#f0f0f0"/>'
        f'<text x="18" y="34" font-family="monospace" font-size="28" fill="#336">{answer}</text></svg>'
    )
    return token, image


def captcha_ok(call: Call, token: Any, answer: Any) -> bool:
    """One use per captcha, like the real one (consumed even by a wrong answer)."""
    if not isinstance(token, str) or not isinstance(answer, str):
        return False
    entry = call.emu.captchas.pop(token, None)
    if entry is None or entry[1] < time.time():
        return False
    return hmac.compare_digest(entry[0], answer.strip().lower())


def check_captcha(call: Call, body: dict[str, Any]) -> None:
    """The ``captcha: true`` route gate (a no-op unless captchas are switched on)."""
    if not call.emu.captcha:
        return
    token, answer = body.get("captchaToken"), body.get("captchaAnswer")
    if not token or not answer:
        raise ApiError(400, "bad_request", "Captcha verification required.")
    if not captcha_ok(call, token, answer):
        raise ApiError(400, "bad_request", "Invalid captcha response.")


@route("GET", "/api/captcha/generate", host="any", auth="none")
async def captcha_generate(call: Call) -> Response:
    token, image = new_captcha(call)
    return JSONResponse({"token": token, "image": image})


# --------------------------------------------------------------------------- redirect targets


def deliverable(url: str | None) -> bool:
    """Only http(s) URLs with a host receive a grant (``isDeliverableRedirect``)."""
    if not url:
        return False
    try:
        parts = urlsplit(url.strip())
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def loopback_target(url: str) -> bool:
    """``localhost``, ``*.localhost``, ``::1`` and 127/8 (``isLoopbackTarget``)."""
    if not deliverable(url):
        return False
    host = (urlsplit(url.strip()).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost") or host == "::1":
        return True
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return addr in ipaddress.IPv4Network("127.0.0.0/8")


def return_url(redirect_url: str, token: str) -> str:
    """``redirect_url`` with ``token=<token>`` set (``authmeReturnUrl``)."""
    if not deliverable(redirect_url):
        raise ValueError("AuthMe can only redirect to an http(s) URL.")
    parts = urlsplit(redirect_url.strip())
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), parts.fragment))


# --------------------------------------------------------------------------- session


def session_user(call: Call) -> tuple[sqlite3.Row, dict[str, Any]] | None:
    """The user of a valid GUI/session cookie, or None (an invalid cookie = signed out)."""
    cookie = call.request.cookies.get("puter_auth_token")
    if not cookie:
        return None
    claims = call.emu._claims_ok(cookie)
    if claims is None or claims.get("t") not in ("gui", "s"):
        return None
    if call.store.is_revoked(str(claims.get("jti"))):
        return None
    user = call.store.user_by_uuid(str(claims.get("uu")))
    return (user, claims) if user is not None else None


def form_key(call: Call, claims: dict[str, Any], purpose: str) -> str:
    msg = f"{purpose}:{claims.get('jti')}".encode()
    return hmac.new(call.store.secret, msg, hashlib.sha256).hexdigest()[:32]


def _set_session(call: Call, resp: Response, user: sqlite3.Row) -> None:
    token = call.emu.issue_token(user, "gui")
    resp.set_cookie("puter_auth_token", token, httponly=True, samesite="lax")


# --------------------------------------------------------------------------- HTML

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#eef2f7;margin:0}"
    ".win{max-width:460px;margin:60px auto;background:#fff;border-radius:8px;padding:24px;"
    "box-shadow:0 2px 12px #0002}h1{font-size:20px;margin:0 0 12px}label{display:block;margin:10px 0 4px;"
    "font-size:13px}input,select{width:100%;box-sizing:border-box;padding:7px}"
    "button{margin-top:16px;padding:8px 16px}.err{color:#b42318;margin:8px 0}"
    ".dest{font-family:monospace;word-break:break-all;background:#f5f5f5;padding:6px}"
)


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><div class='win'>{body}</div></body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _form_action(call: Call) -> str:
    query = call.request.url.query
    return "/?" + query if query else "/"


def signin_page(call: Call, error: str = "", username: str = "") -> HTMLResponse:
    err = f"<p class='err' id='error'>{_e(error)}</p>" if error else ""
    captcha = ""
    if call.emu.captcha:
        token, image = new_captcha(call)
        captcha = (
            f"<div id='captcha-image'>{image}</div><input type='hidden' name='captchaToken' value='{_e(token)}'>"
            "<label for='captchaAnswer'>Type the characters above</label>"
            "<input id='captchaAnswer' name='captchaAnswer' autocomplete='off' required>"
        )
    body = (
        "<h1>Log in to Puter</h1>" + err
        + f"<form method='post' action='{_e(_form_action(call))}'>"
        "<input type='hidden' name='step' value='login'>"
        "<label for='username'>Username or email</label>"
        f"<input id='username' name='username' autocomplete='username' value='{_e(username)}' required>"
        "<label for='password'>Password</label>"
        "<input id='password' name='password' type='password' autocomplete='current-password' required>"
        + captcha
        + "<button id='login' type='submit'>Log in</button></form>"
    )
    return page("Log in to Puter", body)


def otp_page(call: Call, otp_token: str, error: str = "") -> HTMLResponse:
    err = f"<p class='err' id='error'>{_e(error)}</p>" if error else ""
    body = (
        "<h1>Two-factor authentication</h1>" + err
        + f"<form method='post' action='{_e(_form_action(call))}'>"
        "<input type='hidden' name='step' value='otp'>"
        f"<input type='hidden' name='otp_jwt_token' value='{_e(otp_token)}'>"
        "<label for='code'>Code from your authenticator app</label>"
        "<input id='code' name='code' inputmode='numeric' autocomplete='one-time-code' required>"
        "<button id='verify' type='submit'>Verify</button></form>"
    )
    return page("Two-factor authentication", body)


# --------------------------------------------------------------------------- the pages


def _params(call: Call) -> dict[str, str]:
    return dict(call.request.query_params)


async def _form(call: Call) -> dict[str, str]:
    raw = await call.request.body()
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        return {}


@route("GET", "/", host="root", auth="none")
async def gui(call: Call) -> Response:
    params = _params(call)
    action = params.get("action")
    if action == "authme" and params.get("redirectURL") and not deliverable(params["redirectURL"]):
        return page("Authorization request cancelled", f"<h1>Authorization request cancelled</h1>"
                    f"<p id='error'>{_e(BAD_REDIRECT)}</p>")
    session = session_user(call)
    if session is None:
        return signin_page(call)
    user, claims = session
    if action == "authme" and params.get("redirectURL"):
        return authme_dialog(call, user, claims, params)
    if action == "copyauth":
        return copyauth_dialog(call, claims)
    return page("Puter", f"<h1>Puter</h1><p id='signed-in'>Signed in as {_e(user['username'])}.</p>")


@route("POST", "/", host="root", auth="none", body="raw")
async def gui_post(call: Call) -> Response:
    params, form = _params(call), await _form(call)
    action = params.get("action")
    redirect_url = params.get("redirectURL")
    if action == "authme" and redirect_url and not deliverable(redirect_url):
        return page("Authorization request cancelled", f"<h1>Authorization request cancelled</h1>"
                    f"<p id='error'>{_e(BAD_REDIRECT)}</p>")
    step = form.get("step")
    if step == "login":
        return await _login_step(call, form)
    if step == "otp":
        return await _otp_step(call, form)
    session = session_user(call)
    if session is None:
        return signin_page(call, "Your session has ended; log in again.")
    user, claims = session
    if step == "authme" and action == "authme" and redirect_url:
        return _authme_decision(call, user, claims, params, form)
    if step == "copyauth" and action == "copyauth":
        return _copyauth_create(call, user, claims, form)
    return page("Puter", "<h1>Puter</h1><p class='err' id='error'>Unknown request.</p>", status=400)


async def _login_step(call: Call, form: dict[str, str]) -> Response:
    emu, store = call.emu, call.store
    name, password = form.get("username", "").strip(), form.get("password", "")
    if emu.captcha and not captcha_ok(call, form.get("captchaToken"), form.get("captchaAnswer")):
        return signin_page(call, "Invalid captcha response.", name)
    if not name or not password:
        return signin_page(call, "Username and password are required.", name)
    user = store.user_by_email(name) if "@" in name else store.user_by_name(name)
    if user is None:
        return signin_page(call, "Email not found." if "@" in name else "Username not found.", name)
    if not check_password(password, user["password"]):
        return signin_page(call, "Incorrect password.", name)
    if user["otp_enabled"]:
        otp_token = emu.issue_token(user, "otp", exp=int(time.time()) + 300)
        return otp_page(call, otp_token)
    resp = RedirectResponse(_form_action(call), status_code=303)
    _set_session(call, resp, user)
    return resp


async def _otp_step(call: Call, form: dict[str, str]) -> Response:
    otp_token = form.get("otp_jwt_token", "")
    claims = call.emu._claims_ok(otp_token)
    user = None if claims is None or claims.get("t") != "otp" else call.store.user_by_uuid(str(claims.get("uu")))
    if user is None:
        return signin_page(call, "The sign-in took too long; log in again.")
    if not totp_verify(user["otp_secret"], form.get("code", "")):
        return otp_page(call, otp_token, "Invalid code.")
    resp = RedirectResponse(_form_action(call), status_code=303)
    _set_session(call, resp, user)
    return resp


def authme_dialog(
    call: Call, user: sqlite3.Row, claims: dict[str, Any], params: dict[str, str], error: str = ""
) -> HTMLResponse:
    redirect_url = params["redirectURL"]
    full = params.get("token_type") == "session" and loopback_target(redirect_url)
    err = f"<p class='err' id='error'>{_e(error)}</p>" if error else ""
    if full:
        host = urlsplit(redirect_url).netloc
        intro = (
            "<h1>Full Account Access</h1><p>An app is requesting a token that can do anything you can.</p>"
            "<p id='grade'>Will be shared: A full account session</p>"
        )
        confirm = (
            f"<label for='confirm'>Type {_e(CONFIRM_PHRASE)} below to give {_e(host)} full access to the "
            f"account {_e(user['username'])}.</label><input id='confirm' name='confirm' autocomplete='off'>"
        )
    else:
        intro = (
            "<h1>Authorization Required</h1><p>An app is requesting access to your account.</p>"
            "<p id='grade'>Will be shared: A restricted API token</p>"
            "<p>The app can use the Puter API on your behalf, but cannot change your password or email, "
            "or delete your account.</p>"
        )
        confirm = ""
    body = (
        intro + err
        + f"<p>Redirect Destination</p><p class='dest' id='destination'>{_e(redirect_url)}</p>"
        f"<p>Signed in as <b id='account'>{_e(user['username'])}</b></p>"
        f"<form method='post' action='{_e(_form_action(call))}'>"
        "<input type='hidden' name='step' value='authme'>"
        f"<input type='hidden' name='form_key' value='{_e(form_key(call, claims, 'authme'))}'>"
        + confirm
        + "<button id='approve' name='decision' value='approve' type='submit'>Approve</button> "
        "<button id='deny' name='decision' value='deny' type='submit'>Cancel</button></form>"
    )
    return page("Authorization Required", body)


def _authme_decision(
    call: Call, user: sqlite3.Row, claims: dict[str, Any], params: dict[str, str], form: dict[str, str]
) -> Response:
    if not hmac.compare_digest(form.get("form_key", ""), form_key(call, claims, "authme")):
        return page("Authorization Required", "<p class='err' id='error'>This form has expired; reload the page.</p>",
                    status=403)
    if form.get("decision") != "approve":
        return page(
            "Authorization Cancelled",
            "<h1>Authorization Cancelled</h1><p id='cancelled'>You have declined the authorization request.</p>"
            "<p>The app will not receive access to your account. You can close this window safely.</p>",
        )
    redirect_url = params["redirectURL"]
    full = params.get("token_type") == "session" and loopback_target(redirect_url)
    if full:
        typed = form.get("confirm", "").strip().lower()
        if typed != CONFIRM_PHRASE:
            return authme_dialog(call, user, claims, params, f"Type {CONFIRM_PHRASE} to continue.")
        token = call.emu.issue_token(user, "gui")
    else:
        host = urlsplit(redirect_url.strip()).netloc
        label = f"External app ({host})" if host else "External app"
        token = call.emu.issue_token(user, "t", perm=["full-api-access"], full_access=True, label=label)
    target = return_url(redirect_url, token)
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def copyauth_dialog(call: Call, claims: dict[str, Any], error: str = "") -> HTMLResponse:
    err = f"<p class='err' id='error'>{_e(error)}</p>" if error else ""
    options = "".join(
        f"<option value='{k}'>{label}</option>"
        for k, label in (("", "Never"), ("7d", "7 days"), ("30d", "30 days"), ("90d", "90 days"))
    )
    body = (
        "<h1>Create API Token</h1><p>Create a named token to use the Puter API from scripts, CLIs, agents, and "
        "integrations. It can do anything you can through the API, but cannot change your password or email, "
        "or delete your account.</p>" + err
        + f"<form method='post' action='{_e(_form_action(call))}'>"
        "<input type='hidden' name='step' value='copyauth'>"
        f"<input type='hidden' name='form_key' value='{_e(form_key(call, claims, 'copyauth'))}'>"
        "<label for='label'>Label</label>"
        "<input id='label' name='label' maxlength='64' placeholder='e.g. My CLI, GitHub Actions'>"
        f"<label for='expiry'>Expiration</label><select id='expiry' name='expiry'>{options}</select>"
        "<button id='create' type='submit'>Create token</button></form>"
    )
    return page("Create API Token", body)


def _copyauth_create(call: Call, user: sqlite3.Row, claims: dict[str, Any], form: dict[str, str]) -> Response:
    if not hmac.compare_digest(form.get("form_key", ""), form_key(call, claims, "copyauth")):
        return page("Create API Token", "<p class='err' id='error'>This form has expired; reload the page.</p>",
                    status=403)
    label = form.get("label", "").strip()[:64]
    if not label:
        return copyauth_dialog(call, claims, "Please enter a label for this token.")
    expiry = form.get("expiry", "")
    if expiry not in EXPIRY:
        return copyauth_dialog(call, claims, "Unknown expiration.")
    extra: dict[str, Any] = {"perm": ["full-api-access"], "full_access": True, "label": label}
    if EXPIRY[expiry]:
        extra["exp"] = int(time.time()) + int(expiry[:-1]) * 86400
    token = call.emu.issue_token(user, "t", **extra)
    body = (
        "<h1>API Token</h1><p class='warn'>Copy this token now — it won’t be shown again. Keep it secret; anyone "
        "with it can access your account’s data through the API.</p>"
        f"<input id='token' class='token-input' readonly value='{_e(token)}'>"
    )
    return page("API Token", body)
