"""Requests from the HTTP processes to the inference workers over Unix sockets, with no broker in between.

LitServe 0.2.19 moves every request through its multiprocessing manager: the HTTP process puts it on a manager queue,
the worker gets it from there, sends a START message and the reply back through another manager queue, which the
HTTP process reads in a thread. Each of those is a round trip to the manager process (py-spy, null model, encode
c=8: 58 % of the worker's time and 19 % of the HTTP process's were manager calls; docs/PERFORMANCE.md). Here:

- each inference worker listens on its own socket, `<dir>/<endpoint>-<worker id>.sock`, bound in `setup()` (before
  LitServe marks the worker ready) and rebound by a restarted worker;
- each HTTP process keeps one connection per worker and sends length-prefixed pickled frames
  `(uid, deadline, payload)`; the worker answers `(uid, result)` on the same connection;
- a worker batches what its connections bring (up to `max_batch_size`, waiting at most `batch_timeout` after the
  first request) and skips requests whose deadline has passed (the client already got its 504);
- a worker's death closes its connections: its in-flight requests get 503 + Retry-After at once, and the next request
  reconnects to the restarted worker (until it is back, the endpoint answers 503 as well).

LitServe still spawns, supervises and restarts the workers; the worker half is a LitLoop (the LitAPI's documented
`loop=` extension point), the HTTP half is called by our request handler (patches.EdgeHandler). The sockets live in
a 0700 directory of the serving user: only the server's own processes connect, so frames may be pickles.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import selectors
import socket
import struct
import time
from collections import deque
from pathlib import Path
from typing import Any

from litserve.loops.base import LitLoop

from .errors import ApiError

logger = logging.getLogger("vqtok.server")
HEADER = struct.Struct("!Q")  # frame = 8-byte big-endian length + pickle
RETRY_AFTER_S = 2
SOCKET_BUFFER = 4 << 20  # bytes
SEND_TIMEOUT_S = 10.0  # a worker waits this long for an HTTP process that does not read its replies
RESCAN_S = 1.0  # seconds between looks for worker sockets an HTTP process is not connected to


def frame(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def socket_path(directory: str, endpoint: str, worker_id: int) -> Path:
    return Path(directory) / f"{endpoint}-{worker_id}.sock"


# -- worker half -------------------------------------------------------------------------------------------------------
def listen(directory: str, endpoint: str) -> socket.socket:
    """Bind this worker's socket (LitServe sets LITSERVE_WORKER_ID before setup()); a stale file of a dead
    predecessor is replaced."""
    path = socket_path(directory, endpoint, int(os.environ.get("LITSERVE_WORKER_ID", "0")))
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    sock.setblocking(False)
    return sock


class _Conn:
    """One HTTP process's connection, as the worker sees it: the frame being received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = bytearray()  # the length prefix, while incomplete
        self.body: bytearray | None = None  # the frame body, preallocated once its length is known
        self.got = 0

    def frames(self) -> list | None:
        """The frames completed by what is readable now (None once the peer has gone)."""
        out = []
        try:
            while True:
                if self.body is None:
                    data = self.sock.recv(HEADER.size - len(self.head))
                    if not data:
                        return None
                    self.head += data
                    if len(self.head) < HEADER.size:
                        continue
                    self.body, self.got = bytearray(HEADER.unpack(self.head)[0]), 0
                    self.head.clear()
                n = self.sock.recv_into(memoryview(self.body)[self.got:])
                if n == 0:
                    return None
                self.got += n
                if self.got == len(self.body):
                    out.append(pickle.loads(self.body))
                    self.body = None
        except BlockingIOError:
            return out
        except OSError:
            return None

    def send(self, obj: Any) -> None:
        try:
            # the HTTP process reads continuously: this waits only while its buffer is full, and gives up on a
            # process that stopped reading (its requests then get 503: the connection closes)
            self.sock.settimeout(SEND_TIMEOUT_S)
            self.sock.sendall(frame(obj))
            self.sock.setblocking(False)
        except OSError:  # gone, or stuck: drop the connection (the next read sees it closed)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


def large_buffers(sock: socket.socket) -> None:
    """Socket buffers that hold several 256² requests (the default ~200 kB holds one encode payload: a worker
    collecting a batch then waited on the HTTP process once per request). Capped by net.core.[rw]mem_max."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


class DirectLoop(LitLoop):
    """The worker loop: collect a batch from every connection, run it through the LitAPI, answer each request."""

    def __call__(self, lit_api, device, worker_id, request_queue, transport, workers_setup_status,
                 callback_runner) -> None:
        listener: socket.socket = lit_api.listener
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        ready: deque[tuple[_Conn, int, float | None, Any]] = deque()  # read, not yet run: (conn, uid, deadline, x)
        until = 0.0  # when the oldest waiting request stops waiting for batch-mates
        while True:
            if ready and (len(ready) >= lit_api.max_batch_size or time.monotonic() >= until):
                batch = [ready.popleft() for _ in range(min(lit_api.max_batch_size, len(ready)))]
                now = time.monotonic()
                batch = [b for b in batch if b[2] is None or b[2] > now]  # expired: the client already has its 504
                for (conn, uid, _, _), result in zip(batch, run(lit_api, [b[3] for b in batch]) if batch else ()):
                    conn.send((uid, result))
                until = time.monotonic()  # leftovers have waited already: run them with what is readable now
                continue
            events = sel.select(None if not ready else max(0.0, until - time.monotonic()))
            for key, _ in events:
                if key.fileobj is listener:
                    try:
                        sock, _addr = listener.accept()
                    except BlockingIOError:
                        continue
                    sock.setblocking(False)
                    large_buffers(sock)
                    sel.register(sock, selectors.EVENT_READ, _Conn(sock))
                    continue
                conn: _Conn = key.data
                frames = conn.frames()
                if frames is None:
                    sel.unregister(conn.sock)
                    conn.sock.close()
                    continue
                if frames and not ready:
                    until = time.monotonic() + lit_api.batch_timeout
                ready.extend((conn, uid, deadline, x) for uid, deadline, x in frames)


def run(lit_api, payloads: list) -> list:
    """LitServe's decode_request → predict → encode_response over one batch; an exception fails the whole batch
    (the LitAPI's own predict isolates failing items where it can)."""
    try:
        xs = [lit_api.decode_request(p) for p in payloads]
        ys = lit_api.predict(xs) if lit_api.max_batch_size > 1 else [lit_api.predict(x) for x in xs]
        return [lit_api.encode_response(y) for y in ys]
    except Exception:
        logger.exception("%s: a batch of %d failed", lit_api.api_path, len(payloads))
        return [None] * len(payloads)


# -- HTTP half ---------------------------------------------------------------------------------------------------------
class _Link:
    """One HTTP process's connection to one worker, with the requests waiting on it."""

    def __init__(self, path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path, self.reader, self.writer = path, reader, writer
        self.pending: dict[int, asyncio.Future] = {}
        self.alive = True
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                (n,) = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                uid, result = pickle.loads(await self.reader.readexactly(n))
                fut = self.pending.pop(uid, None)
                if fut is not None and not fut.done():  # gone: its request timed out
                    fut.set_result(result)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.alive = False
            self.writer.close()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(worker_gone())
            self.pending.clear()


def worker_gone() -> ApiError:
    return ApiError(503, "worker_restarting", "the inference worker serving this request stopped and is being "
                    "restarted: retry", headers={"Retry-After": str(RETRY_AFTER_S)})


def no_reply(timeout: float) -> ApiError:
    return ApiError(504, "timeout", f"no reply within the server's {timeout:g} s timeout; the server is overloaded: "
                    "retry later or send smaller requests")


class Dispatcher:
    """The HTTP half for one endpoint in one HTTP process: sends each request to the live worker with the fewest
    requests in flight and waits for its reply."""

    def __init__(self, directory: str, endpoint: str) -> None:
        self.directory, self.endpoint = Path(directory), endpoint
        self.links: dict[Path, _Link] = {}
        self.uids = itertools.count()
        self._rescan = 0.0  # next time to look for workers this process is not connected to (e.g. restarted ones)
        self._scanning = asyncio.Lock()  # one scan at a time: concurrent requests must not open a connection each

    async def _connect(self) -> None:
        async with self._scanning:
            if any(link.alive for link in self.links.values()) and time.monotonic() < self._rescan:
                return  # another request scanned while this one waited
            await self._scan()
            self._rescan = time.monotonic() + RESCAN_S

    async def _scan(self) -> None:
        for path in sorted(self.directory.glob(f"{self.endpoint}-*.sock")):
            link = self.links.get(path)
            if link is not None and link.alive:
                continue
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=SOCKET_BUFFER)
                large_buffers(writer.get_extra_info("socket"))
            except OSError:  # a dead worker's socket, not yet rebound by its successor
                self.links.pop(path, None)
                continue
            self.links[path] = _Link(path, reader, writer)

    async def call(self, payload: dict, timeout: float | None) -> dict:
        """The worker's result for `payload`; 504 after `timeout` seconds, 503 if no worker is up or the worker dies
        while serving it."""
        live = [link for link in self.links.values() if link.alive]
        if not live or time.monotonic() >= self._rescan:
            await self._connect()
            live = [link for link in self.links.values() if link.alive]
        if not live:
            raise worker_gone()
        link = min(live, key=lambda lk: len(lk.pending))
        uid = next(self.uids)
        fut = asyncio.get_running_loop().create_future()
        link.pending[uid] = fut
        deadline = None if timeout is None else time.monotonic() + timeout

        async def exchange() -> dict:  # the deadline covers the send too: a stopped worker stops reading
            link.writer.write(frame((uid, deadline, payload)))
            await link.writer.drain()
            return await fut

        try:
            result = await asyncio.wait_for(exchange(), timeout)
        except asyncio.TimeoutError:
            raise no_reply(timeout) from None
        except (ConnectionError, OSError):
            raise worker_gone() from None
        finally:
            link.pending.pop(uid, None)
        if result is None:
            raise ApiError(500, "internal_error", "inference failed; the server log has the details")
        return result
