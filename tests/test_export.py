"""Torch → ONNX export: dynamic shapes, metadata, parity with PyTorch eval, fp16 variant, committed graphs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.onnx import export_model, read_metadata
from export.runtime import OnnxTokenizer
from tokenizer.hub import WEIGHTS_DIR, list_models, read_codebook_sha256
from tokenizer.model import Tokenizer, TokenizerConfig, to_model_range, to_uint8

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny-model"
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


def small_config(**kw) -> TokenizerConfig:
    base = dict(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, latent_channels=8, codebook_size=64,
                code_dim=4, image_size=32, model_id="small-random")
    return TokenizerConfig(**(base | kw))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Tokenizer, Path]:
    torch.manual_seed(1)
    model = Tokenizer(small_config()).eval()
    out = tmp_path_factory.mktemp("small")
    model.save_pretrained(out)
    export_model(out, fp16=True, optimize=True)  # default out_dir: the model's folder
    return model, out


def torch_codes(model: Tokenizer, images: np.ndarray) -> np.ndarray:
    return model.encode(to_model_range(torch.from_numpy(images))).numpy()


def torch_images(model: Tokenizer, codes: np.ndarray) -> np.ndarray:
    return to_uint8(model.decode(torch.from_numpy(codes).long())).numpy()


def test_files_checker_and_metadata(exported):
    model, out = exported
    names = {p.name for p in out.glob("*.onnx")}
    assert names == {"encoder.onnx", "decoder.onnx", "encoder.fp16.onnx", "decoder.fp16.onnx",
                     "encoder.cpu-opt.onnx", "decoder.cpu-opt.onnx"}
    for name in names:
        proto = onnx.load(str(out / name))
        if "cpu-opt" not in name:  # the ORT-optimised copies hold ORT contrib ops the checker does not know
            onnx.checker.check_model(proto, full_check=True)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["codebook_sha256"] == model.codebook_sha256() == read_codebook_sha256(out)
        assert (meta["model_id"], meta["factor"], meta["codebook_size"], meta["code_dim"]) == ("small-random", "4",
                                                                                               "64", "4")
        assert meta["code_dtype"] == "int32" and meta["input_layout"] == "NHWC" and meta["opset"] == "18"
        assert meta["precision"] == ("fp16" if "fp16" in name else "fp32")
        for key in ("vqtok_version", "torch_version", "onnx_version", "max_side", "input_range", "output_range"):
            assert meta[key]


def test_graph_io_types(exported):
    _, out = exported
    enc, dec = onnx.load(str(out / "encoder.onnx")), onnx.load(str(out / "decoder.onnx"))

    def sig(vi):
        t = vi.type.tensor_type
        return vi.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]

    u8, i32 = onnx.TensorProto.UINT8, onnx.TensorProto.INT32
    assert sig(enc.graph.input[0]) == ("images", u8, ["batch", "height", "width", 3])
    assert sig(enc.graph.output[0]) == ("codes", i32, ["batch", "h", "w"])
    assert sig(dec.graph.input[0]) == ("codes", i32, ["batch", "h", "w"])
    assert sig(dec.graph.output[0]) == ("images", u8, ["batch", "height", "width", 3])


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 16, 40), (2, 4, 4), (1, 64, 8)])
def test_dynamic_shapes_match_torch(exported, shape):
    """Any batch and any H, W multiple of f (none of them the export example's 2×16×24)."""
    model, out = exported
    tok = OnnxTokenizer.from_dir(out, threads=1)
    b, h, w = shape
    images = np.random.default_rng(0).integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    codes = tok.encode_array(images)
    ref = torch_codes(model, images)
    assert codes.shape == ref.shape == (b, h // 4, w // 4)
    assert (codes == ref).mean() >= 0.99  # random weights: near-ties are rare but possible
    decoded = tok.decode(ref)
    assert decoded.shape == (b, h, w, 3)
    assert np.abs(decoded.astype(int) - torch_images(model, ref)).max() <= 1


def test_fixture_graphs_match_fixture_weights():
    """The committed tiny fixture: graph metadata carries the weights' codebook sha256, and a spot check agrees."""
    assert read_metadata(TINY / "encoder.onnx")["codebook_sha256"] == read_codebook_sha256(TINY)
    _check_committed(TINY)


def _check_committed(model_dir: Path) -> None:
    sha = read_codebook_sha256(model_dir)
    for name in ("encoder.onnx", "decoder.onnx"):
        assert read_metadata(model_dir / name)["codebook_sha256"] == sha, (
            f"{model_dir / name} was exported from other weights; run `vqtok export {model_dir}`")
    model = Tokenizer.from_pretrained(model_dir)
    tok = OnnxTokenizer.from_dir(model_dir, optimized=False, threads=1)
    batch, _ = tok.prepare(PHOTOS[:2])
    codes = tok.encode_array(batch)
    assert (codes == torch_codes(model, batch)).mean() >= 0.99
    assert np.abs(tok.decode(codes).astype(int) - torch_images(model, codes)).max() <= 1


@pytest.mark.parametrize("model_id", list_models() or [pytest.param("none", marks=pytest.mark.skip(
    reason=f"no shipped models under {WEIGHTS_DIR}"))])
def test_shipped_graphs_match_weights(model_id):
    d = WEIGHTS_DIR / model_id
    if not (d / "model.safetensors").is_file() or not (d / "encoder.onnx").is_file():
        pytest.skip(f"{d} lacks model.safetensors or encoder.onnx")
    _check_committed(d)


def test_fixture_config_is_tiny():
    cfg = json.loads((TINY / "config.json").read_text())
    assert cfg["model_id"] == "tiny-test" and cfg["factor"] == 4
    assert sum(p.stat().st_size for p in TINY.iterdir()) < 1_000_000
