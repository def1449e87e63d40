"""Replicated deployment: two `vqtok serve` replicas behind HAProxy (deploy/haproxy.cfg, as shipped), the Python
client with its retries, a bounded load of the fixture photos, and kill -9 of one replica in the middle of it:
no client request fails, and every result equals the one a single server gives."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest

from _serving import PHOTOS, REPO, LiveServer, free_port, models_dir, session_pids

pytest.importorskip("litserve")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (.ci/run installs it)")
REQUESTS = 90


def test_kill_one_replica_under_load_no_client_request_fails(tmp_path):
    from vqtok.server.client import Client

    models_dir(tmp_path)
    args = ["--models-dir", str(tmp_path / "models"), "--threads", "1"]
    replicas = [LiveServer(args, log=tmp_path / f"r{i}.log") for i in (1, 2)]
    lb = None
    try:
        for r in replicas:
            r.wait_ready()
        port = free_port()
        env = {**os.environ, "VQTOK_LB_PORT": str(port), "VQTOK_REPLICA_1": f"127.0.0.1:{replicas[0].port}",
               "VQTOK_REPLICA_2": f"127.0.0.1:{replicas[1].port}"}
        lb = subprocess.Popen([HAPROXY, "-db", "-f", str(REPO / "deploy" / "haproxy.cfg")], env=env,
                              stdout=open(tmp_path / "haproxy.log", "wb"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and lb.poll() is None, (tmp_path / "haproxy.log").read_text()
            time.sleep(0.2)

        photos = [p.read_bytes() for p in PHOTOS]
        with Client(replicas[1].url) as single:  # the reference: one server, no balancer
            expected = [single.encode(p) for p in photos]
        results: dict[int, object] = {}
        failures: list[str] = []

        def client_thread(k: int) -> None:
            with Client(url, retries=5, timeout=120) as c:
                for i in range(k, REQUESTS, 3):
                    photo = i % len(photos)
                    try:
                        if i % 3 == 2:
                            c.reconstruct(photos[photo])
                            results[i] = None
                        else:
                            results[i] = c.encode(photos[photo])
                    except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                        failures.append(f"request {i}: {type(err).__name__}: {err}")

        threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        while len(results) + len(failures) < REQUESTS // 3:
            time.sleep(0.05)
        victim = replicas[0]
        os.kill(victim.proc.pid, signal.SIGKILL)  # the whole replica: its children follow their parent
        for t in threads:
            t.join(600)
        assert not failures, failures[:5]
        assert len(results) == REQUESTS
        for i, codes in results.items():
            if codes is not None:
                np.testing.assert_array_equal(codes, expected[i % len(photos)])
        time.sleep(1)
        assert not session_pids(victim.proc.pid), "the killed replica left processes behind"
    finally:
        if lb is not None:
            lb.terminate()
            lb.wait(10)
        for r in replicas:
            r.stop()
