"""The emulator's persistent state: users, the file tree (SQLite) and file contents (files).

Layout of the data directory::

    DATA/fs.sqlite3      users, file tree metadata, server secret
    DATA/blobs/ab/<uid>  the bytes of the file entry <uid> (replaced atomically on overwrite)
    DATA/tmp/            uploads being received
    DATA/token           the start-up user's token (mode 0600)

SQLite calls are synchronous on purpose: the emulator serves one asyncio (or trio)
loop, every store method is short, and code between two awaits is atomic, so
handlers never see a half-applied change.  The tree keeps each entry's full
``path`` next to ``parent_id`` because the real server does too, and some of its
quirks (a directory moved into itself, names with trailing spaces that path
lookups trim) only make sense with stored paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import os
import secrets
import shutil
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from puterfs.emulator.auth import hash_password

log = logging.getLogger(__name__)

HOME_DIRS = ("AppData", "Desktop", "Documents", "Pictures", "Public", "Trash", "Videos")
# whoami lists these (not Public), in this order
WHOAMI_DIRS = ("Desktop", "AppData", "Documents", "Pictures", "Videos", "Trash")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL UNIQUE,
    email TEXT,
    password TEXT,
    is_temp INTEGER NOT NULL DEFAULT 0,
    email_confirmed INTEGER NOT NULL DEFAULT 0,
    email_code TEXT,
    otp_secret TEXT,
    otp_enabled INTEGER NOT NULL DEFAULT 0,
    recovery_codes TEXT NOT NULL DEFAULT '[]',
    via_signup INTEGER NOT NULL DEFAULT 0,
    created_ts INTEGER NOT NULL,
    change_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked (jti TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    parent_id INTEGER,
    owner_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    md5 TEXT,
    metadata TEXT,
    is_public INTEGER,
    immutable INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    modified INTEGER NOT NULL,
    accessed INTEGER,
    shortcut_to INTEGER  -- a shortcut: the row id of its target (RECORDED-2 §7)
);
CREATE INDEX IF NOT EXISTS entries_path ON entries(path);
CREATE INDEX IF NOT EXISTS entries_parent ON entries(parent_id, name);
CREATE INDEX IF NOT EXISTS entries_owner ON entries(owner_id);
"""

_MIME = mimetypes.MimeTypes(filenames=())  # built-in table only: the same answer on every machine
_CHARSET_TYPES = ("application/json", "application/javascript", "application/xml")
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


def mime_for(name: str, charset: bool = True) -> str | None:
    """MIME type from the file name, like the server's ``mime-types`` lookup (null if unknown)."""
    if name.startswith(".") and name.count(".") == 1:
        return None
    typ, _ = _MIME.guess_type("x/" + name, strict=False)
    if typ is None:
        return None
    if charset and (typ.startswith("text/") or typ in _CHARSET_TYPES):
        return f"{typ}; charset=utf-8"
    return typ


def now_s() -> int:
    return int(time.time())


def split_path(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return (parent or "/"), name


def join(parent: str, name: str) -> str:
    return ("" if parent == "/" else parent) + "/" + name


def dedupe(name: str, taken: Any) -> str:
    """"a.txt" -> "a (1).txt", "t1" -> "t1 (1)": the first free variant."""
    dot = name.rfind(".")
    base, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    for n in range(1, 100_000):
        candidate = f"{base} ({n}){ext}"
        if not taken(candidate):
            return candidate
    raise RuntimeError("no free name")


class Store:
    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)  # the server secret, tokens and every user's files
        (self.data_dir / "blobs").mkdir(exist_ok=True)
        self.tmp_dir = self.data_dir / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        for stale in self.tmp_dir.iterdir():  # half-received uploads of a previous run
            stale.unlink(missing_ok=True)
        # check_same_thread=False: the in-process app may be driven from test threads;
        # every access still happens from one thread at a time.
        old_umask = os.umask(0o077)
        try:
            self.db = sqlite3.connect(self.data_dir / "fs.sqlite3", check_same_thread=False, isolation_level=None)
        finally:
            os.umask(old_umask)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        if "shortcut_to" not in {r[1] for r in self.db.execute("PRAGMA table_info(entries)")}:
            self.db.execute("ALTER TABLE entries ADD COLUMN shortcut_to INTEGER")  # a data dir of an older version
        if "suspended" not in {r[1] for r in self.db.execute("PRAGMA table_info(users)")}:
            # an account an administrator suspended (admin route /_emulator/suspend)
            self.db.execute("ALTER TABLE users ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0")
        secret = self.get_meta("secret")
        if secret is None:
            secret = secrets.token_hex(32)
            self.set_meta("secret", secret)
        self.secret = bytes.fromhex(secret)

    def close(self) -> None:
        self.db.close()

    # --- meta ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # --- users -----------------------------------------------------------------------------

    def user_by_name(self, username: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM users WHERE username=?", (username,)).fetchone()

    def user_by_email(self, email: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM users WHERE lower(email)=lower(?)", (email,)).fetchone()

    def user_by_uuid(self, uuid: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM users WHERE uuid=?", (uuid,)).fetchone()

    def user_by_id(self, user_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM users WHERE id=?", (user_id,)).fetchone()

    def create_user(
        self,
        username: str,
        password: str | None,
        *,
        email: str | None = None,
        is_temp: bool = False,
        via_signup: bool = False,
    ) -> sqlite3.Row:
        ts = now_s()
        email_code = None if email is None else f"{secrets.randbelow(1_000_000):06d}"
        self.db.execute(
            "INSERT INTO users(uuid, username, email, password, is_temp, email_confirmed, email_code,"
            " via_signup, created_ts, change_ts) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                str(uuidlib.uuid4()),
                username,
                email,
                None if password is None else hash_password(password),
                int(is_temp),
                0,
                email_code,
                int(via_signup),
                ts,
                int(time.time() * 1000),
            ),
        )
        user = self.user_by_name(username)
        assert user is not None
        home = self._insert(None, user["id"], "/" + username, username, True, immutable=True, accessed=None)
        for name in HOME_DIRS:
            self._insert(home, user["id"], join(home["path"], name), name, True)
        if email_code is not None:
            # A self-hosted server without SMTP logs the confirmation mail; so do we.
            log.warning("confirmation code for %s <%s>: %s", username, email, email_code)
        return user

    def update_user(self, user_id: int, **fields: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE users SET {cols} WHERE id=?", (*fields.values(), user_id))

    def bump(self, user_id: int) -> int:
        """Move the user's change timestamp (ms), strictly forward."""
        row = self.db.execute("SELECT change_ts FROM users WHERE id=?", (user_id,)).fetchone()
        ts = max(int(time.time() * 1000), (row[0] if row else 0) + 1)
        self.db.execute("UPDATE users SET change_ts=? WHERE id=?", (ts, user_id))
        return ts

    def revoke(self, jti: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO revoked(jti) VALUES (?)", (jti,))

    def is_revoked(self, jti: str) -> bool:
        return self.db.execute("SELECT 1 FROM revoked WHERE jti=?", (jti,)).fetchone() is not None

    # --- tree lookups ----------------------------------------------------------------------

    def by_path(self, path: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM entries WHERE path=? ORDER BY id LIMIT 1", (path,)).fetchone()

    def by_uid(self, uid: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM entries WHERE uid=?", (uid,)).fetchone()

    def by_id(self, entry_id: int | None) -> sqlite3.Row | None:
        if entry_id is None:
            return None
        return self.db.execute("SELECT * FROM entries WHERE id=?", (entry_id,)).fetchone()

    def child(self, parent: sqlite3.Row, name: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM entries WHERE parent_id=? AND name=? AND id<>parent_id ORDER BY id LIMIT 1",
            (parent["id"], name),
        ).fetchone()

    def has_children(self, entry: sqlite3.Row) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM entries WHERE parent_id=? AND id<>? LIMIT 1", (entry["id"], entry["id"])
            ).fetchone()
            is not None
        )

    def children(
        self,
        parent: sqlite3.Row,
        *,
        sort: str = "name",
        desc: bool = False,
        after: tuple[Any, int] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[sqlite3.Row]:
        col = {"name": "name", "modified": "modified", "size": "size", "type": "is_dir"}.get(sort, "name")
        op, order = ("<", "DESC") if desc else (">", "ASC")
        sql = "SELECT * FROM entries WHERE parent_id=? AND id<>?"
        args: list[Any] = [parent["id"], parent["id"]]
        if after is not None:
            sql += f" AND ({col} {op} ? OR ({col} = ? AND id {op} ?))"
            args += [after[0], after[0], after[1]]
        sql += f" ORDER BY {col} {order}, id {order}"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        elif offset:
            sql += " LIMIT -1 OFFSET ?"
            args += [offset]
        return self.db.execute(sql, args).fetchall()

    def count_children(self, parent: sqlite3.Row) -> int:
        return self.db.execute(
            "SELECT count(*) FROM entries WHERE parent_id=? AND id<>?", (parent["id"], parent["id"])
        ).fetchone()[0]

    def descendants(self, entry: sqlite3.Row) -> Iterator[sqlite3.Row]:
        """Every entry below ``entry`` (by parent links, so it also works for orphaned subtrees)."""
        seen = {entry["id"]}
        frontier = [entry["id"]]
        while frontier:
            marks = ",".join("?" * len(frontier))
            rows = self.db.execute(f"SELECT * FROM entries WHERE parent_id IN ({marks})", frontier).fetchall()
            frontier = []
            for row in rows:
                if row["id"] not in seen:
                    seen.add(row["id"])
                    frontier.append(row["id"])
                    yield row

    def subtree_size(self, entry: sqlite3.Row) -> int:
        if not entry["is_dir"]:
            return entry["size"]
        return sum(r["size"] for r in self.descendants(entry) if not r["is_dir"])

    def used(self, owner_id: int) -> int:
        return self.db.execute(
            "SELECT coalesce(sum(size), 0) FROM entries WHERE owner_id=? AND is_dir=0", (owner_id,)
        ).fetchone()[0]

    def search(self, owner_id: int, text: str, limit: int = 200) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM entries WHERE owner_id=? AND parent_id IS NOT NULL AND instr(lower(name), lower(?)) > 0"
            " ORDER BY path LIMIT ?",
            (owner_id, text, limit),
        ).fetchall()

    def owner_name(self, entry: sqlite3.Row) -> str:
        user = self.user_by_id(entry["owner_id"])
        return user["username"] if user else ""

    # --- blobs -----------------------------------------------------------------------------

    def blob_path(self, uid: str) -> Path:
        return self.data_dir / "blobs" / uid[:2] / uid

    def open_blob(self, entry: sqlite3.Row):  # noqa: ANN201 - a binary file object
        path = self.blob_path(entry["uid"])
        if not path.exists():  # 0-byte files created by touch have no blob
            return open(os.devnull, "rb")
        return open(path, "rb")

    def new_tmp(self) -> Path:
        return self.tmp_dir / f"up-{secrets.token_hex(8)}"

    # --- mutations -------------------------------------------------------------------------

    def _insert(
        self,
        parent: sqlite3.Row | None,
        owner_id: int,
        path: str,
        name: str,
        is_dir: bool,
        *,
        size: int = 0,
        md5: str | None = None,
        metadata: str | None = None,
        is_public: int | None = None,
        immutable: bool = False,
        accessed: int | None | str = "now",
        times: tuple[int, int] | None = None,
        uid: str | None = None,
    ) -> sqlite3.Row:
        ts = now_s()
        created, modified = times or (ts, ts)
        uid = uid or str(uuidlib.uuid4())
        self.db.execute(
            "INSERT INTO entries(uid, parent_id, owner_id, path, name, is_dir, size, md5, metadata, is_public,"
            " immutable, created, modified, accessed) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                uid,
                None if parent is None else parent["id"],
                owner_id,
                path,
                name,
                int(is_dir),
                size,
                md5,
                metadata,
                is_public,
                int(immutable),
                created,
                modified,
                ts if accessed == "now" else accessed,
            ),
        )
        row = self.by_uid(uid)
        assert row is not None
        return row

    def make_shortcut(self, parent: sqlite3.Row, name: str, owner_id: int, target: sqlite3.Row) -> sqlite3.Row:
        """A shortcut entry (an empty non-directory pointing at `target`'s row id; it outlives it)."""
        row = self._insert(parent, owner_id, join(parent["path"], name), name, False)
        self.db.execute("UPDATE entries SET shortcut_to=? WHERE id=?", (target["id"], row["id"]))
        out = self.by_id(row["id"])
        assert out is not None
        return out

    def mkdir(self, parent: sqlite3.Row, name: str, owner_id: int) -> sqlite3.Row:
        return self._insert(parent, owner_id, join(parent["path"], name), name, True)

    def touch_new(self, parent: sqlite3.Row, name: str, owner_id: int) -> sqlite3.Row:
        return self._insert(parent, owner_id, join(parent["path"], name), name, False, md5=EMPTY_MD5)

    def set_times(self, entry: sqlite3.Row, **times: int) -> None:
        cols = ", ".join(f"{k}=?" for k in times)
        self.db.execute(f"UPDATE entries SET {cols} WHERE id=?", (*times.values(), entry["id"]))

    def write_file(
        self,
        parent: sqlite3.Row,
        name: str,
        owner_id: int,
        src: Path,
        size: int,
        md5: str,
        metadata: str | None,
        existing: sqlite3.Row | None = None,
    ) -> sqlite3.Row:
        """Store ``src`` (a temp file, moved away) as ``parent/name``; keep uid/created on overwrite."""
        if existing is not None:
            uid = existing["uid"]
            ts = now_s()
            self.db.execute(
                "UPDATE entries SET size=?, md5=?, metadata=?, modified=?, accessed=? WHERE id=?",
                (size, md5, metadata, ts, ts, existing["id"]),
            )
            row = self.by_uid(uid)
        else:
            row = self._insert(parent, owner_id, join(parent["path"], name), name, False, size=size, md5=md5,
                               metadata=metadata)
        assert row is not None
        dest = self.blob_path(row["uid"])
        dest.parent.mkdir(exist_ok=True)
        os.replace(src, dest)
        return row

    def add_file(self, parent: sqlite3.Row, name: str, owner_id: int, uid: str, size: int, md5: str | None,
                 metadata: str | None) -> sqlite3.Row:
        """A file entry whose bytes are already at ``blob_path(uid)`` (or missing: a presigned
        upload completed without its PUT)."""
        return self._insert(parent, owner_id, join(parent["path"], name), name, False, size=size, md5=md5,
                            metadata=metadata, uid=uid)

    def delete_tree(self, entry: sqlite3.Row, descendants_only: bool = False) -> None:
        rows = list(self.descendants(entry))
        if not descendants_only:
            rows.append(entry)
        for row in rows:
            if not row["is_dir"]:
                self.blob_path(row["uid"]).unlink(missing_ok=True)
        ids = [r["id"] for r in rows]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            self.db.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    def relocate(self, entry: sqlite3.Row, new_parent: sqlite3.Row, new_name: str) -> sqlite3.Row:
        """Rename/move, re-pointing the stored paths of the whole subtree."""
        old_path = entry["path"]
        new_path = join(new_parent["path"], new_name)
        with self.db:
            self.db.execute("BEGIN")
            # a rename or move always bumps `modified` (FSEntryStore.updateEntry; RECORDED-2 §7)
            self.db.execute(
                "UPDATE entries SET parent_id=?, name=?, path=?, modified=? WHERE id=?",
                (new_parent["id"], new_name, new_path, now_s(), entry["id"]),
            )
            if entry["is_dir"]:
                prefix = old_path + "/"
                self.db.execute(
                    "UPDATE entries SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ? AND id<>?",
                    (new_path + "/", len(prefix) + 1, len(prefix), prefix, entry["id"]),
                )
        row = self.by_id(entry["id"])
        assert row is not None
        return row

    def copy_tree(self, entry: sqlite3.Row, new_parent: sqlite3.Row, new_name: str, owner_id: int) -> sqlite3.Row:
        ts = now_s()
        top = self._copy_one(entry, new_parent, new_name, owner_id, ts)
        if entry["is_dir"]:
            stack = [(entry, top)]
            while stack:
                src_dir, dst_dir = stack.pop()
                for child in self.children(src_dir):
                    copied = self._copy_one(child, dst_dir, child["name"], owner_id, ts)
                    if child["is_dir"]:
                        stack.append((child, copied))
        return top

    def _copy_one(self, src: sqlite3.Row, parent: sqlite3.Row, name: str, owner_id: int, ts: int) -> sqlite3.Row:
        # copied files come out with is_public false (recorded); dirs and fresh entries null
        row = self._insert(parent, owner_id, join(parent["path"], name), name, bool(src["is_dir"]),
                           size=src["size"], md5=src["md5"], metadata=src["metadata"],
                           is_public=None if src["is_dir"] else 0,
                           times=(ts, ts))
        if not src["is_dir"]:
            blob = self.blob_path(src["uid"])
            if blob.exists():
                dest = self.blob_path(row["uid"])
                dest.parent.mkdir(exist_ok=True)
                shutil.copyfile(blob, dest)
        return row


S3_PART = 10 * 1024 * 1024  # a self-host's store uploads objects above this in parts of this size


def s3_etag(path: Path, size: int, md5: str) -> str:
    """The ETag the object store gives a stored upload: its MD5 up to 10 MiB, above that the
    multipart ETag ``<md5 of the part md5s>-<parts>`` (what /read then reports, limits.jsonl)."""
    if size <= S3_PART:
        return md5
    digests = b""
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(S3_PART):
            digests += hashlib.md5(chunk).digest()
            n += 1
    return f"{hashlib.md5(digests).hexdigest()}-{n}"


def metadata_json(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    return json.dumps({"contentType": content_type}, separators=(",", ":"))
