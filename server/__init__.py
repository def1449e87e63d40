"""The vqtok tokenizer server (LitServe + ONNX Runtime, no torch) and its Python client.

`server.app` builds and runs the server (`vqtok serve`); `server.client` talks to it. Importing this package
imports neither (nor torch): `from vqtok.server.client import Client`.
"""
from __future__ import annotations

__all__ = ["Client", "AsyncClient", "build_server", "serve"]


def __getattr__(name: str):
    if name in ("Client", "AsyncClient"):
        from . import client

        return getattr(client, name)
    if name in ("build_server", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'vqtok.server' has no attribute {name!r}")
