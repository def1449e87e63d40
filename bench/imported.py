"""An imported architecture at its deployed size: `vqtok import --preset NAME --random`, exported, then the
suite's own measurements on it (bench.model_speed: ORT encode/decode img/s and share of the MatMul probe measured
in the same interleaved rounds; bench.serving: a real `vqtok serve` and its worker peak RSS).

    nice -n 10 python -m bench.imported --preset llamagen-vq16 --out bench/results/cpu-llamagen-vq16.json

Random weights: speed and memory only depend on the architecture, not on the values. Torch eager is left out
(the preset is for serving; `python -m bench.model_speed --model DIR` adds it).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from .common import machine, now_utc


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llamagen-vq16")
    ap.add_argument("--model", help="an already imported + exported folder (skips import and export)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--max-s", type=float, default=30.0, help="time budget per (graph, batch) cell")
    ap.add_argument("--serve-s", type=float, default=20.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from vqtok.export.onnx import export_model
    from vqtok.tokenizer.importers import random_preset

    from . import model_speed, serving

    if args.model:
        d = Path(args.model)
    else:
        d = Path(tempfile.mkdtemp(prefix="vqtok-bench-")) / f"{args.preset}-random"
        model = random_preset(args.preset, d)
        del model
        export_model(d, optimize=True)
    flops = model_speed.count_flops(d, args.size)
    rows = model_speed.throughput(d, args.batches, args.size, flops, "cpu", args.max_s, max_rounds=5,
                                  torch_eager=False, probe_n=2048, min_rounds=2)
    srv = serving.serving(d, [1], ["encode-npy", "decode"], args.serve_s, max_requests=20, raw_s=args.max_s / 3)
    out = {"date_utc": now_utc(), "machine": machine(), "preset": args.preset, "model_dir": str(d),
           "command": "nice -n 10 python -m bench.imported " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "flops": flops, "rows": rows, "serving": srv}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(f"{r['graph']:6s} b={r['batch']:<2d} {r['images_per_s']:7.3f} img/s {r['achieved_gflops']:6.1f} GFLOP/s "
              f"{100 * r.get('vs_probe', float('nan')):5.1f} % of probe ({r['n']} runs)")
    print(json.dumps(srv["memory"], indent=1))
    return out


if __name__ == "__main__":
    main()
