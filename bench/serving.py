"""Serving: an async httpx load generator against a real `vqtok serve` on loopback, vs raw ONNX Runtime.

    python -m bench.serving [--model DIR|ID] [--concurrency 1 8 32] [--seconds 6]

For each endpoint (encode with npy replies, encode with JSON replies, decode, reconstruct) and concurrency C, C
client coroutines send requests back to back for a bounded time and count; throughput is completed requests over
wall time, latency percentiles are per request. The server batches up to `--max-batch-size` requests, so each cell
is compared with raw ONNX Runtime (`OnnxTokenizer`, same thread count as the server worker) at batch
min(C, max batch size), timed in this process right before and right after the cell (mean of the two). Requests carry a 256² JPEG (encode,
reconstruct) or an .npy code grid (decode), as `server.client` sends them. The server is stopped (its whole session)
however the measurement ends. Peak RSS of the inference workers is read from /proc (VmHWM).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import REPO, bench, cores, percentile, resolve_model

PHOTO = REPO / "tests" / "fixtures" / "photos" / "chelsea.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server process ------------------------------------------------------------------------------------------
class Server:
    """`python -m vqtok serve` on 127.0.0.1:<free port> in its own session; `stop()` kills the whole session."""

    def __init__(self, model_dir: Path, threads: int | None, max_batch_size: int = 8, batch_timeout: float | None = None,
                 device: str = "cpu", log: Path | None = None, extra_args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "vqtok", "serve", "--models-dir", str(model_dir.parent), "--model",
                model_dir.name, "--default-model", model_dir.name, "--host", "127.0.0.1", "--port", str(self.port),
                "--max-batch-size", str(max_batch_size), "--device", device, "--log-level", "warning"]
        if threads:
            args += ["--threads", str(threads)]
        if batch_timeout is not None:
            args += ["--batch-timeout", str(batch_timeout)]
        args += extra_args or []
        self.args = args
        env = {k: v for k, v in os.environ.items() if k not in ("VQTOK_API_KEY", "VQTOK_METRICS_DIR")}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.log = log
        self._out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> "Server":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vqtok serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"vqtok serve not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        if self.log and Path(self.log).exists():
            return Path(self.log).read_text(errors="replace")[-2000:]
        return "(no log)"

    def pids(self) -> list[int]:
        """Every live process of the server's session."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":
                out.append(int(stat.parent.name))
        return out

    def memory(self) -> dict:
        """Peak (VmHWM) and current (VmRSS) resident memory of each server process, in MiB; inference workers are
        the processes that mapped ONNX Runtime, named by endpoint (`vq-encode`, ...: /proc/PID/comm)."""
        procs = []
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            kv = {ln.split(":")[0]: ln.split(":")[1].strip() for ln in status.splitlines() if ":" in ln}
            procs.append({"pid": pid, "name": kv.get("Name", ""), "worker": "onnxruntime" in maps,
                          "peak_rss_mib": int(kv.get("VmHWM", "0 kB").split()[0]) / 1024,
                          "rss_mib": int(kv.get("VmRSS", "0 kB").split()[0]) / 1024})
        workers = [p for p in procs if p["worker"]]
        by_name: dict[str, float] = {}
        for p in workers:
            by_name[p["name"]] = max(by_name.get(p["name"], 0.0), p["peak_rss_mib"])
        return {"processes": procs, "inference_workers": len(workers),
                "worker_peak_rss_mib": max((p["peak_rss_mib"] for p in workers), default=float("nan")),
                "worker_peak_rss_mib_by_name": by_name,
                "total_rss_mib": sum(p["rss_mib"] for p in procs)}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by the inference workers and by the other server processes
        (HTTP front ends, manager)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {"workers": 0.0, "http": 0.0}
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                worker = "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            out["workers" if worker else "http"] += (int(fields[11]) + int(fields[12])) / tick
        return out

    def stop(self, timeout: float = 40.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the session
        except (ProcessLookupError, PermissionError):
            pass
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        if self._out is not subprocess.DEVNULL:
            self._out.close()
        return rc

    def __enter__(self) -> "Server":
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# -- payloads ----------------------------------------------------------------------------------------------------
def test_image(size: int) -> tuple[bytes, np.ndarray]:
    """A real photo centre-cropped to size², as JPEG bytes (what a client uploads) and the uint8 array."""
    from PIL import Image

    img = Image.open(PHOTO).convert("RGB")
    s = min(img.size)
    img = img.crop(((img.width - s) // 2, (img.height - s) // 2, (img.width + s) // 2, (img.height + s) // 2))
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), np.asarray(img)


def requests_for(endpoint: str, jpeg: bytes, codes: np.ndarray) -> tuple[str, dict]:
    """(path, httpx kwargs) of one request, shaped like `server.client` sends it."""
    if endpoint in ("encode-npy", "encode-json", "reconstruct"):
        fmt = {"encode-npy": "npy", "encode-json": "json", "reconstruct": "png"}[endpoint]
        path = "/v1/reconstruct" if endpoint == "reconstruct" else "/v1/encode"
        return path, {"content": jpeg, "headers": {"Content-Type": "image/jpeg"}, "params": {"format": fmt}}
    buf = io.BytesIO()
    np.save(buf, codes.astype(np.int64))
    return "/v1/decode", {"content": buf.getvalue(), "headers": {"Content-Type": "application/x-npy"},
                          "params": {"format": "png"}}


async def _load(url: str, path: str, kw: dict, concurrency: int, max_requests: int, max_s: float,
                warmup: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        async def one() -> tuple[float, int, int]:
            t0 = time.perf_counter()
            try:
                r = await client.post(path, **kw)
            except httpx.TransportError:  # a dropped connection counts as an error, not the end of the run
                return time.perf_counter() - t0, 0, 0
            return time.perf_counter() - t0, r.status_code, len(r.content)

        await asyncio.gather(*(one() for _ in range(warmup)))  # connections up, one batch through
        lat: list[float] = []
        errors, sizes, issued = 0, [], 0
        start = time.perf_counter()
        deadline = start + max_s

        async def worker() -> None:
            nonlocal errors, issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                dt, status, n = await one()
                if status == 200:
                    lat.append(dt)
                    sizes.append(n)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return _summary(lat, errors, wall, sizes)


def _summary(lat: list[float], errors: int, wall: float, sizes: list[int]) -> dict:
    return {"requests": len(lat), "errors": errors, "wall_s": wall, "throughput_rps": len(lat) / wall,
            "p50_ms": 1e3 * percentile(lat, 50), "p95_ms": 1e3 * percentile(lat, 95),
            "p99_ms": 1e3 * percentile(lat, 99), "mean_ms": 1e3 * float(np.mean(lat)) if lat else float("nan"),
            "reply_bytes": int(np.median(sizes)) if sizes else 0, "_lat": lat, "_sizes": sizes}


def _load_proc(args: tuple) -> dict:
    url, path, kw, concurrency, max_requests, max_s = args
    return asyncio.run(_load(url, path, kw, concurrency, max_requests, max_s, warmup=min(concurrency, 8)))


def load(url: str, endpoint: str, jpeg: bytes, codes: np.ndarray, concurrency: int, max_requests: int = 400,
         max_s: float = 6.0, procs: int = 1) -> dict:
    """C client coroutines; with `procs` > 1 they are spread over that many processes (one Python client tops out
    at a few hundred requests/s, which a GPU server outruns), and the counts and latencies are pooled."""
    path, kw = requests_for(endpoint, jpeg, codes)
    procs = max(1, min(procs, concurrency))
    if procs == 1:
        out = _load_proc((url, path, kw, concurrency, max_requests, max_s))
    else:
        import multiprocessing as mp

        shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
        jobs = [(url, path, kw, c, max(1, max_requests * c // concurrency), max_s) for c in shares]
        with mp.get_context("spawn").Pool(procs) as pool:
            parts = pool.map(_load_proc, jobs)
        lat = [x for p in parts for x in p["_lat"]]
        out = _summary(lat, sum(p["errors"] for p in parts), max(p["wall_s"] for p in parts),
                       [x for p in parts for x in p["_sizes"]])
        out["client_processes"] = procs
    out.pop("_lat"), out.pop("_sizes")
    return out


def raw_fns(tok, image: np.ndarray, codes: np.ndarray, batch: int) -> dict:
    """Raw ONNX Runtime calls matching each endpoint's model work at a batch size (no HTTP, no image codecs)."""
    images = np.ascontiguousarray(np.broadcast_to(image, (batch, *image.shape)))
    grids = np.ascontiguousarray(np.broadcast_to(codes.astype(np.int32), (batch, *codes.shape)))
    return {"encode": lambda: tok.encode_array(images), "decode": lambda: tok.decode(grids),
            "reconstruct": lambda: tok.decode(tok.encode_array(images))}


def _cells(server: "Server", tok, image: np.ndarray, jpeg: bytes, codes: np.ndarray, cells: list[tuple[str, int]],
           raw_cache: dict, raw_threads: int, seconds: float, max_requests: int, max_batch_size: int, raw_s: float,
           label: str = "", client_procs: int = 1) -> list[dict]:
    rows = []
    for endpoint, c in cells:
        graph = endpoint.split("-")[0]
        b = min(c, max_batch_size)
        fn = raw_fns(tok, image, codes, b)[graph]
        # raw ORT at the batch the server forms, timed right before and right after the cell (mean of the two
        # medians): background load that drifts during the cell hits both sides alike
        before = bench(fn, max_reps=10, max_s=raw_s, min_reps=2, warmup=0 if (graph, b) in raw_cache else 1)
        raw_cache[(graph, b)] = True
        cpu0, own0 = server.cpu_seconds(), time.process_time()
        cell = load(server.url, endpoint, jpeg, codes, c, max_requests, seconds, procs=client_procs)
        cpu1, own1 = server.cpu_seconds(), time.process_time()
        n = max(1, cell["requests"] + cell["errors"] + min(c, 8))  # measured requests + the warm-up batch
        cell["cpu_ms_per_request"] = {"inference_workers": 1e3 * (cpu1["workers"] - cpu0["workers"]) / n,
                                      "server_http": 1e3 * (cpu1["http"] - cpu0["http"]) / n,
                                      "load_generator": 1e3 * (own1 - own0) / n if client_procs == 1 else None}
        after = bench(fn, max_reps=10, max_s=raw_s, min_reps=2, warmup=0)
        sec = (before.median + after.median) / 2
        raw = {"batch": b, "images_per_s": b / sec, "ms_per_batch": 1e3 * sec, "threads": raw_threads,
               "before_ms": 1e3 * before.median, "after_ms": 1e3 * after.median,
               "n": len(before.times) + len(after.times)}
        cell |= {"endpoint": endpoint, "concurrency": c, "raw": raw,
                 "served_over_raw": cell["throughput_rps"] / raw["images_per_s"],
                 "p50_minus_raw_batch_ms": cell["p50_ms"] - raw["ms_per_batch"]}
        if label:
            cell["server"] = label
        rows.append(cell)
        print(f"  serve{' [' + label + ']' if label else ''} {endpoint:12s} c={c:<3d} {cell['throughput_rps']:7.2f} "
              f"req/s (raw b={b}: {raw['images_per_s']:.2f} img/s, ratio {cell['served_over_raw']:.3f}) "
              f"p50 {cell['p50_ms']:.1f} p95 {cell['p95_ms']:.1f} p99 {cell['p99_ms']:.1f} ms "
              f"[{cell['requests']} req, {cell['errors']} err]", flush=True)
    return rows


def serving(model_dir: Path, concurrency: list[int], endpoints: list[str], seconds: float = 6.0,
            max_requests: int = 400, threads: int | None = None, max_batch_size: int = 8,
            batch_timeout: float | None = None, device: str = "cpu", log: Path | None = None,
            raw_s: float = 3.0, variants: list[dict] | None = None, client_procs: int = 1,
            server_threads: int | None = None) -> dict:
    """The main grid (every endpoint × concurrency) on one server, then optional `variants`: other server settings
    ({"label", "threads" (None: the server's default), "batch_timeout", "args": [extra `vqtok serve` flags],
    "cells": [(endpoint, C), ...]}) measured
    the same way, for the "why" behind a number (e.g. the batching window at concurrency 1)."""
    from vqtok.export.runtime import OnnxTokenizer
    from vqtok.server.app import default_batch_timeout

    threads = threads or cores()
    tok = OnnxTokenizer.from_pretrained(model_dir, device=device, threads=threads)
    size = tok.metadata.image_size
    jpeg, image = test_image(size)
    codes = tok.encode_array(image[None])[0]
    raw_cache: dict[tuple[str, int], bool] = {}  # (graph, batch) already warm
    t_start = time.perf_counter()
    # the server's own default on GPUs (its CPU threads only run the few CPU-placed nodes)
    srv_threads = server_threads if server_threads is not None else (None if device == "cuda" else threads)
    server = Server(model_dir, srv_threads, max_batch_size, batch_timeout, device, log)
    with server:
        startup_s = time.perf_counter() - t_start
        rows = _cells(server, tok, image, jpeg, codes, [(e, c) for e in endpoints for c in concurrency], raw_cache,
                      threads, seconds, max_requests, max_batch_size, raw_s, client_procs=client_procs)
        mem = server.memory()
    out = {"model_dir": str(model_dir), "threads": threads, "max_batch_size": max_batch_size,
           "batch_timeout_s": batch_timeout if batch_timeout is not None else default_batch_timeout(device),
           "device": device,
           "server_command": " ".join(server.args[1:]), "startup_s": startup_s, "image_size": size,
           "upload_bytes": len(jpeg), "rows": rows, "memory": mem, "variants": []}
    for v in variants or []:
        vs = Server(model_dir, v.get("threads"), max_batch_size, v.get("batch_timeout"), device, log,
                    extra_args=v.get("args"))
        with vs:
            vrows = _cells(vs, tok, image, jpeg, codes, [tuple(c) for c in v["cells"]], raw_cache, threads, seconds,
                           max_requests, max_batch_size, raw_s, label=v["label"], client_procs=client_procs)
        out["variants"].append({"label": v["label"], "server_command": " ".join(vs.args[1:]), "rows": vrows})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--endpoints", nargs="+", default=["encode-npy", "encode-json", "decode", "reconstruct"])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--batch-timeout", type=float)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    d, _ = resolve_model(args.model)
    out = serving(d, args.concurrency, args.endpoints, args.seconds, threads=args.threads,
                  batch_timeout=args.batch_timeout, device=args.device)
    print(json.dumps(out["memory"], indent=1))
    return out


if __name__ == "__main__":
    main()
