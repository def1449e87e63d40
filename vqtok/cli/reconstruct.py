"""`vqtok reconstruct IMG -o out.png`: encode then decode, and print the PSNR against the model's input."""
from __future__ import annotations

import argparse

from vqtok.tokenizer.contract import POLICIES

from .encode import add_backend_arguments, open_backend

HELP = "Encode then decode an image (locally or via a vqtok server); save the result and print its PSNR."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMG")
    p.add_argument("-o", "--output", required=True, help="output image (PNG recommended)")
    p.add_argument("--policy", choices=POLICIES, default="resize")
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vqtok.server.client import VqtokError
    from vqtok.tokenizer.contract import psnr
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
