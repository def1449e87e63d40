"""Tokenizer model: save/load round trip, code range and dtype, shapes, deterministic fp32 encode, input checks,
and model-id resolution."""
from __future__ import annotations

import json

import pytest
import torch

import vqtok.tokenizer.hub as hub
from vqtok.tokenizer.model import Tokenizer, TokenizerConfig, to_model_range, to_uint8


def make_model(cfg: dict, seed: int = 0, **kw) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer(TokenizerConfig.from_dict(cfg | kw)).eval()


def images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_save_load_round_trip_is_bit_exact(tmp_path, tiny_config, update):
    model = make_model(tiny_config, codebook_update=update, gradient="ste")
    with torch.no_grad():  # make every tensor non-default so a skipped load could not pass by accident
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    loaded = Tokenizer.from_pretrained(out)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.config.to_dict() == model.config.to_dict()
    assert json.loads((out / "config.json").read_text())["factor"] == model.factor
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert loaded.codebook_sha256() == model.codebook_sha256()
    assert loaded.codebook_sha256() == hub.read_codebook_sha256(out)

    x = images(2, 32, 32)
    assert torch.equal(model.encode(x), loaded.encode(x))
    codes = model.encode(x)
    assert torch.equal(model.decode(codes), loaded.decode(codes))


def test_codebook_sha256_is_little_endian_float32_of_the_codebook(tiny_config):
    import hashlib

    model = make_model(tiny_config)
    cb = model.quantizer.codebook.detach().numpy().astype("<f4")
    assert model.codebook_sha256() == hashlib.sha256(cb.tobytes()).hexdigest()
    with torch.no_grad():
        model.quantizer.codebook[0, 0] += 1.0
    assert model.codebook_sha256() != hashlib.sha256(cb.tobytes()).hexdigest()


@pytest.mark.parametrize("channel_mult,factor", [((1, 2, 2, 2), 8), ((1, 1, 2, 2, 2), 16)])
@pytest.mark.parametrize("hw", [(32, 32), (32, 64), (48, 16)])
def test_shapes_and_code_range(tiny_config, channel_mult, factor, hw):
    model = make_model(tiny_config, channel_mult=channel_mult, image_size=32 if factor <= 32 else factor)
    assert model.factor == model.config.factor == factor
    h, w = hw
    x = images(2, h, w)
    codes = model.encode(x)
    assert codes.dtype == torch.int64
    assert codes.shape == (2, h // factor, w // factor)
    assert int(codes.min()) >= 0 and int(codes.max()) < model.config.codebook_size
    rec = model.decode(codes)
    assert rec.shape == (2, 3, h, w) and rec.dtype == torch.float32
    assert float(rec.min()) >= -1 and float(rec.max()) <= 1
    recon, aux = model.train()(x)
    assert recon.shape == x.shape and aux["codes"].shape == codes.shape


def test_eval_encode_is_deterministic_and_fp32_under_autocast(tiny_config):
    model = make_model(tiny_config)
    x = images(4, 32, 48, seed=1)
    ref = model.encode(x)
    assert torch.equal(model.encode(x), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = model.encode(x)
    assert under.dtype == torch.int64
    assert torch.equal(under, ref)

    # The distance itself runs in fp32 even when autocast is on around the quantizer alone.
    e = torch.nn.functional.normalize(torch.randn(500, tiny_config["code_dim"]), dim=-1)
    plain = model.quantizer.nearest(e)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model.quantizer.nearest(e)
    assert torch.equal(plain, auto)


def test_decode_rejects_out_of_range_codes(tiny_config):
    model = make_model(tiny_config)
    k = model.config.codebook_size
    ok = torch.zeros(1, 4, 4, dtype=torch.int64)
    model.decode(ok)
    for bad in (k, k + 5, -1):
        codes = ok.clone()
        codes[0, 1, 2] = bad
        with pytest.raises(ValueError, match=r"\[0, 32\)"):
            model.decode(codes)
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        model.decode(torch.zeros(4, 4, dtype=torch.int64))
    # int32 codes (what the ONNX graphs use) decode the same as int64.
    codes = torch.randint(0, k, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.decode(codes), model.decode(codes.int()))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 32, 32), (1, 4, 32, 32), (1, 3, 31, 32), (1, 3, 32, 33)])
def test_input_shape_errors_are_clear(tiny_config, shape):
    model = make_model(tiny_config)
    x = torch.zeros(*shape)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\].*multiples of 2"):
        model.encode(x)
    with pytest.raises(ValueError, match=r"expected images"):
        model(x)


def test_config_validation():
    with pytest.raises(ValueError):
        TokenizerConfig(gradient="nope")
    with pytest.raises(ValueError):
        TokenizerConfig(channel_mult=(1, 2, 2, 2), image_size=36)  # not a multiple of f = 8
    cfg = TokenizerConfig.from_dict({"channel_mult": [1, 2], "factor": 2})
    assert cfg.channel_mult == (1, 2) and cfg.factor == 2
    with pytest.raises(ValueError, match=r"unknown model options \['unknown_key'\]"):
        TokenizerConfig.from_dict({"channel_mult": [1, 2], "unknown_key": 1})


def test_uint8_model_range_round_trip():
    u8 = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = to_model_range(u8)
    assert x.shape == (2, 3, 5, 7) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(to_uint8(x), u8)


@pytest.fixture
def weights_dir(tmp_path, tiny_config, monkeypatch):
    root = tmp_path / "weights"
    for mid in ("alpha-f2", "beta-f2"):
        make_model(tiny_config, model_id=mid).save_pretrained(root / mid)
    monkeypatch.setattr(hub, "WEIGHTS_DIR", root)
    return root


def test_from_pretrained_by_id(weights_dir):
    model = Tokenizer.from_pretrained("beta-f2")
    assert model.config.model_id == "beta-f2"
    assert hub.list_models() == ["alpha-f2", "beta-f2"]


def test_from_pretrained_unknown_id_lists_shipped_ids(weights_dir):
    with pytest.raises(FileNotFoundError) as err:
        Tokenizer.from_pretrained("gamma-f2")
    msg = str(err.value)
    assert "gamma-f2" in msg and "alpha-f2" in msg and "beta-f2" in msg


def test_model_id_is_never_a_path_traversal(weights_dir, tmp_path, tiny_config, monkeypatch):
    # A loadable model right beside the weights folder: "../outside" from inside it would reach it.
    make_model(tiny_config, model_id="outside").save_pretrained(tmp_path / "outside")
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # so "../outside" is not an existing folder relative to the cwd either
    for name in ("../outside", "alpha-f2/../../outside", "./../outside", "../weights/alpha-f2"):
        with pytest.raises(FileNotFoundError):
            hub.resolve_model_dir(name)
        with pytest.raises(FileNotFoundError):
            Tokenizer.from_pretrained(name)
    assert not hub.is_model_id("../x") and not hub.is_model_id("a/b") and not hub.is_model_id("..")
    assert hub.is_model_id("vqtok-f8-k1024")


def test_from_pretrained_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Tokenizer.from_pretrained(tmp_path)
