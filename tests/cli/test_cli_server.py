"""The CLI against the emulator over HTTP: login (with and without 2FA), logout, chat, models.

Every command runs as ``python -m puterfs`` in a subprocess with HOME and the XDG dirs in
the test's tmp dir (fixtures in this directory's conftest.py).
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from puterfs.emulator.testing import local_http


def _saved_token(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "puterfs" / "token"


def _whoami(url: str, token: str) -> httpx.Response:
    return local_http.get(f"{url}/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _login(run_cli, url: str, username: str, stdin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["login", "--username", username, "--api-url", url, *extra], input=stdin)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ login


def test_login_saves_a_private_token(run_cli, cli_env, emulator):
    res = _login(run_cli, emulator.url, emulator.username, emulator.password + "\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"Logged in as {emulator.username} on {emulator.url} (session token)"

    path = _saved_token(cli_env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert token
    # The token is a working one...
    me = _whoami(emulator.url, token)
    assert me.status_code == 200 and me.json()["username"] == emulator.username
    # ... and neither it nor the password ever showed up outside the file.
    for secret in (token, emulator.password):
        assert secret not in res.stdout + res.stderr
    account = json.loads((path.parent / "config.json").read_text())
    assert account == {
        "api_url": emulator.url,
        "web_url": emulator.web_url,  # api.<domain> -> <domain>, where /login is
        "username": emulator.username,
        "verify_tls": True,
    }

    status = run_cli(["status", "--json"])
    assert status.returncode == 0, status.stderr
    acc = json.loads(status.stdout)["account"]
    assert acc["token_present"] is True and acc["username"] == emulator.username
    assert acc["api_url"] == emulator.url
    assert token not in status.stdout + status.stderr

    # Later commands use the saved account and token without any option.
    chat = run_cli(["chat", "-m", "echo", "saved", "account"])
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == "saved account\n"

    out = run_cli(["logout"])
    assert out.returncode == 0, out.stderr
    assert not path.exists()
    assert json.loads(run_cli(["status", "--json"]).stdout)["account"]["token_present"] is False


def test_login_with_the_wrong_password(run_cli, cli_env, emulator):
    res = _login(run_cli, emulator.url, emulator.username, "certainly-not-it\n")
    assert res.returncode == 1
    assert "login failed: Incorrect password." in res.stderr
    assert not _saved_token(cli_env).exists()


def test_login_with_an_unknown_user(run_cli, cli_env, emulator):
    res = _login(run_cli, emulator.url, "no_such_user_here", "some-password\n")
    assert res.returncode == 1
    assert "login failed: Username not found." in res.stderr
    assert not _saved_token(cli_env).exists()


def test_login_to_an_unreachable_server(run_cli, cli_env):
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    res = _login(run_cli, url, "alice", "password1\n")
    assert res.returncode == 1
    assert f"login failed: cannot reach {url}" in res.stderr
    assert "Traceback" not in res.stderr
    assert time.monotonic() - started < 60
    assert not _saved_token(cli_env).exists()


def test_login_needs_a_password(run_cli, emulator):
    res = _login(run_cli, emulator.url, emulator.username, "")
    assert res.returncode == 1
    assert "password" in res.stderr


def test_2fa_login_with_otp_option(run_cli, cli_env, otp_emulator, totp):
    code = totp(otp_emulator.otp_secret)
    res = _login(run_cli, otp_emulator.url, "otpuser", "otp-password\n", "--otp", code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"Logged in as otpuser on {otp_emulator.url} (session token)"
    token = _saved_token(cli_env).read_text().strip()
    assert _whoami(otp_emulator.url, token).json()["username"] == "otpuser"


def test_2fa_login_with_code_on_stdin(run_cli, cli_env, otp_emulator, totp):
    code = totp(otp_emulator.otp_secret)
    res = _login(run_cli, otp_emulator.url, "otpuser", f"otp-password\n{code}\n")
    assert res.returncode == 0, res.stderr
    assert _saved_token(cli_env).exists()


def test_2fa_login_with_a_wrong_code(run_cli, cli_env, otp_emulator, wrong_totp):
    res = _login(run_cli, otp_emulator.url, "otpuser", "otp-password\n", "--otp", wrong_totp)
    assert res.returncode == 1
    assert "login failed: wrong OTP code" in res.stderr
    assert not _saved_token(cli_env).exists()


def test_2fa_login_without_a_code(run_cli, cli_env, otp_emulator):
    res = _login(run_cli, otp_emulator.url, "otpuser", "otp-password\n")
    assert res.returncode == 1
    assert "--otp" in res.stderr
    assert not _saved_token(cli_env).exists()


# ------------------------------------------------------------------------------ chat, models


@pytest.fixture
def user_env(puter_user, tmp_path) -> dict[str, str]:
    """Options and env for a fresh temp user given by --token-file (never in argv itself)."""
    token_file = tmp_path / "user-token"
    token_file.write_text(puter_user.token + "\n")
    return {"PUTER_API_URL": puter_user.url, "TOKEN_FILE": str(token_file)}


def _chat(run_cli, user_env, *args: str, input: str | None = "") -> subprocess.CompletedProcess[str]:
    return run_cli(
        ["chat", "--token-file", user_env["TOKEN_FILE"], *args],
        input=input,
        env={"PUTER_API_URL": user_env["PUTER_API_URL"]},
    )


def test_chat_echo_prints_the_prompt(run_cli, user_env, puter_user):
    res = _chat(run_cli, user_env, "--model", "echo", "hello", "from the", "CLI")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello from the CLI\n"
    assert puter_user.token not in res.stdout + res.stderr


def test_chat_prompt_from_stdin_with_a_system_message(run_cli, user_env):
    res = _chat(run_cli, user_env, "-m", "echo", "--system", "Be terse.", input="line one\nline two\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "line one\nline two\n"


def test_chat_without_streaming(run_cli, user_env):
    res = _chat(
        run_cli,
        user_env,
        "-m",
        "echo",
        "--no-stream",
        "--temperature",
        "0",
        "--max-tokens",
        "50",
        "all at once",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "all at once\n"


def test_chat_streams_before_the_answer_is_complete(cli_env, user_env, emulator):
    # Hold the stream after its first chunk: the CLI must already have printed that chunk.
    emulator.set_faults({"path": "/drivers/call", "stream_hold": True, "count": 1})
    env = dict(cli_env, PUTER_API_URL=user_env["PUTER_API_URL"])
    prompt = "one two three four five six seven eight nine ten"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "puterfs",
            "chat",
            "--token-file",
            user_env["TOKEN_FILE"],
            "-m",
            "echo",
            prompt,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no output while the stream was held"
        first = os.read(proc.stdout.fileno(), 65536).decode()
        assert first and prompt.startswith(first) and first != prompt
        assert proc.poll() is None  # still waiting for the rest of the stream
        emulator.release()
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert first + rest.decode() == prompt + "\n"
    finally:
        emulator.clear_faults()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_chat_error_in_the_middle_of_a_stream(run_cli, user_env, emulator):
    emulator.set_faults(
        {"path": "/drivers/call", "stream_error_after": 2, "count": 1, "message": "provider went away"}
    )
    try:
        res = _chat(run_cli, user_env, "-m", "echo", "a b c d e f g h i j k l")
    finally:
        emulator.clear_faults()
    assert res.returncode == 1
    assert "provider went away" in res.stderr


def test_chat_without_a_model_uses_gpt_5_nano(run_cli, user_env, emulator):
    emulator.clear_log()
    res = _chat(run_cli, user_env, "no model given")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "no model given\n"  # the emulator's gpt-5-nano stand-in echoes
    calls = [r for r in emulator.log(bodies=True) if r["path"] == "/drivers/call"]
    assert calls and calls[-1]["body"]["args"]["model"] == "gpt-5-nano"


def test_chat_with_an_unknown_model(run_cli, user_env):
    res = _chat(run_cli, user_env, "-m", "no-such-model-xyz", "hi")
    assert res.returncode == 1
    assert "Model not found: no-such-model-xyz" in res.stderr
    assert "Traceback" not in res.stderr


def test_chat_with_a_rejected_token(run_cli, tmp_path, emulator):
    bad = tmp_path / "bad-token"
    bad.write_text("xyz.abc.def\n")
    res = run_cli(["chat", "--token-file", str(bad), "--api-url", emulator.url, "-m", "echo", "hi"])
    assert res.returncode == 1
    assert res.stderr.startswith("puterfs: error: ")
    assert "Traceback" not in res.stderr


def test_models_lists_one_id_per_line(run_cli, emulator):
    res = run_cli(["models", "--api-url", emulator.url])
    assert res.returncode == 0, res.stderr
    ids = res.stdout.splitlines()
    assert "echo" in ids
    assert all(i and i.strip() == i and " " not in i for i in ids)
    listed = local_http.get(f"{emulator.url}/puterai/chat/models", timeout=10).json()["models"]
    assert ids == [m if isinstance(m, str) else m["id"] for m in listed]


def test_login_by_address_with_domain_and_by_localhost_name(run_cli, cli_env, emulator):
    # the emulator routes by Host like Puter: /login only on the root host, files on api.
    res = _login(run_cli, emulator.address_url, emulator.username, emulator.password + "\n")
    assert res.returncode != 0  # the address alone: the server answers its names only
    res = _login(run_cli, emulator.address_url, emulator.username, emulator.password + "\n",
                 "--domain", "puter.localhost", "--tier", "paid")
    assert res.returncode == 0, res.stderr
    account = json.loads((_saved_token(cli_env).parent / "config.json").read_text())
    assert (account["domain"], account["tier"]) == ("puter.localhost", "paid")
    chat = run_cli(["chat", "-m", "echo", "by", "address"])  # the saved domain is used
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == "by address\n"
    # a *.localhost name needs no /etc/hosts entry
    named = f"http://api.puter.localhost:{emulator.port}"
    res = _login(run_cli, named, emulator.username, emulator.password + "\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"Logged in as {emulator.username} on {named}")
