"""Change detection by version: another client's same-size overwrite within the same second.

The server's entries show (uid, size, whole-second modified), which such an overwrite leaves
as it was; its ETag (on every /read answer, ranged ones included) changes. The mount must see
the new version of a cached file, never assemble a partly cached file from blocks of two
versions, and keep both versions when a local edit was made on top of the old one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from mount_testlib import MountedFs, wait_for

from puterfs.emulator.testing import local_http

BLOCK = 1 << 20  # the mount's unit of partial caching (puterfs.fs.cache.BLOCK_SIZE)


def _fp(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["uid"], entry["size"], entry["modified"])


def _events(m: MountedFs) -> None:
    wait_for(lambda: ((m.proc.state() or {}).get("freshness") or {}).get("mode") == "events", 20, "change events")


def _overwrite_within_the_second(
    m: MountedFs, name: str, first: bytes, second: bytes, between: Callable[[str], None]
) -> str:
    """Put `first` on the server as another client would, run `between(rel)` (the mount caches
    it), then overwrite it with `second` (same size) so that the server's entry stays exactly
    as it was (same uid, size and second). Tried again under a new name when the second ran out
    under load. Returns the name used."""
    assert len(first) == len(second) and first != second
    for attempt in range(8):
        rel = f"{attempt}-{name}"
        time.sleep(1.0 - time.time() % 1.0)  # the start of a second: the server's clock is this one
        before = m.remote.write(rel, first)
        between(rel)
        after = m.remote.write(rel, second)
        if _fp(before) == _fp(after):
            print(f"same-second overwrite on attempt {attempt + 1}: entry {_fp(after)} unchanged")
            return rel
    pytest.fail("could not overwrite within the same second in 8 attempts")


def test_cached_file_overwritten_within_the_second_shows_the_new_version(mount: MountedFs) -> None:
    _events(mount)
    os.listdir(mount.path)
    a, b = b"version A " * 10, b"version B " * 10

    def cache_it(rel: str) -> None:
        wait_for(lambda: (mount.path / rel).read_bytes() == a, 5, "the first version through the mount")

    rel = _overwrite_within_the_second(mount, "same.txt", a, b, cache_it)
    wait_for(lambda: (mount.path / rel).read_bytes() == b, 5, "the other client's version through the mount")
    print(f"bytes compared: {len(b)}; the mount shows the new version")


def test_partly_cached_file_is_never_two_versions(mount: MountedFs) -> None:
    _events(mount)
    os.listdir(mount.path)
    size = BLOCK + 10  # two blocks: the first cached, the second not
    a, b = b"A" * size, b"B" * size

    def cache_first_block(rel: str) -> None:
        wait_for(lambda: (mount.path / rel).exists(), 5, "the file in the mount")
        fd = os.open(mount.path / rel, os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == a[:4096]
        finally:
            os.close(fd)

    rel = _overwrite_within_the_second(mount, "part.bin", a, b, cache_first_block)
    # at once, no waiting for the change event: the open checks the version of what is cached
    data = (mount.path / rel).read_bytes()
    assert data.count(b"A") == 0 and data == b, f"{data.count(b'A')} bytes of the old version in the read"
    print(f"bytes compared: {size}; bytes of the old version: 0")


def test_local_edit_on_top_of_a_same_second_overwrite_keeps_both(mount: MountedFs) -> None:
    _events(mount)
    os.listdir(mount.path)
    a, b = b"the server's first text\n", b"another client's text!!\n"
    fds: list[int] = []

    def open_for_edit(rel: str) -> None:
        wait_for(lambda: (mount.path / rel).read_bytes() == a, 5, "the first version through the mount")
        fds.append(os.open(mount.path / rel, os.O_RDWR))  # an editor holding the file open

    rel = _overwrite_within_the_second(mount, "edit.txt", a, b, open_for_edit)
    for fd in fds[:-1]:
        os.close(fd)
    fd = fds[-1]
    os.pwrite(fd, b"T", 0)  # a local edit of version A, racing the other client's B
    os.close(fd)
    mount.wait_uploaded(30)
    stem = rel.rsplit(".", 1)[0]

    def both() -> list[str]:
        return [n for n in mount.remote.listdir() if n.startswith(stem + ".conflict-")]

    copies = wait_for(both, 10, "the server's version kept as a conflict copy")
    assert len(copies) == 1, copies
    assert mount.remote.read(copies[0]) == b, "the other client's version is lost"
    assert mount.remote.read(rel) == b"T" + a[1:], "the local edit is lost"
    print("versions kept: 2 of 2; bytes lost: 0")


def test_polling_mount_sees_a_same_second_overwrite(mount_factory: Any, puter_user: Any) -> None:
    """Without change events (a full-api-access token is refused by the socket) the poller's
    change timestamp is all there is: the files it may have hit check their version."""
    r = local_http.post(puter_user.url + "/auth/create-access-token", json={"permissions": ["full-api-access"]},
                   headers={"Authorization": f"Bearer {puter_user.token}"})
    mount_factory.token_file.write_text(r.json()["token"] + "\n")
    m = mount_factory()
    wait_for(lambda: ((m.proc.state() or {}).get("freshness") or {}).get("mode") == "polling", 20, "polling")
    os.listdir(m.path)
    a, b = b"polled A" * 8, b"polled B" * 8

    def cache_it(rel: str) -> None:
        wait_for(lambda: (m.path / rel).read_bytes() == a, 5, "the first version through the mount")

    rel = _overwrite_within_the_second(m, "polled.txt", a, b, cache_it)
    wait_for(lambda: (m.path / rel).read_bytes() == b, 10, "the other client's version through a polling mount")


def test_a_stalled_version_check_does_not_hold_up_the_cached_copy(mount_factory: Any, emulator: Any) -> None:
    """The version check (one byte) waits 5 s at most: a server that does not answer leaves the
    cached copy answering, not the caller waiting for --timeout."""
    m = mount_factory(timeout=30)
    size = BLOCK + 10
    m.remote.write("held.bin", b"H" * size)
    wait_for(lambda: (m.path / "held.bin").exists(), 10, "held.bin in the mount")
    with open(m.path / "held.bin", "rb") as f:
        assert f.read(4096) == b"H" * 4096  # the first block is cached, the rest is not
    emulator.set_faults({"method": "GET", "path": "/read", "stall": True})
    try:
        t0 = time.monotonic()
        with open(m.path / "held.bin", "rb") as f:  # a partly cached file checks its version at open
            assert f.read(4096) == b"H" * 4096
        elapsed = time.monotonic() - t0
        fired = sum(r.get("fired") or 0 for r in emulator._admin("GET", "faults")["rules"])
    finally:
        emulator.clear_faults()
        emulator.release()
    assert fired >= 1, "no version check was sent"
    assert elapsed < 15, f"the cached block took {elapsed:.1f}s behind a stalled version check (--timeout 30)"
    print(f"stalled version check: cached data answered after {elapsed:.1f}s")
