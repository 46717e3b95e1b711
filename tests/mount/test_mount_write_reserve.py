"""A sequential writer's cache file reserves its blocks ahead of it (puterfs/fs/data.py,
`_reserve`): while the file is open, past its end; given back at the last writer's close, and
at once when the cache disk fills; never in the file's size, so a kill -9 meanwhile loses
nothing and recovers nothing extra."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from mount_testlib import MountedFs, MountFactory, wait_for

from puterfs.fs.data import preallocate

MiB = 1 << 20


def _can_preallocate(d: Path) -> bool:
    probe = d / ".probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        return preallocate(fd, 0, 4096)
    finally:
        os.close(fd)
        probe.unlink()


def _data_file(cache_dir: Path, size: int) -> Path:
    """The one cache data file of `size` bytes."""
    found = [p for p in (cache_dir / "data").iterdir() if p.is_file() and p.stat().st_size == size]
    assert len(found) == 1, found
    return found[0]


def _allocated(p: Path) -> int:
    return p.stat().st_blocks * 512


def _write_mib(fd: int, blocks: list[bytes]) -> None:
    for b in blocks:
        assert os.write(fd, b) == len(b)  # one 1 MiB WRITE each (the mount's max_write)


def _nine_mib_written(mount_factory: MountFactory) -> tuple[MountedFs, list[bytes], int]:
    """A mount whose cache dir can preallocate, and big.bin there open for writing with 9 MiB
    written in 1 MiB writes: the mount, the blocks, the descriptor (the caller closes it)."""
    m = mount_factory(write_back=600)
    if not _can_preallocate(m.cache_dir):
        pytest.skip("the cache dir's file system cannot preallocate")
    blocks = [os.urandom(MiB) for _ in range(9)]
    fd = os.open(m.path / "big.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        _write_mib(fd, blocks)
    except BaseException:
        os.close(fd)
        raise
    return m, blocks, fd


def test_sequential_write_reserves_ahead_and_gives_the_rest_back_at_close(mount_factory: MountFactory) -> None:
    m, blocks, fd = _nine_mib_written(mount_factory)
    try:
        data = _data_file(m.cache_dir, 9 * MiB)
        # the 9th write, at 8 MiB, reserved 8 MiB (as much again as the file had)
        assert _allocated(data) >= 16 * MiB - 64 * 1024, _allocated(data)
    finally:
        os.close(fd)
    assert data.stat().st_size == 9 * MiB
    # given back at the release, which the kernel sends after close() returned
    wait_for(lambda: _allocated(data) <= 9 * MiB + 64 * 1024, 10, "the reserved blocks given back")
    assert (m.path / "big.bin").read_bytes() == b"".join(blocks)
    print(f"reserved ahead while open, {_allocated(data) / MiB:.2f} MiB allocated for 9 MiB after close")


def test_writes_that_leave_holes_reserve_only_their_own_blocks(mount_factory: MountFactory) -> None:
    """A sparse writer (writes past the end, each leaving a hole) gets no reservation ahead:
    what it reserved would end up inside the file, allocated, when the next write lands
    further on."""
    m = mount_factory(write_back=600)
    if not _can_preallocate(m.cache_dir):
        pytest.skip("the cache dir's file system cannot preallocate")
    blocks = [os.urandom(MiB) for _ in range(6)]
    offsets = [0, 1, 2, 3, 32, 64]  # MiB: four from the end, then two leaving holes
    fd = os.open(m.path / "sparse.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for b, o in zip(blocks, offsets, strict=True):
            assert os.pwrite(fd, b, o * MiB) == MiB
    finally:
        os.close(fd)
    data = _data_file(m.cache_dir, 65 * MiB)
    # the six MiB written; the reserve ahead of the first four is past the end of 4 MiB only
    # until the write at 32 MiB, which must not reserve [33, 36) MiB inside the file-to-be
    wait_for(lambda: _allocated(data) <= 6 * MiB + 64 * 1024, 10, f"6 MiB allocated, not {_allocated(data)}")
    with open(m.path / "sparse.bin", "rb") as f:
        for b, o in zip(blocks, offsets, strict=True):
            f.seek(o * MiB)
            assert f.read(MiB) == b
        f.seek(4 * MiB)
        assert f.read(MiB) == bytes(MiB)  # a hole reads as zeros


def test_kill_9_during_a_reserved_write_keeps_exactly_what_was_written(mount_factory: MountFactory) -> None:
    m, blocks, fd = _nine_mib_written(mount_factory)
    try:
        assert _allocated(_data_file(m.cache_dir, 9 * MiB)) > 9 * MiB + 64 * 1024  # reserved ahead
        m.kill_and_remount(write_back=600)  # the writer still has it open
    finally:
        try:
            os.close(fd)
        except OSError as exc:  # the dead mount's descriptor
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO), exc
    assert (m.path / "big.bin").stat().st_size == 9 * MiB
    assert (m.path / "big.bin").read_bytes() == b"".join(blocks)
    m.proc.stop()  # exit 0: the server has it
    assert m.remote.read("big.bin") == b"".join(blocks)


def test_a_full_cache_disk_takes_back_the_blocks_reserved_ahead(mount_factory: MountFactory,
                                                                tmpfs: Callable[[str], Path]) -> None:  # fmt: skip
    disk = tmpfs("24m")
    m = mount_factory(cache_dir=disk / "cache", write_back=600)
    a_blocks = [os.urandom(MiB) for _ in range(10)]
    b_data = os.urandom(2 * MiB)
    fa = os.open(m.path / "a.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        _write_mib(fa, a_blocks[:9])  # a.bin holds 8 MiB reserved past its 9 MiB
        assert _allocated(_data_file(m.cache_dir, 9 * MiB)) >= 16 * MiB - 64 * 1024
        filler = disk / "filler"
        ff = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # the rest of the disk
            with pytest.raises(OSError) as full:
                while True:
                    os.write(ff, b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(ff)
        # another file's writes find the disk full: the reservation is given back, they fit
        (m.path / "b.bin").write_bytes(b_data)
        # and a.bin's writer goes on (reserving again what still fits)
        _write_mib(fa, a_blocks[9:])
    finally:
        os.close(fa)
    assert (m.path / "a.bin").read_bytes() == b"".join(a_blocks)
    assert (m.path / "b.bin").read_bytes() == b_data
    filler.unlink()
    m.proc.stop()  # exit 0: everything is on the server
    assert m.remote.read("a.bin") == b"".join(a_blocks)
    assert m.remote.read("b.bin") == b_data
