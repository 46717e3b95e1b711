"""The `.ai/` directory at the root of every mount: control files that drive Puter's AI.

`AiFiles` is self-contained: the mount's pyfuse3 `Operations` delegates every request on
an inode or file handle it owns (`owns`, `owns_fh`). The semantics users see are written
down in docs/ai-files.md; this docstring covers the mechanics.

* **Sessions.** Everything a user sets or gets (model, options, conversation, the last
  answer of each request file, the last error) lives in a `_Session` keyed by the
  caller's uid, so users of one mount never see each other's answers.
* **Answers.** Writing a prompt and closing the file descriptor (FUSE ``flush``, which
  ``close(2)`` waits for, unlike ``release``) starts an `_Answer`: a task in the mount's
  nursery that appends bytes to a buffer and wakes readers through a `trio.Event`.
  A read waits only on that event, so a slow answer never blocks any other request.
  The new answer becomes the user's current answer of that file; a previous one still
  running is cancelled. A descriptor opened ``O_RDWR`` that reads after writing gets a
  private answer of its own instead (no close needed, nothing else is cancelled).
* **Offsets.** A read-only descriptor reads its answer at the kernel's offset (seekable,
  so `Image.open` and `cp` work); an ``O_RDWR`` descriptor is non-seekable and keeps its
  own read position, because the kernel's file position also counts the bytes written.
* **Errors.** A request that fails keeps the text received so far; once a reader has
  consumed it, the read fails with the errno of the failure. The message goes to the
  session's `error` file and to the log. Input that can never succeed (binary data for
  chat, too much data) is refused by `write` itself, so the writing program sees it.

Code between two awaits is atomic under trio; no lock is needed for session state.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import json
import logging
import math
import os
import signal
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from puterfs.client._errors import PuterError, PuterTimeout
from puterfs.config import pick_default_model
from puterfs.fs.errors import FsError, to_errno

log = logging.getLogger(__name__)

AI_FH_BASE = 1 << 48  # every fh handed out here is >= this; the main filesystem's are smaller

# Input limits, checked while the data is written so that the writer sees the error.
CHAT_MAX_BYTES = 1 << 20  # a prompt of 1 MiB is ~250k tokens, beyond any model's context
IMG_MAX_CHARS = 32_000  # the longest prompt image models accept (gpt-image-1)
TTS_MAX_CHARS = 3_000  # puter.js's limit for puter-tts, and AWS Polly's
OCR_MAX_BYTES = 20 << 20  # images are sent inline as a data: URI in one JSON body
CONTROL_MAX_BYTES = 64 << 10  # model, options, error, reset
CONVERSATION_MAX_BYTES = 8 << 20
HISTORY_MAX_CHARS = 2_000_000  # older turns are dropped beyond this (oldest first)
MAX_RUNNING_PER_USER = 8  # more concurrent requests of one uid get EAGAIN

SIGNAL_POLL = 0.2  # how often a read waiting for an answer checks its caller's signals
WAIT_SLACK = 5.0  # a read never waits longer than the mount's --ai-timeout plus this

MODELS_TTL = 60.0  # seconds a fetched model list is trusted
LIST_TIMEOUT = 30.0  # deadline of model and voice listings (short: they block a syscall)


_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"%PDF-", "application/pdf"),
)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HELP_TEXT = """\
.ai/ : Puter AI from the shell (full reference: docs/ai-files.md)

  echo "question" > .ai/chat; cat .ai/chat     ask; the answer streams as it arrives
  cat notes.md > .ai/chat; cat .ai/chat        a prompt may be a whole file (max 1 MiB)
  cat .ai/model; echo gpt-4o > .ai/model        show / switch the model (unknown: EINVAL)
  cat .ai/models                                the available models, one per line
  cat .ai/conversation                          the turns so far (JSON); the next prompt sees them
  echo > .ai/reset                              start a new conversation
  echo temperature=0.2 >> .ai/options           options: temperature max_tokens system history
                                                timeout voice engine language tts_provider image_model
  echo hello > .ai/tts; cat .ai/tts > a.mp3     text to speech (MP3)
  cp scan.png .ai/ocr; cat .ai/ocr              OCR of image bytes, a path in the mount or a URL
  echo "a red fox" > .ai/img; cat .ai/img > f.png   image generation (PNG)
  cat .ai/error                                 why the last request failed
  cat .ai/voices                                the TTS voices

A prompt is sent when the file written is closed. A new prompt replaces (and cancels)
your previous answer of that file. Each user of the mount has their own answers.
"""


# -- the files -----------------------------------------------------------------------------

# Request files: a prompt goes in, an answer streams out.
_REQUEST_FILES = ("chat", "tts", "ocr", "img")
# Order is the readdir order and fixes the inode numbers (inode_base + 1 + index).
# The modes are the owner's bits; with `all_users` they are copied to group and others.
_FILES: tuple[tuple[str, int], ...] = (
    ("chat", 0o600),
    ("model", 0o600),
    ("models", 0o400),
    ("options", 0o600),
    ("conversation", 0o600),
    ("reset", 0o600),
    ("tts", 0o600),
    ("voices", 0o400),
    ("ocr", 0o600),
    ("img", 0o600),
    ("error", 0o600),
    ("help", 0o400),
)


def _for_all(mode: int) -> int:
    owner = mode & 0o700
    return owner | owner >> 3 | owner >> 6


def may_access(st_mode: int, st_uid: int, st_gid: int, uid: int, groups: frozenset[int], want: int) -> bool:
    """The classic Unix permission check (what the kernel's default_permissions does):
    `want` is a mask of os.R_OK / os.W_OK / os.X_OK. Root may do anything but execute a
    file without any x bit."""
    if uid == 0:
        return not (want & os.X_OK) or bool(st_mode & 0o111) or stat.S_ISDIR(st_mode)
    if uid == st_uid:
        bits = (st_mode >> 6) & 7
    elif st_gid in groups:
        bits = (st_mode >> 3) & 7
    else:
        bits = st_mode & 7
    return bits & want == want


def _proc_status(pid: int) -> dict[bytes, bytes] | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    out: dict[bytes, bytes] = {}
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        out[key] = value.strip()
    return out


def caller_groups(pid: int, gid: int) -> frozenset[int]:
    """The primary and supplementary groups of process `pid` (from /proc)."""
    groups = {gid}
    status = _proc_status(pid) if pid > 0 else None
    if status is not None:
        groups.update(int(g) for g in status.get(b"Groups", b"").split() if g.isdigit())
    return frozenset(groups)


def signal_pending(pid: int) -> bool:
    """Whether the thread `pid`, blocked in a FUSE request of ours, would be interrupted:
    a SIGKILL is pending (kill -9, or a signal whose default action ends the process,
    such as Ctrl-C's SIGINT), or a signal it handles and does not block.

    pyfuse3 does not pass FUSE_INTERRUPT to the filesystem, and once a request has reached
    the daemon the kernel waits for its answer even after kill -9: a read waiting for an
    AI answer polls this instead and gives up with EINTR. A thread that no longer exists
    (the descriptor is read by another process than the one that opened it) is not
    interrupted: the wait stays bounded by the AI timeout."""
    status = _proc_status(pid) if pid > 0 else None
    if status is None:
        return False
    try:
        pending = int(status.get(b"SigPnd", b"0"), 16)
        if status.get(b"Threads", b"1") == b"1":
            # A process-wide signal goes to a multi-threaded process's choice of thread.
            pending |= int(status.get(b"ShdPnd", b"0"), 16)
        blocked = int(status.get(b"SigBlk", b"0"), 16)
        caught = int(status.get(b"SigCgt", b"0"), 16)
    except ValueError:
        return False
    if pending & (1 << (signal.SIGKILL - 1)):
        return True
    return bool(pending & ~blocked & caught)


# -- options -------------------------------------------------------------------------------


def _parse_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "on", "true", "yes"):
        return True
    if low in ("0", "off", "false", "no"):
        return False
    raise ValueError("expected on or off")


def _parse_float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        num = float(value)
        if not (lo <= num <= hi) or math.isnan(num):
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return num

    return parse


def _parse_positive_int(value: str) -> int:
    num = int(value)
    if num < 1:
        raise ValueError("must be a positive integer")
    return num


def _parse_text(value: str) -> str:
    # One line per option: "\n" and "\\" escapes let a system prompt span lines.
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


def _render_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


# key -> (parser, what the key does)
_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "temperature": (_parse_float(0.0, 2.0), "chat sampling temperature, 0 to 2"),
    "max_tokens": (_parse_positive_int, "longest chat answer, in tokens"),
    "system": (_parse_text, "system prompt of chat (one line; \\n for a newline)"),
    "history": (_parse_bool, "on: each chat prompt sees the conversation so far (default on)"),
    "timeout": (_parse_float(1.0, 86400.0), "seconds before a request fails with ETIMEDOUT"),
    "voice": (_parse_text, "tts voice"),
    "engine": (_parse_text, "tts engine (e.g. standard, neural)"),
    "language": (_parse_text, "tts language code (e.g. en-US)"),
    "tts_provider": (_parse_text, "tts provider (aws-polly, openai, elevenlabs, ...)"),
    "image_model": (_parse_text, "model of .ai/img"),
}


def parse_option_line(line: str) -> tuple[str, Any] | None:
    """``key=value`` → (key, parsed value); ``key=`` → (key, None) to unset; blank or
    ``#`` comment → None. Raises ValueError with a message for the user."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValueError(f"options: {text!r} is not key=value")
    if key not in _OPTIONS:
        raise ValueError(f"options: unknown key {key!r} (known: {', '.join(_OPTIONS)})")
    value = value.strip()
    if value == "":
        return key, None
    parser = _OPTIONS[key][0]
    try:
        return key, parser(value)
    except ValueError as exc:
        raise ValueError(f"options: bad value for {key}: {value!r} ({exc})") from None


def render_options(options: dict[str, Any]) -> str:
    """Every key, one per line; unset keys show an empty value (``key=``), so the file
    documents itself and can be written back as it is."""
    lines = []
    for key in _OPTIONS:
        value = options.get(key)
        if value is None:
            shown = ""
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        elif isinstance(value, str):
            shown = _render_text(value)
        else:
            shown = str(value)
        lines.append(f"{key}={shown}\n")
    return "".join(lines)


# -- answers and sessions ------------------------------------------------------------------


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def _unwrap(exc: BaseException) -> BaseException:
    # A nursery inside the HTTP stack may wrap the one real error in an ExceptionGroup.
    while True:
        inner = getattr(exc, "exceptions", None)
        if not (isinstance(inner, (list, tuple)) and len(inner) == 1):
            return exc
        exc = inner[0]


class _Answer:
    """The output of one AI request: bytes that grow until `done`, then maybe an error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.buf = bytearray()
        self.done = False
        self.error: BaseException | None = None
        self.scope = trio.CancelScope()
        self.created_ns = time.time_ns()
        self.changed_ns = self.created_ns
        self.cancel_reason = ""
        self._changed = trio.Event()

    def _wake(self) -> None:
        self.changed_ns = time.time_ns()
        self._changed.set()
        self._changed = trio.Event()

    def append(self, data: bytes) -> None:
        if data and not self.done:
            self.buf += data
            self._wake()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.error = exc
            self.done = True
            self._wake()

    def cancel(self, reason: str) -> None:
        """Stop the request; readers get the text so far, then ECANCELED."""
        if not self.done:
            self.cancel_reason = reason
            self.scope.cancel()
            self.fail(FsError(errno.ECANCELED, reason))

    async def wait_beyond(self, pos: int) -> None:
        """Wait until bytes past `pos` exist or the answer is complete."""
        while len(self.buf) <= pos and not self.done:
            await self._changed.wait()


@dataclass
class _Session:
    """What one uid has set and asked in this mount."""

    uid: int
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)
    error: str = ""
    answers: dict[str, _Answer | None] = field(default_factory=lambda: dict.fromkeys(_REQUEST_FILES))
    running: set[_Answer] = field(default_factory=set)
    mtime_ns: dict[str, int] = field(default_factory=dict)

    def touch(self, name: str) -> None:
        self.mtime_ns[name] = time.time_ns()

    def add_turn(self, prompt: str, answer: str) -> None:
        self.history.append({"role": "user", "content": prompt})
        self.history.append({"role": "assistant", "content": answer})
        total = sum(len(m["content"]) for m in self.history)
        # Drop the oldest turns first; keep at least the newest one.
        while total > HISTORY_MAX_CHARS and len(self.history) > 2:
            total -= len(self.history.pop(0)["content"])
        self.touch("conversation")


@dataclass
class _Handle:
    """One open file (or the directory) of `.ai/`."""

    name: str
    inode: int
    session: _Session | None
    flags: int = 0
    readable: bool = False
    writable: bool = False
    # written data not yet acted on
    wbuf: bytearray = field(default_factory=bytearray)
    decoder: Any = None
    chars: int = 0
    poisoned: BaseException | None = None  # a write was refused: nothing is sent on close
    poison_published: bool = False
    truncate: bool = False  # O_TRUNC / truncate(0) seen: options and conversation start empty
    # request files
    answer: _Answer | None = None
    bound: bool = False  # `answer` was chosen (an O_RDWR fd chooses at its first read)
    owns_answer: bool = False
    published: bool = False
    rpos: int = 0
    # other readable files: the content as it was at open
    snapshot: bytes = b""
    # the caller at open (pyfuse3 gives read and flush no request context)
    pid: int = 0
    groups: frozenset[int] = frozenset()

    @property
    def rdwr(self) -> bool:
        return self.readable and self.writable


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _image_mime(data: bytes) -> str | None:
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _to_png(data: bytes) -> bytes:
    """Re-encode any image Pillow reads as PNG (runs in a worker thread)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()


class AiFiles:
    """The `.ai/` virtual directory. See the module docstring and docs/ai-files.md."""

    NAME = b".ai"

    def __init__(
        self,
        client: Any,
        *,
        inode_base: int,
        read_mount_file: Callable[..., Awaitable[bytes]],
        uid: int,
        gid: int,
        timeout: float = 600.0,
        default_model: str | None = None,
        all_users: bool = False,
    ) -> None:
        """`read_mount_file(rel, access)` returns a file of the mount; it calls
        `access(st_mode, st_uid, st_gid, want)` on each directory on the way (want X_OK)
        and on the file (R_OK) and fails with EACCES where that returns False.
        `all_users`: let every user of an `allow_other` mount use the files (each with
        their own session); by default only `uid` (the mount's owner) may."""
        self._client = client
        self._read_mount_file = read_mount_file
        self._uid = uid
        self._gid = gid
        self.all_users = all_users
        self.timeout = timeout
        self.default_model = default_model
        self.root_inode = inode_base
        self._inodes: dict[int, str] = {inode_base + 1 + i: name for i, (name, _) in enumerate(_FILES)}
        self._by_name: dict[str, int] = {name: ino for ino, name in self._inodes.items()}
        self._modes: dict[str, int] = {n: _for_all(m) if all_users else m for n, m in _FILES}
        self._dir_mode = 0o755 if all_users else 0o700
        self._sessions: dict[int, _Session] = {}
        self._handles: dict[int, _Handle] = {}
        self._next_fh = AI_FH_BASE
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._start_ns = time.time_ns()
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._resolved_default: str | None = None

    # -- life cycle ----------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._closed = False

    async def aclose(self) -> None:
        """Cancel every request still running; readers see ECANCELED."""
        self._closed = True
        for session in self._sessions.values():
            for ans in list(session.running):
                ans.cancel("the mount is shutting down")

    # -- ownership and attributes --------------------------------------------------------

    def owns(self, inode: int) -> bool:
        return inode == self.root_inode or inode in self._inodes

    def owns_fh(self, fh: int) -> bool:
        return fh >= AI_FH_BASE

    def _check_user(self, ctx: Any) -> None:
        """Only the mount's owner opens `.ai/` files, unless `all_users`: the requests are
        charged to the owner's account. Root is no exception (it would spend the credit
        of the user who mounted)."""
        uid = getattr(ctx, "uid", None)
        if self.all_users or uid is None or uid == self._uid:
            return
        raise FsError(errno.EACCES, f".ai/ answers only its owner (uid {self._uid}); see --ai-all-users")

    def _session(self, ctx: Any) -> _Session:
        uid = getattr(ctx, "uid", None)
        if uid is None:
            uid = self._uid
        session = self._sessions.get(uid)
        if session is None:
            session = self._sessions[uid] = _Session(uid)
        return session

    def _attrs(self, inode: int, size: int = 0, mtime_ns: int | None = None) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.generation = 0
        # Content differs per user and changes at any time: never let the kernel cache it.
        attrs.entry_timeout = 0
        attrs.attr_timeout = 0
        if inode == self.root_inode:
            attrs.st_mode = stat.S_IFDIR | self._dir_mode
            attrs.st_nlink = 2
        else:
            attrs.st_mode = stat.S_IFREG | self._modes[self._inodes[inode]]
            attrs.st_nlink = 1
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.st_rdev = 0
        attrs.st_size = size
        attrs.st_blksize = 4096
        attrs.st_blocks = (size + 511) // 512
        when = mtime_ns or self._start_ns
        attrs.st_atime_ns = when
        attrs.st_mtime_ns = when
        attrs.st_ctime_ns = when
        return attrs

    def root_entry(self) -> pyfuse3.EntryAttributes:
        return self._attrs(self.root_inode)

    def _file_attrs(self, inode: int, session: _Session | None) -> pyfuse3.EntryAttributes:
        """Attributes as seen by `session`'s user: the size of what a read shows now when
        it is known without a network call, else 0 (reads go to EOF regardless)."""
        name = self._inodes[inode]
        if session is None:
            return self._attrs(inode)
        size = 0
        mtime = session.mtime_ns.get(name)
        if name in _REQUEST_FILES:
            ans = session.answers[name]
            if ans is not None:
                size = len(ans.buf)
                mtime = ans.changed_ns
        elif name in ("options", "conversation", "error", "help"):
            size = len(self._static_content(name, session))
        elif name == "model":
            model = session.model or self.default_model or self._resolved_default
            size = len(model) + 1 if model else 0
        return self._attrs(inode, size, mtime)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode == self.root_inode:
            return self.root_entry()
        if inode not in self._inodes:
            raise FsError(errno.ENOENT, f"no .ai inode {inode}")
        return self._file_attrs(inode, self._session(ctx) if ctx is not None else None)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if parent_inode != self.root_inode:
            raise FsError(errno.ENOENT, "not in .ai")
        if name == b".":
            return self.root_entry()
        inode = self._by_name.get(name.decode("utf-8", "surrogateescape"))
        if inode is None:
            raise FsError(errno.ENOENT, f".ai has no file {name!r}")
        return self._file_attrs(inode, self._session(ctx))

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        if inode == self.root_inode:
            return self.root_entry()
        if inode not in self._inodes:
            raise FsError(errno.ENOENT, f"no .ai inode {inode}")
        session = self._session(ctx)
        name = self._inodes[inode]
        if getattr(fields, "update_size", False):
            if attr.st_size != 0:
                raise FsError(errno.EINVAL, f".ai/{name} can only be truncated to 0")
            handle = self._handles.get(fh) if fh is not None else None
            self._truncate(name, session, handle)
        # chmod, chown and utimens are accepted and ignored, so `cp -p` and `touch` work.
        return self._file_attrs(inode, session)

    def _truncate(self, name: str, session: _Session, handle: _Handle | None) -> None:
        if name == "error":
            session.error = ""
            session.touch("error")
        elif name in ("options", "conversation"):
            if handle is not None:
                # Applied on close with what was written, so a refused write loses nothing.
                handle.truncate = True
            elif name == "options":
                session.options.clear()
                session.touch("options")
            else:
                session.history.clear()
                session.touch("conversation")
        # Request files, model and reset: truncation means nothing (`>` always truncates).

    # -- directory -----------------------------------------------------------------------

    def _new_fh(self, handle: _Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    async def opendir(self, inode: int, ctx: Any) -> int:
        if inode != self.root_inode:
            raise FsError(errno.ENOTDIR, "not a directory")
        self._check_user(ctx)
        return self._new_fh(_Handle(name="", inode=inode, session=self._session(ctx)))

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        handle = self._handles.get(fh)
        session = handle.session if handle is not None else None
        names = list(self._inodes.items())
        # The offset is the index of the next entry: the list never changes.
        for index in range(start_id, len(names)):
            inode, _name = names[index]
            if not pyfuse3.readdir_reply(token, _name.encode(), self._file_attrs(inode, session), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # -- open / create / release ---------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode == self.root_inode:
            raise FsError(errno.EISDIR, ".ai is a directory")
        name = self._inodes.get(inode)
        if name is None:
            raise FsError(errno.ENOENT, f"no .ai inode {inode}")
        self._check_user(ctx)
        session = self._session(ctx)
        accmode = flags & os.O_ACCMODE
        readable = accmode in (os.O_RDONLY, os.O_RDWR)
        writable = accmode in (os.O_WRONLY, os.O_RDWR)
        if writable and self._modes[name] & 0o222 == 0:
            raise FsError(errno.EACCES, f".ai/{name} is read-only")
        pid = int(getattr(ctx, "pid", 0) or 0)
        handle = _Handle(
            name=name, inode=inode, session=session, flags=flags, readable=readable, writable=writable,
            pid=pid, groups=caller_groups(pid, int(getattr(ctx, "gid", self._gid))),
        )
        if name in ("chat", "tts", "img"):
            handle.decoder = codecs.getincrementaldecoder("utf-8")()
        if writable and flags & os.O_TRUNC:
            self._truncate(name, session, handle)
        if writable and name == "reset":
            # On open, not on close: `: > .ai/reset` writes nothing, and close(2) does
            # not wait for the release of the descriptor.
            self._reset(session)
        nonseekable = False
        if name in _REQUEST_FILES:
            if readable and not writable:
                handle.answer = session.answers[name]
                handle.bound = True
            # The kernel's position of an O_RDWR fd also counts the bytes written, so such
            # an fd keeps its own read position and cannot seek.
            nonseekable = handle.rdwr
        elif readable:
            handle.snapshot = await self._read_content(name, session)
        fh = self._new_fh(handle)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=nonseekable)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        inode = (
            self._by_name.get(name.decode("utf-8", "surrogateescape"))
            if parent_inode == self.root_inode
            else None
        )
        if inode is None:
            raise FsError(errno.EACCES, f"cannot create {name!r} in .ai: only its control files exist")
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise FsError(errno.EEXIST, f".ai/{name.decode(errors='replace')} exists")
        info = await self.open(inode, flags & ~(os.O_CREAT | os.O_EXCL), ctx)
        return info, self._file_attrs(inode, self._session(ctx))

    async def flush(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is None or not handle.writable:
            return
        await self._commit(handle)

    async def fsync(self, fh: int, datasync: bool) -> None:
        # Nothing is stored: a prompt is acted on when it is closed.
        return None

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.writable:
            try:
                await self._commit(handle)
            except Exception as exc:  # noqa: BLE001 - release cannot report anything
                log.debug("release of .ai/%s: %s", handle.name, exc)
        ans = handle.answer
        if ans is not None and handle.owns_answer and not handle.published and not ans.done:
            # Nobody else can ever read a private answer: stop paying for it.
            ans.cancel("its file descriptor was closed")

    # -- reading -------------------------------------------------------------------------

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, "unknown .ai file handle")
        if not handle.readable:
            raise FsError(errno.EBADF, "not open for reading")
        if handle.name not in _REQUEST_FILES:
            return handle.snapshot[off : off + size]
        assert handle.session is not None
        if handle.rdwr:
            if handle.poisoned is not None:
                # The refused prompt is this fd's answer: its read reports the refusal, and
                # the fd may then write a new prompt.
                failed = _Answer(handle.name)
                failed.fail(handle.poisoned)
                handle.answer, handle.bound, handle.owns_answer, handle.rpos = failed, True, True, 0
                handle.published = False
                handle.poisoned = None
                handle.wbuf.clear()
            elif handle.wbuf:
                # Reading after writing without a close: this fd's own, private answer.
                await self._submit(handle, publish=False)
            if not handle.bound:
                handle.answer = handle.session.answers[handle.name]
                handle.bound = True
            pos = handle.rpos
        else:
            pos = off
        ans = handle.answer
        if ans is None:
            return b""  # no prompt yet: an empty file
        await self._wait(handle, ans, pos)
        if pos < len(ans.buf):
            chunk = bytes(ans.buf[pos : pos + size])
            if handle.rdwr:
                handle.rpos += len(chunk)
            return chunk
        if ans.error is not None:
            raise FsError(to_errno(ans.error), str(ans.error))
        return b""

    async def _wait(self, handle: _Handle, ans: _Answer, pos: int) -> None:
        """Wait for bytes past `pos` of `ans`, as long as the reader wants them.

        The answer itself fails after the AI timeout; this wait is bounded on its own too
        (a tree walker must never hang here), and gives up with EINTR as soon as the
        reading process is killed or gets a signal it handles (see `signal_pending`)."""
        deadline = trio.current_time() + self.timeout + WAIT_SLACK
        while len(ans.buf) <= pos and not ans.done:
            with trio.move_on_after(SIGNAL_POLL):
                await ans.wait_beyond(pos)
                return
            if signal_pending(handle.pid):
                log.debug(".ai/%s: reader %d interrupted", handle.name, handle.pid)
                raise FsError(errno.EINTR, "interrupted")
            if trio.current_time() >= deadline:
                raise FsError(errno.ETIMEDOUT, f"no answer within {self.timeout:g} s")

    async def _read_content(self, name: str, session: _Session) -> bytes:
        """The content of a file that is not a request file, as a read shows it now."""
        if name == "model":
            return (await self._current_model(session) + "\n").encode()
        if name == "models":
            models = await self._models()
            ids = sorted({str(m.get("id")) for m in models if m.get("id")}, key=str.lower)
            return "".join(f"{i}\n" for i in ids).encode()
        if name == "voices":
            return await self._voices()
        return self._static_content(name, session)

    def _static_content(self, name: str, session: _Session) -> bytes:
        if name == "options":
            return render_options(session.options).encode()
        if name == "conversation":
            return (json.dumps(session.history, indent=2, ensure_ascii=False) + "\n").encode()
        if name == "error":
            return session.error.encode()
        if name == "help":
            return HELP_TEXT.encode()
        return b""  # reset

    async def _voices(self) -> bytes:
        voices = await self._listing(self._client.tts_voices, "voice list")
        lines = []
        for v in voices or []:
            if isinstance(v, dict):
                # Fixed columns, empty when unknown, so that `cut -f` works.
                parts = [v.get("id") or v.get("name")] + [
                    v.get(k) for k in ("provider", "name", "description")
                ]
                lines.append("\t".join(str(p or "").replace("\t", " ").replace("\n", " ") for p in parts))
            else:
                lines.append(str(v))
        return "".join(f"{line}\n" for line in lines).encode()

    # -- writing -------------------------------------------------------------------------

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, "unknown .ai file handle")
        if not handle.writable:
            raise FsError(errno.EBADF, "not open for writing")
        session = handle.session
        assert session is not None
        if handle.poisoned is not None:
            raise FsError(to_errno(handle.poisoned), str(handle.poisoned))
        if handle.answer is not None and handle.owns_answer and not handle.wbuf:
            # A new prompt on a descriptor whose previous prompt was already sent (an O_RDWR
            # fd that read its answer, or a flush through a dup): the old answer is over.
            if not handle.published:
                handle.answer.cancel("a newer prompt was written on the same descriptor")
            handle.answer = None
            handle.bound = False
            handle.owns_answer = False
        try:
            self._check_write(handle, buf)
        except FsError as exc:
            raise self._poison(handle, exc) from None
        # Offsets are ignored: prompts are a stream, and O_RDWR positions count reads too.
        handle.wbuf += buf
        if handle.name == "model":
            await self._validate_model_write(handle)
        elif handle.name == "options":
            self._validate_option_lines(handle, final=False)
        return len(buf)

    def _check_write(self, handle: _Handle, buf: bytes) -> None:
        """Refuse, while it is written, data that can never make a valid request."""
        name = handle.name
        total = len(handle.wbuf) + len(buf)
        if name in ("chat", "tts", "img"):
            if name == "chat" and total > CHAT_MAX_BYTES:
                raise FsError(errno.EFBIG, f"chat: prompt larger than {CHAT_MAX_BYTES} bytes")
            if b"\0" in buf:
                raise FsError(
                    errno.EINVAL, f"{name}: binary data refused (NUL byte); {name} takes UTF-8 text"
                )
            try:
                text = handle.decoder.decode(buf, final=False)
            except UnicodeDecodeError:
                raise FsError(
                    errno.EINVAL, f"{name}: binary data refused (not UTF-8); {name} takes UTF-8 text"
                ) from None
            handle.chars += len(text)
            limit = {"tts": TTS_MAX_CHARS, "img": IMG_MAX_CHARS}.get(name)
            if limit is not None and handle.chars > limit:
                raise FsError(errno.EFBIG, f"{name}: text longer than {limit} characters")
        elif name == "ocr":
            if total > OCR_MAX_BYTES:
                raise FsError(errno.EFBIG, f"ocr: input larger than {OCR_MAX_BYTES} bytes")
        elif name == "conversation":
            if total > CONVERSATION_MAX_BYTES:
                raise FsError(errno.EFBIG, f"conversation: larger than {CONVERSATION_MAX_BYTES} bytes")
        elif total > CONTROL_MAX_BYTES:
            raise FsError(errno.EFBIG, f"{name}: more than {CONTROL_MAX_BYTES} bytes")

    def _poison(self, handle: _Handle, exc: FsError) -> FsError:
        assert handle.session is not None
        handle.poisoned = exc
        handle.wbuf.clear()
        handle.chars = 0
        if handle.decoder is not None:
            handle.decoder.reset()
        self._set_error(handle.session, handle.name, exc)
        return exc

    async def _validate_model_write(self, handle: _Handle) -> None:
        assert handle.session is not None
        text = handle.wbuf.decode("utf-8", "replace").strip()
        if not text:
            return
        if any(ch.isspace() for ch in text):
            raise self._poison(handle, FsError(errno.EINVAL, f"model: one model name please, got {text!r}"))
        try:
            canonical = await self._find_model(text)
        except PuterError as exc:
            self._set_error(handle.session, "model", exc)
            handle.wbuf.clear()
            raise
        if canonical is None:
            raise self._poison(
                handle,
                FsError(errno.EINVAL, f"model: unknown model {text!r} (see .ai/models)"),
            )
        handle.session.model = canonical
        handle.session.touch("model")

    def _validate_option_lines(self, handle: _Handle, *, final: bool) -> list[tuple[str, Any]]:
        """Parse the complete lines written so far (all of them when `final`)."""
        data = handle.wbuf.decode("utf-8", "replace")
        lines = data.split("\n")
        if not final:
            lines = lines[:-1]
        parsed = []
        for line in lines:
            try:
                item = parse_option_line(line)
            except ValueError as exc:
                raise self._poison(handle, FsError(errno.EINVAL, str(exc))) from None
            if item is not None:
                parsed.append(item)
        return parsed

    async def _commit(self, handle: _Handle) -> None:
        """Act on what a descriptor wrote (flush: close(2) waits for this)."""
        session = handle.session
        assert session is not None
        name = handle.name
        if handle.poisoned is not None:
            if name in _REQUEST_FILES and not handle.poison_published:
                # `cat` after a refused write must show that error, not an older answer.
                handle.poison_published = True
                failed = _Answer(name)
                failed.fail(handle.poisoned)
                self._publish(session, name, failed)
            return
        if name in _REQUEST_FILES:
            if handle.wbuf:
                await self._submit(handle, publish=True)
        elif name == "options":
            if handle.wbuf or handle.truncate:
                parsed = self._validate_option_lines(handle, final=True)
                if handle.truncate:
                    session.options.clear()
                for key, value in parsed:
                    if value is None:
                        session.options.pop(key, None)
                    else:
                        session.options[key] = value
                handle.wbuf.clear()
                handle.truncate = False
                session.touch("options")
        elif name == "conversation":
            if handle.wbuf or handle.truncate:
                history = self._parse_conversation(handle) if handle.wbuf.strip() else []
                session.history = history
                handle.wbuf.clear()
                handle.truncate = False
                session.touch("conversation")
        elif name == "error":
            session.error = ""
            handle.wbuf.clear()
            session.touch("error")
        else:  # model (already applied by write), reset (acted on at open)
            handle.wbuf.clear()

    def _parse_conversation(self, handle: _Handle) -> list[dict[str, str]]:
        try:
            data = json.loads(handle.wbuf.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._poison(handle, FsError(errno.EINVAL, f"conversation: not JSON ({exc})")) from None
        ok = isinstance(data, list) and all(
            isinstance(m, dict)
            and m.get("role") in ("user", "assistant", "system")
            and isinstance(m.get("content"), str)
            for m in data
        )
        if not ok:
            raise self._poison(
                handle,
                FsError(errno.EINVAL, 'conversation: expected a JSON list of {"role", "content"} objects'),
            )
        return [{"role": m["role"], "content": m["content"]} for m in data]

    def _reset(self, session: _Session) -> None:
        session.history.clear()
        session.touch("conversation")
        log.debug("uid %d: conversation reset", session.uid)

    # -- requests ------------------------------------------------------------------------

    def _publish(self, session: _Session, name: str, ans: _Answer) -> None:
        old = session.answers[name]
        session.answers[name] = ans
        if old is not None and old is not ans and not old.done:
            old.cancel(f"replaced by a newer prompt written to .ai/{name}")
        session.touch(name)

    async def _submit(self, handle: _Handle, *, publish: bool) -> _Answer:
        """Turn the descriptor's written data into a running request."""
        session = handle.session
        assert session is not None
        name = handle.name
        data = bytes(handle.wbuf)
        handle.wbuf.clear()
        handle.chars = 0
        if handle.decoder is not None:
            handle.decoder.reset()  # `_make_job` decodes the whole prompt again, strictly
        try:
            job = self._make_job(name, session, data, handle)
            if self._nursery is None or self._closed:
                raise FsError(errno.EIO, "the AI files are not running (mount starting or stopping)")
            if len(session.running) >= MAX_RUNNING_PER_USER:
                raise FsError(
                    errno.EAGAIN,
                    f"{MAX_RUNNING_PER_USER} AI requests already running; wait for one to finish",
                )
        except FsError as exc:
            self._set_error(session, name, exc)
            failed = _Answer(name)
            failed.fail(exc)
            handle.answer, handle.bound, handle.owns_answer, handle.rpos = failed, True, True, 0
            handle.published = publish
            if publish:
                self._publish(session, name, failed)
                raise
            return failed
        ans = _Answer(name)
        session.error = ""
        session.running.add(ans)
        timeout = min(self.timeout, float(session.options.get("timeout") or self.timeout))
        self._nursery.start_soon(self._run, session, ans, job, timeout, name=f"ai-{name}-uid{session.uid}")
        handle.answer, handle.bound, handle.owns_answer, handle.rpos = ans, True, True, 0
        handle.published = publish
        if publish:
            self._publish(session, name, ans)
        return ans

    def _make_job(
        self, name: str, session: _Session, data: bytes, handle: _Handle | None = None
    ) -> Callable[[_Answer], Awaitable[None]]:
        """Validate the complete input and return the coroutine function that answers it."""
        if name == "ocr":
            return self._make_ocr_job(data, session.uid, handle.groups if handle else frozenset())
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EINVAL, f"{name}: binary data refused (not UTF-8)") from None
        # A trailing newline comes from `echo`; it is not part of the prompt.
        text = text.rstrip("\r\n")
        if not text.strip():
            raise FsError(errno.EINVAL, f"{name}: empty prompt")
        if name == "chat":
            return self._make_chat_job(session, text)
        if name == "tts":
            options = {
                key: session.options[opt]
                for key, opt in (
                    ("voice", "voice"),
                    ("engine", "engine"),
                    ("language", "language"),
                    ("provider", "tts_provider"),
                )
                if session.options.get(opt)
            }

            async def tts_job(ans: _Answer) -> None:
                audio = await self._client.ai_txt2speech(text, options)
                ans.append(bytes(audio))

            return tts_job
        image_model = session.options.get("image_model")

        async def img_job(ans: _Answer) -> None:
            if image_model:
                data = await self._client.ai_txt2img_bytes(text, model=image_model)
            else:
                data = await self._client.ai_txt2img_bytes(text)
            if not bytes(data).startswith(_PNG_MAGIC):
                data = await trio.to_thread.run_sync(_to_png, bytes(data))
            ans.append(bytes(data))

        return img_job

    def _make_chat_job(self, session: _Session, prompt: str) -> Callable[[_Answer], Awaitable[None]]:
        messages: list[dict[str, str]] = []
        system = session.options.get("system")
        if system:
            messages.append({"role": "system", "content": system})
        use_history = session.options.get("history", True)
        if use_history:
            messages.extend(dict(m) for m in session.history)
        messages.append({"role": "user", "content": prompt})
        options: dict[str, Any] = {}
        for key in ("temperature", "max_tokens"):
            if session.options.get(key) is not None:
                options[key] = session.options[key]
        fixed_model = session.model

        async def chat_job(ans: _Answer) -> None:
            model = fixed_model or await self._current_model(session)
            pieces: list[str] = []
            events = self._client.ai_chat_events(messages=messages, options={**options, "model": model})
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    # Reasoning, tool calls and usage lines are not part of the answer text;
                    # the client logs a substituted model.
                    if event.type == "text" and event.text:
                        pieces.append(event.text)
                        ans.append(event.text.encode("utf-8"))
            if ans.buf and not ans.buf.endswith(b"\n"):
                ans.append(b"\n")  # so that `cat` leaves the shell prompt on its own line
            if use_history:
                session.add_turn(prompt, "".join(pieces))

        return chat_job

    def _make_ocr_job(self, data: bytes, uid: int, groups: frozenset[int]) -> Callable[[_Answer], Awaitable[None]]:
        mime = _image_mime(data)
        source: str | bytes
        if mime is not None:
            source = data
        else:
            try:
                ref = data.decode("utf-8").strip()
                if any(ord(ch) < 0x20 and ch != "\n" for ch in ref):
                    raise UnicodeDecodeError("utf-8", data, 0, 1, "control characters")
            except UnicodeDecodeError:
                raise FsError(
                    errno.EINVAL,
                    "ocr: input is neither an image (PNG, JPEG, GIF, WebP, BMP, TIFF, PDF) nor text",
                ) from None
            if not ref:
                raise FsError(errno.EINVAL, "ocr: empty input")
            if "\n" in ref:
                raise FsError(errno.EINVAL, "ocr: one path or URL per request")
            source = ref
        mount_path: str | None = None
        if isinstance(source, str) and not source.lower().startswith(("http://", "https://")):
            if "://" in source or source.startswith("data:"):
                raise FsError(errno.EINVAL, f"ocr: only http(s) URLs are accepted, not {source!r}")
            mount_path = source.lstrip("/")
            while mount_path.startswith("./"):
                mount_path = mount_path[2:]
            parts = mount_path.split("/")
            if parts[0] == ".ai" or ".." in parts or not mount_path:
                raise FsError(errno.EINVAL, f"ocr: {source!r} is not a file path inside the mount")

        async def ocr_job(ans: _Answer) -> None:
            image: str | bytes = source
            if mount_path is not None:
                # Read as the caller would: their uid and groups against each mode on the way.
                def access(st_mode: int, st_uid: int, st_gid: int, want: int) -> bool:
                    return may_access(st_mode, st_uid, st_gid, uid, groups, want)

                image = await self._read_mount_file(mount_path, access)
                if _image_mime(image) is None:
                    raise FsError(errno.EINVAL, f"ocr: {mount_path} is not an image")
            text = await self._client.ai_img2txt(image)
            out = text.encode("utf-8")
            if out and not out.endswith(b"\n"):
                out += b"\n"
            ans.append(out)

        return ocr_job

    async def _run(
        self, session: _Session, ans: _Answer, job: Callable[[_Answer], Awaitable[None]], timeout: float
    ) -> None:
        """One request, in the mount's nursery: never lets an exception escape."""
        try:
            with ans.scope:
                try:
                    with trio.fail_after(timeout):
                        await job(ans)
                except trio.TooSlowError:
                    raise PuterTimeout(f"no complete answer within {timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - reported to readers, never to the nursery
            exc2 = _unwrap(exc)
            ans.fail(exc2)
            self._set_error(session, ans.kind, exc2)
        else:
            if ans.scope.cancelled_caught:
                log.info("uid %d: .ai/%s request cancelled: %s", session.uid, ans.kind, ans.cancel_reason)
            ans.finish()
        finally:
            session.running.discard(ans)
            if not ans.done:  # cancelled from outside (mount teardown)
                ans.fail(FsError(errno.ECANCELED, "the mount is shutting down"))

    def _set_error(self, session: _Session, name: str, exc: BaseException) -> None:
        code = to_errno(exc)
        message = str(exc)
        session.error = f"{_now_iso()} .ai/{name}: {message} [{_errno_name(code)}]\n"
        session.touch("error")
        log.warning("uid %d: .ai/%s failed: %s [%s]", session.uid, name, message, _errno_name(code))

    # -- models --------------------------------------------------------------------------

    async def _listing(self, fetch: Callable[[], Awaitable[Any]], what: str) -> Any:
        """A listing needed to answer a syscall: with a short deadline of its own."""
        try:
            with trio.fail_after(min(LIST_TIMEOUT, self.timeout)):
                return await fetch()
        except trio.TooSlowError:
            raise PuterTimeout(f"the {what} did not arrive within {LIST_TIMEOUT:g} s") from None

    async def _models(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._models_cache is not None and now - self._models_cache[0] < MODELS_TTL:
            return self._models_cache[1]
        models = await self._listing(self._client.chat_models, "model list")
        models = [m for m in models or [] if isinstance(m, dict)]
        self._models_cache = (time.monotonic(), models)
        return models

    async def _find_model(self, name: str) -> str | None:
        """The canonical id of the model called `name` (id, puterId or alias; case-insensitive)."""
        low = name.lower()
        for model in await self._models():
            mid = str(model.get("id") or "")
            if mid.lower() == low:
                return mid
            puter_id = model.get("puterId")
            if isinstance(puter_id, str) and puter_id.lower() == low:
                return puter_id
            aliases = model.get("aliases") or []
            if any(isinstance(a, str) and a.lower() == low for a in aliases):
                return mid
        return None

    async def _current_model(self, session: _Session) -> str:
        if session.model:
            return session.model
        if self.default_model:
            return self.default_model
        if self._resolved_default is None:
            models = await self._models()
            ids = [str(m.get("id")) for m in models if m.get("id")]
            choice = pick_default_model(ids)
            if choice is None:
                raise FsError(errno.EIO, "the server lists no chat model; write one to .ai/model")
            self._resolved_default = choice
            log.info("AI default model: %s", choice)
        return self._resolved_default
