"""The inode table: stable inode numbers for a path-keyed remote.

Puter addresses entries by path, the kernel by inode number. A `Node` holds one inode's
path and attributes; the table maps both ways. A rename re-points the node and every
known descendant, so open files and cached children keep working after it.

Lookup counts follow pyfuse3's contract: +1 for every successful lookup, create and mkdir
(plain readdir does not count; pyfuse3 turns readdirplus off), -n in `forget`. A node that left the tree (deleted or replaced) stays in
`by_inode` until the kernel forgets it and no file handle uses it.
"""

from __future__ import annotations

import itertools
import stat
import time
from dataclasses import dataclass

import pyfuse3

from puterfs.fs.cache import CacheEntry

# A symbolic link is kept on Puter as a file NAME.rclonelink holding the target (rclone's
# --links convention; docs/inodes.md). Its node's path is that file's path.
LINK_SUFFIX = ".rclonelink"


@dataclass(eq=False)
class Node:
    inode: int
    path: str
    is_dir: bool
    mode: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    atime_ns: int = 0
    mtime_local: bool = False  # set by utimens: the server's time does not override it
    # fingerprint of the server's copy as last seen: (uid, size, modified)
    remote_fp: tuple[str | None, int, int | None] | None = None
    remote_meta: dict | None = None  # the entry's metadata on the server as last seen
    lookups: int = 0
    opens: int = 0
    writers: int = 0
    entry: CacheEntry | None = None
    fd: int | None = None
    children: dict[str, Node] | None = None
    listed_epoch: int = -1
    listed_at: float = 0.0
    attr_epoch: int = -1
    local_seq: int = 0  # sequence number of the last local change of this node or its listing
    # names removed here locally -> sequence number of the removal: a listing requested
    # before that must not bring them back
    tombstones: dict[str, int] | None = None
    used_at: float = 0.0  # trio time a handler last used this directory's listing
    in_tree: bool = True
    page_fp: object = None  # what the kernel's page cache holds (see Operations.open)
    link_target: bytes | None = None  # a symlink's target, once known

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def display_name(self) -> str:
        """The name in the directory listing: a link's file name without its suffix."""
        name = self.name
        return name[: -len(LINK_SUFFIX)] if self.is_link and name.endswith(LINK_SUFFIX) else name

    @property
    def parent_path(self) -> str:
        return self.path.rpartition("/")[0]


class InodeTable:
    def __init__(self) -> None:
        self.by_inode: dict[int, Node] = {}
        self.by_path: dict[str, Node] = {}
        self._next = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._seq = itertools.count(1)
        now = time.time_ns()
        root = Node(pyfuse3.ROOT_INODE, "", True, stat.S_IFDIR | 0o755, mtime_ns=now, ctime_ns=now, atime_ns=now)
        root.lookups = 1
        self.root = root
        self.by_inode[root.inode] = root
        self.by_path[""] = root

    def next_seq(self) -> int:
        return next(self._seq)

    def get(self, inode: int) -> Node | None:
        return self.by_inode.get(inode)

    def new(self, path: str, *, is_dir: bool, mode: int | None = None) -> Node:
        now = time.time_ns()
        if mode is None:
            mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
        node = Node(next(self._next), path, is_dir, mode, mtime_ns=now, ctime_ns=now, atime_ns=now)
        if is_dir:
            node.size = 0
        old = self.by_path.get(path)
        if old is not None:
            self.detach(old)
        self.by_inode[node.inode] = node
        self.by_path[path] = node
        return node

    def detach(self, node: Node) -> None:
        """`node` is no longer in the tree (deleted, replaced, gone remotely)."""
        if self.by_path.get(node.path) is node:
            del self.by_path[node.path]
        node.in_tree = False
        if node.is_dir and node.children:
            for child in list(node.children.values()):
                self.detach(child)
            node.children = None
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        if not node.in_tree and node.lookups <= 0 and node.opens <= 0 and node.inode != pyfuse3.ROOT_INODE:
            self.by_inode.pop(node.inode, None)

    def rename(self, node: Node, new_path: str) -> None:
        """Re-point `node` and all its known descendants from node.path to new_path."""
        old = node.path
        if node.is_dir:
            prefix = old + "/"
            moved = [n for p, n in self.by_path.items() if p == old or p.startswith(prefix)]
        else:  # no descendants: no walk of every known path
            moved = [n for n in (self.by_path.get(old),) if n is not None]
        for n in moved:
            if self.by_path.get(n.path) is n:
                del self.by_path[n.path]
        for n in moved:
            n.path = new_path + n.path[len(old):]
            clash = self.by_path.get(n.path)
            if clash is not None and clash is not n:
                self.detach(clash)
            self.by_path[n.path] = n

    def forget(self, inode: int, n: int) -> None:
        node = self.by_inode.get(inode)
        if node is None:
            return
        node.lookups -= n
        self.maybe_drop(node)
