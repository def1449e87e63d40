"""schemathesis against a live server (bounded: a fixed seed, a few examples per operation, a time budget): every
check but `positive_data_acceptance` — a schema cannot say "a decodable image" or "codes below K", so schema-valid
random bytes are rightly refused with a 4xx. 0 server errors and 0 conformance failures (status codes, content
types, headers, response schemas, negative data rejection, unsupported methods)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from _hostile import MAX_BODY_MB, MAX_PIXELS
from _serving import LiveServer, models_dir

pytest.importorskip("litserve")
pytest.importorskip("schemathesis")
KEY = "schema-key"


def test_schemathesis_finds_no_failure(tmp_path):
    models_dir(tmp_path)
    args = ["--models-dir", str(tmp_path / "models"), "--threads", "1", "--max-pixels", str(MAX_PIXELS),
            "--max-body-mb", str(MAX_BODY_MB)]
    st = shutil.which("schemathesis") or shutil.which("st")
    command = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    with LiveServer(args, api_key=KEY, log=tmp_path / "serve.log") as srv:
        out = subprocess.run([*command, "run", f"{srv.url}/openapi.json", "-H", f"X-API-Key: {KEY}",
                              "--checks", "all", "--exclude-checks", "positive_data_acceptance", "-n", "8",
                              "--seed", "1", "--max-time", "90", "--no-shrink"],
                             capture_output=True, text=True, timeout=400, cwd=tmp_path)
    tail = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    assert " passed" in out.stdout and "failure" not in out.stdout.split("SUMMARY")[-1], tail
