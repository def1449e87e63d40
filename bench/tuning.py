"""ONNX Runtime CPU session variants for the same graphs, interleaved: what each knob is worth on this machine.

    python -m bench.tuning [--model DIR|ID] [--batch 8] [--size 256] [--compare NAME=DIR ...]

Variants: the runtime's default (`OnnxTokenizer.from_pretrained`), graph optimisation level BASIC / EXTENDED / ALL,
intra-op threads (1 vs all cores), thread spinning off, and the offline-optimised `*.cpu-opt.onnx` copy when the
model folder has one. Each variant is its own pair of sessions; one round runs encode and decode of every variant.
`--compare NAME=DIR` adds the graphs of another folder (its `*.cpu-opt.onnx` copies when present, else the plain
graphs; ALL, threads = cores) as a variant: an interleaved A/B of two exports of the same model, e.g. the graphs of
an earlier commit extracted with `git show`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vqtok.tokenizer.contract import graph_files

from .common import cores, interleaved, resolve_model, session_options


def _sessions(enc: Path, dec: Path, level: str = "all", threads: int | None = None, spinning: bool = True):
    import onnxruntime as ort

    so = session_options(level, threads, spinning)
    p = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(enc), so, providers=p), ort.InferenceSession(str(dec), so, providers=p)


def _graph_pair(d: Path) -> tuple[Path, Path]:
    """A folder's CPU graphs: the ORT-optimised copies when it has both, else the plain ones."""
    opt = tuple(d / n for n in graph_files("fp32", optimized=True))
    return opt if all(p.is_file() for p in opt) else tuple(d / n for n in graph_files())


def variants(model_dir: Path, compare: dict[str, Path] | None = None) -> dict[str, tuple]:
    from vqtok.export.runtime import OnnxTokenizer

    tok = OnnxTokenizer.from_pretrained(model_dir)
    out = {"runtime default": (tok.encoder, tok.decoder)}
    enc, dec = (model_dir / n for n in graph_files())
    n = cores()
    out["plain, ALL, threads=cores"] = _sessions(enc, dec, "all", n)
    out["plain, EXTENDED"] = _sessions(enc, dec, "extended", n)
    out["plain, BASIC"] = _sessions(enc, dec, "basic", n)
    if n > 1:
        out["plain, ALL, 1 thread"] = _sessions(enc, dec, "all", 1)
    out["plain, ALL, no spinning"] = _sessions(enc, dec, "all", n, spinning=False)
    opt_e, opt_d = (model_dir / n for n in graph_files("fp32", optimized=True))
    if opt_e.is_file() and opt_d.is_file():
        out["cpu-opt copy, ALL"] = _sessions(opt_e, opt_d, "all", n)
    for name, d in (compare or {}).items():
        out[name] = _sessions(*_graph_pair(Path(d)), "all", n)
    return out


def tuning(model_dir: Path, batch: int = 8, size: int = 256, max_s: float = 30.0, max_rounds: int = 4,
           compare: dict[str, Path] | None = None) -> dict:
    from vqtok.export.runtime import OnnxTokenizer

    meta = OnnxTokenizer.from_pretrained(model_dir).metadata
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    codes = rng.integers(0, meta.codebook_size, (batch, size // meta.factor, size // meta.factor), dtype=np.int32)
    sess = variants(model_dir, compare)
    fns = {}
    for name, (e, d) in sess.items():
        fns[(name, "encode")] = (lambda e=e: e.run(None, {"images": images}))
        fns[(name, "decode")] = (lambda d=d: d.run(None, {"codes": codes}))
    t = interleaved(fns, max_rounds=max_rounds, max_s=max_s, min_rounds=2, warmup=1)
    rows = [{"variant": name, "encode_ips": batch / t[(name, "encode")].median,
             "decode_ips": batch / t[(name, "decode")].median, "runs": len(t[(name, "encode")].times)}
            for name in sess]
    return {"batch": batch, "image_size": size, "baseline": "runtime default", "rows": rows,
            "note": "Every variant runs the same graphs on the same inputs; rounds alternate the order of variants. "
                    "'runtime default' is `OnnxTokenizer.from_pretrained(model)` as the server and CLI build it."}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--max-s", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                    help="also time the graphs in DIR as variant NAME (repeatable)")
    args = ap.parse_args(argv)
    d, _ = resolve_model(args.model)
    compare = dict(c.split("=", 1) for c in args.compare)
    out = tuning(d, args.batch, args.size, args.max_s, args.rounds, {k: Path(v) for k, v in compare.items()})
    for r in out["rows"]:
        print(f"{r['variant']:28s} encode {r['encode_ips']:7.2f} img/s   decode {r['decode_ips']:7.2f} img/s  ({r['runs']} runs)")
    return out


if __name__ == "__main__":
    main()
