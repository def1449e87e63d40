"""`vqtok detokenize DST --rows 0,5,10-12 -o DIR`: decode rows of a tokenized dataset back to PNGs (spot checks)."""
from __future__ import annotations

import argparse

HELP = "Decode rows of a `vqtok tokenize` dataset back to PNG images for spot checks."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dst", help="a folder written by `vqtok tokenize` (with manifest.json)")
    p.add_argument("--rows", default="0", help="row numbers in shard order: `0,5,10-12` (default 0)")
    p.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    p.add_argument("--model", default=None,
                   help="model folder or id (default: the manifest's; its codebook sha256 must match)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")


def parse_rows(spec: str) -> list[int]:
    """`0,5,10-12` → [0, 5, 10, 11, 12]."""
    rows: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--rows takes numbers and ranges like `0,5,10-12`, got {part!r}")
        rows += list(range(int(lo), int(hi or lo) + 1))
    return rows


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vqtok.pipeline.detok import detokenize_rows

    written = detokenize_rows(Path(args.dst), parse_rows(args.rows), Path(args.output), args.model, args.device)
    for p in written:
        print(p)
    return 0
