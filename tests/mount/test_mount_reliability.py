"""Reliability through a real mount (docs/reliability.md): a full cache disk, a damaged
journal, a tampered cache dir, crashes. Each test prints its figure."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mount_testlib import MountFactory, MountProcess, wait_for


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 4 MiB tmpfs for the cache dir."""
    return tmpfs("4m")


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _try(fn: Any) -> int:
    """0 if fn() worked, else its errno."""
    try:
        fn()
        return 0
    except OSError as exc:
        return exc.errno or -1


def test_full_cache_disk_gives_enospc_and_loses_no_edit(mount_factory: MountFactory, small_disk: Path) -> None:
    # uploads wait (write-back 600 s): the cache holds dirty data that cannot be evicted
    m = mount_factory(cache_dir=small_disk / "cache", write_back=600)
    m.remote.write("doc.txt", b"A" * 20_000)
    wait_for((m.path / "doc.txt").exists, 10, "doc.txt visible")
    assert (m.path / "doc.txt").read_bytes() == b"A" * 20_000  # cached, clean
    (m.path / "big.bin").write_bytes(os.urandom(1 << 20))
    filler = _fill(small_disk)

    # in-place edits of an uploaded file: each write either fails with ENOSPC (and changed
    # nothing) or succeeded (and must reach the server)
    expected = bytearray(b"A" * 20_000)
    codes = []
    fd = os.open(m.path / "doc.txt", os.O_RDWR)
    try:
        for i in range(20):
            chunk = bytes([66 + i % 20]) * 500
            off = i * 700
            code = _try(lambda chunk=chunk, off=off: os.pwrite(fd, chunk, off))
            codes.append(code)
            if code == 0:
                expected[off:off + len(chunk)] = chunk
    finally:
        close_code = _try(lambda: os.close(fd))
    assert set(codes) <= {0, errno.ENOSPC}, codes
    assert close_code in (0, errno.ENOSPC)

    # a new file on the full disk: ENOSPC (never EIO), or it worked
    create_code = _try(lambda: (m.path / "new.bin").write_bytes(os.urandom(200_000)))
    assert create_code in (0, errno.ENOSPC), errno.errorcode.get(create_code)

    # deleting a file works on the full disk and frees its space
    os.unlink(m.path / "big.bin")
    after = b"written once space was freed"
    (m.path / "after.txt").write_bytes(after)

    os.unlink(filler)
    m.proc.stop()  # exit 0: everything is on the server
    assert not m.remote.exists("big.bin")
    assert m.remote.read("doc.txt") == bytes(expected)
    assert m.remote.read("after.txt") == after
    print(f"full cache disk: {len(codes)} writes ({codes.count(errno.ENOSPC)} ENOSPC), create -> "
          f"{errno.errorcode.get(create_code, 'ok')}, unlink ok, bytes compared {len(expected) + len(after)}, bytes lost 0")


def _kill_and_damage(m: Any, how: str) -> None:
    m.proc.kill()
    cache = m.cache_dir
    if how == "wal-gone":
        for suffix in ("-wal", "-shm"):
            p = cache / f"journal.sqlite3{suffix}"
            if p.exists():
                p.unlink()
    elif how == "wal-half":
        p = cache / "journal.sqlite3-wal"
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        (cache / "journal.sqlite3-shm").unlink(missing_ok=True)
    elif how == "rows-missing":
        db = sqlite3.connect(cache / "journal.sqlite3")
        db.execute("DELETE FROM files WHERE rowid % 2 = 0")
        db.commit()
        db.close()
    elif how == "garbage":
        for suffix in ("-wal", "-shm"):
            (cache / f"journal.sqlite3{suffix}").unlink(missing_ok=True)
        (cache / "journal.sqlite3").write_bytes(os.urandom(8192))


@pytest.mark.parametrize("how", ["wal-gone", "wal-half", "rows-missing", "garbage"])
def test_damaged_journal_loses_no_file(mount_factory: MountFactory, how: str) -> None:
    m = mount_factory(write_back=600)
    files = {f"d/f{i:02d}.txt": os.urandom(1000 + 37 * i) for i in range(20)}
    (m.path / "d").mkdir()
    for rel, data in files.items():
        (m.path / rel).write_bytes(data)
    assert not m.remote.exists("d/f00.txt")  # nothing uploaded before the crash
    _kill_and_damage(m, how)
    m.proc = m._factory.spawn(m.path, m.cache_dir, [])
    for rel, data in files.items():
        assert (m.path / rel).read_bytes() == data, rel
    m.wait_uploaded(timeout=90)
    for rel, data in files.items():
        assert m.remote.read(rel) == data, rel
    conflicts = [n for n in m.remote.listdir("d") if ".conflict-" in n]
    assert conflicts == []
    log = m.proc.log_text(20000)
    m.proc.stop()
    print(f"journal {how}: {len(files)} dirty files, bytes compared {sum(map(len, files.values()))}, bytes lost 0, "
          f"recovery log lines {log.count('recovered from its identity record')}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second local user")
def test_mount_refuses_a_cache_dir_another_user_planted(mount_factory: MountFactory, tmp_path: Path) -> None:
    """Another local user created the cache dir first and planted a link and a journal row in it."""
    shared = Path(tempfile.mkdtemp(prefix="puterfs-shared-", dir="/tmp"))
    os.chmod(shared, 0o1777)
    secret = tmp_path / "root-only.txt"
    secret.write_bytes(b"root's secret")
    os.chmod(secret, 0o600)
    cache = shared / "victim-cache"
    try:
        pid = os.fork()
        if pid == 0:  # the other user
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.mkdir(cache, 0o777)
                os.chmod(cache, 0o777)
                os.mkdir(cache / "data", 0o777)
                os.symlink(str(secret), str(cache / "data" / "1"))
                db = sqlite3.connect(cache / "journal.sqlite3")
                db.execute("CREATE TABLE files (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, "
                           "dirty INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL DEFAULT 0, mtime_ns INTEGER NOT "
                           "NULL DEFAULT 0, mode INTEGER NOT NULL DEFAULT 33188, base_uid TEXT, base_size INTEGER, "
                           "base_modified INTEGER, complete INTEGER NOT NULL DEFAULT 0, last_used REAL NOT NULL DEFAULT 0)")
                db.execute("INSERT INTO files (id, path, dirty, complete) VALUES (1, '../Public/stolen.txt', 1, 1)")
                db.commit()
                db.close()
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        proc = MountProcess(
            tmp_path / "mnt2", url=mount_factory.url, token_file=mount_factory.token_file, cache_dir=cache,
            xdg_root=tmp_path / "xdg", log_path=tmp_path / "refused.log",
        )
        proc.mountpoint.mkdir()
        run = subprocess.run(proc.argv, env=proc.env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
        assert run.returncode == 1, run.stdout + run.stderr
        assert "belongs to uid 65534" in run.stderr and "refusing" in run.stderr, run.stderr
        assert not os.path.ismount(proc.mountpoint)
        home = mount_factory.remote()
        assert not any("stolen" in n for n in home.listdir("")), home.listdir("")
        assert secret.read_bytes() == b"root's secret"
        print("cache-dir attack: 1 planted dir, 1 symlink, 1 journal row; refused; bytes leaked 0")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


UPLOAD_PATHS = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite", "/fs/completeWrite", "/writeFile")


def test_exit_status_says_files_are_not_uploaded(mount_factory: MountFactory, emulator: Any) -> None:
    """Stopped (umount --force) while the server refuses uploads: a non-zero exit, a state file that
    names what is not on the server; the next mount uploads it and exits 0 (--timeout 3: an
    upload attempt is retried inside the client until then)."""
    m = mount_factory(timeout=3)
    emulator.set_faults(*[{"method": "POST", "path": p, "status": 500} for p in UPLOAD_PATHS])
    try:
        (m.path / "kept.txt").write_bytes(b"not on the server yet")
        m.proc.wait_state(lambda s: (s.get("failed_attempts") or 0) > 0, 30, "an upload to fail")
        m.proc.expected_exit = True
        m.proc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: m.proc.state().get("stopping"), 30, "the daemon to take the first signal")
        m.proc.proc.send_signal(signal.SIGUSR1)  # `puterfs umount --force`: stop without waiting
        rc = m.proc.proc.wait(60)
    finally:
        emulator.clear_faults()
    assert rc != 0, m.proc.log_text()
    st = json.loads(m.proc.state_file.read_text())
    assert st["stopped"] is True and st["pending"] == 1, st
    assert [f["path"] for f in st["pending_files"]] == ["kept.txt"], st
    assert not m.remote.exists("kept.txt")
    m.proc = m._factory.spawn(m.path, m.cache_dir, [])
    m.wait_uploaded(timeout=60)
    assert m.remote.read("kept.txt") == b"not on the server yet"
    m.proc.stop()  # exit 0, state file gone
    print(f"exit status: {rc} with 1 file not uploaded, then 0; bytes lost 0")


def test_unlistable_server_names_are_skipped_not_eio(mount: Any) -> None:
    """Names POSIX cannot list (NUL, longer than 255 bytes) are skipped with a log line; the
    rest of the directory lists normally."""
    mount.remote.mkdir("odd")
    mount.remote.write("odd/fine.txt", b"fine")
    mount.remote.write("odd/nul\x00name.txt", b"x")
    mount.remote.write("odd/" + "L" * 300, b"long")
    names = os.listdir(mount.path / "odd")
    assert names == ["fine.txt"], names
    assert (mount.path / "odd" / "fine.txt").read_bytes() == b"fine"
    log = mount.proc.log_text(20000)
    assert "not listing the server entry" in log and "NAME_MAX" in log, log[-2000:]
    print("odd names: 3 server entries, 1 listed, 2 skipped with a log line")


def test_conflict_copy_of_a_long_name_fits_name_max() -> None:
    from puterfs.fs.remote import NAME_MAX, conflict_name

    for name in ("é" * 127 + ".txt", "x" * 255, "a." + "e" * 250, "plain"):
        out = conflict_name(name, 1_800_000_000)
        assert len(out.encode()) <= NAME_MAX and ".conflict-" in out, (name, out)
        out.encode("utf-8")  # never cut inside a character


def test_one_failed_request_does_not_take_the_mount_offline(mount: Any, emulator: Any) -> None:
    """Each request's failure is judged on its own: after one dropped /stat, the next calls
    go to the server at once (no whole-mount offline period)."""
    for i in range(3):
        mount.remote.write(f"s{i}.txt", b"x" * (i + 1))
    emulator.clear_log()
    emulator.set_faults({"path": "/readdir", "drop": True, "count": 3})  # more than the client retries
    try:
        # the first listing of the root meets the dropped answer (served again at once)
        t0 = time.monotonic()
        for _ in range(2):
            try:
                names = os.listdir(mount.path)
                break
            except OSError:
                continue
        assert {"s0.txt", "s1.txt", "s2.txt"} <= set(names)
        assert (mount.path / "s2.txt").read_bytes() == b"xxx"
        elapsed = time.monotonic() - t0
    finally:
        emulator.clear_faults()
    st = mount.proc.state()
    assert st is not None
    print(f"one dropped /readdir: listing and read done in {elapsed:.2f}s")


def test_uploads_resume_promptly_when_an_outage_ends(mount: Any, emulator: Any) -> None:
    """During an outage the upload's backoff grows; when the poller reaches the server
    again it wakes the upload at once instead of letting it wait out its backoff."""
    os.listdir(mount.path)  # the root listing is cached: creating a file needs no request
    emulator.set_faults({"path": "*", "drop": True})
    try:
        (mount.path / "during-outage.txt").write_bytes(b"written while the server was down")
        # wait until the upload has failed several times (its next try is seconds away)
        wait_for(lambda: "attempt 4, retry in 8.0s" in mount.proc.log_text(20000), 60, "the backoff to reach 8 s")
    finally:
        emulator.clear_faults()
    t0 = time.monotonic()
    wait_for(lambda: mount.remote.exists("during-outage.txt"), 30, "the upload after the outage")
    elapsed = time.monotonic() - t0
    assert elapsed < 6.0, f"the upload waited {elapsed:.1f}s after the server came back (its backoff)"
    assert mount.remote.read("during-outage.txt") == b"written while the server was down"
    print(f"outage: upload done {elapsed:.1f}s after the server came back (backoff was 8 s)")


def test_readers_closing_a_dirty_file_do_not_postpone_its_upload(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=1.5)
    p = m.path / "read-often.txt"
    p.write_bytes(b"uploaded although it is read all the time")
    t0 = time.monotonic()
    while not m.remote.exists("read-often.txt"):
        assert p.read_bytes() == b"uploaded although it is read all the time"  # open, read, close
        assert time.monotonic() - t0 < 20, "a reader's close keeps postponing the upload"
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    print(f"read every 0.2 s: uploaded after {elapsed:.1f}s (quiet period 1.5 s)")
    m.proc.stop()


def test_delete_answered_with_html_is_not_taken_as_done(mount: Any, emulator: Any) -> None:
    """A proxy's HTML page (200) instead of the server's answer to the /batch that carries an
    unlink (local first: the unlink itself returns at once): not taken as done, the file stays
    on the server, and a retry deletes it."""
    (mount.path / "keep.txt").write_bytes(b"still here")
    mount.wait_uploaded()
    emulator.set_faults({"method": "POST", "path": "/batch", "html": True})
    try:
        os.unlink(mount.path / "keep.txt")
        assert not (mount.path / "keep.txt").exists()
        mount.proc.wait_state(lambda s: (s.get("failed_attempts") or 0) > 0, 30, "the delete to get the HTML page")
        assert mount.remote.read("keep.txt") == b"still here"
        assert mount.proc.state()["pending"] == 1
    finally:
        emulator.clear_faults()
    mount.wait_uploaded(timeout=60)
    assert not mount.remote.exists("keep.txt")
    print("delete answered with HTML 200: not taken as done, the file kept on the server until a retry deleted it")


def test_interrupted_upload_is_not_a_conflict_after_crash(mount_factory: MountFactory, emulator: Any) -> None:
    """The server stores our upload but its answer never comes; we edit again and are killed.
    After the restart the server's copy is recognised as ours (its MD5 was journaled before
    the attempt): replaced, no conflict copy."""
    m = mount_factory()
    v1, v2 = b"version one of our file\n", b"version two, written while v1 was in flight\n"
    emulator.set_faults(*[{"method": "POST", "path": p, "after": True, "stall": True} for p in UPLOAD_PATHS])
    try:
        (m.path / "ours.txt").write_bytes(v1)
        wait_for(lambda: m.remote.exists("ours.txt"), 30, "the server to store v1 (its answer is held)")
        (m.path / "ours.txt").write_bytes(v2)
        m.proc.kill()
    finally:
        emulator.clear_faults()
    assert m.remote.read("ours.txt") == v1
    m.proc = m._factory.spawn(m.path, m.cache_dir, [])
    m.wait_uploaded(timeout=60)
    assert m.remote.read("ours.txt") == v2
    names = m.remote.listdir("")
    assert not [n for n in names if ".conflict-" in n], names
    m.proc.stop()
    print("interrupted upload + kill -9: server copy recognised as ours, 0 conflict copies, bytes lost 0")


def test_stalled_read_fails_with_etimedout_and_the_mount_stays_usable(mount_factory: MountFactory, emulator: Any) -> None:
    m = mount_factory(timeout=3)
    m.remote.write("slow.bin", b"s" * 1000)
    m.remote.write("other.txt", b"other")
    wait_for((m.path / "slow.bin").exists, 10, "slow.bin visible")
    assert (m.path / "other.txt").read_bytes() == b"other"
    # a stalled server: by path and by signed URL (a file's second read goes by its URL)
    emulator.set_faults(*({"method": "GET", "path": r, "stall": True} for r in ("/read", "/file")))
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as exc:
            (m.path / "slow.bin").read_bytes()
        elapsed = time.monotonic() - t0
    finally:
        emulator.clear_faults()
    assert exc.value.errno == errno.ETIMEDOUT, exc.value
    assert (m.path / "other.txt").read_bytes() == b"other"  # cached data still answers
    assert (m.path / "slow.bin").read_bytes() == b"s" * 1000  # and the file reads once the server does
    print(f"stalled /read: ETIMEDOUT after {elapsed:.1f}s (--timeout 3), mount usable")
