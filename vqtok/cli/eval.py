"""`vqtok eval MODEL DATA`: PSNR, SSIM, perceptual distance, fd_effnet, codebook usage, perplexity, quantisation
error and bits per pixel on a folder or a manifest split; writes JSON, a Markdown table and a worst/best grid PNG."""
from __future__ import annotations

import argparse

HELP = "Evaluate a tokenizer's reconstructions and codebook on a folder of images or a manifest split."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder or a shipped model id")
    p.add_argument("data", help="a folder of images (recursive), a manifest TSV, or a folder holding manifest.tsv")
    p.add_argument("--split", default="val", help="manifest split (default: val; 'all' for every row); a plain folder has none: all its images")
    p.add_argument("--size", type=int, default=256, help="`resize` policy side S (default: 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--perceptual", choices=["effnet", "lpips", "none"], default="effnet")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", "-o", default="eval", help="folder for eval.json, eval.md, eval_grid.png (default: eval)")
    p.add_argument("--grid", type=int, default=4, help="how many worst and best reconstructions to show")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is much faster on a busy shared machine)")


def run(args: argparse.Namespace) -> int:
    import torch

    from vqtok.tokenizer.eval import evaluate, markdown_table, write_reports

    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate(args.model, args.data, split=None if args.split == "all" else args.split, size=args.size,
                      batch_size=args.batch_size, perceptual=args.perceptual, device=args.device, grid_n=args.grid,
                      progress=not args.no_progress)
    files = write_reports(result, args.out)
    print(markdown_table(result))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
