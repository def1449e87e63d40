"""Request parsing and validation at the edge, in the HTTP process, before anything reaches the batcher.

Everything a client can get wrong is caught here and turned into an `ApiError` (400/404/413/415/422), so a
batch only ever holds requests that are known to be good: one bad request cannot fail its batch-mates.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
from numpy.lib import format as npformat
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from vqtok.export.runtime import InvalidCodes, validate_codes
from vqtok.tokenizer.preprocess import ImageTooLarge, InvalidImage, prepare

from .errors import ApiError, bad_request
from .registry import ModelEntry, Registry, UnknownModel

logger = logging.getLogger("vqtok.server")

NPY_TYPES = frozenset({"application/x-npy", "application/npy", "application/octet-stream"})
NPY_MAX_HEADER = 1024  # np.save writes ~128 bytes for any 2-D array
RAW_TYPES = NPY_TYPES | {"application/x-www-form-urlencoded", ""}  # curl --data-binary sends urlencoded


MAX_ITEMS = 64  # default per-request item limit of multi-image requests (`vqtok serve --max-items`)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_pixels: int
    max_items: int = MAX_ITEMS
    large_slots: int = 1  # requests larger than S×S in flight per endpoint and HTTP process; more wait at the edge


@dataclass
class Body:
    fields: dict[str, Any]  # query parameters, overridden by JSON or multipart fields
    blob: bytes | None  # an uploaded file (the only one) or a raw image / .npy body
    files: list[bytes] | None = None  # several multipart file parts: a multi-image request


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.strip().isdigit():
        raise bad_request("invalid Content-Length header")
    if declared is not None and int(declared) > limit:
        raise _body_too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise bad_request("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _body_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body over the {limit / 2**20:g} MiB limit; send a smaller "
                    "image (or start the server with a larger --max-body-mb)")


async def parse_body(request: Request, limits: Limits, file_field: str) -> Body:
    """JSON object, multipart form (file in `file_field`), or a raw image / .npy body."""
    body = await read_body(request, limits.max_body_bytes)
    mtype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = dict(request.query_params)
    if mtype == "application/json" or mtype.endswith("+json") or (not mtype and body.lstrip()[:1] == b"{"):
        # off the event loop when large: 32 MiB of JSON takes seconds, during which /health would not answer
        data = await anyio.to_thread.run_sync(_json_object, body) if len(body) > 65536 else _json_object(body)
        return Body({**fields, **data}, None)
    if mtype == "multipart/form-data":
        return await _parse_multipart(request, body, fields, file_field, limits.max_items)
    if mtype.startswith("image/") or mtype in RAW_TYPES:
        return Body(fields, body)
    raise ApiError(415, "unsupported_media_type", f"Content-Type {mtype!r} is not accepted: send application/json, "
                   "multipart/form-data, an image/* body or an application/x-npy body")


def _json_object(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except RecursionError:  # json's C scanner nests at most ~1,000 deep; deeper input must not be a 500
        raise bad_request("malformed JSON body: nested too deeply", "invalid_json") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"malformed JSON body: {err}", "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the JSON body must be an object", "invalid_json")
    return data


async def _one_chunk(body: bytes):
    yield body


async def _parse_multipart(request: Request, body: bytes, fields: dict, file_field: str, max_items: int) -> Body:
    # Starlette's own parser (what request.form() runs) over the bytes read_body already has
    parser = MultiPartParser(request.headers, _one_chunk(body), max_files=max_items + 1, max_fields=32)
    try:
        form = await parser.parse()
    except (MultiPartException, StarletteHTTPException, ValueError, KeyError) as err:
        detail = getattr(err, "detail", None) or str(err)
        raise bad_request(f"malformed multipart body: {detail}", "invalid_multipart") from None
    files = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != file_field:
                    raise bad_request(f"unexpected file field {key!r}; send the file as {file_field!r}",
                                      "invalid_multipart")
                files.append(await value.read())
            elif key in fields:  # one value per option: which of several would be a guess
                raise bad_request(f"multipart field {key!r} given more than once", "invalid_parameter")
            else:
                fields[key] = value
    finally:
        await form.close()
    if len(files) > 1:
        _check_count(len(files), max_items)
        return Body(fields, None, files)
    return Body(fields, files[0] if files else None)


def _check_count(n: int, max_items: int) -> None:
    if n > max_items:
        raise ApiError(413, "too_many_items", f"{n} items in one request; the server takes at most {max_items} "
                       "(split the request, or start the server with a larger --max-items)")
    if n == 0:
        raise bad_request("an empty list of items", "no_items")


def image_items(body: Body, limits: Limits) -> list[bytes | ApiError] | None:
    """The images of a multi-image request (several multipart `image` parts, or JSON `{"images": [...]}`), each
    as bytes or as its own ApiError; None for a single-image request. Request-level problems raise."""
    if body.files is not None:
        return [f if f else bad_request("empty file part", "empty_image") for f in body.files]
    if "images" not in body.fields:
        return None
    if "image" in body.fields:  # one of the two was sent by mistake: answering either would hide it
        raise bad_request("send either 'image' (one base64 image) or 'images' (a list of them), not both",
                          "invalid_parameter")
    values = body.fields["images"]
    # a wrong JSON type breaks the request's schema (request-level 400); bad base64 or an undecodable image is
    # one item's problem (its own error entry)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise bad_request("'images' must be a list of base64 strings", "invalid_parameter")
    _check_count(len(values), limits.max_items)
    out: list[bytes | ApiError] = []
    for value in values:
        try:
            out.append(_b64_image(value, "each item of 'images'"))
        except ApiError as err:
            out.append(err)
    return out


def text_field(fields: dict, key: str, default: str | None = None, choices: tuple | None = None) -> str | None:
    if key in fields and fields[key] is None:  # the schema says string: leave the field out for its default
        raise bad_request(f"{key!r} must be a string, got null; leave it out for the default", "invalid_parameter")
    value = fields.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{key!r} must be a string, got {type(value).__name__}", "invalid_parameter")
    if choices and value not in choices:
        raise bad_request(f"{key!r} must be one of {', '.join(choices)}; got {value[:40]!r}", "invalid_parameter")
    return value


def lookup_model(request: Request, registry: Registry, fields: dict) -> ModelEntry:
    """The registry entry named by the `model` field (default model when absent); 404 for unknown ids."""
    name = text_field(fields, "model")
    try:
        entry = registry.get(name)
    except UnknownModel:
        raise ApiError(404, "model_not_found", f"unknown model {name[:80]!r}; served models: "
                       f"{', '.join(registry.models)} (GET /v1/models)") from None
    request.state.vqtok_model = entry.id  # for the metrics labels
    return entry


def image_bytes(body: Body) -> bytes:
    """The uploaded image: a file/raw body, or the base64 `image` field (a data: URL prefix is allowed)."""
    if body.blob is not None:
        if not body.blob:
            raise bad_request("empty body: send an image (multipart field 'image', JSON base64 'image', or raw)")
        return body.blob
    value = body.fields.get("image")
    if value is None:
        raise bad_request("no image: send multipart field 'image', JSON {\"image\": \"<base64>\"} or a raw body")
    return _b64_image(value, "'image'")


def _b64_image(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise bad_request(f"{what} must be a base64 string", "invalid_base64")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request(f"{what} is not valid base64 ({err})", "invalid_base64") from None
    if not data:
        raise bad_request(f"{what} is empty", "invalid_base64")
    return data


INLINE_PIXELS = 512 * 512  # uploads up to this size are decoded in the event loop (see open_small)


def open_small(data: bytes) -> Image.Image | None:
    """`data` opened (header read, pixels not yet decoded: pass it on to `prepare_image`) if its header says at
    most INLINE_PIXELS pixels: decoding it in the event loop costs less than a thread hop (a 256² JPEG decodes in
    ~1 ms; under load the hop and its GIL hand-offs cost more, null model on 2 cores: docs/PERFORMANCE.md). None for
    larger or unreadable uploads: they go to a thread as bytes, so that one never stalls the others (its errors are
    reported there)."""
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Exception:  # noqa: BLE001 - any undecodable upload: prepare_image reports it
        return None
    return img if img.width * img.height <= INLINE_PIXELS else None


def prepare_image(data: bytes | Image.Image, entry: ModelEntry, policy: str,
                  limits: Limits) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode and preprocess (`tokenizer.preprocess.prepare`) → (uint8 [H, W, 3], valid (height, width))."""
    try:
        arr, crop = prepare(data, policy=policy, size=entry.image_size, factor=entry.factor,
                            max_pixels=limits.max_pixels)
    except ImageTooLarge as err:
        raise ApiError(413, "image_too_large", f"{err}; send a smaller image") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types (EOFError, struct.error, ...) on bad bytes
        logger.debug("undecodable upload", exc_info=err)
        why = err.reason if isinstance(err, InvalidImage) and "BytesIO" not in err.reason else type(err).__name__
        raise ApiError(415, "unsupported_image", f"the upload is not a decodable image ({why}); send PNG, JPEG, "
                       "WebP, GIF, BMP or TIFF") from None
    if max(arr.shape[:2]) > entry.max_side:
        raise ApiError(413, "image_too_large", f"a {arr.shape[1]}×{arr.shape[0]} image is over this model's "
                       f"{entry.max_side}-pixel side limit for policy 'native'; use policy 'resize' or downscale it")
    return arr, (crop.height, crop.width)


def parse_codes(body: Body, entry: ModelEntry, limits: Limits) -> np.ndarray | list[np.ndarray | ApiError]:
    """A 2-D code grid the model can decode, as int32 [h, w] (422 for bad codes, 413 over the pixel limit); or, for
    a multi-grid request ([B, h, w] .npy or JSON `{"codes": [[[...]], ...]}`), a list with each grid or its own
    ApiError. Request-level problems (no codes, codebook mismatch, too many grids) raise."""
    if body.blob is not None:
        raw = _load_npy(body.blob)
    elif "codes" in body.fields:
        raw = body.fields["codes"]
    else:
        raise bad_request("no codes: send JSON {\"codes\": [[...]]} (or a flat list with \"shape\") or .npy bytes")
    _check_codebook(body, entry)
    shape = body.fields.get("shape")
    if shape is not None:
        raw = _reshape(raw, shape)
    elif _is_multi(raw):
        _check_count(len(raw), limits.max_items)
        out: list[np.ndarray | ApiError] = []
        for grid in raw:
            try:
                out.append(_one_grid(grid, entry, limits))
            except ApiError as err:
                out.append(err)
        return out
    return _one_grid(raw, entry, limits)


def _is_multi(raw: Any) -> bool:
    if isinstance(raw, np.ndarray):
        return raw.ndim == 3
    # a list of [h, w] grids: depth exactly 3 (deeper nesting is one malformed grid: a 422 for the whole request)
    return (isinstance(raw, list) and bool(raw) and isinstance(raw[0], list) and bool(raw[0])
            and isinstance(raw[0][0], list) and not (raw[0][0] and isinstance(raw[0][0][0], list)))


def _check_codebook(body: Body, entry: ModelEntry) -> None:
    expected = text_field(body.fields, "codebook_sha256")
    if expected is not None and expected.lower() != entry.codebook_sha256:
        raise ApiError(422, "codebook_mismatch", f"codebook_sha256 {expected[:64]!r} does not match model "
                       f"{entry.id!r} ({entry.codebook_sha256}): these codes belong to another vocabulary")


def _one_grid(raw: Any, entry: ModelEntry, limits: Limits) -> np.ndarray:
    try:
        grid = validate_codes(raw, entry.codebook_size, entry.factor, entry.max_side)
    except InvalidCodes as err:
        raise ApiError(422, "invalid_codes", str(err)) from None
    if grid.shape[0] != 1:
        raise ApiError(422, "invalid_codes", f"a [h, w] code grid or a list of them, got {grid.shape[0]} in one")
    h, w = grid.shape[1:]
    if h * w * entry.factor ** 2 > limits.max_pixels:
        raise ApiError(413, "image_too_large", f"a {h}×{w} grid decodes to {h * w * entry.factor ** 2} pixels; "
                       f"the server limit is {limits.max_pixels}")
    return grid[0]


def _load_npy(blob: bytes) -> np.ndarray:
    """A .npy body as an array, read with numpy's literal-only header parser (never eval) and its declared size
    checked against the bytes sent before anything is allocated (a 100-byte body may claim 10¹⁰ int64)."""
    fp = io.BytesIO(blob)
    try:
        version = npformat.read_magic(fp)
        read_header = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}[version]
        shape, fortran, dtype = read_header(fp, max_header_size=NPY_MAX_HEADER)
    except (ValueError, KeyError, OSError, EOFError, TypeError, SyntaxError, RecursionError):
        # numpy's messages quote parser objects (with their addresses): say what is wrong without them
        raise bad_request("the body is not a .npy array written by np.save (unreadable header; versions 1.0 and "
                          "2.0 are accepted)", "invalid_npy") from None
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise bad_request(f"a .npy of plain numbers is expected, got dtype {str(dtype)[:60]}", "invalid_npy")
    count = math.prod(shape)
    sent = len(blob) - fp.tell()
    if count * dtype.itemsize != sent:
        raise bad_request(f"the .npy header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes) "
                          f"but the body carries {sent} bytes after it", "invalid_npy")
    return np.frombuffer(blob, dtype, count, fp.tell()).reshape(shape, order="F" if fortran else "C")


def _reshape(raw: Any, shape: Any) -> np.ndarray:
    if (not isinstance(shape, (list, tuple)) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise ApiError(422, "invalid_codes", f"'shape' must be [h, w] with positive integers, got {str(shape)[:80]}")
    try:
        flat = np.asarray(raw)
    except ValueError:
        flat = np.asarray([], dtype=object)
    if flat.ndim != 1 or flat.size != shape[0] * shape[1]:
        raise ApiError(422, "invalid_codes", f"with 'shape' {list(shape)}, 'codes' must be a flat list of "
                       f"{shape[0] * shape[1]} integers")
    return flat.reshape(shape[0], shape[1])
