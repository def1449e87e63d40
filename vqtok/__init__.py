"""vqtok: image tokenizers for generative models — images to discrete codes and back.

Importing `vqtok` is cheap and never imports torch; each name loads its module on first use:

    vqtok.OnnxTokenizer        torch-free ONNX Runtime tokenizer (`vqtok.export.runtime`)
    vqtok.Client, AsyncClient  HTTP client of `vqtok serve` (`vqtok.server.client`, httpx only)
    vqtok.Tokenizer            the PyTorch model (`vqtok.tokenizer.model`, needs torch: `pip install vqtok[train]`)
    vqtok.TokenizerConfig      its config dataclass
    vqtok.DEFAULT_MODEL        the id of the shipped default model
    vqtok.flatten, unflatten   code grids [B, h, w] ⇄ raster-order token sequences [B, h·w] (numpy or torch;
                               docs/TOKENS.md)

Sub-packages: `vqtok.tokenizer` (model, quantizer, training, eval), `vqtok.export` (ONNX export and runtime),
`vqtok.server` (LitServe app and client), `vqtok.pipeline` (dataset tokenization), `vqtok.cli` (the command line).
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vqtok")
except PackageNotFoundError:  # a source tree that was not pip-installed
    __version__ = "0.0.0+unknown"

# public name → the module that defines it (imported on first access, so torch/onnxruntime/httpx load only when used)
_LAZY = {
    "DEFAULT_MODEL": "vqtok.tokenizer.hub",
    "list_models": "vqtok.tokenizer.hub",
    "Tokenizer": "vqtok.tokenizer.model",
    "TokenizerConfig": "vqtok.tokenizer.model",
    "OnnxTokenizer": "vqtok.export.runtime",
    "flatten": "vqtok.tokenizer.contract",
    "unflatten": "vqtok.tokenizer.contract",
    "Client": "vqtok.server.client",
    "AsyncClient": "vqtok.server.client",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vqtok' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
