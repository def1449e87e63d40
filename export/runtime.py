"""`OnnxTokenizer`: the torch-free runtime over the exported graphs (server, CLI local mode, dataset tokenization).

Token layout: `encode` returns int64 codes [B, h, w] = [B, H/f, W/f], a row-major grid; position (i, j) covers
pixels [i·f, (i+1)·f) × [j·f, (j+1)·f). Sequence models flatten it in raster order (row by row:
`codes.reshape(B, h * w)`); `decode` takes the grid back ([B, h, w] or a single [h, w]). Values are integers in
[0, K), K = `metadata.codebook_size`; the vocabulary is identified by `metadata.codebook_sha256`.

Imports numpy, Pillow and onnxruntime only (never torch).
"""
from __future__ import annotations

import ctypes
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from vqtok.tokenizer.contract import GRAPHS, PRECISIONS, ModelMetadata, graph_files, unflatten
from vqtok.tokenizer.hub import resolve_model_dir
from vqtok.tokenizer.preprocess import Crop, ImageSource, prepare_batch

_shared_arena = {"registered": False, "lock": threading.Lock()}


# cuDNN's exhaustive algorithm search runs once per new input shape and took ~0.5 s per request on an H200 under
# dynamic batching (every batch size is a new shape); the heuristic choice has no such first-call cost.
# Fixed-shape batch jobs can ask for {"cudnn_conv_algo_search": "EXHAUSTIVE"}.
_CUDA_DEFAULTS = {"cudnn_conv_algo_search": "HEURISTIC"}


def import_onnxruntime():
    """The `onnxruntime` module, from whichever wheel is installed (onnxruntime-gpu or onnxruntime), or an error
    saying which extra installs it."""
    try:
        import onnxruntime
    except ModuleNotFoundError as err:
        if err.name != "onnxruntime":
            raise
        raise ModuleNotFoundError(
            "ONNX Runtime is not installed: pip install 'vqtok[serve]' (onnxruntime-gpu: Linux x86-64, CUDA or CPU) "
            "or 'vqtok[serve-cpu]' (onnxruntime: any platform, CPU only)", name="onnxruntime") from None
    return onnxruntime


class InvalidCodes(ValueError):
    """Codes a model cannot decode: not integers, out of [0, K), wrong shape, or too large."""


def validate_codes(codes, codebook_size: int, factor: int, max_side: int | None = None,
                   max_batch: int | None = None) -> np.ndarray:
    """Check codes a model with this K, f and max_side can decode; return them as int32 [B, h, w].

    Accepts a numpy integer array or nested lists, shaped [h, w] (one image) or [B, h, w]. Raises `InvalidCodes`
    (a ValueError) saying what is wrong: non-integers (floats, bools, strings), values outside [0, K), a ragged
    or empty grid, or a grid whose image (h·f × w·f) exceeds max_side.
    """
    try:
        arr = np.asarray(codes)
    except ValueError as err:  # ragged nested lists
        raise InvalidCodes(f"codes must be a rectangular [h, w] or [B, h, w] grid of integers ({err})") from None
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidCodes(f"codes must be integers, got dtype {arr.dtype}; pass the int grid `encode` returned")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise InvalidCodes(f"codes must be a non-empty [h, w] or [B, h, w] grid, got shape {arr.shape}")
    b, h, w = arr.shape
    if max_side is not None and max(h, w) * factor > max_side:
        raise InvalidCodes(f"a {h}×{w} code grid decodes to {h * factor}×{w * factor} pixels; this model allows "
                           f"at most {max_side} per side ({max_side // factor} codes)")
    if max_batch is not None and b > max_batch:
        raise InvalidCodes(f"{b} code grids in one call; the limit is {max_batch}: split the batch")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= codebook_size:
        raise InvalidCodes(f"codes must lie in [0, {codebook_size}), got values in [{lo}, {hi}]; were they made by "
                           f"a model with a different codebook?")
    return np.ascontiguousarray(arr, dtype=np.int32)


# ORT's intra-op threads spin-wait between ops by default. Where the same cores also decode images or serve HTTP,
# spinning threads burn those cycles: session config for such processes (pipeline/work.py, server/apis.py measure it)
NO_SPIN = {"session.intra_op.allow_spinning": "0"}


class OnnxTokenizer:
    """Encode images to codes and decode codes to images with ONNX Runtime. Build with `from_pretrained`."""

    def __init__(self, encoder_path: str | Path | None, decoder_path: str | Path | None, device: str = "cpu",
                 threads: int | None = None, max_batch: int | None = None,
                 session_config: dict[str, str] | None = None, cuda_options: dict[str, str] | None = None,
                 mem_pattern: bool = True, shared_arena: bool = False):
        ort = import_onnxruntime()

        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if encoder_path is None and decoder_path is None:
            raise ValueError("give an encoder path, a decoder path or both")
        self.device, self.max_batch = device, max_batch
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT plans one activation block per distinct input shape; with the arena those blocks pile up when batch
        # sizes vary (a server's dynamic batches 1..8: 2.4 GiB instead of 1.1 GiB for both 256² graphs on CPU)
        so.enable_mem_pattern = mem_pattern
        if shared_arena:  # one CPU arena for the sessions that never run at once: the largest one's memory, not the sum
            _register_shared_arena(ort)
            so.add_session_config_entry("session.use_env_allocators", "1")
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        # e.g. {"session.intra_op.allow_spinning": "0"} when other work shares the cores (ORT's config keys)
        for key, value in (session_config or {}).items():
            so.add_session_config_entry(key, str(value))
        providers: list = ["CPUExecutionProvider"]
        if device == "cuda":
            if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* pip packages, when those are installed
                ort.preload_dlls()
            opts = {**_CUDA_DEFAULTS, **_env_cuda_options(), **(cuda_options or {})}
            providers = [("CUDAExecutionProvider", {k: str(v) for k, v in opts.items()}), "CPUExecutionProvider"]
        # a graph that is not needed is not loaded: its session would hold weights and, once run, an arena
        self.encoder, self.decoder = (None if p is None else ort.InferenceSession(str(p), so, providers=providers)
                                      for p in (encoder_path, decoder_path))
        sessions = [s for s in (self.encoder, self.decoder) if s is not None]
        if device == "cuda":
            for s in sessions:  # ORT silently falls back to the CPU when CUDA fails to load
                if s.get_providers()[0] != "CUDAExecutionProvider":
                    raise RuntimeError(
                        f"CUDAExecutionProvider did not activate (active: {s.get_providers()}, available: "
                        f"{ort.get_available_providers()}); install onnxruntime-gpu with a matching CUDA/cuDNN "
                        "or use device='cpu'")
        metas = [s.get_modelmeta().custom_metadata_map for s in sessions]
        if len({m.get("codebook_sha256") for m in metas}) > 1:
            raise ValueError(f"{encoder_path} and {decoder_path} come from different models (codebook sha256 "
                             "differs); re-export both with `vqtok export MODEL`")
        self.metadata = ModelMetadata.from_props(metas[0])

    @property
    def graphs(self) -> tuple[str, ...]:
        """The graphs this tokenizer loaded: ("encoder", "decoder") unless built with fewer."""
        return tuple(g for g, s in zip(GRAPHS, (self.encoder, self.decoder)) if s is not None)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str = "cpu", threads: int | None = None,
                 precision: str = "fp32", optimized: bool | None = None, max_batch: int | None = None,
                 session_config: dict[str, str] | None = None, cuda_options: dict[str, str] | None = None,
                 graphs: Sequence[str] = GRAPHS, mem_pattern: bool = True,
                 shared_arena: bool = False) -> "OnnxTokenizer":
        """Load `encoder.onnx` / `decoder.onnx` from a model folder or shipped id.

        precision "fp16" loads the half-precision pair (for GPUs). `optimized` picks the ORT offline-optimised CPU
        copies (`*.cpu-opt.onnx`); None uses them when present on CPU at fp32. `threads` sets intra-op threads
        (default: ORT's choice; `VQTOK_ORT_THREADS` overrides). `session_config` adds ORT session config entries;
        `cuda_options` are CUDAExecutionProvider options (e.g. {"prefer_nhwc": "1"}), on top of the JSON object in
        `VQTOK_ORT_CUDA_OPTIONS`. `graphs` picks what to load: ("encoder",) can only encode, ("decoder",) only
        decode (a process that needs one saves the other's memory). `mem_pattern` False turns off ORT's per-shape
        memory pattern: bounded memory when batch shapes vary (a server), at no measured CPU speed cost.
        `shared_arena` puts the CPU allocations of every session in the process that sets it (encoder, decoder,
        other models) in one ORT arena: for sessions run one at a time, e.g. an inference worker's.
        """
        d = resolve_model_dir(path_or_id)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not graphs or any(g not in GRAPHS for g in graphs):
            raise ValueError(f"graphs must be a non-empty subset of {GRAPHS}, got {graphs!r}")
        keep = [g in graphs for g in GRAPHS]
        names = tuple(n for n, k in zip(graph_files(precision), keep) if k)
        opt = tuple(n for n, k in zip(graph_files(precision, optimized=True), keep) if k) if precision == "fp32" \
            else None
        if optimized is None:
            optimized = device == "cpu" and opt is not None and all((d / n).is_file() for n in opt)
        if optimized:
            if opt is None or not all((d / n).is_file() for n in opt):
                raise FileNotFoundError(f"{d} has no ORT-optimised {precision} graphs; run `vqtok export {d} "
                                        "--optimize`")
            names = opt
        missing = [n for n in names if not (d / n).is_file()]
        if missing:
            flag = " --fp16" if precision == "fp16" else ""
            raise FileNotFoundError(f"{d} has no {', '.join(missing)}; run `vqtok export {d}{flag}` first")
        threads = threads or int(os.environ.get("VQTOK_ORT_THREADS", "0")) or None
        enc, dec = d / names[0] if keep[0] else None, d / names[-1] if keep[1] else None
        return cls(enc, dec, device=device, threads=threads, max_batch=max_batch, session_config=session_config,
                   cuda_options=cuda_options, mem_pattern=mem_pattern, shared_arena=shared_arena)

    @classmethod
    def from_dir(cls, path_or_id: str | Path, **kwargs) -> "OnnxTokenizer":
        """Deprecated name of `from_pretrained` (the name `Tokenizer` uses for the same idea)."""
        warnings.warn("OnnxTokenizer.from_dir is deprecated; use OnnxTokenizer.from_pretrained", DeprecationWarning,
                      stacklevel=2)
        return cls.from_pretrained(path_or_id, **kwargs)

    # convenience views of the metadata
    @property
    def factor(self) -> int:
        return self.metadata.factor

    @property
    def codebook_size(self) -> int:
        return self.metadata.codebook_size

    # -- encode ----------------------------------------------------------------------------------------------------
    def prepare(self, images: ImageSource | Sequence[ImageSource], policy: str = "resize",
                max_pixels: int | None = None) -> tuple[np.ndarray, list[Crop]]:
        """Images → (uint8 [B, H, W, 3] batch, crops), by `tokenizer.preprocess.prepare_batch` with this model's
        S and f (`native` keeps each image's size, padded to a multiple of f: one batch shares one padded size)."""
        m = self.metadata
        return prepare_batch(images, policy, size=m.image_size, factor=m.factor, max_pixels=max_pixels)

    def encode_array(self, batch: np.ndarray, release: bool = False) -> np.ndarray:
        """uint8 [B, H, W, 3] (H, W multiples of f, at most max_side) → int64 codes [B, H/f, W/f].

        `release`: give the memory this call needed back to the OS afterwards (see `release_memory`), for an
        outlier in a long-running process; costs re-allocation on the next call."""
        m = self.metadata
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected uint8 [B, H, W, 3], got {batch.dtype} {batch.shape}")
        b, h, w, _ = batch.shape
        if b == 0 or h == 0 or w == 0 or h % m.factor or w % m.factor:
            raise ValueError(f"H and W must be positive multiples of {m.factor}, got {h}×{w}; use prepare()")
        if max(h, w) > m.max_side:
            raise ValueError(f"image is {h}×{w}; this model allows at most {m.max_side} per side: use policy "
                             "'resize' or downscale it first")
        if self.max_batch is not None and b > self.max_batch:
            raise ValueError(f"{b} images in one call; the limit is {self.max_batch}: split the batch")
        if self.encoder is None:
            raise RuntimeError("this OnnxTokenizer has no encoder: it was loaded with graphs=('decoder',)")
        feeds = {"images": np.ascontiguousarray(batch)}
        codes = self.encoder.run(None, feeds, _shrink_options() if release else None)[0]
        if release:
            release_memory()
        return codes.astype(np.int64)

    def encode(self, images: ImageSource | Sequence[ImageSource], policy: str = "resize",
               max_pixels: int | None = None) -> np.ndarray:
        """PIL images, bytes, paths or uint8 arrays (one or a list, or a uint8 [B, H, W, 3] batch) → int64 [B, h, w]."""
        batch, _ = self.prepare(images, policy, max_pixels=max_pixels)
        return self.encode_array(batch)

    # -- decode ----------------------------------------------------------------------------------------------------
    def validate(self, codes) -> np.ndarray:
        """`validate_codes` with this model's K, f, max_side and batch limit."""
        m = self.metadata
        return validate_codes(codes, m.codebook_size, m.factor, m.max_side, self.max_batch)

    def decode(self, codes, release: bool = False) -> np.ndarray:
        """Codes [B, h, w] or [h, w] (ints in [0, K)) → uint8 images [B, h·f, w·f, 3]. Raises `InvalidCodes`.
        `release`: as in `encode_array`."""
        if self.decoder is None:
            raise RuntimeError("this OnnxTokenizer has no decoder: it was loaded with graphs=('encoder',)")
        images = self.decoder.run(None, {"codes": self.validate(codes)}, _shrink_options() if release else None)[0]
        if release:
            release_memory()
        return images

    def decode_sequence(self, tokens, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Token sequences [B, h·w] (or one [h·w]) in raster order → uint8 images [B, h·f, w·f, 3].

        `shape` is the code grid's (h, w); default the model's square grid (S/f, S/f).
        """
        m = self.metadata
        return self.decode(unflatten(np.asarray(tokens), shape or (m.image_size // m.factor,) * 2))

    def __repr__(self) -> str:
        m = self.metadata
        return (f"OnnxTokenizer({m.model_id!r}, f={m.factor}, K={m.codebook_size}, {m.precision}, "
                f"device={self.device!r})")


def _shrink_options():
    """ORT run options that hand the CPU arena's unused regions back when the run ends (ORT's
    `memory.enable_memory_arena_shrinkage`): without them a worker keeps its largest request's activations forever."""
    ort = import_onnxruntime()
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim`; freed blocks below the mmap threshold otherwise
    stay in the process). A no-op where glibc is missing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _register_shared_arena(ort) -> None:
    """Register, once per process, the CPU arena (ORT's default settings) that `shared_arena` sessions use."""
    with _shared_arena["lock"]:
        if not _shared_arena["registered"]:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena["registered"] = True


def _env_cuda_options() -> dict[str, str]:
    """CUDAExecutionProvider options from `VQTOK_ORT_CUDA_OPTIONS` (a JSON object), e.g. '{"prefer_nhwc": "1"}'."""
    raw = os.environ.get("VQTOK_ORT_CUDA_OPTIONS", "").strip()
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"VQTOK_ORT_CUDA_OPTIONS must be a JSON object of CUDA provider options: {err}") from None
    if not isinstance(opts, dict):
        raise ValueError('VQTOK_ORT_CUDA_OPTIONS must be a JSON object, e.g. {"prefer_nhwc": "1"}')
    return {str(k): str(v) for k, v in opts.items()}
