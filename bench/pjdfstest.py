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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Emulator, Mount, _stop_mount_process, wait  # noqa: E402  (bench/run.py: the emulator and mount helpers)

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


def run_file(test: Path, cwd: Path, timeout: float, save: Path | None = None) -> tuple[int, int]:
    """(passed, planned) subtests of one .t file run in `cwd`; its TAP output goes to `save`."""
    try:
        out = subprocess.run(["sh", str(test)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                             errors="replace", start_new_session=True).stdout  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += "\n# timed out\n"
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(out)
    plan = re.search(r"^1\.\.(\d+)", out, re.M)
    planned = int(plan.group(1)) if plan else 0
    passed = len(re.findall(r"^ok \d+", out, re.M))
    return passed, planned


def run_suite(src: Path, root: Path, groups: list[str] | None, timeout: float, label: str,
              outdir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    tests = sorted((src / "tests").glob("*/*.t"))
    if groups:
        tests = [t for t in tests if t.parent.name in groups]
    passed = planned = 0
    per_group: dict[str, list[int]] = {}
    started = time.monotonic()
    for i, t in enumerate(tests):
        work = root / f"t{i}"
        work.mkdir()
        save = outdir / label / t.parent.name / f"{t.stem}.tap" if outdir else None
        p, n = run_file(t, work, timeout, save)
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


# bench/constrained_fs.py targets: the flags each passes (see that file)
CONSTRAINED = {
    "constrained": [],  # exactly puterfs's design refusals: the ceiling for puterfs
    "owners": ["--owners"],  # what-if: entries owned by their creators, chown passed through
    "passthrough": ["--owners", "--special"],  # what-if: FIFOs/sockets/devices too (hard links still refused)
}


class ConstrainedMount:
    """bench/constrained_fs.py over a local directory: passthrough with puterfs's design refusals
    (or fewer of them: CONSTRAINED)."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.backing = workdir / f"{name}-backing"
        self.path = workdir / f"{name}-mnt"
        self.backing.mkdir()
        self.path.mkdir()
        self.logf = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "constrained_fs.py"), str(self.backing),
             str(self.path), "--allow-other", *CONSTRAINED[name]],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait(lambda: os.path.ismount(self.path) or self.proc.poll() is not None, 60, "constrained mount")
        if self.proc.poll() is not None:
            raise RuntimeError(f"constrained_fs exited with {self.proc.returncode}; see {self.logf.name}")

    def stop(self) -> None:
        _stop_mount_process(self.proc, self.path, grace=30)
        self.logf.close()


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
        _stop_mount_process(self.proc, self.path, grace=60)
        self.logf.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", default=os.environ.get("PJDFSTEST_MIRROR", DEFAULT_MIRROR))
    ap.add_argument("--only", default="puterfs,rclone", help="comma list of puterfs, rclone, local, " + ", ".join(CONSTRAINED))
    ap.add_argument("--tier", default="free", help="the emulator's rate-limit tier for the puterfs target")
    ap.add_argument("--outdir", type=Path, help="keep each file's TAP output in OUTDIR/<target>/<group>/<n>.tap")
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
                emu = Emulator(workdir, args.tier)
                try:
                    m = Mount(workdir, emu, "puterfs-mnt", "--allow-other")
                    try:
                        root = m.path / "pjd"
                        root.mkdir()
                        results["puterfs"] = run_suite(src, root, groups, args.per_file_timeout, "puterfs", args.outdir)
                    finally:
                        m.stop()
                finally:
                    emu.stop()
            elif target == "rclone":
                r = RcloneMount(workdir)
                try:
                    results["rclone"] = run_suite(src, r.path, groups, args.per_file_timeout, "rclone", args.outdir)
                finally:
                    r.stop()
            elif target in CONSTRAINED:
                c = ConstrainedMount(workdir, target)
                try:
                    results[target] = run_suite(src, c.path, groups, args.per_file_timeout, target, args.outdir)
                finally:
                    c.stop()
            elif target == "local":
                root = workdir / "local"
                root.mkdir()
                results["local"] = run_suite(src, root, groups, args.per_file_timeout, "local", args.outdir)
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
        print(f"{name:11} {r['passed']:5} of {r['planned']:5} subtests passed ({r['files']} files, {r['seconds']} s)")
    if results:
        names = list(results)
        print()
        print(f"{'group':12}" + "".join(f"{n:>16}" for n in names))
        for g in sorted({g for r in results.values() for g in r["groups"]}):
            cells = [results[n]["groups"].get(g) for n in names]
            print(f"{g:12}" + "".join(f"{(f'{c[0]}/{c[1]}' if c else '-'):>16}" for c in cells))
    if "puterfs" in results and "rclone" in results and results["rclone"]["passed"]:
        print(f"puterfs / rclone: {results['puterfs']['passed'] / results['rclone']['passed']:.2f}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
