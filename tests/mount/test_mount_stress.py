"""fio with verification and stress-ng filesystem stressors on the mount."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mount_testlib import MountedFs, local_tree, tree_diff

pytestmark = pytest.mark.slow


def _assert_mount_consistent(mount: MountedFs, rel: str) -> None:
    """Alive, listable everywhere, and (once uploaded) identical to the server."""
    assert mount.proc.alive()
    proc = subprocess.run(["find", str(mount.path / rel), "-xdev"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    mount.wait_uploaded(timeout=180)
    mounted = local_tree(mount.path / rel)
    on_server = mount.remote.tree(rel)
    assert on_server == mounted, "server differs from the mount:\n" + tree_diff(on_server, mounted)


def _fio(*args: str, timeout: float = 240) -> dict:
    proc = subprocess.run(
        ["fio", "--output-format=json", *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"fio failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # fio may print warnings before the JSON document
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    for job in report["jobs"]:
        assert job["error"] == 0, f"fio job {job['jobname']} error {job['error']}"
    return report


def test_fio_verify(mount: MountedFs) -> None:
    d = mount.path / "fio"
    d.mkdir()
    common = [f"--directory={d}", "--bs=4k", "--size=16M", "--verify=crc32c", "--direct=0", "--verify_fatal=1",
              "--verify_state_save=0"]
    # random mixed I/O, two jobs in parallel
    report = _fio("--name=v", "--rw=randrw", "--numjobs=2", *common)
    assert sum(j["write"]["io_bytes"] for j in report["jobs"]) > 0
    # a pure write pass verified by reading everything back
    _fio("--name=w", "--rw=randwrite", "--do_verify=1", *common)
    names = sorted(os.listdir(d))
    assert len(names) == 3, names  # v.0.0, v.1.0, w.0.0
    _assert_mount_consistent(mount, "fio")
    # verify the files once more after a remount, against the data fio wrote
    mount.remount()
    _fio("--name=w", "--rw=randwrite", "--verify_only", *common)


def _stress(tmp: Path, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["stress-ng", "--temp-path", str(tmp), "--metrics-brief", "--verify", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    print(out)  # the metrics, shown with the test's output when it fails
    assert proc.returncode == 0, f"stress-ng {' '.join(args)} -> {proc.returncode}\n{out[-4000:]}"
    bad = [line for line in out.splitlines() if " fail:" in line or "FAILED" in line or "error:" in line.lower()]
    assert not bad, "\n".join(bad)
    return out


def test_stress_ng_hdd(mount: MountedFs) -> None:
    tmp = mount.path / "stress-hdd"
    tmp.mkdir()
    _stress(tmp, "--hdd", "1", "--hdd-ops", "200", "--hdd-bytes", "4M", "--timeout", "30s")
    assert os.listdir(tmp) == [], "stress-ng left files behind"
    _assert_mount_consistent(mount, "stress-hdd")


def test_stress_ng_metadata(mount: MountedFs) -> None:
    tmp = mount.path / "stress-meta"
    tmp.mkdir()
    _stress(
        tmp,
        "--dir", "1", "--dir-ops", "60", "--dir-dirs", "64",
        "--rename", "1", "--rename-ops", "2000",
        "--dentry", "1", "--dentry-ops", "20", "--dentries", "200",
        "--timeout", "20s",
    )  # fmt: skip
    _stress(tmp, "--seek", "1", "--seek-ops", "2000", "--seek-size", "4M", "--timeout", "20s")
    assert os.listdir(tmp) == [], "stress-ng left files behind"
    _assert_mount_consistent(mount, "stress-meta")
