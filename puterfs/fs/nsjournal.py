"""The namespace journal: mkdir, rmdir, unlink and rename complete against the local cache,
and the server follows in order, in the background (docs/namespace.md).

An op is journaled (one SQLite row in the cache journal, committed before the handler
returns) *before* memory changes, so a full cache disk fails the syscall and changes nothing,
and a daemon killed with ops pending applies them at its next start. Ops are kept in the
order they happened and describe the server's way from its state to ours:

* ``mkdir P``; ``delete P`` (``is_dir``: a directory, deleted non-recursively); ``move S -> D``
  (``overwrite``: the server holds something at D that the move replaces, as rename(2) does).
* **Coalescing** when an op is added: an rmdir of a directory whose ``mkdir`` is still pending
  drops both; a rename of a pending ``mkdir``'s directory or of a pending move's destination
  rewrites that op (a directory renamed twice is moved once; renamed back, not at all), and
  the later pending ops below it follow; an unlink of a pending move's destination deletes the
  source instead. A file created and deleted (or renamed) before its upload never appears here
  at all: files reach the server through the upload queue, under their current name. Only ops
  never sent coalesce: one sent in a request whose answer was lost may be done on the server
  (``tried``), and rewriting it would leave the server with what it made.
* **Batches**: the applier (``run``) takes the pending ops in order, up to ``MAX_BATCH`` per
  JSON ``/batch`` request (the server runs a batch's ops in order). A move never shares a batch
  with an op on a related path (see ``_batch``): a batch whose answer was lost is sent again,
  and only ops that cannot undo each other may be repeated.
* **Ordering against uploads**: an upload (or metadata update) of path P waits until no pending
  op concerns P or an ancestor of P (``wait_path``); the applier waits for uploads in flight
  under the paths of the ops it is about to send (the operations do that, ``apply``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger(__name__)

MAX_BATCH = 64  # ops per /batch request (the server's file cap; JSON ops have none documented)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nsops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    dest TEXT NOT NULL DEFAULT '',
    is_dir INTEGER NOT NULL DEFAULT 0,
    overwrite INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""


def under(path: str, top: str) -> bool:
    """`path` is `top` or below it ("" is the mount's root, above everything)."""
    return not top or path == top or path.startswith(top + "/")


def related(a: str, b: str) -> bool:
    return under(a, b) or under(b, a)


def rebase(path: str, old: str, new: str) -> str:
    return new + path[len(old):] if under(path, old) and old else path


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def lineage(path: str) -> list[str]:
    """`path` and each of its ancestors below the root ("a/b/c", "a/b", "a")."""
    out = []
    while path:
        out.append(path)
        path = parent_of(path)
    return out


@dataclass(eq=False)
class NsOp:
    seq: int
    kind: str  # "mkdir" | "delete" | "move"
    path: str  # mkdir, delete: the path; move: the source
    dest: str = ""  # move: the destination
    is_dir: bool = False
    overwrite: bool = False
    created: float = 0.0
    node: Any = None  # the inode-table node it was made for, while this process runs (not journaled)
    # sent at least once without a known outcome (or loaded from the journal: a daemon killed
    # mid-send): the server may have done it already, so it is never rewritten or dropped
    tried: bool = False

    def paths(self) -> tuple[str, ...]:
        return (self.path, self.dest) if self.kind == "move" else (self.path,)

    def describe(self) -> str:
        if self.kind == "move":
            return f"move {self.path} -> {self.dest}"
        return f"{'rmdir' if self.kind == 'delete' and self.is_dir else self.kind} {self.path}"


# what an apply function says of each op: done, or to be retried later (with the error)
ApplyFn = Callable[[list[NsOp]], Awaitable[dict[int, BaseException | None]]]


class NamespaceJournal:
    def __init__(self, cache: Any, *, delay: float = 2.0, backoff_max: float = 300.0) -> None:
        self.cache = cache
        self.delay = delay  # an op waits this long for more to coalesce and batch with
        self.backoff_max = backoff_max
        # the cache journal's connection: the same SQLite file, so both survive a crash alike
        cache._sql(_SCHEMA)
        self.ops: list[NsOp] = []
        for row in cache._sql(
            "SELECT seq, kind, path, dest, is_dir, overwrite, created FROM nsops ORDER BY seq"
        ).fetchall():
            seq, kind, path, dest, is_dir, overwrite, created = row
            if kind not in ("mkdir", "delete", "move"):
                log.error("namespace journal: ignoring an op of unknown kind %r (seq %d)", kind, seq)
                continue
            # the last run may have sent it before it died: as good as tried
            self.ops.append(NsOp(seq, kind, path, dest or "", bool(is_dir), bool(overwrite), created, tried=True))
        self.apply: ApplyFn | None = None
        self.on_change: Callable[[], None] = lambda: None
        self._wake = trio.Event()
        self._changed = trio.Event()  # set (and replaced) whenever ops leave the journal
        self._urgent = 0  # callers waiting for ops to reach the server: no quiet period
        self.attempts = 0
        self.retry_at = -math.inf
        self.last_error: str | None = None
        self.applied = 0
        self.sending: list[NsOp] = []  # the batch in flight
        # the ops' paths and their parents, counted, for lookups in O(depth) instead of a scan
        # of every op (rm -rf of 1,000 files keeps 1,000 ops pending); rebuilt when `ops` or
        # an op's paths changed (every such change goes through the journal: `_touched`)
        self._index_of: int | None = None
        self._version = 0
        self._paths: dict[str, int] = {}
        self._parents: dict[str, int] = {}
        self._scopes: list[tuple[set[str], set[str]]] = []

    def _touched(self) -> None:
        self._version += 1

    def _index(self) -> None:
        if self._index_of == self._version:
            return
        self._paths, self._parents, self._scopes = {}, {}, []
        for op in self.ops:
            self._index_op(op)
        self._index_of = self._version

    def _index_op(self, op: NsOp) -> None:
        if not self._scopes:
            self._scopes = [(set(), set())]
        folders, subtrees = self._scopes[0]
        for p in op.paths():
            self._paths[p] = self._paths.get(p, 0) + 1
            q = parent_of(p)
            self._parents[q] = self._parents.get(q, 0) + 1
            folders.add(q)
            subtrees.add(p)

    # ------------------------------------------------------------------ state

    def pending(self) -> int:
        return len(self.ops)

    def describe_pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The first `limit` pending ops (all: None), oldest first, as the state file names them."""
        ops = self.ops if limit is None else self.ops[: max(limit, 0)]
        return [{"op": op.describe(), "path": op.dest or op.path, "since": op.created} for op in ops]

    def blocking(self, path: str) -> bool:
        """Whether a pending op concerns `path` or one of its ancestors (an upload of `path`
        must wait for it)."""
        self._index()
        return any(p in self._paths for p in lineage(path))

    def upload_blocked(self, path: str) -> bool:
        """Whether an upload of `path` must wait: a pending op concerns it or an ancestor,
        other than a mkdir of an ancestor (every upload creates missing parents itself)."""
        if not self.blocking(path):
            return False
        return any(
            under(path, p) and not (op.kind == "mkdir" and p != path) for op in self.ops for p in op.paths()
        )

    def expose(self, path: str) -> None:
        """An upload of `path` is about to be sent (it creates missing parents): the pending
        mkdirs of its ancestors may be carried out by it, so from now on they count as tried
        (never coalesced away or rewritten); applied later, they find their directory (mkdir
        is idempotent)."""
        if self.blocking(path):
            for op in self.ops:
                if op.kind == "mkdir" and under(path, op.path):
                    op.tried = True

    async def wait_upload(self, path: str) -> None:
        """Wait until an upload of `path` may be sent (see `upload_blocked`); the caller must
        `expose(path)` with no await in between."""
        while self.upload_blocked(path):
            await self._wait_changed()

    def scopes(self) -> list[tuple[set[str], set[str]]]:
        """(folders, subtrees) the pending ops touch, as `PuterOperations.mutating` has them
        (kept up to date in place as ops are added: read them, never change them)."""
        self._index()
        return self._scopes

    def listing_blocked(self, path: str) -> bool:
        """Whether the server's listing of directory `path` may not show our state yet: a
        pending op on an entry in it, on it, or on an ancestor."""
        self._index()
        return path in self._parents or any(p in self._paths for p in lineage(path))

    def listing_source(self, path: str) -> str | None:
        """The server path whose listing is directory `path`'s when the only pending ops that
        concern it rename it or an ancestor (its entries are the same, under another name);
        None when an op changes an entry in it, or it is new."""
        name = path  # its path after the op looked at, walking back
        for op in reversed(self.ops):
            if any(parent_of(p) == name for p in op.paths()):
                return None
            if op.kind == "move" and under(name, op.dest):
                name = rebase(name, op.dest, op.path)
            elif under(name, op.path) and op.kind != "move":
                return None  # made (or removed) by a pending op
            if any(parent_of(p) == name for p in op.paths()):
                return None
        return name

    def server_path(self, path: str) -> str | None:
        """Where the server holds what is at `path` here (pending renames undone), None when
        the server has nothing there yet (below a pending mkdir)."""
        return _undo(path, self.ops)

    def _tried(self) -> int:
        """How many ops, from the first, were sent with their outcome unknown (a prefix)."""
        n = 0
        while n < len(self.ops) and self.ops[n].tried:
            n += 1
        return n

    def server_paths(self, path: str) -> list[str]:
        """Every path the server may hold what is at `path` here under, the likeliest first:
        every pending op undone (`server_path`), then the ops sent with their outcome unknown
        taken as done, one more at a time (the server runs them in order). Empty when the
        server has nothing there yet."""
        out: list[str] = []
        for k in range(self._tried() + 1):
            p = _undo(path, self.ops[k:])
            if p is not None and p not in out:
                out.append(p)
        return out

    def listing_sources(self, path: str) -> list[str]:
        """`listing_source` and, when ops sent with their outcome unknown rename it or an
        ancestor, the names the server may hold it under if they got through."""
        first = self.listing_source(path)
        if first is None:
            return []
        out = [first]
        for k in range(1, self._tried() + 1):
            p = _undo(path, self.ops[k:])
            if p is not None and p not in out:
                out.append(p)
        return out

    async def wait_path(self, path: str) -> None:
        """Wait until no pending op concerns `path` or an ancestor (applied at once, no quiet
        period). Returns synchronously after the check: the caller's next step sees it true."""
        while self.blocking(path):
            await self._wait_changed()

    async def wait_listing(self, path: str) -> None:
        while self.listing_blocked(path):
            await self._wait_changed()

    async def wait_all(self) -> None:
        """Wait until every op pending now has reached the server (or been dropped)."""
        last = self.ops[-1].seq if self.ops else 0
        while self.ops and self.ops[0].seq <= last:
            await self._wait_changed()

    async def _wait_changed(self) -> None:
        self._urgent += 1
        self._wake.set()
        try:
            await self._changed.wait()
        finally:
            self._urgent -= 1

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self.on_change()

    # ------------------------------------------------------------------ journaling

    def _insert(self, op: NsOp) -> None:
        cur = self.cache._sql(
            "INSERT INTO nsops (kind, path, dest, is_dir, overwrite, created) VALUES (?, ?, ?, ?, ?, ?)",
            (op.kind, op.path, op.dest, int(op.is_dir), int(op.overwrite), op.created),
        )
        op.seq = int(cur.lastrowid or 0)

    def _update(self, op: NsOp) -> None:
        self.cache._sql(
            "UPDATE nsops SET kind=?, path=?, dest=?, is_dir=?, overwrite=? WHERE seq=?",
            (op.kind, op.path, op.dest, int(op.is_dir), int(op.overwrite), op.seq),
        )
        self._touched()

    def _delete_row(self, op: NsOp) -> None:
        self.cache._sql("DELETE FROM nsops WHERE seq=?", (op.seq,))
        self._touched()

    def _append(self, op: NsOp, also: Callable[[], None] | None = None) -> NsOp:
        if also is None:
            self._insert(op)  # raises (ENOSPC) before anything changed
        else:
            with self.cache._transaction():  # one commit for both; raises before anything changed
                self._insert(op)
                also()
        self.ops.append(op)
        if self._index_of == self._version:
            self._index_op(op)  # kept up to date: an rm -rf appends an op per file
        if len(self.ops) == 1:
            # the applier sleeps until an op comes; with ops pending it waits for the quiet
            # period of the first, sends, or backs off, and looks at `ops` again after each:
            # an op appended behind others changes none of that (an rm -rf appends 1,000)
            self._wake.set()
        self.on_change()
        return op

    def _producer(self, path: str) -> int | None:
        """The index of the pending op that made `path` what it is (a mkdir of it, a move onto
        it), when no later op concerns an ancestor of it; else None."""
        if not self.blocking(path):
            return None  # no op concerns it or an ancestor (the common case: a quick look)
        for i in range(len(self.ops) - 1, -1, -1):
            op = self.ops[i]
            if op.tried or op in self.sending:
                # on its way, or sent before with its outcome unknown (a lost answer): the
                # server may have done it, so it stays as it is and what follows is appended
                return None
            if (op.kind == "mkdir" and op.path == path) or (op.kind == "move" and op.dest == path):
                return i
            if any(under(path, p) and p != path for p in op.paths()):
                return None  # an ancestor changed since: the paths no longer line up
            if any(p == path for p in op.paths()):
                return None  # the path itself was vacated or created by something else
        return None

    def _later_touch(self, i: int, path: str) -> bool:
        return any(related(p, path) for op in self.ops[i + 1:] for p in op.paths())

    def record_mkdir(self, path: str, node: Any = None) -> None:
        self._append(NsOp(0, "mkdir", path, is_dir=True, created=time.time(), node=node))

    def record_delete(self, path: str, *, is_dir: bool, also: Callable[[], None] | None = None) -> None:
        """Journal the deletion of `path`; `also`: journal statements of the caller's that
        commit with it, in one transaction (the end of a deleted file's cache row: one commit
        per unlink). Raises (ENOSPC) with nothing changed when the journal cannot take it."""
        i = self._producer(path)
        if i is not None and not self._later_touch(i, path):
            op = self.ops[i]
            if op.kind == "mkdir":
                # made and removed before the server heard of it: neither goes
                with self.cache._transaction():
                    self._delete_row(op)
                    if also is not None:
                        also()
                del self.ops[i]
                self._notify()
                return
            if not op.overwrite:
                # moved here, now deleted: delete it where the server has it
                was = op.kind, op.dest, op.is_dir
                op.kind, op.dest, op.is_dir = "delete", "", is_dir
                try:
                    with self.cache._transaction():
                        self._update(op)
                        if also is not None:
                            also()
                except BaseException:
                    op.kind, op.dest, op.is_dir = was
                    raise
                self.on_change()
                return
        self._append(NsOp(0, "delete", path, is_dir=is_dir, created=time.time()), also)

    def record_move(self, src: str, dst: str, *, is_dir: bool, overwrite: bool, node: Any = None) -> None:
        i = self._producer(src)
        if i is not None and not overwrite and not any(o.tried for o in self.ops[i + 1:]) and not any(
            related(p, dst) or (related(p, src) and not under(p, src))
            for op in self.ops[i + 1:] for p in op.paths()
        ):
            op = self.ops[i]
            if op.kind == "mkdir" or not op.overwrite:
                later = [o for o in self.ops[i + 1:] if any(under(p, src) for p in o.paths())]
                with self.cache._transaction():
                    if op.kind == "move" and op.path == dst:
                        self._delete_row(op)  # renamed back: nothing to do
                    else:
                        if op.kind == "mkdir":
                            op.path = dst
                        else:
                            op.dest = dst
                        self._update(op)
                    for o in later:
                        o.path = rebase(o.path, src, dst)
                        if o.kind == "move":
                            o.dest = rebase(o.dest, src, dst)
                        self._update(o)
                if op.kind == "move" and op.path == dst:
                    self.ops.remove(op)
                    self._notify()
                else:
                    if node is not None:
                        op.node = node
                    self.on_change()
                return
        self._append(NsOp(0, "move", src, dst, is_dir=is_dir, overwrite=overwrite, created=time.time(), node=node))

    # ------------------------------------------------------------------ applying

    def _batch(self) -> list[NsOp]:
        """The next ops to send together: in order, up to MAX_BATCH, and a move only with ops
        on unrelated paths (a batch sent again after a lost answer must not undo itself: a
        repeated mkdir finds its directory, a repeated delete finds nothing, a repeated move
        finds its source gone and its destination there)."""
        batch: list[NsOp] = []
        for op in self.ops:
            if len(batch) >= MAX_BATCH:
                break
            clash = any(
                (op.kind == "move" or b.kind == "move") and related(p, q)
                for b in batch for p in op.paths() for q in b.paths()
            )
            if clash:
                break
            batch.append(op)
        return batch

    def done(self, op: NsOp) -> None:
        if op in self.ops:
            self._delete_row(op)
            self.ops.remove(op)
            self.applied += 1

    async def run(self) -> None:
        """Apply pending ops in order, forever; a failure is retried with backoff, never dropped."""
        while True:
            if not self.ops:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            # the quiet period after the oldest op (wall clock: it may come from the last run),
            # skipped while someone waits for the ops; a backoff after a failure is kept
            wait = 0.0 if self._urgent else self.ops[0].created + self.delay - time.time()
            wait = max(wait, self.retry_at - trio.current_time())
            if wait > 0:
                self._wake = trio.Event()
                with trio.move_on_after(wait):
                    await self._wake.wait()
                continue  # look again: woken (a waiter, a retry_now) or due
            batch = self._batch()
            assert self.apply is not None
            self.sending = batch
            for op in batch:
                op.tried = True  # from now on the server may have done it, whatever comes back
            try:
                outcome = await self.apply(batch)
            except Exception as exc:  # noqa: BLE001 - the applier must outlive any failure
                log.exception("applying %d namespace op(s) failed", len(batch))
                outcome = {op.seq: exc for op in batch}
            finally:
                self.sending = []
            # done in order: the first op still to retry keeps itself and every op behind it
            # (they go again after it, as they must happen after it; repeating them is harmless,
            # see _batch), so the server never sees an op overtake one before it
            applied: list[NsOp] = []
            errors: list[BaseException] = []
            for op in batch:
                e = outcome.get(op.seq, RuntimeError("no outcome"))
                if e is not None:
                    errors.append(e)
                elif not errors:
                    applied.append(op)
            try:
                with self.cache._transaction():
                    for op in applied:
                        self.done(op)
            except OSError as exc:  # the cache disk: the ops are applied again (harmless) later
                log.error("namespace journal: cannot record applied ops: %s", exc)
            if errors:
                self.attempts += 1
                delay = min(1.0 * 2 ** (self.attempts - 1), self.backoff_max)
                self.retry_at = trio.current_time() + delay
                self.last_error = f"{type(errors[0]).__name__}: {errors[0]}"
                log.warning("%d namespace op(s) not applied (attempt %d, retry in %.1fs): %s",
                            len(batch) - len(applied), self.attempts, delay, errors[0])
            else:
                self.attempts = 0
                self.retry_at = -math.inf
                self.last_error = None
            self._notify()

    def retry_now(self) -> None:
        self.retry_at = -math.inf
        self.attempts = 0
        self._wake.set()


def _undo(path: str, ops: Sequence[NsOp]) -> str | None:
    """`path` before `ops` (renames undone); None when one of them made it (a mkdir)."""
    for op in reversed(ops):
        if op.kind == "move" and under(path, op.dest):
            path = rebase(path, op.dest, op.path)
        elif op.kind == "mkdir" and under(path, op.path):
            return None
    return path


def ops_wire(batch: Sequence[NsOp]) -> list[dict[str, Any]]:
    """The ops as `Remote.batch` takes them."""
    out: list[dict[str, Any]] = []
    for op in batch:
        if op.kind == "mkdir":
            out.append({"op": "mkdir", "path": op.path})
        elif op.kind == "delete":
            out.append({"op": "delete", "path": op.path, "recursive": False})
        else:
            out.append({"op": "move", "src": op.path, "dst": op.dest, "overwrite": op.overwrite})
    return out
