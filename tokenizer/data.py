"""Training data: a folder of images or a manifest TSV → random crops with scale jitter, flips and colour jitter.

Order and augmentation are functions of (seed, global sample position), so a resumed run sees exactly the samples
an uninterrupted one would, on any number of ranks and workers.
"""
from __future__ import annotations

import colorsys
import csv
import logging
import math
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .preprocess import open_image

log = logging.getLogger("vqtok.data")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def is_manifest(src: str | Path, split: str | None = None) -> bool:
    """True when `list_images(src, split)` reads a manifest (so `split` applies), not a plain folder of images."""
    src = Path(src)
    return (src.is_file() and src.suffix in (".tsv", ".txt", ".csv")) or (
        src.is_dir() and split is not None and (src / "manifest.tsv").is_file())


def list_images(src: str | Path, split: str | None = None) -> list[Path]:
    """Image paths under a folder (recursive, sorted), or the rows of a manifest TSV (`file`, optional `split`)."""
    src = Path(src)
    if src.is_file() and src.suffix in (".tsv", ".txt", ".csv"):
        with src.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if src.suffix != ".csv" else ","))
        if not rows or "file" not in rows[0]:
            raise ValueError(f"{src} needs a header row with a 'file' column (and optionally 'split')")
        paths = [src.parent / r["file"] for r in rows if split is None or r.get("split") == split]
    elif src.is_dir():
        if (src / "manifest.tsv").is_file() and split is not None:
            return list_images(src / "manifest.tsv", split)
        paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    else:
        raise FileNotFoundError(f"{src} is neither a folder of images nor a manifest TSV")
    paths = sorted(dict.fromkeys(paths))  # manifests can list a file twice
    if not paths:
        raise ValueError(f"no images found in {src}" + (f" for split {split!r}" if split else ""))
    return paths


class CropDataset(torch.utils.data.Dataset):
    """Item (index, sample_seed) → uint8 tensor [3, crop, crop]; None for an unreadable file (logged, skipped).

    Colour jitter (why: photos rarely hold saturated colours — 0.6 % of the train pixels have CIELAB chroma above
    80 — and a tokenizer trained on them returns a flat saturated green as olive): with probability `hue` a crop's
    hue is rotated by a uniform random angle, and its HSV saturation is scaled by U(`saturation`), clipped.
    Jitter keeps HSV value and only scales saturation, so it never makes the fully saturated 255/0 primaries; with
    probability `patches` a crop also gets 1-3 flat rectangles of random colour (`paint_patches`), which do.
    """

    def __init__(self, paths: list[Path], crop: int = 128, scale: tuple[float, float] = (1.0, 2.0), flip: bool = True,
                 hue: float = 0.0, saturation: tuple[float, float] = (1.0, 1.0), patches: float = 0.0,
                 patch_grey: float = 0.0):
        self.paths, self.crop, self.scale, self.flip = paths, crop, scale, flip
        self.hue, self.saturation, self.patches, self.patch_grey = hue, saturation, patches, patch_grey

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor | None:
        index, sample_seed = item
        rng = random.Random(sample_seed)
        short = max(self.crop, round(self.crop * rng.uniform(*self.scale)))
        try:
            img = Image.open(self.paths[index])
            img.draft("RGB", (short, short))  # JPEG: decode at a reduced size, far cheaper than full-size decode
            img = open_image(img)
        except Exception as err:  # noqa: BLE001 - a corrupt file must never stop training
            log.warning("skipping %s: %s", self.paths[index], err)
            return None
        w, h = img.size
        s = short / min(w, h)
        img = img.resize((max(self.crop, round(w * s)), max(self.crop, round(h * s))), Image.Resampling.BICUBIC)
        left = rng.randint(0, img.width - self.crop)
        top = rng.randint(0, img.height - self.crop)
        arr = np.array(img.crop((left, top, left + self.crop, top + self.crop)))  # writable copy
        if self.flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        if self.hue > 0 or self.saturation != (1.0, 1.0):  # no draws when off: the samples stay as before
            arr = jitter_colour(arr, rng.random() * 256 if rng.random() < self.hue else 0.0,
                                rng.uniform(*self.saturation))
        if self.patches > 0 and rng.random() < self.patches:
            arr = paint_patches(arr, rng, self.patch_grey)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def paint_patches(rgb: np.ndarray, rng: random.Random, grey: float = 0.0) -> np.ndarray:
    """uint8 [H, W, 3] → the same with 1-3 axis-aligned rectangles (each the whole image with probability 1/4) of a
    flat colour: hue uniform, HSV saturation 1 (p 0.3) or √U, value 1 (p 0.3) or U(0.05, 1), so the whole RGB
    gamut, its fully saturated edge included, is in the training distribution. With probability `grey` a rectangle
    is neutral (saturation 0) instead: √U saturation almost never draws one (p 0.01 below 0.1), and flat greys came
    back with a blue or magenta cast (docs/colour.md, "Stages 11 and 12"). `grey` = 0 draws nothing extra, so the samples stay
    those of earlier runs."""
    out = np.array(rgb)
    h, w = out.shape[:2]
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.25:
            top, left, ph, pw = 0, 0, h, w
        else:
            ph, pw = rng.randint(max(1, h // 8), h), rng.randint(max(1, w // 8), w)
            top, left = rng.randint(0, h - ph), rng.randint(0, w - pw)
        sat = 1.0 if rng.random() < 0.3 else math.sqrt(rng.random())
        if grey > 0 and rng.random() < grey:
            sat = 0.0
        value = 1.0 if rng.random() < 0.3 else rng.uniform(0.05, 1.0)
        r, g, b = colorsys.hsv_to_rgb(rng.random(), sat, value)
        out[top:top + ph, left:left + pw] = np.round(np.array([r, g, b]) * 255).astype(np.uint8)
    return out


def jitter_colour(rgb: np.ndarray, hue_shift: float, saturation: float) -> np.ndarray:
    """uint8 [H, W, 3] → the same with hue rotated by `hue_shift` (of 256 steps a turn, PIL's HSV) and saturation
    scaled by `saturation` (clipped to 255); value (max of R, G, B) is kept, so greys stay grey."""
    if hue_shift == 0 and saturation == 1:
        return np.ascontiguousarray(rgb)
    hsv = np.array(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"), dtype=np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue_shift) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    return np.array(Image.fromarray((np.round(hsv) % 256).astype(np.uint8), "HSV").convert("RGB"))


class ResumableSampler(torch.utils.data.Sampler):
    """Endless shuffled (index, sample_seed) stream starting at global position `start`, split across ranks."""

    def __init__(self, n: int, seed: int = 0, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pos = self.start + self.rank
        while True:
            epoch = pos // self.n
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            while pos // self.n == epoch:
                yield int(perm[pos % self.n]), self.seed * 1_000_003 + pos
                pos += self.world


def collate_skip_none(batch: list[torch.Tensor | None]) -> torch.Tensor:
    kept = [b for b in batch if b is not None]
    if not kept:
        raise RuntimeError("every image in a batch failed to load; check the data folder")
    return torch.stack(kept)
