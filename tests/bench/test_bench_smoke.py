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
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(out), "--markdown", str(md)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
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
        assert p["http 429"] >= 0, name  # counted (the table judges it; the free tier's target is 0)
    w = tier["workloads"]
    # every namespace workload waited until the server held the tree (and checked it there)
    for name, prefix in (("tar x", ""), ("git clone + status", ""), ("cp -r / rm -rf", "cp -r "),
                         ("cp -r / rm -rf", "rm -rf "), ("editor saves", ""), ("mixed 4-process", "")):  # fmt: skip
        assert w[name]["puterfs"][f"{prefix}on server s"] >= w[name]["puterfs"][f"{prefix}s"], name
    assert w["random 4 KiB reads"]["puterfs"]["bytes downloaded"] >= w["random 4 KiB reads"]["puterfs"]["bytes read"]
    assert w["ls -lR"]["puterfs"]["warm requests"] <= w["ls -lR"]["puterfs"]["cold requests"]
    assert w["sequential"]["puterfs"]["cold read requests"] >= 1
    # the request log by route covers each whole workload (ls -lR clears it between cold and warm)
    assert set(tier["requests_by_route"]) == set(bench_run.WORKLOADS)
    assert any(r in bench_run.LISTING_ROUTES for r in tier["requests_by_route"]["ls -lR"])
    assert tier["429 per pass"] == [tier["429 per pass"][0]] and data["seconds"] > 0
    # the printed table has a verdict for each target of issue 13
    for row in ("tar x: HTTP requests", "rm -rf: on the server after", "429s: tar x, git, cp, rm, saves, mixed",
                "cold sequential read", "ls -lR 20 entries, warm", "daemon peak RSS"):  # fmt: skip
        assert row in proc.stdout, row
    assert "met" in proc.stdout
    # the Markdown table (for docs/performance.md) has the same rows, and --from-json prints them again
    table = md.read_text()
    assert "| tar x: HTTP requests | " in table and "| 429s: tar x, git, cp, rm, saves, mixed | " in table
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--from-json", str(out)],
                           capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert "tar x: HTTP requests" in again.stdout
