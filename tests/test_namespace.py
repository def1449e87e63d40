"""Installed, vqtok is one namespace: the wheel holds `vqtok` (and its dist-info) and nothing else at top level."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installs_only_the_vqtok_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("vqtok-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"vqtok"}, sorted(top)
    for module in ("vqtok/__init__.py", "vqtok/cli/__init__.py", "vqtok/tokenizer/model.py", "vqtok/export/runtime.py",
                   "vqtok/server/app.py", "vqtok/server/static/index.html", "vqtok/pipeline/run.py",
                   "vqtok/weights/vqtok-f8-k1024/encoder.onnx", "vqtok/weights/vqtok-f8-k1024/code_histogram.json"):
        assert module in names, module


def test_public_api_is_lazy_and_torch_free():
    code = ("import sys, vqtok; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "vqtok.OnnxTokenizer; vqtok.Client; vqtok.DEFAULT_MODEL; assert 'torch' not in sys.modules; "
            "print(vqtok.__version__)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip()
