#!/usr/bin/env python3
"""pjdfstest against puterfs and against ``rclone mount --vfs-cache-mode writes`` of a local
directory, in one run: subtests passed per filesystem.

pjdfstest is not in the package registries and its code is not part of puterfs: this script
builds it at run time from a local mirror of github.com/pjd/pjdfstest (a bare git directory,
``--mirror`` or ``$PJDFSTEST_MIRROR``), with autoconf/automake and a C compiler. When the
mirror or a tool is missing it says so and exits 0 (skipped).

Each ``tests/<group>/<n>.t`` runs in a fresh directory of the filesystem under test, as root,
with a deadline per file; a file that times out counts its remaining subtests as failed.

Usage: ``python bench/pjdfstest.py [--mirror DIR] [--only puterfs,rclone,local] [--groups chmod,open]
[--per-file-timeout 180] [--json]``. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Emulator, Mount, wait  # noqa: E402  (bench/run.py: the emulator and mount helpers)

DEFAULT_MIRROR = "/work/.mirror/pjd+pjdfstest/repo"
TOOLS = ("git", "autoreconf", "make", "cc", "prove")


def skip(why: str) -> int:
    print(f"pjdfstest: skipped: {why}")
    return 0


def build(mirror: Path, into: Path) -> Path:
    """Check out the mirror's HEAD into `into` and build the pjdfstest binary there."""
    src = into / "pjdfstest"
    src.mkdir()
    archive = subprocess.run(["git", f"--git-dir={mirror}", "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
        subprocess.run(cmd, cwd=src, check=True, capture_output=True)
    return src


def run_file(test: Path, cwd: Path, timeout: float) -> tuple[int, int]:
    """(passed, planned) subtests of one .t file run in `cwd`."""
    try:
        out = subprocess.run(["sh", str(test)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                             errors="replace", start_new_session=True).stdout  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    plan = re.search(r"^1\.\.(\d+)", out, re.M)
    planned = int(plan.group(1)) if plan else 0
    passed = len(re.findall(r"^ok \d+", out, re.M))
    return passed, planned


def run_suite(src: Path, root: Path, groups: list[str] | None, timeout: float, label: str) -> dict[str, Any]:
    tests = sorted((src / "tests").glob("*/*.t"))
    if groups:
        tests = [t for t in tests if t.parent.name in groups]
    passed = planned = 0
    per_group: dict[str, list[int]] = {}
    started = time.monotonic()
    for i, t in enumerate(tests):
        work = root / f"t{i}"
        work.mkdir()
        p, n = run_file(t, work, timeout)
        passed += p
        planned += n
        g = per_group.setdefault(t.parent.name, [0, 0])
        g[0] += p
        g[1] += n
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
        print(f"  {label}: {t.parent.name}/{t.name}: {p}/{n}", flush=True)
    return {"passed": passed, "planned": planned, "files": len(tests), "seconds": round(time.monotonic() - started),
            "groups": per_group}


class RcloneMount:
    def __init__(self, workdir: Path) -> None:
        self.backing = workdir / "rclone-backing"
        self.path = workdir / "rclone-mnt"
        self.backing.mkdir()
        self.path.mkdir()
        self.logf = open(workdir / "rclone.log", "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, RCLONE_CONFIG=str(workdir / "rclone.conf"))
        self.proc = subprocess.Popen(
            ["rclone", "mount", str(self.backing), str(self.path), "--vfs-cache-mode", "writes", "--allow-other",
             "--cache-dir", str(workdir / "rclone-cache")],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        wait(lambda: os.path.ismount(self.path) or self.proc.poll() is not None, 60, "rclone mount")
        if self.proc.poll() is not None:
            raise RuntimeError(f"rclone mount exited with {self.proc.returncode}; see {self.logf.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        self.logf.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", default=os.environ.get("PJDFSTEST_MIRROR", DEFAULT_MIRROR))
    ap.add_argument("--only", default="puterfs,rclone", help="comma list of puterfs, rclone, local")
    ap.add_argument("--groups", help="comma list of test groups (default: all)")
    ap.add_argument("--per-file-timeout", type=float, default=180.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    mirror = Path(args.mirror)
    if not (mirror / "HEAD").exists():
        return skip(f"no pjdfstest mirror at {mirror} (fetch github:pjd/pjdfstest, or pass --mirror)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    targets = [t.strip() for t in args.only.split(",") if t.strip()]
    if "rclone" in targets and shutil.which("rclone") is None:
        missing.append("rclone")
    if missing:
        return skip(f"missing tools: {', '.join(missing)} (apt-get install autoconf automake gcc make perl rclone)")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return skip("needs root and /dev/fuse")
    groups = [g.strip() for g in args.groups.split(",")] if args.groups else None

    workdir = Path(tempfile.mkdtemp(prefix="puterfs-pjdfstest-"))
    os.chmod(workdir, 0o755)  # pjdfstest switches to other uids: they must reach the mounts
    results: dict[str, Any] = {}
    try:
        try:
            src = build(mirror, workdir)
        except subprocess.CalledProcessError as exc:
            return skip(f"building pjdfstest failed: {' '.join(exc.cmd)}: {exc.stderr.decode(errors='replace')[-400:]}")
        for target in targets:
            print(f"pjdfstest on {target}...", flush=True)
            if target == "puterfs":
                emu = Emulator(workdir)
                try:
                    m = Mount(workdir, emu, "puterfs-mnt", "--allow-other")
                    try:
                        root = m.path / "pjd"
                        root.mkdir()
                        results["puterfs"] = run_suite(src, root, groups, args.per_file_timeout, "puterfs")
                    finally:
                        m.stop()
                finally:
                    emu.stop()
            elif target == "rclone":
                r = RcloneMount(workdir)
                try:
                    results["rclone"] = run_suite(src, r.path, groups, args.per_file_timeout, "rclone")
                finally:
                    r.stop()
            elif target == "local":
                root = workdir / "local"
                root.mkdir()
                results["local"] = run_suite(src, root, groups, args.per_file_timeout, "local")
            else:
                print(f"unknown target {target!r}", file=sys.stderr)
                return 2
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
    print()
    for name, r in results.items():
        print(f"{name:8} {r['passed']:5} of {r['planned']:5} subtests passed ({r['files']} files, {r['seconds']} s)")
    if "puterfs" in results and "rclone" in results and results["rclone"]["passed"]:
        print(f"puterfs / rclone: {results['puterfs']['passed'] / results['rclone']['passed']:.2f}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
