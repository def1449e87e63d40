"""Load third-party PyTorch checkpoints without running code from them.

`torch.load(weights_only=True)` refuses real training checkpoints: LlamaGen's pickle an `argparse.Namespace`,
taming's Lightning `.ckpt` files reference Lightning callback classes (and would need pytorch_lightning
installed). Here the pickle's globals are listed first (`torch.serialization.get_unsafe_globals_in_checkpoint`,
which reads the opcodes and executes nothing); known-harmless names get inert stand-ins, and anything else (e.g.
`os.system`, `builtins.eval`) makes the load fail with the name, before a single object is built. The load itself
is torch's weights-only unpickler with those stand-ins allow-listed, so no callable outside the allow-list can
run either.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

# Globals whose pickled objects are metadata around the weights (training arguments, Lightning callback state,
# hyper-parameter containers). They become inert stand-ins: attributes kept, no behaviour, nothing imported.
INERT_PREFIXES = ("argparse.Namespace", "pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")


class Inert:
    """Stand-in for a pickled object of a class vqtok does not import: keeps its state, runs nothing."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (AttributeDict, DictConfig) use SETITEMS
        self.__dict__.setdefault("items", {})[key] = value

    def __repr__(self) -> str:
        return f"<inert {self._qualname}>"


def _stand_in(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (Inert,), {"_qualname": name, "__module__": "vqtok.inert"})


class UnsafeCheckpoint(ValueError):
    """The checkpoint's pickle references callables that could run code; it was not loaded."""


def load_checkpoint(path: str | Path) -> Any:
    """A `torch.save` file → its object, on CPU, without executing pickled code (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except ValueError:  # not a zip checkpoint (torch < 1.6 format): names are learnt from the refusals below
        names = []
    for _ in range(64):
        _refuse(path, names)
        try:
            with torch.serialization.safe_globals([(_stand_in(n), n) for n in names]):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            if not found or found.group(1) in names:
                raise ValueError(f"{path.name} could not be loaded safely: {str(err).splitlines()[0]}") from None
            names.append(found.group(1))
    raise ValueError(f"{path.name} references too many unknown classes to load safely")


def _refuse(path: Path, names: list[str]) -> None:
    refused = [n for n in names if not n.startswith(INERT_PREFIXES)]
    if refused:
        raise UnsafeCheckpoint(
            f"{path.name} was not loaded: its pickle references {', '.join(sorted(refused))}, which could run code. "
            "vqtok loads only tensors, plain containers and inert training metadata; re-save the weights as a plain "
            "state dict (or safetensors) with code you trust.")
