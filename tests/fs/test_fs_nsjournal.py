"""The namespace journal's coalescing and batching rules (puterfs/fs/nsjournal.py), on a real
cache journal: what the server is sent for a sequence of local namespace changes, and that the
journal survives a reopen (the same SQLite file as the data journal)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from puterfs.client._errors import ServerError
from puterfs.fs.cache import CacheStore
from puterfs.fs.nsjournal import MAX_BATCH, NamespaceJournal, NsOp, related, under


def _ops(j: NamespaceJournal) -> list[str]:
    return [op.describe() for op in j.ops]


def _journal(tmp_path: Path) -> NamespaceJournal:
    return NamespaceJournal(CacheStore(tmp_path / "cache"))


def test_mkdir_then_rmdir_sends_nothing(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.record_mkdir("a")
    j.record_mkdir("a/b")
    j.record_delete("a/b", is_dir=True)
    j.record_delete("a", is_dir=True)
    assert _ops(j) == []


def test_a_directory_renamed_twice_is_moved_once_and_renamed_back_not_at_all(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.record_move("a", "b", is_dir=True, overwrite=False)
    j.record_move("b", "c", is_dir=True, overwrite=False)
    assert _ops(j) == ["move a -> c"]
    j.record_move("c", "a", is_dir=True, overwrite=False)
    assert _ops(j) == []


def test_a_renamed_new_directory_is_made_under_its_last_name_with_what_follows(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.record_mkdir("new")
    j.record_mkdir("new/sub")
    j.record_move("srv.txt", "new/sub/srv.txt", is_dir=False, overwrite=False)
    j.record_move("new", "final", is_dir=True, overwrite=False)
    assert _ops(j) == ["mkdir final", "mkdir final/sub", "move srv.txt -> final/sub/srv.txt"]


def test_a_moved_then_deleted_file_is_deleted_where_the_server_has_it(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.record_move("a.txt", "b.txt", is_dir=False, overwrite=False)
    j.record_delete("b.txt", is_dir=False)
    assert _ops(j) == ["delete a.txt"]
    # but a move that replaced something there must still happen: the server's b.txt goes too
    j.record_move("c.txt", "d.txt", is_dir=False, overwrite=True)
    j.record_delete("d.txt", is_dir=False)
    assert _ops(j) == ["delete a.txt", "move c.txt -> d.txt", "delete d.txt"]


def test_no_coalescing_across_a_later_change_of_a_related_path(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.record_move("a", "b", is_dir=True, overwrite=False)
    j.record_move("x", "c", is_dir=True, overwrite=False)
    j.record_move("b", "c/b", is_dir=True, overwrite=False)  # into a directory moved after it
    assert _ops(j) == ["move a -> b", "move x -> c", "move b -> c/b"]
    j2 = _journal(tmp_path / "2")
    j2.record_delete("d", is_dir=True)
    j2.record_mkdir("d")  # rm -rf d; mkdir d: the server's d goes, a new one is made
    assert _ops(j2) == ["rmdir d", "mkdir d"]


def test_batches_keep_order_and_never_mix_a_move_with_a_related_op(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    for i in range(MAX_BATCH + 5):
        j.record_delete(f"dir/f{i}", is_dir=False)
    j.record_delete("dir", is_dir=True)
    assert len(j._batch()) == MAX_BATCH  # rm -rf: many deletes per request
    j2 = _journal(tmp_path / "2")
    j2.record_mkdir("a")
    j2.record_mkdir("a/b")  # mkdir -p: one request
    j2.record_move("s", "a/b/s", is_dir=False, overwrite=False)  # related: the next request
    j2.record_mkdir("other")
    assert [op.describe() for op in j2._batch()] == ["mkdir a", "mkdir a/b"]


def test_pending_renames_map_back_to_the_servers_paths(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    j.record_move("a", "b", is_dir=True, overwrite=False)
    j.record_move("b/f.txt", "b/g.txt", is_dir=False, overwrite=False)
    j.record_mkdir("n")
    assert j.server_path("b/g.txt") == "a/f.txt"
    assert j.server_path("b/other") == "a/other"
    assert j.server_path("n/x") is None  # below a directory the server does not have yet
    assert j.server_path("elsewhere") == "elsewhere"
    assert j.blocking("b/g.txt") and j.blocking("n/x") and not j.blocking("elsewhere")
    assert j.listing_blocked("") and j.listing_blocked("b") and not j.listing_blocked("elsewhere")
    assert j.listing_source("b") is None  # an entry in it is renamed: its listing must wait
    assert j.listing_source("n") is None  # new here
    j2 = _journal(tmp_path / "2")
    j2.record_move("a", "b", is_dir=True, overwrite=False)
    j2.record_move("b/c", "b/d", is_dir=True, overwrite=False)
    assert j2.listing_source("b/d") == "a/c"  # renamed, and its parent too: the same entries
    assert j2.listing_source("b/d/e") == "a/c/e"
    j2.record_delete("b/d/e/f", is_dir=False)
    assert j2.listing_source("b/d/e") is None and j2.listing_source("b/d") == "a/c"


def test_the_journal_survives_a_reopen(tmp_path: Path) -> None:
    cache = CacheStore(tmp_path / "cache")
    j = NamespaceJournal(cache)
    j.record_mkdir("m")
    j.record_move("a", "b", is_dir=True, overwrite=True)
    j.record_delete("c.txt", is_dir=False)
    cache._db.close()  # as a kill -9 leaves it: no clean shutdown
    j2 = NamespaceJournal(CacheStore(tmp_path / "cache"))
    assert _ops(j2) == ["mkdir m", "move a -> b", "delete c.txt"]
    assert j2.ops[1].overwrite and j2.ops[0].is_dir and not j2.ops[2].is_dir


class Server:
    """The applier's side of the journal, scripted: each call takes the next answer, "lost"
    (the request failed with its outcome unknown: the server may have done it all) or a list
    of per-op outcomes ("ok" or "retry"); with no answer left, every op is done."""

    def __init__(self, *answers: str | list[str]) -> None:
        self.answers = list(answers)
        self.sent: list[list[str]] = []

    async def __call__(self, batch: list[NsOp]) -> dict[int, BaseException | None]:
        self.sent.append([op.describe() for op in batch])
        answer = self.answers.pop(0) if self.answers else ["ok"] * len(batch)
        if answer == "lost":
            raise ServerError("the answer was lost")
        return {op.seq: None if a == "ok" else ServerError("retry") for op, a in zip(batch, answer, strict=True)}


async def _until(pred: object) -> None:
    with trio.fail_after(30):  # a safety net, not a timing assertion
        while not pred():  # type: ignore[operator]
            await trio.sleep(0.01)


@pytest.mark.trio
async def test_ops_sent_with_their_outcome_unknown_are_never_rewritten_or_dropped(tmp_path: Path) -> None:
    # The bug the 30%-faults randomised test found: a /batch whose answer was lost may have
    # been done by the server; coalescing later ops into it (mkdir+rmdir -> nothing, move a->b
    # + rename b->c -> move a->c, move x->d + unlink d -> delete x) then left the server with
    # the directory, with b (the move a->c finds no a and no c), with d.
    j = NamespaceJournal(CacheStore(tmp_path / "cache"), delay=0)
    j.apply = server = Server("lost")
    async with trio.open_nursery() as nursery:
        j.record_mkdir("a")
        j.record_move("b", "c", is_dir=True, overwrite=False)
        j.record_move("x.txt", "d.txt", is_dir=False, overwrite=False)
        nursery.start_soon(j.run)
        await _until(lambda: j.attempts == 1)
        assert server.sent == [["mkdir a", "move b -> c", "move x.txt -> d.txt"]]
        j.record_delete("a", is_dir=True)
        j.record_move("c", "e", is_dir=True, overwrite=False)
        j.record_delete("d.txt", is_dir=False)
        assert _ops(j) == ["mkdir a", "move b -> c", "move x.txt -> d.txt", "rmdir a", "move c -> e", "delete d.txt"]
        # where the server may hold e/f and e's entries: under b if the batch did nothing, c if it got through
        assert j.server_paths("e/f") == ["b/f", "c/f"] and j.server_path("e/f") == "b/f"
        assert j.listing_sources("e") == ["b", "c"]
        # ops never sent still coalesce with each other
        j.record_mkdir("n")
        j.record_delete("n", is_dir=True)
        assert _ops(j)[-1] == "delete d.txt"
        j.retry_now()
        await j.wait_all()
        nursery.cancel_scope.cancel()
    sent = [op for b in server.sent[1:] for op in b]
    assert sent == ["mkdir a", "move b -> c", "move x.txt -> d.txt", "rmdir a", "move c -> e", "delete d.txt"]


@pytest.mark.trio
async def test_an_op_to_retry_keeps_every_op_behind_it_in_its_batch(tmp_path: Path) -> None:
    # the server ran the batch's ops in order and the first one is to be retried: the ones
    # after it go again after it, never before it (no op overtakes another on the server)
    j = NamespaceJournal(CacheStore(tmp_path / "cache"), delay=0)
    j.apply = server = Server(["ok", "retry", "ok", "ok"])
    async with trio.open_nursery() as nursery:
        j.record_delete("f", is_dir=False)
        j.record_delete("g", is_dir=False)
        j.record_mkdir("g")
        j.record_mkdir("h")
        nursery.start_soon(j.run)
        await _until(lambda: j.attempts == 1)
        assert _ops(j) == ["delete g", "mkdir g", "mkdir h"]
        j.retry_now()
        await j.wait_all()
        nursery.cancel_scope.cancel()
    assert server.sent == [["delete f", "delete g", "mkdir g", "mkdir h"], ["delete g", "mkdir g", "mkdir h"]]
    assert j.applied == 4


def test_ops_left_by_a_killed_daemon_are_never_rewritten(tmp_path: Path) -> None:
    # the daemon may have sent them before it died: the server may have them done
    cache = CacheStore(tmp_path / "cache")
    j = NamespaceJournal(cache)
    j.record_mkdir("m")
    j.record_move("a", "b", is_dir=True, overwrite=False)
    cache._db.close()
    j2 = NamespaceJournal(CacheStore(tmp_path / "cache"))
    j2.record_delete("m", is_dir=True)
    j2.record_move("b", "c", is_dir=True, overwrite=False)
    assert _ops(j2) == ["mkdir m", "move a -> b", "rmdir m", "move b -> c"]


def test_path_lookups_agree_with_the_pending_ops_through_coalescing_and_exposure(tmp_path: Path) -> None:
    """blocking, listing_blocked, upload_blocked and scopes answer from an index of the ops'
    paths, kept up to date as ops are added, rewritten, dropped and applied: each answer is the
    one a scan of every pending op gives."""
    j = _journal(tmp_path)
    rng = random.Random(13)
    names = ["a", "b", "a/b", "a/c", "b/a", "a/b/c", "c"]
    probes = ["", *names, "a/b/c/d", "d"]

    def check() -> None:
        for p in probes:
            scan = [(op, q) for op in j.ops for q in op.paths()]
            assert j.blocking(p) == any(under(p, q) for _, q in scan), p
            assert j.listing_blocked(p) == any(q.rpartition("/")[0] == p or under(p, q) for _, q in scan), p
            assert j.upload_blocked(p) == any(
                under(p, q) and not (op.kind == "mkdir" and q != p) for op, q in scan
            ), p
            folders, trees = j.scopes()[0] if j.scopes() else (set(), set())
            assert trees == {q for _, q in scan} and folders == {q.rpartition("/")[0] for _, q in scan}

    for _ in range(300):
        what = rng.random()
        a, b = rng.choice(names), rng.choice(names)
        if what < 0.3:
            j.record_mkdir(a)
        elif what < 0.55:
            j.record_delete(a, is_dir=rng.random() < 0.5)
        elif what < 0.8 and not related(a, b):
            j.record_move(a, b, is_dir=rng.random() < 0.5, overwrite=rng.random() < 0.3)
        elif what < 0.9:
            j.expose(a)
        elif j.ops:
            j.done(j.ops[0])
        check()


@pytest.mark.trio
async def test_ops_appended_behind_others_do_not_wake_the_applier_and_go_in_full_batches(tmp_path: Path) -> None:
    # an rm -rf appends an op per file: the applier, waiting out the first op's quiet period,
    # is woken by the first only (each wake-up was a loop of the applier and a new cancel
    # scope per unlink on the FUSE thread); the ops still go once the quiet period is over,
    # in order, MAX_BATCH at a time
    j = NamespaceJournal(CacheStore(tmp_path / "cache"), delay=0.5)
    j.apply = server = Server()
    n = 3 * MAX_BATCH + 8
    async with trio.open_nursery() as nursery:
        nursery.start_soon(j.run)
        j.record_delete("d/f0", is_dir=False)
        assert j._wake.is_set()  # the first op wakes it
        await _until(lambda: not j._wake.is_set())  # it waits out the quiet period now
        for i in range(1, n):
            j.record_delete(f"d/f{i}", is_dir=False)
            assert not j._wake.is_set(), i
        assert server.sent == []
        await _until(lambda: j.applied == n)
        nursery.cancel_scope.cancel()
    assert [len(b) for b in server.sent] == [MAX_BATCH, MAX_BATCH, MAX_BATCH, 8]
    assert [op for b in server.sent for op in b] == [f"delete d/f{i}" for i in range(n)]
    j.record_delete("d/g", is_dir=False)  # the journal empty again: the next op wakes it
    assert j._wake.is_set()
