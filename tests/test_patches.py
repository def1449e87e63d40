"""server/patches.py (and the LitServe hooks app.py overrides) rely on the exact code of these uvicorn/LitServe
functions. If an upgrade changes one, this fails: re-read the new code, re-check the patch, then update the hash."""
from __future__ import annotations

import hashlib
import inspect

import pytest

pytest.importorskip("litserve")

PINNED = {
    # patches.HeaderDeadlineProtocol extends these hooks (and relies on data_received not arming a header timer)
    "uvicorn HttpToolsProtocol.connection_made": "6efb565ff3d36b91",
    "uvicorn HttpToolsProtocol.on_headers_complete": "1ea8589acfad92d8",
    "uvicorn HttpToolsProtocol.on_response_complete": "64e254f28e389e76",
    "uvicorn HttpToolsProtocol.connection_lost": "c91a4c9bf2e29c55",
    "uvicorn HttpToolsProtocol.data_received": "010a7ae59a5d3b1a",
    # patches.wait_for_reply replaces handle_request, using _submit_request, the START message's worker_id and
    # _handle_error_response as they are here
    "litserve RegularRequestHandler.handle_request": "1d9fe5ed85826b88",
    "litserve BaseRequestHandler._submit_request": "a331d2b69435202e",
    "litserve RegularRequestHandler._handle_error_response": "18f3abb9b984dcd9",
    "litserve response_queue_to_buffer": "3d690c69c631a266",
    # app.VqtokServer._start_server wraps it (listening socket, http= protocol, process watch); the restart of dead
    # workers and the order of start-up come from these
    "litserve LitServer._start_server": "509cc1cb9ae3a09a",
    "litserve LitServer._start_worker_monitoring": "aa423155d312a88a",
    "litserve LitServer.run": "a53f4b3f53ea3e13",
}


def _targets() -> dict:
    import litserve.server as S
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as H

    return {
        "uvicorn HttpToolsProtocol.connection_made": H.connection_made,
        "uvicorn HttpToolsProtocol.on_headers_complete": H.on_headers_complete,
        "uvicorn HttpToolsProtocol.on_response_complete": H.on_response_complete,
        "uvicorn HttpToolsProtocol.connection_lost": H.connection_lost,
        "uvicorn HttpToolsProtocol.data_received": H.data_received,
        "litserve RegularRequestHandler.handle_request": S.RegularRequestHandler.handle_request,
        "litserve BaseRequestHandler._submit_request": S.BaseRequestHandler._submit_request,
        "litserve RegularRequestHandler._handle_error_response": S.RegularRequestHandler._handle_error_response,
        "litserve response_queue_to_buffer": S.response_queue_to_buffer,
        "litserve LitServer._start_server": S.LitServer._start_server,
        "litserve LitServer._start_worker_monitoring": S.LitServer._start_worker_monitoring,
        "litserve LitServer.run": S.LitServer.run,
    }


@pytest.mark.parametrize("name", sorted(PINNED))
def test_patched_code_is_unchanged(name):
    source = inspect.getsource(_targets()[name])
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == PINNED[name], (
        f"{name} changed upstream: re-check server/patches.py against the new code before updating the hash")


def test_header_deadline_protocol_is_a_subclass_per_timeout():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from vqtok.server.patches import header_deadline_protocol

    a, b = header_deadline_protocol(1.5), header_deadline_protocol(3.0)
    assert issubclass(a, HttpToolsProtocol) and (a.header_timeout, b.header_timeout) == (1.5, 3.0)
