"""`puterfs login` end to end in a real browser: headless Chromium (Debian's, driven by
playwright-core on the machine's Node; `make deps` installs both) opens the URL the CLI
printed, signs in on the emulator's AuthMe page, approves; the CLI saves the token, and
that token then mounts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_signin import start_browser_login, wait_for_url

from puterfs.emulator.testing import EmulatorProcess, local_http

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("authme_chromium.cjs")
PLAYWRIGHT = REPO / ".tools" / "node" / "node_modules" / "playwright-core"
CHROMIUM = os.environ.get("PUTERFS_CHROMIUM", "/usr/bin/chromium")


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (make deps installs Debian's chromium)"
    if shutil.which("node") is None:
        return "node is missing"
    if not PLAYWRIGHT.is_dir():
        return f"{PLAYWRIGHT} is missing (make deps installs playwright-core)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def captcha_emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("chromium-captcha-emu"), username="erin", password="erinpass",
                         extra_args=["--captcha"]) as proc:
        yield proc


def run_chromium(url: str, username: str, password: str, profile: Path) -> dict:
    env = dict(os.environ, PUTERFS_PLAYWRIGHT=str(PLAYWRIGHT), PUTERFS_CHROMIUM=CHROMIUM)
    res = subprocess.run(["node", str(DRIVER), url, username, password, str(profile)], capture_output=True,
                         text=True, env=env, timeout=180)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert lines, f"driver said nothing (rc {res.returncode}):\n{res.stdout}\n{res.stderr}"
    out = json.loads(lines[-1])
    assert out["ok"], out.get("error")
    return out


def browser_login(env: dict[str, str], url: str, username: str, password: str, profile: Path) -> tuple[dict, str]:
    proc = start_browser_login(env, url, "--browser", "--no-browser")
    try:
        sign_in_url, printed = wait_for_url(proc)
        seen = run_chromium(sign_in_url, username, password, profile)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, printed + err
    return seen, out


def test_login_in_headless_chromium_then_mount(cli_env, emulator, tmp_path) -> None:  # noqa: ANN001
    # the emulator's web host is not puter.com, so choose the browser the way a user would
    env = dict(cli_env)
    proc = start_browser_login(env, emulator.url, "--browser", "--no-browser")
    try:
        url, printed = wait_for_url(proc)
        seen = run_chromium(url, emulator.username, emulator.password, tmp_path / "profile")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, printed + err
    assert "You can close this tab" in seen["text"] and seen["path"] == "/"
    assert seen["destination"].startswith("http://127.0.0.1:")
    assert out.strip() == f"Logged in as {emulator.username} on {emulator.url} (full-api-access token)"
    token = (Path(cli_env["XDG_CONFIG_HOME"]) / "puterfs" / "token").read_text().strip()
    assert token not in printed + out + err + json.dumps(seen)

    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("no FUSE here to mount with the new token")
    mp = tmp_path / "mnt"
    mp.mkdir()
    run = [sys.executable, "-m", "puterfs"]
    res = subprocess.run([*run, "mount", str(mp), "--cache-dir", str(tmp_path / "cache")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        (mp / "from-chromium-login.txt").write_bytes(b"mounted with the browser's token\n")
    finally:
        res = subprocess.run([*run, "umount", str(mp)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    r = local_http.get(f"{emulator.url}/read", params={"file": f"/{emulator.username}/from-chromium-login.txt"},
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and r.content == b"mounted with the browser's token\n"


def test_chromium_signs_in_on_a_server_that_refuses_scripted_login(cli_env, captcha_emu, tmp_path) -> None:  # noqa: ANN001
    # a script's password is refused with the one-line message ...
    res = subprocess.run([sys.executable, "-m", "puterfs", "login", "-u", "erin", "--api-url", captcha_emu.url],
                         input="erinpass\n", capture_output=True, text=True, env=cli_env, timeout=60)
    assert res.returncode == 1 and "--browser" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # ... and the person in the browser gets in (the page shows the captcha)
    seen, out = browser_login(dict(cli_env), captcha_emu.url, "erin", "erinpass", tmp_path / "profile")
    assert "You can close this tab" in seen["text"]
    assert "Logged in as erin" in out
