"""examples/generate end to end on the fixtures: tokenize → train a tiny prior → sample → decode through a live
`vqtok serve` and in-process; sampled codes are in range; shards from another tokenizer are refused."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _serving import TINY, LiveServer, models_dir

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # examples/ lives in the repository, not in the installed package

gen = pytest.importorskip("examples.generate.__main__")
from examples.generate.data import TokenizerMismatch, load_tokens  # noqa: E402


def splits(tmp_path: Path, photos: list[Path]) -> tuple[Path, Path]:
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("\n".join(str(p) for p in photos[:-1]) + "\n")
    val.write_text(f"{photos[-1]}\n")
    return train, val


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    with LiveServer(["--models-dir", str(models_dir(root)), "--workers", "1", "--threads", "1"],
                    log=root / "serve.log") as srv:
        yield srv


@pytest.mark.parametrize("prior", ["causal", "masked"])
def test_photos_to_tokens_to_prior_to_images(tmp_path, photos, live, prior):
    train, val = splits(tmp_path, photos)
    out = tmp_path / "run"
    args = gen.parse(["--train", str(train), "--val", str(val), "--out", str(out), "--model", str(TINY),
                      "--prior", prior, "--steps", "4", "--batch", "4", "--layers", "1", "--width", "32",
                      "--samples", "3", "--top-k", "20", "--server", live.url])
    report = gen.run(args)
    grids = np.load(out / "samples.npy")
    meta = json.loads((TINY / "config.json").read_text())
    side = meta["image_size"] // meta["factor"]
    assert grids.shape == (3, side, side)
    assert grids.min() >= 0 and grids.max() < meta["codebook_size"]
    # both decode paths give the same images (same graphs, same codes)
    tiled = np.asarray(Image.open(out / "samples.png"))
    assert tiled.shape == (meta["image_size"], 4 * meta["image_size"], 3)
    np.testing.assert_array_equal(tiled, np.asarray(Image.open(out / "samples_server.png")))
    assert report["train_sequences"] == len(photos) - 1 and report["val_sequences"] == 1
    assert np.isfinite(report["val_bits_per_token"]) and report["unigram_entropy_bits"] > 0
    assert gen.load_prior(out).cfg.causal == (prior == "causal")


def test_shards_of_another_tokenizer_are_refused(tmp_path, photos):
    from vqtok.pipeline.run import tokenize_dataset

    tokenize_dataset(str(photos[0].parent), tmp_path / "tokens", str(TINY), progress=False)
    sha = json.loads((tmp_path / "tokens" / "manifest.json").read_text())["model"]["codebook_sha256"]
    assert load_tokens(tmp_path / "tokens", sha).codes.shape[0] == len(photos)
    with pytest.raises(TokenizerMismatch, match="re-tokenize"):
        load_tokens(tmp_path / "tokens", "0" * 64)
