"""Batched uploads (issue 13): a tree written at once (tar x, cp -r) goes up in full requests,
without a request per file or per directory, and without waiting for the namespace journal.

The emulator's request log counts what reached the server; its store (``/_emulator/tree``)
shows what the server holds."""

from __future__ import annotations

import hashlib
import math
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from puterfs.client.fs import JSON_BATCH_MAX_FILES
from tests.mount.conftest import MountFactory, wait_for

MUTATING = {
    "/batch", "/mkdir", "/delete", "/move", "/rename", "/write", "/up", "/copy", "/touch",
    "/fs/write", "/fs/batchWrite", "/fs/mkdir", "/fs/delete", "/fs/move", "/fs/rename",
    "/fs/startWrite", "/fs/completeWrite", "/fs/startBatchWrite", "/fs/completeBatchWrite",
}


@pytest.fixture
def faults(emulator: Any) -> Iterator[Any]:
    """The emulator, its fault rules cleared however the test ends (request it after
    mount_factory, so it is torn down first)."""
    emulator.clear_faults()
    try:
        yield emulator
    finally:
        emulator.clear_faults()
        emulator.release()


def _tarball(tmp_path: Path, dirs: int, per_dir: int) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path / "src"
    files = {}
    for d in range(dirs):
        for i in range(per_dir):
            rel = f"t/d{d}/f{i:03d}.txt"
            files[rel] = f"{rel} {i}\n".encode()
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(files[rel])
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src / "t", arcname="t")
    return archive, files


def test_tar_x_goes_up_in_full_batches_without_waiting_for_its_mkdirs(
    mount_factory: MountFactory, tmp_path: Path, faults: Any
) -> None:
    """More files than one /batch takes (64) go up in ceil(N/256) /fs/batchWrite requests, with
    no stat or single write per file; and while the /batch carrying the directories' mkdirs is
    stalled, every file still reaches the server (the uploads create their parents)."""
    n_dirs, per_dir = 3, 100
    archive, files = _tarball(tmp_path, n_dirs, per_dir)
    m = mount_factory(write_back=2)
    m.remote.mkdir("w")
    assert (m.path / "w").is_dir()
    m.wait_uploaded()
    since = time.time()
    faults.set_faults({"method": "POST", "path": "/batch", "stall": True})
    subprocess.run(["tar", "xf", str(archive), "-C", str(m.path / "w")], check=True, timeout=120)
    home = m._factory.home

    def on_server() -> int:
        return sum(1 for v in faults.tree(f"{home}/w").values() if v != "dir")

    def stalled() -> int:
        return sum(int(r.get("fired") or 0) for r in faults._admin("GET", "faults")["rules"])

    wait_for(stalled, 30, "the /batch carrying the mkdirs, stalled")
    wait_for(lambda: on_server() == len(files), 60, "every file on the server while the mkdirs' /batch stalls")
    faults.clear_faults()
    faults.release()
    m.wait_uploaded(timeout=60)
    # byte for byte, from the server's store (a /read each would take the read budget)
    tree = faults.tree(f"{home}/w")
    assert {k: v for k, v in tree.items() if v != "dir"} == {
        rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()
    }
    routes = [r["path"] for r in m.emulator.log() if r["t"] >= since]
    sent = [p for p in routes if p in MUTATING]
    batches = math.ceil(len(files) / JSON_BATCH_MAX_FILES)
    # one more when tar outlasts the gathering on a loaded machine; 64 a request would be 5
    assert routes.count("/fs/batchWrite") <= batches + 1, routes
    assert "/stat" not in routes and "/fs/write" not in routes and "/mkdir" not in routes, routes
    # + the mkdirs' /batch (sent again after a stall, a few if tar outlasted the quiet period),
    # + tar's mtimes on t and its directories, and w's (entries were made in it): a /move each
    assert len(sent) <= batches + 3 + (n_dirs + 2), routes
    print(f"tar x of {len(files)} files in {n_dirs + 1} directories: {len(sent)} mutating requests "
          f"({', '.join(f'{r} x{sent.count(r)}' for r in sorted(set(sent)))}); "
          f"{routes.count('/fs/batchWrite')} of them /fs/batchWrite, sent while the mkdirs' /batch stalled")


def test_a_folder_renamed_after_its_files_went_up_before_its_mkdir_is_moved_whole(
    mount_factory: MountFactory, faults: Any
) -> None:
    """A file's upload made its folder on the server before the folder's pending mkdir was
    applied; renamed now, the folder is moved on the server (its mkdir is never rewritten to
    the new name, which would leave the old folder and the file behind)."""
    m = mount_factory(write_back=1)
    m.remote.mkdir("w")
    assert (m.path / "w").is_dir()
    m.wait_uploaded()
    home = m._factory.home
    faults.set_faults({"method": "POST", "path": "/batch", "stall": True})
    # an unrelated op's /batch stalls first, so d's mkdir stays pending behind it (not sent)
    (m.path / "w" / "x").mkdir()
    wait_for(lambda: sum(int(r.get("fired") or 0) for r in faults._admin("GET", "faults")["rules"]), 30,
             "the stalled /batch carrying x's mkdir")
    (m.path / "w" / "d").mkdir()
    (m.path / "w" / "d" / "f.txt").write_bytes(b"made before its folder's mkdir\n")
    wait_for(lambda: "d/f.txt" in faults.tree(f"{home}/w"), 30, "d/f.txt on the server, its folder's mkdir stalled")
    (m.path / "w" / "d").rename(m.path / "w" / "e")
    faults.clear_faults()
    faults.release()
    m.wait_uploaded(timeout=60)
    tree = faults.tree(f"{home}/w")
    want = {"x": "dir", "e": "dir", "e/f.txt": hashlib.sha256(b"made before its folder's mkdir\n").hexdigest()}
    assert tree == want, tree
    assert (m.path / "w" / "e" / "f.txt").read_bytes() == b"made before its folder's mkdir\n"
