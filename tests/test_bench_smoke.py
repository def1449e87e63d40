"""`python -m bench --smoke`: every section of the benchmark suite runs end to end on the tiny fixture model (a real
`vqtok serve` included) and the report renders; keeps the suite working in CI. Seconds, not minutes."""
from __future__ import annotations

import json

import torch

from bench import report
from bench.__main__ import main as bench_main


def test_bench_smoke(tmp_path):
    out, doc = tmp_path / "bench.json", tmp_path / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        rc = bench_main(["--smoke", "--out", str(out), "--doc", str(doc)])
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["errors"] == {}, res["errors"]
    assert rc == 0

    assert res["probe"]["onnxruntime"]["gflops"] > 0 and res["probe"]["torch"]["gflops"] > 0
    flops = res["model"]["flops"]
    assert flops["encode"]["flop_per_image"] > 0 and flops["decode"]["flop_per_image"] > 0
    cells = {(r["backend"], r["graph"], r["batch"]) for r in res["model"]["rows"]}
    assert cells == {(b, g, n) for b in ("onnxruntime-cpu-fp32", "torch-eager-cpu-fp32")
                     for g in ("encode", "decode") for n in (1, 2)}
    assert all(r["images_per_s"] > 0 and r["achieved_gflops"] > 0 for r in res["model"]["rows"])
    assert res["profile"]["encode"]["by_op_ms"] and res["profile"]["decode"]["by_op_ms"]
    assert {r["variant"] for r in res["tuning"]["rows"]} >= {"runtime default", "plain, BASIC"}

    rows = res["serving"]["rows"]
    assert {(r["endpoint"], r["concurrency"]) for r in rows} == {
        (e, c) for e in ("encode-npy", "encode-json", "decode", "reconstruct") for c in (1, 2)}
    for r in rows:
        assert r["requests"] > 0 and r["errors"] == 0 and r["served_over_raw"] > 0
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    (variant,) = res["serving"]["variants"]
    assert variant["rows"][0]["requests"] > 0 and variant["rows"][0]["errors"] == 0
    assert "--batch-timeout 0.002" in variant["server_command"]
    mem = res["serving"]["memory"]
    assert mem["inference_workers"] == 3 and mem["worker_peak_rss_mib"] > 10
    assert set(mem["worker_peak_rss_mib_by_name"]) == {"vq-encode", "vq-decode", "vq-reconstruct"}

    st = res["training"]["step_time"]
    assert st["median_ratio"] > 0 and st["quantizer_rotation_ms"] > 0
    assert res["training"]["training_rss"]["peak_rss_mib"] > 50
    assert res["pipeline"]["ratio"] > 0
    assert res["gpu"]["skipped"]  # CPU run: the GPU rows say "not measured"

    text = doc.read_text()
    assert text == report.render(res)
    for heading in ("## Targets", "## 1. Machine probe", "## 2. Model efficiency", "## 3. Serving",
                    "## 4. Training step time", "## 5. Memory", "## GPU"):
        assert heading in text
    assert "| GPU: encode ≥ 2,000 img/s at 256², fp16 | not measured" in text
