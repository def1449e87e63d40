"""Python client for the vqtok server (sync `Client` and async `AsyncClient`, both over httpx).

    from vqtok.server.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as c:
        codes = c.encode("photo.jpg")        # int64 [h, w]
        grids = c.encode(["a.jpg", "b.jpg"]) # a list: [h, w] each, sent `batch` images per request
        image = c.decode(codes)              # PIL.Image (a list of grids → a list of images)
        recon = c.reconstruct("photo.jpg")   # PIL.Image
        print(c.models()["default"])

Every server error is raised as a `VqtokError` subclass chosen by status (see `ERRORS`), carrying the server's
`status`, `code` and `message`; connection failures and timeouts raise `ServerUnavailable`.
Requests are pure functions of their input, so both clients retry them (`retries`, default 3) on connection errors
and on 502/503/504 (a replica going away behind a load balancer, a worker restarting), waiting `Retry-After` when the
server sends one, else 0.25·2ⁿ s.
No torch: numpy, Pillow and httpx only.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence, Union

import httpx
import numpy as np
from PIL import Image

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]
DEFAULT_URL = "http://127.0.0.1:8000"
BATCH = 32  # images per multi-image request (the server's default limit is 64: `vqtok serve --max-items`)


class VqtokError(Exception):
    """A request the server answered with an error (or could not answer)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})" if status else message)
        self.message, self.status, self.code = message, status, code


class BadRequest(VqtokError):
    """400: malformed JSON, base64, multipart or parameter."""


class Unauthorized(VqtokError):
    """401: missing or wrong API key."""


class ModelNotFound(VqtokError):
    """404: the model id is not served (see `Client.models()`)."""


class PayloadTooLarge(VqtokError):
    """413: body or pixel count over the server's limits."""


class UnsupportedImage(VqtokError):
    """415: not a decodable image, or an unsupported content type."""


class InvalidCodes(VqtokError):
    """422: codes the model cannot decode (dtype, range, shape, codebook checksum)."""


class ServerError(VqtokError):
    """5xx: the server failed; its log has the details."""


class ServerUnavailable(VqtokError):
    """The server could not be reached or did not answer in time."""


ERRORS: dict[int, type[VqtokError]] = {400: BadRequest, 401: Unauthorized, 404: ModelNotFound, 413: PayloadTooLarge,
                                       415: UnsupportedImage, 422: InvalidCodes}


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        message, code = str(err["message"]), str(err["code"])
    except (ValueError, KeyError, TypeError):
        message, code = resp.text[:200] or resp.reason_phrase, None
    cls = ERRORS.get(resp.status_code, ServerError if resp.status_code >= 500 else VqtokError)
    raise cls(message, resp.status_code, code)


def image_payload(image: ImageInput) -> bytes:
    """Bytes to upload: files and bytes as they are (the server decodes them), arrays and PIL images as PNG."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"image must be a path, bytes, PIL image or uint8 array, got {type(image).__name__}")


def codes_payload(codes: Any) -> bytes:
    """An int [h, w] grid (or [1, h, w]) as .npy bytes."""
    arr = np.asarray(codes)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _many_codes(grids: Sequence[Any]) -> tuple[bytes, str]:
    """Several grids as one [B, h, w] .npy (same shape) or as JSON {"codes": [grid, ...]} (shapes differ)."""
    arrays = [np.asarray(g) for g in grids]
    arrays = [a[0] if a.ndim == 3 and a.shape[0] == 1 else a for a in arrays]
    if len({a.shape for a in arrays}) == 1:
        buf = io.BytesIO()
        np.save(buf, np.stack(arrays))
        return buf.getvalue(), "application/x-npy"
    return json.dumps({"codes": [a.tolist() for a in arrays]}).encode(), "application/json"


def _params(**kw: Any) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def _requests(name: str, *args: Any, **kw: Any) -> tuple[str, str, dict]:
    """(method, path, httpx kwargs) for one API call; shared by the sync and async clients."""
    if name in ("encode", "encode_info", "reconstruct"):
        image, model, policy = args
        fmt = {"encode": "npy", "encode_info": "json", "reconstruct": "png"}[name]
        path = "/v1/reconstruct" if name == "reconstruct" else "/v1/encode"
        return "POST", path, {"content": image_payload(image), "headers": {"Content-Type": "application/octet-stream"},
                              "params": _params(model=model, policy=policy, format=fmt)}
    if name == "decode":
        codes, model, sha = args
        return "POST", "/v1/decode", {"content": codes_payload(codes), "headers": {"Content-Type": "application/x-npy"},
                                      "params": _params(model=model, codebook_sha256=sha, format="png")}
    if name in ("encode_many", "encode_info_many"):
        images, model, policy = args
        files = [("image", (f"{i}", image_payload(im), "application/octet-stream")) for i, im in enumerate(images)]
        if len(files) == 1:  # one part is a single-image request: the JSON field keeps the reply a list
            return "POST", "/v1/encode", {"json": {"images": [base64.b64encode(files[0][1][1]).decode("ascii")],
                                                   **_params(model=model, policy=policy, format="json")}}
        return "POST", "/v1/encode", {"files": files, "data": _params(model=model, policy=policy, format="json")}
    if name == "decode_many":
        grids, model, sha = args
        body, ctype = _many_codes(grids)
        return "POST", "/v1/decode", {"content": body, "headers": {"Content-Type": ctype},
                                      "params": _params(model=model, codebook_sha256=sha, format="npy")}
    return "GET", {"models": "/v1/models", "health": "/health"}[name], {}


def item_error(entry: dict, index: int) -> VqtokError:
    """A failed item's entry of a multi-item reply as the `VqtokError` its status calls for."""
    status = int(entry.get("status", 500))
    cls = ERRORS.get(status, ServerError if status >= 500 else VqtokError)
    return cls(f"item {index}: {entry['error']['message']}", status, entry["error"]["code"])


def _entries(resp: httpx.Response) -> list[dict]:
    """The `results` of a multi-item reply; the first failed item raises (its index in the message)."""
    results = resp.json()["results"]
    for i, entry in enumerate(results):
        if "error" in entry:
            raise item_error(entry, i)
    return results


def _result(name: str, resp: httpx.Response) -> Any:
    if name == "health":
        return resp.status_code == 200
    _raise_for(resp)
    if name == "encode_many":
        return [np.asarray(e["codes"], dtype=np.int64) for e in _entries(resp)]
    if name == "encode_info_many":
        return [item_error(e, i) if "error" in e else e for i, e in enumerate(resp.json()["results"])]
    if name == "decode_many":
        return [Image.fromarray(np.load(io.BytesIO(base64.b64decode(e["npy"])), allow_pickle=False), "RGB")
                for e in _entries(resp)]
    if name == "encode":
        return np.load(io.BytesIO(resp.content), allow_pickle=False)
    if name in ("decode", "reconstruct"):
        img = Image.open(io.BytesIO(resp.content))
        img.load()
        return img
    return resp.json()


def _is_many(image: Any) -> bool:
    return isinstance(image, (list, tuple))


def _is_many_codes(codes: Any) -> bool:
    """A list/tuple of grids, or a [B, h, w] array with B > 1 ([1, h, w] stays one grid, as before)."""
    if isinstance(codes, np.ndarray):
        return codes.ndim == 3 and codes.shape[0] > 1
    return isinstance(codes, (list, tuple)) and bool(codes) and np.asarray(codes[0]).ndim == 2


def _parts(items: Sequence[Any], batch: int) -> list[list[Any]]:
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    return [list(items[i: i + batch]) for i in range(0, len(items), batch)]


RETRY_STATUSES = frozenset({502, 503, 504})


def _retry_delay(attempt: int, resp: httpx.Response | None) -> float:
    after = resp.headers.get("retry-after", "") if resp is not None else ""
    return min(float(after), 10.0) if after.isdigit() else 0.25 * 2**attempt


def _unavailable(url: str, err: Exception) -> ServerUnavailable:
    return ServerUnavailable(f"cannot reach the vqtok server at {url} ({err}); is `vqtok serve` running?")


def _headers(api_key: str | None) -> dict:
    key = api_key if api_key is not None else os.environ.get("VQTOK_API_KEY")
    return {"X-API-Key": key} if key else {}


class Client:
    """Blocking client. `api_key` defaults to $VQTOK_API_KEY; `timeout` is per request, in seconds; `retries`:
    extra attempts on connection errors and 502/503/504 (see the module docstring)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 3) -> None:
        self.url, self.retries = url.rstrip("/"), retries
        self._http = httpx.Client(base_url=self.url, headers=_headers(api_key), timeout=timeout)

    def _call(self, name: str, *args: Any) -> Any:
        method, path, kw = _requests(name, *args)
        for attempt in range(self.retries + 1):
            resp = None
            try:
                resp = self._http.request(method, path, **kw)
            except httpx.TransportError as err:
                if attempt == self.retries:
                    raise _unavailable(self.url, err) from err
            else:
                if resp.status_code not in RETRY_STATUSES or name == "health" or attempt == self.retries:
                    return _result(name, resp)
            time.sleep(_retry_delay(attempt, resp))

    def encode(self, image: ImageInput | Sequence[ImageInput], model: str | None = None, policy: str | None = None,
               batch: int = BATCH) -> np.ndarray | list[np.ndarray]:
        """Image → int64 code grid [h, w]. A list of images → a list of grids, sent `batch` images per request
        (one multi-image request each); a bad image raises, naming its index in its batch."""
        if not _is_many(image):
            return self._call("encode", image, model, policy)
        return [g for part in _parts(image, batch) for g in self._call("encode_many", part, model, policy)]

    def encode_info(self, image: ImageInput | Sequence[ImageInput], model: str | None = None,
                    policy: str | None = None, batch: int = BATCH) -> dict | list[dict | VqtokError]:
        """Image → the full JSON reply (model, codebook_size, codebook_sha256, shape, codes, ...). A list of images →
        a list with each image's reply, or the `VqtokError` of an image the server refused (returned, not raised),
        `batch` images per request."""
        if not _is_many(image):
            return self._call("encode_info", image, model, policy)
        return [e for part in _parts(image, batch) for e in self._call("encode_info_many", part, model, policy)]

    def decode(self, codes: Any, model: str | None = None, codebook_sha256: str | None = None,
               batch: int = BATCH) -> Image.Image | list[Image.Image]:
        """Code grid [h, w] → RGB image; a list of grids (or a [B, h, w] array) → a list of images, `batch` grids
        per request. Pass `codebook_sha256` to have the server check the vocabulary."""
        if not _is_many_codes(codes):
            return self._call("decode", codes, model, codebook_sha256)
        return [im for part in _parts(list(codes), batch) for im in self._call("decode_many", part, model,
                                                                              codebook_sha256)]

    def reconstruct(self, image: ImageInput, model: str | None = None, policy: str | None = None) -> Image.Image:
        """Image → encode → decode → RGB image."""
        return self._call("reconstruct", image, model, policy)

    def models(self) -> dict:
        """`{"default": id, "models": [{id, factor, codebook_size, codebook_sha256, ...}]}`."""
        return self._call("models")

    def health(self) -> bool:
        """True once the server has loaded every model."""
        return self._call("health")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """The same calls as `Client`, as coroutines."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 3) -> None:
        self.url, self.retries = url.rstrip("/"), retries
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(api_key), timeout=timeout)

    async def _call(self, name: str, *args: Any) -> Any:
        method, path, kw = _requests(name, *args)
        for attempt in range(self.retries + 1):
            resp = None
            try:
                resp = await self._http.request(method, path, **kw)
            except httpx.TransportError as err:
                if attempt == self.retries:
                    raise _unavailable(self.url, err) from err
            else:
                if resp.status_code not in RETRY_STATUSES or name == "health" or attempt == self.retries:
                    return _result(name, resp)
            await asyncio.sleep(_retry_delay(attempt, resp))

    async def encode(self, image: ImageInput | Sequence[ImageInput], model: str | None = None,
                     policy: str | None = None, batch: int = BATCH) -> np.ndarray | list[np.ndarray]:
        if not _is_many(image):
            return await self._call("encode", image, model, policy)
        return [g for part in _parts(image, batch) for g in await self._call("encode_many", part, model, policy)]

    async def encode_info(self, image: ImageInput | Sequence[ImageInput], model: str | None = None,
                          policy: str | None = None, batch: int = BATCH) -> dict | list[dict | VqtokError]:
        if not _is_many(image):
            return await self._call("encode_info", image, model, policy)
        return [e for part in _parts(image, batch)
                for e in await self._call("encode_info_many", part, model, policy)]

    async def decode(self, codes: Any, model: str | None = None, codebook_sha256: str | None = None,
                     batch: int = BATCH) -> Image.Image | list[Image.Image]:
        if not _is_many_codes(codes):
            return await self._call("decode", codes, model, codebook_sha256)
        return [im for part in _parts(list(codes), batch)
                for im in await self._call("decode_many", part, model, codebook_sha256)]

    async def reconstruct(self, image: ImageInput, model: str | None = None,
                          policy: str | None = None) -> Image.Image:
        return await self._call("reconstruct", image, model, policy)

    async def models(self) -> dict:
        return await self._call("models")

    async def health(self) -> bool:
        return await self._call("health")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
