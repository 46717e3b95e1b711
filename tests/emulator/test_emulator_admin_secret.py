"""The emulator's admin routes (request log with bodies, fault switches) answer only who can
read its data dir: a secret in DATA/admin-secret (0600, DATA 0700), sent as X-Emulator-Secret."""

from __future__ import annotations

import os
import stat

from puterfs.emulator.testing import EmulatorProcess, local_http


def test_admin_routes_need_the_secret_and_the_data_dir_is_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    old = os.umask(0)  # the modes must not depend on the caller's umask
    try:
        emu = EmulatorProcess(tmp_path / "data").start()
    finally:
        os.umask(old)
    try:
        for path in ("faults", "log", "disk"):
            r = local_http.get(f"{emu.url}/_emulator/{path}")
            assert r.status_code == 403, (path, r.status_code)
            r = local_http.get(f"{emu.url}/_emulator/{path}", headers={"X-Emulator-Secret": "wrong"})
            assert r.status_code == 403
        assert emu.http.get("/_emulator/faults").status_code == 200  # the test helper knows it
        data = tmp_path / "data"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for name in ("admin-secret", "token", "fs.sqlite3"):
            assert stat.S_IMODE((data / name).stat().st_mode) & 0o077 == 0, name
    finally:
        emu.stop()
