"""Where models live, and the codebook fingerprint. numpy only: the torch-free serving path imports this."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from .contract import CONFIG_FILE, ENCODER_FILE, WEIGHTS_FILE

# The shipped models: weights/<id>/ beside the packages (installed with them as package data).
WEIGHTS_DIR = Path(os.environ.get("VQTOK_WEIGHTS_DIR", Path(__file__).resolve().parent.parent / "weights"))
DEFAULT_MODEL = "vqtok-f8-k1024"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_model_id(name: str) -> bool:
    return bool(_ID.match(name)) and ".." not in name


def list_models(weights_dir: str | Path | None = None) -> list[str]:
    """Ids of the model folders under `weights_dir` (those holding a config.json or ONNX graphs)."""
    root = Path(weights_dir or WEIGHTS_DIR)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and ((p / CONFIG_FILE).is_file() or (p / ENCODER_FILE).is_file()))


def resolve_model_dir(path_or_id: str | Path, weights_dir: str | Path | None = None) -> Path:
    """A folder path is used as is; otherwise the name must be a model id under the weights folder."""
    p = Path(path_or_id)
    if p.is_dir():
        return p
    name = str(path_or_id)
    root = Path(weights_dir or WEIGHTS_DIR)
    if is_model_id(name) and (root / name).is_dir():
        return root / name
    raise FileNotFoundError(
        f"no model folder or shipped model id {name!r}; shipped ids under {root}: {list_models(root) or 'none'}. "
        "Pass a folder holding config.json + model.safetensors, or one of those ids."
    )


def codebook_sha256(codebook: np.ndarray) -> str:
    """sha256 of the stored codebook as C-order little-endian float32 [K, d]: identifies the token vocabulary."""
    return hashlib.sha256(np.ascontiguousarray(codebook, dtype="<f4").tobytes()).hexdigest()


def read_codebook_sha256(model_dir: str | Path) -> str:
    """Codebook fingerprint of a saved model, read from model.safetensors without torch."""
    from safetensors.numpy import load_file

    return codebook_sha256(load_file(str(Path(model_dir) / WEIGHTS_FILE))["quantizer.codebook"])


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (checkpoints and shards can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
