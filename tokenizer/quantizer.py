"""Vector quantizer with the rotation trick (Fifty et al., ICLR 2025) and the straight-through estimator.

Shapes: N vectors of dimension d; codebook [K, d]; feature maps [B, d, h, w].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6

# Named quantizer settings, as TokenizerConfig fields (codes stay euclidean or l2 per `normalize_codes`):
# - vqtok: this project's own: codebook ~ N(0, 1/d), loss β‖e − sg[q]‖² + ‖sg[e] − q‖² with β = 0.25.
# - taming: taming-transformers' VectorQuantizer2 with legacy=True (the default its VQGAN configs use), which puts
#   β on the *codebook* term: ‖e − sg[q]‖² + 0.25‖sg[e] − q‖², codebook ~ U(−1/K, 1/K).
# - paper-vqvae: the rotation-trick paper's VQ-VAE (Table 1; cfifty/rotation_trick src/models/vq_vae.py): codebook
#   learned by EMA with decay 0.8 (no codebook loss), commitment weight β = 1.0, no dead-code replacement.
QUANTIZER_PRESETS: dict[str, dict] = {
    "vqtok": dict(commitment_weight=0.25, codebook_weight=1.0, codebook_init="normal", codebook_update="loss"),
    "taming": dict(commitment_weight=1.0, codebook_weight=0.25, codebook_init="uniform", codebook_update="loss"),
    "paper-vqvae": dict(commitment_weight=1.0, codebook_weight=1.0, codebook_init="normal", codebook_update="ema",
                        ema_decay=0.8),
}


def quantizer_preset(name: str) -> dict:
    """The TokenizerConfig fields of a named quantizer setting (a copy)."""
    if name not in QUANTIZER_PRESETS:
        raise ValueError(f"unknown quantizer preset {name!r}; choose one of {sorted(QUANTIZER_PRESETS)}")
    return dict(QUANTIZER_PRESETS[name])


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=EPS)


# The nearest-code search, written once: Tokenizer.encode, the training forward, tokenizer.eval and the exported
# encoder graph (export.onnx.EncoderGraph) all go through these two functions.
def search_vectors(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Vectors [..., d] → fp32, l2-normalised when the codebook is (cosine lookup)."""
    z = z.float()
    return _l2norm(z) if normalize else z


def code_distances(e: torch.Tensor, table_t: torch.Tensor, table_sq: torch.Tensor) -> torch.Tensor:
    """e [..., d], lookup table transposed [d, K] and its squared row norms [K] → [..., K], fp32.

    ‖e‖² is constant per row, so the argmin of ‖c‖² − 2 e·c is the nearest code; it is left out."""
    return table_sq - 2 * e @ table_t


def rotation_trick(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Value of `q`, gradient to `e` of λRᵀg: R rotates ê onto q̂, λ = ‖q‖/‖e‖.  e, q: [N, d], d ≥ 2.

    Householder form, no d×d matrix: R e = e − 2r(rᵀe) + 2q̂(êᵀe) with r = (ê + q̂)/‖ê + q̂‖.
    Computed in fp32 whatever the input dtype. Degenerate rows (e = 0 or q = 0) fall back to the identity
    (STE); e = −q makes r = 0 and gives a finite reflection instead of a rotation.
    """
    if e.shape != q.shape or e.dim() != 2:
        raise ValueError(f"rotation_trick wants e and q of the same shape [N, d], got {tuple(e.shape)} and {tuple(q.shape)}")
    if e.shape[-1] < 2:
        raise ValueError("rotation_trick needs d >= 2 (a rotation in 1-D is ±1); use the STE for d = 1")
    dtype = e.dtype
    e32, q32 = e.float(), q.float()
    with torch.no_grad():
        e_norm = e32.norm(dim=-1, keepdim=True)                     # [N, 1]
        q_norm = q32.norm(dim=-1, keepdim=True)
        ok = (e_norm > EPS) & (q_norm > EPS)
        e_hat = torch.where(ok, e32 / e_norm.clamp_min(EPS), 0.0)   # [N, d]
        q_hat = torch.where(ok, q32 / q_norm.clamp_min(EPS), 0.0)
        lam = torch.where(ok, q_norm / e_norm.clamp_min(EPS), 1.0)  # [N, 1]
        r = _l2norm(e_hat + q_hat)                                  # zero when e = −q
    rotated = lam * (
        e32
        - 2 * r * (r * e32).sum(-1, keepdim=True)
        + 2 * q_hat * (e_hat * e32).sum(-1, keepdim=True)
    )
    # Forward value is exactly q (not λRe, which equals q only up to rounding); backward is λR to e and nothing
    # to q: as with the STE, the codebook learns from the codebook loss only, never from the decoder's gradient.
    return (q32.detach() + (rotated - rotated.detach())).to(dtype)


def straight_through(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Value of `q`, identity gradient to `e`."""
    return e + (q - e).detach()


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> dict[str, torch.Tensor]:
    """Usage (fraction of K hit) and perplexity of a batch of code indices (any shape)."""
    counts = torch.bincount(codes.reshape(-1), minlength=codebook_size).float()  # [K]
    probs = counts / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {"usage": (counts > 0).float().mean(), "perplexity": entropy.exp()}


class VectorQuantizer(nn.Module):
    """Nearest-code lookup in a [K, d] codebook, optionally l2-normalised (cosine), with a choice of gradient.

    The codebook is learned by a codebook loss, or by EMA of assigned encoder outputs (`update="ema"`).
    Loss: commitment_weight·‖e − sg[q]‖² + codebook_weight·‖sg[e] − q‖² (the second term only with `update="loss"`).
    `codebook_init`: "normal" (N(0, 1/d)) or "uniform" (U(−1/K, 1/K), taming's); l2-normalised if `normalize`.
    Distance and argmin run in fp32 even under autocast so that eval-mode codes are deterministic.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        normalize: bool = True,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        codebook_init: str = "normal",
        update: str = "loss",
        ema_decay: float = 0.99,
        gradient: str = "rotation",
        revive_dead_codes: bool = False,
        dead_code_threshold: float = 1e-3,
    ):
        super().__init__()
        if gradient not in ("rotation", "ste"):
            raise ValueError(f"gradient must be 'rotation' or 'ste', got {gradient!r}")
        if update not in ("loss", "ema"):
            raise ValueError(f"codebook update must be 'loss' or 'ema', got {update!r}")
        if codebook_init not in ("normal", "uniform"):
            raise ValueError(f"codebook_init must be 'normal' or 'uniform', got {codebook_init!r}")
        self.codebook_size, self.dim = codebook_size, dim
        self.normalize, self.beta, self.codebook_weight = normalize, commitment_weight, codebook_weight
        self.update, self.decay = update, ema_decay
        # A rotation in 1-D is a sign flip: the trick is meaningless there, so d = 1 always uses the STE.
        self.gradient = gradient if dim > 1 else "ste"
        self.revive, self.dead_threshold = revive_dead_codes, dead_code_threshold

        if codebook_init == "uniform":
            init = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            init = _l2norm(init) if normalize else init
        else:
            init = torch.randn(codebook_size, dim)
            init = _l2norm(init) if normalize else init / dim**0.5
        if update == "ema":
            self.register_buffer("codebook", init.clone())
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # Recent usage per code (EMA of assignment frequency), for dead-code revival.
        self.register_buffer("usage_ema", torch.full((codebook_size,), 1.0 / codebook_size), persistent=False)

    def lookup_table(self) -> torch.Tensor:
        """The codebook as used for search and decode: [K, d], fp32."""
        cb = self.codebook.float()
        return _l2norm(cb) if self.normalize else cb

    def search_input(self, z: torch.Tensor) -> torch.Tensor:
        """Feature map [B, d, h, w] → fp32 vectors [B·h·w, d] in raster order, normalised if `normalize`."""
        return search_vectors(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), self.normalize)

    def distances(self, e: torch.Tensor) -> torch.Tensor:
        """e: [N, d] from `search_input` → fp32 distances [N, K] (up to a per-row constant)."""
        with torch.autocast(device_type=e.device.type, enabled=False):
            cb = self.lookup_table()
            return code_distances(e.float(), cb.t(), (cb * cb).sum(-1))

    def nearest(self, e: torch.Tensor) -> torch.Tensor:
        """e: [N, d] from `search_input` → code indices [N] (int64; the lowest index on exact ties)."""
        return self.distances(e).argmin(dim=-1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] → vectors [B, d, h, w]."""
        return F.embedding(codes, self.lookup_table()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z: [B, d, h, w] → (z_q [B, d, h, w], codes [B, h, w], aux with 'loss' and the batch stats)."""
        b, d, h, w = z.shape
        e = self.search_input(z)                            # [N, d]
        codes = self.nearest(e)                             # [N]
        q = self.lookup_table()[codes]                      # [N, d], differentiable w.r.t. the codebook

        commit = F.mse_loss(e, q.detach())
        loss = self.beta * commit
        if self.update == "loss":
            loss = loss + self.codebook_weight * F.mse_loss(q, e.detach())
        elif self.training:
            self._ema_update(e.detach(), codes)
        if self.training and self.revive:
            self._revive_dead(e.detach(), codes)

        grad_fn = rotation_trick if self.gradient == "rotation" else straight_through
        z_q = grad_fn(e, q if self.update == "loss" else q.detach())
        with torch.no_grad():
            aux = codebook_stats(codes, self.codebook_size)
            aux["quant_error"] = (e - q).pow(2).sum(-1).mean()
            aux["e_sq"] = e.pow(2).sum(-1).mean()  # the scale quant_error is relative to (1 for l2 codes)
        aux["loss"] = loss
        z_q = z_q.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        return z_q, codes.view(b, h, w), aux

    @torch.no_grad()
    def _ema_update(self, e: torch.Tensor, codes: torch.Tensor) -> None:
        onehot_sum = torch.zeros_like(self.ema_sum).index_add_(0, codes, e)  # [K, d]
        count = torch.bincount(codes, minlength=self.codebook_size).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(onehot_sum)
            torch.distributed.all_reduce(count)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot_sum, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + EPS) / (n + self.codebook_size * EPS) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def _revive_dead(self, e: torch.Tensor, codes: torch.Tensor) -> None:
        """Re-seed codes whose recent assignment frequency fell below the threshold from this batch's outputs."""
        count = torch.bincount(codes, minlength=self.codebook_size).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Global frequencies: every rank must find the same dead codes (else the broadcast below mismatches).
            torch.distributed.all_reduce(count)
        freq = count / count.sum().clamp_min(1)
        self.usage_ema.mul_(0.99).add_(freq, alpha=0.01)
        dead = (self.usage_ema < self.dead_threshold / self.codebook_size).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        picks = e[torch.randint(0, e.shape[0], (dead.numel(),), device=e.device)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(picks, src=0)  # every rank re-seeds the same codes identically
        self.codebook.data[dead] = picks.to(self.codebook.dtype)
        if self.update == "ema":
            self.ema_sum[dead] = picks
            self.ema_count[dead] = 1.0
        self.usage_ema[dead] = 1.0 / self.codebook_size
