"""Model efficiency: counted FLOPs per image, throughput and achieved GFLOP/s of the encoder and decoder graphs
in PyTorch eager and ONNX Runtime, at several batch sizes.

    python -m bench.model_speed [--model DIR|ID] [--batches 1 8 32] [--size 256] [--device cpu|cuda]

Both backends run the same computation: `export.onnx.EncoderGraph` / `DecoderGraph` (uint8 NHWC images ⇄ int32
codes, scaling, nearest-code search, clamp and rounding included) in torch eager, and the exported ONNX graphs
through `export.runtime.OnnxTokenizer` with its default session settings. FLOPs are counted by
`torch.utils.flop_counter.FlopCounterMode` on those modules (convolutions, matmuls, and attention through the math
SDPA backend; 1 multiply-add = 2 FLOP; element-wise ops such as GroupNorm and SiLU are not counted, so achieved GFLOP/s is conservative).
On CPU the MatMul probe runs inside each cell's interleaved rounds, so "vs probe" compares like with like.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .common import cores, interleaved, resolve_model


def count_flops(model_dir: Path, size: int) -> dict:
    """FLOPs per image of the encode and decode graphs (torch modules of the export), counted at batch 1."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from vqtok.export.onnx import DecoderGraph, EncoderGraph
    from vqtok.tokenizer.model import Tokenizer

    model = Tokenizer.from_pretrained(model_dir)
    f = model.config.factor
    enc, dec = EncoderGraph(model).eval(), DecoderGraph(model).eval()
    images = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    codes = torch.zeros(1, size // f, size // f, dtype=torch.int32)
    out = {"image_size": size, "factor": f, "params": model.num_params(),
           "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
           "decoder_params": sum(p.numel() for p in model.decoder.parameters())}
    for name, module, x in (("encode", enc, images), ("decode", dec, codes)):
        # the math SDPA backend: torch's fused CPU attention kernel has no FLOP formula and would count as 0
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            module(x)
        by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
        out[name] = {"flop_per_image": int(counter.get_total_flops()), "by_op": by_op}
    return out


def _torch_runner(model_dir: Path, device: str):
    import torch

    from vqtok.export.onnx import DecoderGraph, EncoderGraph
    from vqtok.tokenizer.model import Tokenizer

    model = Tokenizer.from_pretrained(model_dir)
    dev = torch.device(device)
    enc, dec = EncoderGraph(model).eval().to(dev), DecoderGraph(model).eval().to(dev)

    def run(kind: str, x: np.ndarray):
        t = torch.from_numpy(x).to(dev)

        def go():
            with torch.inference_mode():
                y = (enc if kind == "encode" else dec)(t)
                return y.cpu().numpy()  # synchronises on GPUs
        return go
    return run


def _inputs(size: int, factor: int, codebook_size: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {"encode": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "decode": rng.integers(0, codebook_size, (batch, size // factor, size // factor), dtype=np.int32)}


def _ort_fns(tok, x: dict[str, np.ndarray]) -> dict:
    return {"encode": lambda: tok.encoder.run(None, {"images": x["encode"]}),
            "decode": lambda: tok.decoder.run(None, {"codes": x["decode"]})}


def throughput(model_dir: Path, batches: list[int], size: int, flops: dict, device: str = "cpu",
               max_s: float = 8.0, max_rounds: int = 10, torch_eager: bool = True,
               ort_threads: int | None = None, probe_n: int | None = None, min_rounds: int = 2) -> list[dict]:
    """Rows {backend, graph, batch, images_per_s, achieved_gflops, ...}; torch and ORT interleaved per cell.

    With `probe_n` (CPU), the MatMul probes (ORT and torch, n×n fp32) run inside the same interleaved rounds as
    each cell, and each row carries `probe_gflops`: the limit measured under the very load the row saw."""
    from vqtok.export.runtime import OnnxTokenizer

    rows: list[dict] = []
    backends: dict[str, object] = {}
    if device == "cpu":
        import torch

        old_threads = torch.get_num_threads()
        torch.set_num_threads(cores())
        backends["onnxruntime-cpu-fp32"] = OnnxTokenizer.from_pretrained(model_dir, device="cpu", threads=ort_threads)
    else:
        backends["onnxruntime-cuda-fp32"] = OnnxTokenizer.from_pretrained(model_dir, device="cuda")
        backends["onnxruntime-cuda-fp16"] = OnnxTokenizer.from_pretrained(model_dir, device="cuda", precision="fp16")
    torch_run = _torch_runner(model_dir, device) if torch_eager else None
    meta = next(iter(backends.values())).metadata
    probes: dict = {}
    if probe_n and device == "cpu":
        from .probe import ort_session

        rng = np.random.default_rng(1)
        a = rng.standard_normal((probe_n, probe_n), dtype=np.float32)
        bm = rng.standard_normal((probe_n, probe_n), dtype=np.float32)
        sess = ort_session(probe_n, cores())
        ta, tb = torch.from_numpy(a), torch.from_numpy(bm)
        probes = {"probe:onnxruntime": lambda: sess.run(None, {"A": a, "B": bm}), "probe:torch": lambda: torch.mm(ta, tb)}
    try:
        for batch in batches:
            x = _inputs(size, meta.factor, meta.codebook_size, batch)
            for graph in ("encode", "decode"):
                fns = {name: _ort_fns(tok, x)[graph] for name, tok in backends.items()}
                if torch_run is not None:
                    fns[f"torch-eager-{device}-fp32"] = torch_run(graph, x[graph])
                timings = interleaved(fns | probes, max_rounds=max_rounds, max_s=max_s, min_rounds=min_rounds,
                                      warmup=1)
                probe_gf = {k.split(":")[1]: 2.0 * probe_n**3 / timings[k].median / 1e9 for k in probes}
                for name, t in timings.items():
                    if name in probes:
                        continue
                    ips = batch / t.median
                    row = {"backend": name, "graph": graph, "batch": batch, "image_size": size,
                           "images_per_s": ips, "ms_per_batch": 1e3 * t.median,
                           "achieved_gflops": ips * flops[graph]["flop_per_image"] / 1e9, **t.as_dict()}
                    engine = "onnxruntime" if name.startswith("onnxruntime") else "torch"
                    if engine in probe_gf:
                        row["probe_gflops"] = probe_gf[engine]
                        row["vs_probe"] = row["achieved_gflops"] / probe_gf[engine]
                    rows.append(row)
    finally:
        if device == "cpu":
            torch.set_num_threads(old_threads)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-s", type=float, default=8.0)
    args = ap.parse_args(argv)
    d, how = resolve_model(args.model)
    flops = count_flops(d, args.size)
    rows = throughput(d, args.batches, args.size, flops, args.device, args.max_s)
    out = {"model_dir": str(d), "model_choice": how, "flops": flops, "rows": rows}
    for r in rows:
        print(f"{r['backend']:24s} {r['graph']:6s} b={r['batch']:<3d} {r['images_per_s']:8.2f} img/s "
              f"{r['achieved_gflops']:7.1f} GFLOP/s  ({r['n']} runs)")
    return out


if __name__ == "__main__":
    main()
