"""What the daemon tells systemd (sd_notify over $NOTIFY_SOCKET) and --log-file."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

from mount_testlib import MountProcess

UPLOAD_PATHS = ("/batch", "/fs/write", "/fs/batchWrite", "/fs/startWrite", "/fs/completeWrite", "/writeFile")
UPLOADS_FAIL = [{"path": p, "status": 500, "message": "injected: uploads fail"} for p in UPLOAD_PATHS]


def _messages(sock: socket.socket, until: str, timeout: float = 30) -> list[str]:
    got: list[str] = []
    sock.settimeout(timeout)
    while not any(until in m for m in got):
        got.append(sock.recv(4096).decode())
    return got


def test_ready_status_while_draining_and_stopping(mount_factory: Any, tmp_path: Path) -> None:
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    log_file = tmp_path / "logs" / "daemon.log"
    proc = MountProcess(
        tmp_path / "mnt", url=mount_factory.url, token_file=mount_factory.token_file,
        cache_dir=tmp_path / "cache", xdg_root=tmp_path / "xdg", log_path=tmp_path / "stdout.log",
        extra=["--log-file", str(log_file)],
    )  # fmt: skip
    proc.env["NOTIFY_SOCKET"] = addr
    mount_factory.procs.append(proc)
    emulator = mount_factory.emulator
    try:
        proc.start().wait_ready()
        assert any("READY=1" in m for m in _messages(sock, "READY=1"))
        (proc.mountpoint / "slow.txt").write_text("wait for me\n")
        emulator.set_faults(*UPLOADS_FAIL)
        assert proc.proc is not None
        proc.expected_exit = True
        proc.proc.send_signal(signal.SIGTERM)
        got = _messages(sock, "STATUS=uploading 1 pending file(s)")
        assert any("STOPPING=1" in m for m in got), got
        emulator.clear_faults()
        assert proc.proc.wait(60) == 0
    finally:
        emulator.clear_faults()
        sock.close()
    text = log_file.read_text()
    assert "mounted " in text and "stopping (SIGTERM): uploading 1 pending file(s) first" in text
    assert "mounted " not in proc.log_text()  # the log went to the file, not to stderr
