"""The data cache's write path (puterfs/fs/data.py), unit level: a large write past the end of
a cache file reserves its blocks first (`preallocate`), without changing the file's size, and a
full disk refuses the reservation before any byte is written."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from puterfs.fs.data import preallocate


@pytest.fixture
def tiny_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A 256 KiB tmpfs."""
    return tmpfs("256k")


def test_preallocate_reserves_blocks_past_the_end_and_keeps_the_size(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"head")
        if not preallocate(fd, 4096, 1 << 20):
            pytest.skip("the test directory's file system cannot preallocate")
        st = os.fstat(fd)
        assert st.st_size == 4  # the size a reader and the recovery see is the written one
        assert st.st_blocks * 512 >= 1 << 20  # the blocks are reserved
        os.pwrite(fd, b"x" * (1 << 20), 4096)
        assert os.fstat(fd).st_size == 4096 + (1 << 20)
        assert os.pread(fd, 8, 0) == b"head\0\0\0\0"
        assert os.pread(fd, 4, 4096 + (1 << 20) - 4) == b"xxxx"
    finally:
        os.close(fd)


def test_preallocate_on_a_full_disk_fails_with_enospc_and_changes_nothing(tiny_disk: Path) -> None:
    fd = os.open(tiny_disk / "data", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"kept")
        with pytest.raises(OSError) as exc:
            preallocate(fd, 4, 1 << 20)  # more than the disk holds
        assert exc.value.errno == errno.ENOSPC
        st = os.fstat(fd)
        assert st.st_size == 4
        assert st.st_blocks * 512 <= 4096  # nothing of the refused range is kept
        assert os.pread(fd, 16, 0) == b"kept"
        assert preallocate(fd, 4, 64 * 1024)  # what fits is reserved
    finally:
        os.close(fd)
