"""Colour fidelity: CIEDE2000 ΔE between uint8 sRGB images, and a fixed colour set generated in code.

The colour set is the 24 ColorChecker patches (sRGB, D65; the values printed on Wikipedia's "ColorChecker" page,
after X-Rite's post-2009 formulation), the six saturated primaries/secondaries at full and at 200/10 intensity
(the issue's saturated green (10, 200, 10) and red (200, 10, 10) among them) and five greys. Each colour is scored
as a flat image; mosaics of 32-pixel patches (whole 8×8-token blocks at f = 8) check colour next to other colours.
ΔE is scikit-image's `deltaE_ciede2000` on `rgb2lab` (D65, 2°), per pixel, averaged over the image.
"""
from __future__ import annotations

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

COLORCHECKER: dict[str, tuple[int, int, int]] = {
    "dark skin": (115, 82, 68), "light skin": (194, 150, 130), "blue sky": (98, 122, 157),
    "foliage": (87, 108, 67), "blue flower": (133, 128, 177), "bluish green": (103, 189, 170),
    "orange": (214, 126, 44), "purplish blue": (80, 91, 166), "moderate red": (193, 90, 99),
    "purple": (94, 60, 108), "yellow green": (157, 188, 64), "orange yellow": (224, 163, 46),
    "blue": (56, 61, 150), "green": (70, 148, 73), "red": (175, 54, 60), "yellow": (231, 199, 31),
    "magenta": (187, 86, 149), "cyan": (8, 133, 161), "white 9.5": (243, 243, 242), "neutral 8": (200, 200, 200),
    "neutral 6.5": (160, 160, 160), "neutral 5": (122, 122, 121), "neutral 3.5": (85, 85, 85),
    "black 2": (52, 52, 52),
}
_HUES = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1),
         "magenta": (1, 0, 1)}
SATURATED: dict[str, tuple[int, int, int]] = {
    **{f"pure {k}": tuple(255 * c for c in v) for k, v in _HUES.items()},
    **{f"{k} 200/10": tuple(200 if c else 10 for c in v) for k, v in _HUES.items()},
}
GREYS: dict[str, tuple[int, int, int]] = {f"grey {v}": (v, v, v) for v in (0, 64, 128, 192, 255)}
COLOUR_SET: dict[str, tuple[int, int, int]] = {**COLORCHECKER, **SATURATED, **GREYS}
MOSAIC_PATCH = 32
MOSAIC_COUNT = 4


def delta_e(real: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Per-pixel CIEDE2000 ΔE [H, W] of two uint8 sRGB images [H, W, 3]."""
    return deltaE_ciede2000(rgb2lab(real), rgb2lab(recon), channel_axis=-1)


def mean_delta_e(real: np.ndarray, recon: np.ndarray) -> float:
    """Mean CIEDE2000 ΔE of two uint8 sRGB images [H, W, 3] (0 when identical)."""
    return float(delta_e(real, recon).mean())


def flat_image(rgb: tuple[int, int, int], size: int = 256) -> np.ndarray:
    """A uint8 [size, size, 3] image of one colour."""
    return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()


def mosaics(size: int = 256, count: int = MOSAIC_COUNT, patch: int = MOSAIC_PATCH,
            colours: np.ndarray | None = None, seed: int = 0) -> list[np.ndarray]:
    """`count` uint8 images tiled with `patch`-pixel squares of `colours` [N, 3] (default: the colour set), in a
    fixed shuffled order; every colour appears when the tiles outnumber the colours, else a random subset each."""
    colours = np.asarray(list(COLOUR_SET.values()) if colours is None else colours, np.uint8)
    n = size // patch
    rng = np.random.default_rng(seed)  # fixed: the mosaics are part of the benchmark, not a random draw
    out = []
    for _ in range(count):
        idx = rng.permutation(np.resize(np.arange(len(colours)), max(n * n, len(colours))))[:n * n].reshape(n, n)
        out.append(np.repeat(np.repeat(colours[idx], patch, axis=0), patch, axis=1))
    return out


def coverage(images: list[np.ndarray], radius: float = 10.0) -> dict:
    """How well `images` (uint8 [H, W, 3]) cover colour space: percentiles of the pixels' CIELAB chroma C*, the
    share of pixels above C* 50 and 80, and for each colour-set entry the share of pixels within `radius` (CIE76
    ΔE, the Lab distance) of it. A tokenizer rarely learns colours its training pixels never come near."""
    lab = np.concatenate([rgb2lab(im).reshape(-1, 3) for im in images])
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    near = {name: float((np.linalg.norm(lab - rgb2lab(np.asarray([[rgb]], np.uint8))[0, 0], axis=1) < radius).mean())
            for name, rgb in COLOUR_SET.items()}
    return {"pixels": len(lab), "chroma_p50": float(np.percentile(chroma, 50)),
            "chroma_p90": float(np.percentile(chroma, 90)), "chroma_p99": float(np.percentile(chroma, 99)),
            "share_chroma_gt50": float((chroma > 50).mean()), "share_chroma_gt80": float((chroma > 80).mean()),
            "share_near_colour": near}


if __name__ == "__main__":  # python -m vqtok.tokenizer.colour DATA [--split S] [--hue P --saturation LO HI --patches P]
    import argparse
    import json
    import random

    from PIL import Image

    from .data import jitter_colour, list_images, paint_patches
    from .preprocess import open_image

    ap = argparse.ArgumentParser(description="colour coverage of a photo set (64² thumbnails), optionally jittered "
                                             "as training would (one draw per image, seed 0)")
    ap.add_argument("data")
    ap.add_argument("--split", default="train")
    ap.add_argument("--hue", type=float, default=0.0)
    ap.add_argument("--saturation", type=float, nargs=2, default=(1.0, 1.0))
    ap.add_argument("--patches", type=float, default=0.0)
    args = ap.parse_args()
    rng, thumbs = random.Random(0), []
    for p in list_images(args.data, args.split):
        im = open_image(Image.open(p))
        im.thumbnail((64, 64))
        arr = np.asarray(im)
        if args.hue or tuple(args.saturation) != (1.0, 1.0):
            arr = jitter_colour(arr, rng.random() * 256 if rng.random() < args.hue else 0.0,
                                rng.uniform(*args.saturation))
        if args.patches and rng.random() < args.patches:
            arr = paint_patches(arr, rng)
        thumbs.append(arr)
    print(json.dumps(coverage(thumbs), indent=1))
