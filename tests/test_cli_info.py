"""`vqtok --help` and `vqtok info`: config, parameter count, factor, K and codebook sha256 of a saved model, printed
without importing torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqtok.tokenizer.model import Tokenizer, TokenizerConfig

REPO = Path(__file__).resolve().parent.parent

# Run the CLI in a child whose torch imports fail: `--help` and `info` must not need torch.
NO_TORCH_CLI = """
import runpy, sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
sys.meta_path.insert(0, BlockTorch())
sys.argv = ["vqtok", *sys.argv[1:]]
runpy.run_module("vqtok", run_name="__main__")
"""


def vqtok(args: list[str], env: dict, expect_rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == expect_rc, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[Path, Tokenizer]:
    cfg = dict(base_channels=8, channel_mult=[1, 2, 2], latent_channels=8, codebook_size=48, code_dim=4,
               image_size=32, model_id="tiny-info")
    torch.manual_seed(0)
    model = Tokenizer(TokenizerConfig.from_dict(cfg)).eval()
    root = tmp_path_factory.mktemp("weights")
    return model.save_pretrained(root / "tiny-info"), model


def test_help_lists_commands(subprocess_env):
    out = vqtok(["--help"], subprocess_env).stdout
    assert "usage: vqtok" in out
    for cmd in ("info", "train"):
        assert cmd in out
    assert "model" in vqtok(["info", "--help"], subprocess_env).stdout


def test_info_prints_config_params_factor_k_and_sha(saved_model, subprocess_env):
    path, model = saved_model
    out = vqtok(["info", str(path)], subprocess_env).stdout
    lines = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in out.splitlines() if ":" in ln}
    assert lines["codebook_sha256"] == model.codebook_sha256()
    assert len(lines["codebook_sha256"]) == 64
    assert lines["parameters"].replace(",", "") == str(model.num_params())
    assert lines["factor"] == "4"
    assert lines["codebook_size"] == "48"
    assert lines["code_dim"] == "4"
    assert "config" in lines
    assert lines["model_id"] == "tiny-info" and lines["base_channels"] == "8"
    assert lines["channel_mult"] in ("[1, 2, 2]", "(1, 2, 2)")


def test_info_json_matches_the_model(saved_model, subprocess_env):
    path, model = saved_model
    info = json.loads(vqtok(["info", str(path), "--json"], subprocess_env).stdout)
    assert info["codebook_sha256"] == model.codebook_sha256()
    assert info["parameters"] == model.num_params()
    assert info["factor"] == model.factor == 4
    assert info["codebook_size"] == 48 and info["code_dim"] == 4
    assert info["config"] == json.loads((path / "config.json").read_text())
    assert "onnx" not in info


def test_info_by_id_list_and_unknown_id(saved_model, subprocess_env):
    path, model = saved_model
    env = subprocess_env | {"VQTOK_WEIGHTS_DIR": str(path.parent)}
    assert vqtok(["info", "--list"], env).stdout.split() == ["tiny-info"]
    info = json.loads(vqtok(["info", "tiny-info", "--json"], env).stdout)
    assert info["codebook_sha256"] == model.codebook_sha256()
    err = vqtok(["info", "no-such-model"], env, expect_rc=2).stderr
    assert "no-such-model" in err and "tiny-info" in err
    assert "Traceback" not in err
