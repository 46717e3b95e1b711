"""`puterfs status` of a real mount: the account and server it really uses, the files not
yet uploaded and why, and no stale error once the queue drained."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from mount_testlib import MountedFs, wait_for

UPLOAD_PATHS = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite", "/fs/completeWrite", "/writeFile")
UPLOADS_FAIL = [{"path": p, "status": 500, "message": "injected: uploads fail"} for p in UPLOAD_PATHS]


def status(mount: MountedFs, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "puterfs", "status", *args],
        env=mount.proc.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def status_json(mount: MountedFs) -> dict[str, Any]:
    res = status(mount, "--json", str(mount.path))
    assert res.returncode == 0, res.stderr
    (entry,) = json.loads(res.stdout)["mounts"]
    return entry


def test_status_names_the_real_server_and_the_pending_files(mount_factory: Any) -> None:
    # A 500 is retried until --timeout before it counts as a failed attempt: keep that short.
    mount: MountedFs = mount_factory(timeout=3)
    # No saved login in this environment: the mount's own account and server are named.
    res = status(mount)
    assert res.returncode == 0, res.stderr
    assert f"account:  {mount.user.username} on {mount.proc.url}" in res.stdout
    assert "login:    none saved" in res.stdout
    assert "(not logged in) on https://api.puter.com" not in res.stdout
    entry = status_json(mount)
    assert entry["account"] == mount.user.username and entry["api_url"] == mount.proc.url
    assert entry["alive"] and entry["mounted"] and entry["pending_files"] == []

    mount.emulator.set_faults(*UPLOADS_FAIL)
    try:
        (mount.path / "notes").mkdir()
        (mount.path / "notes" / "todo.txt").write_text("x" * 3000)
        entry = wait_for(
            lambda: (e := status_json(mount))["failed_attempts"] and e, 30, "a failed upload attempt in status"
        )
        # the file, and the mkdir of its folder (local first: the /batch carrying it fails too)
        files = [f for f in entry["pending_files"] if not f.get("op")]
        assert [f["path"] for f in files] == ["notes/todo.txt"], entry["pending_files"]
        assert [f["op"] for f in entry["pending_files"] if f.get("op")] == ["mkdir notes"]
        assert entry["pending"] >= 2  # (and the folder's mtime, an update of its own)
        assert files[0]["size"] == 3000 and files[0]["since"] > 0
        assert "injected: uploads fail" in entry["last_error"]
        text = status(mount, str(mount.path)).stdout
        assert "pending  notes/todo.txt  2.9 KiB  since " in text
        assert "pending  mkdir notes  since " in text
        assert "last error:" in text and "injected: uploads fail" in text
    finally:
        mount.emulator.clear_faults()
    mount.wait_uploaded(timeout=120)
    entry = status_json(mount)
    assert entry["pending"] == 0 and entry["pending_files"] == [] and entry["last_error"] is None
    assert "last error" not in status(mount).stdout


def test_status_and_umount_name_a_file_the_server_refuses(mount: MountedFs) -> None:
    refuse = [{"path": p, "status": 403, "code": "forbidden", "message": "injected: not this file"} for p in UPLOAD_PATHS]
    mount.emulator.set_faults(*refuse)
    try:
        (mount.path / "refused.txt").write_text("the server will not take this\n")
        entry = wait_for(lambda: (e := status_json(mount))["failed_files"] and e, 30, "a failed file in status")
        (failed,) = entry["failed_files"]
        assert failed["path"] == "refused.txt" and "injected: not this file" in failed["reason"]
        text = status(mount, str(mount.path)).stdout
        assert "FAILED   refused.txt: " in text and "1 failed" in text
        # umount does not wait for it forever, and does not call that a success.
        mount.proc.expected_exit = True
        res = subprocess.run(
            [sys.executable, "-m", "puterfs", "umount", str(mount.path)],
            env=mount.proc.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        mount.emulator.clear_faults()
    assert res.returncode == 1 and "Unmounted" not in res.stdout, res
    assert "refused.txt" in res.stderr and str(mount.cache_dir) in res.stderr
