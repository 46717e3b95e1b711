"""``puterfs login`` on a terminal: prompts for username, password (no echo) and 2FA code.

The CLI runs on a pseudo-terminal that is its controlling tty, as in a shell, so
``getpass`` and ``isatty`` take their interactive paths.
"""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest


class Terminal:
    """A child process on a pty; ``expect`` waits for a prompt, ``send`` types a line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()

        def become_tty_owner() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=become_tty_owner,
        )
        os.close(slave)
        self.output = ""

    def expect(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {text!r} on the terminal; got {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    pytest.fail(f"terminal closed before {text!r}; got {self.output!r}")
                self.output += chunk.decode(errors="replace")

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def finish(self, timeout: float = 30) -> int:
        try:
            while True:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(self.master, 4096)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        break
                    self.output += chunk.decode(errors="replace")
                elif self.proc.poll() is not None:
                    break
            return self.proc.wait(timeout=timeout)
        finally:
            os.close(self.master)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def test_interactive_login_prompts_and_hides_the_password(cli_env, emulator):
    term = Terminal([sys.executable, "-m", "puterfs", "login", "--api-url", emulator.url], cli_env)
    term.expect("Puter username: ")
    term.send(emulator.username)
    term.expect("Password for ")
    before = len(term.output)
    term.send(emulator.password)
    assert term.finish() == 0, term.output
    assert f"Logged in as {emulator.username} on {emulator.url}" in term.output
    # getpass turned echo off: the password never appeared on the terminal.
    assert emulator.password not in term.output[before:]
    token = (Path(cli_env["XDG_CONFIG_HOME"]) / "puterfs" / "token").read_text().strip()
    assert token not in term.output


def test_interactive_2fa_login_retries_a_wrong_code(cli_env, otp_emulator, totp, wrong_totp):
    term = Terminal(
        [sys.executable, "-m", "puterfs", "login", "-u", "otpuser", "--api-url", otp_emulator.url], cli_env
    )
    term.expect("Password for otpuser")
    term.send("otp-password")
    term.expect("2FA code: ")
    term.send(wrong_totp)
    term.expect("try again")
    term.expect("2FA code: ")
    term.send(totp(otp_emulator.otp_secret))
    assert term.finish() == 0, term.output
    assert f"Logged in as otpuser on {otp_emulator.url}" in term.output
