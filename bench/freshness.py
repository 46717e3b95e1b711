#!/usr/bin/env python3
"""puterfs freshness benchmark: how fast a change made elsewhere shows in a mount, and what an
idle mount costs the server.

Starts its own emulator and mounts (see bench/run.py), then:

- makes changes directly on the server (another machine, the web desktop: create a file,
  mkdir, rename, delete; ``--rounds`` of each) and measures, for a mount on change events and
  for one on the polling fallback (a full-api-access token, which the socket refuses), the time
  from the server's answer to the change being visible through the mount; prints p50/p95;
- counts the HTTP requests one idle mount with working change events sends in ``--idle``
  seconds (from the emulator's request log), as requests per minute.

Usage: ``python bench/freshness.py [--rounds 10] [--idle 60] [--tier free] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Emulator, Mount, wait  # noqa: E402

log = logging.getLogger("bench.freshness")


def _mode(m: Mount) -> str | None:
    st = m.state()
    return ((st or {}).get("freshness") or {}).get("mode")


def _visible(pred: Any, timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while not pred():
        if time.perf_counter() - start > timeout:
            raise RuntimeError("change not visible")
        time.sleep(0.001)
    return time.perf_counter() - start


def latencies(emu: Emulator, m: Mount, home: str, tag: str, rounds: int) -> list[float]:
    out: list[float] = []
    base = f"{home}/{tag}"
    emu.http.post("/mkdir", json={"path": base}).raise_for_status()
    root = m.path / tag
    wait(lambda: root.is_dir(), 60, f"{tag} in the mount")
    os.listdir(root)
    for i in range(rounds):
        emu.upload_many(base, {f"f{i}.txt": b"x" * 100})
        out.append(_visible(lambda i=i: (root / f"f{i}.txt").exists()))
        emu.http.post("/mkdir", json={"path": f"{base}/d{i}"}).raise_for_status()
        out.append(_visible(lambda i=i: (root / f"d{i}").is_dir()))
        emu.http.post("/rename", json={"path": f"{base}/f{i}.txt", "new_name": f"g{i}.txt"}).raise_for_status()
        out.append(_visible(lambda i=i: (root / f"g{i}.txt").exists() and not (root / f"f{i}.txt").exists()))
        emu.http.post("/delete", json={"path": f"{base}/g{i}.txt"}).raise_for_status()
        out.append(_visible(lambda i=i: not (root / f"g{i}.txt").exists()))
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="rounds of create/mkdir/rename/delete per mount")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idleness to count requests over")
    ap.add_argument("--tier", default="free", help="the emulator's rate-limit tier (default free, as a new account)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    workdir = Path(tempfile.mkdtemp(prefix="puterfs-bench-fresh-"))
    results: dict[str, Any] = {}
    emu = Emulator(workdir, args.tier)
    home = f"/{emu.username}"
    try:
        access = emu.http.post("/auth/create-access-token", json={"permissions": ["full-api-access"]}).json()["token"]
        access_file = workdir / "access-token"
        fd = os.open(access_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(access + "\n")
        ev = Mount(workdir, emu, "events")
        polled = Mount(workdir, emu, "polling", "--token-file", str(access_file))
        try:
            wait(lambda: _mode(ev) == "events", 60, "change events")
            wait(lambda: _mode(polled) == "polling" and "token" in json.dumps(polled.state()), 60, "the refusal")
            for name, m in (("events", ev), ("polling (full-api-access token)", polled)):
                log.info("change visibility, %s (%d rounds)...", name, args.rounds)
                lat = latencies(emu, m, home, name.split()[0], args.rounds)
                results[name] = {"p50 ms": pct(lat, 50) * 1000, "p95 ms": pct(lat, 95) * 1000,
                                 "max ms": max(lat) * 1000, "mean ms": statistics.mean(lat) * 1000, "n": len(lat)}
            polled.stop()
            log.info("idle requests over %.0f s (one mount on change events)...", args.idle)
            os.listdir(ev.path)
            time.sleep(2)
            emu.clear_log()
            time.sleep(args.idle)
            sent = emu.log()
            results["idle requests / min (events)"] = len(sent) * 60 / args.idle
            results["idle requests (paths)"] = sorted({r["path"] for r in sent})
        finally:
            ev.stop()
            polled.stop()
    finally:
        emu.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)

    print("\nputerfs freshness (changes made on the server, seen through a mount)\n")
    print(f"{'':34} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} {'n':>5}")
    for name in ("events", "polling (full-api-access token)"):
        r = results[name]
        print(f"  {name:32} {r['p50 ms']:9.1f} {r['p95 ms']:9.1f} {r['max ms']:9.1f} {r['n']:5d}")
    print(f"\n  {'idle requests / min (events)':32} {results['idle requests / min (events)']:9.2f}"
          f"  {results['idle requests (paths)']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
