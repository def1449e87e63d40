"""Torch → ONNX export: dynamic shapes, metadata, parity with PyTorch eval, fp16 variant, committed graphs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vqtok.export.onnx import export_model
from vqtok.tokenizer.contract import read_metadata
from vqtok.export.runtime import OnnxTokenizer
from vqtok.tokenizer.hub import WEIGHTS_DIR, list_models, read_codebook_sha256
from vqtok.tokenizer.model import Tokenizer, TokenizerConfig, to_model_range, to_uint8

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny-model"
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


def small_config(**kw) -> TokenizerConfig:
    base = dict(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, latent_channels=8, codebook_size=64,
                code_dim=4, image_size=32, model_id="small-random")
    return TokenizerConfig(**(base | kw))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Tokenizer, Path]:
    """A small random model exported by the CLI into its own folder, with the fp16 pair and ORT CPU copies."""
    from vqtok.cli import main

    torch.manual_seed(1)
    model = Tokenizer(small_config(model_id="")).eval()  # no id in the config: the folder name is used
    out = model.save_pretrained(tmp_path_factory.mktemp("export") / "small-random")
    assert main(["export", str(out), "--fp16", "--optimize"]) == 0
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
        assert (meta["model_id"], meta["factor"], meta["codebook_size"], meta["code_dim"]) == (
            "small-random", "4", "64", "4")
        assert meta["code_dtype"] == "int32" and meta["opset"] == "18" and meta["search_precision"] == "fp32"
        image_side = "input" if name.startswith("encoder") else "output"
        assert meta[f"{image_side}_layout"].startswith("NHWC") and meta[f"{image_side}_dtype"] == "uint8"
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
    """Any batch and any H, W multiple of f (none of them the export example's 2×16×24), plain and ORT-optimised."""
    model, out = exported
    b, h, w = shape
    images = np.random.default_rng(0).integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    ref = torch_codes(model, images)
    ref_images = torch_images(model, ref)
    for optimized in (False, True):
        tok = OnnxTokenizer.from_pretrained(out, threads=1, optimized=optimized)
        codes = tok.encode_array(images)
        assert codes.shape == ref.shape == (b, h // 4, w // 4)
        assert (codes == ref).mean() >= 0.99  # random weights: near-ties are rare but possible
        decoded = tok.decode(ref)
        assert decoded.shape == (b, h, w, 3)
        assert np.abs(decoded.astype(int) - ref_images).max() <= 1


def test_fixture_graphs_match_fixture_weights():
    """The committed tiny fixture: graph metadata carries the weights' codebook sha256, and a spot check agrees."""
    assert read_metadata(TINY / "encoder.onnx")["codebook_sha256"] == read_codebook_sha256(TINY)
    _check_committed(TINY)


def _check_committed(model_dir: Path) -> None:
    sha = read_codebook_sha256(model_dir)
    for path in sorted(model_dir.glob("*.onnx")):  # plain, fp16 and ORT-optimised graphs alike
        assert read_metadata(path)["codebook_sha256"] == sha, (
            f"{path} was exported from other weights; run `vqtok export {model_dir}`")
    model = Tokenizer.from_pretrained(model_dir)
    tok = OnnxTokenizer.from_pretrained(model_dir, optimized=False, threads=1)
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


def test_fp16_keeps_search_and_norms_in_fp32(exported):
    """In the fp16 encoder the convolutions are fp16 but ArgMin and normalisation see fp32 inputs."""
    _, out = exported
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(out / "encoder.fp16.onnx")))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    types |= {init.name: init.data_type for init in proto.graph.initializer}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    by_op: dict[str, set[int]] = {}
    for node in proto.graph.node:
        by_op.setdefault(node.op_type, set()).add(types.get(node.input[0]))
    assert by_op["ArgMin"] == {f32}
    assert by_op["InstanceNormalization"] == {f32}  # GroupNorm as the exporter decomposes it
    assert f16 in by_op["Conv"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the torch exporter's own deprecation notices
def test_fp32_group_norm_affine_is_one_batch_norm(exported):
    """fp32 graphs: GroupNorm's γ/β is one BatchNormalization (mean 0, var + eps = 1) after InstanceNormalization, not
    Mul + Add; and the rewrite leaves ONNX Runtime's output as it was (same graph with and without it; x·γ + β in
    one kernel or two may round differently, never by more than one grey level)."""
    import onnxruntime as ort

    from vqtok.export.graph_rewrite import fuse_group_norm_affine

    _, out = exported
    proto = onnx.load(str(out / "decoder.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == ops.count("InstanceNormalization") > 0
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in (n for n in proto.graph.node if n.op_type == "BatchNormalization"):
        eps = np.float32(onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "epsilon")))
        assert eps >= np.float32(1e-5)  # cuDNN's minimum: ORT's CUDA kernel would change a smaller one
        assert (inits[node.input[3]] == 0).all() and (inits[node.input[4]] + eps == np.float32(1)).all()
    assert fuse_group_norm_affine(proto) == 0  # nothing left to rewrite

    model = Tokenizer(small_config(model_id="")).eval()  # unrewritten graph: the torch exporter's own lowering
    torch.manual_seed(4)
    for p in model.parameters():  # non-trivial γ and β
        p.data.add_(0.1 * torch.randn_like(p))
    from vqtok.export.onnx import DecoderGraph

    codes = torch.randint(0, 64, (2, 6, 5), dtype=torch.int32)
    plain = torch.onnx.export(DecoderGraph(model).eval(), (codes,), dynamo=True, input_names=["codes"]).model_proto
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(plain)
    assert fuse_group_norm_affine(rewritten) == sum(isinstance(m, torch.nn.GroupNorm) for m in model.decoder.modules())
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"codes": codes.numpy()})[0]
    assert np.abs(run(plain).astype(int) - run(rewritten).astype(int)).max() <= 1


def test_verify_report_on_fixture_photos(exported):
    """All parity checks on the committed photos (S² and a non-square size), with fp16, reports written."""
    from vqtok.export.onnx import verify

    _, out = exported
    r = verify(out, PHOTOS)
    assert r["passed"], r["checks"]
    assert [c["shape"] for c in r["codes"]] == [[32, 32], [32, 48]]
    for c in r["codes"]:
        assert c["agreement"] >= 0.999 and c["all_near_ties"]
        assert c["positions"] == len(PHOTOS) * c["shape"][0] * c["shape"][1] // 16
    assert r["batch_invariance"]["agreement"] >= 0.999
    assert r["decoder"]["max_abs_diff"] <= 1
    assert r["fp16"]["code_agreement_vs_fp32"] >= 0.99 and r["fp16"]["decoder_psnr_vs_fp32_db"] > 40
    saved = json.loads((out / "parity_report.json").read_text())
    assert saved["passed"] and saved["codebook_sha256"] == r["codebook_sha256"]
    md = (out / "parity_report.md").read_text()
    assert "| codes 32×48 |" in md and "Overall: PASSED" in md


def test_verify_catches_graphs_of_other_weights(exported, tmp_path):
    """Graphs exported from different weights fail the report (so the checks can fail)."""
    from vqtok.export.onnx import verify

    _, out = exported
    torch.manual_seed(2)
    Tokenizer(small_config()).save_pretrained(tmp_path)
    r = verify(tmp_path, PHOTOS[:2], graphs_dir=out, write=False, sizes=[(32, 32)])
    assert not r["passed"] and not r["checks"]["graphs_match_weights"]
    assert not r["checks"]["code_agreement"] and not r["checks"]["decoder"]


def test_cli_verify_and_info(exported, capsys):
    """`vqtok export DIR --no-export --verify PHOTOS` reports next to the graphs; `vqtok info` shows the metadata."""
    from vqtok.cli import main

    _, out = exported
    assert main(["export", str(out), "--no-export", "--verify", str(FIXTURES / "photos"), "--split", "all",
                 "--limit", "2"]) == 0
    assert "Overall: PASSED" in capsys.readouterr().out
    assert json.loads((out / "parity_report.json").read_text())["images"] == 2
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["onnx"]["encoder.onnx"]["codebook_sha256"] == info["codebook_sha256"]
    assert info["onnx"]["decoder.onnx"]["factor"] == "4"
    assert main(["info", str(out)]) == 0
    assert "encoder.onnx metadata:" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_export_out_and_opset(tmp_path, capsys):
    """--out writes graphs (and the report) elsewhere, --opset is honoured, unnormalised codes and no attention
    export and verify, export_model takes an in-memory model."""
    from vqtok.cli import main

    torch.manual_seed(3)
    model = Tokenizer(small_config(normalize_codes=False, attn_lowest=False)).train()  # other graph branches
    src = model.save_pretrained(tmp_path / "src")
    out = tmp_path / "graphs"
    assert main(["export", str(src), "--out", str(out), "--opset", "17", "--verify", str(PHOTOS[0].parent),
                 "--limit", "2"]) == 0
    assert {p.name for p in out.iterdir()} == {"encoder.onnx", "decoder.onnx", "parity_report.json",
                                               "parity_report.md"}
    assert read_metadata(out / "decoder.onnx")["opset"] == "17"
    paths = export_model(model, tmp_path / "mem")
    assert model.training  # the caller's model is not switched to eval
    assert read_metadata(paths[0])["model_id"] == "small-random"
    assert json.loads((out / "parity_report.json").read_text())["passed"]


def test_cli_export_errors(tmp_path, capsys):
    from vqtok.cli import main

    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "no model folder" in capsys.readouterr().err
