"""`vqtok train`: train a tokenizer on a folder of images or a manifest split (torchrun for several processes)."""
from __future__ import annotations

import argparse
import json
import os

HELP = "Train a VQGAN tokenizer (rotation trick or STE) on a folder of images or a manifest TSV."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a folder of images (recursive) or a manifest TSV with 'file' and 'split' columns")
    p.add_argument("--out", "-o", required=True, help="run folder: checkpoints, metrics.jsonl, grids/")
    p.add_argument("--config", help="JSON file of training options (TrainConfig fields; 'model' holds TokenizerConfig fields)")
    p.add_argument("--split", help="manifest split to train on (default: train)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--crop", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--gradient", choices=["rotation", "ste"], help="quantizer gradient (model option)")
    p.add_argument("--init", metavar="MODEL", help="fine-tune this model folder or id (e.g. one made by `vqtok "
                                                   "import`): its architecture and weights are the start")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader workers")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override any option, e.g. --set disc_start=2000 --set model.codebook_size=4096")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt exactly")
    p.add_argument("--no-progress", action="store_true")


def build_config(args: argparse.Namespace):
    from vqtok.tokenizer.train import TrainConfig

    opts: dict = json.loads(open(args.config).read()) if args.config else {}
    opts["data"], opts["out"] = args.data, args.out
    for key in ("init", "split", "steps", "batch_size", "crop", "lr", "seed", "workers", "device", "checkpoint_every"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if args.gradient:
        opts.setdefault("model", {})["gradient"] = args.gradient
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if key.startswith("model."):
            opts.setdefault("model", {})[key[6:]] = parsed
        else:
            opts[key] = parsed
    if args.no_progress:
        opts["progress"] = False
    return TrainConfig.from_dict(opts)


def run(args: argparse.Namespace) -> int:
    import logging

    from vqtok.tokenizer.train import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train(build_config(args), resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank has it; two writers interleave one pipe
        print(json.dumps(result), flush=True)
    if result.get("ranks_in_sync") is False:
        print("error: model weights differ across ranks", flush=True)
        return 1
    return 0
