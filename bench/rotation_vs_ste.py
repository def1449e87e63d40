"""Rotation trick vs straight-through estimator: matched pairs that differ only in `gradient`.

    nice -n 19 python -m bench.rotation_vs_ste                 # the real study on ../shared/data/photos
    python -m bench.rotation_vs_ste --smoke --out /tmp/smoke   # seconds, on the fixture photos (CI)

For each codebook type (euclidean, l2-normalised) and seed, two runs share init, seed, data order, steps and
hyper-parameters (tokenizer.train seeds before building the model; data order is seeded per sample) and differ only
in `model.gradient`. Each run is evaluated on the val split with tokenizer.eval.evaluate. Writes, into --report:
rotation_vs_ste.json (every run, the per-arm mean ± std, the paired differences, the step-time ratio) and
rotation_vs_ste.png (training-batch usage and quantisation error over steps). Finished runs are reused on a rerun.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
METRICS = ("usage_pct", "perplexity", "quant_error", "psnr", "ssim", "perceptual", "fd_effnet")
ARMS = ("rotation", "ste")
CODEBOOKS = {"euclidean": False, "l2": True}

STUDY = dict(model=dict(base_channels=16, channel_mult=[1, 2, 2, 4], num_res_blocks=1, latent_channels=32,
                        codebook_size=512, code_dim=8, image_size=128),
             train=dict(steps=300, batch_size=8, crop=64, lr=3e-4, warmup=30, perceptual="none"), eval_size=128)
SMOKE = dict(model=dict(base_channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, latent_channels=8,
                        codebook_size=32, code_dim=4, image_size=64),
             train=dict(steps=6, batch_size=2, crop=32, lr=3e-4, warmup=2, perceptual="none"), eval_size=64)


def train_and_eval(spec: dict, data: str, run_dir: Path, codebook: str, arm: str, seed: int, threads: int,
                   nets: tuple) -> dict:
    from vqtok.tokenizer.eval import evaluate
    from vqtok.tokenizer.model import Tokenizer
    from vqtok.tokenizer.train import TrainConfig, train

    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # an interrupted run restarts from scratch
    model = spec["model"] | {"normalize_codes": CODEBOOKS[codebook], "gradient": arm}
    cfg = TrainConfig(data=data, split="train", out=str(run_dir), model=model, seed=seed, **spec["train"],
                      checkpoint_every=10**9, log_every=10, grid_every=0, workers=0, device="cpu", threads=threads,
                      progress=False)
    t0 = time.time()
    fit = train(cfg)
    train_s = time.time() - t0
    ev = evaluate(Tokenizer.from_pretrained(run_dir), data, split="val", size=spec["eval_size"], batch_size=8,
                  perceptual=nets[0], fd_net=nets[1])
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {"codebook": codebook, "arm": arm, "seed": seed, "train_s": train_s, "final_loss": fit.get("loss"),
           "eval": {k: ev[k] for k in METRICS + ("n_images", "size", "bpp", "codes_used", "seconds")},
           "curve": [{k: c[k] for k in ("step", "usage", "quant_error", "rec")} for c in curve]}
    done.write_text(json.dumps(out) + "\n")
    return out


def step_time_ratio(spec: dict, codebook: str, repeats: int, threads: int) -> dict:
    """Median time of forward+backward on one fixed batch, alternating rotation / STE on the same model."""
    from vqtok.tokenizer.model import Tokenizer, TokenizerConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Tokenizer(TokenizerConfig.from_dict(spec["model"] | {"normalize_codes": CODEBOOKS[codebook]})).train()
    crop, bs = spec["train"]["crop"], spec["train"]["batch_size"]
    x = torch.rand(bs, 3, crop, crop) * 2 - 1
    times: dict[str, list[float]] = {a: [] for a in ARMS}
    for i in range(repeats + 2):
        for arm in (ARMS if i % 2 == 0 else ARMS[::-1]):
            model.quantizer.gradient = arm
            t0 = time.perf_counter()
            recon, aux = model(x)
            ((recon - x).abs().mean() + aux["loss"]).backward()
            dt = time.perf_counter() - t0
            model.zero_grad(set_to_none=True)
            if i >= 2:  # two warm-up rounds
                times[arm].append(dt)
    ratios = [r / s for r, s in zip(times["rotation"], times["ste"])]
    return {"codebook": codebook, "repeats": repeats, "median_rotation_s": statistics.median(times["rotation"]),
            "median_ste_s": statistics.median(times["ste"]), "median_ratio": statistics.median(ratios)}


def summarise(runs: list[dict]) -> dict:
    def ms(v: list[float]) -> dict:
        return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}

    table, paired = {}, {}
    for cb in CODEBOOKS:
        for arm in ARMS:
            sel = [r for r in runs if r["codebook"] == cb and r["arm"] == arm]
            if sel:
                table[f"{cb}/{arm}"] = {m: ms([r["eval"][m] for r in sel]) for m in METRICS
                                        if sel[0]["eval"][m] is not None}
        pairs = [(r, s) for r in runs for s in runs if r["codebook"] == s["codebook"] == cb and r["seed"] == s["seed"]
                 and r["arm"] == "rotation" and s["arm"] == "ste"]
        if pairs:
            paired[cb] = {m: ms([r["eval"][m] - s["eval"][m] for r, s in pairs]) for m in METRICS
                          if pairs[0][0]["eval"][m] is not None}
    return {"per_arm": table, "paired_rotation_minus_ste": paired}


def markdown(summary: dict) -> str:
    fmt = {"usage_pct": ".1f", "perplexity": ".1f", "quant_error": ".4f", "psnr": ".2f", "ssim": ".3f",
           "perceptual": ".3f", "fd_effnet": ".1f"}
    cols = [m for m in METRICS if any(m in v for v in summary["per_arm"].values())]
    lines = ["| codebook / arm | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, row in summary["per_arm"].items():
        n = next(iter(row.values()))["n"]
        lines.append(f"| {name} | {n} | " + " | ".join(
            f"{row[m]['mean']:{fmt[m]}} ± {row[m]['std']:{fmt[m]}}" for m in cols) + " |")
    for cb, row in summary["paired_rotation_minus_ste"].items():
        lines.append(f"| {cb}: rotation − STE (paired) | {next(iter(row.values()))['n']} | " + " | ".join(
            f"{row[m]['mean']:+{fmt[m]}} ± {row[m]['std']:{fmt[m]}}" for m in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cbs = [cb for cb in CODEBOOKS if any(r["codebook"] == cb for r in runs)]
    fig, axes = plt.subplots(2, len(cbs), figsize=(5.5 * len(cbs), 7), squeeze=False)
    for j, cb in enumerate(cbs):
        for i, (key, label) in enumerate((("usage", "codebook usage in the training batch"),
                                           ("quant_error", "quantisation error ‖e − q‖²"))):
            ax = axes[i][j]
            for arm, colour in zip(ARMS, ("tab:blue", "tab:orange")):
                for k, r in enumerate(r for r in runs if r["codebook"] == cb and r["arm"] == arm):
                    scale = 100 if key == "usage" else 1
                    ax.plot([c["step"] for c in r["curve"]], [c[key] * scale for c in r["curve"]], color=colour,
                            alpha=0.7, lw=1, label=arm if k == 0 else None)
            ax.set_title(f"{cb} codes: {label}", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("% of K" if key == "usage" else "mean over positions")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="folder with manifest.tsv (train/val split) or a folder of images "
                   "(default: ../shared/data/photos; with --smoke: tests/fixtures/photos)")
    p.add_argument("--out", default=str(REPO / "runs" / "rotation_vs_ste"), help="run folders (checkpoints, metrics)")
    p.add_argument("--report", default=str(REPO / "docs"), help="where rotation_vs_ste.json / .png go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="override the training steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a shared machine)")
    p.add_argument("--codebooks", nargs="+", choices=list(CODEBOOKS), default=list(CODEBOOKS))
    p.add_argument("--timing-repeats", type=int, default=40, help="step-time rounds (0: skip the measurement)")
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps, one seed (fixture photos)")
    args = p.parse_args(argv)

    from vqtok.tokenizer.perceptual import PerceptualDistance

    spec = json.loads(json.dumps(SMOKE if args.smoke else STUDY))
    if args.steps:
        spec["train"]["steps"] = args.steps
    seeds = args.seeds[:1] if args.smoke else args.seeds
    args.data = args.data or str(REPO / "tests" / "fixtures" / "photos" if args.smoke
                                 else REPO.parent / "shared" / "data" / "photos")
    if not Path(args.data).exists():
        raise SystemExit(f"--data {args.data} does not exist; point it at a folder with manifest.tsv or images")
    torch.set_num_threads(args.threads)
    pdist = PerceptualDistance()
    t0 = time.time()
    repeats = 3 if args.smoke else args.timing_repeats
    timing = [step_time_ratio(spec, cb, repeats, args.threads) for cb in args.codebooks] if repeats else []
    runs = []
    for seed in seeds:  # seed-major: a partial study still holds complete matched pairs
        for cb in args.codebooks:
            for arm in ARMS:
                r = train_and_eval(spec, args.data, Path(args.out) / f"{cb}-{arm}-s{seed}", cb, arm, seed,
                                   args.threads, (pdist, pdist.net))
                runs.append(r)
                print(f"[{time.time() - t0:7.0f}s] {cb:9s} {arm:8s} seed {seed}: "
                      + " ".join(f"{m}={r['eval'][m]:.4g}" for m in METRICS if r["eval"][m] is not None), flush=True)
    summary = summarise(runs)
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    result = {"spec": spec, "data": args.data, "seeds": seeds, "wall_s": time.time() - t0, "threads": args.threads,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "step_time": timing, **summary, "runs": runs}
    (report / "rotation_vs_ste.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, report / "rotation_vs_ste.png")
    print(markdown(summary))
    for t in timing:
        print(f"step time ({t['codebook']}): rotation/STE median ratio {t['median_ratio']:.3f} "
              f"({t['median_rotation_s'] * 1e3:.1f} ms vs {t['median_ste_s'] * 1e3:.1f} ms)")
    print(f"wall time {time.time() - t0:.0f} s; wrote {report / 'rotation_vs_ste.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
