"""SIGKILL `vqtok tokenize` at arbitrary moments, rerun, and get exactly the rows of an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from vqtok.pipeline.manifest import verify

TINY = str(Path(__file__).parent / "fixtures" / "tiny-model")
N_IMAGES, SHARD = 100, 2


def _cmd(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "vqtok", "tokenize", str(src), str(dst), "--model", TINY,
            "--shard-size", str(SHARD), "--batch-size", "2", "--workers", "1", "--no-progress"]


def _snapshot(dst: Path) -> tuple[list[dict], str, dict]:
    rows = pq.read_table(sorted(dst.glob("shard-*.parquet"))).to_pylist()
    m = json.loads((dst / "manifest.json").read_text())
    return rows, (dst / "errors.jsonl").read_text(), m["totals"]


def test_sigkill_at_any_moment_then_resume_gives_the_same_rows(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(N_IMAGES):
        w, h = rng.integers(40, 90, 2)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"img{i:03d}.png")
    (src / "img017.png").write_bytes(b"")  # error records must survive the kills too
    (src / "img042.png").write_text("not an image")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    ref = tmp_path / "ref"
    subprocess.run(_cmd(src, ref), check=True, env=env, capture_output=True)

    dst, n_shards = tmp_path / "killed", N_IMAGES // SHARD
    partial_kills = 0
    rand = random.Random(0)
    # kill when k shards exist, or a random 0-40 ms after the run's first new shard: the kill lands wherever it
    # lands (a shard's temporary write, its rename, reading ahead, the next batch)
    triggers = [("shards", 2), ("random", rand.uniform(0, 0.04)), ("shards", 15), ("random", rand.uniform(0, 0.04)),
                ("random", rand.uniform(0, 0.04)), ("shards", 35)]
    for kind, value in triggers:
        before = len(list(dst.glob("shard-*.parquet")))
        p = subprocess.Popen(_cmd(src, dst), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None:
            n = len(list(dst.glob("shard-*.parquet")))
            if (kind == "shards" and n >= value) or (kind == "random" and n > before):
                time.sleep(value if kind == "random" else 0)
                os.kill(p.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        p.wait()
        done = len(list(dst.glob("shard-*.parquet")))
        if p.returncode == -signal.SIGKILL and 0 < done < n_shards and not (dst / "manifest.json").exists():
            partial_kills += 1
    assert partial_kills >= 4, "the kills never landed mid-run: the test would prove nothing"

    subprocess.run(_cmd(src, dst), check=True, env=env, capture_output=True)
    rows, errors, totals = _snapshot(dst)
    ref_rows, ref_errors, ref_totals = _snapshot(ref)
    assert rows == ref_rows  # no loss, no duplicates, same order and codes
    assert [r["index"] for r in rows] == sorted({r["index"] for r in rows})
    assert errors == ref_errors and totals == ref_totals == {"items": 100, "rows": 98, "errors": 2, "shards": 50}
    assert verify(dst) == [] and not list(dst.glob(".shard-*"))
