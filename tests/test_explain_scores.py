"""Localisation scores (skin_core.explain._scores) on hand-made maps and masks."""

from __future__ import annotations

import numpy as np
import pytest

from skin_core.errors import DataError
from skin_core.explain import centre_map, localisation_per_image, localisation_scores


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_hand_made_cases() -> None:
    h, w = 30, 40
    lesion = _disc(h, w, 10, 10, 6)  # off-centre lesion, top left
    on = np.zeros((h, w), np.float32)
    on[lesion] = 1.0  # the map is exactly the lesion
    off = np.zeros((h, w), np.float32)
    off[20:28, 30:38] = 1.0  # a map pointing elsewhere
    half = on.copy()
    half[:, 10:] = 0.0  # the map covers the left half of the lesion
    scores = localisation_scores([on, off, half], [lesion, lesion, lesion])
    assert scores["n"] == 3
    assert scores["pointing_game"] == pytest.approx(2 / 3)
    expected_half = (lesion[:, :10]).sum() / lesion.sum()
    assert scores["iou"] == pytest.approx((1.0 + 0.0 + expected_half) / 3)
    # the photo centre (20, 15) is not in this lesion; the centre disc barely touches it
    assert scores["centre_pointing_game"] == 0.0
    assert scores["centre_iou"] < 0.1


def test_centre_baseline_on_a_centred_lesion_and_its_disc() -> None:
    h, w = 450, 600
    disc = centre_map(h, w) >= 0.5
    # the cut Gaussian is the centred disc of radius 0.25 * sqrt(2 ln 2) * 450 = 132 px
    r = 0.25 * np.sqrt(2 * np.log(2)) * 450
    assert disc.sum() == pytest.approx(np.pi * r * r, rel=0.01)
    assert disc[225, 300] and not disc[225, 300 + int(r) + 2]
    lesion = _disc(h, w, 300, 225, r)
    s = localisation_scores([np.zeros((h, w))], [np.uint8(lesion) * 255])
    assert s["centre_pointing_game"] == 1.0 and s["centre_iou"] > 0.97
    # an all-zero map has no maximum: a miss, IoU 0
    assert s["pointing_game"] == 0.0 and s["iou"] == 0.0


def test_nan_outside_the_crop_and_maps_of_another_size() -> None:
    h, w = 40, 60
    lesion = _disc(h, w, 8, 20, 5)  # lesion at the left edge, outside a centre crop
    heat = np.full((h, w), np.nan, np.float32)
    heat[:, 10:50] = 0.2
    heat[18:22, 28:32] = 1.0  # the map's maximum, in the crop, not on the lesion
    per = localisation_per_image([heat], [lesion])
    assert per["pointing"].tolist() == [False] and per["iou"].tolist() == [0.0]
    # NaN is never the maximum even where the lesion is
    heat2 = np.full((h, w), np.nan, np.float32)
    heat2[lesion] = np.nan
    heat2[~lesion] = 0.1
    s2 = localisation_scores([heat2], [lesion])
    assert s2["pointing_game"] == 0.0 and s2["iou"] == 0.0
    # a half-resolution map is resized to its mask first
    small = np.zeros((20, 30), np.float32)
    small[8:12, 2:6] = 1.0  # the lesion, at half scale
    s = localisation_scores([small], [lesion])
    assert s["pointing_game"] == 1.0 and s["iou"] > 0.4


def test_masks_as_uint8_pngs_bool_or_rgb() -> None:
    lesion = _disc(20, 20, 10, 10, 5)
    heat = lesion.astype(np.float32)
    for mask in (lesion, np.uint8(lesion) * 255, np.uint8(lesion),
                 np.repeat((np.uint8(lesion) * 255)[..., None], 3, axis=2)):
        assert localisation_scores([heat], [mask])["iou"] == 1.0


def test_errors_and_empty_input() -> None:
    empty = localisation_scores([], [])
    assert empty["n"] == 0 and np.isnan(empty["pointing_game"])
    with pytest.raises(DataError, match="one mask per heatmap"):
        localisation_scores([np.zeros((4, 4))], [])
    with pytest.raises(DataError, match="2-D"):
        localisation_scores([np.zeros(4)], [np.zeros((4, 4), bool)])
    with pytest.raises(DataError, match="threshold"):
        localisation_scores([np.zeros((4, 4))], [np.zeros((4, 4), bool)], threshold=1.5)


def test_a_flat_top_points_at_its_middle_not_its_first_pixel() -> None:
    import cv2

    # a 2 x 2 map upsampled as CAMs are: the top-left cell's value fills the top-left corner
    cells = np.array([[1.0, 0.2], [0.3, 0.1]], np.float32)
    heat = cv2.resize(cells, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert heat[0, 0] == heat[10, 10] == heat.max()  # a plateau from the corner to (16, 16)
    corner = np.zeros((64, 64), bool)
    corner[:4, :4] = True  # a lesion at the photo's corner: the first pixel would "hit" it
    middle = _disc(64, 64, 8, 8, 3)  # a lesion under the plateau's middle
    per = localisation_per_image([heat, heat], [corner, middle])
    assert per["pointing"].tolist() == [False, True]
