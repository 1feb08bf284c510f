"""Heatmaps in the photo's geometry and their overlay (skin_core.explain._photo)."""

from __future__ import annotations

import numpy as np
import pytest

from skin_core.data.cache import resize_array
from skin_core.errors import ConfigError
from skin_core.explain import (
    PhotoHeatmap,
    cam_to_photo,
    crop_box,
    heatmap_on_photo,
    overlay_heatmap,
)


@pytest.mark.parametrize("w, h, side", [(600, 450, 112), (450, 600, 64), (200, 150, 64),
                                        (1023, 767, 96), (300, 300, 64)])
def test_crop_box_is_the_window_resize_array_cuts(w, h, side) -> None:
    import cv2
    from PIL import Image

    rng = np.random.default_rng(w + h)
    noise = rng.normal(128, 60, (h, w, 3)).astype(np.float32)
    sigma = min(w, h) / side  # detail about one network-input pixel across, everywhere
    photo = np.clip(cv2.GaussianBlur(noise, (0, 0), sigma) * 4 - 384, 0, 255).astype(np.uint8)
    box = crop_box(w, h, side)
    x0, y0, x1, y1 = box
    assert (x1 - x0, y1 - y0) == (min(w, h),) * 2
    net = resize_array(photo, side, resize="center").astype(float)

    def error(b: tuple[int, int, int, int]) -> float:
        cut = Image.fromarray(photo[b[1]:b[3], b[0]:b[2]]).resize(
            (side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return float(np.abs(np.asarray(cut, float) - net).mean())

    # of every window shifted along the long side, ours reproduces the network input best, to
    # within half a network-input pixel (the true window starts between two photo pixels, and
    # PIL's reducing_gap pre-reduction moves the resampling grid by a fraction of a pixel)
    shift = 3 * max(1, round(min(w, h) / side))
    if w > h:
        shifts = range(max(-shift, -x0), min(shift, w - x1) + 1)
        errors = {d: error((x0 + d, y0, x1 + d, y1)) for d in shifts}
    elif h > w:
        shifts = range(max(-shift, -y0), min(shift, h - y1) + 1)
        errors = {d: error((x0, y0 + d, x1, y1 + d)) for d in shifts}
    else:
        errors = {0: error(box)}
    assert abs(min(errors, key=errors.get)) <= 1 + 0.5 * min(w, h) / side
    assert len(errors) == 1 or errors[0] < 0.5 * max(errors.values())
    assert crop_box(w, h, side, resize="stretch") == (0, 0, w, h)


def test_a_cam_placed_back_in_a_non_square_photo_lands_on_the_crop() -> None:
    w, h, side = 600, 450, 112
    cam = np.zeros((side, side), np.float32)
    cam[10:20, 90:100] = 1.0  # a hot block near the input's top-right corner
    heat = cam_to_photo(cam, w, h)
    assert heat.shape == (h, w) and heat.dtype == np.float32
    x0, y0, x1, y1 = crop_box(w, h, side)
    assert (x0, x1) == (72, 522) or abs(x0 - 75) <= 4  # the centre 450 x 450 square
    assert np.isnan(heat[:, :x0]).all() and np.isnan(heat[:, x1:]).all()
    assert np.isfinite(heat[:, x0:x1]).all()
    # the block lands where it is in the photo: input px -> photo px = x0 + px * 450 / 112
    ys, xs = np.nonzero(np.nan_to_num(heat) > 0.5)
    s = 450 / side
    assert abs(xs.mean() - (x0 + 95 * s)) < 3 and abs(ys.mean() - (y0 + 15 * s)) < 3
    zero = cam_to_photo(cam, w, h, outside=0.0)
    assert (zero[:, :x0] == 0).all()
    # the same geometry at a lower resolution
    small = cam_to_photo(cam, w, h, max_side=300)
    assert small.shape == (225, 300)
    ys2, xs2 = np.nonzero(np.nan_to_num(small) > 0.5)
    assert abs(xs2.mean() * 2 - xs.mean()) < 3 and abs(ys2.mean() * 2 - ys.mean()) < 3
    # portrait photos are cropped vertically
    tall = cam_to_photo(cam, 450, 600)
    assert np.isnan(tall[:70]).all() and np.isfinite(tall[80:520]).all()
    stretch = cam_to_photo(cam, w, h, resize="stretch")
    assert np.isfinite(stretch).all()


def _photo(w: int = 600, h: int = 450) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), (205, 160, 140), np.uint8)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < 80 ** 2] = (90, 55, 35)  # the "lesion"
    return img


def test_overlay_covers_the_whole_photo_and_keeps_it_visible() -> None:
    photo = _photo()
    side = 112
    yy, xx = np.mgrid[0:side, 0:side]
    cam = np.exp(-((xx - 56) ** 2 + (yy - 56) ** 2) / (2 * 12.0 ** 2)).astype(np.float32)
    out = heatmap_on_photo(photo, cam)
    assert isinstance(out, PhotoHeatmap)
    assert out.overlay.shape == (450, 600, 3) and out.overlay.dtype == np.uint8  # not enlarged
    assert out.heat.shape == (450, 600) and out.scale == 1.0
    diff = np.abs(out.overlay.astype(int) - photo.astype(int)).max(axis=2)
    low = np.nan_to_num(out.heat, nan=0.0) < 0.05
    low[:, :6] = low[:, -6:] = False  # leave room for the lines of the dashed crop frame
    low[(np.abs(np.arange(600) - 75) < 4)[None, :].repeat(450, 0)] = False
    low[(np.abs(np.arange(600) - 525) < 4)[None, :].repeat(450, 0)] = False
    # where the map is low the photo is almost untouched...
    assert np.percentile(diff[low], 99) <= 3
    # ...where it is high it is tinted but still the photo underneath: the dark lesion stays
    # darker than the skin around it under the colour
    centre = out.overlay[215:235, 290:310].astype(float).mean()
    skin = out.overlay[100:120, 150:170].astype(float).mean()
    assert diff[215:235, 290:310].mean() > 20 and centre < skin
    # a thin white contour of the top region (map >= 0.5 of its maximum)
    white = (out.overlay.min(axis=2) > 240)
    assert white[150:300, 200:400].sum() > 50
    # the network did not see the sides: NaN there, photo shown as it is (apart from the frame)
    assert np.isnan(out.heat[:, :70]).all()
    np.testing.assert_array_equal(out.overlay[10:440, 10:60], photo[10:440, 10:60])


def test_overlay_is_resized_for_display() -> None:
    photo = _photo(1600, 1200)
    cam = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    out = heatmap_on_photo(photo, cam, display_side=768, max_side=400)
    assert out.overlay.shape == (576, 768, 3)
    assert out.heat.shape == (300, 400) and out.scale == 0.25
    assert out.crop_box == crop_box(1600, 1200, 64)
    plain = heatmap_on_photo(photo, cam, alpha=0.0, contour=False)
    # alpha 0, no contour: the photo resized, only the crop frame drawn
    import cv2

    ref = cv2.resize(photo, (768, 576), interpolation=cv2.INTER_AREA)
    same = (plain.overlay == ref).all(axis=2)
    assert same.mean() > 0.97


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="uint8 RGB"):
        heatmap_on_photo(np.zeros((10, 10)), np.zeros((4, 4)))
    with pytest.raises(ConfigError, match="2-D"):
        heatmap_on_photo(np.zeros((10, 10, 3), np.uint8), np.zeros((4,)))
    with pytest.raises(ConfigError, match="resize"):
        cam_to_photo(np.zeros((4, 4)), 10, 10, resize="squash")
    with pytest.raises(ConfigError, match="alpha"):
        heatmap_on_photo(np.zeros((10, 10, 3), np.uint8), np.zeros((4, 4)), alpha=1.5)


def test_overlay_heatmap_on_the_crop() -> None:
    rgb = np.full((20, 30, 3), 100, np.uint8)
    cam = np.zeros((5, 5), np.float32)
    cam[:, 3:] = 1.0
    out = overlay_heatmap(rgb, cam, alpha=0.5)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    # the map's low part leaves the image as it is; the high part is tinted (turbo: dark red)
    np.testing.assert_array_equal(out[10, 0], rgb[10, 0])
    assert out[10, -1, 0] > out[10, -1, 2] + 20
    assert np.array_equal(overlay_heatmap(rgb, cam, alpha=0.0), rgb)
    assert overlay_heatmap(rgb, cam, size=64).shape == (64, 64, 3)
    with pytest.raises(ConfigError, match="alpha"):
        overlay_heatmap(rgb, cam, alpha=2.0)
