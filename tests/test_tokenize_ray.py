"""The Ray engine on a local Ray (2 CPUs) writes exactly the local engine's rows and errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vqtok.pipeline.manifest import verify
from vqtok.pipeline.run import tokenize_dataset

ray = pytest.importorskip("ray")

FIXTURES = Path(__file__).parent / "fixtures"
TINY = str(FIXTURES / "tiny-model")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # what the command starts on a 2-CPU box
    yield
    ray.shutdown()


def test_ray_engine_equals_local_engine(tmp_path, local_ray):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((FIXTURES / "photos").glob("*.jpg")):
        shutil.copy(p, src)
    (src / "broken.jpg").write_text("not a jpeg")
    local, remote = tmp_path / "local", tmp_path / "ray"
    m_local = tokenize_dataset(str(src), local, TINY, shard_size=2, batch_size=2, progress=False)
    m_ray = tokenize_dataset(str(src), remote, TINY, shard_size=2, batch_size=2, engine="ray", progress=False)
    files = lambda d: sorted(d.glob("shard-*.parquet"))  # noqa: E731
    assert [f.name for f in files(local)] == [f.name for f in files(remote)]
    assert pq.read_table(files(local)).equals(pq.read_table(files(remote)))
    assert (local / "errors.jsonl").read_text() == (remote / "errors.jsonl").read_text() != ""
    assert m_ray["totals"] == m_local["totals"] == {"items": 6, "rows": 5, "errors": 1, "shards": 3}
    assert [s["sha256"] for s in m_ray["shards"]] == [s["sha256"] for s in m_local["shards"]]
    assert verify(remote) == []


def test_ray_refuses_a_pool_that_takes_every_cpu(tmp_path, local_ray):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(next((FIXTURES / "photos").glob("*.jpg")), src)
    with pytest.raises(ValueError, match="leave none for reading"):
        tokenize_dataset(str(src), tmp_path / "out", TINY, engine="ray", ray_actors=2, progress=False)
