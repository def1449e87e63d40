"""`tokenize_dataset`: list SRC, check/record the run state, encode the missing shards with an engine, write the
manifest. Rerunning the same call resumes: finished shards are skipped, missing ones recomputed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .manifest import check_or_write_state, run_lock, write_manifest
from .shards import ShardSink, code_type, pending_shards, remove_temporaries, shard_ranges
from .sources import list_source, listing_sha256
from .work import Prep

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 64 << 20


def model_info(model: str) -> dict:
    """What the manifest records about the model, read from encoder.onnx's metadata (no session is created)."""
    from vqtok.tokenizer.contract import read_model_metadata
    from vqtok.tokenizer.hub import resolve_model_dir

    m, _ = read_model_metadata(resolve_model_dir(model))
    return {"id": m.model_id, "codebook_sha256": m.codebook_sha256, "codebook_size": m.codebook_size,
            "factor": m.factor, "image_size": m.image_size, "max_side": m.max_side}


def tokenize_dataset(src: str, dst: str | os.PathLike, model: str, policy: str = "resize", size: int | None = None,
                     batch_size: int = 32, engine: str = "local", shard_size: int = 1000, workers: int | None = None,
                     device: str = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                     ray_address: str | None = None, ray_actors: int | None = None, progress: bool = True,
                     on_shard: Callable[[int, Path], Any] | None = None, tokenizer: Any = None) -> dict:
    """Tokenize every image of SRC into Parquet shards under DST; returns the manifest (also in DST/manifest.json).

    `tokenizer`: an already loaded `OnnxTokenizer` of `model` for the local engine (saves loading the sessions).
    """
    from vqtok import __version__

    from vqtok.tokenizer.contract import POLICIES

    if policy not in POLICIES:
        raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if engine not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, got {engine!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be ≥ 1, got {batch_size}")
    info = model_info(model)
    f = info["factor"]
    if policy == "resize":
        size = size or info["image_size"]
        if size % f or size > info["max_side"]:
            raise ValueError(f"--size {size} must be a multiple of the model factor {f} and at most the model's "
                             f"max side {info['max_side']}")
    elif size:
        raise ValueError("--size applies to --policy resize only (native keeps each image's size)")
    else:
        size = 0
    prep = Prep(policy, size, f, max_pixels, max_bytes, info["max_side"] if policy == "native" else 0)
    items = list_source(src)
    if not items:
        raise FileNotFoundError(f"no images found in {src!r} (extensions: jpg, jpeg, png, webp, bmp, gif, tif, "
                                "tiff, ppm, pgm, pnm; or list the paths in a text file)")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    with run_lock(dst):
        ranges = shard_ranges(len(items), shard_size)
        state = {"vqtok_version": __version__, "source": str(src), "listing_sha256": listing_sha256(items),
                 "n_items": len(items), "shard_size": shard_size, "model": info,
                 "preprocessing": prep.to_dict(), "code_dtype": str(code_type(info["codebook_size"])),
                 "model_source": str(Path(model).resolve()) if Path(model).is_dir() else str(model)}
        check_or_write_state(dst, state)
        remove_temporaries(dst)
        pending = pending_shards(dst, len(ranges))
        sink = ShardSink(dst, ranges, pending, info["codebook_size"], on_shard)
        n_pending = sum(len(ranges[i]) for i in pending)
        bar = _progress_bar(n_pending, len(items) - n_pending, progress)
        try:
            if pending and engine == "local":
                from .local import run_local
                from .work import load_tokenizer

                tok = tokenizer or load_tokenizer(model, device)
                if tok.metadata.codebook_sha256 != info["codebook_sha256"]:
                    raise ValueError("the tokenizer passed is not the model given (codebook sha256 differs)")
                run_local(tok, items, ranges, pending, sink, prep, batch_size, workers or _default_workers(),
                          bar.update if bar else None)
            elif pending:
                from .ray_engine import run_ray

                run_ray(model, device, items, ranges, pending, sink, prep, batch_size, ray_address, ray_actors,
                        bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        sink.close()
        return write_manifest(dst, state, len(ranges))


def _default_workers() -> int:
    return max(2, min(16, (os.cpu_count() or 2)))


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="tokenize", smoothing=0.05, dynamic_ncols=True,
                postfix={"skipped (done before)": done} if done else None)
