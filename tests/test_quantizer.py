"""Quantizer: the rotation trick against an explicit d×d construction, the STE, codebook statistics, and the
VectorQuantizer's gradients, EMA update and dead-code revival."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vqtok.tokenizer.quantizer import VectorQuantizer, codebook_stats, rotation_trick, straight_through


def explicit_rotation(e: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, float]:
    """R = I − 2rrᵀ + 2q̂êᵀ as a dense [d, d] float64 matrix and λ = ‖q‖/‖e‖, for single vectors e, q [d]."""
    e, q = e.double(), q.double()
    e_hat, q_hat = e / e.norm(), q / q.norm()
    r = (e_hat + q_hat) / (e_hat + q_hat).norm()
    eye = torch.eye(e.numel(), dtype=torch.float64)
    R = eye - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
    return R, float(q.norm() / e.norm())


def grad_of(fn, e: torch.Tensor, q: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e = e.clone().requires_grad_(True)
    out = fn(e, q)
    out.backward(g)
    return out.detach(), e.grad


@pytest.mark.parametrize("d", [2, 3, 8, 64])
def test_rotation_trick_matches_explicit_matrix(d):
    gen = torch.Generator().manual_seed(d)
    n = 16
    e = torch.randn(n, d, generator=gen) * 3.0
    q = torch.randn(n, d, generator=gen) * 0.5
    g = torch.randn(n, d, generator=gen)
    out, grad = grad_of(rotation_trick, e, q, g)

    assert out.dtype == torch.float32
    torch.testing.assert_close(out, q, atol=1e-6, rtol=0)
    for i in range(n):
        R, lam = explicit_rotation(e[i], q[i])
        expected = lam * R.t() @ g[i].double()
        torch.testing.assert_close(grad[i].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", [2, 3, 8, 64])
def test_explicit_r_is_the_rotation_from_e_hat_to_q_hat(d):
    """The reference construction itself: orthogonal, det +1, ê ↦ q̂, identity off the plane span(ê, q̂), and a
    rotation by the angle between e and q inside that plane."""
    gen = torch.Generator().manual_seed(100 + d)
    e, q = torch.randn(d, generator=gen).double(), torch.randn(d, generator=gen).double()
    R, lam = explicit_rotation(e, q)
    e_hat, q_hat = e / e.norm(), q / q.norm()
    eye = torch.eye(d, dtype=torch.float64)

    torch.testing.assert_close(R.t() @ R, eye, atol=1e-10, rtol=0)
    assert torch.linalg.det(R).item() == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(R @ e_hat, q_hat, atol=1e-10, rtol=0)
    torch.testing.assert_close(lam * R @ e, q, atol=1e-10, rtol=0)

    # In-plane orthonormal basis (u, v) with u = ê: R acts there as the 2-D rotation by θ = ∠(e, q).
    u = e_hat
    v = q_hat - (q_hat @ u) * u
    if v.norm() > 1e-9:
        v = v / v.norm()
        theta = math.acos(max(-1.0, min(1.0, float(e_hat @ q_hat))))
        block = torch.tensor([[u @ R @ u, u @ R @ v], [v @ R @ u, v @ R @ v]], dtype=torch.float64)
        rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                           dtype=torch.float64)
        torch.testing.assert_close(block, rot, atol=1e-9, rtol=0)
        # Vectors orthogonal to the plane are left alone.
        if d > 2:
            w = torch.randn(d, generator=gen).double()
            w = w - (w @ u) * u - (w @ v) * v
            torch.testing.assert_close(R @ w, w, atol=1e-9, rtol=0)


def test_explicit_reference_is_not_the_identity():
    """Guard for the tests above: the reference gradient really differs from the STE's for generic e, q."""
    e, q, g = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    R, lam = explicit_rotation(e, q)
    expected = lam * R.t() @ g.double()
    # ê = x̂ rotated onto q̂ = ŷ is +90°; Rᵀ rotates g = x̂ by −90° to −ŷ, scaled by λ = 2.
    torch.testing.assert_close(expected, torch.tensor([0.0, -2.0], dtype=torch.float64), atol=1e-12, rtol=0)
    _, grad = grad_of(rotation_trick, e[None], q[None], g[None])
    torch.testing.assert_close(grad[0], torch.tensor([0.0, -2.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("d", [2, 3, 8, 64])
def test_rotation_trick_preserves_angle_to_gradient(d):
    gen = torch.Generator().manual_seed(7 * d)
    e, q, g = (torch.randn(32, d, generator=gen) for _ in range(3))
    _, grad = grad_of(rotation_trick, e, q, g)
    cos_e = F.cosine_similarity(e.double(), grad.double(), dim=-1)
    cos_q = F.cosine_similarity(q.double(), g.double(), dim=-1)
    torch.testing.assert_close(cos_e, cos_q, atol=1e-5, rtol=0)
    # ... and the gradient norm is scaled by λ = ‖q‖/‖e‖ (R is orthogonal).
    torch.testing.assert_close(grad.norm(dim=-1), g.norm(dim=-1) * q.norm(dim=-1) / e.norm(dim=-1),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["e=-q", "e=0", "q=0"])
def test_rotation_trick_degenerate_rows_are_finite(case):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(4, 8, generator=gen)
    e = torch.randn(4, 8, generator=gen)
    if case == "e=-q":
        e = -q.clone()
    elif case == "e=0":
        e[1] = 0.0
    else:
        q[2] = 0.0
    g = torch.randn(4, 8, generator=gen)
    out, grad = grad_of(rotation_trick, e, q, g)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(out, q, atol=1e-6, rtol=0)
    if case == "e=0":  # documented fallback: identity (STE) gradient on the degenerate row
        torch.testing.assert_close(grad[1], g[1])
    if case == "q=0":
        torch.testing.assert_close(grad[2], g[2])


def test_rotation_trick_bf16_keeps_dtype_and_is_finite():
    gen = torch.Generator().manual_seed(4)
    e = torch.randn(64, 8, generator=gen).bfloat16()
    q = torch.randn(64, 8, generator=gen).bfloat16()
    e[0] = -q[0]
    e[1] = 0
    g = torch.randn(64, 8, generator=gen).bfloat16()
    out, grad = grad_of(rotation_trick, e, q, g)
    assert out.dtype == torch.bfloat16 and grad.dtype == torch.bfloat16
    assert torch.equal(out, q)
    assert torch.isfinite(grad.float()).all()
    # Close to the fp32 gradient (bf16 has ~3 significant digits).
    _, grad32 = grad_of(rotation_trick, e.float(), q.float(), g.float())
    torch.testing.assert_close(grad.float()[2:], grad32[2:], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("shape", [(5, 1), (5,), (2, 3, 4)])
def test_rotation_trick_rejects_bad_shapes(shape):
    e = torch.randn(*shape)
    with pytest.raises(ValueError):
        rotation_trick(e, torch.randn(*shape))


def test_rotation_trick_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        rotation_trick(torch.randn(3, 4), torch.randn(3, 5))


def test_straight_through_identity_gradient():
    gen = torch.Generator().manual_seed(5)
    e, q, g = (torch.randn(10, 6, generator=gen) for _ in range(3))
    out, grad = grad_of(straight_through, e, q, g)
    torch.testing.assert_close(out, q, atol=1e-6, rtol=0)
    assert torch.equal(grad, g)


def test_codebook_stats_hand_made():
    codes = torch.tensor([[0, 0], [1, 1]])  # two of four codes, equally often
    s = codebook_stats(codes, 4)
    assert s["usage"].item() == pytest.approx(0.5)
    assert s["perplexity"].item() == pytest.approx(2.0)

    codes = torch.tensor([0, 0, 0, 1, 2, 3, 3, 3])  # probs 3/8, 1/8, 1/8, 3/8 over K = 8
    p = torch.tensor([3, 1, 1, 3], dtype=torch.float64) / 8
    s = codebook_stats(codes, 8)
    assert s["usage"].item() == pytest.approx(0.5)
    assert s["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)

    s = codebook_stats(torch.arange(16), 16)  # uniform use: perplexity = K
    assert s["usage"].item() == 1.0 and s["perplexity"].item() == pytest.approx(16.0, rel=1e-6)


def hand_built_quantizer(**kw) -> VectorQuantizer:
    vq = VectorQuantizer(4, 2, normalize=False, **kw)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
        if kw.get("update") == "ema":
            vq.ema_sum.copy_(vq.codebook)
    return vq


def test_vector_quantizer_forward_on_hand_built_codebook():
    vq = hand_built_quantizer().eval()
    # z [B=1, d=2, h=1, w=4]: nearest codes 0, 0, 1, 2.
    vectors = torch.tensor([[0.9, 0.1], [1.2, 0.0], [0.1, 0.8], [-0.7, -0.2]])
    z = vectors.t().reshape(1, 2, 1, 4)
    z_q, codes, aux = vq(z)
    assert codes.dtype == torch.int64 and codes.shape == (1, 1, 4)
    assert codes.flatten().tolist() == [0, 0, 1, 2]
    q = vq.codebook[codes.flatten()].detach()
    torch.testing.assert_close(z_q, q.t().reshape(1, 2, 1, 4))
    assert aux["usage"].item() == pytest.approx(3 / 4)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert aux["perplexity"].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    sq = ((vectors - q) ** 2).sum(-1)  # 0.02, 0.04, 0.05, 0.13
    assert aux["quant_error"].item() == pytest.approx(sq.mean().item(), rel=1e-6)
    # loss = codebook term + β × commitment, both mean squared error over all N·d entries.
    mse = ((vectors - q) ** 2).mean().item()
    assert aux["loss"].item() == pytest.approx(1.25 * mse, rel=1e-6)


def test_vector_quantizer_cosine_lookup():
    vq = VectorQuantizer(3, 2, normalize=True)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[10.0, 0.0], [0.0, 0.1], [-1.0, -1.0]]))
    # (0.05, 3) is far from code 1 in l2 but almost parallel to it.
    z = torch.tensor([[0.05, 3.0], [5.0, 0.2], [-2.0, -2.2]]).t().reshape(1, 2, 1, 3)
    _, codes, _ = vq.eval()(z)
    assert codes.flatten().tolist() == [1, 0, 2]


def encoder_side_grad(gradient: str) -> torch.Tensor:
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, normalize=False, gradient=gradient)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    z_q, _, aux = vq(z)
    (z_q * g).sum().backward()
    return z.grad, g


def test_rotation_and_ste_send_different_encoder_gradients():
    grad_rot, g = encoder_side_grad("rotation")
    grad_ste, _ = encoder_side_grad("ste")
    assert torch.equal(grad_ste, g)  # the STE passes the decoder gradient through unchanged
    assert not torch.allclose(grad_rot, grad_ste, atol=1e-3)
    assert torch.isfinite(grad_rot).all()


def test_ema_update_moves_codes_toward_assigned_vectors():
    vq = hand_built_quantizer(update="ema", ema_decay=0.5).train()
    assert not isinstance(vq.codebook, torch.nn.Parameter)
    before = vq.codebook.clone()
    # Every vector is nearest to code 0 = (1, 0); their mean is (0.8, 0.4).
    vectors = torch.tensor([[0.8, 0.3], [0.8, 0.5]])
    z = vectors.t().reshape(1, 2, 1, 2)
    for _ in range(3):
        vq(z)
    target = vectors.mean(0)
    assert (vq.codebook[0] - target).norm() < (before[0] - target).norm() * 0.5
    torch.testing.assert_close(vq.codebook[1:], before[1:], atol=1e-4, rtol=0)  # unassigned codes stay put
    # Eval mode never updates the codebook.
    vq.eval()
    frozen = vq.codebook.clone()
    vq(z)
    assert torch.equal(vq.codebook, frozen)


def test_dead_code_revival_reseeds_unused_codes():
    torch.manual_seed(0)
    vq = hand_built_quantizer(revive_dead_codes=True, dead_code_threshold=0.999).train()
    before = vq.codebook.detach().clone()
    # All vectors go to codes 0 and 1; codes 2 and 3 are unused.
    vectors = torch.tensor([[0.9, 0.1], [0.95, 0.05], [0.2, 0.9], [0.1, 0.7]])
    z = vectors.t().reshape(1, 2, 1, 4)
    vq(z)
    after = vq.codebook.detach()
    for k in (2, 3):
        assert not torch.equal(after[k], before[k])
        # Re-seeded from this batch's encoder outputs.
        assert any(torch.allclose(after[k], v) for v in vectors)
    torch.testing.assert_close(after[:2], before[:2])
    # Without revival nothing moves.
    vq2 = hand_built_quantizer(revive_dead_codes=False, dead_code_threshold=0.999).train()
    vq2(z)
    torch.testing.assert_close(vq2.codebook.detach(), before)


def test_vector_quantizer_d1_uses_ste_and_bad_options_raise():
    vq = VectorQuantizer(4, 1, normalize=False, gradient="rotation")
    assert vq.gradient == "ste"
    with pytest.raises(ValueError):
        VectorQuantizer(4, 2, gradient="bogus")
    with pytest.raises(ValueError):
        VectorQuantizer(4, 2, update="bogus")


@pytest.mark.parametrize("fn", [rotation_trick, straight_through], ids=["rotation", "ste"])
def test_no_decoder_gradient_reaches_q(fn):
    """Both estimators route the incoming gradient to e only; q (the codebook entry) gets nothing through them."""
    gen = torch.Generator().manual_seed(6)
    e = torch.randn(8, 4, generator=gen, requires_grad=True)
    q = torch.randn(8, 4, generator=gen, requires_grad=True)
    fn(e, q).backward(torch.randn(8, 4, generator=gen))
    assert e.grad is not None and e.grad.abs().sum() > 0
    assert q.grad is None or torch.count_nonzero(q.grad) == 0


def test_codebook_gradient_is_the_codebook_loss_only_for_both_estimators():
    """With update="loss" the codebook learns from the codebook loss alone, whichever estimator feeds the encoder:
    the same batch and decoder gradient give the same codebook gradient for "rotation" and "ste"."""
    grads = {}
    for gradient in ("rotation", "ste"):
        torch.manual_seed(0)
        vq = VectorQuantizer(16, 4, normalize=True, gradient=gradient)
        z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
        g = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
        z_q, _, aux = vq(z)
        ((z_q * g).sum() + aux["loss"]).backward()
        grads[gradient] = (vq.codebook.grad.clone(), z.grad.clone())
    torch.testing.assert_close(grads["rotation"][0], grads["ste"][0])
    assert not torch.allclose(grads["rotation"][1], grads["ste"][1], atol=1e-4)
