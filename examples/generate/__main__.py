"""python -m examples.generate: tokenize → train a prior → sample → decode (server and in-process) → report."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vqtok import OnnxTokenizer
from vqtok.pipeline.run import tokenize_dataset
from vqtok.tokenizer.preprocess import save_grid

from .data import load_tokens, unigram_bits
from .prior import Prior, PriorConfig, train_prior
from .sample import check_codes, decode_in_process, decode_with_server, sample


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.generate", description=__doc__)
    p.add_argument("--train", required=True, help="training images: folder, tar or list file (vqtok tokenize SRC)")
    p.add_argument("--val", required=True, help="validation images, same forms")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default="vqtok-f8-k1024", help="tokenizer id or folder with ONNX graphs")
    p.add_argument("--size", type=int, default=None, help="resize policy side S (default: the model's)")
    p.add_argument("--prior", choices=["causal", "masked"], default="causal")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--server", default=None, help="URL of a running `vqtok serve` to decode through (optional)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tok = OnnxTokenizer.from_pretrained(args.model)
    sha = tok.metadata.codebook_sha256
    sets = {}
    for split, src in (("train", args.train), ("val", args.val)):  # resumable: a finished split is reused
        tokenize_dataset(src, out / f"tokens-{split}", args.model, size=args.size, progress=False, tokenizer=tok)
        sets[split] = load_tokens(out / f"tokens-{split}", sha)
    train, val = sets["train"], sets["val"]
    if train.grid != val.grid:
        raise ValueError(f"train grid {train.grid} and val grid {val.grid} differ: use one --size")
    cfg = PriorConfig(codebook_size=train.codebook_size, seq_len=train.codes.shape[1],
                      causal=args.prior == "causal", n_layer=args.layers, n_embd=args.width)
    print(f"prior: {args.prior}, {len(train.codes)} train / {len(val.codes)} val sequences of {cfg.seq_len} codes "
          f"(K = {cfg.codebook_size})")
    t0 = time.perf_counter()
    model, history = train_prior(cfg, train.codes, val.codes, args.steps, batch=args.batch, seed=args.seed,
                                 eval_every=max(1, args.steps // 10))
    train_seconds = time.perf_counter() - t0
    save_file(model.state_dict(), out / "prior.safetensors")
    (out / "prior.json").write_text(json.dumps(vars(cfg), indent=2) + "\n")

    grids = check_codes(sample(model, args.samples, args.temperature, args.top_k, seed=args.seed),
                        train.grid, train.codebook_size)
    np.save(out / "samples.npy", grids)
    images = decode_in_process(grids, tok)
    save_grid(_rows(images), out / "samples.png", cols=4)
    if args.server:
        served = decode_with_server(grids, args.server, sha)
        save_grid(_rows(served), out / "samples_server.png", cols=4)
    entropy, cross = unigram_bits(train.codes, val.codes, train.codebook_size)
    report = {"prior": args.prior, "model": tok.metadata.model_id, "codebook_sha256": sha, "grid": train.grid,
              "train_sequences": len(train.codes), "val_sequences": len(val.codes),
              "parameters": sum(p.numel() for p in model.parameters()), "steps": args.steps,
              "train_seconds": round(train_seconds, 1), "val_bits_per_token": history[-1]["val_bits"],
              "unigram_entropy_bits": entropy, "unigram_val_cross_entropy_bits": cross,
              "uniform_bits": float(np.log2(train.codebook_size)), "history": history,
              "decoded_by_server": bool(args.server)}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"val {report['val_bits_per_token']:.3f} bits/token vs unigram {cross:.3f} (entropy {entropy:.3f}, "
          f"uniform {report['uniform_bits']:.1f}); samples in {out / 'samples.png'}")
    return report


def _rows(images: np.ndarray, cols: int = 4) -> list:
    """uint8 [n, H, W, 3] → rows of `cols` images for `save_grid`."""
    return [images[i:i + cols] for i in range(0, len(images), cols)]


def load_prior(folder: Path) -> Prior:
    model = Prior(PriorConfig(**json.loads((folder / "prior.json").read_text())))
    model.load_state_dict(load_file(folder / "prior.safetensors"))
    return model.eval()


if __name__ == "__main__":
    run(parse(sys.argv[1:]))
