"""The anchor of bench/overhead.py: the same per-request work as `vqtok serve`, in-process, with no queue.

    VQTOK_ANCHOR_MODEL=DIR python -m uvicorn bench.anchor:app --workers N --host 127.0.0.1 --port P

Each uvicorn process parses the request with the server's own edge code (`server.edge`: body limits, multipart /
JSON / raw, JPEG decode and preprocessing, code validation), runs ONNX Runtime in the request's own thread and
answers in the server's reply formats. What `vqtok serve` adds on top — LitServe's queues, batching and worker
processes — is what the anchor leaves out: its throughput is the ceiling of a Python HTTP stack on this machine.
Bench only.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vqtok.export.runtime import OnnxTokenizer
from vqtok.server.apis import json_bytes, png_bytes
from vqtok.server.edge import Limits, image_bytes, parse_body, parse_codes, prepare_image, text_field
from vqtok.server.errors import ApiError, error_response
from vqtok.server.registry import read_entry

_DIR = Path(os.environ.get("VQTOK_ANCHOR_MODEL", "."))
_LIMITS = Limits(max_body_bytes=32 * 2**20, max_pixels=4096 * 4096)
_state: dict = {}


def _model():
    if not _state:  # per uvicorn process, on first use (uvicorn imports the app before forking its workers)
        _state["entry"] = read_entry(_DIR.name, _DIR)
        _state["tok"] = OnnxTokenizer.from_pretrained(_DIR, threads=int(os.environ.get("VQTOK_ANCHOR_THREADS", "1")),
                                               mem_pattern=False)
    return _state["entry"], _state["tok"]


def _error(err: ApiError) -> Response:
    return error_response(err.status_code, err.detail, err.code)


async def encode(request: Request) -> Response:
    entry, tok = _model()
    try:
        body = await parse_body(request, _LIMITS, "image")
        fmt = text_field(body.fields, "format", "json", ("json", "npy"))
        arr, valid = prepare_image(image_bytes(body), entry, "resize", _LIMITS)
    except ApiError as err:
        return _error(err)
    grid = tok.encode_array(arr[None])[0]
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, grid.astype(np.int64))
        return Response(buf.getvalue(), media_type="application/x-npy")
    h, w = grid.shape
    reply = {"model": entry.id, "codebook_size": entry.codebook_size, "codebook_sha256": entry.codebook_sha256,
             "factor": entry.factor, "policy": "resize", "input_size": list(valid), "shape": [h, w],
             "codes": grid}
    return Response(json_bytes(reply), media_type="application/json")


async def decode(request: Request) -> Response:
    entry, tok = _model()
    try:
        body = await parse_body(request, _LIMITS, "codes")
        fmt = text_field(body.fields, "format", "png", ("png", "npy"))
        grid = parse_codes(body, entry, _LIMITS)
    except ApiError as err:
        return _error(err)
    img = tok.decode(grid[None])[0]
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, img)
        return Response(buf.getvalue(), media_type="application/x-npy")
    return Response(png_bytes(img), media_type="image/png")


async def health(request: Request) -> Response:
    _model()
    return Response(b"ok")


app = Starlette(routes=[Route("/v1/encode", encode, methods=["POST"]), Route("/v1/decode", decode, methods=["POST"]),
                        Route("/health", health)])
