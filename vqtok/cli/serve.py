"""`vqtok serve`: the tokenizer REST server (LitServe + ONNX Runtime, no torch).

With no arguments it serves every exported model under the shipped weights folder on CPU at
http://127.0.0.1:8000, the default being `tokenizer.hub.DEFAULT_MODEL`.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "Serve the tokenizer over REST: /v1/encode, /v1/decode, /v1/reconstruct, /v1/models, /health, /metrics."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", help="folder of model folders with encoder.onnx + decoder.onnx "
                   "(default: the shipped weights, $VQTOK_WEIGHTS_DIR)")
    p.add_argument("--model", action="append", metavar="ID", help="serve only this model id (repeatable)")
    p.add_argument("--default-model", metavar="ID", help="model used when a request names none")
    p.add_argument("--host", default=os.environ.get("VQTOK_HOST", "127.0.0.1"),
                   choices=["127.0.0.1", "0.0.0.0", "::"], help="bind address (default 127.0.0.1, $VQTOK_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("VQTOK_PORT", "8000")), help="default 8000")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: CUDA execution provider on every visible GPU (refuses to start without it)")
    p.add_argument("--workers", type=int, help="inference workers per device and endpoint (default 1 on CPU, 4 per GPU)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per worker "
                   "(default: cores / workers per endpoint)")
    p.add_argument("--max-batch-size", type=int, default=8, help="dynamic batch size limit (default 8)")
    p.add_argument("--ort-batch", type=int, help="images per ONNX Runtime call within a dynamic batch (default 1 on "
                   "CPU, where it measured fastest on 2 cores and holds the least memory; the whole batch on GPUs)")
    p.add_argument("--queue", choices=["direct", "litserve"], default="direct", help="how requests reach the "
                   "inference workers: direct (default: a Unix socket per worker, server/direct.py) or litserve "
                   "(LitServe's multiprocessing-manager queues; for A/B measurements, docs/PERFORMANCE.md)")
    p.add_argument("--shared-slots", type=int, help="direct queue: request images up to 512² travel in shared "
                   "memory, this many at once per HTTP process and worker (1 MiB each; default: server/direct.py "
                   "SLOTS); 0 sends them through the socket")
    p.add_argument("--polling-loop", action="store_true", help="with --queue litserve: workers collect batches with "
                   "LitServe's own loop, which polls the queue every 1 ms (for A/B measurements)")
    p.add_argument("--ort-spin", action="store_true", help="CPU: let ONNX Runtime's intra-op threads spin-wait "
                   "between ops (off by default: they take cycles from the HTTP processes; docs/PERFORMANCE.md)")
    p.add_argument("--png-in-worker", action="store_true", help="encode PNG replies in the inference worker instead "
                   "of the HTTP process (for A/B measurements; docs/PERFORMANCE.md)")
    p.add_argument("--batch-timeout", type=float, help="seconds a batch waits to fill (default: 0 on CPU, 0.002 on "
                   "GPUs)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="pixel limit per image (default 4096²)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit in MiB (default 32)")
    p.add_argument("--max-items", type=int, default=64, help="images or code grids in one multi-item request "
                   "(default 64)")
    p.add_argument("--api-key-file", metavar="PATH", help="require the key in this file (X-API-Key or Bearer) on "
                   "every route but /health* (default: $VQTOK_API_KEY; neither: no auth). Never on the command line: "
                   "`ps` shows every argument")
    p.add_argument("--api-key", help=argparse.SUPPRESS)  # refused with a message saying what to do instead
    p.add_argument("--api-servers", type=int, help="HTTP processes (default: one per core on "
                   "CPU, workers × devices on GPUs)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds from a parsed request to its reply, queue and inference (then 504; default 60)")
    p.add_argument("--large-slots", type=int, default=1, help="requests larger than the model's S×S (native "
                   "images, big code grids) queued at once per endpoint and HTTP process; more wait at the edge, so "
                   "small requests are not stuck behind many large ones (default 1)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive (then 408; default 30)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds for a request's line and headers (slow clients are disconnected; default 10)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGTERM/SIGINT")
    p.add_argument("--telemetry-window", type=float, default=300.0, metavar="SECONDS",
                   help="sliding window of the token telemetry in /metrics and /v1/models/ID/usage (10-3600, "
                        "default 300)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    import sys

    os.environ.pop("VQTOK_METRICS_DIR", None)  # a fresh metrics directory for this server
    for name, value in (("--workers", args.workers), ("--max-batch-size", args.max_batch_size),
                        ("--ort-batch", args.ort_batch), ("--large-slots", args.large_slots),
                        ("--max-pixels", args.max_pixels)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if (args.batch_timeout is not None and args.batch_timeout < 0) or args.max_body_mb <= 0 or args.max_items < 1:
        raise ValueError("--batch-timeout must be ≥ 0, --max-body-mb > 0 and --max-items ≥ 1")
    if min(args.timeout, args.read_timeout, args.header_timeout) <= 0:
        raise ValueError("--timeout, --read-timeout and --header-timeout must be > 0")
    if args.api_key is not None:
        raise ValueError("--api-key is not accepted: every user of this machine can read command lines (ps). Put "
                         "the key in $VQTOK_API_KEY or in a file passed with --api-key-file")
    api_key = None
    if args.api_key_file:
        api_key = Path(args.api_key_file).read_text().strip()
        if not api_key:
            raise ValueError(f"--api-key-file {args.api_key_file}: the file is empty")
    import logging

    from vqtok.server.app import Settings, build_server, serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(device=args.device, workers=args.workers, max_batch_size=args.max_batch_size,
                        batch_timeout=args.batch_timeout, max_pixels=args.max_pixels, max_body_mb=args.max_body_mb,
                        max_items=args.max_items,
                        api_key=api_key, threads=args.threads, timeout=args.timeout,
                        read_timeout=args.read_timeout, header_timeout=args.header_timeout,
                        large_slots=args.large_slots,
                        graceful_timeout=args.graceful_timeout, ort_batch=args.ort_batch,
                        queue=args.queue, polling_loop=args.polling_loop,
                        png_in_worker=args.png_in_worker, ort_spin=args.ort_spin, telemetry_window=args.telemetry_window)
    if args.shared_slots is not None:
        if args.shared_slots < 0:
            raise ValueError(f"--shared-slots must be ≥ 0, got {args.shared_slots}")
        settings.shared_slots = args.shared_slots
    try:
        server = build_server(args.models_dir, args.model, args.default_model, settings)
        serve(server, host=args.host, port=args.port, api_servers=args.api_servers, log_level=args.log_level)
    except RuntimeError as err:  # workers failed to start, CUDA not active, port in use, ...
        print(f"vqtok serve: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
