"""How long `puterfs --version` and `puterfs status` take to start (issue 11: < 0.15 s).

    .venv/bin/python bench/startup.py [--runs 15] [--json]

Runs each command RUNS times in a fresh process (the console script next to this Python,
else `python -m puterfs`), with HOME and the XDG dirs in a temporary directory holding one
mount state file, and prints the median and the slowest wall-clock time. Also lists the
modules `import puterfs.cli` and building its parser load that they should not need (httpx, trio, pyfuse3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.15
HEAVY = ("httpx", "trio", "pyfuse3", "anyio", "starlette", "uvicorn", "PIL")


def command() -> list[str]:
    script = Path(sys.executable).parent / "puterfs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "puterfs"]


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PUTER_", "XDG_"))}
        env.update(HOME=tmp, XDG_CONFIG_HOME=f"{tmp}/config", XDG_CACHE_HOME=f"{tmp}/cache",
                   XDG_DATA_HOME=f"{tmp}/data", XDG_RUNTIME_DIR=f"{tmp}/run")  # fmt: skip
        run = home / "run" / "puterfs"
        run.mkdir(parents=True)
        # one (stale) mount, so that status has a state file to read and report
        (run / "puter-000000000000.json").write_text(json.dumps({
            "pid": 999999, "mountpoint": f"{tmp}/puter", "api_url": "http://127.0.0.1:4100", "account": "puter",
            "remote_root": "/puter", "cache_dir": f"{tmp}/cache", "pending": 1,
            "pending_files": [{"path": "a.txt", "size": 1, "since": time.time()}],
        }))  # fmt: skip
        base = command()
        results = {}
        # the interpreter alone, measured alongside: on a loaded machine everything is slower
        baseline = timed([sys.executable, "-S", "-c", "pass"], env, args.runs)
        for name, extra in (("--version", ["--version"]), ("status", ["status"])):
            times = timed(base + extra, env, args.runs)
            results[name] = {"median_s": statistics.median(times), "max_s": max(times), "runs": len(times)}
        results["python -S -c pass"] = {"median_s": statistics.median(baseline), "max_s": max(baseline), "runs": len(baseline)}
        probe = (
            "import sys, puterfs.cli as c\n"
            "for cmd in ('status', None):\n"
            "    c.build_parser(cmd)\n"
            "print(' '.join(m for m in sys.modules))"
        )
        loaded = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.split()
        heavy = sorted({m.split(".")[0] for m in loaded if m.split(".")[0] in HEAVY})
    if args.json:
        print(json.dumps({"commands": results, "heavy_imports": heavy, "target_s": TARGET}))
    else:
        for name, r in results.items():
            if name.startswith("python"):
                print(f"{name} (interpreter start, for scale) median {r['median_s'] * 1000:6.1f} ms")
                continue
            verdict = "ok" if r["median_s"] < TARGET else f"OVER the {TARGET} s target"
            print(f"puterfs {name:9s} median {r['median_s'] * 1000:6.1f} ms  max {r['max_s'] * 1000:6.1f} ms  ({r['runs']} runs) {verdict}")
        print(f"heavy modules imported by puterfs.cli and its parser: {', '.join(heavy) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
