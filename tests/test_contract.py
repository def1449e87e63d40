"""`tokenizer.contract`: each shared fact is written once, there, and the places that used to repeat it use it."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from vqtok.tokenizer import contract
from vqtok.tokenizer.contract import (ModelMetadata, cover_crop, factor_of, graph_files, optimized_name, psnr,
                                      read_model_metadata)

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "tiny-model"
SOURCE_DIRS = ("tokenizer", "export", "server", "pipeline", "vqtok", "bench", "examples")

# A fact's literal spelling → the only file allowed to write it (contract.py may also build it from parts).
ONCE = {
    r'"(encoder|decoder)(\.fp16)?(\.cpu-opt)?\.onnx"': "tokenizer/contract.py",
    r'"config\.json"|"model\.safetensors"': "tokenizer/contract.py",
    r'[(\[]\s*"resize",\s*"native"\s*[)\]]': "tokenizer/contract.py",
    r"np\.log10\(": "tokenizer/contract.py",
    r"2 \*\* \(len\(": "tokenizer/contract.py",
    r"\.metadata_props\}": "tokenizer/contract.py",
    r"def psnr\(|def _psnr\(": "tokenizer/contract.py",
    r"def save_grid\(": "tokenizer/preprocess.py",
}


@pytest.mark.parametrize("pattern", list(ONCE))
def test_each_fact_is_written_once(pattern):
    where = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if re.search(pattern, path.read_text()):
                where.append(str(path.relative_to(REPO)))
    assert set(where) <= {ONCE[pattern]}, f"{pattern!r} is written in {where}; import it from {ONCE[pattern]}"


def test_graph_file_names():
    assert graph_files() == ("encoder.onnx", "decoder.onnx") == (contract.ENCODER_FILE, contract.DECODER_FILE)
    assert graph_files("fp16") == ("encoder.fp16.onnx", "decoder.fp16.onnx")
    assert graph_files("fp32", optimized=True) == ("encoder.cpu-opt.onnx", "decoder.cpu-opt.onnx")
    assert tuple(optimized_name(n) for n in graph_files()) == graph_files("fp32", optimized=True)
    with pytest.raises(ValueError, match="fp32 only"):
        graph_files("fp16", optimized=True)
    with pytest.raises(ValueError, match="precision"):
        graph_files("bf16")


def test_metadata_round_trip_and_missing_keys():
    meta = ModelMetadata("m", 8, 1024, 8, "ab" * 32, 256, 1024, True, "fp32", 18, "0.1.0")
    props = meta.to_props()
    assert props["normalize_codes"] == "true" and props["factor"] == "8"
    assert ModelMetadata.from_props(props) == meta
    with pytest.raises(ValueError, match=r"lacks metadata \['factor'\].*vqtok export"):
        ModelMetadata.from_props({k: v for k, v in props.items() if k != "factor"})


def test_read_model_metadata_matches_the_runtime():
    from vqtok.export.runtime import OnnxTokenizer

    meta, props = read_model_metadata(TINY)
    assert OnnxTokenizer.from_pretrained(TINY).metadata == meta
    assert set(contract.REQUIRED_METADATA) <= set(props) and props["graph"] == "encoder"
    with pytest.raises(FileNotFoundError, match="vqtok export"):
        read_model_metadata(REPO / "tests" / "fixtures" / "photos")


def test_factor_formula_matches_config():
    from vqtok.tokenizer.model import TokenizerConfig

    for mult in [(1,), (1, 2), (1, 2, 2, 4), (1, 1, 2, 2, 4)]:
        assert factor_of(mult) == TokenizerConfig(channel_mult=mult, image_size=64).factor == 2 ** (len(mult) - 1)


@pytest.mark.parametrize("src,target", [((640, 480), (256, 256)), ((480, 640), (256, 256)), ((300, 300), (64, 96)),
                                        ((1000, 200), (64, 96)), ((256, 256), (256, 256))])
def test_cover_crop_covers_and_centres(src, target):
    (sw, sh), (h, w) = src, target
    nw, nh, left, top = cover_crop(sw, sh, h, w)
    assert nw >= w and nh >= h and (nw == w or nh == h)            # covers; one side fits exactly
    assert abs(nw / nh - sw / sh) <= 1 / min(nh, nw) + 1e-9 or (nw, nh) == (w, h)
    assert left == (nw - w) // 2 and top == (nh - h) // 2


def test_resize_policy_and_parity_crop_are_one_implementation(photos):
    """`prepare(resize)` and the export parity check's any-aspect crop give the same pixels for a square target."""
    from vqtok.export.onnx import _fit
    from vqtok.tokenizer.preprocess import prepare

    for p in photos[:3]:
        arr, crop = prepare(p, "resize", size=64, factor=8)
        assert np.array_equal(arr, _fit(p, 64, 64))
        assert _fit(p, 64, 96).shape == (64, 96, 3)


def test_psnr():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    b = a.astype(np.int16)
    b[0, 0, 0] = 255 - b[0, 0, 0] // 2 if b[0, 0, 0] < 128 else b[0, 0, 0] // 2  # one value off
    err = float(b[0, 0, 0]) - float(a[0, 0, 0])
    assert psnr(a, b.astype(np.uint8)) == pytest.approx(10 * math.log10(255**2 / (err**2 / a.size)))
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, a[:8])


def test_psnr_is_skimage_psnr():
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))


def test_policies_offered_everywhere():
    """The CLI choices, the server's schema and the pipeline check all come from `contract.POLICIES`."""
    from vqtok.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for cmd in ("encode", "reconstruct", "tokenize"):
        action = next(a for a in sub.choices[cmd]._actions if a.dest == "policy")
        assert tuple(action.choices) == contract.POLICIES
    from vqtok.pipeline.run import tokenize_dataset

    with pytest.raises(ValueError, match="resize, native"):
        tokenize_dataset("x", "y", str(TINY), policy="crop")
