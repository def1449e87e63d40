"""bench.plot_runs (training curves PNG) and bench.colour_ab (colour A/B scoring, held-out colours) on tiny inputs."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from bench import colour_ab, plot_runs
from vqtok.tokenizer.model import Tokenizer, TokenizerConfig


def test_plot_runs_writes_a_png(tmp_path):
    for name, k in (("rot", 1.0), ("ste", 2.0)):
        (tmp_path / name).mkdir()
        rows = [{"step": s, "rec": k / s, "usage": 0.5, "quant_error": 0.1 * k} for s in range(1, 6)]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    runs = {n: plot_runs.load(tmp_path / n) for n in ("rot", "ste")}
    out = plot_runs.plot(runs, ("rec", "usage", "quant_error", "perplexity"), tmp_path / "c.png", "t")
    w, h = Image.open(out).size
    assert w > 400 and h > 300


@pytest.fixture
def tiny_model_dir(tmp_path) -> str:
    torch.manual_seed(0)
    cfg = TokenizerConfig(base_channels=8, channel_mult=(1, 2), latent_channels=8, codebook_size=32, code_dim=4,
                          image_size=32, model_id="tiny-colour")
    Tokenizer(cfg).save_pretrained(tmp_path / "m")
    torch.set_num_threads(1)
    return str(tmp_path / "m")


def test_colour_ab_bottleneck_on_a_tiny_model(tiny_model_dir):
    res = colour_ab.bottleneck(tiny_model_dir, size=16)
    assert len(res["colours"]) == 41 and res["mean_codes"] > 0 and res["mean_unquantised"] > 0


def test_colour_ab_heldout_on_a_tiny_model(tiny_model_dir):
    res = colour_ab.heldout(tiny_model_dir, count=10, seed=3, size=64)
    assert 0 < res["flat_de_mean"] <= res["flat_de_p90"] <= res["flat_de_worst"]  # an untrained model is off
    assert 0 <= res["flat_within_3"] <= 10 and 0 <= res["n_chroma_over_50"] <= 10
    assert res["mosaic_de_mean"] > 0 and res["flat_psnr"] > 0
    assert colour_ab.heldout(tiny_model_dir, count=10, seed=3, size=64) == res  # a fixed draw per seed


def test_colour_ab_cli_scores_every_model_given(tiny_model_dir, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other"
    torch.manual_seed(1)
    Tokenizer(Tokenizer.from_pretrained(tiny_model_dir).config).save_pretrained(other)
    monkeypatch.setattr("sys.argv", ["colour_ab", "--bottleneck", tiny_model_dir, str(other)])
    colour_ab.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == [tiny_model_dir, str(other)]
    assert rows[0]["mean_codes"] != rows[1]["mean_codes"]  # two different models, each scored
