"""Torch → ONNX: the encoder and decoder graphs of a `Tokenizer`, their metadata, an fp16 variant, an
ONNX Runtime offline-optimised CPU copy, and `verify`: parity of ONNX Runtime against PyTorch eval on real photos,
written as parity_report.json / parity_report.md next to the graphs.

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

from vqtok.export.graph_rewrite import fuse_group_norm_affine
from vqtok.tokenizer.contract import (DECODER_FILE, ENCODER_FILE, ModelMetadata, default_max_side, graph_files,
                                     optimized_name, psnr, read_metadata)
from vqtok.tokenizer.model import AttnBlock, Tokenizer
from vqtok.tokenizer.quantizer import code_distances, search_vectors

DEFAULT_OPSET = 18


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
        dist = code_distances(search_vectors(z, self.normalize), self.table_t, self.table_sq)  # [B, h, w, K]
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
    if isinstance(model_or_dir, Tokenizer):  # a CPU eval copy: the caller's model (maybe training) is untouched
        return copy.deepcopy(model_or_dir).cpu().eval(), model_or_dir.config.model_id or "unnamed"
    from vqtok.tokenizer.hub import resolve_model_dir

    directory = resolve_model_dir(model_or_dir)
    model = Tokenizer.from_pretrained(directory)
    return model, model.config.model_id or directory.name


def metadata(model: Tokenizer, model_id: str, precision: str, opset: int, max_side: int,
             graph: str = "encoder") -> dict[str, str]:
    """The metadata_props of one graph (keys listed in docs/ARCHITECTURE.md); input_*/output_* describe that
    graph's own input and output (images for one, codes for the other)."""
    from vqtok import __version__

    cfg = model.config
    images = {"layout": "NHWC [B, H, W, 3], H and W multiples of factor", "dtype": "uint8", "range": "[0, 255]"}
    codes = {"layout": "[B, h, w] row-major grid, flatten in raster order", "dtype": "int32",
             "range": f"[0, {cfg.codebook_size})"}
    inp, out = (images, codes) if graph == "encoder" else (codes, images)
    core = ModelMetadata(model_id=model_id, factor=cfg.factor, codebook_size=cfg.codebook_size, code_dim=cfg.code_dim,
                         codebook_sha256=model.codebook_sha256(), image_size=cfg.image_size, max_side=max_side,
                         normalize_codes=cfg.normalize_codes, precision=precision, opset=opset,
                         vqtok_version=__version__)
    return {
        **core.to_props(),
        "graph": graph,
        "origin": cfg.origin,  # imported weights: format, source file, sha256 (empty: trained by vqtok)
        **{f"input_{k}": v for k, v in inp.items()},
        **{f"output_{k}": v for k, v in out.items()},
        "code_dtype": "int32",
        "search_precision": "fp32",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }


def _rename_dims(proto: onnx.ModelProto, names: dict[str, list[str]]) -> None:
    """Readable names for the dynamic dims of the graph inputs/outputs (the exporter writes 's39', '4*h')."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for dim, name in zip(vi.type.tensor_type.shape.dim, names.get(vi.name, [])):
            if name and not dim.HasField("dim_value"):
                dim.dim_param = name


def _export_one(module: nn.Module, example: torch.Tensor, path: Path, in_name: str, out_name: str,
                dims: dict[str, list[str]], meta: dict[str, str], opset: int, factor: int, max_side: int) -> None:
    """Export one graph; fp32 graphs also get the CPU rewrites of `export.graph_rewrite` (fp16 graphs are for the
    CUDA provider, where those rewrites have not been measured)."""
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
    if meta["precision"] == "fp32":
        fuse_group_norm_affine(proto)
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
        from vqtok.tokenizer.hub import resolve_model_dir

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
        enc_name, dec_name = graph_files(precision)
        _export_one(EncoderGraph(model, precision).eval(), images, out / enc_name, "images", "codes",
                    {"images": ["batch", "height", "width"], "codes": ["batch", "h", "w"]},
                    metadata(model, model_id, precision, opset, max_side, "encoder"), opset, f, max_side)
        _export_one(DecoderGraph(model, precision).eval(), codes, out / dec_name, "codes", "images",
                    {"codes": ["batch", "h", "w"], "images": ["batch", "height", "width"]},
                    metadata(model, model_id, precision, opset, max_side, "decoder"), opset, f, max_side)
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
    target = path.with_name(optimized_name(path.name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    # ORT writes the graph but not always our metadata: copy it over, marked as optimised.
    opt = onnx.load(str(target))
    meta = read_metadata(path) | {"ort_optimized": "cpu-extended"}
    del opt.metadata_props[:]
    onnx.helper.set_model_props(opt, meta)
    onnx.save(opt, str(target))
    return target


def graph_matches_weights(model_dir: str | Path) -> bool:
    """True when the committed graphs in `model_dir` carry the codebook sha256 of its model.safetensors."""
    from vqtok.tokenizer.hub import read_codebook_sha256

    d = Path(model_dir)
    sha = read_codebook_sha256(d)
    return all(read_metadata(d / n).get("codebook_sha256") == sha for n in (ENCODER_FILE, DECODER_FILE))


# -- parity ----------------------------------------------------------------------------------------------------
# Thresholds of the issue: codes agree on ≥ 99.9 % of positions (fp32), alone-vs-batch ≥ 99.9 %, decoder within
# 1 grey level; fp16 is reported against a target of ≥ 99 %. A disagreement counts as a near-tie when the two
# codes' torch distances differ by less than NEAR_TIE (distances are ‖c‖² − 2e·c, O(1) for unit vectors; the
# median best-vs-runner-up margin of a random f8 model on photos is ~5e-2), i.e. the ORT/torch conv rounding was
# enough to flip the argmin. Measured flips on such a model: gaps ≤ 9e-5.
THRESHOLDS = {"code_agreement": 0.999, "batch_agreement": 0.999, "decoder_max_abs": 1, "fp16_code_agreement": 0.99}
NEAR_TIE = 5e-4


def _fit(path: Path, height: int, width: int) -> np.ndarray:
    """Photo → uint8 [height, width, 3]: the `resize` policy's geometry for any aspect."""
    from vqtok.tokenizer.preprocess import fit, open_image

    return fit(open_image(path), height, width)


@torch.no_grad()
def _torch_distances(model: Tokenizer, images: np.ndarray) -> torch.Tensor:
    """fp32 distances [B, h, w, K] exactly as `Tokenizer.encode` computes them before its argmin."""
    from vqtok.tokenizer.model import to_model_range

    b, hh, ww = images.shape[0], images.shape[1] // model.factor, images.shape[2] // model.factor
    e = model.search_vectors(to_model_range(torch.from_numpy(images)))
    return model.quantizer.distances(e).view(b, hh, ww, -1)


def _chunks(n: int, size: int):
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


def _code_parity(model: Tokenizer, tok, images: np.ndarray, names: list[str], batch: int) -> dict:
    """ORT codes vs PyTorch eval codes; every disagreement with its torch distance gap."""
    ort_codes, ref_codes, dists = [], [], []
    for sl in _chunks(len(images), batch):
        ort_codes.append(tok.encode_array(images[sl]))
        ref_codes.append(model.encode(_to_range(images[sl])).numpy())
        dists.append(_torch_distances(model, images[sl]))
    ort, ref, dist = np.concatenate(ort_codes), np.concatenate(ref_codes), torch.cat(dists)
    top2 = dist.topk(2, dim=-1, largest=False).values                                   # [B, h, w, 2]
    margin = (top2[..., 1] - top2[..., 0]).numpy()                                      # best vs runner-up
    gaps = []
    for b, i, j in zip(*np.nonzero(ort != ref)):
        gap = float(dist[b, i, j, ort[b, i, j]] - dist[b, i, j, ref[b, i, j]])
        gaps.append({"image": names[b], "row": int(i), "col": int(j), "torch_code": int(ref[b, i, j]),
                     "onnx_code": int(ort[b, i, j]), "distance_gap": gap})
    total = int(ref.size)
    return {"shape": list(images.shape[1:3]), "images": len(images), "positions": total,
            "agreeing": total - len(gaps), "agreement": (total - len(gaps)) / total,
            "max_distance_gap": max((g["distance_gap"] for g in gaps), default=0.0),
            "all_near_ties": all(g["distance_gap"] < NEAR_TIE for g in gaps),
            "median_margin": float(np.median(margin)), "p1_margin": float(np.percentile(margin, 1)),
            "fraction_margin_below_near_tie": float((margin < NEAR_TIE).mean()),
            "disagreements": gaps[:50]}, ort


def _to_range(images: np.ndarray) -> torch.Tensor:
    from vqtok.tokenizer.model import to_model_range

    return to_model_range(torch.from_numpy(np.ascontiguousarray(images)))


@torch.no_grad()
def verify(model_dir: str | Path, data: str | Path | list[Path], split: str | None = "val", limit: int | None = None,
           device: str = "cpu", batch: int = 8, sizes: list[tuple[int, int]] | None = None,
           graphs_dir: str | Path | None = None, write: bool = True, threads: int | None = None) -> dict:
    """Parity of the graphs in `graphs_dir` (default: `model_dir`) against PyTorch eval of `model_dir`'s weights.

    `data`: a folder of images, a manifest TSV (column `file`, optional `split`) or a list of paths. Default sizes:
    S×S and S×1.5S (S = config.image_size). Writes parity_report.json / .md next to the graphs when `write`.
    """
    import platform

    import onnxruntime as ort

    from vqtok.export.runtime import OnnxTokenizer
    from vqtok.tokenizer.data import list_images
    from vqtok.tokenizer.hub import read_codebook_sha256, resolve_model_dir
    from vqtok.tokenizer.model import to_uint8

    d = resolve_model_dir(model_dir)
    model = Tokenizer.from_pretrained(d)
    paths = list(data) if isinstance(data, list) else list_images(data, split)
    paths = paths[:limit] if limit else paths
    names = [Path(p).name for p in paths]
    s, f = model.config.image_size, model.config.factor
    sizes = sizes or [(s, s), (s, (3 * s // 2) // f * f)]
    g = Path(graphs_dir) if graphs_dir else d
    tok = OnnxTokenizer.from_pretrained(g, device=device, optimized=False, threads=threads)
    sha = read_codebook_sha256(d)
    report: dict = {
        "model_id": tok.metadata.model_id, "model_dir": str(d), "graphs_dir": str(g), "codebook_sha256": sha,
        "graphs_match_weights": tok.metadata.codebook_sha256 == sha, "device": device,
        "providers": tok.encoder.get_providers(), "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__, "machine": platform.machine(), "images": len(paths),
        "data": str(data) if not isinstance(data, list) else "list", "split": split,
        "thresholds": THRESHOLDS | {"near_tie_distance_gap": NEAR_TIE}, "codes": [],
    }
    first = None
    for h, w in sizes:
        images = np.stack([_fit(p, h, w) for p in paths])
        parity, ort_codes = _code_parity(model, tok, images, names, batch)
        report["codes"].append(parity)
        if first is None:
            first = (images, ort_codes)
    images, ort_codes = first

    # Batch invariance: each image alone vs in batches of 8 (the batches above).
    alone = np.concatenate([tok.encode_array(images[i:i + 1]) for i in range(len(images))])
    report["batch_invariance"] = {"batch": batch, "agreement": float((alone == ort_codes).mean())}

    # Decoder: same codes through ORT and through torch's decode + to_uint8.
    ref_codes = np.concatenate([model.encode(_to_range(images[sl])).numpy() for sl in _chunks(len(images), batch)])
    diffs, recon32 = [], []
    for sl in _chunks(len(images), batch):
        ort_img = tok.decode(ref_codes[sl])
        torch_img = to_uint8(model.decode(torch.from_numpy(ref_codes[sl]))).numpy()
        diffs.append(np.abs(ort_img.astype(int) - torch_img.astype(int)))
        recon32.append(ort_img)
    diff = np.concatenate(diffs)
    report["decoder"] = {"max_abs_diff": int(diff.max()), "mean_abs_diff": float(diff.mean()),
                         "fraction_differing": float((diff > 0).mean())}

    enc16, dec16 = graph_files("fp16")
    if (g / enc16).is_file() and (g / dec16).is_file():
        tok16 = OnnxTokenizer.from_pretrained(g, device=device, precision="fp16", threads=threads)
        codes16 = np.concatenate([tok16.encode_array(images[sl]) for sl in _chunks(len(images), batch)])
        recon16 = np.concatenate([tok16.decode(ref_codes[sl]) for sl in _chunks(len(images), batch)])
        report["fp16"] = {"providers": tok16.encoder.get_providers(),
                          "code_agreement_vs_fp32": float((codes16 == ort_codes).mean()),
                          "code_agreement_vs_torch": float((codes16 == ref_codes).mean()),
                          "decoder_psnr_vs_fp32_db": psnr(recon16, np.concatenate(recon32)),
                          "decoder_max_abs_diff_vs_fp32": int(np.abs(recon16.astype(int) -
                                                                     np.concatenate(recon32).astype(int)).max())}

    report["checks"] = checks = {
        "graphs_match_weights": report["graphs_match_weights"],
        "code_agreement": all(c["agreement"] >= THRESHOLDS["code_agreement"] for c in report["codes"]),
        "disagreements_are_near_ties": all(c["all_near_ties"] for c in report["codes"]),
        "batch_invariance": report["batch_invariance"]["agreement"] >= THRESHOLDS["batch_agreement"],
        "decoder": report["decoder"]["max_abs_diff"] <= THRESHOLDS["decoder_max_abs"],
    }
    if "fp16" in report:  # a target, reported; not a pass/fail of the fp32 graphs
        report["fp16"]["meets_target"] = report["fp16"]["code_agreement_vs_fp32"] >= THRESHOLDS["fp16_code_agreement"]
    report["passed"] = all(checks.values())
    if write:
        write_report(report, g)
    return report


def markdown_report(r: dict) -> str:
    ok = lambda b: "pass" if b else "**FAIL**"  # noqa: E731
    lines = [f"# ONNX parity report: {r['model_id']}", "",
             f"ONNX Runtime {r['onnxruntime_version']} ({', '.join(r['providers'])}) vs PyTorch {r['torch_version']} "
             f"eval, {r['images']} images from `{r['data']}` (split {r['split']}), device {r['device']}.",
             f"Codebook sha256 `{r['codebook_sha256']}`; graphs match weights: {ok(r['graphs_match_weights'])}.", "",
             "| check | measured | threshold | result |", "|---|---|---|---|"]
    for c in r["codes"]:
        h, w = c["shape"]
        lines.append(f"| codes {h}×{w} | {100 * c['agreement']:.4f} % ({c['agreeing']:,}/{c['positions']:,}) | "
                     f"≥ {100 * THRESHOLDS['code_agreement']:.1f} % | {ok(c['agreement'] >= THRESHOLDS['code_agreement'])} |")
    b = r["batch_invariance"]
    lines.append(f"| alone vs batch of {b['batch']} | {100 * b['agreement']:.4f} % | "
                 f"≥ {100 * THRESHOLDS['batch_agreement']:.1f} % | {ok(r['checks']['batch_invariance'])} |")
    dec = r["decoder"]
    lines.append(f"| decoder uint8 max abs diff | {dec['max_abs_diff']} (mean {dec['mean_abs_diff']:.2e}, "
                 f"{100 * dec['fraction_differing']:.3f} % of values differ) | ≤ 1 | {ok(r['checks']['decoder'])} |")
    if "fp16" in r:
        f16 = r["fp16"]
        lines.append(f"| fp16 codes vs fp32 | {100 * f16['code_agreement_vs_fp32']:.3f} % (vs torch "
                     f"{100 * f16['code_agreement_vs_torch']:.3f} %) | target ≥ 99 % | "
                     f"{'met' if f16['meets_target'] else 'not met'} |")
        lines.append(f"| fp16 decoder PSNR vs fp32 | {f16['decoder_psnr_vs_fp32_db']:.2f} dB (max abs diff "
                     f"{f16['decoder_max_abs_diff_vs_fp32']}) | reported | — |")
    lines += ["", "## Code disagreements", "",
              f"A disagreement is a near-tie when the torch distances of the two codes differ by less than {NEAR_TIE:g} "
              "(distance = ‖c‖² − 2 e·c). For scale: the margin between the best and the second-best code.", "",
              "| size | disagreements | max distance gap | near-ties | median margin | 1st-percentile margin | "
              "positions with margin < near-tie |", "|---|---|---|---|---|---|---|"]
    for c in r["codes"]:
        h, w = c["shape"]
        lines.append(f"| {h}×{w} | {c['positions'] - c['agreeing']} | {c['max_distance_gap']:.2e} | "
                     f"{ok(c['all_near_ties'])} | {c['median_margin']:.2e} | {c['p1_margin']:.2e} | "
                     f"{100 * c['fraction_margin_below_near_tie']:.3f} % |")
    shown = [(c["shape"], g) for c in r["codes"] for g in c["disagreements"]][:20]
    if shown:
        lines += ["", "| size | image | row, col | torch code | onnx code | distance gap |", "|---|---|---|---|---|---|"]
        lines += [f"| {s[0]}×{s[1]} | {g['image']} | {g['row']}, {g['col']} | {g['torch_code']} | {g['onnx_code']} | "
                  f"{g['distance_gap']:.2e} |" for s, g in shown]
    lines += ["", f"Overall: {'PASSED' if r['passed'] else 'FAILED'}.", ""]
    return "\n".join(lines)


def write_report(report: dict, directory: str | Path) -> tuple[Path, Path]:
    import json

    d = Path(directory)
    js, md = d / "parity_report.json", d / "parity_report.md"
    js.write_text(json.dumps(report, indent=2) + "\n")
    md.write_text(markdown_report(report))
    return js, md
