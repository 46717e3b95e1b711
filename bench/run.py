#!/usr/bin/env python3
"""puterfs benchmark: puterfs, rclone mount and the local disk side by side, in one run.

For each tier (``--tier free``, the strict emulator's default limits; ``--tier unlimited``,
limits off; ``--tier both``, the default) it starts its own emulator (``python -m puterfs
emulator``) on a free loopback port, a puterfs mount against it (``python -m puterfs mount
--foreground``), an ``rclone mount --vfs-cache-mode writes`` of a local directory (the
ceiling of a caching FUSE mount; skipped with a note when rclone is missing) and a plain
local directory. Every workload runs ``--repeat`` times (default 3) interleaved across the
targets (puterfs, rclone, local, puterfs, ...) and the median is reported. Each workload
checks its result byte for byte or by hash, so a fast wrong answer cannot win.

Workloads (issue 13): ``tar x`` of 1,000 small files (until it returns, and until the
mount's state file says nothing is pending, with the HTTP requests and 429s from the
emulator's request log); ``git clone`` of a 300-file local repository + ``git status``;
``cp -r`` and ``rm -rf`` of 1,000 files; 50 editor-style saves (write a temp file, fsync,
rename over); 100 appends each followed by ``sync``; a 4-process mixed namespace and data
workload (2,000 operations, in the manner of fsstress); a sequential write and a cold read
of a large file (``--big-mib``) against ``PuterClient.fs_write``/``fs_read`` of it, each timed
write and read starting from a clean page cache on every target (``settle_disk``); 2,000
random 4 KiB reads of an uncached file (bytes downloaded vs bytes read); cold and warm
``ls -lR`` of 1,000 entries (request counts); ``.ai/chat`` time to first byte against a
direct streaming ``ai_chat``; and the daemon's peak RSS and CPU seconds per workload (from
/proc of the daemon).

It prints a table of figures and ratios with each issue-13 target beside it (met / not met)
and writes JSON with ``--json PATH``. ``--smoke`` runs every workload once with tiny sizes
(the test suite does that). Needs root (or fuse permissions) and /dev/fuse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import mmap
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import httpx

from puterfs import config
from puterfs.emulator.testing import local_http

log = logging.getLogger("bench")

MiB = 1024 * 1024
TARGETS = ("puterfs", "rclone", "local")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def route(entry: dict[str, Any]) -> str:
    return f"{entry['method']} {entry['path']}"


LISTING_ROUTES = ("POST /readdir", "GET /fs/readdir", "POST /fs/readdir")


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

    def __init__(self, workdir: Path, tier: str) -> None:
        self.data = workdir / "emulator"
        self.data.mkdir()
        self.port = free_port()
        # by name, as a real server wants it (an address as Host gets 404); *.localhost reaches
        # 127.0.0.1 by itself (puterfs's client; local_http here)
        self.url = f"http://api.puter.localhost:{self.port}"
        self.web_url = f"http://puter.localhost:{self.port}"
        self.logf = open(workdir / "emulator.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "puterfs", "emulator", "--port", str(self.port), "--data", str(self.data),
             "--tier", tier, "--no-print-token"],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.token_file = self.data / "token"
        wait(self._ready, 60, "the emulator")
        self.token = self.token_file.read_text().strip()
        secret = (self.data / "admin-secret").read_text().strip()
        self.http = local_http.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}", "X-Emulator-Secret": secret},
            timeout=300,
        )
        self.username = self._send("GET", "/whoami").json()["username"]
        self.dropped_requests = self.dropped_429 = 0
        self.dropped_routes: Counter[str] = Counter()

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {self.proc.returncode}")
        if not self.token_file.exists():
            return False
        try:
            return local_http.get(f"{self.url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """One request of the bench's own set-up; a 429 of the free tier waits its window."""
        for _ in range(200):
            resp = self.http.request(method, url, **kw)
            if resp.status_code != 429:
                resp.raise_for_status()
                return resp
            time.sleep(min(float(resp.headers.get("Retry-After") or 1), 30))
        raise RuntimeError(f"{url}: still 429 after many waits")

    def clear_log(self) -> None:
        """Empty the request log; what it held is added to ``dropped_requests``/``dropped_429``
        (so a workload that clears the log midway still has all its requests counted)."""
        entries = self.log()
        self.dropped_requests += len(entries)
        self.dropped_429 += sum(1 for e in entries if e.get("status") == 429)
        self.dropped_routes.update(route(e) for e in entries)
        self.http.delete("/_emulator/log")

    def log(self) -> list[dict[str, Any]]:
        return [e for e in self.http.get("/_emulator/log").json() if not e["path"].startswith("/_emulator/")]

    def tree(self, path: str) -> dict[str, str] | None:
        """What the server holds below ``path`` ({relative path: "dir" | sha256}), from the
        emulator's store (an admin route: no rate limit, not in the request log); None when
        ``path`` does not exist."""
        resp = self.http.get("/_emulator/tree", params={"path": path})
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()["tree"]

    def new_user(self) -> tuple[str, str]:
        """A second signed-up, confirmed account on this emulator (its own rate-limit windows)."""
        resp = self.http.post("/_emulator/users", json={"temp": False})
        resp.raise_for_status()
        return resp.json()["username"], resp.json()["token"]

    def exists(self, path: str) -> bool:
        return self.tree(path) is not None

    def upload_many(self, parent: str, files: dict[str, bytes]) -> None:
        """Create files directly on the server (not through a mount), 50 per /batch request."""
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
            resp = self._send("POST", "/batch", data={"fileinfo": infos, "operation": ops}, files=upload)
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
    """A puterfs daemon (``--foreground``, so its pid is the daemon's own)."""

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
             "--api-url", emu.url, "--web-url", emu.web_url, "--token-file", str(emu.token_file),
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

    def wait_uploaded(self, timeout: float = 900, settle: float = 1.0) -> float:
        """Wait until nothing is pending; returns the perf_counter time the queue became empty.

        The state file is rewritten at most a few times per second, so the zero must hold
        for ``settle`` seconds; the returned time excludes that wait.
        """
        deadline, zero_since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            st = self.state()
            now = time.perf_counter()
            err = str((st or {}).get("last_error") or "")
            if "request budget" in err and "-sustained" in err:
                # the account's hourly budget (fs:mutate-sustained) is spent: waiting would
                # take up to an hour; the pass reports it as this workload's failure
                raise RuntimeError(f"the mount ran out of the tier's request budget: {err}")
            if st and st.get("pending") == 0 and st.get("uploading", 0) == 0:
                zero_since = zero_since or now
                if now - zero_since >= settle:
                    return zero_since
            else:
                zero_since = None
            time.sleep(0.02)
        raise RuntimeError("uploads did not finish")

    def reset_peak(self) -> None:
        """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def hwm_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        _stop_mount_process(self.proc, self.path, grace=300)
        self.logf.close()


def _stop_mount_process(proc: subprocess.Popen[bytes], path: Path, grace: float) -> None:
    """SIGTERM a mount daemon, kill it after ``grace`` s, and detach its mount if still there."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)


class Rclone:
    """``rclone mount --vfs-cache-mode writes`` of a local directory (``backing``)."""

    def __init__(self, workdir: Path) -> None:
        self.backing = workdir / "rclone-backing"
        self.path = workdir / "rclone"
        self.backing.mkdir()
        self.path.mkdir()
        self.logf = open(workdir / "rclone.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["rclone", "mount", str(self.backing), str(self.path), "--vfs-cache-mode", "writes",
             "--cache-dir", str(workdir / "rclone-cache"), "--config", "/dev/null"],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
        )  # fmt: skip

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone exited with {self.proc.returncode}; see {self.logf.name}")
            return os.path.ismount(self.path)

        wait(ready, 60, "rclone mount")

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.path)], check=False, capture_output=True)
        _stop_mount_process(self.proc, self.path, grace=30)
        self.logf.close()


# --------------------------------------------------------------------------------------------
# verification helpers


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and "dir" for every directory) under root."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.normpath(os.path.join(rel, name))] = hashlib.sha256(f.read()).hexdigest()
    return out


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"verification failed: {what}")


def drop_file_cache(path: Path) -> None:
    """Evict one file from the kernel's page cache (for the local and rclone cold reads)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


SETTLED_DIRTY = 16 * MiB  # the machine's dirty + under-writeback pages at most this before a timed write


def _dirty_bytes() -> int:
    """Dirty and under-writeback page-cache bytes, machine-wide (/proc/meminfo)."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(("Dirty:", "Writeback:")):
                total += int(line.split()[1]) * 1024
    return total


def settle_disk(timeout: float = 30.0) -> float:
    """``sync`` and wait until the write-back it started is done (the machine's dirty and
    under-writeback pages under SETTLED_DIRTY; other processes may dirty a few meanwhile), at
    most ``timeout`` s. The sequential workload does this before each timed write and read on
    every target, so that no target runs behind the write-back of the one before it (the local
    disk's write ran at 171-3,481 MiB/s from pass to pass without it). Returns the seconds."""
    t0 = time.monotonic()
    os.sync()
    while _dirty_bytes() > SETTLED_DIRTY and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
        os.sync()
    took = time.monotonic() - t0
    if _dirty_bytes() > SETTLED_DIRTY:
        log.warning("the page cache still holds %d MiB dirty after %.0f s", _dirty_bytes() // MiB, took)
    return took


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


# --------------------------------------------------------------------------------------------
# the mixed 4-process workload (in the manner of fsstress): each process works in its own
# directory with a seeded random mix and keeps a model of what must be there; at the end the
# tree must equal the model byte for byte.


def mixed_worker(root: str, seed: int, ops: int) -> dict[str, str]:
    rng = random.Random(seed)
    base = Path(root)
    base.mkdir()
    files: dict[str, bytes] = {}
    dirs: set[str] = {"."}
    for i in range(ops):
        op = rng.choice(("create", "create", "write", "append", "read", "rename", "unlink", "mkdir", "rmdir",
                         "stat", "readdir", "truncate", "fsync"))  # fmt: skip
        if op in ("write", "append", "read", "rename", "unlink", "truncate", "fsync") and not files:
            op = "create"
        if op == "create":
            name = os.path.join(rng.choice(sorted(dirs)), f"f{i}")
            data = rng.randbytes(rng.randint(0, 16384))
            (base / name).write_bytes(data)
            files[name] = data
        elif op == "write":
            name = rng.choice(sorted(files))
            off = rng.randint(0, len(files[name]))
            data = rng.randbytes(rng.randint(1, 8192))
            with open(base / name, "r+b") as f:
                f.seek(off)
                f.write(data)
            old = files[name]
            files[name] = old[:off] + data + old[off + len(data) :]
        elif op == "append":
            name = rng.choice(sorted(files))
            data = rng.randbytes(rng.randint(1, 4096))
            with open(base / name, "ab") as f:
                f.write(data)
            files[name] += data
        elif op == "read":
            name = rng.choice(sorted(files))
            check((base / name).read_bytes() == files[name], f"mixed read of {name}")
        elif op == "rename":
            name = rng.choice(sorted(files))
            new = os.path.join(rng.choice(sorted(dirs)), f"r{i}")
            os.rename(base / name, base / new)
            files[new] = files.pop(name)
        elif op == "unlink":
            name = rng.choice(sorted(files))
            os.unlink(base / name)
            del files[name]
        elif op == "mkdir":
            d = os.path.normpath(os.path.join(rng.choice(sorted(dirs)), f"d{i}"))
            os.mkdir(base / d)
            dirs.add(d)
        elif op == "rmdir":
            empty = [d for d in dirs if d != "." and not any(k.startswith(d + "/") for k in files)
                     and not any(o.startswith(d + "/") for o in dirs)]  # fmt: skip
            if empty:
                d = rng.choice(sorted(empty))
                os.rmdir(base / d)
                dirs.discard(d)
        elif op == "stat":
            name = rng.choice(sorted(files)) if files else "."
            st = os.stat(base / name)
            check(name == "." or st.st_size == len(files[name]), f"mixed stat size of {name}")
        elif op == "readdir":
            d = rng.choice(sorted(dirs))
            os.listdir(base / d)
        elif op == "truncate":
            name = rng.choice(sorted(files))
            n = rng.randint(0, len(files[name]))
            with open(base / name, "r+b") as f:  # ftruncate (rclone refuses a path truncate)
                f.truncate(n)
            files[name] = files[name][:n]
        elif op == "fsync":
            name = rng.choice(sorted(files))
            fd = os.open(base / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    model = {os.path.normpath(k): hashlib.sha256(v).hexdigest() for k, v in files.items()}
    model.update({d: "dir" for d in dirs if d != "."})
    return model


def _mixed_entry(args: tuple[str, int, int]) -> dict[str, str]:
    return mixed_worker(*args)


# --------------------------------------------------------------------------------------------
# the bench


class Figures(dict):
    """A target's medians; a figure missing because the workload failed reads as NaN."""

    def __missing__(self, key: str) -> float:
        return float("nan")


class Sources:
    """What the workloads copy in, built once per run outside every target."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        a = args
        self.root = root
        rng = random.Random(13)
        # 1,000 small files in 10 directories, as a tarball and as a tree
        tree = root / "small"
        for i in range(a.files):
            d = tree / f"dir{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"file{i:04d}.txt").write_bytes(f"line {i} {rng.random()}\n".encode())
        self.small = tree
        self.small_hashes = tree_hashes(tree)
        self.tarball = root / "small.tar"
        with tarfile.open(self.tarball, "w") as tf:
            tf.add(tree, arcname="small")
        # a git repository of a.repo_files files
        repo = root / "repo"
        repo.mkdir()
        for i in range(a.repo_files):
            p = repo / f"pkg{i % 15}" / f"mod{i}.py"
            p.parent.mkdir(exist_ok=True)
            p.write_text("".join(f"x{j} = {rng.random()!r}\n" for j in range(rng.randint(5, 200))))
        env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="bench",
                   GIT_COMMITTER_EMAIL="b@x")  # fmt: skip
        run(["git", "init", "-q", str(repo)])
        run(["git", "-C", str(repo), "add", "-A"], env=env)
        run(["git", "-C", str(repo), "commit", "-q", "-m", "bench"], env=env)
        self.repo = repo
        self.repo_hashes = {k: v for k, v in tree_hashes(repo).items() if not k.startswith(".git")}
        self.big = os.urandom(a.big_mib * MiB)
        self.big_sha = hashlib.sha256(self.big).hexdigest()


class Bench:
    """One pass: every workload once on every target, each target right after the other.

    Each pass has its own emulator, so its own account and fresh rate-limit windows (the real
    server counts per account: ``fs:mutate-sustained`` is 3,000 mutations per hour for a free
    account), its own puterfs mount, rclone mount and local directory. What a pass draws is
    what one run of the workloads costs an account; no pass waits on an earlier one's budget.
    """

    def __init__(self, args: argparse.Namespace, src: Sources, workdir: Path, tier: str) -> None:
        self.args = args
        self.tier = tier
        self.workdir = workdir
        self.src = src.root
        self.small_hashes, self.tarball, self.repo, self.repo_hashes = (
            src.small_hashes, src.tarball, src.repo, src.repo_hashes)  # fmt: skip
        self.big, self.big_sha = src.big, src.big_sha
        self.notes: list[str] = []
        self.mount: Mount | None = None
        self.rclone: Rclone | None = None
        self.emu = Emulator(workdir, tier)
        try:
            self.prepare_server()
            extra = ["--tier", tier] + (["--write-back", str(args.write_back)] if args.write_back is not None else [])
            self.mount = Mount(workdir, self.emu, "puterfs", *extra)
            if shutil.which("rclone"):
                try:
                    self.rclone = Rclone(workdir)
                except RuntimeError as e:
                    self.notes.append(f"rclone column skipped: {e}")
            else:
                self.notes.append("rclone column skipped: rclone is not installed (apt-get install rclone)")
        except BaseException:
            self.stop()
            raise
        self.write_back = args.write_back if args.write_back is not None else 2.0
        (workdir / "local").mkdir()
        self.roots = {"puterfs": self.mount.path, "local": workdir / "local"}
        if self.rclone:
            self.roots["rclone"] = self.rclone.path
        self.targets = [t for t in TARGETS if t in self.roots]
        self.seq = 0

    def stop(self) -> None:
        for part in (self.mount, self.rclone):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        self.emu.stop()

    def fresh(self, target: str, what: str) -> Path:
        self.seq += 1
        d = self.roots[target] / f"{what}-{self.seq}"
        return d

    def prepare_server(self) -> None:
        """Files put on the server directly, before the mount starts: the mount lists them
        fresh and has never cached their data (no wait on its change polling). The large
        files go up with PuterClient (the presigned flow from 100 MiB; /batch refuses them)."""
        u = self.emu.username
        n, ndirs = self.args.files, 10
        for k in range(ndirs):
            self.emu.upload_many(f"/{u}/ls/d{k}", {f"e{i:04d}": f"{i}\n".encode() for i in range(n) if i % ndirs == k})

        self.ref_user, self.ref_token = self.emu.new_user()

        async def big() -> None:
            async with self.client() as c:
                for what in ("cold", "rand"):
                    await c.fs_write(f"/{u}/{what}/big.bin", self.big, {"createMissingParents": True})
            async with self.client(self.ref_token) as c:  # the reference for the client's speed
                await c.fs_write(f"/{self.ref_user}/ref/big.bin", self.big, {"createMissingParents": True})

        asyncio.run(big())

    def server_set(self, what: str) -> Path:
        return self.mount.path / what

    # -- measurement frame ---------------------------------------------------------------------

    def measure(self, name: str, fn: Callable[[str], dict[str, float]], order: list[str],
                into: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        """Run fn(target) once per target in ``order``; fn returns {metric: value}. puterfs's
        figures get the workload's HTTP requests and 429 answers (every request from its start
        to its end, including those of log segments a workload cleared), the daemon's CPU
        seconds and peak RSS."""
        for target in order:
            log.info("  [%s] %s: %s", self.tier, name, target)
            try:
                if target == "puterfs":
                    self.mount.wait_uploaded(settle=self.args.settle)
                    self.emu.clear_log()
                    base_req, base_429 = self.emu.dropped_requests, self.emu.dropped_429
                    base_routes = Counter(self.emu.dropped_routes)
                    self.mount.reset_peak()
                    cpu0 = self.mount.cpu_s()
                out = fn(target)
                if target == "puterfs":
                    entries = self.emu.log()
                    # the requests by route, for "what dominated"
                    by_route = self.emu.dropped_routes - base_routes + Counter(route(e) for e in entries)
                    into.setdefault("_routes", {})[name] = dict(by_route.most_common())
                    out["requests"] = float(len(entries) + self.emu.dropped_requests - base_req)
                    out["http 429"] = float(sum(1 for e in entries if e.get("status") == 429)
                                            + self.emu.dropped_429 - base_429)  # fmt: skip
                    out["daemon cpu s"] = self.mount.cpu_s() - cpu0
                    out["daemon peak RSS MiB"] = self.mount.hwm_mib()
            except Exception as e:  # a target that fails a workload is reported, not fatal
                log.error("  [%s] %s FAILED on %s: %s", self.tier, name, target, e)
                into.setdefault(name, {})[target] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            into.setdefault(name, {})[target] = out

    def until_uploaded(self, target: str, t0: float, returned: float, prefix: str = "") -> dict[str, float]:
        """{"s": time to return} and, for puterfs, {"on server s": until nothing is pending}."""
        if target != "puterfs":
            return {f"{prefix}s": returned - t0}
        on_server = max(self.mount.wait_uploaded(settle=self.args.settle), returned)
        return {f"{prefix}s": returned - t0, f"{prefix}on server s": on_server - t0,
                f"{prefix}on server lag s": on_server - returned}  # fmt: skip

    def on_server(self, target: str, d: Path, what: str) -> None:
        """puterfs: the server holds exactly the tree the mount shows (every file's sha256)."""
        if target == "puterfs":
            check(self.emu.tree(self.server_path(d)) == tree_hashes(d), f"{what}: the server's copy of {d.name}")

    # -- workloads -----------------------------------------------------------------------------

    def w_tar(self, target: str) -> dict[str, float]:
        d = self.fresh(target, "tar")
        d.mkdir()
        t0 = time.perf_counter()
        run(["tar", "xf", str(self.tarball), "-C", str(d)])
        t1 = time.perf_counter()
        out = self.until_uploaded(target, t0, t1)
        check(tree_hashes(d / "small") == self.small_hashes, f"tar x tree on {target}")
        self.on_server(target, d, "tar x")
        return out

    def w_git(self, target: str) -> dict[str, float]:
        d = self.fresh(target, "clone")
        t0 = time.perf_counter()
        run(["git", "clone", "-q", "--no-hardlinks", str(self.repo), str(d)])
        st = run(["git", "-C", str(d), "status", "--porcelain"]).stdout
        t1 = time.perf_counter()
        out = self.until_uploaded(target, t0, t1)
        check(st == b"", f"git status clean on {target}: {st[:200]!r}")
        got = {k: v for k, v in tree_hashes(d).items() if not k.startswith(".git")}
        check(got == self.repo_hashes, f"git clone work tree on {target}")
        run(["git", "-C", str(d), "fsck", "--no-progress"])
        self.on_server(target, d, "git clone")
        return out

    def w_cp_rm(self, target: str) -> dict[str, float]:
        d = self.fresh(target, "cp")
        t0 = time.perf_counter()
        run(["cp", "-r", str(self.src / "small"), str(d)])
        out = self.until_uploaded(target, t0, time.perf_counter(), "cp -r ")
        check(tree_hashes(d) == self.small_hashes, f"cp -r tree on {target}")
        self.on_server(target, d, "cp -r")
        t0 = time.perf_counter()
        run(["rm", "-rf", str(d)])
        out |= self.until_uploaded(target, t0, time.perf_counter(), "rm -rf ")
        check(not d.exists(), f"rm -rf on {target}")
        if target == "puterfs":  # the deletes reached the server
            check(not self.emu.exists(self.server_path(d)), "rm -rf: the tree is still on the server")
        return out

    def w_saves(self, target: str) -> dict[str, float]:
        d = self.fresh(target, "saves")
        d.mkdir()
        doc = d / "doc.txt"
        content = b""
        t0 = time.perf_counter()
        for i in range(self.args.saves):
            content = f"revision {i}\n".encode() * (50 + i)
            tmp = d / ".doc.txt.swp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, doc)
        t1 = time.perf_counter()
        out = self.until_uploaded(target, t0, t1)
        check(doc.read_bytes() == content and sorted(os.listdir(d)) == ["doc.txt"], f"editor saves on {target}")
        self.on_server(target, d, "editor saves")
        return out

    def w_appends(self, target: str) -> dict[str, float]:
        d = self.fresh(target, "appends")
        d.mkdir()
        f = d / "log.txt"
        t0 = time.perf_counter()
        for i in range(self.args.appends):
            with open(f, "ab") as fh:
                fh.write(f"entry {i}\n".encode())
            os.sync()
        t1 = time.perf_counter()
        out = self.until_uploaded(target, t0, t1)
        check(f.read_bytes() == b"".join(f"entry {i}\n".encode() for i in range(self.args.appends)),
              f"appends on {target}")  # fmt: skip
        self.on_server(target, d, "appends")
        return out

    def w_mixed(self, target: str) -> dict[str, float]:
        d = self.fresh(target, "mixed")
        d.mkdir()
        per = self.args.mixed_ops // 4
        jobs = [(str(d / f"p{k}"), 1000 + k, per) for k in range(4)]
        ctx = multiprocessing.get_context("fork")
        t0 = time.perf_counter()
        with ctx.Pool(4) as pool:
            models = pool.map(_mixed_entry, jobs)
        t1 = time.perf_counter()
        out = self.until_uploaded(target, t0, t1)
        for (root, _, _), model in zip(jobs, models, strict=True):
            check(tree_hashes(Path(root)) == model, f"mixed workload tree {root} on {target}")
        self.on_server(target, d, "mixed")
        return out

    def server_path(self, rel: Path) -> str:
        return f"/{self.emu.username}/{rel.relative_to(self.mount.path).as_posix()}"

    def client(self, token: str | None = None) -> Any:
        from puterfs import PuterClient

        return PuterClient(token or self.emu.token, api_url=self.emu.url, web_url=self.emu.web_url, tier=self.tier)

    def visible(self, path: Path) -> None:
        """Wait until a file put on the server directly shows in the mount (its --poll-interval)."""
        wait(path.exists, 120, f"{path} to show in the mount", interval=0.2)

    def w_sequential(self, target: str) -> dict[str, float]:
        size = len(self.big)
        d = self.fresh(target, "seq")
        d.mkdir()
        f = d / "big.bin"
        block = 1 * MiB
        settle_disk()  # the same clean start on every target (settle_disk)
        t0 = time.perf_counter()
        with open(f, "wb") as fh:
            for off in range(0, size, block):
                fh.write(self.big[off : off + block])
        t1 = time.perf_counter()
        out = {"write MiB/s": size / MiB / (t1 - t0)}
        if target == "rclone" and self.rclone:
            # its copy into the backing directory (after its write-back delay) must not run
            # during the next target's timed write, as puterfs's upload is waited for below
            backing = self.rclone.backing / f.relative_to(self.rclone.path)
            wait(lambda: backing.exists() and backing.stat().st_size == size, 300, "rclone's copy of the big file")
        if target == "puterfs":
            on = self.mount.wait_uploaded(settle=self.args.settle)
            out["write+upload MiB/s"] = size / MiB / (max(on, t1) - t0)
            # the file the mount uploaded, as the server holds it
            check(self.emu.tree(self.server_path(d)) == {"big.bin": self.big_sha}, "server copy of the mount's big file")
            # the client's own speed, on a second account of the same server and tier (its
            # requests would otherwise take from the mount's account's budget, e.g. fs:read's
            # 300 a minute on the free tier, which the mount's pacer cannot know about)
            ref = f"/{self.ref_user}/ref/big.bin"

            async def client_rw() -> tuple[float, float]:
                async with self.client(self.ref_token) as c:
                    settle_disk()
                    r0 = time.perf_counter()
                    data = await c.fs_read(ref)
                    r1 = time.perf_counter()
                    check(hashlib.sha256(data).hexdigest() == self.big_sha, "the client's read of the big file")
                    settle_disk()
                    w0 = time.perf_counter()
                    await c.fs_write(ref + ".client", self.big)
                    return r1 - r0, time.perf_counter() - w0

            t_read, t_write = asyncio.run(client_rw())
            out["client fs_read MiB/s"] = size / MiB / t_read
            out["client fs_write MiB/s"] = size / MiB / t_write
            # cold read through the mount of a file it has never seen (put there directly)
            cold = self.server_set("cold") / "big.bin"
            self.emu.clear_log()
        else:
            cold = f
            drop_file_cache(f)
            if target == "rclone" and self.rclone:
                drop_file_cache(self.rclone.backing / f.relative_to(self.rclone.path))
        settle_disk()
        t0 = time.perf_counter()
        h = hashlib.sha256()
        with open(cold, "rb", buffering=0) as fh:
            while chunk := fh.read(MiB):
                h.update(chunk)
        t1 = time.perf_counter()
        check(h.hexdigest() == self.big_sha, f"cold read on {target}")
        out["cold read MiB/s"] = size / MiB / (t1 - t0)
        if target == "puterfs":
            out["cold read requests"] = float(len(self.emu.log()))
        out["aligned write MiB/s"] = self.aligned_write(d / "aligned.bin")
        return out

    def aligned_write(self, f: Path) -> float:
        """The sequential write again, from a page-aligned buffer (as dd and cp write): from
        a Python bytes object (not page-aligned) each 1 MiB spans 257 pages, and the kernel
        splits each such write through a FUSE mount into two WRITE requests (max_pages is 256,
        libfuse 3.14); the local disk does not care. MiB/s to close; checked, then deleted."""
        size = len(self.big)
        buf = mmap.mmap(-1, size)
        try:
            buf[:] = self.big
            view = memoryview(buf)
            settle_disk()
            t0 = time.perf_counter()
            with open(f, "wb", buffering=0) as fh:
                for off in range(0, size, MiB):
                    fh.write(view[off : off + MiB])
            t1 = time.perf_counter()
            view.release()
        finally:
            buf.close()
        h = hashlib.sha256()
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(MiB):
                h.update(chunk)
        check(h.hexdigest() == self.big_sha, f"the page-aligned write on {f}")
        f.unlink()  # before the mount's write-back delay: never uploaded
        return size / MiB / (t1 - t0)

    def w_random(self, target: str) -> dict[str, float]:
        size = len(self.big)
        if target == "puterfs":
            f = self.server_set("rand") / "big.bin"
        else:
            d = self.fresh(target, "rand")
            d.mkdir()
            f = d / "big.bin"
            f.write_bytes(self.big)
            drop_file_cache(f)
            if target == "rclone" and self.rclone:
                drop_file_cache(self.rclone.backing / f.relative_to(self.rclone.path))
        rng = random.Random(42)
        offsets = [rng.randrange(0, size - 4096) // 4096 * 4096 for _ in range(self.args.random_reads)]
        if target == "puterfs":
            os.stat(f)  # the lookup is not part of the read cost
            self.emu.clear_log()
        t0 = time.perf_counter()
        fd = os.open(f, os.O_RDONLY)
        try:
            for off in offsets:
                check(os.pread(fd, 4096, off) == self.big[off : off + 4096], f"random read at {off} on {target}")
        finally:
            os.close(fd)
        t1 = time.perf_counter()
        out = {"s": t1 - t0, "bytes read": 4096.0 * len(offsets)}
        if target == "puterfs":
            out["bytes downloaded"] = float(sum(e.get("bytes_out") or 0 for e in self.emu.log()))
        return out

    def w_ls(self, target: str) -> dict[str, float]:
        n, ndirs = self.args.files, 10
        files = {f"d{i % ndirs}/e{i:04d}": f"{i}\n".encode() for i in range(n)}
        if target == "puterfs":
            d = self.server_set("ls")
        else:
            d = self.fresh(target, "ls")
            for name, data in files.items():
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                (d / name).write_bytes(data)
        out: dict[str, float] = {}
        for label in ("cold", "warm"):
            if target == "puterfs":
                self.emu.clear_log()
            t0 = time.perf_counter()
            listing = run(["ls", "-lR", str(d)]).stdout.decode()
            out[f"{label} s"] = time.perf_counter() - t0
            if target == "puterfs":
                entries = self.emu.log()
                out[f"{label} requests"] = float(len(entries))
                out[f"{label} listing requests"] = float(sum(1 for e in entries if route(e) in LISTING_ROUTES))
            names = {ln.split()[-1] for ln in listing.splitlines() if ln.startswith("-")}
            check(len(names) == n, f"ls -lR {label} on {target}: {len(names)} of {n} files")
        return out

    def w_chat(self, target: str) -> dict[str, float]:
        prompt = f"benchmark prompt {self.seq}"
        self.seq += 1
        chat = self.mount.path / ".ai" / "chat"
        t0 = time.perf_counter()
        with open(chat, "wb") as fh:
            fh.write(prompt.encode() + b"\n")
        with open(chat, "rb", buffering=0) as fh:
            first = fh.read(1)
            t1 = time.perf_counter()
            rest = first + fh.read()
        check(rest == prompt.encode() + b"\n", f".ai/chat answer {rest[:80]!r}")

        async def direct() -> tuple[float, str]:
            async with self.client() as c:
                s0 = time.perf_counter()
                stream = await c.ai_chat(prompt, options={"stream": True})
                text, ttfb = "", None
                async for delta, _model in stream:
                    if ttfb is None and delta:
                        ttfb = time.perf_counter() - s0
                    text += delta
                return ttfb or 0.0, text

        ttfb, text = asyncio.run(direct())
        check(text.strip() == prompt, f"ai_chat answer {text[:80]!r}")
        return {"first byte s": t1 - t0, "ai_chat first byte s": ttfb}

    def run_pass(self, order: list[str]) -> dict[str, Any]:
        """Every workload (``--only``: those named) once per target in ``order``; the raw figures."""
        out: dict[str, Any] = {}
        order = [t for t in order if t in self.targets]
        for name, fn in (("tar x", self.w_tar), ("git clone + status", self.w_git), ("cp -r / rm -rf", self.w_cp_rm),
                         ("editor saves", self.w_saves), ("appends + sync", self.w_appends),
                         ("mixed 4-process", self.w_mixed), ("sequential", self.w_sequential),
                         ("random 4 KiB reads", self.w_random), ("ls -lR", self.w_ls), (".ai/chat", self.w_chat)):
            if self.args.only and name not in self.args.only:
                continue
            self.measure(name, fn, ["puterfs"] if name == ".ai/chat" else order, out)
        self.mount.wait_uploaded(settle=self.args.settle)
        self.emu.clear_log()
        out["_429 in pass"] = self.emu.dropped_429  # set-up and between workloads included
        return out


WORKLOADS = ("tar x", "git clone + status", "cp -r / rm -rf", "editor saves", "appends + sync", "mixed 4-process",
             "sequential", "random 4 KiB reads", "ls -lR", ".ai/chat")  # fmt: skip


NAMESPACE_WORKLOADS = ("tar x", "git clone + status", "cp -r / rm -rf", "editor saves", "mixed 4-process")


def run_tier(args: argparse.Namespace, src: Sources, tier: str, root: Path) -> dict[str, Any]:
    """``--repeat`` passes on ``tier``, each on a new emulator; the medians of every figure.

    Interleaved: within a pass each workload runs on every target one after the other, and
    the targets' order rotates from pass to pass (puterfs first, then rclone first, ...)."""
    started = time.monotonic()
    samples: dict[str, dict[str, dict[str, list[float]]]] = {}
    errors: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    routes: dict[str, dict[str, int]] = {}
    targets: list[str] = []
    write_back = 2.0
    pass_429: list[int] = []
    for rep in range(args.repeat):
        workdir = root / f"{tier}-{rep + 1}"
        workdir.mkdir()
        log.info("tier %s, pass %d of %d (a new emulator and account), in %s", tier, rep + 1, args.repeat, workdir)
        bench = Bench(args, src, workdir, tier)
        try:
            targets, write_back = bench.targets, bench.write_back
            k = rep % len(targets)
            raw = bench.run_pass(targets[k:] + targets[:k])
        finally:
            bench.stop()
            notes.extend(n for n in bench.notes if n not in notes)
            if not args.keep:
                with contextlib.suppress(OSError):
                    shutil.rmtree(workdir)
        routes = raw.pop("_routes", routes)  # the last pass's
        pass_429.append(raw.pop("_429 in pass"))
        for name, per_target in raw.items():
            for target, figures in per_target.items():
                if "error" in figures:
                    errors.setdefault(name, {}).setdefault(target, figures["error"])
                    continue
                for key, v in figures.items():
                    samples.setdefault(name, {}).setdefault(target, {}).setdefault(key, []).append(v)
    results: dict[str, Any] = {}
    for name in WORKLOADS:
        if name not in samples and name not in errors:
            continue
        per = {t: Figures({k: statistics.median(v) for k, v in m.items()}) for t, m in samples.get(name, {}).items()}
        for t, e in errors.get(name, {}).items():
            per.setdefault(t, Figures())["error"] = e
            notes.append(f"{name} failed on {t} (in at least one pass): {e}")
        results[name] = per
    sizes = {k: getattr(args, k) for k in ("repeat", "big_mib", "files", "repo_files", "saves", "appends",
                                           "mixed_ops", "random_reads")}  # fmt: skip
    return {"tier": tier, "targets": targets, "notes": notes, "sizes": sizes, "requests_by_route": routes,
            "write_back_s": write_back, "workloads": results, "samples": samples, "429 per pass": pass_429,
            "seconds": time.monotonic() - started}  # fmt: skip


# --------------------------------------------------------------------------------------------
# targets and the table


def verdicts(tr: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(what, puterfs figure, reference figure, ratio, target + met/not met) rows."""
    w = tr["workloads"]
    rows: list[tuple[str, str, str, str, str]] = []
    have_rclone = "rclone" in tr["targets"]
    ref = "rclone" if have_rclone else "local"
    a = tr["sizes"]
    n_files = a["files"]

    def verdict(ok: bool | None, text: str) -> str:
        return f"{text}: " + ("n/a" if ok is None else "met" if ok else "NOT met")

    def time_row(label: str, wl: str, key: str, limit: float | None = 1.5) -> None:
        p = w[wl]["puterfs"][key]
        r = w[wl][ref][key]
        loc = w[wl]["local"][key]
        ratio = p / r if r else float("inf")
        rows.append((label, f"{p:.3f} s", f"{ref} {r:.3f} s, local {loc:.3f} s", f"{ratio:.2f}",
                     verdict(ratio <= limit if limit and have_rclone else None,
                             f"<= {limit} x rclone") if limit else "-"))  # fmt: skip

    def has(wl: str) -> bool:  # measured in this run (--only), by every target
        return wl in w and all(w[wl].get(t) for t in ("puterfs", "local"))

    def on_server_row(label: str, wl: str, prefix: str = "") -> None:
        p = w[wl]["puterfs"]
        lag = p[f"{prefix}on server lag s"]  # the median of each pass's lag, not a difference of medians
        if not math.isfinite(lag):
            lag = p[f"{prefix}on server s"] - p[f"{prefix}s"]
        limit = tr["write_back_s"] + 2
        rows.append((f"{label}: on the server after", f"{p[f'{prefix}on server s']:.3f} s", "", f"+{lag:.2f} s",
                     verdict(lag <= limit, f"<= write-back {tr['write_back_s']:g} s + 2 s")))  # fmt: skip

    if has("tar x"):
        time_row(f"tar x {n_files:,} files (returns)", "tar x", "s")
        on_server_row("tar x", "tar x")
        tx = w["tar x"]["puterfs"]
        rows.append(("tar x: HTTP requests", f"{tx['requests']:.0f}", "", "", verdict(tx["requests"] <= 30, "<= 30")))
    if has("git clone + status"):
        time_row(f"git clone {a['repo_files']} files + status", "git clone + status", "s")
        on_server_row("git clone", "git clone + status")
    if has("cp -r / rm -rf"):
        time_row(f"cp -r {n_files:,} files", "cp -r / rm -rf", "cp -r s")
        on_server_row("cp -r", "cp -r / rm -rf", "cp -r ")
        time_row(f"rm -rf {n_files:,} files", "cp -r / rm -rf", "rm -rf s")
        on_server_row("rm -rf", "cp -r / rm -rf", "rm -rf ")
    if has("editor saves"):
        time_row(f"{a['saves']} editor saves", "editor saves", "s")
        on_server_row("editor saves", "editor saves")
    if has("appends + sync"):
        time_row(f"{a['appends']} appends + sync", "appends + sync", "s", None)
    if has("mixed 4-process"):
        time_row(f"mixed 4-process, {a['mixed_ops']:,} ops", "mixed 4-process", "s")
        on_server_row("mixed 4-process", "mixed 4-process")
    for wl, m in w.items():
        if "error" in m.get("puterfs", {}):
            rows.append((f"{wl}: FAILED on puterfs", m["puterfs"]["error"][:60], "", "", "NOT met"))
    # the no-429 target is about "the same workloads" (those with a time target); the
    # others' 429s are reported beside them
    n429 = {wl: m["puterfs"]["http 429"] for wl, m in w.items() if m.get("puterfs")}
    for label, group in (("429s: tar x, git, cp, rm, saves, mixed", NAMESPACE_WORKLOADS),
                         ("429s: the other workloads", tuple(x for x in WORKLOADS if x not in NAMESPACE_WORKLOADS))):
        part = {wl: v for wl, v in n429.items() if wl in group}
        if not part:
            continue
        total = sum(v for v in part.values() if math.isfinite(v))
        where = ", ".join(f"{wl} {v:.0f}" for wl, v in part.items() if v) or "none"
        target = "-" if group is not NAMESPACE_WORKLOADS else (
            verdict(total == 0, "0 on the free tier") if tr["tier"] == "free" else "- (limits off)")
        rows.append((label, f"{total:.0f}", where, "", target))  # fmt: skip
    if has("sequential"):
        _sequential_rows(w, a, rows, verdict, have_rclone)
    if has("random 4 KiB reads"):
        _random_rows(w, a, rows, ref)
    if has("ls -lR"):
        _ls_rows(w, n_files, rows, verdict, ref)
    if ".ai/chat" in w and w[".ai/chat"].get("puterfs"):
        ch = w[".ai/chat"]["puterfs"]
        rows.append((".ai/chat first byte", f"{ch['first byte s']:.3f} s", f"ai_chat {ch['ai_chat first byte s']:.3f} s",
                     f"{ch['first byte s'] / max(ch['ai_chat first byte s'], 1e-9):.2f}", "-"))
    peak = max((m["puterfs"].get("daemon peak RSS MiB", 0) for m in w.values() if m.get("puterfs")), default=0)
    rows.append(("daemon peak RSS, all workloads", f"{peak:.0f} MiB", "", "", verdict(peak < 150, "< 150 MiB")))
    return rows


def _sequential_rows(w: dict[str, Any], a: dict[str, Any], rows: list[Any], verdict: Any, have_rclone: bool) -> None:
    sq = w["sequential"]
    p, loc = sq["puterfs"]["write MiB/s"], sq["local"]["write MiB/s"]
    rows.append((f"sequential write {a['big_mib']} MiB (to close)", f"{p:.1f} MiB/s", f"local {loc:.1f} MiB/s" +
                 (f", rclone {sq['rclone']['write MiB/s']:.1f}" if have_rclone else ""),
                 f"{p / loc:.2f}", verdict(p / loc >= 0.5, ">= 0.5 x local")))  # fmt: skip
    if "aligned write MiB/s" in sq["puterfs"]:
        pa, la = sq["puterfs"]["aligned write MiB/s"], sq["local"]["aligned write MiB/s"]
        rows.append(("  the same from a page-aligned buffer", f"{pa:.1f} MiB/s", f"local {la:.1f} MiB/s" +
                     (f", rclone {sq['rclone']['aligned write MiB/s']:.1f}" if have_rclone else ""),
                     f"{pa / la:.2f}", "- (one FUSE request per MiB, not two)"))  # fmt: skip
    rows.append(("sequential write + upload", f"{sq['puterfs']['write+upload MiB/s']:.1f} MiB/s",
                 f"client fs_write {sq['puterfs']['client fs_write MiB/s']:.1f} MiB/s",
                 f"{sq['puterfs']['write+upload MiB/s'] / sq['puterfs']['client fs_write MiB/s']:.2f}", "-"))
    c, cr = sq["puterfs"]["cold read MiB/s"], sq["puterfs"]["client fs_read MiB/s"]
    rows.append(("cold sequential read", f"{c:.1f} MiB/s", f"client fs_read {cr:.1f} MiB/s, local "
                 f"{sq['local']['cold read MiB/s']:.1f}", f"{c / cr:.2f}", verdict(c / cr >= 0.8, ">= 0.8 x client")))


def _random_rows(w: dict[str, Any], a: dict[str, Any], rows: list[Any], ref: str) -> None:
    rr = w["random 4 KiB reads"]
    rows.append((f"{a['random_reads']:,} random 4 KiB reads", f"{rr['puterfs']['s']:.3f} s", f"{ref} {rr[ref]['s']:.3f} s",
                 f"{rr['puterfs']['s'] / rr[ref]['s']:.2f}", "-"))
    amp = rr["puterfs"]["bytes downloaded"] / rr["puterfs"]["bytes read"]
    rows.append(("  bytes downloaded / bytes read", f"{amp:.2f}",
                 f"{rr['puterfs']['bytes downloaded'] / MiB:.1f} MiB of {rr['puterfs']['bytes read'] / MiB:.1f}",
                 "", "-"))  # fmt: skip


def _ls_rows(w: dict[str, Any], n_files: int, rows: list[Any], verdict: Any, ref: str) -> None:
    ls = w["ls -lR"]["puterfs"]
    rows.append((f"ls -lR {n_files:,} entries, cold", f"{ls['cold s']:.3f} s, {ls['cold listing requests']:.0f} "
                 f"listings ({ls['cold requests']:.0f} req)", f"{ref} {w['ls -lR'][ref]['cold s']:.3f} s", "",
                 verdict(ls["cold listing requests"] <= 12,
                         "<= 1 listing request per directory (12: the mount root, ls/, its 10)")))  # fmt: skip
    rows.append((f"ls -lR {n_files:,} entries, warm", f"{ls['warm s']:.3f} s, {ls['warm requests']:.0f} req",
                 f"{ref} {w['ls -lR'][ref]['warm s']:.3f} s", "", verdict(ls["warm requests"] == 0, "0 requests")))


def markdown(all_results: list[dict[str, Any]]) -> str:
    """The verdict rows of every tier as one Markdown table (for docs/performance.md), and the
    per-workload puterfs figures (peak RSS, CPU s, requests, 429s) of each tier."""
    tiers = [tr["tier"] for tr in all_results]
    rows = {tr["tier"]: verdicts(tr) for tr in all_results}
    labels: list[str] = []
    for tier in tiers:
        labels += [r[0] for r in rows[tier] if r[0] not in labels]
    head = ["workload"] + [f"{t}: {c}" for t in tiers for c in ("puterfs", "reference", "ratio", "target")]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        cells = [label.strip().replace("|", "/")]
        for tier in tiers:
            r = next((r for r in rows[tier] if r[0] == label), None)
            cells += [c.replace("|", "/") for c in r[1:]] if r else ["", "", "", ""]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    head = ["workload"] + [f"{t}: {c}" for t in tiers for c in ("peak RSS MiB", "CPU s", "requests", "429s")]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in WORKLOADS:
        cells = [name]
        for tr in all_results:
            p = tr["workloads"].get(name, {}).get("puterfs", Figures())
            cells += [f"{p['daemon peak RSS MiB']:.0f}", f"{p['daemon cpu s']:.2f}", f"{p['requests']:.0f}",
                      f"{p['http 429']:.0f}"]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def load(path: str) -> list[dict[str, Any]]:
    """The tiers of a ``--json`` file, figures as Figures again (a missing one reads as NaN)."""
    tiers = json.loads(Path(path).read_text())["tiers"]
    for tr in tiers:
        tr["workloads"] = {n: {t: Figures(f) for t, f in m.items()} for n, m in tr["workloads"].items()}
        for name, per in tr.get("samples", {}).items():  # a file from before the lag figure: derive it
            p = per.get("puterfs", {})
            for key in [k for k in p if k.endswith("on server s")]:
                lag_key = key[: -len("s")] + "lag s"
                if lag_key not in p and len(p[key]) == len(p[key[: -len("on server s")] + "s"]):
                    lags = [a - b for a, b in zip(p[key], p[key[: -len("on server s")] + "s"], strict=True)]
                    tr["workloads"][name]["puterfs"][lag_key] = statistics.median(lags)
    return tiers


def report(all_results: list[dict[str, Any]]) -> None:
    for tr in all_results:
        print(f"\nputerfs benchmark, emulator tier {tr['tier']!r} (median of the runs; same machine, same run)")
        for note in tr["notes"]:
            print(f"  note: {note}")
        rows = verdicts(tr)
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        head = ("workload", "puterfs", "reference", "ratio", "target")
        widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
        print("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        for r in rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        print("\n  puterfs per workload (median):  daemon peak RSS MiB   daemon CPU s   HTTP requests   429s")
        for name, m in tr["workloads"].items():
            p = m.get("puterfs", Figures())
            print(f"    {name:28} {p['daemon peak RSS MiB']:13.0f} {p['daemon cpu s']:14.2f} "
                  f"{p['requests']:15.0f} {p['http 429']:6.0f}")  # fmt: skip
        print(f"  429 answers in each pass, set-up and the time between workloads included: {tr['429 per pass']}")
        print(f"  tier {tr['tier']!r}: {len(tr['429 per pass'])} passes in {tr['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", choices=("free", "unlimited", "both"), default="both",
                    help="emulator limits: free (strict, the default tier), unlimited (off), or both (default)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each workload per target (median; default 3)")
    ap.add_argument("--big-mib", type=int, default=256, help="size of the large file (MiB, default 256)")
    ap.add_argument("--files", type=int, default=1000, help="small files for tar x, cp -r, rm -rf, ls -lR")
    ap.add_argument("--repo-files", type=int, default=300, help="files in the cloned git repository")
    ap.add_argument("--saves", type=int, default=50, help="editor-style saves")
    ap.add_argument("--appends", type=int, default=100, help="appends, each followed by sync")
    ap.add_argument("--mixed-ops", type=int, default=2000, help="operations of the 4-process workload")
    ap.add_argument("--random-reads", type=int, default=2000, help="random 4 KiB reads")
    ap.add_argument("--write-back", type=float, default=None, help="the mount's --write-back (default: its own)")
    ap.add_argument("--settle", type=float, default=1.0, help="how long 'nothing pending' must hold (s)")
    ap.add_argument("--smoke", action="store_true", help="every workload once, tiny sizes, free tier only")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--only", metavar="NAMES", help="comma-separated workloads to run (of: " + ", ".join(WORKLOADS) + ")")
    ap.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown to PATH")
    ap.add_argument("--from-json", metavar="PATH", help="run nothing: print the table of an earlier --json file")
    args = ap.parse_args(argv)
    if args.from_json:
        tiers = load(args.from_json)
        report(tiers)
        if args.markdown:
            Path(args.markdown).write_text(markdown(tiers))
        return 0
    if args.only:
        args.only = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in args.only if n not in WORKLOADS]
        if unknown:
            ap.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if args.smoke:
        args.repeat, args.big_mib, args.files, args.repo_files = 1, 1, 20, 10
        args.saves, args.appends, args.mixed_ops, args.random_reads = 3, 3, 40, 20
        args.write_back = 0.2 if args.write_back is None else args.write_back
        args.settle = 0.5
        args.tier = "free" if args.tier == "both" else args.tier
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tiers = ("free", "unlimited") if args.tier == "both" else (args.tier,)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="puterfs-bench-"))
    log.info("work directory %s", root)
    all_results = []
    try:
        src_dir = root / "src"
        src_dir.mkdir()
        src = Sources(args, src_dir)
        for tier in tiers:
            all_results.append(run_tier(args, src, tier, root))
    finally:
        if not args.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)
        else:
            log.info("work directory kept: %s", root)
    report(all_results)
    total = time.monotonic() - started
    print(f"\nbench total: {total:.0f} s ({', '.join(t['tier'] for t in all_results)}; --repeat {args.repeat})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": total, "tiers": all_results}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(markdown(all_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
