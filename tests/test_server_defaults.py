"""Worker and thread defaults of `vqtok serve` per device (no server started)."""
from __future__ import annotations

import os

from vqtok.server.app import Settings, default_workers, threads_per_worker


def test_cpu_workers_share_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert default_workers("cpu") == 1
    assert threads_per_worker(Settings(device="cpu", workers=1), 1) == cores
    assert threads_per_worker(Settings(device="cpu", workers=2 * cores), 1) == 1
    assert threads_per_worker(Settings(device="cpu", workers=1, threads=3), 1) == 3


def test_gpu_workers_are_many_and_thin():
    assert default_workers("cuda") == 4
    assert threads_per_worker(Settings(device="cuda", workers=4), 2) == 1
    assert threads_per_worker(Settings(device="cuda", workers=4, threads=2), 1) == 2
