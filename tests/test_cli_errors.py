"""What a new user sees when something is wrong: multi-file commands report per file and go on; a command whose
optional dependency is missing says in one line what to install."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from vqtok.cli import extras_providing, main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny-model"
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


def test_encode_reports_each_bad_file_and_goes_on(tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "codes"
    rc = main(["encode", str(PHOTOS[0]), str(missing), str(bad), str(PHOTOS[1]), "--local", "--model", str(TINY),
               "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.npy" for p in PHOTOS[:2])  # both good ones
    assert np.load(out / f"{PHOTOS[1].stem}.npy").shape == (16, 16)
    lines = err.splitlines()
    assert f"vqtok encode: {missing}: no such file" in lines, err
    assert any(line.startswith(f"vqtok encode: {bad}: not a decodable image (") for line in lines), err
    assert "2 of 4 images failed" in err and "Traceback" not in err


def test_a_missing_optional_dependency_is_one_line_saying_what_to_install(tmp_path):
    """`vqtok eval` in a serve-only install (no torch): torch is hidden from the child process."""
    code = ("import sys; sys.modules['torch'] = None; from vqtok.cli import main; "
            f"sys.exit(main(['eval', {str(TINY)!r}, {str(FIXTURES / 'photos')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "vqtok eval: error: this command needs 'torch', which is not installed: " \
                               "pip install 'vqtok[train]'", r.stderr


def test_extras_are_read_from_the_installed_metadata():
    assert extras_providing("torch") == ["train"]
    assert set(extras_providing("onnxruntime")) == {"serve", "serve-cpu"}
    assert "client" in extras_providing("httpx")
