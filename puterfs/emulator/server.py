"""``puterfs emulator``: serve an ``Emulator`` with uvicorn on a loopback port."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from puterfs import config

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="puterfs emulator", description="Run a local Puter-compatible server.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4100, help="port (0 picks a free one; default 4100)")
    p.add_argument("--data", type=Path, default=None, help="data directory (default: XDG data dir/emulator)")
    p.add_argument("--user", default="puter", help="the user created on first start (default puter)")
    p.add_argument("--password", default="puterpass", help="that user's password (default puterpass)")
    p.add_argument("--otp-secret", default=None, metavar="BASE32", help="make the user a 2FA (TOTP) user")
    p.add_argument("--domain", default="puter.localhost", help="root domain for Host routing")
    p.add_argument(
        "--captcha", action="store_true",
        help="refuse scripted /login and /signup as puter.com does (a captcha is required; "
        "the AuthMe page at /?action=authme still signs users in)",
    )
    p.add_argument(
        "--tier", default="free", choices=("free", "temp", "paid", "unlimited"),
        help="rate-limit tier of signed-up users (temp users get 'temp' unless 'paid'); 'unlimited' turns "
             "limits off (default free)",
    )
    p.add_argument(
        "--allow-ip-hosts", action="store_true",
        help="also serve requests whose Host is an IP address (a real server answers them 404 on every "
             "route, and so does the emulator by default); reach it by name, e.g. "
             "http://api.puter.localhost:PORT",
    )
    p.add_argument("--log-level", default="warning", help="log level (default warning)")
    p.add_argument(
        "--no-print-token", action="store_true",
        help="do not print the token (it is always in DATA/token, mode 0600); for runs whose stdout goes to a log",
    )
    return p


ADMIN_SECRET_FILE = "admin-secret"
ADMIN_SECRET_HEADER = "X-Emulator-Secret"


def write_admin_secret(data: Path) -> str:
    """A fresh secret for the admin routes in DATA/admin-secret (0600; DATA is 0700)."""
    import secrets

    secret = secrets.token_hex(24)
    path = data / ADMIN_SECRET_FILE
    tmp = path.with_name(ADMIN_SECRET_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data = args.data or (config.data_dir() / "emulator")
    data = Path(data).expanduser().resolve()

    from puterfs.emulator.app import Emulator

    emu = Emulator(data, username=args.user, password=args.password, otp_secret=args.otp_secret,
                   domain=args.domain, tier=args.tier,
                   refuse_ip_hosts=not args.allow_ip_hosts)
    emu.behind_server = True
    # /_emulator/* (request log with bodies, fault switches) answers only who can read DATA
    emu.admin_secret = write_admin_secret(data)
    emu.captcha = args.captcha
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it every response (headers, then body, in two
    # writes) waits for the client's delayed ACK, about 40 ms per request on loopback.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"puterfs emulator: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    address = f"http://{host}:{port}"
    # It answers its names, not its address (Host routing, as a real server): the API URL.
    # *.localhost names reach 127.0.0.1 by themselves (RFC 6761; puterfs's client does it);
    # another --domain needs DNS, or the client's --domain with the address.
    url = f"http://api.{emu.domain}:{port}"

    cfg = uvicorn.Config(emu.app, log_level=args.log_level.lower(), access_log=False, http="h11", ws="wsproto",
                         interface="asgi3",
                         proxy_headers=False, server_header=False,
                         lifespan="off", timeout_graceful_shutdown=3)
    server = uvicorn.Server(cfg)

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            server.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        if not cfg.loaded:
            cfg.load()
        server.lifespan = cfg.lifespan_class(cfg)
        await server.startup(sockets=[sock])
        if server.should_exit:
            return
        # The lines tests and scripts wait for (the token is what a client needs).
        print(f"puterfs emulator: serving {url} (web http://{emu.domain}:{port}, on {address}; "
              f"user {emu.username}, data {data})", flush=True)
        if not args.no_print_token:
            print(f"token: {emu.token}", flush=True)
        print(f"READY {url}", flush=True)
        await server.main_loop()
        await server.shutdown(sockets=[sock])

    try:
        asyncio.run(run())
    finally:
        emu.store.close()
    return 0
