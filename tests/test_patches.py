"""server.patches: every override of LitServe / Starlette / prometheus_client internals.

The first test pins the upstream source each override was written against (it fails on any upgrade that touches
it); the others check that each override still does its job. The overrides of request handling, start-up and
shutdown are also exercised end to end in test_server.py and test_server_process.py.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import litserve as ls
import pytest
from fastapi import FastAPI, Request, Response
from starlette.middleware.gzip import GZipMiddleware

from vqtok.server import patches

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_upstream_code_is_what_the_overrides_were_written_against():
    drift = patches.upstream_drift()
    assert not drift, (
        "an upgrade changed upstream code that server/patches.py overrides or relies on: "
        f"{sorted(drift)}. Re-read each one, check (and fix) the matching override in server/patches.py, drop it if "
        f"the upstream fixed the problem, then update UPSTREAM with the new hashes: {drift}")


def test_every_override_is_pinned():
    """Each LitServe method ServerOverrides replaces has a pin (a new override without one fails here)."""
    for name in vars(patches.ServerOverrides):
        if not name.startswith("__"):
            assert f"litserve.server:LitServer.{name}" in patches.UPSTREAM, name
    for name in ("_prepare_request", "handle_request"):
        assert name in vars(patches.EdgeHandler)


def test_the_server_uses_the_overrides():
    from vqtok.server.app import Settings, build_server

    server = build_server(FIXTURES, ["tiny-model"], settings=Settings())
    assert isinstance(server, patches.ServerOverrides)
    routes = {r.path: r for r in server.app.routes}
    assert {"/v1/encode", "/v1/decode", "/v1/reconstruct"} <= set(routes)
    assert not routes["/v1/encode"].dependencies  # LitServe's per-route auth dependency is gone: the middleware checks
    assert isinstance(routes["/v1/encode"], patches.EdgeRoute)
    # Starlette matches routes in order: the inference endpoints are tried first, the rest keep their order
    paths = [r.path for r in server.app.routes]
    assert paths[:3] == ["/v1/encode", "/v1/decode", "/v1/reconstruct"]
    assert paths.index("/openapi.json") < paths.index("/docs") and paths.count("/health") == 2
    assert not [m for m in server.app.user_middleware if m.cls is GZipMiddleware]


def test_edge_route_calls_the_endpoint_with_the_raw_request_and_no_dependency_solving(monkeypatch):
    import fastapi.routing
    from fastapi.testclient import TestClient

    def no_solver(*args, **kwargs):
        raise AssertionError("FastAPI's dependency solver ran for an EdgeRoute")

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", no_solver)

    async def endpoint(request: Request) -> Response:
        return Response(await request.body() + b"|" + request.query_params.get("q", "").encode())

    app = FastAPI()
    app.router.add_api_route("/raw", endpoint, methods=["POST"], route_class_override=patches.EdgeRoute,
                             response_class=Response)
    reply = TestClient(app).post("/raw?q=1", content=b"body")
    assert reply.status_code == 200 and reply.content == b"body|1"
    assert "/raw" in app.openapi()["paths"]  # still documented


def test_litserve_still_adds_gzip_and_drop_gzip_removes_it():
    class Echo(ls.LitAPI):
        def setup(self, device):
            pass

        def predict(self, x):
            return x

    server = ls.LitServer(Echo(), accelerator="cpu")
    assert [m for m in server.app.user_middleware if m.cls is GZipMiddleware]
    patches.drop_gzip(server.app)
    assert not [m for m in server.app.user_middleware if m.cls is GZipMiddleware]


def test_litserve_still_registers_an_index_and_replace_index_swaps_it():
    from fastapi.testclient import TestClient

    class Echo(ls.LitAPI):
        def setup(self, device):
            pass

        def predict(self, x):
            return x

    server = ls.LitServer(Echo(), accelerator="cpu")
    assert TestClient(server.app).get("/").text == "litserve running"

    async def index():
        return {"page": True}

    patches.replace_index(server.app, index)
    assert [r for r in server.app.router.routes if getattr(r, "path", None) == "/"][0].endpoint is index
    assert TestClient(server.app).get("/").json() == {"page": True}


def test_metrics_reach_the_shared_directory_when_prometheus_was_imported_first(tmp_path):
    """Without multiprocess_values a process that imported prometheus_client early keeps samples in memory."""
    code = f"""
import os, prometheus_client
from prometheus_client import values
assert values.ValueClass is values.MutexValue
os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
from vqtok.server.patches import multiprocess_values
multiprocess_values()
prometheus_client.Counter("probe_total", "probe").inc()
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "VQTOK_METRICS_DIR")}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
    assert list(tmp_path.glob("counter_*.db")), "the counter sample was not written to the multiprocess directory"


def _loop_api(max_batch_size: int = 4, batch_timeout: float = 0.05, timeout: float = 30.0):
    class Api(ls.LitAPI):
        def setup(self, device):
            pass

        def predict(self, x):
            return x

    api = Api(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=patches.BlockingBatchedLoop())
    api.request_timeout = timeout
    return api


class _Sink:
    def __init__(self):
        self.sent = []

    def send(self, item, consumer_id):
        self.sent.append((consumer_id, item))


def test_blocking_loop_collects_a_batch_like_litserve():
    import queue
    import time

    from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

    loop, q, sink = patches.BlockingBatchedLoop(), queue.Queue(), _Sink()
    now = time.monotonic()
    for i in range(6):
        q.put((0, f"uid-{i}", now, {"x": i}))
    batch, timed_out = loop.get_batch_requests(_loop_api(max_batch_size=4), q, sink)
    assert [uid for _, uid, _ in batch] == ["uid-0", "uid-1", "uid-2", "uid-3"] and not timed_out  # a full batch
    batch, _ = loop.get_batch_requests(_loop_api(max_batch_size=4), q, sink)
    assert [uid for _, uid, _ in batch] == ["uid-4", "uid-5"]  # what is queued when the window closes
    q.put((0, "old", now - 100, {}))
    batch, timed_out = loop.get_batch_requests(_loop_api(timeout=1.0), q, sink)
    assert not batch and timed_out == [(0, "old")]  # waited too long in the queue: LitServe answers 504
    q.put(_SENTINEL_VALUE)
    with pytest.raises(_StopLoopError):
        loop.get_batch_requests(_loop_api(), q, sink)


def test_an_idle_blocking_loop_costs_no_cpu():
    """LitServe's loop asks the manager for a request every 1 ms; ours waits for the first one."""
    import threading
    import time

    with multiprocessing.Manager() as manager:
        q = manager.Queue()
        threading.Timer(1.0, q.put, args=((0, "late", time.monotonic(), {}),)).start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        batch, _ = patches.BlockingBatchedLoop().get_batch_requests(_loop_api(), q, _Sink())
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert [uid for _, uid, _ in batch] == ["late"] and wall >= 0.9
    assert cpu < 0.1 * wall, f"{cpu:.3f} s of CPU while waiting {wall:.2f} s for a request"


def test_header_deadline_protocol_is_a_subclass_per_timeout():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    a, b = patches.header_deadline_protocol(1.5), patches.header_deadline_protocol(3.0)
    assert issubclass(a, HttpToolsProtocol) and (a.header_timeout, b.header_timeout) == (1.5, 3.0)
