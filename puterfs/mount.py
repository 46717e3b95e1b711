"""`puterfs mount`: the composition root.

Builds client -> Remote -> CacheStore -> PuterOperations (+ the .ai/ files), starts the
background tasks (upload workers, change poller, state file, signal handler) in one trio
nursery, serves FUSE with `pyfuse3.main()`, and on the way out uploads everything pending
before it exits. Without --foreground it forks once the mount is ready, so that a script
can use the directory as soon as the command returns.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("puterfs.mount")

AI_INODE_BASE = 1 << 48
# journal commits not fsync'ed yet go to the disk within this (as a local file system's
# journal commits every 5 s): what a power cut can take of them (docs/write-back.md)
JOURNAL_SYNC_INTERVAL = 5.0
CHECKPOINT_INTERVAL = 0.1  # how often the journal's checkpointer looks (fs/cache.py `checkpoint`)


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num = t.rstrip("KMGT")
    unit = t[len(num):]
    try:
        return int(float(num) * units[unit])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 10G)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint", help="an existing empty directory (see --nonempty)")
    p.add_argument("--nonempty", action="store_true", help="mount even over a directory that has files (they are hidden while mounted)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground (for systemd and debugging)")
    p.add_argument("--api-url", help="Puter API URL (default: $PUTER_API_URL, else the saved account, else https://api.puter.com)")
    p.add_argument("--web-url", help="Puter web URL (login host; default: $PUTER_WEB_URL, else derived from --api-url, else the saved account)")
    p.add_argument("--token-file", help="read the token from this file (default: $PUTER_TOKEN or $PUTER_AUTH_TOKEN, then the saved token)")
    p.add_argument("--remote-root", help="Puter folder to mount (default: your home, /<username>)")
    p.add_argument("--cache-dir", help="write-back cache folder (default: under $XDG_CACHE_HOME/puterfs)")
    p.add_argument("--cache-size", type=_size, default=_size("10G"), help="clean cached data kept at most (default 10G; dirty data is never evicted)")
    p.add_argument("--write-back", type=float, default=2.0, metavar="SECONDS", help="quiet period after the last close before a file is uploaded (default 2)")
    p.add_argument("--sync-uploads", action="store_true", help="fsync(2) returns only once the server holds the file (default: once it is on the local disk; the upload follows in the background)")
    p.add_argument("--poll-interval", type=float, default=2.0, metavar="SECONDS", help="while the change events are down or refused: how often to check the server's change timestamp (default 2)")
    p.add_argument("--listing-max-age", type=float, default=60.0, metavar="SECONDS", help="a directory listing is read again at the first use after this long, whatever the change events say (default 60)")
    p.add_argument("--relist-interval", type=float, default=30.0, metavar="SECONDS", help="one recently used directory whose listing is older than --listing-max-age is re-read in the background this often, for changes that send no event (/touch; default 30)")
    p.add_argument("--attr-timeout", type=float, default=1.0, metavar="SECONDS", help="how long the kernel may cache attributes (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="deadline of one filesystem request to the server (default 60)")
    p.add_argument("--ai-model", help="chat model the .ai/ files start with (default: picked from the server's list)")
    p.add_argument("--ai-timeout", type=float, default=600.0, metavar="SECONDS", help="deadline of one AI request made through .ai/ (default 600)")
    p.add_argument("--read-only", action="store_true", help="mount read-only; .ai/ then takes no prompts (a prompt is a write)")
    p.add_argument("--no-links", action="store_true",
                   help="no symbolic links: NAME.rclonelink files show as they are, symlink() is EPERM")
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount (needs user_allow_other in /etc/fuse.conf)")
    p.add_argument("--ai-all-users", action="store_true", help="with --allow-other, let every local user use .ai/ (billed to this account; each user has their own answers). Default: only you")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--log-file", metavar="FILE", help="write the log to FILE (default: stderr with --foreground, else CACHE_DIR/puterfs.log)")
    from puterfs.cli import add_server_options

    add_server_options(p)
    p.add_argument("--debug", action="store_true", help="verbose logging")


@dataclass
class _Settings:
    mountpoint: str
    api_url: str
    web_url: str
    token: str
    remote_root: str | None
    cache_dir: Path
    verify_tls: bool
    args: argparse.Namespace
    token_file: Path | None = None  # reread when it changes (None: the token came from the environment)
    token_source: str = ""
    domain: str | None = None
    tier: str | None = None


def _fail(msg: str) -> int:
    print(f"puterfs mount: {msg}", file=sys.stderr)
    return 1


def _mountpoint_problem(mp: str, *, nonempty: bool) -> str | None:
    """Why `mp` cannot be mounted on, in one line that says what to do; None when it can."""
    try:
        st = os.stat(mp)
    except FileNotFoundError:
        return f"{mp} does not exist: create it (mkdir -p {mp}) or choose another directory"
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return (
                f"{mp} is a dead FUSE mount (its daemon is gone): run `puterfs umount {mp}` "
                f"(or `fusermount3 -u -z {mp}`), then mount again"
            )
        return f"cannot use {mp}: {exc.strerror}"
    import stat as stat_mod

    if not stat_mod.S_ISDIR(st.st_mode):
        return f"{mp} is not a directory: mount on an empty directory"
    dead = (
        f"{mp} is a dead FUSE mount (its daemon is gone): run `puterfs umount {mp}` "
        f"(or `fusermount3 -u -z {mp}`), then mount again"
    )
    if os.path.ismount(mp):
        try:
            os.listdir(mp)  # not answered from the kernel's attribute cache, unlike stat
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return dead
        return f"{mp} is already a mount point (see `puterfs status` or `findmnt {mp}`): unmount it first"
    if not nonempty:
        try:
            names = sorted(os.listdir(mp))
        except OSError as exc:
            return f"cannot list {mp}: {exc.strerror}"
        if names:
            shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
            return (
                f"{mp} is not empty ({len(names)} entries: {shown}); the mount would hide them: "
                "choose an empty directory, or pass --nonempty to mount over them"
            )
    return None


def _settings(args: argparse.Namespace) -> _Settings | str:
    from puterfs import config

    mp = os.path.abspath(os.path.expanduser(args.mountpoint))
    problem = _mountpoint_problem(mp, nonempty=args.nonempty)
    if problem:
        return problem
    for opt, url in (("--api-url", args.api_url), ("--web-url", args.web_url)):
        bad = config.url_problem(url, opt) if url else None
        if bad:
            return bad
    try:
        token = config.load_token(args.token_file)
    except FileNotFoundError as exc:
        return str(exc)
    if not token:
        return (
            "no Puter account configured: run `puterfs login`, set PUTER_TOKEN, pass --token-file, "
            "or use `puterfs mount --auto` to try it against the local emulator"
        )
    acc = config.load_account()
    for var, url in (("PUTER_API_URL", acc.api_url), ("PUTER_WEB_URL", acc.web_url)):
        bad = config.url_problem(url, var if os.environ.get(var) else f"the saved account's {var[6:].lower()}")
        if bad and not (args.api_url if var == "PUTER_API_URL" else args.web_url):
            return bad
    api_url = args.api_url or acc.api_url
    # as the other commands do: a new API host gets the web host that goes with it
    web_url = args.web_url or (config.derive_web_url(api_url) if args.api_url else acc.web_url)
    cache_dir = Path(args.cache_dir) if args.cache_dir else config.cache_dir() / config.mount_key(mp)
    token_file = config.token_path(args.token_file)
    return _Settings(
        mountpoint=mp, api_url=api_url, web_url=web_url, token=token, remote_root=args.remote_root,
        cache_dir=cache_dir, verify_tls=acc.verify_tls and not args.insecure, args=args,
        token_file=token_file, token_source=str(token_file) if token_file is not None else str(config.token_env()),
        domain=getattr(args, "domain", None) or acc.domain, tier=getattr(args, "tier", None) or acc.tier,
    )


def main(args: argparse.Namespace) -> int:
    s = _settings(args)
    if isinstance(s, str):
        return _fail(s)
    from puterfs.fs.cache import CacheDirError, check_cache_dir

    try:
        check_cache_dir(s.cache_dir)  # owned by us, 0700, no planted links (docs/reliability.md)
    except (CacheDirError, OSError) as exc:
        return _fail(str(exc))
    if args.read_only:
        print("puterfs mount: note: --read-only: .ai/ takes no prompts (writing one is a write)", file=sys.stderr)
    log_file = Path(args.log_file).expanduser().resolve() if args.log_file else None
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a"):
                pass
        except OSError as exc:
            return _fail(f"cannot write the log file {log_file}: {exc.strerror}")
    if args.foreground:
        _setup_logging(args.debug, log_file)
        return _serve(s, ready=_notify_systemd)
    return _daemonize(s)


def _setup_logging(debug: bool, logfile: Path | None) -> None:
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "hpack", "pyfuse3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _daemonize(s: _Settings) -> int:
    """Fork; the parent returns once the child reports the mount ready (or failed)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        chunks = []
        while True:
            b = os.read(rfd, 4096)
            if not b:
                break
            chunks.append(b)
        os.close(rfd)
        msg = b"".join(chunks).decode(errors="replace")
        if msg.startswith("ok"):
            return 0
        if not msg:
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
            msg = f"the mount daemon exited (status {status}) before the mount was ready; see {s.args.log_file or s.cache_dir / 'puterfs.log'}"
        print(f"puterfs mount: {msg.strip()}", file=sys.stderr)
        return 1
    # child
    os.close(rfd)
    os.environ.pop("NOTIFY_SOCKET", None)  # only a --foreground daemon is systemd's main process
    os.setsid()
    if os.fork():
        os._exit(0)  # the grandchild is the daemon: no controlling terminal, reparented to init
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    _setup_logging(s.args.debug, Path(s.args.log_file).expanduser().resolve() if s.args.log_file else s.cache_dir / "puterfs.log")

    def ready(ok: bool = True, message: str = "") -> None:
        try:
            os.write(wfd, b"ok\n" if ok else message.encode() + b"\n")
            os.close(wfd)
        except OSError:
            pass

    code = 1
    try:
        code = _serve(s, ready=ready)
    finally:
        ready(False, "the mount daemon stopped")
        os._exit(code)


def sd_notify(message: str) -> None:
    """Send `message` (``KEY=value`` lines) to systemd's $NOTIFY_SOCKET, if there is one
    (the sd_notify protocol in a dozen lines, no library)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(message.encode() + b"\n")
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


def _notify_systemd(ok: bool = True, message: str = "") -> None:
    """Type=notify: READY=1 once the mount serves."""
    if not ok:
        print(f"puterfs mount: {message}", file=sys.stderr)
        return
    sd_notify("READY=1\nSTATUS=serving")


SOCKET_READ = 256 * 1024  # bytes per socket read of the daemon's HTTP/1.1 connections


def _bulk_socket_reads() -> None:
    """The daemon reads file bodies of megabytes (read-ahead chunks of 4 MiB, docs/performance.md).
    httpcore's HTTP/1.1 connections read their socket 64 KiB at a time, and each read passes
    through h11, httpcore and httpx in Python: 256 KiB reads cut the daemon's CPU per cold
    sequential read by a quarter. For every connection of this process (httpcore has no
    per-connection setting); a read still returns what has arrived, so small answers and the
    events' long polls are unchanged."""
    import httpcore

    conn = getattr(httpcore, "AsyncHTTP11Connection", None)
    if conn is not None and getattr(conn, "READ_NUM_BYTES", SOCKET_READ) < SOCKET_READ:
        conn.READ_NUM_BYTES = SOCKET_READ


def _serve(s: _Settings, ready: Callable[..., None]) -> int:
    import trio

    _bulk_socket_reads()
    try:
        return trio.run(_run, s, ready)
    except KeyboardInterrupt:
        return 130


async def _run(s: _Settings, ready: Callable[..., None]) -> int:
    import pyfuse3
    import trio

    from puterfs import config
    from puterfs.client import PuterClient
    from puterfs.client._errors import AuthenticationError, PuterError
    from puterfs.fs.cache import CacheDirError, CacheStore
    from puterfs.fs.operations import PuterOperations
    from puterfs.fs.remote import Remote
    from puterfs.mount_auth import MountAuth

    args = s.args
    state_path = config.mount_state_file(s.mountpoint)
    # Each request's failure is judged on its own: the client retries an idempotent request
    # (and reconciles another one with the server's state) until --timeout (a bit less, so
    # that running out of the budget is reported as such), with backoff from 50 ms capped at
    # 2 s (a dropped answer is retried at once; an outage is the poller's to judge). Only
    # the change poller decides the server is unreachable; then retries stop (keep_retrying)
    # and calls fail at once, serving cached data, while the upload queue waits for it.
    async with PuterClient(
        token=s.token, ignore_ssl=not s.verify_tls, api_url=s.api_url, web_url=s.web_url,
        max_retries=None, retry_base_delay=0.05, retry_max_delay=2.0, deadline=max(1.0, args.timeout - 2.0),
        tier=s.tier, domain=s.domain,
    ) as client:
        try:
            root = s.remote_root or await client.home()
            if not client.username:
                await client.whoami()  # the account's name for `puterfs status`
        except AuthenticationError as exc:
            source = s.token_source
            if source in config.TOKEN_ENV_VARS:
                todo = f"unset {source} or set a valid token (`puterfs login` saves one to {config.token_file()})"
            else:
                todo = f"run `puterfs login` (or fix {source})"
            ready(False, f"the server refused the token from {source} ({exc.message}): {todo}")
            return 1
        except PuterError as exc:
            ready(False, f"cannot reach Puter at {s.api_url}: {exc}")
            return 1
        try:
            cache = CacheStore(s.cache_dir)
        except (CacheDirError, OSError) as exc:
            ready(False, f"cannot use the cache dir: {exc}")
            return 1
        remote = Remote(client, root, timeout=args.timeout)

        def keep_retrying() -> bool:
            # a request failed and may be retried: the poller probes the server (only its
            # probes decide reachability); once it says unreachable, retries stop
            remote.suspect = True
            return remote.unreachable is None and remote.token_refused is None

        client.keep_retrying = keep_retrying
        changed = _Changed(trio.Event)
        on_change = changed.set
        remote.on_auth_change = on_change

        ops = PuterOperations(
            remote, cache, attr_timeout=args.attr_timeout, write_back=args.write_back,
            listing_max_age=args.listing_max_age,
            cache_size=args.cache_size, read_only=args.read_only, on_change=on_change,
            links=not getattr(args, "no_links", False), sync_uploads=getattr(args, "sync_uploads", False),
        )
        try:
            await ops.prepare()
        except PuterError as exc:
            cache.close()
            ready(False, f"cannot use {root} on {s.api_url}: {exc}")
            return 1

        def resumed() -> None:
            ops.queue.retry_now()  # what failed while the token was refused goes up now
            ops.ns.retry_now()
            ops.epoch += 1  # and listings are read again

        auth = MountAuth(client, remote, token_file=s.token_file, token_source=s.token_source,
                         on_resume=resumed, on_change=on_change)
        ops.queue.blocked = auth.upload_block  # no uploads sent while the token is refused
        try:
            from puterfs.fs.aifiles import AiFiles

            ops.ai = AiFiles(
                client, inode_base=AI_INODE_BASE, read_mount_file=ops.read_path, uid=ops.uid, gid=ops.gid,
                timeout=args.ai_timeout, default_model=args.ai_model,
                all_users=args.ai_all_users,
            )
        except ImportError:  # pragma: no cover - the AI files are part of the package
            log.warning("AI control files unavailable")

        options = set(pyfuse3.default_options)
        options |= {f"fsname=puterfs:{root}", "subtype=puterfs"}
        if args.allow_other:
            options.add("allow_other")
        if args.read_only:
            options.add("ro")
        mountpoint_real = os.path.realpath(s.mountpoint)  # not later: that would stat our own mount
        try:
            pyfuse3.init(ops, s.mountpoint, options)
        except RuntimeError as exc:
            cache.close()
            ready(False, f"cannot mount on {s.mountpoint}: {exc}")
            return 1
        log.info("mounted %s%s on %s", s.api_url, root, s.mountpoint)
        from puterfs.fs.freshness import Freshness

        freshness = Freshness(ops, relist_interval=args.relist_interval, on_change=on_change)
        stop = _Stop(ops, changed, mountpoint_real)
        account = client.username
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(ops.queue.run)
                ops.spawn = nursery.start_soon  # background read-ahead (fs/readahead.py)
                nursery.start_soon(ops.ns.run)
                nursery.start_soon(ops.sync_journal_every, JOURNAL_SYNC_INTERVAL)
                nursery.start_soon(_checkpointer, ops.cache)
                nursery.start_soon(ops.poll_changes, args.poll_interval)
                nursery.start_soon(freshness.run)
                nursery.start_soon(_state_writer, ops, s, root, account, state_path, changed, stop, auth)
                nursery.start_soon(auth.run)
                if ops.ai is not None:
                    await ops.ai.start(nursery)
                nursery.start_soon(_signals, ops, stop, auth)
                ready(True)
                await pyfuse3.main()
                stop.serving = False
                await ops.release_all()
                # Unmounted (by us after a signal, or by `puterfs umount` / fusermount3 -u):
                # upload what is left, unless told to stop waiting.
                stop.request("unmounted")
                await stop.drain()
                nursery.cancel_scope.cancel()
        finally:
            if ops.ai is not None:
                with trio.CancelScope(shield=True):
                    try:
                        await ops.ai.aclose()
                    except Exception:  # noqa: BLE001
                        log.exception("closing the AI files")
            pyfuse3.close(unmount=True)
            left = _pending_files(ops, cap=None)
            failed = ops.failed_files()
            cache.close()
            _final_state(state_path, s, root, account, left, forced=stop.forced, failed=failed)
        for f in failed:
            log.error("%s was not uploaded: the server refused it (%s); it stays in %s", f["path"], f["reason"], s.cache_dir)
        if left:
            log.warning(
                "%d file(s) not uploaded; they stay in %s and go up at the next mount with that cache dir: %s",
                len(left), s.cache_dir, ", ".join(f["path"] for f in left[:20]),
            )
            log.info("unmounted %s", s.mountpoint)
            return 1
        log.info("unmounted %s", s.mountpoint)
        return 0


def _mounted_at(path: str) -> bool:
    """Whether something is mounted at `path` (from /proc/self/mountinfo: a stat would be
    a request to this very daemon)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return True
    encoded = path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
    return any(len(f := line.split()) > 4 and f[4] == encoded for line in lines)


class _Stop:
    """How the daemon stops: the first SIGTERM/SIGINT (or the unmount) drains the upload
    queue; more SIGTERMs (another `puterfs umount`) keep waiting; SIGUSR1 (`puterfs umount
    --force`) or a second Ctrl-C stops waiting, leaving the files in the cache."""

    def __init__(self, ops: Any, changed: Any, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.ops = ops
        self.changed = changed
        self.requested = False
        self.forced = False
        self.serving = True
        self._scopes: set[Any] = set()  # trio.CancelScope of each drain under way

    def request(self, why: str) -> bool:
        """True the first time (the caller then starts the drain)."""
        if self.requested:
            return False
        self.requested = True
        pending = self.ops.statistics()["pending"]
        log.info("stopping (%s): uploading %d pending file(s) first", why, pending)
        sd_notify(f"STOPPING=1\nSTATUS=uploading {pending} pending file(s) before exit")
        self.changed.set()
        return True

    def force(self) -> None:
        import pyfuse3

        if self.forced:
            return
        self.forced = True
        self.requested = True
        log.warning("told to stop waiting for uploads: files not uploaded stay in the cache")
        for scope in self._scopes:
            scope.cancel()
        if self.serving:
            self.serving = False
            pyfuse3.terminate()

    async def drain(self) -> None:
        import trio

        if self.forced:
            return
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await self.ops.shutdown()
        finally:
            self._scopes.discard(scope)


async def _signals(ops: Any, stop: _Stop, auth: Any) -> None:
    import pyfuse3
    import trio

    async def drain_then_unmount() -> None:
        await stop.drain()
        # Detached already (`puterfs umount --lazy`): the kernel ends the session once the
        # files still open in it are closed; ending it now would break their next write.
        if stop.serving and not stop.forced and _mounted_at(stop.mountpoint):
            stop.serving = False
            pyfuse3.terminate()

    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(*sigs) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    ops.epoch += 1  # re-read listings
                    auth.reread()  # and the token file (`puterfs login` sends SIGHUP)
                elif signum == signal.SIGUSR1 or (signum == signal.SIGINT and stop.requested):
                    stop.force()
                elif stop.request(signal.Signals(signum).name):
                    nursery.start_soon(drain_then_unmount)
                else:
                    log.info(
                        "still uploading %d file(s); `puterfs umount --force` (SIGUSR1) stops waiting",
                        ops.statistics()["pending"],
                    )


PENDING_FILES_CAP = 100  # pending files named in the state file (the count is always exact)


def _pending_files(ops: Any, cap: int | None = PENDING_FILES_CAP) -> list[dict[str, Any]]:
    """The dirty files not yet on the server, oldest change first."""
    entries = sorted(ops.cache.dirty_entries(), key=lambda e: e.mtime_ns)
    if cap is not None:
        entries = entries[:cap]
    out = [{"path": e.path, "size": e.size, "since": e.mtime_ns / 1e9} for e in entries]
    # namespace ops not on the server yet (mkdir, rmdir, unlink, rename: "op" says which)
    for op in ops.ns.describe_pending(None if cap is None else cap - len(out)):
        out.append({"path": op["path"], "size": 0, "since": op["since"], "op": op["op"]})
    return out


def _state(ops: Any, s: _Settings, root: str, account: str | None, auth: Any = None) -> dict[str, Any]:
    st = ops.statistics()
    return {
        "pid": os.getpid(),
        "mountpoint": s.mountpoint,
        "api_url": s.api_url,
        "account": account,
        "remote_root": root,
        "cache_dir": str(s.cache_dir),
        "pending": st["pending"],
        "pending_files": _pending_files(ops),
        "uploading": st["uploading"],
        "failed_attempts": st["failed_attempts"],
        # an error of an upload that since succeeded is history, not state
        "last_error": st["last_error"] if st["pending"] else None,
        "uploaded": st["uploaded"],
        "cache_bytes": st["cache_bytes"],
        # what the start-up recovery of a damaged cache journal did (docs/reliability.md)
        "recovered": st.get("recovered", 0),
        "lost_found": st.get("lost_found", []),
        # {"state": "ok"|"refused", "message", "detail", "token_kind", "token_source", "token_file"}
        "auth": auth.state() if auth is not None else None,
        # uploads the server refused as they are (not retried until the file changes)
        "failed_files": ops.failed_files(),
        "large_uploads": ops.large_upload_progress(),
        # {"mode": "events"|"polling", "reason": why not events (None while they arrive)}
        "freshness": ops.freshness.state() if getattr(ops, "freshness", None) is not None else None,
    }


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.debug("cannot write %s: %s", path, exc)


def _final_state(
    path: Path, s: _Settings, root: str, account: str | None, left: list[dict[str, Any]], *, forced: bool,
    failed: list[dict[str, Any]] | None = None,
) -> None:
    """At exit: no state file when everything reached the server; else one that says
    the daemon stopped and which files stay in the cache (`puterfs umount` reports it)."""
    if not left:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    _write_state(path, {
        "pid": os.getpid(), "mountpoint": s.mountpoint, "api_url": s.api_url, "account": account,
        "remote_root": root, "cache_dir": str(s.cache_dir), "stopped": True, "forced": forced,
        "pending": len(left), "pending_files": left, "uploading": 0, "updated": time.time(),
        "failed_files": failed or [],
    })  # fmt: skip


async def _checkpointer(cache: Any, interval: float = CHECKPOINT_INTERVAL) -> None:
    """Checkpoint the cache journal on a worker thread (fs/cache.py `checkpoint`), not in a
    commit on the FUSE thread: a checkpoint syncs two files, which a burst of unlinks or
    creates would otherwise wait for every few hundred commits."""
    import trio

    while True:
        await trio.sleep(interval)
        mark = cache.checkpoint_due()
        if mark is not None:
            try:
                await trio.to_thread.run_sync(cache.checkpoint, mark)
            except Exception as exc:  # noqa: BLE001 - the commit's own checkpoint is the fallback
                log.warning("cannot checkpoint the cache journal: %s", exc)


async def _state_writer(
    ops: Any, s: _Settings, root: str, account: str | None, path: Path, changed: Any, stop: _Stop, auth: Any
) -> None:
    import trio

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    last = None
    while True:
        state = _state(ops, s, root, account, auth)
        if stop.requested:
            state["stopping"] = True
        if state != last:
            if stop.requested and (last is None or state["pending"] != last["pending"]):
                sd_notify(f"STATUS=uploading {state['pending']} pending file(s) before exit")
            state["updated"] = time.time()
            # on a worker thread: a file created and renamed under a loaded disk can take a
            # millisecond, which the event loop (every FUSE request) would wait for
            await trio.to_thread.run_sync(_write_state, path, state)
            state.pop("updated")
            last = state
        with trio.move_on_after(1.0):
            await changed.wait()
        await trio.sleep(0.1)  # at most a few rewrites per second


class _Changed:
    """A resettable wake-up for the state writer (trio events cannot be cleared)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._event = factory()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = self._factory()
