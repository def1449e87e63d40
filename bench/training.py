"""Training costs: step time with the rotation trick vs STE on the same batch, and peak RSS of a training process.

    python -m bench.training [--crop 128] [--batch-size 4] [--repeats 6] [--rss-steps 3]
    python -m bench.training --autocast [--batch-size 12] [--threads 2]     # fp32 vs bf16 autocast steps only

Step time: `bench.rotation_vs_ste.step_time_ratio` (one model, one fixed batch, forward + backward, alternating
rotation / STE, median of per-pair ratios) on the default model config. The quantizer's share is also timed alone
(forward + backward of `VectorQuantizer` on the latents of that batch, both arms interleaved) so the overhead can
be read in milliseconds, not only as a ratio of two noisy step times.

Autocast: one `Trainer.train_step` (the default recipe: EfficientNet perceptual loss, GAN on) per call on a fixed
random batch, `autocast: off` and `bf16` interleaved (two trainers, same initial weights); pays on CPUs with AMX /
AVX512-BF16, costs elsewhere.

Peak RSS: `vqtok train` at the default `TrainConfig` (batch 16, crop 128, EfficientNet perceptual loss) with the
default model, run for a few steps in a child process on the fixture photos with the discriminator switched on from
step 1 (`--set disc_start=1`, so the peak covers the GAN phase too); the peak is the child's ru_maxrss (the largest
process; DataLoader workers are separate, smaller processes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vqtok.tokenizer.contract import CONFIG_FILE

from .common import REPO, cores, interleaved

PHOTOS = REPO / "tests" / "fixtures" / "photos"


def default_model_config(model_dir: Path | None = None) -> dict:
    """TokenizerConfig fields of the model under test (default: the default config)."""
    from vqtok.tokenizer.model import TokenizerConfig

    if model_dir is not None and (model_dir / CONFIG_FILE).is_file():
        cfg = TokenizerConfig.from_dict(json.loads((model_dir / CONFIG_FILE).read_text()))
    else:
        cfg = TokenizerConfig()
    d = cfg.to_dict()
    d.pop("factor", None)
    return d


def step_time(model_cfg: dict, crop: int, batch_size: int, repeats: int, threads: int | None = None,
              quant_max_s: float = 3.0) -> dict:
    """rotation / STE full-step ratio (the study's function) and the quantizer-only times."""
    import torch

    from bench.rotation_vs_ste import step_time_ratio
    from vqtok.tokenizer.model import Tokenizer, TokenizerConfig

    threads = threads or cores()
    old = torch.get_num_threads()
    codebook = "l2" if model_cfg.get("normalize_codes", True) else "euclidean"
    spec = {"model": {k: v for k, v in model_cfg.items() if k != "normalize_codes"},
            "train": {"crop": crop, "batch_size": batch_size}}
    try:
        full = step_time_ratio(spec, codebook, repeats, threads)
        # the quantizer alone, on the latents of the same batch
        torch.manual_seed(0)
        model = Tokenizer(TokenizerConfig.from_dict(model_cfg)).train()
        x = torch.rand(batch_size, 3, crop, crop) * 2 - 1
        with torch.no_grad():
            z = model.quant_proj(model.encoder(x))
        q = model.quantizer

        def arm(name: str):
            def go():
                q.gradient = name
                zz = z.detach().requires_grad_(True)
                zq, _, aux = q(zz)
                (zq.square().mean() + aux["loss"]).backward()
                q.zero_grad(set_to_none=True)
            return go
        t = interleaved({"rotation": arm("rotation"), "ste": arm("ste")}, max_rounds=200, max_s=quant_max_s, min_rounds=5)
    finally:
        torch.set_num_threads(old)
    qr, qs = t["rotation"].median, t["ste"].median
    return {"crop": crop, "batch_size": batch_size, "threads": threads, **full,
            "overhead_pct": 100 * (full["median_ratio"] - 1),
            "quantizer_rotation_ms": 1e3 * qr, "quantizer_ste_ms": 1e3 * qs,
            "quantizer_delta_ms": 1e3 * (qr - qs),
            "quantizer_delta_pct_of_step": 100 * (qr - qs) / full["median_ste_s"]}


def autocast_step_time(model_cfg: dict, crop: int, batch_size: int, repeats: int, threads: int) -> dict:
    """Median seconds per default-recipe training step, fp32 vs bf16 autocast, on this machine's CPU."""
    import torch

    from vqtok.tokenizer.train import Trainer, TrainConfig

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base = {"model": model_cfg, "device": "cpu", "crop": crop, "batch_size": batch_size, "disc_start": 0}
        x = torch.randint(0, 256, (batch_size, 3, crop, crop), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        steps = {}
        for mode in ("off", "bf16"):
            torch.manual_seed(0)
            trainer = Trainer(TrainConfig.from_dict(base | {"autocast": mode}))
            steps[mode] = lambda t=trainer: t.train_step(x)
        t = interleaved(steps, max_rounds=repeats, min_rounds=repeats, max_s=0.0, settle_s=0.0)
    finally:
        torch.set_num_threads(old)
    fp32, bf16 = t["off"].median, t["bf16"].median
    return {"crop": crop, "batch_size": batch_size, "threads": threads, "fp32_s": fp32, "bf16_s": bf16,
            "speedup": fp32 / bf16}


def training_rss(model_cfg: dict, steps: int = 3, data: Path = PHOTOS, overrides: list[str] | None = None,
                 timeout: float = 300.0) -> dict:
    """Peak RSS (MiB) of `vqtok train` at the default TrainConfig for `steps` steps, in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "train.json"  # a --config file of training options
        cfg.write_text(json.dumps({"model": model_cfg}))
        sets = ["disc_start=1", "grid_every=0", f"checkpoint_every={10**9}", "log_every=1"] + (overrides or [])
        cmd = [sys.executable, "-m", "vqtok", "train", str(data), "--out", str(Path(tmp) / "run"), "--config",
               str(cfg), "--steps", str(steps), "--no-progress", "--device", "cpu"]
        for s in sets:
            cmd += ["--set", s]
        # ru_maxrss of RUSAGE_CHILDREN is the largest waited-for descendant; run the child through a tiny wrapper
        # so this process's own earlier children (servers) do not count.
        wrapper = ("import resource,subprocess,sys,json,time;t=time.time();"
                   "r=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE,stderr=subprocess.STDOUT,text=True);"
                   "print(json.dumps({'rc':r.returncode,'maxrss_kib':resource.getrusage(resource.RUSAGE_CHILDREN)"
                   ".ru_maxrss,'wall_s':time.time()-t,'tail':r.stdout[-1500:]}))")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, timeout=timeout,
                             env=env)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        train_cfg = None
        if (Path(tmp) / "run" / "train_config.json").is_file():
            train_cfg = json.loads((Path(tmp) / "run" / "train_config.json").read_text())
    if res["rc"] != 0:
        raise RuntimeError(f"vqtok train failed ({res['rc']}): {res['tail']}")
    keys = ("batch_size", "crop", "perceptual", "disc_start", "workers", "ema")
    return {"peak_rss_mib": res["maxrss_kib"] / 1024, "steps": steps, "wall_s": res["wall_s"],
            "command": "vqtok train " + " ".join(cmd[4:]).replace(str(REPO) + "/", ""),
            "train_config": {k: train_cfg[k] for k in keys} if train_cfg else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder whose config.json to use (default: the default config)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--rss-steps", type=int, default=3)
    ap.add_argument("--autocast", action="store_true", help="only time fp32 vs bf16-autocast training steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for --autocast (default: all cores)")
    args = ap.parse_args(argv)
    cfg = default_model_config(Path(args.model) if args.model else None)
    if args.autocast:
        out = {"autocast": autocast_step_time(cfg, args.crop, args.batch_size, args.repeats, args.threads or cores())}
        print(json.dumps(out["autocast"], indent=1))
        return out
    t0 = time.time()
    out = {"step_time": step_time(cfg, args.crop, args.batch_size, args.repeats)}
    print(json.dumps(out["step_time"], indent=1), f"{time.time() - t0:.0f} s")
    out["training_rss"] = training_rss(cfg, args.rss_steps)
    print(json.dumps(out["training_rss"], indent=1))
    return out


if __name__ == "__main__":
    main()
