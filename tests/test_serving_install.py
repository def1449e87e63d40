"""The Docker image's install path, without Docker: `pip install .[serve,dev]` into a fresh virtual environment
(no system site-packages, so no torch), then the server and client tests run against that install.

Opt-in (it downloads the serving dependencies from PyPI, a few minutes):
    VQTOK_TEST_SERVING_INSTALL=1 python -m pytest -q tests/test_serving_install.py
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
_SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
# the repository folders the installed packages come from (`vqtok.server` is built from server/, ...)
FOLDERS = sorted({_SETUPTOOLS["package-dir"].get(p, p.replace(".", "/")).split("/")[0]
                  for p in _SETUPTOOLS["packages"]})
SOURCES = ["pyproject.toml", "README.md", *FOLDERS]  # what the Docker build context holds (.dockerignore)
TESTS = ["conftest.py", "_serving.py", "_hostile.py", "test_server.py", "test_server_process.py", "test_client.py"]
opt_in = pytest.mark.skipif(os.environ.get("VQTOK_TEST_SERVING_INSTALL") != "1",
                            reason="set VQTOK_TEST_SERVING_INSTALL=1 (installs from PyPI into a fresh venv)")


def test_docker_context_and_image_shape():
    """The Docker build context lets through every source `pip install .` needs; the image is the serving one."""
    allowed = {line[1:].strip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert set(SOURCES) <= allowed, f".dockerignore must re-include {sorted(set(SOURCES) - allowed)}"
    docker = (REPO / "Dockerfile").read_text()
    for needed in ('pip install ".[serve]"', "find_spec('torch')", "USER vqtok", "HEALTHCHECK", "/health",
                   'CMD ["vqtok", "serve", "--device", "cuda"]', "cudnn"):
        assert needed in docker, f"Dockerfile lacks {needed!r}"


def test_the_copied_suite_has_its_helper_modules():
    """The serving-install run copies only TESTS: every tests/_helper.py they import must be among them."""
    import re

    for name in TESTS:
        for helper in re.findall(r"^(?:from|import) (_[a-z]\w*)", (REPO / "tests" / name).read_text(), flags=re.M):
            assert f"{helper}.py" in TESTS, f"{name} imports {helper}; add {helper}.py to TESTS"


def _copy(names: list[str], src: Path, dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in names:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, ignore=ignore)
        else:
            shutil.copy2(src / name, dst / name)


@opt_in
def test_serving_install_has_no_torch_and_passes_the_server_tests(tmp_path):
    missing = [n for n in SOURCES if not (REPO / n).exists()]
    assert not missing, f"the image's sources are missing {missing} (the Dockerfile COPYs them)"
    src, venv, suite = tmp_path / "src", tmp_path / "venv", tmp_path / "suite"
    src.mkdir()
    _copy(SOURCES, REPO, src)
    (suite / "tests" / "fixtures").mkdir(parents=True)
    _copy(TESTS, REPO / "tests", suite / "tests")
    _copy(["tiny-model", "photos"], REPO / "tests" / "fixtures", suite / "tests" / "fixtures")
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VQTOK_METRICS_DIR")}

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", f"{src}[serve,dev]"], check=True, env=env, cwd=tmp_path)
    probe = ("import importlib.util as u, sys, vqtok.server, vqtok.export.runtime; "
             "sys.exit('torch is installed' if u.find_spec('torch') else 0); ")
    subprocess.run([py, "-c", probe], check=True, env=env, cwd=suite)
    r = subprocess.run([py, "-c", "import vqtok.server; print(vqtok.server.__file__)"], check=True, env=env, cwd=suite,
                       capture_output=True, text=True)
    assert str(venv) in r.stdout, f"the tests must import the installed package, not {r.stdout}"
    tests = [f"tests/{t}" for t in TESTS if t.startswith("test_")]
    r = subprocess.run([py, "-m", "pytest", "-q", *tests], env=env, cwd=suite, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]


@opt_in
def test_client_extra_alone_talks_to_a_server(tmp_path):
    """`pip install vqtok[client]` into a fresh venv: no litserve, ONNX Runtime or torch, and `vqtok.Client` encodes
    through a real server (run from this environment) exactly as the local runtime does."""
    import numpy as np

    from _serving import PHOTOS, LiveServer, local_tokenizer, models_dir

    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    _copy(SOURCES, REPO, src)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "VQTOK_METRICS_DIR")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", f"{src}[client]"], check=True, env=env, cwd=tmp_path)
    missing = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('litserve', 'onnxruntime', "
                              "'torch', 'fastapi') if u.find_spec(m)])"], check=True, env=env, cwd=tmp_path,
                             capture_output=True, text=True)
    assert missing.stdout.strip() == "[]", missing.stdout
    models = models_dir(tmp_path)
    with LiveServer(["--models-dir", str(models), "--threads", "1"], log=tmp_path / "serve.log") as live:
        code = ("import sys, numpy as np, vqtok\n"
                "with vqtok.Client(sys.argv[1]) as c:\n"
                "    np.save(sys.argv[3], c.encode(sys.argv[2]))\n")
        r = subprocess.run([py, "-c", code, live.url, str(PHOTOS[0]), str(tmp_path / "codes.npy")], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    expected = local_tokenizer(models / "tiny-a").encode(PHOTOS[0])[0]
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), expected)
