"""Hostile image bytes: the decoder either returns a valid uint8 array or raises DataError
naming the file, whatever it is fed. Hypothesis mutates a valid file of every supported
format (bit flips, insertions, deletions, truncation, chunks overwritten) and also makes up
bytes behind each format's magic number; then the classic bad images: decompression bombs,
zero-size, 1 x 1 and absurd aspect ratios, through every resize policy."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgcls.data.decode import RESIZE_POLICIES, SUPPORTED_FORMATS, decode_image
from imgcls.errors import DataError, NotAnImageError, TooManyPixelsError

# Pillow warns about the corrupt EXIF and TIFF tags it skips; on fuzzed bytes that is expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FORMATS = {"PNG": "RGBA", "JPEG": "RGB", "BMP": "RGB", "GIF": "P", "WEBP": "RGB", "TIFF": "RGB"}
MAGIC = {
    "PNG": b"\x89PNG\r\n\x1a\n",
    "JPEG": b"\xff\xd8\xff",
    "BMP": b"BM",
    "GIF": b"GIF89a",
    "WEBP": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "TIFF": b"II*\x00",
}
# derandomize: the same examples on every run, so CI never meets a new one by chance.
FUZZ = settings(
    max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _encode(fmt: str, width: int = 20, height: int = 14) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGBA").convert(FORMATS[fmt]).save(buf, fmt)
    return buf.getvalue()


SEEDS = {fmt: _encode(fmt) for fmt in FORMATS}


def _check(data: bytes, name: str, size: int | None, policy: str = "crop") -> None:
    """The one property: a valid array, or a DataError that names the file."""
    try:
        out = decode_image(data, name=name, size=size, resize=policy, max_pixels=1_000_000)
    except DataError as err:
        assert name in str(err)
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[-1] in (1, 3) and min(out.shape[:2]) >= 1
    if size is not None:
        assert out.shape[:2] == (size, size)


edit = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "overwrite", "truncate"]),
    st.floats(0, 1, allow_nan=False),  # where, as a fraction of the length
    st.binary(min_size=1, max_size=16),
)


def _apply(data: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    buf = bytearray(data)
    for kind, where, payload in edits:
        pos = min(int(where * len(buf)), max(len(buf) - 1, 0))
        if kind == "flip" and buf:
            buf[pos] ^= payload[0] or 1
        elif kind == "insert":
            buf[pos:pos] = payload
        elif kind == "delete":
            del buf[pos : pos + len(payload)]
        elif kind == "overwrite":
            buf[pos : pos + len(payload)] = payload
        else:
            del buf[pos:]
    return bytes(buf)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(edits=st.lists(edit, min_size=1, max_size=6), size=st.sampled_from([None, 16]))
def test_mutated_files_decode_or_raise_data_error(fmt, edits, size):
    _check(_apply(SEEDS[fmt], edits), f"mutated-{fmt}.bin", size)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(tail=st.binary(max_size=512), policy=st.sampled_from(RESIZE_POLICIES))
def test_made_up_bytes_behind_a_magic_number_raise_data_error(fmt, tail, policy):
    _check(MAGIC[fmt] + tail, f"made-up-{fmt}.bin", 8, policy)


@FUZZ
@given(data=st.binary(max_size=256))
def test_any_bytes_at_all(data):
    _check(data, "anything.bin", None)


def test_mutated_file_on_disk_names_its_path(tmp_path):
    path = tmp_path / "släden ☃.png"
    path.write_bytes(SEEDS["PNG"][:100])
    with pytest.raises(DataError, match="släden ☃.png"):
        decode_image(path)


# --- formats imgcls does not read are never opened ------------------------------------------


def test_formats_outside_the_supported_ones_are_not_even_tried(monkeypatch):
    """An EPS file (Pillow would hand it to Ghostscript) named .png is refused as not an image,
    and Pillow's EPS opener is never called."""
    from PIL import EpsImagePlugin

    called = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: called.append(1))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(NotAnImageError, match="photo.png"):
        decode_image(eps, name="photo.png")
    assert not called
    assert set(SUPPORTED_FORMATS) == {"JPEG", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF"}


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA"])
def test_other_pillow_formats_are_refused(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, fmt)
    with pytest.raises(NotAnImageError):
        decode_image(buf.getvalue(), name=f"x.{fmt.lower()}")


# --- decompression bombs ---------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return MAGIC["PNG"] + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_png_bomb_is_refused_from_its_header():
    """A 30,000 x 30,000 grey PNG whose pixels compress to almost nothing: refused before
    a byte of its 900 MB is allocated."""
    rows = zlib.compress(b"\0" * (30_001 * 64))  # the first 64 rows; the header promises 30,000
    with pytest.raises(TooManyPixelsError, match="bomb.png.*900000000 pixels"):
        decode_image(_png(30_000, 30_000, rows), name="bomb.png")


def test_pillow_bomb_limit_also_gives_too_many_pixels():
    """With data.max_pixels raised past Pillow's own guard, Pillow's refusal is reported alike."""
    with pytest.raises(TooManyPixelsError, match="bomb.png"):
        decode_image(_png(60_000, 60_000), name="bomb.png", max_pixels=10**10)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_huge_declared_size_in_other_formats_is_refused(fmt):
    img = Image.new("L" if fmt != "GIF" else "P", (3, 2))
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = bytearray(buf.getvalue())
    if fmt == "GIF":  # logical screen and image descriptor sizes
        data[6:10] = struct.pack("<HH", 65535, 65535)
        pos = data.index(b"\x2c")
        data[pos + 5 : pos + 9] = struct.pack("<HH", 65535, 65535)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", 50_000, 50_000)
    else:  # TIFF: rewrite the ImageWidth and ImageLength tags (SHORT or LONG) in place
        img = Image.open(io.BytesIO(bytes(data)))
        for tag in (256, 257):
            typ = img.tag_v2.tagtype[tag]
            old = struct.pack("<H" if typ == 3 else "<I", 3 if tag == 256 else 2)
            entry = struct.pack("<HH", tag, typ)
            at = data.index(entry) + 8
            data[at : at + len(old)] = struct.pack("<H" if typ == 3 else "<I", 50_000)
    with pytest.raises(TooManyPixelsError, match=f"huge.{fmt.lower()}"):
        decode_image(bytes(data), name=f"huge.{fmt.lower()}", max_pixels=64_000_000)


def test_zero_size_png_is_a_data_error():
    for width, height in ((0, 10), (10, 0), (0, 0)):
        with pytest.raises(DataError, match="zero.png"):
            decode_image(_png(width, height), name="zero.png")


# --- tiny and absurd shapes ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_one_pixel_images_resize_to_any_size(fmt, policy):
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).convert(FORMATS[fmt]).save(buf, fmt)
    assert decode_image(buf.getvalue(), size=None).shape[:2] == (1, 1)
    out = decode_image(buf.getvalue(), size=32, resize=policy)
    assert out.shape[:2] == (32, 32) and out.dtype == np.uint8


@pytest.mark.parametrize("shape", [(1, 40_000), (40_000, 1), (3, 25_000)])
@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_absurd_aspect_ratios_give_square_images(shape, policy):
    width, height = shape
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "PNG")
    out = decode_image(buf.getvalue(), size=16, resize=policy)
    assert out.shape == (16, 16, 1)
    if policy != "pad":
        assert (out == 128).all()
