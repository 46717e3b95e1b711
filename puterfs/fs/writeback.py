"""The upload queue: uploads dirty files after a quiet period, retries forever, never drops.

Keys are cache-entry ids. Each pending key has a due time; a scheduler task moves due keys
to one of two lanes, and worker tasks take them from there when they are free: the *bulk*
lane (new files, large files) and the *edit* lane (``lane(key)``: a small change to a file
the server already has), served by workers of its own so that an edit never waits behind a
`tar x` of a thousand files. A bulk worker that takes a small file also takes the small
files queued behind it, up to ``max_batch`` files and ``max_batch_bytes`` (one request). Invariants (see
docs/write-back.md):

* ``schedule`` (a write finished, a file closed) bumps the key's generation. An upload of
  that key in flight is cancelled when ``cancel_on_change(key)`` says so (a streamed upload
  would send torn data); an upload of a snapshot (small files are read into memory) is let
  finish. Either way its outcome no longer counts, and a key is never uploaded twice at once.
* An upload outcome only counts for the generation it started with. A key is done
  (removed) only when an upload of its *current* generation succeeded.
* A failed upload is retried after a doubling delay, capped (default 5 min); the key stays
  pending until it succeeds or ``cancel`` drops it (the file was deleted).
* ``upload_now`` (fsync with ``--sync-uploads``) makes a key due at once and waits for the
  next outcome. A key somebody waits for goes to the *sync* lane, which has workers of its
  own: an fsync is never queued behind uploads nobody waits for (a queued key is moved there).
* ``upload_soon`` (fsync by default: durable on the local disk) starts the quiet period of a
  file still open for writing, so a file kept open is uploaded too; nobody waits.
* An upload that fails for good (``is_permanent(error)``: the server refuses the file as it
  is) marks the key *failed* with the server's message: it is not retried until it changes
  again (or the next mount), and it no longer keeps ``wait_idle`` waiting. Its data stays.

Code between two awaits is atomic under trio, so the state needs no locks.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)

LANES = ("bulk", "edit", "sync")

UploadFn = Callable[[Sequence[int]], Awaitable[dict[int, BaseException | None]]]


@dataclass(eq=False)
class _Item:
    key: int
    gen: int = 0
    due: float = math.inf
    attempts: int = 0
    dispatched_gen: int | None = None  # generation handed to a worker, if any
    busy: bool = False  # dispatched and not yet settled: never two uploads of one key at once
    held: bool = False  # no new upload may start (a rename or delete of the file is under way)
    settled: trio.Event = field(default_factory=trio.Event)  # set when a flight settles
    scope: trio.CancelScope | None = None  # the batch upload carrying this key
    waiters: list[_Waiter] = field(default_factory=list)
    last_error: str | None = None
    failed_since: float | None = None  # wall-clock time it failed for good (None: not failed)


@dataclass(eq=False)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class WriteBackQueue:
    def __init__(
        self,
        upload: UploadFn,
        *,
        delay: float = 2.0,
        workers: int = 4,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        is_small: Callable[[int], bool] | None = None,
        max_batch: int = 64,
        size_of: Callable[[int], int] | None = None,
        groupable: Callable[[int], bool] | None = None,
        max_group: int = 16,
        max_batch_bytes: int = 8 << 20,
        on_change: Callable[[], None] | None = None,
        cancel_on_change: Callable[[int], bool] | None = None,
        lane: Callable[[int], bool] | None = None,
        lane_workers: int = 2,
        sync_workers: int = 2,
        is_permanent: Callable[[BaseException], bool] | None = None,
        gather: float = 0.5,
    ) -> None:
        self._upload = upload
        self.delay = delay
        self._workers = workers
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._is_small = is_small or (lambda key: False)
        self._max_batch = max_batch
        self._size_of = size_of or (lambda key: 0)
        # keys a worker may take several of at once, up to max_group (metadata updates)
        self._groupable = groupable or (lambda key: False)
        self._max_group = max_group
        self._max_batch_bytes = max_batch_bytes  # a batch's files are read into memory at once
        self._on_change = on_change or (lambda: None)
        self._cancel_on_change = cancel_on_change or (lambda key: True)
        self._lane = lane or (lambda key: False)
        self._lane_workers = lane_workers
        self._sync_workers = sync_workers
        self._gather = gather
        self._is_permanent = is_permanent or (lambda exc: False)
        # due keys waiting for a free worker, per lane ("bulk", "edit", "sync": awaited by fsync)
        self._queues: dict[str, deque[tuple[int, int]]] = {lane: deque() for lane in LANES}
        self._fed: dict[str, trio.Event] = {lane: trio.Event() for lane in LANES}
        self._gathering = trio.Lock()  # the bulk worker letting a tree's small files gather
        self._items: dict[int, _Item] = {}
        self._heap: list[tuple[float, int, int]] = []  # (due, gen, key)
        self._wakeup = trio.Event()
        # when the scheduler wakes by itself (the earliest due time it knew of; -inf: it wakes
        # for anything): a key due later needs no wake-up (one per fsync and close of a save
        # was a task switch for nothing)
        self._sleeps_until = -math.inf
        self._idle = trio.Event()
        self._idle.set()
        self.last_error: str | None = None
        self.uploaded = 0
        # While this returns an exception, nothing is dispatched (every upload would be refused:
        # the server refused the token) and upload_now raises it; call retry_now when it clears.
        self.blocked: Callable[[], BaseException | None] = lambda: None

    # -- producer side --------------------------------------------------------------------

    def schedule(self, key: int, delay: float | None = None) -> None:
        """(Re)queue `key` to upload after `delay` seconds (default: the quiet period)."""
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = _Item(key)
        if self._idle.is_set():
            self._idle = trio.Event()  # this key is pending (again)
        item.gen += 1
        item.held = False
        if item.failed_since is not None:
            item.failed_since = None  # changed: worth another try
            item.attempts = 0
        item.due = trio.current_time() + (self.delay if delay is None else delay)
        if self._cancel_on_change(key):
            self._cancel_flight(item)
        if math.isfinite(item.due):
            heapq.heappush(self._heap, (item.due, item.gen, key))
            self._wake(item.due)
        self._on_change()

    def changed(self, key: int) -> None:
        """The data of `key` is changing (a write, a truncate): its upload waits for the next
        `schedule` (at close), and an upload in flight no longer counts. No-op if not pending."""
        if key in self._items:
            self.schedule(key, math.inf)

    def hold(self, key: int) -> None:
        """Start no new upload of `key` until the next `schedule` (its path is about to change).
        An upload in flight goes on and counts (wait for it with `wait_settled`)."""
        item = self._items.get(key)
        if item is not None:
            item.held = True

    def cancel(self, key: int) -> None:
        """Drop `key` (its file was deleted or replaced): no upload, waiters are released."""
        item = self._items.pop(key, None)
        if item is None:
            return
        self._cancel_flight(item)
        item.settled.set()
        for w in item.waiters:
            w.event.set()
        self._check_idle()
        self._on_change()

    def pending(self, key: int) -> bool:
        return key in self._items

    async def wait_settled(self, key: int) -> None:
        """Wait until no upload of `key` is in flight (its outcome, whatever it is, is known)."""
        while (item := self._items.get(key)) is not None and item.busy:
            await item.settled.wait()

    async def upload_now(self, key: int) -> None:
        """Upload `key` at once and wait for the outcome (fsync). Raises the upload error."""
        blocked = self.blocked()
        if blocked is not None:
            raise blocked  # the data stays dirty in the cache and goes up once unblocked
        item = self._items.get(key)
        if item is None:
            self.schedule(key, 0)  # dirty but not queued yet (still open for writing)
            item = self._items[key]
        elif item.dispatched_gen != item.gen:
            item.due = trio.current_time()
            heapq.heappush(self._heap, (item.due, item.gen, key))
            self._wakeup.set()
        elif item.scope is None:
            self._promote(item)  # queued for a bulk or edit worker, not started: the sync lane
        while True:
            w = _Waiter()
            item.waiters.append(w)
            await w.event.wait()
            if w.error is not None:
                raise w.error
            if self._items.get(key) is not item:
                return  # uploaded (or cancelled: nothing left to upload)
            # the outcome was for a stale generation; wait for the next one

    def upload_soon(self, key: int) -> None:
        """Upload `key` after the quiet period even if it is still open for writing (an fsync
        that returns once the data is on the local disk). A key already due keeps its time."""
        item = self._items.get(key)
        if item is None:
            self.schedule(key)
        elif math.isinf(item.due) and item.failed_since is None and item.dispatched_gen != item.gen:
            item.held = False
            item.due = trio.current_time() + self.delay
            heapq.heappush(self._heap, (item.due, item.gen, key))
            self._wake(item.due)

    def awaited(self, key: int) -> bool:
        """Whether somebody (an fsync) waits for the upload of `key`."""
        item = self._items.get(key)
        return item is not None and bool(item.waiters)

    async def wait_idle(self) -> None:
        """Wait until nothing is pending (every key uploaded, cancelled or failed for good)."""
        while self._busy_items():
            await self._idle.wait()

    def _busy_items(self) -> bool:
        return any(i.failed_since is None for i in self._items.values())

    def failed(self) -> list[tuple[int, str, float]]:
        """(key, the server's message, since) of every key that failed for good."""
        return [
            (i.key, i.last_error or "refused", i.failed_since)
            for i in self._items.values()
            if i.failed_since is not None
        ]

    def flush_all_now(self) -> None:
        """Make every pending key due now (unmount, SIGTERM)."""
        now = trio.current_time()
        for item in self._items.values():
            if item.failed_since is not None:
                continue  # it would be refused again
            item.attempts = 0
            if item.dispatched_gen != item.gen:
                item.due = now
                heapq.heappush(self._heap, (now, item.gen, item.key))
        self._wakeup.set()

    def retry_now(self) -> None:
        """Make every key whose last upload failed due now, backoff reset, and dispatch again
        after a block (the cause is gone: a new token was accepted). Keys waiting for their
        quiet period or still open keep their due time."""
        now = trio.current_time()
        for item in self._items.values():
            if item.attempts and math.isfinite(item.due) and item.dispatched_gen != item.gen:
                item.attempts = 0
                item.due = now
                heapq.heappush(self._heap, (now, item.gen, item.key))
        self._wakeup.set()

    def statistics(self) -> dict[str, object]:
        return {
            "pending": len(self._items),
            "uploading": sum(1 for i in self._items.values() if i.scope is not None),
            "failed_attempts": sum(1 for i in self._items.values() if i.attempts),
            "failed": sum(1 for i in self._items.values() if i.failed_since is not None),
            "last_error": self.last_error,
            "uploaded": self.uploaded,
        }

    # -- consumer side --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self._workers):
                nursery.start_soon(self._worker, "bulk")
            for _ in range(self._lane_workers):
                nursery.start_soon(self._worker, "edit")
            for _ in range(self._sync_workers):
                nursery.start_soon(self._worker, "sync")
            task_status.started()
            await self._scheduler()

    async def _scheduler(self) -> None:
        while True:
            if self.blocked() is not None:
                self._wakeup = trio.Event()
                self._sleeps_until = -math.inf
                await self._wakeup.wait()  # retry_now (or any schedule) looks again
                continue
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, gen, key = heapq.heappop(self._heap)
                item = self._items.get(key)
                if item is None or item.gen != gen or item.dispatched_gen == gen or item.busy or item.held:
                    continue  # stale heap entry, in flight (re-pushed when it settles), or held
                item.dispatched_gen = gen
                item.busy = True
                lane = "sync" if item.waiters else "edit" if self._lane(key) else "bulk"
                self._queues[lane].append((key, gen))
                self._fed[lane].set()
            self._wakeup = trio.Event()
            deadline = self._sleeps_until = self._heap[0][0] if self._heap else math.inf
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
            self._sleeps_until = -math.inf

    async def _take(self, lane: str) -> list[tuple[int, int]]:
        """The next upload of `lane` for a free worker: one key, or small keys up to max_batch."""
        q = self._queues[lane]
        while True:
            while not q:
                if self._fed[lane].is_set():
                    self._fed[lane] = trio.Event()
                await self._fed[lane].wait()
            if lane == "bulk" and self._gather and self._is_small(q[0][0]) and len(q) < self._max_batch:
                # a tree being written (tar x, cp -r): let its files gather into full requests.
                # One worker gathers at a time (others would split the files between them),
                # while more keys fall due within `gather` seconds (their quiet period ends),
                # until max_batch are queued, or 4 x gather passed (a steady stream of files is
                # not held up longer). Nothing due soon: the batch goes at once.
                async with self._gathering:
                    deadline = trio.current_time() + 4 * self._gather
                    while q and len(q) < self._max_batch:
                        now = trio.current_time()
                        nxt = self._heap[0][0] if self._heap else math.inf
                        if nxt > now + self._gather or now >= deadline:
                            break
                        # past its due time by a tick, so the scheduler has queued it
                        await trio.sleep(min(max(nxt - now, 0.0) + 0.005, max(deadline - now, 0.0)))
                    if not q:
                        continue  # another worker took them
                    return self._pop_batch(q)
            break
        return self._pop_batch(q)

    def _pop_batch(self, q: deque[tuple[int, int]]) -> list[tuple[int, int]]:
        first = q.popleft()
        if self._groupable(first[0]):
            group = [first]
            others: deque[tuple[int, int]] = deque()
            while q and len(group) < self._max_group:
                kg = q.popleft()
                (group if self._groupable(kg[0]) else others).append(kg)
            q.extendleft(reversed(others))
            return group
        if not self._is_small(first[0]):
            return [first]
        batch = [first]
        size = self._size_of(first[0])
        rest: deque[tuple[int, int]] = deque()
        while q and len(batch) < self._max_batch:
            kg = q.popleft()
            if not self._is_small(kg[0]):
                rest.append(kg)
                continue
            size += self._size_of(kg[0])
            if size > self._max_batch_bytes:
                q.appendleft(kg)  # the next batch's first
                break
            batch.append(kg)
        q.extendleft(reversed(rest))
        return batch

    async def _worker(self, lane: str) -> None:
        while True:
            batch = await self._take(lane)
            if self.blocked() is not None:
                for k, _ in batch:  # queued before the block: back to the heap, not sent
                    if (it := self._items.get(k)) is not None:
                        self._settle(it)
                continue
            live = []
            for k, g in batch:
                it = self._items.get(k)
                if it is None:
                    continue
                if it.gen == g and not it.held:
                    live.append((k, g))
                else:
                    self._settle(it)  # changed (or held) before its upload started
            if not live:
                continue
            scope = trio.CancelScope()
            for k, _ in live:
                self._items[k].scope = scope
            self._on_change()
            results: dict[int, BaseException | None] = {}
            with scope:
                try:
                    results = await self._upload([k for k, _ in live])
                except Exception as exc:  # the upload function failed as a whole
                    log.warning("upload of %d file(s) failed: %s", len(live), exc)
                    results = {k: exc for k, _ in live}
            for k, g in live:
                item = self._items.get(k)
                if item is None:
                    continue
                item.scope = None
                if item.gen != g:
                    self._settle(item)  # rescheduled meanwhile: its new due time stands
                    continue
                if scope.cancelled_caught or k not in results:
                    # cancelled as part of a batch whose other member changed: retry at once
                    item.due = trio.current_time()
                    self._settle(item)
                    continue
                err = results[k]
                if err is None:
                    del self._items[k]
                    self.uploaded += 1
                    self._settle(item)
                    for w in item.waiters:
                        w.event.set()
                    self._check_idle()
                else:
                    item.attempts += 1
                    item.last_error = self.last_error = f"{type(err).__name__}: {err}"
                    if self._is_permanent(err):
                        # refused as it is: no retry until it changes; its data stays in the cache
                        item.due = math.inf
                        item.failed_since = time.time()
                        log.warning("upload refused, not retried until the file changes: %s", err)
                    else:
                        delay = min(self._backoff_base * 2 ** (item.attempts - 1), self._backoff_max)
                        item.due = trio.current_time() + delay
                        log.warning("upload failed (attempt %d, retry in %.1fs): %s", item.attempts, delay, err)
                    self._settle(item)
                    waiters, item.waiters = item.waiters, []
                    for w in waiters:
                        w.error = err
                        w.event.set()
                    self._check_idle()
            self._on_change()

    # -- helpers ----------------------------------------------------------------------------

    def _settle(self, item: _Item) -> None:
        """A flight of `item` ended (or never started): allow the next one, re-queue if due."""
        item.busy = False
        item.dispatched_gen = None
        item.settled.set()
        item.settled = trio.Event()
        if math.isfinite(item.due) and not item.held and self._items.get(item.key) is item:
            heapq.heappush(self._heap, (item.due, item.gen, item.key))
            self._wake(item.due)

    def _wake(self, due: float) -> None:
        """A key falls due at `due`: wake the scheduler if it would sleep past that."""
        if due < self._sleeps_until:
            self._wakeup.set()

    def _promote(self, item: _Item) -> None:
        """Move `item` from the bulk or edit lane's queue (dispatched, no worker yet) to the sync lane."""
        for lane in ("bulk", "edit"):
            q = self._queues[lane]
            for kg in q:
                if kg[0] == item.key:
                    q.remove(kg)
                    self._queues["sync"].append(kg)
                    self._fed["sync"].set()
                    return

    def _cancel_flight(self, item: _Item) -> None:
        if item.scope is not None:
            item.scope.cancel()

    def _check_idle(self) -> None:
        if not self._busy_items():
            self._idle.set()
