"""The cache journal (what survives a crash) and the inode table (renames re-point descendants)."""

from __future__ import annotations

from pathlib import Path

import pyfuse3

from puterfs.fs.cache import BLOCK_SIZE, CacheStore
from puterfs.fs.inodes import InodeTable


def test_dirty_entries_survive_a_crash(tmp_path):
    c = CacheStore(tmp_path)
    e = c.create("docs/a.txt")
    with open(c.data_path(e.id), "wb") as f:
        f.write(b"hello world")
    c.mark_dirty(e)  # committed before the write returns; size is updated later
    clean = c.create_for_remote("big.bin", size=3 * BLOCK_SIZE, uid="u1", modified=1, mode=0o100644)
    clean.blocks.add(0)
    done = c.create_for_remote("done.bin", size=0, uid="u2", modified=1, mode=0o100644)
    # no close(): simulate the daemon dying
    del c
    c2 = CacheStore(tmp_path)
    dirty = c2.dirty_entries()
    assert [d.path for d in dirty] == ["docs/a.txt"]
    assert dirty[0].size == 11  # the data file is the truth after a crash
    assert c2.paths["done.bin"].complete  # complete clean files stay as cache
    assert "big.bin" not in c2.paths  # partial ones are dropped (block map was in memory)
    assert not c2.data_path(clean.id).exists()
    assert done.id in c2.entries


def test_orphan_data_files_are_kept_aside_not_deleted(tmp_path):
    c = CacheStore(tmp_path)
    (tmp_path / "data" / "999").write_bytes(b"junk")
    c.close()
    c2 = CacheStore(tmp_path)
    assert not (tmp_path / "data" / "999").exists()
    [kept] = c2.lost
    assert Path(kept["file"]).read_bytes() == b"junk"


def test_rename_repoints_subtree_and_replaces_target(tmp_path):
    c = CacheStore(tmp_path)
    a = c.create("d/x")
    b = c.create("d/sub/y")
    t = c.create("e/x")
    c.rename("d", "e")
    assert a.path == "e/x" and b.path == "e/sub/y"
    assert t.id not in c.entries  # replaced
    c.close()
    c2 = CacheStore(tmp_path)
    assert set(c2.paths) == {"e/x", "e/sub/y"}


def test_eviction_spares_dirty_and_open(tmp_path):
    c = CacheStore(tmp_path)
    entries = []
    for i in range(4):
        e = c.create_for_remote(f"f{i}", size=1000, uid=f"u{i}", modified=1, mode=0o100644)
        e.complete = True
        e.last_used = i
        entries.append(e)
    c.mark_dirty(entries[0])
    freed = c.evict(2000, keep={entries[1].id})
    assert freed == 2000
    assert set(c.paths) == {"f0", "f1"}


def test_missing_blocks():
    from puterfs.fs.cache import CacheEntry

    e = CacheEntry(id=1, path="p", size=3 * BLOCK_SIZE + 10)
    e.blocks = {1}
    assert e.missing_blocks(0, 10) == [0]
    assert e.missing_blocks(BLOCK_SIZE, 10) == []
    assert e.missing_blocks(BLOCK_SIZE - 1, 2) == [0]
    assert e.missing_blocks(3 * BLOCK_SIZE, 100) == [3]
    assert e.missing_blocks(10 * BLOCK_SIZE, 1) == []


def test_inode_table_rename_and_forget():
    t = InodeTable()
    d = t.new("a", is_dir=True)
    f = t.new("a/b/c.txt", is_dir=False)
    other = t.new("z", is_dir=False)
    t.rename(d, "q")
    assert t.by_path["q"] is d and t.by_path["q/b/c.txt"] is f and f.path == "q/b/c.txt"
    assert "a/b/c.txt" not in t.by_path
    f.lookups = 2
    t.rename(other, "q/b/c.txt")  # replaces f
    assert t.by_path["q/b/c.txt"] is other
    assert not f.in_tree and t.get(f.inode) is f  # the kernel still knows it
    t.forget(f.inode, 2)
    assert t.get(f.inode) is None
    assert t.get(pyfuse3.ROOT_INODE) is t.root
