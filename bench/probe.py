"""Machine probe: fp32 MatMul n×n in ONNX Runtime and in torch, in GFLOP/s: this machine's practical limit.

    python -m bench.probe [--n 2048] [--threads N]

Measured in the same run as the model numbers, interleaved (ORT, torch, torch, ORT, ...), so "achieved / probe"
ratios hold even when the machine is shared and absolute speed drifts.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from .common import Timing, cores, interleaved


def matmul_graph(n: int) -> bytes:
    """ONNX model: Y = A @ B, A and B fp32 [n, n] inputs."""
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "matmul_probe", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_session(n: int, threads: int, device: str = "cpu"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(matmul_graph(n), so, providers=providers)


def probe(n: int = 2048, threads: int | None = None, max_s: float = 6.0, max_rounds: int = 15) -> dict:
    """GFLOP/s of an fp32 n×n MatMul in ONNX Runtime (CPU provider) and torch (CPU), interleaved."""
    threads = threads or cores()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    sess = ort_session(n, threads)
    fns = {"onnxruntime": lambda: sess.run(None, {"A": a, "B": b})}
    try:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch"] = lambda: torch.mm(ta, tb)
    except ImportError:
        torch = None
    try:
        timings: dict[str, Timing] = interleaved(fns, max_rounds=max_rounds, max_s=max_s, min_rounds=3, warmup=2)
    finally:
        if torch is not None:
            torch.set_num_threads(old)
    flop = 2.0 * n**3
    out = {"n": n, "threads": threads, "flop": flop}
    for name, t in timings.items():
        # the median, like every other number of the suite (best-of would flatter the limit on a shared machine)
        out[name] = {"gflops": flop / t.median / 1e9, "gflops_best": flop / t.best / 1e9, **t.as_dict()}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    out = probe(args.n, args.threads)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
