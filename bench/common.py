"""Shared helpers of the benchmark suite: the machine, the model under test, bounded timing loops.

Every timing loop here is bounded twice, by a repetition count and by wall time, so a slow or loaded machine makes
the suite less precise, never longer than its budget. Comparisons (A vs B) interleave A and B so background load
hits both alike; the suite reports ratios of medians taken in the same run.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
DOC = REPO / "docs" / "BENCHMARKS.md"
CACHE = Path(os.environ.get("VQTOK_BENCH_CACHE", Path.home() / ".cache" / "vqtok-bench"))
TRAINING_PATTERN = "vqtok train /work/shared"  # the priority job whose presence invalidates measurements


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cores": cores(), "cpu": platform.processor() or ""}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
                        if f in flags.split()]
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
        info["load_avg_at_start"] = list(os.getloadavg())
    except (OSError, StopIteration):
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def other_load(pattern: str = TRAINING_PATTERN) -> list[str]:
    """Command lines of running processes that match `pattern` (the priority training job)."""
    try:
        out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    me = os.getpid()
    return [ln for ln in out.splitlines() if ln and int(ln.split()[0]) != me and "pgrep" not in ln]


# -- timing ------------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def best(self) -> float:
        return min(self.times) if self.times else float("nan")

    def as_dict(self) -> dict:
        return {"n": len(self.times), "median_s": self.median, "min_s": self.best,
                "max_s": max(self.times) if self.times else float("nan")}


def bench(fn: Callable[[], object], *, max_reps: int = 20, max_s: float = 5.0, min_reps: int = 2,
          warmup: int = 1) -> Timing:
    """Time `fn` after `warmup` calls: at least `min_reps`, at most `max_reps`, stopping after `max_s` seconds."""
    for _ in range(warmup):
        fn()
    t = Timing()
    start = time.perf_counter()
    while len(t.times) < max_reps and (len(t.times) < min_reps or time.perf_counter() - start < max_s):
        t0 = time.perf_counter()
        fn()
        t.times.append(time.perf_counter() - t0)
    return t


def interleaved(fns: dict[str, Callable[[], object]], *, max_rounds: int = 20, max_s: float = 10.0,
                min_rounds: int = 2, warmup: int = 1, settle_s: float = 0.05) -> dict[str, Timing]:
    """Time several functions in alternating rounds (A B C, C B A, ...): same background load for each.

    `settle_s` (untimed) before each call lets the previous engine's worker threads stop spinning (torch's OpenMP
    pool and every ONNX Runtime session pool spin-wait after a run; on a 2-core machine they would steal the next
    engine's cores)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out = {n: Timing() for n in names}
    start, r = time.perf_counter(), 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() - start < max_s):
        for n in names if r % 2 == 0 else names[::-1]:
            if settle_s:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            fns[n]()
            out[n].times.append(time.perf_counter() - t0)
        r += 1
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# -- the model under test ----------------------------------------------------------------------------------------
def default_model_dir() -> Path | None:
    """The shipped default model when its graphs are there."""
    from vqtok.tokenizer.hub import DEFAULT_MODEL, WEIGHTS_DIR

    d = WEIGHTS_DIR / DEFAULT_MODEL
    return d if all((d / n).is_file() for n in _model_files()) else None


def _model_files() -> tuple[str, ...]:
    from vqtok.tokenizer.contract import CONFIG_FILE, WEIGHTS_FILE, graph_files

    return (CONFIG_FILE, WEIGHTS_FILE, *graph_files())


def random_default_model(cache: Path = CACHE) -> Path:
    """A random-init model of the shipped default config, exported like `vqtok export` (speed does not depend on
    the weight values). Built once and cached."""
    from vqtok.tokenizer.hub import DEFAULT_MODEL

    d = cache / f"{DEFAULT_MODEL}-random-init"
    if all((d / n).is_file() for n in _model_files()):
        return d
    import torch

    from vqtok.export.onnx import export_model
    from vqtok.tokenizer.model import Tokenizer, TokenizerConfig

    torch.manual_seed(0)
    model = Tokenizer(TokenizerConfig(model_id=f"{DEFAULT_MODEL}-random-init")).eval()
    tmp = d.with_name(d.name + ".tmp")
    model.save_pretrained(tmp)
    export_model(model, tmp)
    if d.exists():
        import shutil

        shutil.rmtree(d)
    tmp.rename(d)
    return d


def resolve_model(spec: str | None) -> tuple[Path, str]:
    """(model folder, how it was chosen): an explicit folder/id, else the shipped default, else a random-init copy
    of the default config."""
    if spec:
        from vqtok.tokenizer.hub import resolve_model_dir

        return resolve_model_dir(spec), "given"
    shipped = default_model_dir()
    if shipped is not None:
        return shipped, "shipped default"
    return random_default_model(), "random-init default config (shipped weights not present)"


def session_options(level: str = "all", threads: int | None = None, spinning: bool = True):
    """ONNX Runtime session options for the benchmark's own sessions (optimisation level, threads, spinning)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so
