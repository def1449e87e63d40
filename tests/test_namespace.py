"""Installed, vqtok is one namespace: the wheel holds `vqtok` (and its dist-info) and nothing else at top level."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installs_only_the_vqtok_namespace(tmp_path):
    # built from a clean copy of the sources: setuptools packs whatever a stale build/ folder of this tree holds
    from test_serving_install import SOURCES, _copy

    src = tmp_path / "src"
    src.mkdir()
    _copy(SOURCES, REPO, src)
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp_path), str(src)], check=True, cwd=tmp_path)
        (wheel,) = tmp_path.glob("vqtok-*.whl")
        names, size = zipfile.ZipFile(wheel).namelist(), wheel.stat().st_size
    finally:  # ~70 MB of copies and wheel: do not leave them under pytest's temp root
        shutil.rmtree(tmp_path, ignore_errors=True)
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"vqtok"}, sorted(top)
    for module in ("vqtok/__init__.py", "vqtok/cli/__init__.py", "vqtok/tokenizer/model.py", "vqtok/export/runtime.py",
                   "vqtok/server/app.py", "vqtok/server/static/index.html", "vqtok/pipeline/run.py",
                   "vqtok/weights/vqtok-f8-k1024/encoder.onnx", "vqtok/weights/vqtok-f8-k1024/code_histogram.json"):
        assert module in names, module
    # the default model's files the installed code loads, and not the optional copies (README: where models are found)
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("vqtok/weights/vqtok-f8-k1024/")}
    assert shipped == {"config.json", "train_config.json", "model.safetensors", "encoder.onnx", "decoder.onnx",
                       "README.md", "parity_report.json", "parity_report.md", "code_histogram.json"}, sorted(shipped)
    assert size < 30 * 2**20, f"wheel is {size / 2**20:.1f} MiB"


def test_public_api_is_lazy_and_torch_free():
    code = ("import sys, vqtok; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "vqtok.OnnxTokenizer; vqtok.Client; vqtok.DEFAULT_MODEL; assert 'torch' not in sys.modules; "
            "print(vqtok.__version__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip()
