"""Interleavings of the uploader with renames, replayed deterministically in process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from puterfs.fs.cache import CacheStore
from puterfs.fs.operations import PuterOperations
from puterfs.fs.remote import Remote, RemoteEntry

ROOT = "/alice"


def _entry(path: str, uid: str, size: int, modified: int = 100) -> RemoteEntry:
    return RemoteEntry.from_json({"uid": uid, "id": uid, "path": f"{ROOT}/{path}", "name": path.rpartition("/")[2],
                                  "is_dir": False, "size": size, "modified": modified, "created": 50,
                                  "metadata": None})


def _new_file(ops: Any, parent: Any, name: str, data: bytes) -> Any:
    """A file made here and not uploaded yet (as `create` + `write` leave it)."""
    path = f"{parent.path}/{name}" if parent.path else name
    ent = ops.cache.create(path, mode=0o100644, mtime_ns=time.time_ns(), dirty=True)
    ops.cache.data_path(ent.id).write_bytes(data)
    ent.size = len(data)
    ent.complete = True
    ops.cache.save(ent)
    node = ops.table.new(path, is_dir=False, mode=0o100644)
    node.entry, node.size = ent, len(data)
    ops._dirty(node)
    parent.children[name] = node
    return ent


@pytest.fixture
def ops(tmp_path: Path) -> Any:
    cache = CacheStore(tmp_path / "cache")
    o = PuterOperations(Remote(None, ROOT), cache)
    root = o.table.root
    o._apply_listing(root, [_entry("a.txt", "u-a", 3), _dir("docs")], o.table.next_seq())
    o._apply_listing(root.children["docs"], [], o.table.next_seq())
    yield o
    cache.close()


def _dir(path: str) -> RemoteEntry:
    return RemoteEntry.from_json({"uid": f"u-{path}", "id": f"u-{path}", "path": f"{ROOT}/{path}", "name": path,
                                  "is_dir": True, "size": 0, "modified": 100, "created": 50, "metadata": None})


@pytest.mark.trio
async def test_a_file_replaced_while_its_batch_waits_is_not_uploaded(ops: Any) -> None:
    """fsx seed 7 at faults (a `.conflict-` copy of our own file after `mv b/.h 'b/d e'`): a
    batch of new files waited for a pending op on one of its paths; meanwhile a rename replaced
    another file of the batch (not on the server yet, so the rename's move does not overwrite).
    The batch then sent the replaced file's old bytes anyway: they took the name first, the
    move found it taken and moved our own data aside as a conflict copy (or the upload, finding
    the moved file there, did)."""
    root, docs = ops.table.root, ops.table.root.children["docs"]
    for d in (root, docs):  # fresh listings: the POSIX checks answer from them
        d.listed_epoch, d.listed_at = ops.epoch, trio.current_time()
    ops.ns.record_delete("docs/y", is_dir=False)  # rm docs/y; then docs/y made again: it waits
    n = _new_file(ops, root, "n", b"old n")
    y = _new_file(ops, docs, "y", b"new y")
    sent: list[list[str]] = []

    async def upload_many(items: list[tuple[str, bytes]], **kw: Any) -> list[Any]:
        sent.append([p for p, _ in items])
        return [_entry(p, f"u-{p}", len(data), 101) for p, data in items]

    ops.remote.upload_many = upload_many
    results: dict[int, Any] = {}

    async def batch() -> None:
        results.update(await ops._upload_batch([n, y]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batch)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # waiting for the delete of docs/y
        await ops._rename(root.inode, b"a.txt", root.inode, b"n", 0)  # a.txt replaces n
        assert [op.describe() for op in ops.ns.ops] == ["delete docs/y", "move a.txt -> n"]
        assert not ops.ns.ops[1].overwrite  # n is on no server
        for op in list(ops.ns.ops):  # the applier carries them out
            ops.ns.done(op)
        ops.ns._notify()
    assert sent == [["docs/y"]], "the replaced file's old bytes went up under the name"
    assert results == {n.id: None, y.id: None} and ops.cache.entries.get(n.id) is not n
    assert root.children["n"].remote_fp[0] == "u-a"  # a.txt, moved there by the applier


@pytest.mark.trio
async def test_a_folder_renamed_while_its_metadata_update_waits_is_updated_under_its_new_name(ops: Any) -> None:
    """The update of a folder's mode/mtime waited for a pending op on its path, and was then
    sent to the path it had before a rename made meanwhile: whatever the server holds there
    now (another folder, a file of ours made under the old name) got our folder's metadata and
    a new `modified`, which the next upload of such a file took for another client's edit (a
    `.conflict-` copy of our own file, fsx seed 7 with dropped answers)."""
    root = ops.table.root
    root.listed_epoch, root.listed_at = ops.epoch, trio.current_time()
    node = await ops._mkdir(root.inode, b"new", 0o755, 0o022)  # pending: mkdir new
    node.remote_fp = ("u-new", 0, 100)  # its folder is on the server (an upload made it)
    sent: list[str] = []

    async def set_metadata(path: str, md: Any, **kw: Any) -> RemoteEntry:
        sent.append(path)
        return _dir(path)

    ops.remote.set_metadata = set_metadata
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops._push_metadata_of, node)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # waiting for the mkdir
        await ops._rename(root.inode, b"new", root.inode, b"renamed", 0)
        for op in list(ops.ns.ops):  # the applier carries them out
            ops.ns.done(op)
        ops.ns._notify()
    assert sent == ["renamed"]
