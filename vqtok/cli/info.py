"""`vqtok info MODEL`: config, parameter count, factor, K, codebook sha256, and the ONNX metadata when present."""
from __future__ import annotations

import argparse
import json

HELP = "Show a model's config, parameter count, factor, K, codebook sha256 and ONNX metadata."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder or a shipped model id (see `vqtok info --list`)", nargs="?")
    p.add_argument("--list", action="store_true", help="list the shipped model ids")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe(model: str) -> dict:
    """Everything `info` prints, read without torch (safetensors' numpy loader and onnx metadata)."""
    import numpy as np
    from safetensors.numpy import load_file

    from vqtok.tokenizer.contract import CONFIG_FILE, WEIGHTS_FILE, factor_of, graph_files, read_metadata
    from vqtok.tokenizer.hub import codebook_sha256, resolve_model_dir

    d = resolve_model_dir(model)
    out: dict = {"path": str(d)}
    if (d / CONFIG_FILE).is_file():
        cfg = json.loads((d / CONFIG_FILE).read_text())
        out["config"] = cfg
        out["factor"] = factor_of(cfg["channel_mult"])
        out["codebook_size"] = cfg["codebook_size"]
        out["code_dim"] = cfg["code_dim"]
    if (d / WEIGHTS_FILE).is_file():
        tensors = load_file(str(d / WEIGHTS_FILE))
        out["parameters"] = int(sum(np.prod(v.shape) for k, v in tensors.items() if not k.startswith("quantizer.ema_")))
        out["codebook_sha256"] = codebook_sha256(tensors["quantizer.codebook"])
    onnx_meta = {}
    for name in graph_files():
        if (d / name).is_file():
            onnx_meta[name] = read_metadata(d / name)
    if onnx_meta:
        out["onnx"] = onnx_meta
    return out


def run(args: argparse.Namespace) -> int:
    from vqtok.tokenizer.hub import DEFAULT_MODEL, list_models

    if args.list or not args.model:
        for mid in list_models():
            print(mid + ("  (default)" if mid == DEFAULT_MODEL else ""))
        return 0
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model:           {info['path']}")
    if info.get("config", {}).get("origin"):  # imported weights: format, source file and its sha256
        print(f"origin:          {info['config']['origin']}")
    for key in ("parameters", "factor", "codebook_size", "code_dim", "codebook_sha256"):
        if key in info:
            print(f"{key + ':':<17}{info[key]:,}" if isinstance(info[key], int) else f"{key + ':':<17}{info[key]}")
    if "config" in info:
        print("config:")
        for k, v in info["config"].items():
            print(f"  {k}: {v}")
    for name, meta in info.get("onnx", {}).items():
        print(f"{name} metadata:")
        for k, v in meta.items():
            print(f"  {k}: {v}")
    return 0
