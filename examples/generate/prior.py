"""A small transformer prior over code sequences, in data-flow order (nanoGPT-style). One model, two ways to use it:
`causal` (autoregressive, next code from the previous ones) or masked (MaskGIT: predict hidden codes from the rest).

Vocabulary: the K codes, plus one extra id that is BOS (causal: the sequence is [BOS, c0 … c(L-2)] → [c0 … c(L-1)])
or MASK (masked: hidden positions). Output logits cover the K codes only, so a sample is always a valid code.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class PriorConfig:
    codebook_size: int  # K
    seq_len: int  # h·w
    causal: bool = True  # False: MaskGIT-style masked prior
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1


class Block(nn.Module):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd))
        self.drop = nn.Dropout(cfg.dropout)
        self.n_head, self.causal, self.p = cfg.n_head, cfg.causal, cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, L, C]
        b, L, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (t.view(b, L, self.n_head, c // self.n_head).transpose(1, 2) for t in (q, k, v))  # [B, H, L, C/H]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=self.p if self.training else 0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, L, c)))
        return x + self.drop(self.mlp(self.ln2(x)))


class Prior(nn.Module):
    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.special = cfg.codebook_size  # BOS (causal) or MASK (masked)
        self.tok = nn.Embedding(cfg.codebook_size + 1, cfg.n_embd)
        self.pos = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.n_embd))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.codebook_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens: [B, L] in [0, K] → logits [B, L, K]
        x = self.tok(tokens) + self.pos[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))

    def inputs(self, codes: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, L] → (model input [B, L], loss weights [B, L]): shifted with BOS, or randomly masked."""
        if self.cfg.causal:
            bos = torch.full_like(codes[:, :1], self.special)
            return torch.cat([bos, codes[:, :-1]], dim=1), torch.ones_like(codes, dtype=torch.float32)
        # MaskGIT: a mask ratio per sequence from the cosine schedule, at least one hidden code
        b, L = codes.shape
        ratio = torch.cos(0.5 * math.pi * torch.rand(b, 1, generator=generator))
        scores = torch.rand(b, L, generator=generator)
        n_masked = (ratio * L).ceil().clamp(1, L)
        masked = scores.argsort(dim=1).argsort(dim=1) < n_masked  # the n lowest scores per row
        return torch.where(masked, self.special, codes), masked.float()

    def loss(self, codes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean cross-entropy (nats per predicted code)."""
        x, weight = self.inputs(codes, generator)
        nll = F.cross_entropy(self(x).transpose(1, 2), codes, reduction="none")  # [B, L]
        return (nll * weight).sum() / weight.sum()


@torch.no_grad()
def bits_per_token(model: Prior, codes: torch.Tensor, batch: int = 32, seed: int = 0) -> float:
    """Validation loss in bits per code (masked prior: on its random masks, seeded, so runs compare)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    for i in range(0, len(codes), batch):
        chunk = codes[i: i + batch]
        total += float(model.loss(chunk, g)) * len(chunk)
        n += len(chunk)
    model.train()
    return total / n / math.log(2)


def train_prior(cfg: PriorConfig, train: np.ndarray, val: np.ndarray, steps: int, batch: int = 16,
                lr: float = 3e-4, seed: int = 0, eval_every: int = 100, log=print) -> tuple[Prior, list[dict]]:
    """AdamW with warm-up and cosine decay; returns the model and its log (step, train/val bits per token)."""
    torch.manual_seed(seed)
    model = Prior(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)
    g = torch.Generator().manual_seed(seed)
    history, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(len(train_t), (batch,), generator=g)
        loss = model.loss(train_t[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            row = {"step": step, "train_bits": loss.item() / math.log(2), "val_bits": bits_per_token(model, val_t),
                   "seconds": round(time.perf_counter() - t0, 1)}
            history.append(row)
            log(f"step {step}: train {row['train_bits']:.3f}, val {row['val_bits']:.3f} bits/token "
                f"({row['seconds']} s)")
    return model, history
