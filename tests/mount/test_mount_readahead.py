"""Read-ahead of sequential readers (issue 13): several ranged reads (/read, /file) in flight, fewer
and larger than the kernel's reads, never stored over a local write (fs/readahead.py)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from mount_testlib import MountFactory, wait_for

MiB = 1 << 20


def _reads(emulator: Any) -> list[dict[str, Any]]:
    """Data reads: by path (/read) or, from a file's second read on, by its signed URL (/file)."""
    return [e for e in emulator.log() if e["path"] in ("/read", "/file")]


def _data_reads(emulator: Any) -> list[dict[str, Any]]:
    """The /reads that fetched data: not the one-byte version checks a cached copy makes
    before its next use after a gap in the change events (freshness.py, `verify`), which a
    loaded machine can cause at any time."""
    return [e for e in _reads(emulator) if e["bytes_out"] > 1]


def test_cold_sequential_read_uses_few_large_ranged_reads(mount_factory: MountFactory, emulator: Any) -> None:
    m = mount_factory()
    data = os.urandom(24 * MiB + 12345)
    m.remote.write("big.bin", data)
    p = m.path / "big.bin"
    wait_for(lambda: p.exists() and p.stat().st_size == len(data), 30, "big.bin visible")
    m.emulator.clear_log()
    # a server 50 ms away: requests sent together are in flight together
    emulator.set_faults(*({"method": "GET", "path": r, "latency": 0.05} for r in ("/read", "/file")))
    h = hashlib.sha256()
    try:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(MiB):
                h.update(chunk)
    finally:
        emulator.clear_faults()
    assert h.digest() == hashlib.sha256(data).digest()
    reads = _reads(m.emulator)
    fetched = sum(e["bytes_out"] for e in reads)
    # every byte once, in requests of several MiB (the kernel reads 128 KiB at a time)
    assert len(data) <= fetched < len(data) + 2 * MiB, (fetched, len(data), [(e["path"], e["status"], e["bytes_out"], round(e["t"] % 100, 3)) for e in reads])
    assert len(reads) <= 12, [e["bytes_out"] for e in reads]
    assert max(e["bytes_out"] for e in reads) >= 4 * MiB
    # several requests in flight at once
    overlapping = [(a, b) for i, a in enumerate(reads) for b in reads[i + 1 :] if a["t"] < b["end"] and b["t"] < a["end"]]
    assert overlapping, [(e["t"], e["end"]) for e in reads]
    # a second read is served from the cache
    m.emulator.clear_log()
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert _data_reads(m.emulator) == []
    # the cache file holds every byte (the read-ahead writes it with O_DIRECT, the kernel's
    # reads were answered from memory): without the kernel's pages, read from it
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert _data_reads(m.emulator) == []
    cached = [f for f in (m.proc.cache_dir / "data").iterdir() if f.stat().st_size == len(data)]
    assert [hashlib.sha256(f.read_bytes()).digest() for f in cached] == [hashlib.sha256(data).digest()]
    m.proc.stop()


def test_random_reads_fetch_no_read_ahead(mount_factory: MountFactory) -> None:
    m = mount_factory()
    data = os.urandom(16 * MiB)
    m.remote.write("rand.bin", data)
    p = m.path / "rand.bin"
    wait_for(lambda: p.exists() and p.stat().st_size == len(data), 30, "rand.bin visible")
    m.emulator.clear_log()
    fd = os.open(p, os.O_RDONLY)
    try:
        for off in (9 * MiB, 2 * MiB, 13 * MiB, 5 * MiB):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            assert os.pread(fd, 4096, off) == data[off : off + 4096]
    finally:
        os.close(fd)
    fetched = sum(e["bytes_out"] for e in _reads(m.emulator))
    assert fetched <= 4 * MiB, fetched  # one block per read, nothing ahead
    m.proc.stop()


def test_a_write_during_read_ahead_is_never_overwritten(mount_factory: MountFactory) -> None:
    m = mount_factory(write_back=0.3)
    data = bytearray(os.urandom(20 * MiB))
    m.remote.write("edit.bin", bytes(data))
    p = m.path / "edit.bin"
    wait_for(lambda: p.exists() and p.stat().st_size == len(data), 30, "edit.bin visible")
    with open(p, "r+b", buffering=0) as f:
        assert f.read(3 * MiB) == data[: 3 * MiB]  # a sequential start: read-ahead in flight
        patch = b"local edit" * 1000
        f.seek(15 * MiB)
        f.write(patch)
        data[15 * MiB : 15 * MiB + len(patch)] = patch
        f.seek(3 * MiB)
        assert f.read() == data[3 * MiB :]
    m.wait_uploaded()
    assert m.remote.sha256("edit.bin") == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    m.proc.stop()
