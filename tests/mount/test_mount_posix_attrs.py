"""Mode bits and times kept on Puter (entry metadata), ctime/mtime that never go backwards,
POSIX link counts, and the truncate failure path (issue 15)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from mount_testlib import MountedFs, wait_for

T_OLD = 1_000_000_000_123_456_789  # 2001-09-09T01:46:40.123456789Z
T_DIR = 1_100_000_000_000_000_000


def _fresh_mount(mount: MountedFs, mount_factory, tmp_path: Path, name: str) -> MountedFs:
    """Stop `mount` (uploading everything) and mount again with an empty cache dir, so all
    that is seen comes from the server."""
    mount.proc.stop()
    return mount_factory(cache_dir=tmp_path / name)


def _metadata(mount: MountedFs, rel: str) -> dict:
    md = mount.remote.stat(rel).get("metadata")
    return json.loads(md) if md else {}


def test_modes_and_times_survive_a_remount(mount: MountedFs, mount_factory, tmp_path: Path) -> None:
    p = mount.path / "tool.sh"
    p.write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(p, 0o750)
    os.utime(p, ns=(T_OLD, T_OLD))
    d = mount.path / "dir"
    d.mkdir()
    (d / "inner.txt").write_bytes(b"i")
    os.chmod(d, 0o711)
    os.utime(d, ns=(T_DIR, T_DIR))
    clean = mount.path / "clean.txt"
    clean.write_bytes(b"c")
    mount.wait_uploaded()
    # attributes of a file that is already uploaded (clean) reach the server too
    os.chmod(clean, 0o600)
    os.utime(clean, ns=(T_OLD + 5, T_OLD + 5))
    mount.wait_uploaded()
    wait_for(lambda: _metadata(mount, "clean.txt").get("mode") == "100600", 10, "clean.txt's mode on the server")
    md = _metadata(mount, "tool.sh")
    assert md["mode"] == "100750" and md["mtime"] == "2001-09-09T01:46:40.123456789Z", md
    assert md["contentType"]  # kept next to ours

    m2 = _fresh_mount(mount, mount_factory, tmp_path, "cache-fresh")
    st = os.stat(m2.path / "tool.sh")
    assert stat.S_IMODE(st.st_mode) == 0o750 and stat.S_ISREG(st.st_mode)
    assert st.st_mtime_ns == T_OLD
    assert (m2.path / "tool.sh").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert subprocess.run([str(m2.path / "tool.sh")], capture_output=True).stdout == b"hi\n"
    st = os.stat(m2.path / "clean.txt")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == T_OLD + 5
    st = os.stat(m2.path / "dir")
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_mtime_ns == T_DIR


def test_chmod_does_not_wait_for_the_server(mount_factory) -> None:
    # chmod/utimens answer from memory; the update goes up after the write-back delay
    m = mount_factory(write_back=30)
    p = m.path / "f"
    p.write_bytes(b"x")
    m.proc.stop()  # uploads it
    m = mount_factory(write_back=30, cache_dir=m.cache_dir)
    os.stat(m.path / "f")
    n_before = len(m.emulator.log())
    for mode in (0o600, 0o640, 0o644, 0o755):
        os.chmod(m.path / "f", mode)
    assert stat.S_IMODE(os.stat(m.path / "f").st_mode) == 0o755
    assert [r for r in m.emulator.log()[n_before:] if r.get("path") == "/move"] == []
    n_before = len(m.emulator.log())
    assert m.proc.stop() == 0  # unmounting pushes the pending update, once
    assert len([r for r in m.emulator.log()[n_before:] if r.get("path") == "/move"]) == 1
    assert json.loads(m.remote.stat("f")["metadata"])["mode"] == "100755"


def test_pending_metadata_survives_sigkill(mount_factory, tmp_path: Path) -> None:
    # chmod/utimens not yet sent when the daemon is killed are in the cache journal: the
    # next mount on that cache dir sends them (a directory's too, and after a rename)
    m = mount_factory(write_back=30)
    (m.path / "f").write_bytes(b"x")
    (m.path / "d").mkdir()
    (m.path / "d" / "in").write_bytes(b"i")
    (m.path / "e").mkdir()
    m.proc.stop()  # all of it on the server
    m = mount_factory(write_back=30, cache_dir=m.cache_dir)
    e_mtime = os.stat(m.path / "e").st_mtime_ns
    time.sleep(1.1)  # the server's times are whole seconds
    (m.path / "e" / "new").write_bytes(b"n")  # moves e's mtime (a directory's, kept in metadata)
    e_moved = os.stat(m.path / "e").st_mtime_ns
    assert e_moved > e_mtime
    os.chmod(m.path / "f", 0o751)
    os.utime(m.path / "f", ns=(T_OLD, T_OLD))
    os.chmod(m.path / "d" / "in", 0o600)
    os.chmod(m.path / "d", 0o711)
    os.utime(m.path / "d", ns=(T_DIR, T_DIR))
    os.rename(m.path / "d", m.path / "d2")  # the pending updates follow the rename
    # nothing sent before the kill, or this test proves nothing (the rename neither: it is
    # local first, in the namespace journal, docs/namespace.md)
    assert _metadata(m, "f").get("mode") == "100644" and _metadata(m, "d").get("mode") != "40711"
    assert _metadata(m, "d/in").get("mode") != "100600"
    m.kill_and_remount()
    m.wait_uploaded()
    wait_for(lambda: _metadata(m, "f").get("mode") == "100751", 15, "f's mode on the server")
    wait_for(lambda: _metadata(m, "d2/in").get("mode") == "100600", 15, "d2/in's mode on the server")
    wait_for(lambda: _metadata(m, "d2").get("mode") == "40711", 15, "d2's mode on the server")
    assert stat.S_IMODE(os.stat(m.path / "f").st_mode) == 0o751
    m2 = _fresh_mount(m, mount_factory, tmp_path, "cache-fresh")  # what the server holds
    st = os.stat(m2.path / "f")
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == T_OLD
    st = os.stat(m2.path / "d2")
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_mtime_ns == T_DIR
    assert stat.S_IMODE(os.stat(m2.path / "d2" / "in").st_mode) == 0o600
    assert os.stat(m2.path / "e").st_mtime_ns == e_moved
    assert (m2.path / "e" / "new").read_bytes() == b"n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as a second user")
def test_other_users_get_the_other_bits_with_allow_other(mount_factory) -> None:
    # every entry is the mounting user's: with --allow-other the kernel (default_permissions)
    # checks another user against the "other" bits, and the sticky bit protects everything
    m = mount_factory(allow_other=True)
    (m.path / "private.txt").write_bytes(b"p")
    os.chmod(m.path / "private.txt", 0o600)
    (m.path / "public.txt").write_bytes(b"pub")
    os.chmod(m.path / "public.txt", 0o644)
    (m.path / "open").mkdir()
    os.chmod(m.path / "open", 0o777)
    (m.path / "sticky").mkdir()
    os.chmod(m.path / "sticky", 0o1777)

    def as_nobody(script: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["sh", "-c", script], cwd=m.path, capture_output=True, timeout=60, user=65534,
                              group=65534)  # fmt: skip

    assert as_nobody("cat public.txt").stdout == b"pub"
    for script, why in (("cat private.txt", b"Permission denied"), ("echo x >> public.txt", b"Permission denied"),
                        ("touch new.txt", b"Permission denied"), ("rm sticky/mine", b"Operation not permitted"),
                        ("chown 65534 open/made", b"Operation not permitted")):  # fmt: skip
        if script.startswith("rm"):
            assert as_nobody(": > sticky/mine").returncode == 0
        if script.startswith("chown"):
            assert as_nobody(": > open/made && mv open/made open/made2 && mv open/made2 open/made").returncode == 0
        proc = as_nobody(script)
        assert proc.returncode != 0 and why in proc.stderr, (script, proc)
    st = os.stat(m.path / "open" / "made")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())  # the mounting user's, whoever made it
    assert (m.path / "sticky" / "mine").exists()
    # what follows from it: another user's new file is not its own, so setting its times to
    # "now" (touch) needs write permission it does not have with the usual umask
    proc = as_nobody("umask 022; touch open/by-touch")
    assert proc.returncode != 0 and b"setting times" in proc.stderr, proc
    st = os.stat(m.path / "open" / "by-touch")  # created all the same
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.getuid()


def test_ctime_never_goes_backwards(mount: MountedFs) -> None:
    p = mount.path / "c.txt"
    p.write_bytes(b"c")
    mount.wait_uploaded()
    q = mount.path / "c2.txt"
    steps = [(lambda: os.chmod(p, 0o600), p), (lambda: os.utime(p, ns=(T_OLD, T_OLD)), p),
             (lambda: os.rename(p, q), q), (lambda: os.rename(q, p), p)]
    cur = p
    for i, (op, where) in enumerate(steps):
        before = os.stat(cur).st_ctime_ns
        cur = where
        time.sleep(0.01)
        op()
        after = os.stat(where).st_ctime_ns
        assert after >= before
        # a listing refresh (the server's change timestamp moves) must not bring it back
        mount.remote.write("other.txt", os.urandom(8))
        wait_for(lambda: "other.txt" in os.listdir(mount.path), 10, "a refreshed listing")
        mount.wait_uploaded()
        os.listdir(mount.path)
        assert os.stat(where).st_ctime_ns >= after, f"ctime went backwards after a refresh (step {i})"
        mount.remote.delete("other.txt")


def test_directory_mtime_moves_forward_and_survives(mount: MountedFs, mount_factory, tmp_path: Path) -> None:
    d = mount.path / "d"
    d.mkdir()
    mount.wait_uploaded()
    t0 = os.stat(d).st_mtime_ns
    time.sleep(1.1)
    (d / "new.txt").write_bytes(b"n")
    t1 = os.stat(d).st_mtime_ns
    assert t1 > t0
    mount.remote.write("poke.txt", b"p")  # the server's change timestamp moves: listings refresh
    wait_for(lambda: "poke.txt" in os.listdir(mount.path), 10, "a refreshed listing")
    os.listdir(d)
    assert os.stat(d).st_mtime_ns >= t1, "directory mtime went backwards after a refresh"
    time.sleep(1.1)
    os.unlink(d / "new.txt")
    t2 = os.stat(d).st_mtime_ns
    assert t2 > t1
    m2 = _fresh_mount(mount, mount_factory, tmp_path, "cache-fresh")
    assert os.stat(m2.path / "d").st_mtime_ns == t2  # not its creation time


def test_link_counts(mount: MountedFs) -> None:
    d = mount.path / "top"
    d.mkdir()
    assert os.stat(d).st_nlink == 2
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "f").write_bytes(b"f")
    assert os.stat(d).st_nlink == 4
    assert os.stat(d / "f").st_nlink == 1
    os.rmdir(d / "b")
    assert os.stat(d).st_nlink == 3
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        os.unlink(d / "f")
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_failed_truncate_leaves_the_file_uploaded(mount: MountedFs) -> None:
    p = mount.path / "t.bin"
    p.write_bytes(b"before")
    mount.wait_uploaded()
    with open(p, "r+b") as f:
        f.write(b"AFTER!")
    with pytest.raises(OSError) as info:
        os.truncate(p, 1 << 62)  # more than the cache disk can hold
    assert info.value.errno == errno.EFBIG
    assert p.read_bytes() == b"AFTER!"
    mount.wait_uploaded(timeout=30)
    assert mount.remote.read("t.bin") == b"AFTER!"
    log = mount.proc.log_text(tail=20000)
    assert "EIO" not in log and "ERROR" not in log, log


@pytest.mark.parametrize("tool", ["cp -p", "tar", "rsync"])
def test_tools_keep_modes_and_times(mount: MountedFs, mount_factory, tmp_path: Path, tool: str) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "bin" / "run", 0o755)
    (src / "doc.txt").write_bytes(b"doc")
    os.chmod(src / "doc.txt", 0o640)
    os.utime(src / "doc.txt", ns=(T_OLD, T_OLD))
    os.utime(src / "bin" / "run", ns=(T_OLD + 10**9, T_OLD + 10**9))
    dst = mount.path / "dst"
    if tool == "cp -p":
        subprocess.run(["cp", "-rp", str(src), str(dst)], check=True)
    elif tool == "tar":
        archive = tmp_path / "a.tar"
        subprocess.run(["tar", "-C", str(src), "-cf", str(archive), "."], check=True)
        dst.mkdir()
        subprocess.run(["tar", "-C", str(dst), "-xf", str(archive)], check=True)
    else:
        subprocess.run(["rsync", "-a", f"{src}/", f"{dst}/"], check=True)
    m2 = _fresh_mount(mount, mount_factory, tmp_path, "cache-fresh")
    dst = m2.path / "dst"
    for rel, mode, mtime in (("doc.txt", 0o640, T_OLD), ("bin/run", 0o755, T_OLD + 10**9)):
        st = os.stat(dst / rel)
        if tool == "tar":
            mtime -= mtime % 10**9  # a ustar archive holds whole seconds
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (mode, mtime), rel


def test_second_rsync_transfers_nothing(mount: MountedFs, mount_factory, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    for i in range(12):
        sub = src / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(os.urandom(100 + i * 1000))
        os.chmod(sub / f"f{i}.bin", 0o600 + (i % 2) * 0o155)
    (src / "big.bin").write_bytes(os.urandom(600_000))

    def rsync(target: Path) -> int:
        out = subprocess.run(["rsync", "-a", "--stats", f"{src}/", f"{target}/"], check=True,
                             capture_output=True, text=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("Number of regular files transferred"))
        return int(line.split(":")[1].strip().replace(",", ""))

    assert rsync(mount.path / "copy") == 13
    assert rsync(mount.path / "copy") == 0
    m2 = _fresh_mount(mount, mount_factory, tmp_path, "cache-fresh")
    assert rsync(m2.path / "copy") == 0, "rsync -a re-copied files after a remount"


def test_chown_to_another_user_is_eperm(mount: MountedFs) -> None:
    p = mount.path / "own.txt"
    p.write_bytes(b"o")
    os.chown(p, os.getuid(), os.getgid())  # to the mounting user: fine
    with pytest.raises(OSError) as info:
        os.chown(p, 12345, -1)
    assert info.value.errno == errno.EPERM
