"""vqtok's tokenizer: a VQGAN trained with the rotation trick.

Importing this package imports nothing heavy (the CLI builds its parser from `tokenizer.contract`):
`tokenizer.preprocess`, `tokenizer.hub` and `tokenizer.contract` serve the torch-free runtime; `Tokenizer` and
`TokenizerConfig` load torch on first use.
"""
from importlib import import_module

_LAZY = {"DEFAULT_MODEL": "hub", "list_models": "hub", "resolve_model_dir": "hub", "Tokenizer": "model",
         "TokenizerConfig": "model"}
__all__ = ["DEFAULT_MODEL", "Tokenizer", "TokenizerConfig", "list_models", "resolve_model_dir"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vqtok.tokenizer' has no attribute {name!r}")
