"""The server in-process (LitServe's test wrapper + FastAPI's TestClient): every endpoint against local ONNX
Runtime references, every error class, auth, registry, metrics, and failure isolation inside a batch."""
from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _hostile import ERRORS, GOOD, MAX_PIXELS
from _serving import PHOTOS, REPO, local_tokenizer, models_dir, png, psnr

pytest.importorskip("litserve")
KEY = "test-key-123"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A private copy of the tiny fixture under two ids (tests never read the shared fixture folder twice)."""
    return models_dir(tmp_path_factory.mktemp("srv"), ("tiny-a", "tiny-b"))


@pytest.fixture(scope="module")
def client(models):
    from fastapi.testclient import TestClient
    from litserve.utils import wrap_litserve_start

    from vqtok.server.app import Settings, build_server

    root = models
    settings = Settings(api_key=KEY, max_batch_size=8, batch_timeout=0.02, max_pixels=MAX_PIXELS, max_body_mb=1.0,
                        threads=1)
    server = build_server(root, default_model="tiny-a", settings=settings)
    with wrap_litserve_start(server) as s, TestClient(s.app, headers={"X-API-Key": KEY}) as c:
        deadline = time.monotonic() + 900  # generous: CI machines may be busy
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "workers did not become ready"
            time.sleep(0.1)
        yield c


@pytest.fixture(scope="module")
def tok(models):
    return local_tokenizer(models / "tiny-a")


def test_health_is_open_and_models_lists_the_registry(client, models):
    assert client.get("/health", headers={"X-API-Key": ""}).status_code == 200
    listing = client.get("/v1/models").json()
    from vqtok.tokenizer.hub import read_codebook_sha256

    assert listing["default"] == "tiny-a"
    assert [(m["id"], m["default"]) for m in listing["models"]] == [("tiny-a", True), ("tiny-b", False)]
    m = listing["models"][0]
    assert (m["factor"], m["codebook_size"], m["image_size"]) == (4, 64, 64)
    assert m["codebook_sha256"] == read_codebook_sha256(models / "tiny-a") == m["metadata"]["codebook_sha256"]
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/v1/encode", "/v1/decode", "/v1/reconstruct", "/v1/models", "/metrics", "/health"} <= paths


@pytest.mark.parametrize("transport", ["multipart", "json", "raw"])
def test_encode_equals_local_runtime(client, tok, transport):
    for photo in PHOTOS:
        data = photo.read_bytes()
        if transport == "multipart":
            r = client.post("/v1/encode", files={"image": (photo.name, data, "image/jpeg")}, data={"model": "tiny-b"})
        elif transport == "json":
            r = client.post("/v1/encode", json={"image": base64.b64encode(data).decode(), "model": "tiny-b"})
        else:
            r = client.post("/v1/encode?model=tiny-b", content=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny-b" and body["codebook_size"] == 64 and body["shape"] == [16, 16]
        assert body["codebook_sha256"] == tok.metadata.codebook_sha256
        np.testing.assert_array_equal(np.array(body["codes"]), tok.encode(data)[0])


def test_encode_npy_and_native_policy(client, tok):
    img = np.asarray(Image.open(PHOTOS[0]).convert("RGB").resize((70, 50)))  # native: padded to 72×52
    r = client.post("/v1/encode", files={"image": ("x.png", png(img), "image/png")},
                    data={"policy": "native", "format": "npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    codes = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert codes.dtype == np.int64 and codes.shape == (13, 18)
    np.testing.assert_array_equal(codes, tok.encode(img, policy="native")[0])
    assert r.headers["x-vqtok-shape"] == "13,18"


def test_decode_formats_equal_local_runtime(client, tok):
    codes = tok.encode(PHOTOS[1].read_bytes())[0]
    expected = tok.decode(codes)[0]
    buf = io.BytesIO()
    np.save(buf, codes)
    replies = [
        client.post("/v1/decode", json={"codes": codes.tolist()}),
        client.post("/v1/decode", json={"codes": codes.ravel().tolist(), "shape": list(codes.shape)}),
        client.post("/v1/decode", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"}),
        client.post("/v1/decode", json={"codes": codes.tolist(), "format": "json",
                                        "codebook_sha256": tok.metadata.codebook_sha256}),
    ]
    for r in replies[:3]:
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)
    body = replies[3].json()
    assert (body["width"], body["height"]) == (64, 64)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image"])))), expected)


def test_decode_npy_reply_is_the_raw_image(client, tok):
    codes = tok.encode(PHOTOS[1].read_bytes())[0]
    r = client.post("/v1/decode", json={"codes": codes.tolist(), "format": "npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    img = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, tok.decode(codes)[0])


@pytest.mark.parametrize("transport", ["multipart", "json"])
def test_multi_image_encode_answers_each_item_in_order(client, tok, transport):
    """A bad item gets its own error entry; the others are encoded as if sent alone."""
    good = [p.read_bytes() for p in PHOTOS]
    blobs = [good[0], b"not an image", good[1], good[2]]
    if transport == "multipart":
        r = client.post("/v1/encode", files=[("image", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)],
                        data={"model": "tiny-b"})
    else:
        items = [base64.b64encode(b).decode() for b in blobs] + ["%%% not base64"]
        r = client.post("/v1/encode", json={"images": items, "model": "tiny-b"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == (4 if transport == "multipart" else 5)
    assert results[1]["error"]["code"] == "unsupported_image" and results[1]["status"] == 415
    for res, data in zip([results[0], results[2], results[3]], good):
        assert res["model"] == "tiny-b" and res["shape"] == [16, 16]
        np.testing.assert_array_equal(np.array(res["codes"]), tok.encode(data)[0])
    if transport == "json":
        assert results[4]["error"]["code"] == "invalid_base64" and results[4]["status"] == 400


def test_multi_grid_decode_answers_each_item_in_order(client, tok):
    codes = tok.encode_array(np.stack([tok.prepare(p.read_bytes())[0][0] for p in PHOTOS[:3]]))
    want = tok.decode(codes)
    buf = io.BytesIO()
    np.save(buf, codes)
    r = client.post("/v1/decode?format=npy", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    got = [np.load(io.BytesIO(base64.b64decode(e["npy"])), allow_pickle=False) for e in r.json()["results"]]
    np.testing.assert_array_equal(np.stack(got), want)
    bad = codes[1].copy()
    bad[0, 0] = 64  # K = 64: out of range
    r = client.post("/v1/decode", json={"codes": [codes[0].tolist(), bad.tolist(), codes[2].tolist()]})
    results = r.json()["results"]
    assert results[1]["error"]["code"] == "invalid_codes" and results[1]["status"] == 422
    for res, img in zip([results[0], results[2]], [want[0], want[2]]):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(res["image"])))), img)


def test_multi_item_limits_and_formats(client):
    data = base64.b64encode(png(np.zeros((8, 8, 3), np.uint8))).decode()
    r = client.post("/v1/encode", json={"images": [data] * 65})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_items"
    r = client.post("/v1/encode", json={"images": []})
    assert r.status_code == 400
    r = client.post("/v1/encode", json={"images": [data, data], "format": "npy"})
    assert r.status_code == 400 and "one image per request" in r.json()["error"]["message"]
    r = client.post("/v1/encode", json={"images": data})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"


def test_reconstruct_psnr_equals_local(client, tok):
    for photo in PHOTOS:
        batch, _ = tok.prepare(photo.read_bytes())
        local = tok.decode(tok.encode_array(batch))[0]
        r = client.post("/v1/reconstruct", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        served = np.asarray(Image.open(io.BytesIO(r.content)))
        np.testing.assert_array_equal(served, local)
        assert psnr(served, batch[0]) == psnr(local, batch[0])


def test_reconstruct_native_crops_back(client):
    img = np.asarray(Image.open(PHOTOS[2]).convert("RGB").resize((70, 50)))
    r = client.post("/v1/reconstruct", files={"image": ("x.png", png(img), "image/png")},
                    data={"policy": "native", "format": "json"})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (70, 50)


@pytest.mark.parametrize("endpoint,request_kw,status,code", ERRORS,
                         ids=[f"{e[0]}-{e[2]}-{e[3]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_input_gets_the_right_json_error(client, endpoint, request_kw, status, code):
    r = client.post(f"/v1/{endpoint}", **request_kw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert "Traceback" not in r.text


def _png_header(width: int, height: int) -> bytes:
    """A PNG holding only an IHDR chunk: Pillow reads the size without any pixel data."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_error_messages_quote_the_server_limit_and_say_it_once(client):
    # 400 Mpx: over twice Pillow's MAX_IMAGE_PIXELS, so Pillow itself refuses to open it
    r = client.post("/v1/encode", content=_png_header(20_000, 20_000), headers={"Content-Type": "image/png"})
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert f"the limit is {MAX_PIXELS}" in message and str(Image.MAX_IMAGE_PIXELS) not in message, message
    r = client.post("/v1/encode", content=b"GIF89a but not really", headers={"Content-Type": "image/gif"})
    assert r.status_code == 415 and r.json()["error"]["message"].count("decodable") == 1, r.text


def test_npy_float_codes_are_rejected(client):
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 4), np.float32))
    r = client.post("/v1/decode", content=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_codes"


@pytest.mark.parametrize("headers,status", [({"X-API-Key": ""}, 401), ({"X-API-Key": "wrong"}, 401),
                                            ({"X-API-Key": KEY + "x"}, 401), ({"Authorization": f"Bearer {KEY}"}, 200),
                                            ({"X-API-Key": KEY}, 200)])
def test_api_key_on_every_route_but_health(client, headers, status):
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/info"), ("GET", "/openapi.json")]:
        h = {"X-API-Key": ""} | headers if "Authorization" in headers else headers
        r = client.request(method, path, headers=h)
        assert r.status_code == status, (path, r.text)
        if status == 401:
            assert r.json()["error"]["code"] == "unauthorized"
    r = client.post("/v1/encode", json={"image": GOOD}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401


def test_docs_are_served_offline_and_titled_vqtok(client):
    import re

    r = client.get("/docs")
    assert r.status_code == 200 and "<title>vqtok API</title>" in r.text, r.text[:500]
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", r.text) + re.findall(r"url: *'([^']+)'", r.text)
    assert refs and "http" not in r.text and not [u for u in refs if u.startswith("//")], refs  # no CDN
    for url in refs:
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
    assert client.get("/openapi.json").json()["info"]["title"] == "vqtok"


def test_unknown_route_and_method_are_json(client):
    assert client.get("/v2/nothing").json()["error"]["code"] == "not_found"
    r = client.get("/v1/encode")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def _samples(client, name: str) -> dict:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_metrics_count_requests_images_codes_and_batches(client):
    before = _samples(client, "vqtok_")
    for _ in range(3):
        assert client.post("/v1/encode", json={"image": GOOD, "model": "tiny-b"}).status_code == 200
    assert client.post("/v1/encode", json={"image": GOOD, "model": "tiny-b", "policy": "x"}).status_code == 400
    after = _samples(client, "vqtok_")

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('vqtok_requests_total{endpoint="/v1/encode",model="tiny-b",status="200"}') == 3
    assert delta('vqtok_requests_total{endpoint="/v1/encode",model="tiny-b",status="400"}') == 1
    assert delta('vqtok_images_processed_total{endpoint="/v1/encode",model="tiny-b"}') == 3
    assert delta('vqtok_codes_processed_total{endpoint="/v1/encode",model="tiny-b"}') == 3 * 256
    assert delta('vqtok_batch_size_sum{endpoint="/v1/encode"}') == 3
    assert delta('vqtok_request_duration_seconds_count{endpoint="/v1/encode",model="tiny-b"}') == 4


def test_metrics_dirs_of_killed_servers_are_removed(monkeypatch, tmp_path):
    import os
    import tempfile

    from vqtok.server import metrics

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, alive = tmp_path / "vqtok-metrics-999999999-abc", tmp_path / f"vqtok-metrics-{os.getpid()}-abc"
    dead.mkdir()
    alive.mkdir()
    metrics._remove_stale_dirs()
    assert not dead.exists() and alive.exists()


def setup_here(api) -> None:
    """`api.setup("cpu")` in this process, as in a worker; undo what it does to a worker process (ignoring SIGINT,
    the process name)."""
    from vqtok.server.apis import name_process

    sigint, comm = signal.getsignal(signal.SIGINT), Path("/proc/self/comm")
    name = comm.read_text().strip() if comm.exists() else ""
    try:
        api.setup("cpu")
    finally:
        signal.signal(signal.SIGINT, sigint)
        if name:
            name_process(name)


def test_a_failing_item_does_not_fail_its_batch(tmp_path):
    """Inside the worker: if one item of a batch makes ONNX Runtime fail, only that item gets an error."""
    from vqtok.server.apis import EncodeAPI
    from vqtok.server.edge import Limits
    from vqtok.server.registry import Registry

    root = models_dir(tmp_path)
    api = EncodeAPI(Registry.scan(root), Limits(2**20, 10**6), max_batch_size=8, threads=1)
    setup_here(api)
    tok = local_tokenizer(root / "tiny-a")
    good = [tok.prepare(p.read_bytes())[0][0] for p in PHOTOS[:3]]
    items = [{"model": "tiny-a", "image": im, "valid": (64, 64), "policy": "resize", "format": "json"} for im in good]
    items.insert(1, {**items[0], "image": good[0].astype(np.float32)})  # same shape, wrong dtype: the batch call fails
    results = api.predict(items)
    assert [r["status"] for r in results] == [200, 500, 200, 200]
    assert results[1]["code"] == "internal_error" and "Traceback" not in results[1]["message"]
    for res, im in zip([results[0], *results[2:]], good):
        np.testing.assert_array_equal(json.loads(res["body"])["codes"], tok.encode(im)[0])


@pytest.mark.parametrize("name, graphs", [("EncodeAPI", ("encoder",)), ("DecodeAPI", ("decoder",)),
                                          ("ReconstructAPI", ("encoder", "decoder"))])
def test_workers_load_only_their_graphs_lean_on_memory(tmp_path, name, graphs):
    """A decode worker holds no encoder session (and vice versa); CPU sessions run without ORT's memory pattern, in
    one shared arena."""
    import vqtok.server.apis
    from vqtok.server.edge import Limits
    from vqtok.server.registry import Registry

    api = getattr(vqtok.server.apis, name)(Registry.scan(models_dir(tmp_path)), Limits(2**20, 10**6), threads=1)
    setup_here(api)
    tok = api.models["tiny-a"]
    assert tok.graphs == graphs
    sessions = [s for s in (tok.encoder, tok.decoder) if s is not None]
    assert len(sessions) == len(graphs)
    for s in sessions:
        opts = s.get_session_options()
        assert not opts.enable_mem_pattern and opts.get_session_config_entry("session.use_env_allocators") == "1"
    assert api.ort_batch == 1  # CPU: one image per ONNX Runtime call


def finish(api, result: dict) -> bytes:
    """The reply body the HTTP process makes of a worker's result (PNGs are encoded there)."""
    import asyncio

    return asyncio.run(api.respond(result)).body


def test_a_batch_runs_in_ort_batch_chunks(tmp_path):
    from vqtok.server.apis import DecodeAPI, ReconstructAPI
    from vqtok.server.edge import Limits
    from vqtok.server.registry import Registry

    registry, tok = Registry.scan(models_dir(tmp_path)), local_tokenizer(tmp_path / "models" / "tiny-a")
    images = ([tok.prepare(p.read_bytes())[0][0] for p in PHOTOS[:3]] * 2)[:5]  # 5 items: chunks of 2, 2, 1
    codes = tok.encode_array(np.stack(images))
    recon = ReconstructAPI(registry, Limits(2**20, 10**6), threads=1, ort_batch=2)
    decode = DecodeAPI(registry, Limits(2**20, 10**6), threads=1, ort_batch=2)
    calls: list[int] = []  # images per decoder call
    for api in (recon, decode):
        setup_here(api)
        assert api.ort_batch == 2
        model = api.models["tiny-a"]
        model.decode = lambda grids, release=False, real=model.decode: calls.append(len(grids)) or real(grids, release)
    items = [{"model": "tiny-a", "image": im, "valid": (64, 64), "policy": "resize", "format": "png"} for im in images]
    want = tok.decode(codes)
    got = [np.asarray(Image.open(io.BytesIO(finish(recon, r)))) for r in recon.predict(items)]
    np.testing.assert_array_equal(np.stack(got), want)
    assert calls == [2, 2, 1]
    items = [{"model": "tiny-a", "codes": c.astype(np.int32), "format": "png"} for c in codes]
    got = [np.asarray(Image.open(io.BytesIO(finish(decode, r)))) for r in decode.predict(items)]
    np.testing.assert_array_equal(np.stack(got), want)
    assert calls == [2, 2, 1] * 2


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="Linux only")
def test_workers_are_named_by_endpoint():
    code = "from vqtok.server.apis import name_process; name_process('vq-reconstruct'); print(open('/proc/self/comm').read())"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True).stdout
    assert out.strip() == "vq-reconstruct"


def test_import_server_without_torch():
    """`import server` (and the whole serving path) works where torch cannot be imported."""
    code = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
import vqtok.server, vqtok.server.app, vqtok.server.client, vqtok.server.apis, vqtok.server.edge, vqtok.server.metrics
import vqtok.cli.serve, vqtok.cli.encode, vqtok.cli.decode, vqtok.cli.reconstruct
from vqtok.server import Client, build_server
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_openapi_documents_reply_types_errors_and_probes(client):
    spec = client.get("/openapi.json").json()
    for endpoint, types in (("encode", {"application/json", "application/x-npy"}),
                            ("decode", {"image/png", "application/json", "application/x-npy"}),
                            ("reconstruct", {"image/png", "application/json", "application/x-npy"})):
        responses = spec["paths"][f"/v1/{endpoint}"]["post"]["responses"]
        assert set(responses["200"]["content"]) == types
        for status in ("400", "401", "404", "408", "413", "415", "503", "504"):
            assert set(responses[status]["content"]) == {"application/json"}, (endpoint, status)
    assert "422" in spec["paths"]["/v1/decode"]["post"]["responses"]
    assert {"/health/live", "/health/ready"} <= set(spec["paths"])
    for path in ("/health", "/health/live", "/health/ready"):
        assert client.head(path, headers={"X-API-Key": ""}).status_code == 200


def test_large_requests_are_admitted_a_few_at_a_time_small_ones_pass(tmp_path):
    """Head-of-line guard (apis.TokenizerAPI.admission): with one large slot, a second large request waits at the
    edge (504 at the deadline), while a small one passes at once."""
    import asyncio

    from vqtok.server.apis import DecodeAPI
    from vqtok.server.edge import Limits
    from vqtok.server.errors import ApiError
    from vqtok.server.registry import Registry

    api = DecodeAPI(Registry.scan(models_dir(tmp_path)), Limits(2**20, 10**6, large_slots=1))
    large = {"model": "tiny-a", "codes": np.zeros((32, 32), np.int32)}  # 128² > S² = 64²
    small = {"model": "tiny-a", "codes": np.zeros((16, 16), np.int32)}  # 64²: not large

    async def scenario():
        async with api.admission(large, 5.0):
            async with api.admission(small, 0.2):
                pass  # passes while the large slot is taken
            with pytest.raises(ApiError) as err:
                async with api.admission(large, 0.2):
                    pass
            assert err.value.status_code == 504
        async with api.admission(large, 0.2):  # released: admitted again
            pass

    asyncio.run(scenario())
