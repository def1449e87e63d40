"""API-key check for every route except the health probes and the web page `/` (static, no data; the API calls it
makes carry the key): `X-API-Key: KEY` or `Authorization: Bearer KEY`.

Keys are never read from query strings, and access logs drop query strings (`QueryRedactingFilter`), so a key a
client puts in a URL by mistake does not end up in the log."""
from __future__ import annotations

import hashlib
import hmac
import logging

from starlette.datastructures import Headers

from .errors import error_response

OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/"})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeyMiddleware:
    """Rejects requests without the right key with a 401 JSON error; compares in constant time."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app = app
        self._digest = _digest(api_key) if api_key else None

    def authorized(self, headers: Headers) -> bool:
        given = headers.get("x-api-key") or None  # an empty header counts as absent
        if given is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        # digests of equal length: compare_digest's time depends on neither the key nor its length
        return given is not None and hmac.compare_digest(_digest(given), self._digest)

    async def __call__(self, scope, receive, send) -> None:
        if self._digest is None or scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not self.authorized(Headers(scope=scope)):
            missing = "x-api-key" not in Headers(scope=scope) and "authorization" not in Headers(scope=scope)
            message = ("this server requires an API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"
                       if missing else "wrong API key; check the key the server was started with ($VQTOK_API_KEY or --api-key-file)")
            response = error_response(401, message, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


class QueryRedactingFilter(logging.Filter):
    """uvicorn access-log records without their query string (they may carry keys or tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?<redacted>", *args[3:])
        return True
