"""Shared, generic test helpers. Keep this file small: only fixtures several test modules use."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PHOTOS_DIR = REPO / "tests" / "fixtures" / "photos"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The committed fixture photos (sorted paths); see tests/fixtures/photos/LICENSES.md."""
    paths = sorted(PHOTOS_DIR.glob("*.jpg"))
    assert len(paths) >= 3, f"fixture photos missing under {PHOTOS_DIR}"
    return paths


@pytest.fixture
def tiny_config() -> dict:
    """A TokenizerConfig dict small enough to train a few steps on CPU in seconds (f = 2, K = 32, d = 4)."""
    return dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=8,
                codebook_size=32, code_dim=4, image_size=32, model_id="tiny-test")


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    """Environment for child Python processes: repo on the path, few threads, no progress bars."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
