"""fsx-style random operations applied to the mount and to a local directory side by side.

Every operation runs on both trees; results and error numbers must agree, the touched
file must read back the same, and the whole trees (listing and content) are compared
every few dozen operations, across a remount in the middle, and finally on the server.
Set PUTERFS_FSX_SEED (comma-separated) to choose the seeds; the mount's timing still
varies between runs, so a failure's full history is written next to the model.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import MountFactory, local_tree, tree_diff

N_OPS = 300
FULL_CHECK_EVERY = 50
NAMES = ["a", "b", "c.txt", "d e", "é", ".h"]
MAX_DEPTH = 3


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """Files and directories below root (directories include "" for root itself)."""
    files, dirs = [], [""]
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        dirs += [os.path.join(rel, d) for d in sorted(dirnames)]
        files += [os.path.join(rel, f) for f in sorted(filenames)]
    return sorted(files), sorted(dirs)


def _kind_and_size(p: Path) -> tuple[str, int]:
    st = os.stat(p)
    return ("dir", 0) if stat.S_ISDIR(st.st_mode) else ("file", st.st_size)


class Fsx:
    def __init__(self, model: Path, mounted: Path, rnd: random.Random) -> None:
        self.model = model
        self.mounted = mounted
        self.rnd = rnd
        self.history: list[str] = []
        self.history_file = model.parent / "fsx-history.txt"

    def context(self, paths: list[str] | None = None) -> str:
        text = "ops so far (last 20):\n  " + "\n  ".join(self.history[-20:])
        if paths:
            # the operations that touched anything on the differing paths, oldest first
            parts = {p.split(os.sep)[0] for p in paths}
            related = [h for h in self.history if any(repr(q)[1:-1] in h for q in parts)]
            text += "\nops on " + ", ".join(sorted(parts)) + ":\n  " + "\n  ".join(related[-40:])
        return f"{self.history[0]}\n{text}"

    def both(self, desc: str, fn: Callable[[Path], Any]) -> Any:
        """Run fn on both roots; same result or same errno, else fail with the history."""
        self.history.append(desc)
        results = []
        for root in (self.model, self.mounted):
            try:
                results.append(("ok", fn(root)))
            except OSError as exc:
                results.append(("err", errno.errorcode.get(exc.errno, exc.errno)))
        self.history[-1] += "  -> " + ("ok" if results[0][0] == "ok" else str(results[0][1]))
        if results[0] != results[1]:
            shown = [(k, v[:60] if isinstance(v, bytes) else v) for k, v in results]
            self.fail(f"{desc}: local {shown[0]} != mount {shown[1]}\n{self.context()}")
        return results[0][1]

    def fail(self, msg: str) -> None:
        """Fail with msg; the whole history goes to a file next to the model for replaying."""
        self.history_file.write_text("\n".join(self.history) + "\n")
        pytest.fail(f"{msg}\n(full history: {self.history_file})")

    def check_tree(self, where: str) -> None:
        a, b = local_tree(self.model), local_tree(self.mounted)
        if a != b:
            differing = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
            self.fail(f"trees differ {where}:\n{tree_diff(a, b)}\n{self.context(differing)}")

    # --- choosing targets ----------------------------------------------------------------

    def new_path(self, dirs: list[str]) -> str:
        d = self.rnd.choice([d for d in dirs if d.count(os.sep) < MAX_DEPTH - 1] or [""])
        return os.path.join(d, self.rnd.choice(NAMES))

    def step(self) -> None:
        files, dirs = _walk(self.model)
        r = self.rnd
        op = r.choices(
            ["write", "append", "overwrite", "truncate", "read", "rename_file", "rename_dir",
             "unlink", "mkdir", "rmdir", "listdir", "pause"],
            weights=[20, 6, 6, 8, 10, 10, 4, 6, 8, 4, 6, 3],
        )[0]  # fmt: skip
        if op in ("append", "truncate", "read", "rename_file", "unlink", "overwrite") and not files:
            op = "write"
        if op in ("rename_dir", "rmdir") and len(dirs) < 2:
            op = "mkdir"

        if op == "write":
            rel = r.choice(files) if files and r.random() < 0.6 else self.new_path(dirs)
            size = os.path.getsize(self.model / rel) if (self.model / rel).is_file() else 0
            off = r.randrange(0, size + 5000)
            data = r.randbytes(r.choice([1, 100, 4096, r.randrange(1, 70_000)]))

            def write(root: Path) -> None:
                fd = os.open(root / rel, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, data, off)
                finally:
                    os.close(fd)

            self.both(f"write {rel!r} off={off} len={len(data)}", write)
            self.compare_file(rel)
        elif op == "append":
            rel, data = r.choice(files), r.randbytes(r.randrange(1, 9000))

            def append(root: Path) -> None:
                with open(root / rel, "ab") as f:
                    f.write(data)

            self.both(f"append {rel!r} len={len(data)}", append)
            self.compare_file(rel)
        elif op == "overwrite":
            rel, data = r.choice(files), r.randbytes(r.randrange(0, 30_000))
            self.both(f"overwrite {rel!r} len={len(data)}", lambda root: (root / rel).write_bytes(data))
            self.compare_file(rel)
        elif op == "truncate":
            rel = r.choice(files)
            size = os.path.getsize(self.model / rel)
            new = r.randrange(0, 2 * size + 100)
            self.both(f"truncate {rel!r} {size}->{new}", lambda root: os.truncate(root / rel, new))
            self.compare_file(rel)
        elif op == "read":
            rel = r.choice(files)
            size = os.path.getsize(self.model / rel)
            off, n = r.randrange(0, size + 10), r.randrange(1, 40_000)

            def read(root: Path) -> bytes:
                fd = os.open(root / rel, os.O_RDONLY)
                try:
                    return os.pread(fd, n, off)
                finally:
                    os.close(fd)

            self.both(f"read {rel!r} off={off} n={n}", read)
        elif op == "rename_file":
            src = r.choice(files)
            dst = r.choice(files + dirs[1:]) if r.random() < 0.4 else self.new_path(dirs)
            self.both(f"rename {src!r} -> {dst!r}", lambda root: os.rename(root / src, root / dst))
        elif op == "rename_dir":
            src = r.choice(dirs[1:])
            dst = r.choice(dirs[1:] + files) if r.random() < 0.4 else self.new_path(dirs)
            self.both(f"rename dir {src!r} -> {dst!r}", lambda root: os.rename(root / src, root / dst))
        elif op == "unlink":
            rel = r.choice(files)
            self.both(f"unlink {rel!r}", lambda root: os.unlink(root / rel))
        elif op == "mkdir":
            rel = self.new_path(dirs)
            self.both(f"mkdir {rel!r}", lambda root: os.mkdir(root / rel))
        elif op == "rmdir":
            rel = r.choice(dirs[1:])
            self.both(f"rmdir {rel!r}", lambda root: os.rmdir(root / rel))
        elif op == "pause":
            # longer than the write-back delay: uploads now run between the operations
            self.history.append("pause 0.4 s")
            time.sleep(0.4)
        elif op == "listdir":
            rel = r.choice(dirs)
            self.both(f"listdir {rel!r}", lambda root: sorted(os.listdir(root / rel)))

    def compare_file(self, rel: str) -> None:
        self.both(f"  readback {rel!r}", lambda root: (root / rel).read_bytes())
        # directory sizes are filesystem-specific: compare the type, and the size of files
        self.both(f"  stat {rel!r}", lambda root: _kind_and_size(root / rel))


SEEDS = [int(s) for s in os.environ.get("PUTERFS_FSX_SEED", "20261125,7").split(",")]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_local_fs(mount_factory: MountFactory, tmp_path: Path, seed: int) -> None:
    m = mount_factory()
    model, mounted = tmp_path / "model", m.path / "fsx"
    model.mkdir()
    mounted.mkdir()
    fsx = Fsx(model, mounted, random.Random(seed))
    fsx.history.append(f"seed={seed}")

    for i in range(1, N_OPS + 1):
        fsx.step()
        if i % FULL_CHECK_EVERY == 0:
            fsx.check_tree(f"after {i} ops")
        if i == N_OPS // 2:
            fsx.history.append("-- remount --")
            m.remount()
            fsx.check_tree("right after the remount")

    m.wait_uploaded(timeout=120)
    fsx.check_tree("at the end")
    want, on_server = local_tree(model), m.remote.tree("fsx")
    assert on_server == want, f"server differs from the model:\n{tree_diff(on_server, want)}\n{fsx.context()}"
    m.proc.stop()
