"""`puterfs login` / `puterfs logout`: how the CLI gets, saves and hands over a token.

Three ways to get a token:

* the browser (AuthMe, :func:`puterfs.client.browser_login`): the default for puter.com,
  and the fallback wherever a password is refused (puter.com asks for a captcha);
* ``--token-stdin``: a token pasted from ``<web>/?action=copyauth`` (one line on stdin);
* a password (``--password``, or by default on other servers): self-hosted Puter in its
  default configuration still takes one, with the 2FA code when the account has 2FA.

Every token is checked with ``/whoami`` before it is saved (0600, with the account). Then
the running mounts that read that token file are sent SIGHUP so that they pick it up
(their state files, under the runtime dir, say which file each one reads).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from puterfs import config

log = logging.getLogger(__name__)


def _cli() -> Any:
    from puterfs import cli

    return cli


def add_login_arguments(p: argparse.ArgumentParser) -> None:
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--browser", action="store_true",
        help="sign in through Puter's page in a browser (the default for puter.com)",
    )
    how.add_argument(
        "--password", action="store_true",
        help="sign in with username and password (self-hosted servers; puter.com refuses it)",
    )
    how.add_argument(
        "--token-stdin", action="store_true",
        help="read a token (e.g. from WEB/?action=copyauth) from standard input",
    )
    p.add_argument("--username", "-u", metavar="USER", help="Puter username (asked for when omitted)")
    p.add_argument("--otp", metavar="CODE", help="2FA code, for accounts with two-factor authentication")
    p.add_argument(
        "--no-browser", action="store_true",
        help="do not start a browser; only print the sign-in URL (to open anywhere)",
    )
    p.add_argument(
        "--port", type=int, default=0, metavar="N",
        help="port of the one-shot listener on 127.0.0.1 for the browser's answer (default: random; "
        "fix it to forward it with ssh -L)",
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, metavar="S",
        help="how long to wait for the browser (default 300)",
    )


def refuses_scripted_login(web_url: str) -> bool:
    """puter.com is known to want a captcha on /login: do not even ask for a password."""
    host = (urlsplit(web_url).hostname or "").lower()
    return host == "puter.com" or host.endswith(".puter.com")


# --------------------------------------------------------------------------------------- login


def cmd_login(args: argparse.Namespace) -> int:
    from puterfs.client._errors import ScriptedLoginRefused

    cli = _cli()
    acc = cli._account(args)
    acc.verify_tls = not args.insecure
    interactive = sys.stdin.isatty()
    if args.token_stdin:
        token, name, kind = _token_from_stdin(acc, interactive)
    elif args.browser or (not args.password and refuses_scripted_login(acc.web_url)):
        token, name, kind = _browser(acc, args)
    else:
        try:
            token, name, kind = _password(acc, args, interactive)
        except ScriptedLoginRefused as exc:
            if args.password or not interactive:
                raise cli.CliError(f"login failed: {exc.message}") from None
            print(f"{acc.web_url} does not take a password from puterfs (it asks for a captcha); "
                  "signing in with the browser instead", file=sys.stderr)
            token, name, kind = _browser(acc, args)
    path = config.save_token(token)
    config.save_account(
        config.Account(
            api_url=acc.api_url, web_url=acc.web_url, username=name, verify_tls=acc.verify_tls,
            domain=acc.domain, tier=acc.tier,
        )
    )
    print(f"Logged in as {name} on {acc.api_url} ({kind} token)")
    log.debug("token saved to %s", path)
    var = config.token_env()
    if var is not None:
        print(f"note: {var} is set and takes precedence over the saved token", file=sys.stderr)
    for mountpoint in signal_mounts(path):
        print(f"The mount on {mountpoint} now uses the new token")
    return 0


def _checked(acc: config.Account, token: str, what: str) -> tuple[str, str, str]:
    """(token, username, kind) once ``/whoami`` accepts ``token``."""
    from puterfs.client import token_kind
    from puterfs.client._errors import AuthenticationError, PuterConnectionError, PuterError

    cli = _cli()

    async def check() -> dict[str, Any]:
        async with cli._client(acc, token) as client:
            return await client.whoami()

    try:
        me = cli._run_raw(check)
    except AuthenticationError as exc:
        raise cli.CliError(f"login failed: the server refused {what} ({exc.message})") from None
    except PuterConnectionError as exc:
        raise cli.CliError(f"login failed: cannot reach {acc.api_url}: {exc.message}") from None
    except PuterError as exc:
        raise cli.CliError(f"login failed: {exc.message}") from None
    name = me.get("username") if isinstance(me, dict) else None
    if not isinstance(name, str) or not name:
        raise cli.CliError("login failed: /whoami did not name the user")
    return token, name, token_kind(token)


def _token_from_stdin(acc: config.Account, interactive: bool) -> tuple[str, str, str]:
    cli = _cli()
    if interactive:
        import getpass

        token = getpass.getpass(f"Paste the token from {acc.web_url}/?action=copyauth (not shown): ")
    else:
        token = cli._read_stdin_line("token")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise cli.CliError("login failed: that is not a token (one line, no spaces)")
    return _checked(acc, token, "that token")


def _browser(acc: config.Account, args: argparse.Namespace) -> tuple[str, str, str]:
    from puterfs.client import browser_login, token_kind
    from puterfs.client._errors import AuthenticationError, PuterConnectionError, PuterError, PuterTimeout

    cli = _cli()

    async def run() -> Any:
        return await browser_login(
            acc.web_url, api_url=acc.api_url, open_browser=not args.no_browser, timeout=args.timeout,
            port=args.port, ignore_ssl=not acc.verify_tls, domain=acc.domain,
        )

    try:
        result = cli._run_raw(run)
    except OSError as exc:
        raise cli.CliError(f"login failed: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    except PuterTimeout as exc:
        raise cli.CliError(f"login failed: {exc.message}; run `puterfs login` again") from None
    except AuthenticationError as exc:
        raise cli.CliError(f"login failed: {exc.message}") from None
    except PuterConnectionError as exc:
        raise cli.CliError(f"login failed: cannot reach {acc.api_url}: {exc.message}") from None
    except PuterError as exc:
        raise cli.CliError(f"login failed: {exc.message}") from None
    name = result.username
    if not name:
        raise cli.CliError("login failed: /whoami did not name the user")
    return result.token, name, token_kind(result.token)


def _password(acc: config.Account, args: argparse.Namespace, interactive: bool) -> tuple[str, str, str]:
    from puterfs.client import token_kind
    from puterfs.client._errors import (
        AuthenticationError,
        OTPRequired,
        PuterConnectionError,
        PuterError,
        ScriptedLoginRefused,
    )

    cli = _cli()
    username = args.username
    if not username:
        if not interactive:
            raise cli.CliError(
                "--username is required when the password comes from standard input "
                "(or sign in with --browser, or --token-stdin)", 2,
            )
        default = f" [{acc.username}]" if acc.username else ""
        username = cli._prompt(f"Puter username{default}: ") or acc.username
        if not username:
            raise cli.CliError("a username is required", 2)
    if interactive:
        import getpass

        password = getpass.getpass(f"Password for {username} on {acc.web_url}: ")
    else:
        password = cli._read_stdin_line("password")
    if not password:
        raise cli.CliError("an empty password was given")

    async def login() -> tuple[str, str]:
        async with cli._client(acc, None) as client:
            try:
                token = await client.login(username, password, otp=None)
            except OTPRequired as exc:
                # The otp token is not consumed by a wrong code, so a person may retry.
                attempts = 3 if interactive and not args.otp else 1
                for attempt in range(attempts):
                    code = cli._otp_code(args, attempt)
                    try:
                        token = await client.login_otp(exc.otp_token, code)
                        break
                    except ScriptedLoginRefused:
                        raise
                    except AuthenticationError as otp_exc:
                        if attempt + 1 == attempts:
                            raise
                        print(f"{otp_exc.message}; try again", file=sys.stderr)
            try:
                me = await client.whoami()
                name = cli._field(me, "username") or username
            except PuterError as exc:
                log.debug("whoami after login failed: %s", exc)
                name = username
            return token, name

    try:
        token, name = cli._run_raw(login)
    except ScriptedLoginRefused:
        raise
    except PuterConnectionError as exc:
        raise cli.CliError(f"login failed: cannot reach {acc.web_url}: {exc.message}") from None
    except PuterError as exc:
        message = exc.message.removeprefix("login failed: ")
        raise cli.CliError(f"login failed: {message}") from None
    return token, name, token_kind(token)


# --------------------------------------------------------------------------------------- mounts


def mounts_using(token_file: Path) -> list[tuple[int, str]]:
    """(pid, mountpoint) of the live mounts whose state file says they read ``token_file``."""
    cli = _cli()
    want = os.path.realpath(token_file)
    found = []
    run = config.runtime_dir()
    try:
        paths = sorted(run.glob("*.json"))
    except OSError:
        return []
    for state_path in paths:
        state = cli._read_state(state_path)
        if not state:
            continue
        auth = state.get("auth") if isinstance(state.get("auth"), dict) else {}
        used = auth.get("token_file")
        if not isinstance(used, str) or os.path.realpath(used) != want:
            continue
        pid = cli._int(state, "pid")
        if pid and cli._pid_alive(pid) and cli._is_puterfs_process(pid):
            found.append((pid, str(state.get("mountpoint") or state_path.stem)))
    return found


def signal_mounts(token_file: Path) -> list[str]:
    """SIGHUP every mount reading ``token_file``: it rereads the token and resumes."""
    done = []
    for pid, mountpoint in mounts_using(token_file):
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            log.debug("cannot signal the mount on %s (pid %d): %s", mountpoint, pid, exc)
            continue
        done.append(mountpoint)
    return done


# --------------------------------------------------------------------------------------- logout


def cmd_logout(args: argparse.Namespace) -> int:
    from puterfs.client._errors import PuterError

    cli = _cli()
    acc = cli._account(args)
    token = cli._token(args, required=False)
    token_file = config.token_path(getattr(args, "token_file", None))
    users = mounts_using(token_file) if token_file is not None else []
    if token:

        async def logout() -> None:
            async with cli._client(acc, token) as client:
                await client.logout()

        try:
            cli._run_raw(logout)
        except PuterError as exc:
            # Best effort: a token may stay valid server-side; forgetting it is what matters.
            print(f"note: the server did not confirm the logout: {exc.message}", file=sys.stderr)
    had_file = config.token_file().exists()
    config.forget_token()
    if had_file:
        print(f"Logged out; removed {config.token_file()}")
    else:
        print("No saved token")
    for _pid, mountpoint in users:
        print(
            f"warning: the mount on {mountpoint} uses this token: it cannot reach the server any more "
            "(its changes stay in its cache) until you run `puterfs login` again",
            file=sys.stderr,
        )
    var = config.token_env()
    if var is not None:
        print(f"note: {var} is still set in this environment", file=sys.stderr)
    return 0
