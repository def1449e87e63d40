"""`vqtok import` parity against the original code: the LlamaGen and taming fixtures (random weights, outputs
computed by the original projects; tests/fixtures/thirdparty/make_fixtures.py), in PyTorch, through the exported
ONNX graphs and through `vqtok serve`; checkpoint safety; key errors. Width-changing configs and diffusers:
tests/test_import_diffusers.py."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests._serving import LiveServer, png
from vqtok.tokenizer.importers import import_checkpoint
from vqtok.tokenizer.model import Tokenizer, to_uint8
from vqtok.tokenizer.safe_load import UnsafeCheckpoint, load_checkpoint

FIX = {"llamagen": ("llamagen_a", "checkpoint.pt", "model_args.json", 6),
       "taming": ("taming_a", "last.ckpt", "config.yaml", 55)}  # last: training entries ignored (README of fixtures)
SHA = {"llamagen": "0946ec975bedfd0d66159ac0e88f830a9290e8736abbdb3be1d926f8e01cb7e4",
       "taming": "1216b68bdeba9ee97423a38ecfc6027c3744c6ccc047a397f670ab120bc2c43e"}
CROP = (slice(None), slice(None), slice(96, 160), slice(96, 160))


def _src(repo_root, fmt):
    name, ckpt, cfg, _ = FIX[fmt]
    d = repo_root / "tests" / "fixtures" / "thirdparty" / name
    return d / ckpt, d / cfg, np.load(d / "reference.npz")


def _fixture_input(images: np.ndarray) -> torch.Tensor:
    """The fixture's float inputs, bit for bit: 2·(u/255) − 1 in float64, cast to float32 (LlamaGen's vq_demo).
    Contiguous NCHW: torch's CPU GroupNorm on channels_last-strided input moves these random-weight latents by
    ~3e-4 (the fixtures' README)."""
    return torch.from_numpy(np.ascontiguousarray((2 * (images.transpose(0, 3, 1, 2) / 255) - 1).astype(np.float32)))


@pytest.fixture(scope="module")
def imported(repo_root, tmp_path_factory):
    """Both fixtures imported once; {fmt: (model dir, report, reference arrays)}."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for fmt in FIX:
        ckpt, cfg, ref = _src(repo_root, fmt)
        out[fmt] = (root / f"{fmt}-a", import_checkpoint(fmt, ckpt, root / f"{fmt}-a", config=cfg), ref)
    return out


@pytest.mark.parametrize("fmt", list(FIX))
def test_fixture_parity_in_pytorch(imported, fmt):
    d, report, ref = imported[fmt]
    model = Tokenizer.from_pretrained(d)
    x = _fixture_input(ref["images"])
    with torch.no_grad():
        np.testing.assert_allclose(model.quant_proj(model.encoder(x)).numpy(), ref["prequant"], atol=1e-4, rtol=0)
        codes = model.encode(x)
        # The fixtures list no near-ties (gap < 1e-5), so every code must match.
        np.testing.assert_array_equal(codes.numpy(), ref["codes"])
        raw = model.decoder(model.post_quant_proj(model.quantizer.embed(torch.from_numpy(ref["codes"]))))
        assert float(np.abs(raw[CROP].numpy() - ref["recon_crop"]).max()) <= 1e-4
        clamped = model.decode(torch.from_numpy(ref["codes"]))[CROP].numpy()
        assert float(np.abs(clamped - np.clip(ref["recon_crop"], -1, 1)).max()) <= 1e-4


@pytest.mark.parametrize("fmt", list(FIX))
def test_import_report_model_card_and_origin(imported, fmt):
    d, report, _ = imported[fmt]
    assert report.source_sha256 == SHA[fmt]
    assert len(report.ignored) == FIX[fmt][3]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["origin"] == f"{fmt}:{FIX[fmt][1]} sha256:{SHA[fmt]}" and cfg["model_id"] == f"{fmt}-a"
    with safe_open(str(d / "model.safetensors"), "np") as f:
        assert f.metadata()["codebook_sha256"] == report.codebook_sha256
    card = (d / "README.md").read_text()
    assert SHA[fmt] in card and "licence" in card and report.codebook_sha256 in card
    from vqtok.cli.info import describe

    info = describe(str(d))
    assert info["codebook_sha256"] == report.codebook_sha256 and info["config"]["origin"].startswith(fmt)


@pytest.mark.parametrize("fmt", list(FIX))
def test_fixture_parity_through_onnx(imported, fmt):
    from vqtok.export.onnx import export_model
    from vqtok.export.runtime import OnnxTokenizer

    d, _, ref = imported[fmt]
    export_model(d)
    tok = OnnxTokenizer.from_pretrained(d, threads=1)
    assert tok.metadata.codebook_sha256 == imported[fmt][1].codebook_sha256
    codes = tok.encode_array(ref["images"])
    assert (codes == ref["codes"]).mean() >= 0.999
    ours = tok.decode(ref["codes"])[:, 96:160, 96:160]
    want = to_uint8(torch.from_numpy(ref["recon_crop"])).numpy()
    assert int(np.abs(ours.astype(int) - want.astype(int)).max()) <= 1


def test_fixtures_through_vqtok_serve(imported, tmp_path):
    """Both imported models behind one server: /v1/encode codes and /v1/decode pixels match the original code."""
    from vqtok.export.onnx import export_model

    models = tmp_path / "models"
    for fmt, (d, _, _) in imported.items():
        if not (d / "encoder.onnx").is_file():
            export_model(d)
        shutil.copytree(d, models / d.name)
    args = ["--models-dir", str(models), "--threads", "1", "--max-batch-size", "2"]
    with LiveServer(args, log=tmp_path / "serve.log") as srv, httpx.Client(base_url=srv.url, timeout=600) as c:
        for fmt, (d, report, ref) in imported.items():
            for i in range(len(ref["images"])):
                r = c.post("/v1/encode", files={"image": ("x.png", png(ref["images"][i]), "image/png")},
                           data={"model": d.name, "policy": "native"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["codebook_sha256"] == report.codebook_sha256
                assert (np.array(body["codes"]) == ref["codes"][i]).mean() >= 0.999
                r = c.post("/v1/decode", json={"codes": ref["codes"][i].tolist(), "model": d.name})
                assert r.status_code == 200, r.text
                img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))[96:160, 96:160]
                want = to_uint8(torch.from_numpy(ref["recon_crop"][i:i + 1])).numpy()[0]
                assert int(np.abs(img.astype(int) - want.astype(int)).max()) <= 1


class _Evil:
    def __reduce__(self):
        return os.system, ("touch pwned-by-checkpoint",)


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Evil()}, path)
    with pytest.raises(UnsafeCheckpoint, match="system"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpoint):
        import_checkpoint("llamagen", path, tmp_path / "out", config="VQ-8")
    assert not (tmp_path / "pwned-by-checkpoint").exists() and not (tmp_path / "out").exists()
    # The same trick in a plain pickle and in torch's pre-1.6 (non-zip) format is refused too.
    raw = tmp_path / "raw.pt"
    with open(raw, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ValueError, match="raw.pt"):  # not a torch.save file: torch's safe unpickler rejects it
        load_checkpoint(raw)
    torch.save({"x": _Evil()}, raw, _use_new_zipfile_serialization=False)  # torch's pre-1.6 format
    with pytest.raises(UnsafeCheckpoint, match="system"):
        load_checkpoint(raw)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_inert_metadata_keeps_its_values(repo_root):
    ck = load_checkpoint(_src(repo_root, "llamagen")[0])
    assert isinstance(ck["args"], object) and ck["args"].codebook_size == 512 and ck["steps"] == 5000
    assert not isinstance(ck["args"], argparse.Namespace)  # a stand-in, argparse's class was never called


def test_unexpected_and_missing_keys_are_named(repo_root, tmp_path):
    ckpt, cfg, _ = _src(repo_root, "llamagen")
    ck = load_checkpoint(ckpt)
    sd = dict(ck["model"])
    sd["encoder.extra_block.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="encoder.extra_block.weight"):
        import_checkpoint("llamagen", tmp_path / "extra.pt", tmp_path / "o1", config=cfg)
    del sd["encoder.extra_block.weight"], sd["decoder.conv_out.bias"]
    torch.save({"model": sd}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="decoder.conv_out.bias"):
        import_checkpoint("llamagen", tmp_path / "missing.pt", tmp_path / "o2", config=cfg)
    torch.save({"model": ck["model"], "mystery": 1}, tmp_path / "top.pt")
    with pytest.raises(ValueError, match="mystery"):
        import_checkpoint("llamagen", tmp_path / "top.pt", tmp_path / "o3", config=cfg)
    # A config that does not describe the checkpoint: the shape error names the tensor.
    with pytest.raises(ValueError, match="shape"):
        import_checkpoint("llamagen", ckpt, tmp_path / "o4", config="VQ-8")


def test_cli_import_and_info_show_the_origin(repo_root, tmp_path, capsys):
    from vqtok.cli import main

    ckpt, cfg, _ = _src(repo_root, "taming")
    assert main(["import", "taming", str(ckpt), "--config", str(cfg), "--out", str(tmp_path / "m"), "--id", "t"]) == 0
    assert "ignored 55" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert f"origin:          taming:last.ckpt sha256:{SHA['taming']}" in out
    assert main(["import", "taming", str(ckpt), "--out", str(tmp_path / "n")]) == 2  # no --config: one-line error
    assert "--config" in capsys.readouterr().err


def test_presets_have_the_released_sizes():
    """Parameter counts of the full-size presets (meta tensors, no memory): LlamaGen VQ-8 = 70.11 M as the stock
    VQ_8() in the fixtures' meta.json; VQ-16 ≈ 72 M as LlamaGen reports."""
    from vqtok.tokenizer.importers import preset_config

    def params(name):
        with torch.device("meta"):
            return Tokenizer(preset_config(name)).num_params()

    assert params("llamagen-vq8") == 70_109_835
    assert round(params("llamagen-vq16") / 1e6) == 72
    cfg = preset_config("ldm-vq-f4")
    assert (cfg.factor, cfg.code_dim, cfg.codebook_size) == (4, 3, 8192)
    assert preset_config("taming-f16-16384").attn_levels == (4,)


@pytest.mark.parametrize("gradient", ["rotation", "ste"])
def test_train_init_fine_tunes_an_imported_model_and_resumes(imported, photos, tmp_path, gradient):
    """`vqtok train --init` on the imported taming fixture: its exact architecture, a few steps, then --resume."""
    from vqtok.tokenizer.train import TrainConfig, Trainer, train

    d = imported["taming"][0]
    data = tmp_path / "data"
    data.mkdir()
    for p in photos[:2]:
        shutil.copy(p, data / p.name)
    opts = {"data": str(data), "out": str(tmp_path / "run"), "init": str(d), "model": {"gradient": gradient},
            "steps": 1, "batch_size": 2, "crop": 32, "device": "cpu", "perceptual": "none", "workers": 0,
            "warmup": 1, "checkpoint_every": 1, "grid_every": 10**6, "progress": False}
    assert train(TrainConfig.from_dict(opts))["step"] == 1
    assert train(TrainConfig.from_dict(opts | {"steps": 2}), resume=True)["step"] == 2
    tuned, src = Tokenizer.from_pretrained(tmp_path / "run"), Tokenizer.from_pretrained(d)
    assert tuned.config.gradient == gradient and tuned.config.norm_groups == 32 and tuned.config.origin
    assert tuned.state_dict().keys() == src.state_dict().keys()
    assert not torch.equal(tuned.encoder.net[0].weight, src.encoder.net[0].weight)  # it did train
    with pytest.raises(ValueError, match="norm_groups"):  # fine-tuning keeps the imported architecture
        Trainer(TrainConfig.from_dict(opts | {"model": {"norm_groups": 8}}))
