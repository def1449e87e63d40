"""The serving path never needs torch: these modules import in a process where torch cannot be imported, and
importing them where torch *is* installed does not load it either (an optional `try: import torch` would)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

MODULES = ["vqtok", "vqtok.tokenizer", "vqtok.tokenizer.contract", "vqtok.tokenizer.preprocess", "vqtok.tokenizer.hub",
           "vqtok.export",
           "vqtok.export.runtime", "vqtok.server", "vqtok.server.client", "vqtok.server.app", "vqtok.cli",
           "vqtok.pipeline", "vqtok.pipeline.run", "vqtok.pipeline.work", "vqtok.pipeline.local",
           "vqtok.pipeline.detok"]

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this process (importing {name!r})")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")

IMPORT_ALL = textwrap.dedent("""
    import importlib, json, sys
    result = {}
    for name in sys.argv[1:]:
        try:
            importlib.import_module(name)
            result[name] = "ok"
        except BaseException as err:  # noqa: BLE001 - report, do not crash the probe
            result[name] = f"{type(err).__name__}: {err}"
    result["_torch_modules"] = sorted(k for k in sys.modules if k == "torch" or k.startswith("torch."))[:5]
    print(json.dumps(result))
""")


def probe(prelude: str, modules: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", prelude + IMPORT_ALL, *modules], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_blocker_really_blocks_torch(subprocess_env):
    result = probe(BLOCK_TORCH, ["torch", "vqtok.tokenizer.model"], subprocess_env)
    assert result["torch"].startswith("ImportError") and "blocked" in result["torch"]
    assert result["vqtok.tokenizer.model"].startswith("ImportError")


@pytest.mark.parametrize("blocked", [True, False], ids=["torch-unimportable", "torch-installed"])
def test_serving_modules_import_without_torch(subprocess_env, blocked):
    result = probe(BLOCK_TORCH if blocked else "", MODULES, subprocess_env)
    failed = {m: r for m, r in result.items() if m in MODULES and r != "ok"}
    assert not failed, failed
    assert result["_torch_modules"] == [], f"torch was imported by one of {MODULES}"


def test_lazy_model_attribute_needs_torch(subprocess_env):
    """`tokenizer.Tokenizer` loads torch on first use only; with torch missing it fails with ImportError."""
    code = BLOCK_TORCH + textwrap.dedent("""
        import vqtok.tokenizer as tokenizer
        assert "Tokenizer" in tokenizer.__all__
        try:
            tokenizer.Tokenizer
        except ImportError as err:
            print("ImportError", err)
        else:
            print("imported?!")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ImportError")
