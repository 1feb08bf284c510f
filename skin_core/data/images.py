"""Safe image decoding: any common format and PIL mode to an RGB ``uint8`` array.

:func:`read_image` is the one door through which every module reads pixels:

- formats: JPEG, PNG, BMP, TIFF, WebP (whatever Pillow identifies; the first frame of
  multi-frame files);
- modes: ``1``, ``L``, ``LA``, ``P`` (with or without transparency), ``RGB``, ``RGBA``,
  ``CMYK``, ``YCbCr``, ``I;16*``, ``I`` and ``F`` all become ``(H, W, 3) uint8`` RGB.
  Transparent pixels are composited onto white. 16-bit images are scaled by ``255/65535``;
  32-bit integer and float images are scaled from their own min-max range to 0-255 (floats
  already within [0, 1] are scaled by 255);
- the EXIF orientation tag is applied, so a rotated phone photo is upright;
- the pixel count is checked from the header **before** decoding, so a decompression bomb
  (e.g. 30,000 x 30,000) is refused without allocating it;
- truncated or corrupt files are refused (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never set).

Every failure is an :class:`~skin_core.errors.ImageError` whose message names the file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from skin_core.constants import MAX_IMAGE_PIXELS
from skin_core.errors import ImageError

ImageSource = str | os.PathLike[str] | bytes | BinaryIO

# The pixel cap is ours (checked before decode with a clear message); Pillow's own warning
# threshold would otherwise fire first with a less helpful text.
Image.MAX_IMAGE_PIXELS = None


def _describe(src: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return "the uploaded image"


def _open(src: ImageSource, what: str) -> Image.Image:
    try:
        if isinstance(src, (bytes, bytearray)):
            if len(src) == 0:
                raise ImageError(f"{what} is empty (0 bytes); upload a JPEG, PNG, BMP, TIFF "
                                 "or WebP image.")
            return Image.open(io.BytesIO(src))
        if isinstance(src, (str, os.PathLike)):
            p = Path(src)
            if not p.is_file():
                raise ImageError(f"Image file {p} does not exist; check the path or the "
                                 "dataset's image folder.")
            if p.stat().st_size == 0:
                raise ImageError(f"Image file {p} is empty (0 bytes); replace it with the "
                                 "original image.")
        return Image.open(src)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{what} is not an image Pillow can read (expected JPEG, PNG, BMP, "
                         "TIFF or WebP); check that the file is an image and not, e.g., "
                         "a PDF or text file.") from exc
    except OSError as exc:
        raise ImageError(f"{what} could not be opened ({exc}); check the file.") from exc


def image_size(src: ImageSource, *, name: str | None = None) -> tuple[int, int]:
    """``(width, height)`` read from the header only (no pixel decoding)."""
    what = _describe(src, name)
    with _open(src, what) as img:
        return img.size


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(img).astype(np.float64) * (255.0 / 65535.0)
        return _grey_to_rgb(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            return _grey_to_rgb(np.zeros(a.shape, np.uint8))
        lo, hi = float(finite.min()), float(finite.max())
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = a * 255.0
        elif hi > lo:
            scaled = (a - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(a)
        scaled = np.nan_to_num(scaled, nan=0.0)
        return _grey_to_rgb(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _grey_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))


def read_image(
    src: ImageSource,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    reduce_to: tuple[int, int] | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``src`` (path, bytes or binary file) to an upright ``(H, W, 3) uint8`` RGB array.

    Parameters
    ----------
    src:
        A file path, the file's bytes, or an open binary file.
    max_pixels:
        Refuse images whose header declares more than this many pixels (decompression
        bombs). Checked before any pixel is decoded.
    reduce_to:
        ``(width, height)`` the caller will resize to. JPEGs are then decoded at the smallest
        DCT scale (1/2, 1/4, 1/8) still at least this large, which is several times faster for
        large originals. The result is **not** resized to exactly this size.
    name:
        How to name the image in error messages (e.g. the uploaded file's name).

    Raises
    ------
    ImageError
        Not an image, empty, truncated or corrupt, or larger than ``max_pixels``.

    Example
    -------
    >>> rgb = read_image("lesion.jpg")  # doctest: +SKIP
    >>> rgb.shape, rgb.dtype  # doctest: +SKIP
    ((450, 600, 3), dtype('uint8'))
    """
    what = _describe(src, name)
    img = _open(src, what)
    try:
        w, h = img.size
        if w < 1 or h < 1:
            raise ImageError(f"{what} has no pixels ({w}x{h}).")
        if w * h > max_pixels:
            raise ImageError(
                f"{what} is {w}x{h} pixels ({w * h / 1e6:.0f} megapixels), above the limit of "
                f"{max_pixels / 1e6:.0f} megapixels (a possible decompression bomb); "
                "downscale it before use."
            )
        if reduce_to is not None and img.format == "JPEG":
            img.draft("RGB", (int(reduce_to[0]), int(reduce_to[1])))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(
                f"{what} is truncated or corrupt ({exc}); re-export or re-download the image."
            ) from exc
        try:
            img = ImageOps.exif_transpose(img) or img
        except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
            pass
        return np.ascontiguousarray(_to_rgb(img))
    finally:
        img.close()
