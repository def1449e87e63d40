"""Losses beside L1 and the perceptual term: PatchGAN discriminator, hinge losses, taming's adaptive weight, and
an L1 in CIELAB for colour fidelity."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from kornia.color import rgb_to_lab


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator with GroupNorm (BatchNorm misbehaves across DDP ranks and tiny batches).
    [B, 3, H, W] → logits [B, 1, H/8 − 2, W/8 − 2] (one per overlapping patch)."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_out = channels * min(2**i, 8)
            mods += [nn.Conv2d(c, c_out, 4, 2 if i < layers else 1, 1, bias=False),
                     nn.GroupNorm(min(32, c_out // 4), c_out), nn.LeakyReLU(0.2)]
            c = c_out
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):
        return self.net(x)


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def g_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """taming: balance the GAN gradient against the reconstruction gradient at the decoder's last layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def lab_l1(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean |ΔL*| + |Δa*| + |Δb*| over channels, / 100, of images [B, 3, H, W] in [-1, 1] (sRGB, D65), in fp32.

    Why: an RGB L1 weighs a hue shift between saturated yellows lightly — orange yellow (224, 163, 46) came back
    as (244, 144, 52), an L1 of 0.12 on the [-1, 1] scale but CIEDE2000 ≈ 12 — while CIELAB distances follow what
    people see. Per pixel, so it also pulls photo ΔE, not only flat colours. Out-of-range reconstructions are
    clamped first (the RGB L1 still sees them)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        lab = [rgb_to_lab(((t.float() + 1) / 2).clamp(0, 1)) for t in (recon, x)]
        return (lab[0] - lab[1]).abs().mean() / 100
