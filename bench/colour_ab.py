"""Quick colour A/B scoring of short runs: colour-set ΔE at 64² (flat images, 8×8 tokens) and val PSNR / ΔE at 128².

    python -m bench.colour_ab MODEL_DIR... [--data ../shared/data/photos/manifest.tsv]
    python -m bench.colour_ab --sensitivity MODEL_DIR   # how much the losses see a colour change vs the model's error
    python -m bench.colour_ab --bottleneck MODEL_DIR    # flat colours decoded from codes vs from the unquantised e

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
from vqtok.tokenizer.eval import colour_set_metrics, psnr
from vqtok.tokenizer.model import Tokenizer, to_model_range, to_uint8
from vqtok.tokenizer.preprocess import prepare


@torch.no_grad()
def score(model_dir: str, data: str, val_size: int = 128, colour_size: int = 64) -> dict:
    model = Tokenizer.from_pretrained(model_dir).eval()
    c = colour_set_metrics(model, colour_size)
    ps, de = [], []
    for p in list_images(data, "val"):
        real = np.array(prepare(p, "resize", val_size, model.factor)[0])  # writable: torch warns on read-only
        rec = to_uint8(model.decode(model.encode(to_model_range(torch.from_numpy(real[None])))))[0].numpy()
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
    variants = {"reconstruction": to_uint8(model.decode(model.encode(to_model_range(torch.from_numpy(real))))).numpy(),
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
    quant = to_uint8(model.decode(model.encode(x))).numpy()
    rows = {n: {"codes": round(mean_delta_e(r, q), 2), "unquantised": round(mean_delta_e(r, c), 2),
                "codes_rgb": q.reshape(-1, 3).mean(0).round().tolist()}
            for n, r, q, c in zip(names, real, quant, cont)}
    return {"mean_codes": float(np.mean([r["codes"] for r in rows.values()])),
            "mean_unquantised": float(np.mean([r["unquantised"] for r in rows.values()])), "colours": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="../shared/data/photos/manifest.tsv")
    ap.add_argument("--sensitivity", action="store_true")
    ap.add_argument("--bottleneck", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.bottleneck:
        print(json.dumps(bottleneck(args.models[0]), indent=1))
        return
    if args.sensitivity:
        print(json.dumps(sensitivity(args.models[0], args.data), indent=1))
        return
    for m in args.models:
        print(json.dumps(score(m, args.data)), flush=True)


if __name__ == "__main__":
    main()
