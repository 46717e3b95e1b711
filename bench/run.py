#!/usr/bin/env python3
"""puterfs benchmark: the mount measured side by side with a local directory, in one run.

Starts its own emulator (``python -m puterfs emulator``) on a free loopback port and its
own mount (``python -m puterfs mount --foreground``), then prints:

- sequential write (to close, and until fsync returns: the data is on the server) and
  read throughput, mount vs local directory, and their ratio;
- ``ls -l`` of a 1000-file directory, cold (fresh cache) vs warm, with the number of HTTP
  requests each caused (from the emulator's request log);
- ``stat`` latency, mount vs local;
- small-file creation rate, mount vs local, and how long the uploads took;
- the daemon's peak RSS while copying a large file, against the file's size.

Usage: ``python bench/run.py [--seq-mib 64] [--big-mib 96] [--files 1000] [--json]``.
It is not part of pytest; it needs root (or fuse permissions) and /dev/fuse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import httpx

from puterfs import config

log = logging.getLogger("bench")

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


class Emulator:
    """The emulator as a subprocess, plus its loopback admin routes (request log)."""

    def __init__(self, workdir: Path) -> None:
        self.data = workdir / "emulator"
        self.data.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logf = open(workdir / "emulator.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "puterfs", "emulator", "--port", str(self.port), "--data", str(self.data)],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.token_file = self.data / "token"
        wait(self._ready, 60, "the emulator")
        self.token = self.token_file.read_text().strip()
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)
        self.username = self.http.get("/whoami").json()["username"]

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {self.proc.returncode}")
        if not self.token_file.exists():
            return False
        try:
            return httpx.get(f"{self.url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def clear_log(self) -> None:
        self.http.delete("/_emulator/log")

    def log(self) -> list[dict[str, Any]]:
        return [e for e in self.http.get("/_emulator/log").json() if not e["path"].startswith("/_emulator/")]

    def upload_many(self, parent: str, files: dict[str, bytes]) -> None:
        """Create files directly on the server, 50 per /batch request."""
        names = list(files)
        for start in range(0, len(names), 50):
            chunk = names[start : start + 50]
            # puter.js order: every fileinfo, then every write op, then every file
            infos = [json.dumps({"name": n, "type": "application/octet-stream", "size": len(files[n])}) for n in chunk]
            ops = [
                json.dumps({"op": "write", "path": parent, "name": n, "item_upload_id": i, "overwrite": True,
                            "dedupe_name": False, "create_missing_parents": True})  # fmt: skip
                for i, n in enumerate(chunk)
            ]
            upload = [("file", (n, files[n], "application/octet-stream")) for n in chunk]
            resp = self.http.post("/batch", data={"fileinfo": infos, "operation": ops}, files=upload)
            resp.raise_for_status()
            if resp.status_code != 200:
                raise RuntimeError(f"/batch partially failed: {resp.text[:300]}")

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.logf.close()


class Mount:
    def __init__(self, workdir: Path, emu: Emulator, name: str, *extra: str) -> None:
        self.path = workdir / name
        self.path.mkdir(exist_ok=True)
        self.cache = workdir / f"{name}-cache"
        self.xdg = workdir / f"{name}-xdg"
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(self.xdg / "run"), XDG_CONFIG_HOME=str(self.xdg / "config"),
                        XDG_CACHE_HOME=str(self.xdg / "cache"), XDG_DATA_HOME=str(self.xdg / "data"))  # fmt: skip
        self.env.pop("PUTER_TOKEN", None)
        for key in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
            Path(self.env[key]).mkdir(parents=True, exist_ok=True)
        self.logf = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "puterfs", "mount", str(self.path), "--foreground",
             "--api-url", emu.url, "--web-url", emu.url, "--token-file", str(emu.token_file),
             "--cache-dir", str(self.cache), *extra],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT, env=self.env,
        )  # fmt: skip
        wait(self._ready, 60, "the mount")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"mount exited with {self.proc.returncode}; see {self.logf.name}")
        return os.path.ismount(self.path)

    def state(self) -> dict[str, Any] | None:
        with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": self.env["XDG_RUNTIME_DIR"]}):
            state_file = config.mount_state_file(self.path)
        try:
            return json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None

    def wait_uploaded(self, timeout: float = 600, settle: float = 1.0) -> float:
        """Wait until nothing is pending; returns the perf_counter time the queue became empty.

        The state file is rewritten at most a few times per second, so the zero must hold
        for ``settle`` seconds; the returned time excludes that wait.
        """
        deadline, zero_since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            st = self.state()
            now = time.perf_counter()
            if st and st.get("pending") == 0 and st.get("uploading") == 0:
                zero_since = zero_since or now
                if now - zero_since >= settle:
                    return zero_since
            else:
                zero_since = None
            time.sleep(0.02)
        raise RuntimeError("uploads did not finish")

    def hwm_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        self.logf.close()


# --------------------------------------------------------------------------------------------
# measurements


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_file(path: Path, size: int, block: bytes, sync: bool) -> None:
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def read_file(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            n += len(chunk)
    return n


def bench_sequential(m: Mount, local: Path, size: int) -> dict[str, Any]:
    mnt = m.path
    block = os.urandom(MiB)
    out: dict[str, Any] = {}
    for label, sync in (("write (to close)", False), ("write + fsync (on the server)", True)):
        t_local = timed(lambda sync=sync: write_file(local / "seq.bin", size, block, sync))
        m.wait_uploaded()
        t_mount = timed(lambda sync=sync: write_file(mnt / "seq.bin", size, block, sync))
        out[label] = (size / MiB / t_mount, size / MiB / t_local)
    # end to end without fsync: write, close, and the write-back delay plus the upload
    m.wait_uploaded()
    t0 = time.perf_counter()
    write_file(mnt / "seq.bin", size, block, False)
    t_mount = m.wait_uploaded() - t0
    out["write + write-back upload"] = (size / MiB / t_mount, out["write + fsync (on the server)"][1])
    t_local = timed(lambda: read_file(local / "seq.bin"))
    t_mount = timed(lambda: read_file(mnt / "seq.bin"))
    out["read (cached)"] = (size / MiB / t_mount, size / MiB / t_local)
    return out


def bench_listing(workdir: Path, emu: Emulator, n: int) -> dict[str, Any]:
    emu.upload_many(f"/{emu.username}/many", {f"file{i:04d}.txt": f"{i}\n".encode() for i in range(n)})
    m = Mount(workdir, emu, "mnt-list")
    try:
        results = {}
        for label in ("cold", "warm"):
            emu.clear_log()
            t = timed(lambda: subprocess.run(["ls", "-l", str(m.path / "many")], check=True, capture_output=True))
            results[label] = (t, len(emu.log()))
        return results
    finally:
        m.stop()


def bench_stat(mnt: Path, local: Path, rounds: int = 2000) -> dict[str, float]:
    for root in (mnt, local):
        (root / "stat.txt").write_bytes(b"x")
    out = {}
    for label, root in (("mount", mnt), ("local", local)):
        p = str(root / "stat.txt")
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.stat(p)
            samples.append(time.perf_counter() - t0)
        out[label] = statistics.median(samples) * 1e6
    return out


def bench_small_files(m: Mount, local: Path, n: int) -> dict[str, float]:
    payload = os.urandom(1024)
    out = {}
    for label, root in (("local", local / "small"), ("mount", m.path / "small")):
        root.mkdir()

        def create(root: Path = root) -> None:
            for i in range(n):
                (root / f"f{i:04d}").write_bytes(payload)

        out[label] = n / timed(create)
    t0 = time.perf_counter()
    out["uploaded after (s)"] = m.wait_uploaded() - t0
    return out


def bench_rss(m: Mount, local: Path, size: int) -> dict[str, float]:
    src = local / "big.bin"
    write_file(src, size, os.urandom(MiB), False)
    m.wait_uploaded()
    before = m.hwm_kib()
    t0 = time.perf_counter()
    shutil.copyfile(src, m.path / "big.bin")
    t = m.wait_uploaded() - t0
    after = m.hwm_kib()
    return {"file MiB": size / MiB, "peak RSS before MiB": before / 1024, "peak RSS after MiB": after / 1024,
            "growth / file size": (after - before) * 1024 / size, "copy+upload MiB/s": size / MiB / t}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-mib", type=int, default=64, help="size of the sequential file (MiB)")
    ap.add_argument("--big-mib", type=int, default=96, help="size of the large copy for the RSS check (MiB)")
    ap.add_argument("--files", type=int, default=1000, help="entries in the listed directory")
    ap.add_argument("--small", type=int, default=200, help="small files to create")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    workdir = Path(tempfile.mkdtemp(prefix="puterfs-bench-"))
    local = workdir / "local"
    local.mkdir()
    results: dict[str, Any] = {}
    emu = Emulator(workdir)
    try:
        m = Mount(workdir, emu, "mnt")
        try:
            log.info("sequential I/O (%d MiB)...", args.seq_mib)
            results["sequential MB/s (mount, local)"] = bench_sequential(m, local, args.seq_mib * MiB)
            log.info("stat latency...")
            results["stat median µs"] = bench_stat(m.path, local)
            log.info("small files (%d)...", args.small)
            results["small files / s"] = bench_small_files(m, local, args.small)
            log.info("large copy (%d MiB), daemon peak RSS...", args.big_mib)
            results["large copy"] = bench_rss(m, local, args.big_mib * MiB)
        finally:
            m.stop()
        log.info("ls -l of %d files, cold and warm...", args.files)
        results["ls -l (seconds, requests)"] = bench_listing(workdir, emu, args.files)
    finally:
        emu.stop()
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)
        else:
            log.info("work directory kept: %s", workdir)

    report(results)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


def report(r: dict[str, Any]) -> None:
    print("\nputerfs benchmark (mount vs local directory, same data, same run)\n")
    print(f"{'sequential':34} {'mount MB/s':>12} {'local MB/s':>12} {'ratio':>8}")
    for label, (mnt, loc) in r["sequential MB/s (mount, local)"].items():
        print(f"  {label:32} {mnt:12.1f} {loc:12.1f} {mnt / loc:8.3f}")
    st = r["stat median µs"]
    print(f"\n{'stat (median)':34} {st['mount']:10.1f}µs {st['local']:10.1f}µs {st['local'] / st['mount']:8.3f}")
    sf = r["small files / s"]
    print(f"{'create 1 KiB files':34} {sf['mount']:10.0f}/s {sf['local']:10.0f}/s {sf['mount'] / sf['local']:8.3f}")
    print(f"  {'uploads done after':32} {sf['uploaded after (s)']:11.2f}s")
    ls = r["ls -l (seconds, requests)"]
    print(f"\n{'ls -l':34} {'seconds':>12} {'requests':>12}")
    for label, (t, n) in ls.items():
        print(f"  {label:32} {t:12.3f} {n:12d}")
    print(f"  {'cold / warm time':32} {ls['cold'][0] / max(ls['warm'][0], 1e-9):12.1f}")
    big = r["large copy"]
    print("\nlarge copy")
    for k, v in big.items():
        print(f"  {k:32} {v:12.2f}")


if __name__ == "__main__":
    sys.exit(main())
