"""File data through signed read URLs (fs/remote.py `SignedReads`): a file's first read goes
by path (``GET /read``), then its uid is signed once (``POST /sign``) and its data read with
``GET /file`` (3,000 a minute and 60 in flight on every tier, not /read's 300 and 5 of the
free tier); a refused signature or a uid gone (the file replaced) falls back to /read."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from mount_testlib import MountFactory, wait_for

MiB = 1 << 20


def _data(emulator: Any) -> list[dict[str, Any]]:
    """Requests for file data (not the one-byte version checks freshness.py may make)."""
    return [e for e in emulator.log() if e["path"] in ("/read", "/file") and e["bytes_out"] > 1]


def _count(log: list[dict[str, Any]], path: str, status: int | None = None) -> int:
    return sum(1 for e in log if e["path"] == path and (status is None or e["status"] == status))


def _random_reads(path: Any, data: bytes, offsets: list[int]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for off in offsets:
            assert os.pread(fd, 4096, off) == data[off : off + 4096], off
    finally:
        os.close(fd)


def _put(m: Any, name: str, data: bytes) -> Any:
    m.remote.write(name, data)
    p = m.path / name
    wait_for(lambda: p.exists() and p.stat().st_size == len(data), 30, f"{name} visible")
    return p


def test_random_reads_go_through_one_signed_url_not_the_read_budget(mount_factory: MountFactory) -> None:
    """A random-read pattern (one block per read): one /read, one /sign, the rest /file, with
    no 429 (the temp tier this user has allows /read 120 a minute and 3 in flight)."""
    m = mount_factory()
    data = os.urandom(12 * MiB)
    p = _put(m, "rand.bin", data)
    m.emulator.clear_log()
    offsets = [b * MiB + 123 for b in (7, 2, 10, 0, 5, 11, 3, 8, 1, 9, 4, 6)]
    _random_reads(p, data, offsets)
    log = m.emulator.log()
    reads = _data(m.emulator)
    assert _count(reads, "/read") == 1 and reads[0]["path"] == "/read", [e["path"] for e in reads]
    assert _count(reads, "/file", 206) == len(offsets) - 1, [(e["path"], e["status"]) for e in reads]
    assert _count(log, "/sign") == 1
    assert not [e for e in log if e["status"] == 429]
    # the signature is a credential: never in the mount's log
    assert not re.search(r"signature=[0-9a-f]", m.proc.log_text(tail=10**6))
    # a sequential read of another file: its read-ahead's chunks through its URL as well
    big = os.urandom(10 * MiB + 7)
    q = _put(m, "seq.bin", big)
    m.emulator.clear_log()
    assert hashlib.sha256(q.read_bytes()).digest() == hashlib.sha256(big).digest()
    reads = _data(m.emulator)
    assert _count(reads, "/read") == 1 and _count(reads, "/file") >= 1, [e["path"] for e in reads]
    assert sum(e["bytes_out"] for e in reads) < len(big) + 2 * MiB
    m.proc.stop()


def test_a_refused_signature_falls_back_to_read(mount_factory: MountFactory) -> None:
    m = mount_factory()
    data = os.urandom(6 * MiB)
    p = _put(m, "refused.bin", data)
    m.emulator.clear_log()
    m.emulator.set_faults({"method": "GET", "path": "/file", "status": 403, "code": "forbidden",
                           "message": "Authentication failed", "count": 1})
    try:
        _random_reads(p, data, [4 * MiB, 1 * MiB, 3 * MiB, 5 * MiB])
    finally:
        m.emulator.clear_faults()
    reads = _data(m.emulator)
    # the first by path; the second's URL refused, so it and the rest by path, never signed again
    assert _count(reads, "/file", 403) == 1 and _count(reads, "/read") == 4, [(e["path"], e["status"]) for e in reads]
    assert _count(m.emulator.log(), "/sign") == 1
    m.proc.stop()


def test_a_file_replaced_on_the_server_is_read_by_path(mount_factory: MountFactory) -> None:
    """Another client replaces the file (a new uid at the path) while it is open here: the
    mount's next reads get the new file's bytes, never the old one's: its signed URL finds no
    file (404), and the path read decides (as without signed URLs: a new version drops the
    cached blocks)."""
    m = mount_factory()
    old = os.urandom(6 * MiB)
    p = _put(m, "swap.bin", old)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(fd, 4096, 0) == old[:4096]
        assert os.pread(fd, 4096, 2 * MiB) == old[2 * MiB : 2 * MiB + 4096]  # through the URL
        uid = m.remote.stat("swap.bin")["uid"]
        new = os.urandom(len(old))
        m.remote.delete("swap.bin")
        m.remote.write("swap.bin", new)
        assert m.remote.stat("swap.bin")["uid"] != uid
        m.emulator.clear_log()
        got = os.pread(fd, 4096, 4 * MiB)
    finally:
        os.close(fd)
    assert got == new[4 * MiB : 4 * MiB + 4096], "bytes of the replaced file"
    log = m.emulator.log()
    print("after the replacement:", [(e["path"], e["status"]) for e in log if e["path"] in ("/read", "/file")])
    assert not [e for e in log if e["path"] == "/file" and e["status"] in (200, 206)], "the old uid's bytes"
    wait_for(lambda: (m.path / "swap.bin").read_bytes() == new, 10, "the new file through the mount")
    m.proc.stop()
