"""Helpers for the server tests: a models folder holding the tiny fixture, a real `vqtok serve` subprocess on
loopback (always cleaned up), process-tree inspection, and local ONNX Runtime references. Torch-free."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from vqtok.tokenizer.contract import psnr  # noqa: F401 - re-exported for the server tests

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny-model"
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))
REPO = Path(__file__).resolve().parent.parent


def models_dir(root: Path, ids: tuple[str, ...] = ("tiny-a",)) -> Path:
    """A models folder with the tiny fixture copied under each id."""
    d = root / "models"
    for mid in ids:
        shutil.copytree(TINY, d / mid)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class LiveServer:
    """`python -m vqtok serve ARGS` in its own session on a free loopback port; `stop()` / context exit cleans up."""

    def __init__(self, args: list[str], env: dict | None = None, api_key: str | None = None,
                 log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        full_env = {k: v for k, v in os.environ.items() if k not in ("VQTOK_METRICS_DIR", "VQTOK_API_KEY")}
        full_env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "VQTOK_PORT": str(self.port),
                         "OMP_NUM_THREADS": "1"})
        full_env.update(env or {})
        if api_key:
            full_env["VQTOK_API_KEY"] = api_key
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "vqtok", "serve", *args], env=full_env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def headers(self) -> dict:
        return {"X-API-Key": self.api_key} if self.api_key else {}

    def wait_ready(self, timeout: float = 900.0) -> "LiveServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vqtok serve exited with {self.proc.returncode}: {self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"vqtok serve not ready after {timeout:.0f} s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server process only (like `docker stop`), wait, then kill whatever is left of the session."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers (there should be none) share the session
        except ProcessLookupError:
            pass
        return self.proc.wait(10)

    def __enter__(self) -> "LiveServer":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def session_pids(sid: int) -> set[int]:
    """Live processes whose session id is `sid` (a LiveServer's pid)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def local_tokenizer(model_dir: Path):
    from vqtok.export.runtime import OnnxTokenizer

    return OnnxTokenizer.from_pretrained(model_dir, threads=1)
