"""decode_image: modes, formats, EXIF orientation, resize policies, broken files, fuzzed bytes."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.decode import decode_image
from imgcls.errors import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _save(img: Image.Image, path: Path, fmt: str | None = None, **kwargs) -> Path:
    img.save(path, fmt, **kwargs)
    return path


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def _two_halves(width: int = 16, height: int = 12) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    return Image.fromarray(pixels, mode="RGB")


def _check_array(array: np.ndarray, shape: tuple[int, ...]) -> None:
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == shape


# --- modes ---------------------------------------------------------------------------------


def test_mode_1_gives_black_and_white_grey(tmp_path):
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    path = _save(img, tmp_path / "bits.png")
    assert Image.open(path).mode == "1"
    out = decode_image(path)
    _check_array(out, (1, 2, 1))
    assert out.ravel().tolist() == [0, 255]


def test_mode_l_kept_as_one_channel(tmp_path):
    pixels = np.array([[0, 17, 128, 255]], dtype=np.uint8)
    path = _save(Image.fromarray(pixels, mode="L"), tmp_path / "grey.png")
    out = decode_image(path)
    _check_array(out, (1, 4, 1))
    assert out[:, :, 0].tolist() == pixels.tolist()


def test_mode_la_alpha_composited_over_white(tmp_path):
    img = Image.new("LA", (3, 1))
    img.putpixel((0, 0), (10, 0))  # fully transparent: white page
    img.putpixel((1, 0), (10, 255))  # opaque: its own grey
    img.putpixel((2, 0), (0, 128))  # half transparent black over white: mid grey
    path = _save(img, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    out = decode_image(path)
    _check_array(out, (1, 3, 1))
    assert out[0, 0, 0] == 255
    assert out[0, 1, 0] == 10
    assert 120 <= out[0, 2, 0] <= 135


def _palette_image() -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE] + [0] * (256 - 2) * 3)
    img.putpixel((1, 0), 1)
    return img


def test_mode_p_without_transparency_gives_palette_colours(tmp_path):
    path = _save(_palette_image(), tmp_path / "pal.png")
    assert Image.open(path).mode == "P"
    assert "transparency" not in Image.open(path).info
    out = decode_image(path)
    _check_array(out, (1, 2, 3))
    assert out[0, 0].tolist() == list(RED)
    assert out[0, 1].tolist() == list(BLUE)


def test_mode_p_with_transparency_gives_white_for_transparent_index(tmp_path):
    path = _save(_palette_image(), tmp_path / "pal_t.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = decode_image(path)
    _check_array(out, (1, 2, 3))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == list(BLUE)


def test_mode_rgb_kept_exactly(tmp_path):
    img = _noise(5, 4)
    path = _save(img, tmp_path / "rgb.png")
    out = decode_image(path)
    _check_array(out, (4, 5, 3))
    np.testing.assert_array_equal(out, np.asarray(img))


def test_mode_rgba_transparent_white_opaque_keeps_colour(tmp_path):
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (12, 200, 34, 255))
    path = _save(img, tmp_path / "rgba.png")
    assert Image.open(path).mode == "RGBA"
    out = decode_image(path)
    _check_array(out, (1, 2, 3))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [12, 200, 34]


@pytest.mark.parametrize("ext", ["tif", "jpg"])
def test_mode_cmyk_converted_to_rgb(tmp_path, ext):
    path = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / f"cmyk.{ext}")
    assert Image.open(path).mode == "CMYK"
    out = decode_image(path)
    _check_array(out, (8, 8, 3))
    np.testing.assert_allclose(out[4, 4].astype(int), RED, atol=8)


def test_mode_i16_scaled_to_8_bit(tmp_path):
    pixels = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(pixels), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    out = decode_image(path)
    _check_array(out, (1, 3, 1))
    assert out.ravel().tolist() == [0, 100, 255]


def test_mode_i_scaled_and_clipped(tmp_path):
    pixels = np.array([[0, 257 * 100, 65535, 100_000, -5]], dtype=np.int32)
    path = _save(Image.fromarray(pixels), tmp_path / "int.tif")
    assert Image.open(path).mode == "I"
    out = decode_image(path)
    _check_array(out, (1, 5, 1))
    assert out.ravel().tolist() == [0, 100, 255, 255, 0]


def test_mode_f_clipped_to_0_255(tmp_path):
    pixels = np.array([[-5.0, 0.0, 100.4, 200.0, 300.0]], dtype=np.float32)
    path = _save(Image.fromarray(pixels), tmp_path / "float.tif")
    assert Image.open(path).mode == "F"
    out = decode_image(path)
    _check_array(out, (1, 5, 1))
    assert out.ravel().tolist() == [0, 0, 100, 200, 255]


@pytest.mark.parametrize("mode, value", [("YCbCr", (255, 128, 128)), ("LAB", (255, 128, 128))])
def test_other_colour_modes_give_three_channels(tmp_path, mode, value):
    path = _save(Image.new(mode, (4, 4), value), tmp_path / f"{mode}.tif")
    assert Image.open(path).mode == mode
    out = decode_image(path)
    _check_array(out, (4, 4, 3))
    assert out.min() >= 240  # both values are white


def test_channels_1_converts_colour_to_grey(tmp_path):
    path = _save(Image.new("RGB", (3, 2), RED), tmp_path / "red.png")
    out = decode_image(path, channels=1)
    _check_array(out, (2, 3, 1))
    assert int(out[0, 0, 0]) == 76  # ITU-R 601 luma of pure red, as Pillow computes it


def test_channels_1_on_transparent_rgba_is_white(tmp_path):
    path = _save(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), tmp_path / "clear.png")
    out = decode_image(path, channels=1)
    _check_array(out, (2, 2, 1))
    assert (out == 255).all()


@pytest.mark.parametrize(
    "name, img",
    [
        ("grey.png", Image.new("L", (3, 2), 77)),
        ("deep.png", Image.fromarray(np.full((2, 3), 257 * 77, dtype=np.uint16))),
    ],
)
def test_channels_3_repeats_grey(tmp_path, name, img):
    path = _save(img, tmp_path / name)
    out = decode_image(path, channels=3)
    _check_array(out, (2, 3, 3))
    assert (out == 77).all()


def test_channels_3_on_colour_is_unchanged(tmp_path):
    img = _noise(4, 4)
    path = _save(img, tmp_path / "c.png")
    np.testing.assert_array_equal(decode_image(path, channels=3), np.asarray(img))


# --- formats -------------------------------------------------------------------------------

FORMATS = [
    ("png", "PNG", 0),
    ("PNG", "PNG", 0),
    ("jpg", "JPEG", 40),
    ("JPG", "JPEG", 40),
    ("jpeg", "JPEG", 40),
    ("Jpeg", "JPEG", 40),
    ("webp", "WEBP", 40),
    ("WEBP", "WEBP", 40),
    ("bmp", "BMP", 0),
    ("tif", "TIFF", 0),
    ("TIFF", "TIFF", 0),
    ("gif", "GIF", 0),
]


@pytest.mark.parametrize("ext, fmt, tolerance", FORMATS)
def test_every_format_from_file(tmp_path, ext, fmt, tolerance):
    path = _save(_two_halves(16, 12), tmp_path / f"img.{ext}", fmt)
    out = decode_image(path)
    _check_array(out, (12, 16, 3))
    np.testing.assert_allclose(out[6, 3].astype(int), RED, atol=tolerance)
    np.testing.assert_allclose(out[6, 12].astype(int), BLUE, atol=tolerance)
    # a str path works as well as a Path
    np.testing.assert_array_equal(decode_image(str(path)), out)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 8), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    out = decode_image(path)
    _check_array(out, (8, 10, 3))
    assert (out.reshape(-1, 3) == RED).all()


def test_bytes_input_decodes_like_the_file(tmp_path):
    img = _noise(7, 5)
    data = _encode(img, "PNG")
    path = tmp_path / "same.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_image(data), decode_image(path))
    np.testing.assert_array_equal(decode_image(data), np.asarray(img))


# --- EXIF orientation ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 16])
def test_exif_orientation_6_is_applied(tmp_path, size):
    # stored 40 wide x 20 high, black, white marker in the stored top-left corner
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:6, :6] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = _save(Image.fromarray(pixels, mode="RGB"), tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    assert Image.open(path).getexif()[0x0112] == 6

    out = decode_image(path)
    _check_array(out, (40, 20, 3))  # portrait now
    # a 90 degree clockwise turn moves the top-left corner to the top-right corner
    assert out[2, 17].min() > 200
    assert out[2, 2].max() < 50
    assert out[37, 2].max() < 50
    assert out[37, 17].max() < 50

    if size is not None:  # the JPEG draft (reduced decode) path keeps the orientation too
        squashed = decode_image(path, size=size, resize="squash")
        _check_array(squashed, (size, size, 3))
        assert squashed[1, size - 2].min() > 200
        assert squashed[1, 1].max() < 50


# --- resize --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["crop", "squash", "pad"])
@pytest.mark.parametrize("width, height", [(30, 20), (20, 30), (7, 7), (64, 64)])
def test_resize_policies_give_square(tmp_path, policy, width, height):
    path = _save(_noise(width, height), tmp_path / "n.png")
    out = decode_image(path, size=12, resize=policy)
    _check_array(out, (12, 12, 3))
    grey = decode_image(path, size=12, resize=policy, channels=1)
    _check_array(grey, (12, 12, 1))


def _thirds(width: int, height: int, horizontal: bool) -> Image.Image:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if horizontal:
        third = width // 3
        pixels[:, :third], pixels[:, third : 2 * third], pixels[:, 2 * third :] = RED, GREEN, BLUE
    else:
        third = height // 3
        pixels[:third], pixels[third : 2 * third], pixels[2 * third :] = RED, GREEN, BLUE
    return Image.fromarray(pixels, mode="RGB")


@pytest.mark.parametrize("horizontal", [True, False])
def test_crop_keeps_the_centre(tmp_path, horizontal):
    img = _thirds(60, 20, True) if horizontal else _thirds(20, 60, False)
    path = _save(img, tmp_path / "thirds.png")
    out = decode_image(path, size=10, resize="crop")
    _check_array(out, (10, 10, 3))
    # the resampling filter may blend the outermost row/column with its neighbours a little
    assert (out[1:-1, 1:-1].reshape(-1, 3) == GREEN).all()
    assert (out[..., 1] >= 200).all() and (out[..., 0] <= 55).all() and (out[..., 2] <= 55).all()


def test_squash_keeps_everything(tmp_path):
    path = _save(_thirds(60, 20, True), tmp_path / "thirds.png")
    out = decode_image(path, size=12, resize="squash")
    _check_array(out, (12, 12, 3))
    assert out[6, 0].tolist() == list(RED)
    assert out[6, 6].tolist() == list(GREEN)
    assert out[6, 11].tolist() == list(BLUE)


def test_pad_adds_black_bars(tmp_path):
    path = _save(Image.new("RGB", (40, 20), (255, 255, 255)), tmp_path / "wide.png")
    out = decode_image(path, size=20, resize="pad")
    _check_array(out, (20, 20, 3))
    assert (out[:4] == 0).all() and (out[-4:] == 0).all()  # bars above and below
    assert (out[7:13] == 255).all()  # the image in the middle


def test_crop_of_extreme_aspect_ratio_is_fast_and_centred(tmp_path):
    pixels = np.zeros((10_000, 1), dtype=np.uint8)  # 1 wide, 10000 high
    pixels[4_900:5_100] = 200  # marker around the centre
    path = _save(Image.fromarray(pixels, mode="L"), tmp_path / "thread.png")
    start = time.perf_counter()
    out = decode_image(path, size=8, resize="crop")
    elapsed = time.perf_counter() - start
    _check_array(out, (8, 8, 1))
    assert (out == 200).all()
    assert elapsed < 1.0


def test_unknown_resize_policy_is_refused(tmp_path):
    path = _save(_noise(10, 6), tmp_path / "n.png")
    with pytest.raises((ValueError, DataError), match="stretch"):
        decode_image(path, size=4, resize="stretch")


# --- broken files --------------------------------------------------------------------------


def _broken_files(tmp_path: Path) -> dict[str, Path]:
    noise = _noise(64, 64)
    png, jpg = _encode(noise, "PNG"), _encode(noise, "JPEG", quality=90)
    files = {
        "empty.png": b"",
        "cut.png": png[: len(png) // 2],
        "cut.jpg": jpg[: len(jpg) // 2],
        "notes_in_disguise.png": b"these are my notes, not an image\n" * 10,
        "random.jpg": np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    }
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize("name", ["empty.png", "cut.png", "cut.jpg", "notes_in_disguise.png", "random.jpg"])
def test_broken_file_raises_data_error_naming_it(tmp_path, name):
    path = _broken_files(tmp_path)[name]
    with pytest.raises(DataError) as info:
        decode_image(path)
    assert name in str(info.value)
    with pytest.raises(DataError) as info:  # same through the resize path
        decode_image(path, size=16)
    assert name in str(info.value)


def test_missing_file_raises_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="ghost.png"):
        decode_image(tmp_path / "ghost.png")


def test_over_max_pixels_is_refused(tmp_path):
    path = _save(_noise(20, 20), tmp_path / "big.png")
    with pytest.raises(DataError) as info:
        decode_image(path, max_pixels=100)
    assert "big.png" in str(info.value)
    assert "max_pixels" in str(info.value)
    assert decode_image(path, max_pixels=400).shape == (20, 20, 3)  # the limit itself is allowed


def test_over_max_pixels_is_refused_before_pixels_are_read(tmp_path):
    # Only the header is intact: reading the pixels would fail with a truncation error, so the
    # size error proves the limit is checked first.
    png = _encode(_noise(20, 20), "PNG")
    path = tmp_path / "header_only.png"
    path.write_bytes(png[:60])
    with pytest.raises(DataError, match="max_pixels"):
        decode_image(path, max_pixels=100)


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n broken", b"GIF89a"])
def test_bytes_input_error_uses_given_name(data):
    with pytest.raises(DataError, match="upload-42.png"):
        decode_image(data, name="upload-42.png")


# --- fuzz ----------------------------------------------------------------------------------


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 3))
        pos = int(rng.integers(0, max(1, len(buf))))
        if kind == 0 and buf:  # flip some bits of one byte
            buf[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # insert a few random bytes
            buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        else:  # delete a run of bytes
            del buf[pos : pos + int(rng.integers(1, 17))]
    return bytes(buf)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_fuzzed_bytes_decode_or_raise_data_error(fmt):
    rng = np.random.default_rng(1234)
    original = _encode(_two_halves(24, 20), fmt)
    assert decode_image(original).shape == (20, 24, 3)
    decoded = failed = 0
    for i in range(200):
        data = _mutate(original, rng)
        name = f"fuzz-{fmt}-{i}"
        size = 16 if i % 2 else None
        try:
            out = decode_image(data, name=name, size=size, max_pixels=4_000_000)
        except DataError as err:
            assert name in str(err)
            failed += 1
        else:
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8
            assert out.ndim == 3 and out.shape[-1] in (1, 3)
            if size is not None:
                assert out.shape[:2] == (size, size)
            decoded += 1
    assert decoded + failed == 200
