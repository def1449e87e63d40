"""tokenizer.colour: CIEDE2000 ΔE on known inputs and the colour set's composition."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from skimage.color import deltaE_ciede2000

from vqtok.tokenizer.colour import COLORCHECKER, COLOUR_SET, GREYS, SATURATED, delta_e, flat_image, mean_delta_e, mosaics


def _grey_lightness(v: int) -> float:
    """CIE L* of an sRGB grey, from the sRGB transfer function and the L* formula (textbook, no library)."""
    c = v / 255
    y = c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    return 116 * y ** (1 / 3) - 16 if y > (6 / 29) ** 3 else y * (29 / 3) ** 3


def _neutral_de00(l1: float, l2: float) -> float:
    """CIEDE2000 of two neutral colours (a* = b* = 0): only the lightness term, ΔL / S_L (Sharma et al. 2005, eq. 19)."""
    lm = (l1 + l2) / 2
    return abs(l1 - l2) / (1 + 0.015 * (lm - 50) ** 2 / np.sqrt(20 + (lm - 50) ** 2))


def test_identical_images_score_zero():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert mean_delta_e(a, a) == pytest.approx(0.0, abs=1e-9)
    assert delta_e(a, a).shape == (32, 32)


def test_black_white_is_100():
    # L* 0 vs 100 and a* = b* = 0: the mean lightness is 50, where S_L = 1, so ΔE00 = ΔL* = 100.
    assert mean_delta_e(flat_image((0, 0, 0), 8), flat_image((255, 255, 255), 8)) == pytest.approx(100, abs=1e-3)


@pytest.mark.parametrize("v1,v2", [(128, 100), (200, 190), (30, 60)])
def test_known_grey_shift(v1, v2):
    want = _neutral_de00(_grey_lightness(v1), _grey_lightness(v2))
    assert mean_delta_e(flat_image((v1,) * 3, 16), flat_image((v2,) * 3, 16)) == pytest.approx(want, rel=1e-3)


def test_mean_is_over_pixels():
    a = flat_image((128, 128, 128), 16)
    b = a.copy()
    b[:8] = 100  # half the image shifted
    assert mean_delta_e(a, b) == pytest.approx(_neutral_de00(_grey_lightness(128), _grey_lightness(100)) / 2, rel=1e-3)


@pytest.mark.parametrize("lab1,lab2,want", [  # Sharma, Wu & Dalal (2005), test data pairs 1, 17, 18
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (61.0, -5.0, 29.0), 22.8977),
])
def test_library_ciede2000_matches_sharma(lab1, lab2, want):
    assert float(deltaE_ciede2000(np.array(lab1), np.array(lab2))) == pytest.approx(want, abs=1e-4)


def test_colour_set_composition():
    assert len(COLORCHECKER) == 24 and len(SATURATED) == 12 and len(GREYS) == 5
    assert len(COLOUR_SET) == 41 and len(set(COLOUR_SET.values())) == 41
    assert COLORCHECKER["dark skin"] == (115, 82, 68) and COLORCHECKER["cyan"] == (8, 133, 161)
    assert SATURATED["green 200/10"] == (10, 200, 10) and SATURATED["red 200/10"] == (200, 10, 10)
    assert SATURATED["pure magenta"] == (255, 0, 255)
    assert all(min(v) >= 0 and max(v) <= 255 for v in COLOUR_SET.values())


def test_mosaics_cover_the_set_in_token_aligned_patches():
    ms = mosaics(256)
    assert len(ms) == 4 and all(m.shape == (256, 256, 3) and m.dtype == np.uint8 for m in ms)
    for m in ms:
        patches = m[::32, ::32].reshape(-1, 3)
        assert {tuple(int(c) for c in p) for p in patches} == set(COLOUR_SET.values())  # 64 patches, all 41 colours
        assert (m[:32, :32] == m[0, 0]).all()  # a patch is one colour
    assert not np.array_equal(ms[0], ms[1]) and np.array_equal(ms[0], mosaics(256)[0])  # fixed, distinct
    # the published mosaic numbers (model card, docs/colour*.json) were measured on exactly these pixels
    assert hashlib.sha256(np.stack(ms).tobytes()).hexdigest() == (
        "94d436e8a8fffd5930caee643306037fae8a98eb7ea67571cd03dbe5055e3b3e")


def test_mosaics_of_more_colours_than_patches_use_a_distinct_subset_each():
    colours = np.random.default_rng(1).integers(0, 256, size=(120, 3), dtype=np.uint8)
    ms = mosaics(256, 3, colours=colours, seed=5)
    given = {tuple(int(c) for c in row) for row in colours}
    for m in ms:
        patches = {tuple(int(c) for c in p) for p in m[::32, ::32].reshape(-1, 3)}
        assert len(patches) == 64 and patches <= given  # 64 different colours of the 120, no repeats
    assert not np.array_equal(ms[0], ms[1]) and np.array_equal(ms[2], mosaics(256, 3, colours=colours, seed=5)[2])
