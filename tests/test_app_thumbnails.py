"""Thumbnails: in-memory JPEGs, data URIs and grid page slices."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skin_core.app.thumbnails import data_uri, page_slice, thumbnail_jpeg
from skin_core.errors import ImageError


def test_page_slice_clips():
    assert page_slice(100, 1, 48) == (0, 48, 3)
    assert page_slice(100, 3, 48) == (96, 100, 3)
    assert page_slice(100, 9, 48) == (96, 100, 3)
    assert page_slice(0, 1, 48) == (0, 0, 1)


def test_thumbnail_is_small_jpeg_and_bad_files_raise(tmp_path):
    p = tmp_path / "big.png"
    Image.fromarray(np.full((600, 900, 3), 120, np.uint8)).save(p)
    jpg = thumbnail_jpeg(p, side=100)
    im = Image.open(io.BytesIO(jpg))
    assert im.format == "JPEG" and max(im.size) == 100 and im.size == (100, 67)
    assert data_uri(jpg).startswith("data:image/jpeg;base64,/9j/")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError):
        thumbnail_jpeg(bad)
