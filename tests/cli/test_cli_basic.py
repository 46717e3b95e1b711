"""CLI behaviour that needs no server: help, version, usage errors, status and umount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from puterfs import cli, config

COMMANDS = ["login", "logout", "mount", "umount", "status", "chat", "models", "emulator"]

# A stand-in for the mount daemon's side of the umount protocol (state file + SIGTERM):
# it reports pending uploads, and on SIGTERM counts them down, removes its state file and
# exits 0. The real daemon is exercised by tests/mount; this checks what umount does with it.
# "puterfs" is on its command line, which umount checks before signalling a pid.
FAKE_DAEMON = textwrap.dedent(
    """
    import json, os, signal, sys, time
    state_path, pending, honour_term = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    stop = []
    def write(n):
        tmp = state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "mountpoint": sys.argv[5], "api_url": "http://127.0.0.1:1",
                       "remote_root": "/u", "cache_dir": "/nonexistent", "pending": n, "uploading": 0,
                       "failed_attempts": 0, "last_error": None, "updated": time.time()}, f)
        os.replace(tmp, state_path)
    signal.signal(signal.SIGTERM, (lambda *a: stop.append(1)) if honour_term else signal.SIG_IGN)
    write(pending)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not stop and time.monotonic() < deadline:
        time.sleep(0.05)
    while pending and time.monotonic() < deadline:
        time.sleep(0.6)
        pending -= 1
        write(pending)
    os.unlink(state_path)
    """
)


def _state_path(env: dict[str, str], mountpoint: Path) -> Path:
    # The path the CLI computes, under the test's own XDG_RUNTIME_DIR.
    return Path(env["XDG_RUNTIME_DIR"]) / "puterfs" / f"{cli.config.mount_key(mountpoint)}.json"


def _start_fake_daemon(
    env: dict[str, str], mountpoint: Path, pending: int, honour_term: bool
) -> subprocess.Popen[str]:
    state = _state_path(env, mountpoint)
    state.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FAKE_DAEMON,
            "puterfs-fake-daemon",
            str(state),
            str(pending),
            "1" if honour_term else "0",
            str(mountpoint),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_version(run_cli):
    res = run_cli(["--version"])
    assert res.returncode == 0
    assert res.stdout.strip().startswith("puterfs ")


def test_top_level_help_lists_every_command(run_cli):
    res = run_cli(["--help"])
    assert res.returncode == 0, res.stderr
    for cmd in COMMANDS:
        assert cmd in res.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("login", ["--username", "--otp", "--insecure"]),
        ("logout", ["--token-file"]),
        ("umount", ["MOUNTPOINT", "--timeout"]),
        ("status", ["--json", "MOUNTPOINT"]),
        ("chat", ["--model", "--system", "--no-stream", "--temperature", "--max-tokens"]),
        ("models", ["--api-url"]),
        ("mount", ["--auto", "--foreground", "--cache-dir", "--write-back", "--remote-root"]),
        ("emulator", ["--port"]),
    ],
)
def test_subcommand_help(run_cli, command, expected):
    res = run_cli([command, "--help"])
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout
    for word in expected:
        assert word in res.stdout, f"{word} missing from `puterfs {command} --help`"


def test_usage_errors_exit_2(run_cli):
    assert run_cli([]).returncode == 2
    assert run_cli(["frobnicate"]).returncode == 2
    assert run_cli(["status", "--no-such-option"]).returncode == 2
    res = run_cli(["umount"])
    assert res.returncode == 2 and "MOUNTPOINT" in res.stderr


def test_login_needs_username_when_password_is_piped(run_cli):
    res = run_cli(["login", "--api-url", "http://127.0.0.1:9"], input="secret-pw\n")
    assert res.returncode == 2
    assert "--username" in res.stderr


def test_commands_needing_a_token_say_so(run_cli):
    res = run_cli(["chat", "hello", "--api-url", "http://127.0.0.1:9"])
    assert res.returncode == 1
    assert "not logged in" in res.stderr
    res = run_cli(["chat", "hi", "--token-file", "/nonexistent/token"])
    assert res.returncode == 1
    assert "/nonexistent/token" in res.stderr


def test_chat_without_prompt_is_a_usage_error(run_cli):
    res = run_cli(["chat"], input="", env={"PUTER_TOKEN": "x"})
    assert res.returncode == 2
    assert "prompt" in res.stderr


def test_status_without_login_or_mounts(run_cli):
    res = run_cli(["status"])
    assert res.returncode == 0, res.stderr
    assert "token:    no" in res.stdout
    assert "mounts:   none" in res.stdout
    data = json.loads(run_cli(["status", "--json"]).stdout)
    assert data["mounts"] == []
    assert data["account"]["token_present"] is False
    assert data["account"]["api_url"] == "https://api.puter.com"


def test_status_never_prints_the_token(run_cli, cli_env):
    secret = "tok-" + os.urandom(8).hex()
    res = run_cli(
        ["status", "--json"], env={"PUTER_TOKEN": secret, "PUTER_API_URL": "http://api.example.test"}
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["account"]["token_present"] is True
    assert data["account"]["token_source"] == "PUTER_TOKEN"
    assert data["account"]["api_url"] == "http://api.example.test"
    assert data["account"]["web_url"] == "http://example.test"
    assert secret not in res.stdout + res.stderr
    res = run_cli(["status"], env={"PUTER_TOKEN": secret})
    assert "token:    yes (PUTER_TOKEN)" in res.stdout
    assert secret not in res.stdout + res.stderr


def test_status_reports_a_running_mount_and_a_stale_one(run_cli, cli_env, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    daemon = _start_fake_daemon(cli_env, mp, pending=3, honour_term=True)
    try:
        res = run_cli(["status", "--json"])
        assert res.returncode == 0, res.stderr
        (m,) = json.loads(res.stdout)["mounts"]
        assert m["mountpoint"] == str(mp)
        assert m["pid"] == daemon.pid and m["alive"] is True
        assert (m["pending"], m["uploading"], m["failed_attempts"]) == (3, 0, 0)
        assert m["mounted"] is False  # the stand-in mounts nothing
        text = run_cli(["status", str(mp)]).stdout
        assert "3 pending (0 uploading), 0 failed" in text
    finally:
        daemon.kill()
        daemon.wait()
    # Killed hard: its state file stays behind and status must not call it running.
    (m,) = json.loads(run_cli(["status", "--json"]).stdout)["mounts"]
    assert m["alive"] is False
    assert "NOT RUNNING" in run_cli(["status"]).stdout


def test_status_of_an_unknown_mountpoint_fails(run_cli, tmp_path):
    res = run_cli(["status", str(tmp_path)])
    assert res.returncode == 1
    assert "not mounted" in res.stderr


def test_umount_of_a_non_mount_fails(run_cli, tmp_path):
    res = run_cli(["umount", str(tmp_path)])
    assert res.returncode == 1
    assert "is not mounted" in res.stderr
    res = run_cli(["umount", str(tmp_path / "missing")])
    assert res.returncode == 1


def test_umount_removes_a_stale_state_file(run_cli, cli_env, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    daemon = _start_fake_daemon(cli_env, mp, pending=1, honour_term=True)
    daemon.kill()
    daemon.wait()
    state = _state_path(cli_env, mp)
    assert state.exists()
    res = run_cli(["umount", str(mp)])
    assert res.returncode == 1
    assert "is not mounted" in res.stderr
    assert not state.exists()


def test_umount_waits_for_pending_uploads(run_cli, cli_env, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    daemon = _start_fake_daemon(cli_env, mp, pending=2, honour_term=True)
    try:
        started = time.monotonic()
        res = run_cli(["umount", str(mp)])
        took = time.monotonic() - started
        assert res.returncode == 0, res.stderr
        assert "waiting for 2 pending uploads" in res.stderr
        assert "waiting for 1 pending uploads" in res.stderr
        # It returned only after the daemon had finished both uploads and exited.
        assert took >= 1.0
        assert daemon.poll() == 0
        assert not _state_path(cli_env, mp).exists()
    finally:
        daemon.kill()
        daemon.wait()


def test_umount_timeout_leaves_the_daemon_running(run_cli, cli_env, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    daemon = _start_fake_daemon(cli_env, mp, pending=4, honour_term=False)
    try:
        res = run_cli(["umount", "--timeout", "1", str(mp)])
        assert res.returncode == 1
        assert "timed out" in res.stderr
        assert "4 uploads pending" in res.stderr
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()


def test_mountinfo_escapes_are_decoded():
    assert cli._unescape_mountinfo(r"/home/a\040b\011c\134d") == "/home/a b\tc\\d"
    assert cli._unescape_mountinfo("/plain") == "/plain"


def test_web_url_is_derived_from_the_api_host():
    assert config.derive_web_url("https://api.puter.com") == "https://puter.com"
    assert config.derive_web_url("http://api.puter.localhost:4100/") == "http://puter.localhost:4100"
    assert config.derive_web_url("http://127.0.0.1:4100") == "http://127.0.0.1:4100"


def test_a_broken_pyfuse3_only_breaks_mount(cli_env, tmp_path):
    # Simulate a machine where pyfuse3 cannot be imported: None in sys.modules makes
    # every `import pyfuse3` raise ImportError.
    code = (
        "import sys; sys.modules['pyfuse3'] = None\n"
        "from puterfs.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=cli_env, timeout=60
        )

    assert run("--help").returncode == 0
    assert run("status").returncode == 0
    assert run("mount", "--help").returncode == 0
    res = run("mount", str(tmp_path), "--token-file", "/dev/null")
    assert res.returncode == 1
    assert "pyfuse3" in res.stderr and "Traceback" not in res.stderr


def test_status_reads_the_newer_state_fields(run_cli, cli_env, tmp_path):
    """The state-file fields other parts of the daemon add (failed files, large uploads,
    auth, freshness) are shown when present; a stopped daemon's leftovers too."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "puterfs"])
    try:
        state = {
            "pid": daemon.pid, "mountpoint": str(mp), "api_url": "http://127.0.0.1:1", "account": "alice",
            "remote_root": "/alice", "cache_dir": "/c", "pending": 2, "uploading": 1, "failed_attempts": 0,
            "last_error": "ServerError: boom",
            "pending_files": [{"path": "a.txt", "size": 10, "since": 1.0e9}, {"path": "big.iso", "size": 5 << 30, "since": 1.0e9}],
            "failed_files": [{"path": "huge.bin", "reason": "larger than the server's 100 MiB per-file limit", "since": 1.0e9}],
            "large_uploads": [{"path": "big.iso", "done": 1 << 30, "total": 4 << 30}],
            "auth": {"state": "paused", "message": "the server refused the token; run `puterfs login`", "token_kind": "session"},
            "freshness": {"mode": "events"},
            "lost_found": [{"file": "/c/lost+found/7", "path": "x.txt", "reason": "no journal row"}],
        }  # fmt: skip
        path = _state_path(cli_env, mp)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state))
        res = run_cli(["status", str(mp)])
        assert res.returncode == 0, res.stderr
        out = res.stdout
        assert "account:  alice on http://127.0.0.1:1" in out
        assert "FAILED   huge.bin: larger than the server's 100 MiB per-file limit" in out
        assert "large    big.iso  1.0 GiB of 4.0 GiB 25%" in out
        assert "pending  a.txt  10 B" in out
        assert "auth:     paused (session token): the server refused the token" in out
        assert "freshness: mode=events" in out
        assert "lost+found: 1 file(s) the cache could not place, kept in /c/lost+found" in out
        got = json.loads(run_cli(["status", "--json", str(mp)]).stdout)["mounts"][0]
        assert got["failed_files"][0]["path"] == "huge.bin" and got["auth"]["state"] == "paused"
        assert got["large_uploads"] == state["large_uploads"] and got["account"] == "alice"
        # Drained: an old error is not shown any more.
        path.write_text(json.dumps({**state, "pending": 0, "pending_files": [], "failed_files": [], "large_uploads": []}))
        res = run_cli(["status", "--json", str(mp)])
        assert json.loads(res.stdout)["mounts"][0]["last_error"] is None
        # A daemon that stopped with files left: said so.
        path.write_text(json.dumps({**state, "stopped": True}))
        assert "stopped, with files left in the cache" in run_cli(["status", str(mp)]).stdout
    finally:
        daemon.kill()
        daemon.wait()


@pytest.mark.parametrize("argv", [["--version"], ["status"], ["status", "--json"]])
def test_quick_commands_import_no_client_or_fuse(cli_env, argv):
    """`--version` and `status` stay fast (bench/startup.py times them): they must not load
    httpx, trio, anyio or pyfuse3."""
    code = (
        "import sys\n"
        "from puterfs import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'trio', 'anyio', 'pyfuse3'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=cli_env, timeout=60)
    assert "HEAVY []" in res.stderr, res.stderr
