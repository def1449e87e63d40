"""Deterministic shards and atomic Parquet writes.

Shard i holds items [i·N, (i+1)·N) of the source listing (N = shard size), so a resume recomputes exactly the
shards that are missing and nothing else. A shard is written to a hidden temporary file, fsynced and renamed with
`os.replace`: `shard-00012.parquet` either does not exist or is complete. The shard's error records (bad files)
travel inside the same file, in the Parquet key-value metadata `vqtok.errors`, so rows and errors commit together.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_GLOB = "shard-*.parquet"
ERRORS_META_KEY = b"vqtok.errors"
SHARD_META_KEY = b"vqtok.shard"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def shard_ranges(n_items: int, shard_size: int) -> list[range]:
    """Item index ranges of every shard: [i·N, min((i+1)·N, n_items))."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be ≥ 1, got {shard_size}")
    return [range(s, min(s + shard_size, n_items)) for s in range(0, n_items, shard_size)]


def code_type(codebook_size: int) -> pa.DataType:
    """int16 when every code fits (K ≤ 32768), else int32."""
    return pa.int16() if codebook_size <= 32768 else pa.int32()


def schema(codebook_size: int) -> pa.Schema:
    return pa.schema([
        pa.field("index", pa.int64(), nullable=False),  # position in the source listing
        pa.field("key", pa.string(), nullable=False),  # relative path, list entry, or `<tar>/<member>`
        pa.field("sha256", pa.string(), nullable=False),  # of the source file's bytes
        pa.field("width", pa.int32(), nullable=False),  # original image size (after EXIF orientation)
        pa.field("height", pa.int32(), nullable=False),
        pa.field("grid_h", pa.int32(), nullable=False),  # code grid; codes are row-major, length grid_h·grid_w
        pa.field("grid_w", pa.int32(), nullable=False),
        pa.field("codes", pa.list_(code_type(codebook_size)), nullable=False),
    ])


def pending_shards(dst: str | Path, n_shards: int) -> list[int]:
    """Shards without a finished file (a finished file only exists after its atomic rename)."""
    return [i for i in range(n_shards) if not (Path(dst) / shard_name(i)).is_file()]


def remove_temporaries(dst: str | Path) -> int:
    """Delete leftovers of a killed run (`.shard-*.tmp`); call while holding the run lock."""
    n = 0
    for p in Path(dst).glob(".shard-*.tmp*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def rows_to_table(rows: list[dict], codebook_size: int) -> pa.Table:
    """Rows (dicts with the schema's fields; `codes` an int array of any shape) → a table in the given order."""
    sch = schema(codebook_size)
    np_code = np.int16 if code_type(codebook_size) == pa.int16() else np.int32
    flat = [np.asarray(r["codes"]).reshape(-1).astype(np_code) for r in rows]
    lengths = np.fromiter((len(c) for c in flat), dtype=np.int32, count=len(flat))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    values = np.concatenate(flat) if flat else np.zeros(0, np_code)
    codes = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=sch.field("codes").type.value_type))
    cols = {name: pa.array([r[name] for r in rows], type=sch.field(name).type)
            for name in ("index", "key", "sha256", "width", "height", "grid_h", "grid_w")}
    return pa.Table.from_arrays([*cols.values(), codes], schema=sch)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(dst: str | Path, i: int, items: range, rows: list[dict], errors: list[dict],
                codebook_size: int) -> Path:
    """Write shard i atomically: rows sorted by index, errors in the file's metadata. Returns the final path."""
    dst = Path(dst)
    rows = sorted(rows, key=lambda r: r["index"])
    errors = sorted(errors, key=lambda e: e["index"])
    if len(rows) + len(errors) != len(items):
        raise RuntimeError(f"shard {i}: {len(rows)} rows + {len(errors)} errors != {len(items)} items (a bug)")
    table = rows_to_table(rows, codebook_size)
    table = table.replace_schema_metadata({
        ERRORS_META_KEY: json.dumps(errors).encode(),
        SHARD_META_KEY: json.dumps({"shard": i, "start": items.start, "stop": items.stop}).encode(),
    })
    final = dst / shard_name(i)
    tmp = dst / f".{final.name}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(dst)
    return final


def read_shard_info(path: str | Path) -> tuple[int, list[dict], dict]:
    """(row count, error records, shard range record) of a finished shard, from the Parquet footer only."""
    md = pq.read_metadata(path)
    kv = md.metadata or {}
    return md.num_rows, json.loads(kv.get(ERRORS_META_KEY, b"[]")), json.loads(kv.get(SHARD_META_KEY, b"{}"))


class ShardSink:
    """Collects rows and error records of any item order and writes each shard the moment it is complete.

    Used by both engines, so the write step (and with it resume and atomicity) is one code path.
    """

    def __init__(self, dst: str | Path, ranges: list[range], pending: list[int], codebook_size: int,
                 on_shard=None) -> None:
        self.dst, self.ranges, self.codebook_size, self.on_shard = Path(dst), ranges, codebook_size, on_shard
        self.shard_size = len(ranges[0]) if ranges else 1
        self.open = {i: ([], []) for i in pending}  # shard → (rows, errors)
        self.written: list[int] = []

    def add(self, rows: list[dict] = (), errors: list[dict] = ()) -> None:
        touched = set()
        for kind, records in ((0, rows), (1, errors)):
            for r in records:
                i = r["index"] // self.shard_size
                self.open[i][kind].append(r)
                touched.add(i)
        for i in sorted(touched):
            rows_i, errs_i = self.open[i]
            if len(rows_i) + len(errs_i) == len(self.ranges[i]):
                path = write_shard(self.dst, i, self.ranges[i], rows_i, errs_i, self.codebook_size)
                del self.open[i]
                self.written.append(i)
                if self.on_shard:
                    self.on_shard(i, path)

    def close(self) -> None:
        if self.open:
            raise RuntimeError(f"shards {sorted(self.open)[:10]} never completed (a bug: items were lost)")
