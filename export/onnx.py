"""Torch → ONNX: the encoder and decoder graphs of a `Tokenizer`, their metadata, an fp16 variant and an
ONNX Runtime offline-optimised CPU copy. Parity checks and reports live in `export.verify`.

Graphs (the contract in docs/ARCHITECTURE.md):
- encoder.onnx: `images` uint8 [B, H, W, 3] → `codes` int32 [B, H/f, W/f]; scaling to [-1, 1] is inside.
- decoder.onnx: `codes` int32 [B, h, w] → `images` uint8 [B, h·f, w·f, 3]; clamp and round are inside.
B, H and W are dynamic (H and W any multiple of f up to `max_side`, which the runtime enforces: attention at the
lowest resolution is quadratic in h·w, so the limit is about memory, not correctness).
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer.model import AttnBlock, Tokenizer

ENCODER, DECODER = "encoder.onnx", "decoder.onnx"
DEFAULT_OPSET = 18
EPS = 1e-6  # same eps as tokenizer.quantizer


def graph_files(precision: str = "fp32", optimized: bool = False) -> tuple[str, str]:
    """File names of the encoder and decoder graphs for a precision ('fp32' | 'fp16'), plain or ORT-optimised."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    suffix = ("" if precision == "fp32" else ".fp16") + (".cpu-opt" if optimized else "") + ".onnx"
    return "encoder" + suffix, "decoder" + suffix


def default_max_side(image_size: int, factor: int) -> int:
    """Largest H or W the graphs are documented for: 4× the training size (1024 for a 256² model)."""
    return max(4 * image_size, 32 * factor)


# -- graph modules ---------------------------------------------------------------------------------------------
class _Fp32(nn.Module):
    """Runs the wrapped module in fp32 and casts back: for ops that overflow or lose too much in fp16
    (GroupNorm's variance, attention scores)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


def _keep_fp32(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (nn.GroupNorm, AttnBlock)):
            setattr(module, name, _Fp32(child))
        else:
            _keep_fp32(child)


def _half_net(net: nn.Module) -> nn.Module:
    """fp16 copy of an encoder/decoder trunk with GroupNorm and attention kept in fp32."""
    net = copy.deepcopy(net).half()
    _keep_fp32(net)
    return net


class EncoderGraph(nn.Module):
    """uint8 NHWC images → int32 codes. The nearest-code search (distances, argmin) is always fp32."""

    def __init__(self, model: Tokenizer, precision: str = "fp32"):
        super().__init__()
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.encoder = _half_net(model.encoder) if precision == "fp16" else model.encoder
        self.quant_proj = model.quant_proj  # stays fp32: input to the fp32 search
        self.normalize = model.config.normalize_codes
        table = model.quantizer.lookup_table().detach().float()                    # [K, d]
        self.register_buffer("table_t", table.t().contiguous())                    # [d, K]
        self.register_buffer("table_sq", (table * table).sum(-1))                  # [K]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0             # [B, 3, H, W] in [-1, 1]
        z = self.quant_proj(self.encoder(x).float()).permute(0, 2, 3, 1)           # [B, h, w, d] fp32
        if self.normalize:
            z = F.normalize(z, dim=-1, eps=EPS)
        dist = self.table_sq - 2 * z @ self.table_t                                # [B, h, w, K], as quantizer.nearest
        return dist.argmin(dim=-1).to(torch.int32)


class DecoderGraph(nn.Module):
    """int32 codes → uint8 NHWC images, rounded like `tokenizer.model.to_uint8`."""

    def __init__(self, model: Tokenizer, precision: str = "fp32"):
        super().__init__()
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.register_buffer("table", model.quantizer.lookup_table().detach().float())  # [K, d]
        self.post_quant_proj = model.post_quant_proj
        self.decoder = _half_net(model.decoder) if precision == "fp16" else model.decoder

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        z = F.embedding(codes, self.table).permute(0, 3, 1, 2)                     # [B, d, h, w]
        x = self.decoder(self.post_quant_proj(z).to(self.dtype)).float()           # [B, 3, H, W]
        x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
        return x.to(torch.uint8).permute(0, 2, 3, 1)


# -- export ----------------------------------------------------------------------------------------------------
def _load(model_or_dir: Tokenizer | str | Path) -> tuple[Tokenizer, str]:
    if isinstance(model_or_dir, Tokenizer):
        return model_or_dir.eval(), model_or_dir.config.model_id or "unnamed"
    from tokenizer.hub import resolve_model_dir

    directory = resolve_model_dir(model_or_dir)
    model = Tokenizer.from_pretrained(directory)
    return model, model.config.model_id or directory.name


def metadata(model: Tokenizer, model_id: str, precision: str, opset: int, max_side: int) -> dict[str, str]:
    """The metadata_props both graphs carry (keys listed in docs/ARCHITECTURE.md)."""
    from vqtok import __version__

    cfg = model.config
    return {
        "model_id": model_id,
        "factor": str(cfg.factor),
        "codebook_size": str(cfg.codebook_size),
        "code_dim": str(cfg.code_dim),
        "normalize_codes": str(cfg.normalize_codes).lower(),
        "image_size": str(cfg.image_size),
        "max_side": str(max_side),
        "codebook_sha256": model.codebook_sha256(),
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "input_range": "[0, 255]",
        "output_layout": "NHWC",
        "output_dtype": "uint8",
        "output_range": "[0, 255]",
        "code_dtype": "int32",
        "code_layout": "[B, h, w] row-major grid, raster order",
        "precision": precision,
        "vqtok_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "opset": str(opset),
    }


def _rename_dims(proto: onnx.ModelProto, names: dict[str, list[str]]) -> None:
    """Readable names for the dynamic dims of the graph inputs/outputs (the exporter writes 's39', '4*h')."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for dim, name in zip(vi.type.tensor_type.shape.dim, names.get(vi.name, [])):
            if name and not dim.HasField("dim_value"):
                dim.dim_param = name


def _export_one(module: nn.Module, example: torch.Tensor, path: Path, in_name: str, out_name: str,
                dims: dict[str, list[str]], meta: dict[str, str], opset: int, factor: int, max_side: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    h = torch.export.Dim("h", min=1, max=max_side // factor)
    w = torch.export.Dim("w", min=1, max=max_side // factor)
    spatial = {1: factor * h, 2: factor * w} if in_name == "images" else {1: h, 2: w}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's FutureWarnings say nothing about this graph
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, verbose=False,
                                    input_names=[in_name], output_names=[out_name],
                                    dynamic_shapes={in_name: {0: batch, **spatial}})
    proto = program.model_proto
    for node in proto.graph.node:  # per-node stack traces: most of the file size, and they leak local paths
        del node.metadata_props[:]
        node.doc_string = ""
    _rename_dims(proto, dims)
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


@torch.no_grad()
def export_model(model_or_dir: Tokenizer | str | Path, out_dir: str | Path | None = None, *, fp16: bool = False,
                 opset: int = DEFAULT_OPSET, max_side: int | None = None, optimize: bool = False) -> list[Path]:
    """Write encoder.onnx and decoder.onnx (and with `fp16` the .fp16 pair, with `optimize` ORT-optimised CPU
    copies of the fp32 pair) into `out_dir` (default: the model's own folder). Returns the paths written."""
    model, model_id = _load(model_or_dir)
    if out_dir is None:
        if not isinstance(model_or_dir, (str, Path)):
            raise ValueError("pass out_dir when exporting an in-memory model")
        from tokenizer.hub import resolve_model_dir

        out_dir = resolve_model_dir(model_or_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = model.config.factor
    max_side = max_side or default_max_side(model.config.image_size, f)
    if max_side % f:
        raise ValueError(f"max_side {max_side} must be a multiple of the factor {f}")
    # Example sizes differ in H and W (and from 1) so the exporter cannot specialise either dim.
    images = torch.randint(0, 256, (2, 4 * f, 6 * f, 3), dtype=torch.uint8)
    codes = torch.randint(0, model.config.codebook_size, (2, 4, 6), dtype=torch.int32)
    written: list[Path] = []
    for precision in ("fp32", "fp16") if fp16 else ("fp32",):
        meta = metadata(model, model_id, precision, opset, max_side)
        enc_name, dec_name = graph_files(precision)
        _export_one(EncoderGraph(model, precision).eval(), images, out / enc_name, "images", "codes",
                    {"images": ["batch", "height", "width"], "codes": ["batch", "h", "w"]}, meta, opset, f, max_side)
        _export_one(DecoderGraph(model, precision).eval(), codes, out / dec_name, "codes", "images",
                    {"codes": ["batch", "h", "w"], "images": ["batch", "height", "width"]}, meta, opset, f, max_side)
        written += [out / enc_name, out / dec_name]
        if optimize and precision == "fp32":  # fp16 is for GPUs; the CPU copy is fp32 only
            written += [optimize_for_cpu(out / enc_name), optimize_for_cpu(out / dec_name)]
    return written


def optimize_for_cpu(path: str | Path) -> Path:
    """ONNX Runtime offline-optimised copy (`*.cpu-opt.onnx`) for the CPU provider.

    Level EXTENDED, not ALL: ALL adds layout transforms tied to this machine's instruction set, which ORT's docs
    say must not be saved for other hardware. The runtime still applies ALL on top when it loads the copy.
    """
    import onnxruntime as ort

    path = Path(path)
    target = path.with_name(path.name.removesuffix(".onnx") + ".cpu-opt.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    # ORT writes the graph but not always our metadata: copy it over, marked as optimised.
    src, opt = onnx.load(str(path)), onnx.load(str(target))
    meta = {p.key: p.value for p in src.metadata_props} | {"ort_optimized": "cpu-extended"}
    del opt.metadata_props[:]
    onnx.helper.set_model_props(opt, meta)
    onnx.save(opt, str(target))
    return target


def read_metadata(path: str | Path) -> dict[str, str]:
    m = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def graph_matches_weights(model_dir: str | Path) -> bool:
    """True when the committed graphs in `model_dir` carry the codebook sha256 of its model.safetensors."""
    from tokenizer.hub import read_codebook_sha256

    d = Path(model_dir)
    sha = read_codebook_sha256(d)
    return all(read_metadata(d / n).get("codebook_sha256") == sha for n in (ENCODER, DECODER))


def as_numpy_codes(model: Tokenizer, images_uint8: np.ndarray) -> np.ndarray:
    """PyTorch reference codes for uint8 [B, H, W, 3] images (the eval path the graphs must match)."""
    from tokenizer.model import to_model_range

    return model.encode(to_model_range(torch.from_numpy(np.ascontiguousarray(images_uint8)))).numpy()
