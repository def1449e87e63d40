"""Run state (for resume), the run lock, `manifest.json` + `errors.jsonl` (written last), and verification.

`.vqtok-run.json` is written when a run starts: the listing fingerprint and every setting that changes the rows.
A rerun into the same DST must match it, otherwise finished shards would mix two different runs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

from vqtok.tokenizer.hub import file_sha256

from .shards import read_shard_info, shard_name

STATE_FILE = ".vqtok-run.json"
LOCK_FILE = ".vqtok-run.lock"
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
FORMAT = "vqtok-tokens/1"
# Settings that must be equal for a resume; anything else (batch size, engine, workers, device) may change.
_RESUME_KEYS = ("listing_sha256", "n_items", "shard_size", "model", "preprocessing")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def run_lock(dst: Path) -> Iterator[None]:
    """One run per DST at a time (an advisory flock, released by the kernel when the process dies)."""
    with open(dst / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another `vqtok tokenize` is writing to {dst}; wait for it or pick another DST") from None
        yield


def check_or_write_state(dst: Path, state: dict) -> bool:
    """Record the run's settings, or check them against the recorded ones. Returns True when resuming."""
    path = dst / STATE_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in _RESUME_KEYS if old.get(k) != state.get(k)]
        if diff:
            raise ValueError(f"{dst} holds shards of a different run (differs in: {', '.join(diff)}); "
                             "rerun with the same source and settings, or use a new (empty) DST")
        return True
    if any(dst.glob("shard-*.parquet")):
        raise ValueError(f"{dst} has shard files but no {STATE_FILE}; use a new (empty) DST")
    atomic_write_text(path, json.dumps(state, indent=2))
    return False


def write_manifest(dst: Path, state: dict, n_shards: int) -> dict:
    """From the finished shards: `errors.jsonl` then `manifest.json` (both atomic). Call when no shard is missing."""
    shards, errors = [], []
    for i in range(n_shards):
        p = dst / shard_name(i)
        rows, errs, rng = read_shard_info(p)
        errors += errs
        shards.append({"file": p.name, "rows": rows, "errors": len(errs), "start": rng.get("start"),
                       "stop": rng.get("stop"), "bytes": p.stat().st_size, "sha256": file_sha256(p)})
    atomic_write_text(dst / ERRORS, "".join(json.dumps(e) + "\n" for e in errors))
    manifest = {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **{k: state[k] for k in ("vqtok_version", "source", "listing_sha256", "model", "model_source", "preprocessing",
                                 "code_dtype", "shard_size")},
        "columns": ["index", "key", "sha256", "width", "height", "grid_h", "grid_w", "codes"],
        "errors_file": ERRORS,
        "shards": shards,
        "totals": {"items": state["n_items"], "rows": sum(s["rows"] for s in shards), "errors": len(errors),
                   "shards": n_shards},
    }
    atomic_write_text(dst / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def verify(dst: str | Path) -> list[str]:
    """Check a finished DST against its manifest: files, checksums, row counts, coverage. Returns the problems."""
    dst = Path(dst)
    if not (dst / MANIFEST).is_file():
        return [f"{dst / MANIFEST} is missing: the run has not finished (rerun `vqtok tokenize` to resume)"]
    m = json.loads((dst / MANIFEST).read_text())
    problems, covered = [], 0
    for s in m["shards"]:
        p = dst / s["file"]
        if not p.is_file():
            problems.append(f"{s['file']}: missing")
            continue
        if file_sha256(p) != s["sha256"]:
            problems.append(f"{s['file']}: sha256 differs from the manifest")
        rows, errs, rng = read_shard_info(p)
        if rows != s["rows"] or len(errs) != s["errors"]:
            problems.append(f"{s['file']}: {rows} rows / {len(errs)} errors, manifest says {s['rows']} / {s['errors']}")
        if rows + len(errs) != rng.get("stop", 0) - rng.get("start", 0) or rng.get("start") != covered:
            problems.append(f"{s['file']}: rows + errors do not cover items [{rng.get('start')}, {rng.get('stop')})")
        covered = rng.get("stop", covered)
    t = m["totals"]
    if covered != t["items"] or sum(s["rows"] for s in m["shards"]) != t["rows"]:
        problems.append(f"totals: shards cover {covered} items / manifest says {t['items']}")
    n_err = sum(1 for line in (dst / ERRORS).read_text().splitlines() if line.strip()) if (dst / ERRORS).is_file() else -1
    if n_err != t["errors"]:
        problems.append(f"{ERRORS}: {n_err} lines, manifest says {t['errors']} errors")
    return problems
