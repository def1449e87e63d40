"""Process and connection guards of `vqtok serve`: body read deadline, orphan watchdog, worker/HTTP-process watch.

- `BodyDeadlineMiddleware`: a client that announces a body and then sends it slowly (or never: Content-Length
  100000 with 1,000 bytes sent) gets a 408 after `read_timeout` seconds instead of holding a connection forever.
  Header trickles (slowloris) are cut by `patches.HeaderDeadlineProtocol`.
- `watch_parent()`: every child (inference workers, HTTP processes, the manager) exits when the main process is
  gone, even after a `kill -9` of it, so a restart never finds the port taken by orphans. A polling thread rather
  than PR_SET_PDEATHSIG: that signal follows the parent *thread*, and LitServe restarts dead workers from its
  monitor thread, which ends before the workers are stopped.
- `ProcessWatch`: the main process notices a dead inference worker at once and bumps that endpoint's generation
  counter (shared memory), so the HTTP processes answer its in-flight requests with 503 + Retry-After while LitServe
  restarts it; a dead HTTP process stops the server with a non-zero exit so a supervisor restarts the whole thing.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing as mp
import multiprocessing.util
import os
import threading
import time
from typing import Callable

from .errors import ApiError

logger = logging.getLogger("vqtok.server")
PARENT_POLL_S = 0.25


def name_process(name: str) -> None:
    """Name this process (/proc/PID/comm: `ps -o comm`, `top`), so each endpoint's workers and their memory can be
    told apart; Linux keeps 15 bytes. A no-op where prctl is missing."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class BodyDeadlineMiddleware:
    """408 when the request body is not complete `read_timeout` seconds after the app first asks for it.

    One timer per request, armed at the first `receive()` and disarmed by the body's last chunk: when it fires
    during a `receive()`, it cancels that wait (the request task is waiting on the client, nothing else); when it
    fires between two, the next `receive()` raises. (asyncio.wait_for per `receive()` made a task per call: ~1.5 %
    of an HTTP process's time at 1,000 req/s.)"""

    def __init__(self, app, read_timeout: float) -> None:
        self.app, self.read_timeout = app, read_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.read_timeout:
            return await self.app(scope, receive, send)
        state = {"timer": None, "waiting": None, "expired": False}

        def expire() -> None:
            state["expired"] = True
            if state["waiting"] is not None:
                state["waiting"].cancel()

        def too_late() -> ApiError:
            return ApiError(408, "request_timeout", f"the request body did not arrive within {self.read_timeout:g} "
                            "s (is Content-Length right?); send it faster or in full", headers={"Connection": "close"})

        async def timed_receive():
            if state["expired"]:
                raise too_late()
            if state["timer"] is None:
                state["timer"] = asyncio.get_running_loop().call_later(self.read_timeout, expire)
            state["waiting"] = asyncio.current_task()
            try:
                message = await receive()
            except asyncio.CancelledError:
                if state["expired"]:
                    task = asyncio.current_task()
                    if hasattr(task, "uncancel"):  # Python 3.11+: our own cancellation, handled here
                        task.uncancel()
                    raise too_late() from None
                raise
            finally:
                state["waiting"] = None
            if not message.get("more_body"):  # the body is complete (or the client left)
                state["timer"].cancel()
            return message

        try:
            await self.app(scope, timed_receive, send)
        finally:
            if state["timer"] is not None:
                state["timer"].cancel()


def watch_parent(poll_s: float = PARENT_POLL_S) -> None:
    """In a child process: exit as soon as the parent process is gone (we get re-parented). Idempotent."""
    if getattr(watch_parent, "_pid", None) == os.getpid():
        return
    watch_parent._pid = os.getpid()
    parent = os.getppid()

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)  # no cleanup: the parent that owned it all is gone

    threading.Thread(target=poll, name="vqtok-parent-watch", daemon=True).start()


class _AfterFork:
    pass


_AFTER_FORK = _AfterFork()  # registry key: multiprocessing keeps it weakly


def watch_parent_in_forked_children() -> None:
    """Make every multiprocessing child forked from here start `watch_parent` (spawned ones call it themselves)."""
    multiprocessing.util.register_after_fork(_AFTER_FORK, _forked_child)


def _forked_child(_) -> None:
    # LitServe names its HTTP processes LitServer-N; the other forked child is the multiprocessing manager
    name_process("vq-http" if mp.current_process().name.startswith("LitServer") else "vq-manager")
    watch_parent()


class ProcessWatch:
    """Main-process thread: worker deaths bump per-worker generations; an HTTP process death calls `on_fatal`."""

    def __init__(self, workers_per_api: dict[str, int]) -> None:
        # shared memory created before the HTTP processes are forked: they read it, this process writes it
        self.generations = {path: mp.Array("q", n, lock=False) for path, n in workers_per_api.items()}
        self.down = {path: mp.Array("b", n, lock=False) for path, n in workers_per_api.items()}  # dead, not back yet
        self.fatal: str | None = None
        self._stop = threading.Event()

    def of(self, api_path: str) -> Callable[[], tuple[int, ...]]:
        array = self.generations[api_path]
        return lambda: tuple(array)

    def all_up(self) -> bool:
        return not any(any(flags) for flags in self.down.values())

    def start(self, workers: Callable[[], list[tuple[str, int, mp.process.BaseProcess]]],
              http: list[mp.process.BaseProcess], on_fatal: Callable[[str], None], poll_s: float = 0.1) -> None:
        """`workers()`: (api path, LitServe worker id, process) of every inference worker, as of now."""
        def loop() -> None:
            seen_dead: set[int] = set()
            while not self._stop.wait(poll_s):
                for path, wid, proc in workers():
                    if proc.is_alive():
                        self.down[path][wid] = 0  # a restarted worker (readiness: LitServe's setup status)
                    elif proc.pid not in seen_dead:
                        seen_dead.add(proc.pid)
                        self.generations[path][wid] += 1
                        self.down[path][wid] = 1
                        logger.error("%s: inference worker %s (pid %s) died (exit %s); its requests get 503, "
                                     "LitServe restarts it", path, proc.name, proc.pid, proc.exitcode)
                dead = [p for p in http if not p.is_alive()]
                if dead and not self._stop.is_set():
                    self.fatal = (f"HTTP process {dead[0].name} (pid {dead[0].pid}) died (exit {dead[0].exitcode}); "
                                  "stopping so that a supervisor restarts the server")
                    logger.error(self.fatal)
                    on_fatal(self.fatal)
                    return

        threading.Thread(target=loop, name="vqtok-process-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
