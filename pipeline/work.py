"""The per-item work both engines share: read + decode + prepare one item, and encode groups of prepared images.

Everything here is a pure function of the item and the settings, so the local and the Ray engine produce the same
rows. Bad items become error records `{"index", "key", "kind", "reason"}` instead of exceptions.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from vqtok.tokenizer.preprocess import ImageTooLarge, InvalidImage, prepare

from .sources import Item, read_bytes


@dataclass(frozen=True)
class Prep:
    """Preprocessing settings; recorded in the run state and the manifest."""

    policy: str  # "resize" | "native"
    size: int  # resize: output side S; native: unused (recorded as 0)
    factor: int
    max_pixels: int
    max_bytes: int
    max_side: int  # native: longest side allowed (0 = no limit)

    def to_dict(self) -> dict:
        return asdict(self)


class Prepared(NamedTuple):
    index: int
    key: str
    sha256: str
    width: int
    height: int
    image: np.ndarray  # uint8 [H, W, 3], H and W multiples of the factor


def error(index: int, key: str, kind: str, reason: str) -> dict:
    return {"index": index, "key": key, "kind": kind, "reason": reason}


def load_item(index: int, item: Item, prep: Prep) -> Prepared | dict:
    """Read, hash, decode and prepare one item → Prepared, or an error record (never raises for a bad file)."""
    try:
        n = item.size if item.offset >= 0 else os.path.getsize(item.path)
        if n == 0:
            return error(index, item.key, "empty", "zero-byte file")
        if n > prep.max_bytes:
            return error(index, item.key, "too_large", f"{n} bytes; the limit is {prep.max_bytes} (--max-bytes)")
        data = read_bytes(item)
    except OSError as err:
        return error(index, item.key, "unreadable", f"{type(err).__name__}: {err}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        arr, crop = prepare(data, prep.policy, prep.size or prep.factor, prep.factor, max_pixels=prep.max_pixels)
    except ImageTooLarge as err:
        return error(index, item.key, "too_large", str(err))
    except InvalidImage as err:  # drop object addresses: the reason must be the same on every run
        return error(index, item.key, "not_an_image", re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(err)))
    except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not stop a million-image run
        return error(index, item.key, "decode_failed", f"{type(err).__name__}: {err}")
    if prep.max_side and max(arr.shape[:2]) > prep.max_side:
        return error(index, item.key, "too_large",
                     f"{crop.source_width}×{crop.source_height} exceeds the model's max side {prep.max_side} "
                     "for the native policy; use --policy resize")
    return Prepared(index, item.key, digest, crop.source_width, crop.source_height, arr)


# No ORT spin-waiting (export.runtime.NO_SPIN): in a pipeline the same cores also read, decode and resize images.
# On the 2-core dev box (batch 8, medians of interleaved runs), raw
# encode without spinning was as fast as with it while only niced jobs ran (0.99×), 6-26 % faster while other jobs
# competed, and did 11-32 % more images per CPU-second; `pipeline.bench` measures raw encode on both settings.
# Codes are the same either way.


def load_tokenizer(model: str, device: str = "cpu", threads: int | None = None) -> Any:
    """The `OnnxTokenizer` both engines encode with: `model`'s graphs with the pipeline's session settings."""
    from vqtok.export.runtime import NO_SPIN, OnnxTokenizer

    return OnnxTokenizer.from_pretrained(model, device=device, threads=threads, session_config=NO_SPIN)


def encode_batch(tok: Any, images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] already prepared → int64 codes [B, H/f, W/f] (`OnnxTokenizer.encode_array`)."""
    return tok.encode_array(images)


def encode_group(tok: Any, group: list[Prepared]) -> tuple[list[dict], list[dict]]:
    """Encode same-shape prepared items → (rows, errors). A failing batch is retried item by item."""
    try:
        codes = encode_batch(tok, np.stack([p.image for p in group]))
    except Exception as err:  # noqa: BLE001 - e.g. out of memory on one huge native image
        if len(group) == 1:
            p = group[0]
            return [], [error(p.index, p.key, "encode_failed", f"{type(err).__name__}: {err}")]
        rows, errs = [], []
        for p in group:
            r, e = encode_group(tok, [p])
            rows += r
            errs += e
        return rows, errs
    rows = [{"index": p.index, "key": p.key, "sha256": p.sha256, "width": p.width, "height": p.height,
             "grid_h": c.shape[0], "grid_w": c.shape[1], "codes": c} for p, c in zip(group, codes)]
    return rows, []


def encode_mixed(tok: Any, items: list[Prepared], batch_size: int) -> tuple[list[dict], list[dict]]:
    """Encode items of any shapes: grouped by shape (first-seen order), chunks of at most batch_size."""
    by_shape: dict[tuple, list[Prepared]] = {}
    for p in items:
        by_shape.setdefault(p.image.shape, []).append(p)
    rows, errs = [], []
    for group in by_shape.values():
        for s in range(0, len(group), batch_size):
            r, e = encode_group(tok, group[s:s + batch_size])
            rows += r
            errs += e
    return rows, errs


class ShapeBatcher:
    """Streams prepared items into same-shape batches: a bucket is emitted when it holds batch_size items, or (the
    largest bucket) when more than `max_buffered` items wait; `flush` empties all. Deterministic in the input order."""

    def __init__(self, batch_size: int, max_buffered: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_buffered = max_buffered or 4 * batch_size
        self.buckets: dict[tuple, list[Prepared]] = {}
        self.n = 0

    def add(self, p: Prepared) -> list[list[Prepared]]:
        bucket = self.buckets.setdefault(p.image.shape, [])
        bucket.append(p)
        self.n += 1
        if len(bucket) >= self.batch_size:
            return [self._pop(p.image.shape)]
        if self.n > self.max_buffered:
            return [self._pop(max(self.buckets, key=lambda s: len(self.buckets[s])))]
        return []

    def flush(self) -> list[list[Prepared]]:
        return [self._pop(s) for s in list(self.buckets)]

    def _pop(self, shape: tuple) -> list[Prepared]:
        batch = self.buckets.pop(shape)
        self.n -= len(batch)
        return batch
