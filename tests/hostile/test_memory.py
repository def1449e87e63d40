"""Memory after outliers: every process of a live server returns under its documented bound (docs/RELIABILITY.md:
its S×S steady state + `SLACK_MIB`) after the worst-case requests the limits allow (native images and code grids
at the model's max_side), instead of keeping their peak (ONNX Runtime's arena, glibc's heap)."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from _serving import PHOTOS, LiveServer, models_dir, png, session_pids

pytest.importorskip("litserve")
SLACK_MIB = 48  # the tiny model's worst case (256² decode) grows a worker by ~130 MiB when nothing is given back


def rss_by_process(srv: LiveServer) -> dict[str, float]:
    out = {}
    for pid in session_pids(srv.proc.pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
        out[f"{comm}:{pid}"] = pages * 4096 / 2**20
    return out


def test_every_process_returns_under_its_bound_after_the_worst_case(tmp_path):
    models_dir(tmp_path)
    args = ["--models-dir", str(tmp_path / "models"), "--threads", "1"]
    with LiveServer(args, log=tmp_path / "serve.log") as srv, httpx.Client(base_url=srv.url, timeout=300) as c:
        photo = PHOTOS[0].read_bytes()
        for _ in range(3):  # S×S steady state on every endpoint
            codes = c.post("/v1/encode", content=photo, headers={"Content-Type": "image/jpeg"}).json()["codes"]
            assert c.post("/v1/decode", json={"codes": codes}).status_code == 200
            assert c.post("/v1/reconstruct", content=photo, headers={"Content-Type": "image/jpeg"}).status_code == 200
        steady = rss_by_process(srv)
        side = c.get("/v1/models").json()["models"][0]["max_side"]
        big = png(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8))
        r = c.post("/v1/encode", content=big, headers={"Content-Type": "image/png"}, params={"policy": "native"})
        assert r.status_code == 200, r.text
        assert c.post("/v1/decode", json={"codes": r.json()["codes"]}).status_code == 200
        r = c.post("/v1/reconstruct", content=big, headers={"Content-Type": "image/png"}, params={"policy": "native"})
        assert r.status_code == 200
        time.sleep(0.5)
        after = rss_by_process(srv)
    over = {k: (round(steady[k]), round(v)) for k, v in after.items() if k in steady and v > steady[k] + SLACK_MIB}
    assert not over, f"processes over their S×S steady state + {SLACK_MIB} MiB (steady, after): {over}"
