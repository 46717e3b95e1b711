"""The local cache directory: file contents on disk and a journal of what is dirty.

Layout of a cache dir::

    journal.sqlite3     one row per cached file (see `CacheEntry`)
    data/<id>           the file's bytes (sparse while only some blocks are present)

Rules (see docs/write-back.md):

* A row with ``dirty = 1`` holds data the server does not have yet. It is never evicted,
  and it survives daemon crashes and restarts: the next mount re-queues its upload.
  The transition clean -> dirty is committed to the journal *before* the write that
  caused it returns.
* Clean rows are a read cache. Only ``complete`` clean files are kept across restarts;
  partially fetched ones are dropped at start (their block map lives in memory only).
* The journal is keyed by a stable id, not the path: renames update ``path`` in place.

All methods are synchronous and short (SQLite on local disk): under trio, code between
two awaits is atomic, so callers never see a half-updated journal.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20  # unit of partial caching and ranged reads

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    dirty INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    mode INTEGER NOT NULL DEFAULT 33188,
    base_uid TEXT,
    base_size INTEGER,
    base_modified INTEGER,
    complete INTEGER NOT NULL DEFAULT 0,
    last_used REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_path ON files(path);
"""


@dataclass(eq=False)
class CacheEntry:
    id: int
    path: str  # mount-relative path ("dir/name"); the root is ""
    dirty: bool = False
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o100644
    # fingerprint of the server copy this content was based on (None: the server had none)
    base_uid: str | None = None
    base_size: int | None = None
    base_modified: int | None = None
    complete: bool = False
    last_used: float = 0.0
    # blocks present on disk while not complete (memory only)
    blocks: set[int] = field(default_factory=set)
    # bumped by every local change of the content (memory only): an upload counts as the
    # current version only if this did not move while it ran
    version: int = 0
    # an upload of this entry was attempted (it may exist on the server even if we never
    # learned so), and since when an attempt's outcome is unknown (cancelled, connection lost)
    maybe_remote: bool = False
    uncertain_since: float | None = None

    def has_range(self, off: int, size: int) -> bool:
        if self.complete or self.dirty:
            return True
        end = min(off + size, self.size)
        if end <= off:
            return True
        return all(b in self.blocks for b in range(off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1))

    def missing_blocks(self, off: int, size: int) -> list[int]:
        if self.complete or self.dirty:
            return []
        end = min(off + size, self.size)
        if end <= off:
            return []
        return [b for b in range(off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1) if b not in self.blocks]


class CacheStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self._db = sqlite3.connect(self.root / "journal.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.entries: dict[int, CacheEntry] = {}
        self.paths: dict[str, CacheEntry] = {}  # path -> entry, kept in step with `entries`
        self._load()
        self.paths = {e.path: e for e in self.entries.values()}

    # -- start-up -------------------------------------------------------------------------

    def _load(self) -> None:
        rows = self._db.execute(
            "SELECT id, path, dirty, size, mtime_ns, mode, base_uid, base_size, base_modified, complete, last_used FROM files"
        ).fetchall()
        for row in rows:
            e = CacheEntry(
                id=row[0], path=row[1], dirty=bool(row[2]), size=row[3], mtime_ns=row[4], mode=row[5],
                base_uid=row[6], base_size=row[7], base_modified=row[8], complete=bool(row[9]), last_used=row[10],
            )
            data = self.data_path(e.id)
            if not e.dirty and (not e.complete or not data.exists()):
                # a partial read cache: its block map was in memory only
                self._drop(e.id)
                continue
            if e.dirty and not data.exists():
                log.error("cache: data of dirty %r is missing from %s; dropping its journal row", e.path, data)
                self._drop(e.id)
                continue
            if e.dirty:
                # the file on disk is the truth (a crash may have hit between a write and the row update)
                e.size = data.stat().st_size
                e.complete = True
                e.maybe_remote = True  # an upload may have been under way when we stopped
            self.entries[e.id] = e
        # remove data files that have no row (crash between creating a file and its row)
        known = {str(i) for i in self.entries}
        for p in self.data_dir.iterdir():
            if p.name not in known:
                try:
                    p.unlink()
                except OSError:
                    pass

    def _drop(self, entry_id: int) -> None:
        self._db.execute("DELETE FROM files WHERE id = ?", (entry_id,))
        try:
            self.data_path(entry_id).unlink()
        except FileNotFoundError:
            pass

    # -- queries ----------------------------------------------------------------------------

    def data_path(self, entry_id: int) -> Path:
        return self.data_dir / str(entry_id)

    def dirty_entries(self) -> list[CacheEntry]:
        return [e for e in self.entries.values() if e.dirty]

    def used_bytes(self) -> int:
        return sum(e.size if (e.complete or e.dirty) else len(e.blocks) * BLOCK_SIZE for e in self.entries.values())

    # -- changes ----------------------------------------------------------------------------

    def create(self, path: str, *, mode: int = 0o100644, mtime_ns: int | None = None) -> CacheEntry:
        """A new, empty, complete cache file (not yet dirty)."""
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO files (path, dirty, size, mtime_ns, mode, complete, last_used) VALUES (?, 0, 0, ?, ?, 1, ?)",
            (path, mtime_ns or time.time_ns(), mode, now),
        )
        entry_id = int(cur.lastrowid or 0)
        fd = os.open(self.data_path(entry_id), os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        os.close(fd)
        e = CacheEntry(id=entry_id, path=path, mode=mode, mtime_ns=mtime_ns or time.time_ns(), complete=True, last_used=now)
        old = self.paths.get(path)
        if old is not None and old.id != entry_id:
            self.delete(old)
        self.entries[entry_id] = e
        self.paths[path] = e
        return e

    def create_for_remote(self, path: str, *, size: int, uid: str | None, modified: int | None, mode: int) -> CacheEntry:
        """An empty sparse cache file for a server file of `size` bytes; blocks arrive on demand."""
        e = self.create(path, mode=mode)
        e.size = size
        e.complete = size == 0
        e.base_uid, e.base_size, e.base_modified = uid, size, modified
        os.truncate(self.data_path(e.id), size)
        self.save(e)
        return e

    def save(self, e: CacheEntry) -> None:
        self._db.execute(
            "UPDATE files SET path=?, dirty=?, size=?, mtime_ns=?, mode=?, base_uid=?, base_size=?, base_modified=?,"
            " complete=?, last_used=? WHERE id=?",
            (
                e.path, int(e.dirty), e.size, e.mtime_ns, e.mode, e.base_uid, e.base_size, e.base_modified,
                int(e.complete), e.last_used, e.id,
            ),
        )

    def mark_dirty(self, e: CacheEntry) -> None:
        if not e.dirty:
            e.dirty = True
            e.complete = True
            self.save(e)

    def mark_clean(self, e: CacheEntry, *, uid: str | None, size: int, modified: int | None) -> None:
        e.dirty = False
        e.complete = True
        e.base_uid, e.base_size, e.base_modified = uid, size, modified
        self.save(e)

    def rename(self, old: str, new: str) -> None:
        """Re-point the entry at `old` and every entry below it (a directory rename)."""
        prefix = old + "/"
        moved = [e for p, e in self.paths.items() if p == old or p.startswith(prefix)]
        for e in moved:
            del self.paths[e.path]
        for e in moved:
            e.path = new + e.path[len(old):]
            clash = self.paths.get(e.path)
            if clash is not None and clash is not e:
                self.delete(clash)
            self.paths[e.path] = e
            self.save(e)

    def delete(self, e: CacheEntry) -> None:
        self.entries.pop(e.id, None)
        if self.paths.get(e.path) is e:
            del self.paths[e.path]
        self._drop(e.id)

    def touch(self, e: CacheEntry) -> None:
        e.last_used = time.time()

    def evict(self, max_bytes: int, keep: set[int]) -> int:
        """Drop clean entries, least recently used first, until the cache fits `max_bytes`.

        Dirty entries and those in `keep` (open files) are never dropped. Returns bytes freed.
        """
        used = self.used_bytes()
        if used <= max_bytes:
            return 0
        freed = 0
        for e in sorted(self.entries.values(), key=lambda x: x.last_used):
            if used - freed <= max_bytes:
                break
            if e.dirty or e.id in keep:
                continue
            freed += e.size if e.complete else len(e.blocks) * BLOCK_SIZE
            self.delete(e)
        return freed

    def flush_usage(self) -> None:
        """Persist last-used times (LRU order across restarts)."""
        with self._transaction():
            for e in self.entries.values():
                self._db.execute("UPDATE files SET last_used=? WHERE id=?", (e.last_used, e.id))

    def close(self) -> None:
        try:
            self.flush_usage()
        finally:
            self._db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
