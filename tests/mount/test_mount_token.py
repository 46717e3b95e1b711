"""The token of a running mount: revoked -> the mount pauses (EACCES for what needs the
server, no requests, every dirty file kept, the state file says "run `puterfs login`");
renewed (SIGHUP, an edited token file, or `puterfs login`, which signals it) -> everything
pending goes up, without a remount. `puterfs logout` warns about the mount."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mount_testlib import MountedFs, MountFactory, wait_for

from puterfs.emulator.testing import local_http


def _access_token(url: str, user_token: str) -> str:
    r = local_http.post(f"{url}/auth/create-access-token", json={"permissions": ["full-api-access"], "label": "mount"},
                   headers={"Authorization": f"Bearer {user_token}"}, timeout=30)
    r.raise_for_status()
    return r.json()["token"]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def _mount_with(factory: MountFactory, token_file: Path) -> tuple[MountedFs, str]:
    """A mount reading a full-api-access token of its own from ``token_file`` (the test's
    RemoteView keeps the user's session token, which stays valid)."""
    token = _access_token(factory.url, factory.user.token)
    _write_private(token_file, token)
    factory.token_file = token_file
    return factory(), token


def _refused(m: MountedFs) -> dict:
    return m.proc.wait_state(lambda st: (st.get("auth") or {}).get("state") == "refused", 30, "the refused state")


def _revoke_and_pause(m: MountedFs, token: str) -> None:
    (m.path / "before.txt").write_bytes(b"uploaded before the token went away\n")
    m.wait_uploaded()
    # made elsewhere: the mount sees the names but has neither the listing nor the data
    m.remote.mkdir("never-listed")
    m.remote.write("remote-only.txt", b"only on the server\n")
    wait_for(lambda: {"never-listed", "remote-only.txt"} <= set(os.listdir(m.path)), 30, "the remote entries")
    m.emulator.revoke(token)
    for i in range(3):
        (m.path / f"pending-{i}.txt").write_bytes(f"written while refused {i}\n".encode() * 100)
    st = _refused(m)
    assert st["auth"]["message"] == "the token was refused: run `puterfs login`"
    assert st["auth"]["token_kind"] == "full-api-access"
    assert "the token was refused: run `puterfs login`" in m.proc.log_text()


def test_a_revoked_token_pauses_the_mount_and_sighup_resumes_it(mount_factory: MountFactory, tmp_path: Path) -> None:
    m, token = _mount_with(mount_factory, tmp_path / "token-a")
    _revoke_and_pause(m, token)
    # what needs the server fails at once with EACCES, and nothing is sent
    m.emulator.clear_log()
    with pytest.raises(OSError) as info:
        os.listdir(m.path / "never-listed")
    assert info.value.errno == errno.EACCES
    with pytest.raises(OSError) as info:
        (m.path / "remote-only.txt").read_bytes()
    assert info.value.errno == errno.EACCES
    assert sorted(os.listdir(m.path))  # the cached listing still answers
    assert (m.path / "pending-1.txt").read_bytes().startswith(b"written while refused 1")
    fd = os.open(m.path / "pending-1.txt", os.O_RDWR)
    try:
        os.fsync(fd)  # durable on the local disk: needs no server (with --sync-uploads: EACCES at once)
    finally:
        os.close(fd)
    time.sleep(3)  # the change poller (0.5 s) and the upload retries would show up in the log
    sent = [e for e in m.emulator.log() if not e["path"].startswith("/_emulator")]
    assert sent == [], sent
    st = m.proc.state()
    assert st is not None and st["pending"] >= 3
    assert not m.remote.exists("pending-0.txt")
    # a new token in the file + SIGHUP: everything pending goes up, same daemon
    pid = m.proc.daemon_pid()
    _write_private(tmp_path / "token-a", _access_token(mount_factory.url, m.user.token))
    os.kill(pid, signal.SIGHUP)
    m.proc.wait_state(lambda s: s.get("auth", {}).get("state") == "ok", 30, "the ok state")
    m.wait_uploaded()
    for i in range(3):
        assert m.remote.read(f"pending-{i}.txt") == f"written while refused {i}\n".encode() * 100
    assert os.listdir(m.path / "never-listed") == []
    assert (m.path / "remote-only.txt").read_bytes() == b"only on the server\n"
    assert m.proc.daemon_pid() == pid and m.proc.alive()


def test_an_edited_token_file_is_noticed_without_a_signal(mount_factory: MountFactory, tmp_path: Path) -> None:
    m, token = _mount_with(mount_factory, tmp_path / "token-b")
    _revoke_and_pause(m, token)
    _write_private(tmp_path / "token-b", _access_token(mount_factory.url, m.user.token))
    m.proc.wait_state(lambda s: s.get("auth", {}).get("state") == "ok", 30, "the ok state")
    m.wait_uploaded()
    assert m.remote.exists("pending-2.txt")


def test_a_bad_new_token_keeps_the_mount_paused(mount_factory: MountFactory, tmp_path: Path) -> None:
    m, token = _mount_with(mount_factory, tmp_path / "token-c")
    _revoke_and_pause(m, token)
    _write_private(tmp_path / "token-c", "aaa.bbb.ccc")
    os.kill(m.proc.daemon_pid(), signal.SIGHUP)
    wait_for(lambda: "refused too" in m.proc.log_text(), 30, "the log to say the new token was refused")
    # the state file is rewritten a few times a second: it may still predate the three writes
    st = m.proc.wait_state(lambda s: s["pending"] >= 3, 10, "the three pending files in the state file")
    assert st["auth"]["state"] == "refused"
    assert "aaa.bbb.ccc" not in m.proc.log_text()
    _write_private(tmp_path / "token-c", _access_token(mount_factory.url, m.user.token))
    m.proc.wait_state(lambda s: s.get("auth", {}).get("state") == "ok", 30, "the ok state")
    m.wait_uploaded()


def _cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "puterfs", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120)


def test_puterfs_login_renews_the_mount_and_logout_warns(mount_factory: MountFactory, tmp_path: Path) -> None:
    saved = tmp_path / "xdg" / "config" / "puterfs" / "token"  # the mount's own saved token file
    m, token = _mount_with(mount_factory, saved)
    _revoke_and_pause(m, token)
    env = dict(m.proc.env)
    pid = m.proc.daemon_pid()
    new = _access_token(mount_factory.url, m.user.token)
    res = _cli(env, "login", "--token-stdin", "--api-url", mount_factory.url, stdin=new + "\n")
    assert res.returncode == 0, res.stderr
    assert f"The mount on {m.path} now uses the new token" in res.stdout
    m.proc.wait_state(lambda s: s.get("auth", {}).get("state") == "ok", 30, "the ok state")
    m.wait_uploaded()
    for i in range(3):
        assert m.remote.exists(f"pending-{i}.txt")
    assert m.proc.daemon_pid() == pid
    status = _cli(env, "status")
    assert "full-api-access" in status.stdout, status.stdout
    res = _cli(env, "logout", "--api-url", mount_factory.url)
    assert res.returncode == 0
    assert f"warning: the mount on {m.path} uses this token" in res.stderr


def test_umount_of_a_paused_mount_says_why_and_finishes_after_login(
    mount_factory: MountFactory, tmp_path: Path
) -> None:
    saved = tmp_path / "xdg" / "config" / "puterfs" / "token"
    m, token = _mount_with(mount_factory, saved)
    _revoke_and_pause(m, token)
    env = dict(m.proc.env)
    m.proc.expected_exit = True
    umount = subprocess.Popen([sys.executable, "-m", "puterfs", "umount", str(m.path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert umount.stderr is not None
        seen = ""
        while "the token was refused: run `puterfs login`" not in seen:
            line = umount.stderr.readline()
            assert line, f"umount ended without saying why it waits: {seen}"
            seen += line
        assert umount.poll() is None  # still waiting: nothing is given up
        res = _cli(env, "login", "--token-stdin", "--api-url", mount_factory.url,
                   stdin=_access_token(mount_factory.url, m.user.token) + "\n")
        assert res.returncode == 0, res.stderr
        out, err = umount.communicate(timeout=120)
    finally:
        if umount.poll() is None:
            umount.kill()
    assert umount.returncode == 0, seen + err
    assert not os.path.ismount(m.path)
    for i in range(3):
        assert m.remote.read(f"pending-{i}.txt") == f"written while refused {i}\n".encode() * 100
