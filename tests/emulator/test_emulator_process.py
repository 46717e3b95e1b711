"""The emulator as a process: start-up, restart persistence, fault injection over HTTP."""

from __future__ import annotations

import json
import os
import threading
import time

import anyio
import httpx
import pytest

from puterfs.emulator import Emulator
from puterfs.emulator.auth import totp
from puterfs.emulator.testing import EmulatorProcess, local_http


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_starts_fast_and_persists_across_restart(tmp_path) -> None:  # noqa: ANN001
    emu = EmulatorProcess(tmp_path / "data")
    emu.start()
    try:
        # The work it does to start, not the wall time (which grows with the machine's load).
        assert _cpu_seconds(emu.proc.pid) < 2.0
        assert (tmp_path / "data" / "token").stat().st_mode & 0o777 == 0o600
        assert emu.token not in " ".join(map(str, emu.proc.args))  # never in argv
        h = {"Authorization": f"Bearer {emu.token}"}
        body = {"fileMetadata": {"path": "~/keep.txt", "size": 5}, "fileContent": "kept!", "encoding": "utf8"}
        assert local_http.post(emu.url + "/fs/write", json=body, headers=h).status_code == 200
        old_token = emu.token
        assert emu.stop() == 0  # SIGTERM stops it cleanly
        emu.start()
        assert emu.token == old_token
        got = local_http.get(emu.url + "/read", params={"file": f"/{emu.username}/keep.txt"}, headers=h)
        assert got.status_code == 200 and got.content == b"kept!"
    finally:
        emu.close()


def test_otp_user_login(tmp_path) -> None:  # noqa: ANN001
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    with EmulatorProcess(tmp_path / "d", otp_secret=secret) as emu:
        r = local_http.post(emu.web_url + "/login", json={"username": emu.username, "password": emu.password})
        assert r.status_code == 202 and r.json()["next_step"] == "otp"
        otp_token = r.json()["otp_jwt_token"]
        wrong = local_http.post(emu.web_url + "/login/otp", json={"token": otp_token, "code": "000000"})
        assert wrong.json() == {"proceed": False}
        ok = local_http.post(emu.web_url + "/login/otp", json={"token": otp_token, "code": totp(secret)})
        assert ok.status_code == 200 and ok.json()["token"]


def test_fault_status_with_retry_after_and_count(emulator, puter_user) -> None:  # noqa: ANN001
    h = {"Authorization": f"Bearer {puter_user.token}"}
    emulator.set_faults({"method": "POST", "path": "/stat", "status": 503, "retry_after": 2, "count": 2})
    for _ in range(2):
        r = local_http.post(emulator.url + "/stat", json={"path": "~"}, headers=h)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert local_http.post(emulator.url + "/stat", json={"path": "~"}, headers=h).status_code == 200


def test_fault_drop_and_latency(emulator, puter_user) -> None:  # noqa: ANN001
    h = {"Authorization": f"Bearer {puter_user.token}"}
    emulator.set_faults({"path": "/readdir", "drop": True})
    with pytest.raises(httpx.TransportError):
        local_http.post(emulator.url + "/readdir", json={"path": "~"}, headers=h)
    emulator.set_faults({"path": "/read*", "latency": 0.3})
    t0 = time.monotonic()
    assert local_http.post(emulator.url + "/readdir", json={"path": "~"}, headers=h).status_code == 200
    assert time.monotonic() - t0 >= 0.3


def test_fault_stall_until_release(emulator, puter_user) -> None:  # noqa: ANN001
    h = {"Authorization": f"Bearer {puter_user.token}"}
    emulator.set_faults({"path": "/whoami", "stall": True, "status": 503})
    result: dict[str, object] = {}

    def call() -> None:
        result["status"] = local_http.get(emulator.url + "/whoami", headers=h, timeout=30).status_code

    t = threading.Thread(target=call)
    t.start()
    t.join(0.5)
    assert t.is_alive()  # still stalled
    emulator.release()
    t.join(10)
    assert result["status"] == 503
    emulator.clear_faults()
    assert local_http.get(emulator.url + "/whoami", headers=h).status_code == 200


def test_admin_log_bodies_of_driver_calls(emulator, puter_user) -> None:  # noqa: ANN001
    emulator.clear_log()
    body = {"interface": "puter-chat-completion", "method": "list", "args": {}}
    local_http.post(emulator.url + "/drivers/call", json=body, headers={"Authorization": f"Bearer {puter_user.token}"})
    entries = [e for e in emulator.log(bodies=True) if e["path"] == "/drivers/call"]
    assert entries and entries[-1]["body"] == body
    assert "body" not in [e for e in emulator.log() if e["path"] == "/drivers/call"][-1]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_in_process_app_under_both_backends(tmp_path, backend: str) -> None:  # noqa: ANN001
    emu = Emulator(tmp_path / backend)

    async def run() -> None:
        transport = httpx.ASGITransport(app=emu.app)
        h = {"Authorization": f"Bearer {emu.token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api.puter.localhost", headers=h) as c:
            files = [("operation", (None, json.dumps({"op": "write", "path": "~", "name": "z.txt",
                                                      "dedupe_name": False}))),
                     ("file", ("z.txt", b"zzz", "text/plain"))]
            assert (await c.post("/batch", files=files)).status_code == 200
            assert (await c.get("/read", params={"file": "~/z.txt"})).content == b"zzz"
            emu.faults.add(path="/stat", drop=True)
            with pytest.raises(httpx.TransportError):
                await c.post("/stat", json={"path": "~"})

    try:
        anyio.run(run, backend=backend)
    finally:
        emu.store.close()
