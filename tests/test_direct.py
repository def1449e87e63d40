"""server/direct.py: the HTTP process ↔ inference worker path over Unix sockets (a real worker loop in a thread)."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vqtok.server import direct
from vqtok.server.errors import ApiError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class EchoApi:
    """The LitAPI surface DirectLoop uses: records each batch, echoes each payload's image sum."""

    api_path = "/v1/echo"

    def __init__(self, max_batch_size: int = 4, batch_timeout: float = 0.0, delay: float = 0.0) -> None:
        self.max_batch_size, self.batch_timeout, self.delay = max_batch_size, batch_timeout, delay
        self.batches: list[list[int]] = []

    def decode_request(self, x):
        return x

    def predict(self, xs):  # LitServe's contract: a list when max_batch_size > 1, else one item
        one = self.max_batch_size == 1
        xs = [xs] if one else xs
        self.batches.append([x["i"] for x in xs])
        time.sleep(self.delay)
        if any(x.get("fail") for x in xs):
            raise RuntimeError("model failed")
        ys = [{"i": x["i"], "sum": int(x["image"].sum())} for x in xs]
        return ys[0] if one else ys

    def encode_response(self, y):
        return y


def start_worker(tmp_path, api: EchoApi, worker_id: int = 0) -> threading.Thread:
    os.environ["LITSERVE_WORKER_ID"] = str(worker_id)
    try:
        api.listener = direct.listen(str(tmp_path), "echo")
    finally:
        del os.environ["LITSERVE_WORKER_ID"]
    t = threading.Thread(target=direct.DirectLoop(), args=(api, "cpu", worker_id, None, None, None, None),
                         daemon=True)
    t.start()
    return t


def payload(i: int, **kw) -> dict:
    return {"i": i, "image": np.full((256, 256, 3), i % 7, np.uint8), **kw}  # 196 kB, like a 256² encode payload


def test_replies_reach_their_requests_and_batches_respect_the_limit(tmp_path):
    api = EchoApi(max_batch_size=4, batch_timeout=0.05)
    start_worker(tmp_path, api)

    async def go():
        d = direct.Dispatcher(str(tmp_path), "echo")
        return await asyncio.gather(*(d.call(payload(i), timeout=30) for i in range(20)))

    replies = asyncio.run(go())
    assert [r["i"] for r in replies] == list(range(20))
    assert all(r["sum"] == (r["i"] % 7) * 256 * 256 * 3 for r in replies)
    assert sorted(i for b in api.batches for i in b) == list(range(20))
    assert max(len(b) for b in api.batches) <= 4 and len(api.batches) < 20  # batched, within the limit


def test_requests_of_one_loop_iteration_reach_the_worker_in_one_write(tmp_path):
    # batch_timeout 0: the worker runs whatever one read brought; the 8 frames arrive together, so one batch of 8
    api = EchoApi(max_batch_size=8, batch_timeout=0.0)
    start_worker(tmp_path, api)

    async def go():
        d = direct.Dispatcher(str(tmp_path), "echo")
        await d.call(payload(0), timeout=30)  # connected: the next calls reach `post` without yielding
        return await asyncio.gather(*(d.call(payload(i), timeout=30) for i in range(1, 9)))

    assert [r["i"] for r in asyncio.run(go())] == list(range(1, 9))
    assert api.batches == [[0], list(range(1, 9))]


def test_a_failing_batch_is_a_500_and_the_worker_goes_on(tmp_path):
    start_worker(tmp_path, EchoApi(max_batch_size=1))

    async def go():
        d = direct.Dispatcher(str(tmp_path), "echo")
        with pytest.raises(ApiError) as err:
            await d.call(payload(1, fail=True), timeout=30)
        assert err.value.status_code == 500
        return await d.call(payload(2), timeout=30)

    assert asyncio.run(go())["i"] == 2


def test_a_request_waits_for_a_worker_within_its_deadline_then_503(tmp_path):
    async def none():
        t0 = time.monotonic()
        with pytest.raises(ApiError) as err:
            await direct.Dispatcher(str(tmp_path), "echo").call(payload(0), timeout=0.3)
        return err.value, time.monotonic() - t0

    err, waited = asyncio.run(none())
    assert err.status_code == 503 and err.code == "worker_restarting" and err.headers["Retry-After"]
    assert 0.3 <= waited < 3

    async def late():  # the worker binds its socket while the request waits (a restart, or start-up)
        d = direct.Dispatcher(str(tmp_path), "echo")
        asyncio.get_running_loop().call_later(0.3, start_worker, tmp_path, EchoApi(max_batch_size=1))
        return await asyncio.gather(*(d.call(payload(i), timeout=30) for i in range(3)))

    assert [r["i"] for r in asyncio.run(late())] == [0, 1, 2]


def test_a_slow_worker_is_504_and_its_late_reply_is_dropped(tmp_path):
    api = EchoApi(max_batch_size=1, delay=0.5)
    start_worker(tmp_path, api)

    async def slow():
        d = direct.Dispatcher(str(tmp_path), "echo")
        with pytest.raises(ApiError) as err:
            await d.call(payload(1), timeout=0.1)
        assert err.value.status_code == 504
        return await d.call(payload(2), timeout=30)  # the late reply for 1 does not answer 2

    assert asyncio.run(slow())["i"] == 2


def test_expired_requests_are_skipped_by_the_worker(tmp_path):
    api = EchoApi(max_batch_size=1, delay=0.3)
    start_worker(tmp_path, api)

    async def go():
        d = direct.Dispatcher(str(tmp_path), "echo")
        first = asyncio.ensure_future(d.call(payload(1), timeout=30))
        await asyncio.sleep(0.05)  # 1 is running; 2 waits behind it and expires there
        with pytest.raises(ApiError):
            await d.call(payload(2), timeout=0.1)
        await first
        return await d.call(payload(3), timeout=30)

    asyncio.run(go())
    assert 2 not in [i for b in api.batches for i in b]


def test_a_dead_worker_fails_its_requests_with_503_and_its_successor_is_found(tmp_path):
    api = EchoApi(max_batch_size=1, delay=0.5)
    start_worker(tmp_path, api)

    async def go():
        d = direct.Dispatcher(str(tmp_path), "echo")
        pending = asyncio.ensure_future(d.call(payload(1), timeout=30))
        await asyncio.sleep(0.1)
        link = next(iter(d.links.values()))
        link.abort()  # what the worker's death looks like from here: the connection closes
        with pytest.raises(ApiError) as err:
            await pending
        assert err.value.status_code == 503 and err.value.code == "worker_restarting"
        start_worker(tmp_path, EchoApi(max_batch_size=1))  # the restarted worker rebinds the same path
        return await d.call(payload(2), timeout=30)

    assert asyncio.run(go())["i"] == 2


def test_the_default_server_uses_the_direct_path_and_per_device_defaults():
    from vqtok.server.app import Settings, build_server, default_api_servers, default_batch_timeout

    server = build_server(FIXTURES, ["tiny-model"], settings=Settings())
    try:
        assert server.settings.queue == "direct" and server.socket_dir and os.path.isdir(server.socket_dir)
        assert all(isinstance(api.loop, direct.DirectLoop) and api.socket_dir == server.socket_dir
                   for api in server.litapi_connector)
    finally:
        os.rmdir(server.socket_dir)
    assert server.settings.batch_timeout == default_batch_timeout("cpu") == 0.0
    assert default_batch_timeout("cuda") > 0
    assert default_api_servers("cpu", 1, 1) == len(os.sched_getaffinity(0))
    assert default_api_servers("cuda", 2, 4) == 8
    litserve = build_server(FIXTURES, ["tiny-model"], settings=Settings(queue="litserve"))
    assert litserve.socket_dir is None and not any(isinstance(a.loop, direct.DirectLoop)
                                                   for a in litserve.litapi_connector)
    with pytest.raises(ValueError, match="--queue litserve"):
        build_server(FIXTURES, ["tiny-model"], settings=Settings(polling_loop=True))


def test_a_worker_that_stopped_reading_still_gives_504_at_the_deadline(tmp_path):
    # a listener that accepts and never reads: what a SIGSTOPped worker looks like once the socket buffers are full
    os.environ["LITSERVE_WORKER_ID"] = "0"
    try:
        listener = direct.listen(str(tmp_path), "echo")
    finally:
        del os.environ["LITSERVE_WORKER_ID"]
    listener.setblocking(True)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()

    async def go():
        d = direct.Dispatcher(str(tmp_path), "echo")
        t0 = time.monotonic()
        out = await asyncio.gather(*(d.call(payload(i), timeout=0.5) for i in range(200)), return_exceptions=True)
        return out, time.monotonic() - t0

    out, took = asyncio.run(go())  # 200 × 196 kB: far more than the socket buffers hold
    assert all(isinstance(e, ApiError) and e.status_code == 504 for e in out), sorted({repr(e)[:80] for e in out})
    assert took < 5


@pytest.mark.parametrize("slots", [direct.SLOTS, 0])
def test_images_travel_in_shared_slots_and_big_ones_inline(tmp_path, slots):
    start_worker(tmp_path, EchoApi(max_batch_size=8))
    big = {"i": 99, "image": np.full((1024, 1024, 3), 3, np.uint8)}  # 3 MiB: over a slot, pickled through the socket

    async def go():
        d = direct.Dispatcher(str(tmp_path), "echo", slots)
        replies = await asyncio.gather(*(d.call(payload(i), timeout=30) for i in range(direct.SLOTS + 8)),
                                       d.call(big, timeout=30))
        (link,) = d.links.values()
        return replies, link

    replies, link = asyncio.run(go())
    assert (link.arena is not None) == bool(slots) and sorted(link.free) == list(range(slots))  # all given back
    assert [r["sum"] for r in replies[:-1]] == [(i % 7) * 256 * 256 * 3 for i in range(direct.SLOTS + 8)]
    assert replies[-1]["sum"] == 3 * 1024 * 1024 * 3
    assert len(direct.frame((0, None, direct._map_images(payload(1), lambda a: direct.Shared(0, a.shape,
                                                                                            a.dtype.str))))) < 1024
