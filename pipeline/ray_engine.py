"""Ray Data engine: read + prepare (CPU tasks) → an actor pool holding ONNX sessions → write (the driver's
`ShardSink`, the same writer as the local engine). Item work is `pipeline.work`, shared with the local engine.

Without `--ray-address` a local Ray is started with every CPU, and the encoder pool leaves CPUs free for the
read/prepare tasks (a pool taking every CPU starves them and the pipeline hangs). On a cluster every node needs
vqtok installed (or pass it in a runtime_env) and SRC on a shared filesystem at the same path.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from .shards import ShardSink
from .sources import Item
from .work import Prep, Prepared, encode_mixed, load_item, load_tokenizer

_PREPARE_TASK_MEMORY = 512 << 20
_PREP_SCHEMA = pa.schema([("index", pa.int64()), ("key", pa.string()), ("sha256", pa.string()),
                          ("width", pa.int32()), ("height", pa.int32()), ("ih", pa.int32()), ("iw", pa.int32()),
                          ("pixels", pa.binary()), ("error", pa.string())])
_OUT_SCHEMA = pa.schema([("index", pa.int64()), ("key", pa.string()), ("sha256", pa.string()),
                         ("width", pa.int32()), ("height", pa.int32()), ("grid_h", pa.int32()),
                         ("grid_w", pa.int32()), ("codes", pa.binary()), ("error", pa.string())])


def _prepare_batch(batch: pa.Table, prep: Prep) -> pa.Table:
    """Read + prepare a block of items (a Ray task); images travel as raw bytes with their height and width."""
    cols: dict[str, list] = {n: [] for n in _PREP_SCHEMA.names}
    for j, key, path, off, size in zip(*(batch.column(c).to_pylist() for c in ("index", "key", "path", "offset",
                                                                                "size"))):
        res = load_item(j, Item(key, path, off, size), prep)
        ok = isinstance(res, Prepared)
        vals = ((j, key, res.sha256, res.width, res.height, res.image.shape[0], res.image.shape[1],
                 res.image.tobytes(), "") if ok else (j, key, "", 0, 0, 0, 0, b"", json.dumps(res)))
        for n, v in zip(_PREP_SCHEMA.names, vals):
            cols[n].append(v)
    return pa.table(cols, schema=_PREP_SCHEMA)


class _Encoder:
    """An actor holding one `OnnxTokenizer` session pair; encodes prepared blocks grouped by shape."""

    def __init__(self, model: str, device: str, threads: int | None, batch_size: int) -> None:
        self.tok = load_tokenizer(model, device, threads)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        d = batch.to_pydict()
        prepared, out = [], {n: [] for n in _OUT_SCHEMA.names}
        for k in range(batch.num_rows):
            if d["error"][k]:
                for n, v in zip(_OUT_SCHEMA.names, (d["index"][k], d["key"][k], "", 0, 0, 0, 0, b"", d["error"][k])):
                    out[n].append(v)
                continue
            img = np.frombuffer(d["pixels"][k], np.uint8).reshape(d["ih"][k], d["iw"][k], 3)
            prepared.append(Prepared(d["index"][k], d["key"][k], d["sha256"][k], d["width"][k], d["height"][k], img))
        rows, errs = encode_mixed(self.tok, prepared, self.batch_size)
        for r in rows:
            for n, v in zip(_OUT_SCHEMA.names, (r["index"], r["key"], r["sha256"], r["width"], r["height"],
                                                r["grid_h"], r["grid_w"], r["codes"].astype("<i4").tobytes(), "")):
                out[n].append(v)
        for e in errs:
            for n, v in zip(_OUT_SCHEMA.names, (e["index"], e["key"], "", 0, 0, 0, 0, b"", json.dumps(e))):
                out[n].append(v)
        return pa.table(out, schema=_OUT_SCHEMA)


def _split_results(t: pa.Table) -> tuple[list[dict], list[dict]]:
    rows, errs = [], []
    for r in t.to_pylist():
        if r["error"]:
            errs.append(json.loads(r["error"]))
        else:
            codes = np.frombuffer(r.pop("codes"), "<i4").reshape(r["grid_h"], r["grid_w"])
            del r["error"]
            rows.append({**r, "codes": codes})
    return rows, errs


def _start_ray(address: str | None) -> bool:
    """Connect to `address`, or start a local Ray. Returns True when this call connected/started it (and must
    shut the connection down); False when the caller had already initialised Ray."""
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'vqtok[ray]' (or 'ray[data]')") from None
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return True  # disconnect when done (the cluster keeps running)
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", configure_logging=True)
    return True


def run_ray(model: str, device: str, items: list[Item], ranges: list[range], pending: list[int], sink: ShardSink,
            prep: Prep, batch_size: int, address: str | None = None, actors: int | None = None,
            progress: Callable[[int], Any] | None = None) -> None:
    """Encode the `pending` shards' items on Ray Data; rows and errors are handed to `sink` in the driver."""
    started = _start_ray(address)
    import ray

    try:
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        if device == "cuda":
            if not gpus:
                raise ValueError("--device cuda but the Ray cluster has no GPUs; use --device cpu")
            n, actor_res = actors or gpus, {"num_gpus": 1, "num_cpus": 1}
        else:  # one ORT thread per actor; keep a quarter of the CPUs (at least one) for reading and preparing
            n, actor_res = actors or max(1, cpus - max(1, cpus // 4)), {"num_cpus": 1}
        if n * actor_res["num_cpus"] >= cpus:
            raise ValueError(f"{n} encoder actors would take all {cpus} CPUs and leave none for reading: "
                             f"pass --ray-actors {max(1, cpus - 1)} or fewer")
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # shards complete in order: little buffering in the sink
        ctx.enable_progress_bars = False  # vqtok's own bar counts images
        ctx.print_on_execution_start = False
        idx = [j for i in pending for j in ranges[i]]
        table = pa.table({"index": pa.array(idx, pa.int64()), "key": [items[j].key for j in idx],
                          "path": [items[j].path for j in idx], "offset": [items[j].offset for j in idx],
                          "size": [items[j].size for j in idx]})
        blocks = [table.slice(s, batch_size) for s in range(0, len(idx), batch_size)]
        ds = ray.data.from_arrow(blocks)
        # Decoding a large photo takes a few hundred MB; the memory request also keeps Ray from fusing prepare into
        # the encoder actors (fusion needs equal resource requests), so decoding runs in parallel tasks and
        # overlaps with encoding instead of running serially inside the actors.
        ds = ds.map_batches(_prepare_batch, fn_kwargs={"prep": prep}, batch_format="pyarrow", batch_size=None,
                            num_cpus=1, memory=_PREPARE_TASK_MEMORY)
        ds = ds.map_batches(_Encoder, fn_constructor_kwargs={"model": os.path.abspath(model) if os.path.isdir(model)
                                                             else model, "device": device,
                                                             "threads": 1 if device == "cpu" else None,
                                                             "batch_size": batch_size},
                            batch_format="pyarrow", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=n),
                            **actor_res)
        for out in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            rows, errs = _split_results(out)
            sink.add(rows, errs)
            if progress:
                progress(out.num_rows)
    finally:
        if started:
            ray.shutdown()
