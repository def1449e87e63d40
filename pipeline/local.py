"""Local engine: a thread pool reads, decodes and prepares items ahead (Pillow and numpy release the GIL) while the
calling thread runs ONNX Runtime on same-shape batches and writes finished shards."""
from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from .shards import ShardSink
from .sources import Item
from .work import Prep, Prepared, ShapeBatcher, encode_group, load_item


def run_local(tok: Any, items: list[Item], ranges: list[range], pending: list[int], sink: ShardSink, prep: Prep,
              batch_size: int, workers: int, progress: Callable[[int], Any] | None = None) -> None:
    """Encode the `pending` shards' items with `tok` and hand rows/errors to `sink` (which writes the shards)."""
    indices: Iterable[int] = (j for i in pending for j in ranges[i])
    window = max(2 * batch_size, 4 * workers)
    shard_size = len(ranges[0])
    batcher, current = ShapeBatcher(batch_size), None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vqtok-prep") as pool:
        futures: collections.deque = collections.deque()

        def fill() -> None:
            while len(futures) < window:
                j = next(indices, None)
                if j is None:
                    return
                futures.append(pool.submit(load_item, j, items[j], prep))

        fill()
        while futures:
            res = futures.popleft().result()
            fill()
            shard = res.index // shard_size if isinstance(res, Prepared) else res["index"] // shard_size
            if shard != current:  # batches never span shards: a resumed shard is batched exactly as before
                _encode(tok, batcher.flush(), sink, progress)
                current = shard
            if isinstance(res, Prepared):
                _encode(tok, batcher.add(res), sink, progress)
            else:
                sink.add(errors=[res])
                if progress:
                    progress(1)
        _encode(tok, batcher.flush(), sink, progress)


def _encode(tok: Any, batches: list[list[Prepared]], sink: ShardSink, progress) -> None:
    for batch in batches:
        rows, errs = encode_group(tok, batch)
        sink.add(rows, errs)
        if progress:
            progress(len(batch))
