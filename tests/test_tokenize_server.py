"""Dataset rows carry the same codes the server returns for the same files (in-process LitServe)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vqtok.pipeline.run import tokenize_dataset

pytest.importorskip("litserve")

FIXTURES = Path(__file__).parent / "fixtures"
TINY = str(FIXTURES / "tiny-model")


def test_dataset_codes_equal_server_codes(tmp_path):
    from fastapi.testclient import TestClient
    from litserve.utils import wrap_litserve_start

    from vqtok.server.app import build_server

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((FIXTURES / "photos").glob("*.jpg")):
        shutil.copy(p, src)
    rng = np.random.default_rng(3)
    nat = tmp_path / "native"
    nat.mkdir()
    for i, (w, h) in enumerate([(37, 29), (64, 48)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(nat / f"{i}.png")
    tokenize_dataset(str(src), tmp_path / "resize", TINY, batch_size=4, progress=False)
    tokenize_dataset(str(nat), tmp_path / "nat", TINY, policy="native", progress=False)

    server = build_server(FIXTURES, ["tiny-model"])
    with wrap_litserve_start(server) as s, TestClient(s.app) as client:
        for folder, out, policy in ((src, "resize", "resize"), (nat, "nat", "native")):
            rows = pq.read_table(sorted((tmp_path / out).glob("shard-*.parquet"))).to_pylist()
            assert len(rows) == len(list(folder.iterdir()))
            for r in rows:
                data = (folder / r["key"]).read_bytes()
                reply = client.post("/v1/encode", files={"image": (r["key"], data, "application/octet-stream")},
                                    data={"model": "tiny-model", "policy": policy})
                assert reply.status_code == 200, reply.text
                body = reply.json()
                assert body["shape"] == [r["grid_h"], r["grid_w"]]
                assert np.array(body["codes"]).reshape(-1).tolist() == r["codes"], r["key"]
                assert body["codebook_sha256"] == json.loads((tmp_path / out / "manifest.json").read_text())[
                    "model"]["codebook_sha256"]
