"""GPU: ONNX Runtime CUDA fp32 / fp16 throughput of the shipped graphs against the GPU's own MatMul probe, and a
real `vqtok serve --device cuda` against raw ONNX Runtime on the same GPU.

    python -m bench.gpu [--model DIR|ID] [--flops-from bench/results/cpu.json] [--out bench/results/cuda.json]

Throughput is end to end from host memory, as `OnnxTokenizer` runs for a user: uint8 NHWC images in, int codes out
(encode), int codes in, uint8 images out (decode), copies to and from the GPU included. The probe is an n×n MatMul
in ONNX Runtime CUDA with inputs and output bound on the GPU (I/O binding), fp32 and fp16, so it is the device's
arithmetic limit rather than a PCIe measurement. Each CUDA provider variant (default, `prefer_nhwc`) is a separate
session pair; the first runs of every new shape pay for cuDNN's algorithm search and are left out as warm-up.
FLOPs per image come from `bench.model_speed.count_flops` (torch), or from an earlier CPU results JSON when torch or
the model's safetensors are not on the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .common import RESULTS_DIR, bench, machine, now_utc, resolve_model

# CUDA provider options on top of OnnxTokenizer's defaults (heuristic cuDNN algorithm choice)
VARIANTS = {"default": {}, "exhaustive": {"cudnn_conv_algo_search": "EXHAUSTIVE"}, "prefer_nhwc": {"prefer_nhwc": "1"}}
# other server layouts on the same GPU (HTTP processes × inference workers per endpoint)
SERVE_VARIANTS = [{"label": f"{a} HTTP processes, {w} workers per endpoint", "args": ["--api-servers", str(a),
                   "--workers", str(w)], "cells": [["encode-npy", 32], ["encode-npy", 64], ["decode", 32]]}
                  for a, w in ((8, 1), (8, 2))]
CONFIGS = [("fp16", "default"), ("fp32", "default"), ("fp16", "exhaustive"), ("fp16", "prefer_nhwc")]


def gpu_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def probe(n: int = 8192, max_s: float = 3.0) -> dict:
    """GFLOP/s of an n×n MatMul in ORT CUDA, fp32 and fp16, operands resident on the GPU."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    out: dict = {"n": n}
    for name, (tp, dt) in {"fp32": (TensorProto.FLOAT, np.float32), "fp16": (TensorProto.FLOAT16, np.float16)}.items():
        vi = [helper.make_tensor_value_info(k, tp, [n, n]) for k in ("A", "B", "Y")]
        g = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "probe", vi[:2], vi[2:])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
        rng = np.random.default_rng(0)
        io = sess.io_binding()
        for k in ("A", "B"):
            io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((n, n)).astype(dt), "cuda", 0))
        io.bind_output("Y", "cuda")
        t = bench(lambda: sess.run_with_iobinding(io), max_reps=50, max_s=max_s, min_reps=5, warmup=3)
        out[name] = {"gflops": 2.0 * n**3 / t.median / 1e9, "gflops_best": 2.0 * n**3 / t.best / 1e9, **t.as_dict()}
        print(f"  probe {name}: {out[name]['gflops']:,.0f} GFLOP/s", flush=True)
    return out


def throughput(model_dir: Path, flops: dict, batches: list[int], size: int, max_s: float,
               budget_s: float = 200.0, configs: list[tuple[str, str]] | None = None) -> list[dict]:
    """Rows per (precision, provider variant, graph, batch); cells past `budget_s` are recorded as skipped (the
    first run of each shape includes cuDNN's exhaustive algorithm search, which can take seconds)."""
    from vqtok.export.runtime import OnnxTokenizer

    from .model_speed import _inputs

    configs = configs or CONFIGS  # the target's config first
    rows: list[dict] = []
    deadline = time.perf_counter() + budget_s
    for precision, variant in configs:
        if time.perf_counter() > deadline:
            rows.append({"backend": f"onnxruntime-cuda-{precision}", "variant": variant,
                         "error": f"skipped: over the {budget_s:.0f} s budget of this section"})
            continue
        t0 = time.perf_counter()
        try:
            tok = OnnxTokenizer.from_pretrained(model_dir, device="cuda", precision=precision, cuda_options=VARIANTS[variant])
        except Exception as err:  # no fp16 pair, or this provider option refused: record, go on
            rows.append({"backend": f"onnxruntime-cuda-{precision}", "variant": variant, "error": str(err)})
            print(f"  {precision} {variant}: {err}", flush=True)
            continue
        load_s = time.perf_counter() - t0
        for batch in batches:
            if time.perf_counter() > deadline:
                break
            x = _inputs(size, tok.metadata.factor, tok.metadata.codebook_size, batch)
            for graph in ("encode", "decode"):
                fn = (lambda: tok.encoder.run(None, {"images": x["encode"]})) if graph == "encode" else \
                     (lambda: tok.decoder.run(None, {"codes": x["decode"]}))
                t = bench(fn, max_reps=200, max_s=max_s, min_reps=3, warmup=2)
                ips = batch / t.median
                row = {"backend": f"onnxruntime-cuda-{precision}", "variant": variant, "graph": graph,
                       "batch": batch, "image_size": size, "images_per_s": ips, "ms_per_batch": 1e3 * t.median,
                       "achieved_gflops": ips * flops[graph]["flop_per_image"] / 1e9, "session_load_s": load_s,
                       **t.as_dict()}
                rows.append(row)
                print(f"  {row['backend']:22s} {variant:11s} {graph:6s} b={batch:<4d} {ips:9,.0f} img/s "
                      f"({1e3 * t.median:.2f} ms/batch, {row['achieved_gflops']:,.0f} GFLOP/s)", flush=True)
        del tok
    return rows


def load_flops(model_dir: Path, size: int, flops_from: str | None) -> dict:
    if flops_from:
        fl = json.loads(Path(flops_from).read_text())["model"]["flops"]
        if fl.get("image_size") != size:
            raise ValueError(f"{flops_from} counted FLOPs at {fl.get('image_size')}², not {size}²")
        return fl | {"source": flops_from}
    from .model_speed import count_flops

    return count_flops(model_dir, size) | {"source": "counted (torch FlopCounterMode)"}


def run(model_dir: Path, flops_from: str | None = None, size: int = 256, batches: list[int] | None = None,
        max_s: float = 1.5, serve: bool = True, serve_s: float = 4.0, concurrency: list[int] | None = None,
        max_batch_size: int = 32, flops: dict | None = None, partial: Path | None = None,
        configs: list[tuple[str, str]] | None = None, throughput_rows: bool = True, client_procs: int = 4) -> dict:
    """Probe, throughput rows, then the server; with `partial`, the results so far are written there after each
    part (a run cut short still leaves its numbers)."""
    import onnxruntime as ort

    out: dict = {"date_utc": now_utc(), "gpu": gpu_name(), "onnxruntime": ort.__version__,
                 "providers": ort.get_available_providers(), "model_dir": str(model_dir)}
    flops = flops or load_flops(model_dir, size, flops_from)
    out["flops"] = flops
    out["probe"] = probe() if throughput_rows else {}
    out["rows"] = (throughput(model_dir, flops, batches or [1, 8, 32, 128, 256], size, max_s, configs=configs)
                   if throughput_rows else [])
    for r in (r for r in out["rows"] if "error" not in r):
        ref = out["probe"]["fp16" if "fp16" in r["backend"] else "fp32"]["gflops"]
        r["probe_gflops"], r["vs_probe"] = ref, r["achieved_gflops"] / ref
    if partial:
        partial.write_text(json.dumps(out, indent=1, default=float) + "\n")
    if serve:
        from .serving import serving

        try:
            out["serving"] = serving(model_dir, concurrency or [1, 8, 32, 64], ["encode-npy", "decode"], serve_s,
                                     max_requests=100_000, max_batch_size=max_batch_size, device="cuda",
                                     raw_s=1.0, log=Path("/tmp/vqtok-gpu-serve.log"), client_procs=client_procs,
                                     variants=SERVE_VARIANTS)
        except Exception as err:  # keep the model numbers when the server cannot start
            out["serving"] = {"skipped": f"{type(err).__name__}: {err}"}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--flops-from", help="take FLOPs per image from a CPU results JSON (model.flops)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "cuda.json"))
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--serve-only", action="store_true", help="skip the probe and the throughput rows")
    ap.add_argument("--client-procs", type=int, default=4, help="load-generator processes (default 4)")
    ap.add_argument("--max-s", type=float, default=1.5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    ap.add_argument("--configs", nargs="+", metavar="PRECISION:VARIANT",
                    help=f"e.g. fp16:default fp16:exhaustive (variants: {', '.join(VARIANTS)})")
    args = ap.parse_args(argv)
    d, how = resolve_model(args.model)
    t0 = time.time()
    res = {"machine": machine(), "model_choice": how,
           "command": "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])}
    configs = [tuple(c.split(":")) for c in args.configs] if args.configs else None
    res |= run(d, args.flops_from, max_s=args.max_s, serve=not args.no_serve, batches=args.batches,
               partial=Path(args.out).with_suffix(".partial.json"), configs=configs,
               throughput_rows=not args.serve_only, client_procs=args.client_procs)
    res["wall_s"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"[bench.gpu] wrote {args.out} ({res['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
