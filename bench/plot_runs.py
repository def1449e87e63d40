"""Loss and codebook curves of training runs, from their metrics.jsonl, as one PNG (matplotlib).

    python -m bench.plot_runs RUN_DIR[=LABEL]... --out docs/img/curves.png [--keys rec perceptual usage quant_error]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

DEFAULT_KEYS = ("rec", "perceptual", "usage", "perplexity", "quant_error", "loss")


def load(run: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def plot(runs: dict[str, list[dict]], keys: tuple[str, ...], out: Path, title: str = "") -> Path:
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, recs in runs.items():
            pts = [(r["step"], r[key]) for r in recs if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="run folders, optionally RUN=LABEL")
    ap.add_argument("--out", required=True)
    ap.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS))
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    runs = {}
    for item in args.runs:
        path, _, label = item.partition("=")
        runs[label or Path(path).name] = load(path)
    print(plot(runs, tuple(args.keys), Path(args.out), args.title))


if __name__ == "__main__":
    main()
