"""Symbolic links, kept on Puter as NAME.rclonelink files holding the target (rclone's
--links convention, docs/inodes.md), and turned off with --no-links (issue 15)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from mount_testlib import MountedFs, wait_for


def _errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_symlinks_relative_absolute_dangling(mount: MountedFs) -> None:
    root = mount.path / "w"
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "target.txt").write_bytes(b"payload")
    os.symlink("target.txt", root / "dir" / "rel")
    os.symlink(str(root / "dir" / "target.txt"), root / "abs")
    os.symlink("nowhere/at/all", root / "dangling")
    os.symlink("dir", root / "dirlink")
    st = os.lstat(root / "dir" / "rel")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target.txt") and st.st_uid == os.getuid()
    assert os.readlink(root / "dir" / "rel") == "target.txt"
    assert (root / "dir" / "rel").read_bytes() == b"payload"
    assert os.readlink(root / "abs") == str(root / "dir" / "target.txt")
    assert (root / "abs").read_bytes() == b"payload"
    assert os.readlink(root / "dangling") == "nowhere/at/all"
    assert _errno_of(os.stat, root / "dangling") == errno.ENOENT
    assert stat.S_ISLNK(os.lstat(root / "dangling").st_mode)
    assert sorted(os.listdir(root / "dirlink")) == ["rel", "target.txt"]
    assert sorted(os.listdir(root)) == ["abs", "dangling", "dir", "dirlink"]
    assert _errno_of(os.symlink, "x", root / "abs") == errno.EEXIST
    assert _errno_of(os.mkdir, root / "abs") == errno.EEXIST
    mount.wait_uploaded()
    # on the server: plain files NAME.rclonelink holding the target
    assert mount.remote.read("w/dir/rel.rclonelink") == b"target.txt"
    assert mount.remote.read("w/dangling.rclonelink") == b"nowhere/at/all"
    assert sorted(mount.remote.listdir("w")) == ["abs.rclonelink", "dangling.rclonelink", "dir", "dirlink.rclonelink"]


def test_rename_and_unlink_links(mount: MountedFs) -> None:
    root = mount.path
    (root / "t").write_bytes(b"t")
    os.symlink("t", root / "l1")
    mount.wait_uploaded()
    os.rename(root / "l1", root / "l2")
    assert os.readlink(root / "l2") == "t" and not os.path.lexists(root / "l1")
    (root / "sub").mkdir()
    os.rename(root / "l2", root / "sub" / "l3")
    assert os.readlink(root / "sub" / "l3") == "t"
    mount.wait_uploaded()
    assert mount.remote.read("sub/l3.rclonelink") == b"t"
    assert not mount.remote.exists("l1.rclonelink") and not mount.remote.exists("l2.rclonelink")
    # a file renamed over a link replaces it, and a link over a file
    (root / "f").write_bytes(b"file")
    os.rename(root / "f", root / "sub" / "l3")
    assert not os.path.islink(root / "sub" / "l3") and (root / "sub" / "l3").read_bytes() == b"file"
    os.symlink("t", root / "l4")
    os.rename(root / "l4", root / "sub" / "l3")
    assert os.readlink(root / "sub" / "l3") == "t"
    mount.wait_uploaded()
    assert sorted(mount.remote.listdir("sub")) == ["l3.rclonelink"]
    os.unlink(root / "sub" / "l3")
    assert (root / "t").read_bytes() == b"t"  # unlinking a link leaves its target
    mount.wait_uploaded()
    assert mount.remote.listdir("sub") == []
    assert mount.remote.read("t") == b"t"


def test_links_survive_a_remount_and_come_from_other_tools(mount: MountedFs, mount_factory, tmp_path: Path) -> None:
    os.symlink("../somewhere", mount.path / "mine")
    os.utime(mount.path / "mine", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000), follow_symlinks=False)
    mount.remote.write("theirs.rclonelink", b"/etc/hostname")  # as rclone --links writes one
    longest = "L" * 255  # NAME_MAX holds for the link's name (the server keeps the longer NAME.rclonelink)
    os.symlink("t", mount.path / longest)
    mount.proc.stop()
    m2 = mount_factory(cache_dir=tmp_path / "fresh-cache")
    assert os.readlink(m2.path / "mine") == "../somewhere"
    assert os.lstat(m2.path / "mine").st_mtime_ns == 1_000_000_000_000_000_000
    assert os.readlink(m2.path / "theirs") == "/etc/hostname"
    assert os.readlink(m2.path / longest) == "t"
    assert {"mine", "theirs", longest} <= set(os.listdir(m2.path))
    assert not any(n.endswith(".rclonelink") for n in os.listdir(m2.path))


def test_rclonelink_names_are_reserved(mount: MountedFs) -> None:
    err = _errno_of(lambda: (mount.path / "x.rclonelink").write_bytes(b"x"))
    assert err == errno.EINVAL
    # a file and a link of the same name on the server: the file is shown
    mount.remote.write("both", b"file")
    mount.remote.write("both.rclonelink", b"elsewhere")
    wait_for(lambda: "both" in os.listdir(mount.path), 10, "both visible")
    assert not os.path.islink(mount.path / "both") and (mount.path / "both").read_bytes() == b"file"


def test_no_links_option(mount_factory) -> None:
    m = mount_factory("--no-links")
    m.remote.write("old.rclonelink", b"target")
    wait_for(lambda: "old.rclonelink" in os.listdir(m.path), 10, "the link file visible as a file")
    assert (m.path / "old.rclonelink").read_bytes() == b"target"
    assert _errno_of(os.symlink, "t", m.path / "s") == errno.EPERM
    (m.path / "new.rclonelink").write_bytes(b"as a file")  # allowed: no links to confuse it with
    m.wait_uploaded()
    assert m.remote.read("new.rclonelink") == b"as a file"


def test_hard_links_fifos_sockets_devices_are_eperm(mount: MountedFs) -> None:
    import socket

    (mount.path / "orig").write_bytes(b"o")
    assert _errno_of(os.link, mount.path / "orig", mount.path / "hard") == errno.EPERM
    assert _errno_of(os.mkfifo, mount.path / "fifo") == errno.EPERM
    assert _errno_of(os.mknod, mount.path / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3)) == errno.EPERM
    assert _errno_of(os.mknod, mount.path / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0)) == errno.EPERM
    s = socket.socket(socket.AF_UNIX)
    try:
        assert _errno_of(s.bind, str(mount.path / "sock")) == errno.EPERM
    finally:
        s.close()
    assert not {"hard", "fifo", "chr", "blk", "sock"} & set(os.listdir(mount.path))


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1",
           "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_git_clone_with_symlinks(mount: MountedFs, mount_factory, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "main.py").write_text("print('hi')\n")
    (repo / "run.sh").write_text("#!/bin/sh\nexec python3 src/main.py\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("src/main.py", repo / "link-to-file")
    os.symlink("src", repo / "link-to-dir")
    os.symlink("missing", repo / "dangling")
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "init", cwd=repo)
    _git("clone", "-q", str(repo), str(mount.path / "clone"), cwd=tmp_path)
    clone = mount.path / "clone"
    assert os.readlink(clone / "link-to-file") == "src/main.py"
    assert os.readlink(clone / "link-to-dir") == "src"
    assert os.readlink(clone / "dangling") == "missing"
    assert (clone / "link-to-dir" / "main.py").read_text() == "print('hi')\n"
    assert os.stat(clone / "run.sh").st_mode & 0o111
    assert _git("status", "--porcelain", cwd=clone) == ""
    mount.proc.stop()
    m2 = mount_factory(cache_dir=tmp_path / "fresh-cache")
    clone = m2.path / "clone"
    assert os.readlink(clone / "link-to-dir") == "src"
    assert _git("status", "--porcelain", cwd=clone) == "", "the clone changed across a remount"
    _git("fsck", "--no-progress", cwd=clone)  # check=True: a damaged object store fails
