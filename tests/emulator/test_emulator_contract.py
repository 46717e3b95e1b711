"""Replay every recorded exchange (/work/shared/puter-api/exchanges) against the emulator.

Each recorded session is replayed in order against a fresh in-process emulator (the
real server was reset between sessions too).  Recorded usernames are mapped onto the
emulator's users (``admin`` is the start-up user; temp users get random names),
tokens by the record's ``auth`` field, and placeholders (``<password>``, ``<code>``)
by what the emulator knows.  Each record then has to answer with the recorded
status, content type, and a body with the same keys and value types; values are
compared where they are deterministic (not uuids, times, tokens, lorem ipsum).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from puterfs.emulator import Emulator
from puterfs.emulator.auth import totp

EXCHANGES = Path("/work/shared/puter-api/exchanges")
HOSTS = {"api": "api.puter.localhost:4100", "root": "puter.localhost:4100"}
ADMIN_PW = "adminpass1"
DRIVERS_PRESENT = importlib.util.find_spec("puterfs.emulator.drivers") is not None

# Records the emulator deliberately answers differently, each with its reason.  All are
# driver calls whose recorded answer comes from the recording server's provider setup
# (no AI keys at all, or dummy keys without internet); the emulator's drivers have
# working emulated providers instead (see puterfs/emulator/drivers.py).
_NO_PROVIDER = "recorded on a server without this AI provider; the emulator has an emulated one"
_NO_INTERNET = "recorded with a dummy provider key and no internet (500); the emulator's provider works"
# Listings whose order depends on which requests of a parallel group the server admitted and
# finished first: the entries must match, in any order (sorted by name on both sides).
UNORDERED: dict[tuple[str, int], str] = {
    ("limits", 22): "the two /batch uploads admitted from the parallel group of six finish in either order",
}

SKIP: dict[tuple[str, int], str] = {
    ("ai", 9): "the emulator serves gpt-4o by substitution (gpt-4o-mini) to test strict_model; recorded 400",
    ("ai", 12): _NO_PROVIDER,
    ("ai", 13): _NO_PROVIDER,
    ("ai", 16): _NO_PROVIDER,
    # with an image provider configured the server answers test_mode without `model` with the sample (ai3 seq 20)
    ("ai", 17): _NO_PROVIDER,
    ("ai2", 2): _NO_INTERNET,
    ("ai2", 7): _NO_INTERNET,
    ("ai3", 15): _NO_PROVIDER,
    # The recording server's storage (fauxqs) enforced neither the signed Content-Length nor
    # the URL expiry; the emulator's storage URLs do, as real S3 does (RECORDED-2.md §1).
    ("presign", 39): "fauxqs accepted 6 bytes on a URL signed for 5; the emulator answers 403 like S3",
    ("presign", 40): "follows presign 39 (the emulator kept the 5-byte declared size: its PUT was refused)",
    ("presign", 42): "follows presign 40 (no completed d.txt to read)",
    ("presign", 108): "fauxqs accepted a PUT on an expired URL; the emulator answers 403 like S3",
}

# Emulator clock moves before a record (seconds): the recording waited in real time.
ADVANCE: dict[tuple[str, int], float] = {
    ("presign", 108): 62.0,  # "recorded ~62 s after startWrite with expiresInSeconds 5 (clamped to 60)"
    ("dav", 66): 32.0,  # "PUT without token 32 s after LOCK"
}
# Recorded users of the second recording (RECORDED-2.md): the session's own user is mapped
# onto the emulator's admin; the other one (exbob, when exalice's session uses "exbob's token")
# is a second user of the same name.
SECOND_USERS = {"presign.jsonl": "exalice", "fs-extra.jsonl": "exalice", "limits.jsonl": "exbob",
                "kv.jsonl": "exalice", "apps.jsonl": "exalice"}
# Sessions replayed as a real user of the recorded name (same name length: the recorded
# Content-Length of a PROPFIND body holds the username), with its password, and the other users.
OWN_USERS: dict[str, tuple[str, tuple[str, ...]]] = {"dav": ("exalice", ("exbob",))}
# Request headers sent as recorded (WebDAV verbs), with recorded names, uids and lock tokens mapped.
DAV_HEADERS = ("access-control-request-method", "depth", "destination", "overwrite", "if", "lock-token", "timeout", "content-type")
DAV_ETAG_RE = re.compile(r'^"([0-9a-f-]{36})-(\d+)"$')
_DAV_ETAG_IN_XML = re.compile(r"<D:href>([^<]*)</D:href>(?:(?!</D:response>).)*?<D:getetag>\"([0-9a-f-]{36})-", re.S)
# Sessions whose user shows its signup details (email, last activity) on /whoami.
SIGNED_UP_SESSIONS = {"apps"}
# Size placeholders of big recorded bodies: "<1025 k characters>", "<342 x U+20AC>".
_REPEAT_RE = re.compile(r"^<(\d+) (\S) characters>$")
_REPEAT_CODEPOINT_RE = re.compile(r"^<(\d+) x U\+([0-9A-F]{4,6})>$")
PATTERN = bytes(range(251)) * (10 * 1024 * 1024 // 251 + 2)  # byte i of a generated file = i % 251
PART = 10 * 1024 * 1024

# Sessions recorded as a user that never logs in during the session (a GUI token made
# beforehand): replayed as the emulator's start-up user.
SESSION_USERS: dict[str, tuple[str, ...]] = {"meta": ("exalice",)}

# Keys whose values differ per instance (compared by type only).
VOLATILE = {
    "id", "uid", "uuid", "parent_id", "parent_uid", "parentUid", "created", "modified", "accessed",
    "created_ts", "timestamp", "deploy_timestamp", "token", "otp_jwt_token", "signature", "expires", "url",
    "read_url", "write_url", "metadata_url", "secret", "codes", "human_readable_age", "last_activity_ts",
    "capacity", "used", "fsentry_accessed", "fsentry_modified", "fsentry_created", "app_uid", "cursor",
    "icon", "directories", "contentHashSha256", "expiresAt", "shortcut_to", "shortcutTo",
}
ID_KEYS = {"uid", "id", "uuid", "sessionId", "multipartUploadId", "uploadId"}
UUID_RE = re.compile(r"^(app-)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def load_records() -> dict[str, list[dict[str, Any]]]:
    sessions: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(EXCHANGES.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                rec["_file"] = f.name
                sessions.setdefault(rec["session"], []).append(rec)
    for recs in sessions.values():
        recs.sort(key=lambda r: r["seq"])
    return sessions


SESSIONS = load_records() if EXCHANGES.exists() else {}
# socket.io long-polls need their session ids mapped: replayed frame by frame in test_emulator_socket.py
FRAME_REPLAYED = {"socket"}


def is_driver_record(rec: dict[str, Any]) -> bool:
    return rec["path"].startswith(("/drivers/", "/puterai/"))


class Replayer:
    def __init__(self, emu: Emulator, client: httpx.AsyncClient):
        self.emu = emu
        self.client = client
        self.names: dict[str, str] = {}  # recorded username -> ours
        self.passwords = {"admin": ADMIN_PW}
        self.tokens: dict[str, str] = {}
        self.by_user_tokens: dict[str, str] = {}
        self.totp_secret: str | None = None
        self.uids: dict[str, str] = {}
        self.storage: dict[str, str] = {}  # recorded storage path+query -> our storage URL

    def map_str(self, s: str) -> str:
        for old, new in self.names.items():
            s = s.replace(old, new)
        for old, new in self.uids.items():
            s = s.replace(old, new)
        return s

    def learn_uids(self, want: Any, got: Any) -> None:
        """Recorded uid -> our uid, from a recorded response and ours side by side."""
        if isinstance(want, dict) and isinstance(got, dict):
            for k, w in want.items():
                g = got.get(k)
                if k in ID_KEYS and isinstance(w, str) and isinstance(g, str) and UUID_RE.match(w):
                    self.uids.setdefault(w, g)
                elif k == "url" and isinstance(w, str) and isinstance(g, str) and "/puter-local/" in w:
                    # a presigned storage URL: the recorded path+query -> ours
                    self.storage["/" + w.split("/", 3)[3]] = g
                elif k in ("uid", "id", "uuid") and isinstance(w, str) and isinstance(g, str) and UUID_RE.match(w):
                    self.uids.setdefault(w, g)
                elif k == "cursor" and isinstance(w, str) and isinstance(g, str):
                    self.uids.setdefault(w, g)  # a later request pages on with the recorded cursor
                else:
                    self.learn_uids(w, g)
        elif isinstance(want, list) and isinstance(got, list):
            for w, g in zip(want, got, strict=False):
                self.learn_uids(w, g)

    def map_obj(self, o: Any) -> Any:
        if isinstance(o, str):
            m = _REPEAT_RE.match(o)
            if m:
                return m.group(2) * int(m.group(1))
            m = _REPEAT_CODEPOINT_RE.match(o)
            if m:
                return chr(int(m.group(2), 16)) * int(m.group(1))
            return self.map_str(o)
        if isinstance(o, list):
            return [self.map_obj(x) for x in o]
        if isinstance(o, dict):
            return {self.map_str(k): self.map_obj(v) for k, v in o.items()}
        return o

    def token_for(self, rec: dict[str, Any]) -> str | None:
        auth = rec["auth"]
        if auth == "none":
            return None
        if auth == "invalid":
            return "xyz.abc.def"
        if auth == "gui":
            note = rec.get("note", "")
            if "exbob's token" in note:
                return self.tokens.get("exbob")
            if rec["session"] == "signup":
                key = "temp" if "temp user" in note or "temp" in rec["name"] else "email"
                return self.by_user_tokens.get(key)
            return self.tokens.get("gui")
        return self.tokens.get(auth)

    def fill_placeholders(self, rec: dict[str, Any], body: Any) -> Any:
        if not isinstance(body, dict):
            return body
        body = dict(body)
        path = rec["path"]
        if body.get("password") == "<password>":
            recorded_user = body.get("username") or body.get("email", "").split("@")[0]
            if "wrong" in rec["name"]:
                body["password"] = "definitely-wrong-pw"
            else:
                body["password"] = self.passwords.setdefault(recorded_user, recorded_user + "-pass1")
        if body.get("code") == "<code>":
            if path == "/confirm-email":
                user = self.emu.store.user_by_name(self.current_email_user or "")
                body["code"] = user["email_code"] if user else "x"
            else:
                body["code"] = totp(self.totp_secret or "AAAA")
        if body.get("token") == "<token>" and path.startswith("/login/"):
            body["token"] = self.tokens.get("otp", "")
        return body

    current_email_user: str | None = None

    def basic_credentials(self, rec: dict[str, Any]) -> str:
        """``user:password`` for the record's ``basic:*`` auth (RECORDED-2.md format additions)."""
        kind = rec["auth"][len("basic:"):]
        user = next((o for o in ("exalice", "exbob") if o in self.names), None) or "exalice"
        mine = self.names.get(user, user)
        if kind == "password":
            return f"{mine}:{self.passwords.get(mine) or self.passwords.setdefault(user, user + '-pass1')}"
        if kind == "wrong-password":
            return f"{mine}:definitely-wrong-pw"
        if kind == "unknown-user":
            return "nosuchuser-xyz:whatever-pw1"
        if kind == "-token":
            return "-token:" + (self.tokens.get("gui") or "")
        if kind == "-token-invalid":
            return "-token:garbage"
        m = re.fullmatch(r"-token\((.+)\)", kind)
        return "-token:" + (self.tokens.get(m.group(1), "") if m else "")

    def learn_headers(self, rec: dict[str, Any], resp: httpx.Response) -> None:
        """WebDAV names entries and locks in headers: learn recorded uid/lock token -> ours."""
        want = rec.get("response_headers") or {}
        m, g = DAV_ETAG_RE.match(want.get("ETag", "")), DAV_ETAG_RE.match(resp.headers.get("etag", ""))
        if m and g and resp.status_code == rec["status"]:
            self.uids.setdefault(m.group(1), g.group(1))
        if rec["response_kind"] == "text" and "<D:multistatus" in (rec.get("response") or ""):
            # the uid of each listed entry, from its ETag, by href
            got_tags = {m.group(1): m.group(2) for m in _DAV_ETAG_IN_XML.finditer(self.map_str(resp.text))}
            for m in _DAV_ETAG_IN_XML.finditer(self.map_str(rec["response"])):
                if m.group(1) in got_tags:
                    self.uids.setdefault(m.group(2), got_tags[m.group(1)])
        lt_want, lt_got = want.get("Lock-Token"), resp.headers.get("lock-token")
        if lt_want and lt_got:
            self.uids.setdefault(lt_want.strip("<>"), lt_got.strip("<>"))

    def build_request(self, rec: dict[str, Any]) -> dict[str, Any]:
        if rec["host"] == "s3":  # a PUT to a presigned storage URL: no Puter auth, raw bytes
            return {"url": self.storage.get(rec["path"], "http://unknown.invalid" + rec["path"]),
                    "content": raw_body(rec)}
        sent = rec.get("request_headers") or {}
        # "site"/"workers" records carry their Host header; "dav" is dav.<domain>
        host = HOSTS.get(rec["host"]) or self.map_str(sent.get("Host") or f"{rec['host']}.puter.localhost:4100")
        headers = {"Host": host}
        for k, v in sent.items():
            if k.lower() in ("origin", "range", "if-none-match", "if-modified-since"):
                headers[k] = v
        if rec["host"] == "dav":
            for k, v in sent.items():
                if k.lower() in DAV_HEADERS:
                    headers[k] = self.map_str(v)
        if rec["auth"].startswith("basic:"):
            headers["Authorization"] = "Basic " + base64.b64encode(self.basic_credentials(rec).encode()).decode()
            tok = None
        else:
            tok = self.token_for(rec)
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        kw: dict[str, Any] = {"headers": headers}
        req = self.map_obj(rec.get("request"))
        if isinstance(req, str):  # a raw text body (WebDAV XML, a DAV PUT)
            kw["content"] = req.encode()
            return kw
        if tok and rec["path"] == "/drivers/call" and isinstance(req, dict):
            # puter.js puts the token in the body (auth_token) and workers args (authorization)
            req = json.loads(json.dumps(req).replace('"<token>"', json.dumps(tok)))
        if sent.get("Content-Type") == "text/plain;actually=json" and isinstance(req, dict):
            headers["Content-Type"] = "text/plain;actually=json"
            kw["content"] = json.dumps(req).encode()
            return kw
        if isinstance(req, dict) and "$multipart" in req:
            files = []
            for part in req["$multipart"]:
                if part["name"] == "file":
                    if "text" in part:
                        data = part["text"].encode()
                    else:  # the 5 MiB upload: byte i = (i*7) % 251 (see its note)
                        data = bytes((i * 7) % 251 for i in range(part["size"]))
                    files.append(("file", (part["filename"], data, part.get("content_type"))))
                else:
                    files.append((part["name"], (None, json.dumps(part["value"]))))
            kw["files"] = files
        elif req is None and rec["method"] == "POST" and rec["path"] == "/fs/write":
            # body not in the log (inferred): a write into the caller's own home
            kw["json"] = {"fileMetadata": {"path": f"/{self.names.get('amazing_bed_620107')}/x.txt", "size": 1},
                          "fileContent": "x", "encoding": "utf8"}
        elif req is not None:
            kw["json"] = self.fill_placeholders(rec, req)
        return kw

    def learn(self, rec: dict[str, Any], kw: dict[str, Any], resp: httpx.Response) -> None:
        """Pick up users, tokens and secrets from a response, as a client would."""
        try:
            body = resp.json()
        except ValueError:
            return
        path = rec["path"]
        rec_resp = rec.get("response") or {}
        if resp.status_code == rec["status"]:
            self.learn_uids(rec_resp, body)
            want_r = rec_resp.get("result") if isinstance(rec_resp, dict) else None
            got_r = body.get("result") if isinstance(body, dict) else None
            if path == "/drivers/call" and isinstance(want_r, dict) and isinstance(got_r, dict):
                # a deduplicated app name ends in 4 random characters
                want_name, got_name = self.map_str(str(want_r.get("name"))), str(got_r.get("name"))
                if "name" in want_r and want_name != got_name:
                    self.names[want_name] = got_name
        if path in ("/login", "/login/otp", "/signup") and isinstance(body, dict):
            if body.get("next_step") == "otp":
                self.tokens["otp"] = body["otp_jwt_token"]
            if body.get("token"):
                self.tokens["gui"] = body["token"]
                recorded = (rec_resp.get("user") or {}).get("username")
                ours = body["user"]["username"]
                if recorded and recorded != ours:
                    self.names[recorded] = ours
                if path == "/signup":
                    self.by_user_tokens["temp" if body["user"]["is_temp"] else "email"] = body["token"]
                    if not body["user"]["is_temp"]:
                        self.current_email_user = ours
                if rec["session"] == "signup" and path == "/signup" and body["user"]["is_temp"]:
                    self.names.setdefault("amazing_bed_620107", ours)
        if path == "/auth/configure-2fa/setup" and isinstance(body, dict) and "secret" in body:
            self.totp_secret = body["secret"]
        if path == "/auth/create-access-token" and isinstance(body, dict) and "token" in body:
            perms = kw["json"]["permissions"]
            self.tokens["access_token:" + ",".join(perms)] = body["token"]
        if path == "/auth/get-user-app-token" and isinstance(body, dict) and "token" in body:
            self.tokens["app_token"] = body["token"]


def raw_body(rec: dict[str, Any]) -> bytes:
    """The bytes of a ``$raw`` request: its text, or the generated file (byte i = i % 251)
    at the part's offset when the record only describes them."""
    raw = rec["request"]["$raw"]
    size = raw["size"]
    text = raw.get("text")
    if isinstance(text, str) and "\ufffd" not in text:
        return text.encode()
    m = re.search(r"[?&]partNumber=(\d+)", rec["path"])
    offset = (int(m.group(1)) - 1) * PART if m else 0
    start = offset % 251
    return PATTERN[start : start + size]


def compare(rec: dict[str, Any], resp: httpx.Response, rp: Replayer, loose_values: bool) -> list[str]:
    problems: list[str] = []
    if resp.status_code != rec["status"]:
        problems.append(f"status {resp.status_code} != {rec['status']}: {resp.text[:300]}")
        return problems
    want_ct = (rec.get("content_type") or "").split(";")[0].strip()
    got_ct = resp.headers.get("content-type", "").split(";")[0].strip()
    if want_ct and want_ct != got_ct:
        problems.append(f"content-type {got_ct!r} != {want_ct!r}")
    kind = rec.get("response_kind")
    truncated = bool(rec.get("response_truncated"))
    if kind == "json":
        try:
            got = resp.json()
        except ValueError:
            return problems + [f"not JSON: {resp.text[:200]}"]
        want = rp.map_obj(rec["response"])
        if (rec.get("session"), rec.get("seq")) in UNORDERED and isinstance(want, list) and isinstance(got, list):
            want, got = (sorted(x, key=lambda e: str(e.get("name")) if isinstance(e, dict) else "") for x in (want, got))
        problems += diff(want, got, "$", truncated, loose_values)
    elif kind == "ndjson":
        lines = [json.loads(x) for x in resp.text.splitlines() if x.strip()]
        if not lines:
            problems.append("empty NDJSON stream")
        elif not truncated and [x.get("type") for x in lines][-1:] != [rec["response"][-1].get("type")]:
            problems.append(f"last NDJSON line type {lines[-1].get('type')!r} != {rec['response'][-1].get('type')!r}")
    elif kind == "bytes" and "response_base64" in rec:
        if resp.content != base64.b64decode(rec["response_base64"]):
            problems.append(f"bytes differ: {resp.content[:40]!r}")
    elif kind == "text" and rec["host"] == "dav":
        problems += dav_text_problems(rec, resp, rp)
    elif kind == "empty" and resp.content:
        problems.append(f"expected an empty body, got {resp.content[:60]!r}")
    recorded_headers = rec.get("response_headers") or {}
    if "strict-transport-security" in recorded_headers:
        # every header the server sent (limits.jsonl): the point is what is absent
        for name in resp.headers:
            if name.lower() == "retry-after" or name.lower().startswith(("ratelimit", "x-ratelimit")):
                problems.append(f"header {name} sent; the server sends none")
        recorded_headers = {k: v for k, v in recorded_headers.items()
                            if k in ("x-needs-upgrade", "content-disposition")
                            or (k == "etag" and not v.startswith("W/"))}
    for name, value in recorded_headers.items():
        got_v = resp.headers.get(name)
        if got_v is None:
            problems.append(f"missing header {name}")
        elif name == "ETag" and DAV_ETAG_RE.match(value):
            # "<uid>-<mtime seconds>": the uid must be ours for the recorded one, the time is volatile
            m, g = DAV_ETAG_RE.match(value), DAV_ETAG_RE.match(got_v)
            if g is None or rp.map_str(m.group(1)) != g.group(1):
                problems.append(f"header {name}: {got_v!r} != {value!r} (uid mapped)")
        elif name in ("Content-Length", "Content-Range", "Content-Disposition", "content-disposition") or (
            name.lower() == "etag" and not value.startswith("W/")
        ):
            if got_v != rp.map_str(value):
                problems.append(f"header {name}: {got_v!r} != {value!r}")
    if rec.get("response_headers") and "Accept-Ranges" not in rec["response_headers"] and "accept-ranges" in resp.headers:
        problems.append("Accept-Ranges sent, the server does not")
    return problems


# WebDAV XML: volatile values (times, the seconds of an ETag) are compared by shape
_DAV_VOLATILE = [
    (re.compile(r"<D:getlastmodified>[^<]*</D:getlastmodified>"), "<D:getlastmodified>DATE</D:getlastmodified>"),
    (re.compile(r"<D:creationdate>[^<]*</D:creationdate>"), "<D:creationdate>DATE</D:creationdate>"),
    (re.compile(r'("[0-9a-f-]{36})-\d+"'), r'\1-SECONDS"'),
]
# Records whose listing also holds what other recorded sessions made on the same account
DAV_FOREIGN_ENTRIES = {6: "the recorded home also held presign/, site/, site2/, sock/, worker.js of other sessions"}
_DAV_BLOCK = re.compile(r"  <D:response>\n    <D:href>([^<]*)</D:href>.*?</D:response>", re.S)


def _dav_norm(body: str) -> str:
    for rx, rep in _DAV_VOLATILE:
        body = rx.sub(rep, body)
    return body


def dav_text_problems(rec: dict[str, Any], resp: httpx.Response, rp: Replayer) -> list[str]:
    """A DAV answer's text as recorded: error texts exactly, XML byte for byte but for the
    volatile values (uids and lock tokens mapped)."""
    want, got = rp.map_str(rec["response"]), resp.text
    if "xml" not in (rec.get("content_type") or ""):
        return [] if got == want else [f"text {got!r} != {want!r}"]
    want, got = _dav_norm(want), _dav_norm(got)
    if rec["seq"] not in DAV_FOREIGN_ENTRIES or rec["session"] != "dav":
        return [] if got == want else [f"XML differs:\n--- got\n{got}\n--- recorded\n{want}"]
    # only the entries this replay can have: each of ours must be the recorded one, in order
    want_blocks = {m.group(1): m.group(0) for m in _DAV_BLOCK.finditer(want)}
    got_blocks = [(m.group(1), m.group(0)) for m in _DAV_BLOCK.finditer(got)]
    problems = [f"entry {h} not recorded" for h, _ in got_blocks if h not in want_blocks]
    problems += [f"entry {h} differs:\n{b}\n--- recorded\n{want_blocks[h]}"
                 for h, b in got_blocks if h in want_blocks and b != want_blocks[h]]
    order = [h for h in want_blocks if h in dict(got_blocks)]
    if [h for h, _ in got_blocks if h in want_blocks] != order:
        problems.append("entries out of the recorded order")
    return problems


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def diff(want: Any, got: Any, where: str, truncated: bool, loose: bool, key: str = "") -> list[str]:
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{where}: {_jtype(got)} != object"]
        out = []
        missing = [k for k in want if k not in got]
        extra = [] if truncated else [k for k in got if k not in want]
        if missing:
            out.append(f"{where}: missing keys {missing}")
        if extra:
            out.append(f"{where}: extra keys {extra}")
        for k in want:
            if k in got:
                out += diff(want[k], got[k], f"{where}.{k}", truncated, loose, k)
        return out
    if isinstance(want, list):
        if not isinstance(got, list):
            return [f"{where}: {_jtype(got)} != array"]
        if key in VOLATILE:
            return []
        if loose:
            # driver lists (models, voices, engines) depend on the configured providers:
            # compare the element shape only
            return diff(want[0], got[0], f"{where}[0]", truncated, loose, key) if want and got else []
        if not truncated and len(want) != len(got):
            return [f"{where}: {len(got)} items != {len(want)}"]
        out = []
        for i, (w, g) in enumerate(zip(want, got, strict=False)):
            out += diff(w, g, f"{where}[{i}]", truncated, loose, key)
        return out
    # scalars
    if want is None or got is None:
        if (want is None) != (got is None):
            if key in VOLATILE and not loose:
                return [f"{where}: {got!r} vs recorded {want!r}"]
            return [f"{where}: {got!r} vs recorded {want!r}"]
        return []
    if _jtype(want) != _jtype(got):
        return [f"{where}: type {_jtype(got)} != {_jtype(want)}"]
    if loose or key in VOLATILE:
        return []
    if isinstance(want, str):
        if want in ("<token>", "<code>", "<secret>", "<password>") or UUID_RE.match(want):
            return []
        if truncated and want.endswith("\u2026"):
            return [] if got.startswith(want[:-1]) else [f"{where}: {got[:60]!r} !~ {want[:60]!r}"]
    if want != got:
        return [f"{where}: {got!r} != {want!r}"]
    return []


async def _replay_session(session: str, recs: list[dict[str, Any]], tmp: Path) -> dict[int, list[str]]:
    emu = Emulator(tmp / session, username="admin", password=ADMIN_PW)
    second = next((SECOND_USERS[rec["_file"]] for rec in recs if rec["_file"] in SECOND_USERS), None)
    results: dict[int, list[str]] = {}
    transport = httpx.ASGITransport(app=emu.app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.puter.localhost", timeout=30) as client:
        rp = Replayer(emu, client)
        # sessions that do not log in themselves used the admin's GUI token
        rp.tokens["gui"] = emu.issue_token(emu.store.user_by_name("admin"), "gui")
        for recorded in SESSION_USERS.get(session, ()):
            rp.names[recorded] = "admin"
        if second:
            rp.names[second] = "admin"
            if session in SIGNED_UP_SESSIONS:
                admin = emu.store.user_by_name("admin")
                emu.store.update_user(admin["id"], email="admin@example.com", email_confirmed=1, via_signup=1)
            if second != "exbob":
                bob = emu.store.create_user("exbob", "exbob-pass1")
                emu.store.update_user(bob["id"], email_confirmed=1)
                rp.tokens["exbob"] = emu.issue_token(emu.store.user_by_name("exbob"), "gui")
        if session in OWN_USERS:
            own, others = OWN_USERS[session]
            for name in (own, *others):
                pw = rp.passwords.setdefault(name, name + "-pass1")
                u = emu.store.create_user(name, pw)
                emu.store.update_user(u["id"], email=f"{name}@example.com", email_confirmed=1)
            rp.tokens["gui"] = emu.issue_token(emu.store.user_by_name(own), "gui")
        for rec in recs:
            emu.clock_offset += ADVANCE.get((session, rec["seq"]), 0.0)
            if (session, rec["seq"]) in SKIP:
                continue
            try:
                kw = rp.build_request(rec)
                if "json" in kw and kw["json"] is None:
                    kw.pop("json")
                url = kw.pop("url", None) or rp.map_str(rec["path"])
                resp = await client.request(rec["method"], url, **kw)
            except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
                results[rec["seq"]] = [f"transport error: {exc!r}"]
                continue
            client.cookies.clear()  # recorded without sending cookies back
            rp.learn_headers(rec, resp)
            rp.learn(rec, kw, resp)
            results[rec["seq"]] = compare(rec, resp, rp, loose_values=is_driver_record(rec))
    emu.store.close()
    return results


# --- limits.jsonl: replayed over real HTTP against a free-tier emulator -------------------------
#
# Its records need what an in-process replay cannot give: requests in flight at once (the
# "parallel #k of N" groups), hundreds of calls before a record, seconds passing, and bodies the
# record only describes.  Parallel reads are held in flight by not reading their 20 MiB bodies
# until every answer of the group has come; parallel uploads by holding the rest of their body
# until the emulator has answered the others.

LIMITS_PRELUDE = {  # seq -> (method, path, json, count): the calls the record's note describes
    21: ("POST", "/readdir", {"path": "/exbob/limits"}, 60),
    23: ("POST", "/search", {"query": "p1"}, 30),
}
LIMITS_ADVANCE = {22: 10.5}  # "readdir 10.5 s later"
_PLACEHOLDER = re.compile(r"^<(\d+) (x characters|chars of base64, omitted)>$")
GROUP = re.compile(r"^(.*), parallel #(\d+) of (\d+)$")


def _fill(o: Any) -> Any:
    """Regenerate bodies the record describes by size (``"<N x characters>"``, base64 of N chars)."""
    if isinstance(o, str):
        m = _PLACEHOLDER.match(o)
        if not m:
            return o
        n = int(m.group(1))
        return "x" * n if m.group(2) == "x characters" else base64.b64encode(bytes(n // 4 * 3)).decode()
    if isinstance(o, list):
        return [_fill(x) for x in o]
    if isinstance(o, dict):
        return {k: _fill(v) for k, v in o.items()}
    return o


class _Sparse:
    """A file-like body of ``size`` bytes read in chunks (a 100 MiB part never sits in memory):
    zeros, or with ``pattern`` the recorded generator (byte i = i % 251).  With a ``gate``,
    everything after the first chunk waits for it."""

    def __init__(self, size: int, gate: Any = None, pattern: bool = False):
        self.left = size
        self.pos = 0
        self.gate = gate
        self.pattern = pattern
        self.sent = False

    def read(self, n: int = -1) -> bytes:
        if self.sent and self.gate is not None:
            self.gate.wait(30)
        self.sent = True
        n = self.left if n is None or n < 0 else min(n, self.left, 1 << 20)
        self.left -= n
        start = self.pos % 251
        self.pos += n
        return PATTERN[start : start + n] if self.pattern else bytes(n)


def _limits_request(rec: dict[str, Any], rp: Replayer, port: int, gate: Any = None) -> httpx.Request:
    headers = {"Host": f"api.puter.localhost:{port}", "Authorization": f"Bearer {rp.tokens['gui']}"}
    sent = rec.get("request_headers") or {}
    req = rec.get("request")
    url = f"http://127.0.0.1:{port}{rp.map_str(rec['path'])}"
    if isinstance(req, dict) and "$multipart" in req:
        files = []
        for part in req["$multipart"]:
            if "size" in part:
                body = _Sparse(part["size"], gate, pattern="i % 251" in rec.get("note", ""))
                files.append((part["name"], (part["filename"], body, part.get("content_type"))))
            else:
                value = part["value"]
                value = value if isinstance(value, str) else json.dumps(_fill(rp.map_obj(value)))
                files.append((part["name"], (None, value)))
        return httpx.Request(rec["method"], url, headers=headers, files=files)
    ctype = sent.get("Content-Type")
    if req is None and rec["method"] == "POST":
        return httpx.Request("POST", url, headers={**headers, "Content-Type": ctype or "application/json"},
                             content=b"{not json")
    if req is None:
        return httpx.Request(rec["method"], url, headers=headers)
    filled = _fill(rp.map_obj(req))
    meta = filled.get("fileMetadata") if isinstance(filled, dict) else None
    if isinstance(meta, dict) and filled.get("encoding") == "base64" and isinstance(meta.get("size"), int):
        filled["fileContent"] = base64.b64encode(bytes(meta["size"])).decode()  # the declared size exactly
    body = json.dumps(filled)
    return httpx.Request(rec["method"], url, headers={**headers, "Content-Type": ctype or "application/json"},
                         content=body.encode())


def _upload_name(rec: dict[str, Any]) -> str | None:
    req = rec.get("request")
    if isinstance(req, dict) and "$multipart" in req:
        for part in req["$multipart"]:
            if part.get("filename"):
                return part["filename"]
    return None


def _replay_limits(recs: list[dict[str, Any]], tmp: Path) -> dict[int, list[str]]:
    import threading

    from puterfs.emulator.testing import EmulatorProcess, local_http

    results: dict[int, list[str]] = {}
    # no kept-alive connections: the emulator closes idle ones after 5 s, a reuse could race it
    with EmulatorProcess(tmp / "limits", username="exbob", password="exbob-pass1", tier="free") as emu, \
            local_http.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        rp = Replayer(None, http)  # type: ignore[arg-type]
        rp.tokens["gui"] = emu.token
        i = 0
        while i < len(recs):
            rec = recs[i]
            m = GROUP.match(rec["name"])
            if m is None:
                seq = rec["seq"]
                if seq in LIMITS_ADVANCE:
                    emu.advance_clock(LIMITS_ADVANCE[seq])
                if seq in LIMITS_PRELUDE:
                    method, path, body, count = LIMITS_PRELUDE[seq]
                    for _ in range(count):
                        http.request(method, f"{emu.url}{rp.map_str(path)}", json=rp.map_obj(body),
                                     headers={"Authorization": f"Bearer {emu.token}",
                                              "Host": f"api.puter.localhost:{emu.port}"}).raise_for_status()
                resp = http.send(_limits_request(rec, rp, emu.port))
                results[seq] = compare(rec, resp, rp, loose_values=False)
                rp.learn_uids(rec.get("response"), resp.json() if "json" in resp.headers.get("content-type", "")
                              else None)
                i += 1
                continue
            group = [r for r in recs[i:] if (g := GROUP.match(r["name"])) and g.group(1) == m.group(1)]
            i += len(group)
            refused = sum(1 for r in group if r["status"] == 429)
            gate = threading.Event()
            emu.clear_log()
            answers: dict[int, httpx.Response] = {}
            errors: dict[int, str] = {}

            def fire(r: dict[str, Any], gate: threading.Event, answers: dict[int, httpx.Response],
                     errors: dict[int, str]) -> None:
                try:
                    upload = r["method"] == "POST" and r["path"] == "/batch"
                    req = _limits_request(r, rp, emu.port, gate if upload else None)
                    answers[r["seq"]] = http.send(req, stream=True)
                except httpx.HTTPError as exc:
                    errors[r["seq"]] = repr(exc)

            threads = [threading.Thread(target=fire, args=(r, gate, answers, errors)) for r in group]
            for t in threads:
                t.start()
            # let the held uploads go on once the emulator has answered the ones it refuses
            for _ in range(400):
                if sum(1 for e in emu.log() if e["status"] == 429) >= refused or len(answers) == len(group):
                    break
                threading.Event().wait(0.05)
            gate.set()
            for t in threads:
                t.join(120)
            for r in group:
                if r["seq"] in errors:
                    results[r["seq"]] = [f"transport error: {errors[r['seq']]}"]
                    continue
            # the same statuses as recorded, in any order (which request came first is chance):
            # a record is compared with its own answer when the statuses agree, else with another
            # answer of its status, by shape only (that one was for another file name)
            got = sorted(a.status_code for a in answers.values())
            want = sorted(r["status"] for r in group)
            for a in answers.values():
                a.read()
                a.close()
            spare: dict[int, list[httpx.Response]] = {}
            for r in group:
                a = answers.get(r["seq"])
                if a is not None and a.status_code != r["status"]:
                    spare.setdefault(a.status_code, []).append(a)
            # later records list the files the admitted uploads wrote: recorded name -> ours
            moved = sorted(r["seq"] for r in group if r["status"] == 200 and r["seq"] in answers
                           and answers[r["seq"]].status_code != 200)
            took = sorted(r["seq"] for r in group if r["status"] != 200 and r["seq"] in answers
                          and answers[r["seq"]].status_code == 200)
            for want_seq, got_seq in zip(moved, took, strict=False):
                wname = _upload_name(next(r for r in group if r["seq"] == want_seq))
                gname = _upload_name(next(r for r in group if r["seq"] == got_seq))
                if wname and gname:
                    rp.names[wname] = gname
            for r in group:
                if r["seq"] in results:
                    continue
                if got != want:
                    results[r["seq"]] = [f"group statuses {got} != recorded {want}"]
                elif answers[r["seq"]].status_code == r["status"]:
                    results[r["seq"]] = compare(r, answers[r["seq"]], rp, loose_values=False)
                    if r["status"] == 200 and r.get("response_kind") == "json":
                        rp.learn_uids(r.get("response"), answers[r["seq"]].json())
                else:
                    results[r["seq"]] = compare(r, spare[r["status"]].pop(), rp, loose_values=True)
    return results


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, list[str]]]:
    tmp = tmp_path_factory.mktemp("contract")
    out: dict[str, dict[int, list[str]]] = {}
    for session, recs in SESSIONS.items():
        if session == "limits":
            out[session] = _replay_limits(recs, tmp)
            continue
        if session not in FRAME_REPLAYED:
            out[session] = anyio.run(_replay_session, session, recs, tmp)
    return out


def _params() -> list[Any]:
    params = []
    for session, recs in SESSIONS.items():
        if session in FRAME_REPLAYED:
            continue
        for rec in recs:
            marks = []
            if (session, rec["seq"]) in SKIP:
                marks.append(pytest.mark.skip(reason=SKIP[(session, rec["seq"])]))
            elif is_driver_record(rec) and not DRIVERS_PRESENT:
                marks.append(pytest.mark.xfail(reason="puterfs/emulator/drivers.py not there yet", strict=False))
            params.append(pytest.param(session, rec["seq"], id=f"{session}-{rec['seq']}-{rec['name'][:40]}",
                                       marks=marks))
    return params


@pytest.mark.skipif(not SESSIONS, reason="no recorded exchanges on this machine")
@pytest.mark.parametrize(("session", "seq"), _params())
def test_recorded_exchange(replayed: dict[str, dict[int, list[str]]], session: str, seq: int) -> None:
    problems = replayed[session].get(seq)
    assert problems is not None, "record was not replayed"
    assert not problems, "\n".join(problems)
