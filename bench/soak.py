"""Soak and memory check of a real `vqtok serve` (not CI): many mixed requests, errors, latency, RSS per process.

    nice -n 10 python -m bench.soak --requests 10000 --concurrency 8                 # tiny fixture model, minutes
    nice -n 10 python -m bench.soak --model-dir weights/vqtok-f8-k1024 --requests 0 --worst-case   # memory only
    nice -n 10 python -m bench.soak --hol 5                                           # head-of-line, A/B

Mixed load: encode (JSON / .npy, resize / native), decode (grids of several sizes), reconstruct, on the fixture
photos and random native images up to half the model's max_side. Reports errors (every non-200 is one), p50/p99 per
endpoint, the RSS of every process before (after warm-up) and after the load; `--worst-case` then sends the largest
requests the limits allow (native max_side² encode/reconstruct, max grid decode) and reports each process's peak
(VmHWM) and its RSS afterwards. `--hol ROUNDS` instead measures head-of-line blocking: the latency of a small
decode sent while 6 max-grid decodes are in flight, against two servers in alternating rounds (`--large-slots 1`,
the default, and 64: no gate). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PHOTOS = sorted((REPO / "tests" / "fixtures" / "photos").glob("*.jpg"))
TINY = REPO / "tests" / "fixtures" / "tiny-model"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def processes(root_pid: int) -> dict[str, dict]:
    """Every process of the server's session: name:pid → RSS and peak RSS (MiB)."""
    out = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            stat = (status.parent / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[3]) != root_pid:
                continue
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except (OSError, ValueError):
            continue
        kib = {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM") if k in fields}
        out[f"{fields['Name'].strip()}:{status.parent.name}"] = {"rss_mib": round(kib.get("VmRSS", 0) / 1024, 1),
                                                                "peak_mib": round(kib.get("VmHWM", 0) / 1024, 1)}
    return out


def start_server(model_dir: Path, workdir: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    models = workdir / "models"
    if not models.exists():
        shutil.copytree(model_dir, models / model_dir.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "VQTOK_PORT": str(port)}
    env.pop("VQTOK_API_KEY", None)
    log = open(workdir / f"serve-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "vqtok", "serve", "--models-dir", str(models),
                             "--log-level", "warning", *extra], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / f"serve-{port}.log").read_text()[-3000:])
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server not ready")


def request_mix(info: dict, rng: random.Random) -> list[tuple[str, dict]]:
    """A pool of request kinds (endpoint label, httpx kwargs) drawn from uniformly."""
    f, side = info["factor"], info["max_side"]
    photos = [p.read_bytes() for p in PHOTOS]
    nat = [png(np.random.default_rng(i).integers(0, 256, (s, s + f, 3), np.uint8))
           for i, s in enumerate((f * 4, side // 4, side // 2))]
    grids = [np.random.default_rng(i).integers(0, info["codebook_size"], (g, g)).tolist()
             for i, g in enumerate((2, side // f // 4, side // f // 2))]
    jpeg = {"Content-Type": "image/jpeg"}
    pool = []
    for data in photos:
        pool += [("encode", dict(content=data, headers=jpeg)),
                 ("encode", dict(content=data, headers=jpeg, params={"format": "npy"})),
                 ("reconstruct", dict(content=data, headers=jpeg))]
    for data in nat:
        pool += [("encode", dict(content=data, headers={"Content-Type": "image/png"}, params={"policy": "native"})),
                 ("reconstruct", dict(content=data, headers={"Content-Type": "image/png"},
                                      params={"policy": "native"}))]
    pool += [("decode", dict(json={"codes": g})) for g in grids]
    rng.shuffle(pool)
    return pool


async def load(url: str, pool: list, n: int, concurrency: int, seed: int) -> dict:
    rng = random.Random(seed)
    plan = [rng.choice(pool) for _ in range(n)]
    lat: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            endpoint, kw = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                r = await client.post(f"/v1/{endpoint}", **kw)
                status = str(r.status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            if status == "200":
                lat.setdefault(endpoint, []).append(time.perf_counter() - t0)
            else:
                errors[f"{endpoint} {status}"] = errors.get(f"{endpoint} {status}", 0) + 1

    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
    wall = time.monotonic() - start
    return {"requests": n, "wall_s": round(wall, 1), "req_per_s": round(n / wall, 1), "errors": errors,
            "latency_ms": {e: {"n": len(v), "p50": round(float(np.percentile(v, 50)) * 1e3, 1),
                               "p99": round(float(np.percentile(v, 99)) * 1e3, 1)} for e, v in sorted(lat.items())}}


def worst_case(url: str, info: dict) -> dict:
    side, f = info["max_side"], info["factor"]
    big = png(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8))
    grid = np.random.default_rng(1).integers(0, info["codebook_size"], (side // f, side // f)).tolist()
    out = {}
    with httpx.Client(base_url=url, timeout=1800) as c:
        for label, path, kw in (
                ("encode native max_side²", "/v1/encode", dict(content=big, params={"policy": "native"},
                                                                 headers={"Content-Type": "image/png"})),
                ("decode max grid", "/v1/decode", dict(json={"codes": grid})),
                ("reconstruct native max_side²", "/v1/reconstruct",
                 dict(content=big, params={"policy": "native"}, headers={"Content-Type": "image/png"}))):
            t0 = time.perf_counter()
            r = c.post(path, **kw)
            out[label] = {"status": r.status_code, "s": round(time.perf_counter() - t0, 1)}
    return out


async def small_behind_large(url: str, info: dict, n_large: int = 6) -> dict:
    """Seconds for a small decode sent 0.3 s after `n_large` max-grid decodes (and for the large ones)."""
    g = info["max_side"] // info["factor"]
    large = {"codes": np.random.default_rng(2).integers(0, info["codebook_size"], (g, g)).tolist()}
    small = {"codes": np.random.default_rng(3).integers(0, info["codebook_size"], (2, 2)).tolist()}
    async with httpx.AsyncClient(base_url=url, timeout=1800) as c:
        async def timed(body):
            t0 = time.perf_counter()
            r = await c.post("/v1/decode", json=body)
            return r.status_code, time.perf_counter() - t0

        bigs = [asyncio.ensure_future(timed(large)) for _ in range(n_large)]
        await asyncio.sleep(0.3)
        status, small_s = await timed(small)
        done = await asyncio.gather(*bigs)
    return {"small_s": small_s, "small_status": status, "large_s_max": max(t for _, t in done),
            "large_statuses": sorted({st for st, _ in done})}


def head_of_line(model_dir: Path, workdir: Path, rounds: int) -> dict:
    servers = {slots: start_server(model_dir, workdir, ["--large-slots", str(slots), "--timeout", "600"])
               for slots in (1, 64)}
    out: dict = {slots: [] for slots in servers}
    try:
        info = httpx.get(servers[1][1] + "/v1/models").json()["models"][0]
        for _ in range(rounds):  # alternating: both see the same machine load
            for slots, (_, url) in servers.items():
                out[slots].append(asyncio.run(small_behind_large(url, info)))
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    summary = {}
    for slots, runs in out.items():
        smalls = [r["small_s"] for r in runs]
        summary[f"large_slots={slots}"] = {"small_decode_s_median": round(float(np.median(smalls)), 2),
                                           "small_decode_s": [round(x, 2) for x in smalls],
                                           "large_decode_s_max_median": round(float(np.median(
                                               [r["large_s_max"] for r in runs])), 2),
                                           "statuses": sorted({r["small_status"] for r in runs}
                                                              | {s for r in runs for s in r["large_statuses"]})}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=TINY)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--worst-case", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-arg", action="append", default=[], help="extra `vqtok serve` argument (repeatable)")
    p.add_argument("--hol", type=int, metavar="ROUNDS", help="measure head-of-line blocking instead (see above)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="vqtok-soak-"))
    if args.hol:
        try:
            report = {"command": " ".join(sys.argv), "head_of_line": head_of_line(args.model_dir.resolve(), workdir,
                                                                                  args.hol)}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(json.dumps(report, indent=1))
        return 0
    proc, url = start_server(args.model_dir.resolve(), workdir, args.serve_arg)
    report: dict = {"model_dir": str(args.model_dir), "command": " ".join(sys.argv)}
    try:
        info = httpx.get(url + "/v1/models").json()["models"][0]
        pool = request_mix(info, random.Random(args.seed))
        if args.warmup:
            report["warmup"] = asyncio.run(load(url, pool, args.warmup, args.concurrency, args.seed + 1))
        report["rss_before"] = processes(proc.pid)
        if args.requests:
            report["load"] = asyncio.run(load(url, pool, args.requests, args.concurrency, args.seed))
            report["rss_after"] = processes(proc.pid)
        if args.worst_case:
            report["worst_case"] = worst_case(url, info)
            time.sleep(1)
            report["rss_after_worst_case"] = processes(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=1))
    errors = sum(report.get("load", {}).get("errors", {}).values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
