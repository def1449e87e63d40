"""`vqtok reconstruct IMG -o out.png`: encode then decode, and print the PSNR against the model's input."""
from __future__ import annotations

import argparse

from .encode import add_backend_arguments, open_backend

HELP = "Encode then decode an image (locally or via a vqtok server); save the result and print its PSNR."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMG")
    p.add_argument("-o", "--output", required=True, help="output image (PNG recommended)")
    p.add_argument("--policy", choices=["resize", "native"], default="resize")
    add_backend_arguments(p)


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vqtok.server.client import VqtokError
    from vqtok.tokenizer.preprocess import prepare

    backend = open_backend(args)
    try:
        image = backend.reconstruct(args.image, args.policy)
        size, factor = backend.geometry()
    except VqtokError as err:
        raise ValueError(str(err)) from None
    image.save(args.output)
    reference, crop = prepare(args.image, args.policy, size=size, factor=factor)
    reference = reference[: crop.height, : crop.width]
    score = psnr(np.asarray(image), reference)
    print(f"{args.image} → {args.output} ({image.width}×{image.height}), PSNR {score:.2f} dB")
    return 0
