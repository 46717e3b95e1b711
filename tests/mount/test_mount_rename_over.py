"""An editor-style save (write a temp file, rename it over an uploaded file) while the server
is full or refuses uploads: the server keeps one of the two versions (the old one, until the
new one replaces it), the mount keeps the new content, and it reaches the server once it can."""

from __future__ import annotations

import os
from typing import Any

import pytest
from mount_testlib import MountedFs, wait_for

UPLOAD_PATHS = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite", "/fs/completeWrite", "/writeFile")


def _refuse(m: MountedFs, how: str) -> None:
    if how == "full":
        m.emulator.set_capacity(m.remote.df()["used"])
    else:
        m.emulator.set_faults(*[{"path": p, "status": 500, "message": "injected: uploads refused"} for p in UPLOAD_PATHS])


def _refused(m: MountedFs) -> bool:
    st = m.proc.state() or {}
    if (st.get("failed_attempts") or 0) > 0 or st.get("last_error"):
        return True
    return any(r.get("fired") for r in m.emulator._admin("GET", "faults")["rules"])


def _accept(m: MountedFs) -> None:
    m.emulator.set_capacity(None)
    m.emulator.clear_faults()


@pytest.mark.parametrize("how", ["full", "refusing"])
def test_rename_over_keeps_a_version_on_the_server_and_the_new_one_here(mount: MountedFs, how: str) -> None:
    old, new = b"the saved version\n" * 4, b"the edited version, longer than the old one\n" * 40
    doc = mount.path / "doc.txt"
    doc.write_bytes(old)
    mount.wait_uploaded(30)
    assert mount.remote.read("doc.txt") == old
    _refuse(mount, how)
    try:
        tmp = mount.path / ".doc.txt.swp"
        tmp.write_bytes(new)  # what an editor does on save (its fsync is docs/write-back.md's)
        os.rename(tmp, doc)
        assert doc.read_bytes() == new
        # an upload was tried and refused (a 500 is retried until --timeout before it counts
        # as a failed attempt; the full server's refusal counts at once)
        wait_for(lambda: _refused(mount), 30, "a refused upload of the new content")
        st: Any = mount.proc.state()
        assert st["pending"] >= 1, st
        # the server never lost the file: it still holds the old version
        assert mount.remote.read("doc.txt") == old
        assert doc.read_bytes() == new  # and the new content is kept here
    finally:
        _accept(mount)
    mount.wait_uploaded(120)
    assert mount.remote.read("doc.txt") == new
    names = [n for n in mount.remote.listdir() if "doc" in n]
    assert names == ["doc.txt"], names  # no conflict copy, no temp file left
    print(f"rename-over with the server {how}: server kept the old version; bytes lost 0")


def test_rename_over_survives_a_kill_while_the_server_is_full(mount: MountedFs) -> None:
    old, new = b"saved\n" * 10, b"edited, then the daemon was killed\n" * 30
    (mount.path / "doc.txt").write_bytes(old)
    mount.wait_uploaded(30)
    _refuse(mount, "full")
    try:
        (mount.path / ".doc.txt.swp").write_bytes(new)
        os.rename(mount.path / ".doc.txt.swp", mount.path / "doc.txt")
        mount.proc.wait_state(lambda s: (s.get("failed_attempts") or 0) > 0 or bool(s.get("last_error")), 30,
                              "the refused upload in the state file")
        m = mount.kill_and_remount()
        assert (m.path / "doc.txt").read_bytes() == new
        assert m.remote.read("doc.txt") == old
    finally:
        _accept(mount)
    m.wait_uploaded(120)
    assert m.remote.read("doc.txt") == new
    assert [n for n in m.remote.listdir() if "doc" in n] == ["doc.txt"]
    print("rename-over, server full, kill -9, remount: bytes lost 0, no conflict copy")
