"""The facts every part of vqtok shares, written once: file names, ONNX metadata, preprocessing policies and
geometry, the factor formula, PSNR. Imports nothing heavy at import time (numpy and onnx
load inside the functions that need them, so the CLI can build its parser from this module): the torch-free
serving path, the server, the dataset pipeline and the CLI import it as freely as training and export do.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np

# -- files of a model folder -----------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GRAPHS = ("encoder", "decoder")           # the two ONNX graphs of a model, in this order everywhere
PRECISIONS = ("fp32", "fp16")
OPTIMIZED_SUFFIX = ".cpu-opt"              # ONNX Runtime offline-optimised CPU copies (fp32 only)


def graph_files(precision: str = "fp32", optimized: bool = False) -> tuple[str, str]:
    """File names of the (encoder, decoder) graphs: `encoder.onnx`, `encoder.fp16.onnx`, `encoder.cpu-opt.onnx`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if optimized and precision != "fp32":
        raise ValueError("ORT-optimised CPU graphs exist for fp32 only (fp16 is for GPUs)")
    suffix = ("" if precision == "fp32" else ".fp16") + (OPTIMIZED_SUFFIX if optimized else "") + ".onnx"
    return tuple(g + suffix for g in GRAPHS)  # type: ignore[return-value]


ENCODER_FILE, DECODER_FILE = graph_files()


def optimized_name(graph_file: str) -> str:
    """`encoder.onnx` → `encoder.cpu-opt.onnx`: where the ORT-optimised CPU copy of a graph is written."""
    return graph_file.removesuffix(".onnx") + OPTIMIZED_SUFFIX + ".onnx"


# -- ONNX metadata (metadata_props of both graphs; docs/ARCHITECTURE.md lists every key) ---------------------------
REQUIRED_METADATA = ("model_id", "factor", "codebook_size", "code_dim", "codebook_sha256", "image_size", "max_side")


@dataclass(frozen=True)
class ModelMetadata:
    """The metadata a runtime needs, parsed from a graph's string metadata_props (and written back by `to_props`)."""

    model_id: str
    factor: int
    codebook_size: int
    code_dim: int
    codebook_sha256: str
    image_size: int
    max_side: int
    normalize_codes: bool
    precision: str
    opset: int
    vqtok_version: str

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelMetadata":
        missing = [k for k in REQUIRED_METADATA if k not in props]
        if missing:
            raise ValueError(f"ONNX graph lacks metadata {missing}; re-export it with `vqtok export MODEL`")
        return cls(model_id=props["model_id"], factor=int(props["factor"]),
                   codebook_size=int(props["codebook_size"]), code_dim=int(props["code_dim"]),
                   codebook_sha256=props["codebook_sha256"], image_size=int(props["image_size"]),
                   max_side=int(props["max_side"]), normalize_codes=props.get("normalize_codes") == "true",
                   precision=props.get("precision", "fp32"), opset=int(props.get("opset", 0)),
                   vqtok_version=props.get("vqtok_version", ""))

    def to_props(self) -> dict[str, str]:
        """The string form `from_props` reads (booleans as 'true'/'false')."""
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in asdict(self).items()}

    def as_dict(self) -> dict:
        return asdict(self)


def read_metadata(path: str | Path) -> dict[str, str]:
    """A graph file's metadata_props as a dict, read without loading weights or creating an ORT session."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def read_model_metadata(model_dir: str | Path) -> tuple[ModelMetadata, dict[str, str]]:
    """(validated metadata, every metadata_props key) of a model folder's fp32 encoder graph."""
    path = Path(model_dir) / ENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no {ENCODER_FILE}; export the model first (`vqtok export "
                                f"{model_dir}`)")
    props = read_metadata(path)
    return ModelMetadata.from_props(props), props


def default_max_side(image_size: int, factor: int) -> int:
    """Largest H or W the graphs are documented for: 4× the training size (1024 for a 256² model)."""
    return max(4 * image_size, 32 * factor)


# -- model geometry --------------------------------------------------------------------------------------------
def factor_of(channel_mult: Sequence[int]) -> int:
    """Downsampling factor f of an encoder with one level per `channel_mult` entry (a stride-2 step between levels)."""
    return 2 ** (len(channel_mult) - 1)


# -- preprocessing ---------------------------------------------------------------------------------------------
POLICIES = ("resize", "native")  # resize: cover S×S and centre crop; native: pad to a multiple of f


def cover_crop(source_width: int, source_height: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Scale to cover height×width, then centre crop: returns (scaled_width, scaled_height, left, top).

    The scale is the larger of the two ratios, so the shorter side (relative to the target aspect) lands exactly on
    the target and nothing is padded; for a square target this is "shorter side to S".
    """
    scale = max(height / source_height, width / source_width)
    nw, nh = max(width, round(source_width * scale)), max(height, round(source_height * scale))
    return nw, nh, (nw - width) // 2, (nh - height) // 2


# -- token layout ----------------------------------------------------------------------------------------------
# Codes are a row-major grid [B, h, w] = [B, H/f, W/f]; code (i, j) covers pixels [i·f, (i+1)·f) × [j·f, (j+1)·f).
# A sequence model reads it in raster order, row by row: token t = i·w + j. Both functions take numpy arrays and
# torch tensors alike (anything with .reshape) and return the same kind; lists become numpy arrays.
def flatten(codes):
    """Code grids [B, h, w] → token sequences [B, h·w] in raster order ([h, w] → [h·w])."""
    codes = codes if hasattr(codes, "reshape") else _array(codes)
    if codes.ndim not in (2, 3):
        raise ValueError(f"flatten takes a code grid [h, w] or [B, h, w], got shape {tuple(codes.shape)}")
    h, w = codes.shape[-2:]
    return codes.reshape(*codes.shape[:-2], h * w)


def unflatten(tokens, shape: tuple[int, int]):
    """Token sequences [B, h·w] → code grids [B, h, w] ([h·w] → [h, w]); `shape` is the grid's (h, w)."""
    tokens = tokens if hasattr(tokens, "reshape") else _array(tokens)
    h, w = (int(v) for v in shape)
    if tokens.ndim not in (1, 2) or tokens.shape[-1] != h * w:
        raise ValueError(f"unflatten takes sequences [h·w] or [B, h·w] with h·w = {h}·{w} = {h * w}, got shape "
                         f"{tuple(tokens.shape)}")
    return tokens.reshape(*tokens.shape[:-1], h, w)


def _array(values):
    import numpy as np

    return np.asarray(values)


# -- metrics ---------------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of two images of one shape (uint8 by default: data_range 255); inf when identical."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs images of one shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else float(10 * np.log10(data_range**2 / mse))
