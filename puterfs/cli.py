"""The ``puterfs`` command line.

    puterfs login | logout | mount | umount | status | chat | models | emulator

Exit codes: 0 success, 1 runtime error (server, network, mount state), 2 usage error
(argparse's own code), 130 interrupted.

Only ``mount`` imports the FUSE side (pyfuse3, ``puterfs.mount``), and only when it is the
command given: ``puterfs --help``, ``umount`` and the rest keep working on a machine where
pyfuse3 is broken. Async client calls run under ``trio.run``; the rest is synchronous.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from puterfs import config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from puterfs.client import PuterClient

log = logging.getLogger(__name__)

T = TypeVar("T")

# The emulator answers its names only, as a real server (a Host that is an address gets 404);
# *.localhost reaches 127.0.0.1 without /etc/hosts (RFC 6761, puterfs/client/_hosts.py).
AUTO_EMULATOR_HOST = "api.puter.localhost"
AUTO_EMULATOR_PORT = 4100  # PUTERFS_EMULATOR_PORT overrides it
# What `puterfs emulator` creates on its first start when given no --user/--password.
AUTO_EMULATOR_USER = "puter"
AUTO_EMULATOR_PASSWORD = "puterpass"
AUTO_EMULATOR_START_TIMEOUT = 60.0
DEFAULT_UMOUNT_TIMEOUT = 900.0  # matches TimeoutStopSec=15min in systemd/puterfs@.service
CLI_MAX_RETRIES = 3


class CliError(Exception):
    """A failure to report as ``puterfs: error: MESSAGE`` with exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------------------
# account, token and client


def add_server_options(p: argparse.ArgumentParser) -> None:
    """--domain and --tier (shared with `puterfs mount`)."""
    p.add_argument(
        "--domain",
        metavar="NAME",
        help="the server's own domain when --api-url gives its address (e.g. --api-url "
        "http://127.0.0.1:4100 --domain puter.localhost sends Host: api.puter.localhost:4100)",
    )
    p.add_argument(
        "--tier",
        choices=config.TIER_NAMES,
        help="the account's rate-limit tier the client paces itself to (default: the saved "
        "account's, else free)",
    )


def _account(args: argparse.Namespace) -> config.Account:
    """The saved account with ``--api-url``/``--web-url``/``--insecure`` and env applied."""
    acc = config.load_account()  # already applies PUTER_API_URL / PUTER_WEB_URL
    api_url = getattr(args, "api_url", None)
    web_url = getattr(args, "web_url", None)
    for what, url in (
        ("--api-url", api_url),
        ("--web-url", web_url),
        ("PUTER_API_URL" if os.environ.get("PUTER_API_URL") else "the saved API URL", None if api_url else acc.api_url),
        ("PUTER_WEB_URL" if os.environ.get("PUTER_WEB_URL") else "the saved web URL", None if web_url else acc.web_url),
    ):
        problem = config.url_problem(url, what) if url else None
        if problem:
            raise CliError(problem, 2)
    if api_url:
        acc.api_url = api_url
    # A new API host without a matching web host would send /login to puter.com.
    if (api_url or os.environ.get("PUTER_API_URL")) and not (web_url or os.environ.get("PUTER_WEB_URL")):
        acc.web_url = config.derive_web_url(acc.api_url)
    if web_url:
        acc.web_url = web_url
    acc.api_url = acc.api_url.rstrip("/")
    acc.web_url = acc.web_url.rstrip("/")
    if getattr(args, "insecure", False):
        acc.verify_tls = False
    if getattr(args, "domain", None):
        acc.domain = args.domain
    if getattr(args, "tier", None):
        acc.tier = args.tier
    return acc


def _token(args: argparse.Namespace, *, required: bool = True) -> str | None:
    try:
        tok = config.load_token(getattr(args, "token_file", None))
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    if tok is None and required:
        raise CliError("not logged in: run `puterfs login`, set PUTER_TOKEN (or PUTER_AUTH_TOKEN), or pass --token-file")
    return tok


def _token_source(args: argparse.Namespace) -> str | None:
    """Where the token would come from (never the token itself)."""
    path = getattr(args, "token_file", None)
    if path is not None:
        return f"--token-file {path}" if config.read_token_file(path) else None
    var = config.token_env()
    if var is not None:
        return var
    if config.read_token_file(config.token_file()):
        return str(config.token_file())
    return None


@asynccontextmanager
async def _client(acc: config.Account, token: str | None) -> AsyncIterator[PuterClient]:
    import warnings

    from puterfs.client import PuterClient

    if not acc.verify_tls:
        # One plain line instead of the library's UserWarning with a source location.
        warnings.filterwarnings("ignore", message=r"PuterClient\(ignore_ssl=True\)")
        if acc.api_url.startswith("https:") or acc.web_url.startswith("https:"):
            print("warning: TLS certificates are not verified (--insecure)", file=sys.stderr)
    client = PuterClient(
        token=token,
        ignore_ssl=not acc.verify_tls,
        api_url=acc.api_url,
        web_url=acc.web_url,
        # A person is waiting: fail within seconds instead of the library's long backoff.
        max_retries=CLI_MAX_RETRIES,
        domain=acc.domain,
        tier=acc.tier,
    )
    async with client:
        yield client


def _run_raw(fn: Callable[[], Awaitable[T]]) -> T:
    """Run one async step of a command under trio (the CLI is synchronous otherwise)."""
    import trio

    return trio.run(fn)


def _refused(exc: Any, args: argparse.Namespace) -> CliError:
    """A 401 in one line: what the server said, where the token came from, what to do."""
    source = _token_source(args)
    if source in config.TOKEN_ENV_VARS:
        todo = f"unset {source} or set a valid token (`puterfs login` saves one to {config.token_file()})"
    elif source:
        todo = f"run `puterfs login` (or fix {source})"
    else:
        todo = "run `puterfs login`"
    return CliError(f"the server refused the token from {source or 'nowhere'} ({exc.message}): {todo}")


def _run(fn: Callable[[], Awaitable[T]], args: argparse.Namespace | None = None) -> T:
    """:func:`_run_raw`, mapping client errors to CLI errors."""
    from puterfs.client._errors import AuthenticationError, PuterConnectionError, PuterError

    try:
        return _run_raw(fn)
    except PuterConnectionError as exc:
        raise CliError(f"cannot reach the Puter server: {exc.message}") from None
    except AuthenticationError as exc:
        if args is None:
            raise CliError(exc.message) from None
        raise _refused(exc, args) from None
    except PuterError as exc:
        raise CliError(exc.message) from None


# --------------------------------------------------------------------------------------
# login / logout


def _read_stdin_line(what: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise CliError(f"no {what} on standard input")
    return line.rstrip("\r\n")


def _prompt(text: str) -> str:
    """A visible prompt on stderr (stdout stays clean for scripts)."""
    sys.stderr.write(text)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise CliError("aborted")
    return line.strip()


def _otp_code(args: argparse.Namespace, attempt: int) -> str:
    if args.otp and attempt == 0:
        return str(args.otp).strip()
    if args.otp:
        raise CliError("login failed: the 2FA code was not accepted")
    if sys.stdin.isatty():
        return _prompt("2FA code: ")
    # Scripts give the code as the line after the password.
    code = sys.stdin.readline().strip()
    if not code:
        raise CliError("this account has two-factor authentication: pass --otp CODE")
    return code


def cmd_login(args: argparse.Namespace) -> int:
    from puterfs import authflow

    return authflow.cmd_login(args)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def cmd_logout(args: argparse.Namespace) -> int:
    from puterfs import authflow

    return authflow.cmd_logout(args)


# --------------------------------------------------------------------------------------
# mount state: state files, pids, /proc/self/mountinfo


def _mount_path(mountpoint: str) -> str:
    """Absolute path of a mountpoint without stat-ing it (a dead FUSE mount answers ENOTCONN)."""
    path = os.path.abspath(os.path.expanduser(mountpoint))
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out = bytearray()
    raw = field.encode()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="surrogateescape")


def _mount_fstype(path: str) -> str | None:
    """The filesystem type mounted exactly at ``path`` (e.g. ``fuse.puterfs``), or None."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "unknown" if os.path.ismount(path) else None
    found = None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == path:
            found = right.split()[0] if right else "unknown"  # the last one stacked wins
    return found


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False  # exited, not yet reaped by its parent
    except (OSError, IndexError):
        pass
    return True


def _is_puterfs_process(pid: int) -> bool:
    """Guard against a reused pid in a stale state file before sending it a signal."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell (no /proc): trust the state file
    return b"puterfs" in cmdline


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _int(state: dict[str, Any] | None, key: str) -> int:
    try:
        return int((state or {}).get(key) or 0)
    except (TypeError, ValueError):
        return 0


def _remove_stale(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove stale state file %s: %s", path, exc)


# --------------------------------------------------------------------------------------
# umount / status


def _holders(path: str, exclude: set[int]) -> list[str]:
    """The processes using something inside the mount at `path` (open files, current or
    root directory, mapped files), as "PID (COMM) WHAT", like fuser(1) would name them."""
    inside = path.rstrip("/") + "/"

    def within(target: str) -> bool:
        return target == path or target.startswith(inside)

    found: list[str] = []
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return found
    for pid in sorted(pids):
        if pid in exclude:
            continue
        what: list[str] = []
        for link, label in (("cwd", "cwd"), ("root", "root")):
            try:
                if within(os.readlink(f"/proc/{pid}/{link}")):
                    what.append(label)
            except OSError:
                pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if within(target):
                    what.append(os.path.relpath(target, path))
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and within(parts[5].strip()):
                        what.append(os.path.relpath(parts[5].strip(), path) + " (mapped)")
                        break
        except OSError:
            pass
        if what:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                comm = "?"
            uniq = list(dict.fromkeys(what))
            found.append(f"{pid} ({comm}) {', '.join(uniq[:3])}{' …' if len(uniq) > 3 else ''}")
    return found


def _busy_error(path: str, holders: list[str]) -> CliError:
    who = "; ".join(holders[:8]) + (f"; and {len(holders) - 8} more" if len(holders) > 8 else "")
    return CliError(
        f"{path} is busy (in use by {who or 'a process'}): close those, or run "
        "`puterfs umount --lazy` to detach it now and finish once they are done"
    )


def _kernel_unmount(path: str, *, lazy: bool, daemon_pid: int) -> None:
    """`fusermount3 -u` (refused while busy, like umount(8)) or `-u -z` (detach now)."""
    if not lazy:
        holders = _holders(path, exclude={os.getpid(), daemon_pid})
        if holders:
            raise _busy_error(path, holders)
    for prog in ("fusermount3", "fusermount"):
        argv = [prog, "-u", "-z", path] if lazy else [prog, "-u", path]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            continue
        except subprocess.TimeoutExpired:
            raise CliError(f"{' '.join(argv)} did not finish within 60 s") from None
        if proc.returncode != 0:
            err = proc.stderr.strip()
            if "busy" in err.lower():
                raise _busy_error(path, _holders(path, exclude={os.getpid(), daemon_pid}))
            raise CliError(f"{' '.join(argv)} failed: {err or proc.returncode}")
        return
    raise CliError("fusermount3 is not installed (apt-get install fuse3)")


def _dead_mount(path: str) -> bool:
    """A FUSE mount whose daemon is gone answers ENOTCONN (listdir: never from a cache)."""
    import errno

    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def _left_behind(state: dict[str, Any] | None) -> tuple[int, list[str]]:
    """(count, paths) of the files a state file says are not on the server."""
    files = [f for f in (state or {}).get("pending_files") or [] if isinstance(f, dict)]
    paths = [str(f.get("path")) for f in files]
    failed = [f for f in (state or {}).get("failed_files") or [] if isinstance(f, dict)]
    paths += [f"{f.get('path')} (failed: {f.get('reason')})" for f in failed if f.get("path") not in paths]
    return max(_int(state, "pending"), len(paths)), paths


def _report_left(path: str, state: dict[str, Any], how: str) -> CliError:
    count, paths = _left_behind(state)
    shown = ", ".join(paths[:10]) + (f", and {count - 10} more" if count > 10 else "")
    cache = state.get("cache_dir") or "the cache dir"
    return CliError(
        f"{path}: {how}; {count} file(s) not uploaded stay in {cache} and go up at the next "
        f"mount with that cache dir: {shown or '(names unknown)'}"
    )


def cmd_umount(args: argparse.Namespace) -> int:
    path = _mount_path(args.mountpoint)
    state_path = config.mount_state_file(path)
    state = _read_state(state_path)
    pid = _int(state, "pid")
    fstype = _mount_fstype(path)
    alive = bool(pid) and _pid_alive(pid) and _is_puterfs_process(pid)

    if not alive:
        # No daemon: nothing can be uploaded now. Its files not uploaded stay in the cache.
        left = _left_behind(state)[0] if state is not None else 0
        if state is not None:
            _remove_stale(state_path)
        if fstype is not None and not fstype.startswith("fuse"):
            raise CliError(f"{path} is a {fstype} mount, not a puterfs mount")
        if fstype is not None and not _dead_mount(path):
            # Served by a daemon this environment has no state file of (another
            # XDG_RUNTIME_DIR, or not puterfs): unmount it like fusermount3 -u would.
            _kernel_unmount(path, lazy=args.lazy, daemon_pid=0)
            print(
                f"Unmounted {path} (its daemon is unknown here: no state file in {config.runtime_dir()}; "
                "a puterfs daemon uploads what is pending before it exits)"
            )
            return 0
        if fstype is not None:
            # A dead FUSE mount ("Transport endpoint is not connected"): nothing is open in
            # it that could still work, so detach it.
            _kernel_unmount(path, lazy=True, daemon_pid=0)
        if left and state is not None:
            how = "is not mounted" if fstype is None else "unmounted the dead mount"
            how += f" (its daemon, pid {pid}, is gone)" if not state.get("stopped") else ""
            raise _report_left(path, state, how)
        if fstype is None:
            raise CliError(f"{path} is not mounted")
        print(
            f"Unmounted {path} (no running puterfs daemon; files it had not uploaded yet stay in its "
            "cache and are uploaded by the next mount with the same --cache-dir)"
        )
        return 0

    # Once the kernel lets go of the mount, the daemon uploads what is pending and exits by
    # itself. SIGTERM asks for the same (sending it again never aborts the uploads); SIGUSR1
    # tells it to stop waiting.
    sig: int | None = signal.SIGUSR1 if args.force else None
    if fstype is not None:
        if not fstype.startswith("fuse"):
            raise CliError(f"{path} is a {fstype} mount on top of the puterfs one; unmount it first")
        _kernel_unmount(path, lazy=args.lazy, daemon_pid=pid)
        if args.lazy and _holders(path, exclude={os.getpid(), pid}):
            print(
                f"detached {path}; its daemon finishes once the files still open in it are closed",
                file=sys.stderr,
            )
    else:
        if not args.force:
            print(f"{path} is already unmounted; waiting for its daemon (pid {pid})", file=sys.stderr)
            sig = signal.SIGTERM
    if sig is not None:
        try:
            os.kill(pid, sig)
        except PermissionError:
            raise CliError(f"not allowed to signal the puterfs daemon (pid {pid}) of {path}") from None
        except ProcessLookupError:
            pass
    _wait_for_daemon(pid, path, state_path, args.timeout, progress=not args.force)
    final = _read_state(state_path)
    if final is not None:
        # Kept for `puterfs status` (and any other umount still waiting) until the next
        # mount of this mountpoint replaces it.
        if _left_behind(final)[0]:
            if final.get("stopped"):
                how = "stopped without waiting for uploads (--force)" if final.get("forced") else "stopped"
            else:
                how = f"the daemon (pid {pid}) died before it had uploaded everything"
            raise _report_left(path, final, how)
    print(f"Unmounted {path}")
    return 0


def _wait_for_daemon(pid: int, path: str, state_path: Path, timeout: float, *, progress: bool = True) -> None:
    deadline = time.monotonic() + timeout
    shown: tuple[int, int, str | None, int, str | None] | None = None
    while True:
        alive = _pid_alive(pid)
        if not alive:
            if _mount_fstype(path) is not None:
                # The daemon is gone but the kernel mount is not: clear it so the path is usable.
                print(
                    f"warning: the daemon (pid {pid}) exited without unmounting; running fusermount3 -u -z",
                    file=sys.stderr,
                )
                _kernel_unmount(path, lazy=True, daemon_pid=pid)
            return
        state = _read_state(state_path)
        # "pending" counts every dirty file not yet on the server, in-flight ones included.
        waiting = _int(state, "pending")
        failed = _int(state, "failed_attempts")
        error = (state or {}).get("last_error")
        auth = (state or {}).get("auth") if isinstance((state or {}).get("auth"), dict) else {}
        refused = auth.get("message") if auth.get("state") == "refused" else None
        now = (waiting, failed, error, _int(state, "uploading"), refused)
        if progress and state is not None and now != shown and (waiting or failed):
            msg = f"waiting for {waiting} pending uploads…"
            if refused:
                msg += f" ({refused}; the mount uploads them then)"
                error = None
            if _int(state, "uploading"):
                msg += f" ({_int(state, 'uploading')} in flight)"
            if failed:
                msg += f" ({failed} failed, retrying"
                msg += f": {error})" if error else ")"
            print(msg, file=sys.stderr, flush=True)
            shown = now
        if time.monotonic() >= deadline:
            cache = (state or {}).get("cache_dir") or "its cache dir"
            raise CliError(
                f"timed out after {timeout:g} s with {waiting} uploads pending; the daemon (pid {pid}) "
                f"keeps uploading: run `puterfs umount {path}` again to wait, or add --force to stop "
                f"now (the files stay in {cache})"
            )
        time.sleep(0.2)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _mount_entry(state_path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """What `status` reports of one mount, from its daemon's state file. Fields written by
    newer daemons (failed_files, large_uploads, auth, freshness) are passed on when present."""
    pid = _int(state, "pid")
    mountpoint = str(state.get("mountpoint") or "")
    alive = _pid_alive(pid) and not state.get("stopped")
    pending = _int(state, "pending")
    failed_files = _dicts(state.get("failed_files"))
    entry = {
        "mountpoint": mountpoint,
        "pid": pid,
        "alive": alive,
        "stopping": bool(state.get("stopping")) and alive,
        "stopped": bool(state.get("stopped")),
        "mounted": bool(mountpoint) and _mount_fstype(mountpoint) is not None,
        "account": state.get("account"),
        "api_url": state.get("api_url"),
        "remote_root": state.get("remote_root"),
        "cache_dir": state.get("cache_dir"),
        "pending": pending,
        "pending_files": _dicts(state.get("pending_files")),
        "failed_files": failed_files,
        "large_uploads": _dicts(state.get("large_uploads")),
        "uploading": _int(state, "uploading"),
        "failed_attempts": _int(state, "failed_attempts"),
        # an error of an upload that has since gone through is not news
        "last_error": state.get("last_error") if pending or failed_files else None,
        "updated": state.get("updated"),
        "state_file": str(state_path),
    }
    for key in ("auth", "freshness"):
        if isinstance(state.get(key), dict):
            entry[key] = state[key]
    if isinstance(state.get("lost_found"), list) and state["lost_found"]:
        entry["lost_found"] = state["lost_found"]  # recovered data kept aside (docs/reliability.md)
    return entry


def _human_size(n: Any) -> str:
    try:
        size = float(n)
    except (TypeError, ValueError):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def _since(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _print_mount(m: dict[str, Any]) -> None:
    if m["stopped"]:
        daemon = "stopped, with files left in the cache (uploaded by the next mount)"
    elif not m["alive"]:
        daemon = "NOT RUNNING (it died; `puterfs umount` cleans up)"
    elif m["stopping"]:
        daemon = "running, stopping (uploading what is pending, then exiting)"
    else:
        daemon = "running"
    print(f"mount:    {m['mountpoint']}")
    print(f"  daemon:   pid {m['pid']} {daemon}")
    print(f"  account:  {m['account'] or '(unknown)'} on {m['api_url']}")
    print(f"  remote:   {m['remote_root']}")
    print(f"  cache:    {m['cache_dir']}")
    auth = m.get("auth")
    if auth:
        line = str(auth.get("state") or "?")
        if auth.get("token_kind"):
            line += f" ({auth['token_kind']} token)"
        if auth.get("message"):
            line += f": {auth['message']}"
        print(f"  auth:     {line}")
    failed = m["failed_files"]
    print(
        f"  uploads:  {m['pending']} pending ({m['uploading']} uploading), {len(failed)} failed"
        + (f", {m['failed_attempts']} retrying after errors" if m["failed_attempts"] else "")
    )
    shown = m["pending_files"]
    for f in shown:
        if f.get("op"):  # a namespace op not on the server yet (docs/namespace.md)
            print(f"    pending  {f.get('op')}  since {_since(f.get('since'))}")
        else:
            print(f"    pending  {f.get('path')}  {_human_size(f.get('size'))}  since {_since(f.get('since'))}")
    if m["pending"] > len(shown) and shown:
        print(f"    … and {m['pending'] - len(shown)} more")
    for f in failed:
        print(f"    FAILED   {f.get('path')}: {f.get('reason')}  since {_since(f.get('since'))}")
    for f in m["large_uploads"]:
        done, total = f.get("done") or 0, f.get("total") or 0
        pct = f" {100 * done / total:.0f}%" if isinstance(done, (int, float)) and total else ""
        print(f"    large    {f.get('path')}  {_human_size(done)} of {_human_size(total)}{pct}")
    if m["last_error"]:
        print(f"  last error: {m['last_error']}")
    lost = m.get("lost_found")
    if lost:
        where = os.path.join(str(m["cache_dir"]), "lost+found")
        print(f"  lost+found: {len(lost)} file(s) the cache could not place, kept in {where} (docs/reliability.md)")
    fresh = m.get("freshness")
    if fresh:
        print("  freshness: " + ", ".join(f"{k}={v}" for k, v in fresh.items()))


def _token_kind(args: argparse.Namespace) -> str | None:
    """The kind of the token commands would use (docs/cli.md#token-kinds); never the token."""
    from puterfs.client import token_kind

    try:
        return token_kind(config.load_token(getattr(args, "token_file", None)))
    except (OSError, ValueError):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    acc = _account(args)
    source = _token_source(args)
    if args.mountpoint:
        paths = [config.mount_state_file(_mount_path(args.mountpoint))]
    else:
        paths = sorted(config.runtime_dir().glob("*.json"))
    mounts = []
    for p in paths:
        state = _read_state(p)
        if state is not None:
            mounts.append(_mount_entry(p, state))
    account = {
        "api_url": acc.api_url,
        "web_url": acc.web_url,
        "username": acc.username,
        "verify_tls": acc.verify_tls,
        "token_present": source is not None,
        "token_source": source,
        "token_kind": _token_kind(args) if source is not None else None,
    }
    if args.json:
        json.dump({"account": account, "mounts": mounts}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        # The saved login (what the next `puterfs mount` uses); each mount names its own below.
        if acc.username:
            print(f"login:    {acc.username} on {acc.api_url}")
        else:
            print(f"login:    none saved (`puterfs login`); the default server is {acc.api_url}")
        known = account["token_kind"] not in (None, "unknown")
        kind = f"{account['token_kind']} token, " if known else ""
        print(f"token:    {'yes (' + kind + source + ')' if source else 'no'}")
        if not acc.verify_tls:
            print("tls:      verification OFF (--insecure)")
        if not mounts:
            print("mounts:   none")
        for m in mounts:
            _print_mount(m)
    if args.mountpoint and not mounts:
        print(f"puterfs: error: {_mount_path(args.mountpoint)} is not mounted by puterfs", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# chat / models


def _chat_prompt(args: argparse.Namespace) -> str:
    if args.prompt:
        return " ".join(args.prompt)
    if sys.stdin.isatty():
        raise CliError("give a prompt as arguments or on standard input", 2)
    text = sys.stdin.read()
    if not text.strip():
        raise CliError("the prompt on standard input is empty", 2)
    return text


def cmd_chat(args: argparse.Namespace) -> int:
    prompt = _chat_prompt(args)
    acc = _account(args)
    token = _token(args)
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    options: dict[str, Any] = {}
    if args.model:
        options["model"] = args.model
    chosen: list[str] = []
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    out = sys.stdout

    async def chat() -> str:
        last = ""
        async with _client(acc, token) as client:
            if "model" not in options:
                # The server has no default model: pick one it lists, as .ai/ does.
                ids = _model_ids(await client.get_available_models()) or _model_ids(await client.chat_models())
                model = config.pick_default_model(ids)
                if model is None:
                    raise CliError("the server lists no chat model: choose one with --model")
                options["model"] = model
                chosen.append(model)
                log.info("no --model: using %s", model)
            if args.no_stream:
                reply = await client.ai_chat(messages=messages, options=dict(options))
                text = _reply_text(reply)
                out.write(text)
                return text
            options["stream"] = True
            async for event in client.ai_chat_events(messages=messages, options=options):
                if event.type == "text" and event.text:
                    out.write(event.text)
                    out.flush()
                    last = event.text
        return last

    from puterfs.client._errors import AuthenticationError, BadRequest, PuterConnectionError, PuterError

    try:
        last = _run_raw(chat)
    except AuthenticationError as exc:
        raise _refused(exc, args) from None
    except BadRequest as exc:
        hint = "" if args.model else f" (with {chosen[0] if chosen else 'no model'}: choose one with --model; `puterfs models` lists them)"
        raise CliError(f"{exc.message}{hint}") from None
    except PuterConnectionError as exc:
        raise CliError(f"cannot reach the Puter server: {exc.message}") from None
    except PuterError as exc:
        raise CliError(exc.message) from None
    if last and not last.endswith("\n"):
        out.write("\n")
    out.flush()
    return 0


def _reply_text(reply: Any) -> str:
    """The text of a non-streamed ``ai_chat`` reply: ``{"response": envelope, "used_model"}``."""
    from puterfs.client._chat import result_text

    envelope = reply.get("response") if isinstance(reply, dict) else None
    result = envelope.get("result") if isinstance(envelope, dict) else None
    return result_text(result)


def cmd_models(args: argparse.Namespace) -> int:
    acc = _account(args)
    token = _token(args, required=False)

    async def models() -> list[str]:
        async with _client(acc, token) as client:
            found = await client.get_available_models()
            ids = _model_ids(found)
            if not ids and token:
                # The public list hides internal models and is empty on a server without
                # provider keys; the authenticated driver listing has them all.
                ids = _model_ids(await client.chat_models())
            return ids

    for model_id in _run(models, args):
        print(model_id)
    return 0


def _model_ids(found: Any) -> list[str]:
    if isinstance(found, dict):
        found = found.get("models", [])
    ids: list[str] = []
    for item in found or []:
        mid = item if isinstance(item, str) else _field(item, "id")
        if isinstance(mid, str) and mid not in ids:
            ids.append(mid)
    return ids


# --------------------------------------------------------------------------------------
# mount (with --auto) and the emulator


def _healthy(base_url: str) -> bool:
    import httpx

    from puterfs.client._hosts import SyncHostRoutingTransport

    try:
        with httpx.Client(transport=SyncHostRoutingTransport(), timeout=2.0) as http:
            resp = http.get(f"{base_url}/healthcheck")
        return resp.status_code == 200 and resp.json().get("ok") is True
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def _auto_port() -> int:
    raw = os.environ.get("PUTERFS_EMULATOR_PORT", "").strip()
    if not raw:
        return AUTO_EMULATOR_PORT
    try:
        port = int(raw)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise CliError(f"PUTERFS_EMULATOR_PORT={raw!r} is not a port number (1-65535)", 2) from None
    return port


def _emulator_data() -> Path:
    return config.data_dir() / "emulator"


def _our_emulator_pid(data: Path) -> int | None:
    """The pid in DATA/emulator.pid if that process really is `puterfs emulator --data DATA`
    (a pid file outlives its process, and the pid may belong to something else by now)."""
    try:
        pid = int((data / "emulator.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_alive(pid):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"puterfs" not in argv or b"emulator" not in argv or os.fsencode(str(data)) not in argv:
        return None
    return pid


def _start_auto_emulator() -> tuple[str, Path, bool]:
    """Reuse or start the local emulator; returns (api_url, token file, ours): `ours` when
    it runs with our --data (so its user is the default one)."""
    port = _auto_port()
    url = f"http://{AUTO_EMULATOR_HOST}:{port}"
    data = _emulator_data()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_path = data / "token"
    log_path = data / "emulator.log"
    proc: subprocess.Popen[bytes] | None = None
    if _healthy(url):
        log.info("reusing the emulator already answering on %s", url)
    else:
        print(f"starting the local Puter emulator on {url} (log: {log_path})", file=sys.stderr, flush=True)
        with open(log_path, "ab") as logf:
            # A new session: the emulator outlives this command and the terminal.
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "puterfs",
                    "emulator",
                    "--port",
                    str(port),
                    "--data",
                    str(data),
                    "--no-print-token",  # its stdout is a log file: keep the token out of it
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        (data / "emulator.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + AUTO_EMULATOR_START_TIMEOUT
    while True:
        if config.read_token_file(token_path) and _healthy(url):
            return url, token_path, proc is not None or _our_emulator_pid(data) is not None
        if proc is not None and proc.poll() is not None:
            raise CliError(
                f"the local emulator exited with code {proc.returncode} (is port {port} taken? "
                f"set PUTERFS_EMULATOR_PORT); see {log_path}"
            )
        if time.monotonic() >= deadline:
            if proc is None:
                raise CliError(
                    f"something answers on {url} but {token_path} does not appear: another program "
                    "(or an emulator with another --data) has that port; stop it, or set "
                    "PUTERFS_EMULATOR_PORT to another port"
                )
            raise CliError(
                f"the local emulator did not become ready within "
                f"{AUTO_EMULATOR_START_TIMEOUT:g} s; see {log_path}"
            )
        time.sleep(0.2)


def _puterfs_command() -> str:
    """How to run this puterfs again: the console script next to this Python, if any."""
    import shutil

    script = Path(sys.executable).parent / "puterfs"
    if script.exists():
        on_path = shutil.which("puterfs")
        if on_path and os.path.realpath(on_path) == os.path.realpath(script):
            return "puterfs"
        return str(script)
    return f"{sys.executable} -m puterfs"


def cmd_mount(args: argparse.Namespace) -> int:
    try:
        import pyfuse3  # noqa: F401 - the mount imports it late; fail here, before any side effect
    except ImportError as exc:
        raise CliError(
            f"mounting needs pyfuse3, which cannot be imported ({exc}); see docs/install.md"
        ) from None
    emulator_line = None
    if args.auto and getattr(args, "token_file", None) is None and _token_source(args) is None:
        args.api_url, token_path, ours = _start_auto_emulator()
        args.token_file = str(token_path)
        who = (
            f"user {AUTO_EMULATOR_USER}, password {AUTO_EMULATOR_PASSWORD}"
            if ours
            else "an emulator this command did not start: its own user"
        )
        print(
            f"No Puter account configured: mounting against the local emulator at {args.api_url} "
            f"({who}; data in {token_path.parent})",
            flush=True,
        )
        emulator_line = ours
    from puterfs import mount

    code = int(mount.main(args) or 0)
    if code == 0 and args.auto and not args.foreground:
        cmd = _puterfs_command()
        mp = _mount_path(args.mountpoint)
        print(f"Mounted {mp}. Next:")
        if cmd != "puterfs":
            print(f"  puterfs is {cmd} (not on your PATH; add {Path(cmd).parent} to PATH, or use the full path)")
        print(f"  {cmd} status              what is mounted, pending uploads")
        print(f"  {cmd} umount {mp}   upload what is pending, then unmount")
        if emulator_line is not None:
            print(f"  {cmd} emulator --stop     stop the local emulator (its files stay in its data dir)")
            if emulator_line:
                print(
                    f"  {cmd} login --api-url {args.api_url} --username {AUTO_EMULATOR_USER}"
                    f"   (password {AUTO_EMULATOR_PASSWORD}) to use it from the other commands"
                )
    return code


def cmd_emulator_stop(argv: list[str]) -> int:
    """`puterfs emulator --stop`: stop the emulator `mount --auto` started (its pid file,
    checked against the process's command line)."""
    data = _emulator_data()
    rest = [a for a in argv if a != "--stop"]
    if rest[:1] == ["--data"] and len(rest) == 2:
        data = Path(rest[1]).expanduser().resolve()
    elif rest:
        raise CliError("usage: puterfs emulator --stop [--data DIR]", 2)
    pid_file = data / "emulator.pid"
    pid = _our_emulator_pid(data)
    if pid is None:
        if pid_file.exists():
            pid_file.unlink(missing_ok=True)
            print(f"No emulator of {data} is running (removed the stale {pid_file})")
        else:
            print(f"No emulator of {data} is running")
        url = f"http://{AUTO_EMULATOR_HOST}:{_auto_port()}"
        if _healthy(url):
            print(f"note: something else answers on {url}; puterfs did not start it", file=sys.stderr)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            raise CliError(f"the emulator (pid {pid}) did not stop within 15 s; kill -9 {pid} ends it")
        time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    print(f"Stopped the emulator (pid {pid}); its files stay in {data}")
    return 0


# --------------------------------------------------------------------------------------
# install-service


SHIPPED_UNIT = Path(__file__).resolve().parent / "data" / "puterfs@.service"
UNIT_NAME = "puterfs@.service"


def systemd_escape_path(path: str) -> str:
    """`systemd-escape --path PATH`: the instance name of a mountpoint."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "-"
    out = []
    raw = "/".join(parts).encode()
    for i, byte in enumerate(raw):
        ch = chr(byte)
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and (ch.isalnum() or ch in ":_.")) and not (ch == "." and i == 0):
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def _unit_quote(word: str) -> str:
    """One word of an Exec= line (systemd's quoting; % doubled)."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and all(c.isalnum() or c in "/._-+:=@" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _service_argv() -> list[str]:
    """The absolute command that runs this puterfs (for a unit: no PATH there)."""
    script = Path(sys.executable).parent / "puterfs"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "puterfs"]


def render_unit(argv: list[str]) -> str:
    """The shipped unit with its `/usr/bin/env puterfs` replaced by `argv`."""
    command = " ".join(_unit_quote(w) for w in argv)
    text = SHIPPED_UNIT.read_text()
    return text.replace("=/usr/bin/env puterfs ", f"={command} ")


def _user_unit_dir() -> Path:
    value = os.environ.get("XDG_CONFIG_HOME")
    base = Path(value) if value and os.path.isabs(value) else Path.home() / ".config"
    return base / "systemd" / "user"


def _systemctl_user_works() -> str | None:
    """None when `systemctl --user` can talk to a user manager, else why not."""
    import shutil

    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    try:
        proc = subprocess.run(
            ["systemctl", "--user", "show-environment"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else f"exit {proc.returncode}"
    return None


def cmd_install_service(args: argparse.Namespace) -> int:
    import shlex

    mp = _mount_path(args.mountpoint)
    unit_dir = _user_unit_dir()
    unit_path = unit_dir / UNIT_NAME
    text = render_unit(_service_argv())
    unit_dir.mkdir(parents=True, exist_ok=True)
    old = unit_path.read_text() if unit_path.exists() else None
    if old != text:
        tmp = unit_path.with_name(unit_path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, unit_path)
        print(f"{'Updated' if old is not None else 'Wrote'} {unit_path} (runs {' '.join(_service_argv())})")
    else:
        print(f"{unit_path} is up to date")
    instance = f"puterfs@{systemd_escape_path(mp)}.service"
    if _token_source(args) is None:
        print(
            f"note: no saved token: run `puterfs login` first, or the service fails to start "
            f"(it reads {config.token_file()})",
            file=sys.stderr,
        )
    steps = [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", instance],
    ]
    why = "--no-enable was given" if args.no_enable else _systemctl_user_works()
    if why is not None:
        print(f"Not enabled ({why}). To start it at login, run in your session:")
        for step in steps:
            print("  " + shlex.join(step))
        print("  loginctl enable-linger $USER   # to keep it running while you are logged out")
        return 0
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise CliError(f"{shlex.join(step)} failed: {proc.stderr.strip() or proc.returncode}")
    print(f"Enabled and started {instance}: {mp} is mounted now and at every login")
    print(f"  status: systemctl --user status {shlex.quote(instance)}")
    print(f"  logs:   journalctl --user -u {shlex.quote(instance)}")
    print(f"  stop:   systemctl --user disable --now {shlex.quote(instance)}")
    return 0


def _mount_unavailable(error: BaseException) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise CliError(
            f"mounting is unavailable: {type(error).__name__}: {error} "
            "(is pyfuse3 installed? see docs/install.md)"
        )

    return run


def cmd_emulator(argv: list[str]) -> int:
    from puterfs import emulator

    return int(emulator.main(argv) or 0)


# --------------------------------------------------------------------------------------
# parser


def _command_index(argv: Sequence[str]) -> int | None:
    """Index of the subcommand: the first word that is not a top-level option."""
    for i, word in enumerate(argv):
        if not word.startswith("-"):
            return i
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the mount options are added only when ``command == "mount"``
    because they live in the FUSE module."""
    from puterfs import __version__

    parser = argparse.ArgumentParser(
        prog="puterfs",
        description="Puter's files as a local FUSE mount, and Puter's AI from the shell.",
        epilog="Run `puterfs COMMAND --help` for the options of a command. "
        "Exit codes: 0 ok, 1 error, 2 usage.",
    )
    parser.add_argument("--version", action="version", version=f"puterfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--api-url",
        metavar="URL",
        help="API server (default: env PUTER_API_URL, else the saved account, else "
        f"{config.DEFAULT_API_URL})",
    )
    server.add_argument(
        "--web-url", metavar="URL", help="login (GUI) host; derived from --api-url when not given"
    )
    server.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    add_server_options(server)
    server.add_argument("--debug", action="store_true", help="log debugging information to stderr")
    tokenopt = argparse.ArgumentParser(add_help=False)
    tokenopt.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the token from FILE (default: env PUTER_TOKEN or PUTER_AUTH_TOKEN, else the saved token)",
    )

    p = sub.add_parser(
        "login",
        parents=[server],
        help="log in and save the token",
        description="Log in to Puter and save the token (mode 0600) under "
        f"{config.token_file()}. On puter.com (and wherever a password is refused) you sign in "
        "in a browser: puterfs prints the URL (and opens it when this machine has a desktop) and "
        "receives the token on a one-shot listener on 127.0.0.1. Self-hosted servers also take a "
        "password: asked for on the terminal, or read as one line from standard input when it is "
        "not a terminal; never from the command line. Running mounts that use the saved token "
        "pick up the new one.",
    )
    from puterfs import authflow

    authflow.add_login_arguments(p)
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", parents=[server, tokenopt], help="log out and forget the saved token")
    p.set_defaults(func=cmd_logout)

    p = sub.add_parser(
        "mount",
        help="mount your Puter files on a local directory",
        description="Mount Puter files on a local directory (FUSE, with a write-back cache). "
        "Stop it with `puterfs umount MOUNTPOINT`, which waits for pending uploads.",
    )
    p.add_argument(
        "--auto",
        action="store_true",
        help="when no token is configured, start (or reuse) the local emulator on 127.0.0.1, "
        f"reached as {AUTO_EMULATOR_HOST}:{AUTO_EMULATOR_PORT} (env PUTERFS_EMULATOR_PORT), and mount against "
        f"it (user {AUTO_EMULATOR_USER}, password {AUTO_EMULATOR_PASSWORD}); then print the next steps",
    )
    if command == "mount":
        try:
            from puterfs import mount
        except Exception as exc:  # noqa: BLE001 - a broken pyfuse3 must not break the CLI
            log.debug("cannot import puterfs.mount", exc_info=True)
            p.description = f"{p.description} Unavailable here: {type(exc).__name__}: {exc}"
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(func=_mount_unavailable(exc))
        else:
            mount.add_arguments(p)
            p.set_defaults(func=cmd_mount)

    p = sub.add_parser(
        "umount",
        help="unmount, then wait until every pending change is uploaded",
        description="Unmount MOUNTPOINT like `fusermount3 -u` (refused while a process uses "
        "it: the processes are named) and wait until its daemon has uploaded every pending "
        "change and exited. Exit 0 (\"Unmounted\") only when nothing is left behind; 1 when "
        "busy, timed out, or files stayed in the cache. Running it again keeps waiting.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "--lazy",
        "-z",
        action="store_true",
        help="detach now even while files are open; the mount goes away when they are closed "
        "(then its uploads finish, and this command waits for them)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="stop waiting for uploads: the daemon exits now, the files not uploaded stay in the "
        "cache (uploaded by the next mount with that cache dir); exits 1 when any stayed",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_UMOUNT_TIMEOUT,
        metavar="S",
        help=f"give up waiting after S seconds (default {DEFAULT_UMOUNT_TIMEOUT:g}); "
        "the daemon keeps running and uploading",
    )
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser(
        "install-service",
        parents=[tokenopt],
        help="mount at every login: install and enable the systemd user unit",
        description="Write ~/.config/systemd/user/puterfs@.service running this puterfs "
        "(its absolute path), then `systemctl --user enable --now puterfs@MOUNTPOINT.service` "
        "where a user manager is running; elsewhere print those commands. Log in first.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", default="~/puter", help="default ~/puter")
    p.add_argument("--no-enable", action="store_true", help="only write the unit; print the commands")
    p.set_defaults(func=cmd_install_service)

    p = sub.add_parser("status", parents=[server, tokenopt], help="show the account and the running mounts")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="only this mount")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "chat",
        parents=[server, tokenopt],
        help="ask Puter's AI; the answer streams to stdout",
        description="Send PROMPT (the arguments, or standard input) to Puter's AI chat.",
    )
    p.add_argument("prompt", nargs="*", metavar="PROMPT")
    p.add_argument(
        "--model", "-m", metavar="M", help=f"model id (default {config.DEFAULT_CHAT_MODEL}; see `puterfs models`)"
    )
    p.add_argument("--system", "-s", metavar="S", help="system message")
    p.add_argument("--no-stream", action="store_true", help="print the answer only when it is complete")
    p.add_argument("--temperature", type=float, metavar="T")
    p.add_argument("--max-tokens", type=int, metavar="N")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("models", parents=[server, tokenopt], help="list the chat model ids, one per line")
    p.set_defaults(func=cmd_models)

    # Parsed by the emulator itself (see cmd_emulator); listed here for `puterfs --help`.
    sub.add_parser(
        "emulator",
        help="run a local Puter-compatible server (puterfs emulator --help); "
        "`puterfs emulator --stop` stops the one `mount --auto` started",
        add_help=False,
    )
    return parser


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        # httpx logs each request at INFO; the CLI's own messages are enough.
        logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    idx = _command_index(argv)
    command = argv[idx] if idx is not None else None
    if command == "emulator" and idx is not None:
        try:
            if "--stop" in argv[idx + 1 :]:
                return cmd_emulator_stop(argv[idx + 1 :])
            return cmd_emulator(argv[idx + 1 :])
        except CliError as exc:
            print(f"puterfs: error: {exc.message}", file=sys.stderr)
            return exc.code
        except KeyboardInterrupt:
            return 130
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command != "mount":
        # mount.main configures logging for the daemon (its own --debug).
        _setup_logging(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"puterfs: error: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `puterfs models | head -1`: the reader went away; not an error.
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    # Python would report the broken pipe again when flushing stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
