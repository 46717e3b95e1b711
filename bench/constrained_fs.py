#!/usr/bin/env python3
"""A passthrough FUSE filesystem with exactly puterfs's design refusals: the pjdfstest ceiling.

It mirrors a local directory (pyfuse3, ``default_permissions`` like puterfs, so the kernel
makes the permission and sticky-bit checks) and passes every operation through, except what
issue 15 keeps refused:

* hard links, FIFOs, sockets, character and block devices: ``EPERM``;
* every entry belongs to the mounting user (``st_uid``/``st_gid`` are the daemon's), and
  ``chown``/``chgrp`` to any other user or group is ``EPERM`` (to the mounting user: accepted).

Whatever a filesystem bound by those rules can pass of pjdfstest, this passes; what it fails
no such filesystem can pass. ``bench/pjdfstest.py --only constrained`` runs it; it is a bench
tool, not part of the package.

Usage: ``python bench/constrained_fs.py BACKING MOUNTPOINT [--allow-other]``
(foreground; SIGTERM or ``fusermount3 -u`` ends it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


def _oserror(fn: Any) -> Any:
    async def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return await fn(*args, **kw)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    wrapper.__name__ = fn.__name__
    return wrapper


class ConstrainedFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, backing: str, *, owners: bool = False, special: bool = False) -> None:
        super().__init__()
        # what-if switches (not puterfs's rules): real ownership and chown; FIFOs/sockets/devices
        self.owners, self.special = owners, special
        self.backing = os.path.realpath(backing)
        self.uid, self.gid = os.getuid(), os.getgid()
        # inode -> (parent inode, name); the path is rebuilt from it, so a directory rename
        # moves every descendant at once. Inodes are the backing filesystem's.
        self.where: dict[int, tuple[int, str]] = {}
        self.root_ino = os.lstat(self.backing).st_ino
        self.fds: dict[int, int] = {}  # fh -> fd
        self.fh_inode: dict[int, int] = {}
        self.open_count: dict[int, list[int]] = {}  # inode -> fds (an unlinked open file stays reachable)
        self.dirs: dict[int, list[tuple[str, os.stat_result]]] = {}
        self.next_fh = 1

    # ---- paths and attributes
    def _ino(self, st_ino: int) -> int:
        return ROOT if st_ino == self.root_ino else st_ino

    def _parts(self, inode: int) -> list[str]:
        parts = []
        while inode != ROOT:
            try:
                inode, name = self.where[inode]
            except KeyError:
                raise pyfuse3.FUSEError(errno.ESTALE) from None
            parts.append(name)
        return parts[::-1]

    @contextlib.contextmanager
    def _loc(self, parts: list[str]) -> Iterator[tuple[int | None, str]]:
        """(dir_fd, name) for the backing entry at `parts`: a plain path while it is short, else
        relative to an O_PATH descriptor of its directory (the backing prefix must not push a
        path the kernel accepted past PATH_MAX)."""
        full = os.path.join(self.backing, *parts)
        if len(full) < 3000 or not parts:
            yield None, full
            return
        fd = os.open(self.backing, os.O_PATH | os.O_DIRECTORY)
        try:
            for name in parts[:-1]:
                nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def at(self, inode: int) -> contextlib.AbstractContextManager[tuple[int | None, str]]:
        return self._loc(self._parts(inode))

    def child(self, parent: int, name: bytes | str) -> contextlib.AbstractContextManager[tuple[int | None, str]]:
        return self._loc([*self._parts(parent), os.fsdecode(name)])

    def _attr(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(st.st_ino)
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        a.st_mode = st.st_mode
        a.st_nlink = st.st_nlink
        if self.owners:
            a.st_uid, a.st_gid = st.st_uid, st.st_gid
        else:
            a.st_uid, a.st_gid = self.uid, self.gid  # the mounting user owns everything
        a.st_rdev = 0
        a.st_size = st.st_size
        a.st_blksize = 4096
        a.st_blocks = st.st_blocks
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return a

    def _stat(self, inode: int) -> os.stat_result:
        fds = self.open_count.get(inode)
        if fds:
            return os.fstat(fds[0])
        with self.at(inode) as (d, n):
            return os.lstat(n, dir_fd=d)

    def _entry(self, parent: int, name: str, ctx: Any = None) -> pyfuse3.EntryAttributes:
        with self.child(parent, name) as (d, n):
            if ctx is not None and self.owners:  # a new entry: the caller's (the group set by the backing fs
                # when the directory is setgid)
                pst = self._stat(parent)
                os.chown(n, ctx.uid, -1 if pst.st_mode & stat.S_ISGID else ctx.gid, dir_fd=d, follow_symlinks=False)
            st = os.lstat(n, dir_fd=d)
        if st.st_ino != self.root_ino:
            self.where[st.st_ino] = (parent, name)
        return self._attr(st)

    # ---- lookups
    @_oserror
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        n = os.fsdecode(name)
        if n == ".":
            return self._attr(self._stat(parent_inode))
        if n == "..":
            up = ROOT if parent_inode == ROOT else self.where[parent_inode][0]
            return self._attr(self._stat(up))
        return self._entry(parent_inode, n)

    @_oserror
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._stat(inode))

    def _open_fd_of(self, inode: int, fh: int | None) -> int | None:
        """An open fd of `inode` when it is to be used instead of its path (an fh given, or
        no path left: unlinked while open)."""
        if fh is not None and fh in self.fds:
            return self.fds[fh]
        fds = self.open_count.get(inode)
        if not fds:
            return None
        try:
            with self.at(inode) as (d, n):
                if self._ino(os.lstat(n, dir_fd=d).st_ino) == inode:
                    return None
        except (OSError, pyfuse3.FUSEError):
            pass
        return fds[0]

    @_oserror
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        if self.owners:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
        elif (fields.update_uid and attr.st_uid != self.uid) or (fields.update_gid and attr.st_gid != self.gid):
            raise pyfuse3.FUSEError(errno.EPERM)  # the design refusal: nobody else can own an entry
        else:
            uid, gid = self.uid, self.gid
        fd = self._open_fd_of(inode, fh)
        if fd is not None:
            if fields.update_uid or fields.update_gid:
                os.fchown(fd, uid, gid)
            if fields.update_size:
                os.ftruncate(fd, attr.st_size)
            if fields.update_mode:
                os.fchmod(fd, stat.S_IMODE(attr.st_mode))
            if fields.update_atime or fields.update_mtime:
                st = os.fstat(fd)
                os.utime(fd, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                 attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))  # fmt: skip
            return self._attr(os.fstat(fd))
        with self.at(inode) as (d, n):
            st = os.lstat(n, dir_fd=d)
            if fields.update_uid or fields.update_gid:
                os.chown(n, uid, gid, dir_fd=d, follow_symlinks=False)
            if fields.update_size:
                tfd = os.open(n, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=d)
                try:
                    os.ftruncate(tfd, attr.st_size)
                finally:
                    os.close(tfd)
            if fields.update_mode and not stat.S_ISLNK(st.st_mode):
                os.chmod(n, stat.S_IMODE(attr.st_mode), dir_fd=d)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(n, dir_fd=d)
                os.utime(n, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                         dir_fd=d, follow_symlinks=False)  # fmt: skip
            return self._attr(os.lstat(n, dir_fd=d))

    @_oserror
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        with self.at(inode) as (d, n):
            return os.fsencode(os.readlink(n, dir_fd=d))

    # ---- directories
    @_oserror
    async def opendir(self, inode: int, ctx: Any) -> int:
        with self.at(inode) as (d, n):
            dfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=d)
        try:
            entries = sorted((e.name, e.stat(follow_symlinks=False)) for e in os.scandir(dfd))
        finally:
            os.close(dfd)
        fh = self.next_fh
        self.next_fh += 1
        self.dirs[fh] = entries
        self.fh_inode[fh] = inode
        return fh

    @_oserror
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        parent = self.fh_inode[fh]
        for i, (name, st) in enumerate(self.dirs[fh][start_id:], start_id):
            if st.st_ino != self.root_ino:
                self.where[st.st_ino] = (parent, name)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attr(st), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)
        self.fh_inode.pop(fh, None)

    @_oserror
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        with self.child(parent_inode, name) as (d, n):
            os.mkdir(n, mode & ~ctx.umask & 0o7777, dir_fd=d)
        return self._entry(parent_inode, os.fsdecode(name), ctx)

    @_oserror
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with self.child(parent_inode, name) as (d, n):
            os.rmdir(n, dir_fd=d)

    @_oserror
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        with self.child(parent_inode, name) as (d, n):
            os.unlink(n, dir_fd=d)

    @_oserror
    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int,
                     ctx: Any) -> None:  # fmt: skip
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        with self.child(old_parent, old_name) as (sd, sn), self.child(new_parent, new_name) as (dd, dn):
            os.rename(sn, dn, src_dir_fd=sd, dst_dir_fd=dd)
            st = os.lstat(dn, dir_fd=dd)
        self.where[st.st_ino] = (new_parent, os.fsdecode(new_name))

    @_oserror
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        with self.child(parent_inode, name) as (d, n):
            os.symlink(target, n, dir_fd=d)
        return self._entry(parent_inode, os.fsdecode(name), ctx)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # design refusal: no hard links

    @_oserror
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            if not self.special:
                raise pyfuse3.FUSEError(errno.EPERM)  # design refusal: FIFOs, sockets, devices
            with self.child(parent_inode, name) as (d, n):
                os.mknod(n, mode & ~ctx.umask, rdev, dir_fd=d)
            return self._entry(parent_inode, os.fsdecode(name), ctx)
        fi, attr = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
        await self.release(fi.fh)
        return attr

    # ---- files
    def _open_fd(self, inode: int, fd: int) -> pyfuse3.FileInfo:
        fh = self.next_fh
        self.next_fh += 1
        self.fds[fh] = fd
        self.fh_inode[fh] = inode
        self.open_count.setdefault(inode, []).append(fd)
        return pyfuse3.FileInfo(fh=fh)

    @_oserror
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        with self.at(inode) as (d, n):
            fd = os.open(n, flags & ~os.O_CREAT, dir_fd=d)
        return self._open_fd(inode, fd)

    @_oserror
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:  # fmt: skip
        with self.child(parent_inode, name) as (d, n):
            fd = os.open(n, flags | os.O_CREAT, mode & ~ctx.umask & 0o7777, dir_fd=d)
        attr = self._entry(parent_inode, os.fsdecode(name), ctx)
        return self._open_fd(attr.st_ino, fd), attr

    @_oserror
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self.fds[fh], size, off)

    @_oserror
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(self.fds[fh], buf, off)

    async def flush(self, fh: int) -> None:
        pass

    @_oserror
    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fsync(self.fds[fh])

    async def release(self, fh: int) -> None:
        fd = self.fds.pop(fh)
        inode = self.fh_inode.pop(fh)
        fds = self.open_count.get(inode, [])
        if fd in fds:
            fds.remove(fd)
        if not fds:
            self.open_count.pop(inode, None)
        os.close(fd)

    @_oserror
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = os.statvfs(self.backing)
        d = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(d, k, getattr(s, k))
        d.f_namemax = s.f_namemax
        return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--allow-other", action="store_true")
    ap.add_argument("--owners", action="store_true", help="what-if: real ownership, chown passed through")
    ap.add_argument("--special", action="store_true", help="what-if: FIFOs, sockets and devices passed through")
    args = ap.parse_args(argv)
    os.umask(0)  # modes are applied as asked (the caller's umask is applied above)
    fs = ConstrainedFS(args.backing, owners=args.owners, special=args.special)
    options = set(pyfuse3.default_options) | {"fsname=constrained"}
    if args.allow_other:
        options.add("allow_other")
    pyfuse3.init(fs, args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
