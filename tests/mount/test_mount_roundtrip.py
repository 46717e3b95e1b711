"""Round trips through the mount, checked on the server: what a user writes is what Puter stores."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
from mount_testlib import MountedFs, MountFactory, local_tree, tree_diff, wait_for


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_create_reaches_server(mount: MountedFs) -> None:
    data = _rand(5000, 1)
    p = mount.path / "hello.bin"
    p.write_bytes(data)
    assert p.read_bytes() == data
    assert os.stat(p).st_size == len(data)
    mount.wait_uploaded()
    assert mount.remote.read("hello.bin") == data
    assert mount.remote.stat("hello.bin")["size"] == len(data)
    assert "hello.bin" in os.listdir(mount.path)


def test_empty_file_reaches_server(mount: MountedFs) -> None:
    p = mount.path / "empty.txt"
    p.touch()
    assert os.stat(p).st_size == 0
    mount.wait_uploaded()
    st = mount.remote.stat("empty.txt")
    assert not st["is_dir"] and st["size"] == 0
    assert mount.remote.read("empty.txt") == b""


def test_overwrite_shorter(mount: MountedFs) -> None:
    p = mount.path / "doc.txt"
    p.write_bytes(b"first version, rather long\n" * 100)
    mount.wait_uploaded()
    p.write_bytes(b"second\n")
    assert p.read_bytes() == b"second\n"
    mount.wait_uploaded()
    assert mount.remote.read("doc.txt") == b"second\n"


def test_append(mount: MountedFs) -> None:
    p = mount.path / "log.txt"
    p.write_bytes(b"line 1\n")
    mount.wait_uploaded()
    with open(p, "ab") as f:
        f.write(b"line 2\n")
    # two appends inside one write-back window
    with open(p, "ab") as f:
        f.write(b"line 3\n")
    with open(p, "ab") as f:
        f.write(b"line 4\n")
    assert p.read_bytes() == b"line 1\nline 2\nline 3\nline 4\n"
    mount.wait_uploaded()
    assert mount.remote.read("log.txt") == b"line 1\nline 2\nline 3\nline 4\n"


def test_append_via_shell(mount: MountedFs) -> None:
    subprocess.run(f"echo one > '{mount.path}/sh.txt' && echo two >> '{mount.path}/sh.txt'", shell=True, check=True)
    mount.wait_uploaded()
    assert mount.remote.read("sh.txt") == b"one\ntwo\n"


def test_truncate_shrink_and_grow(mount: MountedFs) -> None:
    data = _rand(10_000, 2)
    p = mount.path / "t.bin"
    p.write_bytes(data)
    mount.wait_uploaded()

    os.truncate(p, 3000)
    assert os.stat(p).st_size == 3000
    mount.wait_uploaded()
    assert mount.remote.read("t.bin") == data[:3000]

    os.truncate(p, 8000)
    expected = data[:3000] + bytes(5000)
    assert p.read_bytes() == expected
    mount.wait_uploaded()
    assert mount.remote.read("t.bin") == expected

    # ftruncate on an open descriptor, then a write past the new end (a sparse hole)
    with open(p, "r+b") as f:
        f.truncate(100)
        f.seek(200)
        f.write(b"tail")
    expected = data[:100] + bytes(100) + b"tail"
    assert p.read_bytes() == expected
    mount.wait_uploaded()
    assert mount.remote.read("t.bin") == expected

    os.truncate(p, 0)
    mount.wait_uploaded()
    assert mount.remote.read("t.bin") == b""


def test_write_in_the_middle(mount: MountedFs) -> None:
    data = bytearray(_rand(200_000, 3))
    p = mount.path / "mid.bin"
    p.write_bytes(bytes(data))
    mount.wait_uploaded()
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"X" * 5000, 65_000)
        os.pwrite(fd, b"Y" * 10, 199_995)  # extends the file by 5 bytes
    finally:
        os.close(fd)
    data[65_000:70_000] = b"X" * 5000
    data[199_995:] = b"Y" * 10
    assert p.read_bytes() == bytes(data)
    mount.wait_uploaded()
    assert mount.remote.read("mid.bin") == bytes(data)


def test_rename_over_existing_file(mount: MountedFs) -> None:
    a, b = mount.path / "a.txt", mount.path / "b.txt"
    a.write_bytes(b"content of a")
    b.write_bytes(b"content of b, to be replaced")
    mount.wait_uploaded()
    assert mount.remote.read("b.txt") == b"content of b, to be replaced"

    os.rename(a, b)
    assert not a.exists()
    assert b.read_bytes() == b"content of a"
    assert sorted(n for n in os.listdir(mount.path) if n.endswith(".txt")) == ["b.txt"]
    mount.wait_uploaded()
    assert mount.remote.read("b.txt") == b"content of a"
    assert not mount.remote.exists("a.txt")


def test_rename_across_directories(mount: MountedFs) -> None:
    (mount.path / "src").mkdir()
    (mount.path / "dst").mkdir()
    (mount.path / "src" / "f.txt").write_bytes(b"moving")
    (mount.path / "dst" / "g.txt").write_bytes(b"old target")
    mount.wait_uploaded()
    os.rename(mount.path / "src" / "f.txt", mount.path / "dst" / "g.txt")
    # a directory with content moves too
    (mount.path / "src" / "sub").mkdir()
    (mount.path / "src" / "sub" / "deep.txt").write_bytes(b"deep")
    os.rename(mount.path / "src" / "sub", mount.path / "dst" / "sub2")
    assert (mount.path / "dst" / "sub2" / "deep.txt").read_bytes() == b"deep"
    mount.wait_uploaded()
    assert mount.remote.listdir("src") == []
    assert mount.remote.listdir("dst") == ["g.txt", "sub2"]
    assert mount.remote.read("dst/g.txt") == b"moving"
    assert mount.remote.read("dst/sub2/deep.txt") == b"deep"


def test_rename_freshly_written_file(mount: MountedFs) -> None:
    # Written and renamed before its upload was due: the server must end with the new name only.
    p = mount.path / "draft.txt"
    p.write_bytes(b"draft")
    os.rename(p, mount.path / "final.txt")
    mount.wait_uploaded()
    assert mount.remote.read("final.txt") == b"draft"
    assert not mount.remote.exists("draft.txt")


def test_mkdir_p_and_rm_r(mount: MountedFs) -> None:
    deep = mount.path / "x" / "y" / "z"
    os.makedirs(deep)
    (deep / "leaf.txt").write_bytes(b"leaf")
    (mount.path / "x" / "top.txt").write_bytes(b"top")
    mount.wait_uploaded()
    assert mount.remote.is_dir("x/y/z")
    assert mount.remote.read("x/y/z/leaf.txt") == b"leaf"
    assert mount.remote.listdir("x") == ["top.txt", "y"]

    subprocess.run(["rm", "-r", str(mount.path / "x")], check=True)
    assert not (mount.path / "x").exists()
    assert "x" not in os.listdir(mount.path)
    mount.wait_uploaded()
    wait_for(lambda: not mount.remote.exists("x"), 10, "x deleted on the server")


def test_delete_file(mount: MountedFs) -> None:
    p = mount.path / "gone.txt"
    p.write_bytes(b"bye")
    mount.wait_uploaded()
    assert mount.remote.exists("gone.txt")
    p.unlink()
    assert not p.exists()
    mount.wait_uploaded()
    wait_for(lambda: not mount.remote.exists("gone.txt"), 10, "gone.txt deleted on the server")


def test_created_then_deleted_never_needs_upload(mount: MountedFs) -> None:
    p = mount.path / "ephemeral.txt"
    p.write_bytes(b"short-lived")
    p.unlink()
    mount.wait_uploaded()
    assert not mount.remote.exists("ephemeral.txt")


def _build_tree(root: os.PathLike[str] | str) -> None:
    rnd = random.Random(42)
    root = os.fspath(root)
    sizes = [0, 1, 100, 4095, 4096, 4097, 65_536, 131_073, 1_048_576 + 13]
    names = ["plain.txt", "with space.txt", "ünïcødé-名前.md", "#hash%pct?.bin", ".hidden", "UPPER.TXT"]
    for d in ["", "a", "a/b", "a/b/c", "empty", "docs and more"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i, size in enumerate(sizes):
        d = ["", "a", "a/b", "a/b/c", "docs and more"][i % 5]
        name = names[i % len(names)]
        with open(os.path.join(root, d, f"{i}-{name}"), "wb") as f:
            f.write(rnd.randbytes(size))


def test_tree_identical_after_remount(mount: MountedFs, mount_factory: MountFactory, tmp_path) -> None:
    proj = mount.path / "proj"
    _build_tree(proj)
    before = local_tree(proj)
    assert len([v for v in before.values() if v != "dir"]) == 9

    mount.wait_uploaded()
    on_server = mount.remote.tree("proj")
    assert on_server == before, "server differs from what was written:\n" + tree_diff(on_server, before)

    mount.remount()
    after = local_tree(proj)
    assert after == before, "tree changed across a remount:\n" + tree_diff(after, before)

    # A mount with an empty cache can only show what the server really holds.
    mount.proc.stop()
    fresh = mount_factory(cache_dir=tmp_path / "fresh-cache")
    from_fresh = local_tree(fresh.path / "proj")
    assert from_fresh == before, "fresh mount differs:\n" + tree_diff(from_fresh, before)
    fresh.proc.stop()


@pytest.mark.parametrize("size", [1, 131_072, 3 * 1024 * 1024 + 7])
def test_fresh_mount_reads_server_files(mount_factory: MountFactory, tmp_path, size: int) -> None:
    m = mount_factory()
    data = _rand(size, size)
    m.remote.write("srv/file.bin", data)
    p = m.path / "srv" / "file.bin"
    wait_for(p.exists, 10, "server file visible")
    assert os.stat(p).st_size == size
    assert p.read_bytes() == data
    # copy out with a program too
    out = tmp_path / "out.bin"
    shutil.copyfile(p, out)
    assert out.read_bytes() == data
    m.proc.stop()
