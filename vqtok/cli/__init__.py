"""`vqtok` command line. Each subcommand lives in `vqtok/cli/<name>.py` with `HELP`, `add_arguments(parser)` and
`run(args) -> int`; heavy imports (torch, onnxruntime, litserve) happen inside `run`, so `vqtok --help` is instant
and the serving commands never import torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

# name → module; a module that is missing (a subcommand not built yet) is skipped, not fatal.
COMMANDS = ["info", "train", "eval", "export", "serve", "encode", "decode", "reconstruct", "tokenize", "detokenize",
            "import"]
MODULES = {"import": "import_"}  # a command whose name is a Python keyword


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqtok", description="Image tokenizers: train, export, serve, tokenize.")
    parser.add_argument("--version", action="version", version=f"vqtok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"vqtok.cli.{MODULES.get(name, name)}")
        except ModuleNotFoundError as err:
            if err.name == f"vqtok.cli.{MODULES.get(name, name)}":
                continue
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (FileNotFoundError, ValueError) as err:  # user errors: one clear line, no traceback
        print(f"vqtok {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
