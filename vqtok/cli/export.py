"""`vqtok export MODEL`: write encoder.onnx / decoder.onnx (and optionally the fp16 pair and ORT-optimised CPU
copies) beside the weights; with `--verify DATA` measure parity against PyTorch into parity_report.json/.md; with
`--histogram DATA` (implied by `--verify DATA`) save the reference code histogram the server's drift score uses."""
from __future__ import annotations

import argparse

HELP = "Export a model to ONNX (uint8 images ↔ int32 codes) and verify parity with PyTorch."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model folder (config.json + model.safetensors) or a shipped model id")
    p.add_argument("--out", "-o", help="folder for the graphs and the report (default: the model's folder)")
    p.add_argument("--fp16", action="store_true", help="also write encoder.fp16.onnx / decoder.fp16.onnx for GPUs "
                                                       "(nearest-code search, GroupNorm and attention stay fp32)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    p.add_argument("--max-side", type=int, default=None,
                   help="largest H or W the runtime accepts (default: 4 × image_size), stored in the metadata")
    p.add_argument("--optimize", action="store_true",
                   help="also write ONNX Runtime offline-optimised CPU copies (*.cpu-opt.onnx)")
    p.add_argument("--verify", metavar="DATA", help="after exporting, measure parity on a folder of images or a "
                                                    "manifest TSV (columns file, split)")
    p.add_argument("--histogram", metavar="DATA", help="write code_histogram.json: the codes of DATA's images "
                   "(the val split of a manifest) as the reference for the server's drift score; --verify DATA "
                   "writes it too")
    p.add_argument("--split", default="val", help="manifest split for --verify / --histogram (default: val; 'all' "
                                                  "for every row)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many images for --verify / --histogram")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime device for --verify")
    p.add_argument("--no-export", action="store_true", help="skip exporting; verify the graphs already there")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vqtok.export.onnx import DEFAULT_OPSET, export_model, verify
    from vqtok.tokenizer.hub import resolve_model_dir

    src = resolve_model_dir(args.model)
    out = Path(args.out) if args.out else src
    if not args.no_export:
        paths = export_model(src, out, fp16=args.fp16, opset=args.opset or DEFAULT_OPSET, max_side=args.max_side,
                             optimize=args.optimize)
        for p in paths:
            print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    split = None if args.split == "all" else args.split
    if args.histogram or args.verify:
        from vqtok.export.histogram import write_reference

        print(f"wrote {write_reference(out, args.histogram or args.verify, split=split, limit=args.limit)}")
    if not args.verify:
        return 0
    report = verify(src, args.verify, graphs_dir=out, split=split, limit=args.limit,
                    device=args.device)
    from vqtok.export.onnx import markdown_report

    print(markdown_report(report))
    print(f"wrote {out / 'parity_report.json'} and {out / 'parity_report.md'}")
    return 0 if report["passed"] else 1
