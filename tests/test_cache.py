"""Preprocessed image cache: built once, exact rows, never used half-built."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_core.data.cache import (
    build_image_cache,
    content_fingerprint,
    load_resized,
    open_image_cache,
    resize_array,
)
from skin_core.errors import DataError, ImageError


def _images(folder: Path, n: int = 6, size: tuple[int, int] = (60, 40)) -> tuple[list, list]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids, paths = [], []
    for i in range(n):
        a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"img{i}.png"
        Image.fromarray(a).save(p)
        ids.append(f"img{i}")
        paths.append(str(p))
    return ids, paths


def test_center_crop_keeps_aspect_and_takes_the_middle() -> None:
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 20:60] = 255  # the central 40x40 square is white, the sides black
    out = resize_array(a, 20)
    assert out.shape == (20, 20, 3)
    assert out[2:-2, 2:-2].min() == 255
    stretched = resize_array(a, 20, resize="stretch")
    assert stretched[:, 0].max() == 0 and stretched[:, 10].min() == 255


def test_build_reuse_and_rows(tmp_path: Path) -> None:
    ids, paths = _images(tmp_path / "img")
    cache = build_image_cache(ids, paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert cache.array.shape == (6, 16, 16, 3) and cache.array.dtype == np.uint8
    assert cache.path.name == f"{cache.fingerprint}-16.u8"
    np.testing.assert_array_equal(cache.array[3], load_resized(paths[3], 16))
    mtime = cache.path.stat().st_mtime_ns
    again = build_image_cache(ids, paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert again.path.stat().st_mtime_ns == mtime  # not rebuilt
    np.testing.assert_array_equal(again.rows(["img5", "img0"]), [5, 0])
    with pytest.raises(DataError, match="'nope' is not in the image cache"):
        again.rows(["nope"])


def test_two_workers_equal_one(tmp_path: Path) -> None:
    ids, paths = _images(tmp_path / "img", n=7)
    one = build_image_cache(ids, paths, 12, cache_dir=tmp_path / "a", workers=1)
    two = build_image_cache(ids, paths, 12, cache_dir=tmp_path / "b", workers=2, chunk=3)
    np.testing.assert_array_equal(np.asarray(one.array), np.asarray(two.array))


def test_changed_image_changes_fingerprint(tmp_path: Path) -> None:
    ids, paths = _images(tmp_path / "img", n=2)
    fp = content_fingerprint(ids, paths)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(paths[1])
    os.utime(paths[1], ns=(1, 1))
    assert content_fingerprint(ids, paths) != fp


def test_bad_image_leaves_nothing(tmp_path: Path) -> None:
    ids, paths = _images(tmp_path / "img", n=3)
    Path(paths[2]).write_bytes(b"not an image")
    with pytest.raises(ImageError, match="img2.png"):
        build_image_cache(ids, paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert list((tmp_path / "c").iterdir()) == []


def test_truncated_or_mismatched_cache_is_not_used(tmp_path: Path) -> None:
    ids, paths = _images(tmp_path / "img", n=3)
    cache = build_image_cache(ids, paths, 16, cache_dir=tmp_path / "c", workers=1)
    with open(cache.path, "r+b") as fh:
        fh.truncate(100)  # as if the data file were cut short
    assert open_image_cache(cache.fingerprint, 16, cache_dir=tmp_path / "c") is None
    rebuilt = build_image_cache(ids, paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert rebuilt.path.stat().st_size == 3 * 16 * 16 * 3
    side = rebuilt.path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["fingerprint"] = "other"
    side.write_text(json.dumps(meta))
    assert open_image_cache(cache.fingerprint, 16, cache_dir=tmp_path / "c") is None


def test_large_jpeg_uses_draft_decoding(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(big, quality=90)
    out = load_resized(str(big), 64)
    assert out.shape == (64, 64, 3)
    assert abs(int(out[..., 0].mean()) - 200) <= 3


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="2 ids but 1 paths"):
        build_image_cache(["a", "b"], ["x"], 16, cache_dir=tmp_path)
    with pytest.raises(DataError, match="at least 8 px"):
        build_image_cache([], [], 4, cache_dir=tmp_path)


def test_full_disk_is_one_sentence_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import skin_core.data.cache as cache_mod

    def full(args):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "_fill_chunk", full)
    ids, paths = _images(tmp_path / "img", n=2)
    with pytest.raises(DataError, match="No space left on the device while writing the image"):
        build_image_cache(ids, paths, 16, cache_dir=tmp_path / "c", workers=1)
    assert list((tmp_path / "c").iterdir()) == []
