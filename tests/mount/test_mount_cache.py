"""The local read cache: served from disk (also after a remount), bounded by --cache-size,
least recently used first, and never at the expense of data not yet uploaded."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mount_testlib import MountFactory

READ_ROUTES = ("/read", "/fs/read", "/file")
MIB = 1 << 20


def _read_bytes_logged(emulator) -> int:
    return sum(int(e.get("bytes_out") or 0) for e in emulator.log() if e.get("path") in READ_ROUTES)


def _cache_data_bytes(cache_dir: Path) -> int:
    """File data the cache really holds on disk (sparse files count what is allocated); the
    identity records beside them (data/<id>.id, one block each) are metadata, like the journal."""
    return sum(p.stat().st_blocks * 512 for p in (cache_dir / "data").iterdir() if not p.name.endswith(".id"))


def test_cached_content_is_served_from_disk_after_remount(mount_factory: MountFactory) -> None:
    m = mount_factory()
    data = os.urandom(3 * MIB + 123)
    m.remote.write("cached.bin", data)
    time.sleep(1.5)  # the change poll makes the new file visible
    assert (m.path / "cached.bin").read_bytes() == data
    m = m.remount()  # same cache dir, a fresh daemon and a cold kernel page cache
    m.emulator.clear_log()
    assert (m.path / "cached.bin").read_bytes() == data
    # what changed while unmounted is not known: one byte asks for the version (ETag), no more
    assert _read_bytes_logged(m.emulator) <= 1, "a fully cached, unchanged file was downloaded again"


def test_cache_size_bounds_clean_data_lru(mount_factory: MountFactory) -> None:
    m = mount_factory(cache_size="3M")
    blobs = {f"f{i}.bin": os.urandom(MIB) for i in range(6)}
    for name, data in blobs.items():
        m.remote.write(name, data)
    time.sleep(1.5)
    for name, data in blobs.items():  # read them all, one after the other
        assert (m.path / name).read_bytes() == data
    held = _cache_data_bytes(m.cache_dir)
    assert held <= 4 * MIB, f"the cache holds {held} bytes with --cache-size 3M"
    # the most recently read file is still cached: reading it again downloads nothing
    m = m.remount()
    m.emulator.clear_log()
    assert (m.path / "f5.bin").read_bytes() == blobs["f5.bin"]
    assert _read_bytes_logged(m.emulator) <= 1  # the version check's one byte
    # the oldest was evicted: it comes from the server again, intact
    assert (m.path / "f0.bin").read_bytes() == blobs["f0.bin"]
    assert _read_bytes_logged(m.emulator) >= MIB


def test_dirty_data_is_never_evicted(mount_factory: MountFactory) -> None:
    m = mount_factory(cache_size="1M", write_back="3600")
    local = os.urandom(4 * MIB)
    (m.path / "pending.bin").write_bytes(local)  # bigger than the whole cache, not uploaded yet
    for i in range(3):
        m.remote.write(f"r{i}.bin", os.urandom(MIB))
    time.sleep(1.5)
    for i in range(3):
        (m.path / f"r{i}.bin").read_bytes()  # pressure on the cache
    assert not m.remote.exists("pending.bin")
    assert (m.path / "pending.bin").read_bytes() == local
    m.proc.stop()  # unmount uploads what is pending
    assert m.remote.read("pending.bin") == local


def test_a_write_only_descriptors_bytes_are_seen_by_cached_readers_and_mmap(mount_factory: MountFactory) -> None:
    """Write-only descriptors bypass the kernel's page cache (direct I/O): what they write must
    still be what every reader of the file sees, one that had it cached included."""
    import mmap

    m = mount_factory(write_back=0.3)
    p = m.path / "shared.bin"
    p.write_bytes(b"a" * 3 * MIB)  # open(..., "wb"): write-only
    expected = b"a" * MIB + b"b" * MIB + b"a" * MIB
    r = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(r, 3 * MIB, 0) == b"a" * 3 * MIB  # the reader's pages are cached now
        w = os.open(p, os.O_WRONLY)
        try:
            assert os.pwrite(w, b"b" * MIB, MIB) == MIB
        finally:
            os.close(w)
        assert os.pread(r, 3 * MIB, 0) == expected
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert mm[:] == expected
        with open(p, "ab") as f:  # appends through a write-only descriptor
            f.write(b"tail")
        assert os.fstat(r).st_size == 3 * MIB + 4 and os.pread(r, 8, 3 * MIB - 4) == b"aaaatail"
    finally:
        os.close(r)
    m.wait_uploaded()
    assert m.remote.read("shared.bin") == expected + b"tail"
    m.proc.stop()
