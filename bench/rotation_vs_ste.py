"""Rotation trick vs straight-through estimator: matched pairs that differ only in `gradient`.

    nice -n 10 python -m bench.rotation_vs_ste                 # the real study on ../shared/data/photos
    python -m bench.rotation_vs_ste --smoke --out /tmp/smoke   # seconds, on the fixture photos (CI)

A grid over quantizer settings (tokenizer.quantizer.QUANTIZER_PRESETS: vqtok, taming, paper-vqvae) × codebook type
(euclidean, l2-normalised) × seed; in each cell two runs share init, seed, data order, steps and hyper-parameters
(tokenizer.train seeds before building the model; data order is seeded per sample) and differ only in
`model.gradient`. Each run is evaluated on the val split with tokenizer.eval.evaluate. Writes, into --report:
rotation_vs_ste.json (every run, the per-arm mean ± std, the paired differences, the step-time ratio) and
rotation_vs_ste.png (training-batch usage, relative quantisation error and L1 loss over steps). Finished runs are
reused on a rerun, so several processes may share one --out (e.g. one per seed) and a last call writes the report.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from vqtok.tokenizer.quantizer import QUANTIZER_PRESETS, quantizer_preset

REPO = Path(__file__).resolve().parent.parent
METRICS = ("usage_pct", "perplexity", "quant_error", "quant_error_ratio", "psnr", "ssim", "perceptual",
           "fd_effnet")
ARMS = ("rotation", "ste")
CODEBOOKS = {"euclidean": False, "l2": True}
SETTINGS = tuple(QUANTIZER_PRESETS)

STUDY = dict(model=dict(base_channels=16, channel_mult=[1, 2, 2, 4], num_res_blocks=1, latent_channels=32,
                        codebook_size=512, code_dim=8, image_size=128),
             train=dict(steps=2000, batch_size=8, crop=64, lr=3e-4, warmup=30, perceptual="none"), eval_size=128)
SMOKE = dict(model=dict(base_channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, latent_channels=8,
                        codebook_size=32, code_dim=4, image_size=64),
             train=dict(steps=6, batch_size=2, crop=32, lr=3e-4, warmup=2, perceptual="none"), eval_size=64)


def train_and_eval(spec: dict, data: str, run_dir: Path, settings: str, codebook: str, arm: str, seed: int,
                   threads: int, nets: tuple, device: str = "cpu") -> dict:
    from vqtok.tokenizer.eval import evaluate
    from vqtok.tokenizer.model import Tokenizer
    from vqtok.tokenizer.train import TrainConfig, train

    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # an interrupted run restarts from scratch
    model = spec["model"] | quantizer_preset(settings) | {"normalize_codes": CODEBOOKS[codebook], "gradient": arm}
    cfg = TrainConfig(data=data, split="train", out=str(run_dir), model=model, seed=seed, **spec["train"],
                      checkpoint_every=10**9, log_every=10, grid_every=0, workers=0, device=device, threads=threads,
                      progress=False)
    t0 = time.time()
    fit = train(cfg)
    train_s = time.time() - t0
    ev = evaluate(Tokenizer.from_pretrained(run_dir).to(fit_device(device)), data, split="val",
                  size=spec["eval_size"], batch_size=8, perceptual=nets[0], fd_net=nets[1])
    curve = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {"settings": settings, "codebook": codebook, "arm": arm, "seed": seed, "train_s": train_s,
           "final_loss": fit.get("loss"),
           "eval": {k: ev[k] for k in METRICS + ("n_images", "size", "bpp", "codes_used", "seconds")},
           "curve": [{k: c[k] for k in ("step", "usage", "quant_error", "e_sq", "rec")} for c in curve]}
    done.write_text(json.dumps(out) + "\n")
    return out


def fit_device(device: str) -> str:
    """The device tokenizer.train's `device` option resolves to (single process)."""
    return "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)


def step_time_ratio(spec: dict, codebook: str, repeats: int, threads: int, settings: str | None = None) -> dict:
    """Median time of forward+backward on one fixed batch, alternating rotation / STE on the same model.

    `settings`: a quantizer preset laid over spec["model"] (None: the model config's own quantizer fields)."""
    from vqtok.tokenizer.model import Tokenizer, TokenizerConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = spec["model"] | (quantizer_preset(settings) if settings else {}) | {"normalize_codes": CODEBOOKS[codebook]}
    model = Tokenizer(TokenizerConfig.from_dict(cfg)).train()
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
    return {"settings": settings, "codebook": codebook, "repeats": repeats,
            "median_rotation_s": statistics.median(times["rotation"]),
            "median_ste_s": statistics.median(times["ste"]), "median_ratio": statistics.median(ratios)}


def cell(run: dict) -> str:
    """The grid cell a run belongs to: quantizer settings / codebook type (runs before the grid: vqtok)."""
    return f"{run.get('settings', 'vqtok')}/{run['codebook']}"


def summarise(runs: list[dict]) -> dict:
    def ms(v: list[float]) -> dict:
        return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}

    def metrics(ev: dict) -> list[str]:
        return [m for m in METRICS if ev.get(m) is not None]

    table, paired = {}, {}
    for c in dict.fromkeys(cell(r) for r in runs):
        for arm in ARMS:
            sel = [r for r in runs if cell(r) == c and r["arm"] == arm]
            if sel:
                table[f"{c}/{arm}"] = {m: ms([r["eval"][m] for r in sel]) for m in metrics(sel[0]["eval"])}
        pairs = [(r, s) for r in runs for s in runs if cell(r) == cell(s) == c and r["seed"] == s["seed"]
                 and r["arm"] == "rotation" and s["arm"] == "ste"]
        if pairs:
            paired[c] = {m: ms([r["eval"][m] - s["eval"][m] for r, s in pairs]) for m in metrics(pairs[0][0]["eval"])}
    return {"per_arm": table, "paired_rotation_minus_ste": paired}


FMT = {"usage_pct": ".1f", "perplexity": ".1f", "quant_error": ".4f", "quant_error_ratio": ".3f",
       "psnr": ".2f", "ssim": ".3f", "perceptual": ".3f", "fd_effnet": ".1f"}


def markdown(summary: dict) -> str:
    cols = [m for m in METRICS if any(m in v for v in summary["per_arm"].values())]
    lines = ["| settings / codebook / arm | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, row in summary["per_arm"].items():
        n = next(iter(row.values()))["n"]
        lines.append(f"| {name} | {n} | " + " | ".join(
            f"{row[m]['mean']:{FMT[m]}} ± {row[m]['std']:{FMT[m]}}" if m in row else "–" for m in cols) + " |")
    for c, row in summary["paired_rotation_minus_ste"].items():
        lines.append(f"| **{c}: rotation − STE** | {next(iter(row.values()))['n']} pairs | " + " | ".join(
            f"{row[m]['mean']:+{FMT[m]}} ± {row[m]['std']:{FMT[m]}}" if m in row else "–" for m in cols) + " |")
    return "\n".join(lines) + "\n"


CURVES = (("usage", "usage in the training batch", "% of K"),
          ("quant_error_ratio", "‖e − q‖² / ‖e‖² (batch means)", "ratio"),
          ("rec", "L1 reconstruction loss", "L1"))


def _curve(c: dict, key: str) -> float:
    if key == "usage":
        return 100 * c["usage"]
    if key == "quant_error_ratio":
        return c["quant_error"] / max(c.get("e_sq", 1.0), 1e-12)
    return c[key]


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(cell(r) for r in runs))
    fig, axes = plt.subplots(len(CURVES), len(cells), figsize=(4.6 * len(cells), 3.2 * len(CURVES)), squeeze=False)
    for j, c in enumerate(cells):
        for i, (key, label, unit) in enumerate(CURVES):
            ax = axes[i][j]
            for arm, colour in zip(ARMS, ("tab:blue", "tab:orange")):
                for k, r in enumerate(r for r in runs if cell(r) == c and r["arm"] == arm):
                    ax.plot([p["step"] for p in r["curve"]], [_curve(p, key) for p in r["curve"]], color=colour,
                            alpha=0.6, lw=0.8, label=arm if k == 0 else None)
            ax.set_title(f"{c}: {label}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(unit)
            if key != "usage":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def read_curves(out: Path) -> list[dict]:
    """The training curves (metrics.jsonl) of every run folder under `out`, finished or still running."""
    runs = []
    for d in sorted(out.iterdir()) if out.is_dir() else []:
        m = re.fullmatch(r"(.+)-(" + "|".join(CODEBOOKS) + r")-(" + "|".join(ARMS) + r")-s(\d+)", d.name)
        lines = (d / "metrics.jsonl").read_text().splitlines() if (d / "metrics.jsonl").is_file() else []
        curve = [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is skipped
        if m and curve:
            runs.append({"settings": m[1], "codebook": m[2], "arm": m[3], "seed": int(m[4]),
                         "curve": [{k: c[k] for k in ("step", "usage", "quant_error", "e_sq", "rec")} for c in curve]})
    return runs


def curve_table(runs: list[dict], window: int = 5) -> tuple[str, dict]:
    """Training-batch metrics of matched pairs at the last step both runs of the pair reached (mean of the last
    `window` logged points up to it), per cell and arm, and the paired differences; for runs still training."""
    keys = ("usage", "quant_error_ratio", "rec")
    by_pair: dict[tuple, dict] = {}
    for r in runs:
        by_pair.setdefault((cell(r), r["seed"]), {})[r["arm"]] = r
    rows: dict[str, dict] = {}
    for (c, seed), arms in sorted(by_pair.items()):
        if set(arms) != set(ARMS):
            continue
        step = min(a["curve"][-1]["step"] for a in arms.values())
        vals = {}
        for arm, r in arms.items():
            pts = [p for p in r["curve"] if p["step"] <= step][-window:]
            vals[arm] = {k: statistics.fmean(_curve(p, k) for p in pts) for k in keys}
        rows[f"{c} s{seed}"] = {"step": step, **vals, "diff": {k: vals["rotation"][k] - vals["ste"][k] for k in keys}}
    lines = ["| cell, seed | step | usage % rot / STE | ‖e−q‖²/‖e‖² rot / STE | L1 rot / STE |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['step']} | " + " | ".join(
            f"{row['rotation'][k]:{f}} / {row['ste'][k]:{f}}" for k, f in zip(keys, (".1f", ".3f", ".4f"))) + " |")
    return "\n".join(lines) + "\n", rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="folder with manifest.tsv (train/val split) or a folder of images "
                   "(default: ../shared/data/photos; with --smoke: tests/fixtures/photos)")
    p.add_argument("--out", default=str(REPO / "runs" / "rotation_vs_ste"), help="run folders (checkpoints, metrics)")
    p.add_argument("--report", default=str(REPO / "docs"), help="where rotation_vs_ste.json / .png go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="override the training steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a shared machine)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS),
                   help="quantizer settings (tokenizer.quantizer.QUANTIZER_PRESETS)")
    p.add_argument("--codebooks", nargs="+", choices=list(CODEBOOKS), default=["euclidean"])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="run only these arms (e.g. one process per arm, so that both arms of a pair progress together)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (training in bf16 autocast on cuda, as "
                   "tokenizer.train does; the quantizer stays fp32)")
    p.add_argument("--timing-repeats", type=int, default=40, help="step-time rounds (0: skip the measurement)")
    p.add_argument("--no-report", action="store_true", help="train and evaluate only (another call writes the report)")
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps, one seed (fixture photos)")
    p.add_argument("--curves", action="store_true", help="no training: table and plot of the training curves of the "
                   "runs under --out so far (finished or not), compared at the step both runs of a pair reached")
    args = p.parse_args(argv)
    if args.curves:
        runs = read_curves(Path(args.out))
        table, rows = curve_table(runs)
        report = Path(args.report)
        report.mkdir(parents=True, exist_ok=True)
        (report / "rotation_vs_ste_curves.json").write_text(json.dumps({"pairs": rows, "runs": runs}) + "\n")
        plot(runs, report / "rotation_vs_ste.png")
        print(table)
        return 0

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
    # One measurement per codebook type: the settings change the loss weights, not the cost of the two estimators.
    timing = [step_time_ratio(spec, cb, repeats, args.threads, args.settings[0]) for cb in args.codebooks] \
        if repeats else []
    runs = []
    for seed in seeds:  # seed-major: a partial study still holds complete matched pairs
        for settings in args.settings:
            for cb in args.codebooks:
                for arm in args.arms:
                    r = train_and_eval(spec, args.data, Path(args.out) / f"{settings}-{cb}-{arm}-s{seed}", settings,
                                       cb, arm, seed, args.threads, (pdist, pdist.net), args.device)
                    runs.append(r)
                    print(f"[{time.time() - t0:7.0f}s] {settings:11s} {cb:9s} {arm:8s} seed {seed}: "
                          + " ".join(f"{m}={r['eval'][m]:.4g}" for m in METRICS if r["eval"].get(m) is not None),
                          flush=True)
    if args.no_report:
        return 0
    summary = summarise(runs)
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    result = {"spec": spec, "data": args.data, "seeds": seeds,
              "settings": {s: quantizer_preset(s) for s in args.settings},
              "wall_s": time.time() - t0, "threads": args.threads,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "step_time": timing, **summary, "runs": runs}
    (report / "rotation_vs_ste.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, report / "rotation_vs_ste.png")
    print(markdown(summary))
    for t in timing:
        print(f"step time ({t['settings']}/{t['codebook']}): rotation/STE median ratio {t['median_ratio']:.3f} "
              f"({t['median_rotation_s'] * 1e3:.1f} ms vs {t['median_ste_s'] * 1e3:.1f} ms)")
    print(f"wall time {time.time() - t0:.0f} s; wrote {report / 'rotation_vs_ste.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
