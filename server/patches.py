"""Every place vqtok changes LitServe, Starlette or prometheus_client behaviour through their internals — here only.

LitServe stays the serving framework; these are the few spots where its 0.2.19 behaviour does not fit a tokenizer
server. Each override says which upstream code it replaces or relies on, and why. `UPSTREAM` pins a hash of that
upstream source: tests/test_patches.py fails, naming the override to re-check, as soon as an upgrade changes it (and
behavioural tests there and in test_server*.py check that each override still does its job).

| override | upstream behaviour it changes | why |
|---|---|---|
| `EdgeHandler._prepare_request` | LitServe parses the body with `request.form()` / `request.json()` and queues that | our `parse` validates and preprocesses at the edge (HTTP process), so only good payloads are queued |
| `EdgeHandler.handle_request` | worker outputs are returned as-is; errors become LitServe `HTTPException`s | worker results are plain dicts, finished into a `Response` (or our JSON error shape) by the LitAPI's `respond` in the HTTP process |
| `ServerOverrides._register_api_endpoints` | one POST route per LitAPI with LitServe's handler and its per-route auth dependency | our handler, an OpenAPI request body per endpoint; auth is a middleware over every route |
| `ServerOverrides.verify_worker_status` | starts serving once *any* worker is ready | waits for *every* worker; refuses to start if one fails (e.g. CUDA not active) |
| `ServerOverrides._perform_graceful_shutdown` | stops the workers and HTTP processes together | drains HTTP first (in-flight requests finish), stops the worker monitor thread before the manager goes |
| `drop_gzip` | every reply over 1 kB is gzipped | PNG / .npy bodies do not shrink; gzip only costs HTTP-process CPU |
| `use_zmq_transport` (`FixedZMQTransport`, `create_transport`) | `fast_queue=True` is dropped (`TransportConfig(transport_config=…)`), the factory swaps the broker's two addresses, `close()` raises in a process that never used it | `--fast-queue`: replies over ZeroMQ instead of a multiprocessing-manager round trip |
| `BlockingBatchedLoop.get_batch_requests` | a worker collects a batch by polling the request queue every 1 ms (`collate_requests`): each poll is a round trip to the multiprocessing manager, idle or not | block on the queue for the first request, then gather the rest within `batch_timeout`: an idle worker costs no CPU (on 2 cores the idle decode and reconstruct workers' polling took CPU from a loaded encode endpoint; measured in docs/PERFORMANCE.md) |
| `multiprocess_values` | prometheus_client picks its value class once, at import | metrics must go to the shared multiprocess directory even if prometheus_client was imported before it existed |

Removed: setting Starlette's private `request._body` so that `request.form()` would parse a body `edge.read_body`
had already read under its size limit; `edge` now runs Starlette's `MultiPartParser` on those bytes itself.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import multiprocessing as mp
import threading
import time
from queue import Empty

from fastapi import Request, Response
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.server import RegularRequestHandler
from litserve.transport.factory import TransportConfig, create_transport_from_config
from litserve.transport.zmq_queue import Broker
from litserve.transport.zmq_transport import ZMQTransport
from litserve.utils import LitAPIStatus, LoopResponseType, WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware


# sha256 (first 16 hex digits) of `inspect.getsource` of the upstream code each override replaces or relies on
UPSTREAM: dict[str, str] = {
    # EdgeHandler: handle_request calls _prepare_request, then _submit_request, then waits for (response, status)
    "litserve.server:BaseRequestHandler._prepare_request": "be04387a946e1378",
    "litserve.server:BaseRequestHandler._submit_request": "a331d2b69435202e",
    "litserve.server:RegularRequestHandler.handle_request": "1d9fe5ed85826b88",
    # _register_api_endpoints: called once per LitAPI by register_endpoints
    "litserve.server:LitServer.register_endpoints": "f905dce13d56619a",
    "litserve.server:LitServer._register_api_endpoints": "df52ecfb1cd8b261",
    # verify_worker_status: called by run() after the workers are launched
    "litserve.server:LitServer.verify_worker_status": "b973dfc5137f98c4",
    # _perform_graceful_shutdown: called by run() and by the monitor thread (named "litserve-monitoring")
    "litserve.server:LitServer._perform_graceful_shutdown": "25cc72bc2989abad",
    "litserve.server:LitServer._start_worker_monitoring": "aa423155d312a88a",
    "litserve.server:LitServer.run": "a53f4b3f53ea3e13",
    # drop_gzip: LitServer.__init__ appends GZipMiddleware to the middlewares
    "litserve.server:LitServer.__init__": "350eca8266eabafb",
    # ZeroMQ transport
    "litserve.transport.factory:create_transport_from_config": "f5729b5c2ff05700",
    "litserve.transport.zmq_transport:ZMQTransport": "7af0b555a3b42946",
    "litserve.server:LitServer._init_manager": "ec955dbe647ca5b4",
    # BlockingBatchedLoop: replaces collate_requests in BatchedLoop's run_batched_loop (via get_batch_requests)
    "litserve.loops.base:collate_requests": "5453b1085a2ec251",
    "litserve.loops.base:LitLoop.get_batch_requests": "2a9756030ebefe7f",
    "litserve.loops.simple_loops:BatchedLoop.run_batched_loop": "dadf15ccae839c30",
    "litserve.loops.base:LitLoop.put_response": "8afe002a5e9821d9",
    # multiprocess_values
    "prometheus_client.values:get_value_class": "7de1718faa6ecfe2",
    "prometheus_client.metrics:Counter._metric_init": "17b9d10bf21b912c",
}


def source_hash(target: str) -> str:
    """sha256[:16] of the source of `module:qualname`."""
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def upstream_drift() -> dict[str, str]:
    """{target: its hash now} for every pinned upstream source that no longer matches `UPSTREAM`."""
    return {t: h for t in UPSTREAM if (h := source_hash(t)) != UPSTREAM[t]}


# -- request handling ------------------------------------------------------------------------------------------------
class EdgeHandler(RegularRequestHandler):
    """LitServe's request handler with the LitAPI's `parse` in front and our response shape behind."""

    async def _prepare_request(self, request: Request, request_type) -> dict:
        return await self.lit_api.parse(request)

    async def handle_request(self, request: Request, request_type) -> Response:
        return await self.lit_api.respond(await super().handle_request(request, request_type))


def drop_gzip(app) -> None:
    """Remove the GZipMiddleware LitServer adds (before the app starts: the middleware stack is built then)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not GZipMiddleware]


class ServerOverrides:
    """LitServer methods replaced by vqtok (mixed in before `litserve.LitServer`)."""

    def _register_api_endpoints(self, lit_api, request_type, response_type) -> None:
        handler = EdgeHandler(lit_api, self)

        async def endpoint(request: Request) -> Response:
            return await handler.handle_request(request, Request)

        self.app.add_api_route(lit_api.api_path, endpoint, methods=["POST"], summary=lit_api.summary,
                               tags=["vqtok"], response_class=Response,
                               openapi_extra={"requestBody": {"required": True, "content": lit_api.request_body}})

    def verify_worker_status(self) -> None:
        """Wait until *every* worker has loaded every model; refuse to start if any failed."""
        while True:
            states = dict(self.workers_setup_status)
            dead = [p for p in self.inference_workers if not p.is_alive()]
            if dead or WorkerSetupStatus.ERROR in states.values():
                raise RuntimeError("an inference worker failed to load the models (see the log above); "
                                   "nothing is served")
            if states and all(v == WorkerSetupStatus.READY for v in states.values()):
                return
            time.sleep(0.05)

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason: str = "normal") -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        event = getattr(self, "_shutdown_event", None)
        if event is not None:  # also stops LitServe's worker monitor (a fresh thread: its own manager connection)
            setter = threading.Thread(target=set_event, args=(event,), daemon=True)
            setter.start()
            setter.join(5)
        procs = [w for w in uvicorn_workers.values() if isinstance(w, mp.process.BaseProcess)]
        for w in procs:  # stop accepting; uvicorn lets in-flight requests finish while the workers still run
            if w.is_alive():
                w.terminate()
        for w in procs:
            w.join(self.uvicorn_graceful_timeout + 5)
            if w.is_alive():
                w.kill()
        for t in threading.enumerate():  # the monitor must not poll the manager while it shuts down
            if t.name == "litserve-monitoring" and t is not threading.current_thread():
                t.join(self.monitor_internal + 3)
        rest = {k: w for k, w in uvicorn_workers.items() if w not in procs}
        super()._perform_graceful_shutdown(manager, rest, "normal")


def set_event(event) -> None:
    """Set a manager Event, ignoring a manager that is already gone (shutdown is under way anyway)."""
    try:
        event.set()
    except Exception:  # noqa: BLE001 - any connection error of a dead manager
        pass


# -- batch collection in the inference workers ----------------------------------------------------------------------
class BlockingBatchedLoop(BatchedLoop):
    """LitServe's batched worker loop (a LitAPI's documented `loop=` extension point) with a batch collection that
    waits instead of polling. Request handling, timeouts, START messages and replies are LitServe's."""

    def get_batch_requests(self, lit_api, request_queue, transport) -> tuple[list, list]:
        payloads: list = []
        timed_out: list = []
        item = request_queue.get()  # waits inside the manager: an idle worker costs nothing
        deadline = time.monotonic() + lit_api.batch_timeout
        apply_timeout = lit_api.request_timeout not in (-1, False)
        while True:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
            if apply_timeout and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
            if len(payloads) >= lit_api.max_batch_size:
                break
            remaining = deadline - time.monotonic()
            try:  # within the window, wait for more; after it, take only what is already queued
                item = request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait()
            except Empty:
                break
        return payloads, timed_out


# -- ZeroMQ reply transport (--fast-queue) ---------------------------------------------------------------------------
class FixedZMQTransport(ZMQTransport):
    def close(self, **kwargs) -> None:
        if self._zmq is not None:  # the serving process only owns the broker: nothing to close here
            self._zmq.close()

    def __reduce__(self):  # rebuilt in every worker and HTTP process: keep this class there too
        return FixedZMQTransport, (self.backend_address, self.frontend_address)


def create_transport(config: TransportConfig):
    """LitServe's factory, with the broker's addresses passed in the order `ZMQTransport` expects."""
    if config.transport_type != "zmq":
        return create_transport_from_config(config)
    broker = Broker()  # XPUB (frontend, where consumers subscribe) ⇄ XSUB (backend, where producers publish)
    broker.start()
    config.frontend_address, config.backend_address = broker.frontend_address, broker.backend_address
    return FixedZMQTransport(backend_address=broker.backend_address, frontend_address=broker.frontend_address)


def use_zmq_transport(server) -> None:
    """Make `server` send replies over ZeroMQ: the transport type LitServe 0.2.19 meant to set for fast_queue=True,
    created through `create_transport` (LitServer.run builds it via the module-level name, hence the rebinding)."""
    import litserve.server as ls_server

    ls_server.create_transport_from_config = create_transport
    server.transport_config = TransportConfig(transport_type="zmq")


# -- prometheus_client -----------------------------------------------------------------------------------------------
def multiprocess_values() -> None:
    """Re-pick prometheus_client's value class after PROMETHEUS_MULTIPROC_DIR is set: it is chosen once at import,
    and a process that imported prometheus_client earlier would otherwise keep its samples in memory, invisible to
    /metrics of the other processes."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()
