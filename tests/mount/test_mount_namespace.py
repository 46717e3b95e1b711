"""The local-first namespace (issue 13): mkdir, create, rename, unlink and rmdir complete against
the cache and the namespace journal; the server follows in order, coalesced and batched.

The emulator's request log proves what reached the server; kill -9 with ops pending and a name
taken on the server meanwhile prove nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import MountFactory, wait_for

# every route that changes something on the server
MUTATING = {
    "/batch", "/mkdir", "/delete", "/move", "/rename", "/write", "/up", "/copy", "/touch",
    "/fs/write", "/fs/batchWrite", "/fs/mkdir", "/fs/delete", "/fs/move", "/fs/rename",
    "/fs/startWrite", "/fs/completeWrite", "/fs/startBatchWrite", "/fs/completeBatchWrite",
}


def _sent(m: Any, since: float, bodies: bool = False) -> list[dict[str, Any]]:
    return [r for r in m.emulator.log(bodies=bodies) if r["t"] >= since and r["path"] in MUTATING]


def _mtime_update(r: dict[str, Any], name: str) -> bool:
    body = r.get("body")
    return (r["path"] == "/move" and isinstance(body, dict) and body.get("new_name") == name
            and str(body.get("source", "")).endswith("/" + name))


def _work(m: Any) -> Path:
    """A folder of the test's own (the mount's root is the account's home, with Puter's own folders)."""
    m.remote.mkdir("w")
    assert os.listdir(m.path / "w") == []
    return m.path / "w"


def _batch_ops(m: Any, since: float) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for r in _sent(m, since, bodies=True):
        body = r.get("body")
        if r["path"] == "/batch" and isinstance(body, dict) and isinstance(body.get("operations"), list):
            ops.extend(body["operations"])
    return ops


def test_created_and_removed_before_upload_never_reaches_the_server(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=5)  # the quiet period: all of it happens well within it
    w = _work(m)
    since = time.time()
    (w / "d" / "e").mkdir(parents=True)
    (w / "d" / "e" / "f.txt").write_bytes(b"short-lived")
    (w / "g.txt").write_bytes(b"also short-lived")
    os.rename(w / "d" / "e", w / "d" / "e2")
    os.unlink(w / "d" / "e2" / "f.txt")
    os.unlink(w / "g.txt")
    os.rmdir(w / "d" / "e2")
    os.rmdir(w / "d")
    assert os.listdir(w) == []
    assert time.time() - since < 5, "too slow to prove anything: the quiet period passed"
    m.wait_uploaded(timeout=30)
    # the only request: w's own mtime (entries came and went in it), a /move onto itself
    sent = [r for r in _sent(m, since, bodies=True) if not _mtime_update(r, "w")]
    assert [r["path"] for r in sent] == [], [(r["path"], r.get("body")) for r in sent]
    assert m.remote.listdir("w") == []
    m.proc.stop()
    print("mkdir x2, create x2, rename, unlink x2, rmdir x2 before upload: 0 requests to the server")


def test_tar_x_sends_a_few_batched_requests(mount_factory: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = {}
    for d in range(4):
        for i in range(10):
            rel = f"t/d{d}/sub/f{i}.txt" if i % 2 else f"t/d{d}/f{i}.txt"
            files[rel] = f"{rel}\n".encode() * (i + 1)
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src / "t", arcname="t")
    m = mount_factory(write_back=5)  # the quiet period outlasts tar even on a loaded machine
    w = _work(m)
    since = time.time()
    subprocess.run(["tar", "xf", str(archive), "-C", str(w)], check=True, timeout=120)
    m.wait_uploaded(timeout=60)
    for rel, data in files.items():
        assert m.remote.read(f"w/{rel}") == data, rel
    sent = _sent(m, since)
    routes = [r["path"] for r in sent]
    mkdirs = [op for op in _batch_ops(m, since) if op.get("op") == "mkdir"]
    # 9 directories, made by /batch ops (never one /mkdir each); 40 files in batched writes;
    # tar's mtimes on the 9 directories (a metadata update each)
    assert "/mkdir" not in routes and len(mkdirs) == 9, routes
    assert routes.count("/batch") <= 3, routes
    assert len(sent) <= 3 + 3 + 2 * 9, routes
    m.proc.stop()
    print(f"tar x of {len(files)} files in 9 directories: {len(sent)} mutating requests "
          f"({', '.join(f'{r} x{routes.count(r)}' for r in sorted(set(routes)))})")


def test_a_directory_renamed_twice_is_moved_once(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=2)
    w = _work(m)
    m.remote.mkdir("w/a")
    m.remote.write("w/a/f.txt", b"in a")
    # made by another client: the mount learns of it from the change events (or its poll)
    wait_for(lambda: os.listdir(w / "a") == ["f.txt"], 30, "the server's new folder in the mount")
    since = time.time()
    os.rename(w / "a", w / "b")
    os.rename(w / "b", w / "c")
    assert (w / "c" / "f.txt").read_bytes() == b"in a"
    m.wait_uploaded(timeout=30)
    ops = _batch_ops(m, since)
    moves = [op for op in ops if op.get("op") == "move"]
    assert len(moves) == 1 and moves[0]["new_name"] == "c", ops
    assert m.remote.listdir("w") == ["c"] and m.remote.read("w/c/f.txt") == b"in a"
    m.proc.stop()
    print(f"mv a b; mv b c: {len(moves)} move on the server")


def test_ops_after_a_batch_whose_answer_was_lost_are_applied_as_they_are(mount_factory: MountFactory) -> None:
    """The server does a /batch and its answer is lost (the connection drops after it acted);
    what is done here next must not be folded into those ops (mkdir+rmdir into nothing, a
    move and a rename into one move, a move and an unlink into a delete of the source): the
    server already has them. The case the 30%-faults randomised test found."""
    m = mount_factory(write_back=2)
    w = _work(m)
    m.remote.mkdir("w/a")
    m.remote.write("w/a/f.txt", b"in a")
    m.remote.write("w/x.txt", b"x")
    wait_for(lambda: sorted(os.listdir(w)) == ["a", "x.txt"], 10, "a and x.txt in the mount")
    since = time.time()
    m.emulator.set_faults(
        {"method": "POST", "path": "/batch", "after": True, "drop": True, "count": 1},  # done, answer lost
        {"method": "POST", "path": "/batch", "drop": True},  # then nothing gets through
    )
    try:
        (w / "d").mkdir()
        os.rename(w / "a", w / "b")
        os.rename(w / "x.txt", w / "d.txt")
        m.proc.wait_state(lambda s: (s.get("failed_attempts") or 0) > 0, 30, "the first /batch to fail")
        first = _batch_ops(m, since)
        assert [o["op"] for o in first] == ["mkdir", "move", "move"], first  # one request, done by the server
        assert sorted(m.remote.listdir("w")) == ["b", "d", "d.txt"]
        os.rmdir(w / "d")
        os.rename(w / "b", w / "c")
        # listed and read while the server may have them under either name: it has the new one
        assert os.listdir(w / "c") == ["f.txt"] and (w / "c" / "f.txt").read_bytes() == b"in a"
        assert (w / "d.txt").read_bytes() == b"x"
        os.unlink(w / "d.txt")
    finally:
        m.emulator.clear_faults()
    m.wait_uploaded(timeout=60)
    assert m.remote.listdir("w") == ["c"], m.remote.listdir("w")
    assert m.remote.read("w/c/f.txt") == b"in a"
    assert os.listdir(w) == ["c"]
    m.proc.stop()
    print("mkdir/mv/mv done by the server with the answer lost, then rmdir/mv/rm: the server has what the mount has")


@pytest.mark.parametrize("new_file_at_old_name", [False, True])
def test_a_read_under_the_old_name_that_lands_after_the_rename_reads_the_new_one(
    mount_factory: MountFactory, new_file_at_old_name: bool
) -> None:
    """A read of a renamed file goes to its old name while the rename is pending; the request
    can be retried (after a fault) once the journal has moved the file: the read then finds
    it under its new name, never ENOENT (the case the 30%-faults randomised test found: a
    truncate, which reads what it keeps, said ENOENT), and never the bytes of another file
    made under the old name meanwhile."""
    m = mount_factory(write_back=5)
    w = _work(m)
    m.remote.write("w/a.txt", b"server copy")
    wait_for(lambda: os.listdir(w) == ["a.txt"], 10, "a.txt in the mount")
    since = time.time()
    # the first read request waits at the server until released, then fails (503: retried)
    m.emulator.set_faults({"method": "GET", "path": "/read", "stall": True, "count": 1})
    try:
        os.rename(w / "a.txt", w / "b.txt")
        result: dict[str, Any] = {}

        def truncate() -> None:
            try:
                os.truncate(w / "b.txt", 6)  # keeps 6 bytes: they are read from the server first
                result["ok"] = True
            except OSError as exc:
                result["error"] = exc

        worker = threading.Thread(target=truncate)
        worker.start()
        wait_for(lambda: not m.emulator._admin("GET", "faults")["rules"], 10, "the read to reach the server")
        assert m.remote.exists("w/a.txt"), "too slow to prove anything: the rename is on the server already"
        wait_for(lambda: m.remote.exists("w/b.txt"), 30, "the journal to apply the rename")
        if new_file_at_old_name:
            (w / "a.txt").write_bytes(b"another file")
            wait_for(lambda: m.remote.exists("w/a.txt"), 30, "the new a.txt on the server")
        m.emulator.release()  # the read under the old name goes on, after the move
        worker.join(60)
    finally:
        m.emulator.clear_faults()
    assert result == {"ok": True}, result
    assert (w / "b.txt").read_bytes() == b"server"
    statuses = [r["status"] for r in m.emulator.log() if r["t"] >= since and r["path"] == "/read"]
    if not new_file_at_old_name:
        assert 404 in statuses, statuses  # the old name was asked for after the move
    m.wait_uploaded(timeout=30)
    assert m.remote.read("w/b.txt") == b"server"
    m.proc.stop()
    print(f"a read retried under the old name after the rename landed: read under the new name ({statuses})")


def test_reads_of_a_renamed_path_work_before_the_server_has_the_rename(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    w = _work(m)
    data = os.urandom(3 << 20)
    m.remote.mkdir("w/dir")
    m.remote.write("w/dir/big.bin", data)
    assert os.listdir(w / "dir") == ["big.bin"]
    os.rename(w / "dir", w / "moved")
    os.rename(w / "moved" / "big.bin", w / "moved" / "renamed.bin")
    st = m.proc.wait_state(lambda s: s.get("pending", 0) >= 1, 10, "the renames to count as pending")
    assert any(f.get("op") for f in st["pending_files"]), st
    assert m.remote.exists("w/dir/big.bin")  # not applied yet (60 s quiet period)
    assert (w / "moved" / "renamed.bin").read_bytes() == data  # read from the old server name
    assert os.listdir(w) == ["moved"]
    m.proc.stop()  # umount drains the journal
    assert m.remote.listdir("w") == ["moved"] and m.remote.read("w/moved/renamed.bin") == data
    print("renamed-but-not-applied 3 MiB file read back byte for byte; umount applied the renames")


def test_sigkill_with_namespace_ops_pending_applies_them_after_remount(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    w = _work(m)
    m.remote.mkdir("w/x")
    m.remote.write("w/x/f.txt", b"in x")
    m.remote.write("w/y.txt", b"to delete")
    m.remote.mkdir("w/gone")
    wait_for(lambda: sorted(os.listdir(w)) == ["gone", "x", "y.txt"], 10, "the server's entries")
    assert os.listdir(w / "gone") == []
    (w / "new" / "sub").mkdir(parents=True)
    os.rename(w / "x", w / "z")
    os.unlink(w / "y.txt")
    os.rmdir(w / "gone")
    (w / "z" / "g.txt").write_bytes(b"new file in the renamed dir")
    st = m.proc.wait_state(lambda s: s.get("pending", 0) >= 5, 10, "the ops to be pending")
    assert sorted(m.remote.listdir("w")) == ["gone", "x", "y.txt"], "applied before the crash: proves nothing"
    m.kill_and_remount()
    assert sorted(os.listdir(w)) == ["new", "z"]
    assert sorted(os.listdir(w / "z")) == ["f.txt", "g.txt"]
    m.wait_uploaded(timeout=60)
    assert sorted(m.remote.listdir("w")) == ["new", "z"]
    assert m.remote.listdir("w/new") == ["sub"]
    assert m.remote.read("w/z/f.txt") == b"in x" and m.remote.read("w/z/g.txt") == b"new file in the renamed dir"
    m.proc.stop()
    print(f"kill -9 with {st['pending']} pending (namespace ops + a file): all applied after the remount")


def test_kill_9_right_after_rm_rf_of_cached_files_deletes_them_on_the_server_after_remount(
    mount_factory: MountFactory,
) -> None:
    # each unlink commits the server's delete with the end of the file's cache row; the
    # cache files themselves are unlinked later on a worker thread: a kill -9 right after
    # rm -rf returns (before or after that) ends with the tree deleted on the server, no
    # deleted file recovered from the cache, and a file not uploaded yet kept and uploaded
    m = mount_factory(write_back=60)
    w = _work(m)
    for i in range(12):
        m.remote.write(f"w/d/f{i}.txt", b"server %d" % i)
    wait_for(lambda: sorted(os.listdir(w)) == ["d"] and len(os.listdir(w / "d")) == 12, 10, "the server's files")
    for i in range(12):  # cached: a data file and an identity record each
        assert (w / "d" / f"f{i}.txt").read_bytes() == b"server %d" % i
    (w / "d" / "local.txt").write_bytes(b"never uploaded")
    (w / "mine.txt").write_bytes(b"not uploaded yet, kept")
    subprocess.run(["rm", "-rf", str(w / "d")], check=True)
    assert sorted(m.remote.listdir("w")) == ["d"], "applied before the crash: proves nothing"
    m.kill_and_remount()
    assert os.listdir(w) == ["mine.txt"]
    m.wait_uploaded(timeout=60)
    assert m.remote.listdir("w") == ["mine.txt"]
    assert m.remote.read("w/mine.txt") == b"not uploaded yet, kept"
    st = m.proc.state()
    assert st is not None and st["recovered"] == 0 and st["lost_found"] == [], st
    m.proc.stop()


def test_a_name_taken_on_the_server_meanwhile_keeps_both(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    w = _work(m)
    m.remote.write("w/a.txt", b"ours, renamed to b.txt")
    wait_for(lambda: os.listdir(w) == ["a.txt"], 10, "a.txt")
    os.rename(w / "a.txt", w / "b.txt")
    (w / "d").mkdir()
    # meanwhile, elsewhere: both names are taken on the server
    m.remote.write("w/b.txt", b"theirs, made elsewhere")
    m.remote.write("w/d", b"a file where our directory goes")
    m.proc.stop()  # umount applies the journal: both ops meet the names taken
    names = m.remote.listdir("w")
    assert m.remote.read("w/b.txt") == b"ours, renamed to b.txt"
    assert m.remote.is_dir("w/d")
    conflicts = sorted(n for n in names if ".conflict-" in n)
    assert len(conflicts) == 2, names
    kept = {n: m.remote.read(f"w/{n}") for n in conflicts}
    assert sorted(kept.values()) == [b"a file where our directory goes", b"theirs, made elsewhere"], kept
    assert "a.txt" not in names
    print(f"rename and mkdir onto names taken meanwhile: ours in place, theirs kept as {conflicts}")


def test_umount_that_cannot_apply_the_journal_exits_non_zero(mount_factory: MountFactory, emulator: Any) -> None:
    m = mount_factory()
    w = _work(m)
    emulator.set_faults({"method": "POST", "path": "/batch", "status": 500})
    try:
        (w / "kept").mkdir()
        m.proc.wait_state(lambda s: (s.get("failed_attempts") or 0) > 0, 30, "the journal to fail to apply")
        m.proc.expected_exit = True
        m.proc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: m.proc.state().get("stopping"), 30, "the daemon to take the first signal")
        m.proc.proc.send_signal(signal.SIGUSR1)  # `puterfs umount --force`
        rc = m.proc.proc.wait(60)
    finally:
        emulator.clear_faults()
    assert rc != 0, m.proc.log_text()
    st = json.loads(m.proc.state_file.read_text())
    assert st["stopped"] is True and st["pending"] == 1, st
    assert st["pending_files"][0]["op"] == "mkdir w/kept", st
    assert not m.remote.exists("w/kept")
    m.proc = m._factory.spawn(m.path, m.cache_dir, [])
    m.wait_uploaded(timeout=60)
    assert m.remote.is_dir("w/kept")
    m.proc.stop()
    print(f"umount with an unappliable journal: exit {rc}, the op named in the state file, applied at the next mount")


def test_an_rmdir_of_a_directory_filled_elsewhere_meanwhile_keeps_their_entries(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    w = _work(m)
    m.remote.mkdir("w/d")
    wait_for(lambda: os.listdir(w) == ["d"], 10, "d in the mount")
    assert os.listdir(w / "d") == []
    os.rmdir(w / "d")  # journaled; the server hears of it at unmount
    m.remote.write("w/d/theirs.txt", b"made elsewhere meanwhile")
    m.remount()  # the rmdir meets a directory that is not empty: theirs stays, and so does d
    assert m.remote.read("w/d/theirs.txt") == b"made elsewhere meanwhile"
    assert os.listdir(w) == ["d"] and (w / "d" / "theirs.txt").read_bytes() == b"made elsewhere meanwhile"
    m.proc.stop()
    print("rmdir of a directory filled elsewhere meanwhile: theirs kept, the directory shows again")


def test_a_rename_of_a_directory_deleted_elsewhere_meanwhile_keeps_our_new_files(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=60)
    w = _work(m)
    m.remote.mkdir("w/a")
    m.remote.write("w/a/old.txt", b"on the server")
    wait_for(lambda: os.listdir(w) == ["a"], 10, "a in the mount")
    assert os.listdir(w / "a") == ["old.txt"]
    (w / "a" / "new.txt").write_bytes(b"written here, not uploaded yet")
    (w / "a" / "old.txt").write_bytes(b"edited here")
    os.rename(w / "a", w / "b")
    m.remote.delete("w/a")  # elsewhere, meanwhile: the move finds no source
    m.remount()
    # what we wrote is on the server under the new name; what we only had from the server is gone
    assert m.remote.read("w/b/new.txt") == b"written here, not uploaded yet"
    assert m.remote.read("w/b/old.txt") == b"edited here"
    assert m.remote.listdir("w") == ["b"]
    assert sorted(os.listdir(w / "b")) == ["new.txt", "old.txt"]
    m.proc.stop()
    print("rename of a directory deleted elsewhere meanwhile: the files written here are on the server under the new name")
