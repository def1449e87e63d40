"""Serving overhead with a null model: what `vqtok serve` costs per request beyond inference, against an anchor.

    python -m bench.overhead [--configs litserve default] [--rounds 2] [--seconds 5] [--client wrk]

The model is bench/null_model.py's (a real tokenizer's I/O contract, almost no compute), so every CPU-millisecond
measured is serving work. Each configuration is a real server on loopback: `anchor` is bench/anchor.py under
uvicorn (the same edge parsing, preprocessing, ONNX Runtime call and replies in-process, no queue) with one process
per core; the others are `vqtok serve` with the flags in SERVE_CONFIGS. Cells: encode (a 256² JPEG upload, JSON
codes back), decode to PNG and decode to a raw uint8 .npy image, at each concurrency. Per cell: requests/s, p50/p99
latency, and CPU-ms per request of each server role (from /proc: `http` the uvicorn processes, `queue` LitServe's
multiprocessing manager, `worker` the inference worker(s), `main` the serving process) and of the load generator
(bench/wrk.py when wrk is installed: the Python client costs as much CPU as the server it loads). Configurations
run in interleaved rounds (A B C A B C), and every ratio to the anchor is taken within one round, so that load that
drifts on a shared machine hits neighbouring measurements alike.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import wrk
from .common import REPO, RESULTS_DIR, machine, now_utc
from .serving import Server, _load, free_port, test_image

SERVE_CONFIGS: dict[str, list[str]] = {  # `vqtok serve` flags of each configuration
    "default": [],  # today's defaults
    # the defaults before 2026-12-02: LitServe's manager queues, one HTTP process, a 2 ms batch window, ORT spinning
    "litserve": ["--queue", "litserve", "--api-servers", "1", "--batch-timeout", "0.002", "--ort-spin"],
    "polling": ["--queue", "litserve", "--api-servers", "1", "--batch-timeout", "0.002", "--ort-spin",
                "--polling-loop"],  # and LitServe's own batch loop (the defaults before 2026-12-01)
    # one of today's defaults reverted at a time (A/B)
    "litserve-queue": ["--queue", "litserve"],
    "api-servers-1": ["--api-servers", "1"],
    "batch-2ms": ["--batch-timeout", "0.002"],
    "ort-spin": ["--ort-spin"],
    "png-in-worker": ["--png-in-worker"],
    "no-shm": ["--shared-slots", "0"],  # request images pickled through the worker's socket
}
ANCHOR_PROCS = 2  # uvicorn processes of the anchor: one per core of the dev machine


class AnchorServer(Server):
    """bench/anchor.py under uvicorn with `procs` worker processes (same stop/pids/cpu helpers as `Server`)."""

    def __init__(self, model_dir: Path, procs: int, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "uvicorn", "bench.anchor:app", "--host", "127.0.0.1", "--port",
                     str(self.port), "--workers", str(procs), "--log-level", "warning", "--no-access-log",
                     "--timeout-worker-healthcheck", "600"]  # imports take long on a loaded machine
        env = dict(os.environ, VQTOK_ANCHOR_MODEL=str(model_dir), VQTOK_ANCHOR_THREADS="1")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.log = log
        self._out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO)


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def roles(server: Server) -> dict[int, str]:
    """Role of each server process: by name (vq-<endpoint> workers, vq-http, vq-manager), else by start order
    (`vqtok serve` forks its manager and ZeroMQ broker before it spawns the inference workers, the HTTP processes
    after them); the anchor's uvicorn children all serve HTTP."""
    out, kids = {server.proc.pid: "main"}, {}
    for pid in server.pids():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            kids[pid] = (comm, cmd, int(_stat(pid)[19]))
        except OSError:
            continue
    if isinstance(server, AnchorServer):
        return out | {pid: "http" for pid in kids}
    workers = {"vq-encode", "vq-decode", "vq-reconstruct"}
    named = {"vq-http": "http", "vq-manager": "queue"}  # server.guards names these (since 2026-12-01)
    first_worker = min((s for c, _, s in kids.values() if c in workers), default=0)
    for pid, (comm, cmd, start) in kids.items():
        out[pid] = ("worker" if comm in workers else named[comm] if comm in named
                    else "other" if b"resource_tracker" in cmd else "queue" if start <= first_worker else "http")
    return out


def cpu_by_role(server: Server) -> dict[str, float]:
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid, role in roles(server).items():
        try:
            f = _stat(pid)
        except OSError:
            continue
        out[role] = out.get(role, 0.0) + (int(f[11]) + int(f[12])) / tick
    return out


def payloads(size: int, codes: np.ndarray) -> dict[str, tuple[str, dict]]:
    jpeg, _ = test_image(size)
    buf = io.BytesIO()
    np.save(buf, codes.astype(np.int64))
    npy = {"content": buf.getvalue(), "headers": {"Content-Type": "application/x-npy"}}
    return {"encode": ("/v1/encode", {"files": {"image": ("photo.jpg", jpeg, "image/jpeg")}}),
            "decode-png": ("/v1/decode", npy | {"params": {"format": "png"}}),
            "decode-npy": ("/v1/decode", npy | {"params": {"format": "npy"}})}


def measure(server: Server, cells: list[tuple[str, int]], reqs: dict, seconds: float, client: str) -> list[dict]:
    rows = []
    for endpoint, c in cells:
        path, kw = reqs[endpoint]
        asyncio.run(_load(server.url, path, kw, c, max(8, c), 5.0, warmup=min(c, 8)))  # warm-up, not counted
        cpu0, own0 = cpu_by_role(server), time.process_time()
        if client == "wrk":
            cell = wrk.load(server.url, path, kw, c, seconds)
        else:
            cell = asyncio.run(_load(server.url, path, kw, c, 10**6, seconds, warmup=0))
        cpu1, own1 = cpu_by_role(server), time.process_time()
        n = max(1, cell["requests"] + cell["errors"])
        cpu = {r: round(1e3 * (cpu1.get(r, 0.0) - cpu0.get(r, 0.0)) / n, 2) for r in cpu1}
        cpu["load_generator"] = round(1e3 * cell.get("client_cpu_s", own1 - own0) / n, 2)
        rows.append({"endpoint": endpoint, "concurrency": c, "rps": cell["throughput_rps"], "p50_ms": cell["p50_ms"],
                     "p99_ms": cell["p99_ms"], "requests": cell["requests"], "errors": cell["errors"],
                     "cpu_ms_per_request": cpu})
    return rows


def run(configs: list[str], concurrency: list[int], endpoints: list[str], rounds: int, seconds: float,
        work: Path, out_path: Path | None = None, client: str = "httpx") -> dict:
    from vqtok.export.runtime import OnnxTokenizer

    from .null_model import build

    model = build(work / "models")
    tok = OnnxTokenizer.from_pretrained(model, threads=1)
    _, image = test_image(tok.metadata.image_size)
    reqs = payloads(tok.metadata.image_size, tok.encode_array(image[None])[0])
    cells = [(e, c) for e in endpoints for c in concurrency]
    results: list[dict] = []
    for r in range(rounds):
        for label in configs:
            if label == "anchor":
                server = AnchorServer(model, ANCHOR_PROCS, log=work / f"{label}.log")
            else:
                extra = SERVE_CONFIGS[label] if label in SERVE_CONFIGS else label.split()
                server = Server(model, None, log=work / f"serve-{r}.log", extra_args=extra)
            try:
                server.wait_ready(timeout=900)  # start-up is slow on a loaded 2-core machine
            except BaseException:
                server.stop()
                raise
            with server:
                time.sleep(1.0)  # let start-up work settle
                for row in measure(server, cells, reqs, seconds, client):
                    row |= {"config": label, "round": r}
                    results.append(row)
                    cpu = " ".join(f"{k}={v}" for k, v in row["cpu_ms_per_request"].items())
                    if out_path is not None:  # after every cell: a run cut short still leaves its data
                        out_path.write_text(json.dumps({"rows": results, "partial": True}, indent=1) + "\n")
                    print(f"r{r} {label:14s} {row['endpoint']:10s} c={row['concurrency']:<3d} {row['rps']:7.1f} req/s "
                          f"p50 {row['p50_ms']:6.1f} p99 {row['p99_ms']:6.1f} ms  cpu-ms/req {cpu} "
                          f"[{row['errors']} err]", flush=True)
    return {"date": now_utc(), "machine": machine(), "configs": configs, "anchor_processes": ANCHOR_PROCS,
            "client": client,
            "serve_flags": {k: SERVE_CONFIGS.get(k, k.split()) for k in configs if k != "anchor"},
            "seconds_per_cell": seconds, "rows": results, "summary": summarize(results)}


def multi_image(model_dir: Path, items: int, rounds: int, work: Path, concurrency: int = 2) -> dict:
    """Served img/s of `items`-image encode requests (multipart, a 256² JPEG each) vs raw ONNX Runtime img/s at the
    same batch (`encode_array` of `items` images, all cores), raw timed before and after each served round."""
    from vqtok.export.runtime import OnnxTokenizer

    from .common import bench, cores

    tok = OnnxTokenizer.from_pretrained(model_dir, threads=cores())
    jpeg, image = test_image(tok.metadata.image_size)
    batch = np.ascontiguousarray(np.broadcast_to(image, (items, *image.shape)))
    files = [("image", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(items)]
    rows = []
    with Server(model_dir, None, log=work / "multi.log") as server:
        server.wait_ready(900)
        asyncio.run(_load(server.url, "/v1/encode", {"files": files}, 1, 1, 600.0, warmup=0))  # warm-up
        for r in range(rounds):
            before = bench(lambda: tok.encode_array(batch), max_reps=2, max_s=60, min_reps=1, warmup=0)
            cell = asyncio.run(_load(server.url, "/v1/encode", {"files": files}, concurrency, 2 * concurrency, 600.0,
                                     warmup=0))
            after = bench(lambda: tok.encode_array(batch), max_reps=2, max_s=60, min_reps=1, warmup=0)
            raw = items / ((before.median + after.median) / 2)
            served = cell["throughput_rps"] * items
            rows.append({"round": r, "served_img_s": served, "raw_img_s": raw, "ratio": served / raw,
                         "errors": cell["errors"], "p50_ms": cell["p50_ms"]})
            print(f"multi r{r}: served {served:.2f} img/s ({items}-image requests, c={concurrency}) vs raw "
                  f"{raw:.2f} img/s at batch {items}: {served / raw:.3f}", flush=True)
    return {"model_dir": str(model_dir), "items": items, "concurrency": concurrency, "rows": rows,
            "ratio_median": statistics.median(r["ratio"] for r in rows)}


SERVER_ROLES = ("http", "queue", "worker", "main")


def server_cpu(row: dict) -> float:
    """CPU-ms per request of every server process together (not the load generator)."""
    return sum(v for k, v in row["cpu_ms_per_request"].items() if k in SERVER_ROLES)


def summarize(rows: list[dict]) -> list[dict]:
    """Per (config, endpoint, concurrency): median req/s and p50/p99 over rounds, the median over rounds of req/s
    relative to the anchor's in the same round, and of the anchor's server CPU-ms per request over this one's (the
    throughput ratio on a machine where the server has the cores to itself)."""
    anchor = {(r["round"], r["endpoint"], r["concurrency"]): r["rps"] for r in rows if r["config"] == "anchor"}
    anchor_cpu = {(r["round"], r["endpoint"], r["concurrency"]): server_cpu(r) for r in rows
                  if r["config"] == "anchor"}
    keys = sorted({(r["config"], r["endpoint"], r["concurrency"]) for r in rows},
                  key=lambda k: (k[1], k[2], k[0]))
    out = []
    for cfg, ep, c in keys:
        mine = [r for r in rows if (r["config"], r["endpoint"], r["concurrency"]) == (cfg, ep, c)]
        ratios = [r["rps"] / anchor[(r["round"], ep, c)] for r in mine if anchor.get((r["round"], ep, c))]
        cpu_ratios = [anchor_cpu[(r["round"], ep, c)] / server_cpu(r) for r in mine
                      if anchor_cpu.get((r["round"], ep, c)) and server_cpu(r)]
        roles_ = sorted({k for r in mine for k in r["cpu_ms_per_request"]})
        out.append({"config": cfg, "endpoint": ep, "concurrency": c,
                    "rps": statistics.median(r["rps"] for r in mine),
                    "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                    "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                    "vs_anchor": statistics.median(ratios) if ratios else None,
                    "vs_anchor_rounds": [round(x, 3) for x in ratios],
                    "server_cpu_ms": statistics.median(server_cpu(r) for r in mine),
                    "cpu_vs_anchor": statistics.median(cpu_ratios) if cpu_ratios else None,
                    "cpu_vs_anchor_rounds": [round(x, 3) for x in cpu_ratios],
                    "cpu_ms_per_request": {k: statistics.median(r["cpu_ms_per_request"].get(k, 0.0) for r in mine)
                                           for k in roles_}})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| endpoint | c | config | req/s | req/s vs anchor (rounds) | server CPU-ms/req | anchor CPU / this "
             "(rounds) | p50 ms | p99 ms | CPU-ms/request by process |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        ratio = "" if s["vs_anchor"] is None else f"{s['vs_anchor']:.2f} ({', '.join(map(str, s['vs_anchor_rounds']))})"
        cpu_ratio = ("" if s.get("cpu_vs_anchor") is None else
                     f"{s['cpu_vs_anchor']:.2f} ({', '.join(map(str, s['cpu_vs_anchor_rounds']))})")
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in s["cpu_ms_per_request"].items() if v)
        lines.append(f"| {s['endpoint']} | {s['concurrency']} | {s['config']} | {s['rps']:.1f} | {ratio} | "
                     f"{s['server_cpu_ms']:.1f} | {cpu_ratio} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {cpu} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["litserve", "default"],
                    help="names from SERVE_CONFIGS, or quoted `vqtok serve` flags; the anchor is always added")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--endpoints", nargs="+", default=["encode", "decode-png", "decode-npy"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out", default=str(RESULTS_DIR / "overhead.json"))
    ap.add_argument("--multi", type=int, metavar="N", help="instead: N-image encode requests with the real --model "
                    "(default: the shipped default) vs raw ONNX Runtime at batch N")
    ap.add_argument("--model", help="with --multi: model folder or id")
    ap.add_argument("--client", choices=["wrk", "httpx"], help="load generator (default: wrk when installed)")
    ap.add_argument("--report", metavar="JSON", help="only print the table of a (possibly partial) earlier run")
    args = ap.parse_args(argv)
    if args.report:
        out = json.loads(Path(args.report).read_text())
        print(table(summarize(out["rows"])))
        return out
    if args.multi:
        from .common import resolve_model

        with tempfile.TemporaryDirectory(prefix="vqtok-overhead-") as tmp:
            out = multi_image(resolve_model(args.model)[0], args.multi, args.rounds, Path(tmp))
        out |= {"date": now_utc(), "machine": machine(),
                "command": "python -m bench.overhead " + " ".join(argv if argv is not None else sys.argv[1:])}
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return out
    with tempfile.TemporaryDirectory(prefix="vqtok-overhead-") as tmp:
        client = args.client or ("wrk" if wrk.available() else "httpx")
        out = run(["anchor", *args.configs], args.concurrency, args.endpoints, args.rounds, args.seconds, Path(tmp),
                  Path(args.out), client)
    out["command"] = "python -m bench.overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(table(out["summary"]))
    return out


if __name__ == "__main__":
    main()
