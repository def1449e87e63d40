"""Local-engine throughput vs raw ONNX Runtime encode throughput, same model, batch size and images, one process.

    python -m vqtok.pipeline.bench SRC --model MODEL [--batch-size 32] [--images 512] [--device cpu] [--workers N]

Raw: `OnnxTokenizer.encode_array` on one already-prepared batch, called repeatedly (no decoding, no I/O), on the
pipeline's session settings and on ORT's defaults; the faster of the two is the comparator.
Pipeline: `tokenize_dataset` (listing, read, decode, resize, encode, Parquet shards, manifest) on SRC's images
repeated to --images items, with the already loaded sessions (session creation is a one-off, not throughput) and
after one warm-up run of --batch-size items (raw gets one warm-up call). Raw runs alternate with pipeline runs;
medians are reported.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def raw_throughput(tok, batch: np.ndarray, n_images: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of `encode_array` on `batch`."""
    tok.encode_array(batch)  # warm-up
    calls = max(1, -(-n_images // len(batch)))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        tok.encode_array(batch)
    n = calls * len(batch)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2, help="pipeline runs, each between two raw runs (medians)")
    args = ap.parse_args(argv)

    from vqtok.export.runtime import OnnxTokenizer

    from .run import tokenize_dataset
    from .sources import list_source
    from .work import Prep, Prepared, load_item, load_tokenizer

    items = [it for it in list_source(args.src) if it.offset < 0]
    if not items:
        raise SystemExit(f"no image files in {args.src}")
    tok = load_tokenizer(args.model, args.device)  # what `vqtok tokenize` encodes with
    # Raw also runs on ORT's default session settings, and the faster of the two is the comparator: the pipeline's
    # own session settings can then never lower the bar.
    toks = {"pipeline": tok, "ort_default": OnnxTokenizer.from_pretrained(args.model, device=args.device)}
    m = tok.metadata
    prep = Prep("resize", m.image_size, m.factor, 64_000_000, 64 << 20, 0)
    prepared = [p for p in (load_item(i, it, prep) for i, it in enumerate(items)) if isinstance(p, Prepared)]
    batch = np.stack([p.image for p in itertools.islice(itertools.cycle(prepared), args.batch_size)])
    raws: dict[str, list] = {k: [] for k in toks}
    pipes: list = []

    def raw_round() -> None:
        for k, t in toks.items():
            raws[k].append(raw_throughput(t, batch, args.images))

    raw_round()
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "paths.txt"
        paths = itertools.islice(itertools.cycle(items), args.images)
        lst.write_text("".join(str(Path(it.path).resolve()) + "\n" for it in paths))
        # Warm-up run, as raw gets a warm-up call: a process's first run pays one-off costs that are not throughput
        # (pyarrow imports pandas on its first array, ~0.2 s; `onnx` is imported to read the model's metadata).
        warm = Path(tmp) / "warm.txt"
        warm.write_text("".join(str(Path(it.path).resolve()) + "\n"
                                for it in itertools.islice(itertools.cycle(items), args.batch_size)))
        tokenize_dataset(str(warm), Path(tmp) / "warm", args.model, batch_size=args.batch_size, device=args.device,
                         workers=args.workers, progress=False, tokenizer=tok)
        for r in range(args.rounds):  # raw, pipeline, raw, pipeline, ..., raw: background load hits both alike
            t0, c0 = time.perf_counter(), time.process_time()
            man = tokenize_dataset(str(lst), Path(tmp) / f"out{r}", args.model, batch_size=args.batch_size,
                                   device=args.device, workers=args.workers, shard_size=max(args.batch_size, 256),
                                   progress=False, tokenizer=tok)
            pipes.append((args.images / (time.perf_counter() - t0), args.images / (time.process_time() - c0)))
            if man["totals"]["rows"] != args.images:
                raise SystemExit(f"pipeline wrote {man['totals']['rows']} rows of {args.images}: see its errors")
            raw_round()
    med = {k: np.median(v, axis=0) for k, v in raws.items()}
    best = max(med, key=lambda k: med[k][0])
    raw, same, pipe = med[best], med["pipeline"], np.median(pipes, axis=0)
    out = {"model": m.model_id, "device": args.device, "batch_size": args.batch_size, "images": args.images,
           "image_size": m.image_size, "raw_encode_img_s": round(raw[0], 1), "raw_session": best,
           "raw_pipeline_session_img_s": round(med["pipeline"][0], 1),
           "raw_ort_default_session_img_s": round(med["ort_default"][0], 1),
           "pipeline_img_s": round(pipe[0], 1), "ratio": round(pipe[0] / raw[0], 3),
           # images per CPU-second of the whole process (all threads), raw on the pipeline's own session: what the
           # pipeline costs on top of the same encoder, independent of other load on the machine
           "raw_img_per_cpu_s": round(same[1], 2), "pipeline_img_per_cpu_s": round(pipe[1], 2),
           "cpu_ratio": round(pipe[1] / same[1], 3),
           "raw_runs": {k: [round(x[0], 1) for x in v] for k, v in raws.items()},
           "pipeline_runs": [round(x[0], 1) for x in pipes]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
