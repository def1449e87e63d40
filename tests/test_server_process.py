"""A real `vqtok serve` subprocess on loopback: endpoints against local ONNX Runtime, batching isolation,
metrics, start-up errors, and clean shutdown on SIGTERM/SIGINT (in-flight requests finish, no process left)."""
from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from _serving import PHOTOS, REPO, LiveServer, free_port, local_tokenizer, models_dir, psnr, session_pids

KEY = "proc-key"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    models_dir(root)
    return root


@pytest.fixture(scope="module")
def tok(root):
    return local_tokenizer(root / "models" / "tiny-a")


@pytest.fixture(scope="module", params=["direct", "litserve"])
def live(root, request):
    """The server with its default request path (server/direct.py) and with LitServe's queues (`--queue litserve`)."""
    args = ["--models-dir", str(root / "models"), "--max-batch-size", "8", "--batch-timeout", "0.5", "--threads", "1",
            "--queue", request.param]
    with LiveServer(args, api_key=KEY, log=root / f"serve-{request.param}.log") as srv:
        yield srv


def _client(live) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers=live.headers, timeout=600)


def _metrics(live) -> dict:
    with _client(live) as c:
        lines = c.get("/metrics").text.splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line.startswith("vqtok_"))}


def test_endpoints_equal_local_runtime(live, tok):
    with _client(live) as c:
        assert c.get("/v1/models").json()["default"] == "tiny-a"
        for photo in PHOTOS[:2]:
            data = photo.read_bytes()
            r = c.post("/v1/encode", files={"image": (photo.name, data, "image/jpeg")})
            assert r.status_code == 200, r.text
            codes = np.array(r.json()["codes"])
            np.testing.assert_array_equal(codes, tok.encode(data)[0])
            r = c.post("/v1/decode", json={"model": "tiny-a", "codes": codes.tolist()})
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), tok.decode(codes)[0])
            r = c.post("/v1/reconstruct", content=data, headers={"Content-Type": "image/jpeg"})
            batch, _ = tok.prepare(data)
            local = tok.decode(tok.encode_array(batch))[0]
            assert psnr(np.asarray(Image.open(io.BytesIO(r.content))), batch[0]) == psnr(local, batch[0])


async def _concurrent(live, path: str, requests: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=live.url, headers=live.headers, timeout=600) as c:
        return await asyncio.gather(*[c.post(path, **kw) for kw in requests])


def test_one_bad_request_never_fails_its_batch_mates(live, tok):
    good = PHOTOS[0].read_bytes()
    before = _metrics(live)
    reqs = [dict(content=good, headers={"Content-Type": "image/jpeg"}) for _ in range(7)]
    reqs.insert(3, dict(content=b"\xff\xd8 truncated jpeg", headers={"Content-Type": "image/jpeg"}))
    replies = asyncio.run(_concurrent(live, "/v1/encode", reqs))
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) == 7 and statuses[3] == 415, statuses
    for r in replies[:3] + replies[4:]:
        np.testing.assert_array_equal(np.array(r.json()["codes"]), tok.encode(good)[0])
    after = _metrics(live)
    key = '{endpoint="/v1/encode"}'
    batches = after[f"vqtok_batch_size_count{key}"] - before.get(f"vqtok_batch_size_count{key}", 0)
    items = after[f"vqtok_batch_size_sum{key}"] - before.get(f"vqtok_batch_size_sum{key}", 0)
    assert items == 7 and batches < 7, "concurrent requests should share dynamic batches"
    codes = [[0, 1], [2, 3]]
    reqs = [dict(json={"codes": codes}) for _ in range(7)]
    reqs.insert(5, dict(json={"codes": [[0, 1], [2, 64]]}))
    statuses = [r.status_code for r in asyncio.run(_concurrent(live, "/v1/decode", reqs))]
    assert statuses.count(200) == 7 and statuses[5] == 422, statuses


def test_metrics_count_requests_by_endpoint_model_status(live):
    before = _metrics(live)
    with _client(live) as c:
        c.post("/v1/decode", json={"codes": [[1, 2], [3, 4]]})
        c.post("/v1/decode", json={"codes": [[1, 2], [3, 4]], "model": "nope"})
        c.get("/v1/models", headers={"X-API-Key": "wrong"})
    after = _metrics(live)
    for key, n in [('vqtok_requests_total{endpoint="/v1/decode",model="tiny-a",status="200"}', 1),
                   ('vqtok_requests_total{endpoint="/v1/decode",model="",status="404"}', 1),
                   ('vqtok_requests_total{endpoint="/v1/models",model="",status="401"}', 1),
                   ('vqtok_images_processed_total{endpoint="/v1/decode",model="tiny-a"}', 1),
                   ('vqtok_codes_processed_total{endpoint="/v1/decode",model="tiny-a"}', 4)]:
        assert after.get(key, 0) - before.get(key, 0) == n, key


def _wait_gone(sid: int, timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_zz_sigterm_finishes_in_flight_requests_and_leaves_no_process(live, tok):
    """Runs last in this module: SIGTERM to the server process alone, as `docker stop` sends it."""
    assert len(session_pids(live.proc.pid)) >= 5  # server, manager, 3 workers, HTTP process (+ resource tracker)
    data = PHOTOS[1].read_bytes()

    async def main() -> httpx.Response:
        release = asyncio.Event()

        async def body():
            yield data[:1000]
            await release.wait()  # the request is in flight (headers and part of the body sent) across SIGTERM
            yield data[1000:]

        async with httpx.AsyncClient(base_url=live.url, headers=live.headers, timeout=600) as c:
            assert (await c.get("/health")).status_code == 200  # the keep-alive connection is accepted
            task = asyncio.create_task(c.post("/v1/encode", content=body(), headers={"Content-Type": "image/jpeg"}))
            await asyncio.sleep(2.0)
            live.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            release.set()
            return await task

    reply = asyncio.run(main())
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(np.array(reply.json()["codes"]), tok.encode(data)[0])
    assert live.proc.wait(60) == 0
    assert _wait_gone(live.proc.pid) == set(), "processes left behind after SIGTERM"


def test_serve_without_arguments_uses_the_shipped_default(tmp_path):
    """`vqtok serve` alone: every model under the weights folder, DEFAULT_MODEL as default, CPU, loopback."""
    from vqtok.tokenizer.hub import DEFAULT_MODEL

    weights = models_dir(tmp_path, (DEFAULT_MODEL, "other-model"))
    srv = LiveServer([], env={"VQTOK_WEIGHTS_DIR": str(weights)}, log=tmp_path / "serve.log")
    with srv:
        listing = httpx.get(srv.url + "/v1/models").json()
        assert listing["default"] == DEFAULT_MODEL
        assert sorted(m["id"] for m in listing["models"]) == sorted([DEFAULT_MODEL, "other-model"])
        r = httpx.post(srv.url + "/v1/encode", content=PHOTOS[0].read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["model"] == DEFAULT_MODEL
        assert srv.stop(signal.SIGINT) == 0
    assert _wait_gone(srv.proc.pid) == set(), "processes left behind after SIGINT"
    assert "Traceback" not in srv.log_text()


def test_the_ready_line_comes_when_the_port_answers(tmp_path):
    """uvicorn's "Uvicorn running on" came seconds before anything listened; the one ready line means /health 200."""
    srv = LiveServer(["--models-dir", str(models_dir(tmp_path)), "--threads", "1"], log=tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 900
        while "ready on http://" not in srv.log_text():
            assert srv.proc.poll() is None and time.monotonic() < deadline, srv.log_text()[-3000:]
            time.sleep(0.02)
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
        assert f"ready on {srv.url} " in srv.log_text()
        assert "Uvicorn running on" not in srv.log_text(), srv.log_text()
    finally:
        srv.stop()


@pytest.mark.parametrize("args,message", [
    (["--models-dir", "{empty}"], "no servable models"),
    (["--models-dir", "{models}", "--model", "nope"], "--model nope not found"),
    (["--models-dir", "{models}", "--device", "cuda"], "--device cuda"),
])
def test_serve_refuses_to_start_with_a_clear_message(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    models = models_dir(tmp_path)
    args = [a.format(empty=tmp_path / "empty", models=models) for a in args]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-m", "vqtok", "serve", *args, "--port", str(free_port())],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
