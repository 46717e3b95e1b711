"""Change events applied to the listing cache (puterfs/fs/freshness.py), one rule at a time.

The mount-level behaviour is tested through two real mounts in tests/mount/test_mount_events.py;
these pin the rules that keep local data safe, on a real PuterOperations and cache journal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from puterfs.client._events import ItemEvent, normalize_entry
from puterfs.fs.cache import CacheStore
from puterfs.fs.freshness import Freshness, _Paths, _related
from puterfs.fs.operations import PuterOperations
from puterfs.fs.remote import Remote, RemoteEntry

ROOT = "/alice"


def entry(path: str, uid: str, *, size: int = 3, modified: int = 100, is_dir: bool = False) -> dict[str, Any]:
    return {"uid": uid, "id": uid, "path": f"{ROOT}/{path}" if path else ROOT, "name": path.rpartition("/")[2],
            "is_dir": is_dir, "size": size, "modified": modified, "created": 50, "metadata": None}


def event(name: str, e: dict[str, Any], old: str | None = None) -> ItemEvent:
    return ItemEvent(name=name, entry=normalize_entry(e), old_path=f"{ROOT}/{old}" if old else None, raw=e)


@pytest.fixture
def ops(tmp_path: Path) -> Any:
    cache = CacheStore(tmp_path / "cache")
    o = PuterOperations(Remote(None, ROOT), cache)
    root = o.table.root
    o._apply_listing(root, [RemoteEntry.from_json(entry("a.txt", "u-a")),
                            RemoteEntry.from_json(entry("docs", "u-docs", is_dir=True, size=0))], o.table.next_seq())
    docs = root.children["docs"]
    o._apply_listing(docs, [RemoteEntry.from_json(entry("docs/b.txt", "u-b"))], o.table.next_seq())
    yield o
    cache.close()


@pytest.fixture
def fresh(ops: Any) -> Freshness:
    return Freshness(ops, kernel=False)


def _clean_copy(ops: Any, rel: str) -> Any:
    node = ops.table.by_path[rel]
    uid, size, modified = node.remote_fp
    node.entry = ops.cache.create_for_remote(rel, size=size, uid=uid, modified=modified, mode=node.mode)
    return node.entry


def _dirty(ops: Any, rel: str) -> Any:
    node = ops.table.by_path[rel]
    ent = _clean_copy(ops, rel)
    ent.complete = True
    ops._dirty(node)
    return ent


def test_added_in_a_listed_folder_appears_and_unlisted_is_ignored(ops: Any, fresh: Freshness) -> None:
    fresh.apply(event("item.added", entry("new.txt", "u-new", size=7)))
    node = ops.table.root.children["new.txt"]
    assert node.size == 7 and node.remote_fp == ("u-new", 7, 100)
    fresh.apply(event("item.added", entry("unlisted/x.txt", "u-x")))
    assert "unlisted/x.txt" not in ops.table.by_path
    fresh.apply(event("item.added", {**entry("x", "u-out"), "path": "/bob/x"}))  # outside the mount
    assert "x" not in ops.table.root.children


def test_echo_changes_nothing(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    ent = _clean_copy(ops, "a.txt")
    fresh.apply(event("item.added", entry("a.txt", "u-a")))
    assert ops.table.root.children["a.txt"] is node and node.entry is ent and fresh.echoes == 1


def test_changed_content_drops_the_clean_copy(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    ent = _clean_copy(ops, "a.txt")
    fresh.apply(event("item.added", entry("a.txt", "u-a", size=9, modified=200)))  # /batch overwrite
    assert ent.id not in ops.cache.entries and node.entry is None
    assert ops.table.root.children["a.txt"] is node and node.size == 9


def test_changed_content_never_drops_dirty_data(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    ent = _dirty(ops, "a.txt")
    fresh.apply(event("item.updated", entry("a.txt", "u-a", size=9, modified=200)))
    assert node.entry is ent and ent.dirty and ent.id in ops.cache.entries
    assert (ent.base_uid, ent.base_size, ent.base_modified) == ("u-a", 3, 100)  # the conflict rule sees it


def test_removed_dirty_file_stays_and_goes_up_again(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    ent = _dirty(ops, "a.txt")
    fresh.apply(event("item.removed", entry("a.txt", "u-a")))
    assert ops.table.root.children["a.txt"] is node and node.entry is ent and ent.dirty
    assert node.remote_fp is None and ent.base_uid is None  # uploaded as a new file


def test_removed_clean_file_and_folder_go_with_their_cached_data(ops: Any, fresh: Freshness) -> None:
    ent = _clean_copy(ops, "docs/b.txt")
    fresh.apply(event("item.removed", entry("docs", "u-docs", is_dir=True, size=0)))
    assert "docs" not in ops.table.root.children and "docs/b.txt" not in ops.table.by_path
    assert ent.id not in ops.cache.entries
    # a listing requested before the event must not bring it back
    assert ops.table.root.tombstones and "docs" in ops.table.root.tombstones


def test_removed_folder_with_a_dirty_file_below_stays(ops: Any, fresh: Freshness) -> None:
    ent = _dirty(ops, "docs/b.txt")
    fresh.apply(event("item.removed", entry("docs", "u-docs", is_dir=True, size=0)))
    assert "docs" in ops.table.root.children and ent.id in ops.cache.entries and ent.dirty


def test_rename_keeps_inode_and_cached_data(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    inode = node.inode
    ent = _clean_copy(ops, "a.txt")
    fresh.apply(event("item.updated", entry("z.txt", "u-a", modified=101)))  # /rename: no old path, modified bumped
    root = ops.table.root.children
    assert "a.txt" not in root and root["z.txt"].inode == inode
    assert ops.cache.paths.get("z.txt") is ent and "a.txt" not in ops.cache.paths


def test_move_between_folders_and_out_of_view(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    fresh.apply(event("item.moved", entry("docs/a.txt", "u-a", modified=101), old="a.txt"))  # moves bump modified
    assert "a.txt" not in ops.table.root.children and ops.table.root.children["docs"].children["a.txt"] is node
    fresh.apply(event("item.moved", entry("elsewhere/a.txt", "u-a", modified=102), old="docs/a.txt"))
    assert "a.txt" not in ops.table.root.children["docs"].children and not node.in_tree


def test_late_events_do_not_undo_newer_local_state(ops: Any, fresh: Freshness) -> None:
    """An event sent before a change of ours that is already applied here (the echo of our
    first rename arriving after our second, an update of the old name) changes nothing; one of
    the same second is settled by reading the listing again."""
    node = ops.table.root.children["a.txt"]
    node.remote_fp = ("u-a", 3, 105)  # what our own rename/upload answered
    fresh.apply(event("item.updated", entry("old-name.txt", "u-a", modified=104)))
    fresh.apply(event("item.moved", entry("docs/a.txt", "u-a", modified=104), old="a.txt"))
    assert ops.table.root.children["a.txt"] is node and "a.txt" not in ops.table.root.children["docs"].children
    assert "old-name.txt" not in ops.table.root.children
    fresh.apply(event("item.moved", entry("docs/a.txt", "u-a", modified=105), old="a.txt"))
    assert ops.table.root.children["a.txt"] is node  # not applied blindly...
    assert ops.table.root.listed_epoch == -1 and ops.table.root.children["docs"].listed_epoch == -1  # ...re-read


def test_move_of_a_dirty_file_leaves_it_to_the_listings(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    ent = _dirty(ops, "a.txt")
    fresh.apply(event("item.moved", entry("docs/a.txt", "u-a", modified=101), old="a.txt"))
    assert ops.table.root.children["a.txt"] is node and node.entry is ent and ent.path == "a.txt"
    assert ops.table.root.listed_epoch == -1  # read again; the dirty file is kept by the listing


def test_removal_of_another_object_at_the_path_is_ignored(ops: Any, fresh: Freshness) -> None:
    node = ops.table.root.children["a.txt"]
    fresh.apply(event("item.removed", entry("a.txt", "u-someone-else")))
    assert ops.table.root.children["a.txt"] is node


def test_pending_upload_is_ignored(ops: Any, fresh: Freshness) -> None:
    e = {"id": "k", "uid": "k", "path": f"{ROOT}/p.txt", "name": "p.txt", "is_dir": False, "size": 3,
         "pending_upload": True, "status": "pending"}
    fresh.apply(event("item.pending", e))
    assert "p.txt" not in ops.table.root.children


def test_parked_paths_answer_related_like_each_path_does() -> None:
    """The parked events' path index (freshness._Paths) says what _related says of each path."""
    names = ["", "a", "ab", "a/b", "a/bc", "a/b/c", "a/b/c/d", "b", "b/a", "c"]
    for size in range(4):
        for start in range(len(names)):
            chosen = [names[(start + k * 3) % len(names)] for k in range(size)]
            paths = _Paths()
            for q in chosen:
                paths.add(q)
            for p in names:
                assert paths.related(p) == any(_related(p, q) for q in chosen), (p, chosen)


def _listed(ops: Any, *dirs: str) -> None:
    """The folders' listings are fresh (the POSIX checks answer from them, no server call)."""
    import trio

    for rel in dirs:
        node = ops.table.by_path[rel]
        if node.children is None:
            ops._apply_listing(node, [], ops.table.next_seq())
        node.listed_epoch, node.listed_at = ops.epoch, trio.current_time()


def _apply_journal(ops: Any, modified: int) -> list[ItemEvent]:
    """What the applier does for each pending op in turn when the server answers it, and the
    change event the server sends for each (delivered by the caller, late)."""
    events = []
    for op in list(ops.ns.ops):
        assert op.kind == "move"
        uid, size, _ = op.node.remote_fp
        e = entry(op.dest, uid, size=size, modified=modified, is_dir=op.node.is_dir)
        ops._ns_applied(op, RemoteEntry.from_json(e))
        ops.ns.done(op)
        events.append(event("item.moved", e, old=op.path))
    return events


@pytest.mark.trio
async def test_late_echo_of_our_move_does_not_bring_back_a_name_moved_away(ops: Any, fresh: Freshness) -> None:
    """fsx seed 7 (`mkdir a/a` -> EEXIST under load): `mv b a/a; mv a z; mv c/h a`, and the
    echo of the first move (a/a, from b) is handled after the others, as on a loaded machine
    (the events of the batch queued behind its answer, or parked until the ops were applied).
    The echo describes a state our later renames have left: applied, it put a ghost `a/a`
    into the new `a` (the old c/h), so `mkdir a/a` said EEXIST. Our own echo changes nothing."""
    root = ops.table.root
    ops._apply_listing(root, [RemoteEntry.from_json(entry(n, f"u-{n}", size=0, is_dir=True)) for n in "abc"],
                       ops.table.next_seq())
    c = root.children["c"]
    ops._apply_listing(c, [RemoteEntry.from_json(entry("c/h", "u-h", size=0, is_dir=True))], ops.table.next_seq())
    _listed(ops, "", "a", "b", "c", "c/h")
    ino = {p: ops.table.by_path[p].inode for p in ("", "a", "b", "c")}
    await ops._rename(ino[""], b"b", ino["a"], b"a", 0)
    await ops._rename(ino[""], b"a", ino[""], b"z", 0)
    await ops._rename(ino["c"], b"h", ino[""], b"a", 0)
    assert [op.describe() for op in ops.ns.ops] == ["move b -> a/a", "move a -> z", "move c/h -> a"]
    for ev in _apply_journal(ops, modified=101):
        await fresh._handle(ev)  # nothing pending any more: applied at once
    assert sorted(ops.table.by_path["a"].children) == [] and sorted(ops.table.by_path["z"].children) == ["a"]
    await ops._mkdir(ops.table.by_path["a"].inode, b"a", 0o755, 0)  # EEXIST before the fix


@pytest.mark.trio
async def test_late_echo_of_our_upload_does_not_undo_a_rename_over_the_file(ops: Any, fresh: Freshness) -> None:
    """fsx seed 7 with the events late: a file's upload is answered, then `mv docs/b.txt a.txt`
    replaces it; the upload's echo (a.txt at its old size) came after both and gave the moved
    file the replaced file's uid and size (reads of it then failed: short read, EIO)."""
    from puterfs.fs.remote import RemoteEntry as RE

    root = ops.table.root
    _listed(ops, "", "docs")
    old = root.children["a.txt"]
    ent = _clean_copy(ops, "a.txt")
    ops._uploaded(ent, ent.version, RE.from_json(entry("a.txt", "u-a", size=9, modified=101)))
    await ops._rename(root.children["docs"].inode, b"b.txt", root.inode, b"a.txt", 0)
    moved = root.children["a.txt"]
    assert moved is not old and [op.describe() for op in ops.ns.ops] == ["move docs/b.txt -> a.txt"]
    late = [event("item.added", entry("a.txt", "u-a", size=9, modified=101)), *_apply_journal(ops, modified=102)]
    for ev in late:
        await fresh._handle(ev)
    assert root.children["a.txt"] is moved and moved.remote_fp == ("u-b", 3, 102) and moved.size == 3


def test_a_listing_requested_before_an_upload_finished_keeps_the_uploaded_file(tmp_path: Path) -> None:
    """A listing requested before our upload of a file finished shows the version the upload
    replaced: applied after the upload's answer, it took that for a change on the server,
    dropped the uploaded clean copy and left the old fingerprint (and size) on the name, so a
    read fetched the old size and got the new content's (EIO). The upload wins."""
    cache = CacheStore(tmp_path / "cache")
    o = PuterOperations(Remote(None, ROOT), cache)
    root = o.table.root
    ent = cache.create("doc.txt", dirty=True)  # a save not uploaded yet (resumed at start)
    fd = cache.open_data(ent.id)
    try:
        os.pwrite(fd, b"saved!\n", 0)
    finally:
        os.close(fd)
    ent.size = 7
    cache.save(ent)
    seq = o.table.next_seq()  # the listing is requested
    o._uploaded(ent, ent.version, RemoteEntry.from_json(entry("doc.txt", "u-new", size=7, modified=200)))
    o._apply_listing(root, [RemoteEntry.from_json(entry("doc.txt", "u-old", size=21, modified=100))], seq)
    node = root.children["doc.txt"]
    assert node.entry is ent and cache.entries.get(ent.id) is ent and not ent.dirty
    assert node.remote_fp == ("u-new", 7, 200)
    assert o._attr(node).st_size == 7
    with cache.open_file(ent.id) as f:
        assert f.read() == b"saved!\n"
    # a listing requested after the upload shows it, and changes nothing
    o._apply_listing(root, [RemoteEntry.from_json(entry("doc.txt", "u-new", size=7, modified=200))],
                     o.table.next_seq())
    assert root.children["doc.txt"].entry is ent and cache.entries.get(ent.id) is ent
    cache.close()
