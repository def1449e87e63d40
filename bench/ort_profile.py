"""Where ONNX Runtime spends the time: a per-op-type profile of the encoder and decoder graphs.

    python -m bench.ort_profile [--model DIR|ID] [--batch 8] [--size 256]

Runs each graph a few times with ORT's profiler on (same session options as `export.runtime.OnnxTokenizer`) and
sums kernel time by op type. With the counted Conv/MatMul FLOPs this gives the GFLOP/s of the convolutions alone,
which separates "the convolutions are slow" from "the time goes to memory-bound ops between them" (GroupNorm as
InstanceNormalization + BatchNormalization for γ and β since `export.graph_rewrite`, SiLU as QuickGelu,
layout reorders).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from .common import resolve_model, session_options


def profile_graph(path: Path, feed: dict[str, np.ndarray], runs: int = 3, threads: int | None = None,
                  level: str = "all") -> dict:
    import onnxruntime as ort

    so = session_options(level, threads)
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        sess.run(None, feed)  # warm-up (arena allocation); included in the trace, dropped below
        for _ in range(runs):
            sess.run(None, feed)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    # keep the node events of the last `runs` model runs
    starts = sorted(e["ts"] for e in runs_seen)[-runs:] if runs_seen else []
    t0 = starts[0] if starts else 0
    by_op: dict[str, float] = defaultdict(float)
    total_nodes = 0.0
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < t0:
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] += e["dur"] / 1e3 / runs  # ms per run
        total_nodes += e["dur"] / 1e3 / runs
    run_ms = float(np.median([e["dur"] / 1e3 for e in runs_seen][-runs:])) if runs_seen else float("nan")
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"run_ms": run_ms, "kernel_ms": total_nodes, "by_op_ms": dict(ops),
            "by_op_share": {k: v / total_nodes for k, v in ops} if total_nodes else {}}


def profile(model_dir: Path, batch: int = 8, size: int = 256, flops: dict | None = None, runs: int = 3,
            threads: int | None = None) -> dict:
    from vqtok.export.runtime import OnnxTokenizer

    tok = OnnxTokenizer.from_pretrained(model_dir, threads=threads)
    enc_path = Path(tok.encoder._model_path)
    dec_path = Path(tok.decoder._model_path)
    f, k = tok.metadata.factor, tok.metadata.codebook_size
    rng = np.random.default_rng(0)
    feeds = {"encode": (enc_path, {"images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)}),
             "decode": (dec_path, {"codes": rng.integers(0, k, (batch, size // f, size // f), dtype=np.int32)})}
    out = {"batch": batch, "image_size": size}
    for name, (path, feed) in feeds.items():
        p = profile_graph(path, feed, runs, threads)
        p["graph_file"] = path.name
        if flops:
            by = flops[name]["by_op"]
            conv_flop = batch * sum(v for kk, v in by.items() if "convolution" in kk)
            conv_ms = sum(v for kk, v in p["by_op_ms"].items() if "Conv" in kk)
            p["conv_flop_share"] = sum(v for kk, v in by.items() if "convolution" in kk) / flops[name]["flop_per_image"]
            p["conv_gflops"] = conv_flop / (conv_ms / 1e3) / 1e9 if conv_ms else float("nan")
            p["conv_time_share"] = conv_ms / p["kernel_ms"] if p["kernel_ms"] else float("nan")
        out[name] = p
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    from .model_speed import count_flops

    d, _ = resolve_model(args.model)
    flops = count_flops(d, args.size)
    out = profile(d, args.batch, args.size, flops, threads=args.threads)
    for g in ("encode", "decode"):
        p = out[g]
        print(f"{g}: run {p['run_ms']:.1f} ms, kernels {p['kernel_ms']:.1f} ms, conv {100 * p['conv_time_share']:.0f} % "
              f"of time at {p['conv_gflops']:.1f} GFLOP/s")
        for op, ms in list(p["by_op_ms"].items())[:12]:
            print(f"   {op:28s} {ms:8.2f} ms  {100 * p['by_op_share'][op]:5.1f} %")
    return out


if __name__ == "__main__":
    main()
