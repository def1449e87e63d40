"""Token shards → tensors. The manifest is the contract: its `codebook_sha256` must be the tokenizer's, every row
must have the same grid, and rows are read in listing order (raster-order codes, as `vqtok tokenize` writes them)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TokenizerMismatch(ValueError):
    """The shards were made by a tokenizer with another vocabulary than the one that will decode the samples."""


@dataclass
class TokenSet:
    codes: np.ndarray  # int64 [N, h·w], raster order
    grid: tuple[int, int]  # (h, w)
    codebook_size: int  # K
    codebook_sha256: str
    keys: list[str]


def load_tokens(dst: str | Path, codebook_sha256: str) -> TokenSet:
    """Read a finished `vqtok tokenize` output folder; `codebook_sha256` is the tokenizer that will decode samples."""
    import pyarrow.parquet as pq

    dst = Path(dst)
    manifest_path = dst / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{dst} has no manifest.json: run `vqtok tokenize SRC {dst}` to completion first")
    manifest = json.loads(manifest_path.read_text())
    model = manifest["model"]
    if model["codebook_sha256"] != codebook_sha256:
        raise TokenizerMismatch(
            f"{dst} was tokenized by {model['id']} (codebook_sha256 {model['codebook_sha256'][:12]}…), not by the "
            f"tokenizer given (codebook_sha256 {codebook_sha256[:12]}…): its codes mean other things; re-tokenize "
            "with the same model")
    files = [dst / s["file"] for s in manifest["shards"]]
    table = pq.read_table(files, columns=["key", "grid_h", "grid_w", "codes"])
    grids = set(zip(table["grid_h"].to_pylist(), table["grid_w"].to_pylist()))
    if len(grids) != 1:
        raise ValueError(f"{dst} mixes code grids {sorted(grids)}: tokenize with --policy resize for a prior")
    (grid,) = grids
    codes = np.asarray(table["codes"].to_pylist(), dtype=np.int64).reshape(len(table), grid[0] * grid[1])
    return TokenSet(codes, grid, int(model["codebook_size"]), codebook_sha256, table["key"].to_pylist())


def unigram_bits(train: np.ndarray, val: np.ndarray, codebook_size: int) -> tuple[float, float]:
    """(entropy of the train codes' unigram distribution, cross-entropy of val codes under it with add-one
    smoothing), in bits per token: what a prior that ignores context would score."""
    counts = np.bincount(train.ravel(), minlength=codebook_size).astype(np.float64)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    smoothed = (counts + 1) / (counts.sum() + codebook_size)
    cross = float(-np.log2(smoothed[val.ravel()]).mean())
    return entropy, cross
