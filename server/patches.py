"""Every place vqtok reaches into uvicorn/LitServe internals, and why (tests/test_patches.py pins the patched code:
an upgrade that changes it fails that test instead of silently breaking the server).

- `HeaderDeadlineProtocol` (uvicorn 0.54 `HttpToolsProtocol`): uvicorn has no request-header timeout, and its
  keep-alive timer is cancelled by the first byte received, so a client trickling header bytes (slowloris) holds a
  connection forever. This closes connections whose request line + headers are not complete `header_timeout`
  seconds after the connection opened or the previous response ended.
- `wait_for_reply` (LitServe 0.2.19 `RegularRequestHandler.handle_request`): LitServe waits for a worker's reply
  with no deadline (`--timeout` only bounds the time in the queue) and, with HTTP processes, never learns that the
  worker holding a request died (its monitor marks requests in the *main* process's buffer). This waits with an
  end-to-end deadline (504) and answers 503 + Retry-After when the endpoint's worker generation changes.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from litserve.server import ResponseBufferItem
from litserve.utils import LitAPIStatus
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import ApiError

RETRY_AFTER_S = 2


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

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # the next request on this keep-alive connection gets its own deadline
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to pass as uvicorn's `http=` (one subclass per timeout: uvicorn instantiates it)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})


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
                raise ApiError(504, "timeout", f"no reply within the server's {timeout:g} s timeout; the server is "
                               "overloaded: retry later or send smaller requests")
            try:
                await asyncio.wait_for(event.wait(), wait)
                break
            except asyncio.TimeoutError:
                # item.worker_id: set by LitServe when a worker takes the request (its START message); a request
                # still queued is left for the restarted worker
                wid = item.worker_id
                if wid is not None and generations()[wid] != before[wid]:
                    raise ApiError(503, "worker_restarting", "the inference worker serving this request stopped "
                                   "and is being restarted: retry", headers={"Retry-After": str(RETRY_AFTER_S)}) \
                        from None
        response, status = item.response
    finally:
        handler.server.response_buffer.pop(uid, None)  # a late reply for a gone uid is dropped by LitServe
    if status == LitAPIStatus.ERROR:
        handler._handle_error_response(response)  # raises: HTTPException as sent by the worker, else a 500
    return response
