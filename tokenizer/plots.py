"""PNG plots of training and evaluation (matplotlib, Agg: no display needed), and the evaluation's index.html.

`plot_training(metrics.jsonl, png)`: losses, codebook usage and perplexity, quantisation error and learning rate
over steps (`vqtok train` redraws it at every checkpoint and at the end). `plot_code_usage` (sorted code
frequencies, log scale), `plot_psnr` (per-image PSNR distribution) and `write_index` are used by `vqtok eval`.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

LOSSES = ("loss", "rec", "perceptual", "commit_codebook", "g_loss", "d_loss")


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure  # a Figure without pyplot renders with Agg and touches no global state

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a training metrics.jsonl (a torn last line, from a run killed mid-write, is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_training(metrics_path: str | Path, out: str | Path) -> Path | None:
    """Training curves from metrics.jsonl → PNG at `out`; None when there is nothing to plot yet."""
    rows = [r for r in read_metrics(metrics_path) if "step" in r]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])

    def series(key: str) -> np.ndarray:
        return np.array([r.get(key, math.nan) for r in rows], dtype=float)

    fig, ax = _figure(2, 2, (11, 7))
    a = ax[0, 0]
    for key in LOSSES:
        v = series(key)
        if np.isfinite(v).any() and np.nanmax(np.abs(v)) > 0:  # a loss that never switched on is left out
            a.plot(steps, v, label=key, lw=1)
    a.set(title="losses", xlabel="step")
    a.legend(fontsize=8, loc="upper right")
    a = ax[0, 1]
    a.plot(steps, 100 * series("usage"), color="tab:blue", lw=1)
    a.set(title="codebook usage (batch) and perplexity", xlabel="step", ylabel="usage, % of K")
    a.tick_params(axis="y", labelcolor="tab:blue")
    b = a.twinx()
    b.plot(steps, series("perplexity"), color="tab:orange", lw=1)
    b.set_ylabel("perplexity", color="tab:orange")
    b.tick_params(axis="y", labelcolor="tab:orange")
    ax[1, 0].plot(steps, series("quant_error"), color="tab:red", lw=1)
    ax[1, 0].set(title="quantisation error ‖e − q‖²", xlabel="step")
    ax[1, 1].plot(steps, series("lr"), color="tab:green", lw=1)
    ax[1, 1].set(title="learning rate", xlabel="step")
    fig.suptitle(f"training, step {int(steps[-1])}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_code_usage(counts: np.ndarray, out: str | Path) -> Path:
    """Code frequencies sorted from most to least used, log scale (unused codes listed in the title)."""
    counts = np.asarray(counts)
    freq = np.sort(counts)[::-1] / max(1, counts.sum())
    used = int((counts > 0).sum())
    fig, ax = _figure(1, 1, (8, 4))
    a = ax[0, 0]
    a.bar(np.arange(used), freq[:used], width=1.0, color="tab:blue")
    a.axhline(1 / len(counts), color="grey", ls="--", lw=1, label="uniform 1/K")
    a.set_yscale("log")
    a.set(xlim=(0, len(counts)), xlabel="code rank", ylabel="frequency",
          title=f"codebook usage: {used} of {len(counts)} codes used, {len(counts) - used} never")
    a.legend(fontsize=8, loc="upper right")
    fig.savefig(out)
    return Path(out)


def plot_psnr(values: list[float], out: str | Path) -> Path:
    """Histogram of per-image PSNR (identical images, PSNR = inf, are counted in the title)."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    fig, ax = _figure(1, 1, (8, 4))
    a = ax[0, 0]
    if finite.size:
        a.hist(finite, bins=min(30, max(5, finite.size // 2)), color="tab:green", edgecolor="white")
        a.axvline(finite.mean(), color="black", ls="--", lw=1, label=f"mean {finite.mean():.2f} dB")
        a.legend(fontsize=8, loc="upper right")
    extra = f", {v.size - finite.size} identical (inf)" if v.size > finite.size else ""
    a.set(xlabel="PSNR (dB)", ylabel="images", title=f"per-image PSNR, {v.size} images{extra}")
    fig.savefig(out)
    return Path(out)


def write_index(result: dict, files: dict[str, Path], out: str | Path, summary_keys: tuple[str, ...]) -> Path:
    """`index.html` beside the reports: the summary table, the plots, the worst/best grid and per-image scores."""
    out = Path(out)
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(result[k])}</td></tr>" for k in summary_keys)
    images = "".join(f'<figure><img src="{e(files[k].name)}" alt="{e(title)}"><figcaption>{e(title)}</figcaption>'
                     f"</figure>" for k, title in (("usage_png", "codebook usage (sorted frequencies)"),
                                                   ("psnr_png", "per-image PSNR"),
                                                   ("grid", "worst (top) and best (bottom): input | reconstruction"))
                     if k in files)
    per = sorted(result["per_image"], key=lambda m: m["psnr"])
    table = "".join(f"<tr><td>{e(Path(m['file']).name)}</td><td>{_fmt(m['psnr'])}</td><td>{_fmt(m['ssim'])}</td>"
                    f"</tr>" for m in per)
    links = " · ".join(f'<a href="{e(p.name)}">{e(p.name)}</a>' for k, p in files.items() if k in ("json", "md"))
    out.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vqtok eval: {e(str(result['model']))}</title>
<style>body{{font:14px system-ui,sans-serif;margin:20px;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}img{{max-width:100%;border:1px solid #ddd}}
figure{{margin:14px 0}}figcaption{{color:#666}}</style></head><body>
<h1>Evaluation of <code>{e(str(result['model']))}</code></h1>
<p>{e(str(result['data']))}, split {e(str(result['split']))}: {result['n_images']} images at {result['size']}²
(<code>resize</code>), K = {result['codebook_size']}, f = {result['factor']}. Files: {links}</p>
<table><tr><th>metric</th><th>value</th></tr>{rows}</table>
{images}
<h2>Per image (worst first)</h2>
<table><tr><th>file</th><th>PSNR (dB)</th><th>SSIM</th></tr>{table}</table>
</body></html>
""")
    return out


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))
