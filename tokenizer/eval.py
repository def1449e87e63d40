"""Reconstruction quality and codebook statistics of a tokenizer on a folder of images or a manifest split.

`evaluate(model_or_path, data, ...)` → dict: PSNR and SSIM (scikit-image, on the uint8 images a user would see),
perceptual distance (`tokenizer.perceptual.make_perceptual`), `fd_effnet` (Fréchet distance between real and
reconstructed pooled EfficientNet-Lite0 features; it is not FID and, with fewer images than its 1280 dimensions,
only comparable at a fixed image set), codebook usage and perplexity over the whole set, mean quantisation error
‖e − q‖² (as the quantizer computes it) and its ratio to the mean ‖e‖², bits per pixel of the raw codes, mean
CIEDE2000 ΔE of the photos, and the colour set of `tokenizer.colour` (flat images and mosaics: mean and worst ΔE,
PSNR). `write_reports` writes JSON, Markdown, a PNG grid of the worst and best reconstructions by PSNR, a codebook
usage plot, a per-image PSNR plot and an index.html tying them together (tokenizer/plots.py).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity

from .colour import COLOUR_SET, flat_image, mean_delta_e, mosaics
from .contract import psnr
from .data import is_manifest, list_images
from .model import Tokenizer, to_model_range, to_uint8
from .perceptual import EffNetLite0, PerceptualDistance, make_perceptual
from .preprocess import prepare, save_grid


def ssim(real: np.ndarray, recon: np.ndarray) -> float:
    """SSIM of two uint8 images [H, W, 3] (skimage defaults: 7×7 window, channel mean)."""
    return float(structural_similarity(real, recon, data_range=255, channel_axis=-1))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D] (N, M ≥ 2).

    ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½. With Σ₁ = AᵀA, Σ₂ = BᵀB (A, B the centred features / √(n − 1)),
    tr (Σ₁Σ₂)^½ is the nuclear norm of ABᵀ (an N×M SVD): exact, and far cheaper and steadier than
    `scipy.linalg.sqrtm` of a singular D×D product when N < D (tests/test_eval.py checks the two agree).
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 images per set; evaluate on more images")
    a, b = a.astype(np.float64), b.astype(np.float64)
    ca, cb = (a - a.mean(0)) / math.sqrt(len(a) - 1), (b - b.mean(0)) / math.sqrt(len(b) - 1)
    tr_covmean = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    d = ((a.mean(0) - b.mean(0)) ** 2).sum() + (ca * ca).sum() + (cb * cb).sum() - 2 * tr_covmean
    return float(max(0.0, d))


def bits_per_pixel(codebook_size: int, h: int, w: int, height: int, width: int) -> float:
    """Raw code rate: log2(K)·h·w / (H·W)."""
    return math.log2(codebook_size) * h * w / (height * width)


@torch.no_grad()
def encode_with_error(model: Tokenizer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, 3, H, W] in [-1, 1] → (codes [B, h, w], ‖e − q‖² and ‖e‖² per position [B, h, w]), as the quantizer
    computes them (e after the l2 normalisation of cosine codebooks, where ‖e‖² = 1)."""
    b, h, w = x.shape[0], x.shape[2] // model.factor, x.shape[3] // model.factor
    e = model.search_vectors(x)
    codes = model.quantizer.nearest(e)
    err = (e - model.quantizer.lookup_table()[codes]).pow(2).sum(-1)
    return codes.view(b, h, w), err.view(b, h, w), e.pow(2).sum(-1).view(b, h, w)


@torch.no_grad()
def reconstruct(model: Tokenizer, images: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
    """uint8 [H, W, 3] images of one size → the model's uint8 reconstructions (encode to codes, decode)."""
    dev = next(model.parameters()).device
    recons = []
    for i in range(0, len(images), batch_size):
        x = to_model_range(torch.from_numpy(np.stack(images[i:i + batch_size]))).to(dev)
        recons += list(to_uint8(model.decode(model.encode(x))).cpu().numpy())
    return recons


@torch.no_grad()
def colour_set_metrics(model: Tokenizer, size: int = 256, batch_size: int = 8) -> dict:
    """Mean and worst CIEDE2000 ΔE and mean PSNR over the flat colour-set images, and over the mosaics."""
    names = list(COLOUR_SET)
    images = [flat_image(COLOUR_SET[n], size) for n in names] + mosaics(size)
    recons = reconstruct(model, images, batch_size)
    de = [mean_delta_e(a, b) for a, b in zip(images, recons)]
    ps = [psnr(a, b) for a, b in zip(images, recons)]
    flat_de, flat_ps, n = de[:len(names)], ps[:len(names)], len(names)
    worst = int(np.argmax(flat_de))
    return {
        "colour_de_mean": float(np.mean(flat_de)), "colour_de_worst": flat_de[worst],
        "colour_de_worst_name": names[worst], "colour_psnr": float(np.mean(flat_ps)),
        "mosaic_de_mean": float(np.mean(de[n:])), "mosaic_psnr": float(np.mean(ps[n:])),
        "colour_set": [{"name": k, "rgb": list(COLOUR_SET[k]), "recon_rgb": [round(float(c), 1) for c in r.mean((0, 1))],
                        "delta_e": d, "psnr": p} for k, r, d, p in zip(names, recons, flat_de, flat_ps)],
    }


def _keep_extremes(kept: list, n: int) -> list:
    kept.sort(key=lambda t: t[0])
    return kept if len(kept) <= 2 * n else kept[:n] + kept[-n:]


@torch.no_grad()
def evaluate(model_or_path: Tokenizer | str | Path, data: str | Path, split: str | None = "val", size: int = 256,
             batch_size: int = 8, perceptual: str | torch.nn.Module = "effnet", *, device: str = "cpu", grid_n: int = 4,
             fd_net: EffNetLite0 | None = None, progress: bool = False) -> dict:
    """Metrics of `model_or_path` on `data` (folder, manifest TSV, or folder with manifest.tsv + `split`).

    `device` applies to a model loaded from a path; a Tokenizer passed in is evaluated on its own device.
    `perceptual`: 'effnet' | 'lpips' | 'none', or a loaded distance module (x, y) → [B]; with `fd_net` (an
    EffNetLite0) a caller evaluating many models loads the networks once.
    The worst and best `grid_n` reconstructions are returned under the private key `_extremes` (see write_reports).
    `split` applies to manifests only: for a plain folder the result's "split" is None. `progress` shows a bar.
    """
    t0 = time.time()
    if isinstance(model_or_path, Tokenizer):
        model = model_or_path
        dev = next(model.parameters()).device  # a loaded model is evaluated where it lives
    else:
        dev = torch.device(device)
        model = Tokenizer.from_pretrained(model_or_path).to(dev)
    was_training = model.training
    model.eval()
    cfg, f = model.config, model.factor
    paths = list_images(data, split)
    split = split if is_manifest(data, split) else None  # a plain folder has no split: do not label it "val"
    kind = perceptual if isinstance(perceptual, str) else (
        "effnet" if isinstance(perceptual, PerceptualDistance) else type(perceptual).__name__)
    if isinstance(perceptual, str):
        pdist = make_perceptual(perceptual).to(dev) if perceptual != "none" else None
    else:
        pdist = perceptual.to(dev)
    if fd_net is None:
        fd_net = pdist.net if isinstance(pdist, PerceptualDistance) else EffNetLite0()
    fd_net = fd_net.to(dev)

    counts = torch.zeros(cfg.codebook_size, dtype=torch.long)
    err_sum, norm_sum, n_pos = 0.0, 0.0, 0
    per_image, p_dists, feats_real, feats_rec, kept = [], [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="eval", dynamic_ncols=True)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        real_u8 = torch.from_numpy(np.stack([prepare(p, "resize", size, f)[0] for p in chunk]))  # [B, H, W, 3]
        x = to_model_range(real_u8).to(dev)
        codes, err, norm = encode_with_error(model, x)
        recon = model.decode(codes)
        rec_u8 = to_uint8(recon).cpu()
        counts += torch.bincount(codes.flatten().cpu(), minlength=cfg.codebook_size)
        err_sum, n_pos = err_sum + float(err.double().sum()), n_pos + err.numel()
        norm_sum += float(norm.double().sum())
        recon_q = to_model_range(rec_u8).to(dev)  # score what a user sees: the rounded uint8 reconstruction
        if pdist is not None:
            p_dists += pdist(recon_q, x).flatten().cpu().tolist()
        feats_real.append(fd_net.pooled(x).cpu().numpy())
        feats_rec.append(fd_net.pooled(recon_q).cpu().numpy())
        for p, a, b in zip(chunk, real_u8.numpy(), rec_u8.numpy()):
            m = {"file": str(p), "psnr": psnr(a, b), "ssim": ssim(a, b), "delta_e": mean_delta_e(a, b)}
            per_image.append(m)
            kept = _keep_extremes(kept + [(m["psnr"], len(per_image) - 1, a, b)], grid_n)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    colour = colour_set_metrics(model, size, batch_size)
    model.train(was_training)

    probs = counts.double() / counts.sum()
    nz = probs[probs > 0]
    h, w = size // f, size // f
    return {
        "model": str(model_or_path) if not isinstance(model_or_path, Tokenizer) else cfg.model_id or "<in-memory>",
        "data": str(data), "split": split, "n_images": len(paths), "size": size, "policy": "resize",
        "factor": f, "codebook_size": cfg.codebook_size, "tokens": [h, w],
        "psnr": float(np.mean([m["psnr"] for m in per_image])),
        "ssim": float(np.mean([m["ssim"] for m in per_image])),
        "delta_e": float(np.mean([m["delta_e"] for m in per_image])),
        "perceptual": float(np.mean(p_dists)) if p_dists else None, "perceptual_kind": kind,
        "fd_effnet": frechet_distance(np.concatenate(feats_real), np.concatenate(feats_rec)),
        "codes_used": int((counts > 0).sum()),
        "usage_pct": 100.0 * int((counts > 0).sum()) / cfg.codebook_size,
        "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
        "quant_error": err_sum / n_pos,
        "quant_error_ratio": err_sum / norm_sum,  # ‖e − q‖² relative to ‖e‖² (the study's scale-free measure)
        "bpp": bits_per_pixel(cfg.codebook_size, h, w, size, size),
        **colour,
        "seconds": time.time() - t0,
        "per_image": per_image,
        "_extremes": kept,
        "_counts": counts.numpy(),
    }


SUMMARY_KEYS = ("psnr", "ssim", "delta_e", "perceptual", "fd_effnet", "usage_pct", "codes_used", "perplexity",
                "quant_error", "quant_error_ratio", "bpp", "colour_de_mean", "colour_de_worst", "colour_de_worst_name",
                "colour_psnr", "mosaic_de_mean", "mosaic_psnr")


def markdown_table(result: dict) -> str:
    where = f"split {result['split']}" if result["split"] is not None else "every image in the folder"
    lines = [f"Evaluation of `{result['model']}` on `{result['data']}` ({where}, "
             f"{result['n_images']} images, {result['size']}² `resize`, K={result['codebook_size']}, "
             f"f={result['factor']}, perceptual: {result['perceptual_kind']})", "", "| metric | value |", "|---|---|"]
    for k in SUMMARY_KEYS:
        v = result[k]
        lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines) + "\n"


def write_reports(result: dict, out_dir: str | Path, stem: str = "eval") -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md`, `<stem>_grid.png`, `<stem>_usage.png`, `<stem>_psnr.png` and `index.html`
    (`<stem>_index.html` for another stem) into out_dir; returns their paths."""
    from .plots import plot_code_usage, plot_psnr, write_index

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "grid": out / f"{stem}_grid.png",
             "usage_png": out / f"{stem}_usage.png", "psnr_png": out / f"{stem}_psnr.png",
             "index": out / ("index.html" if stem == "eval" else f"{stem}_index.html")}
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    files["json"].write_text(json.dumps(public, indent=2) + "\n")  # inf PSNR is written as Infinity
    files["md"].write_text(markdown_table(result))
    kept = result["_extremes"]  # (psnr, index, real, recon), worst first
    save_grid([(a, b) for _, _, a, b in kept], files["grid"], labels=[f"{v:.2f} dB" for v, _, _, _ in kept])
    plot_code_usage(result["_counts"], files["usage_png"])
    plot_psnr([m["psnr"] for m in result["per_image"]], files["psnr_png"])
    write_index(result, files, files["index"], SUMMARY_KEYS)
    return files
