"""`vqtok decode CODES.npy -o out.png`: a code grid → an image, locally or via a vqtok server."""
from __future__ import annotations

import argparse

from .encode import add_backend_arguments, open_backend

HELP = "Decode a code grid (.npy from `vqtok encode`) to a PNG, locally with ONNX Runtime or via a vqtok server."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("codes", metavar="CODES.npy", help="an int [h, w] (or [1, h, w]) grid")
    p.add_argument("-o", "--output", required=True, help="output image (PNG recommended)")
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vqtok.server.client import VqtokError

    codes = np.load(args.codes, allow_pickle=False)
    if codes.ndim == 3 and codes.shape[0] == 1:
        codes = codes[0]
    try:
        image = open_backend(args).decode(codes)
    except VqtokError as err:
        raise ValueError(str(err)) from None
    image.save(args.output)
    print(f"{args.codes} ({codes.shape[0]}×{codes.shape[1]}) → {args.output} ({image.width}×{image.height})")
    return 0
