"""Deterministic media for the emulator's AI drivers.

- ``render_text_png``: text drawn in the emulator's 5x7 bitmap font (``font.py``),
  black on white, as a real PNG.  The emulated image model returns these.
- ``ocr_image``: reads text drawn that way back, from any image Pillow decodes.
  So OCR of a generated image gives back its prompt: a round trip that tests
  can assert exactly.
- ``synthesize_mp3``: a deterministic "voice" (a tone blip per character, silence
  for blanks) encoded by LAME, so the audio is a real MP3 whose length grows
  with the text.
- ``mp3_duration`` / ``mp3_frames``: an MPEG audio frame walker (validation and
  duration without a decoder).

Layout of a rendered image, in font *modules* (one module = S x S pixels, S the
scale): a margin of ``MARGIN`` modules on every side, then text cells of
``CELL_W`` x ``LINE_H`` modules (the 5x7 glyph at the cell's top-left, the rest
blank).  Because the margin is a whole number of modules, every ink edge lies
on the module grid; the OCR recovers S as the GCD of the edge positions, which
also makes it tolerant to integer (nearest-neighbour) upscaling.
"""

from __future__ import annotations

import array
import io
import logging
import math
import sys
import textwrap
import warnings
import zlib
from functools import lru_cache

import lameenc
from PIL import Image, UnidentifiedImageError

from puterfs.emulator.font import GLYPH_H, GLYPH_W, REPLACEMENT, charset, glyph_rows

log = logging.getLogger(__name__)

MARGIN = 4  # modules
CELL_W = GLYPH_W + 1  # one blank module between characters
LINE_H = GLYPH_H + 3  # three blank modules between lines
DEFAULT_SCALE = 3
DEFAULT_WRAP = 80  # columns, when no width is given
MAX_SIDE = 8192  # pixels; larger renders are refused
MAX_OCR_PIXELS = 64 * 1024 * 1024

_CHARSET = frozenset(charset())


# --------------------------------------------------------------------------- text -> PNG


def _clean_line(line: str) -> str:
    """Tabs become spaces; characters without a glyph become the replacement glyph."""
    line = line.expandtabs(4)
    return "".join(ch if ch in _CHARSET else REPLACEMENT for ch in line)


def wrap_text(text: str, cols: int) -> list[str]:
    """Split ``text`` into display lines of at most ``cols`` characters.

    Explicit newlines are kept; long lines wrap at spaces, words longer than a
    line are cut.  Trailing blanks are dropped (the OCR cannot see them anyway).
    """
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        raw = _clean_line(raw).rstrip(" ")
        if len(raw) <= cols:
            lines.append(raw)
            continue
        wrapped = textwrap.wrap(
            raw, width=cols, break_long_words=True, break_on_hyphens=False, drop_whitespace=True
        )
        lines.extend(w.rstrip(" ") for w in wrapped or [""])
    return lines


@lru_cache(maxsize=1024)
def _glyph_image(ch: str, scale: int) -> Image.Image:
    img = Image.new("1", (GLYPH_W, GLYPH_H), 1)
    px = img.load()
    for y, row in enumerate(glyph_rows(ch)):
        for x, cell in enumerate(row):
            if cell == "#":
                px[x, y] = 0
    if scale != 1:
        img = img.resize((GLYPH_W * scale, GLYPH_H * scale), Image.Resampling.NEAREST)
    return img


def _fit(text: str, width: int | None, scale: int) -> tuple[list[str], int] | None:
    """Wrap ``text`` for ``scale``: (lines, image width), or None if not one column fits."""
    if width is None:
        lines = wrap_text(text, DEFAULT_WRAP)
        cols = max((len(line) for line in lines), default=0)
        return lines, (2 * MARGIN + max(cols, 1) * CELL_W) * scale
    cols = (width - 2 * MARGIN * scale) // (CELL_W * scale)
    if cols < 1:
        return None
    return wrap_text(text, cols), width


def _layout(text: str, width: int | None, height: int | None) -> tuple[int, list[str], int, int]:
    """Choose the scale and wrap: returns (scale, lines, width, height) in pixels."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and not 1 <= value <= MAX_SIDE:
            raise ValueError(f"{name} must be between 1 and {MAX_SIDE}")
    for scale in range(DEFAULT_SCALE, 0, -1):
        fit = _fit(text, width, scale)
        if fit is None:
            continue
        lines, w = fit
        needed = (2 * MARGIN + max(len(lines), 1) * LINE_H) * scale
        if needed <= (height if height is not None else MAX_SIDE):
            return scale, lines, w, height if height is not None else needed
    # Nothing fits: the smallest scale, and only the lines that fit.
    fit = _fit(text, width, 1)
    if fit is None:
        raise ValueError(f"width {width} is too small for even one character")
    lines, w = fit
    h = height if height is not None else MAX_SIDE
    room = max((h - 2 * MARGIN) // LINE_H, 0)
    log.warning("text needs %d lines but only %d fit in %dx%d; cutting", len(lines), room, w, h)
    return 1, lines[:room], w, h


def render_text_png(text: str, width: int | None = None, height: int | None = None) -> bytes:
    """Draw ``text`` black on white in the emulator font and return PNG bytes.

    With no size the image fits the text (lines wrapped at 80 columns, scale 3).
    With ``width`` and/or ``height`` the image has that size; the scale drops
    from 3 to 1 until the wrapped text fits, and lines that still do not fit
    are cut (logged).  Raises ``ValueError`` for impossible sizes.
    """
    scale, lines, w, h = _layout(text, width, height)
    img = Image.new("1", (w, h), 1)
    x0 = y0 = MARGIN * scale
    cell_w, line_h = CELL_W * scale, LINE_H * scale
    for li, line in enumerate(lines):
        y = y0 + li * line_h
        for ci, ch in enumerate(line):
            if ch != " ":
                img.paste(_glyph_image(ch, scale), (x0 + ci * cell_w, y))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- OCR


@lru_cache(maxsize=1)
def _glyph_keys() -> dict[bytes, str]:
    """Cell bitmap (CELL_W x LINE_H samples, row-major, 1 = ink) -> character."""
    keys: dict[bytes, str] = {}
    for ch in _CHARSET:
        rows = [bytes(1 if c == "#" else 0 for c in r) + b"\x00" * (CELL_W - GLYPH_W) for r in glyph_rows(ch)]
        rows += [b"\x00" * CELL_W] * (LINE_H - GLYPH_H)
        keys[b"".join(rows)] = ch
    return keys


def _decode_ink(data: bytes) -> tuple[bytes, int, int]:
    """Decode an image to a row-major byte map (1 = ink, 0 = paper)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_OCR_PIXELS:
                raise ValueError(f"image too large for OCR ({img.width}x{img.height})")
            img.load()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ValueError(f"could not decode the image: {exc}") from exc
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        # Transparent pixels are paper, whatever colour they carry.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    gray = img.convert("L")
    ink = gray.point([1 if v < 128 else 0 for v in range(256)])
    return ink.tobytes(), ink.width, ink.height


def _edges(rows: list[bool]) -> list[int]:
    return [i for i in range(1, len(rows)) if rows[i] != rows[i - 1]]


def _read_grid(ink: bytes, w: int, h: int, scale: int) -> tuple[list[str], int, int]:
    """Read every text cell at ``scale``: (lines, recognised cells, unknown cells)."""
    keys = _glyph_keys()
    x0 = y0 = MARGIN * scale
    cell_w, line_h = CELL_W * scale, LINE_H * scale
    cols = (w - x0) // cell_w
    nlines = (h - y0) // line_h
    half = scale // 2
    out: list[str] = []
    known = unknown = 0
    blank = b"\x00" * (CELL_W * LINE_H)
    for li in range(nlines):
        top = y0 + li * line_h
        samples = []
        for r in range(LINE_H):
            y = top + r * scale + half
            start = y * w + x0 + half
            samples.append(ink[start : y * w + x0 + cols * cell_w : scale])
        if not any(1 in s for s in samples):
            continue
        chars = []
        line_known = line_unknown = 0
        for c in range(cols):
            lo = c * CELL_W
            key = b"".join(s[lo : lo + CELL_W] for s in samples)
            if key == blank:
                chars.append(" ")
                continue
            ch = keys.get(key)
            if ch is None:
                line_unknown += 1
                chars.append("\ufffd")
            else:
                line_known += 1
                chars.append(ch)
        known += line_known
        unknown += line_unknown
        # A line that is mostly unreadable is a picture, not text.
        if line_known and line_unknown * 2 <= line_known:
            out.append("".join(chars).rstrip(" "))
    return out, known, unknown


def ocr_image(data: bytes) -> list[str]:
    """Recognise text drawn in the emulator font; one string per text line.

    Raises ``ValueError`` when ``data`` is not an image Pillow can decode.
    An image without such text gives ``[]``.
    """
    ink, w, h = _decode_ink(data)
    if 1 not in ink:
        return []
    row_ink = [1 in ink[y * w : (y + 1) * w] for y in range(h)]
    transposed = Image.frombytes("L", (w, h), ink).transpose(Image.Transpose.TRANSPOSE).tobytes()
    col_ink = [1 in transposed[x * h : (x + 1) * h] for x in range(w)]
    g = 0
    for pos in _edges(row_ink) + _edges(col_ink):
        g = math.gcd(g, pos)
    if g == 0:
        return []
    # Every edge is a multiple of the scale; the GCD can be a multiple of it for
    # very regular text, so try its divisors, largest first.
    candidates = [d for d in range(min(g, 64), 0, -1) if g % d == 0]
    best: tuple[int, list[str]] = (-(10**9), [])
    for scale in candidates:
        lines, known, unknown = _read_grid(ink, w, h, scale)
        if known and not unknown:
            return lines
        score = known - unknown
        if score > best[0]:
            best = (score, lines)
    return best[1]


# --------------------------------------------------------------------------- TTS

SAMPLE_RATE = 24000
CHAR_SECONDS = 0.06
BIT_RATE = 48  # kbps

#: voice id -> (pitch in Hz, speed factor).  Unknown voices get a pitch derived
#: from their name, so any voice string works and sounds different.
VOICE_PARAMS: dict[str, tuple[float, float]] = {
    "eve": (230.0, 1.1),
    "ara": (200.0, 1.0),
    "rex": (120.0, 1.0),
    "sal": (160.0, 0.95),
    "leo": (100.0, 0.9),
    "joanna": (210.0, 1.0),
    "matthew": (115.0, 1.0),
    "alloy": (180.0, 1.0),
    "nova": (240.0, 1.05),
}
DEFAULT_VOICE = "ara"

#: engine -> number of harmonics (brighter or smoother timbre).
ENGINE_HARMONICS: dict[str, int] = {"standard": 4, "neural": 2, "generative": 1, "xai-tts": 3}


def voice_params(voice: str | None, language: str | None = None) -> tuple[float, float]:
    """(pitch Hz, speed) for a voice; the language shifts the pitch slightly."""
    name = (voice or DEFAULT_VOICE).lower()
    if name in VOICE_PARAMS:
        pitch, speed = VOICE_PARAMS[name]
    else:
        pitch, speed = 100.0 + zlib.crc32(name.encode()) % 150, 1.0
    if language:
        pitch += zlib.crc32(language.lower().encode()) % 17
    return pitch, speed


def char_samples(speed: float) -> int:
    return round(SAMPLE_RATE * CHAR_SECONDS / speed)


@lru_cache(maxsize=4096)
def _blip(ch: str, pitch: float, n: int, harmonics: int) -> bytes:
    """One character's sound: a decaying tone whose frequency depends on the character."""
    if ch.isspace():
        return b"\x00\x00" * n
    step = ord(ch) % 12
    freq = pitch * 2 ** (step / 12)
    attack = max(1, n // 12)
    out = array.array("h")
    norm = sum(1 / k for k in range(1, harmonics + 1))
    for i in range(n):
        env = i / attack if i < attack else math.exp(-3.0 * (i - attack) / n)
        t = i / SAMPLE_RATE
        v = sum(math.sin(2 * math.pi * freq * k * t) / k for k in range(1, harmonics + 1)) / norm
        out.append(int(11000 * env * v))
    if sys.byteorder == "big":
        out.byteswap()  # LAME wants little-endian PCM
    return out.tobytes()


def synthesize_pcm(
    text: str, voice: str | None = None, engine: str | None = None, language: str | None = None
) -> bytes:
    """16-bit mono PCM at ``SAMPLE_RATE``: one ~60 ms blip per character."""
    pitch, speed = voice_params(voice, language)
    harmonics = ENGINE_HARMONICS.get((engine or "standard").lower(), 2)
    n = char_samples(speed)
    return b"".join(_blip(ch, pitch, n, harmonics) for ch in text)


def synthesize_mp3(
    text: str, voice: str | None = None, engine: str | None = None, language: str | None = None
) -> bytes:
    """A real MP3 (MPEG-2 Layer III, 24 kHz mono, CBR) of the synthetic voice reading ``text``."""
    pcm = synthesize_pcm(text, voice, engine, language)
    enc = lameenc.Encoder()
    enc.set_bit_rate(BIT_RATE)
    enc.set_in_sample_rate(SAMPLE_RATE)
    enc.set_channels(1)
    enc.set_quality(7)  # fast; the waveform is synthetic anyway
    return bytes(enc.encode(pcm)) + bytes(enc.flush())


def expected_duration(text: str, voice: str | None = None, language: str | None = None) -> float:
    """Seconds of audio ``synthesize_mp3`` encodes for ``text`` (before MP3 framing)."""
    _, speed = voice_params(voice, language)
    return len(text) * char_samples(speed) / SAMPLE_RATE


# --------------------------------------------------------------------------- MP3 walker

_BITRATES = {
    # (MPEG-1, layer) -> kbps by index; MPEG-2 and 2.5 share the second table
    (True, 3): [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],
    (True, 2): [0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384],
    (True, 1): [0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448],
    (False, 3): [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    (False, 2): [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    (False, 1): [0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256],
}
_SAMPLE_RATES = {3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000]}


def mp3_frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """Walk the MPEG audio frames of ``data``: ``[(offset, length, samples, sample_rate)]``.

    An ID3v2 tag at the start and an ID3v1 tag at the end are skipped.  Every
    other byte must belong to a valid frame; otherwise ``ValueError``.
    """
    pos, end = 0, len(data)
    if data[:3] == b"ID3" and end >= 10:
        size = 0
        for b in data[6:10]:
            if b & 0x80:
                raise ValueError("bad ID3v2 size")
            size = (size << 7) | b
        pos = 10 + size + (10 if data[5] & 0x10 else 0)
    if end - pos >= 128 and data[end - 128 : end - 125] == b"TAG":
        end -= 128
    frames: list[tuple[int, int, int, int]] = []
    while pos < end:
        if end - pos < 4:
            raise ValueError(f"{end - pos} stray bytes at offset {pos}")
        h = int.from_bytes(data[pos : pos + 4], "big")
        version, layer_bits = (h >> 19) & 3, (h >> 17) & 3
        br_idx, sr_idx, pad = (h >> 12) & 15, (h >> 10) & 3, (h >> 9) & 1
        if h >> 21 != 0x7FF or version == 1 or layer_bits == 0 or br_idx in (0, 15) or sr_idx == 3:
            raise ValueError(f"no valid frame header at offset {pos}")
        layer = 4 - layer_bits
        mpeg1 = version == 3
        bitrate = _BITRATES[(mpeg1, layer)][br_idx] * 1000
        rate = _SAMPLE_RATES[version][sr_idx]
        if layer == 1:
            length, samples = (12 * bitrate // rate + pad) * 4, 384
        elif layer == 2 or mpeg1:
            length, samples = 144 * bitrate // rate + pad, 1152
        else:
            length, samples = 72 * bitrate // rate + pad, 576
        if pos + length > end:
            raise ValueError(f"truncated frame at offset {pos}")
        frames.append((pos, length, samples, rate))
        pos += length
    return frames


def mp3_duration(data: bytes) -> float:
    """Playing time in seconds from the frame headers (a Xing/Info header frame counts as none)."""
    total = 0.0
    for offset, length, samples, rate in mp3_frames(data):
        head = data[offset : offset + min(length, 64)]
        if b"Xing" in head or b"Info" in head:
            continue
        total += samples / rate
    return total
