"""Changes made by another client show up in the mount; reads fetch only what is needed."""

from __future__ import annotations

import os
import time

from mount_testlib import MountedFs, wait_for

# The contract: poll every --poll-interval (0.5 s here), attributes cached 1 s.
# "Within a few seconds" is generous on purpose for a loaded 2-core CI machine.
VISIBLE_WITHIN = 8.0

# every route that returns file content
READ_ROUTES = ("/read", "/fs/read", "/file", "/token-read", "/down")


def _read_content(p: os.PathLike[str]) -> bytes | None:
    try:
        with open(p, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def test_new_server_file_appears(mount: MountedFs) -> None:
    before = os.listdir(mount.path)
    assert "remote.txt" not in before
    mount.remote.write("remote.txt", b"written by another client")
    wait_for(lambda: "remote.txt" in os.listdir(mount.path), VISIBLE_WITHIN, "remote.txt in the listing")
    assert (mount.path / "remote.txt").read_bytes() == b"written by another client"


def test_new_server_file_appears_in_listed_subdir(mount: MountedFs) -> None:
    sub = mount.path / "sub"
    sub.mkdir()
    (sub / "local.txt").write_bytes(b"l")
    mount.wait_uploaded()
    assert os.listdir(sub) == ["local.txt"]  # the listing is now cached
    assert not (sub / "new.txt").exists()  # and so is a negative lookup
    mount.remote.write("sub/new.txt", b"new from server")
    mount.remote.mkdir("sub/newdir")
    wait_for(lambda: sorted(os.listdir(sub)) == ["local.txt", "new.txt", "newdir"], VISIBLE_WITHIN, "listing updated")
    assert (sub / "new.txt").read_bytes() == b"new from server"
    assert (sub / "newdir").is_dir()


def test_server_overwrite_replaces_cached_content(mount: MountedFs) -> None:
    p = mount.path / "changing.txt"
    mount.remote.write("changing.txt", b"version one")
    wait_for(lambda: _read_content(p) == b"version one", VISIBLE_WITHIN, "first version")
    # read it a few times so the kernel and the mount both cache it
    for _ in range(3):
        assert p.read_bytes() == b"version one"
    time.sleep(1.1)  # a new server timestamp (seconds)
    mount.remote.write("changing.txt", b"version TWO")  # same size: only content differs
    wait_for(lambda: _read_content(p) == b"version TWO", VISIBLE_WITHIN, "the server's new content")
    mount.remote.write("changing.txt", b"v3, a different length")
    wait_for(lambda: _read_content(p) == b"v3, a different length", VISIBLE_WITHIN, "the server's third version")
    assert os.stat(p).st_size == len(b"v3, a different length")


def test_server_delete_disappears(mount: MountedFs) -> None:
    d = mount.path / "dir"
    d.mkdir()
    (d / "doomed.txt").write_bytes(b"doomed")
    (mount.path / "doomed-too.txt").write_bytes(b"doomed too")
    mount.wait_uploaded()
    assert (d / "doomed.txt").read_bytes() == b"doomed"
    mount.remote.delete("dir/doomed.txt")
    mount.remote.delete("doomed-too.txt")
    wait_for(lambda: not (d / "doomed.txt").exists(), VISIBLE_WITHIN, "doomed.txt gone")
    wait_for(lambda: "doomed-too.txt" not in os.listdir(mount.path), VISIBLE_WITHIN, "doomed-too.txt gone")
    assert os.listdir(d) == []
    # and a whole directory
    mount.remote.delete("dir")
    wait_for(lambda: not d.exists(), VISIBLE_WITHIN, "dir gone")


def test_server_rename_is_followed(mount: MountedFs) -> None:
    mount.remote.write("before.txt", b"renamed elsewhere")
    p_old, p_new = mount.path / "before.txt", mount.path / "after.txt"
    wait_for(p_old.exists, VISIBLE_WITHIN, "before.txt visible")
    data = mount.remote.read("before.txt")
    mount.remote.write("after.txt", data)
    mount.remote.delete("before.txt")
    wait_for(lambda: not p_old.exists() and p_new.exists(), VISIBLE_WITHIN, "rename seen")
    assert p_new.read_bytes() == b"renamed elsewhere"


def test_partial_read_downloads_little(mount: MountedFs) -> None:
    # Large enough that a read-ahead of a few MiB (fine for sequential readers) is still
    # far from the whole file.
    size = 64 * 1024 * 1024
    data = os.urandom(size)
    mount.remote.write("large.bin", data)
    p = mount.path / "large.bin"
    wait_for(lambda: p.exists() and os.stat(p).st_size == size, VISIBLE_WITHIN, "large.bin visible")
    mount.emulator.clear_log()
    with open(p, "rb") as f:
        head = f.read(1024)
        f.seek(size - 1000)
        tail = f.read()
    assert head == data[:1024]
    assert tail == data[-1000:]
    time.sleep(1.5)  # let any background prefetch show itself in the log
    reads = [e for e in mount.emulator.log() if e.get("path") in READ_ROUTES]
    assert reads, "no read request was logged at all"
    downloaded = sum(int(e.get("bytes_out") or 0) for e in reads)
    assert downloaded < size // 4, f"read 2 KiB of a {size >> 20} MiB file and downloaded {downloaded} bytes"
