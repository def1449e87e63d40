"""The README's examples run as written (as vector-quantize-pytorch tests its README): every ```python block, and the
curl block against a real `vqtok serve` of the shipped default model. They use the `vqtok` namespace only."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from _serving import REPO, LiveServer

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
CURL = [code for lang, code in BLOCKS if lang == "bash" and "curl " in code]
URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """`vqtok serve` of the shipped default model on a free port (the README's examples use its 8000)."""
    log = tmp_path_factory.mktemp("readme") / "serve.log"
    with LiveServer(["--models-dir", str(REPO / "weights"), "--model", "vqtok-f8-k1024", "--threads", "1"],
                    log=log) as srv:
        yield srv


def run(cmd: list[str], tmp_path) -> subprocess.CompletedProcess:
    before = set(os.listdir(REPO))
    env = {k: v for k, v in os.environ.items() if k != "VQTOK_WEIGHTS_DIR"}
    env["TMPDIR"] = str(tmp_path)  # the curl block's mktemp -d lands here, under pytest's cleanup
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert set(os.listdir(REPO)) == before, f"the example left files in the clone: {set(os.listdir(REPO)) - before}"
    return r


def test_readme_has_the_examples_and_uses_the_vqtok_namespace():
    assert len(PYTHON) >= 3 and len(CURL) == 1
    for code in PYTHON:
        imports = re.findall(r"^(?:from|import) (\S+)", code, flags=re.M)
        assert "vqtok" in imports and set(imports) <= {"vqtok", "torch", "numpy"}, imports
    text = "\n".join(PYTHON)
    for name in ("vqtok.OnnxTokenizer", "vqtok.Client", "vqtok.Tokenizer"):
        assert name in text, name


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs(index, request, tmp_path):
    code = PYTHON[index]
    if "import torch" in code:
        pytest.importorskip("torch")
    if URL in code:
        code = code.replace(URL, request.getfixturevalue("live").url)
    r = run([sys.executable, "-c", code], tmp_path)
    assert r.returncode == 0, f"README python block {index} failed:\n{code}\n{r.stderr[-3000:]}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_block_runs(live, tmp_path):
    code = CURL[0].replace(URL, live.url).replace("curl -s ", "curl -sf ")  # -f: an HTTP error fails the block
    r = run(["bash", "-euo", "pipefail", "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    replies, text = [], r.stdout.strip()
    while text:  # the block prints two JSON replies: encode's, then /v1/models
        obj, end = json.JSONDecoder().raw_decode(text)
        replies.append(obj)
        text = text[end:].strip()
    encoded, models = replies
    assert encoded["shape"] == [32, 32] and encoded["codebook_size"] == 1024 and models["default"] == "vqtok-f8-k1024"
    (out,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert {p.name for p in out.iterdir()} == {"codes.npy", "decoded.png", "recon.png"}


CARD = REPO / "weights" / "vqtok-f8-k1024" / "README.md"
CARD_BLOCKS = re.findall(r"^```bash\n(.*?)^```", CARD.read_text(), flags=re.S | re.M)
CLONE_COMMANDS = [line for block in CARD_BLOCKS for line in block.splitlines() if "tests/fixtures/photos" in line]


def test_model_card_commands_need_no_data_outside_the_clone():
    """Commands that need the (uncommitted) photo set say so with PHOTOS/; none point at ../shared."""
    text = CARD.read_text()
    assert "../shared" not in "\n".join(CARD_BLOCKS) and "../shared/data/photos/manifest" not in text
    assert "not in the repository" in text
    for command in re.findall(r"`(vqtok [^`]+)`", text) + [c for b in CARD_BLOCKS for c in b.splitlines()]:
        data = [a for a in command.split() if "photos" in a]
        assert all(a.startswith(("PHOTOS/", "tests/fixtures/photos")) for a in data), command
    assert len(CLONE_COMMANDS) == 2


@pytest.mark.slow  # a full eval (colour set, perceptual features) of the default model: minutes on 2 cores
@pytest.mark.parametrize("command", CLONE_COMMANDS, ids=lambda c: c.split()[1])
def test_model_card_clone_commands_run(command, tmp_path):
    pytest.importorskip("torch")
    vqtok = shutil.which("vqtok")
    assert vqtok, "the vqtok command is not on PATH (pip install -e .)"
    r = run(["bash", "-euo", "pipefail", "-c", command], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
