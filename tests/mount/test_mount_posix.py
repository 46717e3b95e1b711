"""POSIX error numbers and semantics the mount must provide where the Puter server is not POSIX."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from mount_testlib import MountedFs, wait_for


def _errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def test_rmdir_non_empty_is_enotempty(mount: MountedFs) -> None:
    d = mount.path / "full"
    d.mkdir()
    (d / "f").write_bytes(b"x")
    assert _errno_of(os.rmdir, d) == errno.ENOTEMPTY
    mount.wait_uploaded()
    assert mount.remote.read("full/f") == b"x"


def _rmdir_keeps_what_the_server_holds(mount: MountedFs, d, *, raced: bool) -> None:
    """rmdir of `d`, which the mount saw empty and the server has filled meanwhile. When the
    change event came first, the cached listing knows and rmdir says ENOTEMPTY. When the rmdir
    came first (the event late, or none: events down), the mount removes the directory locally;
    its non-recursive delete is refused by the server (not empty), and the directory comes back
    with what was made in it. Either way nothing on the server is deleted."""
    try:
        os.rmdir(d)
        removed = True
    except OSError as exc:
        assert exc.errno == errno.ENOTEMPTY, f"rmdir of a directory non-empty on the server gave {exc}"
        removed = False
    if raced:
        assert removed, "the mount could not know the server's change, yet refused the rmdir"
    if removed:
        wait_for(lambda: (d / "from-elsewhere.txt").exists(), 30, "the directory back, with the server's file")
        assert (d / "from-elsewhere.txt").read_bytes() == b"keep me"
    mount.wait_uploaded()
    assert mount.remote.read(f"{d.name}/from-elsewhere.txt") == b"keep me"
    assert os.listdir(d) == ["from-elsewhere.txt"]


def test_rmdir_of_dir_filled_on_the_server(mount: MountedFs) -> None:
    # The mount saw the directory empty; the server filled it meanwhile. rmdir must not
    # delete the server's content (the server's /delete is recursive by default).
    wait_for(lambda: (st := mount.proc.state()) and st["freshness"]["mode"] == "events", 20, "change events")
    d = mount.path / "shared"
    d.mkdir()
    mount.wait_uploaded()
    assert os.listdir(d) == []
    mount.remote.write("shared/from-elsewhere.txt", b"keep me")
    _rmdir_keeps_what_the_server_holds(mount, d, raced=False)


def test_rmdir_before_the_servers_change_is_seen_keeps_it(mount_factory, emulator) -> None:
    # No change events and a slow timestamp poll: the mount cannot know the directory was
    # filled, so its rmdir succeeds here, and the server's refusal brings the directory back.
    m = mount_factory(poll_interval=600)
    d = m.path / "shared2"
    d.mkdir()
    m.wait_uploaded()
    assert os.listdir(d) == []
    emulator.set_faults({"path": "/socket.io/", "status": 503})
    try:
        emulator.drop_sockets()
        wait_for(lambda: (st := m.proc.state()) and st["freshness"]["mode"] == "polling", 20, "events down")
        m.remote.write("shared2/from-elsewhere.txt", b"keep me")
        _rmdir_keeps_what_the_server_holds(m, d, raced=True)
    finally:
        emulator.clear_faults()


def test_mkdir_existing_is_eexist(mount: MountedFs) -> None:
    (mount.path / "d").mkdir()
    (mount.path / "f").write_bytes(b"")
    assert _errno_of(os.mkdir, mount.path / "d") == errno.EEXIST
    assert _errno_of(os.mkdir, mount.path / "f") == errno.EEXIST
    mount.wait_uploaded()
    assert mount.remote.is_dir("d")
    assert not mount.remote.is_dir("f")


def test_mkdir_existing_on_server_is_eexist(mount: MountedFs) -> None:
    mount.remote.mkdir("made-remotely")
    wait_for(lambda: (mount.path / "made-remotely").is_dir(), 10, "remote dir visible")
    assert _errno_of(os.mkdir, mount.path / "made-remotely") == errno.EEXIST


def test_open_excl_existing_is_eexist(mount: MountedFs) -> None:
    p = mount.path / "excl.txt"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"first")
    os.close(fd)
    assert _errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644) == errno.EEXIST
    assert p.read_bytes() == b"first"
    mount.wait_uploaded()
    assert mount.remote.read("excl.txt") == b"first"


def test_rename_dir_over_non_empty_dir_is_enotempty(mount: MountedFs) -> None:
    (mount.path / "src").mkdir()
    (mount.path / "src" / "s.txt").write_bytes(b"s")
    (mount.path / "dst").mkdir()
    (mount.path / "dst" / "keep.txt").write_bytes(b"keep")
    mount.wait_uploaded()
    assert _errno_of(os.rename, mount.path / "src", mount.path / "dst") in (errno.ENOTEMPTY, errno.EEXIST)
    mount.wait_uploaded()
    assert mount.remote.read("dst/keep.txt") == b"keep"
    assert mount.remote.read("src/s.txt") == b"s"


def test_rename_dir_over_empty_dir_replaces_it(mount: MountedFs) -> None:
    (mount.path / "src").mkdir()
    (mount.path / "src" / "s.txt").write_bytes(b"s")
    (mount.path / "empty").mkdir()
    mount.wait_uploaded()
    os.rename(mount.path / "src", mount.path / "empty")
    assert (mount.path / "empty" / "s.txt").read_bytes() == b"s"
    assert not (mount.path / "src").exists()
    mount.wait_uploaded()
    assert mount.remote.read("empty/s.txt") == b"s"
    assert not mount.remote.exists("src")


def test_rename_file_over_dir_is_eisdir(mount: MountedFs) -> None:
    (mount.path / "f.txt").write_bytes(b"f")
    (mount.path / "d").mkdir()
    (mount.path / "d" / "inner.txt").write_bytes(b"inner")
    mount.wait_uploaded()
    assert _errno_of(os.rename, mount.path / "f.txt", mount.path / "d") == errno.EISDIR
    # and over an empty directory too (rename(2): EISDIR whenever newpath is a directory)
    (mount.path / "e").mkdir()
    assert _errno_of(os.rename, mount.path / "f.txt", mount.path / "e") == errno.EISDIR
    mount.wait_uploaded()
    assert mount.remote.read("d/inner.txt") == b"inner"
    assert mount.remote.read("f.txt") == b"f"
    assert mount.remote.is_dir("e")


def test_rename_dir_over_file_is_enotdir(mount: MountedFs) -> None:
    (mount.path / "f.txt").write_bytes(b"f")
    (mount.path / "d").mkdir()
    mount.wait_uploaded()
    assert _errno_of(os.rename, mount.path / "d", mount.path / "f.txt") == errno.ENOTDIR
    mount.wait_uploaded()
    assert mount.remote.read("f.txt") == b"f"
    assert mount.remote.is_dir("d")


def test_rename_dir_into_itself_is_einval(mount: MountedFs) -> None:
    (mount.path / "d" / "sub").mkdir(parents=True)
    (mount.path / "d" / "x.txt").write_bytes(b"x")
    mount.wait_uploaded()
    assert _errno_of(os.rename, mount.path / "d", mount.path / "d" / "sub" / "d2") == errno.EINVAL
    assert _errno_of(os.rename, mount.path / "d", mount.path / "d" / "d3") == errno.EINVAL
    assert sorted(os.listdir(mount.path / "d")) == ["sub", "x.txt"]
    mount.wait_uploaded()
    assert mount.remote.listdir("d") == ["sub", "x.txt"]
    assert "d" in mount.remote.listdir("")


def test_name_too_long(mount: MountedFs) -> None:
    long_name = "n" * 256
    assert _errno_of(os.open, mount.path / long_name, os.O_CREAT | os.O_WRONLY, 0o644) == errno.ENAMETOOLONG
    assert _errno_of(os.mkdir, mount.path / long_name) == errno.ENAMETOOLONG
    (mount.path / "short").write_bytes(b"s")
    assert _errno_of(os.rename, mount.path / "short", mount.path / long_name) == errno.ENAMETOOLONG
    # 255 bytes (in multi-byte UTF-8 too) is allowed and reaches the server
    ok = "é" * 127 + "x"  # 255 bytes
    assert len(ok.encode()) == 255
    (mount.path / ok).write_bytes(b"max")
    mount.wait_uploaded()
    assert mount.remote.read(ok) == b"max"
    assert not any(len(n.encode()) > 255 for n in mount.remote.listdir(""))


def test_hard_link_refused_cleanly(mount: MountedFs) -> None:
    (mount.path / "orig").write_bytes(b"o")
    err = _errno_of(os.link, mount.path / "orig", mount.path / "hard")
    assert err in (errno.EPERM, errno.ENOTSUP), f"link() gave {errno.errorcode.get(err, err)}"
    assert not (mount.path / "hard").exists()


def test_symlink_refused_or_works(mount: MountedFs) -> None:
    # Puter has no POSIX symlinks: refusing is fine, an EIO (a crash in the handler) is not.
    try:
        os.symlink("orig", mount.path / "sym")
    except OSError as exc:
        assert exc.errno in (errno.EPERM, errno.ENOTSUP, errno.ENOSYS), exc
    else:
        assert os.readlink(mount.path / "sym") == "orig"


def test_mkfifo_refused_cleanly(mount: MountedFs) -> None:
    err = _errno_of(os.mkfifo, mount.path / "fifo")
    assert err in (errno.EPERM, errno.ENOTSUP, errno.EACCES), f"mkfifo gave {errno.errorcode.get(err, err)}"
    err = _errno_of(os.mknod, mount.path / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    assert err in (errno.EPERM, errno.ENOTSUP, errno.EACCES), f"mknod gave {errno.errorcode.get(err, err)}"
    mount.wait_uploaded()
    assert not mount.remote.exists("fifo")
    assert not mount.remote.exists("chr")


def test_setxattr_is_enotsup(mount: MountedFs) -> None:
    p = mount.path / "x.txt"
    p.write_bytes(b"x")
    assert _errno_of(os.setxattr, p, "user.test", b"value") == errno.ENOTSUP
    # no attributes to read either: ENOTSUP, every time (the kernel stops asking the daemon)
    assert _errno_of(os.getxattr, p, "user.test") == errno.ENOTSUP
    assert _errno_of(os.getxattr, p, "security.capability") == errno.ENOTSUP
    # reading attributes must not fail with EIO either
    try:
        names = os.listxattr(p)
    except OSError as exc:
        assert exc.errno == errno.ENOTSUP, exc
    else:
        assert "user.test" not in names


def test_unlink_open_file_keeps_fd_readable(mount: MountedFs) -> None:
    p = mount.path / "open.bin"
    data = os.urandom(300_000)
    p.write_bytes(data)
    mount.wait_uploaded()
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.read(fd, 10) == data[:10]
        os.unlink(p)
        assert not p.exists()
        assert "open.bin" not in os.listdir(mount.path)
        os.lseek(fd, 0, os.SEEK_SET)
        got = b""
        while chunk := os.read(fd, 65536):
            got += chunk
        assert got == data
        assert os.fstat(fd).st_size == len(data)
    finally:
        os.close(fd)
    mount.wait_uploaded()
    wait_for(lambda: not mount.remote.exists("open.bin"), 10, "open.bin deleted on the server")


def test_unlink_open_file_being_written(mount: MountedFs) -> None:
    # A program writes a temp file, unlinks it, keeps using the descriptor.
    p = mount.path / "scratch"
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"scratch data")
        os.unlink(p)
        os.write(fd, b" more")
        assert os.pread(fd, 100, 0) == b"scratch data more"
    finally:
        os.close(fd)
    mount.wait_uploaded()
    assert not mount.remote.exists("scratch")
    assert not p.exists()


def test_mount_root_cannot_be_removed(mount: MountedFs) -> None:
    (mount.path / "inside.txt").write_bytes(b"i")
    mount.wait_uploaded()
    with pytest.raises(OSError):
        os.rmdir(mount.path)
    with pytest.raises(OSError):
        os.rename(mount.path, mount.path.parent / "elsewhere")
    # still mounted and working, the home still exists on the server
    assert os.path.ismount(mount.path)
    assert "inside.txt" in os.listdir(mount.path)
    home = mount.remote.stat("")
    assert home["is_dir"]
    assert mount.remote.read("inside.txt") == b"i"


def test_statvfs_reports_server_quota(mount: MountedFs) -> None:
    emulator = mount.emulator
    (mount.path / "used.bin").write_bytes(os.urandom(200_000))
    mount.wait_uploaded()
    capacity = 3 * 1024**3 + 12345 * 4096
    emulator.set_capacity(capacity)
    try:
        df = mount.remote.df()
        assert df["capacity"] == capacity

        def matches() -> bool:
            st = os.statvfs(mount.path)
            total = st.f_blocks * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            return abs(total - df["capacity"]) < 2 * st.f_frsize and abs(used - df["used"]) < 2 * st.f_frsize

        wait_for(matches, 10, f"statvfs matching /df {df}")
        st = os.statvfs(mount.path)
        assert st.f_bavail <= st.f_bfree
        assert st.f_namemax == 255
        # `df` the program agrees
        out = os.popen(f"df -B1 --output=size '{mount.path}'").read().split()
        assert abs(int(out[-1]) - capacity) < 2 * st.f_frsize
    finally:
        emulator.set_capacity(None)
