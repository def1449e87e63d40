"""tokenizer.eval and `vqtok eval` on the committed fixture photos with a tiny random model."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vqtok.tokenizer.eval import bits_per_pixel, evaluate, frechet_distance, psnr, ssim
from vqtok.tokenizer.model import Tokenizer, TokenizerConfig, to_model_range
from vqtok.tokenizer.preprocess import prepare

PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"
SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads on a loaded machine are far slower here, not faster
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model() -> Tokenizer:
    torch.manual_seed(0)
    cfg = TokenizerConfig(base_channels=8, channel_mult=(1, 2, 2), latent_channels=8, codebook_size=64, code_dim=4,
                          image_size=SIZE, model_id="tiny-eval")
    return Tokenizer(cfg).eval()


@pytest.fixture(scope="module")
def result(model) -> dict:
    return evaluate(model, PHOTOS, size=SIZE, batch_size=2)


def _all_images() -> torch.Tensor:
    return to_model_range(torch.from_numpy(np.stack([prepare(p, "resize", SIZE, 4)[0]
                                                     for p in sorted(PHOTOS.glob("*.jpg"))])))


def test_psnr_ssim_agree_with_skimage():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-10, 11, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    mse = ((a.astype(float) - b) ** 2).mean()
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    assert ssim(a, b) == pytest.approx(structural_similarity(a, b, data_range=255, channel_axis=-1))
    assert 0 < ssim(a, b) < 1


@pytest.mark.parametrize("n,d", [(40, 6), (7, 20)])  # full-rank and rank-deficient covariances
def test_frechet_distance_matches_sqrtm(n, d):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(n, d)), rng.normal(1.0, 2.0, size=(n + 3, d))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


def test_bits_per_pixel():
    assert bits_per_pixel(1024, 32, 32, 256, 256) == pytest.approx(10 / 64)     # f8: log2(K) / 8²
    assert bits_per_pixel(16384, 16, 16, 256, 256) == pytest.approx(14 / 256)   # f16
    assert bits_per_pixel(256, 3, 5, 24, 40) == pytest.approx(8 * 15 / 960)


def test_keys_and_ranges(result):
    for key in ("psnr", "ssim", "perceptual", "fd_effnet", "usage_pct", "codes_used", "perplexity", "quant_error",
                "bpp", "n_images", "tokens", "per_image", "delta_e", "quant_error_ratio", "colour_de_mean",
                "colour_de_worst", "colour_psnr", "mosaic_de_mean", "mosaic_psnr", "colour_set"):
        assert key in result, key
    assert result["n_images"] == 5 and len(result["per_image"]) == 5 and result["tokens"] == [16, 16]
    assert 0 < result["psnr"] < 40 and -1 <= result["ssim"] <= 1
    assert result["perceptual"] > 0 and result["fd_effnet"] > 0
    assert 0 < result["usage_pct"] <= 100 and 1 <= result["perplexity"] <= result["codes_used"] <= 64
    assert 0 <= result["quant_error"] <= 4  # unit vectors: ‖e − q‖² ≤ 4
    assert result["quant_error_ratio"] == pytest.approx(result["quant_error"], rel=1e-5)  # cosine codes: ‖e‖² = 1
    assert result["delta_e"] > 0 and len(result["colour_set"]) == 41
    assert 0 < result["colour_de_mean"] <= result["colour_de_worst"] and result["mosaic_de_mean"] > 0
    assert result["bpp"] == pytest.approx(math.log2(64) * 16 * 16 / (SIZE * SIZE))


def test_codebook_stats_hand_checked(model, result):
    x = _all_images()
    codes = model.encode(x)
    assert result["codes_used"] == len(torch.unique(codes))
    assert result["usage_pct"] == pytest.approx(100 * len(torch.unique(codes)) / 64)
    p = torch.bincount(codes.flatten(), minlength=64).double() / codes.numel()
    p = p[p > 0]
    assert result["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    with torch.no_grad():
        _, aux = model(x)  # the quantizer's own ‖e − q‖², all five images in one batch
    assert result["quant_error"] == pytest.approx(float(aux["quant_error"]), rel=1e-4)


def test_psnr_matches_decode(model, result):
    x = _all_images()
    recon = ((model.decode(model.encode(x)).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    real = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    want = np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(real.numpy(), recon.numpy())])
    assert result["psnr"] == pytest.approx(want, rel=1e-6)


def test_colour_set_matches_decode(model, result):
    from vqtok.tokenizer.colour import COLOUR_SET, flat_image, mean_delta_e

    des = {}
    for name in ("pure red", "green 200/10", "grey 128"):
        real = flat_image(COLOUR_SET[name], SIZE)
        x = to_model_range(torch.from_numpy(real[None]))
        rec = ((model.decode(model.encode(x)).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        des[name] = mean_delta_e(real, rec[0].numpy())
    rows = {r["name"]: r for r in result["colour_set"]}
    for name, de in des.items():
        assert rows[name]["delta_e"] == pytest.approx(de, rel=1e-4)
    assert result["colour_de_worst"] == max(r["delta_e"] for r in rows.values())
    assert result["colour_de_mean"] == pytest.approx(np.mean([r["delta_e"] for r in rows.values()]))
    per = [m["delta_e"] for m in result["per_image"]]
    assert result["delta_e"] == pytest.approx(np.mean(per)) and all(d > 0 for d in per)


def test_cli_writes_json_md_png_on_manifest_split(model, tmp_path):
    from vqtok.cli import main

    model_dir = model.save_pretrained(tmp_path / "model")
    photos = sorted(PHOTOS.glob("*.jpg"))
    rows = [f"{p}\t{'val' if i < 3 else 'train'}" for i, p in enumerate(photos)]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.tsv").write_text("file\tsplit\n" + "\n".join(rows) + "\n")
    out = tmp_path / "report"
    rc = main(["eval", str(model_dir), str(tmp_path / "data"), "--size", str(SIZE), "--perceptual", "none",
               "--threads", "1", "--grid", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "eval.json").read_text())
    assert data["n_images"] == 3 and data["split"] == "val" and data["perceptual"] is None
    assert "| fd_effnet |" in (out / "eval.md").read_text()
    assert Image.open(out / "eval_grid.png").size == (2 * SIZE, 2 * SIZE)  # worst and best rows of real | recon
    for png in ("eval_usage.png", "eval_psnr.png"):
        assert Image.open(out / png).size == (800, 400)
    index = (out / "index.html").read_text()
    for ref in ('src="eval_usage.png"', 'src="eval_psnr.png"', 'src="eval_grid.png"', 'href="eval.json"'):
        assert ref in index, ref
    assert all(Path(m["file"]).name in index for m in data["per_image"])


def test_bad_perceptual_says_what_to_use(model):
    with pytest.raises(ValueError, match="effnet"):
        evaluate(model, PHOTOS, size=SIZE, perceptual="vgg")


def test_cli_on_a_plain_folder_shows_progress_and_no_split(model, tmp_path, capsys):
    from vqtok.cli import main

    model_dir = model.save_pretrained(tmp_path / "model")
    rc = main(["eval", str(model_dir), str(PHOTOS), "--size", str(SIZE), "--perceptual", "none", "--threads", "1",
               "--grid", "1", "--out", str(tmp_path / "report")])
    assert rc == 0
    err = capsys.readouterr().err
    n = len(list(PHOTOS.glob("*.jpg")))
    assert f"{n}/{n}" in err and "img" in err, err  # the tqdm bar reached the end
    data = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert data["split"] is None and data["n_images"] == n
    md = (tmp_path / "report" / "eval.md").read_text()
    assert "split" not in md and "every image in the folder" in md


def test_cli_lpips_without_its_weights_is_one_line(model, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("lpips") is not None:
        pytest.skip("lpips is installed here; this checks the message a user without it gets")
    from vqtok.cli import main

    model_dir = model.save_pretrained(tmp_path / "model")
    rc = main(["eval", str(model_dir), str(PHOTOS), "--size", str(SIZE), "--perceptual", "lpips",
               "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("vqtok eval: error:") and "--perceptual effnet" in err and "Traceback" not in err
