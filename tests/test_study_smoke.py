"""bench.rotation_vs_ste --smoke on the committed fixture photos: matched pairs, summary, report files."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bench import rotation_vs_ste as study

PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"


def test_smoke_study(tmp_path):
    threads = torch.get_num_threads()
    try:
        rc = study.main(["--smoke", "--data", str(PHOTOS), "--out", str(tmp_path / "runs"),
                         "--report", str(tmp_path / "report")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    res = json.loads((tmp_path / "report" / "rotation_vs_ste.json").read_text())
    assert (tmp_path / "report" / "rotation_vs_ste.png").stat().st_size > 1000
    assert sorted((r["codebook"], r["arm"]) for r in res["runs"]) == sorted(
        (cb, arm) for cb in ("euclidean", "l2") for arm in ("rotation", "ste"))
    assert set(res["per_arm"]) == {"euclidean/rotation", "euclidean/ste", "l2/rotation", "l2/ste"}
    for row in res["per_arm"].values():
        assert set(row) == set(study.METRICS) and all(v["n"] == 1 for v in row.values())
    assert set(res["paired_rotation_minus_ste"]) == {"euclidean", "l2"}
    assert all(t["median_ratio"] > 0 for t in res["step_time"])
    for run in res["runs"]:
        assert run["curve"] and run["curve"][-1]["step"] == study.SMOKE["train"]["steps"]

    # A matched pair differs only in `gradient`: same seed, data, steps and every other option.
    for cb in ("euclidean", "l2"):
        cfgs = [json.loads((tmp_path / "runs" / f"{cb}-{arm}-s0" / "train_config.json").read_text())
                for arm in ("rotation", "ste")]
        grads = [c["model"].pop("gradient") for c in cfgs]
        assert grads == ["rotation", "ste"]
        for c in cfgs:
            c.pop("out")
        assert cfgs[0] == cfgs[1]
