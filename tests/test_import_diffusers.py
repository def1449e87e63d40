"""Import parity for diffusers `VQModel` folders (random weights, built and run by diffusers itself), and the
width-changing configs the LlamaGen/taming fixtures cannot cover (the 1×1 `nin_shortcut`): our model in the
original key layout, round-tripped through `vqtok import`, and cross-checked against diffusers' implementation.
The diffusers configs are also checked through the exported ONNX graphs and through `vqtok serve`."""
from __future__ import annotations

import argparse
import copy
import io
import json
import shutil

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

diffusers = pytest.importorskip("diffusers", reason="diffusers is in the dev extra: pip install -e '.[dev]'")

from vqtok.tokenizer.importers import import_checkpoint, llamagen_config, preset_config, taming_config  # noqa: E402
from vqtok.tokenizer.layouts import key_map, to_source  # noqa: E402
from vqtok.tokenizer.model import Tokenizer, to_uint8  # noqa: E402
from tests._serving import LiveServer, png  # noqa: E402

DIFFUSERS_CONFIGS = {
    # LDM VQ-f4 (CompVis' vq-f4 / the LDM super-resolution VQVAE) scaled down: 3-d latents, no level attention,
    # widths change at every level.
    "ldm-vq-f4-like": dict(down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                           block_out_channels=[32, 64, 128], layers_per_block=2, latent_channels=3,
                           num_vq_embeddings=64),
    # attention blocks at the lowest level, a factorised codebook (vq_embed_dim ≠ latent_channels), one width
    "attention": dict(down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                      up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[32, 32],
                      layers_per_block=1, latent_channels=4, vq_embed_dim=8, num_vq_embeddings=48),
    # widths change and attention sits on a wider level; 16 groups, no mid attention
    "widths": dict(down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"],
                   up_block_types=["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                   block_out_channels=[16, 48, 32], layers_per_block=1, latent_channels=4, num_vq_embeddings=40,
                   norm_num_groups=16, mid_block_add_attention=False),
}


def _photos(photos, size: int = 64) -> torch.Tensor:
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
                    for p in photos[:2]])
    return torch.from_numpy(np.ascontiguousarray((arr.transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float32)))


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move norms and biases off their init (as the third-party fixtures do) so a swapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _calibrate_codebook(codebook: torch.Tensor, latents: torch.Tensor, seed: int) -> None:
    """Codebook rows drawn near the actual latents, so codes spread over the codebook."""
    g = torch.Generator().manual_seed(seed)
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    rows = flat[torch.randint(0, len(flat), (codebook.shape[0],), generator=g)]
    with torch.no_grad():
        codebook.copy_(rows + 0.3 * flat.std() * torch.randn(rows.shape, generator=g))


def _check_codes(ours: np.ndarray, theirs: np.ndarray, latents: torch.Tensor, codebook: torch.Tensor) -> None:
    """Codes equal except at near-ties: positions whose two codes' float64 distances differ by < 1e-5."""
    if (ours == theirs).all():
        return
    e = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    d = torch.cdist(e, codebook.double()).pow(2)
    o, t = torch.from_numpy(ours.reshape(-1)), torch.from_numpy(theirs.reshape(-1))
    bad = (o != t).nonzero().squeeze(1)
    gaps = (d[bad, o[bad]] - d[bad, t[bad]]).abs()
    assert (gaps < 1e-5).all(), f"{len(bad)} codes differ, gaps {gaps.tolist()[:5]}"


def _uint8_photos(photos, size: int = 64) -> np.ndarray:
    """uint8 [2, size, size, 3]: what the ONNX graphs and the server take (`_photos` is the same in [-1, 1])."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
                     for p in photos[:2]])


@pytest.fixture(scope="module")
def diffusers_models(photos, tmp_path_factory):
    """name → (imported folder, import report, reference outputs computed by diffusers itself)."""
    out = {}
    for name, kwargs in DIFFUSERS_CONFIGS.items():
        tmp = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        vq = diffusers.VQModel(**kwargs).eval()
        _perturb(vq, 1)
        x = _photos(photos)
        with torch.no_grad():
            _calibrate_codebook(vq.quantize.embedding.weight, vq.encode(x).latents, 2)
            h = vq.encode(x).latents                                           # quant_conv output
            _, _, (_, _, idx) = vq.quantize(h)
            codes = idx.view(h.shape[0], h.shape[2], h.shape[3])
            z = vq.quantize.embedding.weight[codes].permute(0, 3, 1, 2)
            # decode in float64: fp32 rounding differs between kernels (diffusers' attention vs ours, AVX2 vs
            # AMX; up to 1.1e-4 on a 2.6-peak output), float64 leaves only a formula difference visible
            recon = copy.deepcopy(vq).double().decode(z.double(), force_not_quantize=True).sample
        vq.save_pretrained(tmp / "src")
        report = import_checkpoint("diffusers", tmp / "src", tmp / "out")
        ref = {"x": x, "images": _uint8_photos(photos), "latents": h, "codes": codes, "recon": recon,
               "codebook": vq.quantize.embedding.weight.detach().clone()}
        out[name] = (tmp / "out", report, ref)
    return out


@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_diffusers_vqmodel_import_parity(name, diffusers_models):
    d, report, ref = diffusers_models[name]
    x, h, codes = ref["x"], ref["latents"], ref["codes"]
    assert report.source_sha256 in (d / "README.md").read_text()
    model = Tokenizer.from_pretrained(d)
    with torch.no_grad():
        ours = model.encode(x).numpy()
        np.testing.assert_allclose(model.quant_proj(model.encoder(x)).numpy(), h.numpy(), atol=1e-4, rtol=0)
        model.double()
        ours_recon = model.decoder(model.post_quant_proj(model.quantizer.embed(codes).double()))
    _check_codes(ours, codes.numpy(), h, ref["codebook"])
    assert len(np.unique(codes.numpy())) > 4  # the comparison is not between constant code maps
    assert float((ours_recon - ref["recon"]).abs().max()) <= 1e-9


def _want_pixels(ref) -> np.ndarray:
    return to_uint8(ref["recon"]).numpy()  # diffusers' reconstruction, rounded as vqtok rounds its own


@pytest.mark.parametrize("name", list(DIFFUSERS_CONFIGS))
def test_diffusers_vqmodel_parity_through_onnx(name, diffusers_models):
    """The exported graphs of an imported VQModel against diffusers: codes ≥ 99.9 %, decoder ≤ 1 grey level."""
    from vqtok.export.onnx import export_model
    from vqtok.export.runtime import OnnxTokenizer

    d, report, ref = diffusers_models[name]
    export_model(d)
    tok = OnnxTokenizer.from_pretrained(d, threads=1)
    assert tok.metadata.codebook_sha256 == report.codebook_sha256
    codes = tok.encode_array(ref["images"])
    assert (codes == ref["codes"].numpy()).mean() >= 0.999
    ours = tok.decode(ref["codes"].numpy())
    assert int(np.abs(ours.astype(int) - _want_pixels(ref).astype(int)).max()) <= 1


def test_diffusers_vqmodels_through_vqtok_serve(diffusers_models, tmp_path):
    """All three imported VQModels behind one server: /v1/encode codes and /v1/decode pixels match diffusers."""
    from vqtok.export.onnx import export_model

    models = tmp_path / "models"
    for d, _, _ in diffusers_models.values():
        if not (d / "encoder.onnx").is_file():
            export_model(d)
    for name, (d, _, _) in diffusers_models.items():
        shutil.copytree(d, models / name)
    args = ["--models-dir", str(models), "--threads", "1", "--max-batch-size", "2"]
    with LiveServer(args, log=tmp_path / "serve.log") as srv, httpx.Client(base_url=srv.url, timeout=600) as c:
        for name, (_, report, ref) in diffusers_models.items():
            want = _want_pixels(ref)
            for i in range(len(ref["images"])):
                r = c.post("/v1/encode", files={"image": ("x.png", png(ref["images"][i]), "image/png")},
                           data={"model": name, "policy": "native"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["codebook_sha256"] == report.codebook_sha256
                assert (np.array(body["codes"]) == ref["codes"][i].numpy()).mean() >= 0.999
                r = c.post("/v1/decode", json={"codes": ref["codes"][i].tolist(), "model": name})
                assert r.status_code == 200, r.text
                img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
                assert int(np.abs(img.astype(int) - want[i].astype(int)).max()) <= 1


def test_diffusers_pre_0_14_attention_names_are_read(photos, tmp_path):
    """Folders saved by old diffusers name the attention projections query/key/value/proj_attn."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    vq = diffusers.VQModel(**DIFFUSERS_CONFIGS["attention"]).eval()
    vq.save_pretrained(tmp_path / "src")
    f = tmp_path / "src" / "diffusion_pytorch_model.safetensors"
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {next((k.replace(f".{a}.", f".{b}.") for a, b in old.items() if f".{a}." in k), k): v
          for k, v in load_file(str(f)).items()}
    assert any(".proj_attn." in k for k in sd)
    save_file(sd, str(f))
    import_checkpoint("diffusers", tmp_path / "src", tmp_path / "out")
    x = _photos(photos, 32)
    with torch.no_grad():
        want = vq.encode(x).latents
        got = Tokenizer.from_pretrained(tmp_path / "out")
        np.testing.assert_allclose(got.quant_proj(got.encoder(x)).numpy(), want.numpy(), atol=1e-4, rtol=0)


def test_unsupported_diffusers_configs_are_named(tmp_path):
    from vqtok.tokenizer.importers import diffusers_config

    base = DIFFUSERS_CONFIGS["attention"]
    with pytest.raises(ValueError, match="spatial"):
        diffusers_config(base | {"norm_type": "spatial"})
    with pytest.raises(ValueError, match="multiple of the first"):
        diffusers_config(base | {"block_out_channels": [32, 48]})


def test_stock_llamagen_vq8_key_list_has_the_nin_shortcuts_of_its_readme():
    """A stock LlamaGen VQ_8 has 300 keys: 299 model tensors + the codebook_used buffer, with nin_shortcut at
    {encoder,decoder}.conv_blocks.{1,3}.res.0 (tests/fixtures/thirdparty: meta.json key_check)."""
    names = [n for ns in key_map(preset_config("llamagen-vq8"), "llamagen").values() for n in ns]
    assert len(names) + 1 == 300
    assert sorted(n for n in names if "nin_shortcut" in n) == sorted(
        f"{p}.conv_blocks.{i}.res.0.nin_shortcut.{w}" for p in ("encoder", "decoder") for i in (1, 3)
        for w in ("weight", "bias"))


def _width_changing(fmt: str):
    if fmt == "llamagen":
        args = {"ch": 32, "encoder_ch_mult": [1, 2, 1], "decoder_ch_mult": [1, 2, 2], "num_res_blocks": 1,
                "z_channels": 32, "codebook_size": 64, "codebook_embed_dim": 8, "codebook_l2_norm": True}
        return llamagen_config(args), args
    params = {"embed_dim": 16, "n_embed": 64, "ddconfig": {
        "double_z": False, "z_channels": 32, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 2, 1], "num_res_blocks": 1, "attn_resolutions": [32], "dropout": 0.0}}
    return taming_config(params), {"model": {"target": "taming.models.vqgan.VQModel", "params": params}}


@pytest.mark.parametrize("fmt", ["llamagen", "taming"])
def test_width_changing_original_layout_round_trip(fmt, photos, tmp_path):
    cfg, native_cfg = _width_changing(fmt)
    torch.manual_seed(3)
    model = Tokenizer(cfg).eval()
    _perturb(model, 4)
    sd = to_source(model, fmt)
    # 1×1 shortcuts (weight + bias) where a level's first block changes width: encoder 32→64→32 (both), decoder
    # taming 32→64→32 (both), LlamaGen decoder_ch_mult [1, 2, 2]: 64→32 only.
    assert sum("nin_shortcut" in k for k in sd) == (6 if fmt == "llamagen" else 8)
    if fmt == "llamagen":
        sd["quantize.codebook_used"] = torch.zeros(65536)
        ckpt = {"model": sd, "optimizer": {}, "steps": 1, "args": argparse.Namespace(vq_model="VQ-8")}
        (tmp_path / "args.json").write_text(json.dumps(native_cfg))
        config = tmp_path / "args.json"
    else:
        sd["loss.discriminator.main.0.weight"] = torch.zeros(1)
        ckpt = {"epoch": 1, "global_step": 2, "state_dict": sd}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(native_cfg))
        config = tmp_path / "config.yaml"
    torch.save(ckpt, tmp_path / "src.pt")
    import_checkpoint(fmt, tmp_path / "src.pt", tmp_path / "out", config=config)
    back = Tokenizer.from_pretrained(tmp_path / "out")
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = _photos(photos, 32)
    assert torch.equal(model.encode(x), back.encode(x))


def test_width_changing_taming_layout_matches_diffusers_implementation(photos):
    """The same weights in diffusers' layout, run by diffusers: an independent implementation of the width
    changes (nin_shortcut ≡ conv_shortcut), asymmetric downsampling and level attention."""
    cfg, native = _width_changing("taming")
    dd = native["model"]["params"]["ddconfig"]
    torch.manual_seed(5)
    model = Tokenizer(cfg).eval()
    _perturb(model, 6)
    widths = [dd["ch"] * m for m in dd["ch_mult"]]
    attn = [i in cfg.attn_levels for i in range(len(widths))]
    vq = diffusers.VQModel(
        down_block_types=["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
        up_block_types=["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in attn[::-1]],
        block_out_channels=widths, layers_per_block=dd["num_res_blocks"], latent_channels=dd["z_channels"],
        vq_embed_dim=cfg.code_dim, num_vq_embeddings=cfg.codebook_size).eval()
    vq.load_state_dict(to_source(model, "diffusers"), strict=True)
    x = _photos(photos, 32)
    with torch.no_grad():
        codes = model.encode(x)
        np.testing.assert_allclose(vq.encode(x).latents.numpy(), model.quant_proj(model.encoder(x)).numpy(),
                                   atol=1e-4, rtol=0)
        z = model.quantizer.embed(codes)
        theirs = vq.decode(z, force_not_quantize=True).sample
        ours = model.decoder(model.post_quant_proj(z))
    assert float((ours - theirs).abs().max()) <= 1e-4
