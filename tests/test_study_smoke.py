"""bench.rotation_vs_ste --smoke on the committed fixture photos: matched pairs, summary, report files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
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
    cells = [f"{s}/euclidean" for s in study.SETTINGS]
    assert sorted((study.cell(r), r["arm"]) for r in res["runs"]) == sorted(
        (c, arm) for c in cells for arm in ("rotation", "ste"))
    assert set(res["per_arm"]) == {f"{c}/{arm}" for c in cells for arm in ("rotation", "ste")}
    for row in res["per_arm"].values():
        assert set(row) == set(study.METRICS) and all(v["n"] == 1 for v in row.values())
    assert set(res["paired_rotation_minus_ste"]) == set(cells)
    assert all(t["median_ratio"] > 0 for t in res["step_time"])
    for run in res["runs"]:
        assert run["curve"] and run["curve"][-1]["step"] == study.SMOKE["train"]["steps"]
        assert all(c["e_sq"] > 0 for c in run["curve"])

    # A matched pair differs only in `gradient`: same seed, data, steps and every other option; the settings are
    # the preset's fields.
    for settings in study.SETTINGS:
        cfgs = [json.loads((tmp_path / "runs" / f"{settings}-euclidean-{arm}-s0" / "train_config.json").read_text())
                for arm in ("rotation", "ste")]
        grads = [c["model"].pop("gradient") for c in cfgs]
        assert grads == ["rotation", "ste"]
        for c in cfgs:
            c.pop("out")
        assert cfgs[0] == cfgs[1]
        assert cfgs[0]["model"].items() >= study.quantizer_preset(settings).items()

    # --curves reads the same runs' training logs (as it would while they still train) and pairs them by step.
    assert study.main(["--curves", "--out", str(tmp_path / "runs"), "--report", str(tmp_path / "curves")]) == 0
    rows = json.loads((tmp_path / "curves" / "rotation_vs_ste_curves.json").read_text())["pairs"]
    assert set(rows) == {f"{c} s0" for c in cells}
    for name, row in rows.items():
        assert row["step"] == study.SMOKE["train"]["steps"]
        run = next(r for r in res["runs"] if f"{study.cell(r)} s0" == name and r["arm"] == "ste")
        last = run["curve"][-1]
        assert row["ste"]["rec"] == pytest.approx(last["rec"])
        assert row["ste"]["usage"] == pytest.approx(100 * last["usage"])
        assert row["diff"]["usage"] == pytest.approx(row["rotation"]["usage"] - row["ste"]["usage"])


def test_summary_and_table_on_hand_made_runs():
    """Grouping, paired differences and the markdown table, on runs made up here (no training)."""
    def run(settings, arm, seed, usage, psnr):
        return {"settings": settings, "codebook": "euclidean", "arm": arm, "seed": seed,
                "eval": {m: None for m in study.METRICS} | {"usage_pct": usage, "psnr": psnr}}

    runs = [run("taming", "rotation", 0, 30.0, 18.0), run("taming", "ste", 0, 10.0, 17.5),
            run("taming", "rotation", 1, 20.0, 18.2), run("taming", "ste", 1, 12.0, 17.9),
            {k: v for k, v in run("vqtok", "ste", 0, 5.0, 17.0).items() if k != "settings"}]  # pre-grid run
    s = study.summarise(runs)
    assert set(s["per_arm"]) == {"taming/euclidean/rotation", "taming/euclidean/ste", "vqtok/euclidean/ste"}
    assert s["per_arm"]["taming/euclidean/rotation"]["usage_pct"] == {"mean": 25.0, "std": pytest.approx(50**0.5),
                                                                       "n": 2}
    diff = s["paired_rotation_minus_ste"]["taming/euclidean"]
    assert diff["usage_pct"]["mean"] == pytest.approx(14.0) and diff["psnr"]["mean"] == pytest.approx(0.4)
    assert set(diff) == {"usage_pct", "psnr"}
    table = study.markdown(s)
    assert "| **taming/euclidean: rotation − STE** | 2 pairs | +14.0 ± 8.5 | +0.40 ± 0.14 |" in table
