"""`vqtok tokenize SRC DST`: a dataset of images → resumable Parquet shards of codes + manifest.json (see
docs/TOKENIZE.md)."""
from __future__ import annotations

import argparse
import sys

from vqtok.tokenizer.contract import POLICIES

HELP = "Tokenize a dataset (folder, path list, WebDataset tars) into resumable Parquet shards of codes."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", nargs="?", help="a folder (recursive), a .tar / tar pattern (`shards-{000..099}.tar`), "
                   "or a text file of image paths")
    p.add_argument("dst", help="output folder for shard-*.parquet, manifest.json, errors.jsonl; rerun to resume")
    p.add_argument("--model", default=None, help="model folder or shipped model id (default: the default model)")
    p.add_argument("--policy", choices=POLICIES, default="resize",
                   help="resize: shorter side to S and centre crop S×S; native: pad to a multiple of f")
    p.add_argument("--size", type=int, default=None, help="S for --policy resize (default: the model's image size)")
    p.add_argument("--batch-size", type=int, default=32, help="images per ONNX Runtime call (default 32)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local threads, or Ray Data")
    p.add_argument("--shard-size", type=int, default=1000, help="images per Parquet shard (default 1000)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="ONNX Runtime device (default cpu)")
    p.add_argument("--workers", type=int, default=None, help="local engine: decode/resize threads")
    p.add_argument("--max-pixels", type=int, default=None, help="reject larger images (default 64 MP)")
    p.add_argument("--max-bytes", type=int, default=None, help="reject larger files (default 64 MiB)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--ray-actors", type=int, default=None,
                   help="encoder actors (default: one per GPU with --device cuda, else CPUs − 1 of a local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verify", action="store_true",
                   help="only check a finished DST against its manifest (give DST alone) and exit 1 on problems")


def run(args: argparse.Namespace) -> int:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ValueError("tokenize needs pyarrow: pip install 'vqtok[data]'") from None
    from vqtok.pipeline.manifest import verify
    from vqtok.pipeline.run import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, tokenize_dataset
    from vqtok.tokenizer.hub import DEFAULT_MODEL

    if args.verify:
        problems = verify(args.dst)
        for line in problems:
            print(line, file=sys.stderr)
        print("ok" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    if args.src is None:
        raise ValueError("give SRC and DST (or --verify DST)")
    m = tokenize_dataset(
        args.src, args.dst, args.model or DEFAULT_MODEL, policy=args.policy, size=args.size,
        batch_size=args.batch_size, engine=args.engine, shard_size=args.shard_size, workers=args.workers,
        device=args.device, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        max_bytes=args.max_bytes or DEFAULT_MAX_BYTES, ray_address=args.ray_address, ray_actors=args.ray_actors,
        progress=not args.no_progress)
    t = m["totals"]
    print(f"{t['rows']} rows, {t['errors']} errors (see {args.dst}/errors.jsonl), {t['shards']} shards in "
          f"{args.dst}; codebook {m['model']['codebook_sha256'][:16]}…")
    return 0
