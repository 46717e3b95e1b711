"""Fixtures for the end-to-end mount tests: a real ``puterfs mount`` in a subprocess.

The mount runs ``python -m puterfs mount MP --foreground`` against the session emulator
over real HTTP (api.puter.localhost on 127.0.0.1) and the tests drive it with plain ``os`` calls and shell tools,
as a user's programs would. What the server holds is checked through :class:`RemoteView`,
which speaks the documented HTTP API with httpx directly, so a bug in the mount's own
client cannot hide itself by being used twice.

Provided names (other test files, e.g. the AI-file tests, rely on them):

- :class:`MountProcess`: one daemon process (start, ``wait_ready``, ``stop``, ``kill``, ``state``,
  ``wait_uploaded``);
- fixture ``mount``: a mounted :class:`MountedFs` (``.path``, ``.user``, ``.emulator``, ``.remote``,
  ``.proc``, ``.remount()``, ``.kill_and_remount()``);
- fixture ``mount_factory``: build more mounts (other options, a fresh cache dir, ...);
- helpers ``wait_for``, ``local_tree``, ``tree_diff``, ``RemoteView``: import them with
  ``from mount_testlib import ...`` (see below why not ``from conftest import``).

Every test here gets the ``mount`` marker, and is skipped when /dev/fuse or fusermount3
is missing. Each test gets a fresh temp user, so tests never see each other's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

import puterfs
from puterfs import config
from puterfs.emulator.testing import local_http

log = logging.getLogger(__name__)

# Test modules import these helpers as ``mount_testlib``: several directories of this suite
# have a conftest.py without a package, and pytest drops the previous ``conftest`` from
# sys.modules before importing the next one, so ``from conftest import ...`` could pick up
# another directory's file.
sys.modules["mount_testlib"] = sys.modules[__name__]

HERE = Path(__file__).resolve().parent

# Defaults every test mount gets; a test's extra arguments come after them and win
# (argparse keeps the last value of a repeated option).
WRITE_BACK = "0.3"
POLL_INTERVAL = "0.5"


def fuse_available() -> str | None:
    """None when a FUSE mount can run here, else the reason it cannot."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


requires_fuse = pytest.mark.skipif(fuse_available() is not None, reason=str(fuse_available()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session: touch only the ones in tests/mount.
    reason = fuse_available()
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.mount)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


# --------------------------------------------------------------------------------------------
# small helpers


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = pred()
        except (OSError, AssertionError, RemoteError) as exc:
            value, last_exc = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def local_tree(root: str | os.PathLike[str], skip_top: tuple[str, ...] = (".ai",)) -> dict[str, str]:
    """``{relative path: "dir" | sha256}`` of everything below ``root``.

    ``.ai`` at the top of a mount is a virtual directory that never reaches the server,
    so it is left out by default.
    """
    root = Path(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip_top]
            filenames = [f for f in filenames if f not in skip_top]
        for d in dirnames:
            out[str(rel_dir / d)] = "dir"
        for f in filenames:
            out[str(rel_dir / f)] = sha256_file(Path(dirpath) / f)
    return out


def tree_diff(a: dict[str, str], b: dict[str, str]) -> str:
    """A readable summary of how two trees differ (empty when equal)."""
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            lines.append(f"  {k}: {a.get(k, '<missing>')[:12]} != {b.get(k, '<missing>')[:12]}")
    return "\n".join(lines[:40])


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def opts_to_args(*args: str, **opts: Any) -> list[str]:
    """``write_back=60, read_only=True`` -> ``["--write-back", "60", "--read-only"]``."""
    out = [str(a) for a in args]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        else:
            out += [flag, str(value)]
    return out


# --------------------------------------------------------------------------------------------
# the server, seen directly over HTTP


class RemoteError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


class _WaitOn429(httpx.BaseTransport):
    """The test's own view of the server shares the account's rate limits with the mount:
    a request refused with 429 waits for the window (1, 2, 4 ... s, a minute at most) and is
    sent again, as the mount's client does. Only requests with an in-memory body are resent."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        delay, waited = 1.0, 0.0
        while True:
            response = self._inner.handle_request(request)
            resendable = isinstance(request.stream, httpx.ByteStream)
            if response.status_code != 429 or not resendable or waited >= 60:
                return response
            response.close()
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 10.0)

    def close(self) -> None:
        self._inner.close()


class RemoteView:
    """A synchronous view of the server relative to the mount root.

    Speaks the documented legacy API (``/stat``, ``/readdir``, ``/read``, ``/batch``,
    ``/mkdir``, ``/delete``, ``/df``) with httpx. Missing entries raise
    :class:`FileNotFoundError`, so tests read like local file checks.
    """

    def __init__(self, url: str, token: str, root: str) -> None:
        self.root = "/" + root.strip("/")
        # The token only travels in this header; httpx never puts headers in a repr.
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(120.0, connect=10.0),
            transport=_WaitOn429(local_http.transport()),
        )

    def __repr__(self) -> str:
        return f"RemoteView(root={self.root!r})"

    def close(self) -> None:
        self._http.close()

    def abspath(self, rel: str | os.PathLike[str] = "") -> str:
        rel = os.fspath(rel).strip("/")
        return self.root if not rel else f"{self.root}/{rel}"

    def _check(self, resp: httpx.Response, rel: str | os.PathLike[str]) -> httpx.Response:
        if resp.status_code == 404:
            raise FileNotFoundError(2, "not on the server", self.abspath(rel))
        if resp.status_code >= 300:
            raise RemoteError(resp.status_code, resp.text)
        return resp

    def stat(self, rel: str | os.PathLike[str] = "") -> dict[str, Any]:
        resp = self._http.post("/stat", json={"path": self.abspath(rel)})
        return self._check(resp, rel).json()

    def exists(self, rel: str | os.PathLike[str]) -> bool:
        try:
            self.stat(rel)
        except FileNotFoundError:
            return False
        return True

    def is_dir(self, rel: str | os.PathLike[str]) -> bool:
        return bool(self.stat(rel)["is_dir"])

    def read(self, rel: str | os.PathLike[str]) -> bytes:
        resp = self._http.get("/read", params={"file": self.abspath(rel)})
        return self._check(resp, rel).content

    def sha256(self, rel: str | os.PathLike[str]) -> str:
        """Hash of a (possibly large) file, streamed rather than held in memory."""
        h = hashlib.sha256()
        with self._http.stream("GET", "/read", params={"file": self.abspath(rel)}) as resp:
            if resp.status_code >= 300:
                resp.read()
                self._check(resp, rel)
            for chunk in resp.iter_bytes(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def entries(self, rel: str | os.PathLike[str] = "") -> list[dict[str, Any]]:
        resp = self._http.post("/readdir", json={"path": self.abspath(rel)})
        body = self._check(resp, rel).json()
        return body["items"] if isinstance(body, dict) else body

    def listdir(self, rel: str | os.PathLike[str] = "") -> list[str]:
        return sorted(e["name"] for e in self.entries(rel))

    def write(self, rel: str | os.PathLike[str], data: bytes) -> dict[str, Any]:
        """Create or replace a file (creating missing parent directories), like another client would."""
        path = self.abspath(rel)
        parent, name = path.rsplit("/", 1)
        op = {
            "op": "write",
            "path": parent or "/",
            "name": name,
            "item_upload_id": 0,
            "overwrite": True,
            "dedupe_name": False,
            "create_missing_parents": True,
        }
        info = {"name": name, "type": "application/octet-stream", "size": len(data)}
        resp = self._http.post(
            "/batch",
            data={"operation": json.dumps(op), "fileinfo": json.dumps(info)},
            files={"file": (name, data, "application/octet-stream")},
        )
        body = self._check(resp, rel).json()
        result = body["results"][0]
        if resp.status_code != 200 or result.get("error"):
            raise RemoteError(resp.status_code, json.dumps(result))
        return result

    def mkdir(self, rel: str | os.PathLike[str]) -> dict[str, Any]:
        resp = self._http.post("/mkdir", json={"path": self.abspath(rel), "create_missing_parents": True})
        return self._check(resp, rel).json()

    def delete(self, rel: str | os.PathLike[str]) -> None:
        if not os.fspath(rel).strip("/"):
            raise ValueError("refusing to delete the home directory")
        resp = self._http.post("/delete", json={"path": self.abspath(rel)})
        self._check(resp, rel)

    def df(self) -> dict[str, int]:
        resp = self._http.post("/df", json={})
        return self._check(resp, "").json()

    def last_change(self) -> int:
        resp = self._http.get("/cache/last-change-timestamp")
        return int(self._check(resp, "").json()["timestamp"])

    def tree(self, rel: str | os.PathLike[str] = "") -> dict[str, str]:
        """``{path relative to rel: "dir" | sha256}`` of the server's subtree, like :func:`local_tree`."""
        out: dict[str, str] = {}
        base = os.fspath(rel).strip("/")
        todo = [""]
        while todo:
            sub = todo.pop()
            for e in self.entries(f"{base}/{sub}" if base else sub):
                child = f"{sub}/{e['name']}" if sub else e["name"]
                if e["is_dir"]:
                    out[child] = "dir"
                    todo.append(child)
                else:
                    out[child] = self.sha256(f"{base}/{child}" if base else child)
        return out


# --------------------------------------------------------------------------------------------
# the daemon


class MountProcess:
    """One ``python -m puterfs mount MP --foreground`` daemon."""

    def __init__(
        self,
        mountpoint: Path,
        *,
        url: str,
        token_file: Path,
        cache_dir: Path,
        xdg_root: Path,
        log_path: Path,
        extra: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.mountpoint = Path(mountpoint)
        self.url = url
        self.token_file = Path(token_file)
        self.cache_dir = Path(cache_dir)
        self.xdg_root = Path(xdg_root)
        self.log_path = Path(log_path)
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = False  # set by stop()/kill(): any other exit is a crash
        self.env = dict(os.environ)
        # The token comes from --token-file only; never from the test runner's environment.
        for var in ("PUTER_TOKEN", "PUTER_API_URL", "PUTER_WEB_URL"):
            self.env.pop(var, None)
        self.env.update(
            XDG_RUNTIME_DIR=str(self.xdg_root / "run"),
            XDG_CONFIG_HOME=str(self.xdg_root / "config"),
            XDG_CACHE_HOME=str(self.xdg_root / "cache"),
            XDG_DATA_HOME=str(self.xdg_root / "data"),
            PYTHONUNBUFFERED="1",
        )
        # Run the puterfs the tests import, installed or not (cwd is a scratch dir).
        src_root = str(Path(puterfs.__file__).resolve().parent.parent)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [src_root, self.env.get("PYTHONPATH")]))
        for var in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
            Path(self.env[var]).mkdir(parents=True, exist_ok=True, mode=0o700)

    def __repr__(self) -> str:
        return f"MountProcess({str(self.mountpoint)!r}, pid={self.proc.pid if self.proc else None})"

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "puterfs", "mount", str(self.mountpoint), "--foreground",
            "--api-url", self.url,  # the web URL goes with it (api.<domain> -> <domain>)
            "--token-file", str(self.token_file),
            "--cache-dir", str(self.cache_dir),
            "--write-back", WRITE_BACK,
            "--poll-interval", POLL_INTERVAL,
            *self.extra,
        ]  # fmt: skip

    @property
    def state_file(self) -> Path:
        # The daemon's own XDG environment decides where the file is: ask config with it.
        with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": self.env["XDG_RUNTIME_DIR"]}):
            return config.mount_state_file(self.mountpoint)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def daemon_pid(self) -> int:
        """The pid serving the mount (the state file's, which is the foreground process itself)."""
        st = self.state()
        return int(st["pid"]) if st and st.get("pid") else self.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no log>"

    def start(self) -> MountProcess:
        assert not self.alive(), "already running"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== start {' '.join(self.extra)} =====\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=str(self.xdg_root),
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> MountProcess:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if not self.alive():
                rc = self.proc.returncode if self.proc else None
                self.expected_exit = True  # reported here, not again at teardown
                pytest.fail(f"mount daemon exited (rc={rc}) before the mount was ready; log:\n{self.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mount not ready after {timeout}s; log:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: the daemon uploads everything pending, unmounts, removes its state file, exits 0."""
        assert self.proc is not None
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"daemon did not exit within {timeout}s of SIGTERM; log:\n{self.log_text()}")
        rc = self.proc.returncode
        assert rc == 0, f"daemon exited with {rc} after SIGTERM; log:\n{self.log_text()}"
        assert not os.path.ismount(self.mountpoint), "still mounted after the daemon exited"
        assert not self.state_file.exists(), "state file left behind after a clean exit"
        return rc

    def kill(self) -> None:
        """SIGKILL (no chance to upload anything), then lazily unmount the dead mount."""
        self.expected_exit = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.force_unmount()

    def force_unmount(self) -> None:
        if os.path.ismount(self.mountpoint) or _is_dead_mount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)

    def crashed(self) -> bool:
        """The daemon exited although nobody asked it to."""
        return self.proc is not None and self.proc.poll() is not None and not self.expected_exit

    def cleanup(self) -> None:
        """Teardown: whatever happened, leave no process and no mount behind."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
        self.force_unmount()

    def state(self) -> dict[str, Any] | None:
        """The daemon's state file, or None when it is absent (or caught mid-rewrite)."""
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def wait_state(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            if not self.alive():
                pytest.fail(f"daemon died while waiting for {what}; log:\n{self.log_text()}")
            st = self.state()
            if st is not None and pred(st):
                return st
            time.sleep(0.1)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; last state {st}; log:\n{self.log_text()}")

    def wait_uploaded(self, timeout: float = 60.0, settle: float = 1.0) -> dict[str, Any]:
        """Wait until the state file shows nothing pending and nothing uploading.

        The state file is rewritten at most a few times per second, so a zero read right
        after a write may predate it: the zero must hold for ``settle`` seconds.
        """
        deadline = time.monotonic() + timeout
        zero_since: float | None = None
        st: dict[str, Any] | None = None
        while True:
            if not self.alive():
                pytest.fail(f"daemon died while waiting for uploads; log:\n{self.log_text()}")
            st = self.state()
            now = time.monotonic()
            if st is not None and st.get("pending") == 0 and st.get("uploading") == 0:
                zero_since = zero_since if zero_since is not None else now
                if now - zero_since >= settle:
                    return st
            else:
                zero_since = None
            if now > deadline:
                pytest.fail(f"uploads not done after {timeout}s; last state {st}; log:\n{self.log_text()}")
            time.sleep(0.1)

    def vm_hwm_kib(self) -> int:
        return proc_status_kib(self.daemon_pid(), "VmHWM")


def _is_dead_mount(path: Path) -> bool:
    """A FUSE mount whose daemon died answers ENOTCONN and is not reported by ismount."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno in (107, 103)  # ENOTCONN, ECONNABORTED
    return False


# --------------------------------------------------------------------------------------------
# fixtures


class MountedFs:
    """A running mount plus what a test needs around it."""

    def __init__(self, factory: MountFactory, proc: MountProcess, user: Any, emulator: Any, remote: RemoteView):
        self._factory = factory
        self.proc = proc
        self.user = user
        self.emulator = emulator
        self.remote = remote

    def __repr__(self) -> str:
        return f"MountedFs({str(self.path)!r})"

    @property
    def path(self) -> Path:
        return self.proc.mountpoint

    @property
    def cache_dir(self) -> Path:
        return self.proc.cache_dir

    def wait_uploaded(self, timeout: float = 60.0) -> dict[str, Any]:
        return self.proc.wait_uploaded(timeout)

    def stored_tree(self, rel: str = "") -> dict[str, str]:
        """What the server stores below ``rel`` (mount-relative), like ``remote.tree``, but read
        from the emulator's store: no API reads, so a check of hundreds of files does not wait
        minutes for the account's read budget (temp tier: 120 reads a minute)."""
        return self.emulator.tree(f"{self._factory.home}/{rel}" if rel else self._factory.home)

    def remount(self, *args: str, **opts: Any) -> MountedFs:
        """Graceful stop, then a new daemon on the same mountpoint and cache dir."""
        self.proc.stop()
        self.proc = self._factory.spawn(self.path, self.cache_dir, opts_to_args(*args, **opts))
        return self

    def kill_and_remount(self, *args: str, **opts: Any) -> MountedFs:
        """SIGKILL (nothing uploaded on the way out), then remount on the same cache dir."""
        self.proc.kill()
        assert not os.path.ismount(self.path)
        self.proc = self._factory.spawn(self.path, self.cache_dir, opts_to_args(*args, **opts))
        return self


class MountFactory:
    def __init__(self, tmp: Path, user: Any, emulator: Any) -> None:
        self.tmp = tmp
        self.user = user
        self.emulator = emulator
        self.procs: list[MountProcess] = []
        self.remotes: list[RemoteView] = []
        self.token_file = tmp / "token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(user.token + "\n")
        self._n = 0

    @property
    def url(self) -> str:
        return getattr(self.user, "url", None) or self.emulator.url

    @property
    def home(self) -> str:
        return getattr(self.user, "home", None) or f"/{self.user.username}"

    def remote(self) -> RemoteView:
        r = RemoteView(self.url, self.user.token, self.home)
        self.remotes.append(r)
        return r

    def spawn(self, mountpoint: Path, cache_dir: Path, extra: list[str]) -> MountProcess:
        self._n += 1
        proc = MountProcess(
            mountpoint,
            url=self.url,
            token_file=self.token_file,
            cache_dir=cache_dir,
            xdg_root=self.tmp / "xdg",
            log_path=self.tmp / "mount.log",
            extra=extra,
        )
        self.procs.append(proc)
        proc.start()
        proc.wait_ready()
        return proc

    def __call__(
        self,
        *args: str,
        cache_dir: Path | None = None,
        mountpoint: Path | None = None,
        **opts: Any,
    ) -> MountedFs:
        """A new mount; ``args``/``opts`` become extra command-line options (``write_back=60``)."""
        mp = mountpoint or self.tmp / "mnt"
        cache = cache_dir or self.tmp / f"cache{self._n}"
        proc = self.spawn(mp, cache, opts_to_args(*args, **opts))
        return MountedFs(self, proc, self.user, self.emulator, self.remote())

    def close(self) -> list[str]:
        """Stop and unmount everything; returns a report of daemons that had crashed."""
        crashes = [
            f"{p!r} exited with {p.proc.returncode if p.proc else None} unasked; log:\n{p.log_text()}"
            for p in self.procs
            if p.crashed()
        ]
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.cleanup()
        for r in self.remotes:
            r.close()
        return crashes


@pytest.fixture
def mount_factory(tmp_path: Path, puter_user: Any, emulator: Any) -> Iterator[MountFactory]:
    if (reason := fuse_available()) is not None:
        pytest.skip(reason)
    factory = MountFactory(tmp_path, puter_user, emulator)
    try:
        yield factory
    finally:
        crashes = factory.close()
    if crashes:
        pytest.fail("mount daemon died during the test:\n" + "\n".join(crashes))


@pytest.fixture
def mount(mount_factory: MountFactory) -> Iterator[MountedFs]:
    """A mounted home of a fresh temp user (write-back 0.3 s, poll 0.5 s).

    The teardown stops the daemon with SIGTERM and checks it exits cleanly (code 0,
    unmounted, state file removed); whatever happens, nothing stays mounted.
    """
    m = mount_factory()
    yield m
    if m.proc.alive():
        m.proc.stop()
