"""Token telemetry: which codes each model hands out, over a sliding window, against its reference histogram.

Why files: LitServe runs the encoders in separate worker processes and `/metrics` is answered by (possibly several)
HTTP processes. Like prometheus_client's multiprocess mode (metrics.py), every worker writes its own file in the
server's metrics directory and readers merge them: `tokens-<model>-<pid>.npy`, an int64 memory map of
`SLOTS + 1` rows × `1 + K` columns. Row r < SLOTS is the time slot `epoch` = ⌊t / SLOT_SECONDS⌋ with
r = epoch mod SLOTS (column 0: its epoch, columns 1..K: code counts); the last row holds all-time counts. A window
of W seconds is the sum of the slots of the last ⌈W / SLOT_SECONDS⌉ epochs, over every file of the model.

Cardinality is bounded: one series per model and statistic, never a label per code; the per-code histogram is
served as JSON by `GET /v1/models/{id}/usage`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from vqtok.export.histogram import js_divergence, load_reference, summary

from .registry import Registry

logger = logging.getLogger("vqtok.server")
SLOT_SECONDS = 10
SLOTS = 360  # the ring covers an hour: the longest window a server can be started with
MAX_WINDOW = SLOT_SECONDS * SLOTS
_PREFIX = "tokens-"
_recorders: dict[str, "_Recorder"] = {}


class _Recorder:
    """One worker's counts for one model (written only by that process)."""

    def __init__(self, directory: str, model: str, codebook_size: int) -> None:
        path = Path(directory) / f"{_PREFIX}{model}-{os.getpid()}.npy"
        mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(SLOTS + 1, 1 + codebook_size))
        # a plain ndarray view of the mapping (which it keeps alive): np.memmap's per-operation subclass hooks
        # were ~10 % of an inference worker's time on the null model
        self.arr = mapped.view(np.ndarray)
        self.arr[:SLOTS, 0] = -1  # no slot holds an epoch yet
        self.arr[SLOTS, 0] = -1
        self.pid = os.getpid()

    def add(self, counts: np.ndarray, now: float) -> None:
        epoch = int(now // SLOT_SECONDS)
        row = self.arr[epoch % SLOTS]
        if row[0] != epoch:  # the slot last held an epoch that has left the ring: reuse it
            row[0] = -1  # readers skip it while it is being cleared
            row[1:] = 0
            row[0] = epoch
        row[1:] += counts
        self.arr[SLOTS, 1:] += counts


def record(directory: str, model: str, codes: np.ndarray, codebook_size: int, now: float | None = None) -> None:
    """Count the codes a worker just produced for `model` (called in the inference worker)."""
    rec = _recorders.get(model)
    if rec is None or rec.pid != os.getpid():  # a forked child must not write its parent's file
        rec = _recorders[model] = _Recorder(directory, model, codebook_size)
    rec.add(np.bincount(np.asarray(codes).ravel(), minlength=codebook_size), time.time() if now is None else now)


def read_counts(directory: str, model: str, codebook_size: int, window: float,
                now: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(counts in the last `window` seconds, all-time counts) of `model`, summed over every worker's file."""
    epoch = int((time.time() if now is None else now) // SLOT_SECONDS)
    oldest = epoch - math.ceil(window / SLOT_SECONDS) + 1
    recent, total = np.zeros(codebook_size, np.int64), np.zeros(codebook_size, np.int64)
    for path in Path(directory).glob(f"{_PREFIX}*.npy"):
        if path.stem[len(_PREFIX):].rpartition("-")[0] != model:
            continue
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # being created by its worker right now: next scrape
            continue
        if arr.shape != (SLOTS + 1, 1 + codebook_size):
            continue
        epochs = np.asarray(arr[:SLOTS, 0])
        recent += np.asarray(arr[:SLOTS][(epochs >= oldest) & (epochs <= epoch), 1:]).sum(0)
        total += np.asarray(arr[SLOTS, 1:])
    return recent, total


class Telemetry:
    """The reader side (HTTP processes): per-model window statistics, drift, and the Prometheus collector."""

    def __init__(self, registry: Registry, directory: str, window: float) -> None:
        if not SLOT_SECONDS <= window <= MAX_WINDOW:
            raise ValueError(f"--telemetry-window must be between {SLOT_SECONDS} and {MAX_WINDOW} seconds, "
                             f"got {window:g}")
        self.registry, self.directory, self.window = registry, directory, float(window)
        self.references: dict[str, np.ndarray | None] = {}
        for mid, entry in registry.models.items():
            self.references[mid] = load_reference(entry.path, entry.codebook_sha256)
            if self.references[mid] is None:
                logger.warning("model %s has no code_histogram.json for its codebook: no drift score (write one "
                               "with `vqtok export MODEL --no-export --histogram DATA`)", mid)

    def usage(self, model: str, now: float | None = None) -> dict:
        """The model's window and all-time histograms with their statistics (the /v1/models/{id}/usage reply)."""
        entry = self.registry.models[model]
        recent, total = read_counts(self.directory, model, entry.codebook_size, self.window, now)
        ref = self.references[model]
        drift = js_divergence(recent, ref) if ref is not None else math.nan
        window = {**summary(recent), "drift_js": None if math.isnan(drift) else drift}  # JSON has no NaN
        return {"model": model, "codebook_size": entry.codebook_size, "codebook_sha256": entry.codebook_sha256,
                "window_seconds": self.window, "slot_seconds": SLOT_SECONDS, "window": window,
                "total": summary(total), "reference_codes": int(ref.sum()) if ref is not None else 0,
                "counts": recent.tolist(), "total_counts": total.tolist()}

    def collect(self):
        """prometheus_client collector protocol: one sample per model and statistic."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fams = {
            "codes": CounterMetricFamily("vqtok_tokens_encoded", "codes produced by the encoder (encode and "
                                         "reconstruct), all time", labels=["model"]),
            "window_codes": GaugeMetricFamily("vqtok_token_window_codes", "codes produced in the sliding window",
                                              labels=["model"]),
            "distinct": GaugeMetricFamily("vqtok_token_window_distinct_codes", "distinct codes in the sliding "
                                          "window", labels=["model"]),
            "perplexity": GaugeMetricFamily("vqtok_token_window_perplexity", "exp(entropy) of the window's code "
                                            "distribution (0 when empty)", labels=["model"]),
            "dead": GaugeMetricFamily("vqtok_token_window_dead_fraction", "fraction of the codebook unseen in the "
                                      "window", labels=["model"]),
            "drift": GaugeMetricFamily("vqtok_token_drift_js", "Jensen-Shannon divergence (bits, 0..1) of the "
                                       "window's codes from the model's code_histogram.json (NaN: no data)",
                                       labels=["model"]),
            "ref": GaugeMetricFamily("vqtok_token_reference_codes", "codes in the reference histogram (0: none, "
                                     "no drift score)", labels=["model"]),
        }
        window = GaugeMetricFamily("vqtok_token_window_seconds", "length of the telemetry sliding window")
        window.add_metric([], self.window)
        for mid in self.registry.models:
            u = self.usage(mid)
            w = u["window"]
            for key, value in (("codes", u["total"]["codes"]), ("window_codes", w["codes"]),
                               ("distinct", w["distinct"]), ("perplexity", w["perplexity"]),
                               ("dead", w["dead_fraction"]), ("drift", math.nan if w["drift_js"] is None else w["drift_js"]), ("ref", u["reference_codes"])):
                fams[key].add_metric([mid], value)
        yield from fams.values()
        yield window
