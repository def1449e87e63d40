"""The extras in pyproject.toml: what each one installs, that the base needs neither torch nor a particular ONNX
Runtime wheel, that `vqtok.Client` imports with the client extra alone, and the documented install commands."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
TINY = REPO / "tests" / "fixtures" / "tiny-model"
CI_INSTALL = 'pip install -e ".[serve,data,train,ray,dev]"'


def names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in reqs}


def blocked(*modules: str) -> str:
    """Python code that makes `import M` fail as if M were not installed (ModuleNotFoundError, name M)."""
    return "import sys; " + "; ".join(f"sys.modules[{m!r}] = None" for m in modules) + "; "


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)


def test_extras_install_what_they_say():
    base = names(PROJECT["dependencies"])
    assert not base & {"torch", "onnxruntime", "onnxruntime-gpu", "litserve", "httpx"}, base
    assert {"serve", "serve-cpu", "client", "train", "data", "ray", "dev"} <= set(EXTRAS)
    serve, serve_cpu = names(EXTRAS["serve"]), names(EXTRAS["serve-cpu"])
    assert "onnxruntime-gpu" in serve and "onnxruntime" not in serve
    assert "onnxruntime" in serve_cpu and "onnxruntime-gpu" not in serve_cpu
    assert serve - {"onnxruntime-gpu"} == serve_cpu - {"onnxruntime"}  # the same server, another runtime wheel
    assert names(EXTRAS["client"]) == {"httpx"}
    assert "torch" in names(EXTRAS["train"]) and "pyarrow" in names(EXTRAS["data"])
    assert not any(n.startswith("onnxruntime") for extra in ("client", "train", "data", "ray", "dev")
                   for n in names(EXTRAS[extra]))  # never both runtimes in one install


def test_ci_and_readme_install_every_extra_the_tests_need():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert CI_INSTALL in ci and CI_INSTALL in readme
    assert 'pip install -e ".[serve]" && vqtok serve' in readme


def test_client_imports_without_litserve_onnxruntime_or_torch(tmp_path):
    code = blocked("litserve", "onnxruntime", "torch", "fastapi", "onnx") + (
        "import vqtok; c = vqtok.Client('http://127.0.0.1:9'); a = vqtok.AsyncClient('http://127.0.0.1:9'); "
        "from vqtok.server.client import VqtokError; print(type(c).__name__)")
    r = run(code, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "Client", r.stderr


def test_without_onnx_runtime_the_error_says_which_extra_installs_it(tmp_path):
    r = run(blocked("onnxruntime") + f"import vqtok; vqtok.OnnxTokenizer.from_pretrained({str(TINY)!r})", tmp_path)
    assert r.returncode == 1 and "ModuleNotFoundError: ONNX Runtime is not installed: pip install 'vqtok[serve]'" \
        in r.stderr and "'vqtok[serve-cpu]'" in r.stderr, r.stderr
    photo = REPO / "tests" / "fixtures" / "photos" / "chelsea.jpg"
    r = run(blocked("onnxruntime") + f"from vqtok.cli import main; sys.exit(main(['encode', {str(photo)!r}, "
            f"'--local', '--model', {str(TINY)!r}]))", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pip install 'vqtok[serve]'" in r.stderr and \
        "'vqtok[serve-cpu]'" in r.stderr, r.stderr
