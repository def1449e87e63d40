"""The three batched LitAPIs: `/v1/encode`, `/v1/decode`, `/v1/reconstruct`.

Each has an edge half and a worker half:
- `parse(request)` runs in the HTTP process: it reads, validates and preprocesses the request (see `edge.py`), so
  the queue only carries good payloads (a model id, a uint8 image or an int32 code grid, and reply options);
- `decode_request → predict → encode_response` run in the inference workers. `predict` groups a batch by
  (model, shape), runs each group as ONNX Runtime calls of at most `ort_batch` images and never fails as a whole:
  if a group raises, its items are retried one by one and only the failing ones get a 500 result.
Results travel back as plain dicts (`{"status", "body", "media_type", "headers"}` or an error) and become HTTP
responses in the HTTP process.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import signal
import time
from collections import defaultdict
from typing import Any, Callable

import litserve as ls
import numpy as np
import orjson
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from vqtok.tokenizer.contract import POLICIES

from . import metrics, telemetry
from .direct import SLOTS, Dispatcher, DirectLoop, listen
from .edge import (Limits, image_bytes, image_items, lookup_model, open_small, parse_body, parse_codes,
                   prepare_image, text_field)
from .errors import ApiError, bad_request, error_response
from .guards import name_process, watch_parent
from .patches import BlockingBatchedLoop
from .registry import Registry

logger = logging.getLogger("vqtok.server")


IMAGE_FORMATS = ("png", "json", "npy")  # replies of decode and reconstruct


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    """A JSON reply body; numpy arrays (code grids) become nested lists (orjson: 11 vs 107 µs for a 32×32 grid's
    reply with json.dumps + tolist())."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # e.g. a non-contiguous view orjson does not take directly
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def stacked(arrays: list[np.ndarray]) -> np.ndarray:
    """[B, ...] batch of same-shape arrays; one array becomes a view, not a copy (most CPU batches hold one)."""
    return np.ascontiguousarray(arrays[0][None]) if len(arrays) == 1 else np.stack(arrays)


def ok(body: bytes, media_type: str, headers: dict | None = None) -> dict:
    return {"status": 200, "body": body, "media_type": media_type, "headers": headers or {}}


def failed(message: str = "inference failed; the server log has the details") -> dict:
    return {"status": 500, "code": "internal_error", "message": message}


def png_later(img: np.ndarray, headers: dict) -> dict:
    """A PNG reply whose encoding is left to the HTTP process (`TokenizerAPI.respond`): the inference worker, which
    runs one batch at a time, goes back to the model instead of spending ~4 ms per 256² image in zlib."""
    return {"status": 200, "png": np.ascontiguousarray(img), "media_type": "image/png", "headers": headers}


class TokenizerAPI(ls.LitAPI):
    """Shared parts: model loading per worker, batching by (model, shape), failure isolation."""

    endpoint = ""
    summary = ""
    request_body: dict = {}
    reply_types: dict = {}  # 200 content types (OpenAPI)
    error_statuses: tuple[int, ...] = (400, 401, 404, 408, 413, 415, 500, 503, 504)
    graphs: tuple[str, ...] = ("encoder", "decoder")  # the ONNX graphs this endpoint's workers load

    def __init__(self, registry: Registry, limits: Limits, max_batch_size: int = 8, batch_timeout: float = 0.01,
                 threads: int | None = None, ort_batch: int | None = None, polling_loop: bool = False,
                 png_in_worker: bool = False, socket_dir: str | None = None, ort_spin: bool = False,
                 shared_slots: int = SLOTS) -> None:
        # socket_dir: requests come over the workers' sockets (direct.py), not LitServe's queues. With LitServe's
        # queues, its loop polls the request queue every 1 ms; ours waits (patches.BlockingBatchedLoop)
        loop = DirectLoop() if socket_dir else \
            BlockingBatchedLoop() if max_batch_size > 1 and not polling_loop else "auto"
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=f"/v1/{self.endpoint}",
                         loop=loop)
        self.registry, self.limits, self.threads = registry, limits, threads
        self.ort_batch = ort_batch  # images per ONNX Runtime call; None: decided in setup() by the device
        self.png_in_worker = png_in_worker  # PNG replies encoded by the worker (before 2026-12-01), not the edge
        self.socket_dir, self.shared_slots = socket_dir, shared_slots
        self.ort_spin = ort_spin  # CPU: ORT's intra-op threads spin-wait between ops (off unless asked: see setup)
        self.models: dict = {}

    # -- worker half ------------------------------------------------------------------------------------------------
    def setup(self, device: str) -> None:
        from vqtok.export.runtime import NO_SPIN, OnnxTokenizer

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process drains HTTP first, then stops workers
        watch_parent()  # exit with the main process, even after its kill -9
        name_process(f"vq-{self.endpoint}")  # before ORT starts its threads, which inherit the name
        kind = "cpu"
        if device.startswith("cuda"):  # one worker set per GPU: pin this worker to its device
            index = int(device.partition(":")[2] or 0)
            visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
            kind = "cuda"
        if self.ort_batch is None:
            # CPU: one image per call (2 cores: 8 calls of 1 image ran 18-22 % faster than one of 8, both graphs, and
            # hold an eighth of the activations); GPUs: the whole batch
            self.ort_batch = 1 if kind == "cpu" else self.max_batch_size
        for mid, entry in self.registry.models.items():
            # Only this endpoint's graphs: each endpoint has its own workers. On CPU, no per-shape memory pattern:
            # dynamic batches come in every size 1..max, and the arena keeps a block for each size's pattern (both
            # 256² graphs over batch sizes 1..8: 2.4 GiB peak with it, 1.1 GiB without, same speed); and one arena
            # for all of the worker's sessions, which run one at a time (both graphs: 0.75 GiB, same speed). GPUs
            # keep ORT's defaults (not measured there).
            cpu = kind == "cpu"
            # CPU: no spin-waiting; the HTTP processes share these cores (docs/PERFORMANCE.md, serving overhead)
            spin = None if self.ort_spin or not cpu else NO_SPIN
            tok = OnnxTokenizer.from_pretrained(entry.path, device=kind, threads=self.threads, graphs=self.graphs,
                                                mem_pattern=not cpu, shared_arena=cpu, session_config=spin)
            s, f = entry.image_size, entry.factor  # warm-up: first runs allocate arenas (and tune cuDNN on GPUs)
            codes = np.zeros((1, s // f, s // f), np.int32)
            if tok.encoder is not None:
                codes = tok.encode_array(np.zeros((1, s, s, 3), np.uint8))
            if tok.decoder is not None:
                tok.decode(codes)
            self.models[mid] = tok
        if self.socket_dir:  # last: the HTTP processes connect once the models are loaded
            self.listener = listen(self.socket_dir, self.endpoint)
        logger.info("%s worker ready on %s: %s", self.api_path, device, ", ".join(self.models))

    def decode_request(self, request: dict) -> dict:
        return request

    def predict(self, x: Any) -> Any:
        batched = self.max_batch_size > 1
        out = self.run_batch(x if batched else [x])
        return out if batched else out[0]

    def encode_response(self, output: dict) -> dict:
        return output

    def run_batch(self, requests: list[dict]) -> list[dict]:
        """A dynamic batch of requests → one result dict each. A multi-item request (`"items"` in its payload)
        contributes each good item; items run grouped by (model, shape) whatever request they came from."""
        units: list[tuple[int, int, dict]] = []  # (request, item, the item with its request's options)
        for r, req in enumerate(requests):
            if "items" in req:
                common = {k: v for k, v in req.items() if k != "items"}
                units += [(r, k, {**common, **it}) for k, it in enumerate(req["items"]) if "error" not in it]
            else:
                units.append((r, 0, req))
        metrics.child(metrics.get().batch_size, self.api_path).observe(len(units))
        outs: dict[tuple[int, int], Any] = {}
        groups: dict[tuple, list[tuple[int, int, dict]]] = defaultdict(list)
        for u in units:
            groups[(u[2]["model"], u[2][self.shape_key].shape)].append(u)
        for (mid, _), group in groups.items():
            start = time.perf_counter()
            try:
                arrays = self.run_group(mid, [u[2] for u in group])
            except Exception:
                logger.exception("%s: a batch of %d failed; retrying its items one by one", self.api_path, len(group))
                arrays = [self._run_alone(mid, u[2]) for u in group]
            metrics.child(metrics.get().inference, self.api_path, mid).observe(time.perf_counter() - start)
            for (r, k, _), out in zip(group, arrays):
                outs[r, k] = out
        results = []
        for r, req in enumerate(requests):
            if "items" not in req:
                out = outs.get((r, 0))
                results.append(failed() if out is None else self.reply(req["model"], req, out))
                continue
            entries = []
            for k, it in enumerate(req["items"]):
                out = outs.get((r, k))
                entries.append(it if "error" in it else
                               {"error": {"code": "internal_error", "message": failed()["message"]}, "status": 500}
                               if out is None else self.entry(req["model"], {**req, **it}, out))
            results.append(ok(json_bytes({"results": entries}), "application/json",
                              {"X-Vqtok-Model": req["model"]}))
        return results

    def _run_alone(self, mid: str, item: dict) -> Any:
        try:
            return self.run_group(mid, [item])[0]
        except Exception:
            logger.exception("%s: an item failed in the model", self.api_path)
            return None

    shape_key = "image"

    def run_group(self, mid: str, items: list[dict]) -> list:
        """The model outputs of items that share a model and input shape (codes or images), one per item."""
        raise NotImplementedError

    def reply(self, mid: str, item: dict, out: np.ndarray) -> dict:
        """The HTTP result of a single-item request."""
        raise NotImplementedError

    def entry(self, mid: str, item: dict, out: np.ndarray) -> dict:
        """One item's JSON entry in the `{"results": [...]}` reply of a multi-item request."""
        raise NotImplementedError

    def in_chunks(self, fn: Callable[[np.ndarray], np.ndarray], arrays: list[np.ndarray]) -> list[np.ndarray]:
        """`fn` (a model call: [b, ...] → [b, ...]) over same-shape `arrays`, in calls of at most `ort_batch` items;
        one output per array. With one item per call (CPU) no batch array is assembled and nothing is copied: a
        stacked batch of 256² images and its concatenated outputs cost more than the null model's inference."""
        step = self.ort_batch or len(arrays)
        out: list[np.ndarray] = []
        for i in range(0, len(arrays), step):
            out.extend(fn(stacked(arrays[i:i + step])))
        return out

    def encode_items(self, mid: str, items: list[dict]) -> list[np.ndarray]:
        """The items' images → int64 code grids [h, w], in ONNX Runtime calls of at most `ort_batch` images."""
        tok = self.models[mid]
        release = self.outlier(mid, items[0]["image"].shape[0] * items[0]["image"].shape[1])
        codes = self.in_chunks(lambda batch: tok.encode_array(batch, release), [it["image"] for it in items])
        telemetry.record(metrics.get().path, mid, codes, tok.codebook_size)
        return codes

    def outlier(self, mid: str, pixels: int) -> bool:
        """Images larger than the model's S×S (policy 'native', big code grids) make ONNX Runtime grow its arena to
        their size; such calls give that memory back afterwards, so a worker returns to its S×S footprint
        (docs/RELIABILITY.md, memory). S×S calls keep the arena: re-allocating it would cost every request."""
        return pixels > self.registry.models[mid].image_size ** 2

    def count(self, mid: str, images: int, codes: int) -> None:
        metrics.child(metrics.get().images, self.api_path, mid).inc(images)
        metrics.child(metrics.get().codes, self.api_path, mid).inc(codes)

    # -- edge half (HTTP process) -----------------------------------------------------------------------------------
    _large_gate: asyncio.Semaphore | None = None  # made on first use, in the HTTP process (after the fork)

    def payload_pixels(self, payload: dict) -> int:
        """Pixels of the request's image (its largest good item's for a multi-item request: many S×S items still run
        as S×S calls)."""
        if "items" in payload:
            good = [{"model": payload["model"], **it} for it in payload["items"] if "error" not in it]
            return max((self.payload_pixels(it) for it in good), default=0)
        if "image" in payload:
            return payload["image"].shape[0] * payload["image"].shape[1]
        h, w = payload["codes"].shape
        return h * w * self.registry.models[payload["model"]].factor ** 2

    @contextlib.asynccontextmanager
    async def admission(self, payload: dict, timeout: float | None):
        """Queue at most `limits.large_slots` requests larger than S×S at once: a client sending many max-size
        requests would otherwise fill the endpoint's queue, and every small request behind them would wait for all
        of them (six 128×128-grid decodes held a 32×32 one for 94 s). Small requests pass straight through;
        waiting here counts toward the end-to-end timeout."""
        if not self.outlier(payload["model"], self.payload_pixels(payload)):
            yield
            return
        if self._large_gate is None:
            self._large_gate = asyncio.Semaphore(self.limits.large_slots)
        try:
            await asyncio.wait_for(self._large_gate.acquire(), timeout if timeout and timeout > 0 else None)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no slot for a large request within the server's {timeout:g} s "
                           "timeout (others are being served); retry later or send smaller requests") from None
        try:
            yield
        finally:
            self._large_gate.release()

    async def parse(self, request: Request) -> dict:
        raise NotImplementedError

    _dispatcher: Dispatcher | None = None  # made on first use, in each HTTP process (after the fork)

    def dispatcher(self) -> Dispatcher:
        """This HTTP process's connections to this endpoint's workers (direct.py)."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(self.socket_dir, self.endpoint, self.shared_slots)
        return self._dispatcher

    async def respond(self, result: dict) -> Response:
        """A worker's result → the HTTP response (PNG replies are encoded here, in a thread: zlib releases the GIL)."""
        if result.get("status") != 200:
            return error_response(result.get("status", 500), result.get("message", "request failed"),
                                  result.get("code"))
        body = result["body"] if "png" not in result else await asyncio.to_thread(png_bytes, result["png"])
        return Response(body, media_type=result["media_type"], headers=result.get("headers"))

    async def parse_image(self, request: Request, formats: tuple[str, ...]) -> dict:
        body = await parse_body(request, self.limits, "image")
        entry = lookup_model(request, self.registry, body.fields)
        policy = text_field(body.fields, "policy", "resize", POLICIES)
        fmt = text_field(body.fields, "format", formats[0], formats)
        payload = {"model": entry.id, "policy": policy, "format": fmt}
        # input=png: the JSON reply also carries the preprocessed image, as the model saw it (the web page shows it)
        payload["input"] = text_field(body.fields, "input", "none", ("none", "png")) == "png"
        blobs = image_items(body, self.limits)
        if blobs is None:
            data = image_bytes(body)
            small = open_small(data)  # opened once: prepare_image decodes it from there
            arr, valid = prepare_image(small, entry, policy, self.limits) if small is not None else \
                await asyncio.to_thread(prepare_image, data, entry, policy, self.limits)
            return payload | {"image": arr, "valid": valid}
        if fmt not in self.multi_formats:
            raise bad_request(f"format {fmt!r} takes one image per request; a multi-image request replies JSON "
                              f"(format {' or '.join(self.multi_formats)})", "invalid_parameter")
        items = await asyncio.to_thread(_prepare_all, blobs, entry, policy, self.limits)
        return payload | {"items": items}

    multi_formats: tuple[str, ...] = IMAGE_FORMATS  # formats a multi-item request may ask for (its reply is JSON)


_IMAGE_BODY = {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "repeat the part for several images"},
        "model": {"type": "string"},
        "policy": {"type": "string", "enum": list(POLICIES)}, "format": {"type": "string"},
        "input": {"type": "string", "enum": ["none", "png"]}}}},
    "application/json": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "format": "byte", "minLength": 4, "description": "base64 image bytes"},
        "images": {"type": "array", "items": {"type": "string"}, "description": "several base64 images: the reply "
                   "is {\"results\": [...]}, one entry per image in order (at most --max-items)"},
        "model": {"type": "string"},
        "policy": {"type": "string", "enum": list(POLICIES)}, "format": {"type": "string"},
        "input": {"type": "string", "enum": ["none", "png"]}},
        "oneOf": [{"required": ["image"]}, {"required": ["images"]}]}},  # exactly one of them (edge.image_items)
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}


_IMAGE_REPLY = {"image/png": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object", "description": "{image, width, height}, or "
                                                "{results: [...]} for a multi-item request"}},
                "application/x-npy": {"schema": {"type": "string", "format": "binary"}}}


class EncodeAPI(TokenizerAPI):
    endpoint = "encode"
    graphs = ("encoder",)
    summary = "Image → code grid (JSON, or int64 .npy with format=npy)"
    request_body = _IMAGE_BODY
    reply_types = {"application/json": {"schema": {"type": "object", "description": "{codes, shape, ...}, or "
                                                   "{results: [...]} for a multi-item request"}},
                   "application/x-npy": {"schema": {"type": "string", "format": "binary"}}}

    async def parse(self, request: Request) -> dict:
        return await self.parse_image(request, ("json", "npy"))

    multi_formats = ("json",)

    def run_group(self, mid: str, items: list[dict]) -> list[np.ndarray]:
        codes = self.encode_items(mid, items)
        self.count(mid, len(items), sum(int(c.size) for c in codes))
        return codes

    def entry(self, mid: str, item: dict, grid: np.ndarray) -> dict:
        e = self.registry.models[mid]
        out = {"model": mid, "codebook_size": e.codebook_size, "codebook_sha256": e.codebook_sha256,
               "factor": e.factor, "policy": item["policy"], "input_size": list(item["valid"]),
               "shape": list(grid.shape), "codes": grid}
        if item.get("input"):
            vh, vw = item["valid"]
            out["input_png"] = base64.b64encode(png_bytes(item["image"][:vh, :vw])).decode("ascii")
        return out

    def reply(self, mid: str, item: dict, grid: np.ndarray) -> dict:
        h, w = grid.shape
        headers = {"X-Vqtok-Model": mid, "X-Vqtok-Codebook-Sha256": self.registry.models[mid].codebook_sha256,
                   "X-Vqtok-Shape": f"{h},{w}"}
        if item["format"] == "npy":
            buf = io.BytesIO()
            np.save(buf, grid.astype(np.int64))
            return ok(buf.getvalue(), "application/x-npy", headers)
        return ok(json_bytes(self.entry(mid, item, grid)), "application/json", headers)


class DecodeAPI(TokenizerAPI):
    endpoint = "decode"
    graphs = ("decoder",)
    summary = "Code grid → PNG (JSON with a base64 PNG with format=json, raw uint8 [H, W, 3] .npy with format=npy)"
    reply_types = _IMAGE_REPLY
    error_statuses = (400, 401, 404, 408, 413, 415, 422, 500, 503, 504)
    shape_key = "codes"
    request_body = {
        "application/json": {"schema": {"type": "object", "required": ["codes"], "properties": {
            "codes": {"type": "array", "description": "[[...]] grid, a flat list with 'shape', or a list of grids "
                      "(reply {\"results\": [...]})"},
            "shape": {"type": "array", "items": {"type": "integer"}}, "model": {"type": "string"},
            "codebook_sha256": {"type": "string"}, "format": {"type": "string", "enum": list(IMAGE_FORMATS)}}}},
        "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
    }

    async def parse(self, request: Request) -> dict:
        body = await parse_body(request, self.limits, "codes")
        entry = lookup_model(request, self.registry, body.fields)
        fmt = text_field(body.fields, "format", "png", IMAGE_FORMATS)
        codes = await asyncio.to_thread(parse_codes, body, entry, self.limits)
        if isinstance(codes, list):
            return {"model": entry.id, "format": fmt, "items": [
                item_error(c) if isinstance(c, ApiError) else {"codes": c} for c in codes]}
        return {"model": entry.id, "codes": codes, "format": fmt}

    def run_group(self, mid: str, items: list[dict]) -> list[np.ndarray]:
        tok, (h, w) = self.models[mid], items[0]["codes"].shape
        release = self.outlier(mid, h * w * self.registry.models[mid].factor ** 2)
        images = self.in_chunks(lambda grids: tok.decode(grids, release), [it["codes"] for it in items])
        self.count(mid, len(items), sum(int(it["codes"].size) for it in items))
        return images

    def reply(self, mid: str, item: dict, img: np.ndarray) -> dict:
        return image_reply(mid, img, item["format"], self.png_in_worker)

    def entry(self, mid: str, item: dict, img: np.ndarray) -> dict:
        return image_entry(mid, img, item["format"])


class ReconstructAPI(TokenizerAPI):
    endpoint = "reconstruct"
    summary = "Image → encode → decode → PNG (or format=json / npy as for decode)"
    request_body = _IMAGE_BODY
    reply_types = _IMAGE_REPLY

    async def parse(self, request: Request) -> dict:
        return await self.parse_image(request, IMAGE_FORMATS)

    def run_group(self, mid: str, items: list[dict]) -> list[np.ndarray]:
        codes, tok = self.encode_items(mid, items), self.models[mid]
        release = self.outlier(mid, items[0]["image"].shape[0] * items[0]["image"].shape[1])
        images = self.in_chunks(lambda grids: tok.decode(grids, release), codes)
        self.count(mid, len(items), sum(int(c.size) for c in codes))
        return [img[: it["valid"][0], : it["valid"][1]] for it, img in zip(items, images)]

    def reply(self, mid: str, item: dict, img: np.ndarray) -> dict:
        return image_reply(mid, img, item["format"], self.png_in_worker)

    def entry(self, mid: str, item: dict, img: np.ndarray) -> dict:
        return image_entry(mid, img, item["format"])


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    return buf.getvalue()


def image_reply(mid: str, img: np.ndarray, fmt: str, png_in_worker: bool = False) -> dict:
    headers = {"X-Vqtok-Model": mid}
    if fmt == "npy":  # no PNG encoding at all: the cheapest reply for a client that wants pixels
        return ok(npy_bytes(img), "application/x-npy", headers)
    if fmt == "json":
        return ok(json_bytes(image_entry(mid, img, fmt)), "application/json", headers)
    return ok(png_bytes(img), "image/png", headers) if png_in_worker else png_later(img, headers)


def image_entry(mid: str, img: np.ndarray, fmt: str) -> dict:
    """An image as JSON: base64 PNG (`image`), or with format=npy base64 .npy bytes of the uint8 array (`npy`)."""
    out = {"model": mid, "width": int(img.shape[1]), "height": int(img.shape[0])}
    if fmt == "npy":
        return out | {"npy": base64.b64encode(npy_bytes(img)).decode("ascii")}
    return out | {"image": base64.b64encode(png_bytes(img)).decode("ascii")}


def item_error(err: ApiError) -> dict:
    """A bad item's entry in a multi-item reply (the same shape as an error reply's body, plus its status)."""
    return {"error": {"code": err.code, "message": err.detail}, "status": err.status_code}


def _prepare_all(blobs: list, entry, policy: str, limits: Limits) -> list[dict]:
    items = []
    for blob in blobs:
        try:
            if isinstance(blob, ApiError):
                raise blob
            arr, valid = prepare_image(blob, entry, policy, limits)
            items.append({"image": arr, "valid": valid})
        except ApiError as err:
            items.append(item_error(err))
    return items


API_CLASSES = (EncodeAPI, DecodeAPI, ReconstructAPI)
