"""Quick colour A/B scoring of short runs: colour-set ΔE at 64² (flat images, 8×8 tokens) and val PSNR / ΔE at 128².

    python -m bench.colour_ab MODEL_DIR... [--data ../shared/data/photos/manifest.tsv]
    python -m bench.colour_ab --sensitivity MODEL_DIR... # how much the losses see a colour change vs the model's error
    python -m bench.colour_ab --bottleneck MODEL_DIR...  # flat colours decoded from codes vs from the unquantised e
    python -m bench.colour_ab --heldout MODEL_DIR...     # 120 random flat colours no model was picked on, at 256²

Cheaper than `vqtok eval` (no perceptual or Fréchet networks, smaller images) so that several short fine-tuning
runs can be compared on a busy 2-core machine; the shipped numbers come from `vqtok eval` at 256².
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vqtok.tokenizer.colour import mean_delta_e
from vqtok.tokenizer.data import list_images
from vqtok.tokenizer.eval import colour_set_metrics, psnr, reconstruct
from vqtok.tokenizer.model import Tokenizer, to_model_range, to_uint8
from vqtok.tokenizer.preprocess import prepare


@torch.no_grad()
def score(model_dir: str, data: str, val_size: int = 128, colour_size: int = 64) -> dict:
    model = Tokenizer.from_pretrained(model_dir).eval()
    c = colour_set_metrics(model, colour_size)
    ps, de = [], []
    for p in list_images(data, "val"):
        real = np.array(prepare(p, "resize", val_size, model.factor)[0])  # writable: torch warns on read-only
        rec = reconstruct(model, [real])[0]
        ps.append(psnr(real, rec))
        de.append(mean_delta_e(real, rec))
    worst = sorted(c["colour_set"], key=lambda r: -r["delta_e"])[:3]
    return {"model": model_dir, "colour_de_mean": c["colour_de_mean"], "colour_de_worst": c["colour_de_worst"],
            "worst3": [(r["name"], round(r["delta_e"], 1)) for r in worst], "mosaic_de_mean": c["mosaic_de_mean"],
            "val_psnr": float(np.mean(ps)), "val_delta_e": float(np.mean(de))}


@torch.no_grad()
def sensitivity(model_dir: str, data: str, size: int = 128) -> dict:
    """Mean L1 (the reconstruction loss, [-1, 1] range) and EfficientNet perceptual distance of the val photos
    against: the model's reconstruction, the photo desaturated by half, and the photo hue-rotated by 60°.
    If a colour change the model makes costs little perceptual distance next to its reconstruction error, the
    perceptual term gives colour no weight and only L1 (weight 1 of ~1.2 total) holds it."""
    from vqtok.tokenizer.data import jitter_colour
    from vqtok.tokenizer.perceptual import make_perceptual

    model, pdist = Tokenizer.from_pretrained(model_dir).eval(), make_perceptual("effnet")
    real = np.stack([prepare(p, "resize", size, 8)[0] for p in list_images(data, "val")])
    variants = {"reconstruction": np.stack(reconstruct(model, list(real), batch_size=len(real))),
                "desaturated x0.5": np.stack([jitter_colour(r, 0, 0.5) for r in real]),
                "hue +60deg": np.stack([jitter_colour(r, 256 / 6, 1.0) for r in real])}
    x = to_model_range(torch.from_numpy(real))
    out = {}
    for name, v in variants.items():
        y = to_model_range(torch.from_numpy(v))
        out[name] = {"l1": float((y - x).abs().mean()), "perceptual": float(pdist(y, x).mean()),
                     "delta_e": float(np.mean([mean_delta_e(a, b) for a, b in zip(real, v)]))}
    return out


@torch.no_grad()
def bottleneck(model_dir: str, size: int = 64) -> dict:
    """ΔE of each flat colour-set image decoded from its codes and from the unquantised (l2-normalised) encoder
    output e: if both are far off, the codebook is not what loses the colour (encoder/decoder never learned it)."""
    import torch.nn.functional as F

    from vqtok.tokenizer.colour import COLOUR_SET, flat_image

    model = Tokenizer.from_pretrained(model_dir).eval()
    names = list(COLOUR_SET)
    real = np.stack([flat_image(COLOUR_SET[n], size) for n in names])
    x = to_model_range(torch.from_numpy(real))
    z = model.quant_proj(model.encoder(x))
    e = F.normalize(z, dim=1) if model.config.normalize_codes else z
    cont = to_uint8(model.decoder(model.post_quant_proj(e)).clamp(-1, 1)).numpy()
    quant = np.stack(reconstruct(model, list(real), batch_size=len(real)))
    rows = {n: {"codes": round(mean_delta_e(r, q), 2), "unquantised": round(mean_delta_e(r, c), 2),
                "codes_rgb": q.reshape(-1, 3).mean(0).round().tolist()}
            for n, r, q, c in zip(names, real, quant, cont)}
    return {"mean_codes": float(np.mean([r["codes"] for r in rows.values()])),
            "mean_unquantised": float(np.mean([r["unquantised"] for r in rows.values()])), "colours": rows}


@torch.no_grad()
def heldout(model_dir: str, count: int = 120, seed: int = 2026, size: int = 256) -> dict:
    """ΔE00 and PSNR of `count` uniform random sRGB colours as flat size² images, and of 8 mosaics of them: colours
    that no shipped model was selected on (the colour set of `vqtok eval` was), to see whether a colour-set ranking
    holds. Training paints random flat colours too (`patches`), so this checks the selection, not unseen colours."""
    from skimage.color import rgb2lab

    from vqtok.tokenizer.colour import flat_image, mosaics

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(count, 3), dtype=np.uint8)
    chroma = np.hypot(*rgb2lab(colours[None])[0, :, 1:].T)
    images = [flat_image(tuple(int(v) for v in c), size) for c in colours] + mosaics(size, 8, colours=colours, seed=seed)
    recons = reconstruct(Tokenizer.from_pretrained(model_dir).eval(), images)
    de = np.array([mean_delta_e(a, b) for a, b in zip(images, recons)])
    ps = np.array([psnr(a, b) for a, b in zip(images, recons)])
    flat = de[:count]
    return {"model": model_dir, "flat_de_mean": float(flat.mean()), "flat_de_p90": float(np.percentile(flat, 90)),
            "flat_de_worst": float(flat.max()), "flat_within_3": int((flat <= 3).sum()),
            "flat_de_mean_chroma_over_50": float(flat[chroma > 50].mean()), "n_chroma_over_50": int((chroma > 50).sum()),
            "flat_psnr": float(ps[:count].mean()), "mosaic_de_mean": float(de[count:].mean()),
            "mosaic_psnr": float(ps[count:].mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="../shared/data/photos/manifest.tsv")
    ap.add_argument("--sensitivity", action="store_true")
    ap.add_argument("--bottleneck", action="store_true")
    ap.add_argument("--heldout", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    # one JSON line per model, in the order given (each mode used to score only the first of several models)
    for m in args.models:
        if args.bottleneck:
            res = bottleneck(m)
        elif args.heldout:
            res = heldout(m)
        elif args.sensitivity:
            res = sensitivity(m, args.data)
        else:
            res = score(m, args.data)
        print(json.dumps({"model": m, **res}), flush=True)


if __name__ == "__main__":
    main()
