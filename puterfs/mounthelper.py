"""``mount.fuse.puterfs``: what mount(8) runs for ``mount -t fuse.puterfs`` and fstab lines.

mount(8) calls ``mount.fuse.puterfs SOURCE MOUNTPOINT [-o OPTIONS] [-n] [-s] [-v]``. SOURCE
is ``puterfs:`` (your Puter home) or ``puterfs:/alice/Documents`` (that folder), as rclone
names its remotes; the colon keeps mount(8) from taking it for a local path. OPTIONS are ``puterfs mount``'s long options with ``_`` (or ``-``) for the dashes
inside a name, as sshfs and rclone take theirs::

    mount -t fuse.puterfs puterfs: ~/puter -o write_back=5,ai_timeout=120
    # /etc/fstab
    puterfs:  /home/alice/puter  fuse.puterfs  noauto,_netdev,setuid=alice  0 0

The helper translates them and runs ``puterfs mount`` (daemon mode: it returns once the
mount is usable). Generic mount options (``rw``, ``noauto``, ``user``, ``_netdev``,
``x-systemd.*``...) are for mount(8) and systemd and are ignored here; ``ro`` is
``--read-only``; ``setuid=USER`` (root only) runs the daemon as USER, with USER's saved
token and cache, for fstab lines mounted at boot. See docs/cli.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# option name -> the `puterfs mount` flag that takes its value
VALUE_OPTIONS = {
    "api_url": "--api-url",
    "web_url": "--web-url",
    "token_file": "--token-file",
    "remote_root": "--remote-root",
    "cache_dir": "--cache-dir",
    "cache_size": "--cache-size",
    "write_back": "--write-back",
    "poll_interval": "--poll-interval",
    "attr_timeout": "--attr-timeout",
    "timeout": "--timeout",
    "ai_model": "--ai-model",
    "ai_timeout": "--ai-timeout",
    "log_file": "--log-file",
    "domain": "--domain",
    "tier": "--tier",
}
# option name -> the flag it turns on
FLAG_OPTIONS = {
    "ro": "--read-only",
    "read_only": "--read-only",
    "allow_other": "--allow-other",
    "ai_all_users": "--ai-all-users",
    "nonempty": "--nonempty",
    "no_links": "--no-links",
    "sync_uploads": "--sync-uploads",
    "insecure": "--insecure",
    "debug": "--debug",
}
# mount(8)'s and systemd's own options: nothing for the daemon to do
IGNORED = {
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
    "nofail", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
    "strictatime", "nodiratime", "diratime", "sync", "async", "lazytime", "nolazytime", "loud",
    "silent",
}  # fmt: skip
IGNORED_PREFIXES = ("x-", "comment=")


class UsageError(Exception):
    pass


def translate(source: str, mountpoint: str, options: Sequence[str]) -> tuple[list[str], str | None]:
    """(the `puterfs mount` arguments, the user of `setuid=` or None)."""
    args: list[str] = []
    setuid: str | None = None
    name, colon, folder = source.partition(":")
    if name != "puterfs" or (folder and not folder.startswith("/")):
        raise UsageError(
            f"source {source!r}: use `puterfs:` (your home) or `puterfs:/alice/Documents` (a folder)"
        )
    if folder.strip("/"):
        args += ["--remote-root", folder]
    for opt in options:
        if not opt:
            continue
        name, sep, value = opt.partition("=")
        key = name.strip().replace("-", "_")
        if name in IGNORED or opt.startswith(IGNORED_PREFIXES):
            continue
        if key == "setuid":
            if not value:
                raise UsageError("setuid needs a user name: setuid=alice")
            setuid = value
        elif key in VALUE_OPTIONS:
            if not sep or not value:
                raise UsageError(f"option {name} needs a value: {name}=...")
            args += [VALUE_OPTIONS[key], value]
        elif key in FLAG_OPTIONS:
            if sep:
                raise UsageError(f"option {name} takes no value")
            args.append(FLAG_OPTIONS[key])
        else:
            known = ", ".join(sorted({*VALUE_OPTIONS, *FLAG_OPTIONS, "setuid"}))
            raise UsageError(f"unknown option {name!r} (puterfs options: {known})")
    return [*args, mountpoint], setuid


def parse_argv(argv: Sequence[str]) -> tuple[str, str, list[str]]:
    """mount(8)'s calling convention: SOURCE MOUNTPOINT, -o OPTS (also -oOPTS), -n -s -v."""
    positional: list[str] = []
    options: list[str] = []
    it = iter(argv)
    for word in it:
        if word == "-o":
            value = next(it, None)
            if value is None:
                raise UsageError("-o needs a list of options")
            options += value.split(",")
        elif word.startswith("-o"):
            options += word[2:].split(",")
        elif word in ("-n", "-s", "-v", "-f"):
            continue  # no mtab, sloppy, verbose, fake: nothing for us
        elif word.startswith("-"):
            raise UsageError(f"unknown argument {word!r}")
        else:
            positional.append(word)
    if len(positional) != 2:
        raise UsageError("usage: mount.fuse.puterfs SOURCE MOUNTPOINT [-o OPTIONS]")
    return positional[0], positional[1], options


def _become(user: str) -> None:
    """Run as `user` from here on: their groups, uid, HOME (so their token and cache)."""
    import pwd

    if os.geteuid() != 0:
        raise UsageError("setuid= needs root (it is for fstab lines mounted at boot)")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"setuid={user}: no such user") from None
    os.initgroups(pw.pw_name, pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    for var in list(os.environ):
        if var.startswith("XDG_") or var.startswith("PUTER_"):
            del os.environ[var]
    os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    runtime = f"/run/user/{pw.pw_uid}"
    if os.path.isdir(runtime):
        os.environ["XDG_RUNTIME_DIR"] = runtime


def main(argv: Sequence[str] | None = None) -> int:
    try:
        source, mountpoint, options = parse_argv(list(sys.argv[1:] if argv is None else argv))
        args, setuid = translate(source, mountpoint, options)
        if setuid is not None:
            _become(setuid)
    except UsageError as exc:
        print(f"mount.fuse.puterfs: {exc}", file=sys.stderr)
        return 1  # mount(8): 1 is "incorrect invocation or permissions"
    from puterfs.cli import main as cli_main

    return cli_main(["mount", *args])


if __name__ == "__main__":
    sys.exit(main())
