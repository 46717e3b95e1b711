"""The emulator's media: bitmap font, text PNGs, OCR round trips, MP3 synthesis."""

from __future__ import annotations

import io
import random
import time

import pytest
from PIL import Image

from puterfs.emulator import media
from puterfs.emulator.font import GLYPH_H, GLYPH_W, charset, glyph_rows


def _png(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- font


def test_font_covers_printable_ascii_with_unique_glyphs() -> None:
    assert charset() == "".join(chr(c) for c in range(32, 127))
    glyphs = {glyph_rows(ch) for ch in charset()}
    assert len(glyphs) == 95
    for ch in charset():
        rows = glyph_rows(ch)
        assert len(rows) == GLYPH_H and all(len(r) == GLYPH_W for r in rows)
        assert (ch == " ") == all(set(r) == {"."} for r in rows)


# --------------------------------------------------------------------------- PNG


def test_render_is_a_real_png_black_on_white() -> None:
    data = media.render_text_png("Hi")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG"
    gray = img.convert("L")
    assert {color for _, color in gray.getcolors()} == {0, 255}
    # Top-left corner is margin (paper); the first glyph starts at the margin.
    s = media.DEFAULT_SCALE
    assert gray.getpixel((0, 0)) == 255
    assert gray.getpixel((media.MARGIN * s, media.MARGIN * s)) == 0  # 'H' has ink at its top-left
    assert img.size == ((2 * media.MARGIN + 2 * media.CELL_W) * s, (2 * media.MARGIN + media.LINE_H) * s)


def test_render_honours_requested_size_and_wraps() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 4
    data = media.render_text_png(text, 300, 400)
    img = Image.open(io.BytesIO(data))
    assert img.size == (300, 400)
    lines = media.ocr_image(data)
    assert len(lines) > 1
    assert all(len(line) <= (300 - 2 * media.MARGIN) // media.CELL_W for line in lines)
    assert " ".join(lines) == text.strip()


def test_render_shrinks_scale_then_cuts_lines_that_do_not_fit() -> None:
    text = "\n".join(f"line {i}" for i in range(30))
    small = media.render_text_png(text, 200, 120)
    lines = media.ocr_image(small)
    assert 0 < len(lines) < 30
    assert lines == [f"line {i}" for i in range(len(lines))]
    with pytest.raises(ValueError):
        media.render_text_png("x", 5, 100)
    with pytest.raises(ValueError):
        media.render_text_png("x", 100_000, 100)


# --------------------------------------------------------------------------- OCR


@pytest.mark.parametrize(
    "text",
    [
        "Hello, World!",
        "0123456789",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "abcdefghijklmnopqrstuvwxyz",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "  leading spaces kept",
        "l1I| O0o 5S 2Z 8B",
        "multi\nline\ntext with  double  spaces",
        'call:get_weather {"city":"Paris"}',
    ],
)
def test_ocr_round_trip(text: str) -> None:
    assert media.ocr_image(media.render_text_png(text)) == text.split("\n")


def test_ocr_round_trip_every_glyph_randomised() -> None:
    rng = random.Random(7)
    for _ in range(20):
        lines = [
            "".join(rng.choice(charset()) for _ in range(rng.randint(1, 60))).strip() or "x" for _ in range(3)
        ]
        text = "\n".join(lines)
        assert media.ocr_image(media.render_text_png(text)) == lines


def test_ocr_maps_unknown_characters_and_drops_blank_lines() -> None:
    data = media.render_text_png("caf\u00e9 \u2603\n\n\nend\t!")
    assert media.ocr_image(data) == ["caf? ?", "end !"]


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_ocr_tolerates_integer_upscaling_and_other_formats(factor: int) -> None:
    img = Image.open(io.BytesIO(media.render_text_png("Scale me: 42%")))
    big = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    assert media.ocr_image(_png(big)) == ["Scale me: 42%"]
    assert media.ocr_image(_png(big.convert("RGB"), "JPEG", quality=95)) == ["Scale me: 42%"]
    assert media.ocr_image(_png(big.convert("RGB"), "BMP")) == ["Scale me: 42%"]


def test_ocr_of_transparent_png_treats_transparency_as_paper() -> None:
    img = Image.open(io.BytesIO(media.render_text_png("alpha"))).convert("L")
    rgba = Image.new("RGBA", img.size, (0, 0, 0, 0))  # fully transparent black
    ink = Image.new("RGBA", img.size, (0, 0, 0, 255))
    rgba.paste(ink, mask=img.point(lambda v: 255 if v < 128 else 0))
    assert media.ocr_image(_png(rgba)) == ["alpha"]


def test_ocr_without_text() -> None:
    assert media.ocr_image(_png(Image.new("RGB", (64, 64), "white"))) == []
    assert media.ocr_image(_png(Image.new("L", (64, 64), 0))) == []
    rng = random.Random(3)
    noise = Image.frombytes("L", (200, 120), bytes(rng.randrange(256) for _ in range(200 * 120)))
    assert media.ocr_image(_png(noise)) == []
    gradient = Image.linear_gradient("L").resize((300, 200))
    assert media.ocr_image(_png(gradient)) == []


def test_ocr_rejects_undecodable_bytes() -> None:
    with pytest.raises(ValueError, match="could not decode"):
        media.ocr_image(b"definitely not an image")
    with pytest.raises(ValueError):
        media.ocr_image(media.render_text_png("cut")[:40])


def test_render_and_ocr_of_1kb_is_fast() -> None:
    rng = random.Random(11)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9)))
        for _ in range(200)
    ]
    text = " ".join(words)[:1024]
    start = time.perf_counter()
    lines = media.ocr_image(media.render_text_png(text, 1024, 1024))
    elapsed = time.perf_counter() - start
    assert " ".join(lines) == text.strip()
    assert elapsed < 1.0, elapsed


# --------------------------------------------------------------------------- MP3


_MPEG2_L3_KBPS = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
_MPEG1_L3_KBPS = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _walk_layer3(data: bytes) -> tuple[int, float]:
    """An independent Layer III frame walker: (frames, seconds).  Asserts that every
    byte after an optional ID3v2 tag belongs to a valid frame."""
    pos = 0
    if data[:3] == b"ID3":
        size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
        pos = 10 + size
    frames, seconds = 0, 0.0
    while pos < len(data):
        assert len(data) - pos >= 4, f"stray bytes at {pos}"
        b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
        assert data[pos] == 0xFF and b1 & 0xE0 == 0xE0, f"no frame sync at {pos}"
        version = (b1 >> 3) & 3
        assert version != 1 and (b1 >> 1) & 3 == 1, f"not MPEG Layer III at {pos}"
        idx, sr_idx, pad = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
        assert 0 < idx < 15 and sr_idx < 3 and b3 >> 6 == 3, f"bad header at {pos}"  # mono
        rate = _RATES[version][sr_idx]
        if version == 3:
            length, samples = 144 * _MPEG1_L3_KBPS[idx] * 1000 // rate + pad, 1152
        else:
            length, samples = 72 * _MPEG2_L3_KBPS[idx] * 1000 // rate + pad, 576
        assert pos + length <= len(data), f"truncated frame at {pos}"
        frames += 1
        seconds += samples / rate
        pos += length
    return frames, seconds


@pytest.mark.parametrize("text", ["a", "hello", "hello world, this is the emulator speaking.", "x" * 3000])
def test_mp3_is_valid_and_duration_follows_the_text(text: str) -> None:
    data = media.synthesize_mp3(text)
    frames, seconds = _walk_layer3(data)
    assert frames > 0
    expected = len(text) * media.CHAR_SECONDS
    # LAME adds its encoder delay and pads the last frame: at most ~0.1 s here.
    assert expected <= seconds <= expected + 0.15, (seconds, expected)
    assert media.mp3_duration(data) == pytest.approx(seconds)
    assert len(media.mp3_frames(data)) == frames


def test_mp3_voice_engine_language_change_the_audio() -> None:
    text = "same words"
    base = media.synthesize_mp3(text, "ara", "standard", "en-US")
    assert media.synthesize_mp3(text, "ara", "standard", "en-US") == base  # deterministic
    assert media.synthesize_mp3(text, "rex", "standard", "en-US") != base
    assert media.synthesize_mp3(text, "ara", "neural", "en-US") != base
    assert media.synthesize_mp3(text, "ara", "standard", "fr-FR") != base
    # A slower voice takes longer to say the same text.
    slow = media.mp3_duration(media.synthesize_mp3("x" * 200, "leo"))
    fast = media.mp3_duration(media.synthesize_mp3("x" * 200, "eve"))
    assert slow > fast + 1.0


def test_mp3_spaces_are_silence() -> None:
    pcm = media.synthesize_pcm("a a")
    n = media.char_samples(1.0)
    assert len(pcm) == 3 * n * 2
    assert pcm[2 * n : 4 * n] == b"\x00" * (2 * n)
    assert any(pcm[: 2 * n])


def test_mp3_walker_rejects_garbage_and_accepts_id3() -> None:
    data = media.synthesize_mp3("tagged")
    with pytest.raises(ValueError):
        media.mp3_frames(data[:-3])
    with pytest.raises(ValueError):
        media.mp3_frames(b"\x00" * 10 + data)
    tag_body = b"TIT2\x00\x00\x00\x05\x00\x00\x03abcd"
    size = len(tag_body)
    id3 = b"ID3\x03\x00\x00" + bytes(
        [(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F]
    )
    tagged = id3 + tag_body + data
    assert media.mp3_duration(tagged) == pytest.approx(media.mp3_duration(data))
    assert _walk_layer3(tagged)[0] == len(media.mp3_frames(data))
