"""Where puterfs keeps its files, and the saved account (API URL, username, token).

The token lives in its own file, mode 0600, under the XDG config dir; it is never
passed on a command line and never logged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_API_URL = "https://api.puter.com"
DEFAULT_WEB_URL = "https://puter.com"
# The rate-limit tiers the client paces itself to (puterfs/client/_pacing.py; LIMITS.md).
# Here so that the CLI's --tier choices need no import of the client.
TIER_NAMES = ("free", "temp", "paid", "unlimited")

# Chat models tried, in order, when none is given (`puterfs chat`, `.ai/`): cheap and widely
# enabled. The real server has no default model (it answers "Model not found: undefined").
PREFERRED_CHAT_MODELS = ("gpt-5-nano", "gpt-4o-mini", "gpt-5-mini", "claude-haiku-4-5", "gemini-2.5-flash")
# The fake provider's test models that must never be picked as a default.
NEVER_DEFAULT_MODELS = frozenset({"abuse", "costly"})


def pick_default_model(ids: list[str]) -> str | None:
    """The model to use when none was chosen: the first preferred one listed, else the
    first listed that is not a test model."""
    lowered = {i.lower(): i for i in ids}
    choice = next((lowered[p] for p in PREFERRED_CHAT_MODELS if p in lowered), None)
    if choice is None:
        choice = next((i for i in ids if i.lower() not in NEVER_DEFAULT_MODELS), None)
    return choice
# The chat model when none is given (putergenai 3.5.0's default), in the library and the CLI.
DEFAULT_CHAT_MODEL = "gpt-5-nano"


def derive_web_url(api_url: str) -> str:
    """The GUI/login host that goes with an API host (the library and the CLI both use this).

    ``https://api.puter.com`` -> ``https://puter.com``; a self-hosted ``api.<domain>:<port>``
    -> ``<domain>:<port>``. A bare address (the emulator on 127.0.0.1) serves both.
    """
    parts = urlsplit(api_url.strip())
    host = parts.netloc
    if host.startswith("api."):
        host = host[len("api."):]
    return urlunsplit((parts.scheme, host, "", "", ""))


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def url_problem(url: str, what: str) -> str | None:
    """Why `url` cannot be a server URL (one line saying what to write instead), or None."""
    text = url.strip()
    if "://" not in text:
        host = text.split("/", 1)[0].split(":", 1)[0]
        local = host in ("localhost", "127.0.0.1", "::1", "[::1]") or host.endswith(".localhost")
        return f"{what} {text!r} has no scheme: write {'http' if local else 'https'}://{text.lstrip('/')}"
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in ("http", "https"):
        return f"{what} {text!r}: only http:// and https:// URLs are supported"
    if not rest.split("/", 1)[0]:
        return f"{what} {text!r} names no host: write e.g. https://api.puter.com"
    return None


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "puterfs"


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "puterfs"


def data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "puterfs"


def runtime_dir() -> Path:
    value = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(value) if value and os.path.isabs(value) else cache_dir() / "run"
    return base / "puterfs"


def token_file() -> Path:
    return config_dir() / "token"


def config_file() -> Path:
    return config_dir() / "config.json"


def mount_key(mountpoint: str | os.PathLike[str]) -> str:
    """A short stable name for a mountpoint (for state and cache folders)."""
    real = os.path.realpath(os.fspath(mountpoint))
    digest = hashlib.sha256(real.encode()).hexdigest()[:12]
    tail = "".join(c if c.isalnum() else "_" for c in os.path.basename(real))[:40] or "root"
    return f"{tail}-{digest}"


def mount_state_file(mountpoint: str | os.PathLike[str]) -> Path:
    """JSON written by a running mount daemon: pid, mountpoint, api_url, cache dir, pending uploads."""
    return runtime_dir() / f"{mount_key(mountpoint)}.json"


@dataclass
class Account:
    api_url: str = DEFAULT_API_URL
    web_url: str = DEFAULT_WEB_URL
    username: str | None = None
    verify_tls: bool = True
    # the server's own domain when api_url names it by address (see docs/client.md)
    domain: str | None = None
    # the account's rate-limit tier: free, temp, paid or unlimited (None: free, or temp for a
    # temporary account, as /whoami says)
    tier: str | None = None


def load_account() -> Account:
    acc = Account()
    try:
        data = json.loads(config_file().read_text())
    except (OSError, ValueError):
        data = {}
    acc.api_url = data.get("api_url", acc.api_url)
    acc.web_url = data.get("web_url", acc.web_url)
    acc.username = data.get("username")
    acc.verify_tls = bool(data.get("verify_tls", True))
    acc.domain = data.get("domain") or None
    acc.tier = str(data["tier"]) if data.get("tier") else None
    acc.api_url = os.environ.get("PUTER_API_URL", acc.api_url)
    acc.tier = os.environ.get("PUTER_TIER") or acc.tier
    acc.web_url = os.environ.get("PUTER_WEB_URL", acc.web_url)
    return acc


def save_account(acc: Account) -> None:
    config_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {
        "api_url": acc.api_url,
        "web_url": acc.web_url,
        "username": acc.username,
        "verify_tls": acc.verify_tls,
    }
    if acc.domain:
        data["domain"] = acc.domain
    if acc.tier:
        data["tier"] = acc.tier
    _write_private(config_file(), json.dumps(data, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_token(token: str, path: Path | None = None) -> Path:
    path = path or token_file()
    _write_private(path, token.strip() + "\n")
    return path


def read_token_file(path: str | os.PathLike[str]) -> str | None:
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


TOKEN_ENV_VARS = ("PUTER_TOKEN", "PUTER_AUTH_TOKEN")  # ours, then puter.js's name


def token_env() -> str | None:
    """The name of the environment variable that holds the token, if one does."""
    for var in TOKEN_ENV_VARS:
        if os.environ.get(var, "").strip():
            return var
    return None


def token_path(token_file_path: str | os.PathLike[str] | None = None) -> Path | None:
    """The file the token is read from (absolute), or None when it comes from the environment.

    A running mount rereads this file when it changes (``puterfs login`` signals it)."""
    if token_file_path is not None:
        return Path(os.path.abspath(os.fspath(token_file_path)))
    if token_env() is not None:
        return None
    return token_file()


def load_token(token_file_path: str | os.PathLike[str] | None = None) -> str | None:
    """The token to use: ``--token-file``, else ``PUTER_TOKEN``, else ``PUTER_AUTH_TOKEN``,
    else the saved token file."""
    if token_file_path is not None:
        tok = read_token_file(token_file_path)
        if tok is None:
            raise FileNotFoundError(f"token file {os.fspath(token_file_path)!s} is missing or empty")
        return tok
    var = token_env()
    if var is not None:
        return os.environ[var].strip()
    return read_token_file(token_file())


def forget_token() -> None:
    try:
        token_file().unlink()
    except FileNotFoundError:
        pass
