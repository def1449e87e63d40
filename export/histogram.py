"""Code histograms: the reference distribution saved beside a model's graphs, and the statistics the server's token
telemetry reports against it. numpy only (the serving path imports this; it never imports torch).

`code_histogram.json` (`REFERENCE_FILE`) holds how often each code occurs when the model's own ONNX encoder tokenizes
a held-out image set (the val split, `resize` policy at the model's S). `vqtok export --histogram DATA` (or
`--verify DATA`) writes it; the server compares live traffic against it (Jensen–Shannon divergence, `js_divergence`).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REFERENCE_FILE = "code_histogram.json"


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence of two count (or probability) vectors, in bits: 0 (same) … 1 (disjoint).

    NaN when either is empty (no evidence either way)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0  # where a > 0, m > 0 too
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


def summary(counts: np.ndarray) -> dict:
    """Usage statistics of one count vector [K]: total, distinct codes, perplexity, fraction of codes unseen."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    distinct = int((counts > 0).sum())
    if total:
        p = counts[counts > 0] / total
        perplexity = float(np.exp(-(p * np.log(p)).sum()))
    else:
        perplexity = 0.0
    return {"codes": total, "distinct": distinct, "perplexity": perplexity,
            "dead_fraction": 1.0 - distinct / len(counts)}


def code_histogram(tok, paths: Sequence[str | Path], batch: int = 8) -> np.ndarray:
    """Counts [K] of the codes an `OnnxTokenizer` gives `paths` (policy `resize`, the model's S)."""
    counts = np.zeros(tok.codebook_size, np.int64)
    for i in range(0, len(paths), batch):
        codes = tok.encode(list(paths[i:i + batch]), policy="resize")
        counts += np.bincount(codes.ravel(), minlength=tok.codebook_size)
    return counts


def write_reference(model_dir: str | Path, data: str | Path, split: str | None = "val",
                    limit: int | None = None, threads: int | None = None) -> Path:
    """Tokenize `data` (folder, manifest TSV, or folder with manifest.tsv + `split`) with the model's fp32 ONNX
    encoder and write `REFERENCE_FILE` beside the graphs."""
    from vqtok.tokenizer.data import list_images  # export time only (imports torch): not on the serving path

    from .runtime import OnnxTokenizer

    tok = OnnxTokenizer.from_pretrained(model_dir, threads=threads, graphs=("encoder",))
    paths = list_images(data, split)[:limit]
    counts = code_histogram(tok, paths)
    m = tok.metadata
    ref = {"model_id": m.model_id, "codebook_sha256": m.codebook_sha256, "codebook_size": m.codebook_size,
           "data": str(data), "split": split, "n_images": len(paths), "policy": "resize",
           "image_size": m.image_size, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **summary(counts), "counts": counts.tolist()}
    out = Path(model_dir) / REFERENCE_FILE
    out.write_text(json.dumps(ref) + "\n")
    return out


def load_reference(model_dir: str | Path, codebook_sha256: str | None = None) -> np.ndarray | None:
    """The reference counts [K] saved beside a model, or None when there is none (or it belongs to another
    codebook: a re-exported model with a stale histogram must not report drift against the wrong vocabulary)."""
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    ref = json.loads(path.read_text())
    if codebook_sha256 is not None and ref.get("codebook_sha256") != codebook_sha256:
        return None
    return np.asarray(ref["counts"], np.int64)
