"""The benchmark suite: one command measures everything and writes bench/results/<device>.json + docs/BENCHMARKS.md.

    nice -n 19 python -m bench                       # CPU, default model (shipped, else a random-init copy), < 10 min
    python -m bench --smoke --out /tmp/b.json --doc /tmp/B.md   # tiny model and sizes, seconds (CI)
    python -m bench --device cuda                    # adds ORT CUDA fp32/fp16 and a GPU server (on a GPU machine)
    python -m bench --only probe model               # some sections (the others are left out of the JSON)

Sections: probe (MatMul limit), model (FLOPs, throughput: torch eager vs ORT), profile (ORT per-op time), tuning (ORT
session variants), serving (load generator vs a real `vqtok serve`, and worker memory), training (rotation vs STE
step time, training peak RSS), pipeline (dataset tokenization vs raw ORT), gpu. Each section is bounded in time;
a failing section is recorded under "errors" and the rest still runs. The priority training job
(`pgrep -f "vqtok train /work/shared"`) is checked at every section boundary and reported; `--wait-training-until
HH:MM` (UTC) waits for it to finish first, then measures anyway at that time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from . import common
from .common import DOC, REPO, RESULTS_DIR, cores, machine, now_utc, other_load, resolve_model

FULL = dict(probe_n=2048, size=256, batches=[1, 8, 32], headline_batch=8, model_max_s=8.0, model_max_rounds=8,
            model_min_rounds=3,
            profile_batch=8, profile_runs=2, tuning_batch=8, tuning_max_s=20.0, tuning_rounds=3,
            concurrency=[1, 8, 32], endpoints=["encode-npy", "encode-json", "decode", "reconstruct"],
            serve_s=5.0, serve_max_requests=240, raw_s=1.5, step_crop=128, step_batch=4, step_repeats=6,
            rss_steps=3, rss_overrides=[], pipeline_images=48, pipeline_batch=8, pipeline_rounds=3,
            serve_variants=[{"label": "batch window 10 ms", "batch_timeout": 0.01, "threads": "cores",
                             "cells": [["encode-npy", 1], ["decode", 1], ["encode-npy", 8]]},
                            {"label": "1 thread per worker (cores split across the 3 endpoints)", "threads": 1,
                             "cells": [["encode-npy", 1], ["encode-npy", 8]]}])
SMOKE = dict(probe_n=128, size=64, batches=[1, 2], headline_batch=2, model_max_s=0.3, model_max_rounds=3,
             model_min_rounds=2,
             profile_batch=2, profile_runs=1, tuning_batch=2, tuning_max_s=0.5, tuning_rounds=2,
             concurrency=[1, 2], endpoints=["encode-npy", "encode-json", "decode", "reconstruct"], serve_s=0.5,
             serve_max_requests=6, raw_s=0.2, step_crop=32, step_batch=2, step_repeats=2, rss_steps=1,
             rss_overrides=["batch_size=2", "crop=32", "perceptual=\"none\"", "workers=0"], pipeline_images=8,
             pipeline_batch=4, pipeline_rounds=1,
             serve_variants=[{"label": "batch window 2 ms", "batch_timeout": 0.002, "threads": 1,
                              "cells": [["encode-npy", 1]]}])
SECTIONS = ("probe", "model", "profile", "tuning", "serving", "training", "pipeline", "gpu")
TINY = REPO / "tests" / "fixtures" / "tiny-model"


def wait_for_training(until: str | None, pattern: str) -> dict:
    """Poll until no `pattern` process runs, or until the UTC time `until` (HH:MM) passes."""
    info = {"waited_s": 0.0, "gave_up_waiting": False}
    if not until:
        return info
    hh, mm = (int(x) for x in until.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if deadline < now - dt.timedelta(hours=12):
        deadline += dt.timedelta(days=1)
    t0 = time.time()
    while other_load(pattern):
        if dt.datetime.now(dt.timezone.utc) >= deadline:
            info["gave_up_waiting"] = True
            break
        print(f"[bench] waiting for `{pattern}` to finish (until {until} UTC)...", flush=True)
        time.sleep(30)
    info["waited_s"] = time.time() - t0
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes: seconds, for CI")
    ap.add_argument("--model", help="model folder or id (default: the shipped default model when present, else a "
                    "random-init model of the default config, built once into $VQTOK_BENCH_CACHE)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: also measure ORT CUDA fp32/fp16 and serve on the GPU")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    ap.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="leave these sections out")
    ap.add_argument("--out", help="results JSON (default bench/results/<device>.json)")
    ap.add_argument("--doc", help=f"Markdown report (default {DOC.relative_to(REPO)}; 'none' to skip)")
    ap.add_argument("--machine-note", default="", help='free text for the report, e.g. "2 CPU cores, 24 GiB, shared VM"')
    ap.add_argument("--wait-training-until", metavar="HH:MM", help="wait (UTC) for the priority training job to end")
    ap.add_argument("--training-pattern", default=common.TRAINING_PATTERN)
    args = ap.parse_args(argv)
    if args.smoke and (not args.out or not args.doc):
        ap.error("--smoke needs --out and --doc (the committed results are full runs)")

    cfg = dict(SMOKE if args.smoke else FULL)
    out_path = Path(args.out) if args.out else RESULTS_DIR / f"{args.device}.json"
    doc_path = None if args.doc == "none" else Path(args.doc) if args.doc else DOC
    sections = [s for s in (args.only or SECTIONS) if s not in args.skip]
    validity = {"pattern": args.training_pattern, "seen_in": []}
    validity |= wait_for_training(args.wait_training_until, args.training_pattern)

    t_start = time.time()
    given = argv if argv is not None else sys.argv[1:]
    command = "nice -n 19 python -m bench" + (" " + shlex.join(given) if given else "")
    res: dict = {"date_utc": now_utc(), "machine": machine(), "errors": {}, "notes": [],
                 "config": cfg | {"smoke": args.smoke, "device": args.device, "sections": sections,
                                  "out": str(out_path), "command": command, "machine_note": args.machine_note},
                 "validity": validity}

    if args.smoke and not args.model:
        model_dir, how = TINY, "tiny test fixture (smoke)"
    else:
        model_dir, how = resolve_model(args.model)
    from vqtok.export.runtime import OnnxTokenizer

    tok = OnnxTokenizer.from_pretrained(model_dir)
    graph_files = f"{Path(tok.encoder._model_path).name}, {Path(tok.decoder._model_path).name}"
    res |= {"model_dir": str(model_dir), "model_choice": how, "model_id": tok.metadata.model_id,
            "image_size": tok.metadata.image_size, "graph_files": graph_files}
    size = cfg["size"]
    del tok
    print(f"[bench] {now_utc()}: model {model_dir} ({how}); sections {', '.join(sections)}", flush=True)

    def check_load(section: str) -> None:
        if other_load(args.training_pattern):
            validity["seen_in"].append(section)
            validity["training_seen"] = True

    def run(section: str, fn) -> None:
        if section not in sections:
            return
        check_load(section)
        res.setdefault("load_avg_1min", {})[section] = round(os.getloadavg()[0], 2)
        t0 = time.time()
        print(f"[bench] {section} ...", flush=True)
        try:
            res[section] = fn()
        except Exception as err:  # record and go on: one broken section must not lose the others
            res["errors"][section] = f"{type(err).__name__}: {err}"
            res[section] = res.get(section) or {"skipped": f"failed: {type(err).__name__}: {err}"}
            traceback.print_exc()
        res.setdefault("section_s", {})[section] = time.time() - t0
        print(f"[bench] {section} done in {time.time() - t0:.0f} s", flush=True)
        check_load(section + " (end)")

    from . import model_speed, ort_profile, probe, serving, training, tuning

    run("probe", lambda: probe.probe(cfg["probe_n"], max_s=4.0 if not args.smoke else 0.3))
    flops: dict = {}

    def model_section() -> dict:
        flops.update(model_speed.count_flops(model_dir, size))
        rows = model_speed.throughput(model_dir, cfg["batches"], size, flops, "cpu", cfg["model_max_s"],
                                      cfg["model_max_rounds"], probe_n=cfg["probe_n"], min_rounds=cfg["model_min_rounds"])
        return {"flops": flops, "rows": rows, "graph_files": graph_files}

    run("model", model_section)
    if "probe" in sections and "model" in sections:  # the limit again, after the model: drift shows, max is used
        try:
            res["probe_end"] = probe.probe(cfg["probe_n"], max_s=4.0 if not args.smoke else 0.3)
        except Exception as err:
            res["errors"]["probe_end"] = f"{type(err).__name__}: {err}"
    run("profile", lambda: ort_profile.profile(model_dir, cfg["profile_batch"], size,
                                               flops or model_speed.count_flops(model_dir, size), cfg["profile_runs"]))
    run("tuning", lambda: tuning.tuning(model_dir, cfg["tuning_batch"], size, cfg["tuning_max_s"], cfg["tuning_rounds"]))

    def serving_section() -> dict:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        log = out_path.with_suffix(".serve.log")
        variants = [v | {"threads": cores() if v.get("threads") == "cores" else v.get("threads")}
                    for v in cfg["serve_variants"]]
        out = serving.serving(model_dir, cfg["concurrency"], cfg["endpoints"], cfg["serve_s"], cfg["serve_max_requests"],
                              threads=1 if args.smoke else None, raw_s=cfg["raw_s"], log=log, variants=variants)
        log.unlink(missing_ok=True)
        return out

    run("serving", serving_section)

    def training_section() -> dict:
        if args.smoke:
            from .rotation_vs_ste import SMOKE as STUDY_SMOKE

            mcfg = dict(STUDY_SMOKE["model"])
        else:
            mcfg = training.default_model_config(model_dir)
        return {"step_time": training.step_time(mcfg, cfg["step_crop"], cfg["step_batch"], cfg["step_repeats"],
                                                quant_max_s=0.3 if args.smoke else 3.0),
                "training_rss": training.training_rss(mcfg, cfg["rss_steps"], overrides=cfg["rss_overrides"])}

    run("training", training_section)

    def pipeline_section() -> dict:
        from vqtok.pipeline import bench as pbench

        return pbench.main([str(REPO / "tests" / "fixtures" / "photos"), "--model", str(model_dir), "--batch-size",
                            str(cfg["pipeline_batch"]), "--images", str(cfg["pipeline_images"]), "--rounds",
                            str(cfg["pipeline_rounds"])])

    run("pipeline", pipeline_section)

    def gpu_section() -> dict:
        if args.device != "cuda":
            return {"skipped": "CPU run (no --device cuda)"}
        import onnxruntime as ort

        from . import gpu

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return {"skipped": "onnxruntime has no CUDAExecutionProvider"}
        try:
            OnnxTokenizer.from_pretrained(model_dir, device="cuda")
        except Exception as err:  # no GPU / driver: ORT refuses CUDA (the runtime checks it really activated)
            return {"skipped": f"no usable CUDA device ({type(err).__name__}: {str(err)[:160]})"}
        if args.smoke:
            return gpu.run(model_dir, size=size, batches=[1, 2], max_s=0.3, serve_s=0.5, concurrency=[1, 2],
                           flops=flops or None)
        return gpu.run(model_dir, size=size, flops=flops or None)

    if "gpu" in sections:
        run("gpu", gpu_section)
    res["wall_s"] = time.time() - t_start
    res["date_utc_end"] = now_utc()
    if args.device == "cpu" and "gpu" in sections:
        res["gpu"] = {"skipped": f"no GPU on this machine / CPU run ({cores()} CPU cores); use --device cuda"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"[bench] wrote {out_path} ({res['wall_s']:.0f} s)", flush=True)
    if doc_path is not None:
        from .report import render

        doc_path.parent.mkdir(parents=True, exist_ok=True)
        doc_path.write_text(render(res))
        print(f"[bench] wrote {doc_path}", flush=True)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
