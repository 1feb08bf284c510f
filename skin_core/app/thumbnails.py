"""Thumbnails and inline images for the pages: in-memory JPEGs, data URIs, the HTML grid.

Owns the thumbnail size (:data:`THUMB_SIDE`, :data:`THUMB_QUALITY`), :func:`thumbnail_jpeg`,
:func:`data_uri` / :func:`png_data_uri` (images inline in HTML), :func:`thumbnail_grid_html`
(one HTML element for a page of thumbnails) and :func:`page_slice` (which rows a grid page
shows). Used by the Difficult images gallery, the Predict page's similar cases and the
prediction report. Never imports Streamlit.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable

import numpy as np

#: Thumbnail side in pixels (the longer side) and JPEG quality.
THUMB_SIDE = 112
THUMB_QUALITY = 80


def thumbnail_jpeg(path: str | os.PathLike[str], *, side: int = THUMB_SIDE,
                   quality: int = THUMB_QUALITY) -> bytes:
    """A small JPEG of the image at ``path`` (longer side ``side`` px), made in memory.

    Decoding goes through :func:`skin_core.data.images.read_image` (size caps, EXIF, every
    mode) with a draft reduction, so a large photograph costs little.

    Raises
    ------
    ImageError
        The file is missing or not a readable image.
    """
    from PIL import Image

    from skin_core.data.images import read_image

    rgb = read_image(path, reduce_to=(side, side))
    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    """``data:image/jpeg;base64,...`` for inline HTML."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def png_data_uri(rgb: np.ndarray) -> str:
    """``data:image/png;base64,...`` of an ``H x W x 3`` RGB array, for inline HTML."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_grid_html(items: Iterable[tuple[str, str, str]], *, side: int = THUMB_SIDE) -> str:
    """One HTML grid of thumbnails: ``items`` are ``(data_uri, title, caption)``.

    The ``title`` (image id) is shown in bold and the caption below it; both are escaped. The
    images are inline data URIs decoded off the main thread (``decoding="async"``): one HTML
    element per page instead of one ``st.image`` per thumbnail.
    """
    cells = []
    for uri, title, caption in items:
        t = html.escape(title)
        cells.append(
            f'<figure class="sde-thumb"><img src="{uri}" decoding="async" alt="{t}"'
            f' width="{side}" height="{side}"/><figcaption><b>{t}</b><br/>'
            f"{html.escape(caption)}</figcaption></figure>"
        )
    style = (
        "<style>.sde-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax("
        f"{side + 16}px,1fr));gap:10px}}.sde-thumb{{margin:0;padding:6px;background:#fff;"
        "border:1px solid #dde5ea;border-radius:6px;font:12px/1.3 sans-serif;color:#1d2a33}"
        ".sde-thumb img{width:100%;height:auto;object-fit:cover;border-radius:4px;"
        "background:#eef3f6}.sde-thumb figcaption{margin-top:4px;overflow-wrap:anywhere}</style>"
    )
    return style + '<div class="sde-grid">' + "".join(cells) + "</div>"


def page_slice(n: int, page: int, per_page: int) -> tuple[int, int, int]:
    """``(start, stop, n_pages)`` of page ``page`` (1-based, clipped) of ``n`` rows."""
    per_page = max(1, int(per_page))
    n_pages = max(1, math.ceil(n / per_page))
    page = min(max(1, int(page)), n_pages)
    start = (page - 1) * per_page
    return start, min(n, start + per_page), n_pages
