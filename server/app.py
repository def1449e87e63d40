"""The vqtok tokenizer server: one LitServer with three batched LitAPIs plus GET routes.

Routes: POST /v1/encode, /v1/decode, /v1/reconstruct (dynamic batching across requests); GET / (the web page,
page.py), /v1/models, /v1/models/{id}/usage (token telemetry, telemetry.py), /metrics (Prometheus), /health
(LitServe: 200 once every worker has loaded every model), /info, /docs.

What this adds to LitServe 0.2.19 (pinned):
- requests are parsed and validated at the edge (`TokenizerAPI.parse`, in the HTTP process) before they are queued;
- errors are JSON `{"error": {"code", "message"}}` (errors.py), the API key is checked for every route but /health;
- start-up waits for *every* worker and refuses to run if any fails (e.g. CUDA not really active);
- shutdown on SIGTERM/SIGINT refuses new connections at once, drains the HTTP processes (in-flight requests finish
  while the workers still run), then stops the workers and the manager, and reaps any child left;
- hardening (docs/RELIABILITY.md): end-to-end --timeout (504), body/header read deadlines (408 / disconnect), a dead
  worker is restarted (its requests: 503 + Retry-After), a dead HTTP process stops the server non-zero, children
  exit with the main process (`guards.py`); /health/live and /health/ready (HEAD too).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import litserve as ls
from fastapi import Request, Response
from fastapi.responses import PlainTextResponse
from litserve.utils import WorkerSetupStatus
from PIL import Image

from vqtok import __version__

from . import metrics, page, patches, telemetry
from .apis import API_CLASSES
from .auth import ApiKeyMiddleware, QueryRedactingFilter
from .docs import install_docs
from .direct import SLOTS
from .edge import MAX_ITEMS, Limits
from .errors import ApiError, install_error_handlers, openapi_errors
from .guards import BodyDeadlineMiddleware, ProcessWatch, watch_parent_in_forked_children
from .registry import Registry

logger = logging.getLogger("vqtok.server")
API_KEY_ENV = "VQTOK_API_KEY"


@dataclass
class Settings:
    device: str = "cpu"  # "cpu" or "cuda" (every visible GPU, one worker set each)
    # inference workers per device, for each of the three endpoints (None: 1 on CPU, 4 per GPU: on an H200 one
    # worker's Python/IPC work per request capped it at ~110-140 req/s while the model ran ~3,000 img/s; 4 workers
    # behind 4 HTTP processes gave 300-320, the best of the layouts measured — docs/BENCHMARKS.md, GPU)
    workers: int | None = None
    max_batch_size: int = 8
    batch_timeout: float | None = None  # seconds a batch waits to fill (None: per device, see default_batch_timeout)
    max_pixels: int = 4096 * 4096  # decoded source images and decoded outputs
    max_body_mb: float = 32.0
    max_items: int = MAX_ITEMS  # images (or code grids) in one multi-item request
    api_key: str | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads per worker (None: cores / workers)
    ort_batch: int | None = None  # images per ONNX Runtime call within a batch (None: 1 on CPU, the batch on GPUs)
    queue: str = "direct"  # "direct": Unix sockets to the workers (direct.py); "litserve": LitServe's manager queues
    shared_slots: int = SLOTS  # direct: request images passed in shared memory, slots per connection (0: pickled)
    polling_loop: bool = False  # LitServe's own batch collection (polls every 1 ms): only to measure against
    ort_spin: bool = False  # CPU: ORT intra-op threads spin-wait between ops (off: they took cycles from HTTP)
    png_in_worker: bool = False  # PNG replies encoded in the worker instead of the HTTP process: to measure against
    timeout: float = 60.0  # seconds from a parsed request to its reply (queue + inference): then a 504
    read_timeout: float = 30.0  # seconds a request body may take to arrive once the server reads it: then a 408
    large_slots: int = 1  # requests larger than S×S queued at once per endpoint and HTTP process (head-of-line)
    keep_alive: int = 75  # seconds an idle keep-alive connection stays open (longer than clients' and LBs' expiry)
    header_timeout: float = 10.0  # seconds for a request line + headers (slowloris): then the connection is closed
    graceful_timeout: float = 30.0  # seconds in-flight requests get on shutdown
    telemetry_window: float = 300.0  # seconds of codes the token telemetry (/metrics, /v1/models/{id}/usage) covers

    @property
    def limits(self) -> Limits:
        return Limits(max_body_bytes=int(self.max_body_mb * 2**20), max_pixels=int(self.max_pixels),
                      max_items=int(self.max_items), large_slots=self.large_slots)


def visible_gpus() -> int:
    """CUDA devices LitServe would use (nvidia-smi, restricted by CUDA_VISIBLE_DEVICES)."""
    from litserve.connector import check_cuda_with_nvidia_smi

    return check_cuda_with_nvidia_smi()


def default_workers(device: str) -> int:
    """Inference workers per device and endpoint when `--workers` is not given (see `Settings.workers`)."""
    return 4 if device == "cuda" else 1


def default_batch_timeout(device: str) -> float:
    """Seconds a worker waits for batch-mates after a batch's first request when `--batch-timeout` is not given.

    CPU: 0, take what is queued. A CPU worker runs one image per ONNX Runtime call (`ort_batch`), so batch-mates save
    no compute and the wait is pure latency (null model, 2 cores, encode c = 1: p50 6.5 → 3.5 ms; docs/PERFORMANCE.md).
    GPUs: 2 ms, where one call for the whole batch is what makes the GPU fast (10 ms cost p50 at c = 1 more than it
    gained, docs/BENCHMARKS.md)."""
    return 0.002 if device == "cuda" else 0.0


def default_api_servers(device: str, devices: int, workers: int) -> int:
    """HTTP processes when `--api-servers` is not given: one per core on CPU (they parse and decode the uploads,
    the larger share of a CPU request's serving work: one HTTP process capped a null-model server at one core,
    docs/PERFORMANCE.md); on GPUs one per inference worker."""
    return max(1, devices * workers) if device == "cuda" else usable_cores()


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_worker(settings: Settings, devices: int) -> int:
    """Intra-op threads so that the workers of one endpoint together use the cores once.

    The three endpoints' workers share the cores: a load that hits one endpoint (the common case) gets all of them;
    a mixed load oversubscribes at most by the number of busy endpoints. Splitting by endpoint as well measured
    18.4 vs 27.2 encode req/s at concurrency 8 on 2 cores (docs/BENCHMARKS.md).
    """
    if settings.threads:
        return settings.threads
    if settings.device == "cuda":  # the GPU does the math; more CPU threads would only spin beside the HTTP processes
        return 1
    return max(1, usable_cores() // (settings.workers * devices))


class VqtokServer(patches.ServerOverrides, ls.LitServer):
    """The LitServer with the vqtok routes, edge validation, auth, metrics and the start/stop behaviour above
    (the LitServe methods it replaces are in `patches.ServerOverrides`)."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        if settings.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be 'cpu' or 'cuda', got {settings.device!r}")
        if settings.queue not in ("direct", "litserve"):
            raise ValueError(f"--queue must be 'direct' or 'litserve', got {settings.queue!r}")
        if settings.queue == "direct" and not hasattr(socket, "AF_UNIX"):
            logger.warning("no Unix sockets on this platform: requests go through LitServe's queues (--queue litserve)")
            settings = dataclasses.replace(settings, queue="litserve")
        if settings.queue == "direct" and settings.polling_loop:
            raise ValueError("--polling-loop changes how workers read LitServe's queue: use it with --queue litserve")
        devices = 1
        if settings.device == "cuda":
            devices = _check_cuda()
        if Image.MAX_IMAGE_PIXELS is None:  # keep Pillow's decompression-bomb guard on
            Image.MAX_IMAGE_PIXELS = 89_478_485
        if settings.workers is None:
            settings = dataclasses.replace(settings, workers=default_workers(settings.device))
        if settings.batch_timeout is None:
            settings = dataclasses.replace(settings, batch_timeout=default_batch_timeout(settings.device))
        self.registry, self.settings = registry, settings
        metrics.get()  # the shared metrics directory, before any worker or HTTP process starts
        self.telemetry = telemetry.Telemetry(registry, metrics.get().path, settings.telemetry_window)
        threads = threads_per_worker(settings, devices)
        # the workers' sockets (direct.py): private to the serving user, removed when the server stops
        self.socket_dir = tempfile.mkdtemp(prefix="vqtok-") if settings.queue == "direct" else None
        apis = [cls(registry, settings.limits, settings.max_batch_size, settings.batch_timeout, threads,
                    settings.ort_batch, settings.polling_loop, settings.png_in_worker, self.socket_dir,
                    settings.ort_spin, settings.shared_slots)
                for cls in API_CLASSES]
        self._stop_lock, self._stopped = threading.Lock(), False
        super().__init__(apis, accelerator=settings.device, devices=devices, workers_per_device=settings.workers,
                         timeout=settings.timeout, model_metadata=registry.describe(), restart_workers=True,
                         middlewares=[(BodyDeadlineMiddleware, {"read_timeout": settings.read_timeout}),
                                      (ApiKeyMiddleware, {"api_key": settings.api_key}),
                                      (metrics.MetricsMiddleware, {})])
        self.watch = ProcessWatch({api.api_path: len(self._inference_workers_config_for_api(api.api_path))
                                   for api in apis})
        self._sockets: list = []
        self.uvicorn_graceful_timeout = settings.graceful_timeout
        patches.drop_gzip(self.app)
        install_error_handlers(self.app)
        install_docs(self.app, "vqtok", __version__)
        page.install(self.app)
        self.app.add_api_route("/v1/models", self._models_route, methods=["GET"], summary="Served models",
                               tags=["vqtok"])
        self.app.add_api_route("/v1/models/{model_id}/usage", self._usage_route, methods=["GET"],
                               summary="A model's code histogram over the telemetry window (and all time)",
                               tags=["vqtok"], responses=openapi_errors((401, 404)))
        self.app.add_api_route("/metrics", self._metrics_route, methods=["GET"], summary="Prometheus metrics",
                               tags=["vqtok"], response_class=PlainTextResponse)
        patches.replace_health(self.app, self.healthcheck_path, self._ready_route)
        patches.routes_first(self.app, [api.api_path for api in apis])
        for path, route, summary in (
                ("/health/live", self._live_route, "Liveness: 200 while this HTTP process answers"),
                ("/health/ready", self._ready_route, "Readiness: 200 only when every inference worker is up and "
                                                     "has loaded its models, else 503")):
            self.app.add_api_route(path, route, methods=["GET"], tags=["health"], summary=summary,
                                   response_class=PlainTextResponse)
            self.app.add_api_route(path, route, methods=["HEAD"], include_in_schema=False)
        logger.info("serving %s (default %s) on %s, %d worker(s) per endpoint per device, %d ORT thread(s) each",
                    ", ".join(registry.models), registry.default, settings.device, settings.workers, threads)

    async def _models_route(self) -> dict:
        return self.registry.describe()

    async def _usage_route(self, model_id: str, request: Request) -> Response:
        if model_id not in self.registry.models:
            raise ApiError(404, "model_not_found", f"unknown model {model_id[:80]!r}; served models: "
                           f"{', '.join(self.registry.models)} (GET /v1/models)")
        request.state.vqtok_model = model_id
        usage = await asyncio.to_thread(self.telemetry.usage, model_id)
        return Response(json.dumps(usage), media_type="application/json")

    async def _metrics_route(self) -> Response:
        body, content_type = metrics.render(self.telemetry)
        return Response(body, media_type=content_type)  # text/plain; version=… (Prometheus' exposition format)

    async def _live_route(self) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def _ready_route(self) -> PlainTextResponse:
        states = dict(self.workers_setup_status)  # LitServe's: READY once a (re)started worker loaded its models
        ready = bool(states) and all(v == WorkerSetupStatus.READY for v in states.values()) and self.watch.all_up()
        return PlainTextResponse("ok" if ready else "not ready", status_code=200 if ready else 503)

    def worker_slots(self) -> list[tuple[str, int, mp.process.BaseProcess]]:
        """(api path, LitServe worker id, process) for every inference worker, in LitServe's order."""
        slots, i = [], 0
        for api in self.litapi_connector:
            for wid in range(len(self._inference_workers_config_for_api(api.api_path))):
                if i < len(self.inference_workers):
                    slots.append((api.api_path, wid, self.inference_workers[i]))
                i += 1
        return slots

    def run(self, *args, **kwargs) -> None:
        watch_parent_in_forked_children()  # HTTP processes and the manager; spawned workers start it in setup()
        patches.hide_bind_banner()  # `_start_server` logs the ready line instead
        try:
            super().run(*args, **kwargs)
        finally:
            reap_children()
            if self.socket_dir:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
        if self.watch.fatal:
            raise RuntimeError(self.watch.fatal)


def _check_cuda() -> int:
    from vqtok.export.runtime import import_onnxruntime

    ort = import_onnxruntime()

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"--device cuda: this onnxruntime has no CUDAExecutionProvider (available: "
                           f"{ort.get_available_providers()}); install onnxruntime-gpu or use --device cpu")
    n = visible_gpus()
    if n < 1:
        raise RuntimeError("--device cuda: nvidia-smi shows no visible GPU; check the driver, "
                           "CUDA_VISIBLE_DEVICES (and `docker run --gpus all`), or use --device cpu")
    return n


def reap_children(timeout: float = 5.0) -> None:
    """Stop any multiprocessing child still alive (workers, HTTP processes, the manager)."""
    children = mp.active_children()
    for p in children:
        p.terminate()
    for p in children:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join(1)


def build_server(models_dir: str | Path | None = None, models: list[str] | None = None,
                 default_model: str | None = None, settings: Settings | None = None) -> VqtokServer:
    """A ready-to-run server for the models under `models_dir` (default: the shipped weights folder)."""
    settings = settings or Settings()
    if settings.api_key is None:
        settings.api_key = os.environ.get(API_KEY_ENV) or None
    return VqtokServer(Registry.scan(models_dir, models, default_model), settings)


def serve(server: VqtokServer, host: str = "127.0.0.1", port: int = 8000, api_servers: int | None = None,
          log_level: str = "info") -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly (in-flight requests finish, no child left behind)."""
    main_pid = os.getpid()

    def on_signal(signum: int, frame) -> None:
        if os.getpid() != main_pid:  # a forked child re-raising after its own graceful stop: die the default way
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)  # one clean shutdown; a second signal must not interrupt it
        event = getattr(server, "_shutdown_event", None)
        if event is None:
            raise KeyboardInterrupt  # still starting: unwind; run() reaps what was started
        logger.info("%s: finishing in-flight requests, then stopping", signal.Signals(signum).name)
        # a fresh thread gets its own manager connection (the main one is busy waiting on this very event)
        threading.Thread(target=patches.set_event, args=(event,), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if api_servers is None:
        api_servers = default_api_servers(server.settings.device, len(server.devices), server.settings.workers)
    logging.getLogger("uvicorn.access").addFilter(QueryRedactingFilter())  # inherited by the forked HTTP processes
    server.run(host=host, port=port, num_api_servers=api_servers, log_level=log_level, generate_client_file=False)

