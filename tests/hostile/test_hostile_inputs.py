"""Hostile requests against one live `vqtok serve` (real HTTP processes, uvicorn, workers): every entry of the
catalogue (tests/_hostile.py) gets its exact 4xx status and error code, no traceback or memory address leaks, and
the server stays ready; plus the connection-level attacks (short bodies, slow headers) and the key hygiene."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from _hostile import CATALOGUE, MAX_BODY_MB, MAX_PIXELS
from _serving import PHOTOS, REPO, LiveServer, local_tokenizer, models_dir

pytest.importorskip("litserve")
KEY = "hostile-key-42"
READ_TIMEOUT, HEADER_TIMEOUT = 2.0, 2.0
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    models_dir(root)
    (root / "key").write_text(KEY + "\n")
    return root


@pytest.fixture(scope="module")
def live(root):
    args = ["--models-dir", str(root / "models"), "--max-pixels", str(MAX_PIXELS), "--max-body-mb", str(MAX_BODY_MB),
            "--threads", "1", "--read-timeout", str(READ_TIMEOUT), "--header-timeout", str(HEADER_TIMEOUT),
            "--api-key-file", str(root / "key")]
    with LiveServer(args, log=root / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live.url, headers={"X-API-Key": KEY}, timeout=60) as c:
        yield c


def ready(client) -> bool:
    return client.get("/health/ready").status_code == 200


@pytest.mark.parametrize("endpoint,request_kw,status,code", CATALOGUE,
                         ids=[f"{e[0]}-{e[2]}-{e[3]}-{i}" for i, e in enumerate(CATALOGUE)])
def test_hostile_request_gets_its_4xx_and_the_server_stays_ready(client, endpoint, request_kw, status, code):
    r = client.post(f"/v1/{endpoint}", **request_kw)
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code and err["message"], err
    assert "Traceback" not in r.text and not ADDRESS.search(r.text), r.text[:500]
    assert ready(client)


def _raw(live, data: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    s.sendall(data)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_a_body_shorter_than_its_content_length_gets_408_then_the_connection_closes(live, client):
    head = (f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100000\r\n\r\n").encode()
    start = time.monotonic()
    with _raw(live, head + b'{"codes": [' + b"1, " * 300) as s:
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b'"code":"request_timeout"' in reply.replace(b" ", b"")
    assert READ_TIMEOUT - 0.5 < time.monotonic() - start < READ_TIMEOUT + 10
    assert ready(client)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(live, client):
    head = (f"POST /v1/encode HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {10**10}\r\n\r\n").encode()
    with _raw(live, head) as s:
        reply = b""
        while b"payload_too_large" not in reply and (chunk := s.recv(65536)):  # head and body may come apart
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply, reply[:300]
    assert ready(client)


def test_slow_headers_are_cut_off(live, client):
    """Slowloris: a byte of header every 0.3 s keeps resetting uvicorn's own keep-alive timer, not ours."""
    start = time.monotonic()
    with _raw(live, b"GET /v1/models HTTP/1.1\r\n") as s:
        s.settimeout(0.3)
        closed = False
        while time.monotonic() - start < HEADER_TIMEOUT + 15:
            try:
                s.sendall(b"X")
                if s.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:  # reset by the server
                closed = True
                break
    assert closed and time.monotonic() - start < HEADER_TIMEOUT + 8
    assert ready(client)


def test_probes_head_and_get(live, client):
    for path in ("/health", "/health/live", "/health/ready"):
        assert httpx.head(live.url + path).status_code == 200, path  # open: no key
        assert httpx.get(live.url + path).status_code == 200, path


def test_query_strings_never_reach_the_log(live, client):
    assert client.get("/v1/models", params={"api_key": "SECRET-in-url"}).status_code == 200
    time.sleep(0.5)
    log = live.log_text()
    assert "/v1/models?<redacted>" in log and "SECRET-in-url" not in log


def test_the_key_is_refused_on_the_command_line(root):
    out = subprocess.run([sys.executable, "-m", "vqtok", "serve", "--api-key", "visible-in-ps"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "VQTOK_API_KEY" in out.stderr and "--api-key-file" in out.stderr


def test_still_serving_correctly_after_the_catalogue(live, client, root):
    tok = local_tokenizer(root / "models" / "tiny-a")
    data = PHOTOS[1].read_bytes()
    r = client.post("/v1/encode", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, (r.text, live.log_text()[-4000:])
    np.testing.assert_array_equal(np.array(r.json()["codes"]), tok.encode(data)[0])
