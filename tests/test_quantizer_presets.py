"""Named quantizer settings (vqtok, taming, paper-vqvae): loss weights, codebook init and the EMA update, checked
against hand computations on tiny tensors."""
from __future__ import annotations

import pytest
import torch

from vqtok.tokenizer.model import Tokenizer, TokenizerConfig
from vqtok.tokenizer.quantizer import QUANTIZER_PRESETS, VectorQuantizer, quantizer_preset

TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=8, codebook_size=16, code_dim=2,
            image_size=16, normalize_codes=False)
CODES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def quantizer_from(preset: str, **kw) -> VectorQuantizer:
    """The quantizer a TokenizerConfig with this preset builds (the wiring under test), on the hand-built codebook."""
    vq = Tokenizer(TokenizerConfig(**(TINY | {"codebook_size": 4} | quantizer_preset(preset) | kw))).quantizer
    with torch.no_grad():
        vq.codebook.copy_(CODES)
        if vq.update == "ema":
            vq.ema_sum.copy_(CODES)
    return vq


def test_presets_are_config_fields_and_vqtok_is_the_default():
    fields = TokenizerConfig.__dataclass_fields__
    for name, preset in QUANTIZER_PRESETS.items():
        assert set(preset) <= set(fields), name
    default = TokenizerConfig()
    assert {k: getattr(default, k) for k in QUANTIZER_PRESETS["vqtok"]} == QUANTIZER_PRESETS["vqtok"]
    assert quantizer_preset("taming") is not QUANTIZER_PRESETS["taming"]  # a copy: callers may edit it
    with pytest.raises(ValueError, match="paper-vqvae"):
        quantizer_preset("bogus")
    with pytest.raises(ValueError, match="codebook_init"):
        VectorQuantizer(4, 2, codebook_init="kaiming")


@pytest.mark.parametrize("preset,commit,codebook", [("vqtok", 0.25, 1.0), ("taming", 1.0, 0.25)])
def test_loss_term_weights_reach_encoder_and_codebook(preset, commit, codebook):
    """d(loss)/de = commit·2(e − q)/(N·d) (the commitment term) and d(loss)/dq = codebook·2(q − e)/(N·d) summed over
    the positions assigned to each code (the codebook term): taming's legacy placement puts β = 0.25 on the latter."""
    vq = quantizer_from(preset).train()
    e = torch.tensor([[0.9, 0.1], [1.2, 0.0], [0.1, 0.8], [-0.7, -0.2]])  # nearest codes 0, 0, 1, 2
    z = e.t().reshape(1, 2, 1, 4).clone().requires_grad_(True)
    _, codes, aux = vq(z)
    assert codes.flatten().tolist() == [0, 0, 1, 2]
    aux["loss"].backward()
    q = CODES[codes.flatten()]
    scale = 2 / e.numel()
    torch.testing.assert_close(z.grad.reshape(2, 4).t(), commit * scale * (e - q))
    want = torch.zeros_like(CODES).index_add_(0, codes.flatten(), codebook * scale * (q - e))
    torch.testing.assert_close(vq.codebook.grad, want)
    mse = ((e - q) ** 2).mean().item()
    assert aux["loss"].item() == pytest.approx((commit + codebook) * mse, rel=1e-6)
    assert aux["e_sq"].item() == pytest.approx(e.pow(2).sum(-1).mean().item(), rel=1e-6)


def test_taming_init_is_uniform_in_plus_minus_one_over_k():
    torch.manual_seed(0)
    cb = Tokenizer(TokenizerConfig(**(TINY | {"codebook_size": 512} | quantizer_preset("taming")))).quantizer.codebook
    k = 512
    assert cb.abs().max().item() <= 1 / k and cb.abs().max().item() > 0.95 / k
    assert cb.mean().abs().item() < 0.1 / k  # centred
    assert cb.std().item() == pytest.approx((1 / k) / 3**0.5, rel=0.1)  # std of U(−a, a) is a/√3
    vqtok = Tokenizer(TokenizerConfig(**(TINY | {"codebook_size": 512}))).quantizer.codebook
    assert vqtok.std().item() == pytest.approx(TINY["code_dim"] ** -0.5, rel=0.1)  # N(0, 1/d)


def test_paper_vqvae_ema_step_with_decay_08_matches_hand_computation():
    vq = quantizer_from("paper-vqvae").train()
    assert vq.update == "ema" and vq.decay == 0.8 and vq.beta == 1.0
    assert not isinstance(vq.codebook, torch.nn.Parameter)  # learned by EMA only, no codebook loss
    e = torch.tensor([[0.8, 0.3], [0.8, 0.5], [0.1, 0.9]])  # codes 0, 0, 1; codes 2 and 3 unused
    z = e.t().reshape(1, 2, 1, 3).clone().requires_grad_(True)
    _, codes, aux = vq(z)
    assert codes.flatten().tolist() == [0, 0, 1]
    # counts: 0.8·1 + 0.2·n_k; sums: 0.8·c_k + 0.2·Σ assigned e; code = sum / count (Laplace smoothing ≈ 1e-6).
    count = torch.tensor([0.8 + 0.4, 0.8 + 0.2, 0.8, 0.8])
    sums = 0.8 * CODES + 0.2 * torch.tensor([[1.6, 0.8], [0.1, 0.9], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(vq.ema_count, count)
    torch.testing.assert_close(vq.codebook, sums / count[:, None], atol=1e-5, rtol=0)
    torch.testing.assert_close(vq.codebook[0], torch.tensor([1.12 / 1.2, 0.16 / 1.2]), atol=1e-5, rtol=0)
    # Loss = β·commitment with β = 1 (no codebook term); its gradient reaches the encoder only.
    q = CODES[codes.flatten()]
    assert aux["loss"].item() == pytest.approx(((e - q) ** 2).mean().item(), rel=1e-6)
    aux["loss"].backward()
    torch.testing.assert_close(z.grad.reshape(2, 3).t(), 2 / e.numel() * (e - q))
