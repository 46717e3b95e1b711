"""`puterfs login` without a password: the browser flow (driven here by an HTTP client filling in
the AuthMe forms; the headless-Chromium run is test_cli_browser_login.py), --token-stdin, a server
that refuses scripted logins, PUTER_AUTH_TOKEN, and logout's warning about running mounts."""

from __future__ import annotations

import json
import os
import re
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import pytest

from puterfs import config
from puterfs.emulator.testing import EmulatorProcess, LocalHTTP, local_http

URL_RE = re.compile(r"(http://\S+/\?action=authme&redirectURL=\S+)")


@pytest.fixture(scope="module")
def captcha_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """An emulator that refuses scripted /login as puter.com does."""
    with EmulatorProcess(tmp_path_factory.mktemp("captcha-emu"), username="dave", password="davepass",
                         extra_args=["--captcha"]) as proc:
        yield proc


def _saved(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "puterfs" / "token"


def _field(page: str, name: str) -> str:
    m = re.search(rf"name='{name}' value='([^']*)'", page)
    assert m, f"no {name} in the page"
    return m.group(1)


def fill_in_authme(url: str, username: str, password: str, http: LocalHTTP = local_http) -> httpx.Response:
    """Sign in on the AuthMe page and approve, as a person would; returns the listener's page.
    ``http``: how the browser reaches names (``*.localhost`` by itself, as browsers do)."""
    with http.Client(timeout=30, follow_redirects=False) as b:
        page = b.get(url)
        form = {"step": "login", "username": username, "password": password}
        if "captchaToken" in page.text:
            form["captchaToken"] = _field(page.text, "captchaToken")
            form["captchaAnswer"] = re.search(r"<text[^>]*>(\w+)</text>", page.text).group(1)  # type: ignore[union-attr]
        assert b.post(url, data=form).status_code == 303
        page = b.get(url)
        r = b.post(url, data={"step": "authme", "form_key": _field(page.text, "form_key"), "decision": "approve"})
        assert r.status_code == 303
        return b.get(r.headers["location"])


def start_browser_login(env: dict[str, str], url: str, *extra: str) -> subprocess.Popen[str]:
    env = dict(env)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.pop("BROWSER", None)
    return subprocess.Popen(
        [sys.executable, "-m", "puterfs", "login", "--api-url", url, *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_for_url(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[str, str]:
    """Read stderr (raw, unbuffered) until the sign-in URL and the hint after it show;
    returns (url, what was read)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            text = seen.decode(errors="replace")
            m = URL_RE.search(text)
            if m and "Waiting for the browser" in text:
                return m.group(1), text
    raise AssertionError(f"no sign-in URL printed:\n{seen.decode(errors='replace')}")


def test_browser_login_saves_a_full_api_access_token(cli_env, emulator) -> None:  # noqa: ANN001
    proc = start_browser_login(cli_env, emulator.url, "--browser", "--no-browser")
    try:
        url, printed = wait_for_url(proc)
        answer = fill_in_authme(url, emulator.username, emulator.password)
        assert answer.status_code == 200 and "You can close this tab" in answer.text
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == f"Logged in as {emulator.username} on {emulator.url} (full-api-access token)"
    token = _saved(cli_env).read_text().strip()
    assert stat.S_IMODE(_saved(cli_env).stat().st_mode) == 0o600
    assert token not in printed + out + err
    port = re.search(r"127\.0\.0\.1%3A(\d+)", url).group(1)  # type: ignore[union-attr]
    assert f"ssh -L {port}:127.0.0.1:{port}" in printed + err
    r = local_http.get(f"{emulator.url}/whoami", headers={"Authorization": f"Bearer {token}"})
    assert r.json()["username"] == emulator.username


def test_browser_login_by_address_with_the_domain(cli_env, tmp_path: Path) -> None:  # noqa: ANN001
    """`--api-url <address> --domain <name>`: the browser is sent to the domain's AuthMe page (the
    server answers its names only) and the token is checked on api.<domain> at the address."""
    with EmulatorProcess(tmp_path / "emu", username="erin", password="erinpass", domain="puter.test") as emu:
        proc = start_browser_login(cli_env, emu.address_url, "--domain", "puter.test", "--browser", "--no-browser")
        try:
            url, _ = wait_for_url(proc)
            assert url.startswith(f"http://puter.test:{emu.port}/?action=authme&")
            answer = fill_in_authme(url, "erin", "erinpass", http=emu.local)  # a browser with DNS for puter.test
            assert answer.status_code == 200 and "You can close this tab" in answer.text
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert out.strip() == f"Logged in as erin on {emu.address_url} (full-api-access token)"
        with mock.patch.dict(os.environ, cli_env):
            assert config.load_account().domain == "puter.test"
        token = _saved(cli_env).read_text().strip()
        r = emu.local.get(f"{emu.url}/whoami", headers={"Authorization": f"Bearer {token}"})
        assert r.json()["username"] == "erin"


def test_browser_login_times_out_with_a_message(cli_env, emulator) -> None:  # noqa: ANN001
    proc = start_browser_login(cli_env, emulator.url, "--browser", "--no-browser", "--timeout", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "no sign-in came back from the browser within 1s" in err
    assert not _saved(cli_env).exists()


def test_token_stdin_checks_and_saves_the_token(run_cli, cli_env, emulator) -> None:  # noqa: ANN001
    with local_http.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.token}"}) as h:
        token = h.post("/auth/create-access-token", json={"permissions": ["full-api-access"]}).json()["token"]
    res = run_cli(["login", "--token-stdin", "--api-url", emulator.url], input=token + "\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"Logged in as {emulator.username} on {emulator.url} (full-api-access token)"
    assert _saved(cli_env).read_text().strip() == token
    assert token not in res.stdout + res.stderr
    status = run_cli(["status"])
    assert "full-api-access token" in status.stdout and token not in status.stdout
    assert json.loads(run_cli(["status", "--json"]).stdout)["account"]["token_kind"] == "full-api-access"


def test_token_stdin_refuses_a_bad_token_and_saves_nothing(run_cli, cli_env, emulator) -> None:  # noqa: ANN001
    res = run_cli(["login", "--token-stdin", "--api-url", emulator.url], input="aaa.bbb.ccc\n")
    assert res.returncode == 1 and "login failed: the server refused that token" in res.stderr
    assert "aaa.bbb.ccc" not in res.stderr
    res = run_cli(["login", "--token-stdin", "--api-url", emulator.url], input="two words\n")
    assert res.returncode == 1 and "not a token" in res.stderr
    assert not _saved(cli_env).exists()


@pytest.mark.parametrize("how", [["--password"], []])
def test_a_server_refusing_scripted_login_gets_a_one_line_message(
    run_cli, cli_env, captcha_emulator, how  # noqa: ANN001
) -> None:
    res = run_cli(["login", "-u", "dave", "--api-url", captcha_emulator.url, *how], input="davepass\n")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("puterfs: error: login failed: ")
    assert "captcha" in lines[0] and "--browser" in lines[0] and "?action=copyauth" in lines[0]
    assert not _saved(cli_env).exists()


def test_the_browser_flow_works_on_the_refusing_server(cli_env, captcha_emulator) -> None:  # noqa: ANN001
    proc = start_browser_login(cli_env, captcha_emulator.url, "--browser", "--no-browser")
    try:
        url, _ = wait_for_url(proc)
        fill_in_authme(url, "dave", "davepass")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Logged in as dave" in out


def test_puter_auth_token_is_read_too(run_cli, emulator) -> None:  # noqa: ANN001
    res = run_cli(["chat", "-m", "echo", "hello there", "--api-url", emulator.url],
                  env={"PUTER_AUTH_TOKEN": emulator.token})
    assert res.returncode == 0, res.stderr
    assert "hello there" in res.stdout
    res = run_cli(["chat", "-m", "echo", "hello there", "--api-url", emulator.url])
    assert res.returncode == 1 and "PUTER_AUTH_TOKEN" in res.stderr


def test_login_note_when_an_env_token_takes_precedence(run_cli, emulator) -> None:  # noqa: ANN001
    res = run_cli(["login", "--token-stdin", "--api-url", emulator.url], input=emulator.token + "\n",
                  env={"PUTER_AUTH_TOKEN": emulator.token})
    assert res.returncode == 0 and "PUTER_AUTH_TOKEN is set and takes precedence" in res.stderr


def test_logout_of_a_token_file_without_mounts_warns_nothing(run_cli, cli_env, emulator) -> None:  # noqa: ANN001
    run_cli(["login", "--token-stdin", "--api-url", emulator.url], input=emulator.new_user()[1] + "\n")
    res = run_cli(["logout", "--api-url", emulator.url])
    assert res.returncode == 0 and "warning" not in res.stderr
    assert not _saved(cli_env).exists()
    assert os.listdir(Path(cli_env["XDG_CONFIG_HOME"]) / "puterfs")  # config.json stays


def test_on_a_terminal_a_refused_password_falls_back_to_the_browser(cli_env, captcha_emulator) -> None:  # noqa: ANN001
    from test_cli_tty import Terminal

    env = {k: v for k, v in cli_env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    term = Terminal([sys.executable, "-m", "puterfs", "login", "-u", "dave", "--api-url", captcha_emulator.url], env)
    term.expect("Password for dave")
    term.send("davepass")
    term.expect("signing in with the browser instead")
    term.expect("Waiting for the browser")
    url = URL_RE.search(term.output).group(1)  # type: ignore[union-attr]
    fill_in_authme(url, "dave", "davepass")
    assert term.finish() == 0, term.output
    assert f"Logged in as dave on {captcha_emulator.url} (full-api-access token)" in term.output
    assert "davepass" not in term.output
    assert _saved(cli_env).read_text().strip() not in term.output


def test_browser_env_opens_the_url_and_a_browser_that_never_returns_does_not_block(cli_env, emulator, tmp_path) -> None:  # noqa: ANN001, E501
    seen = tmp_path / "browser-got"
    fake = tmp_path / "fake-browser"
    # a terminal browser: gets the URL, then runs until the person quits it
    fake.write_text(f"#!/bin/sh\necho \"$$ $1\" > {seen}.tmp && mv {seen}.tmp {seen}\nexec sleep 600 >/dev/null 2>&1 </dev/null\n")
    fake.chmod(0o755)
    env = {k: v for k, v in cli_env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["BROWSER"] = str(fake)
    proc = subprocess.Popen([sys.executable, "-m", "puterfs", "login", "--browser", "--api-url", emulator.url],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    browser_pid = None
    try:
        deadline = time.monotonic() + 30
        while not seen.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the browser was not started"
            time.sleep(0.05)
        pid_text, url = seen.read_text().split()
        browser_pid = int(pid_text)
        fill_in_authme(url, emulator.username, emulator.password)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if browser_pid:
            os.kill(browser_pid, 9)
    assert proc.returncode == 0, err
    assert "opening it in yours now" in err and url in err
    assert "Logged in as" in out
