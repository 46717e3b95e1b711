"""Each message of issue 11: what happened and what to do, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

requires_fuse = pytest.mark.skipif(
    not os.access("/dev/fuse", os.R_OK | os.W_OK), reason="needs /dev/fuse (the checks run before mounting)"
)


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_a_url_without_scheme(run_cli, tmp_path):
    res = run_cli(["models", "--api-url", "127.0.0.1:4100"])
    assert res.returncode == 2
    assert one_line(res) == "puterfs: error: --api-url '127.0.0.1:4100' has no scheme: write http://127.0.0.1:4100"
    res = run_cli(["status"], env={"PUTER_API_URL": "api.example.com"})
    assert "PUTER_API_URL 'api.example.com' has no scheme: write https://api.example.com" in one_line(res)
    mp = tmp_path / "mp"
    mp.mkdir()
    res = run_cli(["mount", str(mp), "--api-url", "127.0.0.1:4100", "--token-file", __file__])
    assert res.returncode == 1 and "has no scheme: write http://127.0.0.1:4100" in one_line(res)


def test_a_refused_token_names_where_it_came_from(run_cli, emulator, tmp_path):
    res = run_cli(["chat", "hi", "-m", "echo", "--api-url", emulator.url], env={"PUTER_TOKEN": "garbage"})
    assert res.returncode == 1
    line = one_line(res)
    assert "the server refused the token from PUTER_TOKEN" in line and "unset PUTER_TOKEN" in line
    assert "garbage" not in line
    bad = tmp_path / "tok"
    bad.write_text("garbage\n")
    res = run_cli(["chat", "hi", "--api-url", emulator.url, "--token-file", str(bad)])
    line = one_line(res)
    assert f"the server refused the token from --token-file {bad}" in line and "puterfs login" in line


@requires_fuse
def test_a_refused_token_at_mount(run_cli, emulator, tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    res = run_cli(["mount", str(mp), "--api-url", emulator.url], env={"PUTER_TOKEN": "garbage"}, timeout=120)
    assert res.returncode == 1 and not os.path.ismount(mp)
    line = one_line(res)
    assert "the server refused the token from PUTER_TOKEN" in line and "unset PUTER_TOKEN" in line


@requires_fuse
def test_mount_point_problems(run_cli, tmp_path, puter_user):
    token = tmp_path / "token"
    token.write_text(puter_user.token + "\n")
    base = ["--api-url", puter_user.url, "--token-file", str(token)]
    missing = tmp_path / "missing"
    res = run_cli(["mount", str(missing), *base])
    assert res.returncode == 1 and f"{missing} does not exist: create it (mkdir -p {missing})" in one_line(res)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is not a directory" in one_line(run_cli(["mount", str(afile), *base]))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine\n")
    res = run_cli(["mount", str(full), *base])
    assert res.returncode == 1 and not os.path.ismount(full)
    line = one_line(res)
    assert "is not empty (1 entries: keep.txt)" in line and "--nonempty" in line
    # A dead FUSE mount: the daemon killed hard.
    dead = tmp_path / "dead"
    dead.mkdir()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "puterfs", "mount", str(dead), "--foreground", *base],
        env={**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            if os.path.ismount(dead):
                break
            assert daemon.poll() is None
            subprocess.run(["sleep", "0.1"])
        daemon.kill()
        daemon.wait()
        res = run_cli(["mount", str(dead), *base])
        line = one_line(res)
        assert "is a dead FUSE mount (its daemon is gone)" in line and "puterfs umount" in line
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(dead)], capture_output=True)
    # --nonempty mounts over the files, and says nothing more.
    res = run_cli(["mount", str(full), "--nonempty", *base], timeout=120)
    try:
        assert res.returncode == 0 and os.path.ismount(full), res.stderr
    finally:
        assert run_cli(["umount", str(full)], timeout=120).returncode == 0
    assert (full / "keep.txt").read_text() == "mine\n"


@requires_fuse
def test_read_only_says_that_ai_takes_no_prompts(run_cli, tmp_path, puter_user):
    token = tmp_path / "token"
    token.write_text(puter_user.token + "\n")
    mp = tmp_path / "ro"
    mp.mkdir()
    res = run_cli(["mount", str(mp), "--read-only", "--api-url", puter_user.url, "--token-file", str(token)], timeout=120)
    try:
        assert res.returncode == 0, res.stderr
        assert one_line(res) == "puterfs mount: note: --read-only: .ai/ takes no prompts (writing one is a write)"
        assert (Path(mp) / ".ai" / "help").read_bytes()
    finally:
        run_cli(["umount", str(mp)], timeout=120)


def test_chat_without_model_picks_one_the_server_lists(run_cli, emulator, puter_user):
    # The real server has no default model ("Model not found: undefined"): the CLI picks one.
    res = run_cli(["chat", "what model?", "--api-url", emulator.url], env={"PUTER_TOKEN": puter_user.token})
    assert res.returncode == 0 and res.stdout == "what model?\n", res.stderr
    sent = [
        e["body"]["args"]
        for e in emulator.log(bodies=True)
        if isinstance(e.get("body"), dict) and e["body"].get("method") == "complete"
    ]
    assert sent and sent[-1].get("model") == "gpt-5-nano"
