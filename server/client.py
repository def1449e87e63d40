"""Python client for the vqtok server (sync `Client` and async `AsyncClient`, both over httpx).

    from vqtok.server.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as c:
        codes = c.encode("photo.jpg")        # int64 [h, w]
        image = c.decode(codes)              # PIL.Image
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
import io
import os
import time
from pathlib import Path
from typing import Any, Union

import httpx
import numpy as np
from PIL import Image

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]
DEFAULT_URL = "http://127.0.0.1:8000"


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
    return "GET", {"models": "/v1/models", "health": "/health"}[name], {}


def _result(name: str, resp: httpx.Response) -> Any:
    if name == "health":
        return resp.status_code == 200
    _raise_for(resp)
    if name == "encode":
        return np.load(io.BytesIO(resp.content), allow_pickle=False)
    if name in ("decode", "reconstruct"):
        img = Image.open(io.BytesIO(resp.content))
        img.load()
        return img
    return resp.json()


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

    def encode(self, image: ImageInput, model: str | None = None, policy: str | None = None) -> np.ndarray:
        """Image → int64 code grid [h, w]."""
        return self._call("encode", image, model, policy)

    def encode_info(self, image: ImageInput, model: str | None = None, policy: str | None = None) -> dict:
        """Image → the full JSON reply (model, codebook_size, codebook_sha256, shape, codes, ...)."""
        return self._call("encode_info", image, model, policy)

    def decode(self, codes: Any, model: str | None = None, codebook_sha256: str | None = None) -> Image.Image:
        """Code grid [h, w] → RGB image. Pass `codebook_sha256` to have the server check the vocabulary."""
        return self._call("decode", codes, model, codebook_sha256)

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

    async def encode(self, image: ImageInput, model: str | None = None, policy: str | None = None) -> np.ndarray:
        return await self._call("encode", image, model, policy)

    async def encode_info(self, image: ImageInput, model: str | None = None, policy: str | None = None) -> dict:
        return await self._call("encode_info", image, model, policy)

    async def decode(self, codes: Any, model: str | None = None, codebook_sha256: str | None = None) -> Image.Image:
        return await self._call("decode", codes, model, codebook_sha256)

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
