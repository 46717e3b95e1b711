"""POSIX conformance against a real mount, by the groups pjdfstest checks (chmod, ftruncate,
mkdir, open, rename, rmdir, symlink, truncate, unlink, utimensat): the errno of each failure
case, times, sizes, link counts and modes. Written here from POSIX and Linux man pages
(pjdfstest's own code is not used). Each group prints its pass count; any failed check fails
the group with the list of what failed.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import MountedFs

TOTALS: dict[str, tuple[int, int]] = {}


class Checks:
    def __init__(self, group: str, root: Path) -> None:
        self.group = group
        self.root = root
        self.passed = 0
        self.failed: list[str] = []
        self._n = 0

    def new(self, kind: str = "f") -> Path:
        """A fresh name under the group's directory (created as a file, dir or nothing)."""
        self._n += 1
        p = self.root / f"n{self._n}"
        if kind == "f":
            p.write_bytes(b"")
        elif kind == "d":
            p.mkdir()
        return p

    def ok(self, what: str, cond: Any) -> None:
        if cond:
            self.passed += 1
        else:
            self.failed.append(what)

    def eq(self, what: str, got: Any, want: Any) -> None:
        self.ok(f"{what}: got {got!r}, want {want!r}", got == want)

    def errno(self, what: str, want: int | tuple[int, ...], fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        wants = want if isinstance(want, tuple) else (want,)
        try:
            fn(*args, **kw)
        except OSError as exc:
            self.ok(f"{what}: errno {errno.errorcode.get(exc.errno, exc.errno)}, want "
                    f"{'/'.join(errno.errorcode[w] for w in wants)}", exc.errno in wants)
        else:
            self.ok(f"{what}: succeeded, want {'/'.join(errno.errorcode[w] for w in wants)}", False)

    def does(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            out = fn(*args, **kw)
        except OSError as exc:
            self.ok(f"{what}: failed with {errno.errorcode.get(exc.errno, exc.errno)}", False)
            return None
        self.ok(what, True)
        return out

    def changes(self, what: str, path: Path, fn: Callable[[], Any], *, fields: str, moved: bool = True,
                follow: bool = False) -> None:
        """`fn` moves (or leaves alone) the listed time fields ("m", "c", "mc") of `path`."""
        st0 = os.stat(path) if follow else os.lstat(path)
        time.sleep(0.02)
        fn()
        st1 = os.stat(path) if follow else os.lstat(path)
        for f in fields:
            a, b = getattr(st0, f"st_{f}time_ns"), getattr(st1, f"st_{f}time_ns")
            self.ok(f"{what}: {f}time {'moves' if moved else 'stays'} ({a} -> {b})", (b > a) if moved else (b == a))


@pytest.fixture
def checks(mount: MountedFs, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Checks]:
    group = request.node.name.removeprefix("test_")
    root = mount.path / f"conf-{group}"
    root.mkdir()
    old_umask = os.umask(0o022)
    c = Checks(group, root)
    try:
        yield c
    finally:
        os.umask(old_umask)
    TOTALS[group] = (c.passed, c.passed + len(c.failed))
    with capsys.disabled():
        print(f"\n  posix conformance {group}: {c.passed}/{c.passed + len(c.failed)} checks passed")


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    passed, total = sum(p for p, _ in TOTALS.values()), sum(t for _, t in TOTALS.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and total:
        reporter.write_line(f"posix conformance: {passed}/{total} checks passed in {len(TOTALS)} groups")


def _done(c: Checks) -> None:
    assert not c.failed, f"{len(c.failed)} of {c.passed + len(c.failed)} checks failed:\n  " + "\n  ".join(c.failed)


LONG = "x" * 256


def _common_path_errors(c: Checks, fn: Callable[[Path], Any], name: str, *, creates: bool = False) -> None:
    f = c.new("f")
    c.errno(f"{name} through a file", errno.ENOTDIR, fn, f / "x")
    if not creates:
        c.errno(f"{name} of a missing name", errno.ENOENT, fn, c.root / "missing")
    c.errno(f"{name} in a missing dir", errno.ENOENT, fn, c.root / "missing" / "x")
    c.errno(f"{name} of a 256-byte name", errno.ENAMETOOLONG, fn, c.root / LONG)


def test_chmod(checks: Checks) -> None:
    c = checks
    f = c.new("f")
    for mode in (0o600, 0o644, 0o755, 0o700, 0o4755, 0o2755, 0o1777, 0o000, 0o7777):
        c.does(f"chmod {mode:o}", os.chmod, f, mode)
        c.eq(f"mode after chmod {mode:o}", stat.S_IMODE(os.stat(f).st_mode), mode)
        c.ok("still a regular file", stat.S_ISREG(os.stat(f).st_mode))
    d = c.new("d")
    c.does("chmod dir", os.chmod, d, 0o711)
    c.eq("dir mode", stat.S_IMODE(os.stat(d).st_mode), 0o711)
    c.ok("still a directory", stat.S_ISDIR(os.stat(d).st_mode))
    c.changes("chmod", f, lambda: os.chmod(f, 0o640), fields="c")
    c.changes("chmod", f, lambda: os.chmod(f, 0o600), fields="m", moved=False)
    fd = os.open(f, os.O_RDONLY)
    try:
        c.does("fchmod", os.fchmod, fd, 0o604)
        c.eq("mode after fchmod", stat.S_IMODE(os.fstat(fd).st_mode), 0o604)
    finally:
        os.close(fd)
    link = c.root / "link"
    os.symlink(f.name, link)
    c.does("chmod through a symlink", os.chmod, link, 0o750)
    c.eq("the target's mode", stat.S_IMODE(os.stat(f).st_mode), 0o750)
    c.ok("the link stays 0777", stat.S_IMODE(os.lstat(link).st_mode) == 0o777)
    os.symlink("gone", c.root / "dl")
    c.errno("chmod through a dangling link", errno.ENOENT, os.chmod, c.root / "dl", 0o600)
    _common_path_errors(c, lambda p: os.chmod(p, 0o644), "chmod")
    c.does("chown to myself", os.chown, f, os.getuid(), os.getgid())
    c.changes("chown to myself", f, lambda: os.chown(f, os.getuid(), -1), fields="c")
    c.changes("chown(-1, -1)", f, lambda: os.chown(f, -1, -1), fields="c", moved=False)
    c.errno("chown to another user", errno.EPERM, os.chown, f, os.getuid() + 4321, -1)
    c.errno("chown to another group", errno.EPERM, os.chown, f, -1, os.getgid() + 4321)


def _truncate_group(c: Checks, truncate: Callable[[Path, int], Any], name: str) -> None:
    f = c.new("f")
    f.write_bytes(b"0123456789")
    for size in (20, 5, 0, 1 << 20, 3):
        c.does(f"{name} to {size}", truncate, f, size)
        c.eq(f"size after {name} to {size}", os.stat(f).st_size, size)
    f.write_bytes(b"abc")
    truncate(f, 8)
    c.eq(f"{name} grows with zeros", f.read_bytes(), b"abc\0\0\0\0\0")
    truncate(f, 2)
    c.eq(f"{name} shrinks", f.read_bytes(), b"ab")
    c.changes(name, f, lambda: truncate(f, 100), fields="mc")
    c.changes(f"{name} to the same size", f, lambda: truncate(f, 100), fields="c")
    c.errno(f"{name} to a negative size", errno.EINVAL, truncate, f, -1)
    c.errno(f"{name} beyond what can be stored", errno.EFBIG, truncate, f, 1 << 62)
    c.eq(f"size after a failed {name}", os.stat(f).st_size, 100)
    _done(c)


def test_truncate(checks: Checks) -> None:
    c = checks
    _truncate_group(c, os.truncate, "truncate")
    t = c.new("f")
    t.write_bytes(b"target")
    os.symlink(t.name, c.root / "tl")
    c.does("truncate through a symlink", os.truncate, c.root / "tl", 2)
    c.eq("the target is truncated", t.read_bytes(), b"ta")
    c.errno("truncate of a directory", errno.EISDIR, os.truncate, c.new("d"), 0)
    _common_path_errors(c, lambda p: os.truncate(p, 0), "truncate")
    _done(c)


def test_ftruncate(checks: Checks) -> None:
    c = checks

    def ftrunc(p: Path, size: int) -> None:
        fd = os.open(p, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    _truncate_group(c, ftrunc, "ftruncate")
    f = c.new("f")
    fd = os.open(f, os.O_RDONLY)
    try:
        c.errno("ftruncate of a read-only descriptor", (errno.EINVAL, errno.EBADF), os.ftruncate, fd, 1)
    finally:
        os.close(fd)
    d = os.open(c.new("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        c.errno("ftruncate of a directory", (errno.EINVAL, errno.EBADF, errno.EISDIR), os.ftruncate, d, 0)
    finally:
        os.close(d)
    fd = os.open(f, os.O_RDWR)
    try:
        os.write(fd, b"hello world")
        os.ftruncate(fd, 5)
        c.eq("fstat size after ftruncate", os.fstat(fd).st_size, 5)
        c.eq("content after ftruncate", os.pread(fd, 100, 0), b"hello")
    finally:
        os.close(fd)
    _done(c)


def test_mkdir(checks: Checks) -> None:
    c = checks
    for mode in (0o755, 0o700, 0o777, 0o711, 0o1777):
        p = c.new("")
        c.does(f"mkdir {mode:o}", os.mkdir, p, mode)
        st = os.stat(p)
        c.eq(f"mode of mkdir {mode:o} (umask 022)", stat.S_IMODE(st.st_mode), mode & ~0o022)
        c.ok("a directory", stat.S_ISDIR(st.st_mode))
        c.eq("a new directory's link count", st.st_nlink, 2)
        c.eq("owner", (st.st_uid, st.st_gid), (os.getuid(), os.getgid()))
        c.eq("empty", os.listdir(p), [])
    parent = c.new("d")
    n0 = os.stat(parent).st_nlink
    c.changes("mkdir in a directory", parent, lambda: os.mkdir(parent / "sub"), fields="mc")
    c.eq("parent link count after mkdir", os.stat(parent).st_nlink, n0 + 1)
    st_new, st_parent = os.stat(parent / "sub"), os.stat(parent)
    c.ok("new dir times not before the parent's", st_new.st_mtime_ns <= st_parent.st_mtime_ns + 10**9)
    c.errno("mkdir of an existing dir", errno.EEXIST, os.mkdir, parent)
    c.errno("mkdir of an existing file", errno.EEXIST, os.mkdir, c.new("f"))
    os.symlink("gone", c.root / "ml")
    c.errno("mkdir of an existing (dangling) symlink", errno.EEXIST, os.mkdir, c.root / "ml")
    _common_path_errors(c, os.mkdir, "mkdir", creates=True)
    _done(c)


def test_open(checks: Checks) -> None:
    c = checks
    for mode in (0o644, 0o600, 0o755, 0o777, 0o4755):
        p = c.new("")
        fd = c.does(f"open O_CREAT {mode:o}", os.open, p, os.O_CREAT | os.O_WRONLY, mode)
        if fd is not None:
            os.close(fd)
        st = os.stat(p)
        c.eq(f"mode of a new file {mode:o} (umask 022)", stat.S_IMODE(st.st_mode), mode & ~0o022)
        c.ok("a regular file", stat.S_ISREG(st.st_mode))
        c.eq("a new file's link count", st.st_nlink, 1)
        c.eq("a new file's size", st.st_size, 0)
    d = c.new("d")
    c.changes("create in a directory", d, lambda: os.close(os.open(d / "new", os.O_CREAT | os.O_WRONLY, 0o644)),
              fields="mc")
    f = c.new("f")
    f.write_bytes(b"content")
    c.errno("O_CREAT|O_EXCL of an existing file", errno.EEXIST, os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    c.errno("O_CREAT|O_EXCL of an existing dir", errno.EEXIST, os.open, d, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.symlink("gone", c.root / "ol")
    c.errno("O_CREAT|O_EXCL of a dangling symlink", errno.EEXIST, os.open, c.root / "ol",
            os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.symlink(f.name, c.root / "ol2")
    c.errno("O_NOFOLLOW of a symlink", errno.ELOOP, os.open, c.root / "ol2", os.O_RDONLY | os.O_NOFOLLOW)
    c.errno("O_CREAT of a directory", errno.EISDIR, os.open, d, os.O_CREAT | os.O_WRONLY)
    c.errno("O_WRONLY of a directory", errno.EISDIR, os.open, d, os.O_WRONLY)
    c.errno("O_RDWR of a directory", errno.EISDIR, os.open, d, os.O_RDWR)
    c.errno("O_DIRECTORY of a file", errno.ENOTDIR, os.open, f, os.O_RDONLY | os.O_DIRECTORY)
    c.errno("open of a missing file", errno.ENOENT, os.open, c.root / "missing", os.O_RDONLY)
    _common_path_errors(c, lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)), "open O_CREAT",
                        creates=True)
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    c.eq("O_CREAT of an existing file keeps it", f.read_bytes(), b"content")
    c.changes("O_TRUNC", f, lambda: os.close(os.open(f, os.O_WRONLY | os.O_TRUNC)), fields="mc")
    c.eq("O_TRUNC empties", os.stat(f).st_size, 0)
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"def")
    os.close(fd)
    c.eq("O_APPEND writes at the end", f.read_bytes(), b"abcdef")
    c.changes("write", f, lambda: f.write_bytes(b"x"), fields="mc")
    c.changes("read", f, lambda: f.read_bytes(), fields="mc", moved=False)
    _done(c)


def test_rename(checks: Checks) -> None:
    c = checks
    a = c.new("f")
    a.write_bytes(b"A")
    b = c.root / "b"
    c.does("rename a file", os.rename, a, b)
    c.ok("old name gone", not os.path.lexists(a))
    c.eq("content follows", b.read_bytes(), b"A")
    ino = os.stat(b).st_ino
    b2 = c.root / "b2"
    st0 = os.stat(b)
    time.sleep(0.02)
    os.rename(b, b2)
    st1 = os.stat(b2)
    c.eq("inode kept by rename", st1.st_ino, ino)
    c.ok("rename moves ctime", st1.st_ctime_ns > st0.st_ctime_ns)
    c.eq("rename keeps mtime", st1.st_mtime_ns, st0.st_mtime_ns)
    c.does("rename onto itself", os.rename, b2, b2)
    c.eq("content after rename onto itself", b2.read_bytes(), b"A")
    over = c.new("f")
    over.write_bytes(b"old")
    c.does("rename a file over a file", os.rename, b2, over)
    c.eq("replaced content", over.read_bytes(), b"A")
    d1, d2 = c.new("d"), c.new("d")
    (d1 / "sub").mkdir()
    n1, n2 = os.stat(d1).st_nlink, os.stat(d2).st_nlink
    c.changes("rename out of a dir", d1, lambda: os.rename(d1 / "sub", d2 / "sub"), fields="mc")
    c.eq("source parent link count", os.stat(d1).st_nlink, n1 - 1)
    c.eq("target parent link count", os.stat(d2).st_nlink, n2 + 1)
    c.errno("rename of a missing file", errno.ENOENT, os.rename, c.root / "missing", c.root / "x")
    c.errno("rename into a missing dir", errno.ENOENT, os.rename, over, c.root / "missing" / "x")
    c.errno("rename into a file", errno.ENOTDIR, os.rename, over, c.new("f") / "x")
    c.errno("rename to a 256-byte name", errno.ENAMETOOLONG, os.rename, over, c.root / LONG)
    c.errno("rename a dir into itself", errno.EINVAL, os.rename, d2, d2 / "sub" / "inner")
    c.errno("rename a file over a dir", errno.EISDIR, os.rename, over, d1)
    c.errno("rename a dir over a file", errno.ENOTDIR, os.rename, d1, over)
    c.errno("rename a dir over a non-empty dir", (errno.ENOTEMPTY, errno.EEXIST), os.rename, d1, d2)
    empty = c.new("d")
    c.does("rename a dir over an empty dir", os.rename, d2, empty)
    c.ok("the moved dir's content", os.listdir(empty) == ["sub"])
    t = c.new("f")
    t.write_bytes(b"T")
    os.symlink(t.name, c.root / "l")
    c.does("rename a symlink", os.rename, c.root / "l", c.root / "l2")
    c.eq("the link moved, not its target", (os.readlink(c.root / "l2"), t.read_bytes()), (t.name, b"T"))
    c.does("rename a link over a file", os.rename, c.root / "l2", over)
    c.ok("the file became the link", os.path.islink(over) and os.readlink(over) == t.name)
    _done(c)


def test_rmdir(checks: Checks) -> None:
    c = checks
    parent = c.new("d")
    (parent / "x").mkdir()
    n = os.stat(parent).st_nlink
    c.changes("rmdir in a directory", parent, lambda: os.rmdir(parent / "x"), fields="mc")
    c.eq("parent link count after rmdir", os.stat(parent).st_nlink, n - 1)
    c.ok("gone", not os.path.exists(parent / "x"))
    full = c.new("d")
    (full / "f").write_bytes(b"")
    c.errno("rmdir of a non-empty dir", (errno.ENOTEMPTY, errno.EEXIST), os.rmdir, full)
    (full / "f").unlink()
    (full / "d").mkdir()
    c.errno("rmdir of a dir holding a dir", (errno.ENOTEMPTY, errno.EEXIST), os.rmdir, full)
    c.errno("rmdir of a file", errno.ENOTDIR, os.rmdir, c.new("f"))
    os.symlink(full.name, c.root / "dl")
    c.errno("rmdir of a symlink to a dir", errno.ENOTDIR, os.rmdir, c.root / "dl")
    c.errno("rmdir of .", errno.EINVAL, os.rmdir, os.path.join(full, "."))
    c.errno("rmdir of ..", (errno.ENOTEMPTY, errno.EEXIST), os.rmdir, os.path.join(full, "d", ".."))
    _common_path_errors(c, os.rmdir, "rmdir")
    _done(c)


def test_symlink(checks: Checks) -> None:
    c = checks
    for target in ("t", "../up/and/away", "/absolute/path", "with space", "x" * 1000, "dir/"):
        p = c.new("")
        c.does(f"symlink -> {target[:20]!r}", os.symlink, target, p)
        st = os.lstat(p)
        c.ok("S_IFLNK", stat.S_ISLNK(st.st_mode))
        c.eq("link size is the target's length", st.st_size, len(target.encode()))
        c.eq("readlink", os.readlink(p), target)
        c.eq("link count", st.st_nlink, 1)
        c.eq("owner", (st.st_uid, st.st_gid), (os.getuid(), os.getgid()))
    d = c.new("d")
    c.changes("symlink in a directory", d, lambda: os.symlink("t", d / "l"), fields="mc")
    f = c.new("f")
    c.errno("symlink over a file", errno.EEXIST, os.symlink, "t", f)
    c.errno("symlink over a dir", errno.EEXIST, os.symlink, "t", d)
    c.errno("symlink over a link", errno.EEXIST, os.symlink, "t", d / "l")
    c.errno("readlink of a file", errno.EINVAL, os.readlink, f)
    c.errno("readlink of a dir", errno.EINVAL, os.readlink, d)
    c.errno("readlink of a missing name", errno.ENOENT, os.readlink, c.root / "missing")
    _common_path_errors(c, lambda p: os.symlink("t", p), "symlink", creates=True)
    longest = c.root / ("l" * 255)
    c.does("symlink named with NAME_MAX bytes", os.symlink, "t", longest)
    c.eq("readlink of it", os.readlink(longest), "t")
    c.does("rename a link to a NAME_MAX name", os.rename, longest, c.root / ("m" * 255))
    c.does("unlink it", os.unlink, c.root / ("m" * 255))
    f.write_bytes(b"data")
    os.symlink(f.name, c.root / "tf")
    c.eq("read through a link", (c.root / "tf").read_bytes(), b"data")
    os.symlink("tf", c.root / "chain")
    c.eq("read through a chain of links", (c.root / "chain").read_bytes(), b"data")
    os.symlink("loop2", c.root / "loop1")
    os.symlink("loop1", c.root / "loop2")
    c.errno("a loop of links", errno.ELOOP, os.stat, c.root / "loop1")
    _done(c)


def test_unlink(checks: Checks) -> None:
    c = checks
    d = c.new("d")
    (d / "f").write_bytes(b"x")
    c.changes("unlink in a directory", d, lambda: os.unlink(d / "f"), fields="mc")
    c.ok("gone", not os.path.lexists(d / "f"))
    c.errno("unlink of a dir", (errno.EISDIR, errno.EPERM), os.unlink, d)
    t = c.new("f")
    t.write_bytes(b"T")
    os.symlink(t.name, c.root / "ul")
    c.does("unlink a symlink", os.unlink, c.root / "ul")
    c.eq("its target stays", t.read_bytes(), b"T")
    os.symlink("gone", c.root / "udl")
    c.does("unlink a dangling symlink", os.unlink, c.root / "udl")
    fd = os.open(t, os.O_RDWR)
    try:
        c.does("unlink an open file", os.unlink, t)
        c.eq("link count of an unlinked open file", os.fstat(fd).st_nlink, 0)
        c.eq("still readable", os.pread(fd, 10, 0), b"T")
        os.pwrite(fd, b"more", 1)
        c.eq("still writable", os.pread(fd, 10, 0), b"Tmore")
    finally:
        os.close(fd)
    c.ok("not listed", t.name not in os.listdir(c.root))
    _common_path_errors(c, os.unlink, "unlink")
    _done(c)


def test_utimensat(checks: Checks) -> None:
    c = checks
    f = c.new("f")
    for ns in (0, 1, 10**9 - 1, 1_234_567_890_123_456_789, 2_000_000_000_000_000_001, 4_102_444_800_999_999_999):
        c.does(f"utimensat {ns}", os.utime, f, ns=(ns, ns))
        st = os.stat(f)
        c.eq(f"mtime after utimensat {ns}", st.st_mtime_ns, ns)
        c.eq(f"atime after utimensat {ns}", st.st_atime_ns, ns)
    c.changes("utimensat", f, lambda: os.utime(f, ns=(5, 5)), fields="c")
    before = time.time_ns()
    os.utime(f)  # UTIME_NOW for both
    st = os.stat(f)
    c.ok("UTIME_NOW sets now", before - 10**9 <= st.st_mtime_ns <= time.time_ns() + 10**9)
    os.utime(f, ns=(7, 7))
    os.utime(f, ns=(11, 7))  # only atime changes, mtime given as before
    c.eq("mtime kept when set to itself", os.stat(f).st_mtime_ns, 7)
    d = c.new("d")
    c.does("utimensat of a dir", os.utime, d, ns=(3 * 10**18, 3 * 10**18))
    c.eq("dir mtime", os.stat(d).st_mtime_ns, 3 * 10**18)
    os.symlink(f.name, c.root / "tl")
    os.utime(f, ns=(10**18, 10**18))
    c.does("utimensat AT_SYMLINK_NOFOLLOW", os.utime, c.root / "tl", ns=(2 * 10**18, 2 * 10**18),
           follow_symlinks=False)
    c.eq("the link's mtime", os.lstat(c.root / "tl").st_mtime_ns, 2 * 10**18)
    c.eq("the target's mtime untouched", os.stat(f).st_mtime_ns, 10**18)
    c.does("utimensat through a link", os.utime, c.root / "tl", ns=(4 * 10**17, 4 * 10**17))
    c.eq("the target's mtime", os.stat(f).st_mtime_ns, 4 * 10**17)
    fd = os.open(f, os.O_RDONLY)
    try:
        c.does("futimens", os.utime, fd, ns=(9, 9))
        c.eq("mtime after futimens", os.fstat(fd).st_mtime_ns, 9)
    finally:
        os.close(fd)
    _common_path_errors(c, lambda p: os.utime(p, ns=(1, 1)), "utimensat")
    _done(c)
