"""A null tokenizer: an ONNX graph pair with a real tokenizer's exact I/O contract and almost no compute.

    python -m bench.null_model DEST_DIR [--id null-f8-k1024]

Serving it measures everything a request costs except inference (bench/overhead.py). The encoder samples one
pixel per f×f patch (a strided Slice), scores its colour against the first `SEARCH` entries of a fixed [K, 3]
codebook and takes the best match (ArgMax): uint8 [B, H, W, 3] → int32 [B, H/f, W/f], codes in [0, K). (Pooling
and a search over all K = 1024 entries cost 12 ms per 256² image on this machine; this costs well under 1 ms.) The decoder looks each code's colour up and repeats it over f×f pixels:
int32 [B, h, w] → uint8 [B, h·f, w·f, 3]. The metadata is written by `export.onnx.metadata` (the same function
as for a real export) from the null model's config and codebook, so the registry, runtime and server treat the
folder like any exported model. Bench/test only: never shipped in weights/.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
SEARCH = 16  # codebook entries the encoder searches


def codebook(codebook_size: int) -> np.ndarray:
    """A fixed float32 [K, 3] codebook: K colours spread over the RGB cube (deterministic)."""
    return np.random.default_rng(0).uniform(-1, 1, (codebook_size, 3)).astype(np.float32)


def _save(graph: onnx.GraphProto, path: Path, meta: dict[str, str]) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vqtok-null")
    model.ir_version = 9  # readable by every ONNX Runtime the project supports
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def encoder_graph(factor: int, book: np.ndarray) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Slice", ["images", "starts", "ends", "axes", "steps"], ["sampled"]),  # [B, h, w, 3]
        helper.make_node("Cast", ["sampled"], ["nhwc"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["nhwc", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["centred"]),  # [0, 255] → [-1, 1], as the real encoders do
        helper.make_node("MatMul", ["centred", "book_t"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["idx"], axis=-1, keepdims=0),
        helper.make_node("Cast", ["idx"], ["codes"], to=TensorProto.INT32),
    ]
    inits = [numpy_helper.from_array(book[:SEARCH].T.copy(), "book_t"),
             numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
             numpy_helper.from_array(np.array([2**62, 2**62], np.int64), "ends"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
             numpy_helper.from_array(np.array([factor, factor], np.int64), "steps"),
             numpy_helper.from_array(np.array(2 / 255, np.float32), "scale"),
             numpy_helper.from_array(np.array(1, np.float32), "one")]
    return helper.make_graph(nodes, "null_encoder",
                             [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", "height", "width", 3])],
                             [helper.make_tensor_value_info("codes", TensorProto.INT32, ["batch", "h", "w"])], inits)


def decoder_graph(factor: int, book: np.ndarray) -> onnx.GraphProto:
    colours = np.round((book + 1) * 127.5).clip(0, 255).astype(np.uint8)
    nodes = [
        helper.make_node("Gather", ["colours", "codes"], ["rgb"], axis=0),  # uint8 [B, h, w, 3]
        helper.make_node("Resize", ["rgb", "", "scales"], ["images"], mode="nearest"),  # each code → f×f pixels
    ]
    inits = [numpy_helper.from_array(colours, "colours"),
             numpy_helper.from_array(np.array([1, factor, factor, 1], np.float32), "scales")]
    return helper.make_graph(nodes, "null_decoder",
                             [helper.make_tensor_value_info("codes", TensorProto.INT32, ["batch", "h", "w"])],
                             [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", "height", "width", 3])],
                             inits)


def build(dest: str | Path, model_id: str = "null-f8-k1024", factor: int = 8, codebook_size: int = 1024,
          image_size: int = 256) -> Path:
    """Write `<dest>/<model_id>/{encoder,decoder}.onnx` and return the model folder (no weights: ONNX only)."""
    from vqtok.export.onnx import metadata
    from vqtok.tokenizer.hub import codebook_sha256

    book = codebook(codebook_size)
    config = {"model_id": model_id, "factor": factor, "codebook_size": codebook_size, "code_dim": 3,
              "normalize_codes": False, "image_size": image_size, "origin": ""}
    model = SimpleNamespace(config=SimpleNamespace(**config), codebook_sha256=lambda: codebook_sha256(book))
    out = Path(dest) / model_id
    out.mkdir(parents=True, exist_ok=True)
    for graph, proto in (("encoder", encoder_graph(factor, book)), ("decoder", decoder_graph(factor, book))):
        _save(proto, out / f"{graph}.onnx", metadata(model, model_id, "fp32", OPSET, 4 * image_size, graph))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest")
    ap.add_argument("--id", default="null-f8-k1024")
    args = ap.parse_args(argv)
    print(build(args.dest, args.id))


if __name__ == "__main__":
    main()
