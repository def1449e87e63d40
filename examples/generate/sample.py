"""Sampling code grids from a prior, checking them against the tokenizer, decoding them to images."""
from __future__ import annotations

import math

import numpy as np
import torch

from .prior import Prior


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, g: torch.Generator) -> torch.Tensor:
    """logits [N, K] → sampled ids [N] and their probabilities [N]."""
    logits = logits / max(temperature, 1e-6)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    ids = torch.multinomial(probs, 1, generator=g)
    return ids[:, 0], probs.gather(1, ids)[:, 0]


@torch.no_grad()
def sample(model: Prior, n: int, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
           steps: int = 12) -> np.ndarray:
    """n code sequences int64 [n, L]. Causal: one code at a time. Masked: `steps` MaskGIT rounds, each keeping the
    most confident predictions and re-masking the rest along the cosine schedule."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    L, special = model.cfg.seq_len, model.special
    if model.cfg.causal:
        seq = torch.full((n, 1), special, dtype=torch.long)
        for _ in range(L):
            ids, _ = _pick(model(seq)[:, -1], temperature, top_k, g)
            seq = torch.cat([seq, ids[:, None]], dim=1)
        return seq[:, 1:].numpy()
    seq = torch.full((n, L), special, dtype=torch.long)
    for t in range(steps):
        hidden = seq == special
        logits = model(seq)  # [n, L, K]
        ids, conf = _pick(logits.reshape(n * L, -1), temperature, top_k, g)
        ids, conf = ids.view(n, L), conf.view(n, L)
        ids = torch.where(hidden, ids, seq)
        conf = torch.where(hidden, conf, torch.full_like(conf, float("inf")))  # known codes stay
        n_hidden_next = int(L * math.cos(0.5 * math.pi * (t + 1) / steps))  # 0 after the last round
        if n_hidden_next > 0:
            order = conf.argsort(dim=1)  # least confident first
            rehide = torch.zeros_like(hidden).scatter_(1, order[:, :n_hidden_next], True)
            ids = torch.where(rehide, special, ids)
        seq = ids
    return seq.numpy()


def check_codes(sequences: np.ndarray, grid: tuple[int, int], codebook_size: int) -> np.ndarray:
    """[n, h·w] sequences → [n, h, w] grids, after checking every code is in [0, K) and the length fits the grid."""
    h, w = grid
    if sequences.ndim != 2 or sequences.shape[1] != h * w:
        raise ValueError(f"sequences of shape {sequences.shape} do not fit a {h}×{w} grid")
    if sequences.min() < 0 or sequences.max() >= codebook_size:
        raise ValueError(f"codes outside [0, {codebook_size}): {sequences.min()}..{sequences.max()}")
    return sequences.reshape(-1, h, w)  # raster order, as the shards store them


def decode_with_server(grids: np.ndarray, url: str, codebook_sha256: str) -> np.ndarray:
    """Decode through a running `vqtok serve`: the model is found by its vocabulary (codebook sha256), whatever id
    the server gives it, and the server checks that sha256 again on every request."""
    from vqtok import Client

    with Client(url) as client:
        ids = [m["id"] for m in client.models()["models"] if m["codebook_sha256"] == codebook_sha256]
        if not ids:
            raise LookupError(f"the server at {url} serves no model with codebook_sha256 {codebook_sha256[:12]}…")
        return np.stack([np.asarray(client.decode(g, model=ids[0], codebook_sha256=codebook_sha256))
                         for g in grids])


def decode_in_process(grids: np.ndarray, tokenizer) -> np.ndarray:
    """Decode with an `OnnxTokenizer` in this process."""
    return tokenizer.decode(grids)
