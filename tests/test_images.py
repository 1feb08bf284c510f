"""Safe decoding: every format and PIL mode to RGB uint8, EXIF, bombs, corrupt files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from skin_core.data.images import image_size, read_image
from skin_core.errors import ImageError


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` but carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF", "WEBP"])
def test_formats_decode_to_rgb(fmt):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)
    out = read_image(_bytes(Image.fromarray(arr), fmt))
    assert out.shape == (12, 20, 3) and out.dtype == np.uint8
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless
        np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
     ("CMYK", "JPEG"), ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("YCbCr", "JPEG")],
)
def test_every_mode_becomes_rgb_uint8(mode, fmt):
    img = Image.new(mode, (9, 7))
    out = read_image(_bytes(img, fmt))
    assert out.shape == (7, 9, 3)
    assert out.dtype == np.uint8


def test_grey_values_are_kept():
    arr = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    out = read_image(_bytes(Image.fromarray(arr, "L"), "PNG"))
    np.testing.assert_array_equal(out[:, :, 0], arr)
    np.testing.assert_array_equal(out[:, :, 1], arr)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    out = read_image(_bytes(img, "PNG"))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_float_in_unit_range_scaled_by_255():
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = read_image(_bytes(Image.fromarray(arr, "F"), "TIFF"))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_transparent_pixels_composite_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque red, rest fully transparent
    out = read_image(_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[0, 0].tolist() == [200, 10, 10]
    assert out[1, 1].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    arr = np.zeros((10, 30, 3), np.uint8)  # landscape 30x10
    arr[:, :10] = 255  # left third white
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = read_image(_bytes(img, "JPEG", exif=exif, quality=95))
    assert out.shape == (30, 10, 3)  # portrait after transpose
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # white part now on top


def test_decompression_bomb_refused_before_decoding():
    data = _png_header_only(30_000, 30_000)
    with pytest.raises(ImageError, match="900 megapixels.*decompression bomb"):
        read_image(data, name="bomb.png")
    assert image_size(data) == (30_000, 30_000)


def test_pixel_cap_is_configurable():
    data = _bytes(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="above the limit"):
        read_image(data, max_pixels=5_000)


def test_truncated_jpeg_refused(tmp_path):
    rng = np.random.default_rng(1)
    data = _bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg is truncated or corrupt"):
        read_image(path)


@pytest.mark.parametrize(
    "payload", [b"hello, I am a text file\n", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"])
def test_not_an_image_refused(tmp_path, payload):
    path = tmp_path / "notes.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageError, match=r"notes\.jpg is not an image"):
        read_image(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(empty)
    with pytest.raises(ImageError, match="empty"):
        read_image(b"", name="upload.png")
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")


def test_one_pixel_image():
    out = read_image(_bytes(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert out.tolist() == [[[1, 2, 3]]]


def test_reduce_to_uses_jpeg_draft():
    big = Image.new("RGB", (800, 600), (120, 60, 30))
    out = read_image(_bytes(big, "JPEG"), reduce_to=(100, 75))
    # draft decodes at 1/8 scale at most while staying >= requested size
    assert out.shape == (75, 100, 3)
    full = read_image(_bytes(big, "JPEG"))
    assert full.shape == (600, 800, 3)
