"""Prometheus metrics shared by every process of one server (HTTP processes and inference workers).

prometheus_client's multiprocess mode: each process writes its samples under one directory and `/metrics`
merges them. The directory is created on first use by the serving process (`VqtokServer.__init__`) and
inherited through `VQTOK_METRICS_DIR` by the workers it starts; it is removed when that process exits.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_DIR_ENV = "VQTOK_METRICS_DIR"
ENDPOINTS = ("/v1/encode", "/v1/decode", "/v1/reconstruct", "/v1/models", "/health", "/metrics", "/info")
_metrics: SimpleNamespace | None = None


def _remove_stale_dirs() -> None:
    """Directories left by servers that were killed (SIGKILL skips atexit): their owner pid is gone."""
    if not Path("/proc/self").exists():  # no cheap liveness check on this platform
        return
    for d in Path(tempfile.gettempdir()).glob("vqtok-metrics-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _metrics_dir() -> str:
    d = os.environ.get(_DIR_ENV)
    if not d or not os.path.isdir(d):
        _remove_stale_dirs()
        d = tempfile.mkdtemp(prefix=f"vqtok-metrics-{os.getpid()}-")
        os.environ[_DIR_ENV] = d
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(d, ignore_errors=True))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
    return d


def get() -> SimpleNamespace:
    """The metric objects, created on first use (after the shared directory is set up)."""
    global _metrics
    if _metrics is not None:
        return _metrics
    path = _metrics_dir()
    from prometheus_client import Counter, Histogram

    from .patches import multiprocess_values

    multiprocess_values()
    _metrics = SimpleNamespace(
        path=path,
        requests=Counter("vqtok_requests_total", "HTTP requests by endpoint, model and status",
                         ["endpoint", "model", "status"]),
        latency=Histogram("vqtok_request_duration_seconds", "HTTP request latency (arrival to last byte)",
                          ["endpoint", "model"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)),
        batch_size=Histogram("vqtok_batch_size", "requests per dynamic batch reaching a model",
                             ["endpoint"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)),
        inference=Histogram("vqtok_inference_duration_seconds", "ONNX Runtime time per (model, shape) group",
                            ["endpoint", "model"],
                            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
        images=Counter("vqtok_images_processed_total", "images encoded, decoded or reconstructed",
                       ["endpoint", "model"]),
        codes=Counter("vqtok_codes_processed_total", "code tokens produced (encode) or consumed (decode)",
                      ["endpoint", "model"]),
    )
    return _metrics


_children: dict[tuple, Any] = {}


def child(metric, *labels: str) -> Any:
    """`metric.labels(*labels)`, cached: prometheus_client validates and looks the labels up under a lock on every
    call (~4 % of an inference worker's time on the null model). Label values are bounded (endpoints, model ids,
    status codes), and so is the cache."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def render(*collectors) -> tuple[bytes, str]:
    """The merged samples of every process, plus `collectors` (e.g. token telemetry), in the Prometheus text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=get().path)
    for c in collectors:
        registry.register(c)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts requests and observes latency per endpoint/model/status (model: set by the route in scope state)."""

    def __init__(self, app) -> None:
        self.app = app
        self.m = get()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            model = (scope.get("state") or {}).get("vqtok_model", "")
            child(self.m.requests, endpoint, model, str(status["code"])).inc()
            child(self.m.latency, endpoint, model).observe(time.perf_counter() - start)
