"""Real programs on the mount: editors, git, tar, rsync, cp of a large tree."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import MountedFs, local_tree, tree_diff


@pytest.fixture
def puter_user(puter_user: Any, emulator: Any) -> Any:
    """A signed-up account (the free tier's limits) rather than a temporary one: after a
    remount every cached file checks its version (one /read each, docs/write-back.md), and the
    temp tier's 120 reads a minute made the tar x test's second diff of 165 files a minute
    long. What these tests prove is the programs' behaviour; the tiers' limits are
    test_mount_limits.py's."""
    username, token = emulator.new_user(temp=False)
    return dataclasses.replace(puter_user, username=username, token=token)


def run(*cmd: str | os.PathLike[str], cwd: os.PathLike[str] | str | None = None, timeout: float = 120) -> str:
    """Run a program, fail the test with its output when it fails."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_editor_atomic_save(mount: MountedFs) -> None:
    """write temp + fsync + rename over: what most editors and config tools do."""
    target = mount.path / "notes.txt"
    target.write_bytes(b"old notes\n")
    mount.wait_uploaded()
    assert mount.remote.read("notes.txt") == b"old notes\n"

    tmp = mount.path / ".notes.txt.tmp1234"
    new = b"new notes\n" * 1000
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, new)
        os.fsync(fd)  # on the local disk; the upload follows (test_mount_fsync.py)
    finally:
        os.close(fd)
    os.rename(tmp, target)
    dfd = os.open(mount.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert target.read_bytes() == new
    assert tmp.name not in os.listdir(mount.path)
    mount.wait_uploaded()
    assert mount.remote.read("notes.txt") == new
    assert not mount.remote.exists(tmp.name)


def test_sync_uploads_fsync_reaches_server_immediately(mount_factory) -> None:
    # A long write-back delay: only fsync (with --sync-uploads) can explain the data being on the server.
    m = mount_factory("--sync-uploads", write_back=60)
    p = m.path / "synced.bin"
    data = os.urandom(123_457)
    with open(p, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        assert m.remote.read("synced.bin") == data
    m.proc.stop()


def test_vim_edit(mount: MountedFs) -> None:
    p = mount.path / "poem.txt"
    p.write_bytes(b"foo is here\nand foo there\nnothing else\n")
    mount.wait_uploaded()
    # a real vim (swap file, backup-and-rename write) in silent ex mode
    run("vim", "-es", "-N", "-u", "NONE", "-i", "NONE", "-c", "%s/foo/bar/g", "-c", "wq", p, cwd=mount.path, timeout=60)
    expected = b"bar is here\nand bar there\nnothing else\n"
    assert p.read_bytes() == expected
    mount.wait_uploaded()
    assert mount.remote.read("poem.txt") == expected
    leftovers = [n for n in mount.remote.listdir("") if n.endswith((".swp", "~")) or n.startswith(".poem")]
    assert leftovers == []


def _make_git_repo(path: Path) -> None:
    path.mkdir()
    env_args = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    run("git", "init", "-q", "-b", "main", path)
    for i in range(4):
        (path / f"file{i}.txt").write_text(f"version {i}\n" * (i + 1) * 50)
        (path / "src").mkdir(exist_ok=True)
        (path / "src" / f"mod{i}.py").write_text(f"X = {i}\n")
        (path / "binary.bin").write_bytes(os.urandom(20_000 + i))
        run("git", "-C", path, "add", "-A")
        run("git", *env_args, "-C", path, "commit", "-q", "-m", f"commit {i}")
    run("git", "-C", path, "tag", "v1")


def test_git_clone_fsck_status(mount: MountedFs, tmp_path: Path) -> None:
    src = tmp_path / "origin"
    _make_git_repo(src)
    dest = mount.path / "repo"
    run("git", "clone", "-q", "--no-hardlinks", src, dest, timeout=180)
    run("git", "-C", dest, "fsck", "--full", "--strict")
    assert run("git", "-C", dest, "status", "--porcelain") == ""
    assert len(run("git", "-C", dest, "log", "--oneline").splitlines()) == 4
    assert run("git", "-C", dest, "rev-parse", "HEAD") == run("git", "-C", src, "rev-parse", "HEAD")

    mount.wait_uploaded(timeout=120)
    mounted = local_tree(dest)
    on_server = mount.stored_tree("repo")
    assert on_server == mounted, "server copy of the clone differs:\n" + tree_diff(on_server, mounted)

    # the repository is still sound after the mount restarts
    mount.remount()
    run("git", "-C", dest, "fsck", "--full", "--strict")
    assert run("git", "-C", dest, "status", "--porcelain") == ""


def _stdlib_tarball(tmp_path: Path) -> tuple[Path, Path]:
    """A tarball of a real source tree (part of the installed stdlib, a few MB) and its unpacked copy."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    orig = tmp_path / "orig"
    orig.mkdir()
    for name in ("email", "json", "asyncio", "unittest", "http", "xml", "logging", "importlib"):
        shutil.copytree(stdlib / name, orig / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    tarball = tmp_path / "src.tar.gz"
    run("tar", "czf", tarball, "-C", orig, ".")
    return tarball, orig


@pytest.mark.slow
def test_tar_extract_and_diff(mount: MountedFs, tmp_path: Path) -> None:
    tarball, orig = _stdlib_tarball(tmp_path)
    size = sum(p.stat().st_size for p in orig.rglob("*") if p.is_file())
    assert size > 2_000_000
    dest = mount.path / "src"
    dest.mkdir()
    run("tar", "xzf", tarball, "-C", dest, timeout=300)
    run("diff", "-r", orig, dest)
    mount.wait_uploaded(timeout=240)
    want = local_tree(orig)
    on_server = mount.stored_tree("src")
    assert on_server == want, "server differs from the tarball:\n" + tree_diff(on_server, want)
    mount.remount()
    run("diff", "-r", orig, dest)


def test_rsync_in_and_out(mount: MountedFs, tmp_path: Path) -> None:
    src = tmp_path / "rs-src"
    for d in ("a", "a/b", "c"):
        (src / d).mkdir(parents=True)
    for i in range(30):
        d = ["", "a", "a/b", "c"][i % 4]
        (src / d / f"f{i}.dat").write_bytes(os.urandom(i * 997))
    run("rsync", "-a", f"{src}/", f"{mount.path}/rs/", timeout=180)
    run("diff", "-r", src, mount.path / "rs")

    # a second run has nothing to transfer: sizes and mtimes survived on the mount
    changes = run("rsync", "-a", "-i", f"{src}/", f"{mount.path}/rs/", timeout=180)
    assert not [line for line in changes.splitlines() if line.startswith(">f")], changes

    mount.wait_uploaded(timeout=120)
    assert mount.remote.tree("rs") == local_tree(src)

    out = tmp_path / "rs-out"
    run("rsync", "-a", f"{mount.path}/rs/", f"{out}/", timeout=180)
    run("diff", "-r", src, out)
    # checksums, not just sizes and times
    dry = run("rsync", "-a", "-c", "-n", "-i", f"{mount.path}/rs/", f"{out}/")
    assert not [line for line in dry.splitlines() if line.startswith(">f")], dry


@pytest.mark.slow
def test_cp_tree_with_100mib_file(mount: MountedFs, tmp_path: Path) -> None:
    size = 100 * 1024 * 1024
    src = tmp_path / "bigtree"
    (src / "small").mkdir(parents=True)
    h = hashlib.sha256()
    chunk = os.urandom(1 << 20)
    with open(src / "big.bin", "wb") as f:
        for i in range(size >> 20):
            # vary each MiB so a dedup or a stuck offset cannot go unnoticed
            block = i.to_bytes(8, "little") + chunk[8:]
            f.write(block)
            h.update(block)
    big_sha = h.hexdigest()
    for i in range(10):
        (src / "small" / f"s{i}.txt").write_bytes(os.urandom(1000 + i))

    hwm_before = mount.proc.vm_hwm_kib()
    run("cp", "-r", src, mount.path / "bigtree", timeout=300)
    mount.wait_uploaded(timeout=300)
    hwm_after = mount.proc.vm_hwm_kib()

    assert mount.remote.stat("bigtree/big.bin")["size"] == size
    assert mount.remote.sha256("bigtree/big.bin") == big_sha
    for i in range(10):
        assert mount.remote.read(f"bigtree/small/s{i}.txt") == (src / "small" / f"s{i}.txt").read_bytes()
    # The daemon streams file data; it must never hold the whole file in memory.
    growth_mib = (hwm_after - hwm_before) / 1024
    assert growth_mib < 64, f"daemon peak RSS grew by {growth_mib:.0f} MiB while copying a 100 MiB file"
    # and the mount reads it back intact
    out = run("sha256sum", mount.path / "bigtree" / "big.bin", timeout=120)
    assert re.match(rf"^{big_sha}\s", out)
