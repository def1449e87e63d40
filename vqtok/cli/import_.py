"""`vqtok import`: a LlamaGen, taming-transformers or diffusers VQ checkpoint → a vqtok model folder
(config.json + model.safetensors + model card), or a full-size preset architecture with random weights."""
from __future__ import annotations

import argparse

HELP = "Import a LlamaGen (.pt), taming (.ckpt) or diffusers (folder) VQ tokenizer, or a random-weight preset."

EPILOG = """forms:
  vqtok import llamagen CKPT.pt --config MODEL_ARGS.json|VQ-16|VQ-8 --out DIR
  vqtok import taming LAST.ckpt --config CONFIG.yaml --out DIR
  vqtok import diffusers FOLDER --out DIR
  vqtok import --preset llamagen-vq16|llamagen-vq8|taming-f16-16384|ldm-vq-f4 --random --out DIR
Checkpoints are read without running pickled code (docs/IMPORT.md)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("format", nargs="?", choices=["llamagen", "taming", "diffusers"], help="source code base")
    p.add_argument("src", nargs="?", help="checkpoint file (llamagen, taming) or model folder (diffusers)")
    p.add_argument("--out", "-o", required=True, help="output model folder")
    p.add_argument("--config", help="llamagen: JSON of ModelArgs + ch + num_res_blocks, or VQ-16 / VQ-8; "
                                    "taming: the model's YAML")
    p.add_argument("--id", dest="model_id", help="model id (default: the output folder's name)")
    p.add_argument("--preset", help="a released architecture instead of a checkpoint (needs --random)")
    p.add_argument("--random", action="store_true", help="with --preset: random weights")
    p.add_argument("--seed", type=int, default=0, help="with --random (default 0)")


def run(args: argparse.Namespace) -> int:
    from vqtok.tokenizer.importers import import_checkpoint, random_preset

    if args.preset:
        if not args.random or args.format:
            raise ValueError("--preset takes no FORMAT/SRC and needs --random (presets carry no weights)")
        model = random_preset(args.preset, args.out, args.model_id, args.seed)
        print(f"{args.preset} with random weights (seed {args.seed}) → {args.out}: {model.num_params():,} "
              f"parameters, codebook sha256 {model.codebook_sha256()}")
        return 0
    if not args.format or not args.src:
        raise ValueError("give FORMAT and SRC (or --preset NAME --random); see vqtok import --help")
    print(import_checkpoint(args.format, args.src, args.out, args.config, args.model_id).summary())
    return 0
