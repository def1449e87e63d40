"""Every place vqtok changes LitServe, Starlette or prometheus_client behaviour through their internals — here only.

LitServe stays the serving framework; these are the few spots where its 0.2.19 behaviour does not fit a tokenizer
server. Each override says which upstream code it replaces or relies on, and why. `UPSTREAM` pins a hash of that
upstream source: tests/test_patches.py fails, naming the override to re-check, as soon as an upgrade changes it (and
behavioural tests there and in test_server*.py check that each override still does its job).

| override | upstream behaviour it changes | why |
|---|---|---|
| `EdgeHandler._prepare_request` | LitServe parses the body with `request.form()` / `request.json()` and queues that | our `parse` validates and preprocesses at the edge (HTTP process), so only good payloads are queued |
| `EdgeHandler.handle_request` (`wait_for_reply` with `--queue litserve`) | worker outputs are returned as-is; errors become LitServe `HTTPException`s; the reply is awaited with no deadline (`timeout` only bounds the queue); a worker's death is noticed only in the main process's buffer, never in the HTTP processes' | worker results are plain dicts, finished into a `Response` (or our JSON error shape) by the LitAPI's `respond` in the HTTP process; end-to-end `--timeout` → 504; a dead worker's in-flight requests → 503 + Retry-After (`guards.ProcessWatch`) |
| `ServerOverrides._start_server` | the listening socket stays private to `run()`; uvicorn gets no header timeout | the socket is shut at SIGTERM (new clients refused at once, not queued for nobody); `HeaderDeadlineProtocol`; the process watch starts |
| `HeaderDeadlineProtocol` (uvicorn's `HttpToolsProtocol`) | no request-header timeout; the keep-alive timer is cancelled by the first byte | a client trickling header bytes (slowloris) is disconnected after `--header-timeout` |
| `ServerOverrides._register_api_endpoints` | one POST route per LitAPI with LitServe's handler and its per-route auth dependency | our handler, an OpenAPI request body, reply types and error replies per endpoint; auth is a middleware over every route |
| `EdgeRoute.get_route_handler` (FastAPI's `APIRoute`, its documented custom-route hook) | FastAPI wraps each endpoint in its dependency solver (query, body and dependency parsing, an exit stack) | our endpoints take the raw `Request` and parse it at the edge themselves: the solver did nothing for them but cost ~7 % of an HTTP process's CPU per request (py-spy, null model, encode c = 64); OpenAPI docs are unchanged |
| `ServerOverrides.verify_worker_status` | starts serving once *any* worker is ready | waits for *every* worker; refuses to start if one fails (e.g. CUDA not active) |
| `ServerOverrides._perform_graceful_shutdown` | stops the workers and HTTP processes together | drains HTTP first (in-flight requests finish), stops the worker monitor thread before the manager goes |
| `replace_health` | `GET /health` replies text with no Content-Type, documented as JSON; no HEAD | `/health` is our readiness route (text/plain, GET and HEAD, documented) |
| `replace_index` | `GET /` answers "litserve running" (with LitServe's per-route auth dependency) | `/` is vqtok's web page (server/page.py), open like `/health` |
| `hide_bind_banner` + `wait_until_ready` (in `_start_server`) | uvicorn logs "Uvicorn running on …" when `run()` binds the socket, seconds before any HTTP process listens (workers load first) | the banner is dropped; one "ready on …" line is logged once the port answers /health 200 |
| `drop_gzip` | every reply over 1 kB is gzipped | PNG / .npy bodies do not shrink; gzip only costs HTTP-process CPU |
| `BlockingBatchedLoop.get_batch_requests` | a worker collects a batch by polling the request queue every 1 ms (`collate_requests`): each poll is a round trip to the multiprocessing manager, idle or not | block on the queue for the first request, then gather the rest within `batch_timeout`: an idle worker costs no CPU (on 2 cores the idle decode and reconstruct workers' polling took CPU from a loaded encode endpoint; measured in docs/PERFORMANCE.md) |
| `multiprocess_values` | prometheus_client picks its value class once, at import | metrics must go to the shared multiprocess directory even if prometheus_client was imported before it existed |

Not an override: the default request path (server/direct.py) reaches the workers through LitAPI's public `loop=`
and our handler; `wait_for_reply` and `BlockingBatchedLoop` serve `--queue litserve`, LitServe's own queues.

Removed: setting Starlette's private `request._body` so that `request.form()` would parse a body `edge.read_body`
had already read under its size limit (`edge` now runs Starlette's `MultiPartParser` on those bytes itself); the
ZeroMQ reply transport behind `--fast-queue` (fixing `fast_queue=True`, a no-op in LitServe 0.2.19, and its swapped
broker addresses): no measurable gain (docs/PERFORMANCE.md), and the direct path has no manager round trips left.
"""
from __future__ import annotations

import hashlib
import http.client
import importlib
import inspect
import asyncio
import logging
import multiprocessing as mp
import socket
import threading
import time
from queue import Empty
from typing import Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.responses import PlainTextResponse
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.server import RegularRequestHandler, ResponseBufferItem
from litserve.utils import LitAPIStatus, LoopResponseType, WorkerSetupStatus
from starlette.middleware.gzip import GZipMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .direct import no_reply, worker_gone
from .errors import openapi_errors

logger = logging.getLogger("vqtok.server")

# sha256 (first 16 hex digits) of `inspect.getsource` of the upstream code each override replaces or relies on
UPSTREAM: dict[str, str] = {
    # EdgeHandler: handle_request calls _prepare_request, then _submit_request, then waits for (response, status)
    "litserve.server:BaseRequestHandler._prepare_request": "be04387a946e1378",
    "litserve.server:BaseRequestHandler._submit_request": "a331d2b69435202e",
    "litserve.server:RegularRequestHandler.handle_request": "1d9fe5ed85826b88",
    # _register_api_endpoints: called once per LitAPI by register_endpoints
    "litserve.server:LitServer.register_endpoints": "f905dce13d56619a",
    "litserve.server:LitServer._register_api_endpoints": "df52ecfb1cd8b261",
    # EdgeRoute: APIRoute.__init__ wraps what get_route_handler returns with request_response
    "fastapi.routing:APIRoute.__init__": "82a204e5818940a1",
    # verify_worker_status: called by run() after the workers are launched
    "litserve.server:LitServer.verify_worker_status": "b973dfc5137f98c4",
    # wait_for_reply: _handle_error_response raises for an error reply; response_queue_to_buffer sets the item's
    # worker_id from the worker's START message and drops replies whose uid is gone
    "litserve.server:RegularRequestHandler._handle_error_response": "18f3abb9b984dcd9",
    "litserve.server:response_queue_to_buffer": "3d690c69c631a266",
    # _start_server: builds one uvicorn.Config per HTTP process from our kwargs (http=), returns their processes
    "litserve.server:LitServer._start_server": "509cc1cb9ae3a09a",
    # HeaderDeadlineProtocol extends these hooks and relies on data_received not arming any header timer
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_made": "6efb565ff3d36b91",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_headers_complete": "1ea8589acfad92d8",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_response_complete": "64e254f28e389e76",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_lost": "c91a4c9bf2e29c55",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.data_received": "010a7ae59a5d3b1a",
    # _perform_graceful_shutdown: called by run() and by the monitor thread (named "litserve-monitoring")
    "litserve.server:LitServer._perform_graceful_shutdown": "25cc72bc2989abad",
    "litserve.server:LitServer._start_worker_monitoring": "aa423155d312a88a",
    "litserve.server:LitServer.run": "a53f4b3f53ea3e13",
    # replace_index, replace_health: __init__ → register_endpoints → _register_internal_endpoints adds GET / and
    # the health route
    "litserve.server:LitServer._register_internal_endpoints": "86ca2498aa97b363",
    # hide_bind_banner: run() calls Config.bind_socket, which logs the banner, before the workers load
    "uvicorn.config:Config.bind_socket": "97f8fea4957ccbfe",
    # drop_gzip: LitServer.__init__ appends GZipMiddleware to the middlewares
    "litserve.server:LitServer.__init__": "350eca8266eabafb",
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
        payload = await self._prepare_request(request, request_type)
        timeout = self.server.settings.timeout
        start = time.monotonic()
        async with self.lit_api.admission(payload, timeout):  # large requests: a few at a time (head-of-line)
            left = None if not timeout or timeout < 0 else max(0.001, timeout - (time.monotonic() - start))
            if self.lit_api.socket_dir:  # direct.py: straight to a worker's socket
                result = await self.lit_api.dispatcher().call(payload, left)
            else:
                result = await wait_for_reply(self, payload, left, self.server.watch.of(self.lit_api.api_path))
        return await self.lit_api.respond(result)


async def wait_for_reply(handler, payload: dict, timeout: float | None,
                         generations: Callable[[], tuple[int, ...]]) -> dict:
    """Queue `payload` on `handler`'s endpoint and wait for the worker's reply dict (LitServe's handle_request, with
    the deadline and worker-death detection described above). `generations()`: this endpoint's per-worker death
    counters (`guards.ProcessWatch`), indexed like LitServe's worker ids."""
    before = generations()
    uid, _ = await handler._submit_request(payload)
    event = asyncio.Event()
    item = handler.server.response_buffer[uid] = ResponseBufferItem(event)
    deadline = None if not timeout or timeout < 0 else time.monotonic() + timeout
    try:
        while True:
            wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if wait <= 0:
                raise no_reply(timeout)
            try:
                await asyncio.wait_for(event.wait(), wait)
                break
            except asyncio.TimeoutError:
                # item.worker_id: set by LitServe when a worker takes the request (its START message); a request
                # still queued is left for the restarted worker
                wid = item.worker_id
                if wid is not None and generations()[wid] != before[wid]:
                    raise worker_gone() from None
        response, status = item.response
    finally:
        handler.server.response_buffer.pop(uid, None)  # a late reply for a gone uid is dropped by LitServe
    if status == LitAPIStatus.ERROR:
        handler._handle_error_response(response)  # raises: HTTPException as sent by the worker, else a 500
    return response


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's line and headers."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        # the first bytes of the next request on a keep-alive connection start its deadline (an idle connection is
        # left to uvicorn's keep-alive timeout)
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()
        super().data_received(data)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to pass as uvicorn's `http=` (one subclass per timeout: uvicorn instantiates it)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})


def replace_health(app, health_path: str, health_route) -> None:
    """Drop LitServe's health route; serve `health_route` (text/plain, GET and HEAD) there."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != health_path]
    app.add_api_route(health_path, health_route, methods=["GET"], tags=["health"], response_class=PlainTextResponse,
                      summary="200 once every inference worker is up and has loaded its models, else 503")
    app.add_api_route(health_path, health_route, methods=["HEAD"], include_in_schema=False)


def routes_first(app, paths: list[str]) -> None:
    """Move the routes of `paths` to the front (order otherwise kept): Starlette tries routes in order, one regex
    each, and the inference endpoints take nearly every request (LitServe registers /info and the docs first)."""
    first = [r for r in app.router.routes if getattr(r, "path", None) in paths]
    app.router.routes = first + [r for r in app.router.routes if getattr(r, "path", None) not in paths]


def drop_gzip(app) -> None:
    """Remove the GZipMiddleware LitServer adds (before the app starts: the middleware stack is built then)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not GZipMiddleware]


def replace_index(app, endpoint, **route) -> None:
    """Swap the GET / route LitServer registers in __init__ for `endpoint` (FastAPI matches the first route added)."""
    app.router.routes = [r for r in app.router.routes
                         if not (getattr(r, "path", None) == "/" and "GET" in (getattr(r, "methods", None) or ()))]
    app.add_api_route("/", endpoint, methods=["GET"], **route)


class EdgeRoute(APIRoute):
    """A FastAPI route whose endpoint is called with the raw `Request`, without FastAPI's dependency solving."""

    def get_route_handler(self) -> Callable:
        return self.endpoint


class ServerOverrides:
    """LitServer methods replaced by vqtok (mixed in before `litserve.LitServer`)."""

    def _register_api_endpoints(self, lit_api, request_type, response_type) -> None:
        handler = EdgeHandler(lit_api, self)

        async def endpoint(request: Request) -> Response:
            return await handler.handle_request(request, Request)

        self.app.router.add_api_route(lit_api.api_path, endpoint, methods=["POST"], summary=lit_api.summary,
                                      tags=["vqtok"], response_class=Response, route_class_override=EdgeRoute,
                                      openapi_extra={"requestBody": {"required": True,
                                                                     "content": lit_api.request_body}},
                                      responses={200: {"description": "OK", "content": lit_api.reply_types},
                                                 **openapi_errors(lit_api.error_statuses)})

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

    def _start_server(self, port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs):
        self._sockets = list(sockets)  # the listening socket: shut at shutdown so new clients are refused at once
        kwargs.setdefault("http", header_deadline_protocol(self.settings.header_timeout))
        # idle keep-alive connections outlive the clients' own expiry (httpx: 5 s, uvicorn's default too: both ends
        # closing at the same moment lost 15 of 10,000 soak requests to "connection closed" on reuse)
        kwargs.setdefault("timeout_keep_alive", self.settings.keep_alive)
        workers = super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)
        procs = [w for w in workers.values() if isinstance(w, mp.process.BaseProcess)]
        self.watch.start(self.worker_slots, procs, lambda reason: threading.Thread(
            target=set_event, args=(self._shutdown_event,), daemon=True).start())
        wait_until_ready(workers, sockets)  # then the one "ready" line (uvicorn's bind banner came too early)
        return workers

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason: str = "normal") -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.watch.stop()
        event = getattr(self, "_shutdown_event", None)
        if event is not None:  # also stops LitServe's worker monitor (a fresh thread: its own manager connection)
            setter = threading.Thread(target=set_event, args=(event,), daemon=True)
            setter.start()
            setter.join(5)
        procs = [w for w in uvicorn_workers.values() if isinstance(w, mp.process.BaseProcess)]
        for w in procs:  # stop accepting; uvicorn lets in-flight requests finish while the workers still run
            if w.is_alive():
                w.terminate()
        refuse_new_connections(getattr(self, "_sockets", []))
        for w in procs:
            w.join(self.uvicorn_graceful_timeout + 5)
            if w.is_alive():
                w.kill()
        for t in threading.enumerate():  # the monitor must not poll the manager while it shuts down
            if t.name == "litserve-monitoring" and t is not threading.current_thread():
                t.join(self.monitor_internal + 3)
        rest = {k: w for k, w in uvicorn_workers.items() if w not in procs}
        super()._perform_graceful_shutdown(manager, rest, "normal")


def refuse_new_connections(sockets: list) -> None:
    """Shut the listening socket: the multiprocessing manager inherited it and outlives the HTTP processes' copies,
    so the kernel would keep queueing connections nobody accepts. Clients get a refusal instead of a hang."""
    time.sleep(0.3)  # first let the HTTP processes stop their accept loops (uvicorn checks its exit flag every 0.1 s)
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


READY_TIMEOUT = 120.0  # seconds the HTTP processes get to listen once the workers are loaded


def wait_until_ready(workers: dict, sockets: list) -> None:
    """Log "ready on URL" once the port answers /health 200 (every worker is loaded by then: run() checked)."""
    host, port = sockets[0].getsockname()[:2]
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    deadline = time.monotonic() + READY_TIMEOUT
    while not answers_health(probe, port):
        if time.monotonic() > deadline or not any(w.is_alive() for w in workers.values()):
            logger.warning("the HTTP processes do not answer %s/health after %.0f s", url, READY_TIMEOUT)
            return
        time.sleep(0.05)
    logger.info("ready on %s (every worker loaded; API docs at %s/docs)", url, url)


def answers_health(host: str, port: int) -> bool:
    """True when GET /health on host:port answers 200 (stdlib only: this runs in the serving process)."""
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class _NoBindBanner(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Uvicorn running on")


def hide_bind_banner() -> None:
    """Drop the "Uvicorn running on …" line `Config.bind_socket` logs before anything listens (see _start_server)."""
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _NoBindBanner) for f in log.filters):
        log.addFilter(_NoBindBanner())


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


# -- prometheus_client -----------------------------------------------------------------------------------------------
def multiprocess_values() -> None:
    """Re-pick prometheus_client's value class after PROMETHEUS_MULTIPROC_DIR is set: it is chosen once at import,
    and a process that imported prometheus_client earlier would otherwise keep its samples in memory, invisible to
    /metrics of the other processes."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()
