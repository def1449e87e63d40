"""Where the drift alert threshold comes from: Jensen–Shannon divergence (bits) of the codes of image sets from the
shipped model's code_histogram.json — random in-domain photo sets of several sizes, the test fixtures, flat colours
and uniform noise. Needs the photos (manifest.tsv with a train split); prints one line per set.

    python -m bench.drift [--photos ../shared/data/photos] [--model vqtok-f8-k1024]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vqtok.export.histogram import code_histogram, js_divergence, load_reference
from vqtok.export.runtime import OnnxTokenizer
from vqtok.tokenizer.data import list_images
from vqtok.tokenizer.hub import resolve_model_dir

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--model", default="vqtok-f8-k1024")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model_dir = resolve_model_dir(args.model)
    tok = OnnxTokenizer.from_pretrained(model_dir, threads=1, graphs=("encoder",))
    ref = load_reference(model_dir, tok.metadata.codebook_sha256)
    if ref is None:
        raise SystemExit(f"{model_dir} has no code_histogram.json: vqtok export {args.model} --no-export --histogram DATA")
    rng = np.random.default_rng(0)
    size = tok.metadata.image_size

    def show(name: str, images: list) -> None:
        print(f"{name:28s} JS {js_divergence(code_histogram(tok, images), ref):.3f} bits")

    train = list_images(args.photos, "train")
    for n in (5, 20, 40):
        for r in range(args.repeats):
            show(f"{n} train photos (draw {r})", [train[i] for i in rng.choice(len(train), n, replace=False)])
    show("test fixture photos", sorted((REPO / "tests" / "fixtures" / "photos").glob("*.jpg")))
    show("24 flat colours", [np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(24)])
    show("8 uniform noise", [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)])


if __name__ == "__main__":
    main()
