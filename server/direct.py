"""Requests from the HTTP processes to the inference workers over Unix sockets, with no broker in between.

LitServe 0.2.19 moves every request through its multiprocessing manager: the HTTP process puts it on a manager queue,
the worker gets it from there, sends a START message and the reply back through another manager queue, which the
HTTP process reads in a thread. Each of those is a round trip to the manager process (py-spy, null model, encode
c=8: 58 % of the worker's time and 19 % of the HTTP process's were manager calls; docs/PERFORMANCE.md). Here:

- each inference worker listens on its own socket, `<dir>/<endpoint>-<worker id>.sock`, bound in `setup()` (before
  LitServe marks the worker ready) and rebound by a restarted worker;
- each HTTP process keeps one connection per worker and sends length-prefixed pickled frames
  `(uid, deadline, payload)`; the worker answers `(uid, result)` on the same connection; request images up to 512²
  travel in a shared-memory arena of the connection (a memfd handed to the worker when it connects), the frame only
  names the slot;
- a worker batches what its connections bring (up to `max_batch_size`, waiting at most `batch_timeout` after the
  first request) and skips requests whose deadline has passed (the client already got its 504);
- a worker's death closes its connections: its in-flight requests get 503 + Retry-After at once; later requests go
  to the endpoint's other workers, or wait (within their deadline) for the restarted one to bind its socket again.

LitServe still spawns, supervises and restarts the workers; the worker half is a LitLoop (the LitAPI's documented
`loop=` extension point), the HTTP half is called by our request handler (patches.EdgeHandler). The sockets live in
a 0700 directory of the serving user: only the server's own processes connect, so frames may be pickles.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import os
import pickle
import selectors
import socket
import struct
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from litserve.loops.base import LitLoop

from .errors import ApiError

logger = logging.getLogger("vqtok.server")
HEADER = struct.Struct("!Q")  # frame = 8-byte big-endian length + pickle
RETRY_AFTER_S = 2
SOCKET_BUFFER = 4 << 20  # bytes
SEND_TIMEOUT_S = 10.0  # a worker waits this long for an HTTP process that does not read its replies
RECV_BYTES = 256 << 10  # a worker's reads from its connections, at most
RESCAN_S = 1.0  # seconds between looks for worker sockets an HTTP process is not connected to
WAIT_SCAN_S = 0.1  # ... while no worker of the endpoint is up
# Request images travel in shared memory: each connection has an arena of SLOTS slots (memfd, passed to the worker
# with the connection); an image that fits a free slot is copied there once instead of being pickled through the
# socket (null model, encode c = 64: pickling and sending the 196 kB took 17 % of an HTTP process's time).
SLOT_BYTES = 1 << 20  # a 512² RGB image fits
SLOTS = 64  # default slots per connection (`vqtok serve --shared-slots`): 64 MiB reserved, pages touched only as used
# (by the images in flight: ~0.2 MiB per 256² request). 32 slots ran out at c = 64: the requests beyond them were
# pickled (null model, one HTTP-side process driving a worker directly: 0.32 vs 0.19 worker CPU-ms per request)


class Shared(NamedTuple):
    """An image the HTTP process put in slot `slot` of the connection's arena."""

    slot: int
    shape: tuple
    dtype: str


def _map_images(payload: dict, fn: Callable[[Any], Any]) -> dict:
    """`payload` with fn applied to its image, or to each item's (the parts that carry pixels)."""
    out = dict(payload)
    if "image" in out:
        out["image"] = fn(out["image"])
    if "items" in out:
        out["items"] = [{**it, "image": fn(it["image"])} if "image" in it else it for it in out["items"]]
    return out


def _slot_array(arena: mmap.mmap, ref: Shared) -> np.ndarray:
    return np.ndarray(ref.shape, np.dtype(ref.dtype), buffer=arena, offset=ref.slot * SLOT_BYTES)


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
    """One HTTP process's connection, as the worker sees it: bytes received, not yet parsed into frames."""

    def __init__(self, sock: socket.socket, arena: mmap.mmap | None) -> None:
        self.sock, self.arena = sock, arena
        self.buf = bytearray()

    def frames(self) -> list | None:
        """The frames completed by what is readable now (None once the peer has gone). One recv usually takes every
        waiting frame: with images in the arena, a frame is a few hundred bytes."""
        chunk = _recv_chunk()
        try:
            while True:
                n = self.sock.recv_into(chunk)
                if n == 0:
                    return None
                self.buf += memoryview(chunk)[:n]
                if n < len(chunk):  # drained for now (select reports the next bytes): no extra EAGAIN round
                    break
        except BlockingIOError:
            pass
        except OSError:
            return None
        out = []
        while len(self.buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buf)
            if len(self.buf) < HEADER.size + size:
                break
            uid, deadline, x = pickle.loads(memoryview(self.buf)[HEADER.size:HEADER.size + size])
            del self.buf[:HEADER.size + size]
            if self.arena is not None:  # views into the arena, valid until the reply is sent
                x = _map_images(x, lambda v: _slot_array(self.arena, v) if isinstance(v, Shared) else v)
            out.append((uid, deadline, x))
        return out

    def send(self, data: bytes) -> None:
        """Send reply frames: at once if the socket buffer takes them (the usual case), else waiting up to
        SEND_TIMEOUT_S (the HTTP process reads continuously: it gives up only on a process that stopped reading,
        whose requests then get 503 when the connection closes)."""
        try:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self.sock.settimeout(SEND_TIMEOUT_S)
                self.sock.sendall(memoryview(data)[sent:])
                self.sock.setblocking(False)
        except OSError:  # gone, or stuck: drop the connection (the next read sees it closed)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


_chunk: list[bytearray] = []


def _recv_chunk() -> bytearray:
    """The worker's receive buffer (one per process, made on first use)."""
    if not _chunk:
        _chunk.append(bytearray(RECV_BYTES))
    return _chunk[0]


def accept(sock: socket.socket) -> _Conn | None:
    """A new HTTP-process connection: its first message is one byte with the arena's file descriptor (none where
    the platform has no memfd: then images come pickled)."""
    try:
        sock.settimeout(5.0)
        _msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
        arena = mmap.mmap(fds[0], os.fstat(fds[0]).st_size) if fds else None
        for fd in fds:
            os.close(fd)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    large_buffers(sock)
    return _Conn(sock, arena)


def large_buffers(sock: socket.socket) -> None:
    """Socket buffers that hold several 256² requests (the default ~200 kB holds one encode payload: a worker
    collecting a batch then waited on the HTTP process once per request). Capped by net.core.[rw]mem_max."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):  # a platform cap below the request: the default size still works
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
                replies: dict[_Conn, list[bytes]] = {}
                for (conn, uid, _, _), result in zip(batch, run(lit_api, [b[3] for b in batch]) if batch else ()):
                    replies.setdefault(conn, []).append(frame((uid, result)))
                for conn, frames in replies.items():  # one send per connection and batch
                    conn.send(b"".join(frames))
                until = time.monotonic()  # leftovers have waited already: run them with what is readable now
                continue
            events = sel.select(None if not ready else max(0.0, until - time.monotonic()))
            for key, _ in events:
                if key.fileobj is listener:
                    try:
                        sock, _addr = listener.accept()
                    except BlockingIOError:
                        continue
                    conn = accept(sock)
                    if conn is not None:
                        sel.register(sock, selectors.EVENT_READ, conn)
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
async def _open(path: Path, slots: int) -> _Link:
    """Connect to a worker and hand it this connection's arena of `slots` slots (none if 0)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, str(path))
        large_buffers(sock)
        arena, fds = None, []
        if slots and hasattr(os, "memfd_create"):
            fd = os.memfd_create("vqtok-requests")
            os.ftruncate(fd, slots * SLOT_BYTES)
            arena, fds = mmap.mmap(fd, slots * SLOT_BYTES), [fd]
        try:
            socket.send_fds(sock, [b"a"], fds)  # one byte on a fresh socket: never blocks
        finally:
            for fd in fds:
                os.close(fd)  # the mapping and the worker's copy keep the memory
        _, link = await loop.create_unix_connection(lambda: _Link(path, arena), sock=sock)
    except BaseException:
        sock.close()
        raise
    return link


class _Link(asyncio.Protocol):
    """One HTTP process's connection to one worker, with the requests waiting on it. A protocol rather than a
    stream reader/writer: replies are parsed as they arrive and resolve their request's future directly (a reader
    task awaiting each frame's header and body cost two task switches per reply)."""

    def __init__(self, path: Path, arena: mmap.mmap | None) -> None:
        self.path, self.arena = path, arena
        self.free = list(range(len(arena) // SLOT_BYTES)) if arena is not None else []  # slots free for an image
        self.pending: dict[int, asyncio.Future] = {}
        self.alive = True
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()  # received bytes not yet parsed into frames
        self.paused = False  # the transport's write buffer is over its limit: senders wait (flow control)
        self.send_waiters: list[asyncio.Future] = []
        self.outbox: list[bytes] = []  # frames of this loop iteration's requests, not yet written

    def post(self, data: bytes) -> None:
        """Queue a request frame; the frames queued in one event-loop iteration go out in one write (`flush`).
        At c = 64 one write per request woke the worker for nearly every request (83 % of its batches held one);
        sent together, the worker reads them in one wake-up and runs them as one batch: worker CPU per request
        0.24–0.27 vs 0.36–0.42 ms (docs/PERFORMANCE.md, "Third pass")."""
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(data)

    def flush(self) -> None:
        data, self.outbox = b"".join(self.outbox), []
        if self.alive and self.transport is not None:  # gone: its requests already have their 503
            self.transport.write(data)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if len(self.buf) < HEADER.size + n:
                return
            uid, result = pickle.loads(memoryview(self.buf)[HEADER.size:HEADER.size + n])
            del self.buf[:HEADER.size + n]
            fut = self.pending.pop(uid, None)
            if fut is not None and not fut.done():  # gone: its request timed out
                fut.set_result(result)

    def connection_lost(self, exc) -> None:
        self.alive = False  # the arena goes with the last reference to this link
        for fut in [*self.pending.values(), *self.send_waiters]:
            if not fut.done():
                fut.set_exception(worker_gone())
        self.pending.clear()
        self.send_waiters.clear()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for fut in self.send_waiters:
            if not fut.done():
                fut.set_result(None)
        self.send_waiters.clear()

    def abort(self) -> None:
        """Drop the connection (tests: what a worker's death looks like from here)."""
        if self.transport is not None:
            self.transport.abort()


def worker_gone() -> ApiError:
    return ApiError(503, "worker_restarting", "the inference worker serving this request stopped and is being "
                    "restarted: retry", headers={"Retry-After": str(RETRY_AFTER_S)})


def no_reply(timeout: float) -> ApiError:
    return ApiError(504, "timeout", f"no reply within the server's {timeout:g} s timeout; the server is overloaded: "
                    "retry later or send smaller requests")


class Dispatcher:
    """The HTTP half for one endpoint in one HTTP process: sends each request to the live worker with the fewest
    requests in flight and waits for its reply."""

    def __init__(self, directory: str, endpoint: str, slots: int = SLOTS) -> None:
        self.directory, self.endpoint, self.slots = Path(directory), endpoint, slots
        self.links: dict[Path, _Link] = {}
        self.uids = itertools.count()
        self._scanned = -RESCAN_S  # when this process last looked for worker sockets
        self._scanning = asyncio.Lock()  # one scan at a time: concurrent requests must not open a connection each

    def _live(self) -> list[_Link]:
        return [link for link in self.links.values() if link.alive]

    async def _connect(self, interval: float) -> None:
        """Connect to worker sockets this process has no live link to (new or restarted workers), unless a scan ran
        less than `interval` seconds ago."""
        async with self._scanning:
            if time.monotonic() - self._scanned < interval:
                return  # another request scanned while this one waited
            await self._scan()
            self._scanned = time.monotonic()

    async def _wait_for_worker(self, deadline: float | None) -> list[_Link]:
        """The live links, after waiting for one (a worker restarting and loading its models) until `deadline`:
        a request arriving then waits as it would in a queue."""
        while not (live := self._live()):
            if deadline is not None and time.monotonic() >= deadline:
                raise worker_gone()
            await asyncio.sleep(WAIT_SCAN_S)
            await self._connect(WAIT_SCAN_S)
        return live

    async def _scan(self) -> None:
        for path in sorted(self.directory.glob(f"{self.endpoint}-*.sock")):
            link = self.links.get(path)
            if link is not None and link.alive:
                continue
            try:
                self.links[path] = await _open(path, self.slots)
            except OSError:  # a dead worker's socket, not yet rebound by its successor
                self.links.pop(path, None)

    async def call(self, payload: dict, timeout: float | None) -> dict:
        """The worker's result for `payload`; 504 after `timeout` seconds, 503 if the worker dies while serving it
        or no worker of the endpoint comes up within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._live() or time.monotonic() - self._scanned >= RESCAN_S:
            await self._connect(RESCAN_S if self._live() else 0.0)
        link = min(await self._wait_for_worker(deadline), key=lambda lk: len(lk.pending))
        uid = next(self.uids)
        loop = asyncio.get_running_loop()
        fut = link.pending[uid] = loop.create_future()
        timeout = None if deadline is None else max(0.001, deadline - time.monotonic())
        slots: list[int] = []
        sending: list[asyncio.Future] = []  # this request's wait for the send buffer, if any

        def share(arr: Any) -> Any:
            if not isinstance(arr, np.ndarray) or arr.nbytes > SLOT_BYTES or not link.free:
                return arr
            slots.append(link.free.pop())
            ref = Shared(slots[-1], arr.shape, arr.dtype.str)
            _slot_array(link.arena, ref)[...] = arr
            return ref

        def expire() -> None:  # a timer, not asyncio.wait_for: no task per request
            for f in (fut, *sending):  # the deadline covers the send too
                if not f.done():
                    f.set_exception(no_reply(timeout))

        timer = None if timeout is None else loop.call_later(timeout, expire)
        try:
            link.post(frame((uid, deadline, _map_images(payload, share))))
            while link.paused and link.alive and not fut.done():  # a worker that stops reading: wait, in the deadline
                sending[:] = [loop.create_future()]
                link.send_waiters.append(sending[0])
                await sending[0]
            result = await fut
        finally:
            if timer is not None:
                timer.cancel()
            for f in (fut, *sending):  # an error set on a future this request no longer awaits: seen, not logged
                if f.done() and not f.cancelled():
                    f.exception()
            link.pending.pop(uid, None)
            # a slot is reused only after its request ended; a worker still reading a timed-out request's slot
            # can only spoil that request's (discarded) result: a new request's frame follows its copy
            link.free += slots
        if result is None:
            raise ApiError(500, "internal_error", "inference failed; the server log has the details")
        return result
