"""The one error shape every reply uses: `{"error": {"code", "message"}}` with the matching HTTP status.

Bad input is always a 4xx with a message saying what to fix; anything unexpected is a 500 with a generic message
(the details go to the server log, never into a reply).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("vqtok.server")

# status → the code used when an HTTPException carries none of its own
DEFAULT_CODES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_codes", 500: "internal_error",
    503: "unavailable", 504: "timeout",
}


class ApiError(HTTPException):
    """A client error with a stable machine-readable `code` (see `DEFAULT_CODES`) and a human message."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
WHEN = {400: "malformed request (JSON, multipart, base64, .npy, parameters)", 401: "missing or wrong API key",
        404: "unknown model", 408: "the request body did not arrive within --read-timeout",
        413: "body or image over the limits", 415: "unsupported Content-Type or undecodable image",
        422: "invalid code grid", 500: "internal error", 503: "worker restarting (see Retry-After)",
        504: "no reply within --timeout"}


def openapi_errors(statuses: tuple[int, ...]) -> dict:
    """OpenAPI `responses` entries for these error statuses: the JSON error shape above."""
    return {s: {"description": WHEN[s], "content": {"application/json": {"schema": ERROR_SCHEMA}}} for s in statuses}


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def error_body(status: int, message: str, code: str | None = None) -> dict:
    return {"error": {"code": code or DEFAULT_CODES.get(status, "error"), "message": message}}


def error_response(status: int, message: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI/Starlette/LitServe can raise through `error_response`."""

    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code >= 500 and not isinstance(exc, ApiError):
            message = "internal server error; the server log has the details"
        return error_response(exc.status_code, message, getattr(exc, "code", None),
                              headers=getattr(exc, "headers", None))

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return error_response(400, f"malformed request: {first.get('msg', 'invalid input')}")

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error while serving a request", exc_info=exc)
        return error_response(500, "internal server error; the server log has the details")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
