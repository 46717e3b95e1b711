"""Test helpers: run the emulator as a real subprocess on a loopback port.

``EmulatorProcess`` starts ``python -m puterfs.emulator --port 0 --data DIR``, waits for
its READY line and offers the admin helpers (faults, release, capacity, request log)
plus ``new_user()`` for per-test temp users.  ``stop()``/``start()`` restart on the
same data directory (same port when it is still free).

Like a real Puter server the emulator answers its names, not its address (a request whose
``Host`` is an IP address gets 404): ``url`` is ``http://api.puter.localhost:PORT``,
``web_url`` ``http://puter.localhost:PORT``. puterfs's client reaches ``*.localhost`` by
itself; test code that talks HTTP on its own uses :data:`local_http` (httpx's functions and
clients, with ``*.localhost`` connected to 127.0.0.1 and the ``Host`` header kept) or
``EmulatorProcess.local`` (the same, plus the emulator's ``--domain`` when it is another name).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from puterfs.client._hosts import LOOPBACK, HostRoutingTransport, SyncHostRoutingTransport

READY_TIMEOUT = 20.0
DEFAULT_DOMAIN = "puter.localhost"


class LocalHTTP:
    """httpx's top-level API (``get``, ``post``, ``request``, ``stream``, ``Client``,
    ``AsyncClient``) with ``*.localhost`` names, and the names under ``domains``, connected to
    their address (see ``puterfs/client/_hosts.py``): what a browser or curl does with
    ``--resolve``. A ``transport=`` given to ``Client``/``AsyncClient`` is used as it is."""

    def __init__(self, domains: dict[str, str] | None = None) -> None:
        self.domains = dict(domains or {})

    def transport(self) -> httpx.BaseTransport:
        return SyncHostRoutingTransport(None, self.domains)

    def async_transport(self) -> httpx.AsyncBaseTransport:
        return HostRoutingTransport(httpx.AsyncHTTPTransport(trust_env=True), self.domains)

    def Client(self, **kw: Any) -> httpx.Client:  # noqa: N802 - httpx's name
        kw.setdefault("transport", self.transport())
        return httpx.Client(**kw)

    def AsyncClient(self, **kw: Any) -> httpx.AsyncClient:  # noqa: N802 - httpx's name
        kw.setdefault("transport", self.async_transport())
        return httpx.AsyncClient(**kw)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        kw.setdefault("timeout", 5.0)  # httpx's default
        with self.Client() as client:
            return client.request(method, url, **kw)

    @contextlib.contextmanager
    def stream(self, method: str, url: str, **kw: Any) -> Iterator[httpx.Response]:
        kw.setdefault("timeout", 5.0)
        with self.Client() as client, client.stream(method, url, **kw) as resp:
            yield resp

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("HEAD", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", url, **kw)


local_http = LocalHTTP()


class EmulatorError(RuntimeError):
    pass


class EmulatorProcess:
    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        username: str = "puter",
        password: str = "puterpass",
        otp_secret: str | None = None,
        extra_args: list[str] | None = None,
        port: int = 0,
        tier: str | None = None,
        domain: str = DEFAULT_DOMAIN,
    ):
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="puterfs-emu-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.username = username
        self.password = password
        self.otp_secret = otp_secret
        self.extra_args = list(extra_args or [])
        if "--domain" in self.extra_args:
            domain = self.extra_args[self.extra_args.index("--domain") + 1]
        elif domain != DEFAULT_DOMAIN:
            self.extra_args += ["--domain", domain]
        self.domain = domain
        # test code's HTTP: *.localhost and this emulator's domain on loopback
        self.local = LocalHTTP({domain: LOOPBACK})
        self.port = port
        # None: $PUTERFS_EMULATOR_TIER (the test suite sets it in one place, tests/conftest.py),
        # else the emulator's own default (free)
        self.tier = tier if tier is not None else (os.environ.get("PUTERFS_EMULATOR_TIER") or None)
        self.url = ""  # the API URL, by name: http://api.<domain>:<port>
        self.token = ""
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self._client: httpx.Client | None = None

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> EmulatorProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        port = self.port
        try:
            return self._start(port)
        except EmulatorError:
            if port == 0:
                raise
            return self._start(0)  # the old port was taken meanwhile: take a new one

    def _start(self, port: int) -> EmulatorProcess:
        cmd = [sys.executable, "-m", "puterfs.emulator", "--port", str(port), "--data", str(self.data_dir),
               "--user", self.username, "--password", self.password, *self.extra_args]
        if self.tier is not None:
            cmd += ["--tier", self.tier]
        if self.otp_secret:
            cmd += ["--otp-secret", self.otp_secret]
        self._stderr = []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.proc = proc
        threading.Thread(target=self._drain, args=(proc.stderr, self._stderr), daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT
        assert proc.stdout is not None
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=5)
                raise EmulatorError(f"emulator exited ({proc.returncode}) before READY:\n{''.join(self._stderr)}")
            if line.startswith("READY "):
                url = line.split()[1]
                break
        if url is None:
            self._kill()
            raise EmulatorError(f"emulator not READY in {READY_TIMEOUT}s:\n{''.join(self._stderr)}")
        threading.Thread(target=self._drain, args=(proc.stdout, None), daemon=True).start()
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        if url != self.api_url_for(self.port):
            self._kill()
            raise EmulatorError(f"emulator READY on {url}, not on {self.api_url_for(self.port)}")
        self.token = (self.data_dir / "token").read_text().strip()
        secret_file = self.data_dir / "admin-secret"
        self.admin_secret = secret_file.read_text().strip() if secret_file.exists() else ""
        # the admin routes need the secret the emulator wrote into its data dir
        self._client = self.local.Client(base_url=self.url, timeout=30,
                                         headers={"X-Emulator-Secret": self.admin_secret})
        return self

    def api_url_for(self, port: int) -> str:
        return f"http://api.{self.domain}:{port}"

    @property
    def web_url(self) -> str:
        """The root (GUI) host: ``/login``, ``/signup``, the AuthMe pages."""
        return f"http://{self.domain}:{self.port}"

    @property
    def address_url(self) -> str:
        """``http://127.0.0.1:<port>``: where it listens. Requests must still carry one of its
        names as ``Host`` (a client's ``--domain``), or get 404."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def api_host(self) -> str:
        """The ``Host`` header of the API: ``api.<domain>:<port>``."""
        return f"api.{self.domain}:{self.port}"

    @staticmethod
    def _drain(stream: Any, sink: list[str] | None) -> None:
        for line in stream:
            if sink is not None and len(sink) < 2000:
                sink.append(line)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self._client is not None:
            self._client.close()
            self._client = None
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        return proc.returncode

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    # --- admin helpers ---------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        if self._client is None:
            raise EmulatorError("emulator is not running")
        return self._client

    def _admin(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, "/_emulator/" + path, **kw)
        resp.raise_for_status()
        return resp.json()

    def set_faults(self, *rules: dict[str, Any]) -> None:
        self._admin("POST", "faults", json={"rules": list(rules)})

    def clear_faults(self) -> None:
        self._admin("DELETE", "faults")

    def release(self) -> None:
        self._admin("POST", "release")

    def set_capacity(self, n: int | None) -> None:
        self._admin("POST", "disk", json={"capacity": n})

    def set_captcha(self, enabled: bool) -> None:
        """Make /login and /signup want a captcha, as puter.com does (AuthMe still works)."""
        self._admin("POST", "captcha", json={"enabled": enabled})

    def revoke(self, token: str) -> None:
        """Revoke one token (as revoking a session on the real server does)."""
        self._admin("POST", "revoke", json={"token": token})

    def advance_clock(self, seconds: float) -> float:
        """Move the emulator's clock forward (upload expiries, rate windows); returns the offset."""
        return self._admin("POST", "clock", json={"advance": seconds})["offset"]

    def log(self, bodies: bool = False) -> list[dict[str, Any]]:
        return self._admin("GET", "log" + ("?bodies=1" if bodies else ""))

    def tree(self, path: str) -> dict[str, str]:
        """``{path relative to path: "dir" | sha256}`` of what the server stores below ``path``
        (read from its store: no rate limits, no faults)."""
        return self._admin("GET", "tree", params={"path": path})["tree"]

    def clear_log(self) -> None:
        self._admin("DELETE", "log")

    def sockets(self) -> list[dict[str, Any]]:
        """The emulator's socket.io sessions (transport, connected)."""
        return self._admin("GET", "sockets")["sessions"]

    def drop_sockets(self) -> int:
        """Drop every socket.io connection at once; returns how many there were."""
        return self._admin("DELETE", "sockets")["dropped"]

    def set_event_delay(self, seconds: float) -> None:
        """Send every change event this late (0: at once; the ones held go out in order)."""
        self._admin("POST", "sockets", json={"event_delay": seconds})

    def new_user(self, temp: bool = True) -> tuple[str, str]:
        """A fresh user, made as ``/signup`` makes one (a temp user, or with ``temp=False`` a
        confirmed signed-up one) but through the admin route, so tests that make many users
        do not meet /signup's window (10 per 15 min): (username, token)."""
        body = self._admin("POST", "users", json={"temp": temp})
        return body["username"], body["token"]

    def suspend(self, username: str, suspended: bool = True) -> None:
        """Suspend (or reinstate) an account, as an administrator does."""
        self._admin("POST", "suspend", json={"username": username, "suspended": suspended})

    def set_tier(self, tier: str, reset: bool = False) -> None:
        """Change the rate-limit tier at runtime (``reset`` clears every window and counter)."""
        self.tier = tier
        self._admin("POST", "tier", json={"tier": tier, "reset": reset})

    def __repr__(self) -> str:  # never show the token
        return f"EmulatorProcess(url={self.url!r}, user={self.username!r}, data={str(self.data_dir)!r})"
