"""API-key check for every route except `/health` and the web page `/` (static, no data; its calls carry the key):
`X-API-Key: KEY` or `Authorization: Bearer KEY`."""
from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers

from .errors import error_response

OPEN_PATHS = frozenset({"/health", "/"})


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
                       if missing else "wrong API key; check the key the server was started with (--api-key)")
            response = error_response(401, message, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)
