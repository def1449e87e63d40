"""wrk (a C load generator, `apt install wrk`) for bench/overhead.py: the Python httpx client costs 2-20 CPU-ms per
request at c = 8-64 on this machine (httpcore's pool scans every connection per request), as much as the server
under test, on the same two cores; wrk costs ~0.1.

`load(url, path, kw, concurrency, seconds)` posts one fixed request (httpx keyword arguments, as bench.serving
builds them) for `seconds` over `concurrency` keep-alive connections and returns bench.serving's summary fields.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPT = """
local f = io.open(os.getenv("WRK_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("WRK_CT")
function done(s, lat, req)
  io.write(string.format('\\n{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p99_us": %d}\\n', s.requests, s.duration, s.errors.status,
    s.errors.connect + s.errors.read + s.errors.write, s.errors.timeout, lat:percentile(50), lat:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def load(url: str, path: str, kw: dict, concurrency: int, seconds: float) -> dict:
    """One wrk run; adds "client_cpu_s" (wrk's user + system CPU)."""
    import httpx

    req = httpx.Request("POST", url + path, **kw)
    body = req.read()
    with tempfile.TemporaryDirectory(prefix="vqtok-wrk-") as tmp:
        (Path(tmp) / "post.lua").write_text(SCRIPT)
        (Path(tmp) / "body").write_bytes(body)
        env = dict(os.environ, WRK_BODY=str(Path(tmp) / "body"), WRK_CT=req.headers.get("content-type", ""))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
                              "-s", str(Path(tmp) / "post.lua"), str(req.url)],
                             env=env, capture_output=True, text=True, check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = json.loads(out.strip().splitlines()[-1])
    wall = r["duration_us"] / 1e6
    errors = r["status_errors"] + r["socket_errors"] + r["timeouts"]
    ok = r["requests"] - r["status_errors"]
    return {"requests": ok, "errors": errors, "wall_s": wall, "throughput_rps": ok / wall,
            "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "client_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}
