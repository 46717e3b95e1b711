"""The upload queue under trio's mock clock: quiet period, requeue on write, batching,
backoff that never gives up, fsync semantics, and waiting for idle."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from puterfs.client._errors import ServerError
from puterfs.fs.writeback import WriteBackQueue


class Uploader:
    def __init__(self) -> None:
        self.calls: list[tuple[float, list[int]]] = []
        self.fail: dict[int, int] = {}  # key -> failures left
        self.block: trio.Event | None = None
        self.started = trio.Event()

    async def __call__(self, keys):
        self.calls.append((trio.current_time(), list(keys)))
        self.started.set()
        if self.block is not None:
            await self.block.wait()
        out = {}
        for k in keys:
            if self.fail.get(k, 0) > 0:
                self.fail[k] -= 1
                out[k] = ServerError("boom", status=503)
            else:
                out[k] = None
        return out


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def _with_queue(q: WriteBackQueue, body):
    async with trio.open_nursery() as n:
        await n.start(q.run)
        await body()
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_uploads_after_quiet_period(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=2.0)

    async def body():
        t0 = trio.current_time()
        q.schedule(1)
        await q.wait_idle()
        assert len(up.calls) == 1
        assert up.calls[0][0] - t0 == pytest.approx(2.0)

    await _with_queue(q, body)


@pytest.mark.trio
async def test_rescheduling_postpones(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=2.0)

    async def body():
        t0 = trio.current_time()
        q.schedule(7)
        await trio.sleep(1.5)
        q.schedule(7)  # written again before the quiet period ended
        await q.wait_idle()
        assert [c[1] for c in up.calls] == [[7]]
        assert up.calls[0][0] - t0 == pytest.approx(3.5)

    await _with_queue(q, body)


@pytest.mark.trio
async def test_hold_keeps_an_open_file_from_uploading(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=1.0)

    async def body():
        q.schedule(3)
        q.hold(3)  # written again while open: no upload until the next schedule
        await trio.sleep(100)
        assert up.calls == []
        assert q.statistics()["pending"] == 1
        q.schedule(3)
        await q.wait_idle()
        assert len(up.calls) == 1

    await _with_queue(q, body)


@pytest.mark.trio
async def test_write_during_upload_cancels_and_requeues(autojump_clock):
    up = Uploader()
    up.block = trio.Event()
    q = WriteBackQueue(up, delay=1.0)

    async def body():
        q.schedule(5)
        await up.started.wait()
        assert q.statistics()["uploading"] == 1
        q.schedule(5)  # new data while in flight
        up.block = None
        await q.wait_idle()
        assert [c[1] for c in up.calls] == [[5], [5]]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_failures_back_off_and_never_drop(autojump_clock):
    up = Uploader()
    up.fail[9] = 6
    q = WriteBackQueue(up, delay=0.0, backoff_base=1.0, backoff_max=8.0)

    async def body():
        q.schedule(9)
        await q.wait_idle()
        times = [c[0] for c in up.calls]
        gaps = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]
        assert gaps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped
        st = q.statistics()
        assert st["pending"] == 0 and "boom" in st["last_error"]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_small_files_go_in_batches(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=1.0, is_small=lambda k: k < 100, max_batch=10, workers=2)

    async def body():
        for k in range(25):
            q.schedule(k)
        q.schedule(500)
        await q.wait_idle()
        sizes = sorted(len(c[1]) for c in up.calls)
        assert sizes == [1, 5, 10, 10]
        assert sorted(k for c in up.calls for k in c[1]) == [*range(25), 500]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_small_files_falling_due_one_by_one_gather_into_full_batches(autojump_clock):
    """Files closed one after another (a tar x) go in full batches, not one per worker: one
    worker gathers while more fall due, the last batch goes once nothing more is due soon."""
    up = Uploader()
    q = WriteBackQueue(up, delay=1.0, is_small=lambda k: True, max_batch=10, workers=4, gather=0.5)

    async def body():
        for k in range(25):
            q.schedule(k)
            await trio.sleep(0.05)  # 20 files a second
        await q.wait_idle()
        assert sorted(len(c[1]) for c in up.calls) == [5, 10, 10]
        assert sorted(k for c in up.calls for k in c[1]) == list(range(25))

    await _with_queue(q, body)


@pytest.mark.trio
async def test_groupable_keys_go_to_one_worker_together(autojump_clock):
    """Metadata updates (groupable) are handed out up to max_group at once, never mixed with files."""
    up = Uploader()
    q = WriteBackQueue(up, delay=1.0, is_small=lambda k: k >= 0, groupable=lambda k: k < 0, max_group=8, workers=1)

    async def body():
        for k in range(1, 21):
            q.schedule(-k)
        q.schedule(7)
        await q.wait_idle()
        groups = [c[1] for c in up.calls if c[1][0] < 0]
        assert sorted(len(g) for g in groups) == [4, 8, 8] and all(k < 0 for g in groups for k in g)
        assert [c[1] for c in up.calls if c[1][0] >= 0] == [[7]]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_upload_now_waits_and_reports_errors(autojump_clock):
    up = Uploader()
    up.fail[4] = 1
    q = WriteBackQueue(up, delay=60.0, backoff_base=5.0)

    async def body():
        q.schedule(4)
        t0 = trio.current_time()
        with pytest.raises(ServerError):
            await q.upload_now(4)  # fsync: at once, and the failure is reported
        assert trio.current_time() - t0 < 1
        await q.upload_now(4)  # the retry succeeds
        assert not q.pending(4)
        await q.upload_now(4)  # nothing pending: returns at once

    await _with_queue(q, body)


@pytest.mark.trio
async def test_cancel_drops_and_releases_waiters(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=math.inf)

    async def body():
        q.schedule(11, math.inf)
        async with trio.open_nursery() as n:
            n.start_soon(q.upload_now, 11)
            await up.started.wait()
            up.block = trio.Event()
            q.cancel(11)
        await q.wait_idle()

    await _with_queue(q, body)


@pytest.mark.trio
async def test_flush_all_now(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=3600.0)

    async def body():
        for k in (1, 2, 3):
            q.schedule(k)
        t0 = trio.current_time()
        q.flush_all_now()
        await q.wait_idle()
        assert trio.current_time() - t0 < 1
        assert sorted(k for c in up.calls for k in c[1]) == [1, 2, 3]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_snapshot_uploads_finish_and_never_overlap(autojump_clock):
    """With cancel_on_change False (the upload sends a snapshot), a new write lets the flight
    finish, then uploads again; the same key is never in two flights at once."""
    active: set[int] = set()
    calls: list[int] = []
    gate = trio.Event()

    async def upload(keys):
        for k in keys:
            assert k not in active
            active.add(k)
        calls.extend(keys)
        if len(calls) == 1:
            await gate.wait()
        active.difference_update(keys)
        return {k: None for k in keys}

    q = WriteBackQueue(upload, delay=1.0, cancel_on_change=lambda k: False)

    async def body():
        q.schedule(1)
        while not calls:
            await trio.sleep(0.1)
        q.schedule(1, 0)  # changed while in flight, due at once
        await trio.sleep(5)
        assert calls == [1]  # not dispatched again while the first flight runs
        settled = False

        async def waiter():
            nonlocal settled
            await q.wait_settled(1)
            settled = True

        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await trio.sleep(1)
            assert not settled
            gate.set()
        assert settled
        await q.wait_idle()
        assert calls == [1, 1]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_upload_now_of_a_key_never_scheduled(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=60.0)

    async def body():
        await q.upload_now(42)  # fsync of a file still open for writing
        assert [c[1] for c in up.calls] == [[42]]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_hold_lets_the_flight_count_and_starts_no_new_one(autojump_clock):
    """A rename holds the key: the upload in flight finishes and counts (nothing is left
    pending), and a failed one is not retried until the key is scheduled again."""
    up = Uploader()
    up.block = trio.Event()
    q = WriteBackQueue(up, delay=0.5, backoff_base=1.0)

    async def body():
        q.schedule(1)
        await up.started.wait()
        q.hold(1)
        up.block.set()
        await q.wait_settled(1)
        assert not q.pending(1)  # the held flight succeeded: done

        up.fail[2] = 1
        up.block = None
        q.schedule(2)
        while not any(2 in c[1] for c in up.calls):
            await trio.sleep(0.1)
        q.hold(2)
        await trio.sleep(60)
        assert sum(c[1].count(2) for c in up.calls) == 1  # failed once, not retried while held
        q.schedule(2, 0)
        await q.wait_idle()
        assert sum(c[1].count(2) for c in up.calls) == 2

    await _with_queue(q, body)


@pytest.mark.trio
async def test_blocked_queue_sends_nothing_fsync_fails_at_once_and_retry_now_resumes(autojump_clock):
    from puterfs.client._errors import AuthenticationError

    up = Uploader()
    up.fail[1] = 1
    q = WriteBackQueue(up, delay=1.0)
    refused: list[BaseException] = []
    q.blocked = lambda: refused[0] if refused else None

    async def body():
        q.schedule(1)
        await trio.sleep(1.5)
        assert len(up.calls) == 1  # failed once (the refusal arrives with a failure)
        refused.append(AuthenticationError("the token was refused", status=401))
        q.schedule(2)
        await trio.sleep(3600)  # an hour of backoffs and quiet periods: nothing is sent
        assert len(up.calls) == 1
        assert q.statistics()["pending"] == 2
        with pytest.raises(AuthenticationError):
            await q.upload_now(2)  # fsync answers at once instead of hanging
        t0 = trio.current_time()
        refused.clear()
        q.retry_now()
        await q.wait_idle()
        assert trio.current_time() - t0 < 1.0  # no backoff left over from the failure
        assert sorted(k for _, keys in up.calls[1:] for k in keys) == [1, 2]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_a_refused_upload_fails_alone_and_is_not_retried(autojump_clock):
    from puterfs.client._errors import BadRequest

    calls: list[list[int]] = []

    async def upload(keys):
        calls.append(list(keys))
        return {k: (BadRequest("Name cannot be empty", status=400) if k == 7 else None) for k in keys}

    q = WriteBackQueue(upload, delay=1.0, is_small=lambda k: True,
                       is_permanent=lambda e: isinstance(e, BadRequest))

    async def body():
        for k in (5, 6, 7):
            q.schedule(k)
        await q.wait_idle()  # the refused key does not keep it waiting
        assert [k for c in calls for k in c].count(7) == 1
        (key, reason, since), = q.failed()
        assert key == 7 and "Name cannot be empty" in reason and since > 0
        assert not q.pending(5) and q.pending(7)
        await trio.sleep(3600)
        assert [k for c in calls for k in c].count(7) == 1  # not retried forever
        q.flush_all_now()  # unmount does not try it again either
        await q.wait_idle()
        assert [k for c in calls for k in c].count(7) == 1
        q.schedule(7)  # changed: tried again
        await trio.sleep(2)
        assert [k for c in calls for k in c].count(7) == 2
        assert q.statistics()["failed"] == 1

    await _with_queue(q, body)


@pytest.mark.trio
async def test_an_edit_does_not_wait_behind_bulk_uploads(autojump_clock):
    """Bulk workers all busy with a slow tree upload: an edit of a known file goes at once."""
    gate = trio.Event()
    done: dict[int, float] = {}

    async def upload(keys):
        if 1000 not in keys:
            await gate.wait()  # the tree upload is slow
        for k in keys:
            done[k] = trio.current_time()
        return dict.fromkeys(keys)

    q = WriteBackQueue(upload, delay=2.0, workers=2, is_small=lambda k: k < 1000, max_batch=64,
                       lane=lambda k: k == 1000)

    async def body():
        for k in range(300):
            q.schedule(k)
        await trio.sleep(5)
        t0 = trio.current_time()
        q.schedule(1000)
        while 1000 not in done:
            await trio.sleep(0.1)
        assert done[1000] - t0 <= 2.5  # the quiet period, not the tree
        gate.set()
        await q.wait_idle()
        assert len(done) == 301

    await _with_queue(q, body)


class _KeyedUploader:
    """Uploads of the keys in `blocked` wait for `gate`; the others finish at once."""

    def __init__(self, blocked: set[int]) -> None:
        self.blocked = blocked
        self.gate = trio.Event()
        self.busy: set[int] = set()
        self.done: list[int] = []

    async def __call__(self, keys):
        self.busy.update(keys)
        if self.blocked & set(keys):
            await self.gate.wait()
        self.busy.difference_update(keys)
        self.done.extend(keys)
        return {k: None for k in keys}


@pytest.mark.trio
async def test_fsync_has_its_own_lane_behind_busy_bulk_workers(autojump_clock):
    """Issue 10: an fsync'ed file is not queued behind uploads nobody waits for, neither when
    every bulk worker is busy nor when it was already queued for one of them."""
    up = _KeyedUploader(blocked={1, 2, 3, 4, 5})
    q = WriteBackQueue(up, delay=0.5, workers=4, gather=0)

    async def body():
        for k in (1, 2, 3, 4, 5, 6):
            q.schedule(k)
        while up.busy != {1, 2, 3, 4}:
            await trio.sleep(0.1)
        await trio.sleep(1)
        assert 6 not in up.done  # queued behind the four busy bulk workers
        with trio.fail_after(60):  # virtual time: without the lane it waits for the gate
            await q.upload_now(6)  # moved to the sync lane
        assert 6 in up.done
        q.schedule(7)
        with trio.fail_after(60):
            await q.upload_now(7)  # awaited before it was dispatched: straight to the sync lane
        assert up.busy == {1, 2, 3, 4} and 5 not in up.done
        up.gate.set()
        await q.wait_idle()
        assert sorted(up.done) == [1, 2, 3, 4, 5, 6, 7]

    await _with_queue(q, body)


@pytest.mark.trio
async def test_upload_soon_starts_the_quiet_period_of_a_file_open_for_writing(autojump_clock):
    up = Uploader()
    q = WriteBackQueue(up, delay=2.0)

    async def body():
        t0 = trio.current_time()
        q.upload_soon(1)  # fsync of a file never scheduled (still open for writing)
        q.schedule(2)
        q.changed(2)  # written again: held until its close...
        await trio.sleep(10)
        assert [c[1] for c in up.calls] == [[1]]
        assert up.calls[0][0] - t0 == pytest.approx(2.0)
        t1 = trio.current_time()
        q.upload_soon(2)  # ...or an fsync
        await q.wait_idle()
        assert up.calls[1][1] == [2] and up.calls[1][0] - t1 == pytest.approx(2.0)
        q.schedule(3, 5.0)
        t2 = trio.current_time()
        q.upload_soon(3)  # already due: keeps its time
        await q.wait_idle()
        assert up.calls[2][0] - t2 == pytest.approx(5.0)

    await _with_queue(q, body)
