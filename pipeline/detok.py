"""Decode rows of a tokenized dataset back to images (the `vqtok detokenize` spot check)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .manifest import MANIFEST


def read_rows(dst: Path, rows: list[int]) -> tuple[dict, list[dict]]:
    """(manifest, the requested rows as dicts) — row numbers count through the shards in manifest order."""
    if not (dst / MANIFEST).is_file():
        raise FileNotFoundError(f"{dst / MANIFEST} not found: finish the run first (rerun `vqtok tokenize`)")
    m = json.loads((dst / MANIFEST).read_text())
    total = m["totals"]["rows"]
    bad = [r for r in rows if r >= total]
    if bad:
        raise ValueError(f"rows {bad[:5]} out of range: the dataset has {total} rows (0..{total - 1})")
    out, start = {}, 0
    for s in m["shards"]:
        want = [r for r in rows if start <= r < start + s["rows"]]
        if want:
            t = pq.read_table(dst / s["file"]).take([r - start for r in want]).to_pylist()
            out.update(zip(want, t))
        start += s["rows"]
    return m, [out[r] for r in rows]


def detokenize_rows(dst: Path, rows: list[int], out_dir: Path, model: str | None = None,
                    device: str = "cpu") -> list[Path]:
    """Decode `rows` to `out_dir/<row>_<key>.png`; native-policy rows are cropped back to the original size."""
    from vqtok.export.runtime import OnnxTokenizer

    m, records = read_rows(dst, rows)
    from vqtok.tokenizer.hub import resolve_model_dir

    if model is None:  # the folder the dataset was made with, else the shipped model of that id
        src = m.get("model_source")
        model = src if src and Path(src).is_dir() else m["model"]["id"]
    resolve_model_dir(model)  # a clear error naming the shipped ids when neither exists
    tok = OnnxTokenizer.from_pretrained(model, device=device)
    sha = tok.metadata.codebook_sha256
    if sha != m["model"]["codebook_sha256"]:
        raise ValueError(f"the model's codebook sha256 {sha[:16]}… differs from the dataset's "
                         f"{m['model']['codebook_sha256'][:16]}…; pass --model with the model that wrote it")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for r, rec in zip(rows, records):
        codes = np.asarray(rec["codes"], dtype=np.int64).reshape(1, rec["grid_h"], rec["grid_w"])
        img = tok.decode(codes)[0]
        if m["preprocessing"]["policy"] == "native":
            img = img[: rec["height"], : rec["width"]]
        from PIL import Image

        path = out_dir / f"{r:06d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', rec['key'])[-80:]}.png"
        Image.fromarray(np.ascontiguousarray(img)).save(path)
        written.append(path)
    return written
