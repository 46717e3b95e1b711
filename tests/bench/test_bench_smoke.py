"""`bench/run.py --smoke` runs every workload on every target once, with tiny sizes.

The benchmark's figures are not asserted (speed is not a unit-test property); what this
proves is that the benchmark itself works: it starts its emulator, the puterfs mount and
(when installed) rclone mount, each workload ran and verified its data on each target, and
the JSON it writes has every workload with its figures.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or os.geteuid() != 0,
        reason="needs /dev/fuse, fusermount3 and root",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import run as bench_run  # noqa: E402


def test_bench_smoke_runs_every_workload(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=280, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    (tier,) = data["tiers"]
    assert tier["tier"] == "free"
    targets = ["puterfs", "local"] + (["rclone"] if shutil.which("rclone") else [])
    assert sorted(tier["targets"]) == sorted(targets)
    assert set(tier["workloads"]) == set(bench_run.WORKLOADS)
    for name, per_target in tier["workloads"].items():
        expected = ["puterfs"] if name == ".ai/chat" else targets
        assert sorted(per_target) == sorted(expected), name
        for target, figures in per_target.items():
            assert "error" not in figures, (name, target, figures.get("error"))
            assert figures and all(math.isfinite(v) for v in figures.values()), (name, target, figures)
        p = per_target["puterfs"]
        assert p["daemon peak RSS MiB"] > 0 and "daemon cpu s" in p and "requests" in p, name
    w = tier["workloads"]
    assert w["tar x"]["puterfs"]["on server s"] >= w["tar x"]["puterfs"]["s"]
    assert w["random 4 KiB reads"]["puterfs"]["bytes downloaded"] >= w["random 4 KiB reads"]["puterfs"]["bytes read"]
    assert w["ls -lR"]["puterfs"]["warm requests"] <= w["ls -lR"]["puterfs"]["cold requests"]
    # the printed table has a verdict for each target
    assert "target" in proc.stdout and ("met" in proc.stdout)
