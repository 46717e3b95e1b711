"""The local cache directory: file contents on disk and a journal of what is dirty.

Layout of a cache dir (see docs/write-back.md and docs/reliability.md)::

    journal.sqlite3     one row per cached file (see `CacheEntry`)
    data/<id>           the file's bytes (sparse while only some blocks are present)
    data/<id>.id        the file's identity: its path, whether it is dirty, the server
                        version it is based on (a fixed-size JSON record, rewritten in place)
    lost+found/         data files nothing could place (reported in the log and state file)

Spare data files (`SPARE_PATH` rows, empty data files with identity records, made ahead on a
worker thread) let a create take a file whose name is on the disk already.

Rules:

* The journal is the truth for dirty state. The clean -> dirty transition is committed to
  it *before* memory says dirty (and before the write that caused it returns); if the
  journal cannot be written, the operation fails (ENOSPC on a full disk) and the entry stays
  clean in memory.
* Every data file carries its identity beside it (``<id>.id``), written before the journal
  when the data becomes more precious (dirty) and after it otherwise, with a generation
  number both sides share. A damaged journal (lost ``-wal``, truncated ``-wal``, missing rows,
  an unreadable database) is repaired from these records at start: the newer side wins.
* A data file is deleted only when the journal (or its identity record) says its data is on
  the server, or when the user deleted the file. Anything else is re-associated with its
  path or moved to ``lost+found/`` and reported, never silently deleted.
* The cache dir must belong to the user and not be writable by others (`open_cache_dir`);
  every file in it is opened relative to a directory descriptor with ``O_NOFOLLOW``, so a
  planted symlink is refused, never followed. Journal rows whose path could leave the mount
  (``..``, absolute, NUL) are refused.
* Clean rows are a read cache. Only ``complete`` clean files are kept across restarts;
  partially fetched ones are dropped at start (their block map lives in memory only). A
  clean file is complete in the journal only once its data file is synced (`mark_complete`,
  `sync_completed`): before that its row says incomplete, so a power cut that took its
  bytes (a data file of holes, or short) makes it be fetched again, never served. A clean
  row whose data file is not of its size is dropped at start too.
* The journal is keyed by a stable id, not the path: renames update ``path`` in place.

All methods are synchronous and short (SQLite on local disk): under trio, code between
two awaits is atomic, so callers never see a half-updated journal.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20  # unit of partial caching and ranged reads
ID_RECORD_SIZE = 4096  # an identity record is rewritten in place: its block stays allocated
JOURNAL = "journal.sqlite3"
LOST_FOUND = "lost+found"
# Spare data files: empty data files (and identity records) made ahead on a worker thread,
# their names synced, so that creating a file in the mount creates no inode in the syscall
# path (two inode creations were most of a create's cost). Their rows have this path, which
# no mount path can have; they are dropped at the next start and at close.
SPARE_PATH = "\x00spare/"
SPARES = 32  # kept ready
# A small dirty file a rename replaces (an editor's save) leaves its data file as a spare
# instead of two inodes to unlink: its row becomes a spare's in the rename's transaction, and
# once that is synced (never before: a power cut could otherwise keep the emptied file under
# its old row) the next create empties the file and takes it. Up to SPARES of them wait.
RECYCLE_MAX = 1 << 20
# An fsync of a dirty file of up to this many bytes puts its bytes in the journal (table
# synced_data) instead of syncing its data file: one sync (the journal's) instead of two, and
# none that waits for the file system's journal (a new file's blocks are allocated at its sync).
# The copy is what recovery restores after a power cut; it goes before the file changes again
# (its data file is synced first: `uninline`), when the file is uploaded or deleted.
INLINE_MAX = 64 << 10
# The journal's -wal is given this size at start (zeros past its frames, which SQLite ignores):
# it then is rewritten in place, and an fsync's sync of it changes no file size, so it is no
# commit of the file system's journal (0.13-0.17 ms a sync here, against 0.47-0.66 ms while it
# grows: a fresh mount's first ~90 editor saves). The checkpoints (below) keep it under this
# size. Not on a cache disk with less than WAL_ROOM free.
WAL_SIZE = 5 << 20
WAL_ROOM = 64 << 20
# The journal's -wal is copied into the database file (a checkpoint: fsyncs of the -wal and the
# database) by `checkpoint`, on a worker thread, once CHECKPOINT_CHANGES rows changed since the
# last one (the mount looks every 0.1 s); the connection's own automatic checkpoint, which runs
# inside a commit (so on the FUSE thread), only past AUTO_CHECKPOINT_PAGES (4.9 MB of frames,
# under WAL_SIZE: a fallback, when the worker has not come round, or nothing calls `checkpoint`).
CHECKPOINT_CHANGES = 100
AUTO_CHECKPOINT_PAGES = 1200

_COLUMNS = (
    "id", "path", "dirty", "size", "mtime_ns", "mode", "base_uid", "base_size", "base_modified", "complete",
    "last_used", "gen", "base_etag", "attempt_at", "sent_md5",
)
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
CREATE TABLE IF NOT EXISTS pending_meta (
    path TEXT PRIMARY KEY,
    is_dir INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_moves (
    old TEXT NOT NULL,
    new TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS synced_data (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
"""
_ADDED_COLUMNS = {
    "gen": "INTEGER NOT NULL DEFAULT 0",
    "base_etag": "TEXT",
    "attempt_at": "REAL",
    "sent_md5": "TEXT",
    # a large file's presigned upload under way (JSON; see operations._upload_large)
    "upload_session": "TEXT",
}
# the fields an identity record holds (what recovery needs without the journal)
_IDENTITY = ("path", "dirty", "mode", "mtime_ns", "base_uid", "base_size", "base_modified", "base_etag", "sent_md5")


class CacheDirError(Exception):
    """The cache dir cannot be trusted or used (wrong owner, writable by others, a symlink...)."""


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
    # the server's content tag (ETag: an MD5 of the content) of that copy, when known
    base_etag: str | None = None
    complete: bool = False
    last_used: float = 0.0
    # generation of the identity (path, dirty, base...) shared by the journal row and data/<id>.id
    gen: int = 0
    # MD5s of the content of upload attempts whose outcome is unknown (newest last, journaled):
    # a server copy with one of them is ours, not another client's
    sent_md5: list[str] = field(default_factory=list)
    # blocks present on disk while not complete (memory only)
    blocks: set[int] = field(default_factory=set)
    # bumped by every local change of the content (memory only): an upload counts as the
    # current version only if this did not move while it ran
    version: int = 0
    # an upload of this entry was attempted (it may exist on the server even if we never
    # learned so), and since when an attempt's outcome is unknown (cancelled, connection lost)
    maybe_remote: bool = False
    uncertain_since: float | None = None
    # inode-table sequence number of the last successful upload (memory only)
    uploaded_seq: int = 0
    # complete (clean) in memory, but its data file is not synced yet: the journal says
    # incomplete until `sync_completed` synced it (a token, memory only; 0: nothing pending)
    unsynced: int = 0
    # what data/<id>.id says now (memory only; None: not known)
    written: dict[str, Any] | None = None
    # Change detection by version (memory only, docs/reliability.md): the server's entries
    # cannot show a same-size overwrite within the same second, its ETag can. `unverified`:
    # a change event (or a gap in them) may mean another version; the next open or read asks
    # the server for its ETag first. `echo_due`: the fingerprint our last upload got, whose
    # change event is still to come (that event is ours, not another client's);
    # `seen_fps`: fingerprints events showed since our upload started (an echo that came
    # before the upload's answer).
    unverified: bool = False
    verify_after: float = 0.0  # trio time: a failed check is not repeated before it
    echo_due: tuple[str | None, int, int | None] | None = None
    seen_fps: set[tuple[str | None, int, int | None]] = field(default_factory=set)

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

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _IDENTITY}


def valid_path(path: str) -> bool:
    """Whether `path` is a mount-relative path that stays inside the mount."""
    if not path or path.startswith("/") or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") and len(part.encode("utf-8", "surrogatepass")) <= 255
               for part in path.split("/"))


# ------------------------------------------------------------------ the cache dir itself


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700, whatever the umask."""
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700, follow_symlinks=False)


def open_cache_dir(path: str | os.PathLike[str]) -> int:
    """Create (0700) or check the cache dir and return a descriptor of it.

    Refused (CacheDirError): a symlink, not a directory, owned by another user, or writable
    by group/others. A directory of ours that others may read is tightened to 0700.
    """
    p = Path(os.path.abspath(path))
    make_private_dirs(p)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise CacheDirError(f"cache dir {p} is a symlink or not a directory; refusing it") from None
        raise CacheDirError(f"cannot open cache dir {p}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        euid = os.geteuid()
        if st.st_uid != euid:
            raise CacheDirError(
                f"cache dir {p} belongs to uid {st.st_uid}, not to you (uid {euid}); refusing it "
                "(another user could read or plant files there)"
            )
        if st.st_mode & 0o022:
            raise CacheDirError(
                f"cache dir {p} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); refusing it"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
        _check_ancestors(p.parent, euid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_ancestors(p: Path, euid: int) -> None:
    """Every ancestor must belong to root or us and be unwritable by others (unless sticky):
    otherwise another user could swap the cache dir for one of theirs."""
    for d in [p, *p.parents]:
        st = os.stat(d)
        if st.st_uid not in (0, euid):
            raise CacheDirError(f"{d} (a parent of the cache dir) belongs to uid {st.st_uid}; refusing it")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise CacheDirError(
                f"{d} (a parent of the cache dir) is writable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):o}); refusing it"
            )


def _check_own_file(dir_fd: int, name: str, where: str) -> None:
    """A file the cache uses by name (the journal, the log) must be ours and not a link."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        raise CacheDirError(
            f"{where}/{name} is not a plain file of yours (a symlink, a hard link or another user's); refusing the cache dir"
        )


def check_cache_dir(path: str | os.PathLike[str]) -> None:
    """Create or check the cache dir before anything (the log file) is opened in it."""
    fd = open_cache_dir(path)
    try:
        for name in (JOURNAL, JOURNAL + "-wal", JOURNAL + "-shm", JOURNAL + "-journal", "puterfs.log"):
            _check_own_file(fd, name, str(path))
    finally:
        os.close(fd)


# ------------------------------------------------------------------ the store


class CacheStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))
        self._root_fd = open_cache_dir(self.root)
        for name in (JOURNAL, JOURNAL + "-wal", JOURNAL + "-shm", JOURNAL + "-journal", "puterfs.log"):
            _check_own_file(self._root_fd, name, str(self.root))
        self.data_dir = self.root / "data"
        self._journal_path = self.root / JOURNAL  # for messages (a Path per transaction cost 10 us)
        self._data_fd = self._open_subdir("data")
        self._data_dir_unsynced = True  # a file was created in data/ since its last fsync
        self._saved: dict[int, tuple[Any, ...]] = {}  # entry id -> the row last committed by _save_row
        self._root_synced = False  # the cache dir fsync'ed once (the journal's files)
        # threads of the fsyncs run together (started on first use; enough for the fsyncs of
        # several processes at once, each needing up to 3)
        self._sync_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="puterfs-fsync")
        self.lost_found = self.root / LOST_FOUND
        self.lost: list[dict[str, str]] = []  # what went to lost+found at start (reported)
        self.recovered: list[str] = []  # paths re-associated from identity records at start
        # called when the cache disk is full: frees clean cached data, returns bytes freed
        self.reclaim: Callable[[], int] | None = None
        self._db = self._open_journal()
        # the connection's total_changes when the journal was last synced (see sync_journal)
        self._synced_changes = -1
        self._checkpointed_changes = 0  # the connection's total_changes at the last `checkpoint`
        self._ckpt_db: sqlite3.Connection | None = None  # `checkpoint`'s own connection
        self._ckpt_lock = threading.Lock()
        self.entries: dict[int, CacheEntry] = {}
        self.paths: dict[str, CacheEntry] = {}  # path -> entry, kept in step with `entries`
        self._spares: list[CacheEntry] = []  # ready spare data files (not in entries/paths)
        self._spares_coming = 0  # spares being made on a worker thread
        # replaced files' data files to be spares once the journal is synced past the mark
        # (journal_mark) of the rename that made them so (RECYCLE_MAX)
        self._recycled: list[tuple[CacheEntry, int]] = []
        self._doomed: list[int] = []  # deleted entries whose files are still to be unlinked
        # deleted entries whose files unlink_doomed unlinked: their rows go next (forget_unlinked)
        self._unlinked: deque[int] = deque()
        self._unsynced_seq = 0  # tokens of `mark_complete`
        self.inlined: set[int] = set()  # entries whose last fsync'ed bytes are in synced_data
        self._load()
        # the paths of the pending_meta rows (kept in step with the table): a rename with none
        # at or below its two paths leaves the table alone (three statements fewer per rename)
        self._meta_paths = {str(r[0]) for r in self._db.execute("SELECT path FROM pending_meta")}
        self.sync_journal()  # what the start-up repair changed is on the disk before anything else
        self._size_wal()

    def _size_wal(self) -> None:
        """Write the journal's -wal out to WAL_SIZE (zeros after what SQLite wrote: an invalid
        frame ends its frames, as the older frames after a checkpoint's restart do), synced.
        Best effort: a -wal left growing is only slower to sync."""
        try:
            st = os.statvfs(self._root_fd)
            if st.f_bavail * st.f_frsize < WAL_SIZE + WAL_ROOM:
                return
            fd = os.open(JOURNAL + "-wal", os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root_fd)
        except OSError:
            return  # none yet (SQLite makes it at the first commit): it grows
        try:
            size = os.fstat(fd).st_size
            if size >= WAL_SIZE:
                return
            zeros = bytes(1 << 20)
            for off in range(size, WAL_SIZE, len(zeros)):
                os.pwrite(fd, zeros[: WAL_SIZE - off], off)
            os.fdatasync(fd)
        except OSError as exc:
            log.debug("cache: cannot size the journal's -wal: %s", exc)
        finally:
            os.close(fd)

    def _open_subdir(self, name: str) -> int:
        try:
            os.mkdir(name, 0o700, dir_fd=self._root_fd)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._root_fd)
        except OSError:
            raise CacheDirError(f"{self.root}/{name} is a symlink or not a directory; refusing the cache dir") from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise CacheDirError(f"{self.root}/{name} is another user's or writable by others; refusing the cache dir")
        return fd

    def _open_journal(self) -> sqlite3.Connection:
        path = self.root / JOURNAL
        try:
            db = self._connect(path)
            db.execute("SELECT count(*) FROM files").fetchone()
            return db
        except sqlite3.DatabaseError as exc:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log.error(
                "cache: the journal %s cannot be read (%s); keeping it as %s.damaged-%s and rebuilding it "
                "from the data files' identity records", path, exc, JOURNAL, stamp,
            )
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.rename(JOURNAL + suffix, f"{JOURNAL}.damaged-{stamp}{suffix}",
                              src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
                except FileNotFoundError:
                    pass
            return self._connect(path)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        old = os.umask(0o077)
        try:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            os.umask(old)
        # Commits are not synced one by one: WAL with synchronous=NORMAL keeps every commit
        # across a kill -9 (it is in the OS once the statement returns) and the database
        # consistent across a power cut (a prefix of the commits survives). What must survive
        # a power cut is synced on purpose (`sync_journal`): by fsync/fsyncdir, before a
        # clean file's bytes change (`mark_dirty`), before an upload is sent (`note_attempt`).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={AUTO_CHECKPOINT_PAGES}")
        db.executescript(_SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(files)")}
        for col, decl in _ADDED_COLUMNS.items():
            if col not in have:
                db.execute(f"ALTER TABLE files ADD COLUMN {col} {decl}")
        return db

    # -- low level: the journal and the identity records ------------------------------------

    def _sql(self, query: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run one journal statement; a full disk is ENOSPC (after trying to free space once)."""
        for attempt in (0, 1):
            try:
                return self._db.execute(query, args)
            except sqlite3.DatabaseError as exc:
                err = journal_error(exc, self.root / JOURNAL)
                if err.errno == errno.ENOSPC and attempt == 0 and self._reclaim():
                    continue
                raise err from None
        raise AssertionError("unreachable")

    def _reclaim(self) -> int:
        if self.reclaim is None:
            return 0
        try:
            return self.reclaim()
        except Exception:  # noqa: BLE001 - freeing space is best effort
            log.exception("cache: freeing space failed")
            return 0

    def _write_identity(self, e: CacheEntry, gen: int, ident: dict[str, Any], *, may_reclaim: bool = True) -> None:
        rec = json.dumps({"v": 1, "id": e.id, "gen": gen, **ident}, ensure_ascii=True).encode() + b"\n"
        size = max(ID_RECORD_SIZE, -(-len(rec) // ID_RECORD_SIZE) * ID_RECORD_SIZE)
        rec = rec.ljust(size, b" ")
        for attempt in (0, 1):
            try:
                fd = os.open(f"{e.id}.id", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=self._data_fd)
                try:
                    os.pwrite(fd, rec, 0)  # in place: no new block once the record exists
                    if os.fstat(fd).st_size > size:
                        os.ftruncate(fd, size)
                finally:
                    os.close(fd)
                return
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT) and attempt == 0 and may_reclaim and self._reclaim():
                    continue
                raise

    def _read_identity(self, entry_id: int) -> dict[str, Any] | None:
        try:
            fd = os.open(f"{entry_id}.id", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._data_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > 1 << 20:
                return None
            raw = os.pread(fd, st.st_size, 0)
        finally:
            os.close(fd)
        try:
            rec = json.loads(raw.split(b"\n", 1)[0])
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(rec, dict) or rec.get("id") != entry_id or not isinstance(rec.get("path"), str):
            return None
        return rec

    def _save_row(self, e: CacheEntry) -> None:
        values = (
            e.path, int(e.dirty), e.size, e.mtime_ns, e.mode, e.base_uid, e.base_size, e.base_modified,
            int(e.complete and (e.dirty or not e.unsynced)), e.last_used, e.gen, e.base_etag, json.dumps(e.sent_md5) if e.sent_md5 else None,
            e.id,
        )
        if self._saved.get(e.id) == values:
            return  # the row already says exactly this (committed): no second synced commit
        self._sql(
            "UPDATE files SET path=?, dirty=?, size=?, mtime_ns=?, mode=?, base_uid=?, base_size=?, base_modified=?,"
            " complete=?, last_used=?, gen=?, base_etag=?, sent_md5=? WHERE id=?",
            values,
        )
        self._saved[e.id] = values

    def journal_mark(self) -> int | None:
        """What `sync_files` must make durable of the journal: the commit count to pass it, or
        None when everything committed is synced already (main thread only)."""
        mark = self._db.total_changes
        return None if mark == self._synced_changes else mark

    def journal_synced(self, mark: int | None) -> None:
        """`sync_files(journal=mark)` returned: the commits up to `mark` are on the disk."""
        if mark is not None and mark > self._synced_changes:
            self._synced_changes = mark

    def sync_journal(self) -> None:
        """Put every commit so far on the local disk (fsync of the ``-wal``), on this thread."""
        mark = self.journal_mark()
        if mark is not None or self._synced_changes < 0:
            self._fsync_journal()
            self.journal_synced(self._db.total_changes if mark is None else mark)

    def _fsync_journal(self) -> None:
        # The committed transactions not yet checkpointed are in the -wal (a checkpoint syncs
        # the database file itself before the -wal is reused), so syncing the -wal makes them
        # all durable, as synchronous=FULL would have at each commit. Descriptors only: safe
        # from a worker thread while the connection commits more.
        for name in (JOURNAL + "-wal", JOURNAL):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root_fd)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)  # as SQLite syncs it (the size is data; no other metadata matters)
            finally:
                os.close(fd)
            return

    def checkpoint_due(self) -> int | None:
        """The commit count to pass `checkpoint` when CHECKPOINT_CHANGES rows changed since
        the last one, else None (main thread)."""
        mark = self._db.total_changes
        return mark if mark - self._checkpointed_changes >= CHECKPOINT_CHANGES else None

    def checkpoint(self, mark: int) -> None:
        """Copy the committed transactions from the -wal into the database file, on the
        calling thread (a worker thread: it syncs both files), through a connection of its own,
        PASSIVE (it waits for no one; commits on the main connection go on meanwhile). What
        it copies was durable across a kill -9 already; across a power cut `sync_journal`
        decides, as before (the database file is synced before the -wal is reused)."""
        with self._ckpt_lock:
            if self._ckpt_db is None:
                self._ckpt_db = sqlite3.connect(self.root / JOURNAL, isolation_level=None, check_same_thread=False)
                self._ckpt_db.execute("PRAGMA synchronous=NORMAL")
            self._ckpt_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self._checkpointed_changes = max(self._checkpointed_changes, mark)

    def _commit(self, e: CacheEntry, *, _durable: bool = False, **changes: Any) -> None:
        """Apply `changes` to `e`: the journal (and the identity record) first, memory after.
        If the journal cannot be written, `e` is left as it was and OSError is raised. The
        commit survives a kill -9 when this returns; with `_durable` also a power cut (the
        journal is synced before memory changes)."""
        old = {k: getattr(e, k) for k in changes}
        # compared with what the record last said (callers may have set fields directly)
        old_ident = e.written if e.written is not None else e.identity()
        old_gen = e.gen
        for k, v in changes.items():
            setattr(e, k, v)
        new_ident = e.identity()
        ident_changed = new_ident != old_ident
        if ident_changed:
            e.gen = old_gen + 1
        precious = e.dirty and ident_changed
        try:
            if precious:  # the record says dirty before the journal does
                self._write_identity(e, e.gen, new_ident)
            try:
                self._save_row(e)
                if _durable:
                    self.sync_journal()
            except BaseException:
                if precious:
                    try:
                        self._write_identity(e, old_gen, old_ident)
                    except OSError:
                        pass  # the newer record only causes a harmless re-upload
                raise
        except BaseException:
            for k, v in old.items():
                setattr(e, k, v)
            e.gen = old_gen
            raise
        if precious:
            e.written = new_ident
        elif ident_changed:
            try:
                self._write_identity(e, e.gen, new_ident)
                e.written = new_ident
            except OSError as exc:
                log.warning("cache: cannot update the identity record of %r: %s (the journal has it)", e.path, exc)

    # -- start-up -------------------------------------------------------------------------

    def upload_sessions(self) -> dict[int, str]:
        """Entry id -> the saved presigned upload session of that entry."""
        rows = self._sql("SELECT id, upload_session FROM files WHERE upload_session IS NOT NULL")
        return {int(r[0]): str(r[1]) for r in rows}

    def save_upload_session(self, entry_id: int, session: str | None) -> None:
        """Keep (or with None forget) the upload session of an entry, committed at once."""
        self._sql("UPDATE files SET upload_session=? WHERE id=?", (session, entry_id))

    def _load(self) -> None:
        inlined = dict(self._db.execute("SELECT id, data FROM synced_data").fetchall())
        rows = {
            r[0]: dict(zip(_COLUMNS, r, strict=True))
            for r in self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM files").fetchall()
        }
        names = set(os.listdir(self._data_fd))
        files: dict[int, str] = {}
        for name in sorted(names):
            if name.endswith(".id") and name[:-3] in names:
                continue
            if name.endswith(".id") and name[:-3].isdigit():
                self._unlink(name)  # an identity record without data describes nothing
            elif name.isdigit() and str(int(name)) == name:
                files[int(name)] = name
            else:
                self._quarantine(name, None, "not a cache data file name")
        max_id = 0
        for entry_id, name in sorted(files.items()):
            max_id = max(max_id, entry_id)
            st = self._lstat(name)
            if st is None:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
                self._quarantine(name, None, "not a plain file of ours (symlink, hard link or another user's)")
                rows.pop(entry_id, None)
                self._sql("DELETE FROM files WHERE id = ?", (entry_id,))
                continue
            row = rows.pop(entry_id, None)
            rec = self._read_identity(entry_id)
            e = self._entry_from(entry_id, row, rec)
            if e is None:
                self._quarantine(name, None, "no journal row and no identity record")
                continue
            if not valid_path(e.path):
                if e.dirty:
                    self._quarantine(name, None, f"its path {e.path!r} would leave the mount")
                    self._sql("DELETE FROM files WHERE id = ?", (entry_id,))
                else:
                    self._drop(entry_id)
                if not e.path.startswith(("\x00unlinked/", SPARE_PATH)):
                    log.error("cache: refused journal row %d: path %r would leave the mount", entry_id, e.path)
                continue
            if not e.dirty and (not e.complete or row is None or st.st_size != e.size):
                # a clean copy of server data (partial, of unknown completeness, or cut short by
                # a power cut): the server has it
                self._drop(entry_id)
                continue
            if e.dirty and entry_id in inlined:
                # its last fsync put its bytes in the journal, and it was not written since (a
                # write drops them first): after a power cut the data file may not hold them
                self._restore(entry_id, bytes(inlined[entry_id]))
                st = self._lstat(name) or st
            if e.dirty:
                # the file on disk is the truth (a crash may have hit between a write and the row update)
                e.size = st.st_size
                e.complete = True
                e.maybe_remote = True  # an upload may have been under way when we stopped
                if e.sent_md5:
                    e.uncertain_since = 0.0
            clash = self.paths.get(e.path)
            if clash is not None:
                loser, e = (clash, e) if (e.dirty, e.gen) > (clash.dirty, clash.gen) else (e, clash)
                self.entries.pop(loser.id, None)
                if loser.dirty:
                    self._quarantine(str(loser.id), loser.path, f"a newer copy of {loser.path!r} exists")
                    self._sql("DELETE FROM files WHERE id = ?", (loser.id,))
                else:
                    self._drop(loser.id)
            if row is None:
                self._insert_row(e)
                self.recovered.append(e.path)
                log.warning("cache: %r (%s) had no journal row; recovered from its identity record",
                            e.path, "not uploaded yet" if e.dirty else "clean")
            elif rec is None or int(rec.get("gen", -1)) != e.gen or (row["gen"] or 0) < e.gen or any(
                rec.get(k) != v for k, v in e.identity().items()
            ):
                self._save_row(e)
                self._write_identity(e, e.gen, e.identity())
            e.written = e.identity()
            self.entries[e.id] = e
            self.paths[e.path] = e
        if inlined:
            self._sql("DELETE FROM synced_data")  # restored (and synced), or of files gone
        for entry_id, row in rows.items():  # rows without a data file
            if row["dirty"]:
                log.error("cache: data of dirty %r is missing from %s; dropping its journal row",
                          row["path"], self.data_dir / str(entry_id))
            self._drop(entry_id)
        if max_id:
            # ids of recovered files must never be handed out again
            self._sql("INSERT OR IGNORE INTO sqlite_sequence (name, seq) SELECT 'files', 0 "
                      "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name='files')")
            self._sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'files'", (max_id,))
        if self.lost:
            log.error("cache: %d file(s) could not be placed and were kept in %s (nothing was deleted)",
                      len(self.lost), self.lost_found)

    def _restore(self, entry_id: int, data: bytes) -> None:
        """Put back the bytes an fsync put in the journal (`inline_data`), synced."""
        fd = self.open_data(entry_id)
        try:
            if os.fstat(fd).st_size != len(data) or os.pread(fd, len(data), 0) != data:
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
                log.warning("cache: data/%d restored from the journal (its last fsync)", entry_id)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _entry_from(self, entry_id: int, row: dict[str, Any] | None, rec: dict[str, Any] | None) -> CacheEntry | None:
        if row is None and rec is None:
            return None
        base: dict[str, Any] = dict(row) if row is not None else {"id": entry_id, "complete": 0, "last_used": 0.0}
        if row is not None:
            base["sent_md5"] = json.loads(row["sent_md5"]) if row.get("sent_md5") else []
        if rec is not None and (row is None or int(rec.get("gen", 0)) > int(row.get("gen") or 0)):
            # the identity record is newer than the journal (which lost updates): it wins
            for k in _IDENTITY:
                if k in rec:
                    base[k] = rec[k]
            base["gen"] = int(rec.get("gen", 0))
            if row is not None:
                log.warning("cache: the journal row of %r was older than its identity record; repaired", base["path"])
        try:
            return CacheEntry(
                id=entry_id, path=str(base["path"]), dirty=bool(base.get("dirty")), size=int(base.get("size") or 0),
                mtime_ns=int(base.get("mtime_ns") or 0), mode=int(base.get("mode") or 0o100644),
                base_uid=base.get("base_uid"), base_size=base.get("base_size"),
                base_modified=base.get("base_modified"), base_etag=base.get("base_etag"),
                complete=bool(base.get("complete")), last_used=float(base.get("last_used") or 0.0),
                gen=int(base.get("gen") or 0), sent_md5=list(base.get("sent_md5") or []),
            )
        except (TypeError, ValueError):
            return None

    def _insert_row(self, e: CacheEntry) -> None:
        self._sql("INSERT OR REPLACE INTO files (id, path) VALUES (?, ?)", (e.id, e.path))
        self._save_row(e)

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self._data_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _quarantine(self, name: str, path: str | None, reason: str) -> None:
        """Move data/<name> (and its identity record) to lost+found/ and report it."""
        try:
            os.mkdir(LOST_FOUND, 0o700, dir_fd=self._root_fd)
        except FileExistsError:
            pass
        label = (path or "").replace("/", "%2F")[-120:]
        dest = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-{label}" if label else "")
        lf = os.open(LOST_FOUND, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._root_fd)
        try:
            os.rename(name, dest, src_dir_fd=self._data_fd, dst_dir_fd=lf)
            try:
                os.rename(name + ".id", dest + ".id", src_dir_fd=self._data_fd, dst_dir_fd=lf)
            except FileNotFoundError:
                pass
        finally:
            os.close(lf)
        self.lost.append({"file": str(self.lost_found / dest), "path": path or "", "reason": reason})
        log.error("cache: kept data/%s as %s: %s", name, self.lost_found / dest, reason)

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._data_fd)
        except FileNotFoundError:
            pass

    def _unlink_files(self, entry_id: int) -> None:
        """Unlink an entry's data file and its identity record (any thread)."""
        self._unlink(str(entry_id))
        self._unlink(f"{entry_id}.id")

    def _drop(self, entry_id: int) -> None:
        # the data goes first: on a full disk that frees the space the journal needs
        self._saved.pop(entry_id, None)
        self._forget_inline(entry_id)
        self._unlink_files(entry_id)
        try:
            self._sql("DELETE FROM files WHERE id = ?", (entry_id,))
        except OSError as exc:
            # harmless: a row without data is dropped at the next start
            log.warning("cache: cannot remove journal row %d: %s", entry_id, exc)

    # -- queries ----------------------------------------------------------------------------

    def data_path(self, entry_id: int) -> Path:
        """For messages and tests; the code opens data files with `open_data`."""
        return self.data_dir / str(entry_id)

    def open_data(self, entry_id: int, flags: int = os.O_RDWR) -> int:
        """A descriptor of data/<id>, never through a symlink."""
        fd = os.open(str(entry_id), flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._data_fd)
        return fd

    def open_file(self, entry_id: int) -> IO[bytes]:
        """data/<id> as a binary file object for reading."""
        return os.fdopen(self.open_data(entry_id, os.O_RDONLY), "rb")

    def dirty_entries(self) -> list[CacheEntry]:
        return [e for e in self.entries.values() if e.dirty]

    def used_bytes(self) -> int:
        return sum(e.size if (e.complete or e.dirty) else len(e.blocks) * BLOCK_SIZE for e in self.entries.values())

    @staticmethod
    def entry_bytes(e: CacheEntry) -> int:
        """What `e` counts in `used_bytes`."""
        return e.size if (e.complete or e.dirty) else len(e.blocks) * BLOCK_SIZE

    # -- changes ----------------------------------------------------------------------------

    def create(self, path: str, *, mode: int = 0o100644, mtime_ns: int | None = None, dirty: bool = False) -> CacheEntry:
        """A new, empty, complete cache file; `dirty`: a file created here (one commit, never
        clean in the journal, so no state of it could pass for a copy of a server file)."""
        now = time.time()
        mtime = mtime_ns or time.time_ns()
        if self._recycled and self._recycled[0][1] <= self._synced_changes:
            self._take_recycled()
        if self._spares:
            e = self._spares.pop()
            # an empty data file whose name is on the disk already: one row update and the
            # identity record rewritten in place (the record says dirty before the row does)
            try:
                self._commit(e, path=path, dirty=dirty, mode=mode, mtime_ns=mtime, last_used=now)
            except BaseException:
                self._spares.append(e)
                raise
            self._register(e)
            return e
        cur = self._sql(
            "INSERT INTO files (path, dirty, size, mtime_ns, mode, complete, last_used, gen) VALUES (?, ?, 0, ?, ?, 1, ?, 1)",
            (path, int(dirty), mtime, mode, now),
        )
        entry_id = int(cur.lastrowid or 0)
        e = CacheEntry(id=entry_id, path=path, dirty=dirty, mode=mode, mtime_ns=mtime, complete=True, last_used=now,
                       gen=1)
        try:
            try:
                fd = self.open_data(entry_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                # a data file nothing knows of under a fresh id: keep it aside, never reuse it
                self._quarantine(str(entry_id), None, "found under an id the journal was handing out")
                fd = self.open_data(entry_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            self._data_dir_unsynced = True
            self._write_identity(e, e.gen, e.identity())
            e.written = e.identity()
        except BaseException:
            self._drop(entry_id)
            raise
        self._register(e)
        return e

    def _register(self, e: CacheEntry) -> None:
        old = self.paths.get(e.path)
        if old is not None and old.id != e.id:
            self.delete(old)
        self.entries[e.id] = e
        self.paths[e.path] = e

    # -- spare data files (see SPARES) ------------------------------------------------------

    def spares_wanted(self) -> int:
        """How many spare data files to make now (0 while enough are ready or coming)."""
        missing = SPARES - len(self._spares) - self._spares_coming
        return missing if missing >= SPARES // 2 else 0

    def prepare_spares(self, n: int) -> list[CacheEntry]:
        """Rows for `n` spare data files (main thread); `make_spares` makes their files."""
        out = []
        now = time.time()
        with self._transaction():
            for _ in range(n):
                cur = self._sql(
                    "INSERT INTO files (path, dirty, size, mtime_ns, mode, complete, last_used, gen)"
                    " VALUES (?, 0, 0, 0, 33188, 1, ?, 1)", (SPARE_PATH, now),
                )
                out.append(CacheEntry(id=int(cur.lastrowid or 0), path=SPARE_PATH, complete=True, last_used=now,
                                      gen=1))
        self._spares_coming += n
        return out

    def make_spares(self, spares: list[CacheEntry]) -> list[CacheEntry]:
        """Make the data files and identity records of `spares` and sync their names (on a
        worker thread: descriptors only). Returns those made; pass them to `add_spares`."""
        made: list[CacheEntry] = []
        try:
            for e in spares:
                try:
                    fd = self.open_data(e.id, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue  # a data file nothing knows of: left alone (add_spares drops the row)
                os.close(fd)
                try:
                    # no freeing of space from here: that is the journal's (main thread's) work
                    self._write_identity(e, e.gen, e.identity(), may_reclaim=False)
                except OSError:
                    self._unlink(str(e.id))  # ours and empty
                    raise
                e.written = e.identity()
                made.append(e)
            if made:
                os.fsync(self._data_fd)  # their names are on the disk before a create takes one
        except OSError as exc:
            log.warning("cache: cannot make spare data files: %s", exc)
            for e in made:
                self._unlink(str(e.id))
                self._unlink(f"{e.id}.id")
            made = []
        return made

    def add_spares(self, spares: list[CacheEntry], made: list[CacheEntry]) -> None:
        """`make_spares` returned `made` of `spares` (main thread): those are ready, the
        others' rows go (their files, if any, are not ours to delete)."""
        self._spares_coming -= len(spares)
        ids = {e.id for e in made}
        self._spares.extend(made)
        for e in spares:
            if e.id not in ids:
                try:
                    self._sql("DELETE FROM files WHERE id = ?", (e.id,))
                except OSError:
                    pass  # dropped at the next start

    def _take_recycled(self) -> None:
        """The oldest recycled data file, its spare row synced, is emptied: a ready spare."""
        e, _ = self._recycled.pop(0)
        try:
            os.close(self.open_data(e.id, os.O_WRONLY | os.O_TRUNC))
        except OSError as exc:
            log.warning("cache: cannot reuse data/%d: %s", e.id, exc)
            self._drop(e.id)  # a spare's row: nothing of anyone's
            return
        self._spares.append(e)

    def drop_recycled(self) -> int:
        """Drop the replaced files' data files kept to be spares (a full cache disk); how many."""
        n = len(self._recycled)
        for e, _ in self._recycled:
            self._drop(e.id)
        self._recycled.clear()
        return n

    def drop_spares(self) -> None:
        for e in self._spares:
            self._drop(e.id)
        self._spares.clear()
        self.drop_recycled()

    def create_for_remote(self, path: str, *, size: int, uid: str | None, modified: int | None, mode: int) -> CacheEntry:
        """An empty sparse cache file for a server file of `size` bytes; blocks arrive on demand."""
        e = self.create(path, mode=mode)
        fd = self.open_data(e.id, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        e.size = size
        e.complete = size == 0
        self._commit(e, base_uid=uid, base_size=size, base_modified=modified)
        return e

    def save(self, e: CacheEntry) -> None:
        """Write `e`'s fields to the journal (and its identity record when that changed)."""
        self._commit(e)

    def sync_files(self, data_fd: int | None = None, *, datasync: bool = False, journal: int | None = None,
                   together: bool = True) -> None:
        """Make what a power cut could still take durable (fsync), in one go: the data file
        `data_fd` (fdatasync with `datasync`), the journal's commits when `journal` is a mark
        of `journal_mark` (then pass it to `journal_synced`), the directory entry of a data
        file (the `data/` directory is synced when a file was created in it since its last
        sync) and, once, the cache directory's (the journal's own files). The identity records
        are not synced: they are only read when the journal is damaged. Safe to call from a
        worker thread: it uses descriptors and two flags only. `together=False`: one after
        the other on this thread (no thread woken: cheaper when nothing else is waiting)."""
        jobs: list[Callable[[], None]] = []
        if data_fd is not None:
            jobs.append(lambda: (os.fdatasync if datasync else os.fsync)(data_fd))
        if journal is not None:
            jobs.append(self._fsync_journal)
        data_dir = self._data_dir_unsynced
        if data_dir:
            self._data_dir_unsynced = False  # before the sync: a create meanwhile sets it again
            jobs.append(lambda: os.fsync(self._data_fd))
        root = not self._root_synced
        if root:
            jobs.append(lambda: os.fsync(self._root_fd))
        try:
            if together:
                self._run_together(jobs)
            else:
                for job in jobs:
                    job()
        except BaseException:
            if data_dir:
                self._data_dir_unsynced = True
            raise
        if root:
            self._root_synced = True

    def _run_together(self, jobs: list[Callable[[], None]]) -> None:
        """Run the fsyncs at once, each on its own thread (the first here): the file system
        commits them together, so three cost about what one does (a data file, the -wal and
        the data/ directory in a row cost 2.7 ms here, at once 1.0 ms, the data file alone
        0.8 ms). Raises the first error once all are done."""
        if len(jobs) <= 1:
            for job in jobs:
                job()
            return
        futures = [self._sync_pool.submit(job) for job in jobs[1:]]
        first: BaseException | None = None
        try:
            jobs[0]()
        except BaseException as exc:  # noqa: BLE001 - raised below, after the others finished
            first = exc
        for f in futures:
            try:
                f.result()
            except BaseException as exc:  # noqa: BLE001
                first = first or exc
        if first is not None:
            raise first

    def mark_dirty(self, e: CacheEntry) -> None:
        """clean -> dirty, journal first: raises (ENOSPC...) and leaves `e` clean if it cannot."""
        if not e.dirty:
            # synced before the bytes change: a power cut must not leave changed bytes in a
            # file the journal calls a clean copy of the server's
            self._commit(e, _durable=True, dirty=True, complete=True)

    def mark_clean(self, e: CacheEntry, *, uid: str | None, size: int, modified: int | None, etag: str | None = None) -> None:
        """Uploaded: a clean copy of the server's, complete in the journal once its data file
        is synced (`mark_complete`): the bytes of a file nobody fsync'ed may not be on the disk."""
        old = e.unsynced
        self._take_unsynced(e)
        try:
            self._commit(e, dirty=False, complete=True, base_uid=uid, base_size=size, base_modified=modified,
                         base_etag=etag, sent_md5=[])
        except BaseException:
            e.unsynced = old
            raise
        self._forget_inline(e.id)  # after the row: a clean row's copy is never restored

    def inline_data(self, e: CacheEntry, fd: int) -> bool:
        """An fsync of dirty `e`: its bytes into the journal (committed; the caller syncs the
        journal), so that its data file needs no sync (INLINE_MAX). False: too large, or the
        journal refused (the caller syncs the data file, as for any file)."""
        if not e.dirty or e.size > INLINE_MAX:
            return False
        data = os.pread(fd, INLINE_MAX + 1, 0)
        if len(data) != e.size:
            return False
        try:
            self._sql("INSERT OR REPLACE INTO synced_data (id, data) VALUES (?, ?)", (e.id, data))
        except OSError:
            return False
        self.inlined.add(e.id)
        return True

    def save_fsynced(self, e: CacheEntry, fd: int) -> bool:
        """The journal's part of an fsync of dirty `e`, in one commit: its row (size, mtime)
        and, for a small file, its bytes (`inline_data`). True: the bytes are in the journal,
        so only the journal is to be synced; False: its data file is too. Raises (ENOSPC...)
        if not even the row can be committed."""
        was = e.id in self.inlined
        try:
            with self._transaction():
                self._commit(e)
                inlined = self.inline_data(e, fd)
        except OSError:
            # rolled back (a full disk): the journal's copy is what it was; the row alone
            self._saved.pop(e.id, None)
            if not was:
                self.inlined.discard(e.id)
            self.save(e)
            return False
        return inlined

    def uninline(self, e: CacheEntry, fd: int, *, synced: bool = False) -> None:
        """`e`'s bytes are about to change: if its last fsync put them in the journal, its data
        file is synced first (`synced`: the caller did, after that fsync) and the journal's copy
        dropped (a kill -9 then keeps the newer bytes; a power cut the synced ones). Raises
        (ENOSPC, EIO) if the copy cannot be dropped."""
        if e.id not in self.inlined:
            return
        if not synced:
            os.fdatasync(fd)
        self._forget_inline(e.id, strict=True)

    def _forget_inline(self, entry_id: int, *, strict: bool = False) -> None:
        """Delete the journal's copy of `entry_id`'s last fsync'ed bytes (synced_data), if it
        has one. `strict` (its bytes are about to change): raise if the journal refuses, the
        copy still known; else (uploaded or deleted) a failure is only logged and the copy
        forgotten: the copy of a row that is gone or clean is never restored."""
        if entry_id not in self.inlined:
            return
        try:
            self._sql("DELETE FROM synced_data WHERE id = ?", (entry_id,))
        except OSError as exc:
            if strict:
                raise
            log.warning("cache: cannot drop the journal's copy of data/%d: %s", entry_id, exc)
        self.inlined.discard(entry_id)

    def mark_complete(self, e: CacheEntry) -> None:
        """Every byte of clean `e` is in its data file: complete in memory at once (reads are
        served from it), in the journal once the data file is synced (`sync_completed`, in
        the background). Before that, a power cut cannot leave a row that calls a data file
        of holes complete: its row says incomplete, so it is fetched again."""
        e.complete = True
        e.blocks.clear()
        if not e.dirty:
            self._take_unsynced(e)
        self.save(e)

    def _take_unsynced(self, e: CacheEntry) -> None:
        """`e`'s bytes are complete and clean but not synced yet: a new token, which
        `completed_synced` clears only if no later completion took another meanwhile."""
        self._unsynced_seq += 1
        e.unsynced = self._unsynced_seq

    def completed_unsynced(self) -> list[tuple[int, int]]:
        """(id, token) of the complete clean entries whose data files are not synced yet."""
        return [(e.id, e.unsynced) for e in self.entries.values() if e.unsynced and not e.dirty and e.complete]

    def sync_data_files(self, ids: list[int]) -> list[int]:
        """fdatasync the data files of `ids` (several at once; any thread: descriptors only).
        Returns those synced (a file deleted meanwhile is not)."""
        done: list[int] = []

        def one(entry_id: int) -> None:
            try:
                fd = self.open_data(entry_id, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            done.append(entry_id)

        for i in range(0, len(ids), 8):
            self._run_together([lambda x=x: one(x) for x in ids[i:i + 8]])
        return done

    def completed_synced(self, pending: list[tuple[int, int]], synced: list[int]) -> None:
        """`sync_data_files` synced `synced` of `pending` (main thread): those whose content
        did not change since become complete in the journal."""
        ok = set(synced)
        for entry_id, token in pending:
            e = self.entries.get(entry_id)
            if entry_id not in ok or e is None or e.unsynced != token:
                continue  # gone, or fetched (or uploaded) again since: the next round syncs it
            e.unsynced = 0
            if not e.dirty and e.complete:
                try:
                    self.save(e)
                except OSError as exc:
                    log.warning("cache: cannot record %r as complete: %s", e.path, exc)

    def sync_completed(self) -> None:
        """Sync the data files of complete clean entries and record them complete (this thread)."""
        pending = self.completed_unsynced()
        if pending:
            self.completed_synced(pending, self.sync_data_files([i for i, _ in pending]))

    def set_base(self, e: CacheEntry, *, uid: str | None, size: int | None, modified: int | None,
                 etag: str | None = None) -> None:
        self._commit(e, base_uid=uid, base_size=size, base_modified=modified, base_etag=etag)

    def note_attempt(self, e: CacheEntry, md5: str, *, sync: bool = True) -> None:
        """An upload of content with this MD5 starts (journaled: after a crash its outcome is
        unknown). Synced before the upload is sent, so that after a power cut too a server
        copy with it is known to be ours; `sync=False`: the caller syncs the journal itself
        before sending (one sync for a batch of files)."""
        if md5 not in e.sent_md5:
            self._commit(e, _durable=sync, sent_md5=[*e.sent_md5[-3:], md5])

    def rename(self, old: str, new: str, *, is_dir: bool = True, replaced: CacheEntry | None = None,
               recycle: bool = False, **changes: Any) -> None:
        """Re-point the entry at `old` and every entry below it (a directory rename; a file,
        `is_dir=False`, has none below it: no walk of every entry), and delete the entry the
        rename replaces (`replaced`, which the caller let go of, or one found at a new path).
        `changes`: fields the renamed file gets too (its base, when it replaces the server's
        copy). One journal transaction for all of it (pending metadata, the replaced rows,
        the renamed ones), so a kill -9 at any point leaves the rename done or not done, never
        half (docs/write-back.md). A replaced row is not deleted in it but becomes a spare's
        (`recycle`, a small dirty file: its data file is reused, `_recycled`) or an unlinked
        one's (deleted, its files unlinked later, `delete(later=True)`); the identity records
        follow the commit (a row newer than its record wins at start)."""
        if is_dir:
            prefix = old + "/"
            moved = [e for p, e in self.paths.items() if p == old or p.startswith(prefix)]
        else:
            moved = [e for e in (self.paths.get(old),) if e is not None]
        gone = [replaced] if replaced is not None else []
        for e in moved:
            clash = self.paths.get(new + e.path[len(old):])
            if clash is not None and clash is not e and all(clash is not g for g in gone):
                gone.append(clash)
        now = time.time()
        ghosts = [
            CacheEntry(id=g.id, path=SPARE_PATH, complete=True, last_used=now, gen=g.gen + 1)
            if recycle and g is replaced and g.dirty and g.size <= RECYCLE_MAX and len(self._recycled) < SPARES
            else CacheEntry(id=g.id, path=f"\x00unlinked/{g.id}", gen=g.gen + 1)
            for g in gone
        ]
        before = [(e, e.path, e.gen, e.written, {k: getattr(e, k) for k in changes}) for e in moved]
        records: list[CacheEntry] = []
        try:
            with self._transaction():
                self._rename_meta(old, new)
                for g, ghost in zip(gone, ghosts, strict=True):
                    self._saved.pop(g.id, None)
                    self._save_row(ghost)
                    if g.id in self.inlined:
                        self._sql("DELETE FROM synced_data WHERE id = ?", (g.id,))
                for e in moved:
                    ident = e.written if e.written is not None else e.identity()
                    e.path = new + e.path[len(old):]
                    if not is_dir:
                        for k, v in changes.items():
                            setattr(e, k, v)
                    if e.identity() != ident:
                        e.gen += 1
                        records.append(e)
                    self._save_row(e)
        except OSError as exc:
            # memory follows the server; the journal catches up at the next save
            log.error("cache: cannot record the rename of %r to %r: %s", old, new, exc)
            try:
                self._meta_paths = {str(r[0]) for r in self._db.execute("SELECT path FROM pending_meta")}
            except sqlite3.DatabaseError:
                self._meta_paths.add(old)  # unknown: the next rename of it asks the table
            for e, path, gen, written, vals in before:
                self._saved.pop(e.id, None)
                e.path, e.gen, e.written = path, gen, written
                for k, v in vals.items():
                    setattr(e, k, v)
            records = []
            for g in gone:
                self.delete(g)  # the plain way (its data first: on a full disk that frees space)
            for e in moved:
                e.path = new + e.path[len(old):]
                if not is_dir:
                    for k, v in changes.items():
                        setattr(e, k, v)
            gone = ghosts = []
        mark = self._db.total_changes
        for g in gone:
            self.entries.pop(g.id, None)
            if self.paths.get(g.path) is g:
                del self.paths[g.path]
            self.inlined.discard(g.id)
        for e, path, *_ in before:
            if self.paths.get(path) is e:
                del self.paths[path]
        for e in moved:
            self.paths[e.path] = e
        for e in [*records, *(g for g in ghosts if g.path == SPARE_PATH)]:  # the others' rows are unlinked ones
            try:
                self._write_identity(e, e.gen, e.identity(), may_reclaim=False)  # in place
                e.written = e.identity()
            except OSError as exc:
                log.warning("cache: cannot update the identity record of %r: %s (the journal has it)", e.path, exc)
        for ghost in ghosts:
            if ghost.path == SPARE_PATH and ghost.written is not None:
                self._recycled.append((ghost, mark))
            else:
                self.delete(ghost, later=True)  # its row goes, its files are unlinked later

    def end_row(self, e: CacheEntry) -> None:
        """The journal statements that end `e`'s row for `delete(e, later=True, ended=True)`:
        it becomes an unlinked one's, a generation newer than its identity record (so it wins
        over the record at the next start, and a data file a kill -9 left before its unlinking
        is dropped then, never recovered), and the journal's copy of its bytes goes. Made in
        the caller's transaction, to commit with what the deletion goes with (the namespace
        op of an unlink: one commit, not two, and a kill -9 keeps both or neither); memory
        is left as it is (but for a row cache: the caller's commit may fail)."""
        ghost = e if e.path == f"\x00unlinked/{e.id}" else CacheEntry(id=e.id, path=f"\x00unlinked/{e.id}", gen=e.gen + 1)
        try:
            self._save_row(ghost)
            if e.id in self.inlined:
                self._sql("DELETE FROM synced_data WHERE id = ?", (e.id,))
        finally:
            if ghost is not e:
                self._saved.pop(e.id, None)  # what the row says is known once it is committed

    def delete(self, e: CacheEntry, *, later: bool = False, ended: bool = False) -> None:
        """Forget `e` and delete its files; `later`: its files are unlinked by `unlink_doomed`
        (on a worker thread: two inode deletions were most of an unlink's cost), after its
        row says it is unlinked (`end_row`; `ended`: the caller committed that already), and
        the row itself goes after them (`forget_unlinked`)."""
        self.entries.pop(e.id, None)
        if self.paths.get(e.path) is e:
            del self.paths[e.path]
        if later:
            try:
                if not ended and e.id in self.inlined:
                    with self._transaction():
                        self.end_row(e)
                elif not ended:
                    self.end_row(e)  # one statement: its own commit
            except OSError:
                pass  # the plain way below (the data first: on a full disk that frees space)
            else:
                self._saved.pop(e.id, None)
                self.inlined.discard(e.id)
                self._doomed.append(e.id)
                return
        self._drop(e.id)

    def doomed(self) -> int:
        """How many deleted entries still have files to unlink (see `unlink_doomed`)."""
        return len(self._doomed)

    def unlink_doomed(self) -> int:
        """Unlink the files of the entries `delete(later=True)` forgot (any thread; the trio
        thread too, on a full disk); returns how many. Their rows go at `forget_unlinked`."""
        n = 0
        while True:
            try:
                entry_id = self._doomed.pop()
            except IndexError:  # none left (another thread may have taken the last one)
                return n
            self._unlink_files(entry_id)
            self._unlinked.append(entry_id)
            n += 1

    def forget_unlinked(self) -> int:
        """Delete the rows of the entries whose files `unlink_doomed` unlinked, in one commit
        for a burst (main thread); returns how many. Rows a kill -9 left before this are
        dropped at the next start (unlinked ones, and rows without a data file)."""
        ids: list[int] = []
        while self._unlinked:
            ids.append(self._unlinked.popleft())
        if not ids:
            return 0
        try:
            with self._transaction():
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    self._sql(f"DELETE FROM files WHERE id IN ({','.join('?' * len(chunk))})", tuple(chunk))
        except OSError as exc:
            log.warning("cache: cannot remove %d unlinked rows (dropped at the next start): %s", len(ids), exc)
        return len(ids)

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

    # -- server moves under way (a rename whose outcome a crash could leave unknown) -------

    def begin_move(self, old: str, new: str) -> None:
        """Journal (committed at once) that the server is asked to move `old` to `new`: if the
        daemon dies before it learns the outcome, the next start asks the server."""
        self._sql("INSERT INTO pending_moves (old, new) VALUES (?, ?)", (old, new))
        self.sync_journal()

    def end_move(self, old: str, new: str) -> None:
        """The move's outcome is known and the journal's paths follow it."""
        self._sql("DELETE FROM pending_moves WHERE old=? AND new=?", (old, new))

    def pending_moves(self) -> list[tuple[str, str]]:
        rows = self._sql("SELECT old, new FROM pending_moves ORDER BY rowid").fetchall()
        return [(str(o), str(n)) for o, n in rows if valid_path(str(o)) and valid_path(str(n)) and o and n]

    # -- pending metadata updates (mode and mtime not yet on the server) --------------------

    def pending_meta(self) -> list[tuple[str, bool, int, int]]:
        """(path, is_dir, mode, mtime_ns) of every metadata update not yet on the server."""
        rows = self._sql("SELECT path, is_dir, mode, mtime_ns FROM pending_meta ORDER BY path").fetchall()
        return [(str(p), bool(d), int(m), int(t)) for p, d, m, t in rows if valid_path(str(p)) and p]

    def save_meta(self, path: str, *, is_dir: bool, mode: int, mtime_ns: int) -> None:
        """Journal the mode and mtime the entry at `path` is to get on the server (committed at
        once, so a remount after a crash still sends them)."""
        self._sql("INSERT OR REPLACE INTO pending_meta (path, is_dir, mode, mtime_ns) VALUES (?, ?, ?, ?)",
                  (path, int(is_dir), mode, mtime_ns))  # fmt: skip
        self._meta_paths.add(path)

    def drop_meta(self, path: str, *, below: bool = False) -> None:
        """The update of `path` reached the server (or the entry is gone); `below`: and those under it."""
        self._sql("DELETE FROM pending_meta WHERE path=?", (path,))
        if below:
            self._sql("DELETE FROM pending_meta WHERE substr(path, 1, ?) = ?", (len(path) + 1, path + "/"))
        self._meta_paths.discard(path)
        if below:
            self._meta_paths = {p for p in self._meta_paths if not p.startswith(path + "/")}

    def _rename_meta(self, old: str, new: str) -> None:
        """The pending metadata updates follow a rename (in `rename`'s transaction; after a
        rollback `rename` reads `_meta_paths` again)."""
        if not any(p in (old, new) or p.startswith((old + "/", new + "/")) for p in self._meta_paths):
            return
        self.drop_meta(new, below=True)  # what the rename replaces
        self._sql("UPDATE pending_meta SET path = ? || substr(path, ?) WHERE path = ? OR substr(path, 1, ?) = ?",
                  (new, len(old) + 1, old, len(old) + 1, old + "/"))  # fmt: skip
        self._meta_paths = {new + p[len(old):] if p == old or p.startswith(old + "/") else p for p in self._meta_paths}

    def flush_usage(self) -> None:
        """Persist last-used times (LRU order across restarts)."""
        try:
            with self._transaction():
                for e in self.entries.values():
                    self._sql("UPDATE files SET last_used=? WHERE id=?", (e.last_used, e.id))
        except OSError as exc:
            log.warning("cache: cannot save last-used times: %s", exc)

    def close(self) -> None:
        try:
            try:
                self.sync_completed()  # what was fetched stays cached across the restart
            except OSError as exc:
                log.warning("cache: cannot sync the cached files: %s", exc)
            self.unlink_doomed()
            self.forget_unlinked()
            self.drop_spares()
            self.flush_usage()
        finally:
            with self._ckpt_lock:
                if self._ckpt_db is not None:
                    self._ckpt_db.close()
                    self._ckpt_db = None
            self._db.close()
            self._sync_pool.shutdown(wait=True)
            for fd in (self._data_fd, self._root_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _transaction(self) -> _Tx:
        return _Tx(self._db, self._journal_path)


def journal_error(exc: sqlite3.DatabaseError, path: Path) -> OSError:
    """The OSError for a journal statement SQLite refused: ENOSPC when the disk is full
    (SQLITE_FULL, 13), else EIO."""
    if getattr(exc, "sqlite_errorcode", 0) == 13 or "full" in str(exc).lower():
        return OSError(errno.ENOSPC, f"the cache disk is full (journal {path})")
    return OSError(errno.EIO, f"cache journal: {exc}")


class _Tx:
    """One journal transaction. A COMMIT the disk refuses is an OSError like every other
    journal statement's (`_sql`): ENOSPC for a full disk, else EIO; the transaction is then
    rolled back (SQLite may already have rolled it back itself on SQLITE_FULL)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass  # nothing more to undo; the caller's error is what counts

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            self._rollback()
            raise journal_error(err, self.path) from None
