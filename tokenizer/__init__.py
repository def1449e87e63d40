"""vqtok's tokenizer: a VQGAN trained with the rotation trick.

Importing this package does not import torch: `tokenizer.preprocess` and `tokenizer.hub` serve the torch-free
runtime. `Tokenizer` and `TokenizerConfig` load torch on first use.
"""
from .hub import DEFAULT_MODEL, list_models, resolve_model_dir

__all__ = ["DEFAULT_MODEL", "Tokenizer", "TokenizerConfig", "list_models", "resolve_model_dir"]


def __getattr__(name: str):
    if name in ("Tokenizer", "TokenizerConfig"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'vqtok.tokenizer' has no attribute {name!r}")
